//! OpenAI chat clients in front of AWS Bedrock's Converse API: `POST /model/{modelId}/converse`
//! for a whole answer, `POST /model/{modelId}/converse-stream` for a stream in AWS's binary
//! event stream ([`super::eventstream`]). Requests are signed with SigV4 ([`super::sigv4`]).
//!
//! - [`path`]: the model id, percent-encoded, in the operation's path.
//! - [`chat_to_converse`]: an OpenAI chat completion request becomes a Converse request (the
//!   same body for both operations; the model id is in the path, not the body).
//! - [`converse_to_chat`]: a Converse response becomes a `chat.completion`.
//! - [`error_to_openai`]: an AWS error (its type from `x-amzn-ErrorType` or the body's
//!   `__type`) becomes an OpenAI error body.
//! - [`StreamToChat`]: the ConverseStream event stream becomes `chat.completion.chunk` events,
//!   fed in pieces of any size; the output does not depend on where the pieces were cut.
//!
//! Everything appends to an `out` buffer the caller owns; nothing touches a socket or the
//! clock (the caller passes `created`).
//!
//! # Mapping
//!
//! | OpenAI | Converse |
//! |---|---|
//! | `system` and `developer` messages (anywhere), string or `text` parts | `system: [{text}]`, one block per non-empty text |
//! | `user` / `assistant` messages, string or `text` parts | `messages: [{role, content: [{text}]}]`; consecutive messages of one role merged into one turn; empty texts left out |
//! | `image_url` part with a `data:image/{png,jpeg,gif,webp};base64,` URL | `{image: {format, source: {bytes}}}` (the base64 text as is) |
//! | `image_url` with an `http(s)` URL (Converse takes no URLs), `input_audio`, `file` parts | refused: `Unsupported("image_url")`, `("audio")`, `("file")` |
//! | assistant `tool_calls[{id, function: {name, arguments}}]` | `{toolUse: {toolUseId: id, name, input}}` blocks after the turn's text, `input` parsed from `arguments` (not a JSON object: `BadField("tool_calls")`) |
//! | `tool` messages `{tool_call_id, content}` | a `user` turn of `{toolResult: {toolUseId: tool_call_id, content: [{text}]}}` blocks; consecutive tool messages (and a user message after them) share the turn. Never user text: a model that sees its result as text calls the tool again |
//! | `tools[{type: "function", function: {name, description, parameters}}]` | `toolConfig.tools[{toolSpec: {name, description, inputSchema: {json: parameters}}}]` (no `parameters`: an empty object schema) |
//! | `tool_choice` `auto` / `required` / `{function: {name}}` | `toolConfig.toolChoice` `{auto: {}}` / `{any: {}}` / `{tool: {name}}` |
//! | `tool_choice: "none"` | Converse has no "none": the tools are left out (a model cannot call a tool it is not shown, which is what "none" asks); when the history holds tool calls or results (Converse then requires `toolConfig`), refused: `Unsupported("tool_choice")` |
//! | `max_completion_tokens`, else `max_tokens` | `inferenceConfig.maxTokens` |
//! | `temperature`, `top_p`, `stop` (string or array) | `inferenceConfig.temperature`, `.topP`, `.stopSequences` |
//! | `stream` | the operation (`converse-stream`), not the body; `stream_options` only decides [`StreamToChat`]'s usage chunk |
//! | `n` > 1, `logprobs`, `top_logprobs`, `response_format` other than text, `audio`, non-text `modalities`, `functions`, `function_call`, `function` messages, `parallel_tool_calls: false`, `reasoning_effort`, `web_search_options` | refused: [`TranslateError::Unsupported`] |
//! | `seed`, `presence_penalty`, `frequency_penalty`, `logit_bias`, `user`, `metadata`, `store`, `service_tier`, `prediction`, `stream_options`, `tools[].function.strict`, message `name`s, ... | left out (no counterpart, no effect on the shape of the answer) |
//!
//! Converse's own rules, checked here so the client gets a clear 400 rather than the
//! upstream's: the first turn must be the user's (`BadField("first_turn")`), and tool calls or
//! results in the history need `tools` in the request (`BadField("tools")`: Converse refuses
//! `toolUse`/`toolResult` blocks without a `toolConfig`). That a tool result answers a call of
//! the turn before is left to the upstream (its `ValidationException` comes back as a 400).
//! `additionalModelRequestFields` (model-specific knobs such as Claude's `top_k` or
//! `thinking`) has no OpenAI counterpart and is not written.
//!
//! Responses: the `text` blocks are concatenated into `content` (`null` when there is none and
//! the answer calls tools), `reasoningContent.reasoningText.text` into `reasoning_content`
//! (redacted reasoning is left out), `toolUse` blocks become `tool_calls` (`arguments` the
//! `input` serialized). Stop reasons: `end_turn`, `stop_sequence` (and anything unknown) →
//! `stop`; `max_tokens`, `model_context_window_exceeded` → `length`; `tool_use` →
//! `tool_calls`; `guardrail_intervened`, `content_filtered` → `content_filter`.
//!
//! Usage: `prompt_tokens` is `inputTokens` plus `cacheReadInputTokens` plus
//! `cacheWriteInputTokens` (Bedrock, like Anthropic, leaves the cached tokens out of
//! `inputTokens`; OpenAI counts them in), `cacheReadInputTokens` is also
//! `prompt_tokens_details.cached_tokens` (and [`Usage::cached_tokens`]), `cacheWriteInputTokens`
//! is [`Usage::cache_write_tokens`], `outputTokens` is `completion_tokens`. Bedrock does not
//! count reasoning tokens apart.
//!
//! Streams: `messageStart` gives the role chunk; `contentBlockDelta` text and reasoning deltas
//! give content and `reasoning_content` chunks; a `contentBlockStart` of a `toolUse` gives the
//! call's first chunk (`index`, `id`, `type`, `function.name`, `arguments: ""`) and its
//! `toolUse.input` deltas give `arguments` pieces with the same `index`; `messageStop` gives the
//! `finish_reason` chunk; `metadata` (which follows it) gives the usage chunk and `[DONE]`. An
//! exception event (`:message-type: exception`, or a protocol `error`), a framing error (bad
//! CRC or lengths: the stream cannot go on) or a body that ends before `messageStop` becomes an
//! OpenAI error event, then `[DONE]`.

use serde_json::{Map, Value};

use super::eventstream::{Decoder, FrameError, Message};
use super::{copy_numbers, present, write_object, TranslateError};
use crate::http::write_decimal;
use crate::llm::json::write_str;
use crate::llm::Usage;

/// The longest model id (or ARN) [`path`] takes, bytes: Bedrock's own limit on `modelId`.
pub const MODEL_ID_BYTES_MAX: usize = 2048;
/// The most tool calls one streamed answer may start; past it the stream ends with an error.
pub const STREAM_TOOL_CALLS_MAX: usize = 256;

// ---------------------------------------------------------------------------------------------
// Paths

/// Writes into `out` (cleared first) `/model/{model_id}/converse`, or `.../converse-stream`
/// when `stream`, the model id percent-encoded: every byte outside RFC 3986's unreserved set
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so the `:` of
/// `anthropic.claude-3-5-sonnet-20240620-v1:0` is `%3A` and the `/` of an ARN `%2F`. `Err`: a
/// static, JSON-safe reason for a 400 (`out` untouched).
pub fn path(model_id: &str, stream: bool, out: &mut String) -> Result<(), &'static str> {
    if model_id.is_empty() {
        return Err("the model must name a Bedrock model id, inference profile or ARN");
    }
    if model_id.len() > MODEL_ID_BYTES_MAX {
        return Err("the Bedrock model id is longer than 2048 bytes");
    }
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.clear();
    out.push_str("/model/");
    for b in model_id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out.push_str(if stream {
        "/converse-stream"
    } else {
        "/converse"
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Translate an OpenAI chat completion request into a Converse request body (the model id goes
/// in the [`path`]), appended to `out` (nothing is appended on error).
pub fn chat_to_converse(openai_body: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(openai_body) else {
        return Err(TranslateError::NotJson);
    };
    refuse_unsupported(&body)?;
    let conversation = translate_messages(body.get("messages"))?;

    let mut req = Map::new();
    req.insert("messages".into(), Value::Array(conversation.turns));
    if !conversation.system.is_empty() {
        req.insert("system".into(), Value::Array(conversation.system));
    }

    let mut inference = Map::new();
    match (
        present(&body, "max_completion_tokens"),
        present(&body, "max_tokens"),
    ) {
        (Some(v), _) | (None, Some(v)) => {
            let n = v.as_u64().ok_or(TranslateError::BadField("max_tokens"))?;
            inference.insert("maxTokens".into(), Value::from(n));
        }
        (None, None) => {}
    }
    let mut knobs = Map::new();
    copy_numbers(&body, &["temperature", "top_p"], &mut knobs)?;
    if let Some(t) = knobs.remove("temperature") {
        inference.insert("temperature".into(), t);
    }
    if let Some(p) = knobs.remove("top_p") {
        inference.insert("topP".into(), p);
    }
    match present(&body, "stop") {
        None => {}
        Some(Value::String(s)) => {
            inference.insert(
                "stopSequences".into(),
                Value::Array(vec![Value::from(s.as_str())]),
            );
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            inference.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(TranslateError::BadField("stop")),
    }
    if !inference.is_empty() {
        req.insert("inferenceConfig".into(), Value::Object(inference));
    }
    match present(&body, "stream") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return Err(TranslateError::BadField("stream")),
    }

    if let Some(config) = tool_config(&body, conversation.has_tool_blocks)? {
        req.insert("toolConfig".into(), Value::Object(config));
    } else if conversation.has_tool_blocks {
        return Err(TranslateError::BadField("tools"));
    }
    write_object(req, out)
}

/// Refuse the features a Converse request cannot express.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    for key in [
        "functions",
        "function_call",
        "reasoning_effort",
        "web_search_options",
    ] {
        if present(body, key).is_some() {
            return Err(TranslateError::Unsupported(key));
        }
    }
    match present(body, "n") {
        None => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(_) => return Err(TranslateError::Unsupported("n")),
    }
    match present(body, "logprobs") {
        None | Some(Value::Bool(false)) => {}
        Some(_) => return Err(TranslateError::Unsupported("logprobs")),
    }
    if present(body, "top_logprobs").is_some() {
        return Err(TranslateError::Unsupported("logprobs"));
    }
    if let Some(format) = present(body, "response_format") {
        if format.get("type").and_then(Value::as_str) != Some("text") {
            return Err(TranslateError::Unsupported("response_format"));
        }
    }
    if present(body, "audio").is_some() {
        return Err(TranslateError::Unsupported("audio"));
    }
    if let Some(modalities) = present(body, "modalities") {
        let text_only = modalities
            .as_array()
            .is_some_and(|m| m.iter().all(|x| x.as_str() == Some("text")));
        if !text_only {
            return Err(TranslateError::Unsupported("audio"));
        }
    }
    match present(body, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => {}
        Some(_) => return Err(TranslateError::Unsupported("parallel_tool_calls")),
    }
    Ok(())
}

/// `toolConfig` for the request's `tools` and `tool_choice`; `None` when there are no tools
/// (or `tool_choice` is `"none"`, see the module docs).
fn tool_config(
    body: &Map<String, Value>,
    has_tool_blocks: bool,
) -> Result<Option<Map<String, Value>>, TranslateError> {
    let tools = match present(body, "tools") {
        None => None,
        Some(Value::Array(tools)) if tools.is_empty() => None,
        Some(Value::Array(tools)) => Some(tools),
        Some(_) => return Err(TranslateError::BadField("tools")),
    };
    let choice = match present(body, "tool_choice") {
        None => None,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => Some(object("auto", Value::Object(Map::new()))),
            "required" => Some(object("any", Value::Object(Map::new()))),
            "none" => {
                if has_tool_blocks {
                    return Err(TranslateError::Unsupported("tool_choice"));
                }
                return Ok(None);
            }
            _ => return Err(TranslateError::BadField("tool_choice")),
        },
        Some(Value::Object(c)) => {
            let name = c
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| c.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or(TranslateError::BadField("tool_choice"))?;
            Some(object("tool", object("name", Value::from(name))))
        }
        Some(_) => return Err(TranslateError::BadField("tool_choice")),
    };
    let Some(tools) = tools else {
        // A choice that needs tools, without tools, is the client's error.
        return match choice {
            Some(Value::Object(c)) if c.contains_key("auto") => Ok(None),
            None => Ok(None),
            Some(_) => Err(TranslateError::BadField("tool_choice")),
        };
    };
    let mut specs = Vec::with_capacity(tools.len());
    for tool in tools {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(_) => return Err(TranslateError::Unsupported("tools")),
            None => return Err(TranslateError::BadField("tools")),
        }
        let function = tool
            .get("function")
            .and_then(Value::as_object)
            .ok_or(TranslateError::BadField("tools"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
            .ok_or(TranslateError::BadField("tools"))?;
        let mut spec = Map::new();
        spec.insert("name".into(), Value::from(name));
        match function.get("description") {
            None | Some(Value::Null) => {}
            Some(Value::String(d)) if d.is_empty() => {}
            Some(Value::String(d)) => {
                spec.insert("description".into(), Value::from(d.as_str()));
            }
            Some(_) => return Err(TranslateError::BadField("tools")),
        }
        let schema = match function.get("parameters") {
            None | Some(Value::Null) => {
                let mut s = Map::new();
                s.insert("type".into(), Value::from("object"));
                s.insert("properties".into(), Value::Object(Map::new()));
                Value::Object(s)
            }
            Some(Value::Object(p)) => Value::Object(p.clone()),
            Some(_) => return Err(TranslateError::BadField("tools")),
        };
        spec.insert("inputSchema".into(), object("json", schema));
        specs.push(object("toolSpec", Value::Object(spec)));
    }
    let mut config = Map::new();
    config.insert("tools".into(), Value::Array(specs));
    if let Some(choice) = choice {
        config.insert("toolChoice".into(), choice);
    }
    Ok(Some(config))
}

/// `{key: value}`.
fn object(key: &str, value: Value) -> Value {
    let mut m = Map::new();
    m.insert(key.into(), value);
    Value::Object(m)
}

/// The translated `messages`.
struct Conversation {
    system: Vec<Value>,
    turns: Vec<Value>,
    /// Some turn holds a `toolUse` or `toolResult` block.
    has_tool_blocks: bool,
}

/// The system blocks and the conversation turns of an OpenAI `messages` array.
fn translate_messages(messages: Option<&Value>) -> Result<Conversation, TranslateError> {
    let Some(Value::Array(messages)) = messages else {
        return Err(TranslateError::BadField("messages"));
    };
    let mut conversation = Conversation {
        system: Vec::new(),
        turns: Vec::new(),
        has_tool_blocks: false,
    };
    let mut last_role: Option<&'static str> = None;
    for message in messages {
        let Value::Object(message) = message else {
            return Err(TranslateError::BadField("messages"));
        };
        let mut blocks = Vec::new();
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                push_text_parts(message.get("content"), &mut conversation.system)?;
                continue;
            }
            Some("user") => {
                push_user_parts(message.get("content"), &mut blocks)?;
                "user"
            }
            Some("assistant") => {
                if present(message, "function_call").is_some() {
                    return Err(TranslateError::Unsupported("function_call"));
                }
                push_text_parts(message.get("content"), &mut blocks)?;
                if let Some(calls) = present(message, "tool_calls") {
                    let texts = blocks.len();
                    push_tool_uses(calls, &mut blocks)?;
                    conversation.has_tool_blocks |= blocks.len() > texts;
                }
                "assistant"
            }
            Some("tool") => {
                blocks.push(tool_result(message)?);
                conversation.has_tool_blocks = true;
                "user"
            }
            Some("function") => return Err(TranslateError::Unsupported("functions")),
            _ => return Err(TranslateError::BadField("role")),
        };
        if blocks.is_empty() {
            // Converse refuses empty text blocks and turns without content.
            continue;
        }
        match conversation
            .turns
            .last_mut()
            .and_then(|t| t.get_mut("content"))
        {
            Some(Value::Array(content)) if last_role == Some(role) => content.extend(blocks),
            _ => {
                let mut turn = Map::new();
                turn.insert("role".into(), Value::from(role));
                turn.insert("content".into(), Value::Array(blocks));
                conversation.turns.push(Value::Object(turn));
                last_role = Some(role);
            }
        }
    }
    match conversation
        .turns
        .first()
        .and_then(|t| t.get("role"))
        .and_then(Value::as_str)
    {
        None => Err(TranslateError::BadField("messages")),
        Some("user") => Ok(conversation),
        Some(_) => Err(TranslateError::BadField("first_turn")),
    }
}

/// `{text}` blocks for the non-empty texts of a `content`: a string, an array of `text` parts,
/// or `null`.
fn push_text_parts(content: Option<&Value>, blocks: &mut Vec<Value>) -> Result<(), TranslateError> {
    match content {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => push_text(s, blocks),
        Some(Value::Array(parts)) => {
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => match part.get("text") {
                        Some(Value::String(s)) => push_text(s, blocks),
                        _ => return Err(TranslateError::BadField("content")),
                    },
                    Some("image_url") => return Err(TranslateError::Unsupported("image_url")),
                    Some("input_audio") => return Err(TranslateError::Unsupported("audio")),
                    Some("file") => return Err(TranslateError::Unsupported("file")),
                    _ => return Err(TranslateError::BadField("content")),
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("content")),
    }
    Ok(())
}

fn push_text(text: &str, blocks: &mut Vec<Value>) {
    if !text.is_empty() {
        blocks.push(object("text", Value::from(text)));
    }
}

/// A user message's `content`: texts and images.
fn push_user_parts(content: Option<&Value>, blocks: &mut Vec<Value>) -> Result<(), TranslateError> {
    let Some(Value::Array(parts)) = content else {
        return push_text_parts(content, blocks);
    };
    for part in parts {
        if part.get("type").and_then(Value::as_str) == Some("image_url") {
            blocks.push(image_block(part)?);
        } else {
            push_text_parts(Some(&Value::Array(vec![part.clone()])), blocks)?;
        }
    }
    Ok(())
}

/// An `image_url` part with a base64 `data:` URL as a Converse image block.
fn image_block(part: &Value) -> Result<Value, TranslateError> {
    let url = match part.get("image_url") {
        Some(Value::String(u)) => u.as_str(),
        Some(Value::Object(o)) => o
            .get("url")
            .and_then(Value::as_str)
            .ok_or(TranslateError::BadField("image_url"))?,
        _ => return Err(TranslateError::BadField("image_url")),
    };
    // Converse takes image bytes only: a URL to fetch is refused, never fetched here.
    let Some(rest) = url.strip_prefix("data:") else {
        return Err(TranslateError::Unsupported("image_url"));
    };
    let Some((media, data)) = rest.split_once(";base64,") else {
        return Err(TranslateError::Unsupported("image_url"));
    };
    let format = match media.to_ascii_lowercase().as_str() {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return Err(TranslateError::Unsupported("image_url")),
    };
    let base64 = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
    if data.is_empty() || !data.bytes().all(base64) {
        return Err(TranslateError::BadField("image_url"));
    }
    let mut image = Map::new();
    image.insert("format".into(), Value::from(format));
    image.insert("source".into(), object("bytes", Value::from(data)));
    Ok(object("image", Value::Object(image)))
}

/// An assistant's `tool_calls` as `toolUse` blocks.
fn push_tool_uses(calls: &Value, blocks: &mut Vec<Value>) -> Result<(), TranslateError> {
    let Value::Array(calls) = calls else {
        return Err(TranslateError::BadField("tool_calls"));
    };
    for call in calls {
        if call
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function")
            != "function"
        {
            return Err(TranslateError::Unsupported("tool_calls"));
        }
        let id = call
            .get("id")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TranslateError::BadField("tool_calls"))?;
        let function = call
            .get("function")
            .ok_or(TranslateError::BadField("tool_calls"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TranslateError::BadField("tool_calls"))?;
        let input = match function.get("arguments") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(Value::String(a)) if a.trim().is_empty() => Value::Object(Map::new()),
            Some(Value::String(a)) => match serde_json::from_str::<Value>(a) {
                Ok(v @ Value::Object(_)) => v,
                _ => return Err(TranslateError::BadField("tool_calls")),
            },
            Some(_) => return Err(TranslateError::BadField("tool_calls")),
        };
        let mut tool_use = Map::new();
        tool_use.insert("toolUseId".into(), Value::from(id));
        tool_use.insert("name".into(), Value::from(name));
        tool_use.insert("input".into(), input);
        blocks.push(object("toolUse", Value::Object(tool_use)));
    }
    Ok(())
}

/// A `tool` message as a `toolResult` block.
fn tool_result(message: &Map<String, Value>) -> Result<Value, TranslateError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(TranslateError::BadField("tool_call_id"))?;
    let mut content = Vec::new();
    push_text_parts(message.get("content"), &mut content)?;
    let mut result = Map::new();
    result.insert("toolUseId".into(), Value::from(id));
    result.insert("content".into(), Value::Array(content));
    Ok(object("toolResult", Value::Object(result)))
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Bedrock's token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
}

impl Counts {
    fn read(usage: &Value) -> Counts {
        let get = |key| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        Counts {
            input: get("inputTokens"),
            output: get("outputTokens"),
            cache_read: get("cacheReadInputTokens"),
            cache_write: get("cacheWriteInputTokens"),
        }
    }

    fn usage(self) -> Usage {
        Usage {
            prompt_tokens: self
                .input
                .saturating_add(self.cache_read)
                .saturating_add(self.cache_write),
            completion_tokens: self.output,
            cached_tokens: self.cache_read,
            cache_write_tokens: self.cache_write,
            reasoning_tokens: 0,
        }
    }
}

/// `"usage":{...}` in OpenAI's shape.
fn push_usage(usage: &Usage, out: &mut Vec<u8>) {
    out.extend_from_slice(b"\"usage\":{\"prompt_tokens\":");
    write_decimal(out, usage.prompt_tokens);
    out.extend_from_slice(b",\"completion_tokens\":");
    write_decimal(out, usage.completion_tokens);
    out.extend_from_slice(b",\"total_tokens\":");
    write_decimal(
        out,
        usage.prompt_tokens.saturating_add(usage.completion_tokens),
    );
    out.extend_from_slice(b",\"prompt_tokens_details\":{\"cached_tokens\":");
    write_decimal(out, usage.cached_tokens);
    out.extend_from_slice(b"}}");
}

/// OpenAI's `finish_reason` for a Converse `stopReason`.
fn finish_reason(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens" | "model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("guardrail_intervened" | "content_filtered") => "content_filter",
        _ => "stop",
    }
}

/// Translate a Converse response into an OpenAI `chat.completion` with `id`, `model` and
/// `created` (unix seconds), appended to `out` (nothing is appended on error); returns the
/// usage. A body without `output` (an error body) is [`TranslateError::BadField`]`("output")`:
/// see [`error_to_openai`].
pub fn converse_to_chat(
    body: &[u8],
    id: &str,
    model: &str,
    created: u64,
    out: &mut Vec<u8>,
) -> Result<Usage, TranslateError> {
    let Ok(Value::Object(resp)) = serde_json::from_slice::<Value>(body) else {
        return Err(TranslateError::NotJson);
    };
    let Some(output) = resp.get("output").and_then(Value::as_object) else {
        return Err(TranslateError::BadField("output"));
    };
    let blocks = match output.get("message").and_then(|m| m.get("content")) {
        None | Some(Value::Null) => &[][..],
        Some(Value::Array(blocks)) => blocks.as_slice(),
        Some(_) => return Err(TranslateError::BadField("content")),
    };
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls: Vec<(&str, &str, String)> = Vec::new();
    for block in blocks {
        if let Some(t) = block.get("text") {
            text.push_str(t.as_str().ok_or(TranslateError::BadField("content"))?);
        } else if let Some(r) = block.get("reasoningContent") {
            if let Some(t) = r
                .get("reasoningText")
                .and_then(|t| t.get("text"))
                .and_then(Value::as_str)
            {
                reasoning.push_str(t);
            }
        } else if let Some(u) = block.get("toolUse") {
            let field = |k| u.get(k).and_then(Value::as_str);
            let (Some(call_id), Some(name)) = (field("toolUseId"), field("name")) else {
                return Err(TranslateError::BadField("toolUse"));
            };
            let input = u.get("input").cloned().unwrap_or(Value::Object(Map::new()));
            calls.push((call_id, name, input.to_string()));
        }
    }
    let counts = resp.get("usage").map(Counts::read).unwrap_or_default();
    let usage = counts.usage();

    out.extend_from_slice(b"{\"id\":");
    write_str(out, id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    write_decimal(out, created);
    out.extend_from_slice(b",\"model\":");
    write_str(out, model);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    if text.is_empty() && !calls.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, &text);
    }
    if !reasoning.is_empty() {
        out.extend_from_slice(b",\"reasoning_content\":");
        write_str(out, &reasoning);
    }
    if !calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        for (i, (call_id, name, arguments)) in calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            write_str(out, call_id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            write_str(out, name);
            out.extend_from_slice(b",\"arguments\":");
            write_str(out, arguments);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(finish_reason(resp.get("stopReason").and_then(Value::as_str)).as_bytes());
    out.extend_from_slice(b"\"}],");
    push_usage(&usage, out);
    out.push(b'}');
    Ok(usage)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The AWS error type without its decorations: `x-amzn-ErrorType` values may carry `:` and a
/// URL after the name, `__type` a namespace before `#`.
fn bare_type(raw: &str) -> &str {
    let raw = raw.rsplit_once('#').map_or(raw, |(_, t)| t);
    raw.split_once(':').map_or(raw, |(t, _)| t).trim()
}

/// Translate an AWS error that came with HTTP `status` (its type from the `x-amzn-ErrorType`
/// header `error_type` if any, else the body's `__type`; its message the body's `message`)
/// into an OpenAI error body, appended to `out`. A body that is not one gets a message naming
/// the status. The status itself is the caller's to pass on.
pub fn error_to_openai(status: u16, error_type: Option<&str>, body: &[u8], out: &mut Vec<u8>) {
    let parsed = serde_json::from_slice::<Value>(body).ok();
    let from_body = parsed
        .as_ref()
        .and_then(|v| v.get("__type"))
        .and_then(Value::as_str);
    let kind = error_type
        .or(from_body)
        .map(bare_type)
        .filter(|t| !t.is_empty());
    let message = parsed.as_ref().and_then(|v| {
        v.get("message")
            .or_else(|| v.get("Message"))
            .and_then(Value::as_str)
    });
    match message {
        Some(m) => push_openai_error(out, status, kind, m),
        None => push_openai_error(
            out,
            status,
            kind,
            &format!("the Bedrock upstream answered HTTP {status}"),
        ),
    }
}

/// `{"error":{...}}` in OpenAI's shape: `type` as OpenAI names it, `code` AWS's error type
/// (OpenAI's code for the two it has one for: rate limits and bad keys).
fn push_openai_error(out: &mut Vec<u8>, status: u16, kind: Option<&str>, message: &str) {
    let (openai_type, code): (&str, Option<&str>) = match (kind, status) {
        (
            Some(
                "ThrottlingException"
                | "ServiceQuotaExceededException"
                | "TooManyRequestsException",
            ),
            _,
        )
        | (None, 429) => ("requests", Some("rate_limit_exceeded")),
        (
            Some(
                "UnrecognizedClientException"
                | "InvalidSignatureException"
                | "IncompleteSignatureException"
                | "MissingAuthenticationTokenException"
                | "ExpiredTokenException",
            ),
            _,
        )
        | (None, 401) => ("invalid_request_error", Some("invalid_api_key")),
        (Some("AccessDeniedException"), _) | (None, 403) => ("permission_error", kind),
        (Some("ValidationException" | "ResourceNotFoundException" | "ConflictException"), _) => {
            ("invalid_request_error", kind)
        }
        (
            Some(
                "InternalServerException"
                | "ServiceUnavailableException"
                | "ModelTimeoutException"
                | "ModelErrorException"
                | "ModelNotReadyException"
                | "ModelStreamErrorException",
            ),
            _,
        ) => ("server_error", kind),
        (_, 400..=499) => ("invalid_request_error", kind),
        _ => ("server_error", kind),
    };
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_str(out, message);
    out.extend_from_slice(b",\"type\":");
    write_str(out, openai_type);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    match code {
        Some(c) => write_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Translates ConverseStream's binary event stream into OpenAI `chat.completion.chunk` events.
///
/// Feed it the response body (de-chunked) in pieces of any size; it appends whole OpenAI events
/// to `out` as each AWS message completes, so the output is the same however the input was
/// cut. See the module docs for the events. After `[DONE]` further input is ignored; events
/// that are not JSON, unknown events and signature or redacted reasoning deltas are skipped.
#[derive(Debug)]
pub struct StreamToChat {
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    decoder: Decoder,
    role_sent: bool,
    /// Set by `messageStop`: the finish chunk has been written.
    stopped: bool,
    counts: Option<Counts>,
    /// The OpenAI `index` of each tool call, by its Converse `contentBlockIndex`.
    tool_blocks: Vec<(u64, usize)>,
    done: bool,
}

impl StreamToChat {
    /// A translator whose chunks carry `id`, `model` and `created` (unix seconds), and end with
    /// a usage chunk if `include_usage` (the client's `stream_options.include_usage`).
    pub fn new(id: &str, model: &str, created: u64, include_usage: bool) -> Self {
        StreamToChat {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            include_usage,
            decoder: Decoder::new(),
            role_sent: false,
            stopped: false,
            counts: None,
            tool_blocks: Vec::new(),
            done: false,
        }
    }

    /// Translate the messages that `input` completes, appending OpenAI events to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut decoder = std::mem::take(&mut self.decoder);
        let framed = decoder.feed(input, |message| {
            // After `[DONE]` (an exception, or the end) further messages are ignored.
            if !self.done {
                self.on_message(message, out);
            }
        });
        self.decoder = decoder;
        if let Err(e) = framed {
            self.on_frame_error(e, out);
        }
    }

    /// At the end of the upstream body: if the stream never finished, append an error event
    /// and `[DONE]`; after `messageStop` without `metadata`, the usage chunk (when asked for)
    /// and `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if let Err(e) = self.decoder.finish() {
            self.on_frame_error(e, out);
            return;
        }
        if self.stopped {
            self.end(out);
        } else {
            self.push_error(
                out,
                Some("api_error"),
                "the Bedrock upstream ended the stream before messageStop",
            );
        }
    }

    /// The usage the upstream reported (in its `metadata` event), once it has.
    pub fn usage(&self) -> Option<Usage> {
        self.counts.map(Counts::usage)
    }

    /// Whether `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn on_frame_error(&mut self, e: FrameError, out: &mut Vec<u8>) {
        if !self.done {
            self.push_error(out, Some("api_error"), e.message());
        }
    }

    fn on_message(&mut self, message: Message<'_>, out: &mut Vec<u8>) {
        match message.str_header(":message-type") {
            Some("event") | None => {}
            Some("exception") => {
                let kind = message.str_header(":exception-type");
                let payload = serde_json::from_slice::<Value>(message.payload).ok();
                let text = payload
                    .as_ref()
                    .and_then(|v| v.get("message").or_else(|| v.get("Message")))
                    .and_then(Value::as_str)
                    .unwrap_or("the Bedrock upstream reported an error in the stream");
                self.push_error(out, kind.or(Some("api_error")), text);
                return;
            }
            Some(_) => {
                // `error`: a protocol-level error, in headers.
                let code = message.str_header(":error-code");
                let text = message
                    .str_header(":error-message")
                    .unwrap_or("the Bedrock upstream reported an error in the stream");
                self.push_error(out, code.or(Some("api_error")), text);
                return;
            }
        }
        let Some(kind) = message.str_header(":event-type") else {
            return;
        };
        let Ok(v) = serde_json::from_slice::<Value>(message.payload) else {
            return;
        };
        self.on_event(kind, &v, out);
    }

    fn on_event(&mut self, kind: &str, v: &Value, out: &mut Vec<u8>) {
        if self.stopped && kind != "metadata" {
            return;
        }
        let block_index = || v.get("contentBlockIndex").and_then(Value::as_u64);
        match kind {
            "messageStart" => self.send_role(out),
            "contentBlockStart" => {
                let Some(start) = v.get("start").and_then(|s| s.get("toolUse")) else {
                    return;
                };
                let (Some(call_id), Some(name)) = (
                    start.get("toolUseId").and_then(Value::as_str),
                    start.get("name").and_then(Value::as_str),
                ) else {
                    return;
                };
                let block = block_index().unwrap_or(0);
                if self.tool_blocks.iter().any(|(b, _)| *b == block) {
                    return;
                }
                if self.tool_blocks.len() >= STREAM_TOOL_CALLS_MAX {
                    self.push_error(
                        out,
                        Some("api_error"),
                        "the Bedrock upstream started more tool calls than the gateway relays",
                    );
                    return;
                }
                let index = self.tool_blocks.len();
                self.tool_blocks.push((block, index));
                self.send_role(out);
                self.push_chunk_head(out);
                out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":");
                write_decimal(out, index as u64);
                out.extend_from_slice(b",\"id\":");
                write_str(out, call_id);
                out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
                write_str(out, name);
                out.extend_from_slice(
                    b",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
                );
            }
            "contentBlockDelta" => {
                let Some(delta) = v.get("delta") else { return };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    self.push_delta(out, b"content", text);
                } else if let Some(text) = delta
                    .get("reasoningContent")
                    .and_then(|r| r.get("text"))
                    .and_then(Value::as_str)
                {
                    self.push_delta(out, b"reasoning_content", text);
                } else if let Some(piece) = delta
                    .get("toolUse")
                    .and_then(|t| t.get("input"))
                    .and_then(Value::as_str)
                {
                    let block = block_index().unwrap_or(0);
                    let Some(&(_, index)) = self.tool_blocks.iter().find(|(b, _)| *b == block)
                    else {
                        return;
                    };
                    if piece.is_empty() {
                        return;
                    }
                    self.push_chunk_head(out);
                    out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":");
                    write_decimal(out, index as u64);
                    out.extend_from_slice(b",\"function\":{\"arguments\":");
                    write_str(out, piece);
                    out.extend_from_slice(b"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
                }
            }
            "messageStop" => {
                let reason = finish_reason(v.get("stopReason").and_then(Value::as_str));
                self.send_role(out);
                self.push_chunk_head(out);
                out.extend_from_slice(
                    b"[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"",
                );
                out.extend_from_slice(reason.as_bytes());
                out.extend_from_slice(b"\"}]}\n\n");
                self.stopped = true;
            }
            "metadata" => {
                if let Some(usage) = v.get("usage") {
                    self.counts = Some(Counts::read(usage));
                }
                if self.stopped {
                    self.end(out);
                }
            }
            _ => {}
        }
    }

    /// The usage chunk (when asked for) and `[DONE]`.
    fn end(&mut self, out: &mut Vec<u8>) {
        if self.include_usage {
            self.push_chunk_head(out);
            out.extend_from_slice(b"[],");
            push_usage(&self.counts.unwrap_or_default().usage(), out);
            out.extend_from_slice(b"}\n\n");
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
        self.done = true;
    }

    /// A chunk whose delta is `{key: text}` (none for an empty text).
    fn push_delta(&mut self, out: &mut Vec<u8>, key: &[u8], text: &str) {
        if text.is_empty() {
            return;
        }
        self.send_role(out);
        self.push_chunk_head(out);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"");
        out.extend_from_slice(key);
        out.extend_from_slice(b"\":");
        write_str(out, text);
        out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":null}]}\n\n");
    }

    fn send_role(&mut self, out: &mut Vec<u8>) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        self.push_chunk_head(out);
        out.extend_from_slice(
            b"[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
        );
    }

    /// `data: {"id":...,"choices":` (the caller writes the choices and closes the object).
    fn push_chunk_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"id\":");
        write_str(out, &self.id);
        out.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        write_decimal(out, self.created);
        out.extend_from_slice(b",\"model\":");
        write_str(out, &self.model);
        out.extend_from_slice(b",\"choices\":");
    }

    fn push_error(&mut self, out: &mut Vec<u8>, kind: Option<&str>, message: &str) {
        // Stream exceptions are named in lower camel case (`throttlingException`); the table
        // names them as the HTTP errors do.
        let mut upper = String::new();
        let kind = kind.map(|k| {
            let mut chars = k.chars();
            match chars.next() {
                Some(first) if first.is_ascii_lowercase() && k.ends_with("Exception") => {
                    upper.push(first.to_ascii_uppercase());
                    upper.push_str(chars.as_str());
                    upper.as_str()
                }
                _ => k,
            }
        });
        out.extend_from_slice(b"data: ");
        push_openai_error(out, 0, kind, message);
        out.extend_from_slice(b"\n\ndata: [DONE]\n\n");
        self.done = true;
    }
}
