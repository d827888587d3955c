//! Upstream attempts: a model call's attempt is measured for the GenAI metrics (always) and,
//! in a traced request, has a span id its `traceparent` sends upstream; its CLIENT span is
//! recorded when it ends, for a sampled request only.

use crate::balance::{FailureKind, Outcome};
use crate::clock::Now;
use crate::ctx::ShardCtx;
use crate::exchange::call::Checked;
use crate::snapshot::{GroupId, Snapshot, Target};
use crate::telemetry::context::{span_id, SpanId, TRACEPARENT_BYTES};
use crate::telemetry::span::{AttemptSpan, SpanBody, SpanRecord, Text};
use crate::telemetry::{operation_name, provider_name, status_text};

use super::{Client, Exchange};

/// An attempt under way: when it began and, in a traced request, its span.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttemptTrace {
    pub span: Option<SpanId>,
    pub start_unix_ns: u64,
    pub number: u8,
    pub hedge: bool,
}

/// Begin a model call's attempt at `now` (the reading the attempt's balancer start is taken
/// from): its start and, in a traced request, its span id and the `traceparent` it sends.
pub(super) fn begin_attempt(
    ctx: &ShardCtx,
    c: &mut Client,
    hedge: bool,
    now: Now,
) -> (AttemptTrace, Option<[u8; TRACEPARENT_BYTES]>) {
    c.ex.first_body_unix_ns = 0;
    c.ex.timed = true;
    let start_unix_ns = now.unix_ns;
    let Some(trace) = c.ex.trace.as_mut() else {
        let a = AttemptTrace {
            span: None,
            start_unix_ns,
            number: 0,
            hedge,
        };
        return (a, None);
    };
    let span = span_id(&mut || ctx.trace_random());
    let a = AttemptTrace {
        span: Some(span),
        start_unix_ns,
        number: trace.next_attempt(),
        hedge,
    };
    (a, Some(trace.traceparent(&span)))
}

/// A sampled plain proxied request's one attempt, whose span id its head already carries.
pub(super) fn route_attempt(c: &mut Client) -> Option<AttemptTrace> {
    let trace = c.ex.trace.as_mut().filter(|t| t.ctx.sampled)?;
    let span = trace.route_attempt?;
    Some(AttemptTrace {
        span: Some(span),
        start_unix_ns: Now::read().unix_ns,
        number: trace.next_attempt(),
        hedge: false,
    })
}

/// Note when the current attempt's answer brought its first body bytes (a traced request's
/// first token), once per attempt.
pub(super) fn first_body(c: &mut Client, now: Now) {
    if c.ex.first_body_unix_ns == 0 && c.ex.timed {
        c.ex.first_body_unix_ns = now.unix_ns;
    }
}

/// What a model call's attempt was asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Asked<'a> {
    /// The model asked of the upstream (the deployment's, or on a route the client's).
    pub model: Option<&'a str>,
    pub group: Option<GroupId>,
    pub checked: Checked,
    /// The client's path (its query left out): the operation.
    pub path: &'a str,
}

/// How an attempt ended, as its span says it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ended {
    pub end_unix_ns: u64,
    /// The upstream's status; 0 when none came (or the attempt was outrun).
    pub status: u16,
    pub error: Option<&'static str>,
    /// The answer was relayed from this attempt: its usage, model and finish reasons count.
    pub answered: bool,
}

impl Ended {
    /// The attempt whose answer `ex` holds, ended now.
    pub fn from_exchange(ex: &Exchange, now: Now) -> Self {
        Self {
            end_unix_ns: now.unix_ns,
            status: if ex.ttfb.is_some() { ex.status } else { 0 },
            error: attempt_error(&ex.outcome(), ex.status),
            answered: ex.ttfb.is_some(),
        }
    }

    /// An attempt cut off because the other one of a hedged pair answered first.
    pub fn outrun(end_unix_ns: u64) -> Self {
        Self {
            end_unix_ns,
            status: 0,
            error: None,
            answered: false,
        }
    }
}

/// A CLIENT span's `error.type`: the upstream's status when it is an error (4xx and 5xx are
/// errors on a client span), or why no answer came.
fn attempt_error(outcome: &Outcome, status: u16) -> Option<&'static str> {
    match outcome {
        Outcome::Success { .. } if status >= 400 => Some(status_text(status)),
        Outcome::Success { .. } => None,
        Outcome::Failure { kind, .. } => Some(match kind {
            FailureKind::Status(s) => status_text(*s),
            FailureKind::Timeout => "timeout",
            FailureKind::Connect => "connect_error",
            FailureKind::Reset => "upstream_reset",
        }),
    }
}

/// End an attempt: a model call's (`asked`) counts in the GenAI metrics; its span (a sampled
/// request's only) gets the GenAI attributes, a plain HTTP attempt's (`asked` `None`) the
/// HTTP ones.
pub(super) fn end_attempt(
    ctx: &ShardCtx,
    c: &Client,
    snap: &Snapshot,
    a: AttemptTrace,
    target: Target,
    asked: Option<Asked<'_>>,
    ended: Ended,
) {
    let ucfg = snap.upstream(target.upstream);
    // An attempt outrun by its hedge (or the hedge by it) was cut off, not finished: it is in
    // the trace, not in the operations' metrics.
    let finished = ended.answered || ended.error.is_some();
    // The answer's usage, read once for the metrics and the span.
    let usage = ended.answered.then(|| answer_usage(c)).flatten();
    if let (Some(asked), true) = (&asked, finished) {
        let first = c.ex.first_body_unix_ns;
        let first_chunk_us = (ended.answered && asked.checked.stream && first != 0)
            .then(|| first.saturating_sub(a.start_unix_ns) / 1_000);
        ctx.genai.record(&crate::telemetry::genai::Point {
            operation: operation_name(asked.path),
            provider: provider_name(ucfg.provider),
            model: asked.model.unwrap_or_default(),
            error: ended.error,
            duration_us: ended.end_unix_ns.saturating_sub(a.start_unix_ns) / 1_000,
            first_chunk_us,
            usage,
        });
    }
    let (Some(spans), Some(trace), Some(span_id)) = (&ctx.spans, c.ex.trace, a.span) else {
        return;
    };
    if !trace.ctx.sampled {
        return;
    }
    let endpoint = snap.endpoint(target.upstream, target.endpoint);
    // The client's method goes upstream (a model call's is POST, translated or not).
    let method =
        c.ex.server_span
            .as_ref()
            .map_or(Text::new("POST"), |s| s.method);
    let mut span = AttemptSpan {
        operation: None,
        provider: provider_name(ucfg.provider),
        method,
        request_model: Text::EMPTY,
        response_model: Text::EMPTY,
        group: Text::EMPTY,
        max_tokens: None,
        usage: None,
        finish_reasons: [Text::EMPTY; crate::telemetry::span::FINISH_REASONS_MAX],
        server_address: Text::new(endpoint.host()),
        server_port: endpoint.addr.port(),
        first_token_unix_ns: 0,
        attempt: a.number,
        hedge: a.hedge,
        stream: false,
    };
    if let Some(asked) = asked {
        span.operation = Some(operation_name(asked.path));
        if let Some(m) = asked.model {
            span.request_model.set(m);
        }
        if let Some(g) = asked.group {
            span.group.set(&snap.group(g).name);
        }
        span.max_tokens = asked.checked.max_tokens;
        span.stream = asked.checked.stream;
        if ended.answered {
            span.first_token_unix_ns = c.ex.first_body_unix_ns;
            let meta = c.llm.scanner.answer_meta();
            span.response_model = meta.model;
            span.finish_reasons = meta.finish_reasons;
            span.usage = usage;
        }
    }
    spans.record(SpanRecord {
        trace_id: trace.ctx.trace_id,
        span_id,
        parent: Some(trace.ctx.span_id),
        start_unix_ns: a.start_unix_ns,
        end_unix_ns: ended.end_unix_ns,
        status: ended.status,
        error: ended.error,
        body: SpanBody::Attempt(span),
    });
}

/// The answer's input and output tokens, when its usage was read.
fn answer_usage(c: &Client) -> Option<(u64, u64)> {
    c.ex.scan
        .then(|| c.llm.scanner.usage())
        .flatten()
        .map(|u| (u.prompt_tokens, u.completion_tokens))
}
