//! A strict mock of AWS Bedrock's runtime (`Converse` and `ConverseStream`), for the Bedrock
//! provider's end-to-end tests.
//!
//! It checks each request as strictly as the service, and refuses in the service's own error
//! shape (`x-amzn-ErrorType` header, `{"message":...}` body):
//!
//! - **SigV4**, with its own implementation written from AWS's published algorithm (HMAC-SHA256
//!   and SHA-256 from the `hmac` and `sha2` crates), independent of the engine's `aws-sigv4`, so
//!   a bug the two shared could not pass: the canonical request from the path *as received*
//!   (encoded again for the canonical URI), the signed headers' values, the body's hash; the
//!   scope's date, region and service; the key id; the session token when one is expected; the
//!   time within AWS's 15 minutes. A failure is `403 InvalidSignatureException` (or
//!   `UnrecognizedClientException` for an unknown key id).
//! - **No client credential**: any `authorization` other than the one SigV4 header, `api-key`,
//!   `x-api-key`, `x-goog-api-key` is refused (`403 AccessDeniedException`).
//! - **The path**: `/model/{modelId}/converse` or `.../converse-stream`, the model id
//!   percent-encoded (a raw `:` is refused: the engine must encode it), no query.
//! - **The body**: `content-type: application/json`, a JSON object with Converse's fields only
//!   (anything else, `modelId` or `stream` included, is a `400 ValidationException`); messages
//!   alternate starting with the user, content blocks of known kinds with their required
//!   fields (no blank text), `toolUse` only from the assistant, `toolResult` only from the user
//!   and each answering a `toolUse` id of the assistant turn just before; `toolUse` or
//!   `toolResult` blocks need a `toolConfig`; `toolChoice.tool.name` names a tool.
//!
//! It answers: a model id containing `throttle` with `429 ThrottlingException`; a last user
//! turn holding tool results with text quoting them (`The tool said: ...`); else, when tools
//! are given, a `toolUse` of the first tool (or the one `toolChoice` names) with input
//! `{"query": <the user's last text>}`; else `Hello from {modelId}! You said: ...`. Usage
//! always `inputTokens 11, outputTokens 7, cacheReadInputTokens 3, cacheWriteInputTokens 2`.
//! `converse` answers JSON; `converse-stream` answers `application/vnd.amazon.eventstream`
//! with chunked transfer, every message split across two chunks.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use shardgate_engine::provider::eventstream;

use crate::upstream::{write_chunk, Action, MockUpstream, Request};

/// The credentials the mock expects, and its region.
#[derive(Debug, Clone)]
pub struct MockCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// When set, requests must carry and sign `x-amz-security-token` with this value.
    pub session_token: Option<String>,
    pub region: String,
}

/// Usage the mock reports on every answer.
pub const USAGE: (u64, u64, u64, u64) = (11, 7, 3, 2);

/// AWS's allowed clock skew, seconds.
const SKEW_SECS_MAX: i64 = 15 * 60;

#[derive(Debug, Default)]
struct State {
    /// Requests whose signature verified.
    verified: usize,
    /// Why requests were refused, in order.
    refusals: Vec<String>,
    /// toolUse ids handed out.
    next_tool_use: usize,
}

/// The running mock.
#[derive(Debug)]
pub struct BedrockMock {
    upstream: MockUpstream,
    state: Arc<Mutex<State>>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl BedrockMock {
    /// Listens on 127.0.0.1:0 expecting `creds`.
    pub fn start(creds: MockCredentials) -> BedrockMock {
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        let upstream = MockUpstream::start(move |req: &Request, stream: &mut TcpStream| {
            handle(req, stream, &creds, &s)
        });
        BedrockMock { upstream, state }
    }

    /// The address to put in the gateway's `endpoints`.
    pub fn addr(&self) -> SocketAddr {
        self.upstream.addr()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.upstream.requests()
    }

    /// How many requests carried a valid signature.
    pub fn verified(&self) -> usize {
        lock(&self.state).verified
    }

    /// Why requests were refused (signature, credentials, path or body), in order.
    pub fn refusals(&self) -> Vec<String> {
        lock(&self.state).refusals.clone()
    }
}

/// An AWS error answer.
fn aws_error(stream: &mut TcpStream, status: u16, kind: &str, message: &str) -> io::Result<Action> {
    let body = json!({ "message": message }).to_string();
    let head = format!(
        "HTTP/1.1 {status} Error\r\nContent-Type: application/json\r\nx-amzn-ErrorType: {kind}:http://internal.amazon.com/coral/com.amazon.bedrock/\r\nx-amzn-RequestId: 00000000-mock\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    Ok(Action::KeepAlive)
}

fn handle(
    req: &Request,
    stream: &mut TcpStream,
    creds: &MockCredentials,
    state: &Mutex<State>,
) -> io::Result<Action> {
    let refuse = |stream: &mut TcpStream, status: u16, kind: &str, why: String| {
        lock(state).refusals.push(format!("{kind}: {why}"));
        aws_error(stream, status, kind, &why)
    };

    // Credentials: only the SigV4 authorization.
    for name in ["api-key", "x-api-key", "x-goog-api-key"] {
        if req.header(name).is_some() {
            return refuse(
                stream,
                403,
                "AccessDeniedException",
                format!("client credential header {name} reached the upstream"),
            );
        }
    }
    let auths = req.headers_named("authorization");
    if auths.len() != 1 || !auths[0].starts_with("AWS4-HMAC-SHA256 ") {
        return refuse(
            stream,
            403,
            "AccessDeniedException",
            format!("authorization must be exactly one SigV4 header, got {auths:?}"),
        );
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if let Err((kind, why)) = verify_request(req, creds, "bedrock", now) {
        return refuse(stream, 403, kind, why);
    }
    lock(state).verified += 1;

    // The path.
    if req.method != "POST" {
        return refuse(stream, 405, "ValidationException", "only POST".into());
    }
    if req.path.contains('?') {
        return refuse(
            stream,
            400,
            "ValidationException",
            "no query expected".into(),
        );
    }
    let Some(rest) = req.path.strip_prefix("/model/") else {
        return refuse(stream, 404, "UnknownOperationException", req.path.clone());
    };
    let (raw_id, stream_op) = if let Some(id) = rest.strip_suffix("/converse-stream") {
        (id, true)
    } else if let Some(id) = rest.strip_suffix("/converse") {
        (id, false)
    } else {
        return refuse(stream, 404, "UnknownOperationException", req.path.clone());
    };
    if raw_id.contains(':') || raw_id.contains('/') || raw_id.is_empty() {
        return refuse(
            stream,
            400,
            "ValidationException",
            format!("model id not percent-encoded: {raw_id}"),
        );
    }
    let Some(model_id) = percent_decode(raw_id) else {
        return refuse(
            stream,
            400,
            "ValidationException",
            "bad percent-encoding".into(),
        );
    };
    if !req
        .header("content-type")
        .is_some_and(|c| c.eq_ignore_ascii_case("application/json"))
    {
        return refuse(
            stream,
            400,
            "ValidationException",
            format!("content-type {:?}", req.header("content-type")),
        );
    }
    if model_id.contains("throttle") {
        lock(state)
            .refusals
            .push("ThrottlingException (asked for)".into());
        return aws_error(
            stream,
            429,
            "ThrottlingException",
            "Too many requests, please wait before trying again.",
        );
    }

    // The body.
    let body: Value = match serde_json::from_slice(&req.body) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => {
            return refuse(
                stream,
                400,
                "ValidationException",
                "body is not a JSON object".into(),
            )
        }
    };
    if let Err(why) = validate_converse(&body) {
        return refuse(stream, 400, "ValidationException", why);
    }

    // The answer.
    let blocks = answer(&body, &model_id, state);
    let tool_use = blocks.iter().any(|b| b.get("toolUse").is_some());
    let stop = if tool_use { "tool_use" } else { "end_turn" };
    let (input, output, read, write) = USAGE;
    let usage = json!({"inputTokens": input, "outputTokens": output,
        "totalTokens": input + output + read + write,
        "cacheReadInputTokens": read, "cacheWriteInputTokens": write});
    if !stream_op {
        let a = json!({"output": {"message": {"role": "assistant", "content": blocks}},
            "stopReason": stop, "usage": usage, "metrics": {"latencyMs": 42}});
        let body = a.to_string();
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nx-amzn-RequestId: 00000000-mock\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body.as_bytes())?;
        return Ok(Action::KeepAlive);
    }
    stream.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.amazon.eventstream\r\nx-amzn-RequestId: 00000000-mock\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut events: Vec<(&str, Value)> = vec![(
        "messageStart",
        json!({"role": "assistant", "p": "abcdefghij"}),
    )];
    for (i, block) in blocks.iter().enumerate() {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            let mid = text
                .char_indices()
                .nth(text.chars().count() / 2)
                .map_or(0, |(i, _)| i);
            for piece in [&text[..mid], &text[mid..]] {
                events.push((
                    "contentBlockDelta",
                    json!({"contentBlockIndex": i, "delta": {"text": piece}, "p": "ab"}),
                ));
            }
        } else if let Some(t) = block.get("toolUse") {
            events.push(("contentBlockStart", json!({"contentBlockIndex": i, "start": {"toolUse": {"toolUseId": t["toolUseId"], "name": t["name"]}}})));
            let input = t["input"].to_string();
            let mid = input.len() / 2;
            for piece in [&input[..mid], &input[mid..]] {
                events.push((
                    "contentBlockDelta",
                    json!({"contentBlockIndex": i, "delta": {"toolUse": {"input": piece}}}),
                ));
            }
        }
        events.push(("contentBlockStop", json!({"contentBlockIndex": i})));
    }
    events.push(("messageStop", json!({"stopReason": stop})));
    events.push((
        "metadata",
        json!({"usage": usage, "metrics": {"latencyMs": 42}}),
    ));
    for (kind, payload) in events {
        let mut frame = Vec::new();
        eventstream::encode_event(kind, payload.to_string().as_bytes(), &mut frame)
            .map_err(|e| io::Error::other(e.to_string()))?;
        // Every message across two chunks, cut inside its prelude or headers.
        let cut = (frame.len() / 3).max(1);
        write_chunk(stream, &frame[..cut])?;
        write_chunk(stream, &frame[cut..])?;
    }
    stream.write_all(b"0\r\n\r\n")?;
    Ok(Action::KeepAlive)
}

/// The content blocks of the mock's answer; see the module docs.
fn answer(body: &Value, model_id: &str, state: &Mutex<State>) -> Vec<Value> {
    let last = body["messages"]
        .as_array()
        .and_then(|m| m.last())
        .cloned()
        .unwrap_or_default();
    let content = last["content"].as_array().cloned().unwrap_or_default();
    let results: Vec<String> = content
        .iter()
        .filter_map(|b| b.get("toolResult"))
        .map(|r| {
            r["content"]
                .as_array()
                .map(|c| {
                    c.iter()
                        .map(|x| match (x.get("text"), x.get("json")) {
                            (Some(Value::String(t)), _) => t.clone(),
                            (_, Some(j)) => j.to_string(),
                            _ => String::new(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default()
        })
        .collect();
    if !results.is_empty() {
        return vec![json!({"text": format!("The tool said: {}", results.join("; "))})];
    }
    let user_text: String = content
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    if let Some(tools) = body["toolConfig"]["tools"].as_array() {
        let name = body["toolConfig"]["toolChoice"]["tool"]["name"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| {
                tools
                    .first()
                    .and_then(|t| t["toolSpec"]["name"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let n = {
            let mut s = lock(state);
            s.next_tool_use += 1;
            s.next_tool_use
        };
        return vec![
            json!({"toolUse": {"toolUseId": format!("tooluse_mock{n}"), "name": name,
            "input": {"query": user_text}}}),
        ];
    }
    vec![json!({"text": format!("Hello from {model_id}! You said: {user_text}")})]
}

/// Check a Converse request body as the service would; `Err` says what is wrong.
pub fn validate_converse(body: &Value) -> Result<(), String> {
    let Value::Object(top) = body else {
        return Err("body is not an object".into());
    };
    const TOP: [&str; 10] = [
        "messages",
        "system",
        "inferenceConfig",
        "toolConfig",
        "guardrailConfig",
        "additionalModelRequestFields",
        "promptVariables",
        "additionalModelResponseFieldPaths",
        "requestMetadata",
        "performanceConfig",
    ];
    only_keys(top, &TOP, "request")?;
    let messages = top
        .get("messages")
        .and_then(Value::as_array)
        .filter(|m| !m.is_empty())
        .ok_or("messages must be a non-empty array")?;
    if let Some(system) = top.get("system") {
        for block in system.as_array().ok_or("system must be an array")? {
            let b = block.as_object().ok_or("system block not an object")?;
            only_keys(b, &["text", "guardContent", "cachePoint"], "system block")?;
            if let Some(t) = b.get("text") {
                non_blank(t, "system text")?;
            }
        }
    }
    if let Some(config) = top.get("inferenceConfig") {
        let c = config.as_object().ok_or("inferenceConfig not an object")?;
        only_keys(
            c,
            &["maxTokens", "temperature", "topP", "stopSequences"],
            "inferenceConfig",
        )?;
        if let Some(m) = c.get("maxTokens") {
            if m.as_u64().is_none_or(|m| m < 1) {
                return Err("maxTokens must be an integer >= 1".into());
            }
        }
        for k in ["temperature", "topP"] {
            if let Some(v) = c.get(k) {
                if v.as_f64().is_none_or(|v| !(0.0..=1.0).contains(&v)) {
                    return Err(format!("{k} must be a number in [0, 1]"));
                }
            }
        }
        if let Some(s) = c.get("stopSequences") {
            if !s.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
                return Err("stopSequences must be strings".into());
            }
        }
    }
    let mut tool_names = Vec::new();
    if let Some(config) = top.get("toolConfig") {
        let c = config.as_object().ok_or("toolConfig not an object")?;
        only_keys(c, &["tools", "toolChoice"], "toolConfig")?;
        let tools = c
            .get("tools")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty())
            .ok_or("toolConfig.tools must be a non-empty array")?;
        for tool in tools {
            let spec = tool
                .get("toolSpec")
                .and_then(Value::as_object)
                .ok_or("a tool without toolSpec")?;
            only_keys(spec, &["name", "description", "inputSchema"], "toolSpec")?;
            let name = spec
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .ok_or("toolSpec.name missing")?;
            if let Some(d) = spec.get("description") {
                non_blank(d, "toolSpec.description")?;
            }
            let schema = spec
                .get("inputSchema")
                .and_then(Value::as_object)
                .ok_or("toolSpec.inputSchema missing")?;
            only_keys(schema, &["json"], "inputSchema")?;
            if !schema.get("json").is_some_and(Value::is_object) {
                return Err("inputSchema.json must be an object".into());
            }
            tool_names.push(name.to_owned());
        }
        if let Some(choice) = c.get("toolChoice") {
            let ch = choice.as_object().ok_or("toolChoice not an object")?;
            if ch.len() != 1 {
                return Err("toolChoice must have exactly one member".into());
            }
            if let Some(t) = ch.get("tool") {
                let name = t["name"].as_str().ok_or("toolChoice.tool.name missing")?;
                if !tool_names.iter().any(|n| n == name) {
                    return Err(format!("toolChoice names unknown tool {name}"));
                }
            } else if !ch
                .get("auto")
                .or_else(|| ch.get("any"))
                .is_some_and(Value::is_object)
            {
                return Err("toolChoice must be auto, any or tool".into());
            }
        }
    }
    let mut previous_tool_uses: Vec<String> = Vec::new();
    let mut has_tool_blocks = false;
    for (i, message) in messages.iter().enumerate() {
        let m = message.as_object().ok_or("a message is not an object")?;
        only_keys(m, &["role", "content"], "message")?;
        let role = m
            .get("role")
            .and_then(Value::as_str)
            .ok_or("message role missing")?;
        let expected = if i % 2 == 0 { "user" } else { "assistant" };
        if role != expected {
            return Err(format!(
                "A conversation must alternate between user and assistant roles and start with a user message: message {i} is {role}"
            ));
        }
        let content = m
            .get("content")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty())
            .ok_or("message content must be a non-empty array")?;
        let mut tool_uses = Vec::new();
        for block in content {
            let b = block.as_object().ok_or("content block not an object")?;
            if b.len() != 1 {
                return Err(format!(
                    "a content block must have exactly one member: {block}"
                ));
            }
            let (kind, value) = b.iter().next().ok_or("empty block")?;
            match kind.as_str() {
                "text" => non_blank(value, "text")?,
                "image" => {
                    let img = value.as_object().ok_or("image not an object")?;
                    only_keys(img, &["format", "source"], "image")?;
                    if !matches!(
                        img.get("format").and_then(Value::as_str),
                        Some("png" | "jpeg" | "gif" | "webp")
                    ) {
                        return Err("image.format must be png, jpeg, gif or webp".into());
                    }
                    let bytes = img
                        .get("source")
                        .and_then(|s| s.get("bytes"))
                        .and_then(Value::as_str)
                        .ok_or("image.source.bytes missing")?;
                    if bytes.is_empty()
                        || !bytes
                            .bytes()
                            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
                    {
                        return Err("image.source.bytes is not base64".into());
                    }
                }
                "toolUse" => {
                    if role != "assistant" {
                        return Err("toolUse blocks are only allowed in assistant messages".into());
                    }
                    let t = value.as_object().ok_or("toolUse not an object")?;
                    only_keys(t, &["toolUseId", "name", "input"], "toolUse")?;
                    let id = t
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .ok_or("toolUse.toolUseId missing")?;
                    t.get("name")
                        .and_then(Value::as_str)
                        .ok_or("toolUse.name missing")?;
                    if !t.get("input").is_some_and(Value::is_object) {
                        return Err("toolUse.input must be an object".into());
                    }
                    tool_uses.push(id.to_owned());
                    has_tool_blocks = true;
                }
                "toolResult" => {
                    if role != "user" {
                        return Err("toolResult blocks are only allowed in user messages".into());
                    }
                    let r = value.as_object().ok_or("toolResult not an object")?;
                    only_keys(r, &["toolUseId", "content", "status"], "toolResult")?;
                    let id = r
                        .get("toolUseId")
                        .and_then(Value::as_str)
                        .ok_or("toolResult.toolUseId missing")?;
                    if !previous_tool_uses.iter().any(|u| u == id) {
                        return Err(format!(
                            "The toolResult blocks at messages.{i} must answer a toolUse of the previous turn: {id} does not"
                        ));
                    }
                    for c in r
                        .get("content")
                        .and_then(Value::as_array)
                        .ok_or("toolResult.content missing")?
                    {
                        let c = c.as_object().ok_or("toolResult content not an object")?;
                        if c.len() != 1 {
                            return Err("toolResult content block must have one member".into());
                        }
                        only_keys(
                            c,
                            &["text", "json", "image", "document", "video"],
                            "toolResult content",
                        )?;
                    }
                    if let Some(s) = r.get("status") {
                        if !matches!(s.as_str(), Some("success" | "error")) {
                            return Err("toolResult.status must be success or error".into());
                        }
                    }
                    has_tool_blocks = true;
                }
                "reasoningContent" | "document" | "video" | "guardContent" | "cachePoint" => {}
                other => return Err(format!("unknown content block {other}")),
            }
        }
        previous_tool_uses = tool_uses;
    }
    if has_tool_blocks && top.get("toolConfig").is_none() {
        return Err(
            "The toolConfig field must be defined when using toolUse and toolResult content blocks."
                .into(),
        );
    }
    Ok(())
}

fn only_keys(o: &Map<String, Value>, allowed: &[&str], what: &str) -> Result<(), String> {
    match o.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(format!(
            "Malformed input request: extraneous key [{k}] is not permitted in {what}"
        )),
        None => Ok(()),
    }
}

fn non_blank(v: &Value, what: &str) -> Result<(), String> {
    match v.as_str() {
        Some(s) if !s.trim().is_empty() => Ok(()),
        _ => Err(format!("The {what} field is blank or not a string.")),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// SigV4, from AWS's published algorithm

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

/// URI-encode as SigV4 does: unreserved bytes kept, `/` kept when `keep_slash`, everything
/// else `%XX` (upper case). Applied to an already encoded path this encodes it again, as the
/// canonical URI of every service but S3 requires.
fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `YYYYMMDDTHHMMSSZ` as unix seconds.
fn parse_amz_date(s: &str) -> Option<i64> {
    if s.len() != 16 || s.as_bytes()[8] != b'T' || !s.ends_with('Z') {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let days = days_from_civil(n(0..4)?, n(4..6)?, n(6..8)?);
    Some(days * 86_400 + n(9..11)? * 3600 + n(11..13)? * 60 + n(13..15)?)
}

/// A request's parts, for [`verify`].
#[derive(Debug)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (already percent-encoded), without the query.
    pub path: &'a str,
    /// The query string as sent (without `?`), possibly empty.
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// Verify a SigV4 `authorization` header for `service`, with `creds`, at `now` (unix seconds;
/// `None` skips the clock check, for AWS's fixed-time test vectors). `Err` says why not.
pub fn verify(
    req: &SignedRequest<'_>,
    creds: &MockCredentials,
    service: &str,
    now: Option<i64>,
) -> Result<(), (&'static str, String)> {
    let bad = |why: String| Err(("InvalidSignatureException", why));
    let header = |name: &str| crate::header_values(req.headers, name);
    let auth = match header("authorization").as_slice() {
        [one] => one.to_string(),
        other => return bad(format!("expected one authorization header, got {other:?}")),
    };
    let Some(rest) = auth.strip_prefix("AWS4-HMAC-SHA256 ") else {
        return bad("not AWS4-HMAC-SHA256".into());
    };
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = Some(v);
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(v);
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = Some(v);
        } else {
            return bad(format!("unknown authorization part {part}"));
        }
    }
    let (Some(credential), Some(signed_headers), Some(signature)) =
        (credential, signed_headers, signature)
    else {
        return Err((
            "IncompleteSignatureException",
            format!("incomplete authorization: {auth}"),
        ));
    };
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, scope_service, terminator] = scope.as_slice() else {
        return bad(format!("bad credential scope {credential}"));
    };
    if *key_id != creds.access_key_id {
        return Err((
            "UnrecognizedClientException",
            format!("The security token included in the request is invalid: key id {key_id}"),
        ));
    }
    if *region != creds.region || *scope_service != service || *terminator != "aws4_request" {
        return bad(format!(
            "credential scope {credential} is not {}/{service}/aws4_request",
            creds.region
        ));
    }
    let amz_date = match header("x-amz-date").as_slice() {
        [one] => one.to_string(),
        other => return bad(format!("expected one x-amz-date, got {other:?}")),
    };
    let Some(at) = parse_amz_date(&amz_date) else {
        return bad(format!("bad x-amz-date {amz_date}"));
    };
    if !amz_date.starts_with(date) || date.len() != 8 {
        return bad(format!(
            "scope date {date} is not the day of x-amz-date {amz_date}"
        ));
    }
    if let Some(now) = now {
        if (now - at).abs() > SKEW_SECS_MAX {
            return bad(format!("RequestTimeTooSkewed: {amz_date}"));
        }
    }
    let names: Vec<&str> = signed_headers.split(';').collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted != names
        || names
            .iter()
            .any(|n| n.is_empty() || n.to_ascii_lowercase() != *n)
    {
        return bad(format!(
            "SignedHeaders not sorted lower-case names: {signed_headers}"
        ));
    }
    let mut must_sign = vec!["host", "x-amz-date"];
    if !header("content-type").is_empty() {
        must_sign.push("content-type");
    }
    match (
        &creds.session_token,
        header("x-amz-security-token").as_slice(),
    ) {
        (Some(t), [sent]) if sent == t => must_sign.push("x-amz-security-token"),
        (None, []) => {}
        (_, sent) => {
            return Err((
                "UnrecognizedClientException",
                format!("The security token included in the request is invalid: sent {sent:?}"),
            ))
        }
    }
    for name in must_sign {
        if !names.contains(&name) {
            return bad(format!("{name} is not signed ({signed_headers})"));
        }
    }
    let mut canonical_headers = String::new();
    for name in &names {
        let values = header(name);
        if values.is_empty() {
            return bad(format!("signed header {name} is missing"));
        }
        let joined: Vec<String> = values
            .iter()
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        canonical_headers.push_str(&format!("{name}:{}\n", joined.join(",")));
    }
    let mut query: Vec<(String, String)> = req
        .query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k).unwrap_or_default(), false),
                uri_encode(&percent_decode(v).unwrap_or_default(), false),
            )
        })
        .collect();
    query.sort();
    let canonical_query: Vec<String> = query.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        uri_encode(req.path, true),
        canonical_query.join("&"),
        canonical_headers,
        signed_headers,
        sha256_hex(req.body)
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac(format!("AWS4{}", creds.secret_access_key).as_bytes(), date);
    let k_region = hmac(&k_date, region);
    let k_service = hmac(&k_region, service);
    let k_signing = hmac(&k_service, "aws4_request");
    let expected = hex(&hmac(&k_signing, &string_to_sign));
    if expected != signature {
        return bad(format!(
            "The request signature we calculated does not match the signature you provided. Canonical request:\n{canonical_request}"
        ));
    }
    Ok(())
}

fn verify_request(
    req: &Request,
    creds: &MockCredentials,
    service: &str,
    now: i64,
) -> Result<(), (&'static str, String)> {
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    verify(
        &SignedRequest {
            method: &req.method,
            path,
            query,
            headers: &req.headers,
            body: &req.body,
        },
        creds,
        service,
        Some(now),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(token: Option<&str>) -> MockCredentials {
        MockCredentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: token.map(str::to_owned),
            region: "us-east-1".into(),
        }
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// aws-sig-v4-test-suite `post-vanilla`, and a tampered copy.
    #[test]
    fn verifies_post_vanilla() {
        let h = headers(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"),
        ]);
        let post = |body| SignedRequest {
            method: "POST",
            path: "/",
            query: "",
            headers: &h,
            body,
        };
        let req = post(b"");
        verify(&req, &example(None), "service", None).expect("the published vector verifies");
        assert!(
            verify(&post(b"x"), &example(None), "service", None).is_err(),
            "another body"
        );
        assert!(
            verify(&req, &example(None), "service", Some(2_000_000_000)).is_err(),
            "skew"
        );
        assert!(
            verify(&req, &example(Some("t")), "service", None).is_err(),
            "token expected"
        );
    }

    /// The IAM ListUsers example of AWS's SigV4 guide (a query, a content type).
    #[test]
    fn verifies_the_iam_example() {
        let h = headers(&[
            ("Host", "iam.amazonaws.com"),
            ("Content-Type", "application/x-www-form-urlencoded; charset=utf-8"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"),
        ]);
        let get = |query| SignedRequest {
            method: "GET",
            path: "/",
            query,
            headers: &h,
            body: b"",
        };
        let req = get("Action=ListUsers&Version=2010-05-08");
        verify(&req, &example(None), "iam", None).expect("the published example verifies");
        let req = get("Action=ListUsers&Version=2010-05-09");
        assert!(verify(&req, &example(None), "iam", None).is_err());
    }

    #[test]
    fn dates_and_encoding() {
        assert_eq!(parse_amz_date("20150830T123600Z"), Some(1_440_938_160));
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("2015-08-30T12:36:00Z"), None);
        assert_eq!(
            uri_encode("/model/a%3A0/converse", true),
            "/model/a%253A0/converse"
        );
        assert_eq!(percent_decode("a%3A0%2Fb").as_deref(), Some("a:0/b"));
    }

    #[test]
    fn converse_validation() {
        let ok = json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]});
        validate_converse(&ok).expect("valid");
        for bad in [
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "modelId": "x"}),
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "stream": true}),
            json!({"messages": [{"role": "assistant", "content": [{"text": "Hi"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}, {"role": "user", "content": [{"text": "Hi"}]}]}),
            json!({"messages": [{"role": "user", "content": [{"text": " "}]}]}),
            json!({"messages": [{"role": "user", "content": []}]}),
            json!({"messages": [{"role": "user", "content": [{"text": "a", "image": {}}]}]}),
            json!({"messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "1"}]}}]}
            ]}),
            json!({"messages": [
                {"role": "user", "content": [{"text": "Hi"}]},
                {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
                {"role": "user", "content": [{"toolResult": {"toolUseId": "t2", "content": [{"text": "1"}]}}]}
            ], "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}]}}),
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "inferenceConfig": {"maxTokens": 0}}),
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}], "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}], "toolChoice": {"tool": {"name": "g"}}}}),
        ] {
            assert!(validate_converse(&bad).is_err(), "{bad}");
        }
        let tool_loop = json!({"messages": [
            {"role": "user", "content": [{"text": "Hi"}]},
            {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "f", "input": {}}}]},
            {"role": "user", "content": [{"toolResult": {"toolUseId": "t1", "content": [{"text": "1"}]}}, {"text": "thanks"}]}
        ], "toolConfig": {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {}}}}], "toolChoice": {"any": {}}}});
        validate_converse(&tool_loop).expect("valid tool loop");
    }
}
