//! TLS on real member processes: etcdctl 3.4, curl and synod's CLI over mutual TLS on a
//! 3-member cluster, refusals with their reasons in the log, peers limited to allowed names,
//! certificate rotation without a restart, auto TLS, `synod cluster up --tls`, and etcd's
//! start-up errors.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synod_tls::{ClientFiles, ClientTls, Policy};

use crate::harness::{Cluster, Member, TestPki, eventually, run_tool, signal, synod_binary};

fn etcdctl(member: &Member, extra: &[String], args: &[&str]) -> (bool, String, String) {
    let mut flags = vec![format!("--endpoints={}", member.url())];
    flags.extend_from_slice(extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    run_tool("etcdctl", &flags, args, None)
}

/// Dials `port` with `files` and returns the CN of the certificate the member presented.
async fn served_common_name(port: u16, files: ClientFiles) -> Result<String, String> {
    let tls = ClientTls::new(files, Policy::default()).map_err(|e| e.to_string())?;
    let stream = tls
        .connect("127.0.0.1", port, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    let chain = stream.get_ref().1.peer_certificates().unwrap_or_default();
    Ok(chain
        .first()
        .and_then(|leaf| synod_tls::common_name(leaf))
        .unwrap_or_default())
}

/// Goal: what an operator runs against a TLS cluster works: etcdctl 3.4 with `--cacert --cert
/// --key` (including `endpoint status --cluster` and `endpoint health --cluster`), curl on the
/// JSON gateway, synod's CLI. And what must be refused is, with a reason in the member's log:
/// no client certificate, a certificate from another CA, plaintext.
#[test]
fn etcdctl_curl_and_the_cli_over_mutual_tls() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "e2e CA");
    let cluster = Cluster::start_tls(root.path(), 3, &[], &pki, "operator");
    let member = &cluster.members[0];
    let tls = member.tls.clone().expect("a TLS member");
    let flags = tls.client_flags();

    let (ok, status, err) = etcdctl(member, &flags, &["endpoint", "status", "--cluster"]);
    assert!(ok, "{err}");
    for other in &cluster.members {
        assert!(status.contains(&format!("{}, ", other.url())), "{status}");
    }
    let (ok, _, health) = etcdctl(member, &flags, &["endpoint", "health", "--cluster"]);
    assert!(ok && health.matches("is healthy").count() == 3, "{health}");
    let (ok, _, err) = etcdctl(member, &flags, &["put", "greeting", "hello"]);
    assert!(ok, "{err}");

    let mut curl = tls.curl_flags();
    curl.extend(
        [
            "-s",
            "-d",
            r#"{"key":"Z3JlZXRpbmc="}"#,
            &format!("{}/v3/kv/range", cluster.members[1].url()),
        ]
        .map(str::to_owned),
    );
    let output = std::process::Command::new("curl")
        .args(&curl)
        .output()
        .expect("curl");
    let body = String::from_utf8_lossy(&output.stdout);
    assert!(body.contains(r#""value":"aGVsbG8=""#), "{body}");

    let mut cli = vec![format!("--endpoints={}", cluster.members[2].url())];
    cli.extend(flags.iter().cloned());
    cli.extend(["get", "greeting", "--print-value-only"].map(str::to_owned));
    let cli: Vec<&str> = cli.iter().map(String::as_str).collect();
    let (ok, out, err) = run_tool(synod_binary(), &[], &cli, None);
    assert!(ok && out == "hello\n", "{out}{err}");

    // Refused: no client certificate, a stranger's certificate, no TLS at all.
    let ca_only = vec![format!("--cacert={}", tls.ca.display())];
    let quick = [
        "get",
        "greeting",
        "--dial-timeout=1s",
        "--command-timeout=2s",
    ];
    let (ok, _, _) = etcdctl(member, &ca_only, &quick);
    assert!(!ok, "a client without a certificate was served");
    let stranger = TestPki::new(&root.path().join("stranger"), "stranger CA");
    let (cert, key) = stranger.issue("operator");
    let forged = vec![
        format!("--cacert={}", tls.ca.display()),
        format!("--cert={}", cert.display()),
        format!("--key={}", key.display()),
    ];
    let (ok, _, _) = etcdctl(member, &forged, &quick);
    assert!(!ok, "a certificate from another CA was accepted");
    let plaintext = format!("--endpoints=127.0.0.1:{}", member.client_port);
    let (ok, _, _) = run_tool("etcdctl", &[&plaintext], &quick, None);
    assert!(!ok, "plaintext was served on a TLS port");
    let log = member.log();
    for reason in [
        "peer sent no certificates",
        "UnknownIssuer",
        "not a TLS client",
    ] {
        assert!(
            log.contains("rejected connection") && log.contains(reason),
            "no refusal for {reason:?} in the log:\n{log}"
        );
    }
}

/// Goal: with mutual TLS on the peer port and `--peer-cert-allowed-cn`, only members get in:
/// a client of the right CA with another name cannot even finish a handshake (so it cannot send
/// a Raft message, as one MsgTimeoutNow from anyone could move leadership before), and the log
/// names the refused CN.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_must_present_an_allowed_certificate() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "peer CA");
    let mut member = Member::prepare(&root.path().join("m0"), Vec::new());
    member.tls = Some(pki.member("m0", "operator"));
    member.set_args(vec![
        "--name=m0".to_owned(),
        "--peer-cert-allowed-cn=m0,m1,m2".to_owned(),
    ]);
    member.launch();
    member.wait_ready();
    let dial = |cert: Option<(&Path, &Path)>| ClientFiles {
        ca: Some(pki.ca_file.clone()),
        cert: cert.map(|c| c.0.to_owned()),
        key: cert.map(|c| c.1.to_owned()),
        skip_verify: false,
    };
    let (cert, key) = pki.issue("m1");
    assert_eq!(
        served_common_name(member.peer_port, dial(Some((&cert, &key)))).await,
        Ok("m0".to_owned())
    );
    let (cert, key) = pki.issue("intruder");
    let refused = async |files| {
        let tls = Arc::new(ClientTls::new(files, Policy::default()).expect("client tls"));
        let mut channel = tonic::transport::Endpoint::from_shared(format!(
            "http://127.0.0.1:{}",
            member.peer_port
        ))
        .expect("endpoint")
        .connect_with_connector(tls.connector(Duration::from_secs(5)))
        .await
        .ok()?;
        let mut client = synod_api::synodpb::peer_client::PeerClient::new(&mut channel);
        client
            .cluster(synod_api::synodpb::ClusterRequest {})
            .await
            .ok()
    };
    assert!(
        refused(dial(Some((&cert, &key)))).await.is_none(),
        "a peer with a CN not allowed was served"
    );
    assert!(
        refused(dial(None)).await.is_none(),
        "a peer without a certificate was served"
    );
    let logged = eventually(Duration::from_secs(5), async || {
        member.log().contains(r#"CN \"intruder\" is not allowed"#)
    })
    .await;
    assert!(
        logged,
        "the refused CN is not in the log:\n{}",
        member.log()
    ); // An allowed name on a certificate made for another machine's address (etcd's SAN check).
    let elsewhere = pki
        .ca
        .issue("m2", &["10.9.9.9".to_owned()])
        .expect("issue")
        .write(&root.path().join("pki"), "m2-elsewhere")
        .expect("write");
    assert!(
        refused(dial(Some((&elsewhere.0, &elsewhere.1))))
            .await
            .is_none(),
        "a peer certificate for another address was accepted"
    );
    // Refusals are logged at most once a second: try until this one is.
    let logged = eventually(Duration::from_secs(5), async || {
        let _ = refused(dial(Some((&elsewhere.0, &elsewhere.1)))).await;
        member.log().contains("do not include the connection")
    })
    .await;
    assert!(
        logged,
        "the SAN refusal is not in the log:\n{}",
        member.log()
    );
}

/// Goal: certificates rotate without a restart: after the member's certificate and key files
/// are replaced, the next connection gets the new certificate, and clients keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_without_a_restart() {
    let root = tempfile::tempdir().expect("temp dir");
    let pki = TestPki::new(&root.path().join("pki"), "rotation CA");
    let mut member = Member::prepare(&root.path().join("m0"), Vec::new());
    let tls = pki.member("m0", "operator");
    member.tls = Some(tls.clone());
    member.launch();
    member.wait_ready();
    let files = || ClientFiles {
        ca: Some(pki.ca_file.clone()),
        cert: Some(tls.client_cert.clone()),
        key: Some(tls.client_key.clone()),
        skip_verify: false,
    };
    assert_eq!(
        served_common_name(member.client_port, files()).await,
        Ok("m0".to_owned())
    );
    let issued = pki
        .ca
        .issue("m0-renewed", &["127.0.0.1".to_owned()])
        .expect("issue");
    synod_tls::generate::write_file(&tls.key, issued.key_pem.as_bytes(), 0o600).expect("key");
    synod_tls::generate::write_file(&tls.cert, issued.cert_pem.as_bytes(), 0o644).expect("cert");
    assert_eq!(
        served_common_name(member.client_port, files()).await,
        Ok("m0-renewed".to_owned())
    );
    let (ok, _, err) = etcdctl(&member, &tls.client_flags(), &["put", "after", "rotation"]);
    assert!(ok, "{err}");
    assert!(member.log().contains("TLS files changed"));
}

/// Goal: `--auto-tls` and `--peer-auto-tls` serve https with a self-signed certificate kept in
/// the data directory (key readable by its owner only), reached with
/// `--insecure-skip-tls-verify`.
#[test]
fn auto_tls_serves_with_a_self_signed_certificate() {
    let root = tempfile::tempdir().expect("temp dir");
    let mut member = Member::prepare(&root.path().join("m0"), Vec::new());
    member.auto_tls = true;
    member.launch();
    member.wait_ready();
    let endpoint = format!("--endpoints={}", member.url());
    let (ok, _, err) = run_tool(
        synod_binary(),
        &[&endpoint, "--insecure-skip-tls-verify"],
        &["put", "k", "v"],
        None,
    );
    assert!(ok, "{err}");
    let (ok, _, _) = run_tool(synod_binary(), &[&endpoint], &["get", "k"], None);
    assert!(
        !ok,
        "a self-signed certificate was trusted without --insecure-skip-tls-verify"
    );
    let key = member.data_dir.join("fixtures/client/key.pem");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&key).expect("auto TLS key").permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the key is readable by others: {mode:o}");
    assert!(member.data_dir.join("fixtures/peer/cert.pem").exists());
}

/// Goal: `synod cluster up --tls` starts a local cluster with mutual TLS everywhere in one
/// command, and the flags it prints reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_with_tls() {
    let root = tempfile::tempdir().expect("temp dir");
    let base = crate::harness::free_port().min(60_000);
    let log_path = root.path().join("up.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let dir = root.path().join("data");
    let mut up = std::process::Command::new(synod_binary())
        .args([
            "cluster",
            "up",
            "--tls",
            "--base-port",
            &base.to_string(),
            "--dir",
        ])
        .arg(&dir)
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("start synod cluster up");
    let tls = dir.join("tls");
    let flags = [
        format!("--endpoints=https://127.0.0.1:{base}"),
        format!("--cacert={}", tls.join("ca.pem").display()),
        format!("--cert={}", tls.join("client.pem").display()),
        format!("--key={}", tls.join("client-key.pem").display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let healthy = eventually(Duration::from_secs(30), async || {
        run_tool(synod_binary(), &flags, &["put", "hello", "tls"], None).0
    })
    .await;
    let output = || std::fs::read_to_string(&log_path).unwrap_or_default();
    assert!(healthy, "the TLS cluster never served:\n{}", output());
    // Members publish their client URLs through Raft just after they start serving.
    let all_listed = eventually(Duration::from_secs(10), async || {
        let (ok, status, _) = run_tool(
            synod_binary(),
            &flags,
            &["endpoint", "status", "--cluster"],
            None,
        );
        ok && status.matches("https://").count() == 3
    })
    .await;
    assert!(
        all_listed,
        "endpoint status --cluster never listed three members"
    );
    assert!(output().contains("with mutual TLS"), "{}", output());
    signal(up.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(20);
    while up.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "cluster up did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Goal: TLS settings that cannot work stop the start with etcd's message.
#[test]
fn unusable_tls_settings_stop_the_start() {
    let root = tempfile::tempdir().expect("temp dir");
    let run = |args: &[&str]| {
        let output = std::process::Command::new(synod_binary())
            .arg("server")
            .arg(format!("--data-dir={}", root.path().join("d").display()))
            .args(args)
            .output()
            .expect("run synod server");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["--listen-client-urls=https://127.0.0.1:1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(
            "TLS key/cert (--cert-file, --key-file) must be provided for client url \
             https://127.0.0.1:1 with HTTPS scheme"
        ),
        "{err}"
    );
    let (code, err) = run(&["--tls-min-version=TLS1.1"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains(r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#),
        "{err}"
    );
    let (code, err) = run(&[
        "--listen-client-urls=https://127.0.0.1:1",
        "--cert-file=/nonexistent/cert.pem",
        "--key-file=/nonexistent/key.pem",
    ]);
    assert_ne!(code, Some(0));
    assert!(err.contains("/nonexistent/cert.pem"), "{err}");
}
