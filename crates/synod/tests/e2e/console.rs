//! The web console at `/ui`: driven in Debian's headless Chromium (through Playwright) against a
//! real 3-member cluster that etcdctl changes underneath, and its one API of its own,
//! `GET /synod/v1/cluster`, checked for what it answers and whom it refuses.

use std::path::PathBuf;
use std::process::Command;

use crate::harness::{Cluster, Member, run_tool};

/// The console's own directory: the Playwright driver and its npm lock file.
fn driver_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// Goal: an operator sees the cluster, finds keys, tails changes and watches leases and locks
/// in a real browser, and the page follows what other clients do: the leader moved by
/// `etcdctl move-leader`, a key etcdctl wrote, a put while the watch page is open, the keys of
/// a lease vanishing when it is revoked. Screenshots go to `SYNOD_CONSOLE_SCREENSHOTS` when set
/// (`docs/console` refreshes the README's), else to the test's temporary directory.
#[test]
fn console_in_chromium() {
    let driver = driver_dir();
    assert!(
        driver.join("node_modules/playwright-core").is_dir(),
        "playwright-core is not installed: run `npm ci` in {} (scripts/test does)",
        driver.display()
    );
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let endpoints = cluster
        .members
        .iter()
        .map(Member::endpoint)
        .collect::<Vec<_>>()
        .join(",");
    let screenshots = std::env::var_os("SYNOD_CONSOLE_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.path().join("screenshots"));
    std::fs::create_dir_all(&screenshots).expect("screenshot directory");
    let output = Command::new("node")
        .arg(driver.join("console.mjs"))
        .current_dir(&driver)
        .env("SYNOD_URL", cluster.members[0].url())
        .env("ETCDCTL_ENDPOINTS", &endpoints)
        .env("SCREENSHOTS", &screenshots)
        .output()
        .expect("node runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{report}");
    assert!(
        output.status.success(),
        "the console test failed:\n{report}"
    );
    for page in ["cluster", "keys", "watch", "leases", "locks", "phone"] {
        let shot = screenshots.join(format!("{page}.png"));
        let bytes = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            bytes > 10_000,
            "no screenshot of {page}: {}",
            shot.display()
        );
    }
}

/// GET on the client port with an optional token; (status, headers, body) from curl.
fn get(member: &Member, path: &str, token: Option<&str>) -> (u16, String, String) {
    let mut args = vec![
        "-s".to_owned(),
        "-D".to_owned(),
        "-".to_owned(),
        "--max-time".to_owned(),
        "5".to_owned(),
    ];
    if let Some(token) = token {
        args.extend(["-H".to_owned(), format!("Authorization: {token}")]);
    }
    args.push(format!("{}{path}", member.url()));
    let output = Command::new("curl").args(&args).output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_owned())
}

/// Goal: the console's files come from the binary, small and locked down (a page may load only
/// its own script and call only its own member), and `/synod/v1/cluster` answers as
/// Maintenance.Status does: to any authenticated user, refused without a token once auth is on.
#[test]
fn console_files_and_cluster_api_follow_auth() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);

    let (status, head, page) = get(&member, "/ui/", None);
    assert_eq!(status, 200, "{head}");
    assert!(page.contains("<script type=\"module\" src=\"/ui/app.js\">"));
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'self'"));
    assert!(head.contains("x-content-type-options: nosniff"));
    let (status, head, _) = get(&member, "/ui", None);
    assert_eq!((status, head.contains("location: /ui/")), (308, true));
    let mut bundle = page.len();
    for (asset, content_type) in [("app.js", "text/javascript"), ("style.css", "text/css")] {
        let (status, head, body) = get(&member, &format!("/ui/{asset}"), None);
        assert_eq!(status, 200);
        assert!(
            head.contains(&format!("content-type: {content_type}")),
            "{head}"
        );
        bundle += body.len();
    }
    // The budget the console is kept to, uncompressed, all files together.
    assert!(bundle < 64 * 1024, "the console grew to {bundle} bytes");

    let (status, _, body) = get(&member, "/synod/v1/cluster", None);
    assert_eq!(status, 200, "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let members = answer["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["id"], answer["member_id"]);
    assert_eq!(members[0]["status"]["leader"], answer["member_id"]);
    assert!(members[0]["status"]["raftIndex"].as_str().is_some());

    let flags = member.client_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    for args in [
        &["user", "add", "root:rootpw"][..],
        &["user", "grant-role", "root", "root"],
        &["user", "add", "viewer:viewerpw"],
        &["auth", "enable"],
    ] {
        let (ok, out, err) = run_tool("etcdctl", &flags, args, None);
        assert!(ok, "etcdctl {args:?}: {out}{err}");
    }
    let (status, _, body) = get(&member, "/synod/v1/cluster", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("etcdserver: user name is empty"), "{body}");
    let (status, _, body) = get(&member, "/synod/v1/cluster", Some("not-a-token"));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("etcdserver: invalid auth token"), "{body}");

    // A user with no role at all may see the cluster, as with Maintenance.Status.
    let (status, token) = member
        .http(
            "POST",
            "/v3/auth/authenticate",
            Some(r#"{"name":"viewer","password":"viewerpw"}"#),
        )
        .expect("authenticate");
    assert_eq!(status, 200, "{token}");
    let token: serde_json::Value = serde_json::from_str(&token).expect("JSON");
    let token = token["token"].as_str().expect("token");
    let (status, _, body) = get(&member, "/synod/v1/cluster", Some(token));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"raftTerm\""), "{body}");
}
