//! The lessor: leases, their deadlines and the keys attached to them (etcd `lease/lessor.go`).
//!
//! Grant, revoke, attach and detach happen only while applying Raft entries, so every member
//! holds the same leases and attachments. Deadlines exist only on the primary (the leader): it
//! renews leases on keep-alive and, on [`Lessor::tick`], reports expired leases, which the leader
//! then revokes through Raft. Apply never reads a clock. Time is counted in ticks passed in by the
//! owner of the node.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

use prost::Message;
use redb::ReadableTable;
use synod_api::synodpb::LeaseRecord;

use crate::backend::{Backend, LEASE};
use crate::counters::LeaseCounters;
use crate::error::{RequestError, StorageError};

/// The largest TTL a lease may have, in seconds (etcd's `MaxLeaseTTL`).
pub const LEASE_TTL_MAX_SECONDS: i64 = 9_000_000_000;
/// How long the primary waits before reporting an expired lease again if its revoke did not land.
const EXPIRED_RETRY_MS: u64 = 3_000;

#[derive(Debug)]
struct Lease {
    ttl_seconds: i64,
    /// Remaining TTL recorded by the last checkpoint, if any: a new leader starts the lease from
    /// it instead of from the full TTL, so a leader change cannot extend a lease indefinitely.
    remaining_seconds: Option<i64>,
    /// Tick at which the lease expires; `None` when this member is not the primary.
    deadline_tick: Option<u64>,
    /// The primary has reported the lease expired and its revoke is on its way: keep-alives
    /// no longer renew it.
    revoking: bool,
    /// This member's tick when the checkpoint in `remaining_seconds` was applied: a new leader
    /// subtracts the time since then, measured on its own clock.
    checkpoint_tick: Option<u64>,
    /// On the primary: the tick of the last renewal (or of the promotion).
    renewed_tick: u64,
    /// On the primary: when a checkpoint of this lease was last proposed, if one is in flight.
    checkpoint_proposed_tick: Option<u64>,
    keys: BTreeSet<Vec<u8>>,
}

/// A renewal granted by the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The TTL the lease has again, in seconds.
    pub ttl_seconds: i64,
    /// The lease carries a checkpointed remaining TTL, which the renewal makes stale: the caller
    /// must clear it through Raft (a checkpoint of 0) before answering, or a new leader could
    /// expire the lease before the TTL just granted runs out.
    pub clear_checkpoint: bool,
}

#[derive(Debug, Default)]
struct LessorState {
    leases: BTreeMap<i64, Lease>,
    /// Key to the lease it is attached to.
    attached: HashMap<Vec<u8>, i64>,
    now_tick: u64,
    primary: bool,
}

/// What `TimeToLive` reports about a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    pub granted_ttl_seconds: i64,
    /// Remaining seconds, truncated; the granted TTL when this member is not the primary.
    pub remaining_seconds: i64,
    pub keys: Vec<Vec<u8>>,
}

/// The leases of one member.
pub struct Lessor {
    state: Mutex<LessorState>,
    tick_ms: u64,
    ttl_min_seconds: i64,
    counters: LeaseCounters,
}

impl Lessor {
    /// Loads the leases stored in `backend` and attaches `leased_keys` (key, lease) to them.
    pub fn open(
        backend: &Backend,
        leased_keys: Vec<(Vec<u8>, i64)>,
        tick_ms: u64,
        ttl_min_seconds: i64,
    ) -> Result<Lessor, StorageError> {
        Ok(Lessor {
            state: Mutex::new(load(backend, leased_keys)?),
            tick_ms: tick_ms.max(1),
            ttl_min_seconds,
            counters: LeaseCounters::default(),
        })
    }

    /// What this lessor did since the member started.
    pub fn counters(&self) -> &LeaseCounters {
        &self.counters
    }

    /// Replaces every lease with those stored in `backend` (after a snapshot was installed).
    /// Only a follower installs snapshots, so no deadline is set.
    pub fn reload(
        &self,
        backend: &Backend,
        leased_keys: Vec<(Vec<u8>, i64)>,
    ) -> Result<(), StorageError> {
        let mut fresh = load(backend, leased_keys)?;
        let mut state = self.lock();
        fresh.now_tick = state.now_tick;
        fresh.primary = state.primary;
        for lease in fresh.leases.values_mut() {
            if lease.checkpoint_tick.is_some() {
                lease.checkpoint_tick = Some(fresh.now_tick);
            }
        }
        *state = fresh;
        Ok(())
    }
}

fn load(backend: &Backend, leased_keys: Vec<(Vec<u8>, i64)>) -> Result<LessorState, StorageError> {
    let tx = backend.begin_read()?;
    let table = tx.open_table(LEASE).map_err(StorageError::backend)?;
    let mut state = LessorState::default();
    for entry in table.iter().map_err(StorageError::backend)? {
        let (id, value) = entry.map_err(StorageError::backend)?;
        let record = LeaseRecord::decode(value.value())
            .map_err(|e| StorageError::corrupt(format!("lease {}: {e}", id.value())))?;
        state.leases.insert(
            record.id,
            Lease {
                ttl_seconds: record.ttl,
                remaining_seconds: (record.remaining_ttl > 0).then_some(record.remaining_ttl),
                deadline_tick: None,
                revoking: false,
                // Counted from when this member loaded it: later than the real checkpoint, so a
                // new leader errs on the long side.
                checkpoint_tick: (record.remaining_ttl > 0).then_some(0),
                renewed_tick: 0,
                checkpoint_proposed_tick: None,
                keys: BTreeSet::new(),
            },
        );
    }
    for (key, id) in leased_keys {
        if let Some(lease) = state.leases.get_mut(&id) {
            lease.keys.insert(key.clone());
            state.attached.insert(key, id);
        }
    }
    Ok(state)
}

impl Lessor {
    fn lock(&self) -> MutexGuard<'_, LessorState> {
        // A panic while holding this lock is a bug that already stops the member; recovering the
        // guard keeps the remaining readers answering instead of cascading panics.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ticks(&self, seconds: i64) -> u64 {
        (seconds.max(0) as u64)
            .saturating_mul(1000)
            .div_ceil(self.tick_ms)
    }

    /// The smallest TTL a lease gets, in seconds.
    pub fn ttl_min_seconds(&self) -> i64 {
        self.ttl_min_seconds
    }

    /// Returns whether the lease exists.
    pub fn contains(&self, id: i64) -> bool {
        self.lock().leases.contains_key(&id)
    }

    /// Applies a grant; returns the TTL given (raised to the minimum).
    pub fn grant(
        &self,
        tx: &redb::WriteTransaction,
        id: i64,
        ttl_seconds: i64,
    ) -> Result<Result<i64, RequestError>, StorageError> {
        if ttl_seconds > LEASE_TTL_MAX_SECONDS {
            return Ok(Err(RequestError::LeaseTtlTooLarge));
        }
        let mut state = self.lock();
        if state.leases.contains_key(&id) {
            return Ok(Err(RequestError::LeaseExists));
        }
        let ttl = ttl_seconds.max(self.ttl_min_seconds);
        let record = LeaseRecord {
            id,
            ttl,
            remaining_ttl: 0,
        };
        tx.open_table(LEASE)
            .map_err(StorageError::backend)?
            .insert(id, record.encode_to_vec().as_slice())
            .map_err(StorageError::backend)?;
        let deadline_tick = state.primary.then(|| state.now_tick + self.ticks(ttl));
        let now = state.now_tick;
        state.leases.insert(
            id,
            Lease {
                ttl_seconds: ttl,
                remaining_seconds: None,
                deadline_tick,
                revoking: false,
                checkpoint_tick: None,
                renewed_tick: now,
                checkpoint_proposed_tick: None,
                keys: BTreeSet::new(),
            },
        );
        self.counters.granted.inc();
        Ok(Ok(ttl))
    }

    /// Applies a revoke: forgets the lease and returns the keys that must be deleted with it.
    pub fn revoke(
        &self,
        tx: &redb::WriteTransaction,
        id: i64,
    ) -> Result<Result<Vec<Vec<u8>>, RequestError>, StorageError> {
        let mut state = self.lock();
        let Some(lease) = state.leases.remove(&id) else {
            return Ok(Err(RequestError::LeaseNotFound));
        };
        for key in &lease.keys {
            state.attached.remove(key);
        }
        tx.open_table(LEASE)
            .map_err(StorageError::backend)?
            .remove(id)
            .map_err(StorageError::backend)?;
        self.counters.revoked.inc();
        Ok(Ok(lease.keys.into_iter().collect()))
    }

    /// Records that `key` now carries `lease` (0 for none), detaching it from its previous lease.
    pub fn attach(&self, key: &[u8], lease: i64) {
        let mut state = self.lock();
        let state = &mut *state;
        if let Some(previous) = state.attached.remove(key)
            && let Some(old) = state.leases.get_mut(&previous)
        {
            old.keys.remove(key);
        }
        if lease != 0
            && let Some(new) = state.leases.get_mut(&lease)
        {
            new.keys.insert(key.to_vec());
            state.attached.insert(key.to_vec(), lease);
        }
    }

    /// Applies a checkpoint: records the lease's remaining TTL, durably, for the next leader.
    /// Unknown leases are ignored (they may have been revoked since the checkpoint was proposed).
    pub fn checkpoint(
        &self,
        tx: &redb::WriteTransaction,
        id: i64,
        remaining_seconds: i64,
    ) -> Result<(), StorageError> {
        let mut state = self.lock();
        let now = state.now_tick;
        let Some(lease) = state.leases.get_mut(&id) else {
            return Ok(());
        };
        lease.remaining_seconds = (remaining_seconds > 0).then_some(remaining_seconds);
        lease.checkpoint_tick = lease.remaining_seconds.map(|_| now);
        lease.checkpoint_proposed_tick = None;
        let record = LeaseRecord {
            id,
            ttl: lease.ttl_seconds,
            remaining_ttl: remaining_seconds.max(0),
        };
        tx.open_table(LEASE)
            .map_err(StorageError::backend)?
            .insert(id, record.encode_to_vec().as_slice())
            .map_err(StorageError::backend)?;
        Ok(())
    }

    /// Renews a lease on keep-alive. Only the primary renews.
    pub fn renew(&self, id: i64) -> Result<Renewed, RenewError> {
        let mut state = self.lock();
        if !state.primary {
            return Err(RenewError::NotPrimary);
        }
        let now = state.now_tick;
        let lease = state.leases.get_mut(&id).ok_or(RenewError::NotFound)?;
        if lease.revoking {
            // Renewing now would answer a TTL for a lease whose revoke is already proposed.
            return Err(RenewError::NotFound);
        }
        lease.deadline_tick = Some(now + self.ticks(lease.ttl_seconds));
        lease.renewed_tick = now;
        lease.checkpoint_proposed_tick = None;
        self.counters.renewed.inc();
        Ok(Renewed {
            ttl_seconds: lease.ttl_seconds,
            clear_checkpoint: lease.remaining_seconds.is_some(),
        })
    }

    /// On the primary: leases that nobody renewed for half their TTL (and at least
    /// `quiet_ticks_min`), with their remaining TTL in seconds (rounded up), to be checkpointed
    /// through Raft. A lease kept alive normally is never checkpointed; one whose holder went
    /// away is, so a leader change cannot give it a fresh TTL.
    pub fn due_checkpoints(&self, quiet_ticks_min: u64) -> Vec<(i64, i64)> {
        let retry_ticks = EXPIRED_RETRY_MS.div_ceil(self.tick_ms);
        let tick_ms = self.tick_ms;
        let mut state = self.lock();
        if !state.primary {
            return Vec::new();
        }
        let now = state.now_tick;
        let mut due = Vec::new();
        for (id, lease) in state.leases.iter_mut() {
            let Some(deadline) = lease.deadline_tick else {
                continue;
            };
            let quiet = (self.ticks(lease.ttl_seconds) / 2).max(quiet_ticks_min);
            let in_flight = lease
                .checkpoint_proposed_tick
                .is_some_and(|at| now - at < retry_ticks);
            if lease.revoking
                || lease.remaining_seconds.is_some()
                || in_flight
                || now.saturating_sub(lease.renewed_tick) < quiet
                || deadline <= now
            {
                continue;
            }
            let remaining_ms = (deadline - now) * tick_ms;
            due.push((*id, remaining_ms.div_ceil(1000) as i64));
            lease.checkpoint_proposed_tick = Some(now);
        }
        due
    }

    /// Returns what `TimeToLive` reports, or `None` for an unknown lease.
    pub fn info(&self, id: i64) -> Option<LeaseInfo> {
        let state = self.lock();
        let lease = state.leases.get(&id)?;
        let remaining_seconds = match lease.deadline_tick {
            Some(deadline) => {
                (deadline.saturating_sub(state.now_tick) * self.tick_ms / 1000) as i64
            }
            None => lease.ttl_seconds,
        };
        Some(LeaseInfo {
            granted_ttl_seconds: lease.ttl_seconds,
            remaining_seconds,
            keys: lease.keys.iter().cloned().collect(),
        })
    }

    /// Every lease id, ascending.
    pub fn ids(&self) -> Vec<i64> {
        self.lock().leases.keys().copied().collect()
    }

    /// Advances time to `now_tick`; on the primary, returns leases past their deadline. Each one
    /// is reported again only after a retry interval, in case its revoke is lost.
    pub fn tick(&self, now_tick: u64) -> Vec<i64> {
        let retry_ticks = EXPIRED_RETRY_MS.div_ceil(self.tick_ms);
        let mut state = self.lock();
        state.now_tick = now_tick;
        if !state.primary {
            return Vec::new();
        }
        let mut expired = Vec::new();
        for (id, lease) in state.leases.iter_mut() {
            if matches!(lease.deadline_tick, Some(deadline) if deadline <= now_tick) {
                expired.push(*id);
                lease.revoking = true;
                lease.deadline_tick = Some(now_tick + retry_ticks);
            }
        }
        expired
    }

    /// Makes this member the primary: every lease gets a full TTL plus `extend_ticks` from now.
    pub fn promote(&self, extend_ticks: u64) {
        let mut state = self.lock();
        let now = state.now_tick;
        state.primary = true;
        let tick_ms = self.tick_ms;
        for lease in state.leases.values_mut() {
            // A checkpointed remaining TTL wins over the full TTL (etcd's lease checkpoints),
            // less the time this member has seen pass since it applied the checkpoint: no
            // keep-alive came since (a renewal clears the checkpoint), so that time was spent.
            let ticks = match (lease.remaining_seconds, lease.checkpoint_tick) {
                (Some(seconds), Some(at)) => (seconds.max(0) as u64)
                    .saturating_mul(1000)
                    .div_ceil(tick_ms)
                    .saturating_sub(now.saturating_sub(at)),
                _ => (lease.ttl_seconds.max(0) as u64)
                    .saturating_mul(1000)
                    .div_ceil(tick_ms),
            };
            lease.deadline_tick = Some(now + ticks + extend_ticks);
            lease.renewed_tick = now;
            lease.checkpoint_proposed_tick = None;
            lease.revoking = false;
        }
    }

    /// Stops expiring leases: another member is the primary now.
    pub fn demote(&self) {
        let mut state = self.lock();
        state.primary = false;
        for lease in state.leases.values_mut() {
            lease.deadline_tick = None;
        }
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.lock().leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a keep-alive was not honoured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RenewError {
    #[error("lease not found")]
    NotFound,
    #[error("this member is not the leader")]
    NotPrimary,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpointed remaining TTL survives a restart and bounds the lease on promotion.
    #[test]
    fn checkpoints_bound_the_lease_after_promotion() {
        let dir = tempfile::tempdir().expect("temp dir");
        let backend = Backend::open(&dir.path().join("db")).expect("backend");
        let lessor = Lessor::open(&backend, Vec::new(), 100, 2).expect("lessor");
        let tx = backend.begin_write().expect("tx");
        assert_eq!(lessor.grant(&tx, 7, 60).expect("io"), Ok(60));
        lessor.checkpoint(&tx, 7, 5).expect("checkpoint");
        lessor
            .checkpoint(&tx, 99, 5)
            .expect("an unknown lease is ignored");
        tx.commit().expect("commit");
        let reopened = Lessor::open(&backend, Vec::new(), 100, 2).expect("reopen");
        reopened.promote(0);
        // 5 s at 100 ms a tick: expired after 50 ticks, not after 600.
        assert!(reopened.tick(49).is_empty());
        assert_eq!(reopened.tick(50), vec![7]);
        assert_eq!(
            reopened.info(7).map(|info| info.granted_ttl_seconds),
            Some(60)
        );
    }
}
