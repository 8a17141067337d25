//! The Ruse wire protocol and the domain types it converts to.
//!
//! `common::v1`, `agent::v1` and `admin::v1` are generated from
//! `proto/ruse/**.proto`.
//! Everything else in the project works with the domain types in
//! [`types`]; conversions from the generated messages happen at the edges
//! (`TryFrom` with typed errors).
#![forbid(unsafe_code)]

/// Messages both protocols carry (`common.proto`): one definition, one
/// conversion each.
pub mod common {
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("ruse.common.v1");
    }
}

pub mod agent {
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("ruse.agent.v1");
        pub use crate::common::v1::{Credential, DecoyContact, Process};
    }
}

pub mod admin {
    pub mod v1 {
        #![allow(missing_debug_implementations, unused_qualifications, clippy::all)]
        tonic::include_proto!("ruse.admin.v1");
        pub use crate::common::v1::{
            Credential as PresentedCredential, DecoyContact, Process as EventProcess,
        };
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
