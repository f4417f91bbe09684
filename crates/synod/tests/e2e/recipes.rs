//! etcd's Lock and Election gRPC services, through the `etcd-client` crate and mixed with
//! `etcdctl lock`, which runs the same algorithm on the client side.

use std::process::{Command, Stdio};
use std::time::Duration;

use etcd_client::{LockOptions, ProclaimOptions, ResignOptions};

use crate::harness::Member;

/// Goal: Lock is mutual exclusion in arrival order, its key carries a fencing token (the key's
/// create revision) that grows per lock name, and it is the same lock `etcdctl lock` takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_service_excludes_and_shares_the_lock_with_etcdctl() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let first_lease = client.lease_grant(60, None).await.expect("lease").id();
    let second_lease = client.lease_grant(60, None).await.expect("lease").id();

    let first = client
        .lock("job", Some(LockOptions::new().with_lease(first_lease)))
        .await
        .expect("first lock");
    assert!(first.key().starts_with(b"job/"));
    let token = |key: &[u8], client: &mut etcd_client::Client| {
        let key = key.to_vec();
        let mut client = client.clone();
        async move { client.get(key, None).await.expect("get").kvs()[0].create_revision() }
    };
    let first_token = token(first.key(), &mut client).await;

    let mut waiter = client.clone();
    let second = tokio::spawn(async move {
        waiter
            .lock("job", Some(LockOptions::new().with_lease(second_lease)))
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second locker waits while the first holds the lock"
    );
    client.unlock(first.key()).await.expect("unlock");
    let second = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("acquired in time")
        .expect("task")
        .expect("lock");
    let second_token = token(second.key(), &mut client).await;
    assert!(
        second_token > first_token,
        "fencing tokens grow: {first_token} then {second_token}"
    );

    // etcdctl's client-side recipe sees the lock held through the service, and waits for it.
    let mut ctl = Command::new("etcdctl")
        .args([
            format!("--endpoints={}", member.endpoint()).as_str(),
            "lock",
            "job",
            "echo",
            "etcdctl-got-it",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcdctl lock");
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        ctl.try_wait().expect("poll").is_none(),
        "etcdctl waits for the lock held through the service"
    );
    client.unlock(second.key()).await.expect("unlock");
    let output = tokio::task::spawn_blocking(move || ctl.wait_with_output())
        .await
        .expect("join")
        .expect("etcdctl output");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "etcdctl-got-it\n");

    // Revoking a holder's lease releases its lock.
    let third_lease = client.lease_grant(60, None).await.expect("lease").id();
    let third = client
        .lock("job", Some(LockOptions::new().with_lease(third_lease)))
        .await
        .expect("third");
    client.lease_revoke(third_lease).await.expect("revoke");
    assert!(
        client
            .get(third.key(), None)
            .await
            .expect("get")
            .kvs()
            .is_empty()
    );
    let fourth = tokio::time::timeout(
        Duration::from_secs(5),
        client.lock("job", Some(LockOptions::new().with_lease(second_lease))),
    )
    .await
    .expect("the lock is free once its holder's lease is gone")
    .expect("lock");
    assert!(token(fourth.key(), &mut client).await > second_token);
}

/// Goal: Campaign, Proclaim, Leader, Observe and Resign behave as etcd's Election service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_service_elects_proclaims_observes_and_resigns() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    match client.leader("vote").await {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.message(), "election: no leader")
        }
        other => panic!("expected no leader, got {other:?}"),
    }
    let alice_lease = client.lease_grant(60, None).await.expect("lease").id();
    let bob_lease = client.lease_grant(60, None).await.expect("lease").id();
    let alice = client
        .campaign("vote", "alice", alice_lease)
        .await
        .expect("alice campaigns");
    let alice_key = alice.leader().expect("leader key").clone();
    assert_eq!(alice_key.name(), b"vote");
    assert_eq!(alice_key.lease(), alice_lease);
    let leader = client.leader("vote").await.expect("leader");
    assert_eq!(leader.kv().expect("kv").value(), b"alice");
    assert_eq!(
        leader.kv().expect("kv").create_revision(),
        alice_key.rev(),
        "rev is the leader key's create revision"
    );

    let mut observe = client.observe("vote").await.expect("observe");
    let seen = observe.message().await.expect("observe").expect("open");
    assert_eq!(seen.kv().expect("kv").value(), b"alice");

    let mut bob_client = client.clone();
    let bob = tokio::spawn(async move { bob_client.campaign("vote", "bob", bob_lease).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bob.is_finished(), "bob waits while alice leads");

    client
        .proclaim(
            "alice-2",
            Some(ProclaimOptions::new().with_leader(alice_key.clone())),
        )
        .await
        .expect("proclaim");
    let seen = observe.message().await.expect("observe").expect("open");
    assert_eq!(
        seen.kv().expect("kv").value(),
        b"alice-2",
        "observers see proclamations"
    );

    client
        .resign(Some(ResignOptions::new().with_leader(alice_key.clone())))
        .await
        .expect("resign");
    let bob = tokio::time::timeout(Duration::from_secs(10), bob)
        .await
        .expect("bob elected in time")
        .expect("task")
        .expect("campaign");
    let bob_key = bob.leader().expect("leader key").clone();
    assert!(bob_key.rev() > alice_key.rev());
    let seen = observe.message().await.expect("observe").expect("open");
    assert_eq!(
        seen.kv().expect("kv").value(),
        b"bob",
        "observers see the new leader"
    );
    match client
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(alice_key)))
        .await
    {
        Err(etcd_client::Error::GRpcStatus(status)) => {
            assert_eq!(status.message(), "election: not leader")
        }
        other => panic!("a resigned leader cannot proclaim, got {other:?}"),
    }
}

/// Goal: once a holder has lost its lock (its lease is revoked, as when it pauses past its TTL)
/// and another holder has it, the old holder's fencing token is stale for the HTTP check, for
/// `synod fence`, and for a txn guarded by the token; the new holder's token is current.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_fencing_tokens_are_rejected_everywhere() {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};

    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let lease_a = client.lease_grant(60, None).await.expect("lease").id();
    let lease_b = client.lease_grant(60, None).await.expect("lease").id();
    let key_a = client
        .lock("store", Some(LockOptions::new().with_lease(lease_a)))
        .await
        .expect("a locks")
        .key()
        .to_vec();
    let token_a = client.get(key_a.clone(), None).await.expect("get").kvs()[0].create_revision();
    let mut waiter = client.clone();
    let b = tokio::spawn(async move {
        waiter
            .lock("store", Some(LockOptions::new().with_lease(lease_b)))
            .await
    });

    let check = |token: i64| {
        let body = format!(r#"{{"name":"store","token":{token}}}"#);
        let (code, text) = crate::harness::http_request(
            member.client_port,
            "POST",
            "/synod/v1/lock/check",
            Some(&body),
        )
        .expect("check");
        assert_eq!(code, 200, "{text}");
        serde_json::from_str::<serde_json::Value>(&text).expect("json")
    };
    assert_eq!(check(token_a)["current"], true);

    client
        .lease_revoke(lease_a)
        .await
        .expect("a's session ends");
    let key_b = tokio::time::timeout(Duration::from_secs(10), b)
        .await
        .expect("b acquires")
        .expect("task")
        .expect("lock")
        .key()
        .to_vec();
    let token_b = client.get(key_b.clone(), None).await.expect("get").kvs()[0].create_revision();
    assert!(token_b > token_a);

    let stale = check(token_a);
    assert_eq!(stale["current"], false);
    assert_eq!(stale["holder_token"], token_b);
    assert_eq!(check(token_b)["current"], true);

    let (ok, out, _) = crate::harness::synod_cli(
        &member.endpoint(),
        &["fence", "store", &token_a.to_string()],
        None,
    );
    assert!(!ok && out.starts_with("stale:"), "{out}");
    let (ok, out, _) = crate::harness::synod_cli(
        &member.endpoint(),
        &["fence", "store", &token_b.to_string()],
        None,
    );
    assert!(ok && out.starts_with("current:"), "{out}");

    // The txn recipe: a write into Synod itself that only a current holder can make.
    let guarded = |key: Vec<u8>, token: i64, value: &str| {
        Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, token)])
            .and_then([TxnOp::put("protected/data", value, None)])
    };
    assert!(
        !client
            .txn(guarded(key_a, token_a, "from a"))
            .await
            .expect("txn")
            .succeeded(),
        "the stale holder's write is refused"
    );
    assert!(
        client
            .txn(guarded(key_b, token_b, "from b"))
            .await
            .expect("txn")
            .succeeded()
    );
    let (code, _) = crate::harness::http_request(
        member.client_port,
        "POST",
        "/synod/v1/lock/check",
        Some("{\"name\":1}"),
    )
    .expect("bad check");
    assert_eq!(code, 400);
}

/// Starts `synod lock` with arguments, output discarded.
fn synod_lock(member: &Member, args: &[&str]) -> std::process::Child {
    Command::new(crate::harness::synod_binary())
        .args(["--endpoints", &member.endpoint(), "lock"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("synod lock")
}

/// Waits for a child to exit; returns its status and when it exited.
fn wait_child(
    child: &mut std::process::Child,
    timeout: Duration,
) -> (std::process::ExitStatus, std::time::Instant) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, std::time::Instant::now());
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the process did not finish in time"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Goal: `synod lock --max N` is a semaphore: N commands run at once, not more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synod_lock_max_is_a_semaphore() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let inside = root.path().join("inside");
    std::fs::create_dir_all(&inside).expect("dir");
    let script = format!(
        "touch {dir}/$$; sleep 0.8; rm {dir}/$$",
        dir = inside.display()
    );
    let mut holders: Vec<std::process::Child> = (0..4)
        .map(|_| synod_lock(&member, &["--max", "2", "sem", "--", "sh", "-c", &script]))
        .collect();
    let mut most = 0;
    let started = std::time::Instant::now();
    while holders
        .iter_mut()
        .any(|h| h.try_wait().expect("wait").is_none())
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the holders did not finish"
        );
        let now = std::fs::read_dir(&inside).expect("dir").count();
        most = most.max(now);
        std::thread::sleep(Duration::from_millis(10));
    }
    for holder in &mut holders {
        assert!(holder.wait().expect("wait").success());
    }
    assert_eq!(most, 2, "two commands at once, never three");
}

/// Goal: lock-delay. When a holder's session expires (it was killed), a waiter with
/// `--lock-delay D` acquires only D after the expiry; when the holder releases cleanly, the
/// waiter acquires at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_applies_after_an_expiry_not_after_a_release() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let held = async |client: &mut etcd_client::Client| {
        crate::harness::eventually(Duration::from_secs(10), async || {
            client
                .get(
                    "delayed/",
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                )
                .await
                .is_ok_and(|r| r.count() == 1)
        })
        .await
    };

    // Expiry: the holder is killed; its 2 s lease expires; then 3 s of lock-delay.
    let mut holder = synod_lock(&member, &["--ttl", "2", "delayed"]);
    assert!(held(&mut client).await, "the first holder took the lock");
    let mut waiter = synod_lock(&member, &["--lock-delay", "3s", "delayed", "--", "true"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.kill().expect("kill -9 the holder");
    let killed = std::time::Instant::now();
    let _ = holder.wait();
    let (status, finished) = wait_child(&mut waiter, Duration::from_secs(20));
    assert!(status.success());
    let waited = finished - killed;
    // The lease was last renewed up to a third of its TTL before the kill, so it expired 1.3 to
    // 2 s after; without the delay the waiter would go then.
    assert!(
        waited >= Duration::from_millis(4_000),
        "acquired {waited:?} after the holder died: before its lease (1.3-2 s) and the delay (3 s) ran out"
    );
    assert!(
        waited < Duration::from_secs(10),
        "acquired only after {waited:?}"
    );

    // Release: the holder exits cleanly (Ctrl-C); no delay.
    let mut holder = synod_lock(&member, &["--ttl", "2", "delayed"]);
    assert!(held(&mut client).await, "the holder took the lock");
    let mut waiter = synod_lock(&member, &["--lock-delay", "3s", "delayed", "--", "true"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    crate::harness::signal(holder.id(), "INT");
    let released = std::time::Instant::now();
    let _ = holder.wait();
    let (status, finished) = wait_child(&mut waiter, Duration::from_secs(20));
    assert!(status.success());
    assert!(
        finished - released < Duration::from_millis(2_500),
        "a clean release still delayed the next holder by {:?}",
        finished - released
    );
}

/// Goal: `etcdctl elect`, the Election service and `synod elect` take part in one election:
/// each sees the leader the others elected, and leadership passes between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_elect_synod_elect_and_the_service_agree() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut client = member.etcd_client().await;
    let leader_value = async |client: &mut etcd_client::Client| -> Option<String> {
        let response = client.leader("mixed").await.ok()?;
        Some(response.kv()?.value_str().ok()?.to_owned())
    };
    let mut etcdctl = Command::new("etcdctl")
        .args(["--endpoints", &member.endpoint(), "elect", "mixed", "alice"])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .spawn()
        .expect("etcdctl elect");
    let alice = crate::harness::eventually(Duration::from_secs(10), async || {
        leader_value(&mut client).await.as_deref() == Some("alice")
    })
    .await;
    assert!(alice, "the service sees etcdctl's leader");
    // synod elect campaigns behind alice...
    let mut synod = Command::new(crate::harness::synod_binary())
        .args(["--endpoints", &member.endpoint(), "elect", "mixed", "bob"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("synod elect");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(leader_value(&mut client).await.as_deref(), Some("alice"));
    // ...and `etcdctl elect -l` observes the hand-over when alice resigns.
    let observed_path = root.path().join("observed");
    let observed_file = std::fs::File::create(&observed_path).expect("observer output");
    let mut observer = Command::new("etcdctl")
        .args(["--endpoints", &member.endpoint(), "elect", "-l", "mixed"])
        .env("ETCDCTL_API", "3")
        .stdout(observed_file)
        .spawn()
        .expect("etcdctl elect -l");
    tokio::time::sleep(Duration::from_millis(300)).await;
    crate::harness::signal(etcdctl.id(), "INT");
    let _ = etcdctl.wait();
    let bob = crate::harness::eventually(Duration::from_secs(10), async || {
        leader_value(&mut client).await.as_deref() == Some("bob")
    })
    .await;
    assert!(bob, "synod elect took over when etcdctl resigned");
    // The observer prints each leader as its watch delivers it, a moment after the service
    // answers: wait for it to show both.
    let read = || std::fs::read_to_string(&observed_path).unwrap_or_default();
    let saw_both = crate::harness::eventually(Duration::from_secs(10), async || {
        let observed = read();
        observed.contains("alice") && observed.contains("bob")
    })
    .await;
    let _ = observer.kill();
    let _ = observer.wait();
    assert!(saw_both, "etcdctl elect -l saw the hand-over: {}", read());
    crate::harness::signal(synod.id(), "INT");
    let _ = synod.wait();
    let gone = crate::harness::eventually(Duration::from_secs(10), async || {
        leader_value(&mut client).await.is_none()
    })
    .await;
    assert!(gone, "synod elect resigned when interrupted");
}
