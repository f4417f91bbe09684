//! ZooKeeper's client protocol on the member's own store, beside the etcd services: kazoo,
//! zkCli and Curator talk to a Synod cluster as to a ZooKeeper 3.8 ensemble, and see what etcd
//! clients write under the same tree (the layout is `synod_core::zk`'s).
//!
//! - [`frame`]: length-prefixed frames, bounded by `jute.maxbuffer`.
//! - [`jute`]: the record encoding.
//! - `connection`: the handshake and one connection's loop: requests in order, replies in order,
//!   watch events before the replies that show their change.
//! - `session`: sessions as leases.
//! - `command`: each opcode.
//! - `four_letter`: `ruok`, `srvr`, `mntr` and the other four-letter words.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use synod_api::synodpb::ZkWrite;
use synod_api::synodpb::internal_request::Request;
use tokio::net::TcpListener;

use crate::config::ZookeeperSettings;
use crate::error::ServerError;
use crate::member::Member;

mod command;
mod connection;
mod four_letter;
pub mod frame;
pub mod jute;
mod session;
mod watches;

/// A failure that is not one of ZooKeeper's answers (no leader, a stopped member, a disk
/// error): the connection is closed, and the client retries, as on a ZooKeeper server's loss.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error(transparent)]
    Store(#[from] synod_core::Error),
    #[error("{0}")]
    Other(String),
}

/// What one connection has done, for `stat`, `cons` and `mntr`.
#[derive(Debug)]
pub struct ConnectionStats {
    pub remote: SocketAddr,
    pub session: AtomicI64,
    pub timeout_ms: AtomicI64,
    pub received: AtomicU64,
    pub sent: AtomicU64,
    pub watches: AtomicU64,
    pub started: Instant,
    /// The last request answered and the latencies so far, for `cons`.
    pub last: Mutex<LastRequest>,
}

/// Request latencies in ms, as `cons`, `srvr` and `mntr` report them.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latencies {
    min_ms: u64,
    max_ms: u64,
    sum_ms: u64,
    count: u64,
}

impl Latencies {
    fn record(&mut self, ms: u64) {
        self.min_ms = if self.count == 0 {
            ms
        } else {
            self.min_ms.min(ms)
        };
        self.max_ms = self.max_ms.max(ms);
        self.sum_ms += ms;
        self.count += 1;
    }

    /// (min, average, max); zeros before the first request.
    pub fn min_avg_max(&self) -> (u64, f64, u64) {
        if self.count == 0 {
            return (0, 0.0, 0);
        }
        (
            self.min_ms,
            self.sum_ms as f64 / self.count as f64,
            self.max_ms,
        )
    }
}

/// What `cons` says of a connection's requests.
#[derive(Debug, Clone, Copy, Default)]
pub struct LastRequest {
    pub op: i32,
    pub xid: i32,
    pub zxid: i64,
    /// When the answer went out, in ms since the epoch.
    pub response_ms: i64,
    pub latency_ms: u64,
    pub latencies: Latencies,
}

impl ConnectionStats {
    fn record(&self, op: i32, xid: i32, zxid: i64, latency_ms: u64) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        last.latencies.record(latency_ms);
        last.op = op;
        last.xid = xid;
        last.zxid = zxid;
        last.latency_ms = latency_ms;
        last.response_ms = command::now_ms();
    }

    pub fn last(&self) -> LastRequest {
        *self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The ZooKeeper front of one member.
pub struct Front {
    sessions: session::Sessions,
    connections: Mutex<HashMap<u64, Arc<ConnectionStats>>>,
    next_connection: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    latency: Mutex<Latencies>,
    started: Instant,
    /// Whether `/` is known to exist (the built-in nodes were created).
    tree_ready: std::sync::atomic::AtomicBool,
}

impl Front {
    pub fn new(member: Arc<Member>, settings: ZookeeperSettings) -> Front {
        Front {
            sessions: session::Sessions::new(member, settings),
            connections: Mutex::new(HashMap::new()),
            next_connection: AtomicU64::new(1),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            latency: Mutex::new(Latencies::default()),
            started: Instant::now(),
            tree_ready: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn member(&self) -> &Arc<Member> {
        self.sessions.member()
    }

    pub fn settings(&self) -> &ZookeeperSettings {
        &self.sessions.settings
    }

    /// Creates `/`, `/zookeeper`, `/zookeeper/quota` and `/zookeeper/config` where missing.
    async fn ensure_tree(&self) -> Result<(), Failure> {
        if self.tree_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let store = &self.member().machine.store;
        let have_root = !store
            .range(
                &synod_core::zk::data_key("/"),
                &[],
                synod_core::mvcc::kv_store::RangeOptions::default(),
            )?
            .kvs
            .is_empty();
        if !have_root {
            let write = ZkWrite {
                time_ms: command::now_ms(),
                bootstrap: true,
                ..ZkWrite::default()
            };
            self.member().propose(Request::ZkWrite(write)).await?;
        }
        self.tree_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Registers a new connection; `None` when its address already has the most it may.
    fn register(&self, remote: SocketAddr) -> Option<(u64, Arc<ConnectionStats>)> {
        let max = self.settings().max_client_connections;
        let mut connections = self.lock_connections();
        if max > 0
            && connections
                .values()
                .filter(|c| c.remote.ip() == remote.ip())
                .count()
                >= max
        {
            return None;
        }
        let id = self.next_connection.fetch_add(1, Ordering::Relaxed);
        let stats = Arc::new(ConnectionStats {
            remote,
            session: AtomicI64::new(0),
            timeout_ms: AtomicI64::new(0),
            received: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            watches: AtomicU64::new(0),
            started: Instant::now(),
            last: Mutex::new(LastRequest::default()),
        });
        connections.insert(id, stats.clone());
        Some((id, stats))
    }

    fn unregister(&self, id: u64) {
        self.lock_connections().remove(&id);
    }

    fn lock_connections(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<ConnectionStats>>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn connection_stats(&self) -> Vec<Arc<ConnectionStats>> {
        self.lock_connections().values().cloned().collect()
    }

    fn record_latency(&self, ms: u64) {
        self.latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .record(ms);
    }

    /// (min, avg, max) request latency in ms.
    fn latencies(&self) -> (u64, f64, u64) {
        self.latency
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .min_avg_max()
    }
}

/// Binds the ZooKeeper port; `None` when it is off, or taken by default and not free.
pub async fn bind(settings: &ZookeeperSettings) -> anyhow::Result<Option<TcpListener>> {
    match TcpListener::bind(&settings.address).await {
        Ok(listener) => Ok(Some(listener)),
        Err(error) if settings.implicit => {
            tracing::warn!(address = %settings.address, %error, "not serving ZooKeeper clients: the default port is taken (set --zookeeper-addr, or empty to turn it off)");
            Ok(None)
        }
        Err(error) => Err(anyhow::Error::new(error).context(format!(
            "listening for ZooKeeper clients on {}",
            settings.address
        ))),
    }
}

/// Serves ZooKeeper clients on `listener` until `stop` says so.
pub async fn serve(
    member: Arc<Member>,
    settings: ZookeeperSettings,
    listener: TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let front = Arc::new(Front::new(member, settings));
    tokio::spawn(remove_due_nodes(front.clone(), stop.clone()));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(connection::run(front.clone(), stream, remote));
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting a ZooKeeper connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// Most removals of empty containers and expired TTL nodes per check
/// (znode.container.maxPerMinute, per minute there).
const REMOVALS_PER_CHECK_MAX: usize = 10_000;

/// On the leader, every check interval: removes containers that lost their last child and TTL
/// nodes past their TTL (ZooKeeper's `ContainerManager`), each by a delete through Raft that
/// fails harmlessly (NotEmpty) if a child appeared meanwhile.
async fn remove_due_nodes(front: Arc<Front>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let interval = front.settings().container_check_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.changed() => return,
        }
        let member = front.member();
        if !member.is_leader() {
            continue;
        }
        let now = command::At {
            store: &member.machine.store,
            revision: member.machine.store.current_revision(),
        };
        let due = match synod_core::zk::due_for_removal(&now, command::now_ms()) {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "finding containers and TTL nodes to remove");
                continue;
            }
        };
        for path in due.into_iter().take(REMOVALS_PER_CHECK_MAX) {
            let write = ZkWrite {
                time_ms: command::now_ms(),
                // The removal is the server's own: no ACL stands in its way.
                identities: vec![synod_api::synodpb::ZkId {
                    scheme: "super".to_owned(),
                    id: String::new(),
                }],
                ops: vec![synod_api::synodpb::ZkOp {
                    opcode: synod_core::zk::op::DELETE,
                    path,
                    version: -1,
                    ..Default::default()
                }],
                ..ZkWrite::default()
            };
            if let Err(error) = member.propose(Request::ZkWrite(write)).await {
                tracing::debug!(%error, "removing a container or TTL node");
                break;
            }
        }
    }
}
