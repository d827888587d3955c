//! Phase 4, relaying the answer: verbatim (written straight from the upstream buffer), de-chunked
//! for an HTTP/1.0 client, or through the SSE filter (the usage chunk shardgate asked for
//! dropped, the stream cut at the tenant's budget); then the upstream connection pooled or
//! dropped. Where the body ends is `exchange::relay::Relay`'s call.

use std::rc::Rc;
use std::time::Duration;

use monoio::buf::IoBuf;

use super::io::{send, send_buf, send_buf_stream, send_stream};
use super::local::answer_error;
use super::upread::{read_stream, read_up, stream_begins, StreamStop};
use super::{Client, Next};
use crate::clock::{deadline_in, Now};
use crate::config::UpstreamConfig;
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::exchange::relay::{push_framed, IllFramed, Relay};
use crate::http::response::ClientFraming;
use crate::llm::{self, SseFilter};
use crate::snapshot::PoolSlot;
use crate::upstream::UpConn;

/// Send the response head and relay the body as it arrives, each read written out at once
/// (SSE events are never held back). The upstream connection goes back to the pool only after
/// a complete, well-framed exchange.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_response(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    slot: PoolSlot,
    ucfg: &UpstreamConfig,
    mut up: UpConn,
    mut relay: Relay,
    mut wbuf: SpareBuf<'_>,
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
    if c.ex.plan.filter_sse
        && relay.sse
        && matches!(
            relay.framing,
            ClientFraming::Chunked | ClientFraming::Dechunk | ClientFraming::UntilClose
        )
    {
        return relay_filtered(ctx, c, slot, ucfg, up, relay, wbuf, keep_alive).await;
    }
    let scanner = scan.then_some(&mut c.llm.scanner);
    if let Err(IllFramed) = relay.take_from(&mut up.buf, &mut wbuf, scanner) {
        let e = Error::UpstreamBadResponse("ill-framed upstream response body");
        return answer_error(ctx, c, e, false, wbuf).await;
    }
    let stream = is_stream(&relay);
    let sent = if stream {
        send_buf_stream(c, &mut wbuf, send_timeout).await
    } else {
        send_buf(c, &mut wbuf, send_timeout).await
    };
    if sent.is_err() {
        return Next::Close; // the client went away: the upstream connection is dropped
    }
    let dechunk = relay.framing == ClientFraming::Dechunk;
    // Only de-chunking copies body bytes; for a verbatim relay (an SSE stream can last minutes)
    // the write buffer goes back to the shard's spares now instead of being held.
    let mut wbuf = dechunk.then_some(wbuf);
    if stream {
        stream_begins(ctx, c);
    }
    while !relay.done {
        // At the end of a body framed by the close, `relay.done` is set and nothing is left to
        // feed: the loop ends.
        if let Err(stop) = read_body_more(ctx, c, &mut up, &mut relay, ucfg.read_timeout).await {
            return stopped(c, stop);
        }
        let mut scratch = Vec::new();
        let out = wbuf.as_deref_mut().unwrap_or(&mut scratch);
        out.clear();
        let Ok(n) = relay.feed(&up.buf, out, dechunk, scan.then_some(&mut c.llm.scanner)) else {
            c.ex.upstream_broke = true;
            return Next::Close;
        };
        if n == 0 {
            continue; // only part of a chunk line so far
        }
        let res = if let Some(wbuf) = wbuf.as_mut() {
            send_buf(c, wbuf, send_timeout).await
        } else if stream {
            // Verbatim: straight from the upstream buffer, at once where the socket takes it.
            let buf = std::mem::take(&mut up.buf);
            let (res, buf) = send_stream(c, buf, n, send_timeout).await;
            up.buf = buf.unwrap_or_default();
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
    end_relay(ctx, slot, ucfg, up, &relay, keep_alive)
}

/// A relayed answer is complete: pool the upstream connection if it can be reused, and say
/// what happens to the client connection.
pub(super) fn end_relay(
    ctx: &ShardCtx,
    slot: PoolSlot,
    ucfg: &UpstreamConfig,
    up: UpConn,
    relay: &Relay,
    keep_alive: bool,
) -> Next {
    // Bytes past the end of the body mean the upstream is out of step: never reuse it.
    if relay.upstream_reusable && relay.framing != ClientFraming::UntilClose && up.buf.is_empty() {
        ctx.pools
            .checkin(slot, up, ucfg.pool_idle_max, Now::read(), &ctx.read_bufs);
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
pub(super) async fn relay_filtered(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    slot: PoolSlot,
    ucfg: &UpstreamConfig,
    mut up: UpConn,
    mut relay: Relay,
    wbuf: SpareBuf<'_>,
    keep_alive: bool,
) -> Next {
    let send_timeout = c.snap.cfg.server.send_timeout;
    let client_chunked = relay.framing == ClientFraming::Chunked;
    if client_chunked {
        // Decode the upstream's chunks into data; the client gets chunks of our own.
        relay.framing = ClientFraming::Dechunk;
    }
    // The filter's output is what the client gets: the usage chunk shardgate asked for
    // dropped (`strip_usage`), `reasoning` renamed `reasoning_content`, everything else as it
    // came.
    if c.ex.plan.strip_usage {
        c.llm.filter.reset();
    } else {
        c.llm.filter.reset_keeping_usage();
    }
    if c.ex.scan {
        c.llm.scanner.reset(llm::BodyKind::Sse);
    }
    stream_begins(ctx, c);
    // Holds the head for the first turn; each later turn borrows its buffers from the shard's
    // spares and gives them back before the next wait.
    let mut first = Some(wbuf);
    let mut cut = false;
    loop {
        let mut wbuf = first.take().unwrap_or_else(|| ctx.take_buf());
        let mut data = ctx.take_buf();
        let mut filtered = ctx.take_buf();
        let scanner = c.ex.scan.then_some(&mut c.llm.scanner);
        if let Err(IllFramed) = relay.take_from(&mut up.buf, &mut data, scanner) {
            c.ex.upstream_broke = true;
            return Next::Close;
        }
        // Event by event, so a stream is cut at the event that passes the budget, however
        // many events one read brought.
        let mut at = 0;
        while at < data.len() && !cut {
            let end = crate::http::sse::event_end(&data[at..]).map_or(data.len(), |n| at + n);
            let piece = &data[at..end];
            c.llm.filter.feed(piece, &mut filtered);
            at = end;
            if over_budget(c) {
                // The error event of the client's own API.
                let msg = "the tenant's budget is exhausted; the answer was cut";
                if c.ex.plan.responses_events {
                    crate::provider::responses::error_event(msg, &mut filtered);
                } else if c.ex.error_shape == crate::error::Shape::Anthropic {
                    super::translate::anthropic_error_event(msg, &mut filtered);
                } else {
                    SseFilter::error_event(msg, &mut filtered);
                }
                cut = true;
            }
        }
        if relay.done && !cut {
            c.llm.filter.finish(&mut filtered);
        }
        push_framed(&mut wbuf, &filtered, client_chunked);
        let end = relay.done || cut;
        if end && client_chunked {
            wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        drop((data, filtered));
        c.ex.counted = Some(
            c.ex.prompt_estimate
                .saturating_add(c.llm.filter.content_events()),
        );
        if send_buf_stream(c, &mut wbuf, send_timeout).await.is_err() {
            return Next::Close;
        }
        drop(wbuf);
        if end {
            break;
        }
        if let Err(stop) = read_body_more(ctx, c, &mut up, &mut relay, ucfg.read_timeout).await {
            return stopped(c, stop);
        }
    }
    // A cut stream leaves the upstream mid-answer: that connection is dropped.
    relay.upstream_reusable &= !cut;
    let keep_alive = keep_alive && (client_chunked || relay.framing != ClientFraming::UntilClose);
    end_relay(ctx, slot, ucfg, up, &relay, keep_alive)
}

/// A relay that stopped before the body's end: the client connection closes without a clean
/// end (the client sees a truncated message) and the upstream connection is dropped. A failed
/// upstream counts against its health; a client that hung up does not.
pub(super) fn stopped(c: &mut Client, stop: StreamStop) -> Next {
    if let StreamStop::Upstream(_) = stop {
        c.ex.upstream_broke = true;
    }
    Next::Close
}

/// Whether an answer is a stream (SSE, AWS's event stream): read with buffers lent per read,
/// the client watched for a hang-up meanwhile (`upread`).
pub(super) fn is_stream(relay: &Relay) -> bool {
    relay.sse || relay.aws_event_stream
}

/// Read more of the upstream's body into `up.buf`: `Ok` with more bytes, or at the end of a
/// body framed by the close (`relay.done` set); `Err` when the upstream stopped mid-body (or,
/// for a stream, the client hung up while it waited).
pub(super) async fn read_body_more(
    ctx: &ShardCtx,
    c: &mut Client,
    up: &mut UpConn,
    relay: &mut Relay,
    timeout: Duration,
) -> Result<(), StreamStop> {
    let deadline = deadline_in(timeout);
    let res = if is_stream(relay) {
        read_stream(ctx, c, up, deadline).await
    } else {
        read_up(ctx, up, deadline)
            .await
            .map_err(StreamStop::Upstream)
    };
    match res {
        Ok(0) if relay.framing == ClientFraming::UntilClose => {
            relay.done = true;
            Ok(())
        }
        Ok(0) => Err(StreamStop::Upstream(super::io::ReadError::Io)),
        Err(e) => Err(e),
        Ok(_) => {
            if c.ex.first_body_unix_ns == 0 && c.ex.timed {
                super::spans::first_body(c, Now::read());
            }
            Ok(())
        }
    }
}

/// Whether the stream under way has produced more than the tenant's budget allows: the
/// prompt's estimate plus one token per content event, against what the request reserved
/// plus what is left in the window.
pub(super) fn over_budget(c: &Client) -> bool {
    let (Some(adm), Some(t)) = (c.ex.held.tenant(), c.ex.tenant) else {
        return false;
    };
    let Some(limits) = c.snap.tenant_limits(t) else {
        return false;
    };
    let events = c.llm.filter.content_events();
    let produced = c.ex.prompt_estimate.saturating_add(events);
    let now_ns = Now::read().unix_ns;
    if limits
        .budget_allowance(adm, now_ns)
        .is_some_and(|allowed| produced > allowed)
    {
        return true;
    }
    // The USD budgets, the tenant's and the key's own: the prompt at the input price, one
    // output token per content event.
    let Some(p) = c.ex.price else {
        return false;
    };
    let key_allowance = adm.key_part().and_then(|(k, part)| {
        c.snap
            .key_limits(k)
            .and_then(|l| l.key_usd_allowance(&part, now_ns))
    });
    [limits.budget_usd_allowance(adm, now_ns), key_allowance]
        .into_iter()
        .flatten()
        .any(|allowed_uusd| {
            let prompt_uusd = p.estimate_uusd(c.ex.prompt_estimate, 0);
            events > p.output_tokens_for_uusd(allowed_uusd.saturating_sub(prompt_uusd))
        })
}
