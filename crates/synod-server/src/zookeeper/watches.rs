//! A connection's ZooKeeper watches, fed by one watch of the member's hub over every znode's
//! data key. Changes become ZooKeeper's events (NodeCreated, NodeDeleted, NodeDataChanged,
//! NodeChildrenChanged) for the watches they match; one-shot watches go once fired, persistent
//! and recursive ones stay. [`Watches::catch_up`] delivers everything up to a revision before
//! the connection sends a reply read at it: a client sees the event before the data.

use std::collections::HashSet;
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

/// The watch tables of one connection.
pub struct Watches {
    member: Arc<Member>,
    pub data: HashSet<String>,
    pub child: HashSet<String>,
    pub persistent: HashSet<String>,
    pub recursive: HashSet<String>,
    /// The connection's identities: an event goes only where READ on its node is allowed.
    pub identities: Vec<ZkId>,
    stream: Option<Followed>,
    /// Every change up to this revision has been turned into events.
    seen: i64,
}

impl Watches {
    pub fn new(member: Arc<Member>, identities: Vec<ZkId>) -> Watches {
        Watches {
            member,
            data: HashSet::new(),
            child: HashSet::new(),
            persistent: HashSet::new(),
            recursive: HashSet::new(),
            identities,
            stream: None,
            seen: 0,
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

    /// The events a notice brings to this connection: (type, path), in order.
    pub fn fire(&mut self, notice: WatchNotice) -> Vec<(i32, String)> {
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
                    let path = path.to_owned();
                    let at = kv.mod_revision;
                    if change.r#type == EventType::Delete as i32 {
                        self.changed(&path, event::NODE_DELETED, at, &mut fired);
                        self.parent_changed(&path, at, &mut fired);
                    } else if kv.version == 1 {
                        self.changed(&path, event::NODE_CREATED, at, &mut fired);
                        self.parent_changed(&path, at, &mut fired);
                    } else {
                        self.changed(&path, event::NODE_DATA_CHANGED, at, &mut fired);
                    }
                }
                self.seen = self.seen.max(revision);
            }
            WatchNotice::Progress { revision, .. } => self.seen = self.seen.max(revision),
            // History the watch needed is gone: nothing more can be told; start over later.
            WatchNotice::Compacted { revision, .. } => {
                self.stop();
                self.seen = revision;
            }
        }
        fired
    }

    /// Whether this connection may read `path` as it was at `revision` (ZooKeeper 3.8.4's
    /// ZOOKEEPER-4799: an event about a node the watcher may not read is not sent). A node
    /// whose ACL cannot be read any more (compacted) is not held back.
    fn may_read(&self, path: &str, revision: i64) -> bool {
        match zk::acl_at(self.member.machine.store.as_ref(), path, revision) {
            Ok(Some(acl)) => zk::permitted(&acl, &self.identities, zk::perm::READ),
            _ => true,
        }
    }

    fn changed(&mut self, path: &str, kind: i32, at: i64, fired: &mut Vec<(i32, String)>) {
        let mut hit = self.persistent.contains(path)
            || ancestors_or_self(path).any(|p| self.recursive.contains(p));
        hit |= self.data.remove(path);
        if kind == event::NODE_DELETED {
            hit |= self.child.remove(path);
        }
        if hit && self.may_read(path, at) {
            fired.push((kind, path.to_owned()));
        }
    }

    fn parent_changed(&mut self, path: &str, at: i64, fired: &mut Vec<(i32, String)>) {
        let Some(parent) = zk::parent(path) else {
            return;
        };
        if (self.child.remove(parent) | self.persistent.contains(parent))
            && self.may_read(parent, at)
        {
            fired.push((event::NODE_CHILDREN_CHANGED, parent.to_owned()));
        }
    }

    /// Turns every change up to `revision` into events before a reply read at it goes out.
    pub async fn catch_up(&mut self, revision: i64) -> Vec<(i32, String)> {
        let mut fired = Vec::new();
        if self.stream.is_none() || self.seen >= revision {
            return fired;
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
                Ok(Some(notice)) => fired.extend(self.fire(notice)),
                Ok(None) => break,
                Err(_) => {}
            }
        }
        if self.is_empty() {
            self.stop();
        }
        fired
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
