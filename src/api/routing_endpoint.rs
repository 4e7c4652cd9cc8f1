//! The Routing service as it is served: tonic's generated server for every method but the two
//! lookups, whose answers go to HTTP/2 in the buffers they were written in.
//!
//! tonic's encoder writes every answer into a buffer of its own, so a batch answer (~200 KB
//! for 1,000 addresses) was copied once more on its way out: a tenth of the server's CPU
//! under batches (docs/benchmarks.md, a batch answer handed over as written); a unary
//! lookup's answer (~300 bytes) is written with room for the frame's prefix in front, so it
//! is one buffer from the route cache to HTTP/2. The request is read and the answer handed
//! over as [`super::served`] does it; the handlers are the same, and the answers are the same
//! bytes. The layers
//! in front of every service (the edge's limits and deadlines, access control) see these
//! methods as they see the others.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tower::Service;

use crate::api::routing::RoutingService;
use crate::api::served::{OneMessage, answered, answered_here, decoded};
use crate::pb::api;
use crate::pb::api::routing_server::{Routing, RoutingServer};

/// The methods answered here rather than by the generated server.
const LOOKUP_ADDRESS: &str = "/addressing.v1.Routing/LookupAddress";
const LOOKUP_ADDRESSES: &str = "/addressing.v1.Routing/LookupAddresses";
/// `addressing.v1.Routing`, as the router serves it.
#[derive(Clone)]
pub struct RoutingEndpoint {
    service: Arc<RoutingService>,
    generated: RoutingServer<RoutingService>,
    max_message_bytes: usize,
}

impl RoutingEndpoint {
    /// Requests above `max_message_bytes` are refused, as the other services refuse them.
    pub fn new(service: RoutingService, max_message_bytes: usize) -> RoutingEndpoint {
        let service = Arc::new(service);
        RoutingEndpoint {
            generated: RoutingServer::from_arc(Arc::clone(&service)).max_decoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for RoutingEndpoint {
    const NAME: &'static str = <RoutingServer<RoutingService> as NamedService>::NAME;
}

impl Service<Request<Body>> for RoutingEndpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let (service, max_message_bytes) = (Arc::clone(&self.service), self.max_message_bytes);
        match request.uri().path() {
            LOOKUP_ADDRESS => answered_here(lookup_address(service, request, max_message_bytes)),
            LOOKUP_ADDRESSES => answered_here(lookup_addresses(service, request, max_message_bytes)),
            _ => self.generated.call(request),
        }
    }
}

/// LookupAddress from the HTTP request to the HTTP answer, as tonic's unary path takes it.
async fn lookup_address(
    service: Arc<RoutingService>,
    request: Request<Body>,
    max_message_bytes: usize,
) -> Result<Response<Body>, Status> {
    let request = decoded::<api::LookupAddressRequest>(request, max_message_bytes).await?;
    let (metadata, answer, extensions) = service.lookup_address(request).await?.into_parts();
    Ok(answered(
        metadata,
        OneMessage::framed(answer.into_grpc_frame()),
        extensions,
    ))
}

/// LookupAddresses from the HTTP request to the HTTP answer, as tonic's unary path takes it.
async fn lookup_addresses(
    service: Arc<RoutingService>,
    request: Request<Body>,
    max_message_bytes: usize,
) -> Result<Response<Body>, Status> {
    let request = decoded::<api::LookupAddressesRequest>(request, max_message_bytes).await?;
    let (metadata, answer, extensions) = service.lookup_addresses(request).await?.into_parts();
    Ok(answered(metadata, OneMessage::batch(answer), extensions))
}
