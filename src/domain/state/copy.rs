//! Snapshots of the state: the records a snapshot stores, a state restored from them, and a
//! copy taken in chunks while the state keeps changing (a background snapshot).

use super::{IdMap, RememberedRequest, State};
use crate::domain::ids::{AccountId, BindingId, PrefixId};
use crate::domain::model::{Binding, Prefix, ProvisioningState};

impl State {
    pub fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.prefixes.values()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Every idempotency key with the binding it created, as created.
    pub fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        self.requests
            .iter()
            .map(|((account_id, request_id), remembered)| (*account_id, request_id.as_str(), &remembered.binding))
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
        let mut state = State {
            provisioning: (bindings.values())
                .filter(|binding| binding.state == ProvisioningState::Provisioning)
                .map(|binding| (binding.created_at, binding.id))
                .collect(),
            requests: (requests.into_iter())
                .map(|(account_id, request_id, binding)| ((account_id, request_id), RememberedRequest { binding }))
                .collect(),
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
            request_keys: self.requests.keys().cloned().collect(),
            copied: 0,
            prefixes: Vec::new(),
            bindings: Vec::new(),
            requests: Vec::new(),
        }
    }
}

/// A copy of a state's records, taken in chunks while the state changes: the ids are those
/// of the state it started from; each record is copied as it is when its chunk is taken
/// (one deleted meanwhile is left out). So the copy mixes the states between its start and
/// its end, and is exact once the events after its start are applied to it
/// ([`into_state`](Self::into_state), then [`State::apply`] each): every event carries the
/// full record it sets or removes, so applying one that the copy already reflects sets the
/// same value again. Records and keys never change their network or scope, so the indexes
/// rebuilt from the copy hold no conflicting entries.
pub struct RecordCopy {
    prefix_ids: Vec<PrefixId>,
    binding_ids: Vec<BindingId>,
    request_keys: Vec<(AccountId, String)>,
    /// How many ids (prefixes, then bindings, then request keys) have been copied.
    copied: usize,
    prefixes: Vec<Prefix>,
    bindings: Vec<Binding>,
    requests: Vec<(AccountId, String, Binding)>,
}

impl RecordCopy {
    /// Copies up to `max` more records from `state`; `true` once every id is copied.
    pub fn copy_from(&mut self, state: &State, max: usize) -> bool {
        let (n_prefixes, n_bindings) = (self.prefix_ids.len(), self.binding_ids.len());
        let total = n_prefixes + n_bindings + self.request_keys.len();
        let end = total.min(self.copied + max);
        for index in self.copied..end {
            if index < n_prefixes {
                self.prefixes
                    .extend(state.prefixes.get(&self.prefix_ids[index]).cloned());
            } else if index < n_prefixes + n_bindings {
                let id = self.binding_ids[index - n_prefixes];
                self.bindings.extend(state.bindings.get(&id).cloned());
            } else {
                let key = &self.request_keys[index - n_prefixes - n_bindings];
                if let Some(remembered) = state.requests.get(key) {
                    self.requests.push((key.0, key.1.clone(), remembered.binding.clone()));
                }
            }
        }
        self.copied = end;
        end == total
    }

    /// The state of the copied records (see the type's doc for what it still lacks).
    pub fn into_state(self) -> State {
        State::restore(self.prefixes, self.bindings, self.requests)
    }
}
