//! Measuring one point: the processes. For a [`Run`]: start `shardgate-bench upstream` on the
//! load CPUs, write an engine config and start `shardgate` under `taskset -c CORES`, wait for its
//! listening line and a 200 through it, run `shardgate-bench load` once to warm up and once
//! measured (both on the load CPUs), reading the engine's utime + stime from `/proc/PID/stat`
//! around the measured run, then stop everything. Every process is held by a [`Proc`], which
//! stops it (SIGTERM, then SIGKILL) on every return path.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use rustix::process::{kill_process, Pid, Signal};
use shardgate_tune::Driver;

use crate::checks::join_cpus;
use crate::plan::{Measured, Run};

/// The request every point sends (the README's small chat request).
pub const REQ_PATH: &str = "/v1/chat/completions";
pub const CHAT_BODY: &str =
    r#"{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}"#;
/// How long a process may take to print its listening line.
const START_WAIT: Duration = Duration::from_secs(20);
/// How long the engine may take to answer its first 200.
const READY_WAIT: Duration = Duration::from_secs(10);
/// How long past its planned end a load run may take.
const LOAD_SLACK: Duration = Duration::from_secs(15);
/// SIGTERM to SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Polling step of every bounded wait.
const POLL: Duration = Duration::from_millis(10);
/// Per request, in the load generator.
const LOAD_TIMEOUT_MS: u32 = 5000;

/// The engine's listening line, up to the address.
const ENGINE_LISTENING: &str = "shardgate listening on http://";
const UPSTREAM_LISTENING: &str = "shardgate-bench upstream listening on http://";

/// Everything a sweep needs besides the run.
#[derive(Debug, Clone)]
pub struct Setup {
    pub engine: PathBuf,
    pub bench: PathBuf,
    /// `None`: no taskset; processes are not pinned from outside (see the docs).
    pub taskset: Option<PathBuf>,
    /// Where configs and logs go.
    pub workdir: PathBuf,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Instance names are `PREFIX-N`.
    pub instance_prefix: String,
    pub clk_tck: u64,
    pub interrupted: Arc<AtomicBool>,
}

/// The one sleep of this binary (a blocking driver process, not a shard).
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// A child process stopped when dropped.
#[derive(Debug)]
pub struct Proc {
    name: &'static str,
    child: Option<Child>,
}

impl Proc {
    fn new(name: &'static str, child: Child) -> Self {
        Self {
            name,
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGTERM, up to [`STOP_GRACE`], then SIGKILL.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if let Some(pid) = i32::try_from(child.id()).ok().and_then(Pid::from_raw) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let end = Instant::now() + STOP_GRACE;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            pause(POLL);
        }
        eprintln!(
            "shardgate-tune: {} did not stop within {STOP_GRACE:?} of SIGTERM; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A command pinned to `cpus` with taskset (when there is one), stdin closed.
fn pinned(setup: &Setup, cpus: &[usize], program: &Path) -> Command {
    let mut c = match &setup.taskset {
        Some(t) => {
            let mut c = Command::new(t);
            c.arg("-c").arg(join_cpus(cpus)).arg(program);
            c
        }
        None => Command::new(program),
    };
    c.stdin(Stdio::null());
    c
}

/// Lines of a child's pipe, on a thread (read to the end, so the child never blocks on a full
/// pipe), sent on the channel and kept in `log`.
fn pump(pipe: impl Read + Send + 'static, log: Arc<Mutex<String>>) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut l) = log.lock() {
                l.push_str(&line);
                l.push('\n');
            }
            let _ = tx.send(line);
        }
    });
    rx
}

fn tail(log: &Mutex<String>, n: usize) -> String {
    let text = log.lock().map(|l| l.clone()).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Wait for a line starting with `prefix` and return the address after it (up to a space).
fn wait_listening(
    setup: &Setup,
    proc: &mut Proc,
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    logs: &Mutex<String>,
) -> anyhow::Result<SocketAddr> {
    let end = Instant::now() + START_WAIT;
    loop {
        check_interrupt(setup)?;
        match rx.recv_timeout(POLL) {
            Ok(line) => {
                if let Some(rest) = line.trim().strip_prefix(prefix) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    return addr
                        .parse()
                        .with_context(|| format!("bad address in {line:?}"));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < end && proc.running() => {}
            Err(_) => {
                let exited = if proc.running() { "" } else { " (it exited)" };
                bail!(
                    "{} did not print {prefix:?} within {START_WAIT:?}{exited}; its output:\n{}",
                    proc.name,
                    tail(logs, 20)
                )
            }
        }
    }
}

fn check_interrupt(setup: &Setup) -> anyhow::Result<()> {
    if setup.interrupted.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// The engine config of one point.
pub fn engine_config(shards: usize, upstream: SocketAddr, instance: &str) -> String {
    format!(
        "# written by shardgate-tune for one sweep point\n\
         [server]\n\
         listen = \"127.0.0.1:0\"\n\
         cores = {shards}\n\
         auth = \"none\"\n\
         admin_listen = \"off\"\n\
         instance = \"{instance}\"\n\
         drain_timeout_ms = 1000\n\
         \n\
         [[upstreams]]\n\
         name = \"mock\"\n\
         endpoints = [\"http://{upstream}\"]\n\
         \n\
         [[routes]]\n\
         path_prefix = \"/\"\n\
         upstream = \"mock\"\n"
    )
}

/// The cores and the driver the shards logged (`shard 0 on core 1: io_uring (...) driver`).
pub fn parse_shard_log(stderr: &str) -> (Vec<usize>, Option<Driver>) {
    let mut cores = Vec::new();
    let mut driver = None;
    for line in stderr.lines() {
        let Some(pos) = line.find("shard ") else {
            continue;
        };
        let rest = &line[pos + "shard ".len()..];
        let Some((_, rest)) = rest.split_once(" on core ") else {
            continue;
        };
        let Some((core, kind)) = rest.split_once(':') else {
            continue;
        };
        if let Ok(c) = core.trim().parse::<usize>() {
            cores.push(c);
        }
        let kind = kind.trim();
        if kind.starts_with("io_uring") {
            driver = Some(Driver::IoUring);
        } else if kind.starts_with("epoll") && driver.is_none() {
            driver = Some(Driver::Epoll);
        }
    }
    cores.sort_unstable();
    (cores, driver)
}

/// utime + stime of a process (fields 14 and 15 of `/proc/PID/stat`, counted after the last
/// `)` since the command name may hold spaces), in clock ticks.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let close = stat.rfind(')')?;
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // f[0] is field 3 (state): utime is field 14 -> f[11], stime f[12].
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn read_ticks(pid: u32) -> anyhow::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("the engine (pid {pid}) is gone"))?;
    parse_stat_ticks(&text).ok_or_else(|| anyhow!("cannot parse /proc/{pid}/stat"))
}

/// What `shardgate-bench load --json` reported.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadReport {
    pub ok: u64,
    pub errors: u64,
    pub duration_s: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// Parse the load generator's JSON report (see `bench/src/load/mod.rs`).
pub fn parse_load_json(text: &str) -> anyhow::Result<LoadReport> {
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("the load generator's report is not JSON: {text:?}"))?;
    let num = |p: &str| -> anyhow::Result<f64> {
        v.pointer(p)
            .and_then(serde_json::Value::as_f64)
            .ok_or_else(|| anyhow!("the load report has no {p}"))
    };
    let count = |p: &str| {
        v.pointer(p)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    };
    let requests = count("/requests");
    let bad_status = count("/errors/status_4xx") + count("/errors/status_5xx");
    let errors = bad_status
        + ["connect", "read", "write", "timeout"]
            .iter()
            .map(|k| count(&format!("/errors/{k}")))
            .sum::<u64>();
    Ok(LoadReport {
        ok: requests.saturating_sub(bad_status),
        errors,
        duration_s: num("/duration_s")?,
        p50_us: num("/latency_us/p50")?,
        p99_us: num("/latency_us/p99")?,
    })
}

/// One blocking POST with `Connection: close`; the status code.
fn probe(addr: SocketAddr) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let req = format!(
        "POST {REQ_PATH} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{CHAT_BODY}",
        CHAT_BODY.len()
    );
    s.write_all(req.as_bytes())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    text.get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {text:?}"))
}

/// Run `shardgate-bench load` for `d` on the load CPUs; its report.
fn load(setup: &Setup, run: &Run, url: &str, d: Duration, tag: &str) -> anyhow::Result<LoadReport> {
    let threads = run.load_cores.len().clamp(1, setup.connections);
    let out_path = setup.workdir.join(format!("{tag}.json"));
    let err_path = setup.workdir.join(format!("{tag}.err"));
    let mut cmd = pinned(setup, &run.load_cores, &setup.bench);
    cmd.args([
        "load", url, "--json", "--method", "POST", "--body", CHAT_BODY,
    ])
    .args(["-H", "Content-Type: application/json"])
    .args(["-c", &setup.connections.to_string()])
    .args(["-t", &threads.to_string()])
    .args(["-d", &format!("{}ms", d.as_millis())])
    .args(["--timeout-ms", &LOAD_TIMEOUT_MS.to_string()])
    .stdout(fs::File::create(&out_path)?)
    .stderr(fs::File::create(&err_path)?);
    let mut p = Proc::new(
        "the load generator",
        cmd.spawn().context("starting the load generator")?,
    );
    let end = Instant::now() + d + LOAD_SLACK;
    let status = loop {
        check_interrupt(setup)?;
        let st = p.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
        if let Some(st) = st {
            break st;
        }
        if Instant::now() >= end {
            p.stop();
            bail!(
                "the load generator ran past {:?} and was stopped",
                d + LOAD_SLACK
            );
        }
        pause(POLL);
    };
    let err = fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        bail!("the load generator failed ({status}): {}", err.trim());
    }
    parse_load_json(&fs::read_to_string(&out_path).unwrap_or_default())
}

/// Measure one point (see the module docs).
pub fn measure(setup: &Setup, run: &Run, index: usize) -> anyhow::Result<Measured> {
    check_interrupt(setup)?;
    // The mock upstream, on the load CPUs.
    let up_log = Arc::new(Mutex::new(String::new()));
    let mut cmd = pinned(setup, &run.load_cores, &setup.bench);
    cmd.args(["upstream", "--listen", "127.0.0.1:0"])
        .args(["--threads", &run.load_cores.len().max(1).to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (child, out, err) = spawn_piped(&mut cmd, "the mock upstream")?;
    let mut upstream = Proc::new("the mock upstream", child);
    let rx = pump(out, up_log.clone());
    let _err_rx = pump(err, up_log.clone());
    let up_addr = wait_listening(setup, &mut upstream, &rx, UPSTREAM_LISTENING, &up_log)?;

    // The engine, on the point's CPUs.
    let instance = format!("{}-{index}", setup.instance_prefix);
    let config_path = setup.workdir.join(format!("point-{index}.toml"));
    fs::write(
        &config_path,
        engine_config(run.shards(), up_addr, &instance),
    )
    .with_context(|| format!("writing {}", config_path.display()))?;
    let eng_log = Arc::new(Mutex::new(String::new()));
    let eng_err = Arc::new(Mutex::new(String::new()));
    let mut cmd = pinned(setup, &run.cores, &setup.engine);
    cmd.arg("--config")
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (child, out, err) = spawn_piped(&mut cmd, &setup.engine.display().to_string())?;
    let mut engine = Proc::new("the engine", child);
    let rx = pump(out, eng_log.clone());
    let _err_rx = pump(err, eng_err.clone());
    let addr = match wait_listening(setup, &mut engine, &rx, ENGINE_LISTENING, &eng_log) {
        Ok(a) => a,
        Err(e) => bail!("{e:#}\nits stderr:\n{}", tail(&eng_err, 20)),
    };

    // A 200 through it.
    let end = Instant::now() + READY_WAIT;
    loop {
        check_interrupt(setup)?;
        let last = match probe(addr) {
            Ok(200) => break,
            Ok(s) => format!("status {s}"),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= end || !engine.running() {
            bail!(
                "no 200 through the engine on {addr} within {READY_WAIT:?} (last: {last}); its stderr:\n{}",
                tail(&eng_err, 20)
            );
        }
        pause(Duration::from_millis(50));
    }

    let url = format!("http://{addr}{REQ_PATH}");
    if !setup.warmup.is_zero() {
        load(
            setup,
            run,
            &url,
            setup.warmup,
            &format!("point-{index}-warmup"),
        )?;
    }
    let pid = engine.pid();
    let t0 = read_ticks(pid)?;
    let report = load(setup, run, &url, setup.duration, &format!("point-{index}"))?;
    let t1 = read_ticks(pid)?;
    engine.stop();
    upstream.stop();

    let (logged_cores, driver) =
        parse_shard_log(&eng_err.lock().map(|l| l.clone()).unwrap_or_default());
    if setup.taskset.is_some() && !logged_cores.is_empty() && logged_cores != run.cores {
        bail!(
            "the shards ran on CPUs {} instead of {} (is taskset honoured?)",
            join_cpus(&logged_cores),
            join_cpus(&run.cores)
        );
    }
    if report.ok == 0 {
        bail!(
            "no successful answer in {:?} ({} errors)",
            setup.duration,
            report.errors
        );
    }
    let cpu_s = t1.saturating_sub(t0) as f64 / setup.clk_tck.max(1) as f64;
    Ok(Measured {
        rps: round(report.ok as f64 / report.duration_s.max(1e-9), 1),
        p50_ms: round(report.p50_us / 1000.0, 3),
        p99_ms: round(report.p99_us / 1000.0, 3),
        cpu_us_per_request: round(cpu_s * 1e6 / report.ok as f64, 2),
        requests: report.ok,
        errors: report.errors,
        driver,
        rounds: 1,
        rps_samples: vec![round(report.ok as f64 / report.duration_s.max(1e-9), 1)],
    })
}

/// `v` rounded to `digits` decimals.
pub fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// An executable named `name` on `$PATH` (or in /usr/bin, /bin).
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/bin")])
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `explicit`, else `name` next to this executable; an error saying how to get it otherwise.
pub fn sibling_binary(
    explicit: Option<&Path>,
    name: &str,
    flag: &str,
    package: &str,
) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        if !is_executable(p) {
            bail!("{flag} {}: not an executable file", p.display());
        }
        return Ok(p.to_path_buf());
    }
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let p = dir.join(name);
    if is_executable(&p) {
        return Ok(p);
    }
    bail!(
        "no {name} next to shardgate-tune (in {}): build it (cargo build --release -p {package}) \
         or pass {flag} PATH",
        dir.display()
    )
}

/// Start `cmd` (its stdout and stderr piped) and take both pipes.
fn spawn_piped(
    cmd: &mut Command,
    what: &str,
) -> anyhow::Result<(Child, std::process::ChildStdout, std::process::ChildStderr)> {
    let mut child = cmd.spawn().with_context(|| format!("starting {what}"))?;
    let out = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("no stdout pipe"))?;
    let err = child
        .stderr
        .take()
        .ok_or_else(|| anyhow!("no stderr pipe"))?;
    Ok((child, out, err))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn shard_log_lines() {
        let log = "2025-11-26T06:00:00.1Z  WARN shardgate: auth = \"none\"\n\
                   2025-11-26T06:00:00.2Z  INFO shardgate: shard 1 on core 3: io_uring (coop_taskrun, single_issuer, defer_taskrun) driver\n\
                   2025-11-26T06:00:00.2Z  INFO shardgate: shard 0 on core 2: io_uring (default set-up) driver\n";
        assert_eq!(parse_shard_log(log), (vec![2, 3], Some(Driver::IoUring)));
        let log = "INFO shardgate: shard 0 on core 0: epoll driver\n";
        assert_eq!(parse_shard_log(log), (vec![0], Some(Driver::Epoll)));
        assert_eq!(
            parse_shard_log("shard 0 on unpinned: epoll driver"),
            (vec![], None)
        );
    }

    #[test]
    fn stat_ticks() {
        let line = "77 (shard gate) S 1 77 77 0 -1 0 0 0 0 0 1000 250 7 8 20 0 1 0 9";
        assert_eq!(parse_stat_ticks(line), Some(1250));
        assert_eq!(parse_stat_ticks("77 (x) S 1"), None);
        let me = fs::read_to_string("/proc/self/stat").unwrap();
        assert!(parse_stat_ticks(&me).is_some());
    }

    #[test]
    fn load_report() {
        let text = r#"{"requests":1000,"duration_s":2.0,"rps":500.0,"bytes":1,"connections":64,
            "threads":1,"rate":null,
            "latency_us":{"p50":611,"p90":700,"p99":1001,"p999":1607,"max":4415,"mean":623.41},
            "errors":{"connect":1,"read":0,"write":0,"timeout":2,"status_4xx":0,"status_5xx":10,
                      "stream_incomplete":0},"stream":null}"#;
        let r = parse_load_json(text).unwrap();
        assert_eq!(r.ok, 990);
        assert_eq!(r.errors, 13);
        assert!((r.p99_us - 1001.0).abs() < 1e-9);
        assert!(parse_load_json("nope").is_err());
        assert!(parse_load_json("{}").is_err());
    }

    #[test]
    fn config_is_valid_toml_with_the_point() {
        let c = engine_config(3, "127.0.0.1:5555".parse().unwrap(), "tune-1-0");
        let v: toml::Value = toml::from_str(&c).unwrap();
        assert_eq!(v["server"]["cores"].as_integer(), Some(3));
        assert_eq!(v["server"]["auth"].as_str(), Some("none"));
        assert_eq!(v["server"]["admin_listen"].as_str(), Some("off"));
        assert_eq!(
            v["upstreams"][0]["endpoints"][0].as_str(),
            Some("http://127.0.0.1:5555")
        );
        assert_eq!(v["routes"][0]["path_prefix"].as_str(), Some("/"));
        assert!((round(1.23456, 2) - 1.23).abs() < 1e-12);
    }
}
