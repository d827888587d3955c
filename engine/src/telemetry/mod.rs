//! Traces (issue 22): one SERVER span per request and one CLIENT span per upstream attempt
//! (retries, fallbacks and hedges each their own), named and described by OpenTelemetry's HTTP
//! and GenAI semantic conventions, exported over OTLP/HTTP.
//!
//! - [`context`]: W3C `traceparent` read and written, span ids, the sampling decision (I/O-free).
//! - [`span`]: the fixed-size records a shard keeps, its batch, the hub its batches go through.
//! - [`export`]: the exporter thread: OTLP messages (protobuf or JSON) posted to the collector.
//! - [`genai`]: the GenAI client metrics (token usage, operation duration, time to first chunk)
//!   of every model call's attempt, traced or not, per shard, summed for `/metrics`.
//!
//! A request is traced only with `[telemetry]` in the config. It then always takes part in the
//! trace: its upstream attempts send a `traceparent` naming their own span (the client's is
//! replaced; its `tracestate` passes unchanged), sampled or not. Only a sampled request's spans
//! are recorded. Prompts and completions are never recorded: a span holds names, numbers and
//! the path without its query.

pub mod context;
pub mod export;
pub mod genai;
pub mod span;

use crate::config::Provider;
use context::{SpanId, TraceCtx};

/// A request's trace while it is served.
#[derive(Debug, Clone, Copy)]
pub struct RequestTrace {
    pub ctx: TraceCtx,
    pub start_unix_ns: u64,
    /// Upstream attempts begun so far (the next one's `shardgate.attempt`).
    pub attempts: u8,
    /// A plain proxied request: its attempt's span (its `traceparent` is in the head already
    /// written).
    pub route_attempt: Option<SpanId>,
}

impl RequestTrace {
    pub fn new(ctx: TraceCtx, start_unix_ns: u64) -> Self {
        Self {
            ctx,
            start_unix_ns,
            attempts: 0,
            route_attempt: None,
        }
    }

    /// The next attempt's number (saturating).
    pub fn next_attempt(&mut self) -> u8 {
        let n = self.attempts;
        self.attempts = self.attempts.saturating_add(1);
        n
    }

    /// The `traceparent` an attempt whose span is `attempt` sends upstream.
    pub fn traceparent(&self, attempt: &SpanId) -> [u8; context::TRACEPARENT_BYTES] {
        self.ctx.traceparent(attempt)
    }
}

/// `gen_ai.provider.name` of an upstream's provider, as the GenAI conventions name them. An
/// OpenAI-compatible server (vLLM, Mistral's, ...) speaks OpenAI's API: `openai`.
pub fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::Http | Provider::OpenaiResponses | Provider::Mock => "openai",
        Provider::Anthropic => "anthropic",
        Provider::Azure => "azure.ai.openai",
        Provider::Gemini => "gcp.gemini",
        Provider::Bedrock => "aws.bedrock",
    }
}

/// `gen_ai.operation.name` of a call to the LLM API at `path` (its query left out).
pub fn operation_name(path: &str) -> &'static str {
    match path {
        "/v1/embeddings" => "embeddings",
        "/v1/completions" => "text_completion",
        _ => "chat",
    }
}

/// An HTTP status as `error.type` says it (a low-cardinality string); `_OTHER` for one not
/// listed.
pub fn status_text(status: u16) -> &'static str {
    match status {
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        408 => "408",
        409 => "409",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "499",
        500 => "500",
        501 => "501",
        502 => "502",
        503 => "503",
        504 => "504",
        529 => "529",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(operation_name("/v1/chat/completions"), "chat");
        assert_eq!(operation_name("/v1/messages"), "chat");
        assert_eq!(operation_name("/v1/embeddings"), "embeddings");
        assert_eq!(provider_name(Provider::Bedrock), "aws.bedrock");
    }
}
