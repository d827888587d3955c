//! Any bytes as an LLM request body and as a response body: `inspect` and `with_include_usage`
//! never panic and a rewrite always reads back with `include_usage`; the usage scanner (both
//! kinds) and the SSE filter give the same answer and output when the bytes arrive in two
//! pieces as in one.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardgate_engine::llm::{self, BodyKind, SseFilter, UsageScanner};

fuzz_target!(|data: &[u8]| {
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
});
