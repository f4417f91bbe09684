//! A running member: bootstrap from the data directory, the node-loop thread that owns the
//! [`Node`], and the handler-facing API (`propose`, `read_barrier`, headers).
//!
//! Handlers never touch the node. They send a [`Command`] over a bounded channel (full means
//! "too many requests") and wait on a oneshot registered under the request id; the node loop
//! drains every pending command per turn, so concurrent writes share one fsync and concurrent
//! linearizable reads share one ReadIndex round.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message as _;
use raft::eraftpb::{ConfChangeType, ConfState, Message, Snapshot};
use sha1::Digest;
use synod_api::etcdserverpb::{AlarmType, ResponseHeader};
use synod_api::synodpb::{InternalRequest, MemberChange, MemberRecord, internal_request::Request};
use synod_core::apply::{Alarms, Response, StateMachine};
use synod_core::backend::Backend;
use synod_core::lease::Lessor;
use synod_core::mvcc::kv_store::KvStore;
use synod_core::node::{Node, NodeConfig, NodeStatus, Output, SnapshotJob};
use synod_core::raft_log::RaftLog;
use synod_core::watch::WatchHub;
use synod_core::{RequestError, StorageError};
use tokio::sync::oneshot;

use crate::config::Config;
use crate::error::ServerError;
use crate::peer::Transport;

/// Commands queued for the node loop before it refuses more ("too many requests").
const COMMAND_QUEUE_MAX: usize = 16 * 1024;
/// Commands handled per turn, so ticks are not starved under load.
const COMMANDS_PER_TURN_MAX: usize = 4 * 1024;
/// Proposal bytes drained per turn. This bounds one Raft log write, and with it how much a torn
/// last write can cut (see `synod_core::raft_log::TORN_TAIL_BYTES_MAX`).
const PROPOSAL_BYTES_PER_TURN_MAX: usize = 8 << 20;
/// Applied-behind-committed gap at which proposals are refused (etcd: 5000).
const APPLY_LAG_MAX: u64 = 5_000;
/// Version of the etcd API this member implements, reported by `Status` and `/version`.
pub const ETCD_API_VERSION: &str = "3.6.0";

/// Work for the node loop.
pub enum Command {
    Propose {
        id: u64,
        request: InternalRequest,
    },
    Read {
        token: u64,
    },
    /// Make the state machine durable and copy it to a file; reply with the path.
    Snapshot {
        reply: oneshot::Sender<Result<PathBuf, String>>,
    },
    Defragment {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// A Raft message from a peer.
    Step(Message),
    /// A peer could not be reached.
    Unreachable(u64),
    /// How sending a snapshot to a peer ended.
    SnapshotStatus(u64, bool),
    /// A snapshot asked for by Raft was written (or writing it failed).
    SnapshotReady(Option<Snapshot>),
    /// A membership change, checked against the cluster's health before it is proposed.
    ConfChange {
        id: u64,
        change: MemberChangeKind,
        member: MemberRecord,
    },
    /// A peer says this member was removed from the cluster.
    Removed,
    /// Hand leadership to a member.
    TransferLeader {
        to: u64,
        reply: oneshot::Sender<Result<(), ServerError>>,
    },
    Shutdown,
}

/// A membership change a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChangeKind {
    AddVoter,
    AddLearner,
    Promote,
    Remove,
}

/// Waiters for proposals and reads, shared by handlers and the node loop.
#[derive(Default)]
struct Waiters {
    proposals: Mutex<HashMap<u64, oneshot::Sender<Result<Response, ServerError>>>>,
    reads: Mutex<HashMap<u64, oneshot::Sender<Result<(), ServerError>>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Waiters {
    fn finish_proposal(&self, id: u64, outcome: Result<Response, ServerError>) {
        if let Some(waiter) = lock(&self.proposals).remove(&id) {
            // The handler may have timed out and gone; nothing to do then.
            let _ = waiter.send(outcome);
        }
    }

    fn finish_read(&self, token: u64, outcome: Result<(), ServerError>) {
        if let Some(waiter) = lock(&self.reads).remove(&token) {
            let _ = waiter.send(outcome);
        }
    }
}

/// The handler-facing side of a running member.
pub struct Member {
    pub config: Config,
    pub member_id: u64,
    pub cluster_id: u64,
    pub status: Arc<NodeStatus>,
    pub store: Arc<KvStore>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
    pub backend: Arc<Backend>,
    commands: SyncSender<Command>,
    waiters: Arc<Waiters>,
    next_id: AtomicU64,
    stopped: AtomicBool,
    request_timeout: Duration,
    transport: Arc<Transport>,
}

/// The node loop, ready to run on its own thread.
pub struct NodeLoop {
    node: Node,
    commands: Receiver<Command>,
    waiters: Arc<Waiters>,
    tick: Duration,
    data_dir: PathBuf,
    snapshots_taken: u64,
    transport: Arc<Transport>,
    commands_back: SyncSender<Command>,
}

/// etcd's member id: SHA-1 of the sorted peer URLs and the cluster token, first 8 bytes.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1::Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize())
}

/// etcd's cluster id: SHA-1 of the sorted member ids, big-endian, first 8 bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = sha1::Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A member that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Config(String),
}

fn slog_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let message = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

impl Member {
    /// Opens (or bootstraps) the member in `config.data_dir`. Returns the member and its node
    /// loop, which the caller runs on a thread of its own with [`NodeLoop::run`].
    pub async fn open(config: Config) -> Result<(Arc<Member>, NodeLoop), StartError> {
        let member_dir = config.data_dir.join("member");
        std::fs::create_dir_all(member_dir.join("snap"))
            .map_err(|e| StartError::Config(format!("creating {}: {e}", member_dir.display())))?;
        let backend = Arc::new(Backend::open(&member_dir.join("db"))?);
        let log = RaftLog::open(&member_dir.join("raft"))?;
        let (member_id, cluster_id) = match backend.identity()? {
            (0, _) if !log.is_new() => {
                return Err(StorageError::corrupt(
                    "the raft log exists but the state-machine file has no member or cluster id (was member/db replaced?)",
                )
                .into());
            }
            (0, _) if config.initial_cluster_new => bootstrap(&config, &backend)?,
            (0, _) => join(&config, &backend).await?,
            identity => identity,
        };
        remove_stale_snapshots(&member_dir.join("snap"));
        let tick_ms = config.heartbeat_ms;
        let machine = StateMachine::open(
            backend.clone(),
            tick_ms,
            config.lease_ttl_min_seconds(),
            1_000,
        )?;
        let node_config = NodeConfig {
            id: member_id,
            election_ticks: config.election_ticks(),
            heartbeat_ticks: 1,
            snapshot_count: config.snapshot_count,
            catch_up_entries: config.snapshot_count.min(5_000),
            uncommitted_size_max: 64 << 20,
        };
        let store = machine.store().clone();
        let lessor = machine.lessor().clone();
        let hub = machine.hub().clone();
        let alarms = machine.alarms().clone();
        let node = Node::new(node_config, log, machine, &slog_logger())?;
        tracing::info!(
            name = %config.name,
            member_id = %format!("{member_id:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            applied_index = node.machine().applied_index(),
            revision = store.current_revision(),
            "member opened"
        );
        let conf = node.conf_state();
        let listed = conf.voters.contains(&member_id) || conf.learners.contains(&member_id);
        let joining = conf.voters.is_empty() && conf.learners.is_empty();
        if !listed && !joining {
            return Err(StartError::Config(format!(
                "member {member_id:x} has been removed from the cluster; it cannot serve again \
                 (add it anew with `member add` and an empty data directory)"
            )));
        }
        let (sender, receiver) = std::sync::mpsc::sync_channel(COMMAND_QUEUE_MAX);
        let transport = Transport::new(
            cluster_id,
            member_id,
            backend.clone(),
            sender.clone(),
            tokio::runtime::Handle::current(),
        );
        let waiters = Arc::new(Waiters::default());
        let request_timeout =
            Duration::from_secs(5) + Duration::from_millis(2 * config.election_ms);
        let member = Arc::new(Member {
            status: node.status().clone(),
            member_id,
            cluster_id,
            store,
            lessor,
            hub,
            alarms,
            backend,
            commands: sender.clone(),
            waiters: waiters.clone(),
            transport: transport.clone(),
            next_id: AtomicU64::new(first_request_id(member_id)),
            stopped: AtomicBool::new(false),
            request_timeout,
            config: config.clone(),
        });
        let node_loop = NodeLoop {
            node,
            commands: receiver,
            waiters,
            tick: Duration::from_millis(config.heartbeat_ms),
            data_dir: config.data_dir.clone(),
            snapshots_taken: 0,
            transport,
            commands_back: sender,
        };
        Ok((member, node_loop))
    }

    /// A new id, unique across members and restarts (etcd's `idutil`: member bits, time, counter).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The response header for a reply at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cluster_id,
            member_id: self.member_id,
            revision,
            raft_term: self.status.term.load(Ordering::Relaxed),
        }
    }

    /// Fills the cluster fields of a header produced by the state machine.
    pub fn fill(&self, header: &mut Option<ResponseHeader>) {
        let revision = header.as_ref().map(|h| h.revision).unwrap_or(0);
        *header = Some(self.header(revision));
    }

    fn send(&self, command: Command) -> Result<(), ServerError> {
        if self.stopped.load(Ordering::Relaxed) {
            return Err(ServerError::Stopped);
        }
        match self.commands.try_send(command) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(ServerError::TooManyRequests),
            Err(TrySendError::Disconnected(_)) => Err(ServerError::Stopped),
        }
    }

    /// Proposes a request through Raft and waits until it is applied here.
    pub async fn propose(&self, request: Request) -> Result<Response, ServerError> {
        let commit = self.status.commit_index.load(Ordering::Relaxed);
        let applied = self.status.applied_index.load(Ordering::Relaxed);
        if commit.saturating_sub(applied) > APPLY_LAG_MAX {
            return Err(ServerError::TooManyRequests);
        }
        let id = self.next_id();
        let request = InternalRequest {
            id,
            request: Some(request),
        };
        if request.encoded_len() > self.config.request_bytes_max {
            return Err(ServerError::RequestTooLarge);
        }
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters.proposals).insert(id, sender);
        if let Err(error) = self.send(Command::Propose { id, request }) {
            lock(&self.waiters.proposals).remove(&id);
            return Err(error);
        }
        self.wait_proposal(id, receiver).await
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a Raft ReadIndex round (shared with every read of the same turn).
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        if self.transport.faults.unsafe_local_reads() {
            return Ok(());
        }
        let token = self.next_id();
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters.reads).insert(token, sender);
        if let Err(error) = self.send(Command::Read { token }) {
            lock(&self.waiters.reads).remove(&token);
            return Err(error);
        }
        match tokio::time::timeout(self.request_timeout, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                lock(&self.waiters.reads).remove(&token);
                Err(ServerError::Timeout)
            }
        }
    }

    /// Refuses every read and write while the CORRUPT alarm is raised: some member's data
    /// disagrees with the others', and serving it could hand out wrong data (etcd does the same).
    pub fn check_corrupt(&self) -> Result<(), ServerError> {
        if self.alarms.is_raised(AlarmType::Corrupt) {
            return Err(ServerError::Corrupt);
        }
        Ok(())
    }

    /// Refuses a write that would take the state machine over its quota, raising the NOSPACE
    /// alarm the first time (etcd's quota check happens before the proposal, too).
    pub async fn check_quota(&self, cost_bytes: usize) -> Result<(), ServerError> {
        if self.alarms.is_raised(AlarmType::Nospace) {
            return Err(RequestError::NoSpace.into());
        }
        if self.backend.size_bytes() + cost_bytes as u64 <= self.config.quota_backend_bytes {
            return Ok(());
        }
        tracing::warn!(
            size_bytes = self.backend.size_bytes(),
            quota_bytes = self.config.quota_backend_bytes,
            "state machine is over its quota; raising the NOSPACE alarm"
        );
        let alarm = synod_api::etcdserverpb::AlarmRequest {
            action: synod_api::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: self.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        self.propose(Request::Alarm(alarm)).await?;
        Err(RequestError::NoSpace.into())
    }

    /// Hands a peer's Raft message to the node loop; dropped when the loop is saturated (Raft
    /// treats it as lost and sends again).
    pub fn step(&self, message: Message) {
        let _ = self.commands.try_send(Command::Step(message));
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Proposes a membership change and waits until it is applied here. The node loop refuses it
    /// first if it would leave the cluster without a working quorum (etcd's strict reconfig
    /// check) or, for a promotion, if the learner has not caught up.
    pub async fn change_member(
        &self,
        change: MemberChangeKind,
        member: MemberRecord,
    ) -> Result<Response, ServerError> {
        let id = self.next_id();
        let (sender, receiver) = oneshot::channel();
        lock(&self.waiters.proposals).insert(id, sender);
        if let Err(error) = self.send(Command::ConfChange { id, change, member }) {
            lock(&self.waiters.proposals).remove(&id);
            return Err(error);
        }
        self.wait_proposal(id, receiver).await
    }

    async fn wait_proposal(
        &self,
        id: u64,
        receiver: oneshot::Receiver<Result<Response, ServerError>>,
    ) -> Result<Response, ServerError> {
        match tokio::time::timeout(self.request_timeout, receiver).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => {
                lock(&self.waiters.proposals).remove(&id);
                Err(ServerError::Timeout)
            }
        }
    }

    /// Asks the leader (this member) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ServerError> {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::TransferLeader { to, reply })?;
        receiver.await.map_err(|_| ServerError::Stopped)?
    }

    /// Asks the node loop for a consistent copy of the state-machine file.
    pub async fn snapshot_file(&self) -> Result<PathBuf, String> {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::Snapshot { reply })
            .map_err(|e| e.to_string())?;
        receiver.await.map_err(|_| "server stopped".to_owned())?
    }

    /// Asks the node loop to rewrite the state-machine file compactly.
    pub async fn defragment(&self) -> Result<(), String> {
        let (reply, receiver) = oneshot::channel();
        self.send(Command::Defragment { reply })
            .map_err(|e| e.to_string())?;
        receiver.await.map_err(|_| "server stopped".to_owned())?
    }

    /// Every member record, ordered by id.
    pub fn members(&self) -> Result<Vec<MemberRecord>, StorageError> {
        self.backend.members()
    }

    /// Stops the node loop; it makes the state machine durable before it exits.
    pub fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::Relaxed) {
            // A blocking send: shutdown must not be lost behind a full queue.
            let _ = self.commands.send(Command::Shutdown);
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

fn first_request_id(member_id: u64) -> u64 {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    ((member_id & 0xFFFF) << 48) | ((millis & 0xFF_FFFF_FFFF) << 8)
}

/// Bootstraps a member of a new cluster: every initial member's id comes from its peer URLs and
/// the cluster token, so all of them agree without talking. The state machine starts at index 1
/// (the initial configuration), as if installed from a snapshot; a member that joins later
/// therefore always catches up by snapshot, which carries the configuration.
fn bootstrap(config: &Config, backend: &Backend) -> Result<(u64, u64), StartError> {
    let members: Vec<MemberRecord> = config
        .initial_cluster
        .iter()
        .map(|(name, urls)| MemberRecord {
            id: member_id(urls, &config.initial_cluster_token),
            name: name.clone(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let Some(this) = members.iter().find(|m| m.name == config.name) else {
        return Err(StartError::Config(format!(
            "--initial-cluster has no member named {:?}",
            config.name
        )));
    };
    let this = this.clone();
    let mut own_urls = config.advertise_peer_urls.clone();
    let mut listed = this.peer_urls.clone();
    own_urls.sort();
    listed.sort();
    if own_urls != listed {
        return Err(StartError::Config(format!(
            "--initial-cluster lists {:?} for {:?} but --initial-advertise-peer-urls is {:?}",
            this.peer_urls, config.name, config.advertise_peer_urls
        )));
    }
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(StartError::Config(
            "--initial-cluster lists the same peer URLs twice".to_owned(),
        ));
    }
    // Client URLs are published through Raft once the member serves (see `background`), so
    // every member learns every member's, not only its own.
    let cluster = cluster_id(&ids);
    let records = members.clone();
    let conf_state = ConfState {
        voters: ids,
        ..ConfState::default()
    };
    let conf_bytes = protobuf::Message::write_to_bytes(&conf_state)
        .map_err(|e| StartError::Config(format!("encoding the configuration: {e}")))?;
    // The raft log records the same point when the node opens (it finishes an install that the
    // log has not recorded), so a crash anywhere here is safe to repeat.
    backend.write_bootstrap(cluster, this.id, &records, Some(&conf_bytes))?;
    tracing::info!(member_id = %format!("{:x}", this.id), cluster_id = %format!("{cluster:x}"), members = members.len(), "bootstrapped a new cluster");
    Ok((this.id, cluster))
}

/// Joins an existing cluster (`--initial-cluster-state existing`): asks the other members listed
/// in `--initial-cluster` who the cluster is and finds this member (already added with
/// `member add`) by its peer URLs. The log starts empty; the leader sends a snapshot.
async fn join(config: &Config, backend: &Backend) -> Result<(u64, u64), StartError> {
    let mut own_urls = config.advertise_peer_urls.clone();
    own_urls.sort();
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().cloned())
        .filter(|url| !own_urls.contains(url))
        .collect();
    let cluster = crate::peer::fetch_cluster(&others).await.map_err(|error| {
        StartError::Config(format!(
            "--initial-cluster-state existing: cannot reach the cluster ({error})"
        ))
    })?;
    let Some(this) = cluster
        .members
        .iter()
        .find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == own_urls
        })
        .cloned()
    else {
        return Err(StartError::Config(format!(
            "the cluster has no member with peer URLs {own_urls:?}: add it first (`synod member add {} --peer-urls ...`)",
            config.name
        )));
    };
    backend.write_bootstrap(cluster.cluster_id, this.id, &cluster.members, None)?;
    tracing::info!(member_id = %format!("{:x}", this.id), cluster_id = %format!("{:x}", cluster.cluster_id), "joining an existing cluster");
    Ok((this.id, cluster.cluster_id))
}

/// Snapshot files left by an earlier run (sent or received) are never needed again.
fn remove_stale_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}

impl NodeLoop {
    /// Runs until shutdown, on the calling thread. A storage failure, or a panic in the log or
    /// state-machine libraries, ends the whole process: after a failed write or fsync nothing on
    /// disk can be trusted to be what was acknowledged, and a member without its node loop must
    /// not keep answering.
    pub fn run(self) {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run_loop()));
        if let Err(panic) = outcome {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_owned());
            fail_stop(&StorageError::Log(format!(
                "the node loop panicked: {detail}"
            )));
        }
    }

    fn run_loop(mut self) {
        if self.node.is_single_voter() {
            // A cluster of one need not wait an election timeout to elect itself.
            let _ = self.node.campaign();
        }
        let mut next_tick = Instant::now() + self.tick;
        let mut reads = Vec::new();
        let mut removed_at: Option<Instant> = None;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match self.commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut shutdown = false;
            let mut removed = false;
            let mut handled = 0;
            let mut proposed_bytes = 0;
            let mut next = first;
            while let Some(command) = next {
                match command {
                    Command::Propose { id, request } => {
                        proposed_bytes += request.encoded_len();
                        if let Err(error) = self.node.propose(&request) {
                            let outcome = match error {
                                synod_core::node::ProposeError::NoLeader => ServerError::NoLeader,
                                synod_core::node::ProposeError::Dropped => {
                                    ServerError::LeaderChanged
                                }
                            };
                            self.waiters.finish_proposal(id, Err(outcome));
                        }
                    }
                    Command::Read { token } => reads.push(token),
                    Command::Snapshot { reply } => {
                        let _ = reply.send(self.copy_state_machine());
                    }
                    Command::Defragment { reply } => {
                        let _ = reply.send(self.defragment());
                    }
                    Command::Step(message) => {
                        if let Err(error) = self.node.step(message) {
                            tracing::debug!(%error, "raft refused a peer message");
                        }
                    }
                    Command::Unreachable(peer) => self.node.report_unreachable(peer),
                    Command::SnapshotStatus(peer, delivered) => {
                        self.node.report_snapshot(peer, delivered)
                    }
                    Command::SnapshotReady(snapshot) => self.offer_snapshot(snapshot),
                    Command::ConfChange { id, change, member } => {
                        if let Err(error) = self.propose_member_change(id, change, member) {
                            self.waiters.finish_proposal(id, Err(error));
                        }
                    }
                    Command::TransferLeader { to, reply } => {
                        let _ = reply.send(self.transfer_leader(to));
                    }
                    Command::Removed => removed = true,
                    Command::Shutdown => shutdown = true,
                }
                handled += 1;
                let room =
                    handled < COMMANDS_PER_TURN_MAX && proposed_bytes < PROPOSAL_BYTES_PER_TURN_MAX;
                next = if room {
                    self.commands.try_recv().ok()
                } else {
                    None
                };
            }
            if !reads.is_empty() {
                self.node.read_index(std::mem::take(&mut reads));
            }
            let now = Instant::now();
            if now >= next_tick {
                self.node.tick();
                next_tick += self.tick;
                if next_tick < now {
                    // The loop fell behind (a long fsync or a paused process): do not replay
                    // the missed ticks in a burst.
                    next_tick = now + self.tick;
                }
            }
            let mut out = Output::default();
            let mut unreachable = Vec::new();
            let transport = &self.transport;
            let mut send = |messages| unreachable.extend(transport.send(messages));
            if let Err(error) = self.node.advance(&mut out, &mut send) {
                fail_stop(&error);
            }
            for peer in unreachable {
                self.node.report_unreachable(peer);
            }
            if (out.removed || removed) && removed_at.is_none() {
                // Stop after a moment, as etcd does: the reply to the request that removed this
                // member (it may be the leader) and the commit to the others still go out.
                tracing::error!(
                    "this member has been permanently removed from the cluster; stopping"
                );
                removed_at = Some(Instant::now());
            }
            self.dispatch(out);
            if removed_at.is_some_and(|at| at.elapsed() >= REMOVED_STOP_DELAY) {
                if let Err(error) = self.node.sync() {
                    fail_stop(&error);
                }
                eprintln!("synod: the member has been permanently removed from the cluster");
                std::process::exit(REMOVED_EXIT_CODE);
            }
            if shutdown {
                break;
            }
        }
        if let Err(error) = self.node.sync() {
            fail_stop(&error);
        }
        tracing::info!("node loop stopped; state machine is durable");
    }

    fn dispatch(&mut self, out: Output) {
        for (id, result) in out.applied {
            if matches!(result, Ok(Response::Member(_))) {
                // Links follow the member list: a removed member's link closes, a changed URL
                // reconnects.
                self.transport.refresh();
            }
            if id == 0 {
                continue;
            }
            let outcome: Result<Response, ServerError> = match result {
                Ok(response) => Ok(response),
                Err(refused) => Err(refused.into()),
            };
            self.waiters.finish_proposal(id, outcome);
        }
        for token in out.reads_ready {
            self.waiters.finish_read(token, Ok(()));
        }
        for token in out.reads_failed {
            self.waiters
                .finish_read(token, Err(ServerError::LeaderChanged));
        }
        if let Some(job) = out.snapshot_job {
            self.write_snapshot(job);
        }
    }

    /// Writes a follower snapshot from a consistent view on a thread of its own, so the node
    /// keeps ticking and applying meanwhile; the result comes back as a command.
    fn write_snapshot(&mut self, job: SnapshotJob) {
        // A name never used before: an older snapshot may still be streaming to a follower.
        self.snapshots_taken += 1;
        let path = self.data_dir.join("member/snap").join(format!(
            "{:016x}-{:016x}-{}.snap.db",
            job.metadata.term, job.metadata.index, self.snapshots_taken
        ));
        let commands = self.commands_back.clone();
        let spawned = std::thread::Builder::new()
            .name("synod-snapshot".to_owned())
            .spawn(move || {
                let started = Instant::now();
                let outcome = synod_core::backend::export(&job.view, &path);
                drop(job.view);
                let snapshot = match outcome {
                    Ok(()) => {
                        tracing::info!(
                            index = job.metadata.index,
                            file = %path.display(),
                            elapsed_ms = started.elapsed().as_millis() as u64,
                            "snapshot written"
                        );
                        let mut snapshot = Snapshot::default();
                        snapshot.set_metadata(job.metadata);
                        snapshot.data = path.display().to_string().into_bytes().into();
                        Some(snapshot)
                    }
                    Err(error) => {
                        tracing::error!(%error, "writing a snapshot failed");
                        None
                    }
                };
                // A blocking send: the node loop must learn that the job ended.
                let _ = commands.send(Command::SnapshotReady(snapshot));
            });
        if spawned.is_err() {
            tracing::error!("cannot start the snapshot thread");
        }
    }

    fn offer_snapshot(&mut self, snapshot: Option<Snapshot>) {
        let previous = self
            .node
            .available_snapshot()
            .map(|s| String::from_utf8_lossy(&s.data).into_owned());
        let fresh = snapshot.is_some();
        self.node.offer_snapshot(snapshot);
        // The older file is no longer offered; a transfer still reading it keeps its open handle.
        let current = self
            .node
            .available_snapshot()
            .map(|s| String::from_utf8_lossy(&s.data).into_owned());
        if let (true, Some(previous)) = (fresh, previous)
            && Some(&previous) != current.as_ref()
        {
            let _ = std::fs::remove_file(previous);
        }
    }

    fn transfer_leader(&mut self, to: u64) -> Result<(), ServerError> {
        if !self.node.status().is_leader.load(Ordering::Relaxed) {
            return Err(ServerError::NotLeader);
        }
        if !self.node.conf_state().voters.contains(&to) {
            return Err(ServerError::BadLeaderTransferee);
        }
        self.node.transfer_leader(to);
        Ok(())
    }

    /// etcd's strict reconfiguration checks, then the proposal.
    fn propose_member_change(
        &mut self,
        id: u64,
        change: MemberChangeKind,
        mut member: MemberRecord,
    ) -> Result<(), ServerError> {
        let conf = self.node.conf_state();
        let is_voter = conf.voters.contains(&member.id);
        let is_learner = conf.learners.contains(&member.id);
        let active = self.node.recently_active();
        if active.is_empty() {
            // Only the leader knows who is up; a follower cannot check the change safely.
            return Err(ServerError::NotLeader);
        }
        let active_voters = |exclude: u64| {
            conf.voters
                .iter()
                .filter(|v| **v != exclude && active.contains(v))
                .count()
        };
        let quorum = |voters: usize| voters / 2 + 1;
        let change_type = match change {
            MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
                if is_voter || is_learner {
                    return Err(RequestError::MemberExists.into());
                }
                if change == MemberChangeKind::AddVoter {
                    if active_voters(0) < quorum(conf.voters.len() + 1) {
                        return Err(RequestError::NotEnoughStarted.into());
                    }
                    ConfChangeType::AddNode
                } else {
                    if !conf.learners.is_empty() {
                        return Err(RequestError::TooManyLearners.into());
                    }
                    ConfChangeType::AddLearnerNode
                }
            }
            MemberChangeKind::Promote => {
                if is_voter {
                    return Err(RequestError::MemberNotLearner.into());
                }
                if !is_learner {
                    return Err(RequestError::MemberNotFound.into());
                }
                match self.node.replication(member.id) {
                    // etcd: the learner's log must be within 10% of the leader's.
                    Some((matched, last)) if matched as f64 >= last as f64 * 0.9 => {}
                    _ => return Err(RequestError::LearnerNotReady.into()),
                }
                ConfChangeType::AddNode
            }
            MemberChangeKind::Remove => {
                if !is_voter && !is_learner {
                    return Err(RequestError::MemberNotFound.into());
                }
                if is_voter && active_voters(member.id) < quorum(conf.voters.len() - 1) {
                    return Err(RequestError::NotEnoughStarted.into());
                }
                ConfChangeType::RemoveNode
            }
        };
        let adding = matches!(
            change,
            MemberChangeKind::AddVoter | MemberChangeKind::AddLearner
        );
        if !adding
            && let Some(record) = self
                .node
                .machine()
                .backend()
                .members()
                .map_err(ServerError::from)?
                .into_iter()
                .find(|m| m.id == member.id)
        {
            // The context carries the whole record, so a removal can report whom it removed.
            member = record;
        }
        let context = MemberChange {
            id,
            member: Some(member.clone()),
        }
        .encode_to_vec();
        self.node
            .propose_conf_change(change_type, member.id, context)
            .map_err(|error| match error {
                synod_core::node::ProposeError::NoLeader => ServerError::NoLeader,
                synod_core::node::ProposeError::Dropped => ServerError::LeaderChanged,
            })
    }

    fn copy_state_machine(&mut self) -> Result<PathBuf, String> {
        self.node.sync().map_err(|e| e.to_string())?;
        let source = self.node.machine().backend().path().to_path_buf();
        // A name of its own per request: a second snapshot must not rewrite a file still being
        // streamed to the first client.
        self.snapshots_taken += 1;
        let target = self.data_dir.join("member/snap").join(format!(
            "db-{}-{}.snapshot",
            std::process::id(),
            self.snapshots_taken
        ));
        copy_file(&source, &target).map_err(|e| format!("copying {}: {e}", source.display()))?;
        Ok(target)
    }

    fn defragment(&mut self) -> Result<(), String> {
        self.node.sync().map_err(|e| e.to_string())?;
        let backend = self.node.machine().backend().clone();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match backend.defragment() {
                Ok(()) => return Ok(()),
                // Readers hold read transactions only briefly; try again until they are gone.
                Err(error) if Instant::now() < deadline => {
                    tracing::debug!(%error, "defragment waiting for readers");
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(error) => return Err(error.to_string()),
            }
        }
    }
}

fn copy_file(source: &Path, target: &Path) -> std::io::Result<()> {
    std::fs::copy(source, target)?;
    std::fs::File::open(target)?.sync_all()
}

/// How long a removed member keeps running before it stops (etcd: one second).
const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);
/// Exit code of a member that was removed from its cluster.
pub const REMOVED_EXIT_CODE: i32 = 0;

/// Exit code of a member stopped by a storage failure (EX_SOFTWARE would hide the cause; 70 is
/// what operators and the tests look for).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

fn fail_stop(error: &StorageError) -> ! {
    tracing::error!(%error, "storage failure: stopping the member so that nothing unsafe is served");
    eprintln!("synod: fatal storage failure: {error}");
    std::process::exit(FAIL_STOP_EXIT_CODE);
}

/// Returns whether a response came from the state machine for this request kind (helper for
/// handlers that unwrap a specific response).
pub fn unexpected(response: &Response) -> ServerError {
    tracing::error!(
        ?response,
        "state machine answered with an unexpected response kind"
    );
    ServerError::Storage
}
