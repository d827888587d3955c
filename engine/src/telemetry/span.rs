//! What a shard records of a span: plain fixed-size data, copied into the shard's batch and
//! handed to the exporter thread a batch at a time.
//!
//! ```text
//! shard (one per core)                                     exporter thread (not a shard's)
//! ShardSpans::record(SpanRecord) ─► batch (SPAN_BATCH_MAX records, allocated up front)
//!   batch full, or the shard's timer (SPAN_FLUSH_MS) ─► Hub::full (bounded, lock-free)
//!     full queue: the batch's spans dropped, counted ─► /metrics                     │
//!   an empty batch back from Hub::free ◄────────────── batches exported, cleared ◄───┘
//! ```
//!
//! A shard never waits for the exporter and never allocates for spans after start: the batches
//! are allocated when the engine starts ([`Hub::new`]); a shard that finds none free goes on
//! filling the one it has (its spans are dropped and counted if the queue is full). The only
//! traffic between cores is one queue operation per batch.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use crossbeam::queue::ArrayQueue;

use super::context::{SpanId, TraceId};
use crate::accesslog::cut;
use crate::limits::{SPAN_BATCH_MAX, SPAN_FLUSH_MS};

/// A string of at most `N` bytes, cut at a character boundary, held inline.
#[derive(Clone, Copy)]
pub struct Text<const N: usize> {
    bytes: [u8; N],
    /// INVARIANT: `bytes[..len]` is UTF-8 (set only from a `&str`, cut at a char boundary).
    len: u16,
}

impl<const N: usize> Text<N> {
    pub const EMPTY: Self = Self {
        bytes: [0; N],
        len: 0,
    };

    pub fn new(s: &str) -> Self {
        let mut t = Self::EMPTY;
        t.set(s);
        t
    }

    pub fn set(&mut self, s: &str) {
        let s = cut(s, N.min(usize::from(u16::MAX)));
        self.bytes[..s.len()].copy_from_slice(s.as_bytes());
        self.len = u16::try_from(s.len()).unwrap_or(0);
    }

    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self::EMPTY
    }
}

impl<const N: usize> std::fmt::Debug for Text<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.as_str().fmt(f)
    }
}

/// Bytes of a name a span carries (tenant, model, host).
pub const NAME_BYTES: usize = 64;
/// Bytes of a method.
pub const METHOD_BYTES: usize = 16;
/// Bytes of a request path (without its query: it may carry a key).
pub const PATH_BYTES: usize = 160;
/// Finish reasons kept per attempt, and bytes of each.
pub const FINISH_REASONS_MAX: usize = 4;
pub const FINISH_REASON_BYTES: usize = 24;

/// The request's SERVER span.
#[derive(Debug, Clone, Copy)]
pub struct ServerSpan {
    pub method: Text<METHOD_BYTES>,
    pub path: Text<PATH_BYTES>,
    /// The path is an LLM API's (`/v1/chat/completions`, ...): the span is named by it.
    pub api_route: bool,
    pub client: SocketAddr,
    pub tls: bool,
    /// The tenant's name (never a key); empty when none was found.
    pub tenant: Text<NAME_BYTES>,
}

/// One upstream attempt's CLIENT span: a model call (GenAI conventions) or, on a plain route,
/// an HTTP call.
#[derive(Debug, Clone, Copy)]
pub struct AttemptSpan {
    /// `gen_ai.operation.name` (`chat`, `embeddings`, ...); `None`: a plain HTTP attempt.
    pub operation: Option<&'static str>,
    /// `gen_ai.provider.name`.
    pub provider: &'static str,
    pub method: Text<METHOD_BYTES>,
    /// The model asked of the upstream, and the one that answered (from its body).
    pub request_model: Text<NAME_BYTES>,
    pub response_model: Text<NAME_BYTES>,
    /// The model group the client named.
    pub group: Text<NAME_BYTES>,
    pub max_tokens: Option<u64>,
    /// Input and output tokens, from the upstream's `usage`.
    pub usage: Option<(u64, u64)>,
    pub finish_reasons: [Text<FINISH_REASON_BYTES>; FINISH_REASONS_MAX],
    pub server_address: Text<NAME_BYTES>,
    pub server_port: u16,
    /// When the answer's first body bytes arrived (a stream's first token), ns since the
    /// epoch; 0: none did.
    pub first_token_unix_ns: u64,
    /// This attempt's place among the request's attempts (0 first), and whether it was a
    /// hedge.
    pub attempt: u8,
    pub hedge: bool,
    pub stream: bool,
}

impl AttemptSpan {
    pub fn finish_reasons(&self) -> impl Iterator<Item = &str> {
        self.finish_reasons
            .iter()
            .filter(|t| !t.is_empty())
            .map(Text::as_str)
    }
}

#[derive(Debug, Clone, Copy)]
pub enum SpanBody {
    Server(ServerSpan),
    Attempt(AttemptSpan),
}

/// One finished span.
#[derive(Debug, Clone, Copy)]
pub struct SpanRecord {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub parent: Option<SpanId>,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    /// The HTTP status (sent to the client, or the upstream's); 0: none.
    pub status: u16,
    /// `error.type` when it failed (the span's status is then ERROR).
    pub error: Option<&'static str>,
    pub body: SpanBody,
}

/// Counters of the span pipeline, shown on `/metrics`.
#[derive(Debug, Default)]
pub struct SpanStats {
    /// Spans handed to the exporter.
    pub queued: AtomicU64,
    /// Spans dropped because the exporter's queue was full (it is slow or down).
    pub dropped_queue_full: AtomicU64,
    /// Spans the collector accepted.
    pub exported: AtomicU64,
    /// Spans lost to a failed export (the collector refused them, was unreachable or slow).
    pub dropped_export_failed: AtomicU64,
    /// Exports (requests to the collector) that failed.
    pub export_failures: AtomicU64,
}

/// Where the shards' batches meet the exporter.
pub struct Hub {
    pub full: ArrayQueue<Vec<SpanRecord>>,
    pub free: ArrayQueue<Vec<SpanRecord>>,
    pub stats: SpanStats,
    /// Set when the engine stops: the exporter sends what is queued and ends.
    pub stop: AtomicBool,
}

impl Hub {
    /// A hub holding `batches` empty batches of [`SPAN_BATCH_MAX`] records, allocated now.
    pub fn new(batches: usize) -> Self {
        let batches = batches.max(1);
        let free = ArrayQueue::new(batches);
        for _ in 0..batches {
            let _ = free.push(Vec::with_capacity(SPAN_BATCH_MAX));
        }
        Self {
            full: ArrayQueue::new(batches),
            free,
            stats: SpanStats::default(),
            stop: AtomicBool::new(false),
        }
    }
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("full", &self.full.len())
            .field("free", &self.free.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// A shard's side: the batch being filled.
pub struct ShardSpans {
    batch: RefCell<Vec<SpanRecord>>,
    /// When the batch last went to the exporter (or started).
    flushed: Cell<Instant>,
    hub: std::sync::Arc<Hub>,
    /// The ratio a request without a sampled parent is recorded at.
    pub sample_ratio: f64,
}

impl std::fmt::Debug for ShardSpans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardSpans")
            .field("batch", &self.batch.borrow().len())
            .field("sample_ratio", &self.sample_ratio)
            .finish_non_exhaustive()
    }
}

impl ShardSpans {
    pub fn new(hub: std::sync::Arc<Hub>, sample_ratio: f64) -> Self {
        let batch = hub
            .free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SPAN_BATCH_MAX));
        Self {
            batch: RefCell::new(batch),
            flushed: Cell::new(Instant::now()),
            hub,
            sample_ratio,
        }
    }

    /// Keep a finished span; a full batch goes to the exporter first.
    pub fn record(&self, span: SpanRecord) {
        if self.batch.borrow().len() >= SPAN_BATCH_MAX {
            self.flush();
        }
        let mut batch = self.batch.borrow_mut();
        if batch.len() < SPAN_BATCH_MAX {
            batch.push(span);
        } else {
            // The queue was full and no batch was free: this span is dropped.
            add(&self.hub.stats.dropped_queue_full, 1);
        }
    }

    /// From the shard's timer: hand over what the batch holds once it is [`SPAN_FLUSH_MS`] old.
    pub fn tick(&self) {
        if self.flushed.get().elapsed().as_millis() >= u128::from(SPAN_FLUSH_MS) {
            self.flush();
        }
    }

    /// Hand the batch to the exporter now, if it holds spans. A full queue drops them
    /// (counted) and the batch is reused.
    pub fn flush(&self) {
        self.flushed.set(Instant::now());
        let mut batch = self.batch.borrow_mut();
        if batch.is_empty() {
            return;
        }
        let Some(next) = self.hub.free.pop() else {
            add(&self.hub.stats.dropped_queue_full, batch.len() as u64);
            batch.clear();
            return;
        };
        let full = std::mem::replace(&mut *batch, next);
        let n = full.len() as u64;
        match self.hub.full.push(full) {
            Ok(()) => add(&self.hub.stats.queued, n),
            Err(full) => {
                // Cannot happen (as many batches as the queue holds exist), but if it did the
                // spans are dropped and the batch reused.
                add(&self.hub.stats.dropped_queue_full, n);
                let spare = std::mem::replace(&mut *batch, full);
                let _ = self.hub.free.push(spare);
                batch.clear();
            }
        }
    }
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn span(i: u64) -> SpanRecord {
        SpanRecord {
            trace_id: [1; 16],
            span_id: i.to_be_bytes(),
            parent: None,
            start_unix_ns: i,
            end_unix_ns: i + 1,
            status: 200,
            error: None,
            body: SpanBody::Server(ServerSpan {
                method: Text::new("POST"),
                path: Text::new("/v1/chat/completions"),
                api_route: true,
                client: SocketAddr::from(([127, 0, 0, 1], 1)),
                tls: false,
                tenant: Text::new("team-a"),
            }),
        }
    }

    #[test]
    fn text_is_cut_at_a_char_boundary() {
        let t = Text::<5>::new("abcdé");
        assert_eq!(t.as_str(), "abcd");
        assert_eq!(Text::<8>::new("gpt-4o").as_str(), "gpt-4o");
        assert!(Text::<8>::EMPTY.is_empty());
    }

    #[test]
    fn batches_go_to_the_exporter_and_a_full_queue_drops_and_counts() {
        // Two batches in all: one being filled, one free.
        let hub = Arc::new(Hub::new(2));
        let shard = ShardSpans::new(hub.clone(), 1.0);
        for i in 0..(SPAN_BATCH_MAX as u64 + 1) {
            shard.record(span(i));
        }
        // The first full batch went to the queue; the second is being filled.
        assert_eq!(hub.full.len(), 1);
        assert_eq!(
            hub.stats.queued.load(Ordering::Relaxed),
            SPAN_BATCH_MAX as u64
        );
        // No batch is free now: the next flush drops what the batch holds.
        shard.flush();
        assert_eq!(hub.stats.dropped_queue_full.load(Ordering::Relaxed), 1);
        // The exporter takes the batch, clears it and gives it back: flushing works again.
        let mut b = hub.full.pop().expect("a batch");
        assert_eq!(b.len(), SPAN_BATCH_MAX);
        assert_eq!(b[0].span_id, 0u64.to_be_bytes());
        b.clear();
        hub.free.push(b).expect("room");
        shard.record(span(7));
        shard.flush();
        assert_eq!(hub.full.pop().map(|b| b.len()), Some(1));
        // Flushing an empty batch sends nothing.
        shard.flush();
        assert!(hub.full.is_empty());
    }
}
