//! Authentication and RBAC with real clients: etcdctl 3.4's user, role and auth commands; the
//! `etcd-client` crate with a user and password; a client certificate's CN as the user; tokens
//! on the JSON gateway; and the ways around a permission that must not work (a deleted user's
//! token, a permission taken away, a forbidden read hidden in a nested txn, a watch wider than
//! the grant, a lease revoke deleting keys the user may not write).

use std::time::Duration;

use etcd_client::{
    Compare, CompareOp, ConnectOptions, EventType, Permission, Txn, TxnOp, WatchOptions,
};

use crate::harness::{Member, TestPki, run_tool};

const PERMISSION_DENIED: &str = "etcdserver: permission denied";
const USER_EMPTY: &str = "etcdserver: user name is empty";

fn etcdctl(member: &Member, user: Option<&str>, args: &[&str]) -> (bool, String, String) {
    let mut flags = member.client_flags();
    if let Some(user) = user {
        flags.push(format!("--user={user}"));
    }
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    run_tool("etcdctl", &flags, args, None)
}

/// Runs etcdctl and requires success.
fn ok(member: &Member, user: Option<&str>, args: &[&str]) -> String {
    let (ok, out, err) = etcdctl(member, user, args);
    assert!(ok, "etcdctl {args:?} failed:\n{out}\n{err}");
    out
}

/// Runs etcdctl and requires a failure whose message ends its output (etcdctl prints `Error:
/// <message>`).
fn refused(member: &Member, user: Option<&str>, args: &[&str], message: &str) {
    let (ok, out, err) = etcdctl(member, user, args);
    assert!(!ok, "etcdctl {args:?} should fail:\n{out}");
    assert!(
        err.contains(&format!("Error: {message}")),
        "etcdctl {args:?}: expected {message:?}:\n{err}"
    );
}

/// Adds root (`root`: etcdctl's arguments for it) and alice (`name:password`) with READWRITE on
/// `a/` through the role `apps`, then turns auth on.
fn alice_on_apps_then_auth(member: &Member, root: &[&str], alice: &str) {
    let mut add_root = vec!["user", "add"];
    add_root.extend_from_slice(root);
    for args in [
        &add_root[..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "apps"],
        &[
            "role",
            "grant-permission",
            "apps",
            "readwrite",
            "a/",
            "--prefix=true",
        ],
        &["user", "add", alice],
        &["user", "grant-role", "alice", "apps"],
        &["auth", "enable"],
    ] {
        ok(member, None, args);
    }
}

/// root (password `rootpw`) with the root role, and auth switched on.
fn enable_with_root(member: &Member) {
    ok(member, None, &["user", "add", "root:rootpw"]);
    ok(member, None, &["user", "grant-role", "root", "root"]);
    assert_eq!(
        ok(member, None, &["auth", "enable"]),
        "Authentication Enabled\n"
    );
}

/// Goal: what an operator types with etcdctl 3.4 works, and refusals carry etcd's messages.
#[test]
fn etcdctl_manages_users_roles_and_permissions() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    refused(
        &member,
        None,
        &["auth", "enable"],
        "etcdserver: root user does not exist",
    );
    ok(&member, None, &["role", "add", "reader"]);
    ok(
        &member,
        None,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "foo/",
            "--prefix=true",
        ],
    );
    ok(&member, None, &["user", "add", "alice:alicepw"]);
    ok(&member, None, &["user", "grant-role", "alice", "reader"]);
    ok(&member, None, &["put", "foo/a", "1"]);
    enable_with_root(&member);

    refused(&member, None, &["put", "foo/a", "2"], USER_EMPTY);
    refused(&member, None, &["get", "foo/a"], USER_EMPTY);
    let root_user = Some("root:rootpw");
    let alice = Some("alice:alicepw");
    assert_eq!(ok(&member, alice, &["get", "foo/a"]), "foo/a\n1\n");
    refused(&member, alice, &["put", "foo/a", "2"], PERMISSION_DENIED);
    refused(&member, alice, &["get", "bar"], PERMISSION_DENIED);
    refused(
        &member,
        alice,
        &["get", "foo/", "--from-key"],
        PERMISSION_DENIED,
    );
    refused(&member, alice, &["user", "list"], PERMISSION_DENIED);
    refused(
        &member,
        alice,
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        PERMISSION_DENIED,
    );
    refused(
        &member,
        Some("alice:wrong"),
        &["get", "foo/a"],
        "etcdserver: authentication failed, invalid user ID or password",
    );
    assert_eq!(ok(&member, root_user, &["user", "list"]), "alice\nroot\n");
    assert!(ok(&member, root_user, &["role", "get", "reader"]).contains("[foo/, foo0)"));
    assert!(ok(&member, alice, &["user", "get", "alice"]).contains("reader"));
    refused(
        &member,
        root_user,
        &["user", "delete", "root"],
        "etcdserver: invalid auth management",
    );
    refused(
        &member,
        root_user,
        &["user", "get", "nobody"],
        "etcdserver: user name not found",
    );
    refused(
        &member,
        root_user,
        &["role", "revoke-permission", "reader", "nothere"],
        "etcdserver: permission is not granted to the role",
    );
    refused(
        &member,
        root_user,
        &["user", "add", "alice:again"],
        "etcdserver: user name already exists",
    );
    // A new password replaces the old one.
    ok(
        &member,
        root_user,
        &["user", "passwd", "alice", "--interactive=false"],
    );
    ok(&member, root_user, &["auth", "disable"]);
    assert_eq!(
        ok(&member, None, &["get", "foo/a", "--print-value-only"]),
        "1\n"
    );
    // The password never reaches the state machine in clear.
    let db = std::fs::read(member.data_dir.join("member/db")).expect("state-machine file");
    assert!(
        !db.windows(b"alicepw".len()).any(|w| w == b"alicepw"),
        "a password is stored in clear"
    );
}

async fn connect(member: &Member, user: Option<(&str, &str)>) -> etcd_client::Client {
    let mut options = member.etcd_client_options().unwrap_or_default();
    if let Some((name, password)) = user {
        options = options.with_user(name, password);
    }
    etcd_client::Client::connect([member.url()], Some(options))
        .await
        .expect("etcd-client connects")
}

fn message(error: etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => status.message().to_owned(),
        other => other.to_string(),
    }
}

/// Goal: the ways around a permission that must not work, through the `etcd-client` crate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ways_around_a_permission_are_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut admin = connect(&member, None).await;
    admin.user_add("root", "rootpw", None).await.expect("root");
    admin.user_grant_role("root", "root").await.expect("grant");
    admin.role_add("apps").await.expect("role");
    admin
        .role_grant_permission("apps", Permission::read_write("a/").with_prefix())
        .await
        .expect("grant a/");
    admin
        .role_grant_permission("apps", Permission::read("c/").with_prefix())
        .await
        .expect("grant c/");
    for user in ["alice", "bob"] {
        admin.user_add(user, "pw", None).await.expect("user");
        admin.user_grant_role(user, "apps").await.expect("grant");
    }
    admin.auth_enable().await.expect("enable");
    let mut root_client = connect(&member, Some(("root", "rootpw"))).await;
    root_client.put("secret/x", "s", None).await.expect("put");
    root_client.put("c/1", "c", None).await.expect("put");
    let mut alice = connect(&member, Some(("alice", "pw"))).await;
    alice.put("a/1", "1", None).await.expect("alice writes a/");

    // A forbidden read hidden in a nested txn.
    let hidden = Txn::new()
        .when([Compare::version("a/1", CompareOp::Greater, 0)])
        .and_then([TxnOp::txn(
            Txn::new().and_then([TxnOp::get("secret/x", None)]),
        )]);
    let error = alice.txn(hidden).await.expect_err("nested read");
    assert_eq!(message(error), PERMISSION_DENIED);
    // A compare on a key she may not read.
    let compare = Txn::new()
        .when([Compare::value("secret/x", CompareOp::Equal, "s")])
        .and_then([TxnOp::put("a/2", "x", None)]);
    assert_eq!(
        message(alice.txn(compare).await.expect_err("compare")),
        PERMISSION_DENIED
    );

    // A watch wider than the grant: from "a/" to the end of the key space.
    let mut stream = alice
        .watch("a/", Some(WatchOptions::new().with_from_key()))
        .await
        .expect("watch stream");
    let response = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("an answer")
        .expect("stream")
        .expect("a response");
    assert!(response.canceled(), "{response:?}");
    assert_eq!(response.cancel_reason(), PERMISSION_DENIED);
    // Within the grant it works.
    let mut stream = alice
        .watch("a/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch stream");
    let created = stream.message().await.expect("stream").expect("created");
    assert!(created.created() && !created.canceled());
    alice.put("a/3", "3", None).await.expect("put");
    let event = stream.message().await.expect("stream").expect("event");
    assert_eq!(event.events()[0].event_type(), EventType::Put);

    // A lease holding a key she may not write: she can neither revoke it nor attach to it.
    let lease = root_client.lease_grant(60, None).await.expect("lease").id();
    root_client
        .put(
            "secret/leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await
        .expect("put");
    assert_eq!(
        message(alice.lease_revoke(lease).await.expect_err("revoke")),
        PERMISSION_DENIED
    );
    let attach = alice
        .put(
            "a/leased",
            "v",
            Some(etcd_client::PutOptions::new().with_lease(lease)),
        )
        .await;
    assert_eq!(message(attach.expect_err("attach")), PERMISSION_DENIED);
    assert_eq!(
        root_client
            .get("secret/leased", None)
            .await
            .expect("get")
            .kvs()
            .len(),
        1,
        "the leased key survived"
    );

    // A permission taken away applies to the next request, token or not.
    let mut bob = connect(&member, Some(("bob", "pw"))).await;
    assert_eq!(
        bob.get("c/1", None)
            .await
            .expect("bob reads c/")
            .kvs()
            .len(),
        1
    );
    root_client
        .role_revoke_permission(
            "apps",
            "c/",
            Some(etcd_client::RoleRevokePermissionOptions::new().with_prefix()),
        )
        .await
        .expect("revoke");
    assert_eq!(
        message(bob.get("c/1", None).await.expect_err("after revoke")),
        PERMISSION_DENIED
    );

    // A deleted user's token is worthless.
    root_client
        .user_delete("alice")
        .await
        .expect("delete alice");
    let error = message(alice.get("a/1", None).await.expect_err("deleted user"));
    assert!(
        error == "etcdserver: invalid auth token"
            || error == "etcdserver: authentication failed, invalid user ID or password",
        "{error}"
    );
    // Admin RPCs are root's.
    let mut bob = connect(&member, Some(("bob", "pw"))).await;
    assert_eq!(
        message(bob.compact(1, None).await.expect_err("compact")),
        PERMISSION_DENIED
    );
    assert_eq!(
        message(bob.defragment().await.expect_err("defragment")),
        PERMISSION_DENIED
    );
    assert!(bob.status().await.is_ok(), "status is any user's");
}

/// Goal: under `--client-cert-auth` a client certificate's CN is the user, with no password,
/// for etcdctl and the gateway alike; a token on the gateway comes in `Authorization`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_names_and_gateway_tokens() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "auth CA");
    let mut member = Member::prepare(&root.path().join("m0"), Vec::new());
    member.tls = Some(pki.member("m0", "root"));
    member.launch();
    member.wait_ready();
    // The certificate says "root": set up and enable without a password on the wire.
    ok(&member, None, &["user", "add", "root", "--no-password"]);
    ok(&member, None, &["user", "grant-role", "root", "root"]);
    ok(&member, None, &["role", "add", "apps"]);
    ok(
        &member,
        None,
        &[
            "role",
            "grant-permission",
            "apps",
            "readwrite",
            "a/",
            "--prefix=true",
        ],
    );
    ok(&member, None, &["user", "add", "alice", "--no-password"]);
    ok(&member, None, &["user", "add", "carol:carolpw"]);
    ok(&member, None, &["user", "grant-role", "alice", "apps"]);
    ok(&member, None, &["user", "grant-role", "carol", "apps"]);
    ok(&member, None, &["auth", "enable"]);
    ok(&member, None, &["put", "secret", "s"]);

    let (cert, key) = pki.issue("alice");
    let tls = member.tls.clone().expect("tls");
    let alice = [
        format!("--endpoints={}", member.url()),
        format!("--cacert={}", tls.ca.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
    ];
    let alice: Vec<&str> = alice.iter().map(String::as_str).collect();
    let (ok_put, _, err) = run_tool("etcdctl", &alice, &["put", "a/1", "one"], None);
    assert!(ok_put, "{err}");
    let (ok_get, _, err) = run_tool("etcdctl", &alice, &["get", "secret"], None);
    assert!(!ok_get && err.contains(PERMISSION_DENIED), "{err}");

    // The gateway: a token from /v3/auth/authenticate in the Authorization header.
    let curl = |path: &str, body: &str, token: Option<&str>| {
        let mut args = tls.curl_flags();
        args.extend(["-s".to_owned(), "-d".to_owned(), body.to_owned()]);
        if let Some(token) = token {
            args.extend(["-H".to_owned(), format!("Authorization: {token}")]);
        }
        args.push(format!("{}{path}", member.url()));
        let output = std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    let answer = curl(
        "/v3/auth/authenticate",
        r#"{"name":"carol","password":"carolpw"}"#,
        None,
    );
    let token = answer["token"].as_str().expect("a token").to_owned();
    let read = curl("/v3/kv/range", r#"{"key":"YS8x"}"#, Some(&token));
    assert_eq!(read["kvs"][0]["value"], "b25l", "{read}");
    let denied = curl("/v3/kv/range", r#"{"key":"c2VjcmV0"}"#, Some(&token));
    assert_eq!(denied["message"], PERMISSION_DENIED, "{denied}");
    let forged = curl("/v3/kv/range", r#"{"key":"YS8x"}"#, Some("forged.7"));
    assert_eq!(
        forged["message"], "etcdserver: invalid auth token",
        "{forged}"
    );
}

/// One step's outcome as a client sees it: success, or the gRPC code and message.
type Outcome = Result<(), (tonic::Code, String)>;

fn outcome<T>(result: Result<T, etcd_client::Error>) -> Outcome {
    result.map(|_| ()).map_err(|error| match error {
        etcd_client::Error::GRpcStatus(status) => (status.code(), status.message().to_owned()),
        other => (tonic::Code::Unknown, other.to_string()),
    })
}

/// The Auth RPCs and their refusals, step by step, as one client sees them.
async fn auth_script(endpoint: String) -> Vec<(&'static str, Outcome)> {
    let connect = |user: Option<(&str, &str)>| {
        let endpoint = endpoint.clone();
        let options = user.map(|(n, p)| ConnectOptions::new().with_user(n, p));
        async move { etcd_client::Client::connect([endpoint], options).await }
    };
    let mut steps = Vec::new();
    let mut admin = connect(None).await.expect("connect");
    steps.push(("enable without root", outcome(admin.auth_enable().await)));
    steps.push((
        "add root",
        outcome(admin.user_add("root", "rootpw", None).await),
    ));
    steps.push((
        "enable without root role",
        outcome(admin.auth_enable().await),
    ));
    steps.push((
        "add root again",
        outcome(admin.user_add("root", "x", None).await),
    ));
    steps.push((
        "grant root",
        outcome(admin.user_grant_role("root", "root").await),
    ));
    steps.push((
        "grant missing role",
        outcome(admin.user_grant_role("root", "nope").await),
    ));
    steps.push((
        "grant to missing user",
        outcome(admin.user_grant_role("nobody", "root").await),
    ));
    steps.push(("add role", outcome(admin.role_add("apps").await)));
    steps.push(("add role again", outcome(admin.role_add("apps").await)));
    steps.push((
        "grant permission",
        outcome(
            admin
                .role_grant_permission("apps", Permission::read_write("a/").with_prefix())
                .await,
        ),
    ));
    steps.push((
        "grant to missing role",
        outcome(
            admin
                .role_grant_permission("nope", Permission::read("a"))
                .await,
        ),
    ));
    steps.push((
        "revoke missing permission",
        outcome(admin.role_revoke_permission("apps", "zzz", None).await),
    ));
    steps.push((
        "add user",
        outcome(admin.user_add("alice", "pw", None).await),
    ));
    steps.push((
        "grant apps",
        outcome(admin.user_grant_role("alice", "apps").await),
    ));
    steps.push((
        "revoke missing role",
        outcome(admin.user_revoke_role("alice", "root").await),
    ));
    steps.push(("enable", outcome(admin.auth_enable().await)));
    steps.push(("enable again", outcome(admin.auth_enable().await)));
    steps.push(("anonymous put", outcome(admin.put("a/1", "v", None).await)));
    steps.push(("anonymous user list", outcome(admin.user_list().await)));
    steps.push((
        "wrong password",
        outcome(connect(Some(("alice", "bad"))).await),
    ));
    steps.push((
        "missing user",
        outcome(connect(Some(("nobody", "pw"))).await),
    ));
    let mut alice = connect(Some(("alice", "pw"))).await.expect("alice");
    steps.push(("alice put", outcome(alice.put("a/1", "v", None).await)));
    steps.push(("alice get", outcome(alice.get("a/1", None).await)));
    steps.push((
        "alice put outside",
        outcome(alice.put("b", "v", None).await),
    ));
    steps.push(("alice get outside", outcome(alice.get("b", None).await)));
    steps.push(("alice user list", outcome(alice.user_list().await)));
    steps.push((
        "alice add user",
        outcome(alice.user_add("eve", "pw", None).await),
    ));
    steps.push(("alice get self", outcome(alice.user_get("alice").await)));
    steps.push(("alice get root", outcome(alice.user_get("root").await)));
    steps.push(("alice get her role", outcome(alice.role_get("apps").await)));
    steps.push(("alice disable", outcome(alice.auth_disable().await)));
    let mut root = connect(Some(("root", "rootpw"))).await.expect("root");
    steps.push((
        "root get missing user",
        outcome(root.user_get("nobody").await),
    ));
    steps.push((
        "root get missing role",
        outcome(root.role_get("nope").await),
    ));
    steps.push(("root delete root", outcome(root.user_delete("root").await)));
    steps.push((
        "root revoke root role",
        outcome(root.user_revoke_role("root", "root").await),
    ));
    steps.push((
        "root delete root role",
        outcome(root.role_delete("root").await),
    ));
    steps.push((
        "root delete missing role",
        outcome(root.role_delete("nope").await),
    ));
    steps.push((
        "root delete alice",
        outcome(root.user_delete("alice").await),
    ));
    steps.push((
        "root delete alice again",
        outcome(root.user_delete("alice").await),
    ));
    steps.push(("root disable", outcome(root.auth_disable().await)));
    steps.push((
        "authenticate when off",
        outcome(connect(Some(("root", "rootpw"))).await),
    ));
    steps
}

/// Goal: the Auth RPCs answer like etcd's (Debian's etcd 3.4): the same successes and the same
/// codes and messages for every refusal, step by step through one script.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_answers_like_etcd() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("synod"), &[]);
    let etcd_dir = root.path().join("etcd");
    std::fs::create_dir_all(&etcd_dir).expect("etcd dir");
    let etcd = crate::harness::Etcd::start(&etcd_dir);
    let synod = auth_script(member.url()).await;
    let reference = auth_script(format!("http://{}", etcd.endpoint())).await;
    for ((step, ours), (_, theirs)) in synod.iter().zip(&reference) {
        assert_eq!(
            ours, theirs,
            "step {step:?}: Synod answered {ours:?}, etcd {theirs:?}"
        );
    }
    assert_eq!(synod.len(), reference.len());
}

/// Goal: synod's own CLI manages users, roles and auth with etcdctl's commands and output, and
/// `--user` logs in for any command.
#[test]
fn synod_cli_manages_users_roles_and_auth() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let synod = |user: Option<&str>, args: &[&str], stdin: Option<&str>| {
        let mut flags = vec![format!("--endpoints={}", member.endpoint())];
        if let Some(user) = user {
            flags.push(format!("--user={user}"));
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        run_tool(crate::harness::synod_binary(), &flags, args, stdin)
    };
    let ok = |user: Option<&str>, args: &[&str], stdin: Option<&str>| {
        let (ok, out, err) = synod(user, args, stdin);
        assert!(ok, "synod {args:?} failed:\n{out}\n{err}");
        out
    };
    assert_eq!(
        ok(None, &["user", "add", "root"], Some("rootpw\n")),
        "User root created\n"
    );
    ok(None, &["role", "add", "reader"], None);
    ok(
        None,
        &[
            "role",
            "grant-permission",
            "reader",
            "read",
            "foo/",
            "--prefix",
        ],
        None,
    );
    ok(None, &["user", "add", "alice:pw"], None);
    ok(None, &["user", "grant-role", "alice", "reader"], None);
    // The root role is made and granted on the way, as etcdctl does.
    assert_eq!(
        ok(None, &["auth", "enable"], None),
        "Authentication Enabled\n"
    );
    let root_user = Some("root:rootpw");
    assert!(ok(root_user, &["auth", "status"], None).starts_with("Authentication Status: true\n"));
    assert_eq!(
        ok(root_user, &["role", "get", "reader"], None),
        "Role reader\nKV Read:\n\t[foo/, foo0) (prefix foo/)\nKV Write:\n"
    );
    ok(root_user, &["put", "foo/x", "1"], None);
    assert_eq!(
        ok(
            Some("alice:pw"),
            &["get", "foo/x", "--print-value-only"],
            None
        ),
        "1\n"
    );
    let (ok_put, _, err) = synod(Some("alice:pw"), &["put", "foo/x", "2"], None);
    assert!(!ok_put && err.contains(PERMISSION_DENIED), "{err}");
    let (ok_get, _, err) = synod(None, &["get", "foo/x"], None);
    assert!(!ok_get && err.contains(USER_EMPTY), "{err}");
    assert_eq!(ok(root_user, &["user", "list"], None), "alice\nroot\n");
    assert_eq!(
        ok(root_user, &["auth", "disable"], None),
        "Authentication Disabled\n"
    );
}

/// Goal: Python's etcd3 (python-etcd3) authenticates with a user and password, and with a
/// client certificate's CN, and is refused with etcd's error outside its permissions.
#[test]
fn python_etcd3_authenticates_with_a_password_and_a_certificate() {
    let has_etcd3 = std::process::Command::new("python3")
        .args(["-c", "import etcd3"])
        .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has_etcd3,
        "Python's etcd3 is required; scripts/test installs it (pip install etcd3)"
    );
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "python CA");
    let mut member = Member::prepare(&root.path().join("m0"), Vec::new());
    member.tls = Some(pki.member("m0", "root"));
    member.launch();
    member.wait_ready();
    alice_on_apps_then_auth(&member, &["root", "--no-password"], "alice:secret");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/etcd3_auth_check.py");
    let port = member.client_port.to_string();
    let tls = member.tls.clone().expect("tls");
    let (cert, key) = pki.issue("alice");
    let files = |cert: &std::path::Path, key: &std::path::Path| {
        vec![
            script.to_owned(),
            "localhost".to_owned(),
            port.clone(),
            pki.ca_file.display().to_string(),
            cert.display().to_string(),
            key.display().to_string(),
        ]
    };
    // By certificate (CN alice); and by password while presenting root's certificate: the
    // token wins, so root's powers must not leak to alice.
    let mut with_password = files(&tls.client_cert, &tls.client_key);
    with_password.extend(["alice".to_owned(), "secret".to_owned()]);
    let runs = [files(&cert, &key), with_password];
    for args in &runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = std::process::Command::new("python3")
            .args(&args)
            .env("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION", "python")
            .output()
            .expect("python3");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
        );
        assert!(
            output.status.success() && stdout.contains("etcd3 auth ok"),
            "etcd3 {args:?}:\n{stdout}\n{stderr}"
        );
    }
}

/// Goal: JWT tokens (`--auth-token jwt,...`): a token issued by one member works on the others
/// and after a restart (nothing is stored), and is refused as stale once users or roles
/// change, as etcd's JWTs are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_work_everywhere_until_auth_changes() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "jwt CA");
    // An ECDSA P-256 key in PKCS#8: what ES256 signs with.
    let (_, key) = pki.issue("jwt-signer");
    let flag = format!(
        "--auth-token=jwt,priv-key={},sign-method=ES256,ttl=10m",
        key.display()
    );
    let mut cluster = crate::harness::Cluster::start(root.path(), 3, &[&flag]);
    let m0 = &cluster.members[0];
    alice_on_apps_then_auth(m0, &["root:rootpw"], "alice:pw");
    ok(m0, Some("root:rootpw"), &["put", "a/1", "one"]);
    let gateway = |member: &Member, path: &str, body: &str, token: Option<&str>| {
        let mut args = vec!["-s".to_owned(), "-d".to_owned(), body.to_owned()];
        if let Some(token) = token {
            args.extend(["-H".to_owned(), format!("Authorization: {token}")]);
        }
        args.push(format!("{}{path}", member.url()));
        let output = std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl");
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap_or_default()
    };
    let login = gateway(
        m0,
        "/v3/auth/authenticate",
        r#"{"name":"alice","password":"pw"}"#,
        None,
    );
    let token = login["token"].as_str().expect("a token").to_owned();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    for member in &cluster.members {
        let read = gateway(member, "/v3/kv/range", r#"{"key":"YS8x"}"#, Some(&token));
        assert_eq!(read["kvs"][0]["value"], "b25l", "{read}");
    }
    cluster.members[1].kill9();
    cluster.members[1].restart();
    let read = gateway(
        &cluster.members[1],
        "/v3/kv/range",
        r#"{"key":"YS8x"}"#,
        Some(&token),
    );
    assert_eq!(read["kvs"][0]["value"], "b25l", "after a restart: {read}");
    // etcdctl logs in by itself, with a JWT.
    let m0 = &cluster.members[0];
    assert_eq!(
        ok(m0, Some("alice:pw"), &["get", "a/1", "--print-value-only"]),
        "one\n"
    );
    ok(m0, Some("root:rootpw"), &["role", "add", "other"]);
    let stale = gateway(m0, "/v3/kv/range", r#"{"key":"YS8x"}"#, Some(&token));
    assert_eq!(
        stale["message"], "etcdserver: revision of auth store is old",
        "{stale}"
    );
    let forged = format!("{token}x");
    let refused = gateway(m0, "/v3/kv/range", r#"{"key":"YS8x"}"#, Some(&forged));
    assert_eq!(
        refused["message"], "etcdserver: invalid auth token",
        "{refused}"
    );
}
