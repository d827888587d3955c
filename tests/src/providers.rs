//! What the provider tests (issue 20: `azure.rs`, `bedrock.rs`, `gemini.rs`, `responses.rs`,
//! `sdk_providers.rs`) share: the credential headers a client sends so that each test can check
//! none reaches an upstream, POSTs that carry them, a gateway config with one upstream, and the
//! JSON and server-sent events of answers.

use serde_json::Value;

use crate::{Client, Request, Response};

/// Headers that carry a credential for some provider; a client sends each of them.
pub const CLIENT_CREDENTIALS: [(&str, &str); 5] = [
    ("Authorization", "Bearer sk-client"),
    ("api-key", "az-client"),
    ("x-goog-api-key", "goog-client"),
    ("X-Amz-Security-Token", "amz-client"),
    ("x-api-key", "ant-client"),
];

/// The secrets of [`CLIENT_CREDENTIALS`], and `AIza-client`, the key tests put in `?key=`.
pub const CLIENT_SECRETS: [&str; 6] = [
    "sk-client",
    "az-client",
    "goog-client",
    "amz-client",
    "ant-client",
    "AIza-client",
];

/// Asserts that none of [`CLIENT_SECRETS`] nor `also` is in `req`'s path or headers.
pub fn assert_no_client_secret(req: &Request, also: &[&str]) {
    let raw = format!("{:?} {:?}", req.path, req.headers);
    for secret in CLIENT_SECRETS.iter().chain(also) {
        assert!(
            !raw.contains(secret),
            "{secret} reached the upstream: {raw}"
        );
    }
}

/// POSTs the JSON `body` to `path` with `headers`, and reads the response.
pub fn post_with_headers(
    c: &mut Client,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Response {
    let headers: String = headers
        .iter()
        .map(|(n, v)| format!("{n}: {v}\r\n"))
        .collect();
    c.send(format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n{headers}\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

/// POSTs the JSON `body` to `path` with every provider's credential header
/// ([`CLIENT_CREDENTIALS`]), as a client might.
pub fn post_with_client_credentials(c: &mut Client, path: &str, body: &str) -> Response {
    post_with_headers(c, path, &CLIENT_CREDENTIALS, body)
}

/// A gateway config (no auth, one core) with one upstream named `name` (`upstream` the rest of
/// its `[[upstreams]]` table) and `models` after it.
pub fn one_upstream_config(name: &str, upstream: &str, models: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 1
auth = "none"

[[upstreams]]
name = "{name}"
{upstream}

{models}"#
    )
}

/// The body as JSON (the assertion names the response when it is not).
pub fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.summary()))
}

/// The OpenAI error body of `r`, asserting its status is `status` and its `error.message` a
/// non-empty string that contains `message_has`.
pub fn openai_error(r: &Response, status: u16, message_has: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.summary());
    let e = json_of(r);
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty() && m.contains(message_has)),
        "{message_has}: {e}"
    );
    e
}

/// The `data:` of each event of a streamed body, parsed (`[DONE]` left out), and whether a
/// `[DONE]` came. Lines other than `data:` are skipped; CRLF line ends are read as LF.
pub fn sse_data(body: &[u8]) -> (Vec<Value>, bool) {
    let body = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut done = false;
    let mut out = Vec::new();
    for event in body.split("\n\n").filter(|e| !e.trim().is_empty()) {
        for line in event.lines() {
            let Some(data) = line.strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
            } else {
                out.push(
                    serde_json::from_str(data)
                        .unwrap_or_else(|e| panic!("event data not JSON ({e}): {data}")),
                );
            }
        }
    }
    (out, done)
}

/// The events of an OpenAI stream (`[DONE]` left out), asserting it ends with `[DONE]`.
pub fn sse_events(body: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(body);
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    sse_data(body).0
}

/// The concatenated `choices[0].delta[key]` strings of an OpenAI stream's events.
pub fn stream_text(events: &[Value], key: &str) -> String {
    events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"][key].as_str())
        .collect()
}
