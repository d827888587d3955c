//! The official Python SDKs (openai, anthropic) run a tool loop, whole and streamed, through
//! the gateway to each provider it translates to (issue 20): Gemini, Bedrock and OpenAI's
//! Responses API, each behind its strict mock, and Anthropic's Messages API (the openai SDK,
//! translated; the mock here checks the Messages fields, roles and tool pairing) (`shardgate_tests::{gemini_mock, bedrock_mock,
//! responses_mock}`: unknown fields refused, Gemini's thought signatures and Bedrock's SigV4
//! checked). `tests/python/sdk_tools.py` does the talking: the model calls the tool, the
//! result goes back under the call's id, the answer quotes it. Skipped as `sdk_clients.rs` is
//! (`SHARDGATE_SKIP_SDK_TESTS=1`); on a machine without the SDKs they are installed first.

use std::io::{self, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{json, Value};
use shardgate_tests::bedrock_mock::{BedrockMock, MockCredentials};
use shardgate_tests::providers::one_upstream_config;
use shardgate_tests::python::{self, sdk_path};
use shardgate_tests::{
    gemini_mock, responses_mock, write_chunk, write_response, Action, Gateway, MockUpstream,
    Request,
};

/// How long one run of the script may take (four loops of two calls each).
const SCRIPT_WAIT: Duration = Duration::from_secs(120);
/// The model group the SDKs call.
const GROUP: &str = "tools-model";

/// A gateway whose group [`GROUP`] is `model` on one upstream described by `upstream` (its
/// `[[upstreams]]` body after the name), with `env`.
fn gateway(upstream: &str, model: &str, env: &[(&str, &str)]) -> Gateway {
    let models = format!(
        "[[models]]\nname = \"{GROUP}\"\ndeployments = [{{ upstream = \"up\", model = \"{model}\" }}]\n"
    );
    Gateway::start_with_env(&one_upstream_config("up", upstream, &models), env)
}

/// Runs the tool loops against `gw`; fails the test with what the script printed.
fn tool_loops(gw: &Gateway, extra: &[&str]) {
    let sdk_dir = match sdk_path() {
        Ok(dir) => dir,
        Err(None) => return,
        Err(Some(why)) => panic!("{why}"),
    };
    let url = gw.url();
    let mut args = vec!["--base-url", url.as_str(), "--model", GROUP];
    args.extend_from_slice(extra);
    let run = python::run_script("sdk_tools.py", &args, sdk_dir.as_ref(), SCRIPT_WAIT);
    assert!(
        run.ok && run.stdout.trim_end().ends_with("OK"),
        "{}\ngateway stderr:\n{}",
        run.summary(),
        gw.stderr()
    );
    for step in ["openai whole", "openai stream"] {
        assert!(
            run.stdout.contains(step),
            "{step} did not run: {}",
            run.summary()
        );
    }
}

#[test]
fn sdk_tool_loops_through_gemini() {
    let key = "gemini-sdk-test-key";
    let up = gemini_mock::gemini_upstream(key);
    let gw = gateway(
        &format!(
            "provider = \"gemini\"\nendpoints = [\"http://{}\"]\napi_key_env = \"SG_TEST_GEMINI_KEY\"",
            up.addr()
        ),
        "gemini-2.5-flash",
        &[("SG_TEST_GEMINI_KEY", key)],
    );
    tool_loops(&gw, &[]);
    // The signed calls went back with their signatures: the mock refuses a call without one,
    // and every request it refused would have failed the script.
    let calls_back = up
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("thoughtSignature"))
        .count();
    assert!(calls_back >= 4, "{calls_back} requests carried a call back");
}

#[test]
fn sdk_tool_loops_through_bedrock() {
    let creds = MockCredentials {
        access_key_id: "AKIDSDKTOOLS".into(),
        secret_access_key: "sdk/tools/SECRETEXAMPLE".into(),
        session_token: None,
        region: "eu-west-1".into(),
    };
    let mock = BedrockMock::start(creds.clone());
    let gw = gateway(
        &format!(
            "provider = \"bedrock\"\nendpoints = [\"http://{}\"]\nregion = \"eu-west-1\"",
            mock.addr()
        ),
        "anthropic.claude-3-5-sonnet-20240620-v1:0",
        &[
            ("AWS_ACCESS_KEY_ID", &creds.access_key_id),
            ("AWS_SECRET_ACCESS_KEY", &creds.secret_access_key),
        ],
    );
    tool_loops(&gw, &[]);
    assert!(mock.refusals().is_empty(), "{:?}", mock.refusals());
    // Two calls per loop, four loops, each signed.
    assert!(mock.verified() >= 8, "{} verified", mock.verified());
}

#[test]
fn sdk_tool_loops_through_the_responses_api() {
    let key = "sk-responses-sdk";
    let up = responses_mock::start(key);
    let gw = gateway(
        &format!(
            "provider = \"openai-responses\"\nendpoints = [\"http://{}\"]\napi_key_env = \"SG_TEST_RESPONSES_KEY\"",
            up.addr()
        ),
        "gpt-5-resp",
        &[("SG_TEST_RESPONSES_KEY", key)],
    );
    tool_loops(&gw, &[]);
    let outputs = up
        .requests()
        .iter()
        .filter(|r| String::from_utf8_lossy(&r.body).contains("function_call_output"))
        .count();
    assert!(outputs >= 4, "{outputs} requests carried a tool's result");
}

/// The Messages API's request fields (a request with any other is refused, as Anthropic does).
const MESSAGES_FIELDS: [&str; 13] = [
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "metadata",
    "tools",
    "tool_choice",
    "thinking",
];

/// Why a Messages request is refused, as Anthropic checks it: unknown fields, roles, block
/// types per role, and every `tool_result` answering a `tool_use` of the turn before.
fn messages_refusal(body: &Value) -> Option<String> {
    let obj = body.as_object()?;
    if let Some(k) = obj.keys().find(|k| !MESSAGES_FIELDS.contains(&k.as_str())) {
        return Some(format!("{k}: Extra inputs are not permitted"));
    }
    if !body["max_tokens"].is_u64() {
        return Some("max_tokens: Field required".into());
    }
    let turns = body["messages"].as_array()?;
    let mut last_uses: Vec<String> = Vec::new();
    for (i, turn) in turns.iter().enumerate() {
        let role = turn["role"].as_str().unwrap_or_default();
        let blocks = turn["content"].as_array()?;
        let mut uses = Vec::new();
        for b in blocks {
            match (role, b["type"].as_str().unwrap_or_default()) {
                (_, "text") if b["text"].as_str().is_some_and(|t| !t.is_empty()) => {}
                ("assistant", "tool_use") => {
                    if !b["input"].is_object() || !b["id"].is_string() {
                        return Some(format!(
                            "messages.{i}: tool_use needs an id and an object input"
                        ));
                    }
                    uses.push(b["id"].as_str().unwrap_or_default().to_owned());
                }
                ("user", "tool_result") => {
                    let id = b["tool_use_id"].as_str().unwrap_or_default();
                    if !last_uses.iter().any(|u| u == id) {
                        return Some(format!(
                            "messages.{i}: tool_result {id} answers no tool_use of the turn before"
                        ));
                    }
                }
                (r, t) => return Some(format!("messages.{i}: a {t} block in a {r} turn")),
            }
        }
        if !matches!((i % 2, role), (0, "user") | (1, "assistant")) {
            return Some(format!(
                "messages.{i}: roles must alternate, starting with user"
            ));
        }
        last_uses = uses;
    }
    if !last_uses.is_empty() {
        return Some("the last assistant turn's tool_use has no tool_result".into());
    }
    None
}

/// An Anthropic Messages upstream for tool loops: with `tools` and a last user turn of text, a
/// `tool_use` of the first tool; after `tool_result`s, text quoting them; whole or streamed.
fn anthropic_tools_upstream() -> MockUpstream {
    MockUpstream::start(|req: &Request, s: &mut TcpStream| -> io::Result<Action> {
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if req.path != "/v1/messages" || req.header("x-api-key") != Some("ant-upstream-key") {
            let e = json!({"type": "error", "error": {"type": "not_found_error", "message": "wrong path or key"}});
            write_response(s, 404, "application/json", e.to_string().as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        if let Some(why) = messages_refusal(&body) {
            let e = json!({"type": "error", "error": {"type": "invalid_request_error", "message": why}});
            write_response(s, 400, "application/json", e.to_string().as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        let last = body["messages"]
            .as_array()
            .and_then(|m| m.last())
            .cloned()
            .unwrap_or_default();
        let results: Vec<String> = last["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["type"] == "tool_result")
            .map(|b| match &b["content"] {
                Value::String(t) => t.clone(),
                v => v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| p["text"].as_str())
                    .collect(),
            })
            .collect();
        let tool = body["tools"][0]["name"].as_str().map(str::to_owned);
        let (block, stop) = match (results.is_empty(), tool) {
            (true, Some(name)) => (
                json!({"type": "tool_use", "id": format!("toolu_mock_{}", req.conn), "name": name, "input": {"city": "Paris"}}),
                "tool_use",
            ),
            (false, _) => (
                json!({"type": "text", "text": format!("The tool said: {}", results.join(" "))}),
                "end_turn",
            ),
            (true, None) => (json!({"type": "text", "text": "Hello."}), "end_turn"),
        };
        let usage = json!({"input_tokens": 21, "output_tokens": 9});
        if body["stream"] != true {
            let m = json!({"id": "msg_mock", "type": "message", "role": "assistant", "model": body["model"],
                "content": [block], "stop_reason": stop, "stop_sequence": null, "usage": usage});
            write_response(s, 200, "application/json", m.to_string().as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
        let mut event = |name: &str, data: Value| {
            write_chunk(s, format!("event: {name}\ndata: {data}\n\n").as_bytes())
        };
        event(
            "message_start",
            json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message",
            "role": "assistant", "model": body["model"], "content": [], "stop_reason": null,
            "usage": {"input_tokens": 21, "output_tokens": 1}}}),
        )?;
        if block["type"] == "tool_use" {
            let start =
                json!({"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}});
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0, "content_block": start}),
            )?;
            for piece in ["{\"city\": ", "\"Paris\"}"] {
                event(
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "input_json_delta", "partial_json": piece}}),
                )?;
            }
        } else {
            event(
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            )?;
            event(
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": block["text"]}}),
            )?;
        }
        event(
            "content_block_stop",
            json!({"type": "content_block_stop", "index": 0}),
        )?;
        event(
            "message_delta",
            json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": 9}}),
        )?;
        event("message_stop", json!({"type": "message_stop"}))?;
        s.write_all(b"0\r\n\r\n")?;
        Ok(Action::KeepAlive)
    })
}

#[test]
fn openai_sdk_tool_loops_through_anthropic() {
    let up = anthropic_tools_upstream();
    let gw = gateway(
        &format!(
            "provider = \"anthropic\"\nendpoints = [\"http://{}\"]\napi_key_env = \"SG_TEST_ANT_KEY\"",
            up.addr()
        ),
        "claude-sonnet-4-5",
        &[("SG_TEST_ANT_KEY", "ant-upstream-key")],
    );
    // The anthropic SDK would pass through untranslated: only the openai SDK's loops.
    tool_loops(&gw, &["--skip-anthropic"]);
    let bodies: Vec<Value> = up
        .requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap_or_default())
        .collect();
    assert_eq!(bodies.len(), 4, "two loops of two calls");
    for b in &bodies {
        assert!(messages_refusal(b).is_none(), "{b}");
        assert_eq!(
            b["tools"][0]["input_schema"]["required"],
            json!(["city"]),
            "{b}"
        );
    }
    // The second call of each loop carried the tool_use back and its result.
    for b in [&bodies[1], &bodies[3]] {
        assert_eq!(b["messages"][1]["content"][0]["type"], "tool_use", "{b}");
        assert_eq!(b["messages"][2]["content"][0]["type"], "tool_result", "{b}");
    }
}
