//! The answer's way back: the upstream's response head turned into the client's, and the
//! framing state machine that finds where the body ends while it is relayed.

use crate::error::Error;
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::request::{Method, RequestHead};
use crate::http::response::{self, ClientFraming};
use crate::http::write_hex;
use crate::limits::{HEADERS_ARRAY_LEN, INTERIM_RESPONSES_MAX};
use crate::llm::UsageScanner;

/// The upstream's body broke its framing (a bad chunk line).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IllFramed;

/// Tracks where a response body ends while it is relayed.
#[derive(Debug)]
pub struct Relay {
    pub framing: ClientFraming,
    /// Body bytes still expected (`Length`).
    left: u64,
    decoder: ChunkedDecoder,
    pub done: bool,
    /// The upstream's head allows reusing its connection.
    pub upstream_reusable: bool,
    /// The upstream's status code.
    pub status: u16,
    /// The response is a server-sent event stream.
    pub sse: bool,
    /// The upstream's `Retry-After` on a 429 or 503, seconds.
    pub retry_after_s: Option<u32>,
    /// The response is an AWS event stream (`application/vnd.amazon.eventstream`: Bedrock's
    /// ConverseStream).
    pub aws_event_stream: bool,
    /// An error answer's `x-amzn-errortype` (AWS's exception name), when it had one.
    pub aws_error_type: Option<AwsErrorType>,
}

/// The longest `x-amzn-errortype` kept, bytes (AWS's exception names are under 40; a longer
/// value is not kept).
pub const AWS_ERROR_TYPE_BYTES_MAX: usize = 64;

/// An AWS exception name (`ThrottlingException`), without the `:http://...` suffix AWS may
/// append; held inline, so a relay allocates nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AwsErrorType {
    bytes: [u8; AWS_ERROR_TYPE_BYTES_MAX],
    len: usize,
}

impl AwsErrorType {
    /// The name in a header value: up to its first `:`; `None` if empty, too long or not
    /// visible ASCII.
    pub fn read(value: &[u8]) -> Option<Self> {
        let name = value
            .split(|&b| b == b':')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        if name.is_empty()
            || name.len() > AWS_ERROR_TYPE_BYTES_MAX
            || !name.iter().all(u8::is_ascii_graphic)
        {
            return None;
        }
        let mut bytes = [0; AWS_ERROR_TYPE_BYTES_MAX];
        bytes.get_mut(..name.len())?.copy_from_slice(name);
        Some(Self {
            bytes,
            len: name.len(),
        })
    }

    pub fn as_str(&self) -> &str {
        self.bytes
            .get(..self.len)
            .and_then(|b| std::str::from_utf8(b).ok())
            .unwrap_or_default()
    }
}

impl Relay {
    pub fn new(framing: ClientFraming, upstream_reusable: bool, status: u16) -> Self {
        let (left, done) = match framing {
            ClientFraming::None => (0, true),
            ClientFraming::Length(n) => (n, false),
            _ => (0, false),
        };
        Self {
            framing,
            left,
            decoder: ChunkedDecoder::new(),
            done,
            upstream_reusable,
            status,
            sse: false,
            retry_after_s: None,
            aws_event_stream: false,
            aws_error_type: None,
        }
    }

    /// [`feed`](Self::feed) with the bytes copied to `out`, and what was taken drained from
    /// `input` (the upstream connection's read buffer).
    pub fn take_from(
        &mut self,
        input: &mut Vec<u8>,
        out: &mut Vec<u8>,
        scan: Option<&mut UsageScanner>,
    ) -> Result<(), IllFramed> {
        let n = self.feed(input, out, true, scan)?;
        input.drain(..n);
        Ok(())
    }

    /// Take what `input` holds of the body: returns the bytes consumed, copies them (or, when
    /// de-chunking, their data) to `out` when `copy` (without it the caller writes
    /// `input[..n]` itself), and hands the body data to `scan`. `Err`: ill-framed.
    pub fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        copy: bool,
        mut scan: Option<&mut UsageScanner>,
    ) -> Result<usize, IllFramed> {
        let n = match self.framing {
            ClientFraming::None => 0,
            ClientFraming::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                self.done = self.left == 0;
                if let Some(s) = scan.as_deref_mut() {
                    s.feed(&input[..n]);
                }
                n
            }
            ClientFraming::UntilClose => {
                if let Some(s) = scan.as_deref_mut() {
                    s.feed(input);
                }
                input.len()
            }
            ClientFraming::Chunked | ClientFraming::Dechunk => {
                let mut at = 0;
                loop {
                    let (n, step) = self.decoder.decode(&input[at..]).map_err(|_| IllFramed)?;
                    if let Step::Data(r) = &step {
                        if let Some(s) = scan.as_deref_mut() {
                            s.feed(&input[at..][r.clone()]);
                        }
                    }
                    if let (Step::Data(r), ClientFraming::Dechunk) = (&step, self.framing) {
                        out.extend_from_slice(&input[at..][r.clone()]);
                    }
                    at += n;
                    match step {
                        Step::Data(_) => {}
                        Step::NeedMore => break,
                        Step::Done => {
                            self.done = true;
                            break;
                        }
                    }
                }
                at
            }
        };
        if copy && self.framing != ClientFraming::Dechunk {
            out.extend_from_slice(&input[..n]);
        }
        Ok(n)
    }

    /// The upstream connection may go back to the pool: its head allowed it, the body was
    /// framed by the upstream (not by its close) and nothing followed it (`rest_empty`).
    pub fn poolable(&self, rest_empty: bool) -> bool {
        self.upstream_reusable && self.framing != ClientFraming::UntilClose && rest_empty
    }
}

/// What the bytes read so far say of the upstream's response head.
#[derive(Debug)]
pub enum HeadStep {
    /// Not all of it yet.
    Incomplete,
    /// An interim (1xx) answer of this many bytes, to be dropped.
    Interim(usize),
    /// The final head, `head_len` bytes: the client's head was written, the body follows.
    Final {
        relay: Relay,
        keep_alive: bool,
        head_len: usize,
    },
}

/// Look at the response bytes in `buf` for the request `req` (`interim`: interim answers seen
/// so far). On the final head, the head for the client goes into `wbuf` (replacing what it
/// held), with `extra_headers` (`x-ratelimit-*`); the client connection stays open only if the
/// request and the framing allow it and the shard is not `draining`.
pub fn response_head(
    buf: &[u8],
    req: &RequestHead,
    interim: usize,
    draining: bool,
    extra_headers: Option<&[u8]>,
    wbuf: &mut Vec<u8>,
) -> Result<HeadStep, Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    let Some((h, resp)) = response::parse(buf, &mut headers, req.method == Method::Head)? else {
        return Ok(HeadStep::Incomplete);
    };
    if h.is_interim() {
        if interim + 1 > INTERIM_RESPONSES_MAX || h.status == 101 {
            return Err(Error::UpstreamBadResponse(
                "unexpected interim response from upstream",
            ));
        }
        return Ok(HeadStep::Interim(h.head_len));
    }
    let framing = response::client_framing(h.body, req.version_minor);
    let keep_alive = req.keep_alive && response::framing_allows_keep_alive(framing) && !draining;
    wbuf.clear();
    response::write_client_head(
        &h,
        &resp,
        framing,
        req.version_minor,
        keep_alive,
        extra_headers,
        wbuf,
    );
    let mut relay = Relay::new(framing, h.upstream_keep_alive, h.status);
    // `Retry-After: <seconds>` (or Azure's and OpenAI's `retry-after-ms`) on a 429 or 503
    // tells the balancer how long to leave this deployment alone (an HTTP date is ignored).
    if matches!(h.status, 429 | 503) {
        relay.retry_after_s = retry_after_s(resp.headers);
    }
    for x in resp.headers.iter() {
        if x.name.eq_ignore_ascii_case("content-type") {
            let starts = |t: &[u8]| {
                x.value
                    .get(..t.len())
                    .is_some_and(|v| v.eq_ignore_ascii_case(t))
            };
            relay.sse |= starts(b"text/event-stream");
            relay.aws_event_stream |= starts(b"application/vnd.amazon.eventstream");
        } else if x.name.eq_ignore_ascii_case("x-amzn-errortype") && !(200..300).contains(&h.status)
        {
            relay.aws_error_type = AwsErrorType::read(x.value);
        }
    }
    Ok(HeadStep::Final {
        relay,
        keep_alive,
        head_len: h.head_len,
    })
}

/// Append `data` for the client: as one chunk, or as is (to a client reading until close).
pub fn push_framed(wbuf: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        write_hex(wbuf, data.len() as u64);
        wbuf.extend_from_slice(b"\r\n");
        wbuf.extend_from_slice(data);
        wbuf.extend_from_slice(b"\r\n");
    } else {
        wbuf.extend_from_slice(data);
    }
}

/// The wait an upstream asks for, in whole seconds: `retry-after` in seconds, else
/// `retry-after-ms` (Azure OpenAI's and OpenAI's) rounded up. `None` for neither, or an HTTP
/// date.
pub fn retry_after_s(headers: &[httparse::Header<'_>]) -> Option<u32> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(name))
            .and_then(|x| std::str::from_utf8(x.value).ok())
            .map(str::trim)
    };
    if let Some(s) = value("retry-after").and_then(|v| v.parse::<u32>().ok()) {
        return Some(s);
    }
    let ms = value("retry-after-ms").and_then(|v| v.parse::<u64>().ok())?;
    u32::try_from(ms.div_ceil(1000)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::request;

    fn head(raw: &[u8]) -> RequestHead {
        let mut h = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let limits = request::HeadLimits {
            header_bytes_max: 8192,
            headers_count_max: 64,
            body_bytes_max: 1 << 20,
        };
        match request::parse(raw, &mut h, &limits) {
            Ok(Some(r)) => r.head,
            other => panic!("test head did not parse: {:?}", other.err()),
        }
    }

    fn get() -> RequestHead {
        head(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
    }

    #[test]
    fn a_final_head_is_rewritten_for_the_client_with_the_rate_headers() {
        let mut w = Vec::new();
        let resp =
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-type: text/event-stream\r\n\r\nhello";
        let step = response_head(
            resp,
            &get(),
            0,
            false,
            Some(b"x-ratelimit-limit-requests: 9\r\n"),
            &mut w,
        );
        let Ok(HeadStep::Final {
            mut relay,
            keep_alive,
            head_len,
        }) = step
        else {
            panic!("expected a final head, got {step:?}");
        };
        assert!(keep_alive && relay.sse && relay.status == 200);
        assert_eq!(&resp[head_len..], b"hello");
        let text = String::from_utf8_lossy(&w).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("x-ratelimit-limit-requests: 9\r\n"), "{text}");
        let mut out = Vec::new();
        assert_eq!(relay.feed(&resp[head_len..], &mut out, true, None), Ok(5));
        assert!(relay.done && out == b"hello" && relay.poolable(true));
        assert!(!relay.poolable(false), "stray bytes after the body");
    }

    #[test]
    fn aws_event_streams_and_error_types_are_recognised() {
        let req = head(b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n");
        let mut wbuf = Vec::new();
        let final_head = |bytes: &[u8], wbuf: &mut Vec<u8>| match response_head(
            bytes, &req, 0, false, None, wbuf,
        ) {
            Ok(HeadStep::Final { relay, .. }) => relay,
            other => panic!("{other:?}"),
        };
        let r = final_head(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/vnd.amazon.eventstream\r\ntransfer-encoding: chunked\r\n\r\n",
            &mut wbuf,
        );
        assert!(r.aws_event_stream && !r.sse && r.aws_error_type.is_none());
        let r = final_head(
            b"HTTP/1.1 429 Too Many Requests\r\nx-amzn-ErrorType: ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/\r\ncontent-length: 2\r\n\r\n{}",
            &mut wbuf,
        );
        assert_eq!(
            r.aws_error_type.as_ref().map(AwsErrorType::as_str),
            Some("ThrottlingException")
        );
        // Only an error's type is kept, and only a sane one.
        let r = final_head(
            b"HTTP/1.1 200 OK\r\nx-amzn-ErrorType: ThrottlingException\r\ncontent-length: 2\r\n\r\n{}",
            &mut wbuf,
        );
        assert!(r.aws_error_type.is_none());
        let long = "E".repeat(AWS_ERROR_TYPE_BYTES_MAX + 1);
        for bad in ["", " ", long.as_str(), "a b"] {
            assert!(AwsErrorType::read(bad.as_bytes()).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn interim_heads_are_skipped_up_to_the_limit_and_retry_after_is_read() {
        let mut w = Vec::new();
        let step = response_head(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &get(),
            0,
            false,
            None,
            &mut w,
        );
        assert!(matches!(step, Ok(HeadStep::Interim(25))), "{step:?}");
        let step = response_head(
            b"HTTP/1.1 100 Continue\r\n\r\n",
            &get(),
            INTERIM_RESPONSES_MAX,
            false,
            None,
            &mut w,
        );
        assert!(matches!(step, Err(Error::UpstreamBadResponse(_))));
        let step = response_head(
            b"HTTP/1.1 101 Switching\r\n\r\n",
            &get(),
            0,
            false,
            None,
            &mut w,
        );
        assert!(matches!(step, Err(Error::UpstreamBadResponse(_))));
        let step = response_head(
            b"HTTP/1.1 200 OK\r\ncontent-le",
            &get(),
            0,
            false,
            None,
            &mut w,
        );
        assert!(matches!(step, Ok(HeadStep::Incomplete)));
        let resp = b"HTTP/1.1 429 Too Many\r\nretry-after: 7\r\ncontent-length: 0\r\n\r\n";
        let Ok(HeadStep::Final { relay, .. }) = response_head(resp, &get(), 0, true, None, &mut w)
        else {
            panic!("429 head");
        };
        assert_eq!(
            (relay.status, relay.retry_after_s, relay.done),
            (429, Some(7), true)
        );
    }

    #[test]
    fn retry_hints_in_seconds_or_milliseconds() {
        let h = |list: &[(&'static str, &'static [u8])]| -> Option<u32> {
            let headers: Vec<httparse::Header<'static>> = list
                .iter()
                .map(|(name, value)| httparse::Header { name, value })
                .collect();
            retry_after_s(&headers)
        };
        assert_eq!(h(&[("Retry-After", b" 7 ")]), Some(7));
        assert_eq!(h(&[("retry-after-ms", b"1500")]), Some(2));
        assert_eq!(h(&[("retry-after-ms", b"1")]), Some(1));
        assert_eq!(h(&[("retry-after-ms", b"0")]), Some(0));
        // Seconds win over milliseconds; a date or garbage is no hint.
        assert_eq!(
            h(&[("retry-after-ms", b"9000"), ("retry-after", b"3")]),
            Some(3)
        );
        assert_eq!(
            h(&[("retry-after", b"Wed, 21 Oct 2015 07:28:00 GMT")]),
            None
        );
        assert_eq!(
            h(&[("retry-after", b"soon"), ("retry-after-ms", b"2500")]),
            Some(3)
        );
        assert_eq!(h(&[("retry-after-ms", b"-5")]), None);
        assert_eq!(h(&[("retry-after-ms", b"99999999999999")]), None);
        assert_eq!(h(&[]), None);
    }

    #[test]
    fn take_from_copies_the_body_and_drains_what_it_took() {
        // A de-chunked body: the data is copied, the chunk framing and the body's bytes are
        // drained from the read buffer, what follows the body stays.
        let mut r = Relay::new(ClientFraming::Dechunk, true, 200);
        let mut input = b"5\r\nhello\r\n0\r\n\r\nNEXT".to_vec();
        let mut out = Vec::new();
        assert!(r.take_from(&mut input, &mut out, None).is_ok());
        assert_eq!(out, b"hello");
        assert_eq!(input, b"NEXT");
        assert!(r.done);
        // Ill-framed: an error, and the buffer is left as it was.
        let mut r = Relay::new(ClientFraming::Dechunk, true, 200);
        let mut input = b"zz\r\n".to_vec();
        assert!(r.take_from(&mut input, &mut Vec::new(), None).is_err());
        assert_eq!(input, b"zz\r\n");
    }

    #[test]
    fn draining_or_a_closing_request_closes_the_client_connection() {
        let mut w = Vec::new();
        let resp = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        let Ok(HeadStep::Final { keep_alive, .. }) =
            response_head(resp, &get(), 0, true, None, &mut w)
        else {
            panic!("final head");
        };
        assert!(!keep_alive);
        let close = head(b"GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");
        let Ok(HeadStep::Final { keep_alive, .. }) =
            response_head(resp, &close, 0, false, None, &mut w)
        else {
            panic!("final head");
        };
        assert!(!keep_alive);
    }

    #[test]
    fn chunked_bodies_pass_verbatim_or_dechunked_and_ill_framing_is_caught() {
        let body = b"4\r\ndata\r\n0\r\n\r\n";
        let mut r = Relay::new(ClientFraming::Chunked, true, 200);
        let mut out = Vec::new();
        assert_eq!(r.feed(body, &mut out, true, None), Ok(body.len()));
        assert!(r.done);
        assert_eq!(out, body);
        let mut r = Relay::new(ClientFraming::Dechunk, true, 200);
        out.clear();
        assert_eq!(r.feed(&body[..7], &mut out, true, None), Ok(7));
        assert!(!r.done);
        assert_eq!(r.feed(&body[7..], &mut out, true, None), Ok(body.len() - 7));
        assert!(r.done);
        assert_eq!(out, b"data");
        let mut r = Relay::new(ClientFraming::Chunked, true, 200);
        assert_eq!(r.feed(b"xyz\r\n", &mut out, false, None), Err(IllFramed));
        let r = Relay::new(ClientFraming::UntilClose, true, 200);
        assert!(!r.poolable(true), "a body ended by the close never pools");
    }

    #[test]
    fn push_framed_makes_one_chunk_or_passes_as_is() {
        let mut w = Vec::new();
        push_framed(&mut w, b"", true);
        assert!(w.is_empty());
        push_framed(&mut w, b"0123456789ab", true);
        assert_eq!(w, b"c\r\n0123456789ab\r\n");
        w.clear();
        push_framed(&mut w, b"xy", false);
        assert_eq!(w, b"xy");
    }
}
