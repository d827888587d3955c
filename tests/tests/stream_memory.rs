//! Heap bytes held per open SSE stream, counted, not timed (issue 21): a stream that waits for
//! its next token may hold at most [`STREAM_BYTES_MAX`] (client connection, upstream
//! connection and the exchange, in user space).
//!
//! The gateway is `shardgate-counted` (the engine with `stats_alloc` as its global allocator),
//! whose `/metrics` shows `shardgate_heap_live_bytes`: bytes allocated minus bytes freed,
//! reallocations included, as asked of the allocator (its own rounding and RSS are not
//! counted). One shard, the bench's mock upstream (`shardgate-bench upstream`) streaming a
//! first token after 100 ms and then one a second for a minute. The test opens
//! [`STREAMS_PER_STEP`] streams over raw TCP (each request sent, its head and first event
//! read, then left open), reads the live bytes L1 (the least of a few scrapes: a token being
//! relayed at that instant holds a read buffer), opens as many more, reads L2: the bytes per
//! stream are (L2 - L1) / [`STREAMS_PER_STEP`]. Pools and caches sized by the traffic (spare
//! buffers, the runtime's slabs) fill up during the first step and cancel out in the
//! difference; what remains is what each stream holds while it waits.
//!
//! Three streams, each on both drivers:
//! - `plain_stream`: a pass-through stream (`auth = "none"`, a route to the mock), relayed
//!   byte for byte.
//! - `tenant_stream`: a tenant's stream through a `[[models]]` group, with limits and a token
//!   budget: the gateway asks for the usage chunk (`stream_options.include_usage`), settles
//!   from it and filters it out (the SSE filter and the usage scanner).
//! - `translated_stream`: an Anthropic Messages client (`POST /v1/messages`) served by the
//!   OpenAI-compatible mock: every chunk translated into Anthropic's events.
//!
//! Each also checks that every stream is still open and gets its next token after the
//! measurement (a gateway that saved memory by stalling or dropping streams fails), and that
//! the gateway counts all of them as open connections. The figures are printed (run with
//! `--nocapture` to see them; docs/benchmarks.md, section 4, has them).
//!
//! Descriptors: the streams take three in the engine (client, upstream, the upstream's idle
//! peek handle), one here and one in the mock each; this process raises its soft limit to the
//! hard one (the children inherit it) and fails, saying so, when that is too few.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use shardgate_tests::{
    per_driver, sha256_hex, shardgate_counted_bin, BenchUpstream, Driver, Gateway,
};

/// The bound of issue 21: heap bytes one open, waiting stream may hold.
const STREAM_BYTES_MAX: i64 = 16 * 1024;
/// Streams opened before the first reading, and again before the second.
const STREAMS_PER_STEP: usize = 200;
/// Streams open at the second reading.
const STREAMS_TOTAL: usize = 2 * STREAMS_PER_STEP;
/// Descriptors the streams need over the three processes (engine 3, test 1, mock 1 each),
/// plus room for each one's own files.
const NOFILE_NEEDED: u64 = 5 * STREAMS_TOTAL as u64 + 1024;
/// The mock's stream: first token after 100 ms, then one a second, 60 in all (a minute: longer
/// than the test). Its whole (unstreamed) answers, the warm-up's, come after a second.
const MOCK_ARGS: [&str; 8] = [
    "--ttft-ms",
    "100",
    "--chunk-interval-ms",
    "1000",
    "--chunks",
    "60",
    "--latency-ms",
    "1000",
];
/// Unstreamed requests in flight at once before the first reading (see [`warm_up`]): more
/// than the shard keeps spare buffers of each kind (128).
const WARM_REQUESTS: usize = 300;
/// Scrapes of `/metrics` per reading; the least live bytes is taken.
const SCRAPES_PER_READING: usize = 5;
/// Pause before and between the scrapes of a reading.
const SCRAPE_PAUSE: Duration = Duration::from_millis(100);
/// Bound on each wait for a stream's head or next event.
const EVENT_WAIT: Duration = Duration::from_secs(15);
/// The tenant's key in `tenant_stream`.
const TENANT_KEY: &str = "sk-stream-memory-tenant";

/// One scenario at a time: each holds hundreds of connections over three processes, and the
/// readings are cleaner on a quiet machine.
static SERIAL: Mutex<()> = Mutex::new(());

per_driver!(plain_stream, tenant_stream, translated_stream);

/// Which stream is measured.
#[derive(Debug, Clone, Copy)]
enum Scenario {
    Plain,
    Tenant,
    Translated,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Plain => "plain pass-through",
            Scenario::Tenant => "tenant (usage, limits, budget)",
            Scenario::Translated => "translated (Anthropic client, OpenAI upstream)",
        }
    }

    fn config(self, mock: SocketAddr) -> String {
        let server = "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n";
        let upstream = format!(
            "[[upstreams]]\nname = \"mock\"\nendpoints = [\"http://{mock}\"]\npool_idle_max = 1024\n"
        );
        match self {
            Scenario::Plain => format!(
                "{server}auth = \"none\"\n\n{upstream}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"mock\"\n"
            ),
            Scenario::Tenant => format!(
                "{server}\n{upstream}\n[[models]]\nname = \"demo\"\n\
                 deployments = [{{ upstream = \"mock\", model = \"demo-upstream\" }}]\n\n\
                 [[tenants]]\nname = \"t\"\nkeys = [\"sha256:{}\"]\nmodels = [\"demo\"]\n\
                 rpm = 1000000\ntpm = 1000000000\nmax_concurrency = 100000\n\
                 budget_tokens = 1000000000000\nbudget_window = \"30d\"\n",
                sha256_hex(TENANT_KEY)
            ),
            Scenario::Translated => format!(
                "{server}auth = \"none\"\n\n{upstream}provider = \"openai\"\n\n[[models]]\n\
                 name = \"gpt-test\"\n\
                 deployments = [{{ upstream = \"mock\", model = \"gpt-upstream\" }}]\n"
            ),
        }
    }

    /// The stream's request; `warm`: the same request unstreamed, on a connection closed after
    /// its answer.
    fn request(self, warm: bool) -> String {
        let (path, extra, body) = match self {
            Scenario::Plain => (
                "/v1/chat/completions",
                String::new(),
                r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            Scenario::Tenant => (
                "/v1/chat/completions",
                format!("Authorization: Bearer {TENANT_KEY}\r\n"),
                r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
            Scenario::Translated => (
                "/v1/messages",
                "anthropic-version: 2023-06-01\r\n".to_owned(),
                r#"{"model":"gpt-test","max_tokens":256,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            ),
        };
        let (body, close) = if warm {
            (
                body.replace(r#""stream":true"#, r#""stream":false"#),
                "Connection: close\r\n",
            )
        } else {
            (body.to_owned(), "")
        };
        format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\n{extra}{close}Content-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    }

    /// What occurs once in the client's bytes per token: an OpenAI chunk's delta, or an
    /// Anthropic `content_block_delta`'s `text_delta`.
    fn token_marker(self) -> &'static [u8] {
        match self {
            Scenario::Plain | Scenario::Tenant => b"\"delta\":{",
            Scenario::Translated => b"\"text_delta\"",
        }
    }
}

/// One open stream, as raw bytes received.
struct Stream {
    sock: TcpStream,
    got: Vec<u8>,
    /// Where the response head ends in `got`, once it has.
    body_at: Option<usize>,
}

impl Stream {
    /// Tokens received so far.
    fn tokens(&self, marker: &[u8]) -> usize {
        let body = self.body_at.map_or(&[][..], |at| &self.got[at..]);
        body.windows(marker.len()).filter(|w| *w == marker).count()
    }

    /// Reads until the head is in and `tokens` tokens have arrived, or says why not.
    fn wait_tokens(&mut self, marker: &[u8], tokens: usize) -> Result<(), String> {
        let deadline = Instant::now() + EVENT_WAIT;
        let mut chunk = [0u8; 4096];
        loop {
            if self.body_at.is_none() {
                if let Some(i) = self.got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&self.got[..i]);
                    if !head.starts_with("HTTP/1.1 200") {
                        return Err(format!("answered {head:?}"));
                    }
                    self.body_at = Some(i + 4);
                }
            }
            if self.body_at.is_some() && self.tokens(marker) >= tokens {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("no token {tokens} within {EVENT_WAIT:?}"));
            }
            self.sock
                .set_read_timeout(Some(left))
                .map_err(|e| e.to_string())?;
            match self.sock.read(&mut chunk) {
                Ok(0) => return Err("closed by the gateway".to_owned()),
                Ok(n) => self.got.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err(format!("no token {tokens} within {EVENT_WAIT:?}"));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }
}

/// Fills the shard's bounded pools before the readings: [`WARM_REQUESTS`] unstreamed requests
/// of the scenario's kind, all waiting for the mock's answer at once, each holding its buffers
/// (client read, upstream read, write, an LLM request's body set); when they end, the shard
/// keeps as many of each as its spares hold. Without this, spares filled by a burst of tokens
/// between the two readings (on io_uring a write holds its buffer until its completion, and
/// the tokens of many streams complete together) were counted as the streams' own: up to
/// 13 KiB per stream more in one step than in the next.
fn warm_up(gw: &Gateway, scenario: Scenario) {
    let request = scenario.request(true);
    let mut socks = Vec::with_capacity(WARM_REQUESTS);
    for i in 0..WARM_REQUESTS {
        let mut sock = TcpStream::connect_timeout(&gw.addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{}: connect warm-up {i}: {e}", scenario.name()));
        sock.set_write_timeout(Some(EVENT_WAIT)).expect("timeout");
        sock.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{}: send warm-up {i}: {e}", scenario.name()));
        socks.push(sock);
    }
    for (i, mut sock) in socks.into_iter().enumerate() {
        sock.set_read_timeout(Some(EVENT_WAIT)).expect("timeout");
        let mut answer = Vec::new();
        if let Err(e) = sock.read_to_end(&mut answer) {
            panic!("{}: warm-up {i}: {e}", scenario.name());
        }
        assert!(
            answer.starts_with(b"HTTP/1.1 200"),
            "{}: warm-up {i} answered {:?}",
            scenario.name(),
            String::from_utf8_lossy(&answer)
        );
    }
}

/// Opens `n` streams (all requests sent first, then each one's head and first token read).
fn open(gw: &Gateway, scenario: Scenario, n: usize, streams: &mut Vec<Stream>) {
    let request = scenario.request(false);
    let first = streams.len();
    for i in 0..n {
        let mut sock = TcpStream::connect_timeout(&gw.addr(), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{}: connect stream {}: {e}", scenario.name(), first + i));
        sock.set_nodelay(true).expect("nodelay");
        sock.set_write_timeout(Some(EVENT_WAIT)).expect("timeout");
        sock.write_all(request.as_bytes())
            .unwrap_or_else(|e| panic!("{}: send stream {}: {e}", scenario.name(), first + i));
        streams.push(Stream {
            sock,
            got: Vec::new(),
            body_at: None,
        });
    }
    for (i, s) in streams.iter_mut().enumerate().skip(first) {
        if let Err(why) = s.wait_tokens(scenario.token_marker(), 1) {
            panic!(
                "{}: stream {i} did not start: {why}; got {:?}",
                scenario.name(),
                String::from_utf8_lossy(&s.got)
            );
        }
    }
}

/// A sample `NAME VALUE` (no labels) of a `/metrics` text.
fn sample(metrics: &str, name: &str) -> Option<u64> {
    metrics.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok())?
    })
}

/// The shard's open client connections (`shardgate_connections{shard="0"}`).
fn connections_open(metrics: &str) -> Option<usize> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("shardgate_connections{shard=\"0\"} "))
        .and_then(|v| v.trim().parse().ok())
}

/// The least `shardgate_heap_live_bytes` of a few scrapes.
fn live_bytes(gw: &Gateway) -> u64 {
    let mut least = u64::MAX;
    for _ in 0..SCRAPES_PER_READING {
        shardgate_tests::sleep(SCRAPE_PAUSE);
        let m = gw.metrics();
        let live = sample(&m, "shardgate_heap_live_bytes")
            .unwrap_or_else(|| panic!("no shardgate_heap_live_bytes on /metrics:\n{m}"));
        least = least.min(live);
    }
    least
}

fn measure(scenario: Scenario, driver: Driver) {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let nofile = shardgate_engine::runtime::raise_nofile();
    assert!(
        nofile >= NOFILE_NEEDED,
        "the open-file limit is {nofile}; this test needs {NOFILE_NEEDED} \
         ({STREAMS_TOTAL} streams over the engine, the mock and the test): raise `ulimit -Hn`"
    );
    let mock = BenchUpstream::start(&MOCK_ARGS);
    let config = scenario.config(mock.addr());
    let gw = Gateway::try_start_bin(
        &shardgate_counted_bin(),
        &config,
        &[("SHARDGATE_DRIVER", driver.env_value())],
        &[],
    )
    .unwrap_or_else(|e| panic!("{e}\n--- config ---\n{config}"));

    warm_up(&gw, scenario);
    // And a burst of streams, larger than a step's, closed again: the spares a burst of
    // first tokens needs are there before the first reading.
    let mut warm = Vec::with_capacity(WARM_REQUESTS);
    open(&gw, scenario, WARM_REQUESTS, &mut warm);
    drop(warm);
    let closed =
        shardgate_tests::wait_until(EVENT_WAIT, || connections_open(&gw.metrics()) == Some(0));
    assert!(
        closed,
        "{}: the warm-up streams were not closed",
        scenario.name()
    );
    let mut streams = Vec::with_capacity(STREAMS_TOTAL);
    open(&gw, scenario, STREAMS_PER_STEP, &mut streams);
    let l1 = live_bytes(&gw);
    open(&gw, scenario, STREAMS_PER_STEP, &mut streams);
    let l2 = live_bytes(&gw);
    let per_stream = (i64::try_from(l2).unwrap_or(i64::MAX)
        - i64::try_from(l1).unwrap_or(i64::MAX))
        / STREAMS_PER_STEP as i64;
    println!(
        "stream_memory {} on {}: {per_stream} bytes per open stream \
         (live heap {l1} B with {STREAMS_PER_STEP} streams, {l2} B with {STREAMS_TOTAL})",
        scenario.name(),
        driver.env_value()
    );

    // Every stream still open, and still relaying: each gets the token after the one it had.
    for (i, s) in streams.iter_mut().enumerate() {
        let next = s.tokens(scenario.token_marker()) + 1;
        if let Err(why) = s.wait_tokens(scenario.token_marker(), next) {
            panic!(
                "{}: stream {i} stalled or dropped after the measurement: {why}",
                scenario.name()
            );
        }
    }
    assert_eq!(
        connections_open(&gw.metrics()),
        Some(STREAMS_TOTAL),
        "{}: the gateway does not count every stream's connection open",
        scenario.name()
    );
    assert!(
        per_stream <= STREAM_BYTES_MAX,
        "{} on {}: {per_stream} heap bytes per open stream, more than {STREAM_BYTES_MAX} \
         (live heap {l1} B with {STREAMS_PER_STEP} streams, {l2} B with {STREAMS_TOTAL})",
        scenario.name(),
        driver.env_value()
    );
    drop(streams);
    drop(gw);
    drop(mock);
}

fn plain_stream(driver: Driver) {
    measure(Scenario::Plain, driver);
}

fn tenant_stream(driver: Driver) {
    measure(Scenario::Tenant, driver);
}

fn translated_stream(driver: Driver) {
    measure(Scenario::Translated, driver);
}
