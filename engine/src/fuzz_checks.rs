//! The properties the fuzz targets check, one function per target, shared by `engine/fuzz`
//! (each `fuzz_targets/NAME.rs` calls [`NAME`](self)) and the corpus replay that `cargo test
//! --workspace` runs (`tests/tests/fuzz_corpus.rs` calls the same function on every file of
//! `engine/fuzz/corpus/NAME/`). Compiled only with the non-default `fuzzing` feature.
//!
//! Every function takes any bytes and panics (an `assert!`) exactly when an invariant breaks:
//! a fuzzer reports the panic as a crash, the replay as a failed test. Its `expect`s are
//! assertions too, each naming the invariant it holds (test code, never in a shard).

use std::net::IpAddr;
use std::sync::atomic::AtomicU64;
use std::sync::OnceLock;

use serde_json::Value;

use crate::config::Config;
use crate::control::message;
use crate::control::ring::{Consumer, Poll, RingView};
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::{request, response};
use crate::limits::{CONFIG_BYTES_MAX, HEADERS_ARRAY_LEN};
use crate::llm::{self, BodyKind, SseFilter, Usage, UsageScanner};
use crate::provider::anthropic::{StreamToChat, STREAM_EVENT_BYTES_MAX};
use crate::provider::bedrock;
use crate::provider::eventstream;
use crate::provider::gemini::StreamToChat as GeminiToChat;
use crate::provider::messages::StreamToMessages;
use crate::provider::responses;
use crate::provider::sse::{EventReader, EVENT_NAME_BYTES_MAX};
use crate::provider::StreamTranslator;
use crate::template::{self, RawTemplate, Template, TemplateBody};

/// A target's check: returns, or panics on a broken invariant.
pub type Check = fn(&[u8]);

/// Every target: its name (a directory under `engine/fuzz/corpus/`, a `[[bin]]` of the fuzz
/// crate) and its check.
pub const TARGETS: &[(&str, Check)] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("config_message", config_message),
    ("config_toml", config_toml),
    ("ring_frames", ring_frames),
    ("llm", llm),
    ("sse", sse),
    ("responses_stream", responses_stream),
    ("template", template),
    ("exchange", exchange),
    ("bedrock_stream", bedrock_stream),
    ("gemini_stream", gemini_stream),
];

/// Any bytes as the world around one request's attempt loop (`crate::exchange::sim`): every
/// reservation settled exactly once, every upstream slot released, retries within the budget.
pub fn exchange(data: &[u8]) {
    crate::exchange::sim::check(data);
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Any bytes as a request head: parse, and when it parses, write the forwarded head.
pub fn request_head(data: &[u8]) {
    let limits = request::HeadLimits {
        header_bytes_max: 16384,
        headers_count_max: 100,
        body_bytes_max: 1 << 20,
    };
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    if let Ok(Some(req)) = request::parse(data, &mut headers, &limits) {
        assert!(req.head.head_len <= data.len());
        let mut out = Vec::new();
        req.write_upstream_head(b"up:80", IpAddr::from([127, 0, 0, 1]), &mut out);
    }
}

/// Any bytes as an upstream response head: parse, choose framing, write the client head.
pub fn response_head(data: &[u8]) {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    if let Ok(Some((head, resp))) = response::parse(data, &mut headers, false) {
        for minor in [0, 1] {
            let framing = response::client_framing(head.body, minor);
            let mut out = Vec::new();
            response::write_client_head(&head, &resp, framing, minor, true, None, &mut out);
        }
    }
}

/// Any bytes as a chunked body, fed in two pieces (cut where the first byte says): the decoder
/// never panics, never reports data outside what it consumed, and never consumes more than it
/// was given.
pub fn chunked(data: &[u8]) {
    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let mut d = ChunkedDecoder::new();
    let mut pending: Vec<u8> = Vec::new();
    for piece in [&data[..split], &data[split..]] {
        pending.extend_from_slice(piece);
        loop {
            let Ok((n, step)) = d.decode(&pending) else {
                return;
            };
            assert!(n <= pending.len());
            if let Step::Data(r) = &step {
                assert!(r.end <= n);
            }
            pending.drain(..n);
            if !matches!(step, Step::Data(_)) {
                break;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Config and the control plane

/// Any bytes as a config message body: the decoder never panics; whatever it accepts is
/// validated from its own table (never the system resolver nor the disk), or refused with
/// errors.
pub fn config_message(data: &[u8]) {
    if let Ok(m) = message::decode(data) {
        let _ = Config::from_message(&m);
    }
}

/// Any UTF-8 text as a config file: [`Config::from_toml_without_secrets`] (what
/// `shardgate-ctl check`/`apply` run) never panics. When it validates, the config message
/// carries it to a shard intact: [`message::encode`] refuses only text over
/// [`CONFIG_BYTES_MAX`], [`message::decode`] gives back the text, and
/// [`Config::from_message`] validates it from the message's table of resolved addresses and
/// files (no resolver, no disk) into the same config, unless an `api_key_env` variable is
/// missing from this process's environment (a shard reads its secrets, ctl does not).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::from_toml_without_secrets(text) else {
        return;
    };
    let body = match message::encode(text, &config) {
        Ok(body) => body,
        Err(e) => {
            assert!(text.len() > CONFIG_BYTES_MAX, "encode refused: {e}");
            return;
        }
    };
    let m = message::decode(&body).expect("an encoded config decodes");
    assert_eq!(m.toml, text);
    assert_eq!(
        message::encode(&m.toml, &config).as_deref(),
        Ok(&body[..]),
        "encoding is deterministic"
    );
    match Config::from_message(&m) {
        Ok(again) => assert_eq!(
            without_secrets(&config),
            without_secrets(&again),
            "the config a shard validates differs from ctl's"
        ),
        Err(errors) => assert!(
            errors.0.iter().all(|e| e.field.ends_with(".api_key_env")),
            "a config ctl validated is refused from its message: {errors}"
        ),
    }
}

/// `config` as text, with the upstreams' credentials (read by a shard, not by ctl) left out.
fn without_secrets(config: &Config) -> String {
    let mut c = config.clone();
    for u in &mut c.upstreams {
        u.credential = None;
    }
    format!("{c:?}")
}

/// Any bytes as the words of a config ring (a scribbled-on or truncated shared region): the
/// first two words are the head and the reader's cursor (each modulo 64), the next 64 fill four
/// slots of 16 words. A reader never panics, terminates, and never delivers (or allocates for)
/// a message larger than the ring allows.
pub fn ring_frames(data: &[u8]) {
    const SLOTS: usize = 4;
    const SLOT_WORDS: usize = 16;
    let mut words = data.chunks(8).map(|c| {
        let mut b = [0u8; 8];
        b[..c.len()].copy_from_slice(c);
        u64::from_le_bytes(b)
    });
    let head = AtomicU64::new(words.next().unwrap_or(0) % 64);
    let start = words.next().unwrap_or(0) % 64;
    let slots: Vec<AtomicU64> = (0..SLOTS * SLOT_WORDS)
        .map(|_| AtomicU64::new(words.next().unwrap_or(0)))
        .collect();
    let ring = RingView::new(&head, &slots, SLOT_WORDS);
    let mut c = Consumer::at(start);
    for _ in 0..4 * SLOTS {
        match c.poll(&ring) {
            Poll::Idle => break,
            Poll::Message { body, .. } => assert!(body.len() <= ring.message_bytes_max()),
            Poll::Dropped(_) => {}
        }
    }
    if let Some((_, body)) = ring.latest_message() {
        assert!(body.len() <= ring.message_bytes_max());
    }
}

/// The bytes [`ring_frames`] reads for a ring of four 16-word slots into which `bodies` were
/// published (versions 1, 2, ...), with the reader's cursor at `start`: for seed files.
pub fn ring_frames_input(bodies: &[&[u8]], start: u64) -> Vec<u8> {
    let head = AtomicU64::new(0);
    let slots: Vec<AtomicU64> = (0..64).map(|_| AtomicU64::new(0)).collect();
    let ring = RingView::new(&head, &slots, 16);
    for (version, body) in (1u64..).zip(bodies) {
        ring.publish(version, body).expect("the body fits the ring");
    }
    let mut out = Vec::with_capacity(8 * (2 + slots.len()));
    out.extend_from_slice(&ring.head().to_le_bytes());
    out.extend_from_slice(&start.to_le_bytes());
    for w in &slots {
        out.extend_from_slice(&w.load(std::sync::atomic::Ordering::Relaxed).to_le_bytes());
    }
    out
}

// ---------------------------------------------------------------------------------------------
// LLM bodies

/// Any bytes as an LLM request body and as a response body: `inspect` and `with_include_usage`
/// never panic and a rewrite always reads back with `include_usage`; the usage scanner (both
/// kinds) and the SSE filter give the same answer and output when the bytes arrive in two
/// pieces as in one.
pub fn llm(data: &[u8]) {
    let before = llm::inspect(data);
    let mut out = Vec::new();
    if let Ok(true) = llm::with_include_usage(data, &mut out) {
        let before = before.expect("a rewritten body was readable");
        let after = llm::inspect(&out).expect("the rewrite is readable");
        assert!(after.include_usage && after.stream);
        assert_eq!(after.model(), before.model());
        assert_eq!(after.max_tokens, before.max_tokens);
        assert_eq!(after.has_variables, before.has_variables);
    } else {
        assert!(out.is_empty());
    }

    let split = data.first().map_or(0, |b| usize::from(*b)).min(data.len());
    let (a, b) = data.split_at(split);
    let mut whole = UsageScanner::new();
    let mut pieces = UsageScanner::new();
    for kind in [BodyKind::Json, BodyKind::Sse] {
        whole.reset(kind);
        whole.feed(data);
        pieces.reset(kind);
        pieces.feed(a);
        pieces.feed(b);
        assert_eq!(whole.usage(), pieces.usage());
    }

    let (mut f, mut g) = (SseFilter::new(), SseFilter::new());
    let (mut out_whole, mut out_pieces) = (Vec::new(), Vec::new());
    f.feed(data, &mut out_whole);
    g.feed(a, &mut out_pieces);
    g.feed(b, &mut out_pieces);
    assert_eq!(f.content_events(), g.content_events());
    f.finish(&mut out_whole);
    g.finish(&mut out_pieces);
    assert_eq!(out_whole, out_pieces);
    assert!(out_whole.len() <= data.len());
}

/// Any bytes as a request body filled by a fixed template (both modes): `fill`,
/// `strip_variables` and `selector` never panic; an `Ok` fill is valid JSON to our validator,
/// and to serde_json whenever the input was; an error leaves `out` alone.
pub fn template(data: &[u8]) {
    let input_parses = serde_json::from_slice::<Value>(data).is_ok();
    for t in templates() {
        let mut out = b"x".to_vec();
        match template::fill(t, data, &mut out) {
            Ok(()) => {
                let filled = out.get(1..).unwrap_or_default();
                assert!(matches!(
                    llm::inspect(filled),
                    Ok(_) | Err(llm::BodyError::BadField(_))
                ));
                if input_parses {
                    let v: Value = serde_json::from_slice(filled).expect("filled body parses");
                    let o = v.as_object().expect("an object");
                    assert!(!o.contains_key("variables") && !o.contains_key("template"));
                    assert!(o.get("messages").is_some_and(Value::is_array));
                }
            }
            Err(_) => assert_eq!(out, b"x"),
        }
    }
    let mut out = Vec::new();
    match template::strip_variables(data, &mut out) {
        Ok(true) if input_parses => {
            let v: Value = serde_json::from_slice(&out).expect("stripped body parses");
            assert!(v.get("variables").is_none());
        }
        Ok(_) | Err(_) => {}
    }
    if let Ok(b) = TemplateBody::read(data) {
        let _ = b.selector();
    }
}

fn templates() -> &'static [Template] {
    static T: OnceLock<Vec<Template>> = OnceLock::new();
    T.get_or_init(|| {
        let raw: Vec<RawTemplate> = ["prepend", "replace"]
            .iter()
            .map(|mode| {
                let text = format!(
                    r#"{{"name":"{mode}","mode":"{mode}","defaults":{{"B":"b"}},"messages":[
                        {{"role":"system","content":"Say \"{{{{A}}}}\" \\ {{{{{{{{x}}}} {{{{B}}}}"}},
                        {{"role":"user","content":"{{{{A}}}}</script>{{{{ B }}}}"}}]}}"#
                );
                serde_json::from_str(&text).expect("template json")
            })
            .collect();
        let list = template::validate(raw, |f, r| panic!("{f}: {r}"));
        assert_eq!(list.len(), 2);
        list
    })
}

// ---------------------------------------------------------------------------------------------
// Server-sent events

/// Any bytes as an upstream's event stream, fed whole and in three pieces (cut where the first
/// and last bytes say), to every SSE parser:
///
/// - the usage scanner and [`SseFilter`]: the same usage, content count and output however the
///   stream was cut; the filter only removes bytes, and filtering its output again changes
///   nothing;
/// - the translators' event reader: the same events however cut, none over its limits, and
///   `finish` hands a last event out once;
/// - [`StreamToChat`] (Anthropic to OpenAI, with and without the usage chunk) and
///   [`StreamToMessages`] (OpenAI to Anthropic): the same output however cut; it always ends
///   (`data: [DONE]`; `message_stop` or `error`), once, and nothing follows; every `data:`
///   line but `[DONE]` is a JSON object, and an Anthropic event's name is its data's `type`;
/// - together: the filter turns the OpenAI stream with the usage chunk into the one without it,
///   byte for byte, and the scanner reads the usage the translator reported; each translator's
///   output, fed to the other, ends that one too and carries the same text (and the usage).
pub fn sse(data: &[u8]) {
    let n = data.len();
    let (whole, cut) = whole_and_cut(data);
    let (whole, cut): (&[&[u8]], &[&[u8]]) = (&whole, &cut);

    // The scanner and the filter.
    for kind in [BodyKind::Sse, BodyKind::Json] {
        assert_eq!(scan(whole, kind), scan(cut, kind));
    }
    let filtered = filter(whole);
    assert_eq!(filter(cut), filtered);
    assert!(filtered.0.len() <= n);
    assert_eq!(
        filter(&[&filtered.0]).0,
        filtered.0,
        "filtering is idempotent"
    );

    // The translators' event reader.
    assert_eq!(read_events(cut), read_events(whole));

    // Anthropic to OpenAI. The counts the translation carried over (its cached-token detail is
    // read too, and priced apart; the totals are what must agree).
    let (with_usage, usage, usage_chunk) = check_to_chat(
        whole,
        cut,
        to_chat,
        |u| (u.prompt_tokens, u.completion_tokens),
        |u| u,
    );
    // ... and on to Anthropic again.
    if with_usage.len() <= STREAM_EVENT_BYTES_MAX {
        let mut back = StreamToMessages::new("fuzz-model");
        let mut out = Vec::new();
        back.feed(&with_usage, &mut out);
        assert!(back.is_done(), "[DONE] or an error ends the stream");
        check_messages_output(&out);
        assert_eq!(text_of_messages(&out), text_of_chat(&with_usage));
        if usage_chunk {
            assert_eq!(back.usage(), Some(usage.unwrap_or_default()));
        }
    }

    // OpenAI to Anthropic.
    let (messages, usage) = to_messages(whole);
    assert_eq!(to_messages(cut), (messages.clone(), usage));
    // ... and on to OpenAI again.
    if messages.len() <= STREAM_EVENT_BYTES_MAX {
        let mut back = StreamToChat::new("chatcmpl-fuzz", "fuzz-model", 0, true);
        let mut out = Vec::new();
        back.feed(&messages, &mut out);
        assert!(back.is_done(), "message_stop or error ends the stream");
        check_chat_output(&out);
        assert_eq!(text_of_chat(&out), text_of_messages(&messages));
        if let (Some((p, c)), true) = (usage, messages.ends_with(MESSAGE_STOP)) {
            // Anthropic's input_tokens leave the cached ones out: their sum is the prompt, or
            // more when an upstream claims more cached tokens than prompt tokens.
            let (p2, c2) = back.usage().expect("message_delta carried the usage");
            assert!(
                p2 >= p && c2 == c,
                "usage {:?} came back {:?}",
                (p, c),
                (p2, c2)
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Bedrock's binary event stream

/// Any bytes through [`bedrock::StreamToChat`], twice: as the event-stream body itself (random
/// bytes rarely pass a CRC: this exercises the framing errors), and as lines `NAME JSON`, each
/// framed by [`eventstream::encode_event`] (`!NAME` an exception) before it is fed (this
/// exercises the translation). Each time, whole and in three pieces (cut where the first and
/// last bytes say), with and without the usage chunk:
///
/// - never a panic; the same output and usage however the body was cut;
/// - the output always ends with one `data: [DONE]`, nothing follows it, and every other
///   `data:` line is a JSON object;
/// - the SSE filter turns the output with the usage chunk into the one without it, byte for
///   byte, and the usage scanner reads from it the usage the translator reported.
pub fn bedrock_stream(data: &[u8]) {
    let mut framed = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let (name, payload) = match line.iter().position(|b| *b == b' ') {
            Some(at) => (&line[..at], &line[at + 1..]),
            None => (line, &b""[..]),
        };
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        // A name the encoder refuses (empty, too long) is left out.
        let _ = match name.strip_prefix('!') {
            Some(exception) => eventstream::encode_exception(exception, payload, &mut framed),
            None => eventstream::encode_event(name, payload, &mut framed),
        };
    }
    for body in [data, &framed[..]] {
        let (whole, cut) = whole_and_cut(body);
        check_to_chat(
            &whole,
            &cut,
            bedrock_to_chat,
            |u| (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
            |u| (u.prompt_tokens, u.completion_tokens, u.cached_tokens),
        );
    }
}

fn bedrock_to_chat(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Option<Usage>) {
    let mut more = Vec::new();
    eventstream::encode_event("messageStop", br#"{"stopReason":"end_turn"}"#, &mut more)
        .expect("encodes");
    drive(
        bedrock::StreamToChat::new("chatcmpl-fuzz", "fuzz-model", 0, include_usage),
        pieces,
        check_chat_output,
        &more,
    )
}

/// Any bytes as a Responses API event stream, whole and cut in three, through the Responses
/// translator ([`responses::StreamToChat`]): never a panic; the same output and usage however
/// cut, with and without the usage chunk; the output is OpenAI's stream (every `data:` line a
/// JSON object but the one `[DONE]`, last, and nothing after it); the SSE filter removes exactly
/// the usage chunk, and the usage scanner reads from it the usage the translator reported.
pub fn responses_stream(data: &[u8]) {
    let (whole, cut) = whole_and_cut(data);
    let translate = |pieces: &[&[u8]], include_usage: bool| {
        drive(
            responses::StreamToChat::new("chatcmpl-fuzz", "fuzz-model", 0, include_usage),
            pieces,
            check_chat_output,
            b"data: {\"type\":\"response.completed\",\"response\":{}}\n\n",
        )
    };
    check_to_chat(&whole, &cut, translate, |u| u, |u| u);
}

/// Any bytes as a Gemini event stream (`streamGenerateContent?alt=sse`), whole and cut in
/// three, through `provider::gemini::StreamToChat`: never a panic, output independent of the
/// cuts, every `data:` line it writes a JSON object but one `[DONE]`, last, and nothing after
/// it; the usage chunk, when written, says what the translator reports to the engine.
pub fn gemini_stream(data: &[u8]) {
    let (whole, cut) = whole_and_cut(data);
    check_to_chat(
        &whole,
        &cut,
        gemini_to_chat,
        |u| (u.prompt_tokens, u.completion_tokens),
        |u| (u.prompt_tokens, u.completion_tokens),
    );
}

fn gemini_to_chat(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Option<Usage>) {
    drive(
        GeminiToChat::new("chatcmpl-fuzz", "fuzz-model", 1_700_000_000, include_usage),
        pieces,
        check_chat_output,
        b"data: {\"candidates\":[{\"finishReason\":\"STOP\"}]}\n\n",
    )
}

/// `data` whole, and cut in three where its first and last bytes say.
fn whole_and_cut(data: &[u8]) -> ([&[u8]; 1], [&[u8]; 3]) {
    let n = data.len();
    let c1 = n * usize::from(data.first().copied().unwrap_or(0)) / 255;
    let c2 = c1 + (n - c1) * usize::from(data.last().copied().unwrap_or(0)) / 255;
    ([data], [&data[..c1], &data[c1..c2], &data[c2..]])
}

/// Feed `pieces` to `t` and finish: the stream has ended and its output passes `check`; then
/// feed `more` (what would end the stream) and finish again: nothing follows the end.
fn drive<T: StreamTranslator>(
    mut t: T,
    pieces: &[&[u8]],
    check: fn(&[u8]),
    more: &[u8],
) -> (Vec<u8>, Option<T::Usage>) {
    let mut out = Vec::new();
    for p in pieces {
        t.feed(p, &mut out);
    }
    t.finish(&mut out);
    assert!(t.is_done());
    check(&out);
    let end = out.len();
    t.feed(more, &mut out);
    t.finish(&mut out);
    assert_eq!(out.len(), end, "nothing after the end");
    (out, t.usage())
}

/// What every translator to OpenAI chat (`translate(pieces, include_usage)`) holds on a stream
/// `whole` and `cut`: the same output and usage however cut, with and without the usage chunk;
/// the SSE filter removes exactly the usage chunk; and when there is one, the usage scanner
/// reads from it the counts the translator reported (as far as `scanned` and `reported` keep
/// them). Returns the output with the usage chunk, the usage reported, and whether it has the
/// usage chunk.
fn check_to_chat<U, K: PartialEq + std::fmt::Debug>(
    whole: &[&[u8]],
    cut: &[&[u8]],
    translate: impl Fn(&[&[u8]], bool) -> (Vec<u8>, Option<U>),
    scanned: impl Fn(Usage) -> K,
    reported: impl Fn(U) -> K,
) -> (Vec<u8>, Option<U>, bool)
where
    U: Copy + Default + PartialEq + std::fmt::Debug,
{
    for include_usage in [false, true] {
        assert_eq!(
            translate(cut, include_usage),
            translate(whole, include_usage),
            "include_usage {include_usage}"
        );
    }
    let (plain, _) = translate(whole, false);
    let (with_usage, usage) = translate(whole, true);
    assert_eq!(
        filter(&[&with_usage]).0,
        plain,
        "the filter removes exactly the usage chunk"
    );
    let usage_chunk = with_usage.len() != plain.len();
    if usage_chunk {
        let got = scan(&[&with_usage], BodyKind::Sse).map(&scanned);
        assert_eq!(got, Some(reported(usage.unwrap_or_default())));
    }
    (with_usage, usage, usage_chunk)
}

const MESSAGE_STOP: &[u8] = b"event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

fn scan(pieces: &[&[u8]], kind: BodyKind) -> Option<Usage> {
    let mut s = UsageScanner::new();
    s.reset(kind);
    for p in pieces {
        s.feed(p);
    }
    s.usage()
}

/// The filter's output and content-event count.
fn filter(pieces: &[&[u8]]) -> (Vec<u8>, u64) {
    let mut f = SseFilter::new();
    let mut out = Vec::new();
    for p in pieces {
        f.feed(p, &mut out);
    }
    let count = f.content_events();
    f.finish(&mut out);
    (out, count)
}

type OwnedEvent = (Vec<u8>, Vec<u8>);

/// The events as `(name, data)`.
fn read_events(pieces: &[&[u8]]) -> Vec<OwnedEvent> {
    let mut reader = EventReader::new();
    let mut events = Vec::new();
    let mut keep = |name: &[u8], data: &[u8]| {
        assert!(name.len() <= EVENT_NAME_BYTES_MAX);
        assert!(data.len() <= STREAM_EVENT_BYTES_MAX);
        events.push((name.to_vec(), data.to_vec()));
    };
    for p in pieces {
        reader.feed(p, |e| keep(e.name, e.data));
    }
    reader.finish(|e| keep(e.name, e.data));
    let mut again = 0;
    reader.finish(|_| again += 1);
    assert_eq!(again, 0, "finish hands an event out once");
    events
}

fn to_chat(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Option<(u64, u64)>) {
    drive(
        StreamToChat::new("chatcmpl-fuzz", "fuzz-model", 1_700_000_000, include_usage),
        pieces,
        check_chat_output,
        b"data: {\"type\":\"message_stop\"}\n\n",
    )
}

fn to_messages(pieces: &[&[u8]]) -> (Vec<u8>, Option<(u64, u64)>) {
    drive(
        StreamToMessages::new("fuzz-model"),
        pieces,
        check_messages_output,
        b"data: [DONE]\n\n",
    )
}

/// An OpenAI stream as written by [`StreamToChat`]: `data:` events only, each a JSON object,
/// and one `[DONE]`, last.
fn check_chat_output(out: &[u8]) {
    let events = read_events(&[out]);
    let (last, rest) = events.split_last().expect("at least [DONE]");
    assert_eq!(last, &(Vec::new(), b"[DONE]".to_vec()));
    assert!(out.ends_with(b"data: [DONE]\n\n"));
    for (name, data) in rest {
        assert!(name.is_empty());
        let v: Value = serde_json::from_slice(data).expect("each data line is JSON");
        assert!(v.is_object());
    }
    for line in out.split(|b| *b == b'\n') {
        assert!(line.is_empty() || line.starts_with(b"data: "), "{line:?}");
    }
}

/// An Anthropic stream as written by [`StreamToMessages`]: `event: NAME` then `data: JSON`
/// with NAME its `type`, ending with one `message_stop` or `error`.
fn check_messages_output(out: &[u8]) {
    let events = read_events(&[out]);
    let names: Vec<&[u8]> = events.iter().map(|(n, _)| n.as_slice()).collect();
    let ends = names
        .iter()
        .filter(|n| matches!(**n, b"message_stop" | b"error"))
        .count();
    assert_eq!(ends, 1, "one end");
    assert!(matches!(names.last(), Some(&(b"message_stop" | b"error"))));
    for (name, data) in &events {
        let v: Value = serde_json::from_slice(data).expect("each data line is JSON");
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        assert_eq!(kind.as_bytes(), name.as_slice());
    }
    for line in out.split(|b| *b == b'\n') {
        assert!(
            line.is_empty() || line.starts_with(b"data: ") || line.starts_with(b"event: "),
            "{line:?}"
        );
    }
}

/// The text an OpenAI stream carries (`choices[0].delta.content`).
fn text_of_chat(out: &[u8]) -> String {
    let mut text = String::new();
    for (_, data) in read_events(&[out]) {
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        let content = v
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("delta"))
            .and_then(|d| d.get("content"))
            .and_then(Value::as_str);
        text.push_str(content.unwrap_or_default());
    }
    text
}

/// The text an Anthropic stream carries (`text_delta`s).
fn text_of_messages(out: &[u8]) -> String {
    let mut text = String::new();
    for (_, data) in read_events(&[out]) {
        let Ok(v) = serde_json::from_slice::<Value>(&data) else {
            continue;
        };
        if v.get("type").and_then(Value::as_str) == Some("content_block_delta") {
            let delta = v.get("delta");
            if delta.and_then(|d| d.get("type")).and_then(Value::as_str) == Some("text_delta") {
                text.push_str(
                    delta
                        .and_then(|d| d.get("text"))
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                );
            }
        }
    }
    text
}
