//! The state machine in etcd's database layout: the bbolt file etcd keeps and streams as a
//! snapshot (`../shared/design/etcd-ops-compat.md` §4). [`export`] writes one from a consistent
//! view, so `Maintenance.Snapshot` hands out backups etcd's tools and etcd itself can read;
//! [`import`] fills a new member's state machine from one, etcd's or Synod's, keeping every
//! revision; [`status`] is `snapshot status`.
//!
//! The two layouts are close by design: Synod's key history is etcd's (revision keys to
//! `mvccpb.KeyValue`), a lease record is `leasepb.Lease` field for field, users and roles are
//! `authpb`. Members, alarms and Raft positions differ, and a restore replaces them anyway.

use std::io::{Seek, Write};

use prost::Message as _;
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use synod_api::etcdserverpb::AlarmMember;
use synod_api::synodpb::MemberRecord;
use synod_bbolt::{ReadAt, Reader, Writer, Written};

use crate::backend::{self, AUTH_ROLES, AUTH_USERS, KEY, LEASE, MEMBERS, META, REMOVED, VALUE};
use crate::crc32c;
use crate::error::StorageError;
use crate::mvcc::revision::Revision;
use crate::mvcc::rows;

/// The cluster version written into a snapshot. etcd 3.4 to 3.6 open such a file; the storage
/// version key (3.6) is left out so that 3.4 and 3.5 do not meet a schema newer than theirs.
const CLUSTER_VERSION: &str = "3.6.0";

fn bbolt(error: synod_bbolt::Error) -> StorageError {
    StorageError::corrupt(format!("etcd database: {error}"))
}

/// Writes the state machine as `tx` sees it into `out` in etcd's layout: every bucket etcd 3.4
/// to 3.6 expects, in bbolt's order. Returns the writer's summary (the data's length, to which
/// a snapshot stream appends its SHA-256 digest).
pub fn export<W: Write + Seek>(tx: &ReadTransaction, out: W) -> Result<Written<W>, StorageError> {
    let mut writer = Writer::new(out).map_err(bbolt)?;
    let meta = tx.open_table(META).map_err(StorageError::backend)?;

    writer.bucket(b"alarm").map_err(bbolt)?;
    let mut alarms: Vec<Vec<u8>> = crate::apply::read_alarms(tx)?
        .into_iter()
        .map(|(member_id, alarm)| AlarmMember { member_id, alarm }.encode_to_vec())
        .collect();
    alarms.sort();
    for alarm in &alarms {
        writer.put(alarm, b"").map_err(bbolt)?;
    }

    writer.bucket(b"auth").map_err(bbolt)?;
    let enabled = backend::read_meta_u64(&meta, backend::META_AUTH_ENABLED)? == 1;
    writer
        .put(b"authEnabled", &[u8::from(enabled)])
        .map_err(bbolt)?;
    let auth_revision = backend::read_meta_u64(&meta, backend::META_AUTH_REVISION)?.max(1);
    writer
        .put(b"authRevision", &auth_revision.to_be_bytes())
        .map_err(bbolt)?;
    for (bucket, table) in [
        (&b"authRoles"[..], AUTH_ROLES),
        (&b"authUsers"[..], AUTH_USERS),
    ] {
        writer.bucket(bucket).map_err(bbolt)?;
        match tx.open_table(table) {
            Ok(table) => {
                for entry in table.iter().map_err(StorageError::backend)? {
                    let (name, value) = entry.map_err(StorageError::backend)?;
                    writer
                        .put(name.value().as_bytes(), value.value())
                        .map_err(bbolt)?;
                }
            }
            // Created by the first auth change; absent in a member that never had one.
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(error) => return Err(StorageError::backend(error)),
        }
    }

    writer.bucket(b"cluster").map_err(bbolt)?;
    writer
        .put(b"clusterVersion", CLUSTER_VERSION.as_bytes())
        .map_err(bbolt)?;

    writer.bucket(b"key").map_err(bbolt)?;
    let values = tx.open_table(VALUE).map_err(StorageError::backend)?;
    for entry in tx
        .open_table(KEY)
        .map_err(StorageError::backend)?
        .iter()
        .map_err(StorageError::backend)?
    {
        let (revision, value) = entry.map_err(StorageError::backend)?;
        let row = rows::etcd_row(&values, revision.value(), value.value())?;
        writer.put(revision.value(), &row).map_err(bbolt)?;
    }

    writer.bucket(b"lease").map_err(bbolt)?;
    // etcd keys leases by their id's big-endian bytes; ids are positive, so that is id order.
    let mut leases = Vec::new();
    for entry in tx
        .open_table(LEASE)
        .map_err(StorageError::backend)?
        .iter()
        .map_err(StorageError::backend)?
    {
        let (id, record) = entry.map_err(StorageError::backend)?;
        leases.push((id.value().to_be_bytes(), record.value().to_vec()));
    }
    leases.sort();
    for (id, record) in &leases {
        writer.put(id, record).map_err(bbolt)?;
    }

    writer.bucket(b"members").map_err(bbolt)?;
    let mut members = Vec::new();
    for entry in tx
        .open_table(MEMBERS)
        .map_err(StorageError::backend)?
        .iter()
        .map_err(StorageError::backend)?
    {
        let (_, value) = entry.map_err(StorageError::backend)?;
        let member = MemberRecord::decode(value.value())
            .map_err(|e| StorageError::corrupt(format!("member record: {e}")))?;
        members.push((format!("{:x}", member.id), member_json(&member)));
    }
    members.sort();
    for (id, json) in &members {
        writer.put(id.as_bytes(), json.as_bytes()).map_err(bbolt)?;
    }
    writer.bucket(b"members_removed").map_err(bbolt)?;
    let mut removed: Vec<String> = Vec::new();
    for entry in tx
        .open_table(REMOVED)
        .map_err(StorageError::backend)?
        .iter()
        .map_err(StorageError::backend)?
    {
        let (id, _) = entry.map_err(StorageError::backend)?;
        removed.push(format!("{:x}", id.value()));
    }
    removed.sort();
    for id in &removed {
        writer.put(id.as_bytes(), b"removed").map_err(bbolt)?;
    }

    writer.bucket(b"meta").map_err(bbolt)?;
    // In bbolt's (bytewise) order.
    if let Some(conf_state) = meta
        .get(backend::META_CONF_STATE)
        .map_err(StorageError::backend)?
    {
        let conf: raft::eraftpb::ConfState =
            protobuf::Message::parse_from_bytes(conf_state.value())
                .map_err(|e| StorageError::corrupt(format!("recorded configuration: {e}")))?;
        writer
            .put(b"confState", conf_state_json(&conf).as_bytes())
            .map_err(bbolt)?;
    }
    let applied_index = backend::read_meta_u64(&meta, backend::META_APPLIED_INDEX)?;
    writer
        .put(b"consistent_index", &applied_index.to_be_bytes())
        .map_err(bbolt)?;
    let compacted = meta
        .get(backend::META_COMPACT_REVISION)
        .map_err(StorageError::backend)?
        .is_some();
    if compacted {
        let revision = backend::read_meta_u64(&meta, backend::META_COMPACT_REVISION)? as i64;
        let key = Revision::new(revision, 0).to_bytes(false);
        writer.put(b"finishedCompactRev", &key).map_err(bbolt)?;
        writer.put(b"scheduledCompactRev", &key).map_err(bbolt)?;
    }
    let applied_term = backend::read_meta_u64(&meta, backend::META_APPLIED_TERM)?;
    writer
        .put(b"term", &applied_term.max(1).to_be_bytes())
        .map_err(bbolt)?;
    writer.finish().map_err(bbolt)
}

/// A member as etcd stores it: JSON with `id`, `peerURLs`, and `name`, `clientURLs` and
/// `isLearner` when set.
fn member_json(member: &MemberRecord) -> String {
    let strings = |values: &[String]| {
        let quoted: Vec<String> = values.iter().map(|v| json_string(v)).collect();
        format!("[{}]", quoted.join(","))
    };
    let mut json = format!(
        "{{\"id\":{},\"peerURLs\":{}",
        member.id,
        strings(&member.peer_urls)
    );
    if !member.name.is_empty() {
        json.push_str(&format!(",\"name\":{}", json_string(&member.name)));
    }
    if !member.client_urls.is_empty() {
        json.push_str(&format!(",\"clientURLs\":{}", strings(&member.client_urls)));
    }
    if member.is_learner {
        json.push_str(",\"isLearner\":true");
    }
    json.push('}');
    json
}

/// `raftpb.ConfState` as Go's encoding/json writes it.
fn conf_state_json(conf: &raft::eraftpb::ConfState) -> String {
    let ids = |values: &[u64]| {
        let ids: Vec<String> = values.iter().map(u64::to_string).collect();
        format!("[{}]", ids.join(","))
    };
    let mut json = format!("{{\"voters\":{}", ids(conf.get_voters()));
    if !conf.get_learners().is_empty() {
        json.push_str(&format!(",\"learners\":{}", ids(conf.get_learners())));
    }
    json.push_str(",\"auto_leave\":false}");
    json
}

fn json_string(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A key and its value in a bucket.
type Pair = (Vec<u8>, Vec<u8>);

/// What an import brought in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    /// The store revision: the newest revision in the key history.
    pub revision: i64,
    /// The compaction point, -1 if never compacted.
    pub compact_revision: i64,
    /// Rows of key history.
    pub history_rows: u64,
    pub leases: u64,
    pub users: u64,
    pub roles: u64,
}

/// Fills the empty tables of `tx` from an etcd database (a snapshot of etcd 3.4 to 3.6, or one
/// Synod wrote): key history with every revision, the compaction point, leases, users, roles
/// and the auth switch. Members, alarms and Raft positions are not taken: they belong to the
/// cluster the file came from, and a restore starts a new one.
pub fn import<R: ReadAt>(
    reader: &Reader<R>,
    tx: &WriteTransaction,
) -> Result<Imported, StorageError> {
    let mut imported = Imported {
        compact_revision: -1,
        ..Imported::default()
    };
    let pairs = |name: &[u8]| -> Result<Vec<Pair>, StorageError> {
        match reader.bucket(name).map_err(bbolt)? {
            None => Ok(Vec::new()),
            Some(bucket) => reader
                .iter(&bucket)
                .collect::<Result<Vec<_>, _>>()
                .map_err(bbolt),
        }
    };
    {
        let Some(bucket) = reader.bucket(b"key").map_err(bbolt)? else {
            return Err(StorageError::corrupt(
                "not an etcd database: it has no \"key\" bucket",
            ));
        };
        let mut table = tx.open_table(KEY).map_err(StorageError::backend)?;
        let mut values = tx.open_table(VALUE).map_err(StorageError::backend)?;
        let mut cursor = table
            .upper_bound_mut(std::ops::Bound::<&[u8]>::Unbounded)
            .map_err(StorageError::backend)?;
        for pair in reader.iter(&bucket) {
            let (revision, value) = pair.map_err(bbolt)?;
            let Some((rev, _)) = Revision::from_bytes(&revision) else {
                return Err(StorageError::corrupt(format!(
                    "etcd database: malformed revision key {revision:?}"
                )));
            };
            let kv = synod_api::mvccpb::KeyValue::decode(value.as_slice()).map_err(|e| {
                StorageError::corrupt(format!(
                    "etcd database: revision {}/{}: {e}",
                    rev.main, rev.sub
                ))
            })?;
            // bbolt iterates in key order, which is revision order: appends at the end.
            let (row, spilled) = rows::encode(&kv);
            cursor
                .insert_before(revision.as_slice(), row.as_slice())
                .map_err(StorageError::backend)?;
            if spilled {
                rows::write_value(&mut values, &revision, &kv.value)?;
            }
            imported.revision = rev.main;
            imported.history_rows += 1;
        }
        cursor.close().map_err(StorageError::backend)?;
    }

    let mut leases = tx.open_table(LEASE).map_err(StorageError::backend)?;
    for (id, record) in pairs(b"lease")? {
        let id: [u8; 8] = id.as_slice().try_into().map_err(|_| {
            StorageError::corrupt(format!("etcd database: lease id of {} bytes", id.len()))
        })?;
        let lease = synod_api::synodpb::LeaseRecord::decode(record.as_slice())
            .map_err(|e| StorageError::corrupt(format!("etcd database: lease: {e}")))?;
        leases
            .insert(i64::from_be_bytes(id), lease.encode_to_vec().as_slice())
            .map_err(StorageError::backend)?;
        imported.leases += 1;
    }

    // Users and roles: a name to an `authpb` record, in both layouts.
    let by_name = |bucket: &[u8], table, what: &str| -> Result<u64, StorageError> {
        let mut table = tx.open_table(table).map_err(StorageError::backend)?;
        let mut count = 0;
        for (name, record) in pairs(bucket)? {
            let name = String::from_utf8(name).map_err(|_| {
                StorageError::corrupt(format!("etcd database: a {what} name is not UTF-8"))
            })?;
            table
                .insert(name.as_str(), record.as_slice())
                .map_err(StorageError::backend)?;
            count += 1;
        }
        Ok(count)
    };
    imported.users = by_name(b"authUsers", AUTH_USERS, "user")?;
    imported.roles = by_name(b"authRoles", AUTH_ROLES, "role")?;

    let mut meta = tx.open_table(META).map_err(StorageError::backend)?;
    for (key, value) in pairs(b"auth")? {
        match key.as_slice() {
            b"authEnabled" => backend::write_meta_u64(
                &mut meta,
                backend::META_AUTH_ENABLED,
                u64::from(value.first() == Some(&1)),
            )?,
            b"authRevision" => {
                let revision: [u8; 8] = value.as_slice().try_into().map_err(|_| {
                    StorageError::corrupt("etcd database: authRevision is not 8 bytes")
                })?;
                backend::write_meta_u64(
                    &mut meta,
                    backend::META_AUTH_REVISION,
                    u64::from_be_bytes(revision),
                )?;
            }
            _ => {}
        }
    }
    for (key, value) in pairs(b"meta")? {
        // A compaction etcd scheduled but had not finished is finished by the next one; until
        // then its history is readable, as in etcd after a restart.
        if key == b"finishedCompactRev" {
            let Some((rev, _)) = Revision::from_bytes(&value) else {
                return Err(StorageError::corrupt(
                    "etcd database: malformed finishedCompactRev",
                ));
            };
            imported.compact_revision = rev.main;
            backend::write_meta_u64(&mut meta, backend::META_COMPACT_REVISION, rev.main as u64)?;
        }
    }
    imported.revision = imported.revision.max(imported.compact_revision);
    Ok(imported)
}

/// `snapshot status`: what etcd's tools report about a database file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// CRC-32C over every bucket name, key and value in order (etcd's snapshot hash).
    pub hash: u32,
    /// The newest revision in the key history.
    pub revision: i64,
    /// Pairs in all buckets (etcd 3.4's `totalKey`).
    pub total_keys: u64,
    /// Bytes of data: pages times page size.
    pub total_size: u64,
    /// The cluster version recorded in the file, if any.
    pub version: String,
}

/// Reads every page of the file (checking its structure as it goes) and reports as
/// `etcdctl snapshot status` does.
pub fn status<R: ReadAt>(reader: &Reader<R>) -> Result<Status, synod_bbolt::Error> {
    let mut hasher = crc32c::Hasher::new();
    let mut status = Status {
        hash: 0,
        revision: 0,
        total_keys: 0,
        total_size: reader.data_len(),
        version: String::new(),
    };
    for bucket in reader.buckets()? {
        hasher.update(bucket.name());
        let is_key = bucket.name() == b"key";
        let is_cluster = bucket.name() == b"cluster";
        for pair in reader.iter(&bucket) {
            let (key, value) = pair?;
            hasher.update(&key);
            hasher.update(&value);
            if is_key && let Some((rev, _)) = Revision::from_bytes(&key) {
                status.revision = rev.main;
            }
            if is_cluster && key == b"clusterVersion" {
                status.version = String::from_utf8_lossy(&value).into_owned();
            }
            status.total_keys += 1;
        }
    }
    status.hash = hasher.finish();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_json_is_etcds() {
        let member = MemberRecord {
            id: 10_276_657_743_932_975_437,
            name: "infra\"1".to_owned(),
            peer_urls: vec!["http://127.0.0.1:2380".to_owned()],
            client_urls: Vec::new(),
            is_learner: false,
        };
        assert_eq!(
            member_json(&member),
            r#"{"id":10276657743932975437,"peerURLs":["http://127.0.0.1:2380"],"name":"infra\"1"}"#
        );
        let mut conf = raft::eraftpb::ConfState::default();
        conf.set_voters(vec![1, 2]);
        assert_eq!(
            conf_state_json(&conf),
            r#"{"voters":[1,2],"auto_leave":false}"#
        );
    }
}
