//! The state-machine snapshot a leader sends to a follower too far behind for its log, as a
//! stream of rows. The leader reads them from one consistent read transaction and writes
//! nothing; the follower writes them into a fresh redb file as they arrive. Each row is written
//! once, by the member that keeps it, and reading, sending and writing overlap.
//!
//! The stream is a sequence of records, cut into chunks anywhere:
//! - a row: `[table: u8][key length: u32][value length: u32][key][value]`, the tables in the
//!   order of [`each_table`], each table's rows in key order;
//! - then the end: `[END][rows: u64][CRC-32 of every byte before END: u32]`.
//!
//! Integers are little-endian. A stream that ends early, goes on after its end, reorders rows,
//! names an unknown table, holds a key or value its table cannot hold, or fails its checksum is
//! refused; the file built from it is then never used.

use std::ops::Bound;
use std::path::Path;

use redb::{Database, Key, ReadableTable, TableDefinition, TableHandle, Value};

use crate::backend::{
    ALARM, APPLIED_REQUESTS, AUTH_ROLES, AUTH_USERS, KEY, LEASE, MEMBERS, META, REMOVED, VALUE,
};
use crate::disk::{Boxed, Disk};
use crate::error::StorageError;
use crate::mvcc::kv_store::{IndexLoader, PreparedIndex};
use crate::mvcc::revision::Revision;
use crate::planted::Bug;

/// This stream's format, as the first chunk of a transfer names it (`SnapshotChunk.format`);
/// members before it sent the state-machine file itself, with no format (0).
pub const FORMAT: u32 = 1;

/// The tag of the end record.
const END: u8 = 0xFF;
/// A row's tag and its key's and value's lengths.
const HEADER_BYTES: usize = 9;
/// The end record after its tag: the row count and the checksum.
const END_BYTES: usize = 12;

/// Something done to each table the snapshot carries, in the stream's order.
trait EachTable {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        tag: u8,
        definition: TableDefinition<K, V>,
    ) -> Result<(), StorageError>;
}

/// The tags of the tables the key index is rebuilt from.
const KEY_TAG: u8 = 0;
const META_TAG: u8 = 2;

/// Every table of the state machine, each with its tag in the stream.
fn each_table(visit: &mut impl EachTable) -> Result<(), StorageError> {
    visit.table(KEY_TAG, KEY)?;
    visit.table(1, VALUE)?;
    visit.table(META_TAG, META)?;
    visit.table(3, LEASE)?;
    visit.table(4, MEMBERS)?;
    visit.table(5, ALARM)?;
    visit.table(6, REMOVED)?;
    visit.table(7, AUTH_USERS)?;
    visit.table(8, AUTH_ROLES)?;
    visit.table(9, APPLIED_REQUESTS)
}

/// Sends every row `view` sees through `send`, in chunks of `chunk_bytes` (the last one
/// shorter). `send` returns false when the receiver is gone; so does this, then, having read no
/// further.
pub fn send_rows(
    view: &redb::ReadTransaction,
    chunk_bytes: usize,
    send: &mut dyn FnMut(Vec<u8>) -> bool,
) -> Result<bool, StorageError> {
    let mut out = Framer {
        chunk: Vec::with_capacity(chunk_bytes),
        chunk_bytes: chunk_bytes.max(1),
        crc: crc32fast::Hasher::new(),
        rows: 0,
        send,
        open: true,
    };
    each_table(&mut Rows {
        view,
        out: &mut out,
    })?;
    Ok(out.end())
}

/// Every chunk of `view`'s stream (see [`send_rows`]), in memory: for the simulator, which hands
/// a transfer over whole, and for tests.
pub fn rows_in_memory(
    view: &redb::ReadTransaction,
    chunk_bytes: usize,
) -> Result<Vec<Vec<u8>>, StorageError> {
    let mut chunks = Vec::new();
    send_rows(view, chunk_bytes, &mut |chunk| {
        chunks.push(chunk);
        true
    })?;
    Ok(chunks)
}

/// Cuts the stream into chunks.
struct Framer<'a> {
    chunk: Vec<u8>,
    chunk_bytes: usize,
    crc: crc32fast::Hasher,
    rows: u64,
    send: &'a mut dyn FnMut(Vec<u8>) -> bool,
    /// The receiver still takes chunks.
    open: bool,
}

impl Framer<'_> {
    fn row(&mut self, tag: u8, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        let length = |bytes: &[u8]| {
            u32::try_from(bytes.len())
                .map_err(|_| StorageError::corrupt("a snapshot row longer than 4 GiB"))
        };
        let mut header = [0u8; HEADER_BYTES];
        header[0] = tag;
        header[1..5].copy_from_slice(&length(key)?.to_le_bytes());
        header[5..9].copy_from_slice(&length(value)?.to_le_bytes());
        for bytes in [&header[..], key, value] {
            self.crc.update(bytes);
            self.chunk.extend_from_slice(bytes);
        }
        self.rows += 1;
        while self.open && self.chunk.len() >= self.chunk_bytes {
            let mut rest = self.chunk.split_off(self.chunk_bytes);
            rest.reserve(self.chunk_bytes.saturating_sub(rest.len()));
            let full = std::mem::replace(&mut self.chunk, rest);
            self.open = (self.send)(full);
        }
        Ok(())
    }

    /// Sends what is left and the end record; returns whether the receiver took everything.
    fn end(mut self) -> bool {
        if !self.open {
            return false;
        }
        self.chunk.push(END);
        self.chunk.extend_from_slice(&self.rows.to_le_bytes());
        self.chunk
            .extend_from_slice(&self.crc.clone().finalize().to_le_bytes());
        (self.send)(std::mem::take(&mut self.chunk))
    }
}

/// The sending side: each table's rows into the framer.
struct Rows<'a, 'b> {
    view: &'a redb::ReadTransaction,
    out: &'a mut Framer<'b>,
}

impl EachTable for Rows<'_, '_> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        tag: u8,
        definition: TableDefinition<K, V>,
    ) -> Result<(), StorageError> {
        let table = match self.view.open_table(definition) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(StorageError::backend(error)),
        };
        for entry in table.iter().map_err(StorageError::backend)? {
            if !self.out.open {
                break;
            }
            let (key, value) = entry.map_err(StorageError::backend)?;
            self.out.row(
                tag,
                K::as_bytes(&key.value()).as_ref(),
                V::as_bytes(&value.value()).as_ref(),
            )?;
        }
        Ok(())
    }
}

/// Writes the rows of a stream (see [`send_rows`]) into a new redb file at `path`, in one
/// durable commit once the stream has ended whole; returns the number of rows. `chunks` ends
/// when the sender does, or when the transfer broke: a stream without its end is refused.
pub fn build_from_rows<C: AsRef<[u8]> + Default>(
    disk: &dyn Disk,
    path: &Path,
    chunks: &mut dyn Iterator<Item = C>,
) -> Result<u64, StorageError> {
    disk.remove(path).map_err(|e| StorageError::open(path, e))?;
    let storage = disk
        .storage(path)
        .map_err(|e| StorageError::open(path, e))?;
    // A cache of the member's size: redb writes pages out as it fills, while rows still
    // arrive, instead of all of them at the commit.
    let db = Database::builder()
        .set_cache_size(crate::backend::CACHE_BYTES)
        .create_with_backend(Boxed(storage))
        .map_err(|e| StorageError::open(path, e))?;
    let mut tx = db.begin_write().map_err(StorageError::backend)?;
    let mut input = Input::new(chunks);
    let mut next = input.tag()?;
    each_table(&mut Fill {
        tx: &tx,
        input: &mut input,
        next: &mut next,
    })?;
    match next {
        END => input.end()?,
        tag => {
            return Err(refused(format!(
                "a row of table {tag} out of order, or of no table"
            )));
        }
    }
    tx.set_durability(redb::Durability::Immediate)
        .map_err(StorageError::backend)?;
    tx.commit().map_err(StorageError::backend)?;
    Ok(input.rows)
}

/// Rebuilds the key index from the rows of a stream (see [`send_rows`]) while
/// [`build_from_rows`] writes the same rows into the file, on another thread: the follower then
/// installs the file without reading it again. Checks the stream as the builder does.
pub fn index_from_rows<C: AsRef<[u8]> + Default>(
    chunks: &mut dyn Iterator<Item = C>,
) -> Result<PreparedIndex, StorageError> {
    let mut input = Input::new(chunks);
    let mut loader = IndexLoader::default();
    loop {
        match input.tag()? {
            END => break,
            KEY_TAG => {
                let (key, value) = input.row()?;
                let deletion = || Revision::from_bytes(key).is_some_and(|(_, tombstone)| tombstone);
                if !(crate::planted::is_planted(Bug::StreamIndexKeepsDeleted) && deletion()) {
                    loader.key_row(key, value)?;
                }
            }
            META_TAG => {
                let (key, value) = input.row()?;
                loader.meta_row(key, value)?;
            }
            _ => {
                input.row()?;
            }
        }
    }
    input.end()?;
    Ok(loader.finish())
}

fn refused(why: impl std::fmt::Display) -> StorageError {
    StorageError::corrupt(format!("snapshot stream refused: {why}"))
}

/// The receiving side's reader: records out of chunks, however they were cut.
struct Input<'a, C> {
    chunks: &'a mut dyn Iterator<Item = C>,
    chunk: C,
    /// Bytes of `chunk` already read.
    at: usize,
    /// A record that straddles chunks, put together.
    scratch: Vec<u8>,
    crc: crc32fast::Hasher,
    rows: u64,
}

impl<'a, C: AsRef<[u8]> + Default> Input<'a, C> {
    fn new(chunks: &'a mut dyn Iterator<Item = C>) -> Self {
        Input {
            chunks,
            chunk: C::default(),
            at: 0,
            scratch: Vec::new(),
            crc: crc32fast::Hasher::new(),
            rows: 0,
        }
    }

    /// The next `n` bytes, counted into the checksum if `counted`.
    fn take(&mut self, n: usize, counted: bool) -> Result<&[u8], StorageError> {
        let chunk = self.chunk.as_ref();
        if chunk.len() - self.at >= n {
            let range = self.at..self.at + n;
            self.at += n;
            if counted {
                self.crc.update(&chunk[range.clone()]);
            }
            // Borrowed again: a conditional return of `chunk` would keep it borrowed below.
            return Ok(&self.chunk.as_ref()[range]);
        }
        self.scratch.clear();
        while self.scratch.len() < n {
            if self.at == self.chunk.as_ref().len() {
                self.chunk = self
                    .chunks
                    .next()
                    .ok_or_else(|| refused("it ended before its end record"))?;
                self.at = 0;
            }
            let chunk = self.chunk.as_ref();
            let wanted = (n - self.scratch.len()).min(chunk.len() - self.at);
            self.scratch
                .extend_from_slice(&chunk[self.at..self.at + wanted]);
            self.at += wanted;
        }
        if counted {
            self.crc.update(&self.scratch);
        }
        Ok(&self.scratch)
    }

    /// The tag of the next record.
    fn tag(&mut self) -> Result<u8, StorageError> {
        let tag = self.take(1, false)?[0];
        if tag != END {
            self.crc.update(&[tag]);
        }
        Ok(tag)
    }

    /// The key and the value of a row whose tag was read.
    fn row(&mut self) -> Result<(&[u8], &[u8]), StorageError> {
        let lengths = self.take(HEADER_BYTES - 1, true)?;
        let key_bytes = u32::from_le_bytes([lengths[0], lengths[1], lengths[2], lengths[3]]);
        let value_bytes = u32::from_le_bytes([lengths[4], lengths[5], lengths[6], lengths[7]]);
        let (key_bytes, value_bytes) = (key_bytes as usize, value_bytes as usize);
        self.rows += 1;
        let body = self.take(key_bytes + value_bytes, true)?;
        Ok(body.split_at(key_bytes))
    }

    /// Checks the end record (its tag read) and that nothing follows it.
    fn end(&mut self) -> Result<(), StorageError> {
        let crc = self.crc.clone().finalize();
        let end = self.take(END_BYTES, false)?;
        let rows = u64::from_le_bytes([
            end[0], end[1], end[2], end[3], end[4], end[5], end[6], end[7],
        ]);
        let sent_crc = u32::from_le_bytes([end[8], end[9], end[10], end[11]]);
        if sent_crc != crc {
            return Err(refused(format!(
                "checksum {crc:08x}, the sender's {sent_crc:08x}"
            )));
        }
        if rows != self.rows {
            return Err(refused(format!(
                "{} rows, the sender sent {rows}",
                self.rows
            )));
        }
        let trailing = self.chunk.as_ref().len() - self.at
            + (&mut *self.chunks)
                .map(|chunk| chunk.as_ref().len())
                .sum::<usize>();
        if trailing > 0 {
            return Err(refused(format!("{trailing} bytes after its end")));
        }
        Ok(())
    }
}

/// The receiving side: each table's rows from the stream, through one cursor at its end.
struct Fill<'a, 'b, C> {
    tx: &'a redb::WriteTransaction,
    input: &'a mut Input<'b, C>,
    /// The tag of the record read last.
    next: &'a mut u8,
}

impl<C: AsRef<[u8]> + Default> EachTable for Fill<'_, '_, C> {
    fn table<K: Key + 'static, V: Value + 'static>(
        &mut self,
        tag: u8,
        definition: TableDefinition<K, V>,
    ) -> Result<(), StorageError> {
        let mut table = self
            .tx
            .open_table(definition)
            .map_err(StorageError::backend)?;
        if *self.next != tag {
            return Ok(());
        }
        // Rows arrive in key order into an empty table: they all go in at its end, through one
        // cursor, which buffers such runs and splices them in (about 3x faster than one `insert`
        // per row). A key out of order is refused by the cursor.
        let mut cursor = table
            .upper_bound_mut(Bound::<K::SelfType<'_>>::Unbounded)
            .map_err(StorageError::backend)?;
        while *self.next == tag {
            let (key, value) = self.input.row()?;
            if !fits::<K>(key) || !fits::<V>(value) {
                return Err(refused(format!(
                    "a row of table {} that does not fit its types",
                    definition.name()
                )));
            }
            cursor
                .insert_before(K::from_bytes(key), V::from_bytes(value))
                .map_err(|error| match error {
                    redb::CursorError::UnorderedKey => {
                        refused(format!("rows of table {} out of order", definition.name()))
                    }
                    other => StorageError::backend(redb::Error::from(other)),
                })?;
            *self.next = self.input.tag()?;
        }
        cursor.close().map_err(StorageError::backend)
    }
}

/// Whether `bytes` can be read as a `T` (redb's `from_bytes` panics otherwise): the width of a
/// fixed-width type, UTF-8 for a string.
fn fits<T: Value>(bytes: &[u8]) -> bool {
    match T::fixed_width() {
        Some(width) => bytes.len() == width,
        None if T::type_name() == <&str as Value>::type_name() => {
            std::str::from_utf8(bytes).is_ok()
        }
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::RealDisk;
    use redb::ReadableDatabase;

    /// A state machine with rows in several tables, one of them longer than a 4 KiB chunk.
    fn source(dir: &Path) -> Database {
        let db = Database::create(dir.join("source.db")).expect("test");
        let tx = db.begin_write().expect("test");
        {
            let mut keys = tx.open_table(KEY).expect("test");
            for i in 0..2_000u32 {
                keys.insert(format!("key-{i:05}").as_bytes(), &i.to_le_bytes()[..])
                    .expect("test");
            }
            let mut values = tx.open_table(VALUE).expect("test");
            values
                .insert(&b"big"[..], &vec![7u8; 3 * 4096][..])
                .expect("test");
            let mut meta = tx.open_table(META).expect("test");
            meta.insert("applied_index", &9u64.to_le_bytes()[..])
                .expect("test");
            let mut alarms = tx.open_table(ALARM).expect("test");
            alarms.insert((3u64, 1i32), ()).expect("test");
            let mut requests = tx.open_table(APPLIED_REQUESTS).expect("test");
            requests.insert(5u64, (6u64, 7u64)).expect("test");
        }
        tx.commit().expect("test");
        db
    }

    fn chunks_of(db: &Database, chunk_bytes: usize) -> Vec<Vec<u8>> {
        rows_in_memory(&db.begin_read().expect("test"), chunk_bytes).expect("test")
    }

    fn build(dir: &Path, chunks: Vec<Vec<u8>>) -> Result<u64, StorageError> {
        build_from_rows(&RealDisk, &dir.join("built.db"), &mut chunks.into_iter())
    }

    /// The built file holds exactly the rows of the view it was sent from, however the stream
    /// was cut.
    #[test]
    fn a_streamed_snapshot_rebuilds_every_table() {
        let dir = tempfile::tempdir().expect("test");
        let db = source(dir.path());
        for chunk_bytes in [1, 7, 4096, 1 << 20] {
            let rows = build(dir.path(), chunks_of(&db, chunk_bytes)).expect("test");
            assert_eq!(rows, 2_004);
            let built = Database::open(dir.path().join("built.db")).expect("test");
            assert_eq!(
                chunks_of(&built, 1 << 20),
                chunks_of(&db, 1 << 20),
                "cut every {chunk_bytes} bytes"
            );
        }
    }

    /// The stream carries every table a state machine has: a table added to the backend and not
    /// to `each_table` would be lost by every member that catches up by snapshot.
    #[test]
    fn a_snapshot_carries_every_table_of_the_state_machine() {
        let dir = tempfile::tempdir().expect("test");
        let backend = crate::backend::Backend::open(&dir.path().join("db")).expect("test");
        let tx = backend.begin_write().expect("test");
        tx.open_table(AUTH_USERS).expect("test");
        tx.open_table(AUTH_ROLES).expect("test");
        tx.commit().expect("test");
        let chunks = rows_in_memory(&backend.begin_read().expect("test"), 1 << 20).expect("test");
        build(dir.path(), chunks).expect("test");
        let tables = |view: &redb::ReadTransaction| {
            let mut names: Vec<String> = view
                .list_tables()
                .expect("test")
                .map(|table| table.name().to_owned())
                .collect();
            names.sort();
            names
        };
        let built = Database::open(dir.path().join("built.db")).expect("test");
        assert_eq!(
            tables(&built.begin_read().expect("test")),
            tables(&backend.begin_read().expect("test"))
        );
    }

    /// A receiver that goes away stops the sender: nothing more is read or sent.
    #[test]
    fn the_sender_stops_when_the_receiver_goes() {
        let dir = tempfile::tempdir().expect("test");
        let db = source(dir.path());
        let view = db.begin_read().expect("test");
        let mut sends = 0;
        let whole = send_rows(&view, 64, &mut |_| {
            sends += 1;
            sends < 3
        })
        .expect("test");
        assert!(!whole);
        assert_eq!(sends, 3);
    }

    /// Each way a stream can be damaged is refused, not built.
    #[test]
    fn a_damaged_stream_is_refused() {
        let dir = tempfile::tempdir().expect("test");
        let db = source(dir.path());
        let whole: Vec<u8> = chunks_of(&db, 1 << 20).concat();
        let refusal = |stream: Vec<u8>| {
            build(dir.path(), vec![stream])
                .expect_err("a damaged stream was built")
                .to_string()
        };
        // A flipped byte inside a value.
        let mut flipped = whole.clone();
        flipped[HEADER_BYTES + 9] ^= 1;
        assert!(refusal(flipped).contains("checksum"));
        // Cut short, anywhere.
        for cut in [0, 1, HEADER_BYTES + 3, whole.len() / 2, whole.len() - 1] {
            assert!(refusal(whole[..cut].to_vec()).contains("ended before"));
        }
        // Something after the end.
        let mut longer = whole.clone();
        longer.push(0);
        assert!(refusal(longer).contains("after its end"));
        // A table that does not exist.
        let mut unknown = whole.clone();
        unknown[0] = 42;
        assert!(refusal(unknown).contains("of no table"));
        // Two rows swapped: the second key sorts before the first.
        let row = HEADER_BYTES + "key-00000".len() + 4;
        let mut swapped = whole.clone();
        swapped[..row].copy_from_slice(&whole[row..2 * row]);
        swapped[row..2 * row].copy_from_slice(&whole[..row]);
        assert!(refusal(swapped).contains("out of order"));
        // A member id (a u64 key) of the wrong width.
        let member = vec![4, 3, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3];
        assert!(refusal(member).contains("does not fit"));
    }
}
