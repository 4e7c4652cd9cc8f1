//! addressing.v1.Services: the fixed catalog.

use tonic::{Request, Response, Status};

use super::{AppContext, convert, unary};
use crate::auth::layer::caller_of;
use crate::operations;
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
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "ListServices", &metadata, async {
            let services = operations::list_services(&caller, &request.account_id)?;
            Ok(api::ListServicesResponse {
                services: services.iter().copied().map(convert::service).collect(),
            })
        })
        .await
    }
}
