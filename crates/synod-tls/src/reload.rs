//! PEM files and a configuration rebuilt when they change.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::TlsError;

/// What identifies one version of a file: rotation by rename changes the inode, rotation in
/// place changes the time or the length.
type Stamp = Option<(u64, SystemTime, u64)>;

fn stamp(path: &Path) -> Stamp {
    let metadata = std::fs::metadata(path).ok()?;
    Some((metadata.ino(), metadata.modified().ok()?, metadata.len()))
}

/// A value built from files, rebuilt at the first use after one of them changed.
pub(crate) struct Reloading<T> {
    what: String,
    paths: Vec<PathBuf>,
    build: Box<dyn Fn() -> Result<T, TlsError> + Send + Sync>,
    current: Mutex<(Vec<Stamp>, Arc<T>)>,
}

impl<T> Reloading<T> {
    /// Builds the value once (so a bad file fails at start) and keeps `build` for changes.
    pub(crate) fn new(
        what: String,
        paths: Vec<PathBuf>,
        build: impl Fn() -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloading<T>, TlsError> {
        let stamps = paths.iter().map(|p| stamp(p)).collect();
        let value = Arc::new(build()?);
        Ok(Reloading {
            what,
            paths,
            build: Box::new(build),
            current: Mutex::new((stamps, value)),
        })
    }

    /// The value for the current files: rebuilt if a file changed, the previous one if the new
    /// files do not make a valid configuration (a rotation half done must not refuse everyone).
    pub(crate) fn get(&self) -> Arc<T> {
        let stamps: Vec<Stamp> = self.paths.iter().map(|p| stamp(p)).collect();
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 != stamps {
            match (self.build)() {
                Ok(value) => {
                    tracing::info!(what = %self.what, "TLS files changed; new connections use them");
                    *current = (stamps, Arc::new(value));
                }
                Err(error) => {
                    tracing::error!(what = %self.what, %error, "TLS files changed but cannot be used; keeping the previous ones");
                    // Not retried until the files change again.
                    current.0 = stamps;
                }
            }
        }
        current.1.clone()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::File {
        path: path.to_owned(),
        message: error.to_string(),
    })
}

fn material(path: &Path, message: impl ToString) -> TlsError {
    TlsError::Material {
        path: path.to_owned(),
        message: message.to_string(),
    }
}

/// The certificates of a PEM file, leaf first.
pub(crate) fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| material(path, e))?;
    if certs.is_empty() {
        return Err(material(path, "no CERTIFICATE block"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 RSA or SEC1 EC).
pub(crate) fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| material(path, e))
}

/// The DER SubjectPublicKeyInfo of a PEM `PUBLIC KEY` file.
pub(crate) fn public_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = read(path)?;
    rustls_pki_types::SubjectPublicKeyInfoDer::from_pem_slice(&bytes)
        .map(|spki| spki.as_ref().to_vec())
        .map_err(|e| material(path, e))
}

/// A trust store from a PEM bundle.
pub(crate) fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certificates(path)? {
        store.add(cert).map_err(|e| material(path, e))?;
    }
    Ok(store)
}

/// The revocation lists of a CRL file, DER (etcd 3.6) or PEM (etcd 3.4 accepted both).
pub(crate) fn revocation_lists(
    path: &Path,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let bytes = read(path)?;
    if bytes.starts_with(b"-----BEGIN") {
        let lists = CertificateRevocationListDer::pem_slice_iter(&bytes)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| material(path, e))?;
        if lists.is_empty() {
            return Err(material(path, "no X509 CRL block"));
        }
        return Ok(lists);
    }
    Ok(vec![CertificateRevocationListDer::from(bytes)])
}
