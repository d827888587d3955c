//! The GenAI client metrics (OpenTelemetry's GenAI conventions, as the v1.37–v1.41 releases
//! name them): `gen_ai.client.token.usage`, `gen_ai.client.operation.duration` and
//! `gen_ai.client.operation.time_to_first_chunk`, one point per upstream attempt of a model
//! call, traced or not. Rendered on `/metrics` as `gen_ai_client_token_usage`,
//! `gen_ai_client_operation_duration_seconds` and
//! `gen_ai_client_operation_time_to_first_chunk_seconds` (OpenTelemetry's Prometheus naming).
//!
//! Each shard writes only its own block (plain loads and stores of atomics, no
//! read-modify-write shared with another core); the admin thread sums the blocks. A series is
//! an (operation, provider, model asked of the upstream, `error.type`) of which a shard keeps
//! at most [`SERIES_MAX`]; past that, new ones count under the model `_OTHER`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::control::stats::add;

/// Series a shard keeps at most (the last one is `_OTHER`'s).
pub const SERIES_MAX: usize = 64;
/// The model of the series that holds what did not fit.
const OTHER: &str = "_OTHER";
/// `gen_ai.client.token.usage`'s advised bucket bounds, tokens.
pub const TOKEN_BOUNDS: [u64; 14] = [
    1, 4, 16, 64, 256, 1_024, 4_096, 16_384, 65_536, 262_144, 1_048_576, 4_194_304, 16_777_216,
    67_108_864,
];
/// The duration metrics' advised bucket bounds, µs (0.01 s to 81.92 s, doubling).
pub const SECONDS_BOUNDS_US: [u64; 14] = [
    10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_560_000, 5_120_000,
    10_240_000, 20_480_000, 40_960_000, 81_920_000,
];
const BUCKETS: usize = 15;

/// A histogram written by one shard: bucket counts (the last unbounded), the count and sum.
#[derive(Debug, Default)]
pub struct Hist {
    pub buckets: [AtomicU64; BUCKETS],
    pub count: AtomicU64,
    pub sum: AtomicU64,
}

impl Hist {
    fn record(&self, bounds: &[u64; 14], v: u64) {
        let i = bounds.iter().position(|b| v <= *b).unwrap_or(BUCKETS - 1);
        add(&self.buckets[i], 1);
        add(&self.count, 1);
        add(&self.sum, v);
    }
}

/// What a series is: its labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SeriesKey {
    pub operation: &'static str,
    pub provider: &'static str,
    pub model: String,
    /// `error.type` ("" when it succeeded).
    pub error: &'static str,
}

/// One series' histograms.
#[derive(Debug, Default)]
pub struct Series {
    /// Set once, by the shard, before its first point.
    pub key: OnceLock<SeriesKey>,
    pub input_tokens: Hist,
    pub output_tokens: Hist,
    /// µs.
    pub duration: Hist,
    pub time_to_first_chunk: Hist,
}

/// One shard's series (read by the admin thread).
#[derive(Debug)]
pub struct Block {
    pub series: Box<[Series]>,
}

impl Block {
    pub fn new() -> Self {
        Self {
            series: (0..SERIES_MAX).map(|_| Series::default()).collect(),
        }
    }
}

impl Default for Block {
    fn default() -> Self {
        Self::new()
    }
}

/// One attempt's figures.
#[derive(Debug, Clone, Copy)]
pub struct Point<'a> {
    pub operation: &'static str,
    pub provider: &'static str,
    pub model: &'a str,
    pub error: Option<&'static str>,
    pub duration_us: u64,
    /// A stream's time to its first token, µs.
    pub first_chunk_us: Option<u64>,
    pub usage: Option<(u64, u64)>,
}

/// A shard's writer: its block and its series' keys (in slot order).
#[derive(Debug)]
pub struct ShardMetrics {
    block: Arc<Block>,
    keys: RefCell<Vec<SeriesKey>>,
}

impl ShardMetrics {
    pub fn new(block: Arc<Block>) -> Self {
        Self {
            block,
            keys: RefCell::new(Vec::with_capacity(SERIES_MAX)),
        }
    }

    /// Record one attempt. The series is found by comparing labels (a shard has few: no
    /// allocation); a new one costs its key once; past [`SERIES_MAX`] its points go to the model
    /// `_OTHER`.
    pub fn record(&self, p: &Point<'_>) {
        let i = self.slot(p.operation, p.provider, p.model, p.error.unwrap_or(""));
        let s = &self.block.series[i];
        s.duration.record(&SECONDS_BOUNDS_US, p.duration_us);
        if let Some(us) = p.first_chunk_us {
            s.time_to_first_chunk.record(&SECONDS_BOUNDS_US, us);
        }
        if let Some((input, output)) = p.usage {
            s.input_tokens.record(&TOKEN_BOUNDS, input);
            s.output_tokens.record(&TOKEN_BOUNDS, output);
        }
    }

    fn slot(
        &self,
        operation: &'static str,
        provider: &'static str,
        model: &str,
        error: &'static str,
    ) -> usize {
        let mut keys = self.keys.borrow_mut();
        let find = |keys: &[SeriesKey], model: &str| {
            keys.iter().position(|k| {
                k.operation == operation
                    && k.provider == provider
                    && k.error == error
                    && k.model == model
            })
        };
        if let Some(i) = find(&keys, model) {
            return i;
        }
        let model = if keys.len() < SERIES_MAX - 1 {
            model
        } else {
            match find(&keys, OTHER) {
                Some(i) => return i,
                None if keys.len() >= SERIES_MAX => return SERIES_MAX - 1,
                None => OTHER,
            }
        };
        let key = SeriesKey {
            operation,
            provider,
            model: model.to_owned(),
            error,
        };
        let i = keys.len();
        let _ = self.block.series[i].key.set(key.clone());
        keys.push(key);
        i
    }
}

/// A series summed over the shards, for `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistTotals {
    pub buckets: [u64; BUCKETS],
    pub count: u64,
    pub sum: u64,
}

impl HistTotals {
    fn add(&mut self, h: &Hist) {
        for (t, b) in self.buckets.iter_mut().zip(&h.buckets) {
            *t += b.load(Ordering::Relaxed);
        }
        self.count += h.count.load(Ordering::Relaxed);
        self.sum += h.sum.load(Ordering::Relaxed);
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesTotals {
    pub input_tokens: HistTotals,
    pub output_tokens: HistTotals,
    pub duration: HistTotals,
    pub time_to_first_chunk: HistTotals,
}

/// Every shard's series, summed by key (in key order).
pub fn totals(blocks: &[Arc<Block>]) -> Vec<(SeriesKey, SeriesTotals)> {
    let mut by_key: HashMap<SeriesKey, SeriesTotals> = HashMap::new();
    for b in blocks {
        for s in b.series.iter() {
            let Some(key) = s.key.get() else { continue };
            let t = by_key.entry(key.clone()).or_default();
            t.input_tokens.add(&s.input_tokens);
            t.output_tokens.add(&s.output_tokens);
            t.duration.add(&s.duration);
            t.time_to_first_chunk.add(&s.time_to_first_chunk);
        }
    }
    let mut out: Vec<_> = by_key.into_iter().collect();
    out.sort_by(|a, b| {
        (a.0.operation, a.0.provider, &a.0.model, a.0.error).cmp(&(
            b.0.operation,
            b.0.provider,
            &b.0.model,
            b.0.error,
        ))
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point<'a>(model: &'a str, error: Option<&'static str>) -> Point<'a> {
        Point {
            operation: "chat",
            provider: "openai",
            model,
            error,
            duration_us: 150_000,
            first_chunk_us: Some(30_000),
            usage: Some((12, 7)),
        }
    }

    #[test]
    fn points_land_in_their_buckets_and_shards_add_up() {
        let (a, b) = (Arc::new(Block::new()), Arc::new(Block::new()));
        let (sa, sb) = (ShardMetrics::new(a.clone()), ShardMetrics::new(b.clone()));
        sa.record(&point("gpt-4o", None));
        sa.record(&point("gpt-4o", None));
        sb.record(&point("gpt-4o", None));
        sb.record(&point("gpt-4o", Some("503")));
        let t = totals(&[a, b]);
        assert_eq!(t.len(), 2, "{t:?}");
        let ok = &t
            .iter()
            .find(|(k, _)| k.error.is_empty())
            .expect("ok series")
            .1;
        assert_eq!(ok.duration.count, 3);
        assert_eq!(ok.duration.sum, 450_000);
        // 150 ms: the 0.16 s bucket; 30 ms: the 0.04 s bucket; 12 tokens: <= 16; 7: <= 16.
        assert_eq!(ok.duration.buckets[4], 3);
        assert_eq!(ok.time_to_first_chunk.buckets[2], 3);
        assert_eq!(ok.input_tokens.buckets[2], 3);
        assert_eq!(ok.output_tokens.sum, 21);
    }

    #[test]
    fn series_past_the_limit_count_as_other() {
        let block = Arc::new(Block::new());
        let m = ShardMetrics::new(block.clone());
        for i in 0..SERIES_MAX + 10 {
            m.record(&point(&format!("model-{i}"), None));
        }
        let t = totals(&[block]);
        assert_eq!(t.len(), SERIES_MAX);
        let other = &t
            .iter()
            .find(|(k, _)| k.model == "_OTHER")
            .expect("_OTHER")
            .1;
        assert_eq!(other.duration.count, 11);
        let counted: u64 = t.iter().map(|(_, s)| s.duration.count).sum();
        assert_eq!(counted, (SERIES_MAX + 10) as u64);
    }
}
