//! Server-sent events for the stream translators: [`EventReader`] splits a stream fed in pieces
//! of any size into its events, each an `event:` name and its `data` lines joined by `\n`. The
//! events are the same however the stream was cut; nothing here touches a socket.
//!
//! Lines end in `\n` or `\r\n` (what OpenAI, Anthropic, vLLM and Ollama send); a lone `\r` is
//! not a line end. A blank line ends an event; one without `data` lines is no event. A `data`
//! or `event` line is `data` / `event` alone or followed by `:` and the value (one leading space
//! dropped); comments (`:` lines), `id`, `retry` and unknown fields are ignored. A line longer
//! than [`STREAM_EVENT_BYTES_MAX`], or `data` that outgrows it, skips its whole event.

/// The longest SSE line (and the most `data` of one event) the stream translators examine,
/// bytes. A longer event is skipped whole; the events they translate are a few hundred bytes.
pub const STREAM_EVENT_BYTES_MAX: usize = 256 * 1024;
/// The longest `event:` name kept, bytes (Anthropic's longest is `content_block_delta`).
pub(crate) const EVENT_NAME_BYTES_MAX: usize = 64;

const _: () = assert!(EVENT_NAME_BYTES_MAX <= STREAM_EVENT_BYTES_MAX);

/// One complete event, borrowed from the [`EventReader`] until its next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    /// The last `event:` name; empty when none came or it was longer than
    /// [`EVENT_NAME_BYTES_MAX`].
    pub(crate) name: &'a [u8],
    /// The `data` lines' values, joined by `\n`.
    pub(crate) data: &'a [u8],
}

/// Splits a server-sent event stream into [`Event`]s: feed it with [`next_event`](Self::next_event) until
/// that returns `None`, and at the end of the stream call [`finish`](Self::finish) for a last
/// event that lacked its blank line. It holds at most [`STREAM_EVENT_BYTES_MAX`] bytes of line
/// and as many of `data`.
#[derive(Debug, Default)]
pub(crate) struct EventReader {
    /// The current, unfinished line (while it fits in [`STREAM_EVENT_BYTES_MAX`]).
    line: Vec<u8>,
    /// The current line is longer than [`STREAM_EVENT_BYTES_MAX`]: its bytes are dropped.
    line_too_long: bool,
    /// The current event's `data` lines, joined by `\n`.
    data: Vec<u8>,
    has_data: bool,
    /// The current event's `event:` name.
    name: Vec<u8>,
    /// The current event outgrew [`STREAM_EVENT_BYTES_MAX`]: skip it at its end.
    skip_event: bool,
    /// `data` and `name` still hold the event handed out last: clear them before reading on.
    handed_out: bool,
}

impl EventReader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// The next event that `input` completes, with `input` advanced past the line that
    /// completed it; `None` once all of `input` is read (an unfinished last line is kept for
    /// the next call).
    pub(crate) fn next_event<'a>(&mut self, input: &mut &'a [u8]) -> Option<Event<'_>> {
        self.clear_handed_out();
        let mut rest: &'a [u8] = input;
        let complete = loop {
            let Some(p) = rest.iter().position(|b| *b == b'\n') else {
                self.push_line_part(rest);
                rest = &[];
                break false;
            };
            self.push_line_part(rest.get(..p).unwrap_or_default());
            rest = rest.get(p + 1..).unwrap_or_default();
            if self.end_line() {
                break true;
            }
        };
        *input = rest;
        complete.then(|| self.event())
    }

    /// At the end of the stream: the last event, when it lacked its blank line.
    pub(crate) fn finish(&mut self) -> Option<Event<'_>> {
        self.clear_handed_out();
        let unfinished_line = !self.line.is_empty() || self.line_too_long;
        // A last line that completes an event (a lone `\r`) has ended it already.
        let complete = (unfinished_line && self.end_line()) || self.end_event();
        complete.then(|| self.event())
    }

    fn event(&self) -> Event<'_> {
        Event {
            name: &self.name,
            data: &self.data,
        }
    }

    fn clear_handed_out(&mut self) {
        if std::mem::take(&mut self.handed_out) {
            self.data.clear();
            self.name.clear();
        }
    }

    fn push_line_part(&mut self, part: &[u8]) {
        if self.line_too_long || part.is_empty() {
            return;
        }
        if self.line.len() + part.len() > STREAM_EVENT_BYTES_MAX {
            self.line_too_long = true;
            self.line.clear();
        } else {
            self.line.extend_from_slice(part);
        }
    }

    /// The current line is complete. Whether that completed an event.
    fn end_line(&mut self) -> bool {
        if self.line_too_long {
            self.line_too_long = false;
            self.skip_event = true;
            return false;
        }
        let mut line = std::mem::take(&mut self.line);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        let complete = if line.is_empty() {
            self.end_event()
        } else {
            self.field(&line);
            false
        };
        line.clear();
        self.line = line;
        complete
    }

    /// A non-blank line.
    fn field(&mut self, line: &[u8]) {
        let (field, value) = match line.iter().position(|b| *b == b':') {
            Some(c) => {
                let value = line.get(c + 1..).unwrap_or_default();
                (
                    line.get(..c).unwrap_or_default(),
                    value.strip_prefix(b" ").unwrap_or(value),
                )
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                let extra = usize::from(self.has_data);
                if self.data.len() + extra + value.len() > STREAM_EVENT_BYTES_MAX {
                    self.skip_event = true;
                } else if !self.skip_event {
                    if self.has_data {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                if value.len() <= EVENT_NAME_BYTES_MAX {
                    self.name.extend_from_slice(value);
                }
            }
            _ => {}
        }
    }

    /// A blank line (or the end of the stream). Whether the event it ends is complete; its
    /// `data` and `name` are then kept until the next call.
    fn end_event(&mut self) -> bool {
        let complete = self.has_data && !self.skip_event;
        self.has_data = false;
        self.skip_event = false;
        if complete {
            self.handed_out = true;
        } else {
            self.data.clear();
            self.name.clear();
        }
        complete
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The events of `stream` cut at `cuts` (taken modulo its length), as `(name, data)`.
    fn read(stream: &[u8], cuts: &[usize]) -> Vec<(String, String)> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
        cuts.sort_unstable();
        cuts.push(stream.len());
        let owned = |e: Event<'_>| {
            (
                String::from_utf8_lossy(e.name).into_owned(),
                String::from_utf8_lossy(e.data).into_owned(),
            )
        };
        let mut reader = EventReader::new();
        let mut events = Vec::new();
        let mut start = 0;
        for c in cuts {
            let mut piece = stream.get(start..c).unwrap_or_default();
            while let Some(e) = reader.next_event(&mut piece) {
                events.push(owned(e));
            }
            assert!(piece.is_empty(), "all of a piece is read");
            start = c;
        }
        events.extend(reader.finish().map(owned));
        assert_eq!(reader.finish(), None, "finish hands an event out once");
        events
    }

    fn ev(name: &str, data: &str) -> (String, String) {
        (name.to_owned(), data.to_owned())
    }

    #[test]
    fn lf_and_crlf_line_ends() {
        let lf = "event: a\ndata: 1\n\ndata:2\n\nevent:b\ndata\n\n";
        let want = vec![ev("a", "1"), ev("", "2"), ev("b", "")];
        assert_eq!(read(lf.as_bytes(), &[]), want);
        assert_eq!(read(lf.replace('\n', "\r\n").as_bytes(), &[]), want);
        // Mixed, and a `\r` alone is no line end.
        assert_eq!(
            read(b"data: x\r\n\ndata: y\rdata: z\n\r\n", &[]),
            vec![ev("", "x"), ev("", "y\rdata: z")]
        );
    }

    #[test]
    fn comments_and_other_fields_are_ignored() {
        let stream =
            ": keep-alive\n\n:\nid: 7\nretry: 10\ndata: x\nevent_: no\ndatax: no\n: hi\n\n";
        assert_eq!(read(stream.as_bytes(), &[]), vec![ev("", "x")]);
        // An event of comments and names alone is no event, and its name does not carry on.
        assert_eq!(
            read(b"event: a\n: c\n\ndata: d\n\n", &[]),
            vec![ev("", "d")]
        );
    }

    #[test]
    fn multi_line_data_joined_by_newline() {
        let stream = "data: {\"a\":\ndata:  1}\ndata\ndata: \n\n";
        assert_eq!(
            read(stream.as_bytes(), &[]),
            vec![ev("", "{\"a\":\n 1}\n\n")]
        );
    }

    #[test]
    fn event_names() {
        let stream = "event: first\nevent: second\ndata: 1\n\ndata: 2\nevent: late\n\n";
        assert_eq!(
            read(stream.as_bytes(), &[]),
            vec![ev("second", "1"), ev("late", "2")]
        );
        let long = "n".repeat(EVENT_NAME_BYTES_MAX + 1);
        let fits = "n".repeat(EVENT_NAME_BYTES_MAX);
        let stream = format!("event: {long}\ndata: 1\n\nevent: {fits}\ndata: 2\n\n");
        assert_eq!(
            read(stream.as_bytes(), &[]),
            vec![ev("", "1"), ev(&fits, "2")]
        );
    }

    #[test]
    fn over_long_lines_and_events_are_skipped_whole() {
        let big = "x".repeat(STREAM_EVENT_BYTES_MAX);
        // `data: ` and the value make the line one too many.
        let stream = format!("event: a\ndata: 1\ndata: {big}\ndata: 2\n\ndata: after\n\n");
        for cuts in [&[][..], &[3, 100_000, 200_000]] {
            assert_eq!(read(stream.as_bytes(), cuts), vec![ev("", "after")]);
        }
        // A line of exactly the limit is kept; data lines that together outgrow it are not.
        let fits = "x".repeat(STREAM_EVENT_BYTES_MAX - "data:".len());
        let stream = format!("data:{fits}\n\ndata:{fits}\ndata:{fits}\n\ndata: after\n\n");
        assert_eq!(
            read(stream.as_bytes(), &[]),
            vec![ev("", &fits), ev("", "after")]
        );
        // An over-long last line at the end of the stream skips its event too.
        let stream = format!("data: 1\ndata: {big}");
        assert!(read(stream.as_bytes(), &[]).is_empty());
    }

    #[test]
    fn last_event_without_blank_line_comes_from_finish() {
        assert_eq!(
            read(b"data: 1\n\ndata: 2", &[]),
            vec![ev("", "1"), ev("", "2")]
        );
        assert_eq!(read(b"event: e\ndata: 2\n", &[]), vec![ev("e", "2")]);
        assert_eq!(read(b"data: 2\r\n\r", &[]), vec![ev("", "2")]);
        assert_eq!(read(b"data: 1\n\n", &[]), vec![ev("", "1")]);
        assert!(read(b"", &[]).is_empty());
        assert!(read(b"event: e\n", &[]).is_empty());
    }

    #[test]
    fn next_stops_after_each_event() {
        let mut reader = EventReader::new();
        let mut input = &b"data: 1\n\ndata: 2\n\ndata: 3"[..];
        assert_eq!(
            reader.next_event(&mut input).map(|e| e.data),
            Some(&b"1"[..])
        );
        assert_eq!(input, b"data: 2\n\ndata: 3");
        assert_eq!(
            reader.next_event(&mut input).map(|e| e.data),
            Some(&b"2"[..])
        );
        assert_eq!(reader.next_event(&mut input), None);
        assert!(input.is_empty());
        assert_eq!(reader.finish().map(|e| e.data), Some(&b"3"[..]));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The same events however the stream is cut into pieces.
        #[test]
        fn split_independent(
            stream in prop::collection::vec(prop::sample::select(b"\n\r\n:data: event x".to_vec()), 0..300),
            cuts in prop::collection::vec(any::<usize>(), 0..12),
        ) {
            prop_assert_eq!(read(&stream, &cuts), read(&stream, &[]));
        }
    }
}
