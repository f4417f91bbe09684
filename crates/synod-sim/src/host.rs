//! The "process" of one simulated member: a thread of its own that owns the member's
//! [`Node`], and runs one job at a time, handed over by the simulator, which waits for it.
//! Only one thread ever runs at once, so a run stays deterministic.
//!
//! Why a thread: raft-engine caches the last entry block it read in a thread-local, keyed by file
//! number and offset, not by engine. Several engines in one thread (or a restarted member's new
//! engine) would read each other's cached blocks. One thread per member incarnation gives each
//! engine the cache it has in production, where a process has one engine.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use raft::eraftpb::Message;
use synod_api::etcdserverpb::RangeRequest;
use synod_api::synodpb::{InternalRequest, MemberRecord};
use synod_core::apply::{Response, StateMachine, execute_range};
use synod_core::backend::Backend;
use synod_core::driver::{
    Answer, Driver, DriverConfig, DriverError, Input, MemberChangeKind, Output, Reply,
};
use synod_core::fault::FaultPoint;
use synod_core::mvcc::kv_store::PreparedIndex;
use synod_core::node::{AppliedEntry, Node, NodeConfig, RaftView};
use synod_core::planted::Bug;
use synod_core::raft_log::RaftLog;
use synod_core::watch::{WatchNotice, WatchRequest, WatchSink};

use crate::disk::{SimDisk, SimFs, SimStorage};

/// Milliseconds per Raft tick (etcd's heartbeat interval, scaled down: 100 ms there).
pub const TICK_MS: u64 = 10;
pub const ELECTION_TICKS: usize = 10;
/// How long a simulated client waits for an answer before its outcome is unknown.
pub const CALL_TIMEOUT_MS: u64 = 800;

thread_local! {
    static IN_MEMBER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The fault point this turn crashes at, if the simulator chose one, and whether it did.
    static CRASH_AT: std::cell::Cell<Option<FaultPoint>> = const { std::cell::Cell::new(None) };
    static CRASHED_AT: std::cell::Cell<Option<FaultPoint>> = const { std::cell::Cell::new(None) };
}

/// A member that panics (raft-engine panics on a failed fsync, as it should) is a crashed
/// process, not a failed test: its panic message is not printed (unless
/// `SYNOD_SIM_SHOW_PANICS` is set).
pub fn quiet_member_panics() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        let show = std::env::var_os("SYNOD_SIM_SHOW_PANICS").is_some();
        std::panic::set_hook(Box::new(move |info| {
            if show || !IN_MEMBER.with(|flag| flag.get()) {
                previous(info);
            }
        }));
    });
}

/// Collects what a member's watcher is sent.
#[derive(Default)]
struct Collector {
    notices: Mutex<Vec<WatchNotice>>,
}

impl WatchSink for Collector {
    fn try_send(&self, notice: WatchNotice) -> bool {
        self.notices
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(notice);
        true
    }
}

/// A read a client asked a member for.
#[derive(Debug, Clone)]
pub enum ReadKind {
    /// A linearizable get of one key.
    Kv(Vec<u8>),
    /// A serializable get: served from local state at once, no ReadIndex.
    Serializable(Vec<u8>),
    /// A keep-alive, as the server's keep-alive stream sends it to the driver.
    KeepAlive { lease: i64 },
}

/// How a request ended, as its client hears it.
#[derive(Debug, Clone)]
pub enum Done {
    /// A proposal applied, with the state machine's answer.
    Applied(Response),
    /// Certainly not applied: refused before the log, or by the state machine.
    Refused,
    /// No answer in time: the outcome is unknown.
    Unknown,
    /// A linearizable read's value.
    Value(Option<String>),
    /// A serializable read's answer and the revision it was read at.
    Local(Option<String>, i64),
    /// A keep-alive's TTL (0: the lease is gone).
    Renewed { ttl: i64 },
    /// A read or keep-alive that could not be served.
    Failed,
}

/// Something the transport tells Raft about a peer.
#[derive(Debug, Clone, Copy)]
pub enum PeerReport {
    Unreachable(u64),
    Snapshot(u64, bool),
}

/// Everything a member does in one millisecond.
pub struct TurnInput {
    pub ticks: u32,
    /// Messages from peers; a snapshot's may come with the key index rebuilt from its rows.
    pub inbox: Vec<(Message, Option<PreparedIndex>)>,
    pub reads: Vec<(u64, ReadKind)>,
    pub proposals: Vec<InternalRequest>,
    /// Membership changes (request id, kind, the member), as a client asks for them.
    pub conf_changes: Vec<(u64, MemberChangeKind, MemberRecord)>,
    pub reports: Vec<PeerReport>,
    /// The name of a follower snapshot's view, if Raft asks for one this turn.
    pub snapshot_name: String,
    /// Crash the member when its turn reaches this point (its disk takes nothing after it).
    pub crash_at: Option<FaultPoint>,
}

/// What came of it.
#[derive(Default)]
pub struct TurnOutput {
    /// Messages that left before any fsync of this turn (the leader's appends and heartbeats).
    pub sent: Vec<Message>,
    /// Messages released after an fsync (acknowledgements, votes): they wait for the disk.
    pub sent_after_sync: Vec<Message>,
    /// The turn fsynced: it took the disk's latency.
    pub synced: bool,
    pub applied_entries: Vec<AppliedEntry>,
    /// Answers to this member's clients, by request id.
    pub replies: Vec<(u64, Done)>,
    pub notices: Vec<WatchNotice>,
    pub state: Option<MemberState>,
    /// A configuration change removed this member.
    pub removed: bool,
    /// The node has work left without any new input (another Ready, reads waiting for apply).
    pub busy: bool,
    /// The member stopped: a storage error or a panic, with what it said.
    pub stopped: Option<String>,
    /// The member crashed at the fault point it was given; the rest of the turn is lost.
    pub crashed_at: Option<FaultPoint>,
    /// The snapshot views the member keeps are not exactly the one it offers followers: one it
    /// let go is still kept (pinning pages), or the one it offers is gone.
    pub views_astray: Option<String>,
}

/// A member's state as the checkers see it after a turn.
#[derive(Debug, Clone)]
pub struct MemberState {
    pub view: RaftView,
    pub applied_index: u64,
    pub revision: i64,
    pub probe_seen: bool,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
}

struct Resident {
    driver: Driver<SimFs>,
    collector: Arc<Collector>,
    /// Linearizable gets waiting for their read barrier: token → key (as a handler waits).
    reads: std::collections::BTreeMap<u64, Vec<u8>>,
    disk: SimDisk,
    /// Views offered to followers as snapshots, by name (as the server's transport keeps them).
    views: std::collections::BTreeMap<String, synod_core::backend::ReadTxn>,
    /// The snapshot this member offers as the leader while no follower is being sent one, and
    /// the ticks it has been offered so: an idle view pins pages for nothing.
    idle_view: Option<(String, u64)>,
}

type Job = Box<dyn FnOnce(&mut Option<Resident>) + Send>;

/// Snapshot chunks in the simulation: small, so that rows straddle them.
const SNAPSHOT_CHUNK_BYTES: usize = 4096;

/// One incarnation of a member process.
pub struct Host {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panic".to_owned())
}

/// What a member is started from.
pub struct Start {
    pub disk: SimDisk,
    pub dir: PathBuf,
    pub id: u64,
    pub members: Vec<MemberRecord>,
    pub seed: u64,
    pub watch_from: i64,
    pub bug: Option<Bug>,
    /// Joins a running cluster (added with a membership change) instead of founding it.
    pub join: bool,
}

impl Host {
    /// Starts the member's thread and opens its node from what its disk holds (bootstrapping
    /// it on first start).
    pub fn start(start: Start) -> Result<(Host, MemberState), String> {
        let (jobs, receiver) = mpsc::channel::<Job>();
        let bug = start.bug;
        let thread = std::thread::Builder::new()
            .name(format!("sim-m{}", start.id))
            .spawn(move || {
                synod_core::planted::plant(bug);
                IN_MEMBER.with(|flag| flag.set(true));
                let mut resident = None;
                while let Ok(job) = receiver.recv() {
                    job(&mut resident);
                }
            })
            .map_err(|e| format!("member thread: {e}"))?;
        let host = Host {
            jobs: Some(jobs),
            thread: Some(thread),
        };
        let state = host.call(move |resident| {
            let driver = open_driver(&start)?;
            let disk = start.disk.clone();
            synod_core::fault::set_hook(Some(Box::new(move |point| {
                if CRASH_AT.get() == Some(point) && CRASHED_AT.get().is_none() {
                    disk.kill();
                    CRASHED_AT.set(Some(point));
                }
            })));
            let collector = Arc::new(Collector::default());
            let hub = driver.node().machine().hub().clone();
            let stream = hub.new_stream();
            hub.watch(
                stream,
                1,
                WatchRequest {
                    key: vec![0],
                    range_end: vec![0],
                    start_revision: start.watch_from,
                    ..WatchRequest::default()
                },
                collector.clone(),
            );
            let state = member_state(driver.node(), false);
            *resident = Some(Resident {
                driver,
                collector,
                reads: std::collections::BTreeMap::new(),
                disk: start.disk.clone(),
                views: std::collections::BTreeMap::new(),
                idle_view: None,
            });
            Ok::<MemberState, String>(state)
        })??;
        Ok((host, state))
    }

    /// Runs `f` on the member's thread and waits for it; a panic there is the member's crash.
    fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<Resident>) -> T + Send + 'static,
    ) -> Result<T, String> {
        self.submit(f).wait()
    }

    /// Hands `f` to the member's thread; [`Pending::wait`] collects the result.
    fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Option<Resident>) -> T + Send + 'static,
    ) -> Pending<T> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |resident| {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(resident)))
                .map_err(panic_message);
            let _ = reply.send(outcome);
        });
        if let Some(jobs) = self.jobs.as_ref() {
            // A closed channel shows as a closed answer.
            let _ = jobs.send(job);
        }
        Pending { answer }
    }

    /// Starts one turn: peer reports, ticks, messages, proposals, reads, then one Ready. Turns of
    /// different members may run at once: they share nothing, and the simulator collects their
    /// outputs in member order.
    pub fn turn(&self, input: TurnInput, probe: bool) -> Pending<TurnOutput> {
        self.submit(move |resident| {
            let Some(resident) = resident.as_mut() else {
                return TurnOutput {
                    stopped: Some("the member is not running".to_owned()),
                    ..TurnOutput::default()
                };
            };
            let mut turn = TurnOutput::default();
            CRASH_AT.set(input.crash_at);
            CRASHED_AT.set(None);
            let outcome = run_turn(resident, input, probe, &mut turn);
            CRASH_AT.set(None);
            if let Some(point) = CRASHED_AT.take() {
                // Whatever the turn did after the point never happened for the outside world.
                return TurnOutput {
                    crashed_at: Some(point),
                    ..TurnOutput::default()
                };
            }
            if let Err(error) = outcome {
                turn.stopped = Some(error);
            }
            turn
        })
    }

    /// The rows of the snapshot view `name`, as the server's transport streams them to a
    /// follower (in small chunks, so records straddle them); none if the view was let go.
    pub fn snapshot_rows(&self, name: String) -> Result<Option<Vec<Vec<u8>>>, String> {
        self.call(move |resident| {
            let resident = resident.as_ref().ok_or("not running")?;
            let Some(view) = resident.views.get(&name) else {
                return Ok(None);
            };
            synod_core::snapshot::rows_in_memory(view, SNAPSHOT_CHUNK_BYTES)
                .map(Some)
                .map_err(|e| e.to_string())
        })?
    }

    /// (applied index, revision, HashKV) for the agreement check.
    pub fn hash_state(&self) -> Result<(u64, i64, u32), String> {
        self.call(|resident| {
            let node = resident.as_ref().ok_or("not running")?.driver.node();
            let (hash, _, revision) = node
                .machine()
                .store()
                .hash_kv(0)
                .map_err(|e| e.to_string())?;
            Ok((node.machine().applied_index(), revision, hash))
        })?
    }
}

/// A job handed to a member's thread.
pub struct Pending<T> {
    answer: mpsc::Receiver<Result<T, String>>,
}

impl<T> Pending<T> {
    /// Waits for the job; an error is its panic (or a thread that is gone).
    pub fn wait(self) -> Result<T, String> {
        self.answer
            .recv()
            .map_err(|_| "member thread stopped".to_owned())?
    }
}

impl Pending<TurnOutput> {
    /// The turn's output; a panic becomes a stopped member.
    pub fn output(self) -> TurnOutput {
        self.wait().unwrap_or_else(|panic| TurnOutput {
            stopped: Some(panic),
            ..TurnOutput::default()
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Closing the channel ends the thread, dropping the node there (its writes after a
        // kill never reach the disk).
        self.jobs = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn member_state(node: &Node<SimFs>, probe: bool) -> MemberState {
    let probe_seen = probe
        && execute_range(
            &**node.machine().store(),
            &RangeRequest {
                key: b"probe".to_vec(),
                ..RangeRequest::default()
            },
        )
        .is_ok_and(|r| !r.kvs.is_empty());
    let conf = node.conf_state();
    MemberState {
        view: node.raft_view(),
        applied_index: node.machine().applied_index(),
        revision: node.machine().store().current_revision(),
        probe_seen,
        voters: conf.voters,
        learners: conf.learners,
    }
}

fn run_turn(
    resident: &mut Resident,
    input: TurnInput,
    probe: bool,
    turn: &mut TurnOutput,
) -> Result<(), String> {
    let driver = &mut resident.driver;
    let mut out = Output::default();
    let led = driver.node().raft_view().role == raft::StateRole::Leader;
    for report in input.reports {
        let input = match report {
            PeerReport::Unreachable(peer) => Input::Unreachable(peer),
            PeerReport::Snapshot(peer, delivered) => Input::SnapshotStatus { peer, delivered },
        };
        driver.handle(input, &mut out);
    }
    for _ in 0..input.ticks {
        driver.handle(Input::Tick, &mut out);
    }
    for (message, index) in input.inbox {
        let input = match index {
            Some(index) => Input::StepSnapshot {
                message,
                index: Box::new(index),
            },
            None => Input::Step(message),
        };
        driver.handle(input, &mut out);
    }
    for request in input.proposals {
        driver.handle(Input::Propose { request }, &mut out);
    }
    for (id, change, member) in input.conf_changes {
        driver.handle(Input::ChangeMembership { id, change, member }, &mut out);
    }
    let mut local = Vec::new();
    for (token, kind) in input.reads {
        match kind {
            ReadKind::Serializable(key) => local.push((token, key)),
            ReadKind::Kv(key) => {
                resident.reads.insert(token, key);
                driver.handle(Input::Read { token }, &mut out);
            }
            ReadKind::KeepAlive { lease } => {
                driver.handle(Input::RenewLease { token, lease }, &mut out)
            }
        }
    }
    let syncs_before = resident.disk.counters().0;
    let disk = &resident.disk;
    let (before, after) = (&mut turn.sent, &mut turn.sent_after_sync);
    driver
        .advance(&mut out, &mut |messages| {
            if disk.counters().0 > syncs_before {
                after.extend(messages);
            } else {
                before.extend(messages);
            }
        })
        .map_err(|e| e.to_string())?;
    turn.synced = resident.disk.counters().0 > syncs_before;
    if let Some(job) = out.snapshot_job.take() {
        // The server keeps the view for its transport; here the world streams it when the
        // snapshot message is delivered (see `Host::snapshot_rows`).
        let (snapshot, view) = job.into_parts(&input.snapshot_name);
        resident.views.insert(input.snapshot_name.clone(), view);
        driver.handle(Input::SnapshotReady(Some(snapshot)), &mut out);
    }
    for name in out.obsolete_snapshots.drain(..) {
        resident.views.remove(&name);
    }
    let offered = driver
        .node()
        .available_snapshot()
        .map(|snapshot| String::from_utf8_lossy(&snapshot.data).into_owned());
    if !resident.views.keys().eq(offered.iter()) {
        turn.views_astray = Some(format!(
            "keeps snapshot views {:?} but offers {offered:?}",
            resident.views.keys().collect::<Vec<_>>()
        ));
    }
    // A member that is not the leader lets its snapshot go at its next tick (ticks come first
    // in a turn): its view would pin pages no follower will ever be sent.
    let leads = driver.node().raft_view().role == raft::StateRole::Leader;
    if input.ticks > 0 && !led && !leads && offered.is_some() {
        turn.views_astray = Some(format!(
            "still offers snapshot {offered:?} a tick after it stopped leading"
        ));
    }
    // A leader lets its snapshot go an election timeout after it was offered, once no follower
    // is being sent it: counted here from the later of the two, so it is never longer.
    resident.idle_view = match (offered, leads && !driver.node().sends_snapshot()) {
        (Some(name), true) => {
            let idle = match resident.idle_view.take() {
                Some((kept, ticks)) if kept == name => ticks + u64::from(input.ticks),
                _ => 0,
            };
            if idle > ELECTION_TICKS as u64 + 1 {
                turn.views_astray = Some(format!(
                    "still offers snapshot {name:?} {idle} ticks after a follower was last sent it"
                ));
            }
            Some((name, idle))
        }
        _ => None,
    };
    let node = driver.node();
    for Reply { id, outcome } in out.replies {
        let done = match (resident.reads.remove(&id), outcome) {
            (Some(key), Ok(Answer::ReadReady)) => read_value(node, key, false),
            (Some(_), _) => Done::Failed,
            (None, Ok(Answer::Applied(response))) => Done::Applied(response),
            (None, Ok(Answer::Renewed { ttl })) => Done::Renewed { ttl },
            (None, Ok(_)) => Done::Failed,
            (None, Err(DriverError::Timeout)) => Done::Unknown,
            (None, Err(DriverError::NotLeader | DriverError::LeaderChanged)) => Done::Failed,
            (None, Err(_)) => Done::Refused,
        };
        turn.replies.push((id, done));
    }
    for (token, key) in local {
        turn.replies.push((token, read_value(node, key, true)));
    }
    turn.removed = out.removed;
    turn.applied_entries = out.applied_entries;
    let store = node.machine().store().clone();
    node.machine()
        .hub()
        .sync_unsynced(&store)
        .map_err(|e| e.to_string())?;
    turn.notices = std::mem::take(
        &mut *resident
            .collector
            .notices
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
    );
    turn.state = Some(member_state(node, probe));
    turn.busy = driver.has_work();
    Ok(())
}

/// Reads one key from the member's state, as a handler does once its read barrier is ready (or
/// at once, for a serializable read).
fn read_value(node: &Node<SimFs>, key: Vec<u8>, serializable: bool) -> Done {
    let request = RangeRequest {
        key,
        serializable,
        ..RangeRequest::default()
    };
    match execute_range(&**node.machine().store(), &request) {
        Ok(response) => {
            let value = response
                .kvs
                .first()
                .map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
            if serializable {
                Done::Local(value, response.header.map_or(0, |header| header.revision))
            } else {
                Done::Value(value)
            }
        }
        Err(_) => Done::Failed,
    }
}

/// Opens (bootstrapping on first start) one member's node on its simulated disk, under the
/// driver the server runs.
fn open_driver(start: &Start) -> Result<Driver<SimFs>, String> {
    let db_path = start.dir.join("db");
    let disk = start.disk.clone();
    let backend = Backend::open_on(
        Arc::new(move |path: &std::path::Path| {
            Ok(Box::new(SimStorage::open(&disk, path)) as Box<dyn redb::StorageBackend>)
        }),
        &db_path,
        4 << 20,
        Arc::new(start.disk.clone()),
    )
    .map_err(|e| e.to_string())?;
    let log = RaftLog::open_with(
        &start.dir.join("raft"),
        Arc::new(SimFs::new(start.disk.clone())),
    )
    .map_err(|e| e.to_string())?;
    let (member, _) = backend.identity().map_err(|e| e.to_string())?;
    if member == 0 && start.join {
        // As `--initial-cluster-state existing`: the log starts empty and the leader sends a
        // snapshot.
        backend
            .write_bootstrap(1, start.id, &start.members, None)
            .map_err(|e| e.to_string())?;
    } else if member == 0 {
        let conf_state = raft::eraftpb::ConfState {
            voters: start.members.iter().map(|m| m.id).collect(),
            ..raft::eraftpb::ConfState::default()
        };
        let conf_bytes =
            protobuf::Message::write_to_bytes(&conf_state).map_err(|e| e.to_string())?;
        backend
            .write_bootstrap(1, start.id, &start.members, Some(&conf_bytes))
            .map_err(|e| e.to_string())?;
    }
    let machine =
        StateMachine::open(Arc::new(backend), TICK_MS, 1, 20).map_err(|e| e.to_string())?;
    let config = NodeConfig {
        id: start.id,
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 1,
        snapshot_count: 60,
        catch_up_entries: 20,
        uncommitted_size_max: 1 << 20,
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut node = Node::new(config, log, machine, &logger).map_err(|e| e.to_string())?;
    node.seed_election_timeouts(start.seed);
    node.trace_applied_entries(true);
    let config = DriverConfig {
        apply_lag_max: 5_000,
        // As the server: a little past the longest a client waits.
        pending_ticks_max: 2 * CALL_TIMEOUT_MS / TICK_MS,
    };
    Driver::new(node, config).map_err(|e| e.to_string())
}

/// Where member `id`'s files live under the run's directory.
pub fn member_dir(root: &Path, id: u64) -> PathBuf {
    root.join(format!("m{id}"))
}
