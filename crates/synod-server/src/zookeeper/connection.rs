//! One ZooKeeper connection: the four-letter word or the handshake, then requests one at a time
//! in the order they came, each reply preceded by the watch events up to the revision it shows.
//! Notifications of changes made by others go out as they happen.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use sha1::Digest;
use synod_api::synodpb::ZkId;
use synod_core::zk::{self, code};
use tokio::io::{AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::command::{self, Context, opcode};
use super::frame::{self, FrameError};
use super::jute::{Decoder, Encoder, Malformed};
use super::session::{PASSWORD_BYTES, Session, renew_interval};
use super::watches::Watches;
use super::{ConnectionStats, Failure, Front, four_letter};

/// xids with a meaning of their own.
const XID_NOTIFICATION: i32 = -1;
const XID_PING: i32 = -2;
const XID_AUTH: i32 = -4;
const XID_SET_WATCHES: i32 = -8;
/// Identities one connection may hold (its address, then one per accepted `auth`).
const IDENTITIES_MAX: usize = 16;
/// Longest user name a digest `auth` may carry.
const USER_BYTES_MAX: usize = 256;
/// Requests read ahead of the one being served.
const FRAMES_QUEUED_MAX: usize = 4;
/// The state of every notification a server sends.
const SYNC_CONNECTED: i32 = 3;

/// Serves one connection until it closes.
pub async fn run(front: Arc<Front>, stream: TcpStream, remote: SocketAddr) {
    let Some((id, stats)) = front.register(remote) else {
        // As ZooKeeper does past maxClientCnxns: closed at once, with a warning.
        tracing::warn!(%remote, max = front.settings().max_client_connections, "too many ZooKeeper connections from one address; closing");
        return;
    };
    let (reader, writer) = stream.into_split();
    let mut connection = Connection {
        front: front.clone(),
        reader: Some(BufReader::new(reader)),
        writer: BufWriter::new(writer),
        stats,
        identities: vec![ZkId {
            scheme: "ip".to_owned(),
            id: remote.ip().to_canonical().to_string(),
        }],
    };
    match connection.serve().await {
        Ok(()) | Err(Ended::Frame(FrameError::Closed)) => {}
        Err(ended) => tracing::debug!(%remote, reason = %ended, "ZooKeeper connection closed"),
    }
    front.unregister(id);
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum Ended {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Failure(#[from] Failure),
    #[error(transparent)]
    Malformed(#[from] Malformed),
    #[error(transparent)]
    FellBehind(#[from] super::watches::FellBehind),
    #[error("{0}")]
    Closed(&'static str),
}

struct Connection {
    front: Arc<Front>,
    /// The socket's reading half until the handshake is done; then a task of its own reads.
    reader: Option<BufReader<OwnedReadHalf>>,
    writer: BufWriter<OwnedWriteHalf>,
    stats: Arc<ConnectionStats>,
    identities: Vec<ZkId>,
}

/// The frames read from a connection, in order, each or how reading ended.
type Frames = tokio::sync::mpsc::Receiver<Result<Vec<u8>, FrameError>>;

/// The task reading a connection's frames, stopped when the connection ends (a client that
/// keeps its socket open does not keep the task).
struct Reading(tokio::task::JoinHandle<()>);

impl Drop for Reading {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The handshake's request.
struct ConnectRequest {
    last_zxid_seen: i64,
    timeout: i32,
    session_id: i64,
    password: Vec<u8>,
    /// Whether the client sent the trailing read-only byte (then the answer carries one too).
    has_read_only: bool,
}

impl Connection {
    async fn serve(&mut self) -> Result<(), Ended> {
        let Some(reader) = self.reader.as_mut() else {
            return Err(Ended::Closed("no reader"));
        };
        let head = frame::read_head(reader).await?;
        if let Some(word) = four_letter::word(head) {
            let answer = four_letter::answer(&self.front, word);
            self.writer.write_all(answer.as_bytes()).await?;
            self.writer.flush().await?;
            return Ok(());
        }
        let max = self.front.settings().max_buffer;
        let body = frame::read_body(reader, head, max).await?;
        let request = parse_connect(&body)?;
        let Some(session) = self.connect(&request).await? else {
            return Ok(());
        };
        let front = self.front.clone();
        let (held, mut taken) = front.sessions.hold(session.id);
        self.stats.session.store(session.id, Ordering::Relaxed);
        self.stats
            .timeout_ms
            .store(i64::from(session.timeout_ms), Ordering::Relaxed);
        let result = self.requests(&session, &mut taken).await;
        front.sessions.release(session.id, held);
        result
    }

    /// Answers the handshake; the session, or `None` after telling the client it expired.
    async fn connect(&mut self, request: &ConnectRequest) -> Result<Option<Session>, Ended> {
        let member = self.front.member().clone();
        // The client saw a later zxid on another member: wait for this one to catch up, or send
        // it elsewhere (ZooKeeper closes at once).
        if request.last_zxid_seen > member.machine.store.current_revision() {
            let wanted = request.last_zxid_seen;
            member
                .wait_for(Duration::from_secs(2), |p| p.revision >= wanted)
                .await;
            if wanted > member.machine.store.current_revision() {
                return Err(Ended::Closed(
                    "the client has seen a later zxid than this member",
                ));
            }
        }
        self.front.ensure_tree().await?;
        let timeout_ms = self.front.sessions.negotiate(request.timeout);
        let session = if request.session_id == 0 {
            Some(self.front.sessions.create(timeout_ms).await?)
        } else {
            self.front
                .sessions
                .resume(request.session_id, &request.password, timeout_ms)
                .await?
        };
        let mut e = Encoder::new();
        match &session {
            Some(session) => {
                e.int(0)
                    .int(session.timeout_ms as i32)
                    .long(session.id)
                    .buffer(&session.password);
            }
            // Expired, or not this password: timeout 0, id 0, then close.
            None => {
                e.int(0).int(0).long(0).buffer(&[0u8; PASSWORD_BYTES]);
            }
        }
        if request.has_read_only {
            e.bool(false);
        }
        self.send(e.frame()).await?;
        self.writer.flush().await?;
        Ok(session)
    }

    async fn requests(
        &mut self,
        session: &Session,
        taken: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Ended> {
        let member = self.front.member().clone();
        let max = self.front.settings().max_buffer;
        let idle_max = Duration::from_millis(u64::from(session.timeout_ms));
        let renew_every = renew_interval(session.timeout_ms);
        let mut watches = Watches::new(member.clone());
        let (mut frames, _reading) = self.read_frames(max)?;
        let mut last_heard = Instant::now();
        let mut renewed = Instant::now();
        loop {
            let request = tokio::select! {
                request = frames.recv() => match request {
                    Some(request) => request?,
                    None => return Err(Ended::Frame(FrameError::Closed)),
                },
                notice = watches.next() => {
                    if let Some(notice) = notice {
                        let fired = watches.fire(notice, &self.identities)?;
                        self.notify(&fired).await?;
                        self.writer.flush().await?;
                    }
                    continue;
                }
                _ = taken.changed() => return Err(Ended::Closed("the session moved to another connection")),
                _ = tokio::time::sleep_until((last_heard + idle_max).into()) => {
                    return Err(Ended::Closed("nothing heard for the session timeout"));
                }
            };
            let started = Instant::now();
            last_heard = started;
            self.stats.received.fetch_add(1, Ordering::Relaxed);
            self.front.received.fetch_add(1, Ordering::Relaxed);
            if renewed.elapsed() >= renew_every {
                renewed = Instant::now();
                if !self.front.sessions.touch(session.id).await? {
                    return Err(Ended::Closed("the session expired"));
                }
            }
            let mut d = Decoder::new(&request);
            let xid = d.int()?;
            let op = d.int()?;
            let body = &request[8..];
            match op {
                opcode::PING => {
                    let zxid = watches.shown_through(member.machine.store.current_revision());
                    self.reply(XID_PING, zxid, code::OK, None).await?;
                }
                opcode::AUTH => {
                    let accepted = self.authenticate(body)?;
                    let err = if accepted {
                        code::OK
                    } else {
                        code::AUTH_FAILED
                    };
                    self.reply(XID_AUTH, 0, err, None).await?;
                    if !accepted {
                        self.writer.flush().await?;
                        return Err(Ended::Closed("authentication failed"));
                    }
                }
                opcode::SET_WATCHES | opcode::SET_WATCHES2 => {
                    let fired = self.set_watches(&mut watches, body, op)?;
                    self.notify(&fired).await?;
                    let zxid = watches.shown_through(member.machine.store.current_revision());
                    self.reply(XID_SET_WATCHES, zxid, code::OK, None).await?;
                }
                opcode::CLOSE_SESSION => {
                    self.front.sessions.close(session.id).await?;
                    let current = member.machine.store.current_revision();
                    let fired = watches.catch_up(current, &self.identities).await?;
                    self.notify(&fired).await?;
                    self.reply(xid, current, code::OK, None).await?;
                    self.writer.flush().await?;
                    return Ok(());
                }
                _ => {
                    let mut context = Context {
                        front: &self.front,
                        session,
                        identities: &self.identities,
                        watches: &mut watches,
                    };
                    let reply = command::execute(&mut context, op, body).await?;
                    let fired = watches.catch_up(reply.revision, &self.identities).await?;
                    self.notify(&fired).await?;
                    // The zxid a client keeps and sends back with setWatches: never past the
                    // events it has been sent.
                    let zxid = watches.shown_through(member.machine.store.current_revision());
                    self.reply(xid, zxid, reply.err, reply.body).await?;
                    self.stats
                        .watches
                        .store(watches.count() as u64, Ordering::Relaxed);
                    if reply.close {
                        self.writer.flush().await?;
                        return Err(Ended::Closed("unknown operation"));
                    }
                }
            }
            // Recorded before the answer leaves: a `cons` sent once it arrived shows it.
            let latency = started.elapsed().as_millis() as u64;
            self.front.record_latency(latency);
            let zxid = member.machine.store.current_revision();
            self.stats.record(op, xid, zxid, latency);
            self.writer.flush().await?;
        }
    }

    /// Reads frames on a task of its own, so that waiting for the next request can give way to
    /// a watch event without losing a frame half read. A few frames (each at most
    /// jute.maxbuffer) may wait; then the socket is not read, and TCP pushes back on the client.
    fn read_frames(&mut self, max: usize) -> Result<(Frames, Reading), Ended> {
        let mut reader = self
            .reader
            .take()
            .ok_or(Ended::Closed("the frames are already being read"))?;
        let (sender, receiver) = tokio::sync::mpsc::channel(FRAMES_QUEUED_MAX);
        let task = tokio::spawn(async move {
            loop {
                let frame = frame::read(&mut reader, max).await;
                let failed = frame.is_err();
                if sender.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok((receiver, Reading(task)))
    }

    /// An `auth` packet: digest adds `digest:user:hash` (and `super` for the configured super
    /// digest); any other scheme fails.
    fn authenticate(&mut self, body: &[u8]) -> Result<bool, Malformed> {
        let mut d = Decoder::new(body);
        let _kind = d.int()?;
        let scheme = d.string()?;
        let auth = d.buffer()?.unwrap_or_default();
        if scheme != "digest" {
            return Ok(false);
        }
        let text = String::from_utf8_lossy(auth);
        let user = text.split(':').next().unwrap_or("");
        // Every write carries the identities through the log, and every check reads them: a
        // connection's are bounded (ZooKeeper bounds them only by its frames).
        if user.len() > USER_BYTES_MAX || self.identities.len() >= IDENTITIES_MAX {
            return Ok(false);
        }
        let hash = base64::engine::general_purpose::STANDARD.encode(sha1::Sha1::digest(auth));
        let id = format!("{user}:{hash}");
        if let Some(super_hash) = &self.front.settings().super_digest
            && user == "super"
            && &hash == super_hash
        {
            self.identities.push(ZkId {
                scheme: "super".to_owned(),
                id: String::new(),
            });
        }
        let identity = ZkId {
            scheme: "digest".to_owned(),
            id,
        };
        if !self.identities.contains(&identity) {
            self.identities.push(identity);
        }
        Ok(true)
    }

    /// setWatches after a reconnect: what changed since `relativeZxid` fires now, the rest is
    /// registered.
    fn set_watches(
        &mut self,
        watches: &mut Watches,
        body: &[u8],
        op: i32,
    ) -> Result<Vec<(i32, String)>, Ended> {
        use super::watches::event;
        let mut d = Decoder::new(body);
        let relative = d.long()?;
        let data = d.strings()?;
        let exist = d.strings()?;
        let child = d.strings()?;
        let (persistent, recursive) = if op == opcode::SET_WATCHES2 {
            (d.strings()?, d.strings()?)
        } else {
            (Vec::new(), Vec::new())
        };
        let member = self.front.member();
        let at = command::At {
            store: &member.machine.store,
            revision: member.machine.store.current_revision(),
        };
        let mut fired = Vec::new();
        for path in data {
            match zk::node(&at, &path).map_err(Failure::from)? {
                None => fired.push((event::NODE_DELETED, path)),
                Some(node) if node.data.mod_revision > relative => {
                    fired.push((event::NODE_DATA_CHANGED, path))
                }
                Some(_) => {
                    watches.data.insert(path, at.revision);
                }
            }
        }
        for path in exist {
            match zk::node(&at, &path).map_err(Failure::from)? {
                Some(_) => fired.push((event::NODE_CREATED, path)),
                None => {
                    watches.data.insert(path, at.revision);
                }
            }
        }
        for path in child {
            match zk::node(&at, &path).map_err(Failure::from)? {
                None => fired.push((event::NODE_DELETED, path)),
                Some(node) if node.pzxid > relative => {
                    fired.push((event::NODE_CHILDREN_CHANGED, path))
                }
                Some(_) => {
                    watches.child.insert(path, at.revision);
                }
            }
        }
        let registered = |paths: Vec<String>| paths.into_iter().map(|p| (p, at.revision));
        watches.persistent.extend(registered(persistent));
        watches.recursive.extend(registered(recursive));
        if watches.count() > 0 {
            watches.follow_from(at.revision);
        }
        Ok(fired)
    }

    async fn notify(&mut self, fired: &[(i32, String)]) -> Result<(), Ended> {
        for (kind, path) in fired {
            let mut e = Encoder::new();
            e.int(XID_NOTIFICATION)
                .long(-1)
                .int(code::OK)
                .int(*kind)
                .int(SYNC_CONNECTED)
                .string(path);
            self.send(e.frame()).await?;
        }
        Ok(())
    }

    async fn reply(
        &mut self,
        xid: i32,
        zxid: i64,
        err: i32,
        body: Option<Encoder>,
    ) -> Result<(), Ended> {
        let mut e = Encoder::new();
        e.int(xid).long(zxid).int(err);
        let mut frame = e.frame();
        if err == code::OK
            && let Some(body) = body
        {
            let body = body.frame();
            frame.extend_from_slice(&body[4..]);
            let length = (frame.len() - 4) as i32;
            frame[..4].copy_from_slice(&length.to_be_bytes());
        }
        self.send(frame).await
    }

    async fn send(&mut self, frame: Vec<u8>) -> Result<(), Ended> {
        self.writer.write_all(&frame).await?;
        self.stats.sent.fetch_add(1, Ordering::Relaxed);
        self.front.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn parse_connect(body: &[u8]) -> Result<ConnectRequest, Malformed> {
    let mut d = Decoder::new(body);
    let _protocol_version = d.int()?;
    let last_zxid_seen = d.long()?;
    let timeout = d.int()?;
    let session_id = d.long()?;
    let password = d.buffer()?.unwrap_or_default().to_vec();
    let has_read_only = !d.is_empty();
    if has_read_only {
        let _read_only = d.bool()?;
    }
    Ok(ConnectRequest {
        last_zxid_seen,
        timeout,
        session_id,
        password,
        has_read_only,
    })
}
