//! Backup and restore, and the way in from etcd and back: snapshots are etcd's database files,
//! so `synod snapshot restore` takes Synod's and etcd's, and etcd's own tools take Synod's.

use std::path::Path;

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};

use crate::harness::{Cluster, Etcd, Member, free_port, run_tool, synod_binary};

/// Every key's full record (key, value, create and mod revision, version, lease) and the store
/// revision, as a client reads them.
async fn dump(client: &mut Client) -> (i64, Vec<(Vec<u8>, Vec<u8>, i64, i64, i64, i64)>) {
    let response = client
        .get("", Some(GetOptions::new().with_all_keys()))
        .await
        .expect("range everything");
    let revision = response.header().expect("header").revision();
    let kvs = response
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key().to_vec(),
                kv.value().to_vec(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                kv.lease(),
            )
        })
        .collect();
    (revision, kvs)
}

/// Writes a history with overwrites, deletions, a txn, a lease holding two keys and a
/// compaction; returns the lease id.
async fn write_history(client: &mut Client) -> i64 {
    for i in 0..40 {
        client
            .put(format!("app/k{i:02}"), format!("v{i}"), None)
            .await
            .expect("put");
    }
    for i in 0..10 {
        client
            .put(format!("app/k{i:02}"), format!("again{i}"), None)
            .await
            .expect("overwrite");
    }
    client.delete("app/k05", None).await.expect("delete");
    client
        .txn(
            Txn::new()
                .when([Compare::version("app/k01", CompareOp::Equal, 2)])
                .and_then([
                    TxnOp::put("txn/a", "1", None),
                    TxnOp::put("txn/b", vec![0u8, 255, 7], None),
                ]),
        )
        .await
        .expect("txn");
    let lease = client.lease_grant(600, None).await.expect("grant").id();
    for key in ["leased/one", "leased/two"] {
        client
            .put(key, "held", Some(PutOptions::new().with_lease(lease)))
            .await
            .expect("leased put");
    }
    client.compact(20, None).await.expect("compact");
    client
        .put("after/compaction", "x", None)
        .await
        .expect("put");
    lease
}

/// `<program> snapshot save` (synod's CLI or etcdctl) of the member at `endpoint` into `file`.
fn save_snapshot(program: &str, endpoint: &str, file: &Path) {
    let (ok, out, err) = run_tool(
        program,
        &["--endpoints", endpoint],
        &["snapshot", "save", file.to_str().expect("path")],
        None,
    );
    assert!(ok, "{program} snapshot save from {endpoint}: {out}{err}");
}

/// `synod snapshot restore` with etcdutl's flags, checked to succeed.
fn restore(snapshot: &Path, name: &str, data_dir: &Path, cluster: &str, peer_url: &str) {
    let args = [
        "snapshot",
        "restore",
        snapshot.to_str().expect("path"),
        "--name",
        name,
        "--data-dir",
        data_dir.to_str().expect("path"),
        "--initial-cluster",
        cluster,
        "--initial-cluster-token",
        "restored",
        "--initial-advertise-peer-urls",
        peer_url,
    ];
    let (ok, out, err) = run_tool(synod_binary(), &[], &args, None);
    assert!(ok, "synod snapshot restore: {out}{err}");
}

async fn lease_keys(client: &mut Client, lease: i64) -> Vec<Vec<u8>> {
    let ttl = client
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .expect("time to live");
    assert!(ttl.ttl() > 0, "lease {lease:x} is not alive: {ttl:?}");
    let mut keys = ttl.keys().to_vec();
    keys.sort();
    keys
}

/// Goal: save → restore into three new members → start gives the same keys, values and
/// revisions everywhere, equal HashKV on every member, a new cluster id with only the new
/// members, the lease with its keys, and a cluster that takes new writes.
#[tokio::test]
async fn save_and_restore_into_a_new_three_member_cluster() {
    let root = tempfile::tempdir().expect("temp dir");
    let source = Member::start(&root.path().join("source"), &["--name", "source"]);
    let mut client = source.etcd_client().await;
    let lease = write_history(&mut client).await;
    let before = dump(&mut client).await;
    let old_cluster = client
        .status()
        .await
        .expect("status")
        .header()
        .expect("header")
        .cluster_id();
    let snapshot = root.path().join("backup.db");
    save_snapshot(synod_binary(), &source.endpoint(), &snapshot);
    drop(client);
    drop(source);

    let cluster = Cluster::start_prepared(
        &root.path().join("restored"),
        3,
        // The restored data directory holds the new ids; the start flags' token is not used.
        &[],
        None,
        &|name, member, initial_cluster| {
            restore(
                &snapshot,
                name,
                &member.data_dir,
                initial_cluster,
                &member.peer_url(),
            )
        },
    );
    let mut hashes = Vec::new();
    for (index, member) in cluster.members.iter().enumerate() {
        let mut client = member.etcd_client().await;
        let after = dump(&mut client).await;
        assert_eq!(after, before, "member {index} differs from the saved data");
        let status = client.status().await.expect("status");
        assert_ne!(status.header().expect("header").cluster_id(), old_cluster);
        let hash = client.hash_kv(before.0).await.expect("hash kv");
        hashes.push((hash.hash(), hash.compact_version()));
        assert_eq!(
            lease_keys(&mut client, lease).await,
            [b"leased/one".to_vec(), b"leased/two".to_vec()]
        );
        let members = client.member_list().await.expect("member list");
        assert_eq!(members.members().len(), 3);
    }
    assert!(
        hashes.windows(2).all(|pair| pair[0] == pair[1]),
        "HashKV differs between members: {hashes:?}"
    );
    assert_eq!(hashes[0].1, 20, "the compaction point is kept");
    let mut client = cluster.members[1].etcd_client().await;
    let put = client.put("new", "write", None).await.expect("a new write");
    assert_eq!(put.header().expect("header").revision(), before.0 + 1);
    let compacted = client
        .get("app/k01", Some(GetOptions::new().with_revision(10)))
        .await;
    assert!(
        compacted.is_err(),
        "history below the compaction point stays compacted"
    );
}

/// Goal: an etcd 3.4 snapshot restored into Synod has every key's value and revisions equal to
/// etcd's, its history above the compaction point, and the lease with its keys.
#[tokio::test]
async fn an_etcd_snapshot_restores_into_synod() {
    let root = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(root.path());
    let mut reference = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    let lease = write_history(&mut reference).await;
    let expected = dump(&mut reference).await;
    let at_30 = reference
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_revision(30)),
        )
        .await
        .expect("etcd at revision 30");
    let snapshot = root.path().join("etcd.db");
    save_snapshot("etcdctl", &etcd.endpoint(), &snapshot);

    let member_root = root.path().join("synod");
    let mut member = Member::prepare(&member_root, vec!["--name".into(), "migrated".into()]);
    let peer_url = member.peer_url();
    restore(
        &snapshot,
        "migrated",
        &member.data_dir,
        &format!("migrated={peer_url}"),
        &peer_url,
    );
    member.set_args(vec![
        "--name".into(),
        "migrated".into(),
        "--initial-cluster-token".into(),
        "restored".into(),
    ]);
    member.launch();
    member.wait_ready();
    let mut client = member.etcd_client().await;
    assert_eq!(dump(&mut client).await, expected);
    let history = client
        .get(
            "app/",
            Some(GetOptions::new().with_prefix().with_revision(30)),
        )
        .await
        .expect("synod at revision 30");
    let records = |kvs: &[etcd_client::KeyValue]| -> Vec<(Vec<u8>, Vec<u8>, i64, i64)> {
        kvs.iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    kv.value().to_vec(),
                    kv.create_revision(),
                    kv.mod_revision(),
                )
            })
            .collect()
    };
    assert_eq!(
        records(history.kvs()),
        records(at_30.kvs()),
        "history above the compaction point"
    );
    assert_eq!(
        lease_keys(&mut client, lease).await,
        [b"leased/one".to_vec(), b"leased/two".to_vec()]
    );
}

/// Goal: the way back: etcd's own tools read a Synod backup (`etcdctl snapshot status` agrees
/// with `synod snapshot status`), and etcd restored from it serves the same keys and revisions.
#[tokio::test]
async fn etcd_reads_and_restores_a_synod_backup() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("synod"), &[]);
    let mut client = member.etcd_client().await;
    write_history(&mut client).await;
    let expected = dump(&mut client).await;
    let snapshot = root.path().join("synod.db");
    // etcdctl saves it: the stream's digest must be what etcd's client expects.
    save_snapshot("etcdctl", &member.endpoint(), &snapshot);
    let status_args = [
        "snapshot",
        "status",
        snapshot.to_str().expect("path"),
        "-w",
        "json",
    ];
    let (ok, etcd_status, err) = run_tool("etcdctl", &[], &status_args, None);
    assert!(ok, "etcdctl snapshot status: {err}");
    let (ok, synod_status, err) = run_tool(synod_binary(), &[], &status_args, None);
    assert!(ok, "synod snapshot status: {err}");
    let parse = |text: &str| -> serde_json::Value {
        serde_json::from_str(text.trim()).expect("JSON status")
    };
    assert_eq!(parse(&synod_status), parse(&etcd_status));
    assert_eq!(parse(&etcd_status)["revision"], expected.0);

    let peer_port = free_port();
    let data_dir = root.path().join("etcd-restored");
    let peer = format!("http://127.0.0.1:{peer_port}");
    let (ok, out, err) = run_tool(
        "etcdctl",
        &[],
        &[
            "snapshot",
            "restore",
            snapshot.to_str().expect("path"),
            "--name",
            "back",
            "--data-dir",
            data_dir.to_str().expect("path"),
            "--initial-cluster",
            &format!("back={peer}"),
            "--initial-advertise-peer-urls",
            &peer,
        ],
        None,
    );
    assert!(ok, "etcdctl snapshot restore of a Synod backup: {out}{err}");
    let etcd = Etcd::start_on(root.path(), &data_dir, "back", peer_port);
    let mut reference = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    assert_eq!(dump(&mut reference).await, expected);
}

/// A `synod migrate` process, killed when dropped.
struct Migration(std::process::Child);

impl Drop for Migration {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Goal: `synod migrate` copies a live etcd into an empty Synod and follows it while clients
/// write (puts, overwrites, deletes, txns, leases granted and revoked); once the writes stop it
/// catches up, and every key's value, create and mod revision, version and lease are etcd's,
/// at etcd's revision.
#[tokio::test]
async fn migrate_follows_a_live_etcd_under_writes() {
    let root = tempfile::tempdir().expect("temp dir");
    let etcd = Etcd::start(root.path());
    let mut source = Client::connect([etcd.endpoint()], None)
        .await
        .expect("connect to etcd");
    write_history(&mut source).await;
    let member = Member::start(&root.path().join("synod"), &[]);
    let log = std::fs::File::create(root.path().join("migrate.log")).expect("log");
    let migration = Migration(
        std::process::Command::new(synod_binary())
            .args([
                "--endpoints",
                &member.endpoint(),
                "migrate",
                "--from",
                &etcd.endpoint(),
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start synod migrate"),
    );
    // Writes while the migration copies and follows, bounded in count.
    let mut revoked = 0;
    for round in 0..60 {
        let key = format!("live/k{}", round % 17);
        source
            .put(key.as_str(), format!("r{round}"), None)
            .await
            .expect("put");
        if round % 5 == 0 {
            source
                .delete(format!("live/k{}", (round + 3) % 17), None)
                .await
                .expect("delete");
        }
        if round % 7 == 0 {
            let lease = source.lease_grant(300, None).await.expect("grant").id();
            source
                .txn(Txn::new().and_then([
                    TxnOp::put(
                        format!("txn/{round}/a"),
                        "1",
                        Some(PutOptions::new().with_lease(lease)),
                    ),
                    TxnOp::put(format!("txn/{round}/b"), "2", None),
                ]))
                .await
                .expect("txn");
            if round % 14 == 0 {
                source.lease_revoke(lease).await.expect("revoke");
                revoked += 1;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(revoked > 0);
    let expected = dump(&mut source).await;
    let mut target = member.etcd_client().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = dump(&mut target).await;
        if now.0 == expected.0 {
            assert_eq!(
                now, expected,
                "Synod differs from etcd at revision {}",
                expected.0
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration did not catch up: Synod at {}, etcd at {}; log:\n{}",
            now.0,
            expected.0,
            std::fs::read_to_string(root.path().join("migrate.log")).unwrap_or_default()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The leases etcd still has are here, holding the same keys.
    let mut live = source
        .leases()
        .await
        .expect("etcd leases")
        .leases()
        .iter()
        .map(|l| l.id())
        .collect::<Vec<_>>();
    live.sort();
    assert!(!live.is_empty());
    for lease in live {
        assert_eq!(
            lease_keys(&mut target, lease).await,
            lease_keys(&mut source, lease).await
        );
    }
    drop(migration);

    // The target takes no base copy now that it has keys, and no revision it has passed.
    let synod =
        synod_client::Client::connect(&member.endpoint(), std::time::Duration::from_secs(2))
            .await
            .expect("connect");
    let refused = synod
        .migrate()
        .import_base(synod_api::synodpb::ImportBase {
            revision: 1_000,
            ..Default::default()
        })
        .await
        .expect_err("a base copy into a store with keys");
    assert_eq!(refused.message(), "etcdserver: import target is not empty");
    let refused = synod
        .migrate()
        .import_revision(synod_api::synodpb::ImportRevision {
            revision: expected.0,
            changes: None,
        })
        .await
        .expect_err("a revision the store has");
    assert_eq!(
        refused.message(),
        "etcdserver: import revision is not after the store's revision"
    );
}

/// Goal: `snapshot restore` refuses what etcdutl refuses, with etcdutl's messages: a snapshot
/// whose digest does not match, one without a digest unless `--skip-hash-check`, a data
/// directory that exists, a file that is not a database; and leaves no directory behind.
#[tokio::test]
async fn restore_refuses_bad_snapshots_and_existing_directories() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("source"), &[]);
    let mut client = member.etcd_client().await;
    client.put("k", "v", None).await.expect("put");
    let snapshot = root.path().join("good.db");
    save_snapshot(synod_binary(), &member.endpoint(), &snapshot);
    let good = std::fs::read(&snapshot).expect("read");
    let attempt = |file: &Path, dir: &Path, extra: &[&str]| {
        let mut args = vec![
            "snapshot",
            "restore",
            file.to_str().expect("path"),
            "--name",
            "r",
            "--data-dir",
            dir.to_str().expect("path"),
            "--initial-cluster",
            "r=http://127.0.0.1:2380",
            "--initial-advertise-peer-urls",
            "http://127.0.0.1:2380",
        ];
        args.extend_from_slice(extra);
        run_tool(synod_binary(), &[], &args, None)
    };

    let mut flipped = good.clone();
    flipped[5000] ^= 0xff;
    let bad = root.path().join("flipped.db");
    std::fs::write(&bad, &flipped).expect("write");
    let dir = root.path().join("r1");
    let (ok, _, err) = attempt(&bad, &dir, &[]);
    assert!(!ok && err.contains("expected sha256"), "{err}");
    assert!(!dir.exists(), "a refused restore leaves no data directory");

    let bare = root.path().join("bare.db");
    std::fs::write(&bare, &good[..good.len() - 32]).expect("write");
    let (ok, _, err) = attempt(&bare, &dir, &[]);
    assert!(
        !ok && err.contains("snapshot missing hash but --skip-hash-check=false"),
        "{err}"
    );
    let (ok, out, err) = attempt(&bare, &dir, &["--skip-hash-check"]);
    assert!(ok, "{out}{err}");
    let (ok, _, err) = attempt(&snapshot, &dir, &[]);
    assert!(!ok && err.contains("exists"), "{err}");

    let garbage = root.path().join("garbage.db");
    std::fs::write(&garbage, vec![7u8; 10_000]).expect("write");
    let (ok, _, err) = attempt(&garbage, &root.path().join("r2"), &[]);
    assert!(
        !ok && err.contains("not a snapshot in etcd's database format"),
        "{err}"
    );
}
