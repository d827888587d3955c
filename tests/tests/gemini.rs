//! Google Gemini upstreams (issue 20): OpenAI chat clients reach `generateContent` and
//! `streamGenerateContent?alt=sse` of a strict Gemini mock (`shardgate_tests::gemini_mock`),
//! with the upstream's key as `x-goog-api-key` and no credential a client sent; tools work both
//! ways with Gemini's thought signatures carried through the tool call ids; Gemini's usage,
//! thoughts, 429s and what it cannot express come back in OpenAI's terms.

use serde_json::{json, Value};
use shardgate_tests::gemini_mock::{
    gemini_upstream, signature_for, CALL_TOKENS, PROMPT_TOKENS, QUOTA_RETRY_DELAY_S, THOUGHT_TEXT,
    THOUGHT_TOKENS,
};
use shardgate_tests::providers::{
    self, json_of, one_upstream_config, openai_error, post_with_client_credentials, sse_events,
    stream_text,
};
use shardgate_tests::{Client, Gateway, MockUpstream};

const KEY_VAR: &str = "SG_TEST_GEMINI_KEY";
const KEY: &str = "AIza-upstream-secret";

fn start() -> (MockUpstream, Gateway) {
    let up = gemini_upstream(KEY);
    let cfg = one_upstream_config(
        "gemini",
        &format!(
            "provider = \"gemini\"\nendpoints = [\"http://{}\"]\napi_key_env = \"{KEY_VAR}\"",
            up.addr()
        ),
        r#"[[models]]
name = "gemini-flash"
deployments = [{ upstream = "gemini", model = "gemini-2.0-flash" }]

[[models]]
name = "gemini-quota"
deployments = [{ upstream = "gemini", model = "gemini-quota" }]

[[models]]
name = "gemini-mixed"
strategy = "round_robin"
retries = 0
deployments = [{ upstream = "gemini", model = "gemini-quota" }, { upstream = "gemini", model = "gemini-2.0-flash" }]
"#,
    );
    let gw = Gateway::start_with_env(&cfg, &[(KEY_VAR, KEY)]);
    (up, gw)
}

/// POSTs `body` to `path` with every provider's credential header, as a client might.
fn post(c: &mut Client, path: &str, body: &Value) -> shardgate_tests::Response {
    post_with_client_credentials(c, path, &body.to_string())
}

/// The last request the mock received.
fn last_request(up: &MockUpstream) -> shardgate_tests::Request {
    up.requests().last().cloned().expect("a request upstream")
}

fn assert_no_client_secret(req: &shardgate_tests::Request) {
    providers::assert_no_client_secret(req, &[]);
    let raw = format!("{:?} {:?}", req.path, req.headers);
    assert_eq!(req.headers_named("x-goog-api-key"), [KEY], "{raw}");
}

const WEATHER_TOOL: &str = r#"[{"type":"function","function":{"name":"get_weather","description":"The weather of a city","parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"],"additionalProperties":false}}}]"#;

fn tools() -> Value {
    serde_json::from_str(WEATHER_TOOL).expect("valid JSON")
}

#[test]
fn whole_and_streamed_text_reach_gemini_with_only_the_upstreams_key() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions?key=AIza-client",
        &json!({"model": "gemini-flash", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}
        ], "max_tokens": 50, "temperature": 0.2, "stop": ["END"]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    // The deployment's model is reported, as for every translated upstream.
    assert_eq!(v["model"], "gemini-2.0-flash");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hello from gemini-2.0-flash."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], PROMPT_TOKENS + 3);
    let seen = last_request(&up);
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_no_client_secret(&seen);
    let sent: Value = serde_json::from_slice(&seen.body).expect("JSON upstream");
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}})
    );
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 50, "temperature": 0.2, "stopSequences": ["END"]})
    );

    // Streamed, with the usage chunk asked for.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{}",
        r.summary()
    );
    let evs = sse_events(&r.body);
    assert_eq!(stream_text(&evs, "content"), "Hello from gemini-2.0-flash.");
    assert!(evs.len() > 4, "the text came in several chunks: {evs:?}");
    let finish: Vec<&Value> = evs
        .iter()
        .filter_map(|e| e["choices"][0].get("finish_reason"))
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("stop")]);
    let usage = &evs.last().expect("events")["usage"];
    assert_eq!(usage["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(usage["completion_tokens"], 3);
    let seen = last_request(&up);
    assert_eq!(
        seen.path,
        "/v1beta/models/gemini-2.0-flash:streamGenerateContent?alt=sse"
    );
    assert_no_client_secret(&seen);

    // Without asking, no usage chunk.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "stream": true,
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(!r.body_str().contains("\"usage\""), "{}", r.body_str());
}

#[test]
fn a_tool_loop_carries_gemini_thought_signatures() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "messages": [question], "tools": tools(), "tool_choice": "auto"}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls", "{v}");
    let message = v["choices"][0]["message"].clone();
    assert_eq!(message["content"], Value::Null);
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\":\"Paris\"}");
    let id = call["id"].as_str().expect("an id").to_owned();
    assert!(id.starts_with("call_"), "{id}");
    assert_eq!(v["usage"]["completion_tokens"], CALL_TOKENS);
    let sent: Value = serde_json::from_slice(&last_request(&up).body).expect("JSON");
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "AUTO"}})
    );
    assert_eq!(
        sent["tools"][0]["functionDeclarations"][0]["parametersJsonSchema"]["additionalProperties"],
        false
    );

    // The result goes back with the assistant message as the client got it: the mock checks
    // the signature is on the call and the response names the call's function.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "tools": tools(), "messages": [
            question,
            message,
            {"role": "tool", "tool_call_id": id, "content": "{\"temp_c\": 21}"}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Tool get_weather returned {\"temp_c\":21}."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent: Value = serde_json::from_slice(&last_request(&up).body).expect("JSON");
    assert_eq!(
        sent["contents"][1]["parts"][0]["thoughtSignature"],
        signature_for("get_weather")
    );
    assert_eq!(
        sent["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"result": {"temp_c": 21}}}})
    );

    // Without the signature (a client that made its own id), Gemini refuses: its 400 comes
    // back in OpenAI's shape.
    let unsigned = json!({"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_mine", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
    ]});
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "tools": tools(), "messages": [
            question, unsigned,
            {"role": "tool", "tool_call_id": "call_mine", "content": "sunny"}
        ]}),
    );
    let e = openai_error(&r, 400, "thought_signature");
    assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
}

#[test]
fn streamed_tool_calls_come_whole_and_go_back_signed() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let question = json!({"role": "user", "content": "What is the weather in Paris?"});
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "stream": true, "messages": [question], "tools": tools(), "tool_choice": "required"}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let evs = sse_events(&r.body);
    // Accumulate the deltas as the openai SDK does.
    let (mut id, mut name, mut arguments) = (String::new(), String::new(), String::new());
    for e in &evs {
        for d in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(d["index"], 0, "{d}");
            id.push_str(d["id"].as_str().unwrap_or_default());
            name.push_str(d["function"]["name"].as_str().unwrap_or_default());
            arguments.push_str(d["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert_eq!(name, "get_weather");
    assert_eq!(arguments, "{\"city\":\"Paris\"}");
    assert!(evs
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
    let sent: Value = serde_json::from_slice(&last_request(&up).body).expect("JSON");
    assert_eq!(
        sent["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY"}})
    );

    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "stream": true, "tools": tools(), "messages": [
            question,
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ]},
            {"role": "tool", "tool_call_id": id, "content": "sunny"}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        stream_text(&sse_events(&r.body), "content"),
        "Tool get_weather returned \"sunny\"."
    );
}

#[test]
fn thoughts_arrive_as_reasoning_content_and_count_as_completion() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    let message = &v["choices"][0]["message"];
    assert_eq!(message["reasoning_content"], THOUGHT_TEXT);
    assert_eq!(message["content"], "Hello from gemini-2.0-flash.");
    assert_eq!(v["usage"]["completion_tokens"], 3 + THOUGHT_TOKENS);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        THOUGHT_TOKENS
    );
    let sent: Value = serde_json::from_slice(&last_request(&up).body).expect("JSON");
    assert_eq!(
        sent["generationConfig"]["thinkingConfig"],
        json!({"thinkingLevel": "LOW", "includeThoughts": true})
    );

    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "stream": true, "reasoning_effort": "low",
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let evs = sse_events(&r.body);
    assert_eq!(stream_text(&evs, "reasoning_content"), THOUGHT_TEXT);
    assert_eq!(stream_text(&evs, "content"), "Hello from gemini-2.0-flash.");
}

#[test]
fn a_gemini_429_is_an_openai_429_with_retry_after() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-quota", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    let e = openai_error(&r, 429, "quota");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    assert_eq!(e["error"]["type"], "requests", "{e}");
    assert_eq!(
        r.header("retry-after"),
        Some(QUOTA_RETRY_DELAY_S.to_string().as_str()),
        "{}",
        r.summary()
    );
    assert!(up
        .requests()
        .iter()
        .any(|q| q.path == "/v1beta/models/gemini-quota:generateContent"));
}

/// Gemini's wait (only in its body's `RetryInfo`) keeps the balancer away from that deployment
/// for as long: round robin over two deployments, the quota one answers 429 once (no retry in
/// this group, so the 429 and its body reach the client), then the next calls all go to the
/// other one, within the 7 s.
#[test]
fn a_gemini_retry_delay_keeps_the_balancer_away() {
    let (up, gw) = start();
    let asked_quota = || {
        up.requests()
            .iter()
            .filter(|q| q.path.contains("gemini-quota"))
            .count()
    };
    let mut statuses = Vec::new();
    for _ in 0..8 {
        let mut c = Client::connect(gw.addr());
        let r = post(
            &mut c,
            "/v1/chat/completions",
            &json!({"model": "gemini-mixed", "messages": [{"role": "user", "content": "Hi"}]}),
        );
        statuses.push(r.status);
    }
    assert_eq!(
        asked_quota(),
        1,
        "asked again within its RetryInfo delay: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        7,
        "{statuses:?}"
    );
}

#[test]
fn what_gemini_cannot_express_is_a_400_naming_the_field() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let before = up.requests().len();
    for (field, value) in [
        ("logprobs", json!(true)),
        ("n", json!(2)),
        ("logit_bias", json!({"50256": -100})),
        ("parallel_tool_calls", json!(false)),
    ] {
        let mut body =
            json!({"model": "gemini-flash", "messages": [{"role": "user", "content": "Hi"}]});
        body[field] = value;
        let r = post(&mut c, "/v1/chat/completions", &body);
        openai_error(&r, 400, field);
    }
    // Non-function tools too.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "gemini-flash", "messages": [{"role": "user", "content": "Hi"}],
            "tools": [{"type": "web_search_preview"}]}),
    );
    assert_eq!(r.status, 400, "{}", r.summary());
    assert!(r.body_str().contains("tools"), "{}", r.body_str());
    assert_eq!(up.requests().len(), before, "{:?}", up.requests());
}

#[test]
fn anthropic_clients_reach_gemini_through_openai_chat() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/messages",
        &json!({"model": "gemini-flash", "max_tokens": 50, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["type"], "message", "{v}");
    assert_eq!(v["content"][0]["text"], "Hello from gemini-2.0-flash.");
    assert_eq!(v["usage"]["input_tokens"], PROMPT_TOKENS);
    assert_eq!(v["usage"]["output_tokens"], 3);
    let seen = last_request(&up);
    assert_eq!(seen.path, "/v1beta/models/gemini-2.0-flash:generateContent");
    assert_no_client_secret(&seen);
    let sent: Value = serde_json::from_slice(&seen.body).expect("JSON upstream");
    assert_eq!(
        sent["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(sent["generationConfig"]["maxOutputTokens"], 50);

    // Streamed: Anthropic's events, the text whole across its deltas.
    let r = post(
        &mut c,
        "/v1/messages",
        &json!({"model": "gemini-flash", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = r.body_str();
    let text: String = body
        .split("\n\n")
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter(|v| v["type"] == "content_block_delta")
        .filter_map(|v| v["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "Hello from gemini-2.0-flash.", "{body}");
    assert!(body.contains("event: message_stop"), "{body}");
}
