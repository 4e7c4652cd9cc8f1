//! The event log: the only source of truth. One sled tree, key = revision (big-endian u64, so
//! keys sort in revision order), value = an encoded event ([`codec`]). Revisions start at 1 and
//! have no gaps; records are never rewritten or deleted. [`EventLog::append`] writes a whole
//! group atomically and returns only once sled has fsynced it.
//!
//! Storage faults: sled 0.34 remembers an I/O error (disk full, EIO) and fails every later
//! operation of that database, even once the disk has recovered. So a failed append closes the
//! database and [`EventLog::recover`] opens it afresh (sled's recovery keeps whole batches or
//! nothing) and removes the records nobody was told about; writes then resume without a
//! restart. While closed, reads of the log (watchers catching up) fail with
//! [`LogError::Closed`]; the projections keep serving every other read.

pub mod codec;
mod snapshot_file;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use crate::domain::Event;

use snapshot_file::SnapshotFile;

const EVENTS_TREE: &str = "events";
/// Where data directories written before the snapshot moved to [`SnapshotFile`] kept it.
const LEGACY_SNAPSHOTS_TREE: &str = "snapshots";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),
    #[error("the log is damaged at revision {revision}: {source}")]
    Corrupt {
        revision: u64,
        #[source]
        source: codec::DecodeError,
    },
    #[error("the log is damaged at revision {revision}: the storage cannot read the page that holds it ({source})")]
    Unreadable {
        revision: u64,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the data directory is damaged (truncated or overwritten files?): the storage panicked while recovering it: {0}"
    )]
    Unrecoverable(String),
    #[error("the log has a gap: expected revision {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("the log has a key that is not a revision: {0:?}")]
    BadKey(Vec<u8>),
    #[error(
        "the log ends at revision {head}, but a snapshot of revision {snapshot} was taken from it: events were lost (truncated log?)"
    )]
    Truncated { snapshot: u64, head: u64 },
    #[error("the storage failed and is being reopened")]
    Closed,
    #[error("snapshot file: {0}")]
    SnapshotFile(#[source] std::io::Error),
}

/// sled's page cache. The log is read whole only at start-up and in part by lagging watchers;
/// sled's default (1 GiB) kept ~215 MB more resident after a start at 1.1M events, for no
/// gain in creates/s (A/B) and a start-up time within noise.
const PAGE_CACHE_BYTES: u64 = 64 << 20;

/// How long [`EventLog::recover`] waits for a closed database to release its directory lock
/// (sled frees a dropped database's resources lazily).
const REOPEN_PATIENCE: Duration = Duration::from_secs(2);

/// A switch that makes appends fail as a full disk would: for tests of the storage-fault path
/// through the real server (a full disk needs a small filesystem and root). Never set by the
/// server itself; `ServerOptions::storage_faults` hands it in.
#[derive(Clone, Debug, Default)]
pub struct StorageFaults(Arc<AtomicBool>);

impl StorageFaults {
    pub fn set_disk_full(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    fn check(&self) -> Result<(), LogError> {
        if self.0.load(Ordering::SeqCst) {
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected)");
            return Err(LogError::Storage(sled::Error::Io(full)));
        }
        Ok(())
    }
}

/// One open sled database and its tree.
struct Handles {
    db: sled::Db,
    events: sled::Tree,
}

impl Handles {
    fn open(dir: &Path) -> Result<Handles, LogError> {
        // Every append flushes explicitly, so sled's periodic background flusher is not needed (and it
        // would delay exit by up to its period).
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(PAGE_CACHE_BYTES);
        // sled 0.34 panics (index out of bounds) on some damage, a truncated file among them,
        // instead of returning an error: turn that into one (nothing it touched is used after).
        let db = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())).map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                .unwrap_or_default();
            LogError::Unrecoverable(message)
        })??;
        let events = db.open_tree(EVENTS_TREE)?;
        Ok(Handles { db, events })
    }
}

/// The durable, append-only log of every accepted change.
#[derive(Clone)]
pub struct EventLog {
    dir: PathBuf,
    /// `None` from a storage failure until [`recover`](Self::recover) reopens it.
    handles: Arc<RwLock<Option<Handles>>>,
    snapshot: Arc<SnapshotFile>,
    faults: StorageFaults,
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
            snapshot: Arc::new(SnapshotFile::new(dir)),
            faults,
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
                    Err(LogError::Storage(sled::Error::Io(locked)))
                        if locked.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline =>
                    {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    Err(error) => return Err(error),
                }
            };
            *self.handles.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(reopened);
        }
        let cleaned = self.faults.check().and_then(|()| {
            self.with(|handles| {
                let unacknowledged: Vec<sled::IVec> = handles
                    .events
                    .range((acknowledged + 1).to_be_bytes()..)
                    .keys()
                    .collect::<Result<_, _>>()?;
                for key in unacknowledged {
                    handles.events.remove(key)?;
                }
                handles.db.flush()?;
                Ok(())
            })
        });
        if let Err(LogError::Storage(_)) = cleaned {
            self.close();
        }
        cleaned
    }

    /// The revision of the last stored event; 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        match self.events()?.last()? {
            None => Ok(0),
            Some((key, _)) => revision_of(&key),
        }
    }

    /// Stores `events` (consecutive revisions) atomically and durably: when this returns `Ok`,
    /// they survive a crash. On `Err` none of them is acknowledged, the database is closed and
    /// the caller must [`recover`](Self::recover) before appending again.
    pub fn append(&self, events: &[Event]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for event in events {
            batch.insert(&event.revision.to_be_bytes(), codec::encode(event));
        }
        let appended = self.faults.check().and_then(|()| {
            self.with(|handles| {
                handles.events.apply_batch(batch)?;
                handles.db.flush()?;
                Ok(())
            })
        });
        if let Err(LogError::Storage(_)) = appended {
            self.close();
        }
        appended
    }

    /// Removes every record and makes that durable. Only for [`tools::import`] undoing a
    /// failed import into what was an empty directory: the log is otherwise never rewritten.
    pub(crate) fn clear(&self) -> Result<(), LogError> {
        self.with(|handles| {
            handles.events.clear()?;
            handles.db.flush()?;
            Ok(())
        })
    }

    /// Every event with a revision greater than `after`, in order, checked for damage and gaps.
    pub fn read_after(&self, after: u64) -> impl Iterator<Item = Result<Event, LogError>> + use<> {
        self.records_after(after).map(|record| {
            let (revision, value) = record?;
            codec::decode(revision, &value).map_err(|source| LogError::Corrupt { revision, source })
        })
    }

    /// The raw records after `after`, in order; a missing revision is a [`LogError::Gap`].
    fn records_after(&self, after: u64) -> impl Iterator<Item = Result<(u64, sled::IVec), LogError>> + use<> {
        let mut expected = after.saturating_add(1);
        let start = expected.to_be_bytes();
        let (open, closed) = match self.events() {
            Ok(events) => (Some(events), None),
            Err(closed) => (None, Some(Err(closed))),
        };
        let stored = open
            .into_iter()
            .flat_map(move |events| events.range(start..))
            .map(|entry| Ok(entry?));
        closed
            .into_iter()
            .chain(stored)
            .map(move |entry: Result<(sled::IVec, sled::IVec), LogError>| {
                let (key, value) = entry.map_err(|error| match error {
                    // sled checksums its pages: the one it failed to read holds `expected`.
                    LogError::Storage(source @ sled::Error::Corruption { .. }) => LogError::Unreadable {
                        revision: expected,
                        source,
                    },
                    other => other,
                })?;
                let revision = revision_of(&key)?;
                if revision != expected {
                    return Err(LogError::Gap {
                        expected,
                        found: revision,
                    });
                }
                expected += 1;
                Ok((revision, value))
            })
    }

    /// Durably replaces the stored snapshot with `record`, the snapshot of `revision` (unless
    /// a newer one was saved meanwhile). The log itself is untouched.
    pub fn save_snapshot(&self, revision: u64, record: &[u8]) -> Result<(), LogError> {
        self.snapshot.save(revision, record).map_err(LogError::SnapshotFile)
    }

    /// The stored snapshot record, if any.
    pub fn load_snapshot(&self) -> Result<Option<Vec<u8>>, LogError> {
        self.snapshot.load().map_err(LogError::SnapshotFile)
    }

    /// Drops the snapshot that data directories written by earlier versions kept inside sled
    /// (see [`SnapshotFile`] for why it moved), so that sled can reclaim its blob files.
    pub fn drop_legacy_snapshot(&self) -> Result<(), LogError> {
        self.with(|handles| {
            if handles.db.drop_tree(LEGACY_SNAPSHOTS_TREE)? {
                handles.db.flush()?;
            }
            Ok(())
        })
    }

    /// Checks the records after `after` up to `last` (revisions, format, checksum) without
    /// decoding them: what a start from a snapshot does instead of a replay, so that damage the
    /// snapshot covers is still found. Ranges can be checked in parallel.
    pub fn check_records(&self, after: u64, last: u64) -> Result<(), LogError> {
        let mut checked_up_to = after;
        for record in self
            .records_after(after)
            .take_while(|record| record.as_ref().map_or(true, |(r, _)| *r <= last))
        {
            let (revision, value) = record?;
            codec::check(&value).map_err(|source| LogError::Corrupt { revision, source })?;
            checked_up_to = revision;
        }
        if checked_up_to != last {
            return Err(LogError::Gap {
                expected: checked_up_to + 1,
                found: last + 1,
            });
        }
        Ok(())
    }

    /// Makes everything written so far durable (used at shutdown).
    pub fn flush(&self) -> Result<(), LogError> {
        self.with(|handles| {
            handles.db.flush()?;
            Ok(())
        })
    }
}

fn revision_of(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| LogError::BadKey(key.to_vec()))?;
    Ok(u64::from_be_bytes(bytes))
}
