//! In front of the admin service: a caller without an admin certificate
//! is refused before its request body is read (which may be as large as
//! the message limit), and the refusal is only tallied
//! ([`crate::refusals`]), so such calls cost the controller less than they
//! cost the caller.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use ruse_proto::types::Identity;

use super::ConnInfo;
use crate::refusals::{Refusal, Refusals};

/// Wraps the generated admin service.
#[derive(Debug, Clone)]
pub struct AdminGate<S> {
    inner: S,
    refusals: Arc<Refusals>,
}

impl<S> AdminGate<S> {
    pub fn new(inner: S, refusals: Arc<Refusals>) -> Self {
        AdminGate { inner, refusals }
    }
}

impl<S: NamedService> NamedService for AdminGate<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for AdminGate<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let refused = match request.extensions().get::<ConnInfo>() {
            Some(ConnInfo {
                identity: None,
                peer,
            }) => Some((peer.ip(), Refusal::Anonymous)),
            Some(ConnInfo {
                identity: Some(Identity::Agent(_)),
                peer,
            }) => Some((peer.ip(), Refusal::Agent)),
            // Admins go on to the role check; a request without connection
            // information is refused by the API itself.
            _ => None,
        };
        let Some((source, refusal)) = refused else {
            return Box::pin(self.inner.call(request));
        };
        self.refusals.record(source, refusal, request.uri().path());
        let status = match refusal {
            Refusal::Anonymous => Status::unauthenticated(refusal.message()),
            _ => Status::permission_denied(refusal.message()),
        };
        Box::pin(std::future::ready(Ok(status.into_http())))
    }
}
