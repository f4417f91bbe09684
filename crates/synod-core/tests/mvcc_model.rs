//! The MVCC store against a model: a full copy of the key space per revision in a BTreeMap.
//! Seeded random puts, deletes, multi-key requests and compactions; after every batch, reads at
//! every retained revision must equal the model, and so must a store reopened from disk (the key
//! index rebuilt from the key table), and so must a store that caught up from a snapshot stream of
//! its rows (the key index rebuilt from the stream).
//!
//! Replay one seed: `SYNOD_MODEL_SEED=5 cargo nextest run -p synod-core --test mvcc_model`.

use std::collections::BTreeMap;
use std::sync::Arc;

use synod_core::backend::Backend;
use synod_core::disk::RealDisk;
use synod_core::mvcc::kv_store::{KvStore, RangeOptions};
use synod_core::snapshot;
use synod_core::{Error, RequestError};

/// (value, create revision, mod revision, version) of a live key.
type Entry = (Vec<u8>, i64, i64, i64);
type Model = BTreeMap<Vec<u8>, Entry>;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

const KEYS: &[&[u8]] = &[b"a", b"ab", b"b", b"ba", b"c", b"d"];

fn check(store: &KvStore, history: &BTreeMap<i64, Model>, compacted: i64, seed: u64) {
    let current = *history.keys().last().expect("history");
    assert_eq!(
        store.current_revision(),
        current,
        "seed {seed}: current revision"
    );
    for (&revision, model) in history {
        let result = store.range(
            b"\0",
            b"\0",
            RangeOptions {
                revision,
                ..RangeOptions::default()
            },
        );
        if revision < compacted {
            assert!(
                matches!(result, Err(Error::Request(RequestError::Compacted))),
                "seed {seed}: revision {revision} is compacted"
            );
            continue;
        }
        let result = result.unwrap_or_else(|e| panic!("seed {seed}: read at {revision}: {e}"));
        let got: Vec<(Vec<u8>, Entry)> = result
            .kvs
            .into_iter()
            .map(|kv| {
                (
                    kv.key,
                    (kv.value, kv.create_revision, kv.mod_revision, kv.version),
                )
            })
            .collect();
        let expected: Vec<_> = model.clone().into_iter().collect();
        assert_eq!(
            got, expected,
            "seed {seed}: contents at revision {revision}"
        );
        let prefix = store
            .range(
                b"a",
                b"b",
                RangeOptions {
                    revision,
                    limit: 1,
                    ..RangeOptions::default()
                },
            )
            .expect("prefix");
        assert_eq!(
            prefix.count,
            model.range(b"a".to_vec()..b"b".to_vec()).count() as i64,
            "seed {seed}: count ignores limit"
        );
        assert!(prefix.kvs.len() <= 1);
    }
    let future = store.range(
        b"a",
        &[],
        RangeOptions {
            revision: current + 1,
            ..RangeOptions::default()
        },
    );
    assert!(matches!(
        future,
        Err(Error::Request(RequestError::FutureRevision))
    ));
}

fn run(seed: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut history: BTreeMap<i64, Model> = BTreeMap::from([(1, Model::new())]);
    let mut compacted = -1;
    {
        let (mut store, _) =
            KvStore::open(Arc::new(Backend::open(&path).expect("open"))).expect("store");
        for round in 0..40 {
            let mut batch = store.begin_batch().expect("batch");
            for _ in 0..1 + rng.below(4) {
                let mut model = history.values().last().expect("history").clone();
                let mut txn = batch.begin();
                let revision = txn.read_revision() + 1;
                for _ in 0..1 + rng.below(3) {
                    let key = KEYS[rng.below(KEYS.len() as u64) as usize];
                    if rng.below(4) == 0 {
                        let deleted = txn.delete_range(key, &[]).expect("delete");
                        assert_eq!(
                            deleted.len(),
                            usize::from(model.remove(key).is_some()),
                            "seed {seed}"
                        );
                    } else if model.contains_key(key) && txn.read_revision() == revision {
                        // A key written once in this request is left alone, as etcd's txn rules want.
                        continue;
                    } else {
                        let value = format!("{round}-{}", rng.below(100)).into_bytes();
                        let kv = txn.put(key, value.clone(), 0).expect("put");
                        let (create, version) = match model.get(key) {
                            Some((_, create, _, version)) => (*create, version + 1),
                            None => (revision, 1),
                        };
                        assert_eq!(
                            (kv.create_revision, kv.version, kv.mod_revision),
                            (create, version, revision),
                            "seed {seed}"
                        );
                        model.insert(key.to_vec(), (value, create, revision, version));
                    }
                }
                let after = txn.end();
                if after == revision {
                    history.insert(revision, model);
                }
            }
            if rng.below(6) == 0 {
                let current = batch.revision();
                let target =
                    compacted.max(1) + rng.below((current - compacted.max(1) + 1) as u64) as i64;
                if target > compacted {
                    batch.compact(target).expect("compact");
                    compacted = target;
                }
            }
            batch.commit(rng.below(3) == 0).expect("commit");
            check(&store, &history, compacted, seed);
        }
        // Make everything durable, then reopen from disk.
        store.backend().sync().expect("sync");
        store = KvStore::open(store.backend().clone()).expect("reopen").0;
        check(&store, &history, compacted, seed);
    }
    let (reopened, _) =
        KvStore::open(Arc::new(Backend::open(&path).expect("reopen file"))).expect("store");
    check(&reopened, &history, compacted, seed);

    // A member catching up by snapshot: the file and the key index are built from a stream of
    // the store's rows, and the file is installed with that index.
    let (caught_up, _) = KvStore::open(Arc::new(
        Backend::open(&dir.path().join("caught-up")).expect("open"),
    ))
    .expect("store");
    let view = reopened.backend().begin_read().expect("view");
    let chunks = snapshot::rows_in_memory(&view, 64).expect("rows");
    let received = dir.path().join("received.db");
    let stream = || chunks.iter().map(Vec::as_slice);
    snapshot::build_from_rows(&RealDisk, &received, &mut stream()).expect("build");
    let index = snapshot::index_from_rows(&mut stream()).expect("index");
    caught_up
        .restore_from(&received, b"", Some(index))
        .expect("install");
    check(&caught_up, &history, compacted, seed);
}

#[test]
fn mvcc_matches_the_model() {
    let seeds: Vec<u64> = match std::env::var("SYNOD_MODEL_SEED") {
        Ok(seed) => vec![seed.parse().expect("a number")],
        Err(_) => (1..=30).collect(),
    };
    for seed in seeds {
        run(seed);
    }
}

/// Regression (found in review): after a compaction removed a key's creation revision and the
/// store was reopened, the index was rebuilt from the oldest revision left on disk, so the next
/// put got a wrong create revision and version. etcd restores both from the stored value.
#[test]
fn writes_after_compaction_and_restart_keep_create_revision_and_version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    {
        let (store, _) =
            KvStore::open(Arc::new(Backend::open(&path).expect("open"))).expect("store");
        let mut batch = store.begin_batch().expect("batch");
        for value in ["1", "2", "3"] {
            let mut txn = batch.begin();
            txn.put(b"k", value.as_bytes().to_vec(), 0).expect("put");
            txn.end();
        }
        batch.compact(4).expect("compact");
        batch.commit(true).expect("commit");
    }
    let (store, _) = KvStore::open(Arc::new(Backend::open(&path).expect("reopen"))).expect("store");
    let mut batch = store.begin_batch().expect("batch");
    let mut txn = batch.begin();
    let kv = txn.put(b"k", b"4".to_vec(), 0).expect("put");
    txn.end();
    batch.commit(true).expect("commit");
    assert_eq!((kv.create_revision, kv.version, kv.mod_revision), (2, 4, 5));
}

/// Regression (found in review): a compaction applied in the same batch as the writes it
/// compacts up to was visible to readers before the batch committed; reads of the latest
/// published revision then answered "compacted" until the commit. Readers now see the
/// compaction, and the revisions that make it possible, at the same moment.
#[test]
fn a_compaction_is_published_with_its_batch() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, _) = KvStore::open(Arc::new(
        Backend::open(&dir.path().join("db")).expect("open"),
    ))
    .expect("store");
    let mut batch = store.begin_batch().expect("batch");
    for value in ["1", "2"] {
        let mut txn = batch.begin();
        txn.put(b"k", value.as_bytes().to_vec(), 0).expect("put");
        txn.end();
    }
    batch
        .compact(3)
        .expect("compact up to a revision written in this batch");
    // Later requests of the same batch see the compaction at once.
    let txn = batch.begin();
    let refused = txn.range(
        b"k",
        &[],
        RangeOptions {
            revision: 2,
            ..RangeOptions::default()
        },
    );
    assert!(matches!(
        refused,
        Err(Error::Request(RequestError::Compacted))
    ));
    txn.end();
    // Readers still see the published state, whole.
    let latest = store
        .range(b"k", &[], RangeOptions::default())
        .expect("the latest revision stays readable");
    assert_eq!((latest.revision, latest.count), (1, 0));
    batch.commit(false).expect("commit");
    let latest = store
        .range(b"k", &[], RangeOptions::default())
        .expect("read");
    assert_eq!(
        (latest.revision, latest.kvs[0].value.as_slice()),
        (3, b"2".as_slice())
    );
    let old = store.range(
        b"k",
        &[],
        RangeOptions {
            revision: 2,
            ..RangeOptions::default()
        },
    );
    assert!(matches!(old, Err(Error::Request(RequestError::Compacted))));
}
