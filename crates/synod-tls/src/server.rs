//! A listener's TLS: the server certificate, who must show a client certificate, and the checks
//! on it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::reload::{self, Reloading};
use crate::verify::AllowedNames;
use crate::{Policy, TlsError};

/// How long a client may take to finish its handshake (etcd 3.6.14's limit, against connections
/// that open and stall).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The files and switches of one side (client or peer), named after etcd's flags.
#[derive(Debug, Clone, Default)]
pub struct ServerFiles {
    /// `--cert-file` / `--peer-cert-file`: the chain this member presents, leaf first.
    pub cert: PathBuf,
    /// `--key-file` / `--peer-key-file`.
    pub key: PathBuf,
    /// `--trusted-ca-file` / `--peer-trusted-ca-file`: setting it requires a client certificate
    /// signed by one of these CAs, as etcd does.
    pub trusted_ca: Option<PathBuf>,
    /// `--client-cert-auth` / `--peer-client-cert-auth`.
    pub client_cert_auth: bool,
    /// `--client-crl-file` / `--peer-crl-file`: a presented certificate listed there is refused.
    pub crl: Option<PathBuf>,
    /// `--peer-cert-allowed-cn`: exact CNs accepted (empty: any).
    pub allowed_common_names: Vec<String>,
    /// `--peer-cert-allowed-hostname` / `--client-cert-allowed-hostname`: hostnames one of which
    /// the client certificate must be valid for (empty: any).
    pub allowed_hostnames: Vec<String>,
    /// etcd's SAN check on peers: a client certificate with IP addresses among its alternative
    /// names must name the address the connection comes from (`--peer-skip-client-san-verification`
    /// turns it off). Certificates with DNS names only pass (etcd would resolve them).
    pub check_client_ip: bool,
}

/// A listener's TLS configuration, rebuilt when its files change (crate docs).
pub struct ServerTls {
    side: &'static str,
    config: Reloading<ServerConfig>,
    check_client_ip: bool,
}

impl ServerTls {
    /// Builds the configuration of `side` ("client" or "peer", for messages) from `files`.
    pub fn new(
        side: &'static str,
        files: ServerFiles,
        policy: Policy,
    ) -> Result<ServerTls, TlsError> {
        if files.client_cert_auth && files.trusted_ca.is_none() {
            return Err(TlsError::Config(format!(
                "{side} certificate authentication needs a trusted CA file \
                 (--{}trusted-ca-file)",
                if side == "peer" { "peer-" } else { "" }
            )));
        }
        if !files.allowed_common_names.is_empty() && !files.allowed_hostnames.is_empty() {
            return Err(TlsError::Config(
                "allowed CN and allowed hostname are mutually exclusive (cn=[..], hostnames=[..])"
                    .to_owned(),
            ));
        }
        let paths = [
            Some(&files.cert),
            Some(&files.key),
            files.trusted_ca.as_ref(),
            files.crl.as_ref(),
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
        let check_client_ip = files.check_client_ip;
        let config = Reloading::new(format!("{side} server"), paths, move || {
            build(&files, &policy)
        })?;
        Ok(ServerTls {
            side,
            config,
            check_client_ip,
        })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.get()
    }

    /// Runs the TLS handshake on an accepted connection, within the handshake deadline.
    /// A refusal is returned as the reason to log (plaintext, unknown CA, missing or revoked
    /// client certificate, a CN that is not allowed, a stalled handshake).
    pub async fn accept(&self, stream: TcpStream) -> Result<TlsStream<TcpStream>, String> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        let remote = stream.peer_addr().ok().map(|a| a.ip());
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                if self.check_client_ip
                    && let Some(leaf) = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                {
                    let addresses = crate::cert::ip_addresses(leaf).unwrap_or_default();
                    if !addresses.is_empty() && !remote.is_some_and(|r| addresses.contains(&r)) {
                        return Err(format!(
                            "the client certificate's IP addresses {addresses:?} do not include \
                             the connection's {remote:?} (etcd's SAN check)"
                        ));
                    }
                }
                Ok(stream)
            }
            Ok(Err(error)) => Err(describe(&error)),
            Err(_) => Err(format!(
                "no TLS handshake within {}s",
                HANDSHAKE_TIMEOUT.as_secs()
            )),
        }
    }

    /// "client" or "peer".
    pub fn side(&self) -> &'static str {
        self.side
    }
}

/// A handshake failure in an operator's words.
fn describe(error: &std::io::Error) -> String {
    let text = error.to_string();
    if text.contains("InvalidContentType") || text.contains("corrupt message") {
        return format!("not a TLS client (plaintext on a TLS port?): {text}");
    }
    text
}

fn build(files: &ServerFiles, policy: &Policy) -> Result<ServerConfig, TlsError> {
    let provider = policy.provider();
    let certs = reload::certificates(&files.cert)?;
    let key = reload::private_key(&files.key)?;
    let verifier: Arc<dyn ClientCertVerifier> = match &files.trusted_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let mut builder = WebPkiClientVerifier::builder_with_provider(
                Arc::new(reload::roots(ca)?),
                provider.clone(),
            );
            if let Some(crl) = &files.crl {
                // Like etcd: a listed serial is refused; a certificate whose issuer published no
                // list here is not.
                builder = builder
                    .with_crls(reload::revocation_lists(crl)?)
                    .allow_unknown_revocation_status();
            }
            let inner = builder
                .build()
                .map_err(|e| TlsError::Config(format!("client certificate verifier: {e}")))?;
            if files.allowed_common_names.is_empty() && files.allowed_hostnames.is_empty() {
                inner
            } else {
                Arc::new(AllowedNames {
                    inner,
                    common_names: files.allowed_common_names.clone(),
                    hostnames: files.allowed_hostnames.clone(),
                })
            }
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&policy.versions())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
