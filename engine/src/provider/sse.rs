//! Server-sent events for the stream translators: [`EventReader`] hands out the events of a
//! stream fed in pieces of any size, each an `event:` name and its `data` lines joined by `\n`.
//! The events are the same however the stream was cut; nothing here touches a socket. Events
//! are split by [`http::sse`](crate::http::sse), as everywhere else.
//!
//! Lines end in `\n` or `\r\n` (what OpenAI, Anthropic, vLLM and Ollama send); a lone `\r` is
//! not a line end. A blank line ends an event; one without `data` lines is no event. A `data`
//! or `event` line is `data` / `event` alone or followed by `:` and the value (one leading space
//! dropped); comments (`:` lines), `id`, `retry` and unknown fields are ignored. A line longer
//! than [`STREAM_EVENT_BYTES_MAX`], `data` that outgrows it, or an event longer than
//! [`EVENT_BYTES_MAX`] skips its whole event.

use crate::http::sse::{self, Piece, Splitter};

/// The longest SSE line (and the most `data` of one event) the stream translators examine,
/// bytes. A longer event is skipped whole; the events they translate are a few hundred bytes.
pub const STREAM_EVENT_BYTES_MAX: usize = 256 * 1024;
/// The longest event the stream translators hold, bytes: room for a line of
/// [`STREAM_EVENT_BYTES_MAX`] and as much again of other lines.
pub(crate) const EVENT_BYTES_MAX: usize = 2 * STREAM_EVENT_BYTES_MAX;
/// The longest `event:` name kept, bytes (Anthropic's longest is `content_block_delta`).
pub(crate) const EVENT_NAME_BYTES_MAX: usize = 64;

const _: () = assert!(EVENT_NAME_BYTES_MAX <= STREAM_EVENT_BYTES_MAX);

/// One complete event, borrowed from the [`EventReader`] or its input for the call it is
/// handed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Event<'a> {
    /// The last `event:` name; empty when none came or it was longer than
    /// [`EVENT_NAME_BYTES_MAX`].
    pub(crate) name: &'a [u8],
    /// The `data` lines' values, joined by `\n`.
    pub(crate) data: &'a [u8],
}

/// Hands out the [`Event`]s of a server-sent event stream: [`feed`](Self::feed) it the stream's
/// pieces, and at its end call [`finish`](Self::finish) for a last event that lacked its blank
/// line. It holds at most [`EVENT_BYTES_MAX`] bytes of an unfinished event, and joins `data`
/// lines (when an event has several) in a buffer of its own.
#[derive(Debug, Default)]
pub(crate) struct EventReader {
    split: Splitter<EVENT_BYTES_MAX>,
    /// The start of an unfinished event.
    buf: Vec<u8>,
    /// The `data` lines of an event that has several, joined.
    scratch: Vec<u8>,
}

impl EventReader {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Hand `f` the events that `input` completes, in order.
    pub(crate) fn feed(&mut self, input: &[u8], mut f: impl FnMut(Event<'_>)) {
        let scratch = &mut self.scratch;
        self.split.feed(&mut self.buf, input, |piece| {
            if let Some(event) = match piece {
                Piece::Event(event) => read(event, scratch),
                Piece::Unexamined(_) => None,
            } {
                f(event);
            }
        });
        // A stream waiting for its next event holds nothing here.
        crate::llm::release_if_empty(&mut self.buf);
        if self.scratch.capacity() != 0 {
            self.scratch = Vec::new();
        }
    }

    /// At the end of the stream: hand `f` the last event, when it lacked its blank line, and
    /// start afresh.
    pub(crate) fn finish(&mut self, mut f: impl FnMut(Event<'_>)) {
        let scratch = &mut self.scratch;
        self.split.flush(&mut self.buf, |piece| {
            // Held bytes are never more than the limit: an event too long was passed on.
            if let Some(event) = match piece {
                Piece::Unexamined(held) => read(held, scratch),
                Piece::Event(_) => None,
            } {
                f(event);
            }
        });
    }
}

/// An event's name and data; `None` when it has no `data`, or a line or its data is too long.
fn read<'a>(event: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<Event<'a>> {
    let mut name: &[u8] = &[];
    let mut too_long = false;
    let data = sse::event_data(event, scratch, |line| {
        too_long |= line.len() > STREAM_EVENT_BYTES_MAX;
        if let (b"event", value) = sse::field(line) {
            name = if value.len() <= EVENT_NAME_BYTES_MAX {
                value
            } else {
                &[]
            };
        }
    })?;
    (!too_long && data.len() <= STREAM_EVENT_BYTES_MAX).then_some(Event { name, data })
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
            let piece = stream.get(start..c).unwrap_or_default();
            reader.feed(piece, |e| events.push(owned(e)));
            start = c;
        }
        reader.finish(|e| events.push(owned(e)));
        let mut again = 0;
        reader.finish(|_| again += 1);
        assert_eq!(again, 0, "finish hands an event out once");
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
    fn events_come_out_in_order_and_the_last_at_finish() {
        let mut reader = EventReader::new();
        let mut got = Vec::new();
        reader.feed(b"data: 1\n\ndata: 2\n\ndata: 3", |e| {
            got.push(e.data.to_vec())
        });
        assert_eq!(got, [b"1".to_vec(), b"2".to_vec()]);
        reader.finish(|e| got.push(e.data.to_vec()));
        assert_eq!(got, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
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
