//! The flags of `synod server` as given (command line, environment, config file), before they
//! are resolved into a [`crate::config::Config`].

use std::path::PathBuf;

use serde::Deserialize;

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
    /// Skip etcd's check that a peer certificate's IP addresses include the peer's own.
    #[arg(long, env = "SYNOD_PEER_SKIP_CLIENT_SAN_VERIFICATION", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub peer_skip_client_san_verification: Option<bool>,
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
    /// Token kind: `simple` (etcd's default; tokens live in the members' memory).
    #[arg(long, env = "SYNOD_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds a simple token lives after its last use.
    #[arg(long, env = "SYNOD_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of password hashes (4 to 31).
    #[arg(long, env = "SYNOD_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Most connections one client address may hold at once (0: no cap; the process's cap,
    /// below its descriptor limit, always applies).
    #[arg(long, env = "SYNOD_MAX_CONNECTIONS_PER_ADDRESS")]
    pub max_connections_per_address: Option<usize>,
    /// Origins (comma-separated, `*` for any) whose web pages may call the JSON gateway and the
    /// HTTP endpoints [default: only the member's own origin].
    #[arg(long, env = "SYNOD_CORS")]
    pub cors: Option<String>,
    /// Hosts (comma-separated, `*` for any) that plaintext HTTP requests may name in `Host`.
    #[arg(long, env = "SYNOD_HOST_WHITELIST")]
    pub host_whitelist: Option<String>,
    /// JSON-lines log of auth changes, admin RPCs and refused requests (off when unset).
    #[arg(long, env = "SYNOD_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Size at which the audit log is rotated (five older files are kept).
    #[arg(long, env = "SYNOD_AUDIT_LOG_MAX_BYTES")]
    pub audit_log_max_bytes: Option<u64>,
    /// More URLs serving `/metrics` and `/health` (and nothing else), comma-separated; `/metrics`
    /// is also served on the client URLs.
    #[arg(long, env = "SYNOD_LISTEN_METRICS_URLS")]
    pub listen_metrics_urls: Option<String>,
    /// Where to serve ZooKeeper's client protocol (HOST:PORT); empty turns it off [default:
    /// 127.0.0.1:2181 when --listen-client-urls is not given, else off].
    #[arg(long, env = "SYNOD_ZOOKEEPER_ADDR")]
    pub zookeeper_addr: Option<String>,
    /// Shortest session timeout a ZooKeeper client gets, in ms (ZooKeeper's minSessionTimeout).
    #[arg(long, env = "SYNOD_ZOOKEEPER_MIN_SESSION_TIMEOUT")]
    pub zookeeper_min_session_timeout: Option<u32>,
    /// Longest session timeout a ZooKeeper client gets, in ms (maxSessionTimeout).
    #[arg(long, env = "SYNOD_ZOOKEEPER_MAX_SESSION_TIMEOUT")]
    pub zookeeper_max_session_timeout: Option<u32>,
    /// `super:<base64 SHA-1>` digest that makes a ZooKeeper connection super user
    /// (zookeeper.DigestAuthenticationProvider.superDigest).
    #[arg(long, env = "SYNOD_ZOOKEEPER_SUPER_DIGEST")]
    pub zookeeper_super_digest: Option<String>,
    /// Allow TTL nodes (ZooKeeper's zookeeper.extendedTypesEnabled) [default: false].
    #[arg(long, env = "SYNOD_ZOOKEEPER_EXTENDED_TYPES", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub zookeeper_extended_types: Option<bool>,
    /// How often the leader removes empty containers and expired TTL nodes, in ms
    /// (znode.container.checkIntervalMs) [default: 60000].
    #[arg(long, env = "SYNOD_ZOOKEEPER_CONTAINER_CHECK_INTERVAL_MS")]
    pub zookeeper_container_check_interval_ms: Option<u64>,
    /// Four-letter words answered, comma-separated, `*` for all (ZooKeeper's
    /// 4lw.commands.whitelist) [default: srvr].
    #[arg(
        long = "zookeeper-4lw-whitelist",
        env = "SYNOD_ZOOKEEPER_4LW_WHITELIST"
    )]
    pub zookeeper_4lw_whitelist: Option<String>,
    /// Most ZooKeeper connections from one address; 0 for no cap (maxClientCnxns) [default:
    /// 60].
    #[arg(long, env = "SYNOD_ZOOKEEPER_MAX_CLIENT_CNXNS")]
    pub zookeeper_max_client_cnxns: Option<usize>,
    /// Largest ZooKeeper frame in bytes (jute.maxbuffer) [default: 1048575].
    #[arg(long, env = "SYNOD_ZOOKEEPER_MAX_BUFFER")]
    pub zookeeper_max_buffer: Option<u32>,
    /// `basic`, or `extensive` to also export `grpc_server_handling_seconds`.
    #[arg(long, env = "SYNOD_METRICS")]
    pub metrics: Option<String>,
    /// Export request spans over OTLP/gRPC (off by default).
    #[arg(long, env = "SYNOD_ENABLE_DISTRIBUTED_TRACING", num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub enable_distributed_tracing: Option<bool>,
    /// The OTLP/gRPC collector [default: localhost:4317].
    #[arg(long, env = "SYNOD_DISTRIBUTED_TRACING_ADDRESS")]
    pub distributed_tracing_address: Option<String>,
    /// `service.name` of the spans [default: synod].
    #[arg(long, env = "SYNOD_DISTRIBUTED_TRACING_SERVICE_NAME")]
    pub distributed_tracing_service_name: Option<String>,
    /// `service.instance.id` of the spans [default: the member's name].
    #[arg(long, env = "SYNOD_DISTRIBUTED_TRACING_INSTANCE_ID")]
    pub distributed_tracing_instance_id: Option<String>,
    /// Requests traced per million among those whose caller does not trace them [default: 0].
    #[arg(long, env = "SYNOD_DISTRIBUTED_TRACING_SAMPLING_RATE")]
    pub distributed_tracing_sampling_rate: Option<u32>,
}

impl ServerArgs {
    /// Fills every unset field from `other`.
    pub(crate) fn or(self, other: ServerArgs) -> ServerArgs {
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
            peer_skip_client_san_verification: self
                .peer_skip_client_san_verification
                .or(other.peer_skip_client_san_verification),
            tls_min_version: self.tls_min_version.or(other.tls_min_version),
            tls_max_version: self.tls_max_version.or(other.tls_max_version),
            cipher_suites: self.cipher_suites.or(other.cipher_suites),
            auth_token: self.auth_token.or(other.auth_token),
            auth_token_ttl: self.auth_token_ttl.or(other.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost.or(other.bcrypt_cost),
            max_connections_per_address: self
                .max_connections_per_address
                .or(other.max_connections_per_address),
            cors: self.cors.or(other.cors),
            host_whitelist: self.host_whitelist.or(other.host_whitelist),
            listen_metrics_urls: self.listen_metrics_urls.or(other.listen_metrics_urls),
            metrics: self.metrics.or(other.metrics),
            zookeeper_addr: self.zookeeper_addr.or(other.zookeeper_addr),
            zookeeper_min_session_timeout: self
                .zookeeper_min_session_timeout
                .or(other.zookeeper_min_session_timeout),
            zookeeper_max_session_timeout: self
                .zookeeper_max_session_timeout
                .or(other.zookeeper_max_session_timeout),
            zookeeper_super_digest: self.zookeeper_super_digest.or(other.zookeeper_super_digest),
            zookeeper_max_buffer: self.zookeeper_max_buffer.or(other.zookeeper_max_buffer),
            zookeeper_4lw_whitelist: self
                .zookeeper_4lw_whitelist
                .or(other.zookeeper_4lw_whitelist),
            zookeeper_max_client_cnxns: self
                .zookeeper_max_client_cnxns
                .or(other.zookeeper_max_client_cnxns),
            zookeeper_extended_types: self
                .zookeeper_extended_types
                .or(other.zookeeper_extended_types),
            zookeeper_container_check_interval_ms: self
                .zookeeper_container_check_interval_ms
                .or(other.zookeeper_container_check_interval_ms),
            enable_distributed_tracing: self
                .enable_distributed_tracing
                .or(other.enable_distributed_tracing),
            distributed_tracing_address: self
                .distributed_tracing_address
                .or(other.distributed_tracing_address),
            distributed_tracing_service_name: self
                .distributed_tracing_service_name
                .or(other.distributed_tracing_service_name),
            distributed_tracing_instance_id: self
                .distributed_tracing_instance_id
                .or(other.distributed_tracing_instance_id),
            distributed_tracing_sampling_rate: self
                .distributed_tracing_sampling_rate
                .or(other.distributed_tracing_sampling_rate),
            audit_log: self.audit_log.or(other.audit_log),
            audit_log_max_bytes: self.audit_log_max_bytes.or(other.audit_log_max_bytes),
        }
    }
}
