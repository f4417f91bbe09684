//! One simulated cluster run: N members running the real core ([`synod_core::node::Node`] over
//! raft-rs, raft-engine and redb) on simulated disks, a simulated network and simulated clocks,
//! all in one thread and all driven by one seed; clients recording a history; checkers judging
//! every step. See `docs/SIMULATION.md`.
//!
//! Time advances in steps of one millisecond. In each step every live member ticks if its
//! (drifting) clock says so, takes the messages delivered to it, asks for the reads its clients
//! made, and handles one Ready; the network then carries what it sent, with delays, drops,
//! duplicates and partitions drawn from the seed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use prost::Message as _;
use raft::StateRole;
use raft::eraftpb::{Message, MessageType};
use synod_api::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseRevokeRequest, PutRequest, RequestOp,
    TxnRequest, compare, request_op,
};
use synod_api::mvccpb::event::EventType;
use synod_api::synodpb::{InternalRequest, MemberRecord, internal_request::Request};
use synod_core::apply::Response;
use synod_core::driver::MemberChangeKind;
use synod_core::fault::FaultPoint;
use synod_core::planted::Bug;
use synod_core::watch::WatchNotice;

use crate::disk::SimDisk;
use crate::host::{
    CALL_TIMEOUT_MS, Done, ELECTION_TICKS, Host, MemberState, PeerReport, Pending, ReadKind, Start,
    TICK_MS, TurnInput, TurnOutput, member_dir, quiet_member_panics,
};
use crate::linearizability::{KvInput, KvOutput, Operation, Verdict, check_kv};
use crate::rng::Rng;
const LEASE_TTL_SECONDS: i64 = 1;
const KEEP_ALIVE_EVERY_MS: u64 = 250;
/// Tick periods drift by up to this many per mille either way.
const DRIFT_PER_MILLE: u64 = 50;
/// Search steps the linearizability checker may take per key before answering "unknown".
const CHECK_STEPS_MAX: u64 = 5_000_000;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    pub members: usize,
    /// Milliseconds of workload with faults.
    pub safety_ms: u64,
    /// Bound on the time, after every fault is healed, for the cluster to elect a leader, commit a
    /// write on every member and agree on the state.
    pub liveness_ms: u64,
    pub clients: usize,
    pub keys: usize,
    pub faults: bool,
    /// Add learners, promote them and remove voters during the run.
    pub membership: bool,
    /// A bug switched on in the core for this run (test builds only).
    pub bug: Option<Bug>,
}

impl SimConfig {
    pub fn new(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            members: 3,
            safety_ms: 3_000,
            liveness_ms: 6_000,
            clients: 4,
            keys: 3,
            faults: true,
            membership: true,
            bug: None,
        }
    }
}

/// Faults injected in one run, by kind.
#[derive(Debug, Default, Clone)]
pub struct FaultCounts {
    pub crashes: u64,
    /// Crashes inside a turn: after the log's fsync, before the acknowledgements left.
    pub crashes_after_fsync: u64,
    /// Crashes between a snapshot's install into the state machine and its record in the log.
    pub crashes_in_snapshot_install: u64,
    pub torn_writes: u64,
    pub partitions: u64,
    pub flapping_links: u64,
    pub slow_members: u64,
    pub slow_disks: u64,
    pub pauses: u64,
    pub fsync_failures: u64,
    pub full_disks: u64,
    pub learners_added: u64,
    pub promotions: u64,
    pub removals: u64,
    pub dropped_messages: u64,
    pub duplicated_messages: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crashes
            + self.crashes_after_fsync
            + self.crashes_in_snapshot_install
            + self.partitions
            + self.flapping_links
            + self.slow_members
            + self.slow_disks
            + self.pauses
            + self.fsync_failures
            + self.full_disks
            + self.learners_added
            + self.promotions
            + self.removals
    }

    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.crashes_after_fsync += other.crashes_after_fsync;
        self.crashes_in_snapshot_install += other.crashes_in_snapshot_install;
        self.torn_writes += other.torn_writes;
        self.partitions += other.partitions;
        self.flapping_links += other.flapping_links;
        self.slow_members += other.slow_members;
        self.slow_disks += other.slow_disks;
        self.pauses += other.pauses;
        self.fsync_failures += other.fsync_failures;
        self.full_disks += other.full_disks;
        self.learners_added += other.learners_added;
        self.promotions += other.promotions;
        self.removals += other.removals;
        self.dropped_messages += other.dropped_messages;
        self.duplicated_messages += other.duplicated_messages;
    }
}

/// How one run went.
#[derive(Debug, Default, Clone)]
pub struct Report {
    pub seed: u64,
    pub sim_ms: u64,
    /// Client operations with a known outcome, and with an unknown one (timed out).
    pub operations: u64,
    pub indeterminate: u64,
    pub messages: u64,
    pub entries_applied: u64,
    pub faults: FaultCounts,
    pub checker_micros: u64,
    /// A digest of everything observable that happened: two runs of one seed must agree.
    pub trace: u64,
    /// The first invariant that broke, if any.
    pub violation: Option<String>,
}

/// What a member's pending request will answer.
#[derive(Debug, Clone)]
enum Waiting {
    /// A key-value operation: index into the history.
    Kv(usize),
    LeaseGrant(i64),
    LeaseAttach,
    /// A keep-alive (lease, when it was issued).
    KeepAlive(i64, u64),
    Probe,
    Membership,
    /// A serializable get of `key` (not part of the linearizable history).
    Serializable(String),
    LeaseRevoke,
}

struct Member {
    id: u64,
    dir: PathBuf,
    disk: SimDisk,
    host: Option<Host>,
    /// As of the member's last turn.
    state: Option<MemberState>,
    tick_period_us: u64,
    next_tick_us: u64,
    paused_until: u64,
    restart_at: Option<u64>,
    inbox: Vec<Message>,
    reads: Vec<(u64, ReadKind)>,
    proposals: Vec<InternalRequest>,
    conf_changes: Vec<(u64, MemberChangeKind, MemberRecord)>,
    reports: Vec<PeerReport>,
    waiting: BTreeMap<u64, Waiting>,
    /// The last revision this member's watchers delivered, across restarts.
    watched_revision: i64,
    last_commit: u64,
    snapshots: u64,
    /// The node had work left after its last turn.
    busy: bool,
    /// Seen in a leader's configuration: a member of the cluster, not only started.
    joined: bool,
    /// Counts starts, so checks can tell one process from the next.
    incarnation: u64,
    /// Removed from the cluster: stopped for good, and no longer expected to converge.
    removed: bool,
}

impl Member {
    /// Whether a turn now would do anything: a member with no input and no work left is idle.
    fn has_input(&self, ticks: u32, probe: bool) -> bool {
        ticks > 0
            || self.busy
            || probe
            || !self.inbox.is_empty()
            || !self.reads.is_empty()
            || !self.proposals.is_empty()
            || !self.conf_changes.is_empty()
            || !self.reports.is_empty()
    }

    fn is_leader(&self) -> bool {
        self.host.is_some()
            && self
                .state
                .as_ref()
                .is_some_and(|state| state.view.role == StateRole::Leader)
    }
}

struct Envelope {
    from: usize,
    to: usize,
    message: Message,
}

#[derive(Default)]
struct Network {
    queue: BTreeMap<(u64, u64), Envelope>,
    seq: u64,
    /// Directed links that drop everything.
    blocked: BTreeSet<(usize, usize)>,
    partition_until: u64,
    /// A link that goes up and down every few milliseconds, until a time.
    flapping: Option<(usize, usize, u64)>,
    /// Members whose links are slow, until a time.
    slow: BTreeMap<usize, u64>,
    drop_per_million: u64,
    duplicate_per_million: u64,
}

struct Client {
    busy: Option<(usize, u64)>,
    next_at: u64,
    sequence: u64,
}

#[derive(Default)]
struct LeaseKeeper {
    lease: Option<i64>,
    granted: bool,
    abandoned: bool,
    busy_until: u64,
    next_keep_alive: u64,
    next_id: i64,
}

/// Per lease: when it was last known alive (the issue time of a grant or successful keep-alive).
#[derive(Default)]
struct LeaseRecord {
    alive_at: Vec<u64>,
    /// The client revoked it: its key may go any time after.
    revoked_by_client: bool,
}

/// A key and its value after a revision (`None`: deleted).
type KeyChange = (String, Option<String>);

/// A serializable read as answered: by whom, what, at which revision.
struct LocalRead {
    member: u64,
    incarnation: u64,
    key: String,
    revision: i64,
    value: Option<String>,
}

pub struct World {
    config: SimConfig,
    rng: Rng,
    now: u64,
    members: Vec<Member>,
    net: Network,
    clients: Vec<Client>,
    keeper: LeaseKeeper,
    leases: BTreeMap<i64, LeaseRecord>,
    history: Vec<Operation<KvInput, KvOutput>>,
    /// History operations that certainly did not happen (refused before proposal).
    failed: BTreeSet<usize>,
    deadlines: BTreeMap<usize, u64>,
    events: u64,
    next_request: u64,
    /// Leader of each term seen.
    leaders: BTreeMap<u64, u64>,
    /// Every applied entry: index -> (term, checksum).
    applied: BTreeMap<u64, (u64, u32)>,
    /// Events of every revision as first delivered to any watcher: revision -> digest.
    revisions: BTreeMap<i64, u64>,
    /// Highest commit index any member has reported: every later leader must hold it.
    commit_max: u64,
    /// Members whose fsyncs are slow, until a time.
    slow_disks: BTreeMap<usize, u64>,
    /// Every key's value by revision, from the events of each revision.
    values: BTreeMap<String, BTreeMap<i64, Option<String>>>,
    local_reads: Vec<LocalRead>,
    report: Report,
    trace: Fnv,
    violation: Option<String>,
    _root: tempfile::TempDir,
}

/// FNV-1a, for the run's trace digest.
struct Fnv(u64);

impl Fnv {
    fn add(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 ^= byte as u64;
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

fn digest(bytes: &[u8]) -> u64 {
    let mut hash = Fnv(0xcbf2_9ce4_8422_2325);
    for chunk in bytes.chunks(8) {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        hash.add(u64::from_le_bytes(word));
    }
    hash.0
}

/// Runs one simulation and reports how it went.
pub fn run(config: &SimConfig) -> Report {
    quiet_member_panics();
    if !synod_core::planted::plant(config.bug) {
        return Report {
            seed: config.seed,
            violation: Some(
                "planted bugs are compiled only with the planted-bugs feature".to_owned(),
            ),
            ..Report::default()
        };
    }
    let mut world = match World::new(config.clone()) {
        Ok(world) => world,
        Err(error) => {
            return Report {
                seed: config.seed,
                violation: Some(format!("the cluster could not start: {error}")),
                ..Report::default()
            };
        }
    };
    world.run();
    world.report
}

/// The command that replays one seed.
pub fn replay_command(config: &SimConfig) -> String {
    let mut command = format!(
        "cargo run --release -p synod-sim -- --seed {} --members {}",
        config.seed, config.members
    );
    if let Some(bug) = config.bug {
        command = format!(
            "cargo run --release -p synod-sim --features planted-bugs -- --seed {} --members {} --bug {}",
            config.seed,
            config.members,
            bug.name()
        );
    }
    command
}

fn key_name(key: usize) -> String {
    format!("k{key}")
}

fn lease_key(lease: i64) -> Vec<u8> {
    format!("lease/{lease}").into_bytes()
}

fn member_id(index: usize) -> u64 {
    index as u64 + 1
}

impl World {
    fn new(config: SimConfig) -> Result<World, String> {
        // Only directory listings, locks and snapshot files touch the real file system; memory
        // (/dev/shm) serves them best where there is one.
        let shm = std::path::Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("synod-sim-");
        let root = if shm.is_dir() {
            builder.tempdir_in(shm)
        } else {
            builder.tempdir()
        }
        .map_err(|e| format!("temporary directory: {e}"))?;
        let mut rng = Rng::new(config.seed);
        let members = (0..config.members)
            .map(|index| new_member(root.path(), member_id(index), &mut rng, true))
            .collect::<Result<Vec<Member>, String>>()?;
        let clients = (0..config.clients)
            .map(|_| Client {
                busy: None,
                next_at: rng.below(20),
                sequence: 0,
            })
            .collect();
        let mut world = World {
            report: Report {
                seed: config.seed,
                ..Report::default()
            },
            config,
            rng,
            now: 0,
            members,
            net: Network::default(),
            clients,
            keeper: LeaseKeeper {
                next_id: 1,
                ..LeaseKeeper::default()
            },
            leases: BTreeMap::new(),
            history: Vec::new(),
            failed: BTreeSet::new(),
            deadlines: BTreeMap::new(),
            events: 0,
            next_request: 1,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            revisions: BTreeMap::new(),
            commit_max: 0,
            slow_disks: BTreeMap::new(),
            values: BTreeMap::new(),
            local_reads: Vec::new(),
            trace: Fnv(0xcbf2_9ce4_8422_2325),
            violation: None,
            _root: root,
        };
        for index in 0..world.members.len() {
            world.open_member(index)?;
        }
        Ok(world)
    }

    fn violate(&mut self, what: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at {} ms: {what}", self.now));
        }
    }

    /// Starts member `index` from what its disk holds (bootstrapping it on first start).
    fn open_member(&mut self, index: usize) -> Result<(), String> {
        let founders = self.config.members;
        let members: Vec<MemberRecord> = self
            .members
            .iter()
            .filter(|m| !m.removed && (m.joined || (m.id as usize) <= founders))
            .map(|m| record(m.id, false))
            .collect();
        let seed = self.rng.fork();
        let member = &mut self.members[index];
        let join = member.id as usize > founders;
        let (host, state) = Host::start(Start {
            disk: member.disk.clone(),
            dir: member.dir.clone(),
            id: member.id,
            members,
            seed,
            watch_from: member.watched_revision + 1,
            bug: self.config.bug,
            join,
        })?;
        member.host = Some(host);
        member.state = Some(state);
        member.incarnation += 1;
        member.last_commit = 0;
        member.restart_at = None;
        member.next_tick_us = self.now * 1000 + member.tick_period_us;
        Ok(())
    }

    /// The member's process dies: its unsynced writes are lost (some torn), its clients learn
    /// nothing more.
    fn crash(&mut self, index: usize, restart_after: u64) {
        let torn = self.rng.chance(500_000);
        let member = &mut self.members[index];
        member.disk.kill();
        member.host = None;
        member.state = None;
        member.inbox.clear();
        member.reads.clear();
        member.proposals.clear();
        member.conf_changes.clear();
        member.reports.clear();
        member.waiting.clear();
        let loss = member.disk.recover(&mut self.rng, torn);
        if loss.torn {
            self.report.faults.torn_writes += 1;
        }
        member.restart_at = Some(self.now + restart_after);
        self.trace.add(0xdead_0000 + index as u64);
    }

    fn run(&mut self) {
        let end_safety = self.config.safety_ms;
        let deadline = end_safety + self.config.liveness_ms;
        while self.now < end_safety && self.violation.is_none() {
            if self.config.faults {
                self.inject_faults();
            }
            self.clients_act();
            self.step(false);
            self.now += 1;
        }
        self.heal();
        let mut probe_sent_at = None;
        let mut converged = false;
        while self.now < deadline && self.violation.is_none() {
            self.step(true);
            self.expire_calls();
            self.now += 1;
            if let Some(done) = self.liveness_probe(&mut probe_sent_at) {
                converged = done;
                if converged {
                    break;
                }
            }
        }
        if self.violation.is_none() && !converged {
            let views: Vec<String> = self
                .members
                .iter()
                .filter(|m| !m.removed)
                .map(|m| match (&m.host, &m.state) {
                    (Some(_), Some(state)) => format!(
                        "m{}: {:?} term {} applied {} revision {}",
                        m.id, state.view.role, state.view.term, state.applied_index, state.revision
                    ),
                    _ => format!("m{}: down", m.id),
                })
                .collect();
            self.violate(format!(
                "liveness: {} ms after every fault healed the cluster had not committed a write on every member and agreed ({})",
                self.config.liveness_ms,
                views.join(", ")
            ));
        }
        self.finish();
    }

    /// During the liveness phase: proposes a probe write through the leader, and reports
    /// whether every member has applied it, agrees on the state, and delivered every event.
    fn liveness_probe(&mut self, sent_at: &mut Option<u64>) -> Option<bool> {
        if self.members.iter().any(|m| m.host.is_none() && !m.removed) {
            return None;
        }
        // Members started but never added are not in the cluster: nothing waits for them.
        let leader = self.members.iter().position(Member::is_leader)?;
        if sent_at.is_none_or(|at| self.now >= at + 200) {
            *sent_at = Some(self.now);
            let id = self.next_request();
            let member = &mut self.members[leader];
            member.proposals.push(InternalRequest {
                id,
                origin: 0,
                request: Some(Request::Put(PutRequest {
                    key: b"probe".to_vec(),
                    value: self.now.to_string().into_bytes(),
                    ..PutRequest::default()
                })),
            });
            member.waiting.insert(id, Waiting::Probe);
        }
        let live = self.members.iter().filter(|m| !m.removed && m.joined);
        let states: Vec<&MemberState> = live.clone().filter_map(|m| m.state.as_ref()).collect();
        let seen_everywhere =
            states.len() == live.count() && states.iter().all(|state| state.probe_seen);
        let agree = states
            .windows(2)
            .all(|w| (w[0].applied_index, w[0].revision) == (w[1].applied_index, w[1].revision));
        let watched = self
            .members
            .iter()
            .filter(|m| !m.removed && m.joined)
            .all(|m| {
                m.state
                    .as_ref()
                    .is_some_and(|state| m.watched_revision == state.revision)
            });
        Some(seen_everywhere && agree && watched)
    }

    fn next_request(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// One millisecond of the whole cluster.
    fn step(&mut self, probe: bool) {
        self.deliver_messages();
        for index in 0..self.members.len() {
            if self.members[index].host.is_none()
                && self.members[index]
                    .restart_at
                    .is_some_and(|at| at <= self.now)
            {
                self.restart(index);
            }
        }
        // Every member's turn starts before any is collected: they run at once, and nothing one
        // sends reaches another before the next millisecond.
        let turns: Vec<(usize, Pending<TurnOutput>)> = (0..self.members.len())
            .filter_map(|index| Some((index, self.start_turn(index, probe)?)))
            .collect();
        for (index, pending) in turns {
            let turn = pending.output();
            if self.violation.is_none() {
                self.finish_turn(index, turn);
            }
        }
    }

    fn restart(&mut self, index: usize) {
        if self.members[index].disk.is_full() {
            // Nothing can start on a full disk; try again once space is freed.
            self.members[index].restart_at = Some(self.now + 50);
            return;
        }
        if let Err(error) = self.open_member(index) {
            self.violate(format!(
                "m{} could not restart from its disk: {error}",
                self.members[index].id
            ));
        }
    }

    fn start_turn(&mut self, index: usize, probe: bool) -> Option<Pending<TurnOutput>> {
        let now_us = self.now * 1000;
        let member = &mut self.members[index];
        if member.host.is_none() || member.paused_until > self.now {
            return None;
        }
        let mut ticks = 0;
        if member.next_tick_us <= now_us {
            // As the server's node loop: one tick when due; ticks missed while the member was
            // paused or busy are not replayed in a burst.
            ticks = 1;
            member.next_tick_us += member.tick_period_us;
            if member.next_tick_us <= now_us {
                member.next_tick_us = now_us + member.tick_period_us;
            }
        }
        if !member.has_input(ticks, probe) {
            return None;
        }
        member.snapshots += 1;
        let crash_at = self.crash_point(index);
        let member = &mut self.members[index];
        let input = TurnInput {
            ticks,
            inbox: std::mem::take(&mut member.inbox),
            reads: std::mem::take(&mut member.reads),
            proposals: std::mem::take(&mut member.proposals),
            conf_changes: std::mem::take(&mut member.conf_changes),
            reports: std::mem::take(&mut member.reports),
            snapshot_path: member.dir.join(format!("snap-{}.db", member.snapshots)),
            crash_at,
        };
        Some(member.host.as_ref()?.turn(input, probe))
    }

    /// Members not removed, and how many of them are down.
    fn live_and_down(&self) -> (usize, usize) {
        let live = self.members.iter().filter(|m| !m.removed);
        let down = live.clone().filter(|m| m.host.is_none()).count();
        (live.count(), down)
    }

    /// Now and then a turn crashes its member at a point inside it (never more members than a
    /// crash between turns could take down).
    fn crash_point(&mut self, index: usize) -> Option<FaultPoint> {
        if !self.config.faults || self.now >= self.config.safety_ms {
            return None;
        }
        let (live, down) = self.live_and_down();
        if down >= live / 2 {
            return None;
        }
        let member = &self.members[index];
        let snapshot_arrives = member
            .inbox
            .iter()
            .any(|m| m.get_msg_type() == MessageType::MsgSnapshot);
        if snapshot_arrives && self.rng.chance(250_000) {
            return Some(FaultPoint::SnapshotInStateMachine);
        }
        if self.rng.chance(1_000) {
            return Some(FaultPoint::AfterLogSync);
        }
        None
    }

    fn finish_turn(&mut self, index: usize, turn: TurnOutput) {
        if let Some(point) = turn.crashed_at {
            match point {
                FaultPoint::AfterLogSync => self.report.faults.crashes_after_fsync += 1,
                FaultPoint::SnapshotInStateMachine => {
                    self.report.faults.crashes_in_snapshot_install += 1
                }
            }
            let after = self.rng.between(20, 600);
            self.crash(index, after);
            return;
        }
        if let Some(error) = turn.stopped {
            self.member_stopped(index, &error);
            return;
        }
        self.members[index].busy = turn.busy;
        if let Some(state) = turn.state {
            self.check_raft(index, &state);
            self.follow_configuration(&state);
            self.members[index].state = Some(state);
        }
        // The disk's fsync latency: what was released after the fsync leaves that much later,
        // and the member is busy meanwhile (a slow disk makes it much worse).
        let mut latency = 0;
        if turn.synced {
            latency = self.rng.between(0, 2);
            if self
                .slow_disks
                .get(&index)
                .is_some_and(|&until| until > self.now)
            {
                latency += self.rng.between(10, 50);
            }
            self.members[index].paused_until =
                self.members[index].paused_until.max(self.now + latency);
        }
        let TurnOutput {
            sent,
            sent_after_sync,
            applied_entries,
            replies,
            notices,
            removed,
            ..
        } = turn;
        for message in sent {
            self.send(index, message, 0);
        }
        for message in sent_after_sync {
            self.send(index, message, latency);
        }
        self.check_applied_entries(index, &applied_entries);
        self.dispatch(index, replies);
        self.check_watch(index, notices);
        if removed {
            self.remove(index);
        }
    }

    /// A member out of the leader's configuration once it had joined has been removed: it
    /// stops (told so by its peers, or by applying its removal), for good.
    fn follow_configuration(&mut self, state: &MemberState) {
        if state.view.role != StateRole::Leader {
            return;
        }
        for index in 0..self.members.len() {
            let id = self.members[index].id;
            let listed = state.voters.contains(&id) || state.learners.contains(&id);
            if listed {
                self.members[index].joined = true;
            } else if self.members[index].joined && !self.members[index].removed {
                self.remove(index);
            }
        }
    }

    fn remove(&mut self, index: usize) {
        let member = &mut self.members[index];
        if member.removed {
            return;
        }
        member.removed = true;
        member.host = None;
        member.state = None;
        member.restart_at = None;
        member.waiting.clear();
        self.trace.add(0x5e40_0000 + member.id);
    }

    /// Changes the membership as an operator would, one step at a time and only while every
    /// member runs (etcd's strict reconfiguration): add a learner, promote it once it caught up,
    /// then remove a voter (perhaps the leader), so voters come back to their first count.
    fn change_membership(&mut self) {
        let live = self.members.iter().filter(|m| !m.removed);
        if live.clone().any(|m| m.host.is_none()) {
            return;
        }
        let Some(leader) = self.members.iter().position(Member::is_leader) else {
            return;
        };
        let Some(state) = self.members[leader].state.clone() else {
            return;
        };
        let id = self.next_request();
        let change = if let Some(&learner) = state.learners.first() {
            let caught_up = self.members.iter().any(|m| {
                m.id == learner
                    && m.state
                        .as_ref()
                        .is_some_and(|s| s.applied_index + 10 >= state.applied_index)
            });
            if caught_up {
                self.report.faults.promotions += 1;
                (MemberChangeKind::Promote, record(learner, false))
            } else if self.rng.chance(200_000) {
                self.report.faults.removals += 1;
                (MemberChangeKind::Remove, record(learner, true))
            } else {
                return;
            }
        } else if let Some(pending) = self
            .members
            .iter()
            .find(|m| !m.joined && !m.removed)
            .map(|m| m.id)
        {
            // Its addition was lost (a leader change): ask again.
            (MemberChangeKind::AddLearner, record(pending, true))
        } else if state.voters.len() > self.config.members {
            let voter = *self.rng.pick(&state.voters);
            self.report.faults.removals += 1;
            (MemberChangeKind::Remove, record(voter, false))
        } else {
            // A new member: started empty, then added as a learner.
            let new_id = self.members.len() as u64 + 1;
            match new_member(self._root.path(), new_id, &mut self.rng, false) {
                Ok(member) => self.members.push(member),
                Err(error) => {
                    self.violate(format!("adding m{new_id}: {error}"));
                    return;
                }
            }
            let index = self.members.len() - 1;
            if let Err(error) = self.open_member(index) {
                self.violate(format!("m{new_id} could not start: {error}"));
                return;
            }
            self.report.faults.learners_added += 1;
            (MemberChangeKind::AddLearner, record(new_id, true))
        };
        let member = &mut self.members[leader];
        member.conf_changes.push((id, change.0, change.1));
        member.waiting.insert(id, Waiting::Membership);
    }

    /// A member failed a write or an fsync (or panicked): it must stop, as the real process
    /// does. Only an injected disk fault may cause that.
    fn member_stopped(&mut self, index: usize, error: &str) {
        let member = &self.members[index];
        let (_, failed_syncs, full_writes) = member.disk.counters();
        if failed_syncs == 0 && full_writes == 0 {
            self.violate(format!(
                "m{} stopped without a disk fault: {error}",
                member.id
            ));
            return;
        }
        let restart_after = self.rng.between(50, 300);
        self.crash(index, restart_after);
    }

    fn check_raft(&mut self, index: usize, state: &MemberState) {
        let view = state.view;
        let id = self.members[index].id;
        if view.role == StateRole::Leader {
            if !self.leaders.contains_key(&view.term) && view.last_index < self.commit_max {
                self.violate(format!(
                    "leader completeness: m{id} leads term {} with entries up to {}, but {} was committed",
                    view.term, view.last_index, self.commit_max
                ));
                return;
            }
            match self.leaders.get(&view.term) {
                Some(&leader) if leader != id => {
                    self.violate(format!(
                        "election safety: m{leader} and m{id} are both leaders of term {}",
                        view.term
                    ));
                }
                Some(_) => {}
                None => {
                    self.leaders.insert(view.term, id);
                    self.trace.add(view.term << 8 | id);
                }
            }
        }
        let member = &mut self.members[index];
        if view.commit < member.last_commit {
            let last = member.last_commit;
            self.violate(format!(
                "m{id}'s commit index went back from {last} to {}",
                view.commit
            ));
            return;
        }
        member.last_commit = view.commit;
        self.commit_max = self.commit_max.max(view.commit);
        if view.commit > view.last_index {
            self.violate(format!(
                "m{id} commits {} beyond its last entry {}",
                view.commit, view.last_index
            ));
        }
    }

    fn send(&mut self, from: usize, message: Message, after_ms: u64) {
        let Some(to) = self
            .members
            .iter()
            .position(|member| member.id == message.to)
        else {
            return;
        };
        self.report.messages += 1;
        let flapping_down = self.net.flapping.is_some_and(|(a, b, until)| {
            self.now < until
                && ((a, b) == (from, to) || (b, a) == (from, to))
                && (self.now / 25).is_multiple_of(2)
        });
        let blocked = self.net.blocked.contains(&(from, to)) || flapping_down;
        let dropped = blocked || self.rng.chance(self.net.drop_per_million);
        let snapshot = message.get_msg_type() == MessageType::MsgSnapshot;
        if dropped {
            self.report.faults.dropped_messages += 1;
            let reports = &mut self.members[from].reports;
            if snapshot {
                reports.push(PeerReport::Snapshot(message.to, false));
            }
            if blocked {
                reports.push(PeerReport::Unreachable(message.to));
            }
            return;
        }
        let copies = if !snapshot && self.rng.chance(self.net.duplicate_per_million) {
            self.report.faults.duplicated_messages += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let mut delay = after_ms + self.rng.between(1, 3);
            for end in [from, to] {
                if self
                    .net
                    .slow
                    .get(&end)
                    .is_some_and(|&until| until > self.now)
                {
                    delay += self.rng.between(10, 60);
                }
            }
            self.net.seq += 1;
            self.net.queue.insert(
                (self.now + delay, self.net.seq),
                Envelope {
                    from,
                    to,
                    message: message.clone(),
                },
            );
        }
    }

    fn deliver_messages(&mut self) {
        while let Some(entry) = self.net.queue.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let Envelope {
                from,
                to,
                mut message,
            } = entry.remove();
            if self.members[to].host.is_none() {
                if message.get_msg_type() == MessageType::MsgSnapshot {
                    self.members[from]
                        .reports
                        .push(PeerReport::Snapshot(message.to, false));
                }
                continue;
            }
            if message.get_msg_type() == MessageType::MsgSnapshot {
                // The follower receives its own copy of the file, as over the peer stream.
                let source = String::from_utf8_lossy(&message.get_snapshot().data).into_owned();
                self.net.seq += 1;
                let target = self.members[to]
                    .dir
                    .join(format!("received-{}.db", self.net.seq));
                let copied = self.members[from]
                    .disk
                    .copy_to(
                        std::path::Path::new(&source),
                        &self.members[to].disk,
                        &target,
                    )
                    .is_ok();
                self.members[from]
                    .reports
                    .push(PeerReport::Snapshot(message.to, copied));
                if !copied {
                    continue;
                }
                message.mut_snapshot().data = target.display().to_string().into_bytes().into();
            }
            self.members[to].inbox.push(message);
        }
    }

    /// State-machine safety: every member applies the same entry at each index.
    fn check_applied_entries(&mut self, index: usize, entries: &[synod_core::node::AppliedEntry]) {
        for entry in entries {
            self.report.entries_applied += 1;
            match self.applied.get(&entry.index) {
                Some(&(term, checksum)) if (term, checksum) != (entry.term, entry.checksum) => {
                    let id = self.members[index].id;
                    self.violate(format!(
                        "state machine safety: m{id} applied entry {} of term {} (checksum {:08x}), another member applied term {term} (checksum {checksum:08x}) there",
                        entry.index, entry.term, entry.checksum
                    ));
                    return;
                }
                Some(_) => {}
                None => {
                    self.applied
                        .insert(entry.index, (entry.term, entry.checksum));
                    self.trace.add(entry.index ^ (entry.checksum as u64) << 32);
                }
            }
        }
    }

    fn dispatch(&mut self, index: usize, replies: Vec<(u64, Done)>) {
        for (id, done) in replies {
            let Some(waiting) = self.members[index].waiting.remove(&id) else {
                continue;
            };
            match (waiting, done) {
                (Waiting::Kv(op), Done::Applied(response)) => {
                    let output = match response {
                        Response::Put(_) | Response::DeleteRange(_) => Some(KvOutput::Done),
                        Response::Txn(txn) => Some(KvOutput::Swapped(txn.succeeded)),
                        _ => None,
                    };
                    match output {
                        Some(output) => self.complete(op, output),
                        None => self.fail(op),
                    }
                }
                (Waiting::Kv(op), Done::Value(value)) => self.complete(op, KvOutput::Value(value)),
                // The client's deadline makes its outcome unknown.
                (Waiting::Kv(_), Done::Unknown) => {}
                (Waiting::Kv(op), _) => self.fail(op),
                (Waiting::LeaseGrant(lease), Done::Applied(_)) => {
                    self.keeper.granted = true;
                    self.keeper.busy_until = 0;
                    self.attach_lease_key(index, lease);
                }
                (Waiting::LeaseGrant(_), Done::Unknown) => {}
                (Waiting::LeaseGrant(_), _) => {
                    self.keeper.lease = None;
                    self.keeper.busy_until = 0;
                }
                (Waiting::LeaseAttach, _) => self.keeper.busy_until = 0,
                (Waiting::KeepAlive(_, _), Done::Renewed { ttl: 0 }) => {
                    // The lease is gone.
                    self.keeper.lease = None;
                    self.keeper.busy_until = 0;
                }
                (Waiting::KeepAlive(lease, issued), Done::Renewed { .. }) => {
                    self.leases.entry(lease).or_default().alive_at.push(issued);
                    self.keeper.busy_until = 0;
                }
                (Waiting::KeepAlive(..), _) => self.keeper.busy_until = 0,
                (Waiting::Serializable(key), Done::Local(value, revision)) => {
                    let member = &self.members[index];
                    self.local_reads.push(LocalRead {
                        member: member.id,
                        incarnation: member.incarnation,
                        key,
                        revision,
                        value,
                    });
                }
                (
                    Waiting::Probe
                    | Waiting::Membership
                    | Waiting::Serializable(_)
                    | Waiting::LeaseRevoke,
                    _,
                ) => {}
            }
        }
    }

    fn attach_lease_key(&mut self, index: usize, lease: i64) {
        let id = self.next_request();
        let request = InternalRequest {
            id,
            origin: 0,
            request: Some(Request::Put(PutRequest {
                key: lease_key(lease),
                value: b"ephemeral".to_vec(),
                lease,
                ..PutRequest::default()
            })),
        };
        let member = &mut self.members[index];
        member.proposals.push(request);
        member.waiting.insert(id, Waiting::LeaseAttach);
        self.keeper.busy_until = self.now + CALL_TIMEOUT_MS;
    }

    fn complete(&mut self, op: usize, output: KvOutput) {
        if !self.deadlines.contains_key(&op) {
            // The client stopped waiting (timed out) or already has its answer.
            return;
        }
        self.events += 1;
        self.history[op].result = Some((self.events, output.clone()));
        self.deadlines.remove(&op);
        self.report.operations += 1;
        self.trace
            .add(op as u64 ^ digest(format!("{output:?}").as_bytes()));
        let client = self.history[op].client as usize;
        self.clients[client].busy = None;
        self.clients[client].next_at = self.now + self.rng.between(0, 10);
    }

    /// The operation certainly did not take effect (refused before it was proposed, or a read
    /// that could not be served).
    fn fail(&mut self, op: usize) {
        if !self.deadlines.contains_key(&op) {
            return;
        }
        self.failed.insert(op);
        self.deadlines.remove(&op);
        let client = self.history[op].client as usize;
        self.clients[client].busy = None;
        self.clients[client].next_at = self.now + self.rng.between(5, 30);
    }

    /// Calls unanswered past their deadline end with an unknown outcome.
    fn expire_calls(&mut self) {
        let expired: Vec<usize> = self
            .deadlines
            .iter()
            .filter(|&(_, &deadline)| deadline <= self.now)
            .map(|(&op, _)| op)
            .collect();
        for op in expired {
            self.deadlines.remove(&op);
            self.report.indeterminate += 1;
            let client = self.history[op].client as usize;
            self.clients[client].busy = None;
            self.clients[client].next_at = self.now + self.rng.between(0, 10);
        }
    }

    fn clients_act(&mut self) {
        self.expire_calls();
        for client in 0..self.clients.len() {
            if self.clients[client].busy.is_some() || self.clients[client].next_at > self.now {
                continue;
            }
            self.issue(client);
        }
        self.keep_leases();
    }

    fn issue(&mut self, client: usize) {
        let member = self.rng.below(self.members.len() as u64) as usize;
        let key = key_name(self.rng.below(self.config.keys as u64) as usize);
        if self.rng.chance(100_000) {
            // A serializable read: any member answers from what it has applied; it is checked
            // against the revision it reports, not for linearizability.
            let id = self.next_request();
            let target = &mut self.members[member];
            if target.host.is_some() {
                target
                    .reads
                    .push((id, ReadKind::Serializable(key.clone().into_bytes())));
                target.waiting.insert(id, Waiting::Serializable(key));
            }
            self.clients[client].next_at = self.now + self.rng.between(1, 10);
            return;
        }
        self.clients[client].sequence += 1;
        let value = format!("c{client}-{}", self.clients[client].sequence);
        let input = match self.rng.below(100) {
            0..35 => KvInput::Put { key, value },
            35..65 => KvInput::Get { key },
            65..90 => {
                let expected = match self.rng.below(3) {
                    0 => None,
                    _ => Some(format!(
                        "c{}-{}",
                        self.rng.below(self.clients.len() as u64),
                        self.rng.between(1, self.clients[client].sequence.max(2))
                    )),
                };
                KvInput::Cas {
                    key,
                    expected,
                    new: value,
                }
            }
            _ => KvInput::Delete { key },
        };
        self.events += 1;
        let op = self.history.len();
        self.history.push(Operation {
            client: client as u64,
            input: input.clone(),
            call: self.events,
            result: None,
        });
        self.clients[client].busy = Some((op, self.now));
        self.deadlines.insert(op, self.now + CALL_TIMEOUT_MS);
        let request = match &input {
            KvInput::Get { .. } => None,
            KvInput::Put { key, value } => Some(Request::Put(PutRequest {
                key: key.clone().into_bytes(),
                value: value.clone().into_bytes(),
                ..PutRequest::default()
            })),
            KvInput::Delete { key } => Some(Request::DeleteRange(DeleteRangeRequest {
                key: key.clone().into_bytes(),
                ..DeleteRangeRequest::default()
            })),
            KvInput::Cas { key, expected, new } => {
                let compare = match expected {
                    Some(value) => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Value as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(compare::TargetUnion::Value(value.clone().into_bytes())),
                        ..Compare::default()
                    },
                    None => Compare {
                        result: compare::CompareResult::Equal as i32,
                        target: compare::CompareTarget::Version as i32,
                        key: key.clone().into_bytes(),
                        target_union: Some(compare::TargetUnion::Version(0)),
                        ..Compare::default()
                    },
                };
                Some(Request::Txn(TxnRequest {
                    compare: vec![compare],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: key.clone().into_bytes(),
                            value: new.clone().into_bytes(),
                            ..PutRequest::default()
                        })),
                    }],
                    failure: Vec::new(),
                }))
            }
        };
        let id = self.next_request();
        let target = &mut self.members[member];
        if target.host.is_none() {
            // Connection refused: a member that is down (or removed) certainly did not take it.
            self.fail(op);
            return;
        }
        // A paused member takes the request and answers when it runs again (or the call times
        // out first).
        target.waiting.insert(id, Waiting::Kv(op));
        match request {
            None => target
                .reads
                .push((id, ReadKind::Kv(input.key().as_bytes().to_vec()))),
            Some(request) => target.proposals.push(InternalRequest {
                id,
                origin: 0,
                request: Some(request),
            }),
        }
    }

    /// One client holds a lease with a key attached, keeps it alive through the leader, and now
    /// and then abandons it (so it expires).
    fn keep_leases(&mut self) {
        if self.keeper.busy_until > self.now {
            return;
        }
        match (self.keeper.lease, self.keeper.granted) {
            (None, _) => {
                let lease = self.keeper.next_id;
                self.keeper.next_id += 1;
                let member = self.rng.below(self.members.len() as u64) as usize;
                let id = self.next_request();
                let request = InternalRequest {
                    id,
                    origin: 0,
                    request: Some(Request::LeaseGrant(LeaseGrantRequest {
                        ttl: LEASE_TTL_SECONDS,
                        id: lease,
                    })),
                };
                let now = self.now;
                let target = &mut self.members[member];
                if target.host.is_some() {
                    target.proposals.push(request);
                    target.waiting.insert(id, Waiting::LeaseGrant(lease));
                    self.keeper.lease = Some(lease);
                    self.keeper.granted = false;
                    self.keeper.abandoned = false;
                    self.keeper.busy_until = now + CALL_TIMEOUT_MS;
                    self.keeper.next_keep_alive = now + KEEP_ALIVE_EVERY_MS;
                    // Any leader's deadline for it starts after this moment.
                    self.leases.entry(lease).or_default().alive_at.push(now);
                } else {
                    self.keeper.busy_until = now + 20;
                }
            }
            (Some(_), false) => {
                // The grant timed out: its outcome is unknown; try another lease.
                self.keeper.lease = None;
            }
            (Some(lease), true) => {
                if self.keeper.abandoned || self.now < self.keeper.next_keep_alive {
                    if self.keeper.abandoned && self.rng.chance(2_000) {
                        self.keeper.lease = None;
                    }
                    return;
                }
                if self.rng.chance(30_000) {
                    self.keeper.abandoned = true;
                    return;
                }
                if self.rng.chance(20_000) {
                    // The client revokes its lease (any member takes the request).
                    self.leases.entry(lease).or_default().revoked_by_client = true;
                    let member = self.rng.below(self.members.len() as u64) as usize;
                    let id = self.next_request();
                    let target = &mut self.members[member];
                    if target.host.is_some() {
                        target.proposals.push(InternalRequest {
                            id,
                            origin: 0,
                            request: Some(Request::LeaseRevoke(LeaseRevokeRequest { id: lease })),
                        });
                        target.waiting.insert(id, Waiting::LeaseRevoke);
                    }
                    self.keeper.lease = None;
                    return;
                }
                self.keeper.next_keep_alive = self.now + KEEP_ALIVE_EVERY_MS;
                let now = self.now;
                let Some(leader) = self
                    .members
                    .iter()
                    .position(|m| m.paused_until <= now && m.is_leader())
                else {
                    return;
                };
                let id = self.next_request();
                let target = &mut self.members[leader];
                target.reads.push((id, ReadKind::KeepAlive { lease }));
                target.waiting.insert(id, Waiting::KeepAlive(lease, now));
                self.keeper.busy_until = now + CALL_TIMEOUT_MS;
            }
        }
    }

    /// Watch invariants: a member's watcher sees every revision once, in order, without gaps
    /// (across restarts, resuming where it was), with the same events as on every other member.
    fn check_watch(&mut self, index: usize, notices: Vec<WatchNotice>) {
        let id = self.members[index].id;
        for notice in notices {
            let WatchNotice::Events { events, .. } = notice else {
                continue;
            };
            let mut by_revision: BTreeMap<i64, (Vec<u8>, Vec<KeyChange>)> = BTreeMap::new();
            for event in events.iter() {
                let Some(kv) = &event.kv else { continue };
                let revision = kv.mod_revision;
                let (bytes, changes) = by_revision.entry(revision).or_default();
                bytes.extend_from_slice(&event.encode_to_vec());
                let value = (event.r#type == EventType::Put as i32)
                    .then(|| String::from_utf8_lossy(&kv.value).into_owned());
                changes.push((String::from_utf8_lossy(&kv.key).into_owned(), value));
                if event.r#type == EventType::Delete as i32
                    && let Some(lease) = std::str::from_utf8(&kv.key)
                        .ok()
                        .and_then(|k| k.strip_prefix("lease/"))
                        .and_then(|l| l.parse::<i64>().ok())
                {
                    self.lease_key_deleted(lease, revision);
                }
            }
            for (revision, (bytes, changes)) in by_revision {
                let expected = self.members[index].watched_revision + 1;
                if revision != expected {
                    self.violate(format!(
                        "watch: m{id}'s watcher got revision {revision} after {} (missing, repeated or out of order)",
                        expected - 1
                    ));
                    return;
                }
                self.members[index].watched_revision = revision;
                let hash = digest(&bytes);
                match self.revisions.get(&revision) {
                    Some(&seen) if seen != hash => {
                        self.violate(format!(
                            "watch: m{id} delivered different events for revision {revision} than another member"
                        ));
                        return;
                    }
                    Some(_) => {}
                    None => {
                        self.revisions.insert(revision, hash);
                        for (key, value) in changes {
                            self.values.entry(key).or_default().insert(revision, value);
                        }
                    }
                }
            }
        }
    }

    /// Lease safety: a lease's key disappeared at `revision` (first seen now). Its revoke must
    /// come after every deadline a correct leader could have set: the TTL after the lease was
    /// last known alive, counted on the fastest clock, less an election timeout of slack for
    /// message delays.
    fn lease_key_deleted(&mut self, lease: i64, revision: i64) {
        if self.revisions.contains_key(&revision) {
            // Already judged when another member delivered this revision first.
            return;
        }
        let Some(record) = self.leases.get(&lease) else {
            return;
        };
        if record.revoked_by_client {
            return;
        }
        let Some(&last_alive) = record.alive_at.iter().max() else {
            return;
        };
        let fastest_tick_us = TICK_MS * (1000 - DRIFT_PER_MILLE);
        let ttl_ticks = (LEASE_TTL_SECONDS as u64 * 1000).div_ceil(TICK_MS);
        let slack_ms = TICK_MS * ELECTION_TICKS as u64;
        let earliest = last_alive + (ttl_ticks * fastest_tick_us) / 1000 - slack_ms;
        if self.now < earliest {
            self.violate(format!(
                "lease safety: lease {lease} was revoked at {} ms (revision {revision}) though it was last kept alive at {last_alive} ms with a TTL of {LEASE_TTL_SECONDS} s",
                self.now
            ));
        }
    }

    fn inject_faults(&mut self) {
        let now = self.now;
        if self.net.partition_until != 0 && now >= self.net.partition_until {
            self.net.blocked.clear();
            self.net.partition_until = 0;
        }
        // Now and then (about every 300 ms), a membership change.
        if self.config.membership && self.rng.chance(3_300) {
            self.change_membership();
        }
        // Roughly: a fault of some kind every 150 ms.
        if !self.rng.chance(6_500) {
            return;
        }
        // Indexes run over every member ever started; quorum arithmetic over those not removed.
        let total = self.members.len();
        let (live, down) = self.live_and_down();
        let victim = self.rng.below(total as u64) as usize;
        match self.rng.below(100) {
            0..20 => {
                if self.members[victim].host.is_some() && down < live / 2 + 1 {
                    self.report.faults.crashes += 1;
                    let after = self.rng.between(20, 600);
                    self.crash(victim, after);
                }
            }
            20..40 => {
                if self.net.partition_until == 0 {
                    self.report.faults.partitions += 1;
                    self.net.partition_until = now + self.rng.between(100, 900);
                    let one_way = self.rng.chance(300_000);
                    let side: Vec<bool> = (0..total).map(|_| self.rng.chance(500_000)).collect();
                    for a in 0..total {
                        for b in 0..total {
                            if side[a] && !side[b] {
                                self.net.blocked.insert((a, b));
                                if !one_way {
                                    self.net.blocked.insert((b, a));
                                }
                            }
                        }
                    }
                }
            }
            40..50 => {
                let other = (victim + 1 + self.rng.below(total as u64 - 1) as usize) % total;
                self.report.faults.flapping_links += 1;
                self.net.flapping = Some((victim, other, now + self.rng.between(200, 800)));
            }
            50..57 => {
                self.report.faults.slow_members += 1;
                let until = now + self.rng.between(100, 800);
                self.net.slow.insert(victim, until);
            }
            57..62 => {
                self.report.faults.slow_disks += 1;
                let until = now + self.rng.between(100, 800);
                self.slow_disks.insert(victim, until);
            }
            62..77 => {
                self.report.faults.pauses += 1;
                self.members[victim].paused_until = now + self.rng.between(50, 700);
            }
            77..85 => {
                if self.members[victim].host.is_some() {
                    self.report.faults.fsync_failures += 1;
                    self.members[victim].disk.fail_next_sync();
                }
            }
            85..90 => {
                if self.members[victim].host.is_some() && !self.members[victim].disk.is_full() {
                    self.report.faults.full_disks += 1;
                    let room = self.rng.below(64 << 10) as usize;
                    self.members[victim].disk.fill(room);
                }
            }
            90..95 => {
                // Space freed on any disk that filled up.
                for member in &self.members {
                    member.disk.unfill();
                }
            }

            _ => {
                self.net.drop_per_million = self.rng.below(100_000);
                self.net.duplicate_per_million = self.rng.below(50_000);
            }
        }
    }

    /// Ends every fault: the liveness phase starts.
    fn heal(&mut self) {
        self.net.blocked.clear();
        self.net.partition_until = 0;
        self.net.flapping = None;
        self.net.slow.clear();
        self.net.drop_per_million = 0;
        self.net.duplicate_per_million = 0;
        self.slow_disks.clear();
        for member in &mut self.members {
            member.paused_until = 0;
            member.disk.unfill();
            if member.host.is_none() && !member.removed {
                member.restart_at = Some(self.now);
            }
        }
    }

    fn finish(&mut self) {
        self.report.sim_ms = self.now;
        // Calls still open have unknown outcomes.
        self.report.indeterminate += self.deadlines.len() as u64;
        if self.violation.is_none() {
            self.check_agreement();
        }
        if self.violation.is_none() {
            self.check_local_reads();
        }
        if self.violation.is_none() {
            let history: Vec<Operation<KvInput, KvOutput>> = self
                .history
                .iter()
                .enumerate()
                .filter(|(op, _)| !self.failed.contains(op))
                .map(|(_, op)| op.clone())
                .collect();
            let started = std::time::Instant::now();
            let (verdict, key) = check_kv(&history, CHECK_STEPS_MAX);
            self.report.checker_micros = started.elapsed().as_micros() as u64;
            match verdict {
                Verdict::Linearizable => {}
                verdict => {
                    let key = key.unwrap_or_default();
                    if std::env::var_os("SYNOD_SIM_DUMP").is_some() {
                        self.dump_key(&history, &key);
                    }
                    self.violate(format!(
                        "linearizability: the history of key {key} is {verdict:?}"
                    ))
                }
            }
        }
        self.report.trace = self.trace.0;
        self.report.violation = self.violation.take();
    }

    /// Serializable reads may be stale but never wrong: each answers the key's value at the
    /// revision it reports (by the events of every revision), and one process never answers
    /// from an older revision than it answered before.
    fn check_local_reads(&mut self) {
        let mut last: BTreeMap<(u64, u64), i64> = BTreeMap::new();
        for read in &self.local_reads {
            let expected = self
                .values
                .get(&read.key)
                .and_then(|history| history.range(..=read.revision).next_back())
                .and_then(|(_, value)| value.clone());
            if expected != read.value {
                self.violation = Some(format!(
                    "serializable read: m{} answered {:?} for {} at revision {}, where the value was {:?}",
                    read.member, read.value, read.key, read.revision, expected
                ));
                return;
            }
            let previous = last.entry((read.member, read.incarnation)).or_insert(0);
            if read.revision < *previous {
                self.violation = Some(format!(
                    "serializable read: m{} answered at revision {} after answering at {}",
                    read.member, read.revision, previous
                ));
                return;
            }
            *previous = read.revision;
        }
    }

    /// Prints a key's operations and its values by revision (`SYNOD_SIM_DUMP`), to debug a
    /// failing seed.
    fn dump_key(&self, history: &[Operation<KvInput, KvOutput>], key: &str) {
        for (index, op) in history.iter().enumerate() {
            if op.input.key() == key {
                eprintln!(
                    "op {index}: client {} call {} {:?} -> {:?}",
                    op.client, op.call, op.input, op.result
                );
            }
        }
        for (revision, value) in self.values.get(key).into_iter().flatten() {
            eprintln!("revision {revision}: {value:?}");
        }
    }

    /// MVCC agreement: every member at the same applied index holds the same revision and the
    /// same HashKV.
    fn check_agreement(&mut self) {
        let mut first: Option<(u64, u64, i64, u32)> = None;
        for member in self.members.iter().filter(|m| !m.removed && m.joined) {
            let Some(host) = &member.host else { continue };
            let (applied, revision, hash) = match host.hash_state() {
                Ok(state) => state,
                Err(error) => {
                    self.violation = Some(format!("m{}: HashKV failed: {error}", member.id));
                    return;
                }
            };
            match first {
                None => first = Some((member.id, applied, revision, hash)),
                Some((other, other_applied, other_revision, other_hash)) => {
                    if other_applied == applied && (other_revision, other_hash) != (revision, hash)
                    {
                        self.violation = Some(format!(
                            "MVCC agreement: at applied index {applied} m{other} has revision {other_revision} hash {other_hash:08x}, m{} has revision {revision} hash {hash:08x}",
                            member.id
                        ));
                        return;
                    }
                }
            }
        }
    }
}

fn record(id: u64, is_learner: bool) -> MemberRecord {
    MemberRecord {
        id,
        name: format!("m{id}"),
        is_learner,
        ..MemberRecord::default()
    }
}

/// A member that has not started yet, with an empty disk and a clock of its own.
fn new_member(
    root: &std::path::Path,
    id: u64,
    rng: &mut Rng,
    founder: bool,
) -> Result<Member, String> {
    let dir = member_dir(root, id);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let drift = rng.between(1000 - DRIFT_PER_MILLE, 1000 + DRIFT_PER_MILLE);
    Ok(Member {
        id,
        dir,
        disk: SimDisk::new(),
        host: None,
        state: None,
        tick_period_us: TICK_MS * drift,
        next_tick_us: rng.below(TICK_MS * 1000),
        paused_until: 0,
        restart_at: None,
        inbox: Vec::new(),
        reads: Vec::new(),
        proposals: Vec::new(),
        conf_changes: Vec::new(),
        reports: Vec::new(),
        waiting: BTreeMap::new(),
        // A new store starts at revision 1, with no events.
        watched_revision: 1,
        last_commit: 0,
        snapshots: 0,
        busy: true,
        joined: founder,
        incarnation: 0,
        removed: false,
    })
}
