//! The watch hub: every watcher of the member, split into a synced group (fed directly by apply)
//! and an unsynced group (caught up from history), as in etcd's `mvcc/watchable_store.go`.
//!
//! Delivery never blocks apply. Each watch stream has a bounded queue behind a [`WatchSink`];
//! when [`WatchHub::notify`] cannot enqueue a watcher's events, the watcher moves to the unsynced
//! group and [`WatchHub::sync_unsynced`] later replays what it missed from the key table, as
//! soon as its stream has room again. A watcher whose history was compacted away is canceled with
//! the compaction revision. Memory per slow stream is therefore bounded by its queue.
//!
//! Lock order: the hub lock is never held while reading the store.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use synod_api::mvccpb::{Event, event::EventType};

use crate::error::{Error, RequestError};
use crate::mvcc::key_index::KeyRange;
use crate::mvcc::kv_store::KvStore;

/// Most revisions replayed to unsynced watchers in one catch-up round (etcd: 1000).
const CATCH_UP_REVISIONS_MAX: usize = 1000;

/// Identifies a stream within the hub.
pub type StreamId = u64;

/// What the hub sends to a stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchNotice {
    /// Events of one or more whole revisions for one watcher, oldest first.
    Events {
        watch_id: i64,
        revision: i64,
        events: SharedEvents,
    },
    /// The watcher needs history that compaction removed; it has been canceled.
    Compacted {
        watch_id: i64,
        compact_revision: i64,
        revision: i64,
    },
    /// Every watcher of the stream has seen everything up to `revision` (`watch_id` -1 for a
    /// stream-wide answer to a progress request).
    Progress { watch_id: i64, revision: i64 },
}

/// A run of events shared by every watcher that wants all of them: one copy of a revision (or of a
/// catch-up window) however many watchers it goes to. Reads as a slice.
#[derive(Debug, Clone)]
pub struct SharedEvents {
    all: Arc<[Event]>,
    start: usize,
}

impl SharedEvents {
    /// The events of `all` from position `start` on.
    fn suffix(all: &Arc<[Event]>, start: usize) -> SharedEvents {
        SharedEvents {
            all: all.clone(),
            start: start.min(all.len()),
        }
    }
}

impl std::ops::Deref for SharedEvents {
    type Target = [Event];

    fn deref(&self) -> &[Event] {
        &self.all[self.start..]
    }
}

impl PartialEq for SharedEvents {
    fn eq(&self, other: &SharedEvents) -> bool {
        **self == **other
    }
}

impl From<Vec<Event>> for SharedEvents {
    fn from(events: Vec<Event>) -> SharedEvents {
        SharedEvents {
            all: events.into(),
            start: 0,
        }
    }
}

/// The sending half of a stream's bounded queue.
pub trait WatchSink: Send + Sync {
    /// Enqueues a notice; returns false, dropping it, when the queue is full or closed.
    fn try_send(&self, notice: WatchNotice) -> bool;

    /// Returns whether the queue has room now; catch-up skips streams that have none.
    fn has_room(&self) -> bool {
        true
    }
}

/// What a client asked to watch.
#[derive(Debug, Clone, Default)]
pub struct WatchRequest {
    pub key: Vec<u8>,
    pub range_end: Vec<u8>,
    /// First revision to deliver; 0 means "after the current revision".
    pub start_revision: i64,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
}

struct Watcher {
    request: WatchRequest,
    /// The next revision this watcher must receive.
    next_revision: i64,
    sink: Arc<dyn WatchSink>,
}

impl Watcher {
    fn wants(&self, event: &Event) -> bool {
        let Some(kv) = &event.kv else { return false };
        let range = KeyRange::new(&self.request.key, &self.request.range_end);
        if !range.contains(&kv.key) {
            return false;
        }
        if event.r#type == EventType::Put as i32 {
            !self.request.no_put
        } else {
            !self.request.no_delete
        }
    }
}

type WatcherKey = (StreamId, i64);

/// The watcher sets are ordered, so apply and catch-up visit watchers in the same order on every
/// run and a simulated seed replays.
#[derive(Default)]
struct HubState {
    watchers: HashMap<WatcherKey, Watcher>,
    /// Synced watchers of exactly one key, by key, so apply finds them without a scan.
    synced_by_key: HashMap<Vec<u8>, BTreeSet<WatcherKey>>,
    /// Synced watchers of a range.
    synced_ranges: BTreeSet<WatcherKey>,
    unsynced: BTreeSet<WatcherKey>,
    /// The last revision handed to `notify`.
    notified_revision: i64,
}

impl HubState {
    fn make_synced(&mut self, key: WatcherKey) {
        let Some(watcher) = self.watchers.get(&key) else {
            return;
        };
        self.unsynced.remove(&key);
        if watcher.request.range_end.is_empty() {
            self.synced_by_key
                .entry(watcher.request.key.clone())
                .or_default()
                .insert(key);
        } else {
            self.synced_ranges.insert(key);
        }
    }

    fn make_unsynced(&mut self, key: WatcherKey) {
        self.remove_synced(key);
        self.unsynced.insert(key);
    }

    fn remove_synced(&mut self, key: WatcherKey) {
        let Some(watcher) = self.watchers.get(&key) else {
            return;
        };
        if watcher.request.range_end.is_empty() {
            if let Some(set) = self.synced_by_key.get_mut(&watcher.request.key) {
                set.remove(&key);
                if set.is_empty() {
                    self.synced_by_key.remove(&watcher.request.key);
                }
            }
        } else {
            self.synced_ranges.remove(&key);
        }
    }

    fn remove(&mut self, key: WatcherKey) -> bool {
        self.remove_synced(key);
        self.unsynced.remove(&key);
        self.watchers.remove(&key).is_some()
    }
}

/// Every watcher of one member.
pub struct WatchHub {
    state: Mutex<HubState>,
    next_stream: std::sync::atomic::AtomicU64,
}

impl WatchHub {
    /// Creates a hub whose watchers start after `revision`.
    pub fn new(revision: i64) -> WatchHub {
        WatchHub {
            state: Mutex::new(HubState {
                notified_revision: revision,
                ..HubState::default()
            }),
            next_stream: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A stream id never handed out before: client streams and server-side waiters share the hub.
    pub fn new_stream(&self) -> StreamId {
        self.next_stream
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds a watcher. The caller has already refused a start revision below the compaction
    /// point. Returns false if the stream already has a watcher with this id.
    pub fn watch(
        &self,
        stream: StreamId,
        watch_id: i64,
        request: WatchRequest,
        sink: Arc<dyn WatchSink>,
    ) -> bool {
        let mut state = self.lock();
        let key = (stream, watch_id);
        if state.watchers.contains_key(&key) {
            return false;
        }
        let current = state.notified_revision;
        let next_revision = if request.start_revision <= 0 {
            current + 1
        } else {
            request.start_revision
        };
        state.watchers.insert(
            key,
            Watcher {
                request,
                next_revision,
                sink,
            },
        );
        if next_revision > current {
            state.make_synced(key);
        } else {
            state.unsynced.insert(key);
        }
        true
    }

    /// Counts for the metrics: (streams with a watcher, watchers, unsynced watchers).
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.lock();
        let streams: std::collections::HashSet<StreamId> =
            state.watchers.keys().map(|(stream, _)| *stream).collect();
        (streams.len(), state.watchers.len(), state.unsynced.len())
    }

    /// Removes a watcher; returns whether it existed.
    pub fn cancel(&self, stream: StreamId, watch_id: i64) -> bool {
        self.lock().remove((stream, watch_id))
    }

    /// Removes every watcher of a closed stream.
    pub fn remove_stream(&self, stream: StreamId) {
        let mut state = self.lock();
        let keys: Vec<WatcherKey> = state
            .watchers
            .keys()
            .filter(|(s, _)| *s == stream)
            .copied()
            .collect();
        for key in keys {
            state.remove(key);
        }
    }

    /// Hands the events of a committed batch (revisions in order, ending at `revision`) to the
    /// synced watchers. A watcher whose queue is full becomes unsynced and catches up later.
    pub fn notify(&self, revision: i64, events: &[Event]) {
        let mut state = self.lock();
        assert!(
            revision >= state.notified_revision,
            "notified revisions never go back"
        );
        state.notified_revision = revision;
        if events.is_empty() {
            return;
        }
        // One revision at a time, so a watcher's notices stay in revision order and a full queue
        // loses nothing: the watcher resumes from the first revision it did not get. A revision's
        // events are copied once and shared by every watcher that wants all of them, so a write
        // to a key with 10,000 watchers costs 10,000 pointer copies under this lock, not 10,000
        // event copies.
        let mut fallen_behind: HashSet<WatcherKey> = HashSet::new();
        let mut candidates: Vec<WatcherKey> = Vec::new();
        for chunk in events.chunk_by(|a, b| mod_revision(a) == mod_revision(b)) {
            let rev = mod_revision(&chunk[0]);
            candidates.clear();
            let mut sets = 0;
            for event in chunk {
                let Some(kv) = &event.kv else { continue };
                if let Some(exact) = state.synced_by_key.get(&kv.key) {
                    candidates.extend(exact.iter().copied());
                    sets += 1;
                }
            }
            if !state.synced_ranges.is_empty() {
                candidates.extend(state.synced_ranges.iter().copied());
                sets += 1;
            }
            // In watcher order (each set is ordered), not hash order: which watcher meets a full
            // queue first must not depend on a hasher's seed, or a simulated run would not replay.
            if sets > 1 {
                candidates.sort_unstable();
                candidates.dedup();
            }
            let mut shared: Option<SharedEvents> = None;
            for key in &candidates {
                if fallen_behind.contains(key) {
                    continue;
                }
                let Some(watcher) = state.watchers.get_mut(key) else {
                    continue;
                };
                if rev < watcher.next_revision {
                    continue;
                }
                let wanted = if chunk.iter().all(|event| watcher.wants(event)) {
                    shared
                        .get_or_insert_with(|| SharedEvents::suffix(&chunk.into(), 0))
                        .clone()
                } else {
                    let some: Vec<Event> = chunk
                        .iter()
                        .filter(|event| watcher.wants(event))
                        .cloned()
                        .collect();
                    if some.is_empty() {
                        continue;
                    }
                    some.into()
                };
                let notice = WatchNotice::Events {
                    watch_id: key.1,
                    revision,
                    events: wanted,
                };
                if watcher.sink.try_send(notice) {
                    watcher.next_revision = rev + 1;
                } else {
                    watcher.next_revision = rev;
                    fallen_behind.insert(*key);
                }
            }
        }
        for key in fallen_behind {
            state.make_unsynced(key);
        }
        // A synced watcher that got nothing has still seen everything up to `revision`; its
        // `next_revision` is not advanced here (that would cost a pass over every watcher per
        // write): for synced watchers it only matters when it is in the future (a start
        // revision ahead of the store), and the filter above reads it that way.
    }

    /// The store was replaced by a snapshot at `revision`: every watcher has missed the events
    /// between what it was sent and `revision`, so each becomes unsynced and is replayed from the
    /// new key table (or canceled as compacted) by [`WatchHub::sync_unsynced`].
    pub fn restore(&self, revision: i64) {
        let mut state = self.lock();
        let seen = state.notified_revision;
        let synced: Vec<WatcherKey> = state
            .watchers
            .keys()
            .copied()
            .filter(|key| !state.unsynced.contains(key))
            .collect();
        for key in synced {
            if let Some(watcher) = state.watchers.get_mut(&key) {
                // A synced watcher has had everything up to what was notified.
                watcher.next_revision = watcher.next_revision.max(seen + 1);
            }
            state.make_unsynced(key);
        }
        state.notified_revision = state.notified_revision.max(revision);
    }

    /// Replays history to unsynced watchers whose streams have room; moves those that caught up
    /// to the synced group, and cancels those whose history is compacted. Returns how many
    /// watchers are still unsynced.
    pub fn sync_unsynced(&self, store: &KvStore) -> Result<usize, Error> {
        let compact = store.compact_revision();
        let (from, to) = {
            let state = self.lock();
            let unsynced = state
                .unsynced
                .iter()
                .filter_map(|key| state.watchers.get(key));
            // Only watchers whose stream has room can take anything now (reading history for the
            // others would be wasted work every round while their client stalls), and watchers
            // below the compaction point get nothing but their cancellation.
            let from = unsynced
                .clone()
                .filter(|watcher| watcher.sink.has_room() && watcher.next_revision >= compact)
                .map(|watcher| watcher.next_revision)
                .min();
            let below_compaction = unsynced
                .clone()
                .any(|watcher| watcher.next_revision < compact);
            match from {
                Some(from) => (from, state.notified_revision),
                None if below_compaction => (i64::MAX, state.notified_revision),
                None => return Ok(state.unsynced.len()),
            }
        };
        // The last revision the read covered. A read refused because a compaction raced it
        // covers nothing: no watcher may be moved past events it did not get.
        let (events, covered) = if from > to {
            (Vec::new(), to)
        } else {
            match store.events(from, to, CATCH_UP_REVISIONS_MAX) {
                Ok(events)
                    if !events.is_empty() && revisions_in(&events) == CATCH_UP_REVISIONS_MAX =>
                {
                    let last = mod_revision(events.last().expect("non-empty"));
                    (events, last)
                }
                Ok(events) => (events, to),
                Err(Error::Request(RequestError::Compacted)) => (Vec::new(), from - 1),
                Err(other) => return Err(other),
            }
        };
        // One copy of the window for every watcher that wants all of it from its next revision
        // on (the usual case: watchers of one busy key that fell behind together).
        let events: Arc<[Event]> = events.into();
        let mut state = self.lock();
        let keys: Vec<WatcherKey> = state.unsynced.iter().copied().collect();
        for key in keys {
            let notified = state.notified_revision;
            let Some(watcher) = state.watchers.get_mut(&key) else {
                continue;
            };
            if watcher.next_revision < compact {
                let notice = WatchNotice::Compacted {
                    watch_id: key.1,
                    compact_revision: compact,
                    revision: notified,
                };
                if watcher.sink.try_send(notice) {
                    state.remove(key);
                }
                continue;
            }
            if watcher.next_revision > covered + 1
                || watcher.next_revision < from
                || !watcher.sink.has_room()
            {
                continue;
            }
            let start = events.partition_point(|e| mod_revision(e) < watcher.next_revision);
            let wanted = if events[start..].iter().all(|e| watcher.wants(e)) {
                SharedEvents::suffix(&events, start)
            } else {
                events[start..]
                    .iter()
                    .filter(|e| watcher.wants(e))
                    .cloned()
                    .collect::<Vec<_>>()
                    .into()
            };
            if !wanted.is_empty() {
                let notice = WatchNotice::Events {
                    watch_id: key.1,
                    revision: notified,
                    events: wanted,
                };
                if !watcher.sink.try_send(notice) {
                    continue;
                }
            }
            watcher.next_revision = covered + 1;
            if watcher.next_revision > state.notified_revision {
                state.make_synced(key);
            }
        }
        Ok(state.unsynced.len())
    }

    /// Answers a progress request: if every watcher of the stream is synced, sends a stream-wide
    /// progress notice (watch id -1) through `sink` and returns true.
    pub fn request_progress(&self, stream: StreamId, sink: &dyn WatchSink) -> bool {
        let state = self.lock();
        if state.unsynced.iter().any(|(s, _)| *s == stream) {
            return false;
        }
        sink.try_send(WatchNotice::Progress {
            watch_id: -1,
            revision: state.notified_revision,
        })
    }

    /// Sends a progress notice to every synced watcher that asked for periodic progress.
    pub fn notify_progress(&self) {
        let state = self.lock();
        for (key, watcher) in &state.watchers {
            if watcher.request.progress_notify && !state.unsynced.contains(key) {
                watcher.sink.try_send(WatchNotice::Progress {
                    watch_id: key.1,
                    revision: state.notified_revision,
                });
            }
        }
    }
}

fn mod_revision(event: &Event) -> i64 {
    event.kv.as_ref().map(|kv| kv.mod_revision).unwrap_or(0)
}

fn revisions_in(events: &[Event]) -> usize {
    events
        .chunk_by(|a, b| mod_revision(a) == mod_revision(b))
        .count()
}
