//! A tenant's LLM call driven by arbitrary bytes, with counting books: the property the
//! `exchange` fuzz target checks (`crate::fuzz_checks::exchange`) and the unit tests below run
//! over generated inputs.
//!
//! The bytes decide everything the world decides for the driver: the tenant (none, limited or
//! not, refused by a limit, approved for the model or not), the body (not JSON, no model, an
//! unknown model, `variables`, a stream), templates and a route, the groups (their sizes,
//! health, fallbacks and retry budget), each deployment's quota, whether an upstream slot and
//! a hedge are taken, how the template fill and each attempt end (an answer with some status, a
//! failed connection, a timeout). The loop is the driver's: ask [`Call::step`] what to do,
//! perform it (fill, hold an upstream slot, race a hedge that may win), report how it ended
//! under [`attempts::retryable`] and `retry_ok`, settle at the end. Checked after every input:
//! - every reservation handed to the ledger is settled exactly once, every upstream slot
//!   released exactly once, the tenant admitted at most once and only when approved;
//! - a body refused for itself (bad JSON, a model not approved, a limit) holds nothing;
//! - the route is taken only without model groups, and never retried;
//! - an attempt is replayed at most once, and only on a pooled connection with its request in
//!   hand ([`Try`]);
//! - no more attempts fail over than the group's retry budget allows, and a retry happens only
//!   when the attempt was marked `retry_ok` and the failure is one the retry rule retries;
//! - an answer that overflowed its model's context window moves the call to the named group's
//!   next context-window fallback (here: its fallbacks), each at most once, with a retry budget
//!   of its own;
//! - the loop ends (each pick is bounded by [`Attempts::ROUNDS_MAX`]).

use std::cell::{Cell, RefCell};

use super::attempt::{Failed, Failure, Step, Try, Verdict};
use super::attempts::{self, Groups};
use super::call::{Action, Call, Event, World};
use super::ledger::{Books, Ledger};
use crate::admit::Refused;
use crate::clock::Now;
use crate::error::{Error, Limit};
use crate::snapshot::{DeploymentIdx, FairSlot, GroupId, TenantId, UpstreamId};
use crate::snapshot::{EndpointIdx, PoolSlot, Target};
use crate::template::TemplateError;
use std::time::Duration;

/// Books that record every settlement: admissions are numbered tickets.
#[derive(Debug, Default)]
pub struct Counted {
    /// Each settled ticket, with the tokens and the failure it was settled with.
    pub settled: RefCell<Vec<(u32, Option<u64>, bool)>>,
    /// Each slot given back, by upstream.
    pub released: RefCell<Vec<UpstreamId>>,
}

impl Books for Counted {
    type Admission = u32;
    fn settle_tenant(&self, _: TenantId, adm: u32, _: u64, used: Option<u64>, failed: bool) {
        self.settled.borrow_mut().push((adm, used, failed));
    }
    fn settle_deployment(
        &self,
        _: GroupId,
        _: DeploymentIdx,
        adm: u32,
        _: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        self.settled.borrow_mut().push((adm, used, failed));
    }
    fn release_slot(&self, upstream: UpstreamId, _: FairSlot, _: u64) {
        self.released.borrow_mut().push(upstream);
    }
}

/// Groups as a table: per group, its deployments (in rotation or not), its fallbacks.
#[derive(Debug)]
struct Table {
    up: Vec<Vec<bool>>,
    fallbacks: Vec<Vec<usize>>,
}

impl Groups for Table {
    fn pick(
        &self,
        g: GroupId,
        _: u64,
        rng: &mut dyn FnMut() -> u64,
        tried: &[usize],
    ) -> Option<DeploymentIdx> {
        let up = self.up.get(g.index())?;
        let n = up.len();
        let start = usize::try_from(rng() % n.max(1) as u64).unwrap_or(0);
        let ok = |i: &usize| !tried.contains(i);
        (0..n)
            .map(|k| (start + k) % n)
            .find(|i| up[*i] && ok(i))
            .or_else(|| (0..n).map(|k| (start + k) % n).find(ok))
            .map(DeploymentIdx::new)
    }
    fn has_admitted(&self, g: GroupId, _: u64) -> bool {
        self.up.get(g.index()).is_some_and(|u| u.iter().any(|&x| x))
    }
    fn fallbacks(&self, g: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        let list = self.fallbacks.get(g.index()).map_or(&[][..], Vec::as_slice);
        list.iter().copied().map(GroupId::new)
    }
    fn deployments(&self, g: GroupId) -> usize {
        self.up.get(g.index()).map_or(0, Vec::len)
    }
}

/// Run one exchange as `data` tells; panics when an invariant breaks.
pub fn check(data: &[u8]) {
    let mut input = data.iter().copied();
    let mut byte = move || input.next().unwrap_or(0);
    // The groups: 1–3, each with 1–4 deployments; fallbacks point at later groups only (as
    // validation requires: no cycles).
    let groups = 1 + usize::from(byte() % 3);
    let mut table = Table {
        up: Vec::new(),
        fallbacks: Vec::new(),
    };
    for g in 0..groups {
        let n = 1 + usize::from(byte() % 4);
        let mask = byte();
        table
            .up
            .push((0..n).map(|i| mask & (1 << i) != 0).collect());
        let fb = byte();
        table
            .fallbacks
            .push(((g + 1)..groups).filter(|f| fb & (1 << f) != 0).collect());
    }
    let retries = usize::from(byte() % 4);
    let mut quota = [0u8; 64];
    for q in &mut quota {
        *q = byte();
    }
    // The tenant and its limits, the body, templates and the route: what the first steps decide on.
    let who = byte();
    let tenant = (who & 1 == 1).then_some(TenantId::new(0));
    let limits = match (who >> 1) % 4 {
        0 => None,
        1 => Some(Err(Refused {
            limit: Limit::Requests,
            retry_after_ns: 1,
        })),
        _ => Some(Ok(())),
    };
    let world = SimWorld {
        table,
        books: Counted::default(),
        quota,
        asked: Cell::new(0),
        tickets: Cell::new(0),
        hedges: byte() & 1 == 1,
        retries,
        allowed: who & 8 == 0,
        limits,
        templates: who & 16 != 0,
        groups_on: who & 32 == 0,
        admitted: Cell::new(false),
    };
    let route = (who & 64 != 0).then_some(Target {
        upstream: UpstreamId::new(50),
        endpoint: EndpointIdx::new(0),
        slot: PoolSlot::new(0),
    });
    let body: &[u8] = match byte() % 8 {
        0 => b"{not json",
        1 => br#"{"messages":[]}"#,
        2 => br#"{"model":"unknown"}"#,
        3 => br#"{"model":"g0","variables":{"a":"b"}}"#,
        4 | 5 => br#"{"model":"g0","stream":true}"#,
        _ => br#"{"model":"g0","max_tokens":3}"#,
    };
    let mut ledger: Ledger<u32> = Ledger::default();
    let mut held_slots = 0usize;
    let mut seed = u64::from(byte());
    let mut rng = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        seed >> 33
    };
    let now = Now::at(1_000_000_000, 1_700_000_000_000_000_000);
    let now_ms = now.unix_ms();
    let mut call = Call::new(tenant, route);
    let mut action = call.step(&world, &mut ledger, now, &mut rng, Event::Body(body));
    let on_body = |e: Error| {
        matches!(
            e,
            Error::BadBody(_) | Error::ModelNotAllowed | Error::RateLimited(_)
        )
    };
    if let Action::Refuse(r) = action {
        // Refused on the body: nothing held; a limit's refusal names the limit.
        if on_body(r.error) {
            assert!(ledger.is_empty(), "a refused body holds nothing");
        }
        assert_eq!(
            r.limited.is_some(),
            matches!(r.error, Error::RateLimited(_))
        );
    }
    if !matches!(action, Action::Refuse(_)) && tenant.is_some() {
        // Past the body: a tenant's call was checked and admitted, its admission held.
        assert!(world.allowed);
        assert_eq!(ledger.tenant().is_some(), world.admitted.get());
        assert!(call.checked().metered);
    }
    if let Action::Fill { .. } = action {
        let filled = if byte() & 1 == 1 {
            Ok(())
        } else {
            Err(TemplateError::UnknownTemplate)
        };
        action = call.step(&world, &mut ledger, now, &mut rng, Event::Filled(filled));
        if filled.is_err() {
            assert!(matches!(action, Action::Refuse(_)));
        }
    }
    if let Action::SendRoute(t) = action {
        assert_eq!(Some(t), route);
        assert!(!world.groups_on, "the route only without groups");
        let ended = Event::Ended {
            retry: byte() & 1 == 1,
            hedge_won: None,
        };
        assert_eq!(
            call.step(&world, &mut ledger, now, &mut rng, ended),
            Action::Done
        );
        action = Action::Done;
    }
    let mut failed_over = 0usize;
    let mut context_moves = 0usize;
    let (mut used, mut failed) = (None, true);
    loop {
        // What the machine asks, performed as the driver does, the world deciding how it ends.
        let (choice, hedge_at) = match action {
            Action::Send {
                choice,
                quota_held,
                hedge,
            } => {
                let held = ledger.deployment() == Some((choice.group, choice.idx));
                assert_eq!(
                    quota_held, held,
                    "the quota held is the chosen deployment's"
                );
                (choice, hedge)
            }
            Action::Refuse(_) | Action::Done => break,
            Action::Fill { .. } | Action::SendRoute(_) => panic!("{action:?} out of order"),
        };
        let (g, i) = (choice.group.index(), choice.idx.index());
        assert!(g < groups);
        assert!(i < world.table.up[g].len());
        let step = byte();
        if step & 2 != 0 {
            ledger.hold_slot(&world, UpstreamId::new(g), FairSlot::NO_TENANT, now_ms);
            held_slots += 1;
        }
        let mut hedge_won = None;
        if let Some((hi, _after)) = hedge_at {
            // A hedge races at another deployment of the attempt's group, never one that
            // failed already.
            assert_ne!(hi, choice.idx, "a hedge at the attempt's own deployment");
            assert!(hi.index() < world.table.up[g].len());
            assert!(
                choice.group != GroupId::new(0) || !call.tried().is_some_and(|t| t.contains(hi)),
                "a hedge at a deployment that failed"
            );
            if step & 8 != 0 {
                // The hedge answered first: its quota and slot are the request's now.
                // (The driver swaps the slots when the race ends, the quotas after it.)
                ledger.release_slot(&world, now_ms);
                if step & 16 != 0 {
                    let u = UpstreamId::new(100 + g);
                    ledger.hold_slot(&world, u, FairSlot::NO_TENANT, now_ms);
                    held_slots += 1;
                }
                let h = (choice.group, hi);
                ledger.hedge_won(&world, Some((h, world.ticket())), now.unix_ns);
                hedge_won = Some(h);
            }
        }
        // The attempt itself, step by step as the driver reports it to `attempt::Try`: a
        // stale pooled connection is replayed at most once, and only a failure the call and
        // the one retry rule allow is handed back.
        let mut attempt = Try::new(choice.retry_ok, step & 4 != 0, true);
        let mut replays = 0;
        let (verdict, status) = loop {
            let b = byte();
            let (reused, kept) = (b & 1 != 0, b & 2 != 0);
            let (what, status) = match (b >> 2) % 8 {
                0 => (
                    Step::Failed(Failed::Connect(Error::UpstreamUnavailable)),
                    502,
                ),
                1 => (
                    Step::Failed(Failed::Write {
                        reused,
                        request_kept: kept,
                    }),
                    502,
                ),
                2 => (Step::Failed(Failed::ClosedBeforeAnyByte { reused }), 502),
                3 => (Step::Failed(Failed::Head(Error::UpstreamTimeout)), 504),
                4 => (Step::Answered { status: 429 }, 429),
                5 => (Step::Answered { status: 503 }, 503),
                6 => (Step::Answered { status: 500 }, 500),
                _ => (Step::Answered { status: 200 }, 200),
            };
            match attempt.step(what) {
                Verdict::Replay => {
                    replays += 1;
                    assert!(replays <= 1, "replayed twice");
                    assert!(step & 4 != 0 && reused, "replayed a request not in hand");
                }
                v => break (v, status),
            }
        };
        let retry = matches!(verdict, Verdict::Fail(Failure::Retry { .. }));
        // An answer relayed so far may instead say the request overflowed the model's context
        // window, when the call has a group to move it to.
        let moved_to = call.context_fallback(&world);
        let context = !retry && verdict == Verdict::Relay && moved_to.is_some() && byte() & 1 == 1;
        if context {
            context_moves += 1;
            failed_over = 0;
            // Invariant: `context_fallback` names a group only for a group's call.
            let named = call.checked().group.expect("a group's call");
            assert!(
                context_moves <= world.table.fallbacks(named).count(),
                "a context-window fallback gone on to twice"
            );
        } else if retry {
            assert!(
                choice.retry_ok,
                "retried an attempt the call did not allow to be"
            );
            assert!(
                attempts::retryable(&attempts::outcome(None, status, None, false)),
                "retried a {status}"
            );
            failed_over += 1;
            assert!(failed_over <= retries, "more retries than the group allows");
        } else if verdict == Verdict::Relay && status == 200 {
            used = (byte() & 1 == 1).then_some(u64::from(byte()));
            failed = false;
        }
        let event = if context {
            Event::ContextExceeded
        } else {
            Event::Ended { retry, hedge_won }
        };
        action = call.step(&world, &mut ledger, now, &mut rng, event);
        if context {
            // The fallback group's first attempt (or one of its own fallbacks', when it has
            // no deployment in rotation), or none left in it.
            match action {
                Action::Send { choice, .. } => {
                    // Invariant: `context` is set only when `moved_to` is.
                    let f = moved_to.expect("a group to move to");
                    assert!(
                        choice.group == f || world.table.fallbacks(f).any(|g| g == choice.group),
                        "moved to {f:?}, sent to {:?}",
                        choice.group
                    );
                }
                Action::Refuse(r) => assert_eq!(r.error, Error::NoDeployment),
                _ => panic!("{action:?} after a context overflow"),
            }
            continue;
        }
        if !retry {
            assert_eq!(action, Action::Done);
            break;
        }
    }
    ledger.settle(&world, now.unix_ns, used, failed);
    assert!(ledger.is_empty());
    // Every ticket settled exactly once; every slot released once.
    let mut settled: Vec<u32> = world.books.settled.borrow().iter().map(|s| s.0).collect();
    settled.sort_unstable();
    assert_eq!(
        settled,
        (1..=world.tickets.get()).collect::<Vec<_>>(),
        "each reservation settled once"
    );
    assert_eq!(
        world.books.released.borrow().len(),
        held_slots,
        "each slot released once"
    );
}

/// The world of one simulated call: the groups, counting books, each deployment quota's
/// answer from the input, numbered tickets for what is taken.
struct SimWorld {
    table: Table,
    books: Counted,
    quota: [u8; 64],
    asked: Cell<usize>,
    tickets: Cell<u32>,
    hedges: bool,
    retries: usize,
    /// The tenant may call "g0".
    allowed: bool,
    /// The tenant's limits: none, refusing, admitting.
    limits: Option<Result<(), Refused>>,
    templates: bool,
    groups_on: bool,
    /// The tenant was admitted (a ticket handed out for it).
    admitted: Cell<bool>,
}

impl SimWorld {
    fn ticket(&self) -> u32 {
        self.tickets.set(self.tickets.get() + 1);
        self.tickets.get()
    }
}

impl Groups for SimWorld {
    fn pick(
        &self,
        g: GroupId,
        now_ns: u64,
        rng: &mut dyn FnMut() -> u64,
        tried: &[usize],
    ) -> Option<DeploymentIdx> {
        self.table.pick(g, now_ns, rng, tried)
    }
    fn has_admitted(&self, g: GroupId, now_ns: u64) -> bool {
        self.table.has_admitted(g, now_ns)
    }
    fn fallbacks(&self, g: GroupId) -> impl Iterator<Item = GroupId> + '_ {
        self.table.fallbacks(g)
    }
    fn deployments(&self, g: GroupId) -> usize {
        self.table.deployments(g)
    }
}

impl Books for SimWorld {
    type Admission = u32;
    fn settle_tenant(&self, t: TenantId, adm: u32, now: u64, used: Option<u64>, failed: bool) {
        self.books.settle_tenant(t, adm, now, used, failed);
    }
    fn settle_deployment(
        &self,
        g: GroupId,
        idx: DeploymentIdx,
        adm: u32,
        now: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        self.books.settle_deployment(g, idx, adm, now, used, failed);
    }
    fn release_slot(&self, upstream: UpstreamId, fair: FairSlot, now_ms: u64) {
        self.books.release_slot(upstream, fair, now_ms);
    }
}

impl World for SimWorld {
    fn group_of(&self, model: &str) -> Option<GroupId> {
        (self.groups_on && model == "g0").then_some(GroupId::new(0))
    }
    fn has_groups(&self) -> bool {
        self.groups_on
    }
    fn has_templates(&self) -> bool {
        self.templates
    }
    fn context_window_fallback(&self, g: GroupId, nth: usize) -> Option<GroupId> {
        self.table.fallbacks(g).nth(nth)
    }
    fn allows(&self, _: TenantId, _: Option<usize>, model: &str) -> bool {
        self.allowed && model != "nobody"
    }
    fn default_max_tokens(&self, _: Option<TenantId>) -> u64 {
        100
    }
    fn admit(
        &self,
        _: TenantId,
        _: Option<usize>,
        _: u64,
        _: u64,
        _: u64,
    ) -> Result<Option<u32>, Refused> {
        match self.limits {
            None => Ok(None),
            Some(Err(r)) => Err(r),
            Some(Ok(())) => {
                assert!(!self.admitted.replace(true), "a call admitted twice");
                Ok(Some(self.ticket()))
            }
        }
    }
    fn retries(&self, _: GroupId) -> usize {
        self.retries
    }
    fn take_quota(&self, _: GroupId, _: DeploymentIdx, _: u64, _: u64) -> Result<Option<u32>, ()> {
        let n = self.asked.get();
        self.asked.set(n + 1);
        match self.quota[n % self.quota.len()] % 4 {
            0 => Err(()),
            1 => Ok(None),
            _ => Ok(Some(self.ticket())),
        }
    }
    fn hedge_after(&self, _: GroupId) -> Option<Duration> {
        self.hedges.then_some(Duration::from_millis(1))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn every_reservation_is_settled_once_whatever_happens(data in proptest::collection::vec(any::<u8>(), 0..96)) {
            super::check(&data);
        }
    }

    #[test]
    fn edge_inputs() {
        super::check(&[]);
        super::check(&[0xff; 200]);
        super::check(&[2, 3, 0xff, 0, 3, 0xff, 0, 3, 1, 1, 3]);
    }
}
