//! The event log: the only source of truth. One sled tree of records, each a run of
//! consecutive events ([`codec`]) keyed by its last event's revision (big-endian u64, so keys
//! sort in revision order). Revisions start at 1 and have no gaps; records are never rewritten
//! or deleted. [`EventLog::append`] writes a whole group, cut into runs of a few KiB, atomically
//! and returns only once sled has fsynced it.
//!
//! Why runs: sled's cost is per record (a start checks the same bytes many times faster as
//! runs than as one record per event: docs/benchmarks.md, Restart), and a group commit's
//! events are durable together anyway. Data directories written with one event per record (format 1) read as runs of one.
//!
//! Storage faults: sled 0.34 remembers an I/O error (disk full, EIO) and fails every later
//! operation of that database, even once the disk has recovered. So a failed append closes the
//! database and [`EventLog::recover`] opens it afresh (sled's recovery keeps whole batches or
//! nothing) and removes the records nobody was told about; writes then resume without a
//! restart. While closed, reads of the log (watchers catching up) fail with
//! [`LogError::Closed`]; the projections keep serving every other read.

mod atomic_file;
mod checkpoints;
pub mod codec;
mod delta_file;
mod error;
mod store;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::Event;

use atomic_file::AtomicFile;
pub use checkpoints::Deltas;
pub use codec::{Delta, LogPosition, Snapshot};
use delta_file::DeltaFile;
pub use delta_file::records as delta_records;
pub use error::{CheckpointStatus, LogError, Witness};
use store::{Handles, damage_or_failure, is_damage};
pub use store::{StorageFaults, quiet_storage_panics};
pub(crate) use store::{expecting_storage_panics, panic_message};

const EVENTS_TREE: &str = "events";
/// The file in which sled keeps its log and pages.
const SLED_FILE: &str = "db";
/// The checkpoint of the state, beside sled's files.
const SNAPSHOT_FILE: &str = "state.snapshot";
/// The changes since the snapshot, beside it.
const DELTAS_FILE: &str = "state.deltas";
/// The log's length mark, beside sled's files.
const MARK_FILE: &str = "log.mark";
/// Where data directories written before the snapshot moved to its own file kept it.
const LEGACY_SNAPSHOTS_TREE: &str = "snapshots";

/// The key, in sled's default tree, of a replica's [`StreamPosition`].
const STREAM_POSITION_KEY: &[u8] = b"stream_position";

/// A message of the replicated stream a replica's log stored: its stream sequence, the
/// revision of its last event and the CRC-32 of its payload (to tell, at a start, that the
/// stream still holds that very message).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamPosition {
    pub sequence: u64,
    pub last_revision: u64,
    pub checksum: u32,
}

impl StreamPosition {
    fn encode(&self) -> [u8; 20] {
        let mut bytes = [0; 20];
        bytes[..8].copy_from_slice(&self.sequence.to_be_bytes());
        bytes[8..16].copy_from_slice(&self.last_revision.to_be_bytes());
        bytes[16..].copy_from_slice(&self.checksum.to_be_bytes());
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<StreamPosition> {
        let bytes: &[u8; 20] = bytes.try_into().ok()?;
        Some(StreamPosition {
            sequence: u64::from_be_bytes(bytes[..8].try_into().ok()?),
            last_revision: u64::from_be_bytes(bytes[8..16].try_into().ok()?),
            checksum: u32::from_be_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

/// How long [`EventLog::recover`] waits for a closed database to release its directory lock
/// (sled frees a dropped database's resources lazily).
const REOPEN_PATIENCE: Duration = Duration::from_secs(2);
/// The durable, append-only log of every accepted change.
#[derive(Clone)]
pub struct EventLog {
    dir: PathBuf,
    /// `None` from a storage failure until [`recover`](Self::recover) reopens it.
    handles: Arc<RwLock<Option<Handles>>>,
    snapshot: Arc<AtomicFile>,
    deltas: Arc<DeltaFile>,
    mark: Arc<AtomicFile>,
    faults: StorageFaults,
    /// Records were written without an fsync ([`append_replicated`](Self::append_replicated))
    /// since the last flush: a checkpoint must flush before it refers to them.
    unflushed: Arc<AtomicBool>,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`. sled locks the directory, so a second server on the
    /// same directory fails here instead of corrupting it.
    pub fn open(dir: &Path) -> Result<EventLog, LogError> {
        EventLog::open_with_faults(dir, StorageFaults::default())
    }

    /// [`open`](Self::open), with appends failing whenever `faults` says the disk is full.
    pub fn open_with_faults(dir: &Path, faults: StorageFaults) -> Result<EventLog, LogError> {
        Ok(EventLog {
            dir: dir.to_path_buf(),
            handles: Arc::new(RwLock::new(Some(Handles::open(dir)?))),
            snapshot: Arc::new(AtomicFile::new(dir, SNAPSHOT_FILE)),
            deltas: Arc::new(DeltaFile::new(dir, DELTAS_FILE)),
            mark: Arc::new(AtomicFile::new(dir, MARK_FILE)),
            faults,
            unflushed: Arc::default(),
        })
    }

    fn with<T>(&self, use_handles: impl FnOnce(&Handles) -> Result<T, LogError>) -> Result<T, LogError> {
        let handles = self.handles.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        use_handles(handles.as_ref().ok_or(LogError::Closed)?)
    }

    fn events(&self) -> Result<sled::Tree, LogError> {
        self.with(|handles| Ok(handles.events.clone()))
    }

    /// Closes the database after a storage failure: sled would fail every later call anyway.
    fn close(&self) {
        let closed = self
            .handles
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        drop(closed);
    }

    /// After a failed append: reopens the database if it was closed, then removes every
    /// record after `acknowledged` (a failed group that reached the disk after all) and makes
    /// that durable, so the next append continues at `acknowledged + 1`.
    pub fn recover(&self, acknowledged: u64) -> Result<(), LogError> {
        if self
            .handles
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
        {
            let deadline = Instant::now() + REOPEN_PATIENCE;
            let reopened = loop {
                match Handles::open(&self.dir) {
                    Ok(handles) => break handles,
                    Err(LogError::InUse(_)) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(error) => return Err(error),
                }
            };
            *self.handles.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reopened);
        }
        self.write_durably(|handles| {
            let events = &handles.events;
            let unacknowledged: Vec<sled::IVec> = events
                .range((acknowledged + 1).to_be_bytes()..)
                .keys()
                .collect::<Result<_, _>>()?;
            for key in unacknowledged {
                events.remove(key)?;
            }
            Ok(())
        })
    }

    /// Runs `change` on the events tree and makes it durable. A storage failure closes the
    /// database (sled would fail every later call anyway): [`recover`](Self::recover) reopens it.
    fn write_durably(&self, change: impl FnOnce(&Handles) -> Result<(), LogError>) -> Result<(), LogError> {
        self.write(true, change)
    }

    /// [`write_durably`](Self::write_durably), or only handed to sled when not `durable`.
    fn write(&self, durable: bool, change: impl FnOnce(&Handles) -> Result<(), LogError>) -> Result<(), LogError> {
        let written = self.faults.check().and_then(|()| {
            self.with(|handles| {
                change(handles)?;
                if !durable {
                    return Ok(());
                }
                handles.make_durable()
            })
        });
        if let Err(LogError::Storage(_)) = written {
            self.close();
        }
        written
    }

    /// The revision of the last stored event; 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        let last = (self.events()?.last())
            .map_err(|error| damage_or_failure(error, "the storage cannot read the log's last record"))?;
        match last {
            None => Ok(0),
            Some((key, _)) => revision_of(&key),
        }
    }

    /// Stores `events` (consecutive revisions) atomically and durably: when this returns `Ok`,
    /// they survive a crash. On `Err` none of them is acknowledged, the database is closed and
    /// the caller must [`recover`](Self::recover) before appending again.
    ///
    /// Returns the checksum of the record that ends at the last event (what a length mark of
    /// that revision stores), `None` for no events.
    pub fn append(&self, events: &[Event]) -> Result<Option<u32>, LogError> {
        self.append_records(codec::encode_runs(events), None)
    }

    /// [`append`](Self::append) for a replica: `events` came from the replicated stream and
    /// `position` (where they were in it) is stored with them. Not fsynced here: the stream
    /// (a quorum of its nodes) is what makes them durable, and a replica that lost its last
    /// writes in a crash reads them from the stream again. What a checkpoint refers to is made
    /// durable before the checkpoint ([`save_mark`](Self::save_mark),
    /// [`save_snapshot`](Self::save_snapshot), a stop). sled keeps writes in order, so after a
    /// crash the stored position is never ahead of the events (it may be behind: the replica
    /// then skips the revisions it already has).
    ///
    /// `records` are the stream message's record of the same events cut into the log's runs
    /// ([`codec::split_group`]); the events are encoded again only when they are `None`.
    pub fn append_replicated(
        &self,
        events: &[Event],
        records: Option<Vec<(u64, Vec<u8>)>>,
        position: StreamPosition,
    ) -> Result<Option<u32>, LogError> {
        let records = records.unwrap_or_else(|| codec::encode_runs(events));
        self.append_records(records, Some(position))
    }

    fn append_records(
        &self,
        records: Vec<(u64, Vec<u8>)>,
        position: Option<StreamPosition>,
    ) -> Result<Option<u32>, LogError> {
        let last_checksum = records.last().and_then(|(_, record)| codec::checksum(record));
        let durable = position.is_none();
        if !durable {
            self.unflushed.store(true, Ordering::Release);
        }
        self.write(durable, |handles| {
            store_records(&handles.events, records)?;
            if let Some(position) = position {
                handles.db.insert(STREAM_POSITION_KEY, &position.encode()[..])?;
            }
            Ok(())
        })?;
        Ok(last_checksum)
    }

    /// Where this replica's log is in the replicated stream: the last message whose events
    /// it stored; `None` for a log that never stored one (an empty log, or a single node's).
    pub fn stream_position(&self) -> Result<Option<StreamPosition>, LogError> {
        let stored = self.with(|handles| Ok(handles.db.get(STREAM_POSITION_KEY)?))?;
        stored
            .map(|bytes| {
                StreamPosition::decode(&bytes)
                    .ok_or_else(|| LogError::Damaged(format!("the stream position is {} bytes long", bytes.len())))
            })
            .transpose()
    }

    /// Removes every record and makes that durable. Only for [`tools::import`] undoing a
    /// failed import into what was an empty directory: the log is otherwise never rewritten.
    pub(crate) fn clear(&self) -> Result<(), LogError> {
        self.with(|handles| {
            handles.events.clear()?;
            handles.make_durable()?;
            Ok(())
        })
    }

    /// Every event with a revision greater than `after`, in order, checked for damage and gaps.
    /// Stops after the first error.
    pub fn read_after(&self, after: u64) -> impl Iterator<Item = Result<Event, LogError>> + use<> {
        let mut continuity = Continuity::after(after);
        let mut failed = false;
        self.records_after(after)
            .map_while(move |record| {
                if failed {
                    return None;
                }
                let events = record
                    .map_err(|error| continuity.unreadable(error))
                    .and_then(|(last_revision, value)| {
                        let events =
                            codec::decode_run(last_revision, &value).map_err(|source| continuity.corrupt(source))?;
                        continuity.follow(events.len() as u64, last_revision)?;
                        Ok(events)
                    });
                failed = events.is_err();
                Some(events)
            })
            .flat_map(move |events| {
                let (events, error) = match events {
                    Ok(events) => (events, None),
                    Err(error) => (Vec::new(), Some(error)),
                };
                events
                    .into_iter()
                    .filter(move |event| event.revision > after)
                    .map(Ok)
                    .chain(error.map(Err))
            })
    }

    /// The raw records from the one holding revision `after + 1` on, in key order, with their
    /// keys (each record's last revision).
    fn records_after(&self, after: u64) -> impl Iterator<Item = Result<(u64, sled::IVec), LogError>> + use<> {
        let start = after.saturating_add(1).to_be_bytes();
        let (open, closed) = match self.events() {
            Ok(events) => (Some(events), None),
            Err(closed) => (None, Some(Err(closed))),
        };
        let stored = open.into_iter().flat_map(move |events| {
            let cache = events.clone();
            events.range(start..).map(move |entry| {
                let (key, value) = entry?;
                count_in_page_cache(&cache, &key);
                Ok((revision_of(&key)?, value))
            })
        });
        closed.into_iter().chain(stored)
    }

    /// Checks the records holding revisions `after + 1` to `last` (continuity, format,
    /// checksum) without decoding them: what a start from a snapshot does instead of a replay,
    /// so that damage the snapshot covers is still found. Ranges can be checked in parallel.
    pub fn check_records(&self, after: u64, last: u64) -> Result<(), LogError> {
        let mut continuity = Continuity::after(after);
        for record in self.records_after(after) {
            if continuity.expected > last {
                break;
            }
            let (last_revision, value) = record.map_err(|error| continuity.unreadable(error))?;
            let count = codec::run_len(&value).map_err(|source| continuity.corrupt(source))?;
            continuity.follow(count, last_revision)?;
        }
        if continuity.expected <= last {
            return Err(LogError::Gap {
                expected: continuity.expected,
                found: last + 1,
            });
        }
        Ok(())
    }

    /// Makes the records written without an fsync durable, if there are any: what a
    /// checkpoint calls before it refers to them (a single node's appends are durable already).
    pub(crate) fn flush_unflushed(&self) -> Result<(), LogError> {
        if !self.unflushed.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        self.flush()
            .inspect_err(|_| self.unflushed.store(true, Ordering::Release))
    }

    /// Makes everything written so far durable (used at shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.with(|handles| {
            handles.make_durable()?;
            Ok(())
        })
    }
}

/// Reads `key` again, from memory, so that sled counts its page against the page cache.
///
/// sled 0.34 counts a page against its cache (and evicts others past the capacity) only when
/// it finds the page already in memory; a page it has just read from disk stays resident,
/// uncounted, until it is read again. A scan reads each page once, so a whole-log scan (the
/// start's check, a full replay, a watcher catching up from far back) kept every page it read:
/// ~230 MB after a start at 1.1M events with a 64 MiB cache (docs/benchmarks.md, Restart). A
/// second read of the record just scanned is a cache hit on its page, which sled counts.
fn count_in_page_cache(events: &sled::Tree, key: &[u8]) {
    // Only the side effect matters; a failure here would show in the scan itself.
    let _ = events.get(key);
}

/// Follows records in key order and finds gaps; knows which revision an error is about.
struct Continuity {
    /// The next revision the log must hold.
    expected: u64,
    /// Whether a record was followed: the first may start before `expected` (it holds it).
    started: bool,
}

impl Continuity {
    fn after(after: u64) -> Continuity {
        Continuity {
            expected: after.saturating_add(1),
            started: false,
        }
    }

    /// Takes in the record of `count` events ending at `last_revision`.
    fn follow(&mut self, count: u64, last_revision: u64) -> Result<(), LogError> {
        // last - count + 1, without overflowing at u64::MAX (a damaged key can say anything).
        let first_revision = last_revision.saturating_sub(count.saturating_sub(1));
        let fits = if self.started {
            first_revision == self.expected
        } else {
            first_revision <= self.expected
        };
        if count == 0 || !fits || last_revision < self.expected {
            return Err(LogError::Gap {
                expected: self.expected,
                found: first_revision,
            });
        }
        self.started = true;
        self.expected = last_revision.saturating_add(1);
        Ok(())
    }

    /// A record that failed its checks holds the next expected revision.
    fn corrupt(&self, source: codec::DecodeError) -> LogError {
        LogError::Corrupt {
            revision: self.expected,
            source,
        }
    }

    /// sled checksums its pages: one it cannot read (or that lies past the end of a file cut
    /// short) holds the next expected revision.
    fn unreadable(&self, error: LogError) -> LogError {
        match error {
            LogError::Storage(source) if is_damage(&source) => LogError::Unreadable {
                revision: self.expected,
                source,
            },
            other => other,
        }
    }
}

fn revision_of(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| LogError::BadKey(key.to_vec()))?;
    Ok(u64::from_be_bytes(bytes))
}

/// Stores `records` (key, value) in `events`, all or none. One record, the usual group, is
/// one insert: atomic by itself. Several go through a sled batch, whose atomicity costs two
/// extra writes of sled's I/O buffer (sled 0.34 rolls the buffer before and after a batch's
/// reservation): with writes not flushed one by one (a replica's), those writes were most
/// of what sled's I/O threads did.
fn store_records(events: &sled::Tree, mut records: Vec<(u64, Vec<u8>)>) -> Result<(), sled::Error> {
    if records.len() == 1 {
        let (last_revision, record) = records.pop().expect("one record");
        events.insert(last_revision.to_be_bytes(), record)?;
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for (last_revision, record) in records {
        batch.insert(&last_revision.to_be_bytes(), record);
    }
    events.apply_batch(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::fixtures::prefix_event;

    fn events(revisions: std::ops::RangeInclusive<u64>) -> Vec<Event> {
        revisions
            .map(|revision| prefix_event(revision, &format!("10.{}.{}.0/24", revision / 256, revision % 256)))
            .collect()
    }

    /// Revisions 1-3 as format-1 records (one event each, as earlier versions wrote them), then
    /// groups of 1, 60 and 236 events as runs.
    fn mixed_log(dir: &Path) -> (EventLog, Vec<Event>) {
        let log = EventLog::open(dir).unwrap();
        let all = events(1..=300);
        let tree = log.events().unwrap();
        for event in &all[..3] {
            tree.insert(event.revision.to_be_bytes(), codec::encode(event)).unwrap();
        }
        for group in [&all[3..4], &all[4..64], &all[64..]] {
            log.append(group).unwrap();
        }
        (log, all)
    }

    #[test]
    fn runs_read_from_any_revision_and_check_in_parts() {
        let dir = tempfile::tempdir().unwrap();
        let (log, all) = mixed_log(dir.path());
        let n_records = log.events().unwrap().len();
        assert!(
            (7..=30).contains(&n_records),
            "groups are cut into runs: {n_records} records"
        );
        assert_eq!(log.head().unwrap(), 300);
        for after in [0, 2, 3, 4, 5, 63, 64, 100, 299, 300] {
            let read: Vec<Event> = log.read_after(after).collect::<Result<_, _>>().unwrap();
            assert_eq!(read, all[after as usize..], "after {after}");
        }
        for (after, last) in [(0, 300), (0, 150), (150, 300), (3, 4), (299, 300)] {
            log.check_records(after, last).unwrap();
        }
    }

    #[test]
    fn random_groups_read_back_from_random_revisions() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let mut rng = fastrand::Rng::with_seed(5);
        let all = events(1..=3000);
        let mut written = 0;
        while written < all.len() {
            let size = rng.usize(1..=400).min(all.len() - written);
            log.append(&all[written..written + size]).unwrap();
            written += size;
        }
        assert_eq!(log.head().unwrap(), 3000);
        for _ in 0..40 {
            let after = rng.u64(0..=3000);
            let read: Vec<u64> = log.read_after(after).map(|event| event.unwrap().revision).collect();
            assert_eq!(read, (after + 1..=3000).collect::<Vec<_>>(), "after {after}");
            let (a, b) = (rng.u64(0..3000), rng.u64(0..3000));
            log.check_records(a.min(b), a.max(b) + 1).unwrap();
        }
    }

    #[test]
    fn a_damaged_or_missing_run_names_its_first_revision() {
        let dir = tempfile::tempdir().unwrap();
        let (log, _) = mixed_log(dir.path());
        let tree = log.events().unwrap();
        // The run after the one ending at 64 starts at 65.
        let (key, value) = tree.range(65u64.to_be_bytes()..).next().unwrap().unwrap();
        let mut damaged = value.to_vec();
        *damaged.last_mut().unwrap() ^= 0x01;
        tree.insert(&key, damaged).unwrap();
        let first_error = log.read_after(0).find_map(Result::err).unwrap();
        assert!(
            matches!(first_error, LogError::Corrupt { revision: 65, .. }),
            "{first_error}"
        );
        assert_eq!(
            log.read_after(0).filter(Result::is_err).count(),
            1,
            "reading stops at the damage"
        );
        assert!(matches!(
            log.check_records(0, 300),
            Err(LogError::Corrupt { revision: 65, .. })
        ));
        log.check_records(0, 64).unwrap();

        tree.insert(&key, value).unwrap();
        tree.remove(&key).unwrap();
        assert!(matches!(
            log.check_records(0, 300),
            Err(LogError::Gap { expected: 65, .. })
        ));
        assert!(matches!(
            log.read_after(0).find_map(Result::err),
            Some(LogError::Gap { expected: 65, .. })
        ));
    }
}
