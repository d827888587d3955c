//! AWS's binary event stream (`application/vnd.amazon.eventstream`), the body of Bedrock's
//! `ConverseStream` (and of every AWS streaming response), without I/O: [`Decoder`] is fed the
//! body in pieces of any size and hands out whole [`Message`]s, each CRC-checked; [`encode`]
//! writes one (for tests and mocks).
//!
//! # Framing
//!
//! Every number is big-endian; a message is:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | total length: the whole message, these 4 bytes and both CRCs included |
//! | 4 | headers length |
//! | 4 | prelude CRC: CRC-32 (the gzip/IEEE one) of the 8 bytes above |
//! | headers length | headers, each: name length (u8, 1..=255), name, value type (u8), value |
//! | total − headers − 16 | payload |
//! | 4 | message CRC: CRC-32 of every byte before it, prelude included |
//!
//! Header value types: 0 `true`, 1 `false` (no bytes), 2 byte (i8), 3 short (i16), 4 integer
//! (i32), 5 long (i64), 6 byte array and 7 string (a u16 length, then the bytes; a string is
//! UTF-8), 8 timestamp (i64, milliseconds since the epoch), 9 UUID (16 bytes).
//!
//! The headers a client reads: `:message-type` (`event`, `exception`, or `error` for a
//! protocol-level error carrying `:error-code` and `:error-message`), `:event-type` (an event's
//! name), `:exception-type` (an exception's name) and `:content-type` (the payload's, e.g.
//! `application/json`).
//!
//! # Errors end the stream
//!
//! A bad CRC, inconsistent lengths, a malformed header, more than [`HEADER_COUNT_MAX`] headers
//! or a message over [`MESSAGE_BYTES_MAX`] is a [`FrameError`]: the decoder stops there for
//! good (every later [`Decoder::feed`] returns the same error), since after a framing error the
//! next message's start is unknown. Nothing is skipped silently; the caller ends its own output
//! with an error.

use std::fmt;

/// The longest message the decoder holds, bytes. The format allows 16 MiB; Bedrock's stream
/// events are deltas of a few hundred bytes, and the decoder buffers one unfinished message,
/// so a stream of longer ones is refused rather than held.
pub const MESSAGE_BYTES_MAX: usize = 1024 * 1024;
/// The longest headers section, bytes (the format's own limit: 128 KiB).
pub const HEADERS_BYTES_MAX: usize = 128 * 1024;
/// The most headers one message may carry (Bedrock sends three or four).
pub const HEADER_COUNT_MAX: usize = 32;
/// The prelude (two lengths and their CRC), bytes.
pub const PRELUDE_BYTES: usize = 12;
/// A message's fixed overhead (the prelude and the message CRC), bytes.
pub const OVERHEAD_BYTES: usize = PRELUDE_BYTES + 4;

const _: () = assert!(HEADERS_BYTES_MAX + OVERHEAD_BYTES <= MESSAGE_BYTES_MAX);
const _: () = assert!(MESSAGE_BYTES_MAX <= u32::MAX as usize);

/// Why a stream could not be framed. Each one ends the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The prelude's CRC does not match its two lengths.
    PreludeCrc,
    /// The message CRC does not match the message.
    MessageCrc,
    /// The total length is under the 16 bytes of overhead, or the headers do not fit in it.
    Lengths,
    /// The total length is over [`MESSAGE_BYTES_MAX`] or the headers' over
    /// [`HEADERS_BYTES_MAX`].
    TooLong,
    /// A header is cut off, has an empty name, an unknown value type, or a string value that
    /// is not UTF-8.
    Header,
    /// More than [`HEADER_COUNT_MAX`] headers.
    TooManyHeaders,
    /// The stream ended inside a message.
    Truncated,
}

impl FrameError {
    /// A static, JSON-safe message (ASCII, no quotes or backslashes).
    pub fn message(self) -> &'static str {
        match self {
            FrameError::PreludeCrc => "an event stream message's prelude CRC does not match",
            FrameError::MessageCrc => "an event stream message's CRC does not match",
            FrameError::Lengths => "an event stream message's lengths are inconsistent",
            FrameError::TooLong => "an event stream message is longer than the gateway accepts",
            FrameError::Header => "an event stream message has a malformed header",
            FrameError::TooManyHeaders => "an event stream message has too many headers",
            FrameError::Truncated => "the event stream ended inside a message",
        }
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for FrameError {}

/// A header's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Types 0 (`true`) and 1 (`false`).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(&'a [u8]),
    /// Type 7.
    Str(&'a str),
    /// Type 8: milliseconds since the epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// One message: its headers (already checked) and its payload, borrowed from the decoder or
/// its input for the call it is handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    headers: &'a [u8],
    /// The payload (for Bedrock, a JSON object).
    pub payload: &'a [u8],
}

impl<'a> Message<'a> {
    /// The headers in order.
    pub fn headers(&self) -> Headers<'a> {
        Headers { rest: self.headers }
    }

    /// The first header named `name` (names compare exactly, as AWS's do).
    pub fn header(&self, name: &str) -> Option<HeaderValue<'a>> {
        self.headers()
            .find(|(n, _)| *n == name)
            .map(|(_, value)| value)
    }

    /// The first header named `name`, when it is a string.
    pub fn str_header(&self, name: &str) -> Option<&'a str> {
        match self.header(name) {
            Some(HeaderValue::Str(s)) => Some(s),
            _ => None,
        }
    }
}

/// The headers of a [`Message`], in order.
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Headers<'a> {
    type Item = (&'a str, HeaderValue<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // The section was checked whole when the message was framed, so a header that does not
        // read (it cannot happen) ends the iteration.
        let (name, value, rest) = read_header(self.rest).ok()??;
        self.rest = rest;
        Some((name, value))
    }
}

/// A header read from the front of a section: its name, its value, and the bytes after it.
type HeaderRead<'a> = (&'a str, HeaderValue<'a>, &'a [u8]);

/// Read one header from the front of `bytes`: `Ok(None)` when `bytes` is empty.
fn read_header(bytes: &[u8]) -> Result<Option<HeaderRead<'_>>, FrameError> {
    let Some((&name_len, rest)) = bytes.split_first() else {
        return Ok(None);
    };
    if name_len == 0 {
        return Err(FrameError::Header);
    }
    let (name, rest) = rest
        .split_at_checked(usize::from(name_len))
        .ok_or(FrameError::Header)?;
    let name = std::str::from_utf8(name).map_err(|_| FrameError::Header)?;
    let (&kind, rest) = rest.split_first().ok_or(FrameError::Header)?;
    let (value, rest) = match kind {
        0 => (HeaderValue::Bool(true), rest),
        1 => (HeaderValue::Bool(false), rest),
        2 => {
            let (b, rest) = take::<1>(rest)?;
            (HeaderValue::Byte(i8::from_be_bytes(b)), rest)
        }
        3 => {
            let (b, rest) = take::<2>(rest)?;
            (HeaderValue::Short(i16::from_be_bytes(b)), rest)
        }
        4 => {
            let (b, rest) = take::<4>(rest)?;
            (HeaderValue::Int(i32::from_be_bytes(b)), rest)
        }
        5 => {
            let (b, rest) = take::<8>(rest)?;
            (HeaderValue::Long(i64::from_be_bytes(b)), rest)
        }
        6 | 7 => {
            let (len, rest) = take::<2>(rest)?;
            let (value, rest) = rest
                .split_at_checked(usize::from(u16::from_be_bytes(len)))
                .ok_or(FrameError::Header)?;
            if kind == 6 {
                (HeaderValue::Bytes(value), rest)
            } else {
                let s = std::str::from_utf8(value).map_err(|_| FrameError::Header)?;
                (HeaderValue::Str(s), rest)
            }
        }
        8 => {
            let (b, rest) = take::<8>(rest)?;
            (HeaderValue::Timestamp(i64::from_be_bytes(b)), rest)
        }
        9 => {
            let (b, rest) = take::<16>(rest)?;
            (HeaderValue::Uuid(b), rest)
        }
        _ => return Err(FrameError::Header),
    };
    Ok(Some((name, value, rest)))
}

/// The first `N` bytes of `bytes` as an array, and the rest.
fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), FrameError> {
    let (head, rest) = bytes.split_at_checked(N).ok_or(FrameError::Header)?;
    let head: [u8; N] = head.try_into().map_err(|_| FrameError::Header)?;
    Ok((head, rest))
}

/// A big-endian u32 at `at` in `bytes` (the caller has checked the length).
fn be_u32(bytes: &[u8], at: usize) -> u32 {
    bytes
        .get(at..at + 4)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
        .map_or(0, u32::from_be_bytes)
}

/// The message length the prelude at the front of `bytes` announces, once the prelude is
/// there (`Ok(None)` before), checked against its CRC and the limits.
fn frame_len(bytes: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(prelude) = bytes.get(..PRELUDE_BYTES) else {
        return Ok(None);
    };
    let lengths = prelude.get(..8).unwrap_or_default();
    if crc32fast::hash(lengths) != be_u32(prelude, 8) {
        return Err(FrameError::PreludeCrc);
    }
    let total = usize::try_from(be_u32(prelude, 0)).map_err(|_| FrameError::TooLong)?;
    let headers = usize::try_from(be_u32(prelude, 4)).map_err(|_| FrameError::TooLong)?;
    if total > MESSAGE_BYTES_MAX || headers > HEADERS_BYTES_MAX {
        return Err(FrameError::TooLong);
    }
    if total < OVERHEAD_BYTES || headers > total - OVERHEAD_BYTES {
        return Err(FrameError::Lengths);
    }
    Ok(Some(total))
}

/// Check a whole message (exactly `frame_len` bytes) and read its sections.
fn parse(frame: &[u8]) -> Result<Message<'_>, FrameError> {
    let headers_len = usize::try_from(be_u32(frame, 4)).map_err(|_| FrameError::Lengths)?;
    let crc_at = frame.len().checked_sub(4).ok_or(FrameError::Lengths)?;
    let (body, crc) = frame.split_at(crc_at);
    if crc32fast::hash(body) != be_u32(crc, 0) {
        return Err(FrameError::MessageCrc);
    }
    let sections = body.get(PRELUDE_BYTES..).ok_or(FrameError::Lengths)?;
    let (headers, payload) = sections
        .split_at_checked(headers_len)
        .ok_or(FrameError::Lengths)?;
    let mut rest = headers;
    let mut count = 0usize;
    while let Some((_, _, after)) = read_header(rest)? {
        count += 1;
        if count > HEADER_COUNT_MAX {
            return Err(FrameError::TooManyHeaders);
        }
        rest = after;
    }
    Ok(Message { headers, payload })
}

/// Frames an event stream fed in pieces of any size; see the module docs. It holds at most
/// one unfinished message (under [`MESSAGE_BYTES_MAX`]); whole messages in the input are read
/// where they lie, without a copy.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The start of an unfinished message.
    buf: Vec<u8>,
    /// The error that ended the stream.
    failed: Option<FrameError>,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hand `f` the messages that `input` completes, in order. On a framing error nothing more
    /// is handed out, now or later: this and every later call return the error.
    pub fn feed(
        &mut self,
        mut input: &[u8],
        mut f: impl FnMut(Message<'_>),
    ) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        while !input.is_empty() {
            if self.buf.is_empty() {
                // Read whole messages where they lie.
                let total = match frame_len(input) {
                    Err(e) => return self.fail(e),
                    Ok(Some(total)) if total <= input.len() => total,
                    Ok(_) => {
                        // A prelude or a message cut off: hold it (it fits the limit, or its
                        // prelude is still incomplete).
                        self.buf.extend_from_slice(input);
                        break;
                    }
                };
                let (frame, rest) = input.split_at(total);
                match parse(frame) {
                    Ok(message) => f(message),
                    Err(e) => return self.fail(e),
                }
                input = rest;
                continue;
            }
            // Complete the held message: first its prelude, then the rest of it.
            let need = match frame_len(&self.buf) {
                Err(e) => return self.fail(e),
                Ok(None) => PRELUDE_BYTES - self.buf.len(),
                Ok(Some(total)) => total - self.buf.len(),
            };
            let (piece, rest) = input.split_at(need.min(input.len()));
            self.buf.extend_from_slice(piece);
            input = rest;
            match frame_len(&self.buf) {
                Err(e) => return self.fail(e),
                Ok(Some(total)) if total == self.buf.len() => {
                    let parsed = parse(&self.buf).map(&mut f);
                    self.buf.clear();
                    if let Err(e) = parsed {
                        return self.fail(e);
                    }
                }
                Ok(_) => {}
            }
        }
        // A stream waiting for its next message holds nothing here.
        crate::llm::release_if_empty(&mut self.buf);
        Ok(())
    }

    /// At the end of the body: [`FrameError::Truncated`] when it ended inside a message (or
    /// the error that ended the stream earlier).
    pub fn finish(&mut self) -> Result<(), FrameError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        if !self.buf.is_empty() {
            return self.fail(FrameError::Truncated);
        }
        Ok(())
    }

    /// The error that ended the stream, if one did.
    pub fn error(&self) -> Option<FrameError> {
        self.failed
    }

    fn fail(&mut self, e: FrameError) -> Result<(), FrameError> {
        self.failed = Some(e);
        self.buf = Vec::new();
        Err(e)
    }
}

/// Append one message with `headers` and `payload` to `out`. `Err` (nothing appended) when a
/// header name is empty or over 255 bytes, a value over 65535 bytes, there are more than
/// [`HEADER_COUNT_MAX`] headers, or the message would be over [`MESSAGE_BYTES_MAX`].
pub fn encode(
    headers: &[(&str, HeaderValue<'_>)],
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    if headers.len() > HEADER_COUNT_MAX {
        return Err(FrameError::TooManyHeaders);
    }
    let start = out.len();
    out.extend_from_slice(&[0; PRELUDE_BYTES]);
    for (name, value) in headers {
        let Ok(name_len) = u8::try_from(name.len()) else {
            out.truncate(start);
            return Err(FrameError::Header);
        };
        if name_len == 0 {
            out.truncate(start);
            return Err(FrameError::Header);
        }
        out.push(name_len);
        out.extend_from_slice(name.as_bytes());
        let sized = |out: &mut Vec<u8>, kind: u8, bytes: &[u8]| -> Result<(), FrameError> {
            let len = u16::try_from(bytes.len()).map_err(|_| FrameError::Header)?;
            out.push(kind);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(bytes);
            Ok(())
        };
        let written = match *value {
            HeaderValue::Bool(true) => {
                out.push(0);
                Ok(())
            }
            HeaderValue::Bool(false) => {
                out.push(1);
                Ok(())
            }
            HeaderValue::Byte(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            HeaderValue::Short(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            HeaderValue::Int(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            HeaderValue::Long(v) => {
                out.push(5);
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            HeaderValue::Bytes(b) => sized(out, 6, b),
            HeaderValue::Str(s) => sized(out, 7, s.as_bytes()),
            HeaderValue::Timestamp(v) => {
                out.push(8);
                out.extend_from_slice(&v.to_be_bytes());
                Ok(())
            }
            HeaderValue::Uuid(u) => {
                out.push(9);
                out.extend_from_slice(&u);
                Ok(())
            }
        };
        if let Err(e) = written {
            out.truncate(start);
            return Err(e);
        }
    }
    let headers_len = out.len() - start - PRELUDE_BYTES;
    let total = out.len() - start + payload.len() + 4;
    if total > MESSAGE_BYTES_MAX || headers_len > HEADERS_BYTES_MAX {
        out.truncate(start);
        return Err(FrameError::TooLong);
    }
    out.extend_from_slice(payload);
    // Both fit in u32: checked against MESSAGE_BYTES_MAX above.
    let total = u32::try_from(total).unwrap_or(u32::MAX);
    let headers_len = u32::try_from(headers_len).unwrap_or(u32::MAX);
    let mut prelude = [0u8; PRELUDE_BYTES];
    prelude[..4].copy_from_slice(&total.to_be_bytes());
    prelude[4..8].copy_from_slice(&headers_len.to_be_bytes());
    let prelude_crc = crc32fast::hash(&prelude[..8]);
    prelude[8..].copy_from_slice(&prelude_crc.to_be_bytes());
    if let Some(head) = out.get_mut(start..start + PRELUDE_BYTES) {
        head.copy_from_slice(&prelude);
    }
    let crc = crc32fast::hash(out.get(start..).unwrap_or_default());
    out.extend_from_slice(&crc.to_be_bytes());
    Ok(())
}

/// [`encode`] for the common case: a JSON event named `event_type`, with Bedrock's headers
/// (`:event-type`, `:content-type: application/json`, `:message-type: event`).
pub fn encode_event(event_type: &str, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    encode(
        &[
            (":event-type", HeaderValue::Str(event_type)),
            (":content-type", HeaderValue::Str("application/json")),
            (":message-type", HeaderValue::Str("event")),
        ],
        payload,
        out,
    )
}

/// [`encode`] for an exception: `:exception-type` `exception_type`,
/// `:message-type: exception`, a JSON payload (`{"message":"..."}`).
pub fn encode_exception(
    exception_type: &str,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode(
        &[
            (":exception-type", HeaderValue::Str(exception_type)),
            (":content-type", HeaderValue::Str("application/json")),
            (":message-type", HeaderValue::Str("exception")),
        ],
        payload,
        out,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A published example (an Elixir implementation's doctest of the AWS format): the payload
    /// `{"foo": "bar"}` without headers, and with `content-type: application/json`.
    const NO_HEADERS: &[u8] = &[
        0, 0, 0, 30, 0, 0, 0, 0, 186, 242, 246, 138, 123, 34, 102, 111, 111, 34, 58, 32, 34, 98,
        97, 114, 34, 125, 174, 114, 88, 228,
    ];
    const WITH_HEADER: &[u8] = &[
        0, 0, 0, 62, 0, 0, 0, 32, 64, 93, 249, 70, 12, 99, 111, 110, 116, 101, 110, 116, 45, 116,
        121, 112, 101, 7, 0, 16, 97, 112, 112, 108, 105, 99, 97, 116, 105, 111, 110, 47, 106, 115,
        111, 110, 123, 34, 102, 111, 111, 34, 58, 32, 34, 98, 97, 114, 34, 125, 111, 162, 191, 59,
    ];

    /// Each message's headers (name, value shown) and payload, and how the stream ended.
    type Decoded = (
        Vec<(Vec<(String, String)>, Vec<u8>)>,
        Result<(), FrameError>,
    );

    fn decode_all(stream: &[u8], cuts: &[usize]) -> Decoded {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        let mut start = 0;
        let mut result = Ok(());
        let mut push = |m: Message<'_>| {
            let headers = m
                .headers()
                .map(|(n, v)| (n.to_owned(), format!("{v:?}")))
                .collect();
            got.push((headers, m.payload.to_vec()));
        };
        for c in cuts.into_iter().chain([stream.len()]) {
            if result.is_ok() {
                result = d.feed(stream.get(start..c).unwrap_or_default(), &mut push);
            }
            start = c;
        }
        if result.is_ok() {
            result = d.finish();
        }
        (got, result)
    }

    #[test]
    fn published_examples_encode_and_decode() {
        let mut out = Vec::new();
        encode(&[], br#"{"foo": "bar"}"#, &mut out).expect("encodes");
        assert_eq!(out, NO_HEADERS);
        out.clear();
        encode(
            &[("content-type", HeaderValue::Str("application/json"))],
            br#"{"foo": "bar"}"#,
            &mut out,
        )
        .expect("encodes");
        assert_eq!(out, WITH_HEADER);

        let mut stream = NO_HEADERS.to_vec();
        stream.extend_from_slice(WITH_HEADER);
        let (got, result) = decode_all(&stream, &[]);
        assert_eq!(result, Ok(()));
        assert_eq!(got.len(), 2);
        assert!(got[0].0.is_empty());
        assert_eq!(got[0].1, br#"{"foo": "bar"}"#);
        assert_eq!(
            got[1].0,
            vec![(
                "content-type".to_owned(),
                "Str(\"application/json\")".to_owned()
            )]
        );
        // Every cut gives the same messages, one byte at a time too.
        let cuts: Vec<usize> = (0..stream.len()).collect();
        assert_eq!(decode_all(&stream, &cuts), (got, Ok(())));
    }

    #[test]
    fn every_header_type_round_trips() {
        let headers = [
            ("t", HeaderValue::Bool(true)),
            ("f", HeaderValue::Bool(false)),
            ("b", HeaderValue::Byte(-2)),
            ("s", HeaderValue::Short(-300)),
            ("i", HeaderValue::Int(70_000)),
            ("l", HeaderValue::Long(-5_000_000_000)),
            ("y", HeaderValue::Bytes(&[0, 255, 7])),
            (":event-type", HeaderValue::Str("contentBlockDelta")),
            ("ts", HeaderValue::Timestamp(1_700_000_000_000)),
            ("u", HeaderValue::Uuid([9; 16])),
        ];
        let mut out = Vec::new();
        encode(&headers, b"{}", &mut out).expect("encodes");
        let mut d = Decoder::new();
        let mut seen = 0;
        d.feed(&out, |m| {
            seen += 1;
            assert_eq!(m.headers().collect::<Vec<_>>(), headers.to_vec());
            assert_eq!(m.str_header(":event-type"), Some("contentBlockDelta"));
            assert_eq!(m.str_header("i"), None, "not a string");
            assert_eq!(m.header("l"), Some(HeaderValue::Long(-5_000_000_000)));
            assert_eq!(m.header("missing"), None);
            assert_eq!(m.payload, b"{}");
        })
        .expect("decodes");
        assert_eq!(seen, 1);
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn framing_errors_end_the_stream() {
        let mut good = Vec::new();
        encode_event("messageStart", br#"{"role":"assistant"}"#, &mut good).expect("encodes");

        // A flipped payload byte: the message CRC.
        let mut bad = good.clone();
        let at = bad.len() - 6;
        bad[at] ^= 1;
        let mut stream = good.clone();
        stream.extend_from_slice(&bad);
        stream.extend_from_slice(&good);
        let (got, result) = decode_all(&stream, &[]);
        assert_eq!(got.len(), 1, "the message after the bad one is not read");
        assert_eq!(result, Err(FrameError::MessageCrc));
        let cuts: Vec<usize> = (0..stream.len()).step_by(3).collect();
        assert_eq!(
            decode_all(&stream, &cuts),
            (got, Err(FrameError::MessageCrc))
        );

        // A flipped length byte: the prelude CRC.
        let mut bad = good.clone();
        bad[3] ^= 1;
        assert_eq!(decode_all(&bad, &[]).1, Err(FrameError::PreludeCrc));
        assert_eq!(decode_all(&bad, &[2, 5]).1, Err(FrameError::PreludeCrc));

        // Lengths that cannot be, with a valid prelude CRC.
        let prelude = |total: u32, headers: u32| {
            let mut p = total.to_be_bytes().to_vec();
            p.extend_from_slice(&headers.to_be_bytes());
            let crc = crc32fast::hash(&p);
            p.extend_from_slice(&crc.to_be_bytes());
            p.resize(p.len() + 64, 0);
            p
        };
        assert_eq!(decode_all(&prelude(15, 0), &[]).1, Err(FrameError::Lengths));
        assert_eq!(
            decode_all(&prelude(40, 25), &[]).1,
            Err(FrameError::Lengths)
        );
        let too_long = u32::try_from(MESSAGE_BYTES_MAX + 1).expect("fits");
        assert_eq!(
            decode_all(&prelude(too_long, 0), &[]).1,
            Err(FrameError::TooLong)
        );
        assert_eq!(
            decode_all(&prelude(u32::MAX, 0), &[1]).1,
            Err(FrameError::TooLong)
        );

        // Cut off inside a message (and inside a prelude).
        assert_eq!(
            decode_all(&good[..good.len() - 1], &[]).1,
            Err(FrameError::Truncated)
        );
        assert_eq!(decode_all(&good[..5], &[]).1, Err(FrameError::Truncated));

        // A malformed header: an unknown value type, re-sealed with valid CRCs.
        let reseal = |headers: &[u8]| {
            let total = u32::try_from(headers.len() + OVERHEAD_BYTES).expect("fits");
            let mut m = total.to_be_bytes().to_vec();
            m.extend_from_slice(&u32::try_from(headers.len()).expect("fits").to_be_bytes());
            let crc = crc32fast::hash(&m);
            m.extend_from_slice(&crc.to_be_bytes());
            m.extend_from_slice(headers);
            let crc = crc32fast::hash(&m);
            m.extend_from_slice(&crc.to_be_bytes());
            m
        };
        assert_eq!(
            decode_all(&reseal(&[1, b'a', 10]), &[]).1,
            Err(FrameError::Header)
        );
        assert_eq!(decode_all(&reseal(&[0, 0]), &[]).1, Err(FrameError::Header));
        assert_eq!(
            decode_all(&reseal(&[1, b'a', 7, 0, 5, b'x']), &[]).1,
            Err(FrameError::Header)
        );
        assert_eq!(
            decode_all(&reseal(&[1, b'a', 7, 0, 1, 0xff]), &[]).1,
            Err(FrameError::Header)
        );
        let many: Vec<u8> = (0..=HEADER_COUNT_MAX).flat_map(|_| [1, b'a', 0]).collect();
        assert_eq!(
            decode_all(&reseal(&many), &[]).1,
            Err(FrameError::TooManyHeaders)
        );
        let enough: Vec<u8> = (0..HEADER_COUNT_MAX).flat_map(|_| [1, b'a', 0]).collect();
        assert_eq!(decode_all(&reseal(&enough), &[]).1, Ok(()));

        // After an error, feeding more hands out nothing.
        let mut d = Decoder::new();
        assert_eq!(
            d.feed(&bad, |_| panic!("no message")),
            Err(FrameError::PreludeCrc)
        );
        assert_eq!(
            d.feed(&good, |_| panic!("no message")),
            Err(FrameError::PreludeCrc)
        );
        assert_eq!(d.finish(), Err(FrameError::PreludeCrc));
        assert_eq!(d.error(), Some(FrameError::PreludeCrc));

        // The encoder refuses what it cannot frame.
        let mut out = b"kept".to_vec();
        assert_eq!(
            encode(&[("", HeaderValue::Bool(true))], b"", &mut out),
            Err(FrameError::Header)
        );
        let long = "n".repeat(256);
        assert_eq!(
            encode(&[(&long, HeaderValue::Bool(true))], b"", &mut out),
            Err(FrameError::Header)
        );
        let big = vec![0u8; 70_000];
        assert_eq!(
            encode(&[("a", HeaderValue::Bytes(&big))], b"", &mut out),
            Err(FrameError::Header)
        );
        assert_eq!(
            encode(&[], &vec![0; MESSAGE_BYTES_MAX], &mut out),
            Err(FrameError::TooLong)
        );
        assert_eq!(out, b"kept");
        for e in [
            FrameError::PreludeCrc,
            FrameError::MessageCrc,
            FrameError::Lengths,
            FrameError::TooLong,
            FrameError::Header,
            FrameError::TooManyHeaders,
            FrameError::Truncated,
        ] {
            let m = e.message();
            assert!(m.is_ascii() && !m.contains('"') && !m.contains('\\'), "{m}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Messages encoded, then cut anywhere: the same messages, and no error.
        #[test]
        fn cut_independent(
            payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..6),
            cuts in prop::collection::vec(any::<usize>(), 0..10),
        ) {
            let mut stream = Vec::new();
            for (i, p) in payloads.iter().enumerate() {
                let name = format!("e{i}");
                encode_event(&name, p, &mut stream).expect("encodes");
            }
            let whole = decode_all(&stream, &[]);
            prop_assert_eq!(whole.1, Ok(()));
            prop_assert_eq!(whole.0.len(), payloads.len());
            for (got, p) in whole.0.iter().zip(&payloads) {
                prop_assert_eq!(&got.1, p);
            }
            prop_assert_eq!(decode_all(&stream, &cuts), whole);
        }

        /// Any bytes: no panic, and the same result however cut.
        #[test]
        fn any_bytes(stream in prop::collection::vec(any::<u8>(), 0..256), cuts in prop::collection::vec(any::<usize>(), 0..6)) {
            prop_assert_eq!(decode_all(&stream, &cuts), decode_all(&stream, &[]));
        }
    }
}
