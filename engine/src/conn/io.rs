//! Socket helpers: reads and writes under deadlines, and the lingering close.

use std::time::{Duration, Instant};

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};

use super::Client;
use crate::clock::deadline_in;
use crate::ctx::SpareBuf;
use crate::limits::CLIENT_BUF_BYTES_INITIAL;
use crate::stream::Io;

/// After an error answer that closes the connection, how long to keep reading (and dropping)
/// what the client still sends, so closing does not reset the connection before the client
/// has read the answer.
pub(super) const LINGER_MS: u64 = 1_000;

/// At most this many bytes are read and dropped while lingering.
pub(super) const LINGER_BYTES_MAX: usize = 256 * 1024;

/// Half-close, then read and drop what the client still sends for a short while, so the close
/// does not turn into a reset that destroys the answer in the client's receive buffer. Reads
/// into the connection's own buffer (`buf`): closing allocates nothing.
pub(super) async fn linger_close(stream: &mut Io, mut buf: Vec<u8>) {
    let _ = stream.shutdown().await;
    let deadline = deadline_in(Duration::from_millis(LINGER_MS));
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
pub(super) enum ReadError {
    TimedOut,
    Io,
}

/// Append what the socket has to `buf` (into its spare capacity), by `deadline`.
/// On a timeout the buffer stays with the cancelled read and an empty one comes back: the
/// caller closes that socket (monoio cannot promise what a cancelled read did).
pub(super) async fn read_more(
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
pub(super) async fn send<B: IoBuf>(
    c: &mut Client,
    buf: B,
    timeout: Duration,
) -> (Result<(), ()>, Option<B>) {
    let len = buf.bytes_init();
    let (res, buf) = write_timeout(&mut c.stream, buf, timeout).await;
    (count_sent(c, len, res), buf)
}

/// [`send`] what a spare buffer holds, if anything; the buffer is kept, and comes back empty.
pub(super) async fn send_buf(
    c: &mut Client,
    buf: &mut SpareBuf<'_>,
    timeout: Duration,
) -> Result<(), ()> {
    let len = buf.len();
    if len == 0 {
        return Ok(());
    }
    // `write_timeout` itself, not `write_buf`: each level of nested futures costs every
    // connection's future 128 bytes (monoio's timer futures are aligned to 128).
    let (res, back) = write_timeout(&mut c.stream, buf.lend(), timeout).await;
    buf.restore(back);
    buf.clear();
    count_sent(c, len, res)
}

/// Write to a plain client at once, with a system call instead of an operation through the ring,
/// as much of `bytes` as its socket takes now: the bytes written (0 for TLS, whose records go
/// through rustls, or when the socket is full). `Err`: the client is gone (counted as for a
/// failed write). A stream's token is small and the socket rarely full, so its buffer is free
/// again at once rather than held by a write in flight until the loop's next turn (a burst of
/// streams whose tokens come together would hold one buffer each, and wait a turn each).
fn send_now(c: &mut Client, bytes: &[u8]) -> Result<usize, ()> {
    use nix::errno::Errno;
    use nix::sys::socket::{send, MsgFlags};
    use std::os::fd::AsRawFd;
    let Some(stream) = c.stream.plain() else {
        return Ok(0);
    };
    if bytes.is_empty() {
        return Ok(0);
    }
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    match send(stream.as_raw_fd(), bytes, flags) {
        Ok(n) => {
            c.ex.bytes_out += n as u64;
            Ok(n)
        }
        Err(Errno::EAGAIN | Errno::EINTR) => Ok(0),
        Err(_) => {
            c.ex.local_error = true;
            Err(())
        }
    }
}

/// [`send`] a stream's bytes: at once as far as the socket takes them ([`send_now`]), the rest
/// (if any) through the ring. The buffer comes back unless a write timed out.
pub(super) async fn send_stream(
    c: &mut Client,
    buf: Vec<u8>,
    len: usize,
    timeout: Duration,
) -> (Result<(), ()>, Option<Vec<u8>>) {
    let now = match buf.get(..len) {
        Some(bytes) => send_now(c, bytes),
        None => Ok(0),
    };
    match now {
        Err(()) => (Err(()), Some(buf)),
        Ok(n) if n >= len => (Ok(()), Some(buf)),
        Ok(n) => {
            let (res, back) = send(c, buf.slice(n..len), timeout).await;
            (res, back.map(|s| s.into_inner()))
        }
    }
}

/// [`send_buf`] for a stream's turn: through [`send_stream`].
pub(super) async fn send_buf_stream(
    c: &mut Client,
    buf: &mut SpareBuf<'_>,
    timeout: Duration,
) -> Result<(), ()> {
    let len = buf.len();
    if len == 0 {
        return Ok(());
    }
    let (res, back) = send_stream(c, buf.lend(), len, timeout).await;
    buf.restore(back);
    buf.clear();
    res
}

/// Count what a write to the client sent, or that it failed.
fn count_sent(c: &mut Client, len: usize, res: Result<(), ()>) -> Result<(), ()> {
    if res.is_ok() {
        c.ex.bytes_out += len as u64;
    } else {
        // The client left (or stopped reading): a tenant's reservation is given back.
        c.ex.local_error = true;
    }
    res
}

/// [`write_timeout`] from a spare buffer, which keeps it.
pub(super) async fn write_buf(
    stream: &mut Io,
    buf: &mut SpareBuf<'_>,
    timeout: Duration,
) -> Result<(), ()> {
    let (res, back) = write_timeout(stream, buf.lend(), timeout).await;
    buf.restore(back);
    res
}

/// Write all of `buf` within `timeout`. The buffer comes back unless the write timed out.
pub(super) async fn write_timeout<B: IoBuf>(
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
