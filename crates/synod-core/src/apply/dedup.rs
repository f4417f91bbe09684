//! The requests applied recently, by (proposing member, request id): a proposal that reaches the
//! log twice (a message delivered twice) is applied once, on every member and across restarts.

use super::*;

/// Request ids by the index that applied them, and the set of them.
#[derive(Default)]
pub(super) struct RecentRequests {
    pub(super) by_index: BTreeMap<u64, RequestKey>,
    pub(super) ids: std::collections::HashSet<RequestKey>,
}

impl RecentRequests {
    pub(super) fn insert(&mut self, index: u64, id: RequestKey) {
        self.by_index.insert(index, id);
        self.ids.insert(id);
    }

    /// Forgets requests applied below `index`; returns whether there were any.
    pub(super) fn forget_below(&mut self, index: u64) -> bool {
        if self
            .by_index
            .first_key_value()
            .is_none_or(|(&oldest, _)| oldest >= index)
        {
            return false;
        }
        let kept = self.by_index.split_off(&index);
        let forgotten = std::mem::replace(&mut self.by_index, kept);
        for id in forgotten.values() {
            self.ids.remove(id);
        }
        !forgotten.is_empty()
    }
}

/// How far back (in entries) a request applied twice is recognised. A proposal reaches the log
/// twice only if a message carrying it is delivered twice, which happens within moments.
pub const DEDUP_WINDOW_ENTRIES: u64 = 5_000;

/// Reads the recently applied requests from the state-machine file.
pub(super) fn read_recent_requests(
    tx: &redb::ReadTransaction,
) -> Result<RecentRequests, StorageError> {
    let table = tx
        .open_table(backend::APPLIED_REQUESTS)
        .map_err(StorageError::backend)?;
    let mut recent = RecentRequests::default();
    for row in table.iter().map_err(StorageError::backend)? {
        let (index, key) = row.map_err(StorageError::backend)?;
        let (origin, id) = key.value();
        recent.insert(index.value(), RequestKey { origin, id });
    }
    Ok(recent)
}
