//! The read side of apply: ranges, compares and a txn's path through its branches, shared by
//! readers (serializable and linearizable ranges) and the write batch.

use super::*;

/// A read view: the store as a reader sees it, or a request inside a write batch.
pub trait ReadView {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, Error>;

    /// Where the ranges served through this view are counted.
    fn counters(&self) -> &crate::counters::MvccCounters;
}

impl ReadView for KvStore {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, Error> {
        KvStore::range(self, key, range_end, options)
    }

    fn counters(&self) -> &crate::counters::MvccCounters {
        KvStore::counters(self)
    }
}

impl ReadView for RevisionTxn<'_, '_> {
    fn range(
        &self,
        key: &[u8],
        range_end: &[u8],
        options: RangeOptions,
    ) -> Result<RangeResult, Error> {
        RevisionTxn::range(self, key, range_end, options)
    }

    fn counters(&self) -> &crate::counters::MvccCounters {
        RevisionTxn::counters(self)
    }
}

/// Serves a `RangeRequest` with etcd's rules for limits, filters and sorting.
pub fn execute_range(view: &impl ReadView, request: &RangeRequest) -> Result<RangeResponse, Error> {
    view.counters().ranges.inc();
    let filtered = request.min_mod_revision != 0
        || request.max_mod_revision != 0
        || request.min_create_revision != 0
        || request.max_create_revision != 0;
    let mut limit = request.limit.max(0) as usize;
    if request.sort_order != SortOrder::None as i32 || filtered {
        // Everything is fetched, then filtered, sorted and truncated.
        limit = 0;
    }
    if limit > 0 {
        // One extra tells whether there is more.
        limit += 1;
    }
    let options = RangeOptions {
        revision: request.revision,
        limit,
        count_only: request.count_only,
    };
    let mut result = view.range(&request.key, &request.range_end, options)?;
    let kvs = &mut result.kvs;
    if request.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= request.max_mod_revision);
    }
    if request.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= request.min_mod_revision);
    }
    if request.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= request.max_create_revision);
    }
    if request.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= request.min_create_revision);
    }
    let target =
        SortTarget::try_from(request.sort_target).map_err(|_| RequestError::InvalidSortOption)?;
    let mut order =
        SortOrder::try_from(request.sort_order).map_err(|_| RequestError::InvalidSortOption)?;
    if target != SortTarget::Key && order == SortOrder::None {
        order = SortOrder::Ascend;
    } else if target == SortTarget::Key && order == SortOrder::Ascend {
        // Results already come in ascending key order.
        order = SortOrder::None;
    }
    if order != SortOrder::None {
        // A stable sort: ties keep key order. (etcd's sort is not stable, so its order among
        // ties is unspecified; the differential test compares ties as sets.)
        match target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    let mut more = false;
    if request.limit > 0 && kvs.len() > request.limit as usize {
        kvs.truncate(request.limit as usize);
        more = true;
    }
    if request.keys_only {
        for kv in kvs.iter_mut() {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: Some(ResponseHeader {
            revision: result.revision,
            ..ResponseHeader::default()
        }),
        kvs: std::mem::take(&mut result.kvs),
        more,
        count: result.count,
    })
}

/// Evaluates one compare against a read view (etcd `applyCompare`).
pub fn compare_holds(view: &impl ReadView, compare: &Compare) -> Result<bool, Error> {
    let kvs = match view.range(&compare.key, &compare.range_end, RangeOptions::default()) {
        Ok(result) => result.kvs,
        Err(Error::Request(_)) => return Ok(false),
        Err(other) => return Err(other),
    };
    if kvs.is_empty() {
        if compare.target == CompareTarget::Value as i32 {
            // A missing key has no value to compare: such a compare always fails.
            return Ok(false);
        }
        return Ok(compare_kv(compare, &KeyValue::default()));
    }
    Ok(kvs.iter().all(|kv| compare_kv(compare, kv)))
}

pub(super) fn compare_kv(compare: &Compare, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let operand = |expected: &dyn Fn(&TargetUnion) -> Option<i64>| {
        compare
            .target_union
            .as_ref()
            .and_then(expected)
            .unwrap_or(0)
    };
    let ordering = match CompareTarget::try_from(compare.target) {
        Ok(CompareTarget::Value) => {
            let value = match &compare.target_union {
                Some(TargetUnion::Value(value)) => value.as_slice(),
                _ => &[],
            };
            kv.value.as_slice().cmp(value)
        }
        Ok(CompareTarget::Create) => kv.create_revision.cmp(&operand(&|t| match t {
            TargetUnion::CreateRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Mod) => kv.mod_revision.cmp(&operand(&|t| match t {
            TargetUnion::ModRevision(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Version) => kv.version.cmp(&operand(&|t| match t {
            TargetUnion::Version(v) => Some(*v),
            _ => None,
        })),
        Ok(CompareTarget::Lease) => kv.lease.cmp(&operand(&|t| match t {
            TargetUnion::Lease(v) => Some(*v),
            _ => None,
        })),
        Err(_) => Ordering::Equal,
    };
    match CompareResult::try_from(compare.result) {
        Ok(CompareResult::Equal) => ordering == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ordering != Ordering::Equal,
        Ok(CompareResult::Greater) => ordering == Ordering::Greater,
        Ok(CompareResult::Less) => ordering == Ordering::Less,
        Err(_) => true,
    }
}

/// The branch each (nested) txn takes, in depth-first order (etcd `compareToPath`).
pub(super) fn txn_path(
    view: &impl ReadView,
    txn: &TxnRequest,
    path: &mut Vec<bool>,
) -> Result<(), Error> {
    let mut succeeded = true;
    for compare in &txn.compare {
        if !compare_holds(view, compare)? {
            succeeded = false;
            break;
        }
    }
    path.push(succeeded);
    let ops = if succeeded {
        &txn.success
    } else {
        &txn.failure
    };
    for op in ops {
        if let Some(request_op::Request::RequestTxn(nested)) = &op.request {
            txn_path(view, nested, path)?;
        }
    }
    Ok(())
}

/// Returns whether a txn writes anything on any branch.
pub fn txn_writes(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => true,
            Some(request_op::Request::RequestTxn(nested)) => txn_writes(nested),
            _ => false,
        })
}

/// Returns whether a txn may put on any branch (the quota counts puts only).
pub fn txn_puts(txn: &TxnRequest) -> bool {
    txn.success
        .iter()
        .chain(&txn.failure)
        .any(|op| match &op.request {
            Some(request_op::Request::RequestPut(_)) => true,
            Some(request_op::Request::RequestTxn(nested)) => txn_puts(nested),
            _ => false,
        })
}
