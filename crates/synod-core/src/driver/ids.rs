//! Request ids that cannot collide.
//!
//! A request is applied at most once under its key (proposing member, id): the state machine
//! remembers the keys of recent entries and skips a proposal that reaches the log twice. Two
//! different requests under one key would therefore lose a write without a word. Member ids are
//! unique in a cluster (etcd refuses to add a member twice), so an id only has to be unique among
//! one member's requests: the member's boot epoch, counted durably at every start
//! ([`crate::backend::Backend::next_boot_epoch`]), fills the high bits and a counter the rest.
//! Unlike etcd's `idutil` (member bits, wall clock, counter) this needs no clock, and neither a
//! clock that steps back nor a burst that runs the counter ahead of it can repeat an id after a
//! restart.

use std::sync::atomic::{AtomicU64, Ordering};

/// Bits of an id that count requests within one boot epoch (17.6 trillion before the counter
/// wraps into the epoch bits; the dedup window is a few thousand entries).
const COUNTER_BITS: u32 = 44;

/// Draws the ids of one member process; shared by its request handlers.
#[derive(Debug)]
pub struct RequestIds {
    next: AtomicU64,
}

impl RequestIds {
    /// Ids for the process whose boot epoch is `epoch` (at least 1: id 0 means "no waiter").
    pub fn new(epoch: u64) -> RequestIds {
        let epoch_bits = 64 - COUNTER_BITS;
        let epoch = epoch & ((1 << epoch_bits) - 1);
        RequestIds {
            next: AtomicU64::new((epoch << COUNTER_BITS) | 1),
        }
    }

    /// A new id, never 0.
    pub fn next(&self) -> u64 {
        loop {
            let id = self.next.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                return id;
            }
        }
    }

    /// A lease id for a grant that names none: unique per (member, request) like the request id,
    /// spread over the positive i64 range so that members do not hand out the same small ids.
    /// (A collision is refused with etcd's "lease already exists", never lost.)
    pub fn lease_id(member_id: u64, request_id: u64) -> i64 {
        let mut z = member_id ^ request_id.rotate_left(32);
        // SplitMix64's finalizer: a bijection, so distinct inputs give distinct outputs.
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let id = (z & (i64::MAX as u64)) as i64;
        if id == 0 { 1 } else { id }
    }
}

#[cfg(test)]
mod tests {
    use super::RequestIds;

    #[test]
    fn ids_of_two_boot_epochs_never_meet() {
        let first = RequestIds::new(1);
        let second = RequestIds::new(2);
        let a: Vec<u64> = (0..1000).map(|_| first.next()).collect();
        let b: Vec<u64> = (0..1000).map(|_| second.next()).collect();
        assert!(a.iter().all(|id| !b.contains(id)));
        assert!(a.iter().all(|id| *id != 0));
        assert!(a.windows(2).all(|pair| pair[0] < pair[1]));
    }

    #[test]
    fn lease_ids_are_positive_and_spread_by_member() {
        let one = RequestIds::lease_id(1, 5);
        let two = RequestIds::lease_id(2, 5);
        assert!(one > 0 && two > 0);
        assert_ne!(one, two);
    }
}
