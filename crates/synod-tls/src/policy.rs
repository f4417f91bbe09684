//! Protocol versions and cipher suites, named as etcd's flags name them (Go's `crypto/tls`).

use std::sync::Arc;

use rustls::SupportedCipherSuite;
use rustls::SupportedProtocolVersion;
use rustls::crypto::CryptoProvider;
use rustls::crypto::ring::cipher_suite as suite;

use crate::TlsError;

/// Which TLS versions and TLS 1.2 cipher suites a side accepts.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    tls13_only: bool,
    tls12_only: bool,
    /// TLS 1.2 suites in preference order; empty means rustls's defaults. As in Go, TLS 1.3
    /// suites are not configurable and always offered when TLS 1.3 is.
    tls12_suites: Vec<SupportedCipherSuite>,
}

/// Go's names of the TLS 1.2 suites rustls implements, with etcd's two legacy aliases.
const SUITES: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// Suites Go accepts and rustls deliberately does not implement (CBC, RC4, 3DES, static RSA key
/// exchange): refused with a reason rather than as unknown.
const REFUSED_SUITES: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    Tls12,
    Tls13,
}

fn version(value: &str) -> Result<Version, TlsError> {
    match value {
        "TLS1.2" => Ok(Version::Tls12),
        "TLS1.3" => Ok(Version::Tls13),
        other => Err(TlsError::Config(format!(
            "unexpected TLS version {other:?} (must be one of: TLS1.2, TLS1.3)"
        ))),
    }
}

impl Policy {
    /// Reads etcd's `--tls-min-version`, `--tls-max-version` and `--cipher-suites` (comma
    /// separated), with etcd's checks and messages.
    pub fn parse(
        min: Option<&str>,
        max: Option<&str>,
        cipher_suites: Option<&str>,
    ) -> Result<Policy, TlsError> {
        let min = min.filter(|v| !v.is_empty()).map(version).transpose()?;
        let max = max.filter(|v| !v.is_empty()).map(version).transpose()?;
        if let (Some(min), Some(max)) = (min, max)
            && min > max
        {
            let name = |v| match v {
                Version::Tls12 => "TLS1.2",
                Version::Tls13 => "TLS1.3",
            };
            return Err(TlsError::Config(format!(
                "min version ({}) is greater than max version ({})",
                name(min),
                name(max)
            )));
        }
        let mut tls12_suites = Vec::new();
        for name in cipher_suites
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
        {
            match SUITES.iter().find(|(known, _)| *known == name) {
                Some((_, found)) => {
                    if !tls12_suites.contains(found) {
                        tls12_suites.push(*found);
                    }
                }
                None if REFUSED_SUITES.contains(&name) => {
                    return Err(TlsError::Config(format!(
                        "TLS cipher suite {name:?} is not supported (CBC, RC4, 3DES and RSA key \
                         exchange are refused); supported: {}",
                        SUITES
                            .iter()
                            .map(|(n, _)| *n)
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
                None => {
                    return Err(TlsError::Config(format!(
                        "unexpected TLS cipher suite {name:?}"
                    )));
                }
            }
        }
        let tls13_only = min == Some(Version::Tls13);
        if tls13_only && !tls12_suites.is_empty() {
            return Err(TlsError::Config(
                "cipher suites cannot be configured when only TLS1.3 is enabled".to_owned(),
            ));
        }
        Ok(Policy {
            tls13_only,
            tls12_only: max == Some(Version::Tls12),
            tls12_suites,
        })
    }

    /// The protocol versions to offer.
    pub(crate) fn versions(&self) -> Vec<&'static SupportedProtocolVersion> {
        match (self.tls12_only, self.tls13_only) {
            (true, _) => vec![&rustls::version::TLS12],
            (_, true) => vec![&rustls::version::TLS13],
            _ => vec![&rustls::version::TLS13, &rustls::version::TLS12],
        }
    }

    /// ring's provider, restricted to the configured TLS 1.2 suites.
    pub(crate) fn provider(&self) -> Arc<CryptoProvider> {
        let mut provider = ring();
        if !self.tls12_suites.is_empty() {
            let tls13: Vec<SupportedCipherSuite> = provider
                .cipher_suites
                .iter()
                .copied()
                .filter(|s| s.version() == &rustls::version::TLS13)
                .collect();
            provider.cipher_suites = tls13.into_iter().chain(self.tls12_suites.clone()).collect();
        }
        Arc::new(provider)
    }
}

/// ring's provider. rustls 0.23.48 deprecates it because it has no post-quantum key exchange
/// (X25519MLKEM768 is in the aws-lc-rs provider only); ring is kept because aws-lc-rs adds a
/// large C build to every clean build on this project's two-core machines. Key exchange is
/// X25519, P-256 or P-384.
pub(crate) fn ring() -> CryptoProvider {
    #[allow(deprecated)]
    rustls::crypto::ring::default_provider()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(min: Option<&str>, max: Option<&str>, suites: Option<&str>) -> String {
        Policy::parse(min, max, suites)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn flags_are_checked_as_etcd_checks_them() {
        assert_eq!(
            error(Some("TLS1.1"), None, None),
            r#"unexpected TLS version "TLS1.1" (must be one of: TLS1.2, TLS1.3)"#
        );
        assert_eq!(
            error(Some("TLS1.3"), Some("TLS1.2"), None),
            "min version (TLS1.3) is greater than max version (TLS1.2)"
        );
        assert_eq!(
            error(
                Some("TLS1.3"),
                None,
                Some("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256")
            ),
            "cipher suites cannot be configured when only TLS1.3 is enabled"
        );
        assert_eq!(
            error(None, None, Some("TLS_NOPE")),
            r#"unexpected TLS cipher suite "TLS_NOPE""#
        );
        assert!(error(None, None, Some("TLS_RSA_WITH_AES_128_CBC_SHA")).contains("not supported"));
    }

    #[test]
    fn chosen_suites_restrict_tls12_only() {
        let policy = Policy::parse(
            None,
            None,
            Some("TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305, TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"),
        )
        .expect("valid");
        let provider = policy.provider();
        let tls12: Vec<_> = provider
            .cipher_suites
            .iter()
            .filter(|s| s.version() == &rustls::version::TLS12)
            .map(|s| s.suite())
            .collect();
        assert_eq!(
            tls12,
            vec![
                suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256.suite(),
                suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256.suite()
            ]
        );
        assert!(
            provider
                .cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS13)
        );
        assert_eq!(policy.versions().len(), 2);
    }
}
