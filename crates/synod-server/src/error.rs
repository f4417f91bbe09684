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
    MessageTooLarge { limit: usize },
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
            ServerError::MessageTooLarge { limit } => tonic::Status::resource_exhausted(format!(
                "grpc: received message larger than max (more than {limit} bytes)"
            )),
            other => other.wire().status(),
        }
    }
}
