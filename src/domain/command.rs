//! Commands: what a caller asks the writer to change, already parsed into domain types (field
//! shapes are checked at the edge by [`super::fields`]; rules that need state are checked by
//! [`super::state::State::decide`]).

use ipnet::IpNet;

use super::ids::{AccountId, BindingId, PrefixId};
use super::model::{Binding, Prefix};
use super::service::Service;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    CreatePrefix {
        /// The new prefix's id, chosen by the caller's edge so that deciding is deterministic.
        id: PrefixId,
        account_id: AccountId,
        cidr: IpNet,
        asn: Option<u32>,
        description: String,
    },
    UpdatePrefix {
        account_id: AccountId,
        prefix_id: PrefixId,
        description: String,
    },
    DeletePrefix {
        account_id: AccountId,
        prefix_id: PrefixId,
    },
    CreateBinding {
        /// The new binding's id (unused when a remembered request_id answers instead).
        id: BindingId,
        account_id: AccountId,
        prefix_id: PrefixId,
        cidr: IpNet,
        service: Service,
        request_id: Option<String>,
    },
    DeleteBinding {
        account_id: AccountId,
        prefix_id: PrefixId,
        binding_id: BindingId,
    },
    /// An external provisioner reports the account's binding propagated: PROVISIONING ->
    /// ACTIVE; an ACTIVE one answers as it is (nothing appended); a missing, deleted or
    /// foreign one is NOT_FOUND.
    CompleteProvisioning {
        account_id: AccountId,
        prefix_id: PrefixId,
        binding_id: BindingId,
    },
    /// The rollout reports the binding propagated. Not a caller's command: no tenancy check,
    /// and a binding that is gone or already active is a no-op (so it is safe to repeat).
    ActivateBinding {
        binding_id: BindingId,
    },
}

/// What a command's caller gets back once its events are durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Prefix(Prefix),
    Binding(Binding),
    PrefixDeleted(PrefixId),
    BindingDeleted(BindingId),
    /// Nothing to report (an activation that had nothing to do).
    Nothing,
}
