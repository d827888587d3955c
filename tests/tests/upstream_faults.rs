//! Upstream failures: down, hung, garbage, cut mid-stream, stale pooled connections.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_tests::{
    assert_error, echo, free_port, hang, split_head, wait_until, write_chunk, write_response,
    Action, Client, Closed, ConfigBuilder, Gateway, MockUpstream,
};

/// Nothing listens on the endpoint: 502.
#[test]
fn upstream_down_is_502() {
    let gw = Gateway::start(&ConfigBuilder::new(free_port()).build());
    let mut c = Client::connect(gw.addr());
    let r = c.get("/down");
    assert_error(&r, 502, "upstream_unavailable");
    // A GET has no body left unread, so the connection may stay open; if it does, it must
    // still work, and if the gateway says close, it must close.
    if r.connection_has("close") {
        c.assert_closed(Duration::from_secs(3));
    } else {
        let r = c.get("/down-again");
        assert_error(&r, 502, "upstream_unavailable");
    }
}

/// The upstream accepts and never answers: 504 after ttfb_timeout_ms, and that upstream
/// connection is closed rather than pooled.
#[test]
fn upstream_hang_is_504() {
    let up = MockUpstream::start(hang());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .upstream("ttfb_timeout_ms = 300")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    let t = Instant::now();
    c.set_timeout(Duration::from_secs(3));
    let r = c.get("/hang");
    let took = t.elapsed();
    assert_error(&r, 504, "upstream_timeout");
    assert!(
        took >= Duration::from_millis(250),
        "504 before the timeout: {took:?}"
    );
    assert!(
        wait_until(Duration::from_secs(3), || up.connections_closed_by_peer()
            >= 1),
        "the timed-out upstream connection was not closed"
    );
}

/// The upstream answers garbage: 502.
#[test]
fn upstream_garbage_is_502() {
    let up = MockUpstream::start(|_req, s| {
        s.write_all(b"this is not HTTP\r\n\r\n")?;
        Ok(Action::Close)
    });
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    let r = c.get("/garbage");
    assert_error(&r, 502, "upstream_bad_response");
}

/// The upstream sends a chunked head and one chunk, waits until the client has that chunk, then
/// closes (FIN) or resets (RST) without the last chunk. The client must see the connection end
/// without a terminating `0\r\n\r\n`, and the gateway keeps serving.
fn cut_mid_stream(how: Action) {
    let client_has_chunk = Arc::new(AtomicBool::new(false));
    let flag = client_has_chunk.clone();
    let up = MockUpstream::start(move |req, s| {
        if req.path != "/stream" {
            return echo()(req, s);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        write_chunk(s, b"data: partial\n\n")?;
        wait_until(Duration::from_secs(5), || flag.load(Ordering::SeqCst));
        Ok(how)
    });
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send("GET /stream HTTP/1.1\r\nHost: test\r\n\r\n");
    let mut raw = c.read_raw_until(b"data: partial\n\n");
    client_has_chunk.store(true, Ordering::SeqCst);
    let (rest, end) = c.read_raw_to_end(Duration::from_secs(5));
    raw.extend_from_slice(&rest);
    let (head, body) = split_head(&raw).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_ne!(
        end,
        Closed::StillOpen,
        "the client connection must end when the upstream stream is cut; got so far: {:?}",
        String::from_utf8_lossy(&raw)
    );
    let body = String::from_utf8_lossy(body);
    assert!(
        !body.contains("0\r\n\r\n"),
        "a cut stream must not look complete: the client got a terminating chunk: {body:?}"
    );
    // The gateway still serves.
    let mut c2 = Client::connect(gw.addr());
    let r = c2.get("/after");
    assert_eq!(r.status, 200, "{}", r.summary());
}

#[test]
fn upstream_fin_mid_stream_truncates_client() {
    cut_mid_stream(Action::Close);
}

#[test]
fn upstream_rst_mid_stream_truncates_client() {
    cut_mid_stream(Action::Reset);
}

/// The upstream answers and then closes its keep-alive connection while it sits idle in the
/// pool. The next request must still succeed (a retry on a fresh connection).
fn stale_pooled_connection(how: Action, method: &str) {
    let up = MockUpstream::start(move |req, s| {
        let body = format!("{{\"path\":\"{}\",\"len\":{}}}", req.path, req.body.len());
        write_response(s, 200, "application/json", body.as_bytes())?;
        Ok(how)
    });
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    let send = |c: &mut Client, path: &str| {
        if method == "POST" {
            c.post_json(path, "{\"model\":\"demo\"}")
        } else {
            c.get(path)
        }
    };
    let r = send(&mut c, "/first");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        wait_until(Duration::from_secs(3), || up.connections_closed_by_us()
            == 1),
        "the mock did not close"
    );
    // Let the FIN/RST land in the gateway's socket before the next request.
    shardgate_tests::sleep(Duration::from_millis(50));
    let r = send(&mut c, "/second");
    assert_eq!(
        r.status,
        200,
        "a request after the pooled connection went stale: {}",
        r.summary()
    );
    assert_eq!(r.json()["path"], "/second");
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(paths, vec!["/first", "/second"]);
    assert_eq!(up.connections_accepted(), 2);
}

#[test]
fn stale_pooled_connection_fin_get() {
    stale_pooled_connection(Action::Close, "GET");
}

#[test]
fn stale_pooled_connection_fin_post() {
    stale_pooled_connection(Action::Close, "POST");
}

#[test]
fn stale_pooled_connection_rst_post() {
    stale_pooled_connection(Action::Reset, "POST");
}
