//! HTTP/1.0 clients.

use std::io::Write;
use std::time::Duration;

use shardgate_tests::{
    echo, write_chunk, Action, Client, ConfigBuilder, Gateway, MockUpstream, Request,
};

fn handler(req: &Request, s: &mut std::net::TcpStream) -> std::io::Result<Action> {
    if req.path == "/chunked" {
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
        write_chunk(s, b"first ")?;
        write_chunk(s, b"second ")?;
        write_chunk(s, b"third")?;
        s.write_all(b"0\r\n\r\n")?;
        return Ok(Action::KeepAlive);
    }
    echo()(req, s)
}

/// HTTP/1.0 without keep-alive: answered, then closed.
#[test]
fn http10_answered_then_closed() {
    let up = MockUpstream::start(handler);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send("GET /ten HTTP/1.0\r\nHost: test\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json()["path"], "/ten");
    assert!(
        r.header("transfer-encoding").is_none(),
        "no chunked to HTTP/1.0: {}",
        r.summary()
    );
    c.assert_closed(Duration::from_secs(3));
}

/// HTTP/1.0 with `Connection: keep-alive`: answered with a length, connection kept.
#[test]
fn http10_keep_alive_kept() {
    let up = MockUpstream::start(handler);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    for p in ["/k1", "/k2"] {
        c.send(format!(
            "GET {p} HTTP/1.0\r\nHost: test\r\nConnection: keep-alive\r\n\r\n"
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(
            r.header("content-length").is_some(),
            "a kept-alive HTTP/1.0 response needs Content-Length: {}",
            r.summary()
        );
        assert!(!r.close_delimited);
        assert_eq!(r.json()["path"], p);
    }
}

/// A chunked upstream response reaches an HTTP/1.0 client de-chunked.
#[test]
fn http10_gets_chunked_upstream_dechunked() {
    let up = MockUpstream::start(handler);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send("GET /chunked HTTP/1.0\r\nHost: test\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        !r.chunked && r.header("transfer-encoding").is_none(),
        "an HTTP/1.0 client must not get chunked: {}",
        r.summary()
    );
    assert_eq!(r.body_str(), "first second third", "{}", r.summary());
    if !r.close_delimited {
        c.assert_closed(Duration::from_secs(3));
    }
}
