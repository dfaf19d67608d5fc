//! The `ebb.v1` wire API (jobs, market, executors) as generated prost messages
//! and tonic services. Only `ebb-api` and `ebb-executor` depend on this crate;
//! the scheduler core never sees protobuf.

#![allow(missing_docs, unused_qualifications, clippy::all)]

/// Generated code for the `ebb.v1` package.
pub mod v1 {
    tonic::include_proto!("ebb.v1");
}

/// The encoded file descriptor set, for the gRPC reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ebb_descriptor");
