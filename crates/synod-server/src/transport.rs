//! The outbound side of the peer transport: Raft messages to the other members over gRPC on
//! their peer URLs. Every peer has one link: a bounded queue filled by the node loop (which never
//! blocks: a full queue drops the message and tells Raft the peer is unreachable, which is all
//! the backpressure Raft needs), drained into batches as the body of one long-lived client
//! stream, and a task that reopens the stream with backoff when it breaks. Snapshots go on a
//! stream of their own, as rows read from a kept view (`synod_core::snapshot`), so a large state
//! machine never holds up heartbeats.
//! Requests a follower forwards to the leader use the same link's channel (see `peer`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use raft::eraftpb::{Message, MessageType};
use synod_api::synodpb::peer_client::PeerClient;
use synod_api::synodpb::{ClusterRequest, ClusterResponse, RaftBatch, SnapshotChunk};
use synod_core::backend::{Backend, ReadTxn};
use synod_core::driver::Input;
use synod_core::snapshot;
use synod_tls::ClientTls;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::command::Command;

/// Messages queued for one peer before the node loop starts dropping them.
const LINK_QUEUE_MAX: usize = 4096;
/// Messages in one batch on the wire.
const BATCH_MESSAGES_MAX: usize = 512;
/// Bytes in one batch on the wire (entries included), below gRPC's message limit.
const BATCH_BYTES_MAX: usize = 2 << 20;
/// Size of one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshot chunks read ahead of the peer, and received ahead of the builder.
pub(crate) const SNAPSHOT_CHUNKS_QUEUED: usize = 4;
/// How long a snapshot transfer waits for the peer to take the next chunk, or, once all are
/// sent, to answer (it builds and syncs its file meanwhile).
const SNAPSHOT_STALL_MAX: Duration = Duration::from_secs(60);
/// Largest message the peer service accepts: a batch, or a snapshot chunk, with room to spare.
pub const PEER_MESSAGE_BYTES_MAX: usize = 16 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// One outbound link.
struct Link {
    queue: mpsc::Sender<Message>,
    client: PeerClient<Channel>,
    urls: Vec<String>,
}

/// The outbound side of the peer transport, shared by the node loop and the handlers.
pub struct Transport {
    cluster_id: u64,
    member_id: u64,
    backend: Arc<Backend>,
    commands: SyncSender<Command>,
    runtime: tokio::runtime::Handle,
    links: Mutex<HashMap<u64, Link>>,
    /// Dials `https://` peers.
    tls: Option<Arc<ClientTls>>,
    /// Faults switched on by tests (nothing, in a build without `fault-injection`).
    pub faults: crate::faults::Faults,
    /// Views offered to followers as snapshots, by name.
    snapshots: Mutex<HashMap<String, Arc<ReadTxn>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Time to open a connection to a peer (TCP, and TLS for `https://` peers).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A lazily connecting channel to the first of `urls`; `https://` URLs go through `tls`.
fn channel(urls: &[String], tls: Option<&Arc<ClientTls>>) -> Option<Channel> {
    let url = urls.first()?;
    let secure = url.strip_prefix("https://");
    // The connector does the TLS; tonic is given the plain form (see `synod_tls::Connector`).
    let plain = secure.map_or_else(|| url.clone(), |rest| format!("http://{rest}"));
    let endpoint = Endpoint::from_shared(plain)
        .ok()?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5));
    if secure.is_none() {
        return Some(endpoint.connect_lazy());
    }
    let Some(tls) = tls else {
        tracing::error!(%url, "a peer URL is https:// but this member has no peer TLS settings (--peer-trusted-ca-file, --peer-cert-file, --peer-key-file or --peer-auto-tls)");
        return None;
    };
    Some(endpoint.connect_with_connector_lazy(tls.connector(CONNECT_TIMEOUT)))
}

fn client(urls: &[String], tls: Option<&Arc<ClientTls>>) -> Option<PeerClient<Channel>> {
    Some(
        PeerClient::new(channel(urls, tls)?)
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX),
    )
}

impl Transport {
    pub fn new(
        cluster_id: u64,
        member_id: u64,
        backend: Arc<Backend>,
        commands: SyncSender<Command>,
        runtime: tokio::runtime::Handle,
        tls: Option<Arc<ClientTls>>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            cluster_id,
            member_id,
            backend,
            commands,
            runtime,
            links: Mutex::new(HashMap::new()),
            tls,
            faults: crate::faults::Faults::default(),
            snapshots: Mutex::new(HashMap::new()),
        })
    }

    /// Queues messages for their peers; never blocks. Returns the peers whose queue was full or
    /// who are unknown, for the node to report as unreachable.
    pub fn send(self: &Arc<Self>, messages: Vec<Message>) -> Vec<u64> {
        let mut unreachable = Vec::new();
        let mut links = lock(&self.links);
        for message in messages {
            let to = message.to;
            if to == self.member_id || self.faults.is_blocked(to) {
                continue;
            }
            let link = match links.entry(to) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => match self.open_link(to) {
                    Some(link) => entry.insert(link),
                    None => {
                        unreachable.push(to);
                        continue;
                    }
                },
            };
            if link.queue.try_send(message).is_err() && !unreachable.contains(&to) {
                unreachable.push(to);
            }
        }
        unreachable
    }

    /// Starts the link to `peer` if its peer URLs are known.
    fn open_link(self: &Arc<Self>, peer: u64) -> Option<Link> {
        let record = self
            .backend
            .members()
            .ok()?
            .into_iter()
            .find(|m| m.id == peer)?;
        // Called from the node loop's thread too: channels spawn their connection task.
        let _runtime = self.runtime.enter();
        let client = client(&record.peer_urls, self.tls.as_ref())?;
        let (queue, receiver) = mpsc::channel(LINK_QUEUE_MAX);
        let transport = self.clone();
        let task_client = client.clone();
        self.runtime
            .spawn(async move { transport.run_link(peer, task_client, receiver).await });
        self.runtime.spawn(probe(
            self.member_id,
            peer,
            client.clone(),
            queue.downgrade(),
        ));
        Some(Link {
            queue,
            client,
            urls: record.peer_urls,
        })
    }

    /// Drops links whose member is gone or whose URLs changed (they reopen on the next message).
    pub fn refresh(&self) {
        let Ok(members) = self.backend.members() else {
            return;
        };
        let mut links = lock(&self.links);
        links.retain(|id, link| {
            members
                .iter()
                .any(|m| m.id == *id && m.peer_urls == link.urls)
        });
    }

    /// A client for `peer`'s peer service, for requests forwarded to the leader.
    pub fn client(self: &Arc<Self>, peer: u64) -> Option<PeerClient<Channel>> {
        if self.faults.is_blocked(peer) {
            return None;
        }
        let mut links = lock(&self.links);
        if let Some(link) = links.get(&peer) {
            return Some(link.client.clone());
        }
        let link = self.open_link(peer)?;
        let client = link.client.clone();
        links.insert(peer, link);
        Some(client)
    }

    fn report(&self, command: Command) {
        // A full node queue loses the report; Raft finds out again on its own.
        let _ = self.commands.try_send(command);
    }

    /// Keeps one stream open to `peer`, whose body is the link's queue (see [`Outbox`]);
    /// reconnects with backoff when it breaks, and ends when the link is dropped.
    async fn run_link(
        self: Arc<Self>,
        peer: u64,
        client: PeerClient<Channel>,
        queue: mpsc::Receiver<Message>,
    ) {
        let metrics = crate::metrics::metrics();
        let to = format!("{peer:x}");
        let sent_bytes = metrics.peer_sent_bytes.with_label_values(&[to.as_str()]);
        let sent_failures = metrics.peer_sent_failures.with_label_values(&[to.as_str()]);
        let queue = Arc::new(Mutex::new(queue));
        let mut backoff = BACKOFF_MIN;
        loop {
            let sent = Arc::new(AtomicBool::new(false));
            let outbox = Outbox {
                queue: queue.clone(),
                transport: self.clone(),
                peer,
                client: client.clone(),
                sent_bytes: sent_bytes.clone(),
                sent: sent.clone(),
            };
            let ended = client.clone().raft(outbox).await;
            if lock(&queue).is_closed() {
                // The link was dropped: the member left or its URLs changed.
                return;
            }
            if let Err(status) = ended {
                if crate::error::is_removed_refusal(&status) {
                    self.report(Command::Removed);
                    return;
                }
                tracing::debug!(peer = %to, %status, "peer stream ended");
            }
            sent_failures.inc();
            self.report(Command::Input(Input::Unreachable(peer)));
            if sent.load(Ordering::Relaxed) {
                backoff = BACKOFF_MIN;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// Keeps the view of a snapshot offered to followers under `name` (what its Raft snapshot's
    /// data says), for [`Transport::send_snapshot`] to stream.
    pub fn keep_snapshot(&self, name: String, view: ReadTxn) {
        lock(&self.snapshots).insert(name, Arc::new(view));
    }

    /// Lets go of a snapshot's view: transfers still streaming it hold their own reference.
    pub fn drop_snapshot(&self, name: &str) {
        lock(&self.snapshots).remove(name);
    }

    /// Streams a snapshot message and the rows of the view its data names, read on a blocking
    /// thread as the peer takes them; returns whether the peer took it all.
    async fn send_snapshot(
        &self,
        peer: u64,
        mut client: PeerClient<Channel>,
        message: Message,
    ) -> bool {
        let name = String::from_utf8_lossy(&message.get_snapshot().data).into_owned();
        let Some(view) = lock(&self.snapshots).get(&name).cloned() else {
            tracing::warn!(snapshot = %name, "the snapshot to send was let go; Raft asks for a new one");
            return false;
        };
        let Ok(encoded) = protobuf::Message::write_to_bytes(&message) else {
            return false;
        };
        let (chunks, stream) = mpsc::channel::<SnapshotChunk>(SNAPSHOT_CHUNKS_QUEUED);
        let (cluster_id, from) = (self.cluster_id, self.member_id);
        let runtime = tokio::runtime::Handle::current();
        let reader = tokio::task::spawn_blocking(move || {
            let mut first = Some(encoded);
            let sent = snapshot::send_rows(&view, SNAPSHOT_CHUNK_BYTES, &mut |data| {
                let message = first.take();
                let chunk = SnapshotChunk {
                    cluster_id,
                    from,
                    to: peer,
                    format: if message.is_some() {
                        snapshot::FORMAT
                    } else {
                        0
                    },
                    message: message.unwrap_or_default(),
                    data,
                };
                // A peer that takes nothing for a while is given up on: the view would pin
                // the leader's pages for as long as the transfer hung.
                runtime
                    .block_on(tokio::time::timeout(SNAPSHOT_STALL_MAX, chunks.send(chunk)))
                    .is_ok_and(|sent| sent.is_ok())
            });
            match sent {
                Ok(false) => {
                    tracing::warn!(peer = %format!("{peer:x}"), "the peer stopped taking the snapshot");
                    false
                }
                Ok(true) => true,
                Err(error) => {
                    tracing::error!(%error, "reading the snapshot's rows failed");
                    false
                }
            }
        });
        tracing::info!(peer = %format!("{peer:x}"), index = message.get_snapshot().get_metadata().index, "sending a snapshot");
        let started = std::time::Instant::now();
        let call = client.snapshot(ReceiverStream::new(stream));
        tokio::pin!(call);
        let mut reader = reader;
        let (sent, read_all) = tokio::select! {
            sent = &mut call => (sent, reader.await.unwrap_or(false)),
            read = &mut reader => {
                if !read.unwrap_or(false) {
                    // Stalled, or the rows could not be read: the peer's answer is not awaited.
                    return false;
                }
                match tokio::time::timeout(SNAPSHOT_STALL_MAX, call).await {
                    Ok(sent) => (sent, true),
                    Err(_) => {
                        tracing::warn!(peer = %format!("{peer:x}"), "the peer did not answer for the whole snapshot");
                        return false;
                    }
                }
            }
        };
        match sent {
            Ok(_) if read_all => {
                tracing::info!(
                    peer = %format!("{peer:x}"),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "snapshot delivered"
                );
                true
            }
            Ok(_) => false,
            Err(status) => {
                tracing::warn!(peer = %format!("{peer:x}"), %status, "sending the snapshot failed");
                false
            }
        }
    }
}

/// The body of a link's stream: each poll drains what the node loop queued into one batch. The
/// connection's own body task takes the messages straight from the queue, with no task between
/// the node loop and the socket (a wake-up less on every message between members). The queue
/// outlives the stream, for the next one after a reconnect.
struct Outbox {
    queue: Arc<Mutex<mpsc::Receiver<Message>>>,
    transport: Arc<Transport>,
    peer: u64,
    /// Snapshots go on a stream of their own, through this client.
    client: PeerClient<Channel>,
    sent_bytes: prometheus::IntCounter,
    /// A batch went out on this stream (the link worked: the next reconnect need not back off).
    sent: Arc<AtomicBool>,
}

impl futures::Stream for Outbox {
    type Item = RaftBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<RaftBatch>> {
        let this = self.get_mut();
        let mut queue = lock(&this.queue);
        loop {
            let Some(first) = std::task::ready!(queue.poll_recv(cx)) else {
                return Poll::Ready(None);
            };
            let mut batch = RaftBatch {
                cluster_id: this.transport.cluster_id,
                from: this.transport.member_id,
                to: this.peer,
                messages: Vec::new(),
            };
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(message) = next {
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    let (transport, client, peer) =
                        (this.transport.clone(), this.client.clone(), this.peer);
                    tokio::spawn(async move {
                        let delivered = transport.send_snapshot(peer, client, message).await;
                        transport.report(Command::Input(Input::SnapshotStatus { peer, delivered }));
                    });
                } else if let Ok(encoded) = protobuf::Message::write_to_bytes(&message) {
                    bytes += encoded.len();
                    batch.messages.push(encoded);
                }
                next = if batch.messages.len() < BATCH_MESSAGES_MAX && bytes < BATCH_BYTES_MAX {
                    queue.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.messages.is_empty() {
                this.sent_bytes.inc_by(bytes as u64);
                this.sent.store(true, Ordering::Relaxed);
                return Poll::Ready(Some(batch));
            }
            // Only snapshots were queued: they went their own way; wait for more.
        }
    }
}

/// Asks the members at `urls` who the cluster is (for a member joining an existing cluster).
pub async fn fetch_cluster(
    urls: &[String],
    tls: Option<&Arc<ClientTls>>,
) -> Result<ClusterResponse, String> {
    let mut last_error = String::from("no peer URL to ask");
    for url in urls {
        let Some(mut client) = client(std::slice::from_ref(url), tls) else {
            continue;
        };
        match tokio::time::timeout(Duration::from_secs(3), client.cluster(ClusterRequest {})).await
        {
            Ok(Ok(response)) => return Ok(response.into_inner()),
            Ok(Err(status)) => last_error = format!("{url}: {}", status.message()),
            Err(_) => last_error = format!("{url}: timed out"),
        }
    }
    Err(last_error)
}

/// How often a link measures its peer's round-trip time (etcd's prober: every few seconds).
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

/// Measures the round trip to `peer` with a small unary call while its link lives, for
/// `etcd_network_peer_round_trip_time_seconds` and `etcd_network_active_peers`.
async fn probe(
    local: u64,
    peer: u64,
    mut client: PeerClient<Channel>,
    link: mpsc::WeakSender<Message>,
) {
    let metrics = crate::metrics::metrics();
    let (local, remote) = (format!("{local:x}"), format!("{peer:x}"));
    let round_trip = metrics
        .peer_round_trip
        .with_label_values(&[remote.as_str()]);
    let active = metrics
        .active_peers
        .with_label_values(&[local.as_str(), remote.as_str()]);
    // The first probe soon, so a new cluster shows its round trips at once.
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::time::sleep(wait).await;
        wait = PROBE_INTERVAL;
        if link.upgrade().is_none() {
            // The link was dropped: the member left or its URLs changed.
            active.set(0);
            return;
        }
        let started = std::time::Instant::now();
        let answered =
            tokio::time::timeout(PROBE_INTERVAL, client.cluster(ClusterRequest {})).await;
        if matches!(answered, Ok(Ok(_))) {
            round_trip.observe(started.elapsed().as_secs_f64());
            active.set(1);
        } else {
            active.set(0);
        }
    }
}
