//! Ill-framed requests: each is answered `400` with the JSON error shape, the connection is
//! closed, and the upstream never receives a complete request.

use std::time::Duration;

use shardgate_tests::{
    check_error, echo, sleep, Client, ConfigBuilder, Gateway, MockUpstream, Response,
};

/// Sends `raw` on a fresh connection; expects `400 code`, then the connection closed; then proves
/// the gateway still serves, and that the upstream got nothing but that good request.
fn rejected(raw: &[u8], code: &str) {
    rejected_as(raw, &[(400, code)]);
}

/// [`rejected`] accepting any of several `(status, code)` answers.
fn rejected_as(raw: &[u8], answers: &[(u16, &str)]) {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    // The gateway may close before reading all of it; a failed write is fine.
    let _ = c.try_send(raw);
    let resp: Response = match c.try_read_response() {
        Ok(r) => r,
        Err(e) => panic!(
            "no response to {:?}: {e}\nupstream got: {:?}",
            String::from_utf8_lossy(raw),
            up.requests()
        ),
    };
    let checks: Vec<String> = answers
        .iter()
        .filter_map(|(status, code)| check_error(&resp, *status, code).err())
        .collect();
    if checks.len() == answers.len() {
        panic!(
            "request {:?}:\n{}",
            String::from_utf8_lossy(raw),
            checks.join("\n")
        );
    }
    assert!(
        resp.connection_has("close"),
        "a rejected request's answer must carry Connection: close: {}",
        resp.summary()
    );
    c.assert_closed(Duration::from_secs(3));

    let mut ok = Client::connect(gw.addr());
    let r = ok.get("/ok");
    assert_eq!(r.status, 200, "{}", r.summary());
    // Anything forwarded for the bad request would have arrived by now; allow a moment anyway.
    sleep(Duration::from_millis(50));
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/ok".to_owned()],
        "the upstream received a complete bad request"
    );
}

macro_rules! cases {
    ($code:literal: $($name:ident => $raw:expr,)+) => {
        $(
            #[test]
            fn $name() {
                rejected($raw.as_bytes(), $code);
            }
        )+
    };
}

cases! { "bad_framing":
    content_length_and_transfer_encoding =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    transfer_encoding_and_content_length =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    two_equal_content_lengths =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    two_different_content_lengths =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    content_length_plus_sign =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: +3\r\n\r\nabc",
    content_length_list =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 1,2\r\n\r\nab",
    content_length_negative =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: -1\r\n\r\nabc",
    content_length_hex =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 0x10\r\n\r\n0123456789abcdef",
    content_length_empty =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: \r\n\r\nabc",
    transfer_encoding_gzip =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    transfer_encoding_chunked_twice =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    transfer_encoding_identity =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: identity\r\n\r\nhello",
    transfer_encoding_gzip_chunked =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    transfer_encoding_in_http10 =>
        "POST /bad HTTP/1.0\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
}

cases! { "bad_request":
    obs_fold_header =>
        "GET /bad HTTP/1.1\r\nHost: test\r\nX-Folded: first\r\n second\r\n\r\n",
    nul_in_header_value =>
        "GET /bad HTTP/1.1\r\nHost: test\r\nX-Nul: a\0b\r\n\r\n",
    bare_cr_in_header_value =>
        "GET /bad HTTP/1.1\r\nHost: test\r\nX-Cr: a\rb\r\n\r\n",
    space_before_colon =>
        "GET /bad HTTP/1.1\r\nHost: test\r\nX-Space : a\r\n\r\n",
    garbage_request_line =>
        "GARBAGE\r\nHost: test\r\n\r\n",
}

cases! { "bad_chunk":
    chunk_size_empty =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n\r\nhello\r\n0\r\n\r\n",
    chunk_size_not_hex =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    chunk_size_only_extension =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n;ext=1\r\nhello\r\n0\r\n\r\n",
    chunk_size_bare_lf =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
    chunk_data_not_followed_by_crlf =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    chunk_size_too_many_digits =>
        "POST /bad HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
}

/// A Content-Length past u64 (hyper CVE-2021-32715 wrapped it to 5): refused as ill-framed or as
/// too large, never read as a small length.
#[test]
fn content_length_overflow() {
    rejected_as(
        b"POST /bad HTTP/1.1\r\nHost: test\r\nContent-Length: 18446744073709551621\r\n\r\nabcde",
        &[(400, "bad_framing"), (413, "body_too_large")],
    );
}
