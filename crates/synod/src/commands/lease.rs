//! The lease commands: `lease grant|revoke|timetolive|list|keep-alive`.

use super::*;

pub(super) async fn lease(
    global: &Global,
    client: &Client,
    command: LeaseCommand,
) -> Result<(), ClientError> {
    let json = global.write_out == Format::Json;
    match command {
        LeaseCommand::Grant { ttl } => {
            let response = client
                .lease()
                .lease_grant(LeaseGrantRequest { ttl, id: 0 })
                .await?
                .into_inner();
            if json {
                return output::json(&response).map_err(bad);
            }
            println!(
                "lease {:x} granted with TTL({}s)",
                response.id, response.ttl
            );
        }
        LeaseCommand::Revoke { id } => {
            let response = client
                .lease()
                .lease_revoke(LeaseRevokeRequest { id })
                .await?
                .into_inner();
            if json {
                return output::json(&response).map_err(bad);
            }
            println!("lease {id:x} revoked");
        }
        LeaseCommand::Timetolive { id, keys } => {
            let response = client
                .lease()
                .lease_time_to_live(LeaseTimeToLiveRequest { id, keys })
                .await?
                .into_inner();
            if json {
                return output::json(&response).map_err(bad);
            }
            if response.ttl == -1 {
                println!("lease {id:x} already expired");
            } else if keys {
                let names: Vec<String> = response
                    .keys
                    .iter()
                    .map(|k| output::bytes(k, global.hex))
                    .collect();
                println!(
                    "lease {id:x} granted with TTL({}s), remaining({}s), attached keys([{}])",
                    response.granted_ttl,
                    response.ttl,
                    names.join(" ")
                );
            } else {
                println!(
                    "lease {id:x} granted with TTL({}s), remaining({}s)",
                    response.granted_ttl, response.ttl
                );
            }
        }
        LeaseCommand::List => {
            let response = client
                .lease()
                .lease_leases(LeaseLeasesRequest {})
                .await?
                .into_inner();
            if json {
                return output::json(&response).map_err(bad);
            }
            println!("found {} leases", response.leases.len());
            for lease in &response.leases {
                println!("{:x}", lease.id);
            }
        }
        LeaseCommand::KeepAlive { .. } => unreachable!("keep-alive is dispatched in run"),
    }
    Ok(())
}

pub(super) async fn keep_alive(
    global: &Global,
    client: &Client,
    id: i64,
    once: bool,
) -> Result<(), ClientError> {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let mut responses = client
        .lease()
        .lease_keep_alive(tokio_stream::wrappers::ReceiverStream::new(receiver))
        .await?
        .into_inner();
    loop {
        sender
            .send(LeaseKeepAliveRequest { id })
            .await
            .map_err(|_| bad("keep-alive stream closed"))?;
        let Some(response) = responses.next().await else {
            return Err(bad("keep-alive stream closed by the server"));
        };
        let response = response?;
        if response.ttl <= 0 {
            return Err(bad(format!("lease {id:x} expired or revoked")));
        }
        if global.write_out == Format::Json {
            output::json(&response).map_err(bad)?;
        } else {
            println!("lease {id:x} keepalived with TTL({})", response.ttl);
        }
        if once {
            return Ok(());
        }
        // Renew at a third of the TTL, as the Go client does.
        tokio::time::sleep(Duration::from_millis(
            (response.ttl as u64 * 1000 / 3).max(500),
        ))
        .await;
    }
}
