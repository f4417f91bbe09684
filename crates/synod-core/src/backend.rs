//! The state-machine file: one redb database holding key history, leases, members, alarms and the
//! meta keys (applied index, compaction points), all written in one transaction per apply batch.
//!
//! Commits are batched: most apply batches commit with [`redb::Durability::None`] (visible to
//! readers at once, not yet fsync'd) and every [`DurableEvery`] the batch commits durably. This is
//! safe because the Raft log is the durability point: after a crash redb reverts to its last
//! durable commit, whose applied index says where WAL replay starts (etcd's `cindex`).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use prost::Message;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use synod_api::synodpb::MemberRecord;

use crate::disk::{Boxed, Disk, RealDisk};
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

/// The redb database of one member.
pub struct Backend {
    path: PathBuf,
    /// Where snapshot files are written and read, and the file's size is measured.
    disk: Arc<dyn Disk>,
    /// Write-locked only by defragmentation, which needs the database to itself.
    db: RwLock<Database>,
}

impl Backend {
    /// Opens (or creates) the state-machine file at `path`, creating every table.
    pub fn open(path: &Path) -> Result<Backend, StorageError> {
        let db = open_checked(path, |builder| builder.create(path))?;
        Backend::with_tables(db, path, Arc::new(RealDisk))
    }

    /// Opens (or creates) the state machine on a storage backend of the caller's (the simulator's
    /// disk); `path` only names it in messages.
    pub fn open_on(
        storage: impl redb::StorageBackend,
        path: &Path,
        cache_bytes: usize,
        disk: Arc<dyn Disk>,
    ) -> Result<Backend, StorageError> {
        let db = open_checked(path, |builder| {
            builder
                .set_cache_size(cache_bytes)
                .create_with_backend(storage)
        })?;
        Backend::with_tables(db, path, disk)
    }

    fn with_tables(
        db: Database,
        path: &Path,
        disk: Arc<dyn Disk>,
    ) -> Result<Backend, StorageError> {
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
        tx.commit().map_err(StorageError::backend)?;
        Ok(Backend {
            path: path.to_path_buf(),
            disk,
            db: RwLock::new(db),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The disk snapshot files live on.
    pub fn disk(&self) -> &Arc<dyn Disk> {
        &self.disk
    }

    pub fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?;
        db.begin_read().map_err(StorageError::backend)
    }

    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?;
        db.begin_write().map_err(StorageError::backend)
    }

    /// The bytes the file occupies on disk (etcd's "physically allocated" database size): what
    /// the quota counts. redb extends its file by doubling it, sparse, so the file's length can
    /// run up to twice ahead of the pages it has written.
    pub fn size_bytes(&self) -> u64 {
        self.disk.size_on_disk(&self.path).unwrap_or(0)
    }

    /// Rewrites the file to release free pages. Fails while a read transaction is open.
    pub fn defragment(&self) -> Result<(), StorageError> {
        let mut db = self.db.write().map_err(|_| StorageError::Poisoned)?;
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

    /// Replaces the contents of every table with those of the snapshot file at `path`, in one
    /// durable transaction, keeping this member's own id and recording `conf_state` (the
    /// snapshot's Raft configuration, encoded). The caller holds whatever locks keep readers from
    /// mixing old and new contents (see `KvStore::restore_from`).
    pub fn restore_from(&self, path: &Path, conf_state: &[u8]) -> Result<(), StorageError> {
        let unreadable = |e: &dyn std::fmt::Display| {
            StorageError::open(path, format!("snapshot file is unreadable: {e}"))
        };
        let storage = self.disk.storage(path).map_err(|e| unreadable(&e))?;
        let source = Database::builder()
            .create_with_backend(Boxed(storage))
            .map_err(|e| unreadable(&e))?;
        let from = source.begin_read().map_err(StorageError::backend)?;
        let (member_id, _) = self.identity()?;
        let boot_epoch = {
            let tx = self.begin_read()?;
            let meta = tx.open_table(META).map_err(StorageError::backend)?;
            read_meta_u64(&meta, META_BOOT_EPOCH)?
        };
        let mut tx = self.begin_write()?;
        copy_tables(&from, &tx, true)?;
        {
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            write_meta_u64(&mut meta, META_MEMBER_ID, member_id)?;
            write_meta_u64(&mut meta, META_BOOT_EPOCH, boot_epoch)?;
            meta.insert(META_CONF_STATE, conf_state)
                .map_err(StorageError::backend)?;
        }
        tx.set_durability(redb::Durability::Immediate)
            .map_err(StorageError::backend)?;
        tx.commit().map_err(StorageError::backend)
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

/// Writes every table as `tx` sees it into a new file at `path`: the state-machine snapshot sent
/// to a follower that is too far behind for the log. Runs on any thread: `tx` is a consistent
/// view, so the node keeps applying while the copy is made.
pub fn export(
    disk: &dyn Disk,
    tx: &redb::ReadTransaction,
    path: &Path,
) -> Result<(), StorageError> {
    disk.remove(path).map_err(|e| StorageError::open(path, e))?;
    let storage = disk
        .storage(path)
        .map_err(|e| StorageError::open(path, e))?;
    let target = Database::builder()
        .create_with_backend(Boxed(storage))
        .map_err(|e| StorageError::open(path, e))?;
    let mut out = target.begin_write().map_err(StorageError::backend)?;
    copy_tables(tx, &out, false)?;
    out.set_durability(redb::Durability::Immediate)
        .map_err(StorageError::backend)?;
    out.commit().map_err(StorageError::backend)
}

/// Copies every table from `from` into `to`, whose tables are empty or, with `replace`, emptied
/// first.
fn copy_tables(
    from: &redb::ReadTransaction,
    to: &redb::WriteTransaction,
    replace: bool,
) -> Result<(), StorageError> {
    fn copy<K: redb::Key + 'static, V: redb::Value + 'static>(
        from: &redb::ReadTransaction,
        to: &redb::WriteTransaction,
        definition: TableDefinition<K, V>,
        replace: bool,
    ) -> Result<(), StorageError> {
        if replace {
            to.delete_table(definition).map_err(StorageError::backend)?;
        }
        let mut target = to.open_table(definition).map_err(StorageError::backend)?;
        let source = match from.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(StorageError::backend(error)),
        };
        // The target is empty (a fresh file, or a table just deleted) and the source iterates in
        // key order, so every row goes in at the end through one cursor: redb buffers such runs
        // and splices them in, about 3x faster than one `insert` per row.
        let mut cursor = target
            .upper_bound_mut(Bound::<K::SelfType<'_>>::Unbounded)
            .map_err(StorageError::backend)?;
        for entry in source.iter().map_err(StorageError::backend)? {
            let (key, value) = entry.map_err(StorageError::backend)?;
            cursor
                .insert_before(key.value(), value.value())
                .map_err(StorageError::backend)?;
        }
        cursor.close().map_err(StorageError::backend)
    }
    copy(from, to, KEY, replace)?;
    copy(from, to, VALUE, replace)?;
    copy(from, to, META, replace)?;
    copy(from, to, LEASE, replace)?;
    copy(from, to, MEMBERS, replace)?;
    copy(from, to, ALARM, replace)?;
    copy(from, to, REMOVED, replace)?;
    copy(from, to, AUTH_USERS, replace)?;
    copy(from, to, AUTH_ROLES, replace)?;
    copy(from, to, APPLIED_REQUESTS, replace)
}

/// redb's page cache. The operating system's page cache holds the file as well, so a larger one
/// mostly duplicates it: with 1,000,000 keys, 256 MiB of cache was a third of the member's RSS
/// and made the initial load no faster (docs/PERFORMANCE.md).
pub const CACHE_BYTES: usize = 32 << 20;

/// Opens the redb file and checks every page. redb reports some damage by panicking rather than
/// with an error; the panic is contained here and becomes a refusal to start that names the file.
fn open_checked(
    path: &Path,
    create: impl FnOnce(&mut redb::Builder) -> Result<Database, redb::DatabaseError>,
) -> Result<Database, StorageError> {
    let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
        || -> Result<Database, StorageError> {
            let mut db =
                create(Database::builder().set_cache_size(CACHE_BYTES)).map_err(|source| {
                    StorageError::open(path, format!("state-machine file is unreadable: {source}"))
                })?;
            // A torn last commit is rolled back to the previous intact one, which is safe: the Raft
            // log replays everything after its applied index.
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
                        format!("state-machine file is corrupt: {error}"),
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
                format!("state-machine file is corrupt: {detail}"),
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
        Some(value) => {
            let bytes: [u8; 8] = value
                .value()
                .try_into()
                .map_err(|_| StorageError::Corrupt {
                    what: format!("meta key {name} is not 8 bytes"),
                })?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
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
