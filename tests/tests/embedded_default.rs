//! The built-in mock model (the embedded default's upstream) and `--check`.

use std::time::Duration;

use shardgate_tests::{
    assert_error, dechunk, run_shardgate, split_head, wait_until, Client, Gateway,
};

/// The embedded default, on port 0 and one core so tests can run in parallel.
const MOCK_CONFIG: &str = r#"
[server]
listen = "127.0.0.1:0"
cores = 1
auth = "none"

[[upstreams]]
name = "demo"
provider = "mock"

[[routes]]
path_prefix = "/"
upstream = "demo"
"#;

/// The request the README and the start-up line suggest.
const README_CHAT: &str =
    r#"{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}"#;

fn chat(c: &mut Client, body: &str) {
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nAuthorization: Bearer sk-demo\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
}

/// Reads a streamed response and returns its `data:` payloads in order.
fn sse_payloads(c: &mut Client) -> Vec<String> {
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/event-stream")),
        "{}",
        r.summary()
    );
    let text = r.body_str();
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            e.trim()
                .strip_prefix("data:")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .trim()
                .to_owned()
        })
        .collect()
}

#[test]
fn startup_prints_try_line() {
    let gw = Gateway::start(MOCK_CONFIG);
    assert_eq!(gw.shards(), 1);
    let want = format!("try: curl -s {}/v1/chat/completions", gw.url());
    assert!(
        wait_until(Duration::from_secs(2), || gw.stdout().contains(&want)),
        "stdout lacks {want:?}: {:?}",
        gw.stdout()
    );
}

#[test]
fn mock_chat_completion() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    chat(&mut c, README_CHAT);
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    assert_eq!(j["object"], "chat.completion", "{j}");
    let content = j["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(!content.is_empty(), "empty choices[0].message.content: {j}");
    assert_eq!(j["choices"][0]["message"]["role"], "assistant", "{j}");
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert!(j["usage"][k].is_u64(), "usage.{k} missing: {j}");
    }
    // Keep-alive: a second request on the same connection.
    chat(&mut c, README_CHAT);
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn mock_chat_completion_stream() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    chat(
        &mut c,
        r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    let events = sse_payloads(&mut c);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks = &events[..events.len() - 1];
    assert!(!chunks.is_empty(), "no chunks before [DONE]");
    let mut text = String::new();
    for e in chunks {
        let j: serde_json::Value =
            serde_json::from_str(e).unwrap_or_else(|err| panic!("chunk not JSON ({err}): {e}"));
        assert_eq!(j["object"], "chat.completion.chunk", "{j}");
        if let Some(t) = j["choices"][0]["delta"]["content"].as_str() {
            text.push_str(t);
        }
        assert!(
            j.get("usage").is_none_or(|u| u.is_null()),
            "usage without include_usage: {j}"
        );
    }
    assert!(!text.is_empty(), "the streamed deltas carry no content");
}

#[test]
fn mock_chat_completion_stream_include_usage() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    chat(
        &mut c,
        r#"{"model":"demo","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    let events = sse_payloads(&mut c);
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    assert!(events.len() >= 3, "{events:?}");
    let last: serde_json::Value =
        serde_json::from_str(&events[events.len() - 2]).expect("last chunk is JSON");
    assert_eq!(last["object"], "chat.completion.chunk", "{last}");
    assert!(
        last["usage"]["total_tokens"].is_u64(),
        "no usage in the last chunk: {last}"
    );
    assert_eq!(last["choices"], serde_json::json!([]), "{last}");
}

/// On the wire, the stream to an HTTP/1.1 client is chunked and ends with the last chunk.
#[test]
fn mock_stream_is_chunked_and_complete() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    chat(
        &mut c,
        r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"Hi"}]}"#,
    );
    let raw = c.read_raw_until(b"\r\n0\r\n\r\n");
    let (head, body) = split_head(&raw).expect("head");
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    let (body, complete) = dechunk(body).expect("valid chunked body");
    assert!(complete);
    assert!(String::from_utf8_lossy(&body).ends_with("data: [DONE]\n\n"));
}

#[test]
fn mock_models_and_unknown_path() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    let r = c.get("/v1/models");
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    let ids: Vec<&str> = j["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|m| m["id"].as_str()).collect())
        .unwrap_or_default();
    assert!(ids.contains(&"demo"), "{j}");
    let r = c.get("/v1/nope");
    assert_error(&r, 404, "no_route");
}

#[test]
fn mock_completions() {
    let gw = Gateway::start(MOCK_CONFIG);
    let mut c = Client::connect(gw.addr());
    let r = c.post_json("/v1/completions", r#"{"model":"demo","prompt":"Hello"}"#);
    assert_eq!(r.status, 200, "{}", r.summary());
    let j = r.json();
    assert!(
        j["choices"].as_array().is_some_and(|a| !a.is_empty()),
        "{j}"
    );
}

fn check(config: &str) -> (Option<i32>, String) {
    let out = run_shardgate(
        &["--check", "--config", "{config}"],
        Some(config),
        Duration::from_secs(10),
    );
    let status = out.status.expect("--check did not exit within 10 s");
    (status.code(), format!("{}{}", out.stdout, out.stderr))
}

#[test]
fn check_accepts_valid_config() {
    let (code, out) = check(MOCK_CONFIG);
    assert_eq!(code, Some(0), "{out}");
}

#[test]
fn check_rejects_zero_cores() {
    let (code, out) = check(&MOCK_CONFIG.replace("cores = 1", "cores = 0"));
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("cores"),
        "the problem must name the field: {out}"
    );
}

#[test]
fn check_rejects_unknown_upstream() {
    let cfg = MOCK_CONFIG.replace("upstream = \"demo\"", "upstream = \"nowhere\"");
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("nowhere"),
        "the problem must name the upstream: {out}"
    );
}

#[test]
fn check_rejects_bad_limit_and_reports_each_problem() {
    let cfg = MOCK_CONFIG.replace(
        "cores = 1",
        "cores = 1\nheaders_count_max = 0\nheader_bytes_max = 10",
    );
    let (code, out) = check(&cfg);
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("headers_count_max"), "{out}");
    assert!(out.contains("header_bytes_max"), "{out}");
}

#[test]
fn start_refuses_bad_config() {
    let out = run_shardgate(
        &["--config", "{config}"],
        Some(&MOCK_CONFIG.replace("cores = 1", "cores = 0")),
        Duration::from_secs(10),
    );
    let status = out
        .status
        .expect("shardgate with a bad config did not exit");
    assert!(!status.success(), "started with cores = 0: {}", out.stdout);
    assert!(!out.stdout.contains("listening"), "{}", out.stdout);
}

/// The harness's own failure path: a gateway that cannot start is reported with its stderr.
#[test]
fn gateway_start_failure_reports_stderr() {
    let Err(e) = Gateway::try_start_with_env(&MOCK_CONFIG.replace("cores = 1", "cores = 0"), &[])
    else {
        panic!("started with cores = 0");
    };
    assert!(e.contains("cores"), "{e}");
}
