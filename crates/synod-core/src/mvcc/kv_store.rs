//! The multi-version key-value store (etcd `mvcc/kvstore.go`, `kvstore_txn.go`).
//!
//! [`KvStore`] pairs the in-memory [`TreeIndex`] with the `key` table of the state-machine file.
//! Readers take a snapshot of the published revision, open a redb read transaction while holding
//! the index lock, and then read values outside the lock. The apply path writes through a
//! [`WriteBatch`] (one redb write transaction for many Raft entries) in which each request is one
//! [`RevisionTxn`]; the batch publishes its revision only after its redb commit, so no reader ever
//! sees a revision whose values are not readable.
//!
//! Lock order: `state` is the only lock here; it is never held across a call into redb other than
//! `begin_read`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use prost::Message;
use redb::ReadableTable;
use synod_api::mvccpb::{Event, KeyValue, event::EventType};

use super::key_index::{KeyAt, KeyRange, TreeIndex};
use super::revision::Revision;
use super::rows;
use crate::backend::{self, Backend, KEY, META, VALUE};
use crate::counters::MvccCounters;
use crate::crc32c;
use crate::error::{Error, RequestError, StorageError};

/// Options of a read, as in etcd's `RangeOptions`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RangeOptions {
    /// Revision to read at; 0 or less means the latest.
    pub revision: i64,
    /// Maximum keys to return; 0 means no limit.
    pub limit: usize,
    /// Return only the count.
    pub count_only: bool,
}

/// The answer to a read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the read revision, regardless of the limit.
    pub count: i64,
    /// The store's revision when the read was served (not the revision read at).
    pub revision: i64,
}

/// A live key and the lease it carries.
pub type LeasedKey = (Vec<u8>, i64);

#[derive(Debug)]
struct IndexState {
    index: TreeIndex,
    /// The latest revision whose writes are committed to redb and visible to readers.
    current: i64,
    /// Reads below this revision fail with `Compacted`.
    compact: i64,
    /// Whether a compaction's old revisions are still being removed (read at load).
    sweeping: bool,
}

/// The MVCC store of one member.
pub struct KvStore {
    backend: Arc<Backend>,
    state: RwLock<IndexState>,
    counters: MvccCounters,
    /// Whether [`WriteBatch::sweep`] has rows to remove: without one, applying an entry does not
    /// read the meta table to find out.
    sweeping: AtomicBool,
}

/// Result of looking up revisions under the index lock.
struct Lookup {
    keys: Vec<(Vec<u8>, KeyAt)>,
    count: i64,
}

impl KvStore {
    /// Opens the store over `backend`, rebuilding the key index from the key table. Also returns
    /// every live key that carries a lease, with its lease, for the lessor.
    pub fn open(backend: Arc<Backend>) -> Result<(KvStore, Vec<LeasedKey>), StorageError> {
        let (state, leased) = load(&backend)?;
        let store = KvStore {
            backend,
            sweeping: AtomicBool::new(state.sweeping),
            state: RwLock::new(state),
            counters: MvccCounters::default(),
        };
        Ok((store, leased))
    }

    /// Replaces the whole store with the snapshot file at `path` (a follower catching up from
    /// the leader's snapshot) and takes the index `prepared` from the same rows, or rebuilds it
    /// from the file. Readers see the old store or the new one, never a mix: the index lock is
    /// held across the replacement. `conf_state` (an encoded `ConfState`) is recorded with it.
    /// Returns the leased keys.
    pub fn restore_from(
        &self,
        path: &std::path::Path,
        conf_state: &[u8],
        prepared: Option<PreparedIndex>,
    ) -> Result<Vec<LeasedKey>, StorageError> {
        let mut state = self.write_state()?;
        self.backend.install_snapshot_file(path, conf_state)?;
        let (fresh, leased) = match prepared {
            Some(PreparedIndex { state, leased }) => (state, leased),
            None => {
                // The log's timestamps tell how a catch-up's time splits (core reads no clock).
                tracing::info!(
                    "snapshot file installed as the state machine; rebuilding the key index"
                );
                load(&self.backend)?
            }
        };
        self.sweeping.store(fresh.sweeping, Ordering::Relaxed);
        *state = fresh;
        Ok(leased)
    }

    fn read_state(&self) -> Result<RwLockReadGuard<'_, IndexState>, StorageError> {
        self.state.read().map_err(|_| StorageError::Poisoned)
    }

    fn write_state(&self) -> Result<RwLockWriteGuard<'_, IndexState>, StorageError> {
        self.state.write().map_err(|_| StorageError::Poisoned)
    }

    /// The latest published revision.
    pub fn current_revision(&self) -> i64 {
        self.state.read().map(|s| s.current).unwrap_or(0)
    }

    /// The compaction revision: history below it is gone; -1 before the first compaction.
    pub fn compact_revision(&self) -> i64 {
        self.state.read().map(|s| s.compact).unwrap_or(0)
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// What this store did since the member started.
    pub fn counters(&self) -> &MvccCounters {
        &self.counters
    }

    /// Keys in the index, deleted ones whose history is not compacted away included (etcd's
    /// `keys_total` counts the same).
    pub fn keys(&self) -> usize {
        self.state.read().map(|s| s.index.len()).unwrap_or(0)
    }

    /// Reads `[key, range_end)` at a revision; see [`RangeOptions`].
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, Error> {
        let (tx, current, lookup) = {
            let state = self.read_state()?;
            let at = check_read_revision(options.revision, state.current, state.compact)?;
            // The read transaction starts under the lock so that a concurrent compaction, which
            // takes the lock before deleting, cannot remove what the index lookup returns.
            let tx = self.backend.begin_read()?;
            let lookup = lookup(&state.index, KeyRange::new(key, range_end), at, options);
            (tx, state.current, lookup)
        };
        let table = tx.open_table(KEY).map_err(StorageError::backend)?;
        let values = tx.open_table(VALUE).map_err(StorageError::backend)?;
        let kvs = fetch(&table, &values, &lookup.keys)?;
        Ok(RangeResult {
            kvs,
            count: lookup.count,
            revision: current,
        })
    }

    /// Returns the events of revisions `from..=to` for keys in `range`, oldest first, stopping
    /// after `revisions_max` distinct revisions. Used by watchers catching up from history.
    pub fn events(&self, from: i64, to: i64, revisions_max: usize) -> Result<Vec<Event>, Error> {
        let tx = {
            let state = self.read_state()?;
            if from < state.compact {
                return Err(RequestError::Compacted.into());
            }
            self.backend.begin_read()?
        };
        let table = tx.open_table(KEY).map_err(StorageError::backend)?;
        let values = tx.open_table(VALUE).map_err(StorageError::backend)?;
        let start = Revision::lower_bound(from);
        let end = Revision::lower_bound(to.saturating_add(1));
        let mut events = Vec::new();
        let mut revisions = 0;
        let mut last_main = 0;
        for entry in table
            .range(start.as_slice()..end.as_slice())
            .map_err(StorageError::backend)?
        {
            let (rev_bytes, value) = entry.map_err(StorageError::backend)?;
            let (rev, tombstone) = Revision::from_bytes(rev_bytes.value())
                .ok_or_else(|| StorageError::corrupt("key table holds a malformed revision"))?;
            if rev.main != last_main {
                if revisions == revisions_max {
                    break;
                }
                revisions += 1;
                last_main = rev.main;
            }
            let mut kv = rows::decode(&values, rev_bytes.value(), value.value())?;
            let kind = if tombstone {
                kv.mod_revision = rev.main;
                EventType::Delete
            } else {
                EventType::Put
            };
            events.push(Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv: None,
            });
        }
        Ok(events)
    }

    /// etcd's `HashKV`: CRC-32C over the table name and the (revision, value) pairs at or below
    /// `revision` (0 means the latest). Below the compaction point only revisions still visible
    /// at `revision` count (etcd's `kvindex.Keep(rev)`); when none is (etcd then hashes every
    /// row still on disk there), the rows the compaction keeps. So the hash does not depend on
    /// how far a compaction's removal has got, and it equals etcd's for the same history.
    /// Returns (hash, compact revision, hashed revision).
    pub fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), Error> {
        let (tx, at, compact, visible, kept) = {
            let state = self.read_state()?;
            let at = check_read_revision(revision, state.current, state.compact)?;
            let mut visible = std::collections::HashSet::new();
            state.index.visit(KeyRange::From(&[]), at, |_, key_at| {
                visible.insert(key_at.modified);
                true
            });
            let kept = if visible.is_empty() && state.compact > 0 {
                state.index.kept_by_compaction(state.compact)
            } else {
                std::collections::HashSet::new()
            };
            (self.backend.begin_read()?, at, state.compact, visible, kept)
        };
        let table = tx.open_table(KEY).map_err(StorageError::backend)?;
        let values = tx.open_table(VALUE).map_err(StorageError::backend)?;
        let mut hash = crc32c::Hasher::new();
        hash.update(b"key");
        let end = Revision::lower_bound(at.saturating_add(1));
        for entry in table
            .range(..end.as_slice())
            .map_err(StorageError::backend)?
        {
            let (rev_bytes, value) = entry.map_err(StorageError::backend)?;
            let (rev, _) = Revision::from_bytes(rev_bytes.value())
                .ok_or_else(|| StorageError::corrupt("key table holds a malformed revision"))?;
            if rev.main <= compact {
                let counted = if visible.is_empty() {
                    kept.contains(&rev)
                } else {
                    visible.contains(&rev)
                };
                if !counted {
                    continue;
                }
            }
            hash.update(rev_bytes.value());
            hash.update(&rows::etcd_row(&values, rev_bytes.value(), value.value())?);
        }
        Ok((hash.finish(), compact, at))
    }

    /// Starts a write batch: one redb transaction for the entries of one apply turn.
    pub fn begin_batch(&self) -> Result<WriteBatch<'_>, StorageError> {
        let current = self.read_state()?.current;
        Ok(WriteBatch {
            store: self,
            tx: self.backend.begin_write()?,
            current,
            events: Vec::new(),
            pending_compact: None,
        })
    }
}

/// Resolves the revision a read is served at, or refuses it.
fn check_read_revision(requested: i64, current: i64, compact: i64) -> Result<i64, RequestError> {
    if requested > current {
        return Err(RequestError::FutureRevision);
    }
    let at = if requested <= 0 { current } else { requested };
    if at < compact {
        return Err(RequestError::Compacted);
    }
    Ok(at)
}

fn lookup(index: &TreeIndex, range: KeyRange<'_>, at: i64, options: RangeOptions) -> Lookup {
    let mut keys = Vec::new();
    let mut count = 0i64;
    index.visit(range, at, |key, state| {
        count += 1;
        if !options.count_only && (options.limit == 0 || keys.len() < options.limit) {
            keys.push((key.to_vec(), state));
        }
        true
    });
    Lookup { keys, count }
}

fn fetch(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    values: &impl ReadableTable<&'static [u8], &'static [u8]>,
    keys: &[(Vec<u8>, KeyAt)],
) -> Result<Vec<KeyValue>, StorageError> {
    let mut kvs = Vec::with_capacity(keys.len());
    for (key, state) in keys {
        let rev_bytes = state.modified.to_bytes(false);
        let value = table
            .get(rev_bytes.as_slice())
            .map_err(StorageError::backend)?
            .ok_or_else(|| {
                StorageError::corrupt(format!(
                    "key {:?} at revision {}/{} is in the index but not in the key table",
                    String::from_utf8_lossy(key),
                    state.modified.main,
                    state.modified.sub
                ))
            })?;
        kvs.push(rows::decode(values, &rev_bytes, value.value())?);
    }
    Ok(kvs)
}

/// One redb write transaction covering the requests of one apply turn.
pub struct WriteBatch<'s> {
    store: &'s KvStore,
    tx: redb::WriteTransaction,
    /// The revision of the last request written in this batch.
    current: i64,
    events: Vec<Event>,
    /// A compaction done in this batch, published with its commit.
    pending_compact: Option<i64>,
}

impl<'s> WriteBatch<'s> {
    /// The redb transaction, for the other tables written in the same batch.
    pub fn transaction(&self) -> &redb::WriteTransaction {
        &self.tx
    }

    /// The revision of the last request written so far.
    pub fn revision(&self) -> i64 {
        self.current
    }

    /// Moves the store to `revision` without a change (an import from another store continues
    /// at that store's revisions). The caller has checked that `revision` is ahead.
    pub fn skip_to(&mut self, revision: i64) {
        self.current = self.current.max(revision);
    }

    /// Writes a key's record as another store has it (`synod migrate`'s base copy): at
    /// `(kv.mod_revision, sub)` in the history, with its create revision and version in the
    /// index. No event: the store is empty and nobody watches it yet.
    pub fn import_key(&mut self, kv: &KeyValue, sub: i64) -> Result<(), StorageError> {
        let rev = Revision::new(kv.mod_revision, sub);
        let mut table = self.tx.open_table(KEY).map_err(StorageError::backend)?;
        rows::write(&self.tx, &mut table, &rev.to_bytes(false), kv)?;
        self.store
            .write_state()?
            .index
            .restore(&kv.key, rev, kv.create_revision, kv.version);
        Ok(())
    }

    /// Starts one request: every change it makes shares the next revision.
    pub fn begin(&mut self) -> RevisionTxn<'_, 's> {
        let main = self.current + 1;
        RevisionTxn {
            batch: self,
            main,
            changes: Vec::new(),
        }
    }

    /// Compacts history below `revision`: the index forgets it when the batch commits, and the
    /// key table drops it a few rows per applied entry from then on ([`WriteBatch::sweep`]), so
    /// no single apply turn pays for the whole removal.
    pub fn compact(&mut self, revision: i64) -> Result<(), Error> {
        // Readers see the compaction only when the batch commits (see `commit`): until then the
        // published revision may be below `revision`, and the latest state must stay readable.
        // Requests later in this batch see it at once, through `pending_compact`.
        {
            let state = self.store.read_state()?;
            if revision <= state.compact.max(self.pending_compact.unwrap_or(-1)) {
                return Err(RequestError::Compacted.into());
            }
            if revision > self.current {
                return Err(RequestError::FutureRevision.into());
            }
        }
        let mut meta = self.tx.open_table(META).map_err(StorageError::backend)?;
        backend::write_meta_u64(&mut meta, backend::META_COMPACT_REVISION, revision as u64)?;
        // A later compaction removes more, from the start again: revisions an earlier one kept
        // may be gone at this one.
        backend::write_meta_u64(&mut meta, backend::META_SWEEP_UNTIL, revision as u64)?;
        meta.remove(backend::META_SWEEP_FROM)
            .map_err(StorageError::backend)?;
        self.store.sweeping.store(true, Ordering::Relaxed);
        self.pending_compact = Some(revision);
        Ok(())
    }

    /// Removes up to `rows_max` rows' worth of old revisions that compaction no longer keeps.
    /// Called once per applied entry, so every member removes the same rows at the same entry and
    /// their key tables stay equal entry by entry. Reads never reach these rows (the index has
    /// forgotten them, or forgets them when the compaction's batch commits), and `HashKV` skips
    /// them, so how far the removal has got is invisible.
    pub fn sweep(&mut self, rows_max: usize) -> Result<(), StorageError> {
        if !self.store.sweeping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (until, from) = {
            let meta = self.tx.open_table(META).map_err(StorageError::backend)?;
            let until = backend::read_meta_u64(&meta, backend::META_SWEEP_UNTIL)? as i64;
            if until <= 0 {
                self.store.sweeping.store(false, Ordering::Relaxed);
                return Ok(());
            }
            let from = meta
                .get(backend::META_SWEEP_FROM)
                .map_err(StorageError::backend)?
                .map(|value| value.value().to_vec())
                .unwrap_or_default();
            (until, from)
        };
        let end = Revision::lower_bound(until + 1);
        let mut examined = 0;
        let mut next: Option<Vec<u8>> = None;
        let mut garbage: Vec<(Vec<u8>, bool)> = Vec::new();
        {
            let table = self.tx.open_table(KEY).map_err(StorageError::backend)?;
            let state = self.store.read_state()?;
            for entry in table
                .range(from.as_slice()..end.as_slice())
                .map_err(StorageError::backend)?
            {
                let (rev_bytes, row) = entry.map_err(StorageError::backend)?;
                if examined == rows_max {
                    next = Some(rev_bytes.value().to_vec());
                    break;
                }
                examined += 1;
                let Some((rev, _)) = Revision::from_bytes(rev_bytes.value()) else {
                    continue;
                };
                let kv = KeyValue::decode(row.value())
                    .map_err(|e| StorageError::corrupt(e.to_string()))?;
                if !state.index.keeps(&kv.key, rev, until) {
                    garbage.push((
                        rev_bytes.value().to_vec(),
                        rows::spilled_len(row.value()).is_some(),
                    ));
                }
            }
        }
        if !garbage.is_empty() {
            let mut table = self.tx.open_table(KEY).map_err(StorageError::backend)?;
            let mut values = self.tx.open_table(VALUE).map_err(StorageError::backend)?;
            for (revision, spilled) in &garbage {
                table
                    .remove(revision.as_slice())
                    .map_err(StorageError::backend)?;
                if *spilled {
                    rows::remove_value(&mut values, revision)?;
                }
            }
            self.store.counters.compacted_keys.add(garbage.len() as u64);
        }
        let mut meta = self.tx.open_table(META).map_err(StorageError::backend)?;
        match next {
            Some(next) => {
                meta.insert(backend::META_SWEEP_FROM, next.as_slice())
                    .map_err(StorageError::backend)?;
            }
            None => {
                meta.remove(backend::META_SWEEP_UNTIL)
                    .map_err(StorageError::backend)?;
                meta.remove(backend::META_SWEEP_FROM)
                    .map_err(StorageError::backend)?;
                self.store.sweeping.store(false, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Commits the batch and publishes its revision (and its compaction, if any, at the same
    /// moment). Returns the events it produced, in order.
    pub fn commit(self, durable: bool) -> Result<Vec<Event>, StorageError> {
        let WriteBatch {
            store,
            mut tx,
            current,
            events,
            pending_compact,
        } = self;
        if durable {
            tx.set_durability(redb::Durability::Immediate)
                .map_err(StorageError::backend)?;
            tx.set_quick_repair(true);
        } else {
            tx.set_durability(redb::Durability::None)
                .map_err(StorageError::backend)?;
        }
        // With a compaction, the index lock is taken before the commit: no reader may open a
        // redb snapshot without the compacted values while the index still lists them.
        let mut compacting = match pending_compact {
            Some(_) => Some(store.write_state()?),
            None => None,
        };
        tx.commit().map_err(StorageError::backend)?;
        let mut state = match compacting.take() {
            Some(state) => state,
            None => store.write_state()?,
        };
        assert!(current >= state.current, "revisions never go back");
        if let Some(revision) = pending_compact {
            state.index.compact(revision);
            state.compact = revision;
        }
        state.current = current;
        Ok(events)
    }
}

/// The changes of one request, all at revision `main`.
pub struct RevisionTxn<'b, 's> {
    batch: &'b mut WriteBatch<'s>,
    main: i64,
    changes: Vec<Event>,
}

impl RevisionTxn<'_, '_> {
    /// The revision reads in this request see: the request's own changes are visible to it.
    pub fn read_revision(&self) -> i64 {
        if self.changes.is_empty() {
            self.main - 1
        } else {
            self.main
        }
    }

    /// The compaction revision as this request sees it.
    pub fn compact_revision(&self) -> i64 {
        self.batch
            .store
            .compact_revision()
            .max(self.batch.pending_compact.unwrap_or(-1))
    }

    /// Reads through the batch's transaction, seeing every earlier write of the batch.
    pub fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, Error> {
        let current = self.read_revision();
        let lookup = {
            let state = self.batch.store.read_state()?;
            let compact = state.compact.max(self.batch.pending_compact.unwrap_or(-1));
            let at = check_read_revision(options.revision, current, compact)?;
            lookup(&state.index, KeyRange::new(key, range_end), at, options)
        };
        let table = self
            .batch
            .tx
            .open_table(KEY)
            .map_err(StorageError::backend)?;
        let values = self
            .batch
            .tx
            .open_table(VALUE)
            .map_err(StorageError::backend)?;
        let kvs = fetch(&table, &values, &lookup.keys)?;
        Ok(RangeResult {
            kvs,
            count: lookup.count,
            revision: current,
        })
    }

    /// The counters of the store this request writes to.
    pub fn counters(&self) -> &MvccCounters {
        &self.batch.store.counters
    }

    /// Returns the live value of one key as this request sees it.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>, Error> {
        let mut result = self.range(key, &[], RangeOptions::default())?;
        Ok(result.kvs.pop())
    }

    /// Writes `key`; returns the new value.
    pub fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<KeyValue, Error> {
        self.batch.store.counters.puts.inc();
        let rev = Revision::new(self.main, self.changes.len() as i64);
        let previous = self.batch.store.read_state()?.index.get(key, self.main);
        let (create_revision, version) = match previous {
            Some(state) => (state.created.main, state.version + 1),
            None => (self.main, 1),
        };
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision,
            mod_revision: self.main,
            version,
            value,
            lease,
        };
        self.write_revision(rev, false, &kv)?;
        self.batch.store.write_state()?.index.put(key, rev);
        self.changes.push(Event {
            r#type: EventType::Put as i32,
            kv: Some(kv.clone()),
            prev_kv: None,
        });
        Ok(kv)
    }

    /// Stores one change in the key table of the batch's transaction.
    fn write_revision(
        &self,
        rev: Revision,
        tombstone: bool,
        kv: &KeyValue,
    ) -> Result<(), StorageError> {
        let mut table = self
            .batch
            .tx
            .open_table(KEY)
            .map_err(StorageError::backend)?;
        rows::write(&self.batch.tx, &mut table, &rev.to_bytes(tombstone), kv)
    }

    /// Deletes every live key in the range; returns the deleted values.
    pub fn delete_range(&mut self, key: &[u8], range_end: &[u8]) -> Result<Vec<KeyValue>, Error> {
        self.batch.store.counters.deletes.inc();
        let deleted = self.range(key, range_end, RangeOptions::default())?.kvs;
        for kv in &deleted {
            let rev = Revision::new(self.main, self.changes.len() as i64);
            let tombstone = KeyValue {
                key: kv.key.clone(),
                ..KeyValue::default()
            };
            self.write_revision(rev, true, &tombstone)?;
            let was_live = self
                .batch
                .store
                .write_state()?
                .index
                .tombstone(&kv.key, rev);
            assert!(was_live, "a key read as live must be live in the index");
            let event_kv = KeyValue {
                mod_revision: self.main,
                ..tombstone
            };
            self.changes.push(Event {
                r#type: EventType::Delete as i32,
                kv: Some(event_kv),
                prev_kv: None,
            });
        }
        Ok(deleted)
    }

    /// Ends the request; returns the store revision after it (unchanged when it wrote nothing).
    pub fn end(self) -> i64 {
        if !self.changes.is_empty() {
            self.batch.current = self.main;
            self.batch.events.extend(self.changes);
        }
        self.batch.current
    }
}

/// Reads the key table and meta keys of `backend` into a fresh index.
fn load(backend: &Backend) -> Result<(IndexState, Vec<LeasedKey>), StorageError> {
    let tx = backend.begin_read()?;
    let meta = tx.open_table(META).map_err(StorageError::backend)?;
    let mut loader = IndexLoader::default();
    for name in [backend::META_COMPACT_REVISION, backend::META_SWEEP_UNTIL] {
        if let Some(value) = meta.get(name).map_err(StorageError::backend)? {
            loader.meta_row(name.as_bytes(), value.value())?;
        }
    }
    let table = tx.open_table(KEY).map_err(StorageError::backend)?;
    for entry in table.iter().map_err(StorageError::backend)? {
        let (rev_bytes, value) = entry.map_err(StorageError::backend)?;
        loader.key_row(rev_bytes.value(), value.value())?;
    }
    let PreparedIndex { state, leased } = loader.finish();
    Ok((state, leased))
}

/// The key index rebuilt from a state machine's rows before the store takes it: from the
/// rows of a snapshot stream while they arrive (see [`KvStore::restore_from`]).
#[derive(Debug)]
pub struct PreparedIndex {
    state: IndexState,
    leased: Vec<LeasedKey>,
}

/// Rebuilds the key index from the key table's rows, in revision order, and the meta rows that
/// say where compaction stands; the rows may come from the file or from a snapshot stream.
#[derive(Debug, Default)]
pub struct IndexLoader {
    index: TreeIndex,
    /// The highest revision seen.
    latest: i64,
    leased: std::collections::HashMap<Vec<u8>, i64>,
    /// None until the first compaction.
    compact: Option<i64>,
    sweeping: bool,
}

impl IndexLoader {
    /// One row of the key table; rows come in key (revision) order.
    pub fn key_row(&mut self, rev_bytes: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let (rev, tombstone) = Revision::from_bytes(rev_bytes).ok_or_else(|| {
            StorageError::corrupt(format!(
                "key table holds a malformed revision {rev_bytes:?}"
            ))
        })?;
        let kv = KeyValue::decode(value).map_err(|e| {
            StorageError::corrupt(format!(
                "key table value at revision {}/{}: {e}",
                rev.main, rev.sub
            ))
        })?;
        if tombstone {
            self.index.tombstone(&kv.key, rev);
            self.leased.remove(&kv.key);
        } else {
            self.index
                .restore(&kv.key, rev, kv.create_revision, kv.version);
            if kv.lease != 0 {
                self.leased.insert(kv.key, kv.lease);
            } else {
                self.leased.remove(&kv.key);
            }
        }
        self.latest = self.latest.max(rev.main);
        Ok(())
    }

    /// One row of the meta table; only the compaction's rows matter here.
    pub fn meta_row(&mut self, name: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let name = std::str::from_utf8(name).unwrap_or_default();
        if name == backend::META_COMPACT_REVISION {
            self.compact = Some(backend::meta_u64(name, value)? as i64);
        } else if name == backend::META_SWEEP_UNTIL {
            self.sweeping = backend::meta_u64(name, value)? > 0;
        }
        Ok(())
    }

    pub fn finish(mut self) -> PreparedIndex {
        // -1 until the first compaction, as in etcd: `Compact(0)` on a new store succeeds, and
        // HashKV reports -1 until then.
        let compact = self.compact.unwrap_or(-1);
        if compact > 0 {
            // Old revisions a compaction had not finished removing (see `WriteBatch::sweep`)
            // were read back; the index forgets them again.
            self.index.compact(compact);
        }
        PreparedIndex {
            state: IndexState {
                index: self.index,
                // A new store is at revision 1, as in etcd: the first write makes revision 2.
                current: self.latest.max(compact).max(1),
                compact,
                sweeping: self.sweeping,
            },
            leased: self.leased.into_iter().collect(),
        }
    }
}
