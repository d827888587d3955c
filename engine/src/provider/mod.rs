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
//! - [`responses`]: an OpenAI chat client talking to an upstream that serves the model only
//!   through OpenAI's Responses API. The request ([`responses::chat_to_responses`]), the whole
//!   response ([`responses::response_to_chat`], which also returns its usage) and the event
//!   stream ([`responses::StreamToChat`], fed pieces of any size); error bodies are OpenAI's
//!   already.
//! - [`azure`]: Azure OpenAI's deployment paths (its bodies are OpenAI's).
//! - [`bedrock`]: an OpenAI chat client talking to AWS Bedrock's Converse API. The path
//!   ([`bedrock::path`]), the request ([`bedrock::chat_to_converse`]), the whole response
//!   ([`bedrock::converse_to_chat`]), an error ([`bedrock::error_to_openai`]) and the binary
//!   event stream ([`bedrock::StreamToChat`], fed pieces of any size).
//! - [`eventstream`]: AWS's binary event stream framing (`application/vnd.amazon.eventstream`),
//!   which `ConverseStream` answers in.
//! - [`sigv4`]: AWS Signature Version 4 for Bedrock's requests.
//! - [`gemini`]: an OpenAI chat client talking to a Google Gemini upstream
//!   (`generateContent` / `streamGenerateContent`): the path ([`gemini::path`]), the request
//!   ([`gemini::chat_to_gemini`]), the whole response ([`gemini::response_to_chat`]), an error
//!   body ([`gemini::error_to_openai`], [`gemini::retry_after_s`]) and the event stream
//!   ([`gemini::StreamToChat`], fed pieces of any size). Tools both ways, thought signatures
//!   carried in the tool call ids.
//! - [`chat_out`]: the OpenAI chat output (whole answers, stream chunks, usage, error bodies)
//!   that every translator to OpenAI chat writes with.
//! - `sse`: the server-sent event reader the SSE stream translators read their upstream with.
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
pub mod bedrock;
pub mod chat_out;
pub mod eventstream;
pub mod gemini;
pub mod messages;
pub mod responses;
pub mod sigv4;
pub(crate) mod sse;
#[cfg(test)]
mod testing;

use std::fmt;

/// The message of [`TranslateError::Unsupported`]`("thread")`, which `crate::error` recognises
/// to give Anthropic clients Threads' `thread_unsupported_request` error code (the anthropic
/// SDK's tool runner then sends the whole conversation without `thread`).
pub const THREAD_UNSUPPORTED: &str =
    "`thread` (server-held conversation state) is not supported for this model's provider: send the whole conversation without it";

/// What every stream translator does: fed the upstream's body in pieces of any size, it
/// appends the client's events to `out` (the same whatever the cuts), ends the stream in
/// [`finish`](Self::finish), and reports the usage the upstream sent. Each translator has the
/// same methods inherently; the trait lets tests and fuzz checks drive them all with one helper.
pub trait StreamTranslator {
    /// How the translator reports usage.
    type Usage;
    /// Translate what `input` completes.
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>);
    /// At the end of the upstream body: finish the stream, with an error event if it broke off.
    fn finish(&mut self, out: &mut Vec<u8>);
    /// The usage reported so far, once the upstream has reported any.
    fn usage(&self) -> Option<Self::Usage>;
    /// Whether the stream's end has been written (further input is then ignored).
    fn is_done(&self) -> bool;
}

/// [`StreamTranslator`] for translators whose inherent methods have its signatures.
macro_rules! stream_translators {
    ($($translator:ty => $usage:ty),* $(,)?) => {$(
        impl StreamTranslator for $translator {
            type Usage = $usage;
            fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
                <$translator>::feed(self, input, out);
            }
            fn finish(&mut self, out: &mut Vec<u8>) {
                <$translator>::finish(self, out);
            }
            fn usage(&self) -> Option<$usage> {
                <$translator>::usage(self)
            }
            fn is_done(&self) -> bool {
                <$translator>::is_done(self)
            }
        }
    )*};
}

stream_translators!(
    anthropic::StreamToChat => (u64, u64),
    bedrock::StreamToChat => crate::llm::Usage,
    gemini::StreamToChat => crate::llm::Usage,
    messages::StreamToMessages => (u64, u64),
    responses::StreamToChat => crate::llm::Usage,
);

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

/// The message of [`TranslateError::BadField`] for each field that has its own (one for the
/// others), grouped by the translations that name them.
const BAD_FIELD_MESSAGES: &[(&str, &str)] = &[
    ("messages", "`messages` must be a non-empty array of objects with a `role` and text `content`"),
    ("content", "message `content` must be a string or an array of text parts"),
    ("role", "message `role` must be one of system, developer, user, assistant"),
    ("max_tokens", "`max_tokens` (required in a Messages request) and `max_completion_tokens` must be non-negative integers"),
    ("temperature", "`temperature` must be a number"),
    ("top_p", "`top_p` must be a number"),
    ("stop", "`stop` must be a string or an array of strings"),
    ("stream", "`stream` must be a boolean"),
    ("user", "`user` must be a string"),
    ("system", "`system` must be a string or an array of text blocks"),
    ("stop_sequences", "`stop_sequences` must be an array of strings"),
    ("metadata", "`metadata` must be an object whose `user_id` is a string"),
    ("choices", "the upstream response has no `choices` (an error body, or not a chat completion)"),
    // Tools, images and other fields (OpenAI chat to another API).
    ("tools", "`tools` must be an array of function tools (OpenAI's `{type: function, function: {name, parameters}}`, Anthropic's `{name, input_schema}`), given whenever the messages hold tool calls or results"),
    ("tool_choice", "`tool_choice` must be none, auto, required (any) or a tool named in `tools`"),
    ("tool_calls", "`tool_calls` (a client's or the upstream's) need an `id`, a `function.name` and `function.arguments` holding a JSON object"),
    ("tool_call_id", "a `tool` message needs the `tool_call_id` of the call it answers"),
    ("parallel_tool_calls", "`parallel_tool_calls` must be a boolean"),
    ("image_url", "`image_url.url` must be an http(s) URL or a base64 `data:` URL"),
    ("response_format", "`response_format` must be text, json_object or json_schema with a `json_schema.name`"),
    ("file", "a `file` part must have a `file` object of strings"),
    ("verbosity", "`verbosity` must be a string"),
    ("safety_identifier", "`safety_identifier` must be a string"),
    ("prompt_cache_key", "`prompt_cache_key` must be a string"),
    ("service_tier", "`service_tier` must be a string"),
    // Upstream answers (Bedrock's Converse, the Responses API).
    ("first_turn", "the conversation must start with a user message (first_turn) for this model's provider"),
    ("output", "the upstream answer has no well-formed `output` (an error body, or not the provider's answer)"),
    ("toolUse", "the upstream response has a `toolUse` block without its id or name"),
    ("status", "the upstream response has `status` failed"),
    ("object", "the upstream answer's `object` is not a response"),
    // Gemini (`gemini`): the fields its translation reads and refuses.
    ("arguments", "a tool call's `arguments` must be a string holding a JSON object"),
    ("n", "`n` must be a positive integer"),
    ("seed", "`seed` must be an integer"),
    ("top_k", "`top_k` must be an integer"),
    ("presence_penalty", "`presence_penalty` must be a number"),
    ("frequency_penalty", "`frequency_penalty` must be a number"),
    ("reasoning_effort", "`reasoning_effort` must be one of none, minimal, low, medium, high"),
    ("extra_body", "`extra_body.google.thinking_config` must hold an integer thinking_budget, a boolean include_thoughts and a string thinking_level"),
    ("error", "the upstream response is an error body, not an answer"),
    ("candidates", "the upstream response has no `candidates` and no blocked prompt"),
    ("functionCall", "the upstream response has a `functionCall` without a `name` or with `args` that are not an object"),
    ("thoughtSignature", "the upstream response has a `thoughtSignature` that is not base64 of at most 64 KiB"),
    // Anthropic Messages clients (`messages`): tools and images.
    ("tool_use", "`tool_use` blocks belong in assistant turns, with a string `id` and `name` and an object `input`"),
    ("tool_result", "`tool_result` blocks belong in user turns, with a string `tool_use_id`, text `content` and a boolean `is_error`"),
    ("image", "`image` blocks need a `source` of type base64 (with `media_type` and `data`) or url (with `url`)"),
];

/// The message of [`TranslateError::Unsupported`] for each field that has its own (one for the
/// others), grouped by the translations that name them.
const UNSUPPORTED_MESSAGES: &[(&str, &str)] = &[
    // The Responses API.
    ("stop", "`stop` sequences are not supported for this model's provider"),
    // Gemini (`gemini`): the fields its translation reads and refuses.
    ("logit_bias", "`logit_bias` is not supported for this model's provider"),
    ("extra_body", "`extra_body` other than google.thinking_config is not supported for this model's provider"),
    // Anthropic Messages clients (`messages`): tools and images.
    ("thread", THREAD_UNSUPPORTED),
    ("input_examples", "tool `input_examples` are not supported for this model's provider"),
    // Every translation.
    ("tools", "these `tools` are not supported for this model's provider (only function and custom tools are; server tools never)"),
    ("tool_choice", "`tool_choice` is not supported for this model's provider"),
    ("functions", "`functions` are not supported for this model's provider"),
    ("function_call", "`function_call` is not supported for this model's provider"),
    ("tool_calls", "assistant `tool_calls` are not supported for this model's provider"),
    ("tool", "`tool` and `function` messages are not supported for this model's provider"),
    ("image_url", "this `image_url` part is not supported for this model's provider (its role, media type or URL)"),
    ("n", "`n` greater than 1 is not supported for this model's provider"),
    ("logprobs", "`logprobs` and `top_logprobs` are not supported for this model's provider"),
    ("response_format", "`response_format` other than text is not supported for this model's provider"),
    ("audio", "audio input and output are not supported for this model's provider"),
    ("thinking", "extended `thinking` is not supported for this model's provider"),
    ("mcp_servers", "`mcp_servers` are not supported for this model's provider"),
    ("output_format", "`output_format` is not supported for this model's provider"),
    ("image", "`image` blocks other than base64 or url sources are not supported for this model's provider"),
    ("document", "`document` content blocks are not supported for this model's provider"),
    ("tool_use", "`tool_use` content blocks are not supported for this model's provider"),
    ("tool_result", "`tool_result` content other than text (images, documents) is not supported for this model's provider"),
    ("file", "`file` content parts are not supported for this model's provider"),
    ("content", "content blocks other than text are not supported for this model's provider"),
    // Bedrock (provider::bedrock).
    ("parallel_tool_calls", "`parallel_tool_calls` false is not supported for this model's provider"),
    ("reasoning_effort", "`reasoning_effort` is not supported for this model's provider"),
    ("web_search_options", "`web_search_options` are not supported for this model's provider"),
];

/// The message `table` has for `field`.
fn lookup(table: &[(&str, &'static str)], field: &str) -> Option<&'static str> {
    table.iter().find(|(f, _)| *f == field).map(|(_, m)| *m)
}

impl TranslateError {
    /// A static, JSON-safe message (ASCII, no quotes or backslashes) for the error body.
    pub fn message(self) -> &'static str {
        match self {
            TranslateError::NotJson => "the body is not a single JSON object",
            TranslateError::BadField(field) => lookup(BAD_FIELD_MESSAGES, field)
                .unwrap_or("a field of the body has the wrong type"),
            TranslateError::Unsupported(field) => lookup(UNSUPPORTED_MESSAGES, field)
                .unwrap_or("the request uses a feature not supported for this model's provider"),
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

/// Refuse each of `keys` that is present.
pub(crate) fn refuse_present(
    body: &serde_json::Map<String, serde_json::Value>,
    keys: &[&'static str],
) -> Result<(), TranslateError> {
    match keys.iter().find(|key| present(body, key).is_some()) {
        Some(key) => Err(TranslateError::Unsupported(key)),
        None => Ok(()),
    }
}

/// Refuse `n` other than 1 (several choices).
pub(crate) fn refuse_choices(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    match present(body, "n") {
        None => Ok(()),
        Some(v) if v.as_u64() == Some(1) => Ok(()),
        Some(_) => Err(TranslateError::Unsupported("n")),
    }
}

/// Refuse log probabilities: `logprobs` other than `false`, any `top_logprobs` (both named
/// `logprobs`).
pub(crate) fn refuse_logprobs(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    match present(body, "logprobs") {
        None | Some(serde_json::Value::Bool(false)) => {}
        Some(_) => return Err(TranslateError::Unsupported("logprobs")),
    }
    if present(body, "top_logprobs").is_some() {
        return Err(TranslateError::Unsupported("logprobs"));
    }
    Ok(())
}

/// Refuse `modalities` other than text only (named `audio`).
pub(crate) fn refuse_modalities(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    if let Some(modalities) = present(body, "modalities") {
        let text_only = modalities
            .as_array()
            .is_some_and(|m| m.iter().all(|x| x.as_str() == Some("text")));
        if !text_only {
            return Err(TranslateError::Unsupported("audio"));
        }
    }
    Ok(())
}

/// Refuse audio output: `audio`, or `modalities` other than text only.
pub(crate) fn refuse_audio(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    refuse_present(body, &["audio"])?;
    refuse_modalities(body)
}

/// What neither Anthropic's Messages nor Bedrock's Converse can express, in this order: the
/// legacy function-calling fields, `reasoning_effort`, `web_search_options`, several choices,
/// log probabilities, a `response_format` other than text, audio.
pub(crate) fn refuse_beyond_messages(
    body: &serde_json::Map<String, serde_json::Value>,
) -> Result<(), TranslateError> {
    refuse_present(
        body,
        &[
            "functions",
            "function_call",
            "reasoning_effort",
            "web_search_options",
        ],
    )?;
    refuse_choices(body)?;
    refuse_logprobs(body)?;
    if let Some(format) = present(body, "response_format") {
        if format.get("type").and_then(serde_json::Value::as_str) != Some("text") {
            return Err(TranslateError::Unsupported("response_format"));
        }
    }
    refuse_audio(body)
}

/// A function tool's `function` object and `name` (`BadField("tools")` unless both are there).
pub(crate) fn tool_function(
    tool: &serde_json::Value,
) -> Result<(&serde_json::Map<String, serde_json::Value>, &str), TranslateError> {
    let Some(serde_json::Value::Object(function)) = tool.get("function") else {
        return Err(TranslateError::BadField("tools"));
    };
    match function.get("name").and_then(serde_json::Value::as_str) {
        Some(name) => Ok((function, name)),
        None => Err(TranslateError::BadField("tools")),
    }
}

/// A function tool's `key`, when present, as `read` takes it (`BadField("tools")` when it
/// cannot).
fn tool_field<'a, T>(
    function: &'a serde_json::Map<String, serde_json::Value>,
    key: &str,
    read: impl FnOnce(&'a serde_json::Value) -> Option<T>,
) -> Result<Option<T>, TranslateError> {
    present(function, key)
        .map(|v| read(v).ok_or(TranslateError::BadField("tools")))
        .transpose()
}

/// A function tool's `description`, when it has one (`BadField("tools")` if not a string).
pub(crate) fn tool_description(
    function: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<&str>, TranslateError> {
    tool_field(function, "description", serde_json::Value::as_str)
}

/// A function tool's `parameters` schema, when it has one (`BadField("tools")` if not an
/// object).
pub(crate) fn tool_parameters(
    function: &serde_json::Map<String, serde_json::Value>,
) -> Result<Option<&serde_json::Map<String, serde_json::Value>>, TranslateError> {
    tool_field(function, "parameters", serde_json::Value::as_object)
}

/// A function tool's `parameters` schema as a value, OpenAI's default (an object without
/// properties) when it has none.
pub(crate) fn tool_schema(
    function: &serde_json::Map<String, serde_json::Value>,
) -> Result<serde_json::Value, TranslateError> {
    Ok(match tool_parameters(function)? {
        Some(p) => serde_json::Value::Object(p.clone()),
        None => serde_json::json!({"type": "object", "properties": {}}),
    })
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
            TranslateError::BadField("tool_calls"),
            TranslateError::BadField("tool_call_id"),
            TranslateError::BadField("parallel_tool_calls"),
            TranslateError::BadField("image_url"),
            TranslateError::Unsupported("file"),
            TranslateError::BadField("tool_use"),
            TranslateError::BadField("tool_result"),
            TranslateError::BadField("image"),
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
            // Tools, images, other fields, upstream answers.
            TranslateError::BadField("tools"),
            TranslateError::BadField("tool_choice"),
            TranslateError::BadField("tool_calls"),
            TranslateError::BadField("tool_call_id"),
            TranslateError::BadField("parallel_tool_calls"),
            TranslateError::BadField("image_url"),
            TranslateError::BadField("response_format"),
            TranslateError::BadField("file"),
            TranslateError::BadField("verbosity"),
            TranslateError::BadField("reasoning_effort"),
            TranslateError::BadField("safety_identifier"),
            TranslateError::BadField("prompt_cache_key"),
            TranslateError::BadField("service_tier"),
            TranslateError::BadField("first_turn"),
            TranslateError::BadField("output"),
            TranslateError::BadField("toolUse"),
            TranslateError::BadField("status"),
            TranslateError::BadField("object"),
            TranslateError::Unsupported("stop"),
            TranslateError::Unsupported("file"),
            TranslateError::Unsupported("parallel_tool_calls"),
            TranslateError::Unsupported("reasoning_effort"),
            TranslateError::Unsupported("web_search_options"),
            // Gemini's.
            TranslateError::BadField("arguments"),
            TranslateError::BadField("response_format"),
            TranslateError::BadField("n"),
            TranslateError::BadField("seed"),
            TranslateError::BadField("top_k"),
            TranslateError::BadField("presence_penalty"),
            TranslateError::BadField("frequency_penalty"),
            TranslateError::BadField("parallel_tool_calls"),
            TranslateError::BadField("reasoning_effort"),
            TranslateError::BadField("extra_body"),
            TranslateError::BadField("error"),
            TranslateError::BadField("candidates"),
            TranslateError::BadField("functionCall"),
            TranslateError::BadField("thoughtSignature"),
            TranslateError::Unsupported("logit_bias"),
            TranslateError::Unsupported("extra_body"),
        ];
        // Every message of the tables too, each naming its field.
        let tables = BAD_FIELD_MESSAGES
            .iter()
            .map(|(f, _)| TranslateError::BadField(f))
            .chain(
                UNSUPPORTED_MESSAGES
                    .iter()
                    .map(|(f, _)| TranslateError::Unsupported(f)),
            );
        for e in all.into_iter().chain(tables) {
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
