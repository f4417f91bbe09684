//! The one error type of the crate, for both directions.

use std::fmt;

/// What went wrong reading or writing a bbolt file.
///
/// Reading distinguishes "this is not (or no longer) a bbolt file" ([`Error::NoValidMeta`],
/// [`Error::Truncated`]) from damage further in ([`Error::Corrupt`]): an operator handed a
/// wrong file needs a different message than one whose snapshot rotted on disk.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The underlying file or stream failed.
    #[error("bbolt i/o: {0}")]
    Io(#[from] std::io::Error),

    /// Neither meta page has the magic, the version and a matching checksum.
    #[error("not a bbolt file (or both meta pages are damaged): {0}")]
    NoValidMeta(&'static str),

    /// The chosen meta page claims more pages than the file holds.
    #[error("bbolt file truncated: its meta page needs {needed} bytes, the file has {actual}")]
    Truncated {
        /// `pgid * page_size` of the chosen meta page.
        needed: u64,
        /// The file's length.
        actual: u64,
    },

    /// A page or element is malformed: out-of-range page ids, offsets past the node, a tree
    /// deeper than any bbolt writes, keys out of order, and the like.
    #[error("corrupt bbolt file at page {pgid}: {what}")]
    Corrupt {
        /// The page where the damage was found (0 for an inline bucket's embedded page).
        pgid: u64,
        /// What is wrong with it.
        what: &'static str,
    },

    /// A top-level bucket holds a bucket of its own. etcd never nests buckets, and this crate's
    /// writer cannot reproduce nesting, so reading refuses instead of silently dropping it.
    #[error("bucket {} holds a nested bucket {}, which this reader does not support", Lossy(.bucket), Lossy(.key))]
    NestedBucket {
        /// The top-level bucket.
        bucket: Vec<u8>,
        /// The nested bucket's key.
        key: Vec<u8>,
    },

    /// A page size the writer refuses: it takes a power of two from 1 KiB to 64 KiB. (When
    /// reading, a meta page with a page size other than a power of two from 512 bytes to 64 KiB
    /// counts as invalid, like one with a bad checksum.)
    #[error("unsupported bbolt page size {0}")]
    InvalidPageSize(u64),

    /// An empty key or bucket name: bbolt refuses them.
    #[error("bbolt keys and bucket names must not be empty")]
    EmptyKey,

    /// A key or bucket name longer than bbolt's `MaxKeySize`.
    #[error("bbolt key of {0} bytes exceeds the maximum of {max}", max = crate::MAX_KEY_SIZE)]
    KeyTooLarge(usize),

    /// A value longer than bbolt's `MaxValueSize`.
    #[error("bbolt value of {0} bytes exceeds the maximum of {max}", max = crate::MAX_VALUE_SIZE)]
    ValueTooLarge(usize),

    /// Keys within a bucket, or bucket names, not strictly increasing: the writer builds the
    /// tree in one pass and cannot reorder.
    #[error("bbolt {what} {} does not sort after the previous one", Lossy(.key))]
    OutOfOrder {
        /// "key" or "bucket name".
        what: &'static str,
        /// The offending key or name.
        key: Vec<u8>,
    },

    /// [`crate::Writer::put`] before any [`crate::Writer::bucket`].
    #[error("bbolt put before any bucket was started")]
    NoBucket,

    /// A broken invariant inside this crate: a bug, reported instead of panicking.
    #[error("bbolt writer bug: {0}")]
    Internal(&'static str),

    /// An earlier write failed midway; the output is incomplete and the writer refuses to go on.
    #[error("bbolt writer failed earlier; the output is unusable")]
    Poisoned,
}

/// Displays bytes as text where they are text (bucket names and etcd keys usually are).
struct Lossy<'a>(&'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.0))
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A [`Error::Corrupt`] for page `pgid`.
pub(crate) fn corrupt(pgid: u64, what: &'static str) -> Error {
    Error::Corrupt { pgid, what }
}
