//! The effective routing table kept current event by event, and its recent changes: what
//! WatchRoutes serves. Two tables (every binding, and ACTIVE bindings only), each a map from
//! a range's first address to the range's end and binding. A binding change touches only the
//! entries inside its CIDR and the two entries of the binding around it that border it, so a
//! delta costs the writer its own range, never the whole table.
//!
//! Built on first use (a server that never serves routes pays nothing) by the engine, from the
//! log: the table as of [`HISTORY_REVISIONS`] revisions back, then every event since; from
//! then on it keeps the deltas of the last `HISTORY_REVISIONS` revisions in memory.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::Arc;

use crate::domain::routes::AddressRange;
use crate::domain::state::RouteTo;
use crate::domain::{Binding, Change, Event, ProvisioningState, State};

/// How many revisions back WatchRoutes can start.
pub const HISTORY_REVISIONS: u64 = 100_000;

/// One table's change at one revision: remove `removed`, then add `added`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDelta {
    pub revision: u64,
    pub active_only: bool,
    pub removed: Vec<RouteTo>,
    pub added: Vec<RouteTo>,
}

/// An entry: the range's last address, its binding, and the binding's prefix length (a
/// longer one than a change's CIDR lies inside it).
#[derive(Clone, Copy, Debug)]
struct Entry {
    last: u128,
    route: RouteTo,
    prefix_len: u8,
}

#[derive(Default)]
struct RouteTable {
    /// By (family, first address).
    entries: BTreeMap<(u8, u128), Entry>,
}

impl RouteTable {
    fn build(state: &State, active_only: bool) -> RouteTable {
        let entries = (state.effective_routes(None, active_only).into_iter())
            .map(|route| {
                let prefix_len = (state.binding_by_id(route.binding_id)).map_or(0, |binding| binding.cidr.prefix_len());
                let entry = Entry {
                    last: route.range.last,
                    route,
                    prefix_len,
                };
                ((route.range.family, route.range.first), entry)
            })
            .collect();
        RouteTable { entries }
    }

    /// The entries that overlap `range`, in address order.
    fn overlapping(&self, range: AddressRange) -> Vec<((u8, u128), Entry)> {
        let family = range.family;
        let before = (self.entries.range(..=(family, range.first)).next_back())
            .filter(|((f, _), entry)| *f == family && entry.last >= range.first);
        let rest = self.entries.range((
            Bound::Excluded((family, range.first)),
            Bound::Included((family, range.last)),
        ));
        before
            .into_iter()
            .chain(rest)
            .map(|(key, entry)| (*key, *entry))
            .collect()
    }

    fn add(&mut self, route: RouteTo, prefix_len: u8, added: &mut Vec<RouteTo>) {
        let entry = Entry {
            last: route.range.last,
            route,
            prefix_len,
        };
        self.entries.insert((route.range.family, route.range.first), entry);
        added.push(route);
    }

    fn take(&mut self, key: (u8, u128), removed: &mut Vec<RouteTo>) -> Option<Entry> {
        let entry = self.entries.remove(&key)?;
        removed.push(entry.route);
        Some(entry)
    }

    /// `binding` joins the table: it takes what the binding around it had inside its CIDR
    /// (the entries of bindings inside it stay).
    fn insert(&mut self, binding: &Binding) -> (Vec<RouteTo>, Vec<RouteTo>) {
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        let range = AddressRange::of(&binding.cidr);
        let len = binding.cidr.prefix_len();
        let overlapping = self.overlapping(range);
        let inner = overlapping.iter().filter(|(_, entry)| entry.prefix_len > len);
        let own = crate::domain::routes::uncovered(range, inner.map(|(_, entry)| entry.route.range));
        for (key, entry) in overlapping.iter().filter(|(_, entry)| entry.prefix_len <= len) {
            // The binding around it: what it kept outside the new CIDR stays its own.
            let Some(taken) = self.take(*key, &mut removed) else {
                continue;
            };
            debug_assert_eq!(taken.prefix_len, entry.prefix_len);
            if taken.route.range.first < range.first {
                let left = AddressRange {
                    last: range.first - 1,
                    ..taken.route.range
                };
                self.add(
                    RouteTo {
                        range: left,
                        ..taken.route
                    },
                    taken.prefix_len,
                    &mut added,
                );
            }
            if taken.last > range.last {
                let right = AddressRange {
                    first: range.last + 1,
                    ..taken.route.range
                };
                self.add(
                    RouteTo {
                        range: right,
                        ..taken.route
                    },
                    taken.prefix_len,
                    &mut added,
                );
            }
        }
        for part in own {
            self.add(RouteTo::new(part, binding), len, &mut added);
        }
        added.sort_by_key(|route| route.range);
        (removed, added)
    }

    /// `binding` leaves the table; its ranges go to `around` (the binding of this table that
    /// contains it), merged with what `around` has on either side.
    fn remove(&mut self, binding: &Binding, around: Option<&Binding>) -> (Vec<RouteTo>, Vec<RouteTo>) {
        let (mut removed, mut added) = (Vec::new(), Vec::new());
        let range = AddressRange::of(&binding.cidr);
        let mut freed: Vec<AddressRange> = Vec::new();
        for (key, entry) in self.overlapping(range) {
            if entry.route.binding_id == binding.id && self.take(key, &mut removed).is_some() {
                freed.push(entry.route.range);
            }
        }
        let Some(around) = around else {
            return (removed, added);
        };
        let neighbour = |table: &RouteTable, key: Option<(u8, u128)>| {
            key.and_then(|key| table.entries.get_key_value(&key).map(|(key, entry)| (*key, *entry)))
                .filter(|(_, entry)| entry.route.binding_id == around.id)
        };
        if let Some(first) = freed.first_mut()
            && first.first == range.first
            && range.first > 0
        {
            let left_key = (self.entries.range(..(range.family, range.first)).next_back()).map(|(key, _)| *key);
            if let Some((key, entry)) = neighbour(self, left_key).filter(|(_, entry)| entry.last + 1 == range.first) {
                self.take(key, &mut removed);
                first.first = entry.route.range.first;
            }
        }
        if let Some(last) = freed.last_mut()
            && last.last == range.last
            && let Some(next) = range.last.checked_add(1)
            && let Some((key, entry)) = neighbour(self, Some((range.family, next)))
        {
            self.take(key, &mut removed);
            last.last = entry.last;
        }
        for part in freed {
            self.add(RouteTo::new(part, around), around.cidr.prefix_len(), &mut added);
        }
        removed.sort_by_key(|route| route.range);
        (removed, added)
    }
}

/// Both tables and their recent deltas.
pub struct RouteHistory {
    all: RouteTable,
    active: RouteTable,
    /// Shared, so that a watcher takes the ones it sends under the projections' read lock
    /// and converts them to the wire after releasing it.
    deltas: VecDeque<Arc<RouteDelta>>,
    /// The oldest revision a watch may start after.
    served_from: u64,
    /// How many revisions of deltas are kept.
    keep: u64,
}

impl RouteHistory {
    /// The tables of `state` at `head`; history starts here and keeps the deltas of the last
    /// [`HISTORY_REVISIONS`] revisions.
    pub fn build(state: &State, head: u64) -> RouteHistory {
        RouteHistory::keeping(state, head, HISTORY_REVISIONS)
    }

    fn keeping(state: &State, head: u64, keep: u64) -> RouteHistory {
        RouteHistory {
            all: RouteTable::build(state, false),
            active: RouteTable::build(state, true),
            deltas: VecDeque::new(),
            served_from: head,
            keep,
        }
    }

    /// Folds one event, already applied to `state`, into the tables and the history.
    pub fn apply(&mut self, state: &State, event: &Event) {
        let around =
            |binding: &Binding, active_only| state.parent_binding(binding.prefix_id, &binding.cidr, active_only);
        let mut record = |active_only, (removed, added): (Vec<RouteTo>, Vec<RouteTo>)| {
            if !removed.is_empty() || !added.is_empty() {
                self.deltas.push_back(Arc::new(RouteDelta {
                    revision: event.revision,
                    active_only,
                    removed,
                    added,
                }));
            }
        };
        match &event.change {
            Change::BindingCreated { binding, .. } => {
                record(false, self.all.insert(binding));
                if binding.state == ProvisioningState::Active {
                    record(true, self.active.insert(binding));
                }
            }
            Change::BindingProvisioningStateChanged(binding) if binding.state == ProvisioningState::Active => {
                record(true, self.active.insert(binding));
            }
            Change::BindingDeleted(binding) => {
                record(false, self.all.remove(binding, around(binding, false)));
                if binding.state == ProvisioningState::Active {
                    record(true, self.active.remove(binding, around(binding, true)));
                }
            }
            _ => {}
        }
        let keep_from = event.revision.saturating_sub(self.keep);
        while self.deltas.front().is_some_and(|delta| delta.revision <= keep_from) {
            self.deltas.pop_front();
        }
        self.served_from = self.served_from.max(keep_from);
    }

    /// The oldest revision a watch may start after.
    pub fn served_from(&self) -> u64 {
        self.served_from
    }

    /// The deltas after revision `after`, oldest first.
    pub fn after(&self, after: u64) -> impl Iterator<Item = &Arc<RouteDelta>> {
        let start = self.deltas.partition_point(|delta| delta.revision <= after);
        self.deltas.range(start..)
    }

    /// The table as it stands.
    #[cfg(test)]
    fn table(&self, active_only: bool) -> Vec<RouteTo> {
        let table = if active_only { &self.active } else { &self.all };
        table.entries.values().map(|entry| entry.route).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Service;
    use crate::domain::fixtures::{self, event};

    #[test]
    fn keeps_the_last_revisions_and_serves_from_there() {
        let prefix = fixtures::prefix("192.0.2.0/24");
        let mut state = State::default();
        let created = event(1, Change::PrefixCreated(prefix.clone()));
        state.apply(&created);
        let mut history = RouteHistory::keeping(&state, 1, 3);
        for revision in 2..=10 {
            let cidr = if revision == 2 {
                "192.0.2.0/24".to_string()
            } else {
                format!("192.0.2.{revision}/32")
            };
            let service = if revision == 2 {
                Service::MagicTransit
            } else {
                Service::Cdn
            };
            let binding = fixtures::binding(&prefix, &cidr, service, ProvisioningState::Provisioning);
            let event = event(
                revision,
                Change::BindingCreated {
                    binding,
                    request_id: None,
                },
            );
            state.apply(&event);
            history.apply(&state, &event);
        }
        assert_eq!(history.served_from(), 7);
        let revisions: Vec<u64> = history.after(0).map(|delta| delta.revision).collect();
        assert_eq!(revisions, [8, 9, 10]);
        // Eight adjacent host routes (.3 to .10) and the two pieces of the /24 around them.
        assert_eq!(history.table(false).len(), 8 + 2);
        assert!(history.table(true).is_empty());
    }
}
