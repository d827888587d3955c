//! Any bytes as an upstream response head: parse, choose framing, write the client head.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shardgate_engine::http::response::{client_framing, parse, write_client_head};
use shardgate_engine::limits::HEADERS_ARRAY_LEN;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    if let Ok(Some((head, resp))) = parse(data, &mut headers, false) {
        for minor in [0, 1] {
            let framing = client_framing(head.body, minor);
            let mut out = Vec::new();
            write_client_head(&head, &resp, framing, minor, true, None, &mut out);
        }
    }
});
