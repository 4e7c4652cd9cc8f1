//! The single writer. Every change goes through one thread, in this order:
//! decide (against the writer's own copy of the state) -> append the group to the log and fsync
//! once -> apply to the read projections -> publish to watchers -> reply. Commands that queue up
//! while an fsync runs form the next group, so concurrent writers share fsyncs (group commit)
//! and the rules hold under any concurrency: decisions are serialized, and each one sees every
//! decision before it, durable or about to be.

use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::domain::state::RecordCopy;
use crate::domain::{Command, Error, Event, Micros, Outcome, Reason, State};
use crate::log::{CheckpointStatus, EventLog, LogError, Witness, codec};
use crate::metrics::Metrics;
use crate::projection::routing::RoutingTable;
use crate::projection::{Projections, ReadModel};

/// Most commands decided and committed as one group (one fsync).
const MAX_GROUP: usize = 1024;
/// Commands waiting for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;
/// Committed groups buffered for watchers; a watcher further behind catches up from the log.
const FEED_CAPACITY: usize = 4096;
/// How often, at most, the log's length mark is rewritten while writes come in: events
/// acknowledged since the last mark are the ones a file cut short could lose unnoticed.
const MARK_EVERY: Duration = Duration::from_secs(1);

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
    marker: Mutex<Option<JoinHandle<()>>>,
}

impl Engine {
    /// Rebuilds the projections from the log (from the snapshot when one is usable), then
    /// starts the writer, which takes a background snapshot every `snapshot_every` events.
    /// Blocking: call it from a blocking context.
    pub fn start(log: EventLog, metrics: Arc<Metrics>, snapshot_every: u64) -> Result<Engine, StartError> {
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
        let (mut model, mut writer_state) = match restore_snapshot(&log, log_head)? {
            Some(restored) => restored,
            None => {
                // No usable snapshot: the whole log, its records folded event by event and
                // the indexes and routing tables built once at the end.
                let (state, head) = State::replay(log.read_after(0))?;
                read_model_of(state, head)?
            }
        };
        let snapshot_revision = model.head;
        // The tail past the snapshot (nothing after a full replay).
        for event in log.read_after(model.head) {
            let event = event?;
            model.apply(&event);
            writer_state.apply(&event);
        }
        info!(
            head = model.head,
            snapshot_revision,
            replayed = model.head - snapshot_revision,
            prefixes = model.state.n_prefixes(),
            bindings = model.state.n_bindings(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "projections rebuilt from the log"
        );
        let head = model.head;
        let projections = Projections::new(model);
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let (feed, _) = broadcast::channel(FEED_CAPACITY);
        let (marks, marker) = spawn_marker(log.clone()).map_err(StartError::Thread)?;
        let writer = Writer {
            queue,
            state: writer_state,
            next_revision: head + 1,
            log: log.clone(),
            projections: projections.clone(),
            feed: feed.clone(),
            metrics,
            last_snapshot: snapshot_revision,
            snapshot_every,
            snapshot_thread: None,
            snapshot_copy: None,
            log_needs_recovery: false,
            runtime: tokio::runtime::Handle::try_current().ok(),
            marks,
            last_mark: None,
        };
        let handle = std::thread::Builder::new()
            .name("ipam-writer".into())
            .spawn(move || writer.run())
            .map_err(StartError::Thread)?;
        Ok(Engine {
            jobs,
            projections,
            feed,
            log,
            writer: Mutex::new(Some(handle)),
            marker: Mutex::new(Some(marker)),
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
            if let Some(checksum) = checksum_at(&log, model.head) {
                write_snapshot(&log, model.head, checksum, &model.state);
                save_mark(&log, model.head, checksum);
            }
        })
        .await;
        if let Err(error) = self.log.flush() {
            error!(%error, "final flush of the log failed");
        }
    }
}

/// Records the writer copies for a background snapshot after each commit (~0.5 ms).
const SNAPSHOT_CHUNK: usize = 4096;

/// A background snapshot being copied, a chunk per commit.
struct SnapshotCopy {
    /// The revision the copy started at: the events after it are applied to complete it.
    started_at: u64,
    copy: RecordCopy,
}

/// The read model of the stored snapshot and the writer's copy of its state, if there is a
/// usable snapshot. A missing or unreadable snapshot, or one taken from another log, is `None`
/// (full replay). A snapshot newer than the log's head means the log lost events it once had,
/// and a damaged record under the snapshot is damage all the same: both refuse to start rather
/// than serve from a log that is not sound.
fn restore_snapshot(log: &EventLog, log_head: u64) -> Result<Option<(ReadModel, State)>, StartError> {
    let record = match log.load_snapshot() {
        Ok(Some(record)) => record,
        Ok(None) => return Ok(None),
        Err(error) => {
            warn!(%error, "cannot read the snapshot; replaying the whole log");
            return Ok(None);
        }
    };
    // The records under the snapshot are checked (not decoded) while the snapshot decodes:
    // damage there must still stop the start, as a full replay would have. With runs of ~32
    // events per record, checking 1.1M events takes ~0.1 s; decoding the snapshot ~0.6 s.
    let started = Instant::now();
    let (checked, decoded) = std::thread::scope(|scope| {
        let check = scope.spawn(|| crate::log::expecting_storage_panics(|| log.check_records(0, log_head)));
        let decoded = codec::decode_snapshot(&record);
        let checked = check.join().map_err(StartError::panicked);
        (checked, decoded)
    });
    let snapshot = match decoded {
        Ok(snapshot) => snapshot,
        Err(error) => {
            warn!(%error, "the snapshot is unreadable; replaying the whole log");
            return Ok(None);
        }
    };
    let fits = log.fits(snapshot.position(), log_head, Witness::Snapshot)?;
    checked??;
    if !fits {
        warn!(
            revision = snapshot.revision,
            "the snapshot was not taken from this log (its record at that revision differs); replaying the whole log"
        );
        return Ok(None);
    }
    let restored = read_model_of(snapshot.state, snapshot.revision)?;
    info!(
        revision = snapshot.revision,
        bytes = record.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot restored"
    );
    Ok(Some(restored))
}

/// The read model over `state` (as of `head`) and the writer's copy of it: the copy is made
/// while the routing tables are built (~0.13 s and ~0.25 s at 200k bindings).
fn read_model_of(state: State, head: u64) -> Result<(ReadModel, State), StartError> {
    let (writer_state, routes) = std::thread::scope(|scope| {
        let copy = scope.spawn(|| state.clone());
        let routes = RoutingTable::of(&state);
        (copy.join(), routes)
    });
    let writer_state = writer_state.map_err(StartError::panicked)?;
    Ok((ReadModel { state, routes, head }, writer_state))
}

/// Makes a copy taken in chunks since `started_at` exact as of `head` (applying the events
/// in between, from the log) and stores it as the snapshot of `head`.
fn complete_snapshot(log: &EventLog, started_at: u64, head: u64, copy: RecordCopy) {
    let started = Instant::now();
    let mut state = copy.into_state();
    for event in log.read_after(started_at) {
        match event {
            Ok(event) if event.revision <= head => state.apply(&event),
            Ok(_) => break,
            Err(error) => {
                warn!(%error, "cannot read the log to complete a snapshot; no snapshot written");
                return;
            }
        }
    }
    debug!(
        started_at,
        revision = head,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot copy completed"
    );
    if let Some(checksum) = checksum_at(log, head) {
        write_snapshot(log, head, checksum, &state);
    }
}

/// The checksum of the log record ending at `revision`, which a snapshot or a mark of it
/// stores; `None` (logged) when there is none, as in an empty log.
fn checksum_at(log: &EventLog, revision: u64) -> Option<u32> {
    match log.record_checksum(revision) {
        Ok(Some(checksum)) => Some(checksum),
        Ok(None) if revision == 0 => None,
        missing => {
            warn!(
                ?missing,
                revision, "no log record ends at this revision; no checkpoint written"
            );
            None
        }
    }
}

/// Stores `state` as the snapshot of `revision`, whose log record has `checksum`.
fn write_snapshot(log: &EventLog, revision: u64, checksum: u32, state: &State) {
    let started = Instant::now();
    let record = codec::encode_snapshot(revision, Some(checksum), state);
    let bytes = record.len();
    match log.save_snapshot(revision, &record) {
        Ok(()) => info!(
            revision,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        ),
        Err(error) => warn!(%error, revision, "writing a snapshot failed; the log is unaffected"),
    }
}

/// The thread that rewrites the log's length mark: it takes the newest revision sent (older
/// ones queued meanwhile are skipped) and ends when the sender is dropped.
fn spawn_marker(log: EventLog) -> std::io::Result<(std::sync::mpsc::Sender<Mark>, JoinHandle<()>)> {
    let (marks, heads) = std::sync::mpsc::channel::<Mark>();
    let handle = std::thread::Builder::new().name("ipam-marker".into()).spawn(move || {
        while let Ok(mut mark) = heads.recv() {
            mark = heads.try_iter().last().unwrap_or(mark);
            save_mark(&log, mark.revision, mark.checksum);
        }
    })?;
    Ok((marks, handle))
}

/// A durable head for the marker: a group's last revision and its log record's checksum.
struct Mark {
    revision: u64,
    checksum: u32,
}

fn save_mark(log: &EventLog, revision: u64, checksum: u32) {
    if let Err(error) = log.save_mark(revision, checksum) {
        warn!(%error, revision, "writing the log's length mark failed; the log is unaffected");
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
    /// Revision of the newest snapshot written (or loaded).
    last_snapshot: u64,
    /// Events between background snapshots.
    snapshot_every: u64,
    /// The thread completing and storing the last background snapshot: a new one waits until
    /// it has finished, and the writer joins it before it ends (so that a stopped engine holds
    /// no handle on the log).
    snapshot_thread: Option<JoinHandle<()>>,
    /// The background snapshot being copied, if one is.
    snapshot_copy: Option<SnapshotCopy>,
    /// An append failed and the log could not be recovered yet: recover before the next one.
    log_needs_recovery: bool,
    /// The runtime the callers wait on (none when started outside one, as in unit tests).
    runtime: Option<tokio::runtime::Handle>,
    /// Durable heads for the marker thread.
    marks: std::sync::mpsc::Sender<Mark>,
    /// When the last head was sent to the marker (none yet: the first commit sends one).
    last_mark: Option<Instant>,
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
        if let Some(snapshot) = self.snapshot_thread.take() {
            let _ = snapshot.join();
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
            let started = Instant::now();
            let appended = self.recover_log().and_then(|()| self.log.append(&events));
            self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.group_commands.observe(replies.len() as f64);
            debug!(
                n_commands = replies.len(),
                n_events = events.len(),
                fsync_us = started.elapsed().as_micros() as u64,
                "group committed"
            );
            let last_checksum = match appended {
                Ok(last_checksum) => last_checksum,
                Err(error) => {
                    error!(%error, first_revision = events[0].revision, n_events = events.len(), "appending to the log failed");
                    self.roll_back();
                    let unavailable = Error::new(
                        Reason::StorageUnavailable,
                        format!("the change could not be stored durably ({error}); nothing was changed, retry later"),
                    );
                    for (reply, _) in replies {
                        let _ = reply.send(Err(unavailable.clone()));
                    }
                    return;
                }
            };
            self.metrics.events_appended.inc_by(events.len() as u64);
            if let Some(checksum) = last_checksum {
                self.maybe_mark(checksum);
            }
            self.projections.apply(&events);
            // No receivers is fine: nobody is watching.
            let _ = self.feed.send(Arc::from(events));
        }
        let deliver = move || {
            for (reply, result) in replies {
                // The caller may have gone away; its change is committed all the same.
                let _ = reply.send(result);
            }
        };
        // Waking each caller from this thread costs a trip through the runtime's shared queue
        // (and often a futex wake) per reply; one task hands out the whole group's replies from
        // a worker, whose wakes stay on its local queue. A/B at 64 callers: 1.08x creates/s.
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(async move { deliver() })),
            None => deliver(),
        }
        self.maybe_snapshot();
    }

    /// At most every [`MARK_EVERY`], has the marker record the durable head: the group's last
    /// revision, whose record has `checksum`.
    fn maybe_mark(&mut self, checksum: u32) {
        if self.last_mark.is_some_and(|sent| sent.elapsed() < MARK_EVERY) {
            return;
        }
        self.last_mark = Some(Instant::now());
        let _ = self.marks.send(Mark {
            revision: self.next_revision - 1,
            checksum,
        });
    }

    /// Every `snapshot_every` events, checkpoints the state in the background without
    /// stopping writes for a whole copy: the writer copies [`SNAPSHOT_CHUNK`] records after
    /// each commit (a [`RecordCopy`]); once done, a helper thread applies the events since the
    /// copy started (which makes it exact), encodes and stores it. Copying the whole state at
    /// once stalled every write for ~0.1 s at 300k bindings, growing with the state.
    fn maybe_snapshot(&mut self) {
        let head = self.next_revision - 1;
        if let Some(copying) = self.snapshot_copy.as_mut() {
            if copying.copy.copy_from(&self.state, SNAPSHOT_CHUNK) {
                let SnapshotCopy { started_at, copy } = self.snapshot_copy.take().expect("copying");
                let log = self.log.clone();
                let spawned = std::thread::Builder::new()
                    .name("ipam-snapshot".into())
                    .spawn(move || complete_snapshot(&log, started_at, head, copy));
                match spawned {
                    Ok(thread) => self.snapshot_thread = Some(thread),
                    Err(error) => warn!(%error, "cannot start the snapshot thread; no snapshot written"),
                }
            }
            return;
        }
        let still_writing = self
            .snapshot_thread
            .as_ref()
            .is_some_and(|thread| !thread.is_finished());
        if head - self.last_snapshot < self.snapshot_every || still_writing {
            return;
        }
        if let Some(finished) = self.snapshot_thread.take() {
            let _ = finished.join();
        }
        self.last_snapshot = head;
        self.snapshot_copy = Some(SnapshotCopy {
            started_at: head,
            copy: self.state.start_copy(),
        });
    }

    /// Forgets a group that was not made durable: the writer's state goes back to the
    /// projections' (which never saw it), its revisions will be reused, and the log is
    /// recovered at once if it can be (else before the next append).
    fn roll_back(&mut self) {
        let model = self.projections.read();
        self.state = model.state.clone();
        self.next_revision = model.head + 1;
        drop(model);
        self.log_needs_recovery = true;
        let _ = self.recover_log();
    }

    /// Reopens the log after a storage failure and drops what the failed group left in it.
    fn recover_log(&mut self) -> Result<(), LogError> {
        if !self.log_needs_recovery {
            return Ok(());
        }
        // The projections hold exactly what was acknowledged (the writer may be a group ahead).
        let acknowledged = self.projections.read().head;
        match self.log.recover(acknowledged) {
            Ok(()) => {
                warn!(acknowledged, "the log recovered from a storage failure; writes resume");
                self.log_needs_recovery = false;
                Ok(())
            }
            Err(error) => {
                error!(%error, "the log is still failing");
                Err(error)
            }
        }
    }
}
