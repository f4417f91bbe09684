//! etcd's Auth service (etcd `v3rpc/auth.go`, `v3_server.go`): every change goes through the
//! log and is checked when applied (root only, once auth is on); reads answer from the member's
//! copy of the store after a ReadIndex round.
//!
//! Passwords are hashed here with bcrypt, on a blocking thread, before proposing: the log, the
//! state-machine file and snapshots only ever hold hashes (etcd 3.5+). `Authenticate` checks the
//! password against the local store and proposes only the user name and a random token prefix.

use std::sync::Arc;
use std::time::Instant;

use synod_api::etcdserverpb::auth_server::Auth;
use synod_api::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use synod_api::synodpb::internal_request::Request;
use synod_api::synodpb::{AuthHeader, InternalAuthenticateRequest};
use synod_core::RequestError;
use synod_core::apply::Response;
use synod_core::auth::Outcome;
use tonic::Status;

use crate::caller;
use crate::error::{Failure, ServerError};
use crate::login_guard::LoginGuard;
use crate::member::{Member, unexpected};

/// etcd's text for a password given for a user added with `--no-password`.
const NO_PASSWORD_USER: &str =
    "auth: authentication failed, password was given for no password user";
/// Letters of a simple token's random part (etcd: 16).
const TOKEN_LETTERS: usize = 16;

pub struct AuthService {
    member: Arc<Member>,
    logins: LoginGuard,
}

impl AuthService {
    pub fn new(member: Arc<Member>) -> AuthService {
        AuthService {
            member,
            logins: LoginGuard::default(),
        }
    }

    fn header(&self) -> Option<ResponseHeader> {
        Some(
            self.member
                .header(self.member.machine.store.current_revision()),
        )
    }

    /// Proposes a change for `caller` and waits until it is applied.
    async fn change(&self, caller: &AuthHeader, request: Request) -> Result<(), ServerError> {
        match self.member.propose_for(caller, request).await? {
            Response::Auth(Outcome::Changed { .. }) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Root may read anything; others only what `allowed` says (their own user, a role they
    /// hold).
    fn root_or(&self, caller: &AuthHeader, allowed: bool) -> Result<(), ServerError> {
        if !self.member.machine.auth.is_enabled() || allowed {
            return self
                .member
                .machine
                .auth
                .check_authenticated(caller)
                .map_err(ServerError::from);
        }
        self.member
            .machine
            .auth
            .check_root(caller)
            .map_err(ServerError::from)
    }
}

/// A bcrypt hash of `password` in Go's `$2a$` form, computed on a blocking thread (about 50 ms
/// at cost 10: it must not hold a runtime worker).
async fn hash_password(password: String, cost: u32) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || {
        bcrypt::hash_with_result(password.as_bytes(), cost)
            .map(|parts| parts.format_for_version(bcrypt::Version::TwoA))
    })
    .await
    .map_err(|_| Status::from(ServerError::Internal))?
    .map_err(|error| Failure::operation("hashing the password", error).into())
}

/// Whether `password` matches `hash`, on a blocking thread.
async fn password_matches(password: String, hash: Vec<u8>) -> Result<bool, ServerError> {
    tokio::task::spawn_blocking(move || {
        let hash = String::from_utf8_lossy(&hash);
        bcrypt::verify(password.as_bytes(), &hash).unwrap_or(false)
    })
    .await
    .map_err(|_| ServerError::Internal)
}

/// 16 random letters, the part of a simple token nobody can guess.
fn random_letters() -> Result<String, ServerError> {
    let mut bytes = [0u8; TOKEN_LETTERS];
    getrandom::getrandom(&mut bytes).map_err(|_| ServerError::Internal)?;
    Ok(bytes
        .iter()
        .map(|b| {
            let letter = b % 52;
            char::from(if letter < 26 {
                b'a' + letter
            } else {
                b'A' + letter - 26
            })
        })
        .collect())
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        request: tonic::Request<AuthEnableRequest>,
    ) -> Result<tonic::Response<AuthEnableResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::AuthEnable(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthEnableResponse {
            header: self.header(),
        }))
    }

    async fn auth_disable(
        &self,
        request: tonic::Request<AuthDisableRequest>,
    ) -> Result<tonic::Response<AuthDisableResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::AuthDisable(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthDisableResponse {
            header: self.header(),
        }))
    }

    async fn auth_status(
        &self,
        request: tonic::Request<AuthStatusRequest>,
    ) -> Result<tonic::Response<AuthStatusResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.member.read_barrier().await?;
        self.root_or(&caller, false)?;
        Ok(tonic::Response::new(AuthStatusResponse {
            header: self.header(),
            enabled: self.member.machine.auth.is_enabled(),
            auth_revision: self.member.machine.auth.revision(),
        }))
    }

    async fn authenticate(
        &self,
        request: tonic::Request<AuthenticateRequest>,
    ) -> Result<tonic::Response<AuthenticateResponse>, Status> {
        let address = crate::connection::remote_of(&request).map(|a| a.ip());
        let AuthenticateRequest { name, password } = request.into_inner();
        self.member.read_barrier().await?;
        if !self.member.machine.auth.is_enabled() {
            return Err(ServerError::from(RequestError::AuthNotEnabled).into());
        }
        if let Some(wait) = self.logins.wait(&name, address, Instant::now()) {
            tracing::warn!(user = %name, address = ?address, wait_ms = wait.as_millis() as u64, "login refused: too many failed attempts");
            return Err(ServerError::from(RequestError::AuthFailed).into());
        }
        let hash = match self.member.machine.auth.password_hash(&name) {
            Ok(Some(hash)) => hash,
            Ok(None) => return Err(Failure::Unmapped(NO_PASSWORD_USER).into()),
            Err(refused) => {
                // As slow as a wrong password, so a missing user cannot be told apart by time.
                let _ = password_matches(password, Vec::new()).await;
                self.logins.fail(&name, address, Instant::now());
                return Err(ServerError::from(refused).into());
            }
        };
        if !password_matches(password, hash).await? {
            tracing::info!(user = %name, address = ?address, "authentication failed: wrong password");
            self.logins.fail(&name, address, Instant::now());
            return Err(ServerError::from(RequestError::AuthFailed).into());
        }
        self.logins.succeed(&name, address);
        if let Some(jwt) = &self.member.security.jwt {
            // Stateless: signed here, verified by any member holding the key.
            let token = jwt
                .sign(
                    &name,
                    self.member.machine.auth.revision(),
                    caller::unix_now(),
                )
                .map_err(Failure::Unmapped)?;
            return Ok(tonic::Response::new(AuthenticateResponse {
                header: self.header(),
                token,
            }));
        }
        let request = Request::Authenticate(InternalAuthenticateRequest {
            name,
            simple_token: random_letters()?,
        });
        match self.member.propose(request).await? {
            Response::Auth(Outcome::Token(token)) => {
                Ok(tonic::Response::new(AuthenticateResponse {
                    header: self.header(),
                    token,
                }))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn user_add(
        &self,
        request: tonic::Request<AuthUserAddRequest>,
    ) -> Result<tonic::Response<AuthUserAddResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        let mut request = request.into_inner();
        if request.name.is_empty() {
            return Err(ServerError::from(RequestError::UserEmpty).into());
        }
        let no_password = request.options.as_ref().is_some_and(|o| o.no_password);
        let password = std::mem::take(&mut request.password);
        if !no_password && request.hashed_password.is_empty() {
            request.hashed_password =
                hash_password(password, self.member.config.bcrypt_cost).await?;
        }
        self.change(&caller, Request::UserAdd(request)).await?;
        Ok(tonic::Response::new(AuthUserAddResponse {
            header: self.header(),
        }))
    }

    async fn user_get(
        &self,
        request: tonic::Request<AuthUserGetRequest>,
    ) -> Result<tonic::Response<AuthUserGetResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        let name = request.into_inner().name;
        self.member.read_barrier().await?;
        self.root_or(&caller, caller.username == name)?;
        let roles = self
            .member
            .machine
            .auth
            .user(&name)
            .ok_or(ServerError::from(RequestError::UserNotFound))?;
        Ok(tonic::Response::new(AuthUserGetResponse {
            header: self.header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        request: tonic::Request<AuthUserListRequest>,
    ) -> Result<tonic::Response<AuthUserListResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.member.read_barrier().await?;
        self.root_or(&caller, false)?;
        Ok(tonic::Response::new(AuthUserListResponse {
            header: self.header(),
            users: self.member.machine.auth.users(),
        }))
    }

    async fn user_delete(
        &self,
        request: tonic::Request<AuthUserDeleteRequest>,
    ) -> Result<tonic::Response<AuthUserDeleteResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::UserDelete(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthUserDeleteResponse {
            header: self.header(),
        }))
    }

    async fn user_change_password(
        &self,
        request: tonic::Request<AuthUserChangePasswordRequest>,
    ) -> Result<tonic::Response<AuthUserChangePasswordResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        let mut request = request.into_inner();
        let password = std::mem::take(&mut request.password);
        if request.hashed_password.is_empty() {
            request.hashed_password =
                hash_password(password, self.member.config.bcrypt_cost).await?;
        }
        self.change(&caller, Request::UserChangePassword(request))
            .await?;
        Ok(tonic::Response::new(AuthUserChangePasswordResponse {
            header: self.header(),
        }))
    }

    async fn user_grant_role(
        &self,
        request: tonic::Request<AuthUserGrantRoleRequest>,
    ) -> Result<tonic::Response<AuthUserGrantRoleResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::UserGrantRole(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthUserGrantRoleResponse {
            header: self.header(),
        }))
    }

    async fn user_revoke_role(
        &self,
        request: tonic::Request<AuthUserRevokeRoleRequest>,
    ) -> Result<tonic::Response<AuthUserRevokeRoleResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::UserRevokeRole(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthUserRevokeRoleResponse {
            header: self.header(),
        }))
    }

    async fn role_add(
        &self,
        request: tonic::Request<AuthRoleAddRequest>,
    ) -> Result<tonic::Response<AuthRoleAddResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        if request.name.is_empty() {
            return Err(ServerError::from(RequestError::RoleEmpty).into());
        }
        self.change(&caller, Request::RoleAdd(request)).await?;
        Ok(tonic::Response::new(AuthRoleAddResponse {
            header: self.header(),
        }))
    }

    async fn role_get(
        &self,
        request: tonic::Request<AuthRoleGetRequest>,
    ) -> Result<tonic::Response<AuthRoleGetResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        let role = request.into_inner().role;
        self.member.read_barrier().await?;
        let holds = self
            .member
            .machine
            .auth
            .user(&caller.username)
            .is_some_and(|roles| roles.contains(&role));
        self.root_or(&caller, holds)?;
        let perm = self
            .member
            .machine
            .auth
            .role(&role)
            .ok_or(ServerError::from(RequestError::RoleNotFound))?;
        Ok(tonic::Response::new(AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        request: tonic::Request<AuthRoleListRequest>,
    ) -> Result<tonic::Response<AuthRoleListResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.member.read_barrier().await?;
        self.root_or(&caller, false)?;
        Ok(tonic::Response::new(AuthRoleListResponse {
            header: self.header(),
            roles: self.member.machine.auth.roles(),
        }))
    }

    async fn role_delete(
        &self,
        request: tonic::Request<AuthRoleDeleteRequest>,
    ) -> Result<tonic::Response<AuthRoleDeleteResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::RoleDelete(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthRoleDeleteResponse {
            header: self.header(),
        }))
    }

    async fn role_grant_permission(
        &self,
        request: tonic::Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<tonic::Response<AuthRoleGrantPermissionResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::RoleGrantPermission(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthRoleGrantPermissionResponse {
            header: self.header(),
        }))
    }

    async fn role_revoke_permission(
        &self,
        request: tonic::Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<tonic::Response<AuthRoleRevokePermissionResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.change(&caller, Request::RoleRevokePermission(request.into_inner()))
            .await?;
        Ok(tonic::Response::new(AuthRoleRevokePermissionResponse {
            header: self.header(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_letters() {
        let token = random_letters().expect("random");
        assert_eq!(token.len(), TOKEN_LETTERS);
        assert!(token.chars().all(|c| c.is_ascii_alphabetic()));
        assert_ne!(token, random_letters().expect("random"));
    }
}
