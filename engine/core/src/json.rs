//! The one JSON string writer of the project: [`write_str`] (quotes included) and
//! [`write_str_content`] (without) escape as serde_json does, finding the runs that need no
//! escape eight bytes at a time ([`skip_plain`]).
//!
//! It lives here, not in the engine, because both halves write JSON strings by hand: config
//! time (`template`: a template's text and defaults, pre-escaped once) and request time (the
//! engine's access log, stream translators, SSE error event and template fill, which name it
//! as `shardgate_engine::llm::json::write_str`, re-exported from here). The engine's JSON
//! scanner (`llm::json`) skips through string content with the same [`skip_plain`].

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Whether any of the 8 bytes of `w` is a quote, a backslash or a control byte (< 0x20).
/// Exact as a yes/no answer (the classic "has zero byte" / "has byte less than" tests).
#[cfg(test)]
fn needs_attention(w: u64) -> bool {
    attention_mask(w) != 0
}

/// The high bit of each byte of `w` (little-endian: the first byte is the lowest) that may be
/// a quote, a backslash or a control byte. Nonzero exactly when one is, and its lowest set bit
/// marks the first one exactly: a byte is wrongly flagged only through a borrow from a flagged
/// byte below it (the classic "has zero byte" / "has byte less than" tests).
fn attention_mask(w: u64) -> u64 {
    let zero_bytes = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let less_than_0x20 = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    zero_bytes(w ^ (ONES * u64::from(b'"')))
        | zero_bytes(w ^ (ONES * u64::from(b'\\')))
        | less_than_0x20
}

/// From `i`, eight bytes at a time, to the first quote, backslash or control byte, or to where
/// fewer than eight bytes are left (for the caller to look at one by one). The writer's
/// search, and the engine's JSON scanner's (`llm::json`) through a string's content.
pub fn skip_plain(s: &[u8], mut i: usize) -> usize {
    while let Some(word) = s.get(i..i + 8) {
        let mut w = [0u8; 8];
        w.copy_from_slice(word);
        let m = attention_mask(u64::from_le_bytes(w));
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    i
}

/// Append `s` to `out` as a JSON string, quotes included (see [`write_str_content`]).
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    write_str_content(out, s.as_bytes());
    out.push(b'"');
}

/// Append `s` (UTF-8) to `out` as the content of a JSON string, without quotes: `"` and `\`
/// escaped, control bytes as `\n`, `\r`, `\t`, `\b`, `\f` or `\u00xx`; everything else (`/`,
/// DEL, U+2028, all non-ASCII) as it is. That is serde_json's output, and the shortest escaping
/// there is: never longer than any other escaped text of the same string. Runs of bytes that
/// need nothing are found eight at a time and copied whole.
pub fn write_str_content(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // `s[run..i]` needs no escape and is not written yet.
    let mut run = 0;
    let mut i = 0;
    loop {
        i = skip_plain(s, i);
        let Some(&b) = s.get(i) else { break };
        let u: [u8; 6];
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => {
                u = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ];
                &u
            }
            _ => {
                i += 1;
                continue;
            }
        };
        out.extend_from_slice(s.get(run..i).unwrap_or_default());
        out.extend_from_slice(escape);
        i += 1;
        run = i;
    }
    out.extend_from_slice(s.get(run..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn swar_attention_finds_the_first_byte_that_needs_it() {
        // Every pair of positions and every byte at the first: what follows never moves the
        // answer, whatever it is (a borrow from below could flag a byte above, never below).
        let fill = [b'a', 0x00, 0x1f, b'"', b'\\', 0x20, 0x7f, 0x80, 0xff, b'!'];
        for b in 0..=255u8 {
            for first in 0..8 {
                for &later in &fill {
                    for second in first + 1..=8 {
                        let mut w = [b'a'; 8];
                        w[first] = b;
                        if second < 8 {
                            w[second] = later;
                        }
                        let want = if b == b'"' || b == b'\\' || b < 0x20 {
                            Some(first)
                        } else {
                            w.iter().position(|&x| x == b'"' || x == b'\\' || x < 0x20)
                        };
                        let m = attention_mask(u64::from_le_bytes(w));
                        let got = (m != 0).then(|| (m.trailing_zeros() / 8) as usize);
                        assert_eq!(got, want, "{w:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn swar_attention_matches_a_byte_loop() {
        for b in 0..=255u8 {
            for pos in 0..8 {
                let mut w = [b'a'; 8];
                w[pos] = b;
                let expect = b == b'"' || b == b'\\' || b < 0x20;
                assert_eq!(
                    needs_attention(u64::from_le_bytes(w)),
                    expect,
                    "{b} at {pos}"
                );
            }
        }
    }

    /// What [`write_str`] writes for `s`.
    fn written(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).expect("UTF-8")
    }

    #[test]
    fn json_strings_round_trip() {
        for s in [
            "",
            "plain",
            "q\"b\\s",
            "nl\n\r\t\u{1}\u{1f}",
            "é 漢字 🦀",
            "\u{7f}",
        ] {
            let back: String = serde_json::from_str(&written(s)).expect("valid JSON string");
            assert_eq!(back, s);
        }
    }

    #[test]
    fn strings_get_the_shortest_escapes_and_only_where_needed() {
        // Every control byte: the short form where JSON has one, else `\u00xx` in lower case.
        for b in 0u8..0x20 {
            let want = match b {
                0x08 => "\\b".to_owned(),
                0x09 => "\\t".to_owned(),
                0x0a => "\\n".to_owned(),
                0x0c => "\\f".to_owned(),
                0x0d => "\\r".to_owned(),
                _ => format!("\\u{b:04x}"),
            };
            assert_eq!(written(&char::from(b).to_string()), format!("\"{want}\""));
        }
        assert_eq!(written("q\"b\\s"), r#""q\"b\\s""#);
        // As they are: `/`, DEL, U+2028 and U+2029, all other non-ASCII.
        let as_is = "a/b\u{7f}\u{2028}\u{2029}é 漢字 🦀";
        assert_eq!(written(as_is), format!("\"{as_is}\""));
        // An escape at every offset of runs longer than a word.
        for at in 0..=20 {
            let mut s = "x".repeat(20);
            s.insert(at, '\u{1}');
            s.insert(0, '"');
            assert_eq!(written(&s), serde_json::to_string(&s).expect("JSON"));
        }
        // The content alone, appended to what `out` holds.
        let mut out = b"<".to_vec();
        write_str_content(&mut out, "a\"b\n".as_bytes());
        assert_eq!(out, br#"<a\"b\n"#);
    }

    proptest! {
        /// Byte for byte what serde_json writes, for any string, and for strings dense in
        /// what needs escaping.
        #[test]
        fn strings_are_written_as_serde_json_writes_them(
            s in any::<String>(),
            dense in r#"[\x00-\x1f"\\/a\x7fé\u{2028}]{0,40}"#,
        ) {
            prop_assert_eq!(written(&s), serde_json::to_string(&s).expect("JSON"));
            prop_assert_eq!(written(&dense), serde_json::to_string(&dense).expect("JSON"));
        }
    }
}
