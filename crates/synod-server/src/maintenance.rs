//! etcd's Maintenance and Cluster services for a member (etcd `v3rpc/maintenance.go`,
//! `v3rpc/member.go`).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::Stream;
use sha2::Digest;
use synod_api::errors;
use synod_api::etcdserverpb::cluster_server::Cluster;
use synod_api::etcdserverpb::maintenance_server::Maintenance;
use synod_api::etcdserverpb::{
    AlarmRequest, AlarmResponse, AlarmType, DefragmentRequest, DefragmentResponse,
    DowngradeRequest, DowngradeResponse, HashKvRequest, HashKvResponse, HashRequest, HashResponse,
    Member as WireMember, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest,
    MemberRemoveResponse, MemberUpdateRequest, MemberUpdateResponse, MoveLeaderRequest,
    MoveLeaderResponse, SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
};
use synod_api::synodpb::internal_request::Request;
use synod_core::apply::Response;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ServerError;
use crate::member::{ETCD_API_VERSION, Member, unexpected};

/// Bytes per snapshot message (etcd sends 32 KiB chunks).
const SNAPSHOT_CHUNK_BYTES: usize = 32 * 1024;
/// Snapshot messages buffered ahead of a slow reader.
const SNAPSHOT_QUEUE_MAX: usize = 16;

pub struct MaintenanceService {
    member: Arc<Member>,
}

impl MaintenanceService {
    pub fn new(member: Arc<Member>) -> MaintenanceService {
        MaintenanceService { member }
    }
}

/// The alarm list as etcd prints it in `Status.errors`.
fn alarm_errors(member: &Member) -> Vec<String> {
    member
        .alarms
        .list()
        .into_iter()
        .map(|(id, alarm)| {
            let name = AlarmType::try_from(alarm)
                .map(|a| a.as_str_name())
                .unwrap_or("UNKNOWN");
            format!("memberID:{id} alarm:{name} ")
        })
        .collect()
}

/// Builds the `Status` answer of this member; shared with the HTTP gateway and `/health`.
pub fn status(member: &Member) -> StatusResponse {
    let size = member.backend.size_bytes() as i64;
    StatusResponse {
        header: Some(member.header(member.store.current_revision())),
        version: ETCD_API_VERSION.to_owned(),
        db_size: size,
        leader: member.status.leader_id.load(Ordering::Relaxed),
        raft_index: member.status.commit_index.load(Ordering::Relaxed),
        raft_term: member.status.term.load(Ordering::Relaxed),
        raft_applied_index: member.status.applied_index.load(Ordering::Relaxed),
        errors: alarm_errors(member),
        db_size_in_use: size,
        is_learner: false,
        storage_version: ETCD_API_VERSION.to_owned(),
        db_size_quota: member.config.quota_backend_bytes as i64,
        downgrade_info: None,
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn alarm(
        &self,
        request: tonic::Request<AlarmRequest>,
    ) -> Result<tonic::Response<AlarmResponse>, Status> {
        match self
            .member
            .propose(Request::Alarm(request.into_inner()))
            .await?
        {
            Response::Alarm(mut response) => {
                response.header = Some(self.member.header(self.member.store.current_revision()));
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn status(
        &self,
        _request: tonic::Request<StatusRequest>,
    ) -> Result<tonic::Response<StatusResponse>, Status> {
        Ok(tonic::Response::new(status(&self.member)))
    }

    async fn defragment(
        &self,
        _request: tonic::Request<DefragmentRequest>,
    ) -> Result<tonic::Response<DefragmentResponse>, Status> {
        self.member
            .defragment()
            .await
            .map_err(|message| Status::internal(format!("defragment failed: {message}")))?;
        Ok(tonic::Response::new(DefragmentResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
        }))
    }

    async fn hash(
        &self,
        _request: tonic::Request<HashRequest>,
    ) -> Result<tonic::Response<HashResponse>, Status> {
        let (hash, _, revision) = self.member.store.hash_kv(0).map_err(ServerError::from)?;
        Ok(tonic::Response::new(HashResponse {
            header: Some(self.member.header(revision)),
            hash,
        }))
    }

    async fn hash_kv(
        &self,
        request: tonic::Request<HashKvRequest>,
    ) -> Result<tonic::Response<HashKvResponse>, Status> {
        let request = request.into_inner();
        let (hash, compact_revision, hash_revision) = self
            .member
            .store
            .hash_kv(request.revision)
            .map_err(ServerError::from)?;
        Ok(tonic::Response::new(HashKvResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
            hash,
            compact_revision,
            hash_revision,
        }))
    }

    type SnapshotStream =
        Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send + 'static>>;

    async fn snapshot(
        &self,
        _request: tonic::Request<SnapshotRequest>,
    ) -> Result<tonic::Response<Self::SnapshotStream>, Status> {
        let path = self
            .member
            .snapshot_file()
            .await
            .map_err(|message| Status::internal(format!("snapshot failed: {message}")))?;
        let mut file = tokio::fs::File::open(&path)
            .await
            .map_err(|e| Status::internal(format!("snapshot failed: {e}")))?;
        let total = file
            .metadata()
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .len();
        let header = Some(self.member.header(self.member.store.current_revision()));
        let (output, receiver) = mpsc::channel(SNAPSHOT_QUEUE_MAX);
        tokio::spawn(async move {
            // The stream is the file followed by its SHA-256, as etcd sends it, so
            // `etcdctl snapshot restore` can verify it.
            let mut digest = sha2::Sha256::new();
            let mut sent = 0u64;
            let mut buffer = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            loop {
                let read = match file.read(&mut buffer).await {
                    Ok(0) => break,
                    Ok(read) => read,
                    Err(e) => {
                        let _ = output
                            .send(Err(Status::internal(format!("reading snapshot: {e}"))))
                            .await;
                        break;
                    }
                };
                digest.update(&buffer[..read]);
                sent += read as u64;
                let response = SnapshotResponse {
                    header,
                    remaining_bytes: total.saturating_sub(sent) + 32,
                    blob: buffer[..read].to_vec(),
                    version: ETCD_API_VERSION.to_owned(),
                };
                if output.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            if sent == total {
                let last = SnapshotResponse {
                    header,
                    remaining_bytes: 0,
                    blob: digest.finalize().to_vec(),
                    version: ETCD_API_VERSION.to_owned(),
                };
                let _ = output.send(Ok(last)).await;
            }
            if let Err(error) = tokio::fs::remove_file(&path).await {
                tracing::warn!(%error, path = %path.display(), "could not remove a snapshot copy");
            }
        });
        Ok(tonic::Response::new(Box::pin(ReceiverStream::new(
            receiver,
        ))))
    }

    async fn move_leader(
        &self,
        request: tonic::Request<MoveLeaderRequest>,
    ) -> Result<tonic::Response<MoveLeaderResponse>, Status> {
        let target = request.into_inner().target_id;
        if !self.member.status.is_leader.load(Ordering::Relaxed) {
            return Err(errors::NOT_LEADER.status());
        }
        if target != self.member.member_id {
            return Err(errors::BAD_LEADER_TRANSFEREE.status());
        }
        // The only voter is already the leader.
        Ok(tonic::Response::new(MoveLeaderResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
        }))
    }

    async fn downgrade(
        &self,
        _request: tonic::Request<DowngradeRequest>,
    ) -> Result<tonic::Response<DowngradeResponse>, Status> {
        Err(Status::unimplemented(
            "synod: cluster downgrade is not supported",
        ))
    }
}

pub struct ClusterService {
    member: Arc<Member>,
}

impl ClusterService {
    pub fn new(member: Arc<Member>) -> ClusterService {
        ClusterService { member }
    }
}

/// Every member as etcd's `Member` message.
pub fn member_list(member: &Member) -> Result<Vec<WireMember>, ServerError> {
    Ok(member
        .members()?
        .into_iter()
        .map(|record| WireMember {
            id: record.id,
            name: record.name,
            peer_ur_ls: record.peer_urls,
            client_ur_ls: record.client_urls,
            is_learner: record.is_learner,
        })
        .collect())
}

const NO_PEER_TRANSPORT: &str =
    "synod: membership changes need the peer transport, which this build does not have yet";

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_add(
        &self,
        _request: tonic::Request<MemberAddRequest>,
    ) -> Result<tonic::Response<MemberAddResponse>, Status> {
        Err(Status::unimplemented(NO_PEER_TRANSPORT))
    }

    async fn member_remove(
        &self,
        _request: tonic::Request<MemberRemoveRequest>,
    ) -> Result<tonic::Response<MemberRemoveResponse>, Status> {
        Err(Status::unimplemented(NO_PEER_TRANSPORT))
    }

    async fn member_update(
        &self,
        _request: tonic::Request<MemberUpdateRequest>,
    ) -> Result<tonic::Response<MemberUpdateResponse>, Status> {
        Err(Status::unimplemented(NO_PEER_TRANSPORT))
    }

    async fn member_list(
        &self,
        request: tonic::Request<MemberListRequest>,
    ) -> Result<tonic::Response<MemberListResponse>, Status> {
        if request.into_inner().linearizable {
            self.member.read_barrier().await?;
        }
        let members = member_list(&self.member)?;
        Ok(tonic::Response::new(MemberListResponse {
            header: Some(self.member.header(self.member.store.current_revision())),
            members,
        }))
    }

    async fn member_promote(
        &self,
        _request: tonic::Request<MemberPromoteRequest>,
    ) -> Result<tonic::Response<MemberPromoteResponse>, Status> {
        Err(Status::unimplemented(NO_PEER_TRANSPORT))
    }
}
