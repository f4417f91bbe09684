//! The state-machine file: one redb database holding key history, leases, members, alarms and the
//! meta keys (applied index, compaction points), all written in one transaction per apply batch.
//!
//! Commits are batched: most apply batches commit with [`redb::Durability::None`] (visible to
//! readers at once, not yet fsync'd) and every [`DurableEvery`] the batch commits durably. This is
//! safe because the Raft log is the durability point: after a crash redb reverts to its last
//! durable commit, whose applied index says where WAL replay starts (etcd's `cindex`).

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::StorageError;

/// Key history: revision bytes (see [`crate::mvcc::revision`]) to an encoded `mvccpb.KeyValue`.
pub const KEY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key");
/// Small named values; see the `META_*` names.
pub const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Leases: id to an encoded `synodpb.LeaseRecord`.
pub const LEASE: TableDefinition<i64, &[u8]> = TableDefinition::new("lease");
/// Members: id to an encoded `synodpb.MemberRecord`.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");
/// Raised alarms: (member id, alarm type).
pub const ALARM: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarm");

/// Index of the last Raft entry applied to this file.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// Term of the last Raft entry applied to this file.
pub const META_APPLIED_TERM: &str = "applied_term";
/// The latest compaction revision whose deletions are complete.
pub const META_COMPACT_REVISION: &str = "compact_revision";
/// The cluster id, fixed at bootstrap.
pub const META_CLUSTER_ID: &str = "cluster_id";
/// The Raft configuration (an encoded `eraftpb.ConfState`) as of the applied index.
pub const META_CONF_STATE: &str = "conf_state";

/// When an apply batch commits durably.
#[derive(Debug, Clone, Copy)]
pub struct DurableEvery {
    /// Commit durably once this many entries have been applied since the last durable commit.
    pub entries: u64,
}

/// The redb database of one member.
pub struct Backend {
    path: PathBuf,
    /// Write-locked only by defragmentation, which needs the database to itself.
    db: RwLock<Database>,
}

impl Backend {
    /// Opens (or creates) the state-machine file at `path`, creating every table.
    pub fn open(path: &Path) -> Result<Backend, StorageError> {
        let db = Database::builder()
            .set_cache_size(256 << 20)
            .create(path)
            .map_err(|source| StorageError::open(path, source))?;
        let tx = db.begin_write().map_err(StorageError::backend)?;
        {
            tx.open_table(KEY).map_err(StorageError::backend)?;
            tx.open_table(META).map_err(StorageError::backend)?;
            tx.open_table(LEASE).map_err(StorageError::backend)?;
            tx.open_table(MEMBERS).map_err(StorageError::backend)?;
            tx.open_table(ALARM).map_err(StorageError::backend)?;
        }
        tx.commit().map_err(StorageError::backend)?;
        Ok(Backend {
            path: path.to_path_buf(),
            db: RwLock::new(db),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn begin_read(&self) -> Result<redb::ReadTransaction, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?;
        db.begin_read().map_err(StorageError::backend)
    }

    pub fn begin_write(&self) -> Result<redb::WriteTransaction, StorageError> {
        let db = self.db.read().map_err(|_| StorageError::Poisoned)?;
        db.begin_write().map_err(StorageError::backend)
    }

    /// Size of the file on disk, in bytes.
    pub fn size_bytes(&self) -> u64 {
        std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0)
    }

    /// Rewrites the file to release free pages. Fails while a read transaction is open.
    pub fn defragment(&self) -> Result<(), StorageError> {
        let mut db = self.db.write().map_err(|_| StorageError::Poisoned)?;
        db.compact().map_err(StorageError::backend)?;
        Ok(())
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
