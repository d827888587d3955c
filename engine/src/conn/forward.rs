//! Phase 3, forwarding: a capped upstream's slot (waiting in the tenant's fair queue), a pooled
//! or new upstream connection, the request head and body sent (replayed once on a pooled
//! connection that turned out closed), and the answer's head read, raced against a hedge when
//! one is planned. Decisions come from `exchange` (body framing, the answer head, the retry
//! rule); this module only moves bytes and keeps deadlines.

use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBuf;

use super::hedge::{Hedge, Raced};
use super::io::{read_more, send, write_buf, write_timeout, ReadError};
use super::local::answer_error;
use super::relay::relay_response;
use super::{hedge, translate, Client, Next};
use crate::admit::Admitted;
use crate::clock::{deadline_in, Now};
use crate::config::UpstreamConfig;
use crate::control::stats::Reject;
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::{Error, Limit};
use crate::exchange::attempt::{Failed, Failure, Try};
use crate::exchange::body::{self, BodyLeft, ChunkOut};
use crate::exchange::ledger::Books;
use crate::exchange::relay::{response_head, HeadStep, Relay};
use crate::fair::UpstreamCap;
use crate::http::request::RequestHead;
use crate::http::response::ClientFraming;
use crate::llm::{OVERFLOW_BODY_BYTES_MAX, OVERFLOW_BODY_WAIT_MS};
use crate::snapshot::Target;
use crate::upstream::{self, UpConn};

pub(super) const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Read more body bytes from the client (appending to `c.buf`).
/// `Err(Some(e))`: answer `e`; `Err(None)`: the client went away.
pub(super) async fn read_client_body(
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
    let (res, buf) = read_more(&mut c.stream, buf, deadline_in(timeout)).await;
    c.buf = buf;
    match res {
        Ok(0) | Err(ReadError::Io) => Err(None),
        Ok(_) => Ok(()),
        Err(ReadError::TimedOut) => Err(Some(Error::BodyTimeout)),
    }
}

/// Send `100 Continue` when the client asked for it and the body has not all arrived.
pub(super) async fn send_continue(c: &mut Client, head: &RequestHead, left: &BodyLeft) -> bool {
    if !head.expect_continue || left.is_done() {
        return true;
    }
    let timeout = c.snap.cfg.server.send_timeout;
    let (res, _) = send(c, CONTINUE_100, timeout).await;
    res.is_ok()
}

pub(super) async fn proxy(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    target: Target,
    mut wbuf: SpareBuf<'_>,
) -> Next {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    c.buf.drain(..head.head_len);
    let mut left = BodyLeft::of(&head);
    // The body bytes already read go out in the same write as the head.
    let before = c.buf.len();
    let consumed = body::consume(
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
    let attempt = super::spans::route_attempt(c);
    let sent = forward(ctx, c, head, target, wbuf, left, Attempt::ONLY).await;
    if let Some(a) = attempt {
        let ended = super::spans::Ended::from_exchange(&c.ex, Now::read());
        super::spans::end_attempt(ctx, c, &snap, a, target, None, ended);
    }
    match sent {
        Sent::Done(next) => next,
        // Not retryable: a lone attempt's failure was answered (and it has no fallback).
        Sent::Retry | Sent::ContextExceeded => Next::Close,
    }
}

/// Take a slot of a capped upstream, waiting in the tenant's fair queue while it is full (at
/// most `queue_wait_ms_max`). `Some`: when the slot was granted; `None`: refused (the queue is
/// full or the wait was too long), counted, for the caller to answer.
pub(super) async fn wait_for_slot(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    cap: &UpstreamCap,
) -> Option<Now> {
    let snap = c.snap.clone();
    let fair_slot = snap.fair_slot(c.ex.tenant);
    let now = Now::read();
    if cap.try_acquire(fair_slot, now.unix_ms()) {
        return Some(now);
    }
    // Requests without a tenant (auth = "none") share one queue. A request's share is its
    // admission's token estimate (plain requests: 1).
    let (key, weight) = match c.ex.tenant {
        Some(t) => (t.index() + 1, snap.tenant(t).weight),
        None => (0, 1),
    };
    let cost = c.ex.held.tenant().map_or(1, Admitted::estimate);
    let refused = match cap.enqueue(
        (key, fair_slot),
        (weight, cost),
        snap.cfg.server.queue_depth_max,
        now.unix_ms(),
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
    let waited = Now::read();
    ctx.control
        .stats
        .queued(c.ex.tenant_slot, now.until(waited));
    if !refused {
        return Some(waited);
    }
    ctx.control.stats.reject(c.ex.tenant_slot, Reject::Queue);
    None
}

/// What the caller of [`forward`] says of the attempt.
pub(super) struct Attempt<'h, 'c> {
    /// A failure before any byte reaches the client may be retried at another deployment
    /// (under the one retry rule, [`attempts::retryable`]): it is then left to the caller
    /// instead of answered.
    pub retry_ok: bool,
    /// A second attempt to race against this one (a hedged stream); the race marks in it
    /// whether it was launched and won.
    pub hedge: Option<&'h mut Hedge<'c>>,
    /// The call has a context-window fallback to go on to: a client error is read first, and
    /// one that says the request overflowed the model's context window is handed back.
    pub context_fallback: bool,
}

impl Attempt<'_, '_> {
    /// The only attempt: every failure is answered; no hedge.
    pub const ONLY: Attempt<'static, 'static> = Attempt {
        retry_ok: false,
        hedge: None,
        context_fallback: false,
    };
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// The exchange is over (answered, relayed, or the client is gone).
    Done(Next),
    /// It failed before any byte reached the client and may be retried elsewhere
    /// (`retry_ok`): nothing was answered; `c.ex.status` says what the failure was.
    Retry,
    /// The upstream answered (`c.ex.status`) that the request overflowed the model's context
    /// window (`context_fallback`): nothing of it reached the client.
    ContextExceeded,
}

/// Send the upstream head (and whatever body is in `wbuf`) to the upstream, stream the rest of
/// the body, read the response head, relay the response.
#[allow(clippy::too_many_arguments)]
pub(super) async fn forward(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    Target {
        upstream,
        endpoint,
        slot,
    }: Target,
    mut wbuf: SpareBuf<'_>,
    mut left: BodyLeft,
    Attempt {
        retry_ok,
        mut hedge,
        context_fallback,
    }: Attempt<'_, '_>,
) -> Sent {
    let snap = c.snap.clone();
    let mut ucfg: &UpstreamConfig = snap.upstream(upstream);
    let mut slot = slot;
    // A capped upstream: take a slot, or wait for one in this tenant's fair queue.
    let mut now = None;
    if let Some(cap) = snap.upstream_cap(upstream).filter(|cap| cap.is_capped()) {
        let Some(granted) = wait_for_slot(ctx, c, cap).await else {
            let may_keep_alive = left.is_done() && head.keep_alive;
            let e = Error::RateLimited(Limit::Queue);
            return Sent::Done(answer_error(ctx, c, e, may_keep_alive, wbuf).await);
        };
        let fair_slot = snap.fair_slot(c.ex.tenant);
        c.ex.held
            .hold_slot(&*snap, upstream, fair_slot, granted.unix_ms());
        now = Some(granted);
    }
    let mut now = now.unwrap_or_else(Now::read);
    // What becomes of each failure and of the answer head is `exchange::attempt`'s to say:
    // a replay on a fresh connection only while the whole request is still in `wbuf`.
    let mut attempt = Try::new(retry_ok, left.is_done(), head.keep_alive);
    let addr = snap.endpoint(upstream, endpoint).addr;
    c.ex.upstream = Some(addr);
    let (up, relay, keep_alive) = loop {
        let mut up = match ctx.pools.checkout(slot, ucfg.pool_idle_timeout, now) {
            Some(up) => up,
            None => match upstream::connect(
                addr,
                ucfg.connect_timeout,
                snap.tls_target(upstream, endpoint),
                ctx.pools.id_of(slot),
            )
            .await
            {
                Ok(up) => {
                    ctx.upstream_connected();
                    up
                }
                Err(e) => match attempt.failed(Failed::Connect(e)) {
                    Some(f) => return fail(ctx, c, f, wbuf).await,
                    None => {
                        now = Now::read();
                        continue;
                    }
                },
            },
        };
        if write_buf(&mut up.stream, &mut wbuf, ucfg.read_timeout)
            .await
            .is_err()
        {
            // (A write that timed out consumed the request: nothing to replay.)
            let failed = Failed::Write {
                reused: up.reused,
                request_kept: !wbuf.is_empty(),
            };
            match attempt.failed(failed) {
                Some(f) => return fail(ctx, c, f, wbuf).await,
                None => {
                    now = Now::read();
                    continue;
                }
            }
        }
        if let Err(e) = stream_body(c, &mut up, &mut left, &mut wbuf).await {
            return Sent::Done(match e {
                Some(e) => answer_error(ctx, c, e, false, wbuf).await,
                None => Next::Close,
            });
        }
        // The request is sent: while the answer is awaited the client's read buffer goes back
        // to the shard's spares (unless it holds a pipelined request), so a burst of requests
        // waiting for their answers holds none.
        c.give_buf(ctx);
        let extra = (!c.rate_hdrs.is_empty()).then_some(&c.rate_hdrs[..]);
        let mut sent_at = Now::read();
        let got = match hedge.as_deref_mut() {
            // With a context-window fallback left, a client error's body is read too.
            None if context_fallback => {
                read_head_and_error_body(ctx, &mut up, ucfg, &head, extra, &mut wbuf).await
            }
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
                        wbuf = won.wbuf;
                        sent_at = won.sent_at;
                        let Target {
                            upstream: u,
                            endpoint: e,
                            slot: s,
                        } = h.target;
                        ucfg = snap.upstream(u);
                        slot = s;
                        c.ex.upstream = Some(snap.endpoint(u, e).addr);
                        c.ex.upstream_slot = snap.upstream_stat_slot(u);
                        c.ex.plan = std::mem::take(&mut h.plan);
                        // The first attempt's slot goes back; the hedge's is the request's now.
                        let now_ms = Now::read().unix_ms();
                        c.ex.held.release_slot(&*snap, now_ms);
                        if h.cap_held {
                            h.cap_held = false;
                            c.ex.held.hold_slot(&*snap, u, h.fair_slot, now_ms);
                        }
                        Ok((won.relay, won.keep_alive))
                    }
                }
            }
        };
        if let Some(h) = hedge.take() {
            // A hedge that lost gives its slot back now; the caller settles both attempts'
            // quotas (a replay below is not hedged).
            if h.launched && !h.won && h.cap_held {
                h.cap_held = false;
                snap.release_slot(h.target.upstream, h.fair_slot, Now::read().unix_ms());
            }
        }
        let failed = match got {
            Ok((relay, keep_alive)) => {
                let at = Now::read();
                c.ex.ttfb = Some(sent_at.until(at));
                // Body bytes came with the head: the answer's first token is here.
                if !up.buf.is_empty() {
                    super::spans::first_body(c, at);
                }
                c.ex.retry_after = relay
                    .retry_after_s
                    .map(|s| Duration::from_secs(u64::from(s)));
                match attempt.answered(relay.status) {
                    None => break (up, relay, keep_alive),
                    // Another deployment may answer: nothing went to the client yet. This
                    // connection is dropped (its answer is not read).
                    Some(f) => return fail(ctx, c, f, wbuf).await,
                }
            }
            Err(HeadError::ClosedBeforeAnyByte) => {
                Failed::ClosedBeforeAnyByte { reused: up.reused }
            }
            Err(HeadError::Failed(e)) => Failed::Head(e),
        };
        match attempt.failed(failed) {
            Some(f) => return fail(ctx, c, f, wbuf).await,
            None => now = Now::read(),
        }
    };
    // A client error whose body (read with its head when a context-window fallback is left)
    // says the request overflowed the model's context window: handed back, the connection
    // dropped with that answer.
    if context_fallback && crate::llm::context_exceeded(relay.status, &up.buf) {
        c.ex.status = relay.status;
        return Sent::ContextExceeded;
    }
    Sent::Done(if let Some(tr) = c.ex.plan.translation.take() {
        translate::relay_translated(ctx, c, slot, ucfg, up, relay, wbuf, &head, *tr).await
    } else {
        relay_response(ctx, c, slot, ucfg, up, relay, wbuf, keep_alive).await
    })
}

/// [`read_response_head`], and a client error's body after it (one framed by length or
/// chunks): until whole, [`OVERFLOW_BODY_BYTES_MAX`] bytes, or [`OVERFLOW_BODY_WAIT_MS`],
/// so it can be read for a context-window overflow before any byte is relayed. What it read
/// is relayed from `up.buf`; a failed read is the relay's to meet.
async fn read_head_and_error_body(
    ctx: &ShardCtx,
    up: &mut UpConn,
    ucfg: &UpstreamConfig,
    req: &RequestHead,
    extra_headers: Option<&[u8]>,
    wbuf: &mut Vec<u8>,
) -> Result<(Relay, bool), HeadError> {
    let (relay, keep_alive) = read_response_head(ctx, up, ucfg, req, extra_headers, wbuf).await?;
    let framed = relay.framing != ClientFraming::UntilClose;
    if framed && crate::llm::overflow_status(relay.status) {
        let deadline = deadline_in(Duration::from_millis(OVERFLOW_BODY_WAIT_MS));
        while !body_whole(relay.framing, &up.buf) && up.buf.len() < OVERFLOW_BODY_BYTES_MAX {
            match super::upread::read_up(ctx, up, deadline).await {
                Ok(n) if n > 0 => {}
                _ => break,
            }
        }
    }
    Ok((relay, keep_alive))
}

/// The body of an answer framed as `framing` is whole in `buf` (what follows its head): a
/// chunked one as `http::chunked` decodes it, trailers included (a malformed one is as whole
/// as it gets: waiting would not mend it, and the relay refuses it).
fn body_whole(framing: ClientFraming, buf: &[u8]) -> bool {
    use crate::http::chunked::{ChunkedDecoder, Step};
    match framing {
        ClientFraming::None => true,
        ClientFraming::Length(n) => buf.len() as u64 >= n,
        ClientFraming::Chunked | ClientFraming::Dechunk => {
            let (mut decoder, mut at) = (ChunkedDecoder::new(), 0);
            loop {
                match decoder.decode(buf.get(at..).unwrap_or_default()) {
                    Ok((n, Step::Data(_))) => at += n,
                    Ok((_, Step::NeedMore)) => return false,
                    Ok((_, Step::Done)) | Err(_) => return true,
                }
            }
        }
        ClientFraming::UntilClose => false,
    }
}

/// An attempt that is not relayed: handed back for a retry elsewhere (`c.ex.status` says what
/// the failure counts as), or answered.
fn fail<'a>(
    ctx: &'a Rc<ShardCtx>,
    c: &'a mut Client,
    failure: Failure,
    wbuf: SpareBuf<'a>,
) -> impl std::future::Future<Output = Sent> + 'a {
    let answer = match failure {
        Failure::Retry { status } => {
            c.ex.status = status;
            None
        }
        Failure::Answer {
            error,
            may_keep_alive,
        } => Some((error, may_keep_alive)),
    };
    async move {
        match answer {
            None => Sent::Retry,
            Some((e, keep)) => Sent::Done(answer_error(ctx, c, e, keep, wbuf).await),
        }
    }
}

/// Stream the rest of the request body from the client to the upstream.
/// `Err(Some(e))`: answer `e` to the client; `Err(None)`: a socket failed, just close.
pub(super) async fn stream_body(
    c: &mut Client,
    up: &mut UpConn,
    left: &mut BodyLeft,
    wbuf: &mut SpareBuf<'_>,
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
        let consumed = body::consume(
            &mut c.buf,
            left,
            server.body_bytes_max,
            wbuf,
            ChunkOut::Rechunk,
        );
        c.ex.bytes_in += (before - c.buf.len()) as u64;
        consumed.map_err(Some)?;
        if !wbuf.is_empty() {
            write_buf(&mut up.stream, wbuf, server.body_timeout)
                .await
                .map_err(|()| None)?;
        }
    }
    Ok(())
}

pub(super) enum HeadError {
    /// The upstream closed or reset before sending any byte: a pooled connection the upstream
    /// had already closed, so the request can be replayed if it was not streamed.
    ClosedBeforeAnyByte,
    Failed(Error),
}

/// Read the response head into `up.buf`, skipping interim (1xx) answers, and write the head
/// for the client into `wbuf` (replacing the request, which is no longer needed). Returns the
/// body relay state and whether the client connection stays open afterwards.
pub(super) async fn read_response_head(
    ctx: &ShardCtx,
    up: &mut UpConn,
    ucfg: &UpstreamConfig,
    req: &RequestHead,
    extra_headers: Option<&[u8]>,
    wbuf: &mut Vec<u8>,
) -> Result<(Relay, bool), HeadError> {
    let deadline = deadline_in(ucfg.ttfb_timeout);
    let mut interim = 0;
    let mut got_any = false;
    loop {
        if !up.buf.is_empty() {
            let draining = ctx.drain.is_fired();
            match response_head(&up.buf, req, interim, draining, extra_headers, wbuf) {
                Ok(HeadStep::Interim(len)) => {
                    interim += 1;
                    up.buf.drain(..len);
                    continue;
                }
                Ok(HeadStep::Final {
                    relay,
                    keep_alive,
                    head_len,
                }) => {
                    up.buf.drain(..head_len);
                    return Ok((relay, keep_alive));
                }
                Ok(HeadStep::Incomplete) => {}
                Err(e) => return Err(HeadError::Failed(e)),
            }
        }
        match super::upread::read_head(ctx, up, deadline).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_body_is_whole_when_its_framing_says_so() {
        assert!(body_whole(ClientFraming::Length(3), b"abc"));
        assert!(!body_whole(ClientFraming::Length(3), b"ab"));
        assert!(body_whole(ClientFraming::None, b""));
        assert!(!body_whole(ClientFraming::UntilClose, b"abc"));
        for (chunked, whole) in [
            (&b"3\r\nabc\r\n0\r\n\r\n"[..], true),
            (b"3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n", true),
            (b"3\r\nabc\r\n", false),
            (b"3\r\nab", false),
            // Malformed: no more waiting (the relay refuses it).
            (b"zz\r\n", true),
        ] {
            assert_eq!(
                body_whole(ClientFraming::Chunked, chunked),
                whole,
                "{chunked:?}"
            );
        }
    }
}
