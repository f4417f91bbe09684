//! ZooKeeper's client protocol: kazoo and its recipes, ZooKeeper's own zkCli.sh, a session moved
//! to another member by a kill -9, the four-letter words, and a differential test against a real
//! ZooKeeper 3.8 (Debian's package), step by step.

use std::collections::BTreeSet;

use crate::harness::zookeeper::{ZKCLI, ZooKeeper, four_letter};
use crate::harness::{Cluster, Member, run_tool};

fn script(name: &str) -> String {
    format!("{}/tests/e2e/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs one of the kazoo scripts; its output on success.
fn kazoo(name: &str, args: &[&str]) -> String {
    assert!(
        run_tool("python3", &[], &["-c", "import kazoo"], None).0,
        "Python's kazoo is required; scripts/test installs it (pip install kazoo)"
    );
    let path = script(name);
    let mut all = vec![path.as_str()];
    all.extend_from_slice(args);
    let (ok, stdout, stderr) = run_tool("python3", &[], &all, None);
    assert!(ok, "{name} failed:\n{stdout}\n{stderr}");
    stdout
}

/// Goal: an application written for ZooKeeper runs unchanged on one member: kazoo's
/// operations, Stat fields, errors, watches (and their order against replies), ephemerals,
/// transactions, ACLs, and the recipes kazoo ships (Lock, Election, Counter, Queue, Barrier,
/// Party, ChildrenWatch, DataWatch). The same script passes against ZooKeeper 3.8 itself.
#[test]
fn kazoo_and_its_recipes_work_against_a_member() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let out = kazoo("zk_kazoo_check.py", &[&member.zookeeper_address()]);
    assert!(out.contains("kazoo ok"), "{out}");
}

/// Goal: every member of a cluster serves ZooKeeper clients, on one shared tree.
#[test]
fn kazoo_works_through_every_member_of_a_cluster() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    for member in &cluster.members {
        let out = kazoo("zk_kazoo_check.py", &[&member.zookeeper_address()]);
        assert!(out.contains("kazoo ok"), "{out}");
    }
}

/// Goal: a client whose member dies (kill -9) reconnects to another member within its session
/// timeout and keeps its session, its ephemerals and its watches (sent again by kazoo with
/// setWatches); once it closes the session, its ephemeral goes.
#[test]
fn a_session_moves_to_another_member_with_its_ephemerals_and_watches() {
    let root = tempfile::tempdir().expect("temp dir");
    let cluster = Cluster::start(root.path(), 3, &[]);
    let pid = cluster.members[0].pid().expect("running").to_string();
    let out = kazoo(
        "zk_session_move_check.py",
        &[
            &cluster.members[0].zookeeper_address(),
            &cluster.members[1].zookeeper_address(),
            &cluster.members[2].zookeeper_address(),
            &pid,
        ],
    );
    assert!(out.contains("moved ok"), "{out}");
}

/// ZooKeeper's own command-line client (Debian's zkCli.sh), one command per run: what it
/// printed.
fn zkcli(member: &Member, command: &[&str]) -> String {
    let server = member.zookeeper_address();
    let mut args = vec!["-server", server.as_str()];
    args.extend_from_slice(command);
    // zkCli exits non-zero on a refusal; its words are what the tests check. It prints some
    // answers on stdout and others ("Created ...") on stderr.
    let (_, stdout, stderr) = run_tool(ZKCLI, &[], &args, None);
    format!("{stdout}{stderr}")
}

/// Goal: zkCli.sh, ZooKeeper's own client (Java), works unchanged.
#[test]
fn zkcli_works_unchanged() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    assert!(zkcli(&member, &["create", "/cli", "hello"]).contains("Created /cli"));
    assert!(
        zkcli(&member, &["create", "-s", "-e", "/cli/seq-", "x"])
            .contains("Created /cli/seq-0000000000")
    );
    assert!(zkcli(&member, &["get", "/cli"]).contains("hello"));
    assert!(!zkcli(&member, &["set", "/cli", "world"]).contains("Exception"));
    let stat = zkcli(&member, &["stat", "/cli"]);
    // zkCli exits without closing its session: the ephemeral stays until the session expires,
    // on ZooKeeper as here.
    for line in [
        "dataVersion = 1",
        "dataLength = 5",
        "numChildren = 1",
        "cversion = 1",
    ] {
        assert!(stat.contains(line), "{line} not in:\n{stat}");
    }
    // Null data (no data given) is told from empty data, as ZooKeeper tells them.
    assert!(zkcli(&member, &["create", "/cli/null"]).contains("Created /cli/null"));
    let is_null = |out: String| out.lines().any(|line| line == "null");
    assert!(is_null(zkcli(&member, &["get", "/cli/null"])));
    assert!(zkcli(&member, &["create", "/cli/empty", ""]).contains("Created /cli/empty"));
    assert!(!is_null(zkcli(&member, &["get", "/cli/empty"])));
    let listing = zkcli(&member, &["ls", "/"]);
    assert!(listing.contains("[cli, zookeeper]"), "{listing}");
    let refused = zkcli(&member, &["delete", "/zookeeper"]);
    assert!(
        refused.contains("Arguments are not valid : /zookeeper"),
        "{refused}"
    );
    assert!(zkcli(&member, &["delete", "/cli"]).contains("Node not empty: /cli"));
    assert!(!zkcli(&member, &["deleteall", "/cli"]).contains("Exception"));
    assert!(zkcli(&member, &["ls", "/"]).contains("[zookeeper]"));
}

/// The labels of `key: value` or `key<TAB>value` lines.
fn keys(text: &str, separator: char) -> BTreeSet<String> {
    text.lines()
        .filter_map(|line| line.split_once(separator))
        .map(|(key, _)| key.trim().to_owned())
        .collect()
}

/// Goal: monitoring that reads ZooKeeper's four-letter words reads Synod's: the same answers to
/// ruok and isro, srvr's lines labelled as ZooKeeper labels them, and every mntr and conf key
/// one that ZooKeeper 3.8 reports too; as in ZooKeeper, only the whitelisted words are answered
/// (srvr by default).
#[test]
fn four_letter_words_answer_as_zookeeper_does() {
    let root = tempfile::tempdir().expect("temp dir");
    let guarded = Member::start(&root.path().join("default"), &[]);
    assert!(four_letter(&guarded.zookeeper_address(), "srvr").contains("Mode: standalone"));
    assert_eq!(
        four_letter(&guarded.zookeeper_address(), "dump"),
        "dump is not executed because it is not in the whitelist.\n"
    );
    let member = Member::start(
        &root.path().join("open"),
        &["--zookeeper-4lw-whitelist", "*"],
    );
    let reference = ZooKeeper::start(root.path());
    let ours = member.zookeeper_address();
    let theirs = reference.address();
    for word in ["ruok", "isro"] {
        assert_eq!(
            four_letter(&ours, word),
            four_letter(&theirs, word),
            "{word}"
        );
    }
    assert_eq!(
        keys(&four_letter(&ours, "srvr"), ':'),
        keys(&four_letter(&theirs, "srvr"), ':')
    );
    let their_mntr = keys(&four_letter(&theirs, "mntr"), '\t');
    let our_mntr = four_letter(&ours, "mntr");
    assert!(
        our_mntr.starts_with("zk_version\t")
            && our_mntr.contains("\nzk_server_state\tstandalone\n")
    );
    for key in keys(&our_mntr, '\t') {
        assert!(their_mntr.contains(&key), "ZooKeeper has no mntr key {key}");
    }
    let their_conf = keys(&four_letter(&theirs, "conf"), '=');
    for key in keys(&four_letter(&ours, "conf"), '=') {
        assert!(their_conf.contains(&key), "ZooKeeper has no conf key {key}");
    }
    let mut session = RawSession::open(&ours);
    assert_eq!(session.call(-2, 11, |_| {}), 0, "ping");
    // A fresh tree counts as ZooKeeper counts it (5: its map holds the root twice).
    let node_count = |address: &str| {
        four_letter(address, "srvr")
            .lines()
            .find(|line| line.starts_with("Node count: "))
            .map(str::to_owned)
    };
    assert_eq!(node_count(&ours), node_count(&theirs));
    assert_eq!(node_count(&ours).as_deref(), Some("Node count: 5"));
    let ephemeral = session.call(1, 1, |e| {
        e.string("/mine")
            .buffer(b"")
            .int(1)
            .int(31)
            .string("world")
            .string("anyone")
            .int(1);
    });
    assert_eq!(ephemeral, 0, "create an ephemeral");
    assert!(four_letter(&ours, "mntr").contains("\nzk_ephemerals_count\t1\n"));
    let cons = four_letter(&ours, "cons");
    for field in [
        ",sid=0x",
        ",lop=CREA,",
        ",to=",
        ",lzxid=0x",
        ",llat=",
        ",avglat=",
    ] {
        assert!(cons.contains(field), "{field} not in cons:\n{cons}");
    }
    let stat = four_letter(&ours, "stat");
    assert!(
        stat.contains("\nClients:\n") && stat.contains("\nMode: standalone\n"),
        "{stat}"
    );
    let watches = four_letter(&ours, "wchs");
    assert!(watches.contains("connections watching") && watches.contains("Total watches:"));
    assert!(four_letter(&ours, "envi").starts_with("Environment:\n"));
    assert!(four_letter(&ours, "dump").starts_with("SessionTracker dump:\n"));
    assert_eq!(
        four_letter(&ours, "srst"),
        "srst is not executed because it is not in the whitelist.\n"
    );
}

/// Goal: Synod answers like ZooKeeper 3.8: random sequences of creates (persistent, ephemeral,
/// sequential), deletes, setData, reads, child listings and transactions, with versions right
/// and wrong, run against both through kazoo; every result, Stat (its versions, counts and
/// how its zxids relate) and error is compared after every step. `SYNOD_ZK_DIFF_SEEDS=a..b`
/// runs a longer campaign.
#[test]
fn answers_match_zookeeper_differentially() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let reference = ZooKeeper::start(root.path());
    let seeds = std::env::var("SYNOD_ZK_DIFF_SEEDS").unwrap_or_else(|_| "1..25".to_owned());
    let (first, last) = seeds.split_once("..").expect("SYNOD_ZK_DIFF_SEEDS is a..b");
    let out = kazoo(
        "zk_differential.py",
        &[
            &member.zookeeper_address(),
            &reference.address(),
            first,
            last,
            "120",
        ],
    );
    assert!(out.contains("differential ok"), "{out}");
}

/// Goal: one store, two APIs: etcd clients read what ZooKeeper clients wrote (a znode's data
/// is the value of its key), and ZooKeeper clients see etcd clients' writes to it.
#[test]
fn etcd_and_zookeeper_clients_share_the_tree() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let zk = member.zookeeper_address();
    let program = format!(
        "from kazoo.client import KazooClient\n\
         zk = KazooClient(hosts='{zk}'); zk.start()\n\
         zk.create('/shared', b'from-zookeeper')\n\
         zk.stop()"
    );
    assert!(run_tool("python3", &[], &["-c", &program], None).0);
    let flags = member.client_flags();
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let (ok, out, _) = run_tool(
        "etcdctl",
        &flags,
        &["get", "zk/n001/shared", "--print-value-only"],
        None,
    );
    assert!(ok && out.trim() == "from-zookeeper", "{out}");
    assert!(
        run_tool(
            "etcdctl",
            &flags,
            &["put", "zk/n001/shared", "from-etcd"],
            None
        )
        .0
    );
    let program = format!(
        "from kazoo.client import KazooClient\n\
         zk = KazooClient(hosts='{zk}'); zk.start()\n\
         data, stat = zk.get('/shared')\n\
         print(data.decode(), stat.version)\n\
         zk.stop()"
    );
    let (ok, out, err) = run_tool("python3", &[], &["-c", &program], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "from-etcd 1");
}

/// Waits up to 30 s for `file` to contain `text` `times` times.
fn wait_for_output(file: &std::path::Path, text: &str, times: usize) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let output = std::fs::read_to_string(file).unwrap_or_default();
        if output.matches(text).count() >= times {
            return output;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{text:?} did not appear {times} time(s) in:\n{output}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Goal: ZooKeeper's Java client (zkCli.sh) keeps its watch when its member dies: it reconnects
/// to another member with the same session and sends setWatches, and the change made there
/// reaches it.
#[test]
fn the_java_client_keeps_its_watches_on_another_member() {
    use std::io::Write;
    let root = tempfile::tempdir().expect("temp dir");
    let mut cluster = Cluster::start(root.path(), 3, &["--zookeeper-4lw-whitelist", "cons"]);
    assert!(zkcli(&cluster.members[2], &["create", "/w", "v0"]).contains("Created /w"));
    let output = root.path().join("zkcli.out");
    let log = std::fs::File::create(&output).expect("zkCli output");
    let servers = format!(
        "{},{}",
        cluster.members[0].zookeeper_address(),
        cluster.members[1].zookeeper_address()
    );
    let mut client = std::process::Command::new(ZKCLI)
        .args(["-server", &servers])
        .stdin(std::process::Stdio::piped())
        .stdout(log.try_clone().expect("clone"))
        .stderr(log)
        .spawn()
        .expect("zkCli.sh");
    let mut input = client.stdin.take().expect("stdin");
    wait_for_output(&output, "type:None", 1);
    writeln!(input, "get -w /w").expect("send get -w");
    wait_for_output(&output, "v0", 1);
    // The Java client picks its member at random: kill the one it is on.
    let connected = (0..2)
        .find(|&i| four_letter(&cluster.members[i].zookeeper_address(), "cons").contains(",sid=0x"))
        .expect("zkCli is connected to one of the two members");
    cluster.members[connected].kill9();
    wait_for_output(&output, "state:SyncConnected type:None", 2);
    zkcli(&cluster.members[2], &["set", "/w", "v1"]);
    let seen = wait_for_output(&output, "type:NodeDataChanged path:/w", 1);
    let _ = writeln!(input, "quit");
    let _ = client.kill();
    let _ = client.wait();
    assert!(!seen.contains("Expired"), "the session expired:\n{seen}");
}

/// Waits up to 10 s for `path` to be gone, as zkCli sees it.
fn wait_gone(member: &Member, path: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if zkcli(member, &["stat", path]).contains(&format!("Node does not exist: {path}")) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    false
}

/// Goal: a container goes once its last child does, a TTL node once unmodified and childless
/// for its TTL (with `--zookeeper-extended-types`, as ZooKeeper's extendedTypesEnabled); a
/// container that never had a child stays, and TTL nodes are refused without the flag.
#[test]
fn containers_and_ttl_nodes_are_removed_when_due() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(
        &root.path().join("extended"),
        &[
            "--zookeeper-extended-types",
            "--zookeeper-container-check-interval-ms",
            "200",
        ],
    );
    assert!(zkcli(&member, &["create", "-c", "/box"]).contains("Created /box"));
    assert!(zkcli(&member, &["create", "-c", "/never-used"]).contains("Created /never-used"));
    assert!(zkcli(&member, &["create", "/box/child"]).contains("Created /box/child"));
    assert!(zkcli(&member, &["create", "-t", "500", "/short", "x"]).contains("Created /short"));
    zkcli(&member, &["delete", "/box/child"]);
    assert!(wait_gone(&member, "/box"), "the empty container stayed");
    assert!(
        wait_gone(&member, "/short"),
        "the TTL node outlived its TTL"
    );
    assert!(zkcli(&member, &["stat", "/never-used"]).contains("numChildren = 0"));

    let plain = Member::start(&root.path().join("plain"), &[]);
    let refused = zkcli(&plain, &["create", "-t", "500", "/short", "x"]);
    assert!(refused.contains("Unimplemented"), "{refused}");
}

/// A raw ZooKeeper connection: frames written and read by hand.
struct RawSession(std::net::TcpStream);

impl RawSession {
    fn open(address: &str) -> RawSession {
        let stream = std::net::TcpStream::connect(address).expect("connect");
        stream
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .expect("timeout");
        let mut session = RawSession(stream);
        session.send(
            &synod_server::zookeeper::jute::connect_request(30_000),
            false,
        );
        session.receive();
        session
    }

    /// Writes a frame, byte by byte when `slowly`.
    fn send(&mut self, frame: &[u8], slowly: bool) {
        use std::io::Write;
        if slowly {
            for byte in frame {
                self.0.write_all(&[*byte]).expect("write");
                std::thread::sleep(std::time::Duration::from_micros(300));
            }
        } else {
            self.0.write_all(frame).expect("write");
        }
    }

    fn receive(&mut self) -> Vec<u8> {
        use std::io::Read;
        let mut length = [0u8; 4];
        self.0.read_exact(&mut length).expect("a frame's length");
        let mut body = vec![0u8; i32::from_be_bytes(length) as usize];
        self.0.read_exact(&mut body).expect("a frame's body");
        body
    }

    /// Sends request `op` with xid `xid`; the reply's error code and the events (type, path)
    /// that came before it.
    fn call_collecting(
        &mut self,
        xid: i32,
        op: i32,
        body: impl FnOnce(&mut synod_server::zookeeper::jute::Encoder),
    ) -> (i32, Vec<(i32, String)>) {
        let mut e = synod_server::zookeeper::jute::Encoder::new();
        e.int(xid).int(op);
        body(&mut e);
        self.send(&e.frame(), false);
        let mut events = Vec::new();
        loop {
            let reply = self.receive();
            if reply[..4] == xid.to_be_bytes() {
                let code = i32::from_be_bytes([reply[12], reply[13], reply[14], reply[15]]);
                return (code, events);
            }
            events.push(event_of(&reply));
        }
    }

    /// The next watch event: (type, path).
    fn next_event(&mut self) -> (i32, String) {
        event_of(&self.receive())
    }

    /// Sends request `op` with xid `xid`; the reply's error code (notifications skipped).
    fn call(
        &mut self,
        xid: i32,
        op: i32,
        body: impl FnOnce(&mut synod_server::zookeeper::jute::Encoder),
    ) -> i32 {
        let mut e = synod_server::zookeeper::jute::Encoder::new();
        e.int(xid).int(op);
        body(&mut e);
        self.send(&e.frame(), false);
        loop {
            let reply = self.receive();
            if reply[..4] == xid.to_be_bytes() {
                return i32::from_be_bytes([reply[12], reply[13], reply[14], reply[15]]);
            }
        }
    }
}

/// Goal: a one-shot watch fires only for changes after the read that set it. A connection that
/// already follows the tree (another watch) may still have events for changes its read already
/// showed on their way to it; they must not fire, and use up, the watch just set (the client
/// registers its watcher only with the reply, so it would lose the event, and the real one).
/// Whether such an event is still on its way when the read is served is up to timing here;
/// `zookeeper::watches::tests` checks the rule itself.
#[test]
fn a_watch_set_by_a_read_ignores_changes_the_read_showed() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let address = member.zookeeper_address();
    let mut reader = RawSession::open(&address);
    let mut writer = RawSession::open(&address);
    let open_acl = |e: &mut synod_server::zookeeper::jute::Encoder| {
        e.int(1).int(31).string("world").string("anyone");
    };
    let create = |session: &mut RawSession, xid: i32, path: &str| {
        session.call(xid, 1, |e| {
            e.string(path).buffer(b"");
            open_acl(e);
            e.int(0);
        })
    };
    assert_eq!(create(&mut writer, 1, "/other"), 0);
    assert_eq!(create(&mut writer, 2, "/lock"), 0);
    // The reader follows the tree for another reason: a persistent watch elsewhere.
    assert_eq!(
        reader.call(1, 106, |e| {
            e.string("/other").int(0);
        }),
        0
    );
    let mut xid = 2;
    for round in 0..20 {
        xid += 1;
        let child = format!("/lock/a{round}");
        assert_eq!(create(&mut writer, xid, &child), 0);
        // getChildren with a watch, right after the change it shows.
        let (code, stale) = reader.call_collecting(xid, 8, |e| {
            e.string("/lock").bool(true);
        });
        assert_eq!(code, 0);
        assert!(
            stale.is_empty(),
            "round {round}: events before the reply: {stale:?}"
        );
        // Nothing more comes for it; the next change fires it.
        xid += 1;
        assert_eq!(create(&mut writer, xid, &format!("/lock/b{round}")), 0);
        let fired = reader.next_event();
        assert_eq!(fired, (4, "/lock".to_owned()), "round {round}");
    }
}

/// Goal: a request that arrives a byte at a time while watch events are being sent is read
/// whole: waiting for a request gives way to events without losing what was half read.
#[test]
fn requests_read_across_watch_events_stay_whole() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let address = member.zookeeper_address();
    let mut watcher = RawSession::open(&address);
    let created = watcher.call(1, 1, |e| {
        e.string("/t")
            .buffer(b"")
            .int(1)
            .int(31)
            .string("world")
            .string("anyone")
            .int(0);
    });
    assert_eq!(created, 0);
    assert_eq!(
        watcher.call(2, 106, |e| {
            e.string("/t").int(0);
        }),
        0,
        "addWatch"
    );
    let writer_address = address.clone();
    let writer = std::thread::spawn(move || {
        let mut writer = RawSession::open(&writer_address);
        for xid in 1..=400 {
            let code = writer.call(xid, 5, |e| {
                e.string("/t").buffer(b"changed").int(-1);
            });
            assert_eq!(code, 0, "setData");
        }
    });
    let mut pings = 0;
    let mut events = 0;
    let mut ping = synod_server::zookeeper::jute::Encoder::new();
    ping.int(-2).int(11);
    let ping = ping.frame();
    for _ in 0..60 {
        watcher.send(&ping, true);
        loop {
            let frame = watcher.receive();
            match i32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) {
                -1 => events += 1,
                -2 => {
                    pings += 1;
                    break;
                }
                other => panic!("a frame with xid {other}"),
            }
        }
    }
    writer.join().expect("the writer");
    assert_eq!(pings, 60);
    assert!(events > 0, "no event arrived while the pings were written");
}

/// Goal: a watch event about a node the watcher may not read is not sent (ZooKeeper 3.8.4's
/// ZOOKEEPER-4799): an unauthenticated client watching for a node learns nothing when alice
/// creates it readable only by her, and learns of a node anyone may read.
#[test]
fn watch_events_need_read_permission() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let zk = member.zookeeper_address();
    let program = format!(
        r#"
import threading, time
from kazoo.client import KazooClient
from kazoo.security import OPEN_ACL_UNSAFE, make_digest_acl
stranger = KazooClient(hosts='{zk}'); stranger.start()
alice = KazooClient(hosts='{zk}', auth_data=[('digest', 'alice:secret')]); alice.start()
events = []
stranger.exists('/private', watch=events.append)
stranger.exists('/public', watch=events.append)
alice.create('/private', b'', acl=[make_digest_acl('alice', 'secret', all=True)])
alice.create('/public', b'', acl=OPEN_ACL_UNSAFE)
deadline = time.time() + 5
while not events and time.time() < deadline:
    time.sleep(0.05)
time.sleep(0.5)
print(sorted(e.path for e in events))
"#
    );
    let (ok, out, err) = run_tool("python3", &[], &["-c", &program], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "['/public']");
}

/// Goal: the super user named by `--zookeeper-super-digest` passes every ACL (ZooKeeper's
/// superDigest); anyone else is refused.
#[test]
fn the_super_digest_passes_every_acl() {
    let digest =
        "from kazoo.security import make_digest_acl_credential as d; print(d('super', 'pw'))";
    let (ok, digest, err) = run_tool("python3", &[], &["-c", digest], None);
    assert!(ok, "{err}");
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &["--zookeeper-super-digest", digest.trim()]);
    let zk = member.zookeeper_address();
    let program = format!(
        r#"
from kazoo.client import KazooClient
from kazoo.exceptions import NoAuthError
from kazoo.security import make_digest_acl
alice = KazooClient(hosts='{zk}', auth_data=[('digest', 'alice:secret')]); alice.start()
alice.create('/private', b'hers', acl=[make_digest_acl('alice', 'secret', all=True)])
stranger = KazooClient(hosts='{zk}', auth_data=[('digest', 'super:wrong')]); stranger.start()
try:
    stranger.get('/private'); raise SystemExit('a wrong super password was let in')
except NoAuthError:
    pass
root = KazooClient(hosts='{zk}', auth_data=[('digest', 'super:pw')]); root.start()
print(root.get('/private')[0].decode(), root.get_acls('/private')[0][0].id.id != 'alice:x')
root.delete('/private')
"#
    );
    let (ok, out, err) = run_tool("python3", &[], &["-c", &program], None);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "hers True");
}

/// Goal: the nodes every tree has look as on a fresh ZooKeeper 3.8: the same Stat (zero zxids
/// and times, cversion -1 on `/` and -2 on `/zookeeper`, aversion -1 on `/zookeeper/config`),
/// ACLs and children.
#[test]
fn the_built_in_nodes_look_as_on_zookeeper() {
    let root = tempfile::tempdir().expect("temp dir");
    let member = Member::start(root.path(), &[]);
    let reference = ZooKeeper::start(root.path());
    let program = r#"
import sys
from kazoo.client import KazooClient
zk = KazooClient(hosts=sys.argv[1]); zk.start()
for path in ["/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"]:
    print(path, tuple(zk.exists(path)), zk.get_acls(path)[0], sorted(zk.get_children(path)))
zk.stop()
"#;
    let show = |address: &str| {
        let (ok, out, err) = run_tool("python3", &[], &["-c", program, address], None);
        assert!(ok, "{err}");
        out
    };
    assert_eq!(
        show(&member.zookeeper_address()),
        show(&reference.address())
    );
}

/// A notification frame's (type, path).
fn event_of(frame: &[u8]) -> (i32, String) {
    let mut d = synod_server::zookeeper::jute::Decoder::new(frame);
    assert_eq!(d.int(), Ok(-1), "a notification");
    let _zxid = d.long();
    let _err = d.int();
    let kind = d.int().expect("type");
    let _state = d.int();
    (kind, d.string().expect("path"))
}
