//! A tenant's LLM call, as a state machine without I/O: from the request body read whole to
//! the last attempt. Events in (the body, the template filled, an attempt ended and may or may
//! not be retried), actions out (refuse with this error, fill the template, send to the route's
//! upstream, send to this deployment with this hedge, done).
//!
//! It decides, in order:
//! 1. the body: strict JSON naming a model, which the tenant is approved for (else 400 / 403);
//! 2. admission: the tenant's limits take the request at its token estimate (else 429 with the
//!    limit that refused), held in the request's [`Ledger`];
//! 3. the prompt template: whether one is filled (the driver fills it and reports back);
//! 4. the target: the route's upstream when the model names no group (404 when groups are
//!    configured), else the group's attempts ([`Attempts`]): the deployment its strategy picks,
//!    then fallbacks, each deployment's own quota (taken when it is chosen, given back when its
//!    attempt fails over), the hedge for a stream, and the retry.
//!
//! The driver (`conn::call::proxy_llm`) performs each action (fills the template, builds the
//! request, races the hedge, forwards, relays) and reports how it ended; everything decided
//! between those is decided here, from the [`World`] (the snapshot's tenants, groups, balancers
//! and limit cells on a shard; a table in `exchange::sim` and the `exchange` fuzz target),
//! `now` and the random numbers it is handed. What the request holds is settled once by the
//! ledger, whichever way the call ends.

use super::attempts::{Attempts, Choice, Groups, Tried};
use super::ledger::{Books, Ledger};
use std::time::Duration;

use crate::admit::Refused;
use crate::clock::Now;
use crate::control::stats::Reject;
use crate::error::{Error, Limit};
use crate::llm;
use crate::prices::Price;
use crate::snapshot::{DeploymentIdx, GroupId, Target, TenantId};
use crate::template::TemplateError;

/// What the call needs of the world besides the groups and the books.
pub trait World: Groups + Books {
    /// The model group serving `model`, if any.
    fn group_of(&self, model: &str) -> Option<GroupId>;
    /// Model groups are configured: a model none of them serves is unknown (OpenAI's 404)
    /// instead of going to the route's upstream.
    fn has_groups(&self) -> bool;
    /// Prompt templates are configured (a body without `variables` may still select one).
    fn has_templates(&self) -> bool;
    /// Tenant `t` is approved for `model`, and so is its key `key` (one with limits of its
    /// own, which may name its models) when given.
    fn allows(&self, t: TenantId, key: Option<usize>, model: &str) -> bool;
    /// The `max_tokens` a request of tenant `t` (or of no tenant) is estimated at when it
    /// names none.
    fn default_max_tokens(&self, t: Option<TenantId>) -> u64;
    /// Admit a request of tenant `t` (and its key's own limits, `key`, if it has any)
    /// estimated at `tokens` and `usd_uusd` microdollars: `Ok(Some)` admitted, `Ok(None)` the
    /// tenant has no limits, `Err` the limit that refuses it now (nothing was taken).
    fn admit(
        &self,
        t: TenantId,
        key: Option<usize>,
        tokens: u64,
        usd_uusd: u64,
        now_ns: u64,
    ) -> Result<Option<Self::Admission>, Refused>;
    /// The price of `model` (of group `group`, if one serves it), for spend and USD budgets.
    fn price(&self, _group: Option<GroupId>, _model: &str) -> Option<Price> {
        None
    }
    /// How many times a failure before the first byte is retried in `group` (`retries`).
    fn retries(&self, group: GroupId) -> usize;
    /// Take deployment `idx` of `group`'s own quota (its rpm/tpm over all shards) for a request
    /// estimated at `tokens`: `Ok(Some)` taken, `Ok(None)` the deployment has no quota of its
    /// own, `Err` it is over its quota now.
    #[allow(clippy::result_unit_err)]
    fn take_quota(
        &self,
        group: GroupId,
        idx: DeploymentIdx,
        tokens: u64,
        now_ns: u64,
    ) -> Result<Option<Self::Admission>, ()>;
    /// How long a stream to `group` waits for its answer's head before a hedge is raced
    /// beside it (`hedge_after_ms`); `None`: the group does not hedge.
    fn hedge_after(&self, group: GroupId) -> Option<Duration>;
    /// The `nth` of `group`'s `context_window_fallbacks`, if it has that many.
    fn context_window_fallback(&self, group: GroupId, nth: usize) -> Option<GroupId>;
}

/// What the driver reports to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'b> {
    /// The request body, read whole (within `body_bytes_max`).
    Body(&'b [u8]),
    /// The template the last [`Action::Fill`] asked for was filled (or none applied), or could
    /// not be.
    Filled(Result<(), TemplateError>),
    /// The attempt the last [`Action::Send`] or [`Action::SendRoute`] asked for ended.
    /// `retry`: it failed before any byte reached the client and the one retry rule lets it be
    /// tried elsewhere (its `retry_ok` allowed it); otherwise the exchange is over.
    /// `hedge_won`: a hedge raced beside it and won (its deployment is not tried again either).
    Ended {
        retry: bool,
        hedge_won: Option<(GroupId, DeploymentIdx)>,
    },
    /// The attempt's upstream answered that the request is longer than its model's context
    /// window, and nothing of that answer reached the client (sent only when
    /// [`Call::context_fallback`] named a group to go on with).
    ContextExceeded,
}

/// What the call asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Answer this refusal; the call is over (the body was read whole: the connection may
    /// stay open).
    Refuse(Refusal),
    /// Fill the prompt template the body selects (its `template`, the model alias of `group`
    /// or of the body's model, or the route) or strip its `variables`, then report
    /// [`Event::Filled`].
    Fill { group: Option<GroupId> },
    /// Send the request to the route's upstream (the body names no model group).
    SendRoute(Target),
    /// Send the request to `choice`'s deployment (its quota, if it has one, is held in the
    /// ledger: `quota_held`), and, for a hedged stream, race a second attempt at `hedge`'s
    /// deployment after its wait.
    Send {
        choice: Choice,
        quota_held: bool,
        hedge: Option<(DeploymentIdx, Duration)>,
    },
    /// The exchange is over (answered or relayed by the last attempt).
    Done,
}

/// Why the call refuses: the error answered, the tenant statistic it counts as, and, for a
/// limit, what the `x-ratelimit-*` / `retry-after` headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub error: Error,
    pub reject: Option<Reject>,
    pub limited: Option<Refused>,
}

impl Refusal {
    fn error(error: Error) -> Self {
        Self {
            error,
            reject: None,
            limited: None,
        }
    }

    /// A tenant limit refused the request.
    pub fn limited(r: Refused) -> Self {
        let reject = match r.limit {
            Limit::Requests => Reject::Requests,
            Limit::Tokens => Reject::Tokens,
            Limit::Concurrency | Limit::Connections => Reject::Concurrency,
            Limit::Budget | Limit::BudgetUsd => Reject::Budget,
            Limit::Queue => Reject::Queue,
        };
        Self {
            error: Error::RateLimited(r.limit),
            reject: Some(reject),
            limited: Some(r),
        }
    }
}

/// What the call found in the body, once it was checked and admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checked {
    pub stream: bool,
    /// The client asked for the usage chunk itself (`stream_options.include_usage`).
    pub include_usage: bool,
    /// The model group the body names, if any.
    pub group: Option<GroupId>,
    /// The token estimate (body bytes / 4 + max_tokens), for limits and quotas.
    pub tokens: u64,
    /// The prompt's part of the estimate (body bytes / 4), for accounting a stream cut short.
    pub prompt_estimate: u64,
    /// A tenant's call: its tokens are settled from the answer's usage.
    pub metered: bool,
    /// The tenant's limits admitted it (the answer reports them as `x-ratelimit-*`).
    pub admitted: bool,
    /// The price of the model it names (its group's, or the model's own), if known.
    pub price: Option<Price>,
    /// The body's own `max_tokens` (or `max_completion_tokens`, `max_output_tokens`), if set.
    pub max_tokens: Option<u64>,
}

#[derive(Debug, Clone)]
enum Stage {
    /// Waiting for the body.
    Body,
    /// Waiting for the template.
    Fill,
    /// The route's upstream was asked for.
    Route,
    /// A group's attempts; the one under way.
    Attempts(Attempts, Option<Choice>),
    Over,
}

/// One request's LLM call.
#[derive(Debug, Clone)]
pub struct Call {
    tenant: Option<TenantId>,
    /// How many of the named group's `context_window_fallbacks` were gone on to.
    context_tried: usize,
    /// The limits of the tenant's key's own, if it has any (an index into the snapshot's).
    key: Option<usize>,
    /// The route's upstream, for a body that names no model group.
    route: Option<Target>,
    checked: Checked,
    stage: Stage,
}

impl Call {
    /// A call by `tenant` (`None` without `auth = "keys"`) on a path whose route, if any, sends
    /// to `route`.
    pub fn new(tenant: Option<TenantId>, route: Option<Target>) -> Self {
        Self {
            key: None,
            context_tried: 0,
            tenant,
            route,
            checked: Checked::default(),
            stage: Stage::Body,
        }
    }

    /// The request's key has limits of its own (`key`: their index): admitted against them
    /// too.
    pub fn set_key(&mut self, key: Option<usize>) {
        self.key = key;
    }

    /// What the body said (all zero until [`Event::Body`] was taken).
    pub fn checked(&self) -> Checked {
        self.checked
    }

    /// The group an attempt that overflowed its model's context window goes on to: the named
    /// group's next `context_window_fallbacks` entry (LiteLLM's order), while an attempt is
    /// under way.
    pub fn context_fallback<W: World>(&self, world: &W) -> Option<GroupId> {
        match (&self.stage, self.checked.group) {
            (Stage::Attempts(_, Some(_)), Some(g)) => {
                world.context_window_fallback(g, self.context_tried)
            }
            _ => None,
        }
    }

    /// The named group's deployments tried and failed (or passed over for their quota).
    pub fn tried(&self) -> Option<&Tried> {
        match &self.stage {
            Stage::Attempts(a, _) => Some(a.tried()),
            _ => None,
        }
    }

    /// Take `event` and say what to do next; the request's reservations are kept in `held`.
    /// An event out of order ends the call ([`Action::Done`]).
    pub fn step<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        rng: &mut dyn FnMut() -> u64,
        event: Event<'_>,
    ) -> Action {
        let stage = std::mem::replace(&mut self.stage, Stage::Over);
        match (stage, event) {
            (Stage::Body, Event::Body(body)) => match self.check(world, held, now, body) {
                Ok(true) => {
                    self.stage = Stage::Fill;
                    Action::Fill {
                        group: self.checked.group,
                    }
                }
                Ok(false) => self.target(world, held, now, rng),
                Err(refusal) => Action::Refuse(refusal),
            },
            (Stage::Fill, Event::Filled(Ok(()))) => self.target(world, held, now, rng),
            (Stage::Fill, Event::Filled(Err(e))) => {
                Action::Refuse(Refusal::error(Error::Template(e)))
            }
            (
                Stage::Attempts(mut attempts, Some(failed)),
                Event::Ended {
                    retry: true,
                    hedge_won,
                },
            ) => {
                // Failed before any byte reached the client: its quota goes back, and neither
                // it nor a hedge beside it is tried again.
                held.end_attempt(world, now.unix_ns);
                attempts.failed(failed, hedge_won);
                self.next(attempts, world, held, now, rng)
            }
            // Too long for the model: the next context-window fallback group, its own
            // attempts (its strategy, retries and fallbacks) from the start.
            (stage @ Stage::Attempts(_, Some(_)), Event::ContextExceeded) => {
                self.stage = stage;
                let Some(f) = self.context_fallback(world) else {
                    self.stage = Stage::Over;
                    return Action::Done;
                };
                self.context_tried += 1;
                held.end_attempt(world, now.unix_ns);
                self.next(Attempts::new(f, world.retries(f)), world, held, now, rng)
            }
            // Over: answered or relayed (or an event out of order, which ends the call too).
            _ => Action::Done,
        }
    }

    /// Check and admit a body that is answered here, not sent anywhere (the mock model): the
    /// first step of [`Event::Body`] alone. The call stays where it was.
    pub fn check_body<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        body: &[u8],
    ) -> Result<(), Refusal> {
        self.check(world, held, now, body).map(|_| ())
    }

    /// Check the body and admit it: `Ok(fill)` whether a template is to be filled.
    fn check<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        body: &[u8],
    ) -> Result<bool, Refusal> {
        let info = llm::inspect(body).map_err(|e| Refusal::error(Error::BadBody(e.message())))?;
        let Some(model) = info.model() else {
            return Err(Refusal::error(Error::BadBody("the body names no model")));
        };
        let tokens = llm::estimate_tokens(
            body.len(),
            info.max_tokens,
            world.default_max_tokens(self.tenant),
        );
        let group = world.group_of(model);
        let prompt_estimate = llm::estimate_tokens(body.len(), Some(0), 0);
        let price = world.price(group, model);
        self.checked = Checked {
            stream: info.stream,
            include_usage: info.include_usage,
            group,
            tokens,
            prompt_estimate,
            metered: self.tenant.is_some(),
            admitted: false,
            price,
            max_tokens: info.max_tokens,
        };
        // The USD budget reserves the prompt at the input price and max_tokens at the output's.
        let usd = price.map_or(0, |p| {
            p.estimate_uusd(prompt_estimate, tokens.saturating_sub(prompt_estimate))
        });
        // With model groups, a model none of them serves is unknown to every tenant (OpenAI's
        // 404 `model_not_found`, which the SDKs raise as `NotFoundError`), approved or not.
        if self.checked.group.is_none() && world.has_groups() {
            return Err(Refusal::error(Error::ModelNotFound));
        }
        if let Some(t) = self.tenant {
            if !world.allows(t, self.key, model) {
                return Err(Refusal {
                    error: Error::ModelNotAllowed,
                    reject: Some(Reject::Model),
                    limited: None,
                });
            }
            match world.admit(t, self.key, tokens, usd, now.unix_ns) {
                Ok(Some(adm)) => {
                    held.hold_tenant(world, t, adm, now.unix_ns);
                    self.checked.admitted = true;
                }
                Ok(None) => {}
                Err(refused) => return Err(Refusal::limited(refused)),
            }
        }
        Ok(info.has_variables || world.has_templates())
    }

    /// Where the checked request goes: the route's upstream, or its group's first attempt.
    fn target<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        rng: &mut dyn FnMut() -> u64,
    ) -> Action {
        match (self.checked.group, self.route) {
            (Some(g), _) => {
                let attempts = Attempts::new(g, world.retries(g));
                self.next(attempts, world, held, now, rng)
            }
            (None, Some(target)) if !world.has_groups() => {
                self.stage = Stage::Route;
                Action::SendRoute(target)
            }
            // With model groups, a model no group serves is unknown (OpenAI's 404).
            (None, _) => Action::Refuse(Refusal::error(Error::ModelNotFound)),
        }
    }

    fn next<W: World>(
        &mut self,
        mut attempts: Attempts,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        rng: &mut dyn FnMut() -> u64,
    ) -> Action {
        let mut quota = None;
        let tokens = self.checked.tokens;
        let choice = attempts.next(world, now.mono_ns(), rng, |group, idx| {
            match world.take_quota(group, idx, tokens, now.unix_ns) {
                Ok(adm) => {
                    quota = adm;
                    true
                }
                Err(()) => false,
            }
        });
        let Some(choice) = choice else {
            return Action::Refuse(Refusal::error(Error::NoDeployment));
        };
        let quota_held = quota.is_some();
        if let Some(adm) = quota {
            held.hold_deployment(world, (choice.group, choice.idx), adm, now.unix_ns);
        }
        let hedge = match world.hedge_after(choice.group) {
            Some(after) if self.checked.stream => attempts
                .hedge(world, choice, now.mono_ns(), rng)
                .map(|idx| (idx, after)),
            _ => None,
        };
        self.stage = Stage::Attempts(attempts, Some(choice));
        Action::Send {
            choice,
            quota_held,
            hedge,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use super::*;
    use crate::snapshot::{FairSlot, UpstreamId};

    /// One group of `n` deployments, all in rotation; each deployment's quota answer from
    /// `quota` (`None`: no quota of its own, `Some(false)`: over it).
    struct One {
        n: usize,
        quota: Vec<Option<bool>>,
        hedges: bool,
        tickets: Cell<u32>,
        /// (ticket, failed) of each deployment quota settled.
        settled: RefCell<Vec<(u32, bool)>>,
        /// The group serves model "m" only; groups configured at all.
        groups_on: bool,
        templates: bool,
        /// The tenant may call "m" (and nothing else).
        allowed: bool,
        /// The tenant's limits: `None` none, `Some(Ok)` admit, `Some(Err)` refuse.
        limits: Option<Result<(), Refused>>,
        /// The token estimates admitted.
        admitted: RefCell<Vec<u64>>,
    }

    impl One {
        fn new(n: usize, quota: Vec<Option<bool>>, hedges: bool) -> Self {
            Self {
                n,
                quota,
                hedges,
                tickets: Cell::new(0),
                settled: RefCell::new(Vec::new()),
                groups_on: true,
                templates: false,
                allowed: true,
                limits: None,
                admitted: RefCell::new(Vec::new()),
            }
        }
    }

    impl Groups for One {
        fn pick(
            &self,
            _: GroupId,
            _: u64,
            _: &mut dyn FnMut() -> u64,
            tried: &[usize],
        ) -> Option<DeploymentIdx> {
            (0..self.n)
                .find(|i| !tried.contains(i))
                .map(DeploymentIdx::new)
        }
        fn has_admitted(&self, _: GroupId, _: u64) -> bool {
            true
        }
        fn fallbacks(&self, _: GroupId) -> impl Iterator<Item = GroupId> + '_ {
            std::iter::empty()
        }
        fn deployments(&self, _: GroupId) -> usize {
            self.n
        }
    }

    impl Books for One {
        type Admission = u32;
        fn settle_tenant(&self, _: TenantId, _: u32, _: u64, _: Option<u64>, _: bool) {}
        fn settle_deployment(
            &self,
            _: GroupId,
            _: DeploymentIdx,
            adm: u32,
            _: u64,
            _: Option<u64>,
            failed: bool,
        ) {
            self.settled.borrow_mut().push((adm, failed));
        }
        fn release_slot(&self, _: UpstreamId, _: FairSlot, _: u64) {}
    }

    impl World for One {
        fn group_of(&self, model: &str) -> Option<GroupId> {
            (self.groups_on && model == "m").then_some(G)
        }
        fn has_groups(&self) -> bool {
            self.groups_on
        }
        fn has_templates(&self) -> bool {
            self.templates
        }
        fn context_window_fallback(&self, _: GroupId, _: usize) -> Option<GroupId> {
            None
        }
        fn allows(&self, _: TenantId, _: Option<usize>, model: &str) -> bool {
            self.allowed && model == "m"
        }
        fn default_max_tokens(&self, t: Option<TenantId>) -> u64 {
            if t.is_some() {
                1000
            } else {
                7
            }
        }
        fn admit(
            &self,
            _: TenantId,
            _: Option<usize>,
            tokens: u64,
            _: u64,
            _: u64,
        ) -> Result<Option<u32>, Refused> {
            match self.limits {
                None => Ok(None),
                Some(Err(r)) => Err(r),
                Some(Ok(())) => {
                    self.admitted.borrow_mut().push(tokens);
                    self.tickets.set(self.tickets.get() + 1);
                    Ok(Some(self.tickets.get()))
                }
            }
        }
        fn retries(&self, _: GroupId) -> usize {
            RETRIES.with(Cell::get)
        }
        fn take_quota(
            &self,
            _: GroupId,
            idx: DeploymentIdx,
            _: u64,
            _: u64,
        ) -> Result<Option<u32>, ()> {
            match self.quota[idx.index()] {
                None => Ok(None),
                Some(false) => Err(()),
                Some(true) => {
                    self.tickets.set(self.tickets.get() + 1);
                    Ok(Some(self.tickets.get()))
                }
            }
        }
        fn hedge_after(&self, _: GroupId) -> Option<Duration> {
            self.hedges.then_some(Duration::from_millis(50))
        }
    }

    const G: GroupId = GroupId::new(0);
    const T: TenantId = TenantId::new(3);
    const ROUTE: Target = Target {
        upstream: UpstreamId::new(1),
        endpoint: crate::snapshot::EndpointIdx::new(0),
        slot: crate::snapshot::PoolSlot::new(0),
    };

    thread_local! {
        /// The group's retry budget, as the test sets it.
        static RETRIES: Cell<usize> = const { Cell::new(0) };
    }

    /// A call by no tenant to group "m" with `retries`, streamed or not: its first action.
    fn start(w: &One, held: &mut Ledger<u32>, retries: usize, stream: bool) -> (Call, Action) {
        RETRIES.with(|r| r.set(retries));
        let mut call = Call::new(None, None);
        let body: &[u8] = if stream {
            br#"{"model":"m","stream":true}"#
        } else {
            br#"{"model":"m"}"#
        };
        let first = call.step(w, held, NOW, &mut || 0, Event::Body(body));
        (call, first)
    }

    fn refused(a: Action) -> Refusal {
        match a {
            Action::Refuse(r) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
    const NOW: Now = Now::at(5_000_000_000, 1_700_000_000_000_000_000);

    fn sent(a: Action) -> (usize, bool, bool, Option<usize>) {
        match a {
            Action::Send {
                choice,
                quota_held,
                hedge,
            } => (
                choice.idx.index(),
                choice.retry_ok,
                quota_held,
                hedge.map(|(idx, after)| {
                    assert_eq!(after, Duration::from_millis(50), "the group's wait");
                    idx.index()
                }),
            ),
            other => panic!("expected a send, got {other:?}"),
        }
    }

    fn retry() -> Event<'static> {
        Event::Ended {
            retry: true,
            hedge_won: None,
        }
    }

    #[test]
    fn a_failed_attempt_gives_its_quota_back_and_the_next_is_sent_until_none_is_left() {
        let w = One::new(3, vec![Some(true), None, Some(true)], false);
        let mut held = Ledger::default();
        let (mut call, first) = start(&w, &mut held, 5, false);
        let mut rng = || 0;
        assert_eq!(sent(first), (0, true, true, None));
        assert_eq!(held.deployment(), Some((G, DeploymentIdx::new(0))));
        // Deployment 1 has no quota of its own: nothing held for it; 0's went back as failed.
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, retry())),
            (1, true, false, None)
        );
        assert_eq!(*w.settled.borrow(), vec![(1, true)]);
        assert_eq!(held.deployment(), None);
        // The last one: its failure is answered, not retried.
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, retry())),
            (2, false, true, None)
        );
        // Were it retried anyway, its quota would go back, and nothing is left: refused.
        assert_eq!(
            refused(call.step(&w, &mut held, NOW, &mut rng, retry())).error,
            Error::NoDeployment
        );
        assert_eq!(*w.settled.borrow(), vec![(1, true), (2, true)]);
    }

    #[test]
    fn deployments_over_their_quota_are_passed_over_and_an_answer_ends_the_call() {
        let w = One::new(3, vec![Some(false), Some(false), Some(true)], false);
        let mut held = Ledger::default();
        let (mut call, first) = start(&w, &mut held, 1, false);
        let mut rng = || 0;
        assert_eq!(sent(first), (2, false, true, None));
        assert!(call
            .tried()
            .is_some_and(|t| t.contains(DeploymentIdx::new(0))));
        let done = Event::Ended {
            retry: false,
            hedge_won: None,
        };
        assert_eq!(call.step(&w, &mut held, NOW, &mut rng, done), Action::Done);
        // The quota stays held until the request settles it with the tokens used.
        assert_eq!(held.deployment(), Some((G, DeploymentIdx::new(2))));
        assert!(w.settled.borrow().is_empty());
        // Every deployment over its quota: refused at once.
        let w = One::new(2, vec![Some(false), Some(false)], false);
        let (_, first) = start(&w, &mut Ledger::default(), 1, false);
        assert_eq!(refused(first).error, Error::NoDeployment);
    }

    #[test]
    fn only_streams_to_hedged_groups_get_a_hedge_and_a_won_hedge_is_not_tried_again() {
        let mut rng = || 0;
        for (stream, hedges, want) in [
            (true, true, Some(1)),
            (false, true, None),
            (true, false, None),
        ] {
            let w = One::new(3, vec![None; 3], hedges);
            let (_, first) = start(&w, &mut Ledger::default(), 2, stream);
            assert_eq!(sent(first).3, want, "stream {stream}, hedges {hedges}");
        }
        let w = One::new(3, vec![None; 3], true);
        let mut held = Ledger::default();
        let (mut call, first) = start(&w, &mut held, 2, true);
        assert_eq!(sent(first), (0, true, false, Some(1)));
        // The hedge at 1 won, and its answer may be retried: neither 0 nor 1 again.
        let won = Event::Ended {
            retry: true,
            hedge_won: Some((G, DeploymentIdx::new(1))),
        };
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, won)),
            (2, false, false, None)
        );
    }

    #[test]
    fn a_bad_body_or_a_model_the_tenant_may_not_use_is_refused_holding_nothing() {
        let mut rng = || 0;
        for (body, want) in [
            (&b"{"[..], Error::BadBody("the body is not a JSON object")),
            (
                br#"{"messages":[]}"#,
                Error::BadBody("the body names no model"),
            ),
            (br#"{"model":"m"}"#, Error::ModelNotAllowed),
        ] {
            let mut w = One::new(1, vec![None], false);
            w.limits = Some(Ok(()));
            w.allowed = false;
            let mut held = Ledger::default();
            let mut call = Call::new(Some(T), None);
            let r = refused(call.step(&w, &mut held, NOW, &mut rng, Event::Body(body)));
            if let Error::BadBody(_) = want {
                assert!(matches!(r.error, Error::BadBody(_)), "{r:?}");
                assert_eq!(r.reject, None);
            } else {
                assert_eq!(r.error, want);
                assert_eq!(r.reject, Some(Reject::Model));
            }
            assert!(held.is_empty(), "nothing admitted for a refused body");
            assert!(w.admitted.borrow().is_empty());
            // The call is over: anything after it ends it.
            assert_eq!(
                call.step(&w, &mut held, NOW, &mut rng, retry()),
                Action::Done
            );
        }
    }

    #[test]
    fn a_model_no_group_serves_is_not_found_for_every_tenant_approved_or_not() {
        let mut rng = || 0;
        let mut w = One::new(1, vec![None], false);
        w.limits = Some(Ok(()));
        for allowed in [true, false] {
            w.allowed = allowed;
            let mut held = Ledger::default();
            let mut call = Call::new(Some(T), None);
            let typo = Event::Body(br#"{"model":"gtp-4o"}"#);
            let r = refused(call.step(&w, &mut held, NOW, &mut rng, typo));
            assert_eq!((r.error, r.reject), (Error::ModelNotFound, None));
            assert!(held.is_empty(), "admitted for a model nobody serves");
        }
    }

    #[test]
    fn a_tenant_is_admitted_at_its_estimate_or_refused_with_the_limit() {
        let mut rng = || 0;
        let body = br#"{"model":"m","max_tokens":50,"stream":true}"#;
        let mut w = One::new(1, vec![None], false);
        w.limits = Some(Ok(()));
        let mut held = Ledger::default();
        let mut call = Call::new(Some(T), None);
        let first = call.step(&w, &mut held, NOW, &mut rng, Event::Body(body));
        assert_eq!(sent(first).0, 0);
        let want = (body.len() as u64).div_ceil(4) + 50;
        assert_eq!(*w.admitted.borrow(), vec![want]);
        assert_eq!(held.tenant(), Some(&1));
        let k = call.checked();
        assert_eq!(
            (k.tokens, k.stream, k.metered, k.admitted, k.group),
            (want, true, true, true, Some(G))
        );
        // Without max_tokens, the tenant's default counts.
        let mut held = Ledger::default();
        let mut call = Call::new(Some(T), None);
        call.step(
            &w,
            &mut held,
            NOW,
            &mut rng,
            Event::Body(br#"{"model":"m"}"#),
        );
        assert_eq!(call.checked().tokens, 4 + 1000);
        // No tenant: the default default, nothing admitted, not metered.
        let (call, _) = start(&w, &mut Ledger::default(), 0, false);
        assert_eq!(
            (call.checked().tokens, call.checked().metered),
            (4 + 7, false)
        );
        // Refused by a limit: the error, the statistic and the refusal for its headers.
        let limit = Refused {
            limit: Limit::Tokens,
            retry_after_ns: 2_000_000_000,
        };
        w.limits = Some(Err(limit));
        let mut held = Ledger::default();
        let mut call = Call::new(Some(T), None);
        let r = refused(call.step(&w, &mut held, NOW, &mut rng, Event::Body(body)));
        assert_eq!(r.error, Error::RateLimited(Limit::Tokens));
        assert_eq!((r.reject, r.limited), (Some(Reject::Tokens), Some(limit)));
        assert!(held.is_empty());
    }

    #[test]
    fn a_template_is_filled_before_the_first_attempt_and_its_error_refuses() {
        let mut rng = || 0;
        let mut w = One::new(2, vec![None; 2], false);
        // `variables` asks for the template step even with no templates configured.
        let vars = br#"{"model":"m","variables":{"a":"b"}}"#;
        let mut held = Ledger::default();
        let mut call = Call::new(None, None);
        let fill = call.step(&w, &mut held, NOW, &mut rng, Event::Body(vars));
        assert_eq!(fill, Action::Fill { group: Some(G) });
        let next = call.step(&w, &mut held, NOW, &mut rng, Event::Filled(Ok(())));
        assert_eq!(sent(next).0, 0);
        // With templates configured, every body is offered to them; a failure is the client's.
        w.templates = true;
        let mut call = Call::new(None, None);
        let fill = call.step(
            &w,
            &mut held,
            NOW,
            &mut rng,
            Event::Body(br#"{"model":"m"}"#),
        );
        assert_eq!(fill, Action::Fill { group: Some(G) });
        let e = TemplateError::UnknownTemplate;
        let r = refused(call.step(&w, &mut held, NOW, &mut rng, Event::Filled(Err(e))));
        assert_eq!(r.error, Error::Template(e));
        // A fill reported out of order ends the call.
        let (mut call, _) = start(&One::new(1, vec![None], false), &mut held, 0, false);
        assert_eq!(
            call.step(&w, &mut held, NOW, &mut rng, Event::Filled(Ok(()))),
            Action::Done
        );
    }

    #[test]
    fn a_model_no_group_serves_goes_to_the_route_only_without_groups() {
        let mut rng = || 0;
        let mut w = One::new(1, vec![None], false);
        let body = br#"{"model":"elsewhere"}"#;
        // Groups configured: an unknown model, with or without a route.
        for route in [None, Some(ROUTE)] {
            let mut call = Call::new(None, route);
            let r =
                refused(call.step(&w, &mut Ledger::default(), NOW, &mut rng, Event::Body(body)));
            assert_eq!(r.error, Error::ModelNotFound);
        }
        w.groups_on = false;
        let mut held = Ledger::default();
        let mut call = Call::new(None, Some(ROUTE));
        let to = call.step(&w, &mut held, NOW, &mut rng, Event::Body(body));
        assert_eq!(to, Action::SendRoute(ROUTE));
        // The route's one attempt is never retried elsewhere.
        assert_eq!(
            call.step(&w, &mut held, NOW, &mut rng, retry()),
            Action::Done
        );
        let mut call = Call::new(None, None);
        let r = refused(call.step(&w, &mut held, NOW, &mut rng, Event::Body(body)));
        assert_eq!(r.error, Error::ModelNotFound);
    }
}
