//! The Raft log of a member in raft-engine (tikv's log store for raft-rs entries), behind raft-rs's
//! [`raft::Storage`] trait.
//!
//! One member is one raft-engine "region". Entries, the hard state, the conf state and the
//! metadata of the last log compaction ("snapshot point") live in it. [`RaftLog::append`] writes
//! the entries and hard state of one Ready as one batch with one fsync: group commit. A failed
//! write is returned to the caller, which must stop the member; it is never retried.

use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize, RecoveryMode};

use crate::error::StorageError;

const REGION: u64 = 1;
const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_SNAPSHOT: &[u8] = b"snapshot_metadata";

/// Tells raft-engine how to read the index of a raft-rs entry.
#[derive(Debug, Clone, Copy)]
pub struct EntryCodec;

impl MessageExt for EntryCodec {
    type Entry = Entry;

    fn index(entry: &Entry) -> u64 {
        entry.index
    }
}

/// The Raft log of one member.
pub struct RaftLog {
    engine: Engine,
    hard_state: HardState,
    conf_state: ConfState,
    /// Where the log was last compacted: entries at or below `snapshot.index` are gone.
    snapshot: SnapshotMetadata,
}

impl RaftLog {
    /// Opens the log in `dir`. A torn tail (an interrupted last write) is cut off and logged;
    /// corruption anywhere else fails with a message naming the file.
    pub fn open(dir: &Path) -> Result<RaftLog, StorageError> {
        let config = Config {
            dir: dir.display().to_string(),
            recovery_mode: RecoveryMode::TolerateTailCorruption,
            target_file_size: ReadableSize::mb(64),
            purge_threshold: ReadableSize::mb(512),
            enable_log_recycle: false,
            ..Config::default()
        };
        let engine = Engine::open(config).map_err(|e| StorageError::open(dir, e))?;
        let hard_state: HardState = read_message(&engine, KEY_HARD_STATE)?;
        let conf_state: ConfState = read_message(&engine, KEY_CONF_STATE)?;
        let snapshot: SnapshotMetadata = read_message(&engine, KEY_SNAPSHOT)?;
        let log = RaftLog {
            engine,
            hard_state,
            conf_state,
            snapshot,
        };
        log.check()?;
        Ok(log)
    }

    /// Cross-checks what was read back: the committed index must exist in the log.
    fn check(&self) -> Result<(), StorageError> {
        let last = self.last();
        if self.hard_state.commit > last {
            return Err(StorageError::corrupt(format!(
                "raft log ends at index {last} but its hard state says {} is committed",
                self.hard_state.commit
            )));
        }
        Ok(())
    }

    /// Returns whether nothing was ever written: a member that has not been bootstrapped.
    pub fn is_new(&self) -> bool {
        self.conf_state.voters.is_empty() && self.conf_state.learners.is_empty()
    }

    /// Records the initial configuration of a new member.
    pub fn bootstrap(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(REGION, KEY_CONF_STATE.to_vec(), &conf_state)
            .map_err(StorageError::log)?;
        let mut snapshot = SnapshotMetadata::default();
        snapshot.set_conf_state(conf_state.clone());
        batch
            .put_message(REGION, KEY_SNAPSHOT.to_vec(), &snapshot)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, true)
            .map_err(StorageError::log)?;
        self.conf_state = conf_state;
        self.snapshot = snapshot;
        Ok(())
    }

    /// Writes the entries and hard state of one Ready in one batch and fsyncs once.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        if !entries.is_empty() {
            batch
                .add_entries::<EntryCodec>(REGION, entries)
                .map_err(StorageError::log)?;
        }
        if let Some(state) = hard_state {
            batch
                .put_message(REGION, KEY_HARD_STATE.to_vec(), state)
                .map_err(StorageError::log)?;
        }
        self.engine
            .write(&mut batch, true)
            .map_err(StorageError::log)?;
        if let Some(state) = hard_state {
            self.hard_state = state.clone();
        }
        Ok(())
    }

    /// Records a newer commit index (without fsync: the commit index can always be learned
    /// again, and a restart clamps it to at least the applied index).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        self.hard_state.commit = commit;
        let mut batch = LogBatch::default();
        batch
            .put_message(REGION, KEY_HARD_STATE.to_vec(), &self.hard_state)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, false)
            .map_err(StorageError::log)?;
        Ok(())
    }

    /// Raises the commit index at startup to `applied` if it is lower: entries that reached the
    /// state machine were committed, whether or not the commit index reached the disk.
    pub fn clamp_commit(&mut self, applied: u64) -> Result<(), StorageError> {
        if self.hard_state.commit < applied {
            if applied > self.last() {
                return Err(StorageError::corrupt(format!(
                    "the state machine has applied index {applied} but the raft log ends at {}",
                    self.last()
                )));
            }
            self.set_commit(applied)?;
        }
        Ok(())
    }

    /// Records a new configuration (after a conf change is applied).
    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(REGION, KEY_CONF_STATE.to_vec(), &conf_state)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, true)
            .map_err(StorageError::log)?;
        self.conf_state = conf_state;
        Ok(())
    }

    /// Drops entries at or below `index` (which must be applied and durable in the state
    /// machine) and purges log files that hold only dropped entries.
    pub fn compact(&mut self, index: u64) -> Result<(), StorageError> {
        if index <= self.snapshot.index || index > self.last() {
            return Ok(());
        }
        let term = self.term(index).map_err(StorageError::log)?;
        let mut snapshot = SnapshotMetadata::default();
        snapshot.index = index;
        snapshot.term = term;
        snapshot.set_conf_state(self.conf_state.clone());
        let mut batch = LogBatch::default();
        batch
            .put_message(REGION, KEY_SNAPSHOT.to_vec(), &snapshot)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, true)
            .map_err(StorageError::log)?;
        self.snapshot = snapshot;
        self.engine.compact_to(REGION, index + 1);
        self.engine
            .purge_expired_files()
            .map_err(StorageError::log)?;
        Ok(())
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The index of the last compaction point.
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.index
    }

    fn first(&self) -> u64 {
        self.snapshot.index + 1
    }

    fn last(&self) -> u64 {
        self.engine
            .last_index(REGION)
            .unwrap_or(self.snapshot.index)
            .max(self.snapshot.index)
    }
}

fn read_message<M: protobuf::Message + Default>(
    engine: &Engine,
    key: &[u8],
) -> Result<M, StorageError> {
    Ok(engine
        .get_message::<M>(REGION, key)
        .map_err(StorageError::log)?
        .unwrap_or_default())
}

impl Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState {
            hard_state: self.hard_state.clone(),
            conf_state: self.conf_state.clone(),
        })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        let mut entries = Vec::with_capacity((high - low) as usize);
        let max_size = max_size.into().map(|size| size as usize);
        self.engine
            .fetch_entries_to::<EntryCodec>(REGION, low, high, max_size, &mut entries)
            .map_err(|e| raft::Error::Store(raft::StorageError::Other(Box::new(e))))?;
        Ok(entries)
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot.index {
            return Ok(self.snapshot.term);
        }
        if index < self.first() {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if index > self.last() {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        match self.engine.get_entry::<EntryCodec>(REGION, index) {
            Ok(Some(entry)) => Ok(entry.term),
            Ok(None) => Err(raft::Error::Store(raft::StorageError::Unavailable)),
            Err(e) => Err(raft::Error::Store(raft::StorageError::Other(Box::new(e)))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // Sending the state machine to a lagging follower arrives with the peer transport; a
        // single member never asks for a snapshot.
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
