//! The protobuf messages and gRPC services generated from `proto/raft.proto`, and their
//! conversions to and from raft-core's types.

pub use generated::*;

#[allow(missing_docs)]
#[allow(clippy::all)]
mod generated {
    tonic::include_proto!("raftkit.v1");
}

use std::time::Duration;

use tonic::Request;
use tonic::Status;

use crate::status;

impl From<raft_core::Consistency> for Consistency {
    fn from(c: raft_core::Consistency) -> Self {
        match c {
            raft_core::Consistency::Linearizable => Consistency::Linearizable,
            raft_core::Consistency::Lease => Consistency::Lease,
            raft_core::Consistency::Local => Consistency::Local,
            // A level this transport does not know yet is served at the strongest one.
            _ => Consistency::Linearizable,
        }
    }
}

impl From<Consistency> for raft_core::Consistency {
    fn from(c: Consistency) -> Self {
        match c {
            Consistency::Linearizable => raft_core::Consistency::Linearizable,
            Consistency::Lease => raft_core::Consistency::Lease,
            Consistency::Local => raft_core::Consistency::Local,
        }
    }
}

/// The consistency a request's `consistency` field names; an unknown value is `InvalidArgument`.
pub(crate) fn consistency(wire: i32) -> Result<raft_core::Consistency, Status> {
    Consistency::try_from(wire)
        .map(Into::into)
        .map_err(|_| status::invalid(format!("unknown consistency {wire}")))
}

impl From<raft_core::Session> for Session {
    fn from(s: raft_core::Session) -> Self {
        Session {
            client_id: s.client_id,
            sequence: s.sequence,
        }
    }
}

impl From<Session> for raft_core::Session {
    fn from(s: Session) -> Self {
        raft_core::Session {
            client_id: s.client_id,
            sequence: s.sequence,
        }
    }
}

/// The longest deadline the `grpc-timeout` header can carry (eight digits of hours).
const MAX_TIMEOUT: Duration = Duration::from_secs(99_999_999 * 3600);

/// A request that must be answered within `timeout` (sent as the `grpc-timeout` header; a
/// longer timeout than the header can carry is sent as the longest it can).
pub(crate) fn request<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout.min(MAX_TIMEOUT));
    r
}
