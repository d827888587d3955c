//! The headers an OTLP export sends, read as `OTEL_EXPORTER_OTLP_HEADERS` is
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>): `key=value` pairs separated
//! by commas, whitespace around each trimmed, values URL-encoded (`%20`). The values are
//! secrets (an API key): an error names a pair by its position, never its text.

use crate::limits::{OTLP_HEADERS_BYTES_MAX, OTLP_HEADERS_MAX};

/// The pairs of `value`; an error says what is wrong without quoting it.
pub fn parse(value: &str) -> Result<Vec<(String, String)>, String> {
    if value.len() > OTLP_HEADERS_BYTES_MAX {
        return Err(format!("longer than {OTLP_HEADERS_BYTES_MAX} bytes"));
    }
    let mut out = Vec::new();
    for (i, pair) in value.split(',').enumerate() {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let n = i + 1;
        let Some((k, v)) = pair.split_once('=') else {
            return Err(format!(
                "pair {n} has no '=' (expected key=value,key2=value2)"
            ));
        };
        let key = decode(k.trim())
            .ok_or_else(|| format!("pair {n}: its key is not valid URL-encoded UTF-8"))?;
        let val = decode(v.trim())
            .ok_or_else(|| format!("pair {n}: its value is not valid URL-encoded UTF-8"))?;
        if key.is_empty() || !key.bytes().all(is_token_byte) {
            return Err(format!("pair {n}: its key is not an HTTP header name"));
        }
        if val.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!("pair {n}: its value holds a line break or NUL"));
        }
        out.push((key, val));
        if out.len() > OTLP_HEADERS_MAX {
            return Err(format!("more than {OTLP_HEADERS_MAX} pairs"));
        }
    }
    Ok(out)
}

fn decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_read_trimmed_and_decoded() {
        let h = parse(" api-key = secret%20one , x-team=a%2Cb,").expect("valid");
        assert_eq!(
            h,
            vec![
                ("api-key".to_owned(), "secret one".to_owned()),
                ("x-team".to_owned(), "a,b".to_owned()),
            ]
        );
        assert!(parse("").expect("empty").is_empty());
    }

    #[test]
    fn bad_pairs_are_refused_without_quoting_them() {
        for (v, why) in [
            ("novalue", "pair 1 has no '='"),
            (
                "a=b,bad key=sk-123",
                "pair 2: its key is not an HTTP header name",
            ),
            (
                "a=sk-1%0d%0aevil: 1",
                "pair 1: its value holds a line break",
            ),
            ("a=%ff", "pair 1: its value is not valid URL-encoded UTF-8"),
        ] {
            let err = parse(v).expect_err(v);
            assert!(err.starts_with(why), "{v}: {err}");
            assert!(!err.contains("sk-"), "{err}");
        }
        let many = (0..=OTLP_HEADERS_MAX)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse(&many).is_err());
    }
}
