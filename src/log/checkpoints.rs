//! The checkpoint files beside the log: the snapshot of the state (`state.snapshot`), the
//! changes since it (`state.deltas`) and the length mark (`log.mark`). Each records a point
//! the log reached and the checksum of the record ending there, which ties it to this log;
//! none ever replaces the log.

use super::delta_file;
use super::{
    CheckpointStatus, DELTAS_FILE, Delta, EventLog, LEGACY_SNAPSHOTS_TREE, LogError, LogPosition, MARK_FILE,
    SNAPSHOT_FILE, Snapshot, Witness, codec,
};
use crate::domain::state::{Changes, SnapshotRecords};

/// The deltas a start applies after a snapshot ([`EventLog::load_deltas`]).
#[derive(Default)]
pub struct Deltas {
    /// In order, each following the one before it (the first, the snapshot).
    pub deltas: Vec<Delta>,
    /// The size of their records.
    pub bytes: usize,
    /// Where the last of them ends in the file: the next one is written there.
    pub end: u64,
    /// The whole records after them that are not used: the first does not decode, does not
    /// follow the one before, or was taken from another log.
    pub unused: usize,
}

impl EventLog {
    /// Durably stores `records` (a state's) as the snapshot of `revision`, whose log record has
    /// `log_record_checksum` (unless a newer snapshot was saved meanwhile). Returns its size.
    pub fn save_snapshot(
        &self,
        revision: u64,
        log_record_checksum: u32,
        records: &impl SnapshotRecords,
    ) -> Result<usize, LogError> {
        // A replica's appends are not fsynced one by one: the records up to the snapshot are.
        self.flush_unflushed()?;
        let record = codec::encode_snapshot(revision, Some(log_record_checksum), records);
        let saved = (self.snapshot)
            .save(revision, &record)
            .map_err(|error| LogError::CheckpointFile(SNAPSHOT_FILE, error))?;
        if saved {
            // Its deltas followed the snapshot this one replaced: no start would apply them.
            (self.deltas.clear()).map_err(|error| LogError::CheckpointFile(DELTAS_FILE, error))?;
        }
        Ok(record.len())
    }

    /// Durably stores `changes`, those made after the checkpoint at `after` (the snapshot or
    /// its last delta) up to `revision`, whose log record has `log_record_checksum`, as the
    /// delta that follows it: written at `offset`, where that checkpoint's delta ends (0 after
    /// the snapshot). Returns its size and where the file now ends.
    pub fn save_delta(
        &self,
        after: LogPosition,
        revision: u64,
        log_record_checksum: u32,
        changes: &Changes,
        offset: u64,
    ) -> Result<(usize, u64), LogError> {
        self.flush_unflushed()?;
        let record = codec::encode_delta(after, revision, log_record_checksum, changes);
        let end = (self.deltas)
            .append_at(offset, &record)
            .map_err(|error| LogError::CheckpointFile(DELTAS_FILE, error))?;
        Ok((record.len(), end))
    }

    /// The stored deltas that follow the snapshot at `snapshot`, in order, as far as each
    /// decodes, follows the one before and was taken from this log, whose head is `head`
    /// ([`LogError::Truncated`] when one is beyond it).
    pub fn load_deltas(&self, snapshot: LogPosition, head: u64) -> Result<Deltas, LogError> {
        let bytes = (self.deltas.load()).map_err(|error| LogError::CheckpointFile(DELTAS_FILE, error))?;
        let mut loaded = Deltas::default();
        let mut tip = snapshot;
        let mut records = delta_file::records(&bytes);
        while let Some((record, end)) = records.next() {
            let follows = match codec::decode_delta(record) {
                Ok(delta) if delta.after == tip && self.fits(delta.position, head, Witness::Delta)? => Some(delta),
                _ => None,
            };
            let Some(delta) = follows else {
                loaded.unused = 1 + records.count();
                break;
            };
            tip = delta.position;
            loaded.bytes += record.len();
            loaded.end = end;
            loaded.deltas.push(delta);
        }
        Ok(loaded)
    }

    /// The stored snapshot, decoded, if there is one. It is not checked against the log:
    /// [`fits`](Self::fits) does that.
    pub fn load_snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        let record = self
            .snapshot
            .load()
            .map_err(|error| LogError::CheckpointFile(SNAPSHOT_FILE, error))?;
        record
            .map(|record| codec::decode_snapshot(&record).map_err(LogError::UnreadableSnapshot))
            .transpose()
    }

    /// What the snapshot says about this log, whose head is `head` ([`LogError::Truncated`]
    /// when it is beyond the head), and the deltas a start would apply after it.
    pub fn check_snapshot(&self, head: u64) -> Result<(CheckpointStatus, Deltas), LogError> {
        match self.load_snapshot() {
            Ok(None) => Ok((CheckpointStatus::Missing, Deltas::default())),
            Ok(Some(snapshot)) if self.fits(snapshot.position(), head, Witness::Snapshot)? => {
                let deltas = self.load_deltas(snapshot.position(), head)?;
                Ok((CheckpointStatus::At(snapshot.revision), deltas))
            }
            Ok(Some(snapshot)) => Ok((CheckpointStatus::OfAnotherLog(snapshot.revision), Deltas::default())),
            Err(error) => Ok((CheckpointStatus::Unreadable(error.to_string()), Deltas::default())),
        }
    }

    /// Whether a snapshot is stored (without reading it).
    pub fn has_snapshot(&self) -> Result<bool, LogError> {
        (self.snapshot.exists()).map_err(|error| LogError::CheckpointFile(SNAPSHOT_FILE, error))
    }

    /// Whether a snapshot or a mark is stored (without reading them).
    pub fn has_checkpoint(&self) -> Result<bool, LogError> {
        for (file, name) in [(&self.snapshot, SNAPSHOT_FILE), (&self.mark, MARK_FILE)] {
            if file.exists().map_err(|error| LogError::CheckpointFile(name, error))? {
                return Ok(true);
            }
        }
        (self.deltas.exists()).map_err(|error| LogError::CheckpointFile(DELTAS_FILE, error))
    }

    /// Durably records that the log reached `revision`, where a record with `checksum` ends
    /// (a group's last event, whose checksum [`append`](Self::append) returned): a later
    /// start refuses a log that ends before it. Writes only the mark file.
    pub fn save_mark(&self, revision: u64, checksum: u32) -> Result<(), LogError> {
        // A replica's appends are not fsynced one by one: the records up to the mark are.
        self.flush_unflushed()?;
        self.mark
            .save(revision, &codec::encode_mark(revision, checksum))
            .map(drop)
            .map_err(|error| LogError::CheckpointFile(MARK_FILE, error))
    }

    /// What the mark says about this log, whose head is `head`: [`LogError::Truncated`] when
    /// the log ends before it.
    pub fn check_mark(&self, head: u64) -> Result<CheckpointStatus, LogError> {
        let record = match self.mark.load() {
            Ok(None) => return Ok(CheckpointStatus::Missing),
            Ok(Some(record)) => record,
            Err(error) => return Ok(CheckpointStatus::Unreadable(error.to_string())),
        };
        match codec::decode_mark(&record) {
            Ok(mark) if self.fits(mark, head, Witness::Mark)? => Ok(CheckpointStatus::At(mark.revision)),
            Ok(mark) => Ok(CheckpointStatus::OfAnotherLog(mark.revision)),
            Err(error) => Ok(CheckpointStatus::Unreadable(error.to_string())),
        }
    }

    /// The checksum of the record that ends at `revision`, if one does: what a snapshot or a
    /// mark of `revision` stores to tie itself to this log.
    pub fn record_checksum(&self, revision: u64) -> Result<Option<u32>, LogError> {
        let record = self.with(|handles| Ok(handles.events.get(revision.to_be_bytes())?))?;
        Ok(record.as_deref().and_then(codec::checksum))
    }

    /// Whether a checkpoint (`witness`) at `position` can stand for this log, whose head is
    /// `head`: not when it was taken from another log (`Ok(false)`: its record checksum
    /// differs; older snapshots stored none and are taken on trust), and never when it is
    /// beyond the head ([`LogError::Truncated`]: the log lost events it once had).
    pub fn fits(&self, position: LogPosition, head: u64, witness: fn(u64) -> Witness) -> Result<bool, LogError> {
        if position.revision > head {
            return Err(LogError::Truncated {
                head,
                witness: witness(position.revision),
            });
        }
        match position.log_record_checksum {
            None => Ok(true),
            Some(checksum) => Ok(self.record_checksum(position.revision)? == Some(checksum)),
        }
    }

    /// Drops the snapshot that data directories written by earlier versions kept inside sled
    /// (see [`atomic_file`] for why it moved), so that sled can reclaim its blob files.
    pub fn drop_legacy_snapshot(&self) -> Result<(), LogError> {
        self.with(|handles| {
            if handles.db.drop_tree(LEGACY_SNAPSHOTS_TREE)? {
                handles.make_durable()?;
            }
            Ok(())
        })
    }
}
