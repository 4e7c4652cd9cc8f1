//! addressing.v1.Services: the fixed catalog.

use tonic::{Request, Response, Status};

use super::{AppContext, convert, unary};
use crate::domain::{Service, fields};
use crate::pb::api;
use crate::pb::api::services_server::Services;

pub struct ServicesService {
    app: AppContext,
}

impl ServicesService {
    pub fn new(app: AppContext) -> ServicesService {
        ServicesService { app }
    }
}

#[tonic::async_trait]
impl Services for ServicesService {
    async fn list_services(
        &self,
        request: Request<api::ListServicesRequest>,
    ) -> Result<Response<api::ListServicesResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        unary(self.app.metrics(), "ListServices", &metadata, async {
            fields::account_id("account_id", &request.account_id)?;
            Ok(api::ListServicesResponse {
                services: Service::ALL.into_iter().map(convert::service).collect(),
            })
        })
        .await
    }
}
