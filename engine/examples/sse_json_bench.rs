//! Micro-benchmark of the SSE splitter and the JSON string writer on their paths: the SSE
//! filter and the usage scanner over an OpenAI stream (the relay), the stream translators
//! (both ways), the budget-cut error event and the access log line (the writer), and a
//! template fill (the JSON walk and the writer on an escaped value). Streams are fed in reads of
//! 1,460 bytes (one TCP segment), as a relay sees them.
//!
//! Run: `nice cargo run --release -p shardgate-engine --example sse_json_bench [FILTER]` (only
//! the lines whose name contains FILTER).
#![allow(clippy::cast_possible_truncation, reason = "small benchmark counts")]

mod common;

use common::time;
use std::hint::black_box;
use std::net::SocketAddr;

use shardgate_engine::accesslog::{self, Record};
use shardgate_engine::llm::{BodyKind, SseFilter, UsageScanner};
use shardgate_engine::provider::anthropic::StreamToChat;
use shardgate_engine::provider::messages::StreamToMessages;
use shardgate_engine::template::{self, RawTemplate};

const READ: usize = 1460;

/// `n` OpenAI chunks with a little text each, the usage chunk and `[DONE]`.
fn openai_stream(n: usize) -> Vec<u8> {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" word{i}\"}},\"logprobs\":null,\"finish_reason\":null}}],\"usage\":null}}\n\n"
        ));
    }
    s.push_str("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n");
    s.push_str("data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":12,\"total_tokens\":21}}\n\n");
    s.push_str("data: [DONE]\n\n");
    s.into_bytes()
}

/// An Anthropic Messages stream with `n` text deltas.
fn anthropic_stream(n: usize) -> Vec<u8> {
    let mut s = String::from(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    );
    for i in 0..n {
        s.push_str(&format!(
            "event: content_block_delta\ndata: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\" \\\"word\\\" {i}\\n\"}}}}\n\n"
        ));
    }
    s.push_str("event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n");
    s.into_bytes()
}

fn main() {
    let openai = openai_stream(400);
    let anthropic = anthropic_stream(400);
    let iters = 2_000;

    let mut filter = SseFilter::new();
    let mut out = Vec::with_capacity(2 * openai.len());
    time("SseFilter::feed", openai.len(), iters, || {
        filter.reset();
        out.clear();
        for read in black_box(&openai).chunks(READ) {
            filter.feed(read, &mut out);
        }
        filter.finish(&mut out);
        out.len()
    });

    let mut scanner = UsageScanner::new();
    time("UsageScanner::feed (SSE)", openai.len(), iters, || {
        scanner.reset(BodyKind::Sse);
        for read in black_box(&openai).chunks(READ) {
            scanner.feed(read);
        }
        scanner.usage().map_or(0, |u| u.completion_tokens as usize)
    });

    let mut out = Vec::with_capacity(2 * anthropic.len());
    time("StreamToChat::feed", anthropic.len(), iters / 4, || {
        let mut t = StreamToChat::new("chatcmpl-1", "gpt-4o", 1_700_000_000, true);
        out.clear();
        for read in black_box(&anthropic).chunks(READ) {
            t.feed(read, &mut out);
        }
        t.finish(&mut out);
        out.len()
    });

    let mut out = Vec::with_capacity(2 * openai.len());
    time("StreamToMessages::feed", openai.len(), iters / 4, || {
        let mut t = StreamToMessages::new("claude-sonnet-4-5");
        out.clear();
        for read in black_box(&openai).chunks(READ) {
            t.feed(read, &mut out);
        }
        t.finish(&mut out);
        out.len()
    });

    let plain = "the tenant's token budget is exhausted; the answer was cut ".repeat(16);
    let mixed = "a \"quoted\" line\twith tabs,\nnewlines, \\ and é ü 中文 text ".repeat(16);
    let mut out = Vec::with_capacity(4 * mixed.len());
    for (name, message) in [
        ("SseFilter::error_event (plain)", &plain),
        ("SseFilter::error_event (escapes)", &mixed),
    ] {
        time(name, message.len(), iters * 50, || {
            out.clear();
            SseFilter::error_event(black_box(message), &mut out);
            out.len()
        });
    }

    let client: SocketAddr = "127.0.0.1:5555".parse().expect("address");
    let mut r = Record::new(1_700_000_000_123, 0, client);
    r.set_method("POST");
    r.set_path("/v1/chat/completions/with/a/longer/path/\"and\"/a/quote");
    let mut out = Vec::with_capacity(4096);
    time("accesslog::write_json", 200, iters * 50, || {
        out.clear();
        accesslog::write_json(black_box(&r), &mut out);
        out.len()
    });

    #[derive(serde::Deserialize)]
    struct Doc {
        templates: Vec<RawTemplate>,
    }
    let doc: Doc = toml::from_str(
        "[[templates]]\nname = \"t\"\nmessages = [{ role = \"system\", content = \"Answer as {{Persona}}. {{Query}}\" }]\n",
    )
    .expect("toml");
    let t = template::validate(doc.templates, |f, r| panic!("{f}: {r}"));
    let query = "Please \\\"reply\\\" in a friendly manner.\\nThank you \\u00e9. ".repeat(12);
    let body = format!(
        "{{\"model\":\"gpt-4o\",\"messages\":[{}],\"variables\":{{\"Persona\":\"a pirate\",\"Query\":\"{query}\"}},\"max_tokens\":256,\"stream\":true}}",
        (0..8)
            .map(|i| format!("{{\"role\":\"user\",\"content\":\"Message {i}: please reply in a friendly manner, and quote \\\"this\\\" exactly.\"}}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let mut out = Vec::with_capacity(4 * body.len());
    time("template::fill", body.len(), iters * 5, || {
        out.clear();
        template::fill(&t[0], black_box(body.as_bytes()), &mut out).expect("filled");
        out.len()
    });
}
