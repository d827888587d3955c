//! `shardgate-bench load`: a wrk-style HTTP/1.1 load generator, thread-per-core on monoio.
//!
//! ```text
//! shardgate-bench load URL -c CONNS -d DURATION [-t THREADS] [-H 'Name: v']... [--method M]
//!     [--body STR | --body-file F] [--rate RPS] [--stream] [--json] [--timeout-ms N]
//!     [--warmup DURATION] [--driver auto|io-uring|epoll] [--ramp-ms MS] [--drain]
//! ```
//!
//! # How it works
//! - The URL is resolved once, and the request (request line, `Host`, the `-H` headers,
//!   `Content-Length`, body) serialised once, before any thread starts (`target`).
//! - THREADS std threads, thread `i` pinned to the `i`-th CPU this process may run on, each with
//!   its own monoio runtime (io_uring with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN, then
//!   io_uring's default set-up, then epoll), drive CONNS/THREADS keep-alive connections each
//!   (TCP_NODELAY) (`worker`). Responses are framed with httparse plus our own
//!   Content-Length / chunked / until-close handling (`response`); nothing is allocated per
//!   request.
//! - Closed loop by default: a connection sends its next request when the previous response
//!   is complete, as wrk does. With `--rate`, open loop: the total rate is split over the
//!   connections, each with a schedule of intended send times, and latency is measured from
//!   the intended time, so stalls show in the tail (coordinated omission corrected, as wrk2;
//!   see `schedule`). One allowance: a connection that is free before its send time sleeps
//!   until then, and monoio's millisecond timer wakes it up to ~2 ms late; that lateness is the
//!   generator's, not the server's, so such a request counts from its actual send (up to
//!   2.5 ms late). Keep each connection's interval (`CONNS / RPS`) well above 1 ms, or its
//!   sends bunch up at timer ticks; a warning says so.
//! - `--warmup`: load runs for that long first, with nothing recorded; `-d` is then the
//!   measured window. A request counts when its (intended) send time is inside the window
//!   and it completes before the window ends; one still in flight at the end is dropped
//!   uncounted, as in wrk.
//! - `--ramp-ms`: connection `i` of `n` opens and sends its first request `i · ramp / n` after
//!   the start (`schedule::arrival_offset`), so new streams arrive at a steady rate instead of
//!   in one burst; closed loop from then on. The ramp counts from the start of the warm-up.
//! - `--drain`: at the end, the responses in flight are let complete (each within
//!   `--timeout-ms`), unrecorded, instead of being cut off by closing their connections: a
//!   warm-up run that ends this way leaves no half-read streams behind in the server.
//! - The process raises its open-file limit to the hard limit first (as the engine does) and
//!   refuses to start when `-c` connections cannot fit in it.
//! - Each thread keeps its own HdrHistograms (µs, 3 significant digits, up to 60 s) and
//!   counters (`stats`), merged when the run ends. Once a second each thread stores its
//!   completed count in an atomic; the main thread prints a progress line on stderr when
//!   stderr is a terminal.
//! - `--timeout-ms` (default 2000) bounds each exchange from the moment its request is sent;
//!   a request over it counts as `timeout` and its connection is re-opened. A connect that
//!   fails (or takes longer than the timeout) counts as `connect` and is retried after 10 ms.
//! - `--stream`: responses are SSE (`text/event-stream`, chunked or not); each 2xx response
//!   also records its time to first byte, time to first complete `data:` event, and the gaps
//!   between events, and must end with `data: [DONE]` (else `stream_incomplete`). The request
//!   body is sent as given, so it should carry `"stream": true`.
//! - Without `--body`/`--body-file` the method defaults to GET, with one to POST.
//!
//! # JSON report (`--json`)
//! Exactly one JSON object on stdout (nothing else goes to stdout), for example:
//! ```json
//! {"requests":512345,"duration_s":5.0,"rps":102469.0,"bytes":260271260,"connections":64,
//!  "threads":1,"rate":null,
//!  "latency_us":{"p50":611,"p90":700,"p99":1001,"p999":1607,"max":4415,"mean":623.41},
//!  "errors":{"connect":0,"read":0,"write":0,"timeout":0,"status_4xx":0,"status_5xx":0,
//!            "stream_incomplete":0},
//!  "stream":null}
//! ```
//! - `requests`: complete responses in the measured window, whatever their status (so
//!   `status_4xx`/`status_5xx` are counted here too, as wrk counts non-2xx answers).
//! - `duration_s`: the measured window (`-d`), seconds. `rps`: `requests / duration_s`.
//! - `bytes`: bytes read from the server for the requests counted (complete or failed).
//! - `connections`, `threads`: as run. `rate`: the `--rate` target in requests/s, or `null`
//!   for a closed-loop run.
//! - `latency_us`: percentiles `p50`, `p90`, `p99`, `p999` (99.9th), `max` (µs, integers) and
//!   `mean` (µs, two decimals) over complete responses: from the send (closed loop) or the
//!   intended send time (`--rate`, with the timer allowance above) to the response's last
//!   byte. Timeouts and errors are not in it. All 0 when there is no response.
//! - `errors`: counts by kind. `connect`: a connection could not be opened. `read`: reading
//!   failed, the server closed before the response was complete, or the response was
//!   ill-framed. `write`: sending the request failed. `timeout`: no complete response within
//!   `--timeout-ms`. `status_4xx`, `status_5xx`: complete responses with such a status.
//!   `stream_incomplete` (`--stream`): a 2xx response that ended without `data: [DONE]`.
//! - `stream`: `null` without `--stream`; otherwise `ttfb_us` (to the first response byte),
//!   `ttfe_us` (to the first complete `data:` event), `gap_us` (between consecutive events
//!   of a stream; 0 for events that arrived in the same read), each with the same fields as
//!   `latency_us` and measured over 2xx responses, and `streams`, the number of 2xx streamed
//!   responses checked.

mod response;
mod schedule;
mod stats;
pub use stats::Errors;
mod target;
mod worker;

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};

use stats::{Report, Stats};
use worker::{DriverChoice, DriverKind, Msg, Plan};

/// Connections over all threads, at most.
const CONNECTIONS_MAX: usize = 100_000;
/// Threads, at most.
const THREADS_MAX: usize = 1024;
/// With `--rate`, warn when a connection would send more often than this (the timer has a
/// resolution of about 1 ms).
const PER_CONN_INTERVAL_MIN_MS: f64 = 2.0;
/// How long the threads may take to build their runtimes.
const READY_WAIT: Duration = Duration::from_secs(10);
/// The main thread reads the progress counters this long after the threads store them.
const PROGRESS_READ_DELAY: Duration = Duration::from_millis(100);
/// How long after the planned end the threads may take to hand in their numbers.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// Open files the process needs besides one per connection (runtime, pipes, stdio).
const FDS_SPARE: u64 = 64;
/// Longest `--ramp-ms`, ms (one hour).
const RAMP_MS_MAX: u32 = 3_600_000;

/// Command-line arguments of `shardgate-bench load`.
#[derive(Debug, clap::Args)]
pub struct LoadArgs {
    /// Target, `http://host[:port][/path]` (resolved once, before the run).
    pub url: String,
    /// Connections to keep open, over all threads.
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    pub connections: usize,
    /// How long to measure: `10s`, `500ms`, `1m`.
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Threads, each pinned to one CPU with its own runtime [default: the CPUs this process may
    /// use, at most CONNECTIONS].
    #[arg(short = 't', long)]
    pub threads: Option<u16>,
    /// Request header, `'Name: value'` (repeatable).
    #[arg(short = 'H', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Request method [default: GET, or POST when a body is given].
    #[arg(long)]
    pub method: Option<String>,
    /// Request body.
    #[arg(long, conflicts_with = "body_file")]
    pub body: Option<String>,
    /// Request body, read from a file.
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Open loop: this many requests per second in total, latency measured from each
    /// request's intended send time (coordinated-omission corrected).
    #[arg(long, value_name = "RPS")]
    pub rate: Option<f64>,
    /// Responses are SSE streams: also measure time to first byte, to first event and the
    /// gaps between events, and check each stream ends with `data: [DONE]`.
    #[arg(long)]
    pub stream: bool,
    /// Print one JSON object on stdout at the end instead of the summary.
    #[arg(long)]
    pub json: bool,
    /// A response not complete this long after its request was sent counts as a timeout.
    #[arg(long, default_value_t = 2000, value_name = "N")]
    pub timeout_ms: u32,
    /// Run this long before measuring (nothing is recorded meanwhile).
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// monoio driver.
    #[arg(long, value_enum, default_value_t = DriverChoice::Auto)]
    pub driver: DriverChoice,
    /// Spread the connections' first requests evenly over this many ms (streams arriving at a
    /// steady rate) instead of sending them all at once.
    #[arg(long, default_value_t = 0, value_name = "MS", value_parser = clap::value_parser!(u32).range(..=i64::from(RAMP_MS_MAX)))]
    pub ramp_ms: u32,
    /// At the end, let the responses in flight complete (within --timeout-ms), unrecorded,
    /// instead of closing their connections mid-response.
    #[arg(long)]
    pub drain: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    target::parse_duration(s).map_err(|e| e.to_string())
}

/// Run `shardgate-bench load`.
pub fn run(args: LoadArgs) -> anyhow::Result<()> {
    let url = target::parse_url(&args.url)?;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let threads = args.threads.map_or_else(
        || cores.len().max(1).min(args.connections.max(1)),
        usize::from,
    );
    ensure!(
        (1..=CONNECTIONS_MAX).contains(&args.connections),
        "-c must be 1..={CONNECTIONS_MAX}"
    );
    ensure!(
        (1..=THREADS_MAX).contains(&threads),
        "-t must be 1..={THREADS_MAX}"
    );
    ensure!(
        threads <= args.connections,
        "-c ({}) must be at least -t ({threads}): every thread needs a connection",
        args.connections
    );
    ensure!(!args.duration.is_zero(), "-d must be longer than 0");
    let nofile = shardgate_engine::runtime::raise_nofile();
    let fds_needed = args.connections as u64 + FDS_SPARE;
    ensure!(
        fds_needed <= nofile,
        "-c {} needs about {fds_needed} open files, and the open-file limit is {nofile} \
         (hard limit: ulimit -Hn; raise it, e.g. as root: ulimit -n {fds_needed})",
        args.connections
    );
    ensure!(args.timeout_ms >= 1, "--timeout-ms must be at least 1");
    if let Some(r) = args.rate {
        ensure!(r.is_finite() && r > 0.0, "--rate must be a positive number");
        let interval_ms = 1000.0 * args.connections as f64 / r;
        if interval_ms < PER_CONN_INTERVAL_MIN_MS {
            eprintln!(
                "warning: each connection sends every {interval_ms:.2} ms, finer than the \
                 ~1 ms timer: sends bunch up at timer ticks; use more connections (-c)"
            );
        }
    }
    let body = match (&args.body, &args.body_file) {
        (Some(b), _) => b.clone().into_bytes(),
        (None, Some(f)) => {
            let meta =
                std::fs::metadata(f).with_context(|| format!("--body-file {}", f.display()))?;
            ensure!(
                meta.len() <= target::BODY_BYTES_MAX as u64,
                "--body-file {} is over {} bytes",
                f.display(),
                target::BODY_BYTES_MAX
            );
            std::fs::read(f).with_context(|| format!("--body-file {}", f.display()))?
        }
        (None, None) => Vec::new(),
    };
    let has_body = args.body.is_some() || args.body_file.is_some();
    let method = args
        .method
        .clone()
        .unwrap_or_else(|| if has_body { "POST" } else { "GET" }.to_owned());
    let request = target::build_request(&method, &url, &args.headers, &body)?;
    let addr = target::resolve(&url)?;

    let plan = Arc::new(Plan {
        addr,
        request,
        head_request: method.eq_ignore_ascii_case("HEAD"),
        connections: args.connections,
        threads,
        rate: args.rate,
        stream: args.stream,
        timeout: Duration::from_millis(u64::from(args.timeout_ms)),
        warmup: args.warmup,
        duration: args.duration,
        driver: args.driver,
        ramp: Duration::from_millis(u64::from(args.ramp_ms)),
        drain: args.drain,
    });

    let live = std::io::stderr().is_terminal() && !args.json;
    let total = measure(&plan, &cores, live, |drivers| {
        if !args.json {
            println!("{}", header(&args, threads, drivers));
        }
    })?;
    let report = Report::new(&total, args.duration, args.connections, threads, args.rate);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

/// Run `plan`: start its threads (thread `i` pinned to `cores[i % len]`, none if empty), wait
/// until every runtime is built, call `on_start` with the drivers they got, start the clock,
/// show progress (when `live`) and return the threads' merged numbers.
fn measure(
    plan: &Arc<Plan>,
    cores: &[core_affinity::CoreId],
    live: bool,
    on_start: impl FnOnce(&[DriverKind]),
) -> anyhow::Result<Stats> {
    let threads = plan.threads;
    let (to_main, from_threads) = mpsc::channel();
    let mut starts = Vec::with_capacity(threads);
    let mut handles = Vec::with_capacity(threads);
    let mut counters = Vec::with_capacity(threads);
    for t in 0..threads {
        let (start_tx, start_rx) = mpsc::channel();
        let counter = Arc::new(AtomicU64::new(0));
        let core = (!cores.is_empty()).then(|| cores[t % cores.len()]);
        let (plan, to_main, c) = (plan.clone(), to_main.clone(), counter.clone());
        let h = std::thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || worker::thread_main(t, plan, core, c, to_main, start_rx))
            .context("cannot start a load thread")?;
        starts.push(start_tx);
        handles.push(h);
        counters.push(counter);
    }
    drop(to_main);

    // Every runtime is built before the clock starts.
    let mut drivers = vec![None; threads];
    let ready_by = Instant::now() + READY_WAIT;
    let mut failure = None;
    while drivers.iter().any(Option::is_none) && failure.is_none() {
        let wait = ready_by.saturating_duration_since(Instant::now());
        match from_threads.recv_timeout(wait) {
            Ok(Msg::Ready { thread, result }) => match result {
                Ok(kind) => drivers[thread] = Some(kind),
                Err(e) => failure = Some(format!("load thread {thread}: {e}")),
            },
            // Threads finish only after the start below.
            Ok(Msg::Finished { .. }) => {}
            Err(_) => failure = Some("the load threads did not start".to_owned()),
        }
    }
    if let Some(f) = failure {
        drop(starts); // the threads see the closed channel and return
        for h in handles {
            let _ = h.join();
        }
        bail!(f);
    }
    let drivers: Vec<DriverKind> = drivers.into_iter().flatten().collect();
    on_start(&drivers);

    let t0 = Instant::now();
    for s in &starts {
        let _ = s.send(t0);
    }
    let give_up = t0 + plan.warmup + plan.duration + plan.timeout + FINISH_GRACE;
    let mut total = Stats::new(plan.stream);
    let mut finished = 0;
    let mut progress = Progress {
        counters,
        t0,
        warmup: plan.warmup,
        tick: 1,
        last_count: 0,
        live,
    };
    while finished < threads {
        let now = Instant::now();
        if now > give_up {
            bail!("the load threads did not finish in time");
        }
        let wait = progress
            .next_read()
            .min(give_up)
            .saturating_duration_since(now)
            .max(Duration::from_millis(1));
        match from_threads.recv_timeout(wait) {
            Ok(Msg::Finished { stats }) => {
                total.merge(&stats);
                finished += 1;
            }
            Ok(Msg::Ready { .. }) => {}
            Err(mpsc::RecvTimeoutError::Timeout) => progress.maybe_print(Instant::now()),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!("a load thread stopped without reporting (it panicked?)")
            }
        }
    }
    progress.clear();
    for h in handles {
        let _ = h.join();
    }
    Ok(total)
}

/// The live progress line on stderr (only when stderr is a terminal).
struct Progress {
    /// Each thread's completed count, stored by the thread every second from `t0`.
    counters: Vec<Arc<AtomicU64>>,
    t0: Instant,
    warmup: Duration,
    /// The next second to show.
    tick: u32,
    last_count: u64,
    live: bool,
}

impl Progress {
    /// Read the counters a little after the threads store them, so all have.
    fn next_read(&self) -> Instant {
        self.t0 + Duration::from_secs(u64::from(self.tick)) + PROGRESS_READ_DELAY
    }

    fn maybe_print(&mut self, now: Instant) {
        if now < self.next_read() {
            return;
        }
        let count: u64 = self
            .counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        if self.live {
            let phase = if Duration::from_secs(u64::from(self.tick)) <= self.warmup {
                " warm-up"
            } else {
                ""
            };
            eprint!(
                "\r\x1b[K  [{:>4}s{phase}] {count} requests, {} req/s",
                self.tick,
                count.saturating_sub(self.last_count)
            );
            let _ = std::io::stderr().flush();
        }
        self.last_count = count;
        // Skip seconds missed (a stalled main thread): show the latest.
        let behind = now.saturating_duration_since(self.t0).as_secs();
        self.tick = u32::try_from(behind).unwrap_or(u32::MAX).max(self.tick) + 1;
    }

    fn clear(&self) {
        if self.live {
            eprint!("\r\x1b[K");
        }
    }
}

/// The line printed before the run, as wrk does.
fn header(args: &LoadArgs, threads: usize, drivers: &[DriverKind]) -> String {
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".to_owned(),
    };
    let mut kinds: Vec<&str> = drivers.iter().map(|d| d.describe()).collect();
    kinds.dedup();
    let warm = if args.warmup.is_zero() {
        String::new()
    } else {
        format!(", after {:?} warm-up", args.warmup)
    };
    format!(
        "Running {:?} test @ {}\n  {threads} thread(s) and {} connection(s), {mode}, {}{warm}",
        args.duration,
        args.url,
        args.connections,
        kinds.join("/"),
    )
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};

    use super::*;

    /// `main.rs` holds the arguments of each command in one enum; clippy's `large_enum_variant`
    /// fails the build when one variant outgrows the others by 200 bytes.
    #[test]
    fn args_stay_small() {
        assert!(
            std::mem::size_of::<LoadArgs>() < 200,
            "{}",
            std::mem::size_of::<LoadArgs>()
        );
    }

    /// The length of the first complete request in `buf` (head and Content-Length body).
    fn request_len(buf: &[u8]) -> Option<usize> {
        let head = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let text = std::str::from_utf8(&buf[..head]).ok()?;
        let body = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .map_or(0, |v| v.trim().parse().unwrap_or(0));
        (buf.len() >= head + body).then_some(head + body)
    }

    /// A blocking server on a free port: a thread per connection answers each request with
    /// `reply` (or never answers, with `None`). Its threads end with the test process.
    fn serve(reply: Option<&'static [u8]>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let addr = listener.local_addr().expect("bound address");
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let n = match conn.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(len) = request_len(&buf) {
                            buf.drain(..len);
                            if let Some(r) = reply {
                                if conn.write_all(r).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        addr
    }

    fn plan(addr: SocketAddr, change: impl FnOnce(&mut Plan)) -> Arc<Plan> {
        let url = target::parse_url(&format!("http://{addr}/v1/chat/completions")).expect("url");
        let mut p = Plan {
            addr,
            request: target::build_request("POST", &url, &[], b"{}").expect("request"),
            head_request: false,
            connections: 2,
            threads: 1,
            rate: None,
            stream: false,
            timeout: Duration::from_secs(2),
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
            driver: DriverChoice::Auto,
            ramp: Duration::ZERO,
            drain: false,
        };
        change(&mut p);
        Arc::new(p)
    }

    fn measured(plan: &Arc<Plan>) -> Stats {
        measure(plan, &[], false, |drivers| {
            assert_eq!(drivers.len(), plan.threads);
        })
        .expect("the run completes")
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

    #[test]
    fn closed_loop_counts_every_response_on_both_drivers() {
        let addr = serve(Some(OK));
        for driver in [DriverChoice::Auto, DriverChoice::Epoll] {
            let s = measured(&plan(addr, |p| {
                p.driver = driver;
                p.threads = 2;
                p.connections = 3;
            }));
            assert!(s.requests > 10, "{driver:?}: {} requests", s.requests);
            assert_eq!(s.errors, stats::Errors::default(), "{driver:?}");
            assert_eq!(s.latency.len(), s.requests);
            assert_eq!(s.bytes, s.requests * OK.len() as u64);
            assert!(s.stream.is_none());
        }
    }

    #[test]
    fn statuses_are_counted_as_errors_and_requests() {
        let addr = serve(Some(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
        ));
        let s = measured(&plan(addr, |_| {}));
        assert!(s.requests > 0);
        assert_eq!(s.errors.status_5xx, s.requests);
        assert_eq!(s.errors.total(), s.requests);
    }

    const SSE: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        f\r\ndata: {\"a\":1}\n\n\r\n\
        f\r\ndata: {\"b\":2}\n\n\r\n\
        e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n";
    const SSE_CUT: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
        Transfer-Encoding: chunked\r\n\r\nf\r\ndata: {\"a\":1}\n\n\r\n0\r\n\r\n";

    #[test]
    fn streams_record_first_byte_first_event_and_gaps() {
        let addr = serve(Some(SSE));
        let s = measured(&plan(addr, |p| p.stream = true));
        assert!(s.requests > 0);
        assert_eq!(s.errors, stats::Errors::default());
        let st = s.stream.as_ref().expect("stream stats");
        assert_eq!(st.streams, s.requests);
        assert_eq!(st.ttfb.len(), s.requests);
        assert_eq!(st.ttfe.len(), s.requests);
        // Three events per stream, so two gaps.
        assert_eq!(st.gap.len(), 2 * s.requests);
    }

    #[test]
    fn streams_without_done_are_incomplete() {
        let addr = serve(Some(SSE_CUT));
        let s = measured(&plan(addr, |p| p.stream = true));
        assert!(s.requests > 0);
        assert_eq!(s.errors.stream_incomplete, s.requests);
        let st = s.stream.as_ref().expect("stream stats");
        assert_eq!(st.ttfe.len(), s.requests);
        assert_eq!(st.gap.len(), 0);
    }

    #[test]
    fn requests_over_the_timeout_count_and_reconnect() {
        let addr = serve(None);
        let s = measured(&plan(addr, |p| {
            p.connections = 1;
            p.timeout = Duration::from_millis(100);
            p.duration = Duration::from_millis(450);
        }));
        assert_eq!(s.requests, 0);
        // Timeouts at about 100, 200, 300 and 400 ms (the last may run into the end).
        assert!(
            (2..=4).contains(&s.errors.timeout),
            "{} timeouts",
            s.errors.timeout
        );
        assert_eq!(s.errors.total(), s.errors.timeout);
    }

    #[test]
    fn drain_lets_the_exchange_in_flight_run_on_unrecorded() {
        // A server that never answers: the request sent at the start is in flight at the end.
        let addr = serve(None);
        let run = |drain: bool| {
            let p = plan(addr, |p| {
                p.connections = 1;
                p.duration = Duration::from_millis(100);
                p.timeout = Duration::from_millis(500);
                p.drain = drain;
            });
            let t = Instant::now();
            let s = measured(&p);
            (t.elapsed(), s)
        };
        // Without --drain the exchange is dropped at the end of the window.
        let (took, s) = run(false);
        assert!(took < Duration::from_millis(450), "{took:?}");
        assert_eq!((s.requests, s.errors.total()), (0, 0));
        // With it, the exchange runs on to its own timeout, past the window, and is not recorded.
        let (took, s) = run(true);
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert_eq!((s.requests, s.errors.total()), (0, 0));
    }

    #[test]
    fn refused_connections_are_connect_errors() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
            l.local_addr().expect("bound address")
        }; // closed again: nothing listens there now
        let s = measured(&plan(addr, |p| p.duration = Duration::from_millis(200)));
        assert_eq!(s.requests, 0);
        assert!(s.errors.connect > 0);
        assert_eq!(s.errors.total(), s.errors.connect);
    }

    #[test]
    fn open_loop_sends_at_the_rate_after_the_warmup() {
        let addr = serve(Some(OK));
        // 400 req/s over 4 connections: 200 requests intended in the 500 ms window; the
        // 250 ms of warm-up before it (100 requests) are not recorded.
        let s = measured(&plan(addr, |p| {
            p.connections = 4;
            p.rate = Some(400.0);
            p.warmup = Duration::from_millis(250);
            p.duration = Duration::from_millis(500);
        }));
        assert!((150..=201).contains(&s.requests), "{} requests", s.requests);
        assert_eq!(s.errors, stats::Errors::default());
    }
}
