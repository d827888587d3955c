//! Shards: one pinned thread per core, each with its own monoio runtime, SO_REUSEPORT listener,
//! upstream pools and counters. Nothing here is shared between shards except the read-only
//! config they start with and the process-wide shutdown flag, read on a timer.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::net::{ListenerOpts, TcpListener};

use crate::config::{Config, DriverChoice};
use crate::drain::DrainSignal;
use crate::limits::{LISTEN_BACKLOG, SHUTDOWN_POLL_MS, WRITE_BUF_BYTES};
use crate::route::Routes;
pub use crate::runtime::DriverKind;
use crate::upstream::Pools;

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
    pub cfg: Rc<Config>,
    pub routes: Routes,
    /// First flat endpoint number of each upstream.
    pub endpoint_base: Vec<usize>,
    /// Round-robin position per upstream.
    pub rr: Vec<Cell<usize>>,
    pub pools: Pools,
    spare_bufs: RefCell<Vec<Vec<u8>>>,
    pub drain: DrainSignal,
    pub connections: Cell<usize>,
    pub connections_accepted: Cell<u64>,
    pub upstream_connects: Cell<u64>,
    pub requests: Cell<u64>,
}

impl ShardCtx {
    pub fn new(id: usize, cfg: Rc<Config>) -> Self {
        let mut endpoint_base = Vec::with_capacity(cfg.upstreams.len());
        let mut total = 0;
        for u in &cfg.upstreams {
            endpoint_base.push(total);
            total += u.endpoints.len();
        }
        Self {
            id,
            routes: Routes::new(&cfg.routes),
            rr: cfg.upstreams.iter().map(|_| Cell::new(0)).collect(),
            endpoint_base,
            pools: Pools::new(total),
            spare_bufs: RefCell::new(Vec::new()),
            drain: DrainSignal::new(),
            connections: Cell::new(0),
            connections_accepted: Cell::new(0),
            upstream_connects: Cell::new(0),
            requests: Cell::new(0),
            cfg,
        }
    }

    /// Pick the next endpoint of `upstream` round-robin: (flat number, index in the upstream).
    pub fn pick_endpoint(&self, upstream: usize) -> (usize, usize) {
        let n = self.cfg.upstreams[upstream].endpoints.len().max(1);
        let i = self.rr[upstream].get() % n;
        self.rr[upstream].set(i + 1);
        (self.endpoint_base[upstream] + i, i)
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
        if spare.len() < SPARE_BUFS_MAX && buf.capacity() >= WRITE_BUF_BYTES {
            buf.clear();
            spare.push(buf);
        }
    }
}

/// Accepts kept waiting on the listener at once, per shard, on io_uring.
const ACCEPTS_IN_FLIGHT: usize = 16;

/// Accept connections until draining starts, spawning a task per connection.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: Rc<TcpListener>) {
    let connections_max = ctx.cfg.server.connections_max;
    loop {
        monoio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if ctx.connections.get() >= connections_max {
                        tracing::warn!(shard = ctx.id, "connections_max reached; closing a new connection");
                        drop(stream);
                        continue;
                    }
                    ctx.connections.set(ctx.connections.get() + 1);
                    ctx.connections_accepted.set(ctx.connections_accepted.get() + 1);
                    let ctx = ctx.clone();
                    monoio::spawn(async move {
                        crate::conn::serve(&ctx, stream, peer).await;
                        ctx.connections.set(ctx.connections.get() - 1);
                    });
                }
                Err(e) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    tracing::warn!(shard = ctx.id, "accept failed: {e}");
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

/// Run shard `id` on the current thread until shutdown. Reports readiness (or the failure to
/// bind or build a runtime) on `ready`.
pub fn run(
    id: usize,
    cfg: Rc<Config>,
    listen: SocketAddr,
    driver: DriverChoice,
    shutdown: Arc<AtomicBool>,
    ready: mpsc::Sender<Ready>,
) {
    let report = |result| {
        let _ = ready.send(Ready { shard: id, result });
    };
    let shard = async move |kind: DriverKind| {
        let listener = match bind(listen) {
            Ok(l) => l,
            Err(e) => {
                report(Err(format!("cannot listen on {listen}: {e}")));
                return;
            }
        };
        report(Ok(kind));
        serve(Rc::new(ShardCtx::new(id, cfg)), listener, kind, shutdown).await;
    };
    if let Err(e) = crate::runtime::block_on_best(driver, shard) {
        report(Err(e));
    }
}

fn bind(listen: SocketAddr) -> std::io::Result<TcpListener> {
    // SO_REUSEPORT: every shard binds its own socket on the same port; the kernel spreads
    // connections across them, so no shard ever hands a connection to another.
    let opts = ListenerOpts::new()
        .reuse_port(true)
        .reuse_addr(true)
        .backlog(LISTEN_BACKLOG);
    TcpListener::bind_with_config(listen, &opts)
}

/// Accept until shutdown, then drain: no new connections, in-flight requests finish for at
/// most `drain_timeout`, idle keep-alive connections close at once.
async fn serve(
    ctx: Rc<ShardCtx>,
    listener: TcpListener,
    kind: DriverKind,
    shutdown: Arc<AtomicBool>,
) {
    let watcher = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            while !shutdown.load(Ordering::Relaxed) {
                monoio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
            }
            ctx.drain.fire();
        })
    };
    // On io_uring several accepts wait on the listener at once, so a burst of new connections
    // completes in one ring pass instead of one accept per pass. The epoll driver tracks one
    // reader per socket, so it keeps a single accept loop.
    let accept_loops = if kind == DriverKind::Epoll {
        1
    } else {
        ACCEPTS_IN_FLIGHT
    };
    let listener = Rc::new(listener);
    let loops: Vec<_> = (0..accept_loops)
        .map(|_| monoio::spawn(accept_loop(ctx.clone(), listener.clone())))
        .collect();
    for l in loops {
        l.await;
    }
    // Every accept loop has ended: this closes the listening socket.
    drop(listener);
    let deadline = Instant::now() + ctx.cfg.server.drain_timeout;
    while ctx.connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    if ctx.connections.get() > 0 {
        tracing::warn!(
            shard = ctx.id,
            open = ctx.connections.get(),
            "drain timeout: closing connections in flight"
        );
    }
    let _ = watcher.await;
    REQUESTS_SERVED.fetch_add(ctx.requests.get(), Ordering::Relaxed);
    CONNECTIONS_ACCEPTED.fetch_add(ctx.connections_accepted.get(), Ordering::Relaxed);
    UPSTREAM_CONNECTS.fetch_add(ctx.upstream_connects.get(), Ordering::Relaxed);
}
