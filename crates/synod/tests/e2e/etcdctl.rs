//! etcdctl 3.4 (Debian's `etcd-client` package, installed by the test command) against Synod:
//! the KV, watch, lease, lock, election and maintenance commands an operator types.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::harness::{Cluster, Member, run_tool, signal};

fn etcdctl() -> &'static str {
    let found = Command::new("etcdctl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "etcdctl is required (Debian package etcd-client); scripts/test installs it"
    );
    "etcdctl"
}

fn ctl(member: &Member, args: &[&str]) -> String {
    ctl_with_input(member, args, None)
}

fn ctl_with_input(member: &Member, args: &[&str], input: Option<&str>) -> String {
    let endpoints = format!("--endpoints={}", member.endpoint());
    let (ok, stdout, stderr) = run_tool(etcdctl(), &[&endpoints], args, input);
    assert!(ok, "etcdctl {args:?} failed:\n{stdout}\n{stderr}");
    stdout
}

fn ctl_fails(member: &Member, args: &[&str]) -> String {
    let endpoints = format!("--endpoints={}", member.endpoint());
    let (ok, stdout, stderr) = run_tool(etcdctl(), &[&endpoints], args, None);
    assert!(!ok, "etcdctl {args:?} should fail:\n{stdout}");
    stderr
}

/// Goal: etcdctl's KV commands, txn and watch work unchanged against Synod.
#[test]
fn etcdctl_kv_txn_and_watch() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    assert_eq!(ctl(&member, &["put", "foo", "bar"]), "OK\n");
    ctl(&member, &["put", "foo/a", "1"]);
    ctl(&member, &["put", "foo/b", "2"]);
    assert_eq!(ctl(&member, &["get", "foo"]), "foo\nbar\n");
    assert_eq!(
        ctl(&member, &["get", "foo/", "--prefix", "--keys-only"]),
        "foo/a\n\nfoo/b\n\n"
    );
    assert_eq!(
        ctl(
            &member,
            &[
                "get",
                "foo",
                "--prefix",
                "--limit=1",
                "--sort-by=KEY",
                "--order=DESCEND",
                "--print-value-only"
            ]
        ),
        "2\n"
    );
    assert_eq!(ctl(&member, &["get", "foo", "--rev=2"]), "foo\nbar\n");
    let json: serde_json::Value =
        serde_json::from_str(&ctl(&member, &["get", "foo", "-w", "json"])).expect("json");
    assert_eq!(json["kvs"][0]["version"], 1);
    assert_eq!(json["header"]["revision"], 4);
    assert_eq!(ctl(&member, &["del", "foo/", "--prefix"]), "2\n");
    let txn = ctl_with_input(
        &member,
        &["txn"],
        Some("value(\"foo\") = \"bar\"\n\nput foo baz\nget foo\n\nput foo nope\n\n"),
    );
    assert_eq!(txn, "SUCCESS\n\nOK\n\nfoo\nbaz\n");
    let stderr = ctl_fails(&member, &["get", "foo", "--rev=99"]);
    assert!(
        stderr.contains("etcdserver: mvcc: required revision is a future revision"),
        "{stderr}"
    );

    // Replay history with prev_kv: etcdctl prints each event until it is stopped.
    let watch = Command::new(etcdctl())
        .args([
            format!("--endpoints={}", member.endpoint()).as_str(),
            "watch",
            "foo",
            "--rev=2",
            "--prev-kv",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start etcdctl watch");
    let pid = watch.id();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        signal(pid, "TERM");
    });
    let output = watch.wait_with_output().expect("watch output");
    let text = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        text, "PUT\nfoo\nbar\nPUT\nfoo\nbar\nfoo\nbaz\n",
        "events replayed from revision 2 with prev_kv"
    );
    assert_eq!(ctl(&member, &["compact", "5"]), "compacted revision 5\n");
    let stderr = ctl_fails(&member, &["get", "foo", "--rev=3"]);
    assert!(
        stderr.contains("required revision has been compacted"),
        "{stderr}"
    );
}

/// Goal: etcdctl's lease commands and its lock and election recipes (client-side algorithms over
/// KV, Watch and Lease) work against Synod.
#[test]
fn etcdctl_leases_locks_and_elections() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let granted = ctl(&member, &["lease", "grant", "60"]);
    let id = granted
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_owned();
    assert_eq!(granted, format!("lease {id} granted with TTL(60s)\n"));
    ctl(&member, &["put", "leased", "v", &format!("--lease={id}")]);
    let ttl = ctl(&member, &["lease", "timetolive", &id, "--keys"]);
    assert!(
        ttl.contains("granted with TTL(60s)") && ttl.contains("attached keys([leased])"),
        "{ttl}"
    );
    assert!(
        ctl(&member, &["lease", "keep-alive", "--once", &id]).contains("keepalived with TTL(60)")
    );
    assert!(ctl(&member, &["lease", "list"]).contains(&id));
    assert_eq!(
        ctl(&member, &["lease", "revoke", &id]),
        format!("lease {id} revoked\n")
    );
    assert_eq!(ctl(&member, &["get", "leased"]), "");

    assert_eq!(
        ctl(&member, &["lock", "the-lock", "echo", "held"]),
        "held\n"
    );
    // A second locker waits while the first holds the lock, then gets it.
    let mut holder = Command::new(etcdctl())
        .args([
            format!("--endpoints={}", member.endpoint()).as_str(),
            "lock",
            "the-lock",
            "sleep",
            "2",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::null())
        .spawn()
        .expect("start holder");
    std::thread::sleep(Duration::from_millis(700));
    let started = std::time::Instant::now();
    assert_eq!(
        ctl(&member, &["lock", "the-lock", "echo", "second"]),
        "second\n"
    );
    assert!(
        started.elapsed() > Duration::from_millis(500),
        "the second locker waited for the first"
    );
    assert!(holder.wait().expect("holder exits").success());

    let mut candidate = Command::new(etcdctl())
        .args([
            format!("--endpoints={}", member.endpoint()).as_str(),
            "elect",
            "the-election",
            "alice",
        ])
        .env("ETCDCTL_API", "3")
        .stdout(Stdio::piped())
        .spawn()
        .expect("campaign");
    let leader = (0..100)
        .find_map(|_| {
            let endpoints = format!("--endpoints={}", member.endpoint());
            let (_, out, _) = run_tool(
                etcdctl(),
                &[&endpoints],
                &["get", "the-election", "--prefix", "--print-value-only"],
                None,
            );
            if out.trim() == "alice" {
                Some(out)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("alice is elected");
    assert_eq!(leader.trim(), "alice");
    signal(candidate.id(), "INT");
    let _ = candidate.wait();
}

/// Goal: etcdctl's maintenance commands an operator uses work against Synod.
#[test]
fn etcdctl_maintenance() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--name", "alpha"]);
    ctl(&member, &["put", "k", "v"]);
    let status = ctl(&member, &["endpoint", "status"]);
    assert!(
        status.starts_with(&member.endpoint())
            && status.contains("3.6.0")
            && status.contains("true"),
        "{status}"
    );
    // etcdctl 3.4 prints health results on stderr.
    let endpoints = format!("--endpoints={}", member.endpoint());
    let (ok, _, health) = run_tool(etcdctl(), &[&endpoints], &["endpoint", "health"], None);
    assert!(ok && health.contains("is healthy"), "{health}");
    let members = ctl(&member, &["member", "list"]);
    assert!(
        members.contains("started, alpha,") && members.contains(&member.url()),
        "{members}"
    );
    let snapshot = root.path().join("backup.db");
    ctl(
        &member,
        &["snapshot", "save", snapshot.to_str().expect("utf8 path")],
    );
    assert!(std::fs::metadata(&snapshot).expect("snapshot file").len() > 32);
    assert_eq!(ctl(&member, &["alarm", "list"]), "");
    assert!(ctl(&member, &["defrag"]).contains("Finished defragmenting"));
}

/// Goal: the health checks people put in runbooks work: etcdctl 3.4's `endpoint status
/// --cluster` and `endpoint health --cluster`, and any endpoint written with its scheme. That
/// etcdctl sends the whole URL as the HTTP/2 `:authority` (bug row 41).
#[test]
fn etcdctl_cluster_wide_endpoint_commands() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let urls = cluster.urls();
    let endpoints = format!("--endpoints={}", urls[0]);
    let run = |args: &[&str]| {
        let (ok, stdout, stderr) = run_tool(etcdctl(), &[&endpoints], args, None);
        assert!(ok, "etcdctl {args:?} failed:\n{stdout}\n{stderr}");
        (stdout, stderr)
    };
    let (status, _) = run(&["endpoint", "status", "--cluster"]);
    for url in &urls {
        assert!(
            status.contains(&format!("{url}, ")),
            "{url} missing:\n{status}"
        );
    }
    assert_eq!(
        status.matches(", true, false, ").count(),
        1,
        "one leader:\n{status}"
    );
    // etcdctl 3.4 prints health results on stderr.
    let (_, health) = run(&["endpoint", "health", "--cluster"]);
    for url in &urls {
        assert!(
            health.contains(&format!("{url} is healthy")),
            "{url}:\n{health}"
        );
    }
    run(&["put", "with-scheme", "yes"]);
    assert_eq!(
        run(&["get", "with-scheme", "--print-value-only"]).0,
        "yes\n"
    );
}
