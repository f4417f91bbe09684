//! Request checks done before anything is proposed, with etcd's rules and errors
//! (etcd `v3rpc/key.go`).

use std::collections::HashSet;

use synod_api::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    range_request::{SortOrder, SortTarget},
    request_op::Request,
};
use synod_core::RequestError;

pub fn check_range(request: &RangeRequest) -> Result<(), RequestError> {
    if request.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if SortOrder::try_from(request.sort_order).is_err()
        || SortTarget::try_from(request.sort_target).is_err()
    {
        return Err(RequestError::InvalidSortOption);
    }
    Ok(())
}

pub fn check_put(request: &PutRequest) -> Result<(), RequestError> {
    if request.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    if request.ignore_value && !request.value.is_empty() {
        return Err(RequestError::ValueProvided);
    }
    if request.ignore_lease && request.lease != 0 {
        return Err(RequestError::LeaseProvided);
    }
    Ok(())
}

pub fn check_delete(request: &DeleteRangeRequest) -> Result<(), RequestError> {
    if request.key.is_empty() {
        return Err(RequestError::EmptyKey);
    }
    Ok(())
}

/// Deepest txn nesting accepted. Each level is two protobuf message levels, and the decoder
/// that reads a Raft entry back stops at 100; etcd has no such limit, but a txn nested this deep
/// is refused with etcd's "too many operations" error rather than proposed.
pub const TXN_NESTING_MAX: usize = 32;

/// Checks sizes, nesting and every op, then that no branch writes a key twice.
pub fn check_txn(request: &TxnRequest, ops_max: usize) -> Result<(), RequestError> {
    if nesting(request) > TXN_NESTING_MAX {
        return Err(RequestError::TooManyOps);
    }
    check_txn_ops(request, ops_max)?;
    check_intervals(&request.success)?;
    check_intervals(&request.failure)?;
    Ok(())
}

/// How deep txns nest inside `request` (1 for a txn with no nested txn).
fn nesting(request: &TxnRequest) -> usize {
    let deepest = request
        .success
        .iter()
        .chain(&request.failure)
        .filter_map(|op| match &op.request {
            Some(Request::RequestTxn(nested)) => Some(nesting(nested)),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    1 + deepest
}

fn check_txn_ops(request: &TxnRequest, ops_max: usize) -> Result<(), RequestError> {
    let ops = request
        .compare
        .len()
        .max(request.success.len())
        .max(request.failure.len());
    if ops > ops_max {
        return Err(RequestError::TooManyOps);
    }
    if request.compare.iter().any(|c| c.key.is_empty()) {
        return Err(RequestError::EmptyKey);
    }
    for op in request.success.iter().chain(&request.failure) {
        check_op(op, ops_max - ops)?;
    }
    Ok(())
}

fn check_op(op: &RequestOp, ops_max: usize) -> Result<(), RequestError> {
    match &op.request {
        Some(Request::RequestRange(range)) => check_range(range),
        Some(Request::RequestPut(put)) => check_put(put),
        Some(Request::RequestDeleteRange(delete)) => check_delete(delete),
        Some(Request::RequestTxn(txn)) => check_txn_ops(txn, ops_max),
        None => Err(RequestError::KeyNotFound),
    }
}

/// A deleted range as etcd's duplicate check sees it: `range_end` taken literally, so `"\0"`
/// makes an empty interval there (as in etcd).
#[derive(Debug, Clone)]
struct Deleted {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Deleted {
    fn contains(&self, key: &[u8]) -> bool {
        match &self.end {
            None => key == self.start.as_slice(),
            Some(end) => key >= self.start.as_slice() && key < end.as_slice(),
        }
    }
}

/// Returns the keys put and ranges deleted by `ops` (and nested txns), or `DuplicateKey` when a
/// key is written twice on one path (etcd `checkIntervals`).
fn check_intervals(ops: &[RequestOp]) -> Result<(HashSet<Vec<u8>>, Vec<Deleted>), RequestError> {
    let mut deletes: Vec<Deleted> = ops
        .iter()
        .filter_map(|op| match &op.request {
            Some(Request::RequestDeleteRange(delete)) => Some(Deleted {
                start: delete.key.clone(),
                end: (!delete.range_end.is_empty()).then(|| delete.range_end.clone()),
            }),
            _ => None,
        })
        .collect();
    let mut puts: HashSet<Vec<u8>> = HashSet::new();
    for op in ops {
        let Some(Request::RequestTxn(nested)) = &op.request else {
            continue;
        };
        let (puts_then, deletes_then) = check_intervals(&nested.success)?;
        let (puts_else, deletes_else) = check_intervals(&nested.failure)?;
        for key in &puts_then {
            if puts.contains(key) || deletes.iter().any(|d| d.contains(key)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        for key in &puts_else {
            // The two branches exclude each other: a key put in both is fine.
            if puts.contains(key) && !puts_then.contains(key) {
                return Err(RequestError::DuplicateKey);
            }
            if deletes.iter().any(|d| d.contains(key)) {
                return Err(RequestError::DuplicateKey);
            }
            puts.insert(key.clone());
        }
        deletes.extend(deletes_then);
        deletes.extend(deletes_else);
    }
    for op in ops {
        let Some(Request::RequestPut(put)) = &op.request else {
            continue;
        };
        if puts.contains(&put.key) || deletes.iter().any(|d| d.contains(&put.key)) {
            return Err(RequestError::DuplicateKey);
        }
        puts.insert(put.key.clone());
    }
    Ok((puts, deletes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(key: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestPut(PutRequest {
                key: key.into(),
                ..PutRequest::default()
            })),
        }
    }

    fn delete(key: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Request::RequestDeleteRange(DeleteRangeRequest {
                key: key.into(),
                range_end: end.into(),
                ..DeleteRangeRequest::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_writes_are_refused_as_etcd_does() {
        assert_eq!(
            check_txn(&txn(vec![put("a"), put("a")], vec![]), 128),
            Err(RequestError::DuplicateKey)
        );
        assert_eq!(
            check_txn(&txn(vec![delete("a", "c"), put("b")], vec![]), 128),
            Err(RequestError::DuplicateKey)
        );
        assert_eq!(check_txn(&txn(vec![put("a")], vec![put("a")]), 128), Ok(()));
        let nested = RequestOp {
            request: Some(Request::RequestTxn(txn(vec![put("x")], vec![put("x")]))),
        };
        assert_eq!(check_txn(&txn(vec![nested.clone()], vec![]), 128), Ok(()));
        assert_eq!(
            check_txn(&txn(vec![nested, put("x")], vec![]), 128),
            Err(RequestError::DuplicateKey)
        );
        // etcd reads a "\0" range end literally here, so this is not a duplicate.
        assert_eq!(
            check_txn(&txn(vec![delete("a", "\0"), put("b")], vec![]), 128),
            Ok(())
        );
    }

    /// Regression (found in review): a txn nested 50 deep passed the gRPC decoder but not the one
    /// that reads Raft entries back, and stopped the member on every replay.
    #[test]
    fn deep_nesting_is_refused_before_proposing() {
        let mut txn = TxnRequest::default();
        for _ in 0..50 {
            txn = TxnRequest {
                compare: vec![],
                success: vec![RequestOp {
                    request: Some(Request::RequestTxn(txn)),
                }],
                failure: vec![],
            };
        }
        assert_eq!(check_txn(&txn, 128), Err(RequestError::TooManyOps));
        let mut shallow = TxnRequest::default();
        for _ in 0..TXN_NESTING_MAX - 1 {
            shallow = TxnRequest {
                compare: vec![],
                success: vec![RequestOp {
                    request: Some(Request::RequestTxn(shallow)),
                }],
                failure: vec![],
            };
        }
        assert_eq!(check_txn(&shallow, 128), Ok(()));
    }

    #[test]
    fn limits_and_empty_ops() {
        let many = txn((0..3).map(|i| put(&i.to_string())).collect(), vec![]);
        assert_eq!(check_txn(&many, 2), Err(RequestError::TooManyOps));
        assert_eq!(
            check_txn(&txn(vec![RequestOp { request: None }], vec![]), 128),
            Err(RequestError::KeyNotFound)
        );
        assert_eq!(
            check_put(&PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                ignore_value: true,
                ..PutRequest::default()
            }),
            Err(RequestError::ValueProvided)
        );
    }
}
