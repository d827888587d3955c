//! A raw HTTP/1.1 client on a std `TcpStream`, or TLS over one (rustls): send any bytes, parse
//! responses, see closes. Every read has a deadline (10 s by default, see [`Client::set_timeout`]).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::tls::TlsClientStream;
use crate::WAIT;

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    /// De-chunked when it was chunked.
    pub body: Vec<u8>,
    /// Whether the body came with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Whether the body was delimited by the server closing the connection.
    pub close_delimited: bool,
}

impl Response {
    /// First value of the header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::header_value(&self.headers, name)
    }

    /// Every value of the header `name` (case-insensitive).
    pub fn headers_named(&self, name: &str) -> Vec<&str> {
        crate::header_values(&self.headers, name)
    }

    /// Whether a `Connection` header lists `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        self.headers_named("connection")
            .iter()
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the response when it is not.
    #[track_caller]
    /// The `path` an [`echo`](crate::echo) upstream reported for the request it answered.
    pub fn echoed_path(&self) -> Option<String> {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["path"].as_str().map(str::to_owned))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.summary()))
    }

    /// Status line, headers and the start of the body, for assertion messages.
    pub fn summary(&self) -> String {
        let mut s = format!("{} {} {}", self.version, self.status, self.reason);
        for (k, v) in &self.headers {
            s.push_str(&format!("\n  {k}: {v}"));
        }
        let body = self.body_str();
        let cut: String = body.chars().take(600).collect();
        s.push_str(&format!("\n  body ({} bytes): {cut}", self.body.len()));
        s
    }
}

/// How a connection ended, as seen by [`Client::wait_closed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// Read returned 0 (FIN).
    Eof,
    /// Read failed with a reset (RST).
    Reset,
    /// Still open when the wait ran out.
    StillOpen,
    /// Bytes arrived instead of a close (they are returned).
    Data(Vec<u8>),
}

impl Closed {
    pub fn is_closed(&self) -> bool {
        matches!(self, Closed::Eof | Closed::Reset)
    }
}

enum Fill {
    Data,
    Eof,
    Reset,
    TimedOut,
}

/// What a [`Client`] talks over.
#[derive(Debug)]
enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsClientStream>),
}

impl Transport {
    fn sock(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    fn tls(&self) -> Option<&rustls::ClientConnection> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) => Some(&t.conn),
        }
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.flush(),
            Transport::Tls(t) => t.flush(),
        }
    }
}

/// A client connection, plain or TLS. Bytes read past a response stay buffered for the next one.
#[derive(Debug)]
pub struct Client {
    stream: Transport,
    buf: Vec<u8>,
    timeout: Duration,
    /// The last read error (a reset, a TLS alert), for assertion messages.
    last_error: Option<String>,
    /// TLS: whether the server's close_notify was seen (an EOF without it is still an EOF).
    close_notify: bool,
}

impl Client {
    /// Connects (bounded by 5 s); panics on failure.
    #[track_caller]
    pub fn connect(addr: SocketAddr) -> Client {
        Client::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    pub fn try_connect(addr: SocketAddr) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(WAIT))?;
        Ok(Client::over(Transport::Plain(stream)))
    }

    fn over(stream: Transport) -> Client {
        Client {
            stream,
            buf: Vec::new(),
            timeout: WAIT,
            last_error: None,
            close_notify: false,
        }
    }

    /// Connects and completes a TLS handshake for server name `sni` (a DNS name or an IP
    /// address), trusting only the CA certificates in `ca_pem`, offering ALPN `http/1.1`; panics
    /// on failure.
    #[track_caller]
    pub fn connect_tls(addr: SocketAddr, sni: &str, ca_pem: &str) -> Client {
        Client::try_connect_tls(addr, sni, ca_pem).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Client::connect_tls`] that returns the failure, rustls' error included (e.g.
    /// `invalid peer certificate: UnknownIssuer`).
    pub fn try_connect_tls(addr: SocketAddr, sni: &str, ca_pem: &str) -> Result<Client, String> {
        Client::try_connect_tls_with(addr, sni, crate::tls::client_config(ca_pem)?)
    }

    /// [`Client::try_connect_tls`] with any rustls client config (other ALPN, a client
    /// certificate, ...; see [`crate::tls::client_config`]).
    pub fn try_connect_tls_with(
        addr: SocketAddr,
        sni: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> Result<Client, String> {
        let tls = crate::tls::connect_tls_stream(addr, sni, config)?;
        Ok(Client::over(Transport::Tls(Box::new(tls))))
    }

    /// Whether this connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.stream.tls().is_some()
    }

    /// TLS: the server's end-entity certificate (DER). `None` over plain TCP.
    pub fn peer_certificate(&self) -> Option<Vec<u8>> {
        self.stream
            .tls()?
            .peer_certificates()?
            .first()
            .map(|c| c.to_vec())
    }

    /// TLS: the negotiated ALPN protocol. `None` over plain TCP or when none was agreed.
    pub fn alpn(&self) -> Option<Vec<u8>> {
        self.stream.tls()?.alpn_protocol().map(<[u8]>::to_vec)
    }

    /// TLS: the negotiated protocol version (`TLSv1_3`, ...). `None` over plain TCP.
    pub fn tls_version(&self) -> Option<String> {
        self.stream
            .tls()?
            .protocol_version()
            .map(|v| format!("{v:?}"))
    }

    /// TLS: whether the server's close_notify arrived. An EOF without one still reads as
    /// [`Closed::Eof`]; this tells the two apart.
    pub fn close_notify_received(&self) -> bool {
        self.close_notify
    }

    /// The last read error other than a timeout (a reset, a TLS alert such as
    /// `received fatal alert: ...`), if any.
    pub fn last_read_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// TLS: sends close_notify (the TLS half-close); does nothing over plain TCP. The socket stays
    /// open; [`Client::shutdown_write`] sends the TCP FIN.
    pub fn send_close_notify(&mut self) {
        if let Transport::Tls(t) = &mut self.stream {
            t.conn.send_close_notify();
            let _ = t.flush();
        }
    }

    /// The bound on each read operation (a whole response, a wait for close).
    pub fn set_timeout(&mut self, t: Duration) {
        self.timeout = t;
    }

    /// The TCP socket (under the TLS session for a TLS client).
    pub fn stream(&self) -> &TcpStream {
        self.stream.sock()
    }

    /// Writes all of `bytes`; panics on failure.
    #[track_caller]
    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        let bytes = bytes.as_ref();
        if let Err(e) = self.try_send(bytes) {
            panic!("send {} bytes: {e}", bytes.len());
        }
    }

    pub fn try_send(&mut self, bytes: impl AsRef<[u8]>) -> io::Result<()> {
        self.stream.write_all(bytes.as_ref())?;
        // TLS: push out records the last write could not (a no-op on TCP).
        self.stream.flush()
    }

    /// Closes the socket's write side (FIN), keeping the read side open. For TLS this is the
    /// TCP FIN only, no close_notify (see [`Client::send_close_notify`]).
    pub fn shutdown_write(&self) {
        let _ = self.stream.sock().shutdown(std::net::Shutdown::Write);
    }

    fn fill(&mut self, deadline: Instant) -> Fill {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Fill::TimedOut;
        }
        let _ = self
            .stream
            .sock()
            .set_read_timeout(Some(left.max(Duration::from_millis(1))));
        let mut chunk = [0u8; 65536];
        loop {
            return match self.stream.read(&mut chunk) {
                Ok(0) => {
                    // TLS: rustls reports a clean EOF only after close_notify.
                    self.close_notify = self.is_tls();
                    Fill::Eof
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    Fill::Data
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    Fill::TimedOut
                }
                // TLS: the TCP FIN came without close_notify.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && self.is_tls() => Fill::Eof,
                Err(e) => {
                    self.last_error = Some(e.to_string());
                    Fill::Reset
                }
            };
        }
    }

    /// Reads one response (a 1xx too: call again for the final one); panics when none comes.
    #[track_caller]
    pub fn read_response(&mut self) -> Response {
        match self.try_read_response() {
            Ok(r) => r,
            Err(e) => panic!("reading a response: {e}"),
        }
    }

    /// Reads one response, or says why there was none (with the bytes received).
    pub fn try_read_response(&mut self) -> Result<Response, String> {
        self.try_read_response_for("GET")
    }

    /// Reads one response to a request with `method` (`HEAD` responses have no body).
    pub fn try_read_response_for(&mut self, method: &str) -> Result<Response, String> {
        let deadline = Instant::now() + self.timeout;
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            match self.fill(deadline) {
                Fill::Data => {}
                how => {
                    return Err(format!(
                        "{} before a complete response head; got {:?}",
                        fill_name(&how),
                        String::from_utf8_lossy(&self.buf)
                    ))
                }
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end + 4);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {status_line:?}"))?;
        let reason = parts.next().unwrap_or_default().to_owned();
        if !version.starts_with("HTTP/1.") {
            return Err(format!("bad status line {status_line:?}"));
        }
        let mut headers = Vec::new();
        for l in lines {
            let (k, v) = l
                .split_once(':')
                .ok_or_else(|| format!("bad header line {l:?} in {head:?}"))?;
            headers.push((k.to_owned(), v.trim().to_owned()));
        }
        let mut resp = Response {
            version,
            status,
            reason,
            headers,
            body: Vec::new(),
            chunked: false,
            close_delimited: false,
        };
        if (100..200).contains(&status)
            || status == 204
            || status == 304
            || method.eq_ignore_ascii_case("HEAD")
        {
            return Ok(resp);
        }
        let te = resp
            .header("transfer-encoding")
            .map(str::to_ascii_lowercase);
        if te.as_deref().is_some_and(|t| t.contains("chunked")) {
            resp.chunked = true;
            resp.body = self
                .read_chunked(deadline)
                .map_err(|e| format!("{e}; head was:\n{}", resp.summary()))?;
        } else if let Some(cl) = resp.header("content-length") {
            let n: usize = cl
                .trim()
                .parse()
                .map_err(|_| format!("bad Content-Length {cl:?}"))?;
            while self.buf.len() < n {
                match self.fill(deadline) {
                    Fill::Data => {}
                    how => {
                        return Err(format!(
                            "{} after {} of {n} body bytes; head was:\n{}",
                            fill_name(&how),
                            self.buf.len(),
                            resp.summary()
                        ))
                    }
                }
            }
            resp.body = self.buf.drain(..n).collect();
        } else {
            // Close-delimited.
            resp.close_delimited = true;
            loop {
                match self.fill(deadline) {
                    Fill::Data => {}
                    Fill::Eof => break,
                    how => {
                        return Err(format!(
                            "{} in a close-delimited body after {} bytes; head was:\n{}",
                            fill_name(&how),
                            self.buf.len(),
                            resp.summary()
                        ))
                    }
                }
            }
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_line(&mut self, deadline: Instant) -> Result<String, String> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            match self.fill(deadline) {
                Fill::Data => {}
                how => return Err(format!("{} in a chunked body", fill_name(&how))),
            }
        }
    }

    fn read_chunked(&mut self, deadline: Instant) -> Result<Vec<u8>, String> {
        let mut body = Vec::new();
        loop {
            let line = self.read_line(deadline)?;
            let size_str = line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size_str, 16)
                .map_err(|_| format!("bad chunk size line {line:?}"))?;
            if size == 0 {
                while !self.read_line(deadline)?.is_empty() {}
                return Ok(body);
            }
            while self.buf.len() < size + 2 {
                match self.fill(deadline) {
                    Fill::Data => {}
                    how => {
                        return Err(format!(
                            "{} inside a chunk ({} body bytes so far)",
                            fill_name(&how),
                            body.len()
                        ))
                    }
                }
            }
            body.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err("chunk data not followed by CRLF".into());
            }
            self.buf.drain(..size + 2);
        }
    }

    /// Reads raw bytes until they contain `needle` (bounded by the timeout); returns everything
    /// received up to and including `needle`, and keeps the rest buffered. Panics otherwise.
    #[track_caller]
    pub fn read_raw_until(&mut self, needle: &[u8]) -> Vec<u8> {
        let deadline = Instant::now() + self.timeout;
        loop {
            if let Some(i) = find(&self.buf, needle) {
                return self.buf.drain(..i + needle.len()).collect();
            }
            match self.fill(deadline) {
                Fill::Data => {}
                how => panic!(
                    "{} waiting for {:?}; got {:?}",
                    fill_name(&how),
                    String::from_utf8_lossy(needle),
                    String::from_utf8_lossy(&self.buf)
                ),
            }
        }
    }

    /// Reads raw bytes until the connection ends or `timeout` passes; returns the bytes (including
    /// any already buffered) and how it ended.
    pub fn read_raw_to_end(&mut self, timeout: Duration) -> (Vec<u8>, Closed) {
        let deadline = Instant::now() + timeout;
        let end = loop {
            match self.fill(deadline) {
                Fill::Data => {}
                Fill::Eof => break Closed::Eof,
                Fill::Reset => break Closed::Reset,
                Fill::TimedOut => break Closed::StillOpen,
            }
        };
        (std::mem::take(&mut self.buf), end)
    }

    /// Waits at most `timeout` for the server to close the connection. Returns `Data` as soon
    /// as any byte arrives instead.
    pub fn wait_closed(&mut self, timeout: Duration) -> Closed {
        if !self.buf.is_empty() {
            return Closed::Data(std::mem::take(&mut self.buf));
        }
        let deadline = Instant::now() + timeout;
        match self.fill(deadline) {
            Fill::Data => Closed::Data(std::mem::take(&mut self.buf)),
            Fill::Eof => Closed::Eof,
            Fill::Reset => Closed::Reset,
            Fill::TimedOut => Closed::StillOpen,
        }
    }

    /// Asserts the server closes the connection within `timeout`, sending nothing more.
    #[track_caller]
    pub fn assert_closed(&mut self, timeout: Duration) {
        match self.wait_closed(timeout) {
            Closed::Eof | Closed::Reset => {}
            Closed::StillOpen => panic!("connection still open after {timeout:?}"),
            Closed::Data(d) => panic!(
                "expected the connection closed, got more bytes: {:?}",
                String::from_utf8_lossy(&d)
            ),
        }
    }

    /// Sends `GET path` (HTTP/1.1, keep-alive) and reads the response.
    #[track_caller]
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"));
        self.read_response()
    }

    /// Sends `POST path` with a JSON body (HTTP/1.1, keep-alive) and reads the response.
    #[track_caller]
    pub fn post_json(&mut self, path: &str, body: &str) -> Response {
        self.send(format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        self.read_response()
    }
}

fn fill_name(f: &Fill) -> &'static str {
    match f {
        Fill::Data => "data",
        Fill::Eof => "EOF",
        Fill::Reset => "connection reset",
        Fill::TimedOut => "timed out",
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits raw response bytes at the end of the head: `(head, rest)`. `None` without a full head.
pub fn split_head(raw: &[u8]) -> Option<(String, &[u8])> {
    let i = find(raw, b"\r\n\r\n")?;
    Some((
        String::from_utf8_lossy(&raw[..i]).into_owned(),
        &raw[i + 4..],
    ))
}

/// De-chunks a raw chunked body. Returns the data and whether the last chunk (`0\r\n\r\n`, after
/// optional trailers) was seen; an error when the framing is broken.
pub fn dechunk(mut raw: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let mut body = Vec::new();
    loop {
        let Some(i) = find(raw, b"\r\n") else {
            return Ok((body, false));
        };
        let line = String::from_utf8_lossy(&raw[..i]).into_owned();
        raw = &raw[i + 2..];
        let size_str = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_str, 16)
            .map_err(|_| format!("bad chunk size line {line:?}"))?;
        if size == 0 {
            // Trailers, then the empty line.
            loop {
                let Some(j) = find(raw, b"\r\n") else {
                    return Ok((body, false));
                };
                let empty = j == 0;
                raw = &raw[j + 2..];
                if empty {
                    return Ok((body, true));
                }
            }
        }
        if raw.len() < size {
            body.extend_from_slice(raw);
            return Ok((body, false));
        }
        body.extend_from_slice(&raw[..size]);
        raw = &raw[size..];
        if raw.len() < 2 {
            return Ok((body, false));
        }
        if &raw[..2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".into());
        }
        raw = &raw[2..];
    }
}
