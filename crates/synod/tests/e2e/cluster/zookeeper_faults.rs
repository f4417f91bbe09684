//! The leader faults of `faults.rs` (kill -9 and restart, a partition of the leader) under a
//! ZooKeeper load: kazoo sessions spread over the members write and read (sync, then getData)
//! while a frozen session expires. The history must be linearizable (so no acknowledged write
//! is lost), every load session must survive, and the expired session's ephemeral must go,
//! once.

use std::process::{Command, Stdio};
use std::time::Duration;

use synod_sim::linearizability::{KvInput, KvOutput, Operation};

use super::assert_linearizable;
use crate::harness::Cluster;

/// Goal: ZooKeeper clients get what etcd clients get from the same faults: a linearizable
/// history with nothing acknowledged lost, sessions that outlive a dead or cut-off member (their
/// clients move), and ephemerals that go exactly once when their session expires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper_sessions_and_history_survive_leader_faults() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &["--snapshot-count", "300"]);
    let hosts = cluster
        .members
        .iter()
        .map(|m| m.zookeeper_address())
        .collect::<Vec<_>>()
        .join(",");
    let report_path = root.path().join("zk-load.json");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/zk_fault_load.py");
    let load = Command::new("python3")
        .args([script, &hosts, "14"])
        .arg(&report_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs the load");
    tokio::time::sleep(Duration::from_millis(2_500)).await;

    // 1. kill -9 the leader, let the others elect and serve, restart it.
    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    cluster.members[leader].restart();
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    // 2. Cut the leader off from the majority, then heal.
    let leader = cluster.leader().await;
    cluster.isolate(leader).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    cluster.heal();

    let output = tokio::task::spawn_blocking(move || load.wait_with_output())
        .await
        .expect("joined")
        .expect("the load ran");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "the load failed:\n{printed}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).expect("report"))
            .expect("JSON report");

    let history: Vec<Operation<KvInput, KvOutput>> = report["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(operation)
        .collect();
    assert_linearizable(&history, 150);
    for (client, survived) in report["survived"].as_object().expect("survived") {
        assert_eq!(survived, true, "load session {client} did not survive");
    }
    assert_eq!(
        report["doomed_gone"], true,
        "the expired session's ephemeral stayed"
    );
    assert_eq!(
        report["deletions"], 1,
        "the expired session's ephemeral went more or less than once"
    );
}

fn operation(entry: &serde_json::Value) -> Operation<KvInput, KvOutput> {
    let key = entry["key"].as_str().expect("key").to_owned();
    let value = entry["value"].as_str().expect("value").to_owned();
    let returned = entry["return"].as_u64();
    let (input, output) = if entry["kind"] == "put" {
        (KvInput::Put { key, value }, KvOutput::Done)
    } else {
        (KvInput::Get { key }, KvOutput::Value(Some(value)))
    };
    Operation {
        client: entry["client"].as_u64().expect("client"),
        input,
        call: entry["call"].as_u64().expect("call"),
        result: returned.map(|at| (at, output)),
    }
}
