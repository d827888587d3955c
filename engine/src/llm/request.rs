//! Request bodies: what the gateway reads from them ([`inspect`]), the token reservation
//! ([`estimate_tokens`]), and the one rewrite it makes ([`with_include_usage`]).

use std::fmt;

use super::json::{self, JsonError, Kind, Members, Value};
use super::{BodyError, JSON_DEPTH_MAX, MODEL_BYTES_MAX};

/// What the gateway reads from an LLM request body. Only top-level keys count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    model: Model<'a>,
    /// A model name with escapes, decoded.
    decoded: [u8; MODEL_BYTES_MAX],
    /// `stream` (absent or `null`: false).
    pub stream: bool,
    /// `max_tokens` (OpenAI's legacy name and Anthropic's), `max_completion_tokens` or
    /// `max_output_tokens` (the Responses API's); the largest when several are given. Absent or
    /// `null`: `None`.
    pub max_tokens: Option<u64>,
    /// `stream_options.include_usage` is `true`.
    pub include_usage: bool,
    /// A top-level `variables` key is present (any value).
    pub has_variables: bool,
}

/// The model name: borrowed from the body when it has no escapes, decoded otherwise.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Model<'a> {
    Absent,
    Borrowed(&'a str),
    /// The first this many bytes of `decoded`.
    Decoded(u16),
}

impl RequestInfo<'_> {
    /// The `model` string. Borrowed from the body when it has no escapes (the common case);
    /// a name with escapes was decoded into a buffer inside `self`.
    pub fn model(&self) -> Option<&str> {
        match &self.model {
            Model::Absent => None,
            Model::Borrowed(s) => Some(s),
            Model::Decoded(len) => std::str::from_utf8(self.decoded.get(..usize::from(*len))?).ok(),
        }
    }
}

impl fmt::Debug for RequestInfo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestInfo")
            .field("model", &self.model())
            .field("stream", &self.stream)
            .field("max_tokens", &self.max_tokens)
            .field("include_usage", &self.include_usage)
            .field("has_variables", &self.has_variables)
            .finish()
    }
}

/// Read `model`, `stream`, `max_tokens` / `max_completion_tokens` / `max_output_tokens`,
/// `stream_options.include_usage` and the presence of `variables` from an OpenAI (chat,
/// completions, embeddings, Responses) or Anthropic request body, validating the whole body as
/// strict JSON in one pass. Allocates nothing. (A Responses body's prompt, `input` and
/// `instructions`, counts in [`estimate_tokens`] through the body's length, as `messages` do.)
///
/// - Not a single JSON object (with only whitespace around it), or not UTF-8:
///   [`BodyError::NotJson`]; nested deeper than [`JSON_DEPTH_MAX`](super::JSON_DEPTH_MAX):
///   [`BodyError::TooDeep`]. These win over a field error found earlier in the body.
/// - `model` not a string (`null` included), longer than [`MODEL_BYTES_MAX`] bytes, or with an
///   escape that decodes to an unpaired surrogate: `BadField("model")`.
/// - `stream` neither a boolean nor `null`: `BadField("stream")`. `max_tokens`,
///   `max_completion_tokens` or `max_output_tokens` neither a non-negative integer that fits a
///   u64 (no fraction or exponent) nor `null`: `BadField` with its name. `stream_options` neither an object nor
///   `null`, or its `include_usage` neither a boolean nor `null`: `BadField("stream_options")`.
/// - Any of these keys, or `variables`, given twice at the top level (or `include_usage` twice
///   in `stream_options`), after decoding escapes in keys: `BadField` with its name.
///
/// Keys nested deeper never count: `{"messages":[{"model":"x"}]}` has no model.
pub fn inspect(body: &[u8]) -> Result<RequestInfo<'_>, BodyError> {
    scan(body).map(|s| s.info)
}

/// Tokens to reserve for a request before the upstream answers: `ceil(body_len / 4)` plus
/// `max_tokens`, or `default_max_tokens` when the request sets none (saturating).
///
/// A deliberate over-estimate: it counts the whole body (JSON punctuation, roles, tool
/// schemas), not just the prompt text, at 4 bytes a token (English averages a little over 4;
/// JSON escapes and structure push it higher). Reserving too much and settling down from the
/// upstream's `usage` is safe; reserving too little lets concurrent requests overspend a budget.
pub fn estimate_tokens(body_len: usize, max_tokens: Option<u64>, default_max_tokens: u64) -> u64 {
    let body_len = u64::try_from(body_len).unwrap_or(u64::MAX);
    body_len
        .div_ceil(4)
        .saturating_add(max_tokens.unwrap_or(default_max_tokens))
}

/// Make a streaming OpenAI request ask for the usage chunk. When the body has `"stream": true`
/// and `stream_options.include_usage` is not `true`, append to `out` the same body with
/// `stream_options.include_usage` set to `true` and return `Ok(true)`; otherwise return
/// `Ok(false)` and leave `out` alone. Errors are [`inspect`]'s; `out` is left alone then too.
///
/// The body is not re-serialised: `"stream_options":{"include_usage":true},` goes right after
/// the opening `{` (the body has at least the `stream` member, so the comma is right); an
/// existing `stream_options` object gets `"include_usage":true` after its `{`, or its
/// `include_usage` value (`false` or `null`) replaced by `true`; a `null` `stream_options` is
/// replaced by the object. Only for OpenAI chat and completions bodies, known by a top-level
/// `messages`, or a `prompt` that is a string or an array: any other body is left alone
/// (`Ok(false)`). Anthropic's API has no `stream_options` and always reports usage; neither
/// has the Responses API an `include_usage` (its `stream_options` is another object, and its
/// stream always ends in a `response.completed` event that carries the usage), and a Responses
/// body has `input` instead (its `prompt` is an object, a stored prompt's reference).
///
/// Allocates only when `out` lacks room for the body plus [`INCLUDE_USAGE_GROWTH_BYTES_MAX`].
pub fn with_include_usage(body: &[u8], out: &mut Vec<u8>) -> Result<bool, BodyError> {
    const OPTIONS_MEMBER: &[u8] = br#""stream_options":{"include_usage":true},"#;
    const OPTIONS_OBJECT: &[u8] = br#"{"include_usage":true}"#;
    const INCLUDE_MEMBER: &[u8] = br#""include_usage":true"#;
    // No rewrite adds more than the whole member.
    const _: () = assert!(OPTIONS_MEMBER.len() == INCLUDE_USAGE_GROWTH_BYTES_MAX);
    const _: () = assert!(OPTIONS_OBJECT.len() - "null".len() <= INCLUDE_USAGE_GROWTH_BYTES_MAX);
    const _: () = assert!(INCLUDE_MEMBER.len() + ",".len() <= INCLUDE_USAGE_GROWTH_BYTES_MAX);

    let s = scan(body)?;
    if !s.info.stream || s.info.include_usage || !s.chat_or_completions {
        return Ok(false);
    }
    // Insert `text` at `at`, or replace `at..end` by it.
    let mut splice = |at: usize, end: usize, text: &[&[u8]]| -> Result<bool, BodyError> {
        let (Some(head), Some(tail)) = (body.get(..at), body.get(end..)) else {
            return Err(BodyError::NotJson);
        };
        out.reserve(body.len() + INCLUDE_USAGE_GROWTH_BYTES_MAX);
        out.extend_from_slice(head);
        for t in text {
            out.extend_from_slice(t);
        }
        out.extend_from_slice(tail);
        Ok(true)
    };
    match (s.stream_options, s.include_usage) {
        // `"include_usage": false` or `null`.
        (_, Some(v)) => splice(v.start, v.end, &[b"true"]),
        (Some(options), None) if options.kind == Kind::Object => {
            let at = options.start + 1;
            let empty = body.get(json::skip_ws(body, at)) == Some(&b'}');
            let comma: &[u8] = if empty { b"" } else { b"," };
            splice(at, at, &[INCLUDE_MEMBER, comma])
        }
        // `"stream_options": null`.
        (Some(options), None) => splice(options.start, options.end, &[OPTIONS_OBJECT]),
        (None, _) => splice(s.open + 1, s.open + 1, &[OPTIONS_MEMBER]),
    }
}

/// The most [`with_include_usage`] adds to a body, bytes.
pub const INCLUDE_USAGE_GROWTH_BYTES_MAX: usize = 40;

/// What one pass over a request body found: the info, and where the rewrite goes.
struct Scan<'a> {
    info: RequestInfo<'a>,
    /// Offset of the top-level `{`.
    open: usize,
    /// The `stream_options` value, when present and an object or `null`.
    stream_options: Option<Value<'a>>,
    /// The `stream_options.include_usage` value, when present.
    include_usage: Option<Value<'a>>,
    /// The top-level `model` value, when present.
    model_value: Option<Value<'a>>,
    /// A chat or completions body: it has a top-level `messages`, or a string or array
    /// `prompt`.
    chat_or_completions: bool,
}

/// Write into `out` (appended) the body with its top-level `model` replaced by `model` (a
/// deployment's own name for it). `model` must need no JSON escaping (config validation
/// guarantees it: printable ASCII without `"` or `\`).
pub fn with_model(body: &[u8], model: &str, out: &mut Vec<u8>) -> Result<(), BodyError> {
    let s = scan(body)?;
    let v = s.model_value.ok_or(BodyError::BadField("model"))?;
    let (Some(head), Some(tail)) = (body.get(..v.start), body.get(v.end..)) else {
        return Err(BodyError::NotJson);
    };
    out.reserve(body.len() + model.len() + 2);
    out.extend_from_slice(head);
    out.push(b'"');
    out.extend_from_slice(model.as_bytes());
    out.push(b'"');
    out.extend_from_slice(tail);
    Ok(())
}

fn scan(body: &[u8]) -> Result<Scan<'_>, BodyError> {
    let not_json = |e: JsonError| match e {
        JsonError::Invalid => BodyError::NotJson,
        JsonError::TooDeep => BodyError::TooDeep,
    };
    if std::str::from_utf8(body).is_err() {
        return Err(BodyError::NotJson);
    }
    let mut members = Members::new(body, 0, JSON_DEPTH_MAX).map_err(not_json)?;
    let mut s = Scan {
        info: RequestInfo {
            model: Model::Absent,
            decoded: [0; MODEL_BYTES_MAX],
            stream: false,
            max_tokens: None,
            include_usage: false,
            has_variables: false,
        },
        open: members.open(),
        stream_options: None,
        include_usage: None,
        model_value: None,
        chat_or_completions: false,
    };
    // The first field error; reported only if the whole body is valid JSON.
    let mut field_error: Option<BodyError> = None;
    let mut seen = [false; FIELDS.len()];
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    let mut max_output_tokens = None;
    for member in &mut members {
        let (key, value) = member.map_err(not_json)?;
        if field_error.is_some() {
            continue;
        }
        if key.is("messages")
            || (key.is("prompt") && matches!(value.kind, Kind::String { .. } | Kind::Array))
        {
            s.chat_or_completions = true;
        }
        let Some(field) = FIELDS.iter().position(|name| key.is(name)) else {
            continue;
        };
        let name = FIELDS[field];
        let result = if std::mem::replace(&mut seen[field], true) {
            Err(BodyError::BadField(name))
        } else {
            match name {
                "model" => model(value, &mut s.info.decoded).map(|m| {
                    s.info.model = m;
                    s.model_value = Some(value);
                }),
                "stream" => optional_bool(value, name).map(|b| s.info.stream = b),
                "max_tokens" => optional_u64(value, name).map(|n| max_tokens = n),
                "max_completion_tokens" => {
                    optional_u64(value, name).map(|n| max_completion_tokens = n)
                }
                "max_output_tokens" => optional_u64(value, name).map(|n| max_output_tokens = n),
                "stream_options" => stream_options(value, &mut s),
                _ => {
                    s.info.has_variables = true;
                    Ok(())
                }
            }
        };
        field_error = result.err();
    }
    members.finish_document().map_err(not_json)?;
    if let Some(e) = field_error {
        return Err(e);
    }
    s.info.max_tokens = [max_tokens, max_completion_tokens, max_output_tokens]
        .into_iter()
        .flatten()
        .max();
    Ok(s)
}

/// The top-level keys the gateway reads (each refused when given twice).
const FIELDS: [&str; 7] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "stream_options",
    "variables",
];

fn model<'a>(value: Value<'a>, buf: &mut [u8; MODEL_BYTES_MAX]) -> Result<Model<'a>, BodyError> {
    const BAD: BodyError = BodyError::BadField("model");
    let (raw, escaped) = value.as_raw_str().ok_or(BAD)?;
    if !escaped {
        if raw.len() > MODEL_BYTES_MAX {
            return Err(BAD);
        }
        return std::str::from_utf8(raw)
            .map(Model::Borrowed)
            .map_err(|_| BAD);
    }
    let decoded = json::decode_into(raw, true, buf).ok_or(BAD)?;
    let len = u16::try_from(decoded.len()).map_err(|_| BAD)?;
    if std::str::from_utf8(decoded).is_err() {
        return Err(BAD);
    }
    Ok(Model::Decoded(len))
}

fn optional_bool(value: Value<'_>, name: &'static str) -> Result<bool, BodyError> {
    match value.kind {
        Kind::Null => Ok(false),
        _ => value.as_bool().ok_or(BodyError::BadField(name)),
    }
}

fn optional_u64(value: Value<'_>, name: &'static str) -> Result<Option<u64>, BodyError> {
    match value.kind {
        Kind::Null => Ok(None),
        _ => value.as_u64().map(Some).ok_or(BodyError::BadField(name)),
    }
}

fn stream_options<'a>(value: Value<'a>, s: &mut Scan<'a>) -> Result<(), BodyError> {
    const BAD: BodyError = BodyError::BadField("stream_options");
    match value.kind {
        Kind::Null => {}
        Kind::Object => {
            for member in value.members().ok_or(BAD)? {
                let (key, v) = member.map_err(|_| BAD)?;
                if !key.is("include_usage") {
                    continue;
                }
                if s.include_usage.replace(v).is_some() {
                    return Err(BAD);
                }
                s.info.include_usage = optional_bool(v, "stream_options")?;
            }
        }
        _ => return Err(BAD),
    }
    s.stream_options = Some(value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn info(body: &str) -> RequestInfo<'_> {
        inspect(body.as_bytes()).expect("valid body")
    }

    fn err(body: &str) -> BodyError {
        inspect(body.as_bytes()).expect_err("refused")
    }

    #[test]
    fn with_model_replaces_only_the_top_level_model() {
        let body = br#"{"messages":[{"model":"inner"}],"model" : "gpt-4o","stream":true}"#;
        let mut out = Vec::new();
        with_model(body, "gpt-4o-2024-08-06", &mut out).expect("rewritten");
        assert_eq!(
            out,
            br#"{"messages":[{"model":"inner"}],"model" : "gpt-4o-2024-08-06","stream":true}"#
        );
        let info = inspect(&out).expect("valid");
        assert_eq!(info.model(), Some("gpt-4o-2024-08-06"));
        assert!(info.stream);
        let mut out = Vec::new();
        assert!(with_model(br#"{"messages":[]}"#, "m", &mut out).is_err());
        assert!(with_model(br#"{"model":"a","model":"b"}"#, "m", &mut out).is_err());
    }

    #[test]
    fn openai_chat_request() {
        let body = r#"{
          "model": "gpt-4o-mini",
          "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"}
          ],
          "stream": true,
          "stream_options": {"include_usage": true},
          "max_completion_tokens": 256,
          "temperature": 0.7
        }"#;
        let i = info(body);
        assert_eq!(i.model(), Some("gpt-4o-mini"));
        assert!(i.stream && i.include_usage && !i.has_variables);
        assert_eq!(i.max_tokens, Some(256));
    }

    #[test]
    fn anthropic_messages_request() {
        let body = r#"{"model":"claude-sonnet-4-5-20250929","max_tokens":1024,"system":"Be brief.","messages":[{"role":"user","content":[{"type":"text","text":"Hello, Claude"}]}],"stream":true}"#;
        let i = info(body);
        assert_eq!(i.model(), Some("claude-sonnet-4-5-20250929"));
        assert!(i.stream && !i.include_usage);
        assert_eq!(i.max_tokens, Some(1024));
    }

    #[test]
    fn embeddings_and_completions_requests() {
        let i = info(
            r#"{"input":["The food was delicious"],"model":"text-embedding-3-small","encoding_format":"float"}"#,
        );
        assert_eq!(i.model(), Some("text-embedding-3-small"));
        assert!(!i.stream);
        assert_eq!(i.max_tokens, None);
        let i = info(
            r#"{"model":"gpt-3.5-turbo-instruct","prompt":"Say this is a test","max_tokens":7,"temperature":0}"#,
        );
        assert_eq!(i.max_tokens, Some(7));
    }

    #[test]
    fn defaults_nulls_and_variables() {
        let i = info("{}");
        assert_eq!(i.model(), None);
        assert!(!i.stream && !i.include_usage && !i.has_variables);
        let i = info(r#"{"stream":null,"max_tokens":null,"stream_options":null,"variables":null}"#);
        assert!(!i.stream && !i.include_usage && i.has_variables);
        assert_eq!(i.max_tokens, None);
        let i = info(r#"{"stream_options":{"include_usage":null,"x":1}}"#);
        assert!(!i.include_usage);
        assert!(info(r#"{"variables":{"name":"Ada"}}"#).has_variables);
        // The larger of the two limits.
        assert_eq!(
            info(r#"{"max_tokens":10,"max_completion_tokens":300}"#).max_tokens,
            Some(300)
        );
    }

    #[test]
    fn only_top_level_keys_count() {
        let i = info(
            r#"{"messages":[{"model":"x","stream":true,"max_tokens":5,"variables":{}}],"metadata":{"model":"y","stream_options":{"include_usage":true}}}"#,
        );
        assert_eq!(i.model(), None);
        assert!(!i.stream && !i.include_usage && !i.has_variables);
        assert_eq!(i.max_tokens, None);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        assert_eq!(
            err(r#"{"model":"cheap","model":"expensive"}"#),
            BodyError::BadField("model")
        );
        // An escaped spelling is the same key to the upstream.
        assert_eq!(
            err(r#"{"model":"cheap","mod\u0065l":"expensive"}"#),
            BodyError::BadField("model")
        );
        for (body, field) in [
            (r#"{"stream":false,"stream":true}"#, "stream"),
            (r#"{"max_tokens":1,"max_tokens":9}"#, "max_tokens"),
            (
                r#"{"max_completion_tokens":1,"max_completion_tokens":1}"#,
                "max_completion_tokens",
            ),
            (
                r#"{"stream_options":null,"stream_options":{}}"#,
                "stream_options",
            ),
            (
                r#"{"stream_options":{"include_usage":false,"include_usage":true}}"#,
                "stream_options",
            ),
            (r#"{"variables":{},"variables":{}}"#, "variables"),
        ] {
            assert_eq!(err(body), BodyError::BadField(field), "{body}");
        }
        // Keys the gateway does not read may repeat: the upstream decides.
        assert!(inspect(br#"{"temperature":1,"temperature":0}"#).is_ok());
    }

    #[test]
    fn wrong_types_are_refused() {
        for (body, field) in [
            (r#"{"model":5}"#, "model"),
            (r#"{"model":null}"#, "model"),
            (r#"{"model":["a"]}"#, "model"),
            (r#"{"stream":"true"}"#, "stream"),
            (r#"{"stream":1}"#, "stream"),
            (r#"{"max_tokens":-1}"#, "max_tokens"),
            (r#"{"max_tokens":1.5}"#, "max_tokens"),
            (r#"{"max_tokens":100.0}"#, "max_tokens"),
            (r#"{"max_tokens":1e3}"#, "max_tokens"),
            (r#"{"max_tokens":"100"}"#, "max_tokens"),
            (r#"{"max_tokens":18446744073709551616}"#, "max_tokens"),
            (r#"{"max_completion_tokens":true}"#, "max_completion_tokens"),
            (r#"{"stream_options":true}"#, "stream_options"),
            (
                r#"{"stream_options":{"include_usage":"yes"}}"#,
                "stream_options",
            ),
        ] {
            assert_eq!(err(body), BodyError::BadField(field), "{body}");
        }
        assert_eq!(
            info(r#"{"max_tokens":18446744073709551615}"#).max_tokens,
            Some(u64::MAX)
        );
    }

    #[test]
    fn not_json_wins_over_a_field_error() {
        for body in [
            "",
            "[]",
            "\"model\"",
            "null",
            r#"{"model":"a"} {"model":"b"}"#,
            r#"{"model":"a"}x"#,
            r#"{"model":5,"#,
            r#"{"model":"a",}"#,
            "{\"model\":\"\u{7}\"}",
        ] {
            assert_eq!(err(body), BodyError::NotJson, "{body:?}");
        }
        assert_eq!(
            inspect(b"{\"model\":\"\xff\"}").err(),
            Some(BodyError::NotJson)
        );
        let deep = format!(
            "{{\"model\":5,\"a\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(err(&deep), BodyError::TooDeep);
    }

    #[test]
    fn escaped_model_names_are_decoded() {
        let body = br#"{"model":"meta-llama\/Llama-3.1-8B-Instruct"}"#;
        let i = inspect(body).expect("valid");
        assert_eq!(i.model(), Some("meta-llama/Llama-3.1-8B-Instruct"));
        let i = inspect(br#"{"model":"caf\u00e9-\ud83d\ude00"}"#).expect("valid");
        assert_eq!(i.model(), Some("café-😀"));
        // Borrowed, not copied, when there is nothing to decode.
        let body = br#"{"model":"gpt-4o"}"#;
        let i = inspect(body).expect("valid");
        assert_eq!(i.model().map(str::as_ptr), Some(body[10..].as_ptr()));
        assert_eq!(err(r#"{"model":"\ud800"}"#), BodyError::BadField("model"));
    }

    #[test]
    fn model_length_is_bounded() {
        let name = "m".repeat(MODEL_BYTES_MAX);
        assert_eq!(
            info(&json!({ "model": name }).to_string()).model(),
            Some(name.as_str())
        );
        let long = "m".repeat(MODEL_BYTES_MAX + 1);
        assert_eq!(
            err(&json!({ "model": long }).to_string()),
            BodyError::BadField("model")
        );
        // The limit is on the decoded name: 256 escaped slashes fit, 257 do not.
        let escaped = format!("{{\"model\":\"{}\"}}", "\\/".repeat(MODEL_BYTES_MAX));
        assert_eq!(info(&escaped).model().map(str::len), Some(MODEL_BYTES_MAX));
        let escaped = format!("{{\"model\":\"{}\"}}", "\\/".repeat(MODEL_BYTES_MAX + 1));
        assert_eq!(err(&escaped), BodyError::BadField("model"));
    }

    #[test]
    fn estimate_is_body_quarter_plus_max_tokens() {
        assert_eq!(estimate_tokens(0, None, 0), 0);
        assert_eq!(estimate_tokens(1, None, 0), 1);
        assert_eq!(estimate_tokens(4, None, 0), 1);
        assert_eq!(estimate_tokens(5, Some(10), 4096), 12);
        assert_eq!(estimate_tokens(400, None, 4096), 4196);
        assert_eq!(estimate_tokens(usize::MAX, Some(u64::MAX), 0), u64::MAX);
    }

    fn rewrite(body: &str) -> Option<String> {
        let mut out = b"prefix:".to_vec();
        let changed = with_include_usage(body.as_bytes(), &mut out).expect("valid body");
        if !changed {
            assert_eq!(out, b"prefix:", "nothing written");
            return None;
        }
        let text = String::from_utf8(out).expect("utf-8");
        Some(text.strip_prefix("prefix:").expect("appended").to_owned())
    }

    #[test]
    fn include_usage_is_added_only_when_missing() {
        let body =
            r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        assert_eq!(
            rewrite(body).as_deref(),
            Some(
                r#"{"stream_options":{"include_usage":true},"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":true}"#
            )
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{}}"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{ }}"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true }}"#)
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{"x":1}}"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true,"x":1}}"#)
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{"include_usage": false}}"#)
                .as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage": true}}"#)
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":null}}"#)
                .as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#)
        );
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options": null }"#).as_deref(),
            Some(r#"{"messages":[],"stream":true,"stream_options": {"include_usage":true} }"#)
        );
        assert_eq!(
            rewrite(r#"  {"stream":true,"messages":[]}  "#).as_deref(),
            Some(r#"  {"stream_options":{"include_usage":true},"stream":true,"messages":[]}  "#)
        );
        // No change needed.
        assert_eq!(rewrite(r#"{"stream":false}"#), None);
        assert_eq!(rewrite(r#"{"model":"a"}"#), None);
        assert_eq!(
            rewrite(r#"{"messages":[],"stream":true,"stream_options":{"include_usage":true}}"#),
            None
        );
        // Errors write nothing.
        let mut out = Vec::new();
        assert_eq!(
            with_include_usage(br#"{"messages":[],"stream":true,"stream":true}"#, &mut out),
            Err(BodyError::BadField("stream"))
        );
        assert!(out.is_empty());
    }

    #[test]
    fn responses_api_request() {
        let body = r#"{
          "model": "gpt-5",
          "instructions": "Talk like a pirate.",
          "input": [
            {"role": "user", "content": [{"type": "input_text", "text": "Are semicolons optional?"}]},
            {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "42"}
          ],
          "max_output_tokens": 300,
          "reasoning": {"effort": "low"},
          "stream": true,
          "stream_options": {"include_obfuscation": false},
          "prompt": {"id": "pmpt_1", "variables": {"model": "x"}}
        }"#;
        let i = info(body);
        assert_eq!(i.model(), Some("gpt-5"));
        assert!(i.stream && !i.include_usage && !i.has_variables);
        assert_eq!(i.max_tokens, Some(300));
        let i = info(r#"{"model":"gpt-5","input":"Hi","max_output_tokens":null}"#);
        assert!(!i.stream);
        assert_eq!(i.max_tokens, None);
        // The largest of the three names counts.
        let i = info(r#"{"max_output_tokens":30,"max_tokens":20,"max_completion_tokens":10}"#);
        assert_eq!(i.max_tokens, Some(30));
        assert_eq!(
            err(r#"{"max_output_tokens":-1}"#),
            BodyError::BadField("max_output_tokens")
        );
        assert_eq!(
            err(r#"{"max_output_tokens":1,"max_output_tokens":2}"#),
            BodyError::BadField("max_output_tokens")
        );
        assert_eq!(
            err(r#"{"max_output_tokens":"5"}"#),
            BodyError::BadField("max_output_tokens")
        );
        // A streaming Responses request is never given `stream_options.include_usage` (its
        // usage comes in response.completed; the field would be refused).
        assert_eq!(rewrite(body), None);
        assert_eq!(
            rewrite(r#"{"model":"gpt-5","input":"Hi","stream":true}"#),
            None
        );
        assert_eq!(
            rewrite(r#"{"model":"gpt-5","input":"Hi","stream":true,"stream_options":{}}"#),
            None
        );
        // Chat and completions bodies are.
        assert!(rewrite(r#"{"model":"m","messages":[],"stream":true}"#).is_some());
        assert!(rewrite(r#"{"model":"m","prompt":"Say hi","stream":true}"#).is_some());
        assert!(rewrite(r#"{"model":"m","prompt":[1,2],"stream":true}"#).is_some());
    }

    #[test]
    fn include_usage_rewrite_reuses_the_buffer() {
        let body = br#"{"model":"gpt-4o","stream":true,"prompt":"Hi"}"#;
        let mut out = Vec::with_capacity(body.len() + INCLUDE_USAGE_GROWTH_BYTES_MAX);
        let ptr = out.as_ptr();
        assert_eq!(with_include_usage(body, &mut out), Ok(true));
        assert_eq!(out.as_ptr(), ptr, "no reallocation");
    }

    /// A JSON string literal for `s`.
    fn lit(s: &str) -> String {
        serde_json::to_string(s).expect("string")
    }

    /// Request bodies with the fields the gateway reads in every form, in any order, with
    /// messages whose content needs escapes, and optional whitespace.
    fn arb_request() -> impl Strategy<Value = String> {
        let model = prop_oneof![
            Just(None),
            "[a-z0-9./:-]{0,20}".prop_map(|m| Some(lit(&m))),
            Just(Some(r#""meta-llama\/Llama-3""#.to_owned())),
        ];
        let stream = prop_oneof![
            Just(None),
            Just(Some("true")),
            Just(Some("false")),
            Just(Some("null"))
        ];
        let options = prop_oneof![
            Just(None),
            Just(Some("null")),
            Just(Some("{}")),
            Just(Some("{ }")),
            Just(Some(r#"{"include_usage":false}"#)),
            Just(Some(r#"{"include_usage":null}"#)),
            Just(Some(r#"{"include_usage":true}"#)),
            Just(Some(r#"{"continuous_usage_stats":true}"#)),
            Just(Some(r#"{"a":1,"include_usage":false,"b":[]}"#)),
        ];
        let max_tokens = prop::option::of(any::<u32>());
        let content = prop::collection::vec(".{0,30}", 0..3);
        let ws = prop_oneof![Just(""), Just(" "), Just("\n  ")];
        (
            model,
            stream,
            options,
            max_tokens,
            content,
            any::<bool>(),
            ws,
            any::<u64>(),
        )
            .prop_map(
                |(model, stream, options, max_tokens, content, vars, ws, seed)| {
                    let mut members: Vec<String> = Vec::new();
                    if let Some(m) = model {
                        members.push(format!("\"model\":{ws}{m}"));
                    }
                    if let Some(s) = stream {
                        members.push(format!("\"stream\":{ws}{s}"));
                    }
                    if let Some(o) = options {
                        members.push(format!("\"stream_options\":{ws}{o}"));
                    }
                    if let Some(n) = max_tokens {
                        members.push(format!("\"max_tokens\":{n}"));
                    }
                    if vars {
                        members.push(r#""variables":{"name":"x"}"#.to_owned());
                    }
                    let messages: Vec<String> = content
                        .iter()
                        .map(|c| format!(r#"{{"role":"user","content":{}}}"#, lit(c)))
                        .collect();
                    members.push(format!("\"messages\":[{}]", messages.join(",")));
                    // A deterministic shuffle from the seed.
                    let mut seed = seed;
                    for i in (1..members.len()).rev() {
                        seed = seed
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        let bound = u64::try_from(i + 1).unwrap_or(1);
                        members.swap(i, usize::try_from((seed >> 33) % bound).unwrap_or(0));
                    }
                    format!("{ws}{{{ws}{}{ws}}}{ws}", members.join(&format!(",{ws}")))
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// (b) The rewrite reads back with include_usage and nothing else changed, and is the
        /// same JSON document with `stream_options.include_usage` set.
        #[test]
        fn include_usage_round_trips(body in arb_request()) {
            let before = inspect(body.as_bytes()).expect("generated bodies are valid");
            let mut out = Vec::new();
            let changed = with_include_usage(body.as_bytes(), &mut out).expect("valid");
            prop_assert_eq!(changed, before.stream && !before.include_usage);
            if !changed {
                prop_assert!(out.is_empty());
                return Ok(());
            }
            let after = inspect(&out).expect("the rewrite is valid");
            prop_assert!(after.include_usage);
            prop_assert_eq!(after, RequestInfo { include_usage: true, ..before });
            let mut expected: serde_json::Value = serde_json::from_str(&body).expect("json");
            let options = &mut expected["stream_options"];
            if options.is_null() {
                *options = json!({});
            }
            options["include_usage"] = json!(true);
            let got: serde_json::Value = serde_json::from_slice(&out).expect("json");
            prop_assert_eq!(got, expected);
        }

        /// Whatever serde_json builds, inspect reads the same model and stream.
        #[test]
        fn reads_what_serde_json_reads(model in ".{0,40}", stream in any::<bool>(), n in any::<u64>()) {
            let body = json!({"messages": [], "model": model, "stream": stream, "max_tokens": n}).to_string();
            let i = inspect(body.as_bytes()).expect("valid");
            if model.len() <= MODEL_BYTES_MAX {
                prop_assert_eq!(i.model(), Some(model.as_str()));
            }
            prop_assert_eq!(i.stream, stream);
            prop_assert_eq!(i.max_tokens, Some(n));
        }

        /// (c) Never panics on arbitrary bytes, and a rewrite is always readable.
        #[test]
        fn never_panics(body in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = inspect(&body);
            let mut out = Vec::new();
            if with_include_usage(&body, &mut out) == Ok(true) {
                prop_assert!(inspect(&out).expect("readable").include_usage);
            }
        }

        #[test]
        fn never_panics_on_jsonish_bodies(body in prop::collection::vec(prop::sample::select(
            b"{}[]\":, 01-.etrufalsn\\mode stram_opinclugv".to_vec()), 0..80)) {
            let mut doc = b"{\"stream\":true,".to_vec();
            doc.extend_from_slice(&body);
            let _ = inspect(&doc);
            let mut out = Vec::new();
            if with_include_usage(&doc, &mut out) == Ok(true) {
                prop_assert!(inspect(&out).expect("readable").include_usage);
            }
        }
    }
}
