//! Request bodies: what is still to be read from the client, and moving what arrived into
//! the bytes to forward (or to inspect), under `body_bytes_max`.

use crate::error::Error;
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::request::{BodyKind, RequestHead};
use crate::http::write_hex;

/// The request body still to be read from the client.
#[derive(Debug)]
pub enum BodyLeft {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyLeft {
    /// The whole body of a request with this head.
    pub fn of(head: &RequestHead) -> Self {
        match head.body {
            BodyKind::None | BodyKind::Length(0) => BodyLeft::Done,
            BodyKind::Length(n) => BodyLeft::Length(n),
            BodyKind::Chunked => BodyLeft::Chunked(ChunkedDecoder::new()),
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }
}

/// How chunked body data is appended to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOut {
    /// Normalised chunks (`<hex>\r\n<data>\r\n`, then `0\r\n\r\n`): forwarding upstream.
    Rechunk,
    /// Data only: the body is read whole (an LLM body, the mock model's).
    DataOnly,
}

/// Move the body bytes at the front of `buf` into `out` (verbatim for `Content-Length`,
/// decoded for chunked), consuming them from `buf` and updating `left`. Bytes after the body
/// (a pipelined request) stay in `buf`. Returns the bytes consumed from `buf`.
pub fn consume(
    buf: &mut Vec<u8>,
    left: &mut BodyLeft,
    body_bytes_max: u64,
    out: &mut Vec<u8>,
    mode: ChunkOut,
) -> Result<usize, Error> {
    let consumed = match left {
        BodyLeft::Done => 0,
        BodyLeft::Length(n) => {
            let take = buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
            out.extend_from_slice(&buf[..take]);
            *n -= take as u64;
            if *n == 0 {
                *left = BodyLeft::Done;
            }
            take
        }
        BodyLeft::Chunked(d) => {
            let mut at = 0;
            loop {
                let (n, step) = d.decode(&buf[at..]).map_err(|e| Error::BadChunk(e.0))?;
                if d.data_bytes() > body_bytes_max {
                    return Err(Error::BodyTooLarge);
                }
                match step {
                    Step::Data(r) => {
                        if mode == ChunkOut::Rechunk {
                            write_hex(out, r.len() as u64);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(&buf[at..][r]);
                        if mode == ChunkOut::Rechunk {
                            out.extend_from_slice(b"\r\n");
                        }
                        at += n;
                    }
                    Step::NeedMore => break at + n,
                    Step::Done => {
                        if mode == ChunkOut::Rechunk {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        *left = BodyLeft::Done;
                        break at + n;
                    }
                }
            }
        }
    };
    buf.drain(..consumed);
    Ok(consumed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        input: &[u8],
        mut left: BodyLeft,
        max: u64,
        mode: ChunkOut,
    ) -> (Result<usize, Error>, Vec<u8>, Vec<u8>, bool) {
        let mut buf = input.to_vec();
        let mut out = Vec::new();
        let r = consume(&mut buf, &mut left, max, &mut out, mode);
        (r, out, buf, left.is_done())
    }

    #[test]
    fn a_length_body_stops_at_its_length_and_leaves_the_next_request() {
        let (r, out, rest, done) = run(b"abcdeGET /", BodyLeft::Length(5), 100, ChunkOut::Rechunk);
        assert_eq!(r.ok(), Some(5));
        assert_eq!(out, b"abcde");
        assert_eq!(rest, b"GET /");
        assert!(done);
        let (r, out, rest, done) = run(b"abc", BodyLeft::Length(5), 100, ChunkOut::Rechunk);
        assert_eq!(
            (r.ok(), &out[..], &rest[..], done),
            (Some(3), &b"abc"[..], &b""[..], false)
        );
    }

    #[test]
    fn chunks_are_normalised_or_decoded() {
        let input = b"3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT";
        let (r, out, rest, done) = run(
            input,
            BodyLeft::Chunked(ChunkedDecoder::new()),
            100,
            ChunkOut::Rechunk,
        );
        assert!(r.is_ok() && done);
        assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
        assert_eq!(rest, b"NEXT");
        let (r, out, rest, done) = run(
            input,
            BodyLeft::Chunked(ChunkedDecoder::new()),
            100,
            ChunkOut::DataOnly,
        );
        assert!(r.is_ok() && done);
        assert_eq!(out, b"abcde");
        assert_eq!(rest, b"NEXT");
    }

    #[test]
    fn a_partial_chunk_waits_for_more() {
        let mut left = BodyLeft::Chunked(ChunkedDecoder::new());
        let mut buf = b"5\r\nab".to_vec();
        let mut out = Vec::new();
        assert!(consume(&mut buf, &mut left, 100, &mut out, ChunkOut::DataOnly).is_ok());
        assert!(!left.is_done());
        buf.extend_from_slice(b"cde\r\n0\r\n\r\n");
        assert!(consume(&mut buf, &mut left, 100, &mut out, ChunkOut::DataOnly).is_ok());
        assert!(left.is_done());
        assert_eq!(out, b"abcde");
        assert!(buf.is_empty());
    }

    #[test]
    fn too_much_chunked_data_or_a_bad_chunk_is_refused() {
        let (r, ..) = run(
            b"a\r\n0123456789\r\n",
            BodyLeft::Chunked(ChunkedDecoder::new()),
            5,
            ChunkOut::Rechunk,
        );
        assert!(matches!(r, Err(Error::BodyTooLarge)));
        let (r, ..) = run(
            b"zz\r\n",
            BodyLeft::Chunked(ChunkedDecoder::new()),
            5,
            ChunkOut::Rechunk,
        );
        assert!(matches!(r, Err(Error::BadChunk(_))));
    }

    #[test]
    fn a_done_body_takes_nothing() {
        let (r, out, rest, done) = run(b"GET /", BodyLeft::Done, 100, ChunkOut::Rechunk);
        assert_eq!(r.ok(), Some(0));
        assert!(out.is_empty() && done);
        assert_eq!(rest, b"GET /");
    }
}
