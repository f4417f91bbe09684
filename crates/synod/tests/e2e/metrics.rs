//! Prometheus metrics: `/metrics` read by Prometheus' own parser (`promtool`), counters that
//! move with the work done, peer round trips in a cluster, and the repository's Grafana
//! dashboard and alert rules checked against what a member exports.

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use crate::harness::{Cluster, Member, free_port, http_get};

/// Findings of `promtool check metrics` that are etcd's own names, kept for compatibility:
/// gauges etcd names `_total`, counters it names without, and raft-engine's `_count` gauges.
const ETCD_NAMING_LINT: &[&str] = &[
    "etcd_debugging_mvcc_keys_total",
    "etcd_debugging_mvcc_slow_watcher_total",
    "etcd_debugging_mvcc_watch_stream_total",
    "etcd_debugging_mvcc_watcher_total",
    "etcd_server_health_failures",
    "etcd_server_health_success",
    "etcd_server_proposals_applied_total",
    "etcd_server_proposals_committed_total",
    "raft_engine_log_entry_count",
    "raft_engine_log_file_count",
    "raft_engine_recycled_file_count",
];

/// Runs `promtool check metrics` (Prometheus' text-format parser and linter) on `text`; fails
/// the test on a parse error or on a lint finding other than etcd's own names.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package; scripts/test installs it)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write metrics");
    let output = child.wait_with_output().expect("promtool ran");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    for line in report.lines().filter(|l| !l.trim().is_empty()) {
        let name = line.split_whitespace().next().unwrap_or("");
        assert!(
            ETCD_NAMING_LINT.contains(&name),
            "promtool: {line}\n(whole report:\n{report})"
        );
    }
    assert!(
        output.status.success() || output.status.code() == Some(3),
        "promtool failed: {report}"
    );
}

/// The value of the series written exactly as `series` (name and labels as exported).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == series).then(|| value.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no series {series} in /metrics"))
}

fn scrape(port: u16) -> String {
    let (status, body) = http_get(port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{body}");
    body
}

/// Goal: Prometheus' parser reads `/metrics` on the client port and on `--listen-metrics-urls`,
/// and N puts move the put, proposal and gRPC counters by at least N.
#[tokio::test]
async fn metrics_parse_and_count_the_work_done() {
    let root = tempfile::tempdir().expect("temp dir");
    let metrics_port = free_port();
    let metrics_url = format!("http://127.0.0.1:{metrics_port}");
    let member = Member::start(
        root.path(),
        &[
            "--listen-metrics-urls",
            &metrics_url,
            "--metrics",
            "extensive",
        ],
    );
    let before = scrape(member.client_port);
    promtool_accepts(&before);
    let put_ok = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#;
    let mut client = member.etcd_client().await;
    const PUTS: f64 = 50.0;
    for i in 0..PUTS as usize {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    client.get("k1", None).await.expect("get");
    let after = scrape(metrics_port);
    promtool_accepts(&after);
    for series in [
        "etcd_mvcc_put_total",
        "etcd_server_proposals_committed_total",
        "etcd_server_proposals_applied_total",
        put_ok,
    ] {
        let moved = value(&after, series) - value(&before, series);
        assert!(
            moved >= PUTS,
            "{series} moved by {moved}, expected >= {PUTS}"
        );
    }
    assert_eq!(value(&after, "etcd_server_has_leader"), 1.0);
    assert_eq!(value(&after, "etcd_server_is_leader"), 1.0);
    assert!(value(&after, "etcd_mvcc_range_total") >= 1.0);
    // Every put was timed as it was applied, under etcd's labels.
    assert!(
        value(
            &after,
            r#"etcd_server_apply_duration_seconds_count{op="Put",success="true",version="v3"}"#
        ) >= PUTS
    );
    // The linearizable get took a ReadIndex round; none was slow or failed on a lone member.
    assert!(value(&after, "synod_read_index_rounds_total") >= 1.0);
    assert_eq!(value(&after, "etcd_server_slow_read_indexes_total"), 0.0);
    assert_eq!(value(&after, "etcd_server_read_indexes_failed_total"), 0.0);
    assert_eq!(value(&after, "synod_watch_queued_bytes"), 0.0);
    assert!(value(&after, "etcd_disk_wal_fsync_duration_seconds_count") >= PUTS);
    assert!(value(&after, "etcd_debugging_mvcc_keys_total") >= PUTS);
    assert!(value(&after, "etcd_network_client_grpc_received_bytes_total") > 0.0);
    assert!(value(&after, "process_resident_memory_bytes") > 1e6);
    // `--metrics extensive` times every call.
    assert!(
        value(
            &after,
            r#"grpc_server_handling_seconds_count{grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
        ) >= PUTS
    );
    // A failed call is counted with its code: a range at a future revision is OutOfRange.
    let future = etcd_client::GetOptions::new().with_revision(1_000_000);
    assert!(client.get("k1", Some(future)).await.is_err());
    let failed = scrape(member.client_port);
    assert_eq!(
        value(
            &failed,
            r#"grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"}"#
        ),
        1.0
    );
    // A request refused as it was applied is timed as a failure: revoking a lease nobody granted.
    assert!(client.lease_revoke(0x5eed).await.is_err());
    assert_eq!(
        value(
            &scrape(member.client_port),
            r#"etcd_server_apply_duration_seconds_count{op="LeaseRevoke",success="false",version="v3"}"#
        ),
        1.0
    );
    // A call through the JSON gateway counts as the gRPC call it stands for, as in etcd.
    let before_gateway = value(&failed, put_ok);
    let (status, body) = crate::harness::http_request(
        member.client_port,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key": "Z3c=", "value": "dg=="}"#),
    )
    .expect("gateway put");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        value(&scrape(member.client_port), put_ok),
        before_gateway + 1.0
    );
    // The metrics URL serves metrics and health, not the API.
    let (status, _) = http_get(metrics_port, "/health").expect("GET /health");
    assert_eq!(status, 200);
    let (status, _) = http_get(metrics_port, "/version").expect("GET /version");
    assert_eq!(status, 200, "etcd serves /version on the metrics URL too");
}

/// Goal: in a 3-member cluster every member measures its round trip to each peer, labelled with
/// the peer's id as etcd labels it, and counts the Raft bytes it sends and receives (a follower
/// talks only to the leader, so per-peer byte counts may be zero).
#[tokio::test]
async fn peer_round_trips_appear_in_a_cluster() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let mut ids = Vec::new();
    for index in 0..3 {
        ids.push(format!("{:x}", cluster.member_id(index).await));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for (index, member) in cluster.members.iter().enumerate() {
        for (peer_index, peer) in ids.iter().enumerate() {
            if peer_index == index {
                continue;
            }
            let series =
                format!(r#"etcd_network_peer_round_trip_time_seconds_count{{To="{peer}"}}"#);
            loop {
                let text = scrape(member.client_port);
                let probes = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{series} ")))
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0);
                if probes >= 1.0 {
                    break;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "member {index} never measured its round trip to {peer}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        let text = scrape(member.client_port);
        for family in [
            "etcd_network_peer_sent_bytes_total",
            "etcd_network_peer_received_bytes_total",
        ] {
            let total: f64 = text
                .lines()
                .filter(|l| l.starts_with(&format!("{family}{{")))
                .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                .sum();
            assert!(total > 0.0, "member {index}: {family} is {total}");
        }
    }
}

/// Goal: in a 3-member cluster a put costs each member one log fsync, not two: the Ready that
/// only moves the commit index (on the leader after the acknowledgements, on a follower when the
/// leader announces the commit) is written without one (TRACK_RECORD.md, row 66).
#[tokio::test]
async fn a_put_costs_one_log_fsync_on_each_member() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let mut client = cluster.members[leader].etcd_client().await;
    client.put("warm", "up", None).await.expect("put");
    const FSYNCS: &str = "etcd_disk_wal_fsync_duration_seconds_count";
    let before: Vec<f64> = cluster
        .members
        .iter()
        .map(|m| value(&scrape(m.client_port), FSYNCS))
        .collect();
    const PUTS: f64 = 200.0;
    for i in 0..PUTS as usize {
        client.put(format!("k{i}"), "v", None).await.expect("put");
    }
    for (index, member) in cluster.members.iter().enumerate() {
        let fsyncs = value(&scrape(member.client_port), FSYNCS) - before[index];
        assert!(
            fsyncs <= PUTS * 1.25,
            "member {index} (leader {leader}) made {fsyncs} log fsyncs for {PUTS} puts"
        );
    }
}

/// Metric names a PromQL expression uses: identifiers in the families Synod exports, outside
/// label matchers (`{...}`) and grouping lists (`by (...)`, `without (...)`).
fn metric_names(expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut current = String::new();
    let mut in_braces = false;
    let mut in_quotes = false;
    let mut grouping = false;
    let mut in_grouping = false;
    let known = ["etcd_", "grpc_", "process_", "synod_", "os_"];
    for c in expression.chars().chain(std::iter::once(' ')) {
        if in_quotes {
            in_quotes = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            current.push(c);
            continue;
        }
        if !current.is_empty() {
            if current == "by" || current == "without" {
                grouping = true;
            } else if !in_braces
                && !in_grouping
                && known.iter().any(|prefix| current.starts_with(prefix))
            {
                names.insert(current.clone());
            }
            current.clear();
        }
        match c {
            '"' => in_quotes = true,
            '{' => in_braces = true,
            '}' => in_braces = false,
            '(' if grouping => in_grouping = true,
            ')' if in_grouping => {
                in_grouping = false;
                grouping = false;
            }
            ' ' => {}
            _ => grouping = false,
        }
    }
    names
}

/// Goal: every metric the repository's Grafana dashboard and alert rules query is one a member
/// exports, the rules load in Prometheus, and their unit tests pass (`promtool test rules`).
#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let ops = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ops.join("grafana/synod-dashboard.json")).expect("dashboard"),
    )
    .expect("dashboard is JSON");
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            used.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    let rules = std::fs::read_to_string(ops.join("prometheus/synod-alerts.yml")).expect("rules");
    for line in rules.lines().filter(|l| !l.trim_start().starts_with('#')) {
        if let Some((_, expression)) = line.split_once("expr:") {
            used.extend(metric_names(expression));
        } else if line.starts_with("          ") {
            used.extend(metric_names(line));
        }
    }
    assert!(used.len() >= 20, "found only {used:?}");

    // Families with labels exist once they have a series, as in etcd: peers need a cluster,
    // call timings a call, and the alarm gauge an alarm.
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &["--metrics", "extensive"]);
    let member = &cluster.members[0];
    let mut client = member.etcd_client().await;
    client.put("k", "v", None).await.expect("put");
    let mut alarm = etcd_client::AlarmOptions::new();
    alarm.with_member(cluster.member_id(0).await);
    client
        .alarm(
            etcd_client::AlarmAction::Activate,
            etcd_client::AlarmType::Nospace,
            Some(alarm),
        )
        .await
        .expect("raise an alarm");
    let mut text = String::new();
    for _ in 0..50 {
        text = scrape(member.client_port);
        if text.contains("etcd_network_peer_round_trip_time_seconds_bucket") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let exported: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in &used {
        let family = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| exported.contains(base))
            .unwrap_or(name);
        assert!(exported.contains(family), "{name} is used but not exported");
    }

    for args in [
        vec!["check", "rules", "prometheus/synod-alerts.yml"],
        vec!["test", "rules", "prometheus/synod-alerts.test.yml"],
    ] {
        let output = Command::new("promtool")
            .args(&args)
            .current_dir(&ops)
            .output()
            .expect("promtool");
        assert!(
            output.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
