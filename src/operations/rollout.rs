//! The rollout's one operation for callers: an external provisioner reporting a binding
//! propagated.

use super::bindings::binding_ids;
use super::{AppContext, unexpected};
use crate::auth::{Caller, Need, Permission};
use crate::config::RolloutMode;
use crate::domain::{Binding, Command, Error, Outcome, Reason};

/// PROVISIONING -> ACTIVE with the event the built-in rollout appends; an ACTIVE binding
/// answers as it is, appending nothing.
pub async fn complete_provisioning(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    binding_id: &str,
) -> Result<Binding, Error> {
    caller.require(Need::Global(Permission::RolloutComplete))?;
    let (account_id, prefix_id, binding_id) = binding_ids(account_id, prefix_id, binding_id)?;
    if app.rollout() != RolloutMode::External {
        return Err(Error::new(
            Reason::RolloutNotExternal,
            "this server's built-in timer activates bindings; start it with --rollout external to let a provisioner report them",
        ));
    }
    let command = Command::CompleteProvisioning {
        account_id,
        prefix_id,
        binding_id,
    };
    match app.engine()?.execute(command, caller.actor()).await? {
        Outcome::Binding(binding) => Ok(binding),
        other => Err(unexpected(other)),
    }
}
