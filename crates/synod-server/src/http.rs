//! HTTP on the client port, beside gRPC as in etcd: `/health`, `/livez`, `/readyz`, `/version`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde::Deserialize;
use synod_api::etcdserverpb::{AlarmType, RangeRequest};

use crate::member::{ETCD_API_VERSION, Member};

/// Time a health check waits for a linearizable read.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(3);

pub fn router(member: Arc<Member>) -> Router {
    Router::new()
        .route("/synod/v1/lock/check", axum::routing::post(check_fence))
        .route("/health", get(health))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .with_state(member)
}

async fn version() -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "etcdserver": ETCD_API_VERSION,
        "etcdcluster": ETCD_API_VERSION,
        "storage": ETCD_API_VERSION,
        "synod": env!("CARGO_PKG_VERSION"),
    }))
}

#[derive(Debug, Deserialize)]
struct FenceQuery {
    /// The lock's name, as given to Lock or `synod lock`.
    name: String,
    /// The fencing token the caller presents.
    token: i64,
}

/// Synod's fencing check for protected resources: `{"name": L, "token": T}` answers whether T
/// is the current holder's token of lock L (see docs/LOCKS.md).
async fn check_fence(
    State(member): State<Arc<Member>>,
    crate::caller::HttpCredentials(credentials): crate::caller::HttpCredentials,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let query: FenceQuery = match serde_json::from_slice(&body) {
        Ok(query) => query,
        Err(error) => {
            let body = serde_json::json!({ "error": format!("expected {{\"name\": string, \"token\": integer}}: {error}") });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    // The answer tells who holds the lock: READ on its holders, as a range of them would need.
    let mut prefix = query.name.as_bytes().to_vec();
    prefix.push(b'/');
    let allowed = crate::caller::http_allowed(&member, &credentials, |auth, caller| {
        auth.check_keys(
            caller,
            synod_core::auth::Access::Read,
            &prefix,
            &synod_api::prefix_range_end(&prefix),
        )
    })
    .await;
    if let Err(refused) = allowed {
        return refused;
    }
    match crate::recipes::check_fence(&member, query.name.as_bytes(), query.token).await {
        Ok(check) => Json(check).into_response(),
        Err(error) => {
            let wire = error.wire();
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({ "error": wire.message })),
            )
                .into_response()
        }
    }
}

#[derive(Debug, Deserialize)]
struct HealthQuery {
    serializable: Option<bool>,
}

/// etcd's `/health`: healthy when there is a leader, no alarm is raised and a read succeeds
/// (linearizable unless `?serializable=true`).
async fn health(
    State(member): State<Arc<Member>>,
    Query(query): Query<HealthQuery>,
) -> impl IntoResponse {
    let (healthy, reason) = check_health(&member, query.serializable.unwrap_or(false)).await;
    let metrics = crate::metrics::metrics();
    if healthy {
        metrics.health_success.inc();
    } else {
        metrics.health_failures.inc();
    }
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "health": healthy.to_string(), "reason": reason })),
    )
}

async fn check_health(member: &Member, serializable: bool) -> (bool, String) {
    if member.is_stopped() {
        return (false, "SERVER_STOPPED".to_owned());
    }
    for (_, alarm) in member.machine.alarms.list() {
        if alarm == AlarmType::Nospace as i32 || alarm == AlarmType::Corrupt as i32 {
            let name = AlarmType::try_from(alarm)
                .map(|a| a.as_str_name())
                .unwrap_or("UNKNOWN");
            return (false, format!("ALARM {name}"));
        }
    }
    if member.status.leader_id.load(Ordering::Relaxed) == 0 {
        return (false, "RAFT NO LEADER".to_owned());
    }
    if !serializable {
        match tokio::time::timeout(HEALTH_TIMEOUT, member.read_barrier()).await {
            Ok(Ok(())) => {}
            _ => return (false, "QGET ERROR".to_owned()),
        }
    }
    let probe = RangeRequest {
        key: b"health".to_vec(),
        serializable: true,
        ..RangeRequest::default()
    };
    match synod_core::apply::execute_range(&*member.machine.store, &probe) {
        Ok(_) => (true, String::new()),
        Err(_) => (false, "QGET ERROR".to_owned()),
    }
}

/// Liveness: the process serves HTTP and its node loop is running.
async fn livez(State(member): State<Arc<Member>>) -> impl IntoResponse {
    if member.is_stopped() {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Readiness: the member can serve linearizable reads.
async fn readyz(State(member): State<Arc<Member>>) -> impl IntoResponse {
    let (healthy, _) = check_health(&member, false).await;
    if healthy {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ok\n")
    }
}
