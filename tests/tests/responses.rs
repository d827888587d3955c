//! OpenAI's Responses API (issue 20), end to end against the strict mock
//! (`shardgate_tests::responses_mock`): a Responses client (`POST /v1/responses`, whole and
//! streamed) reaches an `openai-responses` upstream with the model rewritten to the
//! deployment's and its usage counted (cached and reasoning tokens priced apart); a chat
//! completions client reaches a model served only through the Responses API, translated, whole
//! and streamed, through a tool loop; what the Responses API cannot express (`stop`) is a 400
//! naming the field; the upstream's 429 reaches the client as a 429. Last, the official `openai`
//! Python SDK (`tests/python/sdk_responses.py`) against the gateway, as `sdk_clients.rs` runs
//! its script (skipped the same way).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};
use shardgate_tests::providers::{json_of, post_with_headers, sse_data};
use shardgate_tests::python::{self, sdk_path};
use shardgate_tests::responses_mock::{
    self, CACHED_TOKENS, CALL_ARGUMENTS, CALL_ID, INPUT_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS,
    TEXT, TOOL_ANSWER_PREFIX,
};
use shardgate_tests::{wait_until, Client, Gateway, MockUpstream, TempDir};

const KEY_VAR: &str = "SG_TEST_RESPONSES_KEY";
const KEY: &str = "sk-responses-upstream-key";
/// The tenant's key: usage is metered for a tenant's requests.
const TENANT_KEY: &str = "sk-responses-tenant-key";
/// The deployment's own name for the model the clients call `o-resp`.
const UPSTREAM_MODEL: &str = "gpt-5-resp";
/// The cost of one answer at the prices below (USD per million: input 2.5, cached 1.25, output
/// 10, reasoning 20): 600 × 2.5 + 400 × 1.25 + 200 × 10 + 100 × 20 = 6,000 µUSD.
const COST_USD: f64 = ((INPUT_TOKENS - CACHED_TOKENS) as f64 * 2.5
    + CACHED_TOKENS as f64 * 1.25
    + (OUTPUT_TOKENS - REASONING_TOKENS) as f64 * 10.0
    + REASONING_TOKENS as f64 * 20.0)
    / 1e6;

/// The issue's config, with a tenant (only a tenant's requests are metered, so `auth = "keys"`
/// rather than `"none"`), an access log (where each request's tokens and cost are seen), a price
/// for the deployment's model, and a second group whose deployment answers 429.
fn config(up: &MockUpstream, dir: &Path) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 1
auth = "keys"
access_log = "{log}"

[[tenants]]
name = "resp"
keys = ["sha256:{tenant_key}"]

[[upstreams]]
name = "openai-responses"
provider = "openai-responses"
endpoints = ["http://{addr}"]
api_key_env = "{KEY_VAR}"

[[models]]
name = "o-resp"
deployments = [{{ upstream = "openai-responses", model = "{UPSTREAM_MODEL}" }}]

[[models]]
name = "o-quota"
deployments = [{{ upstream = "openai-responses", model = "{quota}" }}]

[pricing]
default_table = false

[[prices]]
model = "{UPSTREAM_MODEL}"
input_usd_per_mtok = 2.5
cached_input_usd_per_mtok = 1.25
output_usd_per_mtok = 10
reasoning_usd_per_mtok = 20
"#,
        log = dir.join("access.jsonl").display(),
        addr = up.addr(),
        quota = responses_mock::QUOTA_MODEL,
        tenant_key = shardgate_tests::sha256_hex(TENANT_KEY),
    )
}

fn start(tag: &str) -> (MockUpstream, Gateway, TempDir) {
    let tmp = TempDir::new(tag);
    let up = responses_mock::start(KEY);
    let gw = Gateway::start_with_env(&config(&up, tmp.path()), &[(KEY_VAR, KEY)]);
    (up, gw, tmp)
}

/// POSTs `body` to `path` with the tenant's bearer key (which must not reach the upstream).
fn post(c: &mut Client, path: &str, body: &Value) -> shardgate_tests::Response {
    let bearer = format!("Bearer {TENANT_KEY}");
    post_with_headers(
        c,
        path,
        &[("Authorization", bearer.as_str())],
        &body.to_string(),
    )
}

/// The upstream's request bodies, checked for what every one must have.
fn upstream_bodies(up: &MockUpstream) -> Vec<Value> {
    up.requests()
        .iter()
        .map(|r| {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", "/v1/responses")
            );
            let raw = format!("{:?}", r.headers);
            assert!(!raw.contains(TENANT_KEY), "{raw}");
            serde_json::from_slice(&r.body).expect("JSON")
        })
        .collect()
}

/// The access log's lines for `path`, once there are `n`.
fn log_lines(tmp: &TempDir, path: &str, n: usize) -> Vec<Value> {
    let read = || -> Vec<Value> {
        std::fs::read_to_string(tmp.path().join("access.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["path"] == path)
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || read().len() >= n),
        "access log for {path}: {:?}",
        read()
    );
    read()
}

/// Each line counts one answer's tokens, at its price (cached and reasoning tokens apart).
fn assert_counted(lines: &[Value]) {
    for l in lines {
        assert_eq!(l["status"], 200, "{l}");
        assert_eq!(l["tenant"], "resp", "{l}");
        assert_eq!(
            (l["tokens_in"].as_u64(), l["tokens_out"].as_u64()),
            (Some(INPUT_TOKENS), Some(OUTPUT_TOKENS)),
            "{l}"
        );
        let cost = l["cost_usd"].as_f64().unwrap_or(-1.0);
        assert!(
            (cost - COST_USD).abs() < 1e-12,
            "cost {cost}, want {COST_USD}: {l}"
        );
    }
}

#[test]
fn responses_clients_pass_through_with_the_deployments_model_and_are_counted() {
    let (up, gw, tmp) = start("responses-pass");
    let mut c = Client::connect(gw.addr());

    // Whole.
    let r = post(
        &mut c,
        "/v1/responses",
        &json!({"model": "o-resp", "input": "Hello", "instructions": "Be brief.", "max_output_tokens": 64}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["object"], "response");
    assert_eq!(v["output"][1]["content"][0]["text"], TEXT);
    assert_eq!(
        v["usage"]["input_tokens_details"]["cached_tokens"],
        CACHED_TOKENS
    );

    // Streamed: the events relayed as they are (no [DONE] added), usage in response.completed.
    let r = post(
        &mut c,
        "/v1/responses",
        &json!({"model": "o-resp", "stream": true, "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]}
        ]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{}",
        r.summary()
    );
    let (evs, done) = sse_data(&r.body);
    assert!(!done, "a Responses stream has no [DONE]");
    let text: String = evs
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    assert_eq!(text, TEXT);
    let last = evs.last().expect("events");
    assert_eq!(last["type"], "response.completed");
    assert_eq!(last["response"]["usage"]["output_tokens"], OUTPUT_TOKENS);
    for (i, e) in evs.iter().enumerate() {
        assert_eq!(e["sequence_number"], i, "{e}");
    }

    // The upstream was asked for the deployment's model, with nothing added (a Responses
    // stream needs no `stream_options`; the strict mock would refuse `include_usage`).
    let bodies = upstream_bodies(&up);
    assert_eq!(bodies.len(), 2);
    for b in &bodies {
        assert_eq!(b["model"], UPSTREAM_MODEL, "{b}");
        assert!(b.get("stream_options").is_none(), "{b}");
    }
    assert_eq!(bodies[0]["instructions"], "Be brief.");
    assert_eq!(bodies[1]["stream"], true);

    // Counted, whole and streamed: in the access log and the tenant's token counters.
    assert_counted(&log_lines(&tmp, "/v1/responses", 2));
    assert_tenant_tokens(&gw, 2);
}

/// The tenant's token counters in `/metrics` hold `answers` answers' usage.
fn assert_tenant_tokens(gw: &Gateway, answers: u64) {
    let input = format!(
        "shardgate_tenant_tokens_total{{tenant=\"resp\",gen_ai_token_type=\"input\"}} {}",
        answers * INPUT_TOKENS
    );
    let output = format!(
        "shardgate_tenant_tokens_total{{tenant=\"resp\",gen_ai_token_type=\"output\"}} {}",
        answers * OUTPUT_TOKENS
    );
    let counted = wait_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        m.contains(&input) && m.contains(&output)
    });
    assert!(counted, "want {input:?} and {output:?}:\n{}", gw.metrics());
}

/// A chat request for `o-resp` with the weather tool.
fn chat_with_tool(stream: bool, messages: Value) -> Value {
    let mut b = json!({
        "model": "o-resp",
        "messages": messages,
        "tools": [{"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        }}],
        "max_completion_tokens": 64
    });
    if stream {
        b["stream"] = json!(true);
        b["stream_options"] = json!({"include_usage": true});
    }
    b
}

fn first_turn() -> Value {
    json!([
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"}
    ])
}

fn second_turn() -> Value {
    json!([
        {"role": "system", "content": "You are a weather bot."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS}}
        ]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "18C"}
    ])
}

fn assert_chat_usage(u: &Value) {
    assert_eq!(u["prompt_tokens"], INPUT_TOKENS, "{u}");
    assert_eq!(u["completion_tokens"], OUTPUT_TOKENS, "{u}");
    assert_eq!(u["total_tokens"], INPUT_TOKENS + OUTPUT_TOKENS, "{u}");
    assert_eq!(
        u["prompt_tokens_details"]["cached_tokens"], CACHED_TOKENS,
        "{u}"
    );
    assert_eq!(
        u["completion_tokens_details"]["reasoning_tokens"], REASONING_TOKENS,
        "{u}"
    );
}

#[test]
fn chat_clients_reach_a_responses_only_model_whole() {
    let (up, gw, tmp) = start("responses-chat");
    let mut c = Client::connect(gw.addr());

    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "o-resp", "messages": [{"role": "user", "content": "Hello"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["model"], UPSTREAM_MODEL,
        "the deployment's model, as a pass-through reports it"
    );
    assert_eq!(v["choices"][0]["message"]["content"], TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_chat_usage(&v["usage"]);

    // The tool loop: a call, then the answer to its result.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &chat_with_tool(false, first_turn()),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([{"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS}}])
    );
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &chat_with_tool(false, second_turn()),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("{TOOL_ANSWER_PREFIX}18C")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");

    // What the upstream got: Responses requests for the deployment's model, stateless.
    let bodies = upstream_bodies(&up);
    assert_eq!(bodies.len(), 3);
    for b in &bodies {
        assert_eq!(b["model"], UPSTREAM_MODEL, "{b}");
        assert_eq!(b["store"], false, "{b}");
        assert!(b.get("messages").is_none(), "{b}");
    }
    assert_eq!(bodies[1]["max_output_tokens"], 64);
    assert_eq!(bodies[1]["tools"][0]["name"], "get_weather");
    let kinds: Vec<&str> = bodies[2]["input"]
        .as_array()
        .expect("input items")
        .iter()
        .map(|i| i["type"].as_str().unwrap_or("message"))
        .collect();
    assert_eq!(
        kinds,
        [
            "message",
            "message",
            "function_call",
            "function_call_output"
        ]
    );

    assert_counted(&log_lines(&tmp, "/v1/chat/completions", 3));
    assert_tenant_tokens(&gw, 3);
}

/// A streamed chat answer's text, tool calls (`(id, name, arguments)`, assembled from their
/// deltas), finish reason and usage chunk.
fn assemble(evs: &[Value]) -> (String, Vec<(String, String, String)>, String, Value) {
    let (mut text, mut calls, mut finish, mut usage) = (
        String::new(),
        Vec::<(String, String, String)>::new(),
        String::new(),
        Value::Null,
    );
    for e in evs {
        assert_eq!(e["object"], "chat.completion.chunk", "{e}");
        assert_eq!(e["model"], UPSTREAM_MODEL, "{e}");
        if e["choices"] == json!([]) {
            usage = e["usage"].clone();
            continue;
        }
        let choice = &e["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str() {
            text.push_str(t);
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = usize::try_from(call["index"].as_u64().expect("index")).expect("small");
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            if let Some(id) = call["id"].as_str() {
                calls[i].0 = id.to_owned();
            }
            if let Some(name) = call["function"]["name"].as_str() {
                calls[i].1 = name.to_owned();
            }
            if let Some(a) = call["function"]["arguments"].as_str() {
                calls[i].2.push_str(a);
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (text, calls, finish, usage)
}

#[test]
fn chat_clients_reach_a_responses_only_model_streamed() {
    let (up, gw, tmp) = start("responses-chat-stream");
    let mut c = Client::connect(gw.addr());

    let r = post(
        &mut c,
        "/v1/chat/completions",
        &chat_with_tool(true, first_turn()),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let (evs, done) = sse_data(&r.body);
    assert!(done, "[DONE] ends the stream: {}", r.summary());
    let (text, calls, finish, usage) = assemble(&evs);
    assert_eq!(text, "");
    assert_eq!(
        calls,
        [(
            CALL_ID.to_owned(),
            "get_weather".to_owned(),
            CALL_ARGUMENTS.to_owned()
        )]
    );
    assert_eq!(finish, "tool_calls");
    assert_chat_usage(&usage);

    let r = post(
        &mut c,
        "/v1/chat/completions",
        &chat_with_tool(true, second_turn()),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let (evs, done) = sse_data(&r.body);
    assert!(done);
    let (text, calls, finish, usage) = assemble(&evs);
    assert_eq!(text, format!("{TOOL_ANSWER_PREFIX}18C"));
    assert!(calls.is_empty());
    assert_eq!(finish, "stop");
    assert_chat_usage(&usage);

    // Without include_usage: no usage chunk, still counted.
    let mut b = json!({"model": "o-resp", "stream": true, "messages": [{"role": "user", "content": "Hello"}]});
    let r = post(&mut c, "/v1/chat/completions", &b);
    assert_eq!(r.status, 200, "{}", r.summary());
    let (evs, done) = sse_data(&r.body);
    assert!(done);
    let (text, _, _, usage) = assemble(&evs);
    assert_eq!(text, TEXT);
    assert_eq!(usage, Value::Null);

    let bodies = upstream_bodies(&up);
    assert_eq!(bodies.len(), 3);
    for b in &bodies {
        assert_eq!(b["stream"], true, "{b}");
        assert!(b.get("stream_options").is_none(), "{b}");
    }
    assert_counted(&log_lines(&tmp, "/v1/chat/completions", 3));

    // A stop sequence cannot be expressed: 400 naming the field, nothing sent upstream.
    b["stop"] = json!(["\n\n"]);
    let r = post(&mut c, "/v1/chat/completions", &b);
    assert_eq!(r.status, 400, "{}", r.summary());
    let message = json_of(&r)["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("`stop`"), "{message}");
    assert_eq!(
        up.requests().len(),
        3,
        "a refused request reached the upstream"
    );
}

#[test]
fn stop_is_refused_naming_the_field() {
    let (up, gw, _tmp) = start("responses-stop");
    let mut c = Client::connect(gw.addr());
    for stop in [json!("END"), json!(["a", "b"])] {
        let r = post(
            &mut c,
            "/v1/chat/completions",
            &json!({"model": "o-resp", "stop": stop, "messages": [{"role": "user", "content": "Hi"}]}),
        );
        assert_eq!(r.status, 400, "{}", r.summary());
        let v = json_of(&r);
        let message = v["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("`stop`"), "{v}");
    }
    assert!(
        up.requests().is_empty(),
        "a refused request reached the upstream"
    );
}

#[test]
fn the_upstreams_429_reaches_the_client_as_429() {
    let (up, gw, _tmp) = start("responses-429");
    let mut c = Client::connect(gw.addr());
    for (path, body) in [
        ("/v1/responses", json!({"model": "o-quota", "input": "Hi"})),
        (
            "/v1/chat/completions",
            json!({"model": "o-quota", "messages": [{"role": "user", "content": "Hi"}]}),
        ),
        (
            "/v1/chat/completions",
            json!({"model": "o-quota", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
        ),
    ] {
        let r = post(&mut c, path, &body);
        assert_eq!(r.status, 429, "{path}: {}", r.summary());
        let v = json_of(&r);
        assert!(v["error"]["message"].is_string(), "{path}: {v}");
    }
    for b in upstream_bodies(&up) {
        assert_eq!(b["model"], responses_mock::QUOTA_MODEL);
    }
}

/// How long one run of the script may take.
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

/// Runs `sdk_responses.py` against the gateway (bounded by [`SCRIPT_WAIT`]): whether it exited
/// 0, and what it printed.
fn run_script(gw: &Gateway, sdk_dir: Option<&PathBuf>) -> (bool, String) {
    let url = gw.url();
    let (input, cached) = (INPUT_TOKENS.to_string(), CACHED_TOKENS.to_string());
    let (output, reasoning) = (OUTPUT_TOKENS.to_string(), REASONING_TOKENS.to_string());
    let run = python::run_script(
        "sdk_responses.py",
        &[
            "--base-url",
            &url,
            "--api-key",
            TENANT_KEY,
            "--model",
            "o-resp",
            "--served-model",
            UPSTREAM_MODEL,
            "--text",
            TEXT,
            "--input-tokens",
            &input,
            "--cached-tokens",
            &cached,
            "--output-tokens",
            &output,
            "--reasoning-tokens",
            &reasoning,
        ],
        sdk_dir,
        SCRIPT_WAIT,
    );
    (run.ok, run.summary())
}

#[test]
fn the_openai_sdk_calls_the_responses_api_and_chat_through_it() {
    let sdk_dir = match sdk_path() {
        Ok(dir) => dir,
        Err(None) => return,
        Err(Some(why)) => panic!("{why}"),
    };
    let (up, gw, tmp) = start("responses-sdk");
    let (ok, output) = run_script(&gw, sdk_dir.as_ref());
    assert!(ok, "sdk_responses.py failed:\n{output}");
    // Two Responses calls and two chat calls, each for the deployment's model, all counted.
    let bodies = upstream_bodies(&up);
    assert_eq!(bodies.len(), 4, "{output}");
    for b in &bodies {
        assert_eq!(b["model"], UPSTREAM_MODEL, "{b}");
    }
    assert_counted(&log_lines(&tmp, "/v1/responses", 2));
    assert_counted(&log_lines(&tmp, "/v1/chat/completions", 2));
}
