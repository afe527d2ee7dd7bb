//! Encoding raftkit-internal messages into the `bytes` fields of the internal service.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Status;

use crate::status;

/// Encodes an internal message for a `bytes` field.
pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Bytes, Status> {
    raft_core::codec::encode(value)
        .map(Bytes::from)
        .map_err(|e| {
            status::status(
                tonic::Code::Internal,
                status::ErrorCode::Internal,
                format!("encode: {e}"),
            )
        })
}

/// Decodes an internal message received from a peer; garbage is an `InvalidArgument`.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, Status> {
    raft_core::codec::decode(bytes).map_err(|e| status::invalid(format!("undecodable {what}: {e}")))
}
