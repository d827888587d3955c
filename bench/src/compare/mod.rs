//! `shardgate-bench compare`: shardgate, nginx and HAProxy side by side, in one command.
//!
//! Method (the one of `bench/scripts/proxy-cpu.sh`, with this crate's own upstream and load
//! generator): the mock upstream (`shardgate-bench upstream`) and the load generator
//! (`shardgate-bench load --json`) share the load core; each proxy runs alone on the proxy core
//! (`taskset -c`), with its configuration from `bench/peers/`. Per run: start the proxy fresh,
//! wait for a 200 through it, warm up, read utime+stime of all its processes (nginx: master and
//! worker) from `/proc/PID/stat`, run the measured load, read them again with VmRSS, stop the
//! proxy. Proxies are interleaved round-robin, the starting one rotating each round; tables show
//! medians over the ok runs. A run during which other processes used the two cores, or the
//! hypervisor stole the proxy's core, is marked noisy, left out and repeated.
//!
//! The `sse` scenario, per run, also: reads the proxy's RSS once it answers, before any load
//! (idle); runs the warm-up with `--drain` (its streams finish instead of being cut off) and
//! then waits until the proxy holds no client connection, so the measured streams do not share
//! the proxy with the warm-up's dead ones; samples the proxy's RSS and the client connections
//! it holds half a stream after every stream has arrived; and reports the growth per stream.
//! `--sse-arrival burst,steady` runs it once per arrival mode: all streams at once, or their
//! first requests spread evenly over `--sse-ramp-ms` (default: one stream's lifetime). The open
//! files each process needs are checked before any run (and, as root, the limit raised): a
//! proxy that cannot hold the streams is skipped with the limit named, not measured.
//!
//! # Layout
//! - this file: the command line, the scenarios and proxies, and the pure functions that turn
//!   them into command lines.
//! - [`run`]: the orchestration (processes, readiness, measuring, output files).
//! - [`procstat`]: `/proc` parsing (ticks, RSS, per-CPU busy and steal, process trees).
//! - [`stats`]: medians, run status and noise classification, summaries, ratios.
//! - [`table`]: the Markdown tables.
//! - [`child`]: child processes stopped on drop and on Ctrl-C.
//! - [`probe`]: a bounded blocking HTTP request (readiness, SSE buffering check).

mod child;
mod probe;
mod procstat;
mod run;
mod stats;
mod table;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Port of the mock upstream; the peer configs in `bench/peers/` proxy to it. The proxies'
/// ports follow it (see [`ProxyKind::port`]); `--port-base` shifts all four.
pub const UPSTREAM_PORT: u16 = 18080;
/// The last port the peer configs use.
const PEER_PORT_LAST: u16 = UPSTREAM_PORT + 3;
/// The request every scenario sends.
pub const REQ_PATH: &str = "/v1/chat/completions";
/// The README's small chat request.
pub const CHAT_BODY: &str =
    r#"{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}"#;
/// The same, streamed.
pub const CHAT_BODY_STREAM: &str =
    r#"{"model":"demo","stream":true,"messages":[{"role":"user","content":"Hello World!"}]}"#;
/// Headers of every request (besides Host and Content-Length).
pub const REQ_HEADERS: [&str; 2] = [
    "Content-Type: application/json",
    "Authorization: Bearer sk-demo",
];

/// Command-line arguments of `shardgate-bench compare`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompareArgs {
    /// Proxies to measure (comma-separated). One that is not installed is skipped with a message.
    /// `shardgate-epoll` runs shardgate on monoio's epoll driver.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "shardgate,nginx,haproxy"
    )]
    pub proxies: Vec<ProxyKind>,
    /// Scenarios (comma-separated); they run in the order json, sse, rate.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "json,sse,rate"
    )]
    pub scenarios: Vec<ScenarioKind>,
    /// Rounds; each round runs every proxy once, the starting proxy rotating.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Measured load per run (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = stats::parse_duration)]
    pub duration: Duration,
    /// Warm-up load before each measured run, not measured.
    #[arg(long, default_value = "2s", value_parser = stats::parse_duration)]
    pub warmup: Duration,
    /// The shardgate binary [default: target/release/shardgate next to this binary, or in the
    /// repository that holds bench/peers].
    #[arg(long)]
    pub shardgate_bin: Option<PathBuf>,
    /// nginx binary (name on PATH, /usr/sbin included, or a path).
    #[arg(long, default_value = "nginx")]
    pub nginx_bin: String,
    /// HAProxy binary (name on PATH, /usr/sbin included, or a path).
    #[arg(long, default_value = "haproxy")]
    pub haproxy_bin: String,
    /// The peer configurations [default: bench/peers of the repository above this binary or the
    /// current directory].
    #[arg(long)]
    pub peers: Option<PathBuf>,
    /// Ports: the upstream on this one, nginx, HAProxy and shardgate on the next three (the peer
    /// configs' 18080..18083). Other values run copies of the configs with the ports rewritten.
    #[arg(long, default_value_t = UPSTREAM_PORT, value_parser = clap::value_parser!(u16).range(1024..=65_000))]
    pub port_base: u16,
    /// CPU the proxy runs on, alone.
    #[arg(long, default_value_t = 0)]
    pub proxy_cpu: usize,
    /// CPU the upstream and the load generator share.
    #[arg(long, default_value_t = 1)]
    pub load_cpu: usize,
    /// Output directory for raw per-run data [default: /tmp/shardgate-compare-<timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the machine-readable result (also OUT/result.json) on stdout; tables go to stderr.
    #[arg(long)]
    pub json: bool,
    /// Keep-alive connections of the json and rate scenarios.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub conns: u32,
    /// Concurrent streams of the sse scenario.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sse_streams: u32,
    /// SSE chunks per stream (upstream --chunks).
    #[arg(long, default_value_t = 8)]
    pub sse_chunks: u32,
    /// Pause between SSE chunks, ms (upstream --chunk-interval-ms).
    #[arg(long, default_value_t = 50)]
    pub sse_chunk_interval_ms: u32,
    /// Time to the first SSE chunk, ms (upstream --ttft-ms).
    #[arg(long, default_value_t = 50)]
    pub sse_ttft_ms: u32,
    /// How the sse scenario's streams arrive (comma-separated; each runs as its own table):
    /// `burst`, all at once; `steady`, their first requests spread evenly over --sse-ramp-ms.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "burst")]
    pub sse_arrival: Vec<Arrival>,
    /// The ramp of `--sse-arrival steady`, ms [default: one stream's lifetime, ttft + chunks x
    /// interval, so that the last stream arrives as the first one ends].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
    pub sse_ramp_ms: Option<u32>,
    /// Open-loop rate of the rate scenario, as a % of nginx's median req/s in the json scenario
    /// of this run (of the first proxy measured when nginx has none).
    #[arg(long, default_value_t = 50.0)]
    pub rate_percent: f64,
    /// Open-loop rate of the rate scenario in req/s, instead of --rate-percent.
    #[arg(long)]
    pub rate_rps: Option<f64>,
    /// A run during which other processes used more than this % of a core on the two cores is
    /// noisy (100 or more keeps every run).
    #[arg(long, default_value_t = 10.0)]
    pub foreign_max_pct: f64,
    /// A run during which the hypervisor stole more than this % of the proxy core is noisy.
    #[arg(long, default_value_t = 5.0)]
    pub steal_max_pct: f64,
    /// Before each run, wait up to this long for the two cores to be quiet.
    #[arg(long, default_value = "120s", value_parser = stats::parse_duration)]
    pub quiet_wait: Duration,
    /// Repeat a noisy run up to this many times (noisy runs stay in the raw data).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub noisy_retries: u32,
}

/// Run `shardgate-bench compare`.
pub fn run(args: CompareArgs) -> anyhow::Result<()> {
    run::compare(args)
}

/// A proxy under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ProxyKind {
    Shardgate,
    Nginx,
    Haproxy,
    /// shardgate with `SHARDGATE_DRIVER=epoll`.
    #[value(name = "shardgate-epoll")]
    ShardgateEpoll,
}

impl ProxyKind {
    pub fn name(self) -> &'static str {
        match self {
            ProxyKind::Shardgate => "shardgate",
            ProxyKind::Nginx => "nginx",
            ProxyKind::Haproxy => "haproxy",
            ProxyKind::ShardgateEpoll => "shardgate-epoll",
        }
    }

    /// The port its config in `bench/peers/` listens on (127.0.0.1), before `--port-base`.
    pub fn port(self) -> u16 {
        match self {
            ProxyKind::Nginx => 18081,
            ProxyKind::Haproxy => 18082,
            ProxyKind::Shardgate | ProxyKind::ShardgateEpoll => 18083,
        }
    }
}

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum ScenarioKind {
    /// Small chat request, keep-alive connections, closed loop: saturation req/s and CPU/request.
    Json,
    /// Streamed chat completions (SSE), many concurrent streams: CPU per stream, TTFB/TTFE/gaps.
    Sse,
    /// The json request open-loop at a fixed rate below saturation: tail latency.
    Rate,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::Json => "json",
            ScenarioKind::Sse => "sse",
            ScenarioKind::Rate => "rate",
        }
    }

    pub fn is_stream(self) -> bool {
        self == ScenarioKind::Sse
    }

    pub fn body(self) -> &'static str {
        if self.is_stream() {
            CHAT_BODY_STREAM
        } else {
            CHAT_BODY
        }
    }
}

/// How the streams of the sse scenario arrive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum Arrival {
    /// Every stream's first request at once.
    Burst,
    /// The first requests spread evenly over the ramp (`--sse-ramp-ms`).
    Steady,
}

impl Arrival {
    pub fn name(self) -> &'static str {
        match self {
            Arrival::Burst => "burst",
            Arrival::Steady => "steady",
        }
    }
}

/// How long one stream of the sse scenario lasts at the upstream, ms: the first chunk after
/// `ttft`, then one chunk per interval (the last one followed by `[DONE]`).
pub fn stream_lifetime_ms(args: &CompareArgs) -> u64 {
    u64::from(args.sse_ttft_ms) + u64::from(args.sse_chunks) * u64::from(args.sse_chunk_interval_ms)
}

/// The ramp over which the streams' first requests are spread (zero for a burst).
pub fn ramp(arrival: Arrival, args: &CompareArgs) -> Duration {
    match arrival {
        Arrival::Burst => Duration::ZERO,
        Arrival::Steady => Duration::from_millis(
            args.sse_ramp_ms
                .map_or_else(|| stream_lifetime_ms(args), u64::from),
        ),
    }
}

/// When, from the start of the measured load, the proxy's RSS is sampled: half a stream after
/// the last stream arrived, when every stream is open and none has ended (closed loop: after
/// the ramp, each connection is always in a stream but for the instant between two).
pub fn rss_sample_at(ramp: Duration, args: &CompareArgs) -> Duration {
    ramp + Duration::from_millis(stream_lifetime_ms(args) / 2)
}

/// Open files one proxy needs per stream: the client's socket and the upstream's (shardgate
/// kept a third, a cloned handle on each upstream connection, until issue 21).
pub fn fds_per_stream(proxy: ProxyKind) -> u64 {
    match proxy {
        ProxyKind::Shardgate
        | ProxyKind::ShardgateEpoll
        | ProxyKind::Nginx
        | ProxyKind::Haproxy => 2,
    }
}

/// Open files beyond the streams' (listeners, logs, io_uring, epoll, pipes; measured at 1,000
/// streams: shardgate 11, nginx master + worker 19).
pub const FDS_SPARE: u64 = 128;

/// Open files `proxy` needs to hold `streams` streams.
pub fn fds_needed(proxy: ProxyKind, streams: u32) -> u64 {
    fds_per_stream(proxy) * u64::from(streams) + FDS_SPARE
}

/// The most streams `proxy` can hold with `nofile` open files.
pub fn max_streams(proxy: ProxyKind, nofile: u64) -> u64 {
    nofile.saturating_sub(FDS_SPARE) / fds_per_stream(proxy)
}

/// The streams a peer config lets its proxy hold, and the setting that caps it, when the
/// config names one: nginx `worker_connections` (2 per stream) and `worker_rlimit_nofile` (2
/// per stream), HAProxy `maxconn` (one per client connection), shardgate
/// `requests_inflight_max` and `connections_max` (one per stream; defaults 8,192 and 16,384
/// when absent).
pub fn config_stream_cap(proxy: ProxyKind, text: &str) -> Option<(u64, &'static str)> {
    let setting = |key: &str| -> Option<u64> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter_map(|l| l.strip_prefix(key))
            .filter(|rest| rest.starts_with([' ', '\t', '=']))
            .filter_map(|rest| {
                rest.trim_matches(|c: char| c == '=' || c == ';' || c.is_whitespace())
                    .parse()
                    .ok()
            })
            .next_back()
    };
    let caps: Vec<(u64, &'static str)> = match proxy {
        ProxyKind::Nginx => vec![
            (setting("worker_connections")? / 2, "worker_connections"),
            (
                setting("worker_rlimit_nofile").unwrap_or(u64::MAX) / 2,
                "worker_rlimit_nofile",
            ),
        ],
        ProxyKind::Haproxy => vec![(setting("maxconn")?, "maxconn")],
        ProxyKind::Shardgate | ProxyKind::ShardgateEpoll => vec![
            (
                setting("requests_inflight_max").unwrap_or(8192),
                "server.requests_inflight_max",
            ),
            (
                setting("connections_max").unwrap_or(16_384),
                "server.connections_max",
            ),
        ],
    };
    caps.into_iter().min_by_key(|c| c.0)
}

/// The settings a scenario's command lines are built from.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadPlan {
    pub scenario: ScenarioKind,
    pub conns: u32,
    pub duration: Duration,
    /// Open-loop rate, req/s (the rate scenario).
    pub rate: Option<f64>,
    pub timeout_ms: u64,
    /// The connections' first requests spread over this (zero: all at once).
    pub ramp: Duration,
    /// Let the responses in flight at the end complete (the warm-up).
    pub drain: bool,
}

/// `shardgate-bench load ...` arguments (after the executable) for one run.
pub fn load_args(plan: &LoadPlan, port: u16) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "load".into(),
        format!("http://127.0.0.1:{port}{REQ_PATH}"),
        "-c".into(),
        plan.conns.to_string(),
        "-d".into(),
        stats::duration_arg(plan.duration),
        "-t".into(),
        "1".into(),
        "--method".into(),
        "POST".into(),
    ];
    for h in REQ_HEADERS {
        a.push("-H".into());
        a.push(h.into());
    }
    a.push("--body".into());
    a.push(plan.scenario.body().into());
    if plan.scenario.is_stream() {
        a.push("--stream".into());
    }
    if let Some(r) = plan.rate {
        a.push("--rate".into());
        a.push(format!("{}", r.round()));
    }
    a.push("--timeout-ms".into());
    a.push(plan.timeout_ms.to_string());
    if !plan.ramp.is_zero() {
        a.push("--ramp-ms".into());
        a.push(plan.ramp.as_millis().to_string());
    }
    if plan.drain {
        a.push("--drain".into());
    }
    a.push("--json".into());
    a
}

/// `port` (one of the peer configs' ports) moved to `--port-base`.
pub fn shifted(port: u16, base: u16) -> u16 {
    port - UPSTREAM_PORT + base
}

/// A peer config with its `127.0.0.1:18080`..`18083` addresses moved to `base`.
pub fn rewrite_ports(text: &str, base: u16) -> String {
    // Two passes through markers, so that a shift by less than 4 never moves a port twice.
    let mut t = text.to_string();
    for p in UPSTREAM_PORT..=PEER_PORT_LAST {
        t = t.replace(
            &format!("127.0.0.1:{p}"),
            &format!("127.0.0.1:\u{0}{p}\u{0}"),
        );
    }
    for p in UPSTREAM_PORT..=PEER_PORT_LAST {
        t = t.replace(&format!("\u{0}{p}\u{0}"), &shifted(p, base).to_string());
    }
    t
}

/// `shardgate-bench upstream ...` arguments for a scenario.
pub fn upstream_args(scenario: ScenarioKind, args: &CompareArgs) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "upstream".into(),
        "--listen".into(),
        format!("127.0.0.1:{}", args.port_base),
        "--threads".into(),
        "1".into(),
    ];
    if scenario.is_stream() {
        for (k, v) in [
            ("--ttft-ms", args.sse_ttft_ms),
            ("--chunks", args.sse_chunks),
            ("--chunk-interval-ms", args.sse_chunk_interval_ms),
        ] {
            a.push(k.into());
            a.push(v.to_string());
        }
    }
    a
}

/// How to start one proxy: program, arguments, extra environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The config file of `proxy` for `scenario` in `bench/peers/`.
pub fn peer_config(proxy: ProxyKind, scenario: ScenarioKind) -> &'static str {
    match (proxy, scenario.is_stream()) {
        (ProxyKind::Nginx, false) => "nginx-proxy.conf",
        // proxy_buffering off, a pool and fd limits for thousands of streams.
        (ProxyKind::Nginx, true) => "nginx-proxy-sse.conf",
        (ProxyKind::Haproxy, false) => "haproxy.cfg",
        // option http-no-delay: no MSG_MORE hold (~200 ms) on each small SSE event.
        (ProxyKind::Haproxy, true) => "haproxy-sse.cfg",
        (ProxyKind::Shardgate | ProxyKind::ShardgateEpoll, false) => "shardgate.toml",
        (ProxyKind::Shardgate | ProxyKind::ShardgateEpoll, true) => "shardgate-sse.toml",
    }
}

/// The command line of one proxy run. `prefix` is nginx's throw-away prefix directory.
pub fn proxy_command(
    proxy: ProxyKind,
    scenario: ScenarioKind,
    bin: &Path,
    peers: &Path,
    prefix: &Path,
) -> ProxyCommand {
    let conf = peers
        .join(peer_config(proxy, scenario))
        .display()
        .to_string();
    let (args, env): (Vec<String>, Vec<(String, String)>) = match proxy {
        ProxyKind::Nginx => (
            vec![
                "-p".into(),
                format!("{}/", prefix.display()),
                "-e".into(),
                prefix.join("error.log").display().to_string(),
                "-c".into(),
                conf,
            ],
            vec![],
        ),
        ProxyKind::Haproxy => (vec!["-db".into(), "-f".into(), conf], vec![]),
        ProxyKind::Shardgate => (vec!["--config".into(), conf], vec![]),
        ProxyKind::ShardgateEpoll => (
            vec!["--config".into(), conf],
            vec![("SHARDGATE_DRIVER".into(), "epoll".into())],
        ),
    };
    ProxyCommand {
        program: bin.to_path_buf(),
        args,
        env,
    }
}

/// The first directory among `starts` and their ancestors that holds `bench/peers` with the
/// peer configs.
pub fn find_peers(starts: &[PathBuf]) -> Option<PathBuf> {
    starts
        .iter()
        .flat_map(|s| s.ancestors())
        .map(|d| d.join("bench").join("peers"))
        .find(|p| p.join("nginx-proxy.conf").is_file() && p.join("haproxy.cfg").is_file())
}

/// An executable named `name` (a path, or looked up in `dirs`).
pub fn which(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return is_executable(&p).then_some(p);
    }
    dirs.iter().map(|d| d.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `$PATH` plus the sbin directories (nginx and haproxy live in /usr/sbin on Debian).
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        let d = PathBuf::from(d);
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// `YYYYMMDD-HHMMSS` (UTC) for a Unix time, for the default output directory.
pub fn timestamp(unix_s: u64) -> String {
    let days = i64::try_from(unix_s / 86_400).unwrap_or(0);
    let secs = unix_s % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: CompareArgs,
    }

    fn parse(argv: &[&str]) -> CompareArgs {
        Cli::try_parse_from(std::iter::once("compare").chain(argv.iter().copied()))
            .unwrap()
            .args
    }

    #[test]
    fn defaults() {
        let a = parse(&[]);
        assert_eq!(
            a.proxies,
            vec![ProxyKind::Shardgate, ProxyKind::Nginx, ProxyKind::Haproxy]
        );
        assert_eq!(
            a.scenarios,
            vec![ScenarioKind::Json, ScenarioKind::Sse, ScenarioKind::Rate]
        );
        assert_eq!(
            (a.rounds, a.duration, a.warmup),
            (3, Duration::from_secs(10), Duration::from_secs(2))
        );
        assert_eq!(
            (a.proxy_cpu, a.load_cpu, a.conns, a.sse_streams),
            (0, 1, 64, 1000)
        );
        assert!(!a.json);
    }

    #[test]
    fn lists_and_durations_parse() {
        let a = parse(&[
            "--proxies",
            "nginx,shardgate-epoll",
            "--scenarios",
            "rate,json",
            "--rounds",
            "5",
            "--duration",
            "5s",
            "--json",
        ]);
        assert_eq!(a.proxies, vec![ProxyKind::Nginx, ProxyKind::ShardgateEpoll]);
        assert_eq!(a.scenarios, vec![ScenarioKind::Rate, ScenarioKind::Json]);
        assert_eq!(
            (a.rounds, a.duration, a.json),
            (5, Duration::from_secs(5), true)
        );
        let bad = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("compare").chain(argv.iter().copied())).is_err()
        };
        assert!(bad(&["--proxies", "envoy"]));
        assert!(bad(&["--rounds", "0"]));
        assert!(bad(&["--duration", "soon"]));
    }

    #[test]
    fn load_command_lines() {
        let json = LoadPlan {
            scenario: ScenarioKind::Json,
            conns: 64,
            duration: Duration::from_secs(5),
            rate: None,
            timeout_ms: 10_000,
            ramp: Duration::ZERO,
            drain: false,
        };
        let a = load_args(&json, 18081);
        assert_eq!(
            a,
            [
                "load",
                "http://127.0.0.1:18081/v1/chat/completions",
                "-c",
                "64",
                "-d",
                "5s",
                "-t",
                "1",
                "--method",
                "POST",
                "-H",
                "Content-Type: application/json",
                "-H",
                "Authorization: Bearer sk-demo",
                "--body",
                CHAT_BODY,
                "--timeout-ms",
                "10000",
                "--json",
            ]
        );
        let sse = LoadPlan {
            scenario: ScenarioKind::Sse,
            conns: 1000,
            ..json.clone()
        };
        let a = load_args(&sse, 18083);
        assert!(a.contains(&"--stream".to_string()));
        assert!(a.contains(&CHAT_BODY_STREAM.to_string()));
        let rate = LoadPlan {
            scenario: ScenarioKind::Rate,
            rate: Some(25_000.4),
            ..json
        };
        let a = load_args(&rate, 18082);
        let i = a.iter().position(|x| x == "--rate").unwrap();
        assert_eq!(a[i + 1], "25000");
        assert!(!a.contains(&"--stream".to_string()));
        assert!(!a.contains(&"--drain".to_string()) && !a.contains(&"--ramp-ms".to_string()));
        let steady_warmup = LoadPlan {
            scenario: ScenarioKind::Sse,
            ramp: Duration::from_millis(4200),
            drain: true,
            ..rate
        };
        let a = load_args(&steady_warmup, 18083);
        let i = a.iter().position(|x| x == "--ramp-ms").unwrap();
        assert_eq!(a[i + 1], "4200");
        assert!(a.contains(&"--drain".to_string()));
        assert_eq!(a.last().unwrap(), "--json");
    }

    #[test]
    fn arrival_flags_and_ramps() {
        let a = parse(&[]);
        assert_eq!(a.sse_arrival, vec![Arrival::Burst]);
        assert_eq!(a.sse_ramp_ms, None);
        // Defaults: 50 + 8 x 50 ms.
        assert_eq!(stream_lifetime_ms(&a), 450);
        assert_eq!(ramp(Arrival::Burst, &a), Duration::ZERO);
        assert_eq!(ramp(Arrival::Steady, &a), Duration::from_millis(450));
        let a = parse(&[
            "--sse-arrival",
            "burst,steady",
            "--sse-ttft-ms",
            "200",
            "--sse-chunks",
            "20",
            "--sse-chunk-interval-ms",
            "200",
        ]);
        assert_eq!(a.sse_arrival, vec![Arrival::Burst, Arrival::Steady]);
        assert_eq!(stream_lifetime_ms(&a), 4200);
        assert_eq!(ramp(Arrival::Steady, &a), Duration::from_millis(4200));
        assert_eq!(
            rss_sample_at(Duration::ZERO, &a),
            Duration::from_millis(2100)
        );
        assert_eq!(
            rss_sample_at(ramp(Arrival::Steady, &a), &a),
            Duration::from_millis(6300)
        );
        let a = parse(&["--sse-arrival", "steady", "--sse-ramp-ms", "1000"]);
        assert_eq!(ramp(Arrival::Steady, &a), Duration::from_millis(1000));
        let bad = |argv: &[&str]| {
            Cli::try_parse_from(std::iter::once("compare").chain(argv.iter().copied())).is_err()
        };
        assert!(bad(&["--sse-arrival", "trickle"]));
        assert!(bad(&["--sse-ramp-ms", "0"]));
    }

    #[test]
    fn fds_per_proxy() {
        assert_eq!(fds_needed(ProxyKind::Shardgate, 10_000), 20_000 + FDS_SPARE);
        assert_eq!(fds_needed(ProxyKind::Nginx, 10_000), 20_000 + FDS_SPARE);
        assert_eq!(fds_needed(ProxyKind::Haproxy, 1000), 2000 + FDS_SPARE);
        // This VM's hard limit of 20,000: each proxy fits 9,936 streams.
        assert_eq!(max_streams(ProxyKind::Nginx, 20_000), 9_936);
        assert_eq!(max_streams(ProxyKind::Shardgate, 20_000), 9_936);
        assert_eq!(max_streams(ProxyKind::Nginx, 100), 0);
    }

    #[test]
    fn stream_caps_of_the_configs() {
        let nginx = "worker_rlimit_nofile 16384;\nevents {\n    worker_connections 8192;\n}\n";
        assert_eq!(
            config_stream_cap(ProxyKind::Nginx, nginx),
            Some((4096, "worker_connections"))
        );
        let nginx = "worker_rlimit_nofile 16384;\n worker_connections 65536; # more\n";
        assert_eq!(
            config_stream_cap(ProxyKind::Nginx, nginx),
            Some((8192, "worker_rlimit_nofile"))
        );
        assert_eq!(
            config_stream_cap(ProxyKind::Haproxy, "global\n    maxconn 8192\n"),
            Some((8192, "maxconn"))
        );
        assert_eq!(config_stream_cap(ProxyKind::Haproxy, "global\n"), None);
        assert_eq!(
            config_stream_cap(ProxyKind::Shardgate, "[server]\nlisten = \"x\"\n"),
            Some((8192, "server.requests_inflight_max"))
        );
        assert_eq!(
            config_stream_cap(
                ProxyKind::Shardgate,
                "requests_inflight_max = 32768\nconnections_max = 20000\n# connections_max = 1\n"
            ),
            Some((20_000, "server.connections_max"))
        );
        // The configs in bench/peers hold 10,000 streams.
        let peers = find_peers(&[PathBuf::from(env!("CARGO_MANIFEST_DIR"))]).unwrap();
        for p in [ProxyKind::Nginx, ProxyKind::Haproxy, ProxyKind::Shardgate] {
            let text =
                std::fs::read_to_string(peers.join(peer_config(p, ScenarioKind::Sse))).unwrap();
            let (cap, what) = config_stream_cap(p, &text).unwrap();
            assert!(cap >= 10_000, "{}: {what} allows {cap} streams", p.name());
        }
    }

    #[test]
    fn upstream_command_lines() {
        let args = parse(&[]);
        assert_eq!(
            upstream_args(ScenarioKind::Json, &args),
            ["upstream", "--listen", "127.0.0.1:18080", "--threads", "1"]
        );
        let s = upstream_args(ScenarioKind::Sse, &args);
        assert_eq!(
            &s[5..],
            [
                "--ttft-ms",
                "50",
                "--chunks",
                "8",
                "--chunk-interval-ms",
                "50"
            ]
        );
    }

    #[test]
    fn proxy_command_lines() {
        let peers = Path::new("/r/bench/peers");
        let pre = Path::new("/o/run/nginx");
        let n = proxy_command(
            ProxyKind::Nginx,
            ScenarioKind::Json,
            Path::new("/usr/sbin/nginx"),
            peers,
            pre,
        );
        assert_eq!(
            n.args,
            [
                "-p",
                "/o/run/nginx/",
                "-e",
                "/o/run/nginx/error.log",
                "-c",
                "/r/bench/peers/nginx-proxy.conf"
            ]
        );
        let n = proxy_command(
            ProxyKind::Nginx,
            ScenarioKind::Sse,
            Path::new("nginx"),
            peers,
            pre,
        );
        assert_eq!(n.args[5], "/r/bench/peers/nginx-proxy-sse.conf");
        let h = proxy_command(
            ProxyKind::Haproxy,
            ScenarioKind::Rate,
            Path::new("haproxy"),
            peers,
            pre,
        );
        assert_eq!(h.args, ["-db", "-f", "/r/bench/peers/haproxy.cfg"]);
        let e = proxy_command(
            ProxyKind::ShardgateEpoll,
            ScenarioKind::Json,
            Path::new("sg"),
            peers,
            pre,
        );
        assert_eq!(e.args, ["--config", "/r/bench/peers/shardgate.toml"]);
        assert_eq!(
            e.env,
            [("SHARDGATE_DRIVER".to_string(), "epoll".to_string())]
        );
        assert!(proxy_command(
            ProxyKind::Shardgate,
            ScenarioKind::Json,
            Path::new("sg"),
            peers,
            pre
        )
        .env
        .is_empty());
    }

    #[test]
    fn every_peer_config_exists_in_the_repo() {
        let peers = find_peers(&[PathBuf::from(env!("CARGO_MANIFEST_DIR"))]).unwrap();
        for p in [ProxyKind::Nginx, ProxyKind::Haproxy, ProxyKind::Shardgate] {
            for s in [ScenarioKind::Json, ScenarioKind::Sse, ScenarioKind::Rate] {
                let f = peers.join(peer_config(p, s));
                assert!(f.is_file(), "{} missing", f.display());
                let text = std::fs::read_to_string(&f).unwrap();
                assert!(
                    text.contains(&p.port().to_string()),
                    "{} does not listen on {}",
                    f.display(),
                    p.port()
                );
                assert!(
                    text.contains(&UPSTREAM_PORT.to_string())
                        || p == ProxyKind::Haproxy && text.contains("18080")
                );
            }
        }
        let sse = std::fs::read_to_string(peers.join("nginx-proxy-sse.conf")).unwrap();
        assert!(sse.contains("proxy_buffering off;"));
        let sse = std::fs::read_to_string(peers.join("haproxy-sse.cfg")).unwrap();
        assert!(sse.contains("option http-no-delay"));
    }

    #[test]
    fn find_peers_walks_up() {
        let repo = std::env::temp_dir().join(format!("sg-compare-peers-{}", std::process::id()));
        let peers = repo.join("bench/peers");
        std::fs::create_dir_all(&peers).unwrap();
        std::fs::create_dir_all(repo.join("target/release")).unwrap();
        assert_eq!(find_peers(&[repo.join("target/release")]), None);
        std::fs::write(peers.join("nginx-proxy.conf"), "").unwrap();
        std::fs::write(peers.join("haproxy.cfg"), "").unwrap();
        assert_eq!(
            find_peers(&[PathBuf::from("/nonexistent"), repo.join("target/release")]),
            Some(peers)
        );
        std::fs::remove_dir_all(&repo).unwrap();
    }

    #[test]
    fn which_finds_executables_only() {
        let dirs = vec![
            PathBuf::from("/nonexistent"),
            PathBuf::from("/bin"),
            PathBuf::from("/usr/bin"),
        ];
        assert!(which("sh", &dirs).is_some());
        assert!(which("no-such-binary-here", &dirs).is_none());
        assert!(which("/bin/sh", &[]).is_some());
        let plain = std::env::temp_dir().join(format!("sg-compare-plain-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        assert!(
            which(&plain.display().to_string(), &[]).is_none(),
            "not executable"
        );
        std::fs::remove_file(&plain).unwrap();
    }

    #[test]
    fn ports_move_with_the_base() {
        let conf = "listen 127.0.0.1:18081;\nserver 127.0.0.1:18080;\nendpoints = [\"http://127.0.0.1:18080\"]\n# 18084 stays\n127.0.0.1:18084";
        assert_eq!(rewrite_ports(conf, UPSTREAM_PORT), conf);
        assert_eq!(
            rewrite_ports(conf, 18081),
            "listen 127.0.0.1:18082;\nserver 127.0.0.1:18081;\nendpoints = [\"http://127.0.0.1:18081\"]\n# 18084 stays\n127.0.0.1:18084"
        );
        assert_eq!(
            rewrite_ports("bind 127.0.0.1:18082", 28080),
            "bind 127.0.0.1:28082"
        );
        assert_eq!(shifted(ProxyKind::Shardgate.port(), 28080), 28083);
        let a = parse(&["--port-base", "28080"]);
        assert_eq!(upstream_args(ScenarioKind::Json, &a)[2], "127.0.0.1:28080");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "19700101-000000");
        assert_eq!(timestamp(951_782_400), "20000229-000000");
        assert_eq!(timestamp(1_764_119_580), "20251126-011300");
    }
}
