//! The HTTP/JSON gateway on the client port, as curl and Python's etcd3gw use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::time::Duration;

use crate::harness::{Member, http_request, run_tool};

fn post(member: &Member, path: &str, body: &str) -> (u16, serde_json::Value) {
    let (code, text) =
        http_request(member.client_port, "POST", path, Some(body)).expect("gateway answers");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path} answered non-JSON {text:?}: {e}"));
    (code, json)
}

/// Goal: KV, lease and maintenance calls over HTTP/JSON speak proto3 JSON as etcd's gateway does,
/// errors included, under /v3 and the /v3beta alias.
#[test]
fn json_gateway_serves_kv_leases_and_errors() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    // "foo" is Zm9v and "bar" is YmFy in base64.
    let (code, put) = post(&member, "/v3/kv/put", r#"{"key":"Zm9v","value":"YmFy"}"#);
    assert_eq!(code, 200);
    assert_eq!(
        put["header"]["revision"], "2",
        "int64 values are JSON strings"
    );
    let (_, range) = post(&member, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert_eq!(range["kvs"][0]["value"], "YmFy");
    assert_eq!(range["count"], "1");
    let (_, sorted) = post(
        &member,
        "/v3beta/kv/range",
        r#"{"key":"AA==","range_end":"AA==","sort_order":"DESCEND","sort_target":"KEY"}"#,
    );
    assert_eq!(
        sorted["kvs"][0]["key"], "Zm9v",
        "enum names are accepted, /v3beta is an alias"
    );
    let (code, error) = post(&member, "/v3/kv/put", r#"{"key":"","value":"YmFy"}"#);
    assert_eq!(code, 400);
    assert_eq!(
        error,
        serde_json::json!({
            "error": "etcdserver: key is not provided",
            "code": 3,
            "message": "etcdserver: key is not provided",
            "details": []
        }),
        "etcd 3.4/3.5's `error` beside 3.6's google.rpc.Status"
    );
    // Patroni's case: a put with a lease that is gone. Patroni reads `error` to recognise a lost
    // lease and takes its leader key again; without it, it demotes its primary.
    let (code, lease) = post(&member, "/v3/lease/grant", r#"{"TTL":"30"}"#);
    assert_eq!(code, 200);
    let lease_id = lease["ID"].as_str().expect("lease id").to_owned();
    let (code, _) = post(
        &member,
        "/v3/lease/revoke",
        &format!(r#"{{"ID":"{lease_id}"}}"#),
    );
    assert_eq!(code, 200);
    let (code, error) = post(
        &member,
        "/v3/kv/put",
        &format!(r#"{{"key":"bGVhZGVy","value":"bWU=","lease":"{lease_id}"}}"#),
    );
    assert_eq!(code, 404);
    assert_eq!(error["error"], "etcdserver: requested lease not found");
    assert_eq!(error["code"], 5);
    // A body past what the gRPC server would take is refused in JSON, as a gRPC refusal.
    let huge = format!(r#"{{"key":"Zm9v","value":"{}"}}"#, "A".repeat(3 << 20));
    let (code, error) = post(&member, "/v3/kv/put", &huge);
    assert_eq!((code, error["code"].as_i64()), (429, Some(8)), "{error}");
    let (code, error) = post(&member, "/v3/kv/range", r#"{"key":"Zm9v","revision":"99"}"#);
    assert_eq!(
        (code, error["message"].as_str()),
        (
            400,
            Some("etcdserver: mvcc: required revision is a future revision")
        )
    );
    let (code, error) = post(&member, "/v3/kv/range", r#"{"key": nonsense"#);
    assert_eq!((code, error["code"].as_i64()), (400, Some(3)));
    let txn = r#"{"compare":[{"key":"Zm9v","target":"VALUE","result":"EQUAL","value":"YmFy"}],
                 "success":[{"request_put":{"key":"Zm9v","value":"YmF6"}}]}"#;
    let (_, txn) = post(&member, "/v3/kv/txn", txn);
    assert_eq!(txn["succeeded"], true);

    let (_, grant) = post(&member, "/v3/lease/grant", r#"{"TTL":60,"ID":0}"#);
    let id = grant["ID"]
        .as_str()
        .expect("lease id as a string")
        .to_owned();
    let (_, ttl) = post(
        &member,
        "/v3/kv/lease/timetolive",
        &format!(r#"{{"ID":"{id}"}}"#),
    );
    assert_eq!(ttl["grantedTTL"], "60");
    let (code, text) = http_request(
        member.client_port,
        "POST",
        "/v3/lease/keepalive",
        Some(&format!(r#"{{"ID":"{id}"}}"#)),
    )
    .expect("keepalive");
    assert_eq!(code, 200);
    let line: serde_json::Value =
        serde_json::from_str(text.lines().next().expect("a line")).expect("json");
    assert_eq!(line["result"]["TTL"], "60");
    let (_, leases) = post(&member, "/v3/lease/leases", "{}");
    assert_eq!(leases["leases"][0]["ID"], id.as_str());
    let (code, _) = post(
        &member,
        "/v3/kv/lease/revoke",
        &format!(r#"{{"ID":"{id}"}}"#),
    );
    assert_eq!(code, 200);

    let (_, status) = post(&member, "/v3/maintenance/status", "{}");
    assert_eq!(status["version"], "3.6.0");
    let (_, members) = post(&member, "/v3/cluster/member/list", "{}");
    assert_eq!(members["members"].as_array().map(Vec::len), Some(1));
    let (_, hash) = post(&member, "/v3/maintenance/hashkv", "{}");
    assert!(hash["hash"].as_u64().is_some());

    // Lock and election over HTTP ("job" is am9i, "alice" is YWxpY2U=).
    let (_, grant) = post(&member, "/v3/lease/grant", r#"{"TTL":60}"#);
    let lease = grant["ID"].as_str().expect("lease id").to_owned();
    let (code, locked) = post(
        &member,
        "/v3/lock/lock",
        &format!(r#"{{"name":"am9i","lease":"{lease}"}}"#),
    );
    assert_eq!(code, 200);
    let key = locked["key"].as_str().expect("lock key").to_owned();
    let (code, _) = post(&member, "/v3/lock/unlock", &format!(r#"{{"key":"{key}"}}"#));
    assert_eq!(code, 200);
    let (_, campaign) = post(
        &member,
        "/v3/election/campaign",
        &format!(r#"{{"name":"am9i","lease":"{lease}","value":"YWxpY2U="}}"#),
    );
    assert_eq!(campaign["leader"]["name"], "am9i");
    let (_, leader) = post(&member, "/v3/election/leader", r#"{"name":"am9i"}"#);
    assert_eq!(leader["kv"]["value"], "YWxpY2U=");
}

/// Goal: a watch over HTTP streams `{"result": ...}` lines, created first, then events.
#[test]
fn json_gateway_streams_watches() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let mut stream =
        std::net::TcpStream::connect(("127.0.0.1", member.client_port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let body = r#"{"create_request":{"key":"dw==","range_end":"eA=="}}"#;
    write!(stream, "POST /v3/watch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .expect("send");
    let mut reader = BufReader::new(stream);
    let mut next_line = || -> serde_json::Value {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("read");
            let line = line.trim();
            if line.starts_with('{') {
                return serde_json::from_str(line).expect("a JSON line");
            }
            if let Ok(size) = usize::from_str_radix(line, 16) {
                let mut chunk = vec![0; size];
                reader.read_exact(&mut chunk).expect("chunk");
                let text = String::from_utf8(chunk).expect("utf8");
                return serde_json::from_str(text.trim()).expect("a JSON chunk");
            }
        }
    };
    let created = next_line();
    assert_eq!(created["result"]["created"], true);
    http_request(
        member.client_port,
        "POST",
        "/v3/kv/put",
        Some(r#"{"key":"dy8x","value":"b25l"}"#),
    )
    .expect("put");
    let event = next_line();
    assert_eq!(event["result"]["events"][0]["kv"]["key"], "dy8x");
    assert_eq!(event["result"]["events"][0]["kv"]["value"], "b25l");
}

/// Goal: Python's etcd3gw works against the gateway unchanged.
#[test]
fn etcd3gw_works_against_the_gateway() {
    let has_etcd3gw = run_tool("python3", &[], &["-c", "import etcd3gw"], None).0;
    assert!(
        has_etcd3gw,
        "Python's etcd3gw is required; scripts/test installs it (pip install etcd3gw)"
    );
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/etcd3gw_check.py");
    let port = member.client_port.to_string();
    let (ok, stdout, stderr) = run_tool("python3", &[], &[script, "127.0.0.1", &port], None);
    assert!(ok, "etcd3gw check failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("etcd3gw ok"));
}

/// curl with extra headers; returns (HTTP status, headers and body as text).
fn curl_with(
    member: &Member,
    method: &str,
    path: &str,
    headers: &[&str],
    body: &str,
) -> (u16, String) {
    let mut args = vec![
        "-s".to_owned(),
        "-i".to_owned(),
        "-X".to_owned(),
        method.to_owned(),
        "-w".to_owned(),
        "\n%{http_code}".to_owned(),
    ];
    for header in headers {
        args.extend(["-H".to_owned(), (*header).to_owned()]);
    }
    if !body.is_empty() {
        args.extend(["-d".to_owned(), body.to_owned()]);
    }
    args.push(format!("http://127.0.0.1:{}{path}", member.client_port));
    let output = std::process::Command::new("curl")
        .args(&args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (rest, code) = text.rsplit_once('\n').expect("a status code");
    (code.trim().parse().expect("a number"), rest.to_owned())
}

/// Goal: a web page of another origin cannot use the gateway (a cross-origin `text/plain` POST
/// was executed, as etcd's default `--cors=*` executes it), while the member's own origin,
/// origins given to `--cors` and clients that send no `Origin` are served; `--host-whitelist`
/// answers an unknown `Host` with 421 as etcd does.
#[test]
fn web_pages_of_other_origins_are_refused() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(&root.path().join("m0"), &["--cors=http://console.example"]);
    let put = r#"{"key":"Zm9v","value":"YmFy"}"#;
    let evil = ["Origin: http://evil.example", "Content-Type: text/plain"];
    let (code, text) = curl_with(&member, "POST", "/v3/kv/put", &evil, put);
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("allow the origin with --cors"), "{text}");
    let (code, _) = curl_with(
        &member,
        "OPTIONS",
        "/v3/kv/put",
        &[
            "Origin: http://evil.example",
            "Access-Control-Request-Method: POST",
        ],
        "",
    );
    assert_eq!(code, 403);
    let (_, json) = post(&member, "/v3/kv/range", r#"{"key":"Zm9v"}"#);
    assert!(
        json.get("kvs").is_none(),
        "the refused put was executed: {json}"
    );

    // No Origin (a command-line client), the member's own origin, a --cors origin: served.
    let (code, _) = curl_with(&member, "POST", "/v3/kv/put", &[], put);
    assert_eq!(code, 200);
    let own = format!("Origin: http://127.0.0.1:{}", member.client_port);
    let (code, text) = curl_with(
        &member,
        "POST",
        "/v3/kv/range",
        &[&own],
        r#"{"key":"Zm9v"}"#,
    );
    assert_eq!(code, 200, "{text}");
    let (code, text) = curl_with(
        &member,
        "OPTIONS",
        "/v3/kv/put",
        &[
            "Origin: http://console.example",
            "Access-Control-Request-Method: POST",
        ],
        "",
    );
    assert_eq!(code, 200);
    assert!(
        text.to_ascii_lowercase()
            .contains("access-control-allow-origin: http://console.example"),
        "{text}"
    );

    let strict = Member::start(
        &root.path().join("m1"),
        &["--host-whitelist=localhost,127.0.0.1"],
    );
    let (code, text) = curl_with(&strict, "GET", "/health", &["Host: rebind.example"], "");
    assert_eq!(code, 421, "{text}");
    let (code, _) = curl_with(&strict, "GET", "/health", &["Host: localhost"], "");
    assert_eq!(code, 200);
}
