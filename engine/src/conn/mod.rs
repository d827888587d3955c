//! The connection driver: the only code that moves request bytes between sockets.
//!
//! Each client connection runs the same fixed phases per request (see docs/ARCHITECTURE.md):
//! read head → parse and decide (route, framing, limits) → forward head and body upstream →
//! read the response head → relay the body as it arrives → pool or close. Every decision is
//! taken by the I/O-free modules (`http`, `route`, `mock`); this module only sequences reads,
//! writes and timeouts, and maps failures to [`Error`] answers.
//!
//! Buffers: the client read buffer lives as long as the connection; the write buffer is a
//! [`SpareBuf`](crate::ctx::SpareBuf) lent from the shard's spares, which goes back when it is
//! dropped, on whatever path the request ends; each upstream connection carries its own read
//! buffer into and out of the pool. Nothing is allocated per request once warm.

use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRent;
use monoio::net::TcpStream;

use crate::accesslog::Record;
use crate::admit::Admitted;
use crate::control::stats::Reject;
use crate::control::stats::{NO_SLOT, SLOT_UNROUTED};
use crate::ctx::{LlmBufs, ShardCtx};
use crate::error::{Error, Limit, Shape};
use crate::http::request::BodyKind;
use crate::llm;
use crate::prices::Price;
use crate::snapshot::{GroupId, Snapshot, StatSlot, TenantId};
use crate::stream::Io;
use crate::telemetry::context::{SpanId, TraceCtx};
use crate::telemetry::span::{ServerSpan, SpanBody, SpanRecord, Text};
use crate::telemetry::{status_text, RequestTrace};
use crate::tenant::KeyMemo;

mod access_requests;
mod call;
mod forward;
mod hedge;
mod io;
mod local;
mod relay;
mod spans;
mod translate;
mod upread;
use crate::clock::{deadline_in, Now};
use crate::exchange::head::{decide, request_line, Action, Decision};
use crate::exchange::ledger::Ledger;
use call::{admit_tenant, proxy_llm};
use forward::proxy;
use io::{linger_close, read_more, send, write_buf, ReadError};
use local::{answer_error, answer_error_with, answer_models, serve_mock};
use translate::Translation;

/// A tenant's request body buffer larger than this is freed after the request instead of
/// being kept for the connection's next one.
const BODY_BUF_KEEP_BYTES_MAX: usize = 256 * 1024;

/// LLM buffer sets a shard keeps for reuse (about as many as it has LLM requests reading or
/// sending bodies at one moment: a stream gives its set back once its request is sent).
const LLM_POOL_MAX: usize = 128;

/// While draining, how long an idle keep-alive connection still waits for its client's next
/// request (answered with `Connection: close`) before it is closed, ms: a client that sent one
/// just as the drain began gets its answer instead of a closed connection (HAProxy's soft-stop
/// likewise closes idle connections on their next request or once quiet).
pub const DRAIN_IDLE_GRACE_MS: u64 = 1_000;

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
        pool_llm_bufs(ctx, std::mem::take(&mut c.llm));
    }
}

/// A stream's request is sent: its body buffers go back to the shard's pool now, not when the
/// stream ends (the scanner and the filter stay: they read the answer).
fn llm_give_request(ctx: &ShardCtx, c: &mut Client) {
    if c.llm_held {
        let l = &mut c.llm;
        let request = LlmBufs {
            head: std::mem::take(&mut l.head),
            body: std::mem::take(&mut l.body),
            rewritten: std::mem::take(&mut l.rewritten),
            scratch: std::mem::take(&mut l.scratch),
            filled: std::mem::take(&mut l.filled),
            path: std::mem::take(&mut l.path),
            sse_in: std::mem::take(&mut l.sse_in),
            sse_out: std::mem::take(&mut l.sse_out),
            ..LlmBufs::default()
        };
        pool_llm_bufs(ctx, request);
    }
}

/// Keep a set of LLM buffers for the next request, cleared, unless the pool is full or the set
/// holds no body buffer (one whose buffers went back when its stream began).
fn pool_llm_bufs(ctx: &ShardCtx, mut b: LlmBufs) {
    if b.body.capacity() == 0 {
        return;
    }
    for v in [
        &mut b.head,
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
    b.path.clear();
    let mut pool = ctx.llm_pool.borrow_mut();
    if pool.len() < LLM_POOL_MAX {
        pool.push(b);
    }
}

/// How an attempt's answer is relayed, decided when its request is built.
#[derive(Debug, Default)]
pub(super) struct RelayPlan {
    /// The body was translated to the upstream's API: its answer is translated back.
    translation: Option<Box<Translation>>,
    /// A streamed answer goes through the SSE filter: to drop the usage chunk the client did
    /// not ask for (`strip_usage`) and to cut the stream at the tenant's budget.
    filter_sse: bool,
    strip_usage: bool,
    /// The client called the Responses API: a stream cut at the budget ends with its `error`
    /// event.
    responses_events: bool,
}

/// What one request did, for the shard's counters (and the access log).
#[derive(Debug)]
struct Exchange {
    /// A request is under way (its first byte arrived).
    active: bool,
    start: Now,
    /// The status sent; 0 while none was.
    status: u16,
    bytes_in: u64,
    bytes_out: u64,
    upstream_slot: StatSlot,
    route_slot: StatSlot,
    /// The tenant (in the request's snapshot) and its counter slot.
    tenant: Option<TenantId>,
    tenant_slot: StatSlot,
    upstream: Option<SocketAddr>,
    /// The access-log record, filled from the head (only when an access log is configured).
    record: Option<Record>,
    /// What the request holds until it ends (its tenant's admission, a deployment's quota,
    /// a capped upstream's slot), settled exactly once.
    held: Ledger<Admitted>,
    /// The response is scanned for `usage`.
    scan: bool,
    /// An error answer of ours (the upstream failed or the client broke the rules).
    local_error: bool,
    /// How the current attempt's answer is relayed.
    plan: RelayPlan,
    /// The prompt's share of the token estimate (body bytes / 4).
    prompt_estimate: u64,
    /// Tokens a filtered stream is known to have used when its usage was never seen (it was
    /// cut, or the upstream sent none): the prompt's estimate plus one per content event.
    counted: Option<u64>,
    /// Time from sending to the upstream until its response head (for the balancer).
    ttfb: Option<Duration>,
    /// The upstream's `Retry-After` on a 429/503 (for the balancer).
    retry_after: Option<Duration>,
    /// The upstream broke off its answer after its head (closed, reset, stalled past
    /// `read_timeout_ms` or ill-framed mid-body): a failure for its health, whatever the
    /// status the client already got.
    upstream_broke: bool,
    /// The client called Anthropic's API (`/v1/messages`): our own errors take its shape.
    error_shape: Shape,
    /// While a stream waits for the upstream, the client's socket is watched for a hang-up
    /// (until the client sends bytes: a pipelined request ends the watch).
    watch_client: bool,
    /// The price of the model that answers (spend, the USD budget); `None`: unpriced.
    price: Option<Price>,
    /// The model group the body named (for the access log).
    group: Option<GroupId>,
    /// The limits of the request's key's own, if it has any (an index into the snapshot's).
    key_limit: Option<usize>,
    /// The request's trace (with `[telemetry]`).
    trace: Option<RequestTrace>,
    /// A sampled request's SERVER span, filled from the head (boxed: only sampled requests
    /// pay for it, not every connection's future).
    server_span: Option<Box<ServerSpan>>,
    /// When the current attempt's answer brought its first body bytes (a stream's first
    /// token), ns since the epoch; 0 while none did.
    first_body_unix_ns: u64,
    /// A model call's attempt is under way: its first body bytes are timed (the GenAI metrics'
    /// time to first chunk, the span's first-token event).
    timed: bool,
}

impl Exchange {
    fn idle(now: Now) -> Self {
        Self {
            active: false,
            start: now,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            upstream_slot: SLOT_UNROUTED,
            route_slot: NO_SLOT,
            tenant: None,
            tenant_slot: NO_SLOT,
            upstream: None,
            record: None,
            held: Ledger::default(),
            scan: false,
            local_error: false,
            plan: RelayPlan::default(),
            prompt_estimate: 0,
            counted: None,
            ttfb: None,
            retry_after: None,
            upstream_broke: false,
            error_shape: Shape::OpenAi,
            watch_client: true,
            price: None,
            group: None,
            key_limit: None,
            trace: None,
            server_span: None,
            first_body_unix_ns: 0,
            timed: false,
        }
    }

    /// How the current attempt ended, for its deployment's health and latency estimate (and
    /// its span's and metrics' `error.type`).
    fn outcome(&self) -> crate::balance::Outcome {
        crate::exchange::attempts::outcome(
            self.ttfb,
            self.status,
            self.retry_after,
            self.upstream_broke,
        )
    }

    fn begin(&mut self, now: Now) {
        *self = Self::idle(now);
        self.active = true;
    }
}

/// Count the request that just ended (if one was under way), and settle its tenant's limits.
fn finish(ctx: &ShardCtx, c: &mut Client) {
    let ex = &mut c.ex;
    if !ex.active {
        return;
    }
    ex.active = false;
    // The answer's usage, read once (a JSON body is parsed whole to find it) for the deployment
    // and the tenant.
    let usage = if ex.scan { c.llm.scanner.usage() } else { None };
    let used = usage
        .map(|u| u.prompt_tokens.saturating_add(u.completion_tokens))
        .or(ex.counted);
    let failed = ex.status == 0 || ex.local_error;
    // What the answer cost: its usage at its model's price (unpriced: counted as such, never
    // as $0).
    let cost_nusd = usage.and_then(|u| ex.price.map(|p| p.cost_nusd(&u.tokens())));
    if let (Some(u), Some(adm)) = (usage, ex.held.tenant()) {
        ctx.control
            .stats
            .tokens(ex.tenant_slot, u.prompt_tokens, u.completion_tokens);
        ctx.control.stats.spend(ex.tenant_slot, cost_nusd);
        if let Some(n) = cost_nusd {
            adm.set_cost_uusd(crate::prices::nusd_to_uusd(n));
        }
    }
    let now = Now::read();
    ex.held.settle(&*c.snap, now.unix_ns, used, failed);
    let elapsed = ex.start.until(now);
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
            Record::new(now.unix_ms(), shard_u16(ctx.id), c.peer)
        });
        r.status = ex.status;
        r.bytes_in = ex.bytes_in;
        r.bytes_out = ex.bytes_out;
        r.duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        r.upstream = ex.upstream;
        if let Some(t) = ex.tenant {
            r.set_tenant(&c.snap.tenant(t).name);
        }
        if let Some(u) = usage {
            r.tokens = Some((u.prompt_tokens, u.completion_tokens));
            r.cost_nusd = cost_nusd;
        }
        if let Some(g) = ex.group {
            r.set_model(&c.snap.group(g).name);
        }
        log.push(r);
    }
    if let (Some(spans), Some(trace), Some(server)) = (&ctx.spans, ex.trace, ex.server_span.take())
    {
        let server = *server;
        spans.record(SpanRecord {
            trace_id: trace.ctx.trace_id,
            span_id: trace.ctx.span_id,
            parent: trace.ctx.parent,
            start_unix_ns: trace.start_unix_ns,
            end_unix_ns: now.unix_ns,
            status: ex.status,
            error: server_error(ex.status),
            body: SpanBody::Server(server),
        });
    }
    llm_give(ctx, c);
}

/// Begin a request's trace: its context, the span of a plain proxied request's attempt, and
/// for a sampled request its SERVER span's head fields (its answer's model and finish reasons
/// are read too).
fn begin_trace(
    c: &mut Client,
    snap: &Snapshot,
    trace: TraceCtx,
    attempt_span: Option<SpanId>,
    head_len: usize,
    tenant: Option<TenantId>,
    now: Now,
) {
    let mut t = RequestTrace::new(trace, now.unix_ns);
    t.route_attempt = attempt_span;
    c.ex.trace = Some(t);
    c.llm.scanner.want_meta(trace.sampled);
    if !trace.sampled {
        return;
    }
    let (method, target) = request_line(&c.buf[..head_len]);
    let path = target.split('?').next().unwrap_or(target);
    let mut span = ServerSpan {
        method: Text::new(method),
        path: Text::new(path),
        api_route: llm::is_llm_request(method, path),
        client: c.peer,
        tls: c.stream.is_tls(),
        tenant: Text::EMPTY,
    };
    if let Some(t) = tenant {
        span.tenant.set(&snap.tenant(t).name);
    }
    c.ex.server_span = Some(Box::new(span));
}

/// A SERVER span's `error.type`: its 5xx status, or `no_response` when none was sent (4xx
/// leave a server span's status unset).
fn server_error(status: u16) -> Option<&'static str> {
    match status {
        0 => Some("no_response"),
        500..=599 => Some(status_text(status)),
        _ => None,
    }
}

fn shard_u16(id: usize) -> u16 {
    u16::try_from(id).unwrap_or(u16::MAX)
}

/// Serve one client connection to the end.
pub async fn serve(ctx: &Rc<ShardCtx>, stream: TcpStream, peer: SocketAddr, tls: bool) {
    // TCP_NODELAY comes from the listener (`shard::bind`).
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
        // Small at first (`CLIENT_BUF_BYTES_INITIAL`): most heads fit, and an idle connection
        // then holds little memory. It grows (once per connection) to `header_bytes_max` when
        // a head or body needs it.
        buf: ctx.client_bufs.take(),
        ip: peer.ip(),
        peer,
        snap,
        ex: Exchange::idle(Now::read()),
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
    ctx.client_bufs.give(std::mem::take(&mut c.buf));
}

/// What a connection holds goes back when it ends, however it ends (a task dropped at shutdown
/// included): its tenant's open-connection count, and the reservations of a request cut off
/// before `finish` (given back as failed).
impl Drop for Client {
    fn drop(&mut self) {
        if let Some(n) = self.tenant_conn.take() {
            n.set(n.get().saturating_sub(1));
        }
        if !self.ex.held.is_empty() {
            self.ex
                .held
                .settle(&*self.snap, Now::read().unix_ns, None, true);
        }
    }
}

/// The `Retry-After` of a request shed by a saturated shard, seconds (one header line).
const OVERLOADED_RETRY_AFTER: &[u8] = b"retry-after: 1\r\n";

/// How long a connection refused past `connections_max` may take to send its request before
/// its `503` goes out anyway, ms.
const REFUSE_READ_MS: u64 = 100;

/// Answer a plain connection accepted past `connections_max`: read what it sent within
/// `REFUSE_READ_MS` (so the close after the answer does not reset it away), then `503`
/// `overloaded` with `Retry-After` and `Connection: close`, and close. Nothing is parsed.
pub async fn refuse(ctx: &ShardCtx, stream: TcpStream) {
    let mut stream = Io::Plain(stream);
    let mut buf = ctx.take_buf();
    let deadline = deadline_in(Duration::from_millis(REFUSE_READ_MS));
    let (_, back) = read_more(&mut stream, buf.lend(), deadline).await;
    buf.restore(Some(back));
    buf.clear();
    Error::Overloaded.write_response_with(true, OVERLOADED_RETRY_AFTER, &mut buf);
    let send_timeout = Duration::from_millis(REFUSE_READ_MS);
    let _ = write_buf(&mut stream, &mut buf, send_timeout).await;
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
            let now = Now::read();
            if !c.ex.active {
                c.ex.begin(now);
            }
            // The request's config: take a new one if it was published while this
            // connection waited (one atomic load if none was); the request keeps it to the end.
            ctx.refresh();
            snap = ctx.snapshot();
            c.snap = snap.clone();
            let mut wbuf = ctx.take_buf();
            let mut random = || ctx.trace_random();
            let trace = ctx
                .spans
                .as_ref()
                .map(|s| (s.sample_ratio, &mut random as &mut dyn FnMut() -> u64));
            match decide(
                &snap,
                &c.buf,
                c.ip,
                c.stream.is_tls(),
                now.unix_ms(),
                &mut wbuf,
                &mut c.key_memo,
                trace,
            ) {
                Ok(Some(Decision {
                    head,
                    action,
                    route,
                    tenant,
                    shape,
                    trace,
                    attempt_span,
                })) => {
                    c.ex.bytes_in = head.head_len as u64;
                    c.ex.error_shape = shape;
                    if let Some(t) = trace {
                        begin_trace(c, &snap, t, attempt_span, head.head_len, tenant, now);
                    }
                    if let Some(t) = tenant {
                        c.ex.tenant = Some(t);
                        c.ex.tenant_slot = snap.tenant_stat_slot(t);
                        c.ex.key_limit = c.key_memo.key_limit();
                    }
                    if ctx.access_log.is_some() {
                        let mut r = Record::new(now.unix_ms(), shard_u16(ctx.id), c.peer);
                        let (method, target) = request_line(&c.buf[..head.head_len]);
                        r.set_method(method);
                        r.set_path(target);
                        // The key that named the tenant, by id (never the key).
                        if tenant.is_some() {
                            r.key_id = c.key_memo.key_id();
                        }
                        c.ex.record = Some(r);
                    }
                    if let Some(r) = route {
                        c.ex.route_slot = snap.route_stat_slot(r);
                        c.ex.upstream_slot = snap.upstream_stat_slot(snap.route_upstream(r));
                    }
                    break (head, action, wbuf);
                }
                // Not a whole head yet: the buffer goes back while more is read.
                Ok(None) => {}
                Err(e) => return answer_error(ctx, c, e, true, wbuf).await,
            }
        }
        c.take_buf(ctx);
        c.grow_buf(snap.cfg.server.header_bytes_max);
        let buf = std::mem::take(&mut c.buf);
        let had_bytes = !buf.is_empty();
        let (res, buf) = if !had_bytes {
            // Waiting for the first byte: the idle timeout (header timeout for a new
            // connection). Draining does not close the connection at once: its client may
            // have its next request on the wire already, which a close would lose. It waits
            // [`DRAIN_IDLE_GRACE_MS`] more for one (answered with `Connection: close`), then
            // closes gracefully (FIN, then what the client still sends is read and dropped),
            // so a request racing that close meets a clean end of stream, never a reset.
            let wait = if first {
                snap.cfg.server.header_timeout
            } else {
                snap.cfg.server.idle_timeout
            };
            let grace = Duration::from_millis(DRAIN_IDLE_GRACE_MS).min(wait);
            if ctx.drain.is_fired() {
                read_more(&mut c.stream, buf, deadline_in(grace)).await
            } else {
                // The read is not given up when the drain begins (on io_uring a read given up
                // as its bytes arrive loses them): the same read goes on, for the grace.
                let mut read = std::pin::pin!(read_more(&mut c.stream, buf, deadline_in(wait)));
                let got = monoio::select! {
                    r = &mut read => Some(r),
                    _ = ctx.drain.wait() => None,
                };
                match got {
                    Some(r) => r,
                    None => match monoio::time::timeout(grace, &mut read).await {
                        Ok(r) => r,
                        // Quiet for the whole grace: closed gracefully.
                        Err(_) => return Next::CloseLinger,
                    },
                }
            }
        } else {
            let deadline =
                *head_deadline.get_or_insert_with(|| deadline_in(snap.cfg.server.header_timeout));
            read_more(&mut c.stream, buf, deadline).await
        };
        c.buf = buf;
        match res {
            Ok(0) => return Next::Close,
            Ok(_) => {
                head_deadline.get_or_insert_with(|| deadline_in(snap.cfg.server.header_timeout));
            }
            // Nothing sent at all: close quietly, as for an idle keep-alive connection
            // (gracefully while draining: a request may be racing the close).
            Err(ReadError::TimedOut) if !had_bytes && ctx.drain.is_fired() => {
                return Next::CloseLinger
            }
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
    let _inflight = match action.is_work() {
        false => None,
        true => match ctx.begin_request(server.requests_inflight_max) {
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
        if let Some(count) = snap.tenant_conns(t) {
            let max = snap.tenant(t).connections_max;
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
    if let (Some(t), true) = (c.ex.tenant, action.admits_at_head()) {
        // The body (if any) is unread: the connection closes after a refusal.
        let may_keep_alive = head.body == BodyKind::None && head.keep_alive;
        let admitted = admit_tenant(ctx, c, &snap, t, may_keep_alive, head.head_len);
        if let Err(next) = admitted.await {
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
            if head.body != BodyKind::None {
                return answer_error(
                    ctx,
                    c,
                    Error::BadRequest("health checks take no body"),
                    false,
                    wbuf,
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
        Action::AccessRequests { file } => {
            // Boxed: a rare path, kept out of every connection's future.
            Box::pin(access_requests::serve(ctx, c, head, file, wbuf)).await
        }
        Action::Proxy { target } => proxy(ctx, c, head, target, wbuf).await,
    }
}

impl Client {
    /// Take a read buffer from the shard's spares if the connection gave its own back.
    fn take_buf(&mut self, ctx: &ShardCtx) {
        if self.buf.capacity() == 0 {
            self.buf = ctx.client_bufs.take();
        }
    }

    /// Give the read buffer back to the shard's spares once the request is sent, while its
    /// answer is awaited and relayed (kept when it holds bytes: a pipelined request).
    fn give_buf(&mut self, ctx: &ShardCtx) {
        if self.buf.is_empty() {
            ctx.client_bufs.give(std::mem::take(&mut self.buf));
        }
    }

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
