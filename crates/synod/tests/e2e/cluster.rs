//! Clusters of real member processes on loopback: serving on any member, and faults on the
//! leader (kill -9, SIGSTOP, a network partition), membership changes and snapshot catch-up under
//! load. Concurrent clients record a history that synod-sim's linearizability checker judges; a
//! watcher that moves between members must see every revision once, in order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, EventType, GetOptions, MemberAddOptions, Txn, TxnOp, WatchOptions,
};
use synod_sim::linearizability::{
    KvInput, KvModel, KvOutput, Operation, Verdict, check_kv, check_partitioned,
};

use crate::harness::{Cluster, eventually, run_tool, signal};

type History = Arc<Mutex<Vec<Operation<KvInput, KvOutput>>>>;

/// Keys of the recorded workload.
const KEYS: [&str; 8] = [
    "lin/a", "lin/b", "lin/c", "lin/d", "lin/e", "lin/f", "lin/g", "lin/h",
];

/// A recorded load: clients, each bound to one member, doing puts, linearizable gets and
/// compare-and-swaps on [`KEYS`] until stopped. Failed calls are indeterminate (they may or may
/// not have happened); failed reads are dropped, since they change nothing.
struct Load {
    history: History,
    /// Revision of every acknowledged write: (key, value) → revision.
    acked: Arc<Mutex<BTreeMap<(String, String), i64>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(urls: &[String], clients: usize) -> Load {
        let history: History = Arc::new(Mutex::new(Vec::new()));
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for client in 0..clients {
            let url = urls[client % urls.len()].clone();
            let (history, acked, stop) = (history.clone(), acked.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                run_client(client as u64, url, history, acked, stop, started).await
            }));
        }
        Load {
            history,
            acked,
            stop,
            tasks,
        }
    }

    async fn finish(
        self,
    ) -> (
        Vec<Operation<KvInput, KvOutput>>,
        BTreeMap<(String, String), i64>,
    ) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        let history = self.history.lock().expect("lock").clone();
        let acked = self.acked.lock().expect("lock").clone();
        (history, acked)
    }
}

async fn run_client(
    mut client: u64,
    url: String,
    history: History,
    acked: Arc<Mutex<BTreeMap<(String, String), i64>>>,
    stop: Arc<AtomicBool>,
    started: Instant,
) {
    let now = || started.elapsed().as_nanos() as u64;
    let mut connection = None;
    let mut seq = 0u64;
    let mut last_seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        if connection.is_none() {
            let options = etcd_client::ConnectOptions::new()
                .with_timeout(Duration::from_secs(3))
                .with_connect_timeout(Duration::from_secs(1));
            match etcd_client::Client::connect([url.clone()], Some(options)).await {
                Ok(connected) => connection = Some(connected),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let Some(etcd) = connection.as_mut() else {
            continue;
        };
        // Paced, so a run records a few thousand operations rather than tens of thousands.
        tokio::time::sleep(Duration::from_millis(2)).await;
        seq += 1;
        let key = KEYS[((seq + client) % KEYS.len() as u64) as usize].to_owned();
        let value = format!("c{client}s{seq}");
        let call = now();
        let (input, outcome) = match seq % 3 {
            0 => {
                let outcome = etcd.put(key.clone(), value.clone(), None).await.map(|r| {
                    let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                    acked
                        .lock()
                        .expect("lock")
                        .insert((key.clone(), value.clone()), revision);
                    KvOutput::Done
                });
                (
                    KvInput::Put {
                        key: key.clone(),
                        value,
                    },
                    outcome,
                )
            }
            1 => {
                let outcome = etcd.get(key.clone(), None).await.map(|r| {
                    let value = r
                        .kvs()
                        .first()
                        .map(|kv| kv.value_str().expect("utf8").to_owned());
                    last_seen.insert(key.clone(), value.clone());
                    KvOutput::Value(value)
                });
                if outcome.is_err() {
                    // A failed read changes nothing: leave it out of the history.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                (KvInput::Get { key: key.clone() }, outcome)
            }
            _ => {
                let expected = last_seen.get(&key).cloned().flatten();
                let compare = match &expected {
                    Some(v) => Compare::value(key.clone(), CompareOp::Equal, v.clone()),
                    None => Compare::version(key.clone(), CompareOp::Equal, 0),
                };
                let txn = Txn::new().when([compare]).and_then([TxnOp::put(
                    key.clone(),
                    value.clone(),
                    None,
                )]);
                let outcome = etcd.txn(txn).await.map(|r| {
                    if r.succeeded() {
                        let revision = r.header().map(|h| h.revision()).unwrap_or(0);
                        acked
                            .lock()
                            .expect("lock")
                            .insert((key.clone(), value.clone()), revision);
                    }
                    KvOutput::Swapped(r.succeeded())
                });
                (
                    KvInput::Cas {
                        key: key.clone(),
                        expected,
                        new: value,
                    },
                    outcome,
                )
            }
        };
        if let Err(error) = &outcome
            && refused_before_proposing(error)
        {
            // Refused before it reached Raft: it did not happen, and the client may go on.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let failed = outcome.is_err();
        let result = outcome.ok().map(|output| (now(), output));
        history.lock().expect("lock").push(Operation {
            client,
            input,
            call,
            result,
        });
        if failed {
            // An indeterminate call stays pending forever (Porcupine's rule: a client with a
            // pending call issues no more), so carry on as a new client, on a new connection.
            client += 1000;
            connection = None;
        }
    }
}

/// Errors that etcd (and Synod) return only for requests that never reached the Raft log.
fn refused_before_proposing(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => [
            "etcdserver: no leader",
            "etcdserver: leader changed",
            "etcdserver: too many requests",
        ]
        .contains(&status.message()),
        _ => false,
    }
}

/// A watcher on `lin/` that moves to the next member when its stream breaks, resuming after the
/// last revision it saw. Returns every (revision, key, value) it received.
struct MovingWatcher {
    events: Arc<Mutex<Vec<(i64, String, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl MovingWatcher {
    fn start(urls: Vec<String>, first: usize, start_revision: i64) -> MovingWatcher {
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (events.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next = start_revision;
            let mut at = first;
            while !stopped.load(Ordering::Relaxed) {
                let url = urls[at % urls.len()].clone();
                at += 1;
                let Ok(mut client) = etcd_client::Client::connect([url], None).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let options = WatchOptions::new().with_prefix().with_start_revision(next);
                let Ok(mut stream) = client.watch("lin/", Some(options)).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                loop {
                    let message =
                        tokio::time::timeout(Duration::from_millis(500), stream.message()).await;
                    match message {
                        Err(_) if stopped.load(Ordering::Relaxed) => return,
                        Err(_) => continue,
                        Ok(Ok(Some(response))) => {
                            assert!(!response.canceled(), "watch canceled: {response:?}");
                            for event in response.events() {
                                let kv = event.kv().expect("event kv");
                                assert_eq!(event.event_type(), EventType::Put);
                                sink.lock().expect("lock").push((
                                    kv.mod_revision(),
                                    kv.key_str().expect("utf8").to_owned(),
                                    kv.value_str().expect("utf8").to_owned(),
                                ));
                                next = kv.mod_revision() + 1;
                            }
                        }
                        // The member went away: resume on the next one.
                        Ok(_) => break,
                    }
                }
            }
        });
        MovingWatcher { events, stop, task }
    }

    /// Waits until the watcher has seen `revision`, then stops it and returns its events.
    async fn finish(self, revision: i64) -> Vec<(i64, String, String)> {
        let events = self.events.clone();
        let caught_up = eventually(Duration::from_secs(20), async || {
            events
                .lock()
                .expect("lock")
                .last()
                .is_some_and(|(rev, _, _)| *rev >= revision)
        })
        .await;
        self.stop.store(true, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
        assert!(caught_up, "the watcher never reached revision {revision}");
        self.events.lock().expect("lock").clone()
    }
}

/// Every revision from the first to `last` exactly once, in order; every acknowledged write among
/// them with its value.
fn check_watch(
    events: &[(i64, String, String)],
    first: i64,
    last: i64,
    acked: &BTreeMap<(String, String), i64>,
) {
    let revisions: Vec<i64> = events.iter().map(|(rev, _, _)| *rev).collect();
    let expected: Vec<i64> = (first..=last).collect();
    if revisions != expected {
        let gap = revisions
            .iter()
            .zip(&expected)
            .position(|(a, b)| a != b)
            .unwrap_or(revisions.len().min(expected.len()));
        panic!(
            "watch events are not every revision {first}..={last} once, in order: first difference at \
             position {gap} (got {:?}, expected {:?})",
            revisions.get(gap.saturating_sub(2)..(gap + 3).min(revisions.len())),
            expected.get(gap.saturating_sub(2)..(gap + 3).min(expected.len())),
        );
    }
    let seen: BTreeMap<i64, (&String, &String)> =
        events.iter().map(|(r, k, v)| (*r, (k, v))).collect();
    for ((key, value), revision) in acked {
        assert_eq!(
            seen.get(revision),
            Some(&(key, value)),
            "acknowledged write {key}={value} at revision {revision} missing from the watch"
        );
    }
}

/// The member behind `client` holds every acknowledged write at its acknowledged revision.
async fn assert_holds_acknowledged(
    client: &mut etcd_client::Client,
    acked: &BTreeMap<(String, String), i64>,
) {
    for ((key, value), revision) in acked {
        let at = client
            .get(
                key.as_str(),
                Some(GetOptions::new().with_revision(*revision)),
            )
            .await
            .expect("read at the acknowledged revision");
        assert_eq!(
            at.kvs().first().map(|kv| kv.value_str().expect("utf8")),
            Some(value.as_str()),
            "acknowledged write {key}={value} at revision {revision} is missing"
        );
    }
}

async fn current_revision(cluster: &Cluster) -> i64 {
    for url in cluster.urls() {
        if let Ok(mut client) = etcd_client::Client::connect([url], None).await
            && let Ok(response) = client.get("lin/", None).await
        {
            return response.header().expect("header").revision();
        }
    }
    panic!("no member answered a linearizable read");
}

fn assert_linearizable(history: &[Operation<KvInput, KvOutput>], minimum_completed: usize) {
    let completed = history.iter().filter(|op| op.result.is_some()).count();
    assert!(
        completed >= minimum_completed,
        "the load ran: {completed} operations completed"
    );
    let (verdict, key) = check_kv(history, 20_000_000);
    let indeterminate = history.len() - completed;
    assert_eq!(
        verdict,
        Verdict::Linearizable,
        "history on key {key:?} is not linearizable ({} operations, {completed} completed, \
         {indeterminate} indeterminate)",
        history.len()
    );
}

/// Every member reports the same HashKV at `revision`.
async fn assert_same_hash(cluster: &Cluster, revision: i64) {
    let mut hashes = Vec::new();
    for url in cluster.urls() {
        let mut client = etcd_client::Client::connect([url.clone()], None)
            .await
            .expect("connect");
        // A member may still be applying: wait until it has the revision.
        let reached = eventually(Duration::from_secs(20), async || {
            client
                .get("lin/", Some(GetOptions::new().with_serializable()))
                .await
                .is_ok_and(|r| r.header().expect("header").revision() >= revision)
        })
        .await;
        assert!(reached, "{url} never reached revision {revision}");
        let hash = client.hash_kv(revision).await.expect("hash kv");
        hashes.push((url, hash.hash()));
    }
    assert!(
        hashes.windows(2).all(|pair| pair[0].1 == pair[1].1),
        "members disagree on HashKV at revision {revision}: {hashes:?}"
    );
}

/// Goal: etcdctl and the etcd-client crate work against any member of a 3-member cluster:
/// writes and linearizable reads on followers, a watch on a follower sees every event in order,
/// every member lists every member with its client URL, and all agree on the leader and HashKV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_members_serve_clients_on_any_member() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f1, f2) = (
        &cluster.members[followers[0]],
        &cluster.members[followers[1]],
    );

    // A watch on one follower while the other follower takes the writes.
    let mut watching = f2.etcd_client().await;
    let mut stream = watching
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch on a follower");
    let mut writer = f1.etcd_client().await;
    let mut revisions = Vec::new();
    for i in 0..50 {
        let response = writer
            .put(format!("w/{i:02}"), format!("v{i}"), None)
            .await
            .expect("put on a follower");
        revisions.push(response.header().expect("header").revision());
    }
    // Linearizable read on the other follower sees the last write at once.
    let read = watching
        .get("w/49", None)
        .await
        .expect("read on a follower");
    assert_eq!(read.kvs()[0].value_str().expect("utf8"), "v49");
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let response = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("events arrive")
            .expect("watch stream")
            .expect("open stream");
        for event in response.events() {
            seen.push(event.kv().expect("kv").mod_revision());
        }
    }
    assert_eq!(
        seen, revisions,
        "the follower's watch saw every event in order"
    );

    // etcdctl against a follower: put, get, member list with every client URL.
    let endpoint = f2.endpoint();
    let (ok, out, err) = run_tool(
        "etcdctl",
        &["--endpoints", &endpoint],
        &["put", "e", "1"],
        None,
    );
    assert!(ok, "etcdctl put on a follower: {out}{err}");
    let (ok, out, err) = run_tool("etcdctl", &["--endpoints", &endpoint], &["get", "e"], None);
    assert!(
        ok && out == "e\n1\n",
        "etcdctl get on a follower: {out}{err}"
    );
    let listed = eventually(Duration::from_secs(10), async || {
        let (_, out, _) = run_tool(
            "etcdctl",
            &["--endpoints", &endpoint],
            &["member", "list"],
            None,
        );
        cluster
            .members
            .iter()
            .all(|m| out.contains(&format!("{}, {}", m.peer_url(), m.url())))
    })
    .await;
    assert!(
        listed,
        "every member lists every member with its client URL"
    );

    // All agree on the leader, and on HashKV.
    let mut leaders = Vec::new();
    for member in &cluster.members {
        let mut client = member.etcd_client().await;
        leaders.push(client.status().await.expect("status").leader());
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0] && *l != 0),
        "{leaders:?}"
    );
    let revision = writer
        .get("e", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert_same_hash(&cluster, revision).await;
}

/// Goal: faults on the leader, one after the other under load from clients on every member:
/// kill -9 (then restart), SIGSTOP past the election timeout (then SIGCONT), and a network
/// partition that cuts the leader from the majority (then heals). The whole history is
/// linearizable, no acknowledged write is lost, a watcher that follows the cluster sees every
/// revision once and in order, and the members agree on HashKV afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_faults_under_load_keep_history_linearizable() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &["--snapshot-count", "300"]);
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let first_revision = current_revision(&cluster).await + 1;
    let watcher = MovingWatcher::start(urls.clone(), 0, first_revision);
    let load = Load::start(&urls, 4);
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

/// Goal: membership changes under load. A learner joins an existing cluster (catching up by
/// snapshot), is promoted once in sync, a voter is removed (and stops), and through all of it
/// the history stays linearizable and the new member holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let load = Load::start(&urls, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Add a learner and start it against the existing cluster.
    let mut admin = etcd_client::Client::connect(urls.clone(), None)
        .await
        .expect("connect");
    let mut joiner = crate::harness::Member::prepare(&cluster.root.join("m3"), Vec::new());
    let added = admin
        .member_add(
            [joiner.peer_url()],
            Some(MemberAddOptions::new().with_is_learner()),
        )
        .await
        .expect("member add");
    let new_id = added.member().expect("added member").id();
    joiner.set_args(vec![
        "--name".to_owned(),
        "m3".to_owned(),
        "--initial-cluster".to_owned(),
        format!("{},m3={}", cluster.initial_cluster, joiner.peer_url()),
        "--initial-cluster-state".to_owned(),
        "existing".to_owned(),
    ]);
    joiner.launch();
    joiner.wait_ready();
    assert!(
        joiner.log().contains("installing a state-machine snapshot"),
        "the new member caught up by snapshot"
    );
    // Promote once the learner is in sync (the leader refuses before that).
    let promoted = eventually(Duration::from_secs(20), async || {
        admin.member_promote(new_id).await.is_ok()
    })
    .await;
    assert!(promoted, "the learner was never promoted");

    // Remove a voter that does not lead; it stops by itself.
    let leader = cluster.leader().await;
    let victim = (leader + 1) % 3;
    let victim_id = cluster.member_id(victim).await;
    admin.member_remove(victim_id).await.expect("member remove");
    let exited = cluster.members[victim].wait_exit(Duration::from_secs(20));
    assert!(exited.is_some(), "the removed member kept running");
    assert!(
        cluster.members[victim]
            .log()
            .contains("permanently removed"),
        "the removed member said why it stopped"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (history, acked) = load.finish().await;
    assert_linearizable(&history, 100);
    // Asked of the new member: the client above may still pick the removed one.
    let mut on_joiner = joiner.etcd_client().await;
    let listed = on_joiner.member_list().await.expect("member list");
    let ids: Vec<u64> = listed.members().iter().map(|m| m.id()).collect();
    assert!(
        ids.contains(&new_id) && !ids.contains(&victim_id),
        "{ids:?}"
    );
    assert!(listed.members().iter().all(|m| !m.is_learner()));
    // The new member holds every acknowledged write.
    assert_holds_acknowledged(&mut on_joiner, &acked).await;
    cluster.members.push(joiner);
    let revision = current_revision(&cluster).await;
    assert_same_hash(&cluster, revision).await;
}

/// Goal: a follower that missed more than the leader keeps in its log catches up by a snapshot
/// (sent in chunks, swapped in atomically) and ends with the same data and HashKV; a watcher on
/// it sees the keys written while it was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_follower_catches_up_by_snapshot() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &["--snapshot-count", "100"]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.members[follower].kill9();
    let mut writer = cluster.members[leader].etcd_client().await;
    let mut last = 0;
    for i in 0..1_500 {
        let value = "v".repeat(100 + i % 50);
        last = writer
            .put(format!("snap/{i:05}"), value, None)
            .await
            .expect("put")
            .header()
            .expect("header")
            .revision();
    }
    cluster.members[follower].restart();
    let mut on_follower = cluster.members[follower].etcd_client().await;
    let caught_up = eventually(Duration::from_secs(30), async || {
        on_follower
            .get(
                "snap/",
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_count_only()
                        .with_serializable(),
                ),
            )
            .await
            .is_ok_and(|r| r.count() == 1_500)
    })
    .await;
    assert!(caught_up, "the follower did not catch up");
    assert!(
        cluster.members[follower]
            .log()
            .contains("installing a state-machine snapshot"),
        "the follower caught up by snapshot"
    );
    assert_same_hash(&cluster, last).await;
}

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

/// Goal: leases work through followers: granted, kept alive and asked about on a follower (which
/// forwards to the leader, the only member with deadlines), and expired by the leader once the
/// keep-alives stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_through_a_follower() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let follower = &cluster.members[(leader + 1) % 3];
    let mut client = follower.etcd_client().await;
    let lease = client.lease_grant(2, None).await.expect("grant").id();
    client
        .put(
            "leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.expect("keep alive");
    for _ in 0..8 {
        keeper.keep_alive().await.expect("send keep-alive");
        let response = responses
            .message()
            .await
            .expect("keep-alive stream")
            .expect("response");
        assert_eq!(response.ttl(), 2, "the leader renewed the lease");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ttl = client
        .lease_time_to_live(lease, None)
        .await
        .expect("time to live on a follower");
    assert!(
        ttl.ttl() > 0 && ttl.ttl() <= 2,
        "remaining TTL from the leader: {}",
        ttl.ttl()
    );
    assert_eq!(
        client.get("leased", None).await.expect("get").kvs().len(),
        1,
        "kept alive past its TTL"
    );
    drop(keeper);
    drop(responses);
    let expired = eventually(Duration::from_secs(10), async || {
        client
            .get("leased", None)
            .await
            .is_ok_and(|r| r.kvs().is_empty())
    })
    .await;
    assert!(
        expired,
        "the leader expired the lease once keep-alives stopped"
    );
}

/// Goal: a lease whose holder went away is checkpointed through Raft, so killing the leader does
/// not give it a fresh TTL: the new leader expires it about when the old one would have (plus at
/// most an election timeout and rounding), not a whole TTL later. And it never expires early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_change_does_not_renew_an_abandoned_lease() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let mut client = cluster.members[leader].etcd_client().await;
    let ttl = 6;
    let lease = client.lease_grant(ttl, None).await.expect("grant").id();
    client
        .put(
            "abandoned",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.expect("keep alive");
    keeper.keep_alive().await.expect("keep-alive");
    responses.message().await.expect("stream").expect("renewed");
    let renewed = Instant::now();
    let deadline = renewed + Duration::from_secs(ttl as u64);
    drop(keeper);
    drop(responses);
    // Silent for more than half the TTL: the leader has checkpointed the remaining TTL.
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    cluster.members[leader].kill9();
    let survivor = cluster.members[(leader + 1) % 3].url();
    let mut reader = etcd_client::Client::connect(
        [survivor],
        Some(etcd_client::ConnectOptions::new().with_timeout(Duration::from_secs(2))),
    )
    .await
    .expect("connect to a survivor");
    let mut expired_at = None;
    while renewed.elapsed() < Duration::from_secs(20) {
        if let Ok(response) = reader.get("abandoned", None).await
            && response.kvs().is_empty()
        {
            expired_at = Some(Instant::now());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let expired_at = expired_at.expect("the lease expired after the leader change");
    assert!(
        expired_at + Duration::from_millis(200) >= deadline,
        "the lease expired {:?} before its deadline",
        deadline - expired_at
    );
    // One election timeout (1 s), rounding of the checkpoint to whole seconds, and slack for the
    // election itself; without checkpoints it would be a full TTL (6 s) later than the deadline.
    assert!(
        expired_at <= deadline + Duration::from_millis(3_500),
        "the lease outlived its deadline by {:?}",
        expired_at - deadline
    );
}

/// Goal: a keep-alive after a checkpoint clears it through Raft before it is answered, so a new
/// leader gives the lease the whole TTL the keep-alive promised, not the stale checkpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_after_a_checkpoint_survives_a_leader_change() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let mut client = cluster.members[follower].etcd_client().await;
    let ttl = 4;
    let lease = client.lease_grant(ttl, None).await.expect("grant").id();
    client
        .put(
            "renewed",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put with lease");
    // Quiet past half the TTL, so the leader checkpoints about 1-2 s of remaining TTL...
    tokio::time::sleep(Duration::from_millis(2_600)).await;
    // ...then a keep-alive (through the follower) promises 4 s more, and the leader dies.
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await.expect("keep alive");
    keeper.keep_alive().await.expect("keep-alive");
    let response = responses.message().await.expect("stream").expect("renewed");
    assert_eq!(response.ttl(), ttl);
    let promised = Instant::now() + Duration::from_secs(ttl as u64);
    drop(keeper);
    drop(responses);
    cluster.members[leader].kill9();
    // Until the promised time the key must stay (reads may fail during the election).
    while Instant::now() + Duration::from_millis(300) < promised {
        if let Ok(response) = client
            .get("renewed", Some(GetOptions::new().with_serializable()))
            .await
        {
            assert_eq!(
                response.kvs().len(),
                1,
                "the lease expired {:?} before the TTL its keep-alive promised",
                promised - Instant::now()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

/// Goal: a leader cut off from the others does not renew leases: it still believes it leads for
/// a moment, but it confirms leadership through Raft before renewing, so a holder talking to it
/// is told no rather than promised a TTL the real leader never hears of.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_does_not_renew_leases() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let mut client = cluster.members[leader].etcd_client().await;
    let lease = client.lease_grant(30, None).await.expect("grant").id();
    cluster.isolate(leader).await;
    // etcd-client sends the first keep-alive when it opens the stream and waits for its answer.
    let opened = tokio::time::timeout(Duration::from_secs(15), client.lease_keep_alive(lease))
        .await
        .expect("the keep-alive got an answer");
    let Ok((mut keeper, mut responses)) = opened else {
        // Refused outright ("leader changed", "no leader"...): what we want.
        cluster.heal();
        return;
    };
    keeper.keep_alive().await.expect("send keep-alive");
    let answer = tokio::time::timeout(Duration::from_secs(15), responses.message()).await;
    match answer {
        Ok(Ok(Some(response))) => {
            assert!(
                response.ttl() <= 0,
                "a cut-off leader renewed the lease: TTL {}",
                response.ttl()
            )
        }
        Ok(Ok(None)) | Ok(Err(_)) => {}
        Err(_) => panic!("the keep-alive got no answer at all"),
    }
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
    while started.elapsed() < Duration::from_secs(14) {
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
                faults_done = 2;
            }
        } else if faults_done == 2 && elapsed > Duration::from_secs(9) {
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
