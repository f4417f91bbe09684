//! Who makes a request: the credentials it came with (a token in the `token` or `authorization`
//! metadata, or the CN of the TLS client certificate under `--client-cert-auth`) resolved
//! against the auth store into an [`AuthHeader`], which the checks and the log entry carry.
//!
//! While auth is off every request resolves to the anonymous header (no user, the current auth
//! revision); a write proposed then and applied after auth was switched on is refused ("user
//! name is empty"), as in etcd.

use std::time::Duration;

use synod_api::synodpb::AuthHeader;
use synod_core::RequestError;

use crate::connection::{ClientCertificate, RemoteAddress, remote_of};
use crate::error::ServerError;
use crate::member::Member;

/// How long a request waits for this member to apply the entry that issued its token (a client
/// that authenticated through another member and came here right away).
const TOKEN_APPLY_WAIT: Duration = Duration::from_secs(5);

/// The credentials of a request, not yet resolved.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    common_name: Option<String>,
    remote: Option<std::net::SocketAddr>,
}

/// A token from etcd's metadata keys: `token`, or `authorization` (what the gateway and some
/// clients send), with an optional `Bearer ` prefix.
fn token_from(value: Option<&str>) -> Option<String> {
    let value = value?.trim();
    let value = value.strip_prefix("Bearer ").unwrap_or(value).trim();
    (!value.is_empty()).then(|| value.to_owned())
}

impl Credentials {
    /// The credentials of a gRPC request.
    pub fn of<T>(request: &tonic::Request<T>) -> Credentials {
        let metadata = request.metadata();
        let text = |key: &str| metadata.get(key).and_then(|v| v.to_str().ok());
        Credentials {
            token: token_from(text("token")).or_else(|| token_from(text("authorization"))),
            common_name: request
                .extensions()
                .get::<ClientCertificate>()
                .map(|c| c.common_name.clone()),
            remote: remote_of(request),
        }
    }

    /// The credentials of a JSON-gateway request: the `Authorization` header, and the client
    /// certificate of its connection.
    pub fn of_http(
        headers: &axum::http::HeaderMap,
        extensions: &axum::http::Extensions,
    ) -> Credentials {
        let text = |key| headers.get(key).and_then(|v| v.to_str().ok());
        Credentials {
            token: token_from(text("token")).or_else(|| token_from(text("authorization"))),
            common_name: extensions
                .get::<ClientCertificate>()
                .map(|c| c.common_name.clone()),
            remote: extensions.get::<RemoteAddress>().map(|r| r.0),
        }
    }

    /// Copies these credentials onto a request the gateway builds for a service.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(remote) = self.remote {
            request.extensions_mut().insert(RemoteAddress(remote));
        }
        if let Some(token) = &self.token
            && let Ok(value) = token.parse()
        {
            request.metadata_mut().insert("token", value);
        }
        if let Some(common_name) = &self.common_name {
            request.extensions_mut().insert(ClientCertificate {
                common_name: common_name.clone(),
            });
        }
    }

    /// Who these credentials name, without side effects (for logs).
    pub fn user_hint(&self, member: &Member) -> String {
        let by_token = self
            .token
            .as_deref()
            .and_then(|token| match &member.security.jwt {
                Some(jwt) => jwt.verify(token, unix_now()).map(|(user, _)| user),
                None => member.machine.auth.peek_token_user(token),
            });
        by_token
            .or_else(|| self.common_name.clone())
            .unwrap_or_default()
    }

    /// The client's address, if known.
    pub fn remote(&self) -> Option<std::net::SocketAddr> {
        self.remote
    }
}

/// The credentials of an HTTP request (its `Authorization` header and its connection's client
/// certificate), as an axum extractor for the gateway and the HTTP endpoints.
pub struct HttpCredentials(pub Credentials);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for HttpCredentials {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(HttpCredentials(Credentials::of_http(
            &parts.headers,
            &parts.extensions,
        )))
    }
}

/// The caller of a request to one of Synod's own HTTP endpoints, if `check` lets it through;
/// a refusal is their 403 answer, `{"error": message}` with etcd's message.
pub async fn http_allowed(
    member: &Member,
    credentials: &Credentials,
    check: impl FnOnce(&synod_core::auth::AuthStore, &AuthHeader) -> Result<(), RequestError>,
) -> Result<AuthHeader, axum::response::Response> {
    use axum::response::IntoResponse;
    let allowed = resolve(member, credentials).await.and_then(|caller| {
        check(&member.machine.auth, &caller)?;
        Ok(caller)
    });
    allowed.map_err(|refused| {
        let status = tonic::Status::from(refused);
        let body = serde_json::json!({ "error": status.message() });
        (axum::http::StatusCode::FORBIDDEN, axum::Json(body)).into_response()
    })
}

/// Resolves `credentials` into the header the request is checked and proposed with.
pub async fn resolve(
    member: &Member,
    credentials: &Credentials,
) -> Result<AuthHeader, ServerError> {
    let auth = &member.machine.auth;
    if !auth.is_enabled() {
        return Ok(auth.header(""));
    }
    if let Some(token) = &credentials.token {
        return resolve_token(member, token).await;
    }
    if let Some(common_name) = &credentials.common_name {
        return Ok(auth.header(common_name));
    }
    Ok(auth.header(""))
}

/// Resolves the credentials of a gRPC request.
pub async fn of<T>(
    member: &Member,
    request: &tonic::Request<T>,
) -> Result<AuthHeader, ServerError> {
    // Every request passes here: with auth off, skip reading and copying its credentials.
    if !member.machine.auth.is_enabled() {
        return Ok(member.machine.auth.header(""));
    }
    resolve(member, &Credentials::of(request)).await
}

/// Seconds since the Unix epoch, the clock of JWT expiry.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The caller of a gRPC request that only root may make (admin RPCs).
pub async fn root<T>(
    member: &Member,
    request: &tonic::Request<T>,
) -> Result<AuthHeader, ServerError> {
    let caller = of(member, request).await?;
    member.machine.auth.check_root(&caller)?;
    Ok(caller)
}

/// The caller of a gRPC request that any authenticated user may make.
pub async fn user<T>(
    member: &Member,
    request: &tonic::Request<T>,
) -> Result<AuthHeader, ServerError> {
    let caller = of(member, request).await?;
    member.machine.auth.check_authenticated(&caller)?;
    Ok(caller)
}

async fn resolve_token(member: &Member, token: &str) -> Result<AuthHeader, ServerError> {
    if let Some(jwt) = &member.security.jwt {
        // The token names its user and the auth revision it was issued at: a change to users
        // or roles since then refuses it ("revision of auth store is old").
        return match jwt.verify(token, unix_now()) {
            Some((username, auth_revision)) => Ok(AuthHeader {
                username,
                auth_revision,
            }),
            None => Err(ServerError::Request(RequestError::InvalidAuthToken)),
        };
    }
    let (now_ms, ttl_ms) = (member.clock_ms(), member.config.auth_token_ttl_ms);
    if let Some(user) = member.machine.auth.token_user(token, now_ms, ttl_ms) {
        return Ok(member.machine.auth.header(&user));
    }
    // `<letters>.<index>`: issued at a log index this member may not have applied yet.
    let issued_at = token
        .rsplit_once('.')
        .and_then(|(_, index)| index.parse::<u64>().ok());
    if let Some(index) = issued_at
        && member
            .wait_for(TOKEN_APPLY_WAIT, |progress| progress.applied_index >= index)
            .await
        && let Some(user) = member
            .machine
            .auth
            .token_user(token, member.clock_ms(), ttl_ms)
    {
        return Ok(member.machine.auth.header(&user));
    }
    Err(ServerError::Request(RequestError::InvalidAuthToken))
}
