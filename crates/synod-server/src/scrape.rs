//! `/metrics`: the process's [`Metrics`], with the member's own values (indexes, sizes, the
//! core's counters) copied in when a scrape asks, so the hot path pays nothing for them.

use std::sync::Arc;

use crate::member::{ETCD_API_VERSION, Member};
use crate::metrics::{Metrics, advance, metrics};

/// `/metrics`, on the client URLs and on `--listen-metrics-urls`.
pub fn router(member: Arc<Member>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(serve))
        .with_state(member)
}

async fn serve(
    axum::extract::State(member): axum::extract::State<Arc<Member>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    // Gathering reads /proc and walks every family: off the runtime's workers.
    let text =
        tokio::task::spawn_blocking(move || metrics().render(|metrics| copy_in(metrics, &member)))
            .await
            .unwrap_or_default();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn copy_in(metrics: &Metrics, member: &Member) {
    use std::sync::atomic::Ordering::Relaxed;
    let status = &member.status;
    let leader = status.leader_id.load(Relaxed);
    metrics.has_leader.set(i64::from(leader != 0));
    metrics
        .is_leader
        .set(i64::from(status.is_leader.load(Relaxed)));
    metrics
        .proposals_committed
        .set(status.commit_index.load(Relaxed) as i64);
    metrics
        .proposals_applied
        .set(status.applied_index.load(Relaxed) as i64);
    metrics
        .quota_backend_bytes
        .set(member.config.quota_backend_bytes as i64);
    let id = format!("{:x}", member.member_id);
    metrics.server_id.with_label_values(&[id.as_str()]).set(1);
    metrics
        .server_version
        .with_label_values(&[ETCD_API_VERSION])
        .set(1);
    metrics
        .cluster_version
        .with_label_values(&[cluster_version()])
        .set(1);
    if let Ok(members) = member.members() {
        let learner = members
            .iter()
            .any(|m| m.id == member.member_id && m.is_learner);
        metrics.is_learner.set(i64::from(learner));
    }
    metrics.alarms.reset();
    for (member_id, alarm) in member.machine.alarms.list() {
        let name = synod_api::etcdserverpb::AlarmType::try_from(alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        metrics
            .alarms
            .with_label_values(&[format!("{member_id:x}").as_str(), name])
            .set(1);
    }
    metrics
        .auth_revision
        .set(member.machine.auth.revision() as i64);

    let size = member.machine.backend.size_bytes() as i64;
    metrics.db_total_size.set(size);
    metrics.db_total_size_debugging.set(size);
    // redb tells its allocated pages only by walking every page of the file (`stats`), which
    // took 0.7 s on a cold 540 MB file: the file's size stands in for the bytes in use.
    metrics.db_in_use.set(size);
    let store = &member.machine.store;
    let counts = store.counters();
    advance(&metrics.range_total, counts.ranges.get());
    advance(&metrics.put_total, counts.puts.get());
    advance(&metrics.delete_total, counts.deletes.get());
    advance(&metrics.txn_total, counts.txns.get());
    advance(&metrics.compaction_keys, counts.compacted_keys.get());
    metrics.current_revision.set(store.current_revision());
    metrics.compact_revision.set(store.compact_revision());
    metrics.keys_total.set(store.keys() as i64);
    let (streams, watchers, unsynced) = member.machine.hub.counts();
    metrics.watch_streams.set(streams as i64);
    metrics.watchers.set(watchers as i64);
    metrics.slow_watchers.set(unsynced as i64);
    advance(
        &metrics.read_index_rounds,
        status.read_index_rounds.load(Relaxed),
    );
    advance(
        &metrics.slow_read_indexes,
        status.slow_read_indexes.load(Relaxed),
    );
    advance(
        &metrics.read_indexes_failed,
        status.read_indexes_failed.load(Relaxed),
    );
    let leases = member.machine.lessor.counters();
    advance(&metrics.lease_granted, leases.granted.get());
    advance(&metrics.lease_revoked, leases.revoked.get());
    advance(&metrics.lease_renewed, leases.renewed.get());
}

/// The cluster version as etcd reports it: major.minor.
fn cluster_version() -> &'static str {
    ETCD_API_VERSION
        .rsplit_once('.')
        .map_or(ETCD_API_VERSION, |(major_minor, _)| major_minor)
}
