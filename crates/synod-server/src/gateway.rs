//! etcd's HTTP/JSON gateway on the client port (etcd serves grpc-gateway there): every `/v3/...`
//! path is a POST whose body is the request message in proto3 JSON (bytes in base64, 64-bit
//! integers as strings or numbers, enum names or numbers, proto or JSON field names) and whose
//! answer is the response in proto3 JSON with proto field names. Streaming calls (watch,
//! keep-alive, snapshot) answer with one `{"result": ...}` object per line. Errors are
//! `google.rpc.Status` objects with grpc-gateway's HTTP status codes. `/v3beta/` is an alias.
//!
//! Every call goes through the same service code as gRPC, so the two cannot disagree.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use synod_api::etcdserverpb::auth_server::Auth;
use synod_api::etcdserverpb::cluster_server::Cluster;
use synod_api::etcdserverpb::kv_server::Kv;
use synod_api::etcdserverpb::lease_server::Lease;
use synod_api::etcdserverpb::maintenance_server::Maintenance;
use synod_api::etcdserverpb::{LeaseKeepAliveRequest, SnapshotRequest, WatchRequest};
use tonic::Status;

use crate::auth::AuthService;
use crate::caller::{Credentials, HttpCredentials};
use crate::error::Failure;
use crate::kv::KvService;
use crate::lease::LeaseService;
use crate::maintenance::{ClusterService, MaintenanceService};
use crate::recipes::{ElectionService, LockService};
use crate::watch::WatchService;
use synod_api::v3electionpb::LeaderRequest;
use synod_api::v3electionpb::election_server::Election;
use synod_api::v3lockpb::lock_server::Lock;

/// The services the gateway calls, shared with the gRPC server.
pub struct Gateway {
    pub kv: Arc<KvService>,
    pub watch: Arc<WatchService>,
    pub lease: Arc<LeaseService>,
    pub maintenance: Arc<MaintenanceService>,
    pub cluster: Arc<ClusterService>,
    pub lock: Arc<LockService>,
    pub election: Arc<ElectionService>,
    pub auth: Arc<AuthService>,
}

/// grpc-gateway's mapping from gRPC codes to HTTP statuses.
fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error body for every gateway generation at once: etcd 3.6's `google.rpc.Status`
/// (`code`, `message`, `details`) and etcd 3.4/3.5's `error` beside them, which deployed clients
/// read (Patroni recognises a lost lease by `error` holding "requested lease not found").
fn status_json(status: &Status) -> serde_json::Value {
    serde_json::json!({
        "error": status.message(),
        "code": status.code() as i32,
        "message": status.message(),
        "details": [],
    })
}

/// An error ending a stream: etcd 3.4/3.5 put `grpc_code`, `http_code` and `http_status` there.
fn stream_error_json(status: &Status) -> serde_json::Value {
    let http = http_status(status.code());
    serde_json::json!({
        "grpc_code": status.code() as i32,
        "http_code": http.as_u16(),
        "http_status": http.canonical_reason().unwrap_or(""),
        "code": status.code() as i32,
        "message": status.message(),
        "details": [],
    })
}

fn error_response(status: &Status) -> Response {
    (
        http_status(status.code()),
        [(header::CONTENT_TYPE, "application/json")],
        status_json(status).to_string(),
    )
        .into_response()
}

/// A request body read up to the gateway's limit; a larger one is refused as the gRPC server
/// refuses an oversize message (etcd's gateway forwards the body to its own gRPC server).
pub struct JsonBody(Bytes);

impl<S: Send + Sync> axum::extract::FromRequest<S> for JsonBody {
    type Rejection = Response;

    async fn from_request(request: axum::extract::Request, _state: &S) -> Result<Self, Response> {
        let limit = request
            .extensions()
            .get::<BodyLimit>()
            .map_or(DEFAULT_BODY_BYTES_MAX, |limit| limit.0);
        let mut body = request.into_body().into_data_stream();
        let mut bytes = Vec::new();
        let mut seen = 0usize;
        while let Some(chunk) = body.next().await {
            let Ok(chunk) = chunk else {
                return Err(error_response(
                    &Failure::BadBody("reading it failed".to_owned()).into(),
                ));
            };
            seen += chunk.len();
            if seen <= limit {
                bytes.extend_from_slice(&chunk);
            } else if seen > limit.saturating_mul(8) {
                // Past any honest client: stop reading (the connection is closed).
                break;
            }
            // Between the two, the rest is read and dropped, so the client gets the answer
            // rather than a reset connection.
        }
        if seen > limit {
            return Err(error_response(
                &crate::error::ServerError::MessageTooLarge {
                    length: seen,
                    limit,
                }
                .into(),
            ));
        }
        Ok(JsonBody(Bytes::from(bytes)))
    }
}

/// The largest JSON body the gateway reads, set per router from `--max-request-bytes`.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// Without a configured limit (tests of the router alone).
const DEFAULT_BODY_BYTES_MAX: usize = 2 << 20;

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(error) => error_response(&Failure::operation("encoding the response", error).into()),
    }
}

/// Decodes a request body; an empty body is the default message.
fn decode<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, Status> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|error| Failure::BadBody(error.to_string()).into())
}

/// Decodes a body holding any number of request messages, one after another.
fn decode_all<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, Status> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|error| Failure::BadBody(error.to_string()).into())
}

/// A unary call: `names` are the service and method, for the gRPC metrics.
async fn unary<Req, Resp, F, Fut>(
    names: (&str, &str),
    body: Bytes,
    credentials: Credentials,
    call: F,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
    F: FnOnce(tonic::Request<Req>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
{
    let request = match decode::<Req>(&body) {
        Ok(request) => request,
        Err(status) => return error_response(&status),
    };
    let mut request = tonic::Request::new(request);
    credentials.attach(&mut request);
    let counted = crate::metrics::grpc::GatewayCall::start(names.0, names.1);
    match call(request).await {
        Ok(response) => {
            counted.finish(tonic::Code::Ok);
            json_response(&response.into_inner())
        }
        Err(status) => {
            counted.finish(status.code());
            error_response(&status)
        }
    }
}

/// Streams responses as `{"result": ...}` lines; an error ends the stream with `{"error": ...}`.
fn stream_response<T, S>(responses: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, Status>> + Send + 'static,
{
    let lines = responses.map(|item| {
        let line = match item {
            Ok(message) => serde_json::json!({ "result": message }),
            Err(status) => serde_json::json!({ "error": stream_error_json(&status) }),
        };
        let mut bytes = line.to_string().into_bytes();
        bytes.push(b'\n');
        Ok::<_, Infallible>(Bytes::from(bytes))
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

macro_rules! unary_route {
    ($service:ident . $method:ident) => {
        post(
            |State(gateway): State<Arc<Gateway>>,
             HttpCredentials(credentials): HttpCredentials,
             JsonBody(body): JsonBody| async move {
                let names = (stringify!($service), stringify!($method));
                unary(names, body, credentials, |request| async move {
                    gateway.$service.$method(request).await
                })
                .await
            },
        )
    };
}

async fn watch(
    State(gateway): State<Arc<Gateway>>,
    HttpCredentials(credentials): HttpCredentials,
    JsonBody(body): JsonBody,
) -> Response {
    match decode_all::<WatchRequest>(&body) {
        Ok(requests) => stream_response(gateway.watch.open(
            futures::stream::iter(requests.into_iter().map(Ok)),
            credentials,
        )),
        Err(status) => error_response(&status),
    }
}

async fn keep_alive(
    State(gateway): State<Arc<Gateway>>,
    HttpCredentials(credentials): HttpCredentials,
    JsonBody(body): JsonBody,
) -> Response {
    match decode_all::<LeaseKeepAliveRequest>(&body) {
        Ok(requests) => stream_response(gateway.lease.keep_alive_stream(
            futures::stream::iter(requests.into_iter().map(Ok)),
            credentials,
        )),
        Err(status) => error_response(&status),
    }
}

async fn snapshot(
    State(gateway): State<Arc<Gateway>>,
    HttpCredentials(credentials): HttpCredentials,
) -> Response {
    let mut request = tonic::Request::new(SnapshotRequest {});
    credentials.attach(&mut request);
    match gateway.maintenance.snapshot(request).await {
        Ok(response) => stream_response(response.into_inner()),
        Err(status) => error_response(&status),
    }
}

async fn observe(
    State(gateway): State<Arc<Gateway>>,
    HttpCredentials(credentials): HttpCredentials,
    JsonBody(body): JsonBody,
) -> Response {
    let request = match decode::<LeaderRequest>(&body) {
        Ok(request) => request,
        Err(status) => return error_response(&status),
    };
    let mut request = tonic::Request::new(request);
    credentials.attach(&mut request);
    match gateway.election.observe(request).await {
        Ok(response) => stream_response(response.into_inner()),
        Err(status) => error_response(&status),
    }
}

fn api() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/kv/range", unary_route!(kv.range))
        .route("/kv/put", unary_route!(kv.put))
        .route("/kv/deleterange", unary_route!(kv.delete_range))
        .route("/kv/txn", unary_route!(kv.txn))
        .route("/kv/compaction", unary_route!(kv.compact))
        .route("/watch", post(watch))
        .route("/lease/grant", unary_route!(lease.lease_grant))
        .route("/lease/revoke", unary_route!(lease.lease_revoke))
        .route("/kv/lease/revoke", unary_route!(lease.lease_revoke))
        .route("/lease/keepalive", post(keep_alive))
        .route("/lease/timetolive", unary_route!(lease.lease_time_to_live))
        .route(
            "/kv/lease/timetolive",
            unary_route!(lease.lease_time_to_live),
        )
        .route("/lease/leases", unary_route!(lease.lease_leases))
        .route("/kv/lease/leases", unary_route!(lease.lease_leases))
        .route("/maintenance/alarm", unary_route!(maintenance.alarm))
        .route("/maintenance/status", unary_route!(maintenance.status))
        .route(
            "/maintenance/defragment",
            unary_route!(maintenance.defragment),
        )
        .route("/maintenance/hash", unary_route!(maintenance.hash))
        .route("/maintenance/hashkv", unary_route!(maintenance.hash_kv))
        .route("/maintenance/snapshot", post(snapshot))
        .route(
            "/maintenance/transfer-leadership",
            unary_route!(maintenance.move_leader),
        )
        .route(
            "/maintenance/downgrade",
            unary_route!(maintenance.downgrade),
        )
        .route("/cluster/member/list", unary_route!(cluster.member_list))
        .route("/cluster/member/add", unary_route!(cluster.member_add))
        .route(
            "/cluster/member/remove",
            unary_route!(cluster.member_remove),
        )
        .route(
            "/cluster/member/update",
            unary_route!(cluster.member_update),
        )
        .route(
            "/cluster/member/promote",
            unary_route!(cluster.member_promote),
        )
        .route("/lock/lock", unary_route!(lock.lock))
        .route("/lock/unlock", unary_route!(lock.unlock))
        .route("/election/campaign", unary_route!(election.campaign))
        .route("/election/proclaim", unary_route!(election.proclaim))
        .route("/election/leader", unary_route!(election.leader))
        .route("/election/observe", post(observe))
        .route("/election/resign", unary_route!(election.resign))
        .route("/auth/enable", unary_route!(auth.auth_enable))
        .route("/auth/disable", unary_route!(auth.auth_disable))
        .route("/auth/status", unary_route!(auth.auth_status))
        .route("/auth/authenticate", unary_route!(auth.authenticate))
        .route("/auth/user/add", unary_route!(auth.user_add))
        .route("/auth/user/get", unary_route!(auth.user_get))
        .route("/auth/user/list", unary_route!(auth.user_list))
        .route("/auth/user/delete", unary_route!(auth.user_delete))
        .route(
            "/auth/user/changepw",
            unary_route!(auth.user_change_password),
        )
        .route("/auth/user/grant", unary_route!(auth.user_grant_role))
        .route("/auth/user/revoke", unary_route!(auth.user_revoke_role))
        .route("/auth/role/add", unary_route!(auth.role_add))
        .route("/auth/role/get", unary_route!(auth.role_get))
        .route("/auth/role/list", unary_route!(auth.role_list))
        .route("/auth/role/delete", unary_route!(auth.role_delete))
        .route("/auth/role/grant", unary_route!(auth.role_grant_permission))
        .route(
            "/auth/role/revoke",
            unary_route!(auth.role_revoke_permission),
        )
}

/// The gateway's routes under `/v3` and `/v3beta`. Bodies may be `body_bytes_max` long (the
/// JSON of the largest message the gRPC server takes: base64 makes bytes a third longer).
pub fn router(gateway: Arc<Gateway>, body_bytes_max: usize) -> Router {
    Router::new()
        .nest("/v3", api())
        .nest("/v3beta", api())
        .with_state(gateway)
        .layer(axum::extract::DefaultBodyLimit::disable())
        .layer(axum::Extension(BodyLimit(body_bytes_max)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use synod_api::etcdserverpb::{RangeRequest, range_request::SortOrder};

    /// Proto3 JSON as grpc-gateway accepts it: base64 bytes, int64 as string or number, enum
    /// names, and either field spelling.
    #[test]
    fn requests_decode_like_grpc_gateway() {
        let request: RangeRequest = decode(
            br#"{"key":"Zm9v","range_end":"Zm9w","limit":"5","sortOrder":"DESCEND","revision":3}"#,
        )
        .expect("decodes");
        assert_eq!(request.key, b"foo");
        assert_eq!(request.range_end, b"fop");
        assert_eq!((request.limit, request.revision), (5, 3));
        assert_eq!(request.sort_order, SortOrder::Descend as i32);
        let empty: RangeRequest = decode(b"").expect("an empty body is the default message");
        assert_eq!(empty, RangeRequest::default());
        assert_eq!(
            decode::<RangeRequest>(b"{not json").map_err(|s| s.code()),
            Err(tonic::Code::InvalidArgument)
        );
        let several: Vec<WatchRequest> =
            decode_all(br#"{"create_request":{"key":"YQ=="}} {"progress_request":{}}"#)
                .expect("two");
        assert_eq!(several.len(), 2);
    }
}
