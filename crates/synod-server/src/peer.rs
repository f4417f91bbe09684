//! The inbound side of the peer transport, the `synodpb.Peer` service (Raft batches, chunked
//! snapshots, cluster lookup for joiners, HashKV for the corruption checks, status for the
//! console), and the requests a follower forwards to the leader over the same channels (lease
//! renewal and time-to-live, membership changes). Every request carries the sender's cluster id;
//! a member of another cluster is refused with etcd's "cluster ID mismatch".

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use raft::eraftpb::Message;
use synod_api::etcdserverpb::{HashKvResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse};
use synod_api::synodpb::peer_server::Peer;
use synod_api::synodpb::{
    ClusterRequest, ClusterResponse, LeaseRenewRequest, LeaseRenewResponse, LeaseTimeToLiveForward,
    MemberChangeForward, MemberChangeForwarded, PeerAck, PeerHashKvRequest, PeerStatus,
    PeerStatusRequest, RaftBatch, SnapshotChunk, member_change_forward,
};
use synod_core::disk::RealDisk;
use synod_core::mvcc::kv_store::PreparedIndex;
use tonic::Status;

use crate::error::{Failure, ServerError};
use crate::member::{Member, MemberChangeKind};

pub use crate::transport::PEER_MESSAGE_BYTES_MAX;

/// The inbound side: the `synodpb.Peer` service.
pub struct PeerService {
    member: Arc<Member>,
}

impl PeerService {
    pub fn new(member: Arc<Member>) -> PeerService {
        PeerService { member }
    }

    fn check_cluster(&self, cluster_id: u64) -> Result<(), Status> {
        if cluster_id != self.member.cluster_id {
            return Err(ServerError::ClusterIdMismatch.into());
        }
        Ok(())
    }

    /// A message must come from the peer that sent the batch and be addressed to this member;
    /// `MsgTimeoutNow` (which makes its receiver campaign at once) only from the current leader.
    /// Mutual TLS keeps strangers off the peer port; this keeps one member from speaking for
    /// another or moving leadership on its own.
    fn check_message(&self, sender: u64, message: &Message) -> Result<(), &'static str> {
        if message.from != sender {
            return Err("the message names another sender than its batch");
        }
        if message.to != self.member.member_id {
            return Err("the message is addressed to another member");
        }
        if message.get_msg_type() == raft::eraftpb::MessageType::MsgTimeoutNow
            && self
                .member
                .status
                .leader_id
                .load(std::sync::atomic::Ordering::Relaxed)
                != sender
        {
            return Err("a leadership hand-over from a member that is not the leader");
        }
        Ok(())
    }

    fn check_leader(&self) -> Result<(), Status> {
        if !self.member.is_leader() {
            return Err(ServerError::NotLeader.into());
        }
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<Message, Status> {
    protobuf::Message::parse_from_bytes(bytes)
        .map_err(|e| Failure::BadPeerRequest(format!("undecodable raft message: {e}")).into())
}

/// Builds this member's snapshot file at `path` from the rows of a received snapshot stream
/// (`synod_core::snapshot::build_from_rows`), written on a blocking thread as the chunks arrive,
/// through a `.part` file, and the key index from the same rows on another
/// (`index_from_rows`); refuses a stream longer than `bytes_max`. A failed or refused transfer
/// leaves no file behind.
async fn build_snapshot(
    path: &Path,
    first_data: Vec<u8>,
    chunks: &mut (impl Stream<Item = Result<SnapshotChunk, Status>> + Unpin),
    bytes_max: u64,
) -> Result<(u64, PreparedIndex), Status> {
    let partial = PartialFile(path.with_extension("part"));
    let queued = crate::transport::SNAPSHOT_CHUNKS_QUEUED;
    let (feed, mut rows) = tokio::sync::mpsc::channel::<Bytes>(queued);
    let (index_feed, mut index_rows) = tokio::sync::mpsc::channel::<Bytes>(queued);
    let target = partial.0.clone();
    let builder = tokio::task::spawn_blocking(move || {
        synod_core::snapshot::build_from_rows(
            &RealDisk,
            &target,
            &mut std::iter::from_fn(|| rows.blocking_recv()),
        )
    });
    let indexer = tokio::task::spawn_blocking(move || {
        synod_core::snapshot::index_from_rows(&mut std::iter::from_fn(|| {
            index_rows.blocking_recv()
        }))
    });
    let forwarded = async {
        let mut received = 0u64;
        let mut data = first_data;
        loop {
            received += data.len() as u64;
            if received > bytes_max {
                return Err(Status::from(Failure::BadPeerRequest(format!(
                    "snapshot larger than {bytes_max} bytes (the backend quota and room to spare)"
                ))));
            }
            // A thread that stops taking chunks failed: its error says why. The other's, a
            // stream that ended early, follows from it.
            let shared = Bytes::from(std::mem::take(&mut data));
            if index_feed.send(shared.clone()).await.is_err() {
                return Ok(Stopped::Indexer);
            }
            if feed.send(shared).await.is_err() {
                return Ok(Stopped::Builder);
            }
            match chunks.next().await {
                Some(chunk) => data = chunk?.data,
                None => return Ok(Stopped::Neither),
            }
        }
    }
    .await;
    drop(feed);
    drop(index_feed);
    let failed = |e: &dyn std::fmt::Display| Failure::operation("building the snapshot", e);
    let built = builder.await.map_err(|e| Status::from(failed(&e)))?;
    let index = indexer.await.map_err(|e| Status::from(failed(&e)))?;
    if forwarded? == Stopped::Indexer {
        index.as_ref().map_err(|e| Status::from(failed(e)))?;
    }
    let rows = built.map_err(|e| Status::from(failed(&e)))?;
    let index = index.map_err(|e| Status::from(failed(&e)))?;
    tokio::fs::rename(&partial.0, path)
        .await
        .map_err(|e| Status::from(failed(&e)))?;
    Ok((rows, index))
}

/// Which of a transfer's two threads stopped taking its chunks first.
#[derive(PartialEq)]
enum Stopped {
    Builder,
    Indexer,
    Neither,
}

/// A `.part` file, removed when dropped: whether the transfer fails, is refused, or is dropped
/// with its connection (the handler's future is then never resumed), nothing is left behind.
/// After the rename there is nothing to remove.
struct PartialFile(std::path::PathBuf);

impl Drop for PartialFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn raft(
        &self,
        request: tonic::Request<tonic::Streaming<RaftBatch>>,
    ) -> Result<tonic::Response<PeerAck>, Status> {
        let mut batches = request.into_inner();
        while let Some(batch) = batches.next().await {
            let batch = batch?;
            self.check_cluster(batch.cluster_id)?;
            if self.member.transport().faults.is_blocked(batch.from) {
                continue;
            }
            if self
                .member
                .machine
                .backend
                .is_removed(batch.from)
                .unwrap_or(false)
            {
                // The sender missed its own removal (it was cut off before the entry reached
                // it): tell it, so it stops (etcd answers 410 Gone).
                return Err(Failure::Removed.into());
            }
            if batch.to != self.member.member_id {
                return Err(Failure::PeerRefused(format!(
                    "this is member {:x}, not {:x}",
                    self.member.member_id, batch.to
                ))
                .into());
            }
            let received: usize = batch.messages.iter().map(Vec::len).sum();
            crate::metrics::metrics()
                .peer_received_bytes
                .with_label_values(&[format!("{:x}", batch.from).as_str()])
                .inc_by(received as u64);
            for bytes in &batch.messages {
                let message = decode(bytes)?;
                if let Err(refused) = self.check_message(batch.from, &message) {
                    tracing::warn!(from = %format!("{:x}", batch.from), kind = ?message.get_msg_type(), %refused, "dropping a raft message");
                    continue;
                }
                self.member.step(message);
            }
        }
        Ok(tonic::Response::new(PeerAck {}))
    }

    async fn snapshot(
        &self,
        request: tonic::Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<PeerAck>, Status> {
        let mut chunks = request.into_inner();
        let Some(first) = chunks.next().await else {
            return Err(Failure::BadPeerRequest("empty snapshot stream".to_owned()).into());
        };
        let first = first?;
        self.check_cluster(first.cluster_id)?;
        if self.member.transport().faults.is_blocked(first.from) {
            return Err(Failure::Partitioned.into());
        }
        if first.format != synod_core::snapshot::FORMAT {
            return Err(Failure::PeerRefused(format!(
                "a snapshot in format {} from a member of another Synod version (this one takes \
                 format {}); run one version on every member",
                first.format,
                synod_core::snapshot::FORMAT
            ))
            .into());
        }
        let mut message = decode(&first.message)?;
        if message.get_msg_type() != raft::eraftpb::MessageType::MsgSnapshot {
            return Err(Failure::BadPeerRequest("not a snapshot message".to_owned()).into());
        }
        if let Err(refused) = self.check_message(first.from, &message) {
            return Err(Failure::PeerRefused(refused.to_owned()).into());
        }
        let is_member = self
            .member
            .members()
            .map_err(ServerError::from)?
            .iter()
            .any(|m| m.id == first.from);
        if !is_member {
            return Err(Failure::PeerRefused(format!("{:x} is not a member", first.from)).into());
        }
        let index = message.get_snapshot().get_metadata().index;
        let path = self
            .member
            .config
            .data_dir
            .join("member/snap")
            .join(format!("received-{:016x}-{index:016x}.db", first.from));
        // A snapshot's rows are the state machine: they cannot be larger than the quota allows.
        let quota = self.member.config.quota_backend_bytes;
        let bytes_max = quota + quota / 4 + (16 << 20);
        let (rows, key_index) = build_snapshot(&path, first.data, &mut chunks, bytes_max).await?;
        tracing::info!(index, rows, file = %path.display(), "received a snapshot and its key index");
        message.mut_snapshot().data = path.display().to_string().into_bytes().into();
        self.member
            .step_snapshot(message, key_index)
            .await
            .map_err(|e| Status::from(Failure::operation("handing over the snapshot", e)))?;
        Ok(tonic::Response::new(PeerAck {}))
    }

    async fn cluster(
        &self,
        _request: tonic::Request<ClusterRequest>,
    ) -> Result<tonic::Response<ClusterResponse>, Status> {
        let members = self.member.members().map_err(ServerError::from)?;
        Ok(tonic::Response::new(ClusterResponse {
            cluster_id: self.member.cluster_id,
            members,
        }))
    }

    async fn lease_renew(
        &self,
        request: tonic::Request<LeaseRenewRequest>,
    ) -> Result<tonic::Response<LeaseRenewResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        self.check_leader()?;
        // TTL 0: the lease is unknown (the follower answers its client so, as etcd does).
        let ttl = self.member.renew_lease(request.id).await?;
        Ok(tonic::Response::new(LeaseRenewResponse { ttl }))
    }

    async fn lease_time_to_live(
        &self,
        request: tonic::Request<LeaseTimeToLiveForward>,
    ) -> Result<tonic::Response<LeaseTimeToLiveResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        self.check_leader()?;
        let request: LeaseTimeToLiveRequest = request.request.unwrap_or_default();
        let info = self.member.lease_time_to_live(request.id).await?;
        Ok(tonic::Response::new(crate::lease::time_to_live(
            &self.member,
            &request,
            info,
        )))
    }

    async fn change_member(
        &self,
        request: tonic::Request<MemberChangeForward>,
    ) -> Result<tonic::Response<MemberChangeForwarded>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        self.check_leader()?;
        let kind = match request.kind() {
            member_change_forward::Kind::AddVoter => MemberChangeKind::AddVoter,
            member_change_forward::Kind::AddLearner => MemberChangeKind::AddLearner,
            member_change_forward::Kind::Promote => MemberChangeKind::Promote,
            member_change_forward::Kind::Remove => MemberChangeKind::Remove,
        };
        let record = request.member.unwrap_or_default();
        let changed = crate::membership::change(&self.member, kind, record).await?;
        Ok(tonic::Response::new(MemberChangeForwarded {
            member: Some(changed),
        }))
    }

    async fn hash_kv(
        &self,
        request: tonic::Request<PeerHashKvRequest>,
    ) -> Result<tonic::Response<HashKvResponse>, Status> {
        let request = request.into_inner();
        self.check_cluster(request.cluster_id)?;
        // Answer once this member has applied the revision (a follower may be a little behind).
        let wanted = request.revision;
        if self.member.machine.store.current_revision() < wanted {
            self.member
                .wait_for(Duration::from_secs(2), |p| p.revision >= wanted)
                .await;
        }
        let (hash, compact_revision, hash_revision) = self.member.hash_kv(wanted).await?;
        Ok(tonic::Response::new(HashKvResponse {
            header: Some(
                self.member
                    .header(self.member.machine.store.current_revision()),
            ),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    async fn status(
        &self,
        request: tonic::Request<PeerStatusRequest>,
    ) -> Result<tonic::Response<PeerStatus>, Status> {
        self.check_cluster(request.into_inner().cluster_id)?;
        Ok(tonic::Response::new(PeerStatus {
            status: Some(crate::maintenance::status(&self.member)),
            leader_changes: crate::metrics::metrics().leader_changes.get(),
        }))
    }
}
