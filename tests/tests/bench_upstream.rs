//! `shardgate-bench upstream`, the mock OpenAI-compatible upstream, as a process: each knob
//! observed on the wire, then the real gateway in front of it.

use std::time::{Duration, Instant};

use serde_json::Value;
use shardgate_tests::{BenchUpstream, Client, Closed, ConfigBuilder, Gateway, Response};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"Hello World!"}]}"#;

fn stream_body(include_usage: bool) -> String {
    format!(
        r#"{{"model":"gpt-test","stream":true,"stream_options":{{"include_usage":{include_usage}}},"messages":[{{"role":"user","content":"Hello World!"}}]}}"#
    )
}

fn post_raw(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The SSE events of a (de-chunked) body, without their blank-line terminators.
fn events(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The JSON of a `data: {...}` event.
#[track_caller]
fn data_json(event: &str) -> Value {
    let data = event
        .lines()
        .find_map(|l| l.strip_prefix("data: "))
        .unwrap_or_else(|| panic!("no data line in {event:?}"));
    serde_json::from_str(data).unwrap_or_else(|e| panic!("not JSON ({e}): {data:?}"))
}

#[track_caller]
fn assert_sse(r: &Response) {
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{}",
        r.summary()
    );
}

/// `--chunks`, `--ttft-ms` and `--chunk-interval-ms`: each event arrives as it is due, one per
/// chunk, and the stream ends with `[DONE]` and the last chunk.
#[test]
fn stream_chunks_are_spaced_and_end_with_done() {
    let (chunks, ttft_ms, interval_ms) = (4u32, 150u64, 100u64);
    let up = BenchUpstream::start(&[
        "--chunks",
        "4",
        "--ttft-ms",
        "150",
        "--chunk-interval-ms",
        "100",
    ]);
    let mut c = Client::connect(up.addr());
    let sent = Instant::now();
    c.send(post_raw("/v1/chat/completions", &stream_body(false)));
    let head = String::from_utf8_lossy(&c.read_raw_until(b"\r\n\r\n")).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    let mut arrivals = Vec::new();
    let mut content = String::new();
    for i in 0..chunks {
        let raw = c.read_raw_until(b"\n\n");
        arrivals.push(sent.elapsed());
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let event = &raw[raw.find("data: ").expect("a data line")..];
        let v = data_json(event);
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "gpt-test");
        let delta = &v["choices"][0]["delta"];
        assert_eq!(
            delta.get("role").is_some(),
            i == 0,
            "role in the first only: {v}"
        );
        content.push_str(delta["content"].as_str().expect("content"));
        let last = i + 1 == chunks;
        assert_eq!(v["choices"][0]["finish_reason"] == "stop", last, "{v}");
        // The server sleeps before each event, so none can arrive before it is due.
        let due = Duration::from_millis(ttft_ms + u64::from(i) * interval_ms);
        assert!(
            arrivals[i as usize] >= due,
            "chunk {i} after {:?}, due at {due:?}",
            arrivals[i as usize]
        );
    }
    // They are spread over time, not sent together at the end.
    let spread = arrivals[arrivals.len() - 1] - arrivals[0];
    assert!(
        spread >= Duration::from_millis(interval_ms * u64::from(chunks - 1) / 2),
        "chunks arrived within {spread:?}: {arrivals:?}"
    );
    assert_eq!(content.split(' ').count(), chunks as usize, "{content:?}");
    let rest = c.read_raw_until(b"0\r\n\r\n");
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("data: [DONE]\n\n"), "{rest:?}");
    assert!(
        !rest.contains("usage"),
        "no usage event unless asked: {rest:?}"
    );
    // The connection stays usable.
    let r = c.post_json("/v1/chat/completions", CHAT);
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// `stream_options.include_usage`: a usage event with no choices before `[DONE]`.
#[test]
fn stream_include_usage() {
    let up = BenchUpstream::start(&["--chunks", "3"]);
    let mut c = Client::connect(up.addr());
    let r = c.post_json("/v1/chat/completions", &stream_body(true));
    assert_sse(&r);
    assert!(r.chunked, "{}", r.summary());
    let ev = events(&r.body);
    assert_eq!(ev.len(), 5, "3 chunks, usage, [DONE]: {ev:?}");
    let usage = data_json(&ev[3]);
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(
        usage["usage"],
        serde_json::json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    assert_eq!(ev[4], "data: [DONE]");
}

/// `--latency-ms` delays a whole answer.
#[test]
fn latency_delays_the_answer() {
    let up = BenchUpstream::start(&["--latency-ms", "200", "--chunks", "2"]);
    let mut c = Client::connect(up.addr());
    let t = Instant::now();
    let r = c.post_json("/v1/chat/completions", CHAT);
    let took = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        took >= Duration::from_millis(200),
        "answered after {took:?}"
    );
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["usage"],
        serde_json::json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5})
    );
}

/// `--fail-rate 1 --fail-status 429`: every request gets 429, `Retry-After: 1` and an OpenAI
/// error body, and the connection stays open.
#[test]
fn fail_rate_one_with_429() {
    let up = BenchUpstream::start(&["--fail-rate", "1", "--fail-status", "429"]);
    let mut c = Client::connect(up.addr());
    for _ in 0..3 {
        let r = c.post_json("/v1/chat/completions", CHAT);
        assert_eq!(r.status, 429, "{}", r.summary());
        assert_eq!(r.header("retry-after"), Some("1"), "{}", r.summary());
        assert!(r
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")));
        let v = r.json();
        assert!(v["error"]["message"].is_string(), "{v}");
        assert!(v["error"]["type"].is_string(), "{v}");
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }
}

/// `--fail-rate 0` never fails; `--fail-rate 0.5` fails about half the time, with
/// `--fail-status` (503 by default).
#[test]
fn fail_rate_zero_never_half_sometimes() {
    let never = BenchUpstream::start(&["--fail-rate", "0"]);
    let mut c = Client::connect(never.addr());
    for i in 0..100 {
        let r = c.post_json("/v1/chat/completions", CHAT);
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
    }
    let half = BenchUpstream::start(&["--fail-rate", "0.5", "--seed", "42"]);
    let mut c = Client::connect(half.addr());
    let mut failed = 0;
    for _ in 0..100 {
        let r = c.post_json("/v1/chat/completions", CHAT);
        match r.status {
            200 => {}
            503 => {
                failed += 1;
                assert!(r.header("retry-after").is_none(), "{}", r.summary());
                assert_eq!(r.json()["error"]["type"], "server_error");
            }
            _ => panic!("{}", r.summary()),
        }
    }
    assert!((20..=80).contains(&failed), "{failed} of 100 failed");
}

/// `--reset-rate 1`: a stream is cut by a reset after half its chunks, with no `[DONE]`;
/// whole answers are not affected.
#[test]
fn reset_rate_one_truncates_streams() {
    let up = BenchUpstream::start(&["--reset-rate", "1", "--chunks", "8"]);
    let mut c = Client::connect(up.addr());
    let r = c.post_json("/v1/chat/completions", CHAT);
    assert_eq!(
        r.status,
        200,
        "whole answers are never reset: {}",
        r.summary()
    );
    c.send(post_raw("/v1/chat/completions", &stream_body(true)));
    let (raw, end) = c.read_raw_to_end(Duration::from_secs(5));
    let text = String::from_utf8_lossy(&raw);
    assert_eq!(end, Closed::Reset, "the stream ends with RST: {text:?}");
    assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
    assert_eq!(
        text.matches("data: ").count(),
        4,
        "half of 8 chunks: {text:?}"
    );
    assert!(!text.contains("[DONE]"), "{text:?}");
    assert!(!text.contains("0\r\n\r\n"), "no last chunk: {text:?}");
}

/// `--echo`: method, target, headers in order and the (de-chunked) body come back as JSON.
#[test]
fn echo_reflects_the_request() {
    let up = BenchUpstream::start(&["--echo"]);
    let mut c = Client::connect(up.addr());
    c.send(
        "PUT /any/where?x=1 HTTP/1.1\r\nHost: test\r\nX-Custom: a \"quoted\" value\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = r.json();
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/any/where?x=1");
    assert_eq!(
        v["headers"],
        serde_json::json!([
            ["Host", "test"],
            ["X-Custom", "a \"quoted\" value"],
            ["Transfer-Encoding", "chunked"]
        ])
    );
    assert_eq!(v["body"], "hello world");
}

/// Anthropic's streaming events, in order, each with a matching `type`.
#[test]
fn anthropic_stream_event_order() {
    let up = BenchUpstream::start(&["--chunks", "2"]);
    let mut c = Client::connect(up.addr());
    let r = c.post_json(
        "/v1/messages",
        r#"{"model":"claude-test","max_tokens":16,"stream":true,"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    assert_sse(&r);
    let mut names = Vec::new();
    for ev in events(&r.body) {
        let name = ev
            .lines()
            .find_map(|l| l.strip_prefix("event: "))
            .unwrap_or_else(|| panic!("no event line in {ev:?}"))
            .to_owned();
        let v = data_json(&ev);
        assert_eq!(v["type"], name.as_str(), "{ev:?}");
        if name == "message_delta" {
            assert_eq!(v["delta"]["stop_reason"], "end_turn");
            assert_eq!(v["usage"]["output_tokens"], 2);
        }
        names.push(name);
    }
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    // And the whole message.
    let r = c.post_json(
        "/v1/messages",
        r#"{"model":"claude-test","max_tokens":16,"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    let v = r.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["usage"],
        serde_json::json!({"input_tokens": 3, "output_tokens": 2})
    );
}

/// `POST /v1/embeddings` and `GET /v1/models` have OpenAI's shapes; unknown paths are 404.
#[test]
fn embeddings_and_models_shapes() {
    let up = BenchUpstream::start(&[]);
    let mut c = Client::connect(up.addr());
    let r = c.post_json(
        "/v1/embeddings",
        r#"{"model":"emb","input":["abcd","efgh","ij"]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    let data = v["data"].as_array().expect("data is an array");
    assert_eq!(data.len(), 3);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        let e = d["embedding"].as_array().expect("a vector");
        assert!(!e.is_empty() && e.iter().all(Value::is_f64), "{d}");
    }
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    let r = c.get("/v1/models");
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["object"], "model");
    assert!(v["data"][0]["id"].is_string());
    let r = c.get("/nowhere");
    assert_eq!(r.status, 404, "{}", r.summary());
    assert!(r.json()["error"]["message"].is_string());
}

/// Pipelined requests are answered in order, and several threads share one port.
#[test]
fn pipelining_and_threads() {
    let mut up = BenchUpstream::start(&["--threads", "2"]);
    let mut c = Client::connect(up.addr());
    let body = r#"{"model":"second","prompt":"abcdefgh"}"#;
    c.send(format!(
        "{}{}GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n",
        post_raw("/v1/chat/completions", CHAT),
        post_raw("/v1/completions", body)
    ));
    assert_eq!(c.read_response().json()["object"], "chat.completion");
    let v = c.read_response().json();
    assert_eq!(
        (v["object"].as_str(), v["model"].as_str()),
        (Some("text_completion"), Some("second"))
    );
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    assert_eq!(c.read_response().json()["object"], "list");
    for _ in 0..8 {
        let r = Client::connect(up.addr()).post_json("/v1/chat/completions", CHAT);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    up.sigterm();
    let st = up
        .wait_exit(Duration::from_secs(5))
        .expect("exits after SIGTERM");
    assert!(st.success(), "{st}");
}

// ----- with the real gateway in front -----

/// A whole chat completion through shardgate: the mock's JSON, usage included.
#[test]
fn gateway_relays_chat_completion_with_usage() {
    let up = BenchUpstream::start(&["--chunks", "5"]);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    for _ in 0..2 {
        let r = c.post_json("/v1/chat/completions", CHAT);
        assert_eq!(r.status, 200, "{}", r.summary());
        let v = r.json();
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "gpt-test");
        assert_eq!(v["choices"][0]["message"]["role"], "assistant");
        assert_eq!(
            v["usage"],
            serde_json::json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
        );
    }
}

/// A stream through shardgate arrives as SSE, every chunk, the usage event and `[DONE]`.
#[test]
fn gateway_relays_stream_to_done() {
    let up = BenchUpstream::start(&["--chunks", "6", "--chunk-interval-ms", "5"]);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    let r = c.post_json("/v1/chat/completions", &stream_body(true));
    assert_sse(&r);
    let ev = events(&r.body);
    assert_eq!(ev.len(), 8, "6 chunks, usage, [DONE]: {ev:?}");
    for e in &ev[..6] {
        assert_eq!(data_json(e)["object"], "chat.completion.chunk");
    }
    assert_eq!(data_json(&ev[6])["usage"]["completion_tokens"], 6);
    assert_eq!(ev[7], "data: [DONE]");
    // The connection is still good for another request.
    let r = c.post_json("/v1/chat/completions", CHAT);
    assert_eq!(r.status, 200, "{}", r.summary());
}

/// `--echo` behind shardgate shows what the gateway forwards: `X-Forwarded-For` set to the
/// client, hop-by-hop headers gone, end-to-end ones and the body intact.
#[test]
fn gateway_forwarding_seen_through_echo() {
    let up = BenchUpstream::start(&["--echo"]);
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let mut c = Client::connect(gw.addr());
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\n\
         Connection: keep-alive, X-Foo\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
         Upgrade: foo/1\r\nProxy-Authorization: Basic c2VjcmV0\r\nX-Foo: hop\r\n\
         Authorization: Bearer sk-e2e\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{CHAT}",
        CHAT.len()
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/v1/chat/completions");
    assert_eq!(v["body"], CHAT);
    let headers: Vec<(String, String)> = v["headers"]
        .as_array()
        .expect("headers array")
        .iter()
        .map(|h| {
            (
                h[0].as_str().expect("name").to_ascii_lowercase(),
                h[1].as_str().expect("value").to_owned(),
            )
        })
        .collect();
    let values = |name: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(values("x-forwarded-for"), ["127.0.0.1"], "{headers:?}");
    for hop in [
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "x-foo",
    ] {
        assert!(values(hop).is_empty(), "{hop} was forwarded: {headers:?}");
    }
    for conn in values("connection") {
        assert!(!conn.to_ascii_lowercase().contains("x-foo"), "{headers:?}");
    }
    assert_eq!(values("authorization"), ["Bearer sk-e2e"], "{headers:?}");
    assert_eq!(values("content-type"), ["application/json"], "{headers:?}");
}
