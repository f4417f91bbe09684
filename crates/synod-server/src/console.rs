//! The web console at `/ui` on the client port: a page, a script and a style sheet compiled into
//! the binary, so it works offline with nothing else installed. The page reads and writes through
//! the JSON gateway like any client, with the same authentication; the one thing the gateway
//! cannot tell it, every member's status in one answer, is `GET /synod/v1/cluster` here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Redirect, Response};
use axum::routing::get;
use synod_api::synodpb::{MemberRecord, PeerStatusRequest};

use crate::caller::HttpCredentials;
use crate::member::Member;

/// How long the cluster page waits for another member's status.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// The page may load only its own script and style, and call only its own member.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// The console's files: (path, content type, bytes).
const ASSETS: [(&str, &str, &str); 3] = [
    (
        "/ui/",
        "text/html; charset=utf-8",
        include_str!("../ui/index.html"),
    ),
    (
        "/ui/app.js",
        "text/javascript; charset=utf-8",
        include_str!("../ui/app.js"),
    ),
    (
        "/ui/style.css",
        "text/css; charset=utf-8",
        include_str!("../ui/style.css"),
    ),
];

pub fn router(member: Arc<Member>) -> Router {
    let mut router = Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/synod/v1/cluster", get(cluster));
    for (path, content_type, body) in ASSETS {
        router = router.route(path, get(move || async move { asset(content_type, body) }));
    }
    router.with_state(member)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // A new binary may bring new files under the same names: revalidate every time.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    response
}

/// Every member with its status, as Maintenance.Status answers it on that member (asked over
/// the peer link), and the leader changes it has seen. Any authenticated user may ask, as for
/// Maintenance.Status; a member that does not answer in time comes with an `error`.
async fn cluster(
    State(member): State<Arc<Member>>,
    HttpCredentials(credentials): HttpCredentials,
) -> Response {
    let allowed = crate::caller::http_allowed(&member, &credentials, |auth, caller| {
        auth.check_authenticated(caller)
    })
    .await;
    if let Err(refused) = allowed {
        return refused;
    }
    let records = match member.members() {
        Ok(records) => records,
        Err(error) => {
            let body = serde_json::json!({ "error": error.to_string() });
            return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
        }
    };
    let answers =
        futures::future::join_all(records.iter().map(|record| member_status(&member, record)))
            .await;
    Json(serde_json::json!({
        "cluster_id": member.cluster_id.to_string(),
        "member_id": member.member_id.to_string(),
        "members": answers,
    }))
    .into_response()
}

async fn member_status(member: &Member, record: &MemberRecord) -> serde_json::Value {
    let mut answer = serde_json::json!({
        "id": record.id.to_string(),
        "name": record.name,
        "peer_urls": record.peer_urls,
        "client_urls": record.client_urls,
        "is_learner": record.is_learner,
    });
    let status = if record.id == member.member_id {
        Ok((
            crate::maintenance::status(member),
            crate::metrics::metrics().leader_changes.get(),
        ))
    } else {
        peer_status(member, record.id).await
    };
    match status {
        Ok((status, leader_changes)) => {
            answer["status"] = serde_json::to_value(status).unwrap_or_default();
            answer["leader_changes"] = leader_changes.to_string().into();
        }
        Err(error) => answer["error"] = error.into(),
    }
    answer
}

async fn peer_status(
    member: &Member,
    id: u64,
) -> Result<(synod_api::etcdserverpb::StatusResponse, u64), String> {
    let mut client = member
        .transport()
        .client(id)
        .ok_or_else(|| "no link to this member".to_owned())?;
    let request = PeerStatusRequest {
        cluster_id: member.cluster_id,
    };
    match tokio::time::timeout(PEER_STATUS_TIMEOUT, client.status(request)).await {
        Ok(Ok(response)) => {
            let response = response.into_inner();
            Ok((response.status.unwrap_or_default(), response.leader_changes))
        }
        Ok(Err(status)) => Err(status.message().to_owned()),
        Err(_) => Err("did not answer within 1 s".to_owned()),
    }
}
