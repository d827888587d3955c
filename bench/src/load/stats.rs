//! What a run measured: one [`Stats`] per thread (HdrHistograms and counters, no sharing while
//! the run goes), merged into one at the end and turned into a [`Report`], printed as JSON or
//! as a wrk-like summary.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Largest latency a histogram holds, in µs (60 s); longer ones are recorded as 60 s.
pub const LATENCY_MAX_US: u64 = 60_000_000;
/// Significant decimal digits the histograms keep (0.1 % precision).
const SIGFIG: u8 = 3;

/// A latency histogram in microseconds, 1 µs to [`LATENCY_MAX_US`], 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    // The bounds are constants that hdrhistogram accepts (low >= 1, high >= 2·low, sigfig <= 5).
    Histogram::new_with_bounds(1, LATENCY_MAX_US, SIGFIG).expect("constant histogram bounds")
}

/// A duration in whole microseconds, saturating at [`LATENCY_MAX_US`].
pub fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros())
        .unwrap_or(u64::MAX)
        .min(LATENCY_MAX_US)
}

/// The kinds of error counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The TCP connection could not be opened (refused, unreachable, or not within the timeout).
    Connect,
    /// Reading the response failed, the server closed early, or the response was ill-framed.
    Read,
    /// Writing the request failed.
    Write,
    /// No complete response within `--timeout-ms` of sending; the connection is re-opened.
    Timeout,
    /// A complete response with status 400–499.
    Status4xx,
    /// A complete response with status 500–599.
    Status5xx,
    /// `--stream`: a 2xx response that ended without a final `data: [DONE]` event.
    StreamIncomplete,
}

/// Error counts by kind. The field names are the JSON report's (the end-to-end tests read the
/// report back into this type).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Errors {
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub stream_incomplete: u64,
}

impl Errors {
    pub fn count(&mut self, kind: ErrorKind) {
        let c = match kind {
            ErrorKind::Connect => &mut self.connect,
            ErrorKind::Read => &mut self.read,
            ErrorKind::Write => &mut self.write,
            ErrorKind::Timeout => &mut self.timeout,
            ErrorKind::Status4xx => &mut self.status_4xx,
            ErrorKind::Status5xx => &mut self.status_5xx,
            ErrorKind::StreamIncomplete => &mut self.stream_incomplete,
        };
        *c += 1;
    }

    pub fn add(&mut self, o: &Errors) {
        self.connect += o.connect;
        self.read += o.read;
        self.write += o.write;
        self.timeout += o.timeout;
        self.status_4xx += o.status_4xx;
        self.status_5xx += o.status_5xx;
        self.stream_incomplete += o.stream_incomplete;
    }

    pub fn total(&self) -> u64 {
        self.connect
            + self.read
            + self.write
            + self.timeout
            + self.status_4xx
            + self.status_5xx
            + self.stream_incomplete
    }
}

/// `--stream` histograms (µs).
#[derive(Debug, Clone)]
pub struct StreamStats {
    /// Request sent (or intended, with `--rate`) → first response byte.
    pub ttfb: Histogram<u64>,
    /// Request sent (or intended) → first complete `data:` event.
    pub ttfe: Histogram<u64>,
    /// Between consecutive events of one stream (0 for events that arrived in one read).
    pub gap: Histogram<u64>,
    /// 2xx streamed responses checked for `data: [DONE]`.
    pub streams: u64,
}

/// What one thread (or, merged, the whole run) measured.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latency of complete responses (µs), from the send (or intended send) to the last byte.
    pub latency: Histogram<u64>,
    pub stream: Option<StreamStats>,
    /// Complete responses, whatever their status.
    pub requests: u64,
    /// Bytes read from the server.
    pub bytes: u64,
    pub errors: Errors,
}

impl Stats {
    pub fn new(stream: bool) -> Self {
        Self {
            latency: histogram(),
            stream: stream.then(|| StreamStats {
                ttfb: histogram(),
                ttfe: histogram(),
                gap: histogram(),
                streams: 0,
            }),
            requests: 0,
            bytes: 0,
            errors: Errors::default(),
        }
    }

    /// Add another thread's numbers to these.
    pub fn merge(&mut self, o: &Stats) {
        // Same bounds on both sides (both come from `histogram()`), so `add` cannot fail;
        // on the off chance it does, the counts stay short rather than the run failing.
        let _ = self.latency.add(&o.latency);
        if let (Some(a), Some(b)) = (self.stream.as_mut(), o.stream.as_ref()) {
            let _ = a.ttfb.add(&b.ttfb);
            let _ = a.ttfe.add(&b.ttfe);
            let _ = a.gap.add(&b.gap);
            a.streams += b.streams;
        }
        self.requests += o.requests;
        self.bytes += o.bytes;
        self.errors.add(&o.errors);
    }
}

/// Percentiles of one histogram, in µs. The field names are the JSON report's.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
}

impl Percentiles {
    /// Read the percentiles (all 0 for an empty histogram). Values are hdrhistogram's
    /// "highest equivalent value", so within 0.1 % of the recorded ones.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self {
                p50: 0,
                p90: 0,
                p99: 0,
                p999: 0,
                max: 0,
                mean: 0.0,
            };
        }
        Self {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: round2(h.mean()),
        }
    }
}

/// The `stream` object of the JSON report.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct StreamReport {
    pub ttfb_us: Percentiles,
    pub ttfe_us: Percentiles,
    pub gap_us: Percentiles,
    pub streams: u64,
}

/// The JSON report (see the module documentation of `load` for each field).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub bytes: u64,
    pub connections: usize,
    pub threads: usize,
    pub rate: Option<f64>,
    pub latency_us: Percentiles,
    pub errors: Errors,
    pub stream: Option<StreamReport>,
}

impl Report {
    pub fn new(
        s: &Stats,
        duration: Duration,
        connections: usize,
        threads: usize,
        rate: Option<f64>,
    ) -> Self {
        let secs = duration.as_secs_f64();
        Self {
            requests: s.requests,
            duration_s: secs,
            rps: if secs > 0.0 {
                round2(s.requests as f64 / secs)
            } else {
                0.0
            },
            bytes: s.bytes,
            connections,
            threads,
            rate,
            latency_us: Percentiles::of(&s.latency),
            errors: s.errors,
            stream: s.stream.as_ref().map(|st| StreamReport {
                ttfb_us: Percentiles::of(&st.ttfb),
                ttfe_us: Percentiles::of(&st.ttfe),
                gap_us: Percentiles::of(&st.gap),
                streams: st.streams,
            }),
        }
    }

    /// The wrk-like human summary (after the `Running ...` line printed at the start).
    pub fn human(&self) -> String {
        let mut o = String::new();
        let row = |o: &mut String, name: &str, p: &Percentiles| {
            let _ = writeln!(
                o,
                "    {name:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                fmt_us(p.p50 as f64),
                fmt_us(p.p90 as f64),
                fmt_us(p.p99 as f64),
                fmt_us(p.p999 as f64),
                fmt_us(p.max as f64),
                fmt_us(p.mean),
            );
        };
        let _ = writeln!(
            o,
            "    {:<8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        row(&mut o, "Latency", &self.latency_us);
        if let Some(st) = &self.stream {
            row(&mut o, "TTFB", &st.ttfb_us);
            row(&mut o, "TTFE", &st.ttfe_us);
            row(&mut o, "Ev. gap", &st.gap_us);
        }
        let _ = writeln!(
            o,
            "  {} requests in {:.2}s, {} read",
            self.requests,
            self.duration_s,
            fmt_bytes(self.bytes as f64)
        );
        if let Some(st) = &self.stream {
            let _ = writeln!(o, "  {} streams checked for data: [DONE]", st.streams);
        }
        let e = &self.errors;
        if e.total() > 0 {
            let _ = writeln!(
                o,
                "  Errors: connect {}, read {}, write {}, timeout {}, status 4xx {}, status 5xx {}, stream incomplete {}",
                e.connect, e.read, e.write, e.timeout, e.status_4xx, e.status_5xx, e.stream_incomplete
            );
        }
        let _ = writeln!(o, "Requests/sec: {:>12.2}", self.rps);
        let per_s = if self.duration_s > 0.0 {
            self.bytes as f64 / self.duration_s
        } else {
            0.0
        };
        let _ = writeln!(o, "Transfer/sec: {:>12}", fmt_bytes(per_s));
        o
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// `812us`, `1.25ms`, `3.10s`.
fn fmt_us(us: f64) -> String {
    if us < 1_000.0 {
        format!("{us:.0}us")
    } else if us < 1_000_000.0 {
        format!("{:.2}ms", us / 1e3)
    } else {
        format!("{:.2}s", us / 1e6)
    }
}

/// `512B`, `1.50KB`, `230.12MB`, as wrk (powers of 1024).
fn fmt_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v:.0}{}", UNITS[i])
    } else {
        format!("{v:.2}{}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uniform(lo: u64, hi: u64) -> Histogram<u64> {
        let mut h = histogram();
        for v in lo..=hi {
            h.record(v).expect("in range");
        }
        h
    }

    /// Within hdrhistogram's precision (3 significant digits: 0.1 %, at least 1 µs).
    fn near(got: u64, want: u64) -> bool {
        got.abs_diff(want) <= (want / 1000).max(1)
    }

    #[test]
    fn percentiles_of_a_uniform_distribution() {
        let p = Percentiles::of(&uniform(1, 1000));
        assert!(near(p.p50, 500), "p50 {}", p.p50);
        assert!(near(p.p90, 900), "p90 {}", p.p90);
        assert!(near(p.p99, 990), "p99 {}", p.p99);
        assert!(near(p.p999, 999), "p99.9 {}", p.p999);
        assert!(near(p.max, 1000), "max {}", p.max);
        assert!((p.mean - 500.5).abs() < 0.5, "mean {}", p.mean);
    }

    #[test]
    fn percentiles_of_large_values_keep_three_digits() {
        // 1 ms .. 10 s in 1 ms steps: well past the range where buckets hold single values.
        let mut h = histogram();
        for ms in 1..=10_000u64 {
            h.record(ms * 1000).expect("in range");
        }
        let p = Percentiles::of(&h);
        for (got, want) in [(p.p50, 5_000_000), (p.p99, 9_900_000), (p.max, 10_000_000)] {
            assert!(got.abs_diff(want) <= want / 1000, "{got} vs {want}");
        }
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let p = Percentiles::of(&histogram());
        assert_eq!((p.p50, p.p99, p.max), (0, 0, 0));
        assert_eq!(p.mean, 0.0);
    }

    #[test]
    fn over_range_latencies_saturate() {
        assert_eq!(micros(Duration::from_secs(3600)), LATENCY_MAX_US);
        assert_eq!(micros(Duration::from_nanos(1500)), 1);
        let mut h = histogram();
        h.record(micros(Duration::from_secs(120)))
            .expect("saturated into range");
        assert!(near(h.max(), LATENCY_MAX_US));
    }

    #[test]
    fn merging_threads_equals_one_histogram() {
        // Two threads saw halves of the same distribution.
        let mut a = Stats::new(true);
        let mut b = Stats::new(true);
        a.latency = uniform(1, 500);
        b.latency = uniform(501, 1000);
        a.requests = 500;
        b.requests = 500;
        a.bytes = 10;
        b.bytes = 32;
        a.errors.count(ErrorKind::Timeout);
        b.errors.count(ErrorKind::Timeout);
        b.errors.count(ErrorKind::Status5xx);
        if let (Some(sa), Some(sb)) = (a.stream.as_mut(), b.stream.as_mut()) {
            sa.ttfb.record(100).expect("in range");
            sb.ttfb.record(300).expect("in range");
            sa.streams = 1;
            sb.streams = 2;
        }
        a.merge(&b);
        assert_eq!(
            Percentiles::of(&a.latency),
            Percentiles::of(&uniform(1, 1000))
        );
        assert_eq!(a.latency.len(), 1000);
        assert_eq!((a.requests, a.bytes), (1000, 42));
        assert_eq!(a.errors.timeout, 2);
        assert_eq!(a.errors.status_5xx, 1);
        assert_eq!(a.errors.total(), 3);
        let st = a.stream.as_ref().expect("stream stats");
        assert_eq!(st.streams, 3);
        assert_eq!(st.ttfb.len(), 2);
        assert!(near(st.ttfb.max(), 300));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let mut s = Stats::new(false);
        s.latency = uniform(1, 1000);
        s.requests = 1000;
        s.bytes = 2048;
        let r = Report::new(&s, Duration::from_secs(2), 64, 2, None);
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("serialises")).expect("json");
        assert_eq!(v["requests"], 1000);
        assert_eq!(v["duration_s"], 2.0);
        assert_eq!(v["rps"], 500.0);
        assert_eq!(v["bytes"], 2048);
        assert_eq!(v["connections"], 64);
        assert_eq!(v["threads"], 2);
        assert!(v["rate"].is_null());
        assert!(v["stream"].is_null());
        for k in ["p50", "p90", "p99", "p999", "max", "mean"] {
            assert!(v["latency_us"][k].is_number(), "latency_us.{k}");
        }
        assert_eq!(v["latency_us"]["max"], 1000);
        for k in [
            "connect",
            "read",
            "write",
            "timeout",
            "status_4xx",
            "status_5xx",
            "stream_incomplete",
        ] {
            assert_eq!(v["errors"][k], 0, "errors.{k}");
        }

        let r = Report::new(&Stats::new(true), Duration::from_secs(1), 1, 1, Some(100.0));
        let v: serde_json::Value =
            serde_json::from_str(&serde_json::to_string(&r).expect("serialises")).expect("json");
        assert_eq!(v["rate"], 100.0);
        for k in ["ttfb_us", "ttfe_us", "gap_us"] {
            assert_eq!(v["stream"][k]["p99"], 0, "stream.{k}");
        }
        assert_eq!(v["stream"]["streams"], 0);
    }

    #[test]
    fn human_summary_mentions_the_numbers() {
        let mut s = Stats::new(false);
        s.latency = uniform(1, 1000);
        s.requests = 1000;
        s.bytes = 3 * 1024 * 1024;
        s.errors.count(ErrorKind::Read);
        let text = Report::new(&s, Duration::from_secs(1), 8, 1, None).human();
        assert!(
            text.contains("1000 requests in 1.00s, 3.00MB read"),
            "{text}"
        );
        assert!(text.contains("Requests/sec:      1000.00"), "{text}");
        assert!(text.contains("read 1,"), "{text}");
        assert!(text.contains("990us"), "{text}");
        assert_eq!(fmt_us(1500.0), "1.50ms");
        assert_eq!(fmt_us(2_500_000.0), "2.50s");
        assert_eq!(fmt_bytes(512.0), "512B");
    }
}
