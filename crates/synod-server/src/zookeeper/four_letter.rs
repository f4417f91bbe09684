//! ZooKeeper's four-letter words, recognised in the first four bytes of a connection, answered
//! in ZooKeeper's formats (so monitoring that parses them works), then the connection closes.
//! As in ZooKeeper, only the words of `--zookeeper-4lw-whitelist` are answered (`srvr` by
//! default); the others, and those that would change the server, get ZooKeeper's "not in the
//! whitelist" line.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use synod_core::mvcc::kv_store::RangeOptions;
use synod_core::zk;

use super::Front;

/// The version `srvr` and `mntr` report: the protocol's, then Synod's own.
fn version() -> String {
    format!(
        "3.8.4-synod-{}, built on {}",
        env!("CARGO_PKG_VERSION"),
        "synod"
    )
}

const ANSWERED: [&str; 10] = [
    "ruok", "srvr", "stat", "mntr", "cons", "wchs", "conf", "envi", "isro", "dump",
];
const REFUSED: [&str; 8] = [
    "crst", "srst", "dirs", "gtmk", "stmk", "wchc", "wchp", "hash",
];

/// The word in a connection's first four bytes, if it is one.
pub fn word(head: [u8; 4]) -> Option<&'static str> {
    let text = std::str::from_utf8(&head).ok()?;
    ANSWERED
        .iter()
        .chain(REFUSED.iter())
        .find(|word| **word == text)
        .copied()
}

/// The answer to `word`.
pub fn answer(front: &Front, word: &str) -> String {
    let allowed = front
        .settings()
        .four_letter_words
        .as_ref()
        .is_none_or(|listed| listed.iter().any(|w| w == word));
    if !allowed {
        return refused(word);
    }
    match word {
        "ruok" => "imok".to_owned(),
        "isro" => "rw".to_owned(),
        "srvr" => server(front, false),
        "stat" => server(front, true),
        "mntr" => monitor(front),
        "cons" => connections(front, true),
        "wchs" => watches(front),
        "conf" => configuration(front),
        "envi" => environment(),
        "dump" => dump(front),
        other => refused(other),
    }
}

fn refused(word: &str) -> String {
    format!("{word} is not executed because it is not in the whitelist.\n")
}

fn mode(front: &Front) -> &'static str {
    let member = front.member();
    if member.members().map(|m| m.len()).unwrap_or(1) <= 1 {
        "standalone"
    } else if member.is_leader() {
        "leader"
    } else {
        "follower"
    }
}

/// Nodes in the tree, counted as ZooKeeper counts them: its node map holds the root twice (as
/// `""` and `/`), so a fresh server reports 5. The built-in nodes are written with the first
/// session (a member that never serves a ZooKeeper client leaves its keyspace as etcd's), and
/// count before that as they will after.
fn node_count(front: &Front) -> i64 {
    let options = RangeOptions {
        count_only: true,
        ..RangeOptions::default()
    };
    front
        .member()
        .machine
        .store
        .range(zk::DATA_PREFIX, &zk::prefix_end(zk::DATA_PREFIX), options)
        .map(|r| r.count.max(zk::BUILT_IN.len() as i64) + 1)
        .unwrap_or(0)
}

fn zxid(front: &Front) -> i64 {
    front.member().machine.store.current_revision()
}

fn server(front: &Front, with_clients: bool) -> String {
    let (min, avg, max) = front.latencies();
    let mut out = format!("Zookeeper version: {}\n", version());
    if with_clients {
        out.push_str("Clients:\n");
        out.push_str(&connections(front, false));
    }
    let _ = write!(
        out,
        "Latency min/avg/max: {min}/{avg:.4}/{max}\nReceived: {}\nSent: {}\nConnections: {}\n\
         Outstanding: 0\nZxid: 0x{:x}\nMode: {}\nNode count: {}\n",
        front.received.load(Ordering::Relaxed),
        front.sent.load(Ordering::Relaxed),
        front.connection_stats().len(),
        zxid(front),
        mode(front),
        node_count(front),
    );
    out
}

/// One line per connection (with `detail`, `cons`'s fields), then a blank line.
fn connections(front: &Front, detail: bool) -> String {
    let mut out = String::new();
    for c in front.connection_stats() {
        let _ = write!(
            out,
            " /{}[1](queued=0,recved={},sent={}",
            c.remote,
            c.received.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed)
        );
        let session = c.session.load(Ordering::Relaxed);
        if detail && session != 0 {
            let last = c.last();
            let established = super::command::now_ms() - c.started.elapsed().as_millis() as i64;
            let (min, average, max) = last.latencies.min_avg_max();
            let _ = write!(
                out,
                ",sid=0x{session:x},lop={},est={established},to={},lcxid=0x{:x},lzxid=0x{:x},\
                 lresp={},llat={},minlat={},avglat={average:.4},maxlat={}",
                operation_name(last.op),
                c.timeout_ms.load(Ordering::Relaxed),
                last.xid,
                last.zxid,
                last.response_ms,
                last.latency_ms,
                min,
                max,
            );
        }
        out.push_str(")\n");
    }
    out.push('\n');
    out
}

/// The short name ZooKeeper's `cons` gives an operation (`lop`).
fn operation_name(op: i32) -> &'static str {
    match op {
        0 => "NA",
        1 => "CREA",
        2 => "DELE",
        3 => "EXIS",
        4 => "GETD",
        5 => "SETD",
        6 => "GETA",
        7 => "SETA",
        8 | 12 => "GETC",
        9 => "SYNC",
        11 => "PING",
        13 => "CHEC",
        14 => "MULT",
        15 => "CRE2",
        17 | 18 => "REMW",
        19 => "CRCT",
        21 => "CRTT",
        22 => "MLTR",
        100 => "AUTH",
        101 | 105 => "SETW",
        103 => "GETE",
        104 => "GTAC",
        106 => "ADDW",
        107 => "WHOA",
        -11 => "CLOS",
        _ => "UNKN",
    }
}

fn monitor(front: &Front) -> String {
    let (min, avg, max) = front.latencies();
    let member = front.member();
    let connections = front.connection_stats();
    let watches: u64 = connections
        .iter()
        .map(|c| c.watches.load(Ordering::Relaxed))
        .sum();
    // Only sessions' leases hold ephemerals: a member with many etcd leases pays nothing here.
    let ephemerals = super::session::live_sessions(member)
        .into_iter()
        .filter_map(|id| member.machine.lessor.info(id))
        .map(|info| {
            info.keys
                .iter()
                .filter(|k| k.starts_with(zk::DATA_PREFIX))
                .count()
        })
        .sum::<usize>();
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "zk_{key}\t{value}");
    };
    line("version", version());
    line("server_state", mode(front).to_owned());
    line("avg_latency", format!("{avg:.4}"));
    line("max_latency", max.to_string());
    line("min_latency", min.to_string());
    line(
        "packets_received",
        front.received.load(Ordering::Relaxed).to_string(),
    );
    line(
        "packets_sent",
        front.sent.load(Ordering::Relaxed).to_string(),
    );
    line("num_alive_connections", connections.len().to_string());
    line("outstanding_requests", "0".to_owned());
    line("uptime", front.started.elapsed().as_millis().to_string());
    line("znode_count", node_count(front).to_string());
    line("watch_count", watches.to_string());
    line("ephemerals_count", ephemerals.to_string());
    line(
        "approximate_data_size",
        member.machine.backend.size_bytes().to_string(),
    );
    line("global_sessions", front.sessions.count().to_string());
    line("local_sessions", "0".to_owned());
    let (open, max_open) = descriptors();
    line("open_file_descriptor_count", open.to_string());
    line("max_file_descriptor_count", max_open.to_string());
    line("auth_failed_count", "0".to_owned());
    out
}

/// Open file descriptors and their limit, from /proc on Linux.
fn descriptors() -> (usize, u64) {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(0);
    (open, limit)
}

fn watches(front: &Front) -> String {
    let connections = front.connection_stats();
    let watching: Vec<_> = connections
        .iter()
        .filter(|c| c.watches.load(Ordering::Relaxed) > 0)
        .collect();
    let total: u64 = watching
        .iter()
        .map(|c| c.watches.load(Ordering::Relaxed))
        .sum();
    format!(
        "{} connections watching {} paths\nTotal watches:{}\n",
        watching.len(),
        total,
        total
    )
}

fn configuration(front: &Front) -> String {
    let settings = front.settings();
    let member = front.member();
    let port = settings
        .address
        .rsplit_once(':')
        .map_or("", |(_, port)| port);
    format!(
        "clientPort={port}\nsecureClientPort=-1\ndataDir={}\ndataDirSize=0\ndataLogDir={}\n\
         dataLogSize=0\ntickTime=3000\nmaxClientCnxns=0\nminSessionTimeout={}\n\
         maxSessionTimeout={}\nclientPortListenBacklog=-1\nserverId={}\n",
        member.config.data_dir.display(),
        member.config.data_dir.display(),
        settings.min_session_timeout_ms,
        settings.max_session_timeout_ms,
        member.member_id,
    )
}

fn environment() -> String {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .unwrap_or_default()
    };
    format!(
        "Environment:\nzookeeper.version={}\nhost.name={}\nos.name={}\nos.arch={}\nos.version={}\n\
         user.dir={}\n",
        version(),
        read("/proc/sys/kernel/hostname"),
        std::env::consts::OS,
        std::env::consts::ARCH,
        read("/proc/sys/kernel/osrelease"),
        std::env::current_dir()
            .map(|d| d.display().to_string())
            .unwrap_or_default(),
    )
}

fn dump(front: &Front) -> String {
    let member = front.member();
    let mut out = String::from("SessionTracker dump:\n");
    let mut ephemerals = String::new();
    for c in front.connection_stats() {
        let session = c.session.load(Ordering::Relaxed);
        if session == 0 {
            continue;
        }
        let _ = writeln!(out, "\t0x{session:x}");
        if let Some(info) = member.machine.lessor.info(session) {
            let paths: Vec<&str> = info.keys.iter().filter_map(|k| zk::path_of(k)).collect();
            if !paths.is_empty() {
                let _ = writeln!(ephemerals, "0x{session:x}:");
                for path in paths {
                    let _ = writeln!(ephemerals, "\t{path}");
                }
            }
        }
    }
    out.push_str("ephemeral nodes dump:\n");
    out.push_str(&ephemerals);
    out.push_str("Connections dump:\n");
    out.push_str(&connections(front, true));
    out
}
