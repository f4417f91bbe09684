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
    blocked: Mutex<HashSet<u64>>,
    #[cfg(feature = "fault-injection")]
    unsafe_local_reads: AtomicBool,
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

#[cfg(feature = "fault-injection")]
pub fn router(member: std::sync::Arc<crate::member::Member>) -> axum::Router {
    use axum::extract::State;
    use axum::response::Json;
    use axum::routing::post;

    #[derive(serde::Deserialize)]
    struct Partition {
        peers: Vec<String>,
    }

    #[derive(serde::Deserialize)]
    struct Switch {
        on: bool,
    }

    async fn partition(
        State(member): State<std::sync::Arc<crate::member::Member>>,
        Json(request): Json<Partition>,
    ) -> Json<serde_json::Value> {
        let peers: HashSet<u64> = request
            .peers
            .iter()
            .filter_map(|id| u64::from_str_radix(id, 16).ok())
            .collect();
        tracing::warn!(?peers, "fault injection: partitioned from these peers");
        if let Ok(mut blocked) = member.transport().faults.blocked.lock() {
            *blocked = peers;
        }
        Json(serde_json::json!({"ok": true}))
    }

    async fn unsafe_local_reads(
        State(member): State<std::sync::Arc<crate::member::Member>>,
        Json(request): Json<Switch>,
    ) -> Json<serde_json::Value> {
        tracing::warn!(
            on = request.on,
            "fault injection: unsafe local linearizable reads"
        );
        member
            .transport()
            .faults
            .unsafe_local_reads
            .store(request.on, Ordering::Relaxed);
        Json(serde_json::json!({"ok": true}))
    }

    #[derive(serde::Deserialize)]
    struct Corrupt {
        key: String,
        value: String,
    }

    /// Rewrites the value of `key`'s latest version in this member's state-machine file behind
    /// Raft's back: a state-machine file that went bad in a way no checksum notices.
    async fn corrupt(
        State(member): State<std::sync::Arc<crate::member::Member>>,
        Json(request): Json<Corrupt>,
    ) -> Json<serde_json::Value> {
        use prost::Message as _;
        let outcome = (|| -> Result<(), String> {
            let found = member
                .store
                .range(
                    request.key.as_bytes(),
                    &[],
                    synod_core::mvcc::kv_store::RangeOptions::default(),
                )
                .map_err(|e| e.to_string())?;
            let mut kv = found.kvs.into_iter().next().ok_or("no such key")?;
            kv.value = request.value.into_bytes();
            let revision = synod_core::mvcc::revision::Revision::new(kv.mod_revision, 0);
            let tx = member.backend.begin_write().map_err(|e| e.to_string())?;
            {
                let mut table = tx
                    .open_table(synod_core::backend::KEY)
                    .map_err(|e| e.to_string())?;
                table
                    .insert(
                        revision.to_bytes(false).as_slice(),
                        kv.encode_to_vec().as_slice(),
                    )
                    .map_err(|e| e.to_string())?;
            }
            tx.commit().map_err(|e| e.to_string())
        })();
        tracing::warn!(
            ?outcome,
            "fault injection: corrupted a value in the state machine"
        );
        Json(serde_json::json!({ "ok": outcome.is_ok(), "error": outcome.err() }))
    }

    axum::Router::new()
        .route("/synod/test/corrupt", post(corrupt))
        .route("/synod/test/partition", post(partition))
        .route("/synod/test/unsafe-local-reads", post(unsafe_local_reads))
        .with_state(member)
}
