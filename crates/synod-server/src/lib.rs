//! The runtime shell of a Synod member: it owns the threads, the sockets and the clock, and drives
//! the deterministic core (`synod-core`).
//!
//! - [`member::Member`]: bootstrap from the data directory, the node-loop thread, and the
//!   propose/read API the handlers use.
//! - [`kv`], [`watch`], [`lease`], [`maintenance`]: etcd's gRPC services; [`recipes`]: the Lock
//!   and Election services, built on the member's own KV, Watch and Lease.
//! - [`http`]: `/health`, `/version` and friends on the client port.
//! - [`config`]: flags, environment and config file.
//! - [`error`]: the single mapping of failures to etcd's codes and messages.
//!
//! Handlers never write state: they validate, propose or read, map the error and fill the header.
//! No lock is held across an `.await`.

pub mod args;
pub mod audit;
pub mod audit_log;
pub mod auth;
pub mod authority;
pub mod background;
pub mod browser;
pub mod caller;
pub mod command;
pub mod config;
pub mod connection;
pub mod console;
pub mod corrupt;
pub mod error;
#[cfg(feature = "fault-injection")]
pub mod fault_routes;
pub mod faults;
pub mod forward;
pub mod gateway;
pub mod http;
pub mod jwt;
pub mod kv;
pub mod lease;
pub mod log_bridge;
pub mod login_guard;
pub mod maintenance;
pub mod member;
pub mod membership;
pub mod metrics;
pub mod migrate;
pub mod peer;
pub mod recipes;
pub mod scrape;
pub mod serve;
pub mod telemetry;
pub mod tls;
pub mod transport;
pub mod validate;
pub mod watch;
pub mod zookeeper;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use synod_api::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, watch_server::WatchServer,
};
use synod_api::v3electionpb::election_server::ElectionServer;
use synod_api::v3lockpb::lock_server::LockServer;
use tokio::net::TcpListener;

use crate::config::Config;
use crate::member::Member;

/// gRPC allows this much more than `--max-request-bytes` so that oversize requests reach the
/// handler and get etcd's "request is too large" rather than a transport error (etcd: +512 KiB).
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// Builds the router that serves gRPC, the JSON gateway and HTTP on a client URL.
pub fn client_router(member: Arc<Member>) -> axum::Router {
    let decode_max = member.config.request_bytes_max + GRPC_OVERHEAD_BYTES;
    // The codec refuses a message over `decode_max` as grpc-go does (RESOURCE_EXHAUSTED);
    // tonic's own limit, above it, bounds what is buffered before the codec sees it.
    synod_api::codec::set_message_limit(decode_max);
    let buffer_max = 4 * decode_max;
    let services = Arc::new(gateway::Gateway {
        kv: Arc::new(kv::KvService::new(member.clone())),
        watch: Arc::new(watch::WatchService::new(member.clone())),
        lease: Arc::new(lease::LeaseService::new(member.clone())),
        maintenance: Arc::new(maintenance::MaintenanceService::new(member.clone())),
        cluster: Arc::new(maintenance::ClusterService::new(member.clone())),
        lock: Arc::new(recipes::LockService::new(member.clone())),
        election: Arc::new(recipes::ElectionService::new(member.clone())),
        auth: Arc::new(auth::AuthService::new(member.clone())),
    });
    let routes = tonic::service::Routes::new(
        KvServer::from_arc(services.kv.clone()).max_decoding_message_size(buffer_max),
    )
    .add_service(
        WatchServer::from_arc(services.watch.clone()).max_decoding_message_size(buffer_max),
    )
    .add_service(
        LeaseServer::from_arc(services.lease.clone()).max_decoding_message_size(buffer_max),
    )
    .add_service(
        MaintenanceServer::from_arc(services.maintenance.clone())
            .max_decoding_message_size(buffer_max),
    )
    .add_service(
        ClusterServer::from_arc(services.cluster.clone()).max_decoding_message_size(buffer_max),
    )
    .add_service(LockServer::from_arc(services.lock.clone()).max_decoding_message_size(buffer_max))
    .add_service(AuthServer::from_arc(services.auth.clone()).max_decoding_message_size(buffer_max))
    .add_service(
        ElectionServer::from_arc(services.election.clone()).max_decoding_message_size(buffer_max),
    )
    .add_service(
        synod_api::synodpb::migrate_server::MigrateServer::new(migrate::MigrateService::new(
            member.clone(),
        ))
        .max_decoding_message_size(buffer_max),
    );
    // What web pages may call: the gateway and the HTTP endpoints (gRPC is not reachable from a
    // page: its content type needs a preflight, and HTTP/1.1 to a gRPC path is refused).
    let browsers = axum::middleware::from_fn_with_state(
        Arc::new(browser::BrowserPolicy::new(
            &member.config.cors,
            &member.config.host_whitelist,
            &member.config.advertise_client_urls,
        )),
        browser::middleware,
    );
    let router = routes
        .into_axum_router()
        .layer(axum::middleware::from_fn(metrics::grpc::middleware))
        .merge(scrape::router(member.clone()))
        .merge(gateway::router(services, decode_max * 4 / 3 + 64 * 1024).layer(browsers.clone()))
        .merge(http::router(member.clone()).layer(browsers.clone()))
        .merge(console::router(member.clone()).layer(browsers));
    let router = if member.security.audit.is_on() {
        router.layer(axum::middleware::from_fn_with_state(
            member.clone(),
            audit::middleware,
        ))
    } else {
        router
    };
    #[cfg(feature = "fault-injection")]
    let router = router.merge(fault_routes::router(member));
    #[cfg(not(feature = "fault-injection"))]
    let _ = member;
    http_edges(router)
}

/// What etcd's mux does at the edges: gRPC only over HTTP/2 (an HTTP/1.1 request to a gRPC path is
/// an unknown page, not a call), and Go's plain 404 for every unknown path, where tonic would
/// answer any path with a gRPC "unimplemented".
fn http_edges(router: axum::Router) -> axum::Router {
    async fn not_found_or_unimplemented(
        request: axum::extract::Request,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        if is_grpc(&request) {
            return error::unimplemented_http();
        }
        (
            axum::http::StatusCode::NOT_FOUND,
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; charset=utf-8",
            )],
            "404 page not found\n",
        )
            .into_response()
    }
    async fn grpc_needs_http2(
        request: axum::extract::Request,
        next: axum::middleware::Next,
    ) -> axum::response::Response {
        let grpc_path = GRPC_SERVICE_PREFIXES
            .iter()
            .any(|prefix| request.uri().path().starts_with(prefix));
        if grpc_path && request.version() != axum::http::Version::HTTP_2 {
            return not_found_or_unimplemented(request).await;
        }
        next.run(request).await
    }
    router
        .fallback(not_found_or_unimplemented)
        .layer(axum::middleware::from_fn(grpc_needs_http2))
}

/// Paths of the gRPC services Synod serves.
const GRPC_SERVICE_PREFIXES: &[&str] = &[
    "/etcdserverpb.",
    "/v3lockpb.",
    "/v3electionpb.",
    "/synodpb.",
];

fn is_grpc(request: &axum::extract::Request) -> bool {
    request.version() == axum::http::Version::HTTP_2
        && request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("application/grpc"))
}

/// Warns about plaintext URLs that other machines can reach: everything on them, keys and
/// Raft traffic alike, travels in clear and anyone who can connect is served.
fn warn_if_plaintext_off_loopback(config: &Config) {
    let urls = config
        .listen_client_urls
        .iter()
        .chain(&config.listen_peer_urls);
    for url in urls {
        let Some(rest) = url.strip_prefix("http://") else {
            continue;
        };
        let host = rest
            .rsplit_once(':')
            .map_or(rest, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            tracing::warn!(%url, "serving without TLS on an address other machines can reach; use https:// URLs with --cert-file/--key-file (or --auto-tls)");
        }
    }
}

/// Runs a member until `shutdown` resolves, then stops it gracefully: the listeners close, the
/// node loop makes the state machine durable, and the function returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // Files and directories the member creates (the data directory, the log, the state machine,
    // snapshots, auto-TLS keys) are its user's alone, as etcd's are.
    rustix::process::umask(rustix::fs::Mode::from_bits_truncate(0o077));
    let budget = serve::ConnectionBudget::for_descriptor_limit(serve::raise_descriptor_limit())
        .with_per_address_max(config.connections_per_address_max);
    let tls = config.tls.build().context("setting up TLS")?;
    warn_if_plaintext_off_loopback(&config);
    let mut client_listeners = Vec::new();
    for url in &config.listen_client_urls {
        let address = config::socket_address(url)?;
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening for clients on {address}"))?;
        client_listeners.push(listener);
    }
    let mut metrics_listeners = Vec::new();
    for url in &config.listen_metrics_urls {
        let address = config::socket_address(url)?;
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening for metrics scrapes on {address}"))?;
        metrics_listeners.push((listener, url.starts_with("https://")));
    }
    metrics::metrics()
        .grpc
        .set_extensive(config.metrics_extensive);
    let zookeeper_listener = match &config.zookeeper {
        Some(settings) => zookeeper::bind(settings).await?,
        None => None,
    };
    let mut peer_listeners = Vec::new();
    for url in &config.listen_peer_urls {
        let address = config::socket_address(url)?;
        let listener = TcpListener::bind(&address)
            .await
            .with_context(|| format!("listening for peers on {address}"))?;
        peer_listeners.push(listener);
    }
    let (member, node_loop) = Member::open(config.clone(), tls.peer_dial.clone())
        .await
        .context("opening the member")?;
    let node_thread = std::thread::Builder::new()
        .name("synod-node".to_owned())
        .spawn(move || node_loop.run())?;
    background::spawn(member.clone());
    corrupt::spawn_periodic(member.clone());

    let (stop_sender, stop_receiver) = tokio::sync::watch::channel(false);
    let streams_max = config.concurrent_streams_max;
    let serve_on = |listener, router, tls, identify_clients| {
        tokio::spawn(serve::serve(
            listener,
            router,
            streams_max,
            budget.clone(),
            tls,
            identify_clients,
            stop_receiver.clone(),
        ))
    };
    let mut servers = Vec::new();
    for listener in peer_listeners {
        // Raft between members (the `synodpb.Peer` service), and `/version` as on etcd's port.
        let router = tonic::service::Routes::new(
            synod_api::synodpb::peer_server::PeerServer::new(peer::PeerService::new(
                member.clone(),
            ))
            .max_decoding_message_size(peer::PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(peer::PEER_MESSAGE_BYTES_MAX),
        )
        .into_axum_router()
        .merge(http::router(member.clone()));
        let router = http_edges(router);
        tracing::info!(address = %listener.local_addr()?, tls = tls.peer.is_some(), "listening for peers");
        servers.push(serve_on(listener, router, tls.peer.clone(), false));
    }
    // Peers are served first: they need this member to catch up, and it must not serve clients
    // before it has compared its data with theirs.
    if let Err(reason) = corrupt::check_at_start(&member).await {
        let _ = stop_sender.send(true);
        member.shutdown();
        let _ = tokio::task::spawn_blocking(move || node_thread.join()).await;
        anyhow::bail!("{reason}");
    }
    for listener in client_listeners {
        let router = client_router(member.clone());
        tracing::info!(address = %listener.local_addr()?, tls = tls.client.is_some(), "serving clients (gRPC and HTTP)");
        servers.push(serve_on(
            listener,
            router,
            tls.client.clone(),
            config.client_cert_auth,
        ));
    }
    if let (Some(listener), Some(settings)) = (zookeeper_listener, config.zookeeper.clone()) {
        tracing::info!(address = %listener.local_addr()?, "serving ZooKeeper clients");
        servers.push(tokio::spawn(zookeeper::serve(
            member.clone(),
            settings,
            listener,
            stop_receiver.clone(),
        )));
    }
    for (listener, https) in metrics_listeners {
        // `/metrics` and the health endpoints only, as on etcd's metrics URLs.
        let router = http_edges(scrape::router(member.clone()).merge(http::router(member.clone())));
        tracing::info!(address = %listener.local_addr()?, tls = https, "serving metrics");
        let tls = if https { tls.client.clone() } else { None };
        servers.push(serve_on(listener, router, tls, false));
    }
    tracing::info!(name = %config.name, data_dir = %config.data_dir.display(), "ready to serve");
    shutdown.await;
    tracing::info!("shutting down");
    let _ = stop_sender.send(true);
    member.shutdown();
    let joined = tokio::task::spawn_blocking(move || node_thread.join()).await;
    if !matches!(joined, Ok(Ok(()))) {
        anyhow::bail!("the node loop ended abnormally");
    }
    for server in servers {
        // Streams such as watches end when the process exits; do not wait on them for long.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), server).await;
    }
    Ok(())
}
