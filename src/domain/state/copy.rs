//! Snapshots of the state: the records a snapshot stores, a state restored from them, a copy
//! taken in chunks while the state keeps changing (a background snapshot), completed with the
//! events written meanwhile, and what a run of events changed (a snapshot delta).

use std::collections::{HashMap, HashSet};
use std::hash::Hash;

use super::requests::Requests;
use super::{IdMap, State};
use crate::domain::event::{Change, Event};
use crate::domain::ids::{AccountId, BindingId, PrefixId};
use crate::domain::model::{Binding, Prefix, ProvisioningState};

/// The records a snapshot stores, wherever they are held: a [`State`] (a stop's final
/// checkpoint), [`Records`] (a background snapshot) or [`Changes`] (a delta, the records it sets).
pub trait SnapshotRecords {
    fn prefixes(&self) -> impl Iterator<Item = &Prefix>;
    fn bindings(&self) -> impl Iterator<Item = &Binding>;
    /// Every idempotency key with the binding it created, as created.
    fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)>;
}

impl SnapshotRecords for State {
    fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        State::prefixes(self)
    }

    fn bindings(&self) -> impl Iterator<Item = &Binding> {
        State::bindings(self)
    }

    fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        State::remembered_requests(self)
    }
}

impl State {
    pub fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.prefixes.values()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Every idempotency key with the binding it created, as created.
    pub fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        self.requests.iter()
    }

    /// Rebuilds a state from the records a snapshot holds; equal to the state the events up to
    /// the snapshot's revision fold into. The indexes are built from sorted runs in one go
    /// (`BTreeMap::from_iter`), packed, instead of one insert per record.
    pub fn restore(
        prefixes: impl IntoIterator<Item = Prefix>,
        bindings: impl IntoIterator<Item = Binding>,
        requests: impl IntoIterator<Item = (AccountId, String, Binding)>,
    ) -> State {
        let prefixes: IdMap<PrefixId, Prefix> = prefixes.into_iter().map(|prefix| (prefix.id, prefix)).collect();
        let bindings: IdMap<BindingId, Binding> = bindings.into_iter().map(|binding| (binding.id, binding)).collect();
        let mut remembered = Requests::default();
        for (account_id, request_id, binding) in requests {
            remembered.insert(account_id, &request_id, binding);
        }
        let mut state = State {
            provisioning: (bindings.values())
                .filter(|binding| binding.state == ProvisioningState::Provisioning)
                .map(|binding| (binding.created_at, binding.id))
                .collect(),
            requests: remembered,
            prefixes,
            bindings,
            ..State::default()
        };
        state.rebuild_indexes();
        state
    }

    /// Starts a copy of the records that is taken a chunk at a time ([`RecordCopy::copy_from`])
    /// while the state keeps changing: what a background snapshot needs without stopping
    /// writes for a whole copy.
    pub fn start_copy(&self) -> RecordCopy {
        RecordCopy {
            prefix_ids: self.prefixes.keys().copied().collect(),
            binding_ids: self.bindings.keys().copied().collect(),
            requests_from: 0,
            requests_at_start: self.requests.len(),
            copied: 0,
            prefixes: Vec::with_capacity(self.prefixes.len()),
            bindings: Vec::with_capacity(self.bindings.len()),
            requests: Vec::with_capacity(self.requests.len()),
        }
    }

    /// Starts a copy, taken as [`start_copy`](Self::start_copy)'s is, of the records `changed`
    /// names (those deleted since are missing) and of the idempotency keys added after the
    /// first `requests_from`: a delta's, completed by [`RecordCopy::changes`].
    pub fn start_copy_of(&self, changed: ChangedIds, requests_from: usize) -> RecordCopy {
        let requests_at_start = self.requests.len();
        RecordCopy {
            prefixes: Vec::with_capacity(changed.prefixes.len()),
            bindings: Vec::with_capacity(changed.bindings.len()),
            requests: Vec::with_capacity(requests_at_start.saturating_sub(requests_from)),
            prefix_ids: changed.prefixes.into_iter().collect(),
            binding_ids: changed.bindings.into_iter().collect(),
            requests_from: requests_from.min(requests_at_start),
            requests_at_start,
            copied: 0,
        }
    }

    /// How many idempotency keys are remembered: where the next one added goes.
    pub fn n_remembered_requests(&self) -> usize {
        self.requests.len()
    }

    /// How many records a snapshot of this state holds: prefixes, bindings, idempotency keys.
    pub fn n_records(&self) -> usize {
        self.prefixes.len() + self.bindings.len() + self.requests.len()
    }
}

/// The ids of the prefixes and bindings that events set or deleted: what a delta after them
/// copies.
#[derive(Debug, Default)]
pub struct ChangedIds {
    prefixes: HashSet<PrefixId, foldhash::fast::RandomState>,
    bindings: HashSet<BindingId, foldhash::fast::RandomState>,
}

impl ChangedIds {
    pub fn n_ids(&self) -> usize {
        self.prefixes.len() + self.bindings.len()
    }

    /// Adds the record `event` sets or deletes.
    pub fn record(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) | Change::PrefixDeleted(prefix) => {
                self.prefixes.insert(prefix.id);
            }
            Change::BindingCreated { binding, .. }
            | Change::BindingProvisioningStateChanged(binding)
            | Change::BindingDeleted(binding) => {
                self.bindings.insert(binding.id);
            }
        }
    }
}

/// A copy of a state's records, taken in chunks while the state changes: the ids are those
/// of the state it started from; each record is copied as it is when its chunk is taken
/// (one deleted meanwhile is left out). So the copy mixes the states between its start and
/// its end, and is exact once the events after its start are applied to it
/// ([`complete`](Self::complete)): every event carries the full record it sets or removes, so
/// a record an event touched is the last such event's, and one none touched is as copied.
pub struct RecordCopy {
    prefix_ids: Vec<PrefixId>,
    binding_ids: Vec<BindingId>,
    /// The request ids are only ever added (and those of a decision undone taken back before
    /// a chunk can be copied): the copy takes those from position `requests_from` up to
    /// `requests_at_start`.
    requests_from: usize,
    requests_at_start: usize,
    /// How many records (prefixes, then bindings, then request ids) have been copied.
    copied: usize,
    prefixes: Vec<Prefix>,
    bindings: Vec<Binding>,
    requests: Vec<(AccountId, String, Binding)>,
}

impl RecordCopy {
    /// Copies up to `max` more records from `state`; `true` once every id is copied.
    pub fn copy_from(&mut self, state: &State, max: usize) -> bool {
        let (n_prefixes, n_bindings) = (self.prefix_ids.len(), self.binding_ids.len());
        let total = n_prefixes + n_bindings + (self.requests_at_start - self.requests_from);
        let end = total.min(self.copied + max);
        for index in self.copied..end {
            if index < n_prefixes {
                self.prefixes
                    .extend(state.prefixes.get(&self.prefix_ids[index]).cloned());
            } else if index < n_prefixes + n_bindings {
                let id = self.binding_ids[index - n_prefixes];
                self.bindings.extend(state.bindings.get(&id).cloned());
            } else {
                let position = self.requests_from + index - n_prefixes - n_bindings;
                (self.requests).extend(state.requests.owned_at(position));
            }
        }
        self.copied = end;
        end == total
    }

    /// The records as of the last of `events`, the events after the copy's start in order.
    /// Only the records are completed (no index is built): what a snapshot stores.
    pub fn complete<'a>(self, events: impl IntoIterator<Item = &'a Event>) -> Records {
        let mut records = Records {
            prefixes: self.prefixes,
            bindings: self.bindings,
            requests: self.requests,
        };
        records.apply(Changes::of(events));
        records
    }

    /// What changed since the copied ids were collected (the copy of
    /// [`State::start_copy_of`]), as of the last of `events`, the events after the copy's
    /// start in order: each copied record as those events left it, each id missing from the
    /// copy deleted, the keys copied and those the events added.
    pub fn changes<'a>(self, events: impl IntoIterator<Item = &'a Event>) -> Changes {
        let mut changes = Changes::from_parts(
            self.prefixes,
            self.prefix_ids,
            self.bindings,
            self.binding_ids,
            self.requests,
        );
        changes.then(Changes::of(events));
        changes
    }
}

/// What a run of events changed, as a snapshot delta stores it: each record an event set, as
/// the last such event set it (`None`: deleted), and the idempotency keys added, in order.
/// Every event carries the full record it sets or removes, so these alone turn the state
/// before the events into the state after them.
#[derive(Debug, Default)]
pub struct Changes {
    prefixes: LastValues<PrefixId, Prefix>,
    bindings: LastValues<BindingId, Binding>,
    requests: Vec<(AccountId, String, Binding)>,
}

impl Changes {
    /// What `events` (in order) changed.
    pub fn of<'a>(events: impl IntoIterator<Item = &'a Event>) -> Changes {
        let mut changes = Changes::default();
        for event in events {
            changes.record(event);
        }
        changes
    }

    /// The changes as stored: the records set, the ids deleted (one also set is set), the keys
    /// added.
    pub fn from_parts(
        set_prefixes: Vec<Prefix>,
        deleted_prefixes: Vec<PrefixId>,
        set_bindings: Vec<Binding>,
        deleted_bindings: Vec<BindingId>,
        requests: Vec<(AccountId, String, Binding)>,
    ) -> Changes {
        let prefixes = (deleted_prefixes.into_iter().map(|id| (id, None)))
            .chain(set_prefixes.into_iter().map(|prefix| (prefix.id, Some(prefix))))
            .collect();
        let bindings = (deleted_bindings.into_iter().map(|id| (id, None)))
            .chain(set_bindings.into_iter().map(|binding| (binding.id, Some(binding))))
            .collect();
        Changes {
            prefixes,
            bindings,
            requests,
        }
    }

    /// Adds what `event`, the one after those recorded, changed.
    pub fn record(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) => {
                self.prefixes.insert(prefix.id, Some(prefix.clone()));
            }
            Change::PrefixDeleted(prefix) => {
                self.prefixes.insert(prefix.id, None);
            }
            Change::BindingCreated { binding, request_id } => {
                if let Some(request_id) = request_id {
                    (self.requests).push((binding.account_id, request_id.clone(), binding.clone()));
                }
                self.bindings.insert(binding.id, Some(binding.clone()));
            }
            Change::BindingProvisioningStateChanged(binding) => {
                self.bindings.insert(binding.id, Some(binding.clone()));
            }
            Change::BindingDeleted(binding) => {
                self.bindings.insert(binding.id, None);
            }
        }
    }

    /// Adds `later`, the changes made after these.
    pub fn then(&mut self, later: Changes) {
        self.prefixes.extend(later.prefixes);
        self.bindings.extend(later.bindings);
        self.requests.extend(later.requests);
    }

    /// How many records and deletions these are: what a delta of them stores.
    pub fn n_records(&self) -> usize {
        self.prefixes.len() + self.bindings.len() + self.requests.len()
    }

    pub fn deleted_prefixes(&self) -> impl Iterator<Item = PrefixId> + '_ {
        deleted(&self.prefixes)
    }

    pub fn deleted_bindings(&self) -> impl Iterator<Item = BindingId> + '_ {
        deleted(&self.bindings)
    }
}

/// Each record's last value, by id (`None`: deleted).
type LastValues<K, V> = HashMap<K, Option<V>, foldhash::fast::RandomState>;

fn deleted<K: Copy, V>(records: &LastValues<K, V>) -> impl Iterator<Item = K> + '_ {
    (records.iter()).filter_map(|(id, record)| record.is_none().then_some(*id))
}

/// The records a delta sets (what [`Changes::deleted_prefixes`] and
/// [`Changes::deleted_bindings`] leave out).
impl SnapshotRecords for Changes {
    fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.prefixes.values().flatten()
    }

    fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values().flatten()
    }

    fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        (self.requests.iter()).map(|(account_id, request_id, binding)| (*account_id, request_id.as_str(), binding))
    }
}

/// Replaces or removes each of `records` whose key `changed` holds, then adds the records
/// `changed` sets that were not among them.
fn overlay<K: Eq + Hash, V>(records: &mut Vec<V>, mut changed: LastValues<K, V>, key: impl Fn(&V) -> K) {
    if changed.is_empty() {
        return;
    }
    records.retain_mut(|record| match changed.remove(&key(record)) {
        Some(Some(last)) => {
            *record = last;
            true
        }
        Some(None) => false,
        None => true,
    });
    records.extend(changed.into_values().flatten());
}

/// A state's records held apart from a [`State`]: a background snapshot's copy once
/// completed, or a stored snapshot decoded (and its deltas applied) before it is restored.
#[derive(Clone, Debug, Default)]
pub struct Records {
    prefixes: Vec<Prefix>,
    bindings: Vec<Binding>,
    requests: Vec<(AccountId, String, Binding)>,
}

impl Records {
    pub fn new(prefixes: Vec<Prefix>, bindings: Vec<Binding>, requests: Vec<(AccountId, String, Binding)>) -> Records {
        Records {
            prefixes,
            bindings,
            requests,
        }
    }

    /// How many records these are: prefixes, bindings, idempotency keys.
    pub fn n_records(&self) -> usize {
        self.prefixes.len() + self.bindings.len() + self.requests.len()
    }

    /// The records after `changes`, made after them.
    pub fn apply(&mut self, changes: Changes) {
        overlay(&mut self.prefixes, changes.prefixes, |prefix| prefix.id);
        overlay(&mut self.bindings, changes.bindings, |binding| binding.id);
        // Keys are only ever added: the changes' are new.
        self.requests.extend(changes.requests);
    }

    /// The state these records fold into.
    pub fn into_state(self) -> State {
        State::restore(self.prefixes, self.bindings, self.requests)
    }
}

impl SnapshotRecords for Records {
    fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.prefixes.iter()
    }

    fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.iter()
    }

    fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        (self.requests.iter()).map(|(account_id, request_id, binding)| (*account_id, request_id.as_str(), binding))
    }
}
