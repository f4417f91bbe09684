//! Errors of the core. Expected outcomes of requests (a failed compare, a missing key in a range)
//! are values, not errors; these are the refusals a client sees, and storage failures.

use std::path::Path;

/// Why the state machine refused a request. Mapped to etcd's code and message at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("required revision has been compacted")]
    Compacted,
    #[error("required revision is a future revision")]
    FutureRevision,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("requested lease not found")]
    LeaseNotFound,
    #[error("lease already exists")]
    LeaseExists,
    #[error("too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("database space exceeded")]
    NoSpace,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("key is not provided")]
    EmptyKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("member not found")]
    MemberNotFound,
    #[error("raft refused the configuration change")]
    ConfChangeRefused,
    #[error("member ID already exist")]
    MemberExists,
    #[error("re-configuration failed due to not enough started members")]
    NotEnoughStarted,
    #[error("too many learner members in cluster")]
    TooManyLearners,
    #[error("can only promote a learner member")]
    MemberNotLearner,
    #[error("can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("Peer URLs already exists")]
    PeerUrlExists,
    #[error("root user does not exist")]
    RootUserNotExist,
    #[error("root user does not have root role")]
    RootRoleNotExist,
    #[error("user name already exists")]
    UserAlreadyExists,
    #[error("user name is empty")]
    UserEmpty,
    #[error("user name not found")]
    UserNotFound,
    #[error("role name already exists")]
    RoleAlreadyExists,
    #[error("role name not found")]
    RoleNotFound,
    #[error("role name is empty")]
    RoleEmpty,
    #[error("authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("permission not given")]
    PermissionNotGiven,
    #[error("permission denied")]
    PermissionDenied,
    #[error("role is not granted to the user")]
    RoleNotGranted,
    #[error("permission is not granted to the role")]
    PermissionNotGranted,
    #[error("authentication is not enabled")]
    AuthNotEnabled,
    #[error("invalid auth token")]
    InvalidAuthToken,
    #[error("invalid auth management")]
    InvalidAuthMgmt,
    #[error("revision of auth store is old")]
    AuthOldRevision,
    #[error("import target is not empty")]
    ImportNotEmpty,
    #[error("import revision is not after the store's revision")]
    ImportRevisionPast,
}

/// A failure of the disk or of a file's contents. The member cannot go on safely after one.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("opening {path}: {message}")]
    Open { path: String, message: String },
    #[error("state-machine file: {0}")]
    Backend(String),
    #[error("raft log: {0}")]
    Log(String),
    #[error("corrupt data: {what}")]
    Corrupt { what: String },
    #[error("a lock was poisoned by a panic")]
    Poisoned,
}

impl StorageError {
    pub fn open(path: &Path, source: impl std::fmt::Display) -> StorageError {
        StorageError::Open {
            path: path.display().to_string(),
            message: source.to_string(),
        }
    }

    pub fn backend(source: impl Into<redb::Error>) -> StorageError {
        StorageError::Backend(source.into().to_string())
    }

    pub fn log(source: impl std::fmt::Display) -> StorageError {
        StorageError::Log(source.to_string())
    }

    pub fn corrupt(what: impl Into<String>) -> StorageError {
        StorageError::Corrupt { what: what.into() }
    }
}

/// Either a refusal or a storage failure, for paths that can meet both.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Storage(#[from] StorageError),
}
