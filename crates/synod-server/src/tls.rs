//! The member's TLS settings, from etcd's flags: what the client and peer listeners serve, and
//! how this member dials its peers. The handshakes themselves are `synod_tls`'s.
//!
//! A URL's scheme decides: `https://` listen URLs are served with TLS, `http://` ones without
//! (with a warning when they are not on loopback). Certificates given for a side that has no
//! `https://` URL are ignored with a warning, as etcd does.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use synod_tls::{ClientFiles, ClientTls, Policy, ServerFiles, ServerTls, TlsError};

use crate::args::ServerArgs;

/// Where a listener's certificate comes from.
#[derive(Debug, Clone)]
enum Material {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// `--auto-tls` / `--peer-auto-tls`: generated into `dir` for `hosts`.
    Generated {
        dir: PathBuf,
        hosts: Vec<String>,
        validity_years: u32,
    },
}

/// One side's listener settings.
#[derive(Debug, Clone)]
struct Side {
    material: Material,
    files: ServerFiles,
}

/// Resolved TLS settings of a member (no file is read until [`TlsSettings::build`]).
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    client: Option<Side>,
    peer: Option<Side>,
    /// How to dial peers whose URLs are `https://`.
    peer_dial: Option<ClientFiles>,
    policy: Policy,
}

/// The built TLS of a member.
#[derive(Clone, Default)]
pub struct Tls {
    /// For `https://` client listeners.
    pub client: Option<Arc<ServerTls>>,
    /// For `https://` peer listeners.
    pub peer: Option<Arc<ServerTls>>,
    /// For dialing `https://` peers.
    pub peer_dial: Option<Arc<ClientTls>>,
}

fn list(value: Option<&str>) -> Vec<String> {
    value
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The host of `scheme://host:port` (IPv6 brackets removed).
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1.trim_end_matches('/');
    let (host, _) = rest.rsplit_once(':')?;
    Some(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
}

impl TlsSettings {
    /// Reads the TLS flags for a member with these listen URLs and data directory.
    pub fn resolve(
        args: &ServerArgs,
        client_urls: &[String],
        peer_urls: &[String],
        data_dir: &Path,
    ) -> Result<TlsSettings, String> {
        let policy = Policy::parse(
            args.tls_min_version.as_deref(),
            args.tls_max_version.as_deref(),
            args.cipher_suites.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let validity_years = args.self_signed_cert_validity.unwrap_or(1);
        if validity_years == 0 {
            return Err(String::from(
                "--self-signed-cert-validity must be at least 1 (years)",
            ));
        }
        let client = side(
            SideArgs {
                name: "client",
                urls: client_urls,
                cert: &args.cert_file,
                key: &args.key_file,
                auto: args.auto_tls.unwrap_or(false),
                trusted_ca: &args.trusted_ca_file,
                client_cert_auth: args.client_cert_auth.unwrap_or(false),
                crl: &args.client_crl_file,
                allowed_cn: Vec::new(),
                allowed_hostnames: list(args.client_cert_allowed_hostname.as_deref()),
                fixtures: data_dir.join("fixtures").join("client"),
                validity_years,
                check_client_ip: false,
            },
            "--cert-file, --key-file",
        )?;
        let peer_auto = args.peer_auto_tls.unwrap_or(false);
        let peer = side(
            SideArgs {
                name: "peer",
                urls: peer_urls,
                cert: &args.peer_cert_file,
                key: &args.peer_key_file,
                auto: peer_auto,
                trusted_ca: &args.peer_trusted_ca_file,
                client_cert_auth: args.peer_client_cert_auth.unwrap_or(false),
                crl: &args.peer_crl_file,
                allowed_cn: list(args.peer_cert_allowed_cn.as_deref()),
                allowed_hostnames: list(args.peer_cert_allowed_hostname.as_deref()),
                fixtures: data_dir.join("fixtures").join("peer"),
                validity_years,
                check_client_ip: !args.peer_skip_client_san_verification.unwrap_or(false),
            },
            "--peer-cert-file, --peer-key-file",
        )?;
        // Dialing peers: with this member's peer certificate (etcd presents the same pair), and
        // without verifying theirs when the certificates are self-signed.
        let peer_dial = match &peer {
            Some(Side {
                material: Material::Files { cert, key },
                files,
            }) => Some(ClientFiles {
                ca: files.trusted_ca.clone(),
                cert: Some(cert.clone()),
                key: Some(key.clone()),
                skip_verify: false,
            }),
            Some(Side {
                material: Material::Generated { .. },
                ..
            }) => Some(ClientFiles {
                skip_verify: true,
                ..ClientFiles::default()
            }),
            None if args.peer_trusted_ca_file.is_some()
                || (args.peer_cert_file.is_some() && args.peer_key_file.is_some())
                || peer_auto =>
            {
                // Plaintext listener, TLS peers.
                Some(ClientFiles {
                    ca: args.peer_trusted_ca_file.clone(),
                    cert: args.peer_cert_file.clone(),
                    key: args.peer_key_file.clone(),
                    skip_verify: peer_auto,
                })
            }
            None => None,
        };
        Ok(TlsSettings {
            client,
            peer,
            peer_dial,
            policy,
        })
    }

    /// Whether client URLs are served with TLS.
    pub fn client_is_tls(&self) -> bool {
        self.client.is_some()
    }

    /// Generates missing self-signed material and builds the configurations (reading every
    /// file once, so a bad one stops the start with its name).
    pub fn build(&self) -> Result<Tls, TlsError> {
        let server = |side: &Option<Side>,
                      name: &'static str|
         -> Result<Option<Arc<ServerTls>>, TlsError> {
            let Some(side) = side else {
                return Ok(None);
            };
            let mut files = side.files.clone();
            match &side.material {
                Material::Files { cert, key } => {
                    files.cert = cert.clone();
                    files.key = key.clone();
                }
                Material::Generated {
                    dir,
                    hosts,
                    validity_years,
                } => {
                    let (cert, key) =
                        synod_tls::generate::self_signed(dir, hosts, *validity_years)?;
                    tracing::info!(side = name, cert = %cert.display(), "using a self-signed certificate (auto TLS)");
                    files.cert = cert;
                    files.key = key;
                }
            }
            Ok(Some(Arc::new(ServerTls::new(
                name,
                files,
                self.policy.clone(),
            )?)))
        };
        let peer_dial = match &self.peer_dial {
            Some(files) => Some(Arc::new(ClientTls::new(
                files.clone(),
                self.policy.clone(),
            )?)),
            None => None,
        };
        Ok(Tls {
            client: server(&self.client, "client")?,
            peer: server(&self.peer, "peer")?,
            peer_dial,
        })
    }
}

struct SideArgs<'a> {
    name: &'static str,
    urls: &'a [String],
    cert: &'a Option<PathBuf>,
    key: &'a Option<PathBuf>,
    auto: bool,
    trusted_ca: &'a Option<PathBuf>,
    client_cert_auth: bool,
    crl: &'a Option<PathBuf>,
    allowed_cn: Vec<String>,
    allowed_hostnames: Vec<String>,
    fixtures: PathBuf,
    validity_years: u32,
    check_client_ip: bool,
}

/// One side's listener settings, with etcd's start-up errors and warnings.
fn side(args: SideArgs<'_>, flags: &str) -> Result<Option<Side>, String> {
    let secure: Vec<&String> = args
        .urls
        .iter()
        .filter(|u| u.starts_with("https://"))
        .collect();
    let given = args.cert.is_some() || args.key.is_some();
    if secure.is_empty() {
        if given || args.auto || args.trusted_ca.is_some() || args.client_cert_auth {
            tracing::warn!(
                side = args.name,
                "TLS settings are ignored: no https:// {} URL",
                args.name
            );
        }
        return Ok(None);
    }
    if secure.len() != args.urls.len() {
        return Err(format!(
            "{} URLs mix http:// and https://; use one scheme",
            args.name
        ));
    }
    let material = match (args.cert, args.key) {
        (Some(cert), Some(key)) => {
            if args.auto {
                tracing::warn!(
                    side = args.name,
                    "ignoring auto TLS: certificate files are given"
                );
            }
            Material::Files {
                cert: cert.clone(),
                key: key.clone(),
            }
        }
        (None, None) if args.auto => Material::Generated {
            dir: args.fixtures,
            hosts: args.urls.iter().filter_map(|u| host_of(u)).collect(),
            validity_years: args.validity_years,
        },
        _ => {
            return Err(format!(
                "TLS key/cert ({flags}) must be provided for {} url {} with HTTPS scheme",
                args.name, secure[0]
            ));
        }
    };
    Ok(Some(Side {
        material,
        files: ServerFiles {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            trusted_ca: args.trusted_ca.clone(),
            client_cert_auth: args.client_cert_auth,
            crl: args.crl.clone(),
            allowed_common_names: args.allowed_cn,
            allowed_hostnames: args.allowed_hostnames,
            check_client_ip: args.check_client_ip,
        },
    }))
}
