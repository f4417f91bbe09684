//! The state-machine file: one redb database holding key history, leases, members, alarms and the
//! meta keys (applied index, compaction points), all written in one transaction per apply batch.
//!
//! Commits are batched: most apply batches commit with [`redb::Durability::None`] (visible to
//! readers at once, not yet fsync'd) and every [`DurableEvery`] the batch commits durably. This is
//! safe because the Raft log is the durability point: after a crash redb reverts to its last
//! durable commit, whose applied index says where WAL replay starts (etcd's `cindex`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use synod_api::synodpb::MemberRecord;

use crate::disk::{Disk, RealDisk};
use crate::error::StorageError;

/// Key history: revision bytes (see [`crate::mvcc::revision`]) to an encoded `mvccpb.KeyValue`.
pub const KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");
/// Long values, in chunks: revision bytes and the chunk's index (u32, big-endian) to the chunk
/// (see [`crate::mvcc::rows`]).
pub const VALUE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("value");
/// Small named values; see the `META_*` names.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Leases: id to an encoded `synodpb.LeaseRecord`.
pub const LEASE: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");
/// Members: id to an encoded `synodpb.MemberRecord`.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// Ids of members removed from the cluster; they may never rejoin under the same id.
pub const REMOVED: TableDefinition<u64, ()> = TableDefinition::new("removed");
/// Requests applied recently: Raft index to (proposing member, request id). A request whose key is
/// here was applied already and is not applied again (see `StateMachine::apply`).
pub const APPLIED_REQUESTS: TableDefinition<u64, (u64, u64)> =
    TableDefinition::new("applied_requests_by_origin");
/// The table of earlier versions, keyed by request id alone; dropped at open.
const APPLIED_REQUESTS_OLD: TableDefinition<u64, u64> = TableDefinition::new("applied_requests");
/// Raised alarms: (member id, alarm type).
pub const ALARM: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarm");
/// Auth users: name to an encoded `authpb.User` (password as a bcrypt hash).
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Auth roles: name to an encoded `authpb.Role`.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");

/// Index of the last Raft entry applied to this file.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// Term of the last Raft entry applied to this file.
pub const META_APPLIED_TERM: &str = "applied_term";
/// The latest compaction revision whose deletions are complete.
pub const META_COMPACT_REVISION: &str = "compact_revision";
/// The compaction revision whose old revisions are still being removed from the key table, a
/// few per applied entry (see `WriteBatch::sweep`); absent when none are left.
pub const META_SWEEP_UNTIL: &str = "sweep_until";
/// The revision key the removal goes on from.
pub const META_SWEEP_FROM: &str = "sweep_from";
/// The cluster id, fixed at bootstrap.
pub const META_CLUSTER_ID: &str = "cluster_id";
/// The Raft configuration (an encoded `eraftpb.ConfState`) as of the applied index.
pub const META_CONF_STATE: &str = "conf_state";

/// 1 when authentication is on.
pub const META_AUTH_ENABLED: &str = "auth_enabled";
/// The auth revision (etcd's `authRevision`); 1 until the first change.
pub const META_AUTH_REVISION: &str = "auth_revision";

/// This member's own id, fixed at bootstrap.
pub const META_MEMBER_ID: &str = "member_id";
/// How many times this member's state machine was opened to serve: the high bits of its request
/// ids (see `driver::RequestIds`). This member's own, like its id: a snapshot does not replace it.
pub const META_BOOT_EPOCH: &str = "boot_epoch";

/// When an apply batch commits durably.
#[derive(Debug, Clone, Copy)]
pub struct DurableEvery {
    /// Commit durably once this many entries have been applied since the last durable commit.
    pub entries: u64,
}

/// Opens a redb file as the state machine's storage: the shell's (which times syncs for the
/// metrics) or the simulator's. Used for the file at start and for a snapshot file installed in
/// its place.
pub type OpenStorage =
    Arc<dyn Fn(&Path) -> std::io::Result<Box<dyn redb::StorageBackend>> + Send + Sync>;

/// The redb database of one member.
pub struct Backend {
    path: PathBuf,
    /// Where snapshot files are written and read, and the file's size is measured.
    disk: Arc<dyn Disk>,
    open_storage: OpenStorage,
    cache_bytes: usize,
    /// Replaced whole when a snapshot is installed; write-locked then and by defragmentation,
    /// which needs the database to itself. Readers hold their database alive (see [`ReadTxn`]).
    db: RwLock<Arc<Database>>,
    /// Writes to the file that can change its size (see [`Counted`]).
    changes: Arc<AtomicU64>,
    /// The size on disk last measured, and the count of changes it reflects.
    measured: Mutex<(u64, u64)>,
}

/// The state-machine file's storage, counting the writes and resizes that can change the file's
/// size on disk, so [`Backend::size_bytes`] measures the file again only after one. Asked on
/// every put (the quota check), a `stat` each time was 2% of a leader's CPU at 100 clients.
#[derive(Debug)]
struct Counted {
    storage: Box<dyn redb::StorageBackend>,
    changes: Arc<AtomicU64>,
}

impl redb::StorageBackend for Counted {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.storage.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.storage.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let done = self.storage.set_len(len);
        // Counted after the change, so a size measured after seeing the count includes it.
        self.changes.fetch_add(1, Ordering::Release);
        done
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.storage.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let done = self.storage.write(offset, data);
        self.changes.fetch_add(1, Ordering::Release);
        done
    }

    fn close(&self) -> Result<(), std::io::Error> {
        self.storage.close()
    }
}

/// A read transaction and the database it reads: a snapshot installed meanwhile replaces the
/// backend's database, and the one this view reads stays open until the view ends.
pub struct ReadTxn {
    // Declared first, so dropped before the database it reads.
    tx: redb::ReadTransaction,
    _db: Arc<Database>,
}

impl std::ops::Deref for ReadTxn {
    type Target = redb::ReadTransaction;

    fn deref(&self) -> &redb::ReadTransaction {
        &self.tx
    }
}

impl Backend {
    /// Opens (or creates) the state-machine file at `path` on the machine's disk, creating every
    /// table.
    pub fn open(path: &Path) -> Result<Backend, StorageError> {
        let disk = Arc::new(RealDisk);
        let opener = disk.clone();
        Backend::open_on(
            Arc::new(move |path: &Path| opener.storage(path)),
            path,
            CACHE_BYTES,
            disk,
        )
    }

    /// Opens (or creates) the state machine at `path` on storage of the caller's (the shell's
    /// timed file, the simulator's disk).
    pub fn open_on(
        open_storage: OpenStorage,
        path: &Path,
        cache_bytes: usize,
        disk: Arc<dyn Disk>,
    ) -> Result<Backend, StorageError> {
        let storage = open_storage(path)
            .map_err(|e| StorageError::open(path, format!("state-machine file: {e}")))?;
        let changes = Arc::new(AtomicU64::new(1));
        let storage = Counted {
            storage,
            changes: changes.clone(),
        };
        let db = open_checked(path, Checked::StateMachine, |builder| {
            builder
                .set_cache_size(cache_bytes)
                .create_with_backend(storage)
        })?;
        with_tables(&db)?;
        Ok(Backend {
            path: path.to_path_buf(),
            disk,
            open_storage,
            cache_bytes,
            db: RwLock::new(Arc::new(db)),
            changes,
            measured: Mutex::new((0, 0)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk snapshot files live on.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub fn begin_read(&self) -> Result<ReadTxn, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?.clone();
        Ok(ReadTxn {
            tx: db.begin_read().map_err(StorageError::backend)?,
            _db: db,
        })
    }

    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?;
        db.begin_write().map_err(StorageError::backend)
    }

    /// The bytes the file occupies on disk (etcd's "physically allocated" database size): what
    /// the quota counts. redb extends its file by doubling it, sparse, so the file's length can
    /// run up to twice ahead of the pages it has written.
    pub fn size_bytes(&self) -> u64 {
        let changes = self.changes.load(Ordering::Acquire);
        if let Ok(measured) = self.measured.lock()
            && measured.0 == changes
        {
            return measured.1;
        }
        let size = self.disk.size_on_disk(&self.path).unwrap_or(0);
        if let Ok(mut measured) = self.measured.lock()
            && measured.0 < changes
        {
            *measured = (changes, size);
        }
        size
    }

    /// Rewrites the file to release free pages. Fails while a read transaction is open.
    pub fn defragment(&self) -> Result<(), StorageError> {
        let mut slot = self.db.write().map_err(|_| StorageError::Poisoned)?;
        let Some(db) = Arc::get_mut(&mut *slot) else {
            return Err(StorageError::backend(
                redb::CompactionError::TransactionInProgress,
            ));
        };
        db.compact().map_err(StorageError::backend)?;
        Ok(())
    }

    /// Records the identity of a new member and the initial member list, durably. Writing the
    /// same values again is harmless, which makes an interrupted bootstrap safe to repeat.
    ///
    /// With `initial_conf_state` (an encoded `ConfState`: a new cluster), the state machine
    /// starts at index 1, term 1, with that configuration, the point the Raft log starts from.
    pub fn write_bootstrap(
        &self,
        cluster_id: u64,
        member_id: u64,
        members: &[MemberRecord],
        initial_conf_state: Option<&[u8]>,
    ) -> Result<(), StorageError> {
        let mut tx = self.begin_write()?;
        {
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            write_meta_u64(&mut meta, META_CLUSTER_ID, cluster_id)?;
            write_meta_u64(&mut meta, META_MEMBER_ID, member_id)?;
            if let Some(conf_state) = initial_conf_state {
                write_meta_u64(&mut meta, META_APPLIED_INDEX, 1)?;
                write_meta_u64(&mut meta, META_APPLIED_TERM, 1)?;
                meta.insert(META_CONF_STATE, conf_state)
                    .map_err(StorageError::backend)?;
            }
            let mut table = tx.open_table(MEMBERS).map_err(StorageError::backend)?;
            for member in members {
                table
                    .insert(member.id, member.encode_to_vec().as_slice())
                    .map_err(StorageError::backend)?;
            }
        }
        tx.set_durability(redb::Durability::Immediate)
            .map_err(StorageError::backend)?;
        tx.commit().map_err(StorageError::backend)
    }

    /// Returns (member id, cluster id) as recorded at bootstrap; zeros when never bootstrapped.
    pub fn identity(&self) -> Result<(u64, u64), StorageError> {
        let tx = self.begin_read()?;
        let meta = tx.open_table(META).map_err(StorageError::backend)?;
        Ok((
            read_meta_u64(&meta, META_MEMBER_ID)?,
            read_meta_u64(&meta, META_CLUSTER_ID)?,
        ))
    }

    /// Every member record, ordered by id.
    pub fn members(&self) -> Result<Vec<MemberRecord>, StorageError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(MEMBERS).map_err(StorageError::backend)?;
        let mut members = Vec::new();
        for entry in table.iter().map_err(StorageError::backend)? {
            let (_, value) = entry.map_err(StorageError::backend)?;
            members.push(
                MemberRecord::decode(value.value())
                    .map_err(|e| StorageError::corrupt(e.to_string()))?,
            );
        }
        Ok(members)
    }

    /// Makes the snapshot file at `path` (built on this member from the leader's rows, see
    /// `snapshot::build_from_rows`) this member's state-machine file. The file is given this
    /// member's own id and boot epoch and `conf_state` (the snapshot's Raft configuration,
    /// encoded) in one durable commit, then renamed over the state-machine file, and the
    /// database is swapped under the readers. A crash before the rename leaves the old file (the
    /// snapshot is asked for again); after it, the new one is whole. The caller holds whatever
    /// locks keep readers from mixing old and new contents (see `KvStore::restore_from`).
    pub fn install_snapshot_file(
        &self,
        path: &Path,
        conf_state: &[u8],
    ) -> Result<(), StorageError> {
        let (member_id, _) = self.identity()?;
        let boot_epoch = {
            let tx = self.begin_read()?;
            let meta = tx.open_table(META).map_err(StorageError::backend)?;
            read_meta_u64(&meta, META_BOOT_EPOCH)?
        };
        let storage = (self.open_storage)(path)
            .map_err(|e| StorageError::open(path, format!("snapshot file is unreadable: {e}")))?;
        let storage = Counted {
            storage,
            changes: self.changes.clone(),
        };
        let db = open_checked(path, Checked::Snapshot, |builder| {
            builder
                .set_cache_size(self.cache_bytes)
                .create_with_backend(storage)
        })?;
        with_tables(&db)?;
        let mut tx = db.begin_write().map_err(StorageError::backend)?;
        {
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            write_meta_u64(&mut meta, META_MEMBER_ID, member_id)?;
            write_meta_u64(&mut meta, META_BOOT_EPOCH, boot_epoch)?;
            meta.insert(META_CONF_STATE, conf_state)
                .map_err(StorageError::backend)?;
        }
        tx.set_durability(redb::Durability::Immediate)
            .map_err(StorageError::backend)?;
        tx.commit().map_err(StorageError::backend)?;
        self.disk
            .rename(path, &self.path)
            .map_err(|e| StorageError::open(&self.path, format!("installing a snapshot: {e}")))?;
        *self.db.write().map_err(|_| StorageError::Poisoned)? = Arc::new(db);
        // The file at `path` is another one now.
        self.changes.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Counts one more start of this member, durably, and returns the new count: no two
    /// processes of one member share a boot epoch, even after a crash.
    pub fn next_boot_epoch(&self) -> Result<u64, StorageError> {
        let mut tx = self.begin_write()?;
        let epoch = {
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            let epoch = read_meta_u64(&meta, META_BOOT_EPOCH)? + 1;
            write_meta_u64(&mut meta, META_BOOT_EPOCH, epoch)?;
            epoch
        };
        tx.set_durability(redb::Durability::Immediate)
            .map_err(StorageError::backend)?;
        tx.commit().map_err(StorageError::backend)?;
        Ok(epoch)
    }

    /// Returns whether member `id` was removed from the cluster.
    pub fn is_removed(&self, id: u64) -> Result<bool, StorageError> {
        let tx = self.begin_read()?;
        let table = tx.open_table(REMOVED).map_err(StorageError::backend)?;
        Ok(table.get(id).map_err(StorageError::backend)?.is_some())
    }

    /// Commits an empty transaction durably, so that every earlier non-durable commit is on disk.
    pub fn sync(&self) -> Result<(), StorageError> {
        let mut tx = self.begin_write()?;
        tx.set_durability(redb::Durability::Immediate)
            .map_err(StorageError::backend)?;
        tx.set_quick_repair(true);
        tx.commit().map_err(StorageError::backend)
    }
}

/// Creates every table `db` lacks (a file from an older version, a snapshot from a leader that
/// has not written one yet) and drops those no longer used.
fn with_tables(db: &Database) -> Result<(), StorageError> {
    let tx = db.begin_write().map_err(StorageError::backend)?;
    {
        tx.open_table(KEY).map_err(StorageError::backend)?;
        tx.open_table(VALUE).map_err(StorageError::backend)?;
        tx.open_table(META).map_err(StorageError::backend)?;
        tx.open_table(LEASE).map_err(StorageError::backend)?;
        tx.open_table(MEMBERS).map_err(StorageError::backend)?;
        tx.open_table(ALARM).map_err(StorageError::backend)?;
        tx.open_table(REMOVED).map_err(StorageError::backend)?;
        tx.open_table(APPLIED_REQUESTS)
            .map_err(StorageError::backend)?;
        tx.delete_table(APPLIED_REQUESTS_OLD)
            .map_err(StorageError::backend)?;
    }
    tx.commit().map_err(StorageError::backend)
}

/// redb's page cache. The operating system's page cache holds the file as well, so a larger one
/// mostly duplicates it: with 1,000,000 keys, 256 MiB of cache was a third of the member's RSS
/// and made the initial load no faster (docs/PERFORMANCE.md).
pub const CACHE_BYTES: usize = 32 << 20;

/// Which file [`open_checked`] opens, and what it does with one redb had to repair.
#[derive(Clone, Copy)]
enum Checked {
    /// The state-machine file: a torn last commit is rolled back to the previous intact one,
    /// which is safe, since the Raft log replays everything after its applied index.
    StateMachine,
    /// A snapshot this member built from the leader's rows (`snapshot::build_from_rows`): the
    /// rows came under a checksum and this member's redb wrote and closed the file, so its pages
    /// are not read again; but one redb would have to repair (a repair would roll it back) is
    /// refused.
    Snapshot,
}

impl Checked {
    fn name(self) -> &'static str {
        match self {
            Checked::StateMachine => "state-machine file",
            Checked::Snapshot => "snapshot file",
        }
    }
}

/// Opens the redb file and, for the state-machine file, checks every page. redb reports some
/// damage by panicking rather than with an error; the panic is contained here and becomes a
/// refusal that names the file.
fn open_checked(
    path: &Path,
    checked: Checked,
    create: impl FnOnce(&mut redb::Builder) -> Result<Database, redb::DatabaseError>,
) -> Result<Database, StorageError> {
    let what = checked.name();
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Database, StorageError> {
            let mut builder = Database::builder();
            builder.set_cache_size(CACHE_BYTES);
            if let Checked::Snapshot = checked {
                builder.set_repair_callback(redb::RepairSession::abort);
            }
            let mut db = create(&mut builder).map_err(|source| {
                StorageError::open(path, format!("{what} is unreadable: {source}"))
            })?;
            if let Checked::Snapshot = checked {
                return Ok(db);
            }
            match db.check_integrity() {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    path = %path.display(),
                    "state-machine file failed its integrity check and was repaired to its last intact commit; \
                     the raft log replays the rest"
                ),
                Err(error) => {
                    return Err(StorageError::open(
                        path,
                        format!("{what} is corrupt: {error}"),
                    ));
                }
            }
            Ok(db)
        },
    ));
    match attempt {
        Ok(result) => result,
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown damage".to_owned());
            Err(StorageError::open(
                path,
                format!("{what} is corrupt: {detail}"),
            ))
        }
    }
}

/// The record of member `id`, read inside a write transaction.
pub fn member(tx: &redb::WriteTransaction, id: u64) -> Result<Option<MemberRecord>, StorageError> {
    let table = tx.open_table(MEMBERS).map_err(StorageError::backend)?;
    let Some(value) = table.get(id).map_err(StorageError::backend)? else {
        return Ok(None);
    };
    MemberRecord::decode(value.value())
        .map(Some)
        .map_err(|e| StorageError::corrupt(format!("member {id:x}: {e}")))
}

pub fn put_member(tx: &redb::WriteTransaction, member: &MemberRecord) -> Result<(), StorageError> {
    let mut table = tx.open_table(MEMBERS).map_err(StorageError::backend)?;
    table
        .insert(member.id, member.encode_to_vec().as_slice())
        .map_err(StorageError::backend)?;
    Ok(())
}

pub fn remove_member(tx: &redb::WriteTransaction, id: u64) -> Result<(), StorageError> {
    let mut table = tx.open_table(MEMBERS).map_err(StorageError::backend)?;
    table.remove(id).map_err(StorageError::backend)?;
    let mut removed = tx.open_table(REMOVED).map_err(StorageError::backend)?;
    removed.insert(id, ()).map_err(StorageError::backend)?;
    Ok(())
}

/// Reads a `u64` meta value; absent means 0.
pub fn read_meta_u64(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<u64, StorageError> {
    match table.get(name).map_err(StorageError::backend)? {
        None => Ok(0),
        Some(value) => meta_u64(name, value.value()),
    }
}

/// The number a meta row holds.
pub fn meta_u64(name: &str, value: &[u8]) -> Result<u64, StorageError> {
    let bytes: [u8; 8] = value.try_into().map_err(|_| StorageError::Corrupt {
        what: format!("meta key {name} is not 8 bytes"),
    })?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn write_meta_u64(
    table: &mut redb::Table<&'static str, &'static [u8]>,
    name: &str,
    value: u64,
) -> Result<(), StorageError> {
    table
        .insert(name, value.to_be_bytes().as_slice())
        .map_err(StorageError::backend)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_meta(backend: &Backend, name: &str, value: u64) {
        let mut tx = backend.begin_write().expect("write");
        {
            let mut meta = tx.open_table(META).expect("meta");
            write_meta_u64(&mut meta, name, value).expect("meta");
        }
        tx.set_durability(redb::Durability::Immediate)
            .expect("durable");
        tx.commit().expect("commit");
    }

    fn meta(tx: &redb::ReadTransaction, name: &str) -> u64 {
        read_meta_u64(&tx.open_table(META).expect("meta"), name).expect("read")
    }

    /// Goal: the size on disk follows the file as it grows, though it is measured only after a
    /// write (and asking again without one gives the same answer).
    #[test]
    fn the_size_on_disk_follows_writes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Backend::open(&dir.path().join("db")).expect("open");
        let before = backend.size_bytes();
        assert_eq!(backend.size_bytes(), before);
        for round in 0..64_u64 {
            let mut tx = backend.begin_write().expect("write");
            {
                let mut keys = tx.open_table(KEY).expect("key");
                for n in 0..64_u64 {
                    let key = (round * 64 + n).to_be_bytes();
                    keys.insert(&key[..], &[7_u8; 1024][..]).expect("insert");
                }
            }
            tx.set_durability(redb::Durability::Immediate)
                .expect("durable");
            tx.commit().expect("commit");
        }
        let after = backend.size_bytes();
        assert!(after >= before + (4 << 20), "{before} then {after}");
        assert_eq!(
            after,
            backend
                .disk()
                .size_on_disk(backend.path())
                .expect("measure")
        );
    }

    /// Goal: a snapshot file that was never closed (its process died while writing it), which
    /// redb would repair to an earlier commit, is refused, and the state machine is untouched.
    #[test]
    fn a_snapshot_file_redb_would_have_to_repair_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let follower = Backend::open(&dir.path().join("db")).expect("open");
        follower
            .write_bootstrap(7, 2, &[], Some(b"conf"))
            .expect("bootstrap");
        put_meta(&follower, META_APPLIED_INDEX, 10);
        let snapshot = dir.path().join("snapshot.db");
        let unclosed = Database::create(&snapshot).expect("create");
        let tx = unclosed.begin_write().expect("write");
        tx.open_table(META).expect("meta");
        tx.commit().expect("commit");
        // Never dropped: the file stays marked as open, as after a crash.
        std::mem::forget(unclosed);
        let refused = follower
            .install_snapshot_file(&snapshot, b"new conf")
            .expect_err("a file that needs repair was installed");
        assert!(refused.to_string().contains("snapshot file"), "{refused}");
        assert_eq!(
            meta(&follower.begin_read().expect("read"), META_APPLIED_INDEX),
            10
        );
    }

    /// Goal: a snapshot file built from the leader's rows becomes the state-machine file, under
    /// this member's own id and boot epoch with the snapshot's configuration; a read begun before
    /// the install goes on reading the old state to its end; and the file at the state machine's
    /// path is the new one when reopened.
    #[test]
    fn an_installed_snapshot_file_replaces_the_state_machine_under_its_readers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let follower = Backend::open(&path).expect("open");
        follower
            .write_bootstrap(7, 2, &[], Some(b"old conf"))
            .expect("bootstrap");
        put_meta(&follower, META_BOOT_EPOCH, 5);
        put_meta(&follower, META_APPLIED_INDEX, 10);

        let leader = Backend::open(&dir.path().join("leader")).expect("open leader");
        leader
            .write_bootstrap(7, 1, &[], Some(b"leader conf"))
            .expect("bootstrap");
        put_meta(&leader, META_APPLIED_INDEX, 500);
        let snapshot = dir.path().join("snapshot.db");
        let chunks = crate::snapshot::rows_in_memory(&leader.begin_read().expect("read"), 1 << 20)
            .expect("stream");
        crate::snapshot::build_from_rows(&RealDisk, &snapshot, &mut chunks.into_iter())
            .expect("build");

        let before = follower.begin_read().expect("read");
        follower
            .install_snapshot_file(&snapshot, b"new conf")
            .expect("install");
        assert!(
            !snapshot.exists(),
            "the snapshot file became the state machine"
        );
        assert_eq!(
            meta(&before, META_APPLIED_INDEX),
            10,
            "an open read sees the old state"
        );
        drop(before);

        let check = |backend: &Backend| {
            let tx = backend.begin_read().expect("read");
            assert_eq!(meta(&tx, META_MEMBER_ID), 2, "the member keeps its own id");
            assert_eq!(meta(&tx, META_BOOT_EPOCH), 5, "and its boot epoch");
            let conf = tx.open_table(META).expect("meta");
            let conf = conf.get(META_CONF_STATE).expect("get").expect("conf");
            assert_eq!(conf.value(), b"new conf");
        };
        check(&follower);
        assert_eq!(
            meta(&follower.begin_read().expect("read"), META_APPLIED_INDEX),
            500
        );
        // Writes go to the new file, and so does what a restart opens.
        put_meta(&follower, META_APPLIED_INDEX, 501);
        drop(follower);
        let reopened = Backend::open(&path).expect("reopen");
        assert_eq!(
            meta(&reopened.begin_read().expect("read"), META_APPLIED_INDEX),
            501
        );
        check(&reopened);
    }
}
