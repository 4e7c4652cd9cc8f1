//! The ServiceBindings service as it is served: tonic's generated server for every method but
//! CreateServiceBinding, whose answer is written straight from the binding into its gRPC frame
//! ([`wire::binding_frame`]) and handed to HTTP/2 as written ([`super::served`]). The handler
//! is the same ([`ServiceBindingsService::create`]), and so are the answer's bytes. The layers
//! in front of every service see this method as they see the others.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::BoxFuture;
use tonic::server::NamedService;
use tower::Service;

use crate::api::served::{OneMessage, answered, answered_here, decoded};
use crate::api::service_bindings::{CreatedBinding, ServiceBindingsService};
use crate::api::wire;
use crate::pb::api;
use crate::pb::api::service_bindings_server::ServiceBindingsServer;

/// The method answered here rather than by the generated server.
const CREATE_SERVICE_BINDING: &str = "/addressing.v1.ServiceBindings/CreateServiceBinding";

/// `addressing.v1.ServiceBindings`, as the dispatch serves it.
#[derive(Clone)]
pub struct ServiceBindingsEndpoint {
    service: Arc<ServiceBindingsService>,
    generated: ServiceBindingsServer<ServiceBindingsService>,
    max_message_bytes: usize,
}

impl ServiceBindingsEndpoint {
    /// Requests above `max_message_bytes` are refused, as the other services refuse them.
    pub fn new(service: ServiceBindingsService, max_message_bytes: usize) -> ServiceBindingsEndpoint {
        let service = Arc::new(service);
        ServiceBindingsEndpoint {
            generated: ServiceBindingsServer::from_arc(Arc::clone(&service))
                .max_decoding_message_size(max_message_bytes),
            service,
            max_message_bytes,
        }
    }
}

impl NamedService for ServiceBindingsEndpoint {
    const NAME: &'static str = <ServiceBindingsServer<ServiceBindingsService> as NamedService>::NAME;
}

impl Service<Request<Body>> for ServiceBindingsEndpoint {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Response<Body>, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if request.uri().path() == CREATE_SERVICE_BINDING {
            let (service, max_message_bytes) = (Arc::clone(&self.service), self.max_message_bytes);
            answered_here(create(service, request, max_message_bytes))
        } else {
            self.generated.call(request)
        }
    }
}

/// CreateServiceBinding from the HTTP request to the HTTP answer, as tonic's unary path takes it.
async fn create(
    service: Arc<ServiceBindingsService>,
    request: Request<Body>,
    max_message_bytes: usize,
) -> Result<Response<Body>, Status> {
    let request = decoded::<api::CreateServiceBindingRequest>(request, max_message_bytes).await?;
    let (metadata, CreatedBinding { binding, created }, extensions) = service.create(request).await?.into_parts();
    let frame = wire::binding_frame(&binding, created);
    Ok(answered(metadata, OneMessage::framed(frame), extensions))
}
