//! A user's key permissions as merged intervals, and the coverage check (etcd
//! `range_perm_cache.go`).

use synod_api::authpb::{Permission, permission::Type};

/// A half-open key interval `[start, end)`; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

/// What a user may read and write, from all of its roles.
#[derive(Debug, Default, Clone)]
pub struct Perms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// The interval a permission or a request names: one key when `range_end` is empty, from the
/// key on when it is `"\0"`.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    if range_end.is_empty() {
        let mut end = key.to_vec();
        end.push(0);
        return Interval {
            start: key.to_vec(),
            end: Some(end),
        };
    }
    Interval {
        start: key.to_vec(),
        end: (range_end != b"\0").then(|| range_end.to_vec()),
    }
}

/// Sorts and merges overlapping or touching intervals.
fn merge(mut intervals: Vec<Interval>) -> Vec<Interval> {
    intervals.sort_by(|a, b| a.start.cmp(&b.start));
    let mut merged: Vec<Interval> = Vec::with_capacity(intervals.len());
    for next in intervals {
        if let Some(last) = merged.last_mut() {
            let touches = match &last.end {
                None => true,
                Some(end) => next.start <= *end,
            };
            if touches {
                last.end = match (&last.end, next.end) {
                    (None, _) | (_, None) => None,
                    (Some(a), Some(b)) => Some(if *a >= b { a.clone() } else { b }),
                };
                continue;
            }
        }
        merged.push(next);
    }
    merged
}

/// Whether the merged `intervals` cover `wanted` entirely.
fn covers(intervals: &[Interval], wanted: &Interval) -> bool {
    // The last interval starting at or before the wanted start is the only candidate: merged
    // intervals neither overlap nor touch.
    let candidate = intervals
        .iter()
        .take_while(|i| i.start <= wanted.start)
        .last();
    let Some(candidate) = candidate else {
        return false;
    };
    match (&candidate.end, &wanted.end) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(have), Some(want)) => want <= have && wanted.start < *have,
    }
}

impl Perms {
    /// The permissions granted by `permissions` (from every role of a user).
    pub fn new<'a>(permissions: impl IntoIterator<Item = &'a Permission>) -> Perms {
        let (mut read, mut write) = (Vec::new(), Vec::new());
        for permission in permissions {
            let interval = interval(&permission.key, &permission.range_end);
            match Type::try_from(permission.perm_type).unwrap_or(Type::Read) {
                Type::Read => read.push(interval),
                Type::Write => write.push(interval),
                Type::Readwrite => {
                    read.push(interval.clone());
                    write.push(interval);
                }
            }
        }
        Perms {
            read: merge(read),
            write: merge(write),
        }
    }

    /// Whether `[key, range_end)` (etcd's request form) may be read.
    pub fn may_read(&self, key: &[u8], range_end: &[u8]) -> bool {
        covers(&self.read, &request_interval(key, range_end))
    }

    /// Whether `[key, range_end)` may be written.
    pub fn may_write(&self, key: &[u8], range_end: &[u8]) -> bool {
        covers(&self.write, &request_interval(key, range_end))
    }
}

/// A request's interval; an empty or inverted range is checked as its first key, as etcd
/// checks it.
fn request_interval(key: &[u8], range_end: &[u8]) -> Interval {
    if !range_end.is_empty() && range_end != b"\0" && range_end <= key {
        return interval(key, &[]);
    }
    interval(key, range_end)
}

/// Whether a permission's range is one etcd accepts: a key, and an end that is empty, `"\0"` or
/// after the key.
pub fn valid_permission_range(key: &[u8], range_end: &[u8]) -> bool {
    !key.is_empty() && (range_end.is_empty() || range_end == b"\0" || key < range_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(kind: Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: kind as i32,
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
        }
    }

    #[test]
    fn single_keys_prefixes_and_open_ranges() {
        let perms = Perms::new(&[
            perm(Type::Read, "a", ""),
            perm(Type::Readwrite, "foo/", "foo0"),
            perm(Type::Write, "z", "\0"),
        ]);
        assert!(perms.may_read(b"a", b""));
        assert!(
            !perms.may_read(b"a", b"b"),
            "a single key does not cover a range"
        );
        assert!(!perms.may_read(b"ab", b""));
        assert!(perms.may_read(b"foo/x", b""));
        assert!(perms.may_read(b"foo/", b"foo0"));
        assert!(!perms.may_read(b"foo/", b"foo1"), "wider than granted");
        assert!(
            !perms.may_read(b"foo/", b"\0"),
            "from-key is wider than a prefix"
        );
        assert!(perms.may_write(b"foo/a", b"foo/b"));
        assert!(!perms.may_write(b"a", b""));
        assert!(perms.may_write(b"zzz", b"\0"));
        assert!(perms.may_write(b"z", b""));
        assert!(!perms.may_read(b"z", b""));
    }

    #[test]
    fn touching_grants_cover_their_union() {
        let perms = Perms::new(&[perm(Type::Read, "a", "c"), perm(Type::Read, "c", "e")]);
        assert!(perms.may_read(b"a", b"e"));
        assert!(perms.may_read(b"b", b"d"));
        assert!(!perms.may_read(b"b", b"f"));
        let gap = Perms::new(&[perm(Type::Read, "a", "c"), perm(Type::Read, "d", "e")]);
        assert!(!gap.may_read(b"a", b"e"));
    }

    #[test]
    fn permission_ranges_are_validated_as_etcd_does() {
        assert!(valid_permission_range(b"a", b""));
        assert!(valid_permission_range(b"a", b"\0"));
        assert!(valid_permission_range(b"a", b"b"));
        assert!(!valid_permission_range(b"", b""));
        assert!(!valid_permission_range(b"b", b"a"));
        assert!(!valid_permission_range(b"a", b"a"));
    }
}
