//! Any bytes as a chunked body, fed in two pieces: the decoder never panics, never reports
//! data outside what it consumed, and never consumes more than it was given.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardgate_engine::http::chunked::{ChunkedDecoder, Step};

fuzz_target!(|data: &[u8]| {
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
});
