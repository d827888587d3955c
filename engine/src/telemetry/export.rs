//! The exporter thread: takes the shards' span batches off the [`Hub`], turns them into OTLP's
//! reference messages (`opentelemetry-proto`, generated from the OpenTelemetry protobuf
//! definitions) and posts them to the collector's `/v1/traces` as protobuf or OTLP/JSON.
//!
//! It is not a shard's thread and a shard never waits for it: it wakes every
//! `export_interval_ms` (or, looking every `STOP_POLL_MS`, once the queue is half full), sends
//! what is queued (in requests of at most [`EXPORT_SPANS_MAX`]
//! spans), and gives the emptied batches back. A collector that is down, refuses or is slower
//! than `export_timeout_ms` costs the spans of that export (counted); meanwhile the shards'
//! batches find the queue full and their spans are dropped and counted too. Nothing retries:
//! a trace a few seconds late is worth less than the shard's time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status,
};
use prost::Message as _;

use super::context::write_hex;
use super::span::{AttemptSpan, Hub, ServerSpan, SpanBody, SpanRecord};
use crate::config::{OtlpProtocol, TelemetryConfig};

/// Spans sent in one export request at most: the OpenTelemetry SDKs' default batch
/// (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`), about 150 KB of protobuf, under every receiver's body
/// limit (4,096 spans, about 1.2 MB, met nginx's 1 MiB default with 413).
pub const EXPORT_SPANS_MAX: usize = 512;
/// How often the exporter looks for the engine's stop while it waits, ms.
const STOP_POLL_MS: u64 = 50;
/// A failed export is logged at most this often, ms (each one is counted).
const FAILURE_LOG_MS: u64 = 60_000;
/// Bytes of a collector's answer read at most (it is only drained).
const RESPONSE_BYTES_MAX: u64 = 64 * 1024;

/// The event on a model call's span when its first token (the answer's first body bytes)
/// arrived. The GenAI conventions define no event for it (their "streaming chunks" section is
/// still to be written): the name is ours; the time also goes in the attribute
/// `gen_ai.response.time_to_first_chunk` (seconds from the attempt's start), as the
/// conventions' newer registry names it.
pub const FIRST_TOKEN_EVENT: &str = "shardgate.first_token";

/// Start the exporter thread. `instance` names this engine in the resource
/// (`service.instance.id`).
pub fn spawn(
    cfg: TelemetryConfig,
    hub: Arc<Hub>,
    instance: String,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("shardgate-otlp".to_owned())
        .spawn(move || Exporter::new(cfg, hub, instance).run())
}

struct Exporter {
    cfg: TelemetryConfig,
    hub: Arc<Hub>,
    agent: ureq::Agent,
    resource: Resource,
    failure_logged: Option<Instant>,
}

impl Exporter {
    fn new(cfg: TelemetryConfig, hub: Arc<Hub>, instance: String) -> Self {
        // No proxy from the environment (a collector is usually local) and no redirects; 4xx
        // and 5xx come back as responses. TLS: rustls with ring, webpki's roots.
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(cfg.export_timeout_ms)))
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .build()
            .new_agent();
        let resource = Resource {
            attributes: vec![
                kv_str("service.name", &cfg.service_name),
                kv_str("service.instance.id", &instance),
                kv_str("service.version", env!("CARGO_PKG_VERSION")),
                kv_str("telemetry.sdk.name", "shardgate"),
                kv_str("telemetry.sdk.language", "rust"),
                kv_str("telemetry.sdk.version", env!("CARGO_PKG_VERSION")),
            ],
            ..Default::default()
        };
        Self {
            cfg,
            hub,
            agent,
            resource,
            failure_logged: None,
        }
    }

    fn run(mut self) {
        let interval = Duration::from_millis(self.cfg.export_interval_ms);
        loop {
            let stopping = self.hub.stop.load(Ordering::Acquire);
            self.export_queued();
            if stopping {
                return;
            }
            let woke = Instant::now();
            // Woken early when the queue is half full, so a burst is sent before it overflows.
            while woke.elapsed() < interval
                && !self.hub.stop.load(Ordering::Acquire)
                && self.hub.full.len() * 2 < self.hub.full.capacity()
            {
                // The exporter's own thread, not a shard's.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(STOP_POLL_MS).min(interval));
            }
        }
    }

    /// Send every queued batch, [`EXPORT_SPANS_MAX`] spans a request at most.
    fn export_queued(&mut self) {
        let mut batches: Vec<Vec<SpanRecord>> = Vec::new();
        let mut spans = 0;
        while let Some(b) = self.hub.full.pop() {
            spans += b.len();
            batches.push(b);
            if spans >= EXPORT_SPANS_MAX {
                self.send(&batches, spans);
                self.give_back(&mut batches);
                spans = 0;
            }
        }
        if spans > 0 {
            self.send(&batches, spans);
        }
        self.give_back(&mut batches);
    }

    fn give_back(&self, batches: &mut Vec<Vec<SpanRecord>>) {
        for mut b in batches.drain(..) {
            b.clear();
            let _ = self.hub.free.push(b);
        }
    }

    fn send(&mut self, batches: &[Vec<SpanRecord>], n: usize) {
        let request = export_request(self.resource.clone(), batches.iter().flatten());
        let (body, content_type) = match self.cfg.protocol {
            OtlpProtocol::Protobuf => (request.encode_to_vec(), "application/x-protobuf"),
            OtlpProtocol::Json => match serde_json::to_vec(&request) {
                Ok(b) => (b, "application/json"),
                Err(e) => {
                    self.failed(n, &format!("encoding JSON: {e}"));
                    return;
                }
            },
        };
        let mut req = self
            .agent
            .post(&self.cfg.traces_url)
            .header("content-type", content_type);
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(&body[..]) {
            Ok(mut resp) => {
                let code = resp.status().as_u16();
                // Read the (small) answer so the connection can be reused.
                let _ = resp
                    .body_mut()
                    .with_config()
                    .limit(RESPONSE_BYTES_MAX)
                    .read_to_vec();
                if (200..300).contains(&code) {
                    self.hub
                        .stats
                        .exported
                        .fetch_add(n as u64, Ordering::Relaxed);
                } else {
                    self.failed(n, &format!("status {code}"));
                }
            }
            Err(e) => self.failed(n, &e.to_string()),
        }
    }

    fn failed(&mut self, n: usize, why: &str) {
        let stats = &self.hub.stats;
        stats.export_failures.fetch_add(1, Ordering::Relaxed);
        stats
            .dropped_export_failed
            .fetch_add(n as u64, Ordering::Relaxed);
        let due = self
            .failure_logged
            .is_none_or(|t| t.elapsed() >= Duration::from_millis(FAILURE_LOG_MS));
        if due {
            self.failure_logged = Some(Instant::now());
            tracing::warn!(
                "exporting {n} spans to {} failed ({why}); they are dropped (counted in shardgate_trace_spans_dropped_total); next failures are logged once a minute",
                self.cfg.traces_url
            );
        }
    }
}

/// The OTLP request for `spans`: one resource (this engine), one scope.
pub fn export_request<'a>(
    resource: Resource,
    spans: impl Iterator<Item = &'a SpanRecord>,
) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "shardgate".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    ..Default::default()
                }),
                spans: spans.map(to_span).collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// One record as an OTLP span.
pub fn to_span(r: &SpanRecord) -> Span {
    let (name, kind, mut attributes, events) = match &r.body {
        SpanBody::Server(s) => (
            server_name(s),
            span::SpanKind::Server,
            server_attributes(s),
            Vec::new(),
        ),
        SpanBody::Attempt(a) => {
            let mut attrs = attempt_attributes(a);
            attrs.extend(time_to_first_chunk(a, r.start_unix_ns));
            (
                attempt_name(a),
                span::SpanKind::Client,
                attrs,
                first_token(a),
            )
        }
    };
    if r.status != 0 {
        attributes.push(kv_i64("http.response.status_code", i64::from(r.status)));
    }
    let status = match r.error {
        Some(e) => {
            attributes.push(kv_str("error.type", e));
            Some(Status {
                message: String::new(),
                code: status::StatusCode::Error.into(),
            })
        }
        None => None,
    };
    Span {
        trace_id: r.trace_id.to_vec(),
        span_id: r.span_id.to_vec(),
        parent_span_id: r.parent.map(|p| p.to_vec()).unwrap_or_default(),
        name,
        kind: kind.into(),
        start_time_unix_nano: r.start_unix_ns,
        end_time_unix_nano: r.end_unix_ns.max(r.start_unix_ns),
        attributes,
        events,
        status,
        ..Default::default()
    }
}

/// `{method} {route}` for the LLM APIs' paths (few and fixed), `{method}` for anything else
/// (a proxied path may be anything: it is in `url.path`).
fn server_name(s: &ServerSpan) -> String {
    if s.api_route {
        format!("{} {}", s.method.as_str(), s.path.as_str())
    } else {
        s.method.as_str().to_owned()
    }
}

fn server_attributes(s: &ServerSpan) -> Vec<KeyValue> {
    let mut a = vec![
        kv_str("http.request.method", s.method.as_str()),
        kv_str("url.path", s.path.as_str()),
        kv_str("url.scheme", if s.tls { "https" } else { "http" }),
        kv_str("network.protocol.version", "1.1"),
        kv_str("client.address", &s.client.ip().to_string()),
        kv_i64("client.port", i64::from(s.client.port())),
    ];
    if s.api_route {
        a.push(kv_str("http.route", s.path.as_str()));
    }
    if !s.tenant.is_empty() {
        a.push(kv_str("shardgate.tenant", s.tenant.as_str()));
    }
    a
}

/// `{gen_ai.operation.name} {gen_ai.request.model}` for a model call; `{method}` for a plain
/// HTTP attempt.
fn attempt_name(a: &AttemptSpan) -> String {
    match a.operation {
        Some(op) if a.request_model.is_empty() => op.to_owned(),
        Some(op) => format!("{op} {}", a.request_model.as_str()),
        None => a.method.as_str().to_owned(),
    }
}

fn attempt_attributes(a: &AttemptSpan) -> Vec<KeyValue> {
    let mut v = Vec::with_capacity(16);
    if let Some(op) = a.operation {
        v.push(kv_str("gen_ai.operation.name", op));
        v.push(kv_str("gen_ai.provider.name", a.provider));
        if !a.request_model.is_empty() {
            v.push(kv_str("gen_ai.request.model", a.request_model.as_str()));
        }
        if !a.response_model.is_empty() {
            v.push(kv_str("gen_ai.response.model", a.response_model.as_str()));
        }
        if let Some(m) = a.max_tokens {
            v.push(kv_i64("gen_ai.request.max_tokens", to_i64(m)));
        }
        if let Some((input, output)) = a.usage {
            v.push(kv_i64("gen_ai.usage.input_tokens", to_i64(input)));
            v.push(kv_i64("gen_ai.usage.output_tokens", to_i64(output)));
        }
        let reasons: Vec<AnyValue> = a.finish_reasons().map(str_value).collect();
        if !reasons.is_empty() {
            v.push(KeyValue {
                key: "gen_ai.response.finish_reasons".to_owned(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values: reasons })),
                }),
                ..Default::default()
            });
        }
        if !a.group.is_empty() {
            v.push(kv_str("shardgate.model_group", a.group.as_str()));
        }
        v.push(kv_bool("gen_ai.request.stream", a.stream));
    }
    v.push(kv_str("http.request.method", a.method.as_str()));
    v.push(kv_str("server.address", a.server_address.as_str()));
    v.push(kv_i64("server.port", i64::from(a.server_port)));
    v.push(kv_i64("shardgate.attempt", i64::from(a.attempt)));
    v.push(kv_bool("shardgate.hedge", a.hedge));
    v
}

/// `gen_ai.response.time_to_first_chunk`, seconds, for a stream whose first token came.
fn time_to_first_chunk(a: &AttemptSpan, start_unix_ns: u64) -> Option<KeyValue> {
    if a.first_token_unix_ns == 0 || a.operation.is_none() || !a.stream {
        return None;
    }
    let ns = a.first_token_unix_ns.saturating_sub(start_unix_ns);
    #[allow(clippy::cast_precision_loss)]
    let secs = ns as f64 / 1e9;
    Some(KeyValue {
        key: "gen_ai.response.time_to_first_chunk".to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::DoubleValue(secs)),
        }),
        ..Default::default()
    })
}

fn first_token(a: &AttemptSpan) -> Vec<span::Event> {
    if a.first_token_unix_ns == 0 || a.operation.is_none() {
        return Vec::new();
    }
    vec![span::Event {
        time_unix_nano: a.first_token_unix_ns,
        name: FIRST_TOKEN_EVENT.to_owned(),
        ..Default::default()
    }]
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_owned())),
    }
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(str_value(v)),
        ..Default::default()
    }
}

fn kv_i64(key: &str, v: i64) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(v)),
        }),
        ..Default::default()
    }
}

fn kv_bool(key: &str, v: bool) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::BoolValue(v)),
        }),
        ..Default::default()
    }
}

/// A span id as OTLP/JSON writes it (lowercase hex), for logs and tests.
pub fn hex_id(id: &[u8]) -> String {
    let mut out = vec![0u8; id.len() * 2];
    write_hex(id, &mut out);
    String::from_utf8(out).unwrap_or_default()
}
