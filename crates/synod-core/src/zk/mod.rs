//! ZooKeeper's data model on the MVCC store: where a znode lives in the keyspace and how its
//! `Stat` follows from the keys' revisions (here), who may do what to it ([`acl`]), and
//! ZooKeeper's writes (create, delete, setData, setACL, check, multi) with ZooKeeper's checks, in
//! ZooKeeper's order, applied all at one revision ([`write`]).
//!
//! A znode at `path` of depth `d` (`/` is 0, `/a` is 1) is three keys:
//! - `zk/n<ddd><path>`: its data, as given (etcd clients read and watch znodes here). Its create
//!   revision is the czxid, its mod revision the mzxid, its version − 1 the ZooKeeper version,
//!   its lease the owning session of an ephemeral.
//! - `zk/m<ddd><path>`: [`ZnodeMeta`] (ctime, mtime, aversion, ACL, create mode).
//! - `zk/c<ddd><path>`: how many children were ever created under it (the sequence counter) and
//!   how many it has now; its mod revision is the pzxid, as every child create or delete
//!   rewrites it. Keeping the count here makes `numChildren` one read, however many children.
//!
//! The depth in the key keeps a node's children, and only they, under one prefix
//! (`zk/n<d+1><path>/`), so listing and counting them never reads grandchildren. An ephemeral's
//! three keys are attached to its session's lease: when the lease goes, so do they, and
//! [`after_revoke`] records the deletion on the parents. zxids are revisions.

use prost::Message;
use synod_api::mvccpb::KeyValue;
use synod_api::synodpb::{ZkAcl, ZnodeMeta};

use crate::error::Error;
use crate::mvcc::kv_store::{RangeOptions, RangeResult};

mod acl;
mod write;

pub use acl::{ACL_ENTRIES_MAX, fix_acl, open_acl, permitted};
pub use write::{after_revoke, apply, due_for_removal};

/// Every key of the ZooKeeper tree starts with this.
pub const PREFIX: &[u8] = b"zk/";
/// The data keys of every znode.
pub const DATA_PREFIX: &[u8] = b"zk/n";

/// ZooKeeper's error codes (`KeeperException.Code`).
pub mod code {
    pub const OK: i32 = 0;
    pub const RUNTIME_INCONSISTENCY: i32 = -2;
    pub const MARSHALLING_ERROR: i32 = -5;
    pub const UNIMPLEMENTED: i32 = -6;
    pub const BAD_ARGUMENTS: i32 = -8;
    pub const NO_NODE: i32 = -101;
    pub const NO_AUTH: i32 = -102;
    pub const BAD_VERSION: i32 = -103;
    pub const NO_CHILDREN_FOR_EPHEMERALS: i32 = -108;
    pub const NODE_EXISTS: i32 = -110;
    pub const NOT_EMPTY: i32 = -111;
    pub const SESSION_EXPIRED: i32 = -112;
    pub const INVALID_ACL: i32 = -114;
    pub const AUTH_FAILED: i32 = -115;
    pub const NO_WATCHER: i32 = -121;
    pub const RECONFIG_DISABLED: i32 = -123;
}

/// ZooKeeper's opcodes for the writes.
pub mod op {
    pub const CREATE: i32 = 1;
    pub const DELETE: i32 = 2;
    pub const SET_DATA: i32 = 5;
    pub const SET_ACL: i32 = 7;
    pub const CHECK: i32 = 13;
    pub const CREATE2: i32 = 15;
    pub const CREATE_CONTAINER: i32 = 19;
    pub const CREATE_TTL: i32 = 21;
}

/// Permission bits.
pub mod perm {
    pub const READ: i32 = 1;
    pub const WRITE: i32 = 2;
    pub const CREATE: i32 = 4;
    pub const DELETE: i32 = 8;
    pub const ADMIN: i32 = 16;
    pub const ALL: i32 = 31;
}

/// The nodes every tree has; none of them may be deleted.
pub const BUILT_IN: [&str; 4] = ["/", "/zookeeper", "/zookeeper/quota", "/zookeeper/config"];

/// Deepest path the key layout holds (three digits of depth).
const DEPTH_MAX: usize = 999;

/// A znode's `Stat`, as ZooKeeper sends it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stat {
    pub czxid: i64,
    pub mzxid: i64,
    pub ctime: i64,
    pub mtime: i64,
    pub version: i32,
    pub cversion: i32,
    pub aversion: i32,
    pub ephemeral_owner: i64,
    pub data_length: i32,
    pub num_children: i32,
    pub pzxid: i64,
}

/// The answer to one operation of a write.
#[derive(Debug, Clone, PartialEq)]
pub struct OpResult {
    pub opcode: i32,
    pub err: i32,
    /// The created path, for creates.
    pub path: String,
    /// The node's stat after the write (create2, setData, setACL).
    pub stat: Option<Stat>,
}

/// The answer to a [`ZkWrite`]: one result per operation, and the revision it was applied at
/// (unchanged when nothing was written).
#[derive(Debug, Clone, PartialEq)]
pub struct ZkOutcome {
    pub revision: i64,
    pub results: Vec<OpResult>,
}

fn depth(path: &str) -> usize {
    if path == "/" {
        0
    } else {
        path.matches('/').count()
    }
}

fn key(kind: u8, path: &str) -> Vec<u8> {
    let (depth, path) = if path == "/" {
        (0, "/")
    } else {
        (depth(path), path)
    };
    let mut key = format!("zk/{}{depth:03}", kind as char).into_bytes();
    key.extend_from_slice(path.as_bytes());
    key
}

/// The key of the node's data.
pub fn data_key(path: &str) -> Vec<u8> {
    key(b'n', path)
}

fn meta_key(path: &str) -> Vec<u8> {
    key(b'm', path)
}

fn children_key(path: &str) -> Vec<u8> {
    key(b'c', path)
}

/// The prefix of the data keys of `path`'s children.
pub fn children_prefix(path: &str) -> Vec<u8> {
    let mut prefix = format!("zk/n{:03}", depth(path) + 1).into_bytes();
    if path != "/" {
        prefix.extend_from_slice(path.as_bytes());
    }
    prefix.push(b'/');
    prefix
}

/// The path of a data key, if it is one.
pub fn path_of(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(DATA_PREFIX)?;
    if rest.len() < 4 || !rest[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(&rest[3..]).ok()
}

/// The parent of a path (`/a/b` → `/a`, `/a` → `/`); none for `/`.
pub fn parent(path: &str) -> Option<&str> {
    if path == "/" {
        return None;
    }
    match path.rfind('/') {
        Some(0) => Some("/"),
        Some(at) => Some(&path[..at]),
        None => None,
    }
}

/// The end of the range of every key starting with `prefix`.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    synod_api::prefix_range_end(prefix)
}

/// ZooKeeper's `PathUtils.validatePath`.
pub fn valid_path(path: &str) -> bool {
    if !path.starts_with('/') {
        return false;
    }
    if path == "/" {
        return true;
    }
    if path.ends_with('/') || depth(path) > DEPTH_MAX {
        return false;
    }
    for component in path[1..].split('/') {
        if component.is_empty() || component == "." || component == ".." {
            return false;
        }
    }
    // Java checks UTF-16 units: every character above U+FFFF is a surrogate pair, refused.
    !path.chars().any(|c| {
        let c = c as u32;
        c == 0
            || (0x01..=0x1f).contains(&c)
            || (0x7f..=0x9f).contains(&c)
            || (0xd800..=0xf8ff).contains(&c)
            || (0xfff0..=0xffff).contains(&c)
            || c > 0xffff
    })
}

/// Reads the store (at one revision for the server, through the write in apply).
pub trait Reader {
    fn range(&self, key: &[u8], end: &[u8], options: RangeOptions) -> Result<RangeResult, Error>;
}

/// Writes the store (in apply: the request's revision, with the lease bookkeeping).
pub trait Writer: Reader {
    fn put(&mut self, key: &[u8], value: Vec<u8>, lease: i64) -> Result<KeyValue, Error>;
    fn delete(&mut self, key: &[u8]) -> Result<(), Error>;
}

fn get(store: &impl Reader, key: &[u8]) -> Result<Option<KeyValue>, Error> {
    Ok(store.range(key, &[], RangeOptions::default())?.kvs.pop())
}

/// A znode as stored.
#[derive(Debug, Clone)]
pub struct Node {
    pub data: KeyValue,
    pub meta: ZnodeMeta,
    /// Children ever created.
    pub creations: i64,
    /// Children now.
    pub children: i64,
    pub pzxid: i64,
}

impl Node {
    pub fn is_ephemeral(&self) -> bool {
        matches!(self.meta.flags, 1 | 3)
    }

    pub fn version(&self) -> i32 {
        (self.data.version - 1) as i32
    }

    /// The node's `Stat`.
    pub fn stat(&self) -> Stat {
        let num_children = self.children;
        let mut stat = Stat {
            czxid: self.data.create_revision,
            mzxid: self.data.mod_revision,
            ctime: self.meta.ctime,
            mtime: self.meta.mtime,
            version: self.version(),
            cversion: (2 * self.creations - num_children) as i32,
            aversion: self.meta.aversion,
            ephemeral_owner: if self.is_ephemeral() {
                self.data.lease
            } else {
                0
            },
            data_length: self.data.value.len() as i32,
            num_children: num_children as i32,
            pzxid: self.pzxid,
        };
        // ZooKeeper's built-in nodes come with zero zxids and times: so do Synod's, until they
        // change (their data, or their children).
        if self.meta.built_in {
            stat.czxid = 0;
            stat.ctime = 0;
            if self.data.version == 1 {
                stat.mzxid = 0;
                stat.mtime = 0;
            }
            if self.pzxid == self.data.create_revision {
                stat.pzxid = 0;
            }
        }
        stat
    }
}

/// The node at `path`, if it exists.
pub fn node(store: &impl Reader, path: &str) -> Result<Option<Node>, Error> {
    let Some(data) = get(store, &data_key(path))? else {
        return Ok(None);
    };
    let meta = get(store, &meta_key(path))?
        .and_then(|kv| ZnodeMeta::decode(kv.value.as_slice()).ok())
        .unwrap_or_default();
    let ((creations, children), pzxid) = match get(store, &children_key(path))? {
        Some(kv) => (decode_counts(&kv.value), kv.mod_revision),
        None => ((0, 0), data.create_revision),
    };
    Ok(Some(Node {
        data,
        meta,
        creations,
        children,
        pzxid,
    }))
}

/// A `c` key's value: children ever created, children now.
fn decode_counts(value: &[u8]) -> (i64, i64) {
    let half = |at: usize| {
        value
            .get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map_or(0, i64::from_be_bytes)
    };
    (half(0), half(8))
}

fn encode_counts(creations: i64, children: i64) -> Vec<u8> {
    let mut value = creations.to_be_bytes().to_vec();
    value.extend_from_slice(&children.to_be_bytes());
    value
}

/// The names of `path`'s children.
pub fn children(store: &impl Reader, path: &str) -> Result<Vec<String>, Error> {
    let prefix = children_prefix(path);
    let kvs = store
        .range(&prefix, &prefix_end(&prefix), RangeOptions::default())?
        .kvs;
    Ok(kvs
        .iter()
        .filter_map(|kv| kv.key.get(prefix.len()..))
        .map(|name| String::from_utf8_lossy(name).into_owned())
        .collect())
}

/// Every descendant of `path` (ZooKeeper's getAllChildrenNumber).
pub fn descendants(store: &impl Reader, path: &str) -> Result<i64, Error> {
    let mut total = 0;
    let mut depth = depth(path) + 1;
    loop {
        let mut prefix = format!("zk/n{depth:03}").into_bytes();
        if path != "/" {
            prefix.extend_from_slice(path.as_bytes());
        }
        prefix.push(b'/');
        let options = RangeOptions {
            count_only: true,
            ..RangeOptions::default()
        };
        let count = store.range(&prefix, &prefix_end(&prefix), options)?.count;
        if count == 0 {
            return Ok(total);
        }
        total += count;
        depth += 1;
    }
}

/// The ACL `path` had at `revision`, or just before it if it was deleted at `revision`.
pub fn acl_at(store: &impl Reader, path: &str, revision: i64) -> Result<Option<Vec<ZkAcl>>, Error> {
    for at in [revision, revision - 1] {
        if at < 1 {
            continue;
        }
        let options = RangeOptions {
            revision: at,
            ..RangeOptions::default()
        };
        if let Some(kv) = store.range(&meta_key(path), &[], options)?.kvs.pop() {
            return Ok(ZnodeMeta::decode(kv.value.as_slice()).ok().map(|m| m.acl));
        }
    }
    Ok(None)
}

impl Reader for crate::mvcc::kv_store::KvStore {
    fn range(&self, key: &[u8], end: &[u8], options: RangeOptions) -> Result<RangeResult, Error> {
        crate::mvcc::kv_store::KvStore::range(self, key, end, options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_put_children_under_one_prefix() {
        assert_eq!(data_key("/"), b"zk/n000/");
        assert_eq!(data_key("/a"), b"zk/n001/a");
        assert_eq!(data_key("/a/b"), b"zk/n002/a/b");
        assert_eq!(children_prefix("/"), b"zk/n001/");
        assert_eq!(children_prefix("/a"), b"zk/n002/a/");
        assert!(data_key("/a/b").starts_with(&children_prefix("/a")));
        assert!(!data_key("/a/b/c").starts_with(&children_prefix("/a")));
        assert_eq!(path_of(&data_key("/a/b")), Some("/a/b"));
        assert_eq!(path_of(&data_key("/")), Some("/"));
        assert_eq!(parent("/a/b"), Some("/a"));
        assert_eq!(parent("/a"), Some("/"));
        assert_eq!(parent("/"), None);
    }

    #[test]
    fn paths_are_validated_as_zookeeper_does() {
        for good in ["/", "/a", "/a/b", "/a/.b", "/a/..b", "/é"] {
            assert!(valid_path(good), "{good}");
        }
        for bad in [
            "",
            "a",
            "/a/",
            "//a",
            "/a//b",
            "/a/.",
            "/a/..",
            "/a\u{0}",
            "/\u{1}",
            "/\u{e000}",
            "/😀",
        ] {
            assert!(!valid_path(bad), "{bad:?}");
        }
    }
}
