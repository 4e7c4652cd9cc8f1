//! The state seen as a routing table: the bindings around a CIDR, what a binding change does
//! to traffic, and the effective table of some or all accounts.

use std::collections::btree_map::Range;

use ipnet::IpNet;

use super::{State, scoped};
use crate::domain::event::Change;
use crate::domain::ids::{AccountId, BindingId, PrefixId};
use crate::domain::model::{Binding, ProvisioningState};
use crate::domain::network::NetworkKey;
use crate::domain::routes::{AddressRange, effective_ranges, uncovered};
use crate::domain::service::Service;

/// A range of the table and the binding that handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteTo {
    pub range: AddressRange,
    pub account_id: AccountId,
    pub prefix_id: PrefixId,
    pub binding_id: BindingId,
    pub service: Service,
}

impl RouteTo {
    pub fn new(range: AddressRange, binding: &Binding) -> RouteTo {
        RouteTo {
            range,
            account_id: binding.account_id,
            prefix_id: binding.prefix_id,
            binding_id: binding.id,
            service: binding.service,
        }
    }
}

/// A range whose most specific binding a change moves from `before` to `after`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeChange {
    pub range: AddressRange,
    pub before: Option<Binding>,
    pub after: Option<Binding>,
}

fn counts(binding: &Binding, active_only: bool) -> bool {
    !active_only || binding.state == ProvisioningState::Active
}

impl State {
    /// The prefix's bindings in list order.
    fn bindings_of(&self, prefix_id: PrefixId) -> impl Iterator<Item = &Binding> {
        scoped(&self.bindings_by_prefix, prefix_id).filter_map(|(_, id)| self.bindings.get(id))
    }

    /// The prefix's bindings strictly inside `cidr`, in list order.
    pub fn bindings_inside(&self, prefix_id: PrefixId, cidr: &IpNet) -> impl Iterator<Item = &Binding> {
        let key = NetworkKey::of(cidr);
        let last = key.last_address();
        let after: Range<'_, (PrefixId, NetworkKey), BindingId> = self.bindings_by_prefix.range((
            std::ops::Bound::Excluded((prefix_id, key)),
            std::ops::Bound::Included((prefix_id, NetworkKey::MAX)),
        ));
        after
            .take_while(move |((_, inner), _)| inner.family == key.family && inner.address <= last)
            .filter_map(|(_, id)| self.bindings.get(id))
    }

    /// The most specific binding of the prefix that strictly contains `cidr` (an ACTIVE one
    /// with `active_only`).
    pub fn parent_binding(&self, prefix_id: PrefixId, cidr: &IpNet, active_only: bool) -> Option<&Binding> {
        (0..cidr.prefix_len()).rev().find_map(|len| {
            let supernet = IpNet::new(cidr.network(), len).ok()?.trunc();
            let id = self.bindings_by_prefix.get(&(prefix_id, NetworkKey::of(&supernet)))?;
            self.bindings.get(id).filter(|binding| counts(binding, active_only))
        })
    }

    /// What `change` (a binding created or deleted, decided against this state) does to the
    /// table of PROVISIONING and ACTIVE bindings: the ranges whose most specific binding
    /// moves. They are the binding's CIDR minus the bindings inside it, and all move between
    /// the binding and the one around it.
    pub fn route_changes(&self, change: &Change) -> Vec<RangeChange> {
        let (binding, created) = match change {
            Change::BindingCreated { binding, .. } => (binding, true),
            Change::BindingDeleted(binding) => (binding, false),
            _ => return Vec::new(),
        };
        let inside = self.bindings_inside(binding.prefix_id, &binding.cidr);
        let ranges = uncovered(
            AddressRange::of(&binding.cidr),
            inside.map(|inner| AddressRange::of(&inner.cidr)),
        );
        let around = self.parent_binding(binding.prefix_id, &binding.cidr, false).cloned();
        let (before, after) = if created {
            (around, Some(binding.clone()))
        } else {
            (Some(binding.clone()), around)
        };
        (ranges.into_iter())
            .map(|range| RangeChange {
                range,
                before: before.clone(),
                after: after.clone(),
            })
            .collect()
    }

    /// The effective table: every address a binding covers, as maximal ranges with its most
    /// specific binding (ACTIVE ones only with `active_only`), in address order, IPv4 first;
    /// of one account or of all.
    pub fn effective_routes(&self, account_id: Option<AccountId>, active_only: bool) -> Vec<RouteTo> {
        let mut routes: Vec<RouteTo> = Vec::new();
        for prefix_id in self.table_prefixes(account_id) {
            self.prefix_routes(prefix_id, active_only, &mut routes);
        }
        routes
    }

    /// The prefixes of the effective table of one account or of all, in address order
    /// (prefixes never overlap, so their routes follow each other in that order too).
    pub fn table_prefixes(&self, account_id: Option<AccountId>) -> Box<dyn Iterator<Item = PrefixId> + '_> {
        match account_id {
            Some(account_id) => Box::new(scoped(&self.prefixes_by_account, account_id).map(|(_, id)| *id)),
            None => Box::new(self.prefixes_by_network.values().copied()),
        }
    }

    /// Appends the effective routes of one prefix (none when it does not exist).
    pub fn prefix_routes(&self, prefix_id: PrefixId, active_only: bool, routes: &mut Vec<RouteTo>) {
        let bindings = (self.bindings_of(prefix_id))
            .filter(|binding| counts(binding, active_only))
            .map(|binding| (AddressRange::of(&binding.cidr), binding));
        routes.extend(
            effective_ranges(bindings)
                .into_iter()
                .map(|(range, binding)| RouteTo::new(range, binding)),
        );
    }
}
