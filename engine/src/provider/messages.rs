//! Anthropic Messages clients (`POST /v1/messages`) in front of an OpenAI-compatible upstream:
//! the reverse of [`super::anthropic`].
//!
//! - [`messages_to_chat`]: a Messages request becomes an OpenAI chat completion request.
//! - [`chat_to_message`]: a `chat.completion` becomes a Messages response.
//! - [`error_to_anthropic`]: an OpenAI error body becomes an Anthropic error body.
//! - [`StreamToMessages`]: `chat.completion.chunk` events become Anthropic's event stream, fed
//!   in pieces of any size; the output does not depend on where the pieces were cut.
//!
//! Everything appends to an `out` buffer the caller owns; nothing touches a socket or the
//! clock.
//!
//! # Mapping
//!
//! | Anthropic | OpenAI |
//! |---|---|
//! | `system`: a string, or `text` blocks joined with nothing between them | a leading `system` message (none when empty) |
//! | `messages`: `user` / `assistant` turns, content a string or blocks | one message per turn, same role; string `content`: the `text` blocks joined with nothing between them |
//! | `image` block in a user turn, source `base64` / `url` | the user message's content becomes parts: `text` parts and `image_url` parts, `url` a `data:{media_type};base64,{data}` URL / the URL, in the blocks' order |
//! | `tool_use` blocks of an assistant turn (`id`, `name`, `input`) | the assistant message's `tool_calls` (`id`, `type: function`, `function.name`, `function.arguments`: the input serialized), its `content` the turn's text, or `null` when it has none |
//! | `tool_result` blocks of a user turn (`tool_use_id`, `content` a string or `text` blocks, `is_error`) | one `tool` message each (`tool_call_id`, `content`: the texts joined by a newline, as vLLM joins text parts), placed before the rest of the turn (OpenAI wants them right after the assistant's `tool_calls`); `is_error: true` puts [`TOOL_ERROR_PREFIX`] (`Error: `) before the content, OpenAI having no error flag; a turn of tool results alone has no `user` message |
//! | `thinking` / `redacted_thinking` blocks | left out: OpenAI's chat format has no field for earlier reasoning, and OpenAI-compatible servers' templates drop it from earlier turns (Anthropic leaves earlier turns' thinking out too). The thinking blocks this module writes (from an upstream's reasoning) come back so in an agent's next request, and must not fail it |
//! | `cache_control` (on blocks and tools), `citations` | left out: they change caching and attribution, not the answer |
//! | `tools`: custom tools (`type` absent or `custom`: `name`, `description`, `input_schema`, `strict`) | `tools`: `{"type":"function","function":{name, description, parameters, strict}}` (none when empty) |
//! | `tool_choice` `auto` / `any` / `tool` (`name`) / `none` | `tool_choice` `"auto"` / `"required"` / `{"type":"function","function":{"name"}}` / `"none"`, only with tools (OpenAI refuses it without; Anthropic's `any` and `tool` without tools are a [`TranslateError::BadField`]) |
//! | `tool_choice.disable_parallel_tool_use: true` | `parallel_tool_calls: false` (with tools) |
//! | `max_tokens` (required) | `max_tokens` |
//! | `temperature`, `top_p` | the same (Anthropic's `temperature` range, 0 to 1, lies within OpenAI's) |
//! | `stop_sequences` | `stop` (OpenAI takes at most 4; more is the upstream's 400) |
//! | `stream` | `stream`, with `"stream_options":{"include_usage":true}` when the caller asks |
//! | `metadata.user_id` | `user` |
//! | server tools (a tool `type` other than `custom`: `web_search_...`, `bash_...`, `text_editor_...`, `computer_...`, ...), a tool's `input_examples`, `thinking` other than `disabled`, `mcp_servers` (unless empty), `output_format`, `thread` (server-held conversation state; the error body tells the anthropic SDK to send the whole conversation instead, see [`crate::error`]), `document` blocks, `image` blocks with a `file` source or inside a `tool_result`, any other block type | refused: [`TranslateError::Unsupported`] |
//! | `model` (the caller names the upstream's), `top_k`, `service_tier`, `container`, other `metadata`, other keys of a tool (`eager_input_streaming`, ...), ... | left out |
//!
//! A last `assistant` turn (a prefill) is sent as it is: an OpenAI upstream answers it with a
//! new turn instead of continuing it.
//!
//! Responses: the first choice's reasoning, text and tool calls become, in that order, a
//! `thinking` block, a `text` block and one `tool_use` block per call (`"content":[]` when there
//! is none). The text is `content`, a `refusal` standing in for empty content. The reasoning an
//! OpenAI-compatible server returns beside the answer (vLLM and DeepSeek's `reasoning_content`,
//! vLLM's newer and Ollama's `reasoning`) becomes a `thinking` block, as Anthropic's extended
//! thinking answers (its `signature` empty: no upstream signed it). A tool call's `tool_use`
//! block has the call's `id` (`toolu_{upstream id}_{n}` when the upstream gave none),
//! `function.name` and the parsed `function.arguments` as `input` (`{}` when they are empty); a
//! whole answer whose arguments are not a JSON object (a model's malformed output, or arguments
//! cut by `max_tokens`) is [`TranslateError::BadField`]`("tool_calls")` (the caller's 502), as
//! Anthropic's `input` is always an object; a stream passes the argument pieces on as they come
//! (`input_json_delta`), unchecked. Streamed, see [`StreamToMessages`] for the order of blocks.
//! Stop reasons: `stop` → `end_turn` (`stop_sequence` when the upstream names the stop string it
//! matched, as vLLM does in the choice's `stop_reason`), `length` → `max_tokens`,
//! `content_filter` or a refusal → `refusal`, any answer with a tool call (else) → `tool_use`
//! (whatever the finish reason: vLLM says `stop` for a forced call), anything else (`tool_calls`
//! without a call, `null`, ...) → `end_turn`. Usage: `input_tokens` is `prompt_tokens` less
//! `prompt_tokens_details.cached_tokens` (OpenAI counts cached tokens in, Anthropic leaves them
//! out), which are reported as `cache_read_input_tokens`; `completion_tokens` →
//! `output_tokens`.

use serde_json::{Map, Value};

use super::sse::EventReader;
use super::{copy_numbers, present, write_object, TranslateError};
use crate::http::write_decimal;
use crate::llm::json::write_str;

// ---------------------------------------------------------------------------------------------
// Requests

/// Translate an Anthropic Messages request into an OpenAI chat completion request for `model`,
/// appended to `out` (nothing is appended on error). `include_usage` asks a streaming upstream
/// for its usage chunk (`stream_options.include_usage`), which [`StreamToMessages`] reports.
pub fn messages_to_chat(
    anthropic_body: &[u8],
    model: &str,
    include_usage: bool,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(anthropic_body) else {
        return Err(TranslateError::NotJson);
    };
    refuse_unsupported(&body)?;

    let mut messages = Vec::new();
    let system = system_text(present(&body, "system"))?;
    if !system.is_empty() {
        messages.push(chat_message("system", Value::from(system)));
    }
    translate_turns(body.get("messages"), &mut messages)?;
    let max_tokens = present(&body, "max_tokens")
        .and_then(Value::as_u64)
        .ok_or(TranslateError::BadField("max_tokens"))?;

    let mut req = Map::new();
    req.insert("model".into(), Value::from(model));
    req.insert("messages".into(), Value::Array(messages));
    req.insert("max_tokens".into(), Value::from(max_tokens));
    copy_numbers(&body, &["temperature", "top_p"], &mut req)?;
    match present(&body, "stop_sequences") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            req.insert("stop".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(TranslateError::BadField("stop_sequences")),
    }
    match present(&body, "stream") {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Bool(true)) => {
            req.insert("stream".into(), Value::Bool(true));
            if include_usage {
                let mut options = Map::new();
                options.insert("include_usage".into(), Value::Bool(true));
                req.insert("stream_options".into(), Value::Object(options));
            }
        }
        Some(_) => return Err(TranslateError::BadField("stream")),
    }
    match present(&body, "metadata") {
        None => {}
        Some(Value::Object(metadata)) => match present(metadata, "user_id") {
            None => {}
            Some(Value::String(u)) => {
                req.insert("user".into(), Value::from(u.as_str()));
            }
            Some(_) => return Err(TranslateError::BadField("metadata")),
        },
        Some(_) => return Err(TranslateError::BadField("metadata")),
    }
    let tools = translate_tools(present(&body, "tools"))?;
    let has_tools = !tools.is_empty();
    if has_tools {
        req.insert("tools".into(), Value::Array(tools));
    }
    translate_tool_choice(present(&body, "tool_choice"), has_tools, &mut req)?;
    write_object(req, out)
}

/// `{"role":role,"content":content}`.
fn chat_message(role: &str, content: Value) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), Value::from(role));
    message.insert("content".into(), content);
    Value::Object(message)
}

/// Whether `v` is an object whose `type` is `t`.
fn has_type(v: &Value, t: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(t)
}

/// Refuse the features a chat completion request cannot express (tools are refused, where
/// they must be, by [`translate_tools`]).
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    match present(body, "mcp_servers") {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(_) => return Err(TranslateError::Unsupported("mcp_servers")),
    }
    match present(body, "thinking") {
        None => {}
        Some(thinking) if has_type(thinking, "disabled") => {}
        Some(_) => return Err(TranslateError::Unsupported("thinking")),
    }
    if present(body, "output_format").is_some() {
        return Err(TranslateError::Unsupported("output_format"));
    }
    // Server-held conversation state: a stateless upstream cannot continue a thread, and
    // creating one it would not hold would make the client's next turn lose the conversation.
    if present(body, "thread").is_some() {
        return Err(TranslateError::Unsupported("thread"));
    }
    Ok(())
}

/// OpenAI's `tools` for Anthropic's: each custom tool (`type` absent or `custom`) becomes a
/// `function` tool; a server tool (any other `type`) is [`TranslateError::Unsupported`].
fn translate_tools(tools: Option<&Value>) -> Result<Vec<Value>, TranslateError> {
    let tools = match tools {
        None => return Ok(Vec::new()),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(TranslateError::BadField("tools")),
    };
    let mut functions = Vec::with_capacity(tools.len());
    for tool in tools {
        let Value::Object(tool) = tool else {
            return Err(TranslateError::BadField("tools"));
        };
        match present(tool, "type") {
            None => {}
            Some(Value::String(t)) if t == "custom" => {}
            Some(Value::String(_)) => return Err(TranslateError::Unsupported("tools")),
            Some(_) => return Err(TranslateError::BadField("tools")),
        }
        let mut function = Map::new();
        match tool.get("name") {
            Some(Value::String(name)) if !name.is_empty() => {
                function.insert("name".into(), Value::from(name.as_str()));
            }
            _ => return Err(TranslateError::BadField("tools")),
        }
        match present(tool, "description") {
            None => {}
            Some(Value::String(d)) => {
                function.insert("description".into(), Value::from(d.as_str()));
            }
            Some(_) => return Err(TranslateError::BadField("tools")),
        }
        match tool.get("input_schema") {
            Some(schema @ Value::Object(_)) => {
                function.insert("parameters".into(), schema.clone());
            }
            _ => return Err(TranslateError::BadField("tools")),
        }
        match present(tool, "strict") {
            None => {}
            Some(strict @ Value::Bool(_)) => {
                function.insert("strict".into(), strict.clone());
            }
            Some(_) => return Err(TranslateError::BadField("tools")),
        }
        if present(tool, "input_examples").is_some() {
            return Err(TranslateError::Unsupported("input_examples"));
        }
        let mut entry = Map::new();
        entry.insert("type".into(), Value::from("function"));
        entry.insert("function".into(), Value::Object(function));
        functions.push(Value::Object(entry));
    }
    Ok(functions)
}

/// OpenAI's `tool_choice` (and `parallel_tool_calls`) for Anthropic's `tool_choice`. Without
/// tools, `auto` and `none` say nothing (OpenAI refuses a `tool_choice` without tools), and
/// `any` or `tool` are [`TranslateError::BadField`].
fn translate_tool_choice(
    choice: Option<&Value>,
    has_tools: bool,
    req: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let Some(choice) = choice else {
        return Ok(());
    };
    let Value::Object(choice) = choice else {
        return Err(TranslateError::BadField("tool_choice"));
    };
    let openai = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Value::from("auto"),
        Some("none") => Value::from("none"),
        Some("any") if has_tools => Value::from("required"),
        Some("tool") if has_tools => {
            let Some(Value::String(name)) = choice.get("name") else {
                return Err(TranslateError::BadField("tool_choice"));
            };
            let mut function = Map::new();
            function.insert("name".into(), Value::from(name.as_str()));
            let mut named = Map::new();
            named.insert("type".into(), Value::from("function"));
            named.insert("function".into(), Value::Object(function));
            Value::Object(named)
        }
        _ => return Err(TranslateError::BadField("tool_choice")),
    };
    let serial = match present(choice, "disable_parallel_tool_use") {
        None | Some(Value::Bool(false)) => false,
        Some(Value::Bool(true)) => true,
        Some(_) => return Err(TranslateError::BadField("tool_choice")),
    };
    if has_tools {
        req.insert("tool_choice".into(), openai);
        if serial {
            req.insert("parallel_tool_calls".into(), Value::Bool(false));
        }
    }
    Ok(())
}

/// The system prompt: a string, or an array of `text` blocks.
fn system_text(system: Option<&Value>) -> Result<String, TranslateError> {
    match system {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(blocks)) => {
            let mut text = String::new();
            for block in blocks {
                match block.get("text") {
                    Some(Value::String(t)) if has_type(block, "text") => text.push_str(t),
                    _ => return Err(TranslateError::BadField("system")),
                }
            }
            Ok(text)
        }
        Some(_) => Err(TranslateError::BadField("system")),
    }
}

/// Append the chat messages of an Anthropic `messages` array to `chat`.
fn translate_turns(messages: Option<&Value>, chat: &mut Vec<Value>) -> Result<(), TranslateError> {
    let Some(Value::Array(turns)) = messages else {
        return Err(TranslateError::BadField("messages"));
    };
    if turns.is_empty() {
        return Err(TranslateError::BadField("messages"));
    }
    for turn in turns {
        let Value::Object(turn) = turn else {
            return Err(TranslateError::BadField("messages"));
        };
        match turn.get("role").and_then(Value::as_str) {
            Some("user") => user_turn(turn.get("content"), chat)?,
            Some("assistant") => assistant_turn(turn.get("content"), chat)?,
            _ => return Err(TranslateError::BadField("role")),
        }
    }
    Ok(())
}

/// A turn's `content` as blocks; a string is returned as `Err(string)`.
fn blocks_of(content: Option<&Value>) -> Result<Result<&Vec<Value>, &str>, TranslateError> {
    match content {
        Some(Value::String(s)) => Ok(Err(s.as_str())),
        Some(Value::Array(blocks)) => Ok(Ok(blocks)),
        _ => Err(TranslateError::BadField("content")),
    }
}

/// A block's `text`, when it is a `text` block.
fn text_of(block: &Value) -> Result<&str, TranslateError> {
    block
        .get("text")
        .and_then(Value::as_str)
        .ok_or(TranslateError::BadField("content"))
}

/// A user turn: its `tool_result` blocks become `tool` messages first (OpenAI wants them right
/// after the assistant's `tool_calls`), then the rest becomes one `user` message: string
/// content (the texts joined with nothing between them), or content parts when it holds an
/// image. A turn of `tool_result` blocks alone has no `user` message.
fn user_turn(content: Option<&Value>, chat: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match blocks_of(content)? {
        Err(text) => {
            chat.push(chat_message("user", Value::from(text)));
            return Ok(());
        }
        Ok(blocks) => blocks,
    };
    let mut parts = Vec::new();
    let mut image = false;
    let mut tool_results = false;
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => parts.push(text_part(text_of(block)?)),
            Some("image") => {
                image = true;
                parts.push(image_part(block)?);
            }
            Some("tool_result") => {
                tool_results = true;
                chat.push(tool_message(block)?);
            }
            Some("thinking" | "redacted_thinking") => {}
            Some(other) => return Err(refused_block(other)),
            None => return Err(TranslateError::BadField("content")),
        }
    }
    if tool_results && parts.is_empty() {
        return Ok(());
    }
    let content = if image {
        Value::Array(parts)
    } else {
        let mut text = String::new();
        for part in &parts {
            text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
        }
        Value::from(text)
    };
    chat.push(chat_message("user", content));
    Ok(())
}

/// An assistant turn: one `assistant` message, its texts joined with nothing between them, its
/// `tool_use` blocks as `tool_calls` (the content `null` when there is no text beside them).
/// `thinking` and `redacted_thinking` blocks are left out.
fn assistant_turn(content: Option<&Value>, chat: &mut Vec<Value>) -> Result<(), TranslateError> {
    let blocks = match blocks_of(content)? {
        Err(text) => {
            chat.push(chat_message("assistant", Value::from(text)));
            return Ok(());
        }
        Ok(blocks) => blocks,
    };
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(text_of(block)?),
            Some("tool_use") => calls.push(tool_call(block)?),
            Some("thinking" | "redacted_thinking") => {}
            Some("tool_result") => return Err(TranslateError::BadField("tool_result")),
            Some(other) => return Err(refused_block(other)),
            None => return Err(TranslateError::BadField("content")),
        }
    }
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        Value::from(text)
    };
    let mut message = Map::new();
    message.insert("role".into(), Value::from("assistant"));
    message.insert("content".into(), content);
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    chat.push(Value::Object(message));
    Ok(())
}

/// The error for a content block of type `kind` that no OpenAI message can carry where it is.
fn refused_block(kind: &str) -> TranslateError {
    match kind {
        "image" => TranslateError::Unsupported("image"),
        "document" => TranslateError::Unsupported("document"),
        "tool_use" => TranslateError::BadField("tool_use"),
        _ => TranslateError::Unsupported("content"),
    }
}

/// `{"type":"text","text":text}`.
fn text_part(text: &str) -> Value {
    let mut part = Map::new();
    part.insert("type".into(), Value::from("text"));
    part.insert("text".into(), Value::from(text));
    Value::Object(part)
}

/// An `image_url` part for an `image` block: a `base64` source as a `data:` URL, a `url`
/// source as its URL. Another source (`file`) is [`TranslateError::Unsupported`].
fn image_part(block: &Value) -> Result<Value, TranslateError> {
    let source = block.get("source");
    let field = |key| {
        source
            .and_then(|s| s.get(key))
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or(TranslateError::BadField("image"))
    };
    let url = match source.and_then(|s| s.get("type")).and_then(Value::as_str) {
        Some("base64") => format!("data:{};base64,{}", field("media_type")?, field("data")?),
        Some("url") => field("url")?.to_owned(),
        Some(_) => return Err(TranslateError::Unsupported("image")),
        None => return Err(TranslateError::BadField("image")),
    };
    let mut image_url = Map::new();
    image_url.insert("url".into(), Value::from(url));
    let mut part = Map::new();
    part.insert("type".into(), Value::from("image_url"));
    part.insert("image_url".into(), Value::Object(image_url));
    Ok(Value::Object(part))
}

/// An assistant `tool_calls` entry for a `tool_use` block: its `id`, `name`, and `input`
/// serialized as the `arguments` string.
fn tool_call(block: &Value) -> Result<Value, TranslateError> {
    let string = |key| match block.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.as_str()),
        _ => Err(TranslateError::BadField("tool_use")),
    };
    let (id, name) = (string("id")?, string("name")?);
    let arguments = match block.get("input") {
        Some(input @ Value::Object(_)) => input.to_string(),
        _ => return Err(TranslateError::BadField("tool_use")),
    };
    let mut function = Map::new();
    function.insert("name".into(), Value::from(name));
    function.insert("arguments".into(), Value::from(arguments));
    let mut call = Map::new();
    call.insert("id".into(), Value::from(id));
    call.insert("type".into(), Value::from("function"));
    call.insert("function".into(), Value::Object(function));
    Ok(Value::Object(call))
}

/// A `tool` message for a `tool_result` block: its `tool_use_id` as `tool_call_id`, its content
/// (a string, or `text` blocks joined by a newline, as vLLM joins text parts) as the content;
/// [`TOOL_ERROR_PREFIX`] before it when `is_error` is true. Other blocks inside (an image, a
/// document, a search result) are [`TranslateError::Unsupported`]`("tool_result")`.
fn tool_message(block: &Value) -> Result<Value, TranslateError> {
    let Some(Value::String(id)) = block.get("tool_use_id") else {
        return Err(TranslateError::BadField("tool_result"));
    };
    let mut text = String::new();
    match block.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(parts)) => {
            for (i, part) in parts.iter().enumerate() {
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if i > 0 {
                            text.push('\n');
                        }
                        text.push_str(
                            part.get("text")
                                .and_then(Value::as_str)
                                .ok_or(TranslateError::BadField("tool_result"))?,
                        );
                    }
                    Some(_) => return Err(TranslateError::Unsupported("tool_result")),
                    None => return Err(TranslateError::BadField("tool_result")),
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("tool_result")),
    }
    match block.get("is_error") {
        None | Some(Value::Null | Value::Bool(false)) => {}
        Some(Value::Bool(true)) => text.insert_str(0, TOOL_ERROR_PREFIX),
        Some(_) => return Err(TranslateError::BadField("tool_result")),
    }
    let mut message = Map::new();
    message.insert("role".into(), Value::from("tool"));
    message.insert("tool_call_id".into(), Value::from(id.as_str()));
    message.insert("content".into(), Value::from(text));
    Ok(Value::Object(message))
}

/// What a `tool` message's content starts with when its `tool_result` has `is_error: true`
/// (OpenAI's `tool` message has no error flag; the model reads the prefix instead).
pub const TOOL_ERROR_PREFIX: &str = "Error: ";

// ---------------------------------------------------------------------------------------------
// Responses

/// OpenAI's token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Usage {
    prompt: u64,
    completion: u64,
    cached: u64,
}

impl Usage {
    /// The counts of an OpenAI `usage` object; `None` when `usage` is not an object.
    fn from_value(usage: &Value) -> Option<Usage> {
        if !usage.is_object() {
            return None;
        }
        let get = |key| usage.get(key).and_then(Value::as_u64).unwrap_or(0);
        Some(Usage {
            prompt: get("prompt_tokens"),
            completion: get("completion_tokens"),
            cached: usage
                .get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens"))
                .and_then(Value::as_u64)
                .unwrap_or(0),
        })
    }

    /// `"usage":{...}` in Anthropic's shape.
    fn push_usage(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\"usage\":{\"input_tokens\":");
        write_decimal(out, self.prompt.saturating_sub(self.cached));
        out.extend_from_slice(b",\"cache_read_input_tokens\":");
        write_decimal(out, self.cached);
        out.extend_from_slice(b",\"output_tokens\":");
        write_decimal(out, self.completion);
        out.push(b'}');
    }
}

/// An OpenAI `finish_reason`, as far as Anthropic's stop reasons tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Finish {
    Stop,
    Length,
    ContentFilter,
    /// `tool_calls`, `function_call`, or a reason of the upstream's own.
    Other,
}

impl Finish {
    fn of(finish_reason: &str) -> Finish {
        match finish_reason {
            "stop" => Finish::Stop,
            "length" => Finish::Length,
            "content_filter" => Finish::ContentFilter,
            _ => Finish::Other,
        }
    }
}

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`; `stop_sequence` is whether the
/// upstream named the stop string it matched, `refused` whether it answered with a refusal,
/// `tool_use` whether the answer holds a tool call. A tool call makes it `tool_use` whatever the
/// upstream's reason (vLLM says `stop` when `tool_choice` forced the call) unless the answer was
/// cut by `length` or filtered; `tool_calls` without a call is `end_turn`.
fn stop_reason(
    finish: Option<Finish>,
    stop_sequence: bool,
    refused: bool,
    tool_use: bool,
) -> &'static str {
    match finish {
        Some(Finish::Length) => "max_tokens",
        Some(Finish::ContentFilter) => "refusal",
        _ if refused => "refusal",
        _ if tool_use => "tool_use",
        Some(Finish::Stop) if stop_sequence => "stop_sequence",
        _ => "end_turn",
    }
}

/// The stop string a choice names (vLLM's `stop_reason`) when it stopped on one.
fn matched_stop(choice: &Value) -> Option<&str> {
    if choice.get("finish_reason").and_then(Value::as_str) != Some("stop") {
        return None;
    }
    choice.get("stop_reason").and_then(Value::as_str)
}

/// Append `"msg_..."`: `id` with the `msg_` prefix Anthropic's ids have.
fn push_message_id(out: &mut Vec<u8>, id: &str) {
    if id.starts_with("msg_") {
        write_str(out, id);
    } else {
        write_str(out, &format!("msg_{id}"));
    }
}

/// `"stop_sequence":null` or `"stop_sequence":"..."`.
fn push_stop_sequence(out: &mut Vec<u8>, stop_sequence: Option<&str>) {
    out.extend_from_slice(b"\"stop_sequence\":");
    match stop_sequence {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Translate an OpenAI `chat.completion` into an Anthropic Messages response naming
/// `model_for_client`, appended to `out` (nothing is appended on error). The first choice
/// counts: its reasoning, text and tool calls become `thinking`, `text` and `tool_use` blocks, in
/// that order. A body without `choices` (an error body) is
/// [`TranslateError::BadField`]`("choices")`: see [`error_to_anthropic`]; a tool call whose
/// `arguments` are not a JSON object (nor empty) is [`TranslateError::BadField`]`("tool_calls")`.
pub fn chat_to_message(
    openai_body: &[u8],
    model_for_client: &str,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let Ok(Value::Object(resp)) = serde_json::from_slice::<Value>(openai_body) else {
        return Err(TranslateError::NotJson);
    };
    let Some(choice) = resp
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        return Err(TranslateError::BadField("choices"));
    };
    let id = resp.get("id").and_then(Value::as_str).unwrap_or_default();
    let message = choice.get("message");
    let mut text = match message.and_then(|m| m.get("content")) {
        None | Some(Value::Null) => "",
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(TranslateError::BadField("content")),
    };
    let refusal = message
        .and_then(|m| m.get("refusal"))
        .and_then(Value::as_str)
        .filter(|r| !r.is_empty() && text.is_empty());
    if let Some(r) = refusal {
        text = r;
    }
    let thinking = message.and_then(reasoning_of).unwrap_or_default();
    let calls = tool_uses(message.and_then(|m| m.get("tool_calls")), id)?;
    let stop_sequence = matched_stop(choice);
    let stop = stop_reason(
        choice
            .get("finish_reason")
            .and_then(Value::as_str)
            .map(Finish::of),
        stop_sequence.is_some(),
        refusal.is_some(),
        !calls.is_empty(),
    );
    let usage = resp
        .get("usage")
        .and_then(Usage::from_value)
        .unwrap_or_default();

    out.extend_from_slice(b"{\"id\":");
    push_message_id(out, id);
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    write_str(out, model_for_client);
    out.extend_from_slice(b",\"content\":[");
    let mut blocks = 0;
    let mut next_block = |out: &mut Vec<u8>| {
        if blocks > 0 {
            out.push(b',');
        }
        blocks += 1;
    };
    if !thinking.is_empty() {
        next_block(out);
        out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":");
        write_str(out, thinking);
        out.extend_from_slice(b",\"signature\":\"\"}");
    }
    if !text.is_empty() {
        next_block(out);
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        write_str(out, text);
        out.push(b'}');
    }
    for call in &calls {
        next_block(out);
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
        write_str(out, &call.id);
        out.extend_from_slice(b",\"name\":");
        write_str(out, call.name);
        out.extend_from_slice(b",\"input\":");
        out.extend_from_slice(call.input.as_bytes());
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"stop_reason\":\"");
    out.extend_from_slice(stop.as_bytes());
    out.extend_from_slice(b"\",");
    push_stop_sequence(out, stop_sequence.filter(|_| stop == "stop_sequence"));
    out.push(b',');
    usage.push_usage(out);
    out.push(b'}');
    Ok(())
}

/// A tool call of a whole answer, ready to write as a `tool_use` block.
#[derive(Debug)]
struct ToolUse<'a> {
    id: String,
    name: &'a str,
    /// The input object, serialized.
    input: String,
}

/// The `tool_use` blocks for a message's `tool_calls` (absent or `null`: none). A call without
/// an `id` gets [`fallback_call_id`]; empty `arguments` are the input `{}`.
fn tool_uses<'a>(
    tool_calls: Option<&'a Value>,
    message_id: &str,
) -> Result<Vec<ToolUse<'a>>, TranslateError> {
    let calls = match tool_calls {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(calls)) => calls,
        Some(_) => return Err(TranslateError::BadField("tool_calls")),
    };
    let mut uses = Vec::with_capacity(calls.len());
    for (i, call) in calls.iter().enumerate() {
        let function = call.get("function");
        let Some(name) = function.and_then(|f| f.get("name")).and_then(Value::as_str) else {
            return Err(TranslateError::BadField("tool_calls"));
        };
        let arguments = match function.and_then(|f| f.get("arguments")) {
            None | Some(Value::Null) => "",
            Some(Value::String(a)) => a.as_str(),
            Some(_) => return Err(TranslateError::BadField("tool_calls")),
        };
        let input = if arguments.trim_ascii().is_empty() {
            "{}".to_owned()
        } else {
            match serde_json::from_str::<Value>(arguments) {
                Ok(object @ Value::Object(_)) => object.to_string(),
                _ => return Err(TranslateError::BadField("tool_calls")),
            }
        };
        let id = match call.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() => id.to_owned(),
            _ => fallback_call_id(message_id, i),
        };
        uses.push(ToolUse { id, name, input });
    }
    Ok(uses)
}

/// The id of the `i`-th tool call (from 0) of the answer whose upstream id is `message_id`,
/// when the upstream gave the call none: Anthropic clients need one to answer the call with.
fn fallback_call_id(message_id: &str, i: usize) -> String {
    format!("toolu_{message_id}_{i}")
}

/// The reasoning text of an OpenAI-compatible message or delta: `reasoning_content` (vLLM,
/// DeepSeek) or `reasoning` (vLLM's newer name, Ollama), whichever is a non-empty string.
fn reasoning_of(message: &Value) -> Option<&str> {
    ["reasoning_content", "reasoning"]
        .iter()
        .filter_map(|k| message.get(*k).and_then(Value::as_str))
        .find(|r| !r.is_empty())
}

/// Anthropic's error type for an HTTP status.
fn error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        // 400 and the 4xx Anthropic has no type for.
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Translate an OpenAI error body (`{"error":{"message","type","code"}}`; also
/// `{"error":"..."}` and vLLM's older `{"object":"error","message":...}`) that came with HTTP
/// `status` into an Anthropic error body, appended to `out`. The error type follows the
/// status; a body without a message gets one naming the status. The status itself is the
/// caller's to pass on.
pub fn error_to_anthropic(status: u16, openai_error_body: &[u8], out: &mut Vec<u8>) {
    let parsed = serde_json::from_slice::<Value>(openai_error_body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| match v.get("error") {
            Some(Value::String(s)) => Some(s.as_str()),
            Some(e @ Value::Object(_)) => e.get("message").and_then(Value::as_str),
            _ => v.get("message").and_then(Value::as_str),
        })
        .filter(|m| !m.is_empty());
    match message {
        Some(m) => push_anthropic_error(out, error_type(status), m),
        None => push_anthropic_error(
            out,
            error_type(status),
            &format!("the upstream answered HTTP {status}"),
        ),
    }
}

/// `{"type":"error","error":{"type":...,"message":...}}`.
fn push_anthropic_error(out: &mut Vec<u8>, kind: &str, message: &str) {
    out.extend_from_slice(b"{\"type\":\"error\",\"error\":{\"type\":");
    write_str(out, kind);
    out.extend_from_slice(b",\"message\":");
    write_str(out, message);
    out.extend_from_slice(b"}}");
}

// ---------------------------------------------------------------------------------------------
// Streams

/// The most bytes of text, reasoning and tool call arguments a stream translator holds back
/// while a tool call's block is open (see [`StreamToMessages`]). A stream that needs more ends
/// with an `error` event.
pub const STREAM_HELD_BYTES_MAX: usize = 8 * 1024 * 1024;

/// What an upstream event's data says.
#[derive(Debug)]
enum Data {
    /// `[DONE]`: the stream is over.
    Done,
    /// A chunk or an error.
    Json(Value),
}

impl Data {
    /// `None` for data that is neither `[DONE]` nor JSON.
    fn parse(data: &[u8]) -> Option<Data> {
        if data.trim_ascii() == b"[DONE]" {
            return Some(Data::Done);
        }
        serde_json::from_slice(data).ok().map(Data::Json)
    }
}

/// The kinds of text a translated stream carries in blocks of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Thinking,
    Text,
}

/// The content block open now: its index, and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Block {
    index: u64,
    kind: OpenKind,
}

/// What an open content block holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenKind {
    Text(TextKind),
    /// The tool call of this OpenAI `index`.
    Call(u64),
}

/// Content held back while a tool call's block is open, written whole when the stream closes.
#[derive(Debug)]
enum Held {
    /// Text or reasoning that came in one run.
    Text(TextKind, String),
    /// A tool call (OpenAI's `index`), its id, name and arguments as they came.
    Call {
        index: u64,
        id: String,
        name: String,
        arguments: String,
    },
}

/// One entry of a delta's `tool_calls`.
#[derive(Debug, Clone, Copy)]
struct CallDelta<'a> {
    index: u64,
    id: &'a str,
    name: &'a str,
    arguments: &'a str,
}

/// Translates an OpenAI `chat.completion.chunk` event stream into Anthropic's Messages events.
///
/// Feed it the decoded response body in pieces of any size; it appends whole Anthropic events
/// (`event: NAME\ndata: JSON\n\n`) to `out` as each OpenAI event completes, so the output is the
/// same however the input was cut. Events: `message_start` on the first chunk; for the content,
/// one block at a time, each `content_block_start`, its `content_block_delta`s and
/// `content_block_stop`, at indices 0, 1, ...: a `thinking` block of `thinking_delta`s for
/// `delta.reasoning_content` (or `delta.reasoning`), a `text` block of `text_delta`s for
/// `delta.content` (or `delta.refusal`), a new block each time the kind changes; a `tool_use`
/// block (`id`, `name`, `input: {}`) for each call of `delta.tool_calls` (told apart by their
/// `index`, else their place in the array), opened by the call's first delta, whose `id` and
/// `function.name` it takes (an `id` made up when the upstream sent none), with an
/// `input_json_delta` per non-empty `function.arguments` piece, passed on unchecked (arguments
/// that are not a string end the stream with an `error` event). On
/// `data: [DONE]`: `content_block_stop`, `message_delta` (stop reason, and the usage once the
/// upstream reported it) and `message_stop`.
///
/// Anthropic streams one block at a time, where OpenAI may interleave tool calls (by `index`)
/// and text: once a tool call's block is open, it stays open, and whatever else comes (other
/// calls, text, reasoning) is held, up to [`STREAM_HELD_BYTES_MAX`], and written at the close
/// as whole blocks in the order it first came. A sequential stream (OpenAI's) thus streams its
/// text and its first call live, and further calls at the end.
///
/// An OpenAI error event becomes an Anthropic `error` event that ends the stream. A stream that
/// ends without `[DONE]` is closed as usual by [`finish`](Self::finish) when a `finish_reason`
/// came, else ended with an `error` event. After the end further input is ignored. Comments,
/// `event:` lines, events that are not JSON and events longer than
/// [`STREAM_EVENT_BYTES_MAX`](super::anthropic::STREAM_EVENT_BYTES_MAX) are skipped.
#[derive(Debug)]
pub struct StreamToMessages {
    model: String,
    events: EventReader,
    /// `message_start` has been written.
    started: bool,
    /// The upstream's id of the answer, for [`fallback_call_id`].
    message_id: String,
    /// The content block open now (its `content_block_start` written, not its stop).
    block: Option<Block>,
    /// The index the next content block gets.
    next_block: u64,
    /// The tool call whose block is open or was: after it, all content is held.
    live_call: Option<u64>,
    /// Content held back behind the tool call's block, in the order it came.
    held: Vec<Held>,
    /// The bytes in `held`.
    held_bytes: usize,
    /// Tool calls seen.
    calls: usize,
    /// An upstream refusal has been relayed as text.
    refused: bool,
    /// The upstream's `finish_reason`, once it came.
    finish: Option<Finish>,
    /// The stop string the upstream says it matched (vLLM's `stop_reason`).
    stop_sequence: Option<String>,
    usage: Option<Usage>,
    done: bool,
}

impl StreamToMessages {
    /// A translator whose `message_start` names `model_for_client`.
    pub fn new(model_for_client: &str) -> Self {
        StreamToMessages {
            model: model_for_client.to_owned(),
            events: EventReader::new(),
            started: false,
            message_id: String::new(),
            block: None,
            next_block: 0,
            live_call: None,
            held: Vec::new(),
            held_bytes: 0,
            calls: 0,
            refused: false,
            finish: None,
            stop_sequence: None,
            usage: None,
            done: false,
        }
    }

    /// Translate the events that `input` completes, appending Anthropic events to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut events = std::mem::take(&mut self.events);
        events.feed(input, |event| {
            // After the end further input is ignored.
            if self.done {
                return;
            }
            if let Some(data) = Data::parse(event.data) {
                self.on_data(data, out);
            }
        });
        self.events = events;
    }

    /// At the end of the upstream body: translate a last event that lacked its blank line, and
    /// if the stream is not over, close it (after a `finish_reason`) or end it with an error.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        events.finish(|event| {
            if self.done {
                return;
            }
            if let Some(data) = Data::parse(event.data) {
                self.on_data(data, out);
            }
        });
        self.events = events;
        if self.done {
            return;
        }
        if self.finish.is_some() {
            self.close(out);
        } else {
            self.push_error(out, "the upstream ended the stream early");
        }
    }

    /// `(prompt_tokens, completion_tokens)` as the upstream reported them (the prompt count
    /// includes cached tokens), once it has.
    pub fn usage(&self) -> Option<(u64, u64)> {
        self.usage.map(|u| (u.prompt, u.completion))
    }

    /// Whether the stream is over (`message_stop` or `error` written).
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn on_data(&mut self, data: Data, out: &mut Vec<u8>) {
        let v = match data {
            Data::Done => return self.close(out),
            Data::Json(v) => v,
        };
        if let Some(error) = v.get("error").filter(|e| !e.is_null()) {
            let message = match error {
                Value::String(s) => Some(s.as_str()),
                _ => error.get("message").and_then(Value::as_str),
            };
            self.push_error(
                out,
                message
                    .filter(|m| !m.is_empty())
                    .unwrap_or("the upstream reported an error"),
            );
            return;
        }
        let Some(choices) = v.get("choices").and_then(Value::as_array) else {
            return;
        };
        if !self.started {
            self.start(v.get("id").and_then(Value::as_str).unwrap_or_default(), out);
        }
        if let Some(usage) = v.get("usage").and_then(Usage::from_value) {
            self.usage = Some(usage);
        }
        let Some(choice) = choices.first() else {
            return;
        };
        if let Some(delta) = choice.get("delta") {
            if let Some(thinking) = reasoning_of(delta) {
                self.push_text(TextKind::Thinking, thinking, out);
            }
            for key in ["content", "refusal"] {
                if let Some(text) = delta.get(key).and_then(Value::as_str) {
                    if !text.is_empty() {
                        self.refused |= key == "refusal";
                        self.push_text(TextKind::Text, text, out);
                    }
                }
            }
            if let Some(Value::Array(calls)) = delta.get("tool_calls") {
                for (position, call) in calls.iter().enumerate() {
                    let function = call.get("function");
                    let arguments = function.and_then(|f| f.get("arguments"));
                    if arguments.is_some_and(|a| !a.is_string() && !a.is_null()) {
                        self.push_error(
                            out,
                            "the upstream sent tool call arguments that are not a string",
                        );
                        return;
                    }
                    let call = CallDelta {
                        index: call
                            .get("index")
                            .and_then(Value::as_u64)
                            .unwrap_or(position as u64),
                        id: str_at(call, "id"),
                        name: function.map_or("", |f| str_at(f, "name")),
                        arguments: arguments.and_then(Value::as_str).unwrap_or_default(),
                    };
                    self.push_call(call, out);
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(Finish::of(finish));
            self.stop_sequence = matched_stop(choice).map(str::to_owned);
        }
    }

    /// `message_start`, for the upstream's chunk id `id`.
    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        self.started = true;
        self.message_id = id.to_owned();
        out.extend_from_slice(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":",
        );
        push_message_id(out, id);
        out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
        write_str(out, &self.model);
        out.extend_from_slice(
            b",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n",
        );
    }

    /// Count `bytes` more held; past [`STREAM_HELD_BYTES_MAX`] the stream ends with an error
    /// (and `false` is returned).
    fn hold(&mut self, bytes: usize, out: &mut Vec<u8>) -> bool {
        self.held_bytes = self.held_bytes.saturating_add(bytes);
        if self.held_bytes > STREAM_HELD_BYTES_MAX {
            self.held.clear();
            self.push_error(
                out,
                "the upstream interleaved more content with a tool call than the gateway holds",
            );
            return false;
        }
        true
    }

    /// Text or reasoning: written as a delta of a block of its kind (the open block of another
    /// kind stops first), or held when a tool call's block came first.
    fn push_text(&mut self, kind: TextKind, text: &str, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.live_call.is_none() {
            if self.block.map(|b| b.kind) != Some(OpenKind::Text(kind)) {
                self.start_text_block(kind, out);
            }
            self.push_text_delta(kind, text, out);
            return;
        }
        if !self.hold(text.len(), out) {
            return;
        }
        match self.held.last_mut() {
            Some(Held::Text(k, held)) if *k == kind => held.push_str(text),
            _ => self.held.push(Held::Text(kind, text.to_owned())),
        }
    }

    /// A piece of a tool call: the first call opens its block (the open text block stops) and
    /// streams its arguments; the others are held.
    fn push_call(&mut self, call: CallDelta<'_>, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        if self.live_call == Some(call.index) {
            if self.block.is_some() {
                self.push_arguments(call.arguments, out);
            }
            return;
        }
        let held = self.held.iter_mut().find_map(|h| match h {
            Held::Call {
                index,
                id,
                name,
                arguments,
            } if *index == call.index => Some((id, name, arguments)),
            _ => None,
        });
        if let Some((id, name, arguments)) = held {
            // A call's id and name come in its first delta; some servers repeat them.
            if id.is_empty() {
                call.id.clone_into(id);
            }
            if name.is_empty() {
                call.name.clone_into(name);
            }
            arguments.push_str(call.arguments);
            let bytes = call.id.len() + call.name.len() + call.arguments.len();
            self.hold(bytes, out);
            return;
        }
        let ordinal = self.calls;
        self.calls += 1;
        let id = if call.id.is_empty() {
            fallback_call_id(&self.message_id, ordinal)
        } else {
            call.id.to_owned()
        };
        if self.live_call.is_none() {
            self.live_call = Some(call.index);
            self.start_call_block(call.index, &id, call.name, out);
            self.push_arguments(call.arguments, out);
            return;
        }
        if self.hold(id.len() + call.name.len() + call.arguments.len(), out) {
            self.held.push(Held::Call {
                index: call.index,
                id,
                name: call.name.to_owned(),
                arguments: call.arguments.to_owned(),
            });
        }
    }

    /// Stop the open block, if one is, and give the next block its index.
    fn next_index(&mut self, out: &mut Vec<u8>) -> u64 {
        self.stop_block(out);
        let index = self.next_block;
        self.next_block += 1;
        index
    }

    /// `content_block_start` of a `thinking` or `text` block.
    fn start_text_block(&mut self, kind: TextKind, out: &mut Vec<u8>) {
        let index = self.next_index(out);
        self.block = Some(Block {
            index,
            kind: OpenKind::Text(kind),
        });
        push_block_start(out, index);
        out.extend_from_slice(match kind {
            TextKind::Text => b"{\"type\":\"text\",\"text\":\"\"}}\n\n".as_slice(),
            TextKind::Thinking => {
                b"{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n"
            }
        });
    }

    /// `content_block_start` of a `tool_use` block for the call of OpenAI `index`.
    fn start_call_block(&mut self, index: u64, id: &str, name: &str, out: &mut Vec<u8>) {
        let block = self.next_index(out);
        self.block = Some(Block {
            index: block,
            kind: OpenKind::Call(index),
        });
        push_block_start(out, block);
        out.extend_from_slice(b"{\"type\":\"tool_use\",\"id\":");
        write_str(out, id);
        out.extend_from_slice(b",\"name\":");
        write_str(out, name);
        out.extend_from_slice(b",\"input\":{}}}\n\n");
    }

    /// A `text_delta` or `thinking_delta` of the open block.
    fn push_text_delta(&mut self, kind: TextKind, text: &str, out: &mut Vec<u8>) {
        push_delta_start(out, self.block.map_or(0, |b| b.index));
        out.extend_from_slice(match kind {
            TextKind::Text => b"{\"type\":\"text_delta\",\"text\":".as_slice(),
            TextKind::Thinking => b"{\"type\":\"thinking_delta\",\"thinking\":",
        });
        write_str(out, text);
        out.extend_from_slice(b"}}\n\n");
    }

    /// An `input_json_delta` of the open block, unless `arguments` is empty.
    fn push_arguments(&mut self, arguments: &str, out: &mut Vec<u8>) {
        if arguments.is_empty() {
            return;
        }
        push_delta_start(out, self.block.map_or(0, |b| b.index));
        out.extend_from_slice(b"{\"type\":\"input_json_delta\",\"partial_json\":");
        write_str(out, arguments);
        out.extend_from_slice(b"}}\n\n");
    }

    /// `content_block_stop` for the open block, if one is.
    fn stop_block(&mut self, out: &mut Vec<u8>) {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(
                b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":",
            );
            write_decimal(out, block.index);
            out.extend_from_slice(b"}\n\n");
        }
    }

    /// The held content, each a whole block.
    fn flush_held(&mut self, out: &mut Vec<u8>) {
        for held in std::mem::take(&mut self.held) {
            match held {
                Held::Text(kind, text) => {
                    self.start_text_block(kind, out);
                    self.push_text_delta(kind, &text, out);
                }
                Held::Call {
                    index,
                    id,
                    name,
                    arguments,
                } => {
                    self.start_call_block(index, &id, &name, out);
                    self.push_arguments(&arguments, out);
                }
            }
        }
        self.held_bytes = 0;
        self.stop_block(out);
    }

    /// The held content, `content_block_stop`, `message_delta`, `message_stop`.
    fn close(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start("", out);
        }
        self.stop_block(out);
        self.flush_held(out);
        let stop = stop_reason(
            self.finish,
            self.stop_sequence.is_some(),
            self.refused,
            self.calls > 0,
        );
        out.extend_from_slice(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
        );
        out.extend_from_slice(stop.as_bytes());
        out.extend_from_slice(b"\",");
        push_stop_sequence(
            out,
            self.stop_sequence
                .as_deref()
                .filter(|_| stop == "stop_sequence"),
        );
        out.extend_from_slice(b"},");
        match self.usage {
            Some(usage) => usage.push_usage(out),
            None => out.extend_from_slice(b"\"usage\":{\"output_tokens\":0}"),
        }
        out.extend_from_slice(b"}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        self.done = true;
    }

    fn push_error(&mut self, out: &mut Vec<u8>, message: &str) {
        out.extend_from_slice(b"event: error\ndata: ");
        push_anthropic_error(out, "api_error", message);
        out.extend_from_slice(b"\n\n");
        self.done = true;
    }
}

/// `v[key]` when it is a string, else `""`.
fn str_at<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// `event: content_block_start` up to the `content_block` key of block `index`.
fn push_block_start(out: &mut Vec<u8>, index: u64) {
    out.extend_from_slice(
        b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":",
    );
    write_decimal(out, index);
    out.extend_from_slice(b",\"content_block\":");
}

/// `event: content_block_delta` up to the `delta` key of block `index`.
fn push_delta_start(out: &mut Vec<u8>, index: u64) {
    out.extend_from_slice(
        b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
    );
    write_decimal(out, index);
    out.extend_from_slice(b",\"delta\":");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::anthropic::{self, STREAM_EVENT_BYTES_MAX};
    use crate::provider::testing;
    use proptest::prelude::*;
    use serde_json::json;

    fn to_chat(body: &Value, include_usage: bool) -> Result<Value, TranslateError> {
        testing::request_json(
            |b, out| messages_to_chat(b, "gpt-4o", include_usage, out),
            body,
        )
    }

    #[test]
    fn system_turns_and_knobs() {
        // Shaped like the Anthropic SDK's `client.messages.create(...)` body.
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "system": [
                {"type": "text", "text": "You are terse.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "\nAnswer in English."}
            ],
            "messages": [
                {"role": "user", "content": "Hello, Claude"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hm", "signature": "abc"},
                    {"type": "text", "text": "Hello!"}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is 2+2? "},
                    {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "user", "content": "And 3+3?"}
            ],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "stop_sequences": ["\n\nHuman:", "END"],
            "stream": true,
            "metadata": {"user_id": "u-1", "other": 1},
            "service_tier": "auto",
            "container": "c-1",
            "tools": [],
            "tool_choice": {"type": "none"},
            "thinking": {"type": "disabled"}
        });
        assert_eq!(
            to_chat(&body, true),
            Ok(json!({
                "model": "gpt-4o",
                "messages": [
                    {"role": "system", "content": "You are terse.\nAnswer in English."},
                    {"role": "user", "content": "Hello, Claude"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "What is 2+2? Be brief."},
                    {"role": "user", "content": "And 3+3?"}
                ],
                "max_tokens": 1024,
                "temperature": 0.5,
                "top_p": 0.9,
                "stop": ["\n\nHuman:", "END"],
                "stream": true,
                "stream_options": {"include_usage": true},
                "user": "u-1"
            }))
        );
        // Without `include_usage`, no `stream_options`.
        let v = to_chat(&body, false).expect("translates");
        assert_eq!(v["stream"], true);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn minimal_request_and_defaults() {
        // The Messages API's own first example.
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [{"role": "user", "content": "Hello, world"}]
        });
        assert_eq!(
            to_chat(&body, true),
            Ok(json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "Hello, world"}],
                "max_tokens": 1024
            }))
        );
        let mut b = body.clone();
        b["system"] = json!("Be kind.");
        b["stream"] = json!(false);
        b["stop_sequences"] = json!([]);
        b["metadata"] = json!({"user_id": null});
        b["temperature"] = Value::Null;
        b["tool_choice"] = Value::Null;
        b["thinking"] = Value::Null;
        let v = to_chat(&b, true).expect("translates");
        assert_eq!(
            v["messages"],
            json!([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello, world"}])
        );
        for key in ["stream", "stream_options", "stop", "user", "temperature"] {
            assert!(v.get(key).is_none(), "{key}");
        }
        // An empty system prompt is left out; empty blocks and texts are kept as they are.
        let mut b = body.clone();
        b["system"] = json!([]);
        b["messages"] = json!([
            {"role": "user", "content": []},
            {"role": "assistant", "content": [{"type": "redacted_thinking", "data": "x"}]},
            {"role": "user", "content": ""}
        ]);
        assert_eq!(
            to_chat(&b, false).expect("translates")["messages"],
            json!([
                {"role": "user", "content": ""},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": ""}
            ])
        );
    }

    #[test]
    fn unsupported_and_malformed_requests_are_refused() {
        let base = json!({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]});
        let with = |key: &str, value: Value| {
            let mut b = base.clone();
            b[key] = value;
            to_chat(&b, true)
        };
        let block = |block: Value| with("messages", json!([{"role": "user", "content": [block]}]));
        use TranslateError::{BadField, NotJson, Unsupported};
        let tools = json!([{"name": "get_weather", "input_schema": {"type": "object"}}]);
        // Server tools, whatever their version.
        for server in [
            json!({"type": "web_search_20250305", "name": "web_search", "max_uses": 5}),
            json!({"type": "bash_20250124", "name": "bash"}),
            json!({"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"}),
            json!({"type": "computer_20250124", "name": "computer", "display_width_px": 1024, "display_height_px": 768}),
            json!({"type": "code_execution_20250825", "name": "code_execution"}),
        ] {
            let mut list = tools.clone();
            list.as_array_mut().expect("array").push(server);
            assert_eq!(with("tools", list), Err(Unsupported("tools")));
        }
        assert_eq!(
            with(
                "tools",
                json!([{"name": "f", "input_schema": {"type": "object"}, "input_examples": [{}]}])
            ),
            Err(Unsupported("input_examples"))
        );
        for bad in [
            json!({"name": "f"}),
            json!([{"name": "f"}]),
            json!([{"input_schema": {}}]),
            json!([{"name": "", "input_schema": {}}]),
            json!([{"name": "f", "input_schema": "object"}]),
            json!([{"name": "f", "input_schema": {}, "description": 5}]),
            json!([{"name": "f", "input_schema": {}, "strict": "yes"}]),
            json!([{"name": "f", "input_schema": {}, "type": 1}]),
            json!(["f"]),
        ] {
            assert_eq!(with("tools", bad.clone()), Err(BadField("tools")), "{bad}");
        }
        // `any` and `tool` need tools; a choice is an object of a known type.
        for choice in [
            json!({"type": "any"}),
            json!({"type": "tool", "name": "f"}),
            json!("none"),
            json!("auto"),
            json!({"type": "required"}),
            json!({}),
        ] {
            assert_eq!(with("tool_choice", choice), Err(BadField("tool_choice")));
        }
        let mut with_tools = base.clone();
        with_tools["tools"] = tools.clone();
        for choice in [
            json!({"type": "tool"}),
            json!({"type": "tool", "name": 5}),
            json!({"type": "auto", "disable_parallel_tool_use": "yes"}),
        ] {
            let mut b = with_tools.clone();
            b["tool_choice"] = choice;
            assert_eq!(to_chat(&b, true), Err(BadField("tool_choice")));
        }
        assert_eq!(
            with(
                "thinking",
                json!({"type": "enabled", "budget_tokens": 2048})
            ),
            Err(Unsupported("thinking"))
        );
        assert_eq!(
            with(
                "mcp_servers",
                json!([{"type": "url", "url": "https://x", "name": "x"}])
            ),
            Err(Unsupported("mcp_servers"))
        );
        assert_eq!(
            with(
                "output_format",
                json!({"type": "json_schema", "schema": {}})
            ),
            Err(Unsupported("output_format"))
        );
        // Server-held conversation state (the anthropic SDK's tool runner asks for it).
        for thread in [
            json!({"type": "create"}),
            json!({"type": "continue", "previous_message_id": "msg_1"}),
        ] {
            assert_eq!(with("thread", thread), Err(Unsupported("thread")));
        }
        assert!(with("thread", Value::Null).is_ok());
        assert_eq!(
            block(json!({"type": "image", "source": {"type": "file", "file_id": "file_1"}})),
            Err(Unsupported("image"))
        );
        for source in [
            json!({"type": "base64", "data": "iVBOR"}),
            json!({"type": "base64", "media_type": "image/png"}),
            json!({"type": "url"}),
            json!({"url": "https://x"}),
        ] {
            assert_eq!(
                block(json!({"type": "image", "source": source})),
                Err(BadField("image"))
            );
        }
        assert_eq!(block(json!({"type": "image"})), Err(BadField("image")));
        assert_eq!(
            block(
                json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}})
            ),
            Err(Unsupported("document"))
        );
        // Images inside a tool result, and other blocks there.
        for part in [
            json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}}),
            json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}),
            json!({"type": "search_result", "source": "s", "title": "t", "content": []}),
        ] {
            assert_eq!(
                block(
                    json!({"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "a"}, part]})
                ),
                Err(Unsupported("tool_result"))
            );
        }
        for bad in [
            json!({"type": "tool_result", "content": "x"}),
            json!({"type": "tool_result", "tool_use_id": 5, "content": "x"}),
            json!({"type": "tool_result", "tool_use_id": "t1", "content": 5}),
            json!({"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text"}]}),
            json!({"type": "tool_result", "tool_use_id": "t1", "content": ["x"]}),
            json!({"type": "tool_result", "tool_use_id": "t1", "is_error": "yes"}),
        ] {
            assert_eq!(block(bad.clone()), Err(BadField("tool_result")), "{bad}");
        }
        // Tool use in the wrong turn, or malformed.
        let assistant = |block: Value| {
            with(
                "messages",
                json!([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": [block]}]),
            )
        };
        assert_eq!(
            block(json!({"type": "tool_use", "id": "t1", "name": "f", "input": {}})),
            Err(BadField("tool_use"))
        );
        assert_eq!(
            assistant(json!({"type": "tool_result", "tool_use_id": "t1", "content": "x"})),
            Err(BadField("tool_result"))
        );
        for bad in [
            json!({"type": "tool_use", "name": "f", "input": {}}),
            json!({"type": "tool_use", "id": "t1", "input": {}}),
            json!({"type": "tool_use", "id": "t1", "name": "f"}),
            json!({"type": "tool_use", "id": "t1", "name": "f", "input": "{}"}),
            json!({"type": "tool_use", "id": "", "name": "f", "input": {}}),
        ] {
            assert_eq!(assistant(bad.clone()), Err(BadField("tool_use")), "{bad}");
        }
        assert_eq!(
            assistant(json!({"type": "image", "source": {"type": "url", "url": "https://x"}})),
            Err(Unsupported("image"))
        );
        assert_eq!(
            assistant(
                json!({"type": "server_tool_use", "id": "s1", "name": "web_search", "input": {}})
            ),
            Err(Unsupported("content"))
        );
        assert_eq!(
            block(json!({"type": "search_result", "source": "s", "title": "t", "content": []})),
            Err(Unsupported("content"))
        );
        assert_eq!(block(json!({"text": "no type"})), Err(BadField("content")));
        assert_eq!(block(json!({"type": "text"})), Err(BadField("content")));
        assert_eq!(block(json!("bare string")), Err(BadField("content")));

        let mut missing = base.clone();
        missing
            .as_object_mut()
            .expect("object")
            .remove("max_tokens");
        assert_eq!(to_chat(&missing, true), Err(BadField("max_tokens")));
        assert_eq!(with("max_tokens", Value::Null), Err(BadField("max_tokens")));
        assert_eq!(with("max_tokens", json!(-1)), Err(BadField("max_tokens")));
        assert_eq!(with("max_tokens", json!(1.5)), Err(BadField("max_tokens")));
        assert_eq!(with("max_tokens", json!("10")), Err(BadField("max_tokens")));
        assert_eq!(
            with("temperature", json!("hot")),
            Err(BadField("temperature"))
        );
        assert_eq!(with("top_p", json!([1])), Err(BadField("top_p")));
        assert_eq!(
            with("stop_sequences", json!("END")),
            Err(BadField("stop_sequences"))
        );
        assert_eq!(
            with("stop_sequences", json!(["a", 1])),
            Err(BadField("stop_sequences"))
        );
        assert_eq!(with("stream", json!("yes")), Err(BadField("stream")));
        assert_eq!(with("metadata", json!("u-1")), Err(BadField("metadata")));
        assert_eq!(
            with("metadata", json!({"user_id": 7})),
            Err(BadField("metadata"))
        );
        assert_eq!(with("system", json!(5)), Err(BadField("system")));
        assert_eq!(
            with("system", json!([{"type": "image"}])),
            Err(BadField("system"))
        );
        assert_eq!(with("system", json!(["bare"])), Err(BadField("system")));
        assert_eq!(with("messages", json!([])), Err(BadField("messages")));
        assert_eq!(with("messages", json!("Hi")), Err(BadField("messages")));
        assert_eq!(with("messages", Value::Null), Err(BadField("messages")));
        assert_eq!(with("messages", json!(["Hi"])), Err(BadField("messages")));
        assert_eq!(
            with("messages", json!([{"role": "system", "content": "Hi"}])),
            Err(BadField("role"))
        );
        assert_eq!(
            with("messages", json!([{"content": "Hi"}])),
            Err(BadField("role"))
        );
        assert_eq!(
            with("messages", json!([{"role": "user", "content": 5}])),
            Err(BadField("content"))
        );
        assert_eq!(
            with("messages", json!([{"role": "user"}])),
            Err(BadField("content"))
        );

        let mut out = b"kept".to_vec();
        for body in [&b"[1,2]"[..], b"\"s\"", b"{", b"{} {}", b"", b"null"] {
            assert_eq!(messages_to_chat(body, "m", true, &mut out), Err(NotJson));
        }
        let tools = br#"{"max_tokens":1,"messages":[{"role":"user","content":"Hi"}],"tools":[{"type":"web_search_20250305","name":"web_search"}]}"#;
        assert_eq!(
            messages_to_chat(tools, "m", true, &mut out),
            Err(Unsupported("tools"))
        );
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    #[test]
    fn tools_and_tool_choice_map_to_functions() {
        // Shaped like the Messages API reference's tool use example, as the SDK sends it.
        let schema = json!({
            "type": "object",
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
            },
            "required": ["location"]
        });
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [
                {"name": "get_weather", "description": "Get the current weather in a given location", "input_schema": schema},
                {"type": "custom", "name": "get_time", "input_schema": {"type": "object", "properties": {}}, "strict": true, "cache_control": {"type": "ephemeral"}, "eager_input_streaming": true}
            ],
            "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}]
        });
        let v = to_chat(&body, false).expect("translates");
        assert_eq!(
            v,
            json!({
                "model": "gpt-4o",
                "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}],
                "max_tokens": 1024,
                "tools": [
                    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a given location", "parameters": schema}},
                    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}, "strict": true}}
                ]
            })
        );
        let with_choice = |choice: Value| {
            let mut b = body.clone();
            b["tool_choice"] = choice;
            to_chat(&b, false).expect("translates")
        };
        for (choice, openai, parallel) in [
            (json!({"type": "auto"}), json!("auto"), None),
            (json!({"type": "any"}), json!("required"), None),
            (
                json!({"type": "tool", "name": "get_weather"}),
                json!({"type": "function", "function": {"name": "get_weather"}}),
                None,
            ),
            (json!({"type": "none"}), json!("none"), None),
            (
                json!({"type": "auto", "disable_parallel_tool_use": true}),
                json!("auto"),
                Some(false),
            ),
            (
                json!({"type": "any", "disable_parallel_tool_use": false}),
                json!("required"),
                None,
            ),
            (
                json!({"type": "tool", "name": "get_time", "disable_parallel_tool_use": true}),
                json!({"type": "function", "function": {"name": "get_time"}}),
                Some(false),
            ),
        ] {
            let v = with_choice(choice.clone());
            assert_eq!(v["tool_choice"], openai, "{choice}");
            assert_eq!(
                v.get("parallel_tool_calls").and_then(Value::as_bool),
                parallel,
                "{choice}"
            );
        }
        // No tools: `auto` and `none` say nothing, as OpenAI refuses a choice without tools.
        let mut b = body.clone();
        b["tools"] = json!([]);
        for choice in [
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            json!({"type": "none"}),
        ] {
            b["tool_choice"] = choice;
            let v = to_chat(&b, false).expect("translates");
            for key in ["tools", "tool_choice", "parallel_tool_calls"] {
                assert!(v.get(key).is_none(), "{key}");
            }
        }
    }

    /// An agent's loop: text and tool calls, their results (one an error), then more text.
    #[test]
    fn tool_use_and_tool_result_turns() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
            "messages": [
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "Two cities.", "signature": ""},
                    {"type": "text", "text": "Checking both."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"location": "Paris", "unit": "celsius"}},
                    {"type": "tool_use", "id": "call_02", "name": "get_weather", "input": {"location": "Rome"}, "cache_control": {"type": "ephemeral"}}
                ]},
                {"role": "user", "content": [
                    {"type": "text", "text": "Here you go."},
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": "15 degrees"},
                    {"type": "tool_result", "tool_use_id": "call_02", "is_error": true, "content": [
                        {"type": "text", "text": "timeout"},
                        {"type": "text", "text": "retry later", "cache_control": {"type": "ephemeral"}}
                    ]}
                ]},
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_03", "name": "get_weather", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_03", "is_error": false},
                    {"type": "tool_result", "tool_use_id": "toolu_03", "content": []}
                ]},
                {"role": "assistant", "content": "Paris: 15 degrees."}
            ]
        });
        let v = to_chat(&body, false).expect("translates");
        assert_eq!(
            v["messages"],
            json!([
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": "Checking both.", "tool_calls": [
                    {"id": "toolu_01", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Paris\",\"unit\":\"celsius\"}"}},
                    {"id": "call_02", "type": "function", "function": {"name": "get_weather", "arguments": "{\"location\":\"Rome\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_01", "content": "15 degrees"},
                {"role": "tool", "tool_call_id": "call_02", "content": "Error: timeout\nretry later"},
                {"role": "user", "content": "Here you go."},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "toolu_03", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ]},
                {"role": "tool", "tool_call_id": "toolu_03", "content": ""},
                {"role": "tool", "tool_call_id": "toolu_03", "content": ""},
                {"role": "assistant", "content": "Paris: 15 degrees."}
            ])
        );
        // An error with no content is the prefix alone.
        let mut b = body.clone();
        b["messages"][4]["content"][0]["is_error"] = json!(true);
        let v = to_chat(&b, false).expect("translates");
        assert_eq!(v["messages"][6]["content"], TOOL_ERROR_PREFIX);
        // The arguments are the input as JSON, whatever it holds.
        let args = v["messages"][1]["tool_calls"][0]["function"]["arguments"]
            .as_str()
            .expect("string");
        assert_eq!(
            serde_json::from_str::<Value>(args).expect("JSON"),
            body["messages"][1]["content"][2]["input"]
        );
    }

    #[test]
    fn images_become_image_url_parts() {
        let body = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 1024,
            "messages": [
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/4AAQSkZJRg=="}},
                    {"type": "text", "text": "Compare with"},
                    {"type": "image", "source": {"type": "url", "url": "https://upload.wikimedia.org/a.jpg"}, "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "please."}
                ]},
                {"role": "assistant", "content": "Same cat."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]
        });
        assert_eq!(
            to_chat(&body, false).expect("translates")["messages"],
            json!([
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQSkZJRg=="}},
                    {"type": "text", "text": "Compare with"},
                    {"type": "image_url", "image_url": {"url": "https://upload.wikimedia.org/a.jpg"}},
                    {"type": "text", "text": "please."}
                ]},
                {"role": "assistant", "content": "Same cat."},
                {"role": "user", "content": "ab"}
            ])
        );
        // Beside tool results: the tool messages first, then the image.
        let body = json!({
            "max_tokens": 5,
            "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": "saved"}]},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}
            ]}]
        });
        assert_eq!(
            to_chat(&body, false).expect("translates")["messages"],
            json!([
                {"role": "tool", "tool_call_id": "t1", "content": "saved"},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}
            ])
        );
    }

    /// `anthropic::chat_to_messages(messages_to_chat(x))` keeps a plain text request.
    #[test]
    fn round_trip_through_chat() {
        let x = json!({
            "model": "claude-sonnet-4-5",
            "max_tokens": 300,
            "system": "You are terse.",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Hello. \"Quoted\"\n"}]},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2? 🦀"}]}
            ],
            "temperature": 0.25,
            "top_p": 0.5,
            "stop_sequences": ["END"],
            "stream": true,
            "metadata": {"user_id": "u-1"}
        });
        let mut chat = Vec::new();
        messages_to_chat(x.to_string().as_bytes(), "gpt-4o", true, &mut chat).expect("to chat");
        let mut back = Vec::new();
        anthropic::chat_to_messages(&chat, "claude-sonnet-4-5", 1, &mut back).expect("to messages");
        let back: Value = serde_json::from_slice(&back).expect("valid JSON");
        assert_eq!(back, x);

        // String content comes back as one text block.
        let x = json!({"max_tokens": 5, "messages": [{"role": "user", "content": "Hi"}]});
        let mut chat = Vec::new();
        messages_to_chat(x.to_string().as_bytes(), "gpt-4o", false, &mut chat).expect("to chat");
        let mut back = Vec::new();
        anthropic::chat_to_messages(&chat, "c", 1, &mut back).expect("to messages");
        let back: Value = serde_json::from_slice(&back).expect("valid JSON");
        assert_eq!(
            back["messages"],
            json!([{"role": "user", "content": [{"type": "text", "text": "Hi"}]}])
        );
        assert_eq!(back["max_tokens"], 5);
        assert!(back.get("system").is_none());
    }

    /// A chat completion as OpenAI's API reference shows it.
    const COMPLETION: &str = r#"{
      "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
      "object": "chat.completion",
      "created": 1741569952,
      "model": "gpt-4.1-2025-04-14",
      "choices": [
        {
          "index": 0,
          "message": {
            "role": "assistant",
            "content": "Hello! How can I \"assist\" you today?\n",
            "refusal": null,
            "annotations": []
          },
          "logprobs": null,
          "finish_reason": "stop"
        }
      ],
      "usage": {
        "prompt_tokens": 2019,
        "completion_tokens": 10,
        "total_tokens": 2029,
        "prompt_tokens_details": {"cached_tokens": 1920, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0, "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}
      },
      "service_tier": "default"
    }"#;

    fn to_message(body: &str) -> Result<Value, TranslateError> {
        let mut out = Vec::new();
        chat_to_message(body.as_bytes(), "claude-sonnet-4-5", &mut out)?;
        Ok(serde_json::from_slice(&out).expect("valid JSON"))
    }

    #[test]
    fn response_maps_text_usage_and_stop_reason() {
        let mut out = Vec::new();
        chat_to_message(COMPLETION.as_bytes(), "claude-sonnet-4-5", &mut out).expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"msg_chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","type":"message","role":"assistant","model":"claude-sonnet-4-5","#,
                r#""content":[{"type":"text","text":"Hello! How can I \"assist\" you today?\n"}],"#,
                r#""stop_reason":"end_turn","stop_sequence":null,"#,
                r#""usage":{"input_tokens":99,"cache_read_input_tokens":1920,"output_tokens":10}}"#
            )
        );

        for (finish, stop) in [
            ("\"stop\"", "end_turn"),
            ("\"length\"", "max_tokens"),
            ("\"content_filter\"", "refusal"),
            ("\"tool_calls\"", "end_turn"),
            ("\"function_call\"", "end_turn"),
            ("\"eos\"", "end_turn"),
            ("null", "end_turn"),
        ] {
            let body = format!(
                r#"{{"id":"msg_1","choices":[{{"index":0,"message":{{"role":"assistant","content":null}},"finish_reason":{finish}}}]}}"#
            );
            let v = to_message(&body).expect("translates");
            assert_eq!(v["stop_reason"], stop, "{finish}");
            assert_eq!(v["id"], "msg_1", "an msg_ id is kept as it is");
            assert_eq!(v["content"], json!([]), "null content: no block");
            assert_eq!(v["stop_sequence"], Value::Null);
            assert_eq!(
                v["usage"],
                json!({"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 0})
            );
        }

        // vLLM names the stop string it matched.
        let v = to_message(
            r#"{"id":"cmpl-1","choices":[{"index":0,"message":{"role":"assistant","content":"a"},"finish_reason":"stop","stop_reason":"END"}],"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}"#,
        )
        .expect("translates");
        assert_eq!(v["stop_reason"], "stop_sequence");
        assert_eq!(v["stop_sequence"], "END");
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 5, "cache_read_input_tokens": 0, "output_tokens": 1})
        );
        // ... or the token id it stopped on, which is no stop sequence.
        let v = to_message(
            r#"{"id":"x","choices":[{"message":{"content":"a"},"finish_reason":"stop","stop_reason":128009}]}"#,
        )
        .expect("translates");
        assert_eq!(v["stop_reason"], "end_turn");
        assert_eq!(v["stop_sequence"], Value::Null);

        // A refusal stands in for missing content.
        let v = to_message(
            r#"{"id":"x","choices":[{"message":{"content":null,"refusal":"I can't help with that."},"finish_reason":"stop"}]}"#,
        )
        .expect("translates");
        assert_eq!(
            v["content"],
            json!([{"type": "text", "text": "I can't help with that."}])
        );
        assert_eq!(v["stop_reason"], "refusal");

        // Cached tokens above the prompt count saturate.
        let v = to_message(
            r#"{"choices":[{"message":{"content":""}}],"usage":{"prompt_tokens":1,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":3}}}"#,
        )
        .expect("translates");
        assert_eq!(v["id"], "msg_");
        assert_eq!(v["content"], json!([]));
        assert_eq!(v["usage"]["input_tokens"], 0);
        assert_eq!(v["usage"]["cache_read_input_tokens"], 3);
    }

    #[test]
    fn malformed_responses_are_refused() {
        use TranslateError::{BadField, NotJson};
        let error = r#"{"error":{"message":"Rate limit reached","type":"requests","param":null,"code":"rate_limit_exceeded"}}"#;
        assert_eq!(to_message(error), Err(BadField("choices")));
        assert_eq!(to_message(r#"{"choices":[]}"#), Err(BadField("choices")));
        assert_eq!(to_message(r#"{"choices":{}}"#), Err(BadField("choices")));
        assert_eq!(
            to_message(r#"{"choices":[{"message":{"content":5}}]}"#),
            Err(BadField("content"))
        );
        let mut out = b"kept".to_vec();
        for body in [&b"[]"[..], b"", b"{", b"{}{}"] {
            assert_eq!(chat_to_message(body, "m", &mut out), Err(NotJson));
        }
        assert_eq!(
            chat_to_message(error.as_bytes(), "m", &mut out),
            Err(BadField("choices"))
        );
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    #[test]
    fn tool_calls_become_tool_use_blocks() {
        // OpenAI's function calling answer, with text and reasoning beside two calls.
        let body = r#"{
          "id": "chatcmpl-abc123",
          "object": "chat.completion",
          "created": 1699896916,
          "model": "gpt-4o-mini",
          "choices": [{
            "index": 0,
            "message": {
              "role": "assistant",
              "content": "Let me look.",
              "reasoning": "Two calls.",
              "tool_calls": [
                {"id": "call_abc123", "type": "function", "function": {"name": "get_current_weather", "arguments": "{\n\"location\": \"Boston, MA\"\n}"}},
                {"id": "call_def456", "type": "function", "function": {"name": "get_time", "arguments": ""}}
              ]
            },
            "logprobs": null,
            "finish_reason": "tool_calls"
          }],
          "usage": {"prompt_tokens": 82, "completion_tokens": 17, "total_tokens": 99}
        }"#;
        let mut out = Vec::new();
        chat_to_message(body.as_bytes(), "claude-sonnet-4-5", &mut out).expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"msg_chatcmpl-abc123","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":["#,
                r#"{"type":"thinking","thinking":"Two calls.","signature":""},"#,
                r#"{"type":"text","text":"Let me look."},"#,
                r#"{"type":"tool_use","id":"call_abc123","name":"get_current_weather","input":{"location":"Boston, MA"}},"#,
                r#"{"type":"tool_use","id":"call_def456","name":"get_time","input":{}}"#,
                r#"],"stop_reason":"tool_use","stop_sequence":null,"#,
                r#""usage":{"input_tokens":82,"cache_read_input_tokens":0,"output_tokens":17}}"#
            )
        );

        // No text, no id (a made-up one), `stop` as vLLM says for a forced call.
        let v = to_message(
            r#"{"id":"cmpl-9","choices":[{"message":{"content":null,"tool_calls":[{"type":"function","function":{"name":"f","arguments":" {\"a\": [1, \"\u00e9\"]} "}},{"id":"","function":{"name":"g"}}]},"finish_reason":"stop"}]}"#,
        )
        .expect("translates");
        assert_eq!(
            v["content"],
            json!([
                {"type": "tool_use", "id": "toolu_cmpl-9_0", "name": "f", "input": {"a": [1, "é"]}},
                {"type": "tool_use", "id": "toolu_cmpl-9_1", "name": "g", "input": {}}
            ])
        );
        assert_eq!(v["stop_reason"], "tool_use");
        // Cut by max_tokens (with whole arguments), or filtered: the finish reason wins.
        for (finish, stop) in [("length", "max_tokens"), ("content_filter", "refusal")] {
            let v = to_message(&format!(
                r#"{{"choices":[{{"message":{{"tool_calls":[{{"id":"c","function":{{"name":"f","arguments":"{{}}"}}}}]}},"finish_reason":"{finish}"}}]}}"#
            ))
            .expect("translates");
            assert_eq!(v["stop_reason"], stop);
        }
        // `tool_calls` as finish reason without a call, and `null` calls.
        let v = to_message(
            r#"{"choices":[{"message":{"content":"x","tool_calls":null},"finish_reason":"tool_calls"}]}"#,
        )
        .expect("translates");
        assert_eq!(v["content"], json!([{"type": "text", "text": "x"}]));
        assert_eq!(v["stop_reason"], "end_turn");

        // Arguments that are no JSON object, and malformed calls: a 502.
        for calls in [
            r#"[{"id":"c","function":{"name":"f","arguments":"{\"a\":"}}]"#,
            r#"[{"id":"c","function":{"name":"f","arguments":"[1]"}}]"#,
            r#"[{"id":"c","function":{"name":"f","arguments":"\"x\""}}]"#,
            r#"[{"id":"c","function":{"name":"f","arguments":{"a":1}}}]"#,
            r#"[{"id":"c","function":{"arguments":"{}"}}]"#,
            r#"[{"id":"c"}]"#,
            r#"{"id":"c"}"#,
        ] {
            let body = format!(
                r#"{{"choices":[{{"message":{{"content":"x","tool_calls":{calls}}},"finish_reason":"tool_calls"}}]}}"#
            );
            assert_eq!(
                to_message(&body),
                Err(TranslateError::BadField("tool_calls")),
                "{calls}"
            );
        }
    }

    fn anthropic_error(status: u16, body: &[u8]) -> Value {
        let mut out = Vec::new();
        error_to_anthropic(status, body, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn errors_map_to_anthropic_shape() {
        let openai = br#"{"error":{"message":"Incorrect API key provided: sk-abc.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
        let mut out = Vec::new();
        error_to_anthropic(401, openai, &mut out);
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            r#"{"type":"error","error":{"type":"authentication_error","message":"Incorrect API key provided: sk-abc."}}"#
        );
        for (status, kind) in [
            (400, "invalid_request_error"),
            (401, "authentication_error"),
            (403, "permission_error"),
            (404, "not_found_error"),
            (413, "request_too_large"),
            (429, "rate_limit_error"),
            (500, "api_error"),
            (503, "overloaded_error"),
            (529, "overloaded_error"),
            (402, "invalid_request_error"),
            (422, "invalid_request_error"),
            (502, "api_error"),
            (504, "api_error"),
            (200, "api_error"),
        ] {
            assert_eq!(
                anthropic_error(status, b"not json"),
                json!({"type": "error", "error": {"type": kind, "message": format!("the upstream answered HTTP {status}")}}),
                "{status}"
            );
        }
        // vLLM's older shape, a bare string, and an empty message.
        assert_eq!(
            anthropic_error(400, br#"{"object":"error","message":"max_tokens is too large","type":"BadRequestError","param":null,"code":400}"#)["error"]["message"],
            "max_tokens is too large"
        );
        assert_eq!(
            anthropic_error(500, br#"{"error":"boom"}"#)["error"]["message"],
            "boom"
        );
        assert_eq!(
            anthropic_error(429, br#"{"error":{"message":"","type":"requests"}}"#)["error"],
            json!({"type": "rate_limit_error", "message": "the upstream answered HTTP 429"})
        );
    }

    const HEAD: &str = r#"data: {"id":"chatcmpl-123","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-mini","system_fingerprint":"fp_44709d6fcb","choices":"#;

    /// An OpenAI stream with `stream_options.include_usage`, as the API sends it.
    fn openai_stream(usage: bool) -> String {
        let mut s = String::new();
        for choices in [
            r#"[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"[{"index":0,"delta":{"content":"Hello"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"[{"index":0,"delta":{"content":", \"w\u00f6rld\"\n!"},"logprobs":null,"finish_reason":null}],"usage":null}"#,
            r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}],"usage":null}"#,
        ] {
            s.push_str(HEAD);
            s.push_str(choices);
            s.push_str("\n\n");
        }
        if usage {
            s.push_str(HEAD);
            s.push_str(r#"[],"usage":{"prompt_tokens":35,"completion_tokens":15,"total_tokens":50,"prompt_tokens_details":{"cached_tokens":10,"audio_tokens":0}}}"#);
            s.push_str("\n\n");
        }
        s.push_str("data: [DONE]\n\n");
        s
    }

    fn expected(usage: bool) -> String {
        let mut s = String::new();
        s.push_str("event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_chatcmpl-123\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":0,\"output_tokens\":0}}}\n\n");
        s.push_str("event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n");
        s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n");
        s.push_str("event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\", \\\"wörld\\\"\\n!\"}}\n\n");
        s.push_str(
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        );
        s.push_str("event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\",\"stop_sequence\":null},");
        if usage {
            s.push_str("\"usage\":{\"input_tokens\":25,\"cache_read_input_tokens\":10,\"output_tokens\":15}}\n\n");
        } else {
            s.push_str("\"usage\":{\"output_tokens\":0}}\n\n");
        }
        s.push_str("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
        s
    }

    fn translate_in_pieces(stream: &[u8], cuts: &[usize]) -> (Vec<u8>, Option<(u64, u64)>) {
        testing::translate_in_pieces(StreamToMessages::new("claude-sonnet-4-5"), stream, cuts)
    }

    /// The events of an Anthropic stream as (name, data), checking each is `event:` and `data:`
    /// lines with JSON data whose `type` is the event's name.
    fn events(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).expect("UTF-8");
        assert!(text.is_empty() || text.ends_with("\n\n"), "{text}");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("event line");
                let data = data.strip_prefix("data: ").expect("data line");
                let v: Value = serde_json::from_str(data).expect("valid JSON");
                assert_eq!(v["type"], name);
                (name.to_owned(), v)
            })
            .collect()
    }

    #[test]
    fn stream_translates_to_anthropic_events() {
        for usage in [false, true] {
            let (out, reported) = translate_in_pieces(openai_stream(usage).as_bytes(), &[]);
            assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(usage));
            assert_eq!(reported, usage.then_some((35, 15)));
            events(&out);
        }
        // CRLF line ends, and one byte at a time.
        let crlf = openai_stream(true).replace('\n', "\r\n");
        let cuts: Vec<usize> = (0..crlf.len()).collect();
        let (out, _) = translate_in_pieces(crlf.as_bytes(), &cuts);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        // Comments, `event:` lines and `data:` without its space change nothing.
        let noisy = format!(
            ": ping\n\nevent: chunk\n{}",
            openai_stream(true).replace("data: ", "data:")
        );
        let (out, _) = translate_in_pieces(noisy.as_bytes(), &[]);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        // Input after the end is ignored.
        let mut t = StreamToMessages::new("claude-sonnet-4-5");
        let mut out = Vec::new();
        t.feed(openai_stream(true).as_bytes(), &mut out);
        assert!(t.is_done());
        let len = out.len();
        t.feed(openai_stream(true).as_bytes(), &mut out);
        t.finish(&mut out);
        assert_eq!(out.len(), len);
    }

    #[test]
    fn reasoning_becomes_a_thinking_block_before_the_text() {
        for key in ["reasoning_content", "reasoning"] {
            let body = format!(
                r#"{{"id":"c","choices":[{{"index":0,"message":{{"role":"assistant","content":"42","{key}":"Think: 6 x 7."}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":5,"completion_tokens":9}}}}"#
            );
            let v = to_message(&body).expect("translates");
            assert_eq!(
                v["content"],
                json!([
                    {"type": "thinking", "thinking": "Think: 6 x 7.", "signature": ""},
                    {"type": "text", "text": "42"}
                ]),
                "{key}"
            );
        }
        // Reasoning alone (the answer cut by max_tokens), and an empty reasoning field.
        let v = to_message(
            r#"{"choices":[{"message":{"content":null,"reasoning":"Hmm"},"finish_reason":"length"}]}"#,
        )
        .expect("translates");
        assert_eq!(
            v["content"],
            json!([{"type": "thinking", "thinking": "Hmm", "signature": ""}])
        );
        let v = to_message(
            r#"{"choices":[{"message":{"content":"hi","reasoning_content":""},"finish_reason":"stop"}]}"#,
        )
        .expect("translates");
        assert_eq!(v["content"], json!([{"type": "text", "text": "hi"}]));
    }

    #[test]
    fn streamed_reasoning_is_a_thinking_block_then_the_text_block() {
        let chunk = |choices: &str| format!("{HEAD}{choices}}}\n\n");
        let stream = chunk(
            r#"[{"index":0,"delta":{"role":"assistant","reasoning_content":"Think"},"finish_reason":null}]"#,
        ) + &chunk(
            r#"[{"index":0,"delta":{"reasoning":" more"},"finish_reason":null}]"#,
        ) + &chunk(r#"[{"index":0,"delta":{"content":"42"},"finish_reason":null}]"#)
            + &chunk(r#"[{"index":0,"delta":{},"finish_reason":"stop"}]"#)
            + "data: [DONE]\n\n";
        // The same events however the stream is cut.
        let whole = translate_in_pieces(stream.as_bytes(), &[]).0;
        let cuts: Vec<usize> = (0..stream.len()).step_by(7).collect();
        assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts).0, whole);
        let ev = events(&whole);
        let kinds: Vec<String> = ev
            .iter()
            .map(|(name, v)| match name.as_str() {
                "content_block_start" => {
                    format!("start {} {}", v["index"], v["content_block"]["type"])
                }
                "content_block_delta" => format!("delta {} {}", v["index"], v["delta"]["type"]),
                "content_block_stop" => format!("stop {}", v["index"]),
                other => other.to_owned(),
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "message_start",
                "start 0 \"thinking\"",
                "delta 0 \"thinking_delta\"",
                "delta 0 \"thinking_delta\"",
                "stop 0",
                "start 1 \"text\"",
                "delta 1 \"text_delta\"",
                "stop 1",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(ev[2].1["delta"]["thinking"], "Think");
        assert_eq!(ev[3].1["delta"]["thinking"], " more");
        assert_eq!(ev[1].1["content_block"]["signature"], "");
        assert_eq!(ev[6].1["delta"]["text"], "42");
    }

    #[test]
    fn stream_stop_reasons_and_empty_answers() {
        let chunk = |choices: &str| format!("{HEAD}{choices}}}\n\n");
        // A stop string named by vLLM, and no text at all: no content block.
        let stream = chunk(
            r#"[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]"#,
        ) + &chunk(
            r#"[{"index":0,"delta":{},"finish_reason":"stop","stop_reason":"END"}]"#,
        ) + "data: [DONE]\n\n";
        let (out, usage) = translate_in_pieces(stream.as_bytes(), &[]);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert_eq!(
            ev[1].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "stop_sequence", "stop_sequence": "END"}, "usage": {"output_tokens": 0}})
        );
        assert_eq!(usage, None);

        // A refusal streamed as text.
        let stream = chunk(r#"[{"index":0,"delta":{"refusal":"No."},"finish_reason":null}]"#)
            + &chunk(r#"[{"index":0,"delta":{},"finish_reason":"stop"}]"#)
            + "data: [DONE]\n\n";
        let ev = events(&translate_in_pieces(stream.as_bytes(), &[]).0);
        assert_eq!(ev[2].1["delta"]["text"], "No.");
        assert_eq!(ev[4].1["delta"]["stop_reason"], "refusal");

        // `[DONE]` alone: an empty message.
        let ev = events(&translate_in_pieces(b"data: [DONE]\n\n", &[]).0);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
        assert_eq!(ev[0].1["message"]["id"], "msg_");
        assert_eq!(ev[1].1["delta"]["stop_reason"], "end_turn");
    }

    #[test]
    fn stream_error_and_truncation() {
        // An error event mid-stream ends it.
        let stream = format!(
            "{HEAD}[{{\"index\":0,\"delta\":{{\"content\":\"Hi\"}},\"finish_reason\":null}}]}}\n\n\
             data: {{\"error\":{{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}}}\n\n\
             data: [DONE]\n\n"
        );
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let ev = events(&out);
        let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "error"
            ]
        );
        assert_eq!(
            ev[3].1,
            json!({"type": "error", "error": {"type": "api_error", "message": "The server had an error"}})
        );

        // Cut off after the finish_reason (before the usage chunk and [DONE]): closed as usual.
        let full = openai_stream(true);
        let cut = full.find(r#"[],"usage""#).expect("present") - HEAD.len();
        let (out, _) = translate_in_pieces(full.get(..cut).expect("in range").as_bytes(), &[]);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(false));

        // The last event without its blank line still counts.
        let (out, _) = translate_in_pieces(full.trim_end().as_bytes(), &[]);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));

        // Cut off before the finish_reason: an error event.
        let cut = full.find("finish_reason\":\"length").expect("present");
        let (out, _) = translate_in_pieces(full.get(..cut).expect("in range").as_bytes(), &[]);
        let ev = events(&out);
        assert_eq!(ev.len(), 5, "start, block start, two deltas, error");
        assert_eq!(
            ev.last().expect("events").1,
            json!({"type": "error", "error": {"type": "api_error", "message": "the upstream ended the stream early"}})
        );

        // Nothing at all.
        let (out, usage) = translate_in_pieces(b"", &[]);
        let ev = events(&out);
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].0, "error");
        assert_eq!(usage, None);
    }

    #[test]
    fn oversized_events_are_skipped() {
        let big = "x".repeat(STREAM_EVENT_BYTES_MAX + 1);
        let stream = format!(
            "{HEAD}[{{\"index\":0,\"delta\":{{\"content\":\"{big}\"}},\"finish_reason\":null}}]}}\n\ndata: {{\"a\":1}}\ndata: {big}\n\n{}",
            openai_stream(true)
        );
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[7, 100_000, 200_000, 300_000]);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(true));
    }

    /// The events as `start N TYPE`, `delta N TYPE`, `stop N` or their name.
    fn kinds(ev: &[(String, Value)]) -> Vec<String> {
        ev.iter()
            .map(|(name, v)| match name.as_str() {
                "content_block_start" => {
                    format!("start {} {}", v["index"], v["content_block"]["type"])
                }
                "content_block_delta" => format!("delta {} {}", v["index"], v["delta"]["type"]),
                "content_block_stop" => format!("stop {}", v["index"]),
                other => other.to_owned(),
            })
            .collect()
    }

    /// The content an Anthropic client builds from a stream (as the SDK's accumulator does: a
    /// tool_use block's input is its `partial_json` pieces parsed, `{}` without any), with the
    /// raw arguments of each tool_use block; checks that blocks come one at a time at indices 0,
    /// 1, ... and that deltas match their block's type.
    fn content_of(out: &[u8]) -> (Vec<Value>, Vec<String>) {
        let mut content: Vec<Value> = Vec::new();
        let mut raw = Vec::new();
        let mut open: Option<usize> = None;
        for (name, v) in events(out) {
            let index = v["index"].as_u64().and_then(|i| usize::try_from(i).ok());
            match name.as_str() {
                "content_block_start" => {
                    assert_eq!(open, None, "one block at a time");
                    assert_eq!(index, Some(content.len()), "indices in order");
                    open = index;
                    content.push(v["content_block"].clone());
                    raw.push(String::new());
                }
                "content_block_delta" => {
                    assert_eq!(index, open, "a delta of the open block");
                    let i = open.expect("open");
                    let delta = &v["delta"];
                    let block = &mut content[i];
                    match (block["type"].as_str(), delta["type"].as_str()) {
                        (Some("text"), Some("text_delta")) => {
                            let t = block["text"].as_str().expect("text").to_owned();
                            block["text"] = json!(t + delta["text"].as_str().expect("text"));
                        }
                        (Some("thinking"), Some("thinking_delta")) => {
                            let t = block["thinking"].as_str().expect("thinking").to_owned();
                            block["thinking"] =
                                json!(t + delta["thinking"].as_str().expect("thinking"));
                        }
                        (Some("tool_use"), Some("input_json_delta")) => {
                            let piece = delta["partial_json"].as_str().expect("partial_json");
                            assert!(!piece.is_empty(), "no empty pieces");
                            raw[i].push_str(piece);
                        }
                        other => panic!("delta {other:?}"),
                    }
                }
                "content_block_stop" => {
                    assert_eq!(index, open, "the open block stops");
                    let i = open.take().expect("open");
                    if content[i]["type"] == "tool_use" && !raw[i].is_empty() {
                        content[i]["input"] = serde_json::from_str(&raw[i]).unwrap_or(Value::Null);
                    }
                }
                // An error ends the stream as it is, as Anthropic's do.
                "message_delta" | "message_stop" => {
                    assert_eq!(open, None, "blocks stop before the message ends")
                }
                _ => {}
            }
        }
        (content, raw)
    }

    /// An OpenAI chunk of `choices[0].delta` = `delta`.
    fn delta_chunk(delta: &str) -> String {
        format!("{HEAD}[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n")
    }

    fn finish_chunk(reason: &str) -> String {
        format!("{HEAD}[{{\"index\":0,\"delta\":{{}},\"logprobs\":null,\"finish_reason\":\"{reason}\"}}]}}\n\n")
    }

    /// Text, then two calls one after the other, as OpenAI streams them.
    fn tool_stream() -> String {
        let mut s = delta_chunk(r#"{"role":"assistant","content":"","refusal":null}"#);
        s += &delta_chunk(r#"{"content":"Checking."}"#);
        s += &delta_chunk(
            r#"{"tool_calls":[{"index":0,"id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","type":"function","function":{"name":"get_weather","arguments":""}}]}"#,
        );
        for piece in [
            r#"{\""#,
            r#"location"#,
            r#"\":\""#,
            r#"Paris\u00e9"#,
            r#"\"}"#,
        ] {
            s += &delta_chunk(&format!(
                r#"{{"tool_calls":[{{"index":0,"function":{{"arguments":"{piece}"}}}}]}}"#
            ));
        }
        s += &delta_chunk(
            r#"{"tool_calls":[{"index":1,"id":"call_2","type":"function","function":{"name":"get_time","arguments":"{}"}}]}"#,
        );
        s += &finish_chunk("tool_calls");
        s += HEAD;
        s += r#"[],"usage":{"prompt_tokens":40,"completion_tokens":30,"total_tokens":70}}"#;
        s += "\n\ndata: [DONE]\n\n";
        s
    }

    #[test]
    fn streamed_tool_calls_become_tool_use_blocks() {
        let stream = tool_stream();
        let (out, usage) = translate_in_pieces(stream.as_bytes(), &[]);
        assert_eq!(usage, Some((40, 30)));
        // One byte at a time, and in CRLF: the same.
        let cuts: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts).0, out);
        let crlf = stream.replace('\n', "\r\n");
        assert_eq!(translate_in_pieces(crlf.as_bytes(), &[]).0, out);
        let ev = events(&out);
        assert_eq!(
            kinds(&ev),
            [
                "message_start",
                "start 0 \"text\"",
                "delta 0 \"text_delta\"",
                "stop 0",
                "start 1 \"tool_use\"",
                "delta 1 \"input_json_delta\"",
                "delta 1 \"input_json_delta\"",
                "delta 1 \"input_json_delta\"",
                "delta 1 \"input_json_delta\"",
                "delta 1 \"input_json_delta\"",
                "stop 1",
                "start 2 \"tool_use\"",
                "delta 2 \"input_json_delta\"",
                "stop 2",
                "message_delta",
                "message_stop"
            ]
        );
        let text = std::str::from_utf8(&out).expect("UTF-8");
        assert!(text.contains(concat!(
            "event: content_block_start\n",
            r#"data: {"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"call_DdmO9pD3xa9XTPNJ32zg2hcA","name":"get_weather","input":{}}}"#,
            "\n\n"
        )));
        assert!(text.contains(concat!(
            "event: content_block_delta\n",
            r#"data: {"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\""}}"#,
            "\n\n"
        )));
        assert_eq!(
            ev[14].1,
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null}, "usage": {"input_tokens": 40, "cache_read_input_tokens": 0, "output_tokens": 30}})
        );
        let (content, _) = content_of(&out);
        assert_eq!(
            content,
            [
                json!({"type": "text", "text": "Checking."}),
                json!({"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather", "input": {"location": "Parisé"}}),
                json!({"type": "tool_use", "id": "call_2", "name": "get_time", "input": {}}),
            ]
        );

        // A call alone, whole in its first delta, without id or index, `stop` as its finish
        // reason (vLLM's, for a forced call), and the stream cut before [DONE].
        let stream = delta_chunk(
            r#"{"role":"assistant","tool_calls":[{"type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}"#,
        ) + &finish_chunk("stop");
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let ev = events(&out);
        assert_eq!(
            ev[1].1["content_block"],
            json!({"type": "tool_use", "id": "toolu_chatcmpl-123_0", "name": "f", "input": {}})
        );
        assert_eq!(ev[2].1["delta"]["partial_json"], "{\"a\":1}");
        assert_eq!(ev[4].1["delta"]["stop_reason"], "tool_use");

        // Arguments that are no string (not OpenAI's shape): an error, never dropped.
        let stream = delta_chunk(
            r#"{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":{"a":1}}}]}"#,
        ) + &finish_chunk("tool_calls");
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let ev = events(&out);
        assert_eq!(kinds(&ev), ["message_start", "error"]);

        // Cut by max_tokens inside the arguments: passed on as they came.
        let stream = delta_chunk(
            r#"{"tool_calls":[{"index":0,"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":"}}]}"#,
        ) + &finish_chunk("length")
            + "data: [DONE]\n\n";
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let (_, raw) = content_of(&out);
        assert_eq!(raw, ["{\"a\":"]);
        assert_eq!(events(&out)[4].1["delta"]["stop_reason"], "max_tokens");
    }

    #[test]
    fn interleaved_tool_calls_and_text_are_held_until_the_end() {
        let call = |index: u64, first: bool, args: &str| {
            let args = serde_json::to_string(args).expect("string");
            if first {
                delta_chunk(&format!(
                    r#"{{"tool_calls":[{{"index":{index},"id":"call_{index}","type":"function","function":{{"name":"f{index}","arguments":{args}}}}}]}}"#
                ))
            } else {
                delta_chunk(&format!(
                    r#"{{"tool_calls":[{{"index":{index},"function":{{"arguments":{args}}}}}]}}"#
                ))
            }
        };
        let stream = delta_chunk(r#"{"reasoning_content":"Plan."}"#)
            + &call(0, true, "{\"x\":")
            + &call(1, true, "")
            + &call(1, false, "{\"y\":2}")
            + &delta_chunk(r#"{"content":"between "}"#)
            + &delta_chunk(r#"{"content":"calls"}"#)
            + &call(0, false, "1}")
            // Two calls in one delta, one of them repeating its id and name.
            + &delta_chunk(
                r#"{"tool_calls":[{"index":2,"id":"call_2","type":"function","function":{"name":"f2","arguments":"{}"}},{"index":1,"id":"call_1","function":{"name":"f1","arguments":" "}}]}"#,
            )
            + &delta_chunk(r#"{"reasoning":"Done."}"#)
            + &finish_chunk("tool_calls")
            + "data: [DONE]\n\n";
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let cuts: Vec<usize> = (0..stream.len()).step_by(5).collect();
        assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts).0, out);
        let (content, raw) = content_of(&out);
        assert_eq!(
            content,
            [
                json!({"type": "thinking", "thinking": "Plan.", "signature": ""}),
                json!({"type": "tool_use", "id": "call_0", "name": "f0", "input": {"x": 1}}),
                json!({"type": "tool_use", "id": "call_1", "name": "f1", "input": {"y": 2}}),
                json!({"type": "text", "text": "between calls"}),
                json!({"type": "tool_use", "id": "call_2", "name": "f2", "input": {}}),
                json!({"type": "thinking", "thinking": "Done.", "signature": ""}),
            ]
        );
        assert_eq!(raw[2], "{\"y\":2} ");
        // The first call streams live: its first piece comes before anything held.
        let ev = events(&out);
        assert_eq!(
            kinds(&ev)[..6],
            [
                "message_start",
                "start 0 \"thinking\"",
                "delta 0 \"thinking_delta\"",
                "stop 0",
                "start 1 \"tool_use\"",
                "delta 1 \"input_json_delta\""
            ]
        );
        assert_eq!(ev[5].1["delta"]["partial_json"], "{\"x\":");
        assert_eq!(ev.last().expect("events").0, "message_stop");
    }

    #[test]
    fn held_content_is_bounded() {
        let piece = "x".repeat(200_000);
        let mut stream = delta_chunk(
            r#"{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        );
        stream += &delta_chunk(
            r#"{"tool_calls":[{"index":1,"id":"b","type":"function","function":{"name":"g","arguments":""}}]}"#,
        );
        let pieces = STREAM_HELD_BYTES_MAX / piece.len() + 1;
        for _ in 0..pieces {
            stream += &delta_chunk(&format!(
                r#"{{"tool_calls":[{{"index":1,"function":{{"arguments":"{piece}"}}}}]}}"#
            ));
        }
        stream += &finish_chunk("tool_calls");
        stream += "data: [DONE]\n\n";
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let ev = events(&out);
        assert_eq!(
            kinds(&ev),
            [
                "message_start",
                "start 0 \"tool_use\"",
                "delta 0 \"input_json_delta\"",
                "error"
            ]
        );
        // Held text counts too; just under the limit is fine.
        let mut stream = delta_chunk(
            r#"{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        );
        for _ in 0..pieces - 1 {
            stream += &delta_chunk(&format!(r#"{{"content":"{piece}"}}"#));
        }
        stream += &finish_chunk("tool_calls");
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[]);
        let (content, _) = content_of(&out);
        assert_eq!(content.len(), 2);
        assert_eq!(
            content[1]["text"].as_str().map(str::len),
            Some(piece.len() * (pieces - 1))
        );
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        // The realistic stream with optional noise: comments, CRLF, an event name, a non-JSON
        // event, an object that is no chunk.
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(crlf, noise, usage)| {
            let mut s = String::new();
            if noise {
                s.push_str(
                    ": keep-alive\n\nevent: x\ndata: not json\n\ndata: {\"object\":\"x\"}\n\n",
                );
            }
            s.push_str(&openai_stream(usage));
            let s = if crlf { s.replace('\n', "\r\n") } else { s };
            s.into_bytes()
        })
    }

    /// Pieces of OpenAI streams, for sequences that are valid in parts.
    const PIECES: &[&str] = &[
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi \\\"there\\\"\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"no\"},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"stop_reason\":\"E\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"length\"}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\n\n",
        "data: {\"error\":{\"message\":\"bad\"}}\n\n",
        "data: [DONE]\n\n",
        ": comment\n\n",
        "event: x\r\n",
        "data: {\"choices\":\n",
        "data: 5}\n\n",
        "\n",
        "data: {\"truncated\": \n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b\",\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"1}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"function\":{\"name\":\"h\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
    ];

    /// Pieces of text and of tool call arguments.
    const TOOL_PIECES: &[&str] = &["{\"a\":", "1}", "\"\u{e9}\\n\"", "", " ", "[", "x"];

    fn check_ends(out: &[u8]) -> Result<(), TestCaseError> {
        let ev = events(out);
        let last = ev.last().map(|(n, _)| n.as_str());
        prop_assert!(matches!(last, Some("message_stop" | "error")), "{:?}", last);
        // Only the last event ends the stream.
        for (name, _) in ev.iter().rev().skip(1) {
            prop_assert!(name != "message_stop" && name != "error");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The same output however the stream is cut into reads.
        #[test]
        fn stream_split_independent(
            stream in arb_stream(),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            let whole = translate_in_pieces(&stream, &[]);
            let usage = whole.1.is_some();
            prop_assert_eq!(std::str::from_utf8(&whole.0).expect("UTF-8"), expected(usage));
            prop_assert_eq!(translate_in_pieces(&stream, &cuts), whole);
        }

        /// Sequences of stream pieces: split independence, every event JSON, and `finish`
        /// always leaves a stream that ends with `message_stop` or `error`.
        #[test]
        fn stream_pieces_end_well(
            picks in prop::collection::vec(0..PIECES.len(), 0..12),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let stream: String = picks.iter().filter_map(|i| PIECES.get(*i).copied()).collect();
            let whole = translate_in_pieces(stream.as_bytes(), &[]);
            check_ends(&whole.0)?;
            content_of(&whole.0);
            prop_assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts), whole);
        }

        /// Text, reasoning and up to three tool calls interleaved at random: every call comes
        /// out as one `tool_use` block (in the order calls first came) with its id, name and
        /// arguments whole; the texts and the reasoning whole, in order; blocks one at a time;
        /// the same however the stream is cut.
        #[test]
        fn tool_streams_keep_every_call(
            steps in prop::collection::vec((0..5u8, 0..TOOL_PIECES.len()), 0..24),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut stream = String::new();
            let mut seen: Vec<u8> = Vec::new();
            let mut args: Vec<String> = Vec::new();
            let (mut text, mut thinking) = (String::new(), String::new());
            for (what, piece) in steps {
                let piece = TOOL_PIECES.get(piece).copied().unwrap_or_default();
                let quoted = serde_json::to_string(piece).expect("string");
                match what {
                    0 => {
                        text.push_str(piece);
                        stream += &delta_chunk(&format!(r#"{{"content":{quoted}}}"#));
                    }
                    1 => {
                        thinking.push_str(piece);
                        stream += &delta_chunk(&format!(r#"{{"reasoning_content":{quoted}}}"#));
                    }
                    k => {
                        let k = k - 2;
                        let at = match seen.iter().position(|s| *s == k) {
                            Some(at) => {
                                stream += &delta_chunk(&format!(
                                    r#"{{"tool_calls":[{{"index":{k},"function":{{"arguments":{quoted}}}}}]}}"#
                                ));
                                at
                            }
                            None => {
                                seen.push(k);
                                args.push(String::new());
                                stream += &delta_chunk(&format!(
                                    r#"{{"tool_calls":[{{"index":{k},"id":"call_{k}","type":"function","function":{{"name":"f{k}","arguments":{quoted}}}}}]}}"#
                                ));
                                seen.len() - 1
                            }
                        };
                        args[at].push_str(piece);
                    }
                }
            }
            stream += &finish_chunk(if seen.is_empty() { "stop" } else { "tool_calls" });
            stream += "data: [DONE]\n\n";
            let whole = translate_in_pieces(stream.as_bytes(), &[]);
            prop_assert_eq!(&translate_in_pieces(stream.as_bytes(), &cuts), &whole);
            let (content, raw) = content_of(&whole.0);
            let mut calls = Vec::new();
            let (mut got_text, mut got_thinking) = (String::new(), String::new());
            for (block, raw) in content.iter().zip(&raw) {
                match block["type"].as_str() {
                    Some("text") => got_text.push_str(block["text"].as_str().unwrap_or_default()),
                    Some("thinking") => {
                        got_thinking.push_str(block["thinking"].as_str().unwrap_or_default());
                    }
                    _ => calls.push((block["id"].clone(), block["name"].clone(), raw.clone())),
                }
            }
            let want: Vec<(Value, Value, String)> = seen
                .iter()
                .zip(&args)
                .map(|(k, a)| (json!(format!("call_{k}")), json!(format!("f{k}")), a.clone()))
                .collect();
            prop_assert_eq!(calls, want);
            prop_assert_eq!(got_text, text);
            prop_assert_eq!(got_thinking, thinking);
            let ev = events(&whole.0);
            let stop = ev.iter().find(|(n, _)| n == "message_delta").map(|(_, v)| v["delta"]["stop_reason"].clone());
            prop_assert_eq!(stop, Some(json!(if seen.is_empty() { "end_turn" } else { "tool_use" })));
        }

        /// No panic on arbitrary bytes rich in SSE syntax, split independence there too.
        #[test]
        fn stream_never_panics(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n:data: [DONE]{}\"choices\"error".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = translate_in_pieces(&stream, &[]);
            check_ends(&whole.0)?;
            prop_assert_eq!(translate_in_pieces(&stream, &cuts), whole);
        }

        #[test]
        fn stream_never_panics_on_any_bytes(stream in prop::collection::vec(any::<u8>(), 0..512)) {
            let (out, _) = translate_in_pieces(&stream, &[]);
            check_ends(&out)?;
        }

        /// The one-shot functions never panic, and their output is JSON when they succeed.
        #[test]
        fn one_shot_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), status in any::<u16>()) {
            let mut out = Vec::new();
            if messages_to_chat(&body, "m", true, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            if chat_to_message(&body, "m", &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            error_to_anthropic(status, &body, &mut out);
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
        }
    }
}
