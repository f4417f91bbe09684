//! etcd's error catalogue: the gRPC status code and the exact message of every error a client can
//! see. Clients (Go's clientv3, etcdctl) recognise errors by their message text, so these strings
//! are part of the wire contract (etcd `api/v3rpc/rpctypes/error.go`).

use tonic::Code;

/// One etcd error as a client sees it: a gRPC code and a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireError {
    pub code: Code,
    pub message: &'static str,
}

impl WireError {
    /// Returns the error as a gRPC status.
    pub fn status(&self) -> tonic::Status {
        tonic::Status::new(self.code, self.message)
    }
}

macro_rules! wire_errors {
    ($($name:ident = $code:ident, $message:literal;)*) => {
        $(pub const $name: WireError = WireError { code: Code::$code, message: $message };)*
        /// Every error of the catalogue, for lookups by message.
        pub const ALL: &[WireError] = &[$($name),*];
    };
}

wire_errors! {
    EMPTY_KEY = InvalidArgument, "etcdserver: key is not provided";
    KEY_NOT_FOUND = InvalidArgument, "etcdserver: key not found";
    VALUE_PROVIDED = InvalidArgument, "etcdserver: value is provided";
    LEASE_PROVIDED = InvalidArgument, "etcdserver: lease is provided";
    TOO_MANY_OPS = InvalidArgument, "etcdserver: too many operations in txn request";
    DUPLICATE_KEY = InvalidArgument, "etcdserver: duplicate key given in txn request";
    INVALID_SORT_OPTION = InvalidArgument, "etcdserver: invalid sort option";
    COMPACTED = OutOfRange, "etcdserver: mvcc: required revision has been compacted";
    FUTURE_REV = OutOfRange, "etcdserver: mvcc: required revision is a future revision";
    NO_SPACE = ResourceExhausted, "etcdserver: mvcc: database space exceeded";
    LEASE_NOT_FOUND = NotFound, "etcdserver: requested lease not found";
    LEASE_EXIST = FailedPrecondition, "etcdserver: lease already exists";
    LEASE_TTL_TOO_LARGE = OutOfRange, "etcdserver: too large lease TTL";
    WATCH_CANCELED = Cancelled, "etcdserver: watch canceled";
    MEMBER_EXIST = FailedPrecondition, "etcdserver: member ID already exist";
    PEER_URL_EXIST = FailedPrecondition, "etcdserver: Peer URLs already exists";
    MEMBER_NOT_ENOUGH_STARTED = FailedPrecondition, "etcdserver: re-configuration failed due to not enough started members";
    MEMBER_BAD_URLS = InvalidArgument, "etcdserver: given member URLs are invalid";
    MEMBER_NOT_FOUND = NotFound, "etcdserver: member not found";
    MEMBER_NOT_LEARNER = FailedPrecondition, "etcdserver: can only promote a learner member";
    LEARNER_NOT_READY = FailedPrecondition, "etcdserver: can only promote a learner member which is in sync with leader";
    TOO_MANY_LEARNERS = FailedPrecondition, "etcdserver: too many learner members in cluster";
    CLUSTER_ID_MISMATCH = FailedPrecondition, "etcdserver: cluster ID mismatch";
    REQUEST_TOO_LARGE = InvalidArgument, "etcdserver: request is too large";
    TOO_MANY_REQUESTS = ResourceExhausted, "etcdserver: too many requests";
    ROOT_USER_NOT_EXIST = FailedPrecondition, "etcdserver: root user does not exist";
    ROOT_ROLE_NOT_EXIST = FailedPrecondition, "etcdserver: root user does not have root role";
    USER_ALREADY_EXIST = FailedPrecondition, "etcdserver: user name already exists";
    USER_EMPTY = InvalidArgument, "etcdserver: user name is empty";
    USER_NOT_FOUND = FailedPrecondition, "etcdserver: user name not found";
    ROLE_ALREADY_EXIST = FailedPrecondition, "etcdserver: role name already exists";
    ROLE_NOT_FOUND = FailedPrecondition, "etcdserver: role name not found";
    ROLE_EMPTY = InvalidArgument, "etcdserver: role name is empty";
    AUTH_FAILED = InvalidArgument, "etcdserver: authentication failed, invalid user ID or password";
    PERMISSION_NOT_GIVEN = InvalidArgument, "etcdserver: permission not given";
    PERMISSION_DENIED = PermissionDenied, "etcdserver: permission denied";
    ROLE_NOT_GRANTED = FailedPrecondition, "etcdserver: role is not granted to the user";
    PERMISSION_NOT_GRANTED = FailedPrecondition, "etcdserver: permission is not granted to the role";
    AUTH_NOT_ENABLED = FailedPrecondition, "etcdserver: authentication is not enabled";
    INVALID_AUTH_TOKEN = Unauthenticated, "etcdserver: invalid auth token";
    INVALID_AUTH_MGMT = InvalidArgument, "etcdserver: invalid auth management";
    AUTH_OLD_REVISION = InvalidArgument, "etcdserver: revision of auth store is old";
    NO_LEADER = Unavailable, "etcdserver: no leader";
    NOT_LEADER = FailedPrecondition, "etcdserver: not leader";
    LEADER_CHANGED = Unavailable, "etcdserver: leader changed";
    NOT_CAPABLE = FailedPrecondition, "etcdserver: not capable";
    STOPPED = Unavailable, "etcdserver: server stopped";
    TIMEOUT = Unavailable, "etcdserver: request timed out";
    TIMEOUT_DUE_TO_LEADER_FAIL = Unavailable, "etcdserver: request timed out, possibly due to previous leader failure";
    TIMEOUT_DUE_TO_CONNECTION_LOST = Unavailable, "etcdserver: request timed out, possibly due to connection lost";
    TIMEOUT_WAIT_APPLIED_INDEX = Unavailable, "etcdserver: request timed out, waiting for the applied index took too long";
    UNHEALTHY = Unavailable, "etcdserver: unhealthy cluster";
    CORRUPT = DataLoss, "etcdserver: corrupt cluster";
    // Synod's own: etcd stops on a failed disk read; a Synod member answers so the client can
    // try another member, and stops if a write fails.
    STORAGE_FAILURE = Unavailable, "etcdserver: storage failure on this member";
    INTERNAL = Internal, "etcdserver: internal error";
    UNSUPPORTED = Unimplemented, "etcdserver: not supported by this server";
    NOT_SUPPORTED_FOR_LEARNER = FailedPrecondition, "etcdserver: rpc not supported for learner";
    BAD_LEADER_TRANSFEREE = FailedPrecondition, "etcdserver: bad leader transferee";
    CANCELED = Cancelled, "etcdserver: request canceled";
    DEADLINE_EXCEEDED = DeadlineExceeded, "etcdserver: context deadline exceeded";
    // Synod's own (`synod migrate`), with etcd's prefix so clients treat them alike.
    IMPORT_NOT_EMPTY = FailedPrecondition, "etcdserver: import target is not empty";
    IMPORT_REVISION_PAST = FailedPrecondition, "etcdserver: import revision is not after the store's revision";
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every message is unique and carries etcd's prefix: clients map errors back by text.
    #[test]
    fn messages_are_unique_and_prefixed() {
        let mut seen = std::collections::HashSet::new();
        for error in ALL {
            assert!(
                error.message.starts_with("etcdserver: "),
                "{}",
                error.message
            );
            assert!(
                seen.insert(error.message),
                "duplicate message {}",
                error.message
            );
        }
    }
}
