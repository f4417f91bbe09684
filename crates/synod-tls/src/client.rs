//! Dialing a TLS member: the trust anchors, an optional client certificate, and a connector
//! for tonic channels.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::reload::{self, Reloading};
use crate::verify::AnyServer;
use crate::{Policy, TlsError};

/// The operating system's CA bundle (Debian's `ca-certificates`), used when no CA file is given.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// What a dialing side trusts and presents, named after etcdctl's flags.
#[derive(Debug, Clone, Default)]
pub struct ClientFiles {
    /// `--cacert`: the CAs a member's certificate must chain to (default: the system's).
    pub ca: Option<PathBuf>,
    /// `--cert`: the client certificate to present.
    pub cert: Option<PathBuf>,
    /// `--key`: its key.
    pub key: Option<PathBuf>,
    /// `--insecure-skip-tls-verify`: accept any server certificate.
    pub skip_verify: bool,
}

/// A dialing side's TLS configuration, rebuilt when its files change.
pub struct ClientTls {
    config: Reloading<ClientConfig>,
}

impl ClientTls {
    pub fn new(files: ClientFiles, policy: Policy) -> Result<ClientTls, TlsError> {
        if files.cert.is_some() != files.key.is_some() {
            return Err(TlsError::Config(
                "a client certificate needs both --cert and --key".to_owned(),
            ));
        }
        let paths = [files.ca.as_ref(), files.cert.as_ref(), files.key.as_ref()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let config = Reloading::new("client".to_owned(), paths, move || build(&files, &policy))?;
        Ok(ClientTls { config })
    }

    /// A connector for `tonic::transport::Endpoint::connect_with_connector`.
    pub fn connector(self: &Arc<Self>, connect_timeout: Duration) -> Connector {
        Connector {
            tls: self.clone(),
            connect_timeout,
        }
    }

    /// Connects to `host:port` and runs the handshake, verifying the certificate for `host`.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        connect_timeout: Duration,
    ) -> Result<TlsStream<TcpStream>, std::io::Error> {
        let name = ServerName::try_from(host.trim_start_matches('[').trim_end_matches(']'))
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
            .to_owned();
        let dial = async {
            let tcp = TcpStream::connect((name_host(&name), port)).await?;
            let _ = tcp.set_nodelay(true);
            tokio_rustls::TlsConnector::from(self.config.get())
                .connect(name, tcp)
                .await
        };
        tokio::time::timeout(connect_timeout, dial)
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS connection timed out")
            })?
    }
}

fn name_host(name: &ServerName<'_>) -> String {
    match name {
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        ServerName::DnsName(dns) => dns.as_ref().to_owned(),
        _ => String::new(),
    }
}

fn build(files: &ClientFiles, policy: &Policy) -> Result<ClientConfig, TlsError> {
    let provider = policy.provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&policy.versions())?;
    let builder = if files.skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
    } else {
        let ca = files.ca.as_deref().unwrap_or(Path::new(SYSTEM_ROOTS));
        builder.with_root_certificates(reload::roots(ca)?)
    };
    let mut config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            builder.with_client_auth_cert(reload::certificates(cert)?, reload::private_key(key)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Opens TLS connections for a tonic channel. Give tonic the member's URL with `http://`:
/// this connector does the TLS, whatever the scheme says, so tonic's own TLS (absent from this
/// build) is never asked for.
#[derive(Clone)]
pub struct Connector {
    tls: Arc<ClientTls>,
    connect_timeout: Duration,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let tls = self.tls.clone();
        let timeout = self.connect_timeout;
        Box::pin(async move {
            let host = uri.host().unwrap_or_default().to_owned();
            let port = uri.port_u16().unwrap_or(2379);
            let stream = tls.connect(&host, port, timeout).await?;
            Ok(TokioIo::new(stream))
        })
    }
}
