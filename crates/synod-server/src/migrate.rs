//! The `synodpb.Migrate` service: `synod migrate` copies another etcd-API store into this
//! cluster through it, keeping the source's revisions. Root only when auth is on (checked here
//! and again when applied); the state machine refuses a base copy into a store that is not
//! empty and a revision that is not ahead of the store's.

use std::sync::Arc;

use synod_api::synodpb::internal_request::Request;
use synod_api::synodpb::migrate_server::Migrate;
use synod_api::synodpb::{ImportBase, ImportResponse, ImportRevision};
use synod_core::apply::Response;
use tonic::Status;

use crate::caller;
use crate::member::{Member, unexpected};

pub struct MigrateService {
    member: Arc<Member>,
}

impl MigrateService {
    pub fn new(member: Arc<Member>) -> MigrateService {
        MigrateService { member }
    }

    async fn import<T>(
        &self,
        request: tonic::Request<T>,
        wrap: impl FnOnce(T) -> Request,
    ) -> Result<tonic::Response<ImportResponse>, Status> {
        self.member.check_corrupt()?;
        let caller = caller::root(&self.member, &request).await?;
        let cost = self.member.config.request_bytes_max;
        self.member.check_quota(cost.min(1 << 20)).await?;
        match self
            .member
            .propose_for(&caller, wrap(request.into_inner()))
            .await?
        {
            Response::Imported { revision } => Ok(tonic::Response::new(ImportResponse {
                header: Some(self.member.header(revision)),
            })),
            other => Err(unexpected(&other).into()),
        }
    }
}

#[tonic::async_trait]
impl Migrate for MigrateService {
    async fn import_base(
        &self,
        request: tonic::Request<ImportBase>,
    ) -> Result<tonic::Response<ImportResponse>, Status> {
        self.import(request, Request::ImportBase).await
    }

    async fn import_revision(
        &self,
        request: tonic::Request<ImportRevision>,
    ) -> Result<tonic::Response<ImportResponse>, Status> {
        self.import(request, Request::ImportRevision).await
    }
}
