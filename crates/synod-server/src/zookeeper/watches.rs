//! A connection's ZooKeeper watches, fed by one watch of the member's hub over every znode's
//! data key. Changes become ZooKeeper's events (NodeCreated, NodeDeleted, NodeDataChanged,
//! NodeChildrenChanged) for the watches they match; one-shot watches go once fired, persistent
//! and recursive ones stay. [`Watches::catch_up`] delivers everything up to a revision before
//! the connection sends a reply read at it: a client sees the event before the data.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synod_api::mvccpb::event::EventType;
use synod_api::synodpb::ZkId;
use synod_core::watch::{StreamId, WatchNotice, WatchRequest};
use synod_core::zk;
use tokio::sync::mpsc;

use crate::member::Member;
use crate::watch::ChannelSink;

/// ZooKeeper's event types.
pub mod event {
    pub const NODE_CREATED: i32 = 1;
    pub const NODE_DELETED: i32 = 2;
    pub const NODE_DATA_CHANGED: i32 = 3;
    pub const NODE_CHILDREN_CHANGED: i32 = 4;
}

/// Notices queued per connection before the hub treats it as slow (it then catches up later).
const QUEUE_MAX: usize = 256;
/// Longest a reply waits for the watch events before it.
const CATCH_UP_MAX: Duration = Duration::from_secs(2);

/// The hub's watch behind a connection's ZooKeeper watches.
struct Followed {
    id: StreamId,
    sink: Arc<ChannelSink>,
    receiver: mpsc::Receiver<WatchNotice>,
}

/// The watch tables of one connection: each watched path with the revision its watch was set
/// at. A change at or below that revision is already in what the client read with the watch,
/// so it does not fire it (it may still be on its way through the hub).
pub struct Watches {
    member: Arc<Member>,
    pub data: HashMap<String, i64>,
    pub child: HashMap<String, i64>,
    pub persistent: HashMap<String, i64>,
    pub recursive: HashMap<String, i64>,
    stream: Option<Followed>,
    /// Every change up to this revision has been turned into events.
    seen: i64,
    /// The hub's watch was canceled (its history compacted): events were lost.
    broken: bool,
}

/// Events that cannot all be delivered any more: the connection must close, so that its client
/// reconnects and catches up with setWatches.
#[derive(Debug, thiserror::Error)]
#[error("watch events fell behind the history kept")]
pub struct FellBehind;

/// Whether a change at `at` fires a watch set at `registered`.
fn fires(registered: Option<&i64>, at: i64) -> bool {
    registered.is_some_and(|set_at| at > *set_at)
}

impl Watches {
    pub fn new(member: Arc<Member>) -> Watches {
        Watches {
            member,
            data: HashMap::new(),
            child: HashMap::new(),
            persistent: HashMap::new(),
            recursive: HashMap::new(),
            stream: None,
            seen: 0,
            broken: false,
        }
    }

    /// The revision a reply may name as the last the client has seen: the events up to it have
    /// gone out.
    pub fn shown_through(&self, current: i64) -> i64 {
        if self.stream.is_some() {
            self.seen.min(current)
        } else {
            current
        }
    }

    pub fn count(&self) -> usize {
        self.data.len() + self.child.len() + self.persistent.len() + self.recursive.len()
    }

    fn is_empty(&self) -> bool {
        self.count() == 0
    }

    /// Starts following changes after `revision` (the revision a watch was set at), if not yet.
    pub fn follow_from(&mut self, revision: i64) {
        if self.stream.is_some() {
            return;
        }
        let hub = &self.member.machine.hub;
        let stream = hub.new_stream();
        let (sender, receiver) = mpsc::channel(QUEUE_MAX);
        let request = WatchRequest {
            key: zk::DATA_PREFIX.to_vec(),
            range_end: zk::prefix_end(zk::DATA_PREFIX),
            start_revision: revision + 1,
            ..WatchRequest::default()
        };
        let sink = Arc::new(ChannelSink::new(sender));
        hub.watch(stream, 0, request, sink.clone());
        self.stream = Some(Followed {
            id: stream,
            sink,
            receiver,
        });
        self.seen = revision;
    }

    /// The next notice of the hub (pending forever while nothing is watched).
    pub async fn next(&mut self) -> Option<WatchNotice> {
        match &mut self.stream {
            Some(followed) => followed.receiver.recv().await,
            None => std::future::pending().await,
        }
    }

    /// The events a notice brings to this connection, whose `identities` must be allowed READ
    /// on an event's node: (type, path), in order.
    pub fn fire(
        &mut self,
        notice: WatchNotice,
        identities: &[ZkId],
    ) -> Result<Vec<(i32, String)>, FellBehind> {
        let mut fired = Vec::new();
        match notice {
            WatchNotice::Events {
                events, revision, ..
            } => {
                for change in events.iter() {
                    let Some(kv) = &change.kv else { continue };
                    let Some(path) = zk::path_of(&kv.key) else {
                        continue;
                    };
                    let at = kv.mod_revision;
                    let kind = if change.r#type == EventType::Delete as i32 {
                        event::NODE_DELETED
                    } else if kv.version == 1 {
                        event::NODE_CREATED
                    } else {
                        event::NODE_DATA_CHANGED
                    };
                    self.changed(path, kind, at, identities, &mut fired);
                    if kind != event::NODE_DATA_CHANGED {
                        self.parent_changed(path, at, identities, &mut fired);
                    }
                }
                self.seen = self.seen.max(revision);
            }
            WatchNotice::Progress { revision, .. } => self.seen = self.seen.max(revision),
            // History the watch needed is gone: what it would have told is lost.
            WatchNotice::Compacted { .. } => {
                self.stop();
                self.broken = true;
                return Err(FellBehind);
            }
        }
        Ok(fired)
    }

    /// Whether this connection may read `path` as it was at `revision` (ZooKeeper 3.8.4's
    /// ZOOKEEPER-4799: an event about a node the watcher may not read is not sent). A node
    /// whose ACL cannot be read any more (compacted) is not held back.
    fn may_read(&self, path: &str, revision: i64, identities: &[ZkId]) -> bool {
        match zk::acl_at(self.member.machine.store.as_ref(), path, revision) {
            Ok(Some(acl)) => zk::permitted(&acl, identities, zk::perm::READ),
            _ => true,
        }
    }

    fn changed(
        &mut self,
        path: &str,
        kind: i32,
        at: i64,
        identities: &[ZkId],
        fired: &mut Vec<(i32, String)>,
    ) {
        let mut hit = fires(self.persistent.get(path), at)
            || (!self.recursive.is_empty()
                && ancestors_or_self(path).any(|p| fires(self.recursive.get(p), at)));
        if fires(self.data.get(path), at) {
            self.data.remove(path);
            hit = true;
        }
        if kind == event::NODE_DELETED && fires(self.child.get(path), at) {
            self.child.remove(path);
            hit = true;
        }
        if hit && self.may_read(path, at, identities) {
            fired.push((kind, path.to_owned()));
        }
    }

    fn parent_changed(
        &mut self,
        path: &str,
        at: i64,
        identities: &[ZkId],
        fired: &mut Vec<(i32, String)>,
    ) {
        let Some(parent) = zk::parent(path) else {
            return;
        };
        let mut hit = fires(self.persistent.get(parent), at);
        if fires(self.child.get(parent), at) {
            self.child.remove(parent);
            hit = true;
        }
        if hit && self.may_read(parent, at, identities) {
            fired.push((event::NODE_CHILDREN_CHANGED, parent.to_owned()));
        }
    }

    /// Turns every change up to `revision` into events before a reply read at it goes out; if
    /// that cannot be done (history compacted, or the hub did not get there in time), the
    /// connection must close rather than answer before the events.
    pub async fn catch_up(
        &mut self,
        revision: i64,
        identities: &[ZkId],
    ) -> Result<Vec<(i32, String)>, FellBehind> {
        let mut fired = Vec::new();
        if self.broken {
            return Err(FellBehind);
        }
        if self.stream.is_none() || self.seen >= revision {
            return Ok(fired);
        }
        let deadline = Instant::now() + CATCH_UP_MAX;
        while self.seen < revision && Instant::now() < deadline {
            let Some(followed) = &mut self.stream else {
                break;
            };
            // Ask where the hub is; it answers once this watch is synced.
            let asked = self
                .member
                .machine
                .hub
                .request_progress(followed.id, followed.sink.as_ref());
            let wait = if asked {
                Duration::from_millis(100)
            } else {
                Duration::from_millis(5)
            };
            match tokio::time::timeout(wait, followed.receiver.recv()).await {
                Ok(Some(notice)) => fired.extend(self.fire(notice, identities)?),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        if self.seen < revision {
            return Err(FellBehind);
        }
        if self.is_empty() {
            self.stop();
        }
        Ok(fired)
    }

    fn stop(&mut self) {
        if let Some(followed) = self.stream.take() {
            self.member.machine.hub.remove_stream(followed.id);
        }
    }
}

impl Drop for Watches {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `/a/b/c`, `/a/b`, `/a`, `/`.
fn ancestors_or_self(path: &str) -> impl Iterator<Item = &str> {
    std::iter::successors(Some(path), |p| zk::parent(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watch_fires_only_for_changes_after_the_read_that_set_it() {
        assert!(!fires(None, 10));
        assert!(!fires(Some(&10), 9));
        assert!(
            !fires(Some(&10), 10),
            "the read at 10 already showed the change at 10"
        );
        assert!(fires(Some(&10), 11));
    }
}
