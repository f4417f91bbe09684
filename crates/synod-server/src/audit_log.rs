//! The audit log's file (`--audit-log PATH`): records are written by a thread of their own from a bounded queue, so a slow disk never
//! holds a request; if the queue is full, records are counted as dropped and the count is
//! written with the next record that fits. The file is rotated at `--audit-log-max-bytes`:
//! `PATH` becomes `PATH.1`, `PATH.1` becomes `PATH.2`, and so on up to [`ROTATED_FILES`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};

use serde::Serialize;

/// Records waiting for the writer.
const QUEUE_MAX: usize = 8 * 1024;
/// Older files kept beside the current one.
const ROTATED_FILES: usize = 5;

/// One audited request.
#[derive(Debug, Serialize)]
pub struct Record {
    pub time: String,
    pub member: String,
    /// The user (by token) or the client certificate's CN; empty for an anonymous request.
    pub user: String,
    pub address: Option<String>,
    /// The gRPC method or gateway path.
    pub rpc: String,
    /// `OK`, or the gRPC code (`PermissionDenied`, ...) or HTTP status of the refusal.
    pub result: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Records lost to a full queue since the previous record.
    #[serde(skip_serializing_if = "is_zero")]
    pub dropped_before: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The audit log of a member; off when no path is configured.
#[derive(Debug, Default)]
pub struct AuditLog {
    sender: Option<SyncSender<Record>>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Opens (creating) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, bytes_max: u64) -> std::io::Result<AuditLog> {
        let writer = Writer::open(path.to_owned(), bytes_max)?;
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_MAX);
        std::thread::Builder::new()
            .name("synod-audit".to_owned())
            .spawn(move || writer.run(receiver))?;
        Ok(AuditLog {
            sender: Some(sender),
            dropped: AtomicU64::new(0),
        })
    }

    pub fn is_on(&self) -> bool {
        self.sender.is_some()
    }

    /// Queues `record`; never blocks.
    pub fn record(&self, mut record: Record) {
        let Some(sender) = &self.sender else {
            return;
        };
        record.dropped_before = self.dropped.swap(0, Ordering::Relaxed);
        match sender.try_send(record) {
            Ok(()) => {}
            Err(TrySendError::Full(record)) | Err(TrySendError::Disconnected(record)) => {
                self.dropped
                    .fetch_add(1 + record.dropped_before, Ordering::Relaxed);
            }
        }
    }
}

struct Writer {
    path: PathBuf,
    bytes_max: u64,
    file: std::fs::File,
    written: u64,
}

impl Writer {
    fn open(path: PathBuf, bytes_max: u64) -> std::io::Result<Writer> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        let written = file.metadata()?.len();
        Ok(Writer {
            path,
            bytes_max: bytes_max.max(4096),
            file,
            written,
        })
    }

    fn rotated(&self, n: usize) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        for n in (1..ROTATED_FILES).rev() {
            let from = self.rotated(n);
            if from.exists() {
                std::fs::rename(&from, self.rotated(n + 1))?;
            }
        }
        std::fs::rename(&self.path, self.rotated(1))?;
        *self = Writer::open(self.path.clone(), self.bytes_max)?;
        Ok(())
    }

    fn run(mut self, receiver: Receiver<Record>) {
        while let Ok(record) = receiver.recv() {
            let Ok(mut line) = serde_json::to_vec(&record) else {
                continue;
            };
            line.push(b'\n');
            if self.written + line.len() as u64 > self.bytes_max
                && let Err(error) = self.rotate()
            {
                tracing::error!(%error, path = %self.path.display(), "rotating the audit log failed");
            }
            match self.file.write_all(&line) {
                Ok(()) => self.written += line.len() as u64,
                Err(error) => {
                    tracing::error!(%error, path = %self.path.display(), "writing the audit log failed")
                }
            }
        }
    }
}

/// The time of a record, RFC 3339 in UTC.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_rotates_and_keeps_its_older_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("audit.log");
        let mut writer = Writer::open(path.clone(), 4096).expect("open");
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_MAX);
        for i in 0..200 {
            sender
                .send(Record {
                    time: now(),
                    member: "1".to_owned(),
                    user: "alice".to_owned(),
                    address: None,
                    rpc: format!("/etcdserverpb.Auth/UserAdd/{i}"),
                    result: "OK".to_owned(),
                    message: String::new(),
                    dropped_before: 0,
                })
                .expect("send");
        }
        drop(sender);
        writer.written = 0;
        writer.run(receiver);
        let current = std::fs::read_to_string(&path).expect("current");
        assert!(current.len() <= 4096);
        assert!(
            current
                .lines()
                .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok())
        );
        assert!(dir.path().join("audit.log.1").exists());
        assert!(
            !dir.path()
                .join(format!("audit.log.{}", ROTATED_FILES + 1))
                .exists()
        );
    }
}
