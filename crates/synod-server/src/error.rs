//! The one place where failures become etcd's wire errors (code and exact message).

use synod_api::errors::{self, WireError};
use synod_core::driver::DriverError;
use synod_core::{RequestError, StorageError};

/// Why the server could not serve a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no leader")]
    NoLeader,
    #[error("leader changed")]
    LeaderChanged,
    #[error("server stopped")]
    Stopped,
    #[error("request timed out")]
    Timeout,
    #[error("too many requests")]
    TooManyRequests,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("storage failure")]
    Storage,
    #[error("not leader")]
    NotLeader,
    #[error("corrupt cluster")]
    Corrupt,
    #[error("bad leader transferee")]
    BadLeaderTransferee,
    /// A bug: an answer of the wrong kind (logged where it was found).
    #[error("internal error")]
    Internal,
    /// A message over the transport's limit, refused as grpc-go refuses it.
    #[error("message larger than {limit} bytes")]
    MessageTooLarge { length: usize, limit: usize },
    #[error("given member URLs are invalid")]
    BadMemberUrls,
    #[error("cluster ID mismatch")]
    ClusterIdMismatch,
    /// An API etcd has that Synod does not implement.
    #[error("{0}")]
    Unsupported(&'static str),
}

/// Failures that carry their own words (a maintenance operation that failed on this member, a
/// malformed request at the edges, a peer's refusal). Like every failure, they become a gRPC
/// status here and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{what} failed: {detail}")]
    Operation { what: &'static str, detail: String },
    #[error("invalid request body: {0}")]
    BadBody(String),
    #[error("{0}")]
    BadPeerRequest(String),
    /// A peer that may not talk to this member (removed, or addressed to another member).
    #[error("{0}")]
    PeerRefused(String),
    /// A member removed from the cluster still sends messages: it must stop.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// The fault-injecting transport of the tests cut this peer off.
    #[error("partitioned")]
    Partitioned,
    /// etcd's concurrency API answers its own errors with code Unknown.
    #[error("{0}")]
    Recipe(&'static str),
    /// An etcd error with no gRPC mapping, which etcd answers as Unknown with its own text.
    #[error("{0}")]
    Unmapped(&'static str),
}

impl Failure {
    pub fn operation(what: &'static str, detail: impl std::fmt::Display) -> Failure {
        Failure::Operation {
            what,
            detail: detail.to_string(),
        }
    }
}

impl From<Failure> for tonic::Status {
    fn from(failure: Failure) -> tonic::Status {
        let message = failure.to_string();
        match failure {
            Failure::Operation { .. } => tonic::Status::internal(message),
            Failure::BadBody(_) | Failure::BadPeerRequest(_) => {
                tonic::Status::invalid_argument(message)
            }
            Failure::PeerRefused(_) => tonic::Status::failed_precondition(message),
            Failure::Removed => {
                let mut status = tonic::Status::failed_precondition(message);
                status.metadata_mut().insert(
                    REMOVED_MARK,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                status
            }
            Failure::Partitioned => tonic::Status::unavailable(message),
            Failure::Recipe(_) | Failure::Unmapped(_) => tonic::Status::unknown(message),
        }
    }
}

/// The metadata key that marks a peer's "you were removed" refusal (a typed signal, so the
/// receiver does not have to recognise a message's text).
const REMOVED_MARK: &str = "synod-removed";

/// Whether a peer's refusal says this member was removed from the cluster.
pub fn is_removed_refusal(status: &tonic::Status) -> bool {
    status.metadata().contains_key(REMOVED_MARK)
}

/// tonic's answer to a gRPC call of a method nobody serves.
pub fn unimplemented_http() -> axum::response::Response {
    tonic::Status::unimplemented("").into_http()
}

impl From<DriverError> for ServerError {
    fn from(error: DriverError) -> ServerError {
        match error {
            DriverError::Refused(refused) => ServerError::Request(refused),
            DriverError::NoLeader => ServerError::NoLeader,
            DriverError::LeaderChanged => ServerError::LeaderChanged,
            DriverError::NotLeader => ServerError::NotLeader,
            DriverError::TooManyRequests => ServerError::TooManyRequests,
            DriverError::BadLeaderTransferee => ServerError::BadLeaderTransferee,
            DriverError::Timeout => ServerError::Timeout,
            DriverError::Storage => ServerError::Storage,
        }
    }
}

impl From<synod_core::Error> for ServerError {
    fn from(error: synod_core::Error) -> ServerError {
        match error {
            synod_core::Error::Request(refused) => ServerError::Request(refused),
            synod_core::Error::Storage(failure) => failure.into(),
        }
    }
}

impl From<StorageError> for ServerError {
    fn from(failure: StorageError) -> ServerError {
        tracing::error!(error = %failure, "storage failure while serving a request");
        ServerError::Storage
    }
}

/// Maps a refusal of the state machine to etcd's error.
pub fn request_wire_error(error: RequestError) -> WireError {
    match error {
        RequestError::Compacted => errors::COMPACTED,
        RequestError::FutureRevision => errors::FUTURE_REV,
        RequestError::KeyNotFound => errors::KEY_NOT_FOUND,
        RequestError::ValueProvided => errors::VALUE_PROVIDED,
        RequestError::LeaseProvided => errors::LEASE_PROVIDED,
        RequestError::LeaseNotFound => errors::LEASE_NOT_FOUND,
        RequestError::LeaseExists => errors::LEASE_EXIST,
        RequestError::LeaseTtlTooLarge => errors::LEASE_TTL_TOO_LARGE,
        RequestError::NoSpace => errors::NO_SPACE,
        RequestError::DuplicateKey => errors::DUPLICATE_KEY,
        RequestError::TooManyOps => errors::TOO_MANY_OPS,
        RequestError::EmptyKey => errors::EMPTY_KEY,
        RequestError::InvalidSortOption => errors::INVALID_SORT_OPTION,
        RequestError::MemberNotFound => errors::MEMBER_NOT_FOUND,
        RequestError::ConfChangeRefused => errors::UNHEALTHY,
        RequestError::MemberExists => errors::MEMBER_EXIST,
        RequestError::NotEnoughStarted => errors::MEMBER_NOT_ENOUGH_STARTED,
        RequestError::TooManyLearners => errors::TOO_MANY_LEARNERS,
        RequestError::MemberNotLearner => errors::MEMBER_NOT_LEARNER,
        RequestError::LearnerNotReady => errors::LEARNER_NOT_READY,
        RequestError::PeerUrlExists => errors::PEER_URL_EXIST,
        RequestError::RootUserNotExist => errors::ROOT_USER_NOT_EXIST,
        RequestError::RootRoleNotExist => errors::ROOT_ROLE_NOT_EXIST,
        RequestError::UserAlreadyExists => errors::USER_ALREADY_EXIST,
        RequestError::UserEmpty => errors::USER_EMPTY,
        RequestError::UserNotFound => errors::USER_NOT_FOUND,
        RequestError::RoleAlreadyExists => errors::ROLE_ALREADY_EXIST,
        RequestError::RoleNotFound => errors::ROLE_NOT_FOUND,
        RequestError::RoleEmpty => errors::ROLE_EMPTY,
        RequestError::AuthFailed => errors::AUTH_FAILED,
        RequestError::PermissionNotGiven => errors::PERMISSION_NOT_GIVEN,
        RequestError::PermissionDenied => errors::PERMISSION_DENIED,
        RequestError::RoleNotGranted => errors::ROLE_NOT_GRANTED,
        RequestError::PermissionNotGranted => errors::PERMISSION_NOT_GRANTED,
        RequestError::AuthNotEnabled => errors::AUTH_NOT_ENABLED,
        RequestError::InvalidAuthToken => errors::INVALID_AUTH_TOKEN,
        RequestError::InvalidAuthMgmt => errors::INVALID_AUTH_MGMT,
        RequestError::AuthOldRevision => errors::AUTH_OLD_REVISION,
        RequestError::ImportNotEmpty => errors::IMPORT_NOT_EMPTY,
        RequestError::ImportRevisionPast => errors::IMPORT_REVISION_PAST,
    }
}

impl ServerError {
    /// etcd's code and message for this failure.
    pub fn wire(self) -> WireError {
        match self {
            ServerError::Request(refused) => request_wire_error(refused),
            ServerError::NoLeader => errors::NO_LEADER,
            ServerError::LeaderChanged => errors::LEADER_CHANGED,
            ServerError::Stopped => errors::STOPPED,
            ServerError::Timeout => errors::TIMEOUT,
            ServerError::TooManyRequests => errors::TOO_MANY_REQUESTS,
            ServerError::RequestTooLarge => errors::REQUEST_TOO_LARGE,
            // A disk that fails a read is this member's trouble, not a corrupt cluster: the
            // client should try another member.
            ServerError::Storage => errors::STORAGE_FAILURE,
            ServerError::Internal => errors::INTERNAL,
            ServerError::MessageTooLarge { .. } => errors::REQUEST_TOO_LARGE,
            ServerError::BadMemberUrls => errors::MEMBER_BAD_URLS,
            ServerError::ClusterIdMismatch => errors::CLUSTER_ID_MISMATCH,
            ServerError::Unsupported(_) => errors::UNSUPPORTED,
            ServerError::NotLeader => errors::NOT_LEADER,
            ServerError::Corrupt => errors::CORRUPT,
            ServerError::BadLeaderTransferee => errors::BAD_LEADER_TRANSFEREE,
        }
    }
}

impl From<ServerError> for tonic::Status {
    fn from(error: ServerError) -> tonic::Status {
        match error {
            // grpc-go's own refusal (etcd answers it from its gRPC layer, not its catalogue).
            ServerError::MessageTooLarge { length, limit } => {
                synod_api::codec::message_too_large(length, limit)
            }
            ServerError::Unsupported(message) => tonic::Status::unimplemented(message),
            other => other.wire().status(),
        }
    }
}
