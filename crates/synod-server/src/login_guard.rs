//! A back-off on repeated failed logins, per user and per client address (beyond etcd, which
//! lets a client try passwords as fast as bcrypt allows). After [`FREE_FAILURES`] failures in a
//! row, the next attempt must wait a delay that doubles with every further failure, up to
//! [`DELAY_MAX`]; an attempt during the delay is refused without checking the password (so it
//! costs no bcrypt work either) and with the same answer as a wrong password. A success resets.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed before the back-off starts.
const FREE_FAILURES: u32 = 5;
/// The first delay; it doubles with each further failure.
const DELAY_MIN: Duration = Duration::from_secs(1);
/// The longest delay.
const DELAY_MAX: Duration = Duration::from_secs(300);
/// Users or addresses tracked at once; beyond it the oldest records go first.
const TRACKED_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn blocked_until(&self) -> Option<Instant> {
        let over = self.count.checked_sub(FREE_FAILURES)?;
        let delay = DELAY_MIN
            .saturating_mul(1u32.checked_shl(over.min(16)).unwrap_or(u32::MAX))
            .min(DELAY_MAX);
        Some(self.last + delay)
    }
}

#[derive(Debug)]
struct Tracker<K> {
    failures: Mutex<HashMap<K, Failures>>,
}

impl<K: Hash + Eq + Clone> Tracker<K> {
    fn new() -> Tracker<K> {
        Tracker {
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, Failures>> {
        self.failures
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wait(&self, key: &K, now: Instant) -> Option<Duration> {
        let until = self.lock().get(key)?.blocked_until()?;
        (until > now).then(|| until - now)
    }

    fn fail(&self, key: &K, now: Instant) {
        let mut failures = self.lock();
        if failures.len() >= TRACKED_MAX && !failures.contains_key(key) {
            // Forget the records whose back-off is long over; if none, the oldest.
            failures.retain(|_, f| now.duration_since(f.last) < DELAY_MAX);
            if failures.len() >= TRACKED_MAX
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, f)| f.last)
                    .map(|(k, _)| k.clone())
            {
                failures.remove(&oldest);
            }
        }
        let entry = failures.entry(key.clone()).or_insert(Failures {
            count: 0,
            last: now,
        });
        entry.count = entry.count.saturating_add(1);
        entry.last = now;
    }

    fn succeed(&self, key: &K) {
        self.lock().remove(key);
    }
}

/// Failed-login records of one member.
#[derive(Debug)]
pub struct LoginGuard {
    users: Tracker<String>,
    addresses: Tracker<IpAddr>,
}

impl Default for LoginGuard {
    fn default() -> LoginGuard {
        LoginGuard {
            users: Tracker::new(),
            addresses: Tracker::new(),
        }
    }
}

impl LoginGuard {
    /// How long `user` from `address` must still wait, if it must.
    pub fn wait(&self, user: &str, address: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let by_user = self.users.wait(&user.to_owned(), now);
        let by_address = address.and_then(|a| self.addresses.wait(&a, now));
        by_user.max(by_address)
    }

    pub fn fail(&self, user: &str, address: Option<IpAddr>, now: Instant) {
        self.users.fail(&user.to_owned(), now);
        if let Some(address) = address {
            self.addresses.fail(&address, now);
        }
    }

    pub fn succeed(&self, user: &str, address: Option<IpAddr>) {
        self.users.succeed(&user.to_owned());
        if let Some(address) = address {
            self.addresses.succeed(&address);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_starts_after_the_free_failures_and_doubles() {
        let guard = LoginGuard::default();
        let address: IpAddr = [10, 0, 0, 1].into();
        let start = Instant::now();
        for _ in 0..FREE_FAILURES {
            assert_eq!(guard.wait("alice", Some(address), start), None);
            guard.fail("alice", Some(address), start);
        }
        assert_eq!(guard.wait("alice", None, start), Some(DELAY_MIN));
        // Another user from the same address waits too; the same user from elsewhere too.
        assert_eq!(guard.wait("bob", Some(address), start), Some(DELAY_MIN));
        let later = start + DELAY_MIN;
        assert_eq!(guard.wait("alice", None, later), None);
        guard.fail("alice", None, later);
        assert_eq!(guard.wait("alice", None, later), Some(2 * DELAY_MIN));
        guard.succeed("alice", Some(address));
        assert_eq!(guard.wait("alice", Some(address), later), None);
    }

    #[test]
    fn the_delay_is_capped() {
        let guard = LoginGuard::default();
        let now = Instant::now();
        for _ in 0..100 {
            guard.fail("mallory", None, now);
        }
        assert_eq!(guard.wait("mallory", None, now), Some(DELAY_MAX));
    }
}
