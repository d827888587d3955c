//! Unit tests of the mock's answers (sans-I/O: plans are inspected byte by byte).

use serde_json::Value;

use super::*;
use crate::upstream::http::{parse, Parse, HEADERS_MAX};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"Hello World!"}]}"#;
const STAMP: Stamp = Stamp {
    now_unix_s: 1_700_000_000,
    shard: 0,
    seq: 7,
};
const NO_ROLL: Rolls = Rolls {
    fail: 0.5,
    reset: 0.5,
};

/// Plan the answer to a raw request.
fn plan_for(raw: impl AsRef<[u8]>, knobs: &Knobs, rolls: Rolls) -> Plan {
    let raw = raw.as_ref();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut body = Vec::new();
    let Ok(Parse::Complete { req, .. }) = parse(raw, &mut headers, &mut body) else {
        panic!("not a complete request: {}", String::from_utf8_lossy(raw));
    };
    let mut plan = Plan::default();
    answer(&req, knobs, rolls, STAMP, &mut plan);
    plan
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A whole response: status, headers (lowercase names), body.
fn whole(plan: &Plan) -> (u16, Vec<(String, String)>, Vec<u8>) {
    assert_eq!(plan.frames.len(), 1, "a whole response is one frame");
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut resp = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(n)) = resp.parse(&plan.bytes) else {
        panic!("bad head: {}", String::from_utf8_lossy(&plan.bytes));
    };
    let headers: Vec<(String, String)> = resp
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let body = plan.bytes[n..].to_vec();
    let cl = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .map(|(_, v)| v.parse::<usize>().expect("numeric"));
    assert_eq!(cl, Some(body.len()), "content-length matches the body");
    (resp.code.unwrap_or(0), headers, body)
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

fn header<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A streamed response: the head, then each frame's (delay, de-chunked payload), and whether
/// the terminating chunk was seen.
fn stream_frames(plan: &Plan) -> (String, Vec<(u64, String)>, bool) {
    let mut frames = plan.frames();
    let (delay, head) = frames.next().expect("a head frame");
    assert_eq!(delay, 0, "the head goes out at once");
    let head = String::from_utf8_lossy(head).into_owned();
    assert!(head.ends_with("\r\n\r\n"), "the head is a frame of its own");
    let mut out = Vec::new();
    let mut terminated = false;
    for (delay, bytes) in frames {
        let s = String::from_utf8_lossy(bytes).into_owned();
        let (size, rest) = s.split_once("\r\n").expect("a chunk line");
        let size = usize::from_str_radix(size, 16).expect("hex size");
        assert!(!terminated, "nothing after the last chunk");
        assert_eq!(&rest[size..size + 2], "\r\n");
        let tail = &rest[size + 2..];
        if !tail.is_empty() {
            assert_eq!(tail, "0\r\n\r\n", "only the last chunk may follow an event");
            terminated = true;
        }
        out.push((delay, rest[..size].to_owned()));
    }
    (head, out, terminated)
}

/// The JSON of an OpenAI `data:` event.
fn data_json(event: &str) -> Value {
    let payload = event
        .strip_prefix("data: ")
        .and_then(|e| e.strip_suffix("\n\n"))
        .unwrap_or_else(|| panic!("not a data event: {event:?}"));
    json(payload.as_bytes())
}

#[test]
fn chat_completion_with_usage() {
    let knobs = Knobs {
        chunks: 5,
        latency_ms: 40,
        ..Knobs::default()
    };
    let plan = plan_for(post("/v1/chat/completions", CHAT), &knobs, NO_ROLL);
    assert_eq!(
        plan.frames[0].delay_ms, 40,
        "--latency-ms delays the answer"
    );
    assert_eq!(plan.end, End::KeepAlive);
    let (status, headers, body) = whole(&plan);
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    let v = json(&body);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["created"], 1_700_000_000);
    assert!(v["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("chatcmpl-")));
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("text");
    assert_eq!(content.split(' ').count(), 5, "{content}");
    // "Hello World!" is 12 bytes: 3 tokens; 5 chunks: 5 completion tokens.
    assert_eq!(
        v["usage"],
        serde_json::json!({"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8})
    );
}

#[test]
fn prompt_tokens_round_up() {
    let body = r#"{"model":"m","prompt":"abcde"}"#;
    let plan = plan_for(post("/v1/completions", body), &Knobs::default(), NO_ROLL);
    let v = json(&whole(&plan).2);
    assert_eq!(v["object"], "text_completion");
    assert!(v["choices"][0]["text"].is_string());
    assert_eq!(
        v["usage"]["prompt_tokens"], 2,
        "5 bytes round up to 2 tokens"
    );
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["usage"]["total_tokens"], 10);
}

#[test]
fn model_is_echoed_escaped_and_defaulted() {
    let body = r#"{"model":"we\"ird\\m\u0001","messages":[]}"#;
    let plan = plan_for(
        post("/v1/chat/completions", body),
        &Knobs::default(),
        NO_ROLL,
    );
    assert_eq!(json(&whole(&plan).2)["model"], "we\"ird\\m\u{1}");
    let plan = plan_for(
        post("/v1/chat/completions", r#"{"messages":[]}"#),
        &Knobs::default(),
        NO_ROLL,
    );
    assert_eq!(json(&whole(&plan).2)["model"], DEFAULT_MODEL);
}

fn stream_body(include_usage: bool) -> String {
    format!(
        r#"{{"model":"gpt-test","stream":true,"stream_options":{{"include_usage":{include_usage}}},"messages":[{{"role":"user","content":"Hello World!"}}]}}"#
    )
}

#[test]
fn openai_stream_framing_and_order() {
    let knobs = Knobs {
        chunks: 4,
        ttft_ms: 30,
        chunk_interval_ms: 10,
        ..Knobs::default()
    };
    let plan = plan_for(
        post("/v1/chat/completions", &stream_body(false)),
        &knobs,
        NO_ROLL,
    );
    assert_eq!(plan.end, End::KeepAlive);
    let (head, events, terminated) = stream_frames(&plan);
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("content-type: text/event-stream\r\n"),
        "{head}"
    );
    assert!(head.contains("transfer-encoding: chunked\r\n"), "{head}");
    assert!(terminated, "the body ends with the last chunk");
    assert_eq!(events.len(), 5, "4 chunks and [DONE]");
    let delays: Vec<u64> = events.iter().map(|e| e.0).collect();
    assert_eq!(delays, [30, 10, 10, 10, 0]);
    let mut text = String::new();
    for (i, (_, ev)) in events[..4].iter().enumerate() {
        let v = data_json(ev);
        assert_eq!(v["object"], "chat.completion.chunk");
        assert_eq!(v["model"], "gpt-test");
        let delta = &v["choices"][0]["delta"];
        assert_eq!(
            delta.get("role").is_some(),
            i == 0,
            "role only in the first: {v}"
        );
        text.push_str(delta["content"].as_str().expect("content"));
        let finish = &v["choices"][0]["finish_reason"];
        if i == 3 {
            assert_eq!(finish, "stop");
        } else {
            assert!(finish.is_null(), "{v}");
        }
        assert!(v.get("usage").is_none());
    }
    assert_eq!(text.split(' ').count(), 4, "{text}");
    assert_eq!(events[4].1, "data: [DONE]\n\n");
}

#[test]
fn openai_stream_include_usage() {
    let knobs = Knobs {
        chunks: 3,
        ..Knobs::default()
    };
    let plan = plan_for(
        post("/v1/chat/completions", &stream_body(true)),
        &knobs,
        NO_ROLL,
    );
    let (_, events, terminated) = stream_frames(&plan);
    assert!(terminated);
    assert_eq!(events.len(), 5, "3 chunks, usage, [DONE]");
    let usage = data_json(&events[3].1);
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(
        usage["usage"],
        serde_json::json!({"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})
    );
    assert_eq!(events[4].1, "data: [DONE]\n\n");
}

#[test]
fn completions_stream_objects() {
    let body = r#"{"model":"m","prompt":"hi","stream":true}"#;
    let knobs = Knobs {
        chunks: 2,
        ..Knobs::default()
    };
    let plan = plan_for(post("/v1/completions", body), &knobs, NO_ROLL);
    let (_, events, _) = stream_frames(&plan);
    assert_eq!(events.len(), 3);
    for (_, ev) in &events[..2] {
        let v = data_json(ev);
        assert_eq!(v["object"], "text_completion");
        assert!(v["choices"][0]["text"].is_string());
    }
}

#[test]
fn reset_cuts_the_stream_after_half_the_chunks() {
    let knobs = Knobs {
        chunks: 8,
        reset_rate: 1.0,
        ..Knobs::default()
    };
    let rolls = Rolls {
        fail: 0.5,
        reset: 0.999,
    };
    let plan = plan_for(
        post("/v1/chat/completions", &stream_body(true)),
        &knobs,
        rolls,
    );
    assert_eq!(plan.end, End::Reset);
    let (_, events, terminated) = stream_frames(&plan);
    assert!(!terminated);
    assert_eq!(events.len(), 4, "half of 8 chunks, then nothing");
    assert!(events.iter().all(|(_, e)| !e.contains("[DONE]")));
    // A reset rate of 0 never resets, and a non-streaming answer is never reset.
    let knobs0 = Knobs {
        reset_rate: 0.0,
        ..knobs.clone()
    };
    let rolls0 = Rolls {
        fail: 0.5,
        reset: 0.0,
    };
    let plan = plan_for(
        post("/v1/chat/completions", &stream_body(false)),
        &knobs0,
        rolls0,
    );
    assert_eq!(plan.end, End::KeepAlive);
    let plan = plan_for(post("/v1/chat/completions", CHAT), &knobs, rolls);
    assert_eq!(plan.end, End::KeepAlive);
}

#[test]
fn http10_stream_is_close_delimited() {
    let body = stream_body(false);
    let raw = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let knobs = Knobs {
        chunks: 2,
        ..Knobs::default()
    };
    let plan = plan_for(&raw, &knobs, NO_ROLL);
    assert_eq!(plan.end, End::Close);
    let text = String::from_utf8_lossy(&plan.bytes);
    assert!(!text.contains("transfer-encoding"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
}

#[test]
fn anthropic_message_and_stream_order() {
    let body = r#"{"model":"claude-test","max_tokens":10,"system":"abcd","messages":[{"role":"user","content":"Hello World!"}]}"#;
    let knobs = Knobs {
        chunks: 3,
        ttft_ms: 20,
        chunk_interval_ms: 5,
        ..Knobs::default()
    };
    let plan = plan_for(post("/v1/messages", body), &knobs, NO_ROLL);
    let v = json(&whole(&plan).2);
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["model"], "claude-test");
    assert_eq!(v["content"][0]["type"], "text");
    assert!(v["content"][0]["text"].is_string());
    assert_eq!(v["stop_reason"], "end_turn");
    // "abcd" + "Hello World!" = 16 bytes: 4 tokens.
    assert_eq!(
        v["usage"],
        serde_json::json!({"input_tokens": 4, "output_tokens": 3})
    );

    let body = body.replacen('{', r#"{"stream":true,"#, 1);
    let plan = plan_for(post("/v1/messages", &body), &knobs, NO_ROLL);
    let (head, events, terminated) = stream_frames(&plan);
    assert!(head.contains("text/event-stream"));
    assert!(terminated);
    let mut types = Vec::new();
    for (delay, ev) in &events {
        let (line, data) = ev.split_once('\n').expect("two lines");
        let name = line.strip_prefix("event: ").expect("event line");
        let v = data_json(data);
        assert_eq!(v["type"], name, "event name and data type agree");
        types.push((name.to_owned(), *delay));
        if name == "message_delta" {
            assert_eq!(v["delta"]["stop_reason"], "end_turn");
            assert_eq!(v["usage"]["output_tokens"], 3);
        }
        if name == "content_block_delta" {
            assert_eq!(v["delta"]["type"], "text_delta");
        }
        if name == "message_start" {
            assert_eq!(v["message"]["usage"]["input_tokens"], 4);
        }
    }
    let want = [
        ("message_start", 0),
        ("content_block_start", 0),
        ("ping", 0),
        ("content_block_delta", 20),
        ("content_block_delta", 5),
        ("content_block_delta", 5),
        ("content_block_stop", 0),
        ("message_delta", 0),
        ("message_stop", 0),
    ];
    let got: Vec<(&str, u64)> = types.iter().map(|(n, d)| (n.as_str(), *d)).collect();
    assert_eq!(got, want);
}

#[test]
fn fail_rate_zero_never_one_always() {
    let never = Knobs {
        fail_rate: 0.0,
        ..Knobs::default()
    };
    let always = Knobs {
        fail_rate: 1.0,
        fail_status: 500,
        ..Knobs::default()
    };
    for roll in [0.0, 0.3, 0.999_999] {
        let rolls = Rolls {
            fail: roll,
            reset: 0.5,
        };
        let plan = plan_for(post("/v1/chat/completions", CHAT), &never, rolls);
        assert_eq!(whole(&plan).0, 200, "fail-rate 0, roll {roll}");
        let plan = plan_for(post("/v1/chat/completions", CHAT), &always, rolls);
        let (status, headers, body) = whole(&plan);
        assert_eq!(status, 500, "fail-rate 1, roll {roll}");
        assert!(header(&headers, "retry-after").is_none());
        let v = json(&body);
        assert_eq!(v["error"]["type"], "server_error");
        assert!(v["error"]["param"].is_null());
    }
}

#[test]
fn rate_limited_429_with_retry_after() {
    let knobs = Knobs {
        fail_rate: 1.0,
        fail_status: 429,
        ..Knobs::default()
    };
    let plan = plan_for(post("/v1/chat/completions", CHAT), &knobs, NO_ROLL);
    assert_eq!(
        plan.end,
        End::KeepAlive,
        "an injected failure keeps the connection"
    );
    let (status, headers, body) = whole(&plan);
    assert_eq!(status, 429);
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    let v = json(&body);
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert!(v["error"]["message"].is_string());
    // Anthropic's error shape on /v1/messages.
    let plan = plan_for(post("/v1/messages", CHAT), &knobs, NO_ROLL);
    let v = json(&whole(&plan).2);
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "rate_limit_error");
}

#[test]
fn echo_describes_the_request() {
    let knobs = Knobs {
        echo: true,
        ..Knobs::default()
    };
    let raw = b"PUT /any/path?x=1 HTTP/1.1\r\nHost: h\r\nX-Quote: a\"b\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel\"l\r\n1\r\n\xff\r\n0\r\n\r\n";
    let plan = plan_for(raw, &knobs, NO_ROLL);
    let (status, _, body) = whole(&plan);
    assert_eq!(status, 200);
    let v = json(&body);
    assert_eq!(v["method"], "PUT");
    assert_eq!(v["path"], "/any/path?x=1");
    assert_eq!(
        v["headers"],
        serde_json::json!([
            ["Host", "h"],
            ["X-Quote", "a\"b"],
            ["Transfer-Encoding", "chunked"]
        ])
    );
    assert_eq!(v["body"], "hel\"l\u{fffd}", "de-chunked, UTF-8 lossy");
}

#[test]
fn embeddings_models_and_errors() {
    let body = r#"{"model":"emb","input":["abcd","efgh"]}"#;
    let v = json(
        &whole(&plan_for(
            post("/v1/embeddings", body),
            &Knobs::default(),
            NO_ROLL,
        ))
        .2,
    );
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "emb");
    let data = v["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        assert_eq!(d["embedding"].as_array().map(Vec::len), Some(EMBEDDING_DIM));
    }
    assert_eq!(
        v["usage"],
        serde_json::json!({"prompt_tokens": 2, "total_tokens": 2})
    );

    let plan = plan_for(
        "GET /v1/models HTTP/1.1\r\n\r\n",
        &Knobs::default(),
        NO_ROLL,
    );
    let v = json(&whole(&plan).2);
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], DEFAULT_MODEL);

    let status = |raw: &str| whole(&plan_for(raw, &Knobs::default(), NO_ROLL)).0;
    assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
    assert_eq!(status("GET /v1/chat/completions HTTP/1.1\r\n\r\n"), 405);
    assert_eq!(status(&post("/v1/chat/completions", "{not json")), 400);
}

#[test]
fn refusals_close_the_connection() {
    let mut plan = Plan::default();
    refusal(
        Refusal {
            status: 413,
            message: "too large",
        },
        &mut plan,
    );
    assert_eq!(plan.end, End::Close);
    let (status, headers, body) = whole(&plan);
    assert_eq!(status, 413);
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert_eq!(json(&body)["error"]["code"], "request_too_large");
}

#[test]
fn words_need_no_escaping() {
    for w in WORDS {
        let mut out = Vec::new();
        write_str(&mut out, w);
        assert_eq!(out.len(), w.len() + 2, "{w}");
    }
}

#[test]
fn numbers_and_hex() {
    let mut out = Vec::new();
    num(&mut out, 0);
    out.push(b' ');
    num(&mut out, u64::MAX);
    out.push(b' ');
    hex(&mut out, 0);
    out.push(b' ');
    hex(&mut out, 0x1a2f);
    assert_eq!(out, b"0 18446744073709551615 0 1a2f");
}

#[test]
fn reasoning_rides_beside_the_chat_answer_and_first_in_its_stream() {
    let knobs = Knobs {
        chunks: 2,
        reasoning: true,
        ..Knobs::default()
    };
    let (_, _, body) = whole(&plan_for(
        post("/v1/chat/completions", CHAT),
        &knobs,
        NO_ROLL,
    ));
    let v = json(&body);
    assert_eq!(v["choices"][0]["message"]["reasoning_content"], REASONING);
    assert_eq!(v["choices"][0]["message"]["content"], "This is");
    // Streamed: one reasoning event before the content; content and usage as without it.
    let plan = plan_for(
        post("/v1/chat/completions", &stream_body(true)),
        &knobs,
        NO_ROLL,
    );
    let (_, events, _) = stream_frames(&plan);
    assert_eq!(events.len(), 5, "reasoning, 2 chunks, usage, [DONE]");
    let first = data_json(&events[0].1);
    assert_eq!(first["choices"][0]["delta"]["reasoning_content"], REASONING);
    assert!(first["choices"][0]["delta"].get("content").is_none());
    assert_eq!(data_json(&events[3].1)["usage"]["completion_tokens"], 2);
    // Embeddings and Anthropic answers do not change.
    let (_, _, body) = whole(&plan_for(
        post(
            "/v1/messages",
            r#"{"model":"m","max_tokens":5,"messages":[]}"#,
        ),
        &knobs,
        NO_ROLL,
    ));
    assert!(!String::from_utf8_lossy(&body).contains("reasoning"));
}

/// A chat request with `tools`, its last message of `last_role` with `last_content`.
fn tools_body(stream: bool, last_role: &str, last_content: &str) -> String {
    format!(
        r#"{{"model":"gpt-test","stream":{stream},"stream_options":{{"include_usage":true}},"tools":[{{"type":"function","function":{{"name":"lookup","parameters":{{"type":"object"}}}}}},{{"type":"function","function":{{"name":"other","parameters":{{}}}}}}],"messages":[{{"role":"user","content":"Find it"}},{{"role":"{last_role}","tool_call_id":"call_1","content":{last_content}}}]}}"#
    )
}

#[test]
fn tools_answer_a_call_of_the_first_tool() {
    let knobs = Knobs {
        chunks: 3,
        tools: true,
        ..Knobs::default()
    };
    let body = tools_body(false, "user", r#""again""#);
    let (status, _, resp) = whole(&plan_for(
        post("/v1/chat/completions", &body),
        &knobs,
        NO_ROLL,
    ));
    assert_eq!(status, 200);
    let v = json(&resp);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        serde_json::json!([{"id": "call_mock_0-7", "type": "function", "function": {"name": "lookup", "arguments": "{\"query\":\"mock\"}"}}])
    );
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // Streamed: the call's first delta, its arguments in two pieces, the finish, usage, [DONE].
    let plan = plan_for(
        post(
            "/v1/chat/completions",
            &tools_body(true, "user", r#""again""#),
        ),
        &knobs,
        NO_ROLL,
    );
    let (_, events, terminated) = stream_frames(&plan);
    assert!(terminated);
    assert_eq!(events.len(), 6, "{events:?}");
    let first = data_json(&events[0].1);
    assert_eq!(
        first["choices"][0]["delta"],
        serde_json::json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": "call_mock_0-7", "type": "function", "function": {"name": "lookup", "arguments": ""}}]})
    );
    let mut arguments = String::new();
    for (_, event) in &events[1..3] {
        let call = &data_json(event)["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(call["index"], 0);
        assert!(call.get("id").is_none());
        arguments.push_str(call["function"]["arguments"].as_str().expect("a piece"));
    }
    assert_eq!(arguments, r#"{"query":"mock"}"#);
    assert_eq!(
        data_json(&events[3].1)["choices"][0]["finish_reason"],
        "tool_calls"
    );
    assert_eq!(data_json(&events[4].1)["usage"]["completion_tokens"], 3);
    assert_eq!(events[5].1, "data: [DONE]\n\n");

    // A reset cuts the call after its first piece.
    let reset = Rolls {
        fail: 0.5,
        reset: 0.0,
    };
    let knobs_reset = Knobs {
        reset_rate: 0.5,
        ..knobs.clone()
    };
    let plan = plan_for(
        post(
            "/v1/chat/completions",
            &tools_body(true, "user", r#""again""#),
        ),
        &knobs_reset,
        reset,
    );
    assert_eq!(plan.end, End::Reset);
    let (_, events, terminated) = stream_frames(&plan);
    assert!(!terminated);
    assert_eq!(events.len(), 2);
}

#[test]
fn tools_answer_a_tool_result_with_a_quote() {
    let knobs = Knobs {
        chunks: 2,
        tools: true,
        ..Knobs::default()
    };
    let result = "The weather in Paris: 15 degrees, light rain \u{e9}\u{e9} and more text after";
    let quoted: String = result.chars().take(TOOL_QUOTE_CHARS_MAX).collect();
    let body = tools_body(false, "tool", &serde_json::to_string(result).expect("JSON"));
    let (_, _, resp) = whole(&plan_for(
        post("/v1/chat/completions", &body),
        &knobs,
        NO_ROLL,
    ));
    let v = json(&resp);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("The tool said: \"{quoted}\". This is")
    );
    assert!(v["choices"][0]["message"].get("tool_calls").is_none());
    // Text parts count too; streamed, the quote is the first content event.
    let body = tools_body(true, "tool", r#"[{"type":"text","text":"42"}]"#);
    let plan = plan_for(post("/v1/chat/completions", &body), &knobs, NO_ROLL);
    let (_, events, _) = stream_frames(&plan);
    let text: String = events
        .iter()
        .filter(|(_, e)| e != "data: [DONE]\n\n")
        .filter_map(|(_, e)| {
            data_json(e)["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "The tool said: \"42\". This is");
}

#[test]
fn tools_change_nothing_without_the_flag_or_without_tools() {
    let body = tools_body(false, "user", r#""again""#);
    let plain = Knobs {
        chunks: 2,
        ..Knobs::default()
    };
    let with_tools = Knobs {
        tools: true,
        ..plain.clone()
    };
    // Without the flag: the usual text, tools or not.
    let (_, _, resp) = whole(&plan_for(
        post("/v1/chat/completions", &body),
        &plain,
        NO_ROLL,
    ));
    assert_eq!(json(&resp)["choices"][0]["message"]["content"], "This is");
    // With it, a request without tools, the legacy completions and Anthropic's endpoint:
    // the same bytes as without the flag.
    for (path, body) in [
        ("/v1/chat/completions", CHAT.to_owned()),
        ("/v1/chat/completions", stream_body(true)),
        ("/v1/completions", r#"{"prompt":"x","tools":[]}"#.to_owned()),
        (
            "/v1/messages",
            r#"{"model":"m","max_tokens":5,"tools":[{"name":"f","input_schema":{}}],"messages":[{"role":"user","content":"x"}]}"#.to_owned(),
        ),
    ] {
        let a = plan_for(post(path, &body), &plain, NO_ROLL);
        let b = plan_for(post(path, &body), &with_tools, NO_ROLL);
        assert_eq!(a.bytes, b.bytes, "{path} {body}");
    }
    assert_eq!(ToolTurn::of(b"not json"), None);
    assert_eq!(ToolTurn::of(br#"{"tools":[],"messages":[]}"#), None);
    assert_eq!(
        ToolTurn::of(br#"{"tools":[],"messages":[{"role":"user","content":"x"}]}"#),
        None
    );
}

#[test]
fn azure_deployment_paths_answer_as_openais() {
    let path = format!(
        "{}{}",
        "/openai/deployments/gpt4o-eu", "/chat/completions?api-version=2025-02-01-preview"
    );
    let plan = plan_for(post(&path, CHAT), &Knobs::default(), NO_ROLL);
    let (status, _, body) = whole(&plan);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["object"], "chat.completion");
    let emb = format!("{}{}", "/openai/deployments/e", "/embeddings");
    let plan = plan_for(post(&emb, r#"{"input":"hi"}"#), &Knobs::default(), NO_ROLL);
    assert_eq!(whole(&plan).0, 200);
    // No deployment name, or another tail: not an endpoint.
    for p in [
        "/openai/deployments//chat/completions",
        "/openai/deployments/x/files",
    ] {
        let plan = plan_for(post(p, CHAT), &Knobs::default(), NO_ROLL);
        assert_eq!(whole(&plan).0, 404, "{p}");
    }
}
