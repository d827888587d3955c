//! Where a response ends, without I/O: the status line and headers through httparse, then the
//! body's framing (no body, `Content-Length`, `chunked`, or until the server closes), fed with
//! bytes as they arrive. In `--stream` mode the body's bytes (de-chunked) also go through a
//! small SSE scanner that counts complete `data:` events and notices `data: [DONE]`.
//!
//! Nothing is allocated: heads are parsed into a stack array of headers, the body is skipped
//! (not kept), and the SSE scanner remembers only a few bytes of the current line.

/// Header array size for parsing a response head.
const HEADERS_MAX: usize = 64;
/// Interim (1xx) responses skipped before one request's final response, at most.
const INTERIM_MAX: u32 = 8;
/// Hex digits in a chunk size, at most (16 overflows nothing in a u64).
const CHUNK_SIZE_DIGITS_MAX: u8 = 15;

/// Why a response could not be framed. All count as `read` errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// httparse refused the head.
    BadHead,
    /// The head does not fit the read buffer.
    HeadTooLarge,
    /// Unusable `Content-Length` (not digits, or several that differ).
    BadLength,
    /// Bad chunk framing.
    BadChunk,
    /// `101 Switching Protocols` or too many interim responses.
    UnexpectedInterim,
    /// The connection closed before the response was complete.
    Truncated,
}

/// What a fed response reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// `consumed` bytes were used; the response is not complete yet.
    More { consumed: usize },
    /// The response ended after `consumed` bytes of this input.
    Done { consumed: usize },
}

/// Facts from the final response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Head {
    pub status: u16,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
}

/// Chunked decoder state (RFC 9112 §7.1; lenient about bare LF, as clients are).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In the hex size; `digits` read so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// In a chunk extension (or whitespace after the size): skip to the end of the line.
    Ext {
        size: u64,
    },
    /// Saw CR after the size line.
    SizeLf {
        size: u64,
    },
    /// In chunk data.
    Data {
        left: u64,
    },
    /// After chunk data: expecting CR LF.
    DataCr,
    DataLf,
    /// In the trailer section: `line_len` bytes of the current line seen (CR not counted).
    Trailer {
        line_len: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    Body(Body),
    Done,
}

/// The framing of one response, fed with bytes as they are read.
#[derive(Debug, Clone)]
pub struct Response {
    state: State,
    head_request: bool,
    interim: u32,
    head: Head,
    /// Body bytes seen (after de-chunking).
    pub body_bytes: u64,
}

impl Response {
    /// A response to a request; `head_request` when the method was HEAD (no body follows).
    pub fn new(head_request: bool) -> Self {
        Self {
            state: State::Head,
            head_request,
            interim: 0,
            head: Head::default(),
            body_bytes: 0,
        }
    }

    /// Reset for the next response on the same connection.
    pub fn reset(&mut self) {
        *self = Self::new(self.head_request);
    }

    /// The final head, once parsed (`None` before).
    pub fn head(&self) -> Option<Head> {
        match self.state {
            State::Head => None,
            _ => Some(self.head),
        }
    }

    /// Feed the bytes read so far and not consumed yet. `buf_full` says the input fills the
    /// whole read buffer (so a head that is still incomplete never will be). Body data is
    /// passed to `on_body` (de-chunked).
    pub fn feed(
        &mut self,
        input: &[u8],
        buf_full: bool,
        on_body: &mut impl FnMut(&[u8]),
    ) -> Result<Feed, FrameError> {
        let mut at = 0;
        loop {
            match self.state {
                State::Done => return Ok(Feed::Done { consumed: at }),
                State::Head => match self.parse_head(&input[at..])? {
                    Some(n) => at += n,
                    None if buf_full && at == 0 => return Err(FrameError::HeadTooLarge),
                    None => return Ok(Feed::More { consumed: at }),
                },
                State::Body(body) => {
                    let (n, body) = self.feed_body(body, &input[at..], on_body)?;
                    at += n;
                    self.state = match body {
                        Some(b) => State::Body(b),
                        None => State::Done,
                    };
                    if self.state != State::Done {
                        return Ok(Feed::More { consumed: at });
                    }
                }
            }
        }
    }

    /// The connection closed (read returned 0): complete if the body runs until close.
    pub fn eof(&mut self) -> Result<(), FrameError> {
        match self.state {
            State::Body(Body::UntilClose) => {
                self.state = State::Done;
                Ok(())
            }
            State::Done => Ok(()),
            _ => Err(FrameError::Truncated),
        }
    }

    /// Parse one head; `Some(len)` when complete (interim heads are skipped the same way).
    fn parse_head(&mut self, input: &[u8]) -> Result<Option<usize>, FrameError> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(FrameError::BadHead),
        };
        let status = resp.code.ok_or(FrameError::BadHead)?;
        let version = resp.version.ok_or(FrameError::BadHead)?;
        if (100..200).contains(&status) {
            self.interim += 1;
            if status == 101 || self.interim > INTERIM_MAX {
                return Err(FrameError::UnexpectedInterim);
            }
            return Ok(Some(len)); // stays in State::Head: the final response follows
        }
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = version == 0;
        for h in resp.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = parse_length(h.value).ok_or(FrameError::BadLength)?;
                if length.is_some_and(|l| l != v) {
                    return Err(FrameError::BadLength);
                }
                length = Some(v);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                // Chunked when it is the last coding.
                chunked = last_token(h.value).eq_ignore_ascii_case(b"chunked");
            } else if h.name.eq_ignore_ascii_case("connection") {
                for tok in h.value.split(|&b| b == b',') {
                    let tok = tok.trim_ascii();
                    if tok.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if tok.eq_ignore_ascii_case(b"keep-alive") && version == 0 {
                        close = false;
                    }
                }
            }
        }
        let body = if self.head_request || status == 204 || status == 304 {
            None
        } else if chunked {
            Some(Body::Chunked(Chunk::Size { size: 0, digits: 0 }))
        } else if let Some(n) = length {
            (n > 0).then_some(Body::Length(n))
        } else {
            Some(Body::UntilClose)
        };
        if body == Some(Body::UntilClose) {
            close = true;
        }
        self.head = Head {
            status,
            keep_alive: !close,
        };
        self.state = body.map_or(State::Done, State::Body);
        Ok(Some(len))
    }

    /// Consume body bytes; returns how many, and the body state after (`None` when complete).
    fn feed_body(
        &mut self,
        body: Body,
        input: &[u8],
        on_body: &mut impl FnMut(&[u8]),
    ) -> Result<(usize, Option<Body>), FrameError> {
        match body {
            Body::Length(left) => {
                let n = input.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                self.data(&input[..n], on_body);
                let left = left - n as u64;
                Ok((n, (left > 0).then_some(Body::Length(left))))
            }
            Body::UntilClose => {
                self.data(input, on_body);
                Ok((input.len(), Some(Body::UntilClose)))
            }
            Body::Chunked(mut st) => {
                let mut at = 0;
                while at < input.len() {
                    if let Chunk::Data { left } = st {
                        let n = (input.len() - at).min(usize::try_from(left).unwrap_or(usize::MAX));
                        self.data(&input[at..at + n], on_body);
                        at += n;
                        let left = left - n as u64;
                        st = if left == 0 {
                            Chunk::DataCr
                        } else {
                            Chunk::Data { left }
                        };
                        continue;
                    }
                    let b = input[at];
                    at += 1;
                    st = match step_chunk(st, b)? {
                        Some(next) => next,
                        None => return Ok((at, None)),
                    };
                }
                Ok((at, Some(Body::Chunked(st))))
            }
        }
    }

    fn data(&mut self, d: &[u8], on_body: &mut impl FnMut(&[u8])) {
        if !d.is_empty() {
            self.body_bytes += d.len() as u64;
            on_body(d);
        }
    }
}

/// One control byte of the chunked framing (data bytes are handled in bulk by the caller).
/// `None`: the body (trailers included) is complete.
fn step_chunk(st: Chunk, b: u8) -> Result<Option<Chunk>, FrameError> {
    let after_size_line = |size: u64| {
        if size == 0 {
            Chunk::Trailer { line_len: 0 }
        } else {
            Chunk::Data { left: size }
        }
    };
    Ok(Some(match st {
        Chunk::Size { size, digits } => match b {
            b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                if digits >= CHUNK_SIZE_DIGITS_MAX {
                    return Err(FrameError::BadChunk);
                }
                let v = u64::from((b as char).to_digit(16).unwrap_or(0));
                Chunk::Size {
                    size: size * 16 + v,
                    digits: digits + 1,
                }
            }
            _ if digits == 0 => return Err(FrameError::BadChunk),
            b';' | b' ' | b'\t' => Chunk::Ext { size },
            b'\r' => Chunk::SizeLf { size },
            b'\n' => after_size_line(size),
            _ => return Err(FrameError::BadChunk),
        },
        Chunk::Ext { size } => match b {
            b'\n' => after_size_line(size),
            _ => Chunk::Ext { size },
        },
        Chunk::SizeLf { size } => match b {
            b'\n' => after_size_line(size),
            _ => return Err(FrameError::BadChunk),
        },
        Chunk::DataCr => match b {
            b'\r' => Chunk::DataLf,
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(FrameError::BadChunk),
        },
        Chunk::DataLf => match b {
            b'\n' => Chunk::Size { size: 0, digits: 0 },
            _ => return Err(FrameError::BadChunk),
        },
        Chunk::Trailer { line_len } => match b {
            b'\n' if line_len == 0 => return Ok(None),
            b'\n' => Chunk::Trailer { line_len: 0 },
            b'\r' => Chunk::Trailer { line_len },
            _ => Chunk::Trailer {
                line_len: line_len + 1,
            },
        },
        Chunk::Data { .. } => st, // handled by the caller
    }))
}

/// Strict decimal `Content-Length` (no sign, no spaces inside, at most 19 digits).
fn parse_length(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The last comma-separated token of a header value, trimmed.
fn last_token(v: &[u8]) -> &[u8] {
    v.rsplit(|&b| b == b',').next().unwrap_or(v).trim_ascii()
}

/// Counts the complete `data:` events of a `text/event-stream` body and notices `data: [DONE]`.
/// Fed with body bytes in any split; remembers only the start of the current line.
#[derive(Debug, Clone, Default)]
pub struct Sse {
    /// The first bytes of the current line (enough to recognise `data: [DONE]`).
    line: [u8; LINE_KEEP],
    /// Bytes of the current line seen (may exceed `LINE_KEEP`).
    line_len: usize,
    /// The current event has a `data:` line.
    event_has_data: bool,
    /// The current event's data is `[DONE]`.
    event_is_done: bool,
    /// Complete events with data so far.
    pub events: u64,
    /// The last complete event was `data: [DONE]`.
    pub done: bool,
}

const LINE_KEEP: usize = 16;

impl Sse {
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Feed body bytes; returns how many complete `data:` events they finished.
    pub fn feed(&mut self, mut d: &[u8]) -> u64 {
        let before = self.events;
        while !d.is_empty() {
            match d.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    self.keep(&d[..i]);
                    self.end_line();
                    d = &d[i + 1..];
                }
                None => {
                    self.keep(d);
                    break;
                }
            }
        }
        self.events - before
    }

    fn keep(&mut self, part: &[u8]) {
        if self.line_len < LINE_KEEP {
            let n = part.len().min(LINE_KEEP - self.line_len);
            self.line[self.line_len..self.line_len + n].copy_from_slice(&part[..n]);
        }
        self.line_len += part.len();
    }

    fn end_line(&mut self) {
        let mut len = self.line_len;
        // Strip the CR of a CRLF line end.
        if len > 0 && len <= LINE_KEEP && self.line[len - 1] == b'\r' {
            len -= 1;
        } else if len > LINE_KEEP {
            // Too long to hold: only `data` matters; a long line is never `[DONE]`.
            len = LINE_KEEP + 1;
        }
        self.line_len = 0;
        if len == 0 {
            // Blank line: dispatch the event.
            if self.event_has_data {
                self.events += 1;
                self.done = self.event_is_done;
            }
            self.event_has_data = false;
            self.event_is_done = false;
            return;
        }
        let line = &self.line[..len.min(LINE_KEEP)];
        if let Some(v) = line.strip_prefix(b"data") {
            if v.is_empty() || v[0] == b':' {
                let v = v.strip_prefix(b":").unwrap_or(v);
                let v = v.strip_prefix(b" ").unwrap_or(v);
                // Multi-line data: the event is [DONE] only if it is its only line.
                self.event_is_done = !self.event_has_data && len <= LINE_KEEP && v == b"[DONE]";
                self.event_has_data = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feed `input` in pieces of `step` bytes, as reads would deliver it; returns the head,
    /// consumed total, de-chunked body and whether it completed.
    fn run(
        input: &[u8],
        step: usize,
        head_req: bool,
    ) -> Result<(Head, usize, Vec<u8>, bool), FrameError> {
        let mut r = Response::new(head_req);
        let mut body = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut consumed_total = 0;
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            let f = r.feed(&buf, false, &mut |d| body.extend_from_slice(d))?;
            match f {
                Feed::More { consumed } => {
                    buf.drain(..consumed);
                    consumed_total += consumed;
                }
                Feed::Done { consumed } => {
                    consumed_total += consumed;
                    return Ok((r.head().expect("head parsed"), consumed_total, body, true));
                }
            }
        }
        Ok((r.head().unwrap_or_default(), consumed_total, body, false))
    }

    const CL: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT";
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";

    #[test]
    fn content_length_any_split() {
        for step in 1..CL.len() {
            let (h, consumed, body, done) = run(CL, step, false).expect("valid");
            assert!(done, "step {step}");
            assert_eq!(
                h,
                Head {
                    status: 200,
                    keep_alive: true
                }
            );
            assert_eq!(body, b"hello");
            // Never consumes the next response's bytes.
            assert_eq!(consumed, CL.len() - 4, "step {step}");
        }
    }

    #[test]
    fn chunked_any_split() {
        for step in 1..CHUNKED.len() {
            let (h, consumed, body, done) = run(CHUNKED, step, false).expect("valid");
            assert!(done, "step {step}");
            assert_eq!(h.status, 200);
            assert_eq!(body, b"hello world");
            assert_eq!(consumed, CHUNKED.len() - 4, "step {step}");
        }
    }

    #[test]
    fn no_body_cases() {
        for resp in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n"[..],
            b"HTTP/1.1 304 Not Modified\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        ] {
            let (_, consumed, body, done) = run(resp, resp.len(), false).expect("valid");
            assert!(done);
            assert_eq!(consumed, resp.len());
            assert!(body.is_empty());
        }
        // HEAD: the Content-Length describes a body that is not sent.
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let (_, consumed, _, done) = run(resp, 7, true).expect("valid");
        assert!(done);
        assert_eq!(consumed, resp.len());
    }

    #[test]
    fn interim_responses_are_skipped() {
        let resp = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok";
        let (h, consumed, body, done) = run(resp, 3, false).expect("valid");
        assert!(done);
        assert_eq!(h.status, 201);
        assert_eq!((consumed, body.as_slice()), (resp.len(), &b"ok"[..]));
        let up = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert_eq!(
            run(up, up.len(), false).err(),
            Some(FrameError::UnexpectedInterim)
        );
    }

    #[test]
    fn keep_alive_rules() {
        let ka = |resp: &[u8]| run(resp, resp.len(), false).expect("valid").0.keep_alive;
        assert!(ka(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(!ka(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
        ));
        assert!(!ka(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"));
        assert!(ka(
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn until_close() {
        let resp = b"HTTP/1.1 200 OK\r\n\r\nall of it";
        let mut r = Response::new(false);
        let mut body = Vec::new();
        let f = r
            .feed(resp, false, &mut |d| body.extend_from_slice(d))
            .expect("valid");
        assert_eq!(
            f,
            Feed::More {
                consumed: resp.len()
            }
        );
        assert_eq!(body, b"all of it");
        assert!(r.eof().is_ok());
        assert!(!r.head().expect("head").keep_alive);
        // A Content-Length body cut short is an error.
        let mut r = Response::new(false);
        let _ = r.feed(
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc",
            false,
            &mut |_| {},
        );
        assert_eq!(r.eof(), Err(FrameError::Truncated));
        assert_eq!(Response::new(false).eof(), Err(FrameError::Truncated));
    }

    #[test]
    fn refusals() {
        let bad = |resp: &[u8]| run(resp, resp.len(), false).err();
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"),
            Some(FrameError::BadLength)
        );
        assert_eq!(
            bad(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n"),
            Some(FrameError::BadLength)
        );
        assert_eq!(bad(b"garbage\r\n\r\n"), Some(FrameError::BadHead));
        for chunked in [
            &b"zz\r\n"[..],
            b"\r\n",
            b";x\r\n",
            b"1\r\nab\r\n",
            b"1234567890abcdef0\r\n",
        ] {
            let mut resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            resp.extend_from_slice(chunked);
            assert_eq!(bad(&resp), Some(FrameError::BadChunk), "{chunked:?}");
        }
        // A head that does not fit the buffer.
        let mut r = Response::new(false);
        assert_eq!(
            r.feed(b"HTTP/1.1 200 OK\r\nX: y", true, &mut |_| {}),
            Err(FrameError::HeadTooLarge)
        );
    }

    #[test]
    fn sse_events_and_done() {
        let stream =
            b"data: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\n: comment\n\nevent: x\ndata: [DONE]\n\n";
        for step in 1..stream.len() {
            let mut s = Sse::default();
            let mut events = 0;
            for piece in stream.chunks(step) {
                events += s.feed(piece);
            }
            assert_eq!(events, 3, "step {step}");
            assert!(s.done, "step {step}");
        }
        let mut s = Sse::default();
        assert_eq!(s.feed(b"data: [DONE]\n"), 0); // not dispatched before the blank line
        assert!(!s.done);
        assert_eq!(s.feed(b"\n"), 1);
        assert!(s.done);
        // [DONE] not last, a long line starting like it, multi-line data: not done.
        for not_done in [
            &b"data: [DONE]\n\ndata: x\n\n"[..],
            b"data: [DONE] and more text here\n\n",
            b"data: x\ndata: [DONE]\n\n",
            b"data: [DONE]",
        ] {
            let mut s = Sse::default();
            s.feed(not_done);
            assert!(!s.done, "{not_done:?}");
        }
        // `data` with no colon is a data line with an empty value.
        let mut s = Sse::default();
        assert_eq!(s.feed(b"data\n\n"), 1);
        s.reset();
        assert_eq!((s.events, s.done), (0, false));
    }
}
