//! Running `shardgate-ctl` against a test gateway.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::ctl_bin;

/// What a finished `shardgate-ctl` run printed, and how it exited.
#[derive(Debug)]
pub struct CtlOutput {
    /// `None` when it was killed after the timeout.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CtlOutput {
    /// Both streams, for assertion messages.
    pub fn text(&self) -> String {
        format!(
            "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `shardgate-ctl --instance INSTANCE ARGS...` with extra environment, bounded by `timeout`.
pub fn run_ctl(
    instance: &str,
    args: &[&str],
    env: &[(&str, &str)],
    timeout: Duration,
) -> CtlOutput {
    let mut child = spawn_ctl(instance, args, env);
    let status = crate::wait_child_exit(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let mut stdout = String::new();
    let mut stderr = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut stdout);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    CtlOutput {
        code: status.and_then(|s| s.code()),
        stdout,
        stderr,
    }
}

/// Starts `shardgate-ctl --instance INSTANCE ARGS...` without waiting (stdout and stderr piped).
pub fn spawn_ctl(instance: &str, args: &[&str], env: &[(&str, &str)]) -> Child {
    let bin = ctl_bin();
    let mut cmd = Command::new(&bin);
    cmd.args(["--instance", instance])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn()
        .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", bin.display()))
}

/// `status --json` of `instance`, parsed.
pub fn ctl_status(instance: &str) -> serde_json::Value {
    let out = run_ctl(
        instance,
        &["status", "--json"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("status --json: {e}\n{}", out.text()))
}

/// How long a change through ctl may take in the tests (it waits for every shard).
pub const CTL_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// `shardgate-ctl ARGS` on `gw`'s instance, asserting it succeeded: its stdout.
#[track_caller]
pub fn ctl_ok(gw: &crate::Gateway, args: &[&str]) -> String {
    let out = run_ctl(gw.instance(), args, &[], CTL_WAIT);
    assert_eq!(out.code, Some(0), "ctl {args:?}: {}", out.text());
    out.stdout
}

/// The key `keys create` or `keys rotate` printed (its last line), and the new key's id (the
/// last `key_` word: rotate names the old key first).
pub fn new_key(out: &str) -> (String, String) {
    let key = out.lines().last().unwrap_or_default().to_owned();
    assert!(key.starts_with("sk-sg-"), "no key printed:\n{out}");
    let id = out
        .split_whitespace()
        .rfind(|w| w.starts_with("key_"))
        .unwrap_or_default()
        .trim_end_matches(':')
        .to_owned();
    (key, id)
}
