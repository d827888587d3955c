//! The config as the data plane reads it: checked, typed values (socket addresses resolved,
//! durations, indices instead of names). Built only by [`super::validate`].

use std::net::SocketAddr;
use std::time::Duration;

use super::endpoint::Endpoint;

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
    /// The tenant store: its path and the document it held when the config was read (an
    /// absent file reads as an empty store).
    pub tenant_store: Option<StoreFile>,
    /// Where `shardgate-ctl` and the admin API append a JSON line for every change to the
    /// tenant store.
    pub audit_log: Option<std::path::PathBuf>,
    /// SHA-256 of each token the admin API (`/admin/v1/...`) accepts; none: the API refuses
    /// every request.
    pub admin_tokens: Vec<[u8; 32]>,
    /// A tenant of the config file whose keys may also be admin tokens (LiteLLM's master key
    /// is both); `None`: a secret that calls models is never an admin's.
    pub admin_token_tenant: Option<String>,
}

/// The tenant store's file: the path as written and, while the config is validated, what it
/// held (emptied once read into the config's tenants).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreFile {
    pub path: String,
    pub bytes: Vec<u8>,
    /// Its journal's lines (`store::journal_path`), applied over `bytes`.
    pub journal: Vec<u8>,
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
    /// Azure OpenAI: OpenAI's wire format under `/openai/deployments/{deployment}/...` with
    /// `?api-version=`; its credential goes as `api-key`. The deployment is the deployment's
    /// `model` (or, on a route, the client's).
    Azure,
    /// Google Gemini's native API (`/v1beta/models/{model}:generateContent`, and
    /// `:streamGenerateContent?alt=sse` for a stream); its credential goes as `x-goog-api-key`.
    /// OpenAI chat and Anthropic Messages requests to it are translated (`provider::gemini`).
    Gemini,
    /// AWS Bedrock's Converse API (`/model/{modelId}/converse`, `/converse-stream`), every
    /// request signed with SigV4 for the upstream's [`AwsAuth`]; requests are translated
    /// (`provider::bedrock`).
    Bedrock,
    /// OpenAI's Responses API (`/v1/responses`): Responses clients pass through, OpenAI chat and
    /// Anthropic Messages clients are translated (`provider::responses`); its credential goes as
    /// `authorization: Bearer`.
    OpenaiResponses,
    /// The built-in demo model, answered inside the shard.
    Mock,
}

impl Provider {
    /// The name the config gives it (`provider = "..."`).
    pub fn name(self) -> &'static str {
        match self {
            Provider::Http => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Azure => "azure",
            Provider::Gemini => "gemini",
            Provider::Bedrock => "bedrock",
            Provider::OpenaiResponses => "openai-responses",
            Provider::Mock => "mock",
        }
    }
}

/// An AWS upstream's signing credentials (Bedrock), read when the config is loaded (from the environment, or from `aws_credentials_file`, read again by every
/// config apply and on `SIGHUP`).
#[derive(Clone, PartialEq, Eq)]
pub struct AwsAuth {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where the credentials came from, for logs and `shardgate-ctl diff` (never the secret).
    pub source: String,
}

impl std::fmt::Debug for AwsAuth {
    // Never a secret in a log line or a panic message.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsAuth")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
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
    /// `api_version` (Azure only): the `api-version` query parameter of every request.
    pub api_version: Option<String>,
    /// `region` (Bedrock only): the AWS region requests are signed for.
    pub region: Option<String>,
    /// Bedrock only: the credentials every request is signed with (`None` in shardgate-ctl,
    /// which reads no secret).
    pub aws: Option<AwsAuth>,
    /// Requests in flight to this upstream over all shards; past it, requests wait in fair
    /// per-tenant queues. `None`: no cap.
    pub max_concurrency: Option<u64>,
    /// Slots of `max_concurrency` a tenant never takes while another tenant has used this
    /// upstream within `FAIR_ACTIVE_MS` (`shardgate_engine::fair`): that tenant's next request
    /// starts at once instead of waiting for a slot to free. 0: strictly work-conserving.
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

/// `[fleet]`: the instances of a fleet share their tenants' limits through Redis (Valkey).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// Host and port of the Redis server (`redis://HOST:PORT/DB` or `rediss://…`, as written).
    pub url: String,
    /// The name connected to, and, over TLS, the name the server's certificate must be valid
    /// for (a DNS name or an IP address).
    pub host: String,
    pub port: u16,
    pub db: u32,
    /// `rediss://`: TLS (rustls), the server's certificate verified against `ca_file`, else the
    /// system's roots. Never without verification.
    pub tls: bool,
    /// `redis_ca_file` (only with `rediss://`): the CA certificates (path, PEM) the server's
    /// certificate is verified against instead of the system's roots; at least one, each usable
    /// as a trust anchor.
    pub ca_file: Option<(String, Vec<u8>)>,
    /// The password, read from the environment variable `redis_password_env` names.
    pub password: Option<String>,
    /// How often the instance's fleet agent trades leases with Redis.
    pub sync_ms: u64,
}

/// How spans are sent to the collector (OTLP/HTTP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `http/protobuf` (`application/x-protobuf`), the default.
    Protobuf,
    /// `http/json` (`application/json`, OTLP's JSON mapping).
    Json,
}

/// `[telemetry]`: every request's spans (one SERVER span, one CLIENT span per upstream
/// attempt) exported over OTLP/HTTP by a thread of their own.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    /// The collector's base URL as written (`http://` or `https://`, no trailing `/`).
    pub endpoint: String,
    /// Where spans are sent: `endpoint` + `/v1/traces`.
    pub traces_url: String,
    pub protocol: OtlpProtocol,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Head sampling of requests without a sampled parent, 0.0 to 1.0.
    pub sample_ratio: f64,
    /// Headers sent with every export (an API key for a hosted backend), read from the
    /// variable `headers_env` names (`k=v,k2=v2`, values URL-encoded, as
    /// `OTEL_EXPORTER_OTLP_HEADERS`). Never printed.
    pub headers: Vec<(String, String)>,
    pub headers_env: Option<String>,
    /// How long one export may take, ms; past it the export fails and its spans are dropped.
    pub export_timeout_ms: u64,
    /// How often the exporter sends what the shards queued, ms.
    pub export_interval_ms: u64,
    /// Spans queued for the exporter at most; past it, spans are dropped and counted.
    pub queue_spans_max: u64,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub upstreams: Vec<UpstreamConfig>,
    pub routes: Vec<RouteConfig>,
    pub tenants: Vec<crate::tenant::TenantConfig>,
    /// Where the tenant store's tenants start in `tenants` (the config file's come first; the
    /// store's follow, sorted by name).
    pub store_from: usize,
    /// Names of the config file's `[[tenants]]` the store has too (the store's are in force).
    pub store_shadows: Vec<String>,
    /// The tenants' keys by hash, built once with the config (by the engine's config builder,
    /// not on a shard) and shared by every shard's snapshot.
    pub key_table: std::sync::Arc<crate::tenant::Tenants>,
    /// Model groups: what clients name in `"model"`, and the deployments serving it.
    pub models: Vec<crate::models::ModelGroup>,
    /// Prompt templates filled from a request's `variables`.
    pub templates: Vec<crate::template::Template>,
    /// What models cost (`[[prices]]` over the default table), for spend and USD budgets.
    pub prices: std::sync::Arc<crate::prices::PriceTable>,
    /// `[fleet]`: limits shared with other instances through Redis (`None`: this host alone).
    pub fleet: Option<FleetConfig>,
    /// `[telemetry]`: traces over OTLP (`None`: none are recorded).
    pub telemetry: Option<TelemetryConfig>,
    /// Things that work but should change (a plain key in the file): printed by `--check`,
    /// at start and by `shardgate-ctl check`.
    pub warnings: Vec<String>,
}
