//! addressing.v1.Rollout: an external provisioner reports bindings propagated, through
//! [`crate::operations`].

use tonic::{Request, Response, Status};

use super::{AppContext, convert, unary};
use crate::auth::layer::caller_of;
use crate::operations;
use crate::pb::api;
use crate::pb::api::rollout_server::Rollout;

pub struct RolloutService {
    app: AppContext,
}

impl RolloutService {
    pub fn new(app: AppContext) -> RolloutService {
        RolloutService { app }
    }
}

#[tonic::async_trait]
impl Rollout for RolloutService {
    async fn complete_provisioning(
        &self,
        request: Request<api::CompleteProvisioningRequest>,
    ) -> Result<Response<api::ServiceBinding>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let caller = caller_of(&extensions);
        unary(self.app.metrics(), "CompleteProvisioning", &metadata, async {
            let (account_id, prefix_id, binding_id) = (&request.account_id, &request.prefix_id, &request.binding_id);
            operations::complete_provisioning(&self.app, &caller, account_id, prefix_id, binding_id)
                .await
                .map(|binding| convert::binding(&binding))
        })
        .await
    }
}
