//! bbolt's on-disk structures: the page header, the meta page and the element arrays of branch
//! and leaf nodes. Everything here is plain byte layout shared by the reader and the writer; no
//! I/O happens in this module.
//!
//! Every multi-byte integer is little-endian, which is what bbolt produces on every platform
//! etcd ships for (it writes its structs from memory, and all of those are little-endian).

use crate::error::{Result, corrupt};

/// Size of the header at the start of every page (and of an inline bucket's embedded page).
pub(crate) const PAGE_HEADER_SIZE: usize = 16;
/// Size of one branch or leaf element; both kinds happen to be 16 bytes.
pub(crate) const ELEMENT_SIZE: usize = 16;
/// Size of the bucket header (`root pgid`, `sequence`) that starts a sub-bucket's value.
pub(crate) const BUCKET_HEADER_SIZE: usize = 16;
/// Size of the meta struct that follows the page header on pages 0 and 1.
pub(crate) const META_SIZE: usize = 64;
/// The checksum covers the meta struct up to (not including) the checksum field.
const META_CHECKSUM_OFFSET: usize = 56;

pub(crate) const BRANCH_PAGE: u16 = 0x01;
pub(crate) const LEAF_PAGE: u16 = 0x02;
pub(crate) const META_PAGE: u16 = 0x04;

/// Leaf element flag: the value is a bucket header (plus an inline page), not user data.
pub(crate) const BUCKET_LEAF_FLAG: u32 = 0x01;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;

/// `meta.freelist` when the freelist is not persisted (`NoFreelistSync`, etcd's default on
/// Linux): bbolt rebuilds it at open by walking every bucket.
pub(crate) const NO_FREELIST: u64 = u64::MAX;

/// The smallest and largest page sizes accepted from a file. bbolt takes the OS page size,
/// which is 4 KiB on x86 and up to 64 KiB on some arm64 and ppc64 kernels.
pub(crate) const MIN_READ_PAGE_SIZE: u64 = 512;
pub(crate) const MAX_PAGE_SIZE: u64 = 64 * 1024;

/// Reads a little-endian `u16` at `off`, or `None` past the end.
pub(crate) fn le_u16(buf: &[u8], off: usize) -> Option<u16> {
    let bytes = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian `u32` at `off`, or `None` past the end.
pub(crate) fn le_u32(buf: &[u8], off: usize) -> Option<u32> {
    let bytes = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Reads a little-endian `u64` at `off`, or `None` past the end.
pub(crate) fn le_u64(buf: &[u8], off: usize) -> Option<u64> {
    let bytes = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

/// FNV-1a, 64 bits: what Go's `hash/fnv.New64a` computes and bbolt stores in the meta page.
pub(crate) fn fnv1a64(data: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in data {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// The 16-byte header of a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PageHeader {
    pub id: u64,
    pub flags: u16,
    pub count: u16,
    /// Pages after the first that belong to the same node.
    pub overflow: u32,
}

impl PageHeader {
    pub(crate) fn parse(buf: &[u8]) -> Option<Self> {
        Some(Self {
            id: le_u64(buf, 0)?,
            flags: le_u16(buf, 8)?,
            count: le_u16(buf, 10)?,
            overflow: le_u32(buf, 12)?,
        })
    }

    pub(crate) fn encode(&self) -> [u8; PAGE_HEADER_SIZE] {
        let mut out = [0u8; PAGE_HEADER_SIZE];
        out[0..8].copy_from_slice(&self.id.to_le_bytes());
        out[8..10].copy_from_slice(&self.flags.to_le_bytes());
        out[10..12].copy_from_slice(&self.count.to_le_bytes());
        out[12..16].copy_from_slice(&self.overflow.to_le_bytes());
        out
    }
}

/// The meta struct (magic, version and checksum are implied: checked on decode, produced on
/// encode).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket, whose elements are the top-level buckets.
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// High-water mark: pages `0..pgid` are in use, so the data is `pgid * page_size` bytes.
    pub pgid: u64,
    pub txid: u64,
}

impl Meta {
    /// Decodes the meta struct at the start of `buf`, accepting it only as bbolt's
    /// `meta.validate` does: magic, version and checksum.
    pub(crate) fn decode(buf: &[u8]) -> Result<Self, &'static str> {
        let field = |off| le_u64(buf, off).ok_or("meta page cut short");
        let word = |off| le_u32(buf, off).ok_or("meta page cut short");
        if word(0)? != MAGIC {
            return Err("bad magic");
        }
        if word(4)? != VERSION {
            return Err("unsupported version");
        }
        let covered = buf
            .get(..META_CHECKSUM_OFFSET)
            .ok_or("meta page cut short")?;
        if field(META_CHECKSUM_OFFSET)? != fnv1a64(covered) {
            return Err("bad checksum");
        }
        Ok(Self {
            page_size: word(8)?,
            flags: word(12)?,
            root: field(16)?,
            root_sequence: field(24)?,
            freelist: field(32)?,
            pgid: field(40)?,
            txid: field(48)?,
        })
    }

    pub(crate) fn encode(&self) -> [u8; META_SIZE] {
        let mut out = [0u8; META_SIZE];
        out[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        out[4..8].copy_from_slice(&VERSION.to_le_bytes());
        out[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        out[12..16].copy_from_slice(&self.flags.to_le_bytes());
        out[16..24].copy_from_slice(&self.root.to_le_bytes());
        out[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        out[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        out[40..48].copy_from_slice(&self.pgid.to_le_bytes());
        out[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let checksum = fnv1a64(&out[..META_CHECKSUM_OFFSET]);
        out[META_CHECKSUM_OFFSET..].copy_from_slice(&checksum.to_le_bytes());
        out
    }
}

/// One element of a node, borrowed from the node's bytes.
#[derive(Debug)]
pub(crate) enum Element<'a> {
    /// The walk needs only the child: the key (the child's first key) is for seeking, which
    /// this crate does not do, but its bounds are still checked.
    Branch { child: u64 },
    Leaf {
        flags: u32,
        key: &'a [u8],
        value: &'a [u8],
    },
}

/// A branch or leaf node: its first page's header and all of its bytes (header included),
/// which span `1 + overflow` pages on disk or the rest of an inline bucket's value.
#[derive(Debug)]
pub(crate) struct Node {
    /// Where the node came from, for error messages (0 for an inline page).
    pub pgid: u64,
    pub branch: bool,
    pub count: usize,
    buf: Vec<u8>,
}

impl Node {
    /// Checks the header and that the element array fits; elements themselves are checked as
    /// they are read, so a damaged element fails the iteration that reaches it.
    pub(crate) fn new(pgid: u64, buf: Vec<u8>) -> Result<Self> {
        let header =
            PageHeader::parse(&buf).ok_or_else(|| corrupt(pgid, "page header cut short"))?;
        let branch = match header.flags {
            BRANCH_PAGE => true,
            LEAF_PAGE => false,
            _ => return Err(corrupt(pgid, "expected a branch or leaf page")),
        };
        let count = usize::from(header.count);
        if branch && count == 0 {
            return Err(corrupt(pgid, "branch page without elements"));
        }
        if PAGE_HEADER_SIZE + count * ELEMENT_SIZE > buf.len() {
            return Err(corrupt(pgid, "element array runs past the node"));
        }
        Ok(Self {
            pgid,
            branch,
            count,
            buf,
        })
    }

    /// Element `index`, with its key and value located and bounds-checked.
    pub(crate) fn element(&self, index: usize) -> Result<Element<'_>> {
        let bad = |what| corrupt(self.pgid, what);
        let at = PAGE_HEADER_SIZE + index * ELEMENT_SIZE;
        let word = |off: usize| le_u32(&self.buf, at + off).ok_or_else(|| bad("element past node"));
        // Offsets are relative to the element itself; u32 + u32 cannot overflow a 64-bit usize,
        // but checked arithmetic keeps 32-bit targets honest too.
        let span = |start: usize, len: u32| -> Result<(usize, usize)> {
            let end = usize::try_from(len)
                .ok()
                .and_then(|len| start.checked_add(len))
                .filter(|&end| end <= self.buf.len())
                .ok_or_else(|| bad("key or value runs past the node"))?;
            Ok((start, end))
        };
        let pos = |off: u32| {
            usize::try_from(off)
                .ok()
                .and_then(|off| at.checked_add(off))
                .ok_or_else(|| bad("element offset overflows"))
        };
        if self.branch {
            span(pos(word(0)?)?, word(4)?)?;
            let child = le_u64(&self.buf, at + 8).ok_or_else(|| bad("element past node"))?;
            Ok(Element::Branch { child })
        } else {
            let flags = word(0)?;
            let (ks, ke) = span(pos(word(4)?)?, word(8)?)?;
            let (vs, ve) = span(ke, word(12)?)?;
            Ok(Element::Leaf {
                flags,
                key: &self.buf[ks..ke],
                value: &self.buf[vs..ve],
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_go() {
        // Go: fnv.New64a() of "" and of "a".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn meta_round_trips_and_rejects_damage() {
        let meta = Meta {
            page_size: 4096,
            flags: 0,
            root: 2,
            root_sequence: 0,
            freelist: NO_FREELIST,
            pgid: 5,
            txid: 11,
        };
        let bytes = meta.encode();
        assert_eq!(Meta::decode(&bytes), Ok(meta));
        for i in 0..META_SIZE {
            let mut bad = bytes;
            bad[i] ^= 0x10;
            assert!(
                Meta::decode(&bad).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        assert!(Meta::decode(&bytes[..40]).is_err());
    }

    /// The meta page of a real etcd 3.4 snapshot (page 0 of `etcdctl snapshot save`).
    #[test]
    fn decodes_real_etcd_meta() {
        let mut page = vec![0u8; 80];
        let hex = "00000000000000000400000000000000edda0ced02000000001000000000
                   000002000000000000000000000000000000ffffffffffffffff05000000
                   000000000b000000000000006f5b00b9a5f82014";
        let digits: Vec<u8> = hex.bytes().filter(u8::is_ascii_hexdigit).collect();
        for (i, pair) in digits.chunks(2).enumerate() {
            page[i] = u8::from_str_radix(std::str::from_utf8(pair).expect("utf-8 output"), 16)
                .expect("hex digit");
        }
        let header = PageHeader::parse(&page).expect("header");
        assert_eq!(header.flags, META_PAGE);
        let meta = Meta::decode(&page[PAGE_HEADER_SIZE..]).expect("valid meta");
        assert_eq!(
            (meta.page_size, meta.root, meta.freelist),
            (4096, 2, NO_FREELIST)
        );
        assert_eq!((meta.pgid, meta.txid), (5, 11));
    }

    #[test]
    fn element_bounds_are_checked() {
        let mut buf = PageHeader {
            id: 7,
            flags: LEAF_PAGE,
            count: 1,
            overflow: 0,
        }
        .encode()
        .to_vec();
        // flags 0, pos 16, ksize 1, vsize 2 with only 2 data bytes present.
        for word in [0u32, 16, 1, 2] {
            buf.extend_from_slice(&word.to_le_bytes());
        }
        buf.extend_from_slice(b"kv");
        let node = Node::new(7, buf.clone()).expect("valid node");
        assert!(node.element(0).is_err());
        buf.push(b'w');
        let node = Node::new(7, buf).expect("valid node");
        match node.element(0).expect("element") {
            Element::Leaf { key, value, .. } => assert_eq!((key, value), (&b"k"[..], &b"vw"[..])),
            Element::Branch { .. } => panic!("leaf expected"),
        }
    }
}
