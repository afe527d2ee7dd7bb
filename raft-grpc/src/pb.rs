//! The protobuf messages and gRPC services generated from `proto/raft.proto`.

#![allow(missing_docs)]
#![allow(clippy::all)]

tonic::include_proto!("raftkit.v1");
