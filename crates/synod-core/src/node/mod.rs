//! The member's Raft node: raft-rs's `RawNode` over the [`RaftLog`], driving the
//! [`StateMachine`]. A plain struct advanced by its owner: [`Node::tick`], [`Node::propose`],
//! [`Node::read_index`], [`Node::step`], then [`Node::advance`] once per turn. It does no
//! network I/O and reads no clock; the shell (or the simulator) owns the loop, the timer and the
//! transport.
//!
//! [`Node::advance`] handles one Ready in the order raft-rs requires: the leader's messages go out
//! first (handed to the caller's `send` before the log write, so followers persist in parallel
//! with the leader), committed entries are applied, new entries and the hard state are written in
//! one fsync'd batch, and only then are `persisted_messages` (votes, acks) released; the
//! LightReady's commit and committed entries follow.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prost::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message, Snapshot, SnapshotMetadata,
};
use raft::{RawNode, StateRole};
use raft_engine::env::{DefaultFileSystem, FileSystem};
use synod_api::etcdserverpb::{LeaseCheckpoint, LeaseCheckpointRequest, LeaseRevokeRequest};
use synod_api::synodpb::{InternalRequest, internal_request::Request};

use crate::apply::{ApplyResult, RequestKey, StateMachine};
use crate::error::StorageError;
use crate::mvcc::kv_store::PreparedIndex;
use crate::raft_log::RaftLog;

mod reads;
mod snapshots;

pub use snapshots::SnapshotJob;

/// Lease checkpoints in one Raft entry (etcd batches 1000 too).
const CHECKPOINTS_PER_ENTRY_MAX: usize = 1000;
/// Ticks after which an unanswered ReadIndex request is sent again.
const READ_RETRY_TICKS: u64 = 3;

/// How a node is set up.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub id: u64,
    /// Ticks without a heartbeat before a follower campaigns.
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Applied entries between two log compactions (`--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept behind a compaction point for followers to catch up from.
    pub catch_up_entries: u64,
    /// Uncommitted bytes the leader accepts before refusing proposals.
    pub uncommitted_size_max: u64,
}

/// Facts about the node that other threads read without locking it.
#[derive(Debug, Default)]
pub struct NodeStatus {
    pub leader_id: AtomicU64,
    pub term: AtomicU64,
    pub commit_index: AtomicU64,
    pub applied_index: AtomicU64,
    pub last_index: AtomicU64,
    pub is_leader: AtomicBool,
    /// ReadIndex rounds asked of Raft (each serves every read of its turn).
    pub read_index_rounds: AtomicU64,
    /// ReadIndex rounds that went unanswered long enough to be asked again, or whose answer came
    /// after a newer round's (etcd's `slow_read_indexes_total`).
    pub slow_read_indexes: AtomicU64,
    /// ReadIndex rounds that failed: this member stopped leading before the answer came.
    pub read_indexes_failed: AtomicU64,
}

/// What one [`Node::advance`] produced for the shell to act on (messages for peers go out
/// through the `send` callback as soon as they may, not here).
#[derive(Debug, Default)]
pub struct Output {
    /// Outcomes of applied requests, by request key.
    pub applied: Vec<(RequestKey, ApplyResult)>,
    /// Read tokens whose read index is applied: they may now read the state machine.
    pub reads_ready: Vec<u64>,
    /// Read tokens that can no longer be served (leadership was lost); they should be retried.
    pub reads_failed: Vec<u64>,
    /// A configuration change removed this member: it must stop serving.
    pub removed: bool,
    /// raft-rs wants a state-machine snapshot for a follower; the shell makes it (off the node
    /// loop) and hands it back with [`Node::offer_snapshot`].
    pub snapshot_job: Option<SnapshotJob>,
    /// Every entry applied, when [`Node::trace_applied_entries`] is on (the simulator's
    /// state-machine safety check).
    pub applied_entries: Vec<AppliedEntry>,
}

/// An entry as applied: its position and a checksum of its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppliedEntry {
    pub index: u64,
    pub term: u64,
    pub checksum: u32,
}

/// Raft's view of this node, for checkers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftView {
    pub term: u64,
    pub role: StateRole,
    pub leader_id: u64,
    pub commit: u64,
    pub last_index: u64,
}

/// Why a proposal was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    #[error("no leader")]
    NoLeader,
    #[error("proposal dropped")]
    Dropped,
}

/// A member's Raft node and state machine; its log lives on `F` (the real file system, or the
/// simulator's disk).
pub struct Node<F: FileSystem = DefaultFileSystem> {
    raw: RawNode<RaftLog<F>>,
    machine: StateMachine,
    config: NodeConfig,
    status: Arc<NodeStatus>,
    now_tick: u64,
    next_read_context: u64,
    /// ReadIndex requests sent to Raft and not yet answered: (context, tick sent, tokens).
    reads_in_flight: VecDeque<(u64, u64, Vec<u64>)>,
    /// Answered reads waiting for the applied index to reach their read index.
    reads_waiting: VecDeque<(u64, Vec<u64>)>,
    role: StateRole,
    /// A [`SnapshotJob`] was handed out and its snapshot has not come back yet.
    snapshot_in_progress: bool,
    /// The tick the available snapshot was offered at.
    snapshot_offered_at: Option<u64>,
    /// Key indexes rebuilt from received snapshots' rows, by file, for this turn's install
    /// (see [`Node::step_snapshot`]).
    prepared_indexes: Vec<(String, PreparedIndex)>,
    trace_applied: bool,
    /// Set by the simulator: election timeouts drawn from this seed instead of a thread RNG.
    election_seed: Option<ElectionSeed>,
}

/// Draws randomized election timeouts from a seed: raft-rs draws them from `thread_rng`, which a
/// deterministic simulation cannot replay. Whenever raft-rs resets its timer (a change of term,
/// role or leader), the node overrides the fresh draw with the next seeded one.
struct ElectionSeed {
    state: u64,
    seen: (u64, StateRole, u64, usize),
}

impl ElectionSeed {
    fn next(&mut self) -> u64 {
        // SplitMix64.
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl<F: FileSystem> Node<F> {
    /// Builds the node from what is on disk. `log` must be bootstrapped.
    pub fn new(
        config: NodeConfig,
        mut log: RaftLog<F>,
        machine: StateMachine,
        logger: &slog::Logger,
    ) -> Result<Node<F>, StorageError> {
        let applied = machine.applied_index();
        let applied_term = machine.applied_term();
        let log_behind = applied > log.last_index_now()
            || (applied > log.snapshot_index()
                && log
                    .term_at(applied)
                    .is_some_and(|term| term != applied_term));
        if applied > 0 && log_behind {
            // The state machine is at a snapshot point the log has not recorded: a new cluster's
            // starting point, or a leader's snapshot installed just before a crash.
            let conf_state = machine.recorded_conf_state()?.ok_or_else(|| {
                StorageError::corrupt(format!(
                    "the state machine is at index {applied}, beyond the raft log, and records no configuration"
                ))
            })?;
            let mut metadata = SnapshotMetadata {
                index: applied,
                term: applied_term,
                ..SnapshotMetadata::default()
            };
            metadata.set_conf_state(conf_state);
            tracing::info!(
                index = applied,
                "recording the state machine's snapshot point in the raft log"
            );
            log.install_snapshot(&metadata)?;
        }
        if applied < log.snapshot_index() {
            return Err(StorageError::corrupt(format!(
                "the state machine has applied index {applied} but the raft log was compacted up to {}: \
                 the state-machine file is older than the log (was member/db replaced?)",
                log.snapshot_index()
            )));
        }
        log.clamp_commit(applied)?;
        let raft_config = raft::Config {
            id: config.id,
            election_tick: config.election_ticks,
            heartbeat_tick: config.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_size: config.uncommitted_size_max,
            check_quorum: true,
            pre_vote: true,
            read_only_option: raft::ReadOnlyOption::Safe,
            ..raft::Config::default()
        };
        raft_config
            .validate()
            .map_err(|e| StorageError::corrupt(format!("raft configuration: {e}")))?;
        let raw = RawNode::new(&raft_config, log, logger)
            .map_err(|e| StorageError::corrupt(format!("raft log: {e}")))?;
        if crate::planted::is_planted(crate::planted::Bug::FollowerExpiresLeases) {
            machine.lessor().promote(0);
        }
        let status = Arc::new(NodeStatus::default());
        let node = Node {
            raw,
            machine,
            config,
            status,
            now_tick: 0,
            next_read_context: 1,
            reads_in_flight: VecDeque::new(),
            reads_waiting: VecDeque::new(),
            role: StateRole::Follower,
            snapshot_in_progress: false,
            prepared_indexes: Vec::new(),
            snapshot_offered_at: None,
            trace_applied: false,
            election_seed: None,
        };
        node.publish_status();
        Ok(node)
    }

    pub fn status(&self) -> &Arc<NodeStatus> {
        &self.status
    }

    /// This member's id.
    pub fn id(&self) -> u64 {
        self.config.id
    }

    /// Whether this node leads (as far as it knows: a leader cut off from the others learns it
    /// lost only at CheckQuorum, which is why leader-only reads confirm leadership first).
    pub fn is_leader(&self) -> bool {
        self.role == StateRole::Leader
    }

    /// Whether Raft has a Ready for [`Node::advance`] to handle.
    pub fn has_ready(&self) -> bool {
        self.raw.has_ready()
    }

    /// Makes every randomized election timeout come from `seed` (the simulator's replayability).
    pub fn seed_election_timeouts(&mut self, seed: u64) {
        self.election_seed = Some(ElectionSeed {
            state: seed,
            seen: (u64::MAX, StateRole::Follower, 0, 0),
        });
        self.reseed_election_timeout();
    }

    fn reseed_election_timeout(&mut self) {
        let Some(seed) = self.election_seed.as_mut() else {
            return;
        };
        let raft = &mut self.raw.raft;
        let now = (
            raft.term,
            raft.state,
            raft.leader_id,
            raft.randomized_election_timeout(),
        );
        if now == seed.seen {
            return;
        }
        let base = raft.election_timeout();
        let timeout = base + (seed.next() % base as u64) as usize;
        raft.set_randomized_election_timeout(timeout);
        seed.seen = (now.0, now.1, now.2, timeout);
    }

    /// Reports every applied entry in [`Output::applied_entries`] from now on.
    pub fn trace_applied_entries(&mut self, on: bool) {
        self.trace_applied = on;
    }

    /// Raft's current view of this node.
    pub fn raft_view(&self) -> RaftView {
        let raft = &self.raw.raft;
        RaftView {
            term: raft.term,
            role: raft.state,
            leader_id: raft.leader_id,
            commit: raft.raft_log.committed,
            last_index: raft.raft_log.last_index(),
        }
    }

    pub fn machine(&self) -> &StateMachine {
        &self.machine
    }

    /// Whether Raft has something for [`Node::advance`] to handle, or reads wait for apply.
    pub fn has_work(&self) -> bool {
        self.raw.has_ready() || !self.reads_waiting.is_empty()
    }

    /// Returns whether this node is the only voter, so it can elect itself at once.
    pub fn is_single_voter(&self) -> bool {
        let conf = self.raw.raft.prs().conf();
        conf.voters().ids().len() == 1 && conf.voters().ids().contains(self.config.id)
    }

    /// Starts an election now instead of waiting for the election timeout.
    pub fn campaign(&mut self) -> Result<(), ProposeError> {
        let outcome = self.raw.campaign().map_err(|_| ProposeError::Dropped);
        self.reseed_election_timeout();
        outcome
    }

    /// Advances logical time by one tick; the leader revokes leases that expired.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        self.raw.tick();
        self.reseed_election_timeout();
        self.retry_unanswered_reads();
        let expired = self.machine.lessor().tick(self.now_tick);
        let expires_leases = self.role == StateRole::Leader
            || (crate::planted::is_planted(crate::planted::Bug::FollowerExpiresLeases)
                && self.raw.raft.leader_id != raft::INVALID_ID);
        if expires_leases {
            for id in expired {
                let request = InternalRequest {
                    id: 0,
                    origin: 0,
                    auth: None,
                    request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id })),
                };
                // A dropped revoke is retried by the lessor after its retry interval.
                let _ = self.propose(&request);
            }
            let due = self
                .machine
                .lessor()
                .due_checkpoints(self.config.election_ticks as u64);
            for batch in due.chunks(CHECKPOINTS_PER_ENTRY_MAX) {
                let checkpoints = batch
                    .iter()
                    .map(|&(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect();
                let request = InternalRequest {
                    id: 0,
                    origin: 0,
                    auth: None,
                    request: Some(Request::LeaseCheckpoint(LeaseCheckpointRequest {
                        checkpoints,
                    })),
                };
                // A dropped checkpoint is proposed again after the lessor's retry interval.
                let _ = self.propose(&request);
            }
        }
    }

    /// The current logical time in ticks.
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// Proposes a request to the log.
    pub fn propose(&mut self, request: &InternalRequest) -> Result<(), ProposeError> {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return Err(ProposeError::NoLeader);
        }
        self.raw
            .propose(Vec::new(), request.encode_to_vec())
            .map_err(|_| ProposeError::Dropped)
    }

    /// Feeds a message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), raft::Error> {
        let outcome = self.raw.step(message);
        self.reseed_election_timeout();
        outcome
    }

    /// Handles one Ready, if there is one; see the module docs for the order. Messages for peers
    /// are handed to `send` the moment they may leave: the leader's before its own log write (so
    /// followers persist in parallel with it), acknowledgements after it.
    pub fn advance(
        &mut self,
        out: &mut Output,
        send: &mut dyn FnMut(Vec<Message>),
    ) -> Result<(), StorageError> {
        if !self.raw.has_ready() {
            self.prepared_indexes.clear();
            self.release_reads(out);
            return Ok(());
        }
        let mut ready = self.raw.ready();
        if !ready.messages().is_empty() {
            send(ready.take_messages());
        }
        if let Some(soft) = ready.ss() {
            self.on_role_change(soft.raft_state, out);
        }
        if !ready.snapshot().is_empty() {
            // The snapshot goes in before anything that follows it: state machine first (one
            // durable transaction), then the log; a crash between the two is repaired at start.
            let snapshot = ready.snapshot().clone();
            self.install_snapshot(&snapshot)?;
        }
        // A snapshot Raft refused leaves its index behind.
        self.prepared_indexes.clear();
        let committed = ready.take_committed_entries();
        self.apply(&committed, out)?;
        for state in ready.take_read_states() {
            self.on_read_state(&state.request_ctx, state.index);
        }
        if !ready.entries().is_empty() || ready.hs().is_some() {
            let entries = ready.entries();
            self.raw.mut_store().append(entries, ready.hs())?;
            crate::fault::reach(crate::fault::FaultPoint::AfterLogSync);
        }
        let persisted = ready.take_persisted_messages();
        if !persisted.is_empty() {
            send(persisted);
        }
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.raw.mut_store().set_commit(commit)?;
        }
        let messages = light.take_messages();
        if !messages.is_empty() {
            send(messages);
        }
        let committed = light.take_committed_entries();
        self.apply(&committed, out)?;
        self.raw.advance_apply();
        self.release_reads(out);
        self.compact_log()?;
        if self.raw.mut_store().take_snapshot_request() && !self.snapshot_in_progress {
            out.snapshot_job = Some(self.snapshot_job()?);
            self.snapshot_in_progress = true;
        }
        self.reseed_election_timeout();
        self.publish_status();
        Ok(())
    }

    /// Tells Raft that a message to `peer` could not be delivered.
    pub fn report_unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    /// Proposes one membership change; `context` travels with it to every member's apply.
    pub fn propose_conf_change(
        &mut self,
        change_type: ConfChangeType,
        node_id: u64,
        context: Vec<u8>,
    ) -> Result<(), ProposeError> {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            return Err(ProposeError::NoLeader);
        }
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node_id;
        let mut change = ConfChangeV2::default();
        change.set_changes(vec![single].into());
        change.context = context.into();
        self.raw
            .propose_conf_change(Vec::new(), change)
            .map_err(|_| ProposeError::Dropped)
    }

    /// Asks the leader to hand leadership to `peer`.
    pub fn transfer_leader(&mut self, peer: u64) {
        self.raw.transfer_leader(peer);
        self.reseed_election_timeout();
    }

    /// The current configuration: (voters, learners).
    pub fn conf_state(&self) -> ConfState {
        self.raw.raft.prs().conf().to_conf_state()
    }

    /// On the leader: the highest log index known to be replicated on `peer`, and the leader's own
    /// last index. `None` on a follower or for an unknown peer.
    pub fn replication(&self, peer: u64) -> Option<(u64, u64)> {
        if self.role != StateRole::Leader {
            return None;
        }
        let progress = self.raw.raft.prs().get(peer)?;
        Some((progress.matched, self.raw.raft.raft_log.last_index()))
    }

    /// On the leader: peers that answered within the last election timeout (CheckQuorum's
    /// record), including the leader itself.
    pub fn recently_active(&self) -> Vec<u64> {
        if self.role != StateRole::Leader {
            return Vec::new();
        }
        self.raw
            .raft
            .prs()
            .iter()
            .filter(|(id, progress)| **id == self.config.id || progress.recent_active)
            .map(|(id, _)| *id)
            .collect()
    }

    fn apply(&mut self, entries: &[Entry], out: &mut Output) -> Result<(), StorageError> {
        if entries.is_empty() {
            return Ok(());
        }
        if self.trace_applied {
            let applied = self.machine.applied_index();
            out.applied_entries
                .extend(entries.iter().filter(|e| e.index > applied).map(|e| {
                    let mut checksum = crate::crc32c::Hasher::new();
                    checksum.update(&e.data);
                    AppliedEntry {
                        index: e.index,
                        term: e.term,
                        checksum: checksum.finish(),
                    }
                }));
        }
        let raw = &mut self.raw;
        let applied = self.machine.apply(
            entries,
            |entry| apply_conf_change(raw, entry),
            // A batch that changes the configuration commits durably: the log has already
            // recorded the new configuration, and replaying the change onto it would fail.
            entries
                .iter()
                .any(|e| e.get_entry_type() != EntryType::EntryNormal),
        )?;
        if entries
            .iter()
            .any(|e| e.get_entry_type() != EntryType::EntryNormal)
        {
            let conf_state = self.raw.raft.prs().conf().to_conf_state();
            let id = self.config.id;
            if !conf_state.voters.contains(&id) && !conf_state.learners.contains(&id) {
                out.removed = true;
                if self.raw.raft.state == StateRole::Leader {
                    // A leader that removed itself steps down at once (etcd's
                    // StepDownOnRemoval): raft-rs keeps it leading without its own progress,
                    // and the next entries it persisted would find none (a panic, found by the
                    // simulator, seed 62).
                    let term = self.raw.raft.term;
                    self.raw.raft.become_follower(term, raft::INVALID_ID);
                }
            }
            self.raw.mut_store().set_conf_state(conf_state)?;
        }
        out.applied.extend(applied.results);
        Ok(())
    }

    fn on_role_change(&mut self, role: StateRole, out: &mut Output) {
        let was_leader = self.role == StateRole::Leader;
        self.role = role;
        if role == StateRole::Leader && !was_leader {
            // A new leader cannot know how long ago the old one last renewed: every lease gets
            // its full TTL again, plus an election timeout (etcd's lease promotion).
            self.machine
                .lessor()
                .promote(self.config.election_ticks as u64);
        } else if crate::planted::is_planted(crate::planted::Bug::FollowerExpiresLeases) {
            // Wrong on purpose: a follower keeps deadlines of its own, from when it last changed
            // role, though keep-alives only ever reach the leader.
            self.machine.lessor().promote(0);
        } else if role != StateRole::Leader && was_leader {
            self.machine.lessor().demote();
        }
        if role != StateRole::Leader && was_leader {
            // Reads in flight on a deposed leader will never be answered.
            for (_, _, tokens) in self.reads_in_flight.drain(..) {
                out.reads_failed.extend(tokens);
                self.status
                    .read_indexes_failed
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
    }

    fn compact_log(&mut self) -> Result<(), StorageError> {
        let applied = self.machine.applied_index();
        let log_snapshot = self.raw.store().snapshot_index();
        if applied < log_snapshot + self.config.snapshot_count + self.config.catch_up_entries {
            return Ok(());
        }
        // Entries may be dropped only once their effects are durable in the state machine.
        self.machine.sync()?;
        let target = applied.saturating_sub(self.config.catch_up_entries);
        tracing::info!(applied, compact_to = target, "compacting the raft log");
        self.raw.mut_store().compact(target)
    }

    fn publish_status(&self) {
        let raft = &self.raw.raft;
        self.status
            .leader_id
            .store(raft.leader_id, Ordering::Relaxed);
        self.status.term.store(raft.term, Ordering::Relaxed);
        self.status
            .commit_index
            .store(raft.raft_log.committed, Ordering::Relaxed);
        self.status
            .applied_index
            .store(self.machine.applied_index(), Ordering::Relaxed);
        self.status
            .last_index
            .store(raft.raft_log.last_index(), Ordering::Relaxed);
        self.status
            .is_leader
            .store(self.role == StateRole::Leader, Ordering::Relaxed);
    }

    /// Makes every applied change durable; called on graceful shutdown.
    pub fn sync(&mut self) -> Result<(), StorageError> {
        self.machine.sync()
    }
}

/// Applies a configuration-change entry to Raft. A change Raft refuses (or that does not decode)
/// is refused the same way on every member and every replay, so it is skipped, not fatal.
fn apply_conf_change<F: FileSystem>(
    raw: &mut RawNode<RaftLog<F>>,
    entry: &Entry,
) -> Result<ConfState, String> {
    let result = if entry.get_entry_type() == EntryType::EntryConfChange {
        let change: ConfChange =
            protobuf::Message::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
        raw.apply_conf_change(&change)
    } else {
        let change: ConfChangeV2 =
            protobuf::Message::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
        raw.apply_conf_change(&change)
    };
    result.map_err(|e| e.to_string())
}
