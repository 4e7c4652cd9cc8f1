//! addressing.v1.Routing: longest-prefix-match lookups over every binding of every account,
//! answered from the routing projection under one short read lock per call.

use std::pin::Pin;
use std::sync::{Arc, RwLock};

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::lookup::{self, KeptRoutes, MAX_CACHED_BYTES, MAX_CACHED_ROUTES, RouteCache, View};
use super::{AppContext, EncodedMessages, routes, unary};
use crate::auth::layer::caller_of;
use crate::domain::fields::MAX_LOOKUP_BATCH;
use crate::domain::{Error, Reason, fields};
use crate::operations::{self, NewBinding, PreviewOf};
use crate::pb::api;
use crate::pb::api::routing_server::Routing;

pub struct RoutingService {
    app: AppContext,
    /// Lookups reuse each route's encoded fields (see `lookup`).
    routes: RwLock<KeptRoutes>,
    /// The WatchRoutes streams' deltas, each encoded once for all of them.
    deltas: Arc<EncodedMessages>,
}

impl RoutingService {
    pub fn new(app: AppContext) -> RoutingService {
        RoutingService {
            app,
            routes: RwLock::default(),
            deltas: Arc::default(),
        }
    }

    /// Adds the routes a lookup encoded to the cache.
    fn keep(&self, fresh: RouteCache) {
        if fresh.is_empty() {
            return;
        }
        let mut routes = self.routes.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        routes.keep(fresh, MAX_CACHED_ROUTES, MAX_CACHED_BYTES);
    }
}

#[tonic::async_trait]
impl Routing for RoutingService {
    async fn lookup_address(
        &self,
        request: Request<api::LookupAddressRequest>,
    ) -> Result<Response<api::LookupAddressResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "LookupAddress", &metadata, async {
            let address = fields::address("address", &request.address)?;
            let model = self.app.engine()?.projections().read();
            let kept = self.routes.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let cached = kept.routes();
            let mut fresh = RouteCache::default();
            let answer = lookup::answer_one(
                &model,
                &request.address,
                address,
                request.active_only,
                cached,
                &mut fresh,
            );
            drop((kept, model));
            self.keep(fresh);
            answer.ok_or_else(|| {
                Error::field(
                    Reason::AddressNotCovered,
                    "address",
                    format!("no prefix covers {address}"),
                )
            })
        })
        .await
    }

    async fn lookup_addresses(
        &self,
        request: Request<api::LookupAddressesRequest>,
    ) -> Result<Response<api::LookupAddressesResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "LookupAddresses", &metadata, async {
            if request.len() > MAX_LOOKUP_BATCH {
                return Err(Error::field(
                    Reason::TooManyAddresses,
                    "addresses",
                    format!(
                        "{} addresses in one call; at most {MAX_LOOKUP_BATCH} are allowed",
                        request.len()
                    ),
                ));
            }
            let texts: Vec<&str> = request.addresses().collect();
            let addresses = fields::addresses("addresses", &texts)?;
            let view = View::from_request(request.view)?;
            let model = self.app.engine()?.projections().read();
            let kept = self.routes.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let cached = kept.routes();
            let mut fresh = RouteCache::default();
            let response = lookup::answer(
                &model,
                &texts,
                &addresses,
                request.active_only,
                view,
                cached,
                &mut fresh,
            );
            drop((kept, model));
            self.keep(fresh);
            Ok(response)
        })
        .await
    }

    async fn preview_change(
        &self,
        request: Request<api::PreviewChangeRequest>,
    ) -> Result<Response<api::PreviewChangeResponse>, Status> {
        use api::preview_change_request::Change;
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "PreviewChange", &metadata, async {
            let (change, creating) = match &request.change {
                Some(Change::CreateServiceBinding(create)) => {
                    let new = NewBinding {
                        account_id: &create.account_id,
                        prefix_id: &create.prefix_id,
                        cidr: &create.cidr,
                        service_id: &create.service_id,
                        request_id: &create.request_id,
                        request_id_field: "request_id",
                        validate_only: true,
                    };
                    (PreviewOf::Create(new), true)
                }
                Some(Change::DeleteServiceBinding(delete)) => {
                    let delete = PreviewOf::Delete {
                        account_id: &delete.account_id,
                        prefix_id: &delete.prefix_id,
                        binding_id: &delete.binding_id,
                    };
                    (delete, false)
                }
                None => {
                    return Err(Error::field(
                        Reason::MalformedRequest,
                        "change",
                        "say which change to preview: create_service_binding or delete_service_binding",
                    ));
                }
            };
            let preview = operations::preview_change(&self.app, &caller, change)?;
            Ok(routes::preview(&preview, creating))
        })
        .await
    }

    type ExportRoutesStream = Pin<Box<dyn Stream<Item = Result<api::ExportRoutesResponse, Status>> + Send>>;

    async fn export_routes(
        &self,
        request: Request<api::ExportRoutesRequest>,
    ) -> Result<Response<Self::ExportRoutesStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        let (revision, table) = unary(self.app.metrics(), "ExportRoutes", &metadata, async {
            operations::export_routes(&self.app, &caller, &request.account_id, request.active_only).await
        })
        .await?
        .into_inner();
        Ok(Response::new(Box::pin(routes::export_messages(revision, table))))
    }

    type WatchRoutesStream = Pin<Box<dyn Stream<Item = Result<api::RouteDelta, Status>> + Send>>;

    async fn watch_routes(
        &self,
        request: Request<api::WatchRoutesRequest>,
    ) -> Result<Response<Self::WatchRoutesStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        let stream = unary(self.app.metrics(), "WatchRoutes", &metadata, async {
            routes::watch(&self.app, &self.deltas, caller, request).await
        })
        .await?
        .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
