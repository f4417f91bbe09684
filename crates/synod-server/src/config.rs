//! Member configuration: etcd's flag names, each also settable as a `SYNOD_*` environment variable
//! and in a TOML file given by `--config-file` (keys spelled like the flags, e.g. `data-dir`).
//! Precedence: command line, then environment, then file, then defaults.

use std::path::PathBuf;
use std::time::Duration;

pub use crate::args::ServerArgs;

/// Default client URL (etcd's port 2379).
pub const DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:2379";
/// Default peer URL (etcd's port 2380).
pub const DEFAULT_PEER_URL: &str = "http://127.0.0.1:2380";

/// Auto-compaction policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoCompaction {
    Off,
    /// Keep history of at least this long.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// The resolved configuration of a member.
#[derive(Debug, Clone)]
pub struct Config {
    pub name: String,
    /// Whether `--name` was given (a member restarted without it keeps its recorded name).
    pub name_given: bool,
    pub data_dir: PathBuf,
    pub listen_client_urls: Vec<String>,
    pub advertise_client_urls: Vec<String>,
    pub listen_peer_urls: Vec<String>,
    pub advertise_peer_urls: Vec<String>,
    /// (name, peer URLs) of every initial member.
    pub initial_cluster: Vec<(String, Vec<String>)>,
    pub initial_cluster_new: bool,
    pub initial_cluster_token: String,
    pub heartbeat_ms: u64,
    pub election_ms: u64,
    pub snapshot_count: u64,
    pub quota_backend_bytes: u64,
    pub request_bytes_max: usize,
    pub txn_ops_max: usize,
    pub concurrent_streams_max: u32,
    pub auto_compaction: AutoCompaction,
    pub watch_progress_notify_interval: Duration,
    /// Interval of the leader's cross-member HashKV check; `None` when off.
    pub corrupt_check_interval: Option<Duration>,
    /// Free disk bytes below which the member raises NOSPACE; 0 when off.
    pub disk_space_reserve_bytes: u64,
    /// TLS on the client and peer URLs.
    pub tls: crate::tls::TlsSettings,
    /// Whether a TLS client certificate's CN names the user (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// How long a simple token lives after its last use.
    pub auth_token_ttl_ms: u64,
    /// bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
    /// JWT tokens instead of simple ones (`--auth-token jwt,...`).
    pub jwt: Option<crate::jwt::JwtOptions>,
    /// `--max-connections-per-address` (0: no cap).
    pub connections_per_address_max: usize,
    /// `--cors`: origins whose pages may call the gateway (empty: the member's own only).
    pub cors: Vec<String>,
    /// `--host-whitelist`: `Host` names plaintext HTTP may use (`*`: any).
    pub host_whitelist: Vec<String>,
    /// Where the audit log goes, if anywhere.
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated.
    pub audit_log_bytes_max: u64,
    /// `--listen-metrics-urls`.
    pub listen_metrics_urls: Vec<String>,
    /// `--metrics extensive`.
    pub metrics_extensive: bool,
    /// Request spans exported over OTLP, when `--enable-distributed-tracing`.
    pub tracing: Option<crate::telemetry::TracingSettings>,
    /// ZooKeeper's client protocol, when served.
    pub zookeeper: Option<ZookeeperSettings>,
}

/// `--zookeeper-*`.
#[derive(Debug, Clone)]
pub struct ZookeeperSettings {
    pub address: String,
    /// Taken by default rather than asked for: failing to bind it is a warning, not an error.
    pub implicit: bool,
    pub min_session_timeout_ms: u32,
    pub max_session_timeout_ms: u32,
    /// `super:<hash>`'s hash.
    pub super_digest: Option<String>,
    pub max_buffer: usize,
    /// Four-letter words answered; `None` for all.
    pub four_letter_words: Option<Vec<String>>,
    /// Most connections from one address (0: no cap).
    pub max_client_connections: usize,
    /// TTL nodes allowed.
    pub extended_types: bool,
    /// How often empty containers and expired TTL nodes are removed.
    pub container_check_interval: Duration,
}

fn zookeeper_settings(args: &ServerArgs) -> Result<Option<ZookeeperSettings>, ConfigError> {
    let (address, implicit) = match (&args.zookeeper_addr, &args.listen_client_urls) {
        (Some(address), _) => (address.trim().to_owned(), false),
        (None, None) => ("127.0.0.1:2181".to_owned(), true),
        (None, Some(_)) => (String::new(), true),
    };
    if address.is_empty() {
        return Ok(None);
    }
    if address.parse::<std::net::SocketAddr>().is_err() {
        return Err(ConfigError(format!(
            "--zookeeper-addr {address:?}: expected HOST:PORT with an IP address"
        )));
    }
    let min = args.zookeeper_min_session_timeout.unwrap_or(6_000);
    let max = args.zookeeper_max_session_timeout.unwrap_or(60_000);
    if min == 0 || min > max {
        return Err(ConfigError(format!(
            "--zookeeper-min-session-timeout {min} must be positive and at most \
             --zookeeper-max-session-timeout {max}"
        )));
    }
    let super_digest = match args.zookeeper_super_digest.as_deref() {
        None | Some("") => None,
        Some(digest) => match digest.split_once(':') {
            Some(("super", hash)) if !hash.is_empty() => Some(hash.to_owned()),
            _ => {
                return Err(ConfigError(format!(
                    "--zookeeper-super-digest {digest:?}: expected super:<base64 SHA-1>"
                )));
            }
        },
    };
    Ok(Some(ZookeeperSettings {
        address,
        implicit,
        min_session_timeout_ms: min,
        max_session_timeout_ms: max,
        super_digest,
        max_buffer: args.zookeeper_max_buffer.unwrap_or(0xfffff) as usize,
        four_letter_words: match args.zookeeper_4lw_whitelist.as_deref().map(str::trim) {
            Some("*") => None,
            listed => Some(list(listed.unwrap_or("srvr"))),
        },
        max_client_connections: args.zookeeper_max_client_cnxns.unwrap_or(60),
        extended_types: args.zookeeper_extended_types.unwrap_or(false),
        container_check_interval: Duration::from_millis(
            args.zookeeper_container_check_interval_ms
                .unwrap_or(60_000)
                .max(1),
        ),
    }))
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn list(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `1h`, `30m`, `10s`, `500ms` or a bare number of seconds (etcd accepts hours for a bare
/// number in periodic compaction; see [`parse_retention`]).
pub fn parse_duration(value: &str) -> Result<Duration, ConfigError> {
    let value = value.trim();
    let bad = || {
        ConfigError(format!(
            "invalid duration {value:?} (use e.g. 500ms, 10s, 5m, 1h)"
        ))
    };
    let (number, unit) = match value.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(split) => value.split_at(split),
        None => (value, "s"),
    };
    let number: f64 = number.parse().map_err(|_| bad())?;
    let seconds = match unit {
        "ms" => number / 1000.0,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses `--auto-compaction-retention` for a mode, as etcd does: in periodic mode a bare number
/// is hours.
pub fn parse_retention(mode: &str, retention: &str) -> Result<AutoCompaction, ConfigError> {
    let retention = retention.trim();
    if retention.is_empty() || retention == "0" {
        return Ok(AutoCompaction::Off);
    }
    match mode {
        "periodic" => {
            let duration = if retention.chars().all(|c| c.is_ascii_digit()) {
                let hours: u64 = retention
                    .parse()
                    .map_err(|_| ConfigError(format!("invalid retention {retention:?}")))?;
                Duration::from_secs(hours * 3600)
            } else {
                parse_duration(retention)?
            };
            Ok(if duration.is_zero() {
                AutoCompaction::Off
            } else {
                AutoCompaction::Periodic(duration)
            })
        }
        "revision" => {
            let revisions: i64 = retention.parse().map_err(|_| {
                ConfigError(format!(
                    "invalid revision retention {retention:?} (a number of revisions)"
                ))
            })?;
            Ok(if revisions <= 0 {
                AutoCompaction::Off
            } else {
                AutoCompaction::Revision(revisions)
            })
        }
        other => Err(ConfigError(format!(
            "invalid --auto-compaction-mode {other:?} (periodic or revision)"
        ))),
    }
}

impl Config {
    /// Resolves flags (already merged with the environment by clap), the config file and defaults.
    pub fn resolve(args: ServerArgs) -> Result<Config, ConfigError> {
        let args = match &args.config_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("reading config file {}: {e}", path.display()))
                })?;
                let file: ServerArgs = toml::from_str(&text)
                    .map_err(|e| ConfigError(format!("config file {}: {e}", path.display())))?;
                args.or(file)
            }
            None => args,
        };
        let name_given = args.name.is_some();
        let name = args.name.clone().unwrap_or_else(|| "default".to_owned());
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("{name}.synod")));
        let listen_client_urls = list(
            args.listen_client_urls
                .as_deref()
                .unwrap_or(DEFAULT_CLIENT_URL),
        );
        let advertise_client_urls = args
            .advertise_client_urls
            .as_deref()
            .map(list)
            .unwrap_or_else(|| listen_client_urls.clone());
        let listen_peer_urls = list(args.listen_peer_urls.as_deref().unwrap_or(DEFAULT_PEER_URL));
        let advertise_peer_urls = list(
            args.initial_advertise_peer_urls
                .as_deref()
                .unwrap_or(DEFAULT_PEER_URL),
        );
        let initial_cluster = match &args.initial_cluster {
            Some(spec) => parse_initial_cluster(spec)?,
            None => vec![(name.clone(), advertise_peer_urls.clone())],
        };
        let initial_cluster_new = match args.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => true,
            "existing" => false,
            other => {
                return Err(ConfigError(format!(
                    "invalid --initial-cluster-state {other:?} (new or existing)"
                )));
            }
        };
        let heartbeat_ms = args.heartbeat_interval.unwrap_or(100);
        let election_ms = args.election_timeout.unwrap_or(1000);
        if heartbeat_ms == 0 || election_ms < 5 * heartbeat_ms {
            return Err(ConfigError(format!(
                "--election-timeout ({election_ms} ms) must be at least 5 times --heartbeat-interval ({heartbeat_ms} ms)"
            )));
        }
        if election_ms > 50_000 {
            return Err(ConfigError(format!(
                "--election-timeout ({election_ms} ms) is longer than 50000 ms"
            )));
        }
        let quota = match args.quota_backend_bytes.unwrap_or(0) {
            0 => 2 << 30,
            bytes => bytes,
        };
        let mode = args.auto_compaction_mode.as_deref().unwrap_or("periodic");
        let auto_compaction = parse_retention(
            mode,
            args.auto_compaction_retention.as_deref().unwrap_or("0"),
        )?;
        let progress = parse_duration(
            args.watch_progress_notify_interval
                .as_deref()
                .unwrap_or("10m"),
        )?;
        let corrupt_check =
            parse_duration(args.corrupt_check_interval.as_deref().unwrap_or("30s"))?;
        let listen_metrics_urls = list(args.listen_metrics_urls.as_deref().unwrap_or(""));
        let zookeeper = zookeeper_settings(&args)?;
        for url in listen_client_urls
            .iter()
            .chain(&listen_peer_urls)
            .chain(&listen_metrics_urls)
        {
            socket_address(url)?;
        }
        let tracing_settings = args.enable_distributed_tracing.unwrap_or(false).then(|| {
            crate::telemetry::TracingSettings {
                address: args
                    .distributed_tracing_address
                    .clone()
                    .unwrap_or_else(|| "localhost:4317".to_owned()),
                service_name: args
                    .distributed_tracing_service_name
                    .clone()
                    .unwrap_or_else(|| "synod".to_owned()),
                instance_id: args
                    .distributed_tracing_instance_id
                    .clone()
                    .unwrap_or_else(|| name.clone()),
                samples_per_million: args.distributed_tracing_sampling_rate.unwrap_or(0),
            }
        });
        let metrics_extensive = match args.metrics.as_deref().unwrap_or("basic") {
            "basic" => false,
            "extensive" => true,
            other => {
                return Err(ConfigError(format!(
                    "--metrics must be basic or extensive, not {other:?}"
                )));
            }
        };
        let tls = crate::tls::TlsSettings::resolve(
            &args,
            &listen_client_urls,
            &listen_peer_urls,
            &data_dir,
        )
        .map_err(ConfigError)?;
        let jwt =
            crate::jwt::parse_auth_token(args.auth_token.as_deref().unwrap_or("simple"), |text| {
                parse_duration(text).ok()
            })
            .map_err(ConfigError)?;
        let bcrypt_cost = match args.bcrypt_cost.unwrap_or(10) {
            cost @ 4..=31 => cost,
            other => {
                tracing::warn!(cost = other, "--bcrypt-cost must be 4 to 31; using 10");
                10
            }
        };
        Ok(Config {
            name,
            name_given,
            data_dir,
            listen_client_urls,
            advertise_client_urls,
            listen_peer_urls,
            advertise_peer_urls,
            initial_cluster,
            initial_cluster_new,
            initial_cluster_token: args
                .initial_cluster_token
                .unwrap_or_else(|| "etcd-cluster".to_owned()),
            heartbeat_ms,
            election_ms,
            snapshot_count: args.snapshot_count.unwrap_or(10_000).max(1),
            quota_backend_bytes: quota,
            request_bytes_max: args.max_request_bytes.unwrap_or(1_572_864) as usize,
            txn_ops_max: args.max_txn_ops.unwrap_or(128) as usize,
            concurrent_streams_max: args.max_concurrent_streams.unwrap_or(u32::MAX).max(1),
            auto_compaction,
            watch_progress_notify_interval: progress.max(Duration::from_millis(100)),
            corrupt_check_interval: (!corrupt_check.is_zero())
                .then(|| corrupt_check.max(Duration::from_millis(100))),
            disk_space_reserve_bytes: args.disk_space_reserve_bytes.unwrap_or(64 << 20),
            tls,
            client_cert_auth: args.client_cert_auth.unwrap_or(false),
            auth_token_ttl_ms: args.auth_token_ttl.unwrap_or(300).max(1) * 1000,
            bcrypt_cost,
            jwt,
            connections_per_address_max: args.max_connections_per_address.unwrap_or(0),
            cors: list(args.cors.as_deref().unwrap_or("")),
            host_whitelist: list(args.host_whitelist.as_deref().unwrap_or("*")),
            audit_log: args.audit_log.clone().filter(|p| !p.as_os_str().is_empty()),
            audit_log_bytes_max: args.audit_log_max_bytes.unwrap_or(100 << 20),
            listen_metrics_urls,
            metrics_extensive,
            tracing: tracing_settings,
            zookeeper,
        })
    }

    /// Ticks in one election timeout.
    pub fn election_ticks(&self) -> usize {
        (self.election_ms / self.heartbeat_ms) as usize
    }

    /// The smallest lease TTL: 1.5 election timeouts, rounded up to whole seconds (etcd).
    pub fn lease_ttl_min_seconds(&self) -> i64 {
        (3 * self.election_ms).div_ceil(2).div_ceil(1000) as i64
    }
}

fn parse_initial_cluster(spec: &str) -> Result<Vec<(String, Vec<String>)>, ConfigError> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for part in list(spec) {
        let (name, url) = part.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "invalid --initial-cluster entry {part:?} (expected name=url)"
            ))
        })?;
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_owned()),
            None => members.push((name.to_owned(), vec![url.to_owned()])),
        }
    }
    if members.is_empty() {
        return Err(ConfigError("--initial-cluster is empty".to_owned()));
    }
    Ok(members)
}

/// Returns the `host:port` of an `http://host:port` or `https://host:port` URL.
pub fn socket_address(url: &str) -> Result<String, ConfigError> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| {
            ConfigError(format!(
                "unsupported URL {url:?}: use http://host:port or https://host:port"
            ))
        })?;
    let host_port = rest.trim_end_matches('/');
    if !host_port.contains(':') || host_port.contains('/') {
        return Err(ConfigError(format!(
            "URL {url:?} must be http://host:port or https://host:port"
        )));
    }
    Ok(host_port.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_etcd() {
        let config = Config::resolve(ServerArgs::default()).expect("defaults are valid");
        assert_eq!(config.name, "default");
        assert_eq!(config.data_dir, PathBuf::from("default.synod"));
        assert_eq!(config.listen_client_urls, vec![DEFAULT_CLIENT_URL]);
        assert_eq!(
            config.initial_cluster,
            vec![("default".to_owned(), vec![DEFAULT_PEER_URL.to_owned()])]
        );
        assert_eq!(config.election_ticks(), 10);
        assert_eq!(config.lease_ttl_min_seconds(), 2);
        assert_eq!(config.request_bytes_max, 1_572_864);
        assert_eq!(config.auto_compaction, AutoCompaction::Off);
    }

    #[test]
    fn the_file_fills_what_flags_leave_unset() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("synod.toml");
        std::fs::write(
            &path,
            "name = \"from-file\"\nsnapshot-count = 7\nmax-txn-ops = 3\n",
        )
        .expect("write");
        let args = ServerArgs {
            config_file: Some(path),
            name: Some("from-flag".into()),
            ..ServerArgs::default()
        };
        let config = Config::resolve(args).expect("valid");
        assert_eq!(config.name, "from-flag");
        assert_eq!(config.snapshot_count, 7);
        assert_eq!(config.txn_ops_max, 3);
    }

    #[test]
    fn retention_follows_etcd() {
        assert_eq!(
            parse_retention("periodic", "1").ok(),
            Some(AutoCompaction::Periodic(Duration::from_secs(3600)))
        );
        assert_eq!(
            parse_retention("periodic", "30m").ok(),
            Some(AutoCompaction::Periodic(Duration::from_secs(1800)))
        );
        assert_eq!(
            parse_retention("revision", "1000").ok(),
            Some(AutoCompaction::Revision(1000))
        );
        assert!(parse_retention("sometimes", "1").is_err());
        assert!(
            Config::resolve(ServerArgs {
                election_timeout: Some(200),
                ..ServerArgs::default()
            })
            .is_err()
        );
    }
}
