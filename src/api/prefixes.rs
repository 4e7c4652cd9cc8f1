//! addressing.v1.Prefixes: wire messages in and out of [`crate::operations`].

use tonic::{Request, Response, Status};

use super::{AppContext, convert, unary};
use crate::auth::layer::caller_of;
use crate::operations::{self, ListPage, NewPrefix};
use crate::pb::api;
use crate::pb::api::prefixes_server::Prefixes;

pub struct PrefixesService {
    app: AppContext,
}

impl PrefixesService {
    pub fn new(app: AppContext) -> PrefixesService {
        PrefixesService { app }
    }
}

#[tonic::async_trait]
impl Prefixes for PrefixesService {
    async fn create_prefix(&self, request: Request<api::CreatePrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "CreatePrefix", &metadata, async {
            let new = NewPrefix {
                account_id: &request.account_id,
                cidr: &request.cidr,
                asn: request.asn,
                description: &request.description,
                validate_only: request.validate_only,
            };
            let prefix = operations::create_prefix(&self.app, &caller, new).await?;
            let mut prefix = convert::prefix(&prefix);
            if request.validate_only {
                convert::as_not_yet_created(&mut prefix.id, [&mut prefix.created_at, &mut prefix.modified_at]);
            }
            Ok(prefix)
        })
        .await
    }

    async fn get_prefix(&self, request: Request<api::GetPrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "GetPrefix", &metadata, async {
            operations::get_prefix(&self.app, &caller, &request.account_id, &request.prefix_id)
                .map(|prefix| convert::prefix(&prefix))
        })
        .await
    }

    async fn list_prefixes(
        &self,
        request: Request<api::ListPrefixesRequest>,
    ) -> Result<Response<api::ListPrefixesResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "ListPrefixes", &metadata, async {
            let page = ListPage::Page {
                size: request.page_size,
                token: &request.page_token,
            };
            let listed = operations::list_prefixes(&self.app, &caller, &request.account_id, page)?;
            Ok(api::ListPrefixesResponse {
                prefixes: listed.items.iter().map(convert::prefix).collect(),
                next_page_token: listed.next_page_token,
            })
        })
        .await
    }

    async fn update_prefix(&self, request: Request<api::UpdatePrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "UpdatePrefix", &metadata, async {
            let description = Some(request.description.as_str());
            let (account_id, prefix_id) = (&request.account_id, &request.prefix_id);
            operations::update_prefix(
                &self.app,
                &caller,
                account_id,
                prefix_id,
                description,
                request.validate_only,
            )
            .await
            .map(|prefix| convert::prefix(&prefix))
        })
        .await
    }

    async fn delete_prefix(
        &self,
        request: Request<api::DeletePrefixRequest>,
    ) -> Result<Response<api::DeletePrefixResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "DeletePrefix", &metadata, async {
            let (account_id, prefix_id) = (&request.account_id, &request.prefix_id);
            let id =
                operations::delete_prefix(&self.app, &caller, account_id, prefix_id, request.validate_only).await?;
            Ok(api::DeletePrefixResponse { id: id.to_string() })
        })
        .await
    }
}
