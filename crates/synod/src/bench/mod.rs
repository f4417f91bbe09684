//! `synod bench`: a load generator in the style of etcd's `benchmark` tool. It speaks only etcd's
//! wire protocol, so the same command measures Synod and etcd. Clients share `--conns`
//! connections (one each by default); latencies go into an HDR histogram; the summary gives
//! throughput and percentiles, as text or as one JSON object (`--json`) for scripts such as
//! `bench/compare`. Request/response workloads live here; watch and lease keep-alive streams in
//! [`streams`].

mod election;
mod kubernetes;
mod streams;
mod summary;
mod values;
mod zookeeper;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use synod_client::etcdserverpb::{PutRequest, RangeRequest, RequestOp, TxnRequest, request_op};
use synod_client::recipes::Session;
use synod_client::v3lockpb::{LockRequest, UnlockRequest};
use synod_client::{Client, ClientError};

use summary::{Summary, exit_code, new_histogram, progress_bar};
use values::{Random, key_of, pick_key, random_bytes, value_of};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients (for watch workloads: streams), spread over the connections.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Connections, spread over the endpoints (0: one per client).
    #[arg(long, default_value_t = 0)]
    conns: usize,
    /// Operations in total (for election-failover: rounds; for watch workloads: writes).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
    /// Operations per second over all clients (0: as fast as they go).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// After a put workload, read every key back: each must hold the last acknowledged write
    /// or a later one.
    #[arg(long)]
    verify: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Debug, Subcommand)]
enum Workload {
    /// Puts of `--val-size` bytes to keys drawn from `--key-space-size` keys.
    Put {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// Keys in order instead of at random.
        #[arg(long)]
        sequential_keys: bool,
    },
    /// Txns of `--txn-ops` puts each, to keys drawn from `--key-space-size` keys.
    TxnPut {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        #[arg(long, default_value_t = 1)]
        txn_ops: usize,
        /// Keys in order instead of from a random start: txn `n` puts keys `n * txn_ops` on
        /// (a fast way to load `--key-space-size` distinct keys).
        #[arg(long)]
        sequential_keys: bool,
        /// Added to every key number (to load keys above those already there).
        #[arg(long, default_value_t = 0)]
        first_key: u64,
    },
    /// Txns that either read or write one key from `--key-space-size` keys, `--rw-ratio` reads
    /// per write (etcd's txn-mixed).
    TxnMixed {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        #[arg(long, default_value_t = 1.0)]
        rw_ratio: f64,
        /// l (linearizable) or s (serializable) reads.
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Reads of keys drawn at random from `--key-space-size` keys, named as `put` names them.
    Get {
        #[arg(long, default_value_t = 8)]
        key_size: usize,
        #[arg(long, default_value_t = 1)]
        key_space_size: u64,
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Reads of one key.
    Range {
        #[arg(default_value = "foo")]
        key: String,
        /// l (linearizable) or s (serializable).
        #[arg(long, default_value = "l")]
        consistency: String,
    },
    /// Lock/unlock cycles on one lock through the Lock service (etcd's `v3lock`), every client
    /// on a lease of its own.
    Lock {
        #[arg(long, default_value = "bench-lock")]
        name: String,
    },
    /// Time from a leader's death (its lease stops being renewed) until the next campaigner is
    /// elected, through the Election service; `--total` rounds.
    ElectionFailover {
        /// TTL of each campaigner's lease, in seconds.
        #[arg(long, default_value_t = 2)]
        ttl: i64,
    },
    /// `--watchers` watchers of a key prefix over `--clients` streams while a writer puts
    /// `--total` values (at `--rate`, default 1,000/s, up to 256 outstanding) to
    /// `--key-space-size` keys; measures put-to-event latency and counts missing, duplicate and
    /// out-of-revision-order events (must be 0).
    Watch {
        #[arg(long, default_value_t = 100)]
        watchers: usize,
        #[arg(long, default_value_t = 16)]
        key_space_size: u64,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
    },
    /// What kube-apiserver sends: 1-10 KiB objects under /registry/<kind>/<ns>/<name>, creates
    /// and optimistic-concurrency updates and deletes as txns on mod_revision, paginated lists
    /// at a revision, a watch per kind with progress notifications, events on a lease, and a
    /// compactor; `--objects` are created first, then `--total` operations are measured.
    Kubernetes {
        #[arg(long, default_value_t = 10_000)]
        objects: u64,
        #[arg(long, default_value_t = 20)]
        namespaces: u64,
    },
    /// ZooKeeper's protocol against `--servers` (a Synod member's ZooKeeper port, or
    /// ZooKeeper): create, get, set or watch-fanout, one connection and session per client.
    Zookeeper {
        #[arg(value_enum)]
        operation: zookeeper::Operation,
        /// ZooKeeper addresses (HOST:PORT), comma-separated.
        #[arg(long, default_value = "127.0.0.1:2181")]
        servers: String,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
        #[arg(long, default_value_t = 16)]
        key_space_size: u64,
        /// watch-fanout: time between writes.
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
    },
    /// `--watchers` watchers of one key over `--clients` streams, one write every
    /// `--interval-ms`; the same measures as `watch`.
    WatchFanout {
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        #[arg(long, default_value_t = 10)]
        interval_ms: u64,
        #[arg(long, default_value_t = 256)]
        val_size: usize,
    },
    /// Opens `--conns` connections (one per client when 0), sends one read on each, prints a
    /// JSON line once all have answered, then holds them open and idle for `--hold-secs`
    /// (for measuring what an idle client connection costs a server).
    Idle {
        #[arg(long, default_value_t = 60)]
        hold_secs: u64,
    },
    /// `--leases` leases, each renewed over keep-alive streams (one per client) until `--total`
    /// renewals are done; measures renewal latency; a lease lost (TTL 0, or gone at the end) is
    /// an error.
    LeaseKeepalive {
        #[arg(long, default_value_t = 1_000)]
        leases: usize,
        /// TTL of each lease, in seconds.
        #[arg(long, default_value_t = 10)]
        ttl: i64,
    },
}

/// The members to load and how to reach them (TLS, credentials).
pub struct Target {
    pub endpoints: Vec<String>,
    pub dial: synod_client::Dial,
}

/// Connections for `clients` clients: `conns` of them (one per client when 0), spread over the
/// endpoints; client `i` uses connection `i % conns`.
async fn connect_all(
    target: &Target,
    clients: usize,
    conns: usize,
) -> Result<Vec<Client>, ClientError> {
    let count = if conns == 0 {
        clients
    } else {
        conns.min(clients)
    }
    .max(1);
    let mut connections = Vec::new();
    for i in 0..count {
        let endpoint = &target.endpoints[i % target.endpoints.len()];
        connections.push(Client::connect(endpoint, target.dial.clone()).await?);
    }
    Ok((0..clients.max(1))
        .map(|i| connections[i % connections.len()].clone())
        .collect())
}

/// Spreads `--rate` operations per second over every client: operation `n` waits for its slot.
async fn pace(started: Instant, rate: u64, n: u64) {
    if rate == 0 {
        return;
    }
    let slot = started + Duration::from_secs_f64(n as f64 / rate as f64);
    tokio::time::sleep_until(slot.into()).await;
}

/// The newest acknowledged write of each key, for `--verify`.
type Acknowledged = Mutex<BTreeMap<Vec<u8>, (i64, Vec<u8>)>>;

fn other(message: impl Into<String>) -> ClientError {
    ClientError::Other(message.into())
}

pub async fn run(target: &Target, args: BenchArgs) -> Result<std::process::ExitCode, ClientError> {
    match args.workload {
        Workload::ElectionFailover { ttl } => {
            return election::election_failover(target, args.total, ttl, args.json).await;
        }
        Workload::Watch {
            watchers,
            key_space_size,
            val_size,
        } => {
            let rate = if args.rate == 0 { 1_000 } else { args.rate };
            let load = streams::WatchLoad {
                name: "watch",
                watchers,
                streams: args.clients,
                conns: args.conns,
                keys: key_space_size.max(1),
                writes: args.total,
                rate,
                val_size,
            };
            return streams::watch(target, load, args.json).await;
        }
        Workload::WatchFanout {
            watchers,
            interval_ms,
            val_size,
        } => {
            let load = streams::WatchLoad {
                name: "watch-fanout",
                watchers,
                streams: args.clients,
                conns: args.conns,
                keys: 1,
                writes: args.total,
                rate: 1_000 / interval_ms.max(1),
                val_size,
            };
            return streams::watch(target, load, args.json).await;
        }
        Workload::Kubernetes {
            objects,
            namespaces,
        } => {
            let load = kubernetes::Load {
                clients: args.clients,
                conns: args.conns,
                total: args.total,
                objects,
                namespaces,
            };
            return kubernetes::run(target, load, args.json).await;
        }
        Workload::Zookeeper {
            operation,
            servers,
            val_size,
            key_space_size,
            interval_ms,
        } => {
            let load = zookeeper::Load {
                servers: servers
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                operation,
                clients: args.clients,
                total: args.total,
                val_size,
                key_space_size,
                interval_ms,
            };
            return zookeeper::run(load, args.json).await;
        }
        Workload::LeaseKeepalive { leases, ttl } => {
            let load = streams::KeepAliveLoad {
                leases,
                ttl,
                streams: args.clients,
                conns: args.conns,
                renewals: args.total,
                rate: args.rate,
            };
            return streams::lease_keepalive(target, load, args.json).await;
        }
        Workload::Idle { hold_secs } => {
            return idle(target, args.clients, args.conns, hold_secs).await;
        }
        _ => {}
    }
    let clients = connect_all(target, args.clients, args.conns).await?;
    let verify_client = clients[0].clone();
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let acknowledged: Arc<Acknowledged> = Arc::default();
    let verify = args.verify;
    let workload = Arc::new(args.workload);
    let started = Instant::now();
    let rate = args.rate;
    let progress = tokio::spawn(progress_bar(issued.clone(), args.total, args.json));
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let (issued, failed, workload) = (issued.clone(), failed.clone(), workload.clone());
        let acknowledged = verify.then(|| acknowledged.clone());
        let total = args.total;
        tasks.push(tokio::spawn(async move {
            let mut histogram = new_histogram()?;
            let mut random = Random(0x9e37_79b9_7f4a_7c15 ^ (index as u64 + 1));
            let lease = match &*workload {
                Workload::Lock { .. } => Some(Session::new(&client, 30).await?),
                _ => None,
            };
            loop {
                let n = issued.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                pace(started, rate, n).await;
                let began = Instant::now();
                let outcome = one(
                    &client,
                    &workload,
                    n,
                    &mut random,
                    lease.as_ref().map(Session::lease),
                    acknowledged.as_deref(),
                )
                .await;
                match outcome {
                    Ok(()) => {
                        let micros = began.elapsed().as_micros() as u64;
                        let _ = histogram.record(micros.max(1));
                    }
                    Err(_) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            if let Some(session) = lease {
                let _ = session.close().await;
            }
            Ok::<_, ClientError>(histogram)
        }));
    }
    let mut histogram = new_histogram()?;
    for task in tasks {
        let part = task.await.map_err(|e| other(e.to_string()))??;
        histogram.add(part).map_err(|e| other(e.to_string()))?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    let mut extra = serde_json::Map::new();
    let mut healthy = true;
    if verify {
        let writes = std::mem::take(&mut *acknowledged.lock().map_err(|_| other("poisoned"))?);
        let wrong = verify_writes(&verify_client, writes).await?;
        extra.insert("verify_failed".to_owned(), wrong.into());
        healthy = wrong == 0;
    }
    let summary = Summary {
        name: workload.name(),
        clients: args.clients,
        histogram: &histogram,
        failed: failed.load(Ordering::Relaxed),
        elapsed,
        extra,
    };
    summary.print(args.json);
    Ok(exit_code(healthy))
}

/// Reads every acknowledged key back: it must hold the acknowledged value at its revision, or a
/// newer write. Returns how many do not.
async fn verify_writes(
    client: &Client,
    writes: BTreeMap<Vec<u8>, (i64, Vec<u8>)>,
) -> Result<u64, ClientError> {
    let mut wrong = 0;
    for (key, (revision, value)) in writes {
        let response = client
            .kv()
            .range(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            })
            .await?
            .into_inner();
        let holds = response.kvs.first().is_some_and(|kv| {
            kv.mod_revision > revision || (kv.mod_revision == revision && kv.value == value)
        });
        if !holds {
            wrong += 1;
            eprintln!(
                "verify: key {} lost its write at revision {revision} (now {:?})",
                String::from_utf8_lossy(&key),
                response.kvs.first().map(|kv| kv.mod_revision)
            );
        }
    }
    Ok(wrong)
}

impl Workload {
    fn name(&self) -> &'static str {
        match self {
            Workload::Put { .. } => "put",
            Workload::TxnPut { .. } => "txn-put",
            Workload::TxnMixed { .. } => "txn-mixed",
            Workload::Get { consistency, .. } if consistency == "s" => "get-serializable",
            Workload::Get { .. } => "get-linearizable",
            Workload::Idle { .. } => "idle",
            Workload::Range { consistency, .. } if consistency == "s" => "range-serializable",
            Workload::Range { .. } => "range-linearizable",
            Workload::Lock { .. } => "lock",
            Workload::ElectionFailover { .. } => "election-failover",
            Workload::Watch { .. } => "watch",
            Workload::WatchFanout { .. } => "watch-fanout",
            Workload::LeaseKeepalive { .. } => "lease-keepalive",
            Workload::Zookeeper { .. } => "zookeeper",
            Workload::Kubernetes { .. } => "kubernetes",
        }
    }
}

async fn one(
    client: &Client,
    workload: &Workload,
    n: u64,
    random: &mut Random,
    lease: Option<i64>,
    acknowledged: Option<&Acknowledged>,
) -> Result<(), ClientError> {
    match workload {
        Workload::Put {
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
            let k = pick_key(random, n, *key_space_size, *sequential_keys);
            let key = key_of(k, *key_size);
            let value = value_of(n, *val_size);
            let response = client
                .kv()
                .put(PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    ..PutRequest::default()
                })
                .await?
                .into_inner();
            if let Some(acknowledged) = acknowledged {
                let revision = response.header.map_or(0, |h| h.revision);
                let mut writes = acknowledged.lock().map_err(|_| other("poisoned"))?;
                let newest = writes.entry(key).or_insert((0, Vec::new()));
                if revision > newest.0 {
                    *newest = (revision, value);
                }
            }
        }
        Workload::TxnPut {
            key_size,
            val_size,
            key_space_size,
            txn_ops,
            sequential_keys,
            first_key,
        } => {
            // Consecutive keys from a random start (or the txn's own place in order): a txn may
            // not put one key twice.
            let space = (*key_space_size).max(1);
            let ops = (*txn_ops).max(1) as u64;
            let base = if *sequential_keys {
                n.wrapping_mul(ops) % space
            } else {
                pick_key(random, n, space, false)
            };
            let success = (0..ops)
                .map(|i| RequestOp {
                    request: Some(request_op::Request::RequestPut(PutRequest {
                        key: key_of(first_key + (base + i) % space, *key_size),
                        value: value_of(n, *val_size),
                        ..PutRequest::default()
                    })),
                })
                .collect();
            client
                .kv()
                .txn(TxnRequest {
                    success,
                    ..TxnRequest::default()
                })
                .await?;
        }
        Workload::TxnMixed {
            key_size,
            val_size,
            key_space_size,
            rw_ratio,
            consistency,
        } => {
            let key = key_of(pick_key(random, n, *key_space_size, false), *key_size);
            // A read with probability rw / (rw + 1).
            let read =
                (random.next() % 1_000_000) as f64 / 1_000_000.0 < rw_ratio / (rw_ratio + 1.0);
            let op = if read {
                request_op::Request::RequestRange(RangeRequest {
                    key,
                    serializable: consistency == "s",
                    ..RangeRequest::default()
                })
            } else {
                request_op::Request::RequestPut(PutRequest {
                    key,
                    value: value_of(n, *val_size),
                    ..PutRequest::default()
                })
            };
            client
                .kv()
                .txn(TxnRequest {
                    success: vec![RequestOp { request: Some(op) }],
                    ..TxnRequest::default()
                })
                .await?;
        }
        Workload::Get {
            key_size,
            key_space_size,
            consistency,
        } => {
            let key = key_of(pick_key(random, n, *key_space_size, false), *key_size);
            client
                .kv()
                .range(RangeRequest {
                    key,
                    serializable: consistency == "s",
                    ..RangeRequest::default()
                })
                .await?;
        }
        Workload::Range { key, consistency } => {
            client
                .kv()
                .range(RangeRequest {
                    key: key.clone().into_bytes(),
                    serializable: consistency == "s",
                    ..RangeRequest::default()
                })
                .await?;
        }
        Workload::Lock { name } => {
            let mut locks = client.lock();
            let held = locks
                .lock(LockRequest {
                    name: name.clone().into_bytes(),
                    lease: lease.unwrap_or(0),
                })
                .await?
                .into_inner();
            locks.unlock(UnlockRequest { key: held.key }).await?;
        }
        Workload::ElectionFailover { .. }
        | Workload::Watch { .. }
        | Workload::WatchFanout { .. }
        | Workload::Zookeeper { .. }
        | Workload::Kubernetes { .. }
        | Workload::LeaseKeepalive { .. }
        | Workload::Idle { .. } => {
            return Err(other("this workload is measured separately"));
        }
    }
    Ok(())
}

/// Opens the connections, reads once on each, says so on stdout, then holds them idle.
async fn idle(
    target: &Target,
    clients: usize,
    conns: usize,
    hold_secs: u64,
) -> Result<std::process::ExitCode, ClientError> {
    use std::io::Write;
    let count = if conns == 0 { clients } else { conns }.max(1);
    let started = Instant::now();
    let connections = connect_all(target, count, 0).await?;
    for client in &connections {
        client
            .kv()
            .range(RangeRequest {
                key: b"foo".to_vec(),
                serializable: true,
                ..RangeRequest::default()
            })
            .await?;
    }
    let ready = serde_json::json!({
        "workload": "idle",
        "connections": count,
        "connect_seconds": started.elapsed().as_secs_f64(),
    });
    println!("{ready}");
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    drop(connections);
    Ok(std::process::ExitCode::SUCCESS)
}
