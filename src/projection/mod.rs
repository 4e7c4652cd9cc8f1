//! The read side: in-memory models folded from the log, shared by every read RPC. The writer
//! applies each durable group under a short write lock; readers take a read lock for the
//! duration of one query (never across an `.await`), so a read never waits for an fsync and
//! never sees half of a group.

pub mod by_length;
pub mod lpm;
pub mod route_history;
pub mod routing;

use std::sync::Arc;

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::domain::state::{IdMap, RouteTo};
use crate::domain::{AccountId, Change, Command, Error, Event, Micros, Outcome, PrefixId, State};
use route_history::RouteHistory;
use routing::RoutingTable;

/// Everything the reads need, as of `head`.
#[derive(Default)]
pub struct ReadModel {
    pub state: State,
    pub routes: RoutingTable,
    /// The revision of the last event applied.
    pub head: u64,
    /// The effective table and its recent changes, once something asked for them.
    pub route_history: Option<RouteHistory>,
    /// Per prefix, the revision of the last event that changed its bindings (absent: none
    /// since this model was built), so that a table read in pieces knows which to read again.
    pub routes_changed: IdMap<PrefixId, u64>,
}

impl ReadModel {
    pub fn apply(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixDeleted(prefix) => drop(self.routes_changed.remove(&prefix.id)),
            Change::PrefixCreated(_) | Change::PrefixUpdated(_) => {}
            Change::BindingCreated { binding, .. }
            | Change::BindingProvisioningStateChanged(binding)
            | Change::BindingDeleted(binding) => drop(self.routes_changed.insert(binding.prefix_id, event.revision)),
        }
        self.state.apply(event);
        self.routes.apply(&event.change);
        if let Some(history) = &mut self.route_history {
            history.apply(&self.state, event);
        }
        self.head = event.revision;
    }

    /// Decides `command` against this model's state at `now` and applies the events at once,
    /// with no log under them: for fixtures that build a model through the real rules (the
    /// fuzz properties, benchmarks). The service's writes go through the engine.
    pub fn decide_and_apply(&mut self, command: &Command, now: Micros) -> Result<Outcome, Error> {
        let decision = self.state.decide(command, now)?;
        for change in decision.changes {
            let revision = self.head + 1;
            self.apply(&Event {
                revision,
                time: now,
                change,
                actor: None,
            });
        }
        Ok(decision.outcome)
    }
}

/// Prefixes whose routes [`Projections::effective_routes`] reads under one read lock, at most.
pub const PREFIXES_PER_READ: usize = 64;
/// Routes after which [`Projections::effective_routes`] lets go of the read lock, even before
/// [`PREFIXES_PER_READ`] prefixes (prefixes of many bindings): a piece holds it for a
/// millisecond or two.
const ROUTES_PER_READ: usize = 2_000;

/// A cheap, cloneable handle on the shared read model.
///
/// The lock is parking_lot's, not std's: once a writer waits, new readers wait behind it. With
/// std's (Linux futex) lock, a reader that lets go and takes the lock again at once wins the
/// race against the writer it just woke, so the export's pieces kept the writer out for the
/// whole table (measured: one group's apply waited 550 ms).
#[derive(Clone, Default)]
pub struct Projections {
    model: Arc<RwLock<ReadModel>>,
}

impl Projections {
    pub fn new(model: ReadModel) -> Projections {
        Projections {
            model: Arc::new(RwLock::new(model)),
        }
    }

    /// A consistent view for one query. Hold it briefly and never across an `.await`.
    pub fn read(&self) -> RwLockReadGuard<'_, ReadModel> {
        self.model.read()
    }

    /// The model for a change outside the writer's groups (installing the route history).
    pub fn write(&self) -> RwLockWriteGuard<'_, ReadModel> {
        self.model.write()
    }

    /// The effective table of one account (or all) at one head, as
    /// [`State::effective_routes`], without holding the read lock for all of it: a table of a
    /// million routes takes about half a second to compute, and the writer's next group would
    /// wait that long for its write lock (and every read behind it). The prefixes are read
    /// [`PREFIXES_PER_READ`] at a time, each noting the head it was read at; a last read
    /// walks the table's prefixes at the final head and reads again the few whose bindings
    /// changed since (or that are new), so the answer is the table at that head exactly.
    pub fn effective_routes(&self, account_id: Option<AccountId>, active_only: bool) -> (u64, Vec<RouteTo>) {
        let prefixes: Vec<PrefixId> = self.read().state.table_prefixes(account_id).collect();
        let mut routes = Vec::new();
        let mut read: IdMap<PrefixId, (u64, std::ops::Range<usize>)> = IdMap::default();
        let mut to_read = prefixes.iter().peekable();
        while to_read.peek().is_some() {
            let model = self.read();
            let piece_start = routes.len();
            for prefix_id in to_read.by_ref().take(PREFIXES_PER_READ) {
                let start = routes.len();
                model.state.prefix_routes(*prefix_id, active_only, &mut routes);
                read.insert(*prefix_id, (model.head, start..routes.len()));
                if routes.len() - piece_start >= ROUTES_PER_READ {
                    break;
                }
            }
        }
        // The last read: which prefixes make the table now, and the routes of those whose
        // piece is stale (or that are new). Copying the rest into place happens after it.
        let (head, order, fresh) = {
            let model = self.read();
            let mut fresh: IdMap<PrefixId, Vec<RouteTo>> = IdMap::default();
            let mut order = Vec::with_capacity(prefixes.len());
            for prefix_id in model.state.table_prefixes(account_id) {
                let current = (read.get(&prefix_id))
                    .is_some_and(|(at, _)| model.routes_changed.get(&prefix_id).is_none_or(|changed| changed <= at));
                if !current {
                    let mut routes = Vec::new();
                    model.state.prefix_routes(prefix_id, active_only, &mut routes);
                    fresh.insert(prefix_id, routes);
                }
                order.push(prefix_id);
            }
            (model.head, order, fresh)
        };
        if fresh.is_empty() && order == prefixes {
            return (head, routes);
        }
        let mut at_head = Vec::with_capacity(routes.len());
        for prefix_id in order {
            match fresh.get(&prefix_id) {
                Some(routes) => at_head.extend_from_slice(routes),
                None => at_head.extend_from_slice(&routes[read[&prefix_id].1.clone()]),
            }
        }
        (head, at_head)
    }

    /// Applies one durable group of events as a unit.
    pub fn apply(&self, events: &[Event]) {
        let mut model = self.model.write();
        for event in events {
            model.apply(event);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::domain::fixtures::{binding, event, prefix};
    use crate::domain::{ProvisioningState, Service};

    /// Exports taken while groups are applied (bindings created, activated and deleted, prefixes
    /// created, across many pieces of the read) each equal the table at their head.
    #[test]
    fn a_table_read_in_pieces_is_the_table_at_one_head() {
        let projections = Projections::default();
        // The table after each revision, computed in one piece by the applier's own copy.
        let expected: Mutex<HashMap<u64, Vec<RouteTo>>> = Mutex::default();
        let mut copy = State::default();
        let mut revision = 0;
        let mut apply = |changes: Vec<Change>, copy: &mut State| {
            let events: Vec<Event> = changes
                .into_iter()
                .map(|change| {
                    revision += 1;
                    event(revision, change)
                })
                .collect();
            for event in &events {
                copy.apply(event);
            }
            expected
                .lock()
                .unwrap()
                .insert(revision, copy.effective_routes(None, false));
            projections.apply(&events);
        };
        let prefixes: Vec<_> = (0..4 * PREFIXES_PER_READ)
            .map(|n| prefix(&format!("10.{}.{}.0/24", n / 256, n % 256)))
            .collect();
        apply(prefixes.iter().cloned().map(Change::PrefixCreated).collect(), &mut copy);

        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let applied = AtomicBool::new(false);
        let exports_taken = AtomicUsize::new(0);
        let exports = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut exports = Vec::new();
                while !applied.load(Ordering::Acquire) {
                    exports.push(projections.effective_routes(None, false));
                    exports_taken.fetch_add(1, Ordering::Release);
                }
                exports
            });
            let mut rng = fastrand::Rng::with_seed(9);
            let mut bound: Vec<crate::domain::Binding> = Vec::new();
            let mut extra = 0;
            for round in 0..500 {
                // Now and then, two whole exports at this head (the second started after the
                // first ended), so that the reads see the table move however the threads are
                // scheduled; the rest of the time the exports race the applies.
                if round % 25 == 0 {
                    let taken = exports_taken.load(Ordering::Acquire);
                    while exports_taken.load(Ordering::Acquire) < taken + 2 {
                        std::thread::yield_now();
                    }
                }
                let owner = &prefixes[rng.usize(..prefixes.len())];
                let change = match rng.u8(..4) {
                    0 if !bound.is_empty() => Change::BindingDeleted(bound.swap_remove(rng.usize(..bound.len()))),
                    1 if !bound.is_empty() => {
                        let mut active = bound[rng.usize(..bound.len())].clone();
                        active.state = ProvisioningState::Active;
                        Change::BindingProvisioningStateChanged(active)
                    }
                    2 => {
                        extra += 1;
                        Change::PrefixCreated(prefix(&format!("11.{}.{}.0/24", extra / 256, extra % 256)))
                    }
                    _ => {
                        let host = format!("{}/32", owner.cidr.hosts().nth(rng.usize(..250)).unwrap());
                        if bound
                            .iter()
                            .any(|b| b.prefix_id == owner.id && b.cidr.to_string() == host)
                        {
                            continue;
                        }
                        let created = binding(owner, &host, Service::Cdn, ProvisioningState::Provisioning);
                        bound.push(created.clone());
                        Change::BindingCreated {
                            binding: created,
                            request_id: None,
                        }
                    }
                };
                apply(vec![change], &mut copy);
            }
            applied.store(true, Ordering::Release);
            reader.join().unwrap()
        });
        let expected = expected.lock().unwrap();
        let heads: std::collections::BTreeSet<u64> = exports.iter().map(|(head, _)| *head).collect();
        assert!(
            heads.len() > 10,
            "the exports saw the table move: {} heads",
            heads.len()
        );
        for (head, routes) in exports {
            assert_eq!(&routes, &expected[&head], "the export at revision {head}");
        }
    }
}
