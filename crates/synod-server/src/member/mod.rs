//! A running member: the handler-facing [`Member`], opened from the data directory
//! ([`open`]), and the node-loop thread that runs its driver ([`node_loop`]).
//!
//! Handlers never touch the node. They send a [`Command`] over a bounded channel (full means
//! "too many requests") and wait for the driver's answer to their request id; the node loop
//! drains every pending command per turn, so concurrent writes share one fsync and concurrent
//! linearizable reads share one ReadIndex round.

mod node_loop;
mod open;
pub mod restore;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::Duration;

use prost::Message as _;
use raft::eraftpb::Message;
use synod_api::etcdserverpb::{AlarmType, ResponseHeader};
use synod_api::synodpb::{AuthHeader, InternalRequest, MemberRecord, internal_request::Request};
use synod_core::apply::{Alarms, Response};
use synod_core::auth::AuthStore;
use synod_core::backend::Backend;
use synod_core::driver::{Answer, Input, RequestIds};
use synod_core::lease::{LeaseInfo, Lessor};
use synod_core::mvcc::kv_store::{KvStore, PreparedIndex};
use synod_core::node::NodeStatus;
use synod_core::watch::WatchHub;
use synod_core::{RequestError, StorageError};
use tokio::sync::oneshot;

pub use crate::command::Command;
use crate::config::Config;
use crate::error::ServerError;
use crate::transport::Transport;

pub use node_loop::NodeLoop;
pub use open::{StartError, cluster_id, member_id};
pub use synod_core::driver::MemberChangeKind;

/// Commands queued for the node loop before it refuses more ("too many requests").
const COMMAND_QUEUE_MAX: usize = 16 * 1024;
/// Applied-behind-committed gap at which proposals are refused (etcd: 5000).
const APPLY_LAG_MAX: u64 = 5_000;
/// Version of the etcd API this member implements, reported by `Status` and `/version`.
pub const ETCD_API_VERSION: &str = "3.6.0";
/// Exit code of a member that was removed from its cluster.
pub const REMOVED_EXIT_CODE: i32 = 0;
/// Exit code of a member stopped by a storage failure (EX_SOFTWARE would hide the cause; 70 is
/// what operators and the tests look for).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

/// What the node loop has reached, published after every turn for handlers that wait for it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub leader_id: u64,
    pub applied_index: u64,
    pub revision: i64,
}

/// Handles on the parts of the state machine, shared with the node loop that applies to them:
/// handlers read through them and never write.
pub struct Machine {
    pub store: Arc<KvStore>,
    pub lessor: Arc<Lessor>,
    pub hub: Arc<WatchHub>,
    pub alarms: Arc<Alarms>,
    pub auth: Arc<AuthStore>,
    pub backend: Arc<Backend>,
}

/// What the member keeps to account for its clients beyond the auth store.
pub struct Security {
    pub audit: crate::audit_log::AuditLog,
    /// JWT keys, when tokens are JWTs.
    pub jwt: Option<Arc<crate::jwt::Jwt>>,
}

/// The handler-facing side of a running member.
pub struct Member {
    pub config: Config,
    pub member_id: u64,
    pub cluster_id: u64,
    pub status: Arc<NodeStatus>,
    pub machine: Machine,
    pub security: Security,
    /// The zero of [`Member::clock_ms`].
    started: std::time::Instant,
    commands: SyncSender<Command>,
    ids: Arc<RequestIds>,
    stopped: AtomicBool,
    request_timeout: Duration,
    transport: Arc<Transport>,
    progress: tokio::sync::watch::Receiver<Progress>,
}

impl Member {
    /// Milliseconds since this process opened the member: the clock of token TTLs.
    pub fn clock_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// A new request id, unique among this member's requests across restarts (see
    /// `synod_core::driver::RequestIds`).
    pub fn next_id(&self) -> u64 {
        self.ids.next()
    }

    /// A lease id for a grant that names none, chosen before proposing so every member applies
    /// the same one.
    pub fn new_lease_id(&self) -> i64 {
        RequestIds::lease_id(self.member_id, self.next_id())
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

    /// Hands the driver a client request made with a fresh id and waits for its answer.
    async fn call(&self, input: impl FnOnce(u64) -> Input) -> Result<Answer, ServerError> {
        let id = self.next_id();
        let (reply, answer) = oneshot::channel();
        self.send(Command::Client {
            id,
            input: input(id),
            reply,
            span: tracing::Span::current(),
        })?;
        match tokio::time::timeout(self.request_timeout, answer).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(ServerError::Stopped),
            Err(_) => Err(ServerError::Timeout),
        }
    }

    /// Proposes the member's own request (no caller: not checked against permissions) through
    /// Raft and waits until it is applied here.
    pub async fn propose(&self, request: Request) -> Result<Response, ServerError> {
        self.propose_with(None, request).await
    }

    /// Proposes a client's request: `caller` goes into the entry and is checked against the
    /// permissions when it is applied.
    pub async fn propose_for(
        &self,
        caller: &AuthHeader,
        request: Request,
    ) -> Result<Response, ServerError> {
        self.propose_with(Some(caller.clone()), request).await
    }

    async fn propose_with(
        &self,
        caller: Option<AuthHeader>,
        request: Request,
    ) -> Result<Response, ServerError> {
        // Measured as etcd measures it, with a full-width request id (the origin is the driver's).
        let mut request = InternalRequest {
            id: u64::MAX,
            origin: 0,
            request: Some(request),
            auth: caller,
        };
        if request.encoded_len() > self.config.request_bytes_max {
            return Err(ServerError::RequestTooLarge);
        }
        let span = tracing::trace_span!(
            "propose",
            otel.name = "propose",
            bytes = request.encoded_len()
        );
        let answer = tracing::Instrument::instrument(
            self.call(|id| {
                request.id = id;
                Input::Propose { request }
            }),
            span,
        )
        .await?;
        match answer {
            Answer::Applied(response) => Ok(response),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a Raft ReadIndex round (shared with every read of the same turn).
    pub async fn read_barrier(&self) -> Result<(), ServerError> {
        if self.transport.faults.unsafe_local_reads() {
            return Ok(());
        }
        let span = tracing::trace_span!("read_index", otel.name = "read_index");
        match tracing::Instrument::instrument(self.call(|token| Input::Read { token }), span)
            .await?
        {
            Answer::ReadReady => Ok(()),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Renews a lease on this member, which must lead (confirmed through Raft); returns the TTL,
    /// 0 for an unknown lease (as etcd answers), or `NotLeader` (the caller forwards it).
    pub async fn renew_lease(&self, lease: i64) -> Result<i64, ServerError> {
        if !self.is_leader() {
            return Err(ServerError::NotLeader);
        }
        match self
            .call(|token| Input::RenewLease { token, lease })
            .await?
        {
            Answer::Renewed { ttl } => Ok(ttl),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// The leader's view of a lease, after a ReadIndex round confirms it leads; `NotLeader`
    /// elsewhere (only the leader keeps deadlines).
    pub async fn lease_time_to_live(&self, lease: i64) -> Result<Option<LeaseInfo>, ServerError> {
        if !self.is_leader() {
            return Err(ServerError::NotLeader);
        }
        match self
            .call(|token| Input::LeaseTimeToLive { token, lease })
            .await?
        {
            Answer::TimeToLive(info) => Ok(info),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Proposes a membership change and waits until it is applied here. The driver refuses it
    /// first if it would leave the cluster without a working quorum (etcd's strict reconfig
    /// check) or, for a promotion, if the learner has not caught up.
    pub async fn change_member(
        &self,
        change: MemberChangeKind,
        member: MemberRecord,
    ) -> Result<Response, ServerError> {
        let answer = self
            .call(|id| Input::ChangeMembership { id, change, member })
            .await?;
        match answer {
            Answer::Applied(response) => Ok(response),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Asks the leader (this member) to hand leadership to `to`.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ServerError> {
        match self
            .call(|token| Input::TransferLeader { token, to })
            .await?
        {
            Answer::Transferred => Ok(()),
            other => Err(unexpected_answer(&other)),
        }
    }

    /// Waits until the node loop's progress satisfies `reached`, or `timeout` passes; returns
    /// whether it was reached. A notification, not a poll: the loop publishes after each turn.
    pub async fn wait_for(&self, timeout: Duration, reached: impl Fn(&Progress) -> bool) -> bool {
        let mut progress = self.progress.clone();
        matches!(
            tokio::time::timeout(timeout, progress.wait_for(|p| reached(p))).await,
            Ok(Ok(_))
        )
    }

    /// HashKV at `revision`, computed on a blocking thread: it reads every key, and must not
    /// stall the clients' requests sharing the runtime's workers.
    pub async fn hash_kv(&self, revision: i64) -> Result<(u32, i64, i64), ServerError> {
        let store = self.machine.store.clone();
        tokio::task::spawn_blocking(move || store.hash_kv(revision))
            .await
            .map_err(|_| ServerError::Internal)?
            .map_err(ServerError::from)
    }

    /// Refuses every read and write while the CORRUPT alarm is raised: some member's data
    /// disagrees with the others', and serving it could hand out wrong data (etcd does the same).
    pub fn check_corrupt(&self) -> Result<(), ServerError> {
        if self.machine.alarms.is_raised(AlarmType::Corrupt) {
            return Err(ServerError::Corrupt);
        }
        Ok(())
    }

    /// Refuses a write that would take the state machine over its quota, raising the NOSPACE
    /// alarm the first time (etcd's quota check happens before the proposal, too).
    pub async fn check_quota(&self, cost_bytes: usize) -> Result<(), ServerError> {
        if self.machine.alarms.is_raised(AlarmType::Nospace) {
            return Err(RequestError::NoSpace.into());
        }
        if self.machine.backend.size_bytes() + cost_bytes as u64 <= self.config.quota_backend_bytes
        {
            return Ok(());
        }
        tracing::warn!(
            size_bytes = self.machine.backend.size_bytes(),
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
        let _ = self.commands.try_send(Command::Input(Input::Step(message)));
    }

    /// Hands a snapshot message whose file was built from a peer's stream to the node loop, with
    /// the key index rebuilt from the same rows. Waits for room: a whole transfer is not
    /// dropped for a busy loop.
    pub async fn step_snapshot(
        &self,
        message: Message,
        index: PreparedIndex,
    ) -> Result<(), String> {
        let commands = self.commands.clone();
        let input = Input::StepSnapshot {
            message,
            index: Box::new(index),
        };
        let sent =
            tokio::task::spawn_blocking(move || commands.send(Command::Input(input)).is_ok())
                .await
                .map_err(|e| e.to_string())?;
        if sent {
            Ok(())
        } else {
            Err("the node loop has stopped".to_owned())
        }
    }

    pub fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Writes the state machine, as of one consistent view, into a new file in etcd's database
    /// layout (`synod_core::etcd_db`) under `member/snap`, for `Maintenance.Snapshot` to stream
    /// and then remove. Off the runtime's workers; the node loop keeps applying meanwhile.
    pub async fn snapshot_file(&self) -> Result<PathBuf, String> {
        let backend = self.machine.backend.clone();
        let path = self.config.data_dir.join("member/snap").join(format!(
            "db-{}-{}.snapshot",
            std::process::id(),
            self.next_id()
        ));
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            let written = (|| -> Result<(), String> {
                let tx = backend.begin_read().map_err(|e| e.to_string())?;
                let file = std::fs::File::create(&path)
                    .map_err(|e| format!("creating {}: {e}", path.display()))?;
                let written = synod_core::etcd_db::export(&tx, std::io::BufWriter::new(file))
                    .map_err(|e| e.to_string())?;
                written
                    .inner
                    .into_inner()
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                Ok(())
            })();
            if let Err(error) = written {
                let _ = std::fs::remove_file(&path);
                return Err(error);
            }
            crate::metrics::metrics()
                .snapshot_duration
                .observe(started.elapsed().as_secs_f64());
            Ok(path)
        })
        .await
        .map_err(|_| "the snapshot task failed".to_owned())?
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
        self.machine.backend.members()
    }

    /// Stops the node loop; it makes the state machine durable before it exits.
    pub fn shutdown(&self) {
        if !self.stopped.swap(true, Ordering::Relaxed) {
            // A blocking send: shutdown must not be lost behind a full queue.
            let _ = self.commands.send(Command::Shutdown);
        }
    }

    /// Whether this member leads, as of the node loop's last turn.
    pub fn is_leader(&self) -> bool {
        self.status.is_leader.load(Ordering::Relaxed)
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }
}

/// The driver answered a request with an answer of another kind: a bug, reported as an internal
/// failure rather than a panic in a handler.
fn unexpected_answer(answer: &Answer) -> ServerError {
    tracing::error!(
        ?answer,
        "the driver answered with an unexpected kind of answer"
    );
    ServerError::Internal
}

/// The state machine answered with a response of another kind than the request's (helper for
/// handlers that unwrap a specific response).
pub fn unexpected(response: &Response) -> ServerError {
    tracing::error!(
        ?response,
        "state machine answered with an unexpected response kind"
    );
    ServerError::Internal
}
