//! A shard's context: everything one shard owns (its config snapshot, upstream pools, spare
//! buffers, counters, access log, random source), in an `Rc` on the shard's own thread. The
//! connection driver (`conn`) and the shard's loops (`shard`) both work through it; neither
//! imports the other's internals.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::access::Desk;
use crate::accesslog::ShardLog;
use std::sync::Arc;

use crate::builder::{Builder, Inbox};
use crate::config::Config;
use crate::control::shm::{Region, ShardInfo};
use crate::control::stats;
use crate::control::ShardControl;
use crate::drain::DrainSignal;
use crate::limits::{CLIENT_BUF_BYTES_INITIAL, RELAY_BUF_BYTES, WRITE_BUF_BYTES};
use crate::llm::{SseFilter, UsageScanner};
use crate::snapshot::{Kept, Snapshot};
use crate::upstream::Pools;

/// What reading an LLM body and relaying its answer need: taken from the shard's pool per
/// request and given back when it ends.
#[derive(Debug, Default)]
pub struct LlmBufs {
    /// The client's request head, kept to build each attempt's upstream head.
    pub head: Vec<u8>,
    /// The request body, read whole before it is forwarded.
    pub body: Vec<u8>,
    /// The body with `stream_options.include_usage` added (or scratch while relaying).
    pub rewritten: Vec<u8>,
    /// The body with the deployment's model name (before any other rewrite).
    pub scratch: Vec<u8>,
    /// The body with its prompt template filled (or its `variables` removed).
    pub filled: Vec<u8>,
    /// The upstream's path when the provider builds one per request (Azure's deployments).
    pub path: String,
    /// A filtered stream's de-chunked input and filtered output.
    pub sse_in: Vec<u8>,
    pub sse_out: Vec<u8>,
    /// Reads the upstream's `usage` out of the response as it passes.
    pub scanner: UsageScanner,
    /// Drops the usage chunk shardgate asked for from a stream, and counts its events.
    pub filter: SseFilter,
}

/// Largest write buffer kept as a spare, bytes.
const SPARE_BUF_BYTES_MAX: usize = 256 * 1024;

/// Spare buffers of each kind (write, upstream read, client read) kept per shard. Buffers are
/// lent only while they hold data, so a shard needs about as many as it has exchanges moving
/// bytes at one moment, not one per open connection; a burst's extra buffers are freed when it
/// ends instead of being kept for good.
const SPARE_BUFS_MAX: usize = 128;

/// Largest client read buffer kept as a spare, bytes (one grown for a large head or a streamed
/// body).
const CLIENT_SPARE_BYTES_MAX: usize = 64 * 1024;

/// Buffers of one kind a shard keeps for reuse, each allocated with `bytes` of capacity when
/// none is spare. Given back cleared; kept only while fewer than [`SPARE_BUFS_MAX`] are and
/// when their capacity is between `bytes` and `keep_bytes_max`.
#[derive(Debug)]
pub struct Spares {
    bufs: RefCell<Vec<Vec<u8>>>,
    bytes: usize,
    keep_bytes_max: usize,
}

impl Spares {
    const fn new(bytes: usize, keep_bytes_max: usize) -> Self {
        Self {
            bufs: RefCell::new(Vec::new()),
            bytes,
            keep_bytes_max,
        }
    }

    /// An empty buffer of at least `bytes` of capacity.
    pub fn take(&self) -> Vec<u8> {
        self.bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.bytes))
    }

    /// Keep `buf` for the next [`take`](Self::take) (cleared), or free it (too many spares,
    /// or a size not kept). A buffer of no capacity is ignored.
    pub fn give(&self, mut buf: Vec<u8>) {
        let mut spare = self.bufs.borrow_mut();
        if spare.len() < SPARE_BUFS_MAX
            && buf.capacity() >= self.bytes
            && buf.capacity() <= self.keep_bytes_max
        {
            buf.clear();
            spare.push(buf);
        }
    }

    /// Buffers kept now.
    pub fn count(&self) -> usize {
        self.bufs.borrow().len()
    }
}

/// Everything one shard owns. Lives in an `Rc` on the shard's thread only.
#[derive(Debug)]
pub struct ShardCtx {
    pub id: usize,
    snapshot: RefCell<Rc<Snapshot>>,
    pub pools: Pools,
    /// Write buffers ([`ShardCtx::take_buf`]).
    spare_bufs: Spares,
    /// Upstream read buffers: lent to an upstream connection while it reads a head or a
    /// body that is not a stream, and per read to a stream's connection; pooled connections
    /// hold none.
    pub read_bufs: Spares,
    /// Client read buffers, given back while a connection relays a stream.
    pub client_bufs: Spares,
    /// Where a plain upstream connection the runtime reported readable is read at once
    /// (`conn::upread`), before its bytes are copied into a lent read buffer.
    pub recv_scratch: RefCell<Vec<u8>>,
    pub drain: DrainSignal,
    pub control: ShardControl,
    /// The engine's config builder, and where its results for this shard arrive.
    builder: Builder,
    /// The access-request thread (`POST /v1/access-requests` is filed there, not here).
    pub access: Desk,
    inbox: Inbox,
    /// Config messages read from the ring and not yet handed to the builder (its queue was
    /// full).
    unsent: RefCell<Vec<(u64, Vec<u8>)>>,
    /// The newest version handed to the builder, and the newest it answered: results are
    /// awaited while the first is ahead.
    submitted: Cell<u64>,
    answered: Cell<u64>,
    pub access_log: Option<ShardLog>,
    /// What a new config keeps of the old one's state.
    pub(crate) kept: Kept,
    /// The shard's random source (xorshift; for the balancers' random choices).
    rng: Cell<u64>,
    /// Buffers of LLM requests, lent per request.
    pub llm_pool: RefCell<Vec<LlmBufs>>,
    /// Open client connections (mirrored into the shared counters).
    connections: Cell<usize>,
    /// Requests being served (mirrored into the shared counters).
    requests_inflight: Cell<usize>,
    /// Connections past `connections_max` being answered 503 now.
    pub(crate) refusals_answering: Cell<usize>,
    /// Warnings about refused connections and failed accepts, one a second at most.
    refused_log: LogLimit,
    accept_error_log: LogLimit,
    /// Bedrock credentials rotated since the config was loaded.
    pub aws_keys: Option<crate::aws_keys::KeyFeed>,
    /// The shard's span batch, with `[telemetry]`.
    pub spans: Option<crate::telemetry::span::ShardSpans>,
    /// The random source of trace and span ids (xorshift, seeded from the OS).
    trace_rng: Cell<u64>,
    /// The GenAI metrics this shard writes.
    pub genai: crate::telemetry::genai::ShardMetrics,
}

impl ShardCtx {
    pub fn new(
        id: usize,
        version: u64,
        cfg: Config,
        region: &'static Region,
        builder: Builder,
        access_log: Option<ShardLog>,
        kept: Kept,
    ) -> Self {
        let control = ShardControl::new(region, id, version);
        let pools = Pools::new();
        let cfg = Arc::new(cfg);
        // Snapshots hand their config to the builder when dropped (freed off the shard).
        *kept.retire.borrow_mut() = Some(builder.clone());
        let snapshot = Snapshot::new(version, cfg, &pools, &control.stats, region, &kept, None);
        Self {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            pools,
            spare_bufs: Spares::new(WRITE_BUF_BYTES, SPARE_BUF_BYTES_MAX),
            read_bufs: Spares::new(RELAY_BUF_BYTES, RELAY_BUF_BYTES),
            client_bufs: Spares::new(CLIENT_BUF_BYTES_INITIAL, CLIENT_SPARE_BYTES_MAX),
            recv_scratch: RefCell::new(vec![0; RELAY_BUF_BYTES]),
            drain: DrainSignal::new(),
            control,
            builder,
            access: Desk::closed(),
            inbox: Inbox::default(),
            unsent: RefCell::new(Vec::new()),
            submitted: Cell::new(0),
            answered: Cell::new(0),
            access_log,
            kept,
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (id as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            llm_pool: RefCell::new(Vec::new()),
            connections: Cell::new(0),
            requests_inflight: Cell::new(0),
            refusals_answering: Cell::new(0),
            refused_log: LogLimit::default(),
            accept_error_log: LogLimit::default(),
            aws_keys: None,
            spans: None,
            trace_rng: Cell::new(0),
            genai: crate::telemetry::genai::ShardMetrics::new(Arc::default()),
        }
    }

    /// The context writing its GenAI metrics into `block` (which `/metrics` reads).
    pub fn with_genai(mut self, block: Arc<crate::telemetry::genai::Block>) -> Self {
        self.genai = crate::telemetry::genai::ShardMetrics::new(block);
        self
    }

    /// The context recording spans into `spans` (tracing on).
    pub fn with_spans(mut self, spans: Option<crate::telemetry::span::ShardSpans>) -> Self {
        if spans.is_some() {
            // Trace ids must differ across shards, restarts and hosts: seeded from the OS.
            let mut seed = [0u8; 8];
            let rng = ring::rand::SystemRandom::new();
            let _ = ring::rand::SecureRandom::fill(&rng, &mut seed);
            let seed =
                u64::from_ne_bytes(seed) ^ (self.id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            self.trace_rng.set(seed.max(1));
        }
        self.spans = spans;
        self
    }

    /// The next draw of the trace id source (xorshift64*).
    pub fn trace_random(&self) -> u64 {
        let mut x = self.trace_rng.get().max(1);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.trace_rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The context with `feed` bringing rotated Bedrock credentials.
    pub fn with_aws_keys(mut self, feed: crate::aws_keys::KeyFeed) -> Self {
        self.aws_keys = Some(feed);
        self
    }

    /// The context with `access` as its access-request thread (without one, a tenant's access
    /// request is answered 503).
    pub fn with_access(mut self, access: Desk) -> Self {
        self.access = access;
        self
    }

    /// The config new requests use. Cheap: a reference-count increment.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Take a new config if one was published: one atomic load and a compare when none was.
    /// Called between requests and on the shard's timer. New messages go to the engine's
    /// config builder (`crate::builder`), which validates them off the shard; its results are
    /// taken here as they arrive (each refusal counted), and only the shard's own part of the
    /// newest good one is built here.
    pub fn refresh(&self) {
        if self.control.has_news() {
            self.control.poll_messages(&mut self.unsent.borrow_mut());
        }
        if !self.unsent.borrow().is_empty() {
            self.submit();
        }
        if self.submitted.get() <= self.answered.get() {
            return;
        }
        let mut results = Vec::new();
        self.inbox.take(&mut results);
        let current = self.snapshot.borrow().version;
        let mut newest = None;
        for built in results {
            self.answered.set(self.answered.get().max(built.version));
            match built.result {
                _ if built.version <= current => {}
                Err(why) => self.control.refused(built.version, &why),
                Ok(cfg) => newest = Some((built.version, cfg, built.reuse)),
            }
        }
        let Some((version, cfg, reuse)) = newest else {
            return;
        };
        let started = crate::clock::Now::read();
        let started_cpu = thread_cpu_ns();
        let prev = self.snapshot();
        // The tenants it shares with the version this shard runs keep their state as they are.
        let carried = reuse
            .as_deref()
            .filter(|r| r.from == prev.version)
            .map(|r| (&*prev, r));
        let next = Snapshot::new(
            version,
            cfg,
            &self.pools,
            &self.control.stats,
            self.control.region(),
            &self.kept,
            carried,
        );
        drop(prev);
        *self.snapshot.borrow_mut() = Rc::new(next);
        // Pools of endpoints no longer named by the new config are closed; requests of the old
        // snapshot still in flight drop their connections instead of pooling.
        self.pools.retain_assigned();
        self.control.applied(version);
        // How long this shard stopped serving to take the config (its own part): wall time,
        // and the thread's CPU time (the difference is time the kernel gave other threads).
        let paused_us = started.until(crate::clock::Now::read()).as_micros();
        let paused_cpu_us = thread_cpu_ns().saturating_sub(started_cpu) / 1_000;
        tracing::info!(
            shard = self.id,
            version,
            paused_us,
            paused_cpu_us,
            "config applied"
        );
    }

    /// Hand the unsent messages to the builder, oldest first (what its full queue does not
    /// take waits for the next call).
    fn submit(&self) {
        let mut unsent = self.unsent.borrow_mut();
        let mut left = Vec::new();
        for (version, body) in unsent.drain(..) {
            if !left.is_empty() {
                left.push((version, body));
                continue;
            }
            match self.builder.submit(version, body, &self.inbox) {
                Ok(()) => self.submitted.set(self.submitted.get().max(version)),
                Err(body) => left.push((version, body)),
            }
        }
        *unsent = left;
    }

    /// The next number of the shard's xorshift64 sequence.
    pub fn next_random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.rng.set(x);
        x
    }

    pub fn info(&self) -> &'static ShardInfo {
        self.control.stats.info()
    }

    pub fn open_connections(&self) -> usize {
        self.connections.get()
    }

    pub(crate) fn connection_opened(&self) {
        self.connections.set(self.connections.get() + 1);
        let info = self.info();
        stats::set(&info.connections, self.connections.get() as u64);
        stats::add(&info.connections_accepted, 1);
    }

    pub(crate) fn connection_closed(&self) {
        self.connections
            .set(self.connections.get().saturating_sub(1));
        stats::set(&self.info().connections, self.connections.get() as u64);
    }

    /// Count a request in flight until the guard drops, or `None` (shed it) when the shard
    /// already serves `requests_inflight_max`.
    pub fn begin_request(&self, max: usize) -> Option<InflightGuard<'_>> {
        let n = self.requests_inflight.get();
        if n >= max {
            stats::add(&self.info().requests_shed, 1);
            return None;
        }
        self.requests_inflight.set(n + 1);
        stats::set(&self.info().requests_inflight, n as u64 + 1);
        Some(InflightGuard(self))
    }

    /// A new connection past `connections_max`: counted, and logged at most once a second
    /// (an attack would otherwise flood the log).
    pub(crate) fn connection_refused(&self) {
        stats::add(&self.info().connections_refused, 1);
        if let Some(also) = self.refused_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                refused = self.info().connections_refused.load(Ordering::Relaxed),
                "connections_max reached; new connections are refused ({also} more since the last warning)"
            );
        }
    }

    /// An accept that failed (EMFILE and friends): logged at most once a second.
    pub(crate) fn accept_failed(&self, e: &std::io::Error) {
        if let Some(also) = self.accept_error_log.allow(Instant::now()) {
            tracing::warn!(
                shard = self.id,
                "accept failed: {e} ({also} more since the last warning)"
            );
        }
    }

    pub fn upstream_connected(&self) {
        stats::add(&self.info().upstream_connects, 1);
    }

    /// A cleared write buffer lent from the shard's spares (allocated only when none is
    /// spare); it goes back when the [`SpareBuf`] is dropped.
    pub fn take_buf(&self) -> SpareBuf<'_> {
        SpareBuf {
            ctx: self,
            buf: self.spare_bufs.take(),
        }
    }

    /// Keep `buf` as a spare (cleared), unless the spares are full or it is too small or was
    /// grown too large to keep idle (it is freed then).
    fn give_back(&self, buf: Vec<u8>) {
        self.spare_bufs.give(buf);
    }
}

/// A write buffer lent from the shard's spares ([`ShardCtx::take_buf`]). It goes back to them
/// when dropped, however the request ends (answered, retried, cut off, the task dropped), so
/// no exit path gives a buffer back by hand.
///
/// It derefs to its `Vec`. An owned-buffer write (io_uring holds the buffer while the write
/// runs) [`lend`](Self::lend)s the `Vec` and [`restore`](Self::restore)s what the write
/// gives back.
#[derive(Debug)]
pub struct SpareBuf<'a> {
    ctx: &'a ShardCtx,
    buf: Vec<u8>,
}

impl SpareBuf<'_> {
    /// The buffer itself, for a write that takes ownership of it; this one is empty until
    /// [`restore`](Self::restore)d.
    pub fn lend(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Take back the buffer a write returned. `None` (a write that timed out keeps its buffer):
    /// this one stays empty, to be dropped with the connection that timed out.
    pub fn restore(&mut self, buf: Option<Vec<u8>>) {
        if let Some(buf) = buf {
            self.buf = buf;
        }
    }
}

impl std::ops::Deref for SpareBuf<'_> {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.buf
    }
}

impl std::ops::DerefMut for SpareBuf<'_> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }
}

impl Drop for SpareBuf<'_> {
    fn drop(&mut self) {
        if self.buf.capacity() != 0 {
            self.ctx.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// One log line a second at most for an event that repeats (an attack, exhausted
/// descriptors), counting the ones it holds back.
#[derive(Debug, Default)]
struct LogLimit {
    last: Cell<Option<Instant>>,
    held_back: Cell<u64>,
}

impl LogLimit {
    /// `Some(n)`: log now, `n` events went unlogged since the last line. `None`: hold back.
    fn allow(&self, now: Instant) -> Option<u64> {
        let due = self
            .last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if !due {
            self.held_back.set(self.held_back.get() + 1);
            return None;
        }
        self.last.set(Some(now));
        Some(self.held_back.replace(0))
    }
}

/// A request counted in flight on its shard ([`ShardCtx::begin_request`]) until dropped.
#[derive(Debug)]
pub struct InflightGuard<'a>(&'a ShardCtx);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        let n = self.0.requests_inflight.get().saturating_sub(1);
        self.0.requests_inflight.set(n);
        stats::set(&self.0.info().requests_inflight, n as u64);
    }
}

/// CPU time of the calling thread, ns (a vDSO read; only on a config change).
fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    u64::try_from(t.tv_sec)
        .unwrap_or(0)
        .saturating_mul(1_000_000_000)
        .saturating_add(u64::try_from(t.tv_nsec).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_ctx() -> ShardCtx {
        let region: &'static Region =
            Box::leak(Box::new(Region::anonymous(1).expect("an anonymous region")));
        let roots = std::sync::Arc::new(rustls::RootCertStore::empty());
        let kept = Kept::new(roots, 0, crate::fair::Fabric::silent(1));
        let cfg = Config::embedded_default();
        let builder = Builder::spawn(cfg.clone(), 1, crate::config::Overrides::default(), 1, None)
            .expect("the builder thread");
        ShardCtx::new(0, 1, cfg, region, builder, None, kept)
    }

    fn spares(ctx: &ShardCtx) -> usize {
        ctx.spare_bufs.count()
    }

    /// What a handler does with its buffer before it returns early or finishes.
    fn handle(ctx: &ShardCtx, fail_early: bool) -> Result<usize, ()> {
        let mut wbuf = ctx.take_buf();
        wbuf.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        if fail_early {
            return Err(());
        }
        Ok(wbuf.len())
    }

    #[test]
    fn a_spare_buffer_goes_back_on_every_way_out() {
        let ctx = shard_ctx();
        // Dropped at the end of its scope: back, cleared, and the same buffer is lent again.
        let first = {
            let mut b = ctx.take_buf();
            b.extend_from_slice(b"request");
            b.as_ptr()
        };
        assert_eq!(spares(&ctx), 1);
        let again = ctx.take_buf();
        assert_eq!(again.as_ptr(), first);
        assert!(again.is_empty());
        assert_eq!(spares(&ctx), 0);
        drop(again);
        // An early return and a normal one both give it back.
        assert_eq!(handle(&ctx, true), Err(()));
        assert_eq!(spares(&ctx), 1);
        assert_eq!(handle(&ctx, false), Ok(17));
        assert_eq!(spares(&ctx), 1);
        // Lent to a write and restored: back once (not twice).
        {
            let mut b = ctx.take_buf();
            let lent = b.lend();
            b.restore(Some(lent));
        }
        assert_eq!(spares(&ctx), 1);
        // Lent to a write that timed out (the buffer stays with the cancelled write): nothing
        // comes back and nothing breaks.
        {
            let mut b = ctx.take_buf();
            let kept_by_the_write = b.lend();
            b.restore(None);
            assert!(b.is_empty());
            drop(kept_by_the_write);
        }
        assert_eq!(spares(&ctx), 0);
        // Grown past what is kept idle: freed, not kept.
        {
            let mut b = ctx.take_buf();
            b.reserve(SPARE_BUF_BYTES_MAX * 2);
        }
        assert_eq!(spares(&ctx), 0);
    }

    #[test]
    fn spares_keep_a_bounded_number_of_buffers_of_their_size() {
        let spares = Spares::new(4096, 16 * 1024);
        // Taken when none is spare: allocated at the kind's size.
        let a = spares.take();
        assert!(a.capacity() >= 4096);
        // No capacity (a buffer already given back), too small or too large: not kept.
        spares.give(Vec::new());
        spares.give(Vec::with_capacity(1024));
        spares.give(Vec::with_capacity(64 * 1024));
        assert_eq!(spares.count(), 0);
        // Kept cleared, and lent again.
        let mut b = a;
        b.extend_from_slice(b"bytes relayed");
        let ptr = b.as_ptr();
        spares.give(b);
        assert_eq!(spares.count(), 1);
        let again = spares.take();
        assert_eq!((again.as_ptr(), again.len()), (ptr, 0));
        // A burst gives back more than are kept: the rest is freed.
        for _ in 0..SPARE_BUFS_MAX + 50 {
            spares.give(Vec::with_capacity(4096));
        }
        assert_eq!(spares.count(), SPARE_BUFS_MAX);
    }

    #[test]
    fn a_log_limit_lets_one_line_a_second_through_and_counts_the_rest() {
        let l = LogLimit::default();
        let t = Instant::now();
        assert_eq!(l.allow(t), Some(0));
        assert_eq!(l.allow(t + Duration::from_millis(10)), None);
        assert_eq!(l.allow(t + Duration::from_millis(999)), None);
        assert_eq!(l.allow(t + Duration::from_millis(1000)), Some(2));
        assert_eq!(l.allow(t + Duration::from_millis(1500)), None);
        assert_eq!(l.allow(t + Duration::from_millis(2100)), Some(1));
    }
}
