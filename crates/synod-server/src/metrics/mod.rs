//! Prometheus metrics at `/metrics`, under etcd's names, types, labels and histogram buckets, so
//! etcd's dashboards and alerts work unchanged (`../shared/design/etcd-ops-compat.md` §3), plus
//! Synod's own under `synod_`.
//!
//! One registry per process, as etcd's Go default registry: a process runs one member. Events
//! are counted where they happen (the gRPC layer in [`grpc`], peer links, the disk in [`disk`]);
//! values the member already keeps (indexes, sizes, the core's [`synod_core::counters`]) are
//! copied in when a scrape asks (`crate::scrape`), so the hot path pays nothing for them.

pub mod disk;
pub mod grpc;
mod process;

use std::sync::{LazyLock, Mutex};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// etcd's WAL fsync and backend commit buckets: 1 ms doubling to 8.192 s.
fn disk_buckets() -> Vec<f64> {
    doubling(0.001, 14)
}

/// `count` bucket edges from `first`, each twice the one before (Go's `ExponentialBuckets(first,
/// 2, count)`).
fn doubling(first: f64, count: usize) -> Vec<f64> {
    (0..count).map(|k| first * f64::from(1u32 << k)).collect()
}

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    /// Serializes scrapes: counters copied from the core are advanced by the difference.
    refresh: Mutex<()>,

    pub has_leader: IntGauge,
    pub is_leader: IntGauge,
    pub is_learner: IntGauge,
    pub leader_changes: IntCounter,
    pub proposals_committed: IntGauge,
    pub proposals_applied: IntGauge,
    pub proposals_pending: IntGauge,
    pub proposals_failed: IntCounter,
    pub slow_read_indexes: IntCounter,
    pub read_indexes_failed: IntCounter,
    pub apply_duration: HistogramVec,
    pub quota_backend_bytes: IntGauge,
    pub server_id: IntGaugeVec,
    pub server_version: IntGaugeVec,
    pub cluster_version: IntGaugeVec,
    pub health_success: IntCounter,
    pub health_failures: IntCounter,
    pub alarms: IntGaugeVec,
    pub auth_revision: IntGauge,

    pub wal_fsync: Histogram,
    pub backend_commit: Histogram,
    pub defrag_duration: Histogram,
    pub defrag_inflight: IntGauge,
    pub snapshot_duration: Histogram,

    pub db_total_size: IntGauge,
    pub db_total_size_debugging: IntGauge,
    pub db_in_use: IntGauge,
    pub range_total: IntCounter,
    pub put_total: IntCounter,
    pub delete_total: IntCounter,
    pub txn_total: IntCounter,
    pub compaction_keys: IntCounter,
    pub current_revision: IntGauge,
    pub compact_revision: IntGauge,
    pub keys_total: IntGauge,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
    pub slow_watchers: IntGauge,

    pub lease_granted: IntCounter,
    pub lease_revoked: IntCounter,
    pub lease_renewed: IntCounter,

    pub peer_sent_bytes: IntCounterVec,
    pub peer_received_bytes: IntCounterVec,
    pub peer_sent_failures: IntCounterVec,
    pub peer_round_trip: HistogramVec,
    pub active_peers: IntGaugeVec,
    pub client_sent_bytes: IntCounter,
    pub client_received_bytes: IntCounter,

    pub grpc: grpc::GrpcMetrics,
    process: process::ProcessMetrics,

    pub read_index_rounds: IntCounter,
    pub watch_queued_bytes: IntGauge,
    pub turn_seconds: Histogram,
    pub turn_commands: Histogram,
    pub apply_batch_replies: Histogram,
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

/// Registers a metric and hands it back. Names are fixed and unique, so registration cannot
/// fail; if it ever did, the metric still counts but is not exported, and the log says so.
fn add<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    if let Err(error) = registry.register(Box::new(metric.clone())) {
        tracing::error!(%error, "a metric could not be registered");
    }
    metric
}

// The constructors below only fail on malformed names or labels, which are constants here.
#[allow(clippy::expect_used)]
fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    add(registry, IntGauge::new(name, help).expect("valid metric"))
}

#[allow(clippy::expect_used)]
fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    add(registry, IntCounter::new(name, help).expect("valid metric"))
}

#[allow(clippy::expect_used)]
fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    add(
        registry,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

#[allow(clippy::expect_used)]
fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    add(
        registry,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
    )
}

#[allow(clippy::expect_used)]
fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    add(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
            .expect("valid metric"),
    )
}

#[allow(clippy::expect_used)]
fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    add(
        registry,
        HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
            .expect("valid metric"),
    )
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let registry = &r;
        Metrics {
            has_leader: gauge(
                registry,
                "etcd_server_has_leader",
                "Whether or not a leader exists. 1 is existence, 0 is not.",
            ),
            is_leader: gauge(
                registry,
                "etcd_server_is_leader",
                "Whether or not this member is a leader. 1 if is, 0 otherwise.",
            ),
            is_learner: gauge(
                registry,
                "etcd_server_is_learner",
                "Whether or not this member is a learner. 1 if is, 0 otherwise.",
            ),
            leader_changes: counter(
                registry,
                "etcd_server_leader_changes_seen_total",
                "The number of leader changes seen.",
            ),
            proposals_committed: gauge(
                registry,
                "etcd_server_proposals_committed_total",
                "The total number of consensus proposals committed.",
            ),
            proposals_applied: gauge(
                registry,
                "etcd_server_proposals_applied_total",
                "The total number of consensus proposals applied.",
            ),
            proposals_pending: gauge(
                registry,
                "etcd_server_proposals_pending",
                "The current number of pending proposals to commit.",
            ),
            proposals_failed: counter(
                registry,
                "etcd_server_proposals_failed_total",
                "The total number of failed proposals seen.",
            ),
            slow_read_indexes: counter(
                registry,
                "etcd_server_slow_read_indexes_total",
                "The total number of pending read indexes not in sync with leader's or timed out read index requests.",
            ),
            read_indexes_failed: counter(
                registry,
                "etcd_server_read_indexes_failed_total",
                "The total number of failed read indexes seen.",
            ),
            apply_duration: histogram_vec(
                registry,
                "etcd_server_apply_duration_seconds",
                "The latency distributions of v2 apply called by backend.",
                &["version", "op", "success"],
                // etcd's: 0.1 ms doubling to 52 s.
                doubling(0.0001, 20),
            ),
            quota_backend_bytes: gauge(
                registry,
                "etcd_server_quota_backend_bytes",
                "Current backend storage quota size in bytes.",
            ),
            server_id: gauge_vec(
                registry,
                "etcd_server_id",
                "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
                &["server_id"],
            ),
            server_version: gauge_vec(
                registry,
                "etcd_server_version",
                "Which version is running. 1 for 'server_version' label with current version.",
                &["server_version"],
            ),
            cluster_version: gauge_vec(
                registry,
                "etcd_cluster_version",
                "Which version is running. 1 for 'cluster_version' label with current cluster version",
                &["cluster_version"],
            ),
            health_success: counter(
                registry,
                "etcd_server_health_success",
                "The total number of successful health checks",
            ),
            health_failures: counter(
                registry,
                "etcd_server_health_failures",
                "The total number of failed health checks",
            ),
            alarms: gauge_vec(
                registry,
                "etcd_debugging_server_alarms",
                "Alarms for every member in cluster. 1 for 'server_id' label with current ID. 2 for 'alarm_type' label with type of this alarm",
                &["server_id", "alarm_type"],
            ),
            auth_revision: gauge(
                registry,
                "etcd_debugging_auth_revision",
                "The current revision of auth store.",
            ),

            wal_fsync: histogram(
                registry,
                "etcd_disk_wal_fsync_duration_seconds",
                "The latency distributions of fsync called by WAL.",
                disk_buckets(),
            ),
            backend_commit: histogram(
                registry,
                "etcd_disk_backend_commit_duration_seconds",
                "The latency distributions of commit called by backend.",
                disk_buckets(),
            ),
            defrag_duration: histogram(
                registry,
                "etcd_disk_backend_defrag_duration_seconds",
                "The latency distribution of backend defragmentation.",
                doubling(0.1, 13),
            ),
            defrag_inflight: gauge(
                registry,
                "etcd_disk_defrag_inflight",
                "Whether or not defrag is active on the member. 1 means active, 0 means not.",
            ),
            snapshot_duration: histogram(
                registry,
                "etcd_disk_backend_snapshot_duration_seconds",
                "The latency distribution of backend snapshots.",
                doubling(0.01, 17),
            ),

            db_total_size: gauge(
                registry,
                "etcd_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes.",
            ),
            db_total_size_debugging: gauge(
                registry,
                "etcd_debugging_mvcc_db_total_size_in_bytes",
                "Total size of the underlying database physically allocated in bytes (etcd 3.4's name).",
            ),
            db_in_use: gauge(
                registry,
                "etcd_mvcc_db_total_size_in_use_in_bytes",
                "Total size of the underlying database logically in use in bytes.",
            ),
            range_total: counter(
                registry,
                "etcd_mvcc_range_total",
                "Total number of ranges seen by this member.",
            ),
            put_total: counter(
                registry,
                "etcd_mvcc_put_total",
                "Total number of puts seen by this member.",
            ),
            delete_total: counter(
                registry,
                "etcd_mvcc_delete_total",
                "Total number of deletes seen by this member.",
            ),
            txn_total: counter(
                registry,
                "etcd_mvcc_txn_total",
                "Total number of txns seen by this member.",
            ),
            compaction_keys: counter(
                registry,
                "etcd_debugging_mvcc_db_compaction_keys_total",
                "Total number of db keys compacted.",
            ),
            current_revision: gauge(
                registry,
                "etcd_debugging_mvcc_current_revision",
                "The current revision of store.",
            ),
            compact_revision: gauge(
                registry,
                "etcd_debugging_mvcc_compact_revision",
                "The revision of the last compaction in store.",
            ),
            keys_total: gauge(
                registry,
                "etcd_debugging_mvcc_keys_total",
                "Total number of keys.",
            ),
            watch_streams: gauge(
                registry,
                "etcd_debugging_mvcc_watch_stream_total",
                "Total number of watch streams.",
            ),
            watchers: gauge(
                registry,
                "etcd_debugging_mvcc_watcher_total",
                "Total number of watchers.",
            ),
            slow_watchers: gauge(
                registry,
                "etcd_debugging_mvcc_slow_watcher_total",
                "Total number of unsynced slow watchers.",
            ),

            lease_granted: counter(
                registry,
                "etcd_debugging_lease_granted_total",
                "The total number of granted leases.",
            ),
            lease_revoked: counter(
                registry,
                "etcd_debugging_lease_revoked_total",
                "The total number of revoked leases.",
            ),
            lease_renewed: counter(
                registry,
                "etcd_debugging_lease_renewed_total",
                "The number of renewed leases seen by the leader.",
            ),

            peer_sent_bytes: counter_vec(
                registry,
                "etcd_network_peer_sent_bytes_total",
                "The total number of bytes sent to peers.",
                &["To"],
            ),
            peer_received_bytes: counter_vec(
                registry,
                "etcd_network_peer_received_bytes_total",
                "The total number of bytes received from peers.",
                &["From"],
            ),
            peer_sent_failures: counter_vec(
                registry,
                "etcd_network_peer_sent_failures_total",
                "The total number of send failures from peers.",
                &["To"],
            ),
            peer_round_trip: histogram_vec(
                registry,
                "etcd_network_peer_round_trip_time_seconds",
                "Round-Trip-Time histogram between peers",
                &["To"],
                doubling(0.0001, 16),
            ),
            active_peers: gauge_vec(
                registry,
                "etcd_network_active_peers",
                "The current number of active peer connections.",
                &["Local", "Remote"],
            ),
            client_sent_bytes: counter(
                registry,
                "etcd_network_client_grpc_sent_bytes_total",
                "The total number of bytes sent to grpc clients.",
            ),
            client_received_bytes: counter(
                registry,
                "etcd_network_client_grpc_received_bytes_total",
                "The total number of bytes received from grpc clients.",
            ),

            grpc: grpc::GrpcMetrics::new(registry),
            process: process::ProcessMetrics::new(registry),

            read_index_rounds: counter(
                registry,
                "synod_read_index_rounds_total",
                "ReadIndex rounds asked of Raft; each serves every linearizable read of its node-loop turn.",
            ),
            watch_queued_bytes: gauge(
                registry,
                "synod_watch_queued_bytes",
                "Bytes of events and responses queued in watch streams, waiting for their clients.",
            ),
            turn_seconds: histogram(
                registry,
                "synod_node_turn_duration_seconds",
                "Time of one node-loop turn: driver, log append and fsync, apply.",
                doubling(0.0001, 16),
            ),
            turn_commands: histogram(
                registry,
                "synod_node_turn_commands",
                "Commands (proposals, reads, peer messages) drained in one node-loop turn: the batch size.",
                doubling(1.0, 14),
            ),
            apply_batch_replies: histogram(
                registry,
                "synod_apply_batch_replies",
                "Requests answered by one apply batch.",
                doubling(1.0, 14),
            ),
            refresh: Mutex::new(()),
            registry: r,
        }
    }

    /// The text exposition of every metric as of now; `refresh` first copies in the values
    /// kept elsewhere (scrapes take turns, so counters advance by differences). Blocking: call
    /// it off the runtime's workers.
    pub fn render(&self, refresh: impl FnOnce(&Metrics)) -> String {
        // Held through the gathering too: one scrape's refresh (which resets the alarm series)
        // must not show through another's.
        let _guard = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
        refresh(self);
        self.process.refresh();
        let mut families = self.registry.gather();
        // raft-engine's own metrics (`raft_engine_*`) live in the default registry.
        families.extend(prometheus::gather());
        let mut text = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&families, &mut text) {
            tracing::error!(%error, "encoding the metrics failed");
        }
        String::from_utf8(text).unwrap_or_default()
    }
}

/// Moves a counter up to `value` (a count kept elsewhere, which only grows).
pub fn advance(counter: &IntCounter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

/// Times each request the state machine applies into `etcd_server_apply_duration_seconds`. It
/// lives on the node loop's thread: each (op, success) series is looked up in the vector (a hash
/// and a lock) once, then kept here.
#[derive(Default)]
pub struct ApplyTimer {
    started: Option<std::time::Instant>,
    series: std::collections::HashMap<(&'static str, bool), Histogram>,
}

impl synod_core::apply::ApplyObserver for ApplyTimer {
    fn started(&mut self) {
        self.started = Some(std::time::Instant::now());
    }

    fn finished(&mut self, op: &'static str, success: bool) {
        if let Some(started) = self.started.take() {
            self.series
                .entry((op, success))
                .or_insert_with(|| {
                    metrics().apply_duration.with_label_values(&[
                        "v3",
                        op,
                        if success { "true" } else { "false" },
                    ])
                })
                .observe(started.elapsed().as_secs_f64());
        }
    }
}
