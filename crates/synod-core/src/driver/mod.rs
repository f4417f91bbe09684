//! The member's decisions, written once: the server's node loop and the simulator's host both
//! feed a [`Driver`] the same [`Input`]s and act on the same [`Output`]s, and contain only I/O.
//!
//! The driver owns the [`Node`] and everything a turn decides around it: which client requests
//! wait for what (a proposal for its entry to apply, a read for its ReadIndex, a lease renewal for
//! leadership to be confirmed and perhaps for its checkpoint to be cleared), when a proposal is
//! refused before it reaches the log (no leader, apply lag), etcd's strict membership checks and
//! the learner promotion rule, leadership transfer, and the invariants a turn must keep. It has no
//! threads, sockets, clock or async: time is [`Input::Tick`], messages leave through the `send`
//! callback of [`Driver::advance`], and the log and state machine write through the file system
//! and storage backend the node was opened on (the simulator's disk, or the real one).
//!
//! Request ids double as waiter keys: the caller draws every `id` and `token` from one generator
//! of cluster-unique ids (`RequestIds`), so the id of a renewal can also name the proposal that
//! clears its lease checkpoint.

mod ids;
pub mod membership;

use std::collections::BTreeMap;
use std::sync::Arc;

use prost::Message as _;
use raft::eraftpb::{Message, Snapshot};
use raft_engine::env::{DefaultFileSystem, FileSystem};
use synod_api::etcdserverpb::{
    DeleteRangeResponse, LeaseCheckpoint, LeaseCheckpointRequest, PutResponse,
};
use synod_api::synodpb::{InternalRequest, MemberChange, MemberRecord, internal_request::Request};

use crate::apply::Response;
use crate::error::{RequestError, StorageError};
use crate::lease::{LeaseInfo, RenewError};
use crate::mvcc::kv_store::PreparedIndex;
pub use crate::node::SnapshotJob;
use crate::node::{AppliedEntry, Node, ProposeError};

pub use ids::RequestIds;
pub use membership::MemberChangeKind;

/// How a driver is set up.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Applied-behind-committed gap at which proposals are refused (etcd: 5000).
    pub apply_lag_max: u64,
    /// Ticks a request is remembered without an answer before it is answered `Timeout` and
    /// forgotten (its caller has given up by then).
    pub pending_ticks_max: u64,
}

/// Something that happened to the member.
#[derive(Debug)]
pub enum Input {
    /// Propose a client request; answered with [`Answer::Applied`] once applied here.
    Propose { request: InternalRequest },
    /// A linearizable read barrier: answered [`Answer::ReadReady`] once this member has applied
    /// everything committed when it arrived (one ReadIndex round per turn serves them all).
    Read { token: u64 },
    /// A keep-alive on the leader: leadership is confirmed by a ReadIndex round, then the lease is
    /// renewed, and a stale checkpoint cleared through Raft before the answer.
    RenewLease { token: u64, lease: i64 },
    /// `LeaseTimeToLive` on the leader, after a ReadIndex round.
    LeaseTimeToLive { token: u64, lease: i64 },
    /// A membership change, checked against the cluster's health before it is proposed.
    ChangeMembership {
        id: u64,
        change: MemberChangeKind,
        member: MemberRecord,
    },
    /// Hand leadership to a voter.
    TransferLeader { token: u64, to: u64 },
    /// A Raft message from a peer.
    Step(Message),
    /// A snapshot message whose file the shell built from the leader's stream, with the key
    /// index rebuilt from the same rows (see [`Node::step_snapshot`]).
    StepSnapshot {
        message: Message,
        index: Box<PreparedIndex>,
    },
    /// A message to a peer could not be delivered.
    Unreachable(u64),
    /// How sending a snapshot to a peer ended.
    SnapshotStatus { peer: u64, delivered: bool },
    /// The snapshot of a job asked for in [`Output::snapshot_job`] (`data` names its view), or
    /// none, if keeping the view failed.
    SnapshotReady(Option<Snapshot>),
    /// One unit of logical time passed.
    Tick,
}

/// What a client request is answered with.
#[derive(Debug)]
pub enum Answer {
    Applied(Response),
    ReadReady,
    /// The lease's TTL in seconds again; 0 for a lease this member does not know (as etcd).
    Renewed {
        ttl: i64,
    },
    TimeToLive(Option<LeaseInfo>),
    Transferred,
}

/// The answer to the request with id (or token) `id`.
#[derive(Debug)]
pub struct Reply {
    pub id: u64,
    pub outcome: Result<Answer, DriverError>,
}

/// Why the driver could not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DriverError {
    #[error(transparent)]
    Refused(#[from] RequestError),
    /// The proposal could not reach the log: no leader is known. It certainly did not happen.
    #[error("no leader")]
    NoLeader,
    /// Leadership changed under the request; a proposal refused with it never reached the log.
    #[error("leader changed")]
    LeaderChanged,
    /// The request needs the leader; this member does not lead (the caller may forward it).
    #[error("not leader")]
    NotLeader,
    /// The state machine lags too far behind the log to take more proposals.
    #[error("too many requests")]
    TooManyRequests,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// No answer within the driver's memory: the outcome is unknown.
    #[error("request timed out")]
    Timeout,
    /// Reading the state machine failed (logged where it happened).
    #[error("storage failure")]
    Storage,
}

impl From<ProposeError> for DriverError {
    fn from(error: ProposeError) -> DriverError {
        match error {
            ProposeError::NoLeader => DriverError::NoLeader,
            ProposeError::Dropped => DriverError::LeaderChanged,
        }
    }
}

/// What a turn produced for the caller to carry out.
#[derive(Debug, Default)]
pub struct Output {
    pub replies: Vec<Reply>,
    /// Raft wants a state-machine snapshot for a follower: keep the job's view under a name of
    /// its own and hand its snapshot back with [`Input::SnapshotReady`].
    pub snapshot_job: Option<SnapshotJob>,
    /// Snapshots no longer offered to followers, by name: their views may be dropped (a
    /// transfer still streaming one keeps its own reference).
    pub obsolete_snapshots: Vec<String>,
    /// A configuration change removed this member: it must stop serving.
    pub removed: bool,
    /// The member list changed: peer links should follow it.
    pub members_changed: bool,
    /// Every entry applied, when the node traces them (the simulator's safety check).
    pub applied_entries: Vec<AppliedEntry>,
}

/// What answers a proposal once it applies.
#[derive(Debug, Clone, Copy)]
enum Proposal {
    Client,
    /// The proposal that clears a renewed lease's checkpoint: answered as the renewal.
    ClearCheckpoint {
        ttl: i64,
    },
}

/// What a read is for, once its ReadIndex is applied.
#[derive(Debug, Clone, Copy)]
enum Read {
    Barrier,
    Renew(i64),
    TimeToLive(i64),
}

/// The member's decisions around its [`Node`]; see the module docs.
pub struct Driver<F: FileSystem = DefaultFileSystem> {
    node: Node<F>,
    config: DriverConfig,
    ids: Arc<RequestIds>,
    /// Requests of this member waiting for their entry to apply: id → (kind, tick registered).
    proposals: BTreeMap<u64, (Proposal, u64)>,
    /// Reads waiting for their ReadIndex: token → (purpose, tick registered).
    reads: BTreeMap<u64, (Read, u64)>,
    /// Tokens asked for this turn: one ReadIndex round covers them all.
    read_batch: Vec<u64>,
    /// The commit and applied indexes after the last turn (guard rails).
    last_commit: u64,
    last_applied: u64,
}

impl<F: FileSystem> Driver<F> {
    /// Takes over `node`, counting a new boot epoch for this process's request ids. A cluster of
    /// one elects itself at once instead of waiting an election timeout.
    pub fn new(mut node: Node<F>, config: DriverConfig) -> Result<Driver<F>, StorageError> {
        let ids = Arc::new(RequestIds::new(node.machine().backend().next_boot_epoch()?));
        // Read contexts are numbered from the same sequence as request ids: past every number an
        // earlier process of this member used.
        node.start_read_contexts_at(ids.next());
        if node.is_single_voter() {
            let _ = node.campaign();
        }
        let last_commit = node.raft_view().commit;
        let last_applied = node.machine().applied_index();
        Ok(Driver {
            node,
            config,
            ids,
            proposals: BTreeMap::new(),
            reads: BTreeMap::new(),
            read_batch: Vec::new(),
            last_commit,
            last_applied,
        })
    }

    /// The generator of this process's request ids and read tokens, for its handlers.
    pub fn ids(&self) -> &Arc<RequestIds> {
        &self.ids
    }

    pub fn node(&self) -> &Node<F> {
        &self.node
    }

    /// For work outside the driver's decisions: syncing, copying or defragmenting the state
    /// machine on the loop's thread.
    pub fn node_mut(&mut self) -> &mut Node<F> {
        &mut self.node
    }

    /// Whether Raft has a Ready waiting: the caller should run another turn without waiting.
    pub fn has_ready(&self) -> bool {
        self.node.has_ready()
    }

    /// Whether a turn would do anything without new input (the simulator skips idle members).
    pub fn has_work(&self) -> bool {
        self.node.has_work() || !self.read_batch.is_empty()
    }

    /// Takes one input. Answers that need no Raft round (refusals, a leadership transfer) go to
    /// `out` at once; the rest come out of later [`Driver::advance`] calls.
    pub fn handle(&mut self, input: Input, out: &mut Output) {
        match input {
            Input::Propose { request } => self.propose(request, out),
            Input::Read { token } => self.read(token, Read::Barrier),
            Input::RenewLease { token, lease } => self.leader_read(token, Read::Renew(lease), out),
            Input::LeaseTimeToLive { token, lease } => {
                self.leader_read(token, Read::TimeToLive(lease), out)
            }
            Input::ChangeMembership { id, change, member } => {
                if let Err(error) = self.change_membership(id, change, member) {
                    out.replies.push(Reply {
                        id,
                        outcome: Err(error),
                    });
                }
            }
            Input::TransferLeader { token, to } => {
                let outcome = self.transfer_leader(to).map(|()| Answer::Transferred);
                out.replies.push(Reply { id: token, outcome });
            }
            Input::Step(message) => {
                if let Err(error) = self.node.step(message) {
                    tracing::debug!(%error, "raft refused a peer message");
                }
            }
            Input::StepSnapshot { message, index } => {
                if let Err(error) = self.node.step_snapshot(message, *index) {
                    tracing::debug!(%error, "raft refused a snapshot");
                }
            }
            Input::Unreachable(peer) => self.node.report_unreachable(peer),
            Input::SnapshotStatus { peer, delivered } => self.node.report_snapshot(peer, delivered),
            Input::SnapshotReady(snapshot) => self.offer_snapshot(snapshot, out),
            Input::Tick => self.tick(out),
        }
    }

    /// Runs one turn of Raft: the reads asked for since the last turn share one ReadIndex round,
    /// then one Ready is handled (messages go to `send` as soon as they may leave, see
    /// [`Node::advance`]), and what applied answers its waiters.
    pub fn advance(
        &mut self,
        out: &mut Output,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), StorageError> {
        if !self.read_batch.is_empty() {
            self.node.read_index(std::mem::take(&mut self.read_batch));
        }
        let mut turn = crate::node::Output::default();
        self.node.advance(&mut turn, send)?;
        self.check_invariants();
        out.removed |= turn.removed;
        if turn.snapshot_job.is_some() {
            out.snapshot_job = turn.snapshot_job;
        }
        out.applied_entries.extend(turn.applied_entries);
        let me = self.node.id();
        for (key, result) in turn.applied {
            if matches!(result, Ok(Response::Member(_))) {
                out.members_changed = true;
            }
            if key.origin != me {
                continue;
            }
            let id = key.id;
            let Some((proposal, _)) = self.proposals.remove(&id) else {
                // Another member's request, or one whose caller was given up on.
                continue;
            };
            let outcome = match (proposal, result) {
                (Proposal::Client, Ok(response)) => Ok(Answer::Applied(response)),
                (Proposal::ClearCheckpoint { ttl }, Ok(_)) => Ok(Answer::Renewed { ttl }),
                (_, Err(refused)) => Err(DriverError::Refused(refused)),
            };
            out.replies.push(Reply { id, outcome });
        }
        for token in turn.reads_ready {
            if let Some((read, _)) = self.reads.remove(&token) {
                self.serve_read(token, read, out);
            }
        }
        for token in turn.reads_failed {
            if self.reads.remove(&token).is_some() {
                out.replies.push(Reply {
                    id: token,
                    outcome: Err(DriverError::LeaderChanged),
                });
            }
        }
        Ok(())
    }

    fn propose(&mut self, mut request: InternalRequest, out: &mut Output) {
        request.origin = self.node.id();
        let id = request.id;
        let view = self.node.raft_view();
        if view
            .commit
            .saturating_sub(self.node.machine().applied_index())
            > self.config.apply_lag_max
        {
            out.replies.push(Reply {
                id,
                outcome: Err(DriverError::TooManyRequests),
            });
            return;
        }
        if let Err(error) = self.node.propose(&request) {
            out.replies.push(Reply {
                id,
                outcome: Err(error.into()),
            });
            return;
        }
        if crate::planted::is_planted(crate::planted::Bug::AnswerBeforeApply) {
            // Wrong on purpose: the client hears "done" while the entry may still be lost.
            let early = match request.request {
                Some(Request::Put(_)) => Some(Response::Put(PutResponse::default())),
                Some(Request::DeleteRange(_)) => {
                    Some(Response::DeleteRange(DeleteRangeResponse::default()))
                }
                _ => None,
            };
            if let Some(response) = early {
                out.replies.push(Reply {
                    id,
                    outcome: Ok(Answer::Applied(response)),
                });
                return;
            }
        }
        self.proposals
            .insert(id, (Proposal::Client, self.node.now_tick()));
    }

    fn read(&mut self, token: u64, read: Read) {
        self.reads.insert(token, (read, self.node.now_tick()));
        self.read_batch.push(token);
    }

    /// A read only the leader can serve: refused at once elsewhere (the caller forwards it).
    fn leader_read(&mut self, token: u64, read: Read, out: &mut Output) {
        if !self.node.is_leader() {
            out.replies.push(Reply {
                id: token,
                outcome: Err(DriverError::NotLeader),
            });
            return;
        }
        self.read(token, read);
    }

    fn serve_read(&mut self, token: u64, read: Read, out: &mut Output) {
        let outcome = match read {
            Read::Barrier => Ok(Answer::ReadReady),
            Read::TimeToLive(lease) => {
                if self.node.is_leader() {
                    Ok(Answer::TimeToLive(self.node.machine().lessor().info(lease)))
                } else {
                    Err(DriverError::NotLeader)
                }
            }
            Read::Renew(lease) => match self.node.machine().lessor().renew(lease) {
                Ok(renewed) if renewed.clear_checkpoint => {
                    // The renewal makes the lease's checkpointed remaining TTL stale: clear it
                    // through Raft first, or a new leader could expire the lease early. The
                    // renewal's token names the proposal, and its answer is the renewal's.
                    let request = InternalRequest {
                        id: token,
                        origin: self.node.id(),
                        auth: None,
                        request: Some(Request::LeaseCheckpoint(LeaseCheckpointRequest {
                            checkpoints: vec![LeaseCheckpoint {
                                id: lease,
                                remaining_ttl: 0,
                            }],
                        })),
                    };
                    match self.node.propose(&request) {
                        Ok(()) => {
                            let proposal = Proposal::ClearCheckpoint {
                                ttl: renewed.ttl_seconds,
                            };
                            self.proposals
                                .insert(token, (proposal, self.node.now_tick()));
                            return;
                        }
                        Err(error) => Err(error.into()),
                    }
                }
                Ok(renewed) => Ok(Answer::Renewed {
                    ttl: renewed.ttl_seconds,
                }),
                Err(RenewError::NotFound) => Ok(Answer::Renewed { ttl: 0 }),
                Err(RenewError::NotPrimary) => Err(DriverError::NotLeader),
            },
        };
        out.replies.push(Reply { id: token, outcome });
    }

    fn change_membership(
        &mut self,
        id: u64,
        change: MemberChangeKind,
        mut member: MemberRecord,
    ) -> Result<(), DriverError> {
        let change_type = membership::check(&self.node, change, &member)?;
        let adding = matches!(
            change,
            MemberChangeKind::AddVoter | MemberChangeKind::AddLearner
        );
        if !adding {
            let members = self.node.machine().backend().members().map_err(|error| {
                tracing::error!(%error, "reading the member list failed");
                DriverError::Storage
            })?;
            if let Some(record) = members.into_iter().find(|m| m.id == member.id) {
                // The context carries the whole record, so a removal can report whom it removed.
                member = record;
            }
        }
        let node_id = member.id;
        let context = MemberChange {
            id,
            member: Some(member),
            origin: self.node.id(),
        }
        .encode_to_vec();
        self.node
            .propose_conf_change(change_type, node_id, context)?;
        self.proposals
            .insert(id, (Proposal::Client, self.node.now_tick()));
        Ok(())
    }

    fn transfer_leader(&mut self, to: u64) -> Result<(), DriverError> {
        if !self.node.is_leader() {
            return Err(DriverError::NotLeader);
        }
        if !self.node.conf_state().voters.contains(&to) {
            return Err(DriverError::BadLeaderTransferee);
        }
        self.node.transfer_leader(to);
        Ok(())
    }

    fn offer_snapshot(&mut self, snapshot: Option<Snapshot>, out: &mut Output) {
        let file = |snapshot: Option<&Snapshot>| {
            snapshot.map(|s| String::from_utf8_lossy(&s.data).into_owned())
        };
        let previous = file(self.node.available_snapshot());
        let fresh = snapshot.is_some();
        self.node.offer_snapshot(snapshot);
        let current = file(self.node.available_snapshot());
        if let Some(previous) = previous
            && fresh
            && Some(&previous) != current.as_ref()
        {
            out.obsolete_snapshots.push(previous);
        }
    }

    fn tick(&mut self, out: &mut Output) {
        self.node.tick();
        if let Some(released) = self.node.release_idle_snapshot() {
            out.obsolete_snapshots
                .push(String::from_utf8_lossy(&released.data).into_owned());
        }
        let now = self.node.now_tick();
        let max = self.config.pending_ticks_max;
        let expired = |registered: u64| now.saturating_sub(registered) > max;
        let stale_proposals: Vec<u64> = self
            .proposals
            .iter()
            .filter(|(_, (_, at))| expired(*at))
            .map(|(id, _)| *id)
            .collect();
        let stale_reads: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, (_, at))| expired(*at))
            .map(|(id, _)| *id)
            .collect();
        for id in stale_proposals {
            self.proposals.remove(&id);
            out.replies.push(Reply {
                id,
                outcome: Err(DriverError::Timeout),
            });
        }
        let forgotten: std::collections::BTreeSet<u64> = stale_reads.iter().copied().collect();
        self.node.forget_reads(&forgotten);
        for id in stale_reads {
            self.reads.remove(&id);
            out.replies.push(Reply {
                id,
                outcome: Err(DriverError::Timeout),
            });
        }
    }

    /// The guard rails of a turn: a breach is a bug that must stop the member before it serves
    /// anything more (the server fail-stops on the panic; the simulator reports it).
    fn check_invariants(&mut self) {
        let commit = self.node.raft_view().commit;
        let applied = self.node.machine().applied_index();
        assert!(
            commit >= self.last_commit,
            "the commit index went back from {} to {commit}",
            self.last_commit
        );
        assert!(
            applied >= self.last_applied,
            "the state machine went back from index {} to {applied}",
            self.last_applied
        );
        assert!(
            applied <= commit,
            "applied index {applied} is beyond the commit index {commit}"
        );
        self.last_commit = commit;
        self.last_applied = applied;
    }
}
