//! `synod snapshot restore`: a new member's data directory from a snapshot, as etcdutl builds
//! one. The snapshot (etcd's database layout, written by Synod or by etcd 3.4 to 3.6) fills the
//! state machine with every revision, the compaction point, leases, users and roles; the member
//! list is the new one from `--initial-cluster`, so the restored members form a new cluster.

use std::io::Read;
use std::path::Path;

use sha2::Digest;
use synod_bbolt::Reader;
use synod_core::backend::Backend;
use synod_core::etcd_db::{self, Imported};

use super::open::{StartError, bootstrap};
use crate::config::Config;

/// What a restore made.
#[derive(Debug, Clone, Copy)]
pub struct Restored {
    pub member_id: u64,
    pub cluster_id: u64,
    pub imported: Imported,
}

/// Builds `config.data_dir` for member `config.name` of the cluster `config.initial_cluster`
/// from the snapshot at `snapshot`. The directory must not exist. Unless `skip_hash_check`, the
/// snapshot must end with the SHA-256 digest of its data (as `snapshot save` writes it), and
/// the digest must match.
pub fn restore(
    config: &Config,
    snapshot: &Path,
    skip_hash_check: bool,
) -> Result<Restored, StartError> {
    let refuse = |message: String| StartError::Config(message);
    if config.data_dir.exists() {
        return Err(refuse(format!(
            "data-dir {:?} exists",
            config.data_dir.display().to_string()
        )));
    }
    let reader = Reader::open(snapshot).map_err(|e| {
        refuse(format!(
            "{} is not a snapshot in etcd's database format: {e}",
            snapshot.display()
        ))
    })?;
    match reader.snapshot_digest() {
        Ok(Some(expected)) if !skip_hash_check => {
            let actual = data_digest(snapshot, reader.data_len())
                .map_err(|e| refuse(format!("reading {}: {e}", snapshot.display())))?;
            if actual != expected {
                return Err(refuse(format!(
                    "expected sha256 {}, got {}",
                    hex(&expected),
                    hex(&actual)
                )));
            }
        }
        Ok(Some(_)) => {}
        Ok(None) if skip_hash_check => {}
        Ok(None) => {
            return Err(refuse(
                "snapshot missing hash but --skip-hash-check=false".to_owned(),
            ));
        }
        Err(error) => return Err(refuse(format!("reading {}: {error}", snapshot.display()))),
    }
    let member_dir = config.data_dir.join("member");
    std::fs::create_dir_all(member_dir.join("snap"))
        .map_err(|e| refuse(format!("creating {}: {e}", member_dir.display())))?;
    let outcome = fill(config, &member_dir, &reader);
    if outcome.is_err() {
        // Nothing half-made is left for a member to start from.
        let _ = std::fs::remove_dir_all(&config.data_dir);
    }
    outcome
}

fn fill(config: &Config, member_dir: &Path, reader: &Reader) -> Result<Restored, StartError> {
    let backend = Backend::open(&member_dir.join("db"))?;
    let mut tx = backend.begin_write()?;
    let imported = etcd_db::import(reader, &tx)?;
    tx.set_durability(redb::Durability::Immediate)
        .map_err(synod_core::StorageError::backend)?;
    tx.commit().map_err(synod_core::StorageError::backend)?;
    let (member_id, cluster_id) = bootstrap(config, &backend)?;
    Ok(Restored {
        member_id,
        cluster_id,
        imported,
    })
}

/// SHA-256 of the first `len` bytes of the file.
fn data_digest(path: &Path, len: u64) -> std::io::Result<[u8; 32]> {
    let mut file = std::fs::File::open(path)?.take(len);
    let mut hasher = sha2::Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher.finalize().into())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `snapshot status`: reads every page of the snapshot at `path` and reports as etcdctl does.
pub fn status(path: &Path) -> Result<etcd_db::Status, String> {
    let reader = Reader::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    etcd_db::status(&reader).map_err(|e| format!("{}: {e}", path.display()))
}
