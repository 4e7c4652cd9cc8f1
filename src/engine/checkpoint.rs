//! Checkpoints beside the log, kept by the engine's threads: the background ones (a delta, what
//! the events since the last checkpoint changed, or a snapshot copied from the projections'
//! state a chunk per commit; each completed and stored by a helper thread), the marker thread
//! rewriting the log's length mark, and the final checkpoint at a stop.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::domain::state::{ChangedIds, RecordCopy, SnapshotRecords};
use crate::domain::{Event, State};
use crate::log::{EventLog, LogPosition};
use crate::projection::Projections;

/// Records the writer copies for a background snapshot after each commit: small enough that
/// a commit barely waits for it.
const SNAPSHOT_CHUNK: usize = 4096;

/// How often, at most, the log's length mark is rewritten while writes come in: events
/// acknowledged since the last mark are the ones a file cut short could lose unnoticed.
pub(super) const MARK_EVERY: Duration = Duration::from_secs(1);

/// Most deltas after a snapshot: past them, the next checkpoint is a snapshot.
const MAX_DELTAS: usize = 16;

/// Most record ids noted for the next delta (~40 MB): past them (with a very large
/// `--snapshot-every`), the ids are dropped and the next checkpoint is a snapshot.
const MAX_CHANGED_IDS: usize = 1 << 20;

/// The writer's background checkpoints, every `every` events: a delta when the last
/// checkpoint can be followed by one ([`Chain::next_is_delta`]), else a snapshot.
///
/// Either is copied from the projections' state a chunk per commit (a [`RecordCopy`], so
/// writes never wait for a whole copy); once done, a helper thread applies the events since
/// the copy started (which makes it exact), encodes and stores it. A snapshot copies every
/// record; a delta only those the events since the last checkpoint set or deleted (the writer
/// notes their ids as it applies events), so its size follows the writes, not the state: a
/// snapshot of 200,000 bindings is ~25 MB, and on replicas the stream's fsyncs wait behind its
/// writeback (docs/benchmarks.md, Replicas).
pub(super) struct Snapshots {
    /// Revision of the newest checkpoint started (or loaded).
    last: u64,
    /// Events between background checkpoints.
    every: u64,
    /// The checkpoints stored: what the next one follows.
    chain: Chain,
    /// What the events since the newest checkpoint started changed.
    since: Since,
    /// The checkpoint being copied, if one is.
    copying: Option<Copying>,
    /// The thread completing and storing the last checkpoint (what it stored; `None` if it
    /// failed): a new one waits until it has finished, and [`finish`](Self::finish) joins it
    /// (so that a stopped engine holds no handle on the log).
    thread: Option<JoinHandle<Option<Chain>>>,
}

/// What the events after a checkpoint changed: what the delta after it copies.
#[derive(Debug)]
pub(super) struct Since {
    /// The records they set or deleted; `None` once more than [`MAX_CHANGED_IDS`] were.
    changed: Option<ChangedIds>,
    /// How many idempotency keys the state held at the checkpoint: those the events added
    /// come after.
    requests_at_checkpoint: usize,
}

impl Since {
    /// Nothing yet since a checkpoint of a state holding `requests` idempotency keys.
    pub(super) fn checkpoint(requests: usize) -> Since {
        Since {
            changed: Some(ChangedIds::default()),
            requests_at_checkpoint: requests,
        }
    }

    /// Notes what `event`, the next one applied, changed.
    pub(super) fn note(&mut self, event: &Event) {
        let Some(changed) = self.changed.as_mut() else {
            return;
        };
        changed.record(event);
        if changed.n_ids() > MAX_CHANGED_IDS {
            self.changed = None;
        }
    }
}

/// The stored checkpoints a start would use: a snapshot and the deltas after it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Chain {
    /// The newest of them (the snapshot, or its last delta); `None`: none, or a checkpoint
    /// failed. A delta follows it by its log record's checksum: a snapshot stored without one
    /// (by an older build) is followed by none.
    pub tip: Option<LogPosition>,
    /// The records they hold: the snapshot's, and each delta's records and deletions.
    pub records: usize,
    pub deltas: usize,
    /// Where the last delta ends in its file (0: none yet).
    pub deltas_end: u64,
}

impl Chain {
    /// A snapshot of `records` records at `tip`, no deltas.
    pub(super) fn snapshot(tip: LogPosition, records: usize) -> Chain {
        Chain {
            tip: Some(tip),
            records,
            ..Chain::default()
        }
    }

    /// Whether the next checkpoint, of a state holding `live_records`, is a delta: while the
    /// deltas are fewer than [`MAX_DELTAS`] and the checkpoints hold fewer than twice the
    /// state's records, so that a start reads at most about twice what a snapshot of the
    /// state would hold. A state that only grows is all deltas (they hold no record twice);
    /// records changed again and again, or deleted, bring a snapshot sooner.
    fn next_is_delta(&self, live_records: usize) -> bool {
        let followable = self.tip.is_some_and(|tip| tip.log_record_checksum.is_some());
        followable && self.deltas < MAX_DELTAS && self.records < 2 * live_records
    }
}

/// A background checkpoint being copied, a chunk per commit.
struct Copying {
    /// The revision the copy started at: the events after it are applied to complete it.
    started_at: u64,
    copy: RecordCopy,
    /// `Some`: a delta, after this chain's tip; `None`: a snapshot.
    delta_after: Option<Chain>,
}

impl Snapshots {
    /// `chain` is what the start began from, `since` what the events after it changed, and
    /// `last` the revision it had reached before those events.
    pub(super) fn new(chain: Chain, since: Since, last: u64, every: u64) -> Snapshots {
        Snapshots {
            last,
            every,
            chain,
            since,
            copying: None,
            thread: None,
        }
    }

    /// Notes what `events`, just applied, changed.
    pub(super) fn note(&mut self, events: &[Event]) {
        for event in events {
            self.since.note(event);
        }
    }

    /// After a commit that brought the log to `head`: copies the next chunk of a checkpoint
    /// being taken, or starts one when `every` events have passed since the last.
    pub(super) fn after_commit(&mut self, projections: &Projections, head: u64, log: &EventLog) {
        if let Some(copying) = self.copying.as_mut() {
            // Under the read lock: readers go on; only the writer (this thread) waits for it.
            let copied = copying.copy.copy_from(&projections.read().state, SNAPSHOT_CHUNK);
            if copied {
                let Copying {
                    started_at,
                    copy,
                    delta_after,
                } = self.copying.take().expect("copying");
                let log = log.clone();
                match delta_after {
                    Some(chain) => self.spawn(move || write_delta(&log, chain, started_at, head, copy)),
                    None => self.spawn(move || complete_snapshot(&log, started_at, head, copy)),
                }
            }
            return;
        }
        let still_writing = self.thread.as_ref().is_some_and(|thread| !thread.is_finished());
        if head - self.last < self.every || still_writing {
            return;
        }
        if let Some(finished) = self.thread.take() {
            // A checkpoint that failed took the changes since the one before with it: what
            // follows is a snapshot.
            self.chain = finished.join().ok().flatten().unwrap_or_default();
        }
        self.last = head;
        let state = &projections.read().state;
        let since = std::mem::replace(&mut self.since, Since::checkpoint(state.n_remembered_requests()));
        // Without the ids (too many were noted), a snapshot.
        let (copy, delta_after) = match since.changed {
            Some(changed) if self.chain.next_is_delta(state.n_records()) => (
                state.start_copy_of(changed, since.requests_at_checkpoint),
                Some(self.chain),
            ),
            _ => (state.start_copy(), None),
        };
        self.copying = Some(Copying {
            started_at: head,
            copy,
            delta_after,
        });
    }

    fn spawn(&mut self, store: impl FnOnce() -> Option<Chain> + Send + 'static) {
        match std::thread::Builder::new().name("ipam-snapshot".into()).spawn(store) {
            Ok(thread) => self.thread = Some(thread),
            Err(error) => {
                warn!(%error, "cannot start the snapshot thread; no checkpoint written");
                // The changes since the last checkpoint went with it: what follows is a snapshot.
                self.chain = Chain::default();
            }
        }
    }

    /// Waits for a checkpoint still being stored.
    pub(super) fn finish(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes a copy taken in chunks since `started_at` exact as of `head` (applying the events
/// in between, from the log) and stores it as the snapshot of `head`.
fn complete_snapshot(log: &EventLog, started_at: u64, head: u64, copy: RecordCopy) -> Option<Chain> {
    let started = Instant::now();
    let events = read_events(log, started_at, head, "a snapshot")?;
    let records = copy.complete(&events);
    debug!(
        started_at,
        revision = head,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot copy completed"
    );
    let checksum = checksum_at(log, head)?;
    write_snapshot(log, head, checksum, &records)?;
    Some(Chain::snapshot(position_at(head, checksum), records.n_records()))
}

/// Completes a delta's copy taken since `started_at` as of `head` and stores it as the delta
/// after `chain`'s tip.
fn write_delta(log: &EventLog, chain: Chain, started_at: u64, head: u64, copy: RecordCopy) -> Option<Chain> {
    let started = Instant::now();
    let after = chain.tip?;
    let events = read_events(log, started_at, head, "a delta")?;
    let changes = copy.changes(&events);
    drop(events);
    let checksum = checksum_at(log, head)?;
    match log.save_delta(after, head, checksum, &changes, chain.deltas_end) {
        Ok((bytes, end)) => {
            info!(
                revision = head,
                after = after.revision,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot delta written"
            );
            Some(Chain {
                tip: Some(position_at(head, checksum)),
                records: chain.records + changes.n_records(),
                deltas: chain.deltas + 1,
                deltas_end: end,
            })
        }
        Err(error) => {
            warn!(%error, revision = head, "writing a snapshot delta failed; the log is unaffected");
            None
        }
    }
}

/// The checkpoint of `revision`, whose log record has `checksum`.
fn position_at(revision: u64, checksum: u32) -> LogPosition {
    LogPosition {
        revision,
        log_record_checksum: Some(checksum),
    }
}

/// The events after `after` up to `head`, from the log (`None`, logged, when it cannot be
/// read: no checkpoint is written).
fn read_events(log: &EventLog, after: u64, head: u64, what: &str) -> Option<Vec<Event>> {
    let mut events = Vec::new();
    for event in log.read_after(after) {
        match event {
            Ok(event) if event.revision <= head => events.push(event),
            Ok(_) => break,
            Err(error) => {
                warn!(%error, "cannot read the log to complete {what}; no checkpoint written");
                return None;
            }
        }
    }
    Some(events)
}

/// At a stop: the snapshot and the mark of the final state, so the next start replays nothing.
pub(super) fn checkpoint_final(log: &EventLog, head: u64, state: &State) {
    if let Some(checksum) = checksum_at(log, head) {
        write_snapshot(log, head, checksum, state);
        save_mark(log, head, checksum);
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

/// Stores `records` as the snapshot of `revision`, whose log record has `checksum` (`None`:
/// it failed, logged).
fn write_snapshot(log: &EventLog, revision: u64, checksum: u32, records: &impl SnapshotRecords) -> Option<()> {
    let started = Instant::now();
    match log.save_snapshot(revision, checksum, records) {
        Ok(bytes) => {
            info!(
                revision,
                bytes,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot written"
            );
            Some(())
        }
        Err(error) => {
            warn!(%error, revision, "writing a snapshot failed; the log is unaffected");
            None
        }
    }
}

/// A durable head for the marker: a group's last revision and its log record's checksum.
pub(super) struct Mark {
    pub revision: u64,
    pub checksum: u32,
}

/// The thread that rewrites the log's length mark: it takes the newest revision sent (older
/// ones queued meanwhile are skipped) and ends when the sender is dropped.
pub(super) fn spawn_marker(log: EventLog) -> std::io::Result<(mpsc::Sender<Mark>, JoinHandle<()>)> {
    let (marks, heads) = mpsc::channel::<Mark>();
    let handle = std::thread::Builder::new().name("ipam-marker".into()).spawn(move || {
        while let Ok(mut mark) = heads.recv() {
            mark = heads.try_iter().last().unwrap_or(mark);
            save_mark(&log, mark.revision, mark.checksum);
        }
    })?;
    Ok((marks, handle))
}

fn save_mark(log: &EventLog, revision: u64, checksum: u32) {
    if let Err(error) = log.save_mark(revision, checksum) {
        warn!(%error, revision, "writing the log's length mark failed; the log is unaffected");
    }
}
