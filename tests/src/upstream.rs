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
}

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
                let handler = handler.clone();
                std::thread::spawn(move || {
                    serve(stream, conn, &inner, &handler);
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

fn serve(mut stream: TcpStream, conn: usize, inner: &Inner, handler: &Handler) {
    let mut buf = Vec::new();
    loop {
        match read_request(&mut stream, &mut buf, conn) {
            Ok(req) => {
                lock(&inner.requests).push(req.clone());
                match handler(&req, &mut stream) {
                    Ok(Action::KeepAlive) => {}
                    Ok(Action::Close) => {
                        let _ = stream.shutdown(Shutdown::Both);
                        inner.closed_by_us.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    Ok(Action::Reset) => {
                        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
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
                        let _ = stream.shutdown(Shutdown::Both);
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
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
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
    stream: &mut TcpStream,
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
    };
    let te = req.header("transfer-encoding").map(str::to_ascii_lowercase);
    if te.as_deref().is_some_and(|t| t.contains("chunked")) {
        req.chunked = true;
        req.body = read_chunked(stream, buf)?;
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

fn read_line(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<String, ReadErr> {
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

fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Vec<u8>, ReadErr> {
    let mut body = Vec::new();
    loop {
        let line = read_line(stream, buf)?;
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| ReadErr::Bad(format!("chunk size {line:?}")))?;
        if size == 0 {
            // Trailers until the empty line.
            while !read_line(stream, buf)?.is_empty() {}
            return Ok(body);
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
pub fn write_response(
    stream: &mut TcpStream,
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
pub fn write_chunk(stream: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out)
}

/// Answers every request `200` with `body` as `application/json`, keep-alive.
pub fn json_ok(
    body: &str,
) -> impl Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync {
    let body = body.to_owned();
    move |_req, stream| {
        write_response(stream, 200, "application/json", body.as_bytes())?;
        Ok(Action::KeepAlive)
    }
}

/// Answers every request `200` with the request itself as JSON (see [`Request::to_json`]).
pub fn echo() -> impl Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync {
    |req, stream| {
        let body = req.to_json().to_string();
        write_response(stream, 200, "application/json", body.as_bytes())?;
        Ok(Action::KeepAlive)
    }
}

/// The SSE event number `i`: `data: {"n":i}\n\n`.
pub fn sse_event(i: usize) -> String {
    format!("data: {{\"n\":{i}}}\n\n")
}

/// A chunked `text/event-stream`: events 1..=n (see [`sse_event`]) one per chunk, `interval`
/// apart, then `data: [DONE]\n\n` and the last chunk. A failed write (the proxy went away) ends it
/// with the error.
pub fn sse(
    n_events: usize,
    interval: Duration,
) -> impl Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync {
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
pub fn hang() -> impl Fn(&Request, &mut TcpStream) -> io::Result<Action> + Send + Sync {
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
