//! The region's counters as Prometheus text (exposition format 0.0.4). I/O-free: the admin
//! listener reads the region ([`crate::control::stats::read`]) and hands the totals here; this
//! module only formats them, so the output is checked line by line in unit tests.
//!
//! Every family is written whole (`# HELP`, `# TYPE`, then all its samples) before the next
//! one starts, as the format requires. Series are stable: a named upstream or route gets all
//! its status classes and buckets from its first scrape on, zeros included, so `rate()` never
//! sees a series appear mid-way. Numbers that are fractions of a second are written from
//! integers (µs, ms), exactly, never through a float.

use std::fmt::Write as _;

use crate::telemetry::genai::{SeriesKey, SeriesTotals};

use crate::control::shm::STATUS_CLASSES;
use crate::control::stats::{Reject, ShardView, SlotTotals, Totals};
use crate::limits::DURATION_BUCKETS_MS;

/// What one scrape renders: the totals read from the region plus the process-wide values the
/// region does not count.
#[derive(Debug, Clone, Copy)]
pub struct Scrape<'a> {
    /// Each tenant's shared cells, read: requests in flight over all shards and the budget
    /// left in the current window (None without a budget).
    pub tenant_live: &'a [TenantLive],
    pub totals: &'a Totals,
    /// `[server] instance`: rendered as the `instance_name` label of `shardgate_build_info`
    /// (not `instance`, which Prometheus sets on every series to the scraped target).
    pub instance: &'a str,
    pub started_unix_ms: u64,
    pub now_unix_ms: u64,
    /// Frames published to the config ring so far.
    pub ring_head: u64,
    pub draining: bool,
    /// In a fleet: the fleet agent's view (`None`: no `[fleet]`).
    pub fleet: Option<FleetLive>,
    /// In a fleet: the fleet's usage counters by tenant (`None`: no `[fleet]`, or Redis did
    /// not answer).
    pub fleet_usage: Option<&'a std::collections::BTreeMap<String, shardgate_core::fleet::Usage>>,
    /// The counting allocator's totals (`shardgate-counted` only; `None` in `shardgate`).
    pub heap: Option<HeapCounts>,
    /// The span pipeline's counters (`None`: no `[telemetry]`).
    pub spans: Option<SpanCounts>,
    /// The GenAI metrics, summed over the shards.
    pub genai: &'a [(SeriesKey, SeriesTotals)],
}

/// The span pipeline's counters, read from its hub (`telemetry::span::SpanStats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpanCounts {
    pub queued: u64,
    pub exported: u64,
    pub dropped_queue_full: u64,
    pub dropped_export_failed: u64,
    pub export_failures: u64,
}

impl SpanCounts {
    pub fn read(s: &crate::telemetry::span::SpanStats) -> Self {
        let l = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
        Self {
            queued: l(&s.queued),
            exported: l(&s.exported),
            dropped_queue_full: l(&s.dropped_queue_full),
            dropped_export_failed: l(&s.dropped_export_failed),
            export_failures: l(&s.export_failures),
        }
    }
}

/// What a counting global allocator counted since the process started: the
/// `shardgate-counted` binary's (`stats_alloc`), read through a [`HeapProbe`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeapCounts {
    /// Calls to `alloc` and `alloc_zeroed`.
    pub allocations: u64,
    /// Calls to `dealloc`.
    pub deallocations: u64,
    /// Calls to `realloc`.
    pub reallocations: u64,
    /// Bytes asked for by allocations, plus what reallocations grew blocks by.
    pub bytes_allocated: u64,
    /// Bytes given back by deallocations, plus what reallocations shrank blocks by.
    pub bytes_deallocated: u64,
}

impl HeapCounts {
    /// Bytes the process holds on the heap now, as asked for (not the allocator's own
    /// rounding, headers or cached pages: that is RSS).
    pub fn live_bytes(&self) -> u64 {
        self.bytes_allocated.saturating_sub(self.bytes_deallocated)
    }
}

/// Reads the counting global allocator of the binary that has one (`shardgate-counted`);
/// passed to [`crate::launch::main`], which hands it to the admin listener.
pub type HeapProbe = fn() -> HeapCounts;

/// The fleet agent's view, as the region holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetLive {
    pub redis_up: bool,
    pub redis_rtt_us: u64,
    pub instances: u64,
    pub synced_unix_ms: u64,
}

/// The `class` label of each [`SlotTotals::status`] index: 0 = no response was sent.
const CLASS_LABELS: [&str; STATUS_CLASSES] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// A per-shard family: name, type, help, and the value it shows.
struct ShardFamily {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    value: fn(&ShardView) -> u64,
}

const SHARD_FAMILIES: [ShardFamily; 12] = [
    ShardFamily {
        name: "connections",
        kind: "gauge",
        help: "Client connections open.",
        value: |v| v.connections,
    },
    ShardFamily {
        name: "connections_accepted_total",
        kind: "counter",
        help: "Client connections accepted.",
        value: |v| v.connections_accepted,
    },
    ShardFamily {
        name: "upstream_connects_total",
        kind: "counter",
        help: "Connections opened to upstreams (pool misses).",
        value: |v| v.upstream_connects,
    },
    ShardFamily {
        name: "shard_requests_total",
        kind: "counter",
        help: "Requests finished by the shard.",
        value: |v| v.requests,
    },
    ShardFamily {
        name: "config_version",
        kind: "gauge",
        help: "Version of the config the shard serves new requests with.",
        value: |v| v.config_version,
    },
    ShardFamily {
        name: "config_ring_lag_frames",
        kind: "gauge",
        help: "Config ring frames the shard had still to read when it last looked.",
        value: |v| v.ring_lag_frames,
    },
    ShardFamily {
        name: "config_ring_dropped_total",
        kind: "counter",
        help: "Config ring frames or messages the shard dropped (torn, corrupt, overwritten).",
        value: |v| v.ring_dropped,
    },
    ShardFamily {
        name: "config_apply_errors_total",
        kind: "counter",
        help: "Configs the shard refused.",
        value: |v| v.apply_errors,
    },
    ShardFamily {
        name: "shard_requests_inflight",
        kind: "gauge",
        help: "Requests the shard is serving now.",
        value: |v| v.requests_inflight,
    },
    ShardFamily {
        name: "shard_requests_shed_total",
        kind: "counter",
        help: "Requests answered 503 because requests_inflight_max were in flight on the shard.",
        value: |v| v.requests_shed,
    },
    ShardFamily {
        name: "shard_connections_refused_total",
        kind: "counter",
        help: "Connections closed at accept because connections_max were open on the shard.",
        value: |v| v.connections_refused,
    },
    ShardFamily {
        name: "access_log_dropped_total",
        kind: "counter",
        help: "Access-log records dropped because the log writer fell behind.",
        value: |v| v.access_log_dropped,
    },
];

/// One tenant's shared state, as the admin listener read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantLive {
    pub name: String,
    pub inflight: u64,
    pub budget_remaining: Option<u64>,
}

/// Append the exposition of `s` to `out`.
pub fn render(s: &Scrape<'_>, out: &mut String) {
    let t = s.totals;

    // Requests by status class, per upstream and per route.
    family(
        out,
        "requests_total",
        "counter",
        "Requests finished, by upstream and status class (none: no response was sent).",
    );
    for (name, slot) in &t.upstreams {
        status_classes(out, "requests_total", "upstream", name, slot);
    }
    family(
        out,
        "route_requests_total",
        "counter",
        "Requests finished, by route prefix and status class (none: no response was sent).",
    );
    for (name, slot) in &t.routes {
        status_classes(out, "route_requests_total", "route", name, slot);
    }

    family(
        out,
        "request_duration_seconds",
        "histogram",
        "Time to serve a request, as its shard measured it, by upstream.",
    );
    for (name, slot) in &t.upstreams {
        histogram(out, "request_duration_seconds", "upstream", name, slot);
    }

    family(
        out,
        "request_bytes_total",
        "counter",
        "Bytes received from clients, by upstream.",
    );
    for (name, slot) in &t.upstreams {
        sample(
            out,
            "request_bytes_total",
            &[("upstream", name)],
            slot.bytes_in,
        );
    }
    family(
        out,
        "response_bytes_total",
        "counter",
        "Bytes sent to clients, by upstream.",
    );
    for (name, slot) in &t.upstreams {
        sample(
            out,
            "response_bytes_total",
            &[("upstream", name)],
            slot.bytes_out,
        );
    }

    // Per tenant (names only: keys never reach the counters).
    family(
        out,
        "tenant_requests_total",
        "counter",
        "Requests finished, by tenant and status class (none: no response was sent).",
    );
    for (name, slot) in &t.tenants {
        status_classes(out, "tenant_requests_total", "tenant", name, slot);
    }
    family(
        out,
        "tenant_rejected_total",
        "counter",
        "Requests a tenant limit refused, by tenant and reason.",
    );
    for (name, slot) in &t.tenants {
        for r in Reject::ALL {
            sample(
                out,
                "tenant_rejected_total",
                &[("tenant", name), ("reason", r.name())],
                slot.rejected[r as usize],
            );
        }
    }
    family(
        out,
        "tenant_tokens_total",
        "counter",
        "Tokens used, by tenant and gen_ai_token_type (input: prompt; output: completion), as the upstreams reported them.",
    );
    for (name, slot) in &t.tenants {
        for (kind, v) in [("input", slot.tokens_in), ("output", slot.tokens_out)] {
            sample(
                out,
                "tenant_tokens_total",
                &[("tenant", name), ("gen_ai_token_type", kind)],
                v,
            );
        }
    }
    family(
        out,
        "tenant_spend_usd_total",
        "counter",
        "What the tenant's requests cost, US dollars, from their usage and the price table.",
    );
    for (name, slot) in &t.tenants {
        name_and_labels(out, "tenant_spend_usd_total", &[("tenant", name)]);
        fixed_point(out, slot.spend_nusd, 9);
        out.push('\n');
    }
    family(
        out,
        "tenant_unpriced_requests_total",
        "counter",
        "Requests of the tenant with usage but no price for their model (spend unknown, not $0).",
    );
    for (name, slot) in &t.tenants {
        sample(
            out,
            "tenant_unpriced_requests_total",
            &[("tenant", name)],
            slot.unpriced,
        );
    }
    family(
        out,
        "tenant_queued_total",
        "counter",
        "Requests of the tenant that waited in a saturated upstream's fair queue.",
    );
    for (name, slot) in &t.tenants {
        sample(out, "tenant_queued_total", &[("tenant", name)], slot.queued);
    }
    family(
        out,
        "tenant_queue_wait_seconds_total",
        "counter",
        "Time the tenant's requests waited in fair queues, summed.",
    );
    for (name, slot) in &t.tenants {
        name_and_labels(out, "tenant_queue_wait_seconds_total", &[("tenant", name)]);
        fixed_point(out, slot.queue_wait_us, 6);
        out.push('\n');
    }
    family(
        out,
        "tenant_inflight",
        "gauge",
        "Requests of the tenant in flight over all shards.",
    );
    for t in s.tenant_live {
        sample(out, "tenant_inflight", &[("tenant", &t.name)], t.inflight);
    }
    family(
        out,
        "tenant_budget_remaining_tokens",
        "gauge",
        "Tokens left in the tenant's budget for the current window (tenants with a budget).",
    );
    for t in s.tenant_live {
        if let Some(left) = t.budget_remaining {
            sample(
                out,
                "tenant_budget_remaining_tokens",
                &[("tenant", &t.name)],
                left,
            );
        }
    }
    // The OpenTelemetry GenAI histograms (`gen_ai_client_token_usage` per request,
    // `gen_ai_client_operation_duration`, `gen_ai_server_time_to_first_token`) need per-request
    // token buckets, which arrive with model routing.

    // Per shard.
    let mut shard_id = String::new();
    for f in &SHARD_FAMILIES {
        family(out, f.name, f.kind, f.help);
        for v in &t.shards {
            shard_id.clear();
            let _ = write!(shard_id, "{}", v.id);
            sample(out, f.name, &[("shard", &shard_id)], (f.value)(v));
        }
    }
    family(
        out,
        "shard_info",
        "gauge",
        "Always 1: the core a shard is pinned to (none: not pinned) and its I/O driver.",
    );
    let mut core = String::new();
    for v in &t.shards {
        shard_id.clear();
        let _ = write!(shard_id, "{}", v.id);
        core.clear();
        match v.core {
            Some(c) => {
                let _ = write!(core, "{c}");
            }
            None => core.push_str("none"),
        }
        sample(
            out,
            "shard_info",
            &[("shard", &shard_id), ("core", &core), ("driver", v.driver)],
            1,
        );
    }

    // Process-wide.
    family(
        out,
        "config_ring_head_frames",
        "gauge",
        "Frames published to the config ring since the engine started.",
    );
    sample(out, "config_ring_head_frames", &[], s.ring_head);
    family(
        out,
        "uptime_seconds",
        "gauge",
        "Seconds since the engine started.",
    );
    name_and_labels(out, "uptime_seconds", &[]);
    fixed_point(out, s.now_unix_ms.saturating_sub(s.started_unix_ms), 3);
    out.push('\n');
    family(
        out,
        "draining",
        "gauge",
        "1 while the engine drains (takes no new connections) before it exits.",
    );
    sample(out, "draining", &[], u64::from(s.draining));
    if let Some(f) = s.fleet {
        family(
            out,
            "fleet_redis_up",
            "gauge",
            "1 while the fleet agent reaches Redis; 0 while each limit is enforced at this instance's share.",
        );
        sample(out, "fleet_redis_up", &[], u64::from(f.redis_up));
        family(
            out,
            "fleet_instances",
            "gauge",
            "Instances of the fleet the agent saw alive at its last sync with Redis.",
        );
        sample(out, "fleet_instances", &[], f.instances);
        family(
            out,
            "fleet_redis_rtt_microseconds",
            "gauge",
            "The last sync's round trip to Redis.",
        );
        sample(out, "fleet_redis_rtt_microseconds", &[], f.redis_rtt_us);
        family(
            out,
            "fleet_sync_age_seconds",
            "gauge",
            "Seconds since the fleet agent's last sync.",
        );
        let age = s.now_unix_ms.saturating_sub(f.synced_unix_ms) / 1000;
        sample(out, "fleet_sync_age_seconds", &[], age);
    }
    if let Some(u) = s.fleet_usage {
        fleet_usage(out, u);
    }
    genai(out, s.genai);
    if let Some(sp) = s.spans {
        family(
            out,
            "trace_spans_exported_total",
            "counter",
            "Spans the OTLP collector accepted.",
        );
        sample(out, "trace_spans_exported_total", &[], sp.exported);
        family(
            out,
            "trace_spans_dropped_total",
            "counter",
            "Spans dropped: the exporter's queue was full (queue_full) or their export failed (export_failed).",
        );
        sample(
            out,
            "trace_spans_dropped_total",
            &[("reason", "queue_full")],
            sp.dropped_queue_full,
        );
        sample(
            out,
            "trace_spans_dropped_total",
            &[("reason", "export_failed")],
            sp.dropped_export_failed,
        );
        family(
            out,
            "trace_exports_failed_total",
            "counter",
            "Exports to the OTLP collector that failed (refused, unreachable or past export_timeout_ms).",
        );
        sample(out, "trace_exports_failed_total", &[], sp.export_failures);
    }
    if let Some(h) = s.heap {
        family(
            out,
            "heap_live_bytes",
            "gauge",
            "Heap bytes held now, as asked of the allocator (shardgate-counted only).",
        );
        sample(out, "heap_live_bytes", &[], h.live_bytes());
        family(
            out,
            "heap_allocations_total",
            "counter",
            "Heap allocations since start (shardgate-counted only).",
        );
        sample(out, "heap_allocations_total", &[], h.allocations);
        family(
            out,
            "heap_reallocations_total",
            "counter",
            "Heap reallocations since start (shardgate-counted only).",
        );
        sample(out, "heap_reallocations_total", &[], h.reallocations);
    }
    family(
        out,
        "build_info",
        "gauge",
        "Always 1: the shardgate version and the instance name.",
    );
    sample(
        out,
        "build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("instance_name", s.instance),
        ],
        1,
    );
}

/// `# HELP` and `# TYPE` of `shardgate_<name>`. The help texts are static and hold neither `\`
/// nor a newline, so they need no escaping.
/// The fleet's usage counters by tenant (every instance's, since the fleet's Redis started).
fn fleet_usage(
    out: &mut String,
    u: &std::collections::BTreeMap<String, shardgate_core::fleet::Usage>,
) {
    family(
        out,
        "fleet_tenant_requests_total",
        "counter",
        "Requests of the tenant over every instance of the fleet, since the fleet's Redis started.",
    );
    for (name, c) in u {
        sample(
            out,
            "fleet_tenant_requests_total",
            &[("tenant", name)],
            c[0],
        );
    }
    family(
        out,
        "fleet_tenant_tokens_total",
        "counter",
        "Tokens the tenant used over every instance of the fleet, by gen_ai_token_type.",
    );
    for (name, c) in u {
        for (kind, v) in [("input", c[1]), ("output", c[2])] {
            let labels = [("tenant", name.as_str()), ("gen_ai_token_type", kind)];
            sample(out, "fleet_tenant_tokens_total", &labels, v);
        }
    }
    family(
        out,
        "fleet_tenant_spend_usd_total",
        "counter",
        "What the tenant's requests cost over every instance of the fleet, US dollars.",
    );
    for (name, c) in u {
        name_and_labels(out, "fleet_tenant_spend_usd_total", &[("tenant", name)]);
        fixed_point(out, c[3], 9);
        out.push('\n');
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    debug_assert!(!help.contains(['\\', '\n']));
    let _ = writeln!(out, "# HELP shardgate_{name} {help}");
    let _ = writeln!(out, "# TYPE shardgate_{name} {kind}");
}

/// `shardgate_<name>{labels}` followed by a space.
fn name_and_labels(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str("shardgate_");
    full_name_and_labels(out, name, labels);
}

/// `<name>{labels}` followed by a space (a name of OpenTelemetry's conventions, unprefixed).
fn full_name_and_labels(out: &mut String, name: &str, labels: &[(&str, &str)]) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
}

/// One sample line with an integer value.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: u64) {
    name_and_labels(out, name, labels);
    let _ = writeln!(out, "{value}");
}

fn status_classes(out: &mut String, metric: &str, key: &str, name: &str, slot: &SlotTotals) {
    for (class, n) in CLASS_LABELS.iter().zip(slot.status) {
        sample(out, metric, &[(key, name), ("class", class)], n);
    }
}

/// `_bucket` (cumulative, from the per-bucket counts), `_sum` and `_count` of one series.
fn histogram(out: &mut String, metric: &str, key: &str, name: &str, slot: &SlotTotals) {
    histogram_series(
        out,
        &format!("shardgate_{metric}"),
        &[(key, name)],
        &slot.duration_buckets,
        (&DURATION_BUCKETS_MS, 3),
        (slot.duration_sum_us, 6),
    );
}

/// One histogram series named `name` in full: cumulative `_bucket`s from the per-bucket counts
/// (bounds `bounds.0[i] / 10^bounds.1`, then `+Inf`), `_sum` (`sum.0 / 10^sum.1`) and
/// `_count`. The count is the `+Inf` bucket, not a counter of its own: the counters are read
/// one by one while shards write them, and the format wants the two equal.
fn histogram_series(
    out: &mut String,
    name: &str,
    labels: &[(&str, &str)],
    buckets: &[u64],
    bounds: (&[u64], u32),
    sum: (u64, u32),
) {
    let bucket = format!("{name}_bucket");
    let mut le = String::new();
    let mut cumulative = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        cumulative = cumulative.wrapping_add(*n);
        le.clear();
        match bounds.0.get(i) {
            Some(&b) => fixed_point(&mut le, b, bounds.1),
            None => le.push_str("+Inf"),
        }
        let mut l: Vec<(&str, &str)> = labels.to_vec();
        l.push(("le", &le));
        full_name_and_labels(out, &bucket, &l);
        let _ = writeln!(out, "{cumulative}");
    }
    full_name_and_labels(out, &format!("{name}_sum"), labels);
    fixed_point(out, sum.0, sum.1);
    out.push('\n');
    full_name_and_labels(out, &format!("{name}_count"), labels);
    let _ = writeln!(out, "{cumulative}");
}

/// The GenAI client metrics, named as OpenTelemetry's GenAI conventions name them (v1.37 to
/// v1.41) in Prometheus' form: dots to underscores, seconds suffixed, `{token}` dropped.
fn genai(out: &mut String, series: &[(SeriesKey, SeriesTotals)]) {
    use crate::telemetry::genai::{SECONDS_BOUNDS_US, TOKEN_BOUNDS};
    if series.is_empty() {
        return;
    }
    let head = |out: &mut String, name: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
    };
    // A series' labels, and one more where it has it.
    fn labels<'a>(
        k: &'a SeriesKey,
        more: Option<(&'static str, &'a str)>,
    ) -> Vec<(&'a str, &'a str)> {
        let mut l = vec![
            ("gen_ai_operation_name", k.operation),
            ("gen_ai_provider_name", k.provider),
            ("gen_ai_request_model", k.model.as_str()),
        ];
        l.extend(more);
        l
    }
    let tokens = (&TOKEN_BOUNDS[..], 0);
    let seconds = (&SECONDS_BOUNDS_US[..], 6);
    const USAGE: &str = "gen_ai_client_token_usage";
    head(
        out,
        USAGE,
        "Tokens used by each model call attempt whose usage was read, by gen_ai_token_type.",
    );
    for (k, t) in series {
        for (kind, h) in [("input", &t.input_tokens), ("output", &t.output_tokens)] {
            if h.count > 0 {
                let l = labels(k, Some(("gen_ai_token_type", kind)));
                histogram_series(out, USAGE, &l, &h.buckets, tokens, (h.sum, 0));
            }
        }
    }
    const DURATION: &str = "gen_ai_client_operation_duration_seconds";
    head(
        out,
        DURATION,
        "Duration of each model call attempt, seconds (error_type set when it failed).",
    );
    for (k, t) in series {
        let error = (!k.error.is_empty()).then_some(("error_type", k.error));
        let (l, h) = (labels(k, error), &t.duration);
        histogram_series(out, DURATION, &l, &h.buckets, seconds, (h.sum, 6));
    }
    const FIRST: &str = "gen_ai_client_operation_time_to_first_chunk_seconds";
    head(
        out,
        FIRST,
        "Time from a streamed model call attempt's start to its first chunk, seconds.",
    );
    for (k, t) in series {
        let h = &t.time_to_first_chunk;
        if h.count > 0 {
            histogram_series(
                out,
                FIRST,
                &labels(k, None),
                &h.buckets,
                seconds,
                (h.sum, 6),
            );
        }
    }
}

/// `value / 10^decimals` in decimal, exactly, without trailing zeros (`1500, 3` → `1.5`,
/// `1000, 3` → `1`, `3, 3` → `0.003`).
fn fixed_point(out: &mut String, value: u64, decimals: u32) {
    let _ = write!(out, "{}", crate::prices::Fixed { value, decimals });
}

/// A label value as the text format wants it: `\`, `"` and newline escaped.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::control::shm::Region;
    use crate::control::stats::{self, set, ShardStats, NO_SLOT, SLOT_UNROUTED};

    /// Two shards: shard 0 running on core 3 with io_uring, shard 1 not started.
    fn scrape_text() -> String {
        scrape_text_with(None)
    }

    /// [`scrape_text`] with the counting allocator's totals.
    fn scrape_text_with(heap: Option<HeapCounts>) -> String {
        let r: &'static Region = Box::leak(Box::new(Region::anonymous(2).expect("anon")));
        let a = ShardStats::new(r.shard(0));
        let b = ShardStats::new(r.shard(1));
        let info = a.info();
        set(&info.running, 1);
        set(&info.core, 3);
        set(&info.driver, 1);
        set(&info.config_version, 7);
        set(&info.connections, 4);
        set(&info.connections_accepted, 9);
        set(&info.upstream_connects, 2);
        set(&info.ring_lag_frames, 1);
        set(&info.ring_dropped, 5);
        set(&info.apply_errors, 6);
        set(&info.access_log_dropped, 256);
        set(&info.requests_shed, 7);
        set(&info.connections_refused, 3);
        let (ua, ra) = (a.upstream_slot("up"), a.route_slot("/v1/\"odd\\"));
        let (ub, rb) = (b.upstream_slot("up"), b.route_slot("/v1/\"odd\\"));
        a.record(ua, ra, NO_SLOT, 200, 10, 20, Duration::from_micros(800));
        a.record(ua, ra, NO_SLOT, 200, 10, 20, Duration::from_micros(2_500));
        b.record(ub, rb, NO_SLOT, 503, 1, 2, Duration::from_millis(7));
        b.record(ub, rb, NO_SLOT, 0, 1, 0, Duration::from_secs(100));
        a.record(
            SLOT_UNROUTED,
            NO_SLOT,
            NO_SLOT,
            404,
            5,
            6,
            Duration::from_micros(1),
        );
        let totals = stats::read(r);
        let mut out = String::new();
        render(
            &Scrape {
                tenant_live: &[TenantLive {
                    name: "team-a".to_owned(),
                    inflight: 2,
                    budget_remaining: Some(7),
                }],
                totals: &totals,
                instance: "main",
                started_unix_ms: 1_000,
                now_unix_ms: 62_500,
                ring_head: 12,
                draining: false,
                fleet: None,
                fleet_usage: None,
                heap,
                spans: None,
                genai: &[],
            },
            &mut out,
        );
        out
    }

    fn has(text: &str, line: &str) {
        assert!(
            text.lines().any(|l| l == line),
            "missing line {line:?} in:\n{text}"
        );
    }

    #[test]
    fn heap_lines_only_with_a_counter() {
        assert!(!scrape_text().contains("shardgate_heap_"));
        let t = scrape_text_with(Some(HeapCounts {
            allocations: 10,
            deallocations: 4,
            reallocations: 3,
            bytes_allocated: 5_000,
            bytes_deallocated: 1_200,
        }));
        has(&t, "# TYPE shardgate_heap_live_bytes gauge");
        has(&t, "shardgate_heap_live_bytes 3800");
        has(&t, "# TYPE shardgate_heap_allocations_total counter");
        has(&t, "shardgate_heap_allocations_total 10");
        has(&t, "shardgate_heap_reallocations_total 3");
        // More given back than asked for cannot happen; it reads 0, not a wrapped number.
        let odd = HeapCounts {
            bytes_allocated: 1,
            bytes_deallocated: 2,
            ..HeapCounts::default()
        };
        assert_eq!(odd.live_bytes(), 0);
    }

    #[test]
    fn counters_by_class_and_bytes() {
        let t = scrape_text();
        has(
            &t,
            r#"shardgate_requests_total{upstream="up",class="2xx"} 2"#,
        );
        has(
            &t,
            r#"shardgate_requests_total{upstream="up",class="5xx"} 1"#,
        );
        has(
            &t,
            r#"shardgate_requests_total{upstream="up",class="none"} 1"#,
        );
        has(
            &t,
            r#"shardgate_requests_total{upstream="up",class="1xx"} 0"#,
        );
        has(
            &t,
            r#"shardgate_requests_total{upstream="-",class="4xx"} 1"#,
        );
        has(&t, r#"shardgate_request_bytes_total{upstream="up"} 22"#);
        has(&t, r#"shardgate_response_bytes_total{upstream="up"} 42"#);
        has(&t, r#"shardgate_response_bytes_total{upstream="-"} 6"#);
        // The reserved "(other)" slots saw nothing: not rendered.
        assert!(!t.contains("(other)"));
    }

    #[test]
    fn route_names_are_escaped() {
        let t = scrape_text();
        has(
            &t,
            r#"shardgate_route_requests_total{route="/v1/\"odd\\",class="2xx"} 2"#,
        );
        has(
            &t,
            r#"shardgate_route_requests_total{route="/v1/\"odd\\",class="none"} 1"#,
        );
        let mut s = String::new();
        escape_label(&mut s, "a\nb\"c\\d");
        assert_eq!(s, r#"a\nb\"c\\d"#);
    }

    #[test]
    fn histogram_is_cumulative_in_seconds() {
        let t = scrape_text();
        // 0.8 ms, 2.5 ms, 7 ms, 100 s.
        for (le, n) in [
            ("0.001", 1),
            ("0.003", 2),
            ("0.005", 2),
            ("0.01", 3),
            ("0.025", 3),
            ("1", 3),
            ("2.5", 3),
            ("60", 3),
            ("+Inf", 4),
        ] {
            has(
                &t,
                &format!(
                    r#"shardgate_request_duration_seconds_bucket{{upstream="up",le="{le}"}} {n}"#
                ),
            );
        }
        has(
            &t,
            r#"shardgate_request_duration_seconds_sum{upstream="up"} 100.0103"#,
        );
        has(
            &t,
            r#"shardgate_request_duration_seconds_count{upstream="up"} 4"#,
        );
        let buckets = t
            .lines()
            .filter(|l| {
                l.starts_with(r#"shardgate_request_duration_seconds_bucket{upstream="up","#)
            })
            .count();
        assert_eq!(buckets, DURATION_BUCKETS_MS.len() + 1);
    }

    #[test]
    fn shard_and_process_families() {
        let t = scrape_text();
        has(&t, r#"shardgate_connections{shard="0"} 4"#);
        has(&t, r#"shardgate_connections{shard="1"} 0"#);
        has(&t, r#"shardgate_connections_accepted_total{shard="0"} 9"#);
        has(&t, r#"shardgate_upstream_connects_total{shard="0"} 2"#);
        has(&t, r#"shardgate_shard_requests_total{shard="0"} 3"#);
        has(&t, r#"shardgate_shard_requests_total{shard="1"} 2"#);
        has(&t, r#"shardgate_config_version{shard="0"} 7"#);
        has(&t, r#"shardgate_config_ring_lag_frames{shard="0"} 1"#);
        has(&t, r#"shardgate_config_ring_dropped_total{shard="0"} 5"#);
        has(&t, r#"shardgate_config_apply_errors_total{shard="0"} 6"#);
        has(&t, r#"shardgate_access_log_dropped_total{shard="0"} 256"#);
        has(&t, r#"shardgate_shard_requests_shed_total{shard="0"} 7"#);
        has(
            &t,
            r#"shardgate_shard_connections_refused_total{shard="0"} 3"#,
        );
        has(
            &t,
            r#"shardgate_shard_info{shard="0",core="3",driver="io_uring"} 1"#,
        );
        has(
            &t,
            r#"shardgate_shard_info{shard="1",core="none",driver="starting"} 1"#,
        );
        has(&t, "shardgate_config_ring_head_frames 12");
        has(&t, "shardgate_uptime_seconds 61.5");
        has(&t, "shardgate_draining 0");
        has(
            &t,
            &format!(
                r#"shardgate_build_info{{version="{}",instance_name="main"}} 1"#,
                env!("CARGO_PKG_VERSION")
            ),
        );
    }

    #[test]
    fn every_sample_follows_its_help_and_type_and_families_are_contiguous() {
        let t = scrape_text();
        assert!(t.ends_with('\n'));
        let mut types: HashMap<String, String> = HashMap::new();
        let mut helped = Vec::new();
        let mut current: Option<String> = None;
        let mut finished = Vec::new();
        for line in t.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().expect("name").to_owned();
                assert!(!helped.contains(&name), "HELP twice for {name}");
                helped.push(name);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().expect("name").to_owned();
                let kind = it.next().expect("kind").to_owned();
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind.as_str()),
                    "{line}"
                );
                assert_eq!(helped.last(), Some(&name), "TYPE right after HELP: {line}");
                if let Some(c) = current.take() {
                    finished.push(c);
                }
                assert!(
                    types.insert(name.clone(), kind).is_none(),
                    "TYPE twice: {line}"
                );
                current = Some(name);
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let name = line
                .split(['{', ' '])
                .next()
                .expect("sample name")
                .to_owned();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    let base = name.strip_suffix(suffix)?;
                    (types.get(base).map(String::as_str) == Some("histogram"))
                        .then(|| base.to_owned())
                })
                .unwrap_or(name);
            assert!(types.contains_key(&family), "no HELP/TYPE before {line}");
            assert_eq!(
                current.as_ref(),
                Some(&family),
                "family not contiguous: {line}"
            );
            assert!(!finished.contains(&family));
            // The value parses as a number.
            let value = line.rsplit(' ').next().expect("value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
        assert_eq!(types.len(), helped.len());
    }

    #[test]
    fn fixed_point_is_exact() {
        let f = |v, d| {
            let mut s = String::new();
            fixed_point(&mut s, v, d);
            s
        };
        assert_eq!(f(1, 3), "0.001");
        assert_eq!(f(1_000, 3), "1");
        assert_eq!(f(2_500, 3), "2.5");
        assert_eq!(f(60_000, 3), "60");
        assert_eq!(f(0, 6), "0");
        assert_eq!(f(1_234_567, 6), "1.234567");
        assert_eq!(f(u64::MAX, 6), "18446744073709.551615");
    }
}
