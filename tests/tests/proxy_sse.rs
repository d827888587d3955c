//! Server-sent events are relayed as they come, and a client leaving ends the upstream stream.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_tests::{
    dechunk, echo, hang, per_driver, split_head, sse, sse_event, wait_until, write_chunk, Action,
    Client, ConfigBuilder, Driver, Gateway, MockUpstream,
};

per_driver!(
    sse_events_relayed_as_they_come,
    a_tenants_filtered_stream_gets_its_head_before_the_first_token,
    client_disconnect_mid_stream,
    a_client_hanging_up_frees_the_upstream_before_the_next_token,
    a_tenant_hanging_up_frees_the_upstream_before_the_next_token,
    pipelined_bytes_sent_mid_stream_are_kept_for_after_it,
    a_stream_larger_than_the_socket_buffers_reaches_a_slow_reader_whole
);

const STREAM_REQ: &str = "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"stream\":true}";

/// What a stepped upstream and its client share: how many pieces the client has received and
/// how many the upstream has sent.
#[derive(Clone, Default)]
struct Steps {
    got: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
}

impl Steps {
    /// The upstream's side: wait until the client has `i` pieces (or 3 s), then count piece
    /// `i` as sent.
    fn step(&self, i: usize) {
        wait_until(Duration::from_secs(3), || {
            self.got.load(Ordering::SeqCst) >= i
        });
        self.sent.store(i + 1, Ordering::SeqCst);
    }
}

/// The upstream sends the response in steps — the head, event 1, event 2, then the rest — and
/// before each step waits until the client has everything from the previous one (or 3 s). The
/// client checks, on receiving each piece, that the upstream has not gone on to the next step:
/// proof the gateway relays every piece as it comes instead of buffering.
fn sse_events_relayed_as_they_come(driver: Driver) {
    let steps = Steps::default();
    let (client_got, upstream_sent) = (steps.got.clone(), steps.sent.clone());
    let up = MockUpstream::start(move |req, s| {
        if req.path != "/v1/chat/completions" {
            return echo()(req, s);
        }
        let step = |i: usize| steps.step(i);
        step(0);
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        step(1);
        write_chunk(s, sse_event(1).as_bytes())?;
        step(2);
        write_chunk(s, sse_event(2).as_bytes())?;
        step(3);
        write_chunk(s, sse_event(3).as_bytes())?;
        write_chunk(s, b"data: [DONE]\n\n")?;
        s.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    });
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(STREAM_REQ);
    let mut raw = Vec::new();
    let pieces = [
        ("the response head", b"\r\n\r\n".to_vec()),
        ("event 1", sse_event(1).into_bytes()),
        ("event 2", sse_event(2).into_bytes()),
    ];
    for (i, (what, until)) in pieces.iter().enumerate() {
        raw.extend_from_slice(&c.read_raw_until(until));
        assert_eq!(
            upstream_sent.load(Ordering::SeqCst),
            i + 1,
            "{what} reached the client only after the upstream sent more: the stream is buffered"
        );
        client_got.store(i + 1, Ordering::SeqCst);
    }
    let (head, _) = split_head(&raw).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("text/event-stream"),
        "{head}"
    );
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let end: &[u8] = if chunked {
        b"0\r\n\r\n"
    } else {
        b"data: [DONE]\n\n"
    };
    raw.extend_from_slice(&c.read_raw_until(end));
    let (_, body_raw) = split_head(&raw).expect("head");
    let body = if chunked {
        let (b, complete) = dechunk(body_raw).expect("valid chunked framing");
        assert!(complete);
        b
    } else {
        body_raw.to_vec()
    };
    let expected = format!(
        "{}{}{}data: [DONE]\n\n",
        sse_event(1),
        sse_event(2),
        sse_event(3)
    );
    assert_eq!(String::from_utf8_lossy(&body), expected);
    if chunked {
        // A complete stream keeps the connection usable.
        c.send("GET /after HTTP/1.1\r\nHost: test\r\n\r\n");
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
    }
}

/// The same on the LLM path: a tenant's stream goes through the SSE filter (the usage chunk
/// the gateway asks for taken out again). The upstream sends the head at once and its first
/// event only once the client has the head (or after 3 s, a stand-in for a long time to first
/// token): the client must get the head while the upstream has sent nothing more, as nginx
/// (`proxy_buffering off`) passes a head on at once (issue 21).
fn a_tenants_filtered_stream_gets_its_head_before_the_first_token(driver: Driver) {
    let steps = Steps::default();
    let (client_got, upstream_sent) = (steps.got.clone(), steps.sent.clone());
    let up = MockUpstream::start(move |req, s| {
        if req.path != "/v1/chat/completions" {
            return echo()(req, s);
        }
        let step = |i: usize| steps.step(i);
        step(0);
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        step(1);
        write_chunk(s, sse_event(1).as_bytes())?;
        write_chunk(s, b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1,\"total_tokens\":4}}\n\n")?;
        write_chunk(s, b"data: [DONE]\n\n")?;
        s.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    });
    let cfg = ConfigBuilder::new(up.addr())
        .tenant("name = \"t\"\nkeys = [\"sk-t-key\"]\ntpm = 100000")
        .build();
    let gw = Gateway::start_on(&cfg, driver);
    let mut c = Client::connect(gw.addr());
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sk-t-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let mut raw = c.read_raw_until(b"\r\n\r\n");
    assert_eq!(
        upstream_sent.load(Ordering::SeqCst),
        1,
        "the response head reached the client only after the upstream sent its first event"
    );
    client_got.store(1, Ordering::SeqCst);
    raw.extend_from_slice(&c.read_raw_until(b"0\r\n\r\n"));
    let (head, body_raw) = split_head(&raw).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (body, complete) = dechunk(body_raw).expect("valid chunked framing");
    assert!(complete);
    let text = String::from_utf8_lossy(&body);
    assert!(text.starts_with(&sse_event(1)), "{text}");
    assert!(
        !text.contains("usage"),
        "the usage chunk the gateway asked for reached the client:\n{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

/// The client reads the first event and leaves; the upstream must see its connection closed
/// soon after, and the gateway keeps serving.
fn client_disconnect_mid_stream(driver: Driver) {
    let up = sse_upstream(200, Duration::from_millis(50));
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(STREAM_REQ);
    c.read_raw_until(sse_event(1).as_bytes());
    assert_eq!(up.connections_closed_by_peer(), 0);
    drop(c);
    let t = Instant::now();
    assert!(
        wait_until(Duration::from_secs(3), || up.connections_closed_by_peer()
            >= 1),
        "the upstream stream was not closed within 3 s of the client leaving"
    );
    eprintln!("upstream closed {:?} after the client left", t.elapsed());
    let mut c2 = Client::connect(gw.addr());
    let r = c2.get("/still-serving");
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// An upstream that answers `/v1/...` with `events` SSE events `interval` apart (anything else
/// echoed).
fn sse_upstream(events: usize, interval: Duration) -> MockUpstream {
    let stream = sse(events, interval);
    MockUpstream::start(move |req, s| {
        if req.path.starts_with("/v1/") {
            stream(req, s)
        } else {
            echo()(req, s)
        }
    })
}

/// An upstream that sends a stream's head and first event, then no more: it waits until the
/// gateway closes the connection (counted closed by the peer), or for ever.
fn one_event_then_silence() -> MockUpstream {
    MockUpstream::start(move |req, s| {
        if !req.path.starts_with("/v1/") {
            return echo()(req, s);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        write_chunk(s, sse_event(1).as_bytes())?;
        hang()(req, s)
    })
}

/// The client reads the first event and hangs up while the stream waits for a next token that
/// never comes: the gateway must notice the hang-up itself (it watches the client while the
/// stream waits) and close the upstream connection, so the upstream stops generating for no
/// one. Before, it noticed only when it wrote the next token, i.e. never here.
fn a_client_hanging_up_frees_the_upstream_before_the_next_token(driver: Driver) {
    let up = one_event_then_silence();
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(STREAM_REQ);
    c.read_raw_until(sse_event(1).as_bytes());
    assert_eq!(up.connections_closed_by_peer(), 0);
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || up.connections_closed_by_peer()
            >= 1),
        "the upstream connection was still open 5 s after the client hung up (no token came)"
    );
    let r = Client::connect(gw.addr()).get("/still-serving");
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// The same on a tenant's stream (the SSE filter's relay, with usage accounting): the upstream
/// is freed, and the tenant's concurrency slot is given back (a second stream is admitted with
/// `max_concurrency = 1`).
fn a_tenant_hanging_up_frees_the_upstream_before_the_next_token(driver: Driver) {
    let up = one_event_then_silence();
    let cfg = ConfigBuilder::new(up.addr())
        .tenant("name = \"t\"\nkeys = [\"sk-t-key\"]\nmax_concurrency = 1")
        .build();
    let gw = Gateway::start_on(&cfg, driver);
    let body = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sk-t-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut c = Client::connect(gw.addr());
    c.send(&req);
    c.read_raw_until(sse_event(1).as_bytes());
    drop(c);
    assert!(
        wait_until(Duration::from_secs(5), || up.connections_closed_by_peer()
            >= 1),
        "the upstream connection was still open 5 s after the tenant hung up (no token came)"
    );
    let mut c = Client::connect(gw.addr());
    c.send(&req);
    let raw = c.read_raw_until(sse_event(1).as_bytes());
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "the tenant's slot was not given back: {}",
        String::from_utf8_lossy(&raw)
    );
}

/// A client that sends its next request while its stream is still under way (pipelining) is
/// not taken for one that hung up: the stream goes on to its end, and the request sent
/// meanwhile is answered after it.
fn pipelined_bytes_sent_mid_stream_are_kept_for_after_it(driver: Driver) {
    let up = sse_upstream(3, Duration::from_millis(300));
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(STREAM_REQ);
    c.read_raw_until(sse_event(1).as_bytes());
    c.send("GET /after-the-stream HTTP/1.1\r\nHost: test\r\n\r\n");
    let raw = c.read_raw_until(b"/after-the-stream");
    let text = String::from_utf8_lossy(&raw);
    for i in 2..=3 {
        assert!(text.contains(&sse_event(i)), "event {i} missing:\n{text}");
    }
    let done = text.find("data: [DONE]").expect("the stream's end");
    let next = text
        .find("0\r\n\r\nHTTP/1.1 200")
        .expect("the stream's last chunk, then the answer");
    assert!(done < next, "{text}");
    assert_eq!(up.connections_closed_by_peer(), 0);
}

/// A stream's events are written to the client at once where its socket takes them, the rest
/// through the runtime: a client that does not read for a while (its socket full, the writes
/// partial) still gets every event, whole and in order, and the stream ends cleanly.
fn a_stream_larger_than_the_socket_buffers_reaches_a_slow_reader_whole(driver: Driver) {
    const EVENTS: usize = 600;
    let pad = "x".repeat(1000);
    let up = MockUpstream::start(move |req, s| {
        if !req.path.starts_with("/v1/") {
            return echo()(req, s);
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        for i in 0..EVENTS {
            write_chunk(
                s,
                format!("data: {{\"n\":{i},\"pad\":\"{pad}\"}}\n\n").as_bytes(),
            )?;
        }
        write_chunk(s, b"data: [DONE]\n\n")?;
        s.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    });
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(STREAM_REQ);
    // Not read for a while: ~600 KB fill the sockets' buffers on the way.
    shardgate_tests::sleep(Duration::from_millis(500));
    let raw = c.read_raw_until(b"0\r\n\r\n");
    let (head, body_raw) = split_head(&raw).expect("a response head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (body, complete) = dechunk(body_raw).expect("valid chunked framing");
    assert!(complete, "the stream did not end cleanly");
    let text = String::from_utf8_lossy(&body);
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), EVENTS + 1, "events lost or merged");
    for (i, e) in events.iter().take(EVENTS).enumerate() {
        let want = format!("data: {{\"n\":{i},\"pad\":\"");
        assert!(
            e.starts_with(&want),
            "event {i} out of order or cut: {}",
            &e[..e.len().min(40)]
        );
    }
    assert_eq!(events[EVENTS], "data: [DONE]");
}
