//! Pipelined requests: several requests in one write, answered in order.

use std::time::Duration;

use shardgate_tests::{echo, per_driver, Client, ConfigBuilder, Driver, Gateway, MockUpstream};

per_driver!(
    pipelined_requests_answered_in_order,
    pipelined_close_ends_after_last
);

fn pipelined_requests_answered_in_order(driver: Driver) {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(
        "GET /p1 HTTP/1.1\r\nHost: test\r\n\r\n\
         POST /p2 HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\n\r\nhello\
         GET /p3 HTTP/1.1\r\nHost: test\r\n\r\n",
    );
    let mut seen = Vec::new();
    for _ in 0..3 {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        let j = r.json();
        seen.push((
            j["method"].as_str().unwrap_or_default().to_owned(),
            j["path"].as_str().unwrap_or_default().to_owned(),
            j["body"].as_str().unwrap_or_default().to_owned(),
        ));
    }
    assert_eq!(
        seen,
        vec![
            ("GET".to_owned(), "/p1".to_owned(), String::new()),
            ("POST".to_owned(), "/p2".to_owned(), "hello".to_owned()),
            ("GET".to_owned(), "/p3".to_owned(), String::new()),
        ]
    );
    // Still usable afterwards.
    let r = c.get("/p4");
    assert_eq!(r.json()["path"], "/p4");
}

/// The last pipelined request says `Connection: close`: all three are answered, then the
/// connection is closed.
fn pipelined_close_ends_after_last(driver: Driver) {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    c.send(
        "GET /q1 HTTP/1.1\r\nHost: test\r\n\r\n\
         GET /q2 HTTP/1.1\r\nHost: test\r\n\r\n\
         GET /q3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
    );
    for p in ["/q1", "/q2", "/q3"] {
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.json()["path"], p);
    }
    c.assert_closed(Duration::from_secs(3));
}
