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

use super::chat_out::{self, Chunks, Completion, ToolCall, UsageDetails};
use super::eventstream::{Decoder, FrameError, Message};
use super::{
    copy_numbers, present, refuse_beyond_messages, tool_description, tool_schema, write_object,
    TranslateError,
};
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
    refuse_beyond_messages(body)?;
    match present(body, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => Ok(()),
        Some(_) => Err(TranslateError::Unsupported("parallel_tool_calls")),
    }
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
        if let Some(d) = tool_description(function)?.filter(|d| !d.is_empty()) {
            spec.insert("description".into(), Value::from(d));
        }
        spec.insert("inputSchema".into(), object("json", tool_schema(function)?));
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

    let tool_calls: Vec<ToolCall<'_>> = calls.iter().map(ToolCall::from).collect();
    chat_out::push_completion(
        out,
        &Completion {
            id,
            model,
            created,
            text: &text,
            reasoning: &reasoning,
            refusal: None,
            tool_calls: &tool_calls,
            finish_reason: finish_reason(resp.get("stopReason").and_then(Value::as_str)),
            usage: &usage,
            details: UsageDetails::CACHED,
        },
    );
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
    let (openai_type, code) = openai_error_kind(status, kind);
    chat_out::push_upstream_error_body(out, "Bedrock", status, message, openai_type, code);
}

/// OpenAI's error type and code for an AWS error type `kind` (else the HTTP `status`): `type`
/// as OpenAI names it, `code` AWS's error type (OpenAI's code for the two it has one for: rate
/// limits and bad keys).
fn openai_error_kind(status: u16, kind: Option<&str>) -> (&'static str, Option<&str>) {
    match (kind, status) {
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
    }
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
    chunks: Chunks,
    include_usage: bool,
    decoder: Decoder,
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
            chunks: Chunks::new(id, model, created),
            include_usage,
            decoder: Decoder::new(),
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
            "messageStart" => self.chunks.role(out),
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
                self.chunks
                    .tool_call_start(out, index as u64, call_id, name);
            }
            "contentBlockDelta" => {
                let Some(delta) = v.get("delta") else { return };
                if let Some(text) = delta.get("text").and_then(Value::as_str) {
                    self.push_delta(out, "content", text);
                } else if let Some(text) = delta
                    .get("reasoningContent")
                    .and_then(|r| r.get("text"))
                    .and_then(Value::as_str)
                {
                    self.push_delta(out, "reasoning_content", text);
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
                    self.chunks.tool_call_arguments(out, index as u64, piece);
                }
            }
            "messageStop" => {
                let reason = finish_reason(v.get("stopReason").and_then(Value::as_str));
                self.chunks.finish(out, reason);
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
        let usage = self.counts.unwrap_or_default().usage();
        self.chunks.end(
            out,
            self.include_usage.then_some((&usage, UsageDetails::CACHED)),
        );
        self.done = true;
    }

    /// A chunk whose delta is `{key: text}` (none for an empty text).
    fn push_delta(&mut self, out: &mut Vec<u8>, key: &str, text: &str) {
        if !text.is_empty() {
            self.chunks.text(out, key, text);
        }
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
        let (openai_type, code) = openai_error_kind(0, kind);
        chat_out::push_error_event(out, message, openai_type, code);
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::super::eventstream::{encode, encode_event, encode_exception, HeaderValue};
    use super::*;
    use crate::provider::testing;
    use proptest::prelude::*;
    use serde_json::json;

    fn to_converse(body: &Value) -> Result<Value, TranslateError> {
        testing::request_json(chat_to_converse, body)
    }

    #[test]
    fn paths_encode_the_model_id() {
        let mut out = String::from("left over");
        path("anthropic.claude-3-5-sonnet-20240620-v1:0", false, &mut out).expect("valid");
        assert_eq!(
            out,
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
        );
        path("anthropic.claude-3-5-sonnet-20240620-v1:0", true, &mut out).expect("valid");
        assert_eq!(
            out,
            "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
        );
        path(
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            false,
            &mut out,
        )
        .expect("valid");
        assert_eq!(
            out,
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-3-7-sonnet-20250219-v1%3A0/converse"
        );
        path("a b?#%/..~_é", false, &mut out).expect("valid");
        assert_eq!(out, "/model/a%20b%3F%23%25%2F..~_%C3%A9/converse");

        let mut out = String::from("kept");
        assert!(path("", false, &mut out).is_err());
        assert!(path(&"m".repeat(MODEL_ID_BYTES_MAX + 1), true, &mut out).is_err());
        assert_eq!(out, "kept");
        path(&"m".repeat(MODEL_ID_BYTES_MAX), true, &mut out).expect("at the limit");
        for e in [
            path("", false, &mut out),
            path(&"m".repeat(5000), false, &mut out),
        ] {
            let m = e.expect_err("refused");
            assert!(m.is_ascii() && !m.contains('"') && !m.contains('\\'), "{m}");
        }
    }

    #[test]
    fn system_turns_and_inference_config() {
        let body = json!({
            "model": "claude-bedrock",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": ""}]},
                {"role": "user", "content": "And 3+3?", "name": "bob"},
                {"role": "assistant", "content": ""}
            ],
            "max_tokens": 100,
            "max_completion_tokens": 50,
            "temperature": 0.5,
            "top_p": 0.9,
            "stop": ["END"],
            "stream": true,
            "stream_options": {"include_usage": true},
            "seed": 7,
            "user": "u-1",
            "n": 1,
            "parallel_tool_calls": true,
            "response_format": {"type": "text"}
        });
        assert_eq!(
            to_converse(&body),
            Ok(json!({
                "system": [{"text": "You are terse."}, {"text": "Answer in English."}],
                "messages": [
                    {"role": "user", "content": [{"text": "Hi"}]},
                    {"role": "assistant", "content": [{"text": "Hello."}]},
                    {"role": "user", "content": [{"text": "What is 2+2?"}, {"text": "And 3+3?"}]}
                ],
                "inferenceConfig": {"maxTokens": 50, "temperature": 0.5, "topP": 0.9, "stopSequences": ["END"]}
            }))
        );
        let v = to_converse(&json!({"messages": [{"role": "user", "content": "Hi"}], "stop": "\n", "max_tokens": 7}))
            .expect("translates");
        assert_eq!(
            v["inferenceConfig"],
            json!({"maxTokens": 7, "stopSequences": ["\n"]})
        );
        let v = to_converse(&json!({"messages": [{"role": "user", "content": "Hi"}]}))
            .expect("translates");
        assert_eq!(
            v,
            json!({"messages": [{"role": "user", "content": [{"text": "Hi"}]}]})
        );
    }

    #[test]
    fn tools_and_a_tool_loop() {
        let tools = json!([{"type": "function", "function": {
            "name": "get_weather", "description": "Weather of a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            "strict": true
        }}, {"type": "function", "function": {"name": "now"}}]);
        let body = json!({
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking.", "tool_calls": [
                    {"id": "tooluse_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "tooluse_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "18C"},
                {"role": "tool", "tool_call_id": "tooluse_2", "content": [{"type": "text", "text": "21C"}]},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": tools,
            "tool_choice": "auto"
        });
        assert_eq!(
            to_converse(&body),
            Ok(json!({
                "messages": [
                    {"role": "user", "content": [{"text": "Weather in Paris and Rome?"}]},
                    {"role": "assistant", "content": [
                        {"text": "Checking."},
                        {"toolUse": {"toolUseId": "tooluse_1", "name": "get_weather", "input": {"city": "Paris"}}},
                        {"toolUse": {"toolUseId": "tooluse_2", "name": "get_weather", "input": {"city": "Rome"}}}
                    ]},
                    {"role": "user", "content": [
                        {"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "18C"}]}},
                        {"toolResult": {"toolUseId": "tooluse_2", "content": [{"text": "21C"}]}},
                        {"text": "Thanks"}
                    ]}
                ],
                "toolConfig": {
                    "tools": [
                        {"toolSpec": {"name": "get_weather", "description": "Weather of a city",
                            "inputSchema": {"json": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}},
                        {"toolSpec": {"name": "now", "inputSchema": {"json": {"type": "object", "properties": {}}}}}
                    ],
                    "toolChoice": {"auto": {}}
                }
            }))
        );

        let with_choice = |choice: Value| {
            let mut b = json!({"messages": [{"role": "user", "content": "Hi"}], "tools": tools});
            b["tool_choice"] = choice;
            to_converse(&b)
        };
        assert_eq!(
            with_choice(json!("required")).expect("translates")["toolConfig"]["toolChoice"],
            json!({"any": {}})
        );
        assert_eq!(
            with_choice(json!({"type": "function", "function": {"name": "now"}}))
                .expect("translates")["toolConfig"]["toolChoice"],
            json!({"tool": {"name": "now"}})
        );
        assert!(with_choice(Value::Null).expect("translates")["toolConfig"]
            .get("toolChoice")
            .is_none());
        // "none": the tools are not shown.
        assert!(with_choice(json!("none"))
            .expect("translates")
            .get("toolConfig")
            .is_none());
        assert_eq!(
            with_choice(json!("sometimes")),
            Err(TranslateError::BadField("tool_choice"))
        );
        assert_eq!(
            with_choice(json!({"type": "function"})),
            Err(TranslateError::BadField("tool_choice"))
        );

        // "none" with tool blocks in the history: Converse needs the toolConfig.
        let mut b = body.clone();
        b["tool_choice"] = json!("none");
        assert_eq!(
            to_converse(&b),
            Err(TranslateError::Unsupported("tool_choice"))
        );
        // Tool blocks without tools.
        let mut b = body.clone();
        b.as_object_mut().expect("object").remove("tools");
        b.as_object_mut().expect("object").remove("tool_choice");
        assert_eq!(to_converse(&b), Err(TranslateError::BadField("tools")));
        // A choice that needs tools, without tools.
        let b = json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"});
        assert_eq!(
            to_converse(&b),
            Err(TranslateError::BadField("tool_choice"))
        );
        let b = json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "auto", "tools": []});
        assert!(to_converse(&b)
            .expect("translates")
            .get("toolConfig")
            .is_none());
    }

    #[test]
    fn malformed_tool_messages_are_refused() {
        use TranslateError::{BadField, Unsupported};
        let tools = json!([{"type": "function", "function": {"name": "f"}}]);
        let conv = |messages: Value| to_converse(&json!({"messages": messages, "tools": tools}));
        let call = |arguments: Value| {
            json!([
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": arguments}}]}
            ])
        };
        assert_eq!(conv(call(json!("{not json"))), Err(BadField("tool_calls")));
        assert_eq!(conv(call(json!("[1]"))), Err(BadField("tool_calls")));
        assert_eq!(conv(call(json!(5))), Err(BadField("tool_calls")));
        assert_eq!(
            conv(call(json!(""))).expect("empty arguments")["messages"][1]["content"][0]["toolUse"]
                ["input"],
            json!({})
        );
        assert_eq!(
            conv(
                json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "f"}}]}])
            ),
            Err(BadField("tool_calls"))
        );
        assert_eq!(
            conv(
                json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "custom", "custom": {}}]}])
            ),
            Err(Unsupported("tool_calls"))
        );
        assert_eq!(
            conv(json!([{"role": "user", "content": "Hi"}, {"role": "tool", "content": "42"}])),
            Err(BadField("tool_call_id"))
        );
        assert_eq!(
            conv(
                json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "function_call": {"name": "f", "arguments": "{}"}}])
            ),
            Err(Unsupported("function_call"))
        );
        assert_eq!(
            conv(json!([{"role": "function", "name": "f", "content": "1"}])),
            Err(Unsupported("functions"))
        );
        let bad_tools = |tools: Value| {
            to_converse(&json!({"messages": [{"role": "user", "content": "Hi"}], "tools": tools}))
        };
        assert_eq!(
            bad_tools(json!([{"type": "web_search"}])),
            Err(Unsupported("tools"))
        );
        assert_eq!(
            bad_tools(json!([{"function": {"name": "f"}}])),
            Err(BadField("tools"))
        );
        assert_eq!(
            bad_tools(json!([{"type": "function", "function": {}}])),
            Err(BadField("tools"))
        );
        assert_eq!(
            bad_tools(json!([{"type": "function", "function": {"name": "f", "parameters": "x"}}])),
            Err(BadField("tools"))
        );
        assert_eq!(bad_tools(json!({"f": 1})), Err(BadField("tools")));
    }

    #[test]
    fn images() {
        let msg = |url: &str| {
            to_converse(&json!({"messages": [{"role": "user", "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": url, "detail": "high"}}
            ]}]}))
        };
        assert_eq!(
            msg("data:image/png;base64,iVBORw0KGgo=").expect("translates")["messages"][0]
                ["content"],
            json!([{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}}])
        );
        for (media, format) in [
            ("image/jpeg", "jpeg"),
            ("image/jpg", "jpeg"),
            ("IMAGE/GIF", "gif"),
            ("image/webp", "webp"),
        ] {
            let v = msg(&format!("data:{media};base64,AAAA")).expect("translates");
            assert_eq!(v["messages"][0]["content"][1]["image"]["format"], format);
        }
        use TranslateError::{BadField, Unsupported};
        assert_eq!(
            msg("https://example.com/cat.png"),
            Err(Unsupported("image_url"))
        );
        assert_eq!(
            msg("data:image/bmp;base64,AAAA"),
            Err(Unsupported("image_url"))
        );
        assert_eq!(
            msg("data:image/png,rawbytes"),
            Err(Unsupported("image_url"))
        );
        assert_eq!(msg("data:image/png;base64,"), Err(BadField("image_url")));
        assert_eq!(msg("data:image/png;base64,\"x"), Err(BadField("image_url")));
        // Images only in user turns.
        let b = json!({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(to_converse(&b), Err(Unsupported("image_url")));
        let b = json!({"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]});
        assert_eq!(to_converse(&b), Err(Unsupported("audio")));
        let b = json!({"messages": [{"role": "user", "content": [{"type": "file", "file": {}}]}]});
        assert_eq!(to_converse(&b), Err(Unsupported("file")));
    }

    #[test]
    fn unsupported_and_malformed_requests_are_refused() {
        use TranslateError::{BadField, NotJson, Unsupported};
        let base = json!({"model": "m", "messages": [{"role": "user", "content": "Hi"}]});
        let with = |key: &str, value: Value| testing::with_field(&base, key, value, to_converse);
        assert_eq!(with("n", json!(2)), Err(Unsupported("n")));
        assert_eq!(with("logprobs", json!(true)), Err(Unsupported("logprobs")));
        assert_eq!(with("top_logprobs", json!(2)), Err(Unsupported("logprobs")));
        assert_eq!(
            with("response_format", json!({"type": "json_object"})),
            Err(Unsupported("response_format"))
        );
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
            with("parallel_tool_calls", json!(false)),
            Err(Unsupported("parallel_tool_calls"))
        );
        assert_eq!(
            with("reasoning_effort", json!("high")),
            Err(Unsupported("reasoning_effort"))
        );
        assert_eq!(
            with("web_search_options", json!({})),
            Err(Unsupported("web_search_options"))
        );
        assert_eq!(with("stop", json!(3)), Err(BadField("stop")));
        assert_eq!(with("max_tokens", json!(-1)), Err(BadField("max_tokens")));
        assert_eq!(
            with("temperature", json!("hot")),
            Err(BadField("temperature"))
        );
        assert_eq!(with("top_p", json!([])), Err(BadField("top_p")));
        assert_eq!(with("stream", json!("yes")), Err(BadField("stream")));
        assert_eq!(with("messages", json!([])), Err(BadField("messages")));
        assert_eq!(
            with("messages", json!([{"role": "system", "content": "only"}])),
            Err(BadField("messages"))
        );
        assert_eq!(
            with("messages", json!([{"role": "robot", "content": "Hi"}])),
            Err(BadField("role"))
        );
        assert_eq!(
            with("messages", json!([{"role": "user", "content": 5}])),
            Err(BadField("content"))
        );
        assert_eq!(
            with(
                "messages",
                json!([{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Hi"}])
            ),
            Err(BadField("first_turn"))
        );
        let mut out = b"kept".to_vec();
        for body in [&b"[1,2]"[..], b"\"s\"", b"{", b"{} {}", b"", b"null"] {
            assert_eq!(chat_to_converse(body, &mut out), Err(NotJson));
        }
        assert_eq!(with("n", json!(3)).map(|_| ()), Err(Unsupported("n")));
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    /// A Converse response, as the API documents it.
    const RESPONSE: &str = r#"{"output":{"message":{"role":"assistant","content":[{"reasoningContent":{"reasoningText":{"text":"Think.","signature":"sig"}}},{"text":"Hello"},{"text":", \"world\"!"}]}},"stopReason":"end_turn","usage":{"inputTokens":12,"outputTokens":6,"totalTokens":148,"cacheReadInputTokens":30,"cacheWriteInputTokens":100},"metrics":{"latencyMs":321}}"#;

    #[test]
    fn whole_response_maps_text_reasoning_usage_and_finish_reason() {
        let mut out = Vec::new();
        let usage = converse_to_chat(
            RESPONSE.as_bytes(),
            "chatcmpl-1",
            "claude-bedrock",
            1_700_000_000,
            &mut out,
        )
        .expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"claude-bedrock","#,
                r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello, \"world\"!","reasoning_content":"Think."},"logprobs":null,"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":142,"completion_tokens":6,"total_tokens":148,"prompt_tokens_details":{"cached_tokens":30}}}"#
            )
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 142,
                completion_tokens: 6,
                cached_tokens: 30,
                cache_write_tokens: 100,
                reasoning_tokens: 0
            }
        );

        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("model_context_window_exceeded", "length"),
            ("tool_use", "tool_calls"),
            ("guardrail_intervened", "content_filter"),
            ("content_filtered", "content_filter"),
            ("something_new", "stop"),
        ] {
            let body = format!(
                r#"{{"output":{{"message":{{"role":"assistant","content":[]}}}},"stopReason":"{stop}","usage":{{"inputTokens":1,"outputTokens":2,"totalTokens":3}}}}"#
            );
            let mut out = Vec::new();
            let usage =
                converse_to_chat(body.as_bytes(), "i", "m", 1, &mut out).expect("translates");
            let v: Value = serde_json::from_slice(&out).expect("valid JSON");
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{stop}");
            assert_eq!(v["choices"][0]["message"]["content"], "");
            assert_eq!(v["usage"]["total_tokens"], 3);
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1, 2));
        }

        let mut out = Vec::new();
        assert_eq!(
            converse_to_chat(
                br#"{"message":"The security token included in the request is invalid."}"#,
                "i",
                "m",
                1,
                &mut out
            ),
            Err(TranslateError::BadField("output"))
        );
        assert_eq!(
            converse_to_chat(b"[]", "i", "m", 1, &mut out),
            Err(TranslateError::NotJson)
        );
        assert_eq!(
            converse_to_chat(
                br#"{"output":{"message":{"content":[{"toolUse":{"name":"f"}}]}}}"#,
                "i",
                "m",
                1,
                &mut out
            ),
            Err(TranslateError::BadField("toolUse"))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn whole_response_tool_calls() {
        let body = r#"{"output":{"message":{"role":"assistant","content":[{"toolUse":{"toolUseId":"tooluse_A","name":"get_weather","input":{"city":"Paris"}}},{"toolUse":{"toolUseId":"tooluse_B","name":"now","input":{}}}]}},"stopReason":"tool_use","usage":{"inputTokens":50,"outputTokens":20,"totalTokens":70}}"#;
        let mut out = Vec::new();
        converse_to_chat(body.as_bytes(), "chatcmpl-2", "m", 5, &mut out).expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"chatcmpl-2","object":"chat.completion","created":5,"model":"m","choices":[{"index":0,"message":{"role":"assistant","content":null,"#,
                r#""tool_calls":[{"id":"tooluse_A","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}},"#,
                r#"{"id":"tooluse_B","type":"function","function":{"name":"now","arguments":"{}"}}]},"logprobs":null,"finish_reason":"tool_calls"}],"#,
                r#""usage":{"prompt_tokens":50,"completion_tokens":20,"total_tokens":70,"prompt_tokens_details":{"cached_tokens":0}}}"#
            )
        );
        // Text and a call: the text stays.
        let body = r#"{"output":{"message":{"content":[{"text":"Let me check."},{"toolUse":{"toolUseId":"t","name":"f","input":{"a":[1,"b"]}}}]}},"stopReason":"tool_use"}"#;
        let mut out = Vec::new();
        converse_to_chat(body.as_bytes(), "i", "m", 1, &mut out).expect("translates");
        let v: Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["choices"][0]["message"]["content"], "Let me check.");
        let args: Value = serde_json::from_str(
            v["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .expect("string"),
        )
        .expect("arguments are JSON");
        assert_eq!(args, json!({"a": [1, "b"]}));
    }

    fn openai_error(status: u16, kind: Option<&str>, body: &[u8]) -> Value {
        let mut out = Vec::new();
        error_to_openai(status, kind, body, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn errors_map_to_openai_shape() {
        assert_eq!(
            openai_error(
                400,
                Some("ValidationException:http://internal.amazon.com/coral/com.amazon.bedrock/"),
                br#"{"message":"A conversation must start with a user message."}"#
            ),
            json!({"error": {"message": "A conversation must start with a user message.", "type": "invalid_request_error", "param": null, "code": "ValidationException"}})
        );
        // The type from the body's `__type` when there is no header.
        assert_eq!(
            openai_error(429, None, br#"{"__type":"com.amazon.coral.availability#ThrottlingException","message":"Too many requests, please wait before trying again."}"#),
            json!({"error": {"message": "Too many requests, please wait before trying again.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(
            openai_error(429, Some("ServiceQuotaExceededException"), b"{}")["error"]["code"],
            "rate_limit_exceeded"
        );
        assert_eq!(
            openai_error(
                403,
                Some("AccessDeniedException"),
                br#"{"Message":"You don't have access to the model with the specified model ID."}"#
            ),
            json!({"error": {"message": "You don't have access to the model with the specified model ID.", "type": "permission_error", "param": null, "code": "AccessDeniedException"}})
        );
        assert_eq!(
            openai_error(
                403,
                Some("UnrecognizedClientException"),
                br#"{"message":"The security token included in the request is invalid."}"#
            )["error"]["code"],
            "invalid_api_key"
        );
        assert_eq!(
            openai_error(403, Some("InvalidSignatureException"), b"{}")["error"]["code"],
            "invalid_api_key"
        );
        let e = openai_error(
            404,
            Some("ResourceNotFoundException"),
            br#"{"message":"Model not found"}"#,
        );
        assert_eq!(
            (e["error"]["type"].as_str(), e["error"]["code"].as_str()),
            (
                Some("invalid_request_error"),
                Some("ResourceNotFoundException")
            )
        );
        for (status, kind) in [
            (408, "ModelTimeoutException"),
            (424, "ModelErrorException"),
            (429, "ModelNotReadyException"),
            (500, "InternalServerException"),
            (503, "ServiceUnavailableException"),
        ] {
            let e = openai_error(status, Some(kind), br#"{"message":"x"}"#);
            assert_eq!(e["error"]["type"], "server_error", "{kind}");
            assert_eq!(e["error"]["code"], kind);
        }
        assert_eq!(
            openai_error(502, None, b"<html>bad gateway</html>"),
            json!({"error": {"message": "the Bedrock upstream answered HTTP 502", "type": "server_error", "param": null, "code": null}})
        );
        assert_eq!(
            openai_error(413, None, b"")["error"]["type"],
            "invalid_request_error"
        );
        assert_eq!(
            openai_error(403, None, b"")["error"]["type"],
            "permission_error"
        );
    }

    // -----------------------------------------------------------------------------------------
    // Streams

    fn event(kind: &str, payload: Value, out: &mut Vec<u8>) {
        encode_event(kind, payload.to_string().as_bytes(), out).expect("encodes");
    }

    /// A ConverseStream body: reasoning, text, a tool call in pieces, the stop, the usage.
    fn stream_body() -> Vec<u8> {
        let mut s = Vec::new();
        for (kind, payload) in [
            ("messageStart", json!({"role": "assistant", "p": "abcd"})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "Hmm."}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"reasoningContent": {"signature": "sig"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 0})),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"text": "Hello"}, "p": "ab"}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 1, "delta": {"text": ", \"wörld\"\n!"}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 1})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 2, "start": {"toolUse": {"toolUseId": "tooluse_X", "name": "get_weather"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{\"city\":"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 2, "delta": {"toolUse": {"input": "\"Paris\"}"}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 2})),
            (
                "contentBlockStart",
                json!({"contentBlockIndex": 3, "start": {"toolUse": {"toolUseId": "tooluse_Y", "name": "now"}}}),
            ),
            (
                "contentBlockDelta",
                json!({"contentBlockIndex": 3, "delta": {"toolUse": {"input": ""}}}),
            ),
            ("contentBlockStop", json!({"contentBlockIndex": 3})),
            ("messageStop", json!({"stopReason": "tool_use"})),
            (
                "metadata",
                json!({"usage": {"inputTokens": 25, "outputTokens": 15, "totalTokens": 50, "cacheReadInputTokens": 10}, "metrics": {"latencyMs": 400}}),
            ),
        ] {
            event(kind, payload, &mut s);
        }
        s
    }

    const HEAD: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"claude-bedrock","choices":"#;

    fn expected(include_usage: bool) -> String {
        let usage = r#"[],"usage":{"prompt_tokens":35,"completion_tokens":15,"total_tokens":50,"prompt_tokens_details":{"cached_tokens":10}}"#;
        testing::expected_chunks(
            HEAD,
            &[
                r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"reasoning_content":"Hmm."},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":", \"wörld\"\n!"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"tooluse_X","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Paris\"}"}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"tooluse_Y","type":"function","function":{"name":"now","arguments":""}}]},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]"#,
            ],
            include_usage.then_some(usage),
        )
    }

    fn translate_in_pieces(
        stream: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Vec<u8>, Option<Usage>) {
        testing::translate_in_pieces(
            StreamToChat::new("chatcmpl-1", "claude-bedrock", 1_700_000_000, include_usage),
            stream,
            cuts,
        )
    }

    #[test]
    fn stream_translates_to_openai_chunks() {
        let body = stream_body();
        for include_usage in [false, true] {
            let (out, usage) = translate_in_pieces(&body, &[], include_usage);
            assert_eq!(
                std::str::from_utf8(&out).expect("UTF-8"),
                expected(include_usage)
            );
            assert_eq!(
                usage,
                Some(Usage {
                    prompt_tokens: 35,
                    completion_tokens: 15,
                    cached_tokens: 10,
                    cache_write_tokens: 0,
                    reasoning_tokens: 0
                })
            );
        }
        // One byte at a time.
        let cuts: Vec<usize> = (0..body.len()).collect();
        let (out, _) = translate_in_pieces(&body, &cuts, true);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        for e in expected(true).split("\n\n").filter(|e| !e.is_empty()) {
            let data = e.strip_prefix("data: ").expect("data line");
            if data != "[DONE]" {
                serde_json::from_str::<Value>(data).expect("valid JSON");
            }
        }
        // After [DONE], more input changes nothing.
        let mut t = StreamToChat::new("chatcmpl-1", "claude-bedrock", 1_700_000_000, false);
        let mut out = Vec::new();
        t.feed(&body, &mut out);
        assert!(t.is_done());
        let len = out.len();
        t.feed(&body, &mut out);
        t.finish(&mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn stream_end_without_metadata_or_stop() {
        let body = stream_body();
        // Cut before metadata: the finish chunk is there; finish ends it without an error.
        let meta_start = body.len()
            - {
                let mut last = Vec::new();
                event(
                    "metadata",
                    json!({"usage": {"inputTokens": 25, "outputTokens": 15, "totalTokens": 50, "cacheReadInputTokens": 10}, "metrics": {"latencyMs": 400}}),
                    &mut last,
                );
                last.len()
            };
        let (out, usage) = translate_in_pieces(&body[..meta_start], &[], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));
        assert_eq!(usage, None);

        // Cut before messageStop: an error event, then [DONE].
        let mut stop = Vec::new();
        event("messageStop", json!({"stopReason": "tool_use"}), &mut stop);
        let stop_start = meta_start - stop.len();
        let (out, _) = translate_in_pieces(&body[..stop_start], &[], true);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.ends_with("data: {\"error\":{\"message\":\"the Bedrock upstream ended the stream before messageStop\",\"type\":\"server_error\",\"param\":null,\"code\":\"api_error\"}}\n\ndata: [DONE]\n\n"), "{out}");
        assert!(!out.contains("finish_reason\":\"tool_calls"));

        // Nothing at all.
        let (out, usage) = translate_in_pieces(b"", &[], true);
        assert!(String::from_utf8(out).expect("UTF-8").ends_with("before messageStop\",\"type\":\"server_error\",\"param\":null,\"code\":\"api_error\"}}\n\ndata: [DONE]\n\n"));
        assert_eq!(usage, None);
    }

    /// A stream that starts an answer, then is cut by a throttling exception.
    fn throttled_stream() -> Vec<u8> {
        let mut s = Vec::new();
        event("messageStart", json!({"role": "assistant"}), &mut s);
        event(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
            &mut s,
        );
        encode_exception(
            "throttlingException",
            br#"{"message":"Too many tokens, please wait before trying again."}"#,
            &mut s,
        )
        .expect("encodes");
        s
    }

    #[test]
    fn stream_exceptions_and_framing_errors() {
        let mut s = throttled_stream();
        event("messageStop", json!({"stopReason": "end_turn"}), &mut s);
        let (out, _) = translate_in_pieces(&s, &[], true);
        let out = String::from_utf8(out).expect("UTF-8");
        let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.len(), 4, "{out}");
        assert_eq!(
            events[2],
            r#"data: {"error":{"message":"Too many tokens, please wait before trying again.","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#
        );
        assert_eq!(events[3], "data: [DONE]");

        let mut s = Vec::new();
        event("messageStart", json!({"role": "assistant"}), &mut s);
        encode_exception(
            "modelStreamErrorException",
            br#"{"message":"boom","originalStatusCode":500}"#,
            &mut s,
        )
        .expect("encodes");
        let (out, _) = translate_in_pieces(&s, &[], false);
        assert!(String::from_utf8(out).expect("UTF-8").contains(r#"{"error":{"message":"boom","type":"server_error","param":null,"code":"ModelStreamErrorException"}}"#));

        // A protocol error message, in headers.
        let mut s = Vec::new();
        encode(
            &[
                (":message-type", HeaderValue::Str("error")),
                (":error-code", HeaderValue::Str("InternalFailure")),
                (
                    ":error-message",
                    HeaderValue::Str("An internal error occurred"),
                ),
            ],
            b"",
            &mut s,
        )
        .expect("encodes");
        let (out, _) = translate_in_pieces(&s, &[], false);
        assert!(String::from_utf8(out).expect("UTF-8").starts_with(r#"data: {"error":{"message":"An internal error occurred","type":"server_error","param":null,"code":"InternalFailure"}}"#));

        // A bad CRC in the middle: the messages before it, then an error, never the ones after.
        let body = stream_body();
        let mut bad = body.clone();
        let mut first = Vec::new();
        event(
            "messageStart",
            json!({"role": "assistant", "p": "abcd"}),
            &mut first,
        );
        let at = first.len() + 20;
        bad[at] ^= 0x20;
        for cuts in [
            vec![],
            vec![3, at, at + 1],
            (0..bad.len()).step_by(7).collect(),
        ] {
            let (out, usage) = translate_in_pieces(&bad, &cuts, true);
            let out = String::from_utf8(out).expect("UTF-8");
            let events: Vec<&str> = out.split("\n\n").filter(|e| !e.is_empty()).collect();
            assert_eq!(events.len(), 3, "{out}");
            assert!(events[0].contains(r#""role":"assistant""#));
            assert!(events[1].contains("CRC does not match"), "{out}");
            assert_eq!(events[2], "data: [DONE]");
            assert_eq!(usage, None);
        }
        // Cut inside a message at the end.
        let (out, _) = translate_in_pieces(&body[..body.len() - 3], &[], false);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.contains("ended inside a message"), "{out}");
        assert!(out.ends_with("data: [DONE]\n\n"));
        // Not an event stream at all (an SSE body).
        let (out, _) = translate_in_pieces(b"data: {\"choices\":[]}\n\n", &[], false);
        assert!(String::from_utf8(out)
            .expect("UTF-8")
            .contains("\"type\":\"server_error\""));
    }

    /// Writes the binary seeds of the `bedrock_stream` fuzz target (the text ones, lines
    /// `NAME JSON`, are written by hand). Run with
    /// `cargo test -p shardgate-engine --lib provider::bedrock::tests::write_fuzz_seeds -- --ignored`.
    #[test]
    #[ignore]
    fn write_fuzz_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bedrock_stream");
        let body = stream_body();
        std::fs::write(dir.join("stream"), &body).expect("writes");
        let s = throttled_stream();
        std::fs::write(dir.join("stream-exception"), &s).expect("writes");
        let mut bad = body.clone();
        bad[40] ^= 0x20;
        std::fs::write(dir.join("stream-bad-crc"), &bad).expect("writes");
        std::fs::write(dir.join("stream-truncated"), &body[..body.len() - 9]).expect("writes");
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        // The realistic stream with optional noise: an unknown event, a non-JSON payload.
        any::<bool>().prop_map(|noise| {
            let mut s = Vec::new();
            if noise {
                event("mystery", json!({"x": 1}), &mut s);
                encode_event("contentBlockDelta", b"not json", &mut s).expect("encodes");
                encode(
                    &[(":message-type", HeaderValue::Str("event"))],
                    b"{}",
                    &mut s,
                )
                .expect("encodes");
            }
            s.extend_from_slice(&stream_body());
            s
        })
    }

    testing::stream_split_independent!(200);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Any bytes: no panic, the same output however cut, and always [DONE] at the end.
        #[test]
        fn stream_never_panics_on_any_bytes(
            stream in prop::collection::vec(any::<u8>(), 0..512),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let whole = translate_in_pieces(&stream, &[], true);
            prop_assert!(whole.0.ends_with(b"data: [DONE]\n\n"));
            prop_assert_eq!(translate_in_pieces(&stream, &cuts, true), whole);
        }

        /// The one-shot functions never panic, and their output is JSON when they succeed.
        #[test]
        fn one_shot_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), status in any::<u16>()) {
            let mut out = Vec::new();
            if chat_to_converse(&body, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            if converse_to_chat(&body, "i", "m", 0, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            error_to_openai(status, std::str::from_utf8(&body).ok(), &body, &mut out);
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
        }
    }
}
