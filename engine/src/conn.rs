//! The connection driver: the only code that moves request bytes between sockets.
//!
//! Each client connection runs the same fixed phases per request (see docs/ARCHITECTURE.md):
//! read head → parse and decide (route, framing, limits) → forward head and body upstream →
//! read the response head → relay the body as it arrives → pool or close. Every decision is
//! taken by the I/O-free modules (`http`, `route`, `mock`); this module only sequences reads,
//! writes and timeouts, and maps failures to [`Error`] answers.
//!
//! Buffers: the client read buffer lives as long as the connection; the write buffer comes from
//! the shard's spares and goes back after each request; each upstream connection carries its
//! own read buffer into and out of the pool. Nothing is allocated per request once warm.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use crate::accesslog::Record;
use crate::admit::{admit, now_ns, write_rate_headers, write_refusal_headers, Admitted};
use crate::balance::DEPLOYMENTS_MAX;
use crate::balance::{FailureKind, Outcome};
use crate::config::{Auth, Provider, UpstreamConfig};
use crate::control::stats::Reject;
use crate::control::stats::{NO_SLOT, SLOT_UNROUTED};
use crate::error::{Error, Limit, Shape};
use crate::fair::{self, UpstreamCap};
use crate::http::chunked::{ChunkedDecoder, Step};
use crate::http::request::{self, BodyKind, Credentials, Method, RequestHead};
use crate::http::response::{self, ClientFraming};
use crate::http::write_hex;
use crate::limits::{HEADERS_ARRAY_LEN, INTERIM_RESPONSES_MAX, MOCK_BODY_BYTES_MAX};
use crate::llm::{self, SseFilter, UsageScanner};
use crate::mock::{self, MockEndpoint, MockReply};
use crate::shard::{ShardCtx, Snapshot};
use crate::stream::Io;
use crate::template::TemplateBody;
use crate::tenant::{presented_key, KeyMemo};
use crate::upstream::{self, UpConn};

mod hedge;
mod translate;
use hedge::{Hedge, Raced};
use translate::Translation;

/// After an error answer that closes the connection, how long to keep reading (and dropping)
/// what the client still sends, so closing does not reset the connection before the client
/// has read the answer.
const LINGER_MS: u64 = 1_000;
/// At most this many bytes are read and dropped while lingering.
const LINGER_BYTES_MAX: usize = 256 * 1024;

/// A tenant's request body buffer larger than this is freed after the request instead of
/// being kept for the connection's next one.
const BODY_BUF_KEEP_BYTES_MAX: usize = 256 * 1024;

/// LLM buffer sets a shard keeps for reuse.
const LLM_POOL_MAX: usize = 1024;

/// Initial size of a connection's read buffer.
const CLIENT_BUF_BYTES_INITIAL: usize = 4096;

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
const HEALTH_OK: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";

/// What happens to the client connection after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    KeepAlive,
    Close,
    /// An error answer was sent: close after lingering.
    CloseLinger,
}

/// What the head says to do, decided without I/O.
#[derive(Debug, Clone, Copy)]
enum Action {
    Health {
        readiness: bool,
    },
    Mock(MockEndpoint),
    Proxy {
        upstream: usize,
        endpoint: usize,
        ep_index: usize,
    },
    /// A tenant's request to an LLM endpoint: read the body whole, check the model, admit by
    /// its token estimate, then forward (the upstream head is written after the body is read).
    ///
    /// `target`: the route's upstream, used when the body names no model group.
    ProxyLlm {
        target: Option<(usize, usize, usize)>,
    },
    /// `GET /v1/models` with `[[models]]`: the groups the caller may use, answered here.
    Models,
    Refuse(Error),
}

struct Client {
    stream: Io,
    /// Bytes read from the client and not consumed yet (a head, body bytes, pipelined requests).
    buf: Vec<u8>,
    ip: IpAddr,
    peer: SocketAddr,
    /// The config the current request runs on (taken when its head is read).
    snap: Rc<Snapshot>,
    /// What the current request did so far.
    ex: Exchange,
    /// The `x-ratelimit-*` lines of the current request's answer.
    rate_hdrs: Vec<u8>,
    /// Buffers of an LLM request, borrowed from the shard's pool while one is under way
    /// (`llm_held`), so an idle connection holds none of them.
    llm: LlmBufs,
    llm_held: bool,
    /// The open-connection count of the tenant this connection counts for (the tenant of its
    /// first request with a key), released when it closes.
    tenant_conn: Option<Rc<std::cell::Cell<usize>>>,
    /// The connection's last API key and its tenant: the same key again is not hashed again.
    key_memo: KeyMemo,
}

/// What reading an LLM body and relaying its answer need: taken from the shard's pool per
/// request and given back when it ends.
#[derive(Debug, Default)]
pub struct LlmBufs {
    /// The request body, read whole before it is forwarded.
    body: Vec<u8>,
    /// The body with `stream_options.include_usage` added (or scratch while relaying).
    rewritten: Vec<u8>,
    /// The body with the deployment's model name (before any other rewrite).
    scratch: Vec<u8>,
    /// The body with its prompt template filled (or its `variables` removed).
    filled: Vec<u8>,
    /// A filtered stream's de-chunked input and filtered output.
    sse_in: Vec<u8>,
    sse_out: Vec<u8>,
    /// Reads the upstream's `usage` out of the response as it passes.
    scanner: UsageScanner,
    /// Drops the usage chunk shardgate asked for from a stream, and counts its events.
    filter: SseFilter,
}

/// Borrow the shard's LLM buffers for the current request (no allocation once warm).
fn llm_take(ctx: &ShardCtx, c: &mut Client) {
    if !c.llm_held {
        if let Some(b) = ctx.llm_pool.borrow_mut().pop() {
            c.llm = b;
        }
        c.llm_held = true;
    }
}

/// Give the LLM buffers back to the shard's pool (a body buffer grown past
/// `BODY_BUF_KEEP_BYTES_MAX` is freed instead of kept).
fn llm_give(ctx: &ShardCtx, c: &mut Client) {
    if c.llm_held {
        c.llm_held = false;
        let mut b = std::mem::take(&mut c.llm);
        for v in [
            &mut b.body,
            &mut b.rewritten,
            &mut b.scratch,
            &mut b.filled,
            &mut b.sse_in,
            &mut b.sse_out,
        ] {
            v.clear();
            if v.capacity() > BODY_BUF_KEEP_BYTES_MAX {
                *v = Vec::new();
            }
        }
        let mut pool = ctx.llm_pool.borrow_mut();
        if pool.len() < LLM_POOL_MAX {
            pool.push(b);
        }
    }
}

/// What one request did, for the shard's counters (and the access log).
#[derive(Debug)]
struct Exchange {
    /// A request is under way (its first byte arrived).
    active: bool,
    start: Instant,
    /// The status sent; 0 while none was.
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream_slot: usize,
    route_slot: usize,
    /// The tenant (index in the request's snapshot) and its counter slot.
    tenant: Option<usize>,
    tenant_slot: usize,
    upstream: Option<SocketAddr>,
    /// The access-log record, filled from the head (only when an access log is configured).
    record: Option<Record>,
    /// What the tenant's admission holds until the request ends.
    admitted: Option<Admitted>,
    /// The response is scanned for `usage`.
    scan: bool,
    /// An error answer of ours (the upstream failed or the client broke the rules).
    local_error: bool,
    /// A streamed answer goes through the SSE filter: to drop the usage chunk the client did
    /// not ask for (`strip_usage`) and to cut the stream at the tenant's budget.
    filter_sse: bool,
    strip_usage: bool,
    /// The prompt's share of the token estimate (body bytes / 4).
    prompt_estimate: u64,
    /// Tokens a filtered stream is known to have used when its usage was never seen (it was
    /// cut, or the upstream sent none): the prompt's estimate plus one per content event.
    counted: Option<u64>,
    /// The upstream whose capped slot this request holds (released when it ends).
    upstream_slot_held: Option<usize>,
    /// Time from sending to the upstream until its response head (for the balancer).
    ttfb: Option<Duration>,
    /// Another deployment will be tried if this attempt fails before any byte reaches the
    /// client; the failure is then left here instead of being answered.
    retry_ok: bool,
    retry_err: Option<Error>,
    /// The upstream's `Retry-After` on a 429/503 (for the balancer).
    retry_after: Option<Duration>,
    /// The upstream broke off its answer after its head (closed, reset, stalled past
    /// `read_timeout_ms` or ill-framed mid-body): a failure for its health, whatever the
    /// status the client already got.
    upstream_broke: bool,
    /// The model deployment whose quota this request holds: (group, deployment, admission).
    deployment_admitted: Option<(usize, usize, Admitted)>,
    /// The current attempt's body was translated to the upstream's API: its answer is
    /// translated back.
    translation: Option<Box<Translation>>,
    /// The client called Anthropic's API (`/v1/messages`): our own errors take its shape.
    error_shape: Shape,
    /// A second attempt to race against the current one (a hedged stream); after `forward`, it
    /// says whether it was launched and won.
    hedge: Option<Box<Hedge>>,
}

impl Exchange {
    fn idle() -> Self {
        Self {
            active: false,
            start: Instant::now(),
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_slot: SLOT_UNROUTED,
            route_slot: NO_SLOT,
            tenant: None,
            tenant_slot: NO_SLOT,
            upstream: None,
            record: None,
            admitted: None,
            scan: false,
            local_error: false,
            filter_sse: false,
            strip_usage: false,
            prompt_estimate: 0,
            counted: None,
            upstream_slot_held: None,
            ttfb: None,
            retry_ok: false,
            retry_err: None,
            retry_after: None,
            upstream_broke: false,
            deployment_admitted: None,
            translation: None,
            error_shape: Shape::OpenAi,
            hedge: None,
        }
    }

    fn begin(&mut self, now: Instant) {
        *self = Self::idle();
        self.active = true;
        self.start = now;
    }
}

/// Count the request that just ended (if one was under way), and settle its tenant's limits.
fn finish(ctx: &ShardCtx, c: &mut Client) {
    let ex = &mut c.ex;
    if !ex.active {
        return;
    }
    ex.active = false;
    if let Some(u) = ex.upstream_slot_held.take() {
        if let Some(cap) = c.snap.upstream_caps.get(u) {
            cap.release(c.snap.fair_slot(ex.tenant), fair::now_ms());
        }
    }
    // The answer's usage, read once (a JSON body is parsed whole to find it) for the deployment
    // and the tenant.
    let usage = if ex.scan { c.llm.scanner.usage() } else { None };
    let used = usage
        .map(|u| u.prompt_tokens.saturating_add(u.completion_tokens))
        .or(ex.counted);
    let failed = ex.status == 0 || ex.local_error;
    finish_deployment(ex, &c.snap, used, failed);
    if let (Some(adm), Some(t)) = (ex.admitted.take(), ex.tenant) {
        if let Some(u) = usage {
            ctx.control
                .stats
                .tokens(ex.tenant_slot, u.prompt_tokens, u.completion_tokens);
        }
        if let Some(limits) = c.snap.tenant_limits.get(t) {
            adm.finish(limits, now_ns(), used, failed);
        }
    }
    let elapsed = ex.start.elapsed();
    ctx.control.stats.record(
        ex.upstream_slot,
        ex.route_slot,
        ex.tenant_slot,
        ex.status,
        ex.bytes_in,
        ex.bytes_out,
        elapsed,
    );
    if let Some(log) = &ctx.access_log {
        let mut r = ex.record.take().unwrap_or_else(|| {
            // Refused before a head was read (timeout, bad head): no method or path.
            Record::new(crate::control::unix_ms(), shard_u16(ctx.id), c.peer)
        });
        r.status = ex.status;
        r.bytes_in = ex.bytes_in;
        r.bytes_out = ex.bytes_out;
        r.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        r.upstream = ex.upstream;
        log.push(r);
    }
    llm_give(ctx, c);
}

fn shard_u16(id: usize) -> u16 {
    u16::try_from(id).unwrap_or(u16::MAX)
}

/// The method and target of the request line at the start of `head` (already parsed, so
/// well-formed).
fn request_line(head: &[u8]) -> (&str, &str) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.splitn(3, |&b| b == b' ');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    (
        std::str::from_utf8(method).unwrap_or(""),
        std::str::from_utf8(target).unwrap_or(""),
    )
}

/// Serve one client connection to the end.
pub async fn serve(ctx: &Rc<ShardCtx>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    let _ = stream.set_nodelay(true);
    ctx.refresh();
    let snap = ctx.snapshot();
    let stream = if tls {
        // The handshake runs under its own deadline, and uses the certificates of the config
        // current now (a rotation reaches new handshakes at once).
        let Some(config) = snap.tls_server.clone() else {
            return;
        };
        let acceptor = monoio_rustls::TlsAcceptor::from(config);
        // Boxed: the handshake's state is large, and a future holds the largest of its
        // states for the connection's whole life (plain connections would pay for it).
        let accept = Box::pin(acceptor.accept(stream));
        match monoio::time::timeout(snap.cfg.server.handshake_timeout, accept).await {
            Ok(Ok(s)) => Io::TlsServer(Box::new(s)),
            Ok(Err(e)) => {
                tracing::debug!(shard = ctx.id, %peer, "TLS handshake failed: {e}");
                return;
            }
            Err(_elapsed) => {
                tracing::debug!(shard = ctx.id, %peer, "TLS handshake timed out");
                return;
            }
        }
    } else {
        Io::Plain(stream)
    };
    let mut c = Client {
        stream,
        // Small at first: most heads fit, and an idle connection then holds little memory.
        // It grows (once per connection) to `header_bytes_max` when a head or body needs it.
        buf: Vec::with_capacity(CLIENT_BUF_BYTES_INITIAL.min(snap.cfg.server.header_bytes_max)),
        ip: peer.ip(),
        peer,
        snap,
        ex: Exchange::idle(),
        rate_hdrs: Vec::new(),
        llm: LlmBufs::default(),
        llm_held: false,
        tenant_conn: None,
        key_memo: KeyMemo::default(),
    };
    let mut first = true;
    loop {
        let next = serve_one(ctx, &mut c, first).await;
        finish(ctx, &mut c);
        match next {
            Next::KeepAlive => first = false,
            Next::Close => break,
            Next::CloseLinger => {
                linger_close(&mut c.stream, std::mem::take(&mut c.buf)).await;
                break;
            }
        }
    }
    if let Some(n) = c.tenant_conn.take() {
        n.set(n.get().saturating_sub(1));
    }
}

/// The `Retry-After` of a request shed by a saturated shard, seconds (one header line).
const OVERLOADED_RETRY_AFTER: &[u8] = b"retry-after: 1\r\n";

/// How long a connection refused past `connections_max` may take to send its request before
/// its `503` goes out anyway, ms.
const REFUSE_READ_MS: u64 = 100;

/// Answer a plain connection accepted past `connections_max`: read what it sent within
/// [`REFUSE_READ_MS`] (so the close after the answer does not reset it away), then `503`
/// `overloaded` with `Retry-After` and `Connection: close`, and close. Nothing is parsed.
pub async fn refuse(ctx: &ShardCtx, stream: TcpStream) {
    let mut stream = Io::Plain(stream);
    let buf = ctx.take_buf();
    let deadline = Instant::now() + Duration::from_millis(REFUSE_READ_MS);
    let (_, mut buf) = read_more(&mut stream, buf, deadline).await;
    buf.clear();
    Error::Overloaded.write_response_with(true, OVERLOADED_RETRY_AFTER, &mut buf);
    let send_timeout = Duration::from_millis(REFUSE_READ_MS);
    if let (_, Some(buf)) = write_timeout(&mut stream, buf, send_timeout).await {
        ctx.put_buf(buf);
    }
    let _ = stream.shutdown().await;
}

/// Read, decide and answer one request.
async fn serve_one(ctx: &Rc<ShardCtx>, c: &mut Client, first: bool) -> Next {
    let mut snap = c.snap.clone();
    // Phase 1: read until the head is complete (or refused). No write buffer is held while
    // waiting, so an idle connection costs only its read buffer.
    let mut head_deadline: Option<Instant> = None;
    let (head, action, wbuf) = loop {
        if !c.buf.is_empty() {
            if !c.ex.active {
                c.ex.begin(Instant::now());
            }
            // The request's config: take a new one if it was published while this
            // connection waited (one atomic load if none was); the request keeps it to the end.
            ctx.refresh();
            snap = ctx.snapshot();
            c.snap = snap.clone();
            let mut wbuf = ctx.take_buf();
            match decide(
                &snap,
                &c.buf,
                c.ip,
                c.stream.is_tls(),
                &mut wbuf,
                &mut c.key_memo,
            ) {
                Ok(Some(Decision {
                    head,
                    action,
                    route,
                    tenant,
                })) => {
                    c.ex.bytes_in = head.head_len as u64;
                    let target = request_line(&c.buf[..head.head_len]).1;
                    if target.split('?').next() == Some("/v1/messages") {
                        c.ex.error_shape = Shape::Anthropic;
                    }
                    if let Some(t) = tenant {
                        c.ex.tenant = Some(t);
                        c.ex.tenant_slot = snap.tenant_stats[t];
                    }
                    if ctx.access_log.is_some() {
                        let mut r =
                            Record::new(crate::control::unix_ms(), shard_u16(ctx.id), c.peer);
                        let (method, target) = request_line(&c.buf[..head.head_len]);
                        r.set_method(method);
                        r.set_path(target);
                        c.ex.record = Some(r);
                    }
                    if let Some(r) = route {
                        c.ex.route_slot = snap.route_stats[r];
                        c.ex.upstream_slot = snap.upstream_stats[snap.cfg.routes[r].upstream];
                    }
                    break (head, action, wbuf);
                }
                Ok(None) => ctx.put_buf(wbuf),
                Err(e) => return answer_error(ctx, c, e, true, wbuf).await,
            }
        }
        c.grow_buf(snap.cfg.server.header_bytes_max);
        let buf = std::mem::take(&mut c.buf);
        let had_bytes = !buf.is_empty();
        let (res, buf) = if !had_bytes {
            // Waiting for the first byte: the idle timeout (header timeout for a new
            // connection), and draining closes the connection at once: gracefully (FIN, then
            // what the client still sends is read and dropped), so a request racing the close
            // meets a clean end of stream, never a reset.
            if ctx.drain.is_fired() {
                return Next::CloseLinger;
            }
            let wait = if first {
                snap.cfg.server.header_timeout
            } else {
                snap.cfg.server.idle_timeout
            };
            monoio::select! {
                r = read_more(&mut c.stream, buf, Instant::now() + wait) => r,
                _ = ctx.drain.wait() => return Next::CloseLinger,
            }
        } else {
            let deadline = *head_deadline
                .get_or_insert_with(|| Instant::now() + snap.cfg.server.header_timeout);
            read_more(&mut c.stream, buf, deadline).await
        };
        c.buf = buf;
        match res {
            Ok(0) => return Next::Close,
            Ok(_) => {
                head_deadline
                    .get_or_insert_with(|| Instant::now() + snap.cfg.server.header_timeout);
            }
            // Nothing sent at all: close quietly, as for an idle keep-alive connection.
            Err(ReadError::TimedOut) if !had_bytes => return Next::Close,
            Err(ReadError::TimedOut) => {
                return answer_error(ctx, c, Error::HeaderTimeout, true, ctx.take_buf()).await;
            }
            Err(ReadError::Io) => return Next::Close,
        }
    };
    let server = &snap.cfg.server;
    // A shard serving `requests_inflight_max` requests sheds new ones at once (503 with
    // Retry-After, before any tenant quota is taken) instead of queueing more work behind
    // them. Health checks and local refusals are not counted: they cost nothing to answer.
    let _inflight = match action {
        Action::Health { .. } | Action::Refuse(_) => None,
        _ => match ctx.begin_request(server.requests_inflight_max) {
            Some(guard) => Some(guard),
            None => {
                c.buf.drain(..head.head_len.min(c.buf.len()));
                let may_keep_alive = head.body == BodyKind::None && head.keep_alive;
                return answer_error_with(
                    ctx,
                    c,
                    Error::Overloaded,
                    may_keep_alive,
                    OVERLOADED_RETRY_AFTER,
                    wbuf,
                )
                .await;
            }
        },
    };
    // The connection counts for the tenant of its first request with a key: past the tenant's
    // `connections_max` on this shard, 429 and close.
    if let (Some(t), None) = (c.ex.tenant, &c.tenant_conn) {
        if let Some(count) = snap.tenant_conns.get(t) {
            let max = snap.cfg.tenants[t].connections_max;
            if max.is_some_and(|m| count.get() as u64 >= m) {
                ctx.control
                    .stats
                    .reject(c.ex.tenant_slot, Reject::Concurrency);
                c.buf.drain(..head.head_len.min(c.buf.len()));
                let e = Error::RateLimited(Limit::Connections);
                return answer_error(ctx, c, e, false, wbuf).await;
            }
            count.set(count.get() + 1);
            c.tenant_conn = Some(count.clone());
        }
    }
    // A tenant's request that carries no LLM body is admitted now (a request, no tokens);
    // LLM requests are admitted once their body is read (their tokens are estimated from it).
    let llm_body = match action {
        Action::ProxyLlm { .. } => true,
        Action::Mock(m) => m.takes_body(),
        Action::Health { .. } | Action::Refuse(_) | Action::Proxy { .. } | Action::Models => false,
    };
    if let (Some(t), false, false) = (
        c.ex.tenant,
        llm_body,
        matches!(action, Action::Health { .. } | Action::Refuse(_)),
    ) {
        // The body (if any) is unread: the connection closes after a refusal.
        let may_keep_alive = head.body == BodyKind::None && head.keep_alive;
        if let Err(next) = admit_tenant(ctx, c, &snap, t, 0, may_keep_alive, head.head_len).await {
            ctx.put_buf(wbuf);
            return next;
        }
    }
    match action {
        Action::Health { readiness } => {
            c.buf.drain(..head.head_len);
            if readiness && ctx.drain.is_fired() {
                return answer_error(
                    ctx,
                    c,
                    Error::ShuttingDown,
                    head.body == BodyKind::None,
                    wbuf,
                )
                .await;
            }
            ctx.put_buf(wbuf);
            if head.body != BodyKind::None {
                return answer_error(
                    ctx,
                    c,
                    Error::BadRequest("health checks take no body"),
                    false,
                    ctx.take_buf(),
                )
                .await;
            }
            c.ex.status = 200;
            let (res, _) = send(c, HEALTH_OK, server.send_timeout).await;
            if res.is_ok() && head.keep_alive && !ctx.drain.is_fired() {
                Next::KeepAlive
            } else {
                Next::Close
            }
        }
        Action::Refuse(e) => {
            c.buf.drain(..head.head_len);
            answer_error(
                ctx,
                c,
                e,
                head.body == BodyKind::None && head.keep_alive,
                wbuf,
            )
            .await
        }
        Action::Mock(endpoint) => serve_mock(ctx, c, head, endpoint, wbuf).await,
        Action::ProxyLlm { target } => proxy_llm(ctx, c, head, target, wbuf).await,
        Action::Models => answer_models(ctx, c, &head, wbuf).await,
        Action::Proxy {
            upstream,
            endpoint,
            ep_index,
        } => proxy(ctx, c, head, (upstream, endpoint, ep_index), wbuf).await,
    }
}

impl Client {
    /// Let the read buffer grow to `max` once it is full (at most once per connection).
    fn grow_buf(&mut self, max: usize) {
        if self.buf.len() == self.buf.capacity() {
            self.grow_buf_to(max);
        }
    }

    /// Grow the read buffer to `max` bytes of capacity if it is smaller.
    fn grow_buf_to(&mut self, max: usize) {
        if self.buf.capacity() < max {
            self.buf.reserve_exact(max - self.buf.len());
        }
    }
}

/// Parse the head in `buf` and decide what to do, writing the upstream head into `wbuf` when
/// proxying. `Ok(None)`: the head is incomplete.
/// What [`decide`] found in a complete head.
struct Decision {
    head: RequestHead,
    action: Action,
    /// The route taken (None for health checks and unrouted paths).
    route: Option<usize>,
    /// The tenant whose key the request presented (None without `auth = "keys"`).
    tenant: Option<usize>,
}

fn decide(
    snap: &Snapshot,
    buf: &[u8],
    client_ip: IpAddr,
    client_tls: bool,
    wbuf: &mut Vec<u8>,
    key_memo: &mut KeyMemo,
) -> Result<Option<Decision>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    let Some(req) = request::parse(buf, &mut headers, &snap.cfg.server.head_limits())? else {
        return Ok(None);
    };
    let head = req.head;
    let path = req.path();
    if head.method == Method::Get {
        match path {
            "/health/liveness" | "/health/readiness" => {
                return Ok(Some(Decision {
                    head,
                    action: Action::Health {
                        readiness: path == "/health/readiness",
                    },
                    route: None,
                    tenant: None,
                }))
            }
            _ => {}
        }
    }
    // Identify the tenant before anything else: an unknown caller learns nothing (not even
    // which paths route).
    let tenant = match snap.cfg.server.auth {
        Auth::None => None,
        Auth::Keys => {
            let key = presented_key(req.header("authorization"), req.header("x-api-key"));
            match key.and_then(|k| snap.tenants.lookup_memo(k, key_memo)) {
                Some(t) => Some(t),
                None => {
                    return Ok(Some(Decision {
                        head,
                        action: Action::Refuse(Error::Unauthorized),
                        route: None,
                        tenant: None,
                    }))
                }
            }
        }
    };
    // Model groups route LLM calls by their body; templates need the body too.
    let models_on = !snap.cfg.models.is_empty();
    let read_llm_body = models_on || !snap.cfg.templates.is_empty();
    let llm_call = llm::is_llm_request(req.method(), path);
    let plain_path = path.split('?').next().unwrap_or(path);
    if models_on && req.method() == "GET" && plain_path == "/v1/models" {
        // The model groups the caller may use, answered here.
        return Ok(Some(Decision {
            head,
            action: Action::Models,
            route: None,
            tenant,
        }));
    }
    let Some(route) = snap.routes.lookup(path) else {
        let action = if models_on && llm_call {
            Action::ProxyLlm { target: None }
        } else {
            Action::Refuse(Error::NoRoute)
        };
        return Ok(Some(Decision {
            head,
            action,
            route: None,
            tenant,
        }));
    };
    let upstream = snap.cfg.routes[route].upstream;
    let ucfg = &snap.cfg.upstreams[upstream];
    let action = match ucfg.provider {
        Provider::Mock => match mock::serves(req.method(), path) {
            Some(endpoint) => Action::Mock(endpoint),
            None => Action::Refuse(Error::NoRoute),
        },
        // An Anthropic upstream's LLM calls always take the LLM path: its credential and
        // version header, and translation for OpenAI clients.
        Provider::Http | Provider::Anthropic
            if llm_call
                && (tenant.is_some() || read_llm_body || ucfg.provider == Provider::Anthropic) =>
        {
            let (endpoint, ep_index) = snap.pick_endpoint(upstream);
            Action::ProxyLlm {
                target: Some((upstream, endpoint, ep_index)),
            }
        }
        Provider::Http | Provider::Anthropic => {
            let (endpoint, ep_index) = snap.pick_endpoint(upstream);
            wbuf.clear();
            let authority = ucfg.endpoints[ep_index].authority.as_bytes();
            let creds = Credentials {
                drop_client_keys: snap.cfg.server.auth == Auth::Keys || ucfg.credential.is_some(),
                upstream: ucfg.credential.as_deref().unwrap_or_default(),
                client_tls,
                ..Credentials::PASS
            };
            req.write_upstream_head_with(authority, client_ip, &creds, wbuf);
            Action::Proxy {
                upstream,
                endpoint,
                ep_index,
            }
        }
    };
    Ok(Some(Decision {
        head,
        action,
        route: Some(route),
        tenant,
    }))
}

// ----- request bodies -----

/// The request body still to be read from the client.
#[derive(Debug)]
enum BodyLeft {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
}

impl BodyLeft {
    fn of(head: &RequestHead) -> Self {
        match head.body {
            BodyKind::None | BodyKind::Length(0) => BodyLeft::Done,
            BodyKind::Length(n) => BodyLeft::Length(n),
            BodyKind::Chunked => BodyLeft::Chunked(ChunkedDecoder::new()),
        }
    }

    fn is_done(&self) -> bool {
        matches!(self, BodyLeft::Done)
    }
}

/// How chunked body data is appended to the output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkOut {
    /// Normalised chunks (`<hex>\r\n<data>\r\n`, then `0\r\n\r\n`): forwarding upstream.
    Rechunk,
    /// Data only: the mock model reads the body.
    DataOnly,
}

/// Move the body bytes at the front of `buf` into `out` (verbatim for `Content-Length`,
/// decoded for chunked), consuming them from `buf` and updating `left`. Bytes after the body
/// (a pipelined request) stay in `buf`.
fn consume_body(
    buf: &mut Vec<u8>,
    left: &mut BodyLeft,
    body_bytes_max: u64,
    out: &mut Vec<u8>,
    mode: ChunkOut,
) -> Result<(), Error> {
    let consumed = match left {
        BodyLeft::Done => 0,
        BodyLeft::Length(n) => {
            let take = buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
            out.extend_from_slice(&buf[..take]);
            *n -= take as u64;
            if *n == 0 {
                *left = BodyLeft::Done;
            }
            take
        }
        BodyLeft::Chunked(d) => {
            let mut at = 0;
            loop {
                let (n, step) = d.decode(&buf[at..]).map_err(|e| Error::BadChunk(e.0))?;
                if d.data_bytes() > body_bytes_max {
                    return Err(Error::BodyTooLarge);
                }
                match step {
                    Step::Data(r) => {
                        if mode == ChunkOut::Rechunk {
                            write_hex(out, r.len() as u64);
                            out.extend_from_slice(b"\r\n");
                        }
                        out.extend_from_slice(&buf[at..][r]);
                        if mode == ChunkOut::Rechunk {
                            out.extend_from_slice(b"\r\n");
                        }
                        at += n;
                    }
                    Step::NeedMore => break at + n,
                    Step::Done => {
                        if mode == ChunkOut::Rechunk {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        *left = BodyLeft::Done;
                        break at + n;
                    }
                }
            }
        }
    };
    buf.drain(..consumed);
    Ok(())
}

/// Read more body bytes from the client (appending to `c.buf`).
/// `Err(Some(e))`: answer `e`; `Err(None)`: the client went away.
async fn read_client_body(
    c: &mut Client,
    max: usize,
    timeout: Duration,
) -> Result<(), Option<Error>> {
    c.grow_buf(max);
    let buf = std::mem::take(&mut c.buf);
    if buf.len() == buf.capacity() {
        // Only an unfinished chunk line can fill the buffer; `consume_body` bounds those far
        // below its size, so this is a defensive answer, not an expected path.
        c.buf = buf;
        return Err(Some(Error::BadChunk("chunk line too long")));
    }
    let (res, buf) = read_more(&mut c.stream, buf, Instant::now() + timeout).await;
    c.buf = buf;
    match res {
        Ok(0) | Err(ReadError::Io) => Err(None),
        Ok(_) => Ok(()),
        Err(ReadError::TimedOut) => Err(Some(Error::BodyTimeout)),
    }
}

/// Send `100 Continue` when the client asked for it and the body has not all arrived.
async fn send_continue(c: &mut Client, head: &RequestHead, left: &BodyLeft) -> bool {
    if !head.expect_continue || left.is_done() {
        return true;
    }
    let timeout = c.snap.cfg.server.send_timeout;
    let (res, _) = send(c, CONTINUE_100, timeout).await;
    res.is_ok()
}

// ----- proxying -----

async fn proxy(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    (upstream, endpoint, ep_index): (usize, usize, usize),
    mut wbuf: Vec<u8>,
) -> Next {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    c.buf.drain(..head.head_len);
    let mut left = BodyLeft::of(&head);
    // The body bytes already read go out in the same write as the head.
    let before = c.buf.len();
    let consumed = consume_body(
        &mut c.buf,
        &mut left,
        server.body_bytes_max,
        &mut wbuf,
        ChunkOut::Rechunk,
    );
    c.ex.bytes_in += (before - c.buf.len()) as u64;
    if let Err(e) = consumed {
        return answer_error(ctx, c, e, false, wbuf).await;
    }
    if !send_continue(c, &head, &left).await {
        return Next::Close;
    }
    forward(ctx, c, head, (upstream, endpoint, ep_index), wbuf, left).await
}

/// Take a slot of a capped upstream, waiting in the tenant's fair queue while it is full (at
/// most `queue_wait_ms_max`). `Err`: answered (429: the queue is full or the wait too long).
async fn wait_for_slot(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    cap: &UpstreamCap,
    head: &RequestHead,
    left: &BodyLeft,
    wbuf: &mut Vec<u8>,
) -> Result<(), Next> {
    let snap = c.snap.clone();
    let fair_slot = snap.fair_slot(c.ex.tenant);
    if cap.try_acquire(fair_slot, fair::now_ms()) {
        return Ok(());
    }
    // Requests without a tenant (auth = "none") share one queue. A request's share is its
    // admission's token estimate (plain requests: 1).
    let (key, weight) = match c.ex.tenant {
        Some(t) => (t + 1, snap.cfg.tenants[t].weight),
        None => (0, 1),
    };
    let cost = c.ex.admitted.as_ref().map_or(1, Admitted::estimate);
    let started = Instant::now();
    let refused = match cap.enqueue(
        (key, fair_slot),
        (weight, cost),
        snap.cfg.server.queue_depth_max,
        fair::now_ms(),
    ) {
        None => true,
        Some(ticket) => {
            // A slot freed on this shard or another is handed to the waiter with the smallest
            // tag of all shards (crate::fair); a free slot was taken already by `enqueue`.
            monoio::select! {
                _ = ticket.wait() => false,
                _ = monoio::time::sleep(snap.cfg.server.queue_wait) => {
                    // Granted in the same instant the timer fired: keep the slot.
                    !ticket.is_granted()
                }
            }
        }
    };
    ctx.control
        .stats
        .queued(c.ex.tenant_slot, started.elapsed());
    if !refused {
        return Ok(());
    }
    ctx.control.stats.reject(c.ex.tenant_slot, Reject::Queue);
    let may_keep_alive = left.is_done() && head.keep_alive;
    let buf = std::mem::take(wbuf);
    Err(answer_error(
        ctx,
        c,
        Error::RateLimited(Limit::Queue),
        may_keep_alive,
        buf,
    )
    .await)
}

/// Send the upstream head (and whatever body is in `wbuf`) to the upstream, stream the rest of
/// the body, read the response head, relay the response.
async fn forward(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    (upstream, endpoint, ep_index): (usize, usize, usize),
    mut wbuf: Vec<u8>,
    mut left: BodyLeft,
) -> Next {
    let snap = c.snap.clone();
    let mut ucfg: &UpstreamConfig = &snap.cfg.upstreams[upstream];
    let mut endpoint = endpoint;
    let mut hedge = c.ex.hedge.take();
    // A capped upstream: take a slot, or wait for one in this tenant's fair queue.
    if let Some(cap) = snap
        .upstream_caps
        .get(upstream)
        .filter(|cap| cap.is_capped())
    {
        if let Err(next) = wait_for_slot(ctx, c, cap, &head, &left, &mut wbuf).await {
            return next;
        }
        c.ex.upstream_slot_held = Some(upstream);
    }
    // The request can be sent again on a fresh connection only while all of it is in `wbuf`.
    let replayable = left.is_done();
    let addr = ucfg.endpoints[ep_index].addr;
    c.ex.upstream = Some(addr);
    let mut retried = false;
    let (up, relay, keep_alive) = loop {
        let mut up = match ctx
            .pools
            .checkout(endpoint, ucfg.pool_idle_timeout, Instant::now())
        {
            Some(up) => up,
            None => match upstream::connect(
                addr,
                ucfg.connect_timeout,
                snap.tls_target(upstream, ep_index),
                ctx.pools.id_of(endpoint),
            )
            .await
            {
                Ok(up) => {
                    ctx.upstream_connected();
                    up
                }
                Err(e) => {
                    let may_keep_alive = left.is_done() && head.keep_alive;
                    return fail_attempt(ctx, c, e, may_keep_alive, wbuf).await;
                }
            },
        };
        let (res, buf) = write_timeout(&mut up.stream, wbuf, ucfg.read_timeout).await;
        wbuf = buf.unwrap_or_else(|| ctx.take_buf());
        if res.is_err() {
            if up.reused && !retried && replayable {
                retried = true;
                continue;
            }
            return fail_attempt(ctx, c, Error::UpstreamUnavailable, false, wbuf).await;
        }
        if let Err(e) = stream_body(c, &mut up, &mut left, &mut wbuf).await {
            return match e {
                Some(e) => answer_error(ctx, c, e, false, wbuf).await,
                None => Next::Close,
            };
        }
        let extra = (!c.rate_hdrs.is_empty()).then_some(&c.rate_hdrs[..]);
        let mut sent_at = Instant::now();
        let got = match hedge.as_deref_mut() {
            None => read_response_head(ctx, &mut up, ucfg, &head, extra, &mut wbuf).await,
            Some(h) => {
                // Boxed (here and for translation below): rare paths whose large states would
                // otherwise be part of every connection's future.
                let raced = Box::pin(hedge::race(
                    ctx, &snap, &mut up, ucfg, &head, extra, &mut wbuf, h,
                ));
                match raced.await {
                    Raced::First(r) => r,
                    Raced::Second(won) => {
                        // The hedge answered first: relay it; the first attempt's connection
                        // is dropped (cancelled).
                        up = won.up;
                        ctx.put_buf(std::mem::replace(&mut wbuf, won.wbuf));
                        sent_at = won.sent_at;
                        let (u, e, i) = h.target;
                        ucfg = &snap.cfg.upstreams[u];
                        endpoint = e;
                        c.ex.upstream = Some(ucfg.endpoints[i].addr);
                        c.ex.upstream_slot = snap.upstream_stats[u];
                        c.ex.translation = h.translation.take();
                        c.ex.filter_sse = h.filter_sse;
                        c.ex.strip_usage = h.strip_usage;
                        if let Some(held) = c.ex.upstream_slot_held.take() {
                            if let Some(cap) = snap.upstream_caps.get(held) {
                                cap.release(snap.fair_slot(c.ex.tenant), fair::now_ms());
                            }
                        }
                        if h.cap_held {
                            h.cap_held = false;
                            c.ex.upstream_slot_held = Some(u);
                        }
                        Ok((won.relay, won.keep_alive))
                    }
                }
            }
        };
        if let Some(mut h) = hedge.take() {
            if h.launched && !h.won && h.cap_held {
                h.cap_held = false;
                if let Some(cap) = snap.upstream_caps.get(h.target.0) {
                    cap.release(snap.fair_slot(c.ex.tenant), fair::now_ms());
                }
            }
            // Back to the caller, which settles both attempts (a replay below is not hedged).
            c.ex.hedge = Some(h);
        }
        match got {
            Ok((relay, keep_alive)) => {
                c.ex.ttfb = Some(sent_at.elapsed());
                c.ex.retry_after = relay
                    .retry_after_s
                    .map(|s| Duration::from_secs(u64::from(s)));
                if c.ex.retry_ok && matches!(relay.status, 429 | 502 | 503 | 504) {
                    // Another deployment may answer: nothing went to the client yet. This
                    // connection is dropped (its answer is not read).
                    c.ex.status = relay.status;
                    c.ex.retry_err = Some(Error::UpstreamUnavailable);
                    ctx.put_buf(wbuf);
                    return Next::Close;
                }
                break (up, relay, keep_alive);
            }
            Err(HeadError::ClosedBeforeAnyByte) if up.reused && !retried && replayable => {
                retried = true;
                continue;
            }
            Err(HeadError::ClosedBeforeAnyByte) => {
                return fail_attempt(ctx, c, Error::UpstreamUnavailable, head.keep_alive, wbuf)
                    .await;
            }
            Err(HeadError::Failed(e)) => {
                return fail_attempt(ctx, c, e, head.keep_alive, wbuf).await
            }
        }
    };
    if let Some(tr) = c.ex.translation.take() {
        return Box::pin(translate::relay_translated(
            ctx, c, endpoint, ucfg, up, relay, wbuf, &head, *tr,
        ))
        .await;
    }
    relay_response(ctx, c, endpoint, ucfg, up, relay, wbuf, keep_alive).await
}

/// An attempt failed before any byte reached the client: with another attempt to come
/// (`retry_ok`), note the error for the caller; otherwise answer it.
async fn fail_attempt(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    e: Error,
    may_keep_alive: bool,
    wbuf: Vec<u8>,
) -> Next {
    if c.ex.retry_ok {
        c.ex.status = e.status();
        c.ex.retry_err = Some(e);
        ctx.put_buf(wbuf);
        return Next::Close;
    }
    answer_error(ctx, c, e, may_keep_alive, wbuf).await
}

/// Stream the rest of the request body from the client to the upstream.
/// `Err(Some(e))`: answer `e` to the client; `Err(None)`: a socket failed, just close.
async fn stream_body(
    c: &mut Client,
    up: &mut UpConn,
    left: &mut BodyLeft,
    wbuf: &mut Vec<u8>,
) -> Result<(), Option<Error>> {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    if !left.is_done() {
        // A streamed body moves in pieces as large as the read buffer can be.
        c.grow_buf_to(server.header_bytes_max);
    }
    while !left.is_done() {
        if c.buf.is_empty() || matches!(left, BodyLeft::Chunked(_)) {
            read_client_body(c, server.header_bytes_max, server.body_timeout).await?;
        }
        if let BodyLeft::Length(n) = left {
            // Content-Length: write straight from the client buffer, no copy.
            let take = c.buf.len().min(usize::try_from(*n).unwrap_or(usize::MAX));
            let buf = std::mem::take(&mut c.buf);
            let (res, buf) =
                write_timeout(&mut up.stream, buf.slice(..take), server.body_timeout).await;
            c.buf = buf.ok_or(None)?.into_inner();
            res.map_err(|()| None)?;
            c.buf.drain(..take);
            c.ex.bytes_in += take as u64;
            *n -= take as u64;
            if *n == 0 {
                *left = BodyLeft::Done;
            }
            continue;
        }
        wbuf.clear();
        let before = c.buf.len();
        let consumed = consume_body(
            &mut c.buf,
            left,
            server.body_bytes_max,
            wbuf,
            ChunkOut::Rechunk,
        );
        c.ex.bytes_in += (before - c.buf.len()) as u64;
        consumed.map_err(Some)?;
        if !wbuf.is_empty() {
            let (res, buf) =
                write_timeout(&mut up.stream, std::mem::take(wbuf), server.body_timeout).await;
            *wbuf = buf.ok_or(None)?;
            res.map_err(|()| None)?;
        }
    }
    Ok(())
}

enum HeadError {
    /// The upstream closed or reset before sending any byte: a pooled connection the upstream
    /// had already closed, so the request can be replayed if it was not streamed.
    ClosedBeforeAnyByte,
    Failed(Error),
}

/// Read the response head into `up.buf`, skipping interim (1xx) answers, and write the head
/// for the client into `wbuf` (replacing the request, which is no longer needed). Returns the
/// body relay state and whether the client connection stays open afterwards.
async fn read_response_head(
    ctx: &ShardCtx,
    up: &mut UpConn,
    ucfg: &UpstreamConfig,
    req: &RequestHead,
    extra_headers: Option<&[u8]>,
    wbuf: &mut Vec<u8>,
) -> Result<(Relay, bool), HeadError> {
    let deadline = Instant::now() + ucfg.ttfb_timeout;
    let mut interim = 0;
    let mut got_any = false;
    loop {
        if !up.buf.is_empty() {
            let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
            match response::parse(&up.buf, &mut headers, req.method == Method::Head) {
                Ok(Some((h, _))) if h.is_interim() => {
                    interim += 1;
                    if interim > INTERIM_RESPONSES_MAX || h.status == 101 {
                        return Err(HeadError::Failed(Error::UpstreamBadResponse(
                            "unexpected interim response from upstream",
                        )));
                    }
                    up.buf.drain(..h.head_len);
                    continue;
                }
                Ok(Some((h, resp))) => {
                    let framing = response::client_framing(h.body, req.version_minor);
                    let keep_alive = req.keep_alive
                        && response::framing_allows_keep_alive(framing)
                        && !ctx.drain.is_fired();
                    wbuf.clear();
                    response::write_client_head(
                        &h,
                        &resp,
                        framing,
                        req.version_minor,
                        keep_alive,
                        extra_headers,
                        wbuf,
                    );
                    let mut relay = Relay::new(framing, h.upstream_keep_alive, h.status);
                    // `Retry-After: <seconds>` on a 429 or 503 tells the balancer how long to
                    // leave this deployment alone (an HTTP date is ignored).
                    if matches!(h.status, 429 | 503) {
                        relay.retry_after_s = resp
                            .headers
                            .iter()
                            .find(|x| x.name.eq_ignore_ascii_case("retry-after"))
                            .and_then(|x| std::str::from_utf8(x.value).ok())
                            .and_then(|v| v.trim().parse::<u32>().ok());
                    }
                    relay.sse = resp.headers.iter().any(|x| {
                        x.name.eq_ignore_ascii_case("content-type")
                            && x.value.len() >= 17
                            && x.value[..17].eq_ignore_ascii_case(b"text/event-stream")
                    });
                    up.buf.drain(..h.head_len);
                    return Ok((relay, keep_alive));
                }
                Ok(None) => {}
                Err(e) => return Err(HeadError::Failed(e)),
            }
        }
        let buf = std::mem::take(&mut up.buf);
        let (res, buf) = read_more(&mut up.stream, buf, deadline).await;
        up.buf = buf;
        match res {
            Ok(0) | Err(ReadError::Io) if !got_any => return Err(HeadError::ClosedBeforeAnyByte),
            Ok(0) | Err(ReadError::Io) => {
                return Err(HeadError::Failed(Error::UpstreamBadResponse(
                    "upstream closed the connection inside the response head",
                )));
            }
            Ok(_) => got_any = true,
            Err(ReadError::TimedOut) => return Err(HeadError::Failed(Error::UpstreamTimeout)),
        }
    }
}

/// Send the response head and relay the body as it arrives, each read written out at once
/// (SSE events are never held back). The upstream connection goes back to the pool only after
/// a complete, well-framed exchange.
#[allow(clippy::too_many_arguments)]
async fn relay_response(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    endpoint: usize,
    ucfg: &UpstreamConfig,
    mut up: UpConn,
    mut relay: Relay,
    mut wbuf: Vec<u8>,
    keep_alive: bool,
) -> Next {
    let send_timeout = c.snap.cfg.server.send_timeout;
    c.ex.status = relay.status;
    // The first body bytes go out in the same write as the head.
    if c.ex.scan {
        c.llm.scanner.reset(if relay.sse {
            llm::BodyKind::Sse
        } else {
            llm::BodyKind::Json
        });
    }
    let scan = c.ex.scan;
    if c.ex.filter_sse
        && relay.sse
        && matches!(
            relay.framing,
            ClientFraming::Chunked | ClientFraming::Dechunk | ClientFraming::UntilClose
        )
    {
        return relay_filtered(ctx, c, endpoint, ucfg, up, relay, wbuf, keep_alive).await;
    }
    match relay.feed(&up.buf, &mut wbuf, true, scan.then_some(&mut c.llm.scanner)) {
        Ok(n) => drop(up.buf.drain(..n)),
        Err(()) => {
            let e = Error::UpstreamBadResponse("ill-framed upstream response body");
            return answer_error(ctx, c, e, false, wbuf).await;
        }
    }
    let (res, buf) = send(c, wbuf, send_timeout).await;
    if res.is_err() {
        return Next::Close; // the client went away: the upstream connection is dropped
    }
    let dechunk = relay.framing == ClientFraming::Dechunk;
    // Only de-chunking copies body bytes; for a verbatim relay (an SSE stream can last minutes)
    // the write buffer goes back to the shard's spares now instead of being held.
    let mut wbuf = match buf {
        Some(buf) if dechunk => buf,
        Some(buf) => {
            ctx.put_buf(buf);
            Vec::new()
        }
        None if dechunk => ctx.take_buf(),
        None => Vec::new(),
    };
    while !relay.done {
        let buf = std::mem::take(&mut up.buf);
        let (res, buf) = read_more(&mut up.stream, buf, Instant::now() + ucfg.read_timeout).await;
        up.buf = buf;
        match res {
            Ok(0) if relay.framing == ClientFraming::UntilClose => break,
            // The upstream stopped mid-body: end the client connection without a clean end,
            // so the client sees a truncated message.
            Ok(0) | Err(_) => {
                c.ex.upstream_broke = true;
                return Next::Close;
            }
            Ok(_) => {}
        }
        wbuf.clear();
        let Ok(n) = relay.feed(
            &up.buf,
            &mut wbuf,
            dechunk,
            scan.then_some(&mut c.llm.scanner),
        ) else {
            c.ex.upstream_broke = true;
            return Next::Close;
        };
        if n == 0 {
            continue; // only part of a chunk line so far
        }
        let res = if dechunk {
            let (res, buf) = send(c, wbuf, send_timeout).await;
            wbuf = buf.unwrap_or_else(|| ctx.take_buf());
            res
        } else {
            // Verbatim: write straight from the upstream buffer, no copy.
            let buf = std::mem::take(&mut up.buf);
            let (res, buf) = send(c, buf.slice(..n), send_timeout).await;
            up.buf = buf.map(|s| s.into_inner()).unwrap_or_default();
            res
        };
        if res.is_err() {
            return Next::Close;
        }
        up.buf.drain(..n);
    }
    ctx.put_buf(wbuf);
    end_relay(ctx, endpoint, ucfg, up, &relay, keep_alive)
}

/// A relayed answer is complete: pool the upstream connection if it can be reused, and say
/// what happens to the client connection.
fn end_relay(
    ctx: &ShardCtx,
    endpoint: usize,
    ucfg: &UpstreamConfig,
    up: UpConn,
    relay: &Relay,
    keep_alive: bool,
) -> Next {
    // Bytes past the end of the body mean the upstream is out of step: never reuse it.
    if relay.upstream_reusable && relay.framing != ClientFraming::UntilClose && up.buf.is_empty() {
        ctx.pools
            .checkin(endpoint, up, ucfg.pool_idle_max, Instant::now());
    }
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Tracks where a response body ends while it is relayed.
/// Relay a tenant's event stream through the SSE filter: the usage chunk shardgate asked for
/// is dropped, and the stream is cut with an error event once it would pass the tenant's
/// budget. The upstream's chunks are decoded and what the filter lets through is sent as one
/// chunk per read (or as is, to a client reading until close).
#[allow(clippy::too_many_arguments)]
async fn relay_filtered(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    endpoint: usize,
    ucfg: &UpstreamConfig,
    mut up: UpConn,
    mut relay: Relay,
    mut wbuf: Vec<u8>,
    keep_alive: bool,
) -> Next {
    let send_timeout = c.snap.cfg.server.send_timeout;
    let client_chunked = relay.framing == ClientFraming::Chunked;
    if client_chunked {
        // Decode the upstream's chunks into data; the client gets chunks of our own.
        relay.framing = ClientFraming::Dechunk;
    }
    c.llm.filter.reset();
    if c.ex.scan {
        c.llm.scanner.reset(llm::BodyKind::Sse);
    }
    let mut cut = false;
    loop {
        let mut data = std::mem::take(&mut c.llm.sse_in);
        let mut filtered = std::mem::take(&mut c.llm.sse_out);
        data.clear();
        filtered.clear();
        let fed = relay.feed(
            &up.buf,
            &mut data,
            true,
            c.ex.scan.then_some(&mut c.llm.scanner),
        );
        let Ok(n) = fed else {
            c.llm.sse_in = data;
            c.llm.sse_out = filtered;
            c.ex.upstream_broke = true;
            return Next::Close;
        };
        up.buf.drain(..n);
        // Event by event, so a stream is cut at the event that passes the budget, however
        // many events one read brought.
        let mut at = 0;
        while at < data.len() && !cut {
            let end = event_end(&data[at..]).map_or(data.len(), |n| at + n);
            let piece = &data[at..end];
            if c.ex.strip_usage {
                c.llm.filter.feed(piece, &mut filtered);
            } else {
                // Nothing to drop (the client asked for usage itself, or the stream is
                // Anthropic's): the filter only counts events, for the budget.
                let mut counted = std::mem::take(&mut c.llm.rewritten);
                counted.clear();
                c.llm.filter.feed(piece, &mut counted);
                c.llm.rewritten = counted;
                filtered.extend_from_slice(piece);
            }
            at = end;
            if over_budget(c) {
                SseFilter::error_event(
                    "the tenant's token budget is exhausted; the answer was cut",
                    &mut filtered,
                );
                cut = true;
            }
        }
        if relay.done && !cut && c.ex.strip_usage {
            c.llm.filter.finish(&mut filtered);
        }
        push_framed(&mut wbuf, &filtered, client_chunked);
        let end = relay.done || cut;
        if end && client_chunked {
            wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        c.llm.sse_in = data;
        c.llm.sse_out = filtered;
        c.ex.counted = Some(
            c.ex.prompt_estimate
                .saturating_add(c.llm.filter.content_events()),
        );
        if flush(ctx, c, &mut wbuf, send_timeout).await.is_err() {
            return Next::Close;
        }
        if end {
            break;
        }
        if read_body_more(&mut up, &mut relay, ucfg.read_timeout)
            .await
            .is_err()
        {
            c.ex.upstream_broke = true;
            return Next::Close;
        }
    }
    ctx.put_buf(wbuf);
    // A cut stream leaves the upstream mid-answer: that connection is dropped.
    relay.upstream_reusable &= !cut;
    let keep_alive = keep_alive && (client_chunked || relay.framing != ClientFraming::UntilClose);
    end_relay(ctx, endpoint, ucfg, up, &relay, keep_alive)
}

/// Append `data` for the client: as one chunk, or as is (to a client reading until close).
fn push_framed(wbuf: &mut Vec<u8>, data: &[u8], chunked: bool) {
    if data.is_empty() {
        return;
    }
    if chunked {
        write_hex(wbuf, data.len() as u64);
        wbuf.extend_from_slice(b"\r\n");
        wbuf.extend_from_slice(data);
        wbuf.extend_from_slice(b"\r\n");
    } else {
        wbuf.extend_from_slice(data);
    }
}

/// Send what `wbuf` holds, if anything; it comes back empty. `Err`: the client is gone.
async fn flush(
    ctx: &ShardCtx,
    c: &mut Client,
    wbuf: &mut Vec<u8>,
    timeout: Duration,
) -> Result<(), ()> {
    if wbuf.is_empty() {
        return Ok(());
    }
    let (res, buf) = send(c, std::mem::take(wbuf), timeout).await;
    *wbuf = buf.unwrap_or_else(|| ctx.take_buf());
    wbuf.clear();
    res
}

/// Read more of the upstream's body into `up.buf`: `Ok` with more bytes, or at the end of a
/// body framed by the close (`relay.done` set); `Err` when the upstream stopped mid-body.
async fn read_body_more(up: &mut UpConn, relay: &mut Relay, timeout: Duration) -> Result<(), ()> {
    let buf = std::mem::take(&mut up.buf);
    let (res, buf) = read_more(&mut up.stream, buf, Instant::now() + timeout).await;
    up.buf = buf;
    match res {
        Ok(0) if relay.framing == ClientFraming::UntilClose => {
            relay.done = true;
            Ok(())
        }
        Ok(0) | Err(_) => Err(()),
        Ok(_) => Ok(()),
    }
}

/// Bytes up to and including the end of the first SSE event in `data` (a blank line), if one
/// ends there.
fn event_end(data: &[u8]) -> Option<usize> {
    crate::http::sse::event_end(data)
}

/// Whether the stream under way has produced more than the tenant's budget allows: the
/// prompt's estimate plus one token per content event, against what the request reserved
/// plus what is left in the window.
fn over_budget(c: &Client) -> bool {
    let (Some(adm), Some(t)) = (&c.ex.admitted, c.ex.tenant) else {
        return false;
    };
    let Some(limits) = c.snap.tenant_limits.get(t) else {
        return false;
    };
    let produced =
        c.ex.prompt_estimate
            .saturating_add(c.llm.filter.content_events());
    match limits.budget_allowance(adm, now_ns()) {
        Some(allowed) => produced > allowed,
        None => false,
    }
}

#[derive(Debug)]
struct Relay {
    framing: ClientFraming,
    /// Body bytes still expected (`Length`).
    left: u64,
    decoder: ChunkedDecoder,
    done: bool,
    /// The upstream's head allows reusing its connection.
    upstream_reusable: bool,
    /// The upstream's status code.
    status: u16,
    /// The response is a server-sent event stream.
    sse: bool,
    /// The upstream's `Retry-After` on a 429 or 503, seconds.
    retry_after_s: Option<u32>,
}

impl Relay {
    fn new(framing: ClientFraming, upstream_reusable: bool, status: u16) -> Self {
        let (left, done) = match framing {
            ClientFraming::None => (0, true),
            ClientFraming::Length(n) => (n, false),
            _ => (0, false),
        };
        Self {
            framing,
            left,
            decoder: ChunkedDecoder::new(),
            done,
            upstream_reusable,
            status,
            sse: false,
            retry_after_s: None,
        }
    }

    /// Look at upstream bytes: returns how many belong to the body (to be consumed). With
    /// `copy`, the bytes to send the client are appended to `out` (for `Dechunk` only the
    /// data, otherwise the bytes verbatim); without it the caller writes `input[..n]` itself.
    /// Take what `input` holds of the body: returns the bytes consumed, copies them (or, when
    /// de-chunking, their data) to `out` when `copy`, and hands the body data to `scan`.
    fn feed(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
        copy: bool,
        mut scan: Option<&mut UsageScanner>,
    ) -> Result<usize, ()> {
        let n = match self.framing {
            ClientFraming::None => 0,
            ClientFraming::Length(_) => {
                let n = input
                    .len()
                    .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                self.left -= n as u64;
                self.done = self.left == 0;
                if let Some(s) = scan.as_deref_mut() {
                    s.feed(&input[..n]);
                }
                n
            }
            ClientFraming::UntilClose => {
                if let Some(s) = scan.as_deref_mut() {
                    s.feed(input);
                }
                input.len()
            }
            ClientFraming::Chunked | ClientFraming::Dechunk => {
                let mut at = 0;
                loop {
                    let (n, step) = self.decoder.decode(&input[at..]).map_err(|_| ())?;
                    if let Step::Data(r) = &step {
                        if let Some(s) = scan.as_deref_mut() {
                            s.feed(&input[at..][r.clone()]);
                        }
                    }
                    if let (Step::Data(r), ClientFraming::Dechunk) = (&step, self.framing) {
                        out.extend_from_slice(&input[at..][r.clone()]);
                    }
                    at += n;
                    match step {
                        Step::Data(_) => {}
                        Step::NeedMore => break,
                        Step::Done => {
                            self.done = true;
                            break;
                        }
                    }
                }
                at
            }
        };
        if copy && self.framing != ClientFraming::Dechunk {
            out.extend_from_slice(&input[..n]);
        }
        Ok(n)
    }
}

// ----- tenants: LLM bodies and admission -----

/// Read the rest of the request body (its head already consumed from `c.buf`) into `c.llm.body`,
/// at most `limit` bytes. `Err`: the request was answered (or the connection is done).
async fn read_whole_body(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: &RequestHead,
    limit: u64,
    wbuf: Vec<u8>,
) -> Result<Vec<u8>, Next> {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    if matches!(head.body, BodyKind::Length(n) if n > limit) {
        return Err(answer_error(ctx, c, Error::BodyTooLarge, false, wbuf).await);
    }
    llm_take(ctx, c);
    c.llm.body.clear();
    let mut left = BodyLeft::of(head);
    let mut first = true;
    while first || !left.is_done() {
        if !first {
            if let Err(e) = read_client_body(c, server.header_bytes_max, server.body_timeout).await
            {
                return Err(match e {
                    Some(e) => answer_error(ctx, c, e, false, wbuf).await,
                    None => Next::Close,
                });
            }
        }
        let before = c.buf.len();
        let consumed = consume_body(
            &mut c.buf,
            &mut left,
            limit,
            &mut c.llm.body,
            ChunkOut::DataOnly,
        );
        c.ex.bytes_in += (before - c.buf.len()) as u64;
        if let Err(e) = consumed {
            return Err(answer_error(ctx, c, e, false, wbuf).await);
        }
        if first && !send_continue(c, head, &left).await {
            return Err(Next::Close);
        }
        first = false;
    }
    Ok(wbuf)
}

/// Check a tenant's LLM body (JSON, a model it is approved for) and admit it by its token
/// estimate. `Err`: answered (400 / 403 / 429).
async fn check_and_admit(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    snap: &Snapshot,
    tenant: Option<usize>,
    body: &[u8],
) -> Result<LlmCall, Next> {
    let info = match llm::inspect(body) {
        Ok(i) => i,
        Err(e) => {
            let buf = ctx.take_buf();
            return Err(answer_error(ctx, c, Error::BadBody(e.message()), true, buf).await);
        }
    };
    let Some(model) = info.model() else {
        let buf = ctx.take_buf();
        return Err(
            answer_error(ctx, c, Error::BadBody("the body names no model"), true, buf).await,
        );
    };
    let group = snap.model_index.get(model).copied();
    let default_max_tokens = tenant.map_or(crate::tenant::DEFAULT_MAX_TOKENS_DEFAULT, |t| {
        snap.cfg.tenants[t].default_max_tokens
    });
    let call = LlmCall {
        stream: info.stream,
        include_usage: info.include_usage,
        group,
        has_variables: info.has_variables,
        tokens: llm::estimate_tokens(body.len(), info.max_tokens, default_max_tokens),
    };
    let Some(tenant) = tenant else {
        // No tenant (auth = "none"): nothing to approve or admit.
        c.ex.scan = false;
        return Ok(call);
    };
    let tcfg = &snap.cfg.tenants[tenant];
    if !tcfg.models.allows(model) {
        ctx.control.stats.reject(c.ex.tenant_slot, Reject::Model);
        let buf = ctx.take_buf();
        return Err(answer_error(ctx, c, Error::ModelNotAllowed, true, buf).await);
    }
    let tokens = llm::estimate_tokens(body.len(), info.max_tokens, tcfg.default_max_tokens);
    c.ex.scan = true;
    c.ex.prompt_estimate = llm::estimate_tokens(body.len(), Some(0), 0);
    admit_tenant(ctx, c, snap, tenant, tokens, true, 0).await?;
    Ok(call)
}

/// What the relay needs to know of an admitted LLM call.
#[derive(Debug, Clone, Copy)]
struct LlmCall {
    stream: bool,
    include_usage: bool,
    /// The model group the body names, if any.
    group: Option<usize>,
    /// The body carries `variables` (for a template, or to be removed).
    has_variables: bool,
    /// The token estimate (body bytes / 4 + max_tokens), for quotas.
    tokens: u64,
}

/// Admit the current request for `tenant` (estimated at `tokens`), or answer 429.
/// `head_len`: bytes of a request head still at the front of `c.buf` (dropped before a refusal
/// is answered); `may_keep_alive`: nothing of the request is left unread.
async fn admit_tenant(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    snap: &Snapshot,
    tenant: usize,
    tokens: u64,
    may_keep_alive: bool,
    head_len: usize,
) -> Result<(), Next> {
    let Some(limits) = snap.tenant_limits.get(tenant) else {
        return Ok(());
    };
    let now = now_ns();
    match admit(limits, now, tokens) {
        Ok(adm) => {
            c.ex.admitted = Some(adm);
            c.rate_hdrs.clear();
            write_rate_headers(limits, now, &mut c.rate_hdrs);
            Ok(())
        }
        Err(refused) => {
            let why = match refused.limit {
                Limit::Requests => Reject::Requests,
                Limit::Tokens => Reject::Tokens,
                Limit::Concurrency => Reject::Concurrency,
                Limit::Budget => Reject::Budget,
                Limit::Queue => Reject::Queue,
                Limit::Connections => Reject::Concurrency,
            };
            ctx.control.stats.reject(c.ex.tenant_slot, why);
            c.rate_hdrs.clear();
            write_refusal_headers(limits, &refused, now, &mut c.rate_hdrs);
            c.buf.drain(..head_len.min(c.buf.len()));
            let e = Error::RateLimited(refused.limit);
            let extra = std::mem::take(&mut c.rate_hdrs);
            let next = answer_error_with(ctx, c, e, may_keep_alive, &extra, ctx.take_buf()).await;
            c.rate_hdrs = extra;
            Err(next)
        }
    }
}

/// A tenant's request to an LLM endpoint: read the body whole, check and admit it, then write
/// the upstream head (the body's real length, the tenant's key removed, the upstream's
/// credential added) and forward.
async fn proxy_llm(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    route_target: Option<(usize, usize, usize)>,
    mut wbuf: Vec<u8>,
) -> Next {
    let snap = c.snap.clone();
    let limit = snap.cfg.server.body_bytes_max;
    // Keep the raw head (the upstream head is written from it once the body is known).
    wbuf.clear();
    wbuf.extend_from_slice(&c.buf[..head.head_len]);
    c.buf.drain(..head.head_len);
    let wbuf = match read_whole_body(ctx, c, &head, limit, wbuf).await {
        Ok(w) => w,
        Err(next) => return next,
    };
    let mut body = std::mem::take(&mut c.llm.body);
    let tenant = c.ex.tenant;
    let call = match check_and_admit(ctx, c, &snap, tenant, &body).await {
        Ok(call) => call,
        Err(next) => {
            c.llm.body = body;
            ctx.put_buf(wbuf);
            return next;
        }
    };
    // Prompt templates: fill the selected one from `variables`; `variables` never goes upstream.
    if call.has_variables || !snap.templates.is_empty() {
        let path = request_line(&wbuf).1;
        // The body was inspected already: a group's name is the body's model.
        let model = call
            .group
            .and_then(|g| snap.cfg.models.get(g))
            .map(|m| m.name.as_str());
        match fill_template(&snap, &body, model, path, &mut c.llm.filled) {
            Ok(true) => std::mem::swap(&mut body, &mut c.llm.filled),
            Ok(false) => {}
            Err(e) => {
                c.llm.body = body;
                ctx.put_buf(wbuf);
                return answer_error(ctx, c, Error::Template(e), true, ctx.take_buf()).await;
            }
        }
    }
    // A model group: pick a deployment (the group's strategy; then its fallbacks, in order),
    // and on a failure before any byte reached the client, another one (`retries`).
    let Some(g) = call.group else {
        let target = match route_target {
            Some(t) if snap.cfg.models.is_empty() => t,
            // With model groups, a model no group serves is unknown (OpenAI's 404).
            _ => {
                c.llm.body = body;
                ctx.put_buf(wbuf);
                return answer_error(ctx, c, Error::ModelNotFound, true, ctx.take_buf()).await;
            }
        };
        let out = match llm_request(ctx, c, &snap, &wbuf, &body, target, None, call) {
            Ok(out) => out,
            Err(e) => {
                // The body was read whole: the connection can stay open.
                c.llm.body = body;
                ctx.put_buf(wbuf);
                return answer_error(ctx, c, e, true, ctx.take_buf()).await;
            }
        };
        c.llm.body = body;
        ctx.put_buf(wbuf);
        return forward(ctx, c, head, target, out, BodyLeft::Done).await;
    };
    // Deployments of the group not to pick again (failed, or over their quota), as a bit set:
    // it lives across awaits, so it is kept small in the connection's future.
    let mut excluded = [0u64; DEPLOYMENTS_MAX / 64];
    let mut attempts = 0usize;
    let retries = snap.cfg.models[g].retries as usize;
    for _ in 0..2 * DEPLOYMENTS_MAX {
        let Some((group, idx)) = pick_deployment(ctx, &snap, g, &excluded) else {
            break;
        };
        // The deployment's own quota (rpm/tpm over all shards): over it, pick another.
        if let Some(Some(lim)) = snap.deployment_limits.get(group).and_then(|v| v.get(idx)) {
            match admit(lim, now_ns(), call.tokens) {
                Ok(adm) => {
                    c.ex.deployment_admitted = Some((group, idx, adm));
                    // Its tokens are settled from the answer's usage.
                    c.ex.scan = true;
                }
                Err(_) => {
                    if group == g {
                        exclude(&mut excluded, idx);
                    }
                    continue;
                }
            }
        }
        let dep = &snap.cfg.models[group].deployments[idx];
        let (endpoint, ep_index) = snap.pick_endpoint(dep.upstream);
        let target = (dep.upstream, endpoint, ep_index);
        let out = match llm_request(ctx, c, &snap, &wbuf, &body, target, Some(&dep.model), call) {
            Ok(out) => out,
            Err(e) => {
                // The body was read whole: the connection can stay open.
                c.llm.body = body;
                ctx.put_buf(wbuf);
                return answer_error(ctx, c, e, true, ctx.take_buf()).await;
            }
        };
        // Measure the attempt for the balancer: time to the response head, and how it ended.
        let Some(gr) = snap.groups.get(group).and_then(Option::as_deref) else {
            c.llm.body = body;
            ctx.put_buf(wbuf);
            return answer_error(ctx, c, Error::NoDeployment, true, ctx.take_buf()).await;
        };
        c.ex.upstream_slot = snap.upstream_stats[dep.upstream];
        c.ex.hedge = None;
        if let (Some(after), true) = (snap.cfg.models[group].hedge_after, call.stream) {
            let tried = (group == g).then_some(&excluded);
            c.ex.hedge = plan_hedge(
                ctx,
                c,
                &snap,
                (&wbuf, &body),
                call,
                (group, idx),
                tried,
                after,
            );
        }
        let started = balance_now_ns();
        let attempt = gr.start(idx, started);
        c.ex.ttfb = None;
        c.ex.retry_after = None;
        // Only when another deployment could take it: the last one's error goes to the client
        // as the upstream sent it.
        c.ex.retry_ok = attempts < retries && has_alternative(&snap, g, (group, idx), &excluded);
        c.ex.retry_err = None;
        let next = forward(ctx, c, head, target, out, BodyLeft::Done).await;
        let hedged = c.ex.hedge.take();
        if let Some(a) = attempt {
            match hedged.as_deref() {
                // Outrun by the hedge: it had waited at least this long for a first byte.
                Some(h) if h.won => a.finish(
                    h.won_ns,
                    &Outcome::Success {
                        latency: Duration::from_nanos(h.won_ns.saturating_sub(started)),
                    },
                ),
                _ => a.finish(balance_now_ns(), &outcome_of(&c.ex, started)),
            }
        }
        let hedge_won = hedged.map(|h| settle_hedge(ctx, c, &snap, *h));
        c.ex.retry_ok = false;
        if c.ex.retry_err.take().is_none() {
            c.llm.body = body;
            ctx.put_buf(wbuf);
            return next;
        }
        // Failed before any byte reached the client: try another deployment.
        finish_deployment(&mut c.ex, &snap, None, true);
        if let Some(u) = c.ex.upstream_slot_held.take() {
            if let Some(cap) = snap.upstream_caps.get(u) {
                cap.release(snap.fair_slot(c.ex.tenant), fair::now_ms());
            }
        }
        c.ex.status = 0;
        c.ex.local_error = false;
        c.ex.strip_usage = false;
        if group == g {
            exclude(&mut excluded, idx);
        }
        if let Some(Some((hg, hi))) = hedge_won {
            if hg == g {
                exclude(&mut excluded, hi);
            }
        }
        attempts += 1;
    }
    c.llm.body = body;
    ctx.put_buf(wbuf);
    answer_error(ctx, c, Error::NoDeployment, true, ctx.take_buf()).await
}

/// A second attempt for a hedged stream: another deployment of `group` than `current`'s (and
/// than those `tried`), with its request built now. `None`: the group has no other deployment,
/// or the request cannot be built for it.
#[allow(clippy::too_many_arguments)]
fn plan_hedge(
    ctx: &ShardCtx,
    c: &mut Client,
    snap: &Snapshot,
    (raw_head, body): (&[u8], &[u8]),
    call: LlmCall,
    (group, current): (usize, usize),
    tried: Option<&[u64; DEPLOYMENTS_MAX / 64]>,
    after: Duration,
) -> Option<Box<Hedge>> {
    let gr = snap.groups.get(group).and_then(Option::as_deref)?;
    let mut list = [0usize; DEPLOYMENTS_MAX];
    list[0] = current;
    let mut n = 1;
    if let Some(set) = tried {
        for i in 0..DEPLOYMENTS_MAX {
            if set[i / 64] & (1 << (i % 64)) != 0 && i != current && n < DEPLOYMENTS_MAX {
                list[n] = i;
                n += 1;
            }
        }
    }
    let mut rng = || ctx.next_random();
    let idx = gr.pick(balance_now_ns(), &mut rng, &list[..n])?;
    let dep = snap.cfg.models.get(group)?.deployments.get(idx)?;
    let (endpoint, ep_index) = snap.pick_endpoint(dep.upstream);
    let target = (dep.upstream, endpoint, ep_index);
    // Build the hedge's request with the first attempt's relay settings put aside.
    let first = (c.ex.translation.take(), c.ex.filter_sse, c.ex.strip_usage);
    let built = llm_request(ctx, c, snap, raw_head, body, target, Some(&dep.model), call);
    let hedge = built.ok().map(|request| {
        Box::new(Hedge {
            after,
            group,
            idx,
            target,
            request,
            translation: c.ex.translation.take(),
            filter_sse: c.ex.filter_sse,
            strip_usage: c.ex.strip_usage,
            tokens: call.tokens,
            fair_slot: c.snap.fair_slot(c.ex.tenant),
            launched: false,
            won: false,
            launched_ns: 0,
            won_ns: 0,
            admitted: None,
            cap_held: false,
        })
    });
    (c.ex.translation, c.ex.filter_sse, c.ex.strip_usage) = first;
    hedge
}

/// After a hedged attempt: report the hedge to the balancer (only a winner has an outcome; a
/// cancelled one just ran late), settle its deployment quota, give its request buffer back.
/// `Some((group, index))` of the hedge when it won (the request's deployment from then on).
fn settle_hedge(
    ctx: &ShardCtx,
    c: &mut Client,
    snap: &Snapshot,
    mut h: Hedge,
) -> Option<(usize, usize)> {
    if !h.request.is_empty() {
        ctx.put_buf(std::mem::take(&mut h.request));
    }
    if !h.launched {
        return None;
    }
    let lim = snap
        .deployment_limits
        .get(h.group)
        .and_then(|v| v.get(h.idx))
        .and_then(Option::as_ref);
    if !h.won {
        if let (Some(adm), Some(lim)) = (h.admitted.take(), lim) {
            adm.finish(lim, now_ns(), None, true);
        }
        return None;
    }
    if let Some(gr) = snap.groups.get(h.group).and_then(Option::as_deref) {
        if let Some(a) = gr.start(h.idx, h.launched_ns) {
            a.finish(balance_now_ns(), &outcome_of(&c.ex, h.launched_ns));
        }
    }
    // The first attempt was sent (the provider counts it): its quota stays charged at its
    // estimate; the hedge's admission is now the request's.
    if let Some((g, i, adm)) = c.ex.deployment_admitted.take() {
        if let Some(Some(lim)) = snap.deployment_limits.get(g).and_then(|v| v.get(i)) {
            adm.finish(lim, now_ns(), None, false);
        }
    }
    c.ex.deployment_admitted = h.admitted.take().map(|a| (h.group, h.idx, a));
    Some((h.group, h.idx))
}

/// Settle a deployment's quota for the request that used it: tokens from `used` (or given back
/// when the attempt `failed`).
fn finish_deployment(ex: &mut Exchange, snap: &Snapshot, used: Option<u64>, failed: bool) {
    if let Some((g, i, adm)) = ex.deployment_admitted.take() {
        if let Some(Some(lim)) = snap.deployment_limits.get(g).and_then(|v| v.get(i)) {
            adm.finish(lim, now_ns(), used, failed);
        }
    }
}

/// Build the upstream request for one attempt into a fresh buffer: the head (re-parsed from
/// the raw client head in `raw_head`: the tenant key dropped, the upstream's credential added,
/// the body's length) and the body, with the deployment's model name and, for a stream,
/// `stream_options.include_usage`.
#[allow(clippy::too_many_arguments)]
fn llm_request(
    ctx: &ShardCtx,
    c: &mut Client,
    snap: &Snapshot,
    raw_head: &[u8],
    body: &[u8],
    (upstream, _, ep_index): (usize, usize, usize),
    model: Option<&str>,
    call: LlmCall,
) -> Result<Vec<u8>, Error> {
    let mut body = body;
    c.ex.translation = None;
    let ucfg = &snap.cfg.upstreams[upstream];
    let client_path = request_line(raw_head).1;
    let client_path = client_path.split('?').next().unwrap_or(client_path);
    let dir = translate::direction(client_path, ucfg.provider)?;
    let LlmBufs {
        scratch, rewritten, ..
    } = &mut c.llm;
    let mut upstream_path = None;
    if let Some(dir) = dir {
        // The other API's body, for the deployment's model (or, on a route, the client's).
        let model = match model {
            Some(m) => m.to_owned(),
            None => llm::inspect(body)
                .ok()
                .and_then(|i| i.model().map(str::to_owned))
                .unwrap_or_default(),
        };
        let default_max_tokens =
            c.ex.tenant
                .map_or(crate::tenant::DEFAULT_MAX_TOKENS_DEFAULT, |t| {
                    snap.cfg.tenants[t].default_max_tokens
                });
        upstream_path = Some(translate::translate_request(
            dir,
            body,
            &model,
            default_max_tokens,
            scratch,
        )?);
        body = scratch;
        c.ex.translation = Some(Box::new(Translation {
            dir,
            model,
            include_usage: call.include_usage,
        }));
    } else if let Some(m) = model {
        scratch.clear();
        if llm::with_model(body, m, scratch).is_ok() {
            body = scratch;
        }
    }
    // A stream is asked for its usage (OpenAI's `stream_options.include_usage`; Anthropic
    // streams always carry it) so its tokens are settled from what was really used; the extra
    // usage chunk is taken out again before the client sees it.
    let anthropic = client_path == "/v1/messages";
    let mut strip = false;
    if call.stream && !call.include_usage && !anthropic && dir.is_none() {
        rewritten.clear();
        if matches!(llm::with_include_usage(body, rewritten), Ok(true)) {
            body = rewritten;
            strip = true;
        }
    }
    let mut out = ctx.take_buf();
    out.clear();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    match request::parse(raw_head, &mut headers, &snap.cfg.server.head_limits()) {
        Ok(Some(req)) => {
            let creds = Credentials {
                drop_client_keys: true,
                upstream: ucfg.credential.as_deref().unwrap_or_default(),
                content_length: Some(body.len() as u64),
                path: upstream_path,
                translated: dir.is_some(),
                extra: translate::extra_lines(
                    ucfg.provider,
                    dir.is_some(),
                    req.header("anthropic-version").is_some(),
                ),
                client_tls: c.stream.is_tls(),
            };
            let authority = ucfg.endpoints[ep_index].authority.as_bytes();
            req.write_upstream_head_with(authority, c.ip, &creds, &mut out);
        }
        // The same bytes parsed once already: unreachable, but never forward a bodyless head.
        _ => {
            ctx.put_buf(out);
            return Err(Error::BadRequest("unparsable request head"));
        }
    }
    out.extend_from_slice(body);
    // A translated stream is relayed by its translator, not the filter.
    c.ex.filter_sse = call.stream && dir.is_none();
    c.ex.strip_usage = strip;
    Ok(out)
}

/// Fill the template `body` selects (its `template` field, its model alias, or the route of
/// `path`) into `out`, or strip its `variables` when none applies. `Ok(false)`: unchanged.
fn fill_template(
    snap: &Snapshot,
    body: &[u8],
    model: Option<&str>,
    path: &str,
    out: &mut Vec<u8>,
) -> Result<bool, crate::template::TemplateError> {
    let tb = TemplateBody::read(body)?;
    let selector = tb.selector()?;
    // Only a body whose model no group serves is read again for it (a template's model alias
    // may name such a model on a route).
    let info = model.is_none().then(|| llm::inspect(body).ok()).flatten();
    let model = model.or_else(|| info.as_ref().and_then(|i| i.model()));
    out.clear();
    match snap
        .templates
        .select(selector.as_ref().map(|n| n.as_str()), model, path)?
    {
        Some(t) => {
            tb.fill(t, out)?;
            Ok(true)
        }
        None if tb.has_variables() => Ok(tb.strip_variables(out)),
        None => Ok(false),
    }
}

/// `GET /v1/models` with model groups: the groups the caller may use, in OpenAI's list shape.
async fn answer_models(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: &RequestHead,
    mut wbuf: Vec<u8>,
) -> Next {
    let snap = c.snap.clone();
    c.buf.drain(..head.head_len);
    if head.body != BodyKind::None {
        return answer_error(
            ctx,
            c,
            Error::BadRequest("GET /v1/models takes no body"),
            false,
            wbuf,
        )
        .await;
    }
    let allowed = |name: &str| match c.ex.tenant {
        Some(t) => snap.cfg.tenants[t].models.allows(name),
        None => true,
    };
    // Group names are printable ASCII without quotes or backslashes (validated): no escaping.
    let mut body = std::mem::take(&mut c.rate_hdrs);
    let hdrs_len = body.len();
    body.extend_from_slice(br#"{"object":"list","data":["#);
    let mut first = true;
    for m in &snap.cfg.models {
        if !allowed(&m.name) {
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(br#"{"id":""#);
        body.extend_from_slice(m.name.as_bytes());
        body.extend_from_slice(br#"","object":"model","created":0,"owned_by":"shardgate"}"#);
    }
    body.extend_from_slice(b"]}");
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    wbuf.clear();
    crate::http::write_status_line(&mut wbuf, 200);
    wbuf.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    crate::http::write_decimal(&mut wbuf, (body.len() - hdrs_len) as u64);
    wbuf.extend_from_slice(b"\r\n");
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    // A tenant's rate headers (admitted at the head) ride along.
    wbuf.extend_from_slice(&body[..hdrs_len]);
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(&body[hdrs_len..]);
    body.truncate(hdrs_len);
    c.rate_hdrs = body;
    c.ex.status = 200;
    let (res, buf) = send(c, wbuf, snap.cfg.server.send_timeout).await;
    if let Some(buf) = buf {
        ctx.put_buf(buf);
    }
    if res.is_ok() && keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// The deployment for a request to group `g`: picked by the group's strategy while it has a
/// deployment admitted (healthy or on probation); otherwise from the first fallback that has
/// one; and when none has, the group's least bad deployment (a group never refuses for
/// health alone). (group, deployment index).
fn pick_deployment(
    ctx: &ShardCtx,
    snap: &Snapshot,
    g: usize,
    excluded: &[u64; DEPLOYMENTS_MAX / 64],
) -> Option<(usize, usize)> {
    // The bit set as the list the balancer takes (on this function's stack, not the future's).
    let mut list = [0usize; DEPLOYMENTS_MAX];
    let mut n = 0;
    for i in 0..DEPLOYMENTS_MAX {
        if excluded[i / 64] & (1 << (i % 64)) != 0 {
            list[n] = i;
            n += 1;
        }
    }
    let tried = &list[..n];
    let now = balance_now_ns();
    let mut rng = || ctx.next_random();
    let primary = snap.groups.get(g).and_then(Option::as_deref)?;
    if primary.has_admitted(now) {
        if let Some(idx) = primary.pick(now, &mut rng, tried) {
            return Some((g, idx));
        }
    }
    for &f in &snap.cfg.models[g].fallbacks {
        let Some(gr) = snap.groups.get(f).and_then(Option::as_deref) else {
            continue;
        };
        if gr.has_admitted(now) {
            if let Some(idx) = gr.pick(now, &mut rng, &[]) {
                return Some((f, idx));
            }
        }
    }
    primary.pick(now, &mut rng, tried).map(|idx| (g, idx))
}

/// Whether a deployment other than `current` (group, index) is left to try for a request to
/// group `g`: one of its deployments not tried yet, or a fallback group.
fn has_alternative(
    snap: &Snapshot,
    g: usize,
    current: (usize, usize),
    excluded: &[u64; DEPLOYMENTS_MAX / 64],
) -> bool {
    let Some(m) = snap.cfg.models.get(g) else {
        return false;
    };
    if !m.fallbacks.is_empty() {
        return true;
    }
    (0..m.deployments.len()).any(|i| {
        let tried = excluded[i / 64] & (1 << (i % 64)) != 0 || current == (g, i);
        !tried
    })
}

/// Mark deployment `idx` as not to be picked again for this request.
fn exclude(set: &mut [u64; DEPLOYMENTS_MAX / 64], idx: usize) {
    if let Some(w) = set.get_mut(idx / 64) {
        *w |= 1 << (idx % 64);
    }
}

/// The balancer's clock: a monotonic ns count (only differences matter).
fn balance_now_ns() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// How an attempt at a deployment ended, for its health and latency estimate.
fn outcome_of(ex: &Exchange, started_ns: u64) -> Outcome {
    let _ = started_ns;
    if ex.upstream_broke {
        return Outcome::Failure {
            kind: FailureKind::Reset,
            retry_after: None,
        };
    }
    match (ex.ttfb, ex.local_error, ex.status) {
        // The upstream answered: its status says how it is doing.
        (Some(_), _, s) if s == 429 || s >= 500 => Outcome::Failure {
            kind: FailureKind::Status(s),
            retry_after: ex.retry_after,
        },
        (Some(latency), _, _) => Outcome::Success { latency },
        // No answer: our own 504 is a timeout, anything else a failed connection.
        (None, _, 504) => Outcome::Failure {
            kind: FailureKind::Timeout,
            retry_after: None,
        },
        (None, _, _) => Outcome::Failure {
            kind: FailureKind::Connect,
            retry_after: None,
        },
    }
}

// ----- the built-in mock model -----

async fn serve_mock(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    endpoint: MockEndpoint,
    wbuf: Vec<u8>,
) -> Next {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    let limit = (MOCK_BODY_BYTES_MAX as u64).min(server.body_bytes_max);
    if matches!(head.body, BodyKind::Length(n) if n > limit) {
        return answer_error(ctx, c, Error::BodyTooLarge, false, wbuf).await;
    }
    c.buf.drain(..head.head_len);
    let wbuf = match read_whole_body(ctx, c, &head, limit, wbuf).await {
        Ok(wbuf) => wbuf,
        Err(next) => return next,
    };
    let body = std::mem::take(&mut c.llm.body);
    if let (Some(t), true) = (c.ex.tenant, endpoint.takes_body()) {
        if let Err(next) = check_and_admit(ctx, c, &snap, Some(t), &body)
            .await
            .map(|_| ())
        {
            c.llm.body = body;
            ctx.put_buf(wbuf);
            return next;
        }
    }
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    let now_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // A tenant sees only the models it is approved for.
    let reply = match (endpoint, c.ex.tenant) {
        (MockEndpoint::Models, Some(t)) => {
            let models = &snap.cfg.tenants[t].models;
            Ok(mock::models_for(|m| models.allows(m), keep_alive))
        }
        _ => mock::respond(endpoint, &body, now_s, keep_alive),
    };
    c.llm.body = body;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return answer_error(ctx, c, e, keep_alive, wbuf).await,
    };
    ctx.put_buf(wbuf);
    let (mut head_bytes, frames) = match reply {
        MockReply::Whole(bytes) => (bytes, Vec::new()),
        MockReply::Stream { head, frames } => (head, frames),
    };
    // A tenant's answer carries its x-ratelimit-* headers, as a proxied one does.
    if c.ex.admitted.is_some() && !c.rate_hdrs.is_empty() {
        if let Some(at) = head_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let at = at + 2;
            head_bytes.splice(at..at, c.rate_hdrs.iter().copied());
        }
    }
    c.ex.status = 200;
    if c.ex.tenant.is_some() && frames.is_empty() {
        // A whole JSON answer: its usage settles the tenant's tokens.
        if let Some(at) = head_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            c.ex.scan = true;
            c.llm.scanner.reset(llm::BodyKind::Json);
            c.llm.scanner.feed(&head_bytes[at + 4..]);
        }
    }
    let (res, _) = send(c, head_bytes, server.send_timeout).await;
    if res.is_err() {
        return Next::Close;
    }
    for frame in frames {
        monoio::time::sleep(Duration::from_millis(mock::MOCK_CHUNK_INTERVAL_MS)).await;
        let (res, _) = send(c, frame, server.send_timeout).await;
        if res.is_err() {
            return Next::Close;
        }
    }
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

// ----- answers, reads and writes -----

/// Send `e` as an OpenAI-style JSON answer. The connection stays open only if `may_keep_alive`
/// and the error does not taint the connection's framing.
async fn answer_error(
    ctx: &ShardCtx,
    c: &mut Client,
    e: Error,
    may_keep_alive: bool,
    wbuf: Vec<u8>,
) -> Next {
    answer_error_with(ctx, c, e, may_keep_alive, &[], wbuf).await
}

/// [`answer_error`] with extra header lines (`retry-after`, `x-ratelimit-*`).
async fn answer_error_with(
    ctx: &ShardCtx,
    c: &mut Client,
    e: Error,
    may_keep_alive: bool,
    extra_headers: &[u8],
    mut wbuf: Vec<u8>,
) -> Next {
    let close = e.closes_connection() || !may_keep_alive || ctx.drain.is_fired();
    wbuf.clear();
    e.write_response_shaped(close, extra_headers, c.ex.error_shape, &mut wbuf);
    tracing::debug!(
        shard = ctx.id,
        status = e.status(),
        code = e.code(),
        "local answer"
    );
    if !c.ex.active {
        // Refused before any request began (a head that timed out or broke the rules).
        c.ex.begin(Instant::now());
    }
    c.ex.status = e.status();
    c.ex.local_error = true;
    let timeout = c.snap.cfg.server.send_timeout;
    let (res, buf) = send(c, wbuf, timeout).await;
    if let Some(buf) = buf {
        ctx.put_buf(buf);
    }
    match (res, close) {
        (Err(_), _) => Next::Close,
        // A client that let a deadline pass gets its 408 and a plain close: lingering to read
        // what it still sends would spend the shard's time on the slowest (or most hostile)
        // clients, a thousand at once when a slowloris attack's deadlines expire together.
        (Ok(()), true) if matches!(e, Error::HeaderTimeout | Error::BodyTimeout) => Next::Close,
        (Ok(()), true) => Next::CloseLinger,
        (Ok(()), false) => Next::KeepAlive,
    }
}

/// Half-close, then read and drop what the client still sends for a short while, so the close
/// does not turn into a reset that destroys the answer in the client's receive buffer. Reads
/// into the connection's own buffer (`buf`): closing allocates nothing.
async fn linger_close(stream: &mut Io, mut buf: Vec<u8>) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + Duration::from_millis(LINGER_MS);
    if buf.capacity() == 0 {
        // Left with a cancelled read: one small buffer.
        buf.reserve(CLIENT_BUF_BYTES_INITIAL);
    }
    let mut total = 0;
    while total < LINGER_BYTES_MAX {
        buf.clear();
        let (res, back) = read_more(stream, buf, deadline).await;
        buf = back;
        match res {
            Ok(n) if n > 0 => total += n,
            _ => break,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadError {
    TimedOut,
    Io,
}

/// Append what the socket has to `buf` (into its spare capacity), by `deadline`.
/// On a timeout the buffer stays with the cancelled read and an empty one comes back: the
/// caller closes that socket (monoio cannot promise what a cancelled read did).
async fn read_more(
    stream: &mut Io,
    buf: Vec<u8>,
    deadline: Instant,
) -> (Result<usize, ReadError>, Vec<u8>) {
    let len = buf.len();
    if len == buf.capacity() {
        return (Ok(0), buf);
    }
    let read = stream.read(buf.slice_mut(len..));
    match monoio::time::timeout_at(deadline.into(), read).await {
        Ok((Ok(n), slice)) => (Ok(n), slice.into_inner()),
        Ok((Err(_), slice)) => (Err(ReadError::Io), slice.into_inner()),
        Err(_elapsed) => (Err(ReadError::TimedOut), Vec::new()),
    }
}

/// Write all of `buf` to the client within `timeout`, counting the bytes sent.
async fn send<B: IoBuf>(c: &mut Client, buf: B, timeout: Duration) -> (Result<(), ()>, Option<B>) {
    let len = buf.bytes_init() as u64;
    let (res, buf) = write_timeout(&mut c.stream, buf, timeout).await;
    if res.is_ok() {
        c.ex.bytes_out += len;
    } else {
        // The client left (or stopped reading): a tenant's reservation is given back.
        c.ex.local_error = true;
    }
    (res, buf)
}

/// Write all of `buf` within `timeout`. The buffer comes back unless the write timed out.
async fn write_timeout<B: IoBuf>(
    stream: &mut Io,
    buf: B,
    timeout: Duration,
) -> (Result<(), ()>, Option<B>) {
    match monoio::time::timeout(timeout, stream.write_all(buf)).await {
        Ok((Ok(_), buf)) => (Ok(()), Some(buf)),
        Ok((Err(_), buf)) => (Err(()), Some(buf)),
        Err(_elapsed) => (Err(()), None),
    }
}
