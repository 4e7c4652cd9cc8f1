//! Checkpoints beside the log, kept by the engine's threads: the background snapshot (copied
//! from the projections' state a chunk per commit, completed and stored by a helper thread), the
//! marker thread rewriting the log's length mark, and the final checkpoint at a stop.

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::domain::State;
use crate::domain::state::{RecordCopy, SnapshotRecords};
use crate::log::EventLog;
use crate::projection::Projections;

/// Records the writer copies for a background snapshot after each commit: small enough that
/// a commit barely waits for it.
const SNAPSHOT_CHUNK: usize = 4096;

/// How often, at most, the log's length mark is rewritten while writes come in: events
/// acknowledged since the last mark are the ones a file cut short could lose unnoticed.
pub(super) const MARK_EVERY: Duration = Duration::from_secs(1);

/// The writer's background snapshots: every `every` events, the state is copied a chunk per
/// commit (a [`RecordCopy`], so writes never wait for a whole copy); once done, a helper
/// thread applies the events since the copy started (which makes it exact), encodes and
/// stores it.
pub(super) struct Snapshots {
    /// Revision of the newest snapshot written (or loaded).
    last: u64,
    /// Events between background snapshots.
    every: u64,
    /// The snapshot being copied, if one is.
    copying: Option<SnapshotCopy>,
    /// The thread completing and storing the last snapshot: a new one waits until it has
    /// finished, and [`finish`](Self::finish) joins it (so that a stopped engine holds no
    /// handle on the log).
    thread: Option<JoinHandle<()>>,
}

/// A background snapshot being copied, a chunk per commit.
struct SnapshotCopy {
    /// The revision the copy started at: the events after it are applied to complete it.
    started_at: u64,
    copy: RecordCopy,
}

impl Snapshots {
    /// `last` is the revision of the snapshot the start began from (0: none).
    pub(super) fn new(last: u64, every: u64) -> Snapshots {
        Snapshots {
            last,
            every,
            copying: None,
            thread: None,
        }
    }

    /// After a commit that brought the log to `head`: copies the next chunk of a snapshot
    /// being taken, or starts one when `every` events have passed since the last.
    pub(super) fn after_commit(&mut self, projections: &Projections, head: u64, log: &EventLog) {
        if let Some(copying) = self.copying.as_mut() {
            // Under the read lock: readers go on; only the writer (this thread) waits for it.
            let copied = copying.copy.copy_from(&projections.read().state, SNAPSHOT_CHUNK);
            if copied {
                let SnapshotCopy { started_at, copy } = self.copying.take().expect("copying");
                let log = log.clone();
                let spawned = std::thread::Builder::new()
                    .name("ipam-snapshot".into())
                    .spawn(move || complete_snapshot(&log, started_at, head, copy));
                match spawned {
                    Ok(thread) => self.thread = Some(thread),
                    Err(error) => warn!(%error, "cannot start the snapshot thread; no snapshot written"),
                }
            }
            return;
        }
        let still_writing = self.thread.as_ref().is_some_and(|thread| !thread.is_finished());
        if head - self.last < self.every || still_writing {
            return;
        }
        if let Some(finished) = self.thread.take() {
            let _ = finished.join();
        }
        self.last = head;
        self.copying = Some(SnapshotCopy {
            started_at: head,
            copy: projections.read().state.start_copy(),
        });
    }

    /// Waits for a snapshot still being stored.
    pub(super) fn finish(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Makes a copy taken in chunks since `started_at` exact as of `head` (applying the events
/// in between, from the log) and stores it as the snapshot of `head`.
fn complete_snapshot(log: &EventLog, started_at: u64, head: u64, copy: RecordCopy) {
    let started = Instant::now();
    let mut events = Vec::new();
    for event in log.read_after(started_at) {
        match event {
            Ok(event) if event.revision <= head => events.push(event),
            Ok(_) => break,
            Err(error) => {
                warn!(%error, "cannot read the log to complete a snapshot; no snapshot written");
                return;
            }
        }
    }
    let records = copy.complete(&events);
    debug!(
        started_at,
        revision = head,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot copy completed"
    );
    if let Some(checksum) = checksum_at(log, head) {
        write_snapshot(log, head, checksum, &records);
    }
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

/// Stores `records` as the snapshot of `revision`, whose log record has `checksum`.
fn write_snapshot(log: &EventLog, revision: u64, checksum: u32, records: &impl SnapshotRecords) {
    let started = Instant::now();
    match log.save_snapshot(revision, checksum, records) {
        Ok(bytes) => info!(
            revision,
            bytes,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        ),
        Err(error) => warn!(%error, revision, "writing a snapshot failed; the log is unaffected"),
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
