//! Faults under load with checked histories: kill -9 and SIGSTOP of the leader, partitions,
//! five members losing two, and mutual exclusion kept by fencing tokens.

use super::*;
use crate::harness::TestPki;

/// Goal: faults on the leader, one after the other under load from clients on every member:
/// kill -9 (then restart), SIGSTOP past the election timeout (then SIGCONT), and a network
/// partition that cuts the leader from the majority (then heals). The whole history is
/// linearizable, no acknowledged write is lost, a watcher that follows the cluster sees every
/// revision once and in order, and the members agree on HashKV afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_faults_under_load_keep_history_linearizable() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &["--snapshot-count", "300"]);
    leader_faults_under_load(cluster).await;
}

/// Goal: the same faults and checks on a cluster with mutual TLS on every client and peer
/// connection and authentication on: reconnections after kill -9, SIGSTOP and partitions all go
/// through handshakes (peers dial each other with their certificates), every request is
/// identified by its certificate's CN and every write carries its caller through the log, and
/// nothing is lost or reordered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_faults_under_load_with_mutual_tls_and_auth() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "fault test CA");
    let cluster = Cluster::start_tls(root.path(), 3, &["--snapshot-count", "300"], &pki, "root");
    let flags = cluster.members[0].client_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for args in [
        &["user", "add", "root", "--no-password"][..],
        &["user", "grant-role", "root", "root"],
        &["auth", "enable"],
    ] {
        let (ok, out, err) = run_tool("etcdctl", &flags, args, None);
        assert!(ok, "etcdctl {args:?}: {out}{err}");
    }
    let (ok, _, err) = run_tool(
        "etcdctl",
        &[&format!("--endpoints={}", cluster.members[0].url())],
        &[
            "get",
            "lin/a",
            "--insecure-skip-tls-verify",
            "--command-timeout=2s",
        ],
        None,
    );
    assert!(!ok, "a client without a certificate was served: {err}");
    leader_faults_under_load(cluster).await;
}

/// kill -9, SIGSTOP and a partition of the leader under a recorded load and a moving watcher;
/// then the history must be linearizable, the watch complete, and the members agree.
async fn leader_faults_under_load(mut cluster: Cluster) {
    let first_revision = current_revision(&cluster).await + 1;
    let watcher = MovingWatcher::start(&cluster, 0, first_revision);
    let load = Load::start(&cluster, 4);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 1. kill -9 the leader, let the others elect and serve, restart it.
    let leader = cluster.leader().await;
    cluster.members[leader].kill9();
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    cluster.members[leader].restart();
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 2. SIGSTOP the leader for three election timeouts, then resume it.
    let leader = cluster.leader().await;
    let pid = cluster.members[leader].pid().expect("running");
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    signal(pid, "CONT");
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 3. Cut the leader off from the majority, then heal.
    let leader = cluster.leader().await;
    cluster.isolate(leader).await;
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    cluster.heal();
    tokio::time::sleep(Duration::from_millis(1_000)).await;

    let (history, acked) = load.finish().await;
    let last_revision = current_revision(&cluster).await;
    let events = watcher.finish(last_revision).await;
    assert_linearizable(&history, 200);
    check_watch(&events, first_revision, last_revision, &acked);
    // Every acknowledged write is in the final state's history.
    let mut client = cluster.members[0].etcd_client().await;
    assert_holds_acknowledged(&mut client, &acked).await;
    assert_same_hash(&cluster, last_revision).await;
}

/// Goal: the checker has teeth. A follower cut off from the others, in the deliberately unsafe
/// mode that serves linearizable reads from local state (compiled only into test builds), answers
/// a stale value; the checker rejects that history. In the normal mode the same read fails
/// (it cannot reach the leader) instead of answering stale.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_reads_on_a_partitioned_follower_are_caught() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let started = Instant::now();
    let now = || started.elapsed().as_nanos() as u64;
    let mut history = Vec::new();
    let mut writer = cluster.members[leader].etcd_client().await;
    let mut reader = etcd_client::Client::connect(
        [cluster.members[follower].url()],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(3))),
    )
    .await
    .expect("connect");

    let call = now();
    writer.put("lin/x", "old", None).await.expect("put");
    history.push(Operation {
        client: 0,
        input: KvInput::Put {
            key: "lin/x".to_owned(),
            value: "old".to_owned(),
        },
        call,
        result: Some((now(), KvOutput::Done)),
    });
    // The follower has applied "old" before it is cut off.
    let applied = eventually(Duration::from_secs(10), async || {
        reader
            .get("lin/x", Some(GetOptions::new().with_serializable()))
            .await
            .is_ok_and(|r| !r.kvs().is_empty())
    })
    .await;
    assert!(applied);
    cluster.isolate(follower).await;
    let call = now();
    writer
        .put("lin/x", "new", None)
        .await
        .expect("put on the majority");
    history.push(Operation {
        client: 0,
        input: KvInput::Put {
            key: "lin/x".to_owned(),
            value: "new".to_owned(),
        },
        call,
        result: Some((now(), KvOutput::Done)),
    });

    // Safe mode: the cut-off follower cannot confirm a read index, so the read fails.
    let safe = reader.get("lin/x", None).await;
    assert!(
        safe.is_err(),
        "a partitioned follower answered a linearizable read: {safe:?}"
    );

    // Unsafe mode: it answers from local state, which is stale.
    let (code, _) = crate::harness::http_request(
        cluster.members[follower].client_port,
        "POST",
        "/synod/test/unsafe-local-reads",
        Some(r#"{"on": true}"#),
    )
    .expect("switch");
    assert_eq!(code, 200);
    let call = now();
    let stale = reader
        .get("lin/x", None)
        .await
        .expect("unsafe read answers");
    let value = stale
        .kvs()
        .first()
        .map(|kv| kv.value_str().expect("utf8").to_owned());
    assert_eq!(value.as_deref(), Some("old"), "the unsafe read is stale");
    history.push(Operation {
        client: 1,
        input: KvInput::Get {
            key: "lin/x".to_owned(),
        },
        call,
        result: Some((now(), KvOutput::Value(value))),
    });
    let (verdict, _) = check_partitioned(&KvModel, &history, |i| i.key().to_owned(), 1_000_000);
    assert!(
        matches!(verdict, Verdict::NotLinearizable { .. }),
        "the checker must catch the stale read: {verdict:?}"
    );
    cluster.heal();
}

/// Goal: a 5-member cluster keeps serving with two members down (the leader among them), stops
/// accepting writes without a quorum (with an error, not a hang), and recovers when members
/// return; a removed member can be added back afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_tolerate_two_failures() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 5, &[]);
    let leader = cluster.leader().await;
    let other = (leader + 1) % 5;
    cluster.members[leader].kill9();
    cluster.members[other].kill9();
    let alive: Vec<usize> = (0..5).filter(|i| *i != leader && *i != other).collect();
    let options = etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(10));
    let mut client =
        etcd_client::Client::connect([cluster.members[alive[0]].url()], Some(options.clone()))
            .await
            .expect("connect");
    let written = eventually(Duration::from_secs(15), async || {
        client.put("five", "two-down", None).await.is_ok()
    })
    .await;
    assert!(written, "three of five members serve writes");
    // A third failure leaves no quorum: writes fail with an error.
    cluster.members[alive[2]].kill9();
    let started = Instant::now();
    let refused = client.put("five", "no-quorum", None).await;
    assert!(refused.is_err(), "a write succeeded without a quorum");
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "the refusal took {:?}",
        started.elapsed()
    );
    // Members come back; the cluster serves again and has every acknowledged write.
    cluster.members[leader].restart_in_background();
    cluster.members[other].restart_in_background();
    cluster.members[alive[2]].restart_in_background();
    for member in &mut cluster.members {
        member.wait_ready();
    }
    let value = client.get("five", None).await.expect("read");
    // The refused write timed out after reaching the leader's log: it may or may not commit once
    // the quorum is back (etcd's "request timed out" means exactly that). Nothing else may show.
    let now = value.kvs()[0].value_str().expect("utf8");
    assert!(now == "two-down" || now == "no-quorum", "{now}");
    let revision = value.header().expect("header").revision();
    assert_same_hash(&cluster, revision).await;
}

/// The script a contender runs while it holds the lock: fenced writes to `fenced/data`, each a
/// Txn that succeeds only while the holder's key still has the holder's token as its create
/// revision (docs/LOCKS.md), tagged with the token, a sequence number and the pid of the
/// `synod lock` process. Writes the Txn refused are logged as stale.
fn fenced_writer_script(
    synod: &str,
    endpoints: &str,
    rejected: &std::path::Path,
    stop: &std::path::Path,
) -> String {
    format!(
        r#"i=0
while [ $i -lt 80 ] && [ ! -e {stop} ]; do
  out=$(printf 'create("%s") = "%s"\n\nput fenced/data %s:%s:%s\n\n' "$SYNOD_LOCK_KEY" "$SYNOD_FENCING_TOKEN" "$SYNOD_FENCING_TOKEN" "$i" "$PPID" | {synod} --endpoints {endpoints} --command-timeout 2s txn 2>/dev/null)
  case "$out" in FAILURE*) echo "$SYNOD_FENCING_TOKEN" >> {rejected} ;; esac
  i=$((i+1))
  sleep 0.05
done
"#,
        rejected = rejected.display(),
        stop = stop.display()
    )
}

/// Goal: mutual exclusion that holds under faults, checked through the fenced writes it guards.
/// Four contenders loop on `synod lock --ttl 2` (each against a different member) and, while
/// holding, write `fenced/data` through a token-guarded Txn. Meanwhile the current holder is
/// kill -9'd (its writer keeps running, now stale), another holder is SIGSTOP'd past its TTL and
/// resumed, and the Raft leader is cut off from the majority. The checker reads the whole history
/// of `fenced/data`: every accepted write carries a token at least as large as the one before
/// (no stale holder got a write in after a newer one), tokens of successive holders strictly
/// increase, and the stale writers did try and were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_under_faults_is_kept_by_fencing() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let endpoints: Vec<String> = cluster.members.iter().map(|m| m.endpoint()).collect();
    let all = endpoints.join(",");
    let rejected = root.path().join("rejected.log");
    let stop = root.path().join("stop");
    let synod = crate::harness::synod_binary();
    let script = fenced_writer_script(synod, &all, &rejected, &stop);
    let spawn = |i: usize| {
        std::process::Command::new(synod)
            .args([
                "--endpoints",
                &endpoints[i % endpoints.len()],
                "lock",
                "--ttl",
                "2",
                "fenced",
                "--",
                "sh",
                "-c",
                &script,
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("synod lock")
    };
    let mut contenders: Vec<std::process::Child> = (0..4).map(spawn).collect();
    let mut client = cluster.members[0].etcd_client().await;
    let holder_pid = async |client: &mut etcd_client::Client| -> Option<u32> {
        let response = client.get("fenced/data", None).await.ok()?;
        let value = response.kvs().first()?.value_str().ok()?.to_owned();
        value.split(':').nth(2)?.parse().ok()
    };
    let started = Instant::now();
    let mut faults_done = 0;
    let mut stopped: Option<(u32, Instant)> = None;
    let mut killed: Option<u32> = None;
    let mut stopped_pid: Option<u32> = None;
    // 14 s at least, and until every fault is in (up to 40 s on a loaded machine).
    while (started.elapsed() < Duration::from_secs(14) || faults_done < 3)
        && started.elapsed() < Duration::from_secs(40)
    {
        // Keep four contenders going: one that finished (or was killed) is replaced.
        for (i, contender) in contenders.iter_mut().enumerate() {
            if contender.try_wait().expect("wait").is_some() {
                *contender = spawn(i);
            }
        }
        let elapsed = started.elapsed();
        if faults_done == 0 && elapsed > Duration::from_secs(2) {
            // kill -9 the holder's `synod lock`: its writer goes on with a stale token.
            if let Some(pid) = holder_pid(&mut client).await {
                signal(pid, "KILL");
                killed = Some(pid);
                faults_done = 1;
            }
        } else if faults_done == 1 && elapsed > Duration::from_secs(5) {
            // SIGSTOP the holder past its 2 s TTL, resume it 3 s later. On a loaded machine the
            // next holder may not have written yet: the last writer is then still the killed
            // one, and stopping it would be no fault at all, so wait for the new holder.
            if let Some(pid) = holder_pid(&mut client).await
                && Some(pid) != killed
            {
                signal(pid, "STOP");
                stopped = Some((pid, Instant::now()));
                stopped_pid = Some(pid);
                faults_done = 2;
            }
        } else if faults_done == 2
            && elapsed > Duration::from_secs(9)
            && holder_pid(&mut client)
                .await
                .is_some_and(|pid| Some(pid) != killed && Some(pid) != stopped_pid)
        {
            // Only once the stopped holder's lease expired and the next holder wrote: a new
            // leader gives every lease its TTL again (etcd's lease promotion), so cutting the
            // leader off before then let the stopped holder keep the lock when resumed.
            let leader = cluster.leader().await;
            cluster.isolate(leader).await;
            tokio::time::sleep(Duration::from_millis(2_500)).await;
            cluster.heal();
            faults_done = 3;
        }
        if let Some((pid, at)) = stopped
            && at.elapsed() > Duration::from_secs(3)
        {
            signal(pid, "CONT");
            stopped = None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if let Some((pid, _)) = stopped {
        signal(pid, "CONT");
    }
    assert_eq!(faults_done, 3, "every fault was injected");
    for contender in &mut contenders {
        let _ = contender.kill();
        let _ = contender.wait();
    }
    // Writers of killed holders still run, stale: give them a moment, then stop them all.
    tokio::time::sleep(Duration::from_secs(2)).await;
    std::fs::write(&stop, b"").expect("stop file");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The whole history of the fenced data, in commit order.
    let mut watcher = cluster.members[1].etcd_client().await;
    let last = watcher
        .get("fenced/data", None)
        .await
        .expect("read")
        .header()
        .expect("header")
        .revision();
    let mut stream = watcher
        .watch(
            "fenced/data",
            Some(WatchOptions::new().with_start_revision(1)),
        )
        .await
        .expect("watch history");
    let mut writes: Vec<(i64, i64)> = Vec::new();
    let mut seen_revision = 0;
    while seen_revision < last {
        let Ok(Ok(Some(response))) =
            tokio::time::timeout(Duration::from_secs(5), stream.message()).await
        else {
            break;
        };
        for event in response.events() {
            let kv = event.kv().expect("kv");
            seen_revision = kv.mod_revision();
            let token: i64 = kv
                .value_str()
                .expect("utf8")
                .split(':')
                .next()
                .and_then(|t| t.parse().ok())
                .expect("token in the value");
            writes.push((kv.mod_revision(), token));
        }
    }
    assert!(
        writes.len() > 50,
        "the holders wrote: {} accepted writes",
        writes.len()
    );
    for pair in writes.windows(2) {
        assert!(
            pair[1].1 >= pair[0].1,
            "a write with token {} was accepted at revision {} after token {} had written: two holders' \
             fenced writes interleaved",
            pair[1].1,
            pair[1].0,
            pair[0].1
        );
    }
    let mut holders: Vec<i64> = writes.iter().map(|(_, token)| *token).collect();
    holders.dedup();
    // Handovers: after the kill (lease expiry), after the stop (lease expiry), and as holders
    // finish their writes.
    assert!(
        holders.len() >= 3,
        "the lock changed hands: tokens {holders:?}"
    );
    assert!(
        holders.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens increase: {holders:?}"
    );
    let refused = std::fs::read_to_string(&rejected).unwrap_or_default();
    assert!(
        !refused.trim().is_empty(),
        "the stale holders' writes were tried and refused (none were logged)"
    );
}
