//! A member that goes wrong: a corrupt state machine is detected, a full disk raises NOSPACE.

use super::*;

/// Goal: a member whose state-machine file went bad behind Raft's back (a value rewritten in
/// place, which no checksum notices) is found by comparing HashKV across members: the leader
/// raises the CORRUPT alarm naming it and every member then refuses reads and writes instead of
/// serving possibly wrong data; the CLI's consistency check fails; and the member, restarted,
/// refuses to start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_member_is_detected_not_served() {
    use crate::harness::{http_request, synod_cli};
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &["--corrupt-check-interval", "300ms"]);
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    let victim_id = cluster.member_id(victim).await;
    let mut client = cluster.members[leader].etcd_client().await;
    client.put("c", "good", None).await.expect("put");
    let mut on_victim = cluster.members[victim].etcd_client().await;
    let applied = eventually(Duration::from_secs(10), async || {
        on_victim
            .get("c", Some(GetOptions::new().with_serializable()))
            .await
            .is_ok_and(|r| r.kvs().len() == 1)
    })
    .await;
    assert!(applied);
    let (code, body) = http_request(
        cluster.members[victim].client_port,
        "POST",
        "/synod/test/corrupt",
        Some(r#"{"key": "c", "value": "bad"}"#),
    )
    .expect("corrupt");
    assert!(code == 200 && body.contains("\"ok\":true"), "{body}");

    let (ok, _, err) = synod_cli(
        &cluster.members[leader].endpoint(),
        &["endpoint", "hashkv", "--cluster"],
        None,
    );
    assert!(!ok && err.contains("members disagree"), "{err}");

    let refused = eventually(Duration::from_secs(10), async || {
        matches!(
            client.get("c", None).await,
            Err(etcd_client::Error::GRpcStatus(status)) if status.message() == "etcdserver: corrupt cluster"
        )
    })
    .await;
    assert!(
        refused,
        "reads are refused once the CORRUPT alarm is raised"
    );
    let alarms = client
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("alarm list");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.member_id() == victim_id && a.alarm() == etcd_client::AlarmType::Corrupt),
        "the alarm names the corrupt member: {alarms:?}"
    );
    let write = on_victim.put("c", "new", None).await;
    assert!(write.is_err(), "writes are refused too");

    cluster.members[victim].kill9();
    let (status, log) = cluster.members[victim].start_expecting_failure();
    assert!(!status.success());
    assert!(log.contains("found data inconsistency with peer"), "{log}");
}

/// Goal: when one member's disk runs low, it raises NOSPACE for the whole cluster: writes on
/// every member are refused with etcd's error while reads go on, no member stops, and nothing
/// acknowledged is lost. Needs root to mount a small tmpfs; skips with a message otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_disk_on_one_member_raises_nospace_for_the_cluster() {
    let root = tempfile::tempdir().expect("temp dir");
    let data = root.path().join("m1/data");
    let Some(_unmount) = crate::harness::Mounted::tmpfs(
        &data,
        "48m",
        "low_disk_on_one_member_raises_nospace_for_the_cluster",
    ) else {
        return;
    };
    // Every member gets the same reserve; only m1's disk is small enough to reach it.
    let cluster = Cluster::start(root.path(), 3, &["--disk-space-reserve-bytes", "24000000"]);
    let leader = cluster.leader().await;
    let mut client = cluster.members[leader].etcd_client().await;
    let value = "n".repeat(16 * 1024);
    let mut acked = BTreeMap::new();
    let mut refusal = None;
    for i in 0..5_000 {
        let key = format!("full/{i:05}");
        match client.put(key.clone(), value.clone(), None).await {
            Ok(response) => {
                acked.insert(key, response.header().expect("header").revision());
            }
            Err(error) => {
                refusal = Some(error.to_string());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let refusal = refusal.expect("writes were refused before 5000 puts of 16 KiB");
    assert!(
        refusal.contains("etcdserver: mvcc: database space exceeded"),
        "{refusal}"
    );
    assert!(
        acked.len() > 10,
        "writes went through before the disk ran low"
    );
    for (i, member) in cluster.members.iter().enumerate() {
        assert!(
            member.is_running() && std::net::TcpStream::connect(member.endpoint()).is_ok(),
            "member m{i} stopped:\n{}",
            member.log()
        );
        let mut on_member = member.etcd_client().await;
        let write = on_member.put("more", "x", None).await;
        assert!(write.is_err(), "m{i} still accepts writes");
    }
    let alarms = client
        .alarm(
            etcd_client::AlarmAction::Get,
            etcd_client::AlarmType::None,
            None,
        )
        .await
        .expect("alarm list");
    let low = cluster.member_id(1).await;
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.member_id() == low && a.alarm() == etcd_client::AlarmType::Nospace),
        "{alarms:?}"
    );
    let mut on_low = cluster.members[1].etcd_client().await;
    for (key, revision) in &acked {
        let found = on_low
            .get(key.as_str(), Some(GetOptions::new().with_keys_only()))
            .await
            .expect("reads still work");
        assert_eq!(
            found.kvs().first().map(|kv| kv.mod_revision()),
            Some(*revision)
        );
    }
}
