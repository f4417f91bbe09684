//! Corruption checks across members (etcd's corrupt checker, on by default here).
//!
//! Every member holds the same history, so every member's HashKV at one revision must be equal.
//! A state-machine file can be damaged in ways no checksum sees (a disk returning an old page, a
//! file replaced by hand, a bug); these checks find it by comparing members:
//!
//! - **At start**, before a member serves clients, it asks its peers for their HashKV at its own
//!   revision; if a peer (with the same compaction point) disagrees, the member refuses to start.
//! - **Periodically**, the leader compares every member's HashKV at its revision and raises the
//!   CORRUPT alarm for a member that disagrees (for itself when every answering peer agrees with
//!   each other and not with it). While CORRUPT is raised, every member refuses reads and writes
//!   with etcd's "corrupt cluster" rather than serve data that may be wrong.

use std::sync::Arc;
use std::time::Duration;

use synod_api::etcdserverpb::{
    AlarmRequest, AlarmType, HashKvResponse, alarm_request::AlarmAction,
};
use synod_api::synodpb::PeerHashKvRequest;
use synod_api::synodpb::internal_request::Request;

use crate::member::Member;

/// How long a peer may take to answer (it first waits to apply the revision asked about).
const PEER_TIMEOUT: Duration = Duration::from_secs(3);

/// The peers' HashKV at `revision`, for those that answered: (member id, response).
async fn peer_hashes(member: &Member, revision: i64) -> Vec<(u64, HashKvResponse)> {
    let Ok(members) = member.members() else {
        return Vec::new();
    };
    let mut answers = Vec::new();
    for peer in members.iter().filter(|m| m.id != member.member_id) {
        let Some(mut client) = member.transport().client(peer.id) else {
            continue;
        };
        let request = PeerHashKvRequest {
            cluster_id: member.cluster_id,
            revision,
        };
        if let Ok(Ok(response)) = tokio::time::timeout(PEER_TIMEOUT, client.hash_kv(request)).await
        {
            answers.push((peer.id, response.into_inner()));
        }
    }
    answers
}

/// Compares this member with its peers at its own revision, before it serves. Unreachable peers
/// are skipped (a lone restarted member must still start); a disagreeing one stops the start.
pub async fn check_at_start(member: &Member) -> Result<(), String> {
    if member.members().map(|m| m.len()).unwrap_or(1) < 2 {
        return Ok(());
    }
    let revision = member.machine.store.current_revision();
    let (hash, compact, _) = member
        .hash_kv(revision)
        .await
        .map_err(|e| format!("hashing the local state machine: {e}"))?;
    for (peer, answer) in peer_hashes(member, revision).await {
        if answer.compact_revision == compact && answer.hash != hash {
            return Err(format!(
                "found data inconsistency with peer {peer:x}: HashKV at revision {revision} is {hash} here \
                 and {} there; the state-machine file of this member is corrupt",
                answer.hash
            ));
        }
    }
    tracing::info!(revision, "initial corruption check passed");
    Ok(())
}

/// Runs the leader's periodic check until the member stops.
pub fn spawn_periodic(member: Arc<Member>) {
    let Some(interval) = member.config.corrupt_check_interval else {
        return;
    };
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        while !member.is_stopped() {
            ticker.tick().await;
            if member.is_leader() && !member.machine.alarms.is_raised(AlarmType::Corrupt) {
                check_once(&member).await;
            }
        }
    });
}

async fn check_once(member: &Member) {
    let revision = member.machine.store.current_revision();
    let Ok((hash, compact, _)) = member.hash_kv(revision).await else {
        return;
    };
    let answers: Vec<(u64, HashKvResponse)> = peer_hashes(member, revision)
        .await
        .into_iter()
        .filter(|(_, answer)| answer.compact_revision == compact)
        .collect();
    let mismatched: Vec<u64> = answers
        .iter()
        .filter(|(_, answer)| answer.hash != hash)
        .map(|(peer, _)| *peer)
        .collect();
    if mismatched.is_empty() {
        return;
    }
    let peers_agree = answers
        .windows(2)
        .all(|pair| pair[0].1.hash == pair[1].1.hash);
    let corrupt = if mismatched.len() == answers.len() && answers.len() >= 2 && peers_agree {
        // Everyone else agrees with each other, not with the leader: the leader is the odd one.
        vec![member.member_id]
    } else {
        mismatched
    };
    for id in corrupt {
        tracing::error!(
            member = %format!("{id:x}"),
            revision,
            "HashKV mismatch between members; raising the CORRUPT alarm"
        );
        let alarm = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: id,
            alarm: AlarmType::Corrupt as i32,
        };
        if let Err(error) = member.propose(Request::Alarm(alarm)).await {
            tracing::warn!(%error, "could not raise the CORRUPT alarm; will retry");
        }
    }
}
