//! Permission checks of client writes at apply time (etcd `apply_auth.go`): against the auth
//! store as of the entry's place in the log, so a permission taken away before a write is
//! applied holds, however long ago the write was proposed.

use synod_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RequestOp, TxnRequest, alarm_request::AlarmAction, request_op,
};
use synod_api::synodpb::AuthHeader;
use synod_api::synodpb::internal_request::Request;

use crate::auth::{Access, AuthStore};
use crate::error::RequestError;
use crate::lease::Lessor;

/// Checks that `caller` may make `request`. Requests of the Auth service check themselves (see
/// `AuthStore::apply`); the member's own requests carry no caller and are not checked.
pub(super) fn check(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &AuthHeader,
    request: &Request,
) -> Result<(), RequestError> {
    if !auth.is_enabled() {
        return Ok(());
    }
    match request {
        Request::Put(put) => check_put(auth, lessor, caller, put),
        Request::DeleteRange(delete) => check_delete(auth, caller, delete),
        Request::Txn(txn) => check_txn(auth, lessor, caller, txn),
        Request::LeaseRevoke(revoke) => check_lease_keys(auth, lessor, caller, revoke.id),
        Request::LeaseGrant(_) => auth.check_authenticated(caller),
        Request::Alarm(alarm) if alarm.action == AlarmAction::Get as i32 => {
            auth.check_authenticated(caller)
        }
        Request::Compaction(_)
        | Request::Alarm(_)
        | Request::MemberUpdate(_)
        | Request::ImportBase(_)
        | Request::ImportRevision(_) => auth.check_root(caller),
        // Only members propose these, without a caller.
        Request::LeaseCheckpoint(_) | Request::MemberAttributes(_) => Ok(()),
        _ => Ok(()),
    }
}

fn check_put(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &AuthHeader,
    put: &PutRequest,
) -> Result<(), RequestError> {
    auth.check_keys(caller, Access::Write, &put.key, &[])?;
    if put.prev_kv {
        auth.check_keys(caller, Access::Read, &put.key, &[])?;
    }
    if put.lease != 0 {
        // Attaching a key to a lease lets its revoke delete the lease's other keys: the caller
        // must be able to write those too.
        check_lease_keys(auth, lessor, caller, put.lease)?;
    }
    Ok(())
}

fn check_delete(
    auth: &AuthStore,
    caller: &AuthHeader,
    delete: &DeleteRangeRequest,
) -> Result<(), RequestError> {
    auth.check_keys(caller, Access::Write, &delete.key, &delete.range_end)?;
    if delete.prev_kv {
        auth.check_keys(caller, Access::Read, &delete.key, &delete.range_end)?;
    }
    Ok(())
}

/// Every compare and every operation of both branches, nested txns included.
fn check_txn(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &AuthHeader,
    txn: &TxnRequest,
) -> Result<(), RequestError> {
    for compare in &txn.compare {
        auth.check_keys(caller, Access::Read, &compare.key, &compare.range_end)?;
    }
    for op in txn.success.iter().chain(&txn.failure) {
        check_op(auth, lessor, caller, op)?;
    }
    Ok(())
}

fn check_op(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &AuthHeader,
    op: &RequestOp,
) -> Result<(), RequestError> {
    match &op.request {
        Some(request_op::Request::RequestRange(range)) => {
            auth.check_keys(caller, Access::Read, &range.key, &range.range_end)
        }
        Some(request_op::Request::RequestPut(put)) => check_put(auth, lessor, caller, put),
        Some(request_op::Request::RequestDeleteRange(delete)) => check_delete(auth, caller, delete),
        Some(request_op::Request::RequestTxn(txn)) => check_txn(auth, lessor, caller, txn),
        None => Ok(()),
    }
}

/// WRITE on every key attached to `lease` (root is exempt).
pub fn check_lease_keys(
    auth: &AuthStore,
    lessor: &Lessor,
    caller: &AuthHeader,
    lease: i64,
) -> Result<(), RequestError> {
    let keys = lessor.info(lease).map(|info| info.keys).unwrap_or_default();
    auth.check_each_key(caller, Access::Write, &keys)
}
