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
use synod_core::mvcc::kv_store::PreparedIndex;
use synod_core::watch::WatchNotice;

use crate::disk::SimDisk;
use crate::host::{
    CALL_TIMEOUT_MS, Done, ELECTION_TICKS, Host, MemberState, PeerReport, Pending, ReadKind, Start,
    TICK_MS, TurnInput, TurnOutput, member_dir, quiet_member_panics,
};
use crate::linearizability::{KvInput, KvOutput, Operation, Verdict, check_kv};
use crate::rng::Rng;

mod checks;
mod clients;
mod config;
mod faults;

pub use config::{FaultCounts, Report, SimConfig};
const LEASE_TTL_SECONDS: i64 = 1;
const KEEP_ALIVE_EVERY_MS: u64 = 250;
/// Tick periods drift by up to this many per mille either way.
const DRIFT_PER_MILLE: u64 = 50;
/// Search steps the linearizability checker may take per key before answering "unknown".
const CHECK_STEPS_MAX: u64 = 5_000_000;

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
    /// Messages from peers; a snapshot's comes with the key index rebuilt from its rows.
    inbox: Vec<(Message, Option<PreparedIndex>)>,
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
    /// Highest commit index members have reported, by the term they were in: a leader of a
    /// later term must hold it.
    commit_by_term: BTreeMap<u64, u64>,
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
            commit_by_term: BTreeMap::new(),
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
                auth: None,
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
            snapshot_name: format!("view-{}", member.snapshots),
            crash_at,
        };
        Some(member.host.as_ref()?.turn(input, probe))
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
        if let Some(astray) = turn.views_astray {
            self.violate(format!("m{}: {astray}", self.members[index].id));
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
