//! HTTP/1.1 protocol logic, free of I/O: every function takes bytes (and limits) and returns a
//! decision, so all of it is unit-testable and fuzzable without a socket.
//!
//! - [`request`]: parse a request head with httparse into a stack array, enforce framing rules
//!   httparse leaves to us, and write the head we forward upstream.
//! - [`response`]: parse an upstream response head, decide its framing, and write the head we
//!   send to the client.
//! - [`chunked`]: a streaming chunked-body decoder that validates while bytes pass through.
//! - [`sse`]: server-sent event streams: where events end and the one splitter every reader of
//!   a stream (SSE filter, usage scanner, stream translators, budget cut) uses.

pub mod chunked;
pub mod request;
pub mod response;
pub mod sse;

use std::io::Write as _;

/// Append `HTTP/1.1 <status> <reason>\r\n`.
pub fn write_status_line(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(b"HTTP/1.1 ");
    write_decimal(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason_phrase(status).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Append `n` in decimal without allocating.
pub fn write_decimal(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Append `n` in lowercase hexadecimal (chunk sizes).
pub fn write_hex(out: &mut Vec<u8>, n: u64) {
    // Writing into a Vec cannot fail and `{:x}` does not allocate.
    let _ = write!(out, "{n:x}");
}

/// The reason phrase for statuses shardgate itself produces (others get a generic one).
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

/// Parse a `Content-Length` value strictly: one or more ASCII digits and nothing else
/// (no sign, no list, no whitespace inside), at most 18 digits so it cannot overflow.
pub fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        value
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Hop-by-hop header fields: never forwarded in either direction (RFC 9110 §7.6.1), plus the
/// framing fields shardgate always rewrites itself.
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP: [&[u8]; 7] = [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
    ];
    HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
        || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
}

/// Trim optional whitespace (SP / HTAB) at both ends.
pub fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| *b != b' ' && *b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| *b != b' ' && *b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end.max(start)]
}

/// The names listed in a `Connection` header value, as subslices, up to `N` of them.
/// Returns (close, keep_alive) and fills `others` with the remaining tokens.
pub fn connection_tokens<'a>(
    value: &'a [u8],
    others: &mut [&'a [u8]],
    others_len: &mut usize,
) -> (bool, bool) {
    let (mut close, mut keep_alive) = (false, false);
    for token in value.split(|b| *b == b',') {
        let token = trim_ows(token);
        if token.is_empty() {
            continue;
        }
        if token.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if token.eq_ignore_ascii_case(b"keep-alive") {
            keep_alive = true;
        } else if *others_len < others.len() {
            others[*others_len] = token;
            *others_len += 1;
        }
    }
    (close, keep_alive)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_is_strict() {
        assert_eq!(parse_content_length(b"0"), Some(0));
        assert_eq!(parse_content_length(b"1234"), Some(1234));
        for bad in [
            &b""[..],
            b"+3",
            b"-1",
            b"0x10",
            b"1,2",
            b" 1",
            b"1 ",
            b"1e3",
            b"99999999999999999999",
        ] {
            assert_eq!(
                parse_content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn decimal_and_hex() {
        let mut v = Vec::new();
        write_decimal(&mut v, 0);
        v.push(b' ');
        write_decimal(&mut v, u64::MAX);
        v.push(b' ');
        write_hex(&mut v, 255);
        assert_eq!(v, b"0 18446744073709551615 ff");
    }

    #[test]
    fn hop_by_hop_names() {
        for h in [
            "Connection",
            "keep-alive",
            "TE",
            "Trailer",
            "Upgrade",
            "Proxy-Authorization",
        ] {
            assert!(is_hop_by_hop(h.as_bytes()), "{h}");
        }
        for h in ["Content-Type", "Authorization", "Host", "Proxy"] {
            assert!(!is_hop_by_hop(h.as_bytes()), "{h}");
        }
    }

    #[test]
    fn connection_header_tokens() {
        let mut others = [&b""[..]; 4];
        let mut n = 0;
        let (close, ka) = connection_tokens(b" Keep-Alive , x-foo,,CLOSE", &mut others, &mut n);
        assert!(close && ka);
        assert_eq!(&others[..n], &[&b"x-foo"[..]]);
    }
}
