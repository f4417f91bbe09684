//! TLS for Synod's client and peer ports and for everything that dials them, on rustls (ring).
//!
//! - [`ServerTls`]: a listener's TLS with etcd's meanings: `--cert-file`/`--key-file`,
//!   `--trusted-ca-file` (setting it requires client certificates, as in etcd),
//!   `--client-cert-auth`, a CRL, and allowed CNs or hostnames for peers. [`ServerTls::accept`]
//!   runs one handshake under a deadline.
//! - [`ClientTls`] and its [`Connector`]: dialing a TLS member (peers, the CLI), with a CA bundle,
//!   an optional client certificate, or no verification at all for self-signed material.
//! - [`Policy`]: `--tls-min-version`, `--tls-max-version` and `--cipher-suites`, spelled as
//!   etcd (Go) spells them.
//! - [`generate`]: self-signed certificates (`--auto-tls`) and a CA with member and client
//!   certificates (`synod cluster up --tls`).
//!
//! Certificates, keys and CRLs are files that operators rotate: both sides check the files'
//! metadata at every handshake and rebuild their configuration when one changed, so rotation
//! needs no restart. A rotation that leaves unreadable files keeps the last good configuration
//! (and says so in the log) instead of refusing every client. The CA bundle is re-read too.
//!
//! This crate holds no policy about who may do what once connected: it only reports the
//! verified client certificate's common name ([`common_name`]) for the server to use.

mod cert;
mod client;
pub mod generate;
mod policy;
mod reload;
mod server;
mod verify;

pub use cert::{common_name, ip_addresses, spki_public_key};
pub use client::{ClientFiles, ClientTls, Connector};
pub use policy::Policy;
pub use rustls_pki_types::PrivateKeyDer;
pub use server::{ServerFiles, ServerTls};
pub use tokio_rustls::server::TlsStream as ServerStream;

use std::path::{Path, PathBuf};

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC), for other signers (JWT).
pub fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    reload::private_key(path)
}

/// The DER SubjectPublicKeyInfo of a PEM `PUBLIC KEY` file.
pub fn read_public_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    reload::public_key(path)
}

/// A TLS configuration that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A flag's value, with etcd's wording where etcd has one.
    #[error("{0}")]
    Config(String),
    #[error("cannot read {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Material { path: PathBuf, message: String },
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("generating a certificate: {0}")]
    Generate(String),
}
