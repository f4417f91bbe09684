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
use synod_core::apply::Response;
use synod_core::lease::LeaseInfo;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

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
    ) -> ReceiverStream<Result<LeaseKeepAliveResponse, Status>>
    where
        S: Stream<Item = Result<LeaseKeepAliveRequest, Status>> + Send + Unpin + 'static,
    {
        let (output, receiver) = mpsc::channel(KEEPALIVE_QUEUE_MAX);
        let member = self.member.clone();
        tokio::spawn(async move {
            while let Some(Ok(request)) = requests.next().await {
                let renewed = match member.renew_lease(request.id).await {
                    // Only the leader keeps deadlines: a follower forwards the renewal.
                    Err(ServerError::NotLeader) => crate::forward::renew(&member, request.id).await,
                    renewed => renewed.map_err(Status::from),
                };
                let ttl = match renewed {
                    Ok(ttl) => ttl,
                    Err(status) => {
                        let _ = output.send(Err(status)).await;
                        break;
                    }
                };
                let response = LeaseKeepAliveResponse {
                    header: Some(member.header(member.store.current_revision())),
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

/// `LeaseTimeToLive`'s answer from a lease as the leader sees it (a missing lease is TTL -1, not
/// an error, as in etcd).
pub fn time_to_live(
    member: &Member,
    request: &LeaseTimeToLiveRequest,
    info: Option<LeaseInfo>,
) -> LeaseTimeToLiveResponse {
    let header = Some(member.header(member.store.current_revision()));
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
        let mut request = request.into_inner();
        if request.id == 0 {
            // Chosen before proposing, so every member applies the same id.
            request.id = self.member.new_lease_id();
        }
        self.member.check_quota(64).await?;
        match self.member.propose(Request::LeaseGrant(request)).await? {
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
        match self
            .member
            .propose(Request::LeaseRevoke(request.into_inner()))
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
        Ok(tonic::Response::new(Box::pin(
            self.keep_alive_stream(request.into_inner()),
        )))
    }

    async fn lease_time_to_live(
        &self,
        request: tonic::Request<LeaseTimeToLiveRequest>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
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
        Ok(tonic::Response::new(response))
    }

    async fn lease_leases(
        &self,
        _request: tonic::Request<LeaseLeasesRequest>,
    ) -> Result<tonic::Response<LeaseLeasesResponse>, Status> {
        self.member.read_barrier().await?;
        let leases = self
            .member
            .lessor
            .ids()
            .into_iter()
            .map(|id| LeaseStatus { id })
            .collect();
        let header = Some(self.member.header(self.member.store.current_revision()));
        Ok(tonic::Response::new(LeaseLeasesResponse { header, leases }))
    }
}
