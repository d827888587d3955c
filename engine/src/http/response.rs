//! Upstream response heads: parse, decide the body's framing, and write the head sent to the
//! client (hop-by-hop fields dropped, framing and `Connection` set by us).

use crate::error::Error;
use crate::http::{connection_tokens, is_hop_by_hop, parse_content_length, trim_ows};
use crate::limits::{CONNECTION_TOKENS_MAX, UPSTREAM_HEADER_BYTES_MAX};

/// How the upstream frames the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RespBody {
    /// No body (HEAD, 204, 304).
    None,
    Length(u64),
    Chunked,
    /// Ends when the upstream closes the connection.
    UntilClose,
}

/// The decisions taken from a response head; plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub body: RespBody,
    /// Whether the upstream connection may be pooled after the body (as far as the head says).
    pub upstream_keep_alive: bool,
}

impl ResponseHead {
    /// A 1xx answer to skip before the final response.
    pub fn is_interim(&self) -> bool {
        (100..200).contains(&self.status)
    }
}

/// How the body is relayed to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientFraming {
    /// No body bytes follow.
    None,
    /// Forward exactly this many bytes verbatim.
    Length(u64),
    /// Forward the chunked bytes verbatim, validating as they pass.
    Chunked,
    /// Decode chunked and forward only data (HTTP/1.0 clients); the connection then closes.
    Dechunk,
    /// Forward until the upstream closes; the client connection then closes.
    UntilClose,
}

/// Parse the response head at the start of `buf`; `Ok(None)` means read more.
/// `request_was_head`: the request was HEAD, so no body follows whatever the head says.
pub fn parse<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut [httparse::Header<'b>],
    request_was_head: bool,
) -> Result<Option<(ResponseHead, httparse::Response<'h, 'b>)>, Error> {
    let mut resp = httparse::Response::new(headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= UPSTREAM_HEADER_BYTES_MAX => {
            return Err(Error::UpstreamBadResponse(
                "upstream response head too large",
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::UpstreamBadResponse(
                "too many upstream response headers",
            ));
        }
        Err(_) => return Err(Error::UpstreamBadResponse("invalid upstream response head")),
    };
    let status = resp.code.unwrap_or(0);
    let version = resp.version.unwrap_or(1);
    let mut content_length = None;
    let mut chunked = false;
    let mut seen_te = false;
    let mut close = false;
    let mut keep_alive_token = false;
    let mut tokens = [&b""[..]; CONNECTION_TOKENS_MAX];
    let mut tokens_len = 0;
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_content_length(trim_ows(h.value)).ok_or(Error::UpstreamBadResponse(
                "invalid upstream Content-Length",
            ))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(Error::UpstreamBadResponse(
                    "conflicting upstream Content-Length",
                ));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if seen_te || !trim_ows(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(Error::UpstreamBadResponse(
                    "unsupported upstream Transfer-Encoding",
                ));
            }
            seen_te = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case(b"connection") {
            let (c, k) = connection_tokens(h.value, &mut tokens, &mut tokens_len);
            close |= c;
            keep_alive_token |= k;
        }
    }
    let no_body =
        request_was_head || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        RespBody::None
    } else if chunked {
        if content_length.is_some() {
            return Err(Error::UpstreamBadResponse(
                "upstream sent both Content-Length and Transfer-Encoding",
            ));
        }
        RespBody::Chunked
    } else if let Some(n) = content_length {
        RespBody::Length(n)
    } else {
        RespBody::UntilClose
    };
    // A 204 may carry neither framing field (RFC 9110 §8.6, RFC 9112 §6.1): one that announces
    // a body anyway may send it after the head, where it would be read as the answer to the
    // next request on this connection. Relay the 204, never reuse the connection.
    let announces_body_it_may_not_have =
        status == 204 && (chunked || content_length.is_some_and(|n| n > 0));
    let upstream_keep_alive = body != RespBody::UntilClose
        && !announces_body_it_may_not_have
        && if version == 1 {
            !close
        } else {
            keep_alive_token && !close
        };
    Ok(Some((
        ResponseHead {
            head_len,
            status,
            body,
            upstream_keep_alive,
        },
        resp,
    )))
}

/// Choose how to relay the body to a client speaking HTTP/1.`client_minor`.
pub fn client_framing(body: RespBody, client_minor: u8) -> ClientFraming {
    match body {
        RespBody::None => ClientFraming::None,
        RespBody::Length(0) => ClientFraming::None,
        RespBody::Length(n) => ClientFraming::Length(n),
        RespBody::Chunked if client_minor == 0 => ClientFraming::Dechunk,
        RespBody::Chunked => ClientFraming::Chunked,
        RespBody::UntilClose => ClientFraming::UntilClose,
    }
}

/// Whether the client connection can stay open after a response relayed this way.
pub fn framing_allows_keep_alive(framing: ClientFraming) -> bool {
    !matches!(framing, ClientFraming::Dechunk | ClientFraming::UntilClose)
}

/// Append the head sent to the client. `keep_alive`: the client connection stays open after
/// this response; `client_minor`: the client's HTTP minor version.
pub fn write_client_head(
    head: &ResponseHead,
    resp: &httparse::Response<'_, '_>,
    framing: ClientFraming,
    client_minor: u8,
    keep_alive: bool,
    extra: Option<&[u8]>,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    crate::http::write_decimal(out, u64::from(head.status));
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut tokens = [&b""[..]; CONNECTION_TOKENS_MAX];
    let mut tokens_len = 0;
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            connection_tokens(h.value, &mut tokens, &mut tokens_len);
        }
    }
    let listed = |name: &[u8]| {
        tokens[..tokens_len]
            .iter()
            .any(|t| t.eq_ignore_ascii_case(name))
    };
    for h in resp.headers.iter() {
        let name = h.name.as_bytes();
        // HEAD and 304 answers keep the upstream's Content-Length: it describes the entity.
        let keep_length =
            framing == ClientFraming::None && name.eq_ignore_ascii_case(b"content-length");
        // With our own rate-limit headers, the upstream's (its account's limits) are dropped.
        let theirs =
            extra.is_some() && name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-ratelimit-");
        if (is_hop_by_hop(name) && !keep_length) || listed(name) || theirs {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ClientFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            crate::http::write_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ClientFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        ClientFraming::None | ClientFraming::Dechunk | ClientFraming::UntilClose => {}
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(extra.unwrap_or_default());
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], was_head: bool) -> Result<Option<ResponseHead>, Error> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        parse(raw, &mut headers, was_head).map(|r| r.map(|(h, _)| h))
    }

    fn client_head(raw: &[u8], client_minor: u8, keep_alive: bool) -> String {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let (h, resp) = parse(raw, &mut headers, false)
            .expect("ok")
            .expect("complete");
        let framing = client_framing(h.body, client_minor);
        let mut out = Vec::new();
        write_client_head(&h, &resp, framing, client_minor, keep_alive, None, &mut out);
        String::from_utf8(out).expect("ascii")
    }

    #[test]
    fn framing_of_responses() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", false).expect("ok");
        assert_eq!(
            h.map(|h| (h.body, h.upstream_keep_alive)),
            Some((RespBody::Length(5), true))
        );
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            false,
        )
        .expect("ok");
        assert_eq!(h.map(|h| h.body), Some(RespBody::Chunked));
        let h = head(b"HTTP/1.1 200 OK\r\n\r\n", false)
            .expect("ok")
            .expect("complete");
        assert_eq!(
            (h.body, h.upstream_keep_alive),
            (RespBody::UntilClose, false)
        );
        let h = head(b"HTTP/1.1 204 No Content\r\n\r\n", false)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.body, RespBody::None);
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).expect("ok");
        assert_eq!(h.map(|h| h.body), Some(RespBody::None));
        let h = head(b"HTTP/1.1 100 Continue\r\n\r\n", false)
            .expect("ok")
            .expect("complete");
        assert!(h.is_interim());
        let h = head(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
            false,
        );
        assert!(!h.expect("ok").expect("complete").upstream_keep_alive);
        assert_eq!(head(b"HTTP/1.1 200 OK\r\nContent-Le", false), Ok(None));
    }

    #[test]
    fn a_204_announcing_a_body_is_relayed_but_its_connection_not_reused() {
        for raw in [
            &b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 204 No Content\r\nContent-Length: 8\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            let h = head(raw, false).expect("ok").expect("complete");
            assert_eq!(h.body, RespBody::None, "{:?}", String::from_utf8_lossy(raw));
            assert!(!h.upstream_keep_alive, "{:?}", String::from_utf8_lossy(raw));
        }
        // Nothing announced (or a zero length): reusable.
        for raw in [
            &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        ] {
            let h = head(raw, false).expect("ok").expect("complete");
            assert!(h.upstream_keep_alive, "{:?}", String::from_utf8_lossy(raw));
        }
        // A 304's Content-Length describes the representation, and a HEAD answer's the body it
        // would have had: both legitimate, both reusable.
        let h = head(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 8\r\n\r\n",
            false,
        )
        .expect("ok")
        .expect("complete");
        assert!(h.upstream_keep_alive);
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", true)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.body, RespBody::None);
        assert!(h.upstream_keep_alive);
    }

    #[test]
    fn bad_responses_are_refused() {
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert!(
                matches!(head(raw, false), Err(Error::UpstreamBadResponse(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn client_head_rewrites_framing_and_connection() {
        let raw = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\
                    Connection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\n\r\n";
        assert_eq!(
            client_head(raw, 1, true),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        // An HTTP/1.0 client gets the body de-chunked, delimited by close.
        assert_eq!(client_framing(RespBody::Chunked, 0), ClientFraming::Dechunk);
        assert_eq!(
            client_head(raw, 0, false),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nconnection: close\r\n\r\n"
        );
        let raw = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n";
        assert_eq!(
            client_head(raw, 0, true),
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\n"
        );
    }
}
