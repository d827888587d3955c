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
    encoder: Encoder,
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
            encoder: Encoder::new(resource),
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
        let protocol = self.cfg.protocol;
        if let Err(why) = self.encoder.encode(batches.iter().flatten(), protocol) {
            self.failed(n, &why);
            return;
        }
        let content_type = match protocol {
            OtlpProtocol::Protobuf => "application/x-protobuf",
            OtlpProtocol::Json => "application/json",
        };
        let mut req = self
            .agent
            .post(&self.cfg.traces_url)
            .header("content-type", content_type);
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match req.send(&self.encoder.body[..]) {
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

/// The OTLP request for this engine's spans, kept across exports: its span messages (their
/// strings, attribute lists and events) are overwritten in place by each export, so an
/// export allocates only for what grew.
#[derive(Debug)]
pub struct Encoder {
    request: ExportTraceServiceRequest,
    /// The encoded request, reused.
    pub body: Vec<u8>,
}

impl Encoder {
    /// An encoder whose requests name `resource` and the `shardgate` scope.
    pub fn new(resource: Resource) -> Self {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "shardgate".to_owned(),
                        version: env!("CARGO_PKG_VERSION").to_owned(),
                        ..Default::default()
                    }),
                    spans: Vec::new(),
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        Self {
            request,
            body: Vec::new(),
        }
    }

    fn spans(&mut self) -> &mut Vec<Span> {
        &mut self.request.resource_spans[0].scope_spans[0].spans
    }

    /// Encode `records` into [`Self::body`] as `protocol` says.
    pub fn encode<'a>(
        &mut self,
        records: impl Iterator<Item = &'a SpanRecord>,
        protocol: OtlpProtocol,
    ) -> Result<(), String> {
        let spans = self.spans();
        let mut n = 0;
        for r in records {
            if n == spans.len() {
                spans.push(Span::default());
            }
            fill_span(&mut spans[n], r);
            n += 1;
        }
        spans.truncate(n);
        self.body.clear();
        match protocol {
            OtlpProtocol::Protobuf => self
                .request
                .encode(&mut self.body)
                .map_err(|e| format!("encoding protobuf: {e}")),
            OtlpProtocol::Json => serde_json::to_writer(&mut self.body, &self.request)
                .map_err(|e| format!("encoding JSON: {e}")),
        }
    }

    /// The request as last encoded (tests).
    pub fn request(&self) -> &ExportTraceServiceRequest {
        &self.request
    }
}

/// Overwrite `span` with one record, reusing its buffers.
fn fill_span(span: &mut Span, r: &SpanRecord) {
    set_bytes(&mut span.trace_id, &r.trace_id);
    set_bytes(&mut span.span_id, &r.span_id);
    set_bytes(
        &mut span.parent_span_id,
        r.parent.as_ref().map_or(&[][..], |p| &p[..]),
    );
    span.start_time_unix_nano = r.start_unix_ns;
    span.end_time_unix_nano = r.end_unix_ns.max(r.start_unix_ns);
    span.name.clear();
    let mut a = Attrs {
        v: &mut span.attributes,
        n: 0,
    };
    let mut first_token_ns = 0;
    match &r.body {
        SpanBody::Server(s) => {
            span.kind = span::SpanKind::Server.into();
            // `{method} {route}` for the LLM APIs' paths (few and fixed), `{method}` for any
            // other (a proxied path may be anything: it is in `url.path`).
            span.name.push_str(s.method.as_str());
            if s.api_route {
                span.name.push(' ');
                span.name.push_str(s.path.as_str());
            }
            server_attributes(&mut a, s);
        }
        SpanBody::Attempt(t) => {
            span.kind = span::SpanKind::Client.into();
            // `{gen_ai.operation.name} {gen_ai.request.model}` for a model call; `{method}`
            // for a plain HTTP attempt.
            match t.operation {
                Some(op) => {
                    span.name.push_str(op);
                    if !t.request_model.is_empty() {
                        span.name.push(' ');
                        span.name.push_str(t.request_model.as_str());
                    }
                    if t.first_token_unix_ns != 0 {
                        first_token_ns = t.first_token_unix_ns;
                    }
                }
                None => span.name.push_str(t.method.as_str()),
            }
            attempt_attributes(&mut a, t, r.start_unix_ns);
        }
    }
    if r.status != 0 {
        a.int("http.response.status_code", i64::from(r.status));
    }
    if let Some(e) = r.error {
        a.str("error.type", e);
    }
    a.finish();
    span.status = r.error.map(|_| Status {
        message: String::new(),
        code: status::StatusCode::Error.into(),
    });
    if first_token_ns == 0 {
        span.events.clear();
    } else {
        span.events.truncate(1);
        if span.events.is_empty() {
            span.events.push(span::Event::default());
        }
        let e = &mut span.events[0];
        e.time_unix_nano = first_token_ns;
        if e.name != FIRST_TOKEN_EVENT {
            e.name.clear();
            e.name.push_str(FIRST_TOKEN_EVENT);
        }
    }
}

fn set_bytes(v: &mut Vec<u8>, b: &[u8]) {
    v.clear();
    v.extend_from_slice(b);
}

/// A span's attribute list, overwritten in order: a key already in its place is kept, a value
/// of the same kind is written over.
struct Attrs<'a> {
    v: &'a mut Vec<KeyValue>,
    n: usize,
}

impl Attrs<'_> {
    fn slot(&mut self, key: &str) -> &mut Option<any_value::Value> {
        if self.n == self.v.len() {
            self.v.push(KeyValue::default());
        }
        let kv = &mut self.v[self.n];
        self.n += 1;
        if kv.key != key {
            kv.key.clear();
            kv.key.push_str(key);
        }
        &mut kv.value.get_or_insert_with(AnyValue::default).value
    }

    fn str(&mut self, key: &str, val: &str) {
        let slot = self.slot(key);
        if let Some(any_value::Value::StringValue(s)) = slot {
            s.clear();
            s.push_str(val);
        } else {
            *slot = Some(any_value::Value::StringValue(val.to_owned()));
        }
    }

    fn int(&mut self, key: &str, v: i64) {
        *self.slot(key) = Some(any_value::Value::IntValue(v));
    }

    fn bool(&mut self, key: &str, v: bool) {
        *self.slot(key) = Some(any_value::Value::BoolValue(v));
    }

    fn double(&mut self, key: &str, v: f64) {
        *self.slot(key) = Some(any_value::Value::DoubleValue(v));
    }

    fn strs<'s>(&mut self, key: &str, vals: impl Iterator<Item = &'s str>) {
        let slot = self.slot(key);
        if !matches!(slot, Some(any_value::Value::ArrayValue(_))) {
            *slot = Some(any_value::Value::ArrayValue(ArrayValue::default()));
        }
        let Some(any_value::Value::ArrayValue(arr)) = slot else {
            return;
        };
        let mut n = 0;
        for v in vals {
            if n == arr.values.len() {
                arr.values.push(AnyValue::default());
            }
            match &mut arr.values[n].value {
                Some(any_value::Value::StringValue(s)) => {
                    s.clear();
                    s.push_str(v);
                }
                other => *other = Some(any_value::Value::StringValue(v.to_owned())),
            }
            n += 1;
        }
        arr.values.truncate(n);
    }

    fn finish(self) {
        self.v.truncate(self.n);
    }
}

fn server_attributes(a: &mut Attrs<'_>, s: &ServerSpan) {
    a.str("http.request.method", s.method.as_str());
    a.str("url.path", s.path.as_str());
    a.str("url.scheme", if s.tls { "https" } else { "http" });
    a.str("network.protocol.version", "1.1");
    let mut ip = [0u8; 64];
    a.str("client.address", ip_text(&s.client.ip(), &mut ip));
    if s.api_route {
        a.str("http.route", s.path.as_str());
    }
    if !s.tenant.is_empty() {
        a.str("shardgate.tenant", s.tenant.as_str());
    }
}

/// An address as text, written into `buf` (no allocation).
fn ip_text<'b>(ip: &std::net::IpAddr, buf: &'b mut [u8; 64]) -> &'b str {
    use std::io::Write as _;
    let mut w = &mut buf[..];
    let _ = write!(w, "{ip}");
    let left = w.len();
    let n = 64 - left;
    std::str::from_utf8(&buf[..n]).unwrap_or_default()
}

fn attempt_attributes(a: &mut Attrs<'_>, t: &AttemptSpan, start_unix_ns: u64) {
    if let Some(op) = t.operation {
        a.str("gen_ai.operation.name", op);
        a.str("gen_ai.provider.name", t.provider);
        if !t.request_model.is_empty() {
            a.str("gen_ai.request.model", t.request_model.as_str());
        }
        if !t.response_model.is_empty() {
            a.str("gen_ai.response.model", t.response_model.as_str());
        }
        if let Some(m) = t.max_tokens {
            a.int("gen_ai.request.max_tokens", to_i64(m));
        }
        if let Some((input, output)) = t.usage {
            a.int("gen_ai.usage.input_tokens", to_i64(input));
            a.int("gen_ai.usage.output_tokens", to_i64(output));
        }
        if t.finish_reasons().next().is_some() {
            a.strs("gen_ai.response.finish_reasons", t.finish_reasons());
        }
        if !t.group.is_empty() {
            a.str("shardgate.model_group", t.group.as_str());
        }
        a.bool("gen_ai.request.stream", t.stream);
        // `gen_ai.response.time_to_first_chunk`, seconds, for a stream whose first token came.
        if t.first_token_unix_ns != 0 && t.stream {
            let ns = t.first_token_unix_ns.saturating_sub(start_unix_ns);
            #[allow(clippy::cast_precision_loss)]
            a.double("gen_ai.response.time_to_first_chunk", ns as f64 / 1e9);
        }
    }
    a.str("http.request.method", t.method.as_str());
    a.str("server.address", t.server_address.as_str());
    a.int("server.port", i64::from(t.server_port));
    a.int("shardgate.attempt", i64::from(t.attempt));
    if t.hedge {
        a.bool("shardgate.hedge", true);
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn kv_str(key: &str, v: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(v.to_owned())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::span::{Text, FINISH_REASONS_MAX};

    fn server() -> SpanRecord {
        SpanRecord {
            trace_id: [7; 16],
            span_id: [1; 8],
            parent: None,
            start_unix_ns: 1_000,
            end_unix_ns: 2_000,
            status: 502,
            error: Some("502"),
            body: SpanBody::Server(ServerSpan {
                method: Text::new("GET"),
                path: Text::new("/items"),
                api_route: false,
                client: std::net::SocketAddr::from(([10, 0, 0, 1], 4242)),
                tls: true,
                tenant: Text::EMPTY,
            }),
        }
    }

    fn attempt() -> SpanRecord {
        let mut reasons = [Text::EMPTY; FINISH_REASONS_MAX];
        reasons[0] = Text::new("stop");
        reasons[1] = Text::new("length");
        SpanRecord {
            trace_id: [7; 16],
            span_id: [2; 8],
            parent: Some([1; 8]),
            start_unix_ns: 1_100,
            end_unix_ns: 1_900,
            status: 200,
            error: None,
            body: SpanBody::Attempt(AttemptSpan {
                operation: Some("chat"),
                provider: "anthropic",
                method: Text::new("POST"),
                request_model: Text::new("claude-x"),
                response_model: Text::new("claude-x-2026"),
                group: Text::new("smart"),
                max_tokens: Some(64),
                usage: Some((10, 20)),
                finish_reasons: reasons,
                server_address: Text::new("api.anthropic.com"),
                server_port: 443,
                first_token_unix_ns: 1_500,
                attempt: 1,
                hedge: true,
                stream: true,
            }),
        }
    }

    fn resource() -> Resource {
        Resource {
            attributes: vec![kv_str("service.name", "t")],
            ..Default::default()
        }
    }

    #[test]
    fn a_reused_encoder_writes_what_a_fresh_one_writes() {
        for protocol in [OtlpProtocol::Protobuf, OtlpProtocol::Json] {
            let mut reused = Encoder::new(resource());
            // Attempts then a server span in the same slot, then fewer spans than before.
            reused
                .encode([attempt(), attempt(), server()].iter(), protocol)
                .expect("encodes");
            reused.encode([server()].iter(), protocol).expect("encodes");
            let mut fresh = Encoder::new(resource());
            fresh.encode([server()].iter(), protocol).expect("encodes");
            assert_eq!(reused.body, fresh.body, "{protocol:?}");
            reused
                .encode([attempt(), server()].iter(), protocol)
                .expect("encodes");
            let mut fresh = Encoder::new(resource());
            fresh
                .encode([attempt(), server()].iter(), protocol)
                .expect("encodes");
            assert_eq!(reused.body, fresh.body, "{protocol:?}");
        }
    }

    #[test]
    fn spans_carry_the_conventions_attributes() {
        let mut e = Encoder::new(resource());
        e.encode([attempt(), server()].iter(), OtlpProtocol::Protobuf)
            .expect("encodes");
        let decoded = ExportTraceServiceRequest::decode(&e.body[..]).expect("decodes");
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        let find = |s: &Span, k: &str| {
            s.attributes
                .iter()
                .find(|kv| kv.key == k)
                .and_then(|kv| kv.value.clone()?.value)
        };
        let (a, srv) = (&spans[0], &spans[1]);
        assert_eq!(a.name, "chat claude-x");
        assert_eq!(a.kind, span::SpanKind::Client as i32);
        assert_eq!(
            find(a, "gen_ai.provider.name"),
            Some(any_value::Value::StringValue("anthropic".into()))
        );
        assert_eq!(
            find(a, "gen_ai.usage.output_tokens"),
            Some(any_value::Value::IntValue(20))
        );
        assert_eq!(
            find(a, "gen_ai.response.time_to_first_chunk"),
            Some(any_value::Value::DoubleValue(400e-9))
        );
        assert_eq!(a.events.len(), 1);
        assert_eq!(a.events[0].name, FIRST_TOKEN_EVENT);
        assert_eq!(a.parent_span_id, vec![1; 8]);
        assert!(a.status.is_none());
        assert_eq!(srv.name, "GET");
        assert_eq!(
            find(srv, "client.address"),
            Some(any_value::Value::StringValue("10.0.0.1".into()))
        );
        assert_eq!(
            find(srv, "error.type"),
            Some(any_value::Value::StringValue("502".into()))
        );
        assert_eq!(
            srv.status.as_ref().map(|s| s.code),
            Some(status::StatusCode::Error as i32)
        );
        assert!(srv.parent_span_id.is_empty());
        assert!(find(srv, "gen_ai.operation.name").is_none());
    }
}
