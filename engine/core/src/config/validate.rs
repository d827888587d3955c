//! Validation: the raw config checked field by field into the resolved one, every problem
//! collected with the field it is in (a dotted path) and the reason.

use std::net::SocketAddr;
use std::time::Duration;

use super::endpoint::{parse_endpoint, Endpoint, Resolver};
use super::raw::{RawConfig, RawCores, RawServer, RawTls, RawUpstream};
use super::resolved::{
    Auth, AwsAuth, Config, Cores, DriverChoice, Provider, RouteConfig, ServerConfig, StoreFile,
    TlsFiles, UpstreamConfig,
};
use super::ConfigError;
use crate::limits::*;

/// Whether `api_key_env` variables are read (the engine) or only checked for a name
/// (`shardgate-ctl`, which runs without the upstreams' secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Secrets {
    Read,
    Skip,
}

/// Where the files a config names (certificates, keys, CA files) are read from.
#[derive(Debug, Clone, Copy)]
pub(super) enum Files<'a> {
    /// The file system: at start-up (main thread) and in `shardgate-ctl`, never in a shard.
    Disk,
    /// The contents ctl read, carried in the config message.
    Table(&'a std::collections::HashMap<String, Vec<u8>>),
}

/// A file of the tenant store, at most `STORE_BYTES_MAX` bytes (an absent one is empty).
fn read_bounded(path: &str) -> Result<Vec<u8>, String> {
    match std::fs::metadata(path) {
        Ok(m) if m.len() > crate::store::STORE_BYTES_MAX as u64 => Err(format!(
            "{path}: {} bytes; at most {}",
            m.len(),
            crate::store::STORE_BYTES_MAX
        )),
        _ => match std::fs::read(path) {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(format!("{path}: cannot read: {e}")),
        },
    }
}

/// Whether the tenant store's file is read.
#[derive(Debug)]
pub(super) enum StoreRead {
    Read,
    /// Taken as empty (its path is kept): for a change to the store, which reads it itself.
    Skip,
    /// Given, already read (the engine's config builder holds the store in memory).
    Given(Box<crate::store::Store>),
}

pub(super) struct Validator<'a> {
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<String>,
    pub(super) resolver: Resolver<'a>,
    pub(super) files: Files<'a>,
    pub(super) secrets: Secrets,
    pub(super) store: StoreRead,
    /// The store the config was validated with, once read: handed back to whoever holds it.
    pub(super) store_out: Option<crate::store::Store>,
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

    /// Read the tenant store's file (an absent one is an empty store). Always from disk, also
    /// for a config that came in a message: the store can hold far more than a message carries,
    /// and the one reading it there is the engine's config builder thread, never a shard.
    fn store_file(&mut self, path: &str) -> Option<StoreFile> {
        const FIELD: &str = "server.tenant_store";
        if path.is_empty() {
            self.error(FIELD, "must be a file path");
            return None;
        }
        if !matches!(self.store, StoreRead::Read) {
            return Some(StoreFile {
                path: path.to_owned(),
                bytes: Vec::new(),
                journal: Vec::new(),
            });
        }
        let journal = crate::store::journal_path(path);
        let got = read_bounded(path).and_then(|bytes| Ok((bytes, read_bounded(&journal)?)));
        match got {
            Ok((bytes, journal)) => Some(StoreFile {
                path: path.to_owned(),
                bytes,
                journal,
            }),
            Err(reason) => {
                self.error(FIELD, reason);
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

    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let mut server = self.server(raw.server);
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
        let prices =
            crate::prices::PriceTable::build(raw.pricing.as_ref(), raw.prices, |field, reason| {
                errors.push((field, reason));
            });
        let mut warnings = Vec::new();
        // A deployment's cost is its model's price, else its group's: one with neither is
        // reported as unpriced (a metric and this warning), never counted as $0.
        for (i, g) in models.iter().enumerate() {
            for (j, d) in g.deployments.iter().enumerate() {
                if prices.get(&d.model).is_none() && prices.get(&g.name).is_none() {
                    warnings.push(format!(
                        "models[{i}].deployments[{j}]: no price for {:?} or {:?}: its spend is \
                         reported as unpriced (add a [[prices]] entry)",
                        d.model, g.name
                    ));
                }
            }
        }
        // The tenant store's tenants are validated as `[[tenants]]` entries after the file's. A
        // file entry whose name the store has too is ignored with a warning: the store wins
        // (the file's `[[tenants]]` are the bootstrap; `shardgate-ctl tenants import` copies
        // them into the store, and what is left in the file is drift).
        let given = match std::mem::replace(&mut self.store, StoreRead::Skip) {
            StoreRead::Given(s) => Some(*s),
            _ => None,
        };
        let store = match &server.tenant_store {
            None => None,
            Some(_) if given.is_some() => given,
            Some(f) if f.bytes.is_empty() && f.journal.is_empty() => {
                Some(crate::store::Store::default())
            }
            Some(f) => match crate::store::Store::from_parts(&f.bytes, &f.journal) {
                Ok(s) => Some(s),
                Err(reason) => {
                    errors.push((
                        "server.tenant_store".to_owned(),
                        format!("{}: {reason}", f.path),
                    ));
                    None
                }
            },
        };
        // Read into `store`: the file's bytes (16 MB at 100,000 keys) are not kept in the
        // config, which the builder and every shard hold for as long as it runs.
        if let Some(f) = server.tenant_store.as_mut() {
            f.bytes = Vec::new();
            f.journal = Vec::new();
        }
        let mut all = Vec::with_capacity(raw.tenants.len());
        let mut file_index = Vec::with_capacity(raw.tenants.len());
        let mut store_shadows = Vec::new();
        for (i, t) in raw.tenants.into_iter().enumerate() {
            if store
                .as_ref()
                .is_some_and(|s| s.tenants.contains_key(t.name()))
            {
                store_shadows.push(t.name().to_owned());
                warnings.push(format!(
                    "tenants[{i}]: {:?} is in the tenant store too, which wins; this entry is \
                     ignored (remove it from the file)",
                    t.name()
                ));
                continue;
            }
            file_index.push(i);
            all.push(t);
        }
        let from_file = all.len();
        let mut store_extra = Vec::new();
        let mut store_names = Vec::new();
        if let Some(store) = &store {
            for (t, expiries, suspended) in store.raw_tenants() {
                store_names.push(t.name().to_owned());
                all.push(t);
                store_extra.push((expiries, suspended));
            }
        }
        let origin = |i: usize| match i.checked_sub(from_file) {
            None => format!("tenants[{}]", file_index.get(i).copied().unwrap_or(i)),
            Some(j) => format!(
                "tenant_store.tenants[{:?}]",
                store_names.get(j).map_or("", String::as_str)
            ),
        };
        let mut tenants = crate::tenant::validate(
            all,
            origin,
            |field, reason| errors.push((field, reason)),
            |w| warnings.push(w),
        );
        if let Some(tail) = tenants.get_mut(from_file..) {
            crate::store::finish(tail, &store_extra);
        }
        let limited: usize = tenants.iter().map(|t| t.key_limits.len()).sum();
        if limited > crate::tenant::KEYS_LIMITED_MAX {
            errors.push((
                "server.tenant_store".to_owned(),
                format!(
                    "{limited} keys have limits of their own; at most {}",
                    crate::tenant::KEYS_LIMITED_MAX
                ),
            ));
        }
        // A tenant's key is never an admin token, unless the file names that tenant as the one
        // whose keys may be (`admin_token_tenant`, LiteLLM's master key); a store's never.
        let sharing = server.admin_token_tenant.as_deref();
        if let Some(name) = sharing {
            if !tenants[..from_file.min(tenants.len())]
                .iter()
                .any(|t| t.name == name)
            {
                errors.push((
                    "server.admin_token_tenant".to_owned(),
                    format!(
                        "{name:?} is not a [[tenants]] entry of this file (a tenant store's \
                         tenants never share a key with an admin)"
                    ),
                ));
            }
        }
        for (i, token) in server.admin_tokens.iter().enumerate() {
            if tenants.iter().enumerate().any(|(j, t)| {
                !(j < from_file && sharing == Some(t.name.as_str()))
                    && t.keys.iter().any(|k| &k.hash == token)
            }) {
                errors.push((
                    format!("server.admin_tokens[{i}]"),
                    "is also a tenant's key; an admin token must be a secret of its own".into(),
                ));
            }
        }
        for (field, reason) in errors {
            self.error(field, reason);
        }
        self.warnings.extend(warnings);
        match server.auth {
            Auth::Keys if tenants.is_empty() && server.tenant_store.is_none() => self.error(
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
        let fleet = raw.fleet.and_then(|f| self.fleet(f));
        let telemetry = raw.telemetry.and_then(|t| self.telemetry(t));
        self.store_out = store;
        Config {
            fleet,
            telemetry,
            server,
            upstreams,
            routes,
            key_table: std::sync::Arc::new(crate::tenant::Tenants::new(&tenants)),
            tenants,
            store_from: from_file,
            store_shadows,
            models,
            templates,
            prices: std::sync::Arc::new(prices),
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
            tenant_store: match raw.tenant_store {
                Some(p) => self.store_file(&p),
                None => None,
            },
            admin_tokens: raw
                .admin_tokens
                .iter()
                .enumerate()
                .filter_map(|(i, t)| {
                    let hash = t
                        .strip_prefix("sha256:")
                        .and_then(|h| crate::tenant::parse_hash(&h.to_ascii_lowercase()));
                    if hash.is_none() {
                        self.error(
                            format!("server.admin_tokens[{i}]"),
                            "must be \"sha256:\" and the 64 hex digits of the token's SHA-256 \
                             (printf %s \"$TOKEN\" | sha256sum); the token itself is never written",
                        );
                    }
                    hash
                })
                .collect(),
            admin_token_tenant: raw.admin_token_tenant,
            audit_log: match raw.audit_log {
                Some(p) if p.is_empty() => {
                    self.error(
                        "server.audit_log",
                        "must be a file path (leave it out for none)",
                    );
                    None
                }
                p => p.map(std::path::PathBuf::from),
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

    /// `[fleet]`: where Redis is (`redis://HOST[:PORT][/DB]`, or `rediss://` for TLS), the CA
    /// its certificate is verified against (`redis_ca_file`, else the system's roots), its
    /// password's variable, how often to sync.
    fn fleet(&mut self, raw: super::raw::RawFleet) -> Option<super::FleetConfig> {
        let sync_ms = self.ranged(
            "fleet.sync_ms",
            raw.sync_ms,
            crate::limits::FLEET_SYNC_MS_DEFAULT,
            5,
            1_000,
        );
        let Some(url) = raw.redis else {
            self.error(
                "fleet.redis",
                "needed: the Redis server, e.g. \"redis://127.0.0.1:6379/0\"",
            );
            return None;
        };
        let (tls, rest) = match (url.strip_prefix("rediss://"), url.strip_prefix("redis://")) {
            (Some(rest), _) => (true, rest),
            (None, Some(rest)) => (false, rest),
            (None, None) => {
                self.error(
                    "fleet.redis",
                    format!("{url:?}: must start with redis:// (or rediss:// for TLS)"),
                );
                return None;
            }
        };
        const CA_FIELD: &str = "fleet.redis_ca_file";
        let ca_file = match raw.redis_ca_file {
            None => None,
            Some(_) if !tls => {
                self.error(CA_FIELD, "only a rediss:// (TLS) Redis uses a CA file");
                None
            }
            Some(path) => self.file(CA_FIELD, &path).and_then(|pem| {
                match crate::cert::ca_certs(&path, &pem) {
                    Ok(_) => Some((path, pem)),
                    Err(reason) => {
                        self.error(CA_FIELD, reason);
                        None
                    }
                }
            }),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, d)) => match d.parse::<u32>() {
                Ok(d) if d < 16 => (h, d),
                _ => {
                    self.error(
                        "fleet.redis",
                        format!("{url:?}: the database must be 0 to 15"),
                    );
                    return None;
                }
            },
            None => (rest, 0),
        };
        if hostport.contains('@') {
            self.error(
                "fleet.redis",
                "a password in the URL would be in the config: put it in the variable \
                 redis_password_env names",
            );
            return None;
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) if p > 0 => (h, p),
                _ => {
                    self.error("fleet.redis", format!("{url:?}: bad port {p:?}"));
                    return None;
                }
            },
            None => (hostport, 6379),
        };
        if host.is_empty() {
            self.error("fleet.redis", format!("{url:?}: no host"));
            return None;
        }
        let password = match raw.redis_password_env {
            None => None,
            Some(var) if var.is_empty() => {
                self.error(
                    "fleet.redis_password_env",
                    "must name an environment variable",
                );
                None
            }
            Some(_) if self.secrets == Secrets::Skip => None,
            Some(var) => match std::env::var(&var) {
                Ok(p) if !p.is_empty() => Some(p),
                _ => {
                    self.error(
                        "fleet.redis_password_env",
                        format!("${var} is not set (or empty) in the engine's environment"),
                    );
                    None
                }
            },
        };
        Some(super::FleetConfig {
            url: url.clone(),
            host: host.to_owned(),
            port,
            db,
            tls,
            ca_file,
            password,
            sync_ms,
        })
    }

    /// `[telemetry]`: the collector (`http://` or `https://`; `/v1/traces` is appended), the
    /// protocol, the service's name, the sampling ratio, the headers' variable and the
    /// exporter's bounds.
    fn telemetry(&mut self, raw: super::raw::RawTelemetry) -> Option<super::TelemetryConfig> {
        use crate::limits::{
            OTLP_EXPORT_INTERVAL_MS_DEFAULT, OTLP_EXPORT_TIMEOUT_MS_DEFAULT,
            OTLP_QUEUE_SPANS_MAX_DEFAULT,
        };
        let export_timeout_ms = self.ranged(
            "telemetry.export_timeout_ms",
            raw.export_timeout_ms,
            OTLP_EXPORT_TIMEOUT_MS_DEFAULT,
            10,
            120_000,
        );
        let export_interval_ms = self.ranged(
            "telemetry.export_interval_ms",
            raw.export_interval_ms,
            OTLP_EXPORT_INTERVAL_MS_DEFAULT,
            10,
            60_000,
        );
        let queue_spans_max = self.ranged(
            "telemetry.queue_spans_max",
            raw.queue_spans_max,
            OTLP_QUEUE_SPANS_MAX_DEFAULT,
            crate::limits::SPAN_BATCH_MAX as u64,
            1_048_576,
        );
        let protocol = match raw.protocol.as_deref() {
            None | Some("http/protobuf") => super::OtlpProtocol::Protobuf,
            Some("http/json") => super::OtlpProtocol::Json,
            Some(other) => {
                self.error(
                    "telemetry.protocol",
                    format!("{other:?}: must be \"http/protobuf\" or \"http/json\" (gRPC is not spoken)"),
                );
                super::OtlpProtocol::Protobuf
            }
        };
        let sample_ratio = match raw.sample_ratio {
            None => 1.0,
            Some(r) if (0.0..=1.0).contains(&r) => r,
            Some(r) => {
                self.error(
                    "telemetry.sample_ratio",
                    format!("must be between 0.0 and 1.0, got {r}"),
                );
                1.0
            }
        };
        let service_name = raw.service_name.unwrap_or_else(|| "shardgate".to_owned());
        if service_name.is_empty() || service_name.len() > 255 {
            self.error("telemetry.service_name", "must be 1 to 255 bytes");
        }
        let Some(endpoint) = raw.otlp_endpoint else {
            self.error(
                "telemetry.otlp_endpoint",
                "needed: the collector's OTLP/HTTP address, e.g. \"http://127.0.0.1:4318\"",
            );
            return None;
        };
        let base = endpoint.trim_end_matches('/');
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("https://"));
        match rest {
            Some(r) if !r.is_empty() && !r.starts_with('/') && !r.contains(char::is_whitespace) => {
            }
            _ => {
                self.error(
                    "telemetry.otlp_endpoint",
                    format!("{endpoint:?}: must be an http:// or https:// URL with a host"),
                );
                return None;
            }
        }
        if base.contains('@') {
            self.error(
                "telemetry.otlp_endpoint",
                "credentials in the URL would be in the config: put them in the variable \
                 headers_env names",
            );
            return None;
        }
        let headers = match raw.headers_env.as_deref() {
            None => Vec::new(),
            Some("") => {
                self.error("telemetry.headers_env", "must name an environment variable");
                Vec::new()
            }
            Some(_) if self.secrets == Secrets::Skip => Vec::new(),
            Some(var) => match std::env::var(var) {
                Ok(v) => match crate::telemetry_headers::parse(&v) {
                    Ok(h) => h,
                    Err(why) => {
                        // The value is a secret: never quoted.
                        self.error("telemetry.headers_env", format!("${var}: {why}"));
                        Vec::new()
                    }
                },
                Err(_) => {
                    self.error(
                        "telemetry.headers_env",
                        format!("${var} is not set in the engine's environment"),
                    );
                    Vec::new()
                }
            },
        };
        Some(super::TelemetryConfig {
            traces_url: format!("{base}/v1/traces"),
            endpoint: base.to_owned(),
            protocol,
            service_name,
            sample_ratio,
            headers,
            headers_env: raw.headers_env,
            export_timeout_ms,
            export_interval_ms,
            queue_spans_max,
        })
    }

    fn instance(&mut self, raw: Option<String>) -> String {
        let name = raw.unwrap_or_else(|| "default".to_owned());
        if let Err(reason) = check_instance_name(&name) {
            self.error("server.instance", reason);
        }
        name
    }

    /// A Bedrock upstream's `region` (required) and credentials: from `aws_credentials_file`
    /// (the `[default]` profile of an AWS shared credentials file, read by the engine itself:
    /// the secret never passes through shardgate-ctl) or from the engine's environment.
    fn aws(
        &mut self,
        i: usize,
        provider: Provider,
        region: Option<&str>,
        file: Option<String>,
    ) -> Option<AwsAuth> {
        let f = |key: &str| format!("upstreams[{i}].{key}");
        if provider != Provider::Bedrock {
            if region.is_some() {
                self.error(f("region"), "only for provider bedrock");
            }
            if file.is_some() {
                self.error(f("aws_credentials_file"), "only for provider bedrock");
            }
            return None;
        }
        let Some(region) = region else {
            self.error(
                f("region"),
                "required for provider bedrock (the AWS region requests are signed for, e.g. \"us-east-1\")",
            );
            return None;
        };
        if let Err(reason) = check_aws_region(region) {
            self.error(f("region"), reason);
            return None;
        }
        if self.secrets == Secrets::Skip {
            return None;
        }
        let creds = match &file {
            Some(path) => aws_credentials_file(path),
            None => aws_env_credentials(),
        };
        match creds {
            Ok(auth) => Some(auth),
            Err(reason) => {
                let field = if file.is_some() {
                    f("aws_credentials_file")
                } else {
                    f("provider")
                };
                self.error(field, reason);
                None
            }
        }
    }

    fn upstream(&mut self, i: usize, raw: RawUpstream) -> UpstreamConfig {
        let f = |key: &str| format!("upstreams[{i}].{key}");
        if raw.name.is_empty() {
            self.error(f("name"), "must not be empty");
        }
        let provider = match raw.provider.as_deref() {
            None | Some("http") | Some("openai") => Provider::Http,
            Some("anthropic") => Provider::Anthropic,
            Some("azure") => Provider::Azure,
            Some("gemini") => Provider::Gemini,
            Some("bedrock") => Provider::Bedrock,
            Some("openai-responses") => Provider::OpenaiResponses,
            Some("mock") => Provider::Mock,
            Some(p) => {
                self.error(
                    f("provider"),
                    format!(
                        "must be openai (or http), anthropic, azure, gemini, bedrock, \
                         openai-responses or mock, got {p:?}"
                    ),
                );
                Provider::Http
            }
        };
        let mut endpoints = Vec::new();
        match provider {
            Provider::Mock if !raw.endpoints.is_empty() => {
                self.error(f("endpoints"), "a mock upstream takes no endpoints");
            }
            Provider::Mock => {}
            _ if raw.endpoints.is_empty() => {
                self.error(f("endpoints"), "at least one endpoint is needed");
            }
            _ => {}
        }
        if provider == Provider::Bedrock && raw.api_key_env.is_some() {
            self.error(
                f("api_key_env"),
                "a bedrock upstream signs with AWS credentials (AWS_ACCESS_KEY_ID, \
                 AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN or aws_credentials_file), not a key",
            );
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
                        Provider::Azure => format!("api-key: {key}\r\n").into_bytes(),
                        Provider::Gemini => format!("x-goog-api-key: {key}\r\n").into_bytes(),
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
        let api_version = match (&raw.api_version, provider) {
            (None, Provider::Azure) => {
                self.error(
                    f("api_version"),
                    "required for provider azure (the api-version of every request, e.g. \"2024-10-21\")",
                );
                None
            }
            (Some(v), Provider::Azure) => {
                let ok = !v.is_empty()
                    && v.len() <= API_VERSION_BYTES_MAX
                    && v.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
                if !ok {
                    self.error(
                        f("api_version"),
                        format!("must be 1 to {API_VERSION_BYTES_MAX} of A-Z a-z 0-9 - . (e.g. \"2024-10-21\"), got {v:?}"),
                    );
                }
                ok.then(|| v.clone())
            }
            (Some(_), _) => {
                self.error(f("api_version"), "only for provider azure");
                None
            }
            (None, _) => None,
        };
        let aws = self.aws(i, provider, raw.region.as_deref(), raw.aws_credentials_file);
        let region = raw.region.filter(|_| provider == Provider::Bedrock);
        UpstreamConfig {
            credential,
            api_version,
            region,
            aws,
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

/// [`AwsAuth::source`] of credentials read from the engine's environment.
pub const AWS_FROM_ENVIRONMENT: &str = "environment";

/// The credentials of an `aws_credentials_file` (its `[default]` profile), with the path as
/// their source. `Err` never quotes a secret.
pub fn aws_credentials_file(path: &str) -> Result<AwsAuth, String> {
    let text = match std::fs::metadata(path) {
        Ok(m) if m.len() > AWS_CREDENTIALS_FILE_BYTES_MAX as u64 => {
            return Err(format!(
                "{path}: {} bytes; at most {AWS_CREDENTIALS_FILE_BYTES_MAX}",
                m.len()
            ))
        }
        Ok(_) => std::fs::read_to_string(path).map_err(|e| format!("{path}: cannot read: {e}"))?,
        Err(e) => return Err(format!("{path}: cannot read: {e}")),
    };
    aws_shared_credentials(&text, path).map_err(|why| format!("{path}: {why}"))
}

/// The longest `aws_credentials_file`, bytes.
const AWS_CREDENTIALS_FILE_BYTES_MAX: usize = 64 * 1024;
/// The longest AWS credential value (an access key id, a secret, a session token), bytes.
const AWS_CREDENTIAL_BYTES_MAX: usize = 4096;
/// The longest AWS region name, bytes (`ap-southeast-3` is 14).
const AWS_REGION_BYTES_MAX: usize = 32;

/// AWS region names: lower-case letters, digits and `-` (they go into the signature's scope).
fn check_aws_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= AWS_REGION_BYTES_MAX
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "must be 1 to {AWS_REGION_BYTES_MAX} of a-z 0-9 - (e.g. \"us-east-1\"), got {region:?}"
        ))
    }
}

/// An access key id, secret or token: printable ASCII without spaces, within the limit.
fn aws_value_ok(v: &str) -> bool {
    !v.is_empty() && v.len() <= AWS_CREDENTIAL_BYTES_MAX && v.bytes().all(|b| b.is_ascii_graphic())
}

/// Credentials from `source`, each value printable ASCII without spaces and within the limit;
/// `None` otherwise (the caller says where, never quoting a value).
fn aws_auth(id: String, secret: String, token: Option<String>, source: &str) -> Option<AwsAuth> {
    (aws_value_ok(&id) && aws_value_ok(&secret) && token.as_deref().is_none_or(aws_value_ok)).then(
        || AwsAuth {
            access_key_id: id,
            secret_access_key: secret,
            session_token: token,
            source: source.to_owned(),
        },
    )
}

/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and (optional) `AWS_SESSION_TOKEN`, as the AWS
/// SDKs read them.
fn aws_env_credentials() -> Result<AwsAuth, String> {
    let get = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let (Some(id), Some(secret)) = (get("AWS_ACCESS_KEY_ID"), get("AWS_SECRET_ACCESS_KEY")) else {
        return Err(
            "a bedrock upstream needs $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY in \
                    the engine's environment (or aws_credentials_file)"
                .to_owned(),
        );
    };
    aws_auth(id, secret, get("AWS_SESSION_TOKEN"), AWS_FROM_ENVIRONMENT).ok_or_else(|| {
        "$AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY or $AWS_SESSION_TOKEN holds \
         spaces or control characters, or is too long"
            .to_owned()
    })
}

/// The `[default]` profile of an AWS shared credentials file (`~/.aws/credentials`):
/// `aws_access_key_id`, `aws_secret_access_key`, optional `aws_session_token`. Comments (`#`,
/// `;`) and other profiles are skipped. Errors never quote a value. `source`: the file's path.
fn aws_shared_credentials(text: &str, source: &str) -> Result<AwsAuth, String> {
    let (mut id, mut secret, mut token) = (None, None, None);
    let mut in_default = false;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_default = name.trim() == "default";
            continue;
        }
        if !in_default {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            return Err("a line of [default] is not `key = value`".to_owned());
        };
        let value = value.trim().to_owned();
        match key.trim() {
            "aws_access_key_id" => id = Some(value),
            "aws_secret_access_key" => secret = Some(value),
            "aws_session_token" => token = Some(value),
            _ => {}
        }
    }
    let (Some(id), Some(secret)) = (id, secret) else {
        return Err(
            "no [default] profile with aws_access_key_id and aws_secret_access_key".to_owned(),
        );
    };
    aws_auth(id, secret, token, source)
        .ok_or_else(|| "a credential holds spaces or control characters, or is too long".to_owned())
}

#[cfg(test)]
mod aws_tests {
    use super::*;

    #[test]
    fn the_default_profile_of_a_shared_credentials_file_is_read() {
        let text = "# rotated by the vault agent\n[other]\naws_access_key_id = NO\naws_secret_access_key = NO\n\n[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key=wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\naws_session_token = tok\nregion = us-east-1\n";
        assert_eq!(
            aws_shared_credentials(text, "creds"),
            Ok(AwsAuth {
                access_key_id: "AKIDEXAMPLE".to_owned(),
                secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".to_owned(),
                session_token: Some("tok".to_owned()),
                source: "creds".to_owned(),
            })
        );
        for bad in [
            "",
            "[default]\naws_access_key_id = A\n",
            "[other]\naws_access_key_id = A\naws_secret_access_key = B\n",
            "[default]\naws_access_key_id = A B\naws_secret_access_key = C\n",
            "[default]\nnot a pair\n",
        ] {
            let e = aws_shared_credentials(bad, "creds").expect_err(bad);
            assert!(!e.contains("A B"), "{e}");
        }
    }

    #[test]
    fn regions_are_checked() {
        for ok in ["us-east-1", "ap-southeast-3", "eu-central-2"] {
            assert!(check_aws_region(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(AWS_REGION_BYTES_MAX + 1);
        for bad in ["", "US-EAST-1", "us east", "us/east", long.as_str()] {
            assert!(check_aws_region(bad).is_err(), "{bad}");
        }
    }
}
