//! Leases through the `etcd-client` crate: grant, keep-alive, time-to-live, revoke and expiry,
//! which deletes attached keys with DELETE events.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, LeaseTimeToLiveOptions, PutOptions, WatchOptions};

use crate::harness::{Member, eventually};
use crate::kv::assert_etcd_error;

/// Fast elections make the minimum TTL 1 s, so expiry tests stay short.
const FAST: &[&str] = &["--heartbeat-interval", "50", "--election-timeout", "500"];

/// Goal: grant, attach, keep alive, inspect and revoke a lease as an etcd client does.
#[tokio::test]
async fn lease_lifecycle() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), FAST);
    let mut client = member.etcd_client().await;

    let grant = client.lease_grant(30, None).await.expect("grant");
    assert!(grant.id() > 0);
    assert_eq!(grant.ttl(), 30);
    let chosen = client
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .expect("grant with id");
    assert_eq!(chosen.id(), 4242);
    assert_etcd_error(
        client
            .lease_grant(30, Some(LeaseGrantOptions::new().with_id(4242)))
            .await,
        tonic::Code::FailedPrecondition,
        "etcdserver: lease already exists",
    );
    assert_etcd_error(
        client.lease_grant(9_000_000_001, None).await,
        tonic::Code::OutOfRange,
        "etcdserver: too large lease TTL",
    );
    let short = client
        .lease_grant(0, None)
        .await
        .expect("grant below the minimum");
    assert_eq!(
        short.ttl(),
        1,
        "a TTL below the minimum is raised to 1.5 election timeouts"
    );

    client
        .put(
            "leased/a",
            "1",
            Some(PutOptions::new().with_lease(grant.id())),
        )
        .await
        .expect("attach a");
    client
        .put(
            "leased/b",
            "2",
            Some(PutOptions::new().with_lease(grant.id())),
        )
        .await
        .expect("attach b");
    let ttl = client
        .lease_time_to_live(grant.id(), Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("time to live");
    assert_eq!(ttl.granted_ttl(), 30);
    assert!(ttl.ttl() > 25 && ttl.ttl() <= 30, "remaining {}", ttl.ttl());
    assert_eq!(ttl.keys(), &[b"leased/a".to_vec(), b"leased/b".to_vec()]);

    let (mut keeper, mut responses) = client
        .lease_keep_alive(grant.id())
        .await
        .expect("keep alive");
    keeper.keep_alive().await.expect("send keep-alive");
    let renewed = responses
        .message()
        .await
        .expect("keep-alive response")
        .expect("open");
    assert_eq!((renewed.id(), renewed.ttl()), (grant.id(), 30));
    let missing = client
        .lease_time_to_live(777, None)
        .await
        .expect("missing lease");
    assert_eq!(missing.ttl(), -1, "a missing lease reports TTL -1");

    let leases = client.leases().await.expect("list");
    let ids: Vec<i64> = leases.leases().iter().map(|l| l.id()).collect();
    assert!(ids.contains(&grant.id()) && ids.contains(&4242));

    let mut watch = client
        .watch("leased/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch");
    watch.message().await.expect("created").expect("open");
    client.lease_revoke(grant.id()).await.expect("revoke");
    let response = watch.message().await.expect("events").expect("open");
    assert_eq!(
        response.events().len(),
        2,
        "both keys deleted in one revision"
    );
    assert!(
        response
            .events()
            .iter()
            .all(|e| e.event_type() == EventType::Delete)
    );
    assert_eq!(
        client.get("leased/a", None).await.expect("get").kvs().len(),
        0
    );
    assert_etcd_error(
        client.lease_revoke(grant.id()).await,
        tonic::Code::NotFound,
        "etcdserver: requested lease not found",
    );
}

/// Goal: a lease that is not kept alive expires on the leader and its keys are deleted with
/// DELETE events, while a lease kept alive survives; leases survive a restart.
#[tokio::test]
async fn expiry_deletes_keys_and_keepalive_prevents_it() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), FAST);
    let mut client = member.etcd_client().await;
    let doomed = client.lease_grant(1, None).await.expect("grant").id();
    let kept = client.lease_grant(1, None).await.expect("grant").id();
    client
        .put("doomed", "x", Some(PutOptions::new().with_lease(doomed)))
        .await
        .expect("put");
    client
        .put("kept", "x", Some(PutOptions::new().with_lease(kept)))
        .await
        .expect("put");
    let mut watch = client.watch("doomed", None).await.expect("watch");
    watch.message().await.expect("created").expect("open");
    let (mut keeper, mut responses) = client.lease_keep_alive(kept).await.expect("keep alive");

    let expired = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            keeper.keep_alive().await.expect("renew");
            responses.message().await.expect("renewed").expect("open");
            tokio::select! {
                message = watch.message() => return message,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    })
    .await
    .expect("the unrenewed lease expires within 10 s")
    .expect("watch ok")
    .expect("open");
    assert_eq!(expired.events()[0].event_type(), EventType::Delete);
    assert_eq!(
        client.get("kept", None).await.expect("get").kvs().len(),
        1,
        "the renewed lease is alive"
    );
    assert_eq!(
        client
            .lease_time_to_live(doomed, None)
            .await
            .expect("ttl")
            .ttl(),
        -1
    );

    let durable = client.lease_grant(60, None).await.expect("grant").id();
    client
        .put("durable", "x", Some(PutOptions::new().with_lease(durable)))
        .await
        .expect("put");
    assert!(member.terminate(), "graceful shutdown");
    member.restart();
    let mut client = member.etcd_client().await;
    let ttl = client
        .lease_time_to_live(durable, Some(LeaseTimeToLiveOptions::new().with_keys()))
        .await
        .expect("ttl");
    assert_eq!(ttl.granted_ttl(), 60, "leases survive a restart");
    assert_eq!(ttl.keys(), &[b"durable".to_vec()]);
    // The kept lease is no longer renewed after the restart; it must now expire too.
    assert!(
        eventually(Duration::from_secs(10), async || client
            .get("kept", None)
            .await
            .is_ok_and(|r| r.kvs().is_empty()))
        .await,
        "a lease left alone after restart expires"
    );
}
