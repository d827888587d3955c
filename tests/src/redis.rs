//! A `redis-server` of a test's own (Debian package `redis-server`; `.ci/run` installs it), on
//! a port the test picked, without persistence, killed when dropped.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// A running `redis-server`; `port` is where it listens (its TLS port, if it has one).
#[derive(Debug)]
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// On `port`, plain.
    pub fn start(port: u16) -> Redis {
        Redis::start_with(port, &[])
    }

    /// On `port`, plain, with `extra` arguments (a password, the databases it has).
    pub fn start_with(port: u16, extra: &[&str]) -> Redis {
        let port_s = port.to_string();
        let mut args = vec!["--port", port_s.as_str()];
        args.extend_from_slice(extra);
        Redis::spawn(port, &args)
    }

    /// With the server arguments `args` (its ports among them), waiting until `port` takes
    /// connections.
    pub fn spawn(port: u16, args: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(args)
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        let up = wait_until(Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "redis-server did not start on port {port}");
        Redis { child, port }
    }
}

impl Redis {
    /// `redis-cli` with `args` against this server: its output, one value a line.
    pub fn cli(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw"])
            .args(args)
            .output()
            .expect("redis-cli (apt-get install redis-server)");
        assert!(out.status.success(), "redis-cli {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
