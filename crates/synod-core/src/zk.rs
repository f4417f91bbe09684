//! ZooKeeper's data model on the MVCC store: where a znode lives in the keyspace, how its `Stat`
//! follows from the keys' revisions, and ZooKeeper's writes (create, delete, setData, setACL,
//! check, multi) with ZooKeeper's checks, in ZooKeeper's order, applied all at one revision.
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

use std::collections::HashMap;

use prost::Message;
use synod_api::mvccpb::KeyValue;
use synod_api::synodpb::{ZkAcl, ZkId, ZkOp, ZkWrite, ZnodeMeta};

use crate::error::Error;
use crate::mvcc::kv_store::{RangeOptions, RangeResult};

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
/// Longest TTL of a TTL node, in ms (ZooKeeper's `EphemeralType.MAX_TTL`).
const TTL_MAX: i64 = (1 << 40) - 1;

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

/// Whether `identities` may do `wanted` on a node with `acl` (super passes; an empty ACL too).
pub fn permitted(acl: &[ZkAcl], identities: &[ZkId], wanted: i32) -> bool {
    if acl.is_empty() || identities.iter().any(|id| id.scheme == "super") {
        return true;
    }
    acl.iter().any(|entry| {
        entry.perms & wanted != 0
            && match entry.scheme.as_str() {
                "world" => entry.id == "anyone",
                "ip" => identities
                    .iter()
                    .any(|id| id.scheme == "ip" && ip_matches(&entry.id, &id.id)),
                scheme => identities
                    .iter()
                    .any(|id| id.scheme == scheme && id.id == entry.id),
            }
    })
}

/// An IPv4 address with an optional prefix length: (address, bits).
fn ipv4_prefix(text: &str) -> Option<(u32, u32)> {
    let (address, bits) = match text.split_once('/') {
        Some((address, bits)) => (address, bits.parse::<u32>().ok().filter(|b| *b <= 32)?),
        None => (text, 32),
    };
    let address: core::net::Ipv4Addr = address.parse().ok()?;
    Some((u32::from(address), bits))
}

fn ip_matches(entry: &str, address: &str) -> bool {
    let (Some((network, bits)), Ok(address)) =
        (ipv4_prefix(entry), address.parse::<core::net::Ipv4Addr>())
    else {
        return false;
    };
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    network & mask == u32::from(address) & mask
}

/// Most entries an ACL may have after its fix-up. ZooKeeper has no such cap (a frame bounds the
/// list); here it bounds the work a write does in apply, on every member, and what it stores.
pub const ACL_ENTRIES_MAX: usize = 1024;

/// ZooKeeper's ACL fix-up for create and setACL: `auth` entries become the connection's
/// authenticated identities, duplicates go; an invalid list, or one longer than
/// [`ACL_ENTRIES_MAX`], is `None` (InvalidACL).
pub fn fix_acl(acl: &[ZkAcl], identities: &[ZkId]) -> Option<Vec<ZkAcl>> {
    let mut fixed: Vec<ZkAcl> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut push = |entry: ZkAcl| {
        if seen.insert((entry.perms, entry.scheme.clone(), entry.id.clone())) {
            fixed.push(entry);
        }
        fixed.len() <= ACL_ENTRIES_MAX
    };
    for entry in acl {
        let within = match entry.scheme.as_str() {
            "world" if entry.id == "anyone" => push(entry.clone()),
            "auth" => {
                let mut within = true;
                let mut any = false;
                for id in identities.iter().filter(|id| id.scheme != "ip") {
                    any = true;
                    within &= push(ZkAcl {
                        perms: entry.perms,
                        scheme: id.scheme.clone(),
                        id: id.id.clone(),
                    });
                }
                if !any {
                    return None;
                }
                within
            }
            "digest" if entry.id.split(':').count() == 2 => push(entry.clone()),
            "ip" if ipv4_prefix(&entry.id).is_some() => push(entry.clone()),
            _ => return None,
        };
        if !within {
            return None;
        }
    }
    (!fixed.is_empty()).then_some(fixed)
}

/// The ACL of the built-in nodes and of `/` (world:anyone ALL).
pub fn open_acl() -> Vec<ZkAcl> {
    vec![ZkAcl {
        perms: perm::ALL,
        scheme: "world".to_owned(),
        id: "anyone".to_owned(),
    }]
}

/// A node as a write plans it: what the checks of later operations of the same multi see.
#[derive(Debug, Clone)]
struct Planned {
    version: i32,
    aversion: i32,
    ephemeral: bool,
    acl: Vec<ZkAcl>,
    creations: i64,
    children: i64,
}

/// A change the write makes once every operation passed.
#[derive(Debug, Clone)]
enum Change {
    Create {
        path: String,
        data: Vec<u8>,
        lease: i64,
        meta: ZnodeMeta,
    },
    Delete {
        path: String,
    },
    SetData {
        path: String,
        data: Vec<u8>,
        null_data: bool,
    },
    SetAcl {
        path: String,
        acl: Vec<ZkAcl>,
    },
    /// A child was created (the counter moves) or deleted under `path`: its `c` key is
    /// rewritten either way, so that its mod revision (the pzxid) moves.
    Children {
        path: String,
        created: bool,
    },
}

/// The operations of one write checked against the store and against each other.
struct Plan<'s, S: Reader> {
    store: &'s S,
    nodes: HashMap<String, Option<Planned>>,
}

impl<S: Reader> Plan<'_, S> {
    fn node(&mut self, path: &str) -> Result<Option<Planned>, Error> {
        if let Some(planned) = self.nodes.get(path) {
            return Ok(planned.clone());
        }
        let planned = match node(self.store, path)? {
            Some(stored) => Some(Planned {
                version: stored.version(),
                aversion: stored.meta.aversion,
                ephemeral: stored.is_ephemeral(),
                acl: stored.meta.acl.clone(),
                creations: stored.creations,
                children: stored.children,
            }),
            None => None,
        };
        self.nodes.insert(path.to_owned(), planned.clone());
        Ok(planned)
    }

    fn set(&mut self, path: &str, planned: Option<Planned>) {
        self.nodes.insert(path.to_owned(), planned);
    }

    /// Checks one operation; its changes, or ZooKeeper's error code.
    fn check(&mut self, write: &ZkWrite, op: &ZkOp) -> Result<Result<Vec<Change>, i32>, Error> {
        let ids = &write.identities;
        match op.opcode {
            op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => {
                self.create(write, op)
            }
            op::DELETE => {
                let path = op.path.as_str();
                if BUILT_IN.contains(&path) || !path.contains('/') || path.contains('\0') {
                    return Ok(Err(code::BAD_ARGUMENTS));
                }
                let Some(parent_path) = parent(path) else {
                    return Ok(Err(code::BAD_ARGUMENTS));
                };
                let Some(mut parent_node) = self.node(parent_path)? else {
                    return Ok(Err(code::NO_NODE));
                };
                if !permitted(&parent_node.acl, ids, perm::DELETE) {
                    return Ok(Err(code::NO_AUTH));
                }
                let Some(node) = self.node(path)? else {
                    return Ok(Err(code::NO_NODE));
                };
                if op.version != -1 && op.version != node.version {
                    return Ok(Err(code::BAD_VERSION));
                }
                if node.children > 0 {
                    return Ok(Err(code::NOT_EMPTY));
                }
                self.set(path, None);
                parent_node.children -= 1;
                self.set(parent_path, Some(parent_node));
                Ok(Ok(vec![
                    Change::Delete {
                        path: path.to_owned(),
                    },
                    Change::Children {
                        path: parent_path.to_owned(),
                        created: false,
                    },
                ]))
            }
            op::SET_DATA | op::CHECK => {
                if !valid_path(&op.path) {
                    return Ok(Err(code::BAD_ARGUMENTS));
                }
                let Some(mut node) = self.node(&op.path)? else {
                    return Ok(Err(code::NO_NODE));
                };
                let wanted = if op.opcode == op::CHECK {
                    perm::READ
                } else {
                    perm::WRITE
                };
                if !permitted(&node.acl, ids, wanted) {
                    return Ok(Err(code::NO_AUTH));
                }
                if op.version != -1 && op.version != node.version {
                    return Ok(Err(code::BAD_VERSION));
                }
                if op.opcode == op::CHECK {
                    return Ok(Ok(Vec::new()));
                }
                node.version += 1;
                self.set(&op.path, Some(node));
                Ok(Ok(vec![Change::SetData {
                    path: op.path.clone(),
                    data: op.data.clone(),
                    null_data: op.null_data,
                }]))
            }
            op::SET_ACL => {
                if !valid_path(&op.path) {
                    return Ok(Err(code::BAD_ARGUMENTS));
                }
                let Some(acl) = fix_acl(&op.acl, ids) else {
                    return Ok(Err(code::INVALID_ACL));
                };
                let Some(mut node) = self.node(&op.path)? else {
                    return Ok(Err(code::NO_NODE));
                };
                if !permitted(&node.acl, ids, perm::ADMIN) {
                    return Ok(Err(code::NO_AUTH));
                }
                if op.version != -1 && op.version != node.aversion {
                    return Ok(Err(code::BAD_VERSION));
                }
                node.aversion += 1;
                node.acl = acl.clone();
                self.set(&op.path, Some(node));
                Ok(Ok(vec![Change::SetAcl {
                    path: op.path.clone(),
                    acl,
                }]))
            }
            _ => Ok(Err(code::UNIMPLEMENTED)),
        }
    }

    fn create(&mut self, write: &ZkWrite, op: &ZkOp) -> Result<Result<Vec<Change>, i32>, Error> {
        let ids = &write.identities;
        let flags = if op.opcode == op::CREATE_CONTAINER {
            4
        } else {
            op.flags
        };
        if !(0..=6).contains(&flags) {
            return Ok(Err(code::BAD_ARGUMENTS));
        }
        let ttl_mode = matches!(flags, 5 | 6);
        if ttl_mode && !write.extended_types {
            // TTL nodes need `zookeeper.extendedTypesEnabled` (`--zookeeper-extended-types`).
            return Ok(Err(code::UNIMPLEMENTED));
        }
        if ttl_mode && !(1..=TTL_MAX).contains(&op.ttl) {
            return Ok(Err(code::BAD_ARGUMENTS));
        }
        if !ttl_mode && op.opcode == op::CREATE_TTL {
            return Ok(Err(code::BAD_ARGUMENTS));
        }
        let ephemeral = matches!(flags, 1 | 3);
        if ephemeral && write.session == 0 {
            return Ok(Err(code::SESSION_EXPIRED));
        }
        let path = op.path.as_str();
        if !path.contains('/') || path.contains('\0') {
            return Ok(Err(code::BAD_ARGUMENTS));
        }
        let Some(acl) = fix_acl(&op.acl, ids) else {
            return Ok(Err(code::INVALID_ACL));
        };
        let parent_path = match path.rfind('/') {
            Some(0) => "/",
            Some(at) => &path[..at],
            None => return Ok(Err(code::BAD_ARGUMENTS)),
        };
        let Some(mut parent_node) = self.node(parent_path)? else {
            return Ok(Err(code::NO_NODE));
        };
        if !permitted(&parent_node.acl, ids, perm::CREATE) {
            return Ok(Err(code::NO_AUTH));
        }
        let path = if matches!(flags, 2 | 3 | 6) {
            format!("{path}{:010}", parent_node.creations as i32)
        } else {
            path.to_owned()
        };
        if !valid_path(&path) {
            return Ok(Err(code::BAD_ARGUMENTS));
        }
        if path == "/" || self.node(&path)?.is_some() {
            return Ok(Err(code::NODE_EXISTS));
        }
        if parent_node.ephemeral {
            return Ok(Err(code::NO_CHILDREN_FOR_EPHEMERALS));
        }
        let lease = if ephemeral { write.session } else { 0 };
        parent_node.creations += 1;
        parent_node.children += 1;
        self.set(parent_path, Some(parent_node));
        self.set(
            &path,
            Some(Planned {
                version: 0,
                aversion: 0,
                ephemeral,
                acl: acl.clone(),
                creations: 0,
                children: 0,
            }),
        );
        Ok(Ok(vec![
            Change::Create {
                path: path.clone(),
                data: op.data.clone(),
                lease,
                meta: ZnodeMeta {
                    ctime: write.time_ms,
                    mtime: write.time_ms,
                    aversion: 0,
                    acl,
                    flags,
                    ttl: if ttl_mode { op.ttl } else { 0 },
                    null_data: op.null_data,
                    built_in: false,
                },
            },
            Change::Children {
                path: parent_path.to_owned(),
                created: true,
            },
        ]))
    }
}

/// Applies a ZooKeeper write: every operation is checked first, in order, each seeing the
/// changes of the ones before it; only if all pass are the changes written, at one revision.
/// On a failure the results are ZooKeeper's: 0 before the failing operation, its code, -2 after.
pub fn apply(store: &mut impl Writer, write: &ZkWrite) -> Result<Vec<OpResult>, Error> {
    if write.bootstrap {
        bootstrap(store, write.time_ms)?;
        return Ok(Vec::new());
    }
    let mut plan = Plan {
        store: &*store,
        nodes: HashMap::new(),
    };
    let mut planned = Vec::with_capacity(write.ops.len());
    let mut failed = None;
    for (at, op) in write.ops.iter().enumerate() {
        match plan.check(write, op)? {
            Ok(changes) => {
                let created = match changes.first() {
                    Some(Change::Create { path, .. }) => path.clone(),
                    _ => String::new(),
                };
                planned.push((created, changes));
            }
            Err(err) => {
                failed = Some((at, err));
                break;
            }
        }
    }
    if let Some((failed_at, err)) = failed {
        return Ok(write
            .ops
            .iter()
            .enumerate()
            .map(|(at, op)| OpResult {
                opcode: op.opcode,
                err: match at.cmp(&failed_at) {
                    std::cmp::Ordering::Less => code::OK,
                    std::cmp::Ordering::Equal => err,
                    std::cmp::Ordering::Greater => code::RUNTIME_INCONSISTENCY,
                },
                path: String::new(),
                stat: None,
            })
            .collect());
    }
    // Each operation's changes, then its result: a stat shows the node as that operation left
    // it, before the later operations of the multi.
    let mut results = Vec::with_capacity(write.ops.len());
    for (op, (path, changes)) in write.ops.iter().zip(planned) {
        for change in changes {
            write_change(store, change, write.time_ms)?;
        }
        let stat_path = if path.is_empty() { &op.path } else { &path };
        let stat = match op.opcode {
            op::CHECK | op::DELETE => None,
            _ => node(&*store, stat_path)?.map(|node| node.stat()),
        };
        results.push(OpResult {
            opcode: op.opcode,
            err: code::OK,
            path,
            stat,
        });
    }
    Ok(results)
}

fn write_change(store: &mut impl Writer, change: Change, time_ms: i64) -> Result<(), Error> {
    match change {
        Change::Create {
            path,
            data,
            lease,
            meta,
        } => {
            store.put(&data_key(&path), data, lease)?;
            store.put(&meta_key(&path), meta.encode_to_vec(), lease)?;
            store.put(&children_key(&path), encode_counts(0, 0), lease)?;
        }
        Change::Delete { path } => {
            store.delete(&data_key(&path))?;
            store.delete(&meta_key(&path))?;
            store.delete(&children_key(&path))?;
        }
        Change::SetData {
            path,
            data,
            null_data,
        } => {
            let lease = get(&*store, &data_key(&path))?.map_or(0, |kv| kv.lease);
            store.put(&data_key(&path), data, lease)?;
            rewrite_meta(store, &path, |meta| {
                meta.mtime = time_ms;
                meta.null_data = null_data;
            })?;
        }
        Change::SetAcl { path, acl } => {
            rewrite_meta(store, &path, |meta| {
                meta.aversion += 1;
                meta.acl = acl;
            })?;
        }
        Change::Children { path, created } => {
            let ((creations, children), lease) = match get(&*store, &children_key(&path))? {
                Some(kv) => (decode_counts(&kv.value), kv.lease),
                None => ((0, 0), 0),
            };
            let counts = if created {
                encode_counts(creations + 1, children + 1)
            } else {
                encode_counts(creations, (children - 1).max(0))
            };
            store.put(&children_key(&path), counts, lease)?;
        }
    }
    Ok(())
}

fn rewrite_meta(
    store: &mut impl Writer,
    path: &str,
    change: impl FnOnce(&mut ZnodeMeta),
) -> Result<(), Error> {
    let Some(kv) = get(&*store, &meta_key(path))? else {
        return Ok(());
    };
    let mut meta = ZnodeMeta::decode(kv.value.as_slice()).unwrap_or_default();
    change(&mut meta);
    store.put(&meta_key(path), meta.encode_to_vec(), kv.lease)?;
    Ok(())
}

/// Creates the nodes every ZooKeeper tree has, where missing.
fn bootstrap(store: &mut impl Writer, time_ms: i64) -> Result<(), Error> {
    for path in BUILT_IN {
        if get(&*store, &data_key(path))?.is_some() {
            continue;
        }
        let acl = if path == "/zookeeper/config" {
            vec![ZkAcl {
                perms: perm::READ,
                ..open_acl().remove(0)
            }]
        } else {
            open_acl()
        };
        let meta = ZnodeMeta {
            ctime: time_ms,
            mtime: time_ms,
            // ZooKeeper sets the config node's ACL once at start-up, with version -1.
            aversion: if path == "/zookeeper/config" { -1 } else { 0 },
            acl,
            built_in: true,
            ..ZnodeMeta::default()
        };
        store.put(&data_key(path), Vec::new(), 0)?;
        store.put(&meta_key(path), meta.encode_to_vec(), 0)?;
        // The built-in nodes are attached to their parents without counting a creation, as
        // in ZooKeeper (so `/` shows cversion -1 and `/zookeeper` -2).
        let children = match path {
            "/" => 1,
            "/zookeeper" => 2,
            _ => 0,
        };
        store.put(&children_key(path), encode_counts(0, children), 0)?;
    }
    Ok(())
}

/// Nodes due for removal at `now_ms` (ZooKeeper's `ContainerManager`): containers that once had
/// children and have none now, and TTL nodes without children not modified for their TTL.
pub fn due_for_removal(store: &impl Reader, now_ms: i64) -> Result<Vec<String>, Error> {
    let prefix = b"zk/m";
    let metas = store
        .range(prefix, &prefix_end(prefix), RangeOptions::default())?
        .kvs;
    let mut due = Vec::new();
    for kv in metas {
        let Ok(meta) = ZnodeMeta::decode(kv.value.as_slice()) else {
            continue;
        };
        let ttl_node = matches!(meta.flags, 5 | 6);
        if meta.flags != 4 && !ttl_node {
            continue;
        }
        let Some(path) = kv
            .key
            .get(prefix.len() + 3..)
            .and_then(|p| std::str::from_utf8(p).ok())
        else {
            continue;
        };
        let Some(found) = node(store, path)? else {
            continue;
        };
        if found.children > 0 {
            continue;
        }
        let expired = if ttl_node {
            now_ms.saturating_sub(meta.mtime) > meta.ttl
        } else {
            found.creations > 0
        };
        if expired {
            due.push(path.to_owned());
        }
    }
    Ok(due)
}

/// After a lease was revoked and its keys deleted: the parents of the ephemerals that went with
/// it record the deletions (one child fewer each, and their pzxid moves), as a ZooKeeper
/// session's close does.
pub fn after_revoke(store: &mut impl Writer, deleted: &[Vec<u8>]) -> Result<(), Error> {
    let mut gone: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
    for path in deleted.iter().filter_map(|key| path_of(key)) {
        if let Some(parent) = parent(path) {
            *gone.entry(parent.to_owned()).or_default() += 1;
        }
    }
    for (path, count) in gone {
        if let Some(kv) = get(&*store, &children_key(&path))? {
            let (creations, children) = decode_counts(&kv.value);
            let counts = encode_counts(creations, (children - count).max(0));
            store.put(&children_key(&path), counts, kv.lease)?;
        }
    }
    Ok(())
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

    #[test]
    fn long_acls_are_bounded_and_deduplicated() {
        let ids: Vec<ZkId> = (0..16)
            .map(|i| ZkId {
                scheme: "digest".into(),
                id: format!("user{i}:hash"),
            })
            .collect();
        let auth = |perms| ZkAcl {
            perms,
            scheme: "auth".into(),
            id: String::new(),
        };
        // 65,536 entries that each become 16: refused (at the cap, before the rest is read).
        let huge: Vec<ZkAcl> = (0..65_536).map(auth).collect();
        assert_eq!(fix_acl(&huge, &ids), None);
        // The same entry many times is one entry per identity.
        let repeated: Vec<ZkAcl> = (0..10_000).map(|_| auth(perm::ALL)).collect();
        assert_eq!(fix_acl(&repeated, &ids).map(|acl| acl.len()), Some(16));
    }

    #[test]
    fn acls_are_fixed_and_checked() {
        let ids = vec![
            ZkId {
                scheme: "ip".into(),
                id: "127.0.0.1".into(),
            },
            ZkId {
                scheme: "digest".into(),
                id: "bob:hash".into(),
            },
        ];
        let auth = ZkAcl {
            perms: perm::ALL,
            scheme: "auth".into(),
            id: String::new(),
        };
        let fixed = fix_acl(std::slice::from_ref(&auth), &ids).expect("fixed");
        assert_eq!(fixed.len(), 1);
        assert_eq!(
            (fixed[0].scheme.as_str(), fixed[0].id.as_str()),
            ("digest", "bob:hash")
        );
        assert_eq!(fix_acl(&[auth], &ids[..1]), None);
        assert_eq!(fix_acl(&[], &ids), None);
        let ip = ZkAcl {
            perms: perm::READ,
            scheme: "ip".into(),
            id: "127.0.0.0/8".into(),
        };
        assert!(permitted(std::slice::from_ref(&ip), &ids, perm::READ));
        assert!(!permitted(std::slice::from_ref(&ip), &ids, perm::WRITE));
        assert!(!permitted(&[ip], &ids[1..], perm::READ));
    }
}
