//! Hardening, upstream side (issue 9, "Upstream misbehaviour"): an upstream that answers
//! garbage, ill-framed or over-long responses, stops mid-stream, never answers, or resets at any
//! point. Each ends in shardgate's 502/504, or (once the head went out) a truncated response the
//! client can detect; and the misbehaving connection is never pooled: a follow-up request gets a
//! fresh upstream connection and the answer meant for it.
//!
//! Answers are listed in `docs/security.md`. The `*_late` cases send their stray bytes a moment
//! after a complete answer, once the connection is back in the pool: checkout notices them
//! (`UpConn::is_quiet`) and drops the connection. Health charging is not checked here.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shardgate_tests::{
    check_error, dechunk, echo, hang, sleep, split_head, write_chunk, Action, Client, Closed,
    ConfigBuilder, Gateway, MockUpstream, Request,
};

/// A complete, valid response an upstream sends where none may be: if the gateway ever relays
/// it, or pools the connection it sits on, a client gets it as the answer to another request.
const SMUGGLED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\nX-Smuggled: 1\r\n\r\nsmuggled";

/// Time for bytes an upstream sends late to land in the gateway's socket.
const LATE: Duration = Duration::from_millis(100);

const TTFB_TIMEOUT_MS: u64 = 500;
const READ_TIMEOUT_MS: u64 = 500;

/// How the misbehaving exchange must end, as the client sees it.
#[derive(Debug, Clone, Copy)]
enum End {
    /// shardgate's JSON error: this status, one of these codes.
    Error(u16, &'static [&'static str]),
    /// A `200` head, then the connection ends before the body is complete.
    Truncated,
    /// A complete answer (status, body) and nothing after it on the client connection.
    Complete(u16, &'static [u8]),
}

type Bad = fn(&Request, &mut TcpStream) -> io::Result<Action>;

#[derive(Clone, Copy)]
struct UpCase {
    name: &'static str,
    method: &'static str,
    bad: Bad,
    end: End,
}

const BAD_GATEWAY: &[&str] = &["upstream_bad_response"];
const UNAVAILABLE: &[&str] = &["upstream_unavailable"];
/// A reset can destroy bytes the gateway had not read yet: either answer is right.
const BAD_OR_UNAVAILABLE: &[&str] = &["upstream_bad_response", "upstream_unavailable"];

fn w(s: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    s.write_all(bytes)?;
    s.flush()
}

const SSE_HEAD: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";

fn cases() -> Vec<UpCase> {
    use End::{Complete, Error, Truncated};
    let c = |name, method, bad: Bad, end| UpCase {
        name,
        method,
        bad,
        end,
    };
    vec![
        // ----- garbage and ill-framed heads: 502 -----
        c(
            "garbage_status_line",
            "GET",
            |_, s| {
                w(s, b"this is not HTTP at all\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "binary_garbage",
            "GET",
            |_, s| {
                w(
                    s,
                    &[
                        0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x28, 0x00, 0xff, b'\r', b'\n',
                    ],
                )?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "bad_status_code",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "obs_fold_in_response",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n",
                )?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "te_and_cl",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "cl_and_te",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "two_different_cls",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
                )?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "cl_plus_sign",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "te_gzip",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nhello",
                )?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "te_chunked_twice",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "interim_flood",
            "GET",
            |_, s| {
                for _ in 0..20 {
                    w(s, b"HTTP/1.1 100 Continue\r\n\r\n")?;
                }
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "switching_protocols",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: evil\r\n\r\n")?;
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "head_too_large",
            "GET",
            |_, s| {
                let mut head = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
                head.extend(std::iter::repeat_n(b'b', 40 * 1024));
                head.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
                w(s, &head)?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "bad_chunk_size_before_any_byte_relayed",
            "GET",
            |_, s| {
                let mut out = SSE_HEAD.to_vec();
                out.extend_from_slice(b"zz\r\n");
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Error(502, BAD_GATEWAY),
        ),
        // ----- bodies where none may be, bytes past the end: relayed exactly, never pooled -----
        c(
            "no_content_with_body",
            "GET",
            |_, s| {
                let mut out = b"HTTP/1.1 204 No Content\r\n\r\n".to_vec();
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Complete(204, b""),
        ),
        c(
            "no_content_with_declared_body_late",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 204 No Content\r\nContent-Length: 61\r\n\r\n")?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(204, b""),
        ),
        c(
            "no_content_with_chunked_body_late",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
                )?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(204, b""),
        ),
        c(
            "not_modified_with_body",
            "GET",
            |_, s| {
                let mut out = b"HTTP/1.1 304 Not Modified\r\n\r\n".to_vec();
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Complete(304, b""),
        ),
        c(
            "head_answered_with_body",
            "HEAD",
            |_, s| {
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                    SMUGGLED.len()
                )
                .into_bytes();
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b""),
        ),
        c(
            "longer_than_content_length",
            "GET",
            |_, s| {
                let mut out = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b"hello"),
        ),
        c(
            "bytes_after_last_chunk",
            "GET",
            |_, s| {
                let mut out =
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                        .to_vec();
                out.extend_from_slice(SMUGGLED);
                w(s, &out)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b"hello"),
        ),
        // The same, with the extra bytes a moment after the answer (once the exchange looks
        // complete).
        (c(
            "no_content_with_body_late",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 204 No Content\r\n\r\n")?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(204, b""),
        )),
        (c(
            "not_modified_with_body_late",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 304 Not Modified\r\n\r\n")?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(304, b""),
        )),
        (c(
            "head_answered_with_body_late",
            "HEAD",
            |_, s| {
                w(
                    s,
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
                        SMUGGLED.len()
                    )
                    .as_bytes(),
                )?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b""),
        )),
        (c(
            "longer_than_content_length_late",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b"hello"),
        )),
        (c(
            "bytes_after_last_chunk_late",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                )?;
                sleep(LATE / 2);
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Complete(200, b"hello"),
        )),
        // ----- cut short: the client sees a truncated response -----
        c(
            "shorter_than_content_length_then_close",
            "GET",
            |_, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")?;
                sleep(LATE / 2);
                Ok(Action::Close)
            },
            Truncated,
        ),
        c(
            "shorter_than_content_length_then_silence",
            "GET",
            |req, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")?;
                hang()(req, s)
            },
            Truncated,
        ),
        c(
            "stream_stops_mid_event_then_close",
            "GET",
            |_, s| {
                w(s, SSE_HEAD)?;
                write_chunk(s, b"data: {\"n\":1}\n\n")?;
                write_chunk(s, b"data: {\"n\":")?;
                sleep(LATE / 2);
                Ok(Action::Close)
            },
            Truncated,
        ),
        c(
            "stream_stops_mid_event_then_silence",
            "GET",
            |req, s| {
                w(s, SSE_HEAD)?;
                write_chunk(s, b"data: {\"n\":1}\n\n")?;
                write_chunk(s, b"data: {\"n\":")?;
                hang()(req, s)
            },
            Truncated,
        ),
        c(
            "stream_stops_mid_chunk",
            "GET",
            |_, s| {
                w(s, SSE_HEAD)?;
                w(s, b"64\r\ndata: {\"n\":1}")?;
                sleep(LATE / 2);
                Ok(Action::Close)
            },
            Truncated,
        ),
        c(
            "bad_chunk_size_mid_stream",
            "GET",
            |_, s| {
                w(s, SSE_HEAD)?;
                write_chunk(s, b"data: {\"n\":1}\n\n")?;
                sleep(LATE / 2);
                w(s, b"zz\r\n")?;
                w(s, SMUGGLED)?;
                Ok(Action::KeepAlive)
            },
            Truncated,
        ),
        // ----- silence and resets -----
        c(
            "accepted_never_answered",
            "GET",
            |req, s| hang()(req, s),
            Error(504, &["upstream_timeout"]),
        ),
        c(
            "half_a_head_then_silence",
            "GET",
            |req, s| {
                w(s, b"HTTP/1.1 200 OK\r\nContent-")?;
                hang()(req, s)
            },
            Error(504, &["upstream_timeout"]),
        ),
        c(
            "close_before_answering",
            "GET",
            |_, _| Ok(Action::Close),
            Error(502, UNAVAILABLE),
        ),
        c(
            "reset_before_answering",
            "GET",
            |_, _| Ok(Action::Reset),
            Error(502, UNAVAILABLE),
        ),
        c(
            "close_during_head",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-",
                )?;
                sleep(LATE / 2);
                Ok(Action::Close)
            },
            Error(502, BAD_GATEWAY),
        ),
        c(
            "reset_during_head",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-",
                )?;
                sleep(LATE / 2);
                Ok(Action::Reset)
            },
            Error(502, BAD_OR_UNAVAILABLE),
        ),
        c(
            "reset_during_body",
            "GET",
            |_, s| {
                w(
                    s,
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789",
                )?;
                sleep(LATE / 2);
                Ok(Action::Reset)
            },
            Truncated,
        ),
        c(
            "reset_during_stream",
            "GET",
            |_, s| {
                w(s, SSE_HEAD)?;
                write_chunk(s, b"data: {\"n\":1}\n\n")?;
                sleep(LATE / 2);
                Ok(Action::Reset)
            },
            Truncated,
        ),
    ]
}

fn gateway_for(addr: SocketAddr) -> Gateway {
    Gateway::start(
        &ConfigBuilder::new(addr)
            .upstream(&format!("ttfb_timeout_ms = {TTFB_TIMEOUT_MS}"))
            .upstream(&format!("read_timeout_ms = {READ_TIMEOUT_MS}"))
            .build(),
    )
}

/// Checks how the bad exchange ended for the client. Returns whether its connection is still
/// open (to send a follow-up on it).
fn check_end(c: &mut Client, case: &UpCase) -> Result<bool, String> {
    match case.end {
        End::Error(status, codes) => {
            let r = c
                .try_read_response_for(case.method)
                .map_err(|e| format!("no answer: {e}"))?;
            if !codes
                .iter()
                .any(|code| check_error(&r, status, code).is_ok())
            {
                return Err(format!(
                    "expected {status} with one of {codes:?}, got:\n{}",
                    r.summary()
                ));
            }
            if r.body_str().contains("smuggled") {
                return Err(format!(
                    "the upstream's bytes reached the client:\n{}",
                    r.summary()
                ));
            }
            no_more_bytes(c, r.connection_has("close"))
        }
        End::Complete(status, body) => {
            let r = c
                .try_read_response_for(case.method)
                .map_err(|e| format!("no answer: {e}"))?;
            if r.status != status || r.body != body {
                return Err(format!(
                    "expected {status} with body {:?}, got:\n{}",
                    String::from_utf8_lossy(body),
                    r.summary()
                ));
            }
            if r.header("x-smuggled").is_some() {
                return Err(format!(
                    "the smuggled response was relayed:\n{}",
                    r.summary()
                ));
            }
            no_more_bytes(c, r.connection_has("close"))
        }
        End::Truncated => {
            let (raw, end) = c.read_raw_to_end(Duration::from_secs(5));
            let text = String::from_utf8_lossy(&raw).into_owned();
            let Some((head, body)) = split_head(&raw) else {
                return Err(format!("no response head: {text:?}"));
            };
            if !head.starts_with("HTTP/1.1 200") {
                return Err(format!("expected a 200 head, got {text:?}"));
            }
            if end == Closed::StillOpen {
                return Err(format!("the connection stayed open after {text:?}"));
            }
            let lower = head.to_ascii_lowercase();
            let cl = lower
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            let complete = match cl {
                Some(n) => body.len() >= n,
                None if lower.contains("transfer-encoding: chunked") => {
                    matches!(dechunk(body), Ok((_, true)))
                }
                None => {
                    return Err(format!(
                        "a close-delimited answer cannot show truncation: {text:?}"
                    ))
                }
            };
            if complete {
                return Err(format!("the truncated response looks complete: {text:?}"));
            }
            if text.contains("smuggled") {
                return Err(format!(
                    "the upstream's bytes past the error reached the client: {text:?}"
                ));
            }
            Ok(false)
        }
    }
}

/// After an answer: a closing one must be followed by the close, a keep-alive one by silence.
/// Returns whether the connection is still open.
fn no_more_bytes(c: &mut Client, closing: bool) -> Result<bool, String> {
    let wait = if closing {
        Duration::from_secs(3)
    } else {
        LATE * 2
    };
    match c.wait_closed(wait) {
        Closed::Data(d) => Err(format!(
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(&d)
        )),
        Closed::StillOpen if closing => Err("`Connection: close` but still open".into()),
        Closed::StillOpen => Ok(true),
        Closed::Eof | Closed::Reset => Ok(false),
    }
}

/// A follow-up on `c`: the answer must be the upstream's echo of `path`, over an upstream
/// connection other than `bad_conn`.
fn follow_up(
    c: &mut Client,
    up_log: impl Fn() -> Vec<Request>,
    path: &str,
    bad_conn: Option<usize>,
) -> Result<(), String> {
    c.set_timeout(Duration::from_secs(5));
    c.try_send(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n"))
        .map_err(|e| format!("follow-up {path}: send: {e}"))?;
    let r = c
        .try_read_response()
        .map_err(|e| format!("follow-up {path}: {e}"))?;
    if r.status != 200 || r.header("x-smuggled").is_some() {
        return Err(format!(
            "follow-up {path}: expected the upstream's echo, got:\n{}",
            r.summary()
        ));
    }
    let echoed = r.echoed_path();
    if echoed.as_deref() != Some(path) {
        return Err(format!(
            "follow-up {path}: the answer belongs to another request:\n{}",
            r.summary()
        ));
    }
    let log = up_log();
    let Some(req) = log.iter().find(|r| r.path == path) else {
        return Err(format!(
            "follow-up {path}: the upstream has no record of it"
        ));
    };
    if bad_conn == Some(req.conn) {
        return Err(format!(
            "follow-up {path}: went over the misbehaving upstream connection {}, pooled in a bad state",
            req.conn
        ));
    }
    Ok(())
}

fn run(case: &UpCase) -> Result<(), String> {
    let bad = case.bad;
    let up = MockUpstream::start(move |req: &Request, s: &mut TcpStream| {
        if req.path.starts_with("/bad") {
            bad(req, s)
        } else {
            echo()(req, s)
        }
    });
    let gw = gateway_for(up.addr());
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    c.send(format!("{} /bad HTTP/1.1\r\nHost: gw\r\n\r\n", case.method));
    let open = check_end(&mut c, case)?;
    // Bytes the upstream sends late land now.
    sleep(LATE);
    nothing_bad_pooled(&gw, &up, &mut c, open)
}

/// The misbehaving upstream connection is not reused: follow-ups (from a new client, and on the
/// same client connection if it is still open) get the upstream's echo over a fresh connection.
fn nothing_bad_pooled(
    gw: &Gateway,
    up: &MockUpstream,
    c: &mut Client,
    open: bool,
) -> Result<(), String> {
    let bad_conn = up
        .requests()
        .iter()
        .find(|r| r.path == "/bad")
        .map(|r| r.conn);
    if bad_conn.is_none() {
        return Err("the upstream never got the request".into());
    }
    let mut fresh = Client::connect(gw.addr());
    follow_up(&mut fresh, || up.requests(), "/ok-new-client", bad_conn)?;
    if up.connections_accepted() < 2 {
        return Err(format!(
            "the follow-up did not open a fresh upstream connection ({} accepted)",
            up.connections_accepted()
        ));
    }
    if open {
        follow_up(c, || up.requests(), "/ok-same-client", bad_conn)?;
    }
    if up.unparsable_requests() != 0 {
        return Err("the upstream got an unparsable request".into());
    }
    Ok(())
}

/// Cases run this many at a time (each has its own gateway and upstream).
const PARALLEL: usize = 4;

/// Every upstream misbehaviour of issue 9, each on its own gateway and upstream.
#[test]
fn every_upstream_misbehaviour_ends_cleanly_and_nothing_bad_is_pooled() {
    let cases = cases();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
    }
    let mut failures = Vec::new();
    for batch in cases.chunks(PARALLEL) {
        let results: Vec<(&str, Result<(), String>)> = std::thread::scope(|scope| {
            let handles: Vec<_> = batch
                .iter()
                .map(|case| scope.spawn(move || (case.name, run(case))))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or(("?", Err("the case panicked".into()))))
                .collect()
        });
        for (name, r) in results {
            if let Err(e) = r {
                failures.push(format!("{name}: {e}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    eprintln!("{} upstream cases passed", cases.len());
}

// ----- a reset right after accept (the plain-TCP "handshake") -----

/// A listener whose first connection is reset as soon as it is accepted (SO_LINGER 0, close),
/// before a byte is read; later connections get a minimal keep-alive HTTP/1.1 server that
/// answers each GET with `{"path":...}`.
struct ResetFirst {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    served: Arc<Mutex<Vec<(usize, String)>>>,
    stop: Arc<AtomicBool>,
}

impl ResetFirst {
    fn start() -> ResetFirst {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let served: Arc<Mutex<Vec<(usize, String)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (acc, srv, stp) = (accepted.clone(), served.clone(), stop.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(stream) = stream else { continue };
                let n = acc.fetch_add(1, Ordering::SeqCst);
                if n == 0 {
                    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
                    drop(stream);
                    continue;
                }
                let srv = srv.clone();
                std::thread::spawn(move || serve_paths(stream, n, &srv));
            }
        });
        ResetFirst {
            addr,
            accepted,
            served,
            stop,
        }
    }
}

impl Drop for ResetFirst {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

fn serve_paths(mut s: TcpStream, conn: usize, served: &Mutex<Vec<(usize, String)>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map_or(0, |i| i + 4);
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let path = head.split(' ').nth(1).unwrap_or_default().to_owned();
        served
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((conn, path.clone()));
        let body = format!("{{\"path\":\"{path}\"}}");
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if s.write_all(resp.as_bytes()).is_err() {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// The upstream resets the connection right after accepting it: 502, and the next request
/// goes over a fresh connection and succeeds.
#[test]
fn a_reset_right_after_accept_is_502_and_the_next_request_succeeds() {
    let up = ResetFirst::start();
    let gw = gateway_for(up.addr);
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    c.send("GET /bad HTTP/1.1\r\nHost: gw\r\n\r\n");
    let r = c.read_response();
    if let Err(e) = check_error(&r, 502, "upstream_unavailable") {
        panic!("{e}");
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    let mut c2 = Client::connect(gw.addr());
    let r = c2.get("/ok");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json()["path"], "/ok");
    let served = up.served.lock().unwrap_or_else(|p| p.into_inner()).clone();
    assert_eq!(served, vec![(1, "/ok".to_owned())]);
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
}
