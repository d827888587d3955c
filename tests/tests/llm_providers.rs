//! Providers of the other API: OpenAI chat clients in front of an Anthropic upstream, and
//! Anthropic Messages clients in front of an OpenAI-compatible upstream, streaming and not;
//! upstream errors and our own come back in the client's shape.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};

use shardgate_tests::{
    write_chunk, write_response, Action, Client, Gateway, MockUpstream, Request,
};

const KEY_VAR: &str = "SG_TEST_PROVIDER_KEY";
const KEY: &str = "sk-ant-upstream-secret";

/// Anthropic's answer to a Messages request: "Hello there!" (in two text deltas when
/// streamed), 12 input tokens, 3 output tokens; a request for `claude-bad` gets Anthropic's
/// 400 error body.
fn anthropic_upstream() -> MockUpstream {
    MockUpstream::start(|req: &Request, s: &mut TcpStream| -> io::Result<Action> {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if body["model"] == "claude-bad" {
            let e = r#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#;
            write_response(s, 400, "application/json", e.as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        if body["model"] == "claude-cut" {
            // A stream the upstream breaks off after its first text.
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            write_chunk(s, b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":2,\"output_tokens\":1}}}\n\n")?;
            write_chunk(s, b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hel\"}}\n\n")?;
            return Ok(Action::Close);
        }
        if body["stream"] == true {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let events = [
                r#"event: message_start
data: {"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","content":[],"model":"claude-up","stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
                r#"event: content_block_start
data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
                "event: ping\ndata: {\"type\":\"ping\"}",
                r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                r#"event: content_block_delta
data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there!"}}"#,
                r#"event: content_block_stop
data: {"type":"content_block_stop","index":0}"#,
                r#"event: message_delta
data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":3}}"#,
                "event: message_stop\ndata: {\"type\":\"message_stop\"}",
            ];
            for e in events {
                write_chunk(s, format!("{e}\n\n").as_bytes())?;
            }
            s.write_all(b"0\r\n\r\n")?;
            return Ok(Action::KeepAlive);
        }
        let answer = serde_json::json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-up",
            "content": [{"type": "text", "text": "Hello there!"}],
            "stop_reason": "end_turn", "stop_sequence": null,
            "usage": {"input_tokens": 12, "output_tokens": 3}
        });
        write_response(s, 200, "application/json", answer.to_string().as_bytes())?;
        Ok(Action::KeepAlive)
    })
}

/// OpenAI's answer to a chat request: "Hi from OpenAI" (two content chunks when streamed,
/// then a usage chunk when asked for), 9 prompt tokens, 4 completion tokens; `gpt-bad` gets a
/// 429 in OpenAI's shape.
fn openai_upstream() -> MockUpstream {
    MockUpstream::start(|req: &Request, s: &mut TcpStream| -> io::Result<Action> {
        let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if body["model"] == "gpt-bad" {
            let e = r#"{"error":{"message":"slow down","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
            write_response(s, 429, "application/json", e.as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        if body["stream"] == true {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let chunk = |delta: &str, finish: &str| {
                format!(
                    r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[{{"index":0,"delta":{delta},"finish_reason":{finish}}}]}}"#
                ) + "\n\n"
            };
            write_chunk(
                s,
                chunk(r#"{"role":"assistant","content":""}"#, "null").as_bytes(),
            )?;
            write_chunk(s, chunk(r#"{"content":"Hi from"}"#, "null").as_bytes())?;
            write_chunk(s, chunk(r#"{"content":" OpenAI"}"#, "null").as_bytes())?;
            write_chunk(s, chunk("{}", "\"stop\"").as_bytes())?;
            if body["stream_options"]["include_usage"] == true {
                write_chunk(s, br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-up","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}}

"#)?;
            }
            write_chunk(s, b"data: [DONE]\n\n")?;
            s.write_all(b"0\r\n\r\n")?;
            return Ok(Action::KeepAlive);
        }
        let answer = serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "gpt-up",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi from OpenAI"},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}
        });
        write_response(s, 200, "application/json", answer.to_string().as_bytes())?;
        Ok(Action::KeepAlive)
    })
}

fn config(anthropic: SocketAddr, openai: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 1
auth = "none"

[[upstreams]]
name = "anthropic"
provider = "anthropic"
endpoints = ["http://{anthropic}"]
api_key_env = "{KEY_VAR}"

[[upstreams]]
name = "openai"
provider = "openai"
endpoints = ["http://{openai}"]

[[models]]
name = "claude"
deployments = [{{ upstream = "anthropic", model = "claude-up" }}]

[[models]]
name = "claude-broken"
deployments = [{{ upstream = "anthropic", model = "claude-bad" }}]

[[models]]
name = "claude-cut"
deployments = [{{ upstream = "anthropic", model = "claude-cut" }}]

[[models]]
name = "gpt"
deployments = [{{ upstream = "openai", model = "gpt-up" }}]

[[models]]
name = "gpt-broken"
deployments = [{{ upstream = "openai", model = "gpt-bad" }}]
"#
    )
}

fn post(c: &mut Client, path: &str, body: &str) -> shardgate_tests::Response {
    c.send(format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nAccept-Encoding: gzip\r\n\
         Authorization: Bearer sk-client\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

/// The `data:` payloads of an SSE body, parsed (`[DONE]` as the string "[DONE]").
fn sse_data(body: &str) -> Vec<serde_json::Value> {
    body.split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(|d| {
            if d == "[DONE]" {
                serde_json::Value::from("[DONE]")
            } else {
                serde_json::from_str(d).unwrap_or_else(|e| panic!("bad event {d:?}: {e}"))
            }
        })
        .collect()
}

fn start() -> (MockUpstream, MockUpstream, Gateway) {
    let anthropic = anthropic_upstream();
    let openai = openai_upstream();
    let gw = Gateway::start_with_env(&config(anthropic.addr(), openai.addr()), &[(KEY_VAR, KEY)]);
    (anthropic, openai, gw)
}

#[test]
fn openai_chat_clients_reach_an_anthropic_upstream_translated_both_ways() {
    let (anthropic, _openai, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"claude","max_tokens":50,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi \"there\""}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["object"], "chat.completion");
    assert_eq!(j["choices"][0]["message"]["content"], "Hello there!");
    assert_eq!(j["choices"][0]["finish_reason"], "stop");
    assert_eq!(j["usage"]["prompt_tokens"], 12);
    assert_eq!(j["usage"]["completion_tokens"], 3);

    // What the Anthropic upstream got: a Messages request with its own key and version.
    let reqs = anthropic.requests();
    let up = reqs.last().expect("a request upstream");
    assert_eq!(up.path, "/v1/messages");
    assert_eq!(up.header("x-api-key"), Some(KEY));
    assert_eq!(up.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(
        up.header("authorization"),
        None,
        "the client's key never goes upstream"
    );
    assert_eq!(
        up.header("accept-encoding"),
        None,
        "a translated answer must come unencoded"
    );
    let sent: serde_json::Value = serde_json::from_slice(&up.body).expect("JSON upstream");
    assert_eq!(sent["model"], "claude-up");
    assert_eq!(sent["system"], "Be brief.");
    assert_eq!(sent["max_tokens"], 50);
    assert_eq!(sent["messages"][0]["role"], "user");
    assert_eq!(sent["messages"][0]["content"][0]["text"], "Hi \"there\"");

    // Streamed, on the same connection: OpenAI chunks, the usage chunk asked for, [DONE].
    let r = post(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"claude","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.header("content-type"), Some("text/event-stream"));
    let events = sse_data(&r.body_str());
    assert_eq!(events.last(), Some(&serde_json::Value::from("[DONE]")));
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Hello there!");
    assert!(events
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "stop"));
    let usage = events
        .iter()
        .find(|e| e["usage"].is_object())
        .expect("a usage chunk");
    assert_eq!(usage["usage"]["prompt_tokens"], 12);
    assert_eq!(usage["usage"]["completion_tokens"], 3);
    assert!(events
        .iter()
        .filter(|e| e.is_object())
        .all(|e| e["object"] == "chat.completion.chunk" && e["model"] == "claude-up"));
    let reqs = anthropic.requests();
    let sent: serde_json::Value =
        serde_json::from_slice(&reqs.last().expect("req").body).expect("json");
    assert_eq!(sent["stream"], true);
    assert!(
        sent["max_tokens"].as_u64().is_some_and(|n| n > 0),
        "max_tokens is required by Anthropic"
    );
}

#[test]
fn anthropic_errors_reach_openai_clients_in_openai_shape_with_the_status() {
    let (_anthropic, _openai, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"claude-broken","messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["error"]["message"], "max_tokens: too large");
    assert_eq!(j["error"]["type"], "invalid_request_error");
    // What Anthropic cannot express is refused here, naming the field.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"claude","messages":[{"role":"user","content":"Hi"}],"logprobs":true}"#,
    );
    assert_eq!(r.status, 400, "{}", r.summary());
    assert!(
        r.json()["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("logprobs")),
        "{}",
        r.summary()
    );
    // An API Anthropic has no counterpart for.
    let r = post(
        &mut c,
        "/v1/embeddings",
        r#"{"model":"claude","input":"x"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.summary());
}

#[test]
fn anthropic_clients_reach_an_openai_upstream_translated_both_ways() {
    let (_anthropic, openai, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/messages",
        r#"{"model":"gpt","max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"Hi"}]}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["type"], "message");
    assert_eq!(j["role"], "assistant");
    assert_eq!(j["content"][0]["type"], "text");
    assert_eq!(j["content"][0]["text"], "Hi from OpenAI");
    assert_eq!(j["stop_reason"], "end_turn");
    assert_eq!(j["usage"]["input_tokens"], 9);
    assert_eq!(j["usage"]["output_tokens"], 4);
    let reqs = openai.requests();
    let up = reqs.last().expect("a request upstream");
    assert_eq!(up.path, "/v1/chat/completions");
    let sent: serde_json::Value = serde_json::from_slice(&up.body).expect("JSON upstream");
    assert_eq!(sent["model"], "gpt-up");
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(sent["messages"][0]["content"], "Be brief.");
    assert_eq!(sent["messages"][1]["content"], "Hi");
    assert_eq!(sent["max_tokens"], 64);

    // Streamed: Anthropic's events, ending in message_stop, with the usage.
    let r = post(
        &mut c,
        "/v1/messages",
        r#"{"model":"gpt","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = r.body_str();
    let names: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"), "{body}");
    assert_eq!(names.last(), Some(&"message_stop"), "{body}");
    let events = sse_data(&body);
    let text: String = events
        .iter()
        .filter(|e| e["type"] == "content_block_delta")
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hi from OpenAI");
    let delta = events
        .iter()
        .find(|e| e["type"] == "message_delta")
        .expect("message_delta");
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(delta["usage"]["output_tokens"], 4);
}

#[test]
fn errors_reach_anthropic_clients_in_anthropic_shape() {
    let (_anthropic, _openai, gw) = start();
    let mut c = Client::connect(gw.addr());
    // The upstream's 429, translated.
    let r = post(
        &mut c,
        "/v1/messages",
        r#"{"model":"gpt-broken","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 429, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["type"], "error");
    assert_eq!(j["error"]["type"], "rate_limit_error");
    assert_eq!(j["error"]["message"], "slow down");
    // Our own: an unknown model.
    let r = post(
        &mut c,
        "/v1/messages",
        r#"{"model":"nope","max_tokens":5,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 404, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["type"], "error");
    assert_eq!(j["error"]["type"], "not_found_error");
    // A Messages request without Anthropic's required max_tokens.
    let r = post(
        &mut c,
        "/v1/messages",
        r#"{"model":"gpt","messages":[{"role":"user","content":"Hi"}]}"#,
    );
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[test]
fn a_translated_stream_the_upstream_breaks_off_ends_with_an_error_event_and_no_clean_end() {
    let (_anthropic, _openai, gw) = start();
    let mut c = Client::connect(gw.addr());
    let body =
        r#"{"model":"claude-cut","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let (raw, _) = c.read_raw_to_end(std::time::Duration::from_secs(5));
    let raw = String::from_utf8_lossy(&raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    assert!(
        raw.contains("\"content\":\"Hel\""),
        "the text before the break: {raw}"
    );
    assert!(
        raw.contains("\"error\""),
        "an error event says the stream broke: {raw}"
    );
    assert!(
        !raw.ends_with("0\r\n\r\n"),
        "no clean end: the client sees a truncated message: {raw}"
    );
}
