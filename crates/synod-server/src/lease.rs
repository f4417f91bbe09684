//! etcd's Lease service (etcd `v3rpc/lease.go`). Grants and revokes go through Raft; keep-alives
//! renew on the leader's lessor, which alone tracks deadlines.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use synod_api::etcdserverpb::lease_server::Lease;
use synod_api::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use synod_api::synodpb::internal_request::Request;
use synod_core::apply::{Response, check_lease_keys};
use synod_core::auth::Access;
use synod_core::lease::LeaseInfo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::caller::{self, Credentials};
use crate::error::ServerError;
use crate::member::{Member, unexpected};

/// Keep-alive responses buffered per stream.
const KEEPALIVE_QUEUE_MAX: usize = 64;

pub struct LeaseService {
    member: Arc<Member>,
}

impl LeaseService {
    pub fn new(member: Arc<Member>) -> LeaseService {
        LeaseService { member }
    }
}

impl LeaseService {
    /// Serves one keep-alive stream: each request renews its lease and is answered with the TTL
    /// (0 for an unknown lease, as etcd does). Shared by gRPC and the HTTP gateway.
    pub fn keep_alive_stream<S>(
        &self,
        mut requests: S,
        credentials: Credentials,
    ) -> ReceiverStream<Result<LeaseKeepAliveResponse, Status>>
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        let (output, receiver) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        let member = self.member.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let renewed = match may_renew(&member, &credentials, request.id).await {
                    Err(refused) => Err(Status::from(refused)),
                    Ok(()) => match member.renew_lease(request.id).await {
                        // Only the leader keeps deadlines: a follower forwards the renewal.
                        Err(ServerError::NotLeader) => {
                            crate::forward::renew(&member, request.id).await
                        }
                        renewed => renewed.map_err(Status::from),
                    },
                };
                let ttl = match renewed {
                    Ok(ttl) => ttl,
                    Err(status) => {
                        let _ = output.send(Err(status)).await;
                        break;
                    }
                };
                let response = LeaseKeepAliveResponse {
                    header: Some(member.header(member.machine.store.current_revision())),
                    id: request.id,
                    ttl,
                };
                if output.send(Ok(response)).await.is_err() {
                    break;
                }
            }
        });
        ReceiverStream::new(receiver)
    }
}

/// Keeping a lease alive keeps its keys: WRITE on every one of them (root is exempt).
async fn may_renew(
    member: &Member,
    credentials: &Credentials,
    lease: i64,
) -> Result<(), ServerError> {
    let caller = caller::resolve(member, credentials).await?;
    check_lease_keys(&member.machine.auth, &member.machine.lessor, &caller, lease)
        .map_err(ServerError::from)
}

/// `LeaseTimeToLive`'s answer from a lease as the leader sees it (a missing lease is TTL -1, not
/// an error, as in etcd).
pub fn time_to_live(
    member: &Member,
    request: &LeaseTimeToLiveRequest,
    info: Option<LeaseInfo>,
) -> LeaseTimeToLiveResponse {
    let header = Some(member.header(member.machine.store.current_revision()));
    match info {
        Some(info) => LeaseTimeToLiveResponse {
            header,
            id: request.id,
            ttl: info.remaining_seconds,
            granted_ttl: info.granted_ttl_seconds,
            keys: if request.keys { info.keys } else { Vec::new() },
        },
        None => LeaseTimeToLiveResponse {
            header,
            id: request.id,
            ttl: -1,
            ..LeaseTimeToLiveResponse::default()
        },
    }
}

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        request: tonic::Request<LeaseGrantRequest>,
    ) -> Result<tonic::Response<LeaseGrantResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let mut request = request.into_inner();
        if request.id == 0 {
            // Chosen before proposing, so every member applies the same id.
            request.id = self.member.new_lease_id();
        }
        self.member.check_quota(64).await?;
        match self
            .member
            .propose_for(&caller, Request::LeaseGrant(request))
            .await?
        {
            Response::LeaseGrant(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn lease_revoke(
        &self,
        request: tonic::Request<LeaseRevokeRequest>,
    ) -> Result<tonic::Response<LeaseRevokeResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        check_lease_keys(
            &self.member.machine.auth,
            &self.member.machine.lessor,
            &caller,
            request.id,
        )
        .map_err(ServerError::from)?;
        match self
            .member
            .propose_for(&caller, Request::LeaseRevoke(request))
            .await?
        {
            Response::LeaseRevoke(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    type LeaseKeepAliveStream =
        Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send + 'static>>;

    async fn lease_keep_alive(
        &self,
        request: tonic::Request<tonic::Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<tonic::Response<Self::LeaseKeepAliveStream>, Status> {
        let credentials = Credentials::of(&request);
        Ok(tonic::Response::new(Box::pin(
            self.keep_alive_stream(request.into_inner(), credentials),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.member
            .machine
            .auth
            .check_authenticated(&caller)
            .map_err(ServerError::from)?;
        let request = request.into_inner();
        let response = match self.member.lease_time_to_live(request.id).await {
            Ok(info) => time_to_live(&self.member, &request, info),
            Err(ServerError::NotLeader) => {
                // Remaining TTLs exist only on the leader.
                let mut response = crate::forward::time_to_live(&self.member, request).await?;
                let revision = response.header.as_ref().map(|h| h.revision).unwrap_or(0);
                response.header = Some(self.member.header(revision));
                response
            }
            Err(error) => return Err(error.into()),
        };
        // The keys' names are data too (CVE-2023-32082).
        if request.keys {
            self.member
                .machine
                .auth
                .check_each_key(&caller, Access::Read, &response.keys)
                .map_err(ServerError::from)?;
        }
        Ok(tonic::Response::new(response))
    }

    async fn lease_leases(
        &self,
        request: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<tonic::Response<LeaseLeasesResponse>, Status> {
        let caller = caller::of(&self.member, &request).await?;
        self.member.read_barrier().await?;
        for id in self.member.machine.lessor.ids() {
            let keys = self
                .member
                .machine
                .lessor
                .info(id)
                .map(|i| i.keys)
                .unwrap_or_default();
            self.member
                .machine
                .auth
                .check_each_key(&caller, Access::Read, &keys)
                .map_err(ServerError::from)?;
        }
        let leases = self
            .member
            .machine
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        let header = Some(
            self.member
                .header(self.member.machine.store.current_revision()),
        );
        Ok(tonic::Response::new(LeaseLeasesResponse { header, leases }))
    }
}
