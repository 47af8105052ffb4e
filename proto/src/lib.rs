//! `ferry-proto`: the `ferry.v1` wire protocol, generated from the `.proto`
//! files beside this crate (`ferry/v1/*.proto`), and nothing else.
//!
//! - [`v1`]: messages, `AgentService` and `OperatorService` clients and servers.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("ferry.v1");
}

/// Encoded `FileDescriptorSet` of every `ferry.v1` file.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ferry_descriptor.bin"));
