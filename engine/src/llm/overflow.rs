//! Whether an upstream's error answer says the request is longer than the model's context
//! window: what moves a call to its group's `context_window_fallbacks`.
//!
//! The rule is LiteLLM's (1.110.2, `ExceptionCheckers.is_error_str_context_window_exceeded`
//! and its Bedrock and OpenAI-code checks), so a call LiteLLM would move to a context-window
//! fallback moves here too: the answer's body, compared without case, holds one of the
//! providers' phrases ([`PHRASES`]) or one of its phrase pairs ([`PAIRS`]), and is not one of
//! the two parameter errors LiteLLM rules out. Only a client error (4xx but 429) is read, and
//! only its first [`OVERFLOW_BODY_BYTES_MAX`] bytes.

/// The most of an error answer's body read to decide it, bytes; a longer one is relayed as it
/// is.
pub const OVERFLOW_BODY_BYTES_MAX: usize = 16 * 1024;
/// The longest wait for the rest of such a body once its head came, ms (then it is relayed as
/// it is).
pub const OVERFLOW_BODY_WAIT_MS: u64 = 1_000;

/// Phrases that name a context window exceeded (lowercase).
const PHRASES: [&str; 14] = [
    "exceed context limit",
    "this model's maximum context length is",
    "requested token count exceeds the model's maximum context length",
    "string too long. expected a string with maximum length",
    "model's maximum context limit",
    "is longer than the model's context length",
    "input tokens exceed the configured limit",
    "`inputs` tokens + `max_new_tokens` must be",
    // llama.cpp
    "exceeds the available context size",
    // Gemini
    "exceeds the maximum number of tokens allowed",
    // OpenAI's and Azure's error code, however its JSON is spaced
    "\"context_length_exceeded\"",
    // Anthropic
    "prompt is too long",
    // Bedrock
    "input is too long",
    "this is longer than the model's maximum context length",
];

/// Pairs of phrases that name it together (Cerebras, and two servers' own wording).
const PAIRS: [(&str, &str); 3] = [
    ("current length is", "while limit is"),
    ("maximum input length is", "tokens"),
    ("input too long:", "input tokens, limit is"),
];

/// Parameter errors that read like one but are not (OpenAI's `user` longer than 64).
const NOT: [(&str, &str); 2] = [
    ("string_above_max_length", ""),
    ("invalid 'user'", "string too long"),
];

/// An answer of `status` may say so: a client error, but 429.
pub fn overflow_status(status: u16) -> bool {
    (400..500).contains(&status) && status != 429
}

/// `body` (the start of an answer of `status`) says the request exceeds the model's context
/// window.
pub fn context_exceeded(status: u16, body: &[u8]) -> bool {
    if !overflow_status(status) {
        return false;
    }
    let body = &body[..body.len().min(OVERFLOW_BODY_BYTES_MAX)];
    let has = |phrase: &str| phrase.is_empty() || contains_nocase(body, phrase.as_bytes());
    if NOT.iter().any(|(a, b)| has(a) && has(b)) {
        return false;
    }
    PHRASES.iter().any(|p| has(p))
        || PAIRS.iter().any(|(a, b)| has(a) && has(b))
        // Bedrock Mantle: "prompt tokens (N) exceed model maximum (M)".
        || (has("prompt tokens (") && has(") exceed model maximum ("))
}

/// `hay` holds `needle` (lowercase ASCII), ASCII case ignored.
fn contains_nocase(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len()
        && hay.windows(needle.len()).any(|w| {
            w.iter()
                .zip(needle)
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_providers_own_words_are_read_as_they_write_them() {
        for body in [
            // OpenAI and Azure OpenAI
            r#"{"error":{"message":"This model's maximum context length is 128000 tokens. However, your messages resulted in 130012 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
            r#"{"error": {"code": "context_length_exceeded", "message": "..."}}"#,
            // Anthropic
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
            // vLLM
            r#"{"object":"error","message":"This model's maximum context length is 8192 tokens. However, you requested 9000 tokens (8000 in the messages, 1000 in the completion).","type":"BadRequestError","code":400}"#,
            // Gemini
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
            // Bedrock
            r#"{"message":"Input is too long for requested model."}"#,
            // Cerebras
            r#"{"message":"Please reduce the length of the messages or completion. Current length is 9000 while limit is 8192"}"#,
        ] {
            assert!(context_exceeded(400, body.as_bytes()), "{body}");
        }
    }

    #[test]
    fn other_errors_statuses_and_parameter_limits_are_not() {
        let openai = br#"{"error":{"code":"context_length_exceeded"}}"#;
        // Only a client error (but 429) is one.
        for status in [200, 429, 500, 503] {
            assert!(!context_exceeded(status, openai), "{status}");
        }
        assert!(context_exceeded(413, openai));
        for body in [
            r#"{"error":{"message":"Invalid 'user': string too long. Expected a string with maximum length 64, but got a string with length 80 instead.","code":"string_above_max_length"}}"#,
            r#"{"error":{"message":"Invalid model","code":"model_not_found"}}"#,
            r#"{"error":{"message":"max_tokens is too large"}}"#,
            "",
        ] {
            assert!(!context_exceeded(400, body.as_bytes()), "{body}");
        }
        // The phrase past the bytes read does not count.
        let mut long = vec![b' '; OVERFLOW_BODY_BYTES_MAX];
        long.extend_from_slice(b"prompt is too long");
        assert!(!context_exceeded(400, &long));
    }
}
