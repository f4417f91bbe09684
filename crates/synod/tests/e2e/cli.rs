//! Synod's own CLI against a member: etcdctl's commands and output, clear errors, non-zero exits.

use crate::harness::{Member, synod_cli};

/// Goal: the everyday commands work and print what etcdctl prints.
#[test]
fn cli_commands_print_like_etcdctl() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--name", "cli"]);
    let ok = |args: &[&str]| {
        let (success, stdout, stderr) = synod_cli(&member.endpoint(), args, None);
        assert!(success, "synod {args:?} failed: {stderr}");
        stdout
    };
    assert_eq!(ok(&["put", "greeting", "hello"]), "OK\n");
    assert_eq!(ok(&["put", "greeting/x", "1"]), "OK\n");
    assert_eq!(ok(&["get", "greeting"]), "greeting\nhello\n");
    assert_eq!(
        ok(&["get", "greeting", "--prefix", "--keys-only"]),
        "greeting\ngreeting/x\n"
    );
    assert_eq!(ok(&["get", "greeting", "--prefix", "--count-only"]), "2\n");
    let json: serde_json::Value =
        serde_json::from_str(&ok(&["get", "greeting", "-w", "json"])).expect("json");
    assert_eq!(
        json["kvs"][0]["key"], "Z3JlZXRpbmc=",
        "bytes are base64 in JSON"
    );
    let (success, stdout, _) = synod_cli(
        &member.endpoint(),
        &["txn"],
        Some("value(\"greeting\") = \"hello\"\n\nput greeting bye\n\n"),
    );
    assert!(success);
    assert_eq!(stdout, "SUCCESS\n\nOK\n");
    assert_eq!(ok(&["del", "greeting", "--prefix"]), "2\n");
    let granted = ok(&["lease", "grant", "30"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    assert_eq!(
        ok(&["lease", "timetolive", &id])
            .split(", remaining")
            .next(),
        Some(format!("lease {id} granted with TTL(30s)").as_str())
    );
    assert!(ok(&["lease", "keep-alive", "--once", &id]).contains("keepalived with TTL(30)"));
    assert_eq!(ok(&["lease", "list"]), format!("found 1 leases\n{id}\n"));
    assert_eq!(
        ok(&["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert!(ok(&["endpoint", "status"]).contains("3.6.0"));
    assert!(ok(&["endpoint", "health"]).contains("is healthy"));
    assert!(ok(&["member", "list"]).contains(", started, cli, "));
    assert_eq!(ok(&["alarm", "list"]), "");
    let file = root.path().join("snap.db");
    assert!(
        ok(&["snapshot", "save", file.to_str().expect("utf8")]).starts_with("Snapshot saved at")
    );
    assert!(std::fs::metadata(&file).expect("snapshot").len() > 0);
    assert_eq!(ok(&["compact", "3"]), "compacted revision 3\n");
}

/// Goal: errors are one clear line on stderr with etcd's message and a non-zero exit, never a
/// panic or Rust debug output.
#[test]
fn cli_errors_are_clear() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let fails = |args: &[&str], expected: &str| {
        let (success, _, stderr) = synod_cli(&member.endpoint(), args, None);
        assert!(!success, "synod {args:?} should fail");
        assert!(
            stderr.starts_with("Error: ") && stderr.contains(expected),
            "synod {args:?}: {stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Status {"),
            "{stderr}"
        );
    };
    fails(&["put", "", "v"], "etcdserver: key is not provided");
    fails(
        &["get", "k", "--rev", "100"],
        "etcdserver: mvcc: required revision is a future revision",
    );
    fails(
        &["lease", "revoke", "abc"],
        "etcdserver: requested lease not found",
    );
    // Malformed arguments are reported by the argument parser, with usage help and exit code 2.
    let (success, _, stderr) = synod_cli(&member.endpoint(), &["lease", "revoke", "not-hex"], None);
    assert!(
        !success && stderr.contains("not a hex lease id"),
        "{stderr}"
    );
    let (success, _, stderr) = synod_cli("127.0.0.1:1", &["get", "k"], None);
    assert!(
        !success && stderr.starts_with("Error: 127.0.0.1:1"),
        "{stderr}"
    );
    let (success, _, stderr) = synod_cli(&member.endpoint(), &["txn"], Some("bogus(\"k\") = 1\n"));
    assert!(
        !success && stderr.contains("unknown comparison target"),
        "{stderr}"
    );
}

/// Goal: `synod watch` prints events as etcdctl does, history replay included.
#[test]
fn cli_watch_prints_events() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    for (key, value) in [("w/a", "1"), ("w/b", "2")] {
        assert!(synod_cli(&member.endpoint(), &["put", key, value], None).0);
    }
    assert!(synod_cli(&member.endpoint(), &["del", "w/a"], None).0);
    let (ok, stdout, stderr) = synod_cli(
        &member.endpoint(),
        &[
            "watch",
            "w/",
            "--prefix",
            "--rev",
            "1",
            "--prev-kv",
            "--max-events",
            "3",
        ],
        None,
    );
    assert!(ok, "{stderr}");
    assert_eq!(stdout, "PUT\nw/a\n1\nPUT\nw/b\n2\nDELETE\nw/a\n1\nw/a\n\n");
}

/// Goal: every server flag can come from a `SYNOD_*` environment variable.
#[test]
fn server_settings_come_from_the_environment() {
    let root = tempfile::tempdir().expect("temp dir");
    let port = crate::harness::free_port();
    let peer = crate::harness::free_port();
    let mut child = std::process::Command::new(crate::harness::synod_binary())
        .arg("server")
        .env("SYNOD_NAME", "from-env")
        .env("SYNOD_DATA_DIR", root.path().join("data"))
        .env(
            "SYNOD_LISTEN_CLIENT_URLS",
            format!("http://127.0.0.1:{port}"),
        )
        .env("SYNOD_LISTEN_PEER_URLS", format!("http://127.0.0.1:{peer}"))
        .env(
            "SYNOD_INITIAL_ADVERTISE_PEER_URLS",
            format!("http://127.0.0.1:{peer}"),
        )
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    let endpoint = format!("127.0.0.1:{port}");
    let mut listed = String::new();
    for _ in 0..200 {
        let (ok, stdout, _) = synod_cli(&endpoint, &["member", "list"], None);
        if ok {
            listed = stdout;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listed.contains(", started, from-env, "), "{listed}");
    assert!(
        root.path().join("data/member/db").exists(),
        "the data directory came from SYNOD_DATA_DIR"
    );
}

/// Goal: `synod lock NAME -- COMMAND` runs the command holding the lock with its fencing token in
/// the environment (growing with each acquisition), passes its exit code through, and terminates
/// it when the lock's lease is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_lock_runs_commands_with_fencing_tokens_and_stops_them_when_the_lock_is_lost() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let endpoint = member.endpoint();
    let run = |args: Vec<String>| {
        let endpoint = endpoint.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            synod_cli(&endpoint, &args, None)
        })
    };
    let token_command = || {
        vec![
            "lock".into(),
            "job".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            "echo $SYNOD_FENCING_TOKEN $SYNOD_LOCK_KEY".into(),
        ]
    };
    let (ok, first, stderr) = run(token_command()).await.expect("join");
    assert!(ok, "{stderr}");
    assert!(stderr.contains("fencing token"), "{stderr}");
    let (ok, second, _) = run(token_command()).await.expect("join");
    assert!(ok);
    let token = |line: &str| {
        line.split_whitespace()
            .next()
            .and_then(|t| t.parse::<i64>().ok())
            .expect("a token")
    };
    assert!(
        token(&second) > token(&first),
        "tokens grow: {first:?} then {second:?}"
    );
    assert!(
        first
            .split_whitespace()
            .nth(1)
            .is_some_and(|key| key.starts_with("job/"))
    );
    let (ok, _, _) = run(vec![
        "lock".into(),
        "job".into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        "exit 3".into(),
    ])
    .await
    .expect("join");
    assert!(!ok, "the command's failure is the lock command's failure");

    // Lose the lease under a running command: it is terminated and synod lock fails.
    let holder = std::process::Command::new(crate::harness::synod_binary())
        .args([
            "--endpoints",
            &member.endpoint(),
            "lock",
            "--ttl",
            "3",
            "--kill-after",
            "1",
            "held",
            "--",
            "sleep",
            "60",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start holder");
    let mut client = member.etcd_client().await;
    let mut lease = 0;
    for _ in 0..200 {
        let found = client
            .get("held/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .expect("get");
        if let Some(kv) = found.kvs().first() {
            lease = kv.lease();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_ne!(lease, 0, "the holder took the lock");
    let started = std::time::Instant::now();
    client
        .lease_revoke(lease)
        .await
        .expect("revoke the holder's lease");
    let output = tokio::task::spawn_blocking(move || holder.wait_with_output())
        .await
        .expect("join")
        .expect("holder output");
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("lock lost"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "terminated long before the command would have ended"
    );
}

/// Goal: `synod elect NAME VALUE` holds leadership until interrupted, then resigns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_elect_holds_leadership_until_interrupted() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut candidate = std::process::Command::new(crate::harness::synod_binary())
        .args(["--endpoints", &member.endpoint(), "elect", "vote", "alice"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("campaign");
    let mut client = member.etcd_client().await;
    let elected = crate::harness::eventually(std::time::Duration::from_secs(10), async || {
        client
            .leader("vote")
            .await
            .is_ok_and(|r| r.kv().is_some_and(|kv| kv.value() == b"alice"))
    })
    .await;
    assert!(elected, "alice leads");
    crate::harness::signal(candidate.id(), "INT");
    let status = tokio::task::spawn_blocking(move || candidate.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(
        status.success(),
        "an interrupted candidate resigns and exits cleanly"
    );
    assert!(
        client.leader("vote").await.is_err(),
        "no leader after the resignation"
    );
}
