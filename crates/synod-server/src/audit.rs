//! The audit log (`--audit-log PATH`, beyond etcd): one JSON line per auth change, admin RPC
//! and refused request, saying who (user or certificate name), from where, what (the RPC or
//! gateway path), and the result. This is the middleware that decides what is recorded; the
//! file is [`crate::audit_log`]'s.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::audit_log::{Record, now};
use crate::caller::Credentials;
use crate::connection::RemoteAddress;
use crate::member::Member;

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

/// Who a request says it is, without side effects (a token's TTL is not renewed here).
fn who(member: &Member, request: &Request) -> String {
    Credentials::of_http(request.headers(), request.extensions()).user_hint(member)
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
        member.security.audit.record(Record {
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
    member.security.audit.record(Record {
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
}
