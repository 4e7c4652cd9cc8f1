//! The sled store under the log: opening a database (damage named as such, sled's panics on
//! damaged files caught and kept quiet), making writes durable, and the injected storage
//! faults the tests use.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{EVENTS_TREE, LogError, SLED_FILE};

/// sled's page cache. The log is read whole only at start-up and in part by lagging watchers;
/// appends touch its last pages. sled's default (1 GiB) kept far more memory resident after a
/// start, and 64 MiB a quarter of the RSS after one, for no gain in creates/s or start-up time
/// over 16 MiB (docs/benchmarks.md, Restart).
const PAGE_CACHE_BYTES: u64 = 16 << 20;

/// A switch that makes appends fail as a full disk would: for tests of the storage-fault path
/// through the real server (a full disk needs a small filesystem and root). Never set by the
/// server itself; `ServerOptions::storage_faults` hands it in.
#[derive(Clone, Debug, Default)]
pub struct StorageFaults(Arc<AtomicBool>);

impl StorageFaults {
    pub fn set_disk_full(&self, full: bool) {
        self.0.store(full, Ordering::SeqCst);
    }

    pub(super) fn check(&self) -> Result<(), LogError> {
        if self.0.load(Ordering::SeqCst) {
            let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device (injected)");
            return Err(LogError::Storage(sled::Error::Io(full)));
        }
        Ok(())
    }
}

/// One open sled database and its tree.
pub(super) struct Handles {
    pub(super) db: sled::Db,
    pub(super) events: sled::Tree,
    /// sled's data file, for [`make_durable`](Handles::make_durable).
    file: std::fs::File,
}

impl Handles {
    pub(super) fn open(dir: &Path) -> Result<Handles, LogError> {
        // Every append flushes explicitly, so sled's periodic background flusher is not needed (and it
        // would delay exit by up to its period).
        let config = sled::Config::new()
            .path(dir)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .cache_capacity(PAGE_CACHE_BYTES);
        // sled 0.34 panics (index out of bounds) on some damage, a truncated file among them,
        // instead of returning an error: turn that into one (nothing it touched is used after).
        let db = expecting_storage_panics(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open())))
            .map_err(|panic| {
                LogError::Damaged(format!(
                    "the storage panicked while recovering it: {}",
                    panic_message(panic.as_ref())
                ))
            })?
            .map_err(|error| match error {
                sled::Error::Io(io) if is_lock_held(&io) => LogError::InUse(dir.display().to_string()),
                error => damage_or_failure(error, "the storage cannot read its own files"),
            })?;
        let events = db.open_tree(EVENTS_TREE)?;
        let file = std::fs::File::open(dir.join(SLED_FILE)).map_err(sled::Error::Io)?;
        // The data file's directory entry, durable once (sled creates the file).
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .map_err(sled::Error::Io)?;
        Ok(Handles { db, events, file })
    }

    /// Writes out everything sled buffered, durably. sled's `flush` ends with
    /// `sync_file_range`, which neither flushes the drive's write cache nor persists the file's
    /// size (the file grows as the log does), so a power cut could lose an acknowledged group:
    /// `fdatasync` does both.
    pub(super) fn make_durable(&self) -> Result<(), LogError> {
        self.db.flush()?;
        self.file.sync_data().map_err(sled::Error::Io)?;
        Ok(())
    }
}

/// Whether opening failed because sled's exclusive lock on its file is held. sled 0.34 reports
/// that as an `ErrorKind::Other` whose text names it (with the `WouldBlock` of the failed
/// `flock` inside), so the kind alone does not tell.
fn is_lock_held(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::WouldBlock || error.to_string().starts_with("could not acquire lock")
}

/// Whether a sled read error means damaged files rather than a failing device: a page whose
/// checksum does not match, or one that lies past the end of the file.
pub(super) fn is_damage(error: &sled::Error) -> bool {
    match error {
        sled::Error::Corruption { .. } => true,
        sled::Error::Io(io) => io.kind() == std::io::ErrorKind::UnexpectedEof,
        _ => false,
    }
}

/// A sled error where no revision can be named: damage ([`LogError::Damaged`], saying what
/// could not be done) or a failing device.
pub(super) fn damage_or_failure(error: sled::Error, what: &str) -> LogError {
    if is_damage(&error) {
        LogError::Damaged(format!("{what} ({error})"))
    } else {
        LogError::Storage(error)
    }
}

thread_local! {
    /// Set while this thread runs sled code that may panic on damaged files.
    static EXPECTING_STORAGE_PANICS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`quiet_storage_panics`]' hook silent on this thread: a panic there is caught
/// and reported as damage, so the default hook's message and backtrace would only be noise.
pub(crate) fn expecting_storage_panics<T>(f: impl FnOnce() -> T) -> T {
    /// Restores the flag however `f` ends, unwinding included.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            EXPECTING_STORAGE_PANICS.set(self.0);
        }
    }
    let _restore = Restore(EXPECTING_STORAGE_PANICS.replace(true));
    f()
}

/// Installs a panic hook that stays silent for sled's panics on damaged files (which the log
/// catches and reports as a damaged data directory) and prints every other panic as before.
/// For binaries: the hook is process-wide.
pub fn quiet_storage_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !EXPECTING_STORAGE_PANICS.get() {
            default(info);
        }
    }));
}

/// What a caught panic (sled's, on damaged files) said.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
        .unwrap_or_default()
}
