//! Follower snapshots: the leader's side (a [`SnapshotJob`] offered to followers, let go once no
//! follower is being sent it) and the follower's (a received snapshot stepped with the key index
//! rebuilt from its rows, then installed as the state machine).

use super::*;

/// A consistent view of the state machine, to be streamed to followers as a snapshot
/// (`crate::snapshot::send_rows`), and the Raft metadata that describes it.
pub struct SnapshotJob {
    pub view: crate::backend::ReadTxn,
    pub metadata: SnapshotMetadata,
}

impl SnapshotJob {
    /// The Raft snapshot that names this view `name`, to hand back with
    /// [`Node::offer_snapshot`], and the view. The owner keeps the view under that name, and
    /// streams it to each follower a `MsgSnapshot` naming it goes to, until the driver's
    /// `obsolete_snapshots` names it.
    pub fn into_parts(self, name: &str) -> (Snapshot, crate::backend::ReadTxn) {
        let mut snapshot = Snapshot::default();
        snapshot.set_metadata(self.metadata);
        snapshot.data = name.as_bytes().to_vec().into();
        (snapshot, self.view)
    }
}

impl std::fmt::Debug for SnapshotJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotJob")
            .field("index", &self.metadata.index)
            .field("term", &self.metadata.term)
            .finish()
    }
}

impl<F: FileSystem> Node<F> {
    /// Steps a snapshot message whose file the shell built from a stream, with the key index
    /// rebuilt from the same rows: if Raft takes the snapshot, this turn's install uses the
    /// index instead of reading the file again. The turn's [`Node::advance`] takes it or, when
    /// Raft refused the snapshot, drops it.
    pub fn step_snapshot(
        &mut self,
        message: Message,
        index: PreparedIndex,
    ) -> Result<(), raft::Error> {
        let file = String::from_utf8_lossy(&message.get_snapshot().data).into_owned();
        self.prepared_indexes.push((file, index));
        self.step(message)
    }

    /// Installs a snapshot from the leader: its file becomes the state machine (with the key
    /// index stepped with it, if any), then the log records it.
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        let metadata = snapshot.get_metadata();
        // Guard rail: a snapshot never moves the state machine backwards. raft-rs only hands over
        // newer ones; if that ever breaks, stop before the older state replaces the newer one.
        let applied = self.machine.applied_index();
        if metadata.index < applied {
            return Err(StorageError::corrupt(format!(
                "refusing a snapshot at index {} below the applied index {applied}",
                metadata.index
            )));
        }
        let path = std::str::from_utf8(&snapshot.data)
            .map_err(|_| StorageError::corrupt("a raft snapshot names no file"))?;
        let prepared = self
            .prepared_indexes
            .iter()
            .position(|(file, _)| file == path)
            .map(|at| self.prepared_indexes.swap_remove(at).1);
        tracing::info!(
            index = metadata.index,
            term = metadata.term,
            file = path,
            index_prepared = prepared.is_some(),
            "installing a state-machine snapshot from the leader"
        );
        self.machine
            .install_snapshot(std::path::Path::new(path), metadata, prepared)?;
        crate::fault::reach(crate::fault::FaultPoint::SnapshotInStateMachine);
        self.raw.mut_store().install_snapshot(metadata)?;
        tracing::info!(index = metadata.index, "state-machine snapshot installed");
        // The file was renamed over the state machine's: nothing should be left at its path.
        let _ = self
            .machine
            .backend()
            .disk()
            .remove(std::path::Path::new(path));
        Ok(())
    }

    /// A consistent view of the applied state and its Raft metadata, for a follower snapshot.
    pub(super) fn snapshot_job(&mut self) -> Result<SnapshotJob, StorageError> {
        let view = self.machine.backend().begin_read()?;
        let mut metadata = SnapshotMetadata {
            index: self.machine.applied_index(),
            term: self.machine.applied_term(),
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(self.raw.raft.prs().conf().to_conf_state());
        tracing::info!(
            index = metadata.index,
            "a follower needs a snapshot; streaming it from a view of this index"
        );
        Ok(SnapshotJob { view, metadata })
    }

    /// Offers the snapshot of a [`SnapshotJob`] (`data` names its view), or reports that keeping
    /// it failed (`None`), so a later request can try again.
    pub fn offer_snapshot(&mut self, snapshot: Option<Snapshot>) {
        self.snapshot_in_progress = false;
        if let Some(snapshot) = snapshot {
            self.snapshot_offered_at = Some(self.now_tick);
            // Requests made while this one was being written are answered by it.
            self.raw.mut_store().take_snapshot_request();
            self.raw.mut_store().set_available_snapshot(snapshot);
        }
    }

    /// The snapshot offered to followers: its view must be kept until it is released or a newer
    /// one is offered.
    pub fn available_snapshot(&self) -> Option<&Snapshot> {
        self.raw.store().available_snapshot()
    }

    /// Stops offering the snapshot once no follower is being sent one and raft-rs has had an
    /// election timeout to send it (or this member is no longer the leader); returns it. Its view
    /// pins the pages it reads, so redb cannot reuse them while the view lives and the
    /// state-machine file would grow under writes. A follower that needs a snapshot later gets a
    /// fresh view, which costs nothing to take.
    pub fn release_idle_snapshot(&mut self) -> Option<Snapshot> {
        let offered_at = self.snapshot_offered_at?;
        if self.role != StateRole::Leader
            && crate::planted::is_planted(crate::planted::Bug::DeposedKeepsSnapshot)
        {
            return None;
        }
        if self.role == StateRole::Leader {
            let recent =
                self.now_tick.saturating_sub(offered_at) < self.config.election_ticks as u64;
            if self.sends_snapshot()
                || recent
                || crate::planted::is_planted(crate::planted::Bug::IdleLeaderKeepsSnapshot)
            {
                return None;
            }
        }
        self.snapshot_offered_at = None;
        self.raw.mut_store().take_available_snapshot()
    }

    /// Whether this member leads and is sending a snapshot to a follower.
    pub fn sends_snapshot(&self) -> bool {
        self.role == StateRole::Leader
            && self
                .raw
                .raft
                .prs()
                .iter()
                .any(|(_, progress)| progress.state == raft::ProgressState::Snapshot)
    }

    /// Tells Raft how sending a snapshot to `peer` ended.
    pub fn report_snapshot(&mut self, peer: u64, delivered: bool) {
        let status = if delivered {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(peer, status);
    }
}
