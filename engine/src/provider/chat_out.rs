//! OpenAI chat output, written once for every translator whose client speaks OpenAI chat
//! ([`anthropic`](super::anthropic), [`bedrock`](super::bedrock), [`gemini`](super::gemini),
//! [`responses`](super::responses)): the whole `chat.completion` ([`push_completion`]), the
//! `chat.completion.chunk` events of a stream ([`Chunks`]), the usage object ([`push_usage`])
//! and the error body ([`push_error_body`]) and stream ending ([`push_error_event`]).
//!
//! Written by hand, without I/O: keys in the order OpenAI sends them (what the official `openai`
//! SDKs parse, and what clients that compare bytes expect), strings escaped by
//! [`write_str`]. Each translator decides the content (texts, calls, finish reason, counts,
//! error type and code); this module only writes it.

use crate::http::write_decimal;
use crate::llm::json::write_str;
use crate::llm::Usage;

/// `data: [DONE]` and its blank line: the last event of every OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

/// The end of a chunk whose only choice is still going: `...,"logprobs":null,"finish_reason":null}]}`
/// and the blank line, after the choice's delta object is closed.
const CHOICE_GOING_END: &[u8] = b",\"logprobs\":null,\"finish_reason\":null}]}\n\n";

/// Which optional counts a usage object carries, beyond `prompt_tokens`, `completion_tokens`,
/// `total_tokens` and `prompt_tokens_details.cached_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UsageDetails {
    /// `completion_tokens_details.reasoning_tokens` (upstreams that report reasoning tokens).
    pub reasoning_tokens: bool,
    /// `prompt_tokens_details.cache_write_tokens`, when there are any.
    pub cache_write_tokens: bool,
}

impl UsageDetails {
    /// Cached tokens only (Anthropic, Bedrock).
    pub const CACHED: UsageDetails = UsageDetails {
        reasoning_tokens: false,
        cache_write_tokens: false,
    };
    /// Cached and reasoning tokens (Gemini).
    pub const REASONING: UsageDetails = UsageDetails {
        reasoning_tokens: true,
        cache_write_tokens: false,
    };
    /// Cached, cache-write (when any) and reasoning tokens (the Responses API).
    pub const ALL: UsageDetails = UsageDetails {
        reasoning_tokens: true,
        cache_write_tokens: true,
    };
}

/// `"usage":{...}` in OpenAI's shape: `total_tokens` is the sum of the prompt and completion
/// counts (saturating); `details` says which optional counts are written.
pub fn push_usage(out: &mut Vec<u8>, usage: &Usage, details: UsageDetails) {
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
    if details.cache_write_tokens && usage.cache_write_tokens > 0 {
        out.extend_from_slice(b",\"cache_write_tokens\":");
        write_decimal(out, usage.cache_write_tokens);
    }
    if details.reasoning_tokens {
        out.extend_from_slice(b"},\"completion_tokens_details\":{\"reasoning_tokens\":");
        write_decimal(out, usage.reasoning_tokens);
    }
    out.extend_from_slice(b"}}");
}

/// `{"error":{"message":..,"type":..,"param":null,"code":..}}`: an OpenAI error body (`code`
/// `null` when `None`). The translators choose `kind` (OpenAI's error type) and `code` from
/// their upstream's error.
pub fn push_error_body(out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
    out.extend_from_slice(b"{\"error\":{\"message\":");
    write_str(out, message);
    out.extend_from_slice(b",\"type\":");
    write_str(out, kind);
    out.extend_from_slice(b",\"param\":null,\"code\":");
    match code {
        Some(c) => write_str(out, c),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}}");
}

/// The error body for an upstream's error that came with HTTP `status`: its `message`, or one
/// naming `provider` and the status when it sent none.
pub fn push_upstream_error_body(
    out: &mut Vec<u8>,
    provider: &str,
    status: u16,
    message: Option<&str>,
    kind: &str,
    code: Option<&str>,
) {
    match message {
        Some(m) => push_error_body(out, m, kind, code),
        None => push_error_body(
            out,
            &format!("the {provider} upstream answered HTTP {status}"),
            kind,
            code,
        ),
    }
}

/// The error event that ends an OpenAI stream early: `data: ` and the error body of
/// [`push_error_body`], then [`DONE`].
pub fn push_error_event(out: &mut Vec<u8>, message: &str, kind: &str, code: Option<&str>) {
    out.extend_from_slice(b"data: ");
    push_error_body(out, message, kind, code);
    out.extend_from_slice(b"\n\n");
    out.extend_from_slice(DONE);
}

/// A function call of an answer: `{"id":..,"type":"function","function":{"name":..,"arguments":..}}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolCall<'a> {
    /// The call's id (the client sends it back with the result).
    pub id: &'a str,
    /// The function's name.
    pub name: &'a str,
    /// The arguments, JSON text as a string.
    pub arguments: &'a str,
}

impl<'a, S: AsRef<str>> From<&'a (&'a str, &'a str, S)> for ToolCall<'a> {
    /// A call from its `(id, name, arguments)`.
    fn from((id, name, arguments): &'a (&'a str, &'a str, S)) -> Self {
        ToolCall {
            id,
            name,
            arguments: arguments.as_ref(),
        }
    }
}

/// A whole answer, as [`push_completion`] writes it.
#[derive(Debug, Clone, Copy)]
pub struct Completion<'a> {
    /// The completion's `id`.
    pub id: &'a str,
    /// The model, as the client named it.
    pub model: &'a str,
    /// Unix seconds.
    pub created: u64,
    /// The text (`content`; `null` when empty and there are calls or a refusal).
    pub text: &'a str,
    /// `reasoning_content`, written when not empty.
    pub reasoning: &'a str,
    /// `refusal`, written when there is one.
    pub refusal: Option<&'a str>,
    /// `tool_calls`, written when there are any.
    pub tool_calls: &'a [ToolCall<'a>],
    /// OpenAI's `finish_reason`.
    pub finish_reason: &'a str,
    /// The counts, and which optional ones to write.
    pub usage: &'a Usage,
    /// Which optional counts the usage object carries.
    pub details: UsageDetails,
}

/// A `chat.completion` with one choice: `{"id","object","created","model","choices":[{"index",
/// "message":{"role","content",["reasoning_content"],["refusal"],["tool_calls"]},"logprobs",
/// "finish_reason"}],"usage"}`.
pub fn push_completion(out: &mut Vec<u8>, c: &Completion<'_>) {
    out.extend_from_slice(b"{\"id\":");
    write_str(out, c.id);
    out.extend_from_slice(b",\"object\":\"chat.completion\",\"created\":");
    write_decimal(out, c.created);
    out.extend_from_slice(b",\"model\":");
    write_str(out, c.model);
    out.extend_from_slice(
        b",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":",
    );
    if c.text.is_empty() && (!c.tool_calls.is_empty() || c.refusal.is_some()) {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, c.text);
    }
    if !c.reasoning.is_empty() {
        out.extend_from_slice(b",\"reasoning_content\":");
        write_str(out, c.reasoning);
    }
    if let Some(r) = c.refusal {
        out.extend_from_slice(b",\"refusal\":");
        write_str(out, r);
    }
    if !c.tool_calls.is_empty() {
        out.extend_from_slice(b",\"tool_calls\":[");
        for (i, call) in c.tool_calls.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"id\":");
            write_str(out, call.id);
            out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
            write_str(out, call.name);
            out.extend_from_slice(b",\"arguments\":");
            write_str(out, call.arguments);
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
    }
    out.extend_from_slice(b"},\"logprobs\":null,\"finish_reason\":\"");
    out.extend_from_slice(c.finish_reason.as_bytes());
    out.extend_from_slice(b"\"}],");
    push_usage(out, c.usage, c.details);
    out.push(b'}');
}

/// The `chat.completion.chunk` events of one stream: each carries the stream's `id`, `model`
/// and `created`. The first chunk with content (text, a call, the finish reason) is preceded
/// by the role chunk (`delta:{"role":"assistant","content":""}`), written once.
#[derive(Debug, Clone)]
pub struct Chunks {
    id: String,
    model: String,
    created: u64,
    role_sent: bool,
}

impl Chunks {
    /// The chunks of a stream with `id`, `model` (the client's name) and `created` (unix
    /// seconds).
    pub fn new(id: &str, model: &str, created: u64) -> Self {
        Chunks {
            id: id.to_owned(),
            model: model.to_owned(),
            created,
            role_sent: false,
        }
    }

    /// `data: {"id":...,"choices":` (the caller writes the choices and closes the object).
    fn push_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"id\":");
        write_str(out, &self.id);
        out.extend_from_slice(b",\"object\":\"chat.completion.chunk\",\"created\":");
        write_decimal(out, self.created);
        out.extend_from_slice(b",\"model\":");
        write_str(out, &self.model);
        out.extend_from_slice(b",\"choices\":");
    }

    /// The role chunk, unless it was written already.
    pub fn role(&mut self, out: &mut Vec<u8>) {
        if self.role_sent {
            return;
        }
        self.role_sent = true;
        self.push_head(out);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}");
        out.extend_from_slice(CHOICE_GOING_END);
    }

    /// A chunk whose delta is `{key: text}` (`content` or `reasoning_content`).
    pub fn text(&mut self, out: &mut Vec<u8>, key: &str, text: &str) {
        self.role(out);
        self.push_head(out);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"");
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(b"\":");
        write_str(out, text);
        out.push(b'}');
        out.extend_from_slice(CHOICE_GOING_END);
    }

    /// `[{"index":0,"delta":{"tool_calls":[{"index":N` after the head (the caller finishes the
    /// call, then [`push_call_end`](Self::push_call_end)).
    fn push_call_head(&mut self, out: &mut Vec<u8>, index: u64) {
        self.role(out);
        self.push_head(out);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":");
        write_decimal(out, index);
    }

    fn push_call_end(out: &mut Vec<u8>) {
        out.extend_from_slice(b"}}]}");
        out.extend_from_slice(CHOICE_GOING_END);
    }

    /// The first chunk of tool call `index` (0, 1, ... in the order the calls start): its
    /// `index`, `id`, `type`, `function.name` and empty `function.arguments`.
    pub fn tool_call_start(&mut self, out: &mut Vec<u8>, index: u64, id: &str, name: &str) {
        self.push_call_head(out, index);
        out.extend_from_slice(b",\"id\":");
        write_str(out, id);
        out.extend_from_slice(b",\"type\":\"function\",\"function\":{\"name\":");
        write_str(out, name);
        out.extend_from_slice(b",\"arguments\":\"\"");
        Self::push_call_end(out);
    }

    /// A piece of tool call `index`'s arguments: its `index` and `function.arguments`.
    pub fn tool_call_arguments(&mut self, out: &mut Vec<u8>, index: u64, arguments: &str) {
        self.push_call_head(out, index);
        out.extend_from_slice(b",\"function\":{\"arguments\":");
        write_str(out, arguments);
        Self::push_call_end(out);
    }

    /// The chunk with the `finish_reason` (and an empty delta).
    pub fn finish(&mut self, out: &mut Vec<u8>, finish_reason: &str) {
        self.role(out);
        self.push_head(out);
        out.extend_from_slice(b"[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"");
        out.extend_from_slice(finish_reason.as_bytes());
        out.extend_from_slice(b"\"}]}\n\n");
    }

    /// The usage chunk: `"choices":[]` and the usage object of [`push_usage`].
    pub fn usage(&self, out: &mut Vec<u8>, usage: &Usage, details: UsageDetails) {
        self.push_head(out);
        out.extend_from_slice(b"[],");
        push_usage(out, usage, details);
        out.extend_from_slice(b"}\n\n");
    }

    /// The end of a stream that finished: the usage chunk when `usage` is given, then
    /// [`DONE`].
    pub fn end(&self, out: &mut Vec<u8>, usage: Option<(&Usage, UsageDetails)>) {
        if let Some((usage, details)) = usage {
            self.usage(out, usage, details);
        }
        out.extend_from_slice(DONE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: Usage = Usage {
        prompt_tokens: 12,
        completion_tokens: 7,
        cached_tokens: 3,
        cache_write_tokens: 2,
        reasoning_tokens: 4,
    };

    fn text(out: Vec<u8>) -> String {
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn usage_objects() {
        let cases = [
            (
                UsageDetails::CACHED,
                r#""usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3}}"#,
            ),
            (
                UsageDetails::REASONING,
                r#""usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":4}}"#,
            ),
            (
                UsageDetails::ALL,
                r#""usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3,"cache_write_tokens":2},"completion_tokens_details":{"reasoning_tokens":4}}"#,
            ),
        ];
        for (details, want) in cases {
            let mut out = Vec::new();
            push_usage(&mut out, &USAGE, details);
            assert_eq!(text(out), want);
        }
        // No cache writes: the key is left out.
        let mut out = Vec::new();
        let none = Usage {
            cache_write_tokens: 0,
            prompt_tokens: u64::MAX,
            ..USAGE
        };
        push_usage(&mut out, &none, UsageDetails::ALL);
        assert_eq!(
            text(out),
            format!(
                r#""usage":{{"prompt_tokens":{m},"completion_tokens":7,"total_tokens":{m},"prompt_tokens_details":{{"cached_tokens":3}},"completion_tokens_details":{{"reasoning_tokens":4}}}}"#,
                m = u64::MAX
            )
        );
    }

    #[test]
    fn error_body_and_event() {
        let mut out = Vec::new();
        push_error_body(&mut out, "no \"key\"", "invalid_request_error", None);
        assert_eq!(
            text(out),
            r#"{"error":{"message":"no \"key\"","type":"invalid_request_error","param":null,"code":null}}"#
        );
        let mut out = Vec::new();
        push_upstream_error_body(&mut out, "Acme", 503, None, "server_error", Some("x"));
        push_upstream_error_body(&mut out, "Acme", 503, Some("down"), "server_error", None);
        assert_eq!(
            text(out),
            r#"{"error":{"message":"the Acme upstream answered HTTP 503","type":"server_error","param":null,"code":"x"}}{"error":{"message":"down","type":"server_error","param":null,"code":null}}"#
        );
        let mut out = Vec::new();
        push_error_event(&mut out, "slow", "requests", Some("rate_limit_exceeded"));
        assert_eq!(
            text(out),
            "data: {\"error\":{\"message\":\"slow\",\"type\":\"requests\",\"param\":null,\"code\":\"rate_limit_exceeded\"}}\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn completions() {
        let calls = [
            ToolCall {
                id: "call_1",
                name: "f",
                arguments: "{\"a\":1}",
            },
            ToolCall {
                id: "call_2",
                name: "g",
                arguments: "{}",
            },
        ];
        let whole = |text, refusal, tool_calls| {
            let mut out = Vec::new();
            push_completion(
                &mut out,
                &Completion {
                    id: "chatcmpl-1",
                    model: "m",
                    created: 5,
                    text,
                    reasoning: if tool_calls == &calls[..] { "hm" } else { "" },
                    refusal,
                    tool_calls,
                    finish_reason: "stop",
                    usage: &USAGE,
                    details: UsageDetails::CACHED,
                },
            );
            text_of(out)
        };
        fn text_of(out: Vec<u8>) -> String {
            String::from_utf8(out).expect("UTF-8")
        }
        let usage = r#""usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3}}"#;
        assert_eq!(
            whole("Hi", None, &[]),
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":"Hi"}},"logprobs":null,"finish_reason":"stop"}}],{usage}}}"#
            )
        );
        assert_eq!(
            whole("", None, &calls),
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":null,"reasoning_content":"hm","tool_calls":[{{"id":"call_1","type":"function","function":{{"name":"f","arguments":"{{\"a\":1}}"}}}},{{"id":"call_2","type":"function","function":{{"name":"g","arguments":"{{}}"}}}}]}},"logprobs":null,"finish_reason":"stop"}}],{usage}}}"#
            )
        );
        assert_eq!(
            whole("", Some("no"), &[]),
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion","created":5,"model":"m","choices":[{{"index":0,"message":{{"role":"assistant","content":null,"refusal":"no"}},"logprobs":null,"finish_reason":"stop"}}],{usage}}}"#
            )
        );
        // From (id, name, arguments), owned or borrowed.
        let owned = ("call_1", "f", String::from("{\"a\":1}"));
        assert_eq!(ToolCall::from(&owned), calls[0]);
        assert_eq!(ToolCall::from(&("call_2", "g", "{}")), calls[1]);
        // No calls and no refusal: an empty text is an empty string.
        assert!(whole("", None, &[]).contains(r#""content":""},"#));
    }

    #[test]
    fn chunks() {
        let head = r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","choices":"#;
        let mut c = Chunks::new("chatcmpl-1", "m", 7);
        let mut out = Vec::new();
        c.text(&mut out, "content", "Hi\n");
        c.text(&mut out, "reasoning_content", "so");
        c.tool_call_start(&mut out, 0, "call_1", "f");
        c.tool_call_arguments(&mut out, 0, "{\"a\"");
        c.finish(&mut out, "tool_calls");
        c.end(&mut out, Some((&USAGE, UsageDetails::REASONING)));
        let want = [
            r#"[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"content":"Hi\n"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"reasoning_content":"so"},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"a\""}}]},"logprobs":null,"finish_reason":null}]}"#,
            r#"[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
            r#"[],"usage":{"prompt_tokens":12,"completion_tokens":7,"total_tokens":19,"prompt_tokens_details":{"cached_tokens":3},"completion_tokens_details":{"reasoning_tokens":4}}}"#,
        ]
        .iter()
        .map(|choices| format!("{head}{choices}\n\n"))
        .collect::<String>()
            + "data: [DONE]\n\n";
        assert_eq!(text(out), want);

        // The role chunk comes once, before the first content, and not before the usage.
        let mut c = Chunks::new("chatcmpl-1", "m", 7);
        let mut out = Vec::new();
        c.end(&mut out, None);
        c.role(&mut out);
        c.role(&mut out);
        assert_eq!(
            text(out),
            format!(
                "data: [DONE]\n\n{head}[{{\"index\":0,\"delta\":{{\"role\":\"assistant\",\"content\":\"\"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n"
            )
        );
    }
}
