//! addressing.v1.Prefixes.

use tonic::{Request, Response, Status};

use super::{AppContext, convert, page_token, unary, unexpected};
use crate::domain::error::AllFields;
use crate::domain::{AccountId, Command, Error, Outcome, PrefixId, fields};
use crate::pb::api;
use crate::pb::api::prefixes_server::Prefixes;

pub struct PrefixesService {
    app: AppContext,
}

impl PrefixesService {
    pub fn new(app: AppContext) -> PrefixesService {
        PrefixesService { app }
    }

    async fn run(&self, command: Command) -> Result<api::Prefix, Error> {
        match self.app.engine()?.execute(command).await? {
            Outcome::Prefix(prefix) => Ok(convert::prefix(&prefix)),
            other => Err(unexpected(other)),
        }
    }
}

fn prefixes_scope(account_id: &AccountId) -> page_token::ListScope<'_> {
    page_token::ListScope {
        list: "prefixes",
        scope: account_id.as_bytes(),
    }
}

#[tonic::async_trait]
impl Prefixes for PrefixesService {
    async fn create_prefix(&self, request: Request<api::CreatePrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "CreatePrefix", &metadata, async {
            let (account_id, cidr, description) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_cidr("cidr", &request.cidr),
                fields::description("description", &request.description),
            )
                .all_fields()?;
            self.run(Command::CreatePrefix {
                id: PrefixId::generate(),
                account_id,
                cidr,
                asn: request.asn,
                description,
            })
            .await
        })
        .await
    }

    async fn get_prefix(&self, request: Request<api::GetPrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "GetPrefix", &metadata, async {
            let (account_id, prefix_id) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
            )
                .all_fields()?;
            let model = self.app.engine()?.projections().read();
            model.state.prefix(account_id, prefix_id).map(convert::prefix)
        })
        .await
    }

    async fn list_prefixes(
        &self,
        request: Request<api::ListPrefixesRequest>,
    ) -> Result<Response<api::ListPrefixesResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "ListPrefixes", &metadata, async {
            let (account_id, page_size) = (
                fields::account_id("account_id", &request.account_id),
                fields::page_size("page_size", request.page_size),
            )
                .all_fields()?;
            let scope = prefixes_scope(&account_id);
            let after = page_token::decode(&scope, "page_token", &request.page_token)?;
            let model = self.app.engine()?.projections().read();
            let page = model.state.list_prefixes(account_id, after, page_size);
            Ok(api::ListPrefixesResponse {
                prefixes: page.items.into_iter().map(convert::prefix).collect(),
                next_page_token: page
                    .next_after
                    .map(|key| page_token::encode(&scope, key))
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn update_prefix(&self, request: Request<api::UpdatePrefixRequest>) -> Result<Response<api::Prefix>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "UpdatePrefix", &metadata, async {
            let (account_id, prefix_id, description) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
                fields::description("description", &request.description),
            )
                .all_fields()?;
            self.run(Command::UpdatePrefix {
                account_id,
                prefix_id,
                description,
            })
            .await
        })
        .await
    }

    async fn delete_prefix(
        &self,
        request: Request<api::DeletePrefixRequest>,
    ) -> Result<Response<api::DeletePrefixResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "DeletePrefix", &metadata, async {
            let (account_id, prefix_id) = (
                fields::account_id("account_id", &request.account_id),
                fields::prefix_id("prefix_id", &request.prefix_id),
            )
                .all_fields()?;
            match self
                .app
                .engine()?
                .execute(Command::DeletePrefix { account_id, prefix_id })
                .await?
            {
                Outcome::PrefixDeleted(id) => Ok(api::DeletePrefixResponse { id: id.to_string() }),
                other => Err(unexpected(other)),
            }
        })
        .await
    }
}
