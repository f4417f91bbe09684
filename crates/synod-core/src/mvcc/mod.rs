//! Multi-version concurrency control, as in etcd's `server/storage/mvcc`.

pub mod key_index;
pub mod kv_store;
pub mod revision;
pub mod rows;
