//! Requests a follower forwards to the leader, over the leader's peer channel (the link the
//! Raft messages use): lease keep-alives and time-to-live (only the leader keeps deadlines) and
//! membership changes (only the leader can check them against the cluster's health).

use std::sync::atomic::Ordering;

use synod_api::etcdserverpb::{LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use synod_api::synodpb::peer_client::PeerClient;
use synod_api::synodpb::{
    LeaseRenewRequest, LeaseTimeToLiveForward, MemberChangeForward, MemberRecord,
    member_change_forward,
};
use tonic::Status;
use tonic::transport::Channel;

use crate::error::ServerError;
use crate::member::{Member, MemberChangeKind};

/// The leader's peer service, for a request a follower forwards; "no leader" when there is none.
fn leader_client(member: &Member) -> Result<PeerClient<Channel>, Status> {
    let leader = member.status.leader_id.load(Ordering::Relaxed);
    if leader == 0 {
        return Err(ServerError::NoLeader.into());
    }
    member
        .transport()
        .client(leader)
        .ok_or_else(|| ServerError::NoLeader.into())
}

/// Forwards a membership change to the leader; returns the member as the change left it.
pub async fn member_change(
    member: &Member,
    kind: MemberChangeKind,
    record: MemberRecord,
) -> Result<MemberRecord, Status> {
    let mut client = leader_client(member)?;
    let kind = match kind {
        MemberChangeKind::AddVoter => member_change_forward::Kind::AddVoter,
        MemberChangeKind::AddLearner => member_change_forward::Kind::AddLearner,
        MemberChangeKind::Promote => member_change_forward::Kind::Promote,
        MemberChangeKind::Remove => member_change_forward::Kind::Remove,
    };
    let request = MemberChangeForward {
        cluster_id: member.cluster_id,
        kind: kind as i32,
        member: Some(record),
    };
    match client.change_member(request).await {
        Ok(response) => Ok(response.into_inner().member.unwrap_or_default()),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(ServerError::NoLeader.into())
        }
        Err(status) => Err(status),
    }
}

/// Forwards a keep-alive to the leader; returns the TTL (0 for an unknown lease, as etcd does).
pub async fn renew(member: &Member, id: i64) -> Result<i64, Status> {
    let mut client = leader_client(member)?;
    let request = LeaseRenewRequest {
        cluster_id: member.cluster_id,
        id,
    };
    match client.lease_renew(request).await {
        Ok(response) => Ok(response.into_inner().ttl),
        Err(status) if status.code() == tonic::Code::Unavailable => {
            Err(ServerError::NoLeader.into())
        }
        Err(status) => Err(status),
    }
}

/// Forwards a time-to-live request to the leader, which alone knows the remaining TTL.
pub async fn time_to_live(
    member: &Member,
    request: LeaseTimeToLiveRequest,
) -> Result<LeaseTimeToLiveResponse, Status> {
    let mut client = leader_client(member)?;
    let forward = LeaseTimeToLiveForward {
        cluster_id: member.cluster_id,
        request: Some(request),
    };
    client
        .lease_time_to_live(forward)
        .await
        .map(|r| r.into_inner())
        .map_err(|status| {
            if status.code() == tonic::Code::Unavailable {
                ServerError::NoLeader.into()
            } else {
                status
            }
        })
}
