//! The routes that switch the test-only faults on (`/synod/test/*` on the client port), in builds
//! with the `fault-injection` feature only. Kept apart from `faults`, which the peer transport
//! reads, so that the transport does not depend on the member.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

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
                .machine
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
            let tx = member
                .machine
                .backend
                .begin_write()
                .map_err(|e| e.to_string())?;
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
