//! Reading and writing files in bbolt's on-disk format, the B+tree file etcd keeps its data in
//! and sends as a snapshot (`etcdctl snapshot save`, the `Maintenance.Snapshot` stream).
//!
//! Synod needs both directions to interoperate with etcd's tooling: reading an etcd snapshot to
//! import it, and producing a snapshot that `etcdctl snapshot status` and `snapshot restore`
//! (hence etcd's own bbolt) accept. The crate covers exactly the subset of bbolt etcd uses:
//! top-level buckets holding plain key/value pairs, no nested buckets.
//!
//! - [`Reader`] opens a file (random access, one node in memory at a time), chooses the valid
//!   meta page as bbolt does, lists the top-level buckets and iterates a bucket's pairs in key
//!   order. Inline buckets and multi-page nodes are handled; damaged files give an
//!   [`Error`], never a panic or an endless walk.
//! - [`Writer`] streams buckets and pairs, given in order, into a new file in one pass with
//!   bounded memory, whatever the size of the data.
//!
//! etcd appends a SHA-256 digest of the data to a snapshot stream. The reader ignores bytes
//! past the data ([`Reader::data_len`], [`Reader::snapshot_digest`]) and the writer stops at the
//! data ([`Written::data_len`]): computing and checking the digest is left to the caller, which
//! has a hasher already, so this crate needs nothing but `std` and `thiserror`.
//!
//! No transactions, freelist management or in-place updates: a file is written once, whole.

mod error;
mod page;
mod read;
mod write;

pub use error::{Error, Result};
pub use read::{Bucket, Iter, ReadAt, Reader};
pub use write::{Writer, Written};

/// The page size the writer uses unless told otherwise (etcd's on x86-64 and most arm64).
pub const DEFAULT_PAGE_SIZE: u32 = 4096;

/// bbolt's `MaxKeySize`: longer keys (and bucket names) are refused.
pub const MAX_KEY_SIZE: usize = 32768;

/// bbolt's `MaxValueSize`: longer values are refused.
pub const MAX_VALUE_SIZE: usize = (1 << 31) - 2;

/// The length of the SHA-256 digest etcd appends to a snapshot stream after the data.
pub const SNAPSHOT_DIGEST_LEN: u64 = 32;
