//! addressing.v1.Routing: longest-prefix-match lookups over every binding of every account,
//! answered from the routing projection under one short read lock per call.

use std::net::IpAddr;

use tonic::{Request, Response, Status};

use super::{AppContext, convert, unary};
use crate::domain::fields::MAX_LOOKUP_BATCH;
use crate::domain::{Error, Reason, fields};
use crate::pb::api;
use crate::pb::api::routing_server::Routing;
use crate::projection::ReadModel;

pub struct RoutingService {
    app: AppContext,
}

impl RoutingService {
    pub fn new(app: AppContext) -> RoutingService {
        RoutingService { app }
    }
}

/// The answer for one address: `None` when no prefix covers it.
fn resolve(model: &ReadModel, text: &str, address: IpAddr, active_only: bool) -> Option<api::LookupAddressResult> {
    let route = model.routes.lookup(address, active_only)?;
    let account_id = model
        .state
        .prefix_by_id(route.prefix_id)
        .map(|prefix| prefix.account_id.to_string());
    let binding = route
        .binding_id
        .and_then(|id| model.state.binding_by_id(id))
        .map(convert::binding);
    Some(api::LookupAddressResult {
        address: text.to_string(),
        found: binding.is_some(),
        prefix_id: route.prefix_id.to_string(),
        account_id: account_id.unwrap_or_default(),
        binding,
    })
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
                .map(|(index, text)| fields::address(&format!("addresses[{index}]"), text))
                .collect::<Result<Vec<_>, _>>()?;
            let model = self.app.engine()?.projections().read();
            let results = request
                .addresses
                .iter()
                .zip(addresses)
                .map(|(text, address)| {
                    resolve(&model, text, address, request.active_only).unwrap_or_else(|| api::LookupAddressResult {
                        address: text.clone(),
                        ..Default::default()
                    })
                })
                .collect();
            Ok(api::LookupAddressesResponse { results })
        })
        .await
    }
}
