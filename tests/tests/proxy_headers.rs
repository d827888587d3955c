//! Hop-by-hop headers are dropped, forwarding headers are set.

use shardgate_tests::{echo, Client, ConfigBuilder, Gateway, MockUpstream};

#[test]
fn hop_by_hop_dropped_and_forwarded_headers_set() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send(
        "GET /hop HTTP/1.1\r\n\
         Host: test\r\n\
         Connection: keep-alive, X-Foo\r\n\
         Keep-Alive: timeout=5\r\n\
         TE: trailers\r\n\
         Trailer: X-Checksum\r\n\
         Upgrade: foo/1\r\n\
         Proxy-Authorization: Basic c2VjcmV0OnNlY3JldA==\r\n\
         X-Foo: named-in-connection\r\n\
         X-Kept: yes\r\n\
         Authorization: Bearer sk-end-to-end\r\n\
         X-Forwarded-For: 6.6.6.6\r\n\
         \r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let reqs = up.requests();
    assert_eq!(reqs.len(), 1);
    let got = &reqs[0];
    for h in [
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "x-foo",
    ] {
        assert!(
            got.header(h).is_none(),
            "{h} must not be forwarded; upstream saw {:?}",
            got.headers
        );
    }
    // The gateway may send its own `Connection` to the upstream, but never the client's tokens.
    for v in got.headers_named("connection") {
        assert!(
            !v.to_ascii_lowercase().contains("x-foo"),
            "the client's Connection header was forwarded: {:?}",
            got.headers
        );
    }
    assert_eq!(got.header("x-kept"), Some("yes"), "{:?}", got.headers);
    assert_eq!(
        got.header("authorization"),
        Some("Bearer sk-end-to-end"),
        "end-to-end headers are forwarded: {:?}",
        got.headers
    );
    assert_eq!(
        got.headers_named("x-forwarded-for"),
        vec!["127.0.0.1"],
        "X-Forwarded-For must be the client address, replacing the client's value"
    );
    assert_eq!(
        got.headers_named("x-forwarded-proto"),
        vec!["http"],
        "{:?}",
        got.headers
    );
    assert_eq!(
        got.headers_named("host").len(),
        1,
        "exactly one Host upstream: {:?}",
        got.headers
    );
}

#[test]
fn forwarded_for_set_when_absent() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    let r = c.get("/plain");
    assert_eq!(r.status, 200, "{}", r.summary());
    let reqs = up.requests();
    assert_eq!(reqs[0].headers_named("x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(reqs[0].headers_named("x-forwarded-proto"), vec!["http"]);
}
