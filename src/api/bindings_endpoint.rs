//! The ServiceBindings service as it is served: tonic's generated server for every method but
//! CreateServiceBinding, whose answer is written straight from the binding into its gRPC frame
//! ([`wire::binding_frame`]) and handed to HTTP/2 as written ([`super::served`]). The handler
//! is the same ([`ServiceBindingsService::create`]), and so are the answer's bytes. The layers
//! in front of every service see this method as they see the others.

use std::sync::Arc;

use http::{Request, Response};
use tonic::Status;
use tonic::body::Body;

use crate::api::served::{Endpoint, OneMessage, answered, answered_here, decoded};
use crate::api::service_bindings::{CreatedBinding, ServiceBindingsService};
use crate::api::wire;
use crate::pb::api;
use crate::pb::api::service_bindings_server::ServiceBindingsServer;

/// `addressing.v1.ServiceBindings`, as the dispatch serves it.
pub type ServiceBindingsEndpoint = Endpoint<ServiceBindingsService, ServiceBindingsServer<ServiceBindingsService>>;

/// The ServiceBindings service; requests above `max_message_bytes` are refused, as the other
/// services refuse them.
pub fn bindings_endpoint(service: ServiceBindingsService, max_message_bytes: usize) -> ServiceBindingsEndpoint {
    Endpoint::new(
        service,
        max_message_bytes,
        |service, max_message_bytes| {
            ServiceBindingsServer::from_arc(service).max_decoding_message_size(max_message_bytes)
        },
        &[(
            "/addressing.v1.ServiceBindings/CreateServiceBinding",
            |service, request, max_message_bytes| answered_here(create(service, request, max_message_bytes)),
        )],
    )
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
