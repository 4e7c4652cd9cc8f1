//! What can go wrong with the log, and what the files beside it (the snapshot, the length
//! mark) say about it.

use super::codec;
use super::{DELTAS_FILE, MARK_FILE};

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
    /// Damage that cannot be pinned to a revision: sled panicking in its recovery, or the log's
    /// last record unreadable.
    #[error("the data directory is damaged (truncated or overwritten files?): {0}")]
    Damaged(String),
    #[error("the log has a gap: expected revision {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("the log has a key that is not a revision: {0:?}")]
    BadKey(Vec<u8>),
    #[error("the log ends at revision {head}, but {witness}: events were lost (truncated log?)")]
    Truncated { head: u64, witness: Witness },
    /// sled's lock on the directory is held: another process (or a database this one has
    /// not finished closing) has it open.
    #[error("{0} is in use by another ipam-bindings process")]
    InUse(String),
    #[error("the storage failed and is being reopened")]
    Closed,
    #[error("the snapshot cannot be decoded: {0}")]
    UnreadableSnapshot(#[source] codec::DecodeError),
    #[error("{0}: {1}")]
    CheckpointFile(&'static str, #[source] std::io::Error),
}

/// A file beside the log that records a point the log reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Witness {
    /// `state.snapshot`, taken at this revision.
    Snapshot(u64),
    /// A delta in `state.deltas`, of the changes up to this revision.
    Delta(u64),
    /// `log.mark`, saying the log reached this revision.
    Mark(u64),
}

impl std::fmt::Display for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Witness::Snapshot(revision) => write!(f, "a snapshot of revision {revision} was taken from it"),
            Witness::Delta(revision) => write!(
                f,
                "a snapshot delta up to revision {revision} was taken from it ({DELTAS_FILE})"
            ),
            Witness::Mark(revision) => write!(f, "it had reached revision {revision} ({MARK_FILE})"),
        }
    }
}

/// What a checkpoint file (the snapshot or the mark) says about this log.
#[derive(Debug, PartialEq, Eq)]
pub enum CheckpointStatus {
    Missing,
    /// It fits the log at this revision.
    At(u64),
    /// Its record checksum at this revision differs from the log's: not used.
    OfAnotherLog(u64),
    /// It cannot be decoded: not used.
    Unreadable(String),
}
