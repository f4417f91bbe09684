//! Membership changes as the Cluster service and the peer service both make them: the leader
//! checks the request (URLs, duplicates) and proposes it through the driver, which applies
//! etcd's strict checks; a follower forwards it to the leader.

use synod_api::synodpb::MemberRecord;
use synod_core::RequestError;
use synod_core::apply::Response;
use tonic::Status;

use crate::error::ServerError;
use crate::member::{Member, MemberChangeKind, unexpected};

/// Makes a membership change and returns the member as it left it. The leader checks it
/// against the cluster's health and proposes it; a follower forwards it to the leader over the
/// peer channel (as etcd forwards them too), then waits until it has applied it itself, so its
/// answer lists the new membership.
pub async fn change(
    member: &Member,
    kind: MemberChangeKind,
    record: MemberRecord,
) -> Result<MemberRecord, Status> {
    if !member.is_leader() {
        let removes_me = kind == MemberChangeKind::Remove && record.id == member.member_id;
        let changed = crate::forward::member_change(member, kind, record).await?;
        if !removes_me {
            // The change is committed; waiting for it here only makes the member list in the
            // answer current. A member that is itself removed answers at once: it stops soon.
            if let Err(error) = member.read_barrier().await {
                tracing::debug!(%error, "a forwarded membership change is not applied here yet");
            }
        }
        return Ok(changed);
    }
    let record = match kind {
        MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
            check_peer_urls(&record.peer_urls)?;
            let members = member.members().map_err(ServerError::from)?;
            if members
                .iter()
                .any(|m| m.peer_urls.iter().any(|u| record.peer_urls.contains(u)))
            {
                return Err(ServerError::from(RequestError::PeerUrlExists).into());
            }
            MemberRecord {
                id: new_member_id(&record.peer_urls, member.cluster_id),
                name: String::new(),
                peer_urls: record.peer_urls,
                client_urls: Vec::new(),
                is_learner: kind == MemberChangeKind::AddLearner,
            }
        }
        MemberChangeKind::Promote | MemberChangeKind::Remove => MemberRecord {
            id: record.id,
            ..MemberRecord::default()
        },
    };
    match member.change_member(kind, record).await? {
        Response::Member(record) => Ok(record),
        other => Err(unexpected(&other).into()),
    }
}

/// Checks peer URLs as etcd does: absolute http(s) URLs with a host and a port.
pub fn check_peer_urls(urls: &[String]) -> Result<(), Status> {
    let valid = |url: &String| {
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"));
        rest.is_some_and(|rest| {
            let host_port = rest.trim_end_matches('/');
            !host_port.contains('/')
                && host_port
                    .rsplit_once(':')
                    .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        })
    };
    if urls.is_empty() || !urls.iter().all(valid) {
        return Err(ServerError::BadMemberUrls.into());
    }
    Ok(())
}

/// A new member's id: etcd hashes the peer URLs, the cluster and the time of the request.
fn new_member_id(urls: &[String], cluster_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let id = crate::member::member_id(urls, &format!("{cluster_id:x}-{nanos}"));
    id.max(1)
}
