//! Start-up: the read model, rebuilt from the log, from the snapshot when one is usable.

use std::time::Instant;

use tracing::{info, warn};

use super::StartError;
use super::checkpoint::{Chain, Since};
use crate::domain::State;
use crate::domain::state::Changes;
use crate::log::{EventLog, Witness};
use crate::projection::ReadModel;
use crate::projection::routing::RoutingTable;

/// What a start rebuilt from the log.
pub(super) struct Rebuilt {
    pub model: ReadModel,
    /// The revision of the checkpoint (a snapshot or its last delta) the start began from
    /// (0: none).
    pub checkpoint_revision: u64,
    /// The stored checkpoints, which the next one follows (none: a full replay).
    pub chain: Chain,
    /// What the events after them changed.
    pub since: Since,
}

/// The state as of the log's head (`log_head`): the snapshot and its deltas plus the tail
/// after them, or the whole log when no snapshot is usable.
pub(super) fn rebuild(log: &EventLog, log_head: u64) -> Result<Rebuilt, StartError> {
    let (mut model, chain) = match restore_snapshot(log, log_head)? {
        Some(restored) => restored,
        None => {
            // No usable snapshot: the whole log, its records folded event by event and the
            // indexes and routing tables built once at the end.
            let (state, head) = State::replay(log.read_after(0))?;
            (read_model_of(state, head), Chain::default())
        }
    };
    let checkpoint_revision = model.head;
    let mut since = Since::checkpoint(model.state.n_remembered_requests());
    // The tail past the checkpoints (nothing after a full replay).
    for event in log.read_after(model.head) {
        let event = event?;
        model.apply(&event);
        since.note(&event);
    }
    return_freed_memory();
    Ok(Rebuilt {
        model,
        checkpoint_revision,
        chain,
        since,
    })
}

/// Hands the memory a start freed back to the system. A start frees much of what it
/// allocated (the snapshot's bytes and their decoding, the records read to check the log, the
/// threads' scratch). glibc returns only the top of each of its arenas by itself, so those
/// pages stayed resident: 50 MB of the RSS after a start at 1.1M events (docs/benchmarks.md,
/// Restart); `malloc_trim` releases every free page of every arena, once. The server's Rust
/// allocations go to mimalloc (`src/allocator.rs`), which purges freed pages after a delay;
/// `mi_collect` does it now. Each call is harmless where its allocator holds nothing (tests
/// run on glibc's malloc alone; C libraries allocate through glibc in the server).
fn return_freed_memory() {
    // SAFETY: mi_collect only walks mimalloc's own heaps and segments, under their locks.
    unsafe {
        libmimalloc_sys::mi_collect(true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks malloc's own free lists, under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The read model of the stored snapshot and the deltas that follow it, if there is a usable
/// snapshot. A missing or unreadable snapshot, or one taken from another log, is `None` (full
/// replay); deltas are applied as far as each follows the one before (the rest of the way is
/// the log's tail). A snapshot or delta newer than the log's head means the log lost events it
/// once had, and a damaged record under the snapshot is damage all the same: both refuse to
/// start rather than serve from a log that is not sound.
fn restore_snapshot(log: &EventLog, log_head: u64) -> Result<Option<(ReadModel, Chain)>, StartError> {
    match log.has_snapshot() {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(error) => {
            warn!(%error, "cannot read the snapshot; replaying the whole log");
            return Ok(None);
        }
    }
    // The records under the snapshot are checked (not decoded) while the snapshot decodes:
    // damage there must still stop the start, as a full replay would have. Checking runs is
    // quick next to decoding the snapshot (docs/benchmarks.md, Restart).
    let started = Instant::now();
    let (checked, loaded) = std::thread::scope(|scope| {
        let check = scope.spawn(|| crate::log::expecting_storage_panics(|| log.check_records(0, log_head)));
        let loaded = log.load_snapshot();
        let checked = check.join().map_err(StartError::panicked);
        (checked, loaded)
    });
    let snapshot = match loaded {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return Ok(None),
        Err(error) => {
            warn!(%error, "cannot read the snapshot; replaying the whole log");
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
    let loaded_ms = started.elapsed().as_millis() as u64;
    let position = snapshot.position();
    let mut chain = Chain::snapshot(position, snapshot.records.n_records());
    // A delta follows a snapshot by its log record's checksum: one stored without (by an
    // older build) is followed by none.
    let deltas = match position.log_record_checksum {
        None => Default::default(),
        Some(_) => match log.load_deltas(position, log_head) {
            Ok(deltas) => deltas,
            Err(error @ crate::log::LogError::Truncated { .. }) => return Err(error.into()),
            Err(error) => {
                warn!(%error, "cannot read the snapshot's deltas; replaying the log after the snapshot");
                Default::default()
            }
        },
    };
    if deltas.unused > 0 {
        warn!(
            unused = deltas.unused,
            used = deltas.deltas.len(),
            "snapshot deltas not used (one does not decode, does not follow the checkpoint before it, or was taken from another log); replaying the log after the last one used"
        );
    }
    let mut records = snapshot.records;
    let mut revision = snapshot.revision;
    if let Some(last) = deltas.deltas.last() {
        revision = last.position.revision;
        chain.tip = Some(last.position);
        chain.deltas = deltas.deltas.len();
        chain.deltas_end = deltas.end;
        let mut changes = Changes::default();
        for delta in deltas.deltas {
            chain.records += delta.changes.n_records();
            changes.then(delta.changes);
        }
        records.apply(changes);
    }
    let restored = read_model_of(records.into_state(), revision);
    info!(
        loaded_ms,
        revision,
        snapshot_revision = snapshot.revision,
        bytes = snapshot.encoded_len,
        deltas = chain.deltas,
        deltas_bytes = deltas.bytes,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "snapshot restored"
    );
    Ok(Some((restored, chain)))
}

/// The read model over `state` (as of `head`).
fn read_model_of(state: State, head: u64) -> ReadModel {
    let routes = RoutingTable::of(&state);
    ReadModel {
        state,
        routes,
        head,
        route_history: None,
        routes_changed: Default::default(),
    }
}
