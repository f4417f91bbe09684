//! How a key's record is stored. A row of the key table holds the record as etcd stores it, an
//! encoded `mvccpb.KeyValue` under its revision. A value longer than [`CHUNK_BYTES`] is kept in
//! the value table instead, in chunks of that size under the revision and the chunk's index; its
//! row then holds the record without the value, plus the value's length in field 15 (unknown to
//! `mvccpb.KeyValue`, so decoding the row as one still works).
//!
//! Why: redb gives a value larger than a page an allocation of a power of two of pages, so a
//! 1.4 MB value took 2 MiB, and a B-tree leaf holding a 3,000-byte row wastes a quarter of its
//! page. Two chunks of 2,000 bytes fill a 4 KiB leaf; measured with redb 4 on values of 10 KB to
//! 1.4 MB, the allocated bytes fall from 1.3-1.75× the data to 1.04× (docs/PERFORMANCE.md).

use std::borrow::Cow;

use prost::Message;
use redb::ReadableTable;
use synod_api::mvccpb::KeyValue;

use crate::backend::VALUE;
use crate::error::StorageError;

/// Values longer than this are stored in chunks of this size.
pub const CHUNK_BYTES: usize = 2000;

/// The part of a row that says its value is in the value table.
#[derive(Clone, PartialEq, Message)]
struct Spilled {
    #[prost(uint64, tag = "15")]
    value_len: u64,
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

fn chunk_key(revision: &[u8], index: u32) -> Vec<u8> {
    let mut key = Vec::with_capacity(revision.len() + 4);
    key.extend_from_slice(revision);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The row for `kv`, and whether its value goes to the value table.
pub fn encode(kv: &KeyValue) -> (Vec<u8>, bool) {
    if kv.value.len() <= CHUNK_BYTES {
        return (kv.encode_to_vec(), false);
    }
    let mut row = KeyValue {
        value: Vec::new(),
        ..kv.clone()
    }
    .encode_to_vec();
    Spilled {
        value_len: kv.value.len() as u64,
    }
    .encode(&mut row)
    .unwrap_or_default();
    (row, true)
}

/// Writes `kv`'s value chunks under `revision` (for a row [`encode`] said spills).
pub fn write_value(
    values: &mut Table<'_>,
    revision: &[u8],
    value: &[u8],
) -> Result<(), StorageError> {
    for (index, chunk) in value.chunks(CHUNK_BYTES).enumerate() {
        values
            .insert(chunk_key(revision, index as u32).as_slice(), chunk)
            .map_err(StorageError::backend)?;
    }
    Ok(())
}

/// Writes `kv` at `revision`: its row, and its value's chunks when it has a long value.
pub fn write(
    tx: &redb::WriteTransaction,
    keys: &mut Table<'_>,
    revision: &[u8],
    kv: &KeyValue,
) -> Result<(), StorageError> {
    let (row, spilled) = encode(kv);
    keys.insert(revision, row.as_slice())
        .map_err(StorageError::backend)?;
    if spilled {
        let mut values = tx.open_table(VALUE).map_err(StorageError::backend)?;
        write_value(&mut values, revision, &kv.value)?;
    }
    Ok(())
}

/// The length of the value a row keeps in the value table, if it does.
pub fn spilled_len(row: &[u8]) -> Option<u64> {
    Spilled::decode(row)
        .ok()
        .map(|spilled| spilled.value_len)
        .filter(|len| *len > 0)
}

/// The value of a spilled row, reassembled.
fn read_value(
    values: &impl ReadableTable<&'static [u8], &'static [u8]>,
    revision: &[u8],
    len: u64,
) -> Result<Vec<u8>, StorageError> {
    let mut value = Vec::with_capacity(len as usize);
    let start = chunk_key(revision, 0);
    let end = chunk_key(revision, u32::MAX);
    for entry in values
        .range(start.as_slice()..=end.as_slice())
        .map_err(StorageError::backend)?
    {
        let (_, chunk) = entry.map_err(StorageError::backend)?;
        value.extend_from_slice(chunk.value());
    }
    if value.len() as u64 != len {
        return Err(StorageError::corrupt(format!(
            "the value at revision {revision:?} has {} of its {len} bytes",
            value.len()
        )));
    }
    Ok(value)
}

/// Decodes the row at `revision`, with its value from the value table if it spilled.
pub fn decode(
    values: &impl ReadableTable<&'static [u8], &'static [u8]>,
    revision: &[u8],
    row: &[u8],
) -> Result<KeyValue, StorageError> {
    let mut kv = KeyValue::decode(row).map_err(|e| StorageError::corrupt(e.to_string()))?;
    if kv.value.is_empty()
        && let Some(len) = spilled_len(row)
    {
        kv.value = read_value(values, revision, len)?;
    }
    Ok(kv)
}

/// The row as etcd would store it (for hashes and etcd-format snapshots): the row itself, or
/// for a spilled value the record re-encoded with its value.
pub fn etcd_row<'r>(
    values: &impl ReadableTable<&'static [u8], &'static [u8]>,
    revision: &[u8],
    row: &'r [u8],
) -> Result<Cow<'r, [u8]>, StorageError> {
    if spilled_len(row).is_none() {
        return Ok(Cow::Borrowed(row));
    }
    Ok(Cow::Owned(decode(values, revision, row)?.encode_to_vec()))
}

/// Removes the value chunks of the row at `revision` (its row is being removed).
pub fn remove_value(values: &mut Table<'_>, revision: &[u8]) -> Result<(), StorageError> {
    let start = chunk_key(revision, 0);
    let end = chunk_key(revision, u32::MAX);
    values
        .retain_in(start.as_slice()..=end.as_slice(), |_, _| false)
        .map_err(StorageError::backend)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_spill_and_short_ones_do_not() {
        let short = KeyValue {
            key: b"k".to_vec(),
            value: vec![1; CHUNK_BYTES],
            create_revision: 2,
            mod_revision: 3,
            version: 2,
            lease: 7,
        };
        let (row, spilled) = encode(&short);
        assert!(!spilled);
        assert_eq!(row, short.encode_to_vec());
        assert_eq!(spilled_len(&row), None);
        let long = KeyValue {
            value: vec![2; CHUNK_BYTES * 3 + 1],
            ..short.clone()
        };
        let (row, spilled) = encode(&long);
        assert!(spilled);
        assert_eq!(spilled_len(&row), Some(long.value.len() as u64));
        // The row decodes as the record without its value.
        let decoded = KeyValue::decode(row.as_slice()).expect("decodes");
        assert_eq!(
            decoded,
            KeyValue {
                value: Vec::new(),
                ..long
            }
        );
    }
}
