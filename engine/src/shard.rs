//! Shards: one pinned thread per core, each with its own monoio runtime, SO_REUSEPORT listener,
//! upstream pools and counters. Nothing here is shared between shards: each reads new configs
//! from the shared-memory ring itself and writes only its own counter block; the process-wide
//! drain flag ([`Handover`]) is read on a timer.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::io::Canceller;
use monoio::net::TcpListener;

use crate::accesslog::ShardLog;
use crate::clock::Now;
use crate::config::{Config, DriverChoice};
use crate::control::shm::Region;
use crate::control::stats;
use crate::ctx::ShardCtx;
use crate::fair::Fabric;
use crate::limits::{ACCESS_LOG_FLUSH_MS, CONTROL_POLL_MS, LISTEN_BACKLOG, SHUTDOWN_POLL_MS};
use crate::listen::{Handover, DRAIN_SYN_SETTLE_MS, GATE_POLL_MS};
pub use crate::runtime::DriverKind;
use crate::snapshot::Kept;

/// How often a shard gives back tenants' stale leases, ms.
const LEASE_CHECK_MS: u64 = 250;

/// What a shard reports to the main thread once its listeners are bound (not yet listening)
/// and its config is built.
#[derive(Debug)]
pub struct Ready {
    pub shard: usize,
    pub result: Result<Bound, String>,
}

/// A ready shard: its driver, and the inodes of its listening sockets (so the main thread
/// tells the instance's own listeners from another instance's when it drains).
#[derive(Debug)]
pub struct Bound {
    pub driver: DriverKind,
    pub inodes: Vec<u64>,
}

/// Connections past `connections_max` answered `503` at once, at most, per shard; the ones past
/// this are closed unanswered (as on a TLS listener, where a plain answer means nothing).
const REFUSALS_ANSWERING_MAX: usize = 64;

/// Accepts kept waiting on the listener at once, per shard, on io_uring.
const ACCEPTS_IN_FLIGHT: usize = 16;

/// Accept connections until `stop` is cancelled, spawning a task per connection.
///
/// The accept is cancelled, never dropped: an accept dropped as the kernel completes it would
/// leave its connection with no one to serve it (on io_uring the completion is thrown away).
/// A cancelled accept still ends with its connection when it won the race, and that one is
/// served like any other.
async fn accept_loop(ctx: Rc<ShardCtx>, listener: Rc<TcpListener>, tls: bool, stop: Stop) {
    loop {
        match listener.cancelable_accept(stop.handle.clone()).await {
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
            Err(_) if stop.stopped.get() => break,
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                ctx.accept_failed(&e);
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The accept loops' stop: monoio's cancel handle, and whether it was cancelled (monoio keeps
/// that to itself).
#[derive(Clone)]
struct Stop {
    handle: monoio::io::CancelHandle,
    stopped: Rc<std::cell::Cell<bool>>,
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
    /// The engine's config builder (new configs are validated there, not on the shard).
    pub builder: crate::builder::Builder,
    /// The access-request thread (tenants' `POST /v1/access-requests` are filed there).
    pub access: crate::access::Desk,
    pub listen: SocketAddr,
    /// A plain listener beside a TLS `listen`.
    pub listen_plain: Option<SocketAddr>,
    pub driver: DriverChoice,
    /// The start gate and the drain flag, shared with the main thread.
    pub handover: Arc<Handover>,
    /// The system trust store, read once by the main thread.
    pub roots: Arc<rustls::RootCertStore>,
    /// Fair queueing's cross-shard state, and the read end of this shard's bell.
    pub fabric: Arc<Fabric>,
    pub bell: std::os::unix::net::UnixStream,
    /// Bedrock credentials read again from their files (`crate::aws_keys`).
    pub aws_keys: crate::aws_keys::KeyFeed,
    /// This shard's span batch, with `[telemetry]`.
    pub spans: Option<crate::telemetry::span::ShardSpans>,
    /// Where this shard's GenAI metrics go (read by `/metrics`).
    pub genai: Arc<crate::telemetry::genai::Block>,
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
        let mut sockets = Vec::with_capacity(2);
        let mut inodes = Vec::with_capacity(2);
        for (addr, tls) in
            std::iter::once((start.listen, tls)).chain(start.listen_plain.map(|a| (a, false)))
        {
            let bound = bind(addr).and_then(|s| {
                use std::os::fd::AsRawFd;
                inodes.push(crate::listen::socket_inode(s.as_raw_fd())?);
                Ok(s)
            });
            match bound {
                Ok(socket) => sockets.push((socket, addr, tls)),
                Err(e) => {
                    report(Err(format!("cannot listen on {addr}: {e}")));
                    return;
                }
            }
        }
        let ctx = Rc::new(
            ShardCtx::new(
                id,
                start.version,
                start.cfg,
                start.region,
                start.builder,
                start.access_log,
                Kept::new(start.roots, id, start.fabric),
            )
            .with_access(start.access)
            .with_aws_keys(start.aws_keys)
            .with_spans(start.spans)
            .with_genai(start.genai),
        );
        let info = ctx.info();
        stats::set(&info.core, start.core.map_or(u64::MAX, |c| c as u64));
        stats::set(&info.driver, stats::driver_code(kind));
        stats::set(&info.started_unix_ms, crate::control::unix_ms());
        info.running.store(1, Ordering::Release);
        report(Ok(Bound {
            driver: kind,
            inodes,
        }));
        // Every shard listens once all are ready (the main thread opens the gate), or none.
        let go = loop {
            match start.handover.decision() {
                Some(go) => break go,
                None => monoio::time::sleep(Duration::from_millis(GATE_POLL_MS)).await,
            }
        };
        if !go {
            return;
        }
        let mut listeners = Vec::with_capacity(sockets.len());
        for (socket, addr, tls) in sockets {
            match listen(socket) {
                Ok((l, spare)) => listeners.push(Listener {
                    accepts: Rc::new(l),
                    spare,
                    addr,
                    tls,
                }),
                Err(e) => {
                    // Bound a moment ago: only a resource limit fails here. The others serve.
                    tracing::error!(shard = id, "cannot listen on {addr}: {e}");
                }
            }
        }
        start.handover.listened();
        match monoio::net::UnixStream::from_std(start.bell) {
            Ok(bell) => {
                monoio::spawn(hear_bell(ctx.clone(), bell));
            }
            // Hand-offs then wait for the shard's timer (CONTROL_POLL_MS).
            Err(e) => tracing::warn!(shard = id, "fair-queue bell unavailable: {e}"),
        }
        serve(ctx, listeners, kind, start.handover).await;
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
        ctx.snapshot().dispatch_caps(Now::read().unix_ms());
    }
}

/// One listening socket of a shard: the runtime's handle, a second handle on the same socket
/// (non-blocking) that empties its accept queue when draining, its address and whether it
/// serves TLS.
struct Listener {
    accepts: Rc<TcpListener>,
    spare: std::net::TcpListener,
    addr: SocketAddr,
    tls: bool,
}

/// Bind a socket for a listener, without listening yet (so the port's group does not count it).
fn bind(addr: SocketAddr) -> std::io::Result<socket2::Socket> {
    use socket2::{Domain, Socket, Type};
    // SO_REUSEPORT: every shard binds its own socket on the same port; the kernel spreads
    // connections across them, so no shard ever hands a connection to another.
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    // Small answers and SSE events must not wait for Nagle: accepted sockets inherit
    // TCP_NODELAY from their listener (Linux), so no connection pays a system call for it.
    socket.set_nodelay(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

/// Listen on a bound socket: the runtime's listener and the spare handle.
fn listen(socket: socket2::Socket) -> std::io::Result<(TcpListener, std::net::TcpListener)> {
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

/// Accept until the drain, then drain: the listeners hand over (see [`crate::listen`]): no new
/// connection is taken, and none the kernel completed is reset. In-flight requests finish for
/// at most `drain_timeout`; idle keep-alive connections close once quiet for
/// `conn::DRAIN_IDLE_GRACE_MS` (their next request before that is answered, with
/// `Connection: close`).
async fn serve(
    ctx: Rc<ShardCtx>,
    listeners: Vec<Listener>,
    kind: DriverKind,
    handover: Arc<Handover>,
) {
    // The shard's timer: new configs reach an idle shard within CONTROL_POLL_MS (a busy one
    // finds them between requests), and the drain flag is read here.
    let watcher = {
        let ctx = ctx.clone();
        let handover = handover.clone();
        monoio::spawn(async move {
            let mut flushed = Instant::now();
            let mut leases_checked = Instant::now();
            while !handover.is_draining() {
                monoio::time::sleep(Duration::from_millis(CONTROL_POLL_MS)).await;
                ctx.refresh();
                // Slots freed on other shards reach this shard's waiters here.
                ctx.snapshot().dispatch_caps(Now::read().unix_ms());
                // Leases unused for a while go back, so another shard can spend them.
                if leases_checked.elapsed() >= Duration::from_millis(LEASE_CHECK_MS) {
                    ctx.snapshot().return_stale_leases(Now::read().unix_ns);
                    leases_checked = Instant::now();
                }
                if let Some(log) = &ctx.access_log {
                    if flushed.elapsed() >= Duration::from_millis(ACCESS_LOG_FLUSH_MS) {
                        log.flush();
                        flushed = Instant::now();
                    }
                }
                if let Some(spans) = &ctx.spans {
                    spans.tick();
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
    let canceller = Canceller::new();
    let stop = Stop {
        handle: canceller.handle(),
        stopped: Rc::default(),
    };
    let loops: Vec<_> = listeners
        .iter()
        .flat_map(|l| {
            (0..accept_loops).map(|_| {
                monoio::spawn(accept_loop(
                    ctx.clone(),
                    l.accepts.clone(),
                    l.tls,
                    stop.clone(),
                ))
            })
        })
        .collect();
    ctx.drain.wait().await;
    // A listener no other instance takes over from stops taking SYNs first, and its
    // handshakes under way settle into the accept queue while the accepts go on.
    let mut settle = false;
    for l in listeners
        .iter()
        .filter(|l| !handover.closes_at_once(l.addr))
    {
        match socket2::SockRef::from(&l.spare).attach_filter(&crate::listen::syn_drop_filter()) {
            Ok(()) => settle = true,
            Err(e) => tracing::warn!(shard = ctx.id, "{}: cannot stop new SYNs: {e}", l.addr),
        }
    }
    if settle {
        monoio::time::sleep(Duration::from_millis(DRAIN_SYN_SETTLE_MS)).await;
    }
    stop.stopped.set(true);
    let _ = canceller.cancel();
    for l in loops {
        l.await;
    }
    // Every accept loop has ended: empty the accept queues, then close the listening sockets.
    for l in &listeners {
        accept_backlog(&ctx, &l.spare, l.tls);
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
    // The spans of the last requests go to the exporter, which sends them before it ends.
    if let Some(spans) = &ctx.spans {
        spans.flush();
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

    /// Connections accepted on a shard's listener have TCP_NODELAY from it: no system call per
    /// connection, and no SSE event held back by Nagle.
    #[test]
    fn accepted_connections_inherit_nodelay() {
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let socket = bind(addr).expect("bind");
        socket.listen(8).expect("listen");
        let local = socket
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("an IP address");
        let _client = std::net::TcpStream::connect(local).expect("connect");
        socket.set_nonblocking(false).expect("blocking accept");
        let (accepted, _) = socket.accept().expect("accept");
        assert!(accepted.nodelay().expect("TCP_NODELAY"));
    }
}
