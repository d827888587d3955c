//! An LLM call: the body read whole, checked and admitted by its token estimate, the prompt
//! template filled, then one attempt per deployment the group's attempt loop
//! (`exchange::attempts`) hands out, with hedging, until one answers or none is left.

use std::rc::Rc;
use std::time::Duration;

use super::forward::{forward, read_client_body, send_continue};
use super::forward::{Attempt, Sent};
use super::hedge::Hedge;
use super::local::{answer_error, answer_error_with};
use super::spans::{begin_attempt, end_attempt, Asked, AttemptTrace, Ended};
use super::translate::Translation;
use super::RelayPlan;
use super::{llm_take, translate, Client, LlmBufs, Next};
use crate::admit::{write_rate_headers, write_refusal_headers};
use crate::balance::Outcome;
use crate::clock::Now;
use crate::config::Provider;
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::exchange::body::{self, BodyLeft, ChunkOut};
use crate::exchange::call::{Action, Call, Checked, Event, Refusal, World};
use crate::exchange::head::request_line;
use crate::exchange::ledger::Books;
use crate::http::request::{self, BodyKind, Credentials, RequestHead};
use crate::limits::HEADERS_ARRAY_LEN;
use crate::llm::{self};
use crate::snapshot::{DeploymentIdx, GroupId, Snapshot, Target, TenantId};
use crate::telemetry::context::TRACEPARENT_BYTES;
use crate::template::TemplateBody;

/// Read the rest of the request body (its head already consumed from `c.buf`) into `c.llm.body`,
/// at most `limit` bytes. `Err`: the request was answered (or the connection is done).
pub(super) async fn read_whole_body<'b>(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: &RequestHead,
    limit: u64,
    wbuf: SpareBuf<'b>,
) -> Result<SpareBuf<'b>, Next> {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    if matches!(head.body, BodyKind::Length(n) if n > limit) {
        return Err(answer_error(ctx, c, Error::BodyTooLarge, false, wbuf).await);
    }
    llm_take(ctx, c);
    c.llm.body.clear();
    let mut left = BodyLeft::of(head);
    let mut first = true;
    while first || !left.is_done() {
        if !first {
            if let Err(e) = read_client_body(c, server.header_bytes_max, server.body_timeout).await
            {
                return Err(match e {
                    Some(e) => answer_error(ctx, c, e, false, wbuf).await,
                    None => Next::Close,
                });
            }
        }
        let before = c.buf.len();
        let consumed = body::consume(
            &mut c.buf,
            &mut left,
            limit,
            &mut c.llm.body,
            ChunkOut::DataOnly,
        );
        c.ex.bytes_in += (before - c.buf.len()) as u64;
        if let Err(e) = consumed {
            return Err(answer_error(ctx, c, e, false, wbuf).await);
        }
        if first && !send_continue(c, head, &left).await {
            return Err(Next::Close);
        }
        first = false;
    }
    Ok(wbuf)
}

/// Check and admit a body answered here (the mock model): the first step of the LLM call
/// ([`Call::check_body`]), without its template or targets. `Err`: answered (400 / 403 / 429).
pub(super) async fn check_and_admit(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    snap: &Snapshot,
    body: &[u8],
) -> Result<(), Next> {
    let mut call = Call::new(c.ex.tenant, None);
    call.set_key(c.ex.key_limit);
    let now = Now::read();
    match call.check_body(snap, &mut c.ex.held, now, body) {
        Ok(()) => {
            took_body(c, snap, call.checked(), now);
            Ok(())
        }
        Err(r) => Err(refuse(ctx, c, snap, r, true, 0, now).await),
    }
}

/// What the driver keeps of a checked and admitted body: whether its usage is scanned, its
/// prompt estimate, the tenant's `x-ratelimit-*` lines for the answer.
fn took_body(c: &mut Client, snap: &Snapshot, checked: Checked, now: Now) {
    // A sampled request's answer is scanned too: its usage, model and finish reasons go in
    // its trace.
    c.ex.scan = checked.metered || sampled(c);
    c.ex.prompt_estimate = checked.prompt_estimate;
    c.ex.price = checked.price;
    c.ex.group = checked.group;
    if checked.admitted {
        rate_headers(c, snap, now);
    }
}

/// The admitted tenant's `x-ratelimit-*` lines, for its answer.
fn rate_headers(c: &mut Client, snap: &Snapshot, now: Now) {
    if let Some(limits) = c.ex.tenant.and_then(|t| snap.tenant_limits(t)) {
        c.rate_hdrs.clear();
        write_rate_headers(limits, now.unix_ns, &mut c.rate_hdrs);
    }
}

/// Answer a refusal: counted for the tenant, with its limit's `x-ratelimit-*` and
/// `retry-after` lines. `head_len`: bytes of a request head still at the front of `c.buf`
/// (dropped first); `may_keep_alive`: nothing of the request is left unread.
pub(super) async fn refuse(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    snap: &Snapshot,
    r: Refusal,
    may_keep_alive: bool,
    head_len: usize,
    now: Now,
) -> Next {
    if let Some(why) = r.reject {
        ctx.control.stats.reject(c.ex.tenant_slot, why);
    }
    c.rate_hdrs.clear();
    if let (Some(refused), Some(limits)) =
        (r.limited, c.ex.tenant.and_then(|t| snap.tenant_limits(t)))
    {
        write_refusal_headers(limits, &refused, now.unix_ns, &mut c.rate_hdrs);
    }
    c.buf.drain(..head_len.min(c.buf.len()));
    let extra = std::mem::take(&mut c.rate_hdrs);
    let next = answer_error_with(ctx, c, r.error, may_keep_alive, &extra, ctx.take_buf()).await;
    c.rate_hdrs = extra;
    next
}

/// Admit a tenant's request that carries no LLM body (a request, no tokens), or answer 429.
/// `head_len` and `may_keep_alive` as for [`refuse`].
pub(super) async fn admit_tenant(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    snap: &Snapshot,
    tenant: TenantId,
    may_keep_alive: bool,
    head_len: usize,
) -> Result<(), Next> {
    let now = Now::read();
    match World::admit(snap, tenant, c.ex.key_limit, 0, 0, now.unix_ns) {
        Ok(None) => Ok(()),
        Ok(Some(adm)) => {
            c.ex.held.hold_tenant(snap, tenant, adm, now.unix_ns);
            rate_headers(c, snap, now);
            Ok(())
        }
        Err(refused) => {
            let r = Refusal::limited(refused);
            Err(refuse(ctx, c, snap, r, may_keep_alive, head_len, now).await)
        }
    }
}

/// A tenant's request to an LLM endpoint: read the body whole, check and admit it, fill its
/// prompt template, then send it to the route's upstream or, for a model group, to the
/// deployments the group's attempt loop hands out (`exchange::attempts`) until one answers or
/// none is left. Each attempt's request is written from the raw head (the body's real length,
/// the tenant's key removed, the upstream's credential added).
pub(super) async fn proxy_llm(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    route_target: Option<Target>,
    mut wbuf: SpareBuf<'_>,
) -> Next {
    let snap = c.snap.clone();
    let limit = snap.cfg.server.body_bytes_max;
    // Keep the raw head (the upstream head is written from it once the body is known).
    wbuf.clear();
    wbuf.extend_from_slice(&c.buf[..head.head_len]);
    c.buf.drain(..head.head_len);
    let raw_head = match read_whole_body(ctx, c, &head, limit, wbuf).await {
        Ok(w) => w,
        Err(next) => return next,
    };
    // The raw head, the body and the template-filled body stay out of `c` while the call
    // decides and builds each attempt's request, and are lent back to `c.llm` while an
    // attempt runs: a stream's relay gives them to the shard's pool once its request is sent
    // (a stream waiting for tokens holds none of them). After an attempt that is retried (no
    // byte reached the client, so its stream never began) they are taken out again. The raw
    // head moves from the write buffer it was read into to a pooled buffer of its own size.
    c.llm.head.clear();
    c.llm.head.extend_from_slice(&raw_head);
    drop(raw_head);
    let mut bufs = CallBufs::take(&mut c.llm);
    // The call is written in place, not as an async fn of its own: each level of nested
    // futures costs every connection's future up to 128 bytes (monoio's timer futures are
    // aligned to 128), and boxing it would allocate per request.
    let snap = &snap;
    let next = 'call: {
        // `exchange::call::Call` decides: the body checked (a model the tenant may use), the
        // tenant admitted by its token estimate, whether a template is filled, then the route's
        // upstream or each deployment of the group (its strategy, fallbacks, the deployment's
        // own quota, a hedge) and whether a failure before any byte reached the client is
        // tried elsewhere. This loop performs what it asks.
        let mut machine = Call::new(c.ex.tenant, route_target);
        machine.set_key(c.ex.key_limit);
        let mut rng = || ctx.next_random();
        let mut now = Now::read();
        let mut action = machine.step(
            &**snap,
            &mut c.ex.held,
            now,
            &mut rng,
            Event::Body(&bufs.body),
        );
        if !matches!(action, Action::Refuse(_)) {
            took_body(c, snap, machine.checked(), now);
        }
        let checked = machine.checked();
        // The template-filled body is sent instead of the client's once filled.
        let mut use_filled = false;
        loop {
            let (choice, hedge_at) = match action {
                Action::Refuse(r) => break 'call refuse(ctx, c, snap, r, true, 0, now).await,
                Action::Fill { group } => {
                    // Fill the selected template from `variables`; `variables` never goes
                    // upstream. A group's name is the body's model (inspected already).
                    let CallBufs { head, body, filled } = &mut bufs;
                    let path = request_line(head).1;
                    let model = group.map(|g| snap.group(g).name.as_str());
                    let filled = match fill_template(snap, body, model, path, filled) {
                        Ok(changed) => {
                            use_filled = changed;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    now = Now::read();
                    action = machine.step(
                        &**snap,
                        &mut c.ex.held,
                        now,
                        &mut rng,
                        Event::Filled(filled),
                    );
                    continue;
                }
                Action::SendRoute(target) => {
                    let send_body: &[u8] = if use_filled { &bufs.filled } else { &bufs.body };
                    let attempt = begin_attempt(ctx, c, false, now);
                    let built = llm_request(
                        ctx, c, snap, &bufs.head, send_body, target, None, checked, attempt.1,
                    );
                    let out = match built {
                        Ok((out, plan)) => {
                            c.ex.plan = plan;
                            out
                        }
                        // The body was read whole: the connection can stay open.
                        Err(e) => break 'call answer_error(ctx, c, e, true, ctx.take_buf()).await,
                    };
                    bufs.lend(&mut c.llm);
                    let sent =
                        forward(ctx, c, head, target, out, BodyLeft::Done, Attempt::ONLY).await;
                    bufs = CallBufs::take(&mut c.llm);
                    {
                        let a = attempt.0;
                        // The model the client's body names, read again for a sampled call's
                        // span only (a route's call is not parsed twice otherwise; its metrics
                        // carry no model).
                        let model = sampled(c)
                            .then(|| llm::inspect(&bufs.body).ok()?.model().map(str::to_owned))
                            .flatten();
                        let asked = Asked {
                            model: model.as_deref(),
                            group: checked.group,
                            checked,
                            path: plain_path(request_line(&bufs.head).1),
                        };
                        let ended = Ended::from_exchange(&c.ex, Now::read());
                        end_attempt(ctx, c, snap, a, target, Some(asked), ended);
                    }
                    break 'call match sent {
                        Sent::Done(next) => next,
                        Sent::Retry | Sent::ContextExceeded => Next::Close,
                    };
                }
                Action::Send {
                    choice,
                    quota_held,
                    hedge,
                } => {
                    if quota_held {
                        // The deployment's tokens are settled from the answer's usage.
                        c.ex.scan = true;
                    }
                    (choice, hedge)
                }
                // Only after an attempt that is not retried, which ends the loop below.
                Action::Done => {
                    break 'call answer_error(ctx, c, Error::NoDeployment, true, ctx.take_buf())
                        .await;
                }
            };
            let body: &[u8] = if use_filled { &bufs.filled } else { &bufs.body };
            let (group, idx) = (choice.group, choice.idx);
            let dep = snap.deployment(group, idx);
            let target = snap.pick_endpoint(snap.deployment_upstream(group, idx));
            let attempt = begin_attempt(ctx, c, false, now);
            let out = match llm_request(
                ctx,
                c,
                snap,
                &bufs.head,
                body,
                target,
                Some(&dep.model),
                checked,
                attempt.1,
            ) {
                Ok((out, plan)) => {
                    c.ex.plan = plan;
                    out
                }
                // The body was read whole: the connection can stay open.
                Err(e) => break 'call answer_error(ctx, c, e, true, ctx.take_buf()).await,
            };
            // Measure the attempt for the balancer: time to the response head, and how it ended.
            let Some(gr) = snap.balancer(group) else {
                break 'call answer_error(ctx, c, Error::NoDeployment, true, out).await;
            };
            c.ex.upstream_slot = snap.upstream_stat_slot(target.upstream);
            // A hedged stream: the second attempt's request, ready to race.
            let mut hedge = hedge_at.and_then(|(h, after)| {
                plan_hedge(
                    ctx,
                    c,
                    snap,
                    (&bufs.head, body),
                    checked,
                    (group, h),
                    (after, now),
                )
            });
            let started = now.mono_ns();
            let balanced = gr.start(idx.index(), started);
            c.ex.ttfb = None;
            c.ex.retry_after = None;
            let this = Attempt {
                retry_ok: choice.retry_ok,
                hedge: hedge.as_deref_mut(),
                context_fallback: machine.context_fallback(&**snap).is_some(),
            };
            // The answer is priced as the deployment that gives it.
            c.ex.price = snap.deployment_price(group, idx).or(checked.price);
            bufs.lend(&mut c.llm);
            let sent = forward(ctx, c, head, target, out, BodyLeft::Done, this).await;
            bufs = CallBufs::take(&mut c.llm);
            let ended = Now::read();
            let path = plain_path(request_line(&bufs.head).1);
            let tried = (attempt.0, target, group, idx);
            trace_attempts(
                ctx,
                c,
                snap,
                tried,
                hedge.as_deref(),
                (checked, path),
                ended,
            );
            if let Some(a) = balanced {
                match hedge.as_deref() {
                    // Outrun by the hedge: it had waited at least this long for a first byte.
                    Some(h) if h.won => a.finish(
                        h.won_ns,
                        &Outcome::Success {
                            latency: Duration::from_nanos(h.won_ns.saturating_sub(started)),
                        },
                    ),
                    _ => a.finish(ended.mono_ns(), &c.ex.outcome()),
                }
            }
            let hedge_won = hedge.and_then(|h| settle_hedge(c, snap, *h, ended));
            if let Some((g, i)) = hedge_won {
                c.ex.price = snap.deployment_price(g, i).or(checked.price);
            }
            match sent {
                Sent::Done(next) => break 'call next,
                Sent::ContextExceeded => {
                    // Too long for that deployment's model: the named group's next
                    // context-window fallback.
                    c.ex.status = 0;
                    c.ex.local_error = false;
                    c.ex.plan = RelayPlan::default();
                    now = Now::read();
                    let e = Event::ContextExceeded;
                    action = machine.step(&**snap, &mut c.ex.held, now, &mut rng, e);
                }
                Sent::Retry => {
                    // Failed before any byte reached the client: the machine picks another
                    // deployment (or refuses), giving this one's quota back.
                    c.ex.status = 0;
                    c.ex.local_error = false;
                    c.ex.plan = RelayPlan::default();
                    now = Now::read();
                    let ended = Event::Ended {
                        retry: true,
                        hedge_won,
                    };
                    action = machine.step(&**snap, &mut c.ex.held, now, &mut rng, ended);
                }
            }
        }
    };
    bufs.lend(&mut c.llm);
    next
}

/// What an LLM call keeps to build each attempt's request: the client's raw head, its body,
/// and the body with its template filled.
#[derive(Default)]
struct CallBufs {
    head: Vec<u8>,
    body: Vec<u8>,
    filled: Vec<u8>,
}

impl CallBufs {
    /// Out of the connection's LLM buffers (empty ones when a stream gave them to the pool).
    fn take(llm: &mut crate::ctx::LlmBufs) -> Self {
        Self {
            head: std::mem::take(&mut llm.head),
            body: std::mem::take(&mut llm.body),
            filled: std::mem::take(&mut llm.filled),
        }
    }

    /// Back into the connection's LLM buffers, while an attempt runs and when the call ends.
    fn lend(&mut self, llm: &mut crate::ctx::LlmBufs) {
        llm.head = std::mem::take(&mut self.head);
        llm.body = std::mem::take(&mut self.body);
        llm.filled = std::mem::take(&mut self.filled);
    }
}

/// A second attempt for a hedged stream at deployment `idx` of `group` (chosen by
/// `exchange::call::Call`), with its request built now. `None`: the request cannot be built for it.
pub(super) fn plan_hedge<'c>(
    ctx: &'c ShardCtx,
    c: &mut Client,
    snap: &Snapshot,
    (raw_head, body): (&[u8], &[u8]),
    call: Checked,
    (group, idx): (GroupId, DeploymentIdx),
    (after, now): (Duration, Now),
) -> Option<Box<Hedge<'c>>> {
    let dep = snap.deployment(group, idx);
    let target = snap.pick_endpoint(snap.deployment_upstream(group, idx));
    let attempt = begin_attempt(ctx, c, true, now);
    let built = llm_request(
        ctx,
        c,
        snap,
        raw_head,
        body,
        target,
        Some(&dep.model),
        call,
        attempt.1,
    );
    built.ok().map(|(request, plan)| {
        Box::new(Hedge {
            trace: attempt.0,
            after,
            group,
            idx,
            target,
            request: Some(request),
            plan,
            tokens: call.tokens,
            fair_slot: c.snap.fair_slot(c.ex.tenant),
            launched: false,
            won: false,
            launched_ns: 0,
            won_ns: 0,
            admitted: None,
            cap_held: false,
            snap: c.snap.clone(),
        })
    })
}

/// After a hedged attempt: report the hedge to the balancer (only a winner has an outcome; a
/// cancelled one just ran late), settle its deployment quota (its request buffer goes back
/// when it is dropped).
/// `Some((group, index))` of the hedge when it won (the request's deployment from then on).
pub(super) fn settle_hedge(
    c: &mut Client,
    snap: &Snapshot,
    mut h: Hedge<'_>,
    now: Now,
) -> Option<(GroupId, DeploymentIdx)> {
    if !h.launched {
        return None;
    }
    if !h.won {
        if let Some(adm) = h.admitted.take() {
            snap.settle_deployment(h.group, h.idx, adm, now.unix_ns, None, true);
        }
        return None;
    }
    if let Some(gr) = snap.balancer(h.group) {
        if let Some(a) = gr.start(h.idx.index(), h.launched_ns) {
            a.finish(now.mono_ns(), &c.ex.outcome());
        }
    }
    let quota = h.admitted.take().map(|a| ((h.group, h.idx), a));
    c.ex.held.hedge_won(snap, quota, now.unix_ns);
    Some((h.group, h.idx))
}

/// Whether the request's spans are recorded.
fn sampled(c: &Client) -> bool {
    c.ex.trace.is_some_and(|t| t.ctx.sampled)
}

/// A path without its query.
fn plain_path(target: &str) -> &str {
    target.split('?').next().unwrap_or(target)
}

/// The wall-clock time of a monotonic reading `mono_ns`, from `now`.
fn unix_of(mono_ns: u64, now: Now) -> u64 {
    now.unix_ns
        .saturating_sub(now.mono_ns().saturating_sub(mono_ns))
}

/// Record the spans of a deployment's attempt `a` and of its hedge, if one was launched: the
/// one whose answer was relayed carries its status, usage and first token; the one outrun
/// ends when the other answered.
fn trace_attempts(
    ctx: &ShardCtx,
    c: &Client,
    snap: &Snapshot,
    (a, target, group, idx): (AttemptTrace, Target, GroupId, DeploymentIdx),
    hedge: Option<&Hedge<'_>>,
    (checked, path): (Checked, &str),
    ended: Now,
) {
    let asked = |g: GroupId, i: DeploymentIdx| Asked {
        model: Some(snap.deployment(g, i).model.as_str()),
        group: Some(g),
        checked,
        path,
    };
    let launched = hedge.filter(|h| h.launched);
    let first = match launched {
        Some(h) if h.won => Ended::outrun(unix_of(h.won_ns, ended)),
        _ => Ended::from_exchange(&c.ex, ended),
    };
    end_attempt(ctx, c, snap, a, target, Some(asked(group, idx)), first);
    if let Some(h) = launched {
        let mut t = h.trace;
        t.start_unix_ns = unix_of(h.launched_ns, ended);
        let second = if h.won {
            Ended::from_exchange(&c.ex, ended)
        } else {
            Ended::outrun(ended.unix_ns)
        };
        let asked = Some(asked(h.group, h.idx));
        end_attempt(ctx, c, snap, t, h.target, asked, second);
    }
}

/// Build the upstream request for one attempt into a fresh buffer: the head (re-parsed from
/// the raw client head in `raw_head`: the tenant key dropped, the upstream's credential added,
/// the body's length) and the body, with the deployment's model name and, for a stream,
/// `stream_options.include_usage`.
#[allow(clippy::too_many_arguments)]
pub(super) fn llm_request<'c>(
    ctx: &'c ShardCtx,
    c: &mut Client,
    snap: &Snapshot,
    raw_head: &[u8],
    body: &[u8],
    target: Target,
    model: Option<&str>,
    call: Checked,
    traceparent: Option<[u8; TRACEPARENT_BYTES]>,
) -> Result<(SpareBuf<'c>, RelayPlan), Error> {
    let mut body = body;
    let mut translation = None;
    let ucfg = snap.upstream(target.upstream);
    let client_path = request_line(raw_head).1;
    let client_path = client_path.split('?').next().unwrap_or(client_path);
    let dir = translate::direction(client_path, ucfg.provider)?;
    let LlmBufs {
        scratch,
        rewritten,
        path: azure_path,
        ..
    } = &mut c.llm;
    // The upstream's path: a fixed one, or (`path_in_buf`) the one built in `azure_path`.
    let mut fixed_path: Option<&'static str> = None;
    let mut path_in_buf = false;
    // The model the upstream is asked for, where a translation or Azure's path names it: the
    // deployment's, or on a route the one the client's body names (read once).
    let named = (model.is_none() && (dir.is_some() || ucfg.provider == Provider::Azure))
        .then(|| {
            llm::inspect(body)
                .ok()
                .and_then(|i| i.model().map(str::to_owned))
        })
        .flatten();
    let upstream_model = model.or(named.as_deref()).unwrap_or_default();
    if let Some(dir) = dir {
        // The other API's body, for that model.
        let default_max_tokens =
            c.ex.tenant
                .map_or(crate::tenant::DEFAULT_MAX_TOKENS_DEFAULT, |t| {
                    snap.tenant(t).default_max_tokens
                });
        fixed_path = translate::translate_request(
            dir,
            body,
            upstream_model,
            default_max_tokens,
            call.stream,
            translate::RequestBufs {
                out: scratch,
                hub: rewritten,
                path: azure_path,
            },
        )?;
        path_in_buf = fixed_path.is_none();
        body = scratch;
        translation = Some(Box::new(Translation {
            dir,
            model: upstream_model.to_owned(),
            include_usage: call.include_usage,
        }));
    } else if let Some(m) = model {
        scratch.clear();
        if llm::with_model(body, m, scratch).is_ok() {
            body = scratch;
        }
    }
    // A stream is asked for its usage (OpenAI's `stream_options.include_usage`; Anthropic
    // streams always carry it) so its tokens are settled from what was really used; the extra
    // usage chunk is taken out again before the client sees it.
    // Anthropic and Responses streams always report usage (and know no `stream_options`).
    let reports_usage = matches!(client_path, "/v1/messages" | "/v1/responses");
    let mut strip = false;
    if call.stream && !call.include_usage && !reports_usage && dir.is_none() {
        rewritten.clear();
        if matches!(llm::with_include_usage(body, rewritten), Ok(true)) {
            body = rewritten;
            strip = true;
        }
    }
    // Azure: the OpenAI path becomes the deployment's.
    if let (Provider::Azure, Some(version)) = (ucfg.provider, ucfg.api_version.as_deref()) {
        let openai_path = fixed_path.unwrap_or(client_path);
        crate::provider::azure::path(openai_path, upstream_model, version, azure_path)
            .map_err(Error::BadRequest)?;
        path_in_buf = true;
    }
    let upstream_path = if path_in_buf {
        Some(azure_path.as_str())
    } else {
        fixed_path
    };
    let authority = snap
        .endpoint(target.upstream, target.endpoint)
        .authority
        .as_str();
    // Bedrock: the signature over this very request is its credential.
    let signed = match (&ucfg.aws, ucfg.region.as_deref()) {
        (Some(aws), Some(region)) => Some(sign_for_bedrock(
            ctx.aws_keys
                .as_ref()
                .and_then(|k| k.current(aws))
                .as_deref()
                .unwrap_or(aws),
            region,
            authority,
            upstream_path.unwrap_or(client_path),
            body,
        )?),
        _ => None,
    };
    let mut out = ctx.take_buf();
    out.clear();
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_ARRAY_LEN];
    match request::parse(raw_head, &mut headers, &snap.cfg.server.head_limits()) {
        Ok(Some(req)) => {
            let creds = Credentials {
                drop_client_keys: true,
                upstream: signed
                    .as_deref()
                    .or(ucfg.credential.as_deref())
                    .unwrap_or_default(),
                content_length: Some(body.len() as u64),
                path: upstream_path,
                translated: dir.is_some(),
                extra: translate::extra_lines(
                    ucfg.provider,
                    dir.is_some(),
                    req.header("anthropic-version").is_some(),
                ),
                client_tls: c.stream.is_tls(),
                traceparent: traceparent.as_ref().map(|t| &t[..]),
            };
            req.write_upstream_head_with(authority.as_bytes(), c.ip, &creds, &mut out);
        }
        // The same bytes parsed once already: unreachable, but never forward a bodyless head.
        _ => return Err(Error::BadRequest("unparsable request head")),
    }
    out.extend_from_slice(body);
    let plan = RelayPlan {
        translation,
        // A translated stream is relayed by its translator, not the filter.
        filter_sse: call.stream && dir.is_none(),
        strip_usage: strip,
        responses_events: client_path == "/v1/responses",
    };
    Ok((out, plan))
}

/// The SigV4 header lines of a Bedrock request: `POST path` to `authority` (the `host` the
/// request carries) with `body`, signed now. Signing allocates (the crate's canonical request):
/// translated requests are the exception, not the hot path.
fn sign_for_bedrock(
    aws: &crate::config::AwsAuth,
    region: &str,
    authority: &str,
    path: &str,
    body: &[u8],
) -> Result<Vec<u8>, Error> {
    let mut lines = Vec::new();
    let now_ms = crate::clock::Now::read().unix_ms();
    crate::provider::sigv4::sign(aws, region, authority, path, body, now_ms, &mut lines)
        .map_err(|_| Error::BadRequest("the request could not be signed for Bedrock"))?;
    Ok(lines)
}

/// Fill the template `body` selects (its `template` field, its model alias, or the route of
/// `path`) into `out`, or strip its `variables` when none applies. `Ok(false)`: unchanged.
pub(super) fn fill_template(
    snap: &Snapshot,
    body: &[u8],
    model: Option<&str>,
    path: &str,
    out: &mut Vec<u8>,
) -> Result<bool, crate::template::TemplateError> {
    let tb = TemplateBody::read(body)?;
    let selector = tb.selector()?;
    // Only a body whose model no group serves is read again for it (a template's model alias
    // may name such a model on a route).
    let info = model.is_none().then(|| llm::inspect(body).ok()).flatten();
    let model = model.or_else(|| info.as_ref().and_then(|i| i.model()));
    out.clear();
    match snap
        .templates
        .select(selector.as_ref().map(|n| n.as_str()), model, path)?
    {
        Some(t) => {
            tb.fill(t, out)?;
            Ok(true)
        }
        None if tb.has_variables() => Ok(tb.strip_variables(out)),
        None => Ok(false),
    }
}
