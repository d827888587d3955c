//! A scriptable HTTP/1.1 upstream on std threads: one thread per connection, no async runtime.
//!
//! Each connection thread parses requests in a keep-alive loop (Content-Length and chunked
//! bodies, chunked ones de-chunked) and hands each to the test's handler together with the
//! `TcpStream`, so a handler can write any bytes, sleep, close or reset:
//!
//! - return `Ok(Action::KeepAlive)`: read the next request on this connection;
//! - return `Ok(Action::Close)`: shut the socket down both ways and close it (FIN): the mock's
//!   own close, counted by [`MockUpstream::connections_closed_by_us`];
//! - return `Ok(Action::Reset)`: set SO_LINGER to 0 (through `socket2`; std's `set_linger` is
//!   unstable) and close: the kernel sends RST instead of FIN, and the peer's next read fails with
//!   `ECONNRESET`. Also counted by [`MockUpstream::connections_closed_by_us`];
//! - return `Err(_)` (a write failed, typically because the proxy closed the connection): counted
//!   as closed by the peer.
//!
//! A connection the proxy closes (EOF or error on read, or a failed write in the handler) counts
//! in [`MockUpstream::connections_closed_by_peer`]; one closed in the middle of a request also in
//! [`MockUpstream::incomplete_requests`]. Dropping the `MockUpstream` stops the accept loop and
//! shuts every connection down, which unblocks every thread (and every [`hang`] handler).
//!
//! [`MockUpstream::start_tls`] serves TLS (rustls) the same way: the connection thread completes
//! the handshake first (a failed one counts in [`MockUpstream::handshake_failures`], with its
//! error in [`MockUpstream::handshake_errors`]; a completed one is listed in
//! [`MockUpstream::tls_handshakes`] with the client's SNI and ALPN), then runs the same loop, the
//! handler getting a [`TlsServerStream`]. The ready-made handlers work on both.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub version: String,
    /// In arrival order, names as sent.
    pub headers: Vec<(String, String)>,
    /// De-chunked when the request was chunked.
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Which accepted connection (0-based, in accept order) carried it.
    pub conn: usize,
    /// The trailer section's lines of a chunked body (between the last chunk and the empty
    /// line), as sent.
    pub trailers: Vec<String>,
}

impl Request {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_value(&self.headers, name)
    }

    /// Every value of the header `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        crate::header_values(&self.headers, name)
    }

    /// The request as JSON, the body as a (lossy) UTF-8 string.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "method": self.method,
            "path": self.path,
            "version": self.version,
            "headers": self.headers.iter().map(|(k, v)| vec![k.clone(), v.clone()]).collect::<Vec<_>>(),
            "body": String::from_utf8_lossy(&self.body),
            "body_len": self.body.len(),
            "chunked": self.chunked,
        })
    }
}

/// What the connection thread does after the handler returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Read the next request on this connection.
    KeepAlive,
    /// Close the connection with FIN.
    Close,
    /// Close the connection with RST.
    Reset,
}

/// A request handler: write the response (or anything else) to the stream.
pub type Handler = Arc<dyn Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync>;

/// The stream a TLS mock's handler writes to: rustls over the accepted socket (`.sock` is the
/// `TcpStream`, `.conn` the `ServerConnection`).
pub type TlsServerStream = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// A TLS mock's request handler.
pub type TlsHandler =
    Arc<dyn Fn(&Request, &mut TlsServerStream) -> io::Result<Action> + Send + Sync>;

/// A handshake a TLS mock completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsHandshake {
    /// Which accepted connection (0-based, as in [`Request::conn`]).
    pub conn: usize,
    /// The server name the client sent (none for an IP address or no SNI).
    pub sni: Option<String>,
    /// The agreed ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// `TLSv1_3`, `TLSv1_2`.
    pub version: String,
    /// The client resumed an earlier session (a ticket or session id) instead of a full
    /// handshake.
    pub resumed: bool,
}

/// A stream the connection loop can serve: a plain socket or TLS over one.
trait MockConn: Read + Write {
    fn socket(&self) -> &TcpStream;

    /// `Action::Close`: the mock's own close, FIN (TLS: close_notify first).
    fn close(&mut self) {
        let _ = self.socket().shutdown(Shutdown::Both);
    }
}

impl MockConn for TcpStream {
    fn socket(&self) -> &TcpStream {
        self
    }
}

impl MockConn for TlsServerStream {
    fn socket(&self) -> &TcpStream {
        &self.sock
    }

    fn close(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
        let _ = self.sock.shutdown(Shutdown::Both);
    }
}

#[derive(Default)]
struct Inner {
    requests: Mutex<Vec<Request>>,
    accepted: AtomicUsize,
    closed_by_peer: AtomicUsize,
    closed_by_us: AtomicUsize,
    incomplete: AtomicUsize,
    unparsable: AtomicUsize,
    stop: AtomicBool,
    streams: Mutex<Vec<(usize, TcpStream)>>,
    handshakes: Mutex<Vec<TlsHandshake>>,
    handshake_errors: Mutex<Vec<String>>,
    handshake_failures: AtomicUsize,
}

/// What an accepted connection's thread runs.
type OnConn = Arc<dyn Fn(TcpStream, usize, &Inner) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The mock upstream server. See the module docs.
pub struct MockUpstream {
    addr: SocketAddr,
    inner: Arc<Inner>,
    accept_thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream")
            .field("addr", &self.addr)
            .field("accepted", &self.connections_accepted())
            .finish()
    }
}

impl MockUpstream {
    /// Listens on 127.0.0.1:0 and serves every connection with `handler`.
    pub fn start<F>(handler: F) -> MockUpstream
    where
        F: Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync + 'static,
    {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), handler)
    }

    /// [`MockUpstream::start`] on a given address (e.g. the address of an upstream that was
    /// stopped, to bring it back).
    pub fn start_on<F>(addr: SocketAddr, handler: F) -> MockUpstream
    where
        F: Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync + 'static,
    {
        let handler: Handler = Arc::new(handler);
        Self::listen(
            addr,
            Arc::new(move |stream, conn, inner| serve(stream, conn, inner, &*handler)),
        )
    }

    /// Listens on 127.0.0.1:0 and serves TLS with `leaf` (ALPN `http/1.1`, no client
    /// authentication), every connection with `handler`. See the module docs.
    pub fn start_tls<F>(leaf: &crate::tls::Leaf, handler: F) -> MockUpstream
    where
        F: Fn(&Request, &mut TlsServerStream) -> io::Result<Action> + Send + Sync + 'static,
    {
        let config = crate::tls::server_config(leaf)
            .unwrap_or_else(|e| panic!("TLS mock upstream config: {e}"));
        Self::start_tls_with("127.0.0.1:0".parse().expect("addr"), config, handler)
    }

    /// [`MockUpstream::start_tls`] on a given address with any rustls server config.
    pub fn start_tls_with<F>(
        addr: SocketAddr,
        config: Arc<rustls::ServerConfig>,
        handler: F,
    ) -> MockUpstream
    where
        F: Fn(&Request, &mut TlsServerStream) -> io::Result<Action> + Send + Sync + 'static,
    {
        let handler: TlsHandler = Arc::new(handler);
        Self::listen(
            addr,
            Arc::new(
                move |stream, conn, inner| match tls_accept(config.clone(), stream) {
                    Ok(tls) => {
                        lock(&inner.handshakes).push(TlsHandshake {
                            conn,
                            sni: tls.conn.server_name().map(str::to_owned),
                            alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
                            version: tls
                                .conn
                                .protocol_version()
                                .map(|v| format!("{v:?}"))
                                .unwrap_or_default(),
                            resumed: tls.conn.handshake_kind()
                                == Some(rustls::HandshakeKind::Resumed),
                        });
                        serve(tls, conn, inner, &*handler);
                    }
                    Err(e) => {
                        if !inner.stop.load(Ordering::SeqCst) {
                            lock(&inner.handshake_errors).push(e);
                            inner.handshake_failures.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                },
            ),
        )
    }

    fn listen(addr: SocketAddr, on_conn: OnConn) -> MockUpstream {
        let listener = TcpListener::bind(addr).expect("bind mock upstream");
        let addr = listener.local_addr().expect("local_addr");
        let inner = Arc::new(Inner::default());
        let acc_inner = inner.clone();
        let accept_thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if acc_inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_nodelay(true);
                let conn = acc_inner.accepted.fetch_add(1, Ordering::SeqCst);
                if let Ok(clone) = stream.try_clone() {
                    lock(&acc_inner.streams).push((conn, clone));
                }
                let inner = acc_inner.clone();
                let on_conn = on_conn.clone();
                std::thread::spawn(move || {
                    on_conn(stream, conn, &inner);
                    // Drop the registry's clone too, so the socket really closes here.
                    lock(&inner.streams).retain(|(c, _)| *c != conn);
                });
            }
        });
        MockUpstream {
            addr,
            inner,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every complete request received so far, in arrival order.
    pub fn requests(&self) -> Vec<Request> {
        lock(&self.inner.requests).clone()
    }

    /// Connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.inner.accepted.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed (EOF or error on read, or a failed write in a handler).
    pub fn connections_closed_by_peer(&self) -> usize {
        self.inner.closed_by_peer.load(Ordering::SeqCst)
    }

    /// Connections the mock closed itself (a handler returned `Action::Close`).
    pub fn connections_closed_by_us(&self) -> usize {
        self.inner.closed_by_us.load(Ordering::SeqCst)
    }

    /// Connections the proxy closed in the middle of a request (head or body incomplete).
    pub fn incomplete_requests(&self) -> usize {
        self.inner.incomplete.load(Ordering::SeqCst)
    }

    /// Requests the mock could not parse (the connection was then closed).
    pub fn unparsable_requests(&self) -> usize {
        self.inner.unparsable.load(Ordering::SeqCst)
    }

    /// Waits (bounded) until at least `n` requests arrived.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || lock(&self.inner.requests).len() >= n)
    }

    /// TLS: connections whose handshake failed (the client refused our certificate, spoke
    /// plain HTTP, or closed before finishing it).
    pub fn handshake_failures(&self) -> usize {
        self.inner.handshake_failures.load(Ordering::SeqCst)
    }

    /// TLS: why each failed handshake failed (rustls' error, e.g. `received fatal alert:
    /// UnknownCA`), in order.
    pub fn handshake_errors(&self) -> Vec<String> {
        lock(&self.inner.handshake_errors).clone()
    }

    /// TLS: every completed handshake, in completion order.
    pub fn tls_handshakes(&self) -> Vec<TlsHandshake> {
        lock(&self.inner.handshakes).clone()
    }

    /// Waits (bounded) until at least `n` handshakes failed.
    pub fn wait_handshake_failures(&self, n: usize, timeout: Duration) -> bool {
        crate::wait_until(timeout, || self.handshake_failures() >= n)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then unblock every connection thread.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        for (_, s) in lock(&self.inner.streams).iter() {
            let _ = s.shutdown(Shutdown::Both);
        }
        if let Some(t) = self.accept_thread.take() {
            let _ = t.join();
        }
    }
}

/// Completes the server side of a TLS handshake on an accepted socket.
fn tls_accept(
    config: Arc<rustls::ServerConfig>,
    mut sock: TcpStream,
) -> Result<TlsServerStream, String> {
    let mut conn =
        rustls::ServerConnection::new(config).map_err(|e| format!("TLS server setup: {e}"))?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok((0, 0)) if conn.is_handshaking() => {
                return Err("connection closed during the handshake".into())
            }
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}

fn serve<S: MockConn>(
    mut stream: S,
    conn: usize,
    inner: &Inner,
    handler: &(dyn Fn(&Request, &mut S) -> io::Result<Action> + Send + Sync),
) {
    let mut buf = Vec::new();
    loop {
        match read_request(&mut stream, &mut buf, conn) {
            Ok(req) => {
                lock(&inner.requests).push(req.clone());
                match handler(&req, &mut stream) {
                    Ok(Action::KeepAlive) => {}
                    Ok(Action::Close) => {
                        stream.close();
                        inner.closed_by_us.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(Action::Reset) => {
                        let _ = socket2::SockRef::from(stream.socket())
                            .set_linger(Some(Duration::ZERO));
                        inner.closed_by_us.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Err(_) => {
                        if !inner.stop.load(Ordering::SeqCst) {
                            inner.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        }
                        return;
                    }
                }
            }
            Err(e) => {
                if inner.stop.load(Ordering::SeqCst) {
                    return;
                }
                match e {
                    ReadErr::Closed => {
                        inner.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                    }
                    ReadErr::Incomplete => {
                        inner.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                        inner.incomplete.fetch_add(1, Ordering::SeqCst);
                    }
                    ReadErr::Bad(why) => {
                        eprintln!("mock upstream: unparsable request: {why}");
                        inner.unparsable.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.socket().shutdown(Shutdown::Both);
                    }
                }
                return;
            }
        }
    }
}

enum ReadErr {
    /// EOF or error before any byte of a request.
    Closed,
    /// EOF or error in the middle of a request.
    Incomplete,
    Bad(String),
}

const MOCK_HEAD_MAX: usize = 1024 * 1024;

/// Reads more bytes into `buf`; false at EOF or on error.
fn fill(stream: &mut impl Read, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk) {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn read_request(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    conn: usize,
) -> Result<Request, ReadErr> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MOCK_HEAD_MAX {
            return Err(ReadErr::Bad("head too large".into()));
        }
        if !fill(stream, buf) {
            return Err(if buf.is_empty() {
                ReadErr::Closed
            } else {
                ReadErr::Incomplete
            });
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let mut parts = line.splitn(3, ' ');
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadErr::Bad(format!("request line {line:?}")));
    };
    let mut headers = Vec::new();
    for l in lines {
        let Some((k, v)) = l.split_once(':') else {
            return Err(ReadErr::Bad(format!("header line {l:?}")));
        };
        headers.push((k.to_owned(), v.trim().to_owned()));
    }
    let mut req = Request {
        method: method.to_owned(),
        path: path.to_owned(),
        version: version.to_owned(),
        headers,
        body: Vec::new(),
        chunked: false,
        conn,
        trailers: Vec::new(),
    };
    let te = req.header("transfer-encoding").map(str::to_ascii_lowercase);
    if te.as_deref().is_some_and(|t| t.contains("chunked")) {
        req.chunked = true;
        req.body = read_chunked(stream, buf, &mut req.trailers)?;
    } else if let Some(cl) = req.header("content-length") {
        let n: usize = cl
            .parse()
            .map_err(|_| ReadErr::Bad(format!("content-length {cl:?}")))?;
        while buf.len() < n {
            if !fill(stream, buf) {
                return Err(ReadErr::Incomplete);
            }
        }
        req.body = buf.drain(..n).collect();
    }
    Ok(req)
}

fn read_line(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<String, ReadErr> {
    loop {
        if let Some(i) = find(buf, b"\r\n") {
            let line = String::from_utf8_lossy(&buf[..i]).into_owned();
            buf.drain(..i + 2);
            return Ok(line);
        }
        if buf.len() > MOCK_HEAD_MAX {
            return Err(ReadErr::Bad("chunk line too long".into()));
        }
        if !fill(stream, buf) {
            return Err(ReadErr::Incomplete);
        }
    }
}

fn read_chunked(
    stream: &mut impl Read,
    buf: &mut Vec<u8>,
    trailers: &mut Vec<String>,
) -> Result<Vec<u8>, ReadErr> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf)?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| ReadErr::Bad(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers until the empty line.
            loop {
                let line = read_line(stream, buf)?;
                if line.is_empty() {
                    return Ok(body);
                }
                trailers.push(line);
            }
        }
        while buf.len() < size + 2 {
            if !fill(stream, buf) {
                return Err(ReadErr::Incomplete);
            }
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ReadErr::Bad("chunk data not followed by CRLF".into()));
        }
        buf.drain(..size + 2);
    }
}

/// Writes a complete `HTTP/1.1` response with a `Content-Length`.
pub fn write_response<W: Write + ?Sized>(
    stream: &mut W,
    status: u16,
    content_type: &str,
    body: &[u8],
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        reason(status),
        body.len()
    );
    let mut out = head.into_bytes();
    out.extend_from_slice(body);
    stream.write_all(&out)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Writes one chunk of a chunked body.
pub fn write_chunk<W: Write + ?Sized>(stream: &mut W, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out)
}

/// Answers every request `200` with `body` as `application/json`, keep-alive. (Like every
/// ready-made handler here, for a plain or a TLS mock.)
pub fn json_ok<S: Write>(
    body: &str,
) -> impl Fn(&Request, &mut S) -> io::Result<Action> + Send + Sync {
    let body = body.to_owned();
    move |_req, stream| {
        write_response(stream, 200, "application/json", body.as_bytes())?;
        Ok(Action::KeepAlive)
    }
}

/// Answers every request `200` with the request itself as JSON (see [`Request::to_json`]).
pub fn echo<S: Write>() -> impl Fn(&Request, &mut S) -> io::Result<Action> + Send + Sync {
    |req, stream| {
        let body = req.to_json().to_string();
        write_response(stream, 200, "application/json", body.as_bytes())?;
        Ok(Action::KeepAlive)
    }
}

/// `n` OpenAI chat-completion chunks with one word of content each (`w0 `, `w1 `, ...), as
/// one string of SSE events.
pub fn content_events(n: usize) -> String {
    let mut all = String::new();
    for i in 0..n {
        all.push_str(&format!(
            "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
        ));
    }
    all
}

/// The SSE event number `i`: `data: {"n":i}\n\n`.
pub fn sse_event(i: usize) -> String {
    format!("data: {{\"n\":{i}}}\n\n")
}

/// A chunked `text/event-stream`: events 1..=n (see [`sse_event`]) one per chunk, `interval`
/// apart, then `data: [DONE]\n\n` and the last chunk. A failed write (the proxy went away) ends it
/// with the error.
pub fn sse<S: Write>(
    n_events: usize,
    interval: Duration,
) -> impl Fn(&Request, &mut S) -> io::Result<Action> + Send + Sync {
    move |_req, stream| {
        stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        for i in 1..=n_events {
            write_chunk(stream, sse_event(i).as_bytes())?;
            crate::sleep(interval);
        }
        write_chunk(stream, b"data: [DONE]\n\n")?;
        stream.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    }
}

/// Accepts the request and never answers. Returns (with an error, so the connection counts as
/// closed by the peer) once the proxy closes the connection, or when the mock is dropped.
pub fn hang<S: Read>() -> impl Fn(&Request, &mut S) -> io::Result<Action> + Send + Sync {
    |_req, stream| {
        let mut b = [0u8; 1024];
        loop {
            match stream.read(&mut b) {
                Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}
