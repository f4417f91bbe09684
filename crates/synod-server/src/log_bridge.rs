//! Records of the `log` crate (raft-engine logs through it) go to `tracing`, like everything
//! else. While the Raft log is being opened, raft-engine's errors and warnings about a damaged
//! tail are demoted to debug: the open judges them (a torn last write after a crash, or real
//! damage) and reports the outcome once at its true level, where an ERROR on every routine
//! recovery would teach operators to ignore errors.

struct Bridge;

impl log::Log for Bridge {
    fn enabled(&self, _metadata: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let judged_elsewhere = record.level() <= log::Level::Warn
            && record.target().starts_with("raft_engine")
            && synod_core::raft_log::opening();
        if judged_elsewhere {
            let demoted = log::Record::builder()
                .args(*record.args())
                .level(log::Level::Debug)
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build();
            let _ = tracing_log::format_trace(&demoted);
        } else {
            let _ = tracing_log::format_trace(record);
        }
    }

    fn flush(&self) {}
}

/// Installs the bridge as the process's `log` logger (once; later calls do nothing), after the
/// tracing subscriber: records below what it would show are not even built.
pub fn install() {
    use tracing_log::AsLog;
    if log::set_boxed_logger(Box::new(Bridge)).is_ok() {
        log::set_max_level(tracing::level_filters::LevelFilter::current().as_log());
    }
}
