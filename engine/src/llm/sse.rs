//! The SSE filter ([`SseFilter`]), on the stream splitter of [`http::sse`](crate::http::sse).

use super::json::{self, Kind, Members, Value};
use super::{JSON_DEPTH_MAX, USAGE_SCAN_BYTES_MAX};
use crate::http::sse::{event_data, Piece};

/// The splitter of the filter and the usage scanner: events of at most
/// [`USAGE_SCAN_BYTES_MAX`] bytes are examined.
pub(crate) type Splitter = crate::http::sse::Splitter<USAGE_SCAN_BYTES_MAX>;

/// Free a buffer that holds the start of an unfinished event once it holds nothing: a stream
/// waiting for its next event keeps no memory for events already passed on. Whole events (the
/// usual read) are never copied into it, so it is allocated only for an event cut between reads.
pub(crate) fn release_if_empty(buf: &mut Vec<u8>) {
    if buf.is_empty() && buf.capacity() != 0 {
        *buf = Vec::new();
    }
}

/// What an event's data is, to the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// OpenAI's usage chunk: `"choices": []` and a non-null `usage`.
    UsageOnly,
    /// Carries generated content (text, tool-call arguments, reasoning, a refusal).
    Content,
    Other,
}

/// What the filter does with an event: its [`Class`], and where in its data a `"reasoning"`
/// key starts (its opening quote) that OpenAI-compatible clients expect as `reasoning_content`.
fn classify(data: &[u8]) -> (Class, Option<usize>) {
    let Ok(mut members) = Members::new(data, 0, JSON_DEPTH_MAX) else {
        return (Class::Other, None);
    };
    let (mut no_choices, mut usage, mut content) = (false, false, false);
    let mut rename = None;
    for member in &mut members {
        let Ok((key, value)) = member else {
            return (Class::Other, None);
        };
        if key.is("choices") {
            no_choices = value.kind == Kind::Array && !value.is_nonempty_array();
            let (carries, reasoning) = choices_carry_content(value);
            content |= carries;
            rename = reasoning.and_then(|key| {
                (key.as_ptr() as usize)
                    .checked_sub(data.as_ptr() as usize)?
                    .checked_sub(1)
            });
        } else if key.is("usage") {
            usage = !value.is_null();
        } else if key.is("type") {
            // Anthropic's text, tool-input and thinking deltas; the Responses API's text,
            // refusal, function-argument and reasoning deltas.
            content |= matches!(
                value.raw(),
                br#""content_block_delta""#
                    | br#""response.output_text.delta""#
                    | br#""response.refusal.delta""#
                    | br#""response.function_call_arguments.delta""#
                    | br#""response.reasoning_summary_text.delta""#
                    | br#""response.reasoning_text.delta""#
            );
        }
    }
    if members.finish_document().is_err() {
        (Class::Other, None)
    } else if no_choices && usage {
        (Class::UsageOnly, None)
    } else if content {
        (Class::Content, rename)
    } else {
        (Class::Other, None)
    }
}

/// Whether any choice carries content: chat's `delta.content` / `reasoning_content` /
/// `reasoning` / `refusal` (non-empty) or `delta.tool_calls` (non-empty), or legacy
/// completions' `text`. With it, the raw key of the first delta's `reasoning` (newer vLLM's and
/// Ollama's name) when that delta has no `reasoning_content`.
fn choices_carry_content<'a>(choices: Value<'a>) -> (bool, Option<&'a [u8]>) {
    let Some(elements) = choices.elements() else {
        return (false, None);
    };
    let mut carries = false;
    for choice in elements {
        for member in choice.members().into_iter().flatten() {
            let Ok((key, value)) = member else { break };
            if key.is("text") && value.is_nonempty_str() {
                carries = true;
            }
            if !key.is("delta") {
                continue;
            }
            let (mut reasoning, mut has_reasoning_content) = (None, false);
            for field in value.members().into_iter().flatten() {
                let Ok((key, value)) = field else { break };
                let text = key.is("content")
                    || key.is("reasoning_content")
                    || key.is("reasoning")
                    || key.is("refusal");
                if (text && value.is_nonempty_str())
                    || (key.is("tool_calls") && value.is_nonempty_array())
                {
                    carries = true;
                }
                has_reasoning_content |= key.is("reasoning_content");
                // Only a plain key (no escapes) is renamed in place.
                if key.raw() == b"reasoning" && value.is_nonempty_str() {
                    reasoning = Some(key.raw());
                }
            }
            if !has_reasoning_content && reasoning.is_some() {
                return (true, reasoning);
            }
        }
    }
    (carries, None)
}

/// `"reasoning"` with its quotes, as a key renamed to [`REASONING_CONTENT_KEY`].
const REASONING_KEY: &[u8] = b"\"reasoning\"";
const REASONING_CONTENT_KEY: &[u8] = b"\"reasoning_content\"";

/// Append `event` to `out` with the key at `key_in_data` (an offset into `data`, the event's
/// data, which may be a slice of `event`) renamed to `reasoning_content`; unchanged when the
/// data is not a slice of the event (split over several `data:` lines) or the key is not there.
fn push_renamed(event: &[u8], data: &[u8], key_in_data: usize, out: &mut Vec<u8>) {
    let at = (data.as_ptr() as usize)
        .checked_sub(event.as_ptr() as usize)
        .filter(|start| start.saturating_add(data.len()) <= event.len())
        .and_then(|start| start.checked_add(key_in_data));
    match at.and_then(|at| Some((at, event.get(at..at.checked_add(REASONING_KEY.len())?)?))) {
        Some((at, key)) if key == REASONING_KEY => {
            out.extend_from_slice(event.get(..at).unwrap_or_default());
            out.extend_from_slice(REASONING_CONTENT_KEY);
            out.extend_from_slice(event.get(at + REASONING_KEY.len()..).unwrap_or_default());
        }
        _ => out.extend_from_slice(event),
    }
}

/// Passes an SSE stream through to a client that did not ask for usage, minus OpenAI's usage
/// chunk (which the gateway asked for on its own account, see
/// [`with_include_usage`](super::with_include_usage)). Every other event, `data: [DONE]`
/// included, comes out byte for byte and in order, however the stream was cut into reads, but
/// for one rename: a chunk whose delta carries reasoning as `reasoning` (newer vLLM, Ollama)
/// and not as `reasoning_content` (vLLM before, DeepSeek; what OpenAI-compatible clients read)
/// has that key renamed `reasoning_content`.
/// Events longer than [`USAGE_SCAN_BYTES_MAX`] pass unexamined. The other chunks keep their
/// `"usage": null`, which clients already accept.
///
/// Holds at most [`USAGE_SCAN_BYTES_MAX`] bytes (the start of an unfinished event), allocated
/// only while an event cut between reads is held, and freed once it is passed on: a stream
/// waiting for its next event holds nothing here. `feed` allocates only then, or when `out`
/// lacks room.
#[derive(Debug, Default)]
pub struct SseFilter {
    split: Splitter,
    buf: Vec<u8>,
    /// Joins multi-line `data:` fields (allocated only if one arrives).
    scratch: Vec<u8>,
    content_events: u64,
    /// The client asked for the usage chunk itself: it passes too.
    keep_usage: bool,
}

impl SseFilter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a new stream, keeping the buffers.
    pub fn reset(&mut self) {
        self.split = Splitter::default();
        self.buf.clear();
        self.content_events = 0;
        self.keep_usage = false;
    }

    /// Start a new stream whose usage chunk the client asked for itself: it passes like any
    /// other event (the rename and the counting still apply).
    pub fn reset_keeping_usage(&mut self) {
        self.reset();
        self.keep_usage = true;
    }

    /// Append to `out` the events `input` completes, except a usage-only chunk; hold the start
    /// of an unfinished event until its end arrives.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let (scratch, content_events) = (&mut self.scratch, &mut self.content_events);
        let keep_usage = self.keep_usage;
        self.split.feed(&mut self.buf, input, |piece| match piece {
            Piece::Event(event) => {
                let data = event_data(event, scratch, |_| {});
                let (class, rename) = data.map_or((Class::Other, None), classify);
                match (class, rename, data) {
                    (Class::UsageOnly, _, _) if keep_usage => out.extend_from_slice(event),
                    (Class::UsageOnly, _, _) => {}
                    (Class::Content, Some(key), Some(data)) => {
                        *content_events += 1;
                        push_renamed(event, data, key, out);
                    }
                    (Class::Content, _, _) => {
                        *content_events += 1;
                        out.extend_from_slice(event);
                    }
                    (Class::Other, _, _) => out.extend_from_slice(event),
                }
            }
            Piece::Unexamined(bytes) => out.extend_from_slice(bytes),
        });
        release_if_empty(&mut self.buf);
    }

    /// At the end of the upstream's stream: append whatever is held (an event whose blank line
    /// never came) unchanged, and start afresh.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.split.flush(&mut self.buf, |piece| match piece {
            Piece::Event(bytes) | Piece::Unexamined(bytes) => out.extend_from_slice(bytes),
        });
        self.content_events = 0;
    }

    /// Events so far that carried generated content (one per event, whatever its number of
    /// choices): OpenAI chat chunks with a non-empty `delta.content`, `reasoning_content`,
    /// `refusal` or `tool_calls`, completions chunks with a non-empty `text`, Anthropic
    /// `content_block_delta` events, and the Responses API's `response.output_text.delta`,
    /// `response.refusal.delta`, `response.function_call_arguments.delta`,
    /// `response.reasoning_summary_text.delta` and `response.reasoning_text.delta`. Each is about one token: a mid-stream estimate of the
    /// completion, until the upstream's usage settles it.
    pub fn content_events(&self) -> u64 {
        self.content_events
    }

    /// Append an SSE event carrying an OpenAI error object, then `data: [DONE]`, to cut a
    /// stream short (at a tenant's budget): the openai SDKs raise an `APIError` with this
    /// message when a stream event has an `error` key. The type is `insufficient_quota` (what
    /// OpenAI answers when an account's quota is spent) and the code `budget_exceeded`.
    pub fn error_event(message: &str, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data: {\"error\":{\"message\":");
        json::write_str(out, message);
        out.extend_from_slice(
            b",\"type\":\"insufficient_quota\",\"param\":null,\"code\":\"budget_exceeded\"}}\n\ndata: [DONE]\n\n",
        );
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    pub(crate) use crate::http::sse::tests::pieces;
    use proptest::prelude::*;

    /// An OpenAI chat stream with `include_usage`, as the API sends it.
    pub(crate) const OPENAI_STREAM: &str = concat!(
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"!\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21,\"prompt_tokens_details\":{\"cached_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
        "data: [DONE]\n\n",
    );

    /// An Anthropic Messages stream, as the API sends it.
    pub(crate) const ANTHROPIC_STREAM: &str = concat!(
        "event: message_start\n",
        "data: {\"type\": \"message_start\", \"message\": {\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-5-20250929\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {\"input_tokens\": 25, \"output_tokens\": 1}}}\n\n",
        "event: content_block_start\n",
        "data: {\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}\n\n",
        "event: ping\n",
        "data: {\"type\": \"ping\"}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"Hello\"}}\n\n",
        "event: content_block_delta\n",
        "data: {\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {\"type\": \"text_delta\", \"text\": \"!\"}}\n\n",
        "event: content_block_stop\n",
        "data: {\"type\": \"content_block_stop\", \"index\": 0}\n\n",
        "event: message_delta\n",
        "data: {\"type\": \"message_delta\", \"delta\": {\"stop_reason\": \"end_turn\", \"stop_sequence\":null}, \"usage\": {\"output_tokens\": 15}}\n\n",
        "event: message_stop\n",
        "data: {\"type\": \"message_stop\"}\n\n",
    );

    /// Feed `input` cut at `cuts` (offsets, any order, clamped); return the output and count.
    fn filter_in_pieces(input: &[u8], cuts: &[usize]) -> (Vec<u8>, u64) {
        let mut f = SseFilter::new();
        let mut out = Vec::new();
        for piece in pieces(input, cuts) {
            f.feed(piece, &mut out);
        }
        let count = f.content_events();
        f.finish(&mut out);
        (out, count)
    }

    fn without_usage_chunk(stream: &str) -> String {
        stream
            .split_inclusive("\n\n")
            .filter(|e| !e.contains("\"choices\":[],\"usage\":{"))
            .collect()
    }

    #[test]
    fn drops_only_the_usage_chunk() {
        let (out, count) = filter_in_pieces(OPENAI_STREAM.as_bytes(), &[]);
        let expected = without_usage_chunk(OPENAI_STREAM);
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
        assert!(expected.ends_with("data: [DONE]\n\n"));
        assert_eq!(expected.matches("\n\n").count(), 5);
        // "" does not count; "Hello" and "!" do.
        assert_eq!(count, 2);
    }

    #[test]
    fn every_split_point_gives_the_same_output() {
        let whole = filter_in_pieces(OPENAI_STREAM.as_bytes(), &[]);
        for a in 0..OPENAI_STREAM.len() {
            assert_eq!(
                filter_in_pieces(OPENAI_STREAM.as_bytes(), &[a]),
                whole,
                "cut at {a}"
            );
        }
        let bytes: Vec<usize> = (0..OPENAI_STREAM.len()).collect();
        assert_eq!(filter_in_pieces(OPENAI_STREAM.as_bytes(), &bytes), whole);
    }

    #[test]
    fn crlf_events_and_anthropic_streams() {
        let crlf = OPENAI_STREAM.replace('\n', "\r\n");
        let (out, count) = filter_in_pieces(crlf.as_bytes(), &[7, 300, 301, 302]);
        let expected: String = crlf
            .split_inclusive("\r\n\r\n")
            .filter(|e| !e.contains("\"choices\":[],"))
            .collect();
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
        assert_eq!(count, 2);
        // Nothing dropped from an Anthropic stream; its two text deltas counted.
        let (out, count) = filter_in_pieces(ANTHROPIC_STREAM.as_bytes(), &[100, 500]);
        assert_eq!(out, ANTHROPIC_STREAM.as_bytes());
        assert_eq!(count, 2);
    }

    #[test]
    fn counts_tool_calls_reasoning_and_completions_text() {
        let stream = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"a\"}}]}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"reasoning_content\":\"hm\"}}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"refusal\":\"no\"}}]}\n\n",
            "data: {\"choices\":[{\"text\":\" a\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"object\":\"text_completion\"}\n\n",
            "data: {\"choices\":[{\"text\":\"\",\"index\":0,\"finish_reason\":\"length\"}]}\n\n",
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":null,\"tool_calls\":[]}}]}\n\n",
            ": keep-alive comment\n\n",
        );
        let (out, count) = filter_in_pieces(stream.as_bytes(), &[]);
        assert_eq!(out, stream.as_bytes());
        assert_eq!(count, 4);
    }

    #[test]
    fn a_usage_chunk_the_client_asked_for_passes() {
        let mut f = SseFilter::new();
        f.reset_keeping_usage();
        let mut out = Vec::new();
        f.feed(OPENAI_STREAM.as_bytes(), &mut out);
        f.finish(&mut out);
        assert_eq!(out, OPENAI_STREAM.as_bytes());
        // reset() drops it again.
        f.reset();
        out.clear();
        f.feed(OPENAI_STREAM.as_bytes(), &mut out);
        assert_eq!(out, without_usage_chunk(OPENAI_STREAM).as_bytes());
    }

    #[test]
    fn reasoning_is_renamed_reasoning_content_for_openai_clients() {
        let stream = concat!(
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"Let me think.\"},\"finish_reason\":null}]}\n\n",
            // Both names: as it came.
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":\"a\",\"reasoning_content\":\"a\"}}]}\n\n",
            // Empty or null reasoning, or the name inside a string: as it came.
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"reasoning\":null,\"content\":\"\\\"reasoning\\\"\"}}]}\n\n",
            "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hi\"}}]}\n\n",
            "data: [DONE]\n\n",
        );
        let expected = stream.replacen(
            "{\"reasoning\":\"Let me think.\"}",
            "{\"reasoning_content\":\"Let me think.\"}",
            1,
        );
        for cuts in [&[][..], &[5, 60, 61, 200][..]] {
            let (out, count) = filter_in_pieces(stream.as_bytes(), cuts);
            assert_eq!(std::str::from_utf8(&out).expect("UTF-8"), expected);
            assert_eq!(count, 4);
        }
        // Over several data lines (the data is no slice of the event): as it came.
        let split = "data: {\"choices\":[{\"delta\":\ndata: {\"reasoning\":\"x\"}}]}\n\n";
        let (out, _) = filter_in_pieces(split.as_bytes(), &[]);
        assert_eq!(out, split.as_bytes());
    }

    #[test]
    fn keeps_events_that_only_look_like_the_usage_chunk() {
        let stream = concat!(
            // Choices not empty.
            "data: {\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":1}}\n\n",
            // Usage null.
            "data: {\"choices\":[],\"usage\":null}\n\n",
            // Not JSON.
            "data: {\"choices\":[],\"usage\":{}\n\n",
            // Nested, not top-level.
            "data: {\"x\":{\"choices\":[],\"usage\":{}}}\n\n",
            // Usage in a comment line, not data.
            ": {\"choices\":[],\"usage\":{}}\n\n",
        );
        let (out, _) = filter_in_pieces(stream.as_bytes(), &[]);
        assert_eq!(out, stream.as_bytes());
        // Multi-line data and a field without a space are still read as data.
        let split =
            "data:{\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":1}}\n\ndata: [DONE]\n\n";
        let (out, _) = filter_in_pieces(split.as_bytes(), &[3, 20]);
        assert_eq!(out, b"data: [DONE]\n\n");
    }

    #[test]
    fn responses_streams_pass_whole_and_their_deltas_count() {
        let stream = concat!(
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"delta\":\"Hi\"}\n\n",
            "event: response.reasoning_summary_text.delta\ndata: {\"type\":\"response.reasoning_summary_text.delta\",\"delta\":\"Hm\"}\n\n",
            "event: response.reasoning_text.delta\ndata: {\"type\":\"response.reasoning_text.delta\",\"delta\":\"Hm\"}\n\n",
            "event: response.refusal.delta\ndata: {\"type\":\"response.refusal.delta\",\"delta\":\"No\"}\n\n",
            "event: response.function_call_arguments.delta\ndata: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{}\"}\n\n",
            "event: response.output_text.done\ndata: {\"type\":\"response.output_text.done\",\"text\":\"Hi\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":{\"input_tokens\":1,\"output_tokens\":2}}}\n\n",
        );
        let (out, count) = filter_in_pieces(stream.as_bytes(), &[9, 200]);
        assert_eq!(out, stream.as_bytes(), "nothing taken out");
        assert_eq!(count, 5);
    }

    #[test]
    fn oversized_events_pass_unexamined() {
        // An event longer than the buffer: passed through whatever the cuts, never held whole.
        let big = format!(
            "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":1}},\"pad\":\"{}\"}}\n\n",
            "x".repeat(USAGE_SCAN_BYTES_MAX)
        );
        let stream = format!("{OPENAI_STREAM}{big}{OPENAI_STREAM}");
        let expected = format!(
            "{}{big}{}",
            without_usage_chunk(OPENAI_STREAM),
            without_usage_chunk(OPENAI_STREAM)
        );
        for step in [1000, 4096, 65_536, 70_000, stream.len()] {
            let cuts: Vec<usize> = (step..stream.len()).step_by(step).collect();
            let (out, count) = filter_in_pieces(stream.as_bytes(), &cuts);
            assert!(out == expected.as_bytes(), "step {step}");
            assert_eq!(count, 4);
        }
        // An event exactly at the limit is examined.
        let head = "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1},\"pad\":\"";
        let tail = "\"}\n\n";
        let pad = USAGE_SCAN_BYTES_MAX - head.len() - tail.len();
        let exact = format!("{head}{}{tail}", "x".repeat(pad));
        assert_eq!(exact.len(), USAGE_SCAN_BYTES_MAX);
        assert!(filter_in_pieces(exact.as_bytes(), &[10]).0.is_empty());
        let over = format!("{head}{}{tail}", "x".repeat(pad + 1));
        assert_eq!(filter_in_pieces(over.as_bytes(), &[10]).0, over.as_bytes());
    }

    #[test]
    fn unfinished_event_comes_out_at_finish() {
        let mut f = SseFilter::new();
        let mut out = Vec::new();
        f.feed(b"data: [DONE]\n\ndata: {\"partial\":", &mut out);
        assert_eq!(out, b"data: [DONE]\n\n");
        f.finish(&mut out);
        assert_eq!(out, b"data: [DONE]\n\ndata: {\"partial\":");
        // After finish (or reset) a new stream starts clean.
        out.clear();
        f.feed(b"\n\n", &mut out);
        assert_eq!(out, b"\n\n");
    }

    #[test]
    fn only_an_event_cut_between_reads_is_held_and_then_freed() {
        let mut f = SseFilter::new();
        let mut out = Vec::with_capacity(8 * OPENAI_STREAM.len());
        let out_ptr = out.as_ptr();
        // Whole events: nothing is copied, nothing held.
        f.feed(OPENAI_STREAM.as_bytes(), &mut out);
        assert_eq!(f.buf.capacity(), 0);
        // An event cut in two: its start is held until its end arrives, then freed.
        let (start, rest) = OPENAI_STREAM.as_bytes().split_at(50);
        f.reset();
        f.feed(start, &mut out);
        assert_eq!(f.buf.len(), 50);
        f.feed(rest, &mut out);
        assert_eq!(
            f.buf.capacity(),
            0,
            "a stream waiting after whole events holds nothing"
        );
        assert_eq!(out.as_ptr(), out_ptr, "out had room: no reallocation");
        let expected = without_usage_chunk(OPENAI_STREAM);
        assert_eq!(
            String::from_utf8_lossy(&out),
            format!("{expected}{expected}")
        );
    }

    #[test]
    fn error_event_is_an_openai_error_then_done() {
        let mut out = Vec::new();
        SseFilter::error_event("budget of \"team-a\" spent\n\u{1}é\\", &mut out);
        let text = String::from_utf8(out).expect("utf-8");
        let (event, done) = text.split_once("\n\n").expect("two events");
        assert_eq!(done, "data: [DONE]\n\n");
        let json = event.strip_prefix("data: ").expect("data line");
        let v: serde_json::Value = serde_json::from_str(json).expect("valid JSON");
        assert_eq!(
            v["error"]["message"],
            "budget of \"team-a\" spent\n\u{1}é\\"
        );
        assert_eq!(v["error"]["type"], "insufficient_quota");
        assert_eq!(v["error"]["code"], "budget_exceeded");
        assert!(v["error"]["param"].is_null());
        // And the filter passes it through untouched.
        let (out, _) = filter_in_pieces(text.as_bytes(), &[5]);
        assert_eq!(out, text.as_bytes());
    }

    /// Streams made of real event shapes, random content, both line ends, comments, blank
    /// lines, and a little noise.
    pub(crate) fn arb_stream() -> impl Strategy<Value = Vec<u8>> {
        arb_stream_terminated(0.9)
    }

    /// Like [`arb_stream`]; each event is followed by a blank line with probability `p`.
    pub(crate) fn arb_stream_terminated(p: f64) -> impl Strategy<Value = Vec<u8>> {
        let event = prop_oneof![
            ".{0,20}".prop_map(|c| format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":{}}}}}],\"usage\":null}}",
                serde_json::to_string(&c).unwrap_or_default()
            )),
            (any::<u32>(), any::<u32>()).prop_map(|(p, c)| format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":{p},\"completion_tokens\":{c}}}}}"
            )),
            any::<u32>().prop_map(|n| format!(
                "event: message_start\ndata: {{\"type\":\"message_start\",\"message\":{{\"usage\":{{\"input_tokens\":{n},\"output_tokens\":1}}}}}}"
            )),
            any::<u32>().prop_map(|n| format!(
                "event: message_delta\ndata: {{\"type\":\"message_delta\",\"usage\":{{\"output_tokens\":{n}}}}}"
            )),
            Just("data: [DONE]".to_owned()),
            Just(": ping".to_owned()),
            Just("data: {\"choices\":[],\ndata: \"usage\":{\"prompt_tokens\":3}}".to_owned()),
            "[a-z{}\\[\\] ]{0,12}".prop_map(|s| s),
        ];
        let crlf = any::<bool>();
        (
            prop::collection::vec((event, prop::bool::weighted(p)), 0..12),
            crlf,
        )
            .prop_map(|(events, crlf)| {
                let nl = if crlf { "\r\n" } else { "\n" };
                let mut s = String::new();
                for (e, terminated) in events {
                    s.push_str(&e.replace('\n', nl));
                    s.push_str(nl);
                    if terminated {
                        s.push_str(nl);
                    }
                }
                s.into_bytes()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// (a) The same output and count however the stream is cut into reads.
        #[test]
        fn split_independent(stream in arb_stream(), cuts in prop::collection::vec(any::<usize>(), 0..8)) {
            prop_assert_eq!(filter_in_pieces(&stream, &cuts), filter_in_pieces(&stream, &[]));
        }

        /// (a), and (c) no panic, on arbitrary bytes rich in line ends.
        #[test]
        fn split_independent_on_noise(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n\rdata: {}[]\",choices usage".to_vec()), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            prop_assert_eq!(filter_in_pieces(&stream, &cuts), filter_in_pieces(&stream, &[]));
        }

        /// Only usage-only chunks are removed: everything else comes out byte for byte.
        #[test]
        fn output_is_the_input_minus_usage_chunks(stream in arb_stream_terminated(1.0)) {
            let (out, _) = filter_in_pieces(&stream, &[]);
            let text = String::from_utf8(stream).unwrap_or_default();
            let nl = if text.contains("\r\n") { "\r\n\r\n" } else { "\n\n" };
            let expected: String = text
                .split_inclusive(nl)
                .filter(|e| {
                    !(e.starts_with("data: {\"choices\":[],") && e.contains("\"usage\":{"))
                })
                .collect();
            prop_assert_eq!(String::from_utf8(out).unwrap_or_default(), expected);
        }

        #[test]
        fn never_panics(stream in prop::collection::vec(any::<u8>(), 0..400), cuts in prop::collection::vec(any::<usize>(), 0..4)) {
            let _ = filter_in_pieces(&stream, &cuts);
        }
    }
}
