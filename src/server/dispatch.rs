//! Each gRPC call handed to its service by the service name in its path, with no router in
//! between; a service not served here is UNIMPLEMENTED, as tonic answers it.
//!
//! tonic's `Routes` is an axum router: for every call it matched `/{service}/{*rest}`, stored
//! the rest of the path as a parameter in the request's extensions (two allocations and a
//! percent-decoding pass), and wrapped the request body and the response body in two boxes
//! each way, every frame polled through all four. A service name is one of eight strings, so
//! a comparison each in the order of their traffic is all that choosing one takes
//! (docs/benchmarks.md, Results: calls handed to their service without a router).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

use crate::api::bindings_endpoint::ServiceBindingsEndpoint;
use crate::api::prefixes::PrefixesService;
use crate::api::rollout::RolloutService;
use crate::api::routing_endpoint::RoutingEndpoint;
use crate::api::served::{Answer, GrpcService};
use crate::api::services::ServicesService;
use crate::pb::api::prefixes_server::PrefixesServer;
use crate::pb::api::rollout_server::RolloutServer;
use crate::pb::api::services_server::ServicesServer;

/// The services of this crate, each as its generated server (or its endpoint, which serves a
/// method or two itself).
pub struct OwnServices {
    pub bindings: ServiceBindingsEndpoint,
    pub routing: RoutingEndpoint,
    pub prefixes: PrefixesServer<PrefixesService>,
    pub services: ServicesServer<ServicesService>,
    pub rollout: RolloutServer<RolloutService>,
}

/// Every service the server offers: its own, health (`H`) and reflection v1 and v1alpha
/// (`R1`, `R2`), whose generated servers are types the libraries do not name.
pub struct Dispatch<H, R1, R2>(Arc<Services<H, R1, R2>>);

struct Services<H, R1, R2> {
    own: OwnServices,
    health: H,
    reflection_v1: R1,
    reflection_v1alpha: R2,
}

impl<H, R1, R2> Dispatch<H, R1, R2> {
    pub fn new(own: OwnServices, health: H, reflection_v1: R1, reflection_v1alpha: R2) -> Self {
        Dispatch(Arc::new(Services {
            own,
            health,
            reflection_v1,
            reflection_v1alpha,
        }))
    }
}

impl<H, R1, R2> Clone for Dispatch<H, R1, R2> {
    fn clone(&self) -> Self {
        Dispatch(Arc::clone(&self.0))
    }
}

/// A generated server as the dispatch calls it: a clone (an `Arc` and a few options) per call.
fn call<S: GrpcService + Clone>(service: &S, request: Request<Body>) -> Answer {
    service.clone().call(request)
}

impl<H, R1, R2> Service<Request<Body>> for Dispatch<H, R1, R2>
where
    H: GrpcService + NamedService + Clone,
    R1: GrpcService + NamedService + Clone,
    R2: GrpcService + NamedService + Clone,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Answer;

    /// Every generated server is always ready.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let services = &*self.0;
        let own = &services.own;
        let path = request.uri().path();
        let name = service_name(path);
        if name == ServiceBindingsEndpoint::NAME {
            call(&own.bindings, request)
        } else if name == RoutingEndpoint::NAME {
            call(&own.routing, request)
        } else if name == H::NAME {
            call(&services.health, request)
        } else if name == <PrefixesServer<PrefixesService> as NamedService>::NAME {
            call(&own.prefixes, request)
        } else if name == <ServicesServer<ServicesService> as NamedService>::NAME {
            call(&own.services, request)
        } else if name == <RolloutServer<RolloutService> as NamedService>::NAME {
            call(&own.rollout, request)
        } else if name == R1::NAME {
            call(&services.reflection_v1, request)
        } else if name == R2::NAME {
            call(&services.reflection_v1alpha, request)
        } else {
            let status = Status::unimplemented(format!("no service serves {path}"));
            Box::pin(std::future::ready(Ok(status.into_http())))
        }
    }
}

/// The service's part of a gRPC path, `/package.Service/Method` (empty if it has none).
fn service_name(path: &str) -> &str {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').map_or("", |(service, _)| service)
}

#[cfg(test)]
mod tests {
    use super::service_name;

    #[test]
    fn the_service_name_is_the_first_segment_of_a_method_path() {
        assert_eq!(
            service_name("/addressing.v1.Routing/LookupAddress"),
            "addressing.v1.Routing"
        );
        assert_eq!(service_name("/grpc.health.v1.Health/"), "grpc.health.v1.Health");
        assert_eq!(service_name("/grpc.health.v1.Health"), "");
        assert_eq!(service_name("/"), "");
    }
}
