//! Faults for tests of the whole cluster, compiled only with the `fault-injection` feature (which
//! only the test builds enable): a network partition of the peer transport, and a deliberately
//! unsafe mode that serves linearizable reads from local state without asking the leader, so the
//! fault tests can prove that their checker catches stale reads.
//!
//! Tests drive them over HTTP on the client port:
//! - `POST /synod/test/partition` with `{"peers": ["<hex id>", ...]}` drops every message to and
//!   from those peers (an empty list heals);
//! - `POST /synod/test/unsafe-local-reads` with `{"on": true}`;
//! - `POST /synod/test/corrupt` with `{"key": "k", "value": "v"}` rewrites a value in this
//!   member's state-machine file behind Raft's back.
//!
//! Without the feature, every query answers "no fault" and the routes do not exist.

#[cfg(feature = "fault-injection")]
use std::collections::HashSet;
#[cfg(feature = "fault-injection")]
use std::sync::Mutex;
#[cfg(feature = "fault-injection")]
use std::sync::atomic::{AtomicBool, Ordering};

/// The faults switched on in this member.
#[derive(Debug, Default)]
pub struct Faults {
    #[cfg(feature = "fault-injection")]
    pub(crate) blocked: Mutex<HashSet<u64>>,
    #[cfg(feature = "fault-injection")]
    pub(crate) unsafe_local_reads: AtomicBool,
}

impl Faults {
    /// Whether traffic with `peer` is cut.
    pub fn is_blocked(&self, peer: u64) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.blocked
                .lock()
                .map(|blocked| blocked.contains(&peer))
                .unwrap_or(false)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = peer;
            false
        }
    }

    /// Whether linearizable reads skip the ReadIndex round (unsafe; tests only).
    pub fn unsafe_local_reads(&self) -> bool {
        #[cfg(feature = "fault-injection")]
        {
            self.unsafe_local_reads.load(Ordering::Relaxed)
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            false
        }
    }
}
