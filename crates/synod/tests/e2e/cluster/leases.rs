//! Leases across a cluster: renewal through followers, leader changes, checkpoints, and a
//! leader cut off from the majority.

use super::*;

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
