//! The Raft log of a member in raft-engine (tikv's log store for raft-rs entries), behind raft-rs's
//! [`raft::Storage`] trait.
//!
//! One member is one raft-engine "region". Entries, the hard state, the conf state and the
//! metadata of the last log compaction ("snapshot point") live in it. [`RaftLog::append`] writes
//! the entries and hard state of one Ready as one batch with one fsync: group commit. A failed
//! write is returned to the caller, which must stop the member; it is never retried.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, Storage};
use raft_engine::env::{DefaultFileSystem, FileSystem, Handle as _, Permission};
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

/// The Raft log of one member, in files reached through `F` (the real file system, or the
/// simulator's disk).
pub struct RaftLog<F: FileSystem = DefaultFileSystem> {
    engine: Engine<F>,
    hard_state: HardState,
    conf_state: ConfState,
    /// Where the log was last compacted: entries at or below `snapshot.index` are gone.
    snapshot: SnapshotMetadata,
    /// The newest state-machine snapshot made for followers, if any.
    available: Option<Snapshot>,
    /// raft-rs asked for a snapshot that is not available yet (set from `Storage::snapshot`,
    /// which takes `&self`).
    requested: std::cell::Cell<bool>,
    /// The term of every entry the log holds, kept in memory: raft-rs asks for terms on every
    /// append it sends and every commit it weighs, and raft-engine can only answer by reading
    /// (and decompressing) the entry from its file.
    terms: Terms,
}

/// The terms of a run of log entries, as the indexes at which the term changes: terms change
/// only at elections, so this is a handful of pairs however long the log.
#[derive(Debug, Default)]
struct Terms {
    /// (first index, term), by index; each run lasts until the next one starts.
    runs: std::collections::VecDeque<(u64, u64)>,
}

impl Terms {
    /// Records entries that start at `first` and run on, replacing any from `first` on (raft-rs
    /// overwrites a conflicting suffix, and raft-engine drops it in the same way).
    fn append(&mut self, first: u64, terms: impl IntoIterator<Item = u64>) {
        while self.runs.back().is_some_and(|&(start, _)| start >= first) {
            self.runs.pop_back();
        }
        for (index, term) in (first..).zip(terms) {
            if self.runs.back().is_none_or(|&(_, last)| last != term) {
                self.runs.push_back((index, term));
            }
        }
    }

    /// Forgets runs that end before `first` (the log was compacted up to it).
    fn compact(&mut self, first: u64) {
        while self.runs.get(1).is_some_and(|&(start, _)| start <= first) {
            self.runs.pop_front();
        }
    }

    fn clear(&mut self) {
        self.runs.clear();
    }

    /// The term of the entry at `index`; the caller checks that the log holds it.
    fn term(&self, index: u64) -> Option<u64> {
        let after = self.runs.partition_point(|&(start, _)| start <= index);
        after.checked_sub(1).map(|run| self.runs[run].1)
    }
}

impl RaftLog {
    /// Opens the log in `dir` on the real file system; see [`RaftLog::open_with`].
    pub fn open(dir: &Path) -> Result<RaftLog, StorageError> {
        RaftLog::open_with(dir, Arc::new(DefaultFileSystem))
    }
}

impl<F: FileSystem> RaftLog<F> {
    /// Opens the log in `dir`, whose files are reached through `fs`.
    ///
    /// The log is first opened in raft-engine's strict mode, which changes nothing on disk. If
    /// that finds corruption, the newest file is saved aside and the log is opened again in
    /// tail-tolerant mode, which cuts the newest file at the first bad record. If the cut removed
    /// no more than one write batch (a torn last write), the member starts and says so; if it
    /// removed more, the damage is not a torn write: the saved file is put back and the open
    /// fails with a message naming the file, so nothing acknowledged is silently dropped.
    pub fn open_with(dir: &Path, fs: Arc<F>) -> Result<RaftLog<F>, StorageError> {
        let strict = engine_config(dir, RecoveryMode::AbsoluteConsistency);
        // raft-engine logs what the strict open finds as an error, and the tolerant open's cut
        // as another; both are expected after a crash, and this function reports the outcome
        // once, at its true level.
        RECOVERING.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let opened = match Engine::open_with_file_system(strict, fs.clone()) {
            Ok(engine) => Ok(engine),
            Err(raft_engine::Error::Io(error)) => Err(StorageError::open(dir, error)),
            Err(corruption) => recover_torn_tail(dir, &fs, &corruption.to_string()),
        };
        RECOVERING.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        let engine = opened?;
        let hard_state: HardState = read_message(&engine, KEY_HARD_STATE)?;
        let conf_state: ConfState = read_message(&engine, KEY_CONF_STATE)?;
        let snapshot: SnapshotMetadata = read_message(&engine, KEY_SNAPSHOT)?;
        let mut log = RaftLog {
            engine,
            hard_state,
            conf_state,
            snapshot,
            available: None,
            requested: std::cell::Cell::new(false),
            terms: Terms::default(),
        };
        log.check()?;
        log.terms = log.verify_entries(dir)?;
        Ok(log)
    }

    /// Reads every retained entry once: raft-engine checks an entry block's checksum only when
    /// the block is read, so without this a damaged entry would be found only when a follower
    /// or a replay needs it. The log holds at most about `--snapshot-count` entries beyond the
    /// catch-up margin, so this stays cheap. Returns their terms.
    fn verify_entries(&self, dir: &Path) -> Result<Terms, StorageError> {
        const CHUNK: u64 = 1024;
        let mut terms = Terms::default();
        let mut low = self.first();
        let end = self.last() + 1;
        let mut entries = Vec::new();
        while low < end {
            let high = (low + CHUNK).min(end);
            entries.clear();
            if let Err(error) =
                self.engine
                    .fetch_entries_to::<EntryCodec>(REGION, low, high, None, &mut entries)
            {
                let bad = (low..high)
                    .find(|&index| self.engine.get_entry::<EntryCodec>(REGION, index).is_err())
                    .unwrap_or(low);
                return Err(StorageError::corrupt(format!(
                    "raft log in {}: entry {bad} cannot be read back ({error}); refusing to start",
                    dir.display()
                )));
            }
            if entries.len() as u64 != high - low
                || entries
                    .iter()
                    .zip(low..)
                    .any(|(entry, index)| entry.index != index)
            {
                return Err(StorageError::corrupt(format!(
                    "raft log in {}: entries {low}..{high} are missing or out of order; refusing to start",
                    dir.display()
                )));
            }
            terms.append(low, entries.iter().map(|entry| entry.term));
            low = high;
        }
        Ok(terms)
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

    /// Writes the entries and hard state of one Ready in one batch, fsync'd once when it must be
    /// (etcd's `MustSync`): when it holds entries, or a new term or vote. A hard state that only
    /// moves the commit index is written without one: the commit index can always be learned
    /// again, and a restart clamps it to at least the applied index
    /// ([`RaftLog::clamp_commit`]). Syncing it too cost every put a second fsync on every member.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let must_sync = !entries.is_empty()
            || hard_state.is_some_and(|state| {
                state.term != self.hard_state.term || state.vote != self.hard_state.vote
            });
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
        let sync = must_sync && !crate::planted::is_planted(crate::planted::Bug::AckBeforeFsync);
        self.engine
            .write(&mut batch, sync)
            .map_err(StorageError::log)?;
        if let Some(first) = entries.first() {
            self.terms
                .append(first.index, entries.iter().map(|entry| entry.term));
        }
        if let Some(state) = hard_state {
            self.hard_state = state.clone();
        }
        Ok(())
    }

    /// Records a newer commit index (without fsync: the commit index can always be learned
    /// again, and a restart clamps it to at least the applied index).
    pub fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        self.hard_state.commit = commit;
        self.put_message(KEY_HARD_STATE, &self.hard_state, false)
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

    /// Writes one message under `key` in a batch of its own, fsync'd when `sync`.
    fn put_message(
        &self,
        key: &[u8],
        message: &impl protobuf::Message,
        sync: bool,
    ) -> Result<(), StorageError> {
        let mut batch = LogBatch::default();
        batch
            .put_message(REGION, key.to_vec(), message)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, sync)
            .map_err(StorageError::log)?;
        Ok(())
    }

    /// Records a new configuration (after a conf change is applied).
    pub fn set_conf_state(&mut self, conf_state: ConfState) -> Result<(), StorageError> {
        self.put_message(KEY_CONF_STATE, &conf_state, true)?;
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
        let mut snapshot = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        snapshot.set_conf_state(self.conf_state.clone());
        self.put_message(KEY_SNAPSHOT, &snapshot, true)?;
        self.snapshot = snapshot;
        self.engine.compact_to(REGION, index + 1);
        self.terms.compact(index + 1);
        self.engine
            .purge_expired_files()
            .map_err(StorageError::log)?;
        Ok(())
    }

    /// Replaces the whole log with a snapshot's point (a follower installing a snapshot from the
    /// leader): every entry is dropped, and the compaction point, configuration and commit index
    /// become the snapshot's, in one fsync'd batch.
    pub fn install_snapshot(&mut self, metadata: &SnapshotMetadata) -> Result<(), StorageError> {
        let mut hard_state = self.hard_state.clone();
        hard_state.commit = hard_state.commit.max(metadata.index);
        hard_state.term = hard_state.term.max(metadata.term);
        let mut batch = LogBatch::default();
        batch.add_command(REGION, raft_engine::Command::Clean);
        batch
            .put_message(REGION, KEY_HARD_STATE.to_vec(), &hard_state)
            .map_err(StorageError::log)?;
        batch
            .put_message(REGION, KEY_CONF_STATE.to_vec(), metadata.get_conf_state())
            .map_err(StorageError::log)?;
        batch
            .put_message(REGION, KEY_SNAPSHOT.to_vec(), metadata)
            .map_err(StorageError::log)?;
        self.engine
            .write(&mut batch, true)
            .map_err(StorageError::log)?;
        self.hard_state = hard_state;
        self.conf_state = metadata.get_conf_state().clone();
        self.snapshot = metadata.clone();
        self.terms.clear();
        Ok(())
    }

    /// Returns (and clears) whether raft-rs asked for a snapshot that is not available.
    pub fn take_snapshot_request(&mut self) -> bool {
        self.requested.replace(false)
    }

    /// Offers a state-machine snapshot for raft-rs to send to followers.
    pub fn set_available_snapshot(&mut self, snapshot: Snapshot) {
        self.available = Some(snapshot);
    }

    /// The newest snapshot offered to followers, if any.
    pub fn available_snapshot(&self) -> Option<&Snapshot> {
        self.available.as_ref()
    }

    /// Stops offering the available snapshot; returns it.
    pub fn take_available_snapshot(&mut self) -> Option<Snapshot> {
        self.available.take()
    }

    /// The term of the entry at `index`, if the log still holds it (or it is the compaction point).
    pub fn term_at(&self, index: u64) -> Option<u64> {
        self.term(index).ok()
    }

    /// The index of the last entry (or the compaction point of an empty log).
    pub fn last_index_now(&self) -> u64 {
        self.last()
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

/// The most a torn last write can cut from the newest log file: one write batch (the node loop
/// bounds the proposals it drains per turn) plus raft-engine's 2 MiB preallocation step.
pub const TORN_TAIL_BYTES_MAX: u64 = 24 << 20;

fn engine_config(dir: &Path, recovery_mode: RecoveryMode) -> Config {
    Config {
        dir: dir.display().to_string(),
        recovery_mode,
        target_file_size: ReadableSize::mb(64),
        purge_threshold: ReadableSize::mb(512),
        enable_log_recycle: false,
        // No LZ4: with values that do not compress, compressing each batch (a fresh buffer,
        // and its page faults) was 8% of a follower's CPU at 100 clients for nothing, and
        // reading entries back decompressed them again. etcd's WAL is not compressed either.
        batch_compression_threshold: ReadableSize(0),
        ..Config::default()
    }
}

/// The newest file of the append queue.
fn newest_log_file(dir: &Path) -> Result<Option<PathBuf>, StorageError> {
    let mut files: Vec<PathBuf> = crate::disk::list_dir(dir)
        .map_err(|e| StorageError::open(dir, e))?
        .into_iter()
        .filter(|path| path.extension().is_some_and(|ext| ext == "raftlog"))
        .collect();
    files.sort();
    Ok(files.pop())
}

/// Copies `from` to `to` through `fs`.
fn copy_file<F: FileSystem>(fs: &Arc<F>, from: &Path, to: &Path) -> std::io::Result<()> {
    let source = Arc::new(fs.open(from, Permission::ReadOnly)?);
    let mut bytes = Vec::new();
    fs.new_reader(source)?.read_to_end(&mut bytes)?;
    let target = Arc::new(fs.create(to)?);
    fs.new_writer(target.clone())?.write_all(&bytes)?;
    target.sync()
}

fn file_len<F: FileSystem>(fs: &Arc<F>, path: &Path) -> Result<u64, StorageError> {
    fs.open(path, Permission::ReadOnly)
        .and_then(|handle| handle.file_size())
        .map(|size| size as u64)
        .map_err(|e| StorageError::open(path, e))
}

/// Opens of the log in progress (see [`opening`]).
static RECOVERING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Whether a log is being opened and checked right now: raft-engine's own error and warning
/// records then describe what [`RaftLog::open_with`] is about to judge and report itself, and a
/// logger may demote them.
pub fn opening() -> bool {
    RECOVERING.load(std::sync::atomic::Ordering::Relaxed) > 0
}

fn recover_torn_tail<F: FileSystem>(
    dir: &Path,
    fs: &Arc<F>,
    strict_error: &str,
) -> Result<Engine<F>, StorageError> {
    let refuse = |detail: String| {
        StorageError::corrupt(format!(
            "raft log in {}: {detail}; refusing to start",
            dir.display()
        ))
    };
    let Some(newest) = newest_log_file(dir)? else {
        return Err(refuse(strict_error.to_owned()));
    };
    let saved = newest.with_extension("raftlog.before-recovery");
    copy_file(fs, &newest, &saved).map_err(|e| StorageError::open(&saved, e))?;
    let length_before = file_len(fs, &newest)?;
    let restore = || {
        fs.rename(&saved, &newest)
            .map_err(|e| StorageError::open(&newest, e))
    };
    let tolerant = engine_config(dir, RecoveryMode::TolerateTailCorruption);
    let engine = match Engine::open_with_file_system(tolerant, fs.clone()) {
        Ok(engine) => engine,
        Err(error) => {
            restore()?;
            return Err(refuse(format!("{error} (strict open: {strict_error})")));
        }
    };
    let length_after = file_len(fs, &newest)?;
    let cut = length_before.saturating_sub(length_after);
    if cut > TORN_TAIL_BYTES_MAX {
        drop(engine);
        restore()?;
        return Err(refuse(format!(
            "{} is corrupt at byte {length_after} of {length_before}, far from its end, so this is not a torn \
             last write ({strict_error})",
            newest.display()
        )));
    }
    fs.delete(&saved)
        .map_err(|e| StorageError::open(&saved, e))?;
    tracing::warn!(
        file = %newest.display(),
        cut_bytes = cut,
        at_byte = length_after,
        detail = strict_error,
        "raft log had a torn tail (an interrupted last write); truncated it and continuing"
    );
    Ok(engine)
}

fn read_message<M: protobuf::Message + Default, F: FileSystem>(
    engine: &Engine<F>,
    key: &[u8],
) -> Result<M, StorageError> {
    Ok(engine
        .get_message::<M>(REGION, key)
        .map_err(StorageError::log)?
        .unwrap_or_default())
}

impl<F: FileSystem> Storage for RaftLog<F> {
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
        self.terms
            .term(index)
            .ok_or(raft::Error::Store(raft::StorageError::Unavailable))
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        // A snapshot is usable while the log still holds every entry after it (so the follower
        // can continue from it by appends), it is as new as the follower asked for, and its
        // configuration names the follower: raft-rs ignores a snapshot that does not, so one
        // made before the follower was added would be sent to it forever (found by the
        // simulator, seed 97).
        if let Some(snapshot) = &self.available {
            let metadata = snapshot.get_metadata();
            let conf = metadata.get_conf_state();
            let names_follower = conf.voters.contains(&to) || conf.learners.contains(&to);
            if metadata.index >= self.snapshot.index
                && metadata.index >= request_index
                && names_follower
            {
                return Ok(snapshot.clone());
            }
        }
        // Making one takes a copy of the state machine; the node does that outside raft-rs and
        // raft-rs asks again on the follower's next response.
        self.requested.set(true);
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot_at(index: u64, voters: Vec<u64>, learners: Vec<u64>) -> Snapshot {
        let mut metadata = SnapshotMetadata {
            index,
            term: 1,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(ConfState {
            voters,
            learners,
            ..ConfState::default()
        });
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(metadata);
        snapshot
    }

    /// The terms kept in memory answer as the entries on disk do, through appends that overwrite
    /// a suffix, compactions and reopens.
    #[test]
    fn terms_in_memory_match_the_entries_on_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % bound.max(1)
        };
        let mut term = 1;
        for round in 0..400 {
            match next(10) {
                0 => {
                    let target = log.first() + next(log.last() + 1 - log.first());
                    log.compact(target).expect("compact");
                }
                1 => {
                    drop(log);
                    log = RaftLog::open(dir.path()).expect("reopen");
                }
                _ => {
                    // Mostly at the end, sometimes over a suffix (a new leader's entries).
                    let from = if next(4) == 0 {
                        log.first() + next(log.last() + 1 - log.first())
                    } else {
                        log.last() + 1
                    };
                    term += next(3) / 2;
                    let entries: Vec<Entry> = (from..from + 1 + next(20))
                        .map(|index| Entry {
                            index,
                            term,
                            data: vec![round as u8; 10].into(),
                            ..Entry::default()
                        })
                        .collect();
                    log.append(&entries, None).expect("append");
                }
            }
            for index in log.first()..=log.last() {
                let on_disk = log
                    .engine
                    .get_entry::<EntryCodec>(REGION, index)
                    .expect("read")
                    .expect("held")
                    .term;
                assert_eq!(
                    Storage::term(&log, index).ok(),
                    Some(on_disk),
                    "index {index}"
                );
            }
        }
        assert!(log.last() > 100, "the log grew: {}", log.last());
    }

    #[test]
    fn a_snapshot_is_offered_only_to_followers_its_configuration_names() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut log = RaftLog::open(dir.path()).expect("open");
        log.bootstrap(ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        })
        .expect("bootstrap");
        log.set_available_snapshot(snapshot_at(5, vec![1, 2, 3], vec![4]));
        assert!(log.snapshot(0, 2).is_ok(), "a voter it names");
        assert!(log.snapshot(0, 4).is_ok(), "a learner it names");
        assert!(!log.take_snapshot_request());
        // Member 5 was added after the snapshot was made: raft-rs on member 5 would ignore it.
        assert!(matches!(
            log.snapshot(0, 5),
            Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        ));
        assert!(log.take_snapshot_request(), "a fresh snapshot is asked for");
    }
}
