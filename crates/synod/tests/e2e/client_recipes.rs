//! synod-client's coordination recipes against a real member: exclusion, permits, shared and
//! exclusive access, elections, barriers and queues, each with its fencing token, and their
//! interplay with etcdctl and the Lock service (same key layout).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use synod_client::Client;
use synod_client::recipes::{Barrier, Election, Mutex, Queue, RwLock, Semaphore, Session};

use crate::harness::Member;

async fn client(member: &Member) -> Client {
    Client::connect(&member.endpoint(), Duration::from_secs(2))
        .await
        .expect("connect")
}

/// Tracks how many holders are inside at once, and the most ever seen.
#[derive(Default)]
struct Inside {
    now: AtomicUsize,
    most: AtomicUsize,
}

impl Inside {
    fn enter(&self) {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Goal: a Mutex excludes, hands out strictly increasing fencing tokens in acquisition order,
/// and is the same lock as `etcdctl lock` and the Lock service (it waits for an etcdctl holder).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutex_excludes_with_increasing_tokens_and_shares_etcdctls_lock() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let inside = Arc::new(Inside::default());
    let tokens = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let client = client(&member).await;
        let (inside, tokens) = (inside.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.expect("session");
            let mutex = Mutex::new("m");
            for _ in 0..5 {
                let held = mutex.lock(&session).await.expect("lock");
                inside.enter();
                tokens.lock().expect("lock").push(held.token);
                tokio::time::sleep(Duration::from_millis(5)).await;
                inside.leave();
                mutex.unlock(&session, held).await.expect("unlock");
            }
            session.close().await.expect("close");
        }));
    }
    for task in tasks {
        task.await.expect("holder");
    }
    assert_eq!(inside.most.load(Ordering::SeqCst), 1, "two holders at once");
    let tokens = tokens.lock().expect("lock").clone();
    assert_eq!(tokens.len(), 20);
    assert!(
        tokens.windows(2).all(|pair| pair[0] < pair[1]),
        "tokens increase in acquisition order: {tokens:?}"
    );

    // etcdctl holds the same lock: the recipe waits until it lets go.
    let mut etcdctl = std::process::Command::new("etcdctl")
        .args(["--endpoints", &member.endpoint(), "lock", "m"])
        .env("ETCDCTL_API", "3")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("etcdctl lock");
    let client = client(&member).await;
    let held_by_etcdctl = crate::harness::eventually(Duration::from_secs(10), async || {
        let response = client
            .kv()
            .range(synod_client::etcdserverpb::RangeRequest {
                key: b"m/".to_vec(),
                range_end: synod_client::prefix_range_end(b"m/"),
                count_only: true,
                ..Default::default()
            })
            .await
            .expect("range");
        response.into_inner().count == 1
    })
    .await;
    assert!(held_by_etcdctl);
    let session = Session::new(&client, 10).await.expect("session");
    let waiting =
        tokio::time::timeout(Duration::from_millis(700), Mutex::new("m").lock(&session)).await;
    assert!(waiting.is_err(), "the recipe took a lock etcdctl holds");
    crate::harness::signal(etcdctl.id(), "INT");
    let _ = etcdctl.wait();
    let held = tokio::time::timeout(Duration::from_secs(10), Mutex::new("m").lock(&session))
        .await
        .expect("acquired once etcdctl let go")
        .expect("lock");
    assert!(held.token > *tokens.last().expect("tokens"));
}

/// Goal: a Semaphore admits up to its permits at once, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn semaphore_admits_up_to_its_permits() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let inside = Arc::new(Inside::default());
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let client = client(&member).await;
        let inside = inside.clone();
        tasks.push(tokio::spawn(async move {
            let session = Session::new(&client, 10).await.expect("session");
            let semaphore = Semaphore::new("sem", 2);
            for _ in 0..3 {
                let held = semaphore.acquire(&session).await.expect("acquire");
                inside.enter();
                tokio::time::sleep(Duration::from_millis(30)).await;
                inside.leave();
                semaphore.release(&session, held).await.expect("release");
            }
        }));
    }
    for task in tasks {
        task.await.expect("holder");
    }
    assert_eq!(
        inside.most.load(Ordering::SeqCst),
        2,
        "at most two holders, and two at once"
    );
}

/// Goal: readers share an RwLock; a writer excludes readers and other writers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rwlock_shares_reads_and_excludes_writes() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let client = client(&member).await;
    let (a, b, w) = (
        Session::new(&client, 10).await.expect("session"),
        Session::new(&client, 10).await.expect("session"),
        Session::new(&client, 10).await.expect("session"),
    );
    let lock = RwLock::new("rw");
    let read_a = lock.read(&a).await.expect("first reader");
    let read_b = tokio::time::timeout(Duration::from_secs(5), lock.read(&b))
        .await
        .expect("a second reader shares")
        .expect("read");
    let writer = tokio::time::timeout(Duration::from_millis(500), lock.write(&w)).await;
    assert!(writer.is_err(), "a writer got in beside readers");
    lock.unlock(&a, read_a).await.expect("unlock");
    lock.unlock(&b, read_b).await.expect("unlock");
    let write = tokio::time::timeout(Duration::from_secs(5), lock.write(&w))
        .await
        .expect("the writer gets in once readers leave")
        .expect("write");
    let reader = tokio::time::timeout(Duration::from_millis(500), lock.read(&a)).await;
    assert!(reader.is_err(), "a reader got in beside the writer");
    lock.unlock(&w, write).await.expect("unlock");
}

/// Goal: an Election elects one campaigner at a time with increasing tokens, reports the leader
/// and hands over on resignation and on session loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_hands_over_with_increasing_tokens() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let client = client(&member).await;
    let election = Election::new("e");
    let first = Session::new(&client, 10).await.expect("session");
    let leading = election.campaign(&first, b"one").await.expect("campaign");
    let second_client = client.clone();
    let second = tokio::spawn(async move {
        let session = Session::new(&second_client, 10).await.expect("session");
        let won = Election::new("e")
            .campaign(&session, b"two")
            .await
            .expect("campaign");
        (session, won)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!second.is_finished(), "two leaders at once");
    let leader = election
        .leader(&client)
        .await
        .expect("leader")
        .expect("some");
    assert_eq!(leader.value, b"one");
    election
        .proclaim(&first, &leading, b"uno")
        .await
        .expect("proclaim");
    assert_eq!(
        election
            .leader(&client)
            .await
            .expect("leader")
            .expect("some")
            .value,
        b"uno"
    );
    // Losing the session (here: closing it) hands leadership over.
    first.close().await.expect("close");
    let (session, won) = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second campaigner won")
        .expect("task");
    assert!(
        won.token > leading.token,
        "tokens increase: {} then {}",
        leading.token,
        won.token
    );
    election.resign(&session, won).await.expect("resign");
    assert!(election.leader(&client).await.expect("leader").is_none());
}

/// Goal: a Barrier holds waiters until released; a Queue hands each item to exactly one
/// consumer, oldest first, waiting when empty; a Session reports a lost lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn barrier_queue_and_session_loss() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let client = client(&member).await;
    let session = Session::new(&client, 10).await.expect("session");
    let barrier = Barrier::new("gate");
    barrier.hold(&session).await.expect("hold");
    let waiter = {
        let client = client.clone();
        tokio::spawn(async move { Barrier::new("gate").wait(&client).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "the barrier let a waiter through");
    barrier.release(&client).await.expect("release");
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("released")
        .expect("task")
        .expect("wait");

    let queue = Queue::new("q");
    let consumer = {
        let client = client.clone();
        tokio::spawn(async move { Queue::new("q").dequeue(&client).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut tokens = Vec::new();
    for value in ["a", "b", "c"] {
        tokens.push(
            queue
                .enqueue(&client, value.as_bytes())
                .await
                .expect("enqueue"),
        );
    }
    let first = tokio::time::timeout(Duration::from_secs(5), consumer)
        .await
        .expect("the waiting consumer got an item")
        .expect("task")
        .expect("dequeue");
    assert_eq!(first.value, b"a");
    assert_eq!(first.token, tokens[0]);
    let (second, third) = tokio::join!(queue.dequeue(&client), queue.dequeue(&client));
    let mut rest = vec![
        second.expect("dequeue").value,
        third.expect("dequeue").value,
    ];
    rest.sort();
    assert_eq!(
        rest,
        vec![b"b".to_vec(), b"c".to_vec()],
        "each item exactly once"
    );

    // Revoking the lease behind the session's back: it notices.
    client
        .lease()
        .lease_revoke(synod_client::etcdserverpb::LeaseRevokeRequest {
            id: session.lease(),
        })
        .await
        .expect("revoke");
    tokio::time::timeout(Duration::from_secs(10), session.lost())
        .await
        .expect("the session noticed its lease was gone");
}
