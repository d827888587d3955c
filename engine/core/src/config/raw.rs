//! The config as written: serde's view of the TOML, every field optional where the file may
//! leave it out, unknown keys refused. Only [`super::validate`] reads these.

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) server: RawServer,
    #[serde(default)]
    pub(super) upstreams: Vec<RawUpstream>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default)]
    pub(super) tenants: Vec<crate::tenant::RawTenant>,
    #[serde(default)]
    pub(super) models: Vec<crate::models::RawModel>,
    #[serde(default)]
    pub(super) templates: Vec<crate::template::RawTemplate>,
    pub(super) pricing: Option<crate::prices::RawPricing>,
    #[serde(default)]
    pub(super) prices: Vec<crate::prices::RawPrice>,
    pub(super) fleet: Option<RawFleet>,
    pub(super) telemetry: Option<RawTelemetry>,
}

/// `[telemetry]`: traces exported over OTLP/HTTP.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTelemetry {
    pub(super) otlp_endpoint: Option<String>,
    pub(super) protocol: Option<String>,
    pub(super) service_name: Option<String>,
    pub(super) sample_ratio: Option<f64>,
    pub(super) headers_env: Option<String>,
    pub(super) export_timeout_ms: Option<i64>,
    pub(super) export_interval_ms: Option<i64>,
    pub(super) queue_spans_max: Option<i64>,
}

/// `[fleet]`: limits shared with the other instances through Redis.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFleet {
    pub(super) redis: Option<String>,
    pub(super) redis_password_env: Option<String>,
    pub(super) redis_ca_file: Option<String>,
    pub(super) sync_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawCores {
    Count(i64),
    Word(String),
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) listen: Option<String>,
    pub(super) cores: Option<RawCores>,
    pub(super) driver: Option<String>,
    pub(super) header_bytes_max: Option<i64>,
    pub(super) headers_count_max: Option<i64>,
    pub(super) body_bytes_max: Option<i64>,
    pub(super) header_timeout_ms: Option<i64>,
    pub(super) body_timeout_ms: Option<i64>,
    pub(super) idle_timeout_ms: Option<i64>,
    pub(super) send_timeout_ms: Option<i64>,
    pub(super) drain_timeout_ms: Option<i64>,
    pub(super) connections_max: Option<i64>,
    pub(super) requests_inflight_max: Option<i64>,
    pub(super) instance: Option<String>,
    pub(super) admin_listen: Option<String>,
    pub(super) access_log: Option<String>,
    pub(super) tenant_store: Option<String>,
    pub(super) audit_log: Option<String>,
    #[serde(default)]
    pub(super) admin_tokens: Vec<String>,
    pub(super) admin_token_tenant: Option<String>,
    pub(super) auth: Option<String>,
    pub(super) queue_wait_ms_max: Option<i64>,
    pub(super) queue_depth_max: Option<i64>,
    #[serde(default)]
    pub(super) tls: Vec<RawTls>,
    pub(super) listen_plain: Option<String>,
    pub(super) handshake_timeout_ms: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    pub(super) name: String,
    pub(super) provider: Option<String>,
    #[serde(default)]
    pub(super) endpoints: Vec<String>,
    pub(super) connect_timeout_ms: Option<i64>,
    pub(super) ttfb_timeout_ms: Option<i64>,
    pub(super) read_timeout_ms: Option<i64>,
    pub(super) pool_idle_timeout_ms: Option<i64>,
    pub(super) pool_idle_max: Option<i64>,
    pub(super) api_key_env: Option<String>,
    pub(super) api_version: Option<String>,
    pub(super) region: Option<String>,
    pub(super) aws_credentials_file: Option<String>,
    pub(super) max_concurrency: Option<i64>,
    pub(super) headroom_slots: Option<i64>,
    pub(super) ca_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) path_prefix: String,
    pub(super) upstream: String,
}
