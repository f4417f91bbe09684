//! etcd's Lock and Election services (`v3lockpb.Lock`, `v3electionpb.Election`), built as etcd
//! builds them: the member runs the client `concurrency` recipes against its own KV, Watch and
//! Lease, with etcd's key layout, so a lock taken through these RPCs, through `etcdctl lock` or
//! through any client library's recipe is one and the same lock.
//!
//! Layout: a holder's key is `name + "/" + hex(lease)`, attached to the lease. The holder whose
//! key has the smallest create revision owns the lock (or leads the election); the others wait
//! for the deletion of the key created just before theirs. The create revision of a holder's key
//! strictly increases per name: it is the fencing token.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use synod_api::etcdserverpb::{
    Compare, DeleteRangeRequest, LeaseGrantRequest, PutRequest, RangeRequest, RangeResponse,
    RequestOp, ResponseHeader, TxnRequest, TxnResponse,
    compare::{CompareResult, CompareTarget, TargetUnion},
    range_request::{SortOrder, SortTarget},
    request_op, response_op,
};
use synod_api::mvccpb::{KeyValue, event::EventType};
use synod_api::synodpb::internal_request::Request;
use synod_api::v3electionpb::election_server::Election;
use synod_api::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderKey, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse,
};
use synod_api::v3lockpb::lock_server::Lock;
use synod_api::v3lockpb::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use synod_core::apply::{Response, execute_range};
use synod_core::auth::Access;
use synod_core::watch::{WatchNotice, WatchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::caller;
use crate::error::{Failure, ServerError};
use crate::member::{Member, unexpected};
use crate::watch::ChannelSink;

/// TTL of the lease a Lock call without a lease gets (etcd's default session TTL).
const SESSION_TTL_SECONDS: i64 = 60;
const NOT_LEADER: &str = "election: not leader";
const NO_LEADER: &str = "election: no leader";
const MISSING_LEADER_KEY: &str = "\"leader\" field must be provided";
const SESSION_EXPIRED: &str = "mutex: session is expired";

fn holder_key(name: &[u8], lease: i64) -> (Vec<u8>, Vec<u8>) {
    let mut prefix = name.to_vec();
    prefix.push(b'/');
    let mut key = prefix.clone();
    key.extend_from_slice(format!("{lease:x}").as_bytes());
    (prefix, key)
}

/// The first holder under `prefix`: etcd's `WithFirstCreate`.
fn first_created(prefix: &[u8]) -> RangeRequest {
    RangeRequest {
        key: prefix.to_vec(),
        range_end: synod_api::prefix_range_end(prefix),
        sort_target: SortTarget::Create as i32,
        sort_order: SortOrder::Ascend as i32,
        limit: 1,
        ..RangeRequest::default()
    }
}

fn created_at(key: &[u8], revision: i64) -> Compare {
    Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Create as i32,
        key: key.to_vec(),
        range_end: Vec::new(),
        target_union: Some(TargetUnion::CreateRevision(revision)),
    }
}

fn op(request: request_op::Request) -> RequestOp {
    RequestOp {
        request: Some(request),
    }
}

fn put(key: &[u8], value: Vec<u8>, lease: i64) -> RequestOp {
    op(request_op::Request::RequestPut(PutRequest {
        key: key.to_vec(),
        value,
        lease,
        ..PutRequest::default()
    }))
}

fn range_result(response: &TxnResponse, index: usize) -> Option<&RangeResponse> {
    match response
        .responses
        .get(index)
        .and_then(|op| op.response.as_ref())
    {
        Some(response_op::Response::ResponseRange(range)) => Some(range),
        _ => None,
    }
}

async fn txn(member: &Member, request: TxnRequest) -> Result<TxnResponse, ServerError> {
    match member.propose(Request::Txn(request)).await? {
        Response::Txn(response) => Ok(response),
        other => Err(unexpected(&other)),
    }
}

/// A linearizable read.
async fn range(member: &Member, request: &RangeRequest) -> Result<RangeResponse, ServerError> {
    member.read_barrier().await?;
    Ok(execute_range(&*member.machine.store, request)?)
}

async fn delete(member: &Member, key: &[u8]) -> Result<i64, ServerError> {
    let request = DeleteRangeRequest {
        key: key.to_vec(),
        ..DeleteRangeRequest::default()
    };
    match member.propose(Request::DeleteRange(request)).await? {
        Response::DeleteRange(response) => Ok(response.header.map(|h| h.revision).unwrap_or(0)),
        other => Err(unexpected(&other)),
    }
}

/// Removes a server-side watcher when the waiting future is dropped.
struct StreamGuard<'a> {
    member: &'a Member,
    stream: u64,
}

impl Drop for StreamGuard<'_> {
    fn drop(&mut self) {
        self.member.machine.hub.remove_stream(self.stream);
    }
}

/// Waits for a change under `[key, range_end)` after `revision`; with `deletes_only`, for a
/// deletion. Returns early if the history was compacted (the caller re-checks).
async fn wait_change(
    member: &Member,
    key: &[u8],
    range_end: &[u8],
    revision: i64,
    deletes_only: bool,
) -> Result<(), ServerError> {
    let stream = member.machine.hub.new_stream();
    let _guard = StreamGuard { member, stream };
    let (sender, mut receiver) = mpsc::channel(16);
    let request = WatchRequest {
        key: key.to_vec(),
        range_end: range_end.to_vec(),
        start_revision: revision + 1,
        no_put: deletes_only,
        ..WatchRequest::default()
    };
    member
        .machine
        .hub
        .watch(stream, 0, request, Arc::new(ChannelSink::new(sender)));
    loop {
        match receiver.recv().await {
            Some(WatchNotice::Events { events, .. }) => {
                if !deletes_only || events.iter().any(|e| e.r#type == EventType::Delete as i32) {
                    return Ok(());
                }
            }
            Some(WatchNotice::Compacted { .. }) => return Ok(()),
            Some(WatchNotice::Progress { .. }) => {}
            None => return Err(ServerError::Stopped),
        }
    }
}

/// Waits until no key under `prefix` has a create revision at or below `max_create_revision`
/// (etcd's `waitDeletes`): the holders queued before us are gone.
async fn wait_deletes(
    member: &Member,
    prefix: &[u8],
    max_create_revision: i64,
) -> Result<(), ServerError> {
    loop {
        let request = RangeRequest {
            key: prefix.to_vec(),
            range_end: synod_api::prefix_range_end(prefix),
            sort_target: SortTarget::Create as i32,
            sort_order: SortOrder::Descend as i32,
            limit: 1,
            max_create_revision,
            ..RangeRequest::default()
        };
        let previous = range(member, &request).await?;
        let Some(last) = previous.kvs.first() else {
            return Ok(());
        };
        let revision = previous.header.map(|h| h.revision).unwrap_or(0);
        wait_change(member, &last.key, &[], revision, true).await?;
    }
}

/// Deletes a holder's key if the call that created it does not complete (an error, or the
/// client going away while it waits), as etcd's recipes do.
struct Abandon {
    member: Arc<Member>,
    key: Option<Vec<u8>>,
}

impl Abandon {
    fn keep(mut self) {
        self.key = None;
    }
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let member = self.member.clone();
            tokio::spawn(async move {
                if let Err(error) = delete(&member, &key).await {
                    tracing::warn!(%error, "could not remove an abandoned lock or election key");
                }
            });
        }
    }
}

fn header(member: &Member, revision: i64) -> Option<ResponseHeader> {
    Some(member.header(revision))
}

/// The answer to "is fencing token T still the current holder of lock L?".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FenceCheck {
    /// Whether `token` is the create revision of the current holder's key.
    pub current: bool,
    /// The current holder's token, if the lock is held.
    pub holder_token: Option<i64>,
    pub holder_key: Option<String>,
    /// The store revision the answer was read at (linearizable).
    pub revision: i64,
}

/// Checks a fencing token against the lock's current holder, with a linearizable read: the
/// holder is the key under `name/` with the smallest create revision, and its create revision is
/// the token it was given.
pub async fn check_fence(
    member: &Member,
    name: &[u8],
    token: i64,
) -> Result<FenceCheck, ServerError> {
    let (prefix, _) = holder_key(name, 0);
    let holder = range(member, &first_created(&prefix)).await?;
    let revision = holder.header.map(|h| h.revision).unwrap_or(0);
    let kv = holder.kvs.into_iter().next();
    Ok(FenceCheck {
        current: kv.as_ref().is_some_and(|kv| kv.create_revision == token),
        holder_token: kv.as_ref().map(|kv| kv.create_revision),
        holder_key: kv.map(|kv| String::from_utf8_lossy(&kv.key).into_owned()),
        revision,
    })
}

/// The permission checks of the Lock and Election services: etcd runs them as the caller
/// through its own KV, so the caller needs what those reads and writes need. `writes` says
/// whether the call writes; `keys` is the holders' prefix `name/` or one holder's key.
async fn may_use<T>(
    member: &Member,
    request: &tonic::Request<T>,
    keys: Keys<'_>,
    writes: bool,
) -> Result<(), ServerError> {
    let caller = caller::of(member, request).await?;
    let (key, range_end) = match keys {
        Keys::Holders(name) => {
            let (prefix, _) = holder_key(name, 0);
            let end = synod_api::prefix_range_end(&prefix);
            (prefix, end)
        }
        Keys::Holder(key) => (key.to_vec(), Vec::new()),
    };
    member
        .machine
        .auth
        .check_keys(&caller, Access::Read, &key, &range_end)?;
    if writes {
        member
            .machine
            .auth
            .check_keys(&caller, Access::Write, &key, &range_end)?;
    }
    Ok(())
}

/// The keys a Lock or Election call touches.
#[derive(Clone, Copy)]
enum Keys<'a> {
    /// Every holder of the lock or election `name`.
    Holders(&'a [u8]),
    /// One holder's key.
    Holder(&'a [u8]),
}

pub struct LockService {
    member: Arc<Member>,
}

impl LockService {
    pub fn new(member: Arc<Member>) -> LockService {
        LockService { member }
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(
        &self,
        request: tonic::Request<LockRequest>,
    ) -> Result<tonic::Response<LockResponse>, Status> {
        may_use(
            &self.member,
            &request,
            Keys::Holders(&request.get_ref().name),
            true,
        )
        .await?;
        let request = request.into_inner();
        let member = &self.member;
        let lease = if request.lease != 0 {
            request.lease
        } else {
            // etcd gives such a call a session of its own, which nobody keeps alive.
            let id = member.new_lease_id();
            match member
                .propose(Request::LeaseGrant(LeaseGrantRequest {
                    ttl: SESSION_TTL_SECONDS,
                    id,
                }))
                .await?
            {
                Response::LeaseGrant(granted) => granted.id,
                other => return Err(unexpected(&other).into()),
            }
        };
        let (prefix, key) = holder_key(&request.name, lease);
        let acquire = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![
                put(&key, Vec::new(), lease),
                op(request_op::Request::RequestRange(first_created(&prefix))),
            ],
            failure: vec![
                op(request_op::Request::RequestRange(RangeRequest {
                    key: key.clone(),
                    ..RangeRequest::default()
                })),
                op(request_op::Request::RequestRange(first_created(&prefix))),
            ],
        };
        let response = txn(member, acquire).await?;
        let abandon = Abandon {
            member: member.clone(),
            key: Some(key.clone()),
        };
        let revision = response.header.map(|h| h.revision).unwrap_or(0);
        let my_revision = if response.succeeded {
            revision
        } else {
            range_result(&response, 0)
                .and_then(|r| r.kvs.first())
                .map(|kv| kv.create_revision)
                .ok_or_else(|| Status::from(Failure::Recipe(SESSION_EXPIRED)))?
        };
        let owner = range_result(&response, 1)
            .and_then(|r| r.kvs.first())
            .map(|kv| kv.create_revision);
        if owner.is_some_and(|owner| owner != my_revision) {
            wait_deletes(member, &prefix, my_revision - 1).await?;
            let mine = range(
                member,
                &RangeRequest {
                    key: key.clone(),
                    ..RangeRequest::default()
                },
            )
            .await?;
            if mine.kvs.is_empty() {
                return Err(Status::from(Failure::Recipe(SESSION_EXPIRED)));
            }
        }
        abandon.keep();
        Ok(tonic::Response::new(LockResponse {
            header: header(member, revision),
            key,
        }))
    }

    async fn unlock(
        &self,
        request: tonic::Request<UnlockRequest>,
    ) -> Result<tonic::Response<UnlockResponse>, Status> {
        may_use(
            &self.member,
            &request,
            Keys::Holder(&request.get_ref().key),
            true,
        )
        .await?;
        let revision = delete(&self.member, &request.into_inner().key).await?;
        Ok(tonic::Response::new(UnlockResponse {
            header: header(&self.member, revision),
        }))
    }
}

pub struct ElectionService {
    member: Arc<Member>,
}

impl ElectionService {
    pub fn new(member: Arc<Member>) -> ElectionService {
        ElectionService { member }
    }

    /// Proclaims `value` for the holder `leader`; "not leader" if its key was replaced or deleted.
    async fn proclaim_as(&self, leader: &LeaderKey, value: Vec<u8>) -> Result<i64, Status> {
        let request = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![put(&leader.key, value, leader.lease)],
            failure: Vec::new(),
        };
        let response = txn(&self.member, request).await?;
        if !response.succeeded {
            return Err(Status::from(Failure::Recipe(NOT_LEADER)));
        }
        Ok(response.header.map(|h| h.revision).unwrap_or(0))
    }

    async fn leader_of(&self, name: &[u8]) -> Result<(Option<KeyValue>, i64), ServerError> {
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        let response = range(&self.member, &first_created(&prefix)).await?;
        let revision = response.header.map(|h| h.revision).unwrap_or(0);
        Ok((response.kvs.into_iter().next(), revision))
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        request: tonic::Request<CampaignRequest>,
    ) -> Result<tonic::Response<CampaignResponse>, Status> {
        may_use(
            &self.member,
            &request,
            Keys::Holders(&request.get_ref().name),
            true,
        )
        .await?;
        let request = request.into_inner();
        let member = &self.member;
        let (prefix, key) = holder_key(&request.name, request.lease);
        let enter = TxnRequest {
            compare: vec![created_at(&key, 0)],
            success: vec![put(&key, request.value.clone(), request.lease)],
            failure: vec![op(request_op::Request::RequestRange(RangeRequest {
                key: key.clone(),
                ..RangeRequest::default()
            }))],
        };
        let response = txn(member, enter).await?;
        let abandon = Abandon {
            member: member.clone(),
            key: Some(key.clone()),
        };
        let mut revision = response.header.map(|h| h.revision).unwrap_or(0);
        let leader = if response.succeeded {
            LeaderKey {
                name: request.name.clone(),
                key: key.clone(),
                rev: revision,
                lease: request.lease,
            }
        } else {
            let existing = range_result(&response, 0)
                .and_then(|r| r.kvs.first())
                .cloned()
                .ok_or_else(|| Status::from(Failure::Recipe(NOT_LEADER)))?;
            let leader = LeaderKey {
                name: request.name.clone(),
                key: key.clone(),
                rev: existing.create_revision,
                lease: request.lease,
            };
            if existing.value != request.value {
                revision = self.proclaim_as(&leader, request.value.clone()).await?;
            }
            leader
        };
        wait_deletes(member, &prefix, leader.rev - 1).await?;
        abandon.keep();
        Ok(tonic::Response::new(CampaignResponse {
            header: header(member, revision),
            leader: Some(leader),
        }))
    }

    async fn proclaim(
        &self,
        request: tonic::Request<ProclaimRequest>,
    ) -> Result<tonic::Response<ProclaimResponse>, Status> {
        let holder = request
            .get_ref()
            .leader
            .as_ref()
            .map_or(&[][..], |l| &l.key);
        may_use(&self.member, &request, Keys::Holder(holder), true).await?;
        let request = request.into_inner();
        let leader = request
            .leader
            .ok_or_else(|| Status::from(Failure::Recipe(MISSING_LEADER_KEY)))?;
        let revision = self.proclaim_as(&leader, request.value).await?;
        Ok(tonic::Response::new(ProclaimResponse {
            header: header(&self.member, revision),
        }))
    }

    async fn leader(
        &self,
        request: tonic::Request<LeaderRequest>,
    ) -> Result<tonic::Response<LeaderResponse>, Status> {
        may_use(
            &self.member,
            &request,
            Keys::Holders(&request.get_ref().name),
            false,
        )
        .await?;
        let (kv, revision) = self.leader_of(&request.into_inner().name).await?;
        let kv = kv.ok_or_else(|| Status::from(Failure::Recipe(NO_LEADER)))?;
        Ok(tonic::Response::new(LeaderResponse {
            header: header(&self.member, revision),
            kv: Some(kv),
        }))
    }

    type ObserveStream = ObserveStream;

    async fn observe(
        &self,
        request: tonic::Request<LeaderRequest>,
    ) -> Result<tonic::Response<ObserveStream>, Status> {
        may_use(
            &self.member,
            &request,
            Keys::Holders(&request.get_ref().name),
            false,
        )
        .await?;
        let name = request.into_inner().name;
        let service = ElectionService {
            member: self.member.clone(),
        };
        let (output, receiver) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut prefix = name.clone();
            prefix.push(b'/');
            let end = synod_api::prefix_range_end(&prefix);
            let mut last: Option<(Vec<u8>, i64)> = None;
            loop {
                let (kv, revision) = match service.leader_of(&name).await {
                    Ok(found) => found,
                    Err(error) => {
                        let _ = output.send(Err(error.into())).await;
                        return;
                    }
                };
                if let Some(kv) = kv {
                    let seen = (kv.key.clone(), kv.mod_revision);
                    if last.as_ref() != Some(&seen) {
                        last = Some(seen);
                        let response = LeaderResponse {
                            header: header(&service.member, revision),
                            kv: Some(kv),
                        };
                        if output.send(Ok(response)).await.is_err() {
                            return;
                        }
                    }
                }
                tokio::select! {
                    changed = wait_change(&service.member, &prefix, &end, revision, false) => {
                        if changed.is_err() {
                            return;
                        }
                    }
                    _ = output.closed() => return,
                }
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }

    async fn resign(
        &self,
        request: tonic::Request<ResignRequest>,
    ) -> Result<tonic::Response<ResignResponse>, Status> {
        let holder = request
            .get_ref()
            .leader
            .as_ref()
            .map_or(&[][..], |l| &l.key);
        may_use(&self.member, &request, Keys::Holder(holder), true).await?;
        let leader = request
            .into_inner()
            .leader
            .ok_or_else(|| Status::from(Failure::Recipe(MISSING_LEADER_KEY)))?;
        let request = TxnRequest {
            compare: vec![created_at(&leader.key, leader.rev)],
            success: vec![op(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: leader.key.clone(),
                    ..DeleteRangeRequest::default()
                },
            ))],
            failure: Vec::new(),
        };
        let response = txn(&self.member, request).await?;
        let revision = response.header.map(|h| h.revision).unwrap_or(0);
        Ok(tonic::Response::new(ResignResponse {
            header: header(&self.member, revision),
        }))
    }
}
