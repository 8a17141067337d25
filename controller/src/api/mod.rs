//! The gRPC edge: generated types and `tonic::Status` stop here.
//!
//! The caller's identity comes from the TLS handshake (the certificate's URI
//! SAN, read once per connection into [`ConnInfo`]); nothing a client sends
//! in a message can change who it is.

mod admin;
mod admission;
mod agent;
mod gate;
pub mod server;

use std::net::SocketAddr;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

use ruse_proto::errors;
use ruse_proto::types::Identity;

use crate::core::{Caller, OpError};
use crate::store::StoreError;

pub use admin::AdminApi;
pub use agent::AgentApi;
pub use gate::AdminGate;

/// What the handshake established about a connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// `None` when the client presented no certificate.
    pub identity: Option<Identity>,
}

/// The caller of a request.
fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    let info = request
        .extensions()
        .get::<ConnInfo>()
        .ok_or_else(|| Status::internal("connection information missing"))?;
    Ok(Caller {
        identity: info.identity.clone(),
        peer: info.peer,
    })
}

fn with_reason(mut status: Status, reason: &'static str) -> Status {
    status
        .metadata_mut()
        .insert(errors::HEADER, MetadataValue::from_static(reason));
    status
}

/// The one mapping from domain errors to gRPC status codes.
pub fn status(err: OpError) -> Status {
    let message = err.to_string();
    match err {
        OpError::TokenInvalid => {
            with_reason(Status::unauthenticated(message), errors::TOKEN_INVALID)
        }
        OpError::TokenExpired(_) => {
            with_reason(Status::unauthenticated(message), errors::TOKEN_EXPIRED)
        }
        OpError::TokenExhausted(_) => {
            with_reason(Status::unauthenticated(message), errors::TOKEN_EXHAUSTED)
        }
        OpError::RateLimited(_) => {
            with_reason(Status::resource_exhausted(message), errors::RATE_LIMITED)
        }
        OpError::AgentRevoked(_) => {
            with_reason(Status::permission_denied(message), errors::AGENT_REVOKED)
        }
        OpError::AgentUnknown(_) => {
            with_reason(Status::permission_denied(message), errors::AGENT_UNKNOWN)
        }
        OpError::NotFound(_) => Status::not_found(message),
        OpError::Invalid(_) | OpError::Manifest(_) => Status::invalid_argument(message),
        OpError::Conflict(_) => Status::failed_precondition(message),
        OpError::Pki(_) => Status::invalid_argument(message),
        OpError::Store(e @ StoreError::Full(_)) => {
            tracing::error!(error = %e, "store failure");
            Status::resource_exhausted(e.to_string())
        }
        OpError::Store(e) => {
            tracing::error!(error = %e, "store failure");
            Status::new(
                Code::Unavailable,
                "the controller's store failed; retry later",
            )
        }
    }
}
