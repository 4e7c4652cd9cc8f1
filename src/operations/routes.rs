//! The routing table as a whole: what a binding change would do to traffic (a preview, which
//! changes nothing) and the effective table (an export). Watching the table's changes is
//! [`crate::api::routes`]'s, over the engine's route history.

use super::bindings::{create_command, delete_command};
use super::{AppContext, NewBinding, authorize};
use crate::auth::{Caller, Permission};
use crate::domain::state::{RangeChange, RouteTo};
use crate::domain::{AccountId, Error, Micros, Reason, fields};

/// The change to preview, as the caller sent it.
#[derive(Clone, Copy, Debug)]
pub enum PreviewOf<'a> {
    Create(NewBinding<'a>),
    Delete {
        account_id: &'a str,
        prefix_id: &'a str,
        binding_id: &'a str,
    },
}

/// A preview: the head it was computed at and the ranges that would move.
#[derive(Debug)]
pub struct Preview {
    pub revision: u64,
    pub changes: Vec<RangeChange>,
}

/// The ranges whose most specific binding the change would move. The change is checked as
/// the real call checks it (same errors); nothing is appended.
pub fn preview_change(app: &AppContext, caller: &Caller, change: PreviewOf<'_>) -> Result<Preview, Error> {
    let command = match change {
        PreviewOf::Create(new) => {
            authorize(caller, Permission::PrefixesRead, new.account_id)?;
            create_command(&new).map_err(|error| error.renamed_field("request_id", new.request_id_field))?
        }
        PreviewOf::Delete {
            account_id,
            prefix_id,
            binding_id,
        } => {
            authorize(caller, Permission::PrefixesRead, account_id)?;
            delete_command(account_id, prefix_id, binding_id)?
        }
    };
    // One read: the decision and the table it changes are of the same head.
    let model = app.engine()?.projections().read();
    let decision = model.state.decide(&command, Micros::now())?;
    let changes = (decision.changes.iter())
        .flat_map(|change| model.state.route_changes(change))
        .collect();
    Ok(Preview {
        revision: model.head,
        changes,
    })
}

/// What a whole-table read needs of its caller: read on the account, or `routing.lookup` for
/// every account. The account, if any.
pub fn authorize_table(caller: &Caller, account_id: &str) -> Result<Option<AccountId>, Error> {
    if account_id.is_empty() {
        caller.require_account_or(None, Permission::RoutingLookup)?;
        return Ok(None);
    }
    authorize(caller, Permission::PrefixesRead, account_id)?;
    fields::account_id("account_id", account_id).map(Some)
}

/// The effective table at one head, of one account (or all with an empty `account_id`).
/// Computing a large table takes a while (about half a second at a million routes): it runs
/// on a blocking thread, and reads the projections a piece at a time, so writes go on.
pub async fn export_routes(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    active_only: bool,
) -> Result<(u64, Vec<RouteTo>), Error> {
    let account_id = authorize_table(caller, account_id)?;
    let projections = app.engine()?.projections().clone();
    tokio::task::spawn_blocking(move || projections.effective_routes(account_id, active_only))
        .await
        .map_err(|error| Error::new(Reason::Internal, format!("the export task failed: {error}")))
}
