//! `synod snapshot save | status | restore`, with etcdctl's and etcdutl's flags and output.
//! Snapshots are etcd's database files followed by their SHA-256 digest, so a snapshot from
//! either system restores into either.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use sha2::Digest;
use synod_client::Client;
use synod_client::etcdserverpb::SnapshotRequest;

use super::{ClientError, bad};
use crate::output::{self, Format};

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Stream a snapshot of the member's data to FILE (etcd's database format, with its digest).
    Save { file: PathBuf },
    /// Check a snapshot file and print its hash, revision, keys and size.
    Status { file: PathBuf },
    /// Build a new member's data directory from a snapshot (Synod's or etcd's).
    Restore(RestoreArgs),
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    file: PathBuf,
    /// Name of the member to build.
    #[arg(long, default_value = "default")]
    name: String,
    /// Data directory to create [default: <name>.synod].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The new cluster, `name=peer-url,...` [default: <name>=<advertise peer URL>].
    #[arg(long)]
    initial_cluster: Option<String>,
    /// Token of the new cluster (makes its ids unique).
    #[arg(long, default_value = "etcd-cluster")]
    initial_cluster_token: String,
    /// This member's peer URLs.
    #[arg(long, default_value = "http://localhost:2380")]
    initial_advertise_peer_urls: String,
    /// Restore a file without a digest (a copy of a member's database file).
    #[arg(long)]
    skip_hash_check: bool,
}

pub async fn save(client: &Client, file: &Path) -> Result<(), ClientError> {
    let mut stream = client
        .maintenance()
        .snapshot(SnapshotRequest {})
        .await?
        .into_inner();
    let partial = file.with_extension("part");
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(&partial)
            .map_err(|e| bad(format!("creating {}: {e}", partial.display())))?,
    );
    // The stream is the data and then its digest; the last 32 bytes seen are the digest.
    let mut hasher = sha2::Sha256::new();
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    let mut total = 0u64;
    while let Some(chunk) = stream.next().await {
        let blob = chunk?.blob;
        total += blob.len() as u64;
        out.write_all(&blob)
            .map_err(|e| bad(format!("writing {}: {e}", partial.display())))?;
        tail.extend_from_slice(&blob);
        if tail.len() > 32 {
            let settled = tail.len() - 32;
            hasher.update(&tail[..settled]);
            tail.drain(..settled);
        }
    }
    let file_out = out
        .into_inner()
        .map_err(|e| bad(format!("writing {}: {e}", partial.display())))?;
    if tail.len() < 32 || hasher.finalize().as_slice() != tail.as_slice() {
        let _ = std::fs::remove_file(&partial);
        return Err(bad(format!(
            "snapshot checksum mismatch or missing after {total} bytes: the stream was cut or corrupted"
        )));
    }
    file_out
        .sync_all()
        .map_err(|e| bad(format!("syncing {}: {e}", partial.display())))?;
    std::fs::rename(&partial, file)
        .map_err(|e| bad(format!("renaming to {}: {e}", file.display())))?;
    println!("Snapshot saved at {}", file.display());
    Ok(())
}

pub fn status(file: &Path, format: Format) -> Result<(), ClientError> {
    let status = synod_server::member::restore::status(file).map_err(bad)?;
    match format {
        Format::Json => output::json(&serde_json::json!({
            "hash": status.hash,
            "revision": status.revision,
            "totalKey": status.total_keys,
            "totalSize": status.total_size,
        }))
        .map_err(bad),
        Format::Table => {
            output::table(
                &["HASH", "REVISION", "TOTAL KEYS", "TOTAL SIZE"],
                &[vec![
                    format!("{:x}", status.hash),
                    status.revision.to_string(),
                    status.total_keys.to_string(),
                    human_bytes(status.total_size),
                ]],
            );
            Ok(())
        }
        Format::Simple => {
            println!(
                "{:x}, {}, {}, {}",
                status.hash,
                status.revision,
                status.total_keys,
                human_bytes(status.total_size)
            );
            Ok(())
        }
    }
}

/// Sizes as etcdctl prints them (go-humanize's SI units).
fn human_bytes(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else if value < 10.0 {
        format!("{value:.1} {}", units[unit])
    } else {
        format!("{value:.0} {}", units[unit])
    }
}

pub fn restore(args: RestoreArgs) -> Result<(), ClientError> {
    let server_args = synod_server::config::ServerArgs {
        name: Some(args.name.clone()),
        data_dir: args.data_dir.clone(),
        initial_cluster: args.initial_cluster.clone(),
        initial_cluster_token: Some(args.initial_cluster_token.clone()),
        initial_advertise_peer_urls: Some(args.initial_advertise_peer_urls.clone()),
        listen_peer_urls: Some(args.initial_advertise_peer_urls.clone()),
        ..Default::default()
    };
    let config =
        synod_server::config::Config::resolve(server_args).map_err(|e| bad(e.to_string()))?;
    let restored =
        synod_server::member::restore::restore(&config, &args.file, args.skip_hash_check)
            .map_err(|e| bad(e.to_string()))?;
    println!(
        "restored snapshot {} into {}: member {:x} of cluster {:x}, revision {} (compacted at {}), {} history rows, {} leases, {} users, {} roles",
        args.file.display(),
        config.data_dir.display(),
        restored.member_id,
        restored.cluster_id,
        restored.imported.revision,
        restored.imported.compact_revision,
        restored.imported.history_rows,
        restored.imported.leases,
        restored.imported.users,
        restored.imported.roles,
    );
    Ok(())
}
