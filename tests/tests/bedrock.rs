//! AWS Bedrock upstreams (issue 20): OpenAI chat clients (and Anthropic Messages clients,
//! through the same translation) reach Bedrock's Converse and ConverseStream, every request
//! signed with SigV4 and checked by a strict mock with its own SigV4 implementation
//! (`shardgate_tests::bedrock_mock`), and no credential a client sent reaches the upstream.
//!
//! The first two tests need no gateway: the engine's signer against the mock's verifier, and
//! the mock's own strictness. The others go through the real gateway.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use shardgate_engine::provider::sigv4::{self, AwsCredentials};
use shardgate_tests::bedrock_mock::{self, BedrockMock, MockCredentials, SignedRequest, USAGE};
use shardgate_tests::providers::{
    assert_no_client_secret, json_of, one_upstream_config, openai_error, post_with_headers,
    sse_events, stream_text, CLIENT_CREDENTIALS,
};
use shardgate_tests::{Client, Gateway, Response};

const AKID: &str = "AKIDSHARDGATETEST1";
const SECRET: &str = "sg/Test+Secret/KeyEXAMPLEKEY0123456789";
const TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE//token+value==";
const REGION: &str = "us-east-1";
const MODEL_ID: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
const MODEL_PATH: &str = "anthropic.claude-3-5-sonnet-20240620-v1%3A0";
/// AWS's date header, which a client sends besides every provider's credential header.
const CLIENT_AWS_DATE: (&str, &str) = ("X-Amz-Date", "20000101T000000Z");

fn mock_creds() -> MockCredentials {
    MockCredentials {
        access_key_id: AKID.into(),
        secret_access_key: SECRET.into(),
        session_token: Some(TOKEN.into()),
        region: REGION.into(),
    }
}

fn engine_creds() -> AwsCredentials {
    AwsCredentials {
        access_key_id: AKID.into(),
        secret_access_key: SECRET.into(),
        session_token: Some(TOKEN.into()),
        source: "test".into(),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The header list of a request signed by the engine's signer.
fn signed_headers(host: &str, path: &str, body: &[u8], at_ms: u64) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    sigv4::sign(&engine_creds(), REGION, host, path, body, at_ms, &mut lines).expect("signs");
    let mut headers = vec![
        ("Host".to_owned(), host.to_owned()),
        ("Content-Type".to_owned(), "application/json".to_owned()),
    ];
    for line in String::from_utf8(lines).expect("UTF-8").split("\r\n") {
        if let Some((k, v)) = line.split_once(": ") {
            headers.push((k.to_owned(), v.to_owned()));
        }
    }
    headers
}

#[test]
fn the_engines_signer_agrees_with_the_mocks_verifier() {
    let body = br#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#;
    for path in [
        format!("/model/{MODEL_PATH}/converse"),
        format!("/model/{MODEL_PATH}/converse-stream"),
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-1-8b-instruct-v1%3A0/converse".to_owned(),
        "/model/amazon.nova-lite-v1%3A0/converse".to_owned(),
    ] {
        for host in ["127.0.0.1:8080", "bedrock-runtime.us-east-1.amazonaws.com"] {
            let headers = signed_headers(host, &path, body, now_ms());
            let req = SignedRequest { method: "POST", path: &path, query: "", headers: &headers, body };
            bedrock_mock::verify(&req, &mock_creds(), "bedrock", Some((now_ms() / 1000) as i64))
                .unwrap_or_else(|e| panic!("{path} on {host}: {e:?}"));
            // Another body, path or host does not verify.
            let other = SignedRequest { body: b"{}", ..SignedRequest { method: "POST", path: &path, query: "", headers: &headers, body } };
            assert!(bedrock_mock::verify(&other, &mock_creds(), "bedrock", None).is_err());
            let decoded = path.replace("%3A", ":");
            let other = SignedRequest { method: "POST", path: &decoded, query: "", headers: &headers, body };
            assert!(bedrock_mock::verify(&other, &mock_creds(), "bedrock", None).is_err(), "{decoded}");
        }
    }
    // Without a session token: no x-amz-security-token, and the mock expecting none agrees.
    let mut lines = Vec::new();
    let creds = AwsCredentials {
        session_token: None,
        ..engine_creds()
    };
    let path = format!("/model/{MODEL_PATH}/converse");
    sigv4::sign(&creds, REGION, "h:1", &path, body, now_ms(), &mut lines).expect("signs");
    let text = String::from_utf8(lines).expect("UTF-8");
    assert!(!text.contains("x-amz-security-token"), "{text}");
    let mut headers = vec![
        ("host".to_owned(), "h:1".to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    headers.extend(
        text.split("\r\n")
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let req = SignedRequest {
        method: "POST",
        path: &path,
        query: "",
        headers: &headers,
        body,
    };
    let no_token = MockCredentials {
        session_token: None,
        ..mock_creds()
    };
    bedrock_mock::verify(&req, &no_token, "bedrock", None).expect("verifies");
}

/// One request straight to the mock, signed by the engine's signer (`sign` false: unsigned),
/// with `extra` headers.
fn to_mock(
    mock: &BedrockMock,
    path: &str,
    body: &str,
    sign: bool,
    extra: &[(&str, &str)],
) -> Response {
    let host = mock.addr().to_string();
    let headers = if sign {
        signed_headers(&host, path, body.as_bytes(), now_ms())
    } else {
        vec![
            ("Host".to_owned(), host.clone()),
            ("Content-Type".to_owned(), "application/json".to_owned()),
        ]
    };
    let mut head = format!("POST {path} HTTP/1.1\r\n");
    for (k, v) in headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .chain(extra.iter().copied())
    {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    let mut c = Client::connect(mock.addr());
    c.send(head);
    c.read_response()
}

#[test]
fn the_mock_refuses_what_bedrock_refuses() {
    let mock = BedrockMock::start(mock_creds());
    let path = format!("/model/{MODEL_PATH}/converse");
    let good = r#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#;
    let r = to_mock(&mock, &path, good, true, &[]);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.json()["output"]["message"]["content"][0]["text"],
        format!("Hello from {MODEL_ID}! You said: Hi")
    );

    let refused = |r: &Response, status: u16, kind: &str| {
        assert_eq!(r.status, status, "{}", r.summary());
        assert!(
            r.header("x-amzn-ErrorType")
                .is_some_and(|t| t.starts_with(kind)),
            "{}",
            r.summary()
        );
        assert!(r.json()["message"].is_string());
    };
    for (signed, header) in [
        (false, ("Authorization", "Bearer sk")),
        (true, ("x-api-key", "k")),
        (true, ("api-key", "k")),
        (true, ("x-goog-api-key", "k")),
    ] {
        refused(
            &to_mock(&mock, &path, good, signed, &[header]),
            403,
            "AccessDeniedException",
        );
    }
    // A header the signature covers, sent twice.
    refused(
        &to_mock(
            &mock,
            &path,
            good,
            true,
            &[("X-Amz-Date", "20000101T000000Z")],
        ),
        403,
        "InvalidSignatureException",
    );
    refused(
        &to_mock(
            &mock,
            &path,
            good,
            true,
            &[("X-Amz-Security-Token", "other")],
        ),
        403,
        "UnrecognizedClientException",
    );
    // Signed for another path than the one sent.
    let r = {
        let host = mock.addr().to_string();
        let headers = signed_headers(&host, "/model/other/converse", good.as_bytes(), now_ms());
        let mut head = format!("POST {path} HTTP/1.1\r\n");
        for (k, v) in &headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str(&format!("Content-Length: {}\r\n\r\n{good}", good.len()));
        let mut c = Client::connect(mock.addr());
        c.send(head);
        c.read_response()
    };
    refused(&r, 403, "InvalidSignatureException");
    // The model id not encoded.
    refused(
        &to_mock(
            &mock,
            &format!("/model/{MODEL_ID}/converse"),
            good,
            true,
            &[],
        ),
        400,
        "ValidationException",
    );
    // Bodies Converse refuses.
    for body in [
        r#"{"messages":[{"role":"user","content":[{"text":"Hi"}]}],"stream":true}"#,
        r#"{"modelId":"x","messages":[{"role":"user","content":[{"text":"Hi"}]}]}"#,
        r#"{"messages":[{"role":"assistant","content":[{"text":"Hi"}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"Hi"}]},{"role":"assistant","content":[{"toolUse":{"toolUseId":"t1","name":"f","input":{}}}]},{"role":"user","content":[{"toolResult":{"toolUseId":"t1","content":[{"text":"1"}]}}]}]}"#,
        r#"{"messages":[{"role":"user","content":[{"text":"Hi"}]},{"role":"assistant","content":[{"text":"Hi"}]},{"role":"user","content":[{"toolResult":{"toolUseId":"t1","content":[{"text":"1"}]}}]}],"toolConfig":{"tools":[{"toolSpec":{"name":"f","inputSchema":{"json":{}}}}]}}"#,
    ] {
        refused(
            &to_mock(&mock, &path, body, true, &[]),
            400,
            "ValidationException",
        );
    }
    refused(
        &to_mock(
            &mock,
            "/model/anthropic.throttle-v1%3A0/converse",
            good,
            true,
            &[],
        ),
        429,
        "ThrottlingException",
    );
    // The stream: an event stream, chunked.
    let r = to_mock(
        &mock,
        &format!("/model/{MODEL_PATH}/converse-stream"),
        good,
        true,
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        r.header("content-type"),
        Some("application/vnd.amazon.eventstream")
    );
    let mut t = shardgate_engine::provider::bedrock::StreamToChat::new("c", "m", 0, true);
    let mut out = Vec::new();
    t.feed(&r.body, &mut out);
    t.finish(&mut out);
    let text = String::from_utf8(out).expect("UTF-8");
    assert_eq!(
        text_of(text.as_bytes()),
        format!("Hello from {MODEL_ID}! You said: Hi")
    );
}

// ---------------------------------------------------------------------------------------------
// Through the gateway

/// A gateway config whose upstream `bedrock` is the mock at `addr` (with `extra` keys), serving
/// the group `claude-bedrock`, then `more_models`.
fn bedrock_config(addr: std::net::SocketAddr, extra: &str, more_models: &str) -> String {
    one_upstream_config(
        "bedrock",
        &format!(
            "provider = \"bedrock\"\nendpoints = [\"http://{addr}\"]\nregion = \"{REGION}\"\n{extra}"
        ),
        &format!(
            "[[models]]\nname = \"claude-bedrock\"\ndeployments = [{{ upstream = \"bedrock\", model = \"{MODEL_ID}\" }}]\n{more_models}"
        ),
    )
}

fn start() -> (BedrockMock, Gateway) {
    let mock = BedrockMock::start(mock_creds());
    let cfg = bedrock_config(
        mock.addr(),
        "",
        r#"
[[models]]
name = "claude-throttled"
deployments = [{ upstream = "bedrock", model = "anthropic.throttle-v1:0" }]
"#,
    );
    let gw = Gateway::start_with_env(
        &cfg,
        &[
            ("AWS_ACCESS_KEY_ID", AKID),
            ("AWS_SECRET_ACCESS_KEY", SECRET),
            ("AWS_SESSION_TOKEN", TOKEN),
        ],
    );
    (mock, gw)
}

/// POSTs `body` to `path` with every provider's credential header and AWS's date, as a client
/// might.
fn post(c: &mut Client, path: &str, body: &Value) -> Response {
    let headers: Vec<(&str, &str)> = CLIENT_CREDENTIALS
        .iter()
        .copied()
        .chain([CLIENT_AWS_DATE])
        .collect();
    post_with_headers(c, path, &headers, &body.to_string())
}

/// The text of an OpenAI stream.
fn text_of(body: &[u8]) -> String {
    stream_text(&sse_events(body), "content")
}

/// Every request the mock saw was signed right, carried no client credential, and was not
/// refused (but the throttling asked for).
fn assert_clean(mock: &BedrockMock) {
    let seen = mock.requests();
    assert!(!seen.is_empty());
    assert_eq!(
        mock.verified(),
        seen.len(),
        "signature verified on every request: {:?}",
        mock.refusals()
    );
    let refusals: Vec<String> = mock
        .refusals()
        .into_iter()
        .filter(|r| !r.contains("asked for"))
        .collect();
    assert!(refusals.is_empty(), "{refusals:?}");
    for r in &seen {
        assert_no_client_secret(r, &[CLIENT_AWS_DATE.1]);
        let raw = format!("{:?} {:?}", r.path, r.headers);
        assert_eq!(r.headers_named("authorization").len(), 1, "{raw}");
        assert_eq!(
            r.headers_named("x-amz-security-token"),
            vec![TOKEN],
            "{raw}"
        );
    }
}

#[test]
fn whole_and_streamed_text() {
    let (mock, gw) = start();
    let mut c = Client::connect(gw.addr());
    let ask = json!({"model": "claude-bedrock", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello World!"}
    ], "max_tokens": 50, "temperature": 0.2});
    let r = post(&mut c, "/v1/chat/completions", &ask);
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        format!("Hello from {MODEL_ID}! You said: Hello World!")
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (input, output, read, write) = USAGE;
    assert_eq!(v["usage"]["prompt_tokens"], input + read + write);
    assert_eq!(v["usage"]["completion_tokens"], output);
    assert_eq!(v["usage"]["total_tokens"], input + read + write + output);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], read);
    let last = mock.requests().last().cloned().expect("a request upstream");
    assert_eq!(last.path, format!("/model/{MODEL_PATH}/converse"));
    let sent: Value = serde_json::from_slice(&last.body).expect("JSON");
    assert_eq!(sent["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        sent["inferenceConfig"],
        json!({"maxTokens": 50, "temperature": 0.2})
    );

    // Streamed, with the usage chunk.
    let mut ask_stream = ask.clone();
    ask_stream["stream"] = json!(true);
    ask_stream["stream_options"] = json!({"include_usage": true});
    let r = post(&mut c, "/v1/chat/completions", &ask_stream);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        r.header("content-type")
            .is_some_and(|t| t.starts_with("text/event-stream")),
        "{}",
        r.summary()
    );
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        text_of(body.as_bytes()),
        format!("Hello from {MODEL_ID}! You said: Hello World!")
    );
    let ev = sse_events(body.as_bytes());
    let usage = ev.last().expect("the usage chunk before [DONE]");
    assert_eq!(usage["choices"], json!([]), "{body}");
    assert_eq!(usage["usage"]["prompt_tokens"], input + read + write);
    assert_eq!(usage["usage"]["completion_tokens"], output);
    assert!(
        ev.iter()
            .any(|e| e["choices"][0]["finish_reason"] == "stop"),
        "{body}"
    );
    assert_eq!(
        mock.requests()
            .last()
            .map(|r| r.path.clone())
            .unwrap_or_default(),
        format!("/model/{MODEL_PATH}/converse-stream")
    );

    // Streamed without it: no usage shown.
    ask_stream
        .as_object_mut()
        .expect("object")
        .remove("stream_options");
    let r = post(&mut c, "/v1/chat/completions", &ask_stream);
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = String::from_utf8_lossy(&r.body).into_owned();
    assert_eq!(
        text_of(body.as_bytes()),
        format!("Hello from {MODEL_ID}! You said: Hello World!")
    );
    assert!(!body.contains("\"usage\""), "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_clean(&mock);
}

#[test]
fn a_tool_loop_whole_and_streamed() {
    let (mock, gw) = start();
    let mut c = Client::connect(gw.addr());
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]);
    let question = json!({"role": "user", "content": "Weather in Paris?"});
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "claude-bedrock", "messages": [question], "tools": tools}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let message = &v["choices"][0]["message"];
    assert!(message["content"].is_null(), "{v}");
    let call = &message["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().expect("string"))
        .expect("JSON arguments");
    assert_eq!(args, json!({"query": "Weather in Paris?"}));
    let id = call["id"].as_str().expect("an id").to_owned();

    // The result goes back with the same id: Bedrock accepts it (a toolResult answering the
    // toolUse) and the answer quotes it.
    let answer = json!({"model": "claude-bedrock", "tools": tools, "messages": [
        question,
        message.clone(),
        {"role": "tool", "tool_call_id": id, "content": "18C and sunny"}
    ]});
    let r = post(&mut c, "/v1/chat/completions", &answer);
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "The tool said: 18C and sunny"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let sent: Value =
        serde_json::from_slice(&mock.requests().last().expect("sent").body).expect("JSON");
    assert_eq!(
        sent["messages"][2]["content"][0]["toolResult"]["toolUseId"],
        id.as_str()
    );

    // A result for an id the assistant never used is the upstream's 400, passed on.
    let mut wrong = answer.clone();
    wrong["messages"][2]["tool_call_id"] = json!("tooluse_unknown");
    let r = post(&mut c, "/v1/chat/completions", &wrong);
    assert_eq!(r.status, 400, "{}", r.summary());
    assert_eq!(json_of(&r)["error"]["code"], "ValidationException");

    // Streamed: the call's deltas, then the same loop.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "claude-bedrock", "stream": true, "messages": [question], "tools": tools}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let body = String::from_utf8_lossy(&r.body).into_owned();
    let mut stream_id = String::new();
    let mut arguments = String::new();
    for e in sse_events(body.as_bytes()) {
        for call in e["choices"][0]["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_eq!(call["index"], 0, "{body}");
            if let Some(i) = call["id"].as_str() {
                stream_id = i.to_owned();
                assert_eq!(call["function"]["name"], "get_weather");
                assert_eq!(call["type"], "function");
            }
            arguments.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
        }
    }
    assert!(!stream_id.is_empty(), "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).expect("JSON"),
        json!({"query": "Weather in Paris?"})
    );
    assert!(body.contains("\"finish_reason\":\"tool_calls\""), "{body}");
    let again = json!({"model": "claude-bedrock", "stream": true, "tools": tools, "messages": [
        question,
        {"role": "assistant", "content": null, "tool_calls": [{"id": stream_id, "type": "function",
            "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": stream_id, "content": "21C"}
    ]});
    let r = post(&mut c, "/v1/chat/completions", &again);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(text_of(&r.body), "The tool said: 21C");
    let refusals: Vec<String> = mock.refusals();
    assert_eq!(
        refusals.len(),
        1,
        "only the unknown id was refused: {refusals:?}"
    );
    assert_eq!(mock.verified(), mock.requests().len());
}

#[test]
fn throttling_is_an_openai_429() {
    let (mock, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "claude-throttled", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let e = openai_error(&r, 429, "");
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");
    assert_clean(&mock);
}

#[test]
fn what_converse_cannot_express_is_a_400_naming_the_field() {
    let (mock, gw) = start();
    let mut c = Client::connect(gw.addr());
    let base = json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": "hi"}]});
    for (key, value, named) in [
        ("n", json!(2), "`n`"),
        ("logprobs", json!(true), "`logprobs`"),
        (
            "response_format",
            json!({"type": "json_object"}),
            "`response_format`",
        ),
    ] {
        let mut b = base.clone();
        b[key] = value;
        let r = post(&mut c, "/v1/chat/completions", &b);
        openai_error(&r, 400, named);
    }
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
        ]}]}),
    );
    openai_error(&r, 400, "image_url");
    assert!(
        mock.requests().is_empty(),
        "nothing refused reaches the upstream: {:?}",
        mock.requests()
    );

    // A data: URL image does reach it, as bytes.
    let r = post(
        &mut c,
        "/v1/chat/completions",
        &json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
        ]}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let sent: Value =
        serde_json::from_slice(&mock.requests().last().expect("sent").body).expect("JSON");
    assert_eq!(
        sent["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );
    assert_clean(&mock);
}

#[test]
fn anthropic_clients_reach_bedrock_translated() {
    let (mock, gw) = start();
    let mut c = Client::connect(gw.addr());
    let r = post(
        &mut c,
        "/v1/messages",
        &json!({"model": "claude-bedrock", "max_tokens": 50,
        "messages": [{"role": "user", "content": "Hello World!"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = json_of(&r);
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"][0]["text"],
        format!("Hello from {MODEL_ID}! You said: Hello World!")
    );
    assert_eq!(
        mock.requests()
            .last()
            .map(|r| r.path.clone())
            .unwrap_or_default(),
        format!("/model/{MODEL_PATH}/converse")
    );
    assert_clean(&mock);
}

/// Credentials rotated in an `aws_credentials_file` are signed with after `SIGHUP` (or the
/// file's next look, within a second), without a config apply; the old ones stop at once.
#[test]
fn rotated_credentials_are_read_again_on_sighup() {
    let mock = BedrockMock::start(mock_creds());
    let dir = std::env::temp_dir().join(format!("sg-bedrock-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("credentials");
    let write = |akid: &str, secret: &str| {
        std::fs::write(
            &file,
            format!(
                "[default]\naws_access_key_id = {akid}\naws_secret_access_key = {secret}\naws_session_token = {TOKEN}\n"
            ),
        )
        .expect("write the credentials file");
    };
    // The old key, which the mock no longer takes.
    write("AKIDOLDROTATEDKEY", "old/Secret/EXAMPLE");
    let cfg = bedrock_config(
        mock.addr(),
        &format!("aws_credentials_file = \"{}\"", file.display()),
        "",
    );
    let gw = Gateway::start(&cfg);
    let body = json!({"model": "claude-bedrock", "messages": [{"role": "user", "content": "Hi"}]});
    let mut c = Client::connect(gw.addr());
    let r = post(&mut c, "/v1/chat/completions", &body);
    assert_eq!(r.status, 403, "the old key is refused: {}", r.summary());
    assert_eq!(mock.verified(), 0);
    // Rotated: the current key, then SIGHUP.
    write(AKID, SECRET);
    gw.signal("-HUP");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let r = loop {
        let mut c = Client::connect(gw.addr());
        let r = post(&mut c, "/v1/chat/completions", &body);
        if r.status == 200 || std::time::Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(
        r.status,
        200,
        "signed with the rotated key: {}",
        r.summary()
    );
    assert!(mock.verified() >= 1);
    assert!(
        gw.stderr().contains("AWS credentials read again"),
        "{}",
        gw.stderr()
    );
    assert!(
        !gw.stderr().contains(SECRET) && !gw.stderr().contains("old/Secret"),
        "a secret reached the log"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
