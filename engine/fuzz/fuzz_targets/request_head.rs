//! Any bytes as a request head: parse, and when it parses, write the forwarded head.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardgate_engine::http::request::{parse, HeadLimits};
use shardgate_engine::limits::HEADERS_ARRAY_LEN;

fuzz_target!(|data: &[u8]| {
    let limits = HeadLimits {
        header_bytes_max: 16384,
        headers_count_max: 100,
        body_bytes_max: 1 << 20,
    };
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    if let Ok(Some(req)) = parse(data, &mut headers, &limits) {
        assert!(req.head.head_len <= data.len());
        let mut out = Vec::new();
        req.write_upstream_head(b"up:80", std::net::IpAddr::from([127, 0, 0, 1]), &mut out);
    }
});
