//! Reading an upstream's answer with buffers lent only while they hold bytes.
//!
//! A head or a whole body is read into a buffer from the shard's spares
//! ([`ShardCtx::read_bufs`]), held until the exchange ends. A stream (SSE, AWS's event stream)
//! can wait minutes for its next token: between reads it holds no buffer. On a plain upstream
//! the wait is for readiness (a poll, no buffer), then a buffer is taken for the read itself
//! and given back once its bytes were relayed. A wait longer than [`CLIENT_WATCH_AFTER_MS`]
//! watches the client's socket too, so a client that hung up ends the stream (and frees the
//! upstream) during a long silence, not only at the next token.
//! A TLS upstream reads as a head does (its records may hold bytes the socket no longer shows).

use std::time::{Duration, Instant};

use super::io::{read_more, ReadError};
use super::Client;
use crate::ctx::ShardCtx;
use crate::limits::RELAY_BUF_BYTES;
use crate::upstream::UpConn;

/// A stream's answer is about to be relayed: what the connection held for its request goes back
/// to the shard's spares (the client's read buffer when it holds no pipelined bytes, the LLM
/// request's body buffers), so a stream holds only its state while it waits.
pub(super) fn stream_begins(ctx: &ShardCtx, c: &mut Client) {
    c.give_buf(ctx);
    super::llm_give_request(ctx, c);
}

/// Why a stream's wait for its next bytes ended without them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StreamStop {
    /// The upstream failed (closed, reset, or stalled past its read timeout).
    Upstream(ReadError),
    /// The client hung up while it waited.
    ClientGone,
}

/// Give the connection a buffer from the shard's spares if it holds none.
fn lend_buf(ctx: &ShardCtx, up: &mut UpConn) {
    if up.buf.capacity() == 0 {
        up.buf = ctx.read_bufs.take();
    }
}

/// Whether a plain upstream became readable (bytes, its end or an error) by `until`.
async fn upstream_ready(upstream: &monoio::net::TcpStream, until: Instant) -> bool {
    monoio::time::timeout_at(until.into(), upstream.readable(false))
        .await
        .is_ok()
}

/// Read more of an answer into `up.buf` (appending), by `deadline`, taking a buffer from the
/// shard's spares if the connection holds none.
pub(super) async fn read_up(
    ctx: &ShardCtx,
    up: &mut UpConn,
    deadline: Instant,
) -> Result<usize, ReadError> {
    lend_buf(ctx, up);
    let buf = std::mem::take(&mut up.buf);
    let (res, buf) = read_more(&mut up.stream, buf, deadline).await;
    up.buf = buf;
    res
}

/// Read (more of) a response head into `up.buf`. On a plain upstream with nothing held yet, the
/// wait for the answer holds no buffer (a readiness poll first, as for a stream's tokens), so a
/// burst of requests waiting for their answers (an LLM's time to first token) holds none.
pub(super) async fn read_head(
    ctx: &ShardCtx,
    up: &mut UpConn,
    deadline: Instant,
) -> Result<usize, ReadError> {
    if up.buf.is_empty() {
        if let Some(upstream) = up.stream.plain() {
            ctx.read_bufs.give(std::mem::take(&mut up.buf));
            if !upstream_ready(upstream, deadline).await {
                return Err(ReadError::TimedOut);
            }
            if let Some(read) = recv_ready(ctx, up) {
                return read;
            }
        }
    }
    read_up(ctx, up, deadline).await
}

/// The bytes of a plain upstream connection the runtime just reported readable, read at once
/// into the shard's scratch and copied into `up.buf` (a buffer from the spares): a read through
/// the ring would complete only on the loop's next turn, one more turn per token or head, which
/// a burst of streams waits for. `None`: nothing there after all (read through the ring then).
fn recv_ready(ctx: &ShardCtx, up: &mut UpConn) -> Option<Result<usize, ReadError>> {
    lend_buf(ctx, up);
    let mut scratch = ctx.recv_scratch.borrow_mut();
    let room = up.buf.capacity().saturating_sub(up.buf.len());
    let into = scratch.get_mut(..room.min(RELAY_BUF_BYTES))?;
    if into.is_empty() {
        return None;
    }
    match up.try_recv(into)? {
        Ok(n) => {
            up.buf.extend_from_slice(into.get(..n)?);
            Some(Ok(n))
        }
        Err(_) => Some(Err(ReadError::Io)),
    }
}

/// Read a stream's next bytes into `up.buf`: `Ok(0)` at the upstream's end of stream. With
/// nothing held from the last read, the buffer goes back to the spares while waiting (see the
/// module's doc); during a long wait the client is watched too.
pub(super) async fn read_stream(
    ctx: &ShardCtx,
    c: &mut Client,
    up: &mut UpConn,
    deadline: Instant,
) -> Result<usize, StreamStop> {
    if up.buf.is_empty() {
        ctx.read_bufs.give(std::mem::take(&mut up.buf));
        wait_readable(ctx, c, up, deadline).await?;
        if up.stream.plain().is_some() {
            if let Some(read) = recv_ready(ctx, up) {
                return read.map_err(StreamStop::Upstream);
            }
        }
    }
    read_up(ctx, up, deadline)
        .await
        .map_err(StreamStop::Upstream)
}

/// What a wait for readiness saw first.
enum Woke {
    Upstream,
    Client,
    TimedOut,
}

/// How long a stream waits for its upstream alone before it also watches its client for a
/// hang-up, ms. Tokens usually come sooner (tens of ms apart), and a client that left is then
/// seen when the next one is written to it; watching costs a poll and its cancellation per
/// token. A long silence (a reasoning model's time to first token, a tool call being composed)
/// is watched, so a client that left then frees the upstream within this long.
pub(super) const CLIENT_WATCH_AFTER_MS: u64 = 1_000;

/// Wait until a plain upstream has bytes (or an end, or an error: the read that follows tells
/// which), after [`CLIENT_WATCH_AFTER_MS`] watching a plain client for a hang-up too. Bytes a
/// client sends meanwhile (a pipelined request) are read into its buffer, kept for after the
/// answer, and end the watch. A TLS upstream returns at once.
async fn wait_readable(
    ctx: &ShardCtx,
    c: &mut Client,
    up: &UpConn,
    deadline: Instant,
) -> Result<(), StreamStop> {
    let Some(upstream) = up.stream.plain() else {
        return Ok(());
    };
    let alone_until = deadline.min(Instant::now() + Duration::from_millis(CLIENT_WATCH_AFTER_MS));
    if upstream_ready(upstream, alone_until).await {
        return Ok(());
    }
    loop {
        let ready = match c.stream.plain().filter(|_| c.ex.watch_client) {
            Some(client) => monoio::select! {
                _ = upstream.readable(false) => Woke::Upstream,
                _ = client.readable(false) => Woke::Client,
                _ = monoio::time::sleep_until(deadline.into()) => Woke::TimedOut,
            },
            None if upstream_ready(upstream, deadline).await => Woke::Upstream,
            None => Woke::TimedOut,
        };
        match ready {
            Woke::Upstream => return Ok(()),
            Woke::TimedOut => return Err(StreamStop::Upstream(ReadError::TimedOut)),
            Woke::Client => {
                // Readable: the read completes at once, with bytes or the client's end.
                c.ex.watch_client = false;
                c.take_buf(ctx);
                if c.buf.len() == c.buf.capacity() {
                    continue; // pipelined bytes fill the buffer: watch no more
                }
                let buf = std::mem::take(&mut c.buf);
                let (res, buf) = read_more(&mut c.stream, buf, deadline).await;
                c.buf = buf;
                if !matches!(res, Ok(n) if n > 0) {
                    c.ex.local_error = true;
                    return Err(StreamStop::ClientGone);
                }
            }
        }
    }
}
