//! Maintenance, Cluster and HTTP surfaces, restarts, and the storage quota.

use etcd_client::{AlarmAction, AlarmType, GetOptions};

use crate::harness::{Member, http_get};
use crate::kv::assert_etcd_error;

/// Goal: Status, HashKV, MemberList, Defragment and Snapshot answer as etcd clients expect, and
/// data, revisions and ids survive a graceful restart.
#[tokio::test]
async fn status_hash_snapshot_members_and_restart() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), &["--name", "solo"]);
    let mut client = member.etcd_client().await;
    for i in 0..20 {
        client
            .put(format!("key{i}"), format!("value{i}"), None)
            .await
            .expect("put");
    }
    let status = client.status().await.expect("status");
    assert!(
        status.version().starts_with("3.6."),
        "etcd API level, got {}",
        status.version()
    );
    let header = status.header().expect("header");
    assert_eq!(
        status.leader(),
        header.member_id(),
        "a single member leads itself"
    );
    assert!(status.raft_index() >= 21 && status.raft_term() >= 1);
    assert!(status.db_size() > 0);

    let members = client.member_list().await.expect("member list");
    assert_eq!(members.members().len(), 1);
    assert_eq!(members.members()[0].name(), "solo");
    assert_eq!(members.members()[0].id(), header.member_id());
    assert_eq!(members.members()[0].client_urls(), &[member.url()]);

    let first = client.hash_kv(0).await.expect("hash kv");
    assert_eq!(first.hash_revision(), 21);
    assert_eq!(
        client.hash_kv(21).await.expect("again").hash(),
        first.hash(),
        "hashing is deterministic"
    );
    let before = client.hash_kv(10).await.expect("older").hash();
    client.put("key0", "changed", None).await.expect("put");
    assert_eq!(
        client.hash_kv(10).await.expect("older again").hash(),
        before,
        "history below is unchanged"
    );
    assert_ne!(
        client.hash_kv(0).await.expect("latest").hash(),
        first.hash()
    );

    client.defragment().await.expect("defragment");
    let mut snapshot = client.snapshot().await.expect("snapshot");
    let mut bytes = Vec::new();
    while let Some(chunk) = snapshot.message().await.expect("chunk") {
        bytes.extend_from_slice(chunk.blob());
    }
    assert!(bytes.len() > 32);
    let (db, digest) = bytes.split_at(bytes.len() - 32);
    use sha2::Digest;
    assert_eq!(
        sha2::Sha256::digest(db).as_slice(),
        digest,
        "the stream ends with the SHA-256 of the file"
    );

    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert!(alarms.alarms().is_empty());

    let cluster_id = header.cluster_id();
    assert!(member.terminate(), "SIGTERM stops the member cleanly");
    member.restart();
    let mut client = member.etcd_client().await;
    let got = client
        .get("key", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get after restart");
    assert_eq!(got.kvs().len(), 20);
    assert_eq!(got.header().expect("header").revision(), 22);
    assert_eq!(got.header().expect("header").cluster_id(), cluster_id);
    let next = client.put("after", "restart", None).await.expect("put");
    assert_eq!(
        next.header().expect("header").revision(),
        23,
        "revisions continue after a restart"
    );
}

/// Goal: the HTTP endpoints etcd serves on the client port answer on the same port as gRPC.
#[tokio::test]
async fn http_endpoints_share_the_client_port() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let (code, body) = http_get(member.client_port, "/health").expect("health");
    assert_eq!(code, 200);
    let health: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(health["health"], "true");
    let (code, body) = http_get(member.client_port, "/version").expect("version");
    assert_eq!(code, 200);
    let version: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        version["etcdserver"]
            .as_str()
            .expect("string")
            .starts_with("3.6.")
    );
    assert_eq!(
        http_get(member.client_port, "/livez").expect("livez").0,
        200
    );
    assert_eq!(
        http_get(member.client_port, "/readyz").expect("readyz").0,
        200
    );
    assert_eq!(
        http_get(member.client_port, "/health?serializable=true")
            .expect("health")
            .0,
        200
    );
    assert_eq!(
        http_get(member.peer_port, "/version").expect("peer port").0,
        200
    );
    // Unknown pages are Go's plain 404, as on etcd, not a gRPC answer.
    for path in ["/v2/keys", "/x"] {
        let (code, body) = http_get(member.client_port, path).expect("unknown path");
        assert_eq!(
            (code, body.as_str()),
            (404, "404 page not found\n"),
            "{path}"
        );
    }
    // gRPC is HTTP/2 only: an HTTP/1.1 POST to a gRPC path is not executed.
    let (code, _) = crate::harness::http_request(
        member.client_port,
        "POST",
        "/etcdserverpb.KV/Put",
        Some("\0\0\0\0\x05\x0a\x01k\x12\x00"),
    )
    .expect("http/1.1 post");
    assert_eq!(code, 404);
}

/// Goal: past the quota the member raises NOSPACE: writes are refused with etcd's error, reads
/// and deletes still work, and the alarm can be listed and disarmed.
#[tokio::test]
async fn quota_raises_nospace_and_keeps_serving_reads_and_deletes() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--quota-backend-bytes", "3000000"]);
    let mut client = member.etcd_client().await;
    let value = vec![b'q'; 8 * 1024];
    let mut written = 0;
    let refusal = loop {
        match client
            .put(format!("fill/{written}"), value.clone(), None)
            .await
        {
            Ok(_) => written += 1,
            Err(error) => break error,
        }
        assert!(written < 10_000, "the quota was never reached");
    };
    match refusal {
        etcd_client::Error::GRpcStatus(status) => {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert_eq!(
                status.message(),
                "etcdserver: mvcc: database space exceeded"
            );
        }
        other => panic!("unexpected error {other:?}"),
    }
    assert_etcd_error(
        client.put("more", "x", None).await,
        tonic::Code::ResourceExhausted,
        "etcdserver: mvcc: database space exceeded",
    );
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert_eq!(alarms.alarms().len(), 1);
    assert_eq!(alarms.alarms()[0].alarm(), AlarmType::Nospace);
    let read = client.get("fill/0", None).await.expect("reads still work");
    assert_eq!(read.kvs()[0].value(), value.as_slice());
    client
        .delete("fill/0", None)
        .await
        .expect("deletes still work");
    let status = client.status().await.expect("status");
    assert!(
        status.errors().iter().any(|e| e.contains("NOSPACE")),
        "status lists the alarm: {:?}",
        status.errors()
    );
    assert_eq!(
        http_get(member.client_port, "/health").expect("health").0,
        503
    );
    let member_id = alarms.alarms()[0].member_id();
    let mut options = etcd_client::AlarmOptions::new();
    options.with_member(member_id);
    client
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(options))
        .await
        .expect("disarm");
    let alarms = client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarms");
    assert!(alarms.alarms().is_empty(), "disarmed");
}

/// Goal: revision-mode auto-compaction keeps the last N revisions, as etcd's does.
#[tokio::test]
async fn auto_compaction_by_revision() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(
        root.path(),
        &[
            "--auto-compaction-mode",
            "revision",
            "--auto-compaction-retention",
            "10",
        ],
    );
    let mut client = member.etcd_client().await;
    for i in 0..40 {
        client.put("ac", i.to_string(), None).await.expect("put");
    }
    let compacted = crate::harness::eventually(std::time::Duration::from_secs(15), async || {
        matches!(client.get("ac", Some(GetOptions::new().with_revision(5))).await, Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::OutOfRange)
    })
    .await;
    assert!(compacted, "old revisions are compacted away");
    let recent = client
        .get("ac", Some(GetOptions::new().with_revision(35)))
        .await
        .expect("recent history is kept");
    assert_eq!(recent.kvs()[0].value(), b"33");
}

/// Goal: malformed requests (garbage bytes, bodies that are not the message, oversize values)
/// get errors, never a crash, and the member keeps serving.
#[tokio::test]
async fn malformed_requests_are_refused_without_harm() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    // Raw garbage on the port.
    {
        use std::io::Write;
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", member.client_port)).expect("connect");
        let _ = stream.write_all(&[0xde, 0xad, 0xbe, 0xef].repeat(4096));
    }
    // A gRPC call whose message is not a RangeRequest, over HTTP/2 with curl.
    let url = format!(
        "http://127.0.0.1:{}/etcdserverpb.KV/Range",
        member.client_port
    );
    let body = root.path().join("garbage.bin");
    std::fs::write(&body, [0u8, 0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])
        .expect("write body");
    let (ok, headers, _) = crate::harness::run_tool(
        "curl",
        &[],
        &[
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--http2-prior-knowledge",
            "-H",
            "content-type: application/grpc",
            "-H",
            "te: trailers",
            "--data-binary",
            &format!("@{}", body.display()),
            &url,
        ],
        None,
    );
    assert!(ok, "curl ran");
    assert!(
        headers.contains("grpc-status"),
        "a gRPC error status, not a dropped connection: {headers}"
    );
    assert!(!headers.contains("grpc-status: 0"), "{headers}");
    let mut client = member.etcd_client().await;
    client
        .put("still", "alive", None)
        .await
        .expect("the member still serves");
    let status = client.status().await.expect("status");
    assert!(status.raft_index() > 0);
}

/// Goal: a member out of file descriptors refuses new connections and keeps serving the ones it
/// has; it never mistakes the shortage for a failed disk (etcd survives the same). The server
/// runs with 200 descriptors, soft and hard, and 330 idle connections come at it.
#[tokio::test]
async fn running_out_of_descriptors_refuses_connections_not_the_disk() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start_wrapped(
        root.path(),
        &["--snapshot-count", "100"],
        &["prlimit", "--nofile=200:200", "--"],
    );
    let mut client = member.etcd_client().await;
    client.put("before", "v", None).await.expect("put");
    let idle: Vec<std::net::TcpStream> = (0..330)
        .filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", member.client_port)).ok())
        .collect();
    assert!(idle.len() > 100, "the flood connected {} times", idle.len());
    // Writes on the connection it already has go on, through log compactions and snapshots
    // that open files.
    let wait = std::time::Duration::from_secs(10);
    for i in 0..400 {
        tokio::time::timeout(
            wait,
            client.put(format!("flood/{i:03}"), vec![b'x'; 512], None),
        )
        .await
        .expect("a put answered in time while the descriptors are exhausted")
        .expect("a put while the descriptors are exhausted");
    }
    drop(idle);
    assert!(
        member.is_running_now(),
        "the member stopped:\n{}",
        member.log()
    );
    assert!(
        !member.log().contains("storage failure"),
        "a descriptor shortage was taken for a storage failure:\n{}",
        member.log()
    );
    // Once the flood is gone (the member notices each closed connection), new clients are
    // served again.
    let served = crate::harness::eventually(wait, async || {
        let Ok(Ok(mut fresh)) = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            etcd_client::Client::connect([member.url()], None),
        )
        .await
        else {
            return false;
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), fresh.get("flood/399", None)).await,
            Ok(Ok(got)) if got.kvs().len() == 1
        )
    })
    .await;
    assert!(served, "new clients are served once the flood is gone");
}
