//! Counts of the work a member did since it started, kept where the work happens and read by
//! the shell's metrics (`etcd_mvcc_*_total`, `etcd_debugging_lease_*_total`). Plain relaxed
//! atomics: a count may be a moment behind, never wrong, and the hot path pays one add.

use std::sync::atomic::{AtomicU64, Ordering};

/// One monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn inc(&self) {
        self.add(1);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the MVCC store did: ranges read (client reads and the ranges inside txns), keys put and
/// deleted, txns applied, keys removed by compaction.
#[derive(Debug, Default)]
pub struct MvccCounters {
    pub ranges: Counter,
    pub puts: Counter,
    pub deletes: Counter,
    pub txns: Counter,
    pub compacted_keys: Counter,
}

/// What the lessor did: leases granted and revoked (expiry included) by applied entries, and
/// renewals this member made as leader.
#[derive(Debug, Default)]
pub struct LeaseCounters {
    pub granted: Counter,
    pub revoked: Counter,
    pub renewed: Counter,
}
