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
//! | `messages`: `user` / `assistant` turns, content a string or `text` blocks | one message per turn, same role, string `content`: the blocks' texts joined with nothing between them; `thinking` / `redacted_thinking` blocks left out (Anthropic leaves earlier turns' thinking out of the context too); `cache_control`, `citations` left out |
//! | `max_tokens` (required) | `max_tokens` |
//! | `temperature`, `top_p` | the same (Anthropic's `temperature` range, 0 to 1, lies within OpenAI's) |
//! | `stop_sequences` | `stop` (OpenAI takes at most 4; more is the upstream's 400) |
//! | `stream` | `stream`, with `"stream_options":{"include_usage":true}` when the caller asks |
//! | `metadata.user_id` | `user` |
//! | `tools` (unless empty), `tool_choice` other than `none`, `thinking` other than `disabled`, `mcp_servers` (unless empty), `output_format`, `image` / `document` / `tool_use` / `tool_result` / any other non-text block | refused: [`TranslateError::Unsupported`] |
//! | `model` (the caller names the upstream's), `top_k`, `service_tier`, `container`, other `metadata`, ... | left out |
//!
//! A last `assistant` turn (a prefill) is sent as it is: an OpenAI upstream answers it with a
//! new turn instead of continuing it.
//!
//! Responses: the first choice's `content` becomes one `text` block (`"content":[]` when it is
//! empty or `null`); a `refusal` stands in for empty content. The reasoning an OpenAI-compatible
//! server returns beside the answer (vLLM and DeepSeek's `reasoning_content`, vLLM's newer and
//! Ollama's `reasoning`) becomes a `thinking` block before the text, as Anthropic's extended
//! thinking answers (its `signature` empty: no upstream signed it); streamed, a `thinking`
//! block of `thinking_delta`s comes first, the text block after it. Stop reasons: `stop` → `end_turn`
//! (`stop_sequence` when the upstream names the stop string it matched, as vLLM does in the
//! choice's `stop_reason`), `length` → `max_tokens`, `content_filter` or a refusal → `refusal`,
//! anything else (`tool_calls`, `null`, ...) → `end_turn`. Usage: `input_tokens` is
//! `prompt_tokens` less `prompt_tokens_details.cached_tokens` (OpenAI counts cached tokens in,
//! Anthropic leaves them out), which are reported as `cache_read_input_tokens`;
//! `completion_tokens` → `output_tokens`.

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
        messages.push(chat_message("system", system));
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
    write_object(req, out)
}

/// `{"role":role,"content":text}`.
fn chat_message(role: &str, text: String) -> Value {
    let mut message = Map::new();
    message.insert("role".into(), Value::from(role));
    message.insert("content".into(), Value::from(text));
    Value::Object(message)
}

/// Whether `v` is an object whose `type` is `t`.
fn has_type(v: &Value, t: &str) -> bool {
    v.get("type").and_then(Value::as_str) == Some(t)
}

/// Refuse the features a chat completion request cannot express.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    for key in ["tools", "mcp_servers"] {
        match present(body, key) {
            None => {}
            Some(Value::Array(a)) if a.is_empty() => {}
            Some(_) => return Err(TranslateError::Unsupported(key)),
        }
    }
    match present(body, "tool_choice") {
        None => {}
        Some(choice) if has_type(choice, "none") => {}
        Some(_) => return Err(TranslateError::Unsupported("tool_choice")),
    }
    match present(body, "thinking") {
        None => {}
        Some(thinking) if has_type(thinking, "disabled") => {}
        Some(_) => return Err(TranslateError::Unsupported("thinking")),
    }
    if present(body, "output_format").is_some() {
        return Err(TranslateError::Unsupported("output_format"));
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
        let role = match turn.get("role").and_then(Value::as_str) {
            Some("user") => "user",
            Some("assistant") => "assistant",
            _ => return Err(TranslateError::BadField("role")),
        };
        chat.push(chat_message(role, content_text(turn.get("content"))?));
    }
    Ok(())
}

/// The text of a turn's `content`: a string, or an array of blocks whose texts are joined with
/// nothing between them.
fn content_text(content: Option<&Value>) -> Result<String, TranslateError> {
    let blocks = match content {
        Some(Value::String(s)) => return Ok(s.clone()),
        Some(Value::Array(blocks)) => blocks,
        _ => return Err(TranslateError::BadField("content")),
    };
    let mut text = String::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => match block.get("text") {
                Some(Value::String(t)) => text.push_str(t),
                _ => return Err(TranslateError::BadField("content")),
            },
            Some("thinking" | "redacted_thinking") => {}
            Some("image") => return Err(TranslateError::Unsupported("image")),
            Some("document") => return Err(TranslateError::Unsupported("document")),
            Some("tool_use") => return Err(TranslateError::Unsupported("tool_use")),
            Some("tool_result") => return Err(TranslateError::Unsupported("tool_result")),
            Some(_) => return Err(TranslateError::Unsupported("content")),
            None => return Err(TranslateError::BadField("content")),
        }
    }
    Ok(text)
}

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

/// Anthropic's `stop_reason` for an OpenAI `finish_reason`; `stop_sequence` is whether the
/// upstream named the stop string it matched, `refused` whether it answered with a refusal.
fn stop_reason(finish_reason: Option<&str>, stop_sequence: bool, refused: bool) -> &'static str {
    match finish_reason {
        Some("length") => "max_tokens",
        Some("content_filter") => "refusal",
        _ if refused => "refusal",
        Some("stop") if stop_sequence => "stop_sequence",
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
/// counts; tool calls (refused in the request) are left out. A body without `choices` (an error
/// body) is [`TranslateError::BadField`]`("choices")`: see [`error_to_anthropic`].
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
    let stop_sequence = matched_stop(choice);
    let stop = stop_reason(
        choice.get("finish_reason").and_then(Value::as_str),
        stop_sequence.is_some(),
        refusal.is_some(),
    );
    let usage = resp
        .get("usage")
        .and_then(Usage::from_value)
        .unwrap_or_default();

    out.extend_from_slice(b"{\"id\":");
    push_message_id(
        out,
        resp.get("id").and_then(Value::as_str).unwrap_or_default(),
    );
    out.extend_from_slice(b",\"type\":\"message\",\"role\":\"assistant\",\"model\":");
    write_str(out, model_for_client);
    out.extend_from_slice(b",\"content\":[");
    if !thinking.is_empty() {
        out.extend_from_slice(b"{\"type\":\"thinking\",\"thinking\":");
        write_str(out, thinking);
        out.extend_from_slice(b",\"signature\":\"\"}");
        if !text.is_empty() {
            out.push(b',');
        }
    }
    if !text.is_empty() {
        out.extend_from_slice(b"{\"type\":\"text\",\"text\":");
        write_str(out, text);
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

/// A content block of a translated stream: its kind and index.
type Block = (BlockKind, u64);

/// The kinds of content block a translated stream opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BlockKind {
    Thinking,
    Text,
}

/// Translates an OpenAI `chat.completion.chunk` event stream into Anthropic's Messages events.
///
/// Feed it the decoded response body in pieces of any size; it appends whole Anthropic events
/// (`event: NAME\ndata: JSON\n\n`) to `out` as each OpenAI event completes, so the output is the
/// same however the input was cut. Events: `message_start` on the first chunk,
/// `content_block_start` (block 0, text) before the first text, a `content_block_delta` per
/// non-empty `delta.content` (or `delta.refusal`), and on `data: [DONE]` `content_block_stop`
/// (when a block was started), `message_delta` (stop reason, and the usage once the upstream
/// reported it) and `message_stop`. An OpenAI error event becomes an Anthropic `error` event
/// that ends the stream. A stream that ends without `[DONE]` is closed as usual by
/// [`finish`](Self::finish) when a `finish_reason` came, else ended with an `error` event.
/// After the end further input is ignored. Comments, `event:` lines, events that are not JSON
/// and events longer than
/// [`STREAM_EVENT_BYTES_MAX`](super::anthropic::STREAM_EVENT_BYTES_MAX) are skipped.
#[derive(Debug)]
pub struct StreamToMessages {
    model: String,
    events: EventReader,
    /// `message_start` has been written.
    started: bool,
    /// The content block open now (its `content_block_start` written, not its stop).
    block: Option<Block>,
    /// The index the next content block gets.
    next_block: u64,
    /// An upstream refusal has been relayed as text.
    refused: bool,
    /// Anthropic's stop reason, once a `finish_reason` came.
    stop_reason: Option<&'static str>,
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
            block: None,
            next_block: 0,
            refused: false,
            stop_reason: None,
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
            if let Some(data) = Data::parse(event.data) {
                self.on_data(data, out);
            }
        });
        self.events = events;
        if self.done {
            return;
        }
        if self.stop_reason.is_some() {
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
                self.push_delta(BlockKind::Thinking, thinking, out);
            }
            for key in ["content", "refusal"] {
                if let Some(text) = delta.get(key).and_then(Value::as_str) {
                    if !text.is_empty() {
                        self.refused |= key == "refusal";
                        self.push_delta(BlockKind::Text, text, out);
                    }
                }
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            let stop_sequence = matched_stop(choice);
            let stop = stop_reason(Some(finish), stop_sequence.is_some(), self.refused);
            self.stop_reason = Some(stop);
            self.stop_sequence = stop_sequence
                .filter(|_| stop == "stop_sequence")
                .map(str::to_owned);
        }
    }

    /// `message_start`, for the upstream's chunk id `id`.
    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        self.started = true;
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

    /// A delta of `kind`: the open block of another kind stops first and a block of this
    /// kind starts, at the next index.
    fn push_delta(&mut self, kind: BlockKind, text: &str, out: &mut Vec<u8>) {
        if self.block.map(|(k, _)| k) != Some(kind) {
            self.stop_block(out);
            let index = self.next_block;
            self.next_block += 1;
            self.block = Some((kind, index));
            out.extend_from_slice(
                b"event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":",
            );
            write_decimal(out, index);
            out.extend_from_slice(match kind {
                BlockKind::Text => b",\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n".as_slice(),
                BlockKind::Thinking => {
                    b",\"content_block\":{\"type\":\"thinking\",\"thinking\":\"\",\"signature\":\"\"}}\n\n"
                }
            });
        }
        let index = self.block.map_or(0, |(_, i)| i);
        out.extend_from_slice(
            b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":",
        );
        write_decimal(out, index);
        out.extend_from_slice(match kind {
            BlockKind::Text => b",\"delta\":{\"type\":\"text_delta\",\"text\":".as_slice(),
            BlockKind::Thinking => b",\"delta\":{\"type\":\"thinking_delta\",\"thinking\":",
        });
        write_str(out, text);
        out.extend_from_slice(b"}}\n\n");
    }

    /// `content_block_stop` for the open block, if one is.
    fn stop_block(&mut self, out: &mut Vec<u8>) {
        if let Some((_, index)) = self.block.take() {
            out.extend_from_slice(
                b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":",
            );
            write_decimal(out, index);
            out.extend_from_slice(b"}\n\n");
        }
    }

    /// `content_block_stop` (if a block was started), `message_delta`, `message_stop`.
    fn close(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            self.start("", out);
        }
        self.stop_block(out);
        out.extend_from_slice(
            b"event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"",
        );
        out.extend_from_slice(self.stop_reason.unwrap_or("end_turn").as_bytes());
        out.extend_from_slice(b"\",");
        push_stop_sequence(out, self.stop_sequence.as_deref());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::anthropic::{self, STREAM_EVENT_BYTES_MAX};
    use proptest::prelude::*;
    use serde_json::json;

    fn to_chat(body: &Value, include_usage: bool) -> Result<Value, TranslateError> {
        let mut out = Vec::new();
        messages_to_chat(
            body.to_string().as_bytes(),
            "gpt-4o",
            include_usage,
            &mut out,
        )?;
        Ok(serde_json::from_slice(&out).expect("valid JSON"))
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
        let tool = json!([{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}]);
        assert_eq!(with("tools", tool), Err(Unsupported("tools")));
        for choice in [
            json!({"type": "auto"}),
            json!({"type": "any"}),
            json!({"type": "tool", "name": "f"}),
            json!("none"),
        ] {
            assert_eq!(with("tool_choice", choice), Err(Unsupported("tool_choice")));
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
        assert_eq!(
            block(
                json!({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBOR"}})
            ),
            Err(Unsupported("image"))
        );
        assert_eq!(
            block(
                json!({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}})
            ),
            Err(Unsupported("document"))
        );
        assert_eq!(
            with(
                "messages",
                json!([
                    {"role": "user", "content": "Weather?"},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}
                ])
            ),
            Err(Unsupported("tool_use"))
        );
        assert_eq!(
            block(
                json!({"type": "tool_result", "tool_use_id": "toolu_1", "content": "15 degrees"})
            ),
            Err(Unsupported("tool_result"))
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
        let tools = br#"{"max_tokens":1,"messages":[{"role":"user","content":"Hi"}],"tools":[{"name":"f"}]}"#;
        assert_eq!(
            messages_to_chat(tools, "m", true, &mut out),
            Err(Unsupported("tools"))
        );
        assert_eq!(out, b"kept", "nothing appended on error");
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
        let mut t = StreamToMessages::new("claude-sonnet-4-5");
        let mut out = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        for c in cuts {
            t.feed(stream.get(start..c).unwrap_or_default(), &mut out);
            start = c;
        }
        t.feed(stream.get(start..).unwrap_or_default(), &mut out);
        t.finish(&mut out);
        assert!(t.is_done());
        (out, t.usage())
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
    ];

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
            prop_assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts), whole);
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
