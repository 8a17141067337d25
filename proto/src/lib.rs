//! The Ruse wire protocol and the domain types it converts to.
//!
//! `agent::v1` and `admin::v1` are generated from `proto/ruse/**.proto`.
//! Everything else in the project works with the domain types in
//! [`types`]; conversions from the generated messages happen at the edges
//! (`TryFrom` with typed errors).
#![forbid(unsafe_code)]

pub mod agent {
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("ruse.agent.v1");
    }
}

pub mod admin {
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("ruse.admin.v1");
    }
}

/// Encoded `FileDescriptorSet` of every Ruse service, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/ruse_descriptor.bin"));

pub mod codec;
pub mod context;
pub mod convert;
pub mod errors;
pub mod event;
pub mod limits;
pub mod spec;
pub mod transport;
pub mod types;
