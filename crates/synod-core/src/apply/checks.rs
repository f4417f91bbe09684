//! Checks a request passes before its first write, so that a refused txn is never half
//! applied: `ignore_*` puts against what exists (and against the txn's own deletes), leases.

use super::*;

pub(super) fn check_put(
    view: &impl ReadView,
    lessor: &Lessor,
    put: &PutRequest,
) -> Result<(), Error> {
    if put.ignore_value || put.ignore_lease {
        let found = view.range(&put.key, &[], RangeOptions::default())?;
        if found.kvs.is_empty() {
            return Err(RequestError::KeyNotFound.into());
        }
    }
    if put.lease != 0 && !lessor.contains(put.lease) {
        return Err(RequestError::LeaseNotFound.into());
    }
    Ok(())
}

/// Checks the ops of the branches a txn will take against the state before it (etcd `checkTxn`).
/// Returns whether a txn's compares held (the next step of `path`) and the ops of that branch.
pub(super) fn taken_branch<'a>(
    request: &'a TxnRequest,
    path: &mut impl Iterator<Item = bool>,
) -> (bool, &'a [RequestOp]) {
    let succeeded = path.next().expect("the path has one entry per txn");
    (
        succeeded,
        if succeeded {
            &request.success
        } else {
            &request.failure
        },
    )
}

/// A write made by an earlier op of the txn being checked.
pub(super) enum Written {
    Put(Vec<u8>),
    /// A deleted range, spelled as the request spelled it.
    Deleted(Vec<u8>, Vec<u8>),
}

/// etcd checks `ignore_value` and `ignore_lease` puts against the state before the txn, so a txn
/// that deletes a key and then puts it with `ignore_value` passes every check and fails midway
/// (etcd 3.4 panics on it; its duplicate-key check reads a `"\0"` range end literally and lets
/// it through). Synod follows the taken branches in order, tracking what earlier ops wrote, and
/// refuses such a txn whole with "key not found".
pub(super) fn check_ignore_targets(
    view: &RevisionTxn<'_, '_>,
    request: &TxnRequest,
    path: &mut impl Iterator<Item = bool>,
    written: &mut Vec<Written>,
) -> Result<(), Error> {
    let (_, ops) = taken_branch(request, path);
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(put)) => {
                if put.ignore_value || put.ignore_lease {
                    let latest = written.iter().rev().find_map(|write| match write {
                        Written::Put(key) if *key == put.key => Some(true),
                        Written::Deleted(key, end)
                            if KeyRange::new(key, end).contains(&put.key) =>
                        {
                            Some(false)
                        }
                        _ => None,
                    });
                    let exists = match latest {
                        Some(exists) => exists,
                        None => !view
                            .range(&put.key, &[], RangeOptions::default())?
                            .kvs
                            .is_empty(),
                    };
                    if !exists {
                        return Err(RequestError::KeyNotFound.into());
                    }
                }
                written.push(Written::Put(put.key.clone()));
            }
            Some(request_op::Request::RequestDeleteRange(delete)) => {
                written.push(Written::Deleted(
                    delete.key.clone(),
                    delete.range_end.clone(),
                ));
            }
            Some(request_op::Request::RequestTxn(nested)) => {
                check_ignore_targets(view, nested, path, written)?
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn check_txn(
    view: &RevisionTxn<'_, '_>,
    lessor: &Lessor,
    request: &TxnRequest,
    path: &mut impl Iterator<Item = bool>,
) -> Result<(), Error> {
    let (_, ops) = taken_branch(request, path);
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestRange(range)) => {
                let current = view.read_revision();
                if range.revision > current {
                    return Err(RequestError::FutureRevision.into());
                }
                if range.revision != 0 && range.revision < view.compact_revision() {
                    return Err(RequestError::Compacted.into());
                }
            }
            Some(request_op::Request::RequestPut(put)) => check_put(view, lessor, put)?,
            Some(request_op::Request::RequestTxn(nested)) => check_txn(view, lessor, nested, path)?,
            _ => {}
        }
    }
    Ok(())
}
