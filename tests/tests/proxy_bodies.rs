//! Request and response bodies in every framing reach the other side intact.

use std::io::Write;
use std::time::Duration;

use shardgate_tests::{
    echo, json_ok, per_driver, sleep, write_chunk, Action, Client, ConfigBuilder, Driver, Gateway,
    MockUpstream,
};

per_driver!(
    content_length_request_body_200k,
    chunked_request_body_in_pieces,
    content_length_response_body,
    chunked_response_body,
    close_delimited_response_body
);

/// Printable, position-dependent bytes, so a shifted or dropped byte shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + i / 251) % 36])
        .collect()
}

fn content_length_request_body_200k(driver: Driver) {
    let up = MockUpstream::start(json_ok("{\"ok\":true}"));
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let body = pattern(200 * 1024);
    let mut c = Client::connect(gw.addr());
    let mut req = format!(
        "POST /upload HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    c.send(&req);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body.len(),
        body.len(),
        "body length at the upstream"
    );
    assert!(reqs[0].body == body, "body bytes differ at the upstream");
    // The connection stays usable: the body was consumed exactly.
    let r = c.get("/after");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(up.requests().len(), 2);
}

fn chunked_request_body_in_pieces(driver: Driver) {
    let up = MockUpstream::start(json_ok("{\"ok\":true}"));
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let big = pattern(64 * 1024 + 17);
    let mut c = Client::connect(gw.addr());
    c.send("POST /chunked HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut expected = Vec::new();
    let pieces: [&[u8]; 4] = [b"hello ", b"chunked ", &big, b" world"];
    for (i, p) in pieces.iter().enumerate() {
        sleep(Duration::from_millis(50));
        // One chunk with an extension (valid, must be ignored).
        let ext = if i == 1 { ";name=value" } else { "" };
        let mut chunk = format!("{:x}{ext}\r\n", p.len()).into_bytes();
        chunk.extend_from_slice(p);
        chunk.extend_from_slice(b"\r\n");
        // Split each chunk across two writes, mid size line.
        let (a, b) = chunk.split_at(1);
        c.send(a);
        sleep(Duration::from_millis(10));
        c.send(b);
        expected.extend_from_slice(p);
    }
    sleep(Duration::from_millis(50));
    c.send("0\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].body.len(),
        expected.len(),
        "body length at the upstream"
    );
    assert!(
        reqs[0].body == expected,
        "body bytes differ at the upstream"
    );
    let r = c.get("/after");
    assert_eq!(r.status, 200, "{}", r.summary());
}

fn content_length_response_body(driver: Driver) {
    let body = pattern(300 * 1024);
    let b2 = body.clone();
    let up = MockUpstream::start(move |_req, s| {
        write!(
            s,
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            b2.len()
        )?;
        s.write_all(&b2)?;
        Ok(Action::KeepAlive)
    });
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    for _ in 0..2 {
        let r = c.get("/big");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), body.len());
        assert!(r.body == body, "response body differs");
    }
}

fn chunked_response_body(driver: Driver) {
    let sizes = [1usize, 100, 40_000, 3, 70_000];
    let up = MockUpstream::start(move |_req, s| {
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        let mut off = 0;
        for n in sizes {
            write_chunk(s, &pattern(off + n)[off..])?;
            off += n;
        }
        s.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    });
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let expected = pattern(sizes.iter().sum());
    let mut c = Client::connect(gw.addr());
    for _ in 0..2 {
        let r = c.get("/chunked");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.body.len(), expected.len());
        assert!(r.body == expected, "response body differs");
    }
}

/// The upstream sends neither Content-Length nor chunked and ends the body by closing.
fn close_delimited_response_body(driver: Driver) {
    let body = pattern(100 * 1024);
    let b2 = body.clone();
    let up = MockUpstream::start(move |_req, s| {
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n")?;
        s.write_all(&b2[..1000])?;
        sleep(Duration::from_millis(20));
        s.write_all(&b2[1000..])?;
        Ok(Action::Close)
    });
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    let r = c.get("/close-delimited");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.body.len(), body.len(), "{}", r.summary());
    assert!(r.body == body, "response body differs");
    // Whatever framing the gateway chose, it must be a complete one: a chunked or
    // length-delimited body keeps the connection usable, a close-delimited one ended with EOF.
    if !r.close_delimited {
        let r = c.get("/again");
        assert_eq!(r.status, 200, "{}", r.summary());
    }
}

/// `Expect: 100-continue`: the client gets `100 Continue` before it sends the body, then the
/// final answer; the upstream never sees `Expect`.
#[test]
fn expect_100_continue() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send(
        "POST /expect HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nExpect: 100-continue\r\n\r\n",
    );
    c.set_timeout(Duration::from_secs(3));
    let interim = c.read_response();
    assert_eq!(
        interim.status,
        100,
        "expected 100 Continue before the body: {}",
        interim.summary()
    );
    assert_eq!(interim.version, "HTTP/1.1");
    assert!(
        up.requests().is_empty(),
        "the upstream got the request before its body"
    );
    c.send("hello world");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].body, b"hello world");
    assert!(
        reqs[0].header("expect").is_none(),
        "Expect must not be forwarded: {:?}",
        reqs[0].headers
    );
}

/// An `Expect` other than `100-continue` is answered 417.
#[test]
fn expect_other_is_417() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send("POST /expect HTTP/1.1\r\nHost: test\r\nContent-Length: 2\r\nExpect: teapot\r\n\r\nhi");
    let r = c.read_response();
    shardgate_tests::assert_error(&r, 417, "expectation_failed");
    c.assert_closed(Duration::from_secs(3));
    assert!(up.requests().is_empty());
}
