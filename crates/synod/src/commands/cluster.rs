//! The cluster commands: `endpoint status|health|hashkv`, `member ...`, `move-leader`.

use super::*;

/// The endpoints a command talks to: `--endpoints`, or with `--cluster` every member's first
/// client URL as the member list reports it.
pub(super) async fn endpoints(
    global: &Global,
    cluster: ClusterFlag,
) -> Result<Vec<String>, ClientError> {
    if !cluster.cluster {
        return Ok(global.endpoints.clone());
    }
    let client = Client::connect_any(&global.endpoints, global.dial()?).await?;
    let members = with_timeout(global, async {
        Ok(client
            .cluster()
            .member_list(MemberListRequest {
                linearizable: false,
            })
            .await?
            .into_inner()
            .members)
    })
    .await?;
    Ok(members
        .into_iter()
        .filter_map(|m| m.client_ur_ls.into_iter().next())
        .collect())
}

pub(super) async fn hashkv(
    global: &Global,
    cluster: ClusterFlag,
    revision: Option<i64>,
) -> Result<(), ClientError> {
    let endpoints = endpoints(global, cluster).await?;
    let revision = match revision {
        Some(revision) => revision,
        None => {
            let client = Client::connect_any(&endpoints, global.dial()?).await?;
            with_timeout(global, async {
                Ok(client
                    .kv()
                    .range(RangeRequest {
                        key: vec![0],
                        limit: 1,
                        ..RangeRequest::default()
                    })
                    .await?
                    .into_inner()
                    .header
                    .unwrap_or_default()
                    .revision)
            })
            .await?
        }
    };
    let mut rows = Vec::new();
    let mut hashes = std::collections::BTreeSet::new();
    let mut failed = false;
    for endpoint in &endpoints {
        let result = with_timeout(global, async {
            let client = Client::connect(endpoint, global.dial()?).await?;
            Ok(client
                .maintenance()
                .hash_kv(synod_client::etcdserverpb::HashKvRequest { revision })
                .await?
                .into_inner())
        })
        .await;
        match result {
            Ok(response) => {
                hashes.insert(response.hash);
                if global.write_out == Format::Json {
                    let value = serde_json::json!({ "Endpoint": endpoint, "HashKV": response });
                    output::json(&value).map_err(bad)?;
                    continue;
                }
                rows.push(vec![
                    endpoint.clone(),
                    response.hash.to_string(),
                    response.hash_revision.to_string(),
                    response.compact_revision.to_string(),
                ]);
            }
            Err(error) => {
                eprintln!("Failed to get the hash of endpoint {endpoint} ({error})");
                failed = true;
            }
        }
    }
    match global.write_out {
        Format::Json => {}
        Format::Table => output::table(
            &["ENDPOINT", "HASH", "HASH REVISION", "COMPACT REVISION"],
            &rows,
        ),
        Format::Simple => {
            for row in &rows {
                println!("{}", row.join(", "));
            }
        }
    }
    if hashes.len() > 1 {
        return Err(bad(format!(
            "members disagree on HashKV at revision {revision}: the cluster is inconsistent"
        )));
    }
    if failed {
        return Err(bad("unhealthy cluster"));
    }
    Ok(())
}

pub(super) async fn endpoint(global: &Global, command: EndpointCommand) -> Result<(), ClientError> {
    let cluster = match command {
        EndpointCommand::Status(flag) | EndpointCommand::Health(flag) => flag,
        EndpointCommand::Hashkv { cluster, rev } => return hashkv(global, cluster, rev).await,
    };
    let endpoints = endpoints(global, cluster).await?;
    let mut failed = false;
    let mut rows = Vec::new();
    for endpoint in &endpoints {
        let client = match Client::connect(endpoint, global.dial()?).await {
            Ok(client) => client,
            Err(error) => {
                eprintln!("{endpoint} is unhealthy: {error}");
                failed = true;
                continue;
            }
        };
        match command {
            EndpointCommand::Status(_) => {
                let status = with_timeout(global, async {
                    Ok(client
                        .maintenance()
                        .status(StatusRequest {})
                        .await?
                        .into_inner())
                })
                .await;
                match status {
                    Ok(status) => {
                        if global.write_out == Format::Json {
                            let value =
                                serde_json::json!({ "Endpoint": endpoint, "Status": status });
                            output::json(&value).map_err(bad)?;
                            continue;
                        }
                        let header = status.header.unwrap_or_default();
                        rows.push(vec![
                            endpoint.clone(),
                            format!("{:x}", header.member_id),
                            status.version.clone(),
                            output::size(status.db_size),
                            (status.leader == header.member_id).to_string(),
                            status.is_learner.to_string(),
                            status.raft_term.to_string(),
                            status.raft_index.to_string(),
                            status.raft_applied_index.to_string(),
                            status.errors.join(", "),
                        ]);
                    }
                    Err(error) => {
                        eprintln!("Failed to get the status of endpoint {endpoint} ({error})");
                        failed = true;
                    }
                }
            }
            EndpointCommand::Health(_) => {
                // etcdctl's check: a linearizable read of "health", then the alarm list.
                let started = Instant::now();
                let check = with_timeout(global, async {
                    let read = client
                        .kv()
                        .range(RangeRequest {
                            key: b"health".to_vec(),
                            ..RangeRequest::default()
                        })
                        .await;
                    if let Err(status) = read
                        && status.code() != tonic::Code::PermissionDenied
                    {
                        return Err(ClientError::from(status));
                    }
                    let alarms = client
                        .maintenance()
                        .alarm(AlarmRequest {
                            action: AlarmAction::Get as i32,
                            ..AlarmRequest::default()
                        })
                        .await?;
                    if let Some(alarm) = alarms.into_inner().alarms.first() {
                        let name = AlarmType::try_from(alarm.alarm)
                            .map(|a| a.as_str_name())
                            .unwrap_or("UNKNOWN");
                        return Err(bad(format!("Active Alarm(s): {name}")));
                    }
                    Ok(())
                })
                .await;
                let took = started.elapsed();
                match check {
                    Ok(()) => println!(
                        "{endpoint} is healthy: successfully committed proposal: took = {took:?}"
                    ),
                    Err(error) => {
                        println!("{endpoint} is unhealthy: failed to commit proposal: {error}");
                        failed = true;
                    }
                }
            }
            EndpointCommand::Hashkv { .. } => unreachable!("answered above"),
        }
    }
    if !rows.is_empty() {
        match global.write_out {
            Format::Table => output::table(
                &[
                    "ENDPOINT",
                    "ID",
                    "VERSION",
                    "DB SIZE",
                    "IS LEADER",
                    "IS LEARNER",
                    "RAFT TERM",
                    "RAFT INDEX",
                    "RAFT APPLIED INDEX",
                    "ERRORS",
                ],
                &rows,
            ),
            _ => {
                for row in rows {
                    println!("{}", row.join(", "));
                }
            }
        }
    }
    if failed {
        Err(bad("unhealthy cluster"))
    } else {
        Ok(())
    }
}

pub(super) async fn member(
    global: &Global,
    client: &Client,
    command: MemberCommand,
) -> Result<(), ClientError> {
    use synod_client::etcdserverpb::{
        MemberAddRequest, MemberPromoteRequest, MemberRemoveRequest, MemberUpdateRequest,
    };
    let cluster_id = |header: &Option<synod_client::etcdserverpb::ResponseHeader>| {
        header.as_ref().map(|h| h.cluster_id).unwrap_or(0)
    };
    match command {
        MemberCommand::List { consistency } => {
            let linearizable = match consistency.as_str() {
                "l" => true,
                "s" => false,
                other => return Err(bad(format!("unknown consistency {other:?} (l or s)"))),
            };
            member_list(global, client, linearizable).await
        }
        MemberCommand::Add {
            name,
            peer_urls,
            learner,
        } => {
            let response = client
                .cluster()
                .member_add(MemberAddRequest {
                    peer_ur_ls: peer_urls.clone(),
                    is_learner: learner,
                })
                .await?
                .into_inner();
            if global.write_out == Format::Json {
                return output::json(&response).map_err(bad);
            }
            let id = response.member.as_ref().map(|m| m.id).unwrap_or(0);
            let kind = if learner { "Learner" } else { "Member" };
            println!(
                "{kind} {id:x} added to cluster {:x}",
                cluster_id(&response.header)
            );
            let initial: Vec<String> = response
                .members
                .iter()
                .flat_map(|m| {
                    let name = if m.id == id {
                        name.clone()
                    } else {
                        m.name.clone()
                    };
                    m.peer_ur_ls.iter().map(move |url| format!("{name}={url}"))
                })
                .collect();
            println!();
            println!("SYNOD_NAME=\"{name}\"");
            println!("SYNOD_INITIAL_CLUSTER=\"{}\"", initial.join(","));
            println!(
                "SYNOD_INITIAL_ADVERTISE_PEER_URLS=\"{}\"",
                peer_urls.join(",")
            );
            println!("SYNOD_INITIAL_CLUSTER_STATE=\"existing\"");
            Ok(())
        }
        MemberCommand::Remove { id } => {
            let response = client
                .cluster()
                .member_remove(MemberRemoveRequest { id })
                .await?
                .into_inner();
            if global.write_out == Format::Json {
                return output::json(&response).map_err(bad);
            }
            println!(
                "Member {id:x} removed from cluster {:x}",
                cluster_id(&response.header)
            );
            Ok(())
        }
        MemberCommand::Promote { id } => {
            let response = client
                .cluster()
                .member_promote(MemberPromoteRequest { id })
                .await?
                .into_inner();
            if global.write_out == Format::Json {
                return output::json(&response).map_err(bad);
            }
            println!(
                "Member {id:x} promoted in cluster {:x}",
                cluster_id(&response.header)
            );
            Ok(())
        }
        MemberCommand::Update { id, peer_urls } => {
            let response = client
                .cluster()
                .member_update(MemberUpdateRequest {
                    id,
                    peer_ur_ls: peer_urls,
                })
                .await?
                .into_inner();
            if global.write_out == Format::Json {
                return output::json(&response).map_err(bad);
            }
            println!(
                "Member {id:x} updated in cluster {:x}",
                cluster_id(&response.header)
            );
            Ok(())
        }
    }
}

/// Asks the leader (found among the endpoints) to hand leadership to `target`.
pub(super) async fn move_leader(global: &Global, target: u64) -> Result<(), ClientError> {
    for endpoint in &global.endpoints {
        let Ok(client) = Client::connect(endpoint, global.dial()?).await else {
            continue;
        };
        let Ok(status) = client.maintenance().status(StatusRequest {}).await else {
            continue;
        };
        let status = status.into_inner();
        let id = status.header.map(|h| h.member_id).unwrap_or(0);
        if status.leader != id {
            continue;
        }
        client
            .maintenance()
            .move_leader(synod_client::etcdserverpb::MoveLeaderRequest { target_id: target })
            .await?;
        println!("Leadership transferred from {id:x} to {target:x}");
        return Ok(());
    }
    Err(bad("no leader endpoint given in --endpoints"))
}

pub(super) async fn member_list(
    global: &Global,
    client: &Client,
    linearizable: bool,
) -> Result<(), ClientError> {
    let response = client
        .cluster()
        .member_list(MemberListRequest { linearizable })
        .await?
        .into_inner();
    let rows: Vec<Vec<String>> = response
        .members
        .iter()
        .map(|member| {
            vec![
                format!("{:x}", member.id),
                if member.name.is_empty() {
                    "unstarted"
                } else {
                    "started"
                }
                .to_owned(),
                member.name.clone(),
                member.peer_ur_ls.join(","),
                member.client_ur_ls.join(","),
                member.is_learner.to_string(),
            ]
        })
        .collect();
    match global.write_out {
        Format::Json => output::json(&response).map_err(bad),
        Format::Table => {
            output::table(
                &[
                    "ID",
                    "STATUS",
                    "NAME",
                    "PEER ADDRS",
                    "CLIENT ADDRS",
                    "IS LEARNER",
                ],
                &rows,
            );
            Ok(())
        }
        Format::Simple => {
            for row in rows {
                println!("{}", row.join(", "));
            }
            Ok(())
        }
    }
}
