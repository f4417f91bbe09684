//! Certificates made here: self-signed ones for `--auto-tls` and `--peer-auto-tls`, and a CA
//! that issues member and client certificates for `synod cluster up --tls` and for tests.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;

/// PEM text of one DER object (RFC 7468: base64 in lines of 64).
fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn failed(error: impl ToString) -> TlsError {
    TlsError::Generate(error.to_string())
}

/// 16 random bytes, positive as a DER integer.
fn serial() -> Result<Vec<u8>, TlsError> {
    let mut bytes = vec![0u8; 16];
    crate::policy::ring()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| failed("no randomness for a serial number"))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(bytes)
}

fn leaf_params(
    common_name: &str,
    hosts: &[String],
    validity: Duration,
) -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(hosts.to_vec()).map_err(failed)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "synod");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
    params.serial_number = Some(SerialNumber::from_slice(&serial()?));
    Ok(params)
}

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    /// The serial number, for revocation lists.
    pub serial: Vec<u8>,
}

impl Issued {
    /// Writes `<dir>/<name>.pem` and `<dir>/<name>-key.pem` (the key readable by its owner
    /// only); returns their paths.
    pub fn write(&self, dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), TlsError> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        write_file(&cert, self.cert_pem.as_bytes(), 0o644)?;
        write_file(&key, self.key_pem.as_bytes(), 0o600)?;
        Ok((cert, key))
    }
}

/// Writes `contents` to a new file at `path` with `mode`, replacing any earlier file.
pub fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let write = || -> std::io::Result<()> {
        let temporary = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    };
    write().map_err(|e| TlsError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A certificate authority whose key lives in memory.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl Authority {
    /// A new self-signed CA valid for ten years.
    pub fn new(common_name: &str) -> Result<Authority, TlsError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "synod");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(3650);
        params.serial_number = Some(SerialNumber::from_slice(&serial()?));
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.self_signed(&key).map_err(failed)?;
        Ok(Authority {
            issuer: Issuer::new(params, key),
            cert_pem: pem("CERTIFICATE", cert.der()),
        })
    }

    /// The CA certificate, PEM-encoded (what clients and peers trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A certificate for `common_name`, valid for the IP addresses and DNS names in `hosts`,
    /// for both server and client use, for one year.
    pub fn issue(&self, common_name: &str, hosts: &[String]) -> Result<Issued, TlsError> {
        let params = leaf_params(common_name, hosts, Duration::days(365))?;
        let key = KeyPair::generate().map_err(failed)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(failed)?;
        Ok(Issued {
            cert_pem: pem("CERTIFICATE", cert.der()),
            key_pem: pem("PRIVATE KEY", &key.serialize_der()),
            serial: params
                .serial_number
                .as_ref()
                .map(SerialNumber::to_bytes)
                .unwrap_or_default(),
        })
    }

    /// A DER revocation list that revokes the certificates with `serials`.
    pub fn revocation_list(&self, serials: &[Vec<u8>]) -> Result<Vec<u8>, TlsError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - Duration::hours(1),
            next_update: now + Duration::days(30),
            crl_number: SerialNumber::from_slice(&serial()?),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: now - Duration::minutes(1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let list = params.signed_by(&self.issuer).map_err(failed)?;
        Ok(list.der().to_vec())
    }
}

/// etcd's auto TLS: a self-signed certificate for the hosts of the listen URLs, written to
/// `<dir>/cert.pem` and `<dir>/key.pem` and reused if both exist. Returns the two paths.
pub fn self_signed(
    dir: &Path,
    hosts: &[String],
    validity_years: u32,
) -> Result<(PathBuf, PathBuf), TlsError> {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::File {
        path: dir.to_owned(),
        message: e.to_string(),
    })?;
    let mut params = leaf_params(
        "synod",
        hosts,
        Duration::days(365 * i64::from(validity_years.max(1))),
    )?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pair = KeyPair::generate().map_err(failed)?;
    let certificate = params.self_signed(&pair).map_err(failed)?;
    write_file(
        &key,
        pem("PRIVATE KEY", &pair.serialize_der()).as_bytes(),
        0o600,
    )?;
    write_file(
        &cert,
        pem("CERTIFICATE", certificate.der()).as_bytes(),
        0o644,
    )?;
    Ok((cert, key))
}
