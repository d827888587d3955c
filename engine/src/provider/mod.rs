//! Upstream providers whose wire format is not OpenAI's, translated without I/O: the connection
//! driver hands in a body (or pieces of a stream) and gets back the bytes to send on.
//!
//! - [`anthropic`]: an OpenAI chat client talking to an Anthropic Messages upstream. The request
//!   ([`anthropic::chat_to_messages`]), the whole response ([`anthropic::message_to_chat`]), an
//!   error body ([`anthropic::error_to_openai`]) and the event stream
//!   ([`anthropic::StreamToChat`], fed pieces of any size).
//! - [`messages`]: the reverse, an Anthropic Messages client talking to an OpenAI-compatible
//!   upstream. The request ([`messages::messages_to_chat`]), the whole response
//!   ([`messages::chat_to_message`]), an error body ([`messages::error_to_anthropic`]) and the
//!   event stream ([`messages::StreamToMessages`], fed pieces of any size).
//! - [`azure`]: Azure OpenAI's deployment paths (its bodies are OpenAI's).
//! - `sse`: the server-sent event reader both stream translators read their upstream with.
//!
//! # Decisions
//!
//! - **serde_json, not the hot-path scanner.** Translation rewrites the whole body, so it
//!   allocates anyway; a `Value` tree is simpler to get right than a hand-rolled rewrite, and
//!   translated requests are the exception (most upstreams speak OpenAI).
//! - **Output written by hand** where clients may compare bytes (response bodies, stream chunks):
//!   keys in the order the client's own API sends them, strings escaped by one function.
//! - **Refuse, never drop, what changes the answer.** A feature the target cannot express (server
//!   tools, images inside tool results, several choices, log probabilities, JSON mode) is a
//!   [`TranslateError::Unsupported`] naming the field, mapped to a 400; sampling knobs with no
//!   counterpart and no effect on the shape of the answer (`seed`, `presence_penalty`, ...) are
//!   left out.

pub mod anthropic;
pub mod azure;
pub mod messages;
pub(crate) mod sse;

use std::fmt;

/// The message of [`TranslateError::Unsupported`]`("thread")`, which `crate::error` recognises
/// to give Anthropic clients Threads' `thread_unsupported_request` error code (the anthropic
/// SDK's tool runner then sends the whole conversation without `thread`).
pub const THREAD_UNSUPPORTED: &str =
    "`thread` (server-held conversation state) is not supported for this model's provider: send the whole conversation without it";

/// Why a body could not be translated. The caller maps it to a 400 (`Error::BadRequest` with
/// [`TranslateError::message`]) for a request, to a 502 for an upstream's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranslateError {
    /// Not exactly one JSON object (invalid JSON, another type at the top, bytes after it).
    NotJson,
    /// A field the translation reads has the wrong type or is missing. Names the field.
    BadField(&'static str),
    /// A feature the other format cannot express. Names the field (or content part type).
    Unsupported(&'static str),
}

impl TranslateError {
    /// A static, JSON-safe message (ASCII, no quotes or backslashes) for the error body.
    pub fn message(self) -> &'static str {
        match self {
            TranslateError::NotJson => "the body is not a single JSON object",
            TranslateError::BadField("messages") => {
                "`messages` must be a non-empty array of objects with a `role` and text `content`"
            }
            TranslateError::BadField("content") => {
                "message `content` must be a string or an array of text parts"
            }
            TranslateError::BadField("role") => {
                "message `role` must be one of system, developer, user, assistant"
            }
            TranslateError::BadField("max_tokens") => {
                "`max_tokens` (required in a Messages request) and `max_completion_tokens` must be non-negative integers"
            }
            TranslateError::BadField("temperature") => "`temperature` must be a number",
            TranslateError::BadField("top_p") => "`top_p` must be a number",
            TranslateError::BadField("stop") => "`stop` must be a string or an array of strings",
            TranslateError::BadField("stream") => "`stream` must be a boolean",
            TranslateError::BadField("user") => "`user` must be a string",
            TranslateError::BadField("system") => {
                "`system` must be a string or an array of text blocks"
            }
            TranslateError::BadField("stop_sequences") => {
                "`stop_sequences` must be an array of strings"
            }
            TranslateError::BadField("metadata") => {
                "`metadata` must be an object whose `user_id` is a string"
            }
            TranslateError::BadField("choices") => {
                "the upstream response has no `choices` (an error body, or not a chat completion)"
            }
            // Anthropic Messages clients (`messages`): tools and images.
            TranslateError::BadField("tools") => {
                "`tools` must be an array of tools, each with a `name` and an object `input_schema`"
            }
            TranslateError::BadField("tool_choice") => {
                "`tool_choice` must be an object of type auto, none, any or tool (with a `name`), any and tool only with `tools`"
            }
            TranslateError::BadField("tool_use") => {
                "`tool_use` blocks belong in assistant turns, with a string `id` and `name` and an object `input`"
            }
            TranslateError::BadField("tool_result") => {
                "`tool_result` blocks belong in user turns, with a string `tool_use_id`, text `content` and a boolean `is_error`"
            }
            TranslateError::BadField("image") => {
                "`image` blocks need a `source` of type base64 (with `media_type` and `data`) or url (with `url`)"
            }
            TranslateError::BadField("tool_calls") => {
                "the upstream's `tool_calls` must each name a function whose `arguments` are a JSON object"
            }
            TranslateError::Unsupported("thread") => THREAD_UNSUPPORTED,
            TranslateError::Unsupported("input_examples") => {
                "tool `input_examples` are not supported for this model's provider"
            }
            TranslateError::BadField(_) => "a field of the body has the wrong type",
            TranslateError::Unsupported("tools") => {
                "these `tools` are not supported for this model's provider (server tools never are)"
            }
            TranslateError::Unsupported("tool_choice") => {
                "`tool_choice` is not supported for this model's provider"
            }
            TranslateError::Unsupported("functions") => {
                "`functions` are not supported for this model's provider"
            }
            TranslateError::Unsupported("function_call") => {
                "`function_call` is not supported for this model's provider"
            }
            TranslateError::Unsupported("tool_calls") => {
                "assistant `tool_calls` are not supported for this model's provider"
            }
            TranslateError::Unsupported("tool") => {
                "`tool` and `function` messages are not supported for this model's provider"
            }
            TranslateError::Unsupported("image_url") => {
                "`image_url` content parts are not supported for this model's provider"
            }
            TranslateError::Unsupported("n") => {
                "`n` greater than 1 is not supported for this model's provider"
            }
            TranslateError::Unsupported("logprobs") => {
                "`logprobs` and `top_logprobs` are not supported for this model's provider"
            }
            TranslateError::Unsupported("response_format") => {
                "`response_format` other than text is not supported for this model's provider"
            }
            TranslateError::Unsupported("audio") => {
                "audio input and output are not supported for this model's provider"
            }
            TranslateError::Unsupported("thinking") => {
                "extended `thinking` is not supported for this model's provider"
            }
            TranslateError::Unsupported("mcp_servers") => {
                "`mcp_servers` are not supported for this model's provider"
            }
            TranslateError::Unsupported("output_format") => {
                "`output_format` is not supported for this model's provider"
            }
            TranslateError::Unsupported("image") => {
                "`image` blocks other than base64 or url sources are not supported for this model's provider"
            }
            TranslateError::Unsupported("document") => {
                "`document` content blocks are not supported for this model's provider"
            }
            TranslateError::Unsupported("tool_use") => {
                "`tool_use` content blocks are not supported for this model's provider"
            }
            TranslateError::Unsupported("tool_result") => {
                "`tool_result` content other than text (images, documents) is not supported for this model's provider"
            }
            TranslateError::Unsupported("content") => {
                "content blocks other than text are not supported for this model's provider"
            }
            TranslateError::Unsupported(_) => {
                "the request uses a feature not supported for this model's provider"
            }
        }
    }

    /// The field named by [`BadField`](Self::BadField) or [`Unsupported`](Self::Unsupported)
    /// (for the error body's `param`).
    pub fn field(self) -> Option<&'static str> {
        match self {
            TranslateError::NotJson => None,
            TranslateError::BadField(f) | TranslateError::Unsupported(f) => Some(f),
        }
    }
}

impl fmt::Display for TranslateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for TranslateError {}

/// `body[key]`, treating `null` as absent (as both APIs do).
pub(crate) fn present<'a>(
    body: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
) -> Option<&'a serde_json::Value> {
    body.get(key).filter(|v| !v.is_null())
}

/// Copy the numeric fields `keys` (sampling knobs both APIs name alike) from `body` to `req`;
/// one that is present but not a number is [`TranslateError::BadField`].
pub(crate) fn copy_numbers(
    body: &serde_json::Map<String, serde_json::Value>,
    keys: &[&'static str],
    req: &mut serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    for &key in keys {
        if let Some(v) = present(body, key) {
            if !v.is_number() {
                return Err(TranslateError::BadField(key));
            }
            req.insert(key.into(), v.clone());
        }
    }
    Ok(())
}

/// Append a translated request object to `out`. Serializing a `Value` into a `Vec` cannot fail
/// (its keys are strings, writes to a `Vec` do not fail); should it, `out` is left as it was.
pub(crate) fn write_object(
    object: serde_json::Map<String, serde_json::Value>,
    out: &mut Vec<u8>,
) -> Result<(), TranslateError> {
    let mark = out.len();
    serde_json::to_writer(&mut *out, &serde_json::Value::Object(object)).map_err(|_| {
        out.truncate(mark);
        TranslateError::NotJson
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_safe() {
        let all = [
            TranslateError::NotJson,
            TranslateError::BadField("messages"),
            TranslateError::BadField("content"),
            TranslateError::BadField("role"),
            TranslateError::BadField("max_tokens"),
            TranslateError::BadField("temperature"),
            TranslateError::BadField("top_p"),
            TranslateError::BadField("stop"),
            TranslateError::BadField("stream"),
            TranslateError::BadField("user"),
            TranslateError::BadField("system"),
            TranslateError::BadField("stop_sequences"),
            TranslateError::BadField("metadata"),
            TranslateError::BadField("choices"),
            TranslateError::BadField("tools"),
            TranslateError::BadField("tool_choice"),
            TranslateError::BadField("tool_use"),
            TranslateError::BadField("tool_result"),
            TranslateError::BadField("image"),
            TranslateError::BadField("tool_calls"),
            TranslateError::Unsupported("input_examples"),
            TranslateError::Unsupported("thread"),
            TranslateError::BadField("other"),
            TranslateError::Unsupported("tools"),
            TranslateError::Unsupported("tool_choice"),
            TranslateError::Unsupported("functions"),
            TranslateError::Unsupported("function_call"),
            TranslateError::Unsupported("tool_calls"),
            TranslateError::Unsupported("tool"),
            TranslateError::Unsupported("image_url"),
            TranslateError::Unsupported("n"),
            TranslateError::Unsupported("logprobs"),
            TranslateError::Unsupported("response_format"),
            TranslateError::Unsupported("audio"),
            TranslateError::Unsupported("thinking"),
            TranslateError::Unsupported("mcp_servers"),
            TranslateError::Unsupported("output_format"),
            TranslateError::Unsupported("image"),
            TranslateError::Unsupported("document"),
            TranslateError::Unsupported("tool_use"),
            TranslateError::Unsupported("tool_result"),
            TranslateError::Unsupported("content"),
            TranslateError::Unsupported("other"),
        ];
        for e in all {
            let m = e.message();
            assert!(
                !m.is_empty() && m.is_ascii() && !m.contains('"') && !m.contains('\\'),
                "{m}"
            );
            if let Some(f) = e.field() {
                if f != "other" && f != "tool" {
                    assert!(m.contains(f), "{m} names {f}");
                }
            }
        }
    }
}
