//! The election-failover workload: how long a dead leader's successor takes to be elected.

use std::time::{Duration, Instant};

use synod_client::etcdserverpb::LeaseGrantRequest;
use synod_client::recipes::Session;
use synod_client::v3electionpb::{CampaignRequest, LeaderRequest};
use synod_client::{Client, ClientError};

use super::{Summary, Target, Workload, new_histogram, other};

/// Rounds of: two campaigners on leases of `ttl`; the leader "dies" (its lease is no longer
/// renewed); measure until the other is elected. Works against etcd and Synod alike.
pub(super) async fn election_failover(
    target: &Target,
    rounds: u64,
    ttl: i64,
    json: bool,
) -> Result<std::process::ExitCode, ClientError> {
    let client = Client::connect(&target.endpoints[0], target.dial.clone()).await?;
    let mut histogram = new_histogram()?;
    let started = Instant::now();
    for round in 0..rounds {
        let name = format!("bench-election-{round}-{}", std::process::id()).into_bytes();
        let first_lease = client
            .lease()
            .lease_grant(LeaseGrantRequest { ttl, id: 0 })
            .await?
            .into_inner()
            .id;
        // The first campaigner renews its lease this once (the grant) and never again: it dies
        // now, and failover is measured from here. The second's session is kept alive.
        let died = Instant::now();
        let second = Session::new(&client, ttl).await?;
        client
            .election()
            .campaign(CampaignRequest {
                name: name.clone(),
                lease: first_lease,
                value: b"first".to_vec(),
            })
            .await?;
        let mut election = client.election();
        let campaign = election.campaign(CampaignRequest {
            name: name.clone(),
            lease: second.lease(),
            value: b"second".to_vec(),
        });
        tokio::time::timeout(Duration::from_secs((ttl as u64) * 5 + 10), campaign)
            .await
            .map_err(|_| other("the second campaigner was never elected"))??;
        let took = died.elapsed();
        let leader = client
            .election()
            .leader(LeaderRequest { name })
            .await?
            .into_inner();
        if leader.kv.map(|kv| kv.value) != Some(b"second".to_vec()) {
            return Err(other("the second campaigner won but is not the leader"));
        }
        let _ = second.close().await;
        let _ = histogram.record((took.as_micros() as u64).max(1));
    }
    Summary {
        name: Workload::ElectionFailover { ttl }.name(),
        clients: 1,
        histogram: &histogram,
        failed: 0,
        elapsed: started.elapsed(),
        extra: serde_json::Map::new(),
    }
    .print(json);
    Ok(std::process::ExitCode::SUCCESS)
}
