//! A small file beside sled's in the data directory, replaced atomically: written aside,
//! fsynced, renamed over the old one, the directory fsynced. A crash at any point leaves the
//! old contents or the new ones, and an older save never replaces a newer one. Two of them:
//! the snapshot of the state (`state.snapshot`) and the log's length mark (`log.mark`).
//!
//! The snapshot is not a sled value: sled 0.34 stores a large value as a blob file, re-reads
//! and checksums every blob its own log still mentions at each open, and deletes a replaced
//! blob only when the segment that pointed at it is reused: with a snapshot per clean stop,
//! each restart left one more blob behind and opened slower. The mark must not be in sled
//! either: it is there to tell when sled's file lost events.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub struct AtomicFile {
    dir: PathBuf,
    /// The file's name in `dir`.
    name: &'static str,
    /// The revision of the newest contents saved by this process; held while saving, so that
    /// saves never interleave and older contents never replace newer ones.
    saved_revision: Mutex<u64>,
}

impl AtomicFile {
    pub fn new(dir: &Path, name: &'static str) -> AtomicFile {
        AtomicFile {
            dir: dir.to_path_buf(),
            name,
            saved_revision: Mutex::new(0),
        }
    }

    /// The stored record, if there is one.
    pub fn load(&self) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(self.name)) {
            Err(missing) if missing.kind() == io::ErrorKind::NotFound => Ok(None),
            read => read.map(Some),
        }
    }

    /// Whether a record is stored.
    pub fn exists(&self) -> io::Result<bool> {
        self.dir.join(self.name).try_exists()
    }

    /// Durably replaces the stored record with `record`, as of `revision`, unless this process
    /// already saved a newer one (`Ok(false)`). A crash at any point leaves either the old
    /// record or the new one.
    pub fn save(&self, revision: u64, record: &[u8]) -> io::Result<bool> {
        let mut saved_revision = self
            .saved_revision
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if revision < *saved_revision {
            return Ok(false);
        }
        let partial = self.dir.join(format!("{}.partial", self.name));
        let mut file = File::create(&partial)?;
        file.write_all(record)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&partial, self.dir.join(self.name))?;
        // The rename is durable once the directory is.
        File::open(&self.dir)?.sync_all()?;
        *saved_revision = revision;
        Ok(true)
    }
}
