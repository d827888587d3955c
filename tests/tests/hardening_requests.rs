//! Hardening, request side (issue 9, "Bad input"): every framing trick, smuggling disguise and
//! malformed head in one table, each with its documented answer (`docs/security.md`), and after
//! each a canary request from another tenant through the same upstream pool that must reach the
//! upstream exactly as sent. Then local replies (401, 403, 413, 429) given while a body is unread:
//! the body (itself a valid request) must never be taken as the next request.
//!
//! One gateway (one shard, so one upstream pool) serves the whole table: whatever a case left in
//! a pooled upstream connection would poison the canaries that follow. At the end the upstream's
//! whole log must be exactly what the table expects, in order.

use std::time::Duration;

use shardgate_tests::{
    check_error, echo, sleep, Client, Closed, ConfigBuilder, Gateway, MockUpstream, Request,
    Response,
};

const ATTACKER_KEY: &str = "sk-attacker-key";
const CANARY_KEY: &str = "sk-canary-key";
/// Written as `{A}` in the table's raw requests: the attacker tenant's key.
const AUTH_LINE: &str = "Authorization: Bearer sk-attacker-key\r\n";

const HEADER_BYTES_MAX: usize = 4096;
const BODY_BYTES_MAX: u64 = 100_000;

/// One answer the client must get, in order.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// The request went upstream: the mock's echo (200).
    Upstream,
    /// shardgate's own JSON error.
    Refused(u16, &'static str),
}

/// A request the upstream must receive: method, path, body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fwd {
    method: String,
    path: String,
    body: Vec<u8>,
}

fn fwd(method: &str, path: &str, body: &str) -> Fwd {
    Fwd {
        method: method.to_owned(),
        path: path.to_owned(),
        body: body.as_bytes().to_vec(),
    }
}

#[derive(Debug, Clone)]
struct Case {
    name: &'static str,
    raw: Vec<u8>,
    answers: Vec<Answer>,
    /// The gateway closes the connection after the last answer.
    closes: bool,
    /// What the upstream receives for this case, in order.
    forwarded: Vec<Fwd>,
    /// The client half-closes (FIN) after sending.
    half_close: bool,
    /// The gateway may have started streaming the request upstream before refusing it (or the
    /// client left): the upstream may then see one incomplete request, on a connection the
    /// gateway closes.
    may_cut_upstream: bool,
}

/// `{A}` → the attacker's `Authorization` line.
fn raw(s: &str) -> Vec<u8> {
    s.replace("{A}", AUTH_LINE).into_bytes()
}

/// Refused with `status code`, connection closed, nothing forwarded.
fn refused(name: &'static str, raw_req: &str, status: u16, code: &'static str) -> Case {
    refused_bytes(name, raw(raw_req), status, code)
}

fn refused_bytes(name: &'static str, raw_req: Vec<u8>, status: u16, code: &'static str) -> Case {
    Case {
        name,
        raw: raw_req,
        answers: vec![Answer::Refused(status, code)],
        closes: true,
        forwarded: Vec::new(),
        half_close: false,
        may_cut_upstream: false,
    }
}

/// 400 `bad_framing`.
fn framing(name: &'static str, raw_req: &str) -> Case {
    refused(name, raw_req, 400, "bad_framing")
}

/// 400 `bad_request`.
fn bad(name: &'static str, raw_req: &str) -> Case {
    refused(name, raw_req, 400, "bad_request")
}

/// 400 `bad_chunk`: the head was fine, so the body may have started upstream.
fn bad_chunk(name: &'static str, raw_req: &str) -> Case {
    Case {
        may_cut_upstream: true,
        ..refused(name, raw_req, 400, "bad_chunk")
    }
}

/// The client sends part of a body and half-closes: no answer, the connection closes, and the
/// upstream may see the request cut short (on a connection the gateway then closes).
fn client_leaves_mid_body(name: &'static str, raw_req: &str) -> Case {
    Case {
        name,
        raw: raw(raw_req),
        answers: Vec::new(),
        closes: true,
        forwarded: Vec::new(),
        half_close: true,
        may_cut_upstream: true,
    }
}

/// Accepted (a documented normalisation): one request forwarded, answered, connection open.
fn normalised(name: &'static str, raw_req: &str, forwarded: Fwd) -> Case {
    normalised_bytes(name, raw(raw_req), forwarded)
}

fn normalised_bytes(name: &'static str, raw_req: Vec<u8>, forwarded: Fwd) -> Case {
    Case {
        name,
        raw: raw_req,
        answers: vec![Answer::Upstream],
        closes: false,
        forwarded: vec![forwarded],
        half_close: false,
        may_cut_upstream: false,
    }
}

/// A POST to `/n` with `te` as the whole Transfer-Encoding line and a chunked "hello".
fn post_te(te_line: &str) -> String {
    format!("POST /n HTTP/1.1\r\nHost: gw\r\n{{A}}{te_line}\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
}

/// A POST to `/n` with `cl` as the whole Content-Length line(s) and a 5-byte body.
fn post_cl(cl_lines: &str) -> String {
    format!("POST /n HTTP/1.1\r\nHost: gw\r\n{{A}}{cl_lines}\r\n\r\nhello")
}

/// A chunked POST to `/c` whose body is `body` (chunk lines and all).
fn post_chunked(body: &str) -> String {
    format!("POST /c HTTP/1.1\r\nHost: gw\r\n{{A}}Transfer-Encoding: chunked\r\n\r\n{body}")
}

/// A GET to `/h` with the extra header lines `lines`.
fn get_with(lines: &str) -> String {
    format!("GET /h HTTP/1.1\r\nHost: gw\r\n{{A}}{lines}\r\n")
}

/// A GET with `host_line` instead of the Host line.
fn get_host(host_line: &str) -> String {
    format!("GET /h HTTP/1.1\r\n{host_line}{{A}}\r\n")
}

/// A GET of `target`.
fn get_target(target: &str) -> String {
    format!("GET {target} HTTP/1.1\r\nHost: gw\r\n{{A}}\r\n")
}

fn table() -> Vec<Case> {
    let mut t = vec![
        // ----- Transfer-Encoding disguises -----
        framing("te_chunked_twice_in_one_value", &post_te("Transfer-Encoding: chunked, chunked")),
        framing("te_leading_comma", &post_te("Transfer-Encoding: , chunked")),
        framing("te_trailing_comma", &post_te("Transfer-Encoding: chunked,")),
        framing("te_gzip", "POST /n HTTP/1.1\r\nHost: gw\r\n{A}Transfer-Encoding: gzip\r\n\r\nhello"),
        framing("te_gzip_then_chunked", &post_te("Transfer-Encoding: gzip, chunked")),
        framing("te_chunked_then_gzip", &post_te("Transfer-Encoding: chunked, gzip")),
        framing("te_identity", "POST /n HTTP/1.1\r\nHost: gw\r\n{A}Transfer-Encoding: identity\r\n\r\nhello"),
        framing("te_misspelt", &post_te("Transfer-Encoding: chunk")),
        framing("te_with_parameter", &post_te("Transfer-Encoding: chunked;q=1")),
        framing("te_quoted", &post_te("Transfer-Encoding: \"chunked\"")),
        framing(
            "te_split_gzip_then_chunked",
            &post_te("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked"),
        ),
        framing(
            "te_split_chunked_twice",
            &post_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked"),
        ),
        framing(
            "te_split_chunked_then_empty",
            &post_te("Transfer-Encoding: chunked\r\nTransfer-Encoding: "),
        ),
        framing("te_empty", "POST /n HTTP/1.1\r\nHost: gw\r\n{A}Transfer-Encoding: \r\n\r\nhello"),
        framing(
            "te_in_http10",
            "POST /n HTTP/1.0\r\nHost: gw\r\n{A}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        ),
        framing(
            "te_and_cl",
            &post_te("Transfer-Encoding: chunked\r\nContent-Length: 5"),
        ),
        framing(
            "cl_and_te",
            &post_te("Content-Length: 5\r\nTransfer-Encoding: chunked"),
        ),
        framing(
            "cl_zero_and_te",
            &post_te("Content-Length: 0\r\nTransfer-Encoding: chunked"),
        ),
        framing(
            "te_underscore_name_with_cl",
            &post_te("Transfer_Encoding: chunked\r\nContent-Length: 15"),
        ),
        framing("te_underscore_name", &post_te("Transfer_Encoding: chunked")),
        bad("te_space_before_colon", &post_te("Transfer-Encoding : chunked")),
        bad("te_tab_before_colon", &post_te("Transfer-Encoding\t: chunked")),
        bad("te_obs_fold", &post_te("Transfer-Encoding:\r\n chunked")),
        bad("te_vertical_tab_before_value", &post_te("Transfer-Encoding: \x0bchunked")),
        bad("te_vertical_tab_after_value", &post_te("Transfer-Encoding: chunked\x0b")),
        bad("te_form_feed_after_value", &post_te("Transfer-Encoding: chunked\x0c")),
        bad("te_nul_after_value", &post_te("Transfer-Encoding: chunked\0")),
        // Optional whitespace around the value, and case, are allowed (RFC 9110 §5.5, §7.8):
        // the body is re-chunked with canonical framing.
        normalised("te_tab_before_value", &post_te("Transfer-Encoding:\tchunked"), fwd("POST", "/n", "hello")),
        normalised("te_no_space_before_value", &post_te("Transfer-Encoding:chunked"), fwd("POST", "/n", "hello")),
        normalised("te_spaces_and_tab_after_value", &post_te("Transfer-Encoding: chunked \t "), fwd("POST", "/n", "hello")),
        normalised("te_upper_case", &post_te("TRANSFER-ENCODING: CHUNKED"), fwd("POST", "/n", "hello")),
        // ----- Content-Length -----
        framing("cl_plus_sign", &post_cl("Content-Length: +5")),
        framing("cl_minus_one", &post_cl("Content-Length: -1")),
        framing("cl_hex", &post_cl("Content-Length: 0x5")),
        framing("cl_empty", &post_cl("Content-Length: ")),
        framing("cl_space_inside", &post_cl("Content-Length: 1 0")),
        framing("cl_list_equal", &post_cl("Content-Length: 5, 5")),
        framing("cl_decimal_point", &post_cl("Content-Length: 5.0")),
        framing("cl_exponent", &post_cl("Content-Length: 5e0")),
        framing("cl_past_u64", &post_cl("Content-Length: 184467440737095516165")),
        framing("cl_19_digits", &post_cl("Content-Length: 1000000000000000005")),
        framing("cl_repeated_equal", &post_cl("Content-Length: 5\r\nContent-Length: 5")),
        framing("cl_repeated_different", &post_cl("Content-Length: 5\r\nContent-Length: 6")),
        framing("cl_underscore_name", &post_cl("Content_Length: 5")),
        framing(
            "cl_underscore_name_beside_cl",
            &post_cl("Content-Length: 5\r\nContent_Length: 0"),
        ),
        refused(
            "cl_18_digits_over_limit",
            &post_cl("Content-Length: 999999999999999999"),
            413,
            "body_too_large",
        ),
        normalised("cl_leading_zeros", &post_cl("Content-Length: 0005"), fwd("POST", "/n", "hello")),
        normalised("cl_trailing_whitespace", &post_cl("Content-Length: 5 \t"), fwd("POST", "/n", "hello")),
        client_leaves_mid_body("cl_body_cut_short_then_close", &post_cl("Content-Length: 50")),
        // ----- chunked bodies -----
        bad_chunk("chunk_size_empty", &post_chunked("\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_extension_only", &post_chunked(";ext=1\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_extension_with_cr", &post_chunked("5;a\rb\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_extension_with_lf", &post_chunked("5;a\nb\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_bare_lf", &post_chunked("5\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_0x", &post_chunked("0x5\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_leading_space", &post_chunked(" 5\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_16_hex_digits", &post_chunked("1000000000000005\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_size_not_hex", &post_chunked("g\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("chunk_data_without_crlf", &post_chunked("5\r\nhelloXX0\r\n\r\n")),
        bad_chunk("chunk_longer_than_size", &post_chunked("3\r\nhello\r\n0\r\n\r\n")),
        bad_chunk("trailer_without_colon", &post_chunked("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n")),
        bad_chunk(
            "trailer_space_before_colon",
            &post_chunked("5\r\nhello\r\n0\r\nContent-Length : 5\r\n\r\n"),
        ),
        bad_chunk("trailer_obs_fold", &post_chunked("5\r\nhello\r\n0\r\nX-T: a\r\n b\r\n\r\n")),
        bad_chunk("trailer_nul", &post_chunked("5\r\nhello\r\n0\r\nX-T: a\0b\r\n\r\n")),
        normalised(
            "chunk_extension_dropped",
            &post_chunked("5;name=\"v\"\r\nhello\r\n0;last\r\n\r\n"),
            fwd("POST", "/c", "hello"),
        ),
        normalised(
            "chunk_size_leading_zeros",
            &post_chunked("0005\r\nhello\r\n000\r\n\r\n"),
            fwd("POST", "/c", "hello"),
        ),
        // Trailers are parsed and dropped: framing and routing fields in them never reach the
        // upstream (checked: the upstream sees no trailer at all).
        normalised(
            "trailer_content_length_dropped",
            &post_chunked("5\r\nhello\r\n0\r\nContent-Length: 50\r\n\r\n"),
            fwd("POST", "/c", "hello"),
        ),
        normalised(
            "trailer_transfer_encoding_dropped",
            &post_chunked("5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            fwd("POST", "/c", "hello"),
        ),
        normalised(
            "trailer_host_dropped",
            &post_chunked("5\r\nhello\r\n0\r\nHost: evil.example\r\n\r\n"),
            fwd("POST", "/c", "hello"),
        ),
        client_leaves_mid_body("chunk_last_missing_then_close", &post_chunked("5\r\nhello\r\n")),
        Case {
            may_cut_upstream: true,
            ..refused(
                "chunk_last_missing_then_silence",
                &post_chunked("5\r\nhello\r\n"),
                408,
                "request_timeout",
            )
        },
        // ----- bytes after a request -----
        // A GET's undeclared body is the next request: parsed as such, refused when invalid,
        // never forwarded as part of the GET.
        Case {
            answers: vec![Answer::Upstream, Answer::Refused(400, "bad_request")],
            closes: true,
            forwarded: vec![fwd("GET", "/g1", "")],
            ..normalised(
                "get_with_undeclared_garbage_body",
                "GET /g1 HTTP/1.1\r\nHost: gw\r\n{A}\r\nthis is the body of a GET\r\n\r\n",
                fwd("GET", "/g1", ""),
            )
        },
        Case {
            answers: vec![Answer::Upstream, Answer::Upstream],
            forwarded: vec![fwd("GET", "/g2", ""), fwd("GET", "/g3", "")],
            ..normalised(
                "get_with_undeclared_request_body",
                "GET /g2 HTTP/1.1\r\nHost: gw\r\n{A}\r\nGET /g3 HTTP/1.1\r\nHost: gw\r\n{A}\r\n",
                fwd("GET", "/g2", ""),
            )
        },
        Case {
            answers: vec![Answer::Upstream, Answer::Refused(400, "bad_request")],
            closes: true,
            forwarded: vec![fwd("POST", "/g5", "")],
            ..normalised(
                "post_without_framing_with_body",
                "POST /g5 HTTP/1.1\r\nHost: gw\r\n{A}\r\n{\"model\":\"m\"}\r\n\r\n",
                fwd("POST", "/g5", ""),
            )
        },
        normalised(
            "get_with_declared_body",
            "GET /g4 HTTP/1.1\r\nHost: gw\r\n{A}Content-Length: 5\r\n\r\nhello",
            fwd("GET", "/g4", "hello"),
        ),
        Case {
            answers: vec![Answer::Upstream, Answer::Refused(400, "bad_framing")],
            closes: true,
            forwarded: vec![fwd("GET", "/p1", "")],
            ..normalised(
                "invalid_request_pipelined_after_get",
                "GET /p1 HTTP/1.1\r\nHost: gw\r\n{A}\r\n\
                 POST /p2 HTTP/1.1\r\nHost: gw\r\n{A}Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                fwd("GET", "/p1", ""),
            )
        },
        Case {
            answers: vec![Answer::Upstream, Answer::Refused(400, "bad_framing")],
            closes: true,
            forwarded: vec![fwd("POST", "/p3", "hello")],
            ..normalised(
                "invalid_request_pipelined_after_post",
                "POST /p3 HTTP/1.1\r\nHost: gw\r\n{A}Content-Length: 5\r\n\r\nhello\
                 POST /p4 HTTP/1.1\r\nHost: gw\r\n{A}Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
                fwd("POST", "/p3", "hello"),
            )
        },
        Case {
            answers: vec![Answer::Upstream, Answer::Refused(400, "bad_request")],
            closes: true,
            forwarded: vec![fwd("POST", "/p5", "hello")],
            ..normalised(
                "garbage_pipelined_after_chunked",
                "POST /p5 HTTP/1.1\r\nHost: gw\r\n{A}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n\
                 GARBAGE\r\n\r\n",
                fwd("POST", "/p5", "hello"),
            )
        },
        // ----- header syntax -----
        bad("obs_fold", &get_with("X-A: a\r\n b\r\n")),
        bad("obs_fold_tab", &get_with("X-A: a\r\n\tb\r\n")),
        bad("space_before_colon", &get_with("X-A : a\r\n")),
        bad("tab_before_colon", &get_with("X-A\t: a\r\n")),
        bad("space_inside_name", &get_with("X A: a\r\n")),
        bad("empty_header_name", &get_with(": a\r\n")),
        bad("header_without_colon", &get_with("X-A\r\n")),
        bad("nul_in_value", &get_with("X-A: a\0b\r\n")),
        bad("cr_in_value", &get_with("X-A: a\rb\r\n")),
        bad("del_in_value", &get_with("X-A: a\x7fb\r\n")),
        bad("vertical_tab_in_value", &get_with("X-A: a\x0bb\r\n")),
        bad("escape_in_value", &get_with("X-A: a\x1bb\r\n")),
        bad("missing_host", "GET /h HTTP/1.1\r\n{A}\r\n"),
        bad("duplicate_host_equal", &get_host("Host: gw\r\nHost: gw\r\n")),
        bad("duplicate_host_different", &get_host("Host: gw\r\nHost: evil.example\r\n")),
        bad("host_with_slash", &get_host("Host: gw/evil\r\n")),
        bad("host_with_question_mark", &get_host("Host: gw?evil\r\n")),
        bad("host_with_hash", &get_host("Host: gw#evil\r\n")),
        bad("host_with_at", &get_host("Host: user@evil.example\r\n")),
        bad("host_with_nul", &get_host("Host: gw\0evil\r\n")),
        bad("host_with_space", &get_host("Host: gw evil\r\n")),
        bad("host_with_backslash", &get_host("Host: gw\\evil\r\n")),
        Case {
            // HTTP/1.0 needs no Host; without keep-alive the connection closes after.
            closes: true,
            ..normalised(
                "missing_host_http10",
                "GET /h10 HTTP/1.0\r\n{A}\r\n",
                fwd("GET", "/h10", ""),
            )
        },
        // Hop-by-hop fields are dropped and framing is always rewritten by us, so naming a
        // framing field in `Connection`, or asking for an upgrade, changes nothing upstream.
        normalised(
            "connection_lists_content_length",
            "POST /k1 HTTP/1.1\r\nHost: gw\r\n{A}Connection: Content-Length\r\nContent-Length: 5\r\n\r\nhello",
            fwd("POST", "/k1", "hello"),
        ),
        normalised(
            "connection_lists_transfer_encoding",
            "POST /k2 HTTP/1.1\r\nHost: gw\r\n{A}Connection: Transfer-Encoding\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
            fwd("POST", "/k2", "hello"),
        ),
        normalised(
            "upgrade_h2c_dropped",
            "GET /k3 HTTP/1.1\r\nHost: gw\r\n{A}Connection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n",
            fwd("GET", "/k3", ""),
        ),
        // Bare LF line endings are accepted (RFC 9112 §2.2) and the head is rewritten with CRLF.
        normalised_bytes(
            "bare_lf_line_endings",
            b"GET /lf HTTP/1.1\nHost: gw\nAuthorization: Bearer sk-attacker-key\n\n".to_vec(),
            fwd("GET", "/lf", ""),
        ),
        // ----- request targets -----
        bad("absolute_form_other_host", &get_target("http://evil.example/h")),
        bad("absolute_form_same_host", &get_target("http://gw/h")),
        bad("authority_form", &get_target("evil.example:80")),
        bad("asterisk_form_get", &get_target("*")),
        bad("dot_dot_segment", &get_target("/v1/../admin")),
        bad("dot_dot_at_end", &get_target("/v1/..")),
        bad("dot_segment", &get_target("/v1/./admin")),
        bad("pct_2e2e_segment", &get_target("/v1/%2e%2e/admin")),
        bad("pct_2E2e_segment", &get_target("/v1/%2E%2e/admin")),
        bad("dot_pct_2e_segment", &get_target("/v1/.%2e/admin")),
        bad("pct_2e_dot_segment", &get_target("/v1/%2e./admin")),
        bad("fragment_in_target", &get_target("/h#frag")),
        normalised(
            "dots_in_query_kept",
            &get_target("/q?next=/../admin"),
            fwd("GET", "/q?next=/../admin", ""),
        ),
        normalised(
            "dots_inside_segments_kept",
            &get_target("/v1/a..b/.c/..d"),
            fwd("GET", "/v1/a..b/.c/..d", ""),
        ),
        refused(
            "connect_method",
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n{A}\r\n",
            405,
            "method_not_allowed",
        ),
        bad("http_1_2", "GET /h HTTP/1.2\r\nHost: gw\r\n{A}\r\n"),
        bad("http_2_0", "GET /h HTTP/2.0\r\nHost: gw\r\n{A}\r\n"),
        bad("garbage_request_line", "GARBAGE\r\nHost: gw\r\n\r\n"),
    ];
    let mut obs_text = raw(&post_te("Transfer-Encoding: chunked"));
    let at = obs_text
        .windows(7)
        .position(|w| w == b"chunked")
        .map_or(0, |i| i + 7);
    obs_text.insert(at, 0xff);
    t.push(refused_bytes(
        "te_obs_text_after_value",
        obs_text,
        400,
        "bad_framing",
    ));
    // ----- sizes -----
    let long_target = format!("/{}", "a".repeat(HEADER_BYTES_MAX + 100));
    t.push(refused_bytes(
        "oversized_request_line",
        raw(&get_target(&long_target)),
        414,
        "uri_too_long",
    ));
    t.push(refused_bytes(
        "oversized_header",
        raw(&get_with(&format!(
            "X-Big: {}\r\n",
            "b".repeat(HEADER_BYTES_MAX + 100)
        ))),
        431,
        "header_too_large",
    ));
    let many: String = (0..110).map(|i| format!("X-{i}: v\r\n")).collect();
    t.push(refused_bytes(
        "too_many_headers",
        raw(&get_with(&many)),
        431,
        "too_many_headers",
    ));
    t
}

fn tenant(name: &str, key: &str) -> String {
    format!("name = \"{name}\"\nkeys = [\"{key}\"]")
}

/// What the upstream got, as a [`Fwd`].
fn got(r: &Request) -> Fwd {
    Fwd {
        method: r.method.clone(),
        path: r.path.clone(),
        body: r.body.clone(),
    }
}

fn show(f: &Fwd) -> String {
    format!(
        "{} {} {:?}",
        f.method,
        f.path,
        String::from_utf8_lossy(&f.body)
    )
}

/// Runs one case; `Err` says what went wrong.
fn run_case(gw: &Gateway, up: &MockUpstream, case: &Case) -> Result<(), String> {
    let before = up.requests().len();
    let incomplete_before = up.incomplete_requests();
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    // The gateway may close before reading all of it; a failed write is fine.
    let _ = c.try_send(&case.raw);
    if case.half_close {
        c.shutdown_write();
    }
    let mut upstream_answers = 0;
    for (i, want) in case.answers.iter().enumerate() {
        let r: Response = c
            .try_read_response()
            .map_err(|e| format!("answer {i}: none ({e})"))?;
        match *want {
            Answer::Upstream => {
                if r.status != 200 {
                    return Err(format!(
                        "answer {i}: expected the upstream's 200, got:\n{}",
                        r.summary()
                    ));
                }
                let path = r.echoed_path();
                let want_path = case.forwarded.get(upstream_answers).map(|f| f.path.clone());
                if path != want_path {
                    return Err(format!(
                        "answer {i}: the upstream echoed {path:?}, expected {want_path:?}"
                    ));
                }
                upstream_answers += 1;
            }
            Answer::Refused(status, code) => {
                check_error(&r, status, code).map_err(|e| format!("answer {i}: {e}"))?;
                if case.closes && i + 1 == case.answers.len() && !r.connection_has("close") {
                    return Err(format!(
                        "answer {i}: no `Connection: close` on a closing answer:\n{}",
                        r.summary()
                    ));
                }
            }
        }
    }
    let end = c.wait_closed(if case.closes {
        Duration::from_secs(3)
    } else {
        Duration::from_millis(150)
    });
    match (&end, case.closes) {
        (Closed::Data(d), _) => {
            return Err(format!(
                "unexpected bytes after the expected answers: {:?}",
                String::from_utf8_lossy(d)
            ))
        }
        (Closed::StillOpen, true) => return Err("the connection was not closed".into()),
        (Closed::Eof | Closed::Reset, false) => {
            return Err("the connection was closed, expected it kept open".into())
        }
        _ => {}
    }
    drop(c);

    // What reached the upstream for this case.
    let want = case.forwarded.len();
    up.wait_requests(before + want, Duration::from_secs(3));
    // Anything smuggled would arrive right behind; give it a moment.
    sleep(Duration::from_millis(30));
    let reqs = up.requests();
    let new: Vec<Fwd> = reqs[before..].iter().map(got).collect();
    if new != case.forwarded {
        return Err(format!(
            "the upstream received [{}], expected [{}]",
            new.iter().map(show).collect::<Vec<_>>().join(", "),
            case.forwarded
                .iter()
                .map(show)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for r in &reqs[before..] {
        forwarded_head_is_clean(r)?;
    }
    if up.unparsable_requests() != 0 {
        return Err("the upstream received an unparsable request".into());
    }
    let incomplete = up.incomplete_requests() - incomplete_before;
    if incomplete > usize::from(case.may_cut_upstream) {
        return Err(format!(
            "the upstream saw {incomplete} incomplete request(s)"
        ));
    }
    Ok(())
}

/// What every forwarded request must look like whatever the client sent: one framing field at
/// most (ours), no hop-by-hop or `Connection`-listed field, no client key, no trailers.
fn forwarded_head_is_clean(r: &Request) -> Result<(), String> {
    const NEVER: [&str; 9] = [
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "http2-settings",
        "proxy-authorization",
        "authorization",
        "expect",
    ];
    let bad = |why: &str| Err(format!("{} {}: {why}: {:?}", r.method, r.path, r.headers));
    if let Some((k, _)) = r
        .headers
        .iter()
        .find(|(k, _)| NEVER.iter().any(|n| k.eq_ignore_ascii_case(n)))
    {
        return bad(&format!("`{k}` was forwarded"));
    }
    if r.headers
        .iter()
        .any(|(k, v)| k.contains('_') || v.contains("sk-"))
    {
        return bad("an underscored name or a key was forwarded");
    }
    let cl = r.headers_named("content-length").len();
    let te = r.headers_named("transfer-encoding");
    if cl + te.len() > 1 || te.iter().any(|v| *v != "chunked") {
        return bad("ambiguous framing was forwarded");
    }
    if r.headers_named("host").len() != 1 {
        return bad("not exactly one Host");
    }
    if !r.trailers.is_empty() {
        return bad(&format!("trailers reached the upstream: {:?}", r.trailers));
    }
    Ok(())
}

/// The canary: another tenant's request on another connection, through the same pool. The
/// upstream must receive exactly it, and nothing else.
fn canary(gw: &Gateway, up: &MockUpstream, n: usize) -> Result<(), String> {
    let before = up.requests().len();
    let path = format!("/canary/{n}");
    let body = format!("{{\"canary\":{n}}}");
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    c.send(format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY_KEY}\r\nX-Canary: {n}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c
        .try_read_response()
        .map_err(|e| format!("canary: no answer ({e})"))?;
    if r.status != 200 {
        return Err(format!("canary: expected 200, got:\n{}", r.summary()));
    }
    let echoed = serde_json::from_slice::<serde_json::Value>(&r.body)
        .map_err(|e| format!("canary: the answer is not the echo ({e}):\n{}", r.summary()))?;
    if echoed["path"] != path.as_str() || echoed["body"] != body.as_str() {
        return Err(format!(
            "canary: the answer echoes another request: {echoed}"
        ));
    }
    let reqs = up.requests();
    let new = &reqs[before..];
    let [one] = new else {
        return Err(format!(
            "canary: the upstream received {} requests: [{}]",
            new.len(),
            new.iter()
                .map(|r| show(&got(r)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    };
    if got(one) != fwd("POST", &path, &body)
        || one.header("x-canary") != Some(n.to_string().as_str())
        || one.chunked
        || !one.trailers.is_empty()
    {
        return Err(format!("canary: the upstream received {:?}", one.to_json()));
    }
    if one
        .headers
        .iter()
        .any(|(k, v)| v.contains("sk-") || k.eq_ignore_ascii_case("authorization"))
    {
        return Err(format!(
            "canary: a key reached the upstream: {:?}",
            one.headers
        ));
    }
    forwarded_head_is_clean(one).map_err(|e| format!("canary: {e}"))?;
    if up.unparsable_requests() != 0 {
        return Err("canary: the upstream received an unparsable request".into());
    }
    Ok(())
}

/// Every request-side case of issue 9, each followed by a canary through the same pool.
#[test]
fn every_bad_request_gets_its_answer_and_the_canary_passes_untouched() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .server(&format!("header_bytes_max = {HEADER_BYTES_MAX}"))
        .server(&format!("body_bytes_max = {BODY_BYTES_MAX}"))
        .server("body_timeout_ms = 800")
        .tenant(&tenant("attacker", ATTACKER_KEY))
        .tenant(&tenant("canary", CANARY_KEY))
        .build();
    let gw = Gateway::start(&cfg);
    let cases = table();
    let mut names = std::collections::HashSet::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
    }
    let mut failures = Vec::new();
    let mut expected_log: Vec<Fwd> = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        if let Err(e) = run_case(&gw, &up, case) {
            failures.push(format!("{}: {e}", case.name));
        }
        expected_log.extend(case.forwarded.iter().cloned());
        if let Err(e) = canary(&gw, &up, n) {
            failures.push(format!("{} (then the canary): {e}", case.name));
        }
        expected_log.push(fwd(
            "POST",
            &format!("/canary/{n}"),
            &format!("{{\"canary\":{n}}}"),
        ));
    }
    // Nothing arrived late, out of order or twice.
    sleep(Duration::from_millis(100));
    let log: Vec<Fwd> = up.requests().iter().map(got).collect();
    if log != expected_log {
        failures.push(format!(
            "the upstream's whole log differs from the table's: {} requests, expected {}",
            log.len(),
            expected_log.len()
        ));
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
    eprintln!(
        "{} request-side cases passed, each with its canary",
        cases.len()
    );
}

// ----- local replies while a body is unread -----

/// A request that would reach the upstream if it were ever parsed: the canary tenant's key, a
/// path the test watches for.
fn smuggled(path: &str, pad_to: usize) -> String {
    let mut s = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY_KEY}\r\nContent-Length: 0\r\n"
    );
    if s.len() + 4 < pad_to {
        let pad = pad_to - s.len() - "X-Pad: \r\n\r\n".len();
        s.push_str(&format!("X-Pad: {}\r\n", "p".repeat(pad)));
    }
    s.push_str("\r\n");
    s
}

/// When the body is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyTiming {
    /// In the same write as the head.
    WithHead,
    /// After the answer to the head has arrived (the client did not wait for `100 Continue`).
    AfterAnswer,
}

/// Sends `head` (ending in the empty line) and `body` on a fresh connection, expects one answer
/// `status code`; then either the connection closes without another byte, or (a local answer
/// after the body was read whole) it stays usable: a pipelined request is answered normally.
/// The upstream must never see `watch`.
#[allow(clippy::too_many_arguments)]
fn local_reply(
    gw: &Gateway,
    up: &MockUpstream,
    what: &str,
    head: &str,
    body: &[u8],
    timing: BodyTiming,
    status: u16,
    code: &str,
    watch: &str,
) {
    let before = up.requests().len();
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    let mut first = head.as_bytes().to_vec();
    if timing == BodyTiming::WithHead {
        first.extend_from_slice(body);
    }
    let _ = c.try_send(&first);
    let r = c
        .try_read_response()
        .unwrap_or_else(|e| panic!("{what}: no answer: {e}"));
    if let Err(e) = check_error(&r, status, code) {
        panic!("{what}: {e}");
    }
    if timing == BodyTiming::AfterAnswer {
        let _ = c.try_send(body);
    }
    if r.connection_has("close") {
        match c.wait_closed(Duration::from_secs(3)) {
            Closed::Eof | Closed::Reset => {}
            other => panic!("{what}: after a closing {status}, expected a close, got {other:?}"),
        }
    } else {
        // Kept open: the body must have been consumed, so the next request is just that.
        c.send(format!(
            "GET /after-{status} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY_KEY}\r\n\r\n"
        ));
        let next = c
            .try_read_response()
            .unwrap_or_else(|e| panic!("{what}: no answer to the request after the {status}: {e}"));
        assert_eq!(next.status, 200, "{what}: {}", next.summary());
        assert_eq!(next.json()["path"], format!("/after-{status}"), "{what}");
        match c.wait_closed(Duration::from_millis(150)) {
            Closed::StillOpen => {}
            other => panic!("{what}: after the follow-up, expected nothing, got {other:?}"),
        }
    }
    // Give a smuggled request time to arrive, then check it did not.
    sleep(Duration::from_millis(100));
    let reqs = up.requests();
    let paths: Vec<&str> = reqs[before..].iter().map(|r| r.path.as_str()).collect();
    assert!(
        !paths.iter().any(|p| p.starts_with(watch)),
        "{what}: the body was executed as a request: the upstream got {paths:?}"
    );
    assert!(
        paths.iter().all(|p| p.starts_with("/after-")),
        "{what}: the upstream got {paths:?}"
    );
    assert_eq!(up.unparsable_requests(), 0, "{what}");
    // And the canary still passes.
    if let Err(e) = canary(gw, up, 1000 + before) {
        panic!("{what}: {e}");
    }
}

const TIMINGS: [BodyTiming; 2] = [BodyTiming::WithHead, BodyTiming::AfterAnswer];

/// 401: the key is checked before the body is read; the unread body closes the connection.
#[test]
fn a_401_never_leaves_the_body_to_be_read_as_a_request() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("canary", CANARY_KEY))
        .build();
    let gw = Gateway::start(&cfg);
    let body = smuggled("/smuggled-401", 0);
    for timing in TIMINGS {
        for path in ["/plain", "/v1/chat/completions"] {
            let what = format!("401 {path} content-length {timing:?}");
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            local_reply(
                &gw,
                &up,
                &what,
                &head,
                body.as_bytes(),
                timing,
                401,
                "invalid_api_key",
                "/smuggled",
            );
            let what = format!("401 {path} chunked {timing:?}");
            let head =
                format!("POST {path} HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n");
            // The chunk's data is the request; a gateway that skipped the chunk line would
            // still find it.
            let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
            local_reply(
                &gw,
                &up,
                &what,
                &head,
                chunked.as_bytes(),
                timing,
                401,
                "invalid_api_key",
                "/smuggled",
            );
        }
    }
    // A wrong key is the same as none.
    let head = format!(
        "POST /plain HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-wrong\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    local_reply(
        &gw,
        &up,
        "401 wrong key",
        &head,
        body.as_bytes(),
        BodyTiming::WithHead,
        401,
        "invalid_api_key",
        "/smuggled",
    );
}

/// 413: a declared length over the limit is refused before the body is read (and the
/// connection closed); a chunked body is refused once it passes the limit.
#[test]
fn a_413_never_leaves_the_body_to_be_read_as_a_request() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .server("body_bytes_max = 1000")
        .tenant(&tenant("canary", CANARY_KEY))
        .build();
    let gw = Gateway::start(&cfg);
    let body = smuggled("/smuggled-413", 1500);
    assert_eq!(body.len(), 1500);
    for timing in TIMINGS {
        for path in ["/plain", "/v1/chat/completions"] {
            let what = format!("413 {path} content-length {timing:?}");
            let head = format!(
                "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY_KEY}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            local_reply(
                &gw,
                &up,
                &what,
                &head,
                body.as_bytes(),
                timing,
                413,
                "body_too_large",
                "/smuggled",
            );
        }
    }
    for path in ["/plain", "/v1/chat/completions"] {
        let what = format!("413 {path} chunked");
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer {CANARY_KEY}\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
        local_reply(
            &gw,
            &up,
            &what,
            &head,
            chunked.as_bytes(),
            BodyTiming::WithHead,
            413,
            "body_too_large",
            "/smuggled",
        );
    }
}

/// 429: a plain request is refused before its body is read (the connection closes); an LLM
/// request is refused after its body was read whole (the connection may stay open, and the next
/// request on it is just that).
#[test]
fn a_429_never_leaves_the_body_to_be_read_as_a_request() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&format!("{}\nrpm = 1", tenant("limited", "sk-limited-key")))
        .tenant(&tenant("canary", CANARY_KEY))
        .build();
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    c.send("GET /first HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-limited-key\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    let body = smuggled("/smuggled-429", 0);
    for timing in TIMINGS {
        let what = format!("429 content-length {timing:?}");
        let head = format!(
            "POST /plain HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-limited-key\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        local_reply(
            &gw,
            &up,
            &what,
            &head,
            body.as_bytes(),
            timing,
            429,
            "rate_limit_exceeded",
            "/smuggled",
        );
        let what = format!("429 chunked {timing:?}");
        let head = "POST /plain HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-limited-key\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
        local_reply(
            &gw,
            &up,
            &what,
            head,
            chunked.as_bytes(),
            timing,
            429,
            "rate_limit_exceeded",
            "/smuggled",
        );
    }
    let json =
        r#"{"model":"m","messages":[{"role":"user","content":"POST /smuggled-429 HTTP/1.1"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-limited-key\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    local_reply(
        &gw,
        &up,
        "429 llm body read whole",
        &head,
        json.as_bytes(),
        BodyTiming::WithHead,
        429,
        "rate_limit_exceeded",
        "/smuggled",
    );
    let chunked = format!("{:x}\r\n{json}\r\n0\r\n\r\n", json.len());
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-limited-key\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    local_reply(
        &gw,
        &up,
        "429 llm chunked body read whole",
        head,
        chunked.as_bytes(),
        BodyTiming::WithHead,
        429,
        "rate_limit_exceeded",
        "/smuggled",
    );
}

/// 403: the model is in the body, so the body is read whole before the refusal; the connection
/// stays usable and the next request on it is just that.
#[test]
fn a_403_leaves_the_connection_in_step() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&format!(
            "{}\nmodels = [\"allowed\"]",
            tenant("picky", "sk-picky-key")
        ))
        .tenant(&tenant("canary", CANARY_KEY))
        .build();
    let gw = Gateway::start(&cfg);
    let json = r#"{"model":"forbidden","messages":[{"role":"user","content":"GET /smuggled-403 HTTP/1.1"}]}"#;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-picky-key\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        json.len()
    );
    local_reply(
        &gw,
        &up,
        "403 content-length",
        &head,
        json.as_bytes(),
        BodyTiming::WithHead,
        403,
        "model_not_approved",
        "/smuggled",
    );
    let head =
        "POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer sk-picky-key\r\n\
                Transfer-Encoding: chunked\r\n\r\n";
    // The JSON in two chunks, with an extension and a trailer.
    let (a, b) = json.split_at(20);
    let chunked = format!(
        "{:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\nX-Trailer: t\r\n\r\n",
        a.len(),
        b.len()
    );
    local_reply(
        &gw,
        &up,
        "403 chunked",
        head,
        chunked.as_bytes(),
        BodyTiming::WithHead,
        403,
        "model_not_approved",
        "/smuggled",
    );
}
