//! The write side of the service. Every change goes through one thread, in this order:
//! decide (against the projections' state, seeing the group's earlier decisions) -> append the
//! group to the log and fsync
//! once -> apply to the read projections -> publish to watchers -> reply. Commands that queue up
//! while an fsync runs form the next group, so concurrent writers share fsyncs (group commit)
//! and the rules hold under any concurrency: decisions are serialized, and each one sees every
//! decision before it, durable or about to be.
//!
//! Rooms: this file is the handle callers hold ([`Engine`]); [`startup`] rebuilds the state
//! from the log; [`writer`] is the writer thread (group commit, roll-back); [`checkpoint`]
//! keeps the snapshot and the length mark beside the log.

mod checkpoint;
mod startup;
#[cfg(test)]
mod tests;
mod writer;

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{error, info, warn};

use crate::domain::state::Decision;
use crate::domain::{Actor, Command, Error, Event, Micros, Outcome, Reason, State};
use crate::log::{CheckpointStatus, EventLog, LogError};
use crate::metrics::WriteMetrics;
use crate::projection::Projections;
use crate::projection::route_history::{HISTORY_REVISIONS, RouteHistory};
use crate::replica::{Arrival, Replica};
use crate::telemetry;

/// Commands waiting for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;
/// Committed groups buffered for watchers; a watcher further behind catches up from the log.
const FEED_CAPACITY: usize = 4096;

/// A group of events, durable and applied, in revision order.
pub type CommittedGroup = Arc<[Event]>;

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("a start-up thread failed unexpectedly (damaged storage?): {0}")]
    Panicked(String),
    #[error("cannot start the engine's threads: {0}")]
    Thread(#[source] std::io::Error),
}

impl StartError {
    fn panicked(panic: Box<dyn std::any::Any + Send>) -> StartError {
        StartError::Panicked(crate::log::panic_message(panic.as_ref()))
    }
}

/// What the writer thread is asked to do.
enum Job {
    Execute {
        command: Command,
        /// Who asked: recorded on every event the command produces.
        actor: Arc<Actor>,
        /// The call's trace and when the command was queued, when the call is sampled: the
        /// writer records its spans under it (and measures nothing for other calls).
        trace: Option<(opentelemetry::Context, Instant)>,
        reply: oneshot::Sender<Result<Outcome, Error>>,
        /// Sent by another replica: appended here, never forwarded again.
        forwarded: bool,
    },
    /// A group of the replicated stream (or why the next one cannot be read), in stream order.
    Replicated(Result<Arrival, String>),
    Stop,
}

/// What the projections hold: their head revision and, on a replica, the stream sequence of
/// the last message applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub revision: u64,
    pub sequence: u64,
}

/// The write side of the service: submit commands, read projections, follow commits.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    projections: Projections,
    feed: broadcast::Sender<CommittedGroup>,
    log: EventLog,
    writer: Mutex<Option<JoinHandle<()>>>,
    marker: Mutex<Option<JoinHandle<()>>>,
    /// Held while the route history is being built (once).
    route_history_built: Mutex<()>,
    applied: tokio::sync::watch::Receiver<Applied>,
    /// A replica's stream and the task that tails it.
    replica: Option<(Arc<Replica>, tokio::task::JoinHandle<()>)>,
}

impl Engine {
    /// Rebuilds the projections from the log (from the snapshot when one is usable), then
    /// starts the writer, which takes a background snapshot every `snapshot_every` events.
    /// Blocking: call it from a blocking context.
    /// With `replica`, the log's truth is the replicated stream: the writer appends there
    /// and a tail applies every group of the stream from the one after the log's position.
    pub fn start(
        log: EventLog,
        metrics: Arc<WriteMetrics>,
        snapshot_every: u64,
        replica: Option<Arc<Replica>>,
    ) -> Result<Engine, StartError> {
        let started = Instant::now();
        if let Err(error) = log.drop_legacy_snapshot() {
            warn!(%error, "cannot drop the snapshot an earlier version kept in sled");
        }
        let log_head = log.head()?;
        match log.check_mark(log_head)? {
            CheckpointStatus::OfAnotherLog(revision) => {
                warn!(
                    revision,
                    "the length mark was written by another log (its record differs); ignored"
                )
            }
            CheckpointStatus::Unreadable(why) => warn!(why, "the length mark is unreadable; ignored"),
            CheckpointStatus::Missing | CheckpointStatus::At(_) => {}
        }
        let rebuilt = startup::rebuild(&log, log_head)?;
        let model = &rebuilt.model;
        info!(
            head = model.head,
            checkpoint_revision = rebuilt.checkpoint_revision,
            replayed = model.head - rebuilt.checkpoint_revision,
            prefixes = model.state.n_prefixes(),
            bindings = model.state.n_bindings(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projections rebuilt from the log"
        );
        let head = model.head;
        let projections = Projections::new(rebuilt.model);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (marks, marker) = checkpoint::spawn_marker(log.clone()).map_err(StartError::Thread)?;
        let position = match &replica {
            Some(_) => log.stream_position()?.unwrap_or_default(),
            None => Default::default(),
        };
        let (applied_sender, applied) = tokio::sync::watch::channel(Applied {
            revision: head,
            sequence: position.sequence,
        });
        let writer = writer::Writer::new(writer::WriterParts {
            queue,
            head,
            log: log.clone(),
            projections: projections.clone(),
            feed: feed.clone(),
            metrics,
            snapshots: checkpoint::Snapshots::new(
                rebuilt.chain,
                rebuilt.since,
                rebuilt.checkpoint_revision,
                snapshot_every,
            ),
            marks,
            applied: applied_sender,
            replica: replica.clone().map(|replica| (replica, position)),
        });
        let handle = std::thread::Builder::new()
            .name("ipam-writer".into())
            .spawn(move || writer.run())
            .map_err(StartError::Thread)?;
        let replica = replica.map(|replica| {
            let groups = jobs.clone();
            let tail = tokio::runtime::Handle::current().spawn(crate::replica::tail(
                Arc::clone(&replica),
                position.sequence,
                move |group| {
                    let groups = groups.clone();
                    async move { groups.send(Job::Replicated(group)).await.is_ok() }
                },
            ));
            (replica, tail)
        });
        Ok(Engine {
            jobs,
            projections,
            feed,
            log,
            writer: Mutex::new(Some(handle)),
            marker: Mutex::new(Some(marker)),
            route_history_built: Mutex::new(()),
            applied,
            replica,
        })
    }

    /// What the projections hold now.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<Applied> {
        self.applied.clone()
    }

    /// The replicated stream, on a replica.
    pub fn replica(&self) -> Option<&Arc<Replica>> {
        self.replica.as_ref().map(|(replica, _)| replica)
    }

    /// Before a watch from `revision`: on a replica that has not applied it, waits until the
    /// replica applied what the stream holds (a revision up to the stream's head is valid on
    /// every replica). Without NATS, the replica's own head decides.
    pub async fn catch_up_for(&self, revision: u64) {
        if self.replica.is_some() && revision > self.applied.borrow().revision {
            let _ = self.caught_up().await;
        }
    }

    /// On a replica: waits until this replica applied everything the stream held when this
    /// was called (reads the stream's last sequence from NATS). At once on a single node.
    pub async fn caught_up(&self) -> Result<(), Error> {
        let Some(replica) = self.replica() else { return Ok(()) };
        let last = replica.last_sequence().await.map_err(|error| {
            Error::new(
                Reason::NotReady,
                format!("cannot ask the replicated log for its head ({error}); retry"),
            )
        })?;
        let mut applied = self.applied.clone();
        match applied.wait_for(|applied| applied.sequence >= last).await {
            Ok(_) => Ok(()),
            Err(_) => Err(shutting_down()),
        }
    }

    /// Runs a command through the writer; returns once its events are durable and visible to
    /// reads (read-your-writes). Its events record `actor`.
    pub fn execute(&self, command: Command, actor: Actor) -> impl Future<Output = Result<Outcome, Error>> + '_ {
        self.run(command, actor, false, telemetry::current_call())
    }

    /// [`execute`](Self::execute) for a command another replica forwarded to this one (it
    /// holds the lease): appended by this replica whatever the lease says by then. Its spans
    /// go under `trace`, the asking call's (from the other replica), when it is traced.
    pub async fn execute_forwarded(
        &self,
        command: Command,
        actor: Actor,
        trace: Option<opentelemetry::Context>,
    ) -> Result<Outcome, Error> {
        self.run(command, actor, true, trace).await
    }

    async fn run(
        &self,
        command: Command,
        actor: Actor,
        forwarded: bool,
        trace: Option<opentelemetry::Context>,
    ) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        let actor = Arc::new(actor);
        let trace = trace.map(|context| (context, Instant::now()));
        self.jobs
            .send(Job::Execute {
                command,
                actor,
                reply,
                trace,
                forwarded,
            })
            .await
            .map_err(|_| shutting_down())?;
        outcome.await.map_err(|_| shutting_down())?
    }

    /// Decides a command against the acknowledged state without running it: every check the
    /// real call makes, in the same order, and what it would return; nothing is appended.
    pub fn validate(&self, command: &Command) -> Result<Decision, Error> {
        self.projections.read().state.decide(command, Micros::now())
    }

    /// Starts keeping the route history that WatchRoutes serves, if it is not kept yet: the
    /// table as of [`HISTORY_REVISIONS`] revisions ago (replayed from the log), then every
    /// event since, so a watch may start anywhere in the last `HISTORY_REVISIONS` revisions
    /// (also right after a restart). The replay runs without the projections' lock; only the
    /// events committed meanwhile are applied under it. Blocking: call it from a blocking
    /// context.
    pub fn keep_route_history(&self) -> Result<(), Error> {
        let _one_at_a_time = self
            .route_history_built
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if self.projections.read().route_history.is_some() {
            return Ok(());
        }
        let unreadable =
            |error: LogError| Error::new(Reason::Internal, format!("the event log could not be read: {error}"));
        let head = self.projections.read().head;
        let start = head.saturating_sub(HISTORY_REVISIONS);
        let up_to =
            |limit: u64| move |event: &Result<Event, LogError>| event.as_ref().map_or(true, |e| e.revision <= limit);
        let (mut state, _) = State::replay(self.log.read_after(0).take_while(up_to(start))).map_err(unreadable)?;
        let mut history = RouteHistory::build(&state, start);
        let mut follow = |after: u64, limit: u64| -> Result<(), Error> {
            for event in self.log.read_after(after).take_while(up_to(limit)) {
                let event = event.map_err(unreadable)?;
                state.apply(&event);
                history.apply(&state, &event);
            }
            Ok(())
        };
        follow(start, head)?;
        let mut model = self.projections.write();
        follow(head, model.head)?;
        model.route_history = Some(history);
        Ok(())
    }

    pub fn projections(&self) -> &Projections {
        &self.projections
    }

    /// Every group committed from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CommittedGroup> {
        self.feed.subscribe()
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Up to `max` events after revision `after`, none past `up_to`, read from the log: what
    /// a watcher that fell behind the feed catches up with. Blocking: call it from a blocking
    /// context.
    pub fn history(&self, after: u64, up_to: u64, max: usize) -> Result<Vec<Event>, Error> {
        self.log
            .read_after(after)
            .take_while(|event| event.as_ref().map_or(true, |event| event.revision <= up_to))
            .take(max)
            .collect::<Result<Vec<Event>, _>>()
            .map_err(|error| match error {
                LogError::Closed => Error::new(
                    Reason::StorageUnavailable,
                    "the storage is recovering from a failure; resume from your last revision",
                ),
                error => Error::new(Reason::Internal, format!("the event log could not be read: {error}")),
            })
    }

    /// Lets the writer finish what is queued, makes the log durable and stops it. Later
    /// commands fail with NOT_READY.
    pub async fn stop(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        if let Some((_, tail)) = &self.replica {
            tail.abort();
        }
        // The marker ends once the writer (which feeds it) has.
        let threads =
            [&self.writer, &self.marker].map(|thread| thread.lock().ok().and_then(|mut thread| thread.take()));
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().flatten().for_each(|thread| drop(thread.join())))
                .await;
        // A checkpoint of the final state makes the next start replay nothing.
        let (log, projections) = (self.log.clone(), self.projections.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let model = projections.read();
            checkpoint::checkpoint_final(&log, model.head, &model.state);
        })
        .await;
        if let Err(error) = self.log.flush() {
            error!(%error, "final flush of the log failed");
        }
    }
}

/// What a call gets when the engine stops before answering it.
pub fn shutting_down() -> Error {
    Error::new(
        Reason::NotReady,
        "the server is shutting down; retry on another instance",
    )
}
