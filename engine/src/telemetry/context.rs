//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>) and the sampling decision,
//! without I/O: a request's `traceparent` parsed, its span ids drawn, the decision taken once,
//! and each upstream attempt's `traceparent` written.
//!
//! Sampling is parent-based with a trace-id ratio at the root, as OpenTelemetry's
//! `parentbased_traceidratio`: a valid incoming `traceparent` is followed (its `sampled` flag
//! decides, so a trace is never cut in half), a request without one is sampled when its trace
//! id's last 8 bytes, read as an integer, fall under `sample_ratio × 2^64`. The decision is the
//! same on every shard and every host for the same trace id.

/// Length of a version-00 `traceparent` value: `00-` 32 hex `-` 16 hex `-` 2 hex.
pub const TRACEPARENT_BYTES: usize = 55;

/// The `sampled` bit of the trace flags.
const FLAG_SAMPLED: u8 = 0x01;

/// A trace id: 16 bytes, never all zero.
pub type TraceId = [u8; 16];
/// A span id: 8 bytes, never all zero.
pub type SpanId = [u8; 8];

/// A valid incoming `traceparent`: the caller's trace and span.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub flags: u8,
}

impl Parent {
    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

/// Parse a `traceparent` value as the W3C spec says a receiver must: version 2 lowercase hex
/// (`ff` invalid); for version 00 exactly 55 bytes; a later version at least 55 bytes, with a
/// `-` after the flags when longer (its extra fields are ignored); trace id 32 and parent id 16
/// lowercase hex, neither all zero; flags 2 lowercase hex. `None`: ignore the header (a new
/// trace begins).
pub fn parse_traceparent(value: &[u8]) -> Option<Parent> {
    let value = trim(value);
    if value.len() < TRACEPARENT_BYTES {
        return None;
    }
    let version = hex_byte(value.get(0..2)?)?;
    if version == 0xff || (version == 0 && value.len() != TRACEPARENT_BYTES) {
        return None;
    }
    if value.len() > TRACEPARENT_BYTES && value[TRACEPARENT_BYTES] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    hex_into(&value[3..35], &mut trace_id)?;
    let mut span_id = [0u8; 8];
    hex_into(&value[36..52], &mut span_id)?;
    let flags = hex_byte(&value[53..55])?;
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        flags,
    })
}

/// Optional whitespace around a header value (httparse leaves trailing OWS out, not leading).
fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [h, l] => Some(hex_val(*h)? << 4 | hex_val(*l)?),
        _ => None,
    }
}

fn hex_into(src: &[u8], out: &mut [u8]) -> Option<()> {
    if src.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = hex_byte(pair)?;
    }
    Some(())
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lowercase hex of `bytes` into `out` (twice as long).
pub fn write_hex(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

/// The span a request is, in its trace: its ids, its caller's span, whether it is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceCtx {
    pub trace_id: TraceId,
    /// The request's own (SERVER) span.
    pub span_id: SpanId,
    /// The caller's span (from `traceparent`), if any.
    pub parent: Option<SpanId>,
    /// Recorded and exported (the trace flags' `sampled` bit sent upstream).
    pub sampled: bool,
}

impl TraceCtx {
    /// The request's context: `incoming` (the client's `traceparent` value, if it sent one),
    /// ids drawn from `random`, the decision taken at `ratio` when no valid parent decides.
    pub fn begin(incoming: Option<&[u8]>, ratio: f64, random: &mut dyn FnMut() -> u64) -> Self {
        let span_id = span_id(random);
        match incoming.and_then(parse_traceparent) {
            Some(p) => Self {
                trace_id: p.trace_id,
                span_id,
                parent: Some(p.span_id),
                sampled: p.sampled(),
            },
            None => {
                let trace_id = trace_id(random);
                Self {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: ratio_samples(&trace_id, ratio),
                }
            }
        }
    }

    /// The `traceparent` value an upstream attempt sends: this trace, the attempt's span as
    /// the parent, the decision in the flags.
    pub fn traceparent(&self, attempt: &SpanId) -> [u8; TRACEPARENT_BYTES] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        write_hex(&self.trace_id, &mut out[3..35]);
        write_hex(attempt, &mut out[36..52]);
        if self.sampled {
            out[54] = b'1';
        }
        out
    }
}

/// Whether a root trace is sampled at `ratio`: its id's last 8 bytes (big-endian) under
/// `ratio × 2^64` (1.0 always, 0.0 never).
pub fn ratio_samples(trace_id: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 || ratio.is_nan() {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace_id[8..]);
    // `ratio × 2^64` rounds to a u64 below 2^64 for every ratio under 1.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let bound = (ratio * 18_446_744_073_709_551_616.0) as u64;
    u64::from_be_bytes(low) < bound
}

/// A new, non-zero span id.
pub fn span_id(random: &mut dyn FnMut() -> u64) -> SpanId {
    loop {
        let id = random().to_be_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

/// A new, non-zero trace id.
fn trace_id(random: &mut dyn FnMut() -> u64) -> TraceId {
    let mut id = [0u8; 16];
    loop {
        id[..8].copy_from_slice(&random().to_be_bytes());
        id[8..].copy_from_slice(&random().to_be_bytes());
        if id != [0; 16] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &[u8] = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_valid_traceparent_is_read() {
        let p = parse_traceparent(VALID).expect("valid");
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.trace_id[15], 0x36);
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled());
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!parse_traceparent(unsampled).expect("valid").sampled());
        // Surrounding whitespace is allowed (OWS).
        assert!(
            parse_traceparent(b" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ")
                .is_some()
        );
    }

    #[test]
    fn invalid_traceparents_are_ignored() {
        let bad: &[&[u8]] = &[
            b"",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            // Uppercase hex.
            b"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // All-zero ids.
            b"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff, and version 00 with more after it.
            b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong separators, non-hex.
            b"00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            b"00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            b"0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // A later version longer than 55 bytes must go on with '-'.
            b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ];
        for v in bad {
            assert_eq!(parse_traceparent(v), None, "{}", String::from_utf8_lossy(v));
        }
        // A later version: its first four fields are read, what follows is ignored.
        let later = b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(parse_traceparent(later).is_some());
    }

    #[test]
    fn a_parent_decides_and_its_trace_goes_on() {
        let mut n = 0u64;
        let mut random = || {
            n += 1;
            n
        };
        let ctx = TraceCtx::begin(Some(VALID), 0.0, &mut random);
        assert!(
            ctx.sampled,
            "a sampled parent is followed whatever the ratio"
        );
        assert_eq!(
            ctx.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let attempt = span_id(&mut random);
        let tp = ctx.traceparent(&attempt);
        let back = parse_traceparent(&tp).expect("ours is valid");
        assert_eq!(back.trace_id, ctx.trace_id);
        assert_eq!(back.span_id, attempt);
        assert!(back.sampled());
        let unsampled = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = TraceCtx::begin(Some(unsampled), 1.0, &mut random);
        assert!(!ctx.sampled, "an unsampled parent is followed too");
        assert_eq!(&ctx.traceparent(&attempt)[53..], b"00");
    }

    #[test]
    fn roots_are_sampled_at_the_ratio() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (ratio, lo, hi) in [
            (0.0, 0, 0),
            (0.01, 50, 150),
            (0.5, 4_700, 5_300),
            (1.0, 10_000, 10_000),
        ] {
            let sampled = (0..10_000)
                .filter(|_| TraceCtx::begin(None, ratio, &mut random).sampled)
                .count();
            assert!(
                (lo..=hi).contains(&sampled),
                "ratio {ratio}: {sampled} of 10,000"
            );
        }
        let ctx = TraceCtx::begin(Some(b"garbage"), 1.0, &mut random);
        assert_eq!(
            ctx.parent, None,
            "an invalid traceparent starts a new trace"
        );
        assert_ne!(ctx.trace_id, [0; 16]);
    }
}
