//! Request parsing for the mock upstream, free of I/O: bytes in, a complete request (or "need
//! more", or a refusal) out. httparse parses the head into the caller's stack array; the body is
//! framed by `Content-Length` or `Transfer-Encoding: chunked` (de-chunked into a caller buffer).
//!
//! The mock answers only once a whole request has arrived, so [`parse`] is simply called again
//! from the start of the buffer after each read: the head is small, and a chunked body is first
//! checked for completeness by skipping from chunk line to chunk line, and copied only once.

/// Largest request head (request line and header fields), bytes.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;
/// Size of the stack array httparse parses header fields into (more fields: 431).
pub const HEADERS_MAX: usize = 64;
/// Largest request body (after de-chunking), bytes.
pub const BODY_BYTES_MAX: usize = 8 * 1024 * 1024;
/// Largest request as buffered (head, body and chunked framing), bytes. Chunk lines may cost
/// more than the data in pathological bodies; those are refused with 413 here.
pub const REQUEST_BYTES_MAX: usize = HEADER_BYTES_MAX + 2 * BODY_BYTES_MAX;

const _: () = assert!(HEADER_BYTES_MAX + BODY_BYTES_MAX <= REQUEST_BYTES_MAX);

/// A complete request. `body` is de-chunked.
#[derive(Debug)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    pub body: &'a [u8],
    /// HTTP/1.0 (no chunked responses; keep-alive only when asked for).
    pub http10: bool,
    /// The client wants the connection kept open after this request.
    pub keep_alive: bool,
}

impl Request<'_> {
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(self.target)
    }
}

/// What [`parse`] found at the start of the buffer.
#[derive(Debug)]
pub enum Parse<'a> {
    /// A whole request, `len` bytes of the buffer (what follows is the next, pipelined, one).
    Complete { req: Request<'a>, len: usize },
    /// More bytes are needed. `expect_continue`: the head is complete, asks for
    /// `100-continue`, and the body has not all arrived.
    Partial { expect_continue: bool },
}

/// A request the mock refuses: answered with `status` and the connection closed (its framing
/// cannot be trusted, or it is too large to read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub message: &'static str,
}

const fn refuse(status: u16, message: &'static str) -> Refusal {
    Refusal { status, message }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(usize),
    Chunked,
}

/// Parse the request at the start of `buf`. A chunked body is de-chunked into `chunked_body`
/// (cleared first), and `Request::body` then points there.
pub fn parse<'a>(
    buf: &'a [u8],
    headers: &'a mut [httparse::Header<'a>],
    chunked_body: &'a mut Vec<u8>,
) -> Result<Parse<'a>, Refusal> {
    let mut req = httparse::Request::new(headers);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) if n <= HEADER_BYTES_MAX => n,
        Ok(httparse::Status::Complete(_)) => {
            return Err(refuse(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) if buf.len() > HEADER_BYTES_MAX => {
            return Err(refuse(431, "request head too large"));
        }
        Ok(httparse::Status::Partial) => {
            return Ok(Parse::Partial {
                expect_continue: false,
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(431, "too many header fields"));
        }
        Err(_) => return Err(refuse(400, "malformed request head")),
    };
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(refuse(400, "malformed request head"));
    };
    let http10 = version == 0;
    let headers: &'a [httparse::Header<'a>] = req.headers;
    let mut framing = Framing::None;
    let (mut close, mut keep_alive, mut expect_continue) = (false, false, false);
    let mut te = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("content-length") {
            if framing != Framing::None {
                return Err(refuse(400, "more than one Content-Length"));
            }
            framing = Framing::Length(parse_content_length(h.value)?);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            if te || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(refuse(400, "unsupported Transfer-Encoding (only chunked)"));
            }
            te = true;
        } else if h.name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = trim(token);
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if h.name.eq_ignore_ascii_case("expect") {
            expect_continue = trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    if te {
        if framing != Framing::None {
            return Err(refuse(400, "both Content-Length and Transfer-Encoding"));
        }
        if http10 {
            return Err(refuse(400, "Transfer-Encoding in an HTTP/1.0 request"));
        }
        framing = Framing::Chunked;
    }
    let rest = &buf[head_len..];
    let (body, body_len): (&'a [u8], usize) = match framing {
        Framing::None => (&[], 0),
        Framing::Length(n) if rest.len() >= n => (&rest[..n], n),
        Framing::Length(_) => return Ok(Parse::Partial { expect_continue }),
        Framing::Chunked => match chunked_len(rest)? {
            None if buf.len() >= REQUEST_BYTES_MAX => {
                return Err(refuse(413, "request too large"));
            }
            None => return Ok(Parse::Partial { expect_continue }),
            Some(len) => {
                dechunk(&rest[..len], chunked_body);
                (&chunked_body[..], len)
            }
        },
    };
    let keep_alive = if http10 { keep_alive && !close } else { !close };
    Ok(Parse::Complete {
        req: Request {
            method,
            target,
            headers,
            body,
            http10,
            keep_alive,
        },
        len: head_len + body_len,
    })
}

/// `Content-Length`: digits only, at most [`BODY_BYTES_MAX`].
fn parse_content_length(v: &[u8]) -> Result<usize, Refusal> {
    let v = trim(v);
    if v.is_empty() || v.len() > 12 || !v.iter().all(u8::is_ascii_digit) {
        return Err(refuse(400, "invalid Content-Length"));
    }
    let n = v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0'));
    if n > BODY_BYTES_MAX {
        return Err(refuse(413, "request body too large"));
    }
    Ok(n)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

/// The length of the complete chunked body at the start of `input` (framing and trailers
/// included), `None` while it is incomplete.
fn chunked_len(input: &[u8]) -> Result<Option<usize>, Refusal> {
    let mut at = 0;
    let mut data = 0usize;
    loop {
        let (line, size) = match httparse::parse_chunk_size(&input[at..]) {
            Ok(httparse::Status::Complete((line, size))) => (line, size),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(refuse(400, "invalid chunk size line")),
        };
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        data = data.saturating_add(size);
        if data > BODY_BYTES_MAX {
            return Err(refuse(413, "request body too large"));
        }
        at += line;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let rest = &input[at..];
                let Some(lf) = rest.iter().position(|b| *b == b'\n') else {
                    if rest.len() > HEADER_BYTES_MAX {
                        return Err(refuse(431, "trailer section too large"));
                    }
                    return Ok(None);
                };
                at += lf + 1;
                if lf == 0 || (lf == 1 && rest[0] == b'\r') {
                    return Ok(Some(at));
                }
            }
        }
        if input.len() - at < size + 2 {
            return Ok(None);
        }
        if &input[at + size..at + size + 2] != b"\r\n" {
            return Err(refuse(400, "chunk data not followed by CRLF"));
        }
        at += size + 2;
    }
}

/// Copy the data of a complete chunked body (checked by [`chunked_len`]) into `out`.
fn dechunk(mut input: &[u8], out: &mut Vec<u8>) {
    out.clear();
    while let Ok(httparse::Status::Complete((line, size))) = httparse::parse_chunk_size(input) {
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        if size == 0 {
            return;
        }
        let Some(data) = input.get(line..line + size) else {
            return;
        };
        out.extend_from_slice(data);
        input = &input[(line + size + 2).min(input.len())..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (method, target, body, keep_alive, len) of a complete request.
    type Seen = (String, String, Vec<u8>, bool, usize);

    /// Parse `raw`: the complete request, `None` when partial, or the refusal status.
    fn run(raw: &[u8]) -> Result<Option<Seen>, u16> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut body = Vec::new();
        match parse(raw, &mut headers, &mut body) {
            Ok(Parse::Complete { req, len }) => Ok(Some((
                req.method.to_owned(),
                req.target.to_owned(),
                req.body.to_vec(),
                req.keep_alive,
                len,
            ))),
            Ok(Parse::Partial { .. }) => Ok(None),
            Err(r) => Err(r.status),
        }
    }

    #[test]
    fn content_length_body_and_pipelined_rest() {
        let raw =
            b"POST /v1/x?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n";
        let (m, t, b, ka, len) = run(raw).expect("valid").expect("complete");
        assert_eq!(
            (m.as_str(), t.as_str(), &b[..], ka),
            ("POST", "/v1/x?q=1", &b"abc"[..], true)
        );
        assert_eq!(&raw[len..], b"GET / HTTP/1.1\r\n");
        assert_eq!(
            run(&raw[..raw.len() - 20]),
            Ok(None),
            "body not all there yet"
        );
    }

    #[test]
    fn chunked_body_with_trailers() {
        let raw = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let (_, _, b, _, len) = run(raw).expect("valid").expect("complete");
        assert_eq!(b, b"abcde");
        assert_eq!(&raw[len..], b"NEXT");
        for cut in 48..raw.len() - 4 {
            assert_eq!(run(&raw[..cut]), Ok(None), "cut at {cut}");
        }
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |raw: &[u8]| run(raw).expect("valid").expect("complete").3;
        assert!(ka(b"GET / HTTP/1.1\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n"));
        assert!(!ka(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(ka(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
    }

    #[test]
    fn expect_continue_only_while_body_missing() {
        let raw = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut body = Vec::new();
        assert!(matches!(
            parse(raw, &mut headers, &mut body),
            Ok(Parse::Partial {
                expect_continue: true
            })
        ));
    }

    #[test]
    fn refusals() {
        let cases: [(&[u8], u16); 7] = [
            (b"GET / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
                400,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                413,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\n\x01bad\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            assert_eq!(run(raw), Err(status), "{:?}", String::from_utf8_lossy(raw));
        }
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(HEADER_BYTES_MAX));
        assert_eq!(run(big.as_bytes()), Err(431));
        let many: String = (0..=HEADERS_MAX).map(|i| format!("X-{i}: 1\r\n")).collect();
        assert_eq!(
            run(format!("GET / HTTP/1.1\r\n{many}\r\n").as_bytes()),
            Err(431)
        );
    }
}
