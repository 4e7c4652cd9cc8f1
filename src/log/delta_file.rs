//! The snapshot's deltas (`state.deltas`), beside it: records appended one after the other,
//! each its length (u32, little endian) then the record, fdatasynced. A record cut short by a
//! crash ends the file as read, and the next append, made where the last whole record ended,
//! overwrites it. A saved snapshot empties the file (removes it): its deltas follow an older
//! snapshot, which a start would not apply anyway (each delta names the checkpoint it follows).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

const LEN_LEN: usize = 4;

pub struct DeltaFile {
    dir: PathBuf,
    path: PathBuf,
    /// Held while the file changes, so that an append and a removal never interleave.
    changing: Mutex<()>,
}

impl DeltaFile {
    pub fn new(dir: &std::path::Path, name: &str) -> DeltaFile {
        DeltaFile {
            dir: dir.to_path_buf(),
            path: dir.join(name),
            changing: Mutex::new(()),
        }
    }

    /// The file's bytes (none when it is missing).
    pub fn load(&self) -> io::Result<Vec<u8>> {
        match fs::read(&self.path) {
            Err(missing) if missing.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            read => read,
        }
    }

    pub fn exists(&self) -> io::Result<bool> {
        self.path.try_exists()
    }

    /// Durably writes `record` at `offset` (where the last record to keep ends), dropping
    /// whatever followed it; returns where the file now ends.
    pub fn append_at(&self, offset: u64, record: &[u8]) -> io::Result<u64> {
        let _changing = self.changing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let len = u32::try_from(record.len()).map_err(|_| io::Error::other("a delta of 4 GiB or more"))?;
        let created = !self.path.try_exists()?;
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.path)?;
        file.set_len(offset)?;
        let mut framed = Vec::with_capacity(LEN_LEN + record.len());
        framed.extend_from_slice(&len.to_le_bytes());
        framed.extend_from_slice(record);
        file.write_all_at(&framed, offset)?;
        file.sync_data()?;
        if created {
            // The new file's name is durable once the directory is.
            File::open(&self.dir)?.sync_all()?;
        }
        Ok(offset + framed.len() as u64)
    }

    /// Durably removes the file.
    pub fn clear(&self) -> io::Result<()> {
        let _changing = self.changing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match fs::remove_file(&self.path) {
            Err(missing) if missing.kind() == io::ErrorKind::NotFound => return Ok(()),
            removed => removed?,
        }
        File::open(&self.dir)?.sync_all()
    }
}

/// The whole records of a delta file's `bytes`, each with the offset where it ends; a record
/// cut short ends them.
pub fn records(bytes: &[u8]) -> impl Iterator<Item = (&[u8], u64)> {
    let mut offset = 0;
    std::iter::from_fn(move || {
        let rest = bytes.get(offset..)?;
        let (len, rest) = rest.split_first_chunk::<LEN_LEN>()?;
        let record = rest.get(..u32::from_le_bytes(*len) as usize)?;
        offset += LEN_LEN + record.len();
        Some((record, offset as u64))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_read_back_and_a_record_cut_short_ends_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = DeltaFile::new(dir.path(), "state.deltas");
        assert!(file.load().unwrap().is_empty(), "missing reads as empty");
        let first = file.append_at(0, b"one").unwrap();
        let second = file.append_at(first, b"second").unwrap();
        let bytes = file.load().unwrap();
        let read: Vec<_> = records(&bytes).collect();
        assert_eq!(read, vec![(&b"one"[..], first), (&b"second"[..], second)]);
        // Cut short: only the first remains; an append where it ends replaces the rest.
        let cut = &bytes[..bytes.len() - 1];
        assert_eq!(records(cut).count(), 1);
        let third = file.append_at(first, b"3").unwrap();
        let bytes = file.load().unwrap();
        assert_eq!(
            records(&bytes).map(|(record, _)| record).collect::<Vec<_>>(),
            [&b"one"[..], b"3"]
        );
        assert_eq!(bytes.len() as u64, third);
        file.clear().unwrap();
        assert!(!file.exists().unwrap());
        file.clear().unwrap();
    }
}
