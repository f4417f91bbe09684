//! The simulated disk of one member: file contents live in memory, split into what an fsync made
//! durable and what was only written. A crash keeps the durable bytes (and, for a torn write, a
//! prefix of the newest unsynced append); a failing fsync and a full disk are switches.
//!
//! raft-engine reaches it through [`SimFs`] (its `FileSystem` trait) and redb through
//! [`SimStorage`] (its `StorageBackend` trait), so both libraries run unmodified on top. raft-engine
//! lists and locks its directory with `std::fs`, so every simulated file also has an empty
//! placeholder of the same name in a real directory; its contents are never read.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use raft_engine::env::{FileSystem, Handle, Permission, WriteExt};

use crate::rng::Rng;

/// Unsynced changes are tracked by page, so a sync copies only what changed.
const PAGE: usize = 4096;

#[derive(Debug, Default)]
struct FileData {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Pages written (or truncated into) since the last sync.
    dirty: BTreeSet<usize>,
    /// Whether a crash may keep a prefix of the unsynced tail (append-only log files).
    tearable: bool,
}

impl FileData {
    fn mark_dirty(&mut self, offset: usize, end: usize) {
        let last = end.max(offset + 1) - 1;
        self.dirty.extend(offset / PAGE..=last / PAGE);
    }

    fn sync(&mut self) {
        if self.dirty.is_empty() {
            return;
        }
        let len = self.current.len();
        self.durable.resize(len, 0);
        for page in std::mem::take(&mut self.dirty) {
            let start = page * PAGE;
            if start >= len {
                break;
            }
            let end = (start + PAGE).min(len);
            self.durable[start..end].copy_from_slice(&self.current[start..end]);
        }
    }

    /// Puts back the durable contents; with `cutoff`, the unsynced bytes before it survive (a
    /// torn write: the disk wrote the first part and no more).
    fn revert(&mut self, cutoff: usize) {
        let durable_len = self.durable.len();
        let new_len = durable_len.max(cutoff.min(self.current.len()));
        if self.current.len() < durable_len {
            let tail = self.durable[self.current.len()..].to_vec();
            self.current.extend_from_slice(&tail);
        }
        for page in std::mem::take(&mut self.dirty) {
            let start = (page * PAGE).max(cutoff);
            let end = ((page + 1) * PAGE).min(durable_len);
            if start < end {
                self.current[start..end].copy_from_slice(&self.durable[start..end]);
            }
        }
        self.current.truncate(new_len);
    }
}

type File = Arc<Mutex<FileData>>;

#[derive(Debug, Default)]
struct DiskState {
    files: BTreeMap<PathBuf, File>,
    /// The process is dead: writes and syncs after this point never reach the disk.
    crashed: bool,
    /// The next sync fails with EIO.
    fail_next_sync: bool,
    /// Total bytes the disk holds; writes beyond it fail with ENOSPC.
    capacity: Option<usize>,
    syncs: u64,
    failed_syncs: u64,
    full_writes: u64,
}

/// One member's disk, shared by its log and its state machine.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    state: Arc<Mutex<DiskState>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What a crash did to the disk.
#[derive(Debug, Default, Clone, Copy)]
pub struct CrashLoss {
    pub lost_bytes: u64,
    pub torn: bool,
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    fn used(state: &DiskState) -> usize {
        state.files.values().map(|f| lock(f).current.len()).sum()
    }

    fn file(&self, path: &Path) -> Option<File> {
        lock(&self.state).files.get(path).cloned()
    }

    fn create_file(&self, path: &Path, tearable: bool) -> File {
        let file = Arc::new(Mutex::new(FileData {
            tearable,
            ..FileData::default()
        }));
        lock(&self.state)
            .files
            .insert(path.to_path_buf(), file.clone());
        file
    }

    /// The process dies now: nothing it does from here on reaches the disk.
    pub fn kill(&self) {
        lock(&self.state).crashed = true;
    }

    /// Power comes back after [`SimDisk::kill`]: every file returns to its durable contents; with
    /// `torn`, the newest unsynced append of a log file may survive in part.
    pub fn recover(&self, rng: &mut Rng, torn: bool) -> CrashLoss {
        let mut state = lock(&self.state);
        state.crashed = false;
        state.fail_next_sync = false;
        let mut loss = CrashLoss::default();
        for file in state.files.values() {
            let mut file = lock(file);
            let (Some(&first), Some(&last)) = (file.dirty.first(), file.dirty.last()) else {
                continue;
            };
            let from = first * PAGE;
            let to = ((last + 1) * PAGE).min(file.current.len()).max(from);
            loss.lost_bytes += (file.dirty.len() * PAGE) as u64;
            let mut cutoff = 0;
            if torn && file.tearable && to > from {
                let kept = rng.below((to - from) as u64) as usize;
                cutoff = from + kept;
                loss.torn |= kept > 0;
            }
            file.revert(cutoff);
        }
        loss
    }

    /// The next fsync fails (the member must stop: nothing after it can be trusted).
    pub fn fail_next_sync(&self) {
        lock(&self.state).fail_next_sync = true;
    }

    /// The disk fills up: from now on it holds at most `extra_bytes` more than it does now.
    pub fn fill(&self, extra_bytes: usize) {
        let mut state = lock(&self.state);
        let used = SimDisk::used(&state);
        state.capacity = Some(used + extra_bytes);
    }

    /// Space is freed again.
    pub fn unfill(&self) {
        lock(&self.state).capacity = None;
    }

    pub fn is_full(&self) -> bool {
        lock(&self.state).capacity.is_some()
    }

    /// (syncs, failed syncs, writes refused for lack of space).
    pub fn counters(&self) -> (u64, u64, u64) {
        let state = lock(&self.state);
        (state.syncs, state.failed_syncs, state.full_writes)
    }

    fn sync_file(&self, file: &File) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.crashed {
            return Ok(());
        }
        if std::mem::take(&mut state.fail_next_sync) {
            state.failed_syncs += 1;
            return Err(io::Error::other("simulated fsync failure (EIO)"));
        }
        state.syncs += 1;
        lock(file).sync();
        Ok(())
    }

    fn write_at(&self, file: &File, offset: usize, data: &[u8]) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.crashed {
            return Ok(());
        }
        let end = offset + data.len();
        let current_len = lock(file).current.len();
        if let Some(capacity) = state.capacity
            && end > current_len
            && SimDisk::used(&state) + (end - current_len) > capacity
        {
            state.full_writes += 1;
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                "simulated full disk (ENOSPC)",
            ));
        }
        drop(state);
        let mut file = lock(file);
        if file.current.len() < end {
            file.current.resize(end, 0);
        }
        file.current[offset..end].copy_from_slice(data);
        file.mark_dirty(offset, end);
        Ok(())
    }

    fn set_len(&self, file: &File, len: usize) -> io::Result<()> {
        if lock(&self.state).crashed {
            return Ok(());
        }
        let current_len = lock(file).current.len();
        if len > current_len {
            return self.write_at(file, current_len, &vec![0; len - current_len]);
        }
        let mut file = lock(file);
        file.current.truncate(len);
        file.mark_dirty(len, len);
        Ok(())
    }
}

impl synod_core::disk::Disk for SimDisk {
    fn storage(&self, path: &Path) -> io::Result<Box<dyn redb::StorageBackend>> {
        Ok(Box::new(SimStorage::open(self, path)))
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if !state.crashed {
            state.files.remove(path);
        }
        Ok(())
    }

    /// Atomic and durable at once, as a rename followed by a sync of its directory is.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if state.crashed {
            return Ok(());
        }
        let Some(file) = state.files.remove(from) else {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such file"));
        };
        state.files.insert(to.to_path_buf(), file);
        Ok(())
    }

    /// A simulated file has no holes: it occupies its length.
    fn size_on_disk(&self, path: &Path) -> io::Result<u64> {
        Ok(self
            .file(path)
            .map_or(0, |file| lock(&file).current.len() as u64))
    }
}

/// raft-engine's view of a [`SimDisk`].
#[derive(Debug, Clone)]
pub struct SimFs {
    disk: SimDisk,
}

impl SimFs {
    pub fn new(disk: SimDisk) -> SimFs {
        SimFs { disk }
    }
}

/// An open simulated file.
#[derive(Debug)]
pub struct SimHandle {
    disk: SimDisk,
    file: File,
}

impl Handle for SimHandle {
    fn truncate(&self, offset: usize) -> io::Result<()> {
        self.disk.set_len(&self.file, offset)
    }

    fn file_size(&self) -> io::Result<usize> {
        Ok(lock(&self.file).current.len())
    }

    fn sync(&self) -> io::Result<()> {
        self.disk.sync_file(&self.file)
    }
}

/// A cursor over a [`SimHandle`], for reading or writing.
#[derive(Debug)]
pub struct SimCursor {
    handle: Arc<SimHandle>,
    offset: usize,
}

impl Read for SimCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let file = lock(&self.handle.file);
        let available = file.current.len().saturating_sub(self.offset);
        let n = available.min(buf.len());
        buf[..n].copy_from_slice(&file.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

impl Write for SimCursor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.handle
            .disk
            .write_at(&self.handle.file, self.offset, buf)?;
        self.offset += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for SimCursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let len = lock(&self.handle.file).current.len() as i64;
        let target = match pos {
            SeekFrom::Start(offset) => offset as i64,
            SeekFrom::End(delta) => len + delta,
            SeekFrom::Current(delta) => self.offset as i64 + delta,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of a file",
            ));
        }
        self.offset = target as usize;
        Ok(self.offset as u64)
    }
}

impl WriteExt for SimCursor {
    fn truncate(&mut self, offset: usize) -> io::Result<()> {
        self.handle.disk.set_len(&self.handle.file, offset)
    }

    fn allocate(&mut self, offset: usize, size: usize) -> io::Result<()> {
        // fallocate without KEEP_SIZE, as raft-engine's default file system does: the file grows.
        let len = lock(&self.handle.file).current.len();
        if offset + size > len {
            self.handle.disk.set_len(&self.handle.file, offset + size)?;
        }
        Ok(())
    }
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such simulated file", path.display()),
    )
}

impl FileSystem for SimFs {
    type Handle = SimHandle;
    type Reader = SimCursor;
    type Writer = SimCursor;

    fn create<P: AsRef<Path>>(&self, path: P) -> io::Result<SimHandle> {
        let path = path.as_ref();
        std::fs::File::create(path)?;
        let tearable = path.extension().is_some_and(|ext| ext == "raftlog");
        let file = match self.disk.file(path) {
            Some(file) => {
                self.disk.set_len(&file, 0)?;
                file
            }
            None => self.disk.create_file(path, tearable),
        };
        Ok(SimHandle {
            disk: self.disk.clone(),
            file,
        })
    }

    fn open<P: AsRef<Path>>(&self, path: P, _perm: Permission) -> io::Result<SimHandle> {
        let path = path.as_ref();
        let file = self.disk.file(path).ok_or_else(|| not_found(path))?;
        Ok(SimHandle {
            disk: self.disk.clone(),
            file,
        })
    }

    fn delete<P: AsRef<Path>>(&self, path: P) -> io::Result<()> {
        let path = path.as_ref();
        lock(&self.disk.state)
            .files
            .remove(path)
            .ok_or_else(|| not_found(path))?;
        let _ = std::fs::remove_file(path);
        Ok(())
    }

    fn rename<P: AsRef<Path>>(&self, src_path: P, dst_path: P) -> io::Result<()> {
        let (from, to) = (src_path.as_ref(), dst_path.as_ref());
        let mut state = lock(&self.disk.state);
        let file = state.files.remove(from).ok_or_else(|| not_found(from))?;
        state.files.insert(to.to_path_buf(), file);
        drop(state);
        std::fs::rename(from, to)
    }

    fn new_reader(&self, handle: Arc<SimHandle>) -> io::Result<SimCursor> {
        Ok(SimCursor { handle, offset: 0 })
    }

    fn new_writer(&self, handle: Arc<SimHandle>) -> io::Result<SimCursor> {
        Ok(SimCursor { handle, offset: 0 })
    }
}

/// redb's view of one file on a [`SimDisk`].
#[derive(Debug)]
pub struct SimStorage {
    disk: SimDisk,
    file: File,
}

impl SimStorage {
    /// The file at `path` on `disk`, created empty if it does not exist.
    pub fn open(disk: &SimDisk, path: &Path) -> SimStorage {
        let file = disk
            .file(path)
            .unwrap_or_else(|| disk.create_file(path, false));
        SimStorage {
            disk: disk.clone(),
            file,
        }
    }
}

impl redb::StorageBackend for SimStorage {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(lock(&self.file).current.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let file = lock(&self.file);
        let start = offset as usize;
        let end = start + out.len();
        if end > file.current.len() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "read past the end of a simulated file",
            ));
        }
        out.copy_from_slice(&file.current[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        self.disk.set_len(&self.file, len as usize)
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        self.disk.sync_file(&self.file)
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.disk.write_at(&self.file, offset as usize, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &SimFs, path: &Path, offset: u64, data: &[u8]) -> Arc<SimHandle> {
        let handle = Arc::new(fs.open(path, Permission::ReadWrite).expect("open"));
        let mut writer = fs.new_writer(handle.clone()).expect("writer");
        writer.seek(SeekFrom::Start(offset)).expect("seek");
        writer.write_all(data).expect("write");
        handle
    }

    fn contents(fs: &SimFs, path: &Path) -> Vec<u8> {
        let handle = Arc::new(fs.open(path, Permission::ReadOnly).expect("open"));
        let mut bytes = Vec::new();
        fs.new_reader(handle)
            .expect("reader")
            .read_to_end(&mut bytes)
            .expect("read");
        bytes
    }

    fn setup() -> (tempfile::TempDir, SimDisk, SimFs, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let fs = SimFs::new(disk.clone());
        let path = dir.path().join("1.raftlog");
        fs.create(&path).expect("create");
        (dir, disk, fs, path)
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_loses_the_rest() {
        let (_dir, disk, fs, path) = setup();
        write(&fs, &path, 0, b"durable").sync().expect("sync");
        write(&fs, &path, 7, b"-lost");
        assert_eq!(contents(&fs, &path), b"durable-lost");
        disk.kill();
        // A dead process writes nothing more, even through a sync.
        write(&fs, &path, 12, b"-after-death").sync().expect("sync");
        disk.recover(&mut Rng::new(1), false);
        assert_eq!(contents(&fs, &path), b"durable");
    }

    #[test]
    fn a_torn_write_keeps_a_strict_prefix_of_the_unsynced_range() {
        let mut torn = 0;
        for seed in 0..20 {
            let (_dir, disk, fs, path) = setup();
            write(&fs, &path, 0, b"head").sync().expect("sync");
            write(&fs, &path, 4, b"0123456789");
            disk.kill();
            let loss = disk.recover(&mut Rng::new(seed), true);
            let after = contents(&fs, &path);
            assert!(after.starts_with(b"head"));
            assert!(b"head0123456789".starts_with(&after));
            assert!(after.len() < 14, "all of an unsynced write survived");
            torn += loss.torn as u32;
        }
        assert!(torn > 10, "torn writes were rare: {torn}/20");
    }

    #[test]
    fn a_failing_fsync_reports_an_error_once() {
        let (_dir, disk, fs, path) = setup();
        let handle = write(&fs, &path, 0, b"data");
        disk.fail_next_sync();
        assert!(handle.sync().is_err());
        handle.sync().expect("the next sync works");
        assert_eq!(disk.counters().1, 1);
    }

    #[test]
    fn a_full_disk_refuses_growth_until_space_is_freed() {
        let (_dir, disk, fs, path) = setup();
        write(&fs, &path, 0, b"12345678");
        disk.fill(4);
        let handle = Arc::new(fs.open(&path, Permission::ReadWrite).expect("open"));
        let mut writer = fs.new_writer(handle).expect("writer");
        // Overwriting in place needs no space; growing past the room left does.
        writer.write_all(b"abcd").expect("in place");
        writer.seek(SeekFrom::End(0)).expect("seek");
        let error = writer.write_all(b"too much data").expect_err("full");
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        disk.unfill();
        writer.write_all(b"too much data").expect("room again");
    }

    #[test]
    fn redb_runs_on_the_simulated_disk_and_survives_a_crash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = SimDisk::new();
        let path = dir.path().join("db");
        const TABLE: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        {
            let db = redb::Database::builder()
                .create_with_backend(SimStorage::open(&disk, &path))
                .expect("create");
            for (value, durability) in [
                (1, redb::Durability::Immediate),
                (2, redb::Durability::None),
            ] {
                let mut tx = db.begin_write().expect("begin");
                tx.set_durability(durability).expect("durability");
                tx.open_table(TABLE)
                    .expect("table")
                    .insert(0, value)
                    .expect("insert");
                tx.commit().expect("commit");
            }
            disk.kill();
        }
        disk.recover(&mut Rng::new(7), true);
        let db = redb::Database::builder()
            .create_with_backend(SimStorage::open(&disk, &path))
            .expect("reopen");
        let tx = redb::ReadableDatabase::begin_read(&db).expect("read");
        let value = redb::ReadableTable::get(&tx.open_table(TABLE).expect("table"), 0)
            .expect("get")
            .map(|v| v.value());
        assert_eq!(value, Some(1), "only the durable commit survives");
    }
}
