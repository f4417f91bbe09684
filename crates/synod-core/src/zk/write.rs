//! ZooKeeper's writes, applied in the state machine: every operation of a write checked first,
//! in ZooKeeper's order, each seeing the ones before it; then written at one revision, or
//! nothing. Also the built-in nodes, the leader's removal of due containers and TTL nodes, and
//! what a lease's revoke means for the parents of its ephemerals.

use std::collections::HashMap;

use prost::Message;
use synod_api::synodpb::{ZkAcl, ZkOp, ZkWrite, ZnodeMeta};

use super::*;

/// Longest TTL of a TTL node, in ms (ZooKeeper's `EphemeralType.MAX_TTL`).
const TTL_MAX: i64 = (1 << 40) - 1;

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
        // A path without a slash was refused above; `/` has itself for a parent here, and is
        // found to exist.
        let parent_path = parent(path).unwrap_or("/");
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
        // A plain create answers with its path alone (ZooKeeper's CreateResponse), so only the
        // other writes read the node back.
        let stat = match op.opcode {
            op::CHECK | op::DELETE | op::CREATE => None,
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
