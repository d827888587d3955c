//! OpenAI chat clients in front of an upstream that serves a model only through OpenAI's
//! Responses API (`POST /v1/responses`).
//!
//! - [`chat_to_responses`]: a chat completion request becomes a Responses request.
//! - [`response_to_chat`]: a whole Responses `response` object becomes a `chat.completion`, and
//!   its usage is returned for the tenant's accounting.
//! - [`StreamToChat`]: the Responses event stream becomes `chat.completion.chunk` events, fed in
//!   pieces of any size; the output does not depend on where the pieces were cut.
//! - [`error_event`]: the event that cuts a Responses client's own stream at a tenant's budget.
//!
//! Error bodies need no translation: the Responses API's are OpenAI's shape already
//! (`{"error":{"message","type","param","code"}}`). Everything appends to an `out` buffer the
//! caller owns; nothing touches a socket or the clock (the caller passes `created`).
//!
//! # Mapping
//!
//! | OpenAI chat | Responses |
//! |---|---|
//! | `system` / `developer` messages | `message` input items of role `system` / `developer`, in place (see below) |
//! | `user` messages, string content | `message` item, string `content` |
//! | `user` content parts `text` / `image_url` / `file` | `input_text` / `input_image` (`image_url`, `detail`, `auto` when absent) / `input_file` (`file_id`, `file_data`, `filename`) |
//! | `assistant` message text (string, `text` or `refusal` parts; else its `refusal`) | `message` item of role `assistant`, string `content` (empty texts left out) |
//! | assistant `tool_calls[{id, function:{name, arguments}}]` | `function_call` items `{call_id, name, arguments}` after the message's text |
//! | `tool` messages `{tool_call_id, content}` | `function_call_output` items `{call_id, output}` (text parts joined) |
//! | `tools[{type:"function", function:{name, description, parameters, strict}}]` | `tools[{type:"function", name, description, parameters, strict}]` (flat; `strict` `false` when absent, chat's default, since the Responses API's is `true`; `parameters` an empty object schema when absent) |
//! | `tool_choice` `none` / `auto` / `required` / `{type:"function", function:{name}}` | the same string / `{type:"function", name}` |
//! | `parallel_tool_calls` | the same |
//! | `max_completion_tokens`, else `max_tokens` | `max_output_tokens` |
//! | `temperature`, `top_p` | the same |
//! | `response_format` `text` / `json_object` / `json_schema{name, schema, strict, description}` | `text.format` `{type:"text"}` / `{type:"json_object"}` / `{type:"json_schema", name, schema, strict, description}` |
//! | `verbosity` | `text.verbosity` |
//! | `reasoning_effort` | `reasoning.effort` |
//! | `user`, `safety_identifier`, `prompt_cache_key`, `service_tier` | the same |
//! | `stream` | `stream` (no `stream_options`: usage always comes in `response.completed`; the client's `include_usage` only decides [`StreamToChat`]'s usage chunk) |
//! | (none) | `store: false` (the gateway keeps no state at the upstream) |
//! | `stop`, `n` > 1, `logprobs`, `top_logprobs`, `audio` and non-text `modalities`, `input_audio` parts, `functions`, `function_call`, `function` messages, assistant `function_call`, `web_search_options`, tools or tool choices other than functions | refused: [`TranslateError::Unsupported`] (the Responses API has no stop sequences, one answer per request, and the rest would need mappings not made here) |
//! | `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `prediction`, `metadata`, `store`, `stream_options`, message `name`s | left out (no counterpart; none changes the shape of the answer) |
//!
//! **System and developer messages stay input items**, not `instructions`: they keep their
//! place in the conversation and their role (a system message in the middle of a chat stays
//! there), nothing is joined, and the Responses API repeats `instructions` in every copy of the
//! `response` object, so a long system prompt would also swell each stream's final event (which
//! the stream translator and the usage scanner must read).
//!
//! Answers: `message` items' `output_text` parts are the `content` (concatenated), `refusal`
//! parts the `refusal`; `function_call` items the `tool_calls` (`id` the `call_id`), with
//! `finish_reason` `tool_calls`; `reasoning` items' `summary` texts (else their `content`
//! texts) the `reasoning_content`, joined by a blank line. `status` `incomplete` with
//! `incomplete_details.reason` `max_output_tokens` is `finish_reason` `length`,
//! `content_filter` is `content_filter`; anything else `stop`. A `failed` response is
//! [`TranslateError::BadField`]`("status")`. Usage: `prompt_tokens` is `input_tokens` (which
//! counts cached tokens, as chat's does), `completion_tokens` is `output_tokens` (which counts
//! reasoning tokens), `prompt_tokens_details.cached_tokens` is
//! `input_tokens_details.cached_tokens` (and `prompt_tokens_details.cache_write_tokens`, when
//! not 0, `input_tokens_details.cache_write_tokens`) and
//! `completion_tokens_details.reasoning_tokens` is `output_tokens_details.reasoning_tokens`.
//!
//! Streams: `response.output_text.delta` → `content`, `response.refusal.delta` → `refusal`,
//! `response.reasoning_summary_text.delta` and `response.reasoning_text.delta` →
//! `reasoning_content` (a blank line between summary parts), `response.output_item.added` of a
//! `function_call` → the call's first tool-call delta (`index`, `id`, `type`, `function.name`,
//! `function.arguments:""`), `response.function_call_arguments.delta` → its argument pieces
//! (`.done` or `response.output_item.done` supply arguments no delta sent, and a call no
//! `.added` announced); `response.completed` / `response.incomplete` → the finishing chunk,
//! the usage chunk when asked for and `[DONE]`; `response.failed` and `error` → an OpenAI error
//! event and `[DONE]`.

use serde_json::{Map, Value};

use super::chat_out::{self, Chunks, Completion, ToolCall, UsageDetails};
use super::sse::EventReader;
pub use super::sse::STREAM_EVENT_BYTES_MAX;
use super::{
    copy_numbers, present, refuse_audio, refuse_choices, refuse_logprobs, refuse_present,
    tool_description, tool_schema, write_object, TranslateError,
};
use crate::llm::json::write_str;
use crate::llm::Usage;

/// The most tool calls [`StreamToChat`] follows in one answer; a stream announcing more ends
/// with an error event.
pub const STREAM_TOOL_CALLS_MAX: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Requests

/// Translate an OpenAI chat completion request into a Responses request for `model` (with
/// `store: false`), appended to `out` (nothing is appended on error).
pub fn chat_to_responses(
    openai_body: &[u8],
    model: &str,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(openai_body) else {
        return Err(TranslateError::NotJson);
    };
    refuse_unsupported(&body)?;
    let input = translate_messages(body.get("messages"))?;

    let mut req = Map::new();
    req.insert("model".into(), Value::from(model));
    req.insert("input".into(), Value::Array(input));
    req.insert("store".into(), Value::Bool(false));
    if let Some(v) = match (
        present(&body, "max_completion_tokens"),
        present(&body, "max_tokens"),
    ) {
        (Some(v), _) | (None, Some(v)) => Some(v),
        (None, None) => None,
    } {
        let n = v.as_u64().ok_or(TranslateError::BadField("max_tokens"))?;
        req.insert("max_output_tokens".into(), Value::from(n));
    }
    copy_numbers(&body, &["temperature", "top_p"], &mut req)?;
    match present(&body, "stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            req.insert("stream".into(), Value::Bool(true));
        }
        Some(_) => return Err(TranslateError::BadField("stream")),
    }
    if let Some(tools) = present(&body, "tools") {
        req.insert("tools".into(), translate_tools(tools)?);
    }
    if let Some(choice) = present(&body, "tool_choice") {
        req.insert("tool_choice".into(), translate_tool_choice(choice)?);
    }
    match present(&body, "parallel_tool_calls") {
        None => {}
        Some(Value::Bool(b)) => {
            req.insert("parallel_tool_calls".into(), Value::Bool(*b));
        }
        Some(_) => return Err(TranslateError::BadField("parallel_tool_calls")),
    }
    let mut text = Map::new();
    if let Some(format) = present(&body, "response_format") {
        text.insert("format".into(), translate_format(format)?);
    }
    if let Some(verbosity) = present(&body, "verbosity") {
        if !verbosity.is_string() {
            return Err(TranslateError::BadField("verbosity"));
        }
        text.insert("verbosity".into(), verbosity.clone());
    }
    if !text.is_empty() {
        req.insert("text".into(), Value::Object(text));
    }
    if let Some(effort) = present(&body, "reasoning_effort") {
        if !effort.is_string() {
            return Err(TranslateError::BadField("reasoning_effort"));
        }
        let mut reasoning = Map::new();
        reasoning.insert("effort".into(), effort.clone());
        req.insert("reasoning".into(), Value::Object(reasoning));
    }
    for key in [
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "service_tier",
    ] {
        match present(&body, key) {
            None => {}
            Some(v @ Value::String(_)) => {
                req.insert(key.into(), v.clone());
            }
            Some(_) => return Err(TranslateError::BadField(key)),
        }
    }
    write_object(req, out)
}

/// Refuse the features a Responses request cannot express (or that are not mapped).
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    match present(body, "stop") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(TranslateError::Unsupported("stop")),
    }
    refuse_present(body, &["functions", "function_call", "web_search_options"])?;
    refuse_choices(body)?;
    refuse_logprobs(body)?;
    refuse_audio(body)
}

/// A string-valued field of `v`, or [`TranslateError::BadField`] naming `field`.
fn str_field<'a>(v: &'a Value, key: &str, field: &'static str) -> Result<&'a str, TranslateError> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or(TranslateError::BadField(field))
}

/// `{"type":"message","role":role,"content":content}`.
fn message_item(role: &str, content: Value) -> Value {
    let mut item = Map::new();
    item.insert("type".into(), Value::from("message"));
    item.insert("role".into(), Value::from(role));
    item.insert("content".into(), content);
    Value::Object(item)
}

/// The Responses `input` items of an OpenAI `messages` array.
fn translate_messages(messages: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(TranslateError::BadField("messages"));
    };
    if messages.is_empty() {
        return Err(TranslateError::BadField("messages"));
    }
    let mut input = Vec::with_capacity(messages.len());
    for message in messages {
        let Value::Object(message) = message else {
            return Err(TranslateError::BadField("messages"));
        };
        match message.get("role").and_then(Value::as_str) {
            Some(role @ ("system" | "developer")) => {
                input.push(message_item(role, text_content(message.get("content"))?));
            }
            Some("user") => input.push(message_item("user", user_content(message.get("content"))?)),
            Some("assistant") => assistant_items(message, &mut input)?,
            Some("tool") => {
                let Some(Value::String(call_id)) = message.get("tool_call_id") else {
                    return Err(TranslateError::BadField("tool_call_id"));
                };
                let mut item = Map::new();
                item.insert("type".into(), Value::from("function_call_output"));
                item.insert("call_id".into(), Value::from(call_id.as_str()));
                item.insert(
                    "output".into(),
                    Value::from(joined_text(message.get("content"))?),
                );
                input.push(Value::Object(item));
            }
            Some("function") => return Err(TranslateError::Unsupported("function_call")),
            _ => return Err(TranslateError::BadField("role")),
        }
    }
    Ok(input)
}

/// A system or developer message's content: a string as is, `text` parts as `input_text`.
fn text_content(content: Option<&Value>) -> Result<Value, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(Value::from(s.as_str())),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => out.push(input_text(str_field(part, "text", "content")?)),
                    _ => return Err(TranslateError::BadField("content")),
                }
            }
            Ok(Value::Array(out))
        }
        _ => Err(TranslateError::BadField("content")),
    }
}

fn input_text(text: &str) -> Value {
    let mut part = Map::new();
    part.insert("type".into(), Value::from("input_text"));
    part.insert("text".into(), Value::from(text));
    Value::Object(part)
}

/// A user message's content: a string as is; parts as `input_text`, `input_image` and
/// `input_file`.
fn user_content(content: Option<&Value>) -> Result<Value, TranslateError> {
    let parts = match content {
        Some(Value::String(s)) => return Ok(Value::from(s.as_str())),
        Some(Value::Array(parts)) => parts,
        _ => return Err(TranslateError::BadField("content")),
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("text") => out.push(input_text(str_field(part, "text", "content")?)),
            Some("image_url") => {
                let image = part.get("image_url");
                let url = match image {
                    Some(Value::String(url)) => url.as_str(),
                    Some(image) => str_field(image, "url", "image_url")?,
                    None => return Err(TranslateError::BadField("image_url")),
                };
                let detail = match image.and_then(|i| i.get("detail")) {
                    None | Some(Value::Null) => "auto",
                    Some(Value::String(d)) => d.as_str(),
                    Some(_) => return Err(TranslateError::BadField("image_url")),
                };
                let mut p = Map::new();
                p.insert("type".into(), Value::from("input_image"));
                p.insert("image_url".into(), Value::from(url));
                p.insert("detail".into(), Value::from(detail));
                out.push(Value::Object(p));
            }
            Some("file") => {
                let Some(Value::Object(file)) = part.get("file") else {
                    return Err(TranslateError::BadField("file"));
                };
                let mut p = Map::new();
                p.insert("type".into(), Value::from("input_file"));
                for key in ["file_id", "file_data", "filename"] {
                    match present(file, key) {
                        None => {}
                        Some(v @ Value::String(_)) => {
                            p.insert(key.into(), v.clone());
                        }
                        Some(_) => return Err(TranslateError::BadField("file")),
                    }
                }
                out.push(Value::Object(p));
            }
            Some("input_audio") => return Err(TranslateError::Unsupported("audio")),
            _ => return Err(TranslateError::BadField("content")),
        }
    }
    Ok(Value::Array(out))
}

/// The text of a message's `content` (a string, `text` and `refusal` parts concatenated, or
/// nothing for `null`).
fn joined_text(content: Option<&Value>) -> Result<String, TranslateError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                let key = match part.get("type").and_then(Value::as_str) {
                    Some("text") => "text",
                    Some("refusal") => "refusal",
                    _ => return Err(TranslateError::BadField("content")),
                };
                text.push_str(str_field(part, key, "content")?);
            }
            Ok(text)
        }
        Some(_) => Err(TranslateError::BadField("content")),
    }
}

/// An assistant message: its text as a `message` item (none when empty), then a
/// `function_call` item per tool call.
fn assistant_items(
    message: &Map<String, Value>,
    input: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    if present(message, "function_call").is_some() {
        return Err(TranslateError::Unsupported("function_call"));
    }
    let mut text = joined_text(message.get("content"))?;
    if text.is_empty() {
        if let Some(Value::String(refusal)) = present(message, "refusal") {
            text.clone_from(refusal);
        }
    }
    if !text.is_empty() {
        input.push(message_item("assistant", Value::from(text)));
    }
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(calls)) => {
            for call in calls {
                if call.get("type").and_then(Value::as_str) != Some("function") {
                    return Err(TranslateError::Unsupported("tool_calls"));
                }
                let id = str_field(call, "id", "tool_calls")?;
                let function = call
                    .get("function")
                    .ok_or(TranslateError::BadField("tool_calls"))?;
                let mut item = Map::new();
                item.insert("type".into(), Value::from("function_call"));
                item.insert("call_id".into(), Value::from(id));
                item.insert(
                    "name".into(),
                    Value::from(str_field(function, "name", "tool_calls")?),
                );
                item.insert(
                    "arguments".into(),
                    Value::from(str_field(function, "arguments", "tool_calls")?),
                );
                input.push(Value::Object(item));
            }
        }
        Some(_) => return Err(TranslateError::BadField("tool_calls")),
    }
    Ok(())
}

/// Chat's `tools` (each `{type:"function", function:{...}}`) as the Responses API's flat
/// function tools.
fn translate_tools(tools: &Value) -> Result<Value, TranslateError> {
    let Value::Array(tools) = tools else {
        return Err(TranslateError::BadField("tools"));
    };
    let mut out = Vec::with_capacity(tools.len());
    for tool in tools {
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(TranslateError::Unsupported("tools"));
        }
        let Some(Value::Object(function)) = tool.get("function") else {
            return Err(TranslateError::BadField("tools"));
        };
        let mut t = Map::new();
        t.insert("type".into(), Value::from("function"));
        match function.get("name") {
            Some(name @ Value::String(_)) => t.insert("name".into(), name.clone()),
            _ => return Err(TranslateError::BadField("tools")),
        };
        if let Some(d) = tool_description(function)? {
            t.insert("description".into(), Value::from(d));
        }
        t.insert("parameters".into(), tool_schema(function)?);
        let strict = match present(function, "strict") {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(TranslateError::BadField("tools")),
        };
        t.insert("strict".into(), Value::Bool(strict));
        out.push(Value::Object(t));
    }
    Ok(Value::Array(out))
}

fn translate_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    match choice {
        Value::String(s) if matches!(s.as_str(), "none" | "auto" | "required") => {
            Ok(choice.clone())
        }
        Value::Object(c) if c.get("type").and_then(Value::as_str) == Some("function") => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or(TranslateError::BadField("tool_choice"))?;
            let mut out = Map::new();
            out.insert("type".into(), Value::from("function"));
            out.insert("name".into(), Value::from(name));
            Ok(Value::Object(out))
        }
        _ => Err(TranslateError::Unsupported("tool_choice")),
    }
}

/// Chat's `response_format` as the Responses API's `text.format`.
fn translate_format(format: &Value) -> Result<Value, TranslateError> {
    let mut out = Map::new();
    match format.get("type").and_then(Value::as_str) {
        Some(kind @ ("text" | "json_object")) => {
            out.insert("type".into(), Value::from(kind));
        }
        Some("json_schema") => {
            let Some(Value::Object(schema)) = format.get("json_schema") else {
                return Err(TranslateError::BadField("response_format"));
            };
            out.insert("type".into(), Value::from("json_schema"));
            match schema.get("name") {
                Some(name @ Value::String(_)) => out.insert("name".into(), name.clone()),
                _ => return Err(TranslateError::BadField("response_format")),
            };
            for key in ["schema", "strict", "description"] {
                if let Some(v) = present(schema, key) {
                    out.insert(key.into(), v.clone());
                }
            }
        }
        _ => return Err(TranslateError::BadField("response_format")),
    }
    Ok(Value::Object(out))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// The usage of a Responses `usage` object (OpenAI's counts: cached and cache-write tokens are
/// part of the input, reasoning tokens part of the output).
fn usage_of(usage: &Value) -> Usage {
    let get = |key| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
    let detail = |outer, key| {
        usage
            .get(outer)
            .and_then(|d: &Value| d.get(key))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    Usage {
        prompt_tokens: get("input_tokens"),
        completion_tokens: get("output_tokens"),
        cached_tokens: detail("input_tokens_details", "cached_tokens"),
        cache_write_tokens: detail("input_tokens_details", "cache_write_tokens"),
        reasoning_tokens: detail("output_tokens_details", "reasoning_tokens"),
    }
}

/// Chat's `finish_reason` for a finished response (`status` and `incomplete_details`).
fn finish_reason(response: &Value) -> &'static str {
    if response.get("status").and_then(Value::as_str) != Some("incomplete") {
        return "stop";
    }
    match response
        .get("incomplete_details")
        .and_then(|d| d.get("reason"))
        .and_then(Value::as_str)
    {
        Some("content_filter") => "content_filter",
        Some("max_output_tokens") => "length",
        _ => "stop",
    }
}

/// The texts of a `reasoning` item: its `summary` texts, else its `content` texts.
fn reasoning_texts(item: &Value) -> impl Iterator<Item = &str> {
    let texts = |key| {
        item.get(key)
            .and_then(Value::as_array)
            .map(|parts| {
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .filter(|t| !t.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    let summary = texts("summary");
    if summary.is_empty() {
        texts("content").into_iter()
    } else {
        summary.into_iter()
    }
}

/// Translate a whole Responses `response` object into a `chat.completion` with `id`, `model`
/// (the client's name for it) and `created` (unix seconds), appended to `out` (nothing is
/// appended on error), and return its usage. A body that is not a `response` object, or one
/// whose `status` is `failed`, is [`TranslateError::BadField`] (`object`, `output` or
/// `status`).
pub fn response_to_chat(
    body: &[u8],
    id: &str,
    model: &str,
    created: u64,
    out: &mut Vec<u8>,
) -> Result<Usage, TranslateError> {
    let Ok(response @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(TranslateError::NotJson);
    };
    match response.get("object") {
        None => {}
        Some(o) if o.as_str() == Some("response") => {}
        Some(_) => return Err(TranslateError::BadField("object")),
    }
    if response.get("status").and_then(Value::as_str) == Some("failed") {
        return Err(TranslateError::BadField("status"));
    }
    let Some(Value::Array(items)) = response.get("output") else {
        return Err(TranslateError::BadField("output"));
    };
    let (mut text, mut refusal, mut reasoning) = (String::new(), None::<String>, String::new());
    let mut calls: Vec<(&str, &str, &str)> = Vec::new();
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                for part in item
                    .get("content")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    match part.get("type").and_then(Value::as_str) {
                        Some("output_text") => {
                            text.push_str(str_field(part, "text", "output")?);
                        }
                        Some("refusal") => refusal
                            .get_or_insert_with(String::new)
                            .push_str(str_field(part, "refusal", "output")?),
                        _ => {}
                    }
                }
            }
            Some("function_call") => calls.push((
                str_field(item, "call_id", "output")?,
                str_field(item, "name", "output")?,
                str_field(item, "arguments", "output")?,
            )),
            Some("reasoning") => {
                for t in reasoning_texts(item) {
                    if !reasoning.is_empty() {
                        reasoning.push_str("\n\n");
                    }
                    reasoning.push_str(t);
                }
            }
            _ => {}
        }
    }
    let usage = response.get("usage").map(usage_of).unwrap_or_default();
    let finish = if calls.is_empty() {
        finish_reason(&response)
    } else {
        "tool_calls"
    };

    let tool_calls: Vec<ToolCall<'_>> = calls.iter().map(ToolCall::from).collect();
    chat_out::push_completion(
        out,
        &Completion {
            id,
            model,
            created,
            text: &text,
            reasoning: &reasoning,
            refusal: refusal.as_deref(),
            tool_calls: &tool_calls,
            finish_reason: finish,
            usage: &usage,
            details: UsageDetails::ALL,
        },
    );
    Ok(usage)
}

/// OpenAI's error type for the `code` of an error the Responses stream reported.
fn openai_error_kind(code: Option<&str>) -> &'static str {
    match code {
        Some("rate_limit_exceeded") => "requests",
        Some(c) if c.starts_with("invalid") => "invalid_request_error",
        _ => "server_error",
    }
}

/// Append an `error` event that cuts a Responses client's stream short (at a tenant's budget):
/// the Responses API's own error event (`type`, `code`, `message`, `param`), which clients that
/// dispatch on `type` read, also carrying OpenAI's `error` object, on which the openai SDKs
/// raise an `APIError` with this message. The code is `budget_exceeded`, the error type
/// `insufficient_quota`, as the chat stream's cut ([`SseFilter::error_event`]). No `[DONE]`: a
/// Responses stream has none.
///
/// [`SseFilter::error_event`]: crate::llm::SseFilter::error_event
pub fn error_event(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"event: error\ndata: {\"type\":\"error\",\"code\":\"budget_exceeded\",\"message\":",
    );
    write_str(out, message);
    out.extend_from_slice(b",\"param\":null,\"error\":{\"message\":");
    write_str(out, message);
    out.extend_from_slice(
        b",\"type\":\"insufficient_quota\",\"param\":null,\"code\":\"budget_exceeded\"}}\n\n",
    );
}

// ---------------------------------------------------------------------------------------------
// Streams

/// A function call of the answer being streamed.
#[derive(Debug)]
struct Call {
    /// The output item's `id` (argument events name it).
    item_id: String,
    /// Its `output_index` (argument events carry it too).
    output_index: Option<u64>,
    /// Whether any of its arguments were sent.
    args_sent: bool,
}

/// Translates a Responses event stream into OpenAI `chat.completion.chunk` events.
///
/// Feed it the decoded response body in pieces of any size; it appends whole OpenAI events to
/// `out` as each Responses event completes, so the output is the same however the input was
/// cut. Events: a first chunk with `delta.role` (on the first event), one chunk per non-empty
/// text, refusal, reasoning or argument delta and per function call announced, a chunk with
/// `finish_reason` (on `response.completed` or `response.incomplete`), the usage chunk with
/// `"choices":[]` when asked for, then `data: [DONE]`. `response.failed` and `error` become an
/// OpenAI error event and `[DONE]`; a stream that ends without a final event gets one too (from
/// [`finish`](Self::finish)). After `[DONE]` further input is ignored. Other events, events
/// that are not JSON and events longer than [`STREAM_EVENT_BYTES_MAX`] are skipped (a final
/// event that long, which repeats the whole answer, ends the stream with the error event).
#[derive(Debug)]
pub struct StreamToChat {
    chunks: Chunks,
    include_usage: bool,
    events: EventReader,
    calls: Vec<Call>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamToChat {
    /// A translator whose chunks carry `id`, `model` (the client's name for it) and `created`
    /// (unix seconds), and end with a usage chunk if `include_usage` (the client's
    /// `stream_options.include_usage`).
    pub fn new(id: &str, model: &str, created: u64, include_usage: bool) -> Self {
        StreamToChat {
            chunks: Chunks::new(id, model, created),
            include_usage,
            events: EventReader::new(),
            calls: Vec::new(),
            usage: None,
            done: false,
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
            if let Ok(v) = serde_json::from_slice::<Value>(event.data) {
                self.on_event(&v, out);
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
            if self.done {
                return;
            }
            if let Ok(v) = serde_json::from_slice::<Value>(event.data) {
                self.on_event(&v, out);
            }
        });
        self.events = events;
        if !self.done {
            self.push_error(
                out,
                None,
                "the Responses upstream ended the stream before response.completed",
            );
        }
    }

    /// The usage the upstream reported (in its final event), once it has.
    pub fn usage(&self) -> Option<Usage> {
        self.usage
    }

    /// Whether `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn on_event(&mut self, v: &Value, out: &mut Vec<u8>) {
        let Some(kind) = v.get("type").and_then(Value::as_str) else {
            return;
        };
        let delta = || {
            v.get("delta")
                .and_then(Value::as_str)
                .filter(|d| !d.is_empty())
        };
        match kind {
            "response.created" | "response.in_progress" => self.chunks.role(out),
            "response.output_text.delta" => {
                if let Some(d) = delta() {
                    self.chunks.text(out, "content", d);
                }
            }
            "response.refusal.delta" => {
                if let Some(d) = delta() {
                    self.chunks.text(out, "refusal", d);
                }
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                if let Some(d) = delta() {
                    self.chunks.text(out, "reasoning_content", d);
                }
            }
            // A blank line between the parts of a reasoning summary.
            "response.reasoning_summary_part.added"
                if v.get("summary_index").and_then(Value::as_u64) > Some(0) =>
            {
                self.chunks.text(out, "reasoning_content", "\n\n");
            }
            "response.output_item.added" => {
                if let Some(item) = v.get("item") {
                    if item.get("type").and_then(Value::as_str) == Some("function_call") {
                        self.start_call(out, item, v.get("output_index"));
                    }
                }
            }
            "response.function_call_arguments.delta" => {
                if let Some(d) = delta() {
                    self.push_arguments(out, v, d);
                }
            }
            "response.function_call_arguments.done" => {
                self.finish_arguments(out, v, v.get("arguments"));
            }
            "response.output_item.done" => {
                let Some(item) = v.get("item") else { return };
                if item.get("type").and_then(Value::as_str) != Some("function_call") {
                    return;
                }
                if self
                    .call_index(item.get("id"), v.get("output_index"))
                    .is_none()
                {
                    self.start_call(out, item, v.get("output_index"));
                }
                let at = ItemRef {
                    item_id: item.get("id"),
                    output_index: v.get("output_index"),
                };
                self.finish_arguments_at(out, at, item.get("arguments"));
            }
            "response.completed" | "response.incomplete" => {
                let response = v.get("response");
                if let Some(usage) = response.and_then(|r| r.get("usage")) {
                    if usage.is_object() {
                        self.usage = Some(usage_of(usage));
                    }
                }
                let finish = if !self.calls.is_empty() {
                    "tool_calls"
                } else {
                    response.map_or("stop", finish_reason)
                };
                self.chunks.finish(out, finish);
                let usage = self.usage.unwrap_or_default();
                self.chunks.end(
                    out,
                    self.include_usage.then_some((&usage, UsageDetails::ALL)),
                );
                self.done = true;
            }
            "response.failed" => {
                let response = v.get("response");
                if let Some(usage) = response.and_then(|r| r.get("usage")) {
                    if usage.is_object() {
                        self.usage = Some(usage_of(usage));
                    }
                }
                let error = response.and_then(|r| r.get("error"));
                let code = error.and_then(|e| e.get("code")).and_then(Value::as_str);
                let message = error
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("the Responses upstream failed to answer");
                self.push_error(out, code, message);
            }
            "error" => {
                // `{"type":"error","code","message","param"}`; some servers nest an `error`.
                let inner = v.get("error").filter(|e| e.is_object()).unwrap_or(v);
                let code = inner.get("code").and_then(Value::as_str);
                let message = inner
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("the Responses upstream reported an error");
                self.push_error(out, code, message);
            }
            _ => {}
        }
    }

    /// The chat index of the call `item_id` (else `output_index`) names.
    fn call_index(&self, item_id: Option<&Value>, output_index: Option<&Value>) -> Option<usize> {
        if let Some(id) = item_id.and_then(Value::as_str) {
            if let Some(i) = self.calls.iter().position(|c| c.item_id == id) {
                return Some(i);
            }
        }
        let n = output_index.and_then(Value::as_u64)?;
        self.calls.iter().position(|c| c.output_index == Some(n))
    }

    /// A new function call: its first delta (`index`, `id`, `type`, `function.name`, empty
    /// `function.arguments`).
    fn start_call(&mut self, out: &mut Vec<u8>, item: &Value, output_index: Option<&Value>) {
        if self.call_index(item.get("id"), output_index).is_some() {
            return;
        }
        if self.calls.len() >= STREAM_TOOL_CALLS_MAX {
            self.push_error(
                out,
                None,
                "the Responses upstream announced more tool calls than the gateway follows",
            );
            return;
        }
        let index = self.calls.len();
        self.calls.push(Call {
            item_id: item
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            output_index: output_index.and_then(Value::as_u64),
            args_sent: false,
        });
        let str_of = |key| item.get(key).and_then(Value::as_str).unwrap_or_default();
        self.chunks
            .tool_call_start(out, chat_index(index), str_of("call_id"), str_of("name"));
    }

    /// An argument piece of the call the event names.
    fn push_arguments(&mut self, out: &mut Vec<u8>, v: &Value, piece: &str) {
        let Some(index) = self.call_index(v.get("item_id"), v.get("output_index")) else {
            return;
        };
        if let Some(call) = self.calls.get_mut(index) {
            call.args_sent = true;
        }
        self.push_call_arguments(out, index, piece);
    }

    fn finish_arguments(&mut self, out: &mut Vec<u8>, v: &Value, arguments: Option<&Value>) {
        let at = ItemRef {
            item_id: v.get("item_id"),
            output_index: v.get("output_index"),
        };
        self.finish_arguments_at(out, at, arguments);
    }

    /// The whole arguments of a call, when no delta sent any of them.
    fn finish_arguments_at(
        &mut self,
        out: &mut Vec<u8>,
        at: ItemRef<'_>,
        arguments: Option<&Value>,
    ) {
        let Some(index) = self.call_index(at.item_id, at.output_index) else {
            return;
        };
        let Some(arguments) = arguments.and_then(Value::as_str).filter(|a| !a.is_empty()) else {
            return;
        };
        match self.calls.get_mut(index) {
            Some(call) if !call.args_sent => call.args_sent = true,
            _ => return,
        }
        self.push_call_arguments(out, index, arguments);
    }

    fn push_call_arguments(&mut self, out: &mut Vec<u8>, index: usize, arguments: &str) {
        self.chunks
            .tool_call_arguments(out, chat_index(index), arguments);
    }

    fn push_error(&mut self, out: &mut Vec<u8>, code: Option<&str>, message: &str) {
        chat_out::push_error_event(out, message, openai_error_kind(code), code);
        self.done = true;
    }
}

/// A call's position as chat's `index`.
fn chat_index(index: usize) -> u64 {
    u64::try_from(index).unwrap_or(u64::MAX)
}

/// How an event names an output item: its `item_id` (or the item's `id`), and its
/// `output_index`.
#[derive(Clone, Copy)]
struct ItemRef<'a> {
    item_id: Option<&'a Value>,
    output_index: Option<&'a Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testing::{self, assert_well_formed};
    use proptest::prelude::*;
    use serde_json::json;

    fn to_responses(body: &Value) -> Result<Value, TranslateError> {
        testing::request_json(|b, out| chat_to_responses(b, "gpt-5-resp", out), body)
    }

    #[test]
    fn conversation_knobs_and_system_messages() {
        let body = json!({
            "model": "o-resp",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hi", "name": "ada"},
                {"role": "assistant", "content": "Hello."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}
            ],
            "max_completion_tokens": 100,
            "max_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 7,
            "presence_penalty": 0.1,
            "metadata": {"a": "b"},
            "store": true,
            "user": "u-1",
            "safety_identifier": "s-1",
            "prompt_cache_key": "k",
            "service_tier": "flex",
            "reasoning_effort": "low",
            "verbosity": "low",
            "parallel_tool_calls": false,
            "n": 1,
            "logprobs": false,
            "stop": [],
            "modalities": ["text"]
        });
        assert_eq!(
            to_responses(&body),
            Ok(json!({
                "model": "gpt-5-resp",
                "input": [
                    {"type": "message", "role": "system", "content": "You are terse."},
                    {"type": "message", "role": "user", "content": "Hi"},
                    {"type": "message", "role": "assistant", "content": "Hello."},
                    {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Answer in English."}]},
                    {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "What is 2+2?"}]}
                ],
                "store": false,
                "max_output_tokens": 100,
                "temperature": 0.5,
                "top_p": 0.9,
                "stream": true,
                "parallel_tool_calls": false,
                "text": {"verbosity": "low"},
                "reasoning": {"effort": "low"},
                "user": "u-1",
                "safety_identifier": "s-1",
                "prompt_cache_key": "k",
                "service_tier": "flex"
            }))
        );
        // Minimal: nothing but the conversation and store.
        let v = to_responses(
            &json!({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 9}),
        )
        .expect("translates");
        assert_eq!(
            v,
            json!({"model": "gpt-5-resp", "input": [{"type": "message", "role": "user", "content": "Hi"}], "store": false, "max_output_tokens": 9})
        );
    }

    #[test]
    fn tools_tool_calls_and_tool_results() {
        let body = json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "12:"}, {"type": "text", "text": "00"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "It is 18C"}], "tool_calls": []}
            ],
            "tools": [
                {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true}},
                {"type": "function", "function": {"name": "get_time"}}
            ],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        });
        let v = to_responses(&body).expect("translates");
        assert_eq!(
            v["input"],
            json!([
                {"type": "message", "role": "user", "content": "Weather in Paris?"},
                {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{\"city\":\"Paris\"}"},
                {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "call_1", "output": "18C"},
                {"type": "function_call_output", "call_id": "call_2", "output": "12:00"},
                {"type": "message", "role": "assistant", "content": "It is 18C"}
            ])
        );
        assert_eq!(
            v["tools"],
            json!([
                {"type": "function", "name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}, "strict": true},
                {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}, "strict": false}
            ])
        );
        assert_eq!(
            v["tool_choice"],
            json!({"type": "function", "name": "get_weather"})
        );
        for choice in ["none", "auto", "required"] {
            let mut b = body.clone();
            b["tool_choice"] = json!(choice);
            assert_eq!(
                to_responses(&b).expect("translates")["tool_choice"],
                json!(choice)
            );
        }
    }

    #[test]
    fn images_files_and_formats() {
        let body = json!({
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}},
                {"type": "file", "file": {"file_id": "file-1"}},
                {"type": "file", "file": {"file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"}}
            ]}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "description": "d", "schema": {"type": "object"}, "strict": true}}
        });
        let v = to_responses(&body).expect("translates");
        assert_eq!(
            v["input"][0]["content"],
            json!([
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/a.png", "detail": "auto"},
                {"type": "input_image", "image_url": "data:image/png;base64,AAAA", "detail": "low"},
                {"type": "input_file", "file_id": "file-1"},
                {"type": "input_file", "file_data": "data:application/pdf;base64,AA", "filename": "a.pdf"}
            ])
        );
        assert_eq!(
            v["text"],
            json!({"format": {"type": "json_schema", "name": "answer", "schema": {"type": "object"}, "strict": true, "description": "d"}})
        );
        for kind in ["text", "json_object"] {
            let b = json!({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": kind}, "verbosity": "high"});
            assert_eq!(
                to_responses(&b).expect("translates")["text"],
                json!({"format": {"type": kind}, "verbosity": "high"})
            );
        }
    }

    #[test]
    fn unsupported_and_malformed_requests_are_refused() {
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        let with = |key: &str, value: Value| testing::with_field(&base, key, value, to_responses);
        use TranslateError::{BadField, NotJson, Unsupported};
        // No stop sequences in the Responses API: never dropped.
        assert_eq!(with("stop", json!("\n")), Err(Unsupported("stop")));
        assert_eq!(with("stop", json!(["END"])), Err(Unsupported("stop")));
        assert_eq!(with("n", json!(2)), Err(Unsupported("n")));
        assert_eq!(with("logprobs", json!(true)), Err(Unsupported("logprobs")));
        assert_eq!(with("top_logprobs", json!(2)), Err(Unsupported("logprobs")));
        assert_eq!(
            with("audio", json!({"voice": "alloy"})),
            Err(Unsupported("audio"))
        );
        assert_eq!(
            with("modalities", json!(["text", "audio"])),
            Err(Unsupported("audio"))
        );
        assert_eq!(with("functions", json!([])), Err(Unsupported("functions")));
        assert_eq!(
            with("function_call", json!("auto")),
            Err(Unsupported("function_call"))
        );
        assert_eq!(
            with("web_search_options", json!({})),
            Err(Unsupported("web_search_options"))
        );
        assert_eq!(
            with(
                "tools",
                json!([{"type": "custom", "custom": {"name": "x"}}])
            ),
            Err(Unsupported("tools"))
        );
        assert_eq!(with("tools", json!({})), Err(BadField("tools")));
        assert_eq!(
            with("tools", json!([{"type": "function"}])),
            Err(BadField("tools"))
        );
        assert_eq!(
            with("tool_choice", json!({"type": "allowed_tools"})),
            Err(Unsupported("tool_choice"))
        );
        assert_eq!(
            with("tool_choice", json!({"type": "function"})),
            Err(BadField("tool_choice"))
        );
        assert_eq!(
            with("response_format", json!({"type": "json_schema"})),
            Err(BadField("response_format"))
        );
        assert_eq!(with("max_tokens", json!(-1)), Err(BadField("max_tokens")));
        assert_eq!(
            with("temperature", json!("hot")),
            Err(BadField("temperature"))
        );
        assert_eq!(with("stream", json!("yes")), Err(BadField("stream")));
        assert_eq!(with("user", json!(5)), Err(BadField("user")));
        assert_eq!(
            with("parallel_tool_calls", json!(1)),
            Err(BadField("parallel_tool_calls"))
        );
        assert_eq!(with("messages", json!([])), Err(BadField("messages")));
        assert_eq!(with("messages", json!("Hi")), Err(BadField("messages")));
        let message = |m: Value| with("messages", json!([m]));
        assert_eq!(
            message(
                json!({"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]})
            ),
            Err(Unsupported("audio"))
        );
        assert_eq!(
            message(json!({"role": "function", "name": "f", "content": "x"})),
            Err(Unsupported("function_call"))
        );
        assert_eq!(
            message(
                json!({"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}})
            ),
            Err(Unsupported("function_call"))
        );
        assert_eq!(
            message(
                json!({"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]})
            ),
            Err(Unsupported("tool_calls"))
        );
        assert_eq!(
            message(
                json!({"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]})
            ),
            Err(BadField("tool_calls"))
        );
        assert_eq!(
            message(json!({"role": "tool", "content": "x"})),
            Err(BadField("tool_call_id"))
        );
        assert_eq!(
            message(json!({"role": "robot", "content": "x"})),
            Err(BadField("role"))
        );
        assert_eq!(
            message(json!({"role": "user", "content": 5})),
            Err(BadField("content"))
        );
        assert_eq!(
            message(json!({"role": "user", "content": [{"type": "image_url"}]})),
            Err(BadField("image_url"))
        );
        let mut out = b"kept".to_vec();
        for body in [&b"[1,2]"[..], b"\"s\"", b"{", b"{} {}", b"", b"null"] {
            assert_eq!(chat_to_responses(body, "m", &mut out), Err(NotJson));
        }
        assert_eq!(
            chat_to_responses(br#"{"messages":[],"stop":"x"}"#, "m", &mut out),
            Err(Unsupported("stop"))
        );
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    /// A whole Responses answer with reasoning, text and usage, as the API sends it.
    const RESPONSE: &str = r#"{"id":"resp_67ccd3a9da748190baa7f1570fe91ac604becb25c45c1d41","object":"response","created_at":1741476777,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-5-2025-08-07","output":[{"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"Thinking about it."},{"type":"summary_text","text":"Done."}]},{"type":"message","id":"msg_1","status":"completed","role":"assistant","content":[{"type":"output_text","text":"Hello","annotations":[]},{"type":"output_text","text":", \"w\u00f6rld\"\n!","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":"medium","summary":"auto"},"store":false,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":328,"input_tokens_details":{"cached_tokens":256},"output_tokens":52,"output_tokens_details":{"reasoning_tokens":40},"total_tokens":380},"user":null,"metadata":{}}"#;

    fn to_chat(body: &str) -> (Value, Usage) {
        let mut out = Vec::new();
        let usage = response_to_chat(
            body.as_bytes(),
            "chatcmpl-1",
            "o-resp",
            1_700_000_000,
            &mut out,
        )
        .expect("translates");
        (serde_json::from_slice(&out).expect("valid JSON"), usage)
    }

    #[test]
    fn whole_response_text_reasoning_and_usage() {
        let mut out = Vec::new();
        let usage = response_to_chat(
            RESPONSE.as_bytes(),
            "chatcmpl-1",
            "o-resp",
            1_700_000_000,
            &mut out,
        )
        .expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"o-resp","choices":[{"index":0,"message":{"role":"assistant","content":"Hello, \"wörld\"\n!","reasoning_content":"Thinking about it.\n\nDone."},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":328,"completion_tokens":52,"total_tokens":380,"prompt_tokens_details":{"cached_tokens":256},"completion_tokens_details":{"reasoning_tokens":40}}}"#
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 328,
                completion_tokens: 52,
                cached_tokens: 256,
                cache_write_tokens: 0,
                reasoning_tokens: 40
            }
        );
    }

    #[test]
    fn cache_writes_are_part_of_the_prompt() {
        let body = r#"{"object":"response","status":"completed","output":[],"usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":100,"cache_write_tokens":800},"output_tokens":5,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":1005}}"#;
        let (v, usage) = to_chat(body);
        assert_eq!(
            v["usage"],
            json!({"prompt_tokens": 1000, "completion_tokens": 5, "total_tokens": 1005,
                "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 800},
                "completion_tokens_details": {"reasoning_tokens": 0}})
        );
        assert_eq!((usage.cached_tokens, usage.cache_write_tokens), (100, 800));
    }

    #[test]
    fn whole_response_tool_calls_refusal_and_incomplete() {
        let calls = r#"{"object":"response","status":"completed","output":[{"type":"function_call","id":"fc_1","call_id":"call_1","name":"get_weather","arguments":"{\"city\":\"Paris\"}","status":"completed"},{"type":"function_call","id":"fc_2","call_id":"call_2","name":"get_time","arguments":"{}"}],"usage":{"input_tokens":10,"output_tokens":5,"total_tokens":15}}"#;
        let (v, usage) = to_chat(calls);
        assert_eq!(
            v["choices"][0],
            json!({"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]}, "logprobs": null, "finish_reason": "tool_calls"})
        );
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 5));

        let refusal = r#"{"status":"completed","output":[{"type":"message","role":"assistant","content":[{"type":"refusal","refusal":"I can't help with that."}]}]}"#;
        let (v, usage) = to_chat(refusal);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": null, "refusal": "I can't help with that."})
        );
        assert_eq!(usage, Usage::default());
        assert_eq!(v["usage"]["total_tokens"], 0);

        for (reason, finish) in [
            ("max_output_tokens", "length"),
            ("content_filter", "content_filter"),
            ("other", "stop"),
        ] {
            let body = format!(
                r#"{{"status":"incomplete","incomplete_details":{{"reason":"{reason}"}},"output":[{{"type":"reasoning","summary":[],"content":[{{"type":"reasoning_text","text":"hmm"}}]}}]}}"#
            );
            let (v, _) = to_chat(&body);
            assert_eq!(v["choices"][0]["finish_reason"], finish);
            assert_eq!(v["choices"][0]["message"]["content"], "");
            assert_eq!(v["choices"][0]["message"]["reasoning_content"], "hmm");
        }
    }

    #[test]
    fn malformed_responses_are_refused() {
        use TranslateError::{BadField, NotJson};
        let mut out = b"kept".to_vec();
        let mut t = |body: &str| response_to_chat(body.as_bytes(), "i", "m", 0, &mut out);
        assert_eq!(t("[]"), Err(NotJson));
        assert_eq!(t("{"), Err(NotJson));
        assert_eq!(
            t(r#"{"error":{"message":"x","type":"invalid_request_error"}}"#),
            Err(BadField("output"))
        );
        assert_eq!(
            t(r#"{"object":"chat.completion","output":[]}"#),
            Err(BadField("object"))
        );
        assert_eq!(
            t(r#"{"status":"failed","error":{"code":"server_error","message":"x"},"output":[]}"#),
            Err(BadField("status"))
        );
        assert_eq!(
            t(r#"{"output":[{"type":"function_call","name":"f","arguments":"{}"}]}"#),
            Err(BadField("output"))
        );
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    /// A streamed answer: reasoning summary, text, then a function call whose arguments come in
    /// pieces, as the API sends it.
    const STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"model\":\"gpt-5\",\"output\":[],\"usage\":null}}\n\n",
        "event: response.in_progress\n",
        "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"output\":[],\"usage\":null}}\n\n",
        "event: response.output_item.added\n",
        "data: {\"type\":\"response.output_item.added\",\"sequence_number\":2,\"output_index\":0,\"item\":{\"id\":\"rs_1\",\"type\":\"reasoning\",\"summary\":[]}}\n\n",
        "event: response.reasoning_summary_part.added\n",
        "data: {\"type\":\"response.reasoning_summary_part.added\",\"sequence_number\":3,\"item_id\":\"rs_1\",\"output_index\":0,\"summary_index\":0,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}\n\n",
        "event: response.reasoning_summary_text.delta\n",
        "data: {\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":4,\"item_id\":\"rs_1\",\"output_index\":0,\"summary_index\":0,\"delta\":\"Think\"}\n\n",
        "event: response.reasoning_summary_part.added\n",
        "data: {\"type\":\"response.reasoning_summary_part.added\",\"sequence_number\":5,\"item_id\":\"rs_1\",\"output_index\":0,\"summary_index\":1,\"part\":{\"type\":\"summary_text\",\"text\":\"\"}}\n\n",
        "event: response.reasoning_summary_text.delta\n",
        "data: {\"type\":\"response.reasoning_summary_text.delta\",\"sequence_number\":6,\"item_id\":\"rs_1\",\"output_index\":0,\"summary_index\":1,\"delta\":\"More\"}\n\n",
        "event: response.output_item.added\n",
        "data: {\"type\":\"response.output_item.added\",\"sequence_number\":7,\"output_index\":1,\"item\":{\"id\":\"msg_1\",\"type\":\"message\",\"status\":\"in_progress\",\"role\":\"assistant\",\"content\":[]}}\n\n",
        "event: response.content_part.added\n",
        "data: {\"type\":\"response.content_part.added\",\"sequence_number\":8,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"part\":{\"type\":\"output_text\",\"text\":\"\",\"annotations\":[]}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":9,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\"Hello\"}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":10,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"delta\":\", \\\"w\\u00f6rld\\\"\\n!\"}\n\n",
        "event: response.output_text.done\n",
        "data: {\"type\":\"response.output_text.done\",\"sequence_number\":11,\"item_id\":\"msg_1\",\"output_index\":1,\"content_index\":0,\"text\":\"Hello, \\\"w\\u00f6rld\\\"\\n!\"}\n\n",
        "event: response.output_item.added\n",
        "data: {\"type\":\"response.output_item.added\",\"sequence_number\":12,\"output_index\":2,\"item\":{\"id\":\"fc_1\",\"type\":\"function_call\",\"status\":\"in_progress\",\"arguments\":\"\",\"call_id\":\"call_1\",\"name\":\"get_weather\"}}\n\n",
        "event: response.function_call_arguments.delta\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":13,\"item_id\":\"fc_1\",\"output_index\":2,\"delta\":\"{\\\"city\\\":\"}\n\n",
        "event: response.function_call_arguments.delta\n",
        "data: {\"type\":\"response.function_call_arguments.delta\",\"sequence_number\":14,\"item_id\":\"fc_1\",\"output_index\":2,\"delta\":\"\\\"Paris\\\"}\"}\n\n",
        "event: response.function_call_arguments.done\n",
        "data: {\"type\":\"response.function_call_arguments.done\",\"sequence_number\":15,\"item_id\":\"fc_1\",\"output_index\":2,\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}\n\n",
        "event: response.output_item.done\n",
        "data: {\"type\":\"response.output_item.done\",\"sequence_number\":16,\"output_index\":2,\"item\":{\"id\":\"fc_1\",\"type\":\"function_call\",\"status\":\"completed\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\",\"call_id\":\"call_1\",\"name\":\"get_weather\"}}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"sequence_number\":17,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":5},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":4},\"total_tokens\":48}}}\n\n",
    );

    const HEAD: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"o-resp","choices":"#;

    fn expected(include_usage: bool) -> String {
        let usage = r#"[],"usage":{"prompt_tokens":37,"completion_tokens":11,"total_tokens":48,"prompt_tokens_details":{"cached_tokens":5},"completion_tokens_details":{"reasoning_tokens":4}}"#;
        testing::expected_chunks(
            HEAD,
            &[
                r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"reasoning_content":"Think"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"reasoning_content":"\n\n"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"reasoning_content":"More"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":", \"wörld\"\n!"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]"#,
            ],
            include_usage.then_some(usage),
        )
    }

    const STREAM_USAGE: Usage = Usage {
        prompt_tokens: 37,
        completion_tokens: 11,
        cached_tokens: 5,
        cache_write_tokens: 0,
        reasoning_tokens: 4,
    };

    fn translate_in_pieces(
        stream: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Vec<u8>, Option<Usage>) {
        testing::translate_in_pieces(
            StreamToChat::new("chatcmpl-1", "o-resp", 1_700_000_000, include_usage),
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
            assert_eq!(usage, Some(STREAM_USAGE));
            assert_well_formed(&out);
        }
        // CRLF line ends, and one byte at a time.
        let crlf = STREAM.replace('\n', "\r\n");
        let cuts: Vec<usize> = (0..crlf.len()).collect();
        let (out, _) = translate_in_pieces(crlf.as_bytes(), &cuts, true);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        // Without `event:` lines (the type is read from the data).
        let bare: String = STREAM
            .lines()
            .filter(|l| !l.starts_with("event:"))
            .map(|l| format!("{l}\n"))
            .collect();
        let (out, _) = translate_in_pieces(bare.as_bytes(), &[], false);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(false));
    }

    #[test]
    fn stream_arguments_without_deltas_and_unannounced_calls() {
        // Arguments only in `.done`, a second call only in `output_item.done`; a refusal.
        let stream = concat!(
            "data: {\"type\":\"response.created\",\"response\":{}}\n\n",
            "data: {\"type\":\"response.refusal.delta\",\"delta\":\"No.\"}\n\n",
            "data: {\"type\":\"response.output_item.added\",\"output_index\":0,\"item\":{\"id\":\"fc_1\",\"type\":\"function_call\",\"call_id\":\"call_a\",\"name\":\"f\",\"arguments\":\"\"}}\n\n",
            "data: {\"type\":\"response.function_call_arguments.done\",\"item_id\":\"fc_1\",\"output_index\":0,\"arguments\":\"{\\\"x\\\":1}\"}\n\n",
            "data: {\"type\":\"response.output_item.done\",\"output_index\":0,\"item\":{\"id\":\"fc_1\",\"type\":\"function_call\",\"call_id\":\"call_a\",\"name\":\"f\",\"arguments\":\"{\\\"x\\\":1}\"}}\n\n",
            "data: {\"type\":\"response.output_item.done\",\"output_index\":1,\"item\":{\"id\":\"fc_2\",\"type\":\"function_call\",\"call_id\":\"call_b\",\"name\":\"g\",\"arguments\":\"{}\"}}\n\n",
            "data: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\"usage\":{\"input_tokens\":3,\"output_tokens\":2}}}\n\n",
        );
        let (out, usage) = translate_in_pieces(stream.as_bytes(), &[], false);
        let out = String::from_utf8(out).expect("UTF-8");
        let deltas: Vec<Value> = out
            .split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str::<Value>(d).expect("JSON")["choices"][0].clone())
            .collect();
        let d = |i: usize| deltas[i]["delta"].clone();
        assert_eq!(d(1), json!({"refusal": "No."}));
        assert_eq!(
            d(2),
            json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}}]})
        );
        assert_eq!(
            d(3),
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"x\":1}"}}]})
        );
        assert_eq!(
            d(4),
            json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": ""}}]})
        );
        assert_eq!(
            d(5),
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        assert_eq!(deltas[6]["finish_reason"], "tool_calls");
        assert_eq!(deltas.len(), 7);
        assert_eq!(
            usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
            Some((3, 2))
        );
    }

    #[test]
    fn stream_incomplete_failed_error_and_truncation() {
        let incomplete = "data: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\ndata: {\"type\":\"response.incomplete\",\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":3,\"output_tokens\":16}}}\n\n";
        let (out, usage) = translate_in_pieces(incomplete.as_bytes(), &[], true);
        let text = String::from_utf8(out.clone()).expect("UTF-8");
        assert!(text.contains(r#""finish_reason":"length""#), "{text}");
        assert!(
            text.contains(r#""usage":{"prompt_tokens":3,"completion_tokens":16,"total_tokens":19"#),
            "{text}"
        );
        assert_well_formed(&out);
        assert_eq!(usage.map(|u| u.completion_tokens), Some(16));

        let failed = "data: {\"type\":\"response.created\",\"response\":{}}\n\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\",\"error\":{\"code\":\"server_error\",\"message\":\"The model failed.\"},\"usage\":null}}\n\ndata: {\"type\":\"response.completed\",\"response\":{}}\n\n";
        let (out, usage) = translate_in_pieces(failed.as_bytes(), &[], true);
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(
            text.ends_with("data: {\"error\":{\"message\":\"The model failed.\",\"type\":\"server_error\",\"param\":null,\"code\":\"server_error\"}}\n\ndata: [DONE]\n\n"),
            "{text}"
        );
        assert_eq!(text.matches("[DONE]").count(), 1);
        assert_eq!(usage, None);

        let error = "data: {\"type\":\"error\",\"code\":\"rate_limit_exceeded\",\"message\":\"Slow down.\",\"param\":null,\"sequence_number\":2}\n\n";
        let (out, _) = translate_in_pieces(error.as_bytes(), &[], false);
        assert_eq!(
            String::from_utf8(out).expect("UTF-8"),
            "data: {\"error\":{\"message\":\"Slow down.\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\ndata: [DONE]\n\n"
        );

        // Cut off before response.completed: an error event, then [DONE].
        let cut = STREAM.find("event: response.completed").expect("present");
        let (out, usage) = translate_in_pieces(&STREAM.as_bytes()[..cut], &[], true);
        let text = String::from_utf8(out).expect("UTF-8");
        assert!(text.ends_with("before response.completed\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n"), "{text}");
        assert_eq!(usage, None);
        // The last event without its blank line still counts.
        let (out, _) = translate_in_pieces(STREAM.trim_end().as_bytes(), &[], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));
        // Nothing at all.
        let (out, usage) = translate_in_pieces(b"", &[], true);
        assert_well_formed(&out);
        assert_eq!(usage, None);
    }

    #[test]
    fn budget_error_event_is_both_shapes() {
        let mut out = b"kept".to_vec();
        error_event("over \"budget\"", &mut out);
        let text = String::from_utf8(out).expect("UTF-8");
        let event = text.strip_prefix("kept").expect("appended");
        let data = event
            .strip_prefix("event: error\ndata: ")
            .and_then(|d| d.strip_suffix("\n\n"))
            .expect("one event");
        assert_eq!(
            serde_json::from_str::<Value>(data).expect("JSON"),
            json!({"type": "error", "code": "budget_exceeded", "message": "over \"budget\"", "param": null,
                "error": {"message": "over \"budget\"", "type": "insufficient_quota", "param": null, "code": "budget_exceeded"}})
        );
    }

    #[test]
    fn stream_tool_calls_are_bounded() {
        let mut stream = String::new();
        for i in 0..=STREAM_TOOL_CALLS_MAX {
            stream.push_str(&format!(
                "data: {{\"type\":\"response.output_item.added\",\"output_index\":{i},\"item\":{{\"id\":\"fc_{i}\",\"type\":\"function_call\",\"call_id\":\"c{i}\",\"name\":\"f\"}}}}\n\n"
            ));
        }
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[], false);
        let text = String::from_utf8(out).expect("UTF-8");
        assert_eq!(
            text.matches("\"type\":\"function\"").count(),
            STREAM_TOOL_CALLS_MAX
        );
        assert!(text.ends_with("than the gateway follows\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\ndata: [DONE]\n\n"));
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
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

        /// No panic on bytes rich in the stream's syntax, split independence there too, and
        /// the output is always well formed.
        #[test]
        fn stream_never_panics(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n:data: {}\"type\"response.completed.function_call_arguments.delta item_id output_index 0 error".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = translate_in_pieces(&stream, &[], true);
            assert_well_formed(&whole.0);
            prop_assert_eq!(translate_in_pieces(&stream, &cuts, true), whole);
        }

        #[test]
        fn stream_never_panics_on_any_bytes(stream in prop::collection::vec(any::<u8>(), 0..512)) {
            let (out, _) = translate_in_pieces(&stream, &[], false);
            assert_well_formed(&out);
        }

        /// The one-shot functions never panic, and their output is JSON when they succeed.
        #[test]
        fn one_shot_never_panic(body in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut out = Vec::new();
            if chat_to_responses(&body, "m", &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            if response_to_chat(&body, "i", "m", 0, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
        }
    }
}
