//! The tower layer that authenticates gRPC calls (inside [`crate::edge`], which has set the
//! request id): it finds the method's requirement ([`super::methods`]), authenticates the
//! caller, checks a global permission at once, removes the `authorization` header and hands
//! the [`Caller`] to the handler in the request's extensions. Per-account permissions are
//! checked by the handlers, once the account is read from the body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{Layer, Service};

use super::{AUTHORIZATION, Access, AuthMode, Caller, Need, Presented, Required, methods};
use crate::domain::{Error, Reason};
use crate::edge::CallConnection;

#[derive(Clone)]
pub struct AuthLayer {
    access: Arc<Access>,
}

impl AuthLayer {
    pub fn new(access: Arc<Access>) -> AuthLayer {
        AuthLayer { access }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AuthService {
            inner,
            access: Arc::clone(&self.access),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    access: Arc<Access>,
}

/// The caller of a call, or why it may not proceed.
fn admit<B>(access: &Arc<Access>, request: &Request<B>) -> Result<Option<Caller>, Error> {
    let required = methods::required(request.uri().path());
    if required == Some(Required::Nothing) {
        return Ok(None);
    }
    let connection = CallConnection::of(request.extensions());
    let certificates = (connection.as_ref()).and_then(|connection| connection.tls?.peer_certs());
    let peer = (connection.as_ref()).and_then(|connection| connection.tcp.remote_addr());
    let certificate = certificates
        .as_ref()
        .and_then(|chain| chain.first())
        .map(|der| der.as_ref());
    let presented = Presented::from_headers(request.headers(), certificate, peer);
    let caller = access.authenticate(&presented)?;
    match required {
        Some(Required::Global(permission)) => caller.require(Need::Global(permission))?,
        // A method nobody mapped is refused while access control is enforced.
        None if access.mode() == AuthMode::Enforce => {
            return Err(Error::new(
                Reason::PermissionDenied,
                "this method has no permission mapped",
            ));
        }
        _ => {}
    }
    Ok(Some(caller))
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for AuthService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        match admit(&self.access, &request) {
            Ok(caller) => {
                // No secret reaches a handler, a log line or a span.
                request.headers_mut().remove(&AUTHORIZATION);
                if let Some(caller) = caller {
                    request.extensions_mut().insert(caller);
                }
                Box::pin(self.inner.call(request))
            }
            Err(error) => {
                let response = tonic::Status::from(error).into_http::<ResBody>();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

/// The caller the layer admitted; a handler reached without one (never, behind the layer)
/// gets a caller that every permission check refuses.
pub fn caller_of(extensions: &tonic::Extensions) -> Caller {
    extensions.get::<Caller>().cloned().unwrap_or_else(Caller::nobody)
}
