//! Request heads: parse with httparse into the caller's stack array, enforce the framing rules
//! httparse leaves to us (see `shared/FIELD-NOTES.md`), and write the head forwarded upstream.
//!
//! Nothing here allocates: the parsed request borrows the read buffer and the header array, and
//! the forwarded head is appended to a pooled buffer.

use std::net::IpAddr;

use crate::error::Error;
use crate::http::{connection_tokens, is_hop_by_hop, parse_content_length, trim_ows};
use crate::limits::CONNECTION_TOKENS_MAX;

/// The limits a request head is checked against (from `[server]`; defined beside the config,
/// which builds them: [`crate::config::ServerConfig::head_limits`]).
pub use crate::config::HeadLimits;

/// How the request body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// The decisions taken from a request head; plain data, no borrows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head (request line, fields, empty line) at the start of the buffer.
    pub head_len: usize,
    pub method: Method,
    /// `0` for HTTP/1.0, `1` for HTTP/1.1.
    pub version_minor: u8,
    /// Whether the client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    /// `Expect: 100-continue` was sent (and a body follows).
    pub expect_continue: bool,
    pub body: BodyKind,
}

/// A parsed request: the decisions plus the borrowed fields needed to forward it.
#[derive(Debug)]
pub struct ParsedRequest<'h, 'b> {
    pub head: RequestHead,
    method: &'b str,
    path: &'b str,
    headers: &'h [httparse::Header<'b>],
    conn_tokens: [&'b [u8]; CONNECTION_TOKENS_MAX],
    conn_tokens_len: usize,
}

/// A head past `max` bytes: its request line ends within them (`431`, the header fields are too
/// large) or not (`414`, the target is), whatever a read brought beyond them.
fn too_large(buf: &[u8], max: usize) -> Error {
    if buf.get(..max).unwrap_or(buf).contains(&b'\n') {
        Error::HeaderTooLarge
    } else {
        Error::UriTooLong
    }
}

/// Parse the request head at the start of `buf`. `Ok(None)`: incomplete, read more (unless the
/// buffer is already `header_bytes_max` long, which is an error returned here).
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    limits: &HeadLimits,
) -> Result<Option<ParsedRequest<'h, 'b>>, Error> {
    let count = limits.headers_count_max.min(headers.len());
    let mut req = httparse::Request::new(&mut headers[..count]);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() >= limits.header_bytes_max {
                return Err(too_large(buf, limits.header_bytes_max));
            }
            return Ok(None);
        }
        Err(e) => return Err(map_parse_error(e)),
    };
    if head_len > limits.header_bytes_max {
        return Err(too_large(buf, limits.header_bytes_max));
    }
    let (Some(method), Some(path), Some(version)) = (req.method, req.path, req.version) else {
        return Err(Error::BadRequest("incomplete request line"));
    };
    let method_kind = match method {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "CONNECT" => return Err(Error::MethodNotAllowed),
        _ => Method::Other,
    };
    check_target(method, path)?;

    let headers: &'h [httparse::Header<'b>] = req.headers;
    let mut content_length: Option<u64> = None;
    let mut chunked = false;
    let mut seen_te = false;
    let mut seen_host = false;
    let (mut close, mut keep_alive_token, mut expect_continue) = (false, false, false);
    let mut conn_tokens: [&'b [u8]; CONNECTION_TOKENS_MAX] = [b""; CONNECTION_TOKENS_MAX];
    let mut conn_tokens_len = 0;
    for h in headers {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            if content_length.is_some() {
                return Err(Error::BadFraming("more than one Content-Length header"));
            }
            content_length = Some(
                parse_content_length(h.value)
                    .ok_or(Error::BadFraming("Content-Length is not a decimal number"))?,
            );
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if seen_te {
                return Err(Error::BadFraming("more than one Transfer-Encoding header"));
            }
            seen_te = true;
            if !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Error::BadFraming("Transfer-Encoding other than chunked"));
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"host") {
            if seen_host {
                return Err(Error::BadRequest("more than one Host header"));
            }
            seen_host = true;
            check_host(h.value)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let (c, k) = connection_tokens(h.value, &mut conn_tokens, &mut conn_tokens_len);
            close |= c;
            keep_alive_token |= k;
        } else if name.eq_ignore_ascii_case(b"expect") {
            if !trim_ows(h.value).eq_ignore_ascii_case(b"100-continue") {
                return Err(Error::ExpectationFailed);
            }
            expect_continue = true;
        } else if is_disguised_framing_name(name) {
            return Err(Error::BadFraming(
                "a framing header name spelt with '_' (Content_Length, Transfer_Encoding)",
            ));
        }
    }
    let body = match (content_length, chunked) {
        (Some(_), true) => {
            return Err(Error::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (_, true) if version == 0 => {
            return Err(Error::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        (_, true) => BodyKind::Chunked,
        (Some(0), false) | (None, false) => BodyKind::None,
        (Some(n), false) => BodyKind::Length(n),
    };
    if let BodyKind::Length(n) = body {
        if n > limits.body_bytes_max {
            return Err(Error::BodyTooLarge);
        }
    }
    if version == 1 && !seen_host {
        return Err(Error::BadRequest("missing Host header"));
    }
    let keep_alive = if version == 1 {
        !close
    } else {
        keep_alive_token && !close
    };
    Ok(Some(ParsedRequest {
        head: RequestHead {
            head_len,
            method: method_kind,
            version_minor: version,
            keep_alive,
            expect_continue: expect_continue && body != BodyKind::None,
            body,
        },
        method,
        path,
        headers,
        conn_tokens,
        conn_tokens_len,
    }))
}

/// `Content_Length` or `Transfer_Encoding` (any case, any mix of `_` and `-`, at least one
/// `_`): not a framing field to us, but servers that map header names to variables (CGI, WSGI,
/// some frameworks) read `_` as `-`, so forwarding it would let the upstream frame the body
/// differently from us. Refused, as nginx drops such names by default.
fn is_disguised_framing_name(name: &[u8]) -> bool {
    const FRAMING: [&[u8]; 2] = [b"content-length", b"transfer-encoding"];
    name.contains(&b'_')
        && FRAMING.iter().any(|f| {
            f.len() == name.len()
                && f.iter().zip(name).all(|(f, n)| {
                    let n = if *n == b'_' {
                        b'-'
                    } else {
                        n.to_ascii_lowercase()
                    };
                    *f == n
                })
        })
}

fn map_parse_error(e: httparse::Error) -> Error {
    match e {
        httparse::Error::TooManyHeaders => Error::TooManyHeaders,
        httparse::Error::HeaderName => Error::BadRequest("invalid header name"),
        httparse::Error::HeaderValue => Error::BadRequest("invalid header value"),
        httparse::Error::NewLine => Error::BadRequest("invalid line ending"),
        httparse::Error::Version => Error::BadRequest("unsupported HTTP version"),
        _ => Error::BadRequest("invalid request line"),
    }
}

/// Only origin-form targets (`/path?query`), or `*` with OPTIONS. Absolute-form and
/// authority-form are refused, so nothing but `Host` names a host. Dot segments (`.`, `..`,
/// also percent-encoded) are refused so a path can never climb out of its route's prefix.
fn check_target(method: &str, path: &str) -> Result<(), Error> {
    if path == "*" && method == "OPTIONS" {
        return Ok(());
    }
    let path = path.as_bytes();
    if path.first() != Some(&b'/') {
        return Err(Error::BadRequest("request target must start with /"));
    }
    if path.contains(&b'#') {
        return Err(Error::BadRequest("fragment in request target"));
    }
    let end = path.iter().position(|b| *b == b'?').unwrap_or(path.len());
    for segment in path[..end].split(|b| *b == b'/') {
        if is_dot_segment(segment) {
            return Err(Error::BadRequest("dot segment in path"));
        }
    }
    Ok(())
}

fn is_dot_segment(segment: &[u8]) -> bool {
    let mut dots = 0;
    let mut i = 0;
    while i < segment.len() {
        if segment[i] == b'.' {
            i += 1;
        } else if segment.len() - i >= 3
            && segment[i] == b'%'
            && segment[i + 1] == b'2'
            && segment[i + 2].eq_ignore_ascii_case(&b'e')
        {
            i += 3;
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// `Host` is `uri-host [ ":" port ]`: no `/`, `?`, `#`, `@`, whitespace or control bytes.
fn check_host(value: &[u8]) -> Result<(), Error> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(b);
    if value.iter().all(ok) {
        Ok(())
    } else {
        Err(Error::BadRequest("invalid Host header"))
    }
}

impl<'b> ParsedRequest<'_, 'b> {
    /// The request target as sent (origin-form).
    pub fn path(&self) -> &'b str {
        self.path
    }

    pub fn method(&self) -> &'b str {
        self.method
    }

    /// The value of the first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'b [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    fn is_connection_listed(&self, name: &[u8]) -> bool {
        self.conn_tokens[..self.conn_tokens_len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
    }

    /// Append the head to forward upstream: HTTP/1.1, `Host` set to the upstream's authority,
    /// hop-by-hop and `Connection`-listed fields dropped, framing rewritten from our own
    /// decision, `X-Forwarded-For` / `-Proto` set by us (client-sent values replaced), the
    /// client's `Host` kept as `X-Forwarded-Host`.
    pub fn write_upstream_head(&self, authority: &[u8], client_ip: IpAddr, out: &mut Vec<u8>) {
        self.write_upstream_head_with(authority, client_ip, &Credentials::PASS, out);
    }

    /// [`Self::write_upstream_head`] with the client's credentials handled as `creds`
    /// says: a tenant's key is removed, and the upstream's own credential added.
    pub fn write_upstream_head_with(
        &self,
        authority: &[u8],
        client_ip: IpAddr,
        creds: &Credentials<'_>,
        out: &mut Vec<u8>,
    ) {
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        match creds.path {
            Some(path) => out.extend_from_slice(path.as_bytes()),
            // Google's `?key=` is a credential too.
            None if creds.drop_client_keys => write_target_without_key(self.path, out),
            None => out.extend_from_slice(self.path.as_bytes()),
        }
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(authority);
        out.extend_from_slice(b"\r\n");
        for h in self.headers {
            let name = h.name.as_bytes();
            if is_hop_by_hop(name)
                || name.eq_ignore_ascii_case(b"expect")
                || name.eq_ignore_ascii_case(b"x-forwarded-for")
                || name.eq_ignore_ascii_case(b"x-forwarded-proto")
                || name.eq_ignore_ascii_case(b"x-forwarded-host")
                || self.is_connection_listed(name)
                || (creds.drop_client_keys && is_client_credential(name))
                || (creds.translated && is_other_apis(name))
                || (creds.traceparent.is_some() && name.eq_ignore_ascii_case(b"traceparent"))
            {
                continue;
            }
            if name.eq_ignore_ascii_case(b"host") {
                out.extend_from_slice(b"x-forwarded-host");
            } else {
                out.extend_from_slice(name);
            }
            out.extend_from_slice(b": ");
            out.extend_from_slice(h.value);
            out.extend_from_slice(b"\r\n");
        }
        let body = match creds.content_length {
            Some(n) => BodyKind::Length(n),
            None => self.head.body,
        };
        match body {
            BodyKind::None => {}
            BodyKind::Length(n) => {
                out.extend_from_slice(b"content-length: ");
                crate::http::write_decimal(out, n);
                out.extend_from_slice(b"\r\n");
            }
            BodyKind::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        }
        out.extend_from_slice(creds.upstream);
        out.extend_from_slice(creds.extra);
        if let Some(tp) = creds.traceparent {
            out.extend_from_slice(b"traceparent: ");
            out.extend_from_slice(tp);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"x-forwarded-for: ");
        crate::http::write_ip(out, client_ip);
        out.extend_from_slice(if creds.client_tls {
            b"\r\nx-forwarded-proto: https\r\n\r\n"
        } else {
            b"\r\nx-forwarded-proto: http\r\n\r\n"
        });
    }
}

/// A header that carries a client's credential for some provider: OpenAI's and most servers'
/// `authorization`, Anthropic's `x-api-key`, Azure's `api-key`, Gemini's `x-goog-api-key`, and
/// AWS's SigV4 signing headers (`x-amz-*`).
pub fn is_client_credential(name: &[u8]) -> bool {
    const AMZ: &[u8] = b"x-amz-";
    name.eq_ignore_ascii_case(b"authorization")
        || name.eq_ignore_ascii_case(b"x-api-key")
        || name.eq_ignore_ascii_case(b"api-key")
        || name.eq_ignore_ascii_case(b"x-goog-api-key")
        || name
            .get(..AMZ.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(AMZ))
}

/// Writes a request target with every `key` query parameter (Google's API key, as in
/// `?key=...`) left out; the rest of the query keeps its order and bytes.
pub fn write_target_without_key(target: &str, out: &mut Vec<u8>) {
    let Some((path, query)) = target.split_once('?') else {
        out.extend_from_slice(target.as_bytes());
        return;
    };
    out.extend_from_slice(path.as_bytes());
    let mut sep = b'?';
    for param in query.split('&') {
        let name = param.split_once('=').map_or(param, |(n, _)| n);
        if name == "key" {
            continue;
        }
        out.push(sep);
        out.extend_from_slice(param.as_bytes());
        sep = b'&';
    }
}

/// What happens to credentials on the way upstream.
#[derive(Debug, Clone, Copy)]
pub struct Credentials<'a> {
    /// Remove every credential the client sent ([`is_client_credential`] headers, and `key`
    /// in the query): they carried a tenant's key, or the upstream gets its own.
    pub drop_client_keys: bool,
    /// Header lines (CRLF-terminated) to add: the upstream's own credential.
    pub upstream: &'a [u8],
    /// The body goes out whole with this length (it was read, and maybe rewritten, first),
    /// whatever framing the client used.
    pub content_length: Option<u64>,
    /// Send to this target instead of the client's (a translated request goes to the other
    /// API's path).
    pub path: Option<&'a str>,
    /// The body was translated to another API: the client's `accept-encoding` (the answer is
    /// translated back, so it must come unencoded), `content-type` and the other API's own
    /// headers (`anthropic-*`, `openai-*`) are dropped; `extra` says what the upstream needs.
    pub translated: bool,
    /// More header lines (CRLF-terminated) to add after the credential.
    pub extra: &'a [u8],
    /// The client reached us over TLS: `x-forwarded-proto: https`.
    pub client_tls: bool,
    /// This attempt's W3C `traceparent` (its own span as the parent): sent instead of the
    /// client's. `None`: the client's passes unchanged (tracing is off).
    pub traceparent: Option<&'a [u8]>,
}

impl Credentials<'_> {
    /// Pass the client's headers through, add nothing (a plain reverse proxy).
    pub const PASS: Credentials<'static> = Credentials {
        drop_client_keys: false,
        upstream: b"",
        content_length: None,
        path: None,
        translated: false,
        extra: b"",
        client_tls: false,
        traceparent: None,
    };
}

/// Headers that belong to the client's API and not to a translated request.
fn is_other_apis(name: &[u8]) -> bool {
    let prefixed = |p: &[u8]| name.len() > p.len() && name[..p.len()].eq_ignore_ascii_case(p);
    name.eq_ignore_ascii_case(b"accept-encoding")
        || name.eq_ignore_ascii_case(b"content-type")
        || prefixed(b"anthropic-")
        || prefixed(b"openai-")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::HEADERS_ARRAY_LEN;

    const LIMITS: HeadLimits = HeadLimits {
        header_bytes_max: 1024,
        headers_count_max: 16,
        body_bytes_max: 1000,
    };

    fn parse_one(raw: &[u8]) -> Result<Option<RequestHead>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        parse(raw, &mut headers, &LIMITS).map(|p| p.map(|p| p.head))
    }

    fn forwarded(raw: &[u8]) -> String {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let p = parse(raw, &mut headers, &LIMITS)
            .expect("valid")
            .expect("complete");
        let mut out = Vec::new();
        p.write_upstream_head(b"10.0.0.1:80", IpAddr::from([127, 0, 0, 1]), &mut out);
        String::from_utf8(out).expect("ascii")
    }

    /// The head forwarded to `up:80` with the credentials handled as `creds` says.
    fn forwarded_with(raw: &[u8], creds: &Credentials<'_>) -> String {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let p = parse(raw, &mut headers, &LIMITS)
            .expect("valid")
            .expect("complete");
        let mut out = Vec::new();
        p.write_upstream_head_with(b"up:80", IpAddr::from([127, 0, 0, 1]), creds, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn simple_get_keeps_alive() {
        let h = parse_one(b"GET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.body, BodyKind::None);
        assert!(h.keep_alive);
        assert_eq!(h.head_len, 36);
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert_eq!(parse_one(b"GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
    }

    #[test]
    fn http10_closes_unless_asked() {
        let h = parse_one(b"GET / HTTP/1.0\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert!(!h.keep_alive);
        let h = parse_one(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert!(h.keep_alive);
        let h = parse_one(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert!(!h.keep_alive);
    }

    #[test]
    fn framing_decisions() {
        let h = parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert_eq!(h.body, BodyKind::Length(12));
        let h = parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n")
            .expect("ok")
            .expect("done");
        assert_eq!(h.body, BodyKind::Chunked);
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1,2\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            // Framing names disguised with '_', alone or beside the real one.
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer_Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\ncontent_length: 0\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTRANSFER_ENCODING: chunked\r\nContent-Length: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length_: 3\r\nContent_Length: 3\r\n\r\n",
        ];
        for raw in cases {
            let r = parse_one(raw);
            assert!(
                matches!(r, Err(Error::BadFraming(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn underscored_names_other_than_framing_pass() {
        for raw in [
            &b"POST / HTTP/1.1\r\nHost: a\r\nX_Api_Key: k\r\nContent-Length: 0\r\n\r\n"[..],
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Length_x: 3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent_Type: text/plain\r\n\r\n",
        ] {
            assert!(
                matches!(parse_one(raw), Ok(Some(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(is_disguised_framing_name(b"Transfer_encoding"));
        assert!(is_disguised_framing_name(b"content_length"));
        assert!(!is_disguised_framing_name(b"content-length"));
        assert!(!is_disguised_framing_name(b"content_lengths"));
    }

    #[test]
    fn bad_heads_are_refused() {
        let cases: &[&[u8]] = &[
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n", // obs-fold
            b"GET / HTTP/1.1\r\nHost: a\r\nX : a\r\n\r\n",      // space before colon
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",    // NUL
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",    // bare CR
            b"GET / HTTP/1.1\r\nHost: a\r\n: a\r\n\r\n",        // empty name
            b"GET / HTTP/1.1\r\n\r\n",                          // no Host
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",    // two Hosts
            b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /v1/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /v1/%2e%2E/admin HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET /a/. HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.32\r\nHost: a\r\n\r\n",
        ];
        for raw in cases {
            let r = parse_one(raw);
            assert!(
                matches!(r, Err(Error::BadRequest(_))),
                "{:?} -> {r:?}",
                String::from_utf8_lossy(raw)
            );
        }
        assert_eq!(
            parse_one(b"CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Err(Error::MethodNotAllowed)
        );
        assert_eq!(
            parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 200-ok\r\nContent-Length: 1\r\n\r\n"),
            Err(Error::ExpectationFailed)
        );
        // Dots that are not whole segments are fine.
        assert!(parse_one(b"GET /a/.b/..c/...%2e HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
    }

    #[test]
    fn limits_map_to_their_statuses() {
        let mut long_line = b"GET /".to_vec();
        long_line.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(parse_one(&long_line[..1024]), Err(Error::UriTooLong));
        let mut big = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(parse_one(&big[..1024]), Err(Error::HeaderTooLarge));
        // A read may bring more than the limit (the buffer is larger): the status still says
        // which part is too large, whether the head is complete or not.
        let mut whole_long_line = long_line.clone();
        whole_long_line.extend_from_slice(b" HTTP/1.1\r\nHost: a\r\n");
        assert_eq!(parse_one(&whole_long_line), Err(Error::UriTooLong));
        whole_long_line.extend_from_slice(b"\r\n");
        assert_eq!(parse_one(&whole_long_line), Err(Error::UriTooLong));
        let mut whole_big = big.clone();
        whole_big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(parse_one(&whole_big), Err(Error::HeaderTooLarge));
        let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
        for i in 0..16 {
            many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_one(&many), Err(Error::TooManyHeaders));
        assert_eq!(
            parse_one(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1001\r\n\r\n"),
            Err(Error::BodyTooLarge)
        );
    }

    #[test]
    fn our_traceparent_replaces_the_clients_and_tracestate_passes() {
        let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n\
                    TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
                    tracestate: vendor=1\r\nContent-Length: 0\r\n\r\n";
        let ours = b"00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01";
        let creds = Credentials {
            traceparent: Some(ours),
            ..Credentials::PASS
        };
        let fwd = forwarded_with(raw, &creds);
        assert_eq!(
            fwd.to_ascii_lowercase().matches("traceparent").count(),
            1,
            "{fwd}"
        );
        assert!(
            fwd.contains(
                "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01\r\n"
            ),
            "{fwd}"
        );
        assert!(fwd.contains("tracestate: vendor=1\r\n"), "{fwd}");
        // Tracing off: the client's passes unchanged.
        let fwd = forwarded_with(raw, &Credentials::PASS);
        assert!(
            fwd.contains("TraceParent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            "{fwd}"
        );
    }

    #[test]
    fn tenant_keys_are_dropped_and_the_upstream_credential_added() {
        let raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-tenant\r\n\
                    X-API-Key: sk-other\r\nauthorization: Bearer sk-dup\r\nContent-Length: 0\r\n\r\n";
        let creds = Credentials {
            drop_client_keys: true,
            upstream: b"authorization: Bearer sk-upstream\r\n",
            ..Credentials::PASS
        };
        let fwd = forwarded_with(raw, &creds);
        for secret in ["sk-tenant", "sk-other", "sk-dup"] {
            assert!(!fwd.contains(secret), "{secret} forwarded:\n{fwd}");
        }
        assert_eq!(fwd.matches("sk-upstream").count(), 1, "{fwd}");
        assert_eq!(
            fwd.to_ascii_lowercase().matches("authorization").count(),
            1,
            "{fwd}"
        );
    }

    #[test]
    fn every_providers_client_credential_is_dropped_and_only_the_upstreams_sent() {
        let raw = b"POST /v1/chat/completions?key=AIza-client&x=1&keyring=k&key HTTP/1.1\r\n\
                    Host: gw\r\napi-key: az-client\r\nX-Goog-Api-Key: goog-client\r\n\
                    X-Amz-Security-Token: amz-token\r\nx-amz-date: 20260101T000000Z\r\n\
                    X-Amz-Content-Sha256: amz-sha\r\nAuthorization: AWS4-HMAC-SHA256 amz-sig\r\n\
                    X-Amzn-Trace-Id: trace\r\nX-Keep: yes\r\nContent-Length: 0\r\n\r\n";
        let creds = Credentials {
            drop_client_keys: true,
            upstream: b"api-key: az-upstream\r\n",
            ..Credentials::PASS
        };
        let fwd = forwarded_with(raw, &creds);
        for secret in [
            "AIza-client",
            "az-client",
            "goog-client",
            "amz-token",
            "20260101T000000Z",
            "amz-sha",
            "amz-sig",
        ] {
            assert!(!fwd.contains(secret), "{secret} forwarded:\n{fwd}");
        }
        // The rest of the query, other headers (`x-amzn-` is not AWS's signing prefix), and
        // the upstream's own credential go on.
        assert!(
            fwd.starts_with("POST /v1/chat/completions?x=1&keyring=k HTTP/1.1\r\n"),
            "{fwd}"
        );
        assert!(fwd.contains("X-Amzn-Trace-Id: trace\r\n") && fwd.contains("X-Keep: yes\r\n"));
        assert_eq!(fwd.matches("api-key: az-upstream\r\n").count(), 1, "{fwd}");
        // Without a tenant's key to drop (a plain pass-through), the client's credentials are
        // the upstream's and go as sent.
        let fwd = forwarded_with(raw, &Credentials::PASS);
        assert!(fwd.contains("?key=AIza-client&x=1") && fwd.contains("api-key: az-client"));
    }

    #[test]
    fn key_parameters_are_left_out_of_the_target_and_the_rest_kept() {
        for (target, want) in [
            ("/v1/x", "/v1/x"),
            ("/v1/x?", "/v1/x?"),
            ("/v1/x?key=s", "/v1/x"),
            ("/v1/x?key=s&alt=sse", "/v1/x?alt=sse"),
            ("/v1/x?alt=sse&key=s", "/v1/x?alt=sse"),
            ("/v1/x?a=1&key=s&key=t&b=2", "/v1/x?a=1&b=2"),
            ("/v1/x?key", "/v1/x"),
            ("/v1/x?Key=s&keys=1&apikey=2", "/v1/x?Key=s&keys=1&apikey=2"),
        ] {
            let mut out = Vec::new();
            write_target_without_key(target, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), want, "{target}");
        }
    }

    #[test]
    fn forwarded_head_drops_hop_by_hop_and_sets_our_own() {
        let fwd = forwarded(
            b"POST /v1/chat/completions HTTP/1.0\r\nHost: gw.example\r\nConnection: keep-alive, X-Secret\r\n\
              X-Secret: s\r\nKeep-Alive: 5\r\nTE: trailers\r\nUpgrade: h2c\r\nProxy-Authorization: p\r\n\
              X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\n\r\n",
        );
        assert_eq!(
            fwd,
            "POST /v1/chat/completions HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-forwarded-host: gw.example\r\n\
             Content-Type: application/json\r\ncontent-length: 2\r\nx-forwarded-for: 127.0.0.1\r\n\
             x-forwarded-proto: http\r\n\r\n"
        );
    }

    #[test]
    fn a_translated_request_goes_to_the_other_apis_path_with_its_own_headers() {
        let raw = b"POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: gw\r\nAccept-Encoding: gzip\r\n\
                    Content-Type: application/json\r\nOpenAI-Organization: org\r\nanthropic-beta: b\r\n\
                    X-Trace: t\r\nContent-Length: 2\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let p = parse(raw, &mut headers, &LIMITS)
            .expect("valid")
            .expect("complete");
        let mut out = Vec::new();
        let creds = Credentials {
            drop_client_keys: true,
            upstream: b"x-api-key: k\r\n",
            content_length: Some(7),
            path: Some("/v1/messages"),
            translated: true,
            extra: b"content-type: application/json\r\nanthropic-version: 2023-06-01\r\n",
            client_tls: true,
            traceparent: None,
        };
        p.write_upstream_head_with(b"up:80", IpAddr::from([127, 0, 0, 1]), &creds, &mut out);
        assert_eq!(
            String::from_utf8(out).expect("ascii"),
            "POST /v1/messages HTTP/1.1\r\nhost: up:80\r\nx-forwarded-host: gw\r\nX-Trace: t\r\n\
             content-length: 7\r\nx-api-key: k\r\ncontent-type: application/json\r\n\
             anthropic-version: 2023-06-01\r\nx-forwarded-for: 127.0.0.1\r\nx-forwarded-proto: https\r\n\r\n"
        );
    }

    #[test]
    fn expect_continue_is_consumed_here() {
        let raw =
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n";
        assert!(parse_one(raw).expect("ok").expect("done").expect_continue);
        assert!(!forwarded(raw).to_ascii_lowercase().contains("expect"));
    }
}
