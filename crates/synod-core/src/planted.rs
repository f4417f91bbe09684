//! Bugs planted on purpose, so the simulator can prove it catches them. Each one is a switch that
//! exists only in builds with the `planted-bugs` feature (enabled by `synod-sim`'s tests, never by
//! a release build) and is off unless a test turns it on for its own thread.

/// A known-wrong behaviour the core can be switched into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// The Raft log writes entries and hard state without fsync, yet acknowledges them.
    AckBeforeFsync,
    /// Linearizable reads are served at once from local state, without a ReadIndex round.
    ReadWithoutReadIndex,
    /// A restarted member forgets it applied its last entry and applies it again.
    ApplyTwiceAfterRestart,
    /// Followers revoke leases whose deadline passed by their own (stale) view.
    FollowerExpiresLeases,
    /// The driver answers a put or delete as soon as it is proposed, before it is applied.
    AnswerBeforeApply,
    /// A member that stopped leading keeps offering its snapshot, and its view pins redb pages.
    DeposedKeepsSnapshot,
    /// The key index rebuilt from a snapshot stream skips deletions: keys deleted before the
    /// snapshot are alive again on the member that caught up.
    StreamIndexKeepsDeleted,
    /// A leader keeps offering its snapshot after every follower was sent it, and its view pins
    /// redb pages.
    IdleLeaderKeepsSnapshot,
}

impl Bug {
    pub const ALL: [Bug; 8] = [
        Bug::AckBeforeFsync,
        Bug::ReadWithoutReadIndex,
        Bug::ApplyTwiceAfterRestart,
        Bug::FollowerExpiresLeases,
        Bug::AnswerBeforeApply,
        Bug::DeposedKeepsSnapshot,
        Bug::StreamIndexKeepsDeleted,
        Bug::IdleLeaderKeepsSnapshot,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeFsync => "ack-before-fsync",
            Bug::ReadWithoutReadIndex => "read-without-read-index",
            Bug::ApplyTwiceAfterRestart => "apply-twice-after-restart",
            Bug::FollowerExpiresLeases => "follower-expires-leases",
            Bug::AnswerBeforeApply => "answer-before-apply",
            Bug::DeposedKeepsSnapshot => "deposed-keeps-snapshot",
            Bug::StreamIndexKeepsDeleted => "stream-index-keeps-deleted",
            Bug::IdleLeaderKeepsSnapshot => "idle-leader-keeps-snapshot",
        }
    }

    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
thread_local! {
    static PLANTED: std::cell::Cell<Option<Bug>> = const { std::cell::Cell::new(None) };
}

/// Whether `bug` is switched on for the calling thread (always false without the feature).
#[inline]
pub fn is_planted(bug: Bug) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|planted| planted.get() == Some(bug))
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        let _ = bug;
        false
    }
}

/// Switches `bug` on (or every bug off, with `None`) for the calling thread. Returns false when
/// a bug was asked for but this build has no planted bugs (the `planted-bugs` feature is off).
pub fn plant(bug: Option<Bug>) -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        PLANTED.with(|planted| planted.set(bug));
        true
    }
    #[cfg(not(feature = "planted-bugs"))]
    {
        bug.is_none()
    }
}
