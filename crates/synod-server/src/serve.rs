//! The HTTP server under the client and peer ports: hyper's, set up as etcd's Go server is.
//!
//! - HTTP/2 allows `--max-concurrent-streams` streams per connection (etcd's default is
//!   2^32 - 1): kube-apiserver multiplexes hundreds of watches over one connection, and at
//!   hyper's default of 200 the 201st stream, and every unary call behind it, waits.
//! - The process starts with its soft descriptor limit raised to the hard one (Go's runtime does
//!   the same for etcd), and connections are capped below it, keeping a reserve of descriptors
//!   for the Raft log and the state machine: a flood of idle clients is refused at the door
//!   instead of making a log file fail to open, which would stop the member as a storage failure.
//! - An HTTP/2 `:authority` holding a whole URL (etcdctl 3.4) is accepted, as Go's server does
//!   ([`crate::authority`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::Watcher;
use hyper_util::service::TowerToHyperService;
use synod_tls::{ServerStream, ServerTls};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::authority::LenientAuthority;
use crate::connection::{ClientCertificate, RemoteAddress, Secure};

/// Descriptors kept free of client connections: log and state-machine files, snapshot files,
/// peer connections.
const DESCRIPTOR_RESERVE: u64 = 128;
/// Connections allowed when the descriptor limit is unknown or unlimited.
const CONNECTIONS_DEFAULT_MAX: usize = 64 * 1024;

/// Raises the soft limit on open descriptors to the hard limit; returns the limit in force.
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if let (Some(current), Some(maximum)) = (limit.current, limit.maximum)
        && current < maximum
    {
        let raised = Rlimit {
            current: Some(maximum),
            maximum: Some(maximum),
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = current, to = maximum, "raised the descriptor limit");
                return Some(maximum);
            }
            Err(error) => {
                tracing::warn!(%error, current, maximum, "cannot raise the descriptor limit");
            }
        }
    }
    getrlimit(Resource::Nofile).current
}

/// How many connections all listeners of the process may hold at once, and (with
/// `--max-connections-per-address`) how many one client address may hold.
#[derive(Debug, Clone)]
pub struct ConnectionBudget {
    open: Arc<AtomicUsize>,
    max: usize,
    per_address: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>,
    per_address_max: usize,
}

impl ConnectionBudget {
    /// A budget below the descriptor limit `limit` (`None`: unlimited or unknown).
    pub fn for_descriptor_limit(limit: Option<u64>) -> ConnectionBudget {
        let max = match limit {
            Some(limit) if limit < u64::MAX / 2 => {
                (limit.saturating_sub(DESCRIPTOR_RESERVE) as usize).max(16)
            }
            _ => CONNECTIONS_DEFAULT_MAX,
        };
        ConnectionBudget {
            open: Arc::new(AtomicUsize::new(0)),
            max,
            per_address: Arc::default(),
            per_address_max: 0,
        }
    }

    /// Caps the connections of one client address (0: no cap).
    pub fn with_per_address_max(mut self, per_address_max: usize) -> ConnectionBudget {
        self.per_address_max = per_address_max;
        self
    }

    fn lock_addresses(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.per_address
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A place for a connection from `address`, or why there is none.
    fn try_take(&self, address: IpAddr) -> Result<ConnectionSlot, Refused> {
        let taken = self.open.fetch_add(1, Ordering::Relaxed);
        if taken >= self.max {
            self.open.fetch_sub(1, Ordering::Relaxed);
            return Err(Refused::Total);
        }
        let mut slot = ConnectionSlot {
            budget: self.clone(),
            address: None,
        };
        if self.per_address_max > 0 {
            let mut addresses = self.lock_addresses();
            let count = addresses.entry(address).or_insert(0);
            if *count >= self.per_address_max {
                drop(addresses);
                return Err(Refused::Address);
            }
            *count += 1;
            slot.address = Some(address);
        }
        Ok(slot)
    }
}

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// The process's connection limit.
    Total,
    /// `--max-connections-per-address`.
    Address,
}

/// One open connection; gives its place back when dropped.
struct ConnectionSlot {
    budget: ConnectionBudget,
    /// Counted against this address too.
    address: Option<IpAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.budget.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(address) = self.address {
            let mut addresses = self.budget.lock_addresses();
            if let Some(count) = addresses.get_mut(&address) {
                *count -= 1;
                if *count == 0 {
                    addresses.remove(&address);
                }
            }
        }
    }
}

/// Lets one log line through per `interval` and counts the ones held back, so a flood of bad
/// or excess clients cannot flood the log.
struct LogThrottle {
    interval: Duration,
    /// When a line last went through, and how many were held back since.
    state: std::sync::Mutex<(Option<Instant>, u64)>,
}

impl LogThrottle {
    fn new(interval: Duration) -> LogThrottle {
        LogThrottle {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when this line may be logged.
    fn admit(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = Instant::now();
        if state
            .0
            .is_some_and(|last| now.duration_since(last) < self.interval)
        {
            state.1 += 1;
            return None;
        }
        let held_back = state.1;
        *state = (Some(now), 0);
        Some(held_back)
    }
}

/// Serves `router` on `listener` until `stop` turns true, then lets open connections finish
/// their requests (streams such as watches are cut when the process exits). With `tls`, every
/// connection first completes a TLS handshake (off the accept loop, under a deadline).
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    max_concurrent_streams: u32,
    budget: ConnectionBudget,
    tls: Option<Arc<ServerTls>>,
    identify_clients: bool,
    mut stop: watch::Receiver<bool>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(max_concurrent_streams);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    // Refused handshakes: one line a second. Connections refused at the door: one in ten.
    let refusals = Arc::new(LogThrottle::new(Duration::from_secs(1)));
    let door = LogThrottle::new(Duration::from_secs(10));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stopped| *stopped) => break,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors (or another transient failure): wait, do not spin or stop.
                tracing::warn!(%error, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let slot = match budget.try_take(remote.ip()) {
            Ok(slot) => slot,
            Err(refused) => {
                if let Some(held_back) = door.admit() {
                    let refused_count = held_back + 1;
                    match refused {
                        Refused::Total => tracing::warn!(
                            open = budget.max,
                            refused = refused_count,
                            "refusing client connections: the connection limit (the descriptor \
                             limit less a reserve for storage) is reached"
                        ),
                        Refused::Address => tracing::warn!(
                            address = %remote.ip(),
                            limit = budget.per_address_max,
                            refused = refused_count,
                            "refusing connections from an address that holds \
                             --max-connections-per-address already"
                        ),
                    }
                }
                drop(stream);
                continue;
            }
        };
        if let Err(error) = stream.set_nodelay(true) {
            // Without it a small response after a watch event waits for a delayed ACK.
            tracing::debug!(%error, "cannot set TCP_NODELAY");
        }
        let builder = builder.clone();
        let watcher = graceful.watcher();
        match &tls {
            None => {
                let service =
                    TowerToHyperService::new(Identified::new(router.clone(), remote, false, None));
                tokio::spawn(serve_connection(builder, stream, service, watcher, slot));
            }
            Some(tls) => {
                let tls = tls.clone();
                let refusals = refusals.clone();
                let router = router.clone();
                tokio::spawn(async move {
                    match tls.accept(stream).await {
                        Ok(stream) => {
                            // Under --client-cert-auth the certificate's CN names the user.
                            let certificate = identify_clients
                                .then(|| client_certificate(&stream))
                                .flatten();
                            let service = TowerToHyperService::new(Identified::new(
                                router,
                                remote,
                                true,
                                certificate,
                            ));
                            serve_connection(builder, stream, service, watcher, slot).await;
                        }
                        Err(reason) => {
                            if let Some(suppressed) = refusals.admit() {
                                tracing::warn!(side = tls.side(), %remote, reason, suppressed, "rejected connection: TLS handshake failed");
                            }
                        }
                    }
                });
            }
        }
    }
    drop(listener);
    // Requests in flight finish; long streams are cut at exit.
    let _ = tokio::time::timeout(Duration::from_secs(2), graceful.shutdown()).await;
}

/// The CN of the verified certificate a TLS client presented, if any.
fn client_certificate(stream: &ServerStream<TcpStream>) -> Option<ClientCertificate> {
    let leaf = stream.get_ref().1.peer_certificates()?.first()?;
    Some(ClientCertificate {
        common_name: synod_tls::common_name(leaf)?,
    })
}

/// The router, with the connection's remote address and client certificate attached to every
/// request.
#[derive(Clone)]
pub struct Identified {
    router: axum::Router,
    remote: RemoteAddress,
    secure: bool,
    certificate: Option<ClientCertificate>,
}

impl Identified {
    fn new(
        router: axum::Router,
        remote: SocketAddr,
        secure: bool,
        certificate: Option<ClientCertificate>,
    ) -> Identified {
        Identified {
            router,
            remote: RemoteAddress(remote),
            secure,
            certificate,
        }
    }
}

impl<B> tower_service::Service<axum::http::Request<B>> for Identified
where
    axum::Router: tower_service::Service<axum::http::Request<B>>,
{
    type Response = <axum::Router as tower_service::Service<axum::http::Request<B>>>::Response;
    type Error = <axum::Router as tower_service::Service<axum::http::Request<B>>>::Error;
    type Future = <axum::Router as tower_service::Service<axum::http::Request<B>>>::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        tower_service::Service::<axum::http::Request<B>>::poll_ready(&mut self.router, cx)
    }

    fn call(&mut self, mut request: axum::http::Request<B>) -> Self::Future {
        request.extensions_mut().insert(self.remote);
        if self.secure {
            request.extensions_mut().insert(Secure);
        }
        if let Some(certificate) = &self.certificate {
            request.extensions_mut().insert(certificate.clone());
        }
        self.router.call(request)
    }
}

/// Serves HTTP/1.1 or HTTP/2 on one connection until it ends; its slot is given back then.
async fn serve_connection<S>(
    builder: auto::Builder<TokioExecutor>,
    stream: S,
    service: TowerToHyperService<Identified>,
    watcher: Watcher,
    slot: ConnectionSlot,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder
        .serve_connection_with_upgrades(TokioIo::new(LenientAuthority::new(stream)), service)
        .into_owned();
    if let Err(error) = watcher.watch(connection).await {
        tracing::debug!(%error, "connection ended with an error");
    }
    drop(slot);
}
