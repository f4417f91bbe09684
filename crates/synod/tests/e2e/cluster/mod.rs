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

use crate::harness::{Cluster, MemberTls, eventually, run_tool, signal};

mod faults;
mod health;
mod leases;
mod membership;
mod zookeeper_faults;

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

/// Where a client connects: a member's URL, and its TLS files when it has TLS.
type Target = (String, Option<MemberTls>);

fn targets(cluster: &Cluster) -> Vec<Target> {
    cluster
        .members
        .iter()
        .map(|m| (m.url(), m.tls.clone()))
        .collect()
}

/// Connect options for a target: `base`, with its TLS.
fn options(target: &Target, base: etcd_client::ConnectOptions) -> etcd_client::ConnectOptions {
    match &target.1 {
        Some(tls) => tls.with_tls(base),
        None => base,
    }
}

impl Load {
    fn start(cluster: &Cluster, clients: usize) -> Load {
        let urls = targets(cluster);
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
    target: Target,
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
            let options = options(
                &target,
                etcd_client::ConnectOptions::new()
                    .with_timeout(Duration::from_secs(3))
                    .with_connect_timeout(Duration::from_secs(1)),
            );
            match etcd_client::Client::connect([target.0.clone()], Some(options)).await {
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
    fn start(cluster: &Cluster, first: usize, start_revision: i64) -> MovingWatcher {
        let urls = targets(cluster);
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (sink, stopped) = (events.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut next = start_revision;
            let mut at = first;
            while !stopped.load(Ordering::Relaxed) {
                let target = urls[at % urls.len()].clone();
                at += 1;
                let options = options(&target, etcd_client::ConnectOptions::new());
                let Ok(mut client) = etcd_client::Client::connect([target.0], Some(options)).await
                else {
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
    for member in cluster.members.iter().filter(|m| m.is_running()) {
        if let Ok(mut client) =
            etcd_client::Client::connect([member.url()], member.etcd_client_options()).await
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
    for member in cluster.members.iter().filter(|m| m.is_running()) {
        let url = member.url();
        let mut client = member.etcd_client().await;
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

/// Goal: membership changes under load. A learner joins an existing cluster (catching up by
/// snapshot), is promoted once in sync, a voter is removed (and stops), and through all of it
/// the history stays linearizable and the new member holds every acknowledged write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &[]);
    let urls: Vec<String> = cluster.members.iter().map(|m| m.url()).collect();
    let load = Load::start(&cluster, 4);
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
    // The snapshot file became the state-machine file: a restart opens it.
    cluster.members[follower].kill9();
    cluster.members[follower].restart();
    let mut restarted = cluster.members[follower].etcd_client().await;
    let all = GetOptions::new()
        .with_prefix()
        .with_count_only()
        .with_serializable();
    let kept = eventually(Duration::from_secs(30), async || {
        restarted
            .get("snap/", Some(all.clone()))
            .await
            .is_ok_and(|r| r.count() == 1_500)
    })
    .await;
    assert!(kept, "the restarted follower lost the installed snapshot");
    assert_same_hash(&cluster, last).await;
}
