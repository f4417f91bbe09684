//! Membership on real processes: adding, removing and re-adding members, a removed member that
//! missed its removal, peers of another cluster, restarts from a data directory, the CLI.

use super::*;

/// Goal: a member cut off while it is removed learns of its removal from its peers once the
/// network heals, and stops instead of campaigning forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_member_that_missed_its_removal_stops() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    let victim_id = cluster.member_id(victim).await;
    cluster.isolate(victim).await;
    let mut admin = cluster.members[leader].etcd_client().await;
    admin.member_remove(victim_id).await.expect("member remove");
    assert!(
        cluster.members[victim]
            .wait_exit(Duration::from_millis(1_500))
            .is_none(),
        "the cut-off member cannot know yet"
    );
    cluster.heal();
    let exited = cluster.members[victim].wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some(),
        "the removed member kept running after the heal"
    );
    assert!(
        cluster.members[victim]
            .log()
            .contains("permanently removed")
    );
    // Started again from its data, it is told again and stops again.
    cluster.members[victim].launch();
    let exited = cluster.members[victim].wait_exit(Duration::from_secs(20));
    assert!(
        exited.is_some(),
        "the removed member kept running after a restart"
    );
    let log = cluster.members[victim].log();
    assert_eq!(
        log.matches("permanently removed from the cluster; stopping")
            .count(),
        2,
        "{log}"
    );
}

/// Goal: a member refuses Raft traffic from another cluster with etcd's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_of_another_cluster_are_refused() {
    use synod_api::synodpb::RaftBatch;
    use synod_api::synodpb::peer_client::PeerClient;
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let channel = tonic::transport::Endpoint::from_shared(cluster.members[0].peer_url())
        .expect("url")
        .connect()
        .await
        .expect("connect to the peer port");
    let mut client = PeerClient::new(channel);
    let batch = RaftBatch {
        cluster_id: 12345,
        from: 1,
        to: 2,
        messages: Vec::new(),
    };
    let error = client
        .raft(futures::stream::iter([batch]))
        .await
        .expect_err("a foreign cluster is refused");
    assert_eq!(error.message(), "etcdserver: cluster ID mismatch");
}

/// Goal: the CLI runs a cluster's life: lists members, checks status, health and HashKV across
/// every member (`--cluster`), adds a learner that then joins, promotes it, moves leadership to
/// it, updates and removes members, and reports etcd's errors for bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_manages_the_cluster() {
    use crate::harness::synod_cli;
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let endpoint = cluster.members[(leader + 1) % 3].endpoint();

    let (ok, out, err) = synod_cli(&endpoint, &["endpoint", "status", "--cluster"], None);
    assert!(ok, "{out}{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert_eq!(
        out.matches(", true, false,").count(),
        1,
        "one leader: {out}"
    );
    let (ok, out, err) = synod_cli(&endpoint, &["endpoint", "health", "--cluster"], None);
    assert!(ok && out.matches("is healthy").count() == 3, "{out}{err}");
    let (ok, out, err) = synod_cli(&endpoint, &["endpoint", "hashkv", "--cluster"], None);
    assert!(ok, "{out}{err}");
    let hashes: std::collections::BTreeSet<&str> = out
        .lines()
        .map(|line| line.split(", ").nth(1).expect("hash column"))
        .collect();
    assert_eq!(hashes.len(), 1, "one hash across the cluster: {out}");

    // Add a learner; its printed settings start it.
    let mut joiner = crate::harness::Member::prepare(&cluster.root.join("m3"), Vec::new());
    let peer_url = joiner.peer_url();
    let (ok, out, err) = synod_cli(
        &endpoint,
        &["member", "add", "m3", "--peer-urls", &peer_url, "--learner"],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(out.starts_with("Learner "), "{out}");
    let id = out.split_whitespace().nth(1).expect("id").to_owned();
    let setting = |name: &str| {
        out.lines()
            .find_map(|line| line.strip_prefix(&format!("{name}=\"")))
            .and_then(|rest| rest.strip_suffix('"'))
            .expect("setting printed")
            .to_owned()
    };
    assert!(setting("SYNOD_INITIAL_CLUSTER").contains(&format!("m3={peer_url}")));
    joiner.set_args(vec![
        "--name".to_owned(),
        setting("SYNOD_NAME"),
        "--initial-cluster".to_owned(),
        setting("SYNOD_INITIAL_CLUSTER"),
        "--initial-cluster-state".to_owned(),
        setting("SYNOD_INITIAL_CLUSTER_STATE"),
    ]);
    joiner.launch();
    joiner.wait_ready();
    let promoted = eventually(Duration::from_secs(20), async || {
        synod_cli(&endpoint, &["member", "promote", &id], None).0
    })
    .await;
    assert!(promoted, "the learner was promoted");
    // It publishes its name and client URL once it serves.
    let listed = eventually(Duration::from_secs(10), async || {
        let (ok, out, _) = synod_cli(&endpoint, &["member", "list", "--consistency", "l"], None);
        ok && out.contains(&format!("{id}, started, m3, {peer_url}"))
    })
    .await;
    assert!(listed, "the new member is listed as started");

    // Move leadership to the new member.
    let all: Vec<String> = cluster
        .members
        .iter()
        .map(|m| m.endpoint())
        .chain([joiner.endpoint()])
        .collect();
    let (ok, out, err) = synod_cli(&all.join(","), &["move-leader", &id], None);
    assert!(ok, "{out}{err}");
    let mut on_joiner = joiner.etcd_client().await;
    let status = on_joiner.status().await.expect("status");
    assert_eq!(format!("{:x}", status.leader()), id, "the new member leads");

    // Errors are etcd's.
    let (ok, _, err) = synod_cli(&endpoint, &["member", "remove", "abcdef"], None);
    assert!(!ok && err.contains("etcdserver: member not found"), "{err}");
    let (ok, _, err) = synod_cli(&endpoint, &["member", "promote", &id], None);
    assert!(
        !ok && err.contains("etcdserver: can only promote a learner member"),
        "{err}"
    );
    let (ok, _, err) = synod_cli(
        &endpoint,
        &["member", "add", "dup", "--peer-urls", &peer_url],
        None,
    );
    assert!(
        !ok && err.contains("etcdserver: Peer URLs already exists"),
        "{err}"
    );
    let (ok, _, err) = synod_cli(
        &endpoint,
        &["member", "add", "bad", "--peer-urls", "not-a-url"],
        None,
    );
    assert!(
        !ok && err.contains("etcdserver: given member URLs are invalid"),
        "{err}"
    );

    // Update keeps the member; removing it makes it stop.
    let (ok, out, err) = synod_cli(
        &endpoint,
        &["member", "update", &id, "--peer-urls", &peer_url],
        None,
    );
    assert!(ok && out.contains("updated"), "{out}{err}");
    let (ok, out, err) = synod_cli(&endpoint, &["member", "remove", &id], None);
    assert!(ok && out.contains("removed"), "{out}{err}");
    assert!(
        joiner.wait_exit(Duration::from_secs(20)).is_some(),
        "the removed member stopped"
    );
}

/// Goal: `synod cluster up` runs a working local cluster in one command, with every member's log
/// prefixed by its name, and Ctrl-C stops all of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_runs_a_local_cluster() {
    let root = tempfile::tempdir().expect("temp dir");
    let base = crate::harness::free_port().min(60_000);
    let log = std::fs::File::create(root.path().join("up.log")).expect("log");
    let mut up = std::process::Command::new(crate::harness::synod_binary())
        .args([
            "cluster",
            "up",
            "--size",
            "3",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(root.path().join("data"))
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start synod cluster up");
    let endpoints: Vec<String> = (0..3)
        .map(|i| format!("127.0.0.1:{}", base + 2 * i))
        .collect();
    let joined = endpoints.join(",");
    let healthy = eventually(Duration::from_secs(30), async || {
        crate::harness::synod_cli(&joined, &["endpoint", "health"], None).0
    })
    .await;
    let output = || std::fs::read_to_string(root.path().join("up.log")).unwrap_or_default();
    assert!(healthy, "the local cluster became healthy:\n{}", output());
    let (ok, _, err) = crate::harness::synod_cli(&endpoints[1], &["put", "hello", "world"], None);
    assert!(ok, "{err}");
    let (ok, out, _) = crate::harness::synod_cli(&endpoints[2], &["get", "hello"], None);
    assert!(ok && out == "hello\nworld\n", "{out}");
    signal(up.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.try_wait().expect("wait").is_none() {
        assert!(
            Instant::now() < deadline,
            "cluster up did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let log = output();
    for name in ["m1 | ", "m2 | ", "m3 | "] {
        assert!(log.contains(name), "{name} logs are shown:\n{log}");
    }
    // Every member stopped with it.
    for endpoint in &endpoints {
        assert!(
            std::net::TcpStream::connect(endpoint).is_err(),
            "{endpoint} still serves"
        );
    }
}

/// Goal: a member restarts from its data directory alone: no --name, no --initial-cluster; it
/// rejoins, catches up, serves, and keeps its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_restarts_from_its_data_directory_alone() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill9();
    let mut client = cluster.members[leader].etcd_client().await;
    client.put("while-down", "1", None).await.expect("put");
    cluster.members[follower].set_args(Vec::new());
    cluster.members[follower].restart();
    let mut on_follower = cluster.members[follower].etcd_client().await;
    let read = on_follower.get("while-down", None).await.expect("read");
    assert_eq!(read.kvs().len(), 1, "it caught up");
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let listed = on_follower.member_list().await.expect("member list");
    let names: Vec<&str> = listed.members().iter().map(|m| m.name()).collect();
    assert!(
        names.contains(&format!("m{follower}").as_str()),
        "{names:?}"
    );
    assert!(!names.contains(&"default"), "{names:?}");
}

/// Goal: etcd's strict reconfiguration checks. With one of three members down, adding a voter
/// (which would need 3 of 4) or removing a running member (which would leave 1 running of 2) is
/// refused with etcd's error; removing the member that is down is allowed, and the removed
/// member can come back later as a new member with an empty data directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_reconfiguration_and_re_adding_a_member() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    let running = (leader + 2) % 3;
    let down_id = cluster.member_id(down).await;
    let running_id = cluster.member_id(running).await;
    cluster.members[down].kill9();
    // Let the leader notice the member is gone (CheckQuorum's activity window).
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    let mut admin = cluster.members[leader].etcd_client().await;
    let not_enough = "etcdserver: re-configuration failed due to not enough started members";
    let added = admin
        .member_add(["http://127.0.0.1:1"], None)
        .await
        .expect_err("adding a voter with a member down");
    assert!(added.to_string().contains(not_enough), "{added}");
    let removed = admin
        .member_remove(running_id)
        .await
        .expect_err("removing a running member with another down");
    assert!(removed.to_string().contains(not_enough), "{removed}");
    admin
        .member_remove(down_id)
        .await
        .expect("removing the member that is down");

    // The removed member comes back as a new one, with an empty data directory.
    let returning = &mut cluster.members[down];
    std::fs::remove_dir_all(&returning.data_dir).expect("wipe");
    let added = admin
        .member_add([returning.peer_url()], None)
        .await
        .expect("add it back");
    let new_id = added.member().expect("member").id();
    assert_ne!(new_id, down_id, "a new id");
    let initial = format!(
        "{},back={}",
        cluster
            .initial_cluster
            .split(',')
            .filter(|entry| !entry.ends_with(&returning.peer_url()))
            .collect::<Vec<_>>()
            .join(","),
        returning.peer_url()
    );
    returning.set_args(vec![
        "--name".to_owned(),
        "back".to_owned(),
        "--initial-cluster".to_owned(),
        initial,
        "--initial-cluster-state".to_owned(),
        "existing".to_owned(),
    ]);
    returning.restart();
    let mut client = returning.etcd_client().await;
    client
        .put("back", "again", None)
        .await
        .expect("write through the re-added member");
    let revision = client
        .get("back", None)
        .await
        .expect("read")
        .header()
        .expect("header")
        .revision();
    assert_same_hash(&cluster, revision).await;
}
