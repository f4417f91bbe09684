//! `synod bench zookeeper`: ZooKeeper's wire protocol, so the same command measures Synod's
//! ZooKeeper port and a ZooKeeper server. Each client is one connection (one session) with one
//! request outstanding, as a synchronous ZooKeeper client is.
//!
//! - `create`: creates of `--val-size` bytes, each a new node.
//! - `get`: getData of one node.
//! - `set`: setData to nodes drawn from `--key-space-size`.
//! - `watch-fanout`: `--clients` connections each hold a persistent watch (addWatch) on one node
//!   while one more connection sets it `--total` times, every `--interval-ms`; measures the time
//!   from each setData's sending to each watcher's event, and counts missing events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use hdrhistogram::Histogram;
use synod_client::ClientError;
use synod_server::zookeeper::frame;
use synod_server::zookeeper::jute::{self, Decoder, Encoder};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{Random, Summary, exit_code, new_histogram, other, value_of};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Operation {
    Create,
    Get,
    Set,
    WatchFanout,
}

pub struct Load {
    pub servers: Vec<String>,
    pub operation: Operation,
    pub clients: usize,
    pub total: u64,
    pub val_size: usize,
    pub key_space_size: u64,
    pub interval_ms: u64,
}

const OP_CREATE: i32 = 1;
const OP_GET_DATA: i32 = 4;
const OP_SET_DATA: i32 = 5;
const OP_ADD_WATCH: i32 = 106;
const NODE_EXISTS: i32 = -110;

/// One ZooKeeper session over one connection.
struct Connection {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    xid: i32,
}

impl Connection {
    async fn open(server: &str) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect(server)
            .await
            .map_err(|e| other(format!("connecting to {server}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (reader, mut writer) = stream.into_split();
        writer
            .write_all(&jute::connect_request(30_000))
            .await
            .map_err(|e| other(e.to_string()))?;
        let mut reader = BufReader::new(reader);
        let answer = read(&mut reader).await?;
        let mut d = Decoder::new(&answer);
        let _version = d.int().map_err(|e| other(e.to_string()))?;
        let timeout = d.int().map_err(|e| other(e.to_string()))?;
        if timeout <= 0 {
            return Err(other(format!("{server} refused the session")));
        }
        Ok(Connection {
            reader,
            writer,
            xid: 0,
        })
    }

    /// Sends one request and waits for its reply: its error code.
    async fn call(&mut self, op: i32, body: impl FnOnce(&mut Encoder)) -> Result<i32, ClientError> {
        self.xid += 1;
        let mut e = Encoder::new();
        e.int(self.xid).int(op);
        body(&mut e);
        self.writer
            .write_all(&e.frame())
            .await
            .map_err(|e| other(e.to_string()))?;
        loop {
            let reply = read(&mut self.reader).await?;
            let mut d = Decoder::new(&reply);
            let xid = d.int().map_err(|e| other(e.to_string()))?;
            if xid != self.xid {
                continue; // a notification
            }
            let _zxid = d.long().map_err(|e| other(e.to_string()))?;
            return d.int().map_err(|e| other(e.to_string()));
        }
    }

    /// Waits for the next watch notification.
    async fn event(&mut self) -> Result<(), ClientError> {
        loop {
            let frame = read(&mut self.reader).await?;
            if frame.get(..4) == Some(&(-1i32).to_be_bytes()[..]) {
                return Ok(());
            }
        }
    }
}

async fn read(reader: &mut BufReader<OwnedReadHalf>) -> Result<Vec<u8>, ClientError> {
    frame::read(reader, 64 << 20)
        .await
        .map_err(|e| other(e.to_string()))
}

fn ok(code: i32, what: &str) -> Result<(), ClientError> {
    if code == 0 {
        Ok(())
    } else {
        Err(other(format!("{what}: ZooKeeper error {code}")))
    }
}

pub async fn run(load: Load, json: bool) -> Result<std::process::ExitCode, ClientError> {
    if load.servers.is_empty() {
        return Err(other("--servers names no server"));
    }
    let base = format!("/synod-bench-{}", std::process::id());
    let mut setup = Connection::open(&load.servers[0]).await?;
    let value = value_of(0, load.val_size);
    create(&mut setup, &base, &[]).await?;
    for k in 0..load.key_space_size.max(1) {
        create(&mut setup, &format!("{base}/k{k}"), &value).await?;
    }
    if let Operation::WatchFanout = load.operation {
        return watch_fanout(load, setup, &base, json).await;
    }
    let mut connections = Vec::with_capacity(load.clients.max(1));
    for i in 0..load.clients.max(1) {
        connections.push(Connection::open(&load.servers[i % load.servers.len()]).await?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (index, mut connection) in connections.into_iter().enumerate() {
        let (issued, failed) = (issued.clone(), failed.clone());
        let (base, value) = (base.clone(), value.clone());
        let (operation, total, space) = (load.operation, load.total, load.key_space_size.max(1));
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram()?;
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let began = Instant::now();
                let code = match operation {
                    Operation::Create => {
                        let path = format!("{base}/c-{index}-{n}");
                        connection
                            .call(OP_CREATE, |e| {
                                e.string(&path).buffer(&value);
                                open_acl(e);
                                e.int(0);
                            })
                            .await?
                    }
                    Operation::Get => {
                        let path = format!("{base}/k0");
                        connection
                            .call(OP_GET_DATA, |e| {
                                e.string(&path).bool(false);
                            })
                            .await?
                    }
                    _ => {
                        let path = format!("{base}/k{}", random.next() % space);
                        connection
                            .call(OP_SET_DATA, |e| {
                                e.string(&path).buffer(&value).int(-1);
                            })
                            .await?
                    }
                };
                if code == 0 {
                    let _ = histogram.record((began.elapsed().as_micros() as u64).max(1));
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok::<_, ClientError>(histogram)
        }));
    }
    let histogram = merge(tasks).await?;
    let summary = Summary {
        name: match load.operation {
            Operation::Create => "zk-create",
            Operation::Get => "zk-get",
            _ => "zk-set",
        },
        clients: load.clients,
        histogram: &histogram,
        failed: failed.load(Ordering::Relaxed),
        elapsed: started.elapsed(),
        extra: serde_json::Map::new(),
    };
    summary.print(json);
    Ok(exit_code(summary.failed == 0))
}

fn open_acl(e: &mut Encoder) {
    e.int(1).int(31).string("world").string("anyone");
}

async fn create(connection: &mut Connection, path: &str, value: &[u8]) -> Result<(), ClientError> {
    let code = connection
        .call(OP_CREATE, |e| {
            e.string(path).buffer(value);
            open_acl(e);
            e.int(0);
        })
        .await?;
    if code == NODE_EXISTS {
        return Ok(());
    }
    ok(code, path)
}

async fn merge(
    tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>, ClientError>>>,
) -> Result<Histogram<u64>, ClientError> {
    let mut histogram = new_histogram()?;
    for task in tasks {
        let part = task.await.map_err(|e| other(e.to_string()))??;
        histogram.add(part).map_err(|e| other(e.to_string()))?;
    }
    Ok(histogram)
}

async fn watch_fanout(
    load: Load,
    mut writer: Connection,
    base: &str,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let path = format!("{base}/k0");
    let watchers = load.clients.max(1);
    let total = load.total;
    // Send times of the writes, in µs since `started`, by sequence.
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..total).map(|_| AtomicU64::new(0)).collect());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let mut connection = Connection::open(&load.servers[i % load.servers.len()]).await?;
        let code = connection
            .call(OP_ADD_WATCH, |e| {
                e.string(&path).int(0);
            })
            .await?;
        ok(code, "addWatch")?;
        let sent = sent.clone();
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram()?;
            let mut missing = 0u64;
            for n in 0..total {
                match tokio::time::timeout(Duration::from_secs(10), connection.event()).await {
                    Ok(Ok(())) => {
                        let now = started.elapsed().as_micros() as u64;
                        let at = sent[n as usize].load(Ordering::Relaxed);
                        let _ = histogram.record(now.saturating_sub(at).max(1));
                    }
                    _ => {
                        missing += total - n;
                        break;
                    }
                }
            }
            Ok::<_, ClientError>((histogram, missing))
        }));
    }
    let value = value_of(0, load.val_size);
    let mut failed = 0;
    for n in 0..total {
        sent[n as usize].store(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        let code = writer
            .call(OP_SET_DATA, |e| {
                e.string(&path).buffer(&value).int(-1);
            })
            .await?;
        if code != 0 {
            failed += 1;
        }
        tokio::time::sleep(Duration::from_millis(load.interval_ms)).await;
    }
    let mut histogram = new_histogram()?;
    let mut missing = 0;
    for task in tasks {
        let (part, lost) = task.await.map_err(|e| other(e.to_string()))??;
        histogram.add(part).map_err(|e| other(e.to_string()))?;
        missing += lost;
    }
    let mut extra = serde_json::Map::new();
    extra.insert("missing_events".to_owned(), missing.into());
    let summary = Summary {
        name: "zk-watch-fanout",
        clients: watchers,
        histogram: &histogram,
        failed,
        elapsed: started.elapsed(),
        extra,
    };
    summary.print(json);
    Ok(exit_code(failed == 0 && missing == 0))
}
