//! What a browser may do on the client port (etcd's `--cors` and `--host-whitelist`, safer by
//! default). Only browsers send `Origin`; command-line clients and gRPC libraries do not, and
//! are never affected.
//!
//! - A request with an `Origin` is served only if the origin is allowed by `--cors` (`*` for
//!   any, as etcd's default) or is the member's own origin: the same host and port as the
//!   request's, where that host is an IP address, `localhost` or a host of the advertised client
//!   URLs (a DNS-rebinding page, whose own name resolves to the member, is not). By default no
//!   other origin is allowed: a cross-origin `text/plain` POST from a web page to the JSON
//!   gateway is refused (etcd's default `*` executes it). Preflights (`OPTIONS`) are answered
//!   here, with etcd's CORS headers.
//! - `--host-whitelist` (etcd's): a plaintext request whose `Host` is not listed is answered
//!   421, as etcd does against DNS rebinding. Default `*` (any), as etcd.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::connection::Secure;

/// The browser policy of a client port.
#[derive(Debug, Clone)]
pub struct BrowserPolicy {
    /// `--cors`: allowed origins; `*` allows any.
    origins: Vec<String>,
    /// `--host-whitelist`: `None` allows any host.
    hosts: Option<Vec<String>>,
    /// Hosts that name this member (from the advertised client URLs).
    own_hosts: Vec<String>,
}

/// The host of `host[:port]` (brackets of an IPv6 address removed).
fn host_only(authority: &str) -> &str {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    host.trim_start_matches('[').trim_end_matches(']')
}

impl BrowserPolicy {
    pub fn new(
        cors: &[String],
        host_whitelist: &[String],
        advertise_urls: &[String],
    ) -> BrowserPolicy {
        let any_host = host_whitelist.is_empty() || host_whitelist.iter().any(|h| h == "*");
        BrowserPolicy {
            origins: cors.to_vec(),
            hosts: (!any_host).then(|| host_whitelist.to_vec()),
            own_hosts: advertise_urls
                .iter()
                .filter_map(|url| url.split_once("://").map(|(_, rest)| rest))
                .map(|rest| host_only(rest.trim_end_matches('/')).to_owned())
                .collect(),
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        match &self.hosts {
            None => true,
            Some(hosts) => hosts.iter().any(|h| h == host_only(host)),
        }
    }

    fn names_this_member(&self, host: &str) -> bool {
        let host = host_only(host);
        host == "localhost"
            || host.parse::<std::net::IpAddr>().is_ok()
            || self.own_hosts.iter().any(|own| own == host)
    }

    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        if self.origins.iter().any(|o| o == "*" || o == origin) {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let origin_authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        origin_authority == host && self.names_this_member(host)
    }
}

/// etcd's CORS headers for an allowed origin.
fn allow(response: &mut Response, origin: &HeaderValue, any: bool) {
    let headers = response.headers_mut();
    let value = if any {
        HeaderValue::from_static("*")
    } else {
        origin.clone()
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, GET, OPTIONS, PUT, DELETE"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("accept, content-type, authorization"),
    );
    if !any {
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

pub async fn middleware(
    State(policy): State<Arc<BrowserPolicy>>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    let secure = request.extensions().get::<Secure>().is_some();
    if !secure
        && let Some(host) = &host
        && !policy.host_allowed(host)
    {
        return (
            StatusCode::MISDIRECTED_REQUEST,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!(
                "This member does not serve host {host:?}: it is not in --host-whitelist \
                 (a protection against DNS rebinding).\n"
            ),
        )
            .into_response();
    }
    let Some(origin) = request.headers().get(header::ORIGIN).cloned() else {
        return next.run(request).await;
    };
    let text = origin.to_str().unwrap_or("");
    if !policy.origin_allowed(text, host.as_deref()) {
        tracing::info!(origin = %text, path = %request.uri().path(), "refused a cross-origin request (allow it with --cors)");
        let body = serde_json::json!({
            "error": format!("cross-origin request from {text:?} refused: allow the origin with --cors"),
            "code": 7,
            "message": format!("cross-origin request from {text:?} refused: allow the origin with --cors"),
        });
        return (StatusCode::FORBIDDEN, axum::Json(body)).into_response();
    }
    let any = policy.origins.iter().any(|o| o == "*");
    let mut response = if request.method() == Method::OPTIONS {
        StatusCode::OK.into_response()
    } else {
        next.run(request).await
    };
    allow(&mut response, &origin, any);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(cors: &[&str], hosts: &[&str]) -> BrowserPolicy {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        BrowserPolicy::new(
            &strings(cors),
            &strings(hosts),
            &["https://db1.example:2379".to_owned()],
        )
    }

    #[test]
    fn only_own_and_listed_origins_are_allowed() {
        let default = policy(&[], &[]);
        assert!(default.origin_allowed("http://127.0.0.1:2379", Some("127.0.0.1:2379")));
        assert!(default.origin_allowed("https://db1.example:2379", Some("db1.example:2379")));
        assert!(!default.origin_allowed("http://evil.example", Some("127.0.0.1:2379")));
        // DNS rebinding: the page's own name now points at the member.
        assert!(!default.origin_allowed("http://evil.example:2379", Some("evil.example:2379")));
        let listed = policy(&["http://console.example"], &[]);
        assert!(listed.origin_allowed("http://console.example", Some("127.0.0.1:2379")));
        assert!(policy(&["*"], &[]).origin_allowed("http://evil.example", None));
    }

    #[test]
    fn the_host_whitelist_is_by_host() {
        assert!(policy(&[], &["*"]).host_allowed("anything:1"));
        let listed = policy(&[], &["localhost", "10.0.0.1"]);
        assert!(listed.host_allowed("localhost:2379"));
        assert!(listed.host_allowed("10.0.0.1"));
        assert!(!listed.host_allowed("127.0.0.1:2379"));
    }
}
