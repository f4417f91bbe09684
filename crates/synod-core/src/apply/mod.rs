//! The apply path: committed Raft entries become changes to the MVCC store, the lessor and the
//! alarms, all written in one redb transaction per batch together with the applied index
//! (etcd `apply.go`, `txn/txn.go`).
//!
//! Entries at or below the durable applied index are skipped, so replaying the Raft log after a
//! crash is idempotent. Apply never reads a clock and never formats wire errors: a refused request
//! is a [`RequestError`] value in the result, and only disk failures are errors of the batch.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use raft::eraftpb::{ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType};
use redb::ReadableTable;
use synod_api::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionResponse, Compare,
    DeleteRangeRequest, DeleteRangeResponse, LeaseCheckpointResponse, LeaseGrantResponse,
    LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    alarm_request::AlarmAction,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, response_op,
};
use synod_api::mvccpb::KeyValue;
use synod_api::synodpb::{
    AuthHeader, InternalRequest, MemberChange, MemberRecord, internal_request::Request,
};

use crate::auth::{AuthStore, Change};
use crate::backend::{self, ALARM, Backend, META};
use crate::error::{Error, RequestError, StorageError};
use crate::lease::Lessor;
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::kv_store::{KvStore, PreparedIndex, RangeOptions, RangeResult, RevisionTxn};
use crate::watch::WatchHub;

mod checks;
mod dedup;
mod permissions;
mod read;
mod requests;

use checks::{check_ignore_targets, check_txn, taken_branch};
pub use dedup::DEDUP_WINDOW_ENTRIES;
use dedup::{RecentRequests, read_recent_requests};
pub use permissions::check_lease_keys;
use read::txn_path;
pub use read::{ReadView, compare_holds, execute_range, txn_puts, txn_writes};
use requests::operation_name;

/// A successful answer of the state machine to one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Response {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    Alarm(AlarmResponse),
    /// A membership change (add, promote, remove, update) took effect; the member as it is now
    /// (as it was, for a removal).
    Member(MemberRecord),
    /// An Auth-service change took effect, or a token was issued.
    Auth(crate::auth::Outcome),
    /// An import from another store (`synod migrate`) was applied; the store's revision now.
    Imported {
        revision: i64,
    },
    /// A ZooKeeper write was applied, or refused operation by operation.
    Zk(crate::zk::ZkOutcome),
}

/// The cluster-wide key of a proposed request: the member that proposed it and its id there.
/// A request is applied at most once per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestKey {
    pub origin: u64,
    pub id: u64,
}

/// The outcome of one request.
pub type ApplyResult = Result<Response, RequestError>;

/// What applying a batch produced.
#[derive(Debug, Default)]
pub struct Applied {
    /// Outcomes keyed by request, for the waiters of the proposing member.
    pub results: Vec<(RequestKey, ApplyResult)>,
    /// The store revision after the batch.
    pub revision: i64,
}

/// Told of each request as the state machine applies it, so the shell can time it (the core
/// reads no clock): `started` before the request, `finished` after it with etcd's name for the
/// operation (`etcd_server_apply_duration_seconds`' `op`) and whether it succeeded (as etcd
/// counts it: done, or refused only because its revision was compacted).
pub trait ApplyObserver: Send {
    fn started(&mut self);
    fn finished(&mut self, op: &'static str, success: bool);
}

/// The alarms raised in the cluster, shared with the request handlers.
#[derive(Debug, Default)]
pub struct Alarms {
    raised: Mutex<BTreeSet<(u64, i32)>>,
}

impl Alarms {
    fn lock(&self) -> MutexGuard<'_, BTreeSet<(u64, i32)>> {
        self.raised
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every raised alarm as (member id, alarm type).
    pub fn list(&self) -> Vec<(u64, i32)> {
        self.lock().iter().copied().collect()
    }

    /// Replaces the raised alarms with those stored in `tx` (after a snapshot was installed).
    fn reload(&self, tx: &redb::ReadTransaction) -> Result<(), StorageError> {
        *self.lock() = read_alarms(tx)?;
        Ok(())
    }

    /// Returns whether any member raised an alarm of this type.
    pub fn is_raised(&self, alarm: AlarmType) -> bool {
        self.lock().iter().any(|(_, kind)| *kind == alarm as i32)
    }
}

/// Every raised alarm recorded in the file: (member id, alarm type).
pub(crate) fn read_alarms(
    tx: &redb::ReadTransaction,
) -> Result<BTreeSet<(u64, i32)>, StorageError> {
    let mut raised = BTreeSet::new();
    for entry in tx
        .open_table(ALARM)
        .map_err(StorageError::backend)?
        .iter()
        .map_err(StorageError::backend)?
    {
        let (key, _) = entry.map_err(StorageError::backend)?;
        raised.insert(key.value());
    }
    Ok(raised)
}

/// Reads the proposer's request id, the change and the member from a configuration-change entry
/// (Synod proposes one change per entry, with a `MemberChange` as its context). Entries without
/// one (raft-rs's own empty changes) change no member.
fn member_change(entry: &Entry) -> Option<(RequestKey, ConfChangeType, MemberRecord)> {
    let (kind, context) = if entry.get_entry_type() == EntryType::EntryConfChange {
        let change: ConfChange = protobuf::Message::parse_from_bytes(&entry.data).ok()?;
        (change.get_change_type(), change.context.to_vec())
    } else {
        let change: ConfChangeV2 = protobuf::Message::parse_from_bytes(&entry.data).ok()?;
        let single = change.changes.first()?;
        (single.get_change_type(), change.context.to_vec())
    };
    let context = MemberChange::decode(context.as_slice()).ok()?;
    let key = RequestKey {
        origin: context.origin,
        id: context.id,
    };
    Some((key, kind, context.member?))
}

/// Rows a compaction's removal examines per applied entry: at 2,000 entries a second, 512,000
/// rows a second, in slices of about a millisecond.
const SWEEP_ROWS_PER_ENTRY: usize = 256;

/// The member's state machine: MVCC store, lessor, watch hub and alarms over one backend.
pub struct StateMachine {
    backend: Arc<Backend>,
    store: Arc<KvStore>,
    lessor: Arc<Lessor>,
    hub: Arc<WatchHub>,
    alarms: Arc<Alarms>,
    auth: Arc<AuthStore>,
    applied_index: u64,
    applied_term: u64,
    durable_applied_index: u64,
    durable_every_entries: u64,
    /// The requests applied in the last [`DEDUP_WINDOW_ENTRIES`] entries (the in-memory copy of
    /// the `APPLIED_REQUESTS` table).
    recent_requests: RecentRequests,
    observer: Option<Box<dyn ApplyObserver>>,
}

impl StateMachine {
    /// Opens the state machine in `backend`; `tick_ms` and `lease_ttl_min_seconds` configure the
    /// lessor, `durable_every_entries` how often apply batches commit durably.
    pub fn open(
        backend: Arc<Backend>,
        tick_ms: u64,
        lease_ttl_min_seconds: i64,
        durable_every_entries: u64,
    ) -> Result<StateMachine, StorageError> {
        let (store, leased) = KvStore::open(backend.clone())?;
        let lessor = Lessor::open(&backend, leased, tick_ms, lease_ttl_min_seconds)?;
        let tx = backend.begin_read()?;
        let meta = tx.open_table(META).map_err(StorageError::backend)?;
        let mut applied_index = backend::read_meta_u64(&meta, backend::META_APPLIED_INDEX)?;
        let applied_term = backend::read_meta_u64(&meta, backend::META_APPLIED_TERM)?;
        let mut recent_requests = read_recent_requests(&tx)?;
        if crate::planted::is_planted(crate::planted::Bug::ApplyTwiceAfterRestart)
            && applied_index > 1
        {
            // Wrong on purpose: the last applied entry is forgotten, so it is applied again.
            applied_index -= 1;
            recent_requests = RecentRequests::default();
        }
        let raised = read_alarms(&tx)?;
        let auth = Arc::new(AuthStore::open(&tx)?);
        let hub = Arc::new(WatchHub::new(store.current_revision()));
        Ok(StateMachine {
            backend,
            store: Arc::new(store),
            lessor: Arc::new(lessor),
            hub,
            alarms: Arc::new(Alarms {
                raised: Mutex::new(raised),
            }),
            auth,
            applied_index,
            applied_term,
            durable_applied_index: applied_index,
            durable_every_entries: durable_every_entries.max(1),
            recent_requests,
            observer: None,
        })
    }

    pub fn store(&self) -> &Arc<KvStore> {
        &self.store
    }

    pub fn lessor(&self) -> &Arc<Lessor> {
        &self.lessor
    }

    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    pub fn alarms(&self) -> &Arc<Alarms> {
        &self.alarms
    }

    pub fn auth(&self) -> &Arc<AuthStore> {
        &self.auth
    }

    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Index of the last applied entry.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// Term of the last applied entry.
    pub fn applied_term(&self) -> u64 {
        self.applied_term
    }

    /// The Raft configuration recorded with the last applied configuration change or snapshot.
    pub fn recorded_conf_state(&self) -> Result<Option<ConfState>, StorageError> {
        let tx = self.backend.begin_read()?;
        let meta = tx.open_table(META).map_err(StorageError::backend)?;
        let Some(bytes) = meta
            .get(backend::META_CONF_STATE)
            .map_err(StorageError::backend)?
        else {
            return Ok(None);
        };
        protobuf::Message::parse_from_bytes(bytes.value())
            .map(Some)
            .map_err(|e| StorageError::corrupt(format!("recorded conf state: {e}")))
    }

    /// Replaces the whole state with the leader's snapshot file at `path`, described by
    /// `metadata`: the file becomes the state-machine file (see `Backend::install_snapshot_file`);
    /// then takes the key index `prepared` from the same rows (or rebuilds it from the file),
    /// reloads the leases and the alarms and tells the watchers to catch up.
    pub fn install_snapshot(
        &mut self,
        path: &std::path::Path,
        metadata: &raft::eraftpb::SnapshotMetadata,
        prepared: Option<PreparedIndex>,
    ) -> Result<(), StorageError> {
        // The conf state as of the snapshot goes into the file before it is installed, so a
        // restart between the install and the log's can finish it (see `Node::new`).
        let conf_state = protobuf::Message::write_to_bytes(metadata.get_conf_state())
            .map_err(|e| StorageError::corrupt(format!("encoding conf state: {e}")))?;
        let leased = self.store.restore_from(path, &conf_state, prepared)?;
        let tx = self.backend.begin_read()?;
        {
            let meta = tx.open_table(META).map_err(StorageError::backend)?;
            let index = backend::read_meta_u64(&meta, backend::META_APPLIED_INDEX)?;
            if index != metadata.index {
                return Err(StorageError::corrupt(format!(
                    "snapshot file {} holds applied index {index}, but raft says {}",
                    path.display(),
                    metadata.index
                )));
            }
        }
        self.lessor.reload(&self.backend, leased)?;
        self.alarms.reload(&tx)?;
        self.auth.reload(&tx)?;
        self.recent_requests = read_recent_requests(&tx)?;
        self.applied_index = metadata.index;
        self.applied_term = metadata.term;
        self.durable_applied_index = metadata.index;
        self.hub.restore(self.store.current_revision());
        Ok(())
    }

    /// Has `observer` told of every request applied from now on.
    pub fn set_observer(&mut self, observer: Box<dyn ApplyObserver>) {
        self.observer = Some(observer);
    }

    /// Index of the last entry whose effects are durable in the state-machine file.
    pub fn durable_applied_index(&self) -> u64 {
        self.durable_applied_index
    }

    /// Applies committed entries in one batch. `conf_change` applies a configuration-change entry
    /// to Raft and returns the resulting configuration, which is recorded with the batch, or why
    /// Raft refused the change (then the member list is left as it was).
    /// With `force_durable`, the batch commits durably whatever the schedule says.
    pub fn apply(
        &mut self,
        entries: &[Entry],
        mut conf_change: impl FnMut(&Entry) -> Result<ConfState, String>,
        force_durable: bool,
    ) -> Result<Applied, StorageError> {
        let mut applied = Applied::default();
        let fresh: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.index > self.applied_index)
            .collect();
        let Some(last) = fresh.last() else {
            applied.revision = self.store.current_revision();
            return Ok(applied);
        };
        let (last_index, last_term) = (last.index, last.term);
        let mut batch = self.store.begin_batch()?;
        let mut conf_state = None;
        // Rows of the requests applied, written to their table once for the batch.
        let mut dedup_rows = Vec::new();
        for entry in fresh {
            // A compaction's old revisions go a few rows per entry (on every member at the same
            // entries), so no turn removes them all at once.
            batch.sweep(SWEEP_ROWS_PER_ENTRY)?;
            match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => {}
                EntryType::EntryNormal => {
                    // Entries are checksummed by the log, so an entry that does not decode was
                    // proposed that way (for example, nested beyond the decoder's depth limit). It
                    // decodes the same way on every member and on every replay: skipping it is
                    // deterministic, while stopping would stop every replay too.
                    match InternalRequest::decode(entry.data.as_ref()) {
                        Ok(request)
                            if request.id != 0
                                && self.recent_requests.ids.contains(&RequestKey {
                                    origin: request.origin,
                                    id: request.id,
                                }) =>
                        {
                            // The same proposal reached the log twice (a message delivered
                            // twice): applying it again would repeat a write the client was
                            // answered for once. Every member skips it alike.
                            tracing::warn!(
                                index = entry.index,
                                id = request.id,
                                "skipping a request applied already"
                            );
                        }
                        Ok(request) => {
                            let key = RequestKey {
                                origin: request.origin,
                                id: request.id,
                            };
                            let op = request.request.as_ref().map_or("unknown", operation_name);
                            if let Some(observer) = &mut self.observer {
                                observer.started();
                            }
                            let result = self.apply_request(
                                &mut batch,
                                request.auth.as_ref(),
                                request.request,
                                entry.index,
                            )?;
                            if let Some(observer) = &mut self.observer {
                                let success =
                                    matches!(result, Ok(_) | Err(RequestError::Compacted));
                                observer.finished(op, success);
                            }
                            applied.results.push((key, result));
                            if key.id != 0 {
                                dedup_rows.push((entry.index, key));
                                self.recent_requests.insert(entry.index, key);
                            }
                        }
                        Err(error) => {
                            tracing::error!(index = entry.index, %error, "skipping a raft entry that is not a request");
                        }
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let change = member_change(entry);
                    match conf_change(entry) {
                        Ok(state) => {
                            conf_state = Some(state);
                            if let Some((id, kind, member)) = change {
                                let result = self.apply_member_change(&batch, kind, member)?;
                                applied.results.push((id, result));
                            }
                        }
                        Err(reason) => {
                            tracing::warn!(index = entry.index, %reason, "raft refused a configuration change");
                            if let Some((id, _, _)) = change {
                                applied
                                    .results
                                    .push((id, Err(RequestError::ConfChangeRefused)));
                            }
                        }
                    }
                }
            }
        }
        let forget_below = last_index.saturating_sub(DEDUP_WINDOW_ENTRIES);
        let forget = self.recent_requests.forget_below(forget_below);
        if forget || !dedup_rows.is_empty() {
            let mut table = batch
                .transaction()
                .open_table(backend::APPLIED_REQUESTS)
                .map_err(StorageError::backend)?;
            for (index, key) in dedup_rows {
                table
                    .insert(index, (key.origin, key.id))
                    .map_err(StorageError::backend)?;
            }
            if forget {
                table
                    .retain_in(..forget_below, |_, _| false)
                    .map_err(StorageError::backend)?;
            }
        }
        {
            let tx = batch.transaction();
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            backend::write_meta_u64(&mut meta, backend::META_APPLIED_INDEX, last_index)?;
            backend::write_meta_u64(&mut meta, backend::META_APPLIED_TERM, last_term)?;
            if let Some(state) = &conf_state {
                let bytes = protobuf::Message::write_to_bytes(state)
                    .map_err(|e| StorageError::corrupt(format!("encoding conf state: {e}")))?;
                meta.insert(backend::META_CONF_STATE, bytes.as_slice())
                    .map_err(StorageError::backend)?;
            }
        }
        let durable =
            force_durable || last_index - self.durable_applied_index >= self.durable_every_entries;
        applied.revision = batch.revision();
        let events = batch.commit(durable)?;
        assert!(last_index > self.applied_index, "applied index only grows");
        self.applied_index = last_index;
        self.applied_term = last_term;
        if durable {
            self.durable_applied_index = last_index;
        }
        self.hub.notify(applied.revision, &events);
        Ok(applied)
    }

    /// Makes everything applied so far durable.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        if self.durable_applied_index < self.applied_index {
            self.backend.sync()?;
            self.durable_applied_index = self.applied_index;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put_entry(index: u64, id: u64, value: &str) -> Entry {
        put_bytes_entry(index, id, value.as_bytes())
    }

    fn put_bytes_entry(index: u64, id: u64, value: &[u8]) -> Entry {
        request_entry(
            index,
            id,
            Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: value.to_vec(),
                ..PutRequest::default()
            }),
        )
    }

    fn request_entry(index: u64, id: u64, request: Request) -> Entry {
        let request = InternalRequest {
            auth: None,
            id,
            origin: 7,
            request: Some(request),
        };
        Entry {
            index,
            term: 1,
            data: request.encode_to_vec().into(),
            ..Entry::default()
        }
    }

    fn no_conf_change(_: &Entry) -> Result<ConfState, String> {
        Err("no configuration changes here".to_owned())
    }

    #[test]
    fn a_proposal_that_reaches_the_log_twice_is_applied_once_even_across_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let backend = Arc::new(Backend::open(&path).expect("open"));
            let mut machine = StateMachine::open(backend, 100, 1, 1).expect("machine");
            machine
                .apply(
                    &[put_entry(1, 7, "a"), put_entry(2, 8, "b")],
                    no_conf_change,
                    false,
                )
                .expect("apply");
            // Request 7 delivered again (a duplicated message): skipped.
            let applied = machine
                .apply(&[put_entry(3, 7, "a")], no_conf_change, false)
                .expect("apply");
            assert!(applied.results.is_empty());
            assert_eq!(machine.store().current_revision(), 3);
            assert_eq!(machine.applied_index(), 3);
        }
        // The record of applied requests is durable with the applied index.
        let backend = Arc::new(Backend::open(&path).expect("reopen"));
        let mut machine = StateMachine::open(backend, 100, 1, 1).expect("machine");
        machine
            .apply(
                &[put_entry(4, 8, "b"), put_entry(5, 9, "c")],
                no_conf_change,
                false,
            )
            .expect("apply");
        assert_eq!(
            machine.store().current_revision(),
            4,
            "only request 9 applied"
        );
    }

    /// Goal: a value longer than a chunk is stored in chunks and read back whole by ranges,
    /// watch catch-up and etcd-format snapshots; its hash is the hash of etcd's layout; a
    /// compaction removes the chunks of the revisions it removes and keeps the others.
    #[test]
    fn long_values_are_chunked_and_read_back_whole_everywhere() {
        use crate::mvcc::kv_store::RangeOptions;
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(Backend::open(&dir.path().join("db")).expect("open"));
        let mut machine = StateMachine::open(backend.clone(), 100, 1, 1).expect("machine");
        let long: Vec<u8> = (0..crate::mvcc::rows::CHUNK_BYTES * 5 + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let longer: Vec<u8> = long.iter().rev().copied().chain([9u8; 3000]).collect();
        machine
            .apply(
                &[
                    put_bytes_entry(1, 1, &long),
                    put_bytes_entry(2, 2, &longer),
                    put_entry(3, 3, "short"),
                ],
                no_conf_change,
                false,
            )
            .expect("apply");
        let store = machine.store().clone();
        let at = |revision| {
            store
                .range(
                    b"k",
                    &[],
                    RangeOptions {
                        revision,
                        ..RangeOptions::default()
                    },
                )
                .expect("range")
                .kvs[0]
                .value
                .clone()
        };
        assert_eq!(at(2), long);
        assert_eq!(at(3), longer);
        assert_eq!(at(4), b"short");
        let events = store.events(2, 4, 10).expect("events");
        assert_eq!(events[0].kv.as_ref().expect("kv").value, long);
        assert_eq!(events[1].kv.as_ref().expect("kv").value, longer);
        let chunks = |backend: &Backend| {
            let tx = backend.begin_read().expect("read");
            let table = tx.open_table(crate::backend::VALUE).expect("table");
            redb::ReadableTableMetadata::len(&table).expect("len")
        };
        assert_eq!(chunks(&backend), 6 + 7);

        // The hash is over etcd's layout: the same with the values inline.
        let (hash, _, _) = store.hash_kv(4).expect("hash");
        let mut expected = crate::crc32c::Hasher::new();
        expected.update(b"key");
        for (main, value) in [(2i64, &long), (3, &longer), (4, &b"short".to_vec())] {
            let revision = crate::mvcc::revision::Revision::new(main, 0);
            let kv = KeyValue {
                key: b"k".to_vec(),
                create_revision: 2,
                mod_revision: main,
                version: main - 1,
                value: value.clone(),
                lease: 0,
            };
            expected.update(&revision.to_bytes(false));
            expected.update(&kv.encode_to_vec());
        }
        assert_eq!(hash, expected.finish());

        // An etcd-format snapshot holds the values whole, and imports back into chunks.
        let mut file = std::io::Cursor::new(Vec::new());
        let tx = backend.begin_read().expect("read");
        crate::etcd_db::export(&tx, &mut file).expect("export");
        drop(tx);
        let reader = synod_bbolt::Reader::new(file.into_inner()).expect("bbolt");
        let bucket = reader.bucket(b"key").expect("buckets").expect("key bucket");
        let rows: Vec<_> = reader.iter(&bucket).map(|r| r.expect("row")).collect();
        assert_eq!(
            KeyValue::decode(rows[0].1.as_slice()).expect("kv").value,
            long
        );
        let copy = Backend::open(&dir.path().join("copy")).expect("open copy");
        let mut tx = copy.begin_write().expect("write");
        crate::etcd_db::import(&reader, &tx).expect("import");
        tx.set_durability(redb::Durability::Immediate)
            .expect("durable");
        tx.commit().expect("commit");
        assert_eq!(chunks(&copy), 6 + 7);

        // Compacting to revision 4 removes revisions 2 and 3 with their chunks, at the entries
        // applied after it.
        machine
            .apply(
                &[request_entry(
                    4,
                    4,
                    Request::Compaction(synod_api::etcdserverpb::CompactionRequest {
                        revision: 4,
                        physical: false,
                    }),
                )],
                no_conf_change,
                false,
            )
            .expect("compact");
        assert_eq!(at(4), b"short");
        assert_eq!(
            chunks(&backend),
            6 + 7,
            "removed at the entries after the compaction"
        );
        let compacted = store.hash_kv(4).expect("hash").0;
        machine
            .apply(&[put_entry(5, 5, "after")], no_conf_change, false)
            .expect("apply");
        assert_eq!(chunks(&backend), 0);
        assert_eq!(at(4), b"short");
        assert_eq!(
            compacted,
            store.hash_kv(4).expect("hash").0,
            "HashKV does not depend on how far the removal has got"
        );
    }

    /// Goal: with every key deleted (nothing visible, where etcd hashes what the compaction
    /// keeps), `HashKV` is the same before, during and after a compaction's removal, which goes
    /// a bounded number of rows per entry and finishes.
    #[test]
    fn a_compactions_removal_is_gradual_and_invisible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Arc::new(Backend::open(&dir.path().join("db")).expect("open"));
        let mut machine = StateMachine::open(backend.clone(), 100, 1, 1).expect("machine");
        let rows = SWEEP_ROWS_PER_ENTRY * 3;
        let mut entries: Vec<Entry> = (1..=rows as u64)
            .map(|i| put_entry(i, i, &format!("v{i}")))
            .collect();
        let next = rows as u64 + 1;
        entries.push(request_entry(
            next,
            next,
            Request::DeleteRange(synod_api::etcdserverpb::DeleteRangeRequest {
                key: b"k".to_vec(),
                ..Default::default()
            }),
        ));
        machine
            .apply(&entries, no_conf_change, false)
            .expect("apply");
        let revision = machine.store().current_revision();
        let compact = request_entry(
            next + 1,
            next + 1,
            Request::Compaction(synod_api::etcdserverpb::CompactionRequest {
                revision,
                physical: false,
            }),
        );
        machine
            .apply(&[compact], no_conf_change, false)
            .expect("compact");
        let key_rows = |backend: &Backend| {
            let tx = backend.begin_read().expect("read");
            let table = tx.open_table(crate::backend::KEY).expect("table");
            redb::ReadableTableMetadata::len(&table).expect("len")
        };
        let hash = machine.store().hash_kv(revision).expect("hash").0;
        assert_eq!(key_rows(&backend), rows as u64 + 1);
        let mut index = next + 2;
        let mut seen = Vec::new();
        while key_rows(&backend) > 0 {
            machine
                .apply(
                    &[Entry {
                        index,
                        term: 1,
                        ..Entry::default()
                    }],
                    no_conf_change,
                    false,
                )
                .expect("an empty entry");
            index += 1;
            seen.push(key_rows(&backend));
            assert_eq!(machine.store().hash_kv(revision).expect("hash").0, hash);
            assert!(index < next + 20, "the removal did not finish: {seen:?}");
        }
        // A bounded slice per entry: more than one entry was needed.
        assert!(seen.len() >= 3, "{seen:?}");
    }
}
