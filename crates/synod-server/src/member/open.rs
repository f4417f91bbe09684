//! Opening a member: bootstrap of a new cluster, join of an existing one, or a restart from the
//! data directory; then the [`Driver`] over the node, the [`Member`] handlers talk to, and the
//! [`NodeLoop`] that runs the driver.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use raft::eraftpb::ConfState;
use sha1::Digest;
use synod_api::synodpb::MemberRecord;
use synod_core::StorageError;
use synod_core::apply::StateMachine;
use synod_core::backend::Backend;
use synod_core::driver::{Driver, DriverConfig};
use synod_core::node::{Node, NodeConfig};
use synod_core::raft_log::RaftLog;

use super::node_loop::NodeLoop;
use super::{APPLY_LAG_MAX, COMMAND_QUEUE_MAX, Member};
use crate::config::Config;
use crate::metrics::disk::{TimedFs, TimedStorage};
use crate::transport::Transport;

/// etcd's member id: SHA-1 of the sorted peer URLs and the cluster token, first 8 bytes.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut hasher = sha1::Sha1::new();
    hasher.update(urls.concat().as_bytes());
    hasher.update(token.as_bytes());
    first_u64(&hasher.finalize())
}

/// etcd's cluster id: SHA-1 of the sorted member ids, big-endian, first 8 bytes.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let mut hasher = sha1::Sha1::new();
    for id in ids {
        hasher.update(id.to_be_bytes());
    }
    first_u64(&hasher.finalize())
}

fn first_u64(digest: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A member that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{0}")]
    Config(String),
}

impl Member {
    /// Opens (or bootstraps) the member in `config.data_dir`. Returns the member and its node
    /// loop, which the caller runs on a thread of its own with [`NodeLoop::run`].
    /// Opens the member in `config.data_dir`; `peer_tls` dials `https://` peers.
    pub async fn open(
        config: Config,
        peer_tls: Option<Arc<synod_tls::ClientTls>>,
    ) -> Result<(Arc<Member>, NodeLoop), StartError> {
        let member_dir = config.data_dir.join("member");
        std::fs::create_dir_all(member_dir.join("snap"))
            .map_err(|e| StartError::Config(format!("creating {}: {e}", member_dir.display())))?;
        restrict_to_owner(&config.data_dir)?;
        let audit = match &config.audit_log {
            Some(path) => crate::audit_log::AuditLog::open(path, config.audit_log_bytes_max)
                .map_err(|e| {
                    StartError::Config(format!("opening the audit log {}: {e}", path.display()))
                })?,
            None => crate::audit_log::AuditLog::default(),
        };
        let jwt = match &config.jwt {
            Some(options) => {
                Some(Arc::new(crate::jwt::Jwt::new(options).map_err(|e| {
                    StartError::Config(format!("--auth-token: {e}"))
                })?))
            }
            None => None,
        };
        // The disk, with its syncs timed for the metrics (a snapshot installed in the file's
        // place too).
        let db_path = member_dir.join("db");
        let backend = Arc::new(Backend::open_on(
            Arc::new(|path: &Path| {
                TimedStorage::open(path)
                    .map(|storage| Box::new(storage) as Box<dyn redb::StorageBackend>)
            }),
            &db_path,
            synod_core::backend::CACHE_BYTES,
            Arc::new(synod_core::disk::RealDisk),
        )?);
        let log = RaftLog::open_with(&member_dir.join("raft"), Arc::new(TimedFs::default()))?;
        let (member_id, cluster_id) = match backend.identity()? {
            (0, _) if !log.is_new() => {
                return Err(StorageError::corrupt(
                    "the raft log exists but the state-machine file has no member or cluster id (was member/db replaced?)",
                )
                .into());
            }
            (0, _) if config.initial_cluster_new => bootstrap(&config, &backend)?,
            (0, _) => join(&config, &backend, peer_tls.as_ref()).await?,
            identity => identity,
        };
        remove_stale_snapshots(&member_dir.join("snap"));
        let mut machine = StateMachine::open(
            backend.clone(),
            config.heartbeat_ms,
            config.lease_ttl_min_seconds(),
            1_000,
        )?;
        machine.set_observer(Box::<crate::metrics::ApplyTimer>::default());
        let node_config = NodeConfig {
            id: member_id,
            election_ticks: config.election_ticks(),
            heartbeat_ticks: 1,
            snapshot_count: config.snapshot_count,
            catch_up_entries: config.snapshot_count.min(5_000),
            uncommitted_size_max: 64 << 20,
        };
        let node = Node::new(node_config, log, machine, &slog_logger())?;
        let conf = node.conf_state();
        let listed = conf.voters.contains(&member_id) || conf.learners.contains(&member_id);
        let joining = conf.voters.is_empty() && conf.learners.is_empty();
        if !listed && !joining {
            return Err(StartError::Config(format!(
                "member {member_id:x} has been removed from the cluster; it cannot serve again \
                 (add it anew with `member add` and an empty data directory)"
            )));
        }
        let request_timeout =
            Duration::from_secs(5) + Duration::from_millis(2 * config.election_ms);
        let driver_config = DriverConfig {
            apply_lag_max: APPLY_LAG_MAX,
            // The driver answers what its caller gave up on a little after the caller did.
            pending_ticks_max: 2 * request_timeout.as_millis() as u64 / config.heartbeat_ms.max(1),
        };
        let driver = Driver::new(node, driver_config)?;
        let machine = driver.node().machine();
        tracing::info!(
            name = %config.name,
            member_id = %format!("{member_id:x}"),
            cluster_id = %format!("{cluster_id:x}"),
            applied_index = machine.applied_index(),
            revision = machine.store().current_revision(),
            "member opened"
        );
        let (sender, receiver) = std::sync::mpsc::sync_channel(COMMAND_QUEUE_MAX);
        let transport = Transport::new(
            cluster_id,
            member_id,
            backend.clone(),
            sender.clone(),
            tokio::runtime::Handle::current(),
            peer_tls,
        );
        let (progress_sender, progress) = tokio::sync::watch::channel(super::Progress::default());
        let member = Arc::new(Member {
            status: driver.node().status().clone(),
            member_id,
            cluster_id,
            machine: super::Machine {
                store: machine.store().clone(),
                lessor: machine.lessor().clone(),
                hub: machine.hub().clone(),
                alarms: machine.alarms().clone(),
                auth: machine.auth().clone(),
                backend,
            },
            security: super::Security { audit, jwt },
            started: std::time::Instant::now(),
            commands: sender.clone(),
            ids: driver.ids().clone(),
            transport: transport.clone(),
            stopped: AtomicBool::new(false),
            request_timeout,
            config: config.clone(),
            progress,
        });
        let node_loop = NodeLoop::new(driver, receiver, transport, progress_sender, &config);
        Ok((member, node_loop))
    }
}

fn slog_logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        _values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        let message = record.msg().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", "{message}")
            }
            slog::Level::Warning => tracing::warn!(target: "raft", "{message}"),
            slog::Level::Info => tracing::info!(target: "raft", "{message}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{message}"),
        }
        Ok(())
    }
}

/// Bootstraps a member of a new cluster: every initial member's id comes from its peer URLs and
/// the cluster token, so all of them agree without talking. The state machine starts at index 1
/// (the initial configuration), as if installed from a snapshot; a member that joins later
/// therefore always catches up by snapshot, which carries the configuration.
pub(super) fn bootstrap(config: &Config, backend: &Backend) -> Result<(u64, u64), StartError> {
    let members: Vec<MemberRecord> = config
        .initial_cluster
        .iter()
        .map(|(name, urls)| MemberRecord {
            id: member_id(urls, &config.initial_cluster_token),
            name: name.clone(),
            peer_urls: urls.clone(),
            client_urls: Vec::new(),
            is_learner: false,
        })
        .collect();
    let Some(this) = members.iter().find(|m| m.name == config.name) else {
        return Err(StartError::Config(format!(
            "--initial-cluster has no member named {:?}",
            config.name
        )));
    };
    let this = this.clone();
    let mut own_urls = config.advertise_peer_urls.clone();
    let mut listed = this.peer_urls.clone();
    own_urls.sort();
    listed.sort();
    if own_urls != listed {
        return Err(StartError::Config(format!(
            "--initial-cluster lists {:?} for {:?} but --initial-advertise-peer-urls is {:?}",
            this.peer_urls, config.name, config.advertise_peer_urls
        )));
    }
    let mut ids: Vec<u64> = members.iter().map(|m| m.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|pair| pair[0] == pair[1]) {
        return Err(StartError::Config(
            "--initial-cluster lists the same peer URLs twice".to_owned(),
        ));
    }
    // Client URLs are published through Raft once the member serves (see `background`), so
    // every member learns every member's, not only its own.
    let cluster = cluster_id(&ids);
    let records = members.clone();
    let conf_state = ConfState {
        voters: ids,
        ..ConfState::default()
    };
    let conf_bytes = protobuf::Message::write_to_bytes(&conf_state)
        .map_err(|e| StartError::Config(format!("encoding the configuration: {e}")))?;
    // The raft log records the same point when the node opens (it finishes an install that the
    // log has not recorded), so a crash anywhere here is safe to repeat.
    backend.write_bootstrap(cluster, this.id, &records, Some(&conf_bytes))?;
    tracing::info!(member_id = %format!("{:x}", this.id), cluster_id = %format!("{cluster:x}"), members = members.len(), "bootstrapped a new cluster");
    Ok((this.id, cluster))
}

/// Joins an existing cluster (`--initial-cluster-state existing`): asks the other members listed
/// in `--initial-cluster` who the cluster is and finds this member (already added with
/// `member add`) by its peer URLs. The log starts empty; the leader sends a snapshot.
async fn join(
    config: &Config,
    backend: &Backend,
    peer_tls: Option<&Arc<synod_tls::ClientTls>>,
) -> Result<(u64, u64), StartError> {
    let mut own_urls = config.advertise_peer_urls.clone();
    own_urls.sort();
    let others: Vec<String> = config
        .initial_cluster
        .iter()
        .flat_map(|(_, urls)| urls.iter().cloned())
        .filter(|url| !own_urls.contains(url))
        .collect();
    let cluster = crate::transport::fetch_cluster(&others, peer_tls)
        .await
        .map_err(|error| {
            StartError::Config(format!(
                "--initial-cluster-state existing: cannot reach the cluster ({error})"
            ))
        })?;
    let Some(this) = cluster
        .members
        .iter()
        .find(|m| {
            let mut urls = m.peer_urls.clone();
            urls.sort();
            urls == own_urls
        })
        .cloned()
    else {
        return Err(StartError::Config(format!(
            "the cluster has no member with peer URLs {own_urls:?}: add it first (`synod member add {} --peer-urls ...`)",
            config.name
        )));
    };
    backend.write_bootstrap(cluster.cluster_id, this.id, &cluster.members, None)?;
    tracing::info!(member_id = %format!("{:x}", this.id), cluster_id = %format!("{:x}", cluster.cluster_id), "joining an existing cluster");
    Ok((this.id, cluster.cluster_id))
}

/// The data directory holds every key and value and the password hashes: readable by the
/// member's user only (etcd: 0700). A looser directory left by an earlier version or by hand is
/// tightened, with a note in the log; files created from here on are 0600 (see `run`'s umask).
fn restrict_to_owner(dir: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(dir)
        .map_err(|e| StartError::Config(format!("reading {}: {e}", dir.display())))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            StartError::Config(format!("restricting {} to its owner: {e}", dir.display()))
        })?;
        tracing::warn!(dir = %dir.display(), was = %format!("{mode:o}"), "the data directory was readable by others; it is now 0700");
    }
    Ok(())
}

/// Snapshot files left by an earlier run (sent or received) are never needed again.
fn remove_stale_snapshots(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let _ = std::fs::remove_file(entry.path());
    }
}
