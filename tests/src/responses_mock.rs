//! A strict mock of OpenAI's Responses API (`POST /v1/responses`) for end-to-end tests: it
//! checks requests as the service does and answers, whole or streamed, with the real shapes.
//!
//! - Only `POST /v1/responses` (else 404), with `Authorization: Bearer <key>` (else 401) and no
//!   other credential header (`api-key`, `x-api-key`, `x-goog-api-key`, `x-amz-security-token`:
//!   400), a JSON object body.
//! - Unknown request fields, at the top level, in `input` items and their content parts, in
//!   `tools`, `text`, `reasoning` and `stream_options`, are refused with OpenAI's 400
//!   (`{"error":{"message":"Unknown parameter: 'x'.","type":"invalid_request_error","param":"x","code":"unknown_parameter"}}`),
//!   as are `input` items of the wrong shape, and a `function_call_output` whose `call_id`
//!   answers no earlier `function_call`.
//! - Model [`QUOTA_MODEL`]: 429 with OpenAI's rate-limit error and `retry-after: 1`.
//! - The answer: with `tools` given and the last input a user message (or `input` a string), a
//!   `function_call` of the first tool (`call_id` [`CALL_ID`], arguments [`CALL_ARGUMENTS`]);
//!   after a `function_call_output`, the text [`TOOL_ANSWER_PREFIX`] followed by that output;
//!   else [`TEXT`]. A `reasoning` item comes first. Usage is always [`INPUT_TOKENS`] (of which
//!   [`CACHED_TOKENS`] cached) in and [`OUTPUT_TOKENS`] (of which [`REASONING_TOKENS`]
//!   reasoning) out. `"stream": true`: the event sequence the service sends (`response.created`,
//!   `response.in_progress`, item and part events, text or argument deltas a word at a time,
//!   `response.completed` with the whole response), each with its `sequence_number`, one chunk
//!   per event.

use std::io::{self, Write};
use std::net::TcpStream;

use serde_json::{json, Map, Value};

use crate::{write_chunk, write_response, Action, MockUpstream, Request};

/// The model that answers 429.
pub const QUOTA_MODEL: &str = "resp-quota";
/// The plain answer's text.
pub const TEXT: &str = "Hello from the Responses mock.";
/// The answer after a tool result: this, then the tool's output.
pub const TOOL_ANSWER_PREFIX: &str = "The tool said: ";
/// The `call_id` of the function call the mock makes.
pub const CALL_ID: &str = "call_resp_mock_1";
/// The arguments of that call.
pub const CALL_ARGUMENTS: &str = r#"{"city":"Paris"}"#;
/// `usage.input_tokens` of every answer.
pub const INPUT_TOKENS: u64 = 1000;
/// `usage.input_tokens_details.cached_tokens` (part of the input tokens).
pub const CACHED_TOKENS: u64 = 400;
/// `usage.output_tokens` of every answer.
pub const OUTPUT_TOKENS: u64 = 300;
/// `usage.output_tokens_details.reasoning_tokens` (part of the output tokens).
pub const REASONING_TOKENS: u64 = 100;

/// The Responses API's top-level request fields.
const FIELDS: &[&str] = &[
    "background",
    "conversation",
    "include",
    "input",
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "metadata",
    "model",
    "parallel_tool_calls",
    "previous_response_id",
    "prompt",
    "prompt_cache_key",
    "prompt_cache_retention",
    "reasoning",
    "safety_identifier",
    "service_tier",
    "store",
    "stream",
    "stream_options",
    "temperature",
    "text",
    "tool_choice",
    "tools",
    "top_logprobs",
    "top_p",
    "truncation",
    "user",
];

/// Headers that carry another provider's credential.
const OTHER_CREDENTIALS: [&str; 4] = [
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "x-amz-security-token",
];

/// Starts the mock; it accepts `Authorization: Bearer {key}`.
pub fn start(key: &str) -> MockUpstream {
    let bearer = format!("Bearer {key}");
    MockUpstream::start(
        move |req: &Request, s: &mut TcpStream| -> io::Result<Action> {
            match answer(req, &bearer) {
                Ok(Answer::Whole(v)) => {
                    write_response(s, 200, "application/json", v.to_string().as_bytes())?;
                }
                Ok(Answer::Stream(events)) => {
                    s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n\r\n",
                )?;
                    for e in events {
                        let kind = e["type"].as_str().unwrap_or_default().to_owned();
                        write_chunk(s, format!("event: {kind}\ndata: {e}\n\n").as_bytes())?;
                    }
                    s.write_all(b"0\r\n\r\n")?;
                }
                Err(Refusal {
                    status,
                    body,
                    retry_after,
                }) => {
                    let body = body.to_string();
                    let extra = if retry_after {
                        "retry-after: 1\r\n"
                    } else {
                        ""
                    };
                    s.write_all(
                    format!(
                        "HTTP/1.1 {status} Refused\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )?;
                }
            }
            Ok(Action::KeepAlive)
        },
    )
}

enum Answer {
    Whole(Value),
    Stream(Vec<Value>),
}

struct Refusal {
    status: u16,
    body: Value,
    retry_after: bool,
}

/// OpenAI's error body.
fn error(
    status: u16,
    message: &str,
    kind: &str,
    param: Option<&str>,
    code: Option<&str>,
) -> Refusal {
    Refusal {
        status,
        body: json!({"error": {"message": message, "type": kind, "param": param, "code": code}}),
        retry_after: false,
    }
}

fn unknown(param: &str) -> Refusal {
    error(
        400,
        &format!("Unknown parameter: '{param}'."),
        "invalid_request_error",
        Some(param),
        Some("unknown_parameter"),
    )
}

fn invalid(param: &str, message: &str) -> Refusal {
    error(
        400,
        message,
        "invalid_request_error",
        Some(param),
        Some("invalid_value"),
    )
}

/// Refuse keys of `object` (at `at`, for the error's `param`) not in `allowed`.
fn only(object: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), Refusal> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) if at.is_empty() => Err(unknown(k)),
        Some(k) => Err(unknown(&format!("{at}.{k}"))),
        None => Ok(()),
    }
}

fn answer(req: &Request, bearer: &str) -> Result<Answer, Refusal> {
    if req.method != "POST" || req.path != "/v1/responses" {
        return Err(error(
            404,
            &format!("Invalid URL ({} {})", req.method, req.path),
            "invalid_request_error",
            None,
            None,
        ));
    }
    if req.headers_named("authorization") != [bearer] {
        return Err(error(
            401,
            "Incorrect API key provided.",
            "invalid_request_error",
            None,
            Some("invalid_api_key"),
        ));
    }
    if let Some(h) = OTHER_CREDENTIALS.iter().find(|h| req.header(h).is_some()) {
        return Err(invalid(
            "headers",
            &format!("unexpected credential header {h}"),
        ));
    }
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(&req.body) else {
        return Err(invalid(
            "body",
            "We could not parse the JSON body of your request.",
        ));
    };
    only(&body, "", FIELDS)?;
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return Err(error(
            400,
            "Missing required parameter: 'model'.",
            "invalid_request_error",
            Some("model"),
            Some("missing_required_parameter"),
        ));
    }
    if model == QUOTA_MODEL {
        let mut r = error(
            429,
            "Rate limit reached for requests. Please try again in 1s.",
            "requests",
            None,
            Some("rate_limit_exceeded"),
        );
        r.retry_after = true;
        return Err(r);
    }
    if let Some(Value::Object(o)) = body.get("stream_options") {
        only(o, "stream_options", &["include_obfuscation"])?;
    }
    if let Some(Value::Object(o)) = body.get("text") {
        only(o, "text", &["format", "verbosity"])?;
    }
    if let Some(Value::Object(o)) = body.get("reasoning") {
        only(o, "reasoning", &["effort", "summary", "generate_summary"])?;
    }
    let tools = check_tools(body.get("tools"))?;
    let last = check_input(body.get("input"))?;
    let stream = body.get("stream") == Some(&Value::Bool(true));
    let reply = match (last, tools.first()) {
        (Last::User, Some(tool)) => Reply::Call(tool.clone()),
        (Last::ToolOutput(out), _) => Reply::Text(format!("{TOOL_ANSWER_PREFIX}{out}")),
        _ => Reply::Text(TEXT.to_owned()),
    };
    let response = Response::new(model, &body);
    Ok(if stream {
        Answer::Stream(response.events(&reply))
    } else {
        Answer::Whole(response.whole(&reply))
    })
}

/// The function tools' names; anything but flat function tools is refused.
fn check_tools(tools: Option<&Value>) -> Result<Vec<String>, Refusal> {
    let mut names = Vec::new();
    let Some(tools) = tools else { return Ok(names) };
    let Value::Array(tools) = tools else {
        return Err(invalid(
            "tools",
            "Invalid type for 'tools': expected an array.",
        ));
    };
    for (i, t) in tools.iter().enumerate() {
        let at = format!("tools[{i}]");
        let Value::Object(t) = t else {
            return Err(invalid(&at, "Invalid type: expected an object."));
        };
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(invalid(
                &format!("{at}.type"),
                "Only function tools are mocked.",
            ));
        }
        only(
            t,
            &at,
            &["type", "name", "description", "parameters", "strict"],
        )?;
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err(error(
                400,
                &format!("Missing required parameter: '{at}.name'."),
                "invalid_request_error",
                Some(&format!("{at}.name")),
                Some("missing_required_parameter"),
            ));
        };
        names.push(name.to_owned());
    }
    Ok(names)
}

/// What the last input item is.
enum Last {
    User,
    ToolOutput(String),
    Other,
}

/// Check the `input` items; what the last one is.
fn check_input(input: Option<&Value>) -> Result<Last, Refusal> {
    let items = match input {
        Some(Value::String(_)) => return Ok(Last::User),
        Some(Value::Array(items)) if !items.is_empty() => items,
        _ => {
            return Err(invalid(
                "input",
                "Invalid 'input': expected a string or a non-empty array.",
            ))
        }
    };
    let mut calls: Vec<&str> = Vec::new();
    let mut last = Last::Other;
    for (i, item) in items.iter().enumerate() {
        let at = format!("input[{i}]");
        let Value::Object(item) = item else {
            return Err(invalid(&at, "Invalid type: expected an object."));
        };
        let str_of = |k: &str| item.get(k).and_then(Value::as_str);
        match str_of("type").unwrap_or("message") {
            "message" => {
                only(item, &at, &["type", "role", "content", "id", "status"])?;
                let role = str_of("role").unwrap_or_default();
                let parts: &[&str] = match role {
                    "user" | "system" | "developer" => &["input_text", "input_image", "input_file"],
                    "assistant" => &["output_text", "refusal"],
                    _ => return Err(invalid(&format!("{at}.role"), "Invalid value for 'role'.")),
                };
                match item.get("content") {
                    Some(Value::String(_)) => {}
                    Some(Value::Array(content)) => {
                        for (j, part) in content.iter().enumerate() {
                            let pat = format!("{at}.content[{j}]");
                            let kind = part.get("type").and_then(Value::as_str).unwrap_or_default();
                            if !parts.contains(&kind) {
                                return Err(invalid(
                                    &format!("{pat}.type"),
                                    &format!("Invalid value: '{kind}'."),
                                ));
                            }
                            let allowed: &[&str] = match kind {
                                "input_text" | "output_text" => &["type", "text", "annotations"],
                                "input_image" => &["type", "image_url", "file_id", "detail"],
                                "input_file" => {
                                    &["type", "file_id", "file_data", "file_url", "filename"]
                                }
                                _ => &["type", "refusal"],
                            };
                            if let Value::Object(p) = part {
                                only(p, &pat, allowed)?;
                            }
                        }
                    }
                    _ => return Err(invalid(&format!("{at}.content"), "Invalid 'content'.")),
                }
                last = if role == "user" {
                    Last::User
                } else {
                    Last::Other
                };
            }
            "function_call" => {
                only(
                    item,
                    &at,
                    &["type", "call_id", "name", "arguments", "id", "status"],
                )?;
                let (Some(call_id), Some(_), Some(_)) =
                    (str_of("call_id"), str_of("name"), str_of("arguments"))
                else {
                    return Err(invalid(
                        &at,
                        "A function_call needs string call_id, name and arguments.",
                    ));
                };
                calls.push(call_id);
                last = Last::Other;
            }
            "function_call_output" => {
                only(item, &at, &["type", "call_id", "output", "id", "status"])?;
                let (Some(call_id), Some(output)) = (str_of("call_id"), str_of("output")) else {
                    return Err(invalid(
                        &at,
                        "A function_call_output needs string call_id and output.",
                    ));
                };
                if !calls.contains(&call_id) {
                    return Err(error(
                        400,
                        &format!(
                            "No tool call found for function call output with call_id {call_id}."
                        ),
                        "invalid_request_error",
                        Some("input"),
                        None,
                    ));
                }
                last = Last::ToolOutput(output.to_owned());
            }
            other => {
                return Err(invalid(
                    &format!("{at}.type"),
                    &format!("Invalid value: '{other}'."),
                ));
            }
        }
    }
    Ok(last)
}

/// What the mock answers.
enum Reply {
    Text(String),
    /// A call of the named tool.
    Call(String),
}

/// The parts of the `response` object every copy shares.
struct Response {
    model: String,
    echo: Map<String, Value>,
}

const RESPONSE_ID: &str = "resp_mock_0123456789abcdef";
const CREATED_AT: u64 = 1_741_476_542;

impl Response {
    fn new(model: &str, body: &Map<String, Value>) -> Response {
        let field = |k: &str, default: Value| body.get(k).cloned().unwrap_or(default);
        let mut echo = Map::new();
        echo.insert("instructions".into(), field("instructions", Value::Null));
        echo.insert(
            "max_output_tokens".into(),
            field("max_output_tokens", Value::Null),
        );
        echo.insert(
            "parallel_tool_calls".into(),
            field("parallel_tool_calls", Value::Bool(true)),
        );
        echo.insert("previous_response_id".into(), Value::Null);
        echo.insert(
            "reasoning".into(),
            json!({"effort": "medium", "summary": null}),
        );
        echo.insert("store".into(), field("store", Value::Bool(true)));
        echo.insert("temperature".into(), field("temperature", json!(1.0)));
        echo.insert(
            "text".into(),
            field("text", json!({"format": {"type": "text"}})),
        );
        echo.insert("tool_choice".into(), field("tool_choice", json!("auto")));
        echo.insert("tools".into(), field("tools", json!([])));
        echo.insert("top_p".into(), field("top_p", json!(1.0)));
        echo.insert("truncation".into(), json!("disabled"));
        Response {
            model: model.to_owned(),
            echo,
        }
    }

    /// The `response` object with `status`, `output` and `usage`.
    fn object(&self, status: &str, output: Value, usage: Value) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(RESPONSE_ID));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(CREATED_AT));
        o.insert("status".into(), json!(status));
        o.insert("error".into(), Value::Null);
        o.insert("incomplete_details".into(), Value::Null);
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), output);
        for (k, v) in &self.echo {
            o.insert(k.clone(), v.clone());
        }
        o.insert("usage".into(), usage);
        o.insert("user".into(), Value::Null);
        o.insert("metadata".into(), json!({}));
        Value::Object(o)
    }

    fn usage() -> Value {
        json!({
            "input_tokens": INPUT_TOKENS,
            "input_tokens_details": {"cached_tokens": CACHED_TOKENS, "cache_write_tokens": 0},
            "output_tokens": OUTPUT_TOKENS,
            "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
            "total_tokens": INPUT_TOKENS + OUTPUT_TOKENS
        })
    }

    fn reasoning_item() -> Value {
        json!({"id": "rs_mock_1", "type": "reasoning", "summary": []})
    }

    fn message_item(text: &str, status: &str) -> Value {
        let content = if status == "completed" {
            json!([{"type": "output_text", "annotations": [], "logprobs": [], "text": text}])
        } else {
            json!([])
        };
        json!({"id": "msg_mock_1", "type": "message", "status": status, "content": content, "role": "assistant"})
    }

    fn call_item(name: &str, arguments: &str, status: &str) -> Value {
        json!({"id": "fc_mock_1", "type": "function_call", "status": status, "arguments": arguments, "call_id": CALL_ID, "name": name})
    }

    fn output(reply: &Reply) -> Value {
        match reply {
            Reply::Text(t) => json!([Self::reasoning_item(), Self::message_item(t, "completed")]),
            Reply::Call(name) => json!([
                Self::reasoning_item(),
                Self::call_item(name, CALL_ARGUMENTS, "completed")
            ]),
        }
    }

    fn whole(&self, reply: &Reply) -> Value {
        self.object("completed", Self::output(reply), Self::usage())
    }

    fn events(&self, reply: &Reply) -> Vec<Value> {
        let mut events = vec![
            json!({"type": "response.created", "response": self.object("in_progress", json!([]), Value::Null)}),
            json!({"type": "response.in_progress", "response": self.object("in_progress", json!([]), Value::Null)}),
            json!({"type": "response.output_item.added", "output_index": 0, "item": Self::reasoning_item()}),
            json!({"type": "response.output_item.done", "output_index": 0, "item": Self::reasoning_item()}),
        ];
        match reply {
            Reply::Text(text) => {
                events.push(json!({"type": "response.output_item.added", "output_index": 1, "item": Self::message_item("", "in_progress")}));
                events.push(json!({"type": "response.content_part.added", "item_id": "msg_mock_1", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}}));
                for piece in text.split_inclusive(' ') {
                    events.push(json!({"type": "response.output_text.delta", "item_id": "msg_mock_1", "output_index": 1, "content_index": 0, "delta": piece, "logprobs": [], "obfuscation": "x"}));
                }
                events.push(json!({"type": "response.output_text.done", "item_id": "msg_mock_1", "output_index": 1, "content_index": 0, "text": text, "logprobs": []}));
                events.push(json!({"type": "response.content_part.done", "item_id": "msg_mock_1", "output_index": 1, "content_index": 0, "part": {"type": "output_text", "annotations": [], "logprobs": [], "text": text}}));
                events.push(json!({"type": "response.output_item.done", "output_index": 1, "item": Self::message_item(text, "completed")}));
            }
            Reply::Call(name) => {
                events.push(json!({"type": "response.output_item.added", "output_index": 1, "item": Self::call_item(name, "", "in_progress")}));
                let (a, b) = CALL_ARGUMENTS.split_at(CALL_ARGUMENTS.len() / 2);
                for piece in [a, b] {
                    events.push(json!({"type": "response.function_call_arguments.delta", "item_id": "fc_mock_1", "output_index": 1, "delta": piece, "obfuscation": "x"}));
                }
                events.push(json!({"type": "response.function_call_arguments.done", "item_id": "fc_mock_1", "output_index": 1, "arguments": CALL_ARGUMENTS}));
                events.push(json!({"type": "response.output_item.done", "output_index": 1, "item": Self::call_item(name, CALL_ARGUMENTS, "completed")}));
            }
        }
        events.push(json!({"type": "response.completed", "response": self.whole(reply)}));
        for (i, e) in events.iter_mut().enumerate() {
            if let Value::Object(o) = e {
                o.insert("sequence_number".into(), json!(i));
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: &Value, auth: &str) -> Request {
        Request {
            method: "POST".into(),
            path: "/v1/responses".into(),
            version: "HTTP/1.1".into(),
            headers: vec![("Authorization".into(), auth.into())],
            body: body.to_string().into_bytes(),
            chunked: false,
            conn: 0,
            trailers: Vec::new(),
        }
    }

    fn status(body: &Value) -> Result<Value, (u16, Value)> {
        match answer(&req(body, "Bearer k"), "Bearer k") {
            Ok(Answer::Whole(v)) => Ok(v),
            Ok(Answer::Stream(events)) => Ok(Value::Array(events)),
            Err(r) => Err((r.status, r.body)),
        }
    }

    #[test]
    fn strict_checks_and_answers() {
        let ok = status(&json!({"model": "m", "input": "Hi"})).expect("answers");
        assert_eq!(ok["output"][1]["content"][0]["text"], TEXT);
        assert_eq!(
            ok["usage"]["input_tokens_details"]["cached_tokens"],
            CACHED_TOKENS
        );
        let (s, e) =
            status(&json!({"model": "m", "input": "Hi", "stop": ["x"]})).expect_err("refused");
        assert_eq!(s, 400);
        assert_eq!(
            e,
            json!({"error": {"message": "Unknown parameter: 'stop'.", "type": "invalid_request_error", "param": "stop", "code": "unknown_parameter"}})
        );
        let (_, e) = status(&json!({"model": "m", "input": "Hi", "stream": true, "stream_options": {"include_usage": true}})).expect_err("refused");
        assert_eq!(e["error"]["param"], "stream_options.include_usage");
        let (_, e) = status(&json!({"model": "m", "input": "Hi", "tools": [{"type": "function", "function": {"name": "f"}}]})).expect_err("refused");
        assert_eq!(e["error"]["param"], "tools[0].function");
        let (_, e) = status(&json!({"model": "m", "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]})).expect_err("refused");
        assert_eq!(e["error"]["param"], "input");
        assert_eq!(
            status(&json!({"model": QUOTA_MODEL, "input": "Hi"}))
                .expect_err("429")
                .0,
            429
        );
        assert!(matches!(
            answer(
                &req(&json!({"model": "m", "input": "Hi"}), "Bearer other"),
                "Bearer k"
            ),
            Err(Refusal { status: 401, .. })
        ));
        // A tool loop.
        let tools =
            json!([{"type": "function", "name": "get_weather", "parameters": {}, "strict": false}]);
        let call =
            status(&json!({"model": "m", "input": "Weather?", "tools": tools})).expect("answers");
        assert_eq!(call["output"][1]["type"], "function_call");
        assert_eq!(call["output"][1]["name"], "get_weather");
        let back = status(&json!({"model": "m", "tools": tools, "input": [
            {"role": "user", "content": "Weather?"},
            {"type": "function_call", "call_id": CALL_ID, "name": "get_weather", "arguments": CALL_ARGUMENTS},
            {"type": "function_call_output", "call_id": CALL_ID, "output": "18C"}
        ]}))
        .expect("answers");
        assert_eq!(
            back["output"][1]["content"][0]["text"],
            format!("{TOOL_ANSWER_PREFIX}18C")
        );
        // Streamed: numbered events ending with response.completed.
        let events =
            status(&json!({"model": "m", "input": "Hi", "stream": true})).expect("answers");
        let events = events.as_array().expect("events");
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e["sequence_number"], i);
        }
        assert_eq!(events.last().expect("some")["type"], "response.completed");
    }

    /// The engine's chat translation (`provider::responses`) against the strict mock, without
    /// a gateway: every request it writes is accepted, and the mock's answers, whole and
    /// streamed, translate back to the chat answers a tool loop expects.
    #[test]
    fn the_engines_translation_passes_the_strict_mock() {
        use shardgate_engine::provider::responses::{
            chat_to_responses, response_to_chat, StreamToChat,
        };
        let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}]);
        let first = json!({"model": "o", "tools": tools, "tool_choice": "auto", "parallel_tool_calls": true,
        "max_completion_tokens": 9, "temperature": 0.2, "top_p": 1, "user": "u", "reasoning_effort": "low",
        "response_format": {"type": "json_object"}, "seed": 1, "stream_options": {"include_usage": true},
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "developer", "content": [{"type": "text", "text": "D"}]},
            {"role": "user", "content": [{"type": "text", "text": "Weather?"}, {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
        ]});
        let mut second = first.clone();
        if let Some(m) = second["messages"].as_array_mut() {
            m.push(json!({"role": "assistant", "content": "Let me look.", "tool_calls": [{"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": CALL_ARGUMENTS}}]}));
            m.push(json!({"role": "tool", "tool_call_id": CALL_ID, "content": "18C"}));
        }
        for stream in [false, true] {
            for (chat, want_call) in [(&first, true), (&second, false)] {
                let mut chat = chat.clone();
                chat["stream"] = json!(stream);
                let mut body = Vec::new();
                chat_to_responses(chat.to_string().as_bytes(), "gpt-5-resp", &mut body)
                    .expect("translates");
                let body: Value = serde_json::from_slice(&body).expect("JSON");
                let answer =
                    status(&body).unwrap_or_else(|e| panic!("the mock refused {body}: {e:?}"));
                let message = if stream {
                    let mut sse = String::new();
                    for e in answer.as_array().expect("events") {
                        sse.push_str(&format!(
                            "event: {}\ndata: {e}\n\n",
                            e["type"].as_str().unwrap_or_default()
                        ));
                    }
                    let mut t = StreamToChat::new("chatcmpl-1", "o", 1, true);
                    let mut out = Vec::new();
                    t.feed(sse.as_bytes(), &mut out);
                    t.finish(&mut out);
                    assert!(t.is_done());
                    let usage = t.usage().expect("usage");
                    assert_eq!(
                        (
                            usage.prompt_tokens,
                            usage.cached_tokens,
                            usage.completion_tokens,
                            usage.reasoning_tokens
                        ),
                        (INPUT_TOKENS, CACHED_TOKENS, OUTPUT_TOKENS, REASONING_TOKENS)
                    );
                    // Fold the chunks into one message.
                    let (mut text, mut call) = (String::new(), (String::new(), String::new()));
                    for data in String::from_utf8(out)
                        .expect("UTF-8")
                        .split("\n\n")
                        .filter_map(|e| e.strip_prefix("data: "))
                    {
                        if data == "[DONE]" {
                            continue;
                        }
                        let c: Value = serde_json::from_str(data).expect("JSON");
                        let d = &c["choices"][0]["delta"];
                        text.push_str(d["content"].as_str().unwrap_or_default());
                        if let Some(id) = d["tool_calls"][0]["id"].as_str() {
                            call.0 = id.to_owned();
                        }
                        call.1.push_str(
                            d["tool_calls"][0]["function"]["arguments"]
                                .as_str()
                                .unwrap_or_default(),
                        );
                    }
                    json!({"content": text, "call": [call.0, call.1]})
                } else {
                    let mut out = Vec::new();
                    let usage = response_to_chat(
                        answer.to_string().as_bytes(),
                        "chatcmpl-1",
                        "o",
                        1,
                        &mut out,
                    )
                    .expect("translates");
                    assert_eq!(usage.prompt_tokens, INPUT_TOKENS);
                    let v: Value = serde_json::from_slice(&out).expect("JSON");
                    let m = &v["choices"][0]["message"];
                    json!({"content": m["content"].as_str().unwrap_or_default(),
                        "call": [m["tool_calls"][0]["id"].as_str().unwrap_or_default(), m["tool_calls"][0]["function"]["arguments"].as_str().unwrap_or_default()]})
                };
                if want_call {
                    assert_eq!(
                        message,
                        json!({"content": "", "call": [CALL_ID, CALL_ARGUMENTS]}),
                        "stream {stream}"
                    );
                } else {
                    assert_eq!(
                        message,
                        json!({"content": format!("{TOOL_ANSWER_PREFIX}18C"), "call": ["", ""]}),
                        "stream {stream}"
                    );
                }
            }
        }
    }
}
