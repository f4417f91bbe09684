//! `synod lock` and `synod elect`: the lock and election recipes for scripts and operators.
//!
//! `synod lock NAME -- COMMAND...` holds the lock while COMMAND runs and passes its fencing token
//! (the create revision of the holder's key, which grows with every acquisition of NAME) in
//! `SYNOD_FENCING_TOKEN`, with the key in `SYNOD_LOCK_KEY`. The lock lives on a lease kept alive
//! by this process; if the lease is lost (this process was paused past its TTL, or the lease
//! was revoked), another holder may already have the lock, so COMMAND gets SIGTERM and, after a
//! grace period, SIGKILL, and `synod lock` exits with an error. A protected resource should
//! still check the token (see the locks issue): termination is best effort, the token is not.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use synod_client::etcdserverpb::RangeRequest;
use synod_client::recipes::{Semaphore, Session};
use synod_client::v3electionpb::{CampaignRequest, LeaderKey, LeaderRequest, ResignRequest};
use synod_client::{Client, ClientError};

use crate::output;

#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// The lock's name.
    name: String,
    /// Seconds the lock survives this process going silent (its lease TTL).
    #[arg(long, default_value_t = 60)]
    ttl: i64,
    /// Seconds between SIGTERM and SIGKILL when the lock is lost under a running command.
    #[arg(long, default_value_t = 10)]
    kill_after: u64,
    /// Hold one of N permits (a semaphore, as `consul lock -n`) instead of the lock.
    #[arg(long, default_value_t = 1)]
    max: usize,
    /// After a holder's session expires (instead of it releasing), nobody may acquire for this
    /// long (Consul's lock-delay), e.g. `15s`.
    #[arg(long, default_value = "0s", value_parser = crate::parse_duration)]
    lock_delay: Duration,
    /// The command to run while holding the lock; without one, hold it until interrupted.
    #[arg(last = true)]
    command: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct ElectArgs {
    /// The election's name.
    name: String,
    /// The value to proclaim once elected.
    value: Option<String>,
    /// Observe the election instead of campaigning: print each new leader value.
    #[arg(short = 'l', long)]
    listen: bool,
    /// Seconds leadership survives this process going silent (its lease TTL).
    #[arg(long, default_value_t = 60)]
    ttl: i64,
}

fn bad(message: impl Into<String>) -> ClientError {
    ClientError::Other(message.into())
}

/// Sends a signal by name with kill(1): the workspace forbids unsafe code, so no libc calls.
fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

pub async fn lock(client: &Client, args: LockArgs) -> Result<ExitCode, ClientError> {
    let session = Session::new(client, args.ttl).await?;
    let semaphore = Semaphore::new(&args.name, args.max).with_lock_delay(args.lock_delay);
    let held = semaphore.acquire(&session).await?;
    let (key, token) = (held.key.clone(), held.token);
    eprintln!(
        "synod: holding lock {} with fencing token {token}",
        output::bytes(&key, false)
    );
    let outcome = if args.command.is_empty() {
        println!("{}", output::bytes(&key, false));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
            _ = session.lost() => Err(bad("lock lost: the session lease expired")),
        }
    } else {
        run_holding(&args, &key, token, &session).await
    };
    // Release: the key first (marked released, so lock-delay does not apply), then the lease.
    let _ = semaphore.release(&session, held).await;
    let _ = session.close().await;
    outcome
}

async fn run_holding(
    args: &LockArgs,
    key: &[u8],
    token: i64,
    session: &Session,
) -> Result<ExitCode, ClientError> {
    let mut child = tokio::process::Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("SYNOD_LOCK_NAME", &args.name)
        .env("SYNOD_LOCK_KEY", String::from_utf8_lossy(key).into_owned())
        .env("SYNOD_FENCING_TOKEN", token.to_string())
        .spawn()
        .map_err(|e| bad(format!("cannot run {:?}: {e}", args.command[0])))?;
    let pid = child.id();
    tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| bad(format!("waiting for the command: {e}")))?;
            Ok(ExitCode::from(status.code().unwrap_or(1).clamp(0, 255) as u8))
        }
        _ = session.lost() => {
            eprintln!("synod: lock lost (the session lease expired); terminating the command");
            if let Some(pid) = pid {
                signal(pid, "TERM");
            }
            if tokio::time::timeout(Duration::from_secs(args.kill_after), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
            Err(bad("lock lost: the session lease expired and the command was terminated"))
        }
        _ = tokio::signal::ctrl_c() => {
            if let Some(pid) = pid {
                signal(pid, "TERM");
            }
            let _ = tokio::time::timeout(Duration::from_secs(args.kill_after), child.wait()).await;
            Ok(ExitCode::from(130))
        }
    }
}

pub async fn elect(client: &Client, args: ElectArgs) -> Result<ExitCode, ClientError> {
    let name = args.name.clone().into_bytes();
    if args.listen {
        let mut stream = client
            .election()
            .observe(LeaderRequest { name })
            .await?
            .into_inner();
        while let Some(response) = stream.next().await {
            if let Some(kv) = response?.kv {
                println!("{}", output::bytes(&kv.key, false));
                println!("{}", output::bytes(&kv.value, false));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let value = args
        .value
        .ok_or_else(|| bad("synod elect NAME VALUE campaigns; use --listen to observe"))?;
    let session = Session::new(client, args.ttl).await?;
    let campaign = CampaignRequest {
        name,
        lease: session.lease(),
        value: value.clone().into_bytes(),
    };
    let mut election_client = client.election();
    let elected = tokio::select! {
        elected = election_client.campaign(campaign) => elected?.into_inner(),
        _ = session.lost() => return Err(bad("leadership lost: the session lease expired while campaigning")),
    };
    let leader: LeaderKey = elected
        .leader
        .ok_or_else(|| bad("the server elected no leader key"))?;
    eprintln!(
        "synod: elected as {} with fencing token {}",
        output::bytes(&leader.key, false),
        leader.rev
    );
    println!("{}", output::bytes(&leader.key, false));
    println!("{value}");
    let outcome = tokio::select! {
        _ = tokio::signal::ctrl_c() => Ok(ExitCode::SUCCESS),
        _ = session.lost() => Err(bad("leadership lost: the session lease expired")),
    };
    let _ = client
        .election()
        .resign(ResignRequest {
            leader: Some(leader),
        })
        .await;
    let _ = session.close().await;
    outcome
}

#[derive(Debug, clap::Args)]
pub struct FenceArgs {
    /// The lock's name.
    name: String,
    /// The fencing token to check.
    token: i64,
}

/// `synod fence NAME TOKEN`: exits 0 if TOKEN belongs to the current holder of lock NAME, 1 if
/// it is stale. Computed from plain KV reads (the first-created key under `NAME/`), so it works
/// against etcd as well.
pub async fn fence(client: &Client, args: FenceArgs) -> Result<ExitCode, ClientError> {
    use synod_client::etcdserverpb::range_request::{SortOrder, SortTarget};
    let prefix = format!("{}/", args.name).into_bytes();
    let request = RangeRequest {
        range_end: synod_client::prefix_range_end(&prefix),
        key: prefix,
        sort_target: SortTarget::Create as i32,
        sort_order: SortOrder::Ascend as i32,
        limit: 1,
        ..RangeRequest::default()
    };
    let holder = client
        .kv()
        .range(request)
        .await?
        .into_inner()
        .kvs
        .into_iter()
        .next();
    match holder {
        Some(kv) if kv.create_revision == args.token => {
            println!(
                "current: token {} holds {}",
                args.token,
                output::bytes(&kv.key, false)
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(kv) => {
            println!(
                "stale: token {}; the lock is held by {} with token {}",
                args.token,
                output::bytes(&kv.key, false),
                kv.create_revision
            );
            Ok(ExitCode::FAILURE)
        }
        None => {
            println!(
                "stale: token {}; lock {} is not held",
                args.token, args.name
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
