//! Stream workloads of `synod bench`: watchers fed by a paced writer (`watch`, `watch-fanout`)
//! and lease keep-alive streams (`lease-keepalive`). Each checks what it receives: a watcher
//! must see every write once and in revision order, and no lease may be lost.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use synod_client::etcdserverpb::{
    LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    PutRequest, WatchCreateRequest, WatchRequest, watch_request,
};
use synod_client::{Client, ClientError, prefix_range_end};

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Summary, Target, connect_all, exit_code, new_histogram, other, pace, random_bytes};

/// How long watchers may take, after the last write, to deliver everything.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(15);

/// Puts the paced writer of the watch workloads may have outstanding at once.
const MAX_IN_FLIGHT: usize = 256;

pub struct WatchLoad {
    pub name: &'static str,
    pub watchers: usize,
    pub streams: usize,
    pub conns: usize,
    pub keys: u64,
    pub writes: u64,
    pub rate: u64,
    pub val_size: usize,
}

/// A written value: the write's sequence number and when it was sent (microseconds since the
/// run began), then padding.
fn stamped_value(seq: u64, sent_micros: u64, size: usize) -> Vec<u8> {
    let mut value = random_bytes(seq, size.max(16));
    value[..8].copy_from_slice(&seq.to_be_bytes());
    value[8..16].copy_from_slice(&sent_micros.to_be_bytes());
    value
}

fn read_stamp(value: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let sent = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((seq, sent))
}

/// What one watcher saw.
struct Seen {
    seen: Vec<bool>,
    distinct: u64,
    /// The highest modification revision delivered so far: events must arrive in revision order.
    highest: Option<i64>,
    duplicate: u64,
    out_of_order: u64,
}

/// What one stream's watchers saw, and their event latencies.
struct StreamTally {
    histogram: Histogram<u64>,
    watchers: Vec<Seen>,
}

pub async fn watch(
    target: &Target,
    load: WatchLoad,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let streams = load.streams.max(1).min(load.watchers.max(1));
    let clients = connect_all(target, streams, load.conns).await?;
    let prefix = format!("bench-{}-{}/", load.name, std::process::id()).into_bytes();
    let (key, range_end) = if load.keys == 1 {
        let mut key = prefix.clone();
        key.push(b'0');
        (key, Vec::new())
    } else {
        (prefix.clone(), prefix_range_end(&prefix))
    };
    let started = Instant::now();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel(streams);
    let mut tasks = Vec::new();
    for (index, client) in clients.into_iter().enumerate() {
        // Watchers are spread evenly: stream i gets every streams-th one.
        let count = (load.watchers + streams - 1 - index) / streams;
        let (key, range_end) = (key.clone(), range_end.clone());
        let (ready, stop) = (ready_tx.clone(), stop_rx.clone());
        let writes = load.writes;
        tasks.push(tokio::spawn(async move {
            watch_stream(client, key, range_end, count, writes, started, ready, stop).await
        }));
    }
    drop(ready_tx);
    for _ in 0..streams {
        ready_rx
            .recv()
            .await
            .ok_or_else(|| other("a watch stream failed to start"))?;
    }
    let writer = Client::connect(&target.endpoints[0], target.dial.clone()).await?;
    // Puts are issued at the paced rate without waiting for the previous one to be answered (a
    // sequential writer could not reach the rate over a 3-member round trip); at most
    // MAX_IN_FLIGHT are outstanding, after which the writer waits and the rate it reached shows it.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut puts = tokio::task::JoinSet::new();
    let writing = Instant::now();
    for seq in 0..load.writes {
        pace(writing, load.rate, seq).await;
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| other(e.to_string()))?;
        let mut target = prefix.clone();
        if load.keys == 1 {
            target.push(b'0');
        } else {
            target.extend_from_slice((seq % load.keys).to_string().as_bytes());
        }
        let sent = started.elapsed().as_micros() as u64;
        let value = stamped_value(seq, sent, load.val_size);
        let writer = writer.clone();
        puts.spawn(async move {
            let began = Instant::now();
            let outcome = writer
                .kv()
                .put(PutRequest {
                    key: target,
                    value,
                    ..PutRequest::default()
                })
                .await;
            drop(permit);
            outcome.map(|_| began.elapsed())
        });
    }
    let mut put_latency = new_histogram()?;
    let mut put_failed = 0u64;
    while let Some(joined) = puts.join_next().await {
        match joined.map_err(|e| other(e.to_string()))? {
            Ok(took) => {
                let _ = put_latency.record((took.as_micros() as u64).max(1));
            }
            Err(_) => put_failed += 1,
        }
    }
    let write_seconds = writing.elapsed().as_secs_f64();
    // Every watcher should now receive everything; stop the late ones after a while.
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        let _ = stop_tx.send(true);
    });
    let mut histogram = new_histogram()?;
    let (mut missing, mut duplicate, mut out_of_order, mut events) = (0u64, 0u64, 0u64, 0u64);
    for task in tasks {
        let tally = task.await.map_err(|e| other(e.to_string()))??;
        histogram
            .add(&tally.histogram)
            .map_err(|e| other(e.to_string()))?;
        for seen in tally.watchers {
            // Writes that failed may or may not have happened; only acknowledged ones count.
            let expected = load.writes - put_failed;
            missing += expected.saturating_sub(seen.distinct);
            duplicate += seen.duplicate;
            out_of_order += seen.out_of_order;
            events += seen.distinct;
        }
    }
    stopper.abort();
    let mut extra = serde_json::Map::new();
    extra.insert("watchers".to_owned(), load.watchers.into());
    extra.insert("writes".to_owned(), load.writes.into());
    extra.insert("writes_failed".to_owned(), put_failed.into());
    extra.insert(
        "write_rate".to_owned(),
        (load.writes as f64 / write_seconds).into(),
    );
    extra.insert(
        "put_p99_ms".to_owned(),
        (put_latency.value_at_quantile(0.99) as f64 / 1000.0).into(),
    );
    extra.insert("events".to_owned(), events.into());
    extra.insert("missing_events".to_owned(), missing.into());
    extra.insert("duplicate_events".to_owned(), duplicate.into());
    extra.insert("out_of_order_events".to_owned(), out_of_order.into());
    Summary {
        name: load.name,
        clients: streams,
        histogram: &histogram,
        failed: put_failed,
        elapsed: started.elapsed(),
        extra,
    }
    .print(json);
    Ok(exit_code(
        missing == 0 && duplicate == 0 && out_of_order == 0,
    ))
}

/// One watch stream with `count` watchers on `[key, range_end)`: reports ready once every
/// watcher is created, then tallies events until each watcher has seen `writes` of them or the
/// run stops it.
#[allow(clippy::too_many_arguments)]
async fn watch_stream(
    client: Client,
    key: Vec<u8>,
    range_end: Vec<u8>,
    count: usize,
    writes: u64,
    started: Instant,
    ready: mpsc::Sender<()>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<StreamTally, ClientError> {
    let creates = (0..count).map(|_| WatchCreateRequest {
        key: key.clone(),
        range_end: range_end.clone(),
        ..WatchCreateRequest::default()
    });
    let (requests, mut responses) = open_watches(&client, creates, count).await?;
    let mut ids = std::collections::HashMap::new();
    let mut watchers = Vec::new();
    while ids.len() < count {
        let response = responses
            .message()
            .await?
            .ok_or_else(|| other("watch stream ended while creating watchers"))?;
        if response.created {
            ids.insert(response.watch_id, watchers.len());
            watchers.push(Seen {
                seen: vec![false; writes as usize],
                distinct: 0,
                highest: None,
                duplicate: 0,
                out_of_order: 0,
            });
        }
    }
    let _ = ready.send(()).await;
    let mut histogram = new_histogram()?;
    let mut complete = 0;
    while complete < count {
        let response = tokio::select! {
            message = responses.message() => message?,
            _ = stop.changed() => break,
        };
        let Some(response) = response else { break };
        let Some(&index) = ids.get(&response.watch_id) else {
            continue;
        };
        let now = started.elapsed().as_micros() as u64;
        let watcher = &mut watchers[index];
        for event in response.events {
            let Some(kv) = event.kv.as_ref() else {
                continue;
            };
            let Some((seq, sent)) = read_stamp(&kv.value) else {
                continue;
            };
            let _ = histogram.record(now.saturating_sub(sent).max(1));
            let Some(slot) = watcher.seen.get_mut(seq as usize) else {
                continue;
            };
            if *slot {
                watcher.duplicate += 1;
                continue;
            }
            *slot = true;
            watcher.distinct += 1;
            let revision = kv.mod_revision;
            if watcher.highest.is_some_and(|highest| revision <= highest) {
                watcher.out_of_order += 1;
            }
            watcher.highest = Some(watcher.highest.map_or(revision, |h| h.max(revision)));
            if watcher.distinct == writes {
                complete += 1;
            }
        }
    }
    drop(requests);
    Ok(StreamTally {
        histogram,
        watchers,
    })
}

/// Opens a watch stream with `creates` as its first requests (they go in before the stream
/// opens: etcd answers the stream's headers only with its first response); the sender for later
/// requests, with room for `room`, and the responses.
pub(super) async fn open_watches(
    client: &Client,
    creates: impl IntoIterator<Item = WatchCreateRequest>,
    room: usize,
) -> Result<
    (
        mpsc::Sender<WatchRequest>,
        tonic::Streaming<synod_client::etcdserverpb::WatchResponse>,
    ),
    ClientError,
> {
    let (requests, receiver) = mpsc::channel(room.max(1));
    for create in creates {
        requests
            .send(WatchRequest {
                request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
            })
            .await
            .map_err(|_| other("watch requests closed"))?;
    }
    let responses = client
        .watch()
        .watch(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((requests, responses))
}

pub struct KeepAliveLoad {
    pub leases: usize,
    pub ttl: i64,
    pub streams: usize,
    pub conns: usize,
    pub renewals: u64,
    pub rate: u64,
}

pub async fn lease_keepalive(
    target: &Target,
    load: KeepAliveLoad,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let streams = load.streams.max(1).min(load.leases.max(1));
    let clients = connect_all(target, streams, load.conns).await?;
    // Grants go out from every stream's connection at once.
    let mut grants = Vec::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let count = (load.leases + streams - 1 - index) / streams;
        let ttl = load.ttl;
        grants.push(tokio::spawn(async move {
            let mut ids = Vec::with_capacity(count);
            for _ in 0..count {
                let granted = client
                    .lease()
                    .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner();
                ids.push(granted.id);
            }
            Ok::<_, ClientError>(ids)
        }));
    }
    let mut leases = Vec::with_capacity(load.leases);
    for grant in grants {
        leases.extend(grant.await.map_err(|e| other(e.to_string()))??);
    }
    let started = Instant::now();
    let issued = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let mine: Vec<i64> = leases
            .iter()
            .skip(index)
            .step_by(streams)
            .copied()
            .collect();
        let issued = issued.clone();
        let (renewals, rate) = (load.renewals, load.rate);
        tasks.push(tokio::spawn(async move {
            keep_alive_stream(client, mine, issued, renewals, rate, started).await
        }));
    }
    let mut histogram = new_histogram()?;
    let mut lost = 0u64;
    let mut failed = 0u64;
    for task in tasks {
        let (part, part_lost, part_failed) = task.await.map_err(|e| other(e.to_string()))??;
        histogram.add(part).map_err(|e| other(e.to_string()))?;
        lost += part_lost;
        failed += part_failed;
    }
    let elapsed = started.elapsed();
    // Every lease must still be alive, and is then revoked (from every connection at once).
    let mut checks = Vec::new();
    for (index, client) in clients.iter().cloned().enumerate() {
        let mine: Vec<i64> = leases
            .iter()
            .skip(index)
            .step_by(streams)
            .copied()
            .collect();
        checks.push(tokio::spawn(async move {
            let mut lost = 0u64;
            for id in mine {
                let alive = client
                    .lease()
                    .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
                    .await
                    .map(|r| r.into_inner().ttl > 0)
                    .unwrap_or(false);
                if !alive {
                    lost += 1;
                }
                let _ = client.lease().lease_revoke(LeaseRevokeRequest { id }).await;
            }
            lost
        }));
    }
    for check in checks {
        lost += check.await.map_err(|e| other(e.to_string()))?;
    }
    let mut extra = serde_json::Map::new();
    extra.insert("leases".to_owned(), load.leases.into());
    extra.insert("leases_lost".to_owned(), lost.into());
    Summary {
        name: "lease-keepalive",
        clients: streams,
        histogram: &histogram,
        failed,
        elapsed,
        extra,
    }
    .print(json);
    Ok(exit_code(lost == 0 && failed == 0))
}

/// Renews `leases` in turn over one keep-alive stream, one request in flight, until `renewals`
/// have been issued over all streams. Returns latencies, renewals answered with TTL 0 (lost),
/// and failures.
async fn keep_alive_stream(
    client: Client,
    leases: Vec<i64>,
    issued: std::sync::Arc<std::sync::atomic::AtomicU64>,
    renewals: u64,
    rate: u64,
    started: Instant,
) -> Result<(Histogram<u64>, u64, u64), ClientError> {
    let mut histogram = new_histogram()?;
    let (mut lost, mut failed) = (0u64, 0u64);
    if leases.is_empty() {
        return Ok((histogram, lost, failed));
    }
    let (requests, receiver) = mpsc::channel(1);
    let mut turn = 0usize;
    let mut next = || {
        let n = issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let id = leases[turn % leases.len()];
        turn += 1;
        (n < renewals).then_some((n, id))
    };
    let Some((first_n, first_id)) = next() else {
        return Ok((histogram, lost, failed));
    };
    pace(started, rate, first_n).await;
    let mut began = Instant::now();
    // The first renewal goes in before the stream opens (etcd answers headers with it).
    requests
        .send(LeaseKeepAliveRequest { id: first_id })
        .await
        .map_err(|_| other("keep-alive requests closed"))?;
    let mut responses = client
        .lease()
        .lease_keep_alive(ReceiverStream::new(receiver))
        .await?
        .into_inner();
    loop {
        match responses.message().await {
            Ok(Some(response)) => {
                let _ = histogram.record((began.elapsed().as_micros() as u64).max(1));
                if response.ttl <= 0 {
                    lost += 1;
                }
            }
            Ok(None) | Err(_) => {
                failed += 1;
                break;
            }
        }
        let Some((n, id)) = next() else { break };
        pace(started, rate, n).await;
        began = Instant::now();
        if requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            failed += 1;
            break;
        }
    }
    Ok((histogram, lost, failed))
}
