//! Configuration: parse TOML into raw structs, validate into typed, resolved values.
//!
//! Parse, don't validate: everything the data plane reads is a checked type (socket addresses
//! resolved, durations, indices instead of names), so a shard never re-checks config.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::limits::*;

/// The config `shardgate` runs with no `--config`: a built-in demo model behind one route.
pub const EMBEDDED_DEFAULT: &str = r#"# shardgate's embedded default: the built-in demo model, no upstream needed.
[server]
listen = "127.0.0.1:8080"
cores = "auto"

[[upstreams]]
name = "demo"
provider = "mock"

[[routes]]
path_prefix = "/"
upstream = "demo"

# The demo tenant: key "sk-demo" (stored as its SHA-256, as every key should be).
[[tenants]]
name = "demo"
keys = ["sha256:f77894fdfa58e447c57e077eaa9708e8e009c84dc6aba2db80461275e9b85be7"]
models = ["*"]
rpm = 6000
tpm = 10000000
"#;

/// One problem found in a config file: the field (a dotted path) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// All the problems found; never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ----- raw, as written -----

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    upstreams: Vec<RawUpstream>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    tenants: Vec<crate::tenant::RawTenant>,
    #[serde(default)]
    models: Vec<crate::models::RawModel>,
    #[serde(default)]
    templates: Vec<crate::template::RawTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawCores {
    Count(i64),
    Word(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<String>,
    cores: Option<RawCores>,
    driver: Option<String>,
    header_bytes_max: Option<i64>,
    headers_count_max: Option<i64>,
    body_bytes_max: Option<i64>,
    header_timeout_ms: Option<i64>,
    body_timeout_ms: Option<i64>,
    idle_timeout_ms: Option<i64>,
    send_timeout_ms: Option<i64>,
    drain_timeout_ms: Option<i64>,
    connections_max: Option<i64>,
    requests_inflight_max: Option<i64>,
    instance: Option<String>,
    admin_listen: Option<String>,
    access_log: Option<String>,
    auth: Option<String>,
    queue_wait_ms_max: Option<i64>,
    queue_depth_max: Option<i64>,
    #[serde(default)]
    tls: Vec<RawTls>,
    listen_plain: Option<String>,
    handshake_timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    name: String,
    provider: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    connect_timeout_ms: Option<i64>,
    ttfb_timeout_ms: Option<i64>,
    read_timeout_ms: Option<i64>,
    pool_idle_timeout_ms: Option<i64>,
    pool_idle_max: Option<i64>,
    api_key_env: Option<String>,
    max_concurrency: Option<i64>,
    headroom_slots: Option<i64>,
    ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path_prefix: String,
    upstream: String,
}

// ----- validated -----

/// Settings from the engine's command line that override the config files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub instance: Option<String>,
    /// `Some(None)`: admin listener off.
    pub admin_listen: Option<Option<SocketAddr>>,
}

/// How many shards to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cores {
    /// One per CPU this process may run on.
    Auto,
    Count(usize),
    /// As the tuning file says (`shardgate-tune`; `--tuning FILE`, default `./tuning.toml`).
    Tuned,
}

/// Which monoio driver the shards use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverChoice {
    /// io_uring with the fast set-up flags, then plain io_uring, then epoll.
    Auto,
    IoUring,
    Epoll,
}

impl DriverChoice {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(Self::Auto),
            "io_uring" | "iouring" | "uring" => Some(Self::IoUring),
            "epoll" | "legacy" => Some(Self::Epoll),
            _ => None,
        }
    }
}

/// Which driver a thread ended up on (`shardgate_engine::runtime` picks it as its
/// [`DriverChoice`] allows; the shards' counter blocks report it to `shardgate-ctl status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    /// io_uring with COOP_TASKRUN | SINGLE_ISSUER | DEFER_TASKRUN.
    IoUringTuned,
    /// io_uring with the kernel's default set-up.
    IoUring,
    /// epoll (monoio's legacy driver).
    Epoll,
}

impl DriverKind {
    pub fn describe(self) -> &'static str {
        match self {
            DriverKind::IoUringTuned => "io_uring (coop_taskrun, single_issuer, defer_taskrun)",
            DriverKind::IoUring => "io_uring (default set-up)",
            DriverKind::Epoll => "epoll",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub cores: Cores,
    pub driver: DriverChoice,
    pub header_bytes_max: usize,
    pub headers_count_max: usize,
    pub body_bytes_max: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
    pub drain_timeout: Duration,
    pub connections_max: usize,
    /// Requests served at once per shard; past it new requests are shed with 503.
    pub requests_inflight_max: usize,
    /// Names the shared-memory region `shardgate-ctl` finds this engine by.
    pub instance: String,
    /// The admin listener (`/metrics`, health); `None` when `admin_listen = "off"`.
    pub admin_listen: Option<SocketAddr>,
    /// File the access log is appended to; `None`: no access log.
    pub access_log: Option<std::path::PathBuf>,
    /// Whether requests must present a tenant's key.
    pub auth: Auth,
    /// Longest a request waits in a saturated upstream's queue before a 429.
    pub queue_wait: Duration,
    /// Waiters per tenant per upstream per shard; past it, a 429 at once.
    pub queue_depth_max: usize,
    /// `[[server.tls]]`: when any, `listen` serves TLS with these certificates (chosen by SNI).
    pub tls: Vec<TlsFiles>,
    /// A plain-HTTP listener beside the TLS one.
    pub listen_plain: Option<SocketAddr>,
    /// Longest a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// A certificate chain and its key: the paths as written and the PEM they held when the config
/// was read (by the engine at start, by `shardgate-ctl` for `apply`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_path: String,
    pub cert_pem: Vec<u8>,
    pub key_path: String,
    pub key_pem: Vec<u8>,
}

impl TlsFiles {
    pub fn as_cert_files(&self) -> crate::cert::CertFiles<'_> {
        crate::cert::CertFiles {
            cert_path: &self.cert_path,
            cert_pem: &self.cert_pem,
            key_path: &self.key_path,
            key_pem: &self.key_pem,
        }
    }
}

/// The limits a request head is checked against (`[server]`; see
/// [`ServerConfig::head_limits`]).
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub header_bytes_max: usize,
    pub headers_count_max: usize,
    pub body_bytes_max: u64,
}

/// `[server] auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// Every request presents the key of a `[[tenants]]` entry (the default).
    Keys,
    /// No keys: every request is anonymous (set explicitly; a warning at start).
    None,
}

impl ServerConfig {
    pub fn head_limits(&self) -> HeadLimits {
        HeadLimits {
            header_bytes_max: self.header_bytes_max,
            headers_count_max: self.headers_count_max,
            body_bytes_max: self.body_bytes_max,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    /// A plain HTTP/1.1 server at the endpoints (OpenAI's API and every server compatible with
    /// it: vLLM, Mistral, ...); its credential goes as `authorization: Bearer`.
    Http,
    /// Anthropic's Messages API: its credential goes as `x-api-key` with `anthropic-version`,
    /// and OpenAI chat requests to it are translated (`provider::anthropic`).
    Anthropic,
    /// The built-in demo model, answered inside the shard.
    Mock,
}

/// One upstream server address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// `host[:port]` as written, sent as `Host`.
    pub authority: String,
    /// `https://`: the name sent as SNI and verified against the certificate (the host part of
    /// `authority`). `None`: plain HTTP.
    pub tls_name: Option<String>,
}

impl Endpoint {
    /// `host:port` (the port added when the endpoint left it out): the name that was resolved,
    /// and the key of a config message's table of resolved addresses.
    pub fn resolve_key(&self) -> String {
        with_port(
            &self.authority,
            if self.tls_name.is_some() { 443 } else { 80 },
        )
    }
}

/// Whether `api_key_env` variables are read (the engine) or only checked for a name
/// (`shardgate-ctl`, which runs without the upstreams' secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Read,
    Skip,
}

/// Where the files a config names (certificates, keys, CA files) are read from.
#[derive(Debug, Clone, Copy)]
enum Files<'a> {
    /// The file system: at start-up (main thread) and in `shardgate-ctl`, never in a shard.
    Disk,
    /// The contents ctl read, carried in the config message.
    Table(&'a std::collections::HashMap<String, Vec<u8>>),
}

/// How endpoint names become addresses.
#[derive(Debug, Clone, Copy)]
enum Resolver<'a> {
    /// The system resolver: at start-up (main thread) and in `shardgate-ctl`, never in a shard.
    System,
    /// The addresses ctl resolved, carried in the config message.
    Table(&'a std::collections::HashMap<String, SocketAddr>),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    pub provider: Provider,
    pub endpoints: Vec<Endpoint>,
    pub connect_timeout: Duration,
    pub ttfb_timeout: Duration,
    pub read_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_idle_max: usize,
    /// The header line (`authorization: Bearer ...\r\n`, or `x-api-key: ...\r\n` for
    /// Anthropic) carrying the upstream's own credential,
    /// read from the environment variable `api_key_env` names when the config is loaded.
    pub credential: Option<Vec<u8>>,
    /// Requests in flight to this upstream over all shards; past it, requests wait in fair
    /// per-tenant queues. `None`: no cap.
    pub max_concurrency: Option<u64>,
    /// Slots of `max_concurrency` a tenant never takes while another tenant has used this
    /// upstream within `FAIR_ACTIVE_MS` (crate::fair): that tenant's next request starts at
    /// once instead of waiting for a slot to free. 0: strictly work-conserving.
    pub headroom_slots: u64,
    /// `ca_file`: the CA certificates (path, PEM) its `https://` endpoints are verified against,
    /// instead of the system's trust store.
    pub ca: Option<(String, Vec<u8>)>,
}

#[derive(Debug, Clone)]
pub struct RouteConfig {
    pub path_prefix: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub tenants: Vec<crate::tenant::TenantConfig>,
    /// Model groups: what clients name in `"model"`, and the deployments serving it.
    pub models: Vec<crate::models::ModelGroup>,
    /// Prompt templates filled from a request's `variables`.
    pub templates: Vec<crate::template::Template>,
    /// Things that work but should change (a plain key in the file): printed by `--check`,
    /// at start and by `shardgate-ctl check`.
    pub warnings: Vec<String>,
}

impl Config {
    /// Parse and validate TOML text. Errors name the field and the reason (and, for syntax
    /// errors, the line).
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(text, Resolver::System, Files::Disk, Secrets::Read)
    }

    /// [`Config::from_toml`] for `shardgate-ctl`: `api_key_env` variables are not read (ctl does
    /// not hold the upstreams' secrets; each shard reads them from the engine's environment and
    /// refuses the config if one is missing).
    pub fn from_toml_without_secrets(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(text, Resolver::System, Files::Disk, Secrets::Skip)
    }

    /// Parse and validate a config that came over the ring, resolving endpoint names from the
    /// message's table (a shard never calls the system resolver).
    pub fn from_message(
        m: &crate::control::message::ConfigMessage,
    ) -> Result<Config, ConfigErrors> {
        Self::parse(
            &m.toml,
            Resolver::Table(&m.resolved),
            Files::Table(&m.files),
            Secrets::Read,
        )
    }

    /// The files this config read (certificates, keys, CA files): path → contents, for the
    /// config message.
    pub fn files(&self) -> Vec<(&str, &[u8])> {
        let mut out: Vec<(&str, &[u8])> = Vec::new();
        for t in &self.server.tls {
            out.push((&t.cert_path, &t.cert_pem));
            out.push((&t.key_path, &t.key_pem));
        }
        for u in &self.upstreams {
            if let Some((path, pem)) = &u.ca {
                out.push((path, pem));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn parse(
        text: &str,
        resolver: Resolver<'_>,
        files: Files<'_>,
        secrets: Secrets,
    ) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let field = match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    format!("line {line}")
                }
                None => "config".to_owned(),
            };
            ConfigErrors(vec![ConfigError {
                field,
                reason: e.message().to_owned(),
            }])
        })?;
        let mut v = Validator {
            errors: Vec::new(),
            warnings: Vec::new(),
            resolver,
            files,
            secrets,
        };
        let mut config = v.config(raw);
        if v.errors.is_empty() {
            config.warnings = v.warnings;
            Ok(config)
        } else {
            Err(ConfigErrors(v.errors))
        }
    }

    /// The `[server]` settings that differ between `self` and `new` and only take effect at
    /// start-up (listeners, shard count, driver, instance, access-log file), named as in the file.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<String> {
        let (a, b) = (&self.server, &new.server);
        let mut out = Vec::new();
        let mut check = |name: &str, same: bool| {
            if !same {
                out.push(format!("server.{name}"));
            }
        };
        check("listen", a.listen == b.listen);
        check("listen_plain", a.listen_plain == b.listen_plain);
        // Certificates change at run time; turning TLS on or off needs new listeners.
        check("tls", a.tls.is_empty() == b.tls.is_empty());
        check("cores", a.cores == b.cores);
        check("driver", a.driver == b.driver);
        check("instance", a.instance == b.instance);
        check("admin_listen", a.admin_listen == b.admin_listen);
        check("access_log", a.access_log == b.access_log);
        out
    }

    /// Apply settings given on the engine's command line, which win over every config file
    /// (the bootstrap one and each one applied later).
    pub fn apply_overrides(&mut self, o: &Overrides) {
        if let Some(i) = &o.instance {
            self.server.instance.clone_from(i);
        }
        if let Some(a) = o.admin_listen {
            self.server.admin_listen = a;
        }
    }

    /// The embedded default, already validated.
    pub fn embedded_default() -> Config {
        match Config::from_toml(EMBEDDED_DEFAULT) {
            Ok(c) => c,
            // INVARIANT: the embedded default is checked by a unit test.
            Err(e) => panic!("embedded default config is invalid: {e}"),
        }
    }
}

struct Validator<'a> {
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
    resolver: Resolver<'a>,
    files: Files<'a>,
    secrets: Secrets,
}

impl Validator<'_> {
    fn error(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn ranged(&mut self, field: &str, value: Option<i64>, default: u64, min: u64, max: u64) -> u64 {
        let Some(v) = value else { return default };
        match u64::try_from(v) {
            Ok(v) if (min..=max).contains(&v) => v,
            _ => {
                self.error(field, format!("must be between {min} and {max}, got {v}"));
                default
            }
        }
    }

    fn size(
        &mut self,
        field: &str,
        value: Option<i64>,
        default: usize,
        min: usize,
        max: usize,
    ) -> usize {
        let v = self.ranged(field, value, default as u64, min as u64, max as u64);
        usize::try_from(v).unwrap_or(default)
    }

    /// Read a file the config names (or take it from the message's table); `None` after
    /// noting the error under `field`.
    fn file(&mut self, field: &str, path: &str) -> Option<Vec<u8>> {
        if path.is_empty() {
            self.error(field, "must be a file path");
            return None;
        }
        let got = match self.files {
            Files::Table(t) => t
                .get(path)
                .cloned()
                .ok_or_else(|| format!("{path}: not carried by shardgate-ctl's message")),
            Files::Disk => match std::fs::metadata(path) {
                Ok(m) if m.len() > TLS_FILE_BYTES_MAX as u64 => Err(format!(
                    "{path}: {} bytes; at most {TLS_FILE_BYTES_MAX}",
                    m.len()
                )),
                Ok(_) => std::fs::read(path).map_err(|e| format!("{path}: cannot read: {e}")),
                Err(e) => Err(format!("{path}: cannot read: {e}")),
            },
        };
        match got {
            Ok(bytes) => Some(bytes),
            Err(reason) => {
                self.error(field, reason);
                None
            }
        }
    }

    fn tls(&mut self, raw: Vec<RawTls>) -> Vec<TlsFiles> {
        if raw.len() > TLS_CERTS_MAX {
            self.error(
                "server.tls",
                format!("at most {TLS_CERTS_MAX} certificates"),
            );
        }
        let mut out = Vec::with_capacity(raw.len());
        for (i, t) in raw.into_iter().enumerate() {
            let cert = self.file(&format!("server.tls[{i}].cert"), &t.cert);
            let key = self.file(&format!("server.tls[{i}].key"), &t.key);
            let (Some(cert_pem), Some(key_pem)) = (cert, key) else {
                continue;
            };
            let files = TlsFiles {
                cert_path: t.cert,
                cert_pem,
                key_path: t.key,
                key_pem,
            };
            match crate::cert::check_pair(&files.as_cert_files()) {
                Ok(_) => out.push(files),
                Err(reason) => self.error(format!("server.tls[{i}]"), reason),
            }
        }
        out
    }

    fn timeout(&mut self, field: &str, value: Option<i64>, default_ms: u64) -> Duration {
        Duration::from_millis(self.ranged(field, value, default_ms, 1, TIMEOUT_MS_MAX))
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(raw.server);
        if raw.upstreams.len() > UPSTREAMS_MAX {
            self.error("upstreams", format!("at most {UPSTREAMS_MAX} upstreams"));
        }
        let upstreams: Vec<UpstreamConfig> = raw
            .upstreams
            .into_iter()
            .enumerate()
            .map(|(i, u)| self.upstream(i, u))
            .collect();
        // Name → index; hashed, so a config with thousands of entries validates in linear time.
        let mut upstream_index = std::collections::HashMap::with_capacity(upstreams.len());
        for (i, u) in upstreams.iter().enumerate() {
            if upstream_index.insert(u.name.as_str(), i).is_some() {
                self.error(
                    format!("upstreams[{i}].name"),
                    format!("duplicate name {:?}", u.name),
                );
            }
        }
        if raw.routes.is_empty() && raw.models.is_empty() {
            self.error(
                "routes",
                "at least one [[routes]] or [[models]] entry is needed",
            );
        }
        if raw.routes.len() > ROUTES_MAX {
            self.error("routes", format!("at most {ROUTES_MAX} routes"));
        }
        let mut routes = Vec::with_capacity(raw.routes.len());
        let mut prefixes = std::collections::HashSet::with_capacity(raw.routes.len());
        for (i, r) in raw.routes.into_iter().enumerate() {
            if !r.path_prefix.starts_with('/') {
                self.error(format!("routes[{i}].path_prefix"), "must start with /");
            }
            if !prefixes.insert(r.path_prefix.clone()) {
                self.error(
                    format!("routes[{i}].path_prefix"),
                    format!("duplicate prefix {:?}", r.path_prefix),
                );
            }
            match upstream_index.get(r.upstream.as_str()).copied() {
                Some(upstream) => routes.push(RouteConfig {
                    path_prefix: r.path_prefix,
                    upstream,
                }),
                None => self.error(
                    format!("routes[{i}].upstream"),
                    format!("no [[upstreams]] entry is named {:?}", r.upstream),
                ),
            }
        }
        let mut errors = Vec::new();
        let models = crate::models::validate(raw.models, &upstreams, |field, reason| {
            errors.push((field, reason));
        });
        let templates = crate::template::validate(raw.templates, |field, reason| {
            errors.push((field, reason));
        });
        let mut warnings = Vec::new();
        let tenants = crate::tenant::validate(
            raw.tenants,
            |field, reason| errors.push((field, reason)),
            |w| warnings.push(w),
        );
        for (field, reason) in errors {
            self.error(field, reason);
        }
        self.warnings.extend(warnings);
        match server.auth {
            Auth::Keys if tenants.is_empty() => self.error(
                "tenants",
                "no [[tenants]] entry: add tenants with keys, or set [server] auth = \"none\" \
                 to serve every request without a key",
            ),
            Auth::None if !tenants.is_empty() => self.error(
                "server.auth",
                "\"none\" with [[tenants]] entries: their keys would never be checked",
            ),
            Auth::None => self.warnings.push(
                "server.auth = \"none\": requests are served without a key and without tenant limits"
                    .to_owned(),
            ),
            Auth::Keys => {}
        }
        Config {
            server,
            upstreams,
            routes,
            tenants,
            models,
            templates,
            warnings: Vec::new(),
        }
    }

    fn server(&mut self, raw: RawServer) -> ServerConfig {
        let listen_text = raw.listen.as_deref().unwrap_or("127.0.0.1:8080");
        let listen = listen_text.parse().unwrap_or_else(|_| {
            self.error(
                "server.listen",
                format!("{listen_text:?} is not an IP:port address"),
            );
            SocketAddr::from(([127, 0, 0, 1], 8080))
        });
        let cores = match raw.cores {
            None => Cores::Auto,
            Some(RawCores::Word(w)) if w == "auto" => Cores::Auto,
            Some(RawCores::Word(w)) if w == "tuned" => Cores::Tuned,
            Some(RawCores::Word(w)) => {
                self.error(
                    "server.cores",
                    format!("must be a number, \"auto\" or \"tuned\", got {w:?}"),
                );
                Cores::Auto
            }
            Some(RawCores::Count(n)) => {
                Cores::Count(self.size("server.cores", Some(n), 1, 1, SHARDS_MAX))
            }
        };
        let driver = match raw.driver.as_deref() {
            None => DriverChoice::Auto,
            Some(d) => DriverChoice::parse(d).unwrap_or_else(|| {
                self.error(
                    "server.driver",
                    format!("must be auto, io_uring or epoll, got {d:?}"),
                );
                DriverChoice::Auto
            }),
        };
        let tls = self.tls(raw.tls);
        let listen_plain = raw.listen_plain.as_deref().and_then(|text| {
            if tls.is_empty() {
                self.error(
                    "server.listen_plain",
                    "a plain listener beside TLS needs [[server.tls]] (without it, listen is plain)",
                );
            }
            let addr = text.parse::<SocketAddr>().ok();
            if addr.is_none() {
                self.error(
                    "server.listen_plain",
                    format!("{text:?} is not an IP:port address"),
                );
            }
            addr
        });
        if listen_plain.is_some_and(|p| p == listen && p.port() != 0) {
            self.error("server.listen_plain", "must differ from server.listen");
        }
        ServerConfig {
            tls,
            listen_plain,
            handshake_timeout: self.timeout(
                "server.handshake_timeout_ms",
                raw.handshake_timeout_ms,
                HANDSHAKE_TIMEOUT_MS_DEFAULT,
            ),
            listen,
            cores,
            driver,
            header_bytes_max: self.size(
                "server.header_bytes_max",
                raw.header_bytes_max,
                HEADER_BYTES_MAX_DEFAULT,
                HEADER_BYTES_MAX_MIN,
                HEADER_BYTES_MAX_MAX,
            ),
            headers_count_max: self.size(
                "server.headers_count_max",
                raw.headers_count_max,
                HEADERS_COUNT_MAX_DEFAULT,
                1,
                HEADERS_ARRAY_LEN,
            ),
            body_bytes_max: self.ranged(
                "server.body_bytes_max",
                raw.body_bytes_max,
                BODY_BYTES_MAX_DEFAULT,
                0,
                1 << 40,
            ),
            header_timeout: self.timeout(
                "server.header_timeout_ms",
                raw.header_timeout_ms,
                HEADER_TIMEOUT_MS_DEFAULT,
            ),
            body_timeout: self.timeout(
                "server.body_timeout_ms",
                raw.body_timeout_ms,
                BODY_TIMEOUT_MS_DEFAULT,
            ),
            idle_timeout: self.timeout(
                "server.idle_timeout_ms",
                raw.idle_timeout_ms,
                IDLE_TIMEOUT_MS_DEFAULT,
            ),
            send_timeout: self.timeout(
                "server.send_timeout_ms",
                raw.send_timeout_ms,
                SEND_TIMEOUT_MS_DEFAULT,
            ),
            drain_timeout: self.timeout(
                "server.drain_timeout_ms",
                raw.drain_timeout_ms,
                DRAIN_TIMEOUT_MS_DEFAULT,
            ),
            connections_max: self.size(
                "server.connections_max",
                raw.connections_max,
                CONNECTIONS_MAX_DEFAULT,
                1,
                1 << 20,
            ),
            requests_inflight_max: self.size(
                "server.requests_inflight_max",
                raw.requests_inflight_max,
                REQUESTS_INFLIGHT_MAX_DEFAULT,
                1,
                1 << 20,
            ),
            instance: self.instance(raw.instance),
            queue_wait: self.timeout(
                "server.queue_wait_ms_max",
                raw.queue_wait_ms_max,
                QUEUE_WAIT_MS_MAX_DEFAULT,
            ),
            queue_depth_max: self.size(
                "server.queue_depth_max",
                raw.queue_depth_max,
                QUEUE_DEPTH_MAX_DEFAULT,
                1,
                1 << 20,
            ),
            auth: match raw.auth.as_deref() {
                None | Some("keys") => Auth::Keys,
                Some("none") => Auth::None,
                Some(a) => {
                    self.error(
                        "server.auth",
                        format!("must be \"keys\" or \"none\", got {a:?}"),
                    );
                    Auth::Keys
                }
            },
            admin_listen: match raw.admin_listen.as_deref() {
                Some("off") => None,
                Some(text) => Some(text.parse().unwrap_or_else(|_| {
                    self.error(
                        "server.admin_listen",
                        format!("{text:?} is not an IP:port address or \"off\""),
                    );
                    SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT_DEFAULT))
                })),
                None => Some(SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT_DEFAULT))),
            },
            access_log: match raw.access_log {
                Some(p) if p.is_empty() => {
                    self.error(
                        "server.access_log",
                        "must be a file path (leave it out for none)",
                    );
                    None
                }
                p => p.map(std::path::PathBuf::from),
            },
        }
    }

    fn instance(&mut self, raw: Option<String>) -> String {
        let name = raw.unwrap_or_else(|| "default".to_owned());
        if let Err(reason) = check_instance_name(&name) {
            self.error("server.instance", reason);
        }
        name
    }

    fn upstream(&mut self, i: usize, raw: RawUpstream) -> UpstreamConfig {
        let f = |key: &str| format!("upstreams[{i}].{key}");
        if raw.name.is_empty() {
            self.error(f("name"), "must not be empty");
        }
        let provider = match raw.provider.as_deref() {
            None | Some("http") | Some("openai") => Provider::Http,
            Some("anthropic") => Provider::Anthropic,
            Some("mock") => Provider::Mock,
            Some(p) => {
                self.error(
                    f("provider"),
                    format!("must be openai (or http), anthropic or mock, got {p:?}"),
                );
                Provider::Http
            }
        };
        let mut endpoints = Vec::new();
        match provider {
            Provider::Mock if !raw.endpoints.is_empty() => {
                self.error(f("endpoints"), "a mock upstream takes no endpoints");
            }
            Provider::Http | Provider::Anthropic if raw.endpoints.is_empty() => {
                self.error(f("endpoints"), "at least one endpoint is needed");
            }
            _ => {}
        }
        if raw.endpoints.len() > ENDPOINTS_MAX {
            self.error(f("endpoints"), format!("at most {ENDPOINTS_MAX} endpoints"));
        }
        for (j, e) in raw.endpoints.iter().enumerate() {
            match parse_endpoint(e, self.resolver) {
                Ok(ep) => endpoints.push(ep),
                Err(reason) => self.error(format!("upstreams[{i}].endpoints[{j}]"), reason),
            }
        }
        let credential = match &raw.api_key_env {
            None => None,
            Some(var) if var.is_empty() => {
                self.error(f("api_key_env"), "must name an environment variable");
                None
            }
            Some(_) if self.secrets == Secrets::Skip => None,
            Some(var) => match std::env::var(var) {
                Ok(key) if !key.is_empty() && !key.bytes().any(|b| b < 0x20 || b == 0x7f) => {
                    Some(match provider {
                        Provider::Anthropic => format!("x-api-key: {key}\r\n").into_bytes(),
                        _ => format!("authorization: Bearer {key}\r\n").into_bytes(),
                    })
                }
                Ok(_) => {
                    self.error(
                        f("api_key_env"),
                        format!("${var} is empty or holds control characters"),
                    );
                    None
                }
                Err(_) => {
                    self.error(
                        f("api_key_env"),
                        format!("${var} is not set in the engine's environment"),
                    );
                    None
                }
            },
        };
        let ca = match raw.ca_file {
            None => None,
            Some(path) => {
                let field = f("ca_file");
                if !endpoints.iter().any(|e: &Endpoint| e.tls_name.is_some()) {
                    self.error(&field, "only https:// endpoints use a CA file");
                }
                self.file(&field, &path)
                    .and_then(|pem| match crate::cert::ca_certs(&path, &pem) {
                        Ok(_) => Some((path, pem)),
                        Err(reason) => {
                            self.error(&field, reason);
                            None
                        }
                    })
            }
        };
        let max_concurrency = raw.max_concurrency.and_then(|v| match u64::try_from(v) {
            Ok(v) if v >= 1 => Some(v),
            _ => {
                self.error(f("max_concurrency"), format!("must be at least 1, got {v}"));
                None
            }
        });
        let headroom_slots = match (raw.headroom_slots, max_concurrency) {
            (None, Some(max)) => max / FAIR_HEADROOM_DIVISOR,
            (None, None) => 0,
            (Some(v), max) => match u64::try_from(v) {
                Ok(v) if max.is_some_and(|m| v < m) => v,
                _ => {
                    self.error(
                        f("headroom_slots"),
                        match max {
                            Some(m) => {
                                format!("must be 0 to {} (below max_concurrency), got {v}", m - 1)
                            }
                            None => "needs max_concurrency".to_owned(),
                        },
                    );
                    0
                }
            },
        };
        UpstreamConfig {
            credential,
            max_concurrency,
            headroom_slots,
            ca,
            name: raw.name,
            provider,
            endpoints,
            connect_timeout: self.timeout(
                &f("connect_timeout_ms"),
                raw.connect_timeout_ms,
                CONNECT_TIMEOUT_MS_DEFAULT,
            ),
            ttfb_timeout: self.timeout(
                &f("ttfb_timeout_ms"),
                raw.ttfb_timeout_ms,
                TTFB_TIMEOUT_MS_DEFAULT,
            ),
            read_timeout: self.timeout(
                &f("read_timeout_ms"),
                raw.read_timeout_ms,
                READ_TIMEOUT_MS_DEFAULT,
            ),
            pool_idle_timeout: self.timeout(
                &f("pool_idle_timeout_ms"),
                raw.pool_idle_timeout_ms,
                POOL_IDLE_TIMEOUT_MS_DEFAULT,
            ),
            pool_idle_max: self.size(
                &f("pool_idle_max"),
                raw.pool_idle_max,
                POOL_IDLE_MAX_DEFAULT,
                0,
                65_536,
            ),
        }
    }
}

/// An instance name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with a dot (it names a file).
pub fn check_instance_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: must be 1 to 64 of A-Z a-z 0-9 . _ - (not starting with a dot)"
        ))
    }
}

/// `host:port`, adding `:default_port` when `authority` names no port.
fn with_port(authority: &str, default_port: u16) -> String {
    if authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':')
    }) {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    }
}

/// The host part of an authority (`[::1]:443` → `::1`, `api.example.com:8443` →
/// `api.example.com`), for SNI and certificate checks.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// `http://host[:port]` (an optional trailing `/`), resolved now (on the main thread or in ctl)
/// or looked up in a config message's table, so a shard never resolves a name.
fn parse_endpoint(text: &str, resolver: Resolver<'_>) -> Result<Endpoint, String> {
    let (rest, tls) = match (text.strip_prefix("http://"), text.strip_prefix("https://")) {
        (Some(rest), _) => (rest, false),
        (_, Some(rest)) => (rest, true),
        _ => return Err(format!("{text:?}: must start with http:// or https://")),
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "{text:?}: must be http(s)://host[:port] with no path"
        ));
    }
    let tls_name = if tls {
        let host = host_of(authority);
        if rustls_pki_types::ServerName::try_from(host).is_err() {
            return Err(format!("{text:?}: {host:?} is not a valid TLS server name"));
        }
        Some(host.to_owned())
    } else {
        None
    };
    let with_port = with_port(authority, if tls { 443 } else { 80 });
    if let Resolver::Table(table) = resolver {
        let addr = table
            .get(&with_port)
            .copied()
            .ok_or_else(|| format!("{text:?}: not resolved by shardgate-ctl"))?;
        return Ok(Endpoint {
            addr,
            authority: authority.to_owned(),
            tls_name,
        });
    }
    #[allow(
        clippy::disallowed_methods,
        reason = "config loading runs before any shard starts"
    )]
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&with_port)
        .map_err(|e| format!("{text:?}: cannot resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{text:?}: resolves to no address"))?;
    Ok(Endpoint {
        addr,
        authority: authority.to_owned(),
        tls_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::embedded_default();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(c.upstreams[0].provider, Provider::Mock);
        assert_eq!(c.routes[0].path_prefix, "/");
    }

    #[test]
    fn issue_example_parses() {
        let c = Config::from_toml(
            r#"
            [server]
            listen = "127.0.0.1:8080"
            cores = 1
            auth = "none"
            [[upstreams]]
            name = "rig"
            endpoints = ["http://127.0.0.1:18080"]
            [[routes]]
            path_prefix = "/"
            upstream = "rig"
            "#,
        )
        .expect("valid");
        assert_eq!(c.server.cores, Cores::Count(1));
        assert_eq!(
            c.upstreams[0].endpoints[0].addr,
            SocketAddr::from(([127, 0, 0, 1], 18080))
        );
        assert_eq!(c.upstreams[0].endpoints[0].authority, "127.0.0.1:18080");
        assert_eq!(c.routes[0].upstream, 0);
    }

    fn errors_of(text: &str) -> Vec<String> {
        match Config::from_toml(text) {
            Ok(_) => panic!("accepted: {text}"),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn errors_name_field_and_reason() {
        let errs = errors_of(
            r#"
            [server]
            cores = 0
            header_timeout_ms = -5
            driver = "kqueue"
            [[upstreams]]
            name = "a"
            endpoints = ["https://x", "ftp://y"]
            [[routes]]
            path_prefix = "v1"
            upstream = "b"
            "#,
        );
        let joined = errs.join("\n");
        for needle in [
            "server.cores: must be between 1",
            "server.header_timeout_ms",
            "server.driver",
            "upstreams[0].endpoints[0]",
            "upstreams[0].endpoints[1]",
            "routes[0].path_prefix: must start with /",
            "routes[0].upstream: no [[upstreams]] entry is named \"b\"",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn headroom_defaults_to_an_eighth_of_the_cap_and_must_stay_below_it() {
        let cfg = |extra: &str| {
            format!(
                "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"http://127.0.0.1:9\"]\n{extra}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n"
            )
        };
        let headroom = |extra: &str| {
            Config::from_toml(&cfg(extra))
                .map(|c| c.upstreams[0].headroom_slots)
                .map_err(|e| format!("{e:?}"))
        };
        assert_eq!(headroom("max_concurrency = 16"), Ok(2));
        assert_eq!(headroom("max_concurrency = 7"), Ok(0));
        assert_eq!(headroom(""), Ok(0));
        assert_eq!(headroom("max_concurrency = 16\nheadroom_slots = 0"), Ok(0));
        assert_eq!(
            headroom("max_concurrency = 16\nheadroom_slots = 15"),
            Ok(15)
        );
        for (extra, needle) in [
            (
                "max_concurrency = 16\nheadroom_slots = 16",
                "below max_concurrency",
            ),
            (
                "max_concurrency = 16\nheadroom_slots = -1",
                "below max_concurrency",
            ),
            ("headroom_slots = 1", "needs max_concurrency"),
        ] {
            let errs = errors_of(&cfg(extra)).join("\n");
            assert!(
                errs.contains("upstreams[0].headroom_slots") && errs.contains(needle),
                "{extra:?}: {errs}"
            );
        }
    }

    #[test]
    fn unknown_keys_and_syntax_errors_name_the_line() {
        let errs = errors_of("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n");
        assert!(errs[0].starts_with("line 3"), "{errs:?}");
        assert!(errs[0].contains("lisen"), "{errs:?}");
        let errs = errors_of("[server\n");
        assert!(errs[0].starts_with("line 1"), "{errs:?}");
    }

    fn parse_endpoint_dns(text: &str) -> Result<Endpoint, String> {
        parse_endpoint(text, Resolver::System)
    }

    #[test]
    fn auth_keys_needs_tenants_and_none_is_explicit() {
        let base = "[[upstreams]]\nname = \"a\"\nprovider = \"mock\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n";
        let errs = errors_of(base).join("\n");
        assert!(errs.contains("tenants: no [[tenants]] entry"), "{errs}");
        let ok = Config::from_toml(&format!("[server]\nauth = \"none\"\n{base}")).expect("valid");
        assert_eq!(ok.server.auth, Auth::None);
        assert!(
            ok.warnings.iter().any(|w| w.contains("auth")),
            "{:?}",
            ok.warnings
        );
        let t = "[[tenants]]\nname = \"t\"\nkeys = [\"sha256:f77894fdfa58e447c57e077eaa9708e8e009c84dc6aba2db80461275e9b85be7\"]\n";
        let errs = errors_of(&format!("[server]\nauth = \"none\"\n{base}{t}")).join("\n");
        assert!(errs.contains("server.auth"), "{errs}");
        let c = Config::from_toml(&format!("{base}{t}")).expect("valid");
        assert_eq!(c.tenants.len(), 1);
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        assert_eq!(Config::embedded_default().tenants[0].name, "demo");
    }

    #[test]
    fn api_key_env_is_read_by_the_engine_and_skipped_by_ctl() {
        let text = |var: &str| {
            format!(
                "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"a\"\nendpoints = [\"http://127.0.0.1:9\"]\napi_key_env = \"{var}\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n"
            )
        };
        let missing = text("SHARDGATE_TEST_SURELY_UNSET_VAR");
        let errs = errors_of(&missing).join("\n");
        assert!(errs.contains("upstreams[0].api_key_env"), "{errs}");
        assert!(Config::from_toml_without_secrets(&missing).is_ok());
        // PATH is set in every environment the tests run in.
        let c = Config::from_toml(&text("PATH")).expect("valid");
        let line = c.upstreams[0].credential.as_deref().expect("credential");
        assert!(line.starts_with(b"authorization: Bearer ") && line.ends_with(b"\r\n"));
        // An Anthropic upstream takes its key as `x-api-key`.
        let anthropic =
            text("PATH").replace("api_key_env", "provider = \"anthropic\"\napi_key_env");
        let c = Config::from_toml(&anthropic).expect("valid");
        assert_eq!(c.upstreams[0].provider, Provider::Anthropic);
        let line = c.upstreams[0].credential.as_deref().expect("credential");
        assert!(line.starts_with(b"x-api-key: ") && line.ends_with(b"\r\n"));
        let errs =
            errors_of(&text("PATH").replace("api_key_env", "provider = \"gemini\"\napi_key_env"))
                .join("\n");
        assert!(
            errs.contains("upstreams[0].provider") && errs.contains("anthropic"),
            "{errs}"
        );
    }

    #[test]
    fn endpoints_parse() {
        assert_eq!(
            parse_endpoint_dns("http://127.0.0.1")
                .expect("ok")
                .addr
                .port(),
            80
        );
        assert_eq!(
            parse_endpoint_dns("http://127.0.0.1:9/")
                .expect("ok")
                .authority,
            "127.0.0.1:9"
        );
        assert_eq!(
            parse_endpoint_dns("http://localhost:9")
                .expect("ok")
                .addr
                .port(),
            9
        );
        assert!(parse_endpoint_dns("http://a/b").is_err());
        assert!(parse_endpoint_dns("http://").is_err());
    }
}
