//! What a run is asked to do ([`SimConfig`]) and what it reports ([`Report`], [`FaultCounts`]).

use synod_core::planted::Bug;

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
