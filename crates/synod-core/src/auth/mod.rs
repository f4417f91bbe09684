//! etcd's auth store: users, roles and their key permissions, the switch, the auth revision and
//! the simple tokens (etcd `server/auth/store.go`).
//!
//! Users and roles live in the state-machine file (tables `auth_users`, `auth_roles`; the switch
//! and the revision in `meta`) and are changed only by applying log entries, so every member
//! holds the same store. [`AuthStore`] keeps a copy in memory for the request handlers, which
//! check reads (and refuse early) with it; writes are checked again when applied, against the
//! store as of their place in the log.
//!
//! Passwords arrive hashed (the proposing member hashed them off the apply path); tokens live
//! only in memory, on every member, like etcd's simple tokens. Time comes from the caller (the
//! core has no clock): a token's TTL runs from its last use.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prost::Message;
use redb::ReadableTable;
use synod_api::authpb::{Permission, Role, User, UserAddOptions};
use synod_api::etcdserverpb::{
    AuthRoleGrantPermissionRequest, AuthRoleRevokePermissionRequest, AuthUserAddRequest,
    AuthUserChangePasswordRequest,
};
use synod_api::synodpb::AuthHeader;

use crate::backend::{self, AUTH_ROLES, AUTH_USERS, META};
use crate::error::{RequestError, StorageError};

mod perms;

pub use perms::{Perms, valid_permission_range};

/// The name of the all-powerful user and role.
pub const ROOT: &str = "root";

/// An Auth-service change, as proposed (see `synodpb.InternalRequest`).
#[derive(Debug, Clone)]
pub enum Change {
    Enable,
    Disable,
    UserAdd(AuthUserAddRequest),
    UserDelete(String),
    UserChangePassword(AuthUserChangePasswordRequest),
    UserGrantRole {
        user: String,
        role: String,
    },
    UserRevokeRole {
        user: String,
        role: String,
    },
    RoleAdd(String),
    RoleDelete(String),
    RoleGrantPermission(AuthRoleGrantPermissionRequest),
    RoleRevokePermission(AuthRoleRevokePermissionRequest),
    /// A checked password, turned into the token `<simple_token>.<index>`.
    Authenticate {
        name: String,
        simple_token: String,
    },
}

/// What an applied change answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The store changed (or was already as asked); the auth revision after it.
    Changed { revision: u64 },
    /// A token was issued.
    Token(String),
}

/// Read or write access to keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

#[derive(Debug, Default)]
struct Token {
    user: String,
    /// Milliseconds (on the caller's clock) of the last successful use; `None` until the first
    /// use or sweep starts its TTL.
    last_used_ms: Option<u64>,
}

#[derive(Debug, Default)]
struct State {
    enabled: bool,
    revision: u64,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Role>,
    /// Per user, the merged permissions of its roles (rebuilt after any change).
    perms: HashMap<String, Arc<Perms>>,
    tokens: HashMap<String, Token>,
}

/// The auth store shared by the apply path and the request handlers (module docs).
#[derive(Debug, Default)]
pub struct AuthStore {
    state: Mutex<State>,
    /// Copies of `state.enabled` and `state.revision`, for the questions every request asks
    /// without taking the lock (written under it).
    enabled: AtomicBool,
    revision: AtomicU64,
}

fn read_state(tx: &redb::ReadTransaction) -> Result<State, StorageError> {
    let mut state = State {
        revision: 1,
        ..State::default()
    };
    let meta = tx.open_table(META).map_err(StorageError::backend)?;
    state.enabled = backend::read_meta_u64(&meta, backend::META_AUTH_ENABLED)? == 1;
    state.revision = backend::read_meta_u64(&meta, backend::META_AUTH_REVISION)?.max(1);
    let decode = |what: &str, e: prost::DecodeError| StorageError::corrupt(format!("{what}: {e}"));
    match tx.open_table(AUTH_USERS) {
        Ok(table) => {
            for entry in table.iter().map_err(StorageError::backend)? {
                let (name, bytes) = entry.map_err(StorageError::backend)?;
                let user = User::decode(bytes.value()).map_err(|e| decode("auth user", e))?;
                state.users.insert(name.value().to_owned(), user);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(StorageError::backend(error)),
    }
    match tx.open_table(AUTH_ROLES) {
        Ok(table) => {
            for entry in table.iter().map_err(StorageError::backend)? {
                let (name, bytes) = entry.map_err(StorageError::backend)?;
                let role = Role::decode(bytes.value()).map_err(|e| decode("auth role", e))?;
                state.roles.insert(name.value().to_owned(), role);
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(error) => return Err(StorageError::backend(error)),
    }
    Ok(state)
}

impl State {
    fn is_root(&self, user: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|u| u.roles.iter().any(|r| r == ROOT))
    }

    fn perms(&mut self, user: &str) -> Arc<Perms> {
        if let Some(perms) = self.perms.get(user) {
            return perms.clone();
        }
        let roles = &self.roles;
        let perms = Arc::new(Perms::new(
            self.users
                .get(user)
                .into_iter()
                .flat_map(|u| u.roles.iter())
                .filter_map(|r| roles.get(r))
                .flat_map(|r| r.key_permission.iter()),
        ));
        self.perms.insert(user.to_owned(), perms.clone());
        perms
    }

    /// The checks every request of a caller goes through once auth is on.
    fn caller<'a>(&self, caller: &'a AuthHeader) -> Result<&'a str, RequestError> {
        if caller.username.is_empty() {
            return Err(RequestError::UserEmpty);
        }
        if caller.auth_revision < self.revision {
            return Err(RequestError::AuthOldRevision);
        }
        Ok(&caller.username)
    }

    fn check_root(&self, caller: Option<&AuthHeader>) -> Result<(), RequestError> {
        if !self.enabled {
            return Ok(());
        }
        let Some(caller) = caller else {
            return Ok(());
        };
        let user = self.caller(caller)?;
        if !self.users.contains_key(user) {
            return Err(RequestError::UserNotFound);
        }
        if !self.is_root(user) {
            return Err(RequestError::PermissionDenied);
        }
        Ok(())
    }

    fn forget_tokens_of(&mut self, user: &str) {
        self.tokens.retain(|_, token| token.user != user);
    }
}

impl AuthStore {
    /// Reads the store from the state-machine file.
    pub fn open(tx: &redb::ReadTransaction) -> Result<AuthStore, StorageError> {
        let state = read_state(tx)?;
        let store = AuthStore::default();
        store.publish(&state);
        *store.lock() = state;
        Ok(store)
    }

    /// Mirrors the switch and the revision for lock-free readers.
    fn publish(&self, state: &State) {
        self.enabled.store(state.enabled, Ordering::Release);
        self.revision.store(state.revision, Ordering::Release);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Replaces users, roles and the switch with those in `tx` (after a snapshot was installed);
    /// tokens are kept, and checked against the new users when used.
    pub fn reload(&self, tx: &redb::ReadTransaction) -> Result<(), StorageError> {
        let fresh = read_state(tx)?;
        let mut state = self.lock();
        let tokens = std::mem::take(&mut state.tokens);
        *state = fresh;
        state.tokens = tokens;
        self.publish(&state);
        Ok(())
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    /// The auth revision: it grows with every change to users, roles or permissions.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The header for a caller known by name (`""` for one without credentials).
    pub fn header(&self, username: &str) -> AuthHeader {
        AuthHeader {
            username: username.to_owned(),
            auth_revision: self.revision(),
        }
    }

    /// Checks that `caller` may `access` `[key, range_end)` (etcd's request form: empty
    /// `range_end` for one key, `"\0"` for everything from `key`). Passes when auth is off.
    pub fn check_keys(
        &self,
        caller: &AuthHeader,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), RequestError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let mut state = self.lock();
        if !state.enabled {
            return Ok(());
        }
        let user = state.caller(caller)?;
        if state.is_root(user) {
            return Ok(());
        }
        let perms = state.perms(user);
        let allowed = match access {
            Access::Read => perms.may_read(key, range_end),
            Access::Write => perms.may_write(key, range_end),
        };
        if allowed {
            Ok(())
        } else {
            Err(RequestError::PermissionDenied)
        }
    }

    /// Checks that `caller` is authenticated and may `access` each of `keys` (root may access
    /// any): what a lease's keys need. Passes when auth is off.
    pub fn check_each_key(
        &self,
        caller: &AuthHeader,
        access: Access,
        keys: &[Vec<u8>],
    ) -> Result<(), RequestError> {
        self.check_authenticated(caller)?;
        if self.is_root(caller) {
            return Ok(());
        }
        for key in keys {
            self.check_keys(caller, access, key, &[])?;
        }
        Ok(())
    }

    /// Checks that `caller` holds the root role. Passes when auth is off.
    pub fn check_root(&self, caller: &AuthHeader) -> Result<(), RequestError> {
        if !self.is_enabled() {
            return Ok(());
        }
        self.lock().check_root(Some(caller))
    }

    /// Checks that `caller` is an authenticated user. Passes when auth is off.
    pub fn check_authenticated(&self, caller: &AuthHeader) -> Result<(), RequestError> {
        if !self.is_enabled() {
            return Ok(());
        }
        let state = self.lock();
        if !state.enabled {
            return Ok(());
        }
        state.caller(caller).map(|_| ())
    }

    /// Whether `caller` holds the root role (and auth is on).
    pub fn is_root(&self, caller: &AuthHeader) -> bool {
        if !self.is_enabled() {
            return false;
        }
        let state = self.lock();
        state.enabled && state.is_root(&caller.username)
    }

    /// The user a simple token stands for, renewing its TTL; `None` if it is unknown or expired.
    pub fn token_user(&self, token: &str, now_ms: u64, ttl_ms: u64) -> Option<String> {
        let mut state = self.lock();
        let entry = state.tokens.get_mut(token)?;
        if entry
            .last_used_ms
            .is_some_and(|used| now_ms.saturating_sub(used) > ttl_ms)
        {
            state.tokens.remove(token);
            return None;
        }
        entry.last_used_ms = Some(now_ms);
        Some(entry.user.clone())
    }

    /// The user of a known token, without renewing it (for logs).
    pub fn peek_token_user(&self, token: &str) -> Option<String> {
        self.lock().tokens.get(token).map(|t| t.user.clone())
    }

    /// Drops tokens unused for longer than `ttl_ms`, and starts the TTL of tokens never used.
    pub fn sweep_tokens(&self, now_ms: u64, ttl_ms: u64) {
        self.lock().tokens.retain(|_, token| {
            let used = *token.last_used_ms.get_or_insert(now_ms);
            now_ms.saturating_sub(used) <= ttl_ms
        });
    }

    /// The stored hash of `name`'s password: `Ok(None)` for a user added without one.
    pub fn password_hash(&self, name: &str) -> Result<Option<Vec<u8>>, RequestError> {
        let state = self.lock();
        let user = state.users.get(name).ok_or(RequestError::AuthFailed)?;
        if user.options.as_ref().is_some_and(|o| o.no_password) {
            return Ok(None);
        }
        Ok(Some(user.password.clone()))
    }

    /// A user's roles.
    pub fn user(&self, name: &str) -> Option<Vec<String>> {
        self.lock().users.get(name).map(|u| u.roles.clone())
    }

    /// Every user's name, sorted.
    pub fn users(&self) -> Vec<String> {
        self.lock().users.keys().cloned().collect()
    }

    /// A role's permissions (the root role answers with one covering everything, as etcd's).
    pub fn role(&self, name: &str) -> Option<Vec<Permission>> {
        let state = self.lock();
        let role = state.roles.get(name)?;
        if name == ROOT {
            return Some(vec![Permission {
                perm_type: synod_api::authpb::permission::Type::Readwrite as i32,
                key: Vec::new(),
                range_end: vec![0],
            }]);
        }
        Some(role.key_permission.clone())
    }

    /// Every role's name, sorted.
    pub fn roles(&self) -> Vec<String> {
        self.lock().roles.keys().cloned().collect()
    }

    /// Applies one change in `tx` (the apply batch's transaction) at log `index`, checking that
    /// `caller` may make it.
    pub(crate) fn apply(
        &self,
        tx: &redb::WriteTransaction,
        caller: Option<&AuthHeader>,
        change: Change,
        index: u64,
    ) -> Result<Result<Outcome, RequestError>, StorageError> {
        let mut state = self.lock();
        if let Change::Authenticate { name, simple_token } = change {
            if !state.enabled {
                return Ok(Err(RequestError::AuthNotEnabled));
            }
            if !state.users.contains_key(&name) {
                return Ok(Err(RequestError::AuthFailed));
            }
            let token = format!("{simple_token}.{index}");
            state.tokens.insert(
                token.clone(),
                Token {
                    user: name,
                    last_used_ms: None,
                },
            );
            return Ok(Ok(Outcome::Token(token)));
        }
        // Every change is root's once auth is on (enabling it again too); free while it is off.
        if let Err(refused) = state.check_root(caller) {
            return Ok(Err(refused));
        }
        let mut writes = Writes::default();
        let outcome = change_state(&mut state, change, &mut writes);
        if outcome.is_ok() {
            writes.commit(tx, &state)?;
            state.perms.clear();
            self.publish(&state);
        }
        let revision = state.revision;
        Ok(outcome.map(|()| Outcome::Changed { revision }))
    }
}

/// Rows a change touched, written to the file after the in-memory state accepted it.
#[derive(Default)]
struct Writes {
    users: Vec<String>,
    roles: Vec<String>,
    meta: bool,
}

impl Writes {
    fn commit(self, tx: &redb::WriteTransaction, state: &State) -> Result<(), StorageError> {
        if !self.users.is_empty() {
            let mut table = tx.open_table(AUTH_USERS).map_err(StorageError::backend)?;
            for name in &self.users {
                match state.users.get(name) {
                    Some(user) => {
                        table
                            .insert(name.as_str(), user.encode_to_vec().as_slice())
                            .map_err(StorageError::backend)?;
                    }
                    None => {
                        table.remove(name.as_str()).map_err(StorageError::backend)?;
                    }
                }
            }
        }
        if !self.roles.is_empty() {
            let mut table = tx.open_table(AUTH_ROLES).map_err(StorageError::backend)?;
            for name in &self.roles {
                match state.roles.get(name) {
                    Some(role) => {
                        table
                            .insert(name.as_str(), role.encode_to_vec().as_slice())
                            .map_err(StorageError::backend)?;
                    }
                    None => {
                        table.remove(name.as_str()).map_err(StorageError::backend)?;
                    }
                }
            }
        }
        if self.meta {
            let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
            backend::write_meta_u64(
                &mut meta,
                backend::META_AUTH_ENABLED,
                u64::from(state.enabled),
            )?;
            backend::write_meta_u64(&mut meta, backend::META_AUTH_REVISION, state.revision)?;
        }
        Ok(())
    }
}

/// Applies `change` to the in-memory `state` with etcd's rules, noting the rows to write.
fn change_state(
    state: &mut State,
    change: Change,
    writes: &mut Writes,
) -> Result<(), RequestError> {
    match change {
        Change::Enable => {
            if state.enabled {
                return Ok(());
            }
            let root = state
                .users
                .get(ROOT)
                .ok_or(RequestError::RootUserNotExist)?;
            if !root.roles.iter().any(|r| r == ROOT) {
                return Err(RequestError::RootRoleNotExist);
            }
            state.enabled = true;
            state.tokens.clear();
            writes.meta = true;
        }
        Change::Disable => {
            if !state.enabled {
                return Ok(());
            }
            state.enabled = false;
            state.tokens.clear();
            bump(state, writes);
        }
        Change::UserAdd(request) => {
            if request.name.is_empty() {
                return Err(RequestError::UserEmpty);
            }
            if state.users.contains_key(&request.name) {
                return Err(RequestError::UserAlreadyExists);
            }
            let no_password = request.options.as_ref().is_some_and(|o| o.no_password);
            let user = User {
                name: request.name.clone().into_bytes(),
                password: if no_password {
                    Vec::new()
                } else {
                    request.hashed_password.into_bytes()
                },
                roles: Vec::new(),
                options: Some(UserAddOptions { no_password }),
            };
            state.users.insert(request.name.clone(), user);
            writes.users.push(request.name);
            bump(state, writes);
        }
        Change::UserDelete(name) => {
            if state.enabled && name == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            state
                .users
                .remove(&name)
                .ok_or(RequestError::UserNotFound)?;
            state.forget_tokens_of(&name);
            writes.users.push(name);
            bump(state, writes);
        }
        Change::UserChangePassword(request) => {
            let user = state
                .users
                .get_mut(&request.name)
                .ok_or(RequestError::UserNotFound)?;
            user.password = request.hashed_password.into_bytes();
            user.options = Some(UserAddOptions { no_password: false });
            state.forget_tokens_of(&request.name);
            writes.users.push(request.name);
            bump(state, writes);
        }
        Change::UserGrantRole { user, role } => {
            if role != ROOT && !state.roles.contains_key(&role) {
                return Err(RequestError::RoleNotFound);
            }
            let record = state
                .users
                .get_mut(&user)
                .ok_or(RequestError::UserNotFound)?;
            if record.roles.contains(&role) {
                return Ok(());
            }
            record.roles.push(role);
            record.roles.sort();
            writes.users.push(user);
            bump(state, writes);
        }
        Change::UserRevokeRole { user, role } => {
            if state.enabled && user == ROOT && role == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            let record = state
                .users
                .get_mut(&user)
                .ok_or(RequestError::UserNotFound)?;
            let before = record.roles.len();
            record.roles.retain(|r| *r != role);
            if record.roles.len() == before {
                return Err(RequestError::RoleNotGranted);
            }
            writes.users.push(user);
            bump(state, writes);
        }
        Change::RoleAdd(name) => {
            if name.is_empty() {
                return Err(RequestError::RoleEmpty);
            }
            if state.roles.contains_key(&name) {
                return Err(RequestError::RoleAlreadyExists);
            }
            state.roles.insert(
                name.clone(),
                Role {
                    name: name.clone().into_bytes(),
                    key_permission: Vec::new(),
                },
            );
            writes.roles.push(name);
            bump(state, writes);
        }
        Change::RoleDelete(name) => {
            if state.enabled && name == ROOT {
                return Err(RequestError::InvalidAuthMgmt);
            }
            state
                .roles
                .remove(&name)
                .ok_or(RequestError::RoleNotFound)?;
            for (user_name, user) in state.users.iter_mut() {
                if user.roles.contains(&name) {
                    user.roles.retain(|r| *r != name);
                    writes.users.push(user_name.clone());
                }
            }
            writes.roles.push(name);
            bump(state, writes);
        }
        Change::RoleGrantPermission(request) => {
            let permission = request.perm.ok_or(RequestError::PermissionNotGiven)?;
            if !valid_permission_range(&permission.key, &permission.range_end) {
                return Err(RequestError::InvalidAuthMgmt);
            }
            let role = state
                .roles
                .get_mut(&request.name)
                .ok_or(RequestError::RoleNotFound)?;
            match role
                .key_permission
                .iter_mut()
                .find(|p| p.key == permission.key && p.range_end == permission.range_end)
            {
                Some(existing) => existing.perm_type = permission.perm_type,
                None => {
                    role.key_permission.push(permission);
                    role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            writes.roles.push(request.name);
            bump(state, writes);
        }
        Change::RoleRevokePermission(request) => {
            let role = state
                .roles
                .get_mut(&request.role)
                .ok_or(RequestError::RoleNotFound)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| !(p.key == request.key && p.range_end == request.range_end));
            if role.key_permission.len() == before {
                return Err(RequestError::PermissionNotGranted);
            }
            writes.roles.push(request.role);
            bump(state, writes);
        }
        Change::Authenticate { .. } => {}
    }
    Ok(())
}

/// Every successful change to users or roles moves the auth revision (etcd's `authRevision`).
fn bump(state: &mut State, writes: &mut Writes) {
    state.revision += 1;
    writes.meta = true;
}
