//! Against the real etcd (3.4 on Debian, at /usr/bin/etcd and /usr/bin/etcdctl, or wherever
//! `ETCD_BIN` and `ETCDCTL_BIN` point): read a snapshot etcd wrote, and have etcd's own bbolt
//! read one we wrote (`etcdctl snapshot status` and `snapshot restore`, then serve it).
//!
//! Without the binaries these tests fail with a message saying so: passing silently would let
//! a CI image without etcd claim interoperability nobody checked.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use synod_bbolt::{Reader, Writer};

/// The buckets etcd 3.4 creates.
const ETCD_BUCKETS: [&str; 10] = [
    "alarm",
    "auth",
    "authRoles",
    "authUsers",
    "cluster",
    "key",
    "lease",
    "members",
    "members_removed",
    "meta",
];

const BIG_VALUE_LEN: usize = 200_000;

fn binary(var: &str, default: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| default.to_string())
}

fn spawn_failed(program: &str, err: std::io::Error) -> ! {
    panic!(
        "cannot run {program:?} ({err}): these tests need etcd and etcdctl 3.4 or newer \
         (Debian: apt-get install etcd-server etcd-client), on PATH or named by ETCD_BIN and \
         ETCDCTL_BIN"
    )
}

/// Runs etcdctl (API v3) and returns its stdout, panicking with its stderr if it fails.
fn etcdctl(endpoint: Option<&str>, args: &[&str], stdin: &[u8]) -> Vec<u8> {
    let program = binary("ETCDCTL_BIN", "etcdctl");
    let mut command = Command::new(&program);
    command.env("ETCDCTL_API", "3");
    if let Some(endpoint) = endpoint {
        command.args(["--endpoints", endpoint]);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| spawn_failed(&program, e));
    // Small inputs only (a value of a few hundred KB): fits the pipe before etcdctl reads it.
    let mut pipe = child.stdin.take().expect("stdin pipe");
    let input = stdin.to_vec();
    let feeder = std::thread::spawn(move || pipe.write_all(&input));
    let output = child.wait_with_output().expect("wait for etcdctl");
    feeder.join().expect("stdin feeder").expect("write stdin");
    assert!(
        output.status.success(),
        "etcdctl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn free_port() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("bound address").port();
    (listener, port)
}

/// A running etcd, killed (by its pid) when dropped.
struct Etcd {
    child: Child,
    endpoint: String,
    log: PathBuf,
}

impl Etcd {
    /// Starts a single-member etcd on `data_dir` with the peer URL `peer`; a restored data
    /// directory must be started with the peer URL it was restored with.
    fn start(data_dir: &Path, peer_port: u16, client_port: u16) -> Self {
        let program = binary("ETCD_BIN", "etcd");
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let log = data_dir.with_extension("log");
        let child = Command::new(&program)
            .args(["--name", "default", "--data-dir"])
            .arg(data_dir)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("default={peer}")])
            .stdin(Stdio::null())
            .stdout(File::create(&log).expect("create file"))
            .stderr(File::create(log.with_extension("err")).expect("create file"))
            .spawn()
            .unwrap_or_else(|e| spawn_failed(&program, e));
        let mut etcd = Self {
            child,
            endpoint: client,
            log,
        };
        etcd.wait_ready();
        etcd
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("poll etcd") {
                panic!("etcd exited with {status}:\n{}", self.logs());
            }
            let health = Command::new(binary("ETCDCTL_BIN", "etcdctl"))
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.endpoint,
                    "--command-timeout=1s",
                    "endpoint",
                    "health",
                ])
                .output()
                .unwrap_or_else(|e| spawn_failed("etcdctl", e));
            if health.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not become healthy:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn logs(&self) -> String {
        let mut text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text += &std::fs::read_to_string(self.log.with_extension("err")).unwrap_or_default();
        text
    }

    fn ctl(&self, args: &[&str]) -> Vec<u8> {
        etcdctl(Some(&self.endpoint), args, b"")
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts etcd in `dir`, writes known data, saves a snapshot to `dir/snap.db`, and returns
/// the snapshot's path, the data directory and the listing of every key (`get "" --prefix`).
/// etcd is stopped when this returns, so its data directory is quiet.
fn make_snapshot(dir: &Path) -> (PathBuf, PathBuf, Vec<String>) {
    let data = dir.join("original");
    let (peer_listener, peer) = free_port();
    let (client_listener, client) = free_port();
    drop((peer_listener, client_listener));
    let etcd = Etcd::start(&data, peer, client);

    // Three transactions of 100 puts: revisions 2, 3 and 4, with sub-revisions 0..99.
    for batch in 0..3 {
        let mut txn = String::from("\n");
        for i in 0..100 {
            txn += &format!("put txn/{batch}/{i:03} value-{batch}-{i}\n");
        }
        txn += "\n\n";
        let out = etcdctl(Some(&etcd.endpoint), &["txn"], txn.as_bytes());
        assert!(String::from_utf8_lossy(&out).starts_with("SUCCESS"));
    }
    // Revisions 5 to 14, then an overwrite (15), a value spanning many pages (16), a delete (17).
    for i in 0..10 {
        etcd.ctl(&["put", &format!("single/{i}"), &format!("one value {i}")]);
    }
    etcd.ctl(&["put", "txn/0/000", "overwritten"]);
    let big: Vec<u8> = (0..BIG_VALUE_LEN).map(|i| b'a' + (i % 26) as u8).collect();
    etcdctl(Some(&etcd.endpoint), &["put", "big"], &big);
    etcd.ctl(&["del", "txn/1/050"]);

    let snapshot = dir.join("snap.db");
    etcd.ctl(&["snapshot", "save", snapshot.to_str().expect("utf-8 path")]);
    let listing = listing(&etcd);
    drop(etcd);
    (snapshot, data, listing)
}

/// Every key with its revisions and value, minus what differs between clusters.
fn listing(etcd: &Etcd) -> Vec<String> {
    let out = etcd.ctl(&["get", "", "--prefix", "-w", "fields"]);
    String::from_utf8(out)
        .expect("utf-8 output")
        .lines()
        .filter(|l| {
            !["\"ClusterID\"", "\"MemberID\"", "\"RaftTerm\""]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .map(str::to_owned)
        .collect()
}

type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// The top-level buckets of a file and each one's pairs.
fn contents(path: &Path) -> Vec<(String, Pairs)> {
    let reader = Reader::open(path).expect("valid file");
    reader
        .buckets()
        .expect("list buckets")
        .iter()
        .map(|b| {
            let name = String::from_utf8(b.name().to_vec()).expect("utf-8 output");
            (
                name,
                reader
                    .iter(b)
                    .collect::<Result<Pairs, _>>()
                    .expect("read every pair"),
            )
        })
        .collect()
}

/// A number from etcdctl's one-line JSON output.
fn json_number(json: &str, field: &str) -> u64 {
    let at = json
        .find(&format!("\"{field}\":"))
        .unwrap_or_else(|| panic!("{field} in {json}"));
    let rest = &json[at + field.len() + 3..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("number")
}

#[test]
fn reads_a_real_etcd_snapshot() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (snapshot, data, _) = make_snapshot(dir.path());

    let reader = Reader::open(&snapshot).expect("valid file");
    println!(
        "snapshot: page size {}, pgid {}, txid {}, {} bytes data + {} trailing",
        reader.page_size(),
        reader.pgid(),
        reader.txid(),
        reader.data_len(),
        reader.file_len() - reader.data_len()
    );
    // The stream ends with the SHA-256 of the data.
    let bytes = std::fs::read(&snapshot).expect("read file");
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    assert_eq!(body.len() as u64, reader.data_len());
    assert_eq!(Sha256::digest(body).as_slice(), digest);
    assert_eq!(
        reader
            .snapshot_digest()
            .expect("read digest")
            .as_ref()
            .map(|d| &d[..]),
        Some(digest)
    );

    let buckets = contents(&snapshot);
    for (name, pairs) in &buckets {
        println!("bucket {name}: {} pairs", pairs.len());
    }
    let names: Vec<&str> = buckets.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ETCD_BUCKETS);

    // One entry per revision in `key`: 300 from the transactions, 10 puts, the overwrite, the
    // big value and the tombstone. Keys are the revision: 8 bytes main, '_', 8 bytes sub, and a
    // trailing 't' for a deletion.
    let key = &buckets
        .iter()
        .find(|(n, _)| n == "key")
        .expect("entry present")
        .1;
    assert_eq!(key.len(), 313);
    let revision = |k: &[u8]| u64::from_be_bytes(k[..8].try_into().expect("field of fixed size"));
    assert_eq!(key.iter().filter(|(k, _)| revision(k) == 2).count(), 100);
    let (last, _) = key.last().expect("last entry");
    assert_eq!((revision(last), last.len(), last[17]), (17, 18, b't'));
    let big = key
        .iter()
        .find(|(k, _)| revision(k) == 16)
        .expect("entry present");
    assert!(
        big.1.len() > BIG_VALUE_LEN
            && big
                .1
                .windows(26)
                .any(|w| w == b"abcdefghijklmnopqrstuvwxyz")
    );

    // etcd's live database (not a snapshot: its file is longer than its data) reads the same.
    let live = contents(&data.join("member/snap/db"));
    let live_key = &live
        .iter()
        .find(|(n, _)| n == "key")
        .expect("entry present")
        .1;
    assert!(live_key == key);
}

#[test]
fn etcd_restores_a_snapshot_we_wrote() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (snapshot, _, expected_listing) = make_snapshot(dir.path());

    // Copy every bucket and pair through the writer, then append etcd's digest trailer.
    let copy = dir.path().join("copy.db");
    let reader = Reader::open(&snapshot).expect("valid file");
    let mut writer = Writer::new(File::create(&copy).expect("create file")).expect("writer");
    for bucket in reader.buckets().expect("list buckets") {
        writer.bucket(bucket.name()).expect("bucket");
        for pair in reader.iter(&bucket) {
            let (k, v) = pair.expect("read pair");
            writer.put(&k, &v).expect("put");
        }
    }
    let written = writer.finish().expect("finish the file");
    drop(written.inner);
    let mut body = Vec::new();
    File::open(&copy)
        .expect("open")
        .read_to_end(&mut body)
        .expect("read file");
    assert_eq!(body.len() as u64, written.data_len);
    let digest = Sha256::digest(&body);
    File::options()
        .append(true)
        .open(&copy)
        .expect("open")
        .write_all(&digest)
        .expect("append digest");
    assert!(contents(&copy) == contents(&snapshot));

    // etcd's bbolt checks our file (tx.Check) and sums every bucket and pair.
    let status = |path: &Path| {
        let out = etcdctl(
            None,
            &[
                "snapshot",
                "status",
                path.to_str().expect("utf-8 path"),
                "-w",
                "json",
            ],
            b"",
        );
        String::from_utf8(out).expect("utf-8 output")
    };
    let (theirs, ours) = (status(&snapshot), status(&copy));
    println!("etcd's snapshot: {theirs}our copy:        {ours}");
    for field in ["hash", "revision", "totalKey"] {
        assert_eq!(
            json_number(&ours, field),
            json_number(&theirs, field),
            "{field}"
        );
    }
    assert_eq!(json_number(&ours, "revision"), 17);

    // Restore (which verifies the digest and writes to the file through bbolt) and serve it.
    let restored = dir.path().join("restored");
    let (peer_listener, peer) = free_port();
    let (client_listener, client) = free_port();
    let peer_url = format!("http://127.0.0.1:{peer}");
    etcdctl(
        None,
        &[
            "snapshot",
            "restore",
            copy.to_str().expect("utf-8 path"),
            "--data-dir",
            restored.to_str().expect("utf-8 path"),
            "--name",
            "default",
            "--initial-cluster",
            &format!("default={peer_url}"),
            "--initial-advertise-peer-urls",
            &peer_url,
        ],
        b"",
    );
    drop((peer_listener, client_listener));
    let etcd = Etcd::start(&restored, peer, client);
    let got = listing(&etcd);
    assert_eq!(got.len(), expected_listing.len());
    assert!(
        got == expected_listing,
        "restored etcd serves different keys"
    );
    assert!(
        got.iter().any(|l| l.contains("\"Revision\" : 17")),
        "{:?}",
        &got[..2]
    );
}
