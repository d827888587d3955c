//! OpenAI chat clients in front of an Anthropic Messages upstream (`POST /v1/messages`).
//!
//! - [`chat_to_messages`]: an OpenAI chat completion request becomes a Messages request.
//! - [`message_to_chat`]: a Messages response becomes a `chat.completion`.
//! - [`error_to_openai`]: an Anthropic error body becomes an OpenAI error body.
//! - [`StreamToChat`]: Anthropic's event stream becomes `chat.completion.chunk` events, fed in
//!   pieces of any size; the output does not depend on where the pieces were cut.
//!
//! Everything appends to an `out` buffer the caller owns; nothing touches a socket or the
//! clock (the caller passes `created`).
//!
//! # Mapping
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` and `developer` messages (anywhere) | top-level `system`, joined by a blank line |
//! | `user` / `assistant` messages, string or `text` parts | `messages` of `text` blocks; consecutive messages of one role merged into one turn; empty texts left out |
//! | `image_url` parts of a user message: a `data:` URL (JPEG, PNG, GIF, WebP) / an `http(s)` URL | `image` blocks, `source` `base64` / `url` (`detail` has no counterpart and is left out) |
//! | `tools` (`type: function`: `name`, `description`, `parameters`) | `tools` (`name`, `description`, `input_schema`; an empty object schema when there are no parameters) |
//! | `tool_choice` `auto` / `required` / `none` / `{type: function, function: {name}}` | `tool_choice` `auto` / `any` / `none` / `{type: tool, name}` |
//! | `parallel_tool_calls: false` | `tool_choice.disable_parallel_tool_use: true` |
//! | an assistant's `tool_calls` (arguments: JSON object text) | `tool_use` blocks after its text (`input`: the parsed object) |
//! | `tool` messages (`tool_call_id`, content) | a user turn of `tool_result` blocks (consecutive ones, and the user's next text, merged into it) |
//! | `max_completion_tokens`, else `max_tokens`, else the deployment's default | `max_tokens` (required by Anthropic) |
//! | `temperature`, `top_p` | the same (Anthropic accepts `temperature` up to 1; a larger one is the upstream's 400) |
//! | `stop` (string or array) | `stop_sequences` |
//! | `stream` | `stream` (`stream_options` only decides [`StreamToChat`]'s usage chunk) |
//! | `user` | `metadata.user_id` |
//! | `functions`, `function_call`, `function` messages (OpenAI's legacy function calling), `reasoning_effort`, `web_search_options`, tools of another `type`, `allowed_tools` choices, images in other roles or of other media types, audio and file parts, `n` > 1, `logprobs`, `top_logprobs`, `response_format` other than text, `audio` | refused: [`TranslateError::Unsupported`] |
//! | `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `stream_options`, `parallel_tool_calls`, `store`, `metadata`, ... | left out |
//!
//! Answers: `text` blocks are the content (`null` when there is none and the model called a
//! tool), `thinking` blocks the `reasoning_content` (as vLLM and DeepSeek name it; signatures
//! have no OpenAI counterpart), `tool_use` blocks the `tool_calls` (arguments: the input's JSON
//! text). Streamed, a `tool_use` block's start is the call's first delta (`index`, `id`, `type`,
//! `function.name`, empty `arguments`) and each `input_json_delta` an `arguments` piece.
//!
//! Stop reasons: `end_turn`, `stop_sequence` (and anything unknown) → `stop`; `max_tokens` and
//! `model_context_window_exceeded` → `length`; `refusal` → `content_filter`; `tool_use` →
//! `tool_calls`. Usage:
//! `prompt_tokens` is `input_tokens` plus both cache counts (Anthropic leaves cached tokens out
//! of `input_tokens`, OpenAI counts them in), with `cache_read_input_tokens` also reported as
//! `prompt_tokens_details.cached_tokens`.

use serde_json::{Map, Value};

use super::chat_out::{self, Chunks, Completion, ToolCall, UsageDetails};
pub use super::sse::STREAM_EVENT_BYTES_MAX;
use super::sse::{Event, EventReader};
use super::{
    copy_numbers, present, refuse_beyond_messages, tool_description, tool_function, tool_schema,
    write_object, TranslateError,
};
use crate::llm::Usage;

// ---------------------------------------------------------------------------------------------
// Requests

/// Translate an OpenAI chat completion request into an Anthropic Messages request for `model`,
/// appended to `out` (nothing is appended on error). `default_max_tokens` is used when the
/// request names neither `max_completion_tokens` nor `max_tokens`.
pub fn chat_to_messages(
    openai_body: &[u8],
    model: &str,
    default_max_tokens: u64,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(openai_body) else {
        return Err(TranslateError::NotJson);
    };
    refuse_unsupported(&body)?;
    let (system, turns) = translate_messages(body.get("messages"))?;

    let mut req = Map::new();
    req.insert("model".into(), Value::from(model));
    let max_tokens = match (
        present(&body, "max_completion_tokens"),
        present(&body, "max_tokens"),
    ) {
        (Some(v), _) | (None, Some(v)) => {
            v.as_u64().ok_or(TranslateError::BadField("max_tokens"))?
        }
        (None, None) => default_max_tokens,
    };
    req.insert("max_tokens".into(), Value::from(max_tokens));
    if !system.is_empty() {
        req.insert("system".into(), Value::from(system));
    }
    req.insert("messages".into(), Value::Array(turns));
    translate_tools(&body, &mut req)?;
    copy_numbers(&body, &["temperature", "top_p"], &mut req)?;
    match present(&body, "stop") {
        None => {}
        Some(Value::String(s)) => {
            req.insert(
                "stop_sequences".into(),
                Value::Array(vec![Value::from(s.as_str())]),
            );
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            req.insert("stop_sequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(TranslateError::BadField("stop")),
    }
    match present(&body, "stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            req.insert("stream".into(), Value::Bool(true));
        }
        Some(_) => return Err(TranslateError::BadField("stream")),
    }
    match present(&body, "user") {
        None => {}
        Some(Value::String(u)) => {
            let mut metadata = Map::new();
            metadata.insert("user_id".into(), Value::from(u.as_str()));
            req.insert("metadata".into(), Value::Object(metadata));
        }
        Some(_) => return Err(TranslateError::BadField("user")),
    }
    write_object(req, out)
}

/// Refuse the features a Messages request cannot express.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    // The legacy function-calling fields (OpenAI's own SDKs send `tools`), and knobs that
    // change the answer with no Messages counterpart here.
    refuse_beyond_messages(body)
}

/// `tools` and `tool_choice` (and `parallel_tool_calls: false`) in Anthropic's shape.
fn translate_tools(
    body: &Map<String, Value>,
    req: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let tools = match present(body, "tools") {
        None => None,
        Some(Value::Array(tools)) if tools.is_empty() => None,
        Some(Value::Array(tools)) => Some(tools),
        Some(_) => return Err(TranslateError::BadField("tools")),
    };
    let mut choice = match present(body, "tool_choice") {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(tool_choice("auto", None)),
            "required" => Some(tool_choice("any", None)),
            "none" => Some(tool_choice("none", None)),
            _ => return Err(TranslateError::BadField("tool_choice")),
        },
        Some(Value::Object(c)) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (c.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Some(tool_choice("tool", Some(name))),
                (Some("allowed_tools" | "custom"), _) => {
                    return Err(TranslateError::Unsupported("tool_choice"))
                }
                _ => return Err(TranslateError::BadField("tool_choice")),
            }
        }
        Some(_) => return Err(TranslateError::BadField("tool_choice")),
    };
    let Some(tools) = tools else {
        // No tools: "none" and "auto" say nothing; anything else names a tool there is not.
        return match choice
            .as_ref()
            .and_then(|c| c.get("type"))
            .and_then(Value::as_str)
        {
            None | Some("none" | "auto") => Ok(()),
            Some(_) => Err(TranslateError::BadField("tool_choice")),
        };
    };
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(TranslateError::Unsupported("tools"));
        }
        let (f, name) = tool_function(tool)?;
        let mut t = Map::new();
        t.insert("name".into(), Value::from(name));
        if let Some(d) = tool_description(f)? {
            t.insert("description".into(), Value::from(d));
        }
        // Anthropic requires a schema; OpenAI's default is a function without parameters.
        t.insert("input_schema".into(), tool_schema(f)?);
        out.push(Value::Object(t));
    }
    req.insert("tools".into(), Value::Array(out));
    match present(body, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => {
            let c = choice.get_or_insert_with(|| tool_choice("auto", None));
            if let Value::Object(c) = c {
                if c.get("type").and_then(Value::as_str) != Some("none") {
                    c.insert("disable_parallel_tool_use".into(), Value::Bool(true));
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("parallel_tool_calls")),
    }
    if let Some(choice) = choice {
        req.insert("tool_choice".into(), choice);
    }
    Ok(())
}

/// Anthropic's `tool_choice` of `kind`, naming `name` for `tool`.
fn tool_choice(kind: &str, name: Option<&str>) -> Value {
    let mut c = Map::new();
    c.insert("type".into(), Value::from(kind));
    if let Some(name) = name {
        c.insert("name".into(), Value::from(name));
    }
    Value::Object(c)
}

/// A content block of `kind` carrying `text`.
fn text_block(text: &str) -> Value {
    let mut block = Map::new();
    block.insert("type".into(), Value::from("text"));
    block.insert("text".into(), Value::from(text));
    Value::Object(block)
}

/// The system prompt and the conversation turns of an OpenAI `messages` array.
fn translate_messages(messages: Option<&Value>) -> Result<(String, Vec<Value>), TranslateError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(TranslateError::BadField("messages"));
    };
    let mut system = String::new();
    let mut turns: Vec<Value> = Vec::new();
    let mut last_role: Option<&'static str> = None;
    let mut blocks = Vec::new();
    for message in messages {
        let Value::Object(message) = message else {
            return Err(TranslateError::BadField("messages"));
        };
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => None,
            Some("user") => Some("user"),
            Some("assistant") => Some("assistant"),
            // A tool's result goes back in a user turn, as Anthropic's `tool_result`.
            Some("tool") => Some("tool"),
            Some("function") => return Err(TranslateError::Unsupported("functions")),
            _ => return Err(TranslateError::BadField("role")),
        };
        blocks.clear();
        match role {
            None => {
                let mut texts = Vec::new();
                content_blocks(message.get("content"), false, &mut texts)?;
                for block in &texts {
                    let text = block
                        .get("text")
                        .and_then(Value::as_str)
                        .unwrap_or_default();
                    if !system.is_empty() {
                        system.push_str("\n\n");
                    }
                    system.push_str(text);
                }
                continue;
            }
            Some("tool") => blocks.push(tool_result(message)?),
            Some(role) => {
                content_blocks(message.get("content"), role == "user", &mut blocks)?;
                if role == "assistant" {
                    if present(message, "function_call").is_some() {
                        return Err(TranslateError::Unsupported("function_call"));
                    }
                    tool_uses(present(message, "tool_calls"), &mut blocks)?;
                }
            }
        }
        let role = if role == Some("assistant") {
            "assistant"
        } else {
            "user"
        };
        if blocks.is_empty() {
            // Anthropic refuses empty text blocks and turns without content.
            continue;
        }
        match turns.last_mut().and_then(|t| t.get_mut("content")) {
            Some(Value::Array(content)) if last_role == Some(role) => content.append(&mut blocks),
            _ => {
                let mut turn = Map::new();
                turn.insert("role".into(), Value::from(role));
                turn.insert("content".into(), Value::Array(std::mem::take(&mut blocks)));
                turns.push(Value::Object(turn));
                last_role = Some(role);
            }
        }
    }
    if turns.is_empty() {
        return Err(TranslateError::BadField("messages"));
    }
    Ok((system, turns))
}

/// A `tool` message as a `tool_result` block.
fn tool_result(message: &Map<String, Value>) -> Result<Value, TranslateError> {
    let Some(id) = message.get("tool_call_id").and_then(Value::as_str) else {
        return Err(TranslateError::BadField("tool_call_id"));
    };
    let mut texts = Vec::new();
    content_blocks(message.get("content"), false, &mut texts)?;
    let mut block = Map::new();
    block.insert("type".into(), Value::from("tool_result"));
    block.insert("tool_use_id".into(), Value::from(id));
    if !texts.is_empty() {
        block.insert("content".into(), Value::Array(texts));
    }
    Ok(Value::Object(block))
}

/// An assistant's `tool_calls` as `tool_use` blocks, appended to `blocks`.
fn tool_uses(calls: Option<&Value>, blocks: &mut Vec<Value>) -> Result<(), TranslateError> {
    let calls = match calls {
        None => return Ok(()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(TranslateError::BadField("tool_calls")),
    };
    for call in calls {
        if call.get("type").and_then(Value::as_str) != Some("function") {
            return Err(TranslateError::Unsupported("tool_calls"));
        }
        let f = call.get("function");
        let (Some(id), Some(name), Some(args)) = (
            call.get("id").and_then(Value::as_str),
            f.and_then(|f| f.get("name")).and_then(Value::as_str),
            f.and_then(|f| f.get("arguments")).and_then(Value::as_str),
        ) else {
            return Err(TranslateError::BadField("tool_calls"));
        };
        // Anthropic's `input` is an object; OpenAI's arguments are its JSON text.
        let input = match args.trim() {
            "" => Value::Object(Map::new()),
            a => match serde_json::from_str::<Value>(a) {
                Ok(v @ Value::Object(_)) => v,
                _ => return Err(TranslateError::BadField("tool_calls")),
            },
        };
        let mut block = Map::new();
        block.insert("type".into(), Value::from("tool_use"));
        block.insert("id".into(), Value::from(id));
        block.insert("name".into(), Value::from(name));
        block.insert("input".into(), input);
        blocks.push(Value::Object(block));
    }
    Ok(())
}

/// The content blocks of a message's `content` (a string, an array of parts, or `null`),
/// appended to `blocks`: non-empty texts, and (`images`: in a user turn) images.
fn content_blocks(
    content: Option<&Value>,
    images: bool,
    blocks: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    match content {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                blocks.push(text_block(s));
            }
        }
        Some(Value::Array(parts)) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(s)) => {
                            if !s.is_empty() {
                                blocks.push(text_block(s));
                            }
                        }
                        _ => return Err(TranslateError::BadField("content")),
                    },
                    Some("image_url") if images => blocks.push(image_block(part)?),
                    Some("image_url") => return Err(TranslateError::Unsupported("image_url")),
                    Some("input_audio") => return Err(TranslateError::Unsupported("audio")),
                    Some("file") => return Err(TranslateError::Unsupported("file")),
                    // An assistant's refusal, sent back in the history, is its text.
                    Some("refusal") => match part.get("refusal") {
                        Some(Value::String(s)) if !s.is_empty() => blocks.push(text_block(s)),
                        Some(Value::String(_)) => {}
                        _ => return Err(TranslateError::BadField("content")),
                    },
                    _ => return Err(TranslateError::BadField("content")),
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("content")),
    }
    Ok(())
}

/// The media types Anthropic takes in an image block.
const IMAGE_MEDIA_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/gif", "image/webp"];

/// An `image_url` part as an `image` block: a `data:` URL's base64 bytes, or the URL itself.
fn image_block(part: &Value) -> Result<Value, TranslateError> {
    let Some(url) = part
        .get("image_url")
        .and_then(|i| i.get("url"))
        .and_then(Value::as_str)
    else {
        return Err(TranslateError::BadField("image_url"));
    };
    let mut source = Map::new();
    if let Some(rest) = url.strip_prefix("data:") {
        let Some((media_type, data)) = rest.split_once(";base64,") else {
            return Err(TranslateError::BadField("image_url"));
        };
        if !IMAGE_MEDIA_TYPES.contains(&media_type) {
            return Err(TranslateError::Unsupported("image_url"));
        }
        source.insert("type".into(), Value::from("base64"));
        source.insert("media_type".into(), Value::from(media_type));
        source.insert("data".into(), Value::from(data));
    } else if url.starts_with("https://") || url.starts_with("http://") {
        source.insert("type".into(), Value::from("url"));
        source.insert("url".into(), Value::from(url));
    } else {
        return Err(TranslateError::BadField("image_url"));
    }
    let mut block = Map::new();
    block.insert("type".into(), Value::from("image"));
    block.insert("source".into(), Value::Object(source));
    Ok(Value::Object(block))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Anthropic's token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    input: u64,
    cache_creation: u64,
    cache_read: u64,
    output: u64,
}

impl Counts {
    /// Overwrite the counts `usage` reports (Anthropic's counts are cumulative).
    fn update(&mut self, usage: &Value) {
        let get = |key| usage.get(key).and_then(Value::as_u64);
        if let Some(n) = get("input_tokens") {
            self.input = n;
        }
        if let Some(n) = get("cache_creation_input_tokens") {
            self.cache_creation = n;
        }
        if let Some(n) = get("cache_read_input_tokens") {
            self.cache_read = n;
        }
        if let Some(n) = get("output_tokens") {
            self.output = n;
        }
    }

    fn prompt(self) -> u64 {
        self.input
            .saturating_add(self.cache_creation)
            .saturating_add(self.cache_read)
    }

    /// The counts in OpenAI's convention (cached and cache-write tokens part of the prompt).
    fn usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt(),
            completion_tokens: self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_creation,
            reasoning_tokens: 0,
        }
    }
}

/// OpenAI's `finish_reason` for an Anthropic `stop_reason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("refusal") => "content_filter",
        Some("tool_use") => "tool_calls",
        _ => "stop",
    }
}

/// Translate an Anthropic Messages response into an OpenAI `chat.completion` created at
/// `created` (unix seconds), appended to `out` (nothing is appended on error). The text blocks
/// are concatenated; other blocks (thinking) are left out. A body whose `type` is not
/// `message` (an error body) is [`TranslateError::BadField`]`("type")`: see
/// [`error_to_openai`].
pub fn message_to_chat(
    anthropic_body: &[u8],
    created: u64,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(anthropic_body) else {
        return Err(TranslateError::NotJson);
    };
    match msg.get("type") {
        None => {}
        Some(t) if t.as_str() == Some("message") => {}
        Some(_) => return Err(TranslateError::BadField("type")),
    }
    let mut text = String::new();
    let mut thinking = String::new();
    let mut calls = Vec::new();
    match msg.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::Array(blocks)) => {
            for block in blocks {
                let str_of = |key| block.get(key).and_then(Value::as_str);
                match str_of("type") {
                    Some("text") => {
                        let Some(t) = str_of("text") else {
                            return Err(TranslateError::BadField("content"));
                        };
                        text.push_str(t);
                    }
                    Some("thinking") => thinking.push_str(str_of("thinking").unwrap_or_default()),
                    Some("tool_use") => {
                        let (Some(id), Some(name)) = (str_of("id"), str_of("name")) else {
                            return Err(TranslateError::BadField("content"));
                        };
                        let input = block.get("input").map_or_else(
                            || "{}".to_owned(),
                            |i| serde_json::to_string(i).unwrap_or_else(|_| "{}".to_owned()),
                        );
                        calls.push((id, name, input));
                    }
                    // Redacted thinking and server tools' blocks have no OpenAI counterpart
                    // in an answer.
                    _ => {}
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("content")),
    }
    let mut counts = Counts::default();
    if let Some(usage) = msg.get("usage") {
        counts.update(usage);
    }
    let str_of = |key| msg.get(key).and_then(Value::as_str).unwrap_or_default();

    let tool_calls: Vec<ToolCall<'_>> = calls.iter().map(ToolCall::from).collect();
    chat_out::push_completion(
        out,
        &Completion {
            id: str_of("id"),
            model: str_of("model"),
            created,
            text: &text,
            reasoning: &thinking,
            refusal: None,
            tool_calls: &tool_calls,
            finish_reason: finish_reason(msg.get("stop_reason").and_then(Value::as_str)),
            usage: &counts.usage(),
            details: UsageDetails::CACHED,
        },
    );
    Ok(())
}

/// Translate an Anthropic error body (`{"type":"error","error":{"type","message"}}`) that came
/// with HTTP `status` into an OpenAI error body, appended to `out`. A body that is not one gets
/// a message naming the status; the error type then follows the status alone. The status
/// itself is the caller's to pass on.
pub fn error_to_openai(status: u16, anthropic_error_body: &[u8], out: &mut Vec<u8>) {
    let parsed = serde_json::from_slice::<Value>(anthropic_error_body).ok();
    let error = parsed.as_ref().and_then(|v| v.get("error"));
    let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    let (openai_type, code) = openai_error_kind(status, kind);
    chat_out::push_upstream_error_body(out, "Anthropic", status, message, openai_type, code);
}

/// OpenAI's error type and code for an Anthropic error type `kind` (else the HTTP `status`):
/// `type` as OpenAI (and the openai SDK) would name it, `code` Anthropic's own error type
/// (OpenAI's code for the two it has one for).
fn openai_error_kind(status: u16, kind: Option<&str>) -> (&'static str, Option<&str>) {
    match (kind, status) {
        (Some("authentication_error"), _) | (None, 401) => {
            ("invalid_request_error", Some("invalid_api_key"))
        }
        (Some("permission_error"), _) | (None, 403) => ("permission_error", kind),
        (Some("rate_limit_error"), _) | (None, 429) => ("requests", Some("rate_limit_exceeded")),
        (Some("api_error" | "overloaded_error"), _) => ("server_error", kind),
        (Some("invalid_request_error" | "not_found_error" | "request_too_large"), _) => {
            ("invalid_request_error", kind)
        }
        (_, 400..=499) => ("invalid_request_error", kind),
        _ => ("server_error", kind),
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// An event's kind (its data's `type`, else its `event:` name) and its data, when that is JSON.
fn parse_event(event: Event<'_>) -> Option<(String, Value)> {
    let v = serde_json::from_slice::<Value>(event.data).ok()?;
    let kind = match v.get("type").and_then(Value::as_str) {
        Some(k) => k.to_owned(),
        None => String::from_utf8_lossy(event.name).into_owned(),
    };
    Some((kind, v))
}

/// Translates an Anthropic Messages event stream into OpenAI `chat.completion.chunk` events.
///
/// Feed it the decoded response body in pieces of any size; it appends whole OpenAI events to
/// `out` as each Anthropic event completes, so the output is the same however the input was
/// cut. Events: a first chunk with `delta.role` (on `message_start`), one chunk per non-empty
/// `text_delta`, a chunk with `finish_reason` (on `message_stop`), the usage chunk with
/// `"choices":[]` when asked for, then `data: [DONE]`. An Anthropic `error` event becomes an
/// OpenAI error event and `[DONE]`; a stream that ends without `message_stop` gets one too (from
/// [`finish`](Self::finish)). After `[DONE]` further input is ignored. `ping`, block starts and
/// stops, tool and thinking deltas, events that are not JSON and events longer than
/// [`STREAM_EVENT_BYTES_MAX`] are skipped.
#[derive(Debug)]
pub struct StreamToChat {
    chunks: Chunks,
    include_usage: bool,
    events: EventReader,
    finish_reason: &'static str,
    counts: Option<Counts>,
    done: bool,
    /// The Anthropic block index of the tool call being streamed, and its OpenAI index.
    tool_block: Option<(u64, u64)>,
    /// Tool calls started so far (the next one's OpenAI index).
    tools_started: u64,
}

impl StreamToChat {
    /// A translator whose chunks carry `id`, `model` and `created` (unix seconds), and end with
    /// a usage chunk if `include_usage` (the client's `stream_options.include_usage`).
    pub fn new(id: &str, model: &str, created: u64, include_usage: bool) -> Self {
        StreamToChat {
            chunks: Chunks::new(id, model, created),
            include_usage,
            events: EventReader::new(),
            finish_reason: "stop",
            counts: None,
            done: false,
            tool_block: None,
            tools_started: 0,
        }
    }

    /// Translate the events that `input` completes, appending OpenAI events to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut events = std::mem::take(&mut self.events);
        events.feed(input, |event| {
            // After `[DONE]` further input is ignored.
            if self.done {
                return;
            }
            if let Some((kind, v)) = parse_event(event) {
                self.on_event(&kind, &v, out);
            }
        });
        self.events = events;
    }

    /// At the end of the upstream body: translate a last event that lacked its blank line, and
    /// if the stream never finished, append an error event and `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        events.finish(|event| {
            if let Some((kind, v)) = parse_event(event) {
                self.on_event(&kind, &v, out);
            }
        });
        self.events = events;
        if !self.done {
            self.push_error(
                out,
                Some("api_error"),
                "the Anthropic upstream ended the stream before message_stop",
            );
        }
    }

    /// `(prompt_tokens, completion_tokens)` as reported so far, once the upstream has reported
    /// any.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.counts.map(|c| (c.prompt(), c.output))
    }

    /// Whether `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn on_event(&mut self, kind: &str, v: &Value, out: &mut Vec<u8>) {
        match kind {
            "message_start" => {
                let counts = self.counts.get_or_insert_with(Counts::default);
                if let Some(usage) = v.get("message").and_then(|m| m.get("usage")) {
                    counts.update(usage);
                }
                self.chunks.role(out);
            }
            "content_block_start" => {
                let Some(block) = v.get("content_block") else {
                    return;
                };
                if block.get("type").and_then(Value::as_str) != Some("tool_use") {
                    return;
                }
                let str_of = |key| block.get(key).and_then(Value::as_str).unwrap_or_default();
                let at = v.get("index").and_then(Value::as_u64).unwrap_or(u64::MAX);
                let index = self.tools_started;
                self.tools_started += 1;
                self.tool_block = Some((at, index));
                self.chunks
                    .tool_call_start(out, index, str_of("id"), str_of("name"));
            }
            "content_block_delta" => {
                let Some(delta) = v.get("delta") else { return };
                let (field, text) = match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => ("content", delta.get("text")),
                    Some("thinking_delta") => ("reasoning_content", delta.get("thinking")),
                    Some("input_json_delta") => ("arguments", delta.get("partial_json")),
                    _ => return,
                };
                let Some(text) = text.and_then(Value::as_str) else {
                    return;
                };
                if text.is_empty() {
                    return;
                }
                self.chunks.role(out);
                if field == "arguments" {
                    let at = v.get("index").and_then(Value::as_u64);
                    let Some((_, index)) = self.tool_block.filter(|(b, _)| Some(*b) == at) else {
                        return;
                    };
                    self.chunks.tool_call_arguments(out, index, text);
                    return;
                }
                self.chunks.text(out, field, text);
            }
            "message_delta" => {
                if let Some(stop) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.finish_reason = finish_reason(Some(stop));
                }
                if let Some(usage) = v.get("usage") {
                    self.counts
                        .get_or_insert_with(Counts::default)
                        .update(usage);
                }
            }
            "message_stop" => {
                self.chunks.finish(out, self.finish_reason);
                let usage = self.counts.unwrap_or_default().usage();
                self.chunks.end(
                    out,
                    self.include_usage.then_some((&usage, UsageDetails::CACHED)),
                );
                self.done = true;
            }
            "error" => {
                let error = v.get("error");
                let kind = error.and_then(|e| e.get("type")).and_then(Value::as_str);
                let message = error
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the Anthropic upstream reported an error");
                self.push_error(out, kind, message);
            }
            _ => {}
        }
    }

    fn push_error(&mut self, out: &mut Vec<u8>, kind: Option<&str>, message: &str) {
        let (openai_type, code) = openai_error_kind(0, kind);
        chat_out::push_error_event(out, message, openai_type, code);
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testing;
    use proptest::prelude::*;
    use serde_json::json;

    fn to_messages(body: &Value) -> Result<Value, TranslateError> {
        testing::request_json(
            |b, out| chat_to_messages(b, "claude-sonnet-4-5", 1024, out),
            body,
        )
    }

    #[test]
    fn system_and_multi_turn_chat() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": "And 3+3?"}
            ],
            "max_tokens": 100,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": "\n\n",
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 7,
            "user": "u-1"
        });
        assert_eq!(
            to_messages(&body),
            Ok(json!({
                "model": "claude-sonnet-4-5",
                "max_tokens": 100,
                "system": "You are terse.\n\nAnswer in English.",
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": "Hello."}]},
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is 2+2?"},
                        {"type": "text", "text": "Be brief."},
                        {"type": "text", "text": "And 3+3?"}
                    ]}
                ],
                "temperature": 0.5,
                "top_p": 0.9,
                "stop_sequences": ["\n\n"],
                "stream": true,
                "metadata": {"user_id": "u-1"}
            }))
        );
    }

    #[test]
    fn max_tokens_stop_and_defaults() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        let v = to_messages(&base).expect("translates");
        assert_eq!(v["max_tokens"], 1024);
        assert!(v.get("system").is_none() && v.get("stream").is_none());
        assert!(v.get("stop_sequences").is_none() && v.get("temperature").is_none());

        let mut b = base.clone();
        b["max_completion_tokens"] = json!(50);
        b["max_tokens"] = json!(70);
        b["stop"] = json!(["END", "STOP"]);
        b["stream"] = json!(false);
        b["n"] = json!(1);
        b["logprobs"] = json!(false);
        b["tools"] = Value::Null;
        b["response_format"] = json!({"type": "text"});
        let v = to_messages(&b).expect("translates");
        assert_eq!(v["max_tokens"], 50);
        assert_eq!(v["stop_sequences"], json!(["END", "STOP"]));
        assert!(v.get("stream").is_none());

        let mut b = base.clone();
        b["max_tokens"] = json!(70);
        b["max_completion_tokens"] = Value::Null;
        assert_eq!(to_messages(&b).expect("translates")["max_tokens"], 70);

        // Empty texts are left out, and so is a turn left empty; its neighbours then merge.
        let b = json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": [{"type": "text", "text": "b"}]}
        ]});
        assert_eq!(
            to_messages(&b).expect("translates")["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}])
        );
    }

    #[test]
    fn tools_tool_calls_tool_results_and_images_map_to_blocks() {
        let body = json!({
            "model": "gpt-4o",
            "messages": [
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "image_url", "image_url": {"url": "https://example.com/sky.jpg", "detail": "low"}}
                ]},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "toolu_02", "type": "function", "function": {"name": "get_time", "arguments": ""}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "18C, clear"},
                {"role": "tool", "tool_call_id": "toolu_02", "content": [{"type": "text", "text": "14:05"}]},
                {"role": "user", "content": "Thanks. Umbrella?"}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "parallel_tool_calls": false
        });
        let v = to_messages(&body).expect("translates");
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "text", "text": "Weather here?"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://example.com/sky.jpg"}}
                ]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_02", "name": "get_time", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": [{"type": "text", "text": "18C, clear"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_02", "content": [{"type": "text", "text": "14:05"}]},
                    {"type": "text", "text": "Thanks. Umbrella?"}
                ]}
            ])
        );
        assert_eq!(
            v["tools"],
            json!([
                {"name": "get_weather", "description": "Weather of a city",
                    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
                {"name": "get_time", "input_schema": {"type": "object", "properties": {}}}
            ])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "tool", "name": "get_weather", "disable_parallel_tool_use": true})
        );
        for (choice, expected) in [
            (json!("auto"), json!({"type": "auto"})),
            (json!("required"), json!({"type": "any"})),
            (json!("none"), json!({"type": "none"})),
        ] {
            let mut b = body.clone();
            b["tool_choice"] = choice;
            b["parallel_tool_calls"] = json!(true);
            assert_eq!(
                to_messages(&b).expect("translates")["tool_choice"],
                expected
            );
        }
        // Images only in a user's turn.
        let mut b = body.clone();
        b["messages"] = json!([
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]}
        ]);
        assert_eq!(
            to_messages(&b),
            Err(TranslateError::Unsupported("image_url"))
        );
    }

    #[test]
    fn unsupported_and_malformed_requests_are_refused() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        let with = |key: &str, value: Value| testing::with_field(&base, key, value, to_messages);
        use TranslateError::{BadField, NotJson, Unsupported};
        assert_eq!(
            with(
                "tools",
                json!([{"type": "custom", "custom": {"name": "f"}}])
            ),
            Err(Unsupported("tools"))
        );
        assert_eq!(with("tools", json!({"f": 1})), Err(BadField("tools")));
        assert_eq!(
            with("tool_choice", json!("required")),
            Err(BadField("tool_choice")),
            "a tool is required, and there is none"
        );
        assert_eq!(with("tool_choice", json!("auto")).map(|_| ()), Ok(()));
        assert_eq!(with("functions", json!([])), Err(Unsupported("functions")));
        assert_eq!(
            with("reasoning_effort", json!("high")),
            Err(Unsupported("reasoning_effort"))
        );
        assert_eq!(
            with("web_search_options", json!({})),
            Err(Unsupported("web_search_options"))
        );
        assert_eq!(
            with("function_call", json!("auto")),
            Err(Unsupported("function_call"))
        );
        assert_eq!(with("n", json!(2)), Err(Unsupported("n")));
        assert_eq!(with("logprobs", json!(true)), Err(Unsupported("logprobs")));
        assert_eq!(with("top_logprobs", json!(3)), Err(Unsupported("logprobs")));
        assert_eq!(
            with("response_format", json!({"type": "json_object"})),
            Err(Unsupported("response_format"))
        );
        assert_eq!(
            with("audio", json!({"voice": "alloy"})),
            Err(Unsupported("audio"))
        );
        assert_eq!(with("stop", json!(3)), Err(BadField("stop")));
        assert_eq!(with("stop", json!(["a", 1])), Err(BadField("stop")));
        assert_eq!(with("max_tokens", json!(-1)), Err(BadField("max_tokens")));
        assert_eq!(with("max_tokens", json!("10")), Err(BadField("max_tokens")));
        assert_eq!(
            with("temperature", json!("hot")),
            Err(BadField("temperature"))
        );
        assert_eq!(with("stream", json!("yes")), Err(BadField("stream")));
        assert_eq!(with("messages", json!([])), Err(BadField("messages")));
        assert_eq!(with("messages", json!("Hi")), Err(BadField("messages")));
        assert_eq!(
            with(
                "messages",
                json!([{"role": "system", "content": "only a system prompt"}])
            ),
            Err(BadField("messages"))
        );
        assert_eq!(
            with(
                "messages",
                json!([{"role": "user", "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/bmp;base64,Qk0="}}
                ]}])
            ),
            Err(Unsupported("image_url")),
            "a media type Anthropic does not take"
        );
        assert_eq!(
            with(
                "messages",
                json!([{"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
                ]}])
            ),
            Err(BadField("image_url"))
        );
        assert_eq!(
            with("messages", json!([{"role": "tool", "content": "42"}])),
            Err(BadField("tool_call_id"))
        );
        assert_eq!(
            with(
                "messages",
                json!([{"role": "function", "name": "f", "content": "42"}])
            ),
            Err(Unsupported("functions"))
        );
        for args in ["[1]", "{not json", "3"] {
            assert_eq!(
                with(
                    "messages",
                    json!([
                        {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": args}}]}
                    ])
                ),
                Err(BadField("tool_calls")),
                "{args}"
            );
        }
        assert_eq!(
            with("messages", json!([{"role": "robot", "content": "Hi"}])),
            Err(BadField("role"))
        );
        assert_eq!(
            with("messages", json!([{"role": "user", "content": 5}])),
            Err(BadField("content"))
        );

        let mut out = b"kept".to_vec();
        for body in [&b"[1,2]"[..], b"\"s\"", b"{", b"{} {}", b"", b"null"] {
            assert_eq!(chat_to_messages(body, "m", 1, &mut out), Err(NotJson));
        }
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    /// A Messages response, as the API sends it.
    const MESSAGE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","model":"claude-sonnet-4-5-20250929","content":[{"type":"text","text":"Hello"},{"type":"text","text":", \"world\"!"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":30,"output_tokens":6}}"#;

    #[test]
    fn response_maps_text_usage_and_finish_reason() {
        let mut out = Vec::new();
        message_to_chat(MESSAGE.as_bytes(), 1_700_000_000, &mut out).expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","object":"chat.completion","created":1700000000,"model":"claude-sonnet-4-5-20250929","#,
                r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello, \"world\"!"},"logprobs":null,"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":142,"completion_tokens":6,"total_tokens":148,"prompt_tokens_details":{"cached_tokens":30}}}"#
            )
        );

        for (stop, finish) in [
            ("\"end_turn\"", "stop"),
            ("\"stop_sequence\"", "stop"),
            ("\"max_tokens\"", "length"),
            ("\"refusal\"", "content_filter"),
            ("\"pause_turn\"", "stop"),
            ("null", "stop"),
        ] {
            let body = format!(
                r#"{{"id":"m","type":"message","content":[],"model":"c","stop_reason":{stop},"usage":{{"input_tokens":1,"output_tokens":2}}}}"#
            );
            let mut out = Vec::new();
            message_to_chat(body.as_bytes(), 1, &mut out).expect("translates");
            let v: Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
            assert_eq!(v["choices"][0]["message"]["content"], "");
            assert_eq!(v["usage"]["total_tokens"], 3);
        }

        let mut out = Vec::new();
        let error =
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        assert_eq!(
            message_to_chat(error, 1, &mut out),
            Err(TranslateError::BadField("type"))
        );
        assert_eq!(
            message_to_chat(b"[]", 1, &mut out),
            Err(TranslateError::NotJson)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn tool_use_and_thinking_blocks_become_tool_calls_and_reasoning() {
        let body = r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[
            {"type":"thinking","thinking":"The user wants weather.","signature":"sig"},
            {"type":"tool_use","id":"toolu_01A","name":"get_weather","input":{"city":"Paris","units":["c"]}},
            {"type":"tool_use","id":"toolu_01B","name":"get_time","input":{}}],
            "stop_reason":"tool_use","usage":{"input_tokens":10,"output_tokens":20}}"#;
        let mut out = Vec::new();
        message_to_chat(body.as_bytes(), 1, &mut out).expect("translates");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        let m = &v["choices"][0]["message"];
        assert_eq!(m["content"], Value::Null, "no text: content is null");
        assert_eq!(m["reasoning_content"], "The user wants weather.");
        assert_eq!(
            m["tool_calls"],
            json!([
                {"id": "toolu_01A", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\",\"units\":[\"c\"]}"}},
                {"id": "toolu_01B", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ])
        );
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        // Text beside a call stays the content.
        let body = body.replace(
            r#"{"type":"thinking","thinking":"The user wants weather.","signature":"sig"}"#,
            r#"{"type":"text","text":"Checking."}"#,
        );
        let mut out = Vec::new();
        message_to_chat(body.as_bytes(), 1, &mut out).expect("translates");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["choices"][0]["message"]["content"], "Checking.");
        assert!(v["choices"][0]["message"]
            .get("reasoning_content")
            .is_none());
    }

    /// A streamed answer with thinking, text and two tool calls, as the API sends it.
    const TOOL_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"thinking_delta\",\"thinking\":\"Hmm.\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"signature_delta\",\"signature\":\"EqQB\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking.\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_B\",\"name\":\"get_time\",\"input\":{}}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":3}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    #[test]
    fn streamed_tool_use_becomes_tool_call_deltas() {
        let (out, usage) = translate_in_pieces(TOOL_STREAM.as_bytes(), &[], false);
        assert_eq!(usage, Some((9, 30)));
        let text = std::str::from_utf8(&out).expect("UTF-8");
        let chunks: Vec<Value> = text
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).expect("valid JSON"))
            .collect();
        let deltas: Vec<&Value> = chunks.iter().map(|c| &c["choices"][0]["delta"]).collect();
        assert_eq!(deltas[1], &json!({"reasoning_content": "Hmm."}));
        assert_eq!(deltas[2], &json!({"content": "Checking."}));
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "id": "toolu_A", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": "}}]})
        );
        assert_eq!(
            deltas[5],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "\"Paris\"}"}}]})
        );
        assert_eq!(
            deltas[6],
            &json!({"tool_calls": [{"index": 1, "id": "toolu_B", "type": "function", "function": {"name": "get_time", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[7],
            &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        assert_eq!(chunks[8]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(chunks.len(), 9);
        assert!(text.ends_with("data: [DONE]\n\n"));
        // The same output however the stream is cut.
        let cuts: Vec<usize> = (0..TOOL_STREAM.len()).step_by(7).collect();
        assert_eq!(
            translate_in_pieces(TOOL_STREAM.as_bytes(), &cuts, false).0,
            out
        );
    }

    fn openai_error(status: u16, body: &[u8]) -> Value {
        let mut out = Vec::new();
        error_to_openai(status, body, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn errors_map_to_openai_shape() {
        assert_eq!(
            openai_error(
                400,
                br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: Field required"}}"#
            ),
            json!({"error": {"message": "max_tokens: Field required", "type": "invalid_request_error", "param": null, "code": "invalid_request_error"}})
        );
        assert_eq!(
            openai_error(
                401,
                br#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#
            ),
            json!({"error": {"message": "invalid x-api-key", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}})
        );
        assert_eq!(
            openai_error(
                429,
                br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of requests has exceeded your rate limit"}}"#
            )["error"]["code"],
            "rate_limit_exceeded"
        );
        let overloaded = openai_error(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        assert_eq!(overloaded["error"]["type"], "server_error");
        assert_eq!(overloaded["error"]["code"], "overloaded_error");
        assert_eq!(
            openai_error(
                404,
                br#"{"type":"error","error":{"type":"not_found_error","message":"model: x"}}"#
            )["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(
            openai_error(403, b"<html>forbidden</html>"),
            json!({"error": {"message": "the Anthropic upstream answered HTTP 403", "type": "permission_error", "param": null, "code": null}})
        );
        assert_eq!(openai_error(502, b"")["error"]["type"], "server_error");
        assert_eq!(
            openai_error(413, b"")["error"]["type"],
            "invalid_request_error"
        );
    }

    /// An Anthropic Messages stream, as the API sends it.
    const STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":10,\"output_tokens\":1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", \\\"w\\u00f6rld\\\"\\n!\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    const HEAD: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","choices":"#;

    fn expected(include_usage: bool) -> String {
        let usage = r#"[],"usage":{"prompt_tokens":35,"completion_tokens":15,"total_tokens":50,"prompt_tokens_details":{"cached_tokens":10}}"#;
        testing::expected_chunks(
            HEAD,
            &[
                r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":", \"wörld\"\n!"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]"#,
            ],
            include_usage.then_some(usage),
        )
    }

    fn translate_in_pieces(
        stream: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Vec<u8>, Option<(u64, u64)>) {
        testing::translate_in_pieces(
            StreamToChat::new("chatcmpl-1", "gpt-4o", 1_700_000_000, include_usage),
            stream,
            cuts,
        )
    }

    #[test]
    fn stream_translates_to_openai_chunks() {
        for include_usage in [false, true] {
            let (out, usage) = translate_in_pieces(STREAM.as_bytes(), &[], include_usage);
            assert_eq!(
                std::str::from_utf8(&out).expect("UTF-8"),
                expected(include_usage)
            );
            assert_eq!(usage, Some((35, 15)));
        }
        // CRLF line ends, and one byte at a time.
        let crlf = STREAM.replace('\n', "\r\n");
        let cuts: Vec<usize> = (0..crlf.len()).collect();
        let (out, _) = translate_in_pieces(crlf.as_bytes(), &cuts, true);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        // Every chunk is valid JSON.
        for event in expected(true).split("\n\n").filter(|e| !e.is_empty()) {
            let data = event.strip_prefix("data: ").expect("data line");
            if data != "[DONE]" {
                serde_json::from_str::<Value>(data).expect("valid JSON");
            }
        }
    }

    #[test]
    fn stream_error_and_truncation() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"c\",\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
            "event: error\n",
            "data: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
            "event: message_stop\n",
            "data: {\"type\":\"message_stop\"}\n\n",
        );
        let (out, usage) = translate_in_pieces(stream.as_bytes(), &[], true);
        let out = String::from_utf8(out).expect("UTF-8");
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 3, "{out}");
        assert!(events[0].contains(r#""role":"assistant""#));
        assert_eq!(
            events[1],
            r#"data: {"error":{"message":"Overloaded","type":"server_error","param":null,"code":"overloaded_error"}}"#
        );
        assert_eq!(events[2], "data: [DONE]");
        assert_eq!(usage, Some((3, 1)));

        // Cut off before message_stop: an error event, then [DONE].
        let cut = STREAM.find("event: message_stop").expect("present");
        let (out, _) =
            translate_in_pieces(STREAM.get(..cut).expect("in range").as_bytes(), &[], false);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.ends_with("before message_stop\",\"type\":\"server_error\",\"param\":null,\"code\":\"api_error\"}}\n\ndata: [DONE]\n\n"), "{out}");

        // The last event without its blank line still counts.
        let (out, _) = translate_in_pieces(STREAM.trim_end().as_bytes(), &[], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));

        // Nothing at all.
        let (out, usage) = translate_in_pieces(b"", &[], true);
        assert!(String::from_utf8(out)
            .expect("UTF-8")
            .ends_with("data: [DONE]\n\n"));
        assert_eq!(usage, None);
    }

    #[test]
    fn oversized_events_are_skipped() {
        let big = "x".repeat(STREAM_EVENT_BYTES_MAX + 1);
        let stream = format!(
            "data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"{big}\"}}}}\n\n{STREAM}"
        );
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[7, 100_000, 200_000], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        // The realistic stream with optional noise: comments, CRLF, an unknown event.
        (any::<bool>(), any::<bool>()).prop_map(|(crlf, noise)| {
            let mut s = String::new();
            if noise {
                s.push_str(": keep-alive\n\nevent: unknown\ndata: {\"type\":\"mystery\"}\n\n");
            }
            s.push_str(STREAM);
            let s = if crlf { s.replace('\n', "\r\n") } else { s };
            s.into_bytes()
        })
    }

    testing::stream_split_independent!(300);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// No panic on arbitrary bytes rich in SSE syntax, split independence there too, and
        /// the output always ends with [DONE].
        #[test]
        fn stream_never_panics(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n:data: event{}\"type\"message_stop_delta error".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = translate_in_pieces(&stream, &[], true);
            prop_assert!(whole.0.ends_with(b"data: [DONE]\n\n"));
            prop_assert_eq!(translate_in_pieces(&stream, &cuts, true), whole);
        }

        #[test]
        fn stream_never_panics_on_any_bytes(stream in prop::collection::vec(any::<u8>(), 0..512)) {
            let (out, _) = translate_in_pieces(&stream, &[], false);
            prop_assert!(out.ends_with(b"data: [DONE]\n\n"));
        }

        /// The one-shot functions never panic, and their output is JSON when they succeed.
        #[test]
        fn one_shot_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), status in any::<u16>()) {
            let mut out = Vec::new();
            if chat_to_messages(&body, "m", 16, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            if message_to_chat(&body, 0, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            error_to_openai(status, &body, &mut out);
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
        }
    }
}
