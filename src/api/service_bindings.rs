//! addressing.v1.ServiceBindings: create, list, get and delete through [`crate::operations`]
//! (the watch stream is in [`super::watch`]).

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{AppContext, EncodedMessages, convert, unary, watch};
use crate::auth::layer::caller_of;
use crate::domain::Binding;
use crate::operations::{self, ListPage, NewBinding};
use crate::pb::api;
use crate::pb::api::service_bindings_server::ServiceBindings;

pub struct ServiceBindingsService {
    app: AppContext,
    /// The watch streams' events, each encoded once for all of them.
    events: Arc<EncodedMessages>,
}

impl ServiceBindingsService {
    pub fn new(app: AppContext) -> ServiceBindingsService {
        ServiceBindingsService {
            app,
            events: Arc::default(),
        }
    }
}

impl ServiceBindingsService {
    /// CreateServiceBinding up to its binding (as created, or as it would be with
    /// `validate_only`), which the caller writes: as a message here, or straight into its gRPC
    /// frame (`bindings_endpoint.rs`).
    pub async fn create(
        &self,
        request: Request<api::CreateServiceBindingRequest>,
    ) -> Result<Response<CreatedBinding>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "CreateServiceBinding", &metadata, async {
            let new = NewBinding {
                account_id: &request.account_id,
                prefix_id: &request.prefix_id,
                cidr: &request.cidr,
                service_id: &request.service_id,
                request_id: &request.request_id,
                request_id_field: "request_id",
                validate_only: request.validate_only,
            };
            let binding = operations::create_binding(&self.app, &caller, new).await?;
            Ok(CreatedBinding {
                binding,
                created: !request.validate_only,
            })
        })
        .await
    }
}

/// A create's binding, and whether it was made (not only validated).
pub struct CreatedBinding {
    pub binding: Binding,
    pub created: bool,
}

#[tonic::async_trait]
impl ServiceBindings for ServiceBindingsService {
    /// Served by `bindings_endpoint.rs`, which writes the answer itself; here for the trait.
    async fn create_service_binding(
        &self,
        request: Request<api::CreateServiceBindingRequest>,
    ) -> Result<Response<api::ServiceBinding>, Status> {
        let created = self.create(request).await?;
        Ok(created.map(|CreatedBinding { binding, created }| {
            let mut binding = convert::binding(&binding);
            if !created {
                convert::as_not_yet_created(&mut binding.id, [&mut binding.created_at, &mut binding.modified_at]);
            }
            binding
        }))
    }

    async fn list_service_bindings(
        &self,
        request: Request<api::ListServiceBindingsRequest>,
    ) -> Result<Response<api::ListServiceBindingsResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "ListServiceBindings", &metadata, async {
            let page = ListPage::Page {
                size: request.page_size,
                token: &request.page_token,
            };
            let listed = operations::list_bindings(&self.app, &caller, &request.account_id, &request.prefix_id, page)?;
            Ok(api::ListServiceBindingsResponse {
                bindings: listed.items.iter().map(convert::binding).collect(),
                next_page_token: listed.next_page_token,
                revision: listed.revision,
            })
        })
        .await
    }

    async fn get_service_binding(
        &self,
        request: Request<api::GetServiceBindingRequest>,
    ) -> Result<Response<api::ServiceBinding>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "GetServiceBinding", &metadata, async {
            operations::get_binding(
                &self.app,
                &caller,
                &request.account_id,
                &request.prefix_id,
                &request.binding_id,
            )
            .map(|binding| convert::binding(&binding))
        })
        .await
    }

    async fn delete_service_binding(
        &self,
        request: Request<api::DeleteServiceBindingRequest>,
    ) -> Result<Response<api::DeleteServiceBindingResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "DeleteServiceBinding", &metadata, async {
            let deleted = operations::delete_binding(
                &self.app,
                &caller,
                &request.account_id,
                &request.prefix_id,
                &request.binding_id,
                request.validate_only,
            )
            .await?;
            Ok(api::DeleteServiceBindingResponse {
                id: deleted.to_string(),
            })
        })
        .await
    }

    type WatchServiceBindingsStream = Pin<Box<dyn Stream<Item = Result<api::ServiceBindingEvent, Status>> + Send>>;

    async fn watch_service_bindings(
        &self,
        request: Request<api::WatchServiceBindingsRequest>,
    ) -> Result<Response<Self::WatchServiceBindingsStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        let opened = unary(
            self.app.metrics(),
            "WatchServiceBindings",
            &metadata,
            watch::open(&self.app, &self.events, caller, request),
        )
        .await?
        .into_inner();
        let mut response = Response::new(Box::pin(opened.stream) as Self::WatchServiceBindingsStream);
        response
            .metadata_mut()
            .insert(watch::START_REVISION_HEADER, opened.start_revision.into());
        Ok(response)
    }
}
