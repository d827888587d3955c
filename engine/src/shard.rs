//! Shards: one pinned thread per core, each with its own monoio runtime, SO_REUSEPORT listener,
//! upstream pools and counters. Nothing here is shared between shards: each reads new configs
//! from the shared-memory ring itself and writes only its own counter block; the process-wide
//! shutdown flag is read on a timer.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::net::TcpListener;

use crate::accesslog::ShardLog;
use crate::config::{Config, DriverChoice, Overrides};
use crate::control::shm::{Region, ShardInfo};
use crate::control::stats;
use crate::control::ShardControl;
use crate::drain::DrainSignal;
use crate::fair::Fabric;
use crate::limits::{
    ACCESS_LOG_FLUSH_MS, CONTROL_POLL_MS, LISTEN_BACKLOG, SHUTDOWN_POLL_MS, WRITE_BUF_BYTES,
};
pub use crate::runtime::DriverKind;
use crate::snapshot::{Kept, Snapshot};
use crate::upstream::Pools;

/// How often a shard gives back tenants' stale leases, ms.
const LEASE_CHECK_MS: u64 = 250;

/// Largest write buffer kept as a spare, bytes.
const SPARE_BUF_BYTES_MAX: usize = 256 * 1024;

/// Spare write buffers kept per shard.
const SPARE_BUFS_MAX: usize = 1024;

/// What a shard reports to the main thread once its listener is bound.
#[derive(Debug)]
pub struct Ready {
    pub shard: usize,
    pub result: Result<DriverKind, String>,
}

/// Everything one shard owns. Lives in an `Rc` on the shard's thread only.
#[derive(Debug)]
pub struct ShardCtx {
    pub id: usize,
    snapshot: RefCell<Rc<Snapshot>>,
    pub pools: Pools,
    spare_bufs: RefCell<Vec<Vec<u8>>>,
    pub drain: DrainSignal,
    pub control: ShardControl,
    pub access_log: Option<ShardLog>,
    /// What a new config keeps of the old one's state.
    kept: Kept,
    /// The shard's random source (xorshift; for the balancers' random choices).
    rng: Cell<u64>,
    /// Buffers of LLM requests, lent per request.
    pub llm_pool: RefCell<Vec<crate::conn::LlmBufs>>,
    /// Open client connections (mirrored into the shared counters).
    connections: Cell<usize>,
    /// Requests being served (mirrored into the shared counters).
    requests_inflight: Cell<usize>,
    /// Connections past `connections_max` being answered 503 now.
    refusals_answering: Cell<usize>,
    /// Warnings about refused connections and failed accepts, one a second at most.
    refused_log: LogLimit,
    accept_error_log: LogLimit,
}

impl ShardCtx {
    pub fn new(
        id: usize,
        version: u64,
        cfg: Config,
        region: &'static Region,
        overrides: Overrides,
        access_log: Option<ShardLog>,
        kept: Kept,
    ) -> Self {
        let control = ShardControl::new(region, id, version, overrides);
        let pools = Pools::new();
        let snapshot = Snapshot::new(version, cfg, &pools, &control.stats, region, &kept);
        Self {
            id,
            snapshot: RefCell::new(Rc::new(snapshot)),
            pools,
            spare_bufs: RefCell::new(Vec::new()),
            drain: DrainSignal::new(),
            control,
            access_log,
            kept,
            rng: Cell::new(0x9e37_79b9_7f4a_7c15 ^ (id as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9)),
            llm_pool: RefCell::new(Vec::new()),
            connections: Cell::new(0),
            requests_inflight: Cell::new(0),
            refusals_answering: Cell::new(0),
            refused_log: LogLimit::default(),
            accept_error_log: LogLimit::default(),
        }
    }

    /// The config new requests use. Cheap: a reference-count increment.
    pub fn snapshot(&self) -> Rc<Snapshot> {
        self.snapshot.borrow().clone()
    }

    /// Take a new config from the ring if one was published: one atomic load when none was.
    /// Called between requests and on the shard's timer.
    pub fn refresh(&self) {
        if !self.control.has_news() {
            return;
        }
        let current = self.snapshot();
        if let Some((version, cfg)) = self.control.poll(&current.cfg) {
            let next = Snapshot::new(
                version,
                cfg,
                &self.pools,
                &self.control.stats,
                self.control.region(),
                &self.kept,
            );
            *self.snapshot.borrow_mut() = Rc::new(next);
            // Pools of endpoints no longer named by the new config are closed; requests of
            // the old snapshot still in flight drop their connections instead of pooling.
            self.pools.retain_assigned();
            self.control.applied(version);
            tracing::info!(shard = self.id, version, "config applied");
        }
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

    fn connection_opened(&self) {
        self.connections.set(self.connections.get() + 1);
        let info = self.info();
        stats::set(&info.connections, self.connections.get() as u64);
        stats::add(&info.connections_accepted, 1);
    }

    fn connection_closed(&self) {
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
    fn connection_refused(&self) {
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
    fn accept_failed(&self, e: &std::io::Error) {
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

    /// A cleared write buffer from the shard's spares (allocated only when none is spare).
    pub fn take_buf(&self) -> Vec<u8> {
        self.spare_bufs
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(WRITE_BUF_BYTES))
    }

    pub fn put_buf(&self, mut buf: Vec<u8>) {
        let mut spare = self.spare_bufs.borrow_mut();
        // A buffer grown for a large request body is freed rather than kept idle.
        if spare.len() < SPARE_BUFS_MAX
            && buf.capacity() >= WRITE_BUF_BYTES
            && buf.capacity() <= SPARE_BUF_BYTES_MAX
        {
            buf.clear();
            spare.push(buf);
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

/// Connections past `connections_max` answered `503` at once, at most, per shard; the ones past
/// this are closed unanswered (as on a TLS listener, where a plain answer means nothing).
const REFUSALS_ANSWERING_MAX: usize = 64;

/// Accepts kept waiting on the listener at once, per shard, on io_uring.
const ACCEPTS_IN_FLIGHT: usize = 16;

/// Accept connections until draining starts, spawning a task per connection.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: Rc<TcpListener>, tls: bool) {
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if ctx.open_connections() >= ctx.snapshot().cfg.server.connections_max {
                        // A clear answer (503) while few refusals are under way; past that,
                        // a plain close: refusing must not cost more than serving.
                        ctx.connection_refused();
                        let answering = ctx.refusals_answering.get();
                        if !tls && answering < REFUSALS_ANSWERING_MAX {
                            ctx.refusals_answering.set(answering + 1);
                            let ctx = ctx.clone();
                            monoio::spawn(async move {
                                crate::conn::refuse(&ctx, stream).await;
                                ctx.refusals_answering
                                    .set(ctx.refusals_answering.get().saturating_sub(1));
                            });
                        }
                        continue;
                    }
                    spawn_connection(&ctx, stream, peer, tls);
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    ctx.accept_failed(&e);
                    monoio::time::sleep(Duration::from_millis(10)).await;
                }
            },
            _ = ctx.drain.wait() => break,
        }
    }
}

/// Process-wide totals, summed from the shards when they stop (for the allocation benchmark).
pub static REQUESTS_SERVED: AtomicU64 = AtomicU64::new(0);
pub static CONNECTIONS_ACCEPTED: AtomicU64 = AtomicU64::new(0);
pub static UPSTREAM_CONNECTS: AtomicU64 = AtomicU64::new(0);

/// What a shard starts with.
#[derive(Debug)]
pub struct ShardStart {
    pub id: usize,
    /// The core it was pinned to, if any.
    pub core: Option<usize>,
    /// The bootstrap config and its version on the ring.
    pub cfg: Config,
    pub version: u64,
    pub region: &'static Region,
    /// This shard's end of the access log, when one is configured.
    pub access_log: Option<ShardLog>,
    /// Command-line settings every later config gets too.
    pub overrides: Overrides,
    pub listen: SocketAddr,
    /// A plain listener beside a TLS `listen`.
    pub listen_plain: Option<SocketAddr>,
    pub driver: DriverChoice,
    pub shutdown: Arc<AtomicBool>,
    /// The system trust store, read once by the main thread.
    pub roots: Arc<rustls::RootCertStore>,
    /// Fair queueing's cross-shard state, and the read end of this shard's bell.
    pub fabric: Arc<Fabric>,
    pub bell: std::os::unix::net::UnixStream,
}

/// Run a shard on the current thread until shutdown. Reports readiness (or the failure to
/// bind or build a runtime) on `ready`.
pub fn run(start: ShardStart, ready: mpsc::Sender<Ready>) {
    let id = start.id;
    let report = |result| {
        let _ = ready.send(Ready { shard: id, result });
    };
    let shard = async move |kind: DriverKind| {
        // `listen` serves TLS when the config has certificates; `listen_plain` is plain.
        let tls = !start.cfg.server.tls.is_empty();
        let mut listeners = Vec::with_capacity(2);
        for (addr, tls) in
            std::iter::once((start.listen, tls)).chain(start.listen_plain.map(|a| (a, false)))
        {
            match bind(addr) {
                Ok((l, spare)) => listeners.push((l, spare, tls)),
                Err(e) => {
                    report(Err(format!("cannot listen on {addr}: {e}")));
                    return;
                }
            }
        }
        let ctx = Rc::new(ShardCtx::new(
            id,
            start.version,
            start.cfg,
            start.region,
            start.overrides,
            start.access_log,
            Kept::new(start.roots, id, start.fabric),
        ));
        let info = ctx.info();
        stats::set(&info.core, start.core.map_or(u64::MAX, |c| c as u64));
        stats::set(&info.driver, stats::driver_code(kind));
        stats::set(&info.started_unix_ms, crate::control::unix_ms());
        info.running.store(1, Ordering::Release);
        report(Ok(kind));
        match monoio::net::UnixStream::from_std(start.bell) {
            Ok(bell) => {
                monoio::spawn(hear_bell(ctx.clone(), bell));
            }
            // Hand-offs then wait for the shard's timer (CONTROL_POLL_MS).
            Err(e) => tracing::warn!(shard = id, "fair-queue bell unavailable: {e}"),
        }
        serve(ctx, listeners, kind, start.shutdown).await;
    };
    if let Err(e) = crate::runtime::block_on_best(start.driver, shard) {
        report(Err(e));
    }
}

/// The shard's bell: another shard handed this one a slot of a capped upstream (for a waiter
/// with the smallest tag). Each byte read takes every hand-off and frees slots to waiters.
async fn hear_bell(ctx: Rc<ShardCtx>, mut bell: monoio::net::UnixStream) {
    use monoio::io::AsyncReadRent;
    let mut buf = vec![0u8; 64];
    loop {
        let (res, b) = bell.read(buf).await;
        buf = b;
        if !matches!(res, Ok(n) if n > 0) {
            return;
        }
        ctx.kept.fabric.heard(ctx.id);
        ctx.snapshot().dispatch_caps(crate::fair::now_ms());
    }
}

/// Bind a listener: the runtime's, and a second handle on the same socket (non-blocking) that
/// empties its accept queue when draining.
fn bind(listen: SocketAddr) -> std::io::Result<(TcpListener, std::net::TcpListener)> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT: every shard binds its own socket on the same port; the kernel spreads
    // connections across them, so no shard ever hands a connection to another.
    let socket = Socket::new(Domain::for_address(listen), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&listen.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    let listener: std::net::TcpListener = socket.into();
    let spare = listener.try_clone()?;
    Ok((TcpListener::from_std(listener)?, spare))
}

/// When draining, before a listener closes: take every connection already in its accept queue
/// (the kernel completed their handshakes; closing the listener would reset them) and let each
/// end gracefully (an idle connection of a draining shard is closed with a FIN, what the client
/// sent read and dropped).
fn accept_backlog(ctx: &Rc<ShardCtx>, spare: &std::net::TcpListener, tls: bool) {
    while let Ok((stream, peer)) = spare.accept() {
        let Ok(stream) = stream
            .set_nonblocking(true)
            .and_then(|()| monoio::net::TcpStream::from_std(stream))
        else {
            continue;
        };
        spawn_connection(ctx, stream, peer, tls);
    }
}

/// Serve an accepted connection on its own task, counted open until it ends.
fn spawn_connection(
    ctx: &Rc<ShardCtx>,
    stream: monoio::net::TcpStream,
    peer: SocketAddr,
    tls: bool,
) {
    ctx.connection_opened();
    let ctx = ctx.clone();
    monoio::spawn(async move {
        crate::conn::serve(&ctx, stream, peer, tls).await;
        ctx.connection_closed();
    });
}

/// Accept until shutdown, then drain: no new connections, in-flight requests finish for at
/// most `drain_timeout`, idle keep-alive connections close at once.
async fn serve(
    ctx: Rc<ShardCtx>,
    listeners: Vec<(TcpListener, std::net::TcpListener, bool)>,
    kind: DriverKind,
    shutdown: Arc<AtomicBool>,
) {
    // The shard's timer: new configs reach an idle shard within CONTROL_POLL_MS (a busy one
    // finds them between requests), and the shutdown flag is read here.
    let watcher = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let mut flushed = Instant::now();
            let mut leases_checked = Instant::now();
            while !shutdown.load(Ordering::Relaxed) {
                monoio::time::sleep(Duration::from_millis(CONTROL_POLL_MS)).await;
                ctx.refresh();
                // Slots freed on other shards reach this shard's waiters here.
                ctx.snapshot().dispatch_caps(crate::fair::now_ms());
                // Leases unused for a while go back, so another shard can spend them.
                if leases_checked.elapsed() >= Duration::from_millis(LEASE_CHECK_MS) {
                    ctx.snapshot().return_stale_leases(crate::admit::now_ns());
                    leases_checked = Instant::now();
                }
                if let Some(log) = &ctx.access_log {
                    if flushed.elapsed() >= Duration::from_millis(ACCESS_LOG_FLUSH_MS) {
                        log.flush();
                        flushed = Instant::now();
                    }
                }
            }
            ctx.drain.fire();
        })
    };
    // The access log's task: writes the lines requests formatted into the shard's buffer.
    let log_writer = ctx.access_log.is_some().then(|| {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            if let Some(log) = &ctx.access_log {
                log.run().await;
            }
        })
    });
    // On io_uring several accepts wait on the listener at once, so a burst of new connections
    // completes in one ring pass instead of one accept per pass. The epoll driver tracks one
    // reader per socket, so it keeps a single accept loop.
    let accept_loops = if kind == DriverKind::Epoll {
        1
    } else {
        ACCEPTS_IN_FLIGHT
    };
    let listeners: Vec<_> = listeners
        .into_iter()
        .map(|(l, spare, tls)| (Rc::new(l), spare, tls))
        .collect();
    let loops: Vec<_> = listeners
        .iter()
        .flat_map(|(l, _, tls)| {
            (0..accept_loops).map(|_| monoio::spawn(accept_loop(ctx.clone(), l.clone(), *tls)))
        })
        .collect();
    for l in loops {
        l.await;
    }
    // Every accept loop has ended: empty the accept queues, then close the listening sockets.
    for (_, spare, tls) in &listeners {
        accept_backlog(&ctx, spare, *tls);
    }
    drop(listeners);
    let deadline = Instant::now() + ctx.snapshot().cfg.server.drain_timeout;
    while ctx.open_connections() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    if ctx.open_connections() > 0 {
        tracing::warn!(
            shard = ctx.id,
            open = ctx.open_connections(),
            "drain timeout: closing connections in flight"
        );
    }
    let _ = watcher.await;
    // Every line of this shard is written before the shard ends.
    if let Some(log) = &ctx.access_log {
        log.close();
    }
    if let Some(w) = log_writer {
        w.await;
    }
    let info = ctx.info();
    let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
    REQUESTS_SERVED.fetch_add(l(&info.requests), Ordering::Relaxed);
    CONNECTIONS_ACCEPTED.fetch_add(l(&info.connections_accepted), Ordering::Relaxed);
    UPSTREAM_CONNECTS.fetch_add(l(&info.upstream_connects), Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

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
