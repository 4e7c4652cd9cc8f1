//! The read side: in-memory models folded from the log, shared by every read RPC. The writer
//! applies each durable group under a short write lock; readers take a read lock for the
//! duration of one query (never across an `.await`), so a read never waits for an fsync and
//! never sees half of a group.

pub mod by_length;
pub mod lpm;
pub mod route_history;
pub mod routing;

use std::sync::{Arc, RwLock, RwLockReadGuard};

use crate::domain::{Event, State};
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
}

impl ReadModel {
    pub fn apply(&mut self, event: &Event) {
        self.state.apply(event);
        self.routes.apply(&event.change);
        if let Some(history) = &mut self.route_history {
            history.apply(&self.state, event);
        }
        self.head = event.revision;
    }
}

/// A cheap, cloneable handle on the shared read model.
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
        // A panic while applying would poison the lock; the state is still the last fully
        // applied group or a partial one, and serving reads beats failing all of them.
        self.model.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The model for a change outside the writer's groups (installing the route history).
    pub fn write(&self) -> std::sync::RwLockWriteGuard<'_, ReadModel> {
        self.model.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies one durable group of events as a unit.
    pub fn apply(&self, events: &[Event]) {
        let mut model = self.model.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        for event in events {
            model.apply(event);
        }
    }
}
