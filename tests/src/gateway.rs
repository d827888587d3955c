//! Running the `shardgate` process.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::shardgate_bin;

/// How long `Gateway::start` waits for the start-up line.
const START_WAIT: Duration = Duration::from_secs(20);

/// `$TMPDIR/shardgate-test-<tag>-<pid>-<seq>-<nanos><suffix>`: unique within and across test
/// processes.
pub(crate) fn unique_temp_path(tag: &str, suffix: &str) -> PathBuf {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!(
        "shardgate-test-{tag}-{}-{}-{nanos}{suffix}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A config file under the temp dir, unique per call, removed on drop.
#[derive(Debug)]
pub(crate) struct TempConfig {
    path: PathBuf,
}

impl TempConfig {
    pub(crate) fn new(contents: &str) -> TempConfig {
        let path = unique_temp_path("config", ".toml");
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempConfig { path }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

type Shared = Arc<Mutex<String>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, String> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends everything read from `r` to `buf` until EOF.
fn drain_into(mut r: impl Read + Send + 'static, buf: Shared) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        loop {
            match r.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => lock(&buf).push_str(&String::from_utf8_lossy(&chunk[..n])),
            }
        }
    })
}

/// A running `shardgate --config FILE`. Dropping it kills the process.
#[derive(Debug)]
pub struct Gateway {
    child: Child,
    addr: SocketAddr,
    shards: usize,
    stdout: Shared,
    stderr: Shared,
    instance: String,
    _config: TempConfig,
}

/// A fresh instance name per gateway, so parallel tests never share a shared-memory region.
fn unique_instance() -> String {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

impl Gateway {
    /// Starts shardgate with `config_toml` and waits (at most 20 s) for
    /// `shardgate listening on http://ADDR (N shards)` on stdout. Panics with the collected
    /// stderr when the line does not come.
    pub fn start(config_toml: &str) -> Gateway {
        Gateway::start_with_env(config_toml, &[])
    }

    /// [`Gateway::start`] with extra environment variables, e.g. `("SHARDGATE_DRIVER", "epoll")`.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Gateway {
        match Gateway::try_start_with_env(config_toml, env) {
            Ok(g) => g,
            Err(e) => panic!("{e}\n--- config ---\n{config_toml}"),
        }
    }

    /// Starts shardgate on the given monoio driver.
    pub fn start_on(config_toml: &str, driver: crate::Driver) -> Gateway {
        Gateway::start_with_env(config_toml, &[("SHARDGATE_DRIVER", driver.env_value())])
    }

    /// Like [`Gateway::start_with_env`], but returns why it did not start instead of panicking.
    pub fn try_start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Result<Gateway, String> {
        Gateway::try_start_full(config_toml, env, &[])
    }

    /// [`Gateway::start_with_env`] with extra command-line arguments. `--instance` and
    /// `--admin-listen` given here replace the unique defaults the harness passes.
    pub fn start_with_args(config_toml: &str, env: &[(&str, &str)], args: &[&str]) -> Gateway {
        match Gateway::try_start_full(config_toml, env, args) {
            Ok(g) => g,
            Err(e) => panic!("{e}\n--- config ---\n{config_toml}"),
        }
    }

    /// Starts shardgate and waits for its start-up line, or says why it did not start.
    pub fn try_start_full(
        config_toml: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Gateway, String> {
        Gateway::try_start_bin(&shardgate_bin(), config_toml, env, args)
    }

    /// [`Gateway::try_start_full`] running the engine binary `bin` (e.g.
    /// [`crate::shardgate_counted_bin`]) instead of `shardgate`.
    pub fn try_start_bin(
        bin: &Path,
        config_toml: &str,
        env: &[(&str, &str)],
        args: &[&str],
    ) -> Result<Gateway, String> {
        let config = TempConfig::new(config_toml);
        let given = |flag: &str| args.iter().position(|a| *a == flag);
        let instance = match given("--instance") {
            Some(i) => args
                .get(i + 1)
                .map_or_else(unique_instance, |s| (*s).to_owned()),
            None => unique_instance(),
        };
        let mut cmd = Command::new(bin);
        cmd.arg("--config").arg(config.path());
        if given("--instance").is_none() {
            cmd.args(["--instance", &instance]);
        }
        if given("--admin-listen").is_none() {
            cmd.args(["--admin-listen", "127.0.0.1:0"]);
        }
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot spawn {}: {e}", bin.display()))?;

        let stderr: Shared = Arc::default();
        let stdout: Shared = Arc::default();
        let err_thread = drain_into(
            child.stderr.take().expect("stderr is piped"),
            stderr.clone(),
        );
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("stdout is piped");
            let stdout = stdout.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(out);
                let mut line = String::new();
                loop {
                    line.clear();
                    match r.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            lock(&stdout).push_str(&line);
                            let _ = tx.send(line.clone());
                        }
                    }
                }
            });
        }

        let deadline = Instant::now() + START_WAIT;
        let fail = |child: &mut Child, why: String, err_thread: JoinHandle<()>| -> String {
            let _ = child.kill();
            let _ = child.wait();
            // The pipe closes once the process is gone; the thread then ends.
            let _ = err_thread.join();
            format!(
                "shardgate did not start: {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
                lock(&stdout),
                lock(&stderr)
            )
        };
        let mut stdout_open = true;
        loop {
            if stdout_open {
                match rx.recv_timeout(Duration::from_millis(20)) {
                    Ok(line) => {
                        if let Some((addr, shards)) = parse_listening(&line) {
                            return Ok(Gateway {
                                child,
                                addr,
                                shards,
                                stdout,
                                stderr,
                                instance,
                                _config: config,
                            });
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    // Stdout closed: the process is exiting (or closed it); see below.
                    Err(mpsc::RecvTimeoutError::Disconnected) => stdout_open = false,
                }
            } else {
                crate::sleep(Duration::from_millis(20));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(fail(&mut child, format!("exited: {status}"), err_thread));
            }
            if Instant::now() >= deadline {
                return Err(fail(
                    &mut child,
                    format!("no start-up line within {START_WAIT:?}"),
                    err_thread,
                ));
            }
        }
    }

    /// The address the gateway listens on (the real port, read from its start-up line).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR` for building URLs.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The instance name (`shardgate-ctl --instance`), unique per gateway.
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// The plain listener beside TLS (`listen_plain`), from the `plain listener on http://ADDR`
    /// line.
    pub fn plain_addr(&self) -> SocketAddr {
        let out = self.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("plain listener on http://"))
            .and_then(|a| a.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no plain listener line in stdout:\n{out}"))
    }

    /// The admin listener's address, from the `admin listening on http://ADDR` line.
    pub fn admin_addr(&self) -> SocketAddr {
        let out = self.stdout();
        out.lines()
            .find_map(|l| l.strip_prefix("admin listening on http://"))
            .and_then(|a| a.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no admin line in stdout:\n{out}"))
    }

    /// The admin listener's `/metrics` text (empty if it could not be read).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut m = String::new();
        if let Ok(mut s) = std::net::TcpStream::connect(self.admin_addr()) {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
            let _ = s.read_to_string(&mut m);
        }
        m
    }

    /// The shard count from the start-up line.
    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        lock(&self.stderr).clone()
    }

    /// Everything the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        lock(&self.stdout).clone()
    }

    /// Sends SIGTERM (through `kill(1)`, since this workspace denies `unsafe`).
    pub fn sigterm(&self) {
        self.signal("-TERM");
    }

    /// Sends SIGINT.
    pub fn sigint(&self) {
        self.signal("-INT");
    }

    /// Sends a signal by `kill(1)` name, e.g. `"-HUP"`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(sig)
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill {sig} {} failed: {st}", self.pid());
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait_child_exit(&mut self.child, timeout)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A killed engine leaves its region behind; the next start of an instance would
        // replace it, but test instances are never started again.
        let _ = std::fs::remove_file(format!("/dev/shm/shardgate-{}", self.instance));
        if std::thread::panicking() {
            let err = self.stderr();
            let tail: String = {
                let lines: Vec<&str> = err.lines().collect();
                let start = lines.len().saturating_sub(40);
                lines[start..].join("\n")
            };
            eprintln!(
                "--- shardgate (pid {}) stderr, last 40 lines ---\n{tail}",
                self.child.id()
            );
        }
    }
}

/// Parses `shardgate listening on http://ADDR (N shards)` (or `https://`).
fn parse_listening(line: &str) -> Option<(SocketAddr, usize)> {
    let line = line.trim();
    let rest = line
        .strip_prefix("shardgate listening on http://")
        .or_else(|| line.strip_prefix("shardgate listening on https://"))?;
    let (addr, rest) = rest.split_once(' ')?;
    let n = rest.strip_prefix('(')?.split_once(' ')?.0;
    Some((addr.parse().ok()?, n.parse().ok()?))
}

/// What a finished (or killed) `shardgate` run produced.
#[derive(Debug)]
pub struct RunOutput {
    /// `None` when it did not exit within the timeout (it was then killed).
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `shardgate ARGS...` to completion (at most `timeout`, then kills it). `{config}` in an
/// argument is replaced by the path of a temp file holding `config`.
pub fn run_shardgate(args: &[&str], config: Option<&str>, timeout: Duration) -> RunOutput {
    let tmp = config.map(TempConfig::new);
    let mut cmd = Command::new(shardgate_bin());
    for a in args {
        match (&tmp, *a) {
            (Some(t), "{config}") => cmd.arg(t.path()),
            _ => cmd.arg(a),
        };
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shardgate");
    let out: Shared = Arc::default();
    let err: Shared = Arc::default();
    let t1 = drain_into(child.stdout.take().expect("piped"), out.clone());
    let t2 = drain_into(child.stderr.take().expect("piped"), err.clone());
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        crate::sleep(Duration::from_millis(5));
    };
    let _ = t1.join();
    let _ = t2.join();
    let stdout = lock(&out).clone();
    let stderr = lock(&err).clone();
    RunOutput {
        status,
        stdout,
        stderr,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_listening;

    #[test]
    fn parses_start_up_line() {
        let (a, n) = parse_listening("shardgate listening on http://127.0.0.1:40123 (2 shards)\n")
            .expect("parses");
        assert_eq!(a.port(), 40123);
        assert_eq!(n, 2);
        assert!(parse_listening("try: curl -s http://127.0.0.1:8080/").is_none());
        let (a, _) =
            parse_listening("shardgate listening on https://127.0.0.1:443 (1 shard, config: x)")
                .expect("https");
        assert_eq!(a.port(), 443);
    }
}
