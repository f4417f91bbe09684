//! etcd's strict reconfiguration checks and the learner promotion rule: what the leader decides
//! before a membership change reaches the log.

use raft::eraftpb::ConfChangeType;
use synod_api::synodpb::MemberRecord;

use crate::error::RequestError;
use crate::node::Node;
use raft_engine::env::FileSystem;

use super::DriverError;

/// A membership change a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberChangeKind {
    AddVoter,
    AddLearner,
    Promote,
    Remove,
}

/// etcd's rule: a learner may be promoted once its log is within 10% of the leader's.
pub fn learner_ready(matched: u64, leader_last: u64) -> bool {
    matched as f64 >= leader_last as f64 * 0.9
}

/// Checks `change` of `member` against the leader's view of the cluster: it must not leave the
/// cluster without a working quorum (etcd's `--strict-reconfig-check`, always on here), add a
/// member twice, or promote a learner that has not caught up. Returns the Raft change to propose.
pub fn check<F: FileSystem>(
    node: &Node<F>,
    change: MemberChangeKind,
    member: &MemberRecord,
) -> Result<ConfChangeType, DriverError> {
    let conf = node.conf_state();
    let is_voter = conf.voters.contains(&member.id);
    let is_learner = conf.learners.contains(&member.id);
    let active = node.recently_active();
    if active.is_empty() {
        // Only the leader knows who is up; a follower cannot check the change safely.
        return Err(DriverError::NotLeader);
    }
    let active_voters = |exclude: u64| {
        conf.voters
            .iter()
            .filter(|v| **v != exclude && active.contains(v))
            .count()
    };
    let quorum = |voters: usize| voters / 2 + 1;
    match change {
        MemberChangeKind::AddVoter | MemberChangeKind::AddLearner => {
            if is_voter || is_learner {
                return Err(RequestError::MemberExists.into());
            }
            if change == MemberChangeKind::AddLearner {
                if !conf.learners.is_empty() {
                    return Err(RequestError::TooManyLearners.into());
                }
                return Ok(ConfChangeType::AddLearnerNode);
            }
            if active_voters(0) < quorum(conf.voters.len() + 1) {
                return Err(RequestError::NotEnoughStarted.into());
            }
            Ok(ConfChangeType::AddNode)
        }
        MemberChangeKind::Promote => {
            if is_voter {
                return Err(RequestError::MemberNotLearner.into());
            }
            if !is_learner {
                return Err(RequestError::MemberNotFound.into());
            }
            match node.replication(member.id) {
                Some((matched, last)) if learner_ready(matched, last) => {}
                _ => return Err(RequestError::LearnerNotReady.into()),
            }
            Ok(ConfChangeType::AddNode)
        }
        MemberChangeKind::Remove => {
            if !is_voter && !is_learner {
                return Err(RequestError::MemberNotFound.into());
            }
            if is_voter && active_voters(member.id) < quorum(conf.voters.len() - 1) {
                return Err(RequestError::NotEnoughStarted.into());
            }
            Ok(ConfChangeType::RemoveNode)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::learner_ready;

    #[test]
    fn a_learner_within_ten_percent_is_ready() {
        assert!(learner_ready(90, 100));
        assert!(!learner_ready(89, 100));
        assert!(learner_ready(0, 0));
    }
}
