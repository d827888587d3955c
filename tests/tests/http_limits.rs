//! Request size limits and client-side timeouts.

use std::time::{Duration, Instant};

use shardgate_tests::{assert_error, echo, Client, ConfigBuilder, Gateway, MockUpstream, Response};

const HEADER_BYTES_MAX: usize = 2048;
const HEADERS_COUNT_MAX: usize = 10;
const BODY_BYTES_MAX: usize = 1000;

fn limited() -> (MockUpstream, Gateway) {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .server(&format!("header_bytes_max = {HEADER_BYTES_MAX}"))
        .server(&format!("headers_count_max = {HEADERS_COUNT_MAX}"))
        .server(&format!("body_bytes_max = {BODY_BYTES_MAX}"))
        .build();
    let gw = Gateway::start(&cfg);
    (up, gw)
}

/// Sends `raw`, expects `status code` with `Connection: close`, then the connection closed.
#[track_caller]
fn expect_refused(gw: &Gateway, raw: &[u8], status: u16, code: &str) -> Response {
    let mut c = Client::connect(gw.addr());
    let _ = c.try_send(raw);
    let r = c.read_response();
    assert_error(&r, status, code);
    assert!(r.connection_has("close"), "{}", r.summary());
    c.assert_closed(Duration::from_secs(3));
    r
}

#[test]
fn header_block_too_large_is_431() {
    let (up, gw) = limited();
    let raw = format!(
        "GET /h HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(HEADER_BYTES_MAX + 100)
    );
    expect_refused(&gw, raw.as_bytes(), 431, "header_too_large");
    // Several headers that each fit but together do not.
    let mut raw = String::from("GET /h HTTP/1.1\r\nHost: test\r\n");
    for i in 0..4 {
        raw.push_str(&format!(
            "X-Part-{i}: {}\r\n",
            "b".repeat(HEADER_BYTES_MAX / 3)
        ));
    }
    raw.push_str("\r\n");
    expect_refused(&gw, raw.as_bytes(), 431, "header_too_large");
    assert!(up.requests().is_empty());
}

#[test]
fn request_line_too_large_is_414() {
    let (up, gw) = limited();
    let raw = format!(
        "GET /{} HTTP/1.1\r\nHost: test\r\n\r\n",
        "u".repeat(HEADER_BYTES_MAX + 100)
    );
    expect_refused(&gw, raw.as_bytes(), 414, "uri_too_long");
    assert!(up.requests().is_empty());
}

#[test]
fn too_many_headers_is_431() {
    let (up, gw) = limited();
    // Exactly at the limit (Host + 9 more) is fine.
    let mut ok = String::from("GET /count HTTP/1.1\r\nHost: test\r\n");
    for i in 1..HEADERS_COUNT_MAX {
        ok.push_str(&format!("X-H{i}: v\r\n"));
    }
    ok.push_str("\r\n");
    let mut c = Client::connect(gw.addr());
    c.send(&ok);
    let r = c.read_response();
    assert_eq!(
        r.status,
        200,
        "{HEADERS_COUNT_MAX} headers must pass: {}",
        r.summary()
    );
    // One past it is not.
    let mut bad = String::from("GET /count HTTP/1.1\r\nHost: test\r\n");
    for i in 0..HEADERS_COUNT_MAX {
        bad.push_str(&format!("X-H{i}: v\r\n"));
    }
    bad.push_str("\r\n");
    expect_refused(&gw, bad.as_bytes(), 431, "too_many_headers");
    // Far past it (more than httparse's array) is refused the same way.
    let mut bad = String::from("GET /count HTTP/1.1\r\nHost: test\r\n");
    for i in 0..200 {
        bad.push_str(&format!("X-{i}: v\r\n"));
    }
    bad.push_str("\r\n");
    let mut c = Client::connect(gw.addr());
    let _ = c.try_send(&bad);
    let r = c.read_response();
    assert!(
        r.status == 431,
        "200 header fields must be refused with 431: {}",
        r.summary()
    );
    assert_eq!(
        up.requests().len(),
        1,
        "only the request at the limit is forwarded"
    );
}

/// A Content-Length over the limit is refused up front, before the body is sent.
#[test]
fn content_length_over_limit_is_413_up_front() {
    let (up, gw) = limited();
    let raw = format!(
        "POST /big HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n\r\n",
        BODY_BYTES_MAX + 1
    );
    expect_refused(&gw, raw.as_bytes(), 413, "body_too_large");
    assert!(up.requests().is_empty());
    // A body of exactly the limit passes.
    let mut c = Client::connect(gw.addr());
    let mut raw =
        format!("POST /exact HTTP/1.1\r\nHost: test\r\nContent-Length: {BODY_BYTES_MAX}\r\n\r\n")
            .into_bytes();
    raw.extend(std::iter::repeat_n(b'x', BODY_BYTES_MAX));
    c.send(&raw);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(up.requests()[0].body.len(), BODY_BYTES_MAX);
}

/// A chunked body that grows past the limit is refused as it streams.
#[test]
fn chunked_body_over_limit_is_413() {
    let (up, gw) = limited();
    let mut raw =
        b"POST /big HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(format!("{:x}\r\n", 400).as_bytes());
        raw.extend(std::iter::repeat_n(b'y', 400));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    expect_refused(&gw, &raw, 413, "body_too_large");
    assert!(
        up.requests().is_empty(),
        "the upstream must not get a complete over-limit request"
    );
}

/// Half a head, then silence: 408 and closed once header_timeout_ms passes.
#[test]
fn slow_header_is_408() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .server("header_timeout_ms = 300")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    let t = Instant::now();
    c.send("GET /slow HTTP/1.1\r\nHost: te");
    c.set_timeout(Duration::from_secs(3));
    let r = c.read_response();
    let took = t.elapsed();
    assert_error(&r, 408, "request_timeout");
    assert!(
        took >= Duration::from_millis(250),
        "408 came before the timeout: {took:?}"
    );
    c.assert_closed(Duration::from_secs(3));
    assert!(up.requests().is_empty());
}

/// A body that stalls: 408 once body_timeout_ms passes.
#[test]
fn slow_body_is_408() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .server("body_timeout_ms = 300")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    c.send("POST /slow HTTP/1.1\r\nHost: test\r\nContent-Length: 10\r\n\r\nabc");
    c.set_timeout(Duration::from_secs(3));
    let r = c.read_response();
    assert_error(&r, 408, "request_timeout");
    c.assert_closed(Duration::from_secs(3));
    assert!(up.requests().is_empty());
}

/// An idle keep-alive connection is closed, silently, after idle_timeout_ms.
#[test]
fn idle_keepalive_connection_closed() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .server("idle_timeout_ms = 300")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    let r = c.get("/once");
    assert_eq!(r.status, 200, "{}", r.summary());
    let t = Instant::now();
    c.assert_closed(Duration::from_secs(3));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(200),
        "closed too early for a 300 ms idle timeout: {took:?}"
    );
}

/// On a kept-alive connection, a second head left half-sent also gets 408 (not a silent close).
#[test]
fn slow_header_on_keepalive_connection_is_408() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .server("header_timeout_ms = 300")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    let r = c.get("/first");
    assert_eq!(r.status, 200, "{}", r.summary());
    c.send("GET /second HTTP/1.1\r\nHo");
    c.set_timeout(Duration::from_secs(3));
    let r = c.read_response();
    assert_error(&r, 408, "request_timeout");
    c.assert_closed(Duration::from_secs(3));
    assert_eq!(up.requests().len(), 1);
}
