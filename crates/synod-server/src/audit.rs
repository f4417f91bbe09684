//! The audit log (`--audit-log PATH`, beyond etcd): one JSON line per auth change, admin RPC
//! and refused request, saying who (user or certificate name), from where, what (the RPC or
//! gateway path), and the result.
//!
//! Records are written by a thread of their own from a bounded queue, so a slow disk never
//! holds a request; if the queue is full, records are counted as dropped and the count is
//! written with the next record that fits. The file is rotated at `--audit-log-max-bytes`:
//! `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, and so on up to [`ROTATED_FILES`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use serde::Serialize;

use crate::caller::{ClientCertificate, RemoteAddress};
use crate::member::Member;

/// Records waiting for the writer.
const QUEUE_MAX: usize = 8 * 1024;
/// Older files kept beside the current one.
const ROTATED_FILES: usize = 5;

/// One audited request.
#[derive(Debug, Serialize)]
pub struct Record {
    pub time: String,
    pub member: String,
    /// The user (by token) or the client certificate's CN; empty for an anonymous request.
    pub user: String,
    pub address: Option<String>,
    /// The gRPC method or gateway path.
    pub rpc: String,
    /// `OK`, or the gRPC code (`PermissionDenied`, ...) or HTTP status of the refusal.
    pub result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Records lost to a full queue since the previous record.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The audit log of a member; off when no path is configured.
#[derive(Debug, Default)]
pub struct AuditLog {
    sender: Option<SyncSender<Record>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Opens (creating) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, bytes_max: u64) -> std::io::Result<AuditLog> {
        let writer = Writer::open(path.to_owned(), bytes_max)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_MAX);
        std::thread::Builder::new()
            .name("synod-audit".to_owned())
            .spawn(move || writer.run(receiver))?;
        Ok(AuditLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues `record`; never blocks.
    pub fn record(&self, mut record: Record) {
        let Some(sender) = &self.sender else {
            return;
        };
        record.dropped_before = self.dropped.swap(0, Ordering::Relaxed);
        match sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(record)) | Err(TrySendError::Disconnected(record)) => {
                self.dropped
                    .fetch_add(1 + record.dropped_before, Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    bytes_max: u64,
    file: std::fs::File,
    written: u64,
}

impl Writer {
    fn open(path: PathBuf, bytes_max: u64) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(Writer {
            path,
            bytes_max: bytes_max.max(4096),
            file,
            written,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..ROTATED_FILES).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        *self = Writer::open(self.path.clone(), self.bytes_max)?;
        Ok(())
    }

    fn run(mut self, receiver: Receiver<Record>) {
        while let Ok(record) = receiver.recv() {
            let Ok(mut line) = serde_json::to_vec(&record) else {
                continue;
            };
            line.push(b'\n');
            if self.written + line.len() as u64 > self.bytes_max
                && let Err(error) = self.rotate()
            {
                tracing::error!(%error, path = %self.path.display(), "rotating the audit log failed");
            }
            match self.file.write_all(&line) {
                Ok(()) => self.written += line.len() as u64,
                Err(error) => {
                    tracing::error!(%error, path = %self.path.display(), "writing the audit log failed")
                }
            }
        }
    }
}

/// RPCs recorded whatever their result: auth changes and logins, membership, maintenance.
fn always_audited(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/etcdserverpb.Auth/",
        "/etcdserverpb.Cluster/Member",
        "/etcdserverpb.Maintenance/",
        "/etcdserverpb.KV/Compact",
        "/v3/auth/",
        "/v3/cluster/",
        "/v3/maintenance/",
        "/v3/kv/compaction",
        "/v3beta/auth/",
        "/v3beta/cluster/",
        "/v3beta/maintenance/",
    ];
    const READS: &[&str] = &[
        "/etcdserverpb.Cluster/MemberList",
        "/etcdserverpb.Maintenance/Status",
        "/v3/cluster/member/list",
        "/v3/maintenance/status",
    ];
    PREFIXES.iter().any(|p| path.starts_with(p)) && !READS.contains(&path)
}

/// Messages of refusals that are about who asked (the others are the request's own fault).
const AUTH_REFUSALS: &[&str] = &[
    "etcdserver: user name is empty",
    "etcdserver: authentication failed, invalid user ID or password",
    "etcdserver: revision of auth store is old",
    "etcdserver: invalid auth token",
    "etcdserver: permission denied",
];

/// The result of a response as the client will see it: a gRPC status in the headers (an error
/// answered at once), else the HTTP status.
fn outcome(response: &Response) -> (String, String, bool) {
    let headers = response.headers();
    if let Some(code) = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
    {
        let message = headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_default();
        let refused = code != 0
            && (code == tonic::Code::PermissionDenied as i32
                || code == tonic::Code::Unauthenticated as i32
                || AUTH_REFUSALS.contains(&message.as_str()));
        let name = if code == 0 {
            "OK".to_owned()
        } else {
            format!("{:?}", tonic::Code::from_i32(code))
        };
        return (name, message, refused);
    }
    let status = response.status();
    let refused = status == axum::http::StatusCode::FORBIDDEN
        || status == axum::http::StatusCode::UNAUTHORIZED;
    let name = if status.is_success() {
        "OK".to_owned()
    } else {
        status.as_u16().to_string()
    };
    (name, String::new(), refused)
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = text.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Who a request says it is, without side effects (a token's TTL is not renewed here).
fn who(member: &Member, request: &Request) -> String {
    let token = ["token", "authorization"].iter().find_map(|key| {
        let value = request.headers().get(*key)?.to_str().ok()?.trim();
        Some(
            value
                .strip_prefix("Bearer ")
                .unwrap_or(value)
                .trim()
                .to_owned(),
        )
    });
    if let Some(user) = token.and_then(|t| member.auth.peek_token_user(&t)) {
        return user;
    }
    request
        .extensions()
        .get::<ClientCertificate>()
        .map(|c| c.common_name.clone())
        .unwrap_or_default()
}

/// Middleware of the client router that records audited requests.
pub async fn middleware(
    State(member): State<Arc<Member>>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_owned();
    let user = who(&member, &request);
    let address = request
        .extensions()
        .get::<RemoteAddress>()
        .map(|a| a.0.to_string());
    let response = next.run(request).await;
    let (result, message, refused) = outcome(&response);
    if refused || always_audited(&path) {
        member.audit.record(Record {
            time: now(),
            member: format!("{:x}", member.member_id),
            user,
            address,
            rpc: path,
            result,
            message,
            dropped_before: 0,
        });
    }
    response
}

/// Records a refusal that is not a response status (a watch canceled at creation).
pub fn refused(
    member: &Member,
    user: &str,
    address: Option<std::net::SocketAddr>,
    rpc: &str,
    message: &str,
) {
    member.audit.record(Record {
        time: now(),
        member: format!("{:x}", member.member_id),
        user: user.to_owned(),
        address: address.map(|a| a.to_string()),
        rpc: rpc.to_owned(),
        result: "Canceled".to_owned(),
        message: message.to_owned(),
        dropped_before: 0,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_and_auth_rpcs_are_audited_reads_are_not() {
        assert!(always_audited("/etcdserverpb.Auth/UserAdd"));
        assert!(always_audited("/etcdserverpb.Maintenance/Defragment"));
        assert!(always_audited("/v3/auth/authenticate"));
        assert!(!always_audited("/etcdserverpb.KV/Range"));
        assert!(!always_audited("/etcdserverpb.Maintenance/Status"));
        assert!(!always_audited("/etcdserverpb.Cluster/MemberList"));
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        assert_eq!(
            percent_decode("etcdserver: user name is empty%20x%zz"),
            "etcdserver: user name is empty x%zz"
        );
    }

    #[test]
    fn the_log_rotates_and_keeps_its_older_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.log");
        let mut writer = Writer::open(path.clone(), 4096).expect("open");
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_MAX);
        for i in 0..200 {
            sender
                .send(Record {
                    time: now(),
                    member: "1".to_owned(),
                    user: "alice".to_owned(),
                    address: None,
                    rpc: format!("/etcdserverpb.Auth/UserAdd/{i}"),
                    result: "OK".to_owned(),
                    message: String::new(),
                    dropped_before: 0,
                })
                .expect("send");
        }
        drop(sender);
        writer.written = 0;
        writer.run(receiver);
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(current.len() <= 4096);
        assert!(
            current
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
        assert!(dir.path().join("audit.log.1").exists());
        assert!(
            !dir.path()
                .join(format!("audit.log.{}", ROTATED_FILES + 1))
                .exists()
        );
    }
}
