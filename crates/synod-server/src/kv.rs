//! etcd's KV service. Each handler checks the request, proposes it or reads, maps the error and
//! fills the header (etcd `v3rpc/key.go`).

use std::sync::Arc;

use prost::Message;
use synod_api::etcdserverpb::kv_server::Kv;
use synod_api::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use synod_api::synodpb::internal_request::Request;
use synod_core::apply::{Response, execute_range, txn_puts};
use synod_core::auth::Access;
use tonic::Status;

use crate::caller;
use crate::error::ServerError;
use crate::member::{Member, unexpected};
use crate::validate;

pub struct KvService {
    member: Arc<Member>,
}

impl KvService {
    pub fn new(member: Arc<Member>) -> KvService {
        KvService { member }
    }
}

/// Whether a range may read many keys: a range (not one key) without a small limit.
fn may_be_large(request: &RangeRequest) -> bool {
    !request.range_end.is_empty() && !(1..=256).contains(&request.limit)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(
        &self,
        request: tonic::Request<RangeRequest>,
    ) -> Result<tonic::Response<RangeResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        validate::check_range(&request).map_err(ServerError::from)?;
        self.member
            .machine
            .auth
            .check_keys(&caller, Access::Read, &request.key, &request.range_end)
            .map_err(ServerError::from)?;
        if !request.serializable {
            self.member.read_barrier().await?;
        }
        let mut response = if may_be_large(&request) {
            // A scan of many keys runs on a blocking thread, so it cannot stall the requests of
            // other clients sharing the runtime's workers.
            let store = self.member.machine.store.clone();
            tokio::task::spawn_blocking(move || execute_range(&*store, &request))
                .await
                .map_err(|_| ServerError::Internal)?
        } else {
            execute_range(&*self.member.machine.store, &request)
        }
        .map_err(ServerError::from)?;
        self.member.fill(&mut response.header);
        Ok(tonic::Response::new(response))
    }

    async fn put(
        &self,
        request: tonic::Request<PutRequest>,
    ) -> Result<tonic::Response<PutResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        validate::check_put(&request).map_err(ServerError::from)?;
        self.member.check_quota(request.encoded_len()).await?;
        match self
            .member
            .propose_for(&caller, Request::Put(request))
            .await?
        {
            Response::Put(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn delete_range(
        &self,
        request: tonic::Request<DeleteRangeRequest>,
    ) -> Result<tonic::Response<DeleteRangeResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        validate::check_delete(&request).map_err(ServerError::from)?;
        match self
            .member
            .propose_for(&caller, Request::DeleteRange(request))
            .await?
        {
            Response::DeleteRange(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn txn(
        &self,
        request: tonic::Request<TxnRequest>,
    ) -> Result<tonic::Response<TxnResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        validate::check_txn(&request, self.member.config.txn_ops_max).map_err(ServerError::from)?;
        if txn_puts(&request) {
            self.member.check_quota(request.encoded_len()).await?;
        }
        match self
            .member
            .propose_for(&caller, Request::Txn(request))
            .await?
        {
            Response::Txn(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }

    async fn compact(
        &self,
        request: tonic::Request<CompactionRequest>,
    ) -> Result<tonic::Response<CompactionResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::of(&self.member, &request).await?;
        let request = request.into_inner();
        match self
            .member
            .propose_for(&caller, Request::Compaction(request))
            .await?
        {
            Response::Compaction(mut response) => {
                self.member.fill(&mut response.header);
                Ok(tonic::Response::new(response))
            }
            other => Err(unexpected(&other).into()),
        }
    }
}
