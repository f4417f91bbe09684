//! etcd's JWT tokens (`--auth-token jwt,pub-key=PATH,priv-key=PATH,sign-method=RS256,ttl=5m`),
//! signed and verified with ring.
//!
//! A token carries `username`, `revision` (the auth revision when it was issued) and `exp`
//! (Unix seconds). Any member with the key verifies it without a lookup, so, unlike simple
//! tokens, a JWT survives restarts and works on every member at once; and because it carries its
//! revision, every JWT issued before a change to users or roles is refused afterwards ("revision
//! of auth store is old") until the client logs in again, as in etcd.
//!
//! Methods: HS256/384/512 (the `priv-key` file's bytes are the secret), RS256/384/512,
//! PS256/384/512, ES256/384 and EdDSA. Private keys are PEM PKCS#8 (`PRIVATE KEY`), or PKCS#1 for
//! RSA (`RSA PRIVATE KEY`); public keys PEM SPKI (`PUBLIC KEY`). With only a public key the
//! member verifies tokens and refuses to issue them, as etcd does.

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, KeyPair};
use serde::{Deserialize, Serialize};
use synod_tls::PrivateKeyDer;

/// etcd's text when a verify-only member is asked for a token (code Unknown).
pub const VERIFY_ONLY: &str = "auth: token signing attempted with verify-only key";

/// The options of `--auth-token jwt,...`.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtOptions {
    pub sign_method: String,
    pub pub_key: Option<PathBuf>,
    pub priv_key: Option<PathBuf>,
    pub ttl: std::time::Duration,
}

/// Parses etcd's `--auth-token` value: `simple`, or `jwt` with `key=value` options.
pub fn parse_auth_token(
    value: &str,
    parse_duration: impl Fn(&str) -> Option<std::time::Duration>,
) -> Result<Option<JwtOptions>, String> {
    let mut parts = value.split(',');
    let kind = parts.next().unwrap_or("").trim();
    let mut options = std::collections::BTreeMap::new();
    for part in parts {
        let Some((key, value)) = part.split_once('=') else {
            return Err(format!("invalid --auth-token option {part:?} (key=value)"));
        };
        if options.insert(key.trim(), value.trim()).is_some() {
            return Err(format!("invalid --auth-token: {key:?} given twice"));
        }
    }
    match kind {
        "simple" if options.is_empty() => Ok(None),
        "simple" => Err("--auth-token simple takes no options".to_owned()),
        "jwt" => {
            let sign_method = options
                .remove("sign-method")
                .ok_or("--auth-token jwt needs sign-method=...")?
                .to_owned();
            let ttl = match options.remove("ttl") {
                Some(ttl) => {
                    parse_duration(ttl).ok_or(format!("invalid --auth-token ttl {ttl:?}"))?
                }
                None => std::time::Duration::from_secs(300),
            };
            let jwt = JwtOptions {
                sign_method,
                pub_key: options.remove("pub-key").map(PathBuf::from),
                priv_key: options.remove("priv-key").map(PathBuf::from),
                ttl,
            };
            if let Some(unknown) = options.keys().next() {
                return Err(format!("invalid --auth-token option {unknown:?}"));
            }
            Ok(Some(jwt))
        }
        other => Err(format!("invalid --auth-token {other:?} (simple or jwt)")),
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: String,
}

/// What a sign-method needs from ring.
enum Family {
    Hmac(ring::hmac::Algorithm),
    Rsa(
        &'static dyn signature::RsaEncoding,
        &'static dyn signature::VerificationAlgorithm,
    ),
    Ecdsa(
        &'static signature::EcdsaSigningAlgorithm,
        &'static dyn signature::VerificationAlgorithm,
    ),
    EdDsa,
}

enum Signer {
    Hmac(ring::hmac::Key),
    Rsa(signature::RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

enum Verifier {
    Hmac(ring::hmac::Key),
    Public(&'static dyn signature::VerificationAlgorithm, Vec<u8>),
}

/// A member's JWT keys (module docs).
pub struct Jwt {
    method: String,
    signer: Option<Signer>,
    verifier: Verifier,
    ttl: std::time::Duration,
}

fn rng() -> ring::rand::SystemRandom {
    ring::rand::SystemRandom::new()
}

impl Jwt {
    /// Loads the keys of `options`, failing at start on a bad file or method.
    pub fn new(options: &JwtOptions) -> Result<Jwt, String> {
        let method = options.sign_method.as_str();
        let family = match method {
            "HS256" => Family::Hmac(ring::hmac::HMAC_SHA256),
            "HS384" => Family::Hmac(ring::hmac::HMAC_SHA384),
            "HS512" => Family::Hmac(ring::hmac::HMAC_SHA512),
            "RS256" => Family::Rsa(
                &signature::RSA_PKCS1_SHA256,
                &signature::RSA_PKCS1_2048_8192_SHA256,
            ),
            "RS384" => Family::Rsa(
                &signature::RSA_PKCS1_SHA384,
                &signature::RSA_PKCS1_2048_8192_SHA384,
            ),
            "RS512" => Family::Rsa(
                &signature::RSA_PKCS1_SHA512,
                &signature::RSA_PKCS1_2048_8192_SHA512,
            ),
            "PS256" => Family::Rsa(
                &signature::RSA_PSS_SHA256,
                &signature::RSA_PSS_2048_8192_SHA256,
            ),
            "PS384" => Family::Rsa(
                &signature::RSA_PSS_SHA384,
                &signature::RSA_PSS_2048_8192_SHA384,
            ),
            "PS512" => Family::Rsa(
                &signature::RSA_PSS_SHA512,
                &signature::RSA_PSS_2048_8192_SHA512,
            ),
            "ES256" => Family::Ecdsa(
                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &signature::ECDSA_P256_SHA256_FIXED,
            ),
            "ES384" => Family::Ecdsa(
                &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                &signature::ECDSA_P384_SHA384_FIXED,
            ),
            "EdDSA" => Family::EdDsa,
            other => return Err(format!("unsupported JWT sign-method {other:?}")),
        };
        if let Family::Hmac(algorithm) = family {
            let path = options
                .priv_key
                .as_ref()
                .ok_or("HMAC JWTs need priv-key=... (the secret)")?;
            let secret =
                std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
            return Ok(Jwt {
                method: method.to_owned(),
                signer: Some(Signer::Hmac(ring::hmac::Key::new(algorithm, &secret))),
                verifier: Verifier::Hmac(ring::hmac::Key::new(algorithm, &secret)),
                ttl: options.ttl,
            });
        }
        let signer = match &options.priv_key {
            None => None,
            Some(path) => {
                let key = synod_tls::read_private_key(path).map_err(|e| e.to_string())?;
                let der = key.secret_der();
                let bad = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
                Some(match (&family, &key) {
                    (Family::Rsa(encoding, _), PrivateKeyDer::Pkcs1(_)) => Signer::Rsa(
                        signature::RsaKeyPair::from_der(der).map_err(|e| bad(&e))?,
                        *encoding,
                    ),
                    (Family::Rsa(encoding, _), _) => Signer::Rsa(
                        signature::RsaKeyPair::from_pkcs8(der).map_err(|e| bad(&e))?,
                        *encoding,
                    ),
                    (Family::Ecdsa(..), PrivateKeyDer::Sec1(_)) => {
                        return Err(bad(
                            &"SEC1 EC keys are not read; convert with `openssl pkcs8 -topk8 -nocrypt`",
                        ));
                    }
                    (Family::Ecdsa(signing, _), _) => Signer::Ecdsa(
                        signature::EcdsaKeyPair::from_pkcs8(signing, der, &rng())
                            .map_err(|e| bad(&e))?,
                    ),
                    _ => Signer::Ed25519(
                        signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                            .map_err(|e| bad(&e))?,
                    ),
                })
            }
        };
        let algorithm: &'static dyn signature::VerificationAlgorithm = match family {
            Family::Rsa(_, verify) | Family::Ecdsa(_, verify) => verify,
            Family::Hmac(_) | Family::EdDsa => &signature::ED25519,
        };
        let public = match (&options.pub_key, &signer) {
            (Some(path), _) => {
                let der = synod_tls::read_public_key(path).map_err(|e| e.to_string())?;
                synod_tls::spki_public_key(&der)
                    .ok_or(format!("{}: not a PUBLIC KEY (SPKI)", path.display()))?
            }
            (None, Some(Signer::Rsa(pair, _))) => pair.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ecdsa(pair))) => pair.public_key().as_ref().to_vec(),
            (None, Some(Signer::Ed25519(pair))) => pair.public_key().as_ref().to_vec(),
            _ => return Err("--auth-token jwt needs pub-key=... or priv-key=...".to_owned()),
        };
        Ok(Jwt {
            method: method.to_owned(),
            signer,
            verifier: Verifier::Public(algorithm, public),
            ttl: options.ttl,
        })
    }

    /// A signed token for `username` at auth `revision`, valid for the configured TTL from
    /// `now_unix` seconds.
    pub fn sign(
        &self,
        username: &str,
        revision: u64,
        now_unix: u64,
    ) -> Result<String, &'static str> {
        let signer = self.signer.as_ref().ok_or(VERIFY_ONLY)?;
        let header = Header {
            alg: self.method.clone(),
            typ: "JWT".to_owned(),
        };
        let claims = Claims {
            username: username.to_owned(),
            revision,
            exp: now_unix + self.ttl.as_secs(),
        };
        let json = |value: Result<Vec<u8>, serde_json::Error>| {
            value
                .map(|bytes| URL_SAFE_NO_PAD.encode(bytes))
                .map_err(|_| "auth: encoding the token failed")
        };
        let input = format!(
            "{}.{}",
            json(serde_json::to_vec(&header))?,
            json(serde_json::to_vec(&claims))?
        );
        let signature = match signer {
            Signer::Hmac(key) => ring::hmac::sign(key, input.as_bytes()).as_ref().to_vec(),
            Signer::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public().modulus_len()];
                pair.sign(*encoding, &rng(), input.as_bytes(), &mut out)
                    .map_err(|_| "auth: signing the token failed")?;
                out
            }
            Signer::Ecdsa(pair) => pair
                .sign(&rng(), input.as_bytes())
                .map_err(|_| "auth: signing the token failed")?
                .as_ref()
                .to_vec(),
            Signer::Ed25519(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
    }

    /// The user and revision of a valid, unexpired token of this member's method.
    pub fn verify(&self, token: &str, now_unix: u64) -> Option<(String, u64)> {
        let (input, signature) = token.rsplit_once('.')?;
        let (header, claims) = input.split_once('.')?;
        let header: Header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
        if header.alg != self.method {
            return None;
        }
        let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
        let valid = match &self.verifier {
            Verifier::Hmac(key) => ring::hmac::verify(key, input.as_bytes(), &signature).is_ok(),
            Verifier::Public(algorithm, public) => {
                signature::UnparsedPublicKey::new(*algorithm, public)
                    .verify(input.as_bytes(), &signature)
                    .is_ok()
            }
        };
        if !valid {
            return None;
        }
        let claims: Claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
        (claims.exp > now_unix).then_some((claims.username, claims.revision))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minutes only: enough for these tests (the server passes its full duration parser).
    fn duration(text: &str) -> Option<std::time::Duration> {
        let minutes: u64 = text.strip_suffix('m')?.parse().ok()?;
        Some(std::time::Duration::from_secs(minutes * 60))
    }

    #[test]
    fn auth_token_flags_parse_as_etcd_reads_them() {
        assert_eq!(parse_auth_token("simple", duration), Ok(None));
        let jwt = parse_auth_token(
            "jwt,pub-key=a.pub,priv-key=a.key,sign-method=RS256,ttl=10m",
            duration,
        )
        .expect("valid")
        .expect("jwt");
        assert_eq!(jwt.sign_method, "RS256");
        assert_eq!(jwt.ttl, std::time::Duration::from_secs(600));
        assert!(parse_auth_token("jwt,sign-method=RS256,sign-method=ES256", duration).is_err());
        assert!(parse_auth_token("jwt,priv-key", duration).is_err());
        assert!(parse_auth_token("jwt,priv-key=x", duration).is_err());
        assert!(parse_auth_token("bearer", duration).is_err());
    }

    #[test]
    fn hmac_tokens_sign_verify_and_expire() {
        let dir = tempfile::tempdir().expect("temp dir");
        let secret = dir.path().join("secret");
        std::fs::write(&secret, b"a shared secret").expect("write");
        let jwt = Jwt::new(&JwtOptions {
            sign_method: "HS256".to_owned(),
            pub_key: None,
            priv_key: Some(secret),
            ttl: std::time::Duration::from_secs(60),
        })
        .expect("keys");
        let token = jwt.sign("alice", 7, 1_000).expect("signed");
        assert_eq!(jwt.verify(&token, 1_030), Some(("alice".to_owned(), 7)));
        assert_eq!(jwt.verify(&token, 1_060), None, "expired");
        let mut forged = token.clone();
        forged.replace_range(forged.len() - 3.., "AAA");
        assert_eq!(jwt.verify(&forged, 1_030), None);
    }

    #[test]
    fn ecdsa_tokens_verify_with_the_public_key_alone() {
        let dir = tempfile::tempdir().expect("temp dir");
        let pkcs8 = signature::EcdsaKeyPair::generate_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &rng(),
        )
        .expect("key");
        let pem_of = |label: &str, der: &[u8]| {
            format!(
                "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
                base64::engine::general_purpose::STANDARD.encode(der)
            )
        };
        let private = dir.path().join("key.pem");
        std::fs::write(&private, pem_of("PRIVATE KEY", pkcs8.as_ref())).expect("write");
        let signer = Jwt::new(&JwtOptions {
            sign_method: "ES256".to_owned(),
            pub_key: None,
            priv_key: Some(private),
            ttl: std::time::Duration::from_secs(60),
        })
        .expect("signer");
        let token = signer.sign("bob", 3, 10).expect("signed");
        assert_eq!(signer.verify(&token, 20), Some(("bob".to_owned(), 3)));
        // An RS256 verifier does not take an ES256 token.
        assert!(token.split('.').count() == 3);
        let Verifier::Public(_, public) = &signer.verifier else {
            panic!("a public key");
        };
        // A verify-only member: the same key as SPKI, no private key.
        let mut spki = vec![
            0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
            0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
        ];
        spki.extend_from_slice(public);
        let public_file = dir.path().join("key.pub");
        std::fs::write(&public_file, pem_of("PUBLIC KEY", &spki)).expect("write");
        let verifier = Jwt::new(&JwtOptions {
            sign_method: "ES256".to_owned(),
            pub_key: Some(public_file),
            priv_key: None,
            ttl: std::time::Duration::from_secs(60),
        })
        .expect("verifier");
        assert_eq!(verifier.verify(&token, 20), Some(("bob".to_owned(), 3)));
        assert_eq!(verifier.sign("bob", 3, 10), Err(VERIFY_ONLY));
    }
}
