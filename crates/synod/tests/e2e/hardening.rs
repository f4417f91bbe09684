//! Attacks on a running member found by probing it, each refused: a forged leadership
//! hand-over on the peer port, snapshot uploads too large or cut short, a data directory others
//! can read, password guessing, and the audit log that records who tried what.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use futures::StreamExt;
use synod_api::synodpb::peer_client::PeerClient;
use synod_api::synodpb::{RaftBatch, SnapshotChunk};

use crate::harness::{Cluster, Member, eventually, run_tool};

async fn peer_client(url: String) -> PeerClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url)
        .expect("url")
        .connect()
        .await
        .expect("connect to the peer port");
    PeerClient::new(channel)
}

/// (cluster id, raft term) as a member reports them.
async fn cluster_and_term(member: &Member) -> (u64, u64) {
    let mut client = member.etcd_client().await;
    let header = client
        .status()
        .await
        .expect("status")
        .header()
        .cloned()
        .expect("header");
    (header.cluster_id(), header.raft_term())
}

/// Goal: one `MsgTimeoutNow` on the peer port used to make its receiver campaign and take the
/// lead at once. A hand-over that does not come from the leader (here, forged in the name of
/// the other follower) is dropped and logged; the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_leadership_hand_over_is_dropped() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let leader = cluster.leader().await;
    let (victim, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let victim_id = cluster.member_id(victim).await;
    let other_id = cluster.member_id(other).await;
    let (cluster_id, term) = cluster_and_term(&cluster.members[victim]).await;
    let mut message = raft::eraftpb::Message::default();
    message.set_msg_type(raft::eraftpb::MessageType::MsgTimeoutNow);
    message.from = other_id;
    message.to = victim_id;
    message.term = term;
    let bytes = protobuf::Message::write_to_bytes(&message).expect("encode");
    let batch = RaftBatch {
        cluster_id,
        from: other_id,
        to: victim_id,
        messages: vec![bytes],
    };
    peer_client(cluster.members[victim].peer_url())
        .await
        .raft(futures::stream::iter([batch]))
        .await
        .expect("the batch is taken (its message dropped)");
    let logged = eventually(Duration::from_secs(5), async || {
        cluster.members[victim]
            .log()
            .contains("a leadership hand-over from a member that is not the leader")
    })
    .await;
    assert!(logged, "{}", cluster.members[victim].log());
    // Two election timeouts later, the same leader in the same term.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.leader().await, leader);
    assert_eq!(cluster_and_term(&cluster.members[leader]).await.1, term);
}

/// Goal: the peer port took a snapshot upload of any size (151 MB written) and left aborted
/// `.part` files until restart. Now an upload larger than the quota allows, one from a
/// stranger, one whose rows are garbage, one with a key-table row that is no key-value, one in an
/// older version's format and one cut short are refused, and none leaves a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_uploads_are_bounded_and_cleaned_up() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--quota-backend-bytes=4194304"]);
    let (cluster_id, term) = cluster_and_term(&member).await;
    let own_id = member
        .etcd_client()
        .await
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .member_id();
    let snapshot = move |from: u64| {
        let mut message = raft::eraftpb::Message::default();
        message.set_msg_type(raft::eraftpb::MessageType::MsgSnapshot);
        message.from = from;
        message.to = own_id;
        message.term = term;
        message.mut_snapshot().mut_metadata().index = 1_000_000;
        protobuf::Message::write_to_bytes(&message).expect("encode")
    };
    let chunk = move |from: u64, first: bool| SnapshotChunk {
        cluster_id,
        from,
        to: own_id,
        message: if first { snapshot(from) } else { Vec::new() },
        data: vec![7u8; 1 << 20],
        format: if first {
            synod_core::snapshot::FORMAT
        } else {
            0
        },
    };
    let snap_dir = member.data_dir.join("member/snap");
    let leftovers = || {
        std::fs::read_dir(&snap_dir)
            .map(|entries| entries.flatten().count())
            .unwrap_or(0)
    };

    // 4 MiB quota: a 64 MiB upload is refused before it is all on disk.
    let oversized = (0..64).map(move |i| chunk(own_id, i == 0));
    let error = peer_client(member.peer_url())
        .await
        .snapshot(futures::stream::iter(oversized))
        .await
        .expect_err("an oversized snapshot is refused");
    assert!(
        error.message().contains("snapshot larger than"),
        "{error:?}"
    );
    assert_eq!(leftovers(), 0, "an oversized upload left a file");

    // From a member id the cluster does not have.
    let error = peer_client(member.peer_url())
        .await
        .snapshot(futures::stream::iter([chunk(own_id ^ 1, true)]))
        .await
        .expect_err("a stranger's snapshot is refused");
    assert!(error.message().contains("is not a member"), "{error:?}");

    // Rows that are not rows (a row of 117 MB, cut short by the stream's end).
    let error = peer_client(member.peer_url())
        .await
        .snapshot(futures::stream::iter([
            chunk(own_id, true),
            chunk(own_id, false),
        ]))
        .await
        .expect_err("a stream of garbage is refused");
    assert!(
        error.message().contains("snapshot stream refused"),
        "{error:?}"
    );
    assert_eq!(leftovers(), 0, "a refused stream left a file");

    // Well-framed rows under a good checksum, but a key-table row that holds no key-value: the
    // key index built from the stream refuses it before it reaches the state machine (at the
    // install, it would have stopped the member). 8 MiB of rows follow it, so the index's
    // thread stops long before the file's, whose error (the stream ended early) is not the one
    // reported.
    let source = synod_core::backend::Backend::open(&root.path().join("source.db")).expect("db");
    let tx = source.begin_write().expect("write");
    tx.open_table(synod_core::backend::KEY)
        .expect("key table")
        .insert(
            &synod_core::mvcc::revision::Revision { main: 2, sub: 0 }.to_bytes(false)[..],
            &[0xFFu8; 3][..],
        )
        .expect("row");
    let mut values = tx
        .open_table(synod_core::backend::VALUE)
        .expect("value table");
    for i in 0..64u32 {
        values
            .insert(&i.to_be_bytes()[..], &vec![1u8; 128 << 10][..])
            .expect("row");
    }
    drop(values);
    tx.commit().expect("commit");
    let view = source.begin_read().expect("view");
    let stream: Vec<SnapshotChunk> = synod_core::snapshot::rows_in_memory(&view, 64 << 10)
        .expect("rows")
        .into_iter()
        .enumerate()
        .map(|(i, data)| SnapshotChunk {
            data,
            ..chunk(own_id, i == 0)
        })
        .collect();
    let error = peer_client(member.peer_url())
        .await
        .snapshot(futures::stream::iter(stream))
        .await
        .expect_err("a key-table row that is no key-value is refused");
    assert!(error.message().contains("key table value"), "{error:?}");
    assert_eq!(leftovers(), 0, "a refused stream left a file");
    member
        .etcd_client()
        .await
        .status()
        .await
        .expect("still serving");

    // In the format of an older version (the state-machine file itself).
    let mut old = chunk(own_id, true);
    old.format = 0;
    let error = peer_client(member.peer_url())
        .await
        .snapshot(futures::stream::iter([old]))
        .await
        .expect_err("an older version's snapshot is refused");
    assert!(
        error.message().contains("another Synod version"),
        "{error:?}"
    );

    // Cut short: the client goes away after two chunks.
    let url = member.peer_url();
    let upload = tokio::spawn(async move {
        let endless = futures::stream::iter([chunk(own_id, true), chunk(own_id, false)])
            .chain(futures::stream::pending());
        let _ = peer_client(url).await.snapshot(endless).await;
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    upload.abort();
    let cleaned = eventually(Duration::from_secs(10), async || leftovers() == 0).await;
    assert!(cleaned, "a cut-short upload left {} file(s)", leftovers());
}

/// Goal: the data directory and its files are the member's user's alone (etcd: 0700 and
/// 0600); a directory left open by an earlier run is tightened at start.
#[test]
fn the_data_directory_is_private() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::start(root.path(), &[]);
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(&member.data_dir), 0o700);
    assert_eq!(mode(&member.data_dir.join("member/db")) & 0o077, 0);
    assert!(member.terminate());
    std::fs::set_permissions(&member.data_dir, std::fs::Permissions::from_mode(0o755))
        .expect("loosen");
    member.restart();
    assert_eq!(mode(&member.data_dir), 0o700);
    assert!(member.log().contains("it is now 0700"));
}

fn etcdctl(member: &Member, args: &[&str]) -> (bool, String, String) {
    let endpoint = format!("--endpoints={}", member.endpoint());
    run_tool("etcdctl", &[&endpoint], args, None)
}

/// Goal: guessing passwords is slowed down: after five failures in a row, the next attempt is
/// refused for a while even with the right password (and costs the member no hashing), per
/// user and per client address. The audit log records the failures, the admin RPCs and the
/// refused requests, with who and from where.
#[test]
fn password_guessing_backs_off_and_is_audited() {
    let root = tempfile::tempdir().expect("temp dir");
    let audit = root.path().join("audit.log");
    let audit_flag = format!("--audit-log={}", audit.display());
    let member = Member::start(&root.path().join("m0"), &[&audit_flag]);
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "alice:right"],
        &["auth", "enable"],
    ] {
        let (ok, out, err) = etcdctl(&member, args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    for _ in 0..5 {
        let (ok, _, err) = etcdctl(&member, &["--user=alice:wrong", "get", "k"]);
        assert!(!ok && err.contains("authentication failed"), "{err}");
    }
    let (ok, _, err) = etcdctl(&member, &["--user=alice:right", "get", "k"]);
    assert!(
        !ok && err.contains("authentication failed"),
        "the right password got through at once: {err}"
    );
    assert!(
        member
            .log()
            .contains("login refused: too many failed attempts")
    );
    // After the back-off, the right password works (alice may then read nothing).
    std::thread::sleep(Duration::from_millis(2_100));
    let (ok, _, err) = etcdctl(&member, &["--user=alice:right", "put", "k", "v"]);
    assert!(!ok && err.contains("permission denied"), "{err}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .expect("the audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let find = |rpc: &str, result: &str| {
        lines.iter().any(|l| {
            l["rpc"] == rpc
                && l["result"] == result
                && l["address"]
                    .as_str()
                    .is_some_and(|a| a.starts_with("127.0.0.1:"))
        })
    };
    assert!(find("/etcdserverpb.Auth/UserAdd", "OK"), "{lines:?}");
    assert!(find("/etcdserverpb.Auth/AuthEnable", "OK"), "{lines:?}");
    assert!(
        find("/etcdserverpb.Auth/Authenticate", "InvalidArgument"),
        "{lines:?}"
    );
    assert!(
        lines.iter().any(|l| l["rpc"] == "/etcdserverpb.KV/Put"
            && l["result"] == "PermissionDenied"
            && l["user"] == "alice"),
        "the refused put: {lines:?}"
    );
    let mode = std::fs::metadata(&audit)
        .expect("audit")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "the audit log is readable by others");
}

/// An HTTP/1.1 `GET /health` on a kept-alive connection from `source`; `None` if the member
/// closed the connection instead of answering.
async fn health_over(connection: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    connection
        .write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .ok()?;
    let mut buffer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), connection.read(&mut buffer))
        .await
        .ok()?
        .ok()?;
    (n > 0).then(|| String::from_utf8_lossy(&buffer[..n]).into_owned())
}

async fn connect_from(source: &str, port: u16) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(format!("{source}:0").parse().expect("address"))
        .expect("bind the source address");
    socket
        .connect(format!("127.0.0.1:{port}").parse().expect("address"))
        .await
        .expect("connect")
}

/// Goal: with `--max-connections-per-address`, one client address cannot take every
/// connection the member has: past the cap its new connections are closed at once (and logged),
/// while other addresses still get in, and a closed connection frees its place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_take_every_connection() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--max-connections-per-address=4"]);
    let port = member.client_port;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut connection = connect_from("127.0.0.3", port).await;
        assert!(
            health_over(&mut connection)
                .await
                .is_some_and(|r| r.contains("200 OK"))
        );
        held.push(connection);
    }
    let mut fifth = connect_from("127.0.0.3", port).await;
    assert_eq!(
        health_over(&mut fifth).await,
        None,
        "a fifth connection was served"
    );
    let mut other = connect_from("127.0.0.4", port).await;
    assert!(
        health_over(&mut other).await.is_some(),
        "another address was refused"
    );
    drop(held.pop());
    let freed = eventually(Duration::from_secs(5), async || {
        let mut again = connect_from("127.0.0.3", port).await;
        health_over(&mut again).await.is_some()
    })
    .await;
    assert!(freed, "a closed connection did not free its place");
    assert!(member.log().contains("--max-connections-per-address"));
}
