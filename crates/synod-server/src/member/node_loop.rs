//! The node loop: the thread that owns the member's [`Driver`] and does its I/O. Each turn it
//! drains the commands that arrived (up to a bound), ticks when due, runs one driver turn (whose
//! messages go to the peer transport), answers the waiters the driver names, and starts the
//! snapshot jobs it asks for. Every decision is the driver's; this is the part the simulator
//! replaces with its own host.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use prost::Message as _;
use synod_core::StorageError;
use synod_core::driver::{Driver, Input, Output, SnapshotJob};

use super::{Command, FAIL_STOP_EXIT_CODE, Progress, REMOVED_EXIT_CODE};
use crate::command::Waiter;
use crate::config::Config;
use crate::error::ServerError;
use crate::metrics::disk::TimedFs;
use crate::metrics::metrics;
use crate::transport::Transport;

/// Commands handled per turn, so ticks are not starved under load.
const COMMANDS_PER_TURN_MAX: usize = 4 * 1024;
/// Proposal bytes (or, on a follower, bytes of appended entries) drained per turn. This bounds
/// one Raft log write, and with it how much a torn last write can cut (see
/// `synod_core::raft_log::TORN_TAIL_BYTES_MAX`).
const PROPOSAL_BYTES_PER_TURN_MAX: usize = 8 << 20;
/// How long a removed member keeps running before it stops (etcd: one second).
const REMOVED_STOP_DELAY: Duration = Duration::from_secs(1);

/// The node loop, ready to run on its own thread.
pub struct NodeLoop {
    driver: Driver<TimedFs>,
    commands: Receiver<Command>,
    /// Handlers waiting, by request id; the driver answers each id once (at the latest with a
    /// timeout), so entries do not outlive their requests for long.
    waiters: HashMap<u64, (Waiter, tracing::Span)>,
    tick: Duration,
    snapshots_taken: u64,
    transport: Arc<Transport>,
    progress: tokio::sync::watch::Sender<Progress>,
}

impl NodeLoop {
    pub(super) fn new(
        driver: Driver<TimedFs>,
        commands: Receiver<Command>,
        transport: Arc<Transport>,
        progress: tokio::sync::watch::Sender<Progress>,
        config: &Config,
    ) -> NodeLoop {
        NodeLoop {
            driver,
            commands,
            waiters: HashMap::new(),
            tick: Duration::from_millis(config.heartbeat_ms),
            snapshots_taken: 0,
            transport,
            progress,
        }
    }

    /// Runs until shutdown, on the calling thread. A storage failure, or a panic in the log or
    /// state-machine libraries (or a broken invariant of the driver), ends the whole process:
    /// after a failed write or fsync nothing on disk can be trusted to be what was acknowledged,
    /// and a member without its node loop must not keep answering.
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
        let mut next_tick = Instant::now() + self.tick;
        let mut removed_at: Option<Instant> = None;
        loop {
            let wait = if self.driver.has_ready() {
                Duration::ZERO
            } else {
                next_tick.saturating_duration_since(Instant::now())
            };
            let first = match self.commands.recv_timeout(wait) {
                Ok(command) => Some(command),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut out = Output::default();
            let mut shutdown = false;
            let mut removed = false;
            let mut handled = 0;
            let mut proposed_bytes = 0;
            let mut next = first;
            while let Some(command) = next {
                match command {
                    Command::Client {
                        id,
                        input,
                        reply,
                        span,
                    } => {
                        if let Input::Propose { request } = &input {
                            proposed_bytes += request.encoded_len();
                        }
                        tracing::trace!(parent: &span, "queued");
                        self.waiters.insert(id, (reply, span));
                        self.driver.handle(input, &mut out);
                    }
                    Command::Input(input) => {
                        if let Input::Step(message) = &input {
                            // A leader's appends are written in this turn's batch too.
                            proposed_bytes +=
                                message.entries.iter().map(|e| e.data.len()).sum::<usize>();
                        }
                        self.driver.handle(input, &mut out);
                    }
                    Command::Defragment { reply } => {
                        let _ = reply.send(self.defragment());
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
            let now = Instant::now();
            if now >= next_tick {
                self.driver.handle(Input::Tick, &mut out);
                next_tick += self.tick;
                if next_tick < now {
                    // The loop fell behind (a long fsync or a paused process): do not replay
                    // the missed ticks in a burst.
                    next_tick = now + self.tick;
                }
            }
            let mut unreachable = Vec::new();
            let transport = &self.transport;
            let mut send = |messages| unreachable.extend(transport.send(messages));
            let metrics = metrics();
            let turn =
                tracing::trace_span!("node.turn", otel.name = "node.turn", commands = handled);
            let advanced = metrics.turn_seconds.observe_closure_duration(|| {
                turn.in_scope(|| self.driver.advance(&mut out, &mut send))
            });
            if let Err(error) = advanced {
                fail_stop(&error);
            }
            metrics.turn_commands.observe(handled as f64);
            if !out.replies.is_empty() {
                metrics
                    .apply_batch_replies
                    .observe(out.replies.len() as f64);
            }
            for peer in unreachable {
                self.driver.handle(Input::Unreachable(peer), &mut out);
            }
            if let Some(job) = out.snapshot_job.take() {
                self.offer_snapshot(job, &mut out);
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
            self.publish_progress();
            if removed_at.is_some_and(|at| at.elapsed() >= REMOVED_STOP_DELAY) {
                if let Err(error) = self.driver.node_mut().sync() {
                    fail_stop(&error);
                }
                eprintln!("synod: the member has been permanently removed from the cluster");
                std::process::exit(REMOVED_EXIT_CODE);
            }
            if shutdown {
                break;
            }
        }
        if let Err(error) = self.driver.node_mut().sync() {
            fail_stop(&error);
        }
        tracing::info!("node loop stopped; state machine is durable");
    }

    /// Tells waiting handlers what this turn reached (only when something changed).
    fn publish_progress(&self) {
        let node = self.driver.node();
        let now = Progress {
            leader_id: node.raft_view().leader_id,
            applied_index: node.machine().applied_index(),
            revision: node.machine().store().current_revision(),
        };
        let metrics = metrics();
        metrics.proposals_pending.set(self.waiters.len() as i64);
        self.progress.send_if_modified(|published| {
            if now.leader_id != 0 && now.leader_id != published.leader_id {
                metrics.leader_changes.inc();
            }
            let changed = *published != now;
            *published = now;
            changed
        });
    }

    /// Carries out a turn's output: answers, peer links, snapshot files.
    fn dispatch(&mut self, out: Output) {
        if out.members_changed {
            // Links follow the member list: a removed member's link closes, a changed URL
            // reconnects.
            self.transport.refresh();
        }
        for reply in out.replies {
            if reply.outcome.is_err() {
                metrics().proposals_failed.inc();
            }
            if let Some((waiter, span)) = self.waiters.remove(&reply.id) {
                tracing::trace!(parent: &span, ok = reply.outcome.is_ok(), "applied");
                // The handler may have timed out and gone; nothing to do then.
                let _ = waiter.send(reply.outcome.map_err(ServerError::from));
            }
        }
        for name in out.obsolete_snapshots {
            self.transport.drop_snapshot(&name);
        }
    }

    /// Offers followers a snapshot of the view the job holds: the transport keeps the view
    /// and streams its rows to each follower the snapshot goes to. Nothing is written here.
    fn offer_snapshot(&mut self, job: SnapshotJob, out: &mut Output) {
        // A name never used before: an older snapshot may still be streaming to a follower.
        self.snapshots_taken += 1;
        let name = format!(
            "{:016x}-{:016x}-{}",
            job.metadata.term, job.metadata.index, self.snapshots_taken
        );
        let (snapshot, view) = job.into_parts(&name);
        self.transport.keep_snapshot(name, view);
        self.driver
            .handle(Input::SnapshotReady(Some(snapshot)), out);
    }

    fn defragment(&mut self) -> Result<(), String> {
        self.driver.node_mut().sync().map_err(|e| e.to_string())?;
        let backend = self.driver.node().machine().backend().clone();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(5);
        let metrics = metrics();
        metrics.defrag_inflight.set(1);
        let _done = DefragDone;
        loop {
            match backend.defragment() {
                Ok(()) => {
                    metrics
                        .defrag_duration
                        .observe(started.elapsed().as_secs_f64());
                    return Ok(());
                }
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

/// Clears `etcd_disk_defrag_inflight` however a defragmentation ends.
struct DefragDone;

impl Drop for DefragDone {
    fn drop(&mut self) {
        metrics().defrag_inflight.set(0);
    }
}

pub(super) fn fail_stop(error: &StorageError) -> ! {
    tracing::error!(%error, "storage failure: stopping the member so that nothing unsafe is served");
    eprintln!("synod: fatal storage failure: {error}");
    std::process::exit(FAIL_STOP_EXIT_CODE);
}
