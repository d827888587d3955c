//! Azure OpenAI upstreams (issue 20): OpenAI chat and Anthropic Messages clients reach a
//! deployment's path with `api-version`, the upstream's key goes as `api-key`, and no credential
//! a client sent (any provider's header, or `?key=`) reaches the upstream.

use std::io::{self, Write};
use std::net::TcpStream;

use serde_json::{json, Value};
use shardgate_tests::providers::{
    self, json_of, one_upstream_config, openai_error, post_with_client_credentials,
    CLIENT_CREDENTIALS,
};
use shardgate_tests::{
    write_chunk, write_response, Action, Client, Gateway, MockUpstream, Request,
};

const KEY_VAR: &str = "SG_TEST_AZURE_KEY";
const KEY: &str = "az-upstream-secret";
const API_VERSION: &str = "2024-10-21";
/// Azure's answer, checked as strictly as the service: the deployment path with its
/// `api-version`, our key in `api-key`, no other credential. A refusal is Azure's error shape.
fn azure_upstream() -> MockUpstream {
    MockUpstream::start(|req: &Request, s: &mut TcpStream| -> io::Result<Action> {
        let refuse = |s: &mut TcpStream, status: u16, why: &str| -> io::Result<Action> {
            let e = json!({"error": {"code": "Refused", "message": why}});
            write_response(s, status, "application/json", e.to_string().as_bytes())?;
            Ok(Action::KeepAlive)
        };
        if req.header("api-key") != Some(KEY) {
            return refuse(s, 401, "Access denied due to invalid subscription key");
        }
        for (name, _) in CLIENT_CREDENTIALS.iter().filter(|(n, _)| *n != "api-key") {
            if req.header(name).is_some() {
                return refuse(s, 400, &format!("client credential {name} forwarded"));
            }
        }
        if req.headers_named("api-key").len() != 1 {
            return refuse(s, 400, "more than one api-key");
        }
        let Some((path, query)) = req.path.split_once('?') else {
            return refuse(s, 404, "no api-version");
        };
        if query != format!("api-version={API_VERSION}") {
            return refuse(s, 404, &format!("bad query {query}"));
        }
        let Some(rest) = path.strip_prefix("/openai/deployments/") else {
            return refuse(s, 404, "Resource not found");
        };
        let (deployment, op) = rest.split_once('/').unwrap_or((rest, ""));
        let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
        if op == "embeddings" {
            let a = json!({"object": "list", "model": deployment,
                "data": [{"object": "embedding", "index": 0, "embedding": [0.5, 0.25]}],
                "usage": {"prompt_tokens": 3, "total_tokens": 3}});
            write_response(s, 200, "application/json", a.to_string().as_bytes())?;
            return Ok(Action::KeepAlive);
        }
        if op != "chat/completions" {
            return refuse(s, 404, "Resource not found");
        }
        let text = format!("Hi from {deployment}");
        if body["stream"] == true {
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            for piece in [&text[..3], &text[3..]] {
                let c = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                    "model": deployment, "choices": [{"index": 0, "delta": {"content": piece},
                    "finish_reason": null}]});
                write_chunk(s, format!("data: {c}\n\n").as_bytes())?;
            }
            let end = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                "model": deployment, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
            write_chunk(s, format!("data: {end}\n\n").as_bytes())?;
            if body["stream_options"]["include_usage"] == true {
                let u = json!({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                    "model": deployment, "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}});
                write_chunk(s, format!("data: {u}\n\n").as_bytes())?;
            }
            write_chunk(s, b"data: [DONE]\n\n")?;
            s.write_all(b"0\r\n\r\n")?;
            return Ok(Action::KeepAlive);
        }
        let a = json!({"id": "c1", "object": "chat.completion", "created": 1, "model": deployment,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}});
        write_response(s, 200, "application/json", a.to_string().as_bytes())?;
        Ok(Action::KeepAlive)
    })
}

/// A gateway with the model group `gpt-4o` on deployment `gpt4o-east`; with `route`, a route
/// `/` to the upstream instead (the body's model names the deployment).
fn start_with(route: bool) -> (MockUpstream, Gateway) {
    let up = azure_upstream();
    let models = if route {
        "[[routes]]\npath_prefix = \"/\"\nupstream = \"azure-east\"\n"
    } else {
        "[[models]]\nname = \"gpt-4o\"\ndeployments = [{ upstream = \"azure-east\", model = \"gpt4o-east\" }]\n"
    };
    let cfg = one_upstream_config(
        "azure-east",
        &format!(
            "provider = \"azure\"\nendpoints = [\"http://{}\"]\napi_key_env = \"{KEY_VAR}\"\napi_version = \"{API_VERSION}\"",
            up.addr()
        ),
        models,
    );
    let gw = Gateway::start_with_env(&cfg, &[(KEY_VAR, KEY)]);
    (up, gw)
}

fn start() -> (MockUpstream, Gateway) {
    start_with(false)
}

#[test]
fn openai_clients_reach_the_deployment_path_with_only_the_upstreams_key() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post_with_client_credentials(
        &mut c,
        "/v1/chat/completions?key=AIza-client",
        r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["choices"][0]["message"]["content"], "Hi from gpt4o-east");
    assert_eq!(v["usage"]["total_tokens"], 13);
    let seen = up.requests();
    let last = seen.last().expect("a request upstream");
    assert_eq!(
        last.path,
        format!("/openai/deployments/gpt4o-east/chat/completions?api-version={API_VERSION}")
    );
    providers::assert_no_client_secret(last, &["AIza"]);

    // Streamed: the events relayed whole, ending with [DONE].
    let r = post_with_client_credentials(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let text: String = body
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "Hi from gpt4o-east");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    // The usage chunk shardgate asked for (to count the tokens) is not shown to a client that
    // did not ask for it.
    assert!(!body.contains("\"usage\""), "{body}");

    // Embeddings go to the deployment's embeddings operation.
    let r = post_with_client_credentials(
        &mut c,
        "/v1/embeddings",
        r#"{"model":"gpt-4o","input":"hi"}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(json_of(&r)["data"][0]["embedding"][0], 0.5);
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r.path.clone())
            .unwrap_or_default(),
        format!("/openai/deployments/gpt4o-east/embeddings?api-version={API_VERSION}")
    );
}

#[test]
fn anthropic_clients_reach_an_azure_deployment_translated() {
    let (up, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post_with_client_credentials(
        &mut c,
        "/v1/messages",
        r#"{"model":"gpt-4o","max_tokens":50,"messages":[{"role":"user","content":"Hello World!"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], "Hi from gpt4o-east");
    assert_eq!(v["usage"]["input_tokens"], 9);
    assert_eq!(
        up.requests()
            .last()
            .map(|r| r.path.clone())
            .unwrap_or_default(),
        format!("/openai/deployments/gpt4o-east/chat/completions?api-version={API_VERSION}")
    );
}

#[test]
fn what_azure_cannot_serve_is_a_400_that_says_why() {
    let (up, gw) = start_with(true);
    let mut c = Client::connect(gw.addr());
    // On a route, the body's model names the deployment.
    let r = post_with_client_credentials(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"my-deployment","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        json_of(&r)["choices"][0]["message"]["content"],
        "Hi from my-deployment"
    );
    // One that cannot be a deployment name never reaches the upstream's path.
    let before = up.requests().len();
    let r = post_with_client_credentials(
        &mut c,
        "/v1/chat/completions",
        r#"{"model":"../admin?x","messages":[{"role":"user","content":"hi"}]}"#,
    );
    openai_error(&r, 400, "Azure deployment");
    assert_eq!(up.requests().len(), before, "{:?}", up.requests());
}
