//! Configuration: parse TOML into raw structs, validate into typed, resolved values.
//!
//! Parse, don't validate: everything the data plane reads is a checked type (socket addresses
//! resolved, durations, indices instead of names), so a shard never re-checks config.
//!
//! - `raw`: the file as serde reads it (unknown keys refused).
//! - `validate`: the raw config checked field by field into the resolved one; every problem is
//!   a [`ConfigError`] naming the field.
//! - `resolved`: the typed values the data plane reads ([`Config`], [`ServerConfig`],
//!   [`UpstreamConfig`], ...).
//! - `endpoint`: upstream endpoints parsed, and resolved (on the main thread or in
//!   `shardgate-ctl`) or looked up in a config message's table (in a shard).
//! - Here: the entry points ([`Config::from_toml`], [`Config::from_message`], ...), the errors
//!   and the embedded default.

use std::fmt;

mod endpoint;
mod raw;
mod resolved;
mod store_delta;
mod validate;

pub use endpoint::Endpoint;
pub use resolved::{
    Auth, AwsAuth, Config, Cores, DriverChoice, DriverKind, FleetConfig, HeadLimits, OtlpProtocol,
    Overrides, Provider, RouteConfig, ServerConfig, StoreFile, TelemetryConfig, TlsFiles,
    UpstreamConfig,
};
pub use store_delta::{StoreDelta, DELTA_TENANTS_MAX};
pub use validate::{aws_credentials_file, check_instance_name, AWS_FROM_ENVIRONMENT};

use endpoint::Resolver;
use raw::RawConfig;
use validate::{Files, Secrets, StoreRead, Validator};

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

impl Config {
    /// Parse and validate TOML text. Errors name the field and the reason (and, for syntax
    /// errors, the line).
    pub fn from_toml(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(
            text,
            Resolver::System,
            Files::Disk,
            Secrets::Read,
            StoreRead::Read,
        )
    }

    /// [`Config::from_toml`] for `shardgate-ctl`: `api_key_env` variables are not read (ctl does
    /// not hold the upstreams' secrets; each shard reads them from the engine's environment and
    /// refuses the config if one is missing).
    pub fn from_toml_without_secrets(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(
            text,
            Resolver::System,
            Files::Disk,
            Secrets::Skip,
            StoreRead::Read,
        )
    }

    /// [`Config::from_toml_without_secrets`] without looking endpoint names up: a config
    /// written by `shardgate-ctl import`, checked where the upstreams' names may not resolve
    /// (`shardgate --check` on the host resolves them).
    pub fn from_toml_unresolved(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse(
            text,
            Resolver::Unresolved,
            Files::Disk,
            Secrets::Skip,
            StoreRead::Read,
        )
    }

    /// [`Config::from_message`] without reading the tenant store (an empty one stands for
    /// it): what a change to the store needs of the running config (its paths, the file's
    /// tenants, its admin tokens) without reading and validating the whole store, which the
    /// engine's builder does once the change is pushed.
    pub fn from_message_without_store(
        m: &crate::control::message::ConfigMessage,
    ) -> Result<Config, ConfigErrors> {
        Self::from_message_with(m, Secrets::Skip, StoreRead::Skip).0
    }

    /// Parse and validate a config that came over the ring, resolving endpoint names from the
    /// message's table (a shard never calls the system resolver).
    pub fn from_message(
        m: &crate::control::message::ConfigMessage,
    ) -> Result<Config, ConfigErrors> {
        Self::from_message_with(m, Secrets::Read, StoreRead::Read).0
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
        if let Some((path, pem)) = self.fleet.as_ref().and_then(|f| f.ca_file.as_ref()) {
            out.push((path, pem));
        }

        out.sort();
        out.dedup();
        out
    }

    /// [`Config::from_message`] that hands back the tenant store it was validated with: `given`
    /// (the engine's config builder holds the store in memory), else the one read from its
    /// file. `None` when the config names no store.
    pub fn from_message_keeping_store(
        m: &crate::control::message::ConfigMessage,
        given: Option<crate::store::Store>,
    ) -> (Result<Config, ConfigErrors>, Option<crate::store::Store>) {
        let store = match given {
            Some(s) => StoreRead::Given(Box::new(s)),
            None => StoreRead::Read,
        };
        Self::from_message_with(m, Secrets::Read, store)
    }

    /// A config message validated with its tables (a shard never calls the system resolver or
    /// reads a file the message carries), and the store it was validated with.
    fn from_message_with(
        m: &crate::control::message::ConfigMessage,
        secrets: Secrets,
        store: StoreRead,
    ) -> (Result<Config, ConfigErrors>, Option<crate::store::Store>) {
        Self::parse_keeping_store(
            &m.toml,
            Resolver::Table(&m.resolved),
            Files::Table(&m.files),
            secrets,
            store,
        )
    }

    /// The budget window of tenant `tenant` (an index into `tenants`), in which its keys' own
    /// USD budgets run too: its USD budget's, else its token budget's, else the default.
    pub fn budget_window(&self, tenant: usize) -> std::time::Duration {
        self.tenants
            .get(tenant)
            .and_then(|t| {
                t.budget_usd
                    .map(|b| b.window)
                    .or(t.budget.map(|b| b.window))
            })
            .unwrap_or(crate::tenant::BUDGET_WINDOW_DEFAULT)
    }

    /// The config file's `[[tenants]]` in force (those the tenant store does not have too).
    pub fn file_tenants(&self) -> &[crate::tenant::TenantConfig] {
        self.tenants.get(..self.store_from).unwrap_or(&[])
    }

    fn parse(
        text: &str,
        resolver: Resolver<'_>,
        files: Files<'_>,
        secrets: Secrets,
        store: StoreRead,
    ) -> Result<Config, ConfigErrors> {
        Self::parse_keeping_store(text, resolver, files, secrets, store).0
    }

    fn parse_keeping_store(
        text: &str,
        resolver: Resolver<'_>,
        files: Files<'_>,
        secrets: Secrets,
        store: StoreRead,
    ) -> (Result<Config, ConfigErrors>, Option<crate::store::Store>) {
        // A store given back even when the text does not parse: its holder keeps it.
        let given = |store: StoreRead| match store {
            StoreRead::Given(s) => Some(*s),
            _ => None,
        };
        let raw: RawConfig = match toml::from_str(text).map_err(|e| {
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
        }) {
            Ok(raw) => raw,
            Err(e) => return (Err(e), given(store)),
        };
        let mut v = Validator {
            errors: Vec::new(),
            warnings: Vec::new(),
            resolver,
            files,
            secrets,
            store,
            store_out: None,
        };
        let mut config = v.config(raw);
        let store = v
            .store_out
            .take()
            .or_else(|| given(std::mem::replace(&mut v.store, StoreRead::Skip)));
        if v.errors.is_empty() {
            config.warnings = v.warnings;
            (Ok(config), store)
        } else {
            (Err(ConfigErrors(v.errors)), store)
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
        if self.fleet != new.fleet {
            out.push("fleet".to_owned());
        }
        if self.telemetry != new.telemetry {
            out.push("telemetry".to_owned());
        }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::endpoint::parse_endpoint;
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
    fn an_admin_token_is_a_tenants_key_only_where_the_file_names_that_tenant() {
        let key = "ab".repeat(32);
        let text = |sharing: &str| {
            format!(
                "[server]\nadmin_tokens = [\"sha256:{key}\"]\n{sharing}\n\
                 [[upstreams]]\nname = \"a\"\nprovider = \"mock\"\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n\
                 [[tenants]]\nname = \"master\"\nkeys = [\"sha256:{key}\"]\n\
                 [[tenants]]\nname = \"other\"\nkeys = [\"sha256:{}\"]\n",
                "cd".repeat(32)
            )
        };
        let errs = errors_of(&text("")).join("\n");
        assert!(
            errs.contains("server.admin_tokens[0]: is also a tenant's key"),
            "{errs}"
        );
        let c = Config::from_toml(&text("admin_token_tenant = \"master\"")).expect("valid");
        assert_eq!(c.server.admin_token_tenant.as_deref(), Some("master"));
        assert_eq!(c.server.admin_tokens.len(), 1);
        // Naming another tenant does not let this one share.
        let errs = errors_of(&text("admin_token_tenant = \"other\"")).join("\n");
        assert!(errs.contains("server.admin_tokens[0]"), "{errs}");
        let errs = errors_of(&text("admin_token_tenant = \"nobody\"")).join("\n");
        assert!(
            errs.contains("server.admin_token_tenant: \"nobody\" is not a [[tenants]] entry"),
            "{errs}"
        );
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
            errors_of(&text("PATH").replace("api_key_env", "provider = \"vertex\"\napi_key_env"))
                .join("\n");
        assert!(
            errs.contains("upstreams[0].provider") && errs.contains("anthropic"),
            "{errs}"
        );
    }

    #[test]
    fn gemini_bedrock_and_responses_upstreams() {
        let text = |provider: &str, extra: &str| {
            format!(
                "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"u\"\nprovider = \"{provider}\"\nendpoints = [\"https://127.0.0.1:9\"]\n{extra}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"u\"\n"
            )
        };
        let c = Config::from_toml(&text("gemini", "api_key_env = \"PATH\"")).expect("valid");
        assert_eq!(c.upstreams[0].provider, Provider::Gemini);
        let line = c.upstreams[0].credential.as_deref().expect("credential");
        assert!(line.starts_with(b"x-goog-api-key: ") && line.ends_with(b"\r\n"));
        let c =
            Config::from_toml(&text("openai-responses", "api_key_env = \"PATH\"")).expect("valid");
        assert_eq!(c.upstreams[0].provider, Provider::OpenaiResponses);
        let line = c.upstreams[0].credential.as_deref().expect("credential");
        assert!(line.starts_with(b"authorization: Bearer "));

        // Bedrock: a region, and AWS credentials from a shared credentials file (or the
        // environment), never an api_key_env.
        let dir = std::env::temp_dir().join(format!("sg-core-aws-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = AKIDEXAMPLE\naws_secret_access_key = wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n",
        )
        .expect("write");
        let with_file = format!(
            "region = \"eu-west-3\"\naws_credentials_file = \"{}\"",
            file.display()
        );
        let c = Config::from_toml(&text("bedrock", &with_file)).expect("valid");
        let u = &c.upstreams[0];
        assert_eq!(u.provider, Provider::Bedrock);
        assert_eq!(u.region.as_deref(), Some("eu-west-3"));
        let aws = u.aws.as_ref().expect("credentials");
        assert_eq!(aws.access_key_id, "AKIDEXAMPLE");
        assert_eq!(aws.session_token, None);
        assert!(u.credential.is_none());
        assert!(
            !format!("{aws:?}").contains("wJalr"),
            "the secret never shows in Debug"
        );
        // ctl reads no secret, but checks the rest.
        let c = Config::from_toml_without_secrets(&text("bedrock", &with_file)).expect("valid");
        assert!(c.upstreams[0].aws.is_none());
        assert_eq!(c.upstreams[0].region.as_deref(), Some("eu-west-3"));
        for (extra, field) in [
            (
                format!("aws_credentials_file = \"{}\"", file.display()),
                "region",
            ),
            ("region = \"EU\"".to_owned(), "region"),
            (
                format!("{with_file}\napi_key_env = \"PATH\""),
                "api_key_env",
            ),
            (
                "region = \"us-east-1\"\naws_credentials_file = \"/nonexistent/creds\"".to_owned(),
                "aws_credentials_file",
            ),
        ] {
            let errs = errors_of(&text("bedrock", &extra)).join("\n");
            assert!(
                errs.contains(&format!("upstreams[0].{field}")),
                "{extra}: {errs}"
            );
        }
        // Only Bedrock takes a region.
        let errs = errors_of(&text("gemini", "region = \"us-east-1\"")).join("\n");
        assert!(errs.contains("upstreams[0].region"), "{errs}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_azure_upstream_needs_its_api_version_and_sends_its_key_as_api_key() {
        let text = |extra: &str| {
            format!(
                "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"az\"\nprovider = \"azure\"\nendpoints = [\"https://127.0.0.1:9\"]\napi_key_env = \"PATH\"\n{extra}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"az\"\n"
            )
        };
        let c = Config::from_toml(&text("api_version = \"2024-10-21\"")).expect("valid");
        let u = &c.upstreams[0];
        assert_eq!(u.provider, Provider::Azure);
        assert_eq!(u.api_version.as_deref(), Some("2024-10-21"));
        let line = u.credential.as_deref().expect("credential");
        assert!(line.starts_with(b"api-key: ") && line.ends_with(b"\r\n"));
        let errs = errors_of(&text("")).join("\n");
        assert!(
            errs.contains("upstreams[0].api_version") && errs.contains("required"),
            "{errs}"
        );
        for bad in [
            "\"\"",
            "\"2024-10-21&x=1\"",
            "\"2024 10\"",
            &format!("\"{}\"", "9".repeat(33)),
        ] {
            let errs = errors_of(&text(&format!("api_version = {bad}"))).join("\n");
            assert!(errs.contains("upstreams[0].api_version"), "{bad}: {errs}");
        }
        // Only Azure takes an api_version.
        let openai = text("api_version = \"2024-10-21\"").replace("provider = \"azure\"\n", "");
        let errs = errors_of(&openai).join("\n");
        assert!(errs.contains("only for provider azure"), "{errs}");
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

    #[test]
    fn fleet_rediss_is_tls_and_its_ca_file_is_read_and_checked_at_load() {
        let cfg = |fleet: &str| {
            format!(
                "[server]\nauth = \"none\"\n[fleet]\n{fleet}\n[[upstreams]]\nname = \"a\"\n\
                 provider = \"mock\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"a\"\n"
            )
        };
        let fleet = |lines: &str| {
            Config::from_toml(&cfg(lines))
                .map(|c| c.fleet.expect("[fleet]"))
                .map_err(|e| e.0.iter().map(ToString::to_string).collect::<Vec<_>>())
        };
        let f = fleet("redis = \"rediss://redis.internal:6380/2\"").expect("rediss://");
        assert!(f.tls);
        assert_eq!((f.host.as_str(), f.port, f.db), ("redis.internal", 6380, 2));
        assert_eq!(f.ca_file, None);
        let f = fleet("redis = \"redis://127.0.0.1\"").expect("redis://");
        assert!(!f.tls);
        assert_eq!(
            fleet("redis = \"http://127.0.0.1\"").expect_err("http://"),
            ["fleet.redis: \"http://127.0.0.1\": must start with redis:// (or rediss:// for TLS)"]
        );
        // A CA file: only for TLS, readable, with a certificate in it.
        assert_eq!(
            fleet("redis = \"redis://127.0.0.1\"\nredis_ca_file = \"/nonexistent/ca.pem\"")
                .expect_err("CA file on redis://"),
            ["fleet.redis_ca_file: only a rediss:// (TLS) Redis uses a CA file"]
        );
        let errs = fleet("redis = \"rediss://127.0.0.1\"\nredis_ca_file = \"/nonexistent/ca.pem\"")
            .expect_err("no such file");
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("fleet.redis_ca_file: /nonexistent/ca.pem: cannot read: "),
            "{errs:?}"
        );
        let dir = std::env::temp_dir().join(format!("sg-fleet-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");
        let errs = fleet(&format!(
            "redis = \"rediss://127.0.0.1\"\nredis_ca_file = \"{}\"",
            empty.display()
        ))
        .expect_err("no certificate");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            errs,
            [format!(
                "fleet.redis_ca_file: {}: no certificate found (expected PEM 'BEGIN CERTIFICATE')",
                empty.display()
            )]
        );
    }
}
