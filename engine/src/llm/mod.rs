//! LLM request and response bodies, free of I/O: the connection driver hands in bytes and gets
//! back decisions (which model, how many tokens to reserve, what the upstream said it used)
//! and bytes to forward.
//!
//! - [`inspect`] reads what the gateway needs from an OpenAI (`/v1/chat/completions`,
//!   `/v1/completions`, `/v1/embeddings`, `/v1/responses`) or Anthropic (`/v1/messages`) request
//!   body:
//!   [`RequestInfo`]. [`estimate_tokens`] turns it into the tokens to reserve before the
//!   upstream answers.
//! - [`with_include_usage`] makes a streaming OpenAI request ask for the usage chunk, so that a
//!   stream is always settled from the upstream's own count.
//! - [`UsageScanner`] finds that count in a JSON or SSE response, across reads of any size.
//! - [`context_exceeded`] reads an upstream's error answer for a context window exceeded
//!   (LiteLLM's rule), which moves a call to its group's `context_window_fallbacks`.
//! - [`SseFilter`] gives a client that never asked for the usage chunk the stream it would have
//!   had without it, counts content events on the way (a mid-stream estimate), and writes the
//!   error event that cuts a stream at a tenant's budget.
//!
//! # Decisions
//!
//! - **Strict JSON, one pass, no allocation.** Request bodies are validated whole (RFC 8259,
//!   UTF-8, at most [`JSON_DEPTH_MAX`] levels) by a small scanner of our own (`json`), which walks
//!   the top-level object once and allocates nothing. The gateway decides on the same document
//!   the upstream parses: trailing bytes, a second document, or invalid UTF-8 are
//!   [`BodyError::NotJson`]. (sonic-rs's `get` allocates a key buffer per call, stops at the
//!   first matching key and does not validate what follows it; see `json`'s notes.) `json`
//!   also holds the engine's one JSON string writer.
//! - **Only top-level keys count**, compared after decoding their escapes (`"mod\u0065l"` is
//!   `model`, as the upstream reads it). A key the gateway reads that appears twice is refused
//!   ([`BodyError::BadField`]): parsers disagree on which copy wins (first, last, error), so a
//!   tenant could otherwise be routed and charged for one model while the upstream serves
//!   another.
//! - **Escaped model names** are decoded into a [`MODEL_BYTES_MAX`]-byte buffer inside
//!   [`RequestInfo`] (PHP's `json_encode` writes `meta-llama\/Llama-3`); the common case
//!   borrows from the body. Either way no allocation. Names longer than that limit, or whose
//!   escapes decode to an unpaired surrogate, are refused.
//! - **Bounded buffers.** [`UsageScanner`] and [`SseFilter`] hold at most
//!   [`USAGE_SCAN_BYTES_MAX`] bytes, allocated once on first use and kept across `reset`. An
//!   SSE event longer than that is passed through unexamined by the filter; the scanner keeps
//!   only its last [`USAGE_TAIL_BYTES`] (where the Responses API's final event, which repeats
//!   the whole answer, has its usage). JSON responses longer than that are searched in their
//!   last [`USAGE_TAIL_BYTES`].
//! - Response bodies must reach these types decoded (de-chunked, no `Content-Encoding`): the
//!   driver asks upstreams for `identity` encoding.

pub(crate) mod json;
mod overflow;
mod request;
mod sse;
mod usage;

pub use overflow::{
    context_exceeded, overflow_status, OVERFLOW_BODY_BYTES_MAX, OVERFLOW_BODY_WAIT_MS,
};
pub use request::{
    estimate_tokens, inspect, with_include_usage, with_model, RequestInfo,
    INCLUDE_USAGE_GROWTH_BYTES_MAX,
};
pub(crate) use sse::release_if_empty;
pub use sse::SseFilter;
pub use usage::{BodyKind, Usage, UsageScanner};

use std::fmt;

/// Deepest nesting of arrays and objects accepted in a body (the top-level object counts as
/// one). Real requests nest a dozen levels (tool schemas); serde_json stops at 127.
pub const JSON_DEPTH_MAX: usize = 128;
/// Longest model name, bytes (after decoding escapes); a config limit too (model groups,
/// template selectors), so it is defined with the others.
pub use crate::limits::MODEL_BYTES_MAX;
/// The buffer of a [`UsageScanner`] and of an [`SseFilter`], bytes: the longest SSE event they
/// examine, and the longest JSON response searched whole.
pub const USAGE_SCAN_BYTES_MAX: usize = 64 * 1024;
/// For a JSON response longer than [`USAGE_SCAN_BYTES_MAX`]: the top-level `usage` object and
/// everything after it must lie in this many final bytes.
pub const USAGE_TAIL_BYTES: usize = USAGE_SCAN_BYTES_MAX / 2;

// The tail must fit in the buffer with room to append before compacting (see `UsageScanner`).
const _: () = assert!(USAGE_TAIL_BYTES > 0 && USAGE_TAIL_BYTES < USAGE_SCAN_BYTES_MAX);
const _: () = assert!(MODEL_BYTES_MAX <= u16::MAX as usize);

/// Why a request body was refused. The caller maps it to a 400 (`Error::BadRequest` with
/// [`BodyError::message`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// Not exactly one JSON object: invalid JSON or UTF-8, another type at the top, or bytes
    /// after it.
    NotJson,
    /// Arrays and objects nested deeper than [`JSON_DEPTH_MAX`].
    TooDeep,
    /// A field the gateway reads has the wrong type, is given twice, or is too long. Names the
    /// field: `model`, `stream`, `max_tokens`, `max_completion_tokens`, `max_output_tokens`,
    /// `stream_options`
    /// (which covers `stream_options.include_usage`) or `variables`.
    BadField(&'static str),
}

impl BodyError {
    /// A static, JSON-safe message (no quotes or backslashes) for the error body.
    pub fn message(self) -> &'static str {
        match self {
            BodyError::NotJson => "the request body is not a single JSON object",
            BodyError::TooDeep => "the request body nests JSON deeper than the gateway accepts",
            BodyError::BadField("model") => {
                "`model` must be a string of at most 256 bytes, given once"
            }
            BodyError::BadField("stream") => "`stream` must be a boolean, given once",
            BodyError::BadField("max_tokens") => {
                "`max_tokens` must be a non-negative integer, given once"
            }
            BodyError::BadField("max_completion_tokens") => {
                "`max_completion_tokens` must be a non-negative integer, given once"
            }
            BodyError::BadField("max_output_tokens") => {
                "`max_output_tokens` must be a non-negative integer, given once"
            }
            BodyError::BadField("stream_options") => {
                "`stream_options` must be an object with a boolean `include_usage`, each given once"
            }
            BodyError::BadField("variables") => "`variables` may be given only once",
            BodyError::BadField(_) => {
                "a field of the request body has the wrong type or is repeated"
            }
        }
    }
}

impl fmt::Display for BodyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for BodyError {}

/// The endpoints whose request bodies are LLM calls (a model, a prompt): a tenant's request to
/// one is read whole, its model checked and its tokens estimated before it is forwarded.
pub const LLM_PATHS: [&str; 5] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/responses",
];

/// Whether `method` and `path` (query ignored) name an LLM call.
pub fn is_llm_request(method: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    method == "POST" && LLM_PATHS.contains(&path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_json_safe_and_name_the_limit() {
        let all = [
            BodyError::NotJson,
            BodyError::TooDeep,
            BodyError::BadField("model"),
            BodyError::BadField("stream"),
            BodyError::BadField("max_tokens"),
            BodyError::BadField("max_completion_tokens"),
            BodyError::BadField("max_output_tokens"),
            BodyError::BadField("stream_options"),
            BodyError::BadField("variables"),
            BodyError::BadField("other"),
        ];
        for e in all {
            let m = e.message();
            assert!(
                !m.is_empty() && !m.contains('"') && !m.contains('\\'),
                "{m}"
            );
            assert!(m.is_ascii());
        }
        assert!(BodyError::BadField("model")
            .message()
            .contains(&MODEL_BYTES_MAX.to_string()));
    }
}
