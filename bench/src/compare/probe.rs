//! One blocking HTTP/1.1 request with a hard deadline: the readiness check ("a 200 through the
//! proxy carrying the upstream's answer") and the SSE no-buffering check.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Largest answer a probe reads.
const PROBE_BYTES_MAX: usize = 1 << 20;

/// What a probe got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub status: u16,
    pub body: Vec<u8>,
    /// From the first body byte received to the end of the answer: near zero when a proxy
    /// buffered a stream and sent it in one go.
    pub body_spread: Duration,
}

/// How the end of a response body is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Parse a response head: `(status, head length, framing)`, or `None` while incomplete.
fn parse_head(buf: &[u8]) -> anyhow::Result<Option<(u16, usize, Framing)>> {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf).context("unparsable response head")? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.unwrap_or(0);
    let mut framing = Framing::UntilClose;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding")
            && String::from_utf8_lossy(h.value)
                .to_ascii_lowercase()
                .contains("chunked")
        {
            framing = Framing::Chunked;
            break;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .context("bad Content-Length")?;
            framing = Framing::Length(len);
        }
    }
    Ok(Some((status, n, framing)))
}

/// Whether the body (bytes after the head) is complete.
fn body_complete(framing: Framing, body: &[u8]) -> bool {
    match framing {
        Framing::Length(n) => body.len() >= n,
        // Good enough for a probe: the last chunk and an empty trailer end the body.
        Framing::Chunked => body.ends_with(b"0\r\n\r\n"),
        Framing::UntilClose => false,
    }
}

/// Send `POST path` with `body` and the given extra headers (`Name: value`), read the whole
/// answer; everything within `deadline`.
pub fn post(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
    body: &str,
    deadline: Duration,
) -> anyhow::Result<ProbeAnswer> {
    let end = Instant::now() + deadline;
    let left = || {
        end.saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut s = TcpStream::connect_timeout(&addr, left())
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let mut req = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.set_write_timeout(Some(left()))?;
    s.write_all(req.as_bytes()).context("sending the probe")?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 * 1024];
    let mut head: Option<(u16, usize, Framing)> = None;
    let mut first_body_at: Option<Instant> = None;
    loop {
        if Instant::now() >= end {
            bail!(
                "no complete answer from {addr} within {deadline:?} ({} bytes so far)",
                buf.len()
            );
        }
        s.set_read_timeout(Some(left()))?;
        let n = match s.read(&mut chunk) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e).context("reading the probe's answer"),
        };
        let now = Instant::now();
        if n == 0 {
            break; // closed
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > PROBE_BYTES_MAX {
            bail!("answer larger than {PROBE_BYTES_MAX} bytes");
        }
        if head.is_none() {
            head = parse_head(&buf)?;
        }
        if let Some((_, off, framing)) = head {
            if buf.len() > off && first_body_at.is_none() {
                first_body_at = Some(now);
            }
            if body_complete(framing, &buf[off..]) {
                break;
            }
        }
    }
    let done = Instant::now();
    let Some((status, off, framing)) = head else {
        bail!(
            "connection closed before a complete response head ({} bytes)",
            buf.len()
        );
    };
    Ok(ProbeAnswer {
        status,
        body: match framing {
            Framing::Length(n) => buf[off..].iter().take(n).copied().collect(),
            Framing::Chunked | Framing::UntilClose => buf[off..].to_vec(),
        },
        body_spread: first_body_at.map_or(Duration::ZERO, |t| done.duration_since(t)),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn heads_and_framing() {
        assert_eq!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
        let h = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse_head(h).unwrap(),
            Some((200, h.len() - 5, Framing::Length(5)))
        );
        let c = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_head(c).unwrap(),
            Some((200, c.len(), Framing::Chunked))
        );
        assert_eq!(
            parse_head(b"HTTP/1.0 502 x\r\n\r\n").unwrap(),
            Some((502, 18, Framing::UntilClose))
        );
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n").is_err());
        assert!(body_complete(Framing::Length(2), b"ab"));
        assert!(!body_complete(Framing::Length(3), b"ab"));
        assert!(body_complete(Framing::Chunked, b"5\r\nhello\r\n0\r\n\r\n"));
        assert!(!body_complete(Framing::Chunked, b"5\r\nhello\r\n"));
    }

    /// A one-shot server answering with `parts`, pausing `gap` between them.
    fn serve(parts: Vec<&'static [u8]>, gap: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut b = [0u8; 4096];
            let _ = s.read(&mut b);
            for p in parts {
                s.write_all(p).unwrap();
                let _ = super::super::child::Interrupt::never().sleep(gap);
            }
        });
        addr
    }

    #[test]
    fn post_reads_a_length_framed_answer() {
        let addr = serve(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\n",
                b"{\"a\"",
                b"IGNORED",
            ],
            Duration::ZERO,
        );
        let a = post(
            addr,
            "/v1/chat/completions",
            &["X: y".into()],
            "{}",
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.body, b"{\"a\"");
    }

    #[test]
    fn post_measures_how_a_stream_is_spread() {
        let addr = serve(
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"6\r\ndata:1\r\n",
                b"6\r\ndata:2\r\n",
                b"0\r\n\r\n",
            ],
            Duration::from_millis(100),
        );
        let a = post(addr, "/", &[], "{}", Duration::from_secs(5)).unwrap();
        assert_eq!(a.status, 200);
        assert!(
            a.body_spread >= Duration::from_millis(150),
            "{:?}",
            a.body_spread
        );
    }

    #[test]
    fn post_is_bounded() {
        let addr = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
            Duration::from_secs(3),
        );
        let t = Instant::now();
        assert!(post(addr, "/", &[], "", Duration::from_millis(300)).is_err());
        assert!(t.elapsed() < Duration::from_secs(2));
        // Nobody listening.
        let free = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        assert!(post(free, "/", &[], "", Duration::from_millis(300)).is_err());
    }
}
