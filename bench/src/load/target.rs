//! What to send and where, decided once before any connection opens: the URL, the durations
//! on the command line and the request, serialised once into the bytes every connection sends.
//! No I/O here except [`resolve`], which runs on the main thread before the shards start.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, ensure, Context};

/// Longest duration accepted on the command line (a day): every run is bounded.
const DURATION_MAX_S: f64 = 86_400.0;
/// Largest request body accepted (`--body`, `--body-file`).
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A parsed `http://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// Host as written (an IPv6 address keeps its brackets), for the `Host` header.
    pub host: String,
    pub port: u16,
    /// `host` or `host:port` as written in the URL: the `Host` header's value, as wrk sends it.
    pub authority: String,
    /// Path and query, `/` when the URL has none.
    pub path: String,
}

/// Parse `http://host[:port][/path]`. Only plain `http` is supported.
pub fn parse_url(s: &str) -> anyhow::Result<Url> {
    let rest = s
        .strip_prefix("http://")
        .with_context(|| format!("URL {s:?} must start with http:// (https is not supported)"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'?' => (&rest[..i], format!("/{}", &rest[i..])),
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    ensure!(!authority.is_empty(), "URL {s:?} has no host");
    ensure!(
        !authority.contains('@'),
        "URL {s:?}: user information is not supported"
    );
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6
            .find(']')
            .with_context(|| format!("URL {s:?}: unclosed '[' in the host"))?;
        let host = &authority[..end + 2];
        match &v6[end + 1..] {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .with_context(|| format!("URL {s:?}: junk after ']'"))?,
                ),
            ),
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    ensure!(!host.is_empty(), "URL {s:?} has no host");
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .with_context(|| format!("URL {s:?}: bad port {p:?}"))?,
    };
    ensure!(
        !path.bytes().any(|b| b <= b' ' || b == 0x7f),
        "URL {s:?}: the path has spaces or control characters"
    );
    Ok(Url {
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        path,
    })
}

/// Resolve the URL's host once, on the main thread, before any runtime starts. The first
/// address is used (IPv4 first when the name has both).
pub fn resolve(url: &Url) -> anyhow::Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    let host = url.host.trim_start_matches('[').trim_end_matches(']');
    // Blocking resolution is banned inside shards; here no runtime runs yet.
    #[allow(clippy::disallowed_methods)]
    let addrs: Vec<SocketAddr> = (host, url.port)
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {}", url.host))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("{} resolves to no address", url.host))
}

/// Parse a duration such as `10s`, `500ms`, `1m`, `1h`, `1.5s` or `10` (seconds, as wrk).
pub fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = t.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .with_context(|| format!("bad duration {s:?} (examples: 10s, 500ms, 1m)"))?;
    let secs = v * scale;
    ensure!(
        secs <= DURATION_MAX_S,
        "duration {s:?} is longer than {DURATION_MAX_S} s"
    );
    Ok(Duration::from_secs_f64(secs))
}

/// One `-H 'Name: value'` header, checked.
fn parse_header(h: &str) -> anyhow::Result<(&str, &str)> {
    let (name, value) = h
        .split_once(':')
        .with_context(|| format!("header {h:?} must look like 'Name: value'"))?;
    let name = name.trim();
    let value = value.trim();
    ensure!(
        !name.is_empty() && name.bytes().all(is_tchar),
        "header {h:?}: bad header name"
    );
    ensure!(
        !value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0),
        "header {h:?}: CR, LF and NUL are not allowed in a value"
    );
    Ok((name, value))
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Serialise the request every connection sends, once: request line, `Host` (unless given with
/// `-H`), the `-H` headers in order, `Content-Length` (when there is a body, or the method
/// usually has one), a blank line and the body. Keep-alive is HTTP/1.1's default, so no
/// `Connection` header is added.
pub fn build_request(
    method: &str,
    url: &Url,
    headers: &[String],
    body: &[u8],
) -> anyhow::Result<Vec<u8>> {
    ensure!(
        !method.is_empty() && method.bytes().all(is_tchar),
        "bad method {method:?}"
    );
    ensure!(
        body.len() <= BODY_BYTES_MAX,
        "the body is over {BODY_BYTES_MAX} bytes"
    );
    let mut parsed = Vec::with_capacity(headers.len());
    for h in headers {
        let (name, value) = parse_header(h)?;
        if name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
        {
            bail!("header {name}: the body's framing is set by shardgate-bench (Content-Length)");
        }
        parsed.push((name, value));
    }
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(url.path.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if !parsed.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(url.authority.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in &parsed {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_forms() {
        let u = parse_url("http://127.0.0.1:18080/v1/chat/completions").expect("valid");
        assert_eq!(u.host, "127.0.0.1");
        assert_eq!(u.port, 18080);
        assert_eq!(u.authority, "127.0.0.1:18080");
        assert_eq!(u.path, "/v1/chat/completions");

        let u = parse_url("http://example.com").expect("valid");
        assert_eq!((u.port, u.path.as_str()), (80, "/"));
        let u = parse_url("http://example.com?x=1").expect("valid");
        assert_eq!(u.path, "/?x=1");
        let u = parse_url("http://[::1]:8080/a?b").expect("valid");
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("[::1]", 8080, "/a?b")
        );
        let u = parse_url("http://[::1]/").expect("valid");
        assert_eq!(u.port, 80);

        for bad in [
            "https://x/",
            "x:80/",
            "http://",
            "http://:80/",
            "http://h:0/",
            "http://h:99999/",
            "http://h:x/",
            "http://u@h/",
            "http://h/a b",
            "http://[::1/",
        ] {
            assert!(parse_url(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn durations() {
        let d = |s| parse_duration(s).expect("valid");
        assert_eq!(d("10s"), Duration::from_secs(10));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("1m"), Duration::from_secs(60));
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("7"), Duration::from_secs(7));
        assert_eq!(d("250us"), Duration::from_micros(250));
        for bad in ["", "s", "-1s", "1x", "NaNs", "inf", "2d", "25h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn request_bytes() {
        let url = parse_url("http://127.0.0.1:8080/v1/chat/completions").expect("valid");
        let req = build_request(
            "POST",
            &url,
            &["Content-Type: application/json".into()],
            b"{}",
        )
        .expect("valid");
        assert_eq!(
            std::str::from_utf8(&req).expect("ascii"),
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        let req = build_request("GET", &url, &["host: other".into()], b"").expect("valid");
        assert_eq!(
            std::str::from_utf8(&req).expect("ascii"),
            "GET /v1/chat/completions HTTP/1.1\r\nhost: other\r\n\r\n"
        );
        let req = build_request("POST", &url, &[], b"").expect("valid");
        assert!(req.ends_with(b"Content-Length: 0\r\n\r\n"));
    }

    #[test]
    fn request_refusals() {
        let url = parse_url("http://h/").expect("valid");
        for h in [
            "NoColon",
            ": v",
            "Bad Name: v",
            "X: a\r\nInjected: 1",
            "Content-Length: 5",
            "transfer-encoding: chunked",
        ] {
            assert!(
                build_request("GET", &url, &[h.into()], b"").is_err(),
                "{h:?}"
            );
        }
        assert!(build_request("GE T", &url, &[], b"").is_err());
        assert!(build_request("", &url, &[], b"").is_err());
    }
}
