//! Running `shardgate-bench upstream`, the mock OpenAI-compatible upstream, as a process.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bench_bin;

/// How long [`BenchUpstream::start`] waits for the start-up line.
const START_WAIT: Duration = Duration::from_secs(20);
/// The start-up line's prefix, followed by the address.
const LISTENING: &str = "shardgate-bench upstream listening on http://";

/// A running `shardgate-bench upstream --listen 127.0.0.1:0 ARGS...`. Dropping it kills the
/// process.
#[derive(Debug)]
pub struct BenchUpstream {
    child: Child,
    addr: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl BenchUpstream {
    /// Starts the mock with `args` (e.g. `["--chunks", "4"]`) and waits (at most 20 s) for
    /// `shardgate-bench upstream listening on http://ADDR`. Panics with its stderr otherwise.
    pub fn start(args: &[&str]) -> BenchUpstream {
        let bin = bench_bin();
        let mut child = Command::new(&bin)
            .args(["upstream", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        let stderr: Arc<Mutex<String>> = Arc::default();
        {
            let mut err = child.stderr.take().expect("stderr is piped");
            let stderr = stderr.clone();
            std::thread::spawn(move || {
                let mut chunk = [0u8; 4096];
                while let Ok(n @ 1..) = err.read(&mut chunk) {
                    let text = String::from_utf8_lossy(&chunk[..n]);
                    stderr
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            });
        }
        let (tx, rx) = mpsc::channel::<String>();
        {
            let out = child.stdout.take().expect("stdout is piped");
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { return };
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
        }
        let deadline = Instant::now() + START_WAIT;
        let mut seen = Vec::new();
        let why = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix(LISTENING) {
                        match addr.parse() {
                            Ok(addr) => {
                                return BenchUpstream {
                                    child,
                                    addr,
                                    stderr,
                                }
                            }
                            Err(e) => break format!("bad address in {line:?}: {e}"),
                        }
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break "stdout closed".to_owned(),
            }
            if let Ok(Some(st)) = child.try_wait() {
                break format!("exited: {st}");
            }
            if Instant::now() >= deadline {
                break format!("no start-up line within {START_WAIT:?}");
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        crate::sleep(Duration::from_millis(50)); // let the stderr thread catch the last words
        panic!(
            "shardgate-bench upstream {args:?} did not start: {why}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            seen.join("\n"),
            stderr.lock().unwrap_or_else(|p| p.into_inner())
        );
    }

    /// The address it listens on (read from its start-up line).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends SIGTERM (through `kill(1)`, since this workspace denies `unsafe`).
    pub fn sigterm(&self) {
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .expect("run kill(1)");
        assert!(st.success(), "kill -TERM {} failed: {st}", self.pid());
    }

    /// Waits at most `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        crate::wait_child_exit(&mut self.child, timeout)
    }
}

impl Drop for BenchUpstream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- shardgate-bench upstream (pid {}) stderr ---\n{}",
                self.child.id(),
                self.stderr()
            );
        }
    }
}
