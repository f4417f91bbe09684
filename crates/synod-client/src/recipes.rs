//! Coordination recipes over etcd's wire API, with etcd's key layouts so they interoperate with
//! etcd's own recipes, `etcdctl lock|elect`, and the Lock and Election services: [`Session`],
//! [`Mutex`], [`RwLock`], [`Semaphore`], [`Election`], [`Barrier`] and [`Queue`].
//!
//! Every acquisition exposes a **fencing token**: the create revision of the holder's key, which
//! strictly increases with every acquisition of the same name. A protected resource should reject
//! a token lower than one it has already accepted, or ask Synod whether it is still current
//! (`POST /synod/v1/lock/check`, or a Txn comparing the key's create revision); a lock alone does
//! not protect a resource from a holder that was paused past its lease.
//!
//! A holder waits for the keys ahead of it with a watch from the revision it read, so it misses
//! no deletion and never polls.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::watch;

use crate::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseRevokeRequest,
    PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, watch_request,
};
use crate::mvccpb::{KeyValue, event::EventType};
use crate::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
};
use crate::{Client, ClientError, prefix_range_end};

fn other(message: impl Into<String>) -> ClientError {
    ClientError::Other(message.into())
}

/// A lease kept alive in the background: the liveness of everything a holder owns. When it is
/// lost (the process was paused past the TTL, the network failed, the lease was revoked), every
/// lock taken with it may already belong to someone else; [`Session::lost`] resolves then.
pub struct Session {
    client: Client,
    lease: i64,
    ttl: i64,
    lost: watch::Receiver<bool>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Grants a lease of `ttl` seconds and starts renewing it every third of its TTL.
    pub async fn new(client: &Client, ttl: i64) -> Result<Session, ClientError> {
        let granted = client
            .lease()
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner();
        if !granted.error.is_empty() {
            return Err(other(granted.error));
        }
        let (lease, ttl) = (granted.id, granted.ttl.max(1));
        let (lost_sender, lost) = watch::channel(false);
        let (requests, receiver) = tokio::sync::mpsc::channel(1);
        let renewal = LeaseKeepAliveRequest { id: lease };
        // The first renewal goes in before the stream is opened: etcd (grpc-go) sends the
        // response headers only with its first answer, so opening an empty stream would wait
        // forever.
        requests
            .send(renewal)
            .await
            .map_err(|_| other("keep-alive stream closed"))?;
        let mut responses = client
            .lease()
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await?
            .into_inner();
        let keeper = tokio::spawn(async move {
            loop {
                let renewed = async {
                    let response =
                        tokio::time::timeout(Duration::from_secs(ttl as u64), responses.next())
                            .await
                            .ok()??
                            .ok()?;
                    (response.ttl > 0).then_some(())
                };
                if renewed.await.is_none() {
                    let _ = lost_sender.send(true);
                    return;
                }
                tokio::time::sleep(Duration::from_millis((ttl as u64 * 1000 / 3).max(300))).await;
                if requests.send(renewal).await.is_err() {
                    let _ = lost_sender.send(true);
                    return;
                }
            }
        });
        Ok(Session {
            client: client.clone(),
            lease,
            ttl,
            lost,
            keeper,
        })
    }

    /// The lease id.
    pub fn lease(&self) -> i64 {
        self.lease
    }

    /// The granted TTL in seconds.
    pub fn ttl(&self) -> i64 {
        self.ttl
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Whether the lease is known to be lost.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves when the lease is lost.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        let _ = lost.wait_for(|lost| *lost).await;
    }

    /// Stops renewing and revokes the lease, which releases everything held with it.
    pub async fn close(self) -> Result<(), ClientError> {
        self.keeper.abort();
        self.client
            .lease()
            .lease_revoke(LeaseRevokeRequest { id: self.lease })
            .await?;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What a holder holds: its key and the fencing token (the key's create revision).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: Vec<u8>,
    pub token: i64,
}

fn holder_key(prefix: &[u8], lease: i64) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    key
}

/// Creates `key` on `lease` if it does not exist; returns its create revision and the revision
/// of the write (or read), whichever way it went.
async fn create_or_get(
    client: &Client,
    key: &[u8],
    value: &[u8],
    lease: i64,
) -> Result<(i64, i64), ClientError> {
    let txn = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Create as i32,
            key: key.to_vec(),
            target_union: Some(TargetUnion::CreateRevision(0)),
            ..Compare::default()
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: key.to_vec(),
                value: value.to_vec(),
                lease,
                ..PutRequest::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(request_op::Request::RequestRange(RangeRequest {
                key: key.to_vec(),
                ..RangeRequest::default()
            })),
        }],
    };
    let response = client.kv().txn(txn).await?.into_inner();
    let revision = response.header.map(|h| h.revision).unwrap_or(0);
    if response.succeeded {
        return Ok((revision, revision));
    }
    let existing = response
        .responses
        .into_iter()
        .find_map(|op| match op.response {
            Some(crate::etcdserverpb::response_op::Response::ResponseRange(range)) => {
                range.kvs.into_iter().next()
            }
            _ => None,
        })
        .ok_or_else(|| other("the key vanished while it was being created"))?;
    Ok((existing.create_revision, revision))
}

/// Keys under `prefix` (as `[prefix, end)`) created before `revision`, oldest first, read at
/// `at`.
async fn created_before(
    client: &Client,
    prefix: &[u8],
    revision: i64,
) -> Result<(Vec<KeyValue>, i64), ClientError> {
    let response = client
        .kv()
        .range(RangeRequest {
            key: prefix.to_vec(),
            range_end: prefix_range_end(prefix),
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Ascend as i32,
            max_create_revision: revision - 1,
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    let at = response.header.map(|h| h.revision).unwrap_or(0);
    Ok((response.kvs, at))
}

/// How a holder's key went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// Its holder released it through a recipe (it marked the key released first).
    Released,
    /// It went some other way: its session expired (its lease was revoked with it), or someone
    /// deleted it directly.
    Vanished,
}

/// The value a recipe writes into its key just before deleting it, so waiters can tell a
/// release from an expired session (for lock-delay).
const RELEASED: &[u8] = b"\0synod:released";

/// A watch on `[key, range_end)` from `after + 1`; keep the sender alive as long as the stream.
async fn watch_after(
    client: &Client,
    key: &[u8],
    range_end: &[u8],
    after: i64,
) -> Result<
    (
        tokio::sync::mpsc::Sender<WatchRequest>,
        tonic::Streaming<crate::etcdserverpb::WatchResponse>,
    ),
    ClientError,
> {
    let (requests, receiver) = tokio::sync::mpsc::channel(1);
    let create = WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(
            WatchCreateRequest {
                key: key.to_vec(),
                range_end: range_end.to_vec(),
                start_revision: after + 1,
                ..WatchCreateRequest::default()
            },
        )),
    };
    requests
        .send(create)
        .await
        .map_err(|_| other("watch closed"))?;
    let events = client
        .watch()
        .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    Ok((requests, events))
}

/// Waits until a key in `[key, range_end)` (just `key` when `range_end` is empty) is deleted,
/// watching from `after + 1` so no deletion is missed.
async fn wait_deleted(
    client: &Client,
    key: &[u8],
    range_end: &[u8],
    after: i64,
) -> Result<Departure, ClientError> {
    let (requests, mut events) = watch_after(client, key, range_end, after).await?;
    let mut released: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
    while let Some(response) = events.next().await {
        let response = response?;
        if response.canceled {
            return Err(other(format!("watch canceled: {}", response.cancel_reason)));
        }
        for event in &response.events {
            let Some(kv) = &event.kv else { continue };
            if event.r#type == EventType::Put as i32 && kv.value == RELEASED {
                released.insert(kv.key.clone());
            } else if event.r#type == EventType::Delete as i32 {
                return Ok(if released.contains(&kv.key) {
                    Departure::Released
                } else {
                    Departure::Vanished
                });
            }
        }
    }
    drop(requests);
    Err(other("watch stream ended"))
}

/// Who goes ahead of a holder: fewer than `ahead_max` older keys under `prefix` (of those a
/// recipe counts) let it in.
struct Turn<'a> {
    prefix: &'a [u8],
    ahead_max: usize,
    lock_delay: Duration,
}

/// Creates the holder's `key` on the session's lease and waits for its turn; on failure (or
/// the session lost while waiting) the key is released again.
async fn take_turn(
    session: &Session,
    key: Vec<u8>,
    turn: Turn<'_>,
    blocks: impl Fn(&KeyValue) -> bool,
) -> Result<Held, ClientError> {
    let (token, _) = create_or_get(&session.client, &key, b"", session.lease).await?;
    let waited = tokio::select! {
        waited = wait_turn(&session.client, token, &turn, blocks) => waited,
        _ = session.lost() => Err(other("the session was lost while waiting")),
    };
    if let Err(error) = waited {
        let _ = release(session, Held { key, token }).await;
        return Err(error);
    }
    Ok(Held { key, token })
}

/// Waits until fewer than `turn.ahead_max` keys accepted by `blocks` were created under
/// `turn.prefix` before `revision`. With a lock-delay, a holder whose key vanished without being
/// released (its session expired) keeps everyone out for that long (Consul's lock-delay).
async fn wait_turn(
    client: &Client,
    revision: i64,
    turn: &Turn<'_>,
    blocks: impl Fn(&KeyValue) -> bool,
) -> Result<(), ClientError> {
    let Turn {
        prefix,
        ahead_max,
        lock_delay,
    } = *turn;
    loop {
        let (before, at) = created_before(client, prefix, revision).await?;
        let blocking: Vec<KeyValue> = before.into_iter().filter(|kv| blocks(kv)).collect();
        if blocking.len() < ahead_max {
            return Ok(());
        }
        let departure = if ahead_max == 1 {
            // Wait for the newest of the keys that must go (etcd's recipes wait for the last
            // one), then look again.
            let last = blocking.last().expect("not empty");
            wait_deleted(client, &last.key, &[], at).await?
        } else {
            // Any of them going may be enough: wait for any deletion under the prefix.
            wait_deleted(client, prefix, &prefix_range_end(prefix), at).await?
        };
        if departure == Departure::Vanished && !lock_delay.is_zero() {
            tokio::time::sleep(lock_delay).await;
        }
    }
}

/// A mutual-exclusion lock, laid out as etcd's `concurrency.Mutex` (and the Lock service):
/// `NAME/<lease hex>`; the oldest key holds the lock.
pub struct Mutex {
    semaphore: Semaphore,
}

impl Mutex {
    pub fn new(name: &str) -> Mutex {
        Mutex {
            semaphore: Semaphore::new(name, 1),
        }
    }

    /// After a holder's session expires (rather than it releasing the lock), nobody may take
    /// the lock for `delay` (Consul's lock-delay): time for a holder that was paused or cut off
    /// to notice it lost the lock before a successor acts.
    pub fn with_lock_delay(mut self, delay: Duration) -> Mutex {
        self.semaphore.lock_delay = delay;
        self
    }

    /// Waits for the lock; returns the holder's key and fencing token.
    pub async fn lock(&self, session: &Session) -> Result<Held, ClientError> {
        self.semaphore.acquire(session).await
    }

    /// Releases the lock (deletes the holder's key).
    pub async fn unlock(&self, session: &Session, held: Held) -> Result<(), ClientError> {
        release(session, held).await
    }
}

/// Releases a holder's key: marks it released (for waiters using lock-delay), then deletes it.
async fn release(session: &Session, held: Held) -> Result<(), ClientError> {
    session
        .client
        .kv()
        .put(PutRequest {
            key: held.key.clone(),
            value: RELEASED.to_vec(),
            lease: session.lease,
            ..PutRequest::default()
        })
        .await?;
    session
        .client
        .kv()
        .delete_range(DeleteRangeRequest {
            key: held.key,
            ..DeleteRangeRequest::default()
        })
        .await?;
    Ok(())
}

/// A counting semaphore: up to `permits` holders at once (Consul's `lock -n`), laid out like
/// the mutex: `NAME/<lease hex>`; the `permits` oldest keys hold it.
pub struct Semaphore {
    prefix: Vec<u8>,
    permits: usize,
    lock_delay: Duration,
}

impl Semaphore {
    pub fn new(name: &str, permits: usize) -> Semaphore {
        Semaphore {
            prefix: format!("{name}/").into_bytes(),
            permits: permits.max(1),
            lock_delay: Duration::ZERO,
        }
    }

    /// See [`Mutex::with_lock_delay`].
    pub fn with_lock_delay(mut self, delay: Duration) -> Semaphore {
        self.lock_delay = delay;
        self
    }

    /// Waits for a permit; returns the holder's key and fencing token.
    pub async fn acquire(&self, session: &Session) -> Result<Held, ClientError> {
        let key = holder_key(&self.prefix, session.lease);
        let turn = Turn {
            prefix: &self.prefix,
            ahead_max: self.permits,
            lock_delay: self.lock_delay,
        };
        take_turn(session, key, turn, |_| true).await
    }

    /// Gives a permit back.
    pub async fn release(&self, session: &Session, held: Held) -> Result<(), ClientError> {
        release(session, held).await
    }
}

/// A readers-writer lock, laid out as etcd's `recipes.RWMutex`: `NAME/read/<lease hex>` and
/// `NAME/write/<lease hex>`. A reader waits for older writers; a writer waits for everyone older.
pub struct RwLock {
    prefix: Vec<u8>,
}

impl RwLock {
    pub fn new(name: &str) -> RwLock {
        RwLock {
            prefix: format!("{name}/").into_bytes(),
        }
    }

    /// Waits for shared access.
    pub async fn read(&self, session: &Session) -> Result<Held, ClientError> {
        let writers = [self.prefix.as_slice(), b"write/"].concat();
        self.acquire(session, b"read/", move |kv: &KeyValue| {
            kv.key.starts_with(&writers)
        })
        .await
    }

    /// Waits for exclusive access.
    pub async fn write(&self, session: &Session) -> Result<Held, ClientError> {
        self.acquire(session, b"write/", |_: &KeyValue| true).await
    }

    async fn acquire(
        &self,
        session: &Session,
        kind: &[u8],
        blocks: impl Fn(&KeyValue) -> bool,
    ) -> Result<Held, ClientError> {
        let key = holder_key(&[self.prefix.as_slice(), kind].concat(), session.lease);
        let turn = Turn {
            prefix: &self.prefix,
            ahead_max: 1,
            lock_delay: Duration::ZERO,
        };
        take_turn(session, key, turn, blocks).await
    }

    /// Releases shared or exclusive access.
    pub async fn unlock(&self, session: &Session, held: Held) -> Result<(), ClientError> {
        release(session, held).await
    }
}

/// Leader election through etcd's Election service (the layout of `concurrency.Election`), so
/// `etcdctl elect` and other clients take part in the same election.
pub struct Election {
    name: Vec<u8>,
}

/// The elected leader's key; `token` (its create revision) is the fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub key: Vec<u8>,
    pub token: i64,
    pub lease: i64,
}

impl Election {
    pub fn new(name: &str) -> Election {
        Election {
            name: name.as_bytes().to_vec(),
        }
    }

    /// Campaigns with `value` and waits until elected.
    pub async fn campaign(
        &self,
        session: &Session,
        value: &[u8],
    ) -> Result<Leadership, ClientError> {
        let request = CampaignRequest {
            name: self.name.clone(),
            lease: session.lease,
            value: value.to_vec(),
        };
        let mut election = session.client.election();
        let response = tokio::select! {
            response = election.campaign(request) => response?.into_inner(),
            _ = session.lost() => return Err(other("the session was lost while campaigning")),
        };
        let leader = response
            .leader
            .ok_or_else(|| other("the server elected no leader key"))?;
        Ok(Leadership {
            key: leader.key,
            token: leader.rev,
            lease: leader.lease,
        })
    }

    /// Changes the leader's value without another election.
    pub async fn proclaim(
        &self,
        session: &Session,
        leadership: &Leadership,
        value: &[u8],
    ) -> Result<(), ClientError> {
        session
            .client
            .election()
            .proclaim(ProclaimRequest {
                leader: Some(self.leader_key(leadership)),
                value: value.to_vec(),
            })
            .await?;
        Ok(())
    }

    /// Gives up leadership.
    pub async fn resign(
        &self,
        session: &Session,
        leadership: Leadership,
    ) -> Result<(), ClientError> {
        session
            .client
            .election()
            .resign(ResignRequest {
                leader: Some(self.leader_key(&leadership)),
            })
            .await?;
        Ok(())
    }

    /// The current leader's key-value, if any.
    pub async fn leader(&self, client: &Client) -> Result<Option<KeyValue>, ClientError> {
        match client
            .election()
            .leader(LeaderRequest {
                name: self.name.clone(),
            })
            .await
        {
            Ok(response) => Ok(response.into_inner().kv),
            Err(status) if status.message() == "election: no leader" => Ok(None),
            Err(status) => Err(status.into()),
        }
    }

    fn leader_key(&self, leadership: &Leadership) -> LeaderKey {
        LeaderKey {
            name: self.name.clone(),
            key: leadership.key.clone(),
            rev: leadership.token,
            lease: leadership.lease,
        }
    }
}

/// A barrier, as etcd's `recipes.Barrier`: while the key `NAME` exists, [`Barrier::wait`] blocks.
pub struct Barrier {
    key: Vec<u8>,
}

impl Barrier {
    pub fn new(name: &str) -> Barrier {
        Barrier {
            key: name.as_bytes().to_vec(),
        }
    }

    /// Raises the barrier (on the session's lease, so it falls if its holder dies).
    pub async fn hold(&self, session: &Session) -> Result<(), ClientError> {
        create_or_get(&session.client, &self.key, b"", session.lease).await?;
        Ok(())
    }

    /// Lowers the barrier.
    pub async fn release(&self, client: &Client) -> Result<(), ClientError> {
        client
            .kv()
            .delete_range(DeleteRangeRequest {
                key: self.key.clone(),
                ..DeleteRangeRequest::default()
            })
            .await?;
        Ok(())
    }

    /// Waits until the barrier is down.
    pub async fn wait(&self, client: &Client) -> Result<(), ClientError> {
        let response = client
            .kv()
            .range(RangeRequest {
                key: self.key.clone(),
                ..RangeRequest::default()
            })
            .await?
            .into_inner();
        if response.kvs.is_empty() {
            return Ok(());
        }
        let at = response.header.map(|h| h.revision).unwrap_or(0);
        wait_deleted(client, &self.key, &[], at).await.map(|_| ())
    }
}

/// A FIFO queue, as etcd's `recipes.Queue`: items are keys under `NAME/` in create order.
pub struct Queue {
    prefix: Vec<u8>,
}

/// A dequeued item; `token` (its create revision) orders items and names them uniquely.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub value: Vec<u8>,
    pub token: i64,
}

impl Queue {
    pub fn new(name: &str) -> Queue {
        Queue {
            prefix: format!("{name}/").into_bytes(),
        }
    }

    /// Appends an item; returns its token.
    pub async fn enqueue(&self, client: &Client, value: &[u8]) -> Result<i64, ClientError> {
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let key = [self.prefix.as_slice(), format!("{nanos:020}").as_bytes()].concat();
            let (created, revision) = create_or_get(client, &key, value, 0).await?;
            // A key that existed already (a clock collision) was not ours: try another name.
            if created == revision {
                return Ok(created);
            }
        }
    }

    /// Takes the oldest item, waiting for one if the queue is empty. Exactly one consumer gets
    /// each item: the delete is conditional on the item still being there.
    pub async fn dequeue(&self, client: &Client) -> Result<Item, ClientError> {
        loop {
            let response = client
                .kv()
                .range(RangeRequest {
                    key: self.prefix.clone(),
                    range_end: prefix_range_end(&self.prefix),
                    sort_target: SortTarget::Create as i32,
                    sort_order: SortOrder::Ascend as i32,
                    limit: 1,
                    ..RangeRequest::default()
                })
                .await?
                .into_inner();
            let at = response.header.map(|h| h.revision).unwrap_or(0);
            let Some(first) = response.kvs.into_iter().next() else {
                self.wait_put(client, at).await?;
                continue;
            };
            let take = TxnRequest {
                compare: vec![Compare {
                    result: CompareResult::Equal as i32,
                    target: CompareTarget::Mod as i32,
                    key: first.key.clone(),
                    target_union: Some(TargetUnion::ModRevision(first.mod_revision)),
                    ..Compare::default()
                }],
                success: vec![RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        DeleteRangeRequest {
                            key: first.key.clone(),
                            ..DeleteRangeRequest::default()
                        },
                    )),
                }],
                failure: Vec::new(),
            };
            if client.kv().txn(take).await?.into_inner().succeeded {
                return Ok(Item {
                    value: first.value,
                    token: first.create_revision,
                });
            }
        }
    }

    async fn wait_put(&self, client: &Client, after: i64) -> Result<(), ClientError> {
        let range_end = prefix_range_end(&self.prefix);
        let (requests, mut events) = watch_after(client, &self.prefix, &range_end, after).await?;
        while let Some(response) = events.next().await {
            if response?
                .events
                .iter()
                .any(|event| event.r#type == EventType::Put as i32)
            {
                return Ok(());
            }
        }
        drop(requests);
        Err(other("watch stream ended"))
    }
}
