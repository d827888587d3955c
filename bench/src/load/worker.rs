//! One load thread: pinned to its core, its own monoio runtime, its share of the connections,
//! its own [`Stats`]. Nothing is shared with other threads while the run goes except one
//! progress counter, stored once a second.
//!
//! Per connection, per request: write the pre-serialised request (the connection's own copy,
//! lent to the kernel and handed back), read into the connection's read buffer, feed the bytes
//! to [`Response`] until the response ends. One timer per request bounds the whole exchange
//! (the `--timeout-ms` deadline, or the end of the run if that comes first). Nothing is
//! allocated per request once the connection is open.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;

use super::response::{Feed, FrameError, Response, Sse};
use super::schedule::{self, Next, Schedule};
use super::stats::{micros, ErrorKind, Stats};

/// Read buffer per connection (a response head must fit; bodies stream through it).
const READ_BUF_BYTES: usize = 64 * 1024;
/// Read buffer per connection with `--stream`: SSE events are small and a generator holding
/// 10,000 streams should not reserve 64 KiB for each.
const READ_BUF_BYTES_STREAM: usize = 16 * 1024;
/// Event gaps a streamed response's buffer starts with (it grows, up to
/// `GAPS_PER_STREAM_MAX`).
const GAPS_PER_STREAM_INITIAL: usize = 64;
/// After a failed connect, wait this long before the next try (so a server that is down is
/// not hammered in a tight loop).
const CONNECT_RETRY_MS: u64 = 10;
/// Event gaps remembered for one streamed response before they are recorded, at most
/// (further gaps of that response are dropped).
const GAPS_PER_STREAM_MAX: usize = 64 * 1024;
/// Progress is reported to the main thread this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// Which monoio driver to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverChoice {
    /// io_uring when the kernel allows it, else epoll.
    Auto,
    /// io_uring only (fail if unavailable).
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

pub use shardgate_engine::runtime::DriverKind;

impl From<DriverChoice> for shardgate_engine::config::DriverChoice {
    fn from(c: DriverChoice) -> Self {
        match c {
            DriverChoice::Auto => Self::Auto,
            DriverChoice::IoUring => Self::IoUring,
            DriverChoice::Epoll => Self::Epoll,
        }
    }
}

/// The run, as every thread sees it (read-only).
#[derive(Debug)]
pub struct Plan {
    pub addr: SocketAddr,
    /// The serialised request.
    pub request: Vec<u8>,
    pub head_request: bool,
    /// Connections over all threads.
    pub connections: usize,
    pub threads: usize,
    /// Total requests per second (open loop), or `None` (closed loop).
    pub rate: Option<f64>,
    pub stream: bool,
    pub timeout: Duration,
    pub warmup: Duration,
    pub duration: Duration,
    pub driver: DriverChoice,
    /// `--ramp-ms`: the connections' first requests spread evenly over this (zero: a burst).
    pub ramp: Duration,
    /// `--drain`: at the end, let the responses in flight complete (within `timeout`) instead
    /// of dropping them; they are not recorded.
    pub drain: bool,
}

impl Plan {
    /// Read buffer size of each connection.
    pub fn read_buf_bytes(&self) -> usize {
        if self.stream {
            READ_BUF_BYTES_STREAM
        } else {
            READ_BUF_BYTES
        }
    }

    /// The connections of thread `t`: (index of the first among all, how many).
    pub fn conns_of(&self, t: usize) -> (usize, usize) {
        let base = self.connections / self.threads;
        let extra = self.connections % self.threads;
        let first = t * base + t.min(extra);
        (first, base + usize::from(t < extra))
    }
}

/// What a thread tells the main thread.
#[derive(Debug)]
pub enum Msg {
    /// The runtime is built (or could not be).
    Ready {
        thread: usize,
        result: Result<DriverKind, String>,
    },
    /// The thread's run is over.
    Finished { stats: Box<Stats> },
}

/// The body of load thread `t`: pin, build the runtime, report, wait for the start time (from
/// `start`; a closed channel means the run was called off), run, send the stats.
pub fn thread_main(
    t: usize,
    plan: Arc<Plan>,
    core: Option<core_affinity::CoreId>,
    progress: Arc<AtomicU64>,
    to_main: mpsc::Sender<Msg>,
    start: mpsc::Receiver<Instant>,
) {
    if let Some(core) = core {
        core_affinity::set_for_current(core);
    }
    let ready = |result| {
        let _ = to_main.send(Msg::Ready { thread: t, result });
    };
    let job = |t0: Instant| run_thread(t, plan.clone(), t0, progress.clone());
    let finished = |stats: Stats| {
        let _ = to_main.send(Msg::Finished {
            stats: Box::new(stats),
        });
    };
    // The engine's driver choice: tuned io_uring, io_uring, then epoll.
    let make = |kind| {
        ready(Ok(kind));
        let t0 = start.recv();
        async move {
            match t0 {
                Ok(t0) => Some(job(t0).await),
                Err(_) => None, // the run was called off
            }
        }
    };
    match shardgate_engine::runtime::block_on_best(plan.driver.into(), make) {
        Ok(Some(stats)) => finished(stats),
        Ok(None) => {}
        Err(e) => ready(Err(e)),
    }
}

/// What a thread's connections share.
#[derive(Debug)]
struct Ctx {
    plan: Arc<Plan>,
    /// When the run (warm-up included) started: the open-loop schedules count from here.
    t0: Instant,
    /// Requests intended before this are warm-up: sent, not recorded.
    measure_from: Instant,
    /// The run ends here: nothing is sent after, and a response not complete by then is
    /// dropped uncounted.
    end: Instant,
    stats: RefCell<Stats>,
    /// Responses completed (warm-up included), for the progress line.
    completed: Cell<u64>,
}

async fn run_thread(t: usize, plan: Arc<Plan>, t0: Instant, progress: Arc<AtomicU64>) -> Stats {
    let (first, n) = plan.conns_of(t);
    let ctx = Rc::new(Ctx {
        t0,
        measure_from: t0 + plan.warmup,
        end: t0 + plan.warmup + plan.duration,
        stats: RefCell::new(Stats::new(plan.stream)),
        completed: Cell::new(0),
        plan,
    });
    let reporter = {
        let ctx = ctx.clone();
        monoio::spawn(async move {
            let mut next = ctx.t0 + PROGRESS_EVERY;
            while next < ctx.end {
                monoio::time::sleep_until(next.into()).await;
                progress.store(ctx.completed.get(), Ordering::Relaxed);
                next += PROGRESS_EVERY;
            }
        })
    };
    let conns: Vec<_> = (first..first + n)
        .map(|i| monoio::spawn(connection(ctx.clone(), i)))
        .collect();
    for c in conns {
        c.await;
    }
    reporter.await;
    ctx.stats.replace(Stats::new(false))
}

/// A connection's buffers, kept across requests and re-connects.
struct Bufs {
    /// This connection's copy of the request (lent to each write).
    req: Vec<u8>,
    /// Bytes read and not consumed are `read[pos..]`.
    read: Vec<u8>,
    pos: usize,
    /// `--stream`: event gaps (µs) of the response in flight.
    gaps: Vec<u64>,
}

impl Bufs {
    fn new(plan: &Plan) -> Self {
        Self {
            req: plan.request.clone(),
            read: Vec::with_capacity(plan.read_buf_bytes()),
            pos: 0,
            gaps: Vec::with_capacity(if plan.stream {
                GAPS_PER_STREAM_INITIAL
            } else {
                0
            }),
        }
    }

    /// After an exchange was dropped mid-operation (a timeout), its buffers went with the
    /// cancelled operation: get new ones. The connection is closed anyway.
    fn restore(&mut self, plan: &Plan) {
        if self.req.is_empty() {
            self.req = plan.request.clone();
        }
        if self.read.capacity() < plan.read_buf_bytes() {
            self.read = Vec::with_capacity(plan.read_buf_bytes());
        }
        self.read.clear();
        self.pos = 0;
    }
}

/// Timings of one streamed response.
#[derive(Debug, Default, Clone, Copy)]
struct StreamMarks {
    first_byte: Option<Instant>,
    first_event: Option<Instant>,
    last_event: Option<Instant>,
}

/// How an exchange ended without an error.
#[derive(Debug, Clone, Copy)]
struct Done {
    at: Instant,
    status: u16,
    keep_alive: bool,
    bytes: u64,
    marks: StreamMarks,
    /// `--stream`: the body ended with `data: [DONE]`.
    stream_done: bool,
}

#[derive(Debug, Clone, Copy)]
struct Failed {
    kind: ErrorKind,
    bytes: u64,
}

/// Drive one connection slot until the end of the run: connect (again after any failure or
/// `Connection: close`), then request after request.
async fn connection(ctx: Rc<Ctx>, index: usize) {
    let plan = &*ctx.plan;
    let mut sched = plan
        .rate
        .map(|r| Schedule::new(ctx.t0, r, index, plan.connections));
    let mut bufs = Bufs::new(plan);
    let mut resp = Response::new(plan.head_request);
    let mut sse = Sse::default();
    let mut stream: Option<TcpStream> = None;
    if !plan.ramp.is_zero() {
        let at = ctx.t0 + schedule::arrival_offset(index, plan.connections, plan.ramp);
        if at >= ctx.end {
            return;
        }
        monoio::time::sleep_until(at.into()).await;
    }
    let mut now = Instant::now();
    // When the connection became free for the next request.
    let mut free = now;
    while now < ctx.end {
        if stream.is_none() {
            let res = connect(&ctx).await;
            now = Instant::now();
            free = now;
            match res {
                Ok(s) => {
                    bufs.read.clear();
                    bufs.pos = 0;
                    stream = Some(s);
                }
                Err(()) => continue,
            }
        }
        let Some(s) = stream.as_mut() else {
            continue; // opened just above
        };
        let intended = match sched.as_ref().map(|sc| sc.poll(now)) {
            None => now,
            Some(Next::Send { intended }) => intended,
            Some(Next::Wait { until }) => {
                if until >= ctx.end {
                    break;
                }
                monoio::time::sleep_until(until.into()).await;
                now = Instant::now();
                continue;
            }
        };
        if let Some(sc) = sched.as_mut() {
            sc.advance();
        }
        let sent = now;
        let from = schedule::measure_from(intended, sent, free);
        let timeout_at = sent + plan.timeout;
        // --drain: a response in flight at the end may complete (it is not recorded).
        let deadline = if plan.drain {
            timeout_at
        } else {
            timeout_at.min(ctx.end)
        };
        resp.reset();
        sse.reset();
        bufs.gaps.clear();
        let res = monoio::time::timeout_at(
            deadline.into(),
            exchange(s, &mut bufs, &mut resp, plan.stream.then_some(&mut sse)),
        )
        .await;
        now = match &res {
            Ok(Ok(done)) => {
                ctx.completed.set(ctx.completed.get() + 1);
                done.at
            }
            _ => Instant::now(),
        };
        free = now;
        // With --drain, what ends after the window is let through, not recorded.
        let counted = intended >= ctx.measure_from && !(plan.drain && now > ctx.end);
        let mut st = ctx.stats.borrow_mut();
        match res {
            Ok(Ok(done)) => {
                if !done.keep_alive {
                    stream = None;
                }
                if counted {
                    record(&mut st, from, &done, &bufs.gaps);
                }
            }
            Ok(Err(f)) => {
                stream = None;
                if counted {
                    st.bytes += f.bytes;
                    st.errors.count(f.kind);
                }
            }
            Err(_elapsed) => {
                stream = None;
                bufs.restore(plan);
                if timeout_at > ctx.end && !plan.drain {
                    break; // the run ended with this request in flight: not counted
                }
                if counted {
                    st.errors.count(ErrorKind::Timeout);
                }
            }
        }
    }
}

/// Record a complete response whose latency counts from `from`.
fn record(st: &mut Stats, from: Instant, done: &Done, gaps: &[u64]) {
    st.requests += 1;
    st.bytes += done.bytes;
    st.latency
        .saturating_record(micros(schedule::latency(from, done.at)));
    match done.status {
        400..=499 => st.errors.count(ErrorKind::Status4xx),
        500..=599 => st.errors.count(ErrorKind::Status5xx),
        _ => {}
    }
    let success = (200..300).contains(&done.status);
    let mut incomplete = false;
    if let (Some(s), true) = (st.stream.as_mut(), success) {
        s.streams += 1;
        let since = |t: Option<Instant>| t.map(|t| micros(schedule::latency(from, t)));
        if let Some(us) = since(done.marks.first_byte) {
            s.ttfb.saturating_record(us);
        }
        if let Some(us) = since(done.marks.first_event) {
            s.ttfe.saturating_record(us);
        }
        for &g in gaps {
            s.gap.saturating_record(g);
        }
        incomplete = !done.stream_done;
    }
    if incomplete {
        st.errors.count(ErrorKind::StreamIncomplete);
    }
}

/// Open a connection within the timeout (and before the end of the run). A failure is
/// counted as `connect` (when past the warm-up) and followed by a short pause.
async fn connect(ctx: &Ctx) -> Result<TcpStream, ()> {
    let start = Instant::now();
    let deadline = (start + ctx.plan.timeout).min(ctx.end);
    let res =
        monoio::time::timeout_at(deadline.into(), TcpStream::connect_addr(ctx.plan.addr)).await;
    match res {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(_)) | Err(_) => {
            let now = Instant::now();
            if now < ctx.end {
                if start >= ctx.measure_from {
                    ctx.stats.borrow_mut().errors.count(ErrorKind::Connect);
                }
                let retry = (now + Duration::from_millis(CONNECT_RETRY_MS)).min(ctx.end);
                monoio::time::sleep_until(retry.into()).await;
            }
            Err(())
        }
    }
}

/// Send the request and read its response to the end.
async fn exchange(
    s: &mut TcpStream,
    bufs: &mut Bufs,
    resp: &mut Response,
    mut sse: Option<&mut Sse>,
) -> Result<Done, Failed> {
    let req = std::mem::take(&mut bufs.req);
    let (res, req) = s.write_all(req).await;
    bufs.req = req;
    let mut bytes = 0u64;
    let fail = |kind, bytes| Failed { kind, bytes };
    if res.is_err() {
        return Err(fail(ErrorKind::Write, bytes));
    }
    let mut marks = StreamMarks::default();
    loop {
        if bufs.read.len() == bufs.read.capacity() && bufs.pos > 0 {
            bufs.read.drain(..bufs.pos);
            bufs.pos = 0;
        }
        let buf = std::mem::take(&mut bufs.read);
        let len = buf.len();
        let (res, slice) = s.read(buf.slice_mut(len..)).await;
        bufs.read = slice.into_inner();
        let n = match res {
            Ok(n) => n,
            Err(_) => return Err(fail(ErrorKind::Read, bytes)),
        };
        let now = Instant::now();
        if n == 0 {
            // The server closed: the end of a close-delimited body, or a truncated response.
            return match resp.eof() {
                Ok(()) => Ok(finish(resp, now, bytes, marks, sse.as_deref(), false)),
                Err(_) => Err(fail(ErrorKind::Read, bytes)),
            };
        }
        bytes += n as u64;
        // The unconsumed bytes fill the whole buffer: a head still incomplete never fits.
        let full = bufs.pos == 0 && bufs.read.len() == bufs.read.capacity();
        let feed = match sse.as_deref_mut() {
            None => resp.feed(&bufs.read[bufs.pos..], full, &mut |_| {}),
            Some(sse) => {
                marks.first_byte.get_or_insert(now);
                let mut events = 0;
                let f = resp.feed(&bufs.read[bufs.pos..], full, &mut |d| {
                    events += sse.feed(d);
                });
                if events > 0 {
                    note_events(&mut marks, &mut bufs.gaps, events, now);
                }
                f
            }
        };
        match feed {
            Ok(Feed::More { consumed }) => {
                bufs.pos += consumed;
                if bufs.pos == bufs.read.len() {
                    bufs.read.clear();
                    bufs.pos = 0;
                }
            }
            Ok(Feed::Done { consumed }) => {
                bufs.pos += consumed;
                // Bytes past the response: the server is out of step; do not reuse it.
                let extra = bufs.pos < bufs.read.len();
                bufs.read.clear();
                bufs.pos = 0;
                return Ok(finish(resp, now, bytes, marks, sse.as_deref(), extra));
            }
            Err(
                FrameError::BadHead
                | FrameError::HeadTooLarge
                | FrameError::BadLength
                | FrameError::BadChunk
                | FrameError::UnexpectedInterim
                | FrameError::Truncated,
            ) => return Err(fail(ErrorKind::Read, bytes)),
        }
    }
}

fn finish(
    resp: &Response,
    at: Instant,
    bytes: u64,
    marks: StreamMarks,
    sse: Option<&Sse>,
    out_of_step: bool,
) -> Done {
    let head = resp.head().unwrap_or_default();
    Done {
        at,
        status: head.status,
        keep_alive: head.keep_alive && !out_of_step,
        bytes,
        marks,
        stream_done: sse.is_some_and(|s| s.done),
    }
}

/// `events` complete events arrived in one read at `now`: the first gap is from the previous
/// event; the others arrived together (gap 0).
fn note_events(marks: &mut StreamMarks, gaps: &mut Vec<u64>, events: u64, now: Instant) {
    let mut rest = events;
    match marks.last_event {
        None => {
            marks.first_event = Some(now);
            rest -= 1;
        }
        Some(prev) => {
            if gaps.len() < GAPS_PER_STREAM_MAX {
                gaps.push(micros(now.saturating_duration_since(prev)));
            }
            rest -= 1;
        }
    }
    for _ in 0..rest {
        if gaps.len() < GAPS_PER_STREAM_MAX {
            gaps.push(0);
        }
    }
    marks.last_event = Some(now);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(connections: usize, threads: usize) -> Plan {
        Plan {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            request: Vec::new(),
            head_request: false,
            connections,
            threads,
            rate: None,
            stream: false,
            timeout: Duration::from_secs(1),
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            driver: DriverChoice::Auto,
            ramp: Duration::ZERO,
            drain: false,
        }
    }

    #[test]
    fn connections_are_split_over_threads() {
        let p = plan(10, 3);
        let split: Vec<_> = (0..3).map(|t| p.conns_of(t)).collect();
        assert_eq!(split, vec![(0, 4), (4, 3), (7, 3)]);
        let p = plan(64, 1);
        assert_eq!(p.conns_of(0), (0, 64));
        let p = plan(2, 2);
        assert_eq!((p.conns_of(0), p.conns_of(1)), ((0, 1), (1, 1)));
    }

    #[test]
    fn event_gaps() {
        let t = Instant::now();
        let ms = Duration::from_millis(1);
        let mut marks = StreamMarks::default();
        let mut gaps = Vec::new();
        note_events(&mut marks, &mut gaps, 1, t);
        assert_eq!(marks.first_event, Some(t));
        assert!(gaps.is_empty());
        note_events(&mut marks, &mut gaps, 2, t + 5 * ms);
        assert_eq!(gaps, vec![5000, 0]);
        note_events(&mut marks, &mut gaps, 1, t + 7 * ms);
        assert_eq!(gaps, vec![5000, 0, 2000]);
        assert_eq!(marks.first_event, Some(t));
    }
}
