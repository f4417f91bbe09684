//! `synod bench` in smoke mode: every workload runs against a Synod member and against etcd
//! (it speaks only etcd's wire), and reports a parsable summary with no failed request. The
//! figures themselves come from `bench/compare` on a release build (docs/PERFORMANCE.md).

use crate::harness::{Etcd, Member, run_tool, synod_binary};

fn bench(endpoint: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["bench", "--json"];
    all.extend_from_slice(args);
    let (ok, out, err) = run_tool(synod_binary(), &["--endpoints", endpoint], &all, None);
    assert!(ok, "synod bench {args:?} failed: {err}");
    let summary: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON summary");
    assert_eq!(summary["failed"], 0, "{summary}");
    assert!(summary["ok"].as_u64().expect("ok count") > 0, "{summary}");
    assert!(summary["p99_ms"].as_f64().expect("p99") > 0.0, "{summary}");
    summary
}

/// Goal: every workload of `synod bench` runs against Synod and etcd alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_workloads_run_against_synod_and_etcd() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("synod"), &[]);
    std::fs::create_dir_all(root.path().join("etcd")).expect("etcd dir");
    let etcd = Etcd::start(&root.path().join("etcd"));
    for endpoint in [member.endpoint(), etcd.endpoint()] {
        let put = bench(
            &endpoint,
            &[
                "--clients",
                "4",
                "--total",
                "200",
                "put",
                "--key-space-size",
                "50",
            ],
        );
        assert_eq!(put["ok"], 200);
        bench(
            &endpoint,
            &["--clients", "4", "--total", "200", "range", "foo"],
        );
        bench(
            &endpoint,
            &[
                "--clients",
                "2",
                "--total",
                "100",
                "range",
                "foo",
                "--consistency",
                "s",
            ],
        );
        bench(&endpoint, &["--clients", "3", "--total", "30", "lock"]);
        let kubernetes = bench(
            &endpoint,
            &[
                "--clients",
                "4",
                "--total",
                "200",
                "kubernetes",
                "--objects",
                "100",
                "--namespaces",
                "4",
            ],
        );
        assert_eq!(kubernetes["failed"], 0, "{kubernetes}");
        assert!(
            kubernetes["watch_events"].as_u64() >= Some(100),
            "{kubernetes}"
        );
        let failover = bench(
            &endpoint,
            &["--total", "1", "election-failover", "--ttl", "2"],
        );
        let seconds = failover["p50_ms"].as_f64().expect("failover") / 1000.0;
        assert!(
            (1.0..10.0).contains(&seconds),
            "failover took {seconds} s with a 2 s TTL"
        );
        let verified = bench(
            &endpoint,
            &[
                "--clients",
                "4",
                "--conns",
                "2",
                "--total",
                "200",
                "--rate",
                "2000",
                "--verify",
                "put",
                "--key-space-size",
                "20",
            ],
        );
        assert_eq!(verified["verify_failed"], 0, "{verified}");
        bench(
            &endpoint,
            &[
                "--clients",
                "4",
                "--total",
                "100",
                "txn-put",
                "--txn-ops",
                "4",
                "--key-space-size",
                "100",
            ],
        );
        bench(
            &endpoint,
            &["--clients", "4", "--total", "100", "txn-mixed"],
        );
        for (workload, watchers) in [("watch", "20"), ("watch-fanout", "200")] {
            let watched = bench(
                &endpoint,
                &[
                    "--clients",
                    "4",
                    "--total",
                    "50",
                    workload,
                    "--watchers",
                    watchers,
                ],
            );
            let watchers: u64 = watchers.parse().expect("count");
            assert_eq!(watched["events"], 50 * watchers, "{watched}");
            for count in ["missing_events", "duplicate_events", "out_of_order_events"] {
                assert_eq!(watched[count], 0, "{watched}");
            }
        }
        let kept = bench(
            &endpoint,
            &[
                "--clients",
                "2",
                "--total",
                "200",
                "lease-keepalive",
                "--leases",
                "20",
            ],
        );
        assert_eq!(kept["leases_lost"], 0, "{kept}");
    }
}

/// Goal: `synod bench zookeeper` runs every operation against Synod's ZooKeeper port and a real
/// ZooKeeper alike, and the watch fan-out loses no event.
#[test]
fn zookeeper_bench_runs_against_synod_and_zookeeper() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("synod"), &[]);
    std::fs::create_dir_all(root.path().join("zookeeper")).expect("ZooKeeper's dir");
    let reference = crate::harness::zookeeper::ZooKeeper::start(&root.path().join("zookeeper"));
    for server in [member.zookeeper_address(), reference.address()] {
        for operation in ["create", "get", "set"] {
            let summary = bench(
                &member.endpoint(),
                &[
                    "--clients",
                    "4",
                    "--total",
                    "200",
                    "zookeeper",
                    operation,
                    "--servers",
                    &server,
                ],
            );
            assert_eq!(summary["ok"], 200, "{operation}: {summary}");
        }
        let fanout = bench(
            &member.endpoint(),
            &[
                "--clients",
                "20",
                "--total",
                "20",
                "zookeeper",
                "watch-fanout",
                "--servers",
                &server,
                "--interval-ms",
                "5",
            ],
        );
        assert_eq!(fanout["ok"], 400, "{fanout}");
        assert_eq!(fanout["missing_events"], 0, "{fanout}");
    }
}
