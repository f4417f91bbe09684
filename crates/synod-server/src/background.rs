//! Periodic work of a member outside the node loop: catching up unsynced watchers, progress
//! notifications, and auto-compaction.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use synod_api::etcdserverpb::{AlarmType, CompactionRequest};
use synod_api::synodpb::MemberRecord;
use synod_api::synodpb::internal_request::Request;

use crate::config::AutoCompaction;
use crate::error::ServerError;
use crate::member::Member;

/// Publishes this member's name and client URLs to the cluster through Raft, so every member
/// can list them (etcd's `publish`); retried until it lands.
async fn publish(member: Arc<Member>) {
    let mut attributes = MemberRecord {
        id: member.member_id,
        name: member.config.name.clone(),
        client_urls: member.config.advertise_client_urls.clone(),
        ..MemberRecord::default()
    };
    // Restarted from its data directory without --name, a member keeps the name it has.
    if !member.config.name_given
        && let Some(recorded) = member
            .members()
            .ok()
            .and_then(|all| all.into_iter().find(|m| m.id == member.member_id))
        && !recorded.name.is_empty()
    {
        attributes.name = recorded.name;
    }
    while !member.is_stopped() {
        let published = member.members().ok().and_then(|all| {
            all.into_iter()
                .find(|m| m.id == member.member_id)
                .map(|m| m.name == attributes.name && m.client_urls == attributes.client_urls)
        });
        if published == Some(true) {
            return;
        }
        if published.is_some() {
            match member
                .propose(Request::MemberAttributes(attributes.clone()))
                .await
            {
                Ok(_) => {
                    tracing::info!(client_urls = ?attributes.client_urls, "published this member's attributes to the cluster");
                    return;
                }
                Err(error) => tracing::debug!(%error, "publishing member attributes; will retry"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How often free disk space is checked.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Raises the NOSPACE alarm for the cluster when the data directory's disk runs low, so writes
/// stop everywhere (with etcd's "database space exceeded") before this member's log or
/// state-machine write can fail, which would stop the member (see `member::fail_stop`).
async fn watch_disk_space(member: Arc<Member>) {
    let reserve = member.config.disk_space_reserve_bytes;
    let mut interval = tokio::time::interval(DISK_CHECK_INTERVAL);
    while !member.is_stopped() {
        interval.tick().await;
        let Ok(free) = fs2::available_space(&member.config.data_dir) else {
            continue;
        };
        let raised = member
            .machine
            .alarms
            .list()
            .contains(&(member.member_id, AlarmType::Nospace as i32));
        if free >= reserve || raised {
            continue;
        }
        tracing::warn!(
            free_bytes = free,
            reserve_bytes = reserve,
            data_dir = %member.config.data_dir.display(),
            "the data directory's disk is nearly full; raising the NOSPACE alarm"
        );
        let alarm = synod_api::etcdserverpb::AlarmRequest {
            action: synod_api::etcdserverpb::alarm_request::AlarmAction::Activate as i32,
            member_id: member.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(error) = member.propose(Request::Alarm(alarm)).await {
            tracing::warn!(%error, "could not raise the NOSPACE alarm; will retry");
        }
    }
}

/// How often unsynced watchers are caught up (etcd: 100 ms).
const WATCH_SYNC_INTERVAL: Duration = Duration::from_millis(100);

/// Spawns the member's periodic tasks on the current runtime.
/// Drops expired simple tokens once a second (etcd's sweep), so tokens nobody uses again do not
/// pile up in memory.
async fn sweep_tokens(member: Arc<Member>) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    while !member.is_stopped() {
        interval.tick().await;
        member
            .machine
            .auth
            .sweep_tokens(member.clock_ms(), member.config.auth_token_ttl_ms);
    }
}

pub fn spawn(member: Arc<Member>) {
    tokio::spawn(publish(member.clone()));
    tokio::spawn(sweep_tokens(member.clone()));
    if member.config.disk_space_reserve_bytes > 0 {
        tokio::spawn(watch_disk_space(member.clone()));
    }
    let watch_member = member.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(WATCH_SYNC_INTERVAL);
        while !watch_member.is_stopped() {
            interval.tick().await;
            // Catch-up reads history from the key table: on a blocking thread, so a large
            // backlog does not stall other clients' requests.
            let member = watch_member.clone();
            let synced = tokio::task::spawn_blocking(move || {
                member.machine.hub.sync_unsynced(&member.machine.store)
            })
            .await;
            if let Ok(Err(error)) = synced {
                tracing::error!(%error, "catching up watchers failed");
            }
        }
    });
    let progress_member = member.clone();
    tokio::spawn(async move {
        let mut interval =
            tokio::time::interval(progress_member.config.watch_progress_notify_interval);
        interval.tick().await;
        while !progress_member.is_stopped() {
            interval.tick().await;
            progress_member.machine.hub.notify_progress();
        }
    });
    if member.config.auto_compaction != AutoCompaction::Off {
        tokio::spawn(auto_compact(member));
    }
}

/// etcd's compactors. Periodic: samples the revision every tenth of the retention and compacts
/// to the revision seen one retention ago. Revision: keeps the last N revisions.
async fn auto_compact(member: Arc<Member>) {
    let (check, retention) = match member.config.auto_compaction {
        AutoCompaction::Periodic(retention) => (
            (retention / 10).max(Duration::from_secs(1)),
            Some(retention),
        ),
        AutoCompaction::Revision(_) => (Duration::from_secs(1), None),
        AutoCompaction::Off => return,
    };
    let mut samples: VecDeque<(Instant, i64)> = VecDeque::new();
    let mut interval = tokio::time::interval(check);
    let mut last_compacted = member.machine.store.compact_revision();
    while !member.is_stopped() {
        interval.tick().await;
        let now = Instant::now();
        let current = member.machine.store.current_revision();
        let target = match (member.config.auto_compaction, retention) {
            (AutoCompaction::Revision(keep), _) => current - keep,
            (_, Some(retention)) => {
                samples.push_back((now, current));
                let mut target = 0;
                while let Some(&(at, revision)) = samples.front() {
                    if now.duration_since(at) < retention {
                        break;
                    }
                    target = revision;
                    samples.pop_front();
                }
                target
            }
            _ => 0,
        };
        if target <= last_compacted || target <= member.machine.store.compact_revision() {
            continue;
        }
        if !member.is_leader() {
            // Only the leader compacts (as etcd's compactor): every member proposing the same
            // compaction would only fill the log with duplicates.
            continue;
        }
        match member
            .propose(Request::Compaction(CompactionRequest {
                revision: target,
                physical: false,
            }))
            .await
        {
            Ok(_) => {
                tracing::info!(revision = target, "auto-compacted");
                last_compacted = target;
            }
            Err(ServerError::Request(synod_core::RequestError::Compacted)) => {
                last_compacted = target
            }
            Err(error) => {
                tracing::warn!(%error, revision = target, "auto-compaction failed; will retry")
            }
        }
    }
}
