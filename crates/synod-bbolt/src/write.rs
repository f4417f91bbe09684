//! Writing a bbolt file in one sequential pass.
//!
//! A snapshot can be larger than memory, so the writer is a bulk loader: pairs arrive in key
//! order, each leaf is written out the moment the next pair would not fit in its page, and its
//! first key goes up into a branch node that is written out when *it* fills, and so on up. Only
//! one unfinished node per tree level is held (for the current bucket and for the root bucket
//! that lists the buckets), so memory is a few pages whatever the input size. A value too large
//! for a page goes straight to the output as a node of its own without being copied.
//!
//! Pages are numbered in the order they are written, starting at 2; pages 0 and 1 are written
//! as zeros first and overwritten with the meta pages at the end, once the root is known. That
//! final seek is the only one.

use std::io::{Seek, SeekFrom, Write};

use crate::error::{Error, Result};
use crate::page::{
    BRANCH_PAGE, BUCKET_HEADER_SIZE, BUCKET_LEAF_FLAG, ELEMENT_SIZE, LEAF_PAGE, MAX_PAGE_SIZE,
    META_PAGE, Meta, NO_FREELIST, PAGE_HEADER_SIZE, PageHeader,
};
use crate::{MAX_KEY_SIZE, MAX_VALUE_SIZE};

/// The txid of meta page 0; page 1 gets one less. Page 0 is the newer one, as in the stream of
/// bbolt's `Tx.WriteTo` (what etcd's snapshot sends), and both describe the same tree, so
/// whichever bbolt picks it sees the same data.
const TXID: u64 = 2;

/// The smallest page size the writer accepts: smaller pages would hold very few elements.
const MIN_WRITE_PAGE_SIZE: u64 = 1024;

/// What [`Writer::finish`] hands back.
#[derive(Debug)]
pub struct Written<W> {
    /// The output, positioned just after the last page (where etcd's digest would go).
    pub inner: W,
    /// Pages written, meta pages included.
    pub pgid: u64,
    /// `pgid * page_size`: the bytes written.
    pub data_len: u64,
}

/// Streams top-level buckets and their pairs into a new bbolt file.
///
/// Call [`Writer::bucket`] for each bucket in strictly increasing name order, [`Writer::put`]
/// for its pairs in strictly increasing key order, then [`Writer::finish`]. Input that breaks
/// these rules or bbolt's limits is refused with an error and leaves the writer usable; an I/O
/// error leaves it refusing everything ([`Error::Poisoned`]). The same input always produces
/// the same bytes.
///
/// The file has no freelist page (`meta.freelist` = all ones, etcd's `NoFreelistSync`), which
/// is what etcd's own snapshots contain: bbolt rebuilds the (empty) freelist when it opens the
/// file. Buckets whose contents fit in a quarter page are stored inline, as bbolt does.
#[derive(Debug)]
pub struct Writer<W: Write + Seek> {
    sink: Sink<W>,
    /// The root bucket: one element per top-level bucket.
    root: Tree,
    current: Option<OpenBucket>,
    last_name: Option<Vec<u8>>,
    poisoned: bool,
}

#[derive(Debug)]
struct OpenBucket {
    name: Vec<u8>,
    tree: Tree,
    last_key: Vec<u8>,
}

impl<W: Write + Seek> Writer<W> {
    /// A writer with 4096-byte pages, etcd's page size on x86 and most arm64 systems. Writes
    /// the two placeholder meta pages at the output's current position.
    pub fn new(out: W) -> Result<Self> {
        Self::with_page_size(out, crate::DEFAULT_PAGE_SIZE)
    }

    /// A writer with another page size, a power of two from 1 KiB to 64 KiB. bbolt reads any
    /// such file, but a database opened later keeps the page size it was written with.
    pub fn with_page_size(mut out: W, page_size: u32) -> Result<Self> {
        let size = u64::from(page_size);
        if !size.is_power_of_two() || !(MIN_WRITE_PAGE_SIZE..=MAX_PAGE_SIZE).contains(&size) {
            return Err(Error::InvalidPageSize(size));
        }
        let base = out.stream_position()?;
        let mut sink = Sink {
            out,
            base,
            page_size: page_size as usize,
            next_pgid: 0,
            scratch: Vec::new(),
        };
        sink.write_zeros(2 * sink.page_size)?;
        sink.next_pgid = 2;
        Ok(Self {
            sink,
            root: Tree::new(),
            current: None,
            last_name: None,
            poisoned: false,
        })
    }

    /// Starts the next top-level bucket (closing the previous one). Names must be non-empty and
    /// strictly increasing; a bucket that gets no pairs still exists in the output.
    pub fn bucket(&mut self, name: &[u8]) -> Result<()> {
        self.check_usable()?;
        check_key(name)?;
        if self.last_name.as_deref().is_some_and(|last| last >= name) {
            return Err(Error::OutOfOrder {
                what: "bucket name",
                key: name.to_vec(),
            });
        }
        let closed = self.close_bucket();
        self.poison_on_error(closed)?;
        self.last_name = Some(name.to_vec());
        self.current = Some(OpenBucket {
            name: name.to_vec(),
            tree: Tree::new(),
            last_key: Vec::new(),
        });
        Ok(())
    }

    /// Adds a pair to the current bucket. Keys must be non-empty, at most
    /// [`MAX_KEY_SIZE`](crate::MAX_KEY_SIZE) bytes and strictly increasing; values at most
    /// [`MAX_VALUE_SIZE`](crate::MAX_VALUE_SIZE) bytes.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.check_usable()?;
        check_key(key)?;
        if value.len() > MAX_VALUE_SIZE {
            return Err(Error::ValueTooLarge(value.len()));
        }
        let bucket = self.current.as_mut().ok_or(Error::NoBucket)?;
        if !bucket.last_key.is_empty() && bucket.last_key.as_slice() >= key {
            return Err(Error::OutOfOrder {
                what: "key",
                key: key.to_vec(),
            });
        }
        let pushed = bucket.tree.push_leaf(&mut self.sink, 0, key, value);
        if pushed.is_ok() {
            bucket.last_key.clear();
            bucket.last_key.extend_from_slice(key);
        }
        self.poison_on_error(pushed)
    }

    /// Closes the last bucket, writes the root bucket and the two meta pages, and leaves the
    /// output positioned after the last page. Flushes the output but does not sync it.
    pub fn finish(mut self) -> Result<Written<W>> {
        self.check_usable()?;
        self.close_bucket()?;
        let root = match std::mem::take(&mut self.root).finish(&mut self.sink, false)? {
            TreeRoot::Page(pgid) => pgid,
            TreeRoot::Inline(_) => return Err(Error::Internal("root bucket came out inline")),
        };
        let sink = &mut self.sink;
        let pgid = sink.next_pgid;
        for (page, txid) in [(0u64, TXID), (1, TXID - 1)] {
            let meta = Meta {
                page_size: sink.page_size as u32,
                flags: 0,
                root,
                root_sequence: 0,
                freelist: NO_FREELIST,
                pgid,
                txid,
            };
            let header = PageHeader {
                id: page,
                flags: META_PAGE,
                count: 0,
                overflow: 0,
            };
            sink.out
                .seek(SeekFrom::Start(sink.base + page * sink.page_size as u64))?;
            sink.out.write_all(&header.encode())?;
            sink.out.write_all(&meta.encode())?;
        }
        let data_len = pgid * sink.page_size as u64;
        sink.out.seek(SeekFrom::Start(sink.base + data_len))?;
        sink.out.flush()?;
        Ok(Written {
            inner: self.sink.out,
            pgid,
            data_len,
        })
    }

    fn check_usable(&self) -> Result<()> {
        if self.poisoned {
            Err(Error::Poisoned)
        } else {
            Ok(())
        }
    }

    fn poison_on_error<T>(&mut self, result: Result<T>) -> Result<T> {
        self.poisoned |= result.is_err();
        result
    }

    /// Finishes the open bucket's tree and records the bucket in the root bucket.
    fn close_bucket(&mut self) -> Result<()> {
        let Some(bucket) = self.current.take() else {
            return Ok(());
        };
        let mut value = Vec::with_capacity(BUCKET_HEADER_SIZE);
        match bucket.tree.finish(&mut self.sink, true)? {
            TreeRoot::Page(pgid) => {
                value.extend_from_slice(&pgid.to_le_bytes());
                value.extend_from_slice(&0u64.to_le_bytes());
            }
            TreeRoot::Inline(page) => {
                value.extend_from_slice(&[0u8; BUCKET_HEADER_SIZE]);
                value.extend_from_slice(&page);
            }
        }
        self.root
            .push_leaf(&mut self.sink, BUCKET_LEAF_FLAG, &bucket.name, &value)
    }
}

fn check_key(key: &[u8]) -> Result<()> {
    if key.is_empty() {
        Err(Error::EmptyKey)
    } else if key.len() > MAX_KEY_SIZE {
        Err(Error::KeyTooLarge(key.len()))
    } else {
        Ok(())
    }
}

/// The output and the page numbering.
#[derive(Debug)]
struct Sink<W> {
    out: W,
    /// Where page 0 starts in `out`.
    base: u64,
    page_size: usize,
    next_pgid: u64,
    /// A node assembled for a single `write_all`: output to an unbuffered file costs one
    /// system call per node rather than one per part.
    scratch: Vec<u8>,
}

/// Nodes up to this size are assembled in `scratch`; larger ones (big values) are written part
/// by part, so a huge value is never copied.
const ASSEMBLE_LIMIT: usize = 64 * 1024;

impl<W: Write> Sink<W> {
    fn write_zeros(&mut self, mut len: usize) -> Result<()> {
        const ZEROS: [u8; 4096] = [0; 4096];
        while len > 0 {
            let n = len.min(ZEROS.len());
            self.out.write_all(&ZEROS[..n])?;
            len -= n;
        }
        Ok(())
    }

    /// Writes a node as the next pages: header, `elements` (already encoded), then `data`,
    /// padded to whole pages. Returns its first page id.
    fn write_node(
        &mut self,
        flags: u16,
        count: usize,
        elements: &[u8],
        data: &[&[u8]],
    ) -> Result<u64> {
        let len = PAGE_HEADER_SIZE + elements.len() + data.iter().map(|d| d.len()).sum::<usize>();
        let pages = len.div_ceil(self.page_size).max(1);
        let too_big = || Error::ValueTooLarge(len);
        let header = PageHeader {
            id: self.next_pgid,
            flags,
            count: u16::try_from(count).map_err(|_| too_big())?,
            overflow: u32::try_from(pages - 1).map_err(|_| too_big())?,
        };
        let padded = pages * self.page_size;
        if padded <= ASSEMBLE_LIMIT {
            self.scratch.clear();
            self.scratch.extend_from_slice(&header.encode());
            self.scratch.extend_from_slice(elements);
            for part in data {
                self.scratch.extend_from_slice(part);
            }
            self.scratch.resize(padded, 0);
            self.out.write_all(&self.scratch)?;
        } else {
            self.out.write_all(&header.encode())?;
            self.out.write_all(elements)?;
            for part in data {
                self.out.write_all(part)?;
            }
            self.write_zeros(padded - len)?;
        }
        self.next_pgid += pages as u64;
        Ok(header.id)
    }
}

/// A node being filled: its elements' fixed fields and, concatenated, their keys and values.
#[derive(Debug, Default)]
struct NodeBuf {
    /// Leaf: (flags, key size, value size); branch: (key size, child pgid) packed the same way.
    elements: Vec<(u32, usize, u64)>,
    data: Vec<u8>,
}

impl NodeBuf {
    fn len(&self) -> usize {
        self.elements.len()
    }

    fn size(&self) -> usize {
        PAGE_HEADER_SIZE + self.elements.len() * ELEMENT_SIZE + self.data.len()
    }

    fn first_key(&self) -> &[u8] {
        let ksize = self.elements.first().map_or(0, |e| e.1);
        self.data.get(..ksize).unwrap_or_default()
    }

    /// Encodes the element array: each element's key offset is relative to the element.
    fn encode_elements(&self, branch: bool) -> Result<Vec<u8>> {
        let count = self.elements.len();
        let mut out = Vec::with_capacity(count * ELEMENT_SIZE);
        let mut data_at = PAGE_HEADER_SIZE + count * ELEMENT_SIZE;
        for (i, &(flags, ksize, extra)) in self.elements.iter().enumerate() {
            let element_at = PAGE_HEADER_SIZE + i * ELEMENT_SIZE;
            let pos = u32_len(data_at - element_at)?;
            if branch {
                out.extend_from_slice(&pos.to_le_bytes());
                out.extend_from_slice(&u32_len(ksize)?.to_le_bytes());
                out.extend_from_slice(&extra.to_le_bytes());
                data_at += ksize;
            } else {
                out.extend_from_slice(&flags.to_le_bytes());
                out.extend_from_slice(&pos.to_le_bytes());
                out.extend_from_slice(&u32_len(ksize)?.to_le_bytes());
                let vsize = usize::try_from(extra).map_err(|_| Error::ValueTooLarge(usize::MAX))?;
                out.extend_from_slice(&u32_len(vsize)?.to_le_bytes());
                data_at += ksize + vsize;
            }
        }
        Ok(out)
    }
}

fn u32_len(len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::ValueTooLarge(len))
}

/// One level of a tree under construction.
#[derive(Debug, Default)]
struct Level {
    node: NodeBuf,
    /// Nodes of this level already written.
    written: u64,
}

/// A bucket's B+tree, built bottom-up: `levels[0]` holds leaves, each higher level the branch
/// nodes pointing at the level below.
#[derive(Debug, Default)]
struct Tree {
    levels: Vec<Level>,
}

enum TreeRoot {
    Page(u64),
    /// The bucket's only leaf, encoded as an inline page.
    Inline(Vec<u8>),
}

impl Tree {
    fn new() -> Self {
        Self {
            levels: vec![Level::default()],
        }
    }

    fn push_leaf<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let size = ELEMENT_SIZE + key.len() + value.len();
        self.make_room(sink, 0, size)?;
        let Some(leaf) = self.levels.first_mut() else {
            return Err(Error::Internal("tree without a leaf level"));
        };
        if leaf.node.len() == 0 && PAGE_HEADER_SIZE + size > sink.page_size {
            // An element larger than a page gets a (multi-page) leaf of its own, written
            // straight from the caller's buffers.
            let element = NodeBuf {
                elements: vec![(flags, key.len(), value.len() as u64)],
                data: Vec::new(),
            }
            .encode_elements(false)?;
            let pgid = sink.write_node(LEAF_PAGE, 1, &element, &[key, value])?;
            leaf.written += 1;
            return self.push_branch(sink, 1, key, pgid);
        }
        leaf.node
            .elements
            .push((flags, key.len(), value.len() as u64));
        leaf.node.data.extend_from_slice(key);
        leaf.node.data.extend_from_slice(value);
        Ok(())
    }

    fn push_branch<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        level: usize,
        key: &[u8],
        child: u64,
    ) -> Result<()> {
        if self.levels.len() <= level {
            // Two children or more per branch make 64 levels unreachable; a bug must not
            // become an endless tower of single-child branches.
            if level >= 64 {
                return Err(Error::Internal("tree grew past 64 levels"));
            }
            self.levels.push(Level::default());
        }
        self.make_room(sink, level, ELEMENT_SIZE + key.len())?;
        let Some(branch) = self.levels.get_mut(level) else {
            return Err(Error::Internal("branch level missing"));
        };
        branch.node.elements.push((0, key.len(), child));
        branch.node.data.extend_from_slice(key);
        Ok(())
    }

    /// Writes out `level`'s node if an element of `size` bytes would push it past a page.
    /// Nodes are filled completely rather than to bbolt's 50% (or etcd's 90%) split point:
    /// a snapshot is read far more than it is modified, and bbolt splits on its own later.
    ///
    /// A branch keeps at least two children even if that overflows its page (as bbolt's
    /// `minKeysPerPage`): with keys near the 32 KiB limit every branch is larger than a page,
    /// and flushing at one child would stack up a level per key.
    fn make_room<W: Write>(&mut self, sink: &mut Sink<W>, level: usize, size: usize) -> Result<()> {
        let Some(current) = self.levels.get(level) else {
            return Ok(());
        };
        let min = if level == 0 { 1 } else { 2 };
        let full = current.node.size() + size > sink.page_size
            || current.node.len() >= usize::from(u16::MAX);
        if current.node.len() >= min && full {
            let (key, pgid) = self.write_level(sink, level)?;
            self.push_branch(sink, level + 1, &key, pgid)?;
        }
        Ok(())
    }

    /// Writes `level`'s node, empties it and returns its first key and page id.
    fn write_level<W: Write>(
        &mut self,
        sink: &mut Sink<W>,
        level: usize,
    ) -> Result<(Vec<u8>, u64)> {
        let Some(current) = self.levels.get_mut(level) else {
            return Err(Error::Internal("tree level missing"));
        };
        let node = &mut current.node;
        let flags = if level == 0 { LEAF_PAGE } else { BRANCH_PAGE };
        let elements = node.encode_elements(level > 0)?;
        let pgid = sink.write_node(flags, node.len(), &elements, &[&node.data])?;
        let first_key = node.first_key().to_vec();
        // Emptied, not replaced: the next node of this level reuses the allocations.
        node.elements.clear();
        node.data.clear();
        current.written += 1;
        Ok((first_key, pgid))
    }

    /// Writes whatever is unfinished, bottom-up, and returns the root. The top level always
    /// has a single node (a level only gains a parent once it wrote a node), which is the root,
    /// except that a branch with a single child is skipped in favour of the child.
    fn finish<W: Write>(mut self, sink: &mut Sink<W>, allow_inline: bool) -> Result<TreeRoot> {
        let mut level = 0;
        loop {
            let top = level + 1 == self.levels.len();
            let Some(current) = self.levels.get(level) else {
                return Err(Error::Internal("tree level missing"));
            };
            if top {
                let node = &current.node;
                if level > 0 && node.len() == 1 {
                    return Ok(TreeRoot::Page(node.elements[0].2));
                }
                // bbolt inlines a bucket whose single leaf fits in a quarter page.
                if level == 0 && allow_inline && node.size() <= sink.page_size / 4 {
                    let header = PageHeader {
                        id: 0,
                        flags: LEAF_PAGE,
                        count: u16::try_from(node.len())
                            .map_err(|_| Error::Internal("inline page too full"))?,
                        overflow: 0,
                    };
                    let mut page = header.encode().to_vec();
                    page.extend_from_slice(&node.encode_elements(false)?);
                    page.extend_from_slice(&node.data);
                    return Ok(TreeRoot::Inline(page));
                }
                let (_, pgid) = self.write_level(sink, level)?;
                return Ok(TreeRoot::Page(pgid));
            }
            if current.node.len() > 0 {
                let (key, pgid) = self.write_level(sink, level)?;
                self.push_branch(sink, level + 1, &key, pgid)?;
            }
            level += 1;
        }
    }
}
