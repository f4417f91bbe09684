//! `synod migrate --from ETCD`: copies a live etcd cluster (or any etcd-API store) into a Synod
//! cluster at the source's revisions, then follows its changes until the operator cuts over.
//!
//! Into an empty target it copies the leases, then every key as read at one revision R, in
//! chunks (`ImportBase`); the target moves to R with the history below R compacted. Into a
//! target already at a revision (restored from a snapshot of the source, or a migration that
//! was stopped) it starts after that revision. Then it watches the source from the next
//! revision and applies each revision's changes at exactly that revision (`ImportRevision`), so
//! every key keeps its create and mod revisions and version: watches and compare-and-swaps on
//! revisions (Kubernetes' resource versions) carry over. Leases are granted with the source's
//! ids and kept alive here while the source has them.
//!
//! Clients must not write to the target before the cut-over: their writes would take the
//! revisions the source's next changes need, and the migration stops with an error.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;
use synod_api::synodpb::{ImportBase, ImportRevision};
use synod_client::etcdserverpb::{
    DeleteRangeRequest, LeaseGrantRequest, LeaseKeepAliveRequest, LeaseLeasesRequest,
    LeaseRevokeRequest, LeaseTimeToLiveRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
    WatchCreateRequest, WatchRequest, request_op, watch_request::RequestUnion,
};
use synod_client::mvccpb::event::EventType;
use synod_client::mvccpb::{Event, KeyValue};
use synod_client::{Client, ClientError};

use super::bad;
use crate::Global;

/// Keys per `ImportBase` chunk (and per page read from the source).
const BASE_PAGE_KEYS: i64 = 500;
/// How often leases are renewed here and compared with the source's.
const LEASE_SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// How often progress is reported.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The source cluster's endpoints, comma-separated (the target is --endpoints).
    #[arg(long, value_delimiter = ',', required = true)]
    from: Vec<String>,
    /// CA bundle for the source's certificates.
    #[arg(long)]
    from_cacert: Option<PathBuf>,
    /// Client certificate to present to the source.
    #[arg(long)]
    from_cert: Option<PathBuf>,
    /// Key of --from-cert.
    #[arg(long)]
    from_key: Option<PathBuf>,
    /// `name:password` to authenticate to the source as (root, to read every key and lease).
    #[arg(long)]
    from_user: Option<String>,
}

fn source_dial(global: &Global, args: &MigrateArgs) -> Result<synod_client::Dial, ClientError> {
    let tls = crate::client_tls(
        args.from_cacert.is_some() || args.from_cert.is_some(),
        synod_tls::ClientFiles {
            ca: args.from_cacert.clone(),
            cert: args.from_cert.clone(),
            key: args.from_key.clone(),
            skip_verify: false,
        },
    )?;
    let user = match &args.from_user {
        None => None,
        Some(user) => match user.split_once(':') {
            Some((name, password)) => Some((name.to_owned(), password.to_owned())),
            None => return Err(bad(format!("--from-user {user:?}: expected name:password"))),
        },
    };
    Ok(synod_client::Dial {
        timeout: global.dial_timeout,
        tls,
        user,
    })
}

/// Every key: etcd's `[\0, \0)`.
fn everything() -> (Vec<u8>, Vec<u8>) {
    (vec![0], vec![0])
}

pub async fn migrate(global: &Global, args: MigrateArgs) -> Result<(), ClientError> {
    let source = Client::connect_any(&args.from, source_dial(global, &args)?).await?;
    let target = Client::connect_any(&global.endpoints, global.dial()?).await?;
    let mut leases = Leases::default();
    let (key, range_end) = everything();
    let target_state = target
        .kv()
        .range(RangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            count_only: true,
            ..RangeRequest::default()
        })
        .await?
        .into_inner();
    let target_revision = target_state.header.map(|h| h.revision).unwrap_or(0);
    let start = if target_revision <= 1 && target_state.count == 0 {
        copy_base(&source, &target, &mut leases).await?
    } else {
        eprintln!(
            "synod migrate: the target is at revision {target_revision}; following the source from revision {}",
            target_revision + 1
        );
        leases.adopt(&source, &target).await?;
        target_revision
    };
    follow(&source, &target, &mut leases, start).await
}

/// Copies leases and keys at one revision into the empty target; returns that revision.
async fn copy_base(
    source: &Client,
    target: &Client,
    leases: &mut Leases,
) -> Result<i64, ClientError> {
    let (key, range_end) = everything();
    // The revision to copy at: read first, so every key read at it exists then.
    let revision = source
        .kv()
        .range(RangeRequest {
            key: key.clone(),
            range_end: range_end.clone(),
            limit: 1,
            keys_only: true,
            ..RangeRequest::default()
        })
        .await?
        .into_inner()
        .header
        .map(|h| h.revision)
        .unwrap_or(0);
    leases.adopt(source, target).await?;
    let mut next = key;
    let mut copied = 0i64;
    loop {
        let page = source
            .kv()
            .range(RangeRequest {
                key: next.clone(),
                range_end: range_end.clone(),
                revision,
                limit: BASE_PAGE_KEYS,
                ..RangeRequest::default()
            })
            .await
            .map_err(|status| {
                bad(format!(
                    "reading the source at revision {revision}: {} (if it was compacted meanwhile, start again)",
                    status.message()
                ))
            })?
            .into_inner();
        for kv in &page.kvs {
            leases.ensure(source, target, kv.lease).await?;
        }
        let last = !page.more;
        if let Some(kv) = page.kvs.last() {
            next = kv.key.clone();
            next.push(0);
        }
        let count = page.kvs.len() as i64;
        target
            .migrate()
            .import_base(ImportBase {
                revision,
                kvs: page.kvs,
                first: copied,
                last,
            })
            .await?;
        copied += count;
        if last {
            break;
        }
    }
    eprintln!(
        "synod migrate: copied {copied} keys and {} leases at revision {revision}",
        leases.known.len()
    );
    Ok(revision)
}

/// Applies the source's revisions after `start`, one by one, until interrupted.
async fn follow(
    source: &Client,
    target: &Client,
    leases: &mut Leases,
    start: i64,
) -> Result<(), ClientError> {
    let (key, range_end) = everything();
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                key,
                range_end,
                start_revision: start + 1,
                progress_notify: true,
                ..WatchCreateRequest::default()
            })),
        })
        .await
        .map_err(|_| bad("watch stream closed"))?;
    let mut responses = source
        .watch()
        .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let mut applied = start;
    let mut source_revision = start;
    let mut reported = Instant::now();
    let mut synced_leases = Instant::now();
    let mut caught_up_reported = false;
    loop {
        let response = tokio::select! {
            response = responses.next() => response,
            () = tokio::time::sleep(LEASE_SYNC_INTERVAL) => {
                leases.sync(source, target).await?;
                synced_leases = Instant::now();
                continue;
            }
        };
        let Some(response) = response else {
            return Err(bad("the source closed the watch"));
        };
        let response = response?;
        if response.canceled {
            return Err(bad(format!(
                "the source canceled the watch (compacted to {}): {}; restore from a fresh snapshot",
                response.compact_revision, response.cancel_reason
            )));
        }
        if let Some(header) = &response.header {
            source_revision = source_revision.max(header.revision);
        }
        for (revision, events) in by_revision(response.events) {
            let mut ops = Vec::with_capacity(events.len());
            for event in events {
                let kv = event.kv.unwrap_or_default();
                if event.r#type == EventType::Delete as i32 {
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestDeleteRange(
                            DeleteRangeRequest {
                                key: kv.key,
                                ..DeleteRangeRequest::default()
                            },
                        )),
                    });
                } else {
                    leases.ensure(source, target, kv.lease).await?;
                    ops.push(RequestOp {
                        request: Some(request_op::Request::RequestPut(PutRequest {
                            key: kv.key,
                            value: kv.value,
                            lease: kv.lease,
                            ..PutRequest::default()
                        })),
                    });
                }
            }
            target
                .migrate()
                .import_revision(ImportRevision {
                    revision,
                    changes: Some(TxnRequest {
                        success: ops,
                        ..TxnRequest::default()
                    }),
                })
                .await
                .map_err(|status| {
                    bad(format!(
                        "applying the source's revision {revision}: {} (did a client write to the target?)",
                        status.message()
                    ))
                })?;
            applied = revision;
            source_revision = source_revision.max(revision);
        }
        if synced_leases.elapsed() >= LEASE_SYNC_INTERVAL {
            leases.sync(source, target).await?;
            synced_leases = Instant::now();
        }
        let caught_up = applied >= source_revision;
        if caught_up && !caught_up_reported {
            eprintln!("synod migrate: caught up at revision {applied}");
        }
        caught_up_reported = caught_up;
        if reported.elapsed() >= REPORT_INTERVAL {
            eprintln!(
                "synod migrate: at revision {applied}, source at {source_revision} ({} behind)",
                source_revision - applied
            );
            reported = Instant::now();
        }
    }
}

/// A watch response's events, grouped by revision in order.
fn by_revision(events: Vec<Event>) -> Vec<(i64, Vec<Event>)> {
    let mut groups: Vec<(i64, Vec<Event>)> = Vec::new();
    for event in events {
        let revision = event.kv.as_ref().map_or(0, |kv: &KeyValue| kv.mod_revision);
        match groups.last_mut() {
            Some((last, group)) if *last == revision => group.push(event),
            _ => groups.push((revision, vec![event])),
        }
    }
    groups
}

/// The ids of the leases the source has now.
async fn source_leases(source: &Client) -> Result<BTreeSet<i64>, ClientError> {
    let leases = source
        .lease()
        .lease_leases(LeaseLeasesRequest {})
        .await?
        .into_inner()
        .leases;
    Ok(leases.iter().map(|lease| lease.id).collect())
}

/// The source's leases as granted here, kept alive while the source has them.
#[derive(Default)]
struct Leases {
    known: BTreeSet<i64>,
}

impl Leases {
    /// Grants here every lease the source has now.
    async fn adopt(&mut self, source: &Client, target: &Client) -> Result<(), ClientError> {
        for id in source_leases(source).await? {
            self.ensure(source, target, id).await?;
        }
        Ok(())
    }

    /// Makes sure lease `id` (0: none) exists here, with the source's granted TTL.
    async fn ensure(
        &mut self,
        source: &Client,
        target: &Client,
        id: i64,
    ) -> Result<(), ClientError> {
        if id == 0 || self.known.contains(&id) {
            return Ok(());
        }
        let granted = source
            .lease()
            .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: false })
            .await?
            .into_inner()
            .granted_ttl;
        // A lease the source has already let go: its keys' deletions follow in the history;
        // until then it lives here with the longest TTL the source could have given it.
        let ttl = if granted > 0 { granted } else { 60 };
        let granted = target
            .lease()
            .lease_grant(LeaseGrantRequest { id, ttl })
            .await;
        match granted {
            Ok(_) => {}
            Err(status) if status.message().contains("lease already exists") => {}
            Err(status) => return Err(status.into()),
        }
        self.known.insert(id);
        Ok(())
    }

    /// Renews every known lease here, and revokes here those the source no longer has once
    /// their keys are gone (their deletions came through the history first, so the revoke
    /// deletes nothing and takes no revision).
    async fn sync(&mut self, source: &Client, target: &Client) -> Result<(), ClientError> {
        if self.known.is_empty() {
            return Ok(());
        }
        let alive = source_leases(source).await?;
        let (sender, receiver) = tokio::sync::mpsc::channel(self.known.len().max(1));
        for id in &self.known {
            let _ = sender.try_send(LeaseKeepAliveRequest { id: *id });
        }
        drop(sender);
        let mut renewals = target
            .lease()
            .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
            .await?
            .into_inner();
        for _ in 0..self.known.len() {
            if renewals.next().await.is_none() {
                break;
            }
        }
        let gone: Vec<i64> = self.known.difference(&alive).copied().collect();
        for id in gone {
            let keys = target
                .lease()
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys: true })
                .await?
                .into_inner()
                .keys;
            if !keys.is_empty() {
                continue;
            }
            let _ = target.lease().lease_revoke(LeaseRevokeRequest { id }).await;
            self.known.remove(&id);
        }
        Ok(())
    }
}
