//! Child processes that cannot outlive the comparison: every process `compare` starts is held
//! by a [`ChildGuard`], which stops it (SIGTERM, then SIGKILL of its whole tree after a bound)
//! when dropped, on every return path. Ctrl-C (SIGINT/SIGTERM/SIGHUP) only raises a flag that
//! every wait here checks, so the guards still run; a second Ctrl-C exits at once.

use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustix::process::{kill_process, Pid, Signal};

use super::procstat;

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);
/// Polling step of every bounded wait.
const POLL_STEP: Duration = Duration::from_millis(20);

/// Set by SIGINT/SIGTERM/SIGHUP.
#[derive(Debug, Clone)]
pub struct Interrupt(Arc<AtomicBool>);

impl Interrupt {
    /// Install the handlers: the first signal sets the flag, a second one exits (130).
    pub fn install() -> anyhow::Result<Self> {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ] {
            // Order matters: the conditional shutdown sees the flag the first handler set.
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))
                .context("installing a signal handler")?;
            signal_hook::flag::register(sig, Arc::clone(&flag))
                .context("installing a signal handler")?;
        }
        Ok(Self(flag))
    }

    /// A flag no signal sets (tests).
    #[cfg(test)]
    pub fn never() -> Self {
        Self(Arc::new(AtomicBool::new(false)))
    }

    pub fn is_set(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// An error when interrupted, to return with `?`.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.is_set() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Sleep `d`, waking early (with an error) when interrupted.
    pub fn sleep(&self, d: Duration) -> anyhow::Result<()> {
        let end = Instant::now() + d;
        loop {
            self.check()?;
            let now = Instant::now();
            if now >= end {
                return Ok(());
            }
            pause((end - now).min(POLL_STEP));
        }
    }
}

/// The one sleep of this module (this is the benchmark driver, not a shard).
#[allow(
    clippy::disallowed_methods,
    reason = "compare is a plain blocking driver process, not a shard"
)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// A child process stopped when this guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    grace: Duration,
}

impl ChildGuard {
    pub fn new(name: impl Into<String>, child: Child) -> Self {
        Self {
            name: name.into(),
            child: Some(child),
            grace: STOP_GRACE,
        }
    }

    /// Another bound between SIGTERM and SIGKILL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Whether it has exited (and, if so, how); reaps it.
    pub fn try_wait(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(c) => c
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name)),
            None => bail!("{} was already stopped", self.name),
        }
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.try_wait(), Ok(None))
    }

    /// What it wrote to its piped stdout and stderr, once it has exited (both pipes are read
    /// to their end, so call it only after the process is gone).
    pub fn output(&mut self) -> Option<String> {
        use std::io::Read;
        let child = self.child.as_mut()?;
        let mut text = String::new();
        if let Some(mut o) = child.stdout.take() {
            o.read_to_string(&mut text).ok()?;
        }
        if let Some(mut e) = child.stderr.take() {
            e.read_to_string(&mut text).ok()?;
        }
        Some(text)
    }

    /// Wait for it to exit on its own for at most `limit`; `None` when it is still running then.
    pub fn wait_for(
        &mut self,
        limit: Duration,
        intr: &Interrupt,
    ) -> anyhow::Result<Option<ExitStatus>> {
        let end = Instant::now() + limit;
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(Some(st));
            }
            intr.check()?;
            if Instant::now() >= end {
                return Ok(None);
            }
            pause(POLL_STEP);
        }
    }

    /// SIGTERM, wait up to the grace period (`STOP_GRACE` by default), then SIGKILL the process and everything it started.
    /// Returns its exit status when it exited on its own account.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let tree = procstat::process_tree(child.id());
        if let Some(pid) = pid_of(child.id()) {
            let _ = kill_process(pid, Signal::TERM);
        }
        let end = Instant::now() + self.grace;
        while Instant::now() < end {
            if let Ok(Some(st)) = child.try_wait() {
                kill_all(&tree[1..]);
                return Some(st);
            }
            pause(POLL_STEP);
        }
        eprintln!(
            "compare: {} did not stop within {:?} of SIGTERM; killing it",
            self.name, self.grace
        );
        kill_all(&tree);
        let _ = child.kill();
        // SIGKILL cannot be caught: the wait ends promptly.
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// SIGKILL the processes still alive (leftover nginx workers of a killed master, say).
fn kill_all(pids: &[u32]) {
    for &p in pids {
        if procstat::read_pid(p).is_ok() {
            if let Some(pid) = pid_of(p) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn drop_stops_a_child_that_ignores_nothing() {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let g = ChildGuard::new("sleep", child);
        assert!(procstat::read_pid(pid).is_ok());
        let t = Instant::now();
        drop(g);
        assert!(t.elapsed() < STOP_GRACE, "SIGTERM is enough for sleep");
        assert!(procstat::read_pid(pid).is_err(), "reaped and gone");
    }

    #[test]
    fn stop_kills_a_child_that_ignores_sigterm_and_its_children() {
        // The shell ignores TERM and starts a grandchild that ignores it too.
        let child = Command::new("sh")
            .args(["-c", "trap '' TERM; sleep 60 & wait"])
            .spawn()
            .unwrap();
        let grace = Duration::from_millis(500);
        let mut g = ChildGuard::new("stubborn", child).with_grace(grace);
        // Wait (bounded) until the grandchild exists.
        let end = Instant::now() + Duration::from_secs(5);
        while procstat::process_tree(g.pid()).len() < 2 && Instant::now() < end {
            pause(POLL_STEP);
        }
        let tree = procstat::process_tree(g.pid());
        assert_eq!(tree.len(), 2, "{tree:?}");
        let t = Instant::now();
        g.stop();
        assert!(t.elapsed() >= grace);
        assert!(t.elapsed() < grace + Duration::from_secs(3));
        // The orphaned grandchild is killed too: gone, or a zombie, within a moment (a SIGKILL
        // is delivered asynchronously).
        let end = Instant::now() + Duration::from_secs(2);
        while procstat::read_pid(tree[1]).is_ok() && Instant::now() < end {
            pause(POLL_STEP);
        }
        assert!(procstat::read_pid(tree[1]).is_err());
    }

    #[test]
    fn wait_for_is_bounded_and_interruptible() {
        let intr = Interrupt::never();
        let mut g = ChildGuard::new("sleep", Command::new("sleep").arg("30").spawn().unwrap());
        let t = Instant::now();
        assert!(g
            .wait_for(Duration::from_millis(100), &intr)
            .unwrap()
            .is_none());
        assert!(t.elapsed() < Duration::from_secs(2));
        intr.0.store(true, Ordering::Relaxed);
        assert!(g.wait_for(Duration::from_secs(30), &intr).is_err());
        assert!(intr.sleep(Duration::from_secs(30)).is_err());
        let mut quick = ChildGuard::new("true", Command::new("true").spawn().unwrap());
        let st = quick
            .wait_for(Duration::from_secs(5), &Interrupt::never())
            .unwrap();
        assert!(st.is_some_and(|s| s.success()));
    }
}
