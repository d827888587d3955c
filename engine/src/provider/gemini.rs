//! OpenAI chat clients in front of a Google Gemini upstream: `models.generateContent` and
//! `models.streamGenerateContent` of the Gemini API, version v1beta.
//!
//! - [`path`]: the upstream path for a Gemini model id, whole or streamed (`alt=sse`).
//! - [`chat_to_gemini`]: an OpenAI chat completion request becomes a `GenerateContentRequest`.
//! - [`response_to_chat`]: a `GenerateContentResponse` becomes a `chat.completion`, and its
//!   usage a [`Usage`].
//! - [`error_to_openai`]: a Google error body becomes an OpenAI error body; [`retry_after_s`]
//!   reads the wait its `RetryInfo` detail asks for (Gemini sends no `Retry-After` header).
//! - [`StreamToChat`]: Gemini's server-sent events (each `data:` a whole
//!   `GenerateContentResponse` with the next piece of the answer) become
//!   `chat.completion.chunk` events, fed in pieces of any size; the output does not depend on
//!   where the pieces were cut.
//!
//! Everything appends to an `out` buffer the caller owns; nothing touches a socket or the
//! clock (the caller passes `created`). Anthropic Messages clients reach Gemini through
//! [`super::messages`] first (Messages to OpenAI chat), then this module.
//!
//! # Mapping
//!
//! | OpenAI | Gemini |
//! |---|---|
//! | `system` and `developer` messages (anywhere) | `systemInstruction.parts`, one `text` part per text |
//! | `user` messages: string, `text` and `image_url` parts | a `user` turn of `text`, `inlineData` and `fileData` parts |
//! | `assistant` messages: string, `text` (or `refusal`) parts, `tool_calls` | a `model` turn: `text` parts, then one `functionCall` part per call (`args` parsed from the `arguments` JSON string, which must be an object; `""` is `{}`), with the `thoughtSignature` and Gemini `id` the call's `id` carries (see below) |
//! | `tool` messages | a `user` turn of `functionResponse` parts: `name` is the function of the earlier assistant tool call with that `tool_call_id`, `response` is `{"result": R}`, R the content parsed when it is a JSON object, else the content as a string (Gemini's `response` must be an object; `result` is a key its reference suggests) |
//! | consecutive messages of one role (a `tool` message counts as `user`) | merged into one turn; empty texts and turns left empty are left out |
//! | `image_url` with a `data:MIME;base64,DATA` URL | `inlineData {mimeType, data}` |
//! | `image_url` with an `http(s)` URL | `fileData {fileUri, mimeType}` (Gemini fetches public and signed URLs); `mimeType` from the path's extension (png, jpg, jpeg, webp, heic, heif), left out for others; `detail` left out |
//! | `tools` of type `function` | `tools[{functionDeclarations:[{name, description, parametersJsonSchema}]}]`: `parametersJsonSchema` takes JSON Schema as OpenAI's `parameters` are written, where `parameters` takes only Google's OpenAPI subset (no `additionalProperties`, `$ref`, ...), so the schema passes unchanged; an empty `{}` schema is left out; `strict` left out |
//! | `tool_choice` `none` / `auto` / `required` / a named function / `allowed_tools` in `required` mode | `toolConfig.functionCallingConfig.mode` `NONE` / `AUTO` / `ANY` / `ANY` with `allowedFunctionNames` (sent only with `tools`) |
//! | `max_completion_tokens`, else `max_tokens` | `generationConfig.maxOutputTokens` |
//! | `temperature`, `top_p`, `top_k`, `seed`, `presence_penalty`, `frequency_penalty` | `temperature`, `topP`, `topK`, `seed`, `presencePenalty`, `frequencyPenalty` |
//! | `stop` (string or array) | `stopSequences` |
//! | `response_format` `json_object` / `json_schema` | `responseMimeType: "application/json"` / the same and `responseJsonSchema` (`name`, `strict` left out) |
//! | `reasoning_effort` `minimal` / `low` / `medium` / `high` / `none` | `thinkingConfig {thinkingLevel: MINIMAL/LOW/MEDIUM/HIGH, includeThoughts: true}` / `{thinkingBudget: 0}` (a model without that knob answers the upstream's 400) |
//! | `extra_body.google.thinking_config` (Google's own OpenAI-compatibility convention) | `thinkingConfig` (`thinking_budget`, `thinking_level`, `include_thoughts`, over what `reasoning_effort` set) |
//! | `stream` | the path ([`path`]); `stream_options` only decides [`StreamToChat`]'s usage chunk |
//! | tools of another type, `functions`, `function_call`, `function` messages, audio and `file` parts, other URL schemes, `n` > 1, `logprobs`, `top_logprobs`, `logit_bias`, `audio`, non-text `modalities`, `parallel_tool_calls: false`, `web_search_options`, other `extra_body` keys, `response_format` of another type | refused: [`TranslateError::Unsupported`] |
//! | `model` (the path names it), `user`, `store`, `metadata`, `service_tier`, `prediction`, `reasoning_content` of earlier assistant turns (Gemini takes no thoughts back: the signature carries them) | left out |
//!
//! Responses: the first candidate's `text` parts are concatenated into `content`; parts with
//! `thought: true` go to `reasoning_content` (the field vLLM and DeepSeek use), never into
//! `content`; `functionCall` parts become `tool_calls` (`content` is then `null` when there is
//! no text). Other parts (images an image model draws, code execution) have no place in a chat
//! completion and are left out, and so is a signature on a text part (Gemini does not require
//! those back). Finish reasons: `STOP` → `stop` (`tool_calls` when the answer calls tools),
//! `MAX_TOKENS` → `length`; `SAFETY`, `RECITATION`, `LANGUAGE`, `BLOCKLIST`,
//! `PROHIBITED_CONTENT`, `SPII`, `IMAGE_SAFETY`, `IMAGE_PROHIBITED_CONTENT`, `IMAGE_RECITATION`
//! and `MODEL_ARMOR` → `content_filter`; the rest (`MALFORMED_FUNCTION_CALL`,
//! `UNEXPECTED_TOOL_CALL`, `TOO_MANY_TOOL_CALLS`, `OTHER`, unknown ones) have no OpenAI
//! counterpart and → `stop`, with whatever content came. A prompt Gemini blocked
//! (`promptFeedback.blockReason`, no candidates) is an answer with empty content and
//! `finish_reason: "content_filter"`, as OpenAI reports filtered output (not an error: the
//! upstream answered 200 and counts the prompt's tokens).
//!
//! Usage: `prompt_tokens` = `promptTokenCount` (which includes the cached content) +
//! `toolUsePromptTokenCount`; `completion_tokens` = `candidatesTokenCount` +
//! `thoughtsTokenCount` (Gemini counts thoughts apart: its `totalTokenCount` is the sum of all
//! four); `cached_tokens` = `cachedContentTokenCount`; `reasoning_tokens` =
//! `thoughtsTokenCount`.
//!
//! # Tool call ids and thought signatures
//!
//! Gemini signs its reasoning: a `functionCall` part comes with a `thoughtSignature`
//! (with parallel calls, the first one), which must come back on that part in the next request
//! (Gemini 3 refuses a request without it). OpenAI clients echo back exactly one thing of a
//! tool call: its `id`. So the id carries the signature:
//!
//! `call_<U>_<I>[-g<N>_<G>][-s<N>_<S>]`
//!
//! - `U`: the last 16 letters and digits of the completion's id (unique per answer), `I` the
//!   call's index in the answer;
//! - `G`: Gemini's own `functionCall.id`, when it sent one, in unpadded base64url (it goes back
//!   on the `functionCall` and on the matching `functionResponse`);
//! - `S`: the signature (base64, a protobuf `bytes` field) in the base64url alphabet without
//!   padding (`+` → `-`, `/` → `_`); on the way back the standard alphabet and padding are
//!   restored, the same bytes;
//! - `N`: the length of what follows it, in decimal, so that the id needs no separator outside
//!   base64url's alphabet: it holds only `A-Z a-z 0-9 - _`, what Anthropic requires of a
//!   `tool_use` id too. (A signed id runs to hundreds of bytes, more than some APIs take back:
//!   OpenAI's has refused tool call ids over 40 bytes. A conversation with signed calls may
//!   not move to another upstream as it is.)
//!
//! An id of any other shape (a client's own, another provider's, one longer than
//! [`TOOL_CALL_ID_BYTES_MAX`]) carries nothing: its call goes back without a signature.

use serde_json::{Map, Value};

use super::chat_out::{self, Chunks, Completion, ToolCall, UsageDetails};
pub use super::sse::STREAM_EVENT_BYTES_MAX;
use super::sse::{Event, EventReader};
use super::{
    present, refuse_logprobs, refuse_modalities, refuse_present, tool_description, tool_function,
    tool_parameters, write_object, TranslateError,
};
use crate::llm::Usage;

/// The longest Gemini model id put into a path, bytes.
pub const MODEL_ID_BYTES_MAX: usize = 128;
/// The longest `thoughtSignature` carried in a tool call id, bytes of its base64 text. A longer
/// one fails the answer's translation rather than be dropped.
pub const THOUGHT_SIGNATURE_BYTES_MAX: usize = 64 * 1024;
/// The longest Gemini `functionCall.id` carried in a tool call id, bytes.
pub const FUNCTION_CALL_ID_BYTES_MAX: usize = 256;
/// The longest tool call id read back for what it carries, bytes: room for the prefix, a
/// Gemini id and a signature, each encoded.
pub const TOOL_CALL_ID_BYTES_MAX: usize =
    64 + 2 * FUNCTION_CALL_ID_BYTES_MAX + THOUGHT_SIGNATURE_BYTES_MAX;
/// Letters and digits of the completion's id that make its tool call ids unique.
const CALL_ID_UNIQUE_CHARS: usize = 16;

const _: () = assert!(THOUGHT_SIGNATURE_BYTES_MAX < STREAM_EVENT_BYTES_MAX);
const _: () = assert!(TOOL_CALL_ID_BYTES_MAX > THOUGHT_SIGNATURE_BYTES_MAX);

// ---------------------------------------------------------------------------------------------
// Paths

/// The upstream path for `model` (the Gemini model id, e.g. `gemini-2.0-flash`):
/// `/v1beta/models/{model}:generateContent`, or with `stream`
/// `/v1beta/models/{model}:streamGenerateContent?alt=sse`. Writes into `out` (cleared first).
/// `Err`: a static, JSON-safe reason for a 400 (a model id that is not 1 to
/// [`MODEL_ID_BYTES_MAX`] of `A-Z a-z 0-9 - _ .`, nothing else may go into the path).
pub fn path(model: &str, stream: bool, out: &mut String) -> Result<(), &'static str> {
    if !is_model_id(model) {
        return Err("the model must name a Gemini model: 1 to 128 of A-Z a-z 0-9 - _ .");
    }
    out.clear();
    out.push_str("/v1beta/models/");
    out.push_str(model);
    out.push_str(if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    });
    Ok(())
}

fn is_model_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MODEL_ID_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && s != "."
        && s != ".."
}

// ---------------------------------------------------------------------------------------------
// Requests

/// Translate an OpenAI chat completion request into a Gemini `GenerateContentRequest`,
/// appended to `out` (nothing is appended on error). See the module's mapping table.
pub fn chat_to_gemini(openai_body: &[u8], out: &mut Vec<u8>) -> Result<(), TranslateError> {
    let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(openai_body) else {
        return Err(TranslateError::NotJson);
    };
    refuse_unsupported(&body)?;
    let (system, contents) = translate_messages(&body)?;

    let mut req = Map::new();
    req.insert("contents".into(), Value::Array(contents));
    if !system.is_empty() {
        let mut instruction = Map::new();
        instruction.insert("parts".into(), Value::Array(system));
        req.insert("systemInstruction".into(), Value::Object(instruction));
    }
    if let Some(declarations) = translate_tools(&body)? {
        let mut tool = Map::new();
        tool.insert("functionDeclarations".into(), Value::Array(declarations));
        req.insert("tools".into(), Value::Array(vec![Value::Object(tool)]));
        if let Some(config) = translate_tool_choice(&body)? {
            let mut tool_config = Map::new();
            tool_config.insert("functionCallingConfig".into(), Value::Object(config));
            req.insert("toolConfig".into(), Value::Object(tool_config));
        }
    } else {
        match present(&body, "tool_choice") {
            None => {}
            Some(Value::String(s)) if s == "none" || s == "auto" => {}
            Some(_) => return Err(TranslateError::BadField("tool_choice")),
        }
    }
    let config = generation_config(&body)?;
    if !config.is_empty() {
        req.insert("generationConfig".into(), Value::Object(config));
    }
    write_object(req, out)
}

/// Refuse the features a `GenerateContentRequest` cannot express.
fn refuse_unsupported(body: &Map<String, Value>) -> Result<(), TranslateError> {
    refuse_present(
        body,
        &["functions", "function_call", "web_search_options", "audio"],
    )?;
    match present(body, "n") {
        None => {}
        Some(v) if v.as_u64() == Some(1) => {}
        Some(v) if v.is_u64() => return Err(TranslateError::Unsupported("n")),
        Some(_) => return Err(TranslateError::BadField("n")),
    }
    refuse_logprobs(body)?;
    match present(body, "logit_bias") {
        None => {}
        Some(Value::Object(m)) if m.is_empty() => {}
        Some(_) => return Err(TranslateError::Unsupported("logit_bias")),
    }
    match present(body, "parallel_tool_calls") {
        None | Some(Value::Bool(true)) => {}
        Some(Value::Bool(false)) => return Err(TranslateError::Unsupported("parallel_tool_calls")),
        Some(_) => return Err(TranslateError::BadField("parallel_tool_calls")),
    }
    refuse_modalities(body)?;
    match present(body, "stream") {
        None | Some(Value::Bool(_)) => {}
        Some(_) => return Err(TranslateError::BadField("stream")),
    }
    match present(body, "user") {
        None | Some(Value::String(_)) => {}
        Some(_) => return Err(TranslateError::BadField("user")),
    }
    Ok(())
}

/// The system instruction's parts and the conversation's turns.
fn translate_messages(
    body: &Map<String, Value>,
) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return Err(TranslateError::BadField("messages"));
    };
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    let mut last_role: Option<&'static str> = None;
    for (i, message) in messages.iter().enumerate() {
        let Value::Object(message) = message else {
            return Err(TranslateError::BadField("messages"));
        };
        let mut parts = Vec::new();
        let role = match message.get("role").and_then(Value::as_str) {
            Some("system" | "developer") => {
                content_parts(message.get("content"), false, &mut system)?;
                continue;
            }
            Some("user") => {
                content_parts(message.get("content"), true, &mut parts)?;
                "user"
            }
            Some("assistant") => {
                assistant_parts(message, &mut parts)?;
                "model"
            }
            Some("tool") => {
                let earlier = messages.get(..i).unwrap_or_default();
                parts.push(function_response(message, earlier)?);
                "user"
            }
            Some("function") => return Err(TranslateError::Unsupported("functions")),
            _ => return Err(TranslateError::BadField("role")),
        };
        if parts.is_empty() {
            continue;
        }
        match contents.last_mut().and_then(|t| t.get_mut("parts")) {
            Some(Value::Array(turn)) if last_role == Some(role) => turn.extend(parts),
            _ => {
                let mut turn = Map::new();
                turn.insert("role".into(), Value::from(role));
                turn.insert("parts".into(), Value::Array(parts));
                contents.push(Value::Object(turn));
                last_role = Some(role);
            }
        }
    }
    if contents.is_empty() {
        return Err(TranslateError::BadField("messages"));
    }
    Ok((system, contents))
}

fn text_part(text: &str) -> Value {
    let mut part = Map::new();
    part.insert("text".into(), Value::from(text));
    Value::Object(part)
}

/// The parts of a message's `content`: a string, an array of parts, or `null`. Images only
/// where `media` (user messages).
fn content_parts(
    content: Option<&Value>,
    media: bool,
    parts: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    match content {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => {
            if !s.is_empty() {
                parts.push(text_part(s));
            }
        }
        Some(Value::Array(items)) => {
            for item in items {
                match item.get("type").and_then(Value::as_str) {
                    Some(kind @ ("text" | "refusal")) => match item.get(kind) {
                        Some(Value::String(s)) => {
                            if !s.is_empty() {
                                parts.push(text_part(s));
                            }
                        }
                        _ => return Err(TranslateError::BadField("content")),
                    },
                    Some("image_url") if media => parts.push(image_part(item.get("image_url"))?),
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

/// An `image_url` part's `inlineData` or `fileData` part.
fn image_part(image_url: Option<&Value>) -> Result<Value, TranslateError> {
    let url = match image_url {
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => match o.get("url") {
            Some(Value::String(s)) => s.as_str(),
            _ => return Err(TranslateError::BadField("image_url")),
        },
        _ => return Err(TranslateError::BadField("image_url")),
    };
    let mut part = Map::new();
    let mut data = Map::new();
    if let Some(rest) = strip_prefix_ignore_case(url, "data:") {
        let Some((meta, payload)) = rest.split_once(',') else {
            return Err(TranslateError::BadField("image_url"));
        };
        let Some(meta) = meta.strip_suffix(";base64") else {
            return Err(TranslateError::BadField("image_url"));
        };
        let mime = meta.split(';').next().unwrap_or_default();
        if mime.is_empty() || payload.is_empty() {
            return Err(TranslateError::BadField("image_url"));
        }
        data.insert("mimeType".into(), Value::from(mime));
        data.insert("data".into(), Value::from(payload));
        part.insert("inlineData".into(), Value::Object(data));
    } else if strip_prefix_ignore_case(url, "https://").is_some()
        || strip_prefix_ignore_case(url, "http://").is_some()
    {
        if let Some(mime) = mime_of_url(url) {
            data.insert("mimeType".into(), Value::from(mime));
        }
        data.insert("fileUri".into(), Value::from(url));
        part.insert("fileData".into(), Value::Object(data));
    } else {
        return Err(TranslateError::Unsupported("image_url"));
    }
    Ok(Value::Object(part))
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| s.get(prefix.len()..))
        .flatten()
}

/// The image type a URL's path names by its extension, for the kinds Gemini reads.
fn mime_of_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, ext) = name.rsplit_once('.')?;
    Some(match ext.to_ascii_lowercase().as_str() {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "heic" => "image/heic",
        "heif" => "image/heif",
        _ => return None,
    })
}

/// An assistant message's parts: its texts, then a `functionCall` per tool call.
fn assistant_parts(
    message: &Map<String, Value>,
    parts: &mut Vec<Value>,
) -> Result<(), TranslateError> {
    if present(message, "function_call").is_some() {
        return Err(TranslateError::Unsupported("function_call"));
    }
    content_parts(message.get("content"), false, parts)?;
    match present(message, "tool_calls") {
        None => {}
        Some(Value::Array(calls)) => {
            for call in calls {
                parts.push(function_call_part(call)?);
            }
        }
        Some(_) => return Err(TranslateError::BadField("tool_calls")),
    }
    Ok(())
}

/// An assistant tool call's `functionCall` part, with what its id carries.
fn function_call_part(call: &Value) -> Result<Value, TranslateError> {
    let Value::Object(call) = call else {
        return Err(TranslateError::BadField("tool_calls"));
    };
    match call.get("type").and_then(Value::as_str) {
        None | Some("function") => {}
        Some(_) => return Err(TranslateError::Unsupported("tool_calls")),
    }
    let Some(Value::Object(function)) = call.get("function") else {
        return Err(TranslateError::BadField("tool_calls"));
    };
    let Some(name) = function.get("name").and_then(Value::as_str) else {
        return Err(TranslateError::BadField("tool_calls"));
    };
    let args = match function.get("arguments") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::String(s)) if s.trim().is_empty() => Map::new(),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Object(args)) => args,
            _ => return Err(TranslateError::BadField("arguments")),
        },
        Some(_) => return Err(TranslateError::BadField("arguments")),
    };
    let carried = decode_call_id(call.get("id").and_then(Value::as_str).unwrap_or_default());
    let mut fc = Map::new();
    if let Some(id) = carried.gemini_id {
        fc.insert("id".into(), Value::from(id));
    }
    fc.insert("name".into(), Value::from(name));
    fc.insert("args".into(), Value::Object(args));
    let mut part = Map::new();
    part.insert("functionCall".into(), Value::Object(fc));
    if let Some(signature) = carried.signature {
        part.insert("thoughtSignature".into(), Value::from(signature));
    }
    Ok(Value::Object(part))
}

/// A tool message's `functionResponse` part; its function's name is that of the tool call
/// with its `tool_call_id` among the `earlier` messages (the latest one).
fn function_response(
    message: &Map<String, Value>,
    earlier: &[Value],
) -> Result<Value, TranslateError> {
    let Some(id) = message.get("tool_call_id").and_then(Value::as_str) else {
        return Err(TranslateError::BadField("tool_call_id"));
    };
    let name = earlier
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .filter_map(|m| m.get("tool_calls").and_then(Value::as_array))
        .flatten()
        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or(TranslateError::BadField("tool_call_id"))?;
    let mut text = String::new();
    match message.get("content") {
        None | Some(Value::Null) => {}
        Some(Value::String(s)) => text.push_str(s),
        Some(Value::Array(items)) => {
            for item in items {
                match (item.get("type").and_then(Value::as_str), item.get("text")) {
                    (Some("text"), Some(Value::String(s))) => text.push_str(s),
                    _ => return Err(TranslateError::BadField("content")),
                }
            }
        }
        Some(_) => return Err(TranslateError::BadField("content")),
    }
    let result = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(object)) => Value::Object(object),
        _ => Value::String(text),
    };
    let mut response = Map::new();
    response.insert("result".into(), result);
    let mut fr = Map::new();
    if let Some(gemini_id) = decode_call_id(id).gemini_id {
        fr.insert("id".into(), Value::from(gemini_id));
    }
    fr.insert("name".into(), Value::from(name));
    fr.insert("response".into(), Value::Object(response));
    let mut part = Map::new();
    part.insert("functionResponse".into(), Value::Object(fr));
    Ok(Value::Object(part))
}

/// The function declarations of `tools` (`None` when there are none).
fn translate_tools(body: &Map<String, Value>) -> Result<Option<Vec<Value>>, TranslateError> {
    let tools = match present(body, "tools") {
        None => return Ok(None),
        Some(Value::Array(tools)) if tools.is_empty() => return Ok(None),
        Some(Value::Array(tools)) => tools,
        Some(_) => return Err(TranslateError::BadField("tools")),
    };
    let mut declarations = Vec::with_capacity(tools.len());
    for tool in tools {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(_) => return Err(TranslateError::Unsupported("tools")),
            None => return Err(TranslateError::BadField("tools")),
        }
        let (function, name) = tool_function(tool)?;
        let mut declaration = Map::new();
        declaration.insert("name".into(), Value::from(name));
        if let Some(d) = tool_description(function)? {
            declaration.insert("description".into(), Value::from(d));
        }
        if let Some(schema) = tool_parameters(function)?.filter(|s| !s.is_empty()) {
            declaration.insert("parametersJsonSchema".into(), Value::Object(schema.clone()));
        }
        declarations.push(Value::Object(declaration));
    }
    Ok(Some(declarations))
}

/// `functionCallingConfig` for `tool_choice` (`None` when absent).
fn translate_tool_choice(
    body: &Map<String, Value>,
) -> Result<Option<Map<String, Value>>, TranslateError> {
    let mut config = Map::new();
    let names = |tools: &[Value]| -> Result<Vec<Value>, TranslateError> {
        tools
            .iter()
            .map(|t| {
                t.get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .map(Value::from)
                    .ok_or(TranslateError::BadField("tool_choice"))
            })
            .collect()
    };
    let (mode, allowed) = match present(body, "tool_choice") {
        None => return Ok(None),
        Some(Value::String(s)) => match s.as_str() {
            "none" => ("NONE", None),
            "auto" => ("AUTO", None),
            "required" => ("ANY", None),
            _ => return Err(TranslateError::BadField("tool_choice")),
        },
        Some(Value::Object(choice)) => match choice.get("type").and_then(Value::as_str) {
            Some("function") => {
                let Some(name) = choice
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                else {
                    return Err(TranslateError::BadField("tool_choice"));
                };
                ("ANY", Some(vec![Value::from(name)]))
            }
            Some("allowed_tools") => {
                let allowed = choice.get("allowed_tools");
                let tools = allowed
                    .and_then(|a| a.get("tools"))
                    .and_then(Value::as_array)
                    .ok_or(TranslateError::BadField("tool_choice"))?;
                // Gemini limits the functions only in ANY mode.
                match allowed.and_then(|a| a.get("mode")).and_then(Value::as_str) {
                    Some("required") => ("ANY", Some(names(tools)?)),
                    Some("auto") => return Err(TranslateError::Unsupported("tool_choice")),
                    _ => return Err(TranslateError::BadField("tool_choice")),
                }
            }
            _ => return Err(TranslateError::Unsupported("tool_choice")),
        },
        Some(_) => return Err(TranslateError::BadField("tool_choice")),
    };
    config.insert("mode".into(), Value::from(mode));
    if let Some(allowed) = allowed {
        config.insert("allowedFunctionNames".into(), Value::Array(allowed));
    }
    Ok(Some(config))
}

/// `generationConfig`: the sampling knobs, the output's format and thinking.
fn generation_config(body: &Map<String, Value>) -> Result<Map<String, Value>, TranslateError> {
    let mut config = Map::new();
    match (
        present(body, "max_completion_tokens"),
        present(body, "max_tokens"),
    ) {
        (Some(v), _) | (None, Some(v)) => {
            let n = v.as_u64().ok_or(TranslateError::BadField("max_tokens"))?;
            config.insert("maxOutputTokens".into(), Value::from(n));
        }
        (None, None) => {}
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
        if let Some(v) = present(body, from) {
            if !v.is_number() {
                return Err(TranslateError::BadField(from));
            }
            config.insert(to.into(), v.clone());
        }
    }
    for (from, to) in [("top_k", "topK"), ("seed", "seed")] {
        if let Some(v) = present(body, from) {
            if !(v.is_i64() || v.is_u64()) {
                return Err(TranslateError::BadField(from));
            }
            config.insert(to.into(), v.clone());
        }
    }
    match present(body, "stop") {
        None => {}
        Some(Value::String(s)) => {
            config.insert(
                "stopSequences".into(),
                Value::Array(vec![Value::from(s.as_str())]),
            );
        }
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(Value::Array(a)) if a.iter().all(Value::is_string) => {
            config.insert("stopSequences".into(), Value::Array(a.clone()));
        }
        Some(_) => return Err(TranslateError::BadField("stop")),
    }
    if let Some(format) = present(body, "response_format") {
        match format.get("type").and_then(Value::as_str) {
            Some("text") => {}
            Some("json_object") => {
                config.insert("responseMimeType".into(), Value::from("application/json"));
            }
            Some("json_schema") => {
                let Some(Value::Object(schema)) =
                    format.get("json_schema").and_then(|s| s.get("schema"))
                else {
                    return Err(TranslateError::BadField("response_format"));
                };
                config.insert("responseMimeType".into(), Value::from("application/json"));
                config.insert("responseJsonSchema".into(), Value::Object(schema.clone()));
            }
            Some(_) => return Err(TranslateError::Unsupported("response_format")),
            None => return Err(TranslateError::BadField("response_format")),
        }
    }
    let mut thinking = Map::new();
    match present(body, "reasoning_effort") {
        None => {}
        Some(Value::String(effort)) => match effort.as_str() {
            "minimal" | "low" | "medium" | "high" => {
                thinking.insert(
                    "thinkingLevel".into(),
                    Value::from(effort.to_ascii_uppercase()),
                );
                thinking.insert("includeThoughts".into(), Value::Bool(true));
            }
            "none" => {
                thinking.insert("thinkingBudget".into(), Value::from(0));
            }
            _ => return Err(TranslateError::BadField("reasoning_effort")),
        },
        Some(_) => return Err(TranslateError::BadField("reasoning_effort")),
    }
    extra_thinking(body, &mut thinking)?;
    if !thinking.is_empty() {
        config.insert("thinkingConfig".into(), Value::Object(thinking));
    }
    Ok(config)
}

/// `extra_body.google.thinking_config`, Google's convention for OpenAI clients, into
/// `thinking`. Anything else under `extra_body` is refused.
fn extra_thinking(
    body: &Map<String, Value>,
    thinking: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let extra = match present(body, "extra_body") {
        None => return Ok(()),
        Some(Value::Object(extra)) => extra,
        Some(_) => return Err(TranslateError::BadField("extra_body")),
    };
    for (key, value) in extra {
        let Value::Object(google) = value else {
            return Err(TranslateError::Unsupported("extra_body"));
        };
        if key != "google" {
            return Err(TranslateError::Unsupported("extra_body"));
        }
        for (key, value) in google {
            let Value::Object(config) = value else {
                return Err(TranslateError::Unsupported("extra_body"));
            };
            if key != "thinking_config" {
                return Err(TranslateError::Unsupported("extra_body"));
            }
            for (key, value) in config {
                let (to, ok) = match key.as_str() {
                    "thinking_budget" => ("thinkingBudget", value.is_i64()),
                    "include_thoughts" => ("includeThoughts", value.is_boolean()),
                    "thinking_level" => ("thinkingLevel", value.is_string()),
                    _ => return Err(TranslateError::Unsupported("extra_body")),
                };
                if !ok {
                    return Err(TranslateError::BadField("extra_body"));
                }
                let value = match value.as_str() {
                    Some(level) => Value::from(level.to_ascii_uppercase()),
                    None => value.clone(),
                };
                thinking.insert(to.into(), value);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Tool call ids

/// What a tool call id carries back to Gemini.
#[derive(Debug, Default, PartialEq, Eq)]
struct Carried {
    gemini_id: Option<String>,
    signature: Option<String>,
}

/// The last [`CALL_ID_UNIQUE_CHARS`] letters and digits of a completion's id.
fn unique_of(completion_id: &str) -> String {
    let alnum: Vec<char> = completion_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .collect();
    let start = alnum.len().saturating_sub(CALL_ID_UNIQUE_CHARS);
    let unique: String = alnum.iter().skip(start).collect();
    if unique.is_empty() {
        "0".into()
    } else {
        unique
    }
}

/// The tool call id for the `index`th call of an answer (see the module docs). `Err` for a
/// signature that is not base64 or too long, or a Gemini id too long.
fn encode_call_id(
    unique: &str,
    index: usize,
    gemini_id: Option<&str>,
    signature: Option<&str>,
) -> Result<String, TranslateError> {
    let mut id = format!("call_{unique}_{index}");
    if let Some(g) = gemini_id.filter(|g| !g.is_empty()) {
        if g.len() > FUNCTION_CALL_ID_BYTES_MAX {
            return Err(TranslateError::BadField("functionCall"));
        }
        let mut data = String::new();
        base64url_encode(g.as_bytes(), &mut data);
        push_segment(&mut id, 'g', &data);
    }
    if let Some(s) = signature.filter(|s| !s.is_empty()) {
        let body = s.trim_end_matches('=');
        let valid = s.len() <= THOUGHT_SIGNATURE_BYTES_MAX
            && s.len() - body.len() <= 2
            && !body.is_empty()
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_'));
        if !valid {
            return Err(TranslateError::BadField("thoughtSignature"));
        }
        let data: String = body
            .chars()
            .map(|c| match c {
                '+' => '-',
                '/' => '_',
                c => c,
            })
            .collect();
        push_segment(&mut id, 's', &data);
    }
    Ok(id)
}

/// `-<kind><length>_<data>` onto a tool call id.
fn push_segment(id: &mut String, kind: char, data: &str) {
    id.push('-');
    id.push(kind);
    id.push_str(&data.len().to_string());
    id.push('_');
    id.push_str(data);
}

/// What a tool call id carries; nothing for an id not of our shape.
fn decode_call_id(id: &str) -> Carried {
    decode_call_id_parts(id).unwrap_or_default()
}

fn decode_call_id_parts(id: &str) -> Option<Carried> {
    if id.len() > TOOL_CALL_ID_BYTES_MAX {
        return None;
    }
    let rest = id.strip_prefix("call_")?;
    let (unique, rest) = rest.split_once('_')?;
    if unique.is_empty() || !unique.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let index_len = rest.bytes().take_while(u8::is_ascii_digit).count();
    if index_len == 0 {
        return None;
    }
    let mut rest = rest.get(index_len..)?;
    let mut carried = Carried::default();
    while !rest.is_empty() {
        let segment = rest.strip_prefix('-')?;
        let (kind, segment) = segment.split_at_checked(1)?;
        let (len, segment) = segment.split_once('_')?;
        if len.is_empty() || len.len() > 6 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: usize = len.parse().ok()?;
        let data = segment.get(..len)?;
        rest = segment.get(len..)?;
        if data.is_empty() {
            return None;
        }
        match kind {
            "g" if carried.gemini_id.is_none() => {
                let bytes = base64url_decode(data)?;
                carried.gemini_id = Some(String::from_utf8(bytes).ok()?);
            }
            "s" if carried.signature.is_none() => {
                if data.len() % 4 == 1
                    || !data
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                {
                    return None;
                }
                let mut sig: String = data
                    .chars()
                    .map(|c| match c {
                        '-' => '+',
                        '_' => '/',
                        c => c,
                    })
                    .collect();
                while !sig.len().is_multiple_of(4) {
                    sig.push('=');
                }
                carried.signature = Some(sig);
            }
            _ => return None,
        }
    }
    Some(carried)
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in unpadded base64url, appended to `out`.
fn base64url_encode(bytes: &[u8], out: &mut String) {
    let char_of = |sextet: u32| {
        let i = usize::try_from(sextet & 63).unwrap_or_default();
        char::from(BASE64URL.get(i).copied().unwrap_or(b'A'))
    };
    for chunk in bytes.chunks(3) {
        let mut n = 0u32;
        for (i, b) in chunk.iter().enumerate() {
            n |= u32::from(*b) << (16 - 8 * i);
        }
        for i in 0..=chunk.len() {
            out.push(char_of(n >> (18 - 6 * i)));
        }
    }
}

/// Unpadded base64url back to bytes; `None` when it is not.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let v = BASE64URL.iter().position(|x| x == c)?;
            n |= u32::try_from(v).ok()? << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push(u8::try_from((n >> (16 - 8 * i)) & 0xff).ok()?);
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Responses

/// Gemini's token counts (`usageMetadata`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    prompt: u64,
    tool_use_prompt: u64,
    cached: u64,
    candidates: u64,
    thoughts: u64,
}

impl Counts {
    /// Overwrite the counts `usage` reports (each report is cumulative; the last wins).
    fn update(&mut self, usage: &Value) {
        let get = |key| usage.get(key).and_then(Value::as_u64);
        if let Some(n) = get("promptTokenCount") {
            self.prompt = n;
        }
        if let Some(n) = get("toolUsePromptTokenCount") {
            self.tool_use_prompt = n;
        }
        if let Some(n) = get("cachedContentTokenCount") {
            self.cached = n;
        }
        if let Some(n) = get("candidatesTokenCount") {
            self.candidates = n;
        }
        if let Some(n) = get("thoughtsTokenCount") {
            self.thoughts = n;
        }
    }

    fn usage(self) -> Usage {
        Usage {
            prompt_tokens: self.prompt.saturating_add(self.tool_use_prompt),
            completion_tokens: self.candidates.saturating_add(self.thoughts),
            cached_tokens: self.cached,
            cache_write_tokens: 0,
            reasoning_tokens: self.thoughts,
        }
    }
}

/// OpenAI's `finish_reason` for a Gemini `finishReason` (see the module docs).
fn finish_reason(reason: &str) -> &'static str {
    match reason {
        "MAX_TOKENS" => "length",
        "SAFETY"
        | "RECITATION"
        | "LANGUAGE"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION"
        | "MODEL_ARMOR" => "content_filter",
        _ => "stop",
    }
}

/// A function call of an answer, as OpenAI writes it.
#[derive(Debug)]
struct Call {
    id: String,
    name: String,
    arguments: String,
}

/// A `functionCall` part as the `index`th tool call of the answer.
fn read_call(part: &Value, unique: &str, index: usize) -> Result<Call, TranslateError> {
    let fc = part.get("functionCall");
    let Some(name) = fc.and_then(|f| f.get("name")).and_then(Value::as_str) else {
        return Err(TranslateError::BadField("functionCall"));
    };
    let arguments = match fc.and_then(|f| f.get("args")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return Err(TranslateError::BadField("functionCall")),
    };
    let gemini_id = fc.and_then(|f| f.get("id")).and_then(Value::as_str);
    let signature = part.get("thoughtSignature").and_then(Value::as_str);
    Ok(Call {
        id: encode_call_id(unique, index, gemini_id, signature)?,
        name: name.to_owned(),
        arguments,
    })
}

/// One part of a candidate's content.
enum Piece<'a> {
    Text(&'a str),
    Thought(&'a str),
    Call(&'a Value),
    Other,
}

fn piece_of(part: &Value) -> Piece<'_> {
    if part.get("functionCall").is_some() {
        return Piece::Call(part);
    }
    match part.get("text").and_then(Value::as_str) {
        Some(t) if part.get("thought").and_then(Value::as_bool) == Some(true) => Piece::Thought(t),
        Some(t) => Piece::Text(t),
        None => Piece::Other,
    }
}

/// The parts of a response's first candidate, and the candidate's `finishReason`; `None` for a
/// response without candidates.
fn first_candidate(resp: &Value) -> Option<(&[Value], Option<&str>)> {
    let candidate = resp.get("candidates")?.as_array()?.first()?;
    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    Some((parts, candidate.get("finishReason").and_then(Value::as_str)))
}

fn is_blocked(resp: &Value) -> bool {
    resp.get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .is_some_and(|r| !r.is_null())
}

/// Translate a Gemini `GenerateContentResponse` into an OpenAI `chat.completion` with `id`,
/// `model` (the name to report: the engine passes the deployment's) and `created` (unix
/// seconds), appended to `out` (nothing is appended on error); returns the usage it reports.
/// Its tool call ids are unique by `id` (see the module docs). A Google error body is
/// [`TranslateError::BadField`]`("error")` (see [`error_to_openai`]); a response without
/// candidates that is not a blocked prompt is `BadField("candidates")`.
pub fn response_to_chat(
    gemini_body: &[u8],
    id: &str,
    model: &str,
    created: u64,
    out: &mut Vec<u8>,
) -> Result<Usage, TranslateError> {
    let Ok(resp @ Value::Object(_)) = serde_json::from_slice::<Value>(gemini_body) else {
        return Err(TranslateError::NotJson);
    };
    if resp.get("error").is_some() {
        return Err(TranslateError::BadField("error"));
    }
    let unique = unique_of(id);
    let mut text = String::new();
    let mut reasoning = String::new();
    let mut calls = Vec::new();
    let finish = match first_candidate(&resp) {
        Some((parts, reason)) => {
            for part in parts {
                match piece_of(part) {
                    Piece::Text(t) => text.push_str(t),
                    Piece::Thought(t) => reasoning.push_str(t),
                    Piece::Call(part) => calls.push(read_call(part, &unique, calls.len())?),
                    Piece::Other => {}
                }
            }
            match finish_reason(reason.unwrap_or("STOP")) {
                "stop" if !calls.is_empty() => "tool_calls",
                f => f,
            }
        }
        None if is_blocked(&resp) => "content_filter",
        None => return Err(TranslateError::BadField("candidates")),
    };
    let mut counts = Counts::default();
    if let Some(usage) = resp.get("usageMetadata") {
        counts.update(usage);
    }
    let usage = counts.usage();

    let tool_calls: Vec<ToolCall<'_>> = calls
        .iter()
        .map(|call| ToolCall {
            id: &call.id,
            name: &call.name,
            arguments: &call.arguments,
        })
        .collect();
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
            finish_reason: finish,
            usage: &usage,
            details: UsageDetails::REASONING,
        },
    );
    Ok(usage)
}

// ---------------------------------------------------------------------------------------------
// Errors

/// The `error` object of a Google error body: `{"error":{...}}`, or the same as the one
/// element of an array (how `streamGenerateContent` without `alt=sse` answers).
fn error_object(v: &Value) -> Option<&Value> {
    match v {
        Value::Array(a) if a.len() == 1 => a.first().and_then(|e| e.get("error")),
        _ => v.get("error"),
    }
    .filter(|e| e.is_object())
}

/// The `details` of an error of `@type` ending in `kind` (`google.rpc.RetryInfo`, ...).
fn details_of<'a>(error: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    error
        .get("details")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(move |d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.ends_with(kind))
        })
}

/// Translate a Google error body (`{"error":{"code","message","status","details"}}`) that came
/// with HTTP `status` into an OpenAI error body, appended to `out`. `type` as OpenAI names it
/// (`invalid_request_error` for 400s and 404s, `permission_error` for 403,
/// `requests` with code `rate_limit_exceeded` for 429 `RESOURCE_EXHAUSTED`, `server_error` for
/// 5xx); `code` Google's `status` in lower case, or OpenAI's own code where it has one
/// (`invalid_api_key` for an `API_KEY_INVALID` reason or 401). A body that is not one gets a
/// message naming the status. Never fails.
pub fn error_to_openai(status: u16, gemini_error_body: &[u8], out: &mut Vec<u8>) {
    let parsed = serde_json::from_slice::<Value>(gemini_error_body).ok();
    let error = parsed.as_ref().and_then(error_object);
    let google_status = error.and_then(|e| e.get("status")).and_then(Value::as_str);
    let bad_key = error.is_some_and(|e| {
        details_of(e, "google.rpc.ErrorInfo")
            .any(|d| d.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID"))
    });
    let message = error.and_then(|e| e.get("message")).and_then(Value::as_str);
    let (openai_type, code) = openai_error_kind(status, google_status, bad_key);
    chat_out::push_upstream_error_body(
        out,
        "Gemini",
        status,
        message,
        openai_type,
        code.as_deref(),
    );
}

/// The wait a Google error body's `RetryInfo` detail asks for (`"retryDelay":"7s"`), in whole
/// seconds rounded up; `None` when it has none. For a `retry-after` header on a 429 or 503:
/// Gemini sends the delay only in the body.
pub fn retry_after_s(gemini_error_body: &[u8]) -> Option<u32> {
    let v = serde_json::from_slice::<Value>(gemini_error_body).ok()?;
    let error = error_object(&v)?;
    let delay = details_of(error, "google.rpc.RetryInfo").find_map(|d| {
        d.get("retryDelay")
            .and_then(Value::as_str)
            .and_then(duration_s)
    });
    delay
}

/// A protobuf JSON duration (`"7s"`, `"1.5s"`) in whole seconds, rounded up.
fn duration_s(s: &str) -> Option<u32> {
    let n = s.strip_suffix('s')?;
    let (whole, frac) = n.split_once('.').unwrap_or((n, ""));
    if (whole.is_empty() && frac.is_empty())
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let mut secs = if whole.is_empty() {
        0
    } else {
        whole.parse::<u64>().unwrap_or(u64::MAX)
    };
    if frac.bytes().any(|b| b != b'0') {
        secs = secs.saturating_add(1);
    }
    Some(u32::try_from(secs).unwrap_or(u32::MAX))
}

/// OpenAI's error type and code for a Google `status` (else the HTTP `status`); `bad_key`
/// when the details say the API key is invalid.
fn openai_error_kind(
    status: u16,
    google_status: Option<&str>,
    bad_key: bool,
) -> (&'static str, Option<String>) {
    let lower = || google_status.map(str::to_ascii_lowercase);
    let fixed = |kind, code: &str| (kind, Some(code.to_owned()));
    match (google_status, status) {
        _ if bad_key => fixed("invalid_request_error", "invalid_api_key"),
        (Some("UNAUTHENTICATED"), _) | (None, 401) => {
            fixed("invalid_request_error", "invalid_api_key")
        }
        (Some("PERMISSION_DENIED"), _) | (None, 403) => {
            fixed("permission_error", "permission_denied")
        }
        (Some("RESOURCE_EXHAUSTED"), _) | (None, 429) => fixed("requests", "rate_limit_exceeded"),
        (Some("NOT_FOUND"), _) | (None, 404) => fixed("invalid_request_error", "not_found"),
        (Some("INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE"), _) => {
            ("invalid_request_error", lower())
        }
        (
            Some(
                "INTERNAL" | "UNAVAILABLE" | "DEADLINE_EXCEEDED" | "UNKNOWN" | "DATA_LOSS"
                | "CANCELLED" | "ABORTED" | "UNIMPLEMENTED",
            ),
            _,
        ) => ("server_error", lower()),
        (_, 400..=499) => ("invalid_request_error", lower()),
        _ => ("server_error", lower()),
    }
}

// ---------------------------------------------------------------------------------------------
// Streams

/// Translates Gemini's server-sent events (`streamGenerateContent?alt=sse`) into OpenAI
/// `chat.completion.chunk` events.
///
/// Feed it the decoded response body in pieces of any size; it appends whole OpenAI events to
/// `out` as each Gemini event completes, so the output is the same however the input was cut.
/// Events: a first chunk with `delta.role`, one chunk per non-empty text (`content`) or
/// thought (`reasoning_content`) part, two per `functionCall` part (Gemini sends each call
/// whole: the call's `index`, `id`, `type`, `name` and empty `arguments`, then its whole
/// `arguments`), and at the end of the body ([`finish`](Self::finish)) a chunk with the
/// `finish_reason`, the usage chunk with `"choices":[]` when asked for, and `data: [DONE]`
/// (Gemini sends no end marker: its last event carries the `finishReason`). A Google error
/// object in the stream becomes an OpenAI error event and `[DONE]`; so does a body that ends
/// without any `finishReason` (or blocked prompt), or a call whose signature cannot be carried.
/// `usageMetadata` repeats in events (cumulative; the last report wins). After `[DONE]`
/// further input is ignored; events that are not JSON objects and events longer than
/// [`STREAM_EVENT_BYTES_MAX`] are skipped.
#[derive(Debug)]
pub struct StreamToChat {
    chunks: Chunks,
    include_usage: bool,
    unique: String,
    events: EventReader,
    calls: usize,
    finish_reason: Option<&'static str>,
    counts: Option<Counts>,
    done: bool,
}

impl StreamToChat {
    /// A translator whose chunks carry `id`, `model` and `created` (unix seconds), and end with
    /// a usage chunk if `include_usage` (the client's `stream_options.include_usage`).
    pub fn new(id: &str, model: &str, created: u64, include_usage: bool) -> Self {
        StreamToChat {
            chunks: Chunks::new(id, model, created),
            include_usage,
            unique: unique_of(id),
            events: EventReader::new(),
            calls: 0,
            finish_reason: None,
            counts: None,
            done: false,
        }
    }

    /// Translate the events that `input` completes, appending OpenAI events to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut events = std::mem::take(&mut self.events);
        events.feed(input, |event| self.on_event(event, out));
        self.events = events;
    }

    /// At the end of the upstream body: translate a last event that lacked its blank line, then
    /// write the finish chunk, the usage chunk (when asked for) and `[DONE]`; or, when no
    /// `finishReason` came, an error event and `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.done {
            return;
        }
        let mut events = std::mem::take(&mut self.events);
        events.finish(|event| self.on_event(event, out));
        self.events = events;
        if self.done {
            return;
        }
        let Some(reason) = self.finish_reason else {
            self.push_error(
                out,
                0,
                Some("INTERNAL"),
                "the Gemini upstream ended the stream without a finishReason",
            );
            return;
        };
        let reason = if reason == "stop" && self.calls > 0 {
            "tool_calls"
        } else {
            reason
        };
        self.chunks.finish(out, reason);
        let usage = self.counts.unwrap_or_default().usage();
        self.chunks.end(
            out,
            self.include_usage
                .then_some((&usage, UsageDetails::REASONING)),
        );
        self.done = true;
    }

    /// The usage reported so far, once the upstream has reported any.
    pub fn usage(&self) -> Option<Usage> {
        self.counts.map(Counts::usage)
    }

    /// Whether `[DONE]` has been written.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn on_event(&mut self, event: Event<'_>, out: &mut Vec<u8>) {
        // After `[DONE]` further input is ignored.
        if self.done {
            return;
        }
        let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(event.data) else {
            return;
        };
        if let Some(error) = v.get("error") {
            let status = error
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0);
            let google_status = error.get("status").and_then(Value::as_str);
            let message = error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("the Gemini upstream reported an error");
            self.push_error(out, status, google_status, message);
            return;
        }
        if let Some(usage) = v.get("usageMetadata") {
            self.counts
                .get_or_insert_with(Counts::default)
                .update(usage);
        }
        let Some((parts, reason)) = first_candidate(&v) else {
            if is_blocked(&v) {
                self.finish_reason = Some("content_filter");
            }
            return;
        };
        for part in parts {
            match piece_of(part) {
                Piece::Text(t) if !t.is_empty() => self.chunks.text(out, "content", t),
                Piece::Thought(t) if !t.is_empty() => {
                    self.chunks.text(out, "reasoning_content", t);
                }
                Piece::Call(part) => match read_call(part, &self.unique, self.calls) {
                    Ok(call) => self.push_call(out, &call),
                    Err(_) => {
                        self.push_error(
                            out,
                            0,
                            Some("INTERNAL"),
                            "the Gemini upstream sent a function call that cannot be carried",
                        );
                        return;
                    }
                },
                _ => {}
            }
        }
        if let Some(reason) = reason {
            self.finish_reason = Some(finish_reason(reason));
        }
    }

    fn push_call(&mut self, out: &mut Vec<u8>, call: &Call) {
        let index = self.calls as u64;
        self.calls += 1;
        self.chunks
            .tool_call_start(out, index, &call.id, &call.name);
        self.chunks.tool_call_arguments(out, index, &call.arguments);
    }

    fn push_error(
        &mut self,
        out: &mut Vec<u8>,
        status: u16,
        google_status: Option<&str>,
        message: &str,
    ) {
        let (openai_type, code) = openai_error_kind(status, google_status, false);
        chat_out::push_error_event(out, message, openai_type, code.as_deref());
        self.done = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::testing::{self, data_events, feed_in_pieces};
    use proptest::prelude::*;
    use serde_json::json;

    fn to_gemini(body: &Value) -> Result<Value, TranslateError> {
        testing::request_json(chat_to_gemini, body)
    }

    #[test]
    fn paths_whole_and_streamed_and_unsafe_models_refused() {
        let mut out = String::from("left over");
        assert_eq!(path("gemini-2.0-flash", false, &mut out), Ok(()));
        assert_eq!(out, "/v1beta/models/gemini-2.0-flash:generateContent");
        assert_eq!(path("gemini-2.5-pro_x.1", true, &mut out), Ok(()));
        assert_eq!(
            out,
            "/v1beta/models/gemini-2.5-pro_x.1:streamGenerateContent?alt=sse"
        );
        let long = "g".repeat(MODEL_ID_BYTES_MAX + 1);
        for m in [
            "",
            ".",
            "..",
            "a/b",
            "a?b",
            "a:b",
            "a b",
            "a%2f",
            "é",
            long.as_str(),
        ] {
            assert!(path(m, false, &mut out).is_err(), "{m:?}");
        }
        let longest = "g".repeat(MODEL_ID_BYTES_MAX);
        assert!(path(&longest, true, &mut out).is_ok());
    }

    #[test]
    fn system_multi_turn_and_knobs() {
        let body = json!({
            "model": "gemini-flash",
            "messages": [
                {"role": "system", "content": "You are terse."},
                {"role": "developer", "content": [{"type": "text", "text": "Answer in English."}]},
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."},
                {"role": "assistant", "content": [{"type": "text", "text": "Ask away."}]},
                {"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "text", "text": ""}]},
                {"role": "user", "content": "Be brief."}
            ],
            "max_completion_tokens": 100,
            "max_tokens": 7,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "seed": 7,
            "presence_penalty": 0.1,
            "frequency_penalty": -0.2,
            "stop": ["END", "STOP"],
            "stream": true,
            "stream_options": {"include_usage": true},
            "n": 1,
            "logprobs": false,
            "user": "u-1",
            "store": false,
            "response_format": {"type": "json_object"}
        });
        assert_eq!(
            to_gemini(&body),
            Ok(json!({
                "systemInstruction": {"parts": [{"text": "You are terse."}, {"text": "Answer in English."}]},
                "contents": [
                    {"role": "user", "parts": [{"text": "Hi"}]},
                    {"role": "model", "parts": [{"text": "Hello."}, {"text": "Ask away."}]},
                    {"role": "user", "parts": [{"text": "What is 2+2?"}, {"text": "Be brief."}]}
                ],
                "generationConfig": {
                    "maxOutputTokens": 100,
                    "temperature": 0.5,
                    "topP": 0.9,
                    "topK": 40,
                    "seed": 7,
                    "presencePenalty": 0.1,
                    "frequencyPenalty": -0.2,
                    "stopSequences": ["END", "STOP"],
                    "responseMimeType": "application/json"
                }
            }))
        );

        let base = json!({"messages": [{"role": "user", "content": "Hi"}]});
        let v = to_gemini(&base).expect("translates");
        assert_eq!(
            v,
            json!({"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]})
        );
        let mut b = base.clone();
        b["max_tokens"] = json!(70);
        b["stop"] = json!("\n\n");
        b["response_format"] = json!({"type": "json_schema", "json_schema": {"name": "r", "strict": true, "schema": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false}}});
        b["reasoning_effort"] = json!("low");
        let v = to_gemini(&b).expect("translates");
        assert_eq!(
            v["generationConfig"],
            json!({
                "maxOutputTokens": 70,
                "stopSequences": ["\n\n"],
                "responseMimeType": "application/json",
                "responseJsonSchema": {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": false},
                "thinkingConfig": {"thinkingLevel": "LOW", "includeThoughts": true}
            })
        );
        let mut b = base.clone();
        b["reasoning_effort"] = json!("none");
        assert_eq!(
            to_gemini(&b).expect("translates")["generationConfig"],
            json!({"thinkingConfig": {"thinkingBudget": 0}})
        );
        let mut b = base.clone();
        b["extra_body"] = json!({"google": {"thinking_config": {"thinking_budget": 800, "include_thoughts": true}}});
        assert_eq!(
            to_gemini(&b).expect("translates")["generationConfig"],
            json!({"thinkingConfig": {"thinkingBudget": 800, "includeThoughts": true}})
        );
    }

    #[test]
    fn images_inline_and_by_url() {
        let body = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What are these?"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a/cat.JPG?x=1"}},
            {"type": "image_url", "image_url": {"url": "http://example.com/render"}}
        ]}]});
        assert_eq!(
            to_gemini(&body).expect("translates")["contents"][0]["parts"],
            json!([
                {"text": "What are these?"},
                {"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}},
                {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/a/cat.JPG?x=1"}},
                {"fileData": {"fileUri": "http://example.com/render"}}
            ])
        );
        let with_part =
            |part: Value| to_gemini(&json!({"messages": [{"role": "user", "content": [part]}]}));
        use TranslateError::{BadField, Unsupported};
        assert_eq!(
            with_part(json!({"type": "image_url", "image_url": {"url": "ftp://x/y.png"}})),
            Err(Unsupported("image_url"))
        );
        assert_eq!(
            with_part(json!({"type": "image_url", "image_url": {"url": "data:image/png,abc"}})),
            Err(BadField("image_url"))
        );
        assert_eq!(
            with_part(json!({"type": "image_url", "image_url": {}})),
            Err(BadField("image_url"))
        );
        assert_eq!(
            with_part(
                json!({"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}})
            ),
            Err(Unsupported("audio"))
        );
        assert_eq!(
            with_part(json!({"type": "file", "file": {"file_id": "f"}})),
            Err(Unsupported("file"))
        );
        // No images in a system prompt or an assistant turn.
        let sys = json!({"messages": [
            {"role": "system", "content": [{"type": "image_url", "image_url": {"url": "https://x/a.png"}}]},
            {"role": "user", "content": "Hi"}
        ]});
        assert_eq!(to_gemini(&sys), Err(Unsupported("image_url")));
    }

    #[test]
    fn tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "strict": true,
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}}},
            {"type": "function", "function": {"name": "now", "parameters": {}}}
        ]);
        let body = json!({"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": tools, "parallel_tool_calls": true});
        let v = to_gemini(&body).expect("translates");
        assert_eq!(
            v["tools"],
            json!([{"functionDeclarations": [
                {"name": "get_weather", "description": "Weather of a city",
                 "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"], "additionalProperties": false}},
                {"name": "now"}
            ]}])
        );
        assert!(v.get("toolConfig").is_none());
        for (choice, config) in [
            (json!("none"), json!({"mode": "NONE"})),
            (json!("auto"), json!({"mode": "AUTO"})),
            (json!("required"), json!({"mode": "ANY"})),
            (
                json!({"type": "function", "function": {"name": "now"}}),
                json!({"mode": "ANY", "allowedFunctionNames": ["now"]}),
            ),
            (
                json!({"type": "allowed_tools", "allowed_tools": {"mode": "required", "tools": [{"type": "function", "function": {"name": "get_weather"}}]}}),
                json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
            ),
        ] {
            let mut b = body.clone();
            b["tool_choice"] = choice.clone();
            assert_eq!(
                to_gemini(&b).expect("translates")["toolConfig"],
                json!({"functionCallingConfig": config}),
                "{choice}"
            );
        }
        use TranslateError::{BadField, Unsupported};
        let with = |key: &str, value: Value| testing::with_field(&body, key, value, to_gemini);
        assert_eq!(
            with(
                "tool_choice",
                json!({"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": []}})
            ),
            Err(Unsupported("tool_choice"))
        );
        assert_eq!(
            with("tool_choice", json!("sometimes")),
            Err(BadField("tool_choice"))
        );
        assert_eq!(
            with("tools", json!([{"type": "web_search_preview"}])),
            Err(Unsupported("tools"))
        );
        assert_eq!(
            with(
                "tools",
                json!([{"type": "function", "function": {"description": "no name"}}])
            ),
            Err(BadField("tools"))
        );
        assert_eq!(
            with("parallel_tool_calls", json!(false)),
            Err(Unsupported("parallel_tool_calls"))
        );
        // Without tools, only the tool choices that change nothing.
        let plain = json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "none"});
        assert!(to_gemini(&plain)
            .expect("translates")
            .get("toolConfig")
            .is_none());
        let plain =
            json!({"messages": [{"role": "user", "content": "Hi"}], "tool_choice": "required"});
        assert_eq!(to_gemini(&plain), Err(BadField("tool_choice")));
    }

    /// A signature in the standard alphabet, with `+`, `/` and padding.
    const SIG: &str = "+/v7AAEC/+s=";

    #[test]
    fn tool_history_goes_back_with_signatures_and_names() {
        let id0 = encode_call_id("abc123", 0, None, Some(SIG)).expect("encodes");
        let id1 = encode_call_id("abc123", 1, Some("fc-7/x"), None).expect("encodes");
        assert_eq!(id0, "call_abc123_0-s11_-_v7AAEC_-s");
        assert!(id1.starts_with("call_abc123_1-g8_"), "{id1}");
        let body = json!({"messages": [
            {"role": "user", "content": "Weather in Paris and the time?"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": id0, "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": id1, "type": "function", "function": {"name": "now", "arguments": ""}}
            ]},
            {"role": "tool", "tool_call_id": id0, "content": "{\"temp_c\": 21}"},
            {"role": "tool", "tool_call_id": id1, "content": [{"type": "text", "text": "12:00"}]},
            {"role": "assistant", "content": "21 C at noon.", "tool_calls": [
                {"id": "call_foreign", "type": "function", "function": {"name": "log", "arguments": "{}"}}
            ]},
            {"role": "tool", "tool_call_id": "call_foreign", "content": "[1, 2]"},
            {"role": "user", "content": "Thanks"}
        ]});
        let v = to_gemini(&body).expect("translates");
        assert_eq!(
            v["contents"],
            json!([
                {"role": "user", "parts": [{"text": "Weather in Paris and the time?"}]},
                {"role": "model", "parts": [
                    {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
                    {"functionCall": {"id": "fc-7/x", "name": "now", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "get_weather", "response": {"result": {"temp_c": 21}}}},
                    {"functionResponse": {"id": "fc-7/x", "name": "now", "response": {"result": "12:00"}}}
                ]},
                {"role": "model", "parts": [
                    {"text": "21 C at noon."},
                    {"functionCall": {"name": "log", "args": {}}}
                ]},
                {"role": "user", "parts": [
                    {"functionResponse": {"name": "log", "response": {"result": "[1, 2]"}}},
                    {"text": "Thanks"}
                ]}
            ])
        );

        use TranslateError::{BadField, Unsupported};
        let bad_args = json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}
        ]});
        assert_eq!(to_gemini(&bad_args), Err(BadField("arguments")));
        let array_args = json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}
        ]});
        assert_eq!(to_gemini(&array_args), Err(BadField("arguments")));
        let orphan = json!({"messages": [
            {"role": "user", "content": "x"},
            {"role": "tool", "tool_call_id": "nobody", "content": "1"}
        ]});
        assert_eq!(to_gemini(&orphan), Err(BadField("tool_call_id")));
        let legacy = json!({"messages": [{"role": "function", "name": "f", "content": "1"}]});
        assert_eq!(to_gemini(&legacy), Err(Unsupported("functions")));
    }

    #[test]
    fn call_ids_carry_only_what_is_ours() {
        let id = encode_call_id("u", 3, Some("g-1"), Some(SIG)).expect("encodes");
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_')));
        assert_eq!(
            decode_call_id(&id),
            Carried {
                gemini_id: Some("g-1".into()),
                signature: Some(SIG.into())
            }
        );
        for foreign in [
            "",
            "call_abc",
            "call_abc_",
            "call_a-b_1-s4_abcd",
            "toolu_01-s4_abcd",
            "call_a_1-x4_abcd",
            "call_a_1-s0_",
            "call_a_1-s4_abcd-s4_abcd",
            "call_a_1-s4_ab!!",
            "call_a_1-s1_a",
            "call_a_1-s+4_abcd",
            "call_a_1-s5_abcd",
            "call_a_1-s4_abcdx",
            "call_a_1-g4_%%%%",
            "call_a_1.s4_abcd",
            "call_é_1-s4_abcd",
        ] {
            assert_eq!(decode_call_id(foreign), Carried::default(), "{foreign}");
        }
        let long = format!(
            "call_a_1-s{0}_{1}",
            TOOL_CALL_ID_BYTES_MAX,
            "A".repeat(TOOL_CALL_ID_BYTES_MAX)
        );
        assert_eq!(decode_call_id(&long), Carried::default());
        // Signatures that cannot be carried fail the answer rather than be dropped.
        for bad in ["a=b", "ab===", "=", "a b", "é"] {
            assert_eq!(
                encode_call_id("u", 0, None, Some(bad)),
                Err(TranslateError::BadField("thoughtSignature")),
                "{bad}"
            );
        }
        let huge = "A".repeat(THOUGHT_SIGNATURE_BYTES_MAX + 1);
        assert!(encode_call_id("u", 0, None, Some(&huge)).is_err());
        assert!(encode_call_id(
            "u",
            0,
            Some(&"g".repeat(FUNCTION_CALL_ID_BYTES_MAX + 1)),
            None
        )
        .is_err());
        assert_eq!(unique_of("chatcmpl-0123456789abcdef0"), "123456789abcdef0");
        assert_eq!(unique_of("--"), "0");
    }

    #[test]
    fn unsupported_and_malformed_requests_are_refused() {
        let base = json!({"messages": [{"role": "user", "content": "Hi"}]});
        let with = |key: &str, value: Value| testing::with_field(&base, key, value, to_gemini);
        use TranslateError::{BadField, NotJson, Unsupported};
        assert_eq!(with("functions", json!([])), Err(Unsupported("functions")));
        assert_eq!(
            with("function_call", json!("auto")),
            Err(Unsupported("function_call"))
        );
        assert_eq!(with("n", json!(2)), Err(Unsupported("n")));
        assert_eq!(with("n", json!("2")), Err(BadField("n")));
        assert_eq!(with("logprobs", json!(true)), Err(Unsupported("logprobs")));
        assert_eq!(with("top_logprobs", json!(2)), Err(Unsupported("logprobs")));
        assert_eq!(
            with("logit_bias", json!({"50256": -100})),
            Err(Unsupported("logit_bias"))
        );
        assert!(with("logit_bias", json!({})).is_ok());
        assert_eq!(
            with("audio", json!({"voice": "alloy"})),
            Err(Unsupported("audio"))
        );
        assert_eq!(
            with("modalities", json!(["text", "audio"])),
            Err(Unsupported("audio"))
        );
        assert_eq!(
            with("web_search_options", json!({})),
            Err(Unsupported("web_search_options"))
        );
        assert_eq!(
            with("response_format", json!({"type": "grammar"})),
            Err(Unsupported("response_format"))
        );
        assert_eq!(
            with(
                "response_format",
                json!({"type": "json_schema", "json_schema": {"name": "x"}})
            ),
            Err(BadField("response_format"))
        );
        assert_eq!(
            with("extra_body", json!({"google": {"cached_content": "c"}})),
            Err(Unsupported("extra_body"))
        );
        assert_eq!(
            with(
                "extra_body",
                json!({"google": {"thinking_config": {"thinking_budget": "lots"}}})
            ),
            Err(BadField("extra_body"))
        );
        assert_eq!(
            with("reasoning_effort", json!("max")),
            Err(BadField("reasoning_effort"))
        );
        assert_eq!(with("seed", json!(1.5)), Err(BadField("seed")));
        assert_eq!(with("top_k", json!("40")), Err(BadField("top_k")));
        assert_eq!(
            with("temperature", json!("hot")),
            Err(BadField("temperature"))
        );
        assert_eq!(with("max_tokens", json!(-1)), Err(BadField("max_tokens")));
        assert_eq!(with("stop", json!([1])), Err(BadField("stop")));
        assert_eq!(with("stream", json!("yes")), Err(BadField("stream")));
        assert_eq!(with("user", json!(5)), Err(BadField("user")));
        assert_eq!(with("messages", json!([])), Err(BadField("messages")));
        assert_eq!(
            with("messages", json!([{"role": "system", "content": "only"}])),
            Err(BadField("messages"))
        );
        assert_eq!(
            with("messages", json!([{"role": "robot", "content": "x"}])),
            Err(BadField("role"))
        );
        assert_eq!(
            with("messages", json!([{"role": "user", "content": 5}])),
            Err(BadField("content"))
        );
        let mut out = b"kept".to_vec();
        for body in [&b"[1]"[..], b"\"s\"", b"{", b"{} {}", b"", b"null"] {
            assert_eq!(chat_to_gemini(body, &mut out), Err(NotJson));
        }
        assert_eq!(out, b"kept", "nothing appended on error");
    }

    fn to_chat_whole(body: &str) -> (Value, Usage) {
        let mut out = Vec::new();
        let usage = response_to_chat(
            body.as_bytes(),
            "chatcmpl-0123456789abcdef",
            "gemini-flash",
            1_700_000_000,
            &mut out,
        )
        .expect("translates");
        (serde_json::from_slice(&out).expect("valid JSON"), usage)
    }

    /// A `GenerateContentResponse` as the API sends it, with thoughts.
    const RESPONSE: &str = r#"{"candidates":[{"content":{"parts":[{"text":"Let me think.","thought":true},{"text":"Hello"},{"text":", \"world\"!","thoughtSignature":"AAAA"}],"role":"model"},"finishReason":"STOP","index":0}],"usageMetadata":{"promptTokenCount":12,"candidatesTokenCount":6,"totalTokenCount":31,"cachedContentTokenCount":4,"thoughtsTokenCount":10,"toolUsePromptTokenCount":3,"promptTokensDetails":[{"modality":"TEXT","tokenCount":12}]},"modelVersion":"gemini-2.5-flash","responseId":"abc"}"#;

    #[test]
    fn response_maps_text_thoughts_usage_and_finish_reason() {
        let mut out = Vec::new();
        let usage = response_to_chat(
            RESPONSE.as_bytes(),
            "chatcmpl-1",
            "gemini-flash",
            1_700_000_000,
            &mut out,
        )
        .expect("translates");
        assert_eq!(
            std::str::from_utf8(&out).expect("UTF-8"),
            concat!(
                r#"{"id":"chatcmpl-1","object":"chat.completion","created":1700000000,"model":"gemini-flash","#,
                r#""choices":[{"index":0,"message":{"role":"assistant","content":"Hello, \"world\"!","reasoning_content":"Let me think."},"logprobs":null,"finish_reason":"stop"}],"#,
                r#""usage":{"prompt_tokens":15,"completion_tokens":16,"total_tokens":31,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":10}}}"#
            )
        );
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 15,
                completion_tokens: 16,
                cached_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 10
            }
        );

        for (reason, finish) in [
            ("\"STOP\"", "stop"),
            ("\"MAX_TOKENS\"", "length"),
            ("\"SAFETY\"", "content_filter"),
            ("\"RECITATION\"", "content_filter"),
            ("\"BLOCKLIST\"", "content_filter"),
            ("\"PROHIBITED_CONTENT\"", "content_filter"),
            ("\"SPII\"", "content_filter"),
            ("\"IMAGE_SAFETY\"", "content_filter"),
            ("\"MALFORMED_FUNCTION_CALL\"", "stop"),
            ("\"OTHER\"", "stop"),
            ("\"SOMETHING_NEW\"", "stop"),
            ("null", "stop"),
        ] {
            let body = format!(
                r#"{{"candidates":[{{"finishReason":{reason}}}],"usageMetadata":{{"promptTokenCount":1,"candidatesTokenCount":2}}}}"#
            );
            let (v, usage) = to_chat_whole(&body);
            assert_eq!(v["choices"][0]["finish_reason"], finish, "{reason}");
            assert_eq!(v["choices"][0]["message"]["content"], "");
            assert_eq!(v["usage"]["total_tokens"], 3);
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1, 2));
        }

        // A blocked prompt: an empty answer, filtered.
        let (v, usage) = to_chat_whole(
            r#"{"promptFeedback":{"blockReason":"SAFETY","safetyRatings":[]},"usageMetadata":{"promptTokenCount":9,"totalTokenCount":9}}"#,
        );
        assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
        assert_eq!(v["choices"][0]["message"]["content"], "");
        assert_eq!(usage.prompt_tokens, 9);

        let mut out = Vec::new();
        let error = br#"{"error":{"code":429,"message":"Resource exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        assert_eq!(
            response_to_chat(error, "i", "m", 1, &mut out),
            Err(TranslateError::BadField("error"))
        );
        assert_eq!(
            response_to_chat(b"{\"usageMetadata\":{}}", "i", "m", 1, &mut out),
            Err(TranslateError::BadField("candidates"))
        );
        assert_eq!(
            response_to_chat(b"[]", "i", "m", 1, &mut out),
            Err(TranslateError::NotJson)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn response_function_calls_become_tool_calls_that_come_back_signed() {
        let body = format!(
            r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"functionCall":{{"name":"get_weather","args":{{"city":"Paris"}}}},"thoughtSignature":"{SIG}"}},{{"functionCall":{{"name":"now","id":"x1"}}}}]}},"finishReason":"STOP"}}],"usageMetadata":{{"promptTokenCount":20,"candidatesTokenCount":8,"totalTokenCount":28}}}}"#
        );
        let (v, _) = to_chat_whole(&body);
        let message = &v["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
        let calls = message["tool_calls"].as_array().expect("tool calls");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_0123456789abcdef_0-s11_-_v7AAEC_-s");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        assert_eq!(calls[0]["function"]["arguments"], "{\"city\":\"Paris\"}");
        assert_eq!(calls[1]["function"]["arguments"], "{}");

        // The client sends the assistant message back as it got it, with the results.
        let back = json!({"messages": [
            {"role": "user", "content": "Weather?"},
            message,
            {"role": "tool", "tool_call_id": calls[0]["id"], "content": "sunny"},
            {"role": "tool", "tool_call_id": calls[1]["id"], "content": "noon"}
        ]});
        let g = to_gemini(&back).expect("translates");
        assert_eq!(
            g["contents"][1]["parts"],
            json!([
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SIG},
                {"functionCall": {"id": "x1", "name": "now", "args": {}}}
            ])
        );
        assert_eq!(
            g["contents"][2]["parts"],
            json!([
                {"functionResponse": {"name": "get_weather", "response": {"result": "sunny"}}},
                {"functionResponse": {"id": "x1", "name": "now", "response": {"result": "noon"}}}
            ])
        );

        // A signature that cannot ride in an id fails the answer.
        let bad = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f"},"thoughtSignature":"no good"}]},"finishReason":"STOP"}]}"#;
        let mut out = Vec::new();
        assert_eq!(
            response_to_chat(bad.as_bytes(), "i", "m", 1, &mut out),
            Err(TranslateError::BadField("thoughtSignature"))
        );
        let bad = r#"{"candidates":[{"content":{"parts":[{"functionCall":{"args":{}}}]},"finishReason":"STOP"}]}"#;
        assert_eq!(
            response_to_chat(bad.as_bytes(), "i", "m", 1, &mut out),
            Err(TranslateError::BadField("functionCall"))
        );
    }

    fn openai_error(status: u16, body: &[u8]) -> Value {
        let mut out = Vec::new();
        error_to_openai(status, body, &mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    /// Google's 429, as the Gemini API sends it.
    const QUOTA: &str = r#"{"error":{"code":429,"message":"You exceeded your current quota.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"generativelanguage.googleapis.com/generate_content_free_tier_requests","quotaId":"GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},{"@type":"type.googleapis.com/google.rpc.Help","links":[{"description":"Learn more","url":"https://ai.google.dev/gemini-api/docs/rate-limits"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"7s"}]}}"#;

    #[test]
    fn errors_map_to_openai_shape() {
        assert_eq!(
            openai_error(429, QUOTA.as_bytes()),
            json!({"error": {"message": "You exceeded your current quota.", "type": "requests", "param": null, "code": "rate_limit_exceeded"}})
        );
        assert_eq!(
            openai_error(400, br#"{"error":{"code":400,"message":"Invalid JSON payload received. Unknown name \"x\": Cannot find field.","status":"INVALID_ARGUMENT"}}"#),
            json!({"error": {"message": "Invalid JSON payload received. Unknown name \"x\": Cannot find field.", "type": "invalid_request_error", "param": null, "code": "invalid_argument"}})
        );
        let bad_key = openai_error(
            400,
            br#"[{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID","domain":"googleapis.com"}]}}]"#,
        );
        assert_eq!(bad_key["error"]["code"], "invalid_api_key");
        assert_eq!(bad_key["error"]["type"], "invalid_request_error");
        assert_eq!(
            openai_error(
                403,
                br#"{"error":{"code":403,"message":"denied","status":"PERMISSION_DENIED"}}"#
            )["error"]["type"],
            "permission_error"
        );
        let not_found = openai_error(
            404,
            br#"{"error":{"code":404,"message":"models/x is not found","status":"NOT_FOUND"}}"#,
        );
        assert_eq!(not_found["error"]["type"], "invalid_request_error");
        assert_eq!(not_found["error"]["code"], "not_found");
        let unavailable = openai_error(503, br#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#);
        assert_eq!(unavailable["error"]["type"], "server_error");
        assert_eq!(unavailable["error"]["code"], "unavailable");
        assert_eq!(
            openai_error(502, b"<html>bad gateway</html>"),
            json!({"error": {"message": "the Gemini upstream answered HTTP 502", "type": "server_error", "param": null, "code": null}})
        );
        assert_eq!(openai_error(401, b"")["error"]["code"], "invalid_api_key");
        assert_eq!(
            openai_error(413, b"{}")["error"]["type"],
            "invalid_request_error"
        );
    }

    #[test]
    fn retry_after_comes_from_retry_info() {
        assert_eq!(retry_after_s(QUOTA.as_bytes()), Some(7));
        let with = |delay: &str| {
            retry_after_s(
                format!(r#"{{"error":{{"code":429,"details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}]}}}}"#)
                    .as_bytes(),
            )
        };
        assert_eq!(with("1.5s"), Some(2));
        assert_eq!(with("0.000s"), Some(0));
        assert_eq!(with(".2s"), Some(1));
        assert_eq!(with("99999999999999s"), Some(u32::MAX));
        for bad in ["7", "-1s", "s", "1.2.3s", "1ms", ""] {
            assert_eq!(with(bad), None, "{bad}");
        }
        assert_eq!(retry_after_s(b"{\"error\":{\"code\":429}}"), None);
        assert_eq!(retry_after_s(b"not json"), None);
    }

    /// A Gemini stream (`alt=sse`) as the API sends it: CRLF, usage in every event.
    const STREAM: &str = concat!(
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"Hel\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 1,\"totalTokenCount\": 10},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"lo, \\\"w\\u00f6rld\\\"\\n!\"}],\"role\": \"model\"},\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 4,\"totalTokenCount\": 13},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
        "data: {\"candidates\": [{\"content\": {\"parts\": [{\"text\": \"\"}],\"role\": \"model\"},\"finishReason\": \"MAX_TOKENS\",\"index\": 0}],\"usageMetadata\": {\"promptTokenCount\": 9,\"candidatesTokenCount\": 5,\"totalTokenCount\": 14},\"modelVersion\": \"gemini-2.0-flash\",\"responseId\": \"r1\"}\r\n\r\n",
    );

    const HEAD: &str = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gemini-flash","choices":"#;

    fn expected(include_usage: bool) -> String {
        let usage = r#"[],"usage":{"prompt_tokens":9,"completion_tokens":5,"total_tokens":14,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}"#;
        testing::expected_chunks(
            HEAD,
            &[
                r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":"Hel"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{"content":"lo, \"wörld\"\n!"},"logprobs":null,"finish_reason":null}]"#,
                r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"length"}]"#,
            ],
            include_usage.then_some(usage),
        )
    }

    fn translate_in_pieces(
        stream: &[u8],
        cuts: &[usize],
        include_usage: bool,
    ) -> (Vec<u8>, Option<Usage>) {
        let mut t = StreamToChat::new("chatcmpl-1", "gemini-flash", 1_700_000_000, include_usage);
        let mut out = feed_in_pieces(&mut t, stream, cuts);
        let end = out.len();
        t.feed(STREAM.as_bytes(), &mut out);
        t.finish(&mut out);
        assert_eq!(out.len(), end, "nothing after [DONE]");
        (out, t.usage())
    }

    #[test]
    fn stream_translates_to_openai_chunks() {
        for include_usage in [false, true] {
            let (out, usage) = translate_in_pieces(STREAM.as_bytes(), &[], include_usage);
            assert_eq!(
                std::str::from_utf8(&out).expect("UTF-8"),
                expected(include_usage)
            );
            let usage = usage.expect("reported");
            assert_eq!((usage.prompt_tokens, usage.completion_tokens), (9, 5));
        }
        let lf = STREAM.replace("\r\n", "\n");
        let cuts: Vec<usize> = (0..lf.len()).collect();
        let (out, _) = translate_in_pieces(lf.as_bytes(), &cuts, true);
        assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected(true));
        assert_eq!(data_events(expected(true).as_bytes()).len(), 5);
    }

    /// A Gemini stream with a thought and two parallel calls (`SIG` stands for the signature).
    const TOOL_STREAM: &str = concat!(
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"text\":\"Checking.\",\"thought\":true}]}}],\"usageMetadata\":{\"promptTokenCount\":30,\"totalTokenCount\":30}}\r\n\r\n",
        "data: {\"candidates\":[{\"content\":{\"role\":\"model\",\"parts\":[{\"functionCall\":{\"name\":\"get_weather\",\"args\":{\"city\":\"Paris\"}},\"thoughtSignature\":\"SIG\"},{\"functionCall\":{\"name\":\"now\",\"args\":{}}}]},\"finishReason\":\"STOP\"}],\"usageMetadata\":{\"promptTokenCount\":30,\"candidatesTokenCount\":12,\"thoughtsTokenCount\":20,\"cachedContentTokenCount\":8,\"totalTokenCount\":62}}\r\n\r\n",
    );

    #[test]
    fn stream_tool_calls_and_thoughts() {
        let stream = TOOL_STREAM.replace("SIG", SIG);
        let (out, usage) = translate_in_pieces(stream.as_bytes(), &[50, 300], true);
        let events = data_events(&out);
        let deltas: Vec<&Value> = events.iter().map(|e| &e["choices"][0]["delta"]).collect();
        assert_eq!(deltas[0], &json!({"role": "assistant", "content": ""}));
        assert_eq!(deltas[1], &json!({"reasoning_content": "Checking."}));
        assert_eq!(
            deltas[2],
            &json!({"tool_calls": [{"index": 0, "id": "call_chatcmpl1_0-s11_-_v7AAEC_-s", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[3],
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(
            deltas[4],
            &json!({"tool_calls": [{"index": 1, "id": "call_chatcmpl1_1", "type": "function", "function": {"name": "now", "arguments": ""}}]})
        );
        assert_eq!(
            deltas[5],
            &json!({"tool_calls": [{"index": 1, "function": {"arguments": "{}"}}]})
        );
        assert_eq!(events[6]["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            events[7]["usage"],
            json!({"prompt_tokens": 30, "completion_tokens": 32, "total_tokens": 62, "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 20}})
        );
        assert_eq!(events.len(), 8);
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: 30,
                completion_tokens: 32,
                cached_tokens: 8,
                cache_write_tokens: 0,
                reasoning_tokens: 20
            })
        );
    }

    #[test]
    fn stream_errors_truncation_and_blocked_prompts() {
        // An error inside the stream.
        let stream = concat!(
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}]}\r\n\r\n",
            "data: {\"error\":{\"code\":503,\"message\":\"The model is overloaded.\",\"status\":\"UNAVAILABLE\"}}\r\n\r\n",
            "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"more\"}]},\"finishReason\":\"STOP\"}]}\r\n\r\n",
        );
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[], true);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.ends_with("data: {\"error\":{\"message\":\"The model is overloaded.\",\"type\":\"server_error\",\"param\":null,\"code\":\"unavailable\"}}\n\ndata: [DONE]\n\n"), "{out}");
        assert!(!out.contains("more"));

        // Cut off before the finishReason: an error event, then [DONE].
        let cut = STREAM.rfind("data:").expect("present");
        let (out, usage) =
            translate_in_pieces(STREAM.get(..cut).expect("in range").as_bytes(), &[], true);
        let out = String::from_utf8(out).expect("UTF-8");
        assert!(out.ends_with("without a finishReason\",\"type\":\"server_error\",\"param\":null,\"code\":\"internal\"}}\n\ndata: [DONE]\n\n"), "{out}");
        assert_eq!(usage.map(|u| u.completion_tokens), Some(4));

        // The last event without its blank line still counts.
        let (out, _) = translate_in_pieces(STREAM.trim_end().as_bytes(), &[], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));

        // A blocked prompt.
        let (out, _) = translate_in_pieces(
            b"data: {\"promptFeedback\":{\"blockReason\":\"PROHIBITED_CONTENT\"},\"usageMetadata\":{\"promptTokenCount\":5}}\r\n\r\n",
            &[],
            false,
        );
        let events = data_events(&out);
        assert_eq!(events.len(), 2);
        assert_eq!(events[1]["choices"][0]["finish_reason"], "content_filter");

        // A call whose signature cannot be carried.
        let (out, _) = translate_in_pieces(
            b"data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\"},\"thoughtSignature\":\"bad sig\"}]},\"finishReason\":\"STOP\"}]}\n\n",
            &[],
            false,
        );
        assert!(String::from_utf8(out)
            .expect("UTF-8")
            .contains("cannot be carried"));

        // Nothing at all.
        let (out, usage) = translate_in_pieces(b"", &[], true);
        assert!(out.ends_with(b"data: [DONE]\n\n"));
        assert_eq!(usage, None);
    }

    #[test]
    fn oversized_events_are_skipped() {
        let big = "x".repeat(STREAM_EVENT_BYTES_MAX + 1);
        let stream = format!(
            "data: {{\"candidates\":[{{\"content\":{{\"parts\":[{{\"text\":\"{big}\"}}]}}}}]}}\r\n\r\n{STREAM}"
        );
        let (out, _) = translate_in_pieces(stream.as_bytes(), &[7, 100_000, 200_000], false);
        assert_eq!(String::from_utf8(out).expect("UTF-8"), expected(false));
    }

    fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        (any::<bool>(), any::<bool>()).prop_map(|(lf, noise)| {
            let mut s = String::new();
            if noise {
                s.push_str(": keep-alive\r\n\r\nevent: x\r\ndata: [1,2]\r\n\r\ndata: {\"candidates\":[]}\r\n\r\n");
            }
            s.push_str(STREAM);
            let s = if lf { s.replace("\r\n", "\n") } else { s };
            s.into_bytes()
        })
    }

    testing::stream_split_independent!(300);

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Tool calls and thoughts too come out the same however the stream is cut.
        #[test]
        fn tool_stream_split_independent(
            cuts in prop::collection::vec(any::<usize>(), 0..12),
            include_usage in any::<bool>(),
        ) {
            let stream = TOOL_STREAM.replace("SIG", SIG);
            let whole = translate_in_pieces(stream.as_bytes(), &[], include_usage);
            prop_assert!(std::str::from_utf8(&whole.0).expect("UTF-8").contains("\"finish_reason\":\"tool_calls\""));
            prop_assert_eq!(translate_in_pieces(stream.as_bytes(), &cuts, include_usage), whole);
        }

        /// No panic on bytes rich in the stream's syntax, split independence there too, every
        /// event JSON, and the output always ends with [DONE].
        #[test]
        fn stream_never_panics(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n:data: {}[]\"candidates\"content\"parts\"text\"functionCall\"error\"finishReason\"STOP\",".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = translate_in_pieces(&stream, &[], true);
            prop_assert!(whole.0.ends_with(b"data: [DONE]\n\n"));
            data_events(&whole.0);
            prop_assert_eq!(translate_in_pieces(&stream, &cuts, true), whole);
        }

        #[test]
        fn stream_never_panics_on_any_bytes(stream in prop::collection::vec(any::<u8>(), 0..512)) {
            let (out, _) = translate_in_pieces(&stream, &[], false);
            prop_assert!(out.ends_with(b"data: [DONE]\n\n"));
        }

        /// Unpadded base64url decodes back to the bytes.
        #[test]
        fn base64url_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let mut s = String::new();
            base64url_encode(&bytes, &mut s);
            prop_assert_eq!(base64url_decode(&s), Some(bytes));
        }

        /// Any Gemini id and canonical signature come back from the id.
        #[test]
        fn call_ids_round_trip(
            gemini_id in "[ -~]{1,40}",
            sig_bytes in prop::collection::vec(any::<u8>(), 1..64),
        ) {
            // A canonical standard-base64 signature of the bytes.
            let mut url = String::new();
            base64url_encode(&sig_bytes, &mut url);
            let mut sig: String = url.chars().map(|c| match c { '-' => '+', '_' => '/', c => c }).collect();
            while !sig.len().is_multiple_of(4) {
                sig.push('=');
            }
            let id = encode_call_id("abc", 2, Some(&gemini_id), Some(&sig)).expect("encodes");
            prop_assert_eq!(decode_call_id(&id), Carried { gemini_id: Some(gemini_id), signature: Some(sig) });
        }

        /// The one-shot functions never panic, and their output is JSON when they succeed.
        #[test]
        fn one_shot_never_panic(body in prop::collection::vec(any::<u8>(), 0..256), status in any::<u16>()) {
            let mut out = Vec::new();
            if chat_to_gemini(&body, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            if response_to_chat(&body, "i", "m", 0, &mut out).is_ok() {
                prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            }
            out.clear();
            error_to_openai(status, &body, &mut out);
            prop_assert!(serde_json::from_slice::<Value>(&out).is_ok());
            let _ = retry_after_s(&body);
            let _ = decode_call_id(std::str::from_utf8(&body).unwrap_or_default());
        }
    }
}
