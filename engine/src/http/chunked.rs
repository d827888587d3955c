//! A streaming decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! It validates while bytes pass through and never copies: [`ChunkedDecoder::decode`] looks at
//! the bytes the caller has, says how many it consumed, and where data lies among them. Callers
//! either forward the consumed bytes verbatim (a validated pass-through) or only the data ranges
//! (de-chunking, or re-encoding with normalised chunk lines).
//!
//! Stricter than httparse's own chunk parser: an empty size, a size that is only an extension,
//! a `0x` prefix, more than [`CHUNK_SIZE_DIGITS_MAX`] hex digits, a bare LF, a CR or LF or other
//! control byte inside an extension, and a missing CRLF after data are all errors.

use std::ops::Range;

use crate::limits::{CHUNK_LINE_BYTES_MAX, CHUNK_SIZE_DIGITS_MAX, TRAILER_BYTES_MAX};

/// Why a chunked body was refused. The caller maps it to a client or upstream error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError(pub &'static str);

/// What one call to [`ChunkedDecoder::decode`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Body data at this range of the input (within the consumed bytes).
    Data(Range<usize>),
    /// Nothing more can be decoded until more bytes arrive.
    NeedMore,
    /// The last chunk and the trailer section are complete; the message ends here.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataCrlf,
    Trailers { bytes: usize },
    Done,
}

/// Decoder state; one per chunked message.
#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    data_bytes: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::Size,
            data_bytes: 0,
        }
    }

    /// Total body data bytes decoded so far.
    pub fn data_bytes(&self) -> u64 {
        self.data_bytes
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Decode from the start of `input`. Returns the bytes consumed and what was found. Call
    /// again with the unconsumed rest until it returns [`Step::NeedMore`] or [`Step::Done`];
    /// on `NeedMore` keep the unconsumed bytes and append more to them.
    pub fn decode(&mut self, input: &[u8]) -> Result<(usize, Step), ChunkError> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                State::Done => return Ok((at, Step::Done)),
                State::Size => {
                    let Some(line_len) = line(rest, CHUNK_LINE_BYTES_MAX)? else {
                        return Ok((at, Step::NeedMore));
                    };
                    let size = parse_size_line(&rest[..line_len - 2])?;
                    at += line_len;
                    self.state = if size == 0 {
                        State::Trailers { bytes: 0 }
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if rest.is_empty() {
                        return Ok((at, Step::NeedMore));
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(rest.len());
                    self.data_bytes += n as u64;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCrlf
                    } else {
                        State::Data(left)
                    };
                    return Ok((at + n, Step::Data(at..at + n)));
                }
                State::DataCrlf => {
                    if rest.len() < 2 {
                        if rest.first().is_some_and(|b| *b != b'\r') {
                            return Err(ChunkError("chunk data not followed by CRLF"));
                        }
                        return Ok((at, Step::NeedMore));
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    at += 2;
                    self.state = State::Size;
                }
                State::Trailers { bytes } => {
                    let room = TRAILER_BYTES_MAX - bytes;
                    let Some(line_len) = line(rest, room.min(CHUNK_LINE_BYTES_MAX * 8))? else {
                        if rest.len() >= room {
                            return Err(ChunkError("trailer section too large"));
                        }
                        return Ok((at, Step::NeedMore));
                    };
                    at += line_len;
                    if line_len == 2 {
                        self.state = State::Done;
                        return Ok((at, Step::Done));
                    }
                    check_trailer_field(&rest[..line_len - 2])?;
                    let bytes = bytes + line_len;
                    if bytes > TRAILER_BYTES_MAX {
                        return Err(ChunkError("trailer section too large"));
                    }
                    self.state = State::Trailers { bytes };
                }
            }
        }
    }
}

/// Length of the CRLF-terminated line at the start of `input` (including CRLF), `None` if it is
/// not complete yet. A bare LF, or no line end within `max` bytes, is an error.
fn line(input: &[u8], max: usize) -> Result<Option<usize>, ChunkError> {
    match input.iter().take(max).position(|b| *b == b'\n') {
        Some(lf) if lf > 0 && input[lf - 1] == b'\r' => Ok(Some(lf + 1)),
        Some(_) => Err(ChunkError("bare LF in chunked framing")),
        None if input.len() >= max => Err(ChunkError("chunk line too long")),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]` without the CRLF.
fn parse_size_line(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(ChunkError("missing chunk size"));
    }
    if digits > CHUNK_SIZE_DIGITS_MAX {
        return Err(ChunkError("chunk size too large"));
    }
    let size = line[..digits]
        .iter()
        .fold(0u64, |n, &d| (n << 4) | u64::from(hex_value(d)));
    let ext = &line[digits..];
    // Only whitespace before an extension, and an extension must start with ';'.
    let ext = crate::http::trim_ows(ext);
    if !ext.is_empty() {
        if ext[0] != b';' {
            return Err(ChunkError("invalid chunk size"));
        }
        if ext
            .iter()
            .any(|b| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f)
        {
            return Err(ChunkError("control byte in chunk extension"));
        }
    }
    Ok(size)
}

fn hex_value(d: u8) -> u8 {
    match d {
        b'0'..=b'9' => d - b'0',
        b'a'..=b'f' => d - b'a' + 10,
        _ => d - b'A' + 10,
    }
}

/// A trailer field must look like `name: value` with a token name and no control bytes.
fn check_trailer_field(field: &[u8]) -> Result<(), ChunkError> {
    let colon = field
        .iter()
        .position(|b| *b == b':')
        .ok_or(ChunkError("invalid trailer field"))?;
    let (name, value) = (&field[..colon], &field[colon + 1..]);
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    if name.is_empty() || !name.iter().all(token) {
        return Err(ChunkError("invalid trailer field"));
    }
    if value
        .iter()
        .any(|b| (b.is_ascii_control() && *b != b'\t') || *b == 0x7f)
    {
        return Err(ChunkError("invalid trailer field"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decode `input` fed in pieces of `step` bytes, the way a socket delivers it.
    fn decode_in_pieces(input: &[u8], step: usize) -> Result<(Vec<u8>, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut pending: Vec<u8> = Vec::new();
        let mut data = Vec::new();
        for piece in input.chunks(step.max(1)) {
            pending.extend_from_slice(piece);
            loop {
                let (consumed, step) = d.decode(&pending)?;
                if let Step::Data(r) = &step {
                    data.extend_from_slice(&pending[r.clone()]);
                }
                pending.drain(..consumed);
                match step {
                    Step::Data(_) => continue,
                    Step::NeedMore => break,
                    Step::Done => return Ok((data, true)),
                }
            }
        }
        Ok((data, false))
    }

    #[test]
    fn decodes_whole_and_split_at_every_byte() {
        let body = b"5\r\nhello\r\n7;name=v\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for step in 1..=body.len() {
            let (data, done) = decode_in_pieces(body, step).expect("valid");
            assert_eq!(data, b"hello, world", "step {step}");
            assert!(done);
        }
    }

    #[test]
    fn hex_sizes_in_both_cases() {
        let mut body = b"1A\r\n".to_vec();
        body.extend_from_slice(&[b'x'; 26]);
        body.extend_from_slice(b"\r\na\r\n0123456789\r\n0\r\n\r\n");
        let (data, done) = decode_in_pieces(&body, 7).expect("valid");
        assert_eq!(data.len(), 36);
        assert!(done);
    }

    #[test]
    fn refuses_what_httparse_lets_through() {
        for bad in [
            &b"\r\nhello\r\n0\r\n\r\n"[..],  // empty size
            b";ext\r\n0\r\n\r\n",            // extension only
            b"5\nhello\r\n0\r\n\r\n",        // bare LF
            b"0x5\r\nhello\r\n0\r\n\r\n",    // 0x prefix
            b"+5\r\nhello\r\n0\r\n\r\n",     // sign
            b" 5\r\nhello\r\n0\r\n\r\n",     // leading space
            b"1000000000000000\r\n",         // 16 hex digits
            b"5;a\nb\r\nhello\r\n0\r\n\r\n", // LF inside an extension
            b"5;a\rb\r\nhello\r\n0\r\n\r\n", // CR inside an extension
            b"5\r\nhelloXX0\r\n\r\n",        // no CRLF after data
            b"0\r\nbad trailer\r\n\r\n",     // trailer without colon
            b"0\r\n\r\r\n",                  // junk end
        ] {
            assert!(
                decode_in_pieces(bad, 1).is_err() && decode_in_pieces(bad, bad.len()).is_err(),
                "accepted {:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn incomplete_is_not_done() {
        let (data, done) = decode_in_pieces(b"5\r\nhello\r\n", 3).expect("valid so far");
        assert_eq!(data, b"hello");
        assert!(!done);
    }

    #[test]
    fn oversized_lines_are_refused() {
        let mut long = b"5;".to_vec();
        long.extend(std::iter::repeat_n(b'a', CHUNK_LINE_BYTES_MAX));
        assert!(decode_in_pieces(&long, 64).is_err());
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..TRAILER_BYTES_MAX / 10 {
            trailers.extend_from_slice(b"x-t: 1234\r\n");
        }
        assert!(decode_in_pieces(&trailers, 100).is_err());
    }

    #[test]
    fn counts_data_and_stops_at_done() {
        let mut d = ChunkedDecoder::new();
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut at = 0;
        loop {
            let (n, step) = d.decode(&input[at..]).expect("valid");
            at += n;
            if step == Step::Done {
                break;
            }
        }
        assert_eq!(d.data_bytes(), 3);
        assert!(d.is_done());
        assert_eq!(&input[at..], b"GET / HTTP/1.1\r\n");
    }
}
