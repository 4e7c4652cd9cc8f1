//! Events: the past-tense facts that the log stores. State is a fold of them (see
//! [`super::state::State::apply`]); every event carries the full record as of that event, so a
//! watcher or a projection needs nothing but the event itself.

use std::sync::Arc;

use super::actor::Actor;
use super::model::{Binding, Micros, Prefix};

/// What changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    PrefixCreated(Prefix),
    /// The prefix as it is after the update.
    PrefixUpdated(Prefix),
    /// The prefix as it was.
    PrefixDeleted(Prefix),
    BindingCreated {
        binding: Binding,
        /// The caller's idempotency key, remembered as long as the log exists.
        request_id: Option<String>,
    },
    /// The binding as it is after the transition.
    BindingProvisioningStateChanged(Binding),
    /// The binding as it was.
    BindingDeleted(Binding),
}

impl Change {
    /// The binding this change concerns, for binding changes.
    pub fn binding(&self) -> Option<&Binding> {
        match self {
            Change::BindingCreated { binding, .. }
            | Change::BindingProvisioningStateChanged(binding)
            | Change::BindingDeleted(binding) => Some(binding),
            Change::PrefixCreated(_) | Change::PrefixUpdated(_) | Change::PrefixDeleted(_) => None,
        }
    }
}

/// A change with its place in the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Global, gap-free, starting at 1.
    pub revision: u64,
    pub time: Micros,
    pub change: Change,
    /// Who made it; `None` in logs written before events recorded it.
    pub actor: Option<Arc<Actor>>,
}
