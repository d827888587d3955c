//! Property tests of the I/O-free HTTP code: nothing a peer sends makes it panic, and the
//! chunked decoder and request parser agree with simple models however the bytes are split.

use proptest::prelude::*;
use shardgate_engine::http::chunked::{ChunkedDecoder, Step};
use shardgate_engine::http::request::{self, BodyKind, HeadLimits};
use shardgate_engine::http::response;
use shardgate_engine::limits::HEADERS_ARRAY_LEN;

const LIMITS: HeadLimits = HeadLimits {
    header_bytes_max: 4096,
    headers_count_max: 32,
    body_bytes_max: 1 << 20,
};

/// Feed `wire` to a decoder in the given piece sizes; returns the data and whether it ended.
fn decode_split(wire: &[u8], pieces: &[usize]) -> Result<(Vec<u8>, bool), ()> {
    let mut d = ChunkedDecoder::new();
    let mut pending = Vec::new();
    let mut data = Vec::new();
    let mut at = 0;
    let mut sizes = pieces.iter().cycle();
    while at < wire.len() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, wire.len() - at);
        pending.extend_from_slice(&wire[at..at + n]);
        at += n;
        loop {
            let (used, step) = d.decode(&pending).map_err(|_| ())?;
            if let Step::Data(r) = &step {
                data.extend_from_slice(&pending[r.clone()]);
            }
            pending.drain(..used);
            match step {
                Step::Data(_) => {}
                Step::NeedMore => break,
                Step::Done => return Ok((data, true)),
            }
        }
    }
    Ok((data, false))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn chunked_round_trips_however_split(
        chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..300), 0..8),
        pieces in prop::collection::vec(1usize..64, 1..8),
    ) {
        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
            wire.extend_from_slice(c);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"0\r\n\r\n");
        let (data, done) = decode_split(&wire, &pieces).expect("valid chunked");
        prop_assert!(done);
        prop_assert_eq!(data, chunks.concat());
    }

    #[test]
    fn chunked_decoder_never_panics(wire in prop::collection::vec(any::<u8>(), 0..512),
                                    pieces in prop::collection::vec(1usize..32, 1..4)) {
        let _ = decode_split(&wire, &pieces);
    }

    #[test]
    fn request_parser_never_panics(raw in prop::collection::vec(any::<u8>(), 0..1024)) {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let _ = request::parse(&raw, &mut headers, &LIMITS);
    }

    #[test]
    fn response_parser_never_panics(raw in prop::collection::vec(any::<u8>(), 0..1024)) {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let _ = response::parse(&raw, &mut headers, false);
    }

    /// A well-formed request with arbitrary header values and Content-Length is parsed whole,
    /// and its framing is the declared length; any prefix of it is "incomplete", never an error.
    #[test]
    fn valid_requests_parse_and_prefixes_are_partial(
        values in prop::collection::vec("[a-zA-Z0-9 ,;=/_.-]{0,40}", 0..10),
        len in 0u64..100_000,
    ) {
        let mut raw = String::from("POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n");
        for (i, v) in values.iter().enumerate() {
            raw.push_str(&format!("X-H{i}: {v}\r\n"));
        }
        raw.push_str(&format!("Content-Length: {len}\r\n\r\n"));
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
        let head = request::parse(raw.as_bytes(), &mut headers, &LIMITS)
            .expect("valid")
            .expect("complete")
            .head;
        prop_assert_eq!(head.head_len, raw.len());
        let expected = if len == 0 { BodyKind::None } else { BodyKind::Length(len) };
        prop_assert_eq!(head.body, expected);
        for cut in [1, raw.len() / 2, raw.len() - 1] {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
            let r = request::parse(&raw.as_bytes()[..cut], &mut headers, &LIMITS);
            prop_assert!(matches!(r, Ok(None)), "prefix {} gave {:?}", cut, r.map(|p| p.map(|p| p.head)));
        }
    }
}
