//! ZooKeeper sessions as leases: a session's id is its lease's id, so its expiry goes through
//! Raft (linearizable, and it survives a change of leader), and its ephemerals, attached to the
//! lease, go with it. Its password is a key attached to the same lease, `zk/s<id in hex>`, so
//! any member can take a reconnecting client back while the session lives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use synod_api::etcdserverpb::{LeaseGrantRequest, LeaseRevokeRequest, PutRequest};
use synod_api::synodpb::internal_request::Request;
use synod_core::apply::Response;
use synod_core::mvcc::kv_store::RangeOptions;
use tokio::sync::watch;

use super::Failure;
use crate::config::ZookeeperSettings;
use crate::error::ServerError;
use crate::member::Member;

/// Length of a session password (the C client reads exactly 16 bytes).
pub const PASSWORD_BYTES: usize = 16;

/// A session this connection holds.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    pub password: [u8; PASSWORD_BYTES],
    pub timeout_ms: u32,
}

/// Where every live session keeps its password.
pub const PASSWORD_PREFIX: &[u8] = b"zk/s";

fn password_key(id: i64) -> Vec<u8> {
    format!("zk/s{id:016x}").into_bytes()
}

/// Every live session of the cluster, from the password keys (only they, not every lease).
pub fn live_sessions(member: &Member) -> Vec<i64> {
    let options = RangeOptions::default();
    let end = synod_core::zk::prefix_end(PASSWORD_PREFIX);
    member
        .machine
        .store
        .range(PASSWORD_PREFIX, &end, options)
        .map(|found| found.kvs)
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| kv.key.get(PASSWORD_PREFIX.len()..))
        .filter_map(|id| std::str::from_utf8(id).ok())
        .filter_map(|id| u64::from_str_radix(id, 16).ok())
        .map(|id| id as i64)
        .collect()
}

/// The sessions of this member's connections: a reconnect closes the session's other
/// connection here, as ZooKeeper does.
pub struct Sessions {
    member: Arc<Member>,
    pub settings: ZookeeperSettings,
    /// Session id → the sender that closes its current connection.
    held: Mutex<HashMap<i64, (u64, watch::Sender<bool>)>>,
    next_connection: std::sync::atomic::AtomicU64,
}

impl Sessions {
    pub fn new(member: Arc<Member>, settings: ZookeeperSettings) -> Sessions {
        Sessions {
            member,
            settings,
            held: Mutex::new(HashMap::new()),
            next_connection: std::sync::atomic::AtomicU64::new(1),
        }
    }

    pub fn member(&self) -> &Arc<Member> {
        &self.member
    }

    /// The timeout a client asking for `asked` ms gets.
    pub fn negotiate(&self, asked: i32) -> u32 {
        (asked.max(0) as u32).clamp(
            self.settings.min_session_timeout_ms,
            self.settings.max_session_timeout_ms,
        )
    }

    /// Starts a new session: a lease of the timeout (rounded up to seconds) and its password.
    pub async fn create(&self, timeout_ms: u32) -> Result<Session, Failure> {
        let id = self.member.new_lease_id();
        let ttl = i64::from(timeout_ms.div_ceil(1000));
        match self
            .member
            .propose(Request::LeaseGrant(LeaseGrantRequest { ttl, id }))
            .await?
        {
            Response::LeaseGrant(_) => {}
            other => return Err(crate::member::unexpected(&other).into()),
        }
        let mut password = [0u8; PASSWORD_BYTES];
        getrandom::getrandom(&mut password)
            .map_err(|error| Failure::Other(format!("no randomness for a password: {error}")))?;
        let put = PutRequest {
            key: password_key(id),
            value: password.to_vec(),
            lease: id,
            ..PutRequest::default()
        };
        match self.member.propose(Request::Put(put)).await? {
            Response::Put(_) => Ok(Session {
                id,
                password,
                timeout_ms,
            }),
            other => Err(crate::member::unexpected(&other).into()),
        }
    }

    /// Takes a session back on reconnection: `None` if it expired or the password is wrong.
    pub async fn resume(
        &self,
        id: i64,
        password: &[u8],
        timeout_ms: u32,
    ) -> Result<Option<Session>, Failure> {
        // The client may come from a member ahead of this one: read what the cluster knows.
        self.member.read_barrier().await?;
        let stored = self
            .member
            .machine
            .store
            .range(&password_key(id), &[], RangeOptions::default())
            .map_err(ServerError::from)?
            .kvs
            .pop();
        let Some(stored) = stored else {
            return Ok(None);
        };
        // A stored password of another length was not written by a session (an etcd client
        // wrote the key): it matches nothing.
        let Ok(kept) = <[u8; PASSWORD_BYTES]>::try_from(stored.value.as_slice()) else {
            return Ok(None);
        };
        if kept[..] != *password || !self.touch(id).await? {
            return Ok(None);
        }
        Ok(Some(Session {
            id,
            password: kept,
            timeout_ms,
        }))
    }

    /// Renews the session's lease (on the leader, forwarded from a follower); false once it
    /// has expired.
    pub async fn touch(&self, id: i64) -> Result<bool, Failure> {
        let ttl = match self.member.renew_lease(id).await {
            Err(ServerError::NotLeader) => crate::forward::renew(&self.member, id)
                .await
                .map_err(|status| Failure::Other(status.message().to_owned()))?,
            renewed => renewed?,
        };
        Ok(ttl > 0)
    }

    /// Ends a session: its lease goes, and with it its ephemerals.
    pub async fn close(&self, id: i64) -> Result<(), Failure> {
        match self
            .member
            .propose(Request::LeaseRevoke(LeaseRevokeRequest { id }))
            .await
        {
            Ok(_) | Err(ServerError::Request(synod_core::RequestError::LeaseNotFound)) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Registers this connection as the session's; a connection holding it before is told to
    /// close. Returns the connection's id and the receiver that tells it to close.
    pub fn hold(&self, id: i64) -> (u64, watch::Receiver<bool>) {
        let connection = self
            .next_connection
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (sender, receiver) = watch::channel(false);
        let previous = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, (connection, sender));
        if let Some((_, previous)) = previous {
            let _ = previous.send(true);
        }
        (connection, receiver)
    }

    /// Forgets the connection, unless another has taken the session since.
    pub fn release(&self, id: i64, connection: u64) {
        let mut held = self
            .held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if held.get(&id).is_some_and(|(c, _)| *c == connection) {
            held.remove(&id);
        }
    }

    /// Sessions held by connections to this member.
    pub fn count(&self) -> usize {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .len()
    }
}

/// How often a connection renews its session's lease while traffic flows: a third of the
/// timeout, as clients ping.
pub fn renew_interval(timeout_ms: u32) -> Duration {
    Duration::from_millis(u64::from(timeout_ms / 3).max(200))
}
