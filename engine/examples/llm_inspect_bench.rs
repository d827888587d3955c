//! Micro-benchmark behind docs/decisions/0006: reading `model`, `max_tokens` and `stream` from
//! a chat request body with `shardgate_engine::llm::inspect` (a strict one-pass scanner that
//! also validates the whole body and refuses duplicate top-level keys) against sonic-rs
//! (`sonic_rs::get` once per field, and `get_many` with a pointer tree; neither validates the
//! rest of the body nor sees a later duplicate key).
//!
//! Run: `cargo run --release -p shardgate-engine --example llm_inspect_bench`
#![allow(clippy::cast_possible_truncation, reason = "small benchmark counts")]

mod common;

use common::time;
use std::hint::black_box;

fn body(messages: usize) -> String {
    let mut m = String::new();
    for i in 0..messages {
        if i > 0 {
            m.push(',');
        }
        m.push_str(&format!(
            r#"{{"role":"user","content":"Message {i}: please reply in a friendly manner, and quote \"this\" exactly."}}"#
        ));
    }
    format!(
        r#"{{"model":"gpt-4o","messages":[{m}],"max_tokens":256,"stream":true,"temperature":0.2}}"#
    )
}

fn main() {
    let tree = {
        let mut t = sonic_rs::PointerTree::new();
        t.add_path(["model"]);
        t.add_path(["max_tokens"]);
        t.add_path(["stream"]);
        t
    };
    // About 1 KB, 32 KB and 256 KB (each message is ~100 bytes).
    for messages in [9, 320, 2600] {
        let b = body(messages);
        let bytes = b.as_bytes();
        let iters = (20_000_000 / bytes.len()).max(200) as u32;
        time("llm::inspect", bytes.len(), iters, || {
            let i = shardgate_engine::llm::inspect(black_box(bytes)).expect("valid");
            i.model().map_or(0, str::len)
                + usize::from(i.stream)
                + i.max_tokens.unwrap_or(0) as usize
        });
        time("sonic_rs::get x3", bytes.len(), iters, || {
            let b = black_box(bytes);
            let model = sonic_rs::get(b, ["model"]).expect("model");
            let max = sonic_rs::get(b, ["max_tokens"]).expect("max_tokens");
            let stream = sonic_rs::get(b, ["stream"]).expect("stream");
            model.as_raw_str().len() + max.as_raw_str().len() + stream.as_raw_str().len()
        });
        time("sonic_rs::get_many", bytes.len(), iters, || {
            let v = sonic_rs::get_many(black_box(bytes), &tree).expect("paths");
            v.iter().flatten().map(|x| x.as_raw_str().len()).sum()
        });
        time("serde_json::Value (full)", bytes.len(), iters, || {
            let v: serde_json::Value = serde_json::from_slice(black_box(bytes)).expect("json");
            v["model"].as_str().map_or(0, str::len)
        });
        println!();
    }
}
