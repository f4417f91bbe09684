//! The core's door to files other than the Raft log's: the state-machine file's size, snapshot
//! files (written by the leader for a follower, received and installed by the follower) and
//! their removal. The Raft log reaches its files through raft-engine's `FileSystem`, the state
//! machine through a redb `StorageBackend`; snapshot files go through [`Disk`], so the simulator
//! serves all three from its simulated disk and crashes them alike.
//!
//! [`RealDisk`] is the production implementation, and this module the only place in the core
//! that names `std::fs` (the tidy test holds it to that).

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};

/// Files by path, as the core needs them beyond the log and the state-machine file.
pub trait Disk: Debug + Send + Sync + 'static {
    /// The file at `path` as redb storage, created empty if it does not exist.
    fn storage(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>>;
    /// Removes the file at `path`; a missing file is not an error.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Moves the file at `from` to `to` (on the same file system), replacing what was there, at
    /// once and durably: after a crash, `to` is the old file or the new one, and once this
    /// returns, the new one.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// The bytes the file at `path` occupies on disk: its allocated blocks, so the holes of a
    /// sparse file are not counted (redb reserves room by extending its file, sparse, to twice
    /// its length; see docs/PERFORMANCE.md).
    fn size_on_disk(&self, path: &Path) -> io::Result<u64>;
}

/// The machine's file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealDisk;

impl Disk for RealDisk {
    fn storage(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let backend = redb::backends::FileBackend::new(file)
            .map_err(|error| io::Error::other(error.to_string()))?;
        Ok(Box::new(backend))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match std::fs::remove_file(path) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)?;
        // The rename is durable once the directory holding the new name is.
        let dir = to.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir)?.sync_all()
    }

    fn size_on_disk(&self, path: &Path) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        // `blocks` counts 512-byte units, whatever the file system's block size.
        std::fs::metadata(path).map(|m| m.blocks() * 512)
    }
}

/// redb takes a backend by value; this hands it a boxed one.
#[derive(Debug)]
pub struct Boxed(pub Box<dyn redb::StorageBackend>);

impl redb::StorageBackend for Boxed {
    fn len(&self) -> Result<u64, io::Error> {
        self.0.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        self.0.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.0.set_len(len)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.0.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }
}

/// The files in `dir` on the machine's file system. raft-engine lists its directory there
/// whatever its `FileSystem` is (the simulator keeps a placeholder file per simulated log file),
/// so the log's recovery looks where raft-engine looks.
pub fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)?;
    Ok(entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .collect())
}
