//! One ZooKeeper request: its record decoded, the operation done (a read of this member's
//! store at one revision, or a write through Raft), and the reply's body encoded.

use synod_api::synodpb::internal_request::Request;
use synod_api::synodpb::{ZkAcl, ZkId, ZkOp, ZkWrite};
use synod_core::apply::Response;
use synod_core::mvcc::kv_store::{KvStore, RangeOptions, RangeResult};
use synod_core::zk::{self, code, op, perm};

use super::jute::{Decoder, Encoder, Malformed};
use super::session::Session;
use super::watches::Watches;
use super::{Failure, Front};

/// ZooKeeper's opcodes for everything but the writes (`zk::op`).
pub mod opcode {
    pub const EXISTS: i32 = 3;
    pub const GET_DATA: i32 = 4;
    pub const GET_ACL: i32 = 6;
    pub const GET_CHILDREN: i32 = 8;
    pub const SYNC: i32 = 9;
    pub const RECONFIG: i32 = 16;
    pub const PING: i32 = 11;
    pub const GET_CHILDREN2: i32 = 12;
    pub const MULTI: i32 = 14;
    pub const CHECK_WATCHES: i32 = 17;
    pub const REMOVE_WATCHES: i32 = 18;
    pub const MULTI_READ: i32 = 22;
    pub const AUTH: i32 = 100;
    pub const SET_WATCHES: i32 = 101;
    pub const GET_EPHEMERALS: i32 = 103;
    pub const GET_ALL_CHILDREN_NUMBER: i32 = 104;
    pub const SET_WATCHES2: i32 = 105;
    pub const ADD_WATCH: i32 = 106;
    pub const WHO_AM_I: i32 = 107;
    pub const CLOSE_SESSION: i32 = -11;
}

/// The answer to one request: ZooKeeper's error code and, when it is 0, the body.
pub struct Reply {
    pub err: i32,
    pub body: Option<Encoder>,
    /// The revision the answer shows: watch events up to it go out first.
    pub revision: i64,
    /// The connection closes after this answer (an unknown opcode, a lone `check`), as
    /// ZooKeeper closes it.
    pub close: bool,
}

impl Reply {
    fn error(err: i32, revision: i64) -> Reply {
        Reply {
            err,
            body: None,
            revision,
            close: false,
        }
    }

    fn ok(body: Encoder, revision: i64) -> Reply {
        Reply {
            err: code::OK,
            body: Some(body),
            revision,
            close: false,
        }
    }

    fn closing(err: i32, revision: i64) -> Reply {
        Reply {
            close: true,
            ..Reply::error(err, revision)
        }
    }
}

/// What a request runs with.
pub struct Context<'a> {
    pub front: &'a Front,
    pub session: &'a Session,
    pub identities: &'a [ZkId],
    pub watches: &'a mut Watches,
}

/// The member's store read at one revision.
pub struct At<'a> {
    pub store: &'a KvStore,
    pub revision: i64,
}

impl zk::Reader for At<'_> {
    fn range(
        &self,
        key: &[u8],
        end: &[u8],
        mut options: RangeOptions,
    ) -> Result<RangeResult, synod_core::Error> {
        options.revision = self.revision;
        self.store.range(key, end, options)
    }
}

impl Context<'_> {
    fn store(&self) -> &KvStore {
        &self.front.member().machine.store
    }

    /// This member's store at its latest revision.
    fn now(&self) -> At<'_> {
        At {
            store: self.store(),
            revision: self.store().current_revision(),
        }
    }

    /// Proposes a write and waits until this member applied it.
    async fn write(&self, ops: Vec<ZkOp>) -> Result<zk::ZkOutcome, Failure> {
        let write = ZkWrite {
            session: self.session.id,
            time_ms: now_ms(),
            identities: self.identities.to_vec(),
            ops,
            bootstrap: false,
            extended_types: self.front.settings().extended_types,
        };
        match self.front.member().propose(Request::ZkWrite(write)).await? {
            Response::Zk(outcome) => Ok(outcome),
            other => Err(crate::member::unexpected(&other).into()),
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A write operation's request record.
fn decode_write(opcode: i32, d: &mut Decoder<'_>) -> Result<ZkOp, Malformed> {
    let mut write = ZkOp {
        opcode,
        version: -1,
        ..ZkOp::default()
    };
    write.path = d.string()?;
    match opcode {
        op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => {
            let data = d.buffer()?;
            write.null_data = data.is_none();
            write.data = data.unwrap_or_default().to_vec();
            write.acl = d.acl()?;
            write.flags = d.int()?;
            if opcode == op::CREATE_TTL {
                write.ttl = d.long()?;
            }
        }
        op::DELETE | op::CHECK => write.version = d.int()?,
        op::SET_DATA => {
            let data = d.buffer()?;
            write.null_data = data.is_none();
            write.data = data.unwrap_or_default().to_vec();
            write.version = d.int()?;
        }
        op::SET_ACL => {
            write.acl = d.acl()?;
            write.version = d.int()?;
        }
        _ => return Err(Malformed("not a write")),
    }
    Ok(write)
}

/// The body of a write's result (the caller wrote the header).
fn encode_write_result(result: &zk::OpResult, e: &mut Encoder) {
    let stat = result.stat.unwrap_or_default();
    match result.opcode {
        op::CREATE => {
            e.string(&result.path);
        }
        op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => {
            e.string(&result.path).stat(&stat);
        }
        op::SET_DATA | op::SET_ACL => {
            e.stat(&stat);
        }
        _ => {}
    }
}

/// Runs one request (not ping, auth, setWatches or closeSession: the connection's own).
pub async fn execute(ctx: &mut Context<'_>, opcode: i32, body: &[u8]) -> Result<Reply, Failure> {
    let mut d = Decoder::new(body);
    match run(ctx, opcode, &mut d).await {
        Ok(reply) => reply,
        Err(Malformed(_)) => Ok(Reply::error(
            code::MARSHALLING_ERROR,
            ctx.store().current_revision(),
        )),
    }
}

async fn run(
    ctx: &mut Context<'_>,
    opcode: i32,
    d: &mut Decoder<'_>,
) -> Result<Result<Reply, Failure>, Malformed> {
    Ok(match opcode {
        op::CREATE
        | op::CREATE2
        | op::CREATE_CONTAINER
        | op::CREATE_TTL
        | op::DELETE
        | op::SET_DATA
        | op::SET_ACL => {
            let write = decode_write(opcode, d)?;
            single_write(ctx, write).await
        }
        opcode::MULTI => {
            let ops = decode_multi(d, false)?;
            match ops {
                Err(err) => Ok(Reply::error(err, ctx.store().current_revision())),
                Ok(ops) => multi(ctx, ops).await,
            }
        }
        opcode::MULTI_READ => {
            let ops = decode_multi(d, true)?;
            match ops {
                Err(err) => Ok(Reply::error(err, ctx.store().current_revision())),
                Ok(ops) => multi_read(ctx, ops),
            }
        }
        opcode::EXISTS | opcode::GET_DATA | opcode::GET_CHILDREN | opcode::GET_CHILDREN2 => {
            let path = d.string()?;
            let watch = d.bool()?;
            read(ctx, opcode, &path, watch)
        }
        opcode::GET_ACL => {
            let path = d.string()?;
            get_acl(ctx, &path)
        }
        opcode::SYNC => {
            let path = d.string()?;
            sync(ctx, path).await
        }
        opcode::GET_ALL_CHILDREN_NUMBER => {
            let path = d.string()?;
            all_children_number(ctx, &path)
        }
        opcode::GET_EPHEMERALS => {
            let prefix = d.string()?;
            Ok(ephemerals(ctx, &prefix))
        }
        opcode::ADD_WATCH => {
            let path = d.string()?;
            let mode = d.int()?;
            Ok(add_watch(ctx, path, mode))
        }
        opcode::CHECK_WATCHES | opcode::REMOVE_WATCHES => {
            let path = d.string()?;
            let kind = d.int()?;
            Ok(check_watches(
                ctx,
                &path,
                kind,
                opcode == opcode::REMOVE_WATCHES,
            ))
        }
        opcode::WHO_AM_I => Ok(who_am_i(ctx)),
        // Membership is Synod's (etcd's member API), never ZooKeeper's dynamic reconfiguration,
        // which ZooKeeper itself ships disabled.
        opcode::RECONFIG => Ok(Reply::error(
            code::RECONFIG_DISABLED,
            ctx.store().current_revision(),
        )),
        // `check` outside multi, SASL and anything unknown: ZooKeeper answers Unimplemented and
        // closes the connection.
        _ => Ok(Reply::closing(
            code::UNIMPLEMENTED,
            ctx.store().current_revision(),
        )),
    })
}

async fn single_write(ctx: &mut Context<'_>, write: ZkOp) -> Result<Reply, Failure> {
    let outcome = ctx.write(vec![write]).await?;
    let Some(result) = outcome.results.first() else {
        return Ok(Reply::error(code::MARSHALLING_ERROR, outcome.revision));
    };
    if result.err != code::OK {
        return Ok(Reply::error(result.err, outcome.revision));
    }
    let mut e = Encoder::new();
    encode_write_result(result, &mut e);
    Ok(Reply::ok(e, outcome.revision))
}

/// A multi's operations; Err(code) when the request is well formed but not allowed.
fn decode_multi(
    d: &mut Decoder<'_>,
    reads: bool,
) -> Result<Result<Vec<(i32, MultiOp)>, i32>, Malformed> {
    let mut ops = Vec::new();
    let mut refused = false;
    loop {
        let kind = d.int()?;
        let done = d.bool()?;
        let _err = d.int()?;
        if done {
            break;
        }
        let op = match (reads, kind) {
            (false, op::CREATE | op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL)
            | (false, op::DELETE | op::SET_DATA | op::CHECK) => {
                let write = decode_write(kind, d)?;
                if matches!(write.opcode, op::CREATE | op::CREATE2 | op::CREATE_TTL)
                    && !(0..=6).contains(&write.flags)
                {
                    refused = true;
                }
                MultiOp::Write(write)
            }
            (true, opcode::GET_CHILDREN | opcode::GET_DATA) => {
                let path = d.string()?;
                let _watch = d.bool()?;
                MultiOp::Read(path)
            }
            _ => return Ok(Err(code::MARSHALLING_ERROR)),
        };
        ops.push((kind, op));
    }
    if refused {
        return Ok(Err(code::MARSHALLING_ERROR));
    }
    Ok(Ok(ops))
}

/// One operation of a multi or multiRead.
enum MultiOp {
    Write(ZkOp),
    Read(String),
}

fn multi_header(e: &mut Encoder, kind: i32, done: bool, err: i32) {
    e.int(kind).bool(done).int(err);
}

fn multi_error(e: &mut Encoder, err: i32) {
    multi_header(e, -1, false, err);
    e.int(err);
}

async fn multi(ctx: &mut Context<'_>, ops: Vec<(i32, MultiOp)>) -> Result<Reply, Failure> {
    let writes: Vec<ZkOp> = ops
        .into_iter()
        .filter_map(|(_, op)| match op {
            MultiOp::Write(write) => Some(write),
            MultiOp::Read(_) => None,
        })
        .collect();
    let outcome = if writes.is_empty() {
        zk::ZkOutcome {
            revision: ctx.store().current_revision(),
            results: Vec::new(),
        }
    } else {
        ctx.write(writes).await?
    };
    let failed = outcome.results.iter().any(|r| r.err != code::OK);
    let mut e = Encoder::new();
    for result in &outcome.results {
        if failed {
            multi_error(&mut e, result.err);
            continue;
        }
        let kind = match result.opcode {
            op::CREATE2 | op::CREATE_CONTAINER | op::CREATE_TTL => op::CREATE2,
            other => other,
        };
        multi_header(&mut e, kind, false, code::OK);
        encode_write_result(result, &mut e);
    }
    multi_header(&mut e, -1, true, -1);
    Ok(Reply::ok(e, outcome.revision))
}

fn multi_read(ctx: &mut Context<'_>, ops: Vec<(i32, MultiOp)>) -> Result<Reply, Failure> {
    let at = ctx.now();
    let mut e = Encoder::new();
    for (kind, op) in ops {
        let MultiOp::Read(path) = op else { continue };
        match readable(ctx, &at, &path)? {
            Err(err) => multi_error(&mut e, err),
            Ok(node) => {
                multi_header(&mut e, kind, false, code::OK);
                if kind == opcode::GET_DATA {
                    e.data(&node).stat(&node.stat());
                } else {
                    e.strings(&zk::children(&at, &path)?);
                }
            }
        }
    }
    multi_header(&mut e, -1, true, -1);
    Ok(Reply::ok(e, at.revision))
}

/// The node at `path` if it exists and the connection may read it.
fn readable(ctx: &Context<'_>, at: &At<'_>, path: &str) -> Result<Result<zk::Node, i32>, Failure> {
    match zk::node(at, path)? {
        None => Ok(Err(code::NO_NODE)),
        Some(node) if !zk::permitted(&node.meta.acl, ctx.identities, perm::READ) => {
            Ok(Err(code::NO_AUTH))
        }
        Some(node) => Ok(Ok(node)),
    }
}

fn read(ctx: &mut Context<'_>, opcode: i32, path: &str, watch: bool) -> Result<Reply, Failure> {
    let at = ctx.now();
    let revision = at.revision;
    if opcode == opcode::EXISTS {
        if path.contains('\0') {
            return Ok(Reply::error(code::BAD_ARGUMENTS, revision));
        }
        let found = zk::node(&at, path)?;
        let reply = match &found {
            Some(node) if !zk::permitted(&node.meta.acl, ctx.identities, perm::READ) => {
                return Ok(Reply::error(code::NO_AUTH, revision));
            }
            Some(node) => {
                let mut e = Encoder::new();
                e.stat(&node.stat());
                Reply::ok(e, revision)
            }
            None => Reply::error(code::NO_NODE, revision),
        };
        // An exists watch is set whether or not the node exists: it fires on its creation.
        if watch {
            ctx.watches.data.insert(path.to_owned(), revision);
            ctx.watches.follow_from(revision);
        }
        return Ok(reply);
    }
    let node = match readable(ctx, &at, path)? {
        Ok(node) => node,
        Err(err) => return Ok(Reply::error(err, revision)),
    };
    let mut e = Encoder::new();
    if opcode == opcode::GET_DATA {
        e.data(&node).stat(&node.stat());
        if watch {
            ctx.watches.data.insert(path.to_owned(), revision);
        }
    } else {
        let children = zk::children(&at, path)?;
        e.strings(&children);
        if opcode == opcode::GET_CHILDREN2 {
            e.stat(&node.stat());
        }
        if watch {
            ctx.watches.child.insert(path.to_owned(), revision);
        }
    }
    if watch {
        ctx.watches.follow_from(revision);
    }
    Ok(Reply::ok(e, revision))
}

fn get_acl(ctx: &mut Context<'_>, path: &str) -> Result<Reply, Failure> {
    let at = ctx.now();
    let Some(node) = zk::node(&at, path)? else {
        return Ok(Reply::error(code::NO_NODE, at.revision));
    };
    let acl = &node.meta.acl;
    if !zk::permitted(acl, ctx.identities, perm::READ | perm::ADMIN) {
        return Ok(Reply::error(code::NO_AUTH, at.revision));
    }
    let admin = zk::permitted(acl, ctx.identities, perm::ADMIN);
    // Without ADMIN, digests are shown without their hash.
    let shown: Vec<ZkAcl> = acl
        .iter()
        .map(|entry| match entry.id.split_once(':') {
            Some((user, _)) if entry.scheme == "digest" && !admin => ZkAcl {
                id: format!("{user}:x"),
                ..entry.clone()
            },
            _ => entry.clone(),
        })
        .collect();
    let mut e = Encoder::new();
    e.acl(&shown).stat(&node.stat());
    Ok(Reply::ok(e, at.revision))
}

async fn sync(ctx: &mut Context<'_>, path: String) -> Result<Reply, Failure> {
    ctx.front.member().read_barrier().await?;
    let mut e = Encoder::new();
    e.string(&path);
    Ok(Reply::ok(e, ctx.store().current_revision()))
}

fn all_children_number(ctx: &mut Context<'_>, path: &str) -> Result<Reply, Failure> {
    let at = ctx.now();
    if let Err(err) = readable(ctx, &at, path)? {
        return Ok(Reply::error(err, at.revision));
    }
    let mut e = Encoder::new();
    e.int(zk::descendants(&at, path)? as i32);
    Ok(Reply::ok(e, at.revision))
}

fn ephemerals(ctx: &mut Context<'_>, prefix: &str) -> Reply {
    let member = ctx.front.member();
    let keys = member
        .machine
        .lessor
        .info(ctx.session.id)
        .map(|info| info.keys)
        .unwrap_or_default();
    let all = prefix.trim().is_empty() || prefix == "/";
    let mut paths: Vec<String> = keys
        .iter()
        .filter_map(|key| zk::path_of(key))
        .filter(|path| all || path.starts_with(prefix))
        .map(str::to_owned)
        .collect();
    paths.sort();
    let mut e = Encoder::new();
    e.strings(&paths);
    Reply::ok(e, member.machine.store.current_revision())
}

fn add_watch(ctx: &mut Context<'_>, path: String, mode: i32) -> Reply {
    let revision = ctx.store().current_revision();
    match mode {
        0 => ctx.watches.persistent.insert(path, revision),
        1 => ctx.watches.recursive.insert(path, revision),
        _ => return Reply::error(code::BAD_ARGUMENTS, revision),
    };
    ctx.watches.follow_from(revision);
    let mut e = Encoder::new();
    e.int(code::OK);
    Reply::ok(e, revision)
}

/// checkWatches and removeWatches: kind 1 children, 2 data, 3 any (persistent ones too).
fn check_watches(ctx: &mut Context<'_>, path: &str, kind: i32, remove: bool) -> Reply {
    let revision = ctx.store().current_revision();
    let w = &mut *ctx.watches;
    let mut found = false;
    let tables: Vec<&mut std::collections::HashMap<String, i64>> = match kind {
        1 => vec![&mut w.child],
        2 => vec![&mut w.data],
        3 => vec![
            &mut w.child,
            &mut w.data,
            &mut w.persistent,
            &mut w.recursive,
        ],
        _ => return Reply::error(code::BAD_ARGUMENTS, revision),
    };
    for table in tables {
        found |= if remove {
            table.remove(path).is_some()
        } else {
            table.contains_key(path)
        };
    }
    if found {
        Reply::ok(Encoder::new(), revision)
    } else {
        Reply::error(code::NO_WATCHER, revision)
    }
}

fn who_am_i(ctx: &mut Context<'_>) -> Reply {
    let mut e = Encoder::new();
    e.int(ctx.identities.len() as i32);
    for id in ctx.identities {
        let user = match id.scheme.as_str() {
            "digest" => id.id.split(':').next().unwrap_or(""),
            _ => id.id.as_str(),
        };
        e.string(&id.scheme).string(user);
    }
    Reply::ok(e, ctx.store().current_revision())
}
