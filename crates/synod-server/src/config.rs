//! Member configuration: etcd's flag names, each also settable as a `SYNOD_*` environment variable
//! and in a TOML file given by `--config-file` (keys spelled like the flags, e.g. `data-dir`).
//! Precedence: command line, then environment, then file, then defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Default client URL (etcd's port 2379).
pub const DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:2379";
/// Default peer URL (etcd's port 2380).
pub const DEFAULT_PEER_URL: &str = "http://127.0.0.1:2380";

/// Flags of `synod server`. Every field is optional here so that the file can fill the gaps.
#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerArgs {
    /// TOML file with any of these settings (keys as the flag names without dashes in front).
    #[arg(long, env = "SYNOD_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Human-readable name of this member.
    #[arg(long, env = "SYNOD_NAME")]
    pub name: Option<String>,
    /// Directory for the Raft log and the state-machine file [default: <name>.synod].
    #[arg(long, env = "SYNOD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to listen on for client traffic (gRPC and HTTP on the same port), comma-separated.
    #[arg(long, env = "SYNOD_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs to advertise to the cluster [default: the listen URLs].
    #[arg(long, env = "SYNOD_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic.
    #[arg(long, env = "SYNOD_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs of this member to advertise to the cluster.
    #[arg(long, env = "SYNOD_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster configuration, `name=peer-url,...` [default: <name>=<advertised peer URL>].
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` to bootstrap a cluster, `existing` to join one.
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token that makes cluster and member ids unique to this cluster.
    #[arg(long, env = "SYNOD_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// Time of one Raft tick (heartbeat), in milliseconds.
    #[arg(long, env = "SYNOD_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Election timeout, in milliseconds.
    #[arg(long, env = "SYNOD_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Applied entries between two compactions of the Raft log.
    #[arg(long, env = "SYNOD_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Size of the state-machine file that raises the NOSPACE alarm, in bytes (0: 2 GiB).
    #[arg(long, env = "SYNOD_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Largest request accepted, in bytes.
    #[arg(long, env = "SYNOD_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<u64>,
    /// Most operations in one txn.
    #[arg(long, env = "SYNOD_MAX_TXN_OPS")]
    pub max_txn_ops: Option<u64>,
    /// Most concurrent HTTP/2 streams (gRPC calls, watches) on one client connection (etcd's
    /// default: 4294967295).
    #[arg(long, env = "SYNOD_MAX_CONCURRENT_STREAMS")]
    pub max_concurrent_streams: Option<u32>,
    /// `periodic` (retention is a duration such as `1h` or `30m`) or `revision` (retention is a
    /// number of revisions to keep).
    #[arg(long, env = "SYNOD_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// How much history auto-compaction keeps; `0` turns it off.
    #[arg(long, env = "SYNOD_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Interval of progress notifications to watchers that asked for them (e.g. `10m`, `5s`).
    #[arg(long, env = "SYNOD_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub watch_progress_notify_interval: Option<String>,
    /// How often the leader compares every member's HashKV and raises the CORRUPT alarm on a
    /// mismatch (e.g. `30s`; `0` turns it off).
    #[arg(long, env = "SYNOD_CORRUPT_CHECK_INTERVAL")]
    pub corrupt_check_interval: Option<String>,
    /// Free bytes on the data directory's disk below which this member raises the NOSPACE alarm
    /// for the whole cluster, before a write can fail (`0` turns the check off).
    #[arg(long, env = "SYNOD_DISK_SPACE_RESERVE_BYTES")]
    pub disk_space_reserve_bytes: Option<u64>,
    /// Certificate (PEM chain) presented on `https://` client URLs.
    #[arg(long, env = "SYNOD_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Key of `--cert-file`.
    #[arg(long, env = "SYNOD_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle that client certificates must chain to; setting it requires a client certificate,
    /// as in etcd.
    #[arg(long, env = "SYNOD_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates (signed by `--trusted-ca-file`); a certificate's CN is then the
    /// user when the request carries no token.
    #[arg(long, env = "SYNOD_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub client_cert_auth: Option<bool>,
    /// Certificate revocation list (DER or PEM): a client certificate listed there is refused.
    #[arg(long, env = "SYNOD_CLIENT_CRL_FILE")]
    pub client_crl_file: Option<PathBuf>,
    /// Hostnames (comma-separated) one of which a client certificate must be valid for.
    #[arg(long, env = "SYNOD_CLIENT_CERT_ALLOWED_HOSTNAME")]
    pub client_cert_allowed_hostname: Option<String>,
    /// Serve `https://` client URLs with a generated self-signed certificate (under
    /// `<data-dir>/fixtures/client`) when no `--cert-file` is given.
    #[arg(long, env = "SYNOD_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub auto_tls: Option<bool>,
    /// Years a certificate generated by `--auto-tls` or `--peer-auto-tls` is valid.
    #[arg(long, env = "SYNOD_SELF_SIGNED_CERT_VALIDITY")]
    pub self_signed_cert_validity: Option<u32>,
    /// Certificate (PEM chain) for peer traffic, presented both when serving and when dialing
    /// peers.
    #[arg(long, env = "SYNOD_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Key of `--peer-cert-file`.
    #[arg(long, env = "SYNOD_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle that peers' certificates must chain to (both directions); setting it requires a
    /// certificate from every peer.
    #[arg(long, env = "SYNOD_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require a certificate (signed by `--peer-trusted-ca-file`) from every peer that connects.
    #[arg(long, env = "SYNOD_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub peer_client_cert_auth: Option<bool>,
    /// Certificate revocation list (DER or PEM) for peer certificates.
    #[arg(long, env = "SYNOD_PEER_CRL_FILE")]
    pub peer_crl_file: Option<PathBuf>,
    /// Serve `https://` peer URLs with a generated self-signed certificate (under
    /// `<data-dir>/fixtures/peer`) when no `--peer-cert-file` is given; peers' certificates are
    /// then not verified.
    #[arg(long, env = "SYNOD_PEER_AUTO_TLS", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub peer_auto_tls: Option<bool>,
    /// Common names (comma-separated) a peer certificate must carry one of.
    #[arg(long, env = "SYNOD_PEER_CERT_ALLOWED_CN")]
    pub peer_cert_allowed_cn: Option<String>,
    /// Hostnames (comma-separated) one of which a peer certificate must be valid for.
    #[arg(long, env = "SYNOD_PEER_CERT_ALLOWED_HOSTNAME")]
    pub peer_cert_allowed_hostname: Option<String>,
    /// Oldest TLS version accepted: TLS1.2 (default) or TLS1.3.
    #[arg(long, env = "SYNOD_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// Newest TLS version accepted: TLS1.2 or TLS1.3 (default).
    #[arg(long, env = "SYNOD_TLS_MAX_VERSION")]
    pub tls_max_version: Option<String>,
    /// TLS 1.2 cipher suites (comma-separated Go names, in preference order); TLS 1.3 suites are
    /// always on.
    #[arg(long, env = "SYNOD_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
}

impl ServerArgs {
    /// Fills every unset field from `other`.
    fn or(self, other: ServerArgs) -> ServerArgs {
        ServerArgs {
            config_file: self.config_file.or(other.config_file),
            name: self.name.or(other.name),
            data_dir: self.data_dir.or(other.data_dir),
            listen_client_urls: self.listen_client_urls.or(other.listen_client_urls),
            advertise_client_urls: self.advertise_client_urls.or(other.advertise_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(other.listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(other.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(other.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(other.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(other.initial_cluster_token),
            heartbeat_interval: self.heartbeat_interval.or(other.heartbeat_interval),
            election_timeout: self.election_timeout.or(other.election_timeout),
            snapshot_count: self.snapshot_count.or(other.snapshot_count),
            quota_backend_bytes: self.quota_backend_bytes.or(other.quota_backend_bytes),
            max_request_bytes: self.max_request_bytes.or(other.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(other.max_txn_ops),
            max_concurrent_streams: self.max_concurrent_streams.or(other.max_concurrent_streams),
            auto_compaction_mode: self.auto_compaction_mode.or(other.auto_compaction_mode),
            auto_compaction_retention: self
                .auto_compaction_retention
                .or(other.auto_compaction_retention),
            watch_progress_notify_interval: self
                .watch_progress_notify_interval
                .or(other.watch_progress_notify_interval),
            corrupt_check_interval: self.corrupt_check_interval.or(other.corrupt_check_interval),
            disk_space_reserve_bytes: self
                .disk_space_reserve_bytes
                .or(other.disk_space_reserve_bytes),
            cert_file: self.cert_file.or(other.cert_file),
            key_file: self.key_file.or(other.key_file),
            trusted_ca_file: self.trusted_ca_file.or(other.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(other.client_cert_auth),
            client_crl_file: self.client_crl_file.or(other.client_crl_file),
            client_cert_allowed_hostname: self
                .client_cert_allowed_hostname
                .or(other.client_cert_allowed_hostname),
            auto_tls: self.auto_tls.or(other.auto_tls),
            self_signed_cert_validity: self
                .self_signed_cert_validity
                .or(other.self_signed_cert_validity),
            peer_cert_file: self.peer_cert_file.or(other.peer_cert_file),
            peer_key_file: self.peer_key_file.or(other.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(other.peer_trusted_ca_file),
            peer_client_cert_auth: self.peer_client_cert_auth.or(other.peer_client_cert_auth),
            peer_crl_file: self.peer_crl_file.or(other.peer_crl_file),
            peer_auto_tls: self.peer_auto_tls.or(other.peer_auto_tls),
            peer_cert_allowed_cn: self.peer_cert_allowed_cn.or(other.peer_cert_allowed_cn),
            peer_cert_allowed_hostname: self
                .peer_cert_allowed_hostname
                .or(other.peer_cert_allowed_hostname),
            tls_min_version: self.tls_min_version.or(other.tls_min_version),
            tls_max_version: self.tls_max_version.or(other.tls_max_version),
            cipher_suites: self.cipher_suites.or(other.cipher_suites),
        }
    }
}

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
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> ConfigError {
        ConfigError(message.into())
    }
}

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
        for url in listen_client_urls.iter().chain(&listen_peer_urls) {
            socket_address(url)?;
        }
        let tls = crate::tls::TlsSettings::resolve(
            &args,
            &listen_client_urls,
            &listen_peer_urls,
            &data_dir,
        )?;
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
