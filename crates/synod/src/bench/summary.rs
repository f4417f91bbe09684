//! What a workload measured, as text or one JSON object, and the progress bar while it runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use synod_client::ClientError;

use super::other;

pub(super) fn new_histogram() -> Result<Histogram<u64>, ClientError> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).map_err(|e| other(e.to_string()))
}

pub(super) fn exit_code(healthy: bool) -> std::process::ExitCode {
    if healthy {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

pub(super) async fn progress_bar(issued: Arc<AtomicU64>, total: u64, quiet: bool) {
    use std::io::{IsTerminal, Write};
    if quiet || !std::io::stderr().is_terminal() {
        return;
    }
    loop {
        let done = issued.load(Ordering::Relaxed).min(total);
        let width = 40;
        let filled = (done * width / total.max(1)) as usize;
        eprint!(
            "\r[{}{}] {done}/{total}",
            "#".repeat(filled),
            " ".repeat(width as usize - filled)
        );
        let _ = std::io::stderr().flush();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a workload measured.
pub(super) struct Summary<'a> {
    pub(super) name: &'static str,
    pub(super) clients: usize,
    pub(super) histogram: &'a Histogram<u64>,
    pub(super) failed: u64,
    pub(super) elapsed: Duration,
    /// Workload-specific counts (events, missing events, lost leases, verify failures).
    pub(super) extra: serde_json::Map<String, serde_json::Value>,
}

impl Summary<'_> {
    pub(super) fn print(&self, json: bool) {
        let histogram = self.histogram;
        let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1000.0;
        let throughput = histogram.len() as f64 / self.elapsed.as_secs_f64();
        if json {
            let mut value = serde_json::json!({
                "workload": self.name,
                "clients": self.clients,
                "ok": histogram.len(),
                "failed": self.failed,
                "seconds": self.elapsed.as_secs_f64(),
                "throughput": throughput,
                "p50_ms": ms(0.5),
                "p90_ms": ms(0.9),
                "p99_ms": ms(0.99),
                "p999_ms": ms(0.999),
                "max_ms": histogram.max() as f64 / 1000.0,
            });
            if let Some(object) = value.as_object_mut() {
                object.extend(self.extra.clone());
            }
            println!("{value}");
            return;
        }
        eprintln!();
        println!("Summary ({}, {} clients):", self.name, self.clients);
        println!("  Total:      {:.4} secs", self.elapsed.as_secs_f64());
        println!(
            "  Requests:   {} ok, {} failed",
            histogram.len(),
            self.failed
        );
        println!("  Throughput: {throughput:.1} per sec");
        println!(
            "  Latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            histogram.max() as f64 / 1000.0
        );
        for (name, value) in &self.extra {
            println!("  {name}: {value}");
        }
    }
}
