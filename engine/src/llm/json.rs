//! A strict JSON scanner (RFC 8259) that validates and walks a document without allocating.
//!
//! It never builds a tree: [`Members`] and [`Elements`] walk an object or an array one entry at
//! a time and hand out [`Value`]s, which are byte ranges of the document with their kind. Every
//! value skipped on the way is validated, so walking a whole top-level object validates the whole
//! document in one pass. Nesting is tracked in a 128-bit stack, not by recursion, so a hostile
//! document cannot overflow the thread's stack; deeper than [`JSON_DEPTH_MAX`] is an error.
//!
//! Why not sonic-rs: `sonic_rs::get` and `to_object_iter` allocate a key buffer on every call,
//! stop at the first matching key (a duplicate key later in the document is never seen), and do
//! not validate what follows the value they return. The gateway must read the same document the
//! upstream reads, so it validates everything and sees every top-level key; this scanner does
//! that with no allocation. UTF-8 is not checked here: callers that need it check the whole
//! document once with `std::str::from_utf8`.
//!
//! Templates walk request bodies with it too ([`Members::spanned`] says where each member
//! stands, so members can be cut out or copied as written). And [`write_str`] is the one JSON
//! string writer of the project: the access log, the stream translators, the SSE filter's error
//! event and templates all escape through it. It lives in `shardgate_core::json` (config-time
//! templates escape with it too) and is re-exported here; this scanner skips through string
//! content with its eight-bytes-at-a-time search ([`skip_plain`]).

use super::JSON_DEPTH_MAX;
use shardgate_core::json::skip_plain;
pub(crate) use shardgate_core::json::{write_str, write_str_content};

// The nesting stack is one bit per level in a u128.
const _: () = assert!(JSON_DEPTH_MAX >= 1 && JSON_DEPTH_MAX <= 128);

/// Why a document was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum JsonError {
    /// Not valid JSON.
    Invalid,
    /// Nested deeper than [`JSON_DEPTH_MAX`].
    TooDeep,
}

/// The kind of a JSON value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Object,
    Array,
    /// `escaped`: the string contains at least one backslash escape.
    String {
        escaped: bool,
    },
    Number,
    True,
    False,
    Null,
}

/// One value of a document: `doc[start..end]`, from its first byte (after whitespace) to just
/// past its last.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Value<'a> {
    doc: &'a [u8],
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: Kind,
}

impl<'a> Value<'a> {
    /// The value's bytes.
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.doc.get(self.start..self.end).unwrap_or_default()
    }

    pub(crate) fn is_null(&self) -> bool {
        self.kind == Kind::Null
    }

    pub(crate) fn as_bool(&self) -> Option<bool> {
        match self.kind {
            Kind::True => Some(true),
            Kind::False => Some(false),
            _ => None,
        }
    }

    /// A non-negative integer written without fraction or exponent that fits a u64.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        if self.kind != Kind::Number {
            return None;
        }
        let raw = self.raw();
        if raw.is_empty() {
            return None;
        }
        raw.iter().try_fold(0u64, |n, &d| {
            if !d.is_ascii_digit() {
                return None;
            }
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })
    }

    /// A string's content between the quotes (still escaped) and whether it has escapes.
    pub(crate) fn as_raw_str(&self) -> Option<(&'a [u8], bool)> {
        match self.kind {
            Kind::String { escaped } => {
                let inner = self.doc.get(self.start + 1..self.end.checked_sub(1)?)?;
                Some((inner, escaped))
            }
            _ => None,
        }
    }

    /// Whether this is a string with at least one character.
    pub(crate) fn is_nonempty_str(&self) -> bool {
        matches!(self.kind, Kind::String { .. }) && self.end.saturating_sub(self.start) > 2
    }

    /// Whether this is an array with at least one element.
    pub(crate) fn is_nonempty_array(&self) -> bool {
        self.kind == Kind::Array && self.doc.get(skip_ws(self.doc, self.start + 1)) != Some(&b']')
    }

    /// The members of an object (the value was validated when it was skipped).
    pub(crate) fn members(&self) -> Option<Members<'a>> {
        if self.kind != Kind::Object {
            return None;
        }
        Members::new(self.doc, self.start, JSON_DEPTH_MAX).ok()
    }

    /// The elements of an array.
    pub(crate) fn elements(&self) -> Option<Elements<'a>> {
        if self.kind != Kind::Array {
            return None;
        }
        Some(Elements {
            doc: self.doc,
            pos: self.start + 1,
            first: true,
            done: false,
        })
    }
}

/// An object key as it is written (between the quotes, escapes not decoded).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Key<'a> {
    raw: &'a [u8],
    escaped: bool,
}

impl<'a> Key<'a> {
    /// The key as written (between its quotes, escapes not decoded): a slice of the document.
    pub(crate) fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// Whether the key, once its escapes are decoded, is exactly `name`. `"mod\u0065l"` is
    /// `model`: the upstream decodes keys, so the gateway must too.
    pub(crate) fn is(&self, name: &str) -> bool {
        let name = name.as_bytes();
        if !self.escaped {
            return self.raw == name;
        }
        let mut at = 0;
        let complete = unescape(self.raw, |piece| {
            let matches = name.get(at..at + piece.len()) == Some(piece);
            at += piece.len();
            matches
        });
        complete && at == name.len()
    }
}

/// The members of one object, walked in order. Each item is validated as it is reached; after
/// an error the walk ends.
#[derive(Debug, Clone)]
pub(crate) struct Members<'a> {
    doc: &'a [u8],
    open: usize,
    pos: usize,
    first: bool,
    state: WalkState,
    /// Levels left for the member values.
    depth_left: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WalkState {
    Walking,
    Closed,
    Failed,
}

impl<'a> Members<'a> {
    /// The object whose `{` is the first non-whitespace byte at or after `at`. `depth_left`
    /// counts this object's own level.
    pub(crate) fn new(doc: &'a [u8], at: usize, depth_left: usize) -> Result<Self, JsonError> {
        let open = skip_ws(doc, at);
        if doc.get(open) != Some(&b'{') {
            return Err(JsonError::Invalid);
        }
        let depth_left = depth_left.checked_sub(1).ok_or(JsonError::TooDeep)?;
        Ok(Self {
            doc,
            open,
            pos: open + 1,
            first: true,
            state: WalkState::Walking,
            depth_left,
        })
    }

    /// Where the object's `{` is.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// After the walk: `Ok` if the object closed and only whitespace follows it to the end of
    /// the document (the object was the whole document).
    pub(crate) fn finish_document(&self) -> Result<(), JsonError> {
        match self.state {
            WalkState::Closed if skip_ws(self.doc, self.pos) == self.doc.len() => Ok(()),
            _ => Err(JsonError::Invalid),
        }
    }

    fn next_member(&mut self) -> Result<Option<(Key<'a>, Value<'a>)>, JsonError> {
        let doc = self.doc;
        let mut i = skip_ws(doc, self.pos);
        match (self.first, doc.get(i)) {
            (_, Some(b'}')) => {
                self.pos = i + 1;
                return Ok(None);
            }
            (false, Some(b',')) => i = skip_ws(doc, i + 1),
            (true, _) => {}
            _ => return Err(JsonError::Invalid),
        }
        self.first = false;
        if doc.get(i) != Some(&b'"') {
            return Err(JsonError::Invalid);
        }
        let (key_end, escaped) = string_end(doc, i)?;
        let raw = doc.get(i + 1..key_end - 1).ok_or(JsonError::Invalid)?;
        let colon = skip_ws(doc, key_end);
        if doc.get(colon) != Some(&b':') {
            return Err(JsonError::Invalid);
        }
        let value = skip_value(doc, colon + 1, self.depth_left)?;
        self.pos = value.end;
        Ok(Some((Key { raw, escaped }, value)))
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Result<(Key<'a>, Value<'a>), JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.state != WalkState::Walking {
            return None;
        }
        match self.next_member() {
            Ok(Some(m)) => Some(Ok(m)),
            Ok(None) => {
                self.state = WalkState::Closed;
                None
            }
            Err(e) => {
                self.state = WalkState::Failed;
                Some(Err(e))
            }
        }
    }
}

impl<'a> Members<'a> {
    /// The members with where each stands in the document ([`Member`]), for a caller that
    /// copies or cuts them.
    pub(crate) fn spanned(self) -> Spanned<'a> {
        Spanned(self)
    }
}

/// A member and the bytes it stands on: `doc[start..end]` runs from just after the `{` or `,`
/// before it to the `,` or `}` after it, whitespace around the key and the value included.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Member<'a> {
    pub(crate) key: Key<'a>,
    pub(crate) value: Value<'a>,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

/// [`Members`] with where each stands: made by [`Members::spanned`].
#[derive(Debug, Clone)]
pub(crate) struct Spanned<'a>(Members<'a>);

impl Spanned<'_> {
    /// After the walk: where the object's `}` is, if it closed.
    pub(crate) fn close(&self) -> Option<usize> {
        match self.0.state {
            WalkState::Closed => self.0.pos.checked_sub(1),
            _ => None,
        }
    }
}

impl<'a> Iterator for Spanned<'a> {
    type Item = Result<Member<'a>, JsonError>;

    fn next(&mut self) -> Option<Self::Item> {
        let m = &mut self.0;
        // After the `{`, or after the `,` that follows the last value.
        let start = if m.first {
            m.pos
        } else {
            skip_ws(m.doc, m.pos) + 1
        };
        let member = m.next()?.map(|(key, value)| Member {
            key,
            value,
            start,
            end: skip_ws(m.doc, value.end),
        });
        Some(member)
    }
}

/// The elements of one array (already validated: made by [`Value::elements`]).
#[derive(Debug, Clone)]
pub(crate) struct Elements<'a> {
    doc: &'a [u8],
    pos: usize,
    first: bool,
    done: bool,
}

impl<'a> Iterator for Elements<'a> {
    type Item = Value<'a>;

    fn next(&mut self) -> Option<Value<'a>> {
        if self.done {
            return None;
        }
        let doc = self.doc;
        let mut i = skip_ws(doc, self.pos);
        match (self.first, doc.get(i)) {
            (_, Some(b']')) => {
                self.done = true;
                return None;
            }
            (false, Some(b',')) => i += 1,
            (true, _) => {}
            _ => {
                self.done = true;
                return None;
            }
        }
        self.first = false;
        match skip_value(doc, i, JSON_DEPTH_MAX) {
            Ok(v) => {
                self.pos = v.end;
                Some(v)
            }
            Err(_) => {
                self.done = true;
                None
            }
        }
    }
}

/// Validate `doc` as exactly one JSON value with optional whitespace around it.
#[cfg(test)]
pub(crate) fn validate(doc: &[u8]) -> Result<(), JsonError> {
    let v = skip_value(doc, 0, JSON_DEPTH_MAX)?;
    if skip_ws(doc, v.end) == doc.len() {
        Ok(())
    } else {
        Err(JsonError::Invalid)
    }
}

pub(crate) fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// The first non-whitespace position at or after `i` (or the document's length).
pub(crate) fn skip_ws(doc: &[u8], mut i: usize) -> usize {
    while doc.get(i).is_some_and(|b| is_ws(*b)) {
        i += 1;
    }
    i.min(doc.len())
}

/// Validate and skip the value that starts at the first non-whitespace byte at or after `at`,
/// nesting at most `depth_left` levels.
pub(crate) fn skip_value(doc: &[u8], at: usize, depth_left: usize) -> Result<Value<'_>, JsonError> {
    let start = skip_ws(doc, at);
    let kind = match doc.get(start) {
        Some(b'{') => Kind::Object,
        Some(b'[') => Kind::Array,
        Some(_) => {
            let (end, kind) = skip_scalar(doc, start)?;
            return Ok(Value {
                doc,
                start,
                end,
                kind,
            });
        }
        None => return Err(JsonError::Invalid),
    };

    #[derive(Clone, Copy)]
    enum Expect {
        /// A value (possibly a container) at `i`.
        Value,
        /// An object key, then a colon.
        Key,
        /// `,` or the close of the innermost container.
        Next,
    }
    let depth_max = depth_left.min(JSON_DEPTH_MAX);
    // Bit `d` set: the container at depth `d` is an array.
    let mut arrays: u128 = 0;
    let mut depth = 0usize;
    let mut i = start;
    let mut expect = Expect::Value;
    loop {
        match expect {
            Expect::Value => {
                i = skip_ws(doc, i);
                let is_array = match doc.get(i) {
                    Some(b'{') => false,
                    Some(b'[') => true,
                    Some(_) => {
                        i = skip_scalar(doc, i)?.0;
                        expect = Expect::Next;
                        continue;
                    }
                    None => return Err(JsonError::Invalid),
                };
                if depth >= depth_max {
                    return Err(JsonError::TooDeep);
                }
                if is_array {
                    arrays |= 1u128 << depth;
                } else {
                    arrays &= !(1u128 << depth);
                }
                depth += 1;
                i = skip_ws(doc, i + 1);
                let close = if is_array { b']' } else { b'}' };
                if doc.get(i) == Some(&close) {
                    i += 1;
                    depth -= 1;
                    expect = Expect::Next;
                } else if is_array {
                    expect = Expect::Value;
                } else {
                    expect = Expect::Key;
                }
            }
            Expect::Key => {
                i = skip_ws(doc, i);
                if doc.get(i) != Some(&b'"') {
                    return Err(JsonError::Invalid);
                }
                i = skip_ws(doc, string_end(doc, i)?.0);
                if doc.get(i) != Some(&b':') {
                    return Err(JsonError::Invalid);
                }
                i += 1;
                expect = Expect::Value;
            }
            Expect::Next => {
                if depth == 0 {
                    return Ok(Value {
                        doc,
                        start,
                        end: i,
                        kind,
                    });
                }
                let in_array = (arrays >> (depth - 1)) & 1 == 1;
                i = skip_ws(doc, i);
                match (doc.get(i), in_array) {
                    (Some(b','), true) => {
                        i += 1;
                        expect = Expect::Value;
                    }
                    (Some(b','), false) => {
                        i += 1;
                        expect = Expect::Key;
                    }
                    (Some(b']'), true) | (Some(b'}'), false) => {
                        i += 1;
                        depth -= 1;
                    }
                    _ => return Err(JsonError::Invalid),
                }
            }
        }
    }
}

/// A string, number or literal at `i` (no whitespace): its end and kind.
fn skip_scalar(doc: &[u8], i: usize) -> Result<(usize, Kind), JsonError> {
    let literal = |text: &[u8], kind: Kind| {
        if doc.get(i..i + text.len()) == Some(text) {
            Ok((i + text.len(), kind))
        } else {
            Err(JsonError::Invalid)
        }
    };
    match doc.get(i) {
        Some(b'"') => {
            let (end, escaped) = string_end(doc, i)?;
            Ok((end, Kind::String { escaped }))
        }
        Some(b'-' | b'0'..=b'9') => Ok((number_end(doc, i)?, Kind::Number)),
        Some(b't') => literal(b"true", Kind::True),
        Some(b'f') => literal(b"false", Kind::False),
        Some(b'n') => literal(b"null", Kind::Null),
        _ => Err(JsonError::Invalid),
    }
}

/// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?` at `i`: its end.
fn number_end(doc: &[u8], mut i: usize) -> Result<usize, JsonError> {
    let digits_end = |from: usize| {
        let mut j = from;
        while doc.get(j).is_some_and(u8::is_ascii_digit) {
            j += 1;
        }
        j
    };
    if doc.get(i) == Some(&b'-') {
        i += 1;
    }
    match doc.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits_end(i + 1),
        _ => return Err(JsonError::Invalid),
    }
    if doc.get(i) == Some(&b'.') {
        let j = digits_end(i + 1);
        if j == i + 1 {
            return Err(JsonError::Invalid);
        }
        i = j;
    }
    if matches!(doc.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(doc.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let j = digits_end(i);
        if j == i {
            return Err(JsonError::Invalid);
        }
        i = j;
    }
    Ok(i)
}

/// The string whose opening quote is at `open`: the position just past its closing quote, and
/// whether it has escapes. Control bytes and invalid escapes are errors.
fn string_end(doc: &[u8], open: usize) -> Result<(usize, bool), JsonError> {
    let mut i = open + 1;
    let mut escaped = false;
    loop {
        // Most of a prompt is skipped here, eight bytes at a time.
        i = skip_plain(doc, i);
        match doc.get(i) {
            Some(b'"') => return Ok((i + 1, escaped)),
            Some(b'\\') => {
                escaped = true;
                i = match doc.get(i + 1) {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => i + 2,
                    Some(b'u') => {
                        let hex = doc.get(i + 2..i + 6).ok_or(JsonError::Invalid)?;
                        if !hex.iter().all(u8::is_ascii_hexdigit) {
                            return Err(JsonError::Invalid);
                        }
                        i + 6
                    }
                    _ => return Err(JsonError::Invalid),
                };
            }
            Some(&b) if b < 0x20 => return Err(JsonError::Invalid),
            Some(_) => i += 1,
            None => return Err(JsonError::Invalid),
        }
    }
}

/// Decode the escapes of a string's content (as [`string_end`] validated it), handing the
/// decoded bytes to `sink` piece by piece; `sink` returns `false` to stop. Returns `true` when
/// the whole string was decoded and `sink` never stopped; `false` on a stop, an invalid escape
/// or an unpaired surrogate (which has no UTF-8 form).
pub(crate) fn unescape(raw: &[u8], mut sink: impl FnMut(&[u8]) -> bool) -> bool {
    let mut i = 0;
    while i < raw.len() {
        let run_end = raw
            .get(i..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\\'))
            .map_or(raw.len(), |p| i + p);
        if run_end > i && !sink(raw.get(i..run_end).unwrap_or_default()) {
            return false;
        }
        if run_end == raw.len() {
            return true;
        }
        i = run_end;
        let single = match raw.get(i + 1) {
            Some(b'"') => b'"',
            Some(b'\\') => b'\\',
            Some(b'/') => b'/',
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'u') => {
                let Some(high) = hex4(raw.get(i + 2..i + 6)) else {
                    return false;
                };
                let (code, next) = match high {
                    0xD800..=0xDBFF => {
                        if raw.get(i + 6..i + 8) != Some(b"\\u") {
                            return false;
                        }
                        match hex4(raw.get(i + 8..i + 12)) {
                            Some(low @ 0xDC00..=0xDFFF) => {
                                (0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), i + 12)
                            }
                            _ => return false,
                        }
                    }
                    0xDC00..=0xDFFF => return false,
                    _ => (high, i + 6),
                };
                let Some(c) = char::from_u32(code) else {
                    return false;
                };
                let mut utf8 = [0u8; 4];
                if !sink(c.encode_utf8(&mut utf8).as_bytes()) {
                    return false;
                }
                i = next;
                continue;
            }
            _ => return false,
        };
        if !sink(&[single]) {
            return false;
        }
        i += 2;
    }
    true
}

/// Decode a string's content (`escaped`: it has escapes) into `buf`: the decoded bytes, or
/// `None` if they do not fit or do not decode. Content without escapes is its own decoding.
pub(crate) fn decode_into<'b>(raw: &'b [u8], escaped: bool, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    if !escaped {
        return (raw.len() <= buf.len()).then_some(raw);
    }
    let mut len = 0usize;
    let complete = unescape(raw, |piece| {
        let Some(dest) = buf.get_mut(len..len + piece.len()) else {
            return false;
        };
        dest.copy_from_slice(piece);
        len += piece.len();
        true
    });
    if complete {
        buf.get(..len)
    } else {
        None
    }
}

fn hex4(digits: Option<&[u8]>) -> Option<u32> {
    let digits = digits?;
    if digits.len() != 4 {
        return None;
    }
    digits.iter().try_fold(0u32, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            b'A'..=b'F' => d - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u32::from(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kinds(doc: &str) -> Vec<(String, Kind)> {
        let mut m = Members::new(doc.as_bytes(), 0, JSON_DEPTH_MAX).expect("object");
        let out = m
            .by_ref()
            .map(|r| {
                let (k, v) = r.expect("member");
                (String::from_utf8_lossy(k.raw).into_owned(), v.kind)
            })
            .collect();
        m.finish_document().expect("whole document");
        out
    }

    #[test]
    fn walks_top_level_members_only() {
        let doc = r#" { "a" : [1, {"b": 2}], "c":"x\"y", "d":-1.5e+3, "e":true, "f":false, "g":null, "h":{} } "#;
        let got = kinds(doc);
        let names: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["a", "c", "d", "e", "f", "g", "h"]);
        assert_eq!(got[1].1, Kind::String { escaped: true });
        assert_eq!(got[6].1, Kind::Object);
    }

    #[test]
    fn accepts_and_refuses_like_the_rfc() {
        for ok in [
            "0",
            "-0",
            "1.5",
            "1e9",
            "1E-9",
            "-12.5e+3",
            "\"\"",
            "\"\\u00e9\\n\"",
            "[]",
            "{}",
            " [ 1 , [ ] , { } ] ",
            "{\"a\":{\"b\":[null,true,false]}}",
            "\"é\"",
        ] {
            assert_eq!(validate(ok.as_bytes()), Ok(()), "{ok}");
        }
        for bad in [
            "",
            " ",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "+1",
            "[1,]",
            "{\"a\":1,}",
            "{,}",
            "[,1]",
            "{\"a\"}",
            "{\"a\":}",
            "{1:2}",
            "tru",
            "nul",
            "\"a",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\t\"",
            "[1 2]",
            "{\"a\":1 \"b\":2}",
            "{} {}",
            "NaN",
            "Infinity",
            "[",
            "]",
            "}",
            "\u{feff}{}",
        ] {
            assert_eq!(validate(bad.as_bytes()), Err(JsonError::Invalid), "{bad:?}");
        }
    }

    #[test]
    fn depth_is_bounded_without_recursion() {
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(validate(deep(JSON_DEPTH_MAX).as_bytes()), Ok(()));
        assert_eq!(
            validate(deep(JSON_DEPTH_MAX + 1).as_bytes()),
            Err(JsonError::TooDeep)
        );
        // A million open brackets: an error, not a stack overflow.
        assert_eq!(
            validate("[".repeat(1_000_000).as_bytes()),
            Err(JsonError::TooDeep)
        );
        // The top-level object counts as one level.
        let doc = format!("{{\"a\":{}}}", deep(JSON_DEPTH_MAX - 1));
        assert_eq!(kinds(&doc).len(), 1);
        let doc = format!("{{\"a\":{}}}", deep(JSON_DEPTH_MAX));
        let mut m = Members::new(doc.as_bytes(), 0, JSON_DEPTH_MAX).expect("object");
        assert_eq!(m.next().map(|r| r.err()), Some(Some(JsonError::TooDeep)));
    }

    #[test]
    fn escaped_keys_compare_decoded() {
        let doc = br#"{"mod\u0065l":1,"\u006D\u006f\u0064\u0065\u006c":2,"m\/x":3,"model\n":4}"#;
        let keys: Vec<Key<'_>> = Members::new(doc, 0, JSON_DEPTH_MAX)
            .expect("object")
            .map(|r| r.expect("member").0)
            .collect();
        assert!(keys[0].is("model"));
        assert!(keys[1].is("model"));
        assert!(keys[2].is("m/x"));
        assert!(!keys[3].is("model"));
        assert!(!keys[0].is("mode"));
        assert!(!keys[0].is("models"));
    }

    #[test]
    fn unescape_decodes_pairs_and_refuses_lone_surrogates() {
        let decode = |raw: &[u8]| {
            let mut out = Vec::new();
            unescape(raw, |p| {
                out.extend_from_slice(p);
                true
            })
            .then_some(out)
        };
        assert_eq!(
            decode(br#"a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00"#).as_deref(),
            Some("a\"b\\c/d\u{8}\u{c}\n\r\té😀".as_bytes())
        );
        assert_eq!(decode(br"\ud83d"), None);
        assert_eq!(decode(br"\ude00"), None);
        assert_eq!(decode(br"\ud83d\u0041"), None);
    }

    #[test]
    fn integers_only_for_as_u64() {
        let doc = br#"[0, 42, 18446744073709551615, 18446744073709551616, -1, 1.0, 1e3, "1"]"#;
        let v = skip_value(doc, 0, JSON_DEPTH_MAX).expect("array");
        let got: Vec<Option<u64>> = v.elements().expect("array").map(|e| e.as_u64()).collect();
        assert_eq!(
            got,
            [
                Some(0),
                Some(42),
                Some(u64::MAX),
                None,
                None,
                None,
                None,
                None
            ]
        );
    }

    #[test]
    fn spanned_members_cover_the_text_between_separators() {
        let doc = br#" { "a" : 1 ,"b":[2, {}]	,
 "c\"d": "x" } "#;
        let mut walk = Members::new(doc, 0, JSON_DEPTH_MAX)
            .expect("object")
            .spanned();
        let spans: Vec<(usize, usize)> = walk
            .by_ref()
            .map(|m| m.map(|m| (m.start, m.end)).expect("member"))
            .collect();
        let text: Vec<&[u8]> = spans.iter().map(|&(a, b)| &doc[a..b]).collect();
        assert_eq!(
            text,
            [
                &br#" "a" : 1 "#[..],
                br#""b":[2, {}]	"#,
                b"\n \"c\\\"d\": \"x\" "
            ]
        );
        assert_eq!(walk.close(), Some(doc.len() - 2));
        let mut empty = Members::new(b"{ }", 0, JSON_DEPTH_MAX)
            .expect("object")
            .spanned();
        assert!(empty.next().is_none());
        assert_eq!(empty.close(), Some(2));
        // Not closed (yet, or ever): no close.
        let mut open = Members::new(b"{\"a\":1", 0, JSON_DEPTH_MAX)
            .expect("object")
            .spanned();
        assert_eq!(open.close(), None);
        assert!(matches!(open.next(), Some(Ok(_))));
        assert!(matches!(open.next(), Some(Err(JsonError::Invalid))));
        assert_eq!(open.close(), None);
    }

    #[test]
    fn decode_into_a_small_buffer() {
        let mut buf = [0u8; 4];
        assert_eq!(decode_into(b"abcd", false, &mut buf), Some(&b"abcd"[..]));
        assert_eq!(decode_into(b"abcde", false, &mut buf), None);
        let mut buf = [0u8; 4];
        assert_eq!(
            decode_into(br"a\u00e9b", true, &mut buf),
            Some("aéb".as_bytes())
        );
        let mut buf = [0u8; 4];
        assert_eq!(decode_into(br"ab\u00e9b", true, &mut buf), None, "too long");
        let mut buf = [0u8; 4];
        assert_eq!(
            decode_into(br"\ud800", true, &mut buf),
            None,
            "no UTF-8 form"
        );
    }

    /// Our verdict, with the UTF-8 check callers add.
    fn ours(doc: &[u8]) -> bool {
        std::str::from_utf8(doc).is_ok() && validate(doc).is_ok()
    }

    /// serde_json's verdict on the syntax alone (`IgnoredAny` neither builds numbers, which
    /// can overflow an f64, nor decodes `\u` escapes).
    fn theirs(doc: &[u8]) -> bool {
        std::str::from_utf8(doc).is_ok()
            && serde_json::from_slice::<serde::de::IgnoredAny>(doc).is_ok()
    }

    /// Bytes drawn from JSON's punctuation and a few letters, so that random documents are
    /// often nearly valid.
    fn jsonish() -> impl Strategy<Value = Vec<u8>> {
        let alphabet: &[u8] = b"{}[]\":, \n01-.eE+tru fals n\\/bx\t";
        prop::collection::vec(prop::sample::select(alphabet.to_vec()), 0..40)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        /// Same verdict as serde_json on documents built from JSON's own characters.
        #[test]
        fn agrees_with_serde_json(doc in jsonish()) {
            prop_assert_eq!(ours(&doc), theirs(&doc), "{:?}", String::from_utf8_lossy(&doc));
        }

        /// Same verdict as serde_json on valid documents with one byte deleted, inserted or
        /// replaced: the near misses where a scanner goes wrong.
        #[test]
        fn agrees_with_serde_json_on_near_misses(
            v in arb_json(),
            pretty in any::<bool>(),
            at in any::<usize>(),
            op in 0u8..3,
            byte in prop::sample::select(b"{}[]\":, \n0-.eE+tfn\\u".to_vec()),
        ) {
            let text = if pretty { serde_json::to_string_pretty(&v) } else { serde_json::to_string(&v) };
            let mut doc = text.expect("serialises").into_bytes();
            let at = at % (doc.len() + 1);
            match op {
                0 if at < doc.len() => { doc.remove(at); }
                1 => doc.insert(at, byte),
                _ if at < doc.len() => doc[at] = byte,
                _ => {}
            }
            prop_assert_eq!(ours(&doc), theirs(&doc), "{:?}", String::from_utf8_lossy(&doc));
        }

        #[test]
        fn agrees_with_serde_json_on_generated_values(v in arb_json()) {
            let text = serde_json::to_string_pretty(&v).expect("serialises");
            prop_assert_eq!(validate(text.as_bytes()), Ok(()));
        }

        #[test]
        fn never_panics(doc in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = validate(&doc);
            if let Ok(m) = Members::new(&doc, 0, JSON_DEPTH_MAX) {
                for r in m {
                    let Ok((k, v)) = r else { break };
                    let _ = k.is("model");
                    let _ = (v.as_u64(), v.as_raw_str(), v.is_nonempty_array());
                }
            }
        }
    }

    pub(crate) fn arb_json() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value as J;
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(J::from),
            ".{0,12}".prop_map(J::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
                prop::collection::vec((".{0,6}", inner), 0..6)
                    .prop_map(|kv| J::Object(kv.into_iter().collect())),
            ]
        })
    }
}
