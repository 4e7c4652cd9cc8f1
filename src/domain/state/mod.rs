//! The aggregate state of every account, and the two halves of event sourcing over it:
//! [`State::decide`] (command -> events, or the rule that refuses it; in [`decide`]) and
//! [`State::apply`] (event -> new state; here). Decide never mutates; apply never refuses.
//! Queries used by reads live here too, so that the writer and the read model answer from the
//! same structure. [`copy`] holds the snapshot side: restoring a state from its records and
//! copying one in chunks while it changes.

mod copy;
mod decide;
mod requests;
mod routes;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use ipnet::IpNet;

use super::error::{Error, Reason};
use super::event::{Change, Event};
use super::ids::{AccountId, BindingId, PrefixId};
use super::model::{Binding, Micros, Prefix, ProvisioningState};
use super::network::{NetworkKey, contains};

pub use copy::{ChangedIds, Changes, RecordCopy, Records, SnapshotRecords};
pub use decide::Decision;
use requests::Requests;
pub use routes::{RangeChange, RouteTo};

/// What takes one event back out of a state ([`State::undo`]).
#[derive(Debug)]
pub enum Undo {
    /// Apply this change (the record as it was before, or its removal).
    Apply(Change),
    /// Remove a created binding and the request id it remembered (if it was the first use).
    ForgetBinding {
        binding: Binding,
        request: Option<(AccountId, String)>,
    },
}

/// One page of a list, in network order.
#[derive(Debug)]
pub struct Page<'a, T> {
    pub items: Vec<&'a T>,
    /// The key of the last item when more items follow.
    pub next_after: Option<NetworkKey>,
}

/// A map keyed by ids this server generated (random UUIDs): a fast hash is safe for them.
/// Keys a caller chooses (request ids) keep std's DoS-resistant SipHash. griddle's map grows
/// incrementally (a few entries move to the larger table with each insert): std's moves every
/// entry in the insert that crosses the load factor, which at 229,000 bindings stalled the
/// writer's decide and then the projections' apply for ~35 ms each, with every caller in the
/// group waiting (docs/benchmarks.md, tail latency of creates).
pub type IdMap<K, V> = griddle::HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Debug, Default)]
pub struct State {
    prefixes: IdMap<PrefixId, Prefix>,
    /// Every prefix by network, across accounts: the overlap check and the lookup of the
    /// prefix that covers an address.
    prefixes_by_network: BTreeMap<NetworkKey, PrefixId>,
    /// Each account's prefixes in list order. One tree keyed by (account, network) rather
    /// than a tree per account (and below, per prefix): many small trees cost a node
    /// allocation each, in memory, at a restore and in every copy of the state.
    prefixes_by_account: BTreeMap<(AccountId, NetworkKey), PrefixId>,
    bindings: IdMap<BindingId, Binding>,
    /// Each prefix's bindings in list order.
    bindings_by_prefix: BTreeMap<(PrefixId, NetworkKey), BindingId>,
    /// Idempotency keys, scoped to the account, kept for as long as the log exists.
    requests: Requests,
    /// The PROVISIONING bindings (the rollout backlog) by creation time, so that its size and
    /// its oldest entry are read without walking every binding.
    provisioning: BTreeSet<(Micros, BindingId)>,
}

impl State {
    // ---- decide -------------------------------------------------------------------------
    // ---- apply --------------------------------------------------------------------------

    /// Folds one event into the state. Events are facts: nothing here can refuse them.
    pub fn apply(&mut self, event: &Event) {
        self.apply_to_records(event);
        self.apply_to_indexes(event);
    }

    /// Folds a whole log into a state: the records event by event, the indexes built once at
    /// the end from the final records (a start without a snapshot; faster than keeping the
    /// ordered indexes up to date through every event).
    pub fn replay<E>(events: impl IntoIterator<Item = Result<Event, E>>) -> Result<(State, u64), E> {
        let mut state = State::default();
        let mut head = 0;
        for event in events {
            let event = event?;
            state.apply_to_records(&event);
            head = event.revision;
        }
        state.rebuild_indexes();
        Ok((state, head))
    }

    /// [`apply`](Self::apply), returning what takes the event back out again: a replica
    /// decides a group ahead of the log and must forget it when another replica's append won
    /// the race (cheaper than copying the whole state back).
    pub fn apply_undoably(&mut self, event: &Event) -> Undo {
        let undo = match &event.change {
            Change::PrefixCreated(prefix) => Undo::Apply(Change::PrefixDeleted(prefix.clone())),
            Change::PrefixUpdated(prefix) => match self.prefixes.get(&prefix.id) {
                Some(before) => Undo::Apply(Change::PrefixUpdated(before.clone())),
                None => Undo::Apply(Change::PrefixDeleted(prefix.clone())),
            },
            Change::PrefixDeleted(prefix) => Undo::Apply(Change::PrefixCreated(prefix.clone())),
            Change::BindingCreated { binding, request_id } => Undo::ForgetBinding {
                binding: binding.clone(),
                request: (request_id.as_ref())
                    .filter(|request_id| self.requests.get(binding.account_id, request_id).is_none())
                    .map(|request_id| (binding.account_id, request_id.clone())),
            },
            Change::BindingProvisioningStateChanged(binding) => match self.bindings.get(&binding.id) {
                Some(before) => Undo::Apply(Change::BindingProvisioningStateChanged(before.clone())),
                None => Undo::Apply(Change::BindingDeleted(binding.clone())),
            },
            Change::BindingDeleted(binding) => Undo::Apply(Change::BindingCreated {
                binding: self.bindings.get(&binding.id).unwrap_or(binding).clone(),
                request_id: None,
            }),
        };
        self.apply(event);
        undo
    }

    /// Takes back an event applied with [`apply_undoably`](Self::apply_undoably). Undos are
    /// taken back in the reverse order of their events.
    pub fn undo(&mut self, undo: Undo) {
        let (change, forget) = match undo {
            Undo::Apply(change) => (change, None),
            Undo::ForgetBinding { binding, request } => (Change::BindingDeleted(binding), request),
        };
        self.apply(&Event {
            revision: 0,
            time: Micros(0),
            change,
            actor: None,
        });
        if let Some((account_id, request_id)) = forget {
            self.requests.remove_last(account_id, &request_id);
        }
    }

    /// The records (by id), idempotency keys and counters.
    fn apply_to_records(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) => {
                self.prefixes.insert(prefix.id, prefix.clone());
            }
            Change::PrefixDeleted(prefix) => {
                self.prefixes.remove(&prefix.id);
            }
            Change::BindingCreated { binding, request_id } => {
                if let Some(request_id) = request_id {
                    self.requests.insert(binding.account_id, request_id, binding.clone());
                }
                let replaced = self.bindings.insert(binding.id, binding.clone());
                self.count_provisioning(replaced.as_ref(), Some(binding));
            }
            Change::BindingProvisioningStateChanged(binding) => {
                let replaced = self.bindings.insert(binding.id, binding.clone());
                self.count_provisioning(replaced.as_ref(), Some(binding));
            }
            Change::BindingDeleted(binding) => {
                let removed = self.bindings.remove(&binding.id);
                self.count_provisioning(removed.as_ref(), None);
            }
        }
    }

    /// The ordered indexes over the records.
    fn apply_to_indexes(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) => {
                let key = NetworkKey::of(&prefix.cidr);
                self.prefixes_by_network.insert(key, prefix.id);
                self.prefixes_by_account.insert((prefix.account_id, key), prefix.id);
            }
            Change::PrefixDeleted(prefix) => {
                // A prefix is deleted only without bindings: nothing left under it here.
                let key = NetworkKey::of(&prefix.cidr);
                self.prefixes_by_network.remove(&key);
                self.prefixes_by_account.remove(&(prefix.account_id, key));
            }
            Change::BindingCreated { binding, .. } => {
                self.bindings_by_prefix
                    .insert((binding.prefix_id, NetworkKey::of(&binding.cidr)), binding.id);
            }
            Change::BindingProvisioningStateChanged(_) => {}
            Change::BindingDeleted(binding) => {
                self.bindings_by_prefix
                    .remove(&(binding.prefix_id, NetworkKey::of(&binding.cidr)));
            }
        }
    }

    /// Builds the ordered indexes from the records in one go (sorted runs, packed nodes).
    fn rebuild_indexes(&mut self) {
        let prefixes = self.prefixes.values();
        self.prefixes_by_network = (prefixes.clone())
            .map(|prefix| (NetworkKey::of(&prefix.cidr), prefix.id))
            .collect();
        self.prefixes_by_account = prefixes
            .map(|prefix| ((prefix.account_id, NetworkKey::of(&prefix.cidr)), prefix.id))
            .collect();
        self.bindings_by_prefix = (self.bindings.values())
            .map(|binding| ((binding.prefix_id, NetworkKey::of(&binding.cidr)), binding.id))
            .collect();
    }

    /// Keeps `provisioning` in step with a binding going from `before` to `after`.
    fn count_provisioning(&mut self, before: Option<&Binding>, after: Option<&Binding>) {
        for (binding, present) in [(before, false), (after, true)] {
            let Some(binding) = binding.filter(|b| b.state == ProvisioningState::Provisioning) else {
                continue;
            };
            let key = (binding.created_at, binding.id);
            if present {
                self.provisioning.insert(key);
            } else {
                self.provisioning.remove(&key);
            }
        }
    }

    // ---- snapshots ----------------------------------------------------------------------

    /// The account's prefix; another account's is NOT_FOUND exactly like a missing one.
    pub fn prefix(&self, account_id: AccountId, prefix_id: PrefixId) -> Result<&Prefix, Error> {
        self.prefixes
            .get(&prefix_id)
            .filter(|prefix| prefix.account_id == account_id)
            .ok_or_else(|| {
                Error::field(
                    Reason::PrefixNotFound,
                    "prefix_id",
                    format!("prefix {prefix_id} not found"),
                )
            })
    }

    /// The prefix's binding; checks the prefix first.
    pub fn binding(
        &self,
        account_id: AccountId,
        prefix_id: PrefixId,
        binding_id: BindingId,
    ) -> Result<&Binding, Error> {
        self.prefix(account_id, prefix_id)?;
        self.bindings
            .get(&binding_id)
            .filter(|binding| binding.prefix_id == prefix_id && binding.account_id == account_id)
            .ok_or_else(|| {
                Error::field(
                    Reason::BindingNotFound,
                    "binding_id",
                    format!("binding {binding_id} not found"),
                )
            })
    }

    /// Any binding by id, whoever owns it (the rollout and the watch filters use it).
    pub fn binding_by_id(&self, binding_id: BindingId) -> Option<&Binding> {
        self.bindings.get(&binding_id)
    }

    pub fn prefix_by_id(&self, prefix_id: PrefixId) -> Option<&Prefix> {
        self.prefixes.get(&prefix_id)
    }

    pub fn list_prefixes(
        &self,
        account_id: AccountId,
        after: Option<NetworkKey>,
        page_size: usize,
    ) -> Page<'_, Prefix> {
        page(&self.prefixes_by_account, account_id, after, page_size, |id| {
            self.prefixes.get(id)
        })
    }

    pub fn list_bindings(&self, prefix_id: PrefixId, after: Option<NetworkKey>, page_size: usize) -> Page<'_, Binding> {
        page(&self.bindings_by_prefix, prefix_id, after, page_size, |id| {
            self.bindings.get(id)
        })
    }

    /// Every binding still provisioning (the rollout's backlog after a restart).
    pub fn provisioning_bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings
            .values()
            .filter(|binding| binding.state == ProvisioningState::Provisioning)
    }

    pub fn n_prefixes(&self) -> usize {
        self.prefixes.len()
    }

    pub fn n_bindings(&self) -> usize {
        self.bindings.len()
    }

    /// How many bindings are PROVISIONING.
    pub fn n_provisioning(&self) -> usize {
        self.provisioning.len()
    }

    /// When the oldest PROVISIONING binding was created (none: no backlog).
    pub fn oldest_provisioning(&self) -> Option<Micros> {
        self.provisioning.first().map(|(created_at, _)| *created_at)
    }

    /// The prefix that contains `network`, if any (prefixes never overlap, so there is at most
    /// one).
    pub fn covering_prefix(&self, network: &IpNet) -> Option<&Prefix> {
        let key = NetworkKey::of(network);
        let (_, id) = self.prefixes_by_network.range(..=key).next_back()?;
        let prefix = self.prefixes.get(id)?;
        contains(&prefix.cidr, network).then_some(prefix)
    }

    /// An existing prefix that overlaps `cidr`: one that contains it or one inside it.
    fn overlapping_prefix(&self, cidr: &IpNet) -> Option<&Prefix> {
        if let Some(container) = self.covering_prefix(cidr) {
            return Some(container);
        }
        let key = NetworkKey::of(cidr);
        let last = NetworkKey {
            family: key.family,
            address: key.last_address(),
            prefix_len: u8::MAX,
        };
        let (_, id) = self.prefixes_by_network.range(key..=last).next()?;
        self.prefixes.get(id)
    }

    /// The binding whose CIDR equals the prefix's: present whenever the prefix has bindings.
    fn prefix_wide_binding(&self, prefix: &Prefix) -> Option<&Binding> {
        self.binding_at(prefix.id, &prefix.cidr)
    }

    fn binding_at(&self, prefix_id: PrefixId, cidr: &IpNet) -> Option<&Binding> {
        let id = self.bindings_by_prefix.get(&(prefix_id, NetworkKey::of(cidr)))?;
        self.bindings.get(id)
    }
}

/// The entries of `index` under `scope` (an account's prefixes, a prefix's bindings), in
/// network order.
fn scoped<S: Ord + Copy, Id>(
    index: &BTreeMap<(S, NetworkKey), Id>,
    scope: S,
) -> std::collections::btree_map::Range<'_, (S, NetworkKey), Id> {
    index.range((scope, NetworkKey::MIN)..=(scope, NetworkKey::MAX))
}

/// One page of `index` under `scope`, after the key `after`.
fn page<'a, S: Ord + Copy, Id, T>(
    index: &BTreeMap<(S, NetworkKey), Id>,
    scope: S,
    after: Option<NetworkKey>,
    page_size: usize,
    resolve: impl Fn(&Id) -> Option<&'a T>,
) -> Page<'a, T> {
    let start = after.map_or(Bound::Included((scope, NetworkKey::MIN)), |after| {
        Bound::Excluded((scope, after))
    });
    let mut entries = index.range((start, Bound::Included((scope, NetworkKey::MAX))));
    let mut items = Vec::new();
    let mut last_key = None;
    for ((_, key), id) in entries.by_ref().take(page_size) {
        items.extend(resolve(id));
        last_key = Some(*key);
    }
    let next_after = if entries.next().is_some() { last_key } else { None };
    Page { items, next_after }
}
