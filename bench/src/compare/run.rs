//! The orchestration of `shardgate-bench compare`: the processes, readiness, the measured runs,
//! and the output files. Everything it starts is held by a [`ChildGuard`]; every wait is bounded
//! and checks for Ctrl-C.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};

use super::child::{ChildGuard, Interrupt};
use super::stats::{self, Metric, NoiseLimits, ProxySummary, RunFigures, RunStatus, Ticks};
use super::{
    config_stream_cap, fds_needed, fds_per_stream, find_peers, load_args, max_streams, peer_config,
    proxy_command, ramp, rewrite_ports, rss_sample_at, search_dirs, shifted, stream_lifetime_ms,
    table, timestamp, upstream_args, which, Arrival, CompareArgs, LoadPlan, ProxyKind,
    ScenarioKind, FDS_SPARE, REQ_HEADERS, REQ_PATH, UPSTREAM_PORT,
};
use super::{probe, procstat};
use shardgate_engine::runtime::raise_nofile;

/// How long a proxy or the upstream gets to answer its first 200.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deadline of one readiness probe (an SSE answer takes ttft + chunks × interval).
const PROBE_DEADLINE: Duration = Duration::from_secs(5);
/// The load generator may overrun its duration by this much before it is stopped.
const LOAD_SLACK: Duration = Duration::from_secs(30);
/// Pause after each run (sockets in TIME_WAIT, the next proxy's start).
const BETWEEN_RUNS: Duration = Duration::from_secs(1);
/// Client timeout of the load generator.
const LOAD_TIMEOUT_MS: u64 = 30_000;
/// Open files the load generator and the mock upstream need beyond one per stream.
const FDS_SPARE_LOAD: u64 = 256;
/// After the sse warm-up, wait at most this long beyond one stream's lifetime for the proxy to
/// hold no client connection.
const WARMUP_DRAIN_SLACK: Duration = Duration::from_secs(10);
/// With the sse scenario, compare raises the open-file limit (soft and hard, possible as root)
/// to at least this, which the processes it starts inherit: the peer configs ask for their own,
/// HAProxy 2 × `maxconn` + its spares (24,623 at maxconn 12,288) and refuses to start when the
/// hard limit is lower; nginx sets `worker_rlimit_nofile` (32,768) itself, as root.
const NOFILE_SSE_MIN: u64 = 65_536;
/// How often the drain wait looks at `/proc/net/tcp`.
const DRAIN_POLL: Duration = Duration::from_millis(250);

// ---------------------------------------------------------------- the load generator's JSON

/// Latency percentiles from `shardgate-bench load --json`, µs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// `stream` of the load generator's JSON (SSE mode).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct StreamStats {
    pub ttfb_us: Percentiles,
    pub ttfe_us: Percentiles,
    pub gap_us: Percentiles,
    pub streams: u64,
}

/// The result `shardgate-bench load --json` prints.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct LoadResult {
    pub requests: u64,
    pub duration_s: f64,
    pub rps: f64,
    pub bytes: u64,
    pub connections: u64,
    pub threads: u64,
    pub rate: Option<f64>,
    pub latency_us: Percentiles,
    pub errors: BTreeMap<String, u64>,
    pub stream: Option<StreamStats>,
}

impl LoadResult {
    /// The load generator prints one JSON object; take the last line that parses, so a stray
    /// line before it does not matter.
    pub fn parse(stdout: &str) -> anyhow::Result<Self> {
        stdout
            .lines()
            .rev()
            .filter(|l| l.trim_start().starts_with('{'))
            .find_map(|l| serde_json::from_str(l).ok())
            .or_else(|| serde_json::from_str(stdout.trim()).ok())
            .ok_or_else(|| anyhow!("no JSON result in the load generator's output"))
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Units of work: streams in SSE mode, else requests.
    pub fn units(&self) -> u64 {
        match &self.stream {
            Some(s) if s.streams > 0 => s.streams,
            _ => self.requests,
        }
    }
}

/// The figures of one run.
pub fn figures_of(
    load: &LoadResult,
    t: &Ticks,
    rss_kib: u64,
    clk_tck: u64,
    wall_s: f64,
) -> BTreeMap<Metric, f64> {
    let mut f = BTreeMap::new();
    let units = load.units();
    f.insert(Metric::Rps, load.rps);
    f.insert(Metric::P50Us, load.latency_us.p50);
    f.insert(Metric::P99Us, load.latency_us.p99);
    f.insert(Metric::P999Us, load.latency_us.p999);
    if let Some(s) = &load.stream {
        f.insert(Metric::TtfbP50Us, s.ttfb_us.p50);
        f.insert(Metric::TtfbP90Us, s.ttfb_us.p90);
        f.insert(Metric::TtfbP99Us, s.ttfb_us.p99);
        f.insert(Metric::TtfeP50Us, s.ttfe_us.p50);
        f.insert(Metric::TtfeP90Us, s.ttfe_us.p90);
        f.insert(Metric::TtfeP99Us, s.ttfe_us.p99);
        f.insert(Metric::GapP99Us, s.gap_us.p99);
    }
    for (m, ticks) in [
        (Metric::CpuUsPerReq, t.proxy),
        (Metric::UpstreamCpuUsPerReq, t.upstream),
        (Metric::LoadCpuUsPerReq, t.load),
    ] {
        if let Some(v) = stats::cpu_us_per(ticks, clk_tck, units) {
            f.insert(m, v);
        }
    }
    if wall_s > 0.0 && clk_tck > 0 {
        f.insert(
            Metric::ProxyCpuPct,
            100.0 * t.proxy as f64 / clk_tck as f64 / wall_s,
        );
    }
    f.insert(Metric::RssMib, rss_kib as f64 / 1024.0);
    f
}

/// The proxy's memory and connections with the streams open (sse).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StreamSample {
    /// VmRSS of the proxy's processes before any load, KiB.
    pub rss_idle_kib: u64,
    /// VmRSS sampled while the streams were open, KiB (0: not sampled).
    pub rss_open_kib: u64,
    /// Client connections the proxy held at the sample.
    pub held: u64,
    /// Open files of the proxy's processes at the sample.
    pub fds: u64,
    /// When the sample was taken, ms from the start of the measured load.
    pub at_ms: u64,
}

/// The RSS figures of a sse run with `streams` streams, added to `f`.
pub fn add_stream_figures(f: &mut BTreeMap<Metric, f64>, s: &StreamSample, streams: u32) {
    let mib = |kib: u64| kib as f64 / 1024.0;
    f.insert(Metric::RssIdleMib, mib(s.rss_idle_kib));
    if s.rss_open_kib == 0 {
        return;
    }
    f.insert(Metric::RssOpenMib, mib(s.rss_open_kib));
    f.insert(Metric::StreamsHeld, s.held as f64);
    if let Some(v) = stats::rss_per_stream_kib(s.rss_open_kib, s.rss_idle_kib, u64::from(streams)) {
        f.insert(Metric::RssPerStreamKib, v);
    }
}

// ---------------------------------------------------------------- one run's record

/// Everything measured in one run (a line of raw.tsv and of runs.jsonl).
#[derive(Debug, Clone, Serialize)]
pub struct RunRecord {
    pub scenario: &'static str,
    /// sse: how the streams arrived.
    pub arrival: Option<&'static str>,
    pub round: u32,
    pub attempt: u32,
    pub proxy: &'static str,
    pub status: RunStatus,
    pub reason: Option<String>,
    pub wall_s: f64,
    pub clk_tck: u64,
    pub ticks: Ticks,
    pub foreign_cpu_pct: f64,
    pub steal_proxy_cpu_pct: f64,
    pub rss_kib: u64,
    pub nprocs: usize,
    pub figures: BTreeMap<Metric, f64>,
    pub load: Option<LoadResult>,
    /// sse: RSS idle and with the streams open, connections held.
    pub sample: Option<StreamSample>,
    /// sse: how long after the warm-up the proxy took to let go of the warm-up's connections,
    /// s, and how many it still held when the wait ended.
    pub warmup_drain_s: Option<f64>,
    pub warmup_left: Option<u64>,
}

/// The figures of each run, as the summaries read them.
fn run_figures(records: &[RunRecord]) -> Vec<RunFigures<'_>> {
    records
        .iter()
        .map(|r| RunFigures {
            proxy: r.proxy,
            status: r.status,
            figures: &r.figures,
        })
        .collect()
}

impl RunRecord {
    fn failed(
        scenario: ScenarioKind,
        round: u32,
        attempt: u32,
        proxy: ProxyKind,
        status: RunStatus,
        reason: String,
    ) -> Self {
        RunRecord {
            scenario: scenario.name(),
            arrival: None,
            round,
            attempt,
            proxy: proxy.name(),
            status,
            reason: Some(reason),
            wall_s: 0.0,
            clk_tck: 0,
            ticks: Ticks::default(),
            foreign_cpu_pct: 0.0,
            steal_proxy_cpu_pct: 0.0,
            rss_kib: 0,
            nprocs: 0,
            figures: BTreeMap::new(),
            load: None,
            sample: None,
            warmup_drain_s: None,
            warmup_left: None,
        }
    }
}

/// Columns of raw.tsv.
pub const TSV_HEADER: &str = "scenario\tround\tattempt\tproxy\tstatus\trequests\treq_per_s\tp50_us\tp99_us\tp999_us\t\
ttfb_p99_us\tttfe_p99_us\tgap_p99_us\terrors\tproxy_ticks\tcpu_us_per_req\tproxy_cpu_pct\tupstream_cpu_us_per_req\t\
load_cpu_us_per_req\trss_kib\tnprocs\tsteal_ticks_proxy_cpu\tsteal_ticks_load_cpu\tforeign_cpu_pct\twall_s\trate\t\
arrival\tttfb_p50_us\tttfb_p90_us\tttfe_p50_us\tttfe_p90_us\trss_idle_kib\trss_open_kib\trss_per_stream_kib\t\
streams_held\tfds_open\twarmup_drain_s\twarmup_left";

/// One raw.tsv line (no newline).
pub fn tsv_line(r: &RunRecord) -> String {
    let fig = |m: Metric| {
        r.figures
            .get(&m)
            .map_or(String::new(), |v| format!("{v:.3}"))
    };
    let load = r.load.as_ref();
    [
        r.scenario.to_string(),
        r.round.to_string(),
        r.attempt.to_string(),
        r.proxy.to_string(),
        r.status.as_str().to_string(),
        load.map_or(String::new(), |l| l.units().to_string()),
        fig(Metric::Rps),
        fig(Metric::P50Us),
        fig(Metric::P99Us),
        fig(Metric::P999Us),
        fig(Metric::TtfbP99Us),
        fig(Metric::TtfeP99Us),
        fig(Metric::GapP99Us),
        load.map_or(String::new(), |l| l.errors_total().to_string()),
        r.ticks.proxy.to_string(),
        fig(Metric::CpuUsPerReq),
        fig(Metric::ProxyCpuPct),
        fig(Metric::UpstreamCpuUsPerReq),
        fig(Metric::LoadCpuUsPerReq),
        r.rss_kib.to_string(),
        r.nprocs.to_string(),
        r.ticks.steal_proxy_cpu.to_string(),
        r.ticks.steal_load_cpu.to_string(),
        format!("{:.1}", r.foreign_cpu_pct),
        format!("{:.3}", r.wall_s),
        load.and_then(|l| l.rate)
            .map_or(String::new(), |v| format!("{v:.0}")),
        r.arrival.unwrap_or("").to_string(),
        fig(Metric::TtfbP50Us),
        fig(Metric::TtfbP90Us),
        fig(Metric::TtfeP50Us),
        fig(Metric::TtfeP90Us),
        r.sample
            .map_or(String::new(), |s| s.rss_idle_kib.to_string()),
        r.sample
            .map_or(String::new(), |s| s.rss_open_kib.to_string()),
        fig(Metric::RssPerStreamKib),
        r.sample.map_or(String::new(), |s| s.held.to_string()),
        r.sample.map_or(String::new(), |s| s.fds.to_string()),
        r.warmup_drain_s
            .map_or(String::new(), |v| format!("{v:.2}")),
        r.warmup_left.map_or(String::new(), |v| v.to_string()),
    ]
    .join("\t")
}

/// The one-line account of a run on stderr.
fn describe(r: &RunRecord) -> String {
    let g = |m: Metric| r.figures.get(&m).copied();
    let ms = |m: Metric| g(m).map_or("?".into(), |v| format!("{:.3}", v / 1000.0));
    let mut s = match r.arrival {
        Some(a) => format!("{} ({a}) round {} {}", r.scenario, r.round, r.proxy),
        None => format!("{} round {} {}", r.scenario, r.round, r.proxy),
    };
    if r.attempt > 0 {
        s.push_str(&format!(" (retry {})", r.attempt));
    }
    if let Some(l) = &r.load {
        s.push_str(&format!(
            ": {} {}, {:.0}/s, p50 {} ms, p99 {} ms, p99.9 {} ms",
            l.units(),
            if l.stream.is_some() { "streams" } else { "req" },
            l.rps,
            ms(Metric::P50Us),
            ms(Metric::P99Us),
            ms(Metric::P999Us)
        ));
        if l.stream.is_some() {
            s.push_str(&format!(
                ", TTFB p99 {} ms, TTFE p99 {} ms, gap p99 {} ms",
                ms(Metric::TtfbP99Us),
                ms(Metric::TtfeP99Us),
                ms(Metric::GapP99Us)
            ));
        }
        s.push_str(&format!(
            ", CPU {} µs/{} ({}% of the core), RSS {:.1} MiB, errors {}, other load {:.1}%, steal {:.1}%",
            g(Metric::CpuUsPerReq).map_or("?".into(), |v| format!("{v:.2}")),
            if l.stream.is_some() { "stream" } else { "req" },
            g(Metric::ProxyCpuPct).map_or("?".into(), |v| format!("{v:.1}")),
            r.rss_kib as f64 / 1024.0,
            l.errors_total(),
            r.foreign_cpu_pct,
            r.steal_proxy_cpu_pct
        ));
    }
    if let Some(sm) = &r.sample {
        s.push_str(&format!(
            ", RSS idle {:.1} MiB, with streams {:.1} MiB ({} KiB/stream) at {} ms, {} client connections held, {} fds",
            sm.rss_idle_kib as f64 / 1024.0,
            sm.rss_open_kib as f64 / 1024.0,
            g(Metric::RssPerStreamKib).map_or("?".into(), |v| format!("{v:.1}")),
            sm.at_ms,
            sm.held,
            sm.fds
        ));
    }
    if let Some(d) = r.warmup_drain_s {
        s.push_str(&format!(
            ", warm-up drained in {d:.2} s ({} left)",
            r.warmup_left.unwrap_or(0)
        ));
    }
    s.push_str(&format!(" [{}]", r.status.as_str()));
    if let Some(reason) = &r.reason {
        s.push_str(&format!(": {reason}"));
    }
    s
}

// ---------------------------------------------------------------- set-up

/// What every run needs.
#[derive(Debug)]
struct Setup {
    args: CompareArgs,
    intr: Interrupt,
    clk_tck: u64,
    exe: PathBuf,
    taskset: PathBuf,
    /// bench/peers, where the configs come from.
    peers: PathBuf,
    /// OUT/peers: the configs as run (ports moved to `--port-base`).
    peers_run: PathBuf,
    out: PathBuf,
    proxies: Vec<(ProxyKind, PathBuf)>,
    limits: NoiseLimits,
    /// Proxies that cannot hold the sse scenario's streams, and why (a limit named).
    sse_blocked: BTreeMap<ProxyKind, String>,
}

/// The raw output files.
#[derive(Debug)]
struct RawLog {
    tsv: File,
    jsonl: File,
}

impl RawLog {
    fn create(out: &Path) -> anyhow::Result<Self> {
        let mut tsv = File::create(out.join("raw.tsv")).context("creating raw.tsv")?;
        writeln!(tsv, "{TSV_HEADER}")?;
        Ok(Self {
            tsv,
            jsonl: File::create(out.join("runs.jsonl")).context("creating runs.jsonl")?,
        })
    }

    fn write(&mut self, r: &RunRecord) -> anyhow::Result<()> {
        writeln!(self.tsv, "{}", tsv_line(r))?;
        writeln!(self.jsonl, "{}", serde_json::to_string(r)?)?;
        Ok(())
    }
}

fn log(msg: impl AsRef<str>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let ts = timestamp(now);
    eprintln!(
        "[{}:{}:{}] {}",
        &ts[9..11],
        &ts[11..13],
        &ts[13..15],
        msg.as_ref()
    );
}

/// Why a proxy cannot run, or its binary.
fn resolve_proxy(
    p: ProxyKind,
    args: &CompareArgs,
    exe: &Path,
    repo: &Path,
    dirs: &[PathBuf],
) -> Result<PathBuf, String> {
    match p {
        ProxyKind::Nginx => which(&args.nginx_bin, dirs).ok_or_else(|| {
            format!(
                "'{}' is not installed (apt-get install -y nginx-light)",
                args.nginx_bin
            )
        }),
        ProxyKind::Haproxy => which(&args.haproxy_bin, dirs).ok_or_else(|| {
            format!(
                "'{}' is not installed (apt-get install -y haproxy)",
                args.haproxy_bin
            )
        }),
        ProxyKind::Shardgate | ProxyKind::ShardgateEpoll => {
            let candidates: Vec<PathBuf> = match &args.shardgate_bin {
                Some(b) => vec![b.clone()],
                None => {
                    let mut c = Vec::new();
                    if let Some(dir) = exe
                        .parent()
                        .filter(|d| d.file_name().is_some_and(|n| n == "release"))
                    {
                        c.push(dir.join("shardgate"));
                    }
                    c.push(repo.join("target/release/shardgate"));
                    c
                }
            };
            candidates.iter().find(|c| which(&c.display().to_string(), &[]).is_some()).cloned().ok_or_else(|| {
                format!(
                    "no shardgate binary at {} (cargo build --release -p shardgate-engine, or --shardgate-bin)",
                    candidates.iter().map(|c| c.display().to_string()).collect::<Vec<_>>().join(" or ")
                )
            })
        }
    }
}

fn port_in_use(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Output of a short command (a version string), bounded.
fn capture(program: &Path, args: &[&str], intr: &Interrupt) -> String {
    let Ok(child) = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return "?".into();
    };
    let mut g = ChildGuard::new(program.display().to_string(), child)
        .with_grace(Duration::from_millis(200));
    if !matches!(g.wait_for(Duration::from_secs(5), intr), Ok(Some(_))) {
        return "?".into();
    }
    // Exited: the pipes hold all it wrote (a version line is far below a pipe's capacity).
    g.output().unwrap_or_else(|| "?".into())
}

fn clk_tck(intr: &Interrupt) -> u64 {
    capture(Path::new("getconf"), &["CLK_TCK"], intr)
        .trim()
        .parse()
        .unwrap_or(100)
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------- processes

impl Setup {
    /// `taskset -c CPU program args...`, stdin closed.
    fn pinned(&self, cpu: usize, program: &Path, args: &[String]) -> Command {
        let mut c = Command::new(&self.taskset);
        c.arg("-c")
            .arg(cpu.to_string())
            .arg(program)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn scenario_plan(
        &self,
        scenario: ScenarioKind,
        rate: Option<f64>,
        arrival: Option<Arrival>,
    ) -> LoadPlan {
        LoadPlan {
            ramp: arrival.map_or(Duration::ZERO, |a| ramp(a, &self.args)),
            drain: false,
            scenario,
            conns: if scenario.is_stream() {
                self.args.sse_streams
            } else {
                self.args.conns
            },
            duration: self.args.duration,
            rate,
            timeout_ms: LOAD_TIMEOUT_MS,
        }
    }

    /// The mock upstream for one scenario, ready; `label` names its log files.
    fn start_upstream(&self, scenario: ScenarioKind, label: &str) -> anyhow::Result<ChildGuard> {
        let args = upstream_args(scenario, &self.args);
        let err_log = self.out.join(format!("run/upstream-{label}.log"));
        let mut cmd = self.pinned(self.args.load_cpu, &self.exe, &args);
        cmd.stdout(Stdio::piped()).stderr(File::create(&err_log)?);
        let mut child = cmd.spawn().context("starting the mock upstream")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut guard = ChildGuard::new("upstream", child);
        // Read its stdout on a thread (to the end, so it never blocks on a full pipe) and pass
        // on the readiness line.
        let (tx, rx) = mpsc::channel::<String>();
        let mut copy = File::create(self.out.join(format!("run/upstream-{label}.stdout")))?;
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(copy, "{line}");
                if !sent && line.starts_with("shardgate-bench upstream listening on") {
                    sent = tx.send(line).is_ok();
                }
            }
        });
        let end = Instant::now() + READY_TIMEOUT;
        loop {
            self.intr.check()?;
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(_) => break,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end && guard.is_running() => {}
                Err(_) => bail!(
                    "the mock upstream ({} {}) did not print its listening line within {:?}; its log ({}):\n{}",
                    self.exe.display(),
                    args.join(" "),
                    READY_TIMEOUT,
                    err_log.display(),
                    tail(&err_log, 20)
                ),
            }
        }
        if let Some(why) = self.wait_ready(&mut guard, self.args.port_base, scenario, &err_log)? {
            bail!("the mock upstream does not answer: {why}");
        }
        log(format!(
            "mock upstream up for {label} (pid {}, core {}): {}",
            guard.pid(),
            self.args.load_cpu,
            args.join(" ")
        ));
        Ok(guard)
    }

    /// Up to `READY_TIMEOUT` for a 200 carrying the upstream's answer on `port`. `Ok(Some(why))`
    /// when it did not come (or, for SSE, came buffered).
    fn wait_ready(
        &self,
        child: &mut ChildGuard,
        port: u16,
        scenario: ScenarioKind,
        log_path: &Path,
    ) -> anyhow::Result<Option<String>> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let headers: Vec<String> = REQ_HEADERS.iter().map(|h| h.to_string()).collect();
        let end = Instant::now() + READY_TIMEOUT;
        loop {
            self.intr.check()?;
            if !child.is_running() {
                return Ok(Some(format!(
                    "{} exited early; its log ({}):\n{}",
                    child.name(),
                    log_path.display(),
                    tail(log_path, 20)
                )));
            }
            let last = match probe::post(addr, REQ_PATH, &headers, scenario.body(), PROBE_DEADLINE)
            {
                Ok(a) => {
                    let body = String::from_utf8_lossy(&a.body);
                    let complete = body.contains("chat.completion")
                        && (!scenario.is_stream() || body.contains("[DONE]"));
                    if a.status == 200 && complete {
                        return Ok(self.check_streaming(scenario, a.body_spread));
                    }
                    format!("status {}, {} body bytes", a.status, a.body.len())
                }
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= end {
                return Ok(Some(format!(
                    "no 200 with the upstream's answer on 127.0.0.1:{port} within {READY_TIMEOUT:?} (last: {last}); its log ({}):\n{}",
                    log_path.display(),
                    tail(log_path, 20)
                )));
            }
            self.intr.sleep(Duration::from_millis(100))?;
        }
    }

    /// A streamed answer must arrive spread over the upstream's chunk intervals, not at once.
    fn check_streaming(&self, scenario: ScenarioKind, spread: Duration) -> Option<String> {
        let a = &self.args;
        if !scenario.is_stream() || a.sse_chunks < 2 || a.sse_chunk_interval_ms == 0 {
            return None;
        }
        let expected =
            Duration::from_millis(u64::from(a.sse_chunks - 1) * u64::from(a.sse_chunk_interval_ms));
        (spread < expected / 2).then(|| {
            format!("it buffers SSE: the stream's body arrived within {spread:?}, while the upstream spreads it over {expected:?}")
        })
    }

    /// One load generator run; the parsed result, or why there is none.
    fn run_load(
        &self,
        plan: &LoadPlan,
        port: u16,
        tag: &str,
    ) -> anyhow::Result<Result<LoadResult, String>> {
        let args = load_args(plan, port);
        let out_path = self.out.join(format!("load/{tag}.json"));
        let err_path = self.out.join(format!("load/{tag}.err"));
        let mut cmd = self.pinned(self.args.load_cpu, &self.exe, &args);
        cmd.stdout(File::create(&out_path)?)
            .stderr(File::create(&err_path)?);
        let mut g = ChildGuard::new("load", cmd.spawn().context("starting the load generator")?);
        let limit = plan.duration + self.args.warmup + LOAD_SLACK;
        let status = match g.wait_for(limit, &self.intr)? {
            Some(st) => st,
            None => {
                g.stop();
                return Ok(Err(format!(
                    "the load generator ran past {limit:?} and was stopped"
                )));
            }
        };
        let stdout = fs::read_to_string(&out_path).unwrap_or_default();
        if !status.success() {
            return Ok(Err(format!(
                "the load generator failed ({status}): {}",
                tail(&err_path, 5)
            )));
        }
        Ok(
            LoadResult::parse(&stdout)
                .map_err(|e| format!("{e:#}; stderr: {}", tail(&err_path, 5))),
        )
    }

    /// Wait (bounded) until the two cores are quiet.
    fn wait_quiet(&self) -> anyhow::Result<()> {
        if self.limits.foreign_max_pct >= 100.0 {
            return Ok(());
        }
        let (p, l) = (self.args.proxy_cpu, self.args.load_cpu);
        let end = Instant::now() + self.args.quiet_wait;
        let mut warned = false;
        loop {
            let a = procstat::read_cpus()?;
            self.intr.sleep(Duration::from_secs(1))?;
            let b = procstat::read_cpus()?;
            let busy = procstat::cpu(&b, p)?
                .busy
                .saturating_sub(procstat::cpu(&a, p)?.busy)
                + procstat::cpu(&b, l)?
                    .busy
                    .saturating_sub(procstat::cpu(&a, l)?.busy);
            let pct = 100.0 * busy as f64 / self.clk_tck as f64;
            if pct <= self.limits.foreign_max_pct {
                return Ok(());
            }
            if Instant::now() >= end {
                log(format!("WARNING: cores {p},{l} still busy ({pct:.0}% of a core); running anyway, the run will likely be noisy"));
                return Ok(());
            }
            if !warned {
                log(format!(
                    "cores {p},{l} busy ({pct:.0}% of a core used by other processes; a build?): waiting up to {:?} for quiet",
                    self.args.quiet_wait
                ));
                warned = true;
            }
        }
    }

    /// After the sse warm-up: wait (bounded: one stream's lifetime plus
    /// [`WARMUP_DRAIN_SLACK`]) until the proxy on `port` holds no client connection, so that the
    /// measured streams do not run over the warm-up's. The wait, s, and the connections still
    /// held when it ended.
    fn wait_drained(&self, port: u16) -> anyhow::Result<(f64, u64)> {
        let start = Instant::now();
        let end =
            start + Duration::from_millis(stream_lifetime_ms(&self.args)) + WARMUP_DRAIN_SLACK;
        loop {
            let held = procstat::held_conns(port);
            if held == 0 || Instant::now() >= end {
                return Ok((start.elapsed().as_secs_f64(), held));
            }
            self.intr.sleep(DRAIN_POLL)?;
        }
    }

    /// One measured run of `proxy`.
    #[allow(
        clippy::too_many_arguments,
        reason = "one call site; the arguments name the run"
    )]
    fn one_run(
        &self,
        upstream: &mut ChildGuard,
        scenario: ScenarioKind,
        rate: Option<f64>,
        round: u32,
        attempt: u32,
        proxy: ProxyKind,
        bin: &Path,
        arrival: Option<Arrival>,
    ) -> anyhow::Result<RunRecord> {
        let port = shifted(proxy.port(), self.args.port_base);
        let tag = format!(
            "{}{}-{}-r{round}{}",
            scenario.name(),
            arrival.map_or(String::new(), |a| format!("-{}", a.name())),
            proxy.name(),
            if attempt > 0 {
                format!("-retry{attempt}")
            } else {
                String::new()
            }
        );
        let fail = |status, reason: String| RunRecord {
            arrival: arrival.map(Arrival::name),
            ..RunRecord::failed(scenario, round, attempt, proxy, status, reason)
        };
        if port_in_use(port) {
            return Ok(fail(
                RunStatus::PortBusy,
                format!("127.0.0.1:{port} is already in use"),
            ));
        }
        let prefix = self
            .out
            .join("run")
            .join(format!("{}-prefix", proxy.name()));
        let _ = fs::remove_dir_all(&prefix);
        fs::create_dir_all(&prefix)?;
        let pc = proxy_command(proxy, scenario, bin, &self.peers_run, &prefix);
        let log_path = self.out.join(format!("run/{tag}.log"));
        let log_file = File::create(&log_path)?;
        let mut cmd = self.pinned(self.args.proxy_cpu, &pc.program, &pc.args);
        cmd.envs(pc.env.iter().map(|(k, v)| (k, v)))
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let mut guard = ChildGuard::new(
            proxy.name(),
            cmd.spawn()
                .with_context(|| format!("starting {}", proxy.name()))?,
        );
        let nginx_log = prefix.join("error.log");
        let proxy_log = if proxy == ProxyKind::Nginx {
            &nginx_log
        } else {
            &log_path
        };
        if let Some(why) = self.wait_ready(&mut guard, port, scenario, proxy_log)? {
            guard.stop();
            return Ok(fail(RunStatus::StartFailed, why));
        }

        let sse = scenario.is_stream();
        // Idle: started, one request answered, no load yet.
        let rss_idle_kib = procstat::tree_rss_kib(&procstat::process_tree(guard.pid()));
        let plan = self.scenario_plan(scenario, rate, arrival);
        let mut drained: Option<(f64, u64)> = None;
        if !self.args.warmup.is_zero() {
            // sse: the warm-up's streams finish (--drain) rather than being cut off, and the
            // proxy lets go of their connections before the measured streams start.
            let warm = LoadPlan {
                duration: self.args.warmup,
                drain: sse,
                ..plan.clone()
            };
            if let Err(why) = self.run_load(&warm, port, &format!("{tag}.warmup"))? {
                log(format!("{tag}: warm-up: {why}"));
            }
            if sse {
                let (secs, left) = self.wait_drained(port)?;
                if left > 0 {
                    log(format!(
                        "{tag}: WARNING: {left} client connections still held {secs:.1} s after the warm-up"
                    ));
                }
                drained = Some((secs, left));
            }
        }

        let pids = procstat::process_tree(guard.pid());
        let up_pids = procstat::process_tree(upstream.pid());
        let (p, l) = (self.args.proxy_cpu, self.args.load_cpu);
        let cpus0 = procstat::read_cpus()?;
        let t0 = procstat::tree_ticks(&pids).context("reading the proxy's CPU time")?;
        let u0 = procstat::tree_ticks(&up_pids).context("reading the upstream's CPU time")?;
        let c0 = procstat::self_children_ticks()?;
        let start = Instant::now();
        let sampler = sse.then(|| {
            Sampler::spawn(
                pids.clone(),
                port,
                start + rss_sample_at(plan.ramp, &self.args),
            )
        });
        let load = self.run_load(&plan, port, &tag)?;
        let wall_s = start.elapsed().as_secs_f64();
        let sample = sampler.map(|s| {
            let (rss_open_kib, held, fds, at) = s.finish().unwrap_or((0, 0, 0, start));
            StreamSample {
                rss_idle_kib,
                rss_open_kib,
                held,
                fds,
                at_ms: u64::try_from(at.saturating_duration_since(start).as_millis())
                    .unwrap_or(u64::MAX),
            }
        });
        let t1 = procstat::tree_ticks(&pids);
        let u1 =
            procstat::tree_ticks(&up_pids).context("the mock upstream exited during the run")?;
        let c1 = procstat::self_children_ticks()?;
        let cpus1 = procstat::read_cpus()?;
        let rss_kib = procstat::tree_rss_kib(&pids);
        guard.stop();

        let load = match load {
            Ok(l) => l,
            Err(why) => return Ok(fail(RunStatus::LoadFailed, why)),
        };
        let Ok(t1) = t1 else {
            return Ok(fail(
                RunStatus::ProcGone,
                format!(
                    "a {} process exited during the run; log: {}",
                    proxy.name(),
                    log_path.display()
                ),
            ));
        };
        let d = |f: fn(&procstat::CpuTicks) -> u64, cpu: usize| -> anyhow::Result<u64> {
            Ok(f(&procstat::cpu(&cpus1, cpu)?).saturating_sub(f(&procstat::cpu(&cpus0, cpu)?)))
        };
        let ticks = Ticks {
            cores_busy: d(|c| c.busy, p)? + d(|c| c.busy, l)?,
            proxy: t1.saturating_sub(t0),
            upstream: u1.saturating_sub(u0),
            load: c1.saturating_sub(c0),
            steal_proxy_cpu: d(|c| c.steal, p)?,
            steal_load_cpu: d(|c| c.steal, l)?,
        };
        let foreign = stats::foreign_pct(&ticks, self.clk_tck, wall_s);
        let steal = stats::steal_pct(&ticks, self.clk_tck, wall_s);
        let status = stats::classify(
            load.units(),
            load.errors_total(),
            foreign,
            steal,
            self.limits,
        );
        let mut reason = match status {
            RunStatus::Errors => Some(format!(
                "errors: {}",
                load.errors
                    .iter()
                    .filter(|(_, v)| **v > 0)
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            RunStatus::Noisy => Some(stats::noise_reason(foreign, steal, self.limits)),
            _ => None,
        };
        let mut figures = figures_of(&load, &ticks, rss_kib, self.clk_tck, wall_s);
        if let Some(sm) = &sample {
            add_stream_figures(&mut figures, sm, plan.conns);
            let note = if sm.rss_open_kib == 0 {
                Some("RSS not sampled with the streams open (the load ended first)".to_string())
            } else if sm.held * 100 < u64::from(plan.conns) * HELD_PCT_MIN {
                Some(format!(
                    "the proxy held only {} client connections of {} streams when its RSS was sampled",
                    sm.held, plan.conns
                ))
            } else {
                None
            };
            if let Some(n) = note {
                reason = Some(reason.map_or(n.clone(), |r| format!("{r}; {n}")));
            }
        }
        Ok(RunRecord {
            scenario: scenario.name(),
            arrival: arrival.map(Arrival::name),
            round,
            attempt,
            proxy: proxy.name(),
            status,
            reason,
            wall_s,
            clk_tck: self.clk_tck,
            figures,
            ticks,
            foreign_cpu_pct: foreign,
            steal_proxy_cpu_pct: steal,
            rss_kib,
            nprocs: pids.len(),
            load: Some(load),
            sample,
            warmup_drain_s: drained.map(|d| d.0),
            warmup_left: drained.map(|d| d.1),
        })
    }

    /// All rounds of one scenario; the per-proxy summaries.
    fn scenario(
        &self,
        raw: &mut RawLog,
        scenario: ScenarioKind,
        rate: Option<f64>,
        arrival: Option<Arrival>,
    ) -> anyhow::Result<(Vec<ProxySummary>, Vec<RunRecord>)> {
        let label = match arrival {
            Some(a) => format!("{}-{}", scenario.name(), a.name()),
            None => scenario.name().to_string(),
        };
        let mut upstream = self.start_upstream(scenario, &label)?;
        let up_log = self.out.join(format!("run/upstream-{label}.log"));
        let n = self.proxies.len();
        let mut records: Vec<RunRecord> = Vec::new();
        let mut dropped: BTreeSet<ProxyKind> = BTreeSet::new();
        if scenario.is_stream() {
            for (p, why) in &self.sse_blocked {
                log(format!("SKIP {} in {label}: {why}", p.name()));
                dropped.insert(*p);
            }
        }
        for round in 1..=self.args.rounds {
            for i in 0..n {
                let (proxy, bin) = &self.proxies[(i + round as usize - 1) % n];
                if dropped.contains(proxy) {
                    continue;
                }
                for attempt in 0..=self.args.noisy_retries {
                    self.intr.check()?;
                    if !upstream.is_running() {
                        bail!(
                            "the mock upstream exited; its log ({}):\n{}",
                            up_log.display(),
                            tail(&up_log, 20)
                        );
                    }
                    self.wait_quiet()?;
                    let rec = self.one_run(
                        &mut upstream,
                        scenario,
                        rate,
                        round,
                        attempt,
                        *proxy,
                        bin,
                        arrival,
                    )?;
                    raw.write(&rec)?;
                    log(describe(&rec));
                    let status = rec.status;
                    records.push(rec);
                    self.intr.sleep(BETWEEN_RUNS)?;
                    match status {
                        RunStatus::StartFailed => {
                            log(format!(
                                "SKIP {} in {label} from now on: it did not start and answer 200",
                                proxy.name(),
                            ));
                            dropped.insert(*proxy);
                            break;
                        }
                        RunStatus::Noisy if attempt < self.args.noisy_retries => {
                            log(format!(
                                "{label} round {round} {}: noisy, repeating",
                                proxy.name()
                            ));
                        }
                        _ => break,
                    }
                }
            }
        }
        upstream.stop();
        let names: Vec<&str> = self.proxies.iter().map(|(p, _)| p.name()).collect();
        let runs = run_figures(&records);
        let summaries = stats::summarize(&names, &runs, ProxyKind::Nginx.name());
        Ok((summaries, records))
    }
}

/// A run whose proxy held fewer client connections than this % of its streams at the RSS
/// sample gets a note: its RSS per stream is not per open stream.
const HELD_PCT_MIN: u64 = 95;

/// Samples the proxy's RSS, held connections and open files once, at a given instant, on its
/// own thread while the measured load runs.
struct Sampler {
    cancel: mpsc::Sender<()>,
    handle: std::thread::JoinHandle<Option<(u64, u64, u64, Instant)>>,
}

impl Sampler {
    fn spawn(pids: Vec<u32>, port: u16, at: Instant) -> Self {
        let (cancel, stop) = mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            let wait = at.saturating_duration_since(Instant::now());
            match stop.recv_timeout(wait) {
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let rss = procstat::tree_rss_kib(&pids);
                    let fds = procstat::tree_fds(&pids);
                    Some((rss, procstat::held_conns(port), fds, now))
                }
                // The load ended first, or the run was called off.
                _ => None,
            }
        });
        Self { cancel, handle }
    }

    /// The sample, if it was taken before the load ended (RSS KiB, held, fds, when).
    fn finish(self) -> Option<(u64, u64, u64, Instant)> {
        let _ = self.cancel.send(());
        self.handle.join().ok().flatten()
    }
}

/// Raise the open-file limit, soft and hard, to `want` (possible as root); the limit in force
/// afterwards.
fn raise_nofile_to(want: u64) -> u64 {
    use rustix::process::{setrlimit, Resource, Rlimit};
    let r = Rlimit {
        current: Some(want),
        maximum: Some(want),
    };
    match setrlimit(Resource::Nofile, r) {
        Ok(()) => want,
        Err(_) => raise_nofile(),
    }
}

/// `net.core.somaxconn`, the cap on every listen backlog (0 when unreadable).
fn somaxconn() -> u64 {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

// ---------------------------------------------------------------- the command

/// One scenario's outcome, for the tables and result.json.
#[derive(Debug, Serialize)]
struct ScenarioResult {
    scenario: &'static str,
    /// sse: how the streams arrived, and over what ramp (ms).
    arrival: Option<&'static str>,
    ramp_ms: Option<u64>,
    title: String,
    /// The rate scenario's open-loop rate, req/s, and whose json req/s it derives from.
    rate_rps: Option<f64>,
    rate_of: Option<String>,
    proxies: Vec<ProxySummary>,
    /// Runs left out of the medians, by status (noisy, errors, ...).
    runs_left_out: BTreeMap<&'static str, usize>,
}

#[derive(Debug, Serialize)]
struct Skipped {
    proxy: &'static str,
    reason: String,
}

pub fn compare(args: CompareArgs) -> anyhow::Result<()> {
    if args.proxy_cpu == args.load_cpu {
        bail!("--proxy-cpu and --load-cpu must differ (the proxy runs alone on its core)");
    }
    if !(args.rate_percent > 0.0 && args.rate_percent <= 1000.0) {
        bail!("--rate-percent must be in (0, 1000]");
    }
    if args.rate_rps.is_some_and(|r| !(r >= 1.0 && r.is_finite())) {
        bail!("--rate-rps must be at least 1");
    }
    if args.duration.is_zero() {
        bail!("--duration must be above zero");
    }
    let cpus = procstat::read_cpus()?;
    for c in [args.proxy_cpu, args.load_cpu] {
        procstat::cpu(&cpus, c)
            .with_context(|| format!("CPU {c} does not exist on this machine"))?;
    }
    let intr = Interrupt::install()?;
    let exe = std::env::current_exe().context("locating this executable")?;
    let peers = match &args.peers {
        Some(p) if p.join("nginx-proxy.conf").is_file() => p.clone(),
        Some(p) => bail!("--peers {}: no nginx-proxy.conf there", p.display()),
        None => {
            let mut starts: Vec<PathBuf> =
                exe.parent().map(Path::to_path_buf).into_iter().collect();
            starts.extend(std::env::current_dir().ok());
            find_peers(&starts).ok_or_else(|| {
                anyhow!(
                    "cannot find bench/peers (the peer configurations) above {} or the current directory; \
                     run from the shardgate repository or pass --peers DIR",
                    exe.display()
                )
            })?
        }
    };
    let peers = peers.canonicalize().unwrap_or(peers);
    let repo = peers
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dirs = search_dirs();
    let taskset = which("taskset", &dirs)
        .ok_or_else(|| anyhow!("taskset not found (apt-get install -y util-linux)"))?;

    let mut proxies: Vec<(ProxyKind, PathBuf)> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    for &p in &args.proxies {
        if proxies.iter().any(|(q, _)| *q == p) || skipped.iter().any(|s| s.proxy == p.name()) {
            continue;
        }
        match resolve_proxy(p, &args, &exe, &repo, &dirs) {
            Ok(bin) => proxies.push((p, bin)),
            Err(reason) => {
                log(format!("SKIP {}: {reason}", p.name()));
                skipped.push(Skipped {
                    proxy: p.name(),
                    reason,
                });
            }
        }
    }
    if proxies.is_empty() {
        bail!("no proxy to measure (every one was skipped)");
    }
    if exe.components().any(|c| c.as_os_str() == "debug") {
        log("WARNING: this is a debug build: the load generator and the upstream are slow; use target/release/shardgate-bench for figures");
    }

    let out = match &args.out {
        Some(o) => o.clone(),
        None => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            std::env::temp_dir().join(format!("shardgate-compare-{}", timestamp(now)))
        }
    };
    for d in ["run", "load"] {
        fs::create_dir_all(out.join(d)).with_context(|| format!("creating {}", out.display()))?;
    }
    let out = out.canonicalize().unwrap_or(out);
    let clk_tck = clk_tck(&intr);

    let mut scenarios = args.scenarios.clone();
    scenarios.sort();
    scenarios.dedup();
    let mut nofile = raise_nofile();
    let has_sse = scenarios.contains(&ScenarioKind::Sse);
    let mut arrivals = args.sse_arrival.clone();
    arrivals.sort();
    arrivals.dedup();
    if arrivals.is_empty() {
        arrivals.push(Arrival::Burst);
    }
    let mut sse_blocked: BTreeMap<ProxyKind, String> = BTreeMap::new();
    if has_sse {
        let n = args.sse_streams;
        // The load generator and the mock hold one socket per stream; each proxy 2 or 3.
        let own = u64::from(n) + FDS_SPARE_LOAD;
        let want = proxies
            .iter()
            .map(|(p, _)| fds_needed(*p, n))
            .max()
            .unwrap_or(0)
            .max(own)
            .max(NOFILE_SSE_MIN);
        if nofile < want {
            let before = nofile;
            nofile = raise_nofile_to(want).max(nofile);
            log(format!(
                "open-file limit: {before}; the sse scenario ({n} streams, the peer configs' own limits) wants {want}: {}",
                if nofile >= want {
                    format!("raised to {nofile} (soft and hard; the processes started inherit it)")
                } else {
                    format!("cannot raise it (raising the hard limit needs CAP_SYS_RESOURCE): it stays {nofile}")
                }
            ));
        }
        if nofile < own {
            bail!(
                "the open-file limit ({nofile}, ulimit -Hn) is below what the load generator alone needs for                  {n} streams ({own}); raise the hard limit (as root: ulimit -Hn {want}) or lower --sse-streams"
            );
        }
        for (p, _) in &proxies {
            let need = fds_needed(*p, n);
            if nofile < need {
                sse_blocked.insert(
                    *p,
                    format!(
                        "{} needs about {need} open files for {n} streams ({} per stream + {FDS_SPARE}), and the hard \
                         open-file limit is {nofile} (ulimit -Hn; raising it needs CAP_SYS_RESOURCE): at most {} \
                         streams fit; lower --sse-streams or run where the limit is higher",
                        p.name(),
                        fds_per_stream(*p),
                        max_streams(*p, nofile)
                    ),
                );
            }
        }
        let sample_last = arrivals
            .iter()
            .map(|&a| rss_sample_at(ramp(a, &args), &args))
            .max()
            .unwrap_or_default();
        if args.duration <= sample_last {
            bail!(
                "--duration {} is too short for the sse scenario: the proxy's RSS is sampled {} after the start (the ramp plus half a stream of {} ms), while every stream is open; use --duration {}s or more",
                stats::duration_arg(args.duration),
                stats::duration_arg(sample_last),
                stream_lifetime_ms(&args),
                sample_last.as_secs() + 2
            );
        }
        let cap = somaxconn();
        if arrivals.contains(&Arrival::Burst) && cap > 0 && u64::from(n) > cap {
            log(format!(
                "NOTE: a burst of {n} connects is more than net.core.somaxconn ({cap}), the cap on every listen backlog: connects that find a proxy's accept queue full wait for a SYN retransmission (1 s), which shows in TTFB (sysctl -w net.core.somaxconn={} rules that out)",
                u64::from(n).next_power_of_two()
            ));
        }
    }
    let base = args.port_base;
    for port in std::iter::once(UPSTREAM_PORT).chain(proxies.iter().map(|(p, _)| p.port())) {
        let port = shifted(port, base);
        if port_in_use(port) {
            bail!(
                "port {port} on 127.0.0.1 is already in use; stop whatever holds it first, or pick \
                 other ports with --port-base (it uses {base}..{})",
                base + 3
            );
        }
    }
    // The configs as run, next to the results: copies, with the ports moved to --port-base.
    let peers_run = out.join("peers");
    fs::create_dir_all(&peers_run)?;
    for &(p, _) in &proxies {
        for &s in &scenarios {
            let name = peer_config(p, s);
            let text = fs::read_to_string(peers.join(name))
                .with_context(|| format!("reading {}", peers.join(name).display()))?;
            if s.is_stream() {
                if let Some((cap, setting)) = config_stream_cap(p, &text) {
                    if cap < u64::from(args.sse_streams) {
                        sse_blocked.entry(p).or_insert_with(|| {
                            format!(
                                "{}'s {setting} lets it hold only {cap} streams, not {}",
                                peers.join(name).display(),
                                args.sse_streams
                            )
                        });
                    }
                }
            }
            fs::write(peers_run.join(name), rewrite_ports(&text, base))?;
        }
    }

    let setup = Setup {
        limits: NoiseLimits {
            foreign_max_pct: args.foreign_max_pct,
            steal_max_pct: args.steal_max_pct,
        },
        args,
        intr,
        clk_tck,
        exe,
        taskset,
        peers,
        peers_run,
        out,
        proxies,
        sse_blocked,
    };
    let env = setup.environment(nofile);
    fs::write(setup.out.join("env.txt"), &env)?;
    eprint!("{env}");
    let mut raw = RawLog::create(&setup.out)?;

    let mut results: Vec<ScenarioResult> = Vec::new();
    let mut json_runs: Vec<RunRecord> = Vec::new();
    // The sse scenario once per arrival mode.
    let variants: Vec<(ScenarioKind, Option<Arrival>)> = scenarios
        .iter()
        .flat_map(|&s| {
            if s.is_stream() {
                arrivals.iter().map(|&a| (s, Some(a))).collect::<Vec<_>>()
            } else {
                vec![(s, None)]
            }
        })
        .collect();
    for &(scenario, arrival) in &variants {
        let (rate, rate_of) = match scenario {
            ScenarioKind::Rate => match setup.args.rate_rps {
                Some(r) => (Some(r), Some("--rate-rps".to_string())),
                None => {
                    let order: Vec<&str> = setup.proxies.iter().map(|(p, _)| p.name()).collect();
                    let runs = run_figures(&json_runs);
                    match stats::open_loop_rate(
                        &runs,
                        &order,
                        ProxyKind::Nginx.name(),
                        setup.args.rate_percent,
                    ) {
                        Some(r) => {
                            if r.from_noisy {
                                log(format!("rate: no ok json run; the rate derives from {}'s noisy json runs", r.of));
                            }
                            let of = if r.from_noisy {
                                format!("{} (noisy runs)", r.of)
                            } else {
                                r.of
                            };
                            (Some(r.rps), Some(of))
                        }
                        None => {
                            log("SKIP scenario rate: no json req/s measured in this run to derive its rate from (add json to --scenarios, or pass --rate-rps)");
                            continue;
                        }
                    }
                }
            },
            _ => (None, None),
        };
        let title = setup.title(scenario, rate, rate_of.as_deref(), arrival);
        log(format!("scenario {title}"));
        let (proxies, records) = setup.scenario(&mut raw, scenario, rate, arrival)?;
        let mut runs_left_out: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in records.iter().filter(|r| r.status != RunStatus::Ok) {
            *runs_left_out.entry(r.status.as_str()).or_default() += 1;
        }
        if scenario == ScenarioKind::Json {
            json_runs = records;
        }
        results.push(ScenarioResult {
            scenario: scenario.name(),
            arrival: arrival.map(Arrival::name),
            ramp_ms: arrival
                .map(|a| u64::try_from(ramp(a, &setup.args).as_millis()).unwrap_or(u64::MAX)),
            title,
            rate_rps: rate,
            rate_of,
            proxies,
            runs_left_out,
        });
    }

    let mut tables = String::new();
    for r in &results {
        let with_ratio = r
            .proxies
            .iter()
            .any(|s| s.proxy == ProxyKind::Nginx.name() && s.runs_ok > 0);
        let cols = if r.scenario == ScenarioKind::Sse.name() {
            table::STREAM_COLS
        } else {
            table::REQUEST_COLS
        };
        tables.push_str(&table::render(&r.title, cols, &r.proxies, with_ratio));
        if !r.runs_left_out.is_empty() {
            let list: Vec<String> = r
                .runs_left_out
                .iter()
                .map(|(k, v)| format!("{v} {k}"))
                .collect();
            tables.push_str(&format!(
                "left out of the medians: {} (raw.tsv has them with the reason in runs.jsonl; noisy = other \
                 processes on the two cores over {}% of a core, or steal on the proxy core over {}%)\n",
                list.join(", "),
                setup.limits.foreign_max_pct,
                setup.limits.steal_max_pct
            ));
        }
        tables.push('\n');
    }
    for s in &skipped {
        tables.push_str(&format!("skipped {}: {}\n", s.proxy, s.reason));
    }
    if has_sse {
        for (p, why) in &setup.sse_blocked {
            tables.push_str(&format!("skipped {} in sse: {why}\n", p.name()));
        }
    }
    tables.push_str(&format!(
        "raw per-run data: {}/raw.tsv, runs.jsonl; logs under run/ and load/\n",
        setup.out.display()
    ));
    fs::write(setup.out.join("summary.txt"), &tables)?;
    let result = serde_json::json!({
        "out": setup.out,
        "settings": {
            "rounds": setup.args.rounds,
            "duration_s": setup.args.duration.as_secs_f64(),
            "warmup_s": setup.args.warmup.as_secs_f64(),
            "conns": setup.args.conns,
            "sse_streams": setup.args.sse_streams,
            "sse_chunks": setup.args.sse_chunks,
            "sse_chunk_interval_ms": setup.args.sse_chunk_interval_ms,
            "sse_ttft_ms": setup.args.sse_ttft_ms,
            "sse_arrival": arrivals.iter().map(|a| a.name()).collect::<Vec<_>>(),
            "sse_ramp_ms": setup.args.sse_ramp_ms,
            "sse_stream_lifetime_ms": stream_lifetime_ms(&setup.args),
            "open_files": nofile,
            "somaxconn": somaxconn(),
            "proxy_cpu": setup.args.proxy_cpu,
            "load_cpu": setup.args.load_cpu,
            "clk_tck": setup.clk_tck,
            "foreign_max_pct": setup.limits.foreign_max_pct,
            "steal_max_pct": setup.limits.steal_max_pct,
        },
        "skipped": skipped,
        "sse_skipped": setup.sse_blocked.iter().map(|(p, why)| serde_json::json!({"proxy": p.name(), "reason": why})).collect::<Vec<_>>(),
        "scenarios": results,
    });
    let result_text = serde_json::to_string_pretty(&result)?;
    fs::write(setup.out.join("result.json"), &result_text)?;
    if setup.args.json {
        eprint!("{tables}");
        println!("{result_text}");
    } else {
        print!("{tables}");
    }
    Ok(())
}

impl Setup {
    fn title(
        &self,
        scenario: ScenarioKind,
        rate: Option<f64>,
        rate_of: Option<&str>,
        arrival: Option<Arrival>,
    ) -> String {
        let a = &self.args;
        let common = format!(
            "proxy alone on core {}, upstream + load on core {}; {} per run after {} warm-up, medians of ok runs over {} round(s)",
            a.proxy_cpu,
            a.load_cpu,
            stats::duration_arg(a.duration),
            stats::duration_arg(a.warmup),
            a.rounds
        );
        match scenario {
            ScenarioKind::Json => format!(
                "json: POST {REQ_PATH} (README chat body, 352-byte-class JSON answer), {} keep-alive connections, closed loop; {common}",
                a.conns
            ),
            ScenarioKind::Sse => format!(
                "sse, {}: {} concurrent SSE streams (first chunk after {} ms, {} chunks {} ms apart); latency = whole stream, \
                 CPU per stream; RSS idle before the load and with the streams open ({} ms into the run), per stream = growth / streams; \
                 warm-up streams let finish and drained before the measured run; {common}",
                match arrival {
                    Some(Arrival::Steady) => format!(
                        "steady arrival (first requests spread over {} ms)",
                        ramp(Arrival::Steady, a).as_millis()
                    ),
                    _ => "burst arrival (all streams at once)".to_string(),
                },
                a.sse_streams,
                a.sse_ttft_ms,
                a.sse_chunks,
                a.sse_chunk_interval_ms,
                rss_sample_at(arrival.map_or(Duration::ZERO, |x| ramp(x, a)), a).as_millis()
            ),
            ScenarioKind::Rate => format!(
                "rate: open loop at {} req/s ({}), {} connections, latency from each request's intended send time; {common}",
                table::fmt_num(rate.unwrap_or(0.0), 0),
                match rate_of {
                    Some("--rate-rps") | None => "--rate-rps".to_string(),
                    Some(of) => format!("{}% of {of}'s json req/s", a.rate_percent),
                },
                a.conns
            ),
        }
    }

    fn environment(&self, nofile: u64) -> String {
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let ncpu = procstat::read_cpus().map_or(0, |c| c.len());
        let mut s = format!(
            "kernel: {}  cpus: {ncpu}  CLK_TCK: {}  open files: {nofile}  somaxconn: {}\n",
            kernel.trim(),
            self.clk_tck,
            somaxconn()
        );
        s.push_str(&format!(
            "compare: {} (peers: {})\n",
            self.exe.display(),
            self.peers.display()
        ));
        s.push_str(&format!("output: {}\n", self.out.display()));
        let repo = self
            .peers
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new("."));
        let repo_arg = repo.display().to_string();
        let rev = capture(
            Path::new("git"),
            &["-C", &repo_arg, "rev-parse", "--short", "HEAD"],
            &self.intr,
        );
        let dirty = capture(
            Path::new("git"),
            &[
                "-C",
                &repo_arg,
                "status",
                "--porcelain",
                "--untracked-files=no",
            ],
            &self.intr,
        );
        s.push_str(&format!(
            "repository: {repo_arg} at {}{}\n",
            rev.trim(),
            if dirty.trim().is_empty() {
                ""
            } else {
                " (with uncommitted changes)"
            }
        ));
        for (p, bin) in &self.proxies {
            let v = match p {
                ProxyKind::Nginx | ProxyKind::Haproxy => {
                    let flag = if *p == ProxyKind::Nginx { "-v" } else { "-vq" };
                    let v = capture(bin, &[flag], &self.intr);
                    let v = if v.trim().is_empty() || v == "?" {
                        capture(bin, &["-v"], &self.intr)
                    } else {
                        v
                    };
                    v.lines().next().unwrap_or("?").to_string()
                }
                ProxyKind::Shardgate | ProxyKind::ShardgateEpoll => {
                    let built = fs::metadata(bin)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map_or("?".into(), |d| timestamp(d.as_secs()));
                    format!("{} (built {built} UTC)", bin.display())
                }
            };
            s.push_str(&format!("{}: {} [{}]\n", p.name(), v.trim(), bin.display()));
        }
        s
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    const JSON_RESULT: &str = r#"{"requests":262000,"duration_s":5.0,"rps":52400.0,"bytes":123,"connections":64,"threads":1,"rate":null,
"latency_us":{"p50":1050,"p90":1500,"p99":1990,"p999":3100,"max":9000,"mean":1100.5},
"errors":{"connect":0,"read":0,"write":0,"timeout":0,"status_4xx":0,"status_5xx":0,"stream_incomplete":0},"stream":null}"#;

    const SSE_RESULT: &str = r#"{"requests":9000,"duration_s":5.0,"rps":1800.0,"bytes":1,"connections":1000,"threads":1,"rate":null,
"latency_us":{"p50":455000,"p90":460000,"p99":470000,"p999":480000,"max":490000,"mean":456000},
"errors":{"connect":0,"read":0,"write":0,"timeout":0,"status_4xx":0,"status_5xx":2,"stream_incomplete":1},
"stream":{"ttfb_us":{"p50":51000,"p90":1,"p99":53000,"p999":1,"max":1,"mean":1},"ttfe_us":{"p50":1,"p90":1,"p99":54000,"p999":1,"max":1,"mean":1},
"gap_us":{"p50":50000,"p90":1,"p99":52000,"p999":1,"max":1,"mean":1},"streams":9000}}"#;

    #[test]
    fn load_result_parses_the_contract() {
        let r = LoadResult::parse(JSON_RESULT.replace('\n', "").as_str()).unwrap();
        assert_eq!(r.requests, 262_000);
        assert_eq!(r.latency_us.p999, 3100.0);
        assert_eq!(r.errors_total(), 0);
        assert_eq!(r.units(), 262_000);
        assert!(r.stream.is_none());
        // A log line before the JSON, and a pretty-printed object, both parse.
        let r2 =
            LoadResult::parse(&format!("warming up\n{}\n", JSON_RESULT.replace('\n', ""))).unwrap();
        assert_eq!(r2, r);
        assert_eq!(LoadResult::parse(JSON_RESULT).unwrap(), r);
        assert!(LoadResult::parse("error: connection refused\n").is_err());
        let s = LoadResult::parse(SSE_RESULT).unwrap();
        assert_eq!(s.errors_total(), 3);
        assert_eq!(s.stream.as_ref().unwrap().ttfe_us.p99, 54_000.0);
    }

    #[test]
    fn figures_per_request_and_per_stream() {
        let r = LoadResult::parse(JSON_RESULT).unwrap();
        // 5 s at 100 ticks/s; the proxy used 480 ticks = 4.8 s for 262,000 requests.
        let t = Ticks {
            cores_busy: 1000,
            proxy: 480,
            upstream: 300,
            load: 200,
            steal_proxy_cpu: 0,
            steal_load_cpu: 0,
        };
        let f = figures_of(&r, &t, 13 * 1024, 100, 5.0);
        assert!((f[&Metric::CpuUsPerReq] - 4.8e6 / 262_000.0).abs() < 1e-9);
        assert!((f[&Metric::ProxyCpuPct] - 96.0).abs() < 1e-9);
        assert!((f[&Metric::RssMib] - 13.0).abs() < 1e-9);
        assert_eq!(f[&Metric::P999Us], 3100.0);
        assert!(!f.contains_key(&Metric::TtfbP99Us));
        let s = LoadResult::parse(SSE_RESULT).unwrap();
        let f = figures_of(&s, &t, 0, 100, 5.0);
        assert!((f[&Metric::CpuUsPerReq] - 4.8e6 / 9000.0).abs() < 1e-9);
        assert_eq!(f[&Metric::TtfbP99Us], 53_000.0);
        assert_eq!(f[&Metric::GapP99Us], 52_000.0);
    }

    #[test]
    fn tsv_line_matches_the_header() {
        let r = LoadResult::parse(JSON_RESULT).unwrap();
        let t = Ticks {
            proxy: 480,
            ..Ticks::default()
        };
        let rec = RunRecord {
            figures: figures_of(&r, &t, 1024, 100, 5.0),
            load: Some(r),
            ticks: t,
            ..RunRecord::failed(
                ScenarioKind::Json,
                2,
                0,
                ProxyKind::Nginx,
                RunStatus::Ok,
                String::new(),
            )
        };
        let line = tsv_line(&rec);
        assert_eq!(line.split('\t').count(), TSV_HEADER.split('\t').count());
        assert!(
            line.starts_with("json\t2\t0\tnginx\tok\t262000\t52400.000\t1050.000\t"),
            "{line}"
        );
        let failed = RunRecord::failed(
            ScenarioKind::Sse,
            1,
            1,
            ProxyKind::Haproxy,
            RunStatus::StartFailed,
            "x".into(),
        );
        assert_eq!(
            tsv_line(&failed).split('\t').count(),
            TSV_HEADER.split('\t').count()
        );
        assert!(describe(&failed).ends_with("[start_failed]: x"));
    }
}
