//! addressing.v1.ServiceBindings: create, list, get and delete (the watch stream is in
//! [`super::watch`]).

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{AppContext, convert, page_token, unary, unexpected, watch};
use crate::domain::error::AllFields;
use crate::domain::{BindingId, Command, Outcome, PrefixId, fields};
use crate::pb::api;
use crate::pb::api::service_bindings_server::ServiceBindings;

pub struct ServiceBindingsService {
    app: AppContext,
}

impl ServiceBindingsService {
    pub fn new(app: AppContext) -> ServiceBindingsService {
        ServiceBindingsService { app }
    }
}

fn bindings_scope(prefix_id: &PrefixId) -> page_token::ListScope<'_> {
    page_token::ListScope {
        list: "bindings",
        scope: prefix_id.as_bytes(),
    }
}

#[tonic::async_trait]
impl ServiceBindings for ServiceBindingsService {
    async fn create_service_binding(
        &self,
        request: Request<api::CreateServiceBindingRequest>,
    ) -> Result<Response<api::ServiceBinding>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "CreateServiceBinding", &metadata, async {
            let (account_id, prefix_id, cidr, service, request_id) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
                fields::cidr("cidr", &request.cidr),
                fields::service("service_id", &request.service_id),
                fields::request_id("request_id", &request.request_id),
            )
                .all_fields()?;
            let command = Command::CreateBinding {
                id: BindingId::generate(),
                account_id,
                prefix_id,
                cidr,
                service,
                request_id,
            };
            match self.app.engine()?.execute(command).await? {
                Outcome::Binding(binding) => Ok(convert::binding(&binding)),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn list_service_bindings(
        &self,
        request: Request<api::ListServiceBindingsRequest>,
    ) -> Result<Response<api::ListServiceBindingsResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "ListServiceBindings", &metadata, async {
            let (account_id, prefix_id, page_size) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
                fields::page_size("page_size", request.page_size),
            )
                .all_fields()?;
            let scope = bindings_scope(&prefix_id);
            let after = page_token::decode(&scope, "page_token", &request.page_token)?;
            let model = self.app.engine()?.projections().read();
            model.state.prefix(account_id, prefix_id)?;
            let page = model.state.list_bindings(prefix_id, after, page_size);
            Ok(api::ListServiceBindingsResponse {
                bindings: page.items.into_iter().map(convert::binding).collect(),
                next_page_token: page
                    .next_after
                    .map(|key| page_token::encode(&scope, key))
                    .unwrap_or_default(),
                revision: model.head,
            })
        })
        .await
    }

    async fn get_service_binding(
        &self,
        request: Request<api::GetServiceBindingRequest>,
    ) -> Result<Response<api::ServiceBinding>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "GetServiceBinding", &metadata, async {
            let (account_id, prefix_id, binding_id) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
                fields::binding_id("binding_id", &request.binding_id),
            )
                .all_fields()?;
            let model = self.app.engine()?.projections().read();
            model
                .state
                .binding(account_id, prefix_id, binding_id)
                .map(convert::binding)
        })
        .await
    }

    async fn delete_service_binding(
        &self,
        request: Request<api::DeleteServiceBindingRequest>,
    ) -> Result<Response<api::DeleteServiceBindingResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "DeleteServiceBinding", &metadata, async {
            let (account_id, prefix_id, binding_id) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
                fields::binding_id("binding_id", &request.binding_id),
            )
                .all_fields()?;
            let command = Command::DeleteBinding {
                account_id,
                prefix_id,
                binding_id,
            };
            match self.app.engine()?.execute(command).await? {
                Outcome::BindingDeleted(id) => Ok(api::DeleteServiceBindingResponse { id: id.to_string() }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    type WatchServiceBindingsStream = Pin<Box<dyn Stream<Item = Result<api::ServiceBindingEvent, Status>> + Send>>;

    async fn watch_service_bindings(
        &self,
        request: Request<api::WatchServiceBindingsRequest>,
    ) -> Result<Response<Self::WatchServiceBindingsStream>, Status> {
        let (metadata, _, request) = request.into_parts();
        let opened = unary(
            self.app.metrics(),
            "WatchServiceBindings",
            &metadata,
            watch::open(&self.app, request),
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
