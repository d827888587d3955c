//! Finding the upstream's token count in a response, across reads of any size.

use super::json::{self, Key, Kind, Members, Value};
use super::sse::{release_if_empty, Splitter};
use super::{JSON_DEPTH_MAX, USAGE_SCAN_BYTES_MAX, USAGE_TAIL_BYTES};
use crate::http::sse::{event_data, Piece};
use crate::telemetry::span::Text;

/// How a response body is framed for [`UsageScanner`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyKind {
    /// One JSON document (`application/json`).
    #[default]
    Json,
    /// Server-sent events (`text/event-stream`).
    Sse,
}

/// Tokens the upstream reports for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// OpenAI's `prompt_tokens` (the Responses API's `input_tokens`); Anthropic's `input_tokens` plus `cache_creation_input_tokens`
    /// and `cache_read_input_tokens` (Anthropic leaves cached tokens out of `input_tokens`;
    /// OpenAI counts them in `prompt_tokens`).
    pub prompt_tokens: u64,
    /// OpenAI's `completion_tokens` (the Responses API's `output_tokens`), Anthropic's
    /// `output_tokens`; 0 when absent (embeddings).
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, read from a cache: OpenAI's `prompt_tokens_details.cached_tokens`
    /// (Responses: `input_tokens_details.cached_tokens`), Anthropic's `cache_read_input_tokens`.
    pub cached_tokens: u64,
    /// Of `prompt_tokens`, written to a cache: Anthropic's `cache_creation_input_tokens`,
    /// OpenAI's `prompt_tokens_details.cache_write_tokens` (Responses:
    /// `input_tokens_details.cache_write_tokens`).
    pub cache_write_tokens: u64,
    /// Of `completion_tokens`, reasoning: OpenAI's `completion_tokens_details.reasoning_tokens`
    /// (Responses: `output_tokens_details.reasoning_tokens`).
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The counts a price is applied to.
    pub fn tokens(&self) -> shardgate_core::prices::Tokens {
        shardgate_core::prices::Tokens {
            prompt: self.prompt_tokens,
            cached: self.cached_tokens,
            cache_write: self.cache_write_tokens,
            completion: self.completion_tokens,
            reasoning: self.reasoning_tokens,
        }
    }
}

/// The counts seen so far. Each report overwrites what an earlier one said: OpenAI reports
/// once, Anthropic's `message_delta` counts are cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    input: Option<u64>,
    cache_creation: Option<u64>,
    cache_read: Option<u64>,
    output: Option<u64>,
    /// OpenAI's `prompt_tokens_details.cached_tokens` (part of `prompt_tokens`).
    cached: Option<u64>,
    /// OpenAI's `prompt_tokens_details.cache_write_tokens` (part of `prompt_tokens`).
    written: Option<u64>,
    reasoning: Option<u64>,
}

impl Counts {
    /// Read a `usage` object. Fields that are not non-negative integers are ignored.
    fn read(&mut self, usage: Value<'_>) {
        for member in usage.members().into_iter().flatten() {
            let Ok((key, value)) = member else { break };
            // OpenAI chat's `prompt_tokens_details` / `completion_tokens_details`; the Responses
            // API's `input_tokens_details` / `output_tokens_details` (same inner names).
            if key.is("prompt_tokens_details")
                || key.is("completion_tokens_details")
                || key.is("input_tokens_details")
                || key.is("output_tokens_details")
            {
                for inner in value.members().into_iter().flatten() {
                    let Ok((k, v)) = inner else { break };
                    let Some(n) = v.as_u64() else { continue };
                    if k.is("cached_tokens") {
                        self.cached = Some(n);
                    } else if k.is("cache_write_tokens") {
                        self.written = Some(n);
                    } else if k.is("reasoning_tokens") {
                        self.reasoning = Some(n);
                    }
                }
                continue;
            }
            let Some(n) = value.as_u64() else { continue };
            if key.is("prompt_tokens") || key.is("input_tokens") {
                self.input = Some(n);
            } else if key.is("completion_tokens") || key.is("output_tokens") {
                self.output = Some(n);
            } else if key.is("cache_creation_input_tokens") {
                self.cache_creation = Some(n);
            } else if key.is("cache_read_input_tokens") {
                self.cache_read = Some(n);
            }
        }
    }

    fn merge(&mut self, newer: Counts) {
        self.input = newer.input.or(self.input);
        self.cache_creation = newer.cache_creation.or(self.cache_creation);
        self.cache_read = newer.cache_read.or(self.cache_read);
        self.output = newer.output.or(self.output);
        self.cached = newer.cached.or(self.cached);
        self.written = newer.written.or(self.written);
        self.reasoning = newer.reasoning.or(self.reasoning);
    }

    fn usage(&self) -> Option<Usage> {
        if *self == Counts::default() {
            return None;
        }
        let n = |c: Option<u64>| c.unwrap_or(0);
        Some(Usage {
            prompt_tokens: n(self.input)
                .saturating_add(n(self.cache_creation))
                .saturating_add(n(self.cache_read)),
            completion_tokens: n(self.output),
            // OpenAI's cached tokens, or Anthropic's cache reads (counted into prompt_tokens
            // above): one or the other.
            cached_tokens: n(self.cached).max(n(self.cache_read)),
            // Anthropic's cache writes (counted into prompt_tokens above), or OpenAI's: one or
            // the other.
            cache_write_tokens: n(self.cache_creation).max(n(self.written)),
            reasoning_tokens: n(self.reasoning),
        })
    }
}

/// Finds the token usage in a response body fed in reads of any size; the answer does not
/// depend on how the body was cut.
///
/// - [`BodyKind::Json`]: the top-level `usage` object (OpenAI chat, completions, embeddings and
///   Responses; Anthropic messages). A body of at most [`USAGE_SCAN_BYTES_MAX`] bytes is validated and
///   read whole. Of a longer body (a large batch of embeddings) only the last
///   [`USAGE_TAIL_BYTES`] are kept: `usage` is found when its key, its value and all that
///   follows it lie there, which is where OpenAI and Anthropic put it (after `choices`,
///   `content` or `data`). In that tail a candidate `"usage"` counts only if a `{` or `,`
///   precedes it and what follows its value closes exactly one object and ends the document,
///   so neither a nested `usage` nor text inside a string (whose quotes are escaped) can pass
///   for it.
/// - [`BodyKind::Sse`]: each `data:` event: OpenAI's usage chunk (a non-null top-level
///   `usage`), Anthropic's `message_start` (`message.usage`) and `message_delta` (`usage`,
///   cumulative), the Responses API's `response.completed`, `response.incomplete` and
///   `response.failed` (`response.usage`); later reports overwrite earlier ones field by field.
///   An event whose data is not a JSON object is skipped. An event longer than
///   [`USAGE_SCAN_BYTES_MAX`] is not read whole; only its last [`USAGE_TAIL_BYTES`] are kept,
///   and a `usage` object found there one level down (the last member's value of the event's
///   object holds it, with what follows closing both objects, as in the Responses API's final
///   event, which repeats the whole answer, the instructions and the tools and so easily
///   outgrows the buffer) counts as that event's report, found as for a long JSON body.
///
/// The buffer grows as a JSON body arrives (to at most [`USAGE_SCAN_BYTES_MAX`] bytes) and is
/// kept across [`reset`](Self::reset) for the next JSON body. For SSE it holds only the start of
/// an event cut between reads, and is freed once that event is read: a stream waiting for its
/// next event holds nothing here (so a JSON body's buffer is freed when an SSE body begins). A
/// second buffer, as long as the event, is allocated only if an SSE event splits its data over
/// several `data:` lines, which providers do not do; a third, the tail of an event longer than
/// the first, only while such an event passes.
#[derive(Debug, Default)]
pub struct UsageScanner {
    kind: BodyKind,
    /// JSON: the body's last bytes (all of it while it fits). SSE: an unfinished event.
    buf: Vec<u8>,
    /// JSON: bytes fed since `reset`.
    json_bytes: u64,
    split: Splitter,
    scratch: Vec<u8>,
    /// SSE: the last bytes of an event longer than the buffer, while it lasts.
    tail: Vec<u8>,
    counts: Counts,
    /// What a translator read from a body the scanner cannot read (Gemini's `usageMetadata`,
    /// Bedrock's event stream): it takes precedence.
    reported: Option<Usage>,
    /// Also read the model that answered and why it stopped (for the request's trace).
    want_meta: bool,
    /// SSE: what the events said of the answer so far.
    meta: AnswerMeta,
    /// JSON: the whole body's usage and what it says of itself, read once (the call's end, its
    /// span and the metrics each ask); cleared when bytes are fed.
    whole: std::cell::Cell<Option<(Option<Usage>, AnswerMeta)>>,
}

/// What an answer says of itself, for its trace: the model that answered (`model`; Anthropic's
/// `message.model` in a stream) and why it stopped (each choice's `finish_reason`; Anthropic's
/// `stop_reason`). Escaped strings are left out (no provider escapes these).
#[derive(Debug, Clone, Copy, Default)]
pub struct AnswerMeta {
    pub model: Text<{ crate::telemetry::span::NAME_BYTES }>,
    pub finish_reasons: [Text<{ crate::telemetry::span::FINISH_REASON_BYTES }>;
        crate::telemetry::span::FINISH_REASONS_MAX],
}

impl AnswerMeta {
    fn model(&mut self, v: &Value<'_>) {
        if let Some(s) = plain_str(v) {
            self.model.set(s);
        }
    }

    fn reason(&mut self, v: &Value<'_>) {
        let Some(s) = plain_str(v) else { return };
        if s.is_empty() || self.finish_reasons.iter().any(|r| r.as_str() == s) {
            return;
        }
        if let Some(slot) = self.finish_reasons.iter_mut().find(|r| r.is_empty()) {
            slot.set(s);
        }
    }

    /// `choices[].finish_reason`.
    fn choices(&mut self, v: &Value<'_>) {
        for choice in v.elements().into_iter().flatten() {
            for member in choice.members().into_iter().flatten() {
                let Ok((key, value)) = member else { break };
                if key.is("finish_reason") {
                    self.reason(&value);
                }
            }
        }
    }

    /// `{..., "stop_reason": ...}` (Anthropic's message, or a stream's `message_delta.delta`).
    fn stop_reason_in(&mut self, v: &Value<'_>) {
        for member in v.members().into_iter().flatten() {
            let Ok((key, value)) = member else { break };
            if key.is("stop_reason") {
                self.reason(&value);
            } else if key.is("model") {
                self.model(&value);
            }
        }
    }

    /// The top-level members of a body or an event.
    fn read_top(&mut self, key: &Key<'_>, value: &Value<'_>) {
        if key.is("model") {
            self.model(value);
        } else if key.is("choices") {
            self.choices(value);
        } else if key.is("stop_reason") {
            self.reason(value);
        } else if key.is("delta") || key.is("message") || key.is("response") {
            self.stop_reason_in(value);
        }
    }
}

/// A string value without escapes, as UTF-8.
fn plain_str<'a>(v: &Value<'a>) -> Option<&'a str> {
    match v.as_raw_str() {
        Some((raw, false)) => std::str::from_utf8(raw).ok(),
        _ => None,
    }
}

impl UsageScanner {
    /// A scanner for a JSON body; [`reset`](Self::reset) picks the kind of the next body.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start on a new response body of `kind`, keeping the buffer.
    pub fn reset(&mut self, kind: BodyKind) {
        self.kind = kind;
        self.buf.clear();
        if kind == BodyKind::Sse {
            release_if_empty(&mut self.buf);
        }
        self.json_bytes = 0;
        self.split = Splitter::default();
        self.tail.clear();
        self.counts = Counts::default();
        self.reported = None;
        self.meta = AnswerMeta::default();
        self.whole.set(None);
    }

    /// Read the answer's model and finish reasons too ([`Self::answer_meta`]), from the next
    /// [`reset`](Self::reset) on; off by default (it walks more of each event).
    pub fn want_meta(&mut self, on: bool) {
        self.want_meta = on;
    }

    /// The model that answered and why it stopped, as far as the body fed so far says (a JSON
    /// body is read whole; one too long to keep says nothing).
    pub fn answer_meta(&self) -> AnswerMeta {
        match self.kind {
            BodyKind::Sse => self.meta,
            BodyKind::Json if self.json_bytes <= SCAN_BYTES_MAX_U64 => self.whole_body().1,
            BodyKind::Json => AnswerMeta::default(),
        }
    }

    /// The usage a translator read from this body, in place of what the scanner finds.
    pub fn report(&mut self, usage: Usage) {
        self.reported = Some(usage);
    }

    /// The next bytes of the body (de-chunked, not compressed).
    pub fn feed(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        match self.kind {
            BodyKind::Json => self.feed_json(bytes),
            BodyKind::Sse => {
                let (scratch, tail, counts) = (&mut self.scratch, &mut self.tail, &mut self.counts);
                let meta = self.want_meta.then_some(&mut self.meta);
                let mut meta = meta;
                self.split.feed(&mut self.buf, bytes, |piece| match piece {
                    Piece::Event(event) => {
                        if let Some(data) = event_data(event, scratch, |_| {}) {
                            read_event(counts, data, meta.as_deref_mut());
                        }
                    }
                    Piece::Unexamined(part) => {
                        keep_tail(tail, part);
                        if ends_event(tail) {
                            if let Some(found) = tail
                                .get(tail.len().saturating_sub(USAGE_TAIL_BYTES)..)
                                .and_then(|t| tail_counts(t, 2))
                            {
                                counts.merge(found);
                            }
                            tail.clear();
                        }
                    }
                });
                // Between events a stream's scanner holds nothing.
                release_if_empty(&mut self.buf);
                release_if_empty(&mut self.tail);
            }
        }
    }

    /// The usage reported so far (SSE), or found in the body fed so far (JSON); `None` if none.
    pub fn usage(&self) -> Option<Usage> {
        if self.reported.is_some() {
            return self.reported;
        }
        match self.kind {
            BodyKind::Sse => self.counts.usage(),
            BodyKind::Json if self.json_bytes <= SCAN_BYTES_MAX_U64 => self.whole_body().0,
            BodyKind::Json => self
                .buf
                .get(self.buf.len().saturating_sub(USAGE_TAIL_BYTES)..)
                .and_then(tail_usage),
        }
    }

    /// A whole JSON body's usage and (when [`Self::want_meta`]) what it says of itself, read
    /// once for every caller until more bytes are fed.
    fn whole_body(&self) -> (Option<Usage>, AnswerMeta) {
        if let Some(w) = self.whole.get() {
            return w;
        }
        let w = whole_body_scan(&self.buf, self.want_meta);
        self.whole.set(Some(w));
        w
    }

    /// Keep the whole body while it fits; past that, at least its last `USAGE_TAIL_BYTES`.
    /// INVARIANT: `buf` is a suffix of the body, all of it while `json_bytes` fits in the
    /// buffer, and at least `USAGE_TAIL_BYTES` long after that. Compacting moves at most
    /// `USAGE_TAIL_BYTES` once per `USAGE_SCAN_BYTES_MAX - USAGE_TAIL_BYTES` bytes fed.
    fn feed_json(&mut self, bytes: &[u8]) {
        self.whole.set(None);
        self.json_bytes = self
            .json_bytes
            .saturating_add(u64::try_from(bytes.len()).unwrap_or(u64::MAX));
        keep_tail(&mut self.buf, bytes);
    }
}

/// Append `bytes` to `buf` (of capacity [`USAGE_SCAN_BYTES_MAX`]) while they fit; past that,
/// keep at least the last [`USAGE_TAIL_BYTES`] of what `buf` and `bytes` hold together.
fn keep_tail(buf: &mut Vec<u8>, bytes: &[u8]) {
    if buf.len() + bytes.len() <= USAGE_SCAN_BYTES_MAX {
        buf.extend_from_slice(bytes);
    } else if let Some(last) = bytes.get(bytes.len().saturating_sub(USAGE_TAIL_BYTES)..) {
        let keep = USAGE_TAIL_BYTES - last.len();
        let drop = buf.len().saturating_sub(keep);
        buf.drain(..drop);
        buf.extend_from_slice(last);
    }
}

/// Whether the bytes of an event seen so far end with the blank line that ends it (`\n\n`, or
/// `\n\r\n` for CRLF lines: exactly where [`Splitter`] ends an event, so the answer does not
/// depend on how the stream was cut).
fn ends_event(seen: &[u8]) -> bool {
    seen.ends_with(b"\n\n") || seen.ends_with(b"\n\r\n")
}

const SCAN_BYTES_MAX_U64: u64 = USAGE_SCAN_BYTES_MAX as u64;

/// One SSE event's data: merge its usage report, if it is a valid JSON object that has one.
fn read_event(counts: &mut Counts, data: &[u8], mut meta: Option<&mut AnswerMeta>) {
    let Ok(mut members) = Members::new(data, 0, JSON_DEPTH_MAX) else {
        return;
    };
    let (mut usage, mut message, mut response, mut kind) = (None, None, None, &b""[..]);
    for member in &mut members {
        let Ok((key, value)) = member else { return };
        if let Some(meta) = meta.as_deref_mut() {
            meta.read_top(&key, &value);
        }
        if key.is("usage") {
            usage = Some(value);
        } else if key.is("message") {
            message = Some(value);
        } else if key.is("response") {
            response = Some(value);
        } else if key.is("type") {
            kind = value.raw();
        }
    }
    if members.finish_document().is_err() {
        return;
    }
    let mut found = Counts::default();
    // Anthropic's `message_start` holds its usage in `message`; the Responses API's final
    // events (`response.completed`, `.incomplete`, `.failed`) in `response` (its earlier
    // events carry `"usage":null` there).
    let inner = match kind {
        br#""message_start""# => message,
        br#""response.completed""# | br#""response.incomplete""# | br#""response.failed""# => {
            response
        }
        _ => None,
    };
    if let Some(inner) = inner {
        for member in inner.members().into_iter().flatten() {
            let Ok((key, value)) = member else { break };
            if key.is("usage") {
                found.read(value);
            }
        }
    }
    if let Some(usage) = usage {
        found.read(usage);
    }
    counts.merge(found);
}

/// The top-level `usage` of a whole JSON body (the last one, if repeated) and, with `meta`,
/// what the body says of itself, in one walk. A body that is not one valid JSON object has no
/// usage.
fn whole_body_scan(doc: &[u8], meta: bool) -> (Option<Usage>, AnswerMeta) {
    let mut found = AnswerMeta::default();
    let Ok(mut members) = Members::new(doc, 0, JSON_DEPTH_MAX) else {
        return (None, found);
    };
    let mut usage = None;
    for member in &mut members {
        let Ok((key, value)) = member else {
            return (None, found);
        };
        if key.is("usage") {
            usage = Some(value);
        } else if meta {
            found.read_top(&key, &value);
        }
    }
    if members.finish_document().is_err() {
        return (None, found);
    }
    let usage = usage.and_then(|u| {
        let mut counts = Counts::default();
        counts.read(u);
        counts.usage()
    });
    (usage, found)
}

/// Candidates [`tail_usage`] examines, last first. The real `usage` is the last `"usage"` key
/// of a provider's body; the bound keeps a hostile body of many nested `usage` keys from
/// costing a quadratic search.
const TAIL_CANDIDATES_MAX: usize = 64;

/// The top-level `usage` of a JSON body of which only `tail` (its last bytes) is known.
fn tail_usage(tail: &[u8]) -> Option<Usage> {
    tail_counts(tail, 1)?.usage()
}

/// The `usage` object `depth` levels down in a JSON document of which only `tail` (its last
/// bytes) is known: 1 for a top-level `usage`, 2 for one in the value of the top-level object's
/// last object-valued member (what follows it must close both objects).
fn tail_counts(tail: &[u8], depth: usize) -> Option<Counts> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    for _ in 0..TAIL_CANDIDATES_MAX {
        let at = tail
            .get(..end)?
            .windows(KEY.len())
            .rposition(|w| w == KEY)?;
        end = at;
        // A key: after `{` or `,`, and followed by `:`.
        let before = tail.get(..at)?.iter().rposition(|b| !json::is_ws(*b));
        if !matches!(before.and_then(|b| tail.get(b)), Some(b'{' | b',')) {
            continue;
        }
        let colon = json::skip_ws(tail, at + KEY.len());
        if tail.get(colon) != Some(&b':') {
            continue;
        }
        let Ok(value) = json::skip_value(tail, colon + 1, JSON_DEPTH_MAX) else {
            continue;
        };
        if !closes_document(tail, value.end, depth) {
            continue;
        }
        // The `usage` sought: an object, or nothing to find.
        if value.kind != Kind::Object {
            return None;
        }
        let mut counts = Counts::default();
        counts.read(value);
        return Some(counts);
    }
    None
}

/// Whether `doc[at..]` is, `depth` times, the rest of an object's members (`, "key": value`
/// …) and its closing `}`, then whitespace to the end.
fn closes_document(doc: &[u8], mut at: usize, depth: usize) -> bool {
    let mut open = depth;
    loop {
        at = json::skip_ws(doc, at);
        match doc.get(at) {
            Some(b'}') if open > 1 => {
                open -= 1;
                at += 1;
            }
            Some(b'}') => return json::skip_ws(doc, at + 1) == doc.len(),
            Some(b',') => {
                let key = json::skip_ws(doc, at + 1);
                let Ok(k) = json::skip_value(doc, key, 0) else {
                    return false;
                };
                if !matches!(k.kind, Kind::String { .. }) {
                    return false;
                }
                let colon = json::skip_ws(doc, k.end);
                if doc.get(colon) != Some(&b':') {
                    return false;
                }
                let Ok(value) = json::skip_value(doc, colon + 1, JSON_DEPTH_MAX) else {
                    return false;
                };
                at = value.end;
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::sse::tests::{arb_stream, pieces, ANTHROPIC_STREAM, OPENAI_STREAM};
    use super::*;
    use proptest::prelude::*;

    fn scan(kind: BodyKind, body: &[u8], cuts: &[usize]) -> Option<Usage> {
        let mut s = UsageScanner::new();
        s.reset(kind);
        for piece in pieces(body, cuts) {
            s.feed(piece);
        }
        s.usage()
    }

    fn usage(prompt_tokens: u64, completion_tokens: u64) -> Option<Usage> {
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            ..Usage::default()
        })
    }

    const OPENAI_CHAT: &str = r#"{
  "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
  "object": "chat.completion",
  "created": 1741569952,
  "model": "gpt-4.1-2025-04-14",
  "choices": [
    {
      "index": 0,
      "message": {
        "role": "assistant",
        "content": "Hello! How can I assist you today?",
        "refusal": null,
        "annotations": []
      },
      "logprobs": null,
      "finish_reason": "stop"
    }
  ],
  "usage": {
    "prompt_tokens": 19,
    "completion_tokens": 10,
    "total_tokens": 29,
    "prompt_tokens_details": {
      "cached_tokens": 0,
      "audio_tokens": 0
    },
    "completion_tokens_details": {
      "reasoning_tokens": 0,
      "audio_tokens": 0,
      "accepted_prediction_tokens": 0,
      "rejected_prediction_tokens": 0
    }
  },
  "service_tier": "default"
}"#;

    const ANTHROPIC_MESSAGE: &str = r#"{"id":"msg_01XFDUDYJgAACzvnptvVoYEL","type":"message","role":"assistant","content":[{"type":"text","text":"Hello!"}],"model":"claude-sonnet-4-5-20250929","stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":100,"cache_read_input_tokens":2000,"output_tokens":6}}"#;

    #[test]
    fn cached_cache_write_and_reasoning_tokens_are_read_for_prices() {
        let openai = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":300,"total_tokens":1300,"prompt_tokens_details":{"cached_tokens":400,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":100}}}"#;
        let u = scan(BodyKind::Json, openai, &[]).expect("usage");
        let parts = |u: Usage| {
            (
                u.prompt_tokens,
                u.cached_tokens,
                u.cache_write_tokens,
                u.completion_tokens,
                u.reasoning_tokens,
            )
        };
        assert_eq!(parts(u), (1000, 400, 0, 300, 100));
        // OpenAI's cache writes are part of the prompt too (chat and Responses).
        let openai = br#"{"usage":{"prompt_tokens":1000,"completion_tokens":3,"prompt_tokens_details":{"cached_tokens":400,"cache_write_tokens":500}}}"#;
        let u = scan(BodyKind::Json, openai, &[]).expect("usage");
        assert_eq!(parts(u), (1000, 400, 500, 3, 0));
        let responses = br#"{"object":"response","usage":{"input_tokens":1000,"input_tokens_details":{"cached_tokens":0,"cache_write_tokens":900,"cache_write_tokens_details":{"ttl_30m_tokens":900,"ttl_12h_tokens":0}},"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2},"total_tokens":1007}}"#;
        let u = scan(BodyKind::Json, responses, &[]).expect("usage");
        assert_eq!(parts(u), (1000, 0, 900, 7, 2));
        let anthropic = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,",
            "\"cache_creation_input_tokens\":20,\"cache_read_input_tokens\":30,\"output_tokens\":1}}}\n\n",
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}\n\n"
        );
        let u = scan(BodyKind::Sse, anthropic.as_bytes(), &[]).expect("usage");
        assert_eq!(parts(u), (60, 30, 20, 7, 0));
        // A details object of the wrong shape is ignored, not an error.
        let odd = br#"{"usage":{"prompt_tokens":5,"completion_tokens":1,"prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":"many"}}}"#;
        let u = scan(BodyKind::Json, odd, &[]).expect("usage");
        assert_eq!(
            (u.prompt_tokens, u.cached_tokens, u.reasoning_tokens),
            (5, 0, 0)
        );
    }

    #[test]
    fn json_bodies_openai_and_anthropic() {
        assert_eq!(
            scan(BodyKind::Json, OPENAI_CHAT.as_bytes(), &[]),
            usage(19, 10)
        );
        assert_eq!(
            scan(BodyKind::Json, ANTHROPIC_MESSAGE.as_bytes(), &[50, 51]),
            Some(Usage {
                cached_tokens: 2000,
                cache_write_tokens: 100,
                ..usage(2112, 6).expect("some")
            })
        );
        let embeddings = r#"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[0.0023064255,-0.009327292,-0.0028842222]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":8,"total_tokens":8}}"#;
        assert_eq!(
            scan(BodyKind::Json, embeddings.as_bytes(), &[3]),
            usage(8, 0)
        );
    }

    #[test]
    fn json_bodies_without_usage() {
        for body in [
            r#"{"error":{"message":"Invalid API key","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#,
            r#"{"usage":null}"#,
            r#"{"choices":[{"usage":{"prompt_tokens":1}}]}"#,
            r#"{"usage":{"prompt_tokens":1}"#,
            r#"{"usage":{"prompt_tokens":-1,"completion_tokens":1.5}}"#,
            "",
        ] {
            assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[]), None, "{body}");
        }
    }

    /// An embeddings response of `n` vectors: far beyond the buffer, usage at the end.
    fn big_embeddings(n: usize, usage: &str) -> String {
        let vector = vec!["-0.0028842222"; 1536].join(",");
        let data: Vec<String> = (0..n)
            .map(|i| format!(r#"{{"object":"embedding","index":{i},"embedding":[{vector}]}}"#))
            .collect();
        format!(
            r#"{{"object":"list","data":[{}],"model":"text-embedding-3-small",{usage}}}"#,
            data.join(",")
        )
    }

    #[test]
    fn long_json_bodies_are_read_from_their_tail() {
        let body = big_embeddings(20, r#""usage":{"prompt_tokens":80,"total_tokens":80}"#);
        assert!(body.len() > 5 * USAGE_SCAN_BYTES_MAX);
        for step in [1, 7, 4096, 32 * 1024, 100_000, body.len()] {
            if step == 1 && body.len() > 500_000 {
                continue;
            }
            let cuts: Vec<usize> = (step..body.len()).step_by(step).collect();
            assert_eq!(
                scan(BodyKind::Json, body.as_bytes(), &cuts),
                usage(80, 0),
                "{step}"
            );
        }
    }

    #[test]
    fn the_tail_search_is_not_fooled() {
        let pad = "x".repeat(USAGE_SCAN_BYTES_MAX);
        // Content quoting a usage object, after the real one: its quotes are escaped.
        let quoted = r#"{\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}"#;
        let body = format!(
            r#"{{"pad":"{pad}","usage":{{"prompt_tokens":7,"completion_tokens":3}},"choices":[{{"message":{{"content":"{quoted}"}}}}]}}"#
        );
        assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[100]), usage(7, 3));
        // A nested usage is not the top-level one.
        let body = format!(
            r#"{{"pad":"{pad}","x":{{"usage":{{"prompt_tokens":7,"completion_tokens":3}}}}}}"#
        );
        assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[]), None);
        let body = format!(
            r#"{{"pad":"{pad}","x":[{{"usage":{{"prompt_tokens":7,"completion_tokens":3}}}}]}}"#
        );
        assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[]), None);
        // The documented limit: usage followed by more than the tail is not found.
        let body =
            format!(r#"{{"usage":{{"prompt_tokens":7,"completion_tokens":3}},"pad":"{pad}"}}"#);
        assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[]), None);
        // Truncated body: not a document.
        let body = format!(r#"{{"pad":"{pad}","usage":{{"prompt_tokens":7}}"#);
        assert_eq!(scan(BodyKind::Json, body.as_bytes(), &[]), None);
    }

    #[test]
    fn the_tail_search_is_bounded() {
        let pad = "x".repeat(USAGE_SCAN_BYTES_MAX);
        let body = |nested: usize| {
            let items = vec![r#"{"usage":1}"#; nested].join(",");
            format!(
                r#"{{"pad":"{pad}","usage":{{"prompt_tokens":7,"completion_tokens":3}},"items":[{items}]}}"#
            )
        };
        assert_eq!(
            scan(
                BodyKind::Json,
                body(TAIL_CANDIDATES_MAX - 1).as_bytes(),
                &[]
            ),
            usage(7, 3)
        );
        assert_eq!(
            scan(BodyKind::Json, body(TAIL_CANDIDATES_MAX).as_bytes(), &[]),
            None
        );
    }

    /// A whole Responses API answer (`POST /v1/responses`), as the API sends it.
    const RESPONSES_BODY: &str = r#"{"id":"resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b","object":"response","created_at":1741476542,"status":"completed","error":null,"incomplete_details":null,"instructions":null,"max_output_tokens":null,"model":"gpt-5-2025-08-07","output":[{"type":"reasoning","id":"rs_1","summary":[]},{"type":"message","id":"msg_67ccd2bf17f0819081ff3bb2cf6508e60bb6a6b452d3795b","status":"completed","role":"assistant","content":[{"type":"output_text","text":"In a peaceful grove beneath a silver moon...","annotations":[]}]}],"parallel_tool_calls":true,"previous_response_id":null,"reasoning":{"effort":"medium","summary":null},"store":true,"temperature":1.0,"text":{"format":{"type":"text"}},"tool_choice":"auto","tools":[],"top_p":1.0,"truncation":"disabled","usage":{"input_tokens":136,"input_tokens_details":{"cached_tokens":128},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":64},"total_tokens":223},"user":null,"metadata":{}}"#;

    /// A streamed Responses API answer: `usage` is null until `response.completed`.
    const RESPONSES_STREAM: &str = concat!(
        "event: response.created\n",
        "data: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"created_at\":1741290958,\"status\":\"in_progress\",\"model\":\"gpt-5\",\"output\":[],\"usage\":null}}\n\n",
        "event: response.in_progress\n",
        "data: {\"type\":\"response.in_progress\",\"sequence_number\":1,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
        "event: response.output_text.delta\n",
        "data: {\"type\":\"response.output_text.delta\",\"sequence_number\":4,\"item_id\":\"msg_1\",\"output_index\":0,\"content_index\":0,\"delta\":\"Hi \\\"usage\\\":{\\\"input_tokens\\\":999}\"}\n\n",
        "event: response.completed\n",
        "data: {\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{\"id\":\"resp_1\",\"object\":\"response\",\"status\":\"completed\",\"output\":[{\"type\":\"message\",\"content\":[{\"type\":\"output_text\",\"text\":\"Hi\"}]}],\"usage\":{\"input_tokens\":37,\"input_tokens_details\":{\"cached_tokens\":5},\"output_tokens\":11,\"output_tokens_details\":{\"reasoning_tokens\":4},\"total_tokens\":48},\"user\":null,\"metadata\":{}}}\n\n",
    );

    fn responses_usage() -> Option<Usage> {
        Some(Usage {
            cached_tokens: 5,
            reasoning_tokens: 4,
            ..usage(37, 11).expect("some")
        })
    }

    #[test]
    fn responses_api_whole_and_streamed() {
        assert_eq!(
            scan(BodyKind::Json, RESPONSES_BODY.as_bytes(), &[50, 700]),
            Some(Usage {
                cached_tokens: 128,
                reasoning_tokens: 64,
                ..usage(136, 87).expect("some")
            })
        );
        for cuts in [vec![], vec![1, 100, 101, 400, 650], (0..700).collect()] {
            assert_eq!(
                scan(BodyKind::Sse, RESPONSES_STREAM.as_bytes(), &cuts),
                responses_usage()
            );
        }
        let crlf = RESPONSES_STREAM.replace('\n', "\r\n");
        assert_eq!(
            scan(BodyKind::Sse, crlf.as_bytes(), &[77]),
            responses_usage()
        );
        // Before response.completed: nothing (response.created's usage is null).
        let cut = RESPONSES_STREAM
            .find("event: response.completed")
            .unwrap_or(0);
        assert_eq!(
            scan(BodyKind::Sse, &RESPONSES_STREAM.as_bytes()[..cut], &[]),
            None
        );
        // response.incomplete and response.failed report too; other events' `response.usage`
        // does not count.
        for (kind, counted) in [
            ("response.incomplete", true),
            ("response.failed", true),
            ("response.in_progress", false),
            ("response.output_item.done", false),
        ] {
            let event = format!(
                "event: {kind}\ndata: {{\"type\":\"{kind}\",\"sequence_number\":3,\"response\":{{\"status\":\"x\",\"usage\":{{\"input_tokens\":7,\"output_tokens\":2,\"total_tokens\":9}}}}}}\n\n"
            );
            assert_eq!(
                scan(BodyKind::Sse, event.as_bytes(), &[]),
                if counted { usage(7, 2) } else { None },
                "{kind}"
            );
        }
    }

    /// `response.completed` repeats the whole answer, instructions and tools: often longer
    /// than the buffer. Its usage is still found, however the stream is cut.
    #[test]
    fn responses_long_final_event_still_reports_usage() {
        let instructions = "Be careful. ".repeat(3 * USAGE_SCAN_BYTES_MAX / 12);
        let completed = |sequence_after: bool| {
            let response = format!(
                "{{\"id\":\"resp_1\",\"status\":\"completed\",\"instructions\":\"{instructions}\",\"output\":[],\"usage\":{{\"input_tokens\":30000,\"input_tokens_details\":{{\"cached_tokens\":29000}},\"output_tokens\":12,\"output_tokens_details\":{{\"reasoning_tokens\":0}},\"total_tokens\":30012}},\"user\":null,\"metadata\":{{}}}}"
            );
            if sequence_after {
                format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"response\":{response},\"sequence_number\":9}}\n\n")
            } else {
                format!("event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":9,\"response\":{response}}}\n\n")
            }
        };
        let want = Some(Usage {
            cached_tokens: 29_000,
            ..usage(30_000, 12).expect("some")
        });
        for sequence_after in [false, true] {
            let head = RESPONSES_STREAM
                .find("event: response.completed")
                .unwrap_or(0);
            let stream = format!("{}{}", &RESPONSES_STREAM[..head], completed(sequence_after));
            assert!(stream.len() > 2 * USAGE_SCAN_BYTES_MAX);
            for step in [1000, 4096, 65_536, stream.len()] {
                let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
                assert_eq!(scan(BodyKind::Sse, stream.as_bytes(), &cuts), want);
            }
            let crlf = stream.replace('\n', "\r\n");
            assert_eq!(scan(BodyKind::Sse, crlf.as_bytes(), &[300, 70_000]), want);
            // Cut off before its blank line: no report.
            let cut = stream.trim_end();
            assert_eq!(scan(BodyKind::Sse, cut.as_bytes(), &[]), None);
        }
        // A long event whose `usage` is not one level down, or is inside a string, is not read.
        let pad = "x".repeat(USAGE_SCAN_BYTES_MAX);
        for event in [
            format!("data: {{\"pad\":\"{pad}\",\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}}}}\n\n"),
            format!("data: {{\"a\":{{\"b\":{{\"pad\":\"{pad}\",\"usage\":{{\"input_tokens\":1}}}}}}}}\n\n"),
            format!("data: {{\"a\":{{\"pad\":\"{pad} \\\"usage\\\":{{\\\"input_tokens\\\":1}}}}\"}}}}\n\n"),
        ] {
            assert_eq!(scan(BodyKind::Sse, event.as_bytes(), &[10, 70_000]), None);
        }
        // Later events still read normally, and the tail buffer is reused.
        let stream = format!("{}{RESPONSES_STREAM}", completed(false));
        assert_eq!(
            scan(BodyKind::Sse, stream.as_bytes(), &[5]),
            responses_usage()
        );
    }

    #[test]
    fn sse_streams_openai_and_anthropic() {
        assert_eq!(
            scan(BodyKind::Sse, OPENAI_STREAM.as_bytes(), &[]),
            usage(9, 12)
        );
        assert_eq!(
            scan(BodyKind::Sse, ANTHROPIC_STREAM.as_bytes(), &[]),
            usage(25, 15)
        );
        let crlf = ANTHROPIC_STREAM.replace('\n', "\r\n");
        assert_eq!(
            scan(BodyKind::Sse, crlf.as_bytes(), &[9, 99]),
            usage(25, 15)
        );
        // Before message_delta: message_start's counts.
        let cut = ANTHROPIC_STREAM.find("event: message_delta").unwrap_or(0);
        assert_eq!(
            scan(BodyKind::Sse, &ANTHROPIC_STREAM.as_bytes()[..cut], &[]),
            usage(25, 1)
        );
        // Without the usage chunk: nothing.
        let cut = OPENAI_STREAM.find("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[]").unwrap_or(0);
        assert_eq!(
            scan(BodyKind::Sse, &OPENAI_STREAM.as_bytes()[..cut], &[]),
            None
        );
    }

    #[test]
    fn sse_anthropic_cache_and_cumulative_counts() {
        let stream = concat!(
            "event: message_start\n",
            "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1800,\"output_tokens\":1}}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":40}}\n\n",
            "event: message_delta\n",
            "data: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":1800,\"output_tokens\":90}}\n\n",
        );
        assert_eq!(
            scan(BodyKind::Sse, stream.as_bytes(), &[]),
            Some(Usage {
                cached_tokens: 1800,
                ..usage(1805, 90).expect("some")
            })
        );
        // `message.usage` counts only in message_start.
        let other = "data: {\"type\":\"other\",\"message\":{\"usage\":{\"input_tokens\":5}}}\n\n";
        assert_eq!(scan(BodyKind::Sse, other.as_bytes(), &[]), None);
    }

    #[test]
    fn sse_oversized_and_broken_events_are_skipped() {
        let big = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1,\"completion_tokens\":1}},\"pad\":\"{}\"}}\n\n",
            "x".repeat(USAGE_SCAN_BYTES_MAX)
        );
        let broken =
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,\"completion_tokens\":2}\n\n";
        let stream = format!("{OPENAI_STREAM}{big}{broken}");
        for step in [100, 65_536, stream.len()] {
            let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
            assert_eq!(scan(BodyKind::Sse, stream.as_bytes(), &cuts), usage(9, 12));
        }
    }

    #[test]
    fn json_keeps_its_buffer_and_a_waiting_stream_holds_none() {
        let mut s = UsageScanner::new();
        let big = big_embeddings(3, r#""usage":{"prompt_tokens":3,"total_tokens":3}"#);
        s.reset(BodyKind::Json);
        for piece in big.as_bytes().chunks(1000) {
            s.feed(piece);
        }
        assert!(s.usage().is_some());
        let (ptr, cap) = (s.buf.as_ptr(), s.buf.capacity());
        assert!(cap <= 2 * USAGE_SCAN_BYTES_MAX, "bounded: {cap}");
        // The next JSON body reuses the buffer.
        s.reset(BodyKind::Json);
        for piece in big.as_bytes().chunks(1000) {
            s.feed(piece);
        }
        assert!(s.usage().is_some());
        assert_eq!((s.buf.as_ptr(), s.buf.capacity()), (ptr, cap));
        // A stream: nothing held between whole events, an event cut between reads held until
        // its end, then freed.
        s.reset(BodyKind::Sse);
        assert_eq!(s.buf.capacity(), 0);
        let (start, rest) = OPENAI_STREAM.as_bytes().split_at(40);
        s.feed(start);
        assert_eq!(s.buf.len(), 40);
        s.feed(rest);
        assert_eq!((s.buf.capacity(), s.tail.capacity()), (0, 0));
        assert!(s.usage().is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// (a) SSE: the same usage however the stream is cut, and the last report's counts.
        #[test]
        fn sse_split_independent(stream in arb_stream(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            prop_assert_eq!(
                scan(BodyKind::Sse, &stream, &cuts),
                scan(BodyKind::Sse, &stream, &[])
            );
        }

        /// A Responses final event longer than the buffer: the same usage however cut.
        #[test]
        fn responses_long_final_event_split_independent(
            pad in 0usize..3 * USAGE_SCAN_BYTES_MAX,
            crlf in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..6),
        ) {
            let stream = format!(
                "{RESPONSES_STREAM}event: response.completed\ndata: {{\"type\":\"response.completed\",\"sequence_number\":10,\"response\":{{\"instructions\":\"{}\",\"usage\":{{\"input_tokens\":50,\"output_tokens\":6}},\"metadata\":{{}}}}}}\n\n",
                "y".repeat(pad)
            );
            let stream = if crlf { stream.replace('\n', "\r\n") } else { stream };
            let whole = scan(BodyKind::Sse, stream.as_bytes(), &[]);
            prop_assert_eq!(scan(BodyKind::Sse, stream.as_bytes(), &cuts), whole);
            prop_assert_eq!(whole, Some(Usage { cached_tokens: 5, reasoning_tokens: 4, ..usage(50, 6).expect("some") }));
        }

        /// (a) JSON: the same usage however the body is cut, short or long.
        #[test]
        fn json_split_independent(
            content in ".{0,40}",
            pad in 0usize..3 * USAGE_SCAN_BYTES_MAX,
            p in any::<u32>(),
            c in any::<u32>(),
            usage_first in any::<bool>(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let usage = serde_json::json!({"prompt_tokens": p, "completion_tokens": c});
            let choices = serde_json::json!([{"message": {"content": content}}]);
            let body = if usage_first {
                format!(r#"{{"usage":{usage},"pad":"{}","choices":{choices}}}"#, "x".repeat(pad))
            } else {
                format!(r#"{{"pad":"{}","choices":{choices},"usage":{usage}}}"#, "x".repeat(pad))
            };
            let whole = scan(BodyKind::Json, body.as_bytes(), &[]);
            prop_assert_eq!(scan(BodyKind::Json, body.as_bytes(), &cuts), whole);
            if !usage_first || body.len() <= USAGE_SCAN_BYTES_MAX {
                prop_assert_eq!(whole, Some(Usage { prompt_tokens: p.into(), completion_tokens: c.into(), ..Usage::default() }));
            }
        }

        /// (a) and (c) on arbitrary bytes, both kinds.
        #[test]
        fn never_panics_and_split_independent_on_noise(
            body in prop::collection::vec(prop::sample::select(b"\n\r\n\rdata: {}[]\",usage_tokens 0123".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            for kind in [BodyKind::Json, BodyKind::Sse] {
                prop_assert_eq!(scan(kind, &body, &cuts), scan(kind, &body, &[]));
            }
        }

        #[test]
        fn never_panics(body in prop::collection::vec(any::<u8>(), 0..400), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
            for kind in [BodyKind::Json, BodyKind::Sse] {
                let _ = scan(kind, &body, &cuts);
            }
        }
    }
}
