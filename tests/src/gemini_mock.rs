//! A strict mock of the Google Gemini API (`models.generateContent` and
//! `models.streamGenerateContent?alt=sse`, v1beta) for the end-to-end tests of the Gemini
//! provider: [`gemini_upstream`] refuses what the real service refuses, in Google's error shape,
//! and answers like it.
//!
//! What it checks, per request:
//!
//! - `POST /v1beta/models/{model}:generateContent` (no query) or
//!   `POST /v1beta/models/{model}:streamGenerateContent?alt=sse`; anything else is a 404
//!   `NOT_FOUND`.
//! - The key: `x-goog-api-key` equal to the configured key, exactly once (none: 403
//!   `PERMISSION_DENIED`; another: 400 `INVALID_ARGUMENT` with reason `API_KEY_INVALID`), no
//!   `key=` query parameter, and no other credential header (`authorization`, `api-key`,
//!   `x-api-key`, `x-amz-*`).
//! - `content-type: application/json` and a JSON object body.
//! - Every field against the v1beta reference: an unknown one is Google's 400
//!   `Invalid JSON payload received. Unknown name "x" at 'generation_config': Cannot find
//!   field.`; roles only `user` and `model`; every turn has parts, each part one kind of data;
//!   a `functionResponse` only in a turn right after a `model` turn with a `functionCall` of
//!   that name, as many responses as calls; `parameters` and `parametersJsonSchema` not both;
//!   `responseJsonSchema` only with `responseMimeType: application/json`; enum values as the
//!   reference names them.
//! - Thought signatures, as Gemini 3 does: the first `functionCall` part of every `model` turn
//!   must carry the `thoughtSignature` the mock handed out for that call
//!   ([`signature_for`] its name); without it, 400 `Function call is missing a
//!   thought_signature in functionCall parts.`
//!
//! What it answers: with `tools` and a last `user` turn of text, a `functionCall` of the first
//! declared function (string parameters filled with `"Paris"`) with its signature; after a
//! turn of `functionResponse`s, text quoting each result (`Tool get_weather returned
//! {"temp_c":21}.`); otherwise `Hello from {model}.`. A `thought` part first when
//! `generationConfig.thinkingConfig.includeThoughts` is set. Streamed: the text in pieces of
//! [`STREAM_PIECE_CHARS`], one event each, `usageMetadata` in every event (cumulative), the
//! `finishReason` on the last, CRLF line ends as Google writes them. The model
//! [`QUOTA_MODEL`] always answers 429 `RESOURCE_EXHAUSTED` with a `RetryInfo` detail of
//! [`QUOTA_RETRY_DELAY_S`] seconds.
//!
//! Usage it reports: `promptTokenCount` [`PROMPT_TOKENS`], `candidatesTokenCount` the answer's
//! words (a call counts [`CALL_TOKENS`]), `thoughtsTokenCount` [`THOUGHT_TOKENS`] when it
//! thought, `totalTokenCount` their sum.

use std::io::{self, Write};
use std::net::TcpStream;

use serde_json::{json, Map, Value};

use crate::{write_chunk, write_response, Action, MockUpstream, Request};

/// The model id whose every request is answered 429 `RESOURCE_EXHAUSTED`.
pub const QUOTA_MODEL: &str = "gemini-quota";
/// The `retryDelay` of that 429's `RetryInfo`, seconds.
pub const QUOTA_RETRY_DELAY_S: u32 = 7;
/// The `promptTokenCount` of every answer.
pub const PROMPT_TOKENS: u64 = 12;
/// The `candidatesTokenCount` of a function call.
pub const CALL_TOKENS: u64 = 5;
/// The `thoughtsTokenCount` of an answer that thought.
pub const THOUGHT_TOKENS: u64 = 4;
/// The characters of text per streamed event.
pub const STREAM_PIECE_CHARS: usize = 6;
/// The thought the mock shows when asked for thoughts.
pub const THOUGHT_TEXT: &str = "Thinking it over.";

/// The `thoughtSignature` the mock hands out with a call of `name`: standard base64 with `+`,
/// `/` and padding, as Google writes `bytes` fields.
pub fn signature_for(name: &str) -> String {
    let mut bytes = vec![0xfb, 0xff, 0xbf, 0x00];
    bytes.extend_from_slice(b"sig:");
    bytes.extend_from_slice(name.as_bytes());
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Google's error body.
pub fn google_error(code: u16, status: &str, message: &str, details: Value) -> Value {
    let mut error = json!({"code": code, "message": message, "status": status});
    if details.as_array().is_some_and(|d| !d.is_empty()) {
        error["details"] = details;
    }
    json!({ "error": error })
}

/// A refusal: the HTTP status and Google's error body.
type Refusal = (u16, Value);

fn invalid(message: &str) -> Refusal {
    (
        400,
        google_error(400, "INVALID_ARGUMENT", message, json!([])),
    )
}

fn unknown_name(name: &str, at: &str) -> Refusal {
    let message = if at.is_empty() {
        format!("Invalid JSON payload received. Unknown name \"{name}\": Cannot find field.")
    } else {
        format!(
            "Invalid JSON payload received. Unknown name \"{name}\" at '{at}': Cannot find field."
        )
    };
    let details = json!([{"@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": at, "description": message}]}]);
    (
        400,
        google_error(400, "INVALID_ARGUMENT", &message, details),
    )
}

/// `at` in Google's snake_case path notation for a child `key`.
fn child(at: &str, key: &str) -> String {
    let mut snake = String::new();
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    if at.is_empty() {
        snake
    } else {
        format!("{at}.{snake}")
    }
}

/// `v` must be an object of only `allowed` keys.
fn fields<'a>(v: &'a Value, allowed: &[&str], at: &str) -> Result<&'a Map<String, Value>, Refusal> {
    let Some(object) = v.as_object() else {
        return Err(invalid(&format!(
            "Invalid JSON payload received. Expected an object at '{at}'."
        )));
    };
    for key in object.keys() {
        if !allowed.contains(&key.as_str()) {
            return Err(unknown_name(key, at));
        }
    }
    Ok(object)
}

fn each<'a>(v: &'a Value, at: &str) -> Result<&'a Vec<Value>, Refusal> {
    v.as_array().ok_or_else(|| {
        invalid(&format!(
            "Invalid JSON payload received. Expected an array at '{at}'."
        ))
    })
}

const REQUEST: &[&str] = &[
    "contents",
    "tools",
    "toolConfig",
    "safetySettings",
    "systemInstruction",
    "generationConfig",
    "cachedContent",
];
const CONTENT: &[&str] = &["role", "parts"];
const PART: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
    "thought",
    "thoughtSignature",
    "videoMetadata",
    "partMetadata",
];
const DATA_KINDS: &[&str] = &[
    "text",
    "inlineData",
    "fileData",
    "functionCall",
    "functionResponse",
    "executableCode",
    "codeExecutionResult",
];
const BLOB: &[&str] = &["mimeType", "data"];
const FILE_DATA: &[&str] = &["mimeType", "fileUri"];
const FUNCTION_CALL: &[&str] = &["id", "name", "args"];
const FUNCTION_RESPONSE: &[&str] = &[
    "id",
    "name",
    "response",
    "willContinue",
    "scheduling",
    "parts",
];
const TOOL: &[&str] = &[
    "functionDeclarations",
    "googleSearchRetrieval",
    "codeExecution",
    "googleSearch",
    "urlContext",
    "computerUse",
    "fileSearch",
    "googleMaps",
];
const FUNCTION_DECLARATION: &[&str] = &[
    "name",
    "description",
    "behavior",
    "parameters",
    "parametersJsonSchema",
    "response",
    "responseJsonSchema",
];
const TOOL_CONFIG: &[&str] = &["functionCallingConfig", "retrievalConfig"];
const FUNCTION_CALLING_CONFIG: &[&str] = &["mode", "allowedFunctionNames"];
const GENERATION_CONFIG: &[&str] = &[
    "stopSequences",
    "responseMimeType",
    "responseSchema",
    "responseJsonSchema",
    "responseModalities",
    "candidateCount",
    "maxOutputTokens",
    "temperature",
    "topP",
    "topK",
    "seed",
    "presencePenalty",
    "frequencyPenalty",
    "responseLogprobs",
    "logprobs",
    "enableEnhancedCivicAnswers",
    "speechConfig",
    "thinkingConfig",
    "imageConfig",
    "mediaResolution",
];
const THINKING_CONFIG: &[&str] = &["includeThoughts", "thinkingBudget", "thinkingLevel"];

/// What a valid request asks for.
#[derive(Debug)]
struct Ask {
    model: String,
    stream: bool,
    thoughts: bool,
    reply: Reply,
}

#[derive(Debug)]
enum Reply {
    Text(String),
    Call { name: String, args: Value },
}

/// The checks of the module docs; the answer to give, or the refusal.
fn check(req: &Request, key: &str) -> Result<Ask, Refusal> {
    // The credential.
    let keys = req.headers_named("x-goog-api-key");
    if keys.is_empty() {
        return Err((
            403,
            google_error(
                403,
                "PERMISSION_DENIED",
                "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
                json!([]),
            ),
        ));
    }
    if keys != [key] {
        return Err((
            400,
            google_error(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]),
            ),
        ));
    }
    for (name, _) in &req.headers {
        let lower = name.to_ascii_lowercase();
        if matches!(lower.as_str(), "authorization" | "api-key" | "x-api-key")
            || lower.starts_with("x-amz-")
        {
            return Err(invalid(&format!(
                "a client credential reached the upstream: {name}"
            )));
        }
    }
    if req.method != "POST" {
        return Err((
            404,
            google_error(404, "NOT_FOUND", "Method not found.", json!([])),
        ));
    }
    // The path.
    let (path, query) = req.path.split_once('?').unwrap_or((&req.path, ""));
    if query.split('&').any(|p| p.starts_with("key=")) {
        return Err(invalid("the API key came in the query string"));
    }
    let not_found = || {
        (
            404,
            google_error(
                404,
                "NOT_FOUND",
                &format!(
                    "The requested URL {} was not found on this server.",
                    req.path
                ),
                json!([]),
            ),
        )
    };
    let rest = path.strip_prefix("/v1beta/models/").ok_or_else(not_found)?;
    let (model, method) = rest.split_once(':').ok_or_else(not_found)?;
    let stream = match (method, query) {
        ("generateContent", "") => false,
        ("streamGenerateContent", "alt=sse") => true,
        _ => return Err(not_found()),
    };
    if model.is_empty() || model.contains('/') {
        return Err(not_found());
    }
    if model == QUOTA_MODEL {
        return Err((
            429,
            google_error(
                429,
                "RESOURCE_EXHAUSTED",
                "You exceeded your current quota, please check your plan and billing details.",
                json!([
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests", "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                    {"@type": "type.googleapis.com/google.rpc.Help", "links": [{"description": "Learn more about Gemini API quotas", "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{QUOTA_RETRY_DELAY_S}s")}
                ]),
            ),
        ));
    }
    let json_type = req
        .header("content-type")
        .is_some_and(|t| t.to_ascii_lowercase().starts_with("application/json"));
    if !json_type {
        return Err(invalid(
            "Invalid JSON payload received. Content-Type must be application/json.",
        ));
    }
    let body: Value = serde_json::from_slice(&req.body)
        .map_err(|e| invalid(&format!("Invalid JSON payload received. {e}")))?;

    // The fields.
    let top = fields(&body, REQUEST, "")?;
    if let Some(system) = top.get("systemInstruction") {
        check_content(system, "system_instruction", false)?;
    }
    let Some(contents) = top.get("contents") else {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    };
    let contents = each(contents, "contents")?;
    if contents.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents: contents is not specified",
        ));
    }
    for content in contents {
        check_content(content, "contents", true)?;
    }
    check_turns(contents)?;
    let mut declared: Vec<(String, Value)> = Vec::new();
    if let Some(tools) = top.get("tools") {
        for tool in each(tools, "tools")? {
            let tool = fields(tool, TOOL, "tools")?;
            if let Some(decls) = tool.get("functionDeclarations") {
                for d in each(decls, "tools.function_declarations")? {
                    let d = fields(d, FUNCTION_DECLARATION, "tools.function_declarations")?;
                    let Some(name) = d.get("name").and_then(Value::as_str) else {
                        return Err(invalid("* GenerateContentRequest.tools[0].function_declarations[0].name: Name cannot be empty."));
                    };
                    if d.contains_key("parameters") && d.contains_key("parametersJsonSchema") {
                        return Err(invalid(
                            "parameters and parameters_json_schema are mutually exclusive",
                        ));
                    }
                    let schema = d
                        .get("parametersJsonSchema")
                        .cloned()
                        .unwrap_or(Value::Null);
                    declared.push((name.to_owned(), schema));
                }
            }
        }
    }
    if let Some(tool_config) = top.get("toolConfig") {
        let tool_config = fields(tool_config, TOOL_CONFIG, "tool_config")?;
        if let Some(fcc) = tool_config.get("functionCallingConfig") {
            let fcc = fields(
                fcc,
                FUNCTION_CALLING_CONFIG,
                "tool_config.function_calling_config",
            )?;
            let mode = fcc
                .get("mode")
                .and_then(Value::as_str)
                .unwrap_or("MODE_UNSPECIFIED");
            if !["MODE_UNSPECIFIED", "AUTO", "ANY", "NONE", "VALIDATED"].contains(&mode) {
                return Err(invalid(&format!("Invalid value at 'tool_config.function_calling_config.mode' (type.googleapis.com/google.ai.generativelanguage.v1beta.FunctionCallingConfig.Mode), \"{mode}\"")));
            }
            if fcc.contains_key("allowedFunctionNames") && mode != "ANY" && mode != "VALIDATED" {
                return Err(invalid(
                    "allowed_function_names is only allowed with mode ANY",
                ));
            }
        }
    }
    let mut thoughts = false;
    if let Some(config) = top.get("generationConfig") {
        let config = fields(config, GENERATION_CONFIG, "generation_config")?;
        for (k, integer) in [
            ("maxOutputTokens", true),
            ("topK", true),
            ("seed", true),
            ("candidateCount", true),
            ("temperature", false),
            ("topP", false),
            ("presencePenalty", false),
            ("frequencyPenalty", false),
        ] {
            if let Some(v) = config.get(k) {
                if (integer && !(v.is_i64() || v.is_u64())) || !v.is_number() {
                    return Err(invalid(&format!(
                        "Invalid value at '{}'",
                        child("generation_config", k)
                    )));
                }
            }
        }
        if let Some(stops) = config.get("stopSequences") {
            let stops = each(stops, "generation_config.stop_sequences")?;
            if stops.len() > 5 || !stops.iter().all(Value::is_string) {
                return Err(invalid("stop_sequences: at most 5 strings"));
            }
        }
        let mime = config.get("responseMimeType").and_then(Value::as_str);
        if config.contains_key("responseJsonSchema") && mime != Some("application/json") {
            return Err(invalid(
                "response_json_schema requires response_mime_type application/json",
            ));
        }
        if let Some(thinking) = config.get("thinkingConfig") {
            let thinking = fields(
                thinking,
                THINKING_CONFIG,
                "generation_config.thinking_config",
            )?;
            if let Some(level) = thinking.get("thinkingLevel") {
                if !["MINIMAL", "LOW", "MEDIUM", "HIGH"]
                    .contains(&level.as_str().unwrap_or_default())
                {
                    return Err(invalid(
                        "Invalid value at 'generation_config.thinking_config.thinking_level'",
                    ));
                }
            }
            thoughts = thinking.get("includeThoughts") == Some(&Value::Bool(true));
        }
    }

    // The answer.
    let last = contents
        .last()
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let results: Vec<String> = last
        .iter()
        .filter_map(|p| p.get("functionResponse"))
        .map(|fr| {
            format!(
                "Tool {} returned {}.",
                fr["name"].as_str().unwrap_or_default(),
                fr["response"]["result"]
            )
        })
        .collect();
    let reply = if !results.is_empty() {
        Reply::Text(results.join(" "))
    } else if let Some((name, schema)) = declared.first() {
        let mut args = Map::new();
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (k, v) in props {
                if v.get("type") == Some(&json!("string")) {
                    args.insert(k.clone(), json!("Paris"));
                }
            }
        }
        Reply::Call {
            name: name.clone(),
            args: Value::Object(args),
        }
    } else {
        Reply::Text(format!("Hello from {model}."))
    };
    Ok(Ask {
        model: model.to_owned(),
        stream,
        thoughts,
        reply,
    })
}

/// A `Content`: its fields, its role, its parts.
fn check_content(content: &Value, at: &str, role_required: bool) -> Result<(), Refusal> {
    let c = fields(content, CONTENT, at)?;
    match c.get("role").and_then(Value::as_str) {
        Some("user" | "model") => {}
        None if !role_required => {}
        Some(other) => {
            return Err(invalid(&format!(
                "Please use a valid role: user, model. (got {other})"
            )));
        }
        None => return Err(invalid("Please use a valid role: user, model.")),
    }
    let parts = c
        .get("parts")
        .ok_or_else(|| invalid(&format!("* {at}.parts: contents.parts must not be empty.")))?;
    let parts = each(parts, &child(at, "parts"))?;
    if parts.is_empty() {
        return Err(invalid(
            "* GenerateContentRequest.contents.parts: contents.parts must not be empty.",
        ));
    }
    for part in parts {
        let parts_at = child(at, "parts");
        let p = fields(part, PART, &parts_at)?;
        // The object at `key` of the part, checked against `allowed`, when there is one.
        let sub = |key: &str, allowed: &[&str]| {
            p.get(key)
                .map(|v| fields(v, allowed, &child(&parts_at, key)))
                .transpose()
        };
        let kinds = DATA_KINDS.iter().filter(|k| p.contains_key(**k)).count();
        if kinds != 1 {
            return Err(invalid("* GenerateContentRequest.contents[].parts[].data: required oneof field 'data' must have one initialized field"));
        }
        if let Some(t) = p.get("text") {
            if !t.is_string() {
                return Err(invalid(
                    "Invalid value at 'contents.parts.text' (TYPE_STRING)",
                ));
            }
        }
        if let Some(b) = sub("inlineData", BLOB)? {
            let data = b.get("data").and_then(Value::as_str).unwrap_or_default();
            if !b.get("mimeType").is_some_and(Value::is_string) || data.is_empty() {
                return Err(invalid("inline_data needs mime_type and data"));
            }
        }
        if let Some(f) = sub("fileData", FILE_DATA)? {
            if !f.get("fileUri").is_some_and(Value::is_string) {
                return Err(invalid("file_data needs file_uri"));
            }
        }
        if let Some(fc) = sub("functionCall", FUNCTION_CALL)? {
            if !fc.get("name").is_some_and(Value::is_string) {
                return Err(invalid("function_call needs a name"));
            }
            if fc.get("args").is_some_and(|a| !a.is_object()) {
                return Err(invalid("Invalid value at 'contents.parts.function_call.args' (type.googleapis.com/google.protobuf.Struct)"));
            }
        }
        if let Some(fr) = sub("functionResponse", FUNCTION_RESPONSE)? {
            if !fr.get("name").is_some_and(Value::is_string)
                || !fr.get("response").is_some_and(Value::is_object)
            {
                return Err(invalid(
                    "function_response needs a name and an object response",
                ));
            }
        }
        if let Some(s) = p.get("thoughtSignature") {
            if !s.is_string() {
                return Err(invalid(
                    "Invalid value at 'contents.parts.thought_signature' (TYPE_BYTES)",
                ));
            }
        }
    }
    Ok(())
}

/// Function responses follow calls of their names, as many; calls carry their signatures.
fn check_turns(contents: &[Value]) -> Result<(), Refusal> {
    let parts_of = |c: &Value| c["parts"].as_array().cloned().unwrap_or_default();
    for (i, content) in contents.iter().enumerate() {
        let parts = parts_of(content);
        if content["role"] == "model" {
            if let Some(first) = parts.iter().find(|p| p.get("functionCall").is_some()) {
                let name = first["functionCall"]["name"].as_str().unwrap_or_default();
                if first.get("thoughtSignature").and_then(Value::as_str)
                    != Some(signature_for(name).as_str())
                {
                    return Err(invalid(&format!(
                        "Function call is missing a thought_signature in functionCall parts. This is required for tools to work correctly, and missing thought_signature may lead to degraded model performance. Additional data, function call `{name}` , position {}.",
                        i + 1
                    )));
                }
            }
        }
        let responses: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("functionResponse"))
            .map(|r| r["name"].as_str().unwrap_or_default())
            .collect();
        if responses.is_empty() {
            continue;
        }
        let previous = i.checked_sub(1).and_then(|j| contents.get(j));
        let calls: Vec<String> = previous
            .filter(|p| p["role"] == "model")
            .map(parts_of)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p["functionCall"]["name"].as_str().map(str::to_owned))
            .collect();
        if calls.len() != responses.len() {
            return Err(invalid("Please ensure that the number of function response parts is equal to the number of function call parts of the function call turn."));
        }
        for name in responses {
            if !calls.iter().any(|c| c == name) {
                return Err(invalid(&format!("Please ensure that function response turn comes immediately after a function call turn. No function call named {name}.")));
            }
        }
    }
    Ok(())
}

fn usage(candidates: u64, thoughts: bool) -> Value {
    let mut u = json!({
        "promptTokenCount": PROMPT_TOKENS,
        "candidatesTokenCount": candidates,
        "totalTokenCount": PROMPT_TOKENS + candidates + if thoughts { THOUGHT_TOKENS } else { 0 },
        "promptTokensDetails": [{"modality": "TEXT", "tokenCount": PROMPT_TOKENS}]
    });
    if thoughts {
        u["thoughtsTokenCount"] = json!(THOUGHT_TOKENS);
    }
    u
}

fn response(model: &str, parts: Vec<Value>, finish: Option<&str>, usage: Value) -> Value {
    let mut candidate = json!({"content": {"parts": parts, "role": "model"}, "index": 0});
    if let Some(f) = finish {
        candidate["finishReason"] = json!(f);
    }
    json!({"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "mock-response-1"})
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

fn answer(ask: &Ask, s: &mut TcpStream) -> io::Result<()> {
    let thought = json!({"text": THOUGHT_TEXT, "thought": true});
    let (last_parts, candidates) = match &ask.reply {
        Reply::Call { name, args } => (
            vec![
                json!({"functionCall": {"name": name, "args": args}, "thoughtSignature": signature_for(name)}),
            ],
            CALL_TOKENS,
        ),
        Reply::Text(t) => (vec![json!({"text": t})], words(t)),
    };
    if !ask.stream {
        let mut parts = Vec::new();
        if ask.thoughts {
            parts.push(thought);
        }
        parts.extend(last_parts);
        let body = response(
            &ask.model,
            parts,
            Some("STOP"),
            usage(candidates, ask.thoughts),
        );
        return write_response(
            s,
            200,
            "application/json; charset=UTF-8",
            body.to_string().as_bytes(),
        );
    }
    s.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    let mut events = Vec::new();
    if ask.thoughts {
        events.push(response(&ask.model, vec![thought], None, usage(0, true)));
    }
    match &ask.reply {
        Reply::Call { .. } => {
            events.push(response(
                &ask.model,
                last_parts,
                Some("STOP"),
                usage(candidates, ask.thoughts),
            ));
        }
        Reply::Text(t) => {
            let chars: Vec<char> = t.chars().collect();
            let pieces: Vec<String> = chars
                .chunks(STREAM_PIECE_CHARS)
                .map(|c| c.iter().collect())
                .collect();
            let mut sent = String::new();
            for (i, piece) in pieces.iter().enumerate() {
                sent.push_str(piece);
                let last = i + 1 == pieces.len();
                events.push(response(
                    &ask.model,
                    vec![json!({"text": piece})],
                    last.then_some("STOP"),
                    usage(words(&sent), ask.thoughts),
                ));
            }
        }
    }
    for e in events {
        write_chunk(s, format!("data: {e}\r\n\r\n").as_bytes())?;
    }
    s.write_all(b"0\r\n\r\n")
}

/// The strict Gemini mock of the module docs, accepting `key` as its API key.
pub fn gemini_upstream(key: &str) -> MockUpstream {
    let key = key.to_owned();
    MockUpstream::start(
        move |req: &Request, s: &mut TcpStream| -> io::Result<Action> {
            match check(req, &key) {
                Ok(ask) => answer(&ask, s)?,
                Err((status, body)) => {
                    write_response(
                        s,
                        status,
                        "application/json; charset=UTF-8",
                        body.to_string().as_bytes(),
                    )?;
                }
            }
            Ok(Action::KeepAlive)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AIza-test";

    fn request(path: &str, headers: &[(&str, &str)], body: &Value) -> Request {
        let mut h: Vec<(String, String)> = vec![("content-type".into(), "application/json".into())];
        h.extend(
            headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        Request {
            method: "POST".into(),
            path: path.into(),
            version: "HTTP/1.1".into(),
            headers: h,
            body: body.to_string().into_bytes(),
            chunked: false,
            conn: 0,
            trailers: Vec::new(),
        }
    }

    fn run(path: &str, headers: &[(&str, &str)], body: &Value) -> Result<Ask, Refusal> {
        check(&request(path, headers, body), KEY)
    }

    const PATH: &str = "/v1beta/models/gemini-2.0-flash:generateContent";

    fn hello() -> Value {
        json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
    }

    #[test]
    fn the_signature_has_the_characters_an_id_must_map() {
        let s = signature_for("get_weather");
        assert!(
            s.contains('+') && s.contains('/') && s.ends_with('='),
            "{s}"
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn key_path_and_credentials() {
        let key = [("x-goog-api-key", KEY)];
        assert!(run(PATH, &key, &hello()).is_ok());
        let stream = run(
            "/v1beta/models/m:streamGenerateContent?alt=sse",
            &key,
            &hello(),
        )
        .expect("ok");
        assert!(stream.stream);
        assert_eq!(run(PATH, &[], &hello()).expect_err("no key").0, 403);
        assert_eq!(
            run(PATH, &[("x-goog-api-key", "other")], &hello())
                .expect_err("bad key")
                .0,
            400
        );
        for extra in ["Authorization", "api-key", "x-api-key", "X-Amz-Date"] {
            let h = [("x-goog-api-key", KEY), (extra, "v")];
            assert_eq!(run(PATH, &h, &hello()).expect_err(extra).0, 400, "{extra}");
        }
        for p in [
            "/v1/models/m:generateContent",
            "/v1beta/models/m:generateContent?alt=sse",
            "/v1beta/models/m:streamGenerateContent",
            "/v1beta/models/m:countTokens",
            "/v1beta/models/a/b:generateContent",
        ] {
            assert_eq!(run(p, &key, &hello()).expect_err(p).0, 404, "{p}");
        }
        assert_eq!(
            run(&format!("{PATH}?key={KEY}"), &key, &hello())
                .expect_err("query key")
                .0,
            400
        );
        let quota = run(
            "/v1beta/models/gemini-quota:generateContent",
            &key,
            &hello(),
        )
        .expect_err("quota");
        assert_eq!(quota.0, 429);
        assert_eq!(quota.1["error"]["details"][2]["retryDelay"], "7s");
    }

    #[test]
    fn fields_roles_calls_and_signatures() {
        let key = [("x-goog-api-key", KEY)];
        let refused = |body: Value| {
            run(PATH, &key, &body).expect_err("refused").1["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        };
        assert!(refused(json!({"contents": [], "frequency_penalty": 1}))
            .contains("Unknown name \"frequency_penalty\""));
        assert!(refused(json!({"contents": [{"role": "user", "parts": [{"text": "x"}]}], "generationConfig": {"max_tokens": 1}})).contains("at 'generation_config'"));
        assert!(
            refused(json!({"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}))
                .contains("valid role")
        );
        assert!(
            refused(json!({"contents": [{"role": "user", "parts": []}]}))
                .contains("must not be empty")
        );
        let call = |sig: Option<String>| {
            let mut part =
                json!({"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}});
            if let Some(s) = sig {
                part["thoughtSignature"] = json!(s);
            }
            json!({"contents": [
                {"role": "user", "parts": [{"text": "Weather?"}]},
                {"role": "model", "parts": [part]},
                {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"result": {"temp_c": 21}}}}]}
            ]})
        };
        assert!(refused(call(None)).contains("missing a thought_signature"));
        assert!(refused(call(Some("AAAA".into()))).contains("missing a thought_signature"));
        let ok = run(PATH, &key, &call(Some(signature_for("get_weather")))).expect("accepted");
        match ok.reply {
            Reply::Text(t) => assert_eq!(t, "Tool get_weather returned {\"temp_c\":21}."),
            other => panic!("{other:?}"),
        }
        let orphan = json!({"contents": [
            {"role": "user", "parts": [{"text": "Weather?"}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {}}}]}
        ]});
        assert!(refused(orphan).contains("function call"));
        let tools = json!({"contents": [{"role": "user", "parts": [{"text": "Weather?"}]}],
            "tools": [{"functionDeclarations": [{"name": "get_weather", "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}],
            "generationConfig": {"thinkingConfig": {"includeThoughts": true, "thinkingLevel": "LOW"}}});
        let ask = run(PATH, &key, &tools).expect("accepted");
        assert!(ask.thoughts);
        match ask.reply {
            Reply::Call { name, args } => {
                assert_eq!(name, "get_weather");
                assert_eq!(args, json!({"city": "Paris"}));
            }
            other => panic!("{other:?}"),
        }
    }
}
