//! Server-sent events (`text/event-stream`), free of I/O: where an event ends ([`EventEnds`],
//! [`event_end`]), a [`Splitter`] that hands out whole events however the stream was cut into
//! reads, and the fields of an event ([`field`], [`event_data`]). The SSE filter and the usage
//! scanner (`llm`), the stream translators (`provider`) and the budget cut of a relayed stream
//! (`conn`) all split streams here.
//!
//! An event ends at a blank line. Lines end in `\n` or `\r\n` (what OpenAI, Anthropic, vLLM and
//! Ollama send); a lone `\r` as a line end, which the SSE spec also allows, is not recognised,
//! so such a stream reads as one unfinished event.

/// What the current, unfinished line holds so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Line {
    #[default]
    Empty,
    /// Only a `\r`.
    Cr,
    Text,
}

/// Finds where events end in a stream read in pieces: it remembers what the current,
/// unfinished line holds, so a blank line split over two reads is still found.
#[derive(Debug, Clone, Copy, Default)]
pub struct EventEnds {
    line: Line,
}

impl EventEnds {
    /// Just past the blank line that ends the first event `input` completes, `input` being the
    /// next bytes of the stream; `None` when it completes none (the state then covers all of
    /// `input`).
    pub fn find(&mut self, input: &[u8]) -> Option<usize> {
        let mut line_start = 0;
        while let Some(lf) = input
            .get(line_start..)
            .and_then(find_lf)
            .map(|p| line_start + p)
        {
            let blank = match self.line {
                Line::Empty => lf == line_start || input.get(line_start..lf) == Some(b"\r"),
                Line::Cr => lf == line_start,
                Line::Text => false,
            };
            self.line = Line::Empty;
            line_start = lf + 1;
            if blank {
                return Some(line_start);
            }
        }
        self.line = match (self.line, input.get(line_start..).unwrap_or_default()) {
            (line, []) => line,
            (Line::Empty, [b'\r']) => Line::Cr,
            _ => Line::Text,
        };
        None
    }
}

/// Just past the blank line that ends the first event in `data` (`data` starting at the start
/// of a line), if one ends there.
pub fn event_end(data: &[u8]) -> Option<usize> {
    EventEnds::default().find(data)
}

/// The first `\n` in `s`, eight bytes at a time.
fn find_lf(s: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(word) = s.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let x = u64::from_le_bytes(w) ^ (ONES * u64::from(b'\n'));
        // The classic "has a zero byte" test: its lowest set bit marks the first one exactly.
        let zero = x.wrapping_sub(ONES) & !x & HIGHS;
        if zero != 0 {
            return Some(i + (zero.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    s.get(i..)?.iter().position(|b| *b == b'\n').map(|p| i + p)
}

/// What [`Splitter::feed`] hands out, in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// A whole event of at most `MAX` bytes, including the blank line that ends it.
    Event(&'a [u8]),
    /// Bytes of an event longer than that (handed out as they arrive, never held), or of an
    /// event whose end never came (from [`Splitter::flush`]).
    Unexamined(&'a [u8]),
}

/// Splits a stream into events of at most `MAX` bytes. The start of an event whose end has not
/// arrived is held in a buffer the caller owns (so the usage scanner shares one buffer between
/// its JSON and SSE modes, and a caller that must not reallocate gives it room for `MAX` bytes
/// once); events that arrive whole are handed out from the input itself. Whether an event is
/// whole or unexamined depends only on its length, never on how the stream was cut into reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Splitter<const MAX: usize> {
    ends: EventEnds,
    /// The current event is longer than `MAX`: pass its bytes on as they come.
    oversized: bool,
}

impl<const MAX: usize> Splitter<MAX> {
    /// Hand out the events completed by `input`, and hold the start of the next one in `buf`
    /// (never more than `MAX` bytes).
    pub fn feed(&mut self, buf: &mut Vec<u8>, input: &[u8], mut f: impl FnMut(Piece<'_>)) {
        let mut rest = input;
        while !rest.is_empty() {
            let end = self.ends.find(rest);
            let (part, after) = rest.split_at(end.unwrap_or(rest.len()));
            rest = after;
            if self.oversized {
                self.oversized = end.is_none();
                f(Piece::Unexamined(part));
            } else if buf.len() + part.len() > MAX {
                if !buf.is_empty() {
                    f(Piece::Unexamined(buf));
                    buf.clear();
                }
                self.oversized = end.is_none();
                f(Piece::Unexamined(part));
            } else if end.is_none() {
                buf.extend_from_slice(part);
            } else if buf.is_empty() {
                f(Piece::Event(part));
            } else {
                buf.extend_from_slice(part);
                f(Piece::Event(buf));
                buf.clear();
            }
        }
    }

    /// At the end of the stream: hand out the held start of an unfinished event (unexamined)
    /// and start afresh.
    pub fn flush(&mut self, buf: &mut Vec<u8>, mut f: impl FnMut(Piece<'_>)) {
        if !buf.is_empty() {
            f(Piece::Unexamined(buf));
        }
        buf.clear();
        *self = Self::default();
    }
}

/// A line's field name and value, the line's end removed: `name: value` (one leading space
/// dropped from the value) or `name` alone (an empty value). A comment (`: ...`) has an empty
/// name.
pub fn field(line: &[u8]) -> (&[u8], &[u8]) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line.iter().position(|b| *b == b':') {
        Some(c) => {
            let (name, value) = line.split_at(c);
            let value = value.get(1..).unwrap_or_default();
            (name, value.strip_prefix(b" ").unwrap_or(value))
        }
        None => (line, &[]),
    }
}

/// The lines of `event`, each without its `\n` (a `\r` before it is kept), found eight bytes at a
/// time.
pub fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(event);
    std::iter::from_fn(move || {
        let r = rest?;
        match find_lf(r) {
            Some(lf) => {
                rest = r.get(lf + 1..);
                r.get(..lf)
            }
            None => rest.take(),
        }
    })
}

/// The data of an event: its `data` fields' values joined by `\n`, or `None` when it has none.
/// One `data` line (what providers send) is borrowed from the event; several are joined in
/// `scratch` (given room for the whole event, so a reused `scratch` stops growing). `each` sees
/// every line of the event on the way, for a caller that reads other fields too.
pub fn event_data<'a>(
    event: &'a [u8],
    scratch: &'a mut Vec<u8>,
    mut each: impl FnMut(&'a [u8]),
) -> Option<&'a [u8]> {
    let mut first: Option<&'a [u8]> = None;
    let mut joined = false;
    for line in lines(event) {
        each(line);
        let (b"data", value) = field(line) else {
            continue;
        };
        match first {
            None => first = Some(value),
            Some(f) => {
                if !joined {
                    scratch.clear();
                    scratch.reserve(event.len());
                    scratch.extend_from_slice(f);
                    joined = true;
                }
                scratch.push(b'\n');
                scratch.extend_from_slice(value);
            }
        }
    }
    if joined {
        let scratch: &'a Vec<u8> = scratch;
        Some(scratch.as_slice())
    } else {
        first
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 32;

    /// `input` cut at `cuts` (offsets, any order, taken modulo its length + 1).
    pub(crate) fn pieces<'a>(input: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for c in cuts {
            out.push(&input[at..c]);
            at = c;
        }
        out.push(&input[at..]);
        out
    }

    /// What a [`Splitter`] hands out for `input` cut at `cuts`: `(whole, bytes)` per piece,
    /// neighbouring unexamined pieces merged (how many there are depends on the cuts).
    fn split(input: &[u8], cuts: &[usize]) -> Vec<(bool, Vec<u8>)> {
        let mut s = Splitter::<MAX>::default();
        let mut buf = Vec::new();
        let mut out: Vec<(bool, Vec<u8>)> = Vec::new();
        let mut push = |p: Piece<'_>| match p {
            Piece::Event(e) => out.push((true, e.to_vec())),
            Piece::Unexamined(u) => match out.last_mut() {
                Some((false, last)) => last.extend_from_slice(u),
                _ => out.push((false, u.to_vec())),
            },
        };
        for piece in pieces(input, cuts) {
            s.feed(&mut buf, piece, &mut push);
            assert!(buf.len() <= MAX, "holds at most MAX bytes");
        }
        s.flush(&mut buf, &mut push);
        assert!(buf.is_empty());
        out
    }

    fn ends(data: &[u8]) -> Vec<usize> {
        let mut e = EventEnds::default();
        let mut at = 0;
        let mut out = Vec::new();
        while let Some(n) = e.find(&data[at..]) {
            at += n;
            out.push(at);
        }
        out
    }

    #[test]
    fn blank_lines_end_events_with_either_line_end() {
        assert_eq!(event_end(b"data: x\n\ndata: y\n\n"), Some(9));
        assert_eq!(event_end(b"data: x\r\n\r\ndata: y"), Some(11));
        // Mixed line ends, as the filter reads them.
        assert_eq!(event_end(b"data: x\n\r\n"), Some(10));
        assert_eq!(event_end(b"data: x\r\n\n"), Some(10));
        // A blank line at the start ends an (empty) event.
        assert_eq!(event_end(b"\ndata: x\n\n"), Some(1));
        assert_eq!(event_end(b"\r\n"), Some(2));
        // No blank line: no end; a lone `\r` is no line end.
        assert_eq!(event_end(b"data: x\n"), None);
        assert_eq!(event_end(b"data: x\r\rdata: y\r\r"), None);
        assert_eq!(event_end(b""), None);
        assert_eq!(ends(b"a\n\nb\n\n\n:c\r\n\r\n"), [3, 6, 7, 13]);
    }

    #[test]
    fn ends_are_found_across_reads() {
        // `\n` | `\n`, `\r` | `\n`, `\n\r` | `\n`: the blank line is split over two reads.
        for (a, b, at) in [
            (&b"data: x\n"[..], &b"\ndata"[..], 1),
            (b"data: x\n\r", b"\n", 1),
            (b"data: x\r\n\r", b"\n", 1),
            (b"data: x\r\n", b"\r\n", 2),
        ] {
            let mut e = EventEnds::default();
            assert_eq!(e.find(a), None);
            assert_eq!(e.find(b), Some(at), "{a:?} {b:?}");
        }
        // A line that ends at the cut is not blank because the next read starts with `\n`.
        let mut e = EventEnds::default();
        assert_eq!(e.find(b"data: x"), None);
        assert_eq!(e.find(b"\n"), None);
        assert_eq!(e.find(b"\n"), Some(1));
    }

    #[test]
    fn find_lf_matches_a_byte_loop() {
        for len in 0..40 {
            for at in 0..=len {
                let mut s = vec![b'a'; len];
                for (k, b) in s.iter_mut().enumerate() {
                    // Bytes near `\n` (0x0a): a borrow must not flag a byte below the first.
                    *b = [b'a', 0x0b, 0x09, 0x8a, 0x00][k % 5];
                }
                if at < len {
                    s[at] = b'\n';
                    if at + 3 < len {
                        s[at + 3] = b'\n';
                    }
                }
                assert_eq!(find_lf(&s), s.iter().position(|b| *b == b'\n'), "{s:?}");
            }
        }
    }

    #[test]
    fn lines_are_what_split_gives() {
        for event in [
            &b""[..],
            b"\n",
            b"a",
            b"data: x\r\n\r\n",
            b"event: e\ndata: 0123456789\n\nx",
        ] {
            let want: Vec<&[u8]> = event.split(|b| *b == b'\n').collect();
            assert_eq!(lines(event).collect::<Vec<_>>(), want);
        }
        let mut seen = Vec::new();
        let mut scratch = Vec::new();
        event_data(b"event: e\ndata: 1\n", &mut scratch, |l| seen.push(l));
        assert_eq!(seen, [&b"event: e"[..], b"data: 1", b""]);
    }

    #[test]
    fn whole_events_are_borrowed_split_ones_held() {
        let mut s = Splitter::<MAX>::default();
        let mut buf = Vec::new();
        let input = b"data: 1\n\ndata: 2\n\ndata: 3";
        let mut got = Vec::new();
        s.feed(&mut buf, input, |p| {
            if let Piece::Event(e) = p {
                // Borrowed from the input.
                assert!(input.as_ptr_range().contains(&e.as_ptr()));
                got.push(e.to_vec());
            }
        });
        assert_eq!(got, [b"data: 1\n\n".to_vec(), b"data: 2\n\n".to_vec()]);
        assert_eq!(buf, b"data: 3");
        s.feed(&mut buf, b"\n\n", |p| {
            assert_eq!(p, Piece::Event(b"data: 3\n\n"))
        });
        assert!(buf.is_empty());
    }

    #[test]
    fn events_over_max_pass_unexamined_and_unfinished_ones_at_flush() {
        let fits = format!("data: {}\n\n", "x".repeat(MAX - 8));
        let over = format!("data: {}\n\n", "x".repeat(MAX - 7));
        let stream = format!("{fits}{over}{fits}data: tail");
        let want = vec![
            (true, fits.clone().into_bytes()),
            (false, over.clone().into_bytes()),
            (true, fits.clone().into_bytes()),
            (false, b"data: tail".to_vec()),
        ];
        for cut in 0..=stream.len() {
            assert_eq!(split(stream.as_bytes(), &[cut]), want, "cut at {cut}");
        }
    }

    #[test]
    fn fields_and_data() {
        assert_eq!(field(b"data: x"), (&b"data"[..], &b"x"[..]));
        assert_eq!(field(b"data:  x\r"), (&b"data"[..], &b" x"[..]));
        assert_eq!(field(b"data"), (&b"data"[..], &b""[..]));
        assert_eq!(field(b": comment"), (&b""[..], &b"comment"[..]));
        assert_eq!(field(b"event:a:b"), (&b"event"[..], &b"a:b"[..]));
        let mut scratch = Vec::new();
        assert_eq!(
            event_data(b"event: e\ndata: 1\n\n", &mut scratch, |_| {}),
            Some(&b"1"[..])
        );
        assert!(scratch.is_empty(), "one data line is borrowed");
        assert_eq!(
            event_data(
                b"data:{\r\ndatax: no\ndata\n: c\ndata:  }\r\n\r\n",
                &mut scratch,
                |_| {}
            ),
            Some(&b"{\n\n }"[..])
        );
        assert_eq!(event_data(b"event: e\n: c\n\n", &mut scratch, |_| {}), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]

        /// The same pieces however the stream is cut, and every byte handed out once, in order.
        #[test]
        fn split_independent_and_lossless(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n\rdata: x".to_vec()), 0..200),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = split(&stream, &[]);
            prop_assert_eq!(split(&stream, &cuts), whole.clone());
            let bytes: Vec<u8> = whole.iter().flat_map(|(_, b)| b.iter().copied()).collect();
            prop_assert_eq!(bytes, stream.clone());
            // Events end exactly where the stream's blank lines do, and only there.
            let mut at = 0;
            let ends = ends(&stream);
            for (whole, bytes) in &whole {
                at += bytes.len();
                if *whole {
                    prop_assert!(bytes.len() <= MAX && ends.contains(&at));
                }
            }
        }

        /// Where events end, however the stream is cut, is where a byte loop finds a line
        /// that is empty or `\r` after a `\n` (or at the start).
        #[test]
        fn ends_agree_with_a_line_loop(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\nx".to_vec()), 0..64),
            cut in any::<usize>(),
        ) {
            let mut want = Vec::new();
            let mut line_start = 0;
            for (i, b) in stream.iter().enumerate() {
                if *b == b'\n' {
                    if matches!(&stream[line_start..i], [] | [b'\r']) {
                        want.push(i + 1);
                    }
                    line_start = i + 1;
                }
            }
            prop_assert_eq!(ends(&stream), want.clone());
            let cut = cut % (stream.len() + 1);
            let mut e = EventEnds::default();
            let mut got = Vec::new();
            for (offset, part) in [(0, &stream[..cut]), (cut, &stream[cut..])] {
                let mut at = 0;
                while let Some(n) = e.find(&part[at..]) {
                    at += n;
                    got.push(offset + at);
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
