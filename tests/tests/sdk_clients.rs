//! The official Python SDKs against the real gateway, each through the other format: the
//! `openai` SDK calls `claude-test` (`POST /v1/chat/completions`), served by an Anthropic
//! Messages upstream; the `anthropic` SDK calls `gpt-test` (`POST /v1/messages`), served by an
//! OpenAI chat upstream. Whole and streamed, without keys and with a tenant's key.
//!
//! `tests/python/sdk_check.py` does the talking and checks what the SDKs make of the answers;
//! this file starts `shardgate-bench upstream` (the mock; both formats), a recording relay per
//! upstream in front of it (so the test sees which path, model and credentials each upstream
//! got), and the gateway. Needs `python3` with pip: when it lacks the SDKs, the pinned ones
//! (`tests/python/requirements.txt`) are installed under the test's target directory on first
//! use. `SHARDGATE_SKIP_SDK_TESTS=1` skips these tests, `SHARDGATE_PYTHON` names another
//! interpreter.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use shardgate_tests::python::{self, sdk_path, ScriptRun};
use shardgate_tests::{Action, BenchUpstream, Gateway, MockUpstream, Request};

/// The mock's `--chunks`: its answer is that many words, and `completion_tokens` says so.
const CHUNKS: &str = "8";
/// The Anthropic upstream's own key, given to the gateway as `$SG_TEST_ANTHROPIC_KEY`.
const UPSTREAM_KEY: &str = "sk-ant-upstream-test-key";
/// The tenant's key in the keyed variant.
const TENANT_KEY: &str = "sk-sdk-tenant-key";
/// The reasoning `shardgate-bench upstream --reasoning` puts in its chat answers
/// (`REASONING` in bench/src/upstream/answer.rs).
const REASONING: &str = "The user greets me; a friendly greeting back.";
/// How long one run of the script may take.
const SCRIPT_WAIT: Duration = Duration::from_secs(120);

/// A recording relay: every request is recorded (`requests()`) and passed to the mock over a
/// fresh connection (`Connection: close`), and the mock's answer, streamed or not, is copied
/// back as it comes; then the relay closes the connection too.
fn relay(to: SocketAddr) -> MockUpstream {
    MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let mut up = TcpStream::connect(to)?;
            up.set_read_timeout(Some(Duration::from_secs(30)))?;
            let mut head = format!("{} {} HTTP/1.1\r\n", req.method, req.path);
            for (k, v) in &req.headers {
                let hop = [
                    "connection",
                    "content-length",
                    "transfer-encoding",
                    "keep-alive",
                ];
                if !hop.iter().any(|h| k.eq_ignore_ascii_case(h)) {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
            }
            head.push_str(&format!(
                "content-length: {}\r\nconnection: close\r\n\r\n",
                req.body.len()
            ));
            up.write_all(head.as_bytes())?;
            up.write_all(&req.body)?;
            io::copy(&mut up, stream)?;
            Ok(Action::Close)
        },
    )
}

fn config(claude: SocketAddr, openai: SocketAddr, tenants: bool) -> String {
    let auth = if tenants {
        let hash = shardgate_tests::sha256_hex(TENANT_KEY);
        // Approved for the two models only: a model no group serves is still a 404 (the SDKs'
        // `NotFoundError`), not a 403, for a tenant that may not use it either.
        format!(
            "auth = \"keys\"\n\n[[tenants]]\nname = \"sdk\"\nkeys = [\"sha256:{hash}\"]\n\
             models = [\"claude-test\", \"gpt-test\"]\n"
        )
    } else {
        "auth = \"none\"\n".to_owned()
    };
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 1
{auth}
[[upstreams]]
name = "claude-up"
endpoints = ["http://{claude}"]
provider = "anthropic"
api_key_env = "SG_TEST_ANTHROPIC_KEY"

[[upstreams]]
name = "openai-up"
endpoints = ["http://{openai}"]
provider = "openai"

[[models]]
name = "claude-test"
deployments = [{{ upstream = "claude-up", model = "claude-upstream-model" }}]

[[models]]
name = "gpt-test"
deployments = [{{ upstream = "openai-up", model = "gpt-upstream-model" }}]
"#
    )
}

/// Runs `sdk_check.py` against the gateway (bounded by [`SCRIPT_WAIT`]).
/// The JSON result line of a run of `sdk_check.py` that succeeded (`"ok": true`); fails the
/// test with what the script printed otherwise.
fn ok_results(run: &ScriptRun) -> serde_json::Value {
    let report = || {
        format!(
            "--- sdk_check.py: {} ---\n--- stdout ---\n{}\n--- stderr ---\n{}",
            run.status, run.stdout, run.stderr
        )
    };
    assert!(run.ok, "the SDK check failed\n{}", report());
    let results: serde_json::Value = run
        .stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("no JSON result line\n{}", report()));
    assert_eq!(results["ok"], true, "{}", report());
    results
}

fn run_script(gw: &Gateway, sdk_dir: Option<&PathBuf>, key: &str, extra: &[&str]) -> ScriptRun {
    let url = gw.url();
    let mut args = vec![
        "--base-url",
        url.as_str(),
        "--api-key",
        key,
        "--chunks",
        CHUNKS,
    ];
    args.extend_from_slice(extra);
    python::run_script("sdk_check.py", &args, sdk_dir, SCRIPT_WAIT)
}

/// The requests one relay passed on, as `(path, body JSON)`, with what they must all share.
fn upstream_calls(
    name: &str,
    relay: &MockUpstream,
    path: &str,
    model: &str,
) -> Vec<serde_json::Value> {
    relay
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(
                (r.method.as_str(), r.path.as_str()),
                ("POST", path),
                "{name} got a request it should not have:\n{}",
                r.to_json()
            );
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| {
                panic!("{name} got a body that is not JSON ({e}):\n{}", r.to_json())
            });
            assert_eq!(
                body["model"],
                model,
                "{name} was not asked for its deployment's model:\n{}",
                r.to_json()
            );
            body
        })
        .collect()
}

/// Whether any header of any request the relay saw holds `needle`.
fn any_header_holds(relay: &MockUpstream, needle: &str) -> bool {
    relay
        .requests()
        .iter()
        .any(|r| r.headers.iter().any(|(_, v)| v.contains(needle)))
}

fn sdks_through_the_other_format(tenants: bool) {
    let sdk_dir = match sdk_path() {
        Ok(dir) => dir,
        Err(None) => return,
        Err(Some(why)) => panic!("{why}"),
    };
    // `--reasoning`: its chat answers carry vLLM's `reasoning_content`, which the anthropic
    // SDK must see as a thinking block.
    let mock = BenchUpstream::start(&["--chunks", CHUNKS, "--reasoning"]);
    let claude = relay(mock.addr());
    let openai = relay(mock.addr());
    let gw = Gateway::start_with_env(
        &config(claude.addr(), openai.addr(), tenants),
        &[("SG_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)],
    );
    let thinking = ["--anthropic-thinking", REASONING];
    let (key, extra): (&str, Vec<&str>) = if tenants {
        (
            TENANT_KEY,
            [&["--bad-key", "sk-no-tenant-has-this"][..], &thinking].concat(),
        )
    } else {
        ("sk-client-key-unused", thinking.to_vec())
    };
    let run = run_script(&gw, sdk_dir.as_ref(), key, &extra);
    let results = ok_results(&run);
    eprintln!("sdk_check.py: {results}");

    // The openai SDK's two answers came from the Anthropic upstream, in its format...
    let to_claude = upstream_calls(
        "claude-up",
        &claude,
        "/v1/messages",
        "claude-upstream-model",
    );
    let streamed = |calls: &[serde_json::Value]| {
        calls
            .iter()
            .filter(|b| b["stream"] == serde_json::Value::Bool(true))
            .count()
    };
    assert_eq!(
        (to_claude.len(), streamed(&to_claude)),
        (2, 1),
        "claude-up: want one whole and one streamed request, got {to_claude:#?}"
    );
    for b in &to_claude {
        assert!(
            b["max_tokens"].is_u64() && b["messages"].is_array() && b["system"].is_string(),
            "claude-up: not a Messages request: {b}"
        );
    }
    // ...with the upstream's own key, never the client's.
    assert!(
        claude.requests().iter().all(|r| {
            r.header("x-api-key") == Some(UPSTREAM_KEY)
                || r.header("authorization") == Some(&format!("Bearer {UPSTREAM_KEY}"))
        }),
        "claude-up did not get its key ($SG_TEST_ANTHROPIC_KEY):\n{:#?}",
        claude
            .requests()
            .iter()
            .map(Request::to_json)
            .collect::<Vec<_>>()
    );
    assert!(
        !any_header_holds(&claude, key),
        "the client's key reached claude-up"
    );

    // The anthropic SDK's three answers came from the OpenAI upstream, in its format.
    let to_openai = upstream_calls(
        "openai-up",
        &openai,
        "/v1/chat/completions",
        "gpt-upstream-model",
    );
    assert_eq!(
        (to_openai.len(), streamed(&to_openai)),
        (3, 2),
        "openai-up: want one whole and two streamed requests, got {to_openai:#?}"
    );
    for b in &to_openai {
        assert!(
            b["messages"].is_array() && b.get("system").is_none(),
            "openai-up: not a chat completion request: {b}"
        );
    }
    if tenants {
        assert!(
            !any_header_holds(&openai, key),
            "the tenant's key reached openai-up"
        );
    }
}

#[test]
fn openai_and_anthropic_sdks_without_keys() {
    sdks_through_the_other_format(false);
}

#[test]
fn openai_and_anthropic_sdks_with_a_tenant_key() {
    sdks_through_the_other_format(true);
}

/// The anthropic SDK's tool loop (by hand, whole and streamed, and its tool runner) through the
/// gateway to an OpenAI chat upstream: the mock with `--tools` calls the first tool and answers
/// the tool result with a quote of it. The upstream must have got the tool as a function, the
/// call back as the assistant's `tool_calls` (the thinking block beside it left out), and the
/// result as a `tool` message.
#[test]
fn anthropic_sdk_tool_loop_through_an_openai_upstream() {
    let sdk_dir = match sdk_path() {
        Ok(dir) => dir,
        Err(None) => return,
        Err(Some(why)) => panic!("{why}"),
    };
    // `--reasoning` too: the thinking blocks the SDK sends back with the call must not fail
    // the next turn.
    let mock = BenchUpstream::start(&["--chunks", CHUNKS, "--tools", "--reasoning"]);
    let claude = relay(mock.addr());
    let openai = relay(mock.addr());
    let gw = Gateway::start_with_env(
        &config(claude.addr(), openai.addr(), false),
        &[("SG_TEST_ANTHROPIC_KEY", UPSTREAM_KEY)],
    );
    let run = run_script(
        &gw,
        sdk_dir.as_ref(),
        "sk-client-key-unused",
        &[
            "--only",
            "anthropic",
            "--anthropic-tools",
            "--anthropic-thinking",
            REASONING,
        ],
    );
    let results = ok_results(&run);
    assert_eq!(results["anthropic"]["tools"]["runner"]["calls"][0], "mock");
    assert!(claude.requests().is_empty(), "claude-up got requests");

    let to_openai = upstream_calls(
        "openai-up",
        &openai,
        "/v1/chat/completions",
        "gpt-upstream-model",
    );
    // Three plain answers, then two requests for each of the four tool loops.
    assert_eq!(to_openai.len(), 3 + 2 * 4, "{to_openai:#?}");
    let with_tools: Vec<&serde_json::Value> = to_openai
        .iter()
        .filter(|b| b.get("tools").is_some())
        .collect();
    assert_eq!(with_tools.len(), 8, "{to_openai:#?}");
    for b in &with_tools {
        let function = &b["tools"][0];
        assert_eq!(function["type"], "function", "{b}");
        assert_eq!(function["function"]["name"], "lookup", "{b}");
        assert_eq!(
            function["function"]["parameters"]["properties"]["query"]["type"], "string",
            "{b}"
        );
    }
    // Each loop's second request: the call and its result, in OpenAI's shape.
    let answers: Vec<&serde_json::Value> = with_tools
        .iter()
        .filter(|b| b["messages"].as_array().is_some_and(|m| m.len() > 2))
        .copied()
        .collect();
    assert_eq!(answers.len(), 4, "{with_tools:#?}");
    for b in answers {
        let messages = b["messages"].as_array().expect("array");
        let n = messages.len();
        let (call, result) = (&messages[n - 2], &messages[n - 1]);
        assert_eq!(call["role"], "assistant", "{b}");
        assert_eq!(call["content"], serde_json::Value::Null, "{b}");
        let tool_call = &call["tool_calls"][0];
        assert_eq!(tool_call["function"]["name"], "lookup", "{b}");
        let args: serde_json::Value = serde_json::from_str(
            tool_call["function"]["arguments"]
                .as_str()
                .expect("string arguments"),
        )
        .expect("JSON arguments");
        assert_eq!(args, serde_json::json!({"query": "mock"}), "{b}");
        assert_eq!(result["role"], "tool", "{b}");
        assert_eq!(result["tool_call_id"], tool_call["id"], "{b}");
        assert!(
            result["content"]
                .as_str()
                .is_some_and(|c| c.starts_with("A mock is a stand-in")),
            "{b}"
        );
    }
}
