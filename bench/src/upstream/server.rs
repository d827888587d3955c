//! The connection loop: read a whole request, let [`answer`](super::answer) plan the response,
//! write its frames (sleeping where the plan says), then keep the connection, close it, or
//! reset it. This is the only part of the mock that touches sockets or the clock.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::answer::{self, End, Knobs, Plan, Rolls, Stamp};
use super::http::{self, Parse, HEADERS_MAX, REQUEST_BYTES_MAX};
use super::rng::Rng;

/// Initial read buffer per connection; it grows (doubling) up to [`REQUEST_BYTES_MAX`].
const READ_BUF_BYTES_INITIAL: usize = 8 * 1024;
/// Spare room a read asks for at least, bytes.
const READ_SPARE_BYTES_MIN: usize = 2 * 1024;
/// After a request, buffers grown past this size are shrunk back, so a connection that once
/// carried a large body does not keep its memory.
const BUF_BYTES_KEPT_MAX: usize = 64 * 1024;
/// A kept-alive connection with no request for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 60_000;
/// A request must arrive whole within this long of its first byte.
pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Each write must finish within this long (a client that stops reading is dropped).
pub const WRITE_TIMEOUT_MS: u64 = 30_000;
/// Open connections per shard; more are closed as soon as they are accepted (10,000 streams
/// through a proxy, plus the idle connections its pool may keep from a warm-up).
pub const CONNECTIONS_MAX: usize = 32_768;
/// After an answer that closes the connection, read and drop what the client still sends for
/// at most this long and this many bytes, so the close does not turn into a reset that
/// destroys the answer in the client's receive buffer.
const LINGER_MS: u64 = 500;
const LINGER_BYTES_MAX: usize = 256 * 1024;

const CONTINUE_100: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

const _: () = assert!(READ_SPARE_BYTES_MIN < READ_BUF_BYTES_INITIAL);
const _: () = assert!(READ_BUF_BYTES_INITIAL < BUF_BYTES_KEPT_MAX);
const _: () = assert!(BUF_BYTES_KEPT_MAX < REQUEST_BYTES_MAX);

/// Everything one shard owns; lives in an `Rc` on the shard's thread only.
#[derive(Debug)]
pub struct Shard {
    pub id: usize,
    pub knobs: Knobs,
    rng: RefCell<Rng>,
    requests: Cell<u64>,
    connections: Cell<usize>,
}

impl Shard {
    pub fn new(id: usize, knobs: Knobs, seed: u64) -> Self {
        Self {
            id,
            knobs,
            rng: RefCell::new(Rng::new(seed, id)),
            requests: Cell::new(0),
            connections: Cell::new(0),
        }
    }

    /// Plan the answer to `req`: the random draws and the stamp are taken here.
    fn plan(&self, req: &http::Request<'_>, plan: &mut Plan) {
        let rolls = {
            let mut rng = self.rng.borrow_mut();
            Rolls {
                fail: rng.next_f64(),
                reset: rng.next_f64(),
            }
        };
        let seq = self.requests.get() + 1;
        self.requests.set(seq);
        let now_unix_s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let stamp = Stamp {
            now_unix_s,
            shard: self.id,
            seq,
        };
        answer::answer(req, &self.knobs, rolls, stamp, plan);
    }
}

/// Accept connections forever, one task each.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _peer)) => {
                if shard.connections.get() >= CONNECTIONS_MAX {
                    drop(stream);
                    continue;
                }
                shard.connections.set(shard.connections.get() + 1);
                let shard = shard.clone();
                monoio::spawn(async move {
                    serve(&shard, stream).await;
                    shard.connections.set(shard.connections.get() - 1);
                });
            }
            Err(e) => {
                // EMFILE and friends: back off briefly rather than spin.
                eprintln!(
                    "shardgate-bench upstream: shard {}: accept failed: {e}",
                    shard.id
                );
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// What the parse of the buffered bytes decided (owned, so the buffer can be touched again).
enum Step {
    /// A request of this many bytes was planned.
    Answer(usize),
    /// A refusal was planned: the connection closes after it.
    Refuse,
    /// Read more; `true`: send `100 Continue` first.
    More(bool),
}

/// Serve one connection to the end.
async fn serve(shard: &Shard, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(READ_BUF_BYTES_INITIAL);
    let mut chunked_body = Vec::new();
    let mut plan = Plan::default();
    loop {
        // Phase 1: a whole request (or a refusal).
        let mut sent_continue = false;
        let mut deadline: Option<Instant> = None;
        loop {
            let step = if buf.is_empty() {
                Step::More(false)
            } else {
                let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
                match http::parse(&buf, &mut headers, &mut chunked_body) {
                    Ok(Parse::Complete { req, len }) => {
                        shard.plan(&req, &mut plan);
                        Step::Answer(len)
                    }
                    Ok(Parse::Partial { expect_continue }) => {
                        Step::More(expect_continue && !sent_continue)
                    }
                    Err(refusal) => {
                        answer::refusal(refusal, &mut plan);
                        Step::Refuse
                    }
                }
            };
            match step {
                Step::Answer(len) => {
                    buf.drain(..len);
                    if buf.capacity() > BUF_BYTES_KEPT_MAX && buf.len() < READ_BUF_BYTES_INITIAL {
                        buf.shrink_to(READ_BUF_BYTES_INITIAL);
                    }
                    if chunked_body.capacity() > BUF_BYTES_KEPT_MAX {
                        chunked_body = Vec::new();
                    }
                    break;
                }
                Step::Refuse => {
                    buf.clear();
                    break;
                }
                Step::More(send_continue) => {
                    if send_continue {
                        sent_continue = true;
                        if write(&mut stream, CONTINUE_100).await.is_err() {
                            return;
                        }
                    }
                }
            }
            if buf.len() >= REQUEST_BYTES_MAX {
                // Only reachable if `http::parse` let a request outgrow its bounds.
                answer::refusal(
                    http::Refusal {
                        status: 413,
                        message: "request too large",
                    },
                    &mut plan,
                );
                buf.clear();
                break;
            }
            let until = if buf.is_empty() {
                Instant::now() + Duration::from_millis(IDLE_TIMEOUT_MS)
            } else {
                *deadline.get_or_insert_with(|| {
                    Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS)
                })
            };
            let (res, back) = read_more(&mut stream, buf, until).await;
            buf = back;
            match res {
                Ok(n) if n > 0 => {
                    deadline.get_or_insert_with(|| {
                        Instant::now() + Duration::from_millis(REQUEST_TIMEOUT_MS)
                    });
                }
                // EOF, error or timeout: nothing sensible to answer.
                _ => return,
            }
        }
        // Phase 2: the planned frames, each after its delay.
        if write_plan(&mut stream, &mut plan).await.is_err() {
            return;
        }
        match plan.end {
            End::KeepAlive => {}
            End::Close => return linger_close(&mut stream).await,
            End::Reset => return reset(stream),
        }
    }
}

/// Write each frame of `plan` after its delay. The plan's buffer goes back into it unless a
/// write timed out (then the connection is dropped anyway).
async fn write_plan(stream: &mut TcpStream, plan: &mut Plan) -> Result<(), ()> {
    let mut bytes = std::mem::take(&mut plan.bytes);
    let mut start = 0;
    for i in 0..plan.frames.len() {
        let frame = plan.frames[i];
        if frame.delay_ms > 0 {
            monoio::time::sleep(Duration::from_millis(frame.delay_ms)).await;
        }
        if frame.end == start {
            continue;
        }
        let write = stream.write_all(monoio::buf::IoBuf::slice(bytes, start..frame.end));
        match monoio::time::timeout(Duration::from_millis(WRITE_TIMEOUT_MS), write).await {
            Ok((Ok(_), slice)) => bytes = slice.into_inner(),
            Ok((Err(_), _)) | Err(_) => return Err(()),
        }
        start = frame.end;
    }
    plan.bytes = bytes;
    Ok(())
}

/// Write all of `bytes` within the write timeout.
async fn write(stream: &mut TcpStream, bytes: &'static [u8]) -> Result<(), ()> {
    match monoio::time::timeout(
        Duration::from_millis(WRITE_TIMEOUT_MS),
        stream.write_all(bytes),
    )
    .await
    {
        Ok((Ok(_), _)) => Ok(()),
        _ => Err(()),
    }
}

/// Append what the socket has to `buf` (growing it, up to [`REQUEST_BYTES_MAX`]) by `deadline`.
/// After a timeout the buffer stays with the cancelled read and the caller closes the socket.
async fn read_more(
    stream: &mut TcpStream,
    mut buf: Vec<u8>,
    deadline: Instant,
) -> (Result<usize, ()>, Vec<u8>) {
    let len = buf.len();
    if buf.capacity() - len < READ_SPARE_BYTES_MIN {
        let want = (buf.capacity() * 2).clamp(READ_BUF_BYTES_INITIAL, REQUEST_BYTES_MAX);
        buf.reserve_exact(want.saturating_sub(len));
    }
    if buf.capacity() == len {
        return (Err(()), buf);
    }
    let read = stream.read(buf.slice_mut(len..));
    match monoio::time::timeout_at(deadline.into(), read).await {
        Ok((Ok(n), slice)) => (Ok(n), slice.into_inner()),
        Ok((Err(_), slice)) => (Err(()), slice.into_inner()),
        Err(_elapsed) => (Err(()), Vec::new()),
    }
}

/// Half-close, then drop what the client still sends for a short while.
async fn linger_close(stream: &mut TcpStream) {
    let _ = stream.shutdown().await;
    let deadline = Instant::now() + Duration::from_millis(LINGER_MS);
    let mut buf = Vec::with_capacity(READ_BUF_BYTES_INITIAL);
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

/// Abort the connection: SO_LINGER with a zero timeout makes the close send RST and drop
/// whatever is still unsent. monoio's `TcpStream` implements `AsRawFd` but not `AsFd`, so
/// socket2's `SockRef` cannot borrow it without `unsafe`; nix 0.26's `setsockopt` takes the raw
/// fd safely. Should the option be refused, the close is a plain FIN.
fn reset(stream: TcpStream) {
    use nix::sys::socket::{setsockopt, sockopt::Linger};
    let linger = nix::libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    if let Err(e) = setsockopt(stream.as_raw_fd(), Linger, &linger) {
        eprintln!("shardgate-bench upstream: SO_LINGER 0 refused ({e}); closing with FIN");
    }
    drop(stream);
}
