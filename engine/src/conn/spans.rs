//! Upstream attempts' CLIENT spans: begun with their span id (sent upstream in the attempt's
//! `traceparent`), recorded when the attempt ends, for a sampled request only.

use crate::balance::{FailureKind, Outcome};
use crate::clock::Now;
use crate::ctx::ShardCtx;
use crate::exchange::call::Checked;
use crate::snapshot::{GroupId, Snapshot, Target};
use crate::telemetry::context::{span_id, SpanId, TRACEPARENT_BYTES};
use crate::telemetry::span::{AttemptSpan, SpanBody, SpanRecord, Text};
use crate::telemetry::{host_of, operation_name, provider_name, status_text};

use super::{Client, Exchange};

/// An attempt being traced: its span and when it began.
#[derive(Debug, Clone, Copy)]
pub(super) struct AttemptTrace {
    pub span: SpanId,
    pub start_unix_ns: u64,
    pub number: u8,
    pub hedge: bool,
}

/// Begin an attempt of a traced request: its span id and the `traceparent` it sends. `None`:
/// the request is not traced.
pub(super) fn begin_attempt(
    ctx: &ShardCtx,
    c: &mut Client,
    hedge: bool,
) -> Option<(AttemptTrace, [u8; TRACEPARENT_BYTES])> {
    let trace = c.ex.trace.as_mut()?;
    let span = span_id(&mut || ctx.trace_random());
    let number = trace.next_attempt();
    let tp = trace.traceparent(&span);
    c.ex.first_body_unix_ns = 0;
    Some((
        AttemptTrace {
            span,
            start_unix_ns: Now::read().unix_ns,
            number,
            hedge,
        },
        tp,
    ))
}

/// A sampled plain proxied request's one attempt, whose span id its head already carries.
pub(super) fn route_attempt(c: &mut Client) -> Option<AttemptTrace> {
    let trace = c.ex.trace.as_mut().filter(|t| t.ctx.sampled)?;
    let span = trace.route_attempt?;
    Some(AttemptTrace {
        span,
        start_unix_ns: Now::read().unix_ns,
        number: trace.next_attempt(),
        hedge: false,
    })
}

/// Note when the current attempt's answer brought its first body bytes (a traced request's
/// first token), once per attempt.
pub(super) fn first_body(c: &mut Client, now: Now) {
    if c.ex.first_body_unix_ns == 0 && c.ex.trace.is_some_and(|t| t.ctx.sampled) {
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
        let outcome = crate::exchange::attempts::outcome(
            ex.ttfb,
            ex.status,
            ex.retry_after,
            ex.upstream_broke,
        );
        Self {
            end_unix_ns: now.unix_ns,
            status: if ex.ttfb.is_some() { ex.status } else { 0 },
            error: attempt_error(&outcome, ex.status),
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

/// Record an attempt's span (a sampled request only). `asked`: a model call's (GenAI
/// attributes); `None`: a plain HTTP attempt.
pub(super) fn end_attempt(
    ctx: &ShardCtx,
    c: &Client,
    snap: &Snapshot,
    a: AttemptTrace,
    target: Target,
    asked: Option<Asked<'_>>,
    ended: Ended,
) {
    let (Some(spans), Some(trace)) = (&ctx.spans, c.ex.trace) else {
        return;
    };
    if !trace.ctx.sampled {
        return;
    }
    let ucfg = snap.upstream(target.upstream);
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
        server_address: Text::new(host_of(&endpoint.authority)),
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
            span.usage =
                c.ex.scan
                    .then(|| c.llm.scanner.usage())
                    .flatten()
                    .map(|u| (u.prompt_tokens, u.completion_tokens));
        }
    }
    spans.record(SpanRecord {
        trace_id: trace.ctx.trace_id,
        span_id: a.span,
        parent: Some(trace.ctx.span_id),
        start_unix_ns: a.start_unix_ns,
        end_unix_ns: ended.end_unix_ns,
        status: ended.status,
        error: ended.error,
        body: SpanBody::Attempt(span),
    });
}
