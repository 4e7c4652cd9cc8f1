//! The single writer. Every change goes through one thread, in this order:
//! decide (against the writer's own copy of the state) -> append the group to the log and fsync
//! once -> apply to the read projections -> publish to watchers -> reply. Commands that queue up
//! while an fsync runs form the next group, so concurrent writers share fsyncs (group commit)
//! and the rules hold under any concurrency: decisions are serialized, and each one sees every
//! decision before it, durable or about to be.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info};

use crate::domain::{Command, Error, Event, Micros, Outcome, Reason, State};
use crate::log::{EventLog, LogError};
use crate::metrics::Metrics;
use crate::projection::{Projections, ReadModel};

/// Most commands decided and committed as one group (one fsync).
const MAX_GROUP: usize = 1024;
/// Commands waiting for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;
/// Committed groups buffered for watchers; a watcher further behind catches up from the log.
const FEED_CAPACITY: usize = 4096;

/// A group of events, durable and applied, in revision order.
pub type CommittedGroup = Arc<[Event]>;

enum Job {
    Execute {
        command: Command,
        reply: oneshot::Sender<Result<Outcome, Error>>,
    },
    Stop,
}

/// The write side of the service: submit commands, read projections, follow commits.
pub struct Engine {
    jobs: mpsc::Sender<Job>,
    projections: Projections,
    feed: broadcast::Sender<CommittedGroup>,
    log: EventLog,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Rebuilds the projections from the whole log, then starts the writer. Blocking: call it
    /// from a blocking context.
    pub fn start(log: EventLog, metrics: Arc<Metrics>) -> Result<Engine, LogError> {
        let started = std::time::Instant::now();
        let mut model = ReadModel::default();
        for event in log.read_after(0) {
            model.apply(&event?);
        }
        info!(
            head = model.head,
            prefixes = model.state.n_prefixes(),
            bindings = model.state.n_bindings(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projections rebuilt from the log"
        );
        let writer_state = model.state.clone();
        let head = model.head;
        let projections = Projections::new(model);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let writer = Writer {
            queue,
            state: writer_state,
            next_revision: head + 1,
            log: log.clone(),
            projections: projections.clone(),
            feed: feed.clone(),
            metrics,
        };
        let handle = std::thread::Builder::new()
            .name("ipam-writer".into())
            .spawn(move || writer.run())
            .map_err(|error| LogError::Storage(sled::Error::Io(error)))?;
        Ok(Engine {
            jobs,
            projections,
            feed,
            log,
            writer: Mutex::new(Some(handle)),
        })
    }

    /// Runs a command through the writer; returns once its events are durable and visible to
    /// reads (read-your-writes).
    pub async fn execute(&self, command: Command) -> Result<Outcome, Error> {
        let (reply, outcome) = oneshot::channel();
        self.jobs
            .send(Job::Execute { command, reply })
            .await
            .map_err(|_| shutting_down())?;
        outcome.await.map_err(|_| shutting_down())?
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

    /// Lets the writer finish what is queued, makes the log durable and stops it. Later
    /// commands fail with NOT_READY.
    pub async fn stop(&self) {
        let _ = self.jobs.send(Job::Stop).await;
        let handle = self.writer.lock().ok().and_then(|mut writer| writer.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        if let Err(error) = self.log.flush() {
            error!(%error, "final flush of the log failed");
        }
    }
}

fn shutting_down() -> Error {
    Error::new(
        Reason::NotReady,
        "the server is shutting down; retry on another instance",
    )
}

struct Writer {
    queue: mpsc::Receiver<Job>,
    /// The writer's own copy of the state: it runs ahead of the projections by the group being
    /// committed, so that each decision sees the ones before it.
    state: State,
    next_revision: u64,
    log: EventLog,
    projections: Projections,
    feed: broadcast::Sender<CommittedGroup>,
    metrics: Arc<Metrics>,
}

type Reply = (oneshot::Sender<Result<Outcome, Error>>, Result<Outcome, Error>);

impl Writer {
    fn run(mut self) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = self.queue.blocking_recv() else { break };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match self.queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let mut events = Vec::new();
            let mut replies: Vec<Reply> = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Execute { command, reply } => {
                        let result = self.decide(&command, &mut events);
                        replies.push((reply, result));
                    }
                    Job::Stop => stopping = true,
                }
            }
            self.commit(events, replies);
        }
        // Anything queued after Stop is refused: the receiver is dropped here.
    }

    fn decide(&mut self, command: &Command, events: &mut Vec<Event>) -> Result<Outcome, Error> {
        let now = Micros::now();
        let decision = self.state.decide(command, now)?;
        for change in decision.changes {
            let event = Event {
                revision: self.next_revision,
                time: now,
                change,
            };
            self.next_revision += 1;
            self.state.apply(&event);
            events.push(event);
        }
        Ok(decision.outcome)
    }

    fn commit(&mut self, events: Vec<Event>, replies: Vec<Reply>) {
        if !events.is_empty() {
            let started = std::time::Instant::now();
            let appended = self.log.append(&events);
            self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.group_commands.observe(replies.len() as f64);
            debug!(
                n_commands = replies.len(),
                n_events = events.len(),
                fsync_us = started.elapsed().as_micros() as u64,
                "group committed"
            );
            if let Err(error) = appended {
                error!(%error, first_revision = events[0].revision, n_events = events.len(), "appending to the log failed");
                self.roll_back(&events);
                let unavailable = Error::new(
                    Reason::StorageUnavailable,
                    "the change could not be stored durably; nothing was changed, retry later",
                );
                for (reply, _) in replies {
                    let _ = reply.send(Err(unavailable.clone()));
                }
                return;
            }
            self.metrics.events_appended.inc_by(events.len() as u64);
            self.projections.apply(&events);
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(Arc::from(events));
        }
        for (reply, result) in replies {
            // The caller may have gone away; its change is committed all the same.
            let _ = reply.send(result);
        }
    }

    /// Forgets a group that was not made durable: the writer's state goes back to the
    /// projections' (which never saw it) and its revisions will be reused.
    fn roll_back(&mut self, events: &[Event]) {
        if let Err(error) = self.log.discard_unacknowledged(events) {
            error!(%error, "discarding the unacknowledged group failed");
        }
        let model = self.projections.read();
        self.state = model.state.clone();
        self.next_revision = model.head + 1;
    }
}
