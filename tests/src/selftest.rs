//! Tests of the harness itself (client parser, mock upstream), no gateway involved.

use std::io::Write;
use std::time::Duration;

use crate::{
    check_error, dechunk, echo, write_chunk, write_response, Action, Client, Closed, MockUpstream,
};

#[test]
fn mock_parses_keepalive_chunked_and_pipelined_requests() {
    let up = MockUpstream::start(echo());
    let mut c = Client::connect(up.addr());
    c.send(
        "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc\
         POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;e=1\r\nxyz\r\n2\r\n!!\r\n0\r\nT: v\r\n\r\n",
    );
    let a = c.read_response();
    let b = c.read_response();
    assert_eq!(a.json()["body"], "abc");
    assert_eq!(b.json()["body"], "xyz!!");
    assert_eq!(b.json()["chunked"], true);
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("HOST"), Some("x"));
    assert_eq!(up.connections_accepted(), 1);
    drop(c);
    assert!(crate::wait_until(Duration::from_secs(3), || up
        .connections_closed_by_peer()
        == 1));
    assert_eq!(up.incomplete_requests(), 0);
}

#[test]
fn mock_counts_incomplete_requests() {
    let up = MockUpstream::start(echo());
    let mut c = Client::connect(up.addr());
    c.send("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
    drop(c);
    assert!(crate::wait_until(Duration::from_secs(3), || up
        .incomplete_requests()
        == 1));
    assert!(up.requests().is_empty());
}

#[test]
fn client_reads_every_response_framing() {
    let up = MockUpstream::start(|req, s| match req.path.as_str() {
        "/cl" => {
            write_response(s, 200, "text/plain", b"length")?;
            Ok(Action::KeepAlive)
        }
        "/chunked" => {
            s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            write_chunk(s, b"chu")?;
            write_chunk(s, b"nked")?;
            s.write_all(b"0\r\n\r\n")?;
            Ok(Action::KeepAlive)
        }
        "/continue" => {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")?;
            Ok(Action::KeepAlive)
        }
        _ => {
            s.write_all(b"HTTP/1.1 200 OK\r\n\r\nuntil close")?;
            Ok(Action::Close)
        }
    });
    let mut c = Client::connect(up.addr());
    assert_eq!(c.get("/cl").body_str(), "length");
    let r = c.get("/chunked");
    assert!(r.chunked);
    assert_eq!(r.body_str(), "chunked");
    assert_eq!(c.get("/continue").status, 100);
    assert_eq!(c.read_response().status, 204);
    let r = c.get("/close");
    assert!(r.close_delimited);
    assert_eq!(r.body_str(), "until close");
    assert!(c.wait_closed(Duration::from_secs(1)).is_closed());
}

#[test]
fn client_sees_reset_and_open_connections() {
    let up = MockUpstream::start(|req, s| {
        if req.path == "/rst" {
            return Ok(Action::Reset);
        }
        write_response(s, 200, "text/plain", b"ok")?;
        Ok(Action::KeepAlive)
    });
    let mut c = Client::connect(up.addr());
    assert_eq!(c.get("/ok").status, 200);
    assert_eq!(c.wait_closed(Duration::from_millis(100)), Closed::StillOpen);
    c.send("GET /rst HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(c.wait_closed(Duration::from_secs(3)), Closed::Reset);
    assert_eq!(up.connections_closed_by_us(), 1);
}

#[test]
fn dechunk_reports_completeness() {
    assert_eq!(
        dechunk(b"3\r\nabc\r\n0\r\n\r\n").expect("valid"),
        (b"abc".to_vec(), true)
    );
    assert_eq!(
        dechunk(b"3\r\nabc\r\n").expect("valid"),
        (b"abc".to_vec(), false)
    );
    assert!(dechunk(b"zz\r\n").is_err());
}

#[test]
fn check_error_wants_the_whole_shape() {
    let up = MockUpstream::start(|req, s| {
        let body: &[u8] = if req.path == "/good" {
            br#"{"error":{"message":"m","type":"t","param":null,"code":"bad_request"}}"#
        } else {
            br#"{"error":{"message":"m","code":"bad_request"}}"#
        };
        write_response(s, 400, "application/json", body)?;
        Ok(Action::KeepAlive)
    });
    let mut c = Client::connect(up.addr());
    assert!(check_error(&c.get("/good"), 400, "bad_request").is_ok());
    assert!(check_error(&c.get("/good"), 400, "other").is_err());
    assert!(check_error(&c.get("/good"), 413, "bad_request").is_err());
    assert!(check_error(&c.get("/bad"), 400, "bad_request").is_err());
}
