//! `synod bench`: a load generator in the style of etcd's `benchmark` tool. It speaks only etcd's
//! wire protocol, so the same command measures Synod and etcd. Each client runs on its own
//! connection; latencies go into an HDR histogram; the summary gives throughput and percentiles,
//! as text or as one JSON object (`--json`) for scripts such as `bench/compare`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use hdrhistogram::Histogram;
use synod_client::etcdserverpb::{LeaseGrantRequest, PutRequest, RangeRequest};
use synod_client::recipes::Session;
use synod_client::v3electionpb::{CampaignRequest, LeaderRequest};
use synod_client::v3lockpb::{LockRequest, UnlockRequest};
use synod_client::{Client, ClientError};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Concurrent clients, each on its own connection, spread over the endpoints.
    #[arg(long, default_value_t = 1)]
    clients: usize,
    /// Operations in total (for election-failover: rounds).
    #[arg(long, default_value_t = 10_000)]
    total: u64,
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
}

fn other(message: impl Into<String>) -> ClientError {
    ClientError::Other(message.into())
}

/// A key of `size` bytes for number `n` (zero-padded decimal, etcd's benchmark does the same).
fn key_of(n: u64, size: usize) -> Vec<u8> {
    let text = format!("{n:0size$}");
    let bytes = text.into_bytes();
    bytes[bytes.len().saturating_sub(size.max(1))..].to_vec()
}

/// A small random generator (xorshift), so the benchmark needs no extra dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

pub async fn run(
    endpoints: &[String],
    args: BenchArgs,
) -> Result<std::process::ExitCode, ClientError> {
    if let Workload::ElectionFailover { ttl } = args.workload {
        return election_failover(endpoints, args.total, ttl, args.json).await;
    }
    let mut clients = Vec::new();
    for i in 0..args.clients.max(1) {
        let endpoint = &endpoints[i % endpoints.len()];
        clients.push(Client::connect(endpoint, Duration::from_secs(5)).await?);
    }
    let issued = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let workload = Arc::new(args.workload);
    let started = Instant::now();
    let progress = tokio::spawn(progress_bar(issued.clone(), args.total, args.json));
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        let (issued, failed, workload) = (issued.clone(), failed.clone(), workload.clone());
        let total = args.total;
        tasks.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)
                .map_err(|e| other(e.to_string()))?;
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
                let began = Instant::now();
                let outcome = one(
                    &client,
                    &workload,
                    n,
                    &mut random,
                    lease.as_ref().map(Session::lease),
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
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| other(e.to_string()))?;
    for task in tasks {
        let part = task.await.map_err(|e| other(e.to_string()))??;
        histogram.add(part).map_err(|e| other(e.to_string()))?;
    }
    let elapsed = started.elapsed();
    progress.abort();
    report(
        &workload,
        &histogram,
        failed.load(Ordering::Relaxed),
        elapsed,
        args.clients,
        args.json,
    );
    Ok(std::process::ExitCode::SUCCESS)
}

async fn one(
    client: &Client,
    workload: &Workload,
    n: u64,
    random: &mut Random,
    lease: Option<i64>,
) -> Result<(), ClientError> {
    match workload {
        Workload::Put {
            key_size,
            val_size,
            key_space_size,
            sequential_keys,
        } => {
            let space = (*key_space_size).max(1);
            let k = if *sequential_keys {
                n % space
            } else {
                random.next() % space
            };
            client
                .kv()
                .put(PutRequest {
                    key: key_of(k, *key_size),
                    value: vec![b'v'; *val_size],
                    ..PutRequest::default()
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
        Workload::ElectionFailover { .. } => unreachable!("measured separately"),
    }
    Ok(())
}

async fn progress_bar(issued: Arc<AtomicU64>, total: u64, quiet: bool) {
    use std::io::{IsTerminal, Write};
    if quiet || !std::io::stderr().is_terminal() {
        return;
    }
    loop {
        let done = issued.load(Ordering::Relaxed).min(total);
        let width = 40;
        let filled = (done * width / total.max(1)) as usize;
        eprint!(
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(width as usize - filled)
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn report(
    workload: &Workload,
    histogram: &Histogram<u64>,
    failed: u64,
    elapsed: Duration,
    clients: usize,
    json: bool,
) {
    let name = match workload {
        Workload::Put { .. } => "put",
        Workload::Range { consistency, .. } if consistency == "s" => "range-serializable",
        Workload::Range { .. } => "range-linearizable",
        Workload::Lock { .. } => "lock",
        Workload::ElectionFailover { .. } => "election-failover",
    };
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
    let throughput = histogram.len() as f64 / elapsed.as_secs_f64();
    if json {
        let value = serde_json::json!({
            "workload": name,
            "clients": clients,
            "ok": histogram.len(),
            "failed": failed,
            "seconds": elapsed.as_secs_f64(),
            "throughput": throughput,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": histogram.max() as f64 / 1000.0,
        });
        println!("{value}");
        return;
    }
    eprintln!();
    println!("Summary ({name}, {clients} clients):");
    println!("  Total:      {:.4} secs", elapsed.as_secs_f64());
    println!("  Requests:   {} ok, {failed} failed", histogram.len());
    println!("  Throughput: {throughput:.1} requests/sec");
    println!(
        "  Latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
        ms(0.5),
        ms(0.9),
        ms(0.99),
        ms(0.999),
        histogram.max() as f64 / 1000.0
    );
}

/// Rounds of: two campaigners on leases of `ttl`; the leader "dies" (its lease is no longer
/// renewed); measure until the other is elected. Works against etcd and Synod alike.
async fn election_failover(
    endpoints: &[String],
    rounds: u64,
    ttl: i64,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let client = Client::connect(&endpoints[0], Duration::from_secs(5)).await?;
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| other(e.to_string()))?;
    let started = Instant::now();
    for round in 0..rounds {
        let name = format!("bench-election-{round}-{}", std::process::id()).into_bytes();
        let first_lease = client
            .lease()
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner()
            .id;
        // The first campaigner renews its lease this once (the grant) and never again: it dies
        // now, and failover is measured from here. The second's session is kept alive.
        let died = Instant::now();
        let second = Session::new(&client, ttl).await?;
        client
            .election()
            .campaign(CampaignRequest {
                name: name.clone(),
                lease: first_lease,
                value: b"first".to_vec(),
            })
            .await?;
        let mut election = client.election();
        let campaign = election.campaign(CampaignRequest {
            name: name.clone(),
            lease: second.lease(),
            value: b"second".to_vec(),
        });
        tokio::time::timeout(Duration::from_secs((ttl as u64) * 5 + 10), campaign)
            .await
            .map_err(|_| other("the second campaigner was never elected"))??;
        let took = died.elapsed();
        let leader = client
            .election()
            .leader(LeaderRequest { name })
            .await?
            .into_inner();
        if leader.kv.map(|kv| kv.value) != Some(b"second".to_vec()) {
            return Err(other("the second campaigner won but is not the leader"));
        }
        let _ = second.close().await;
        let _ = histogram.record((took.as_micros() as u64).max(1));
    }
    report(
        &Workload::ElectionFailover { ttl },
        &histogram,
        0,
        started.elapsed(),
        1,
        json,
    );
    Ok(std::process::ExitCode::SUCCESS)
}
