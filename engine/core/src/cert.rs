//! Certificate and key checks without a TLS stack, for the config's `[[server.tls]]` pairs and
//! `ca_file`s, in the engine and in `shardgate-ctl` alike (`check` and `apply` refuse what the
//! engine would refuse, in the same words):
//!
//! - PEM with rustls-pki-types;
//! - the leaf's validity period, usage (not a CA, serverAuth allowed) and DNS names with
//!   rustls-webpki;
//! - whether the key is the certificate's: the key is loaded with *ring* as rustls' ring
//!   provider loads it (RSA as PKCS#1 or PKCS#8, then ECDSA P-256 and P-384 as SEC1 or PKCS#8,
//!   then Ed25519 as PKCS#8), and its public key, as a SubjectPublicKeyInfo, compared with the
//!   certificate's, as rustls' `CertifiedKey::keys_match` does.
//!
//! The engine's `tls` builds its rustls configs from what [`load_pair`] and [`ca_certs`] return,
//! so a pair these accept is one rustls accepts (a test there holds the two together).
//! Certificates already expired (or not yet valid) are refused; the `_at` variants take the
//! time, the plain ones read the clock.

use std::fmt;
use std::time::{Duration, SystemTime};

use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{alg_id, AlgorithmIdentifier, CertificateDer, PrivateKeyDer, UnixTime};

/// A certificate chain and its private key, PEM, as read from `[[server.tls]]` cert/key files.
#[derive(Clone, Copy)]
pub struct CertFiles<'a> {
    pub cert_path: &'a str,
    pub cert_pem: &'a [u8],
    pub key_path: &'a str,
    pub key_pem: &'a [u8],
}

/// Paths and sizes only: the key never reaches a log.
impl fmt::Debug for CertFiles<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert_path", &self.cert_path)
            .field("cert_pem_len", &self.cert_pem.len())
            .field("key_path", &self.key_path)
            .field("key_pem_len", &self.key_pem.len())
            .finish()
    }
}

/// A pair [`load_pair`] accepted: the chain (leaf first), the key, and the DNS names
/// (lowercase, `*.parent` for wildcards) the leaf is valid for.
pub struct CheckedPair {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub names: Vec<String>,
}

/// The names and the chain's length only: the key never reaches a log.
impl fmt::Debug for CheckedPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CheckedPair")
            .field("chain_len", &self.chain.len())
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Check one pair (for the config): Ok(list of DNS names the certificate is valid for,
/// lowercase, `*.parent` for wildcards).
pub fn check_pair(pair: &CertFiles<'_>) -> Result<Vec<String>, String> {
    check_pair_at(pair, UnixTime::now())
}

/// [`check_pair`] with the time the certificate must be valid at.
pub fn check_pair_at(pair: &CertFiles<'_>, now: UnixTime) -> Result<Vec<String>, String> {
    load_pair(pair, now).map(|p| p.names)
}

/// Parse and check one pair: the certificate valid at `now` for a server, the key one rustls
/// loads, and the certificate's. Errors name the file at fault and say why.
pub fn load_pair(pair: &CertFiles<'_>, now: UnixTime) -> Result<CheckedPair, String> {
    let (cert_path, key_path) = (pair.cert_path, pair.key_path);
    let chain = parse_certs(cert_path, pair.cert_pem)?;
    let (names, cert_spki) = {
        let leaf = chain.first().ok_or_else(|| no_certificate(cert_path))?;
        let invalid = |e: webpki::Error| {
            format!(
                "{cert_path}: certificate is not valid: {}",
                webpki_reason(&e)
            )
        };
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(invalid)?;
        check_leaf(&ee, now).map_err(invalid)?;
        let names = ee
            .valid_dns_names()
            .map(str::to_ascii_lowercase)
            .collect::<Vec<_>>();
        (names, ee.subject_public_key_info())
    };

    let key = match PrivateKeyDer::from_pem_slice(pair.key_pem) {
        Ok(key) => key,
        Err(pem::Error::NoItemsFound) => {
            let hint = if CertificateDer::pem_slice_iter(pair.key_pem)
                .next()
                .is_some()
            {
                " (the file holds a certificate, not a key)"
            } else {
                " (expected PEM 'BEGIN PRIVATE KEY', 'BEGIN RSA PRIVATE KEY' or \
                 'BEGIN EC PRIVATE KEY'; encrypted keys are not supported)"
            };
            return Err(format!("{key_path}: no private key found{hint}"));
        }
        Err(e) => return Err(format!("{key_path}: {}", pem_reason(&e))),
    };
    let key_spki = public_key_info(&key).ok_or_else(|| unsupported_key(key_path))?;
    if key_spki != cert_spki.as_ref() {
        return Err(format!(
            "{key_path}: the key does not match the certificate in {cert_path}"
        ));
    }
    Ok(CheckedPair { chain, key, names })
}

/// Why the key in `key_path` cannot be used.
pub fn unsupported_key(key_path: &str) -> String {
    format!(
        "{key_path}: unsupported key type (or a malformed key): RSA, ECDSA P-256/P-384 and \
         Ed25519 are supported"
    )
}

/// Every certificate in a PEM file, in order; an error naming `path` when there is none.
pub fn parse_certs(path: &str, pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem_bytes) {
        certs.push(item.map_err(|e| format!("{path}: {}", pem_reason(&e)))?);
    }
    if certs.is_empty() {
        return Err(no_certificate(path));
    }
    Ok(certs)
}

/// A `ca_file`'s certificates, each one usable as a trust anchor; an error naming `path` and
/// the certificate (counting from 1) when one is not.
pub fn ca_certs(path: &str, pem_bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = parse_certs(path, pem_bytes)?;
    for (n, cert) in certs.iter().enumerate() {
        webpki::anchor_from_trusted_cert(cert).map_err(|e| {
            format!(
                "{path}: certificate {} is not a usable CA certificate: {}",
                n + 1,
                webpki_reason(&e)
            )
        })?;
    }
    Ok(certs)
}

fn no_certificate(path: &str) -> String {
    format!("{path}: no certificate found (expected PEM 'BEGIN CERTIFICATE')")
}

fn pem_reason(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "malformed PEM: a section has no '-----END {}-----' line",
            String::from_utf8_lossy(end_marker).trim()
        ),
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: bad BEGIN line".to_owned(),
        pem::Error::Base64Decode(e) => format!("malformed PEM: bad base64 ({e})"),
        other => format!("malformed PEM: {other}"),
    }
}

/// What webpki checks of a server certificate on its own (no issuer): validity period at
/// `now`, not a CA, extended key usage allows serverAuth. With no trust anchor, path building
/// ends in `UnknownIssuer` once those pass; that one is expected.
fn check_leaf(ee: &webpki::EndEntityCert<'_>, now: UnixTime) -> Result<(), webpki::Error> {
    match ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[],
        &[],
        now,
        webpki::KeyUsage::server_auth(),
        None,
        None,
    ) {
        Ok(_) | Err(webpki::Error::UnknownIssuer) => Ok(()),
        Err(e) => Err(e),
    }
}

fn webpki_reason(e: &webpki::Error) -> String {
    use webpki::Error as W;
    match e {
        W::CertExpired { not_after, .. } => format!("expired on {}", rfc3339(*not_after)),
        W::CertNotValidYet { not_before, .. } => {
            format!("not valid until {}", rfc3339(*not_before))
        }
        W::InvalidCertValidity => "its notBefore is after its notAfter".to_owned(),
        W::CaUsedAsEndEntity => "it is a CA certificate, not a server certificate".to_owned(),
        #[allow(deprecated)]
        W::RequiredEkuNotFound => {
            "its extended key usage does not allow server authentication".to_owned()
        }
        W::RequiredEkuNotFoundContext(_) => {
            "its extended key usage does not allow server authentication".to_owned()
        }
        W::BadDer | W::BadDerTime | W::TrailingData(_) => "malformed DER".to_owned(),
        W::UnsupportedCertVersion => "unsupported X.509 version (expected v3)".to_owned(),
        W::UnsupportedCriticalExtension => "it has an unsupported critical extension".to_owned(),
        other => format!("{other:?}"),
    }
}

fn rfc3339(t: UnixTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + Duration::from_secs(t.as_secs()))
}

// ---------------------------------------------------------------------------------------------
// The key's public half, as rustls' ring provider derives it
// ---------------------------------------------------------------------------------------------

/// The PKCS#8 head of a P-256 key (version, algorithm ecPublicKey, curve prime256v1), for
/// wrapping a SEC1 key; rustls' ring provider uses the same bytes.
const PKCS8_PREFIX_P256: &[u8] = b"\x02\x01\x00\
      \x30\x13\
      \x06\x07\x2a\x86\x48\xce\x3d\x02\x01\
      \x06\x08\x2a\x86\x48\xce\x3d\x03\x01\x07";

/// The same for P-384 (curve secp384r1).
const PKCS8_PREFIX_P384: &[u8] = b"\x02\x01\x00\
     \x30\x10\
     \x06\x07\x2a\x86\x48\xce\x3d\x02\x01\
     \x06\x05\x2b\x81\x04\x00\x22";

/// The DER SubjectPublicKeyInfo of `key`'s public half, as rustls' ring provider derives it,
/// or `None` when no supported key type loads it. The types are tried in rustls' order: RSA,
/// ECDSA P-256, ECDSA P-384, Ed25519.
pub fn public_key_info(key: &PrivateKeyDer<'_>) -> Option<Vec<u8>> {
    let rsa = match key {
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).ok(),
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).ok(),
        _ => None,
    };
    if let Some(k) = rsa {
        return Some(spki(&alg_id::RSA_ENCRYPTION, k.public_key().as_ref()));
    }
    let rng = ring::rand::SystemRandom::new();
    for (sigalg, id, prefix) in [
        (
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            alg_id::ECDSA_P256,
            PKCS8_PREFIX_P256,
        ),
        (
            &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
            alg_id::ECDSA_P384,
            PKCS8_PREFIX_P384,
        ),
    ] {
        let pair = match key {
            PrivateKeyDer::Sec1(k) => {
                let pkcs8 = der(
                    TAG_SEQUENCE,
                    &[prefix, &der(TAG_OCTET_STRING, &[k.secret_sec1_der()])],
                );
                EcdsaKeyPair::from_pkcs8(sigalg, &pkcs8, &rng).ok()
            }
            PrivateKeyDer::Pkcs8(k) => {
                EcdsaKeyPair::from_pkcs8(sigalg, k.secret_pkcs8_der(), &rng).ok()
            }
            _ => None,
        };
        if let Some(k) = pair {
            return Some(spki(&id, k.public_key().as_ref()));
        }
    }
    if let PrivateKeyDer::Pkcs8(k) = key {
        if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(k.secret_pkcs8_der()) {
            return Some(spki(&alg_id::ED25519, k.public_key().as_ref()));
        }
    }
    None
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;

/// SubjectPublicKeyInfo ::= SEQUENCE { algorithm AlgorithmIdentifier, subjectPublicKey BIT
/// STRING }; `id` is the AlgorithmIdentifier's contents (without its SEQUENCE).
fn spki(id: &AlgorithmIdentifier, public_key: &[u8]) -> Vec<u8> {
    der(
        TAG_SEQUENCE,
        &[
            &der(TAG_SEQUENCE, &[id.as_ref()]),
            &der(TAG_BIT_STRING, &[&[0], public_key]),
        ],
    )
}

/// One DER element: `tag`, the definite length of `parts` together, then `parts`.
#[allow(
    clippy::cast_possible_truncation,
    reason = "a short-form length is below 0x80, a long form's width at most 8"
)]
fn der(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let be = len.to_be_bytes();
    let long = be
        .get(be.iter().take_while(|&&b| b == 0).count()..)
        .unwrap_or_default();
    let mut out = Vec::with_capacity(2 + long.len() + len);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        out.push(0x80 | long.len() as u8);
        out.extend_from_slice(long);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_are_short_then_long_form() {
        assert_eq!(der(0x04, &[]), [0x04, 0x00]);
        assert_eq!(der(0x04, &[&[7; 0x7f]])[..2], [0x04, 0x7f]);
        assert_eq!(der(0x04, &[&[7; 0x80]])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(
            der(0x04, &[&[7; 0x100], &[8]])[..4],
            [0x04, 0x82, 0x01, 0x01]
        );
        assert_eq!(der(0x30, &[&[1], &[2, 3]]), [0x30, 0x03, 1, 2, 3]);
    }

    #[test]
    fn ca_files_name_the_file_and_the_certificate() {
        assert_eq!(
            ca_certs("/etc/ca.pem", b"").expect_err("empty"),
            "/etc/ca.pem: no certificate found (expected PEM 'BEGIN CERTIFICATE')"
        );
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            ca_certs("/etc/ca.pem", bad).expect_err("bad DER"),
            "/etc/ca.pem: certificate 1 is not a usable CA certificate: malformed DER"
        );
    }
}
