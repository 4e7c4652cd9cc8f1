//! The built-in rollout: it reports each new binding propagated once `--provisioning-delay`
//! has passed since the binding's `created_at`. It is driven by the log, not by timers alone:
//! at start it schedules every binding the projections still show PROVISIONING (so after a
//! restart, overdue bindings turn ACTIVE at once), then it follows the commit feed for new
//! ones. The interface to the rest of the service is one command, [`Command::ActivateBinding`],
//! which the writer turns into at most one PROVISIONING_STATE_CHANGED event per binding (a
//! deleted or already active binding is a no-op). A real rollout system would send the same
//! command when it sees a binding propagated.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::domain::actor::ROLLOUT_PRINCIPAL;
use crate::domain::{Actor, BindingId, Change, Command, ErrorKind, Micros};
use crate::engine::Engine;

/// Activations submitted to the writer at once.
const MAX_IN_FLIGHT: usize = 256;
/// How long to wait before retrying an activation the log could not store.
const RETRY_AFTER: Duration = Duration::from_millis(500);

/// Bindings waiting to be reported propagated, earliest due first.
#[derive(Default)]
struct Schedule {
    due: BinaryHeap<Reverse<(Micros, BindingId)>>,
}

impl Schedule {
    fn add(&mut self, due: Micros, binding_id: BindingId) {
        self.due.push(Reverse((due, binding_id)));
    }

    fn next_due(&self) -> Option<Micros> {
        self.due.peek().map(|Reverse((due, _))| *due)
    }

    fn pop_due(&mut self, now: Micros) -> Option<BindingId> {
        match self.due.peek() {
            Some(Reverse((due, _))) if *due <= now => self.due.pop().map(|Reverse((_, id))| id),
            _ => None,
        }
    }

    /// Schedules every binding the projections show as provisioning.
    fn rescan(&mut self, engine: &Engine, delay: Duration) {
        self.due.clear();
        let model = engine.projections().read();
        for binding in model.state.provisioning_bindings() {
            self.add(binding.created_at.plus(delay), binding.id);
        }
    }
}

/// Reports every due binding propagated. Activations run concurrently (up to
/// [`MAX_IN_FLIGHT`]), so that after a restart a large backlog shares fsyncs through group
/// commit instead of paying one each. One the log could not store is retried later.
async fn activate_due(engine: &Arc<Engine>, schedule: &mut Schedule, shutdown: &watch::Receiver<bool>) {
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.len() < MAX_IN_FLIGHT
            && let Some(binding_id) = schedule.pop_due(Micros::now())
        {
            let engine = Arc::clone(engine);
            in_flight.spawn(async move {
                (
                    binding_id,
                    engine
                        .execute(
                            Command::ActivateBinding { binding_id },
                            Actor::system(ROLLOUT_PRINCIPAL),
                        )
                        .await,
                )
            });
        }
        let Some(joined) = in_flight.join_next().await else {
            return;
        };
        let Ok((binding_id, Err(error))) = joined else { continue };
        if error.kind() == ErrorKind::Unavailable && !*shutdown.borrow() {
            warn!(%binding_id, %error, "activation not stored; will retry");
            schedule.add(Micros::now().plus(RETRY_AFTER), binding_id);
        } else {
            debug!(%binding_id, %error, "activation dropped");
        }
    }
}

/// Runs the rollout until `shutdown` turns true. With `lease` (replicas), activates only while
/// the lease is held; every replica keeps its schedule, so the next holder carries on at once.
pub async fn run(
    engine: Arc<Engine>,
    delay: Duration,
    mut shutdown: watch::Receiver<bool>,
    mut lease: Option<watch::Receiver<bool>>,
) {
    // Subscribe before scanning, so no binding created in between is missed (a binding seen
    // twice is harmless: activation is idempotent).
    let mut feed = engine.subscribe();
    let mut schedule = Schedule::default();
    schedule.rescan(&engine, delay);
    loop {
        let holding = lease.as_ref().is_none_or(|lease| *lease.borrow());
        if holding {
            activate_due(&engine, &mut schedule, &shutdown).await;
        }
        let sleep = match schedule.next_due() {
            Some(due) if holding => Duration::from_micros(due.0.saturating_sub(Micros::now().0).max(0) as u64),
            _ => Duration::from_secs(3600),
        };
        let lease_changed = async {
            match lease.as_mut() {
                Some(lease) => {
                    if lease.changed().await.is_err() {
                        std::future::pending::<()>().await
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => return,
            _ = tokio::time::sleep(sleep) => {}
            _ = lease_changed => {}
            received = feed.recv() => match received {
                Ok(group) => {
                    for event in group.iter() {
                        if let Change::BindingCreated { binding, .. } = &event.change {
                            schedule.add(binding.created_at.plus(delay), binding.id);
                        }
                    }
                }
                Err(RecvError::Lagged(_)) => schedule.rescan(&engine, delay),
                Err(RecvError::Closed) => return,
            },
        }
    }
}
