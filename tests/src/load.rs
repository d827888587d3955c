//! Running `shardgate-bench load`, the load generator, as a process, and reading its counts.

use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::bench_bin;

/// A running `shardgate-bench load URL ARGS... --json`.
#[derive(Debug)]
pub struct Load {
    child: Child,
    what: String,
}

/// What a load run counted (its JSON report's `requests` and `errors`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    pub requests: u64,
    pub connect: u64,
    pub read: u64,
    pub write: u64,
    pub timeout: u64,
    pub status_4xx: u64,
    pub status_5xx: u64,
    pub stream_incomplete: u64,
    /// `--stream`: the 2xx streams checked whole.
    pub streams: u64,
}

impl LoadCounts {
    /// Requests that failed once their connection was open: everything but a refused connect.
    pub fn failed(&self) -> u64 {
        self.read
            + self.write
            + self.timeout
            + self.status_4xx
            + self.status_5xx
            + self.stream_incomplete
    }
}

impl Load {
    /// Starts the generator against `url` with `args` (`-c`, `-d`, `-H`, ...).
    pub fn start(url: &str, args: &[&str]) -> Load {
        let bin = bench_bin();
        let child = Command::new(&bin)
            .arg("load")
            .arg(url)
            .args(args)
            .arg("--json")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()));
        Load {
            child,
            what: format!("load {url} {args:?}"),
        }
    }

    /// Waits for the run to end and reads its report. Panics (with its stderr) when it failed.
    pub fn finish(self) -> LoadCounts {
        let out = self
            .child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("{}: {e}", self.what));
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{} failed ({}):\n{stdout}\n{}",
            self.what,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {stdout}", self.what));
        let n = |p: &str| v.pointer(p).and_then(Value::as_u64).unwrap_or(0);
        LoadCounts {
            requests: n("/requests"),
            connect: n("/errors/connect"),
            read: n("/errors/read"),
            write: n("/errors/write"),
            timeout: n("/errors/timeout"),
            status_4xx: n("/errors/status_4xx"),
            status_5xx: n("/errors/status_5xx"),
            stream_incomplete: n("/errors/stream_incomplete"),
            streams: n("/stream/streams"),
        }
    }
}
