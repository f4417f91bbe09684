//! grpc-go's server metrics under go-grpc-prometheus's names and labels (`grpc_server_*`), and
//! etcd's client byte counters, kept by a layer around the gRPC services. It sees what grpc-go's
//! interceptors see: each call's start, every message each way (read off the gRPC framing as
//! the bodies stream), and the status it ends with, from the trailers, or `Canceled` when the
//! client went away first.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, Registry};

/// gRPC's status codes by number, named as grpc-go names them in `grpc_code`.
const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CANCELED: usize = 1;
const UNKNOWN: usize = 2;

const UNARY: &str = "unary";
const SERVER_STREAM: &str = "server_stream";
const BIDI_STREAM: &str = "bidi_stream";

/// Every method on the client port: (service, method, gRPC type).
const METHODS: &[(&str, &str, &str)] = &[
    ("etcdserverpb.KV", "Range", UNARY),
    ("etcdserverpb.KV", "Put", UNARY),
    ("etcdserverpb.KV", "DeleteRange", UNARY),
    ("etcdserverpb.KV", "Txn", UNARY),
    ("etcdserverpb.KV", "Compact", UNARY),
    ("etcdserverpb.Watch", "Watch", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseGrant", UNARY),
    ("etcdserverpb.Lease", "LeaseRevoke", UNARY),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BIDI_STREAM),
    ("etcdserverpb.Lease", "LeaseTimeToLive", UNARY),
    ("etcdserverpb.Lease", "LeaseLeases", UNARY),
    ("etcdserverpb.Cluster", "MemberAdd", UNARY),
    ("etcdserverpb.Cluster", "MemberRemove", UNARY),
    ("etcdserverpb.Cluster", "MemberUpdate", UNARY),
    ("etcdserverpb.Cluster", "MemberList", UNARY),
    ("etcdserverpb.Cluster", "MemberPromote", UNARY),
    ("etcdserverpb.Maintenance", "Alarm", UNARY),
    ("etcdserverpb.Maintenance", "Status", UNARY),
    ("etcdserverpb.Maintenance", "Defragment", UNARY),
    ("etcdserverpb.Maintenance", "Hash", UNARY),
    ("etcdserverpb.Maintenance", "HashKV", UNARY),
    ("etcdserverpb.Maintenance", "Snapshot", SERVER_STREAM),
    ("etcdserverpb.Maintenance", "MoveLeader", UNARY),
    ("etcdserverpb.Maintenance", "Downgrade", UNARY),
    ("etcdserverpb.Auth", "AuthEnable", UNARY),
    ("etcdserverpb.Auth", "AuthDisable", UNARY),
    ("etcdserverpb.Auth", "AuthStatus", UNARY),
    ("etcdserverpb.Auth", "Authenticate", UNARY),
    ("etcdserverpb.Auth", "UserAdd", UNARY),
    ("etcdserverpb.Auth", "UserGet", UNARY),
    ("etcdserverpb.Auth", "UserList", UNARY),
    ("etcdserverpb.Auth", "UserDelete", UNARY),
    ("etcdserverpb.Auth", "UserChangePassword", UNARY),
    ("etcdserverpb.Auth", "UserGrantRole", UNARY),
    ("etcdserverpb.Auth", "UserRevokeRole", UNARY),
    ("etcdserverpb.Auth", "RoleAdd", UNARY),
    ("etcdserverpb.Auth", "RoleGet", UNARY),
    ("etcdserverpb.Auth", "RoleList", UNARY),
    ("etcdserverpb.Auth", "RoleDelete", UNARY),
    ("etcdserverpb.Auth", "RoleGrantPermission", UNARY),
    ("etcdserverpb.Auth", "RoleRevokePermission", UNARY),
    ("v3electionpb.Election", "Campaign", UNARY),
    ("v3electionpb.Election", "Proclaim", UNARY),
    ("v3electionpb.Election", "Leader", UNARY),
    ("v3electionpb.Election", "Observe", SERVER_STREAM),
    ("v3electionpb.Election", "Resign", UNARY),
    ("v3lockpb.Lock", "Lock", UNARY),
    ("v3lockpb.Lock", "Unlock", UNARY),
    ("synodpb.Migrate", "ImportBase", UNARY),
    ("synodpb.Migrate", "ImportRevision", UNARY),
];

/// One method's series, resolved once so a call pays no label lookups.
struct Method {
    started: IntCounter,
    handled: Vec<IntCounter>,
    received: IntCounter,
    sent: IntCounter,
    /// Created on first use, and only with `--metrics extensive` (as etcd).
    handling: OnceLock<Histogram>,
    labels: [&'static str; 3],
}

pub struct GrpcMetrics {
    by_path: HashMap<String, Arc<Method>>,
    handling: HistogramVec,
    extensive: AtomicBool,
}

#[allow(clippy::expect_used)] // constant, valid names and labels
impl GrpcMetrics {
    pub fn new(registry: &Registry) -> GrpcMetrics {
        let labels = ["grpc_type", "grpc_service", "grpc_method"];
        let started = super::counter_vec(
            registry,
            "grpc_server_started_total",
            "Total number of RPCs started on the server.",
            &labels,
        );
        let handled = super::counter_vec(
            registry,
            "grpc_server_handled_total",
            "Total number of RPCs completed on the server, regardless of success or failure.",
            &["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
        );
        let received = super::counter_vec(
            registry,
            "grpc_server_msg_received_total",
            "Total number of RPC stream messages received on the server.",
            &labels,
        );
        let sent = super::counter_vec(
            registry,
            "grpc_server_msg_sent_total",
            "Total number of gRPC stream messages sent by the server.",
            &labels,
        );
        let handling = super::add(
            registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "grpc_server_handling_seconds",
                    "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
                ),
                &labels,
            )
            .expect("valid metric"),
        );
        // Every series exists from the start (as grpc-go pre-initialises them), so a rate over
        // a method's first call is not lost and dashboards show zeros instead of gaps.
        let by_path = METHODS
            .iter()
            .map(|&(service, method, kind)| {
                let values = [kind, service, method];
                let series = Method {
                    started: started.with_label_values(&values),
                    handled: CODES
                        .iter()
                        .map(|code| handled.with_label_values(&[kind, service, method, code]))
                        .collect(),
                    received: received.with_label_values(&values),
                    sent: sent.with_label_values(&values),
                    handling: OnceLock::new(),
                    labels: values,
                };
                (format!("/{service}/{method}"), Arc::new(series))
            })
            .collect();
        GrpcMetrics {
            by_path,
            handling,
            extensive: AtomicBool::new(false),
        }
    }

    /// `--metrics extensive`: also time every call (`grpc_server_handling_seconds`).
    pub fn set_extensive(&self, extensive: bool) {
        self.extensive.store(extensive, Ordering::Relaxed);
    }

    fn finish(&self, method: &Method, code: usize, started: Instant) {
        if let Some(counter) = method.handled.get(code) {
            counter.inc();
        }
        if self.extensive.load(Ordering::Relaxed) {
            method
                .handling
                .get_or_init(|| self.handling.with_label_values(&method.labels))
                .observe(started.elapsed().as_secs_f64());
        }
    }
}

/// A unary call through the JSON gateway, counted as the gRPC call it stands for (etcd's
/// gateway dials its own gRPC server, so there these are gRPC calls). `service` and `method`
/// are the gateway's names for them (`kv`, `delete_range`).
pub struct GatewayCall {
    method: Option<Arc<Method>>,
    started: Instant,
}

impl GatewayCall {
    pub fn start(service: &str, method: &str) -> GatewayCall {
        let service = match service {
            "kv" => "etcdserverpb.KV",
            "lease" => "etcdserverpb.Lease",
            "maintenance" => "etcdserverpb.Maintenance",
            "cluster" => "etcdserverpb.Cluster",
            "auth" => "etcdserverpb.Auth",
            "lock" => "v3lockpb.Lock",
            "election" => "v3electionpb.Election",
            _ => "",
        };
        let name: String = if method == "hash_kv" {
            "HashKV".to_owned()
        } else {
            method
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    chars.next().map_or_else(String::new, |first| {
                        first.to_ascii_uppercase().to_string() + chars.as_str()
                    })
                })
                .collect()
        };
        let found = super::metrics()
            .grpc
            .by_path
            .get(&format!("/{service}/{name}"))
            .cloned();
        if let Some(series) = &found {
            series.started.inc();
            series.received.inc();
        }
        GatewayCall {
            method: found,
            started: Instant::now(),
        }
    }

    /// The call ended with `code` (`Ok` for an answer).
    pub fn finish(self, code: tonic::Code) {
        if let Some(series) = &self.method {
            if code == tonic::Code::Ok {
                series.sent.inc();
            }
            super::metrics()
                .grpc
                .finish(series, code as usize, self.started);
        }
    }
}

/// The layer: counts the calls to known gRPC methods, passes everything else through.
pub async fn middleware(request: Request, next: Next) -> Response {
    let grpc = &super::metrics().grpc;
    let Some(method) = grpc.by_path.get(request.uri().path()).cloned() else {
        return next.run(request).await;
    };
    method.started.inc();
    let started = Instant::now();
    let [_, service, name] = method.labels;
    // The call's span (exported only with --enable-distributed-tracing; see `crate::telemetry`).
    let span = tracing::trace_span!(
        "grpc",
        otel.name = %&request.uri().path()[1..],
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = name,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, request.headers());
    let request = request.map(|body| {
        Body::new(Counted {
            inner: body,
            method: method.clone(),
            frames: Frames::default(),
            sending: None,
        })
    });
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    // A call that fails before any message carries its status in the headers (trailers-only).
    let ended = status_code(response.headers());
    if let Some(code) = ended {
        grpc.finish(&method, code, started);
        span.record("rpc.grpc.status_code", code);
    }
    response.map(|body| {
        Body::new(Counted {
            inner: body,
            method,
            frames: Frames::default(),
            sending: Some(Sending {
                started,
                finished: ended.is_some(),
                span,
            }),
        })
    })
}

/// The `grpc-status` of a header or trailer block, as an index into [`CODES`].
fn status_code(headers: &axum::http::HeaderMap) -> Option<usize> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    let code = value.parse::<usize>().unwrap_or(UNKNOWN);
    Some(if code < CODES.len() { code } else { UNKNOWN })
}

/// A response body being sent: when its call started, whether its end was counted, and the
/// call's span, which ends when the body does.
struct Sending {
    started: Instant,
    finished: bool,
    span: tracing::Span,
}

/// A request or response body that counts its bytes and gRPC messages as they pass.
struct Counted {
    inner: Body,
    method: Arc<Method>,
    frames: Frames,
    /// `None` for a request body.
    sending: Option<Sending>,
}

impl Counted {
    fn finish(&mut self, code: usize) {
        if let Some(sending) = &mut self.sending
            && !sending.finished
        {
            sending.finished = true;
            super::metrics()
                .grpc
                .finish(&self.method, code, sending.started);
            sending.span.record("rpc.grpc.status_code", code);
        }
    }
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let messages = this.frames.feed(data);
                    let metrics = super::metrics();
                    if this.sending.is_some() {
                        metrics.client_sent_bytes.inc_by(data.len() as u64);
                        this.method.sent.inc_by(messages);
                    } else {
                        metrics.client_received_bytes.inc_by(data.len() as u64);
                        this.method.received.inc_by(messages);
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    let code = status_code(trailers).unwrap_or(UNKNOWN);
                    this.finish(code);
                }
            }
            // A response that ends without a status is not a gRPC answer the client can use.
            Poll::Ready(None) => this.finish(UNKNOWN),
            Poll::Ready(Some(Err(_))) => this.finish(UNKNOWN),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The client went away (or the connection broke) before the call ended.
        self.finish(CANCELED);
    }
}

/// Reads gRPC's length-prefixed framing (1 flag byte, 4-byte big-endian length, the message)
/// across body chunks, counting messages as their prefixes complete.
#[derive(Default)]
struct Frames {
    prefix: [u8; 5],
    prefix_len: usize,
    remaining: u64,
}

impl Frames {
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining.min(data.len() as u64)) as usize;
                self.remaining -= skip as u64;
                data = &data[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(data.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&data[..take]);
            self.prefix_len += take;
            data = &data[take..];
            if self.prefix_len == 5 {
                messages += 1;
                self.prefix_len = 0;
                let [_, a, b, c, d] = self.prefix;
                self.remaining = u64::from(u32::from_be_bytes([a, b, c, d]));
            }
        }
        messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_names_resolve_to_grpc_methods() {
        for (service, method) in [
            ("kv", "delete_range"),
            ("maintenance", "hash_kv"),
            ("maintenance", "move_leader"),
            ("lease", "lease_time_to_live"),
            ("cluster", "member_promote"),
            ("auth", "user_change_password"),
            ("auth", "role_revoke_permission"),
            ("election", "proclaim"),
            ("lock", "unlock"),
        ] {
            let call = GatewayCall::start(service, method);
            assert!(call.method.is_some(), "{service}.{method}");
        }
        assert!(GatewayCall::start("kv", "no_such_method").method.is_none());
    }

    #[test]
    fn frames_count_messages_split_across_chunks() {
        let mut frames = Frames::default();
        let mut stream = Vec::new();
        for len in [0u32, 3, 70_000] {
            stream.push(0);
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend(std::iter::repeat_n(7u8, len as usize));
        }
        for chunk in [1, 2, 5, 7, 4096] {
            let mut frames_split = Frames::default();
            let counted: u64 = stream.chunks(chunk).map(|c| frames_split.feed(c)).sum();
            assert_eq!(counted, 3, "chunks of {chunk}");
        }
        assert_eq!(frames.feed(&stream), 3);
        // A message cut mid-way is counted once its prefix is in; the rest is skipped.
        assert_eq!(frames.feed(&[0, 0, 0, 0, 10, 1, 2]), 1);
        assert_eq!(frames.feed(&[3; 8]), 0);
        assert_eq!(frames.feed(&[0, 0, 0, 0, 0]), 1);
    }
}
