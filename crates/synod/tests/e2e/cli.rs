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
