//! Helpers shared by the translators' unit tests.

use serde_json::Value;

use super::{StreamTranslator, TranslateError};

/// The request `translate` writes for `body`, parsed (asserting it is JSON).
pub(crate) fn request_json(
    translate: impl FnOnce(&[u8], &mut Vec<u8>) -> Result<(), TranslateError>,
    body: &Value,
) -> Result<Value, TranslateError> {
    let mut out = Vec::new();
    translate(body.to_string().as_bytes(), &mut out)?;
    Ok(serde_json::from_slice(&out).expect("valid JSON"))
}

/// `translate` of `body` with `key` set to `value`.
pub(crate) fn with_field<T>(
    body: &Value,
    key: &str,
    value: Value,
    translate: impl FnOnce(&Value) -> T,
) -> T {
    let mut b = body.clone();
    b[key] = value;
    translate(&b)
}

/// Feed `stream` to `t` cut at `cuts` (each taken modulo the length plus one, in order), then
/// finish it; asserts the stream ended. Returns the output and the usage reported.
pub(crate) fn translate_in_pieces<T: StreamTranslator>(
    mut t: T,
    stream: &[u8],
    cuts: &[usize],
) -> (Vec<u8>, Option<T::Usage>) {
    let out = feed_in_pieces(&mut t, stream, cuts);
    (out, t.usage())
}

/// Feed `stream` to `t` cut at `cuts` (each taken modulo the length plus one, in order), then
/// finish it; asserts the stream ended. Returns the output.
pub(crate) fn feed_in_pieces<T: StreamTranslator>(
    t: &mut T,
    stream: &[u8],
    cuts: &[usize],
) -> Vec<u8> {
    let mut out = Vec::new();
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for c in cuts {
        t.feed(stream.get(start..c).unwrap_or_default(), &mut out);
        start = c;
    }
    t.feed(stream.get(start..).unwrap_or_default(), &mut out);
    t.finish(&mut out);
    assert!(t.is_done());
    out
}

/// An OpenAI stream: each of `choices` (then `usage`, when given) after `head` (`data: {...,
/// "choices":`) and closed, then `[DONE]`.
pub(crate) fn expected_chunks(head: &str, choices: &[&str], usage: Option<&str>) -> String {
    let mut s = String::new();
    for rest in choices.iter().chain(usage.iter()) {
        s.push_str(head);
        s.push_str(rest);
        s.push_str("}\n\n");
    }
    s.push_str("data: [DONE]\n\n");
    s
}

/// The JSON of each `data:` event of an OpenAI stream but `[DONE]`, checking every event is
/// one `data:` line.
pub(crate) fn data_events(out: &[u8]) -> Vec<Value> {
    let out = std::str::from_utf8(out).expect("UTF-8");
    out.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data line"))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).expect("valid JSON"))
        .collect()
}

/// Each event of `out` is `data: ` and JSON or `[DONE]`, and `[DONE]` comes last.
pub(crate) fn assert_well_formed(out: &[u8]) {
    let text = std::str::from_utf8(out).expect("UTF-8");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    data_events(out);
}

/// Defines `stream_split_independent`, the property test every stream translator to OpenAI chat
/// runs (`$cases` cases), from the calling test module's `arb_stream()`,
/// `translate_in_pieces(stream, cuts, include_usage)` and `expected(include_usage)`: the output
/// is the expected stream, and the same however the stream is cut into reads.
macro_rules! stream_split_independent {
    ($cases:expr) => {
        proptest! {
            #![proptest_config(ProptestConfig::with_cases($cases))]

            /// The same output however the stream is cut into reads.
            #[test]
            fn stream_split_independent(
                stream in arb_stream(),
                cuts in prop::collection::vec(any::<usize>(), 0..12),
                include_usage in any::<bool>(),
            ) {
                let whole = translate_in_pieces(&stream, &[], include_usage);
                prop_assert_eq!(std::str::from_utf8(&whole.0).expect("UTF-8"), expected(include_usage));
                prop_assert_eq!(translate_in_pieces(&stream, &cuts, include_usage), whole);
            }
        }
    };
}
pub(crate) use stream_split_independent;
