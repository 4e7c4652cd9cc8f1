//! addressing.v1.Routing: longest-prefix-match lookups over every binding of every account,
//! answered from the routing projection under one short read lock per call.

use std::net::IpAddr;
use std::sync::RwLock;

use std::pin::Pin;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{AppContext, convert, routes, unary, wire};
use crate::auth::layer::caller_of;
use crate::domain::fields::MAX_LOOKUP_BATCH;
use crate::domain::{Binding, BindingId, Error, IdMap, Micros, PrefixId, ProvisioningState, Reason, fields};
use crate::operations::{self, NewBinding, PreviewOf};
use crate::pb::api;
use crate::pb::api::routing_server::Routing;
use crate::projection::ReadModel;
use crate::projection::routing::Route;

/// Room reserved per batch result: an address, ids and a binding.
const TYPICAL_ENTRY_BYTES: usize = 256;
/// Encoded result tails kept for reuse; past this many (deleted bindings linger) it restarts.
const MAX_CACHED_TAILS: usize = 1 << 20;

/// An encoded result tail (see `wire`), valid while its binding's version is unchanged.
type TailCache = IdMap<(PrefixId, Option<BindingId>), (Version, Vec<u8>)>;
/// A binding's modification time and state (`None`: no binding).
type Version = Option<(Micros, ProvisioningState)>;

pub struct RoutingService {
    app: AppContext,
    /// Batch lookups reuse each route's encoded result: formatting ids and the binding per
    /// address was most of their cost. Checked against the binding's modification time and
    /// state, so a changed binding is re-encoded.
    tails: RwLock<TailCache>,
}

impl RoutingService {
    pub fn new(app: AppContext) -> RoutingService {
        RoutingService {
            app,
            tails: RwLock::default(),
        }
    }
}

/// The answer for one address: `None` when no prefix covers it.
fn resolve(model: &ReadModel, text: &str, address: IpAddr, active_only: bool) -> Option<api::LookupAddressResult> {
    let route = model.routes.lookup(address, active_only)?;
    let binding = route.binding_id.and_then(|id| model.state.binding_by_id(id));
    Some(result(model, route, binding, text.to_string()))
}

fn result(model: &ReadModel, route: Route, binding: Option<&Binding>, address: String) -> api::LookupAddressResult {
    let account_id = model
        .state
        .prefix_by_id(route.prefix_id)
        .map(|prefix| prefix.account_id.to_string());
    api::LookupAddressResult {
        address,
        found: binding.is_some(),
        prefix_id: route.prefix_id.to_string(),
        account_id: account_id.unwrap_or_default(),
        binding: binding.map(convert::binding),
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
            let result = resolve(&model, &request.address, address, request.active_only).ok_or_else(|| {
                Error::field(
                    Reason::AddressNotCovered,
                    "address",
                    format!("no prefix covers {address}"),
                )
            })?;
            Ok(api::LookupAddressResponse {
                address: result.address,
                prefix_id: result.prefix_id,
                account_id: result.account_id,
                binding: result.binding,
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
            if request.addresses.len() > MAX_LOOKUP_BATCH {
                return Err(Error::field(
                    Reason::TooManyAddresses,
                    "addresses",
                    format!(
                        "{} addresses in one call; at most {MAX_LOOKUP_BATCH} are allowed",
                        request.addresses.len()
                    ),
                ));
            }
            let addresses = request
                .addresses
                .iter()
                .enumerate()
                .map(|(index, text)| fields::address_at("addresses", index, text))
                .collect::<Result<Vec<_>, _>>()?;
            let model = self.app.engine()?.projections().read();
            let mut response = api::LookupAddressesResponse::with_capacity(addresses.len(), TYPICAL_ENTRY_BYTES);
            let cached = self.tails.read().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut fresh = TailCache::default();
            let routes = model.routes.lookup_many(&addresses, request.active_only);
            for (text, route) in request.addresses.iter().zip(routes) {
                let Some(route) = route else {
                    response.push(text, &[]);
                    continue;
                };
                let binding = route.binding_id.and_then(|id| model.state.binding_by_id(id));
                let version = binding.map(|binding| (binding.modified_at, binding.state));
                let key = (route.prefix_id, route.binding_id);
                let current = |entry: &&(Version, Vec<u8>)| entry.0 == version;
                if let Some((_, tail)) = cached.get(&key).filter(current) {
                    response.push(text, tail);
                } else if let Some((_, tail)) = fresh.get(&key).filter(current) {
                    response.push(text, tail);
                } else {
                    let tail = wire::encode_tail(&result(&model, route, binding, String::new()));
                    response.push(text, &tail);
                    fresh.insert(key, (version, tail));
                }
            }
            drop((cached, model));
            if !fresh.is_empty() {
                let mut tails = self.tails.write().unwrap_or_else(|poisoned| poisoned.into_inner());
                if tails.len() + fresh.len() > MAX_CACHED_TAILS {
                    tails.clear();
                }
                tails.extend(fresh);
            }
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
            operations::export_routes(&self.app, &caller, &request.account_id, request.active_only)
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
            routes::watch(&self.app, caller, request).await
        })
        .await?
        .into_inner();
        Ok(Response::new(Box::pin(stream)))
    }
}
