//! The Routing service as it is served: tonic's generated server for every method but the two
//! lookups, whose answers go to HTTP/2 in the buffers they were written in.
//!
//! tonic's encoder writes every answer into a buffer of its own, so a batch answer (~200 KB
//! for 1,000 addresses) was copied once more on its way out: a tenth of the server's CPU
//! under batches (docs/benchmarks.md, a batch answer handed over as written); a unary
//! lookup's answer (~300 bytes) is written with room for the frame's prefix in front, so it
//! is one buffer from the route cache to HTTP/2. The request is read and the answer handed
//! over as [`super::served`] does it; the handlers are the same, and the answers are the same
//! bytes. The layers in front of every service (the edge's limits and deadlines, access
//! control) see these methods as they see the others.

use std::sync::Arc;

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;

use crate::api::routing::RoutingService;
use crate::api::served::{Endpoint, OneMessage, answered, answered_here, decoded};
use crate::pb::api;
use crate::pb::api::routing_server::{Routing, RoutingServer};

/// `addressing.v1.Routing`, as the dispatch serves it.
pub type RoutingEndpoint = Endpoint<RoutingService, RoutingServer<RoutingService>>;

/// The Routing service; requests above `max_message_bytes` are refused, as the other services
/// refuse them.
pub fn routing_endpoint(service: RoutingService, max_message_bytes: usize) -> RoutingEndpoint {
    Endpoint::new(
        service,
        max_message_bytes,
        |service, max_message_bytes| RoutingServer::from_arc(service).max_decoding_message_size(max_message_bytes),
        &[
            (
                "/addressing.v1.Routing/LookupAddress",
                |service, request, max_message_bytes| {
                    answered_here(lookup_address(service, request, max_message_bytes))
                },
            ),
            (
                "/addressing.v1.Routing/LookupAddresses",
                |service, request, max_message_bytes| {
                    answered_here(lookup_addresses(service, request, max_message_bytes))
                },
            ),
        ],
    )
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
