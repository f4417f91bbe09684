//! Reading a bbolt file one node at a time.
//!
//! Snapshots can be many gigabytes, so nothing here maps or slurps the file: opening reads the
//! two meta pages, and iteration reads each node (one page, or `1 + overflow` pages) when the
//! depth-first walk reaches it, holding only the path from the bucket's root to the current
//! leaf. Every length and page id comes from untrusted bytes and is checked before use; a walk
//! reads at most `pgid` nodes and descends at most [`MAX_DEPTH`] levels, so a damaged file with
//! cycles or shared subtrees ends in an error rather than a loop.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::error::{Error, Result, corrupt};
use crate::page::{
    BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, Element, MAX_PAGE_SIZE, META_SIZE, MIN_READ_PAGE_SIZE,
    Meta, Node, PAGE_HEADER_SIZE, PageHeader,
};

/// Deeper than any bbolt tree: with at least two keys per branch even 2^64 pages need fewer
/// levels, so reaching this means the branch pages form a cycle.
const MAX_DEPTH: usize = 64;

/// Positioned reads from something with a known size: a file, or bytes in memory (tests, or a
/// snapshot already received into a buffer).
pub trait ReadAt {
    /// Fills `buf` from `offset`, failing if the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// The source's length in bytes.
    fn size(&self) -> io::Result<u64>;
}

#[cfg(unix)]
impl ReadAt for File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|start| self.get(start..start.checked_add(buf.len())?))
            .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn size(&self) -> io::Result<u64> {
        Ok(self.len() as u64)
    }
}

impl ReadAt for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.as_slice().read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        self.as_slice().size()
    }
}

impl<T: ReadAt + ?Sized> ReadAt for &T {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        (**self).read_exact_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        (**self).size()
    }
}

/// A top-level bucket as listed in the root bucket.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    name: Vec<u8>,
    sequence: u64,
    root: Root,
}

/// Where a bucket's tree starts.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Root {
    /// A branch or leaf page.
    Page(u64),
    /// A leaf node embedded in the bucket's value (bbolt's inline bucket: small, no pages).
    Inline(Vec<u8>),
}

impl Bucket {
    /// The bucket's name (its key in the root bucket).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// The bucket's `NextSequence` counter (etcd leaves it at 0).
    pub fn sequence(&self) -> u64 {
        self.sequence
    }

    /// Whether bbolt stored the bucket inline in its parent instead of in pages of its own.
    pub fn is_inline(&self) -> bool {
        matches!(self.root, Root::Inline(_))
    }
}

/// An open bbolt file.
#[derive(Debug)]
pub struct Reader<R = File> {
    src: R,
    meta: Meta,
    file_len: u64,
}

#[cfg(unix)]
impl Reader<File> {
    /// Opens the file at `path` (a database or a snapshot, with or without etcd's digest).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::new(File::open(path)?)
    }
}

impl<R: ReadAt> Reader<R> {
    /// Reads and validates the meta pages of `src`.
    ///
    /// As bbolt does, the meta with the larger txid wins if its magic, version and checksum
    /// hold, else the other one: a crash mid-commit leaves the older meta intact. Page 1 is
    /// found through page 0's page size, or, if page 0 is damaged, at each plausible size.
    pub fn new(src: R) -> Result<Self> {
        let file_len = src.size()?;
        let read_meta = |offset: u64| -> Result<Result<Meta, &'static str>> {
            if file_len < offset + (PAGE_HEADER_SIZE + META_SIZE) as u64 {
                return Ok(Err("file too short for a meta page"));
            }
            let mut buf = [0u8; META_SIZE];
            src.read_exact_at(&mut buf, offset + PAGE_HEADER_SIZE as u64)?;
            // Stricter than bbolt, which would go on with any page size and fail later: a
            // checksummed meta with an absurd page size is as unusable as a damaged one.
            Ok(Meta::decode(&buf).and_then(|m| {
                let size = u64::from(m.page_size);
                (size.is_power_of_two() && (MIN_READ_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size))
                    .then_some(m)
                    .ok_or("unsupported page size")
            }))
        };
        let meta0 = read_meta(0)?;
        let candidates: Vec<u64> = match meta0 {
            Ok(m) => vec![u64::from(m.page_size)],
            Err(_) => std::iter::successors(Some(MIN_READ_PAGE_SIZE), |s| Some(s * 2))
                .take_while(|&s| s <= MAX_PAGE_SIZE)
                .collect(),
        };
        let mut meta1 = Err("no candidate page size");
        for size in candidates {
            meta1 = read_meta(size)?.and_then(|m| {
                (u64::from(m.page_size) == size)
                    .then_some(m)
                    .ok_or("page size disagrees with the meta page's position")
            });
            if meta1.is_ok() {
                break;
            }
        }
        let meta = match (meta0, meta1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(why), Err(_)) => return Err(Error::NoValidMeta(why)),
        };
        let page_size = u64::from(meta.page_size);
        if meta.root < 2 || meta.root >= meta.pgid {
            return Err(corrupt(meta.root, "meta root outside the file's pages"));
        }
        let needed = meta
            .pgid
            .checked_mul(page_size)
            .ok_or(corrupt(meta.pgid, "meta page count overflows"))?;
        if file_len < needed {
            return Err(Error::Truncated {
                needed,
                actual: file_len,
            });
        }
        Ok(Self {
            src,
            meta,
            file_len,
        })
    }

    /// The page size recorded in the meta page.
    pub fn page_size(&self) -> u32 {
        self.meta.page_size
    }

    /// The high-water mark: pages `0..pgid` hold the data.
    pub fn pgid(&self) -> u64 {
        self.meta.pgid
    }

    /// The transaction id of the chosen meta page.
    pub fn txid(&self) -> u64 {
        self.meta.txid
    }

    /// `pgid * page_size`: the bytes that make up the database. Anything after it (etcd's
    /// 32-byte SHA-256 trailer on a snapshot, or a live database's preallocated tail) is not
    /// read; verifying the trailer against these bytes is the caller's business.
    pub fn data_len(&self) -> u64 {
        self.meta.pgid * u64::from(self.meta.page_size)
    }

    /// The source's length, `data_len()` plus whatever trails it.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// The 32 bytes after the data if exactly 32 follow it: where etcd's snapshot stream puts
    /// the SHA-256 of the data (`etcdctl snapshot restore` requires it to match). `None` for a
    /// file with no or some other trailer, such as a live database.
    pub fn snapshot_digest(&self) -> Result<Option<[u8; 32]>> {
        if self.file_len - self.data_len() != crate::SNAPSHOT_DIGEST_LEN {
            return Ok(None);
        }
        let mut digest = [0u8; 32];
        self.src.read_exact_at(&mut digest, self.data_len())?;
        Ok(Some(digest))
    }

    /// Gives the source back.
    pub fn into_inner(self) -> R {
        self.src
    }

    /// The top-level buckets, in name order.
    pub fn buckets(&self) -> Result<Vec<Bucket>> {
        let mut out = Vec::new();
        let mut walk = Walk::new(self, Root::Page(self.meta.root));
        while let Some((flags, key, value)) = walk.next_element()? {
            if flags & BUCKET_LEAF_FLAG == 0 {
                return Err(corrupt(walk.leaf_pgid(), "root bucket holds a plain key"));
            }
            out.push(self.parse_bucket(key, &value, walk.leaf_pgid())?);
        }
        Ok(out)
    }

    /// The names of the top-level buckets, in order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>> {
        Ok(self.buckets()?.into_iter().map(|b| b.name).collect())
    }

    /// The top-level bucket called `name`, if there is one.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket>> {
        Ok(self.buckets()?.into_iter().find(|b| b.name == name))
    }

    /// The key/value pairs of `bucket` in key order. Each item is read when asked for; after an
    /// error the iterator ends. A bucket nested in `bucket` (etcd never nests them) is reported
    /// as [`Error::NestedBucket`] rather than skipped, so that copying a file never drops data
    /// silently.
    pub fn iter(&self, bucket: &Bucket) -> Iter<'_, R> {
        Iter {
            walk: Walk::new(self, bucket.root.clone()),
            bucket: bucket.name.clone(),
            failed: false,
        }
    }

    fn parse_bucket(&self, name: Vec<u8>, value: &[u8], pgid: u64) -> Result<Bucket> {
        let header = value
            .get(..BUCKET_HEADER_SIZE)
            .ok_or_else(|| corrupt(pgid, "bucket value shorter than its header"))?;
        let root = crate::page::le_u64(header, 0).unwrap_or(0);
        let sequence = crate::page::le_u64(header, 8).unwrap_or(0);
        let root = if root == 0 {
            Root::Inline(value[BUCKET_HEADER_SIZE..].to_vec())
        } else if root < 2 || root >= self.meta.pgid {
            return Err(corrupt(pgid, "bucket root outside the file's pages"));
        } else {
            Root::Page(root)
        };
        Ok(Bucket {
            name,
            sequence,
            root,
        })
    }

    /// Reads the node starting at page `pgid`, all of its overflow pages included.
    fn read_node(&self, pgid: u64) -> Result<Node> {
        if pgid < 2 || pgid >= self.meta.pgid {
            return Err(corrupt(pgid, "page id outside the file's pages"));
        }
        let page_size = u64::from(self.meta.page_size);
        let first = usize::try_from(page_size).map_err(|_| Error::InvalidPageSize(page_size))?;
        let mut buf = vec![0u8; first];
        self.src.read_exact_at(&mut buf, pgid * page_size)?;
        let header = PageHeader::parse(&buf).ok_or_else(|| corrupt(pgid, "page header"))?;
        if header.id != pgid {
            return Err(corrupt(pgid, "page header names another page"));
        }
        if header.overflow > 0 {
            let last = pgid + u64::from(header.overflow);
            if last >= self.meta.pgid {
                return Err(corrupt(pgid, "overflow pages run past the file's pages"));
            }
            // Bounded by data_len, which is no more than the file's length.
            let total = usize::try_from((1 + u64::from(header.overflow)) * page_size)
                .map_err(|_| corrupt(pgid, "node too large for this platform"))?;
            buf.try_reserve_exact(total - first)
                .map_err(|_| corrupt(pgid, "node too large to hold in memory"))?;
            buf.resize(total, 0);
            self.src
                .read_exact_at(&mut buf[first..], (pgid + 1) * page_size)?;
        }
        Node::new(pgid, buf)
    }
}

/// Iterator over one bucket's key/value pairs, in key order.
pub struct Iter<'r, R> {
    walk: Walk<'r, R>,
    bucket: Vec<u8>,
    failed: bool,
}

impl<R: ReadAt> Iterator for Iter<'_, R> {
    type Item = Result<(Vec<u8>, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let item = match self.walk.next_element() {
            Ok(None) => return None,
            Ok(Some((flags, key, _))) if flags & BUCKET_LEAF_FLAG != 0 => {
                Err(Error::NestedBucket {
                    bucket: self.bucket.clone(),
                    key,
                })
            }
            Ok(Some((_, key, value))) => Ok((key, value)),
            Err(e) => Err(e),
        };
        self.failed = item.is_err();
        Some(item)
    }
}

/// A depth-first walk over a bucket's tree, yielding leaf elements in order.
struct Walk<'r, R> {
    reader: &'r Reader<R>,
    /// The nodes from the root to the current one, each with the index of its next element.
    stack: Vec<(Node, usize)>,
    /// The root, until the first call reads it.
    start: Option<Root>,
    nodes_read: u64,
    /// The last key yielded (valid once `yielded`), reused to avoid an allocation per pair.
    last_key: Vec<u8>,
    yielded: bool,
}

type RawElement = (u32, Vec<u8>, Vec<u8>);

impl<'r, R: ReadAt> Walk<'r, R> {
    fn new(reader: &'r Reader<R>, root: Root) -> Self {
        Self {
            reader,
            stack: Vec::new(),
            start: Some(root),
            nodes_read: 0,
            last_key: Vec::new(),
            yielded: false,
        }
    }

    /// The page of the leaf last read from, for error messages.
    fn leaf_pgid(&self) -> u64 {
        self.stack.last().map_or(0, |(node, _)| node.pgid)
    }

    fn push(&mut self, pgid: u64) -> Result<()> {
        // Every page belongs to at most one node of one bucket, so a walk that reads more nodes
        // than the file has pages is going round in circles (or through shared subtrees).
        self.nodes_read += 1;
        if self.nodes_read > self.reader.meta.pgid {
            return Err(corrupt(
                pgid,
                "bucket tree visits more pages than the file has",
            ));
        }
        if self.stack.len() >= MAX_DEPTH {
            return Err(corrupt(pgid, "bucket tree deeper than any bbolt writes"));
        }
        let node = self.reader.read_node(pgid)?;
        self.stack.push((node, 0));
        Ok(())
    }

    fn next_element(&mut self) -> Result<Option<RawElement>> {
        match self.start.take() {
            Some(Root::Page(pgid)) => self.push(pgid)?,
            Some(Root::Inline(bytes)) => {
                let node = Node::new(0, bytes)?;
                if node.branch {
                    return Err(corrupt(0, "inline bucket is not a leaf"));
                }
                self.stack.push((node, 0));
            }
            None => {}
        }
        loop {
            let Some((node, next)) = self.stack.last_mut() else {
                return Ok(None);
            };
            if *next >= node.count {
                self.stack.pop();
                continue;
            }
            let index = *next;
            *next += 1;
            let (flags, key, value) = match node.element(index)? {
                Element::Branch { child, .. } => {
                    self.push(child)?;
                    continue;
                }
                Element::Leaf { flags, key, value } => (flags, key, value),
            };
            // bbolt keeps keys sorted; checking it here also catches a subtree reached twice.
            if self.yielded && self.last_key.as_slice() >= key {
                return Err(corrupt(node.pgid, "keys out of order"));
            }
            self.yielded = true;
            self.last_key.clear();
            self.last_key.extend_from_slice(key);
            return Ok(Some((flags, key.to_vec(), value.to_vec())));
        }
    }
}
