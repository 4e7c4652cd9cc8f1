//! The event log: the only source of truth. One sled tree, key = revision (big-endian u64, so
//! keys sort in revision order), value = an encoded event ([`codec`]). Revisions start at 1 and
//! have no gaps; records are never rewritten or deleted. [`EventLog::append`] writes a whole
//! group atomically and returns only once sled has fsynced it.

pub mod codec;
pub mod tools;

use std::path::Path;

use crate::domain::Event;

const EVENTS_TREE: &str = "events";
/// Holds one key, [`SNAPSHOT_KEY`]: the latest checkpoint of the state (see `codec`).
const SNAPSHOTS_TREE: &str = "snapshots";
const SNAPSHOT_KEY: &[u8] = b"latest";

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
    #[error("the log has a gap: expected revision {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("the log has a key that is not a revision: {0:?}")]
    BadKey(Vec<u8>),
    #[error(
        "the log ends at revision {head}, but a snapshot of revision {snapshot} was taken from it: events were lost (truncated log?)"
    )]
    Truncated { snapshot: u64, head: u64 },
}

/// The durable, append-only log of every accepted change.
#[derive(Clone)]
pub struct EventLog {
    db: sled::Db,
    events: sled::Tree,
    snapshots: sled::Tree,
}

impl EventLog {
    /// Opens (or creates) the log in `dir`. sled locks the directory, so a second server on the
    /// same directory fails here instead of corrupting it.
    pub fn open(dir: &Path) -> Result<EventLog, LogError> {
        // Every append flushes explicitly, so sled's periodic background flusher is not needed (and it
        // would delay exit by up to its period).
        let db = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()?;
        let events = db.open_tree(EVENTS_TREE)?;
        let snapshots = db.open_tree(SNAPSHOTS_TREE)?;
        Ok(EventLog { db, events, snapshots })
    }

    /// The revision of the last stored event; 0 for an empty log.
    pub fn head(&self) -> Result<u64, LogError> {
        match self.events.last()? {
            None => Ok(0),
            Some((key, _)) => revision_of(&key),
        }
    }

    /// Stores `events` (consecutive revisions) atomically and durably: when this returns `Ok`,
    /// they survive a crash. On `Err` none of them is acknowledged.
    pub fn append(&self, events: &[Event]) -> Result<(), LogError> {
        let mut batch = sled::Batch::default();
        for event in events {
            batch.insert(&event.revision.to_be_bytes(), codec::encode(event));
        }
        self.events.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Removes records written by a failed [`append`](Self::append) that were never
    /// acknowledged, so that their revisions can be reused. Best effort: the caller also
    /// re-reads the head.
    pub fn discard_unacknowledged(&self, events: &[Event]) -> Result<(), LogError> {
        for event in events {
            self.events.remove(event.revision.to_be_bytes())?;
        }
        Ok(())
    }

    /// Removes every record and makes that durable. Only for [`tools::import`] undoing a
    /// failed import into what was an empty directory: the log is otherwise never rewritten.
    pub(crate) fn clear(&self) -> Result<(), LogError> {
        self.events.clear()?;
        self.db.flush()?;
        Ok(())
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
        self.events.range(expected.to_be_bytes()..).map(move |entry| {
            let (key, value) = entry?;
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

    /// Replaces the stored snapshot and makes it durable. The log itself is untouched.
    pub fn save_snapshot(&self, record: Vec<u8>) -> Result<(), LogError> {
        self.snapshots.insert(SNAPSHOT_KEY, record)?;
        self.db.flush()?;
        Ok(())
    }

    /// The stored snapshot record, if any.
    pub fn load_snapshot(&self) -> Result<Option<sled::IVec>, LogError> {
        Ok(self.snapshots.get(SNAPSHOT_KEY)?)
    }

    /// Checks the records up to `last` (revisions, format, checksum) without decoding them:
    /// what a start from a snapshot does instead of a replay, so that damage the snapshot
    /// covers is still found.
    pub fn check_records(&self, last: u64) -> Result<(), LogError> {
        let mut checked_up_to = 0;
        for record in self
            .records_after(0)
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
        self.db.flush()?;
        Ok(())
    }
}

fn revision_of(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| LogError::BadKey(key.to_vec()))?;
    Ok(u64::from_be_bytes(bytes))
}
