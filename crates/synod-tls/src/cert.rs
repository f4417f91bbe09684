//! The subject common name of an X.509 certificate, read from its DER encoding.
//!
//! Only the path to the subject is walked (`Certificate` → `tbsCertificate` → `subject`), so
//! no general ASN.1 parser is needed. As Go's `pkix.Name` does, the last CN wins.

/// A DER element: its tag and contents, and what follows it.
fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, mut rest) = rest.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, after) = rest.split_at(count);
        rest = after;
        bytes.iter().fold(0usize, |n, &b| n << 8 | usize::from(b))
    };
    if rest.len() < length {
        return None;
    }
    let (contents, after) = rest.split_at(length);
    Some((tag, contents, after))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const VERSION: u8 = 0xa0;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The subject CN of a DER certificate, if it has one (`None` for malformed input).
pub fn common_name(der: &[u8]) -> Option<String> {
    let (tag, certificate, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = element(certificate)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut fields = tbs;
    let (tag, _, after) = element(fields)?;
    if tag == VERSION {
        fields = after;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        fields = element(fields)?.2;
    }
    let (tag, mut subject, _) = element(fields)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut found = None;
    while !subject.is_empty() {
        let (tag, mut set, after) = element(subject)?;
        subject = after;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (_, attribute, after) = element(set)?;
            set = after;
            let (tag, oid, value) = element(attribute)?;
            if tag == OID && oid == COMMON_NAME {
                let (kind, text, _) = element(value)?;
                found = Some(string(kind, text)?);
            }
        }
    }
    found
}

/// The IP addresses among a DER certificate's subject alternative names (empty when it has
/// none; `None` for malformed input).
pub fn ip_addresses(der: &[u8]) -> Option<Vec<std::net::IpAddr>> {
    const EXTENSIONS: u8 = 0xa3;
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const IP_ADDRESS: u8 = 0x87;
    let (_, certificate, _) = element(der)?;
    let (_, tbs, _) = element(certificate)?;
    let mut fields = tbs;
    let mut addresses = Vec::new();
    while !fields.is_empty() {
        let (tag, contents, after) = element(fields)?;
        fields = after;
        if tag != EXTENSIONS {
            continue;
        }
        let (_, mut extensions, _) = element(contents)?;
        while !extensions.is_empty() {
            let (_, extension, after) = element(extensions)?;
            extensions = after;
            let (tag, oid, mut rest) = element(extension)?;
            if tag != OID || oid != SUBJECT_ALT_NAME {
                continue;
            }
            // An optional `critical` BOOLEAN, then the OCTET STRING holding GeneralNames.
            let (mut tag, mut value, after) = element(rest)?;
            if tag == 0x01 {
                rest = after;
                (tag, value, _) = element(rest)?;
            }
            if tag != 0x04 {
                return None;
            }
            let (_, mut names, _) = element(value)?;
            while !names.is_empty() {
                let (tag, name, after) = element(names)?;
                names = after;
                if tag == IP_ADDRESS {
                    match name.len() {
                        4 => {
                            addresses.push(std::net::IpAddr::from(<[u8; 4]>::try_from(name).ok()?))
                        }
                        16 => {
                            addresses.push(std::net::IpAddr::from(<[u8; 16]>::try_from(name).ok()?))
                        }
                        _ => return None,
                    }
                }
            }
        }
    }
    Some(addresses)
}

/// The key inside a DER SubjectPublicKeyInfo (a PEM `PUBLIC KEY`): what ring verifies
/// signatures with.
pub fn spki_public_key(der: &[u8]) -> Option<Vec<u8>> {
    const BIT_STRING: u8 = 0x03;
    let (tag, info, _) = element(der)?;
    if tag != SEQUENCE {
        return None;
    }
    // The algorithm, then the key as a BIT STRING whose first byte counts unused bits (0).
    let (_, _, after_algorithm) = element(info)?;
    let (tag, bits, _) = element(after_algorithm)?;
    (tag == BIT_STRING && bits.first() == Some(&0)).then(|| bits[1..].to_vec())
}

/// The directory-string kinds a CN is written in.
fn string(kind: u8, bytes: &[u8]) -> Option<String> {
    match kind {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => String::from_utf8(bytes.to_vec()).ok(),
        // TeletexString, read as Latin-1 as Go does
        0x14 => Some(bytes.iter().map(|&b| char::from(b)).collect()),
        // BMPString
        0x1e => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate;

    #[test]
    fn the_common_name_of_a_generated_certificate() {
        let ca = generate::Authority::new("synod test CA").expect("ca");
        let issued = ca
            .issue("alice", &["127.0.0.1".to_owned()])
            .expect("issued");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("pem");
        assert_eq!(common_name(&der).as_deref(), Some("alice"));
        let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .expect("pem");
        assert_eq!(common_name(&ca_der).as_deref(), Some("synod test CA"));
    }

    #[test]
    fn the_ip_addresses_of_a_generated_certificate() {
        let ca = generate::Authority::new("synod test CA").expect("ca");
        let issued = ca
            .issue(
                "m1",
                &[
                    "127.0.0.1".to_owned(),
                    "localhost".to_owned(),
                    "::1".to_owned(),
                ],
            )
            .expect("issued");
        let der = rustls_pki_types::CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
            .expect("pem");
        assert_eq!(
            ip_addresses(&der),
            Some(vec![
                "127.0.0.1".parse().expect("ip"),
                "::1".parse().expect("ip")
            ])
        );
        let ca_der = rustls_pki_types::CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
            .expect("pem");
        assert_eq!(ip_addresses(&ca_der), Some(Vec::new()));
    }

    #[test]
    fn malformed_input_has_no_name() {
        assert_eq!(common_name(&[]), None);
        assert_eq!(common_name(&[0x30, 0x82, 0xff]), None);
        assert_eq!(common_name(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }

    use rustls_pki_types::pem::PemObject;
}
