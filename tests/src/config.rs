//! Building shardgate configs for tests.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener};

/// A monoio driver, selected through the `SHARDGATE_DRIVER` environment variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Epoll,
    IoUring,
}

/// Both drivers, for tests that loop over them.
pub const DRIVERS: [Driver; 2] = [Driver::Epoll, Driver::IoUring];

impl Driver {
    /// The value of `SHARDGATE_DRIVER` that selects this driver.
    pub fn env_value(self) -> &'static str {
        match self {
            Driver::Epoll => "epoll",
            Driver::IoUring => "io_uring",
        }
    }

    /// Whether tests should run on this driver: all drivers unless `SHARDGATE_TEST_DRIVERS`
    /// (a comma list, e.g. `epoll`) says otherwise. Prints a note when skipping.
    pub fn enabled(self) -> bool {
        match std::env::var("SHARDGATE_TEST_DRIVERS") {
            Ok(list) if !list.trim().is_empty() => {
                let on = list.split(',').any(|d| d.trim() == self.env_value());
                if !on {
                    eprintln!(
                        "skipped: driver {} not in SHARDGATE_TEST_DRIVERS={list}",
                        self.env_value()
                    );
                }
                on
            }
            _ => true,
        }
    }
}

/// A port on 127.0.0.1 with nothing listening: bound, read back, and released. Connecting to it
/// is refused (unless another process grabs it in between, which is unlikely within a test).
pub fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr")
}

/// Builds a config with `listen = "127.0.0.1:0"`, `cores = 1`, one `http` upstream named `up`
/// and a route `/` to it. Extra lines go into `[server]` and into the upstream.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    endpoints: Vec<SocketAddr>,
    server: Vec<String>,
    upstream: Vec<String>,
    tenants: Vec<String>,
    cores: usize,
}

impl ConfigBuilder {
    pub fn new(upstream: SocketAddr) -> Self {
        ConfigBuilder {
            endpoints: vec![upstream],
            server: Vec::new(),
            upstream: Vec::new(),
            tenants: Vec::new(),
            cores: 1,
        }
    }

    /// A `key = value` line for `[server]`.
    pub fn server(mut self, line: &str) -> Self {
        self.server.push(line.to_owned());
        self
    }

    /// A `key = value` line for the `[[upstreams]]` entry.
    pub fn upstream(mut self, line: &str) -> Self {
        self.upstream.push(line.to_owned());
        self
    }

    /// A whole `[[tenants]]` entry (its lines without the header). With none, the config says
    /// `auth = "none"`.
    pub fn tenant(mut self, body: &str) -> Self {
        self.tenants.push(body.to_owned());
        self
    }

    pub fn cores(mut self, n: usize) -> Self {
        self.cores = n;
        self
    }

    pub fn build(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "[server]");
        let _ = writeln!(s, "listen = \"127.0.0.1:0\"");
        let _ = writeln!(s, "cores = {}", self.cores);
        if !self
            .server
            .iter()
            .any(|l| l.trim_start().starts_with("auth"))
            && self.tenants.is_empty()
        {
            let _ = writeln!(s, "auth = \"none\"");
        }
        for l in &self.server {
            let _ = writeln!(s, "{l}");
        }
        let eps: Vec<String> = self
            .endpoints
            .iter()
            .map(|a| format!("\"http://{a}\""))
            .collect();
        let _ = writeln!(s, "\n[[upstreams]]");
        let _ = writeln!(s, "name = \"up\"");
        let _ = writeln!(s, "endpoints = [{}]", eps.join(", "));
        for l in &self.upstream {
            let _ = writeln!(s, "{l}");
        }
        let _ = writeln!(s, "\n[[routes]]\npath_prefix = \"/\"\nupstream = \"up\"");
        for t in &self.tenants {
            let _ = writeln!(s, "\n[[tenants]]\n{t}");
        }
        s
    }
}

/// The built-in mock model as the upstream of every path: the tail of a test config.
pub const MOCK_ROUTE: &str = r#"
[[upstreams]]
name = "mock"
provider = "mock"

[[routes]]
path_prefix = "/"
upstream = "mock"
"#;

/// A config on 2 shards with the built-in mock model, `auth = "keys"`, a tenant store and an
/// audit log in `dir` (`tenants.json`, `audit.jsonl`), and, given `admin_token`, the admin
/// API on a free port accepting that token.
pub fn store_config(dir: &std::path::Path, admin_token: Option<&str>) -> String {
    let admin = admin_token.map_or(String::new(), |t| {
        format!(
            "admin_listen = \"127.0.0.1:0\"\nadmin_tokens = [\"sha256:{}\"]\n",
            crate::sha256_hex(t)
        )
    });
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 2
auth = "keys"
tenant_store = "{}"
audit_log = "{}"
{admin}{MOCK_ROUTE}"#,
        dir.join("tenants.json").display(),
        dir.join("audit.jsonl").display()
    )
}

/// The tenant store in `dir` (as [`store_config`] names it) as the engine reads it: its file
/// and its journal of changes since, as JSON. Panics if it does not read.
pub fn read_store(dir: &std::path::Path) -> serde_json::Value {
    let path = dir.join("tenants.json");
    match shardgate_engine::manage::read(&path.to_string_lossy()) {
        Ok(s) => serde_json::to_value(&s).unwrap_or_default(),
        Err(r) => panic!("the tenant store does not read: {}", r.message),
    }
}

/// Everything the tenant store's files in `dir` hold, as text (the file and its journal; ""
/// for one absent): what a check that no key is stored reads.
pub fn store_files_text(dir: &std::path::Path) -> String {
    ["tenants.json", "tenants.json.journal"]
        .iter()
        .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
        .collect()
}
