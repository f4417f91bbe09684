//! `synod bench kubernetes`: what kube-apiserver sends etcd, on etcd's wire, so the same command
//! measures Synod and etcd. Objects of 1-10 KiB under `/registry/<kind>/<namespace>/<name>`;
//! creates are txns on `mod_revision == 0`, updates and deletes optimistic-concurrency txns on
//! the `mod_revision` the client last read (a conflict is an answer, counted, not an error);
//! lists are paginated (`limit` 500 with continuation, every page at the first page's revision);
//! one watch per kind from the starting revision with progress notifications, and a
//! `RequestWatchProgress` every second; events are created on a lease, as the apiserver does;
//! a compactor compacts every 5 s to the revision it saw the time before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use synod_client::etcdserverpb::{
    CompactionRequest, Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest,
    RequestOp, TxnRequest, WatchCreateRequest, WatchProgressRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    request_op, watch_request,
};
use synod_client::{Client, ClientError, prefix_range_end};

use super::{Random, Summary, Target, connect_all, exit_code, new_histogram, other, random_bytes};

/// Kinds of objects, as the apiserver names its resources.
const KINDS: [&str; 5] = ["pods", "configmaps", "secrets", "services", "deployments"];
/// Page size of the paginated lists (the apiserver's default for clients that page).
const PAGE: i64 = 500;

pub struct Load {
    pub clients: usize,
    pub conns: usize,
    /// Operations after the initial objects are created.
    pub total: u64,
    /// Objects created before the measured operations.
    pub objects: u64,
    pub namespaces: u64,
}

/// The kinds of operations, for the per-operation latencies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Create,
    Update,
    Delete,
    Event,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Event => "event",
            Op::List => "list",
        }
    }
}

fn object_key(kind: &str, namespace: u64, name: &str, run: u32) -> Vec<u8> {
    format!("/registry/{kind}/bench-{run}-ns{namespace}/{name}").into_bytes()
}

/// An object's body: 1 to 10 KiB.
fn body(random: &mut Random) -> Vec<u8> {
    let size = 1024 + (random.next() % (9 * 1024)) as usize;
    random_bytes(random.next(), size)
}

fn mod_revision_is(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.to_vec(),
        target_union: Some(TargetUnion::ModRevision(revision)),
        ..Compare::default()
    }
}

/// A write guarded by the key's `mod_revision` (0: the key must not exist): whether it was made.
async fn guarded(
    client: &Client,
    key: &[u8],
    revision: i64,
    then: request_op::Request,
) -> Result<(bool, i64), ClientError> {
    let response = client
        .kv()
        .txn(TxnRequest {
            compare: vec![mod_revision_is(key, revision)],
            success: vec![RequestOp {
                request: Some(then),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.to_vec(),
                    ..RangeRequest::default()
                })),
            }],
        })
        .await?
        .into_inner();
    let revision = response.header.map_or(0, |h| h.revision);
    Ok((response.succeeded, revision))
}

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> request_op::Request {
    request_op::Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..PutRequest::default()
    })
}

/// One client's objects: key → the mod revision it last saw.
type Owned = BTreeMap<Vec<u8>, i64>;

struct Tally {
    histograms: BTreeMap<Op, Histogram<u64>>,
    conflicts: u64,
    failed: u64,
}

pub async fn run(
    target: &Target,
    load: Load,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let run = std::process::id();
    let clients = connect_all(target, load.clients, load.conns).await?;
    let first = clients[0].clone();
    let lease = first
        .lease()
        .lease_grant(LeaseGrantRequest { ttl: 3600, id: 0 })
        .await?
        .into_inner()
        .id;
    let start_revision = first
        .kv()
        .range(RangeRequest {
            key: b"/registry/".to_vec(),
            limit: 1,
            ..RangeRequest::default()
        })
        .await?
        .into_inner()
        .header
        .map_or(0, |h| h.revision);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let watching = tokio::spawn(watch_kinds(
        first.clone(),
        start_revision + 1,
        stop_rx.clone(),
    ));
    let compacting = tokio::spawn(compact(first.clone(), stop_rx));

    // The objects a cluster already holds, created as the apiserver creates them.
    let created = Arc::new(AtomicU64::new(0));
    let mut fills = Vec::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let (created, objects, namespaces) =
            (created.clone(), load.objects, load.namespaces.max(1));
        fills.push(tokio::spawn(async move {
            let mut random = Random(0x51ed_270b_a5e1_c0de ^ (index as u64 + 1));
            let mut owned = Owned::new();
            loop {
                let n = created.fetch_add(1, Ordering::Relaxed);
                if n >= objects {
                    break;
                }
                let kind = KINDS[(n % KINDS.len() as u64) as usize];
                let key = object_key(kind, n % namespaces, &format!("obj-{index}-{n}"), run);
                let (made, revision) =
                    guarded(&client, &key, 0, put(&key, body(&mut random), 0)).await?;
                if made {
                    owned.insert(key, revision);
                }
            }
            Ok::<_, ClientError>(owned)
        }));
    }
    let mut owned = Vec::new();
    for fill in fills {
        owned.push(fill.await.map_err(|e| other(e.to_string()))??);
    }

    let issued = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for ((index, client), objects) in clients.into_iter().enumerate().zip(owned) {
        let issued = issued.clone();
        let (total, namespaces) = (load.total, load.namespaces.max(1));
        tasks.push(tokio::spawn(async move {
            work(
                client, index, objects, issued, total, namespaces, lease, run,
            )
            .await
        }));
    }
    let mut histograms: BTreeMap<Op, Histogram<u64>> = BTreeMap::new();
    let (mut conflicts, mut failed) = (0, 0);
    for task in tasks {
        let tally = task.await.map_err(|e| other(e.to_string()))??;
        conflicts += tally.conflicts;
        failed += tally.failed;
        for (op, part) in tally.histograms {
            let merged = match histograms.entry(op) {
                std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::btree_map::Entry::Vacant(entry) => entry.insert(new_histogram()?),
            };
            merged.add(part).map_err(|e| other(e.to_string()))?;
        }
    }
    let elapsed = started.elapsed();
    let _ = stop_tx.send(true);
    let (events, progress) = watching.await.map_err(|e| other(e.to_string()))??;
    let compactions = compacting.await.map_err(|e| other(e.to_string()))?;

    let mut all = new_histogram()?;
    let mut extra = serde_json::Map::new();
    for (op, histogram) in &histograms {
        all.add(histogram).map_err(|e| other(e.to_string()))?;
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        extra.insert(format!("{}_ops", op.name()), histogram.len().into());
        extra.insert(format!("{}_p50_ms", op.name()), ms(0.5).into());
        extra.insert(format!("{}_p99_ms", op.name()), ms(0.99).into());
    }
    extra.insert("conflicts".to_owned(), conflicts.into());
    extra.insert("watch_events".to_owned(), events.into());
    extra.insert("progress_notifications".to_owned(), progress.into());
    extra.insert("compactions".to_owned(), compactions.into());
    let summary = Summary {
        name: "kubernetes",
        clients: load.clients,
        histogram: &all,
        failed,
        elapsed,
        extra,
    };
    summary.print(json);
    Ok(exit_code(failed == 0))
}

#[allow(clippy::too_many_arguments)]
async fn work(
    client: Client,
    index: usize,
    mut owned: Owned,
    issued: Arc<AtomicU64>,
    total: u64,
    namespaces: u64,
    lease: i64,
    run: u32,
) -> Result<Tally, ClientError> {
    let mut random = Random(0x2545_f491_4f6c_dd1d ^ (index as u64 + 1));
    let mut tally = Tally {
        histograms: BTreeMap::new(),
        conflicts: 0,
        failed: 0,
    };
    loop {
        let n = issued.fetch_add(1, Ordering::Relaxed);
        if n >= total {
            break;
        }
        let roll = random.next() % 100;
        let kind = KINDS[(random.next() % KINDS.len() as u64) as usize];
        let namespace = random.next() % namespaces;
        let began = Instant::now();
        let (op, outcome) = if roll < 5 {
            (
                Op::List,
                list(&client, kind, namespace, run).await.map(|_| true),
            )
        } else if roll < 25 || owned.is_empty() {
            let key = object_key(kind, namespace, &format!("new-{index}-{n}"), run);
            let outcome = guarded(&client, &key, 0, put(&key, body(&mut random), 0)).await;
            if let Ok((true, revision)) = outcome {
                owned.insert(key, revision);
            }
            (Op::Create, outcome.map(|(made, _)| made))
        } else if roll < 85 {
            let Some((key, seen)) = pick(&owned, &mut random) else {
                continue;
            };
            let outcome = guarded(&client, &key, seen, put(&key, body(&mut random), 0)).await;
            if let Ok((made, revision)) = outcome {
                // On a conflict the apiserver reads again and retries: re-read the key.
                let now = if made {
                    revision
                } else {
                    current(&client, &key).await?
                };
                owned.insert(key, now);
            }
            (Op::Update, outcome.map(|(made, _)| made))
        } else if roll < 90 {
            let Some((key, seen)) = pick(&owned, &mut random) else {
                continue;
            };
            let delete = request_op::Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.clone(),
                ..DeleteRangeRequest::default()
            });
            let outcome = guarded(&client, &key, seen, delete).await;
            owned.remove(&key);
            (Op::Delete, outcome.map(|(made, _)| made))
        } else {
            let key = format!("/registry/events/bench-{run}-ns{namespace}/event-{index}-{n}")
                .into_bytes();
            let value = random_bytes(random.next(), 512 + (random.next() % 1024) as usize);
            let outcome = guarded(&client, &key, 0, put(&key, value, lease)).await;
            (Op::Event, outcome.map(|(made, _)| made))
        };
        match outcome {
            Ok(made) => {
                if !made {
                    tally.conflicts += 1;
                }
                let histogram = match tally.histograms.entry(op) {
                    std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
                    std::collections::btree_map::Entry::Vacant(entry) => {
                        entry.insert(new_histogram()?)
                    }
                };
                let _ = histogram.record((began.elapsed().as_micros() as u64).max(1));
            }
            Err(_) => tally.failed += 1,
        }
    }
    Ok(tally)
}

/// One of the objects this client made, with the revision it last saw it at.
fn pick(owned: &Owned, random: &mut Random) -> Option<(Vec<u8>, i64)> {
    if owned.is_empty() {
        return None;
    }
    let skip = (random.next() % owned.len() as u64) as usize;
    owned
        .iter()
        .nth(skip)
        .map(|(key, seen)| (key.clone(), *seen))
}

async fn current(client: &Client, key: &[u8]) -> Result<i64, ClientError> {
    Ok(client
        .kv()
        .range(RangeRequest {
            key: key.to_vec(),
            ..RangeRequest::default()
        })
        .await?
        .into_inner()
        .kvs
        .first()
        .map_or(0, |kv| kv.mod_revision))
}

/// A paginated list of one kind in one namespace: pages of 500, every page at the first
/// page's revision, as the apiserver lists for a client that pages.
async fn list(client: &Client, kind: &str, namespace: u64, run: u32) -> Result<u64, ClientError> {
    let prefix = format!("/registry/{kind}/bench-{run}-ns{namespace}/").into_bytes();
    let end = prefix_range_end(&prefix);
    let mut from = prefix.clone();
    let mut revision = 0;
    let mut listed = 0;
    loop {
        let page = client
            .kv()
            .range(RangeRequest {
                key: from.clone(),
                range_end: end.clone(),
                limit: PAGE,
                revision,
                ..RangeRequest::default()
            })
            .await?
            .into_inner();
        if revision == 0 {
            revision = page.header.as_ref().map_or(0, |h| h.revision);
        }
        listed += page.kvs.len() as u64;
        match page.kvs.last() {
            Some(last) if page.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => return Ok(listed),
        }
    }
}

/// One watch per kind from `start`, with progress notifications, and a progress request every
/// second (as the apiserver's watch cache asks); (events, progress notifications) seen.
async fn watch_kinds(
    client: Client,
    start: i64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(u64, u64), ClientError> {
    let creates = KINDS.map(|kind| {
        let key = format!("/registry/{kind}/").into_bytes();
        WatchCreateRequest {
            range_end: prefix_range_end(&key),
            key,
            start_revision: start,
            progress_notify: true,
            ..WatchCreateRequest::default()
        }
    });
    let (requests, mut responses) =
        super::streams::open_watches(&client, creates, KINDS.len() + 4).await?;
    let (mut events, mut progress) = (0u64, 0u64);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            message = responses.message() => {
                let Some(response) = message? else { break };
                if response.events.is_empty() && !response.created && !response.canceled {
                    progress += 1;
                }
                events += response.events.len() as u64;
            }
            _ = tick.tick() => {
                let ask = WatchRequest {
                    request_union: Some(watch_request::RequestUnion::ProgressRequest(
                        WatchProgressRequest {},
                    )),
                };
                if requests.send(ask).await.is_err() {
                    break;
                }
            }
            _ = stop.changed() => break,
        }
    }
    Ok((events, progress))
}

/// Every 5 s, compacts to the revision seen 5 s before (the apiserver's compactor); how many
/// compactions it made.
async fn compact(client: Client, mut stop: tokio::sync::watch::Receiver<bool>) -> u64 {
    let mut previous = 0;
    let mut made = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return made,
        }
        if previous > 0
            && client
                .kv()
                .compact(CompactionRequest {
                    revision: previous,
                    physical: false,
                })
                .await
                .is_ok()
        {
            made += 1;
        }
        previous = client
            .kv()
            .range(RangeRequest {
                key: b"/registry/".to_vec(),
                limit: 1,
                ..RangeRequest::default()
            })
            .await
            .ok()
            .and_then(|r| r.into_inner().header)
            .map_or(previous, |h| h.revision);
    }
}
