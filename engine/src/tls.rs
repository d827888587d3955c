//! TLS configuration: the downstream server config (certificates chosen by SNI), the upstream
//! client configs (system roots or a per-upstream CA file), and the description of an upstream
//! TLS failure for a 502 body. No socket I/O here: the connection code wraps its streams with
//! `monoio-rustls` (docs/decisions/0007-tls.md). The certificate checks these configs build on
//! are [`crate::cert`]'s, without rustls, so the config runs them in `shardgate-ctl` too
//! ([`check_pair`] and [`CertFiles`] are re-exported here).
//!
//! Everything uses rustls with the *ring* provider, named explicitly (never the process-wide
//! default provider, never aws-lc-rs).
//!
//! - [`server_config`]: TLS 1.2 and 1.3, ALPN exactly `http/1.1`, one certificate per
//!   `[[server.tls]]` entry chosen by SNI (exact name, then `*.parent`, else the first entry).
//!   Resumption: rustls' in-memory session cache (256 sessions) plus stateless tickets
//!   (`ring::Ticketer`, ChaCha20-Poly1305, keys rotated every 6 hours), one ticket key per
//!   process shared by every config built (each shard builds its own): a client's next
//!   connection usually lands on another shard, and the shared key lets it resume there.
//! - [`client_config`]: one per upstream per shard, each with its own in-memory cache of 256
//!   client sessions.
//! - Certificates already expired (or not yet valid) when loaded are refused (by
//!   [`crate::cert`]); the `_at` variants take the time, the plain ones read the clock.

use std::io;
use std::sync::Arc;

use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::UnixTime;

/// The only application protocol spoken on either side.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// TLS 1.3 first, then 1.2.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Client sessions remembered per upstream config (rustls' default).
const CLIENT_SESSIONS: usize = 256;

pub use crate::cert::{check_pair, check_pair_at, CertFiles};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

/// Build the downstream TLS config: TLS 1.2 and 1.3, ALPN exactly ["http/1.1"], certificates
/// chosen by SNI. Refuses certificates expired or not yet valid now.
pub fn server_config(certs: &[CertFiles<'_>]) -> Result<Arc<ServerConfig>, String> {
    server_config_at(certs, UnixTime::now())
}

/// [`server_config`] with the time certificates must be valid at.
pub fn server_config_at(
    certs: &[CertFiles<'_>],
    now: UnixTime,
) -> Result<Arc<ServerConfig>, String> {
    let provider = provider();
    let mut loaded = Vec::with_capacity(certs.len());
    for pair in certs {
        loaded.push(load_pair(pair, &provider, now)?);
    }
    let resolver = SniResolver::new(loaded).ok_or("no TLS certificate configured")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS server setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    // `session_storage` stays rustls' default: an in-memory cache of 256 sessions (TLS 1.2
    // session ids). Tickets make resumption stateless (TLS 1.3 and 1.2 tickets).
    config.ticketer = shared_ticketer()?;
    Ok(Arc::new(config))
}

/// The process's session-ticket key: every server config (each shard builds its own) shares
/// it, so a ticket issued by one shard resumes on another (a client's next connection usually
/// lands on another shard).
fn shared_ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, String> {
    static TICKETER: std::sync::OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> =
        std::sync::OnceLock::new();
    TICKETER
        .get_or_init(|| rustls::crypto::ring::Ticketer::new().ok())
        .clone()
        .ok_or_else(|| "TLS server setup: cannot make a session ticket key".to_owned())
}

/// A certificate chain with its key, and the DNS names (lowercase) it is valid for.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// A pair [`crate::cert::load_pair`] checked, loaded into rustls.
fn load_pair(
    pair: &CertFiles<'_>,
    provider: &CryptoProvider,
    now: UnixTime,
) -> Result<Loaded, String> {
    let checked = crate::cert::load_pair(pair, now)?;
    // The check loaded the key as this provider does, and matched it with the certificate.
    let signing_key = provider
        .key_provider
        .load_private_key(checked.key)
        .map_err(|_| crate::cert::unsupported_key(pair.key_path))?;
    Ok(Loaded {
        key: Arc::new(CertifiedKey::new(checked.chain, signing_key)),
        names: checked.names,
    })
}

/// Picks a certificate by SNI. Built once per config: names are lowercase and `resolve`
/// parses and allocates nothing (a case-insensitive compare per name; configs hold a few).
#[derive(Debug)]
struct SniResolver {
    /// Chains with keys, in config order; never empty; the first is the default.
    keys: Vec<Arc<CertifiedKey>>,
    /// (DNS name, index into `keys`), in config order.
    exact: Vec<(Box<str>, usize)>,
    /// (parent of a `*.parent` name, index into `keys`), in config order.
    wildcard: Vec<(Box<str>, usize)>,
}

impl SniResolver {
    fn new(loaded: Vec<Loaded>) -> Option<Self> {
        if loaded.is_empty() {
            return None;
        }
        let mut keys = Vec::with_capacity(loaded.len());
        let (mut exact, mut wildcard) = (Vec::new(), Vec::new());
        for (i, l) in loaded.into_iter().enumerate() {
            for name in l.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.push((parent.into(), i)),
                    None => exact.push((name.into_boxed_str(), i)),
                }
            }
            keys.push(l.key);
        }
        Some(Self {
            keys,
            exact,
            wildcard,
        })
    }

    /// The index of the certificate for `sni`: an exact name, then a `*.parent` name one label
    /// up, else the first certificate (also when the client sent no SNI).
    fn pick(&self, sni: Option<&str>) -> usize {
        let Some(sni) = sni else { return 0 };
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        if let Some((_, i)) = self.exact.iter().find(|(n, _)| n.eq_ignore_ascii_case(sni)) {
            return *i;
        }
        if let Some((label, parent)) = sni.split_once('.') {
            if !label.is_empty() {
                if let Some((_, i)) = self
                    .wildcard
                    .iter()
                    .find(|(p, _)| p.eq_ignore_ascii_case(parent))
                {
                    return *i;
                }
            }
        }
        0
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.keys
            .get(self.pick(client_hello.server_name()))
            .cloned()
    }
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// The OS trust store (rustls-native-certs), or webpki-roots when it yields no certificate.
/// Call once per process (reads files).
pub fn system_roots() -> Arc<RootCertStore> {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "reading the system's trusted certificates");
    }
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(native.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "system trusted certificates that could not be parsed"
        );
    }
    if added == 0 {
        tracing::info!("no system trusted certificates found; using the webpki-roots bundle");
        store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    Arc::new(store)
}

/// Upstream TLS config: trust `ca` (path and PEM, one or more CA certificates) instead of
/// `roots` when given; ALPN ["http/1.1"]; session resumption with an in-memory cache of 256
/// sessions (the default `Resumption`). Build one per upstream per shard so each shard has its
/// own cache. `roots` is shared, not copied.
pub fn client_config(
    roots: &Arc<RootCertStore>,
    ca: Option<(&str, &[u8])>,
) -> Result<Arc<ClientConfig>, String> {
    let roots = match ca {
        None => Arc::clone(roots),
        Some((path, pem_bytes)) => {
            let mut store = RootCertStore::empty();
            for cert in crate::cert::ca_certs(path, pem_bytes)? {
                store.add(cert).map_err(|e| format!("{path}: {e}"))?;
            }
            Arc::new(store)
        }
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)
        .map_err(|e| format!("TLS client setup: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
    config.resumption = Resumption::in_memory_sessions(CLIENT_SESSIONS);
    Ok(Arc::new(config))
}

// ---------------------------------------------------------------------------------------------
// Upstream failures
// ---------------------------------------------------------------------------------------------

/// The descriptions [`describe_upstream_error`] returns: static, ASCII, no `"` or `\`.
mod desc {
    pub const UNKNOWN_ISSUER: &str = "upstream certificate not trusted (unknown issuer)";
    pub const EXPIRED: &str = "upstream certificate expired";
    pub const NOT_YET_VALID: &str = "upstream certificate not yet valid";
    pub const WRONG_NAME: &str = "upstream certificate not valid for the host name";
    pub const REVOKED: &str = "upstream certificate revoked";
    pub const REVOCATION_UNKNOWN: &str = "upstream certificate revocation status unknown";
    pub const BAD_SIGNATURE: &str = "upstream certificate has a bad signature";
    pub const UNSUPPORTED_SIGNATURE: &str =
        "upstream certificate signed with an unsupported algorithm";
    pub const MALFORMED: &str = "upstream certificate malformed";
    pub const PURPOSE: &str = "upstream certificate not valid for server authentication";
    pub const CERT_OTHER: &str = "upstream certificate rejected";
    pub const NO_CERT: &str = "upstream presented no certificate";
    pub const NO_CIPHER: &str = "TLS handshake failure: no shared cipher suite";
    pub const VERSION: &str = "TLS handshake failure: no shared protocol version";
    pub const INCOMPATIBLE: &str = "TLS handshake failure: upstream TLS parameters incompatible";
    pub const ALERT_HANDSHAKE: &str =
        "TLS handshake failure: upstream sent a handshake_failure alert";
    pub const ALERT_VERSION: &str = "TLS handshake failure: upstream refused the protocol version";
    pub const ALERT_ALPN: &str = "TLS handshake failure: upstream refused ALPN http/1.1";
    pub const ALERT_CLIENT_CERT: &str =
        "TLS handshake failure: upstream requires a client certificate";
    pub const ALERT_NAME: &str =
        "TLS handshake failure: upstream does not know the host name (SNI)";
    pub const ALERT_OTHER: &str = "upstream sent a fatal TLS alert";
    pub const NO_ALPN: &str = "upstream did not agree to ALPN http/1.1";
    pub const PROTOCOL: &str = "TLS protocol error from upstream";
    pub const CLOSED: &str = "upstream closed the connection during the TLS handshake";
    pub const OTHER: &str = "TLS error";

    #[cfg(test)]
    pub const ALL: &[&str] = &[
        UNKNOWN_ISSUER,
        EXPIRED,
        NOT_YET_VALID,
        WRONG_NAME,
        REVOKED,
        REVOCATION_UNKNOWN,
        BAD_SIGNATURE,
        UNSUPPORTED_SIGNATURE,
        MALFORMED,
        PURPOSE,
        CERT_OTHER,
        NO_CERT,
        NO_CIPHER,
        VERSION,
        INCOMPATIBLE,
        ALERT_HANDSHAKE,
        ALERT_VERSION,
        ALERT_ALPN,
        ALERT_CLIENT_CERT,
        ALERT_NAME,
        ALERT_OTHER,
        NO_ALPN,
        PROTOCOL,
        CLOSED,
        OTHER,
    ];
}

/// A static, JSON-safe (ASCII, no `"` or `\`) description of why an upstream TLS connection
/// failed, for the 502 body. Finds the `rustls::Error` inside the `io::Error` (monoio-rustls
/// wraps it as `io::Error::new(InvalidData, rustls::Error)`, or `monoio_rustls::TlsError`
/// converted with `From`) and names the problem.
pub fn describe_upstream_error(e: &io::Error) -> &'static str {
    match find_rustls(e, 0) {
        Some(r) => describe_rustls(r),
        None if e.kind() == io::ErrorKind::UnexpectedEof => desc::CLOSED,
        None => desc::OTHER,
    }
}

/// The rustls error inside `e`, looking through `TlsError`, nested `io::Error`s and sources.
fn find_rustls(e: &io::Error, depth: u8) -> Option<&rustls::Error> {
    let mut inner: &(dyn std::error::Error + 'static) = e.get_ref()?;
    for _ in 0..8 {
        if let Some(r) = inner.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(t) = inner.downcast_ref::<monoio_rustls::TlsError>() {
            return match t {
                monoio_rustls::TlsError::Rustls(r) => Some(r),
                monoio_rustls::TlsError::Io(io) if depth < 4 => find_rustls(io, depth + 1),
                monoio_rustls::TlsError::Io(_) => None,
            };
        }
        if let Some(io) = inner.downcast_ref::<io::Error>() {
            return if depth < 4 {
                find_rustls(io, depth + 1)
            } else {
                None
            };
        }
        inner = inner.source()?;
    }
    None
}

fn describe_rustls(e: &rustls::Error) -> &'static str {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E, PeerIncompatible as P};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => desc::UNKNOWN_ISSUER,
            C::Expired | C::ExpiredContext { .. } => desc::EXPIRED,
            C::NotValidYet | C::NotValidYetContext { .. } => desc::NOT_YET_VALID,
            C::NotValidForName | C::NotValidForNameContext { .. } => desc::WRONG_NAME,
            C::Revoked => desc::REVOKED,
            C::UnknownRevocationStatus
            | C::ExpiredRevocationList
            | C::ExpiredRevocationListContext { .. } => desc::REVOCATION_UNKNOWN,
            C::BadSignature => desc::BAD_SIGNATURE,
            #[allow(deprecated)]
            C::UnsupportedSignatureAlgorithm => desc::UNSUPPORTED_SIGNATURE,
            C::UnsupportedSignatureAlgorithmContext { .. }
            | C::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => {
                desc::UNSUPPORTED_SIGNATURE
            }
            C::BadEncoding | C::UnhandledCriticalExtension => desc::MALFORMED,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => desc::PURPOSE,
            _ => desc::CERT_OTHER,
        },
        E::NoCertificatesPresented => desc::NO_CERT,
        E::PeerIncompatible(p) => match p {
            P::NoCipherSuitesInCommon => desc::NO_CIPHER,
            P::ServerDoesNotSupportTls12Or13
            | P::ServerTlsVersionIsDisabledByOurConfig
            | P::SupportedVersionsExtensionRequired => desc::VERSION,
            _ => desc::INCOMPATIBLE,
        },
        E::AlertReceived(a) => match a {
            A::HandshakeFailure | A::InsufficientSecurity => desc::ALERT_HANDSHAKE,
            A::ProtocolVersion => desc::ALERT_VERSION,
            A::NoApplicationProtocol => desc::ALERT_ALPN,
            A::CertificateRequired => desc::ALERT_CLIENT_CERT,
            A::UnrecognisedName => desc::ALERT_NAME,
            _ => desc::ALERT_OTHER,
        },
        E::NoApplicationProtocol => desc::NO_ALPN,
        E::InvalidMessage(_) | E::PeerMisbehaved(_) | E::PeerSentOversizedRecord => desc::PROTOCOL,
        _ => desc::OTHER,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConnection, Connection, HandshakeKind, ServerConnection};
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};

    /// A CA, or a leaf signed by one: PEM certificate and key.
    struct Made {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Made {
        fn cert_pem(&self) -> String {
            self.cert.pem()
        }
        fn key_pem(&self) -> String {
            self.key.serialize_pem()
        }
        fn der(&self) -> &CertificateDer<'static> {
            self.cert.der()
        }
    }

    fn ca(name: &str) -> Made {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed");
        Made { cert, key }
    }

    fn leaf_with(issuer: &Made, names: &[&str], edit: impl FnOnce(&mut CertificateParams)) -> Made {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("params");
        edit(&mut params);
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &issuer.cert, &issuer.key)
            .expect("signed");
        Made { cert, key }
    }

    fn leaf(issuer: &Made, names: &[&str]) -> Made {
        leaf_with(issuer, names, |_| {})
    }

    fn at(secs: u64) -> UnixTime {
        UnixTime::since_unix_epoch(Duration::from_secs(secs))
    }

    /// 2000-06-03, inside the `old` certificates' validity (2000 to 2001).
    const MID_2000: u64 = 960_000_000;
    /// Past rcgen's default notAfter (4096-01-01).
    const YEAR_5000: u64 = 95_668_617_600;

    struct Pem {
        cert: String,
        key: String,
    }

    fn pem(m: &Made) -> Pem {
        Pem {
            cert: m.cert_pem(),
            key: m.key_pem(),
        }
    }

    fn files<'a>(p: &'a Pem, cert_path: &'a str, key_path: &'a str) -> CertFiles<'a> {
        CertFiles {
            cert_path,
            cert_pem: p.cert.as_bytes(),
            key_path,
            key_pem: p.key.as_bytes(),
        }
    }

    fn roots_of(ca: &Made) -> Arc<RootCertStore> {
        let mut store = RootCertStore::empty();
        store.add(ca.der().clone()).expect("anchor");
        Arc::new(store)
    }

    /// Moves what `from` wants to send into `to`; Ok(whether anything moved), or `to`'s error.
    fn pump(from: &mut Connection, to: &mut Connection) -> Result<bool, rustls::Error> {
        let mut buf = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut buf).expect("write to a Vec");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            to.read_tls(&mut rd).expect("read from a slice");
            to.process_new_packets()?;
        }
        Ok(!buf.is_empty())
    }

    #[derive(Debug)]
    enum Failed {
        Client(rustls::Error),
        Server(rustls::Error),
    }

    /// A whole handshake in memory, and the session tickets after it.
    fn handshake(client: &mut Connection, server: &mut Connection) -> Result<(), Failed> {
        for _ in 0..32 {
            let sent = match pump(client, server) {
                Ok(sent) => sent,
                Err(e) => {
                    // Let the client see the server's alert, as a real client would.
                    let _ = pump(server, client);
                    return Err(Failed::Server(e));
                }
            };
            let received = pump(server, client).map_err(Failed::Client)?;
            if !sent && !received && !client.is_handshaking() && !server.is_handshaking() {
                return Ok(());
            }
        }
        panic!("handshake did not finish");
    }

    fn connect(
        client: &Arc<ClientConfig>,
        server: &Arc<ServerConfig>,
        name: &str,
    ) -> (Result<(), Failed>, Connection, Connection) {
        let name = ServerName::try_from(name.to_owned()).expect("server name");
        let mut c =
            Connection::Client(ClientConnection::new(client.clone(), name).expect("client"));
        let mut s = Connection::Server(ServerConnection::new(server.clone()).expect("server"));
        let r = handshake(&mut c, &mut s);
        (r, c, s)
    }

    fn peer_leaf(c: &Connection) -> CertificateDer<'static> {
        c.peer_certificates().expect("peer certificates")[0]
            .clone()
            .into_owned()
    }

    struct Setup {
        ca: Made,
        a: Made,
        b: Made,
        server: Arc<ServerConfig>,
    }

    fn setup() -> Setup {
        let ca = ca("test CA");
        let a = leaf(&ca, &["a.test"]);
        let b = leaf(&ca, &["*.b.test", "b.test"]);
        let (pa, pb) = (pem(&a), pem(&b));
        let server = server_config(&[
            files(&pa, "/etc/x/a.pem", "/etc/x/a.key"),
            files(&pb, "/etc/x/b.pem", "/etc/x/b.key"),
        ])
        .expect("server config");
        Setup { ca, a, b, server }
    }

    fn client_for(ca: &Made) -> Arc<ClientConfig> {
        let ca_pem = ca.cert_pem();
        client_config(
            &Arc::new(RootCertStore::empty()),
            Some(("/etc/x/ca.pem", ca_pem.as_bytes())),
        )
        .expect("client config")
    }

    #[test]
    fn sni_picks_the_certificate_in_a_full_handshake() {
        let s = setup();
        let client = client_for(&s.ca);
        for (name, want) in [
            ("a.test", &s.a),
            ("A.Test", &s.a),
            ("x.b.test", &s.b),
            ("X.B.TEST", &s.b),
            ("b.test", &s.b),
        ] {
            let (r, c, sc) = connect(&client, &s.server, name);
            r.unwrap_or_else(|e| panic!("{name}: {e:?}"));
            assert_eq!(&peer_leaf(&c), want.der(), "{name}");
            assert_eq!(c.alpn_protocol(), Some(ALPN_HTTP1), "{name}");
            assert_eq!(sc.alpn_protocol(), Some(ALPN_HTTP1), "{name}");
        }
    }

    #[test]
    fn no_sni_gets_the_first_certificate() {
        let s = setup();
        let mut cfg = (*client_for(&s.ca)).clone();
        cfg.enable_sni = false;
        let (r, c, _) = connect(&Arc::new(cfg), &s.server, "a.test");
        r.expect("handshake");
        assert_eq!(&peer_leaf(&c), s.a.der());
    }

    #[test]
    fn resolver_rules() {
        let ca = ca("CA");
        let (a, b, c) = (
            pem(&leaf(&ca, &["a.test", "www.a.test"])),
            pem(&leaf(&ca, &["*.b.test"])),
            pem(&leaf(&ca, &["*.c.test", "exact.c.test"])),
        );
        let provider = provider();
        let now = UnixTime::now();
        let loaded = [&b, &a, &c]
            .iter()
            .map(|p| load_pair(&files(p, "c", "k"), &provider, now).expect("pair"))
            .collect();
        let r = SniResolver::new(loaded).expect("resolver");
        assert_eq!(r.pick(None), 0, "no SNI: the first");
        assert_eq!(r.pick(Some("unknown.test")), 0, "no match: the first");
        assert_eq!(r.pick(Some("a.test")), 1);
        assert_eq!(r.pick(Some("WWW.A.TEST")), 1);
        assert_eq!(r.pick(Some("a.test.")), 1, "trailing dot");
        assert_eq!(r.pick(Some("x.b.test")), 0);
        assert_eq!(
            r.pick(Some("b.test")),
            0,
            "a wildcard does not match its parent"
        );
        assert_eq!(
            r.pick(Some("y.x.c.test")),
            0,
            "a wildcard matches one label only"
        );
        assert_eq!(r.pick(Some("x.c.test")), 2);
        assert_eq!(r.pick(Some("exact.c.test")), 2);
        assert_eq!(r.pick(Some(".c.test")), 0, "empty label");
        assert!(SniResolver::new(Vec::new()).is_none());
    }

    #[test]
    fn alpn_is_http11_when_offered_among_others() {
        let s = setup();
        let mut cfg = (*client_for(&s.ca)).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let (r, c, sc) = connect(&Arc::new(cfg), &s.server, "a.test");
        r.expect("handshake");
        assert_eq!(c.alpn_protocol(), Some(ALPN_HTTP1));
        assert_eq!(sc.alpn_protocol(), Some(ALPN_HTTP1));

        // A client offering only h2 is refused (RFC 7301), and the description says so.
        let mut cfg = (*client_for(&s.ca)).clone();
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        let (r, _, _) = connect(&Arc::new(cfg), &s.server, "a.test");
        assert!(
            matches!(r, Err(Failed::Server(rustls::Error::NoApplicationProtocol))),
            "{r:?}"
        );
        let alert = rustls::Error::AlertReceived(rustls::AlertDescription::NoApplicationProtocol);
        assert_eq!(
            describe_upstream_error(&io::Error::new(io::ErrorKind::InvalidData, alert)),
            desc::ALERT_ALPN
        );
    }

    #[test]
    fn sessions_resume_with_tls13_tickets_and_tls12() {
        let s = setup();
        let client = client_for(&s.ca);
        let (r, c, _) = connect(&client, &s.server, "a.test");
        r.expect("first");
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let (r, c, _) = connect(&client, &s.server, "a.test");
        r.expect("second");
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));

        let tls12 = Arc::new(
            ClientConfig::builder_with_provider(provider())
                .with_protocol_versions(&[&rustls::version::TLS12])
                .expect("versions")
                .with_root_certificates(roots_of(&s.ca))
                .with_no_client_auth(),
        );
        let (r, c, _) = connect(&tls12, &s.server, "x.b.test");
        r.expect("first 1.2");
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
        let (r, c, _) = connect(&tls12, &s.server, "x.b.test");
        r.expect("second 1.2");
        assert_eq!(c.handshake_kind(), Some(HandshakeKind::Resumed));
    }

    #[test]
    fn check_pair_lists_the_names() {
        let ca = ca("CA");
        let p = pem(&leaf(&ca, &["API.example.com", "*.Example.net"]));
        let names = check_pair(&files(&p, "/c", "/k")).expect("valid");
        assert_eq!(names, ["api.example.com", "*.example.net"]);
        // A chain (leaf then CA) is accepted.
        let chain = Pem {
            cert: format!("{}{}", p.cert, ca.cert_pem()),
            key: p.key.clone(),
        };
        assert!(check_pair(&files(&chain, "/c", "/k")).is_ok());
    }

    /// `check_pair` and `server_config` both fail naming `path` and saying `reason`.
    fn assert_refused(pair: CertFiles<'_>, now: UnixTime, path: &str, reason: &str) {
        let e = check_pair_at(&pair, now).expect_err("refused");
        assert!(e.starts_with(&format!("{path}: ")), "{e}");
        assert!(e.contains(reason), "{e}");
        let e2 = server_config_at(&[pair], now).expect_err("refused");
        assert_eq!(e, e2);
    }

    #[test]
    fn refusals_name_the_file_and_the_reason() {
        let ca = ca("CA");
        let good = pem(&leaf(&ca, &["a.test"]));
        let other = pem(&leaf(&ca, &["b.test"]));
        let now = UnixTime::now();
        let (c, k) = ("/etc/x/cert.pem", "/etc/x/key.pem");
        let with = |cert: &str, key: &str| Pem {
            cert: cert.to_owned(),
            key: key.to_owned(),
        };

        let p = with("", &good.key);
        assert_refused(
            files(&p, c, k),
            now,
            c,
            "no certificate found (expected PEM 'BEGIN CERTIFICATE')",
        );
        let p = with("garbage\nnot pem at all\n", &good.key);
        assert_refused(files(&p, c, k), now, c, "no certificate found");
        let p = with(&good.key, &good.key);
        assert_refused(files(&p, c, k), now, c, "no certificate found");
        let p = with(
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
            &good.key,
        );
        assert_refused(files(&p, c, k), now, c, "malformed PEM");
        let p = with("-----BEGIN CERTIFICATE-----\nMIIB\n", &good.key);
        assert_refused(files(&p, c, k), now, c, "malformed PEM");
        let p = with(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            &good.key,
        );
        assert_refused(
            files(&p, c, k),
            now,
            c,
            "certificate is not valid: malformed DER",
        );

        let p = with(&good.cert, "");
        assert_refused(files(&p, c, k), now, k, "no private key found");
        let p = with(&good.cert, "garbage");
        assert_refused(files(&p, c, k), now, k, "no private key found");
        // A CA certificate given as the key.
        let p = with(&good.cert, &ca.cert_pem());
        assert_refused(
            files(&p, c, k),
            now,
            k,
            "no private key found (the file holds a certificate",
        );
        let p = with(
            &good.cert,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        );
        assert_refused(files(&p, c, k), now, k, "unsupported key type");
        let p = with(&good.cert, &other.key);
        assert_refused(
            files(&p, c, k),
            now,
            k,
            "/etc/x/key.pem: the key does not match the certificate in /etc/x/cert.pem",
        );

        // Validity: expired, not yet valid, a CA as the server certificate, a client-only EKU.
        assert_refused(
            files(&good, c, k),
            at(YEAR_5000),
            c,
            "certificate is not valid: expired on ",
        );
        let old = pem(&leaf_with(&ca, &["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }));
        assert_refused(files(&old, c, k), now, c, "expired on 2001-01-01T00:00:00Z");
        assert!(check_pair_at(&files(&old, c, k), at(MID_2000)).is_ok());
        let young = pem(&leaf_with(&ca, &["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2030, 1, 1);
        }));
        assert_refused(
            files(&young, c, k),
            now,
            c,
            "not valid until 2030-01-01T00:00:00Z",
        );
        let cap = pem(&ca);
        assert_refused(files(&cap, c, k), now, c, "it is a CA certificate");
        let client_only = pem(&leaf_with(&ca, &["a.test"], |p| {
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        }));
        assert_refused(files(&client_only, c, k), now, c, "extended key usage");

        // server_config names the failing entry, not the first.
        let bad = with(&good.cert, &other.key);
        let e = server_config_at(
            &[
                files(&good, "/a.pem", "/a.key"),
                files(&bad, "/b.pem", "/b.key"),
            ],
            now,
        )
        .expect_err("refused");
        assert!(
            e.starts_with("/b.key: the key does not match the certificate in /b.pem"),
            "{e}"
        );
        assert_eq!(
            server_config_at(&[], now).expect_err("empty"),
            "no TLS certificate configured"
        );
    }

    /// A throw-away RSA 2048 key (PKCS#8, made once with `openssl genpkey`; rcgen on ring cannot
    /// make RSA keys). It signs nothing but these tests' certificates.
    const RSA_TEST_KEY: &str = concat!(
        "-----BEGIN PRIVATE KEY-----\n",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDMiWLm3Vqu8W1/\n",
        "fgBCTYfY02UxCUZFbxHiIIGFhKrrYMGJ8J0odbq78JbUS06aG1BA5uI7fFU+jsLq\n",
        "lx9nlkhAeMj9rzhTqXLs8eC7fpqjmqgENKN1m5vTFJMo5hBI6M3TRXP7z3A1LSSB\n",
        "1Gl0803/+tFr3KRGq5DDvZeR/ZZnOTtGW38Vg8CEAfEJINb0ZpWcZxAD5tpYlDQO\n",
        "xscSC6aSTBKsfH32qoahlggkfkgXHLcVVjNHZMDhxhQAVknT+JOUprIBsgiy73wA\n",
        "/nu04ovStAd9jFt1oOAcWpNdPF5m6iXo+AqUEzeBxLWkpClGk36dj5A6Zwhpv4OJ\n",
        "OQycwt+HAgMBAAECggEAHMbvoqpeHzhZ6ZLMF91Z/Ehcd7Zlq/s2jul35QCHc6/H\n",
        "SyW5VtSe6IuvDOto1wckwXI6k5f9/lvjp1Hf2e6A9+ExQNAC+B0NIwfc+0Q9dECc\n",
        "MbXzkZEf2WY5q4rC8R8gEQDikqPa66sQSdvy18DWUT+exgg4bLZSxdd07dYPRTJo\n",
        "OSnOr3jcCR/pi7c+egSYTqRSxjE+imf5Pp+9teP0OzSO4U9QwCnymSK9CZXrEoFx\n",
        "+/LeGfzVG+KZuScNx8jtWTVL8oeymnzhukvquGOZzNLxY45vSUdgezRi98yriQ5h\n",
        "XFls4nIfEbBRm56Z5ZWzeH5XHsaqo2PrVhGUpwvYgQKBgQD5PqK6+CKkU62EMxPL\n",
        "dAz9Auid0VjIHb0CuoRz7JM+5OgLFh9p9wETaLy0FdpaORyzfPt6IN7bQkrPb0JE\n",
        "FlHORV8CK/8vm7yu42nZS2Xo/zFZ0kFdWildW0Lj7Rgn/Ge2hVGytOu/zBPrVngG\n",
        "qa1aAzQmorOeU/cMSxETAJiy4QKBgQDSFIw4AISIInMKBrCH5z/leIL6gMYrq85f\n",
        "n1eCK3oDDEPlODO+2kEJj29EIV0Tjv0YMbKQ9j5nF9FKbCY/HUl9fY2xgWF8wwh7\n",
        "vDICClKKfk+M22cyFsP/SUI7qH5L6atwlzHGgSMFN6kJM36zDZgGCfj0XJaq3ZLm\n",
        "DrEW2wbHZwKBgHX/zGT+ItBveT+UOvPgbmG+ZciJmyGqypgnG5wSTafCEYVmJNsz\n",
        "AIRi2qvbiLOcRFVJf3lTZI6jdO19+/5mHrasKw3JLJgqgArASZWBV68WWhPvMdjz\n",
        "XZAAK8virMQJgERuG76iXtY/1NJe7pYg8Jwj1iXQc38qu1RLmbrIVoKhAoGAfZ1h\n",
        "tn7AwHHw3ZbgaXLh5wEnOEhVtnk1nkG13pTGkRn9Yws3DbCNYP0OJ+vXLsG6HoRg\n",
        "5IMJDzXTpC+Eswp9DfdMCU52j1ZDNVFziXrInh0mze/HBdFNAtG4M9ntItEm/Ny7\n",
        "G5nN6em9Pk43PTMsqre9z8epI6P3mW5Bf4wZwpMCgYEA5If15DCMJgzMr7Nsgmii\n",
        "pPuCeJycaTTKnVtFleW7vZxr5x4KkYBmt07kll3ZfPCMWW7wZgECXoS3mC0jZACJ\n",
        "rSQbMPC9ZLDlv0bkKOIq09XU/cLclVxoz8pC12xHE7+xVXE0OvnbaPXeGG4zg2fk\n",
        "VYcECDYUUBQh3PyHcEEGQbs=\n",
        "-----END PRIVATE KEY-----\n",
    );

    /// The contents of a PKCS#8 document's privateKey OCTET STRING: the PKCS#1 form of an RSA
    /// key, the SEC1 form of an ECDSA one.
    fn inner_key(pkcs8: &[u8]) -> Vec<u8> {
        /// (tag, contents, rest) of the DER element at the start of `b`.
        fn element(b: &[u8]) -> (u8, &[u8], &[u8]) {
            let (tag, first) = (b[0], b[1]);
            let (len, at) = if first < 0x80 {
                (usize::from(first), 2)
            } else {
                let width = usize::from(first & 0x7f);
                let len = b[2..2 + width]
                    .iter()
                    .fold(0, |n, &d| (n << 8) | usize::from(d));
                (len, 2 + width)
            };
            (tag, &b[at..at + len], &b[at + len..])
        }
        let (_, info, _) = element(pkcs8);
        let (_, _, rest) = element(info); // version
        let (_, _, rest) = element(rest); // algorithm
        let (tag, key, _) = element(rest);
        assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
        key.to_vec()
    }

    #[test]
    fn the_config_check_derives_the_public_key_as_rustls_does() {
        let provider = provider();
        let keys = [
            (
                "P-256",
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            ),
            (
                "P-384",
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
            ),
            ("Ed25519", KeyPair::generate_for(&rcgen::PKCS_ED25519)),
            ("RSA", KeyPair::from_pem(RSA_TEST_KEY)),
        ];
        let mut spkis = Vec::new();
        for (name, key) in keys {
            let key = key.expect("key");
            let pkcs8 = key.serialize_der();
            let mut forms = vec![PrivateKeyDer::Pkcs8(pkcs8.clone().into())];
            match name {
                "RSA" => forms.push(PrivateKeyDer::Pkcs1(inner_key(&pkcs8).into())),
                "P-256" | "P-384" => forms.push(PrivateKeyDer::Sec1(inner_key(&pkcs8).into())),
                _ => {}
            }
            for der in forms {
                let ours = crate::cert::public_key_info(&der).expect(name);
                let signing_key = provider.key_provider.load_private_key(der).expect(name);
                let theirs = signing_key.public_key().expect(name);
                assert_eq!(ours, theirs.as_ref(), "{name}");
                // And it is what a certificate for the key carries.
                assert_eq!(ours, key.public_key_der(), "{name}");
                spkis.push(ours);
            }
        }
        spkis.dedup();
        assert_eq!(
            spkis.len(),
            4,
            "each key's forms agree, and the keys differ"
        );
        let junk = PrivateKeyDer::Pkcs8(vec![0x30, 0x00].into());
        assert_eq!(crate::cert::public_key_info(&junk), None);
    }

    /// A leaf certificate for `key`, signed by `issuer`.
    fn leaf_for(issuer: &Made, key: KeyPair) -> Made {
        let params = CertificateParams::new(vec!["a.test".to_owned()]).expect("params");
        let cert = params
            .signed_by(&key, &issuer.cert, &issuer.key)
            .expect("signed");
        Made { cert, key }
    }

    #[test]
    fn every_key_type_loads_and_a_key_of_another_type_does_not_match() {
        let ca = ca("CA");
        let made = [
            leaf_for(
                &ca,
                KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).expect("key"),
            ),
            leaf_for(
                &ca,
                KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key"),
            ),
            leaf_for(&ca, KeyPair::from_pem(RSA_TEST_KEY).expect("key")),
        ];
        let now = UnixTime::now();
        for (i, cert) in made.iter().enumerate() {
            for (j, key) in made.iter().enumerate() {
                let p = Pem {
                    cert: cert.cert_pem(),
                    key: key.key_pem(),
                };
                let r = server_config_at(&[files(&p, "/c", "/k")], now);
                if i == j {
                    r.unwrap_or_else(|e| panic!("{i}: {e}"));
                } else {
                    let e = r.expect_err("another key");
                    assert!(e.contains("does not match"), "{i} {j}: {e}");
                }
            }
        }
    }

    #[test]
    fn client_trusts_its_ca_file_only() {
        let s = setup();
        let client = client_for(&s.ca);
        let (r, _, _) = connect(&client, &s.server, "a.test");
        r.expect("trusted");

        // The same server seen by a client trusting another CA: unknown issuer.
        let client = client_for(&ca("another CA"));
        let (r, _, _) = connect(&client, &s.server, "a.test");
        let Err(Failed::Client(err)) = r else {
            panic!("expected the client to refuse: {r:?}")
        };
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "{err:?}"
        );
        let d = describe_upstream_error(&io::Error::new(io::ErrorKind::InvalidData, err.clone()));
        assert!(
            d.contains("unknown issuer") && d.contains("not trusted"),
            "{d}"
        );
        // The way monoio-rustls's handshake error arrives: TlsError::Io(InvalidData(rustls)).
        let via_tls: io::Error =
            monoio_rustls::TlsError::Io(io::Error::new(io::ErrorKind::InvalidData, err.clone()))
                .into();
        assert_eq!(describe_upstream_error(&via_tls), d);
        let via_rustls: io::Error = monoio_rustls::TlsError::Rustls(err.clone()).into();
        assert_eq!(describe_upstream_error(&via_rustls), d);
        let nested = io::Error::other(monoio_rustls::TlsError::Rustls(err));
        assert_eq!(describe_upstream_error(&nested), d);

        // The system roots do not know the test CA either.
        let client = client_config(&system_roots(), None).expect("client config");
        let (r, _, _) = connect(&client, &s.server, "a.test");
        assert!(matches!(r, Err(Failed::Client(_))), "{r:?}");
    }

    #[test]
    fn client_names_a_host_name_mismatch_and_an_expired_certificate() {
        let s = setup();
        let client = client_for(&s.ca);
        // No certificate for c.test: the server sends the first (a.test), the client refuses.
        let (r, _, _) = connect(&client, &s.server, "c.test");
        let Err(Failed::Client(err)) = r else {
            panic!("expected the client to refuse: {r:?}")
        };
        let d = describe_upstream_error(&io::Error::new(io::ErrorKind::InvalidData, err));
        assert!(d.contains("host name"), "{d}");

        // An upstream whose certificate expired (loaded while it was valid).
        let old = pem(&leaf_with(&s.ca, &["a.test"], |p| {
            p.not_before = rcgen::date_time_ymd(2000, 1, 1);
            p.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }));
        let server =
            server_config_at(&[files(&old, "/c", "/k")], at(MID_2000)).expect("valid in 2001");
        let (r, _, _) = connect(&client, &server, "a.test");
        let Err(Failed::Client(err)) = r else {
            panic!("expected the client to refuse: {r:?}")
        };
        let d = describe_upstream_error(&io::Error::new(io::ErrorKind::InvalidData, err));
        assert_eq!(d, desc::EXPIRED);
    }

    #[test]
    fn client_ca_file_errors_name_the_file() {
        let roots = Arc::new(RootCertStore::empty());
        let e = client_config(&roots, Some(("/etc/ca.pem", b""))).expect_err("empty");
        assert_eq!(
            e,
            "/etc/ca.pem: no certificate found (expected PEM 'BEGIN CERTIFICATE')"
        );
        let e = client_config(&roots, Some(("/etc/ca.pem", b"junk"))).expect_err("junk");
        assert!(e.starts_with("/etc/ca.pem: no certificate found"), "{e}");
        let bad = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = client_config(&roots, Some(("/etc/ca.pem", bad))).expect_err("bad DER");
        assert!(
            e.starts_with("/etc/ca.pem: certificate 1 is not a usable CA certificate"),
            "{e}"
        );
    }

    #[test]
    fn system_roots_are_not_empty() {
        assert!(!system_roots().is_empty());
    }

    #[test]
    fn descriptions_are_json_safe() {
        use rustls::{AlertDescription as A, CertificateError as C, Error as E};
        for d in desc::ALL {
            assert!(d.is_ascii() && !d.contains('"') && !d.contains('\\'), "{d}");
        }
        let cases = [
            (
                E::InvalidCertificate(C::UnknownIssuer),
                desc::UNKNOWN_ISSUER,
            ),
            (E::InvalidCertificate(C::Expired), desc::EXPIRED),
            (E::InvalidCertificate(C::NotValidYet), desc::NOT_YET_VALID),
            (E::InvalidCertificate(C::NotValidForName), desc::WRONG_NAME),
            (E::InvalidCertificate(C::Revoked), desc::REVOKED),
            (E::InvalidCertificate(C::BadSignature), desc::BAD_SIGNATURE),
            (
                E::InvalidCertificate(C::ApplicationVerificationFailure),
                desc::CERT_OTHER,
            ),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::NoCipherSuitesInCommon),
                desc::NO_CIPHER,
            ),
            (
                E::PeerIncompatible(rustls::PeerIncompatible::ServerDoesNotSupportTls12Or13),
                desc::VERSION,
            ),
            (E::AlertReceived(A::HandshakeFailure), desc::ALERT_HANDSHAKE),
            (E::AlertReceived(A::ProtocolVersion), desc::ALERT_VERSION),
            (E::AlertReceived(A::BadRecordMac), desc::ALERT_OTHER),
            (E::DecryptError, desc::OTHER),
        ];
        for (e, want) in cases {
            let io = io::Error::new(io::ErrorKind::InvalidData, e);
            assert_eq!(describe_upstream_error(&io), want);
        }
        assert_eq!(
            describe_upstream_error(&io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tls handshake eof"
            )),
            desc::CLOSED
        );
        assert_eq!(
            describe_upstream_error(&io::Error::from(io::ErrorKind::ConnectionReset)),
            desc::OTHER
        );
    }
}
