//! Revisions and their on-disk encoding.
//!
//! A [`Revision`] names one change: `main` is the cluster revision of the request, `sub` the
//! position of the change inside it (a txn that writes three keys makes subs 0, 1 and 2). On disk a
//! revision is 17 bytes, as in etcd: `main` big-endian, `_`, `sub` big-endian, so byte order is
//! revision order; a deletion (tombstone) appends `t`.

/// One change to one key: `(main, sub)`, ordered lexicographically.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    pub main: i64,
    pub sub: i64,
}

/// Length of an encoded revision without the tombstone marker.
pub const REVISION_BYTES: usize = 17;
const TOMBSTONE_MARKER: u8 = b't';

impl Revision {
    pub fn new(main: i64, sub: i64) -> Revision {
        Revision { main, sub }
    }

    /// Returns the 17-byte key of this revision, with `t` appended for a tombstone.
    pub fn to_bytes(self, tombstone: bool) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(REVISION_BYTES + 1);
        bytes.extend_from_slice(&self.main.to_be_bytes());
        bytes.push(b'_');
        bytes.extend_from_slice(&self.sub.to_be_bytes());
        if tombstone {
            bytes.push(TOMBSTONE_MARKER);
        }
        bytes
    }

    /// Decodes a key written by [`Revision::to_bytes`]; returns the revision and whether it is a
    /// tombstone, or `None` for bytes that are not a revision key.
    pub fn from_bytes(bytes: &[u8]) -> Option<(Revision, bool)> {
        let tombstone = match bytes.len() {
            REVISION_BYTES => false,
            len if len == REVISION_BYTES + 1 && bytes[REVISION_BYTES] == TOMBSTONE_MARKER => true,
            _ => return None,
        };
        if bytes[8] != b'_' {
            return None;
        }
        let main = i64::from_be_bytes(bytes[0..8].try_into().ok()?);
        let sub = i64::from_be_bytes(bytes[9..17].try_into().ok()?);
        Some((Revision { main, sub }, tombstone))
    }

    /// The smallest key at or after every change of revision `main`.
    pub fn lower_bound(main: i64) -> Vec<u8> {
        Revision::new(main, 0).to_bytes(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_round_trips_and_keeps_order() {
        let a = Revision::new(5, 0);
        let b = Revision::new(5, 1);
        let c = Revision::new(6, 0);
        assert!(a.to_bytes(false) < b.to_bytes(false));
        assert!(b.to_bytes(true) < c.to_bytes(false));
        assert_eq!(Revision::from_bytes(&b.to_bytes(true)), Some((b, true)));
        assert_eq!(Revision::from_bytes(&c.to_bytes(false)), Some((c, false)));
        assert_eq!(Revision::from_bytes(b"short"), None);
    }
}
