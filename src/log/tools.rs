//! Operator tools over a data directory, run with the server stopped (sled locks the
//! directory, so they refuse to run beside a live server):
//! - [`verify`] reads every record, checking checksums, formats and revision continuity;
//! - [`export`] writes the log as JSON lines, one event per line with its revision, the
//!   stored record (hex, checksum included) and a readable rendering of the change;
//! - [`import`] rebuilds an empty data directory from such a file: same events, same
//!   revisions, so the state is identical.

use std::io::{BufRead, Write};

use serde_json::{Value, json};

use super::{CheckpointStatus, EventLog, LogError, codec};
use crate::domain::{Binding, Change, Prefix, ProvisioningState};
use crate::hex;

/// Events appended per fsync during an import.
const IMPORT_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("line {line}: {message}")]
    BadLine { line: usize, message: String },
    #[error("the data directory already holds {0} events; import needs an empty one")]
    NotEmpty(u64),
    #[error("the data directory holds a snapshot, deltas or a length mark (of another log); import needs an empty one")]
    HoldsCheckpoint,
}

/// What [`verify`] found in a sound log.
#[derive(Debug, PartialEq, Eq)]
pub struct Verified {
    pub n_events: u64,
    pub head: u64,
    pub snapshot: CheckpointStatus,
    /// The deltas a start would apply after the snapshot: how many, and the revision they reach.
    pub deltas: Option<(usize, u64)>,
    /// The deltas stored after those that a start would not use.
    pub unused_deltas: usize,
    pub mark: CheckpointStatus,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ok: {} events, head revision {}; ", self.n_events, self.head)?;
        match &self.snapshot {
            CheckpointStatus::Missing => write!(f, "no snapshot: the next start replays the whole log"),
            CheckpointStatus::At(revision) => write!(f, "snapshot at revision {revision}"),
            CheckpointStatus::OfAnotherLog(revision) => write!(
                f,
                "the snapshot was taken from another log (its record at revision {revision} differs): \
                 the next start replays the whole log"
            ),
            CheckpointStatus::Unreadable(why) => {
                write!(
                    f,
                    "the snapshot is unreadable ({why}): the next start replays the whole log"
                )
            }
        }?;
        if let Some((n_deltas, revision)) = self.deltas {
            let deltas = if n_deltas == 1 { "delta" } else { "deltas" };
            write!(f, ", then {n_deltas} {deltas} to revision {revision}")?;
        }
        if self.unused_deltas > 0 {
            let deltas = if self.unused_deltas == 1 { "delta" } else { "deltas" };
            write!(
                f,
                " ({} stored {deltas} not used: not following the checkpoint before, unreadable or another log's)",
                self.unused_deltas
            )?;
        }
        match &self.mark {
            CheckpointStatus::Missing => write!(f, "; no length mark"),
            CheckpointStatus::At(revision) => write!(f, "; length mark at revision {revision}"),
            CheckpointStatus::OfAnotherLog(revision) => write!(
                f,
                "; the length mark is another log's (its record at revision {revision} differs): not used"
            ),
            CheckpointStatus::Unreadable(why) => write!(f, "; the length mark is unreadable ({why}): not used"),
        }
    }
}

/// Reads the whole log; the first damaged record fails with its revision. A snapshot, a delta
/// after it or a length mark beyond the log's head fails too, as it stops a start: the log lost
/// events it once had.
pub fn verify(log: &EventLog) -> Result<Verified, LogError> {
    let mut n_events = 0;
    for event in log.read_after(0) {
        event?;
        n_events += 1;
    }
    let head = log.head()?;
    let mark = log.check_mark(head)?;
    let (snapshot, loaded) = log.check_snapshot(head)?;
    let deltas = (loaded.deltas.last()).map(|last| (loaded.deltas.len(), last.position.revision));
    Ok(Verified {
        n_events,
        head,
        snapshot,
        deltas,
        unused_deltas: loaded.unused,
        mark,
    })
}

/// Writes every event as one JSON line; returns how many.
pub fn export(log: &EventLog, out: &mut impl Write) -> Result<u64, ToolError> {
    let mut n_events = 0;
    for event in log.read_after(0) {
        let event = event?;
        let actor = event.actor.as_deref().map(|actor| {
            json!({
                "principal": actor.principal,
                "credential": actor.credential,
                "via": actor.via,
                "call_id": actor.call_id,
                "request_id": actor.request_id,
                "peer": actor.peer,
            })
        });
        let line = json!({
            "revision": event.revision,
            "time_micros": event.time.0,
            "change": describe(&event.change),
            "actor": actor,
            "record": hex::encode(&codec::encode(&event)),
        });
        writeln!(out, "{line}")?;
        n_events += 1;
    }
    out.flush()?;
    Ok(n_events)
}

/// Appends the events of an export to an empty log, checking each record's checksum and that
/// revisions run 1, 2, 3, ... Returns how many. On any error the log is emptied again, so a
/// failed import leaves nothing half-done.
pub fn import(log: &EventLog, input: impl BufRead) -> Result<u64, ToolError> {
    let head = log.head()?;
    if head > 0 {
        return Err(ToolError::NotEmpty(head));
    }
    // A start would take another log's snapshot for the imported log's state, or its mark
    // for a length the imported log must reach.
    if log.has_checkpoint()? {
        return Err(ToolError::HoldsCheckpoint);
    }
    let imported = import_into_empty(log, input);
    if imported.is_err() {
        log.clear()?;
    }
    imported
}

fn import_into_empty(log: &EventLog, input: impl BufRead) -> Result<u64, ToolError> {
    let mut batch = Vec::with_capacity(IMPORT_BATCH);
    let mut expected = 1;
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let bad = |message: String| ToolError::BadLine {
            line: index + 1,
            message,
        };
        let value: Value = serde_json::from_str(&line).map_err(|error| bad(error.to_string()))?;
        let revision = value["revision"].as_u64().ok_or_else(|| bad("no revision".into()))?;
        if revision != expected {
            return Err(bad(format!("revision {revision} where {expected} was expected")));
        }
        let record = value["record"]
            .as_str()
            .and_then(hex::decode)
            .ok_or_else(|| bad("no hex record".into()))?;
        let event = codec::decode(revision, &record).map_err(|error| bad(error.to_string()))?;
        batch.push(event);
        expected += 1;
        if batch.len() == IMPORT_BATCH {
            log.append(&batch)?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        log.append(&batch)?;
    }
    Ok(expected - 1)
}

fn describe(change: &Change) -> Value {
    match change {
        Change::PrefixCreated(prefix) => json!({"type": "prefix_created", "prefix": prefix_json(prefix)}),
        Change::PrefixUpdated(prefix) => json!({"type": "prefix_updated", "prefix": prefix_json(prefix)}),
        Change::PrefixDeleted(prefix) => json!({"type": "prefix_deleted", "prefix": prefix_json(prefix)}),
        Change::BindingCreated { binding, request_id } => {
            json!({"type": "binding_created", "binding": binding_json(binding), "request_id": request_id})
        }
        Change::BindingProvisioningStateChanged(binding) => {
            json!({"type": "binding_provisioning_state_changed", "binding": binding_json(binding)})
        }
        Change::BindingDeleted(binding) => json!({"type": "binding_deleted", "binding": binding_json(binding)}),
    }
}

fn prefix_json(prefix: &Prefix) -> Value {
    json!({
        "id": prefix.id.to_string(), "account_id": prefix.account_id.to_string(), "cidr": prefix.cidr.to_string(),
        "asn": prefix.asn, "description": prefix.description,
    })
}

fn binding_json(binding: &Binding) -> Value {
    let state = match binding.state {
        ProvisioningState::Provisioning => "PROVISIONING",
        ProvisioningState::Active => "ACTIVE",
    };
    json!({
        "id": binding.id.to_string(), "account_id": binding.account_id.to_string(),
        "prefix_id": binding.prefix_id.to_string(), "cidr": binding.cidr.to_string(),
        "service": binding.service.name(), "state": state,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Event;
    use crate::domain::fixtures::prefix_event;

    #[test]
    fn export_then_import_gives_the_same_log() {
        let (source_dir, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = EventLog::open(source_dir.path()).unwrap();
        let events: Vec<Event> = (1..=25).map(|i| prefix_event(i, &format!("10.{i}.0.0/16"))).collect();
        source.append(&events).unwrap();
        let mut exported = Vec::new();
        assert_eq!(export(&source, &mut exported).unwrap(), 25);

        let target = EventLog::open(target_dir.path()).unwrap();
        assert_eq!(import(&target, exported.as_slice()).unwrap(), 25);
        let imported: Vec<Event> = target.read_after(0).collect::<Result<_, _>>().unwrap();
        assert_eq!(imported, events);
        assert_eq!(
            verify(&target).unwrap(),
            Verified {
                n_events: 25,
                head: 25,
                snapshot: CheckpointStatus::Missing,
                deltas: None,
                unused_deltas: 0,
                mark: CheckpointStatus::Missing,
            }
        );
        // Importing into a non-empty directory is refused, and so is one holding a snapshot
        // or a length mark.
        assert!(matches!(
            import(&target, exported.as_slice()),
            Err(ToolError::NotEmpty(25))
        ));
        let stray_dir = tempfile::tempdir().unwrap();
        let stray = EventLog::open(stray_dir.path()).unwrap();
        stray.save_snapshot(25, 7, &crate::domain::State::default()).unwrap();
        assert!(matches!(
            import(&stray, exported.as_slice()),
            Err(ToolError::HoldsCheckpoint)
        ));
        assert_eq!(stray.head().unwrap(), 0);
        let checksum = source.record_checksum(25).unwrap().unwrap();
        source.save_mark(25, checksum).unwrap();
        assert_eq!(verify(&source).unwrap().mark, CheckpointStatus::At(25));
        let marked_dir = tempfile::tempdir().unwrap();
        std::fs::copy(source_dir.path().join("log.mark"), marked_dir.path().join("log.mark")).unwrap();
        let marked = EventLog::open(marked_dir.path()).unwrap();
        assert!(matches!(
            import(&marked, exported.as_slice()),
            Err(ToolError::HoldsCheckpoint)
        ));
    }

    #[test]
    fn import_refuses_gaps_and_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let log = EventLog::open(dir.path()).unwrap();
        let record = hex::encode(&codec::encode(&prefix_event(2, "10.0.0.0/8")));
        let gap = format!("{{\"revision\":2,\"record\":\"{record}\"}}\n");
        assert!(matches!(
            import(&log, gap.as_bytes()),
            Err(ToolError::BadLine { line: 1, .. })
        ));
        let mut damaged = codec::encode(&prefix_event(1, "10.0.0.0/8"));
        *damaged.last_mut().unwrap() ^= 1;
        let line = format!("{{\"revision\":1,\"record\":\"{}\"}}\n", hex::encode(&damaged));
        let error = import(&log, line.as_bytes()).unwrap_err().to_string();
        assert!(error.contains("checksum"), "{error}");
        assert_eq!(log.head().unwrap(), 0, "nothing half-imported");
    }
}
