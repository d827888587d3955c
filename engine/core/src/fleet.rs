//! A fleet's Redis (`[fleet]`, decision 0013), as the engine's fleet agent, `shardgate --check`
//! and `shardgate-ctl fleet status` reach it: a blocking connection with `[fleet]`'s settings
//! and time limits (`redis://`, or `rediss://`: TLS with rustls, the certificate verified for
//! the URL's host), what its failures say, the instances the agents have announced, and which
//! of a limit's credit cells is which (`Kind`). Blocking: never a shard.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

use crate::config::FleetConfig;
use crate::control::shm::{CreditCells, FleetCells};

/// A Redis round trip longer than this counts as Redis being down, ms. A TLS handshake (a
/// round trip more) has the same time.
pub const REDIS_TIMEOUT_MS: u64 = 200;
/// The sorted set of the fleet's instances, each scored by its last sync (unix ms).
pub const INSTANCES_KEY: &str = "sg:instances";
/// An instance not seen for this long is taken as gone (its share goes to the others), ms.
pub const INSTANCE_TTL_MS: u64 = 5_000;

/// Connect to `f`'s Redis: the address, TLS (`rediss://`), the password and the database are
/// each checked here, and a failure names the URL and which. A failure of TLS (a certificate
/// not trusted, a plain Redis on the TLS port, a TLS port named by `redis://`) says
/// "TLS handshake failed" or "speaks TLS": see [`explain`].
pub fn connect(f: &FleetConfig) -> Result<redis::Connection, String> {
    open(f).map_err(|e| format!("fleet.redis {}: {}", f.url, explain(f, &e)))
}

/// [`connect`], with redis-rs' own error.
fn open(f: &FleetConfig) -> redis::RedisResult<redis::Connection> {
    let addr = if f.tls {
        redis::ConnectionAddr::TcpTls {
            host: f.host.clone(),
            port: f.port,
            // Verify the certificate and that it is valid for `host`: there is no other way.
            insecure: false,
            tls_params: None,
        }
    } else {
        redis::ConnectionAddr::Tcp(f.host.clone(), f.port)
    };
    let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(f.db));
    if let Some(p) = &f.password {
        settings = settings.set_password(p);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(addr)?.set_redis_settings(settings);
    let client = if f.tls {
        ring_by_default();
        let certs = redis::TlsCertificates {
            client_tls: None,
            // None: the system's roots (rustls-native-certs).
            root_cert: f.ca_file.as_ref().map(|(_, pem)| pem.clone()),
        };
        redis::Client::build_with_tls(info, certs)?
    } else {
        redis::Client::open(info)?
    };
    let timeout = Duration::from_millis(REDIS_TIMEOUT_MS);
    let mut conn = client.get_connection_with_timeout(timeout)?;
    conn.set_read_timeout(Some(timeout))?;
    conn.set_write_timeout(Some(timeout))?;
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(conn)
}

/// redis-rs builds its rustls config with the process's default crypto provider: make it
/// rustls' ring provider (the workspace builds no other) if none is set.
fn ring_by_default() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread set one in between, and that one serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// What to say of `e`, a failure to connect to `f`'s Redis. A failure that may be TLS's (an
/// I/O or protocol error, not Redis refusing a password or a database) is looked at again with
/// a handshake of our own ([`handshake`]), because redis-rs' error does not say at which step
/// it came (a plain Redis on a TLS port may answer garbage, close, or say nothing until the
/// time is up):
/// - `rediss://`: the handshake failing after the TCP connection says "TLS handshake failed"
///   and why (rustls' reason: the certificate's issuer not trusted, not valid for the name, a
///   server that does not speak TLS);
/// - `redis://`: a server that answers a TLS handshake "speaks TLS: use rediss://".
///
/// Else redis-rs' own words.
fn explain(f: &FleetConfig, e: &redis::RedisError) -> String {
    let maybe_tls = matches!(
        e.kind(),
        redis::ErrorKind::Io
            | redis::ErrorKind::Parse
            | redis::ErrorKind::Client
            | redis::ErrorKind::InvalidClientConfig
    ) && !e.is_connection_refusal();
    if !maybe_tls {
        return e.to_string();
    }
    let roots = match &f.ca_file {
        Some((_, pem)) => Roots::CaFile(pem),
        None => Roots::System,
    };
    let shake = handshake(&f.host, f.port, roots);
    match (f.tls, shake) {
        (true, Err(Handshake::Failed(why))) => {
            let hint = match &why {
                HandshakeFailure::Tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )) => match &f.ca_file {
                    Some((path, _)) => format!(" (not issued by a CA in {path})"),
                    None => " (not issued by a CA the system trusts: name the server's CA in \
                              [fleet] redis_ca_file)"
                        .to_owned(),
                },
                // The server's TLS answered: it is not a plain one.
                HandshakeFailure::Tls(
                    rustls::Error::InvalidCertificate(_)
                    | rustls::Error::AlertReceived(_)
                    | rustls::Error::PeerIncompatible(_),
                ) => String::new(),
                _ if answers_plain_ping(&f.host, f.port) => format!(
                    " (the server does not speak TLS: it answered a plain PING; use redis://{})",
                    f.url.strip_prefix("rediss://").unwrap_or(&f.url)
                ),
                HandshakeFailure::Tls(rustls::Error::InvalidMessage(_)) => {
                    " (the server does not speak TLS)".to_owned()
                }
                _ => String::new(),
            };
            format!("TLS handshake failed: {why}{hint}")
        }
        (true, Err(Handshake::Setup(why))) => format!("TLS: {why}"),
        (false, Ok(()))
        | (
            false,
            Err(Handshake::Failed(HandshakeFailure::Tls(
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::AlertReceived(_)
                | rustls::Error::PeerIncompatible(_),
            ))),
        ) => format!(
            "{e}: the server speaks TLS (its TLS handshake answered ours): use rediss://{}",
            f.url.strip_prefix("redis://").unwrap_or(&f.url)
        ),
        _ => e.to_string(),
    }
}

/// The certificates a server's is verified against.
#[derive(Debug, Clone, Copy)]
enum Roots<'a> {
    /// The system's (rustls-native-certs), as redis-rs loads them.
    System,
    /// `redis_ca_file`'s, PEM.
    CaFile(&'a [u8]),
}

/// Why [`handshake`] did not shake hands.
#[derive(Debug)]
enum Handshake {
    /// No TCP connection (nothing listening, no such host): not TLS's fault.
    Connect,
    /// Nothing to shake hands with: the system's roots unreadable, or a host rustls cannot
    /// verify a certificate for.
    Setup(String),
    /// Connected over TCP, then the TLS handshake failed.
    Failed(HandshakeFailure),
}

/// How a TLS handshake failed once connected.
#[derive(Debug)]
enum HandshakeFailure {
    /// rustls refused what the server sent, or the server refused ours (an alert).
    Tls(rustls::Error),
    /// The server closed the connection.
    Closed,
    /// No answer in [`REDIS_TIMEOUT_MS`].
    TimedOut,
    /// Another error of the connection.
    Io(io::Error),
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeFailure::Tls(e) => write!(out, "{e}"),
            HandshakeFailure::Closed => write!(out, "the server closed the connection"),
            HandshakeFailure::TimedOut => write!(out, "no answer in {REDIS_TIMEOUT_MS} ms"),
            HandshakeFailure::Io(e) => write!(out, "{e}"),
        }
    }
}

/// A TLS handshake with `host:port` as redis-rs makes it (rustls' ring provider, the default
/// protocol versions, the certificate verified against `roots` for `host`, in
/// [`REDIS_TIMEOUT_MS`] per step), then nothing: to tell a failure of TLS from the others.
fn handshake(host: &str, port: u16, roots: Roots<'_>) -> Result<(), Handshake> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::CaFile(pem) => {
            let certs = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok);
            store.add_parsable_certificates(certs);
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            if let Some(e) = found.errors.first() {
                return Err(Handshake::Setup(format!(
                    "cannot load the system's root certificates: {e}"
                )));
            }
            store.add_parsable_certificates(found.certs);
        }
    }
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| Handshake::Setup(format!("{host:?} cannot be verified: {e}")))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Handshake::Failed(HandshakeFailure::Tls(e)))?
    .with_root_certificates(store)
    .with_no_client_auth();
    let mut tls = rustls::ClientConnection::new(Arc::new(config), name)
        .map_err(|e| Handshake::Failed(HandshakeFailure::Tls(e)))?;
    let timeout = Duration::from_millis(REDIS_TIMEOUT_MS);
    let mut tcp = tcp_connect(host, port, timeout).map_err(|_| Handshake::Connect)?;
    let failed = |e: io::Error| Handshake::Failed(HandshakeFailure::Io(e));
    tcp.set_read_timeout(Some(timeout)).map_err(failed)?;
    tcp.set_write_timeout(Some(timeout)).map_err(failed)?;
    while tls.is_handshaking() {
        if let Err(e) = tls.complete_io(&mut tcp) {
            let why = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(t) => HandshakeFailure::Tls(t.clone()),
                None => match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        HandshakeFailure::TimedOut
                    }
                    io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe => HandshakeFailure::Closed,
                    _ => HandshakeFailure::Io(e),
                },
            };
            return Err(Handshake::Failed(why));
        }
    }
    Ok(())
}

/// Whether `host:port` answers an inline `PING` as a plain Redis does (`+PONG`, or an error
/// such as `-NOAUTH`), in [`REDIS_TIMEOUT_MS`] per step: a plain Redis on a port named by
/// `rediss://` may answer a TLS hello with an error, close, or wait for the rest of a line
/// until the time is up, so the handshake alone does not tell it.
fn answers_plain_ping(host: &str, port: u16) -> bool {
    let timeout = Duration::from_millis(REDIS_TIMEOUT_MS);
    let Ok(mut tcp) = tcp_connect(host, port, timeout) else {
        return false;
    };
    let mut first = [0u8; 1];
    tcp.set_read_timeout(Some(timeout)).is_ok()
        && tcp.set_write_timeout(Some(timeout)).is_ok()
        && tcp.write_all(b"PING\r\n").is_ok()
        && tcp.read_exact(&mut first).is_ok()
        && matches!(first[0], b'+' | b'-')
}

/// A TCP connection to the first of `host:port`'s addresses that takes one in `timeout`.
#[allow(
    clippy::disallowed_methods,
    reason = "the fleet agent's thread, --check and ctl: never a shard"
)]
fn tcp_connect(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the name has no address");
    for addr in std::net::ToSocketAddrs::to_socket_addrs(&(host, port))? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The instances announced in the last [`INSTANCE_TTL_MS`] and when each last synced (unix
/// ms), on Redis's clock.
pub fn instances(conn: &mut redis::Connection) -> Result<Vec<(String, u64)>, String> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).map_err(|e| e.to_string())?;
    let now_ms = secs * 1000 + micros / 1000;
    redis::cmd("ZRANGEBYSCORE")
        .arg(INSTANCES_KEY)
        .arg(now_ms.saturating_sub(INSTANCE_TTL_MS))
        .arg("+inf")
        .arg("WITHSCORES")
        .query(conn)
        .map_err(|e| e.to_string())
}

/// Which of a tenant's (or key's) limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Rpm,
    Tpm,
    /// Tokens per budget window.
    Budget,
    /// Microdollars per budget window.
    BudgetUsd,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Rpm, Kind::Tpm, Kind::Budget, Kind::BudgetUsd];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::Tpm => "tpm",
            Kind::Budget => "budget_tokens",
            Kind::BudgetUsd => "budget_usd",
        }
    }

    /// Its credit cells.
    pub fn cells(self, f: &FleetCells) -> &CreditCells {
        match self {
            Kind::Rpm => &f.rpm,
            Kind::Tpm => &f.tpm,
            Kind::Budget => &f.budget,
            Kind::BudgetUsd => &f.budget_usd,
        }
    }
}

/// The fleet-wide usage counters, each a Redis hash of tenant name to count (`sg:usage:<name>`),
/// raised by every instance by what its shards counted since its last push: requests, tokens
/// in and out, spend in nanodollars, unpriced requests. Since Redis last started empty.
pub const USAGE_COUNTERS: [&str; 5] = [
    "requests",
    "tokens_in",
    "tokens_out",
    "spend_nusd",
    "unpriced",
];
/// What a usage counter's hash is called.
pub fn usage_key(counter: &str) -> String {
    format!("sg:usage:{counter}")
}

/// A tenant's usage: one count per [`USAGE_COUNTERS`] entry.
pub type Usage = [u64; USAGE_COUNTERS.len()];

/// Add `deltas` (by tenant) to the fleet's usage counters, at once (one MULTI/EXEC).
pub fn push_usage(
    conn: &mut redis::Connection,
    deltas: &std::collections::BTreeMap<String, Usage>,
) -> Result<(), String> {
    let mut p = redis::pipe();
    p.atomic();
    for (tenant, d) in deltas {
        for (counter, n) in USAGE_COUNTERS.iter().zip(d) {
            if *n > 0 {
                p.hincr(usage_key(counter), tenant, *n).ignore();
            }
        }
    }
    p.query::<()>(conn).map_err(|e| e.to_string())
}

/// The fleet's usage counters, by tenant.
pub fn usage(
    conn: &mut redis::Connection,
) -> Result<std::collections::BTreeMap<String, Usage>, String> {
    let mut p = redis::pipe();
    p.atomic();
    for c in USAGE_COUNTERS {
        p.hgetall(usage_key(c));
    }
    let hashes: Vec<std::collections::HashMap<String, u64>> =
        p.query(conn).map_err(|e| e.to_string())?;
    let mut out: std::collections::BTreeMap<String, Usage> = std::collections::BTreeMap::new();
    for (i, h) in hashes.into_iter().enumerate() {
        for (tenant, n) in h {
            if let Some(c) = out.entry(tenant).or_default().get_mut(i) {
                *c = n;
            }
        }
    }
    Ok(out)
}
