//! The client commands, with etcdctl's names, flags and output.

use std::io::Read;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use futures::StreamExt;
use synod_client::etcdserverpb::{
    AlarmRequest, AlarmType, CompactionRequest, DeleteRangeRequest, LeaseGrantRequest,
    LeaseKeepAliveRequest, LeaseLeasesRequest, LeaseRevokeRequest, LeaseTimeToLiveRequest,
    MemberListRequest, PutRequest, RangeRequest, StatusRequest, WatchCreateRequest, WatchRequest,
    alarm_request::AlarmAction,
    range_request::{SortOrder, SortTarget},
    response_op::Response as OpResponse,
    watch_request::RequestUnion,
};
use synod_client::mvccpb::event::EventType;
use synod_client::{Client, ClientError, prefix_range_end};

use crate::Global;
use crate::output::{self, Format};

mod auth;
mod cluster;
mod lease;
mod migrate;
mod snapshot;

use auth::{AuthCommand, RoleCommand, UserCommand};
use cluster::{endpoint, member, move_leader};
use lease::{keep_alive, lease};
use snapshot::SnapshotCommand;

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Put a key.
    Put(PutArgs),
    /// Get a key or a range of keys.
    Get(GetArgs),
    /// Delete a key or a range of keys.
    Del(DelArgs),
    /// Watch a key or a range for changes.
    Watch(WatchArgs),
    /// Run a transaction read from standard input (etcdctl's txn syntax).
    Txn,
    /// Compact the history below a revision.
    Compact(CompactArgs),
    /// Lease commands.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Endpoint commands.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Member commands.
    #[command(subcommand)]
    Member(MemberCommand),
    /// Snapshot commands.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Copy a live etcd cluster into this one at its revisions and follow its changes until
    /// interrupted (the target is --endpoints; see docs/MIGRATION.md).
    Migrate(migrate::MigrateArgs),
    /// Alarm commands.
    #[command(subcommand)]
    Alarm(AlarmCommand),
    /// Hold a lock, optionally while running a command (`synod lock NAME -- COMMAND...`).
    Lock(crate::recipes::LockArgs),
    /// Campaign in an election and hold leadership until interrupted, or observe it (--listen).
    Elect(crate::recipes::ElectArgs),
    /// Check a fencing token: exit 0 if it belongs to the lock's current holder, 1 if stale.
    Fence(crate::recipes::FenceArgs),
    /// Hand leadership to another member (asked of the current leader).
    MoveLeader {
        /// The hex id of the member to lead.
        #[arg(value_parser = parse_member_id)]
        target: u64,
    },
    /// Measure throughput and latency (etcd's benchmark, on etcd's wire: aim it at etcd too).
    Bench(crate::bench::BenchArgs),
    /// Run a local cluster of N members on loopback in the foreground (Ctrl-C stops it).
    #[command(subcommand)]
    Cluster(crate::local_cluster::ClusterCommand),
    /// User commands (authentication).
    #[command(subcommand)]
    User(UserCommand),
    /// Role commands (key permissions).
    #[command(subcommand)]
    Role(RoleCommand),
    /// Turn authentication on or off, or show it.
    #[command(subcommand)]
    Auth(AuthCommand),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    key: String,
    /// The value; read from standard input when absent.
    value: Option<String>,
    /// Attach the key to a lease (hex id).
    #[arg(long, value_parser = parse_lease_id)]
    lease: Option<i64>,
    /// Print the previous value.
    #[arg(long)]
    prev_kv: bool,
    /// Keep the current value.
    #[arg(long)]
    ignore_value: bool,
    /// Keep the current lease.
    #[arg(long)]
    ignore_lease: bool,
}

#[derive(Debug, Args)]
pub struct RangeArgs {
    key: String,
    range_end: Option<String>,
    /// Every key with KEY as a prefix.
    #[arg(long)]
    prefix: bool,
    /// Every key greater than or equal to KEY.
    #[arg(long)]
    from_key: bool,
}

impl RangeArgs {
    fn resolve(&self) -> (Vec<u8>, Vec<u8>) {
        let key = if self.key.is_empty() && (self.prefix || self.from_key) {
            vec![0]
        } else {
            self.key.as_bytes().to_vec()
        };
        let end = if let Some(end) = &self.range_end {
            end.as_bytes().to_vec()
        } else if self.prefix {
            prefix_range_end(self.key.as_bytes())
        } else if self.from_key {
            vec![0]
        } else {
            Vec::new()
        };
        (key, end)
    }
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Most keys to return.
    #[arg(long, default_value_t = 0)]
    limit: i64,
    /// Read at this revision.
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Sort target: CREATE, KEY, MODIFY, VALUE or VERSION.
    #[arg(long)]
    sort_by: Option<String>,
    /// Sort order: ASCEND or DESCEND.
    #[arg(long)]
    order: Option<String>,
    /// Return keys without values.
    #[arg(long)]
    keys_only: bool,
    /// Return only the count.
    #[arg(long)]
    count_only: bool,
    /// l (linearizable) or s (serializable).
    #[arg(long, default_value = "l")]
    consistency: String,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Print the deleted values.
    #[arg(long)]
    prev_kv: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    range: RangeArgs,
    /// Start from this revision (history replay).
    #[arg(long, default_value_t = 0)]
    rev: i64,
    /// Include the previous value in each event.
    #[arg(long)]
    prev_kv: bool,
    /// Exit after this many events (0: never).
    #[arg(long, default_value_t = 0)]
    max_events: u64,
}

#[derive(Debug, Args)]
pub struct CompactArgs {
    revision: i64,
    /// Wait until the history is removed from disk.
    #[arg(long)]
    physical: bool,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Create a lease with a TTL in seconds.
    Grant { ttl: i64 },
    /// Revoke a lease and delete its keys.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep a lease alive.
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// Show a lease's TTL.
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Also list the attached keys.
        #[arg(long)]
        keys: bool,
    },
    /// List every lease.
    List,
}

#[derive(Debug, Subcommand)]
pub enum EndpointCommand {
    /// Status of each endpoint.
    Status(ClusterFlag),
    /// Health of each endpoint.
    Health(ClusterFlag),
    /// HashKV of each endpoint at one revision; fails if the members disagree (a consistency
    /// check across the cluster).
    Hashkv {
        #[command(flatten)]
        cluster: ClusterFlag,
        /// Revision to hash at [default: the current revision of the first endpoint].
        #[arg(long)]
        rev: Option<i64>,
    },
}

#[derive(Debug, Clone, Copy, Args)]
pub struct ClusterFlag {
    /// Use every member's client URL (from the member list) instead of --endpoints.
    #[arg(long)]
    pub cluster: bool,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members.
    List {
        /// l (linearizable, confirmed with the leader) or s (serializable, this member's view).
        #[arg(long, default_value = "s")]
        consistency: String,
    },
    /// Add a member (then start it with --initial-cluster-state existing).
    Add {
        name: String,
        /// The new member's peer URLs, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
        /// Add it as a learner (a non-voting member), to promote once it has caught up.
        #[arg(long)]
        learner: bool,
    },
    /// Remove a member by its hex id.
    Remove {
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Promote a learner that has caught up to a voting member.
    Promote {
        #[arg(value_parser = parse_member_id)]
        id: u64,
    },
    /// Change a member's peer URLs.
    Update {
        #[arg(value_parser = parse_member_id)]
        id: u64,
        #[arg(long, value_delimiter = ',', required = true)]
        peer_urls: Vec<String>,
    },
}

fn parse_member_id(text: &str) -> Result<u64, String> {
    u64::from_str_radix(text, 16).map_err(|_| format!("{text:?} is not a hex member id"))
}

#[derive(Debug, Subcommand)]
pub enum AlarmCommand {
    /// List raised alarms.
    List,
    /// Disarm every raised alarm.
    Disarm,
}

fn parse_lease_id(text: &str) -> Result<i64, String> {
    u64::from_str_radix(text, 16)
        .map(|id| id as i64)
        .map_err(|_| format!("{text:?} is not a hex lease id"))
}

fn bad(message: impl Into<String>) -> ClientError {
    ClientError::Other(message.into())
}

async fn with_timeout<T>(
    global: &Global,
    future: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(global.command_timeout, future)
        .await
        .map_err(|_| bad("context deadline exceeded"))?
}

pub async fn run(
    global: &Global,
    command: ClientCommand,
) -> Result<std::process::ExitCode, ClientError> {
    match command {
        ClientCommand::Lock(args) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return crate::recipes::lock(&client, args).await;
        }
        ClientCommand::Elect(args) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return crate::recipes::elect(&client, args).await;
        }
        ClientCommand::Fence(args) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return with_timeout(global, crate::recipes::fence(&client, args)).await;
        }
        ClientCommand::Endpoint(command) => {
            return endpoint(global, command)
                .await
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Cluster(command) => return crate::local_cluster::run(command).await,
        ClientCommand::Bench(args) => {
            let mut dial = global.dial()?;
            dial.timeout = dial.timeout.max(Duration::from_secs(5));
            let target = crate::bench::Target {
                endpoints: global.endpoints.clone(),
                dial,
            };
            return crate::bench::run(&target, args).await;
        }
        ClientCommand::Watch(args) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return watch(global, &client, args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Lease(LeaseCommand::KeepAlive { id, once }) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return keep_alive(global, &client, id, once)
                .await
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Migrate(args) => {
            return migrate::migrate(global, args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Snapshot(SnapshotCommand::Save { file }) => {
            let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
            return snapshot::save(&client, &file)
                .await
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Snapshot(SnapshotCommand::Status { file }) => {
            return snapshot::status(&file, global.write_out)
                .map(|()| std::process::ExitCode::SUCCESS);
        }
        ClientCommand::Snapshot(SnapshotCommand::Restore(args)) => {
            return snapshot::restore(args).map(|()| std::process::ExitCode::SUCCESS);
        }
        _ => {}
    }
    let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
    with_timeout(global, unary(global, &client, command))
        .await
        .map(|()| std::process::ExitCode::SUCCESS)
}

async fn unary(
    global: &Global,
    client: &Client,
    command: ClientCommand,
) -> Result<(), ClientError> {
    match command {
        ClientCommand::Put(args) => put(global, client, args).await,
        ClientCommand::Get(args) => get(global, client, args).await,
        ClientCommand::Del(args) => del(global, client, args).await,
        ClientCommand::Txn => txn(global, client).await,
        ClientCommand::Compact(args) => {
            let request = CompactionRequest {
                revision: args.revision,
                physical: args.physical,
            };
            let response = client.kv().compact(request).await?.into_inner();
            match global.write_out {
                Format::Json => output::json(&response).map_err(bad),
                _ => {
                    println!("compacted revision {}", args.revision);
                    Ok(())
                }
            }
        }
        ClientCommand::Lease(command) => lease(global, client, command).await,
        ClientCommand::Member(command) => member(global, client, command).await,
        ClientCommand::MoveLeader { target } => move_leader(global, target).await,
        ClientCommand::Alarm(command) => alarm(global, client, command).await,
        ClientCommand::User(command) => auth::user(global, client, command).await,
        ClientCommand::Role(command) => auth::role(global, client, command).await,
        ClientCommand::Auth(command) => auth::auth(client, command).await,
        ClientCommand::Endpoint(_)
        | ClientCommand::Watch(_)
        | ClientCommand::Snapshot(_)
        | ClientCommand::Migrate(_)
        | ClientCommand::Lock(_)
        | ClientCommand::Elect(_)
        | ClientCommand::Fence(_)
        | ClientCommand::Cluster(_)
        | ClientCommand::Bench(_) => {
            unreachable!("streaming commands are dispatched in run")
        }
    }
}

async fn put(global: &Global, client: &Client, args: PutArgs) -> Result<(), ClientError> {
    let value = match args.value {
        Some(value) => value,
        None if args.ignore_value => String::new(),
        None => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .map_err(|e| bad(format!("reading the value: {e}")))?;
            value
        }
    };
    let request = PutRequest {
        key: args.key.into_bytes(),
        value: value.into_bytes(),
        lease: args.lease.unwrap_or(0),
        prev_kv: args.prev_kv,
        ignore_value: args.ignore_value,
        ignore_lease: args.ignore_lease,
    };
    let response = client.kv().put(request).await?.into_inner();
    match global.write_out {
        Format::Json => output::json(&response).map_err(bad),
        _ => {
            println!("OK");
            if let Some(prev) = &response.prev_kv {
                output::key_value(prev, false, false, global.hex);
            }
            Ok(())
        }
    }
}

fn sort_target(name: Option<&str>) -> Result<SortTarget, ClientError> {
    Ok(match name.map(str::to_ascii_uppercase).as_deref() {
        None | Some("KEY") => SortTarget::Key,
        Some("CREATE") => SortTarget::Create,
        Some("MODIFY") => SortTarget::Mod,
        Some("VALUE") => SortTarget::Value,
        Some("VERSION") => SortTarget::Version,
        Some(other) => {
            return Err(bad(format!(
                "bad sort target {other:?} (CREATE, KEY, MODIFY, VALUE, VERSION)"
            )));
        }
    })
}

async fn get(global: &Global, client: &Client, args: GetArgs) -> Result<(), ClientError> {
    let (key, range_end) = args.range.resolve();
    let sort_order = match args
        .order
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None => {
            if args.sort_by.is_some() {
                SortOrder::Ascend
            } else {
                SortOrder::None
            }
        }
        Some("ASCEND") => SortOrder::Ascend,
        Some("DESCEND") => SortOrder::Descend,
        Some(other) => return Err(bad(format!("bad sort order {other:?} (ASCEND or DESCEND)"))),
    };
    let serializable = match args.consistency.as_str() {
        "l" => false,
        "s" => true,
        other => return Err(bad(format!("unknown consistency {other:?} (l or s)"))),
    };
    let request = RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev,
        sort_order: sort_order as i32,
        sort_target: sort_target(args.sort_by.as_deref())? as i32,
        serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        ..RangeRequest::default()
    };
    let response = client.kv().range(request).await?.into_inner();
    match global.write_out {
        Format::Json => output::json(&response).map_err(bad),
        _ => {
            if args.count_only {
                println!("{}", response.count);
            }
            for kv in &response.kvs {
                output::key_value(kv, global.print_value_only, args.keys_only, global.hex);
            }
            Ok(())
        }
    }
}

async fn del(global: &Global, client: &Client, args: DelArgs) -> Result<(), ClientError> {
    let (key, range_end) = args.range.resolve();
    let request = DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    };
    let response = client.kv().delete_range(request).await?.into_inner();
    match global.write_out {
        Format::Json => output::json(&response).map_err(bad),
        _ => {
            println!("{}", response.deleted);
            for kv in &response.prev_kvs {
                output::key_value(kv, false, false, global.hex);
            }
            Ok(())
        }
    }
}

async fn txn(global: &Global, client: &Client) -> Result<(), ClientError> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| bad(format!("reading the txn: {e}")))?;
    let request = crate::txn::parse(&input).map_err(bad)?;
    let response = client.kv().txn(request).await?.into_inner();
    if global.write_out == Format::Json {
        return output::json(&response).map_err(bad);
    }
    println!(
        "{}",
        if response.succeeded {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    );
    for op in &response.responses {
        println!();
        match &op.response {
            Some(OpResponse::ResponsePut(_)) => println!("OK"),
            Some(OpResponse::ResponseRange(range)) => {
                for kv in &range.kvs {
                    output::key_value(kv, global.print_value_only, false, global.hex);
                }
            }
            Some(OpResponse::ResponseDeleteRange(delete)) => println!("{}", delete.deleted),
            Some(OpResponse::ResponseTxn(_)) => println!("(nested txn)"),
            None => {}
        }
    }
    Ok(())
}

async fn watch(global: &Global, client: &Client, args: WatchArgs) -> Result<(), ClientError> {
    let (key, range_end) = args.range.resolve();
    let create = WatchCreateRequest {
        key,
        range_end,
        start_revision: args.rev,
        prev_kv: args.prev_kv,
        ..WatchCreateRequest::default()
    };
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    sender
        .send(WatchRequest {
            request_union: Some(RequestUnion::CreateRequest(create)),
        })
        .await
        .map_err(|_| bad("watch stream closed"))?;
    let mut responses = client
        .watch()
        .watch(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    let mut seen = 0u64;
    while let Some(response) = responses.next().await {
        let response = response?;
        if response.canceled {
            let reason = if response.compact_revision != 0 {
                format!(
                    "watch canceled: required revision {} has been compacted",
                    response.compact_revision
                )
            } else {
                format!("watch canceled: {}", response.cancel_reason)
            };
            return Err(bad(reason));
        }
        if global.write_out == Format::Json && !response.events.is_empty() {
            output::json(&response).map_err(bad)?;
        } else {
            for event in &response.events {
                let kind = if event.r#type == EventType::Delete as i32 {
                    "DELETE"
                } else {
                    "PUT"
                };
                println!("{kind}");
                if let Some(prev) = &event.prev_kv {
                    output::key_value(prev, false, false, global.hex);
                }
                if let Some(kv) = &event.kv {
                    output::key_value(kv, false, false, global.hex);
                }
            }
        }
        seen += response.events.len() as u64;
        if args.max_events > 0 && seen >= args.max_events {
            break;
        }
    }
    drop(sender);
    Ok(())
}

async fn alarm(global: &Global, client: &Client, command: AlarmCommand) -> Result<(), ClientError> {
    let list = client
        .maintenance()
        .alarm(AlarmRequest {
            action: AlarmAction::Get as i32,
            ..AlarmRequest::default()
        })
        .await?
        .into_inner();
    let targets = match command {
        AlarmCommand::List => list.alarms,
        AlarmCommand::Disarm => {
            let mut disarmed = Vec::new();
            for alarm in list.alarms {
                let request = AlarmRequest {
                    action: AlarmAction::Deactivate as i32,
                    member_id: alarm.member_id,
                    alarm: alarm.alarm,
                };
                disarmed.extend(
                    client
                        .maintenance()
                        .alarm(request)
                        .await?
                        .into_inner()
                        .alarms,
                );
            }
            disarmed
        }
    };
    if global.write_out == Format::Json {
        return output::json(&targets).map_err(bad);
    }
    for alarm in targets {
        let name = AlarmType::try_from(alarm.alarm)
            .map(|a| a.as_str_name())
            .unwrap_or("UNKNOWN");
        println!("memberID:{:x} alarm:{name} ", alarm.member_id);
    }
    Ok(())
}
