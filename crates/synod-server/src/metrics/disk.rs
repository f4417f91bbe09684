//! The disk as the metrics see it: raft-engine's file system and redb's storage, each wrapped to
//! time its syncs (`etcd_disk_wal_fsync_duration_seconds`,
//! `etcd_disk_backend_commit_duration_seconds`). Everything else passes straight through.

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use raft_engine::env::{DefaultFileSystem, FileSystem, Handle, Permission};
use redb::{BackendError, StorageBackend};

/// raft-engine's default file system, with each log fsync timed.
pub struct TimedFs(DefaultFileSystem);

impl Default for TimedFs {
    fn default() -> TimedFs {
        TimedFs(DefaultFileSystem)
    }
}

/// A log file handle whose `sync` is timed.
pub struct TimedHandle(Arc<<DefaultFileSystem as FileSystem>::Handle>);

impl Handle for TimedHandle {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        self.0.truncate(offset)
    }

    fn file_size(&self) -> io::Result<usize> {
        self.0.file_size()
    }

    fn sync(&self) -> io::Result<()> {
        super::metrics()
            .wal_fsync
            .observe_closure_duration(|| self.0.sync())
    }
}

impl FileSystem for TimedFs {
    type Handle = TimedHandle;
    type Reader = <DefaultFileSystem as FileSystem>::Reader;
    type Writer = <DefaultFileSystem as FileSystem>::Writer;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<TimedHandle> {
        Ok(TimedHandle(Arc::new(self.0.create(path)?)))
    }

    fn open<P: AsRef<Path>>(&self, path: P, permission: Permission) -> io::Result<TimedHandle> {
        Ok(TimedHandle(Arc::new(self.0.open(path, permission)?)))
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        self.0.delete(path)
    }

    fn rename<P: AsRef<Path>>(&self, from: P, to: P) -> io::Result<()> {
        self.0.rename(from, to)
    }

    fn new_reader(&self, handle: Arc<TimedHandle>) -> io::Result<Self::Reader> {
        self.0.new_reader(handle.0.clone())
    }

    fn new_writer(&self, handle: Arc<TimedHandle>) -> io::Result<Self::Writer> {
        self.0.new_writer(handle.0.clone())
    }
}

/// redb's file backend with `sync_data` timed: Synod commits apply batches without an fsync and
/// makes the file durable every so many entries (`synod_core::backend`), so these are the
/// commits that wait on the disk.
#[derive(Debug)]
pub struct TimedStorage(redb::backends::FileBackend);

impl TimedStorage {
    /// Opens (or creates) the file at `path` as redb's `Builder::create` would.
    pub fn open(path: &Path) -> io::Result<TimedStorage> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let backend = redb::backends::FileBackend::new(file).map_err(io::Error::other)?;
        Ok(TimedStorage(backend))
    }
}

impl StorageBackend for TimedStorage {
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
        super::metrics()
            .backend_commit
            .observe_closure_duration(|| self.0.sync_data())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.0.write(offset, data)
    }

    fn close(&self) -> Result<(), io::Error> {
        self.0.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.0.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.query_lock_range(start, end)
    }
}
