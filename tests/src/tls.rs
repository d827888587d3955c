//! TLS for the end-to-end tests, std-only (blocking sockets, threads), rustls with the ring
//! provider (the workspace builds rustls without aws-lc-rs).
//!
//! - [`TestCa`]: a throw-away CA (rcgen) that issues [`Leaf`] certificates for DNS names and IP
//!   addresses, expired ones too; [`self_signed`] makes a leaf no CA vouches for.
//! - [`client_config`] / [`server_config`]: rustls configs trusting one CA / serving one leaf, both
//!   with ALPN `http/1.1`.
//! - The client side is [`crate::Client::connect_tls`] (the same raw-bytes client as over TCP), the
//!   server side [`crate::MockUpstream::start_tls`] (the same scriptable mock, which also counts
//!   failed handshakes).
//! - [`tls_handshake_only`] shakes hands and returns the server's certificate.
//! - [`TempDir`]: a unique directory to write certificates and keys into, removed on drop.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::WAIT;

/// The ALPN protocol both sides offer.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// rustls' ring crypto provider (the only one the workspace builds).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A test certificate authority: a self-signed CA certificate and its key.
pub struct TestCa {
    name: String,
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("name", &self.name).finish()
    }
}

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Debug, Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    /// The certificate, DER (what [`crate::Client::peer_certificate`] returns).
    pub cert_der: Vec<u8>,
}

impl Leaf {
    /// Writes `DIR/STEM.crt` and `DIR/STEM.key`; returns their paths (certificate, key).
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.crt"));
        let key = dir.join(format!("{stem}.key"));
        write_file(&cert, &self.cert_pem);
        write_file(&key, &self.key_pem);
        (cert, key)
    }
}

fn write_file(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

impl TestCa {
    /// A new CA whose subject is `CN=<name> test CA`.
    pub fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().expect("generate a CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "shardgate tests");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).expect("self-sign the CA");
        TestCa {
            name: name.to_owned(),
            cert,
            key,
        }
    }

    /// The CA certificate, PEM (what a client that trusts this CA loads).
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    /// Writes the CA certificate to `DIR/STEM.crt` and returns the path.
    pub fn write_cert(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.crt"));
        write_file(&path, &self.cert_pem());
        path
    }

    /// A leaf valid from 2020 to 2100 for `names`: DNS names (wildcards allowed) and IP addresses,
    /// which become IP SANs. Usable as a server and as a client certificate.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.issue(leaf_params(names))
    }

    /// [`TestCa::leaf`], but expired: valid from 2000-01-01 to 2001-01-01.
    pub fn expired_leaf(&self, names: &[&str]) -> Leaf {
        let mut params = leaf_params(names);
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2001, 1, 1);
        self.issue(params)
    }

    fn issue(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("generate a leaf key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign the leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
        }
    }
}

/// A self-signed leaf for `names` that no [`TestCa`] vouches for.
pub fn self_signed(names: &[&str]) -> Leaf {
    let key = KeyPair::generate().expect("generate a key");
    let cert = leaf_params(names)
        .self_signed(&key)
        .expect("self-sign the leaf");
    Leaf {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        cert_der: cert.der().to_vec(),
    }
}

fn leaf_params(names: &[&str]) -> CertificateParams {
    let sans: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    let mut params =
        CertificateParams::new(sans).unwrap_or_else(|e| panic!("leaf names {names:?}: {e}"));
    params
        .distinguished_name
        .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2100, 1, 1);
    params
}

/// Every certificate in a PEM string.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("bad certificate PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate in the PEM".into());
    }
    Ok(certs)
}

/// A root store holding every certificate in `ca_pem`.
pub fn root_store(ca_pem: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(ca_pem)? {
        roots
            .add(cert)
            .map_err(|e| format!("CA certificate refused: {e}"))?;
    }
    Ok(roots)
}

/// A client config that trusts the CA certificates in `ca_pem` (only those) and offers ALPN
/// `http/1.1`. Clone it (`(*cfg).clone()`) to change ALPN or add a client certificate.
pub fn client_config(ca_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("client protocol versions: {e}"))?
        .with_root_certificates(root_store(ca_pem)?)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// A server config serving `leaf` (no client authentication), ALPN `http/1.1`.
pub fn server_config(leaf: &Leaf) -> Result<Arc<ServerConfig>, String> {
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
        .map_err(|e| format!("bad key PEM: {e}"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("server protocol versions: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs_from_pem(&leaf.cert_pem)?, key)
        .map_err(|e| format!("server certificate refused: {e}"))?;
    cfg.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS client connection over a std socket, as [`crate::Client`] holds it.
pub type TlsClientStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to `addr` (bounded by 5 s) and completes a TLS handshake with server name `sni` (a
/// DNS name or an IP address), reads bounded by [`WAIT`]. The error names the step and carries
/// rustls' error (e.g. `invalid peer certificate: UnknownIssuer`).
pub fn connect_tls_stream(
    addr: SocketAddr,
    sni: &str,
    config: Arc<ClientConfig>,
) -> Result<TlsClientStream, String> {
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| format!("bad server name {sni:?}: {e}"))?;
    let mut sock = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let setup = |s: &TcpStream| {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(WAIT))?;
        s.set_write_timeout(Some(WAIT))
    };
    setup(&sock).map_err(|e| format!("socket options: {e}"))?;
    let mut conn =
        ClientConnection::new(config, name).map_err(|e| format!("TLS client setup: {e}"))?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err(format!(
                    "TLS handshake with {addr} (SNI {sni:?}): connection closed"
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(format!("TLS handshake with {addr} (SNI {sni:?}): {e}")),
        }
    }
    Ok(StreamOwned::new(conn, sock))
}

/// Connects, completes a handshake trusting only `ca_pem` and returns the server's certificate
/// (DER), or why it failed. Sends close_notify and closes afterwards.
pub fn tls_handshake_only(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<Vec<u8>, String> {
    let mut tls = connect_tls_stream(addr, sni, client_config(ca_pem)?)?;
    let cert = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
        .ok_or_else(|| "the server sent no certificate".to_owned());
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock);
    cert
}

/// A unique directory under the temp dir, removed (with its contents) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `$TMPDIR/shardgate-test-<tag>-<pid>-<seq>-<nanos>/`.
    pub fn new(tag: &str) -> TempDir {
        let path = crate::gateway::unique_temp_path(tag, "");
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[cfg(test)]
mod tests {
    //! The TLS client and the TLS mock tested against each other, no gateway involved.

    use std::time::Duration;

    use super::*;
    use crate::{
        echo, hang, sse, write_response, Action, Client, Closed, MockUpstream, Request,
        TlsServerStream,
    };

    const NAMES: &[&str] = &["a.test", "*.b.test", "localhost", "127.0.0.1"];

    #[test]
    fn tls_mock_answers_tls_client_keepalive() {
        let ca = TestCa::new("selftest");
        let leaf = ca.leaf(NAMES);
        let up = MockUpstream::start_tls(&leaf, echo());
        let mut c = Client::connect_tls(up.addr(), "a.test", &ca.cert_pem());
        assert!(c.is_tls());
        assert_eq!(c.alpn().as_deref(), Some(ALPN_HTTP11));
        assert_eq!(c.peer_certificate(), Some(leaf.cert_der.clone()));
        assert!(c.tls_version().is_some_and(|v| v.starts_with("TLSv1_")));
        let a = c.post_json("/a", r#"{"x":1}"#);
        assert_eq!(a.status, 200, "{}", a.summary());
        assert_eq!(a.json()["path"], "/a");
        assert_eq!(a.json()["body"], r#"{"x":1}"#);
        // Keep-alive, and a chunked request body, over the same TLS session.
        c.send("POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nxyz\r\n0\r\n\r\n");
        let b = c.read_response();
        assert_eq!(b.json()["body"], "xyz");
        assert_eq!(up.connections_accepted(), 1);
        assert_eq!(up.requests().len(), 2);
        let hs = up.tls_handshakes();
        assert_eq!(hs.len(), 1);
        assert_eq!(hs[0].conn, 0);
        assert_eq!(hs[0].sni.as_deref(), Some("a.test"));
        assert_eq!(hs[0].alpn.as_deref(), Some(ALPN_HTTP11));
        assert_eq!(up.handshake_failures(), 0);
        drop(c);
        assert!(crate::wait_until(Duration::from_secs(3), || up
            .connections_closed_by_peer()
            == 1));
    }

    #[test]
    fn tls_mock_streams_chunked_sse() {
        let ca = TestCa::new("selftest");
        let up = MockUpstream::start_tls(&ca.leaf(NAMES), sse(3, Duration::ZERO));
        let mut c = Client::connect_tls(up.addr(), "localhost", &ca.cert_pem());
        let r = c.get("/events");
        assert!(r.chunked);
        assert_eq!(
            r.body_str(),
            format!(
                "{}{}{}data: [DONE]\n\n",
                crate::sse_event(1),
                crate::sse_event(2),
                crate::sse_event(3)
            )
        );
    }

    #[test]
    fn ip_and_wildcard_names_match_and_others_do_not() {
        let ca = TestCa::new("selftest");
        let leaf = ca.leaf(NAMES);
        let up = MockUpstream::start_tls(&leaf, echo());
        let ca_pem = ca.cert_pem();
        // An IP address is checked against the IP SANs; no SNI is sent for it.
        let mut c = Client::connect_tls(up.addr(), "127.0.0.1", &ca_pem);
        assert_eq!(c.get("/").status, 200);
        assert_eq!(
            tls_handshake_only(up.addr(), "x.b.test", &ca_pem),
            Ok(leaf.cert_der.clone())
        );
        let err = Client::try_connect_tls(up.addr(), "c.test", &ca_pem).expect_err("c.test");
        assert!(err.contains("certificate"), "{err}");
        assert!(err.contains("not valid for name"), "{err}");
        let err = tls_handshake_only(up.addr(), "127.0.0.2", &ca_pem).expect_err("127.0.0.2");
        assert!(err.contains("certificate"), "{err}");
        // The server finishes a TLS 1.3 handshake after the client does: wait for it.
        assert!(crate::wait_until(Duration::from_secs(3), || up
            .tls_handshakes()
            .len()
            == 2));
        let hs = up.tls_handshakes();
        assert_eq!(hs[0].sni, None);
        assert_eq!(hs[1].sni.as_deref(), Some("x.b.test"));
        assert!(up.wait_handshake_failures(2, Duration::from_secs(3)));
    }

    #[test]
    fn client_refuses_a_certificate_from_another_ca() {
        let ca = TestCa::new("server");
        let other = TestCa::new("other");
        let up = MockUpstream::start_tls(&ca.leaf(NAMES), echo());
        let err = Client::try_connect_tls(up.addr(), "a.test", &other.cert_pem())
            .expect_err("trusts another CA");
        assert!(err.contains("certificate"), "{err}");
        assert!(err.contains("UnknownIssuer"), "{err}");
        // The mock sees the client's alert and counts the failure.
        assert!(up.wait_handshake_failures(1, Duration::from_secs(3)));
        let why = up.handshake_errors();
        assert!(why[0].contains("alert"), "{why:?}");
        assert!(up.tls_handshakes().is_empty());
        assert!(up.requests().is_empty());
    }

    #[test]
    fn client_refuses_expired_and_self_signed_certificates() {
        let ca = TestCa::new("selftest");
        let expired = MockUpstream::start_tls(&ca.expired_leaf(NAMES), echo());
        let err =
            tls_handshake_only(expired.addr(), "a.test", &ca.cert_pem()).expect_err("expired");
        assert!(err.contains("certificate"), "{err}");
        assert!(err.contains("expired"), "{err}");
        assert!(expired.wait_handshake_failures(1, Duration::from_secs(3)));

        let own = self_signed(NAMES);
        let selfs = MockUpstream::start_tls(&own, echo());
        let err =
            tls_handshake_only(selfs.addr(), "a.test", &ca.cert_pem()).expect_err("self-signed");
        assert!(err.contains("certificate"), "{err}");
        assert!(selfs.wait_handshake_failures(1, Duration::from_secs(3)));
    }

    #[test]
    fn plain_http_to_a_tls_mock_is_a_failed_handshake() {
        let ca = TestCa::new("selftest");
        let up = MockUpstream::start_tls(&ca.leaf(NAMES), echo());
        let mut c = Client::connect(up.addr());
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(up.wait_handshake_failures(1, Duration::from_secs(3)));
        assert!(up.requests().is_empty());
        // The mock answered with an alert record (or nothing) and closed.
        let (_, end) = c.read_raw_to_end(Duration::from_secs(3));
        assert!(end.is_closed(), "{end:?}");
    }

    #[test]
    fn close_reset_and_drop_over_tls() {
        let ca = TestCa::new("selftest");
        let leaf = ca.leaf(NAMES);
        let ca_pem = ca.cert_pem();
        let up = MockUpstream::start_tls(&leaf, |req: &Request, s: &mut TlsServerStream| {
            write_response(s, 200, "text/plain", b"bye")?;
            Ok(match req.path.as_str() {
                "/close" => Action::Close,
                _ => Action::Reset,
            })
        });
        let mut c = Client::connect_tls(up.addr(), "a.test", &ca_pem);
        assert_eq!(c.get("/close").body_str(), "bye");
        assert_eq!(c.wait_closed(Duration::from_secs(3)), Closed::Eof);
        assert!(c.close_notify_received());
        let mut c = Client::connect_tls(up.addr(), "a.test", &ca_pem);
        c.send("GET /reset HTTP/1.1\r\nHost: x\r\n\r\n");
        // The response may or may not be read before the RST; the connection ends either way.
        let (_, end) = c.read_raw_to_end(Duration::from_secs(3));
        assert!(end.is_closed(), "{end:?}");
        assert!(!c.close_notify_received());
        assert!(crate::wait_until(Duration::from_secs(3), || up
            .connections_closed_by_us()
            == 2));

        // A hanging handler is released when the mock is dropped; the client sees the close.
        let hung = MockUpstream::start_tls(&leaf, hang());
        let mut c = Client::connect_tls(hung.addr(), "a.test", &ca_pem);
        c.send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(hung.wait_requests(1, Duration::from_secs(3)));
        drop(hung);
        assert!(c.wait_closed(Duration::from_secs(3)).is_closed());
    }

    #[test]
    fn client_half_close_and_alpn_not_offered() {
        let ca = TestCa::new("selftest");
        let up = MockUpstream::start_tls(&ca.leaf(NAMES), echo());
        let mut cfg = (*client_config(&ca.cert_pem()).expect("config")).clone();
        cfg.alpn_protocols.clear();
        let mut c = Client::try_connect_tls_with(up.addr(), "a.test", Arc::new(cfg)).expect("tls");
        assert_eq!(c.alpn(), None);
        c.send("GET /x HTTP/1.1\r\nHost: x\r\n");
        c.send_close_notify();
        c.shutdown_write();
        assert!(crate::wait_until(Duration::from_secs(3), || up
            .incomplete_requests()
            == 1));
        assert_eq!(up.tls_handshakes()[0].alpn, None);
        // A plain client has no TLS facts.
        let plain = MockUpstream::start(echo());
        let p = Client::connect(plain.addr());
        assert!(!p.is_tls());
        assert_eq!((p.alpn(), p.peer_certificate()), (None, None));
    }

    #[test]
    fn files_round_trip() {
        let ca = TestCa::new("files");
        let leaf = ca.leaf(&["a.test"]);
        let dir = TempDir::new("tls-files");
        let (cert, key) = leaf.write(dir.path(), "server");
        assert_eq!(cert, dir.path().join("server.crt"));
        let ca_path = ca.write_cert(dir.path(), "ca");
        let read = |p: &Path| std::fs::read_to_string(p).expect("read");
        let loaded = Leaf {
            cert_pem: read(&cert),
            key_pem: read(&key),
            cert_der: leaf.cert_der.clone(),
        };
        assert!(loaded.key_pem.contains("PRIVATE KEY"));
        let up = MockUpstream::start_tls(&loaded, echo());
        assert_eq!(
            tls_handshake_only(up.addr(), "a.test", &read(&ca_path)),
            Ok(leaf.cert_der)
        );
        assert_eq!(certs_from_pem(&ca.cert_pem()).expect("ca").len(), 1);
        assert_eq!(
            certs_from_pem(&ca.cert_pem()).expect("ca")[0].to_vec(),
            ca.cert_der()
        );
        let path = dir.path().to_owned();
        drop(dir);
        assert!(!path.exists());
    }
}
