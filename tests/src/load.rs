//! Running `shardgate-bench load`, the load generator, as a process, and reading its counts.

use std::process::{Child, Command, Stdio};

use serde_json::Value;
use shardgate_bench::load::Errors;

use crate::bench_bin;

/// A running `shardgate-bench load URL ARGS... --json`.
#[derive(Debug)]
pub struct Load {
    child: Child,
    what: String,
}

/// What a load run counted: its JSON report's `requests` and `errors` (read into the bench's
/// own type, so a field it renames fails the read instead of counting 0), and with `--stream`
/// the 2xx streams checked whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadCounts {
    pub requests: u64,
    pub errors: Errors,
    pub streams: u64,
}

impl LoadCounts {
    /// Requests that failed once their connection was open: every error but a refused connect.
    pub fn failed(&self) -> u64 {
        self.errors.total() - self.errors.connect
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
        let errors = serde_json::from_value(v["errors"].clone())
            .unwrap_or_else(|e| panic!("{}: no error counts ({e}): {stdout}", self.what));
        LoadCounts {
            requests: v["requests"]
                .as_u64()
                .unwrap_or_else(|| panic!("{}: no request count: {stdout}", self.what)),
            errors,
            // `null` without `--stream`.
            streams: v
                .pointer("/stream/streams")
                .and_then(Value::as_u64)
                .unwrap_or(0),
        }
    }
}
