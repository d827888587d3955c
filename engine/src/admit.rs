//! Admission: hold a tenant's request to its limits across every shard, without locks.
//!
//! The limits live in the tenant's shared cells in the region (`control::shm::TenantCells`):
//! requests and tokens per minute as GCRA buckets (`crate::limit::Gcra`), reached through this
//! shard's leases so most admissions touch no shared cache line; requests in flight as one
//! shared counter; the token budget as a fixed-window counter. A request reserves its token
//! estimate when admitted and settles the real count from the upstream's `usage` when it ends
//! (or gives the reservation back when it failed or the client left). See
//! docs/decisions/0005-tenant-limits-without-locks.md for the bounds. In a fleet (decision
//! 0013) each limit also takes from this instance's share of the fleet's (`TenantLimits.fleet`):
//! credit for the rates and budgets, a cap for requests in flight.

use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use crate::control::shm::{CreditCells, FleetCells, TenantCells};
use crate::error::Limit;
use crate::limit::{lease_units, Budget, Concurrency, Credit, Gcra, Lease, Reservation};
use crate::tenant::TenantConfig;

/// Leases older than this go back to the shared buckets (on the shard's timer), so units a
/// shard holds but does not use are stranded for at most this long.
pub const LEASE_AGE_NS_MAX: u64 = 1_000_000_000;

/// One tenant's state on one shard: its leases. Kept by tenant name across config changes.
#[derive(Debug, Default)]
pub struct TenantLocal {
    rpm: Lease,
    tpm: Lease,
}

/// Every tenant's local state on this shard, by name.
#[derive(Debug, Default)]
pub struct Locals {
    by_name: std::cell::RefCell<HashMap<String, Rc<TenantLocal>>>,
}

impl Locals {
    pub fn get(&self, name: &str) -> Rc<TenantLocal> {
        self.by_name
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// A tenant as one snapshot sees it: config-derived limiters plus the shared and local state.
#[derive(Debug)]
pub struct TenantLimits {
    pub rpm: Option<Gcra>,
    pub tpm: Option<Gcra>,
    pub max_concurrency: Option<u64>,
    pub budget: Option<Budget>,
    /// The spend budget, microdollars per window.
    pub budget_usd: Option<Budget>,
    pub cells: Option<&'static TenantCells>,
    /// In a fleet: this instance's share of the fleet's rpm, tpm, budgets and requests in
    /// flight (decision 0013).
    pub fleet: Option<&'static FleetCells>,
    pub local: Rc<TenantLocal>,
}

/// A USD budget of `uusd` per `window`, less the spend `carried` in while it counts.
fn usd_budget(
    uusd: u64,
    window: std::time::Duration,
    carried: Option<&crate::tenant::Carried>,
) -> Budget {
    let b = Budget::new(uusd, u64::try_from(window.as_nanos()).unwrap_or(u64::MAX));
    match carried {
        Some(c) => b.with_carried(c.uusd, c.until_unix_ms.saturating_mul(1_000_000)),
        None => b,
    }
}

/// A limit's fleet credit, as the limiter takes it.
fn credit(c: &CreditCells) -> Credit<'_> {
    Credit {
        credit: &c.credit,
        debt: &c.debt,
        used: &c.used,
        overdraft_max: &c.overdraft_max,
        wanted: &c.wanted,
        wanted_max: &c.wanted_max,
    }
}

impl TenantLimits {
    pub fn new(
        t: &TenantConfig,
        cells: Option<&'static TenantCells>,
        local: Rc<TenantLocal>,
    ) -> Self {
        Self {
            rpm: t.rpm.map(Gcra::per_minute),
            tpm: t.tpm.map(Gcra::per_minute),
            max_concurrency: t.max_concurrency,
            budget: t.budget.map(|b| {
                Budget::new(
                    b.tokens,
                    u64::try_from(b.window.as_nanos()).unwrap_or(u64::MAX),
                )
            }),
            budget_usd: t
                .budget_usd
                .map(|b| usd_budget(b.uusd, b.window, b.carried.as_ref())),
            cells,
            fleet: None,
            local,
        }
    }

    /// A key's own limits (`KeyLimits`), with `window` for its USD budget (its tenant's
    /// budget window).
    pub fn key(
        k: &crate::tenant::KeyLimits,
        window: std::time::Duration,
        cells: Option<&'static TenantCells>,
        local: Rc<TenantLocal>,
    ) -> Self {
        Self {
            rpm: k.rpm.map(Gcra::per_minute),
            tpm: k.tpm.map(Gcra::per_minute),
            max_concurrency: k.max_concurrency,
            budget: None,
            budget_usd: k
                .budget_uusd
                .map(|u| usd_budget(u, window, k.carried.as_ref())),
            cells,
            fleet: None,
            local,
        }
    }

    /// The same limits on `fleet`'s credit too (an engine in a fleet).
    #[must_use]
    pub fn with_fleet(mut self, fleet: Option<&'static FleetCells>) -> Self {
        self.fleet = fleet;
        self
    }

    /// Whether tenants `a` and `b` make the same limits (the settings [`TenantLimits::new`]
    /// reads, and the name its cells and leases are found by): a snapshot may then keep `a`'s.
    pub fn same_inputs(a: &TenantConfig, b: &TenantConfig) -> bool {
        a.name == b.name
            && a.rpm == b.rpm
            && a.tpm == b.tpm
            && a.max_concurrency == b.max_concurrency
            && a.budget == b.budget
            && a.budget_usd == b.budget_usd
    }

    /// Requests- and tokens-per-minute limits alone (a model deployment's quota).
    pub fn rates(
        rpm: Option<u64>,
        tpm: Option<u64>,
        cells: Option<&'static TenantCells>,
        local: Rc<TenantLocal>,
    ) -> Self {
        Self {
            rpm: rpm.map(Gcra::per_minute),
            tpm: tpm.map(Gcra::per_minute),
            max_concurrency: None,
            budget: None,
            budget_usd: None,
            cells,
            fleet: None,
            local,
        }
    }

    /// The tokens request `adm` may use in all, under the budget: what it reserved plus what is
    /// left in the window (None without a budget).
    pub fn budget_allowance(&self, adm: &Admitted, now_ns: u64) -> Option<u64> {
        let (b, c) = (self.budget.as_ref()?, self.cells?);
        let reserved = adm.budget.map_or(0, |r| r.tokens());
        Some(reserved.saturating_add(b.remaining(&c.budget, now_ns)))
    }

    /// The microdollars request `adm` may spend in all under the USD budget: what it reserved
    /// plus what is left in the window (None without one).
    pub fn budget_usd_allowance(&self, adm: &Admitted, now_ns: u64) -> Option<u64> {
        self.usd_allowance(adm.usd, now_ns)
    }

    /// [`TenantLimits::budget_usd_allowance`] for what a key's part of a request reserved.
    pub fn key_usd_allowance(&self, part: &KeyPart, now_ns: u64) -> Option<u64> {
        self.usd_allowance(part.usd, now_ns)
    }

    fn usd_allowance(&self, reserved: Option<Reservation>, now_ns: u64) -> Option<u64> {
        let (b, c) = (self.budget_usd.as_ref()?, self.cells?);
        let reserved = reserved.map_or(0, |r| r.tokens());
        Some(reserved.saturating_add(b.remaining(&c.budget_usd, now_ns)))
    }

    /// Give back leases held longer than [`LEASE_AGE_NS_MAX`] (the shard's timer calls this).
    pub fn return_stale(&self, now_ns: u64) {
        let Some(c) = self.cells else { return };
        if let Some(g) = &self.rpm {
            let fleet = self.fleet.map(|f| credit(&f.rpm));
            self.local
                .rpm
                .return_stale_in(g, &c.rpm_tat, fleet, now_ns, LEASE_AGE_NS_MAX);
        }
        if let Some(g) = &self.tpm {
            let fleet = self.fleet.map(|f| credit(&f.tpm));
            self.local
                .tpm
                .return_stale_in(g, &c.tpm_tat, fleet, now_ns, LEASE_AGE_NS_MAX);
        }
    }
}

/// What an admitted request holds until it ends. Dropping it without [`Admitted::finish`]
/// would leak a concurrency slot, so the connection driver always finishes it.
#[derive(Debug)]
pub struct Admitted {
    concurrency: bool,
    /// Tokens taken from the tokens-per-minute limit.
    tokens: u64,
    estimate: u64,
    budget: Option<Reservation>,
    /// Microdollars reserved under the USD budget, and the request's cost once known.
    usd: Option<Reservation>,
    cost_uusd: Cell<Option<u64>>,
    /// What the request's key took from the key's own limits (an index into the snapshot's
    /// key limits), settled with the tenant's.
    key: Option<(usize, KeyPart)>,
    done: Cell<bool>,
}

/// What a request took from its key's own limits: a slot in flight (with `max_concurrency`),
/// tokens and a USD reservation.
#[derive(Debug, Clone, Copy)]
pub struct KeyPart {
    /// A slot of the key's requests in flight was taken.
    concurrency: bool,
    tokens: u64,
    usd: Option<Reservation>,
}

/// Why a request was refused, and when to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub limit: Limit,
    /// ns until a retry could succeed (`u64::MAX`: not within the limits at all).
    pub retry_after_ns: u64,
}

/// Admit one request estimated at `tokens` tokens (0 for requests that use none) and
/// `usd_uusd` microdollars (its model's price; 0 when unpriced), or refuse it changing nothing.
/// Order: requests in flight, requests per minute, tokens per minute, token budget, USD
/// budget; whatever an earlier check took is given back when a later one refuses.
pub fn admit(
    t: &TenantLimits,
    now_ns: u64,
    tokens: u64,
    usd_uusd: u64,
) -> Result<Admitted, Refused> {
    let Some(c) = t.cells else {
        // The region's tenant table was full: no shared cells, so no limits can hold. The
        // config was accepted with a warning; admit.
        return Ok(Admitted {
            concurrency: false,
            tokens: 0,
            estimate: tokens,
            budget: None,
            usd: None,
            cost_uusd: Cell::new(None),
            key: None,
            done: Cell::new(false),
        });
    };
    let mut adm = Admitted {
        concurrency: false,
        tokens: 0,
        estimate: tokens,
        budget: None,
        usd: None,
        cost_uusd: Cell::new(None),
        key: None,
        done: Cell::new(false),
    };
    if let Some(max) = t.max_concurrency {
        let admitted = match t.fleet {
            // In a fleet: under this instance's share too (decision 0013); a refusal for want
            // of a share is demand the fleet agent asks the fleet for at its next sync.
            Some(f) => {
                let got = Concurrency::acquire_capped(&c.inflight, max, &f.concurrency.cap);
                if got == Err(true) {
                    f.concurrency.refused.fetch_add(1, Ordering::Relaxed);
                }
                got.is_ok()
            }
            None => Concurrency::acquire(&c.inflight, max),
        };
        if !admitted {
            return Err(Refused {
                limit: Limit::Concurrency,
                retry_after_ns: 1_000_000_000,
            });
        }
        adm.concurrency = true;
    }
    // Without max_concurrency nothing is counted in flight: that shared counter is the one
    // cross-core write per request a tenant's limits cost, paid only when asked for.
    let undo = |adm: &Admitted| {
        if adm.concurrency {
            Concurrency::release(&c.inflight);
        }
    };
    if let Some(g) = &t.rpm {
        let fleet = t.fleet.map(|f| credit(&f.rpm));
        if let Err(wait) =
            t.local
                .rpm
                .take_in(g, &c.rpm_tat, fleet, now_ns, 1, lease_units(g.limit()))
        {
            undo(&adm);
            return Err(Refused {
                limit: Limit::Requests,
                retry_after_ns: wait,
            });
        }
    }
    if tokens > 0 {
        if let Some(g) = &t.tpm {
            let fleet = t.fleet.map(|f| credit(&f.tpm));
            if let Err(wait) =
                t.local
                    .tpm
                    .take_in(g, &c.tpm_tat, fleet, now_ns, tokens, lease_units(g.limit()))
            {
                if let Some(r) = &t.rpm {
                    r.give_back(&c.rpm_tat, now_ns, 1);
                }
                undo(&adm);
                return Err(Refused {
                    limit: Limit::Tokens,
                    retry_after_ns: wait,
                });
            }
            adm.tokens = tokens;
        }
        if let Some(b) = &t.budget {
            let fleet = t.fleet.map(|f| credit(&f.budget));
            match b.reserve_in(&c.budget, fleet, now_ns, tokens) {
                Ok(r) => adm.budget = Some(r),
                Err(wait) => {
                    if let Some(r) = &t.rpm {
                        r.give_back(&c.rpm_tat, now_ns, 1);
                    }
                    if let Some(g) = &t.tpm {
                        g.give_back(&c.tpm_tat, now_ns, adm.tokens);
                    }
                    undo(&adm);
                    return Err(Refused {
                        limit: Limit::Budget,
                        retry_after_ns: wait,
                    });
                }
            }
        }
    }
    if let Some(b) = &t.budget_usd {
        let fleet = t.fleet.map(|f| credit(&f.budget_usd));
        match b.reserve_in(&c.budget_usd, fleet, now_ns, usd_uusd) {
            Ok(r) => adm.usd = Some(r),
            Err(wait) => {
                if let Some(r) = &t.rpm {
                    r.give_back(&c.rpm_tat, now_ns, 1);
                }
                if let Some(g) = &t.tpm {
                    g.give_back(&c.tpm_tat, now_ns, adm.tokens);
                }
                if let (Some(b), Some(r)) = (&t.budget, adm.budget) {
                    b.release_in(&c.budget, t.fleet.map(|f| credit(&f.budget)), now_ns, r);
                }
                undo(&adm);
                return Err(Refused {
                    limit: Limit::BudgetUsd,
                    retry_after_ns: wait,
                });
            }
        }
    }
    Ok(adm)
}

impl Admitted {
    /// The token estimate it was admitted with (0 for requests that use none), whatever
    /// limits took it: a request's cost in the fair queues.
    pub fn estimate(&self) -> u64 {
        self.estimate
    }

    /// What the request cost, microdollars, once its usage is known and its model priced: the
    /// USD budget is settled on it (without it, a failed request gives its reservation back
    /// and another keeps it charged, as tokens do).
    pub fn set_cost_uusd(&self, uusd: u64) {
        self.cost_uusd.set(Some(uusd));
    }

    /// Hold what the request's key took (`key`: its index, `adm`: its admission against the
    /// key's limits), to settle with this admission.
    pub fn attach_key(&mut self, key: usize, adm: Admitted) {
        adm.done.set(true);
        self.key = Some((
            key,
            KeyPart {
                concurrency: adm.concurrency,
                tokens: adm.tokens,
                usd: adm.usd,
            },
        ));
    }

    /// The key's part, for the snapshot to settle against the key's limits.
    pub fn key_part(&self) -> Option<(usize, KeyPart)> {
        self.key
    }

    /// Settle the key's part against `k`, the key's limits, as [`Admitted::finish`] settles
    /// the tenant's (`used` tokens, the request's cost when known).
    pub fn finish_key(
        &self,
        part: KeyPart,
        k: &TenantLimits,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        let Some(c) = k.cells else { return };
        if part.concurrency {
            Concurrency::release(&c.inflight);
        }
        let actual = actual_tokens(used, failed, part.tokens);
        settle_tokens(k, c, now_ns, part.tokens, actual);
        settle_usd(k, c, now_ns, part.usd, self.cost_uusd.get(), failed);
    }

    /// End the request: release its slot in flight and settle its tokens. `used`: the tokens
    /// the upstream reported (None: no usage seen; the reservation is given back when the
    /// request `failed` — the client left or the upstream failed — and kept as charged
    /// otherwise, since work was done that we could not count).
    pub fn finish(&self, t: &TenantLimits, now_ns: u64, used: Option<u64>, failed: bool) {
        if self.done.replace(true) {
            return;
        }
        let Some(c) = t.cells else { return };
        if self.concurrency {
            Concurrency::release(&c.inflight);
        }
        let actual = actual_tokens(used, failed, self.tokens);
        settle_tokens(t, c, now_ns, self.tokens, actual);
        if let (Some(b), Some(r)) = (&t.budget, self.budget) {
            let fleet = t.fleet.map(|f| credit(&f.budget));
            if used.is_none() && failed {
                b.release_in(&c.budget, fleet, now_ns, r);
            } else {
                b.settle_in(&c.budget, fleet, now_ns, r, actual);
            }
        }
        settle_usd(t, c, now_ns, self.usd, self.cost_uusd.get(), failed);
    }
}

/// The tokens a request is charged: what the upstream reported; without a report, nothing
/// when it failed and what it took when it did not (work was done that could not be counted).
fn actual_tokens(used: Option<u64>, failed: bool, taken: u64) -> u64 {
    match used {
        Some(u) => u,
        None if failed => 0,
        None => taken,
    }
}

/// Settle the tokens-per-minute bucket: `taken` at admission, `actual` used.
fn settle_tokens(t: &TenantLimits, c: &TenantCells, now_ns: u64, taken: u64, actual: u64) {
    if let Some(g) = &t.tpm {
        if taken > 0 || actual > 0 {
            let fleet = t.fleet.map(|f| credit(&f.tpm));
            t.local.tpm.settle_in(
                g,
                &c.tpm_tat,
                fleet,
                now_ns,
                (taken, actual),
                lease_units(g.limit()),
            );
        }
    }
}

/// Settle the USD budget's reservation `r` on the request's `cost` (µ$); without one, give it
/// back when the request failed and keep it charged when it did not.
fn settle_usd(
    t: &TenantLimits,
    c: &TenantCells,
    now_ns: u64,
    r: Option<Reservation>,
    cost: Option<u64>,
    failed: bool,
) {
    if let (Some(b), Some(r)) = (&t.budget_usd, r) {
        let fleet = t.fleet.map(|f| credit(&f.budget_usd));
        match cost {
            Some(cost) => b.settle_in(&c.budget_usd, fleet, now_ns, r, cost),
            None if failed => b.release_in(&c.budget_usd, fleet, now_ns, r),
            None => {}
        }
    }
}

/// Append the `x-ratelimit-*` header lines (OpenAI's names) for tenant `t` to `out`.
pub fn write_rate_headers(t: &TenantLimits, now_ns: u64, out: &mut Vec<u8>) {
    let Some(c) = t.cells else { return };
    for (g, tat, what) in [
        (&t.rpm, &c.rpm_tat, "requests"),
        (&t.tpm, &c.tpm_tat, "tokens"),
    ] {
        let Some(g) = g else { continue };
        let held = if what == "requests" {
            t.local.rpm.held()
        } else {
            t.local.tpm.held()
        };
        let remaining = g.remaining(tat, now_ns).saturating_add(held).min(g.limit());
        line(out, "x-ratelimit-limit-", what, g.limit());
        line(out, "x-ratelimit-remaining-", what, remaining);
        out.extend_from_slice(b"x-ratelimit-reset-");
        out.extend_from_slice(what.as_bytes());
        out.extend_from_slice(b": ");
        write_duration(out, g.reset_after_ns(tat, now_ns));
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut Vec<u8>, prefix: &str, what: &str, v: u64) {
    out.extend_from_slice(prefix.as_bytes());
    out.extend_from_slice(what.as_bytes());
    out.extend_from_slice(b": ");
    crate::http::write_decimal(out, v);
    out.extend_from_slice(b"\r\n");
}

/// OpenAI's reset format: `1s`, `6m0s`, `250ms`.
fn write_duration(out: &mut Vec<u8>, ns: u64) {
    let ms = ns.div_ceil(1_000_000);
    if ms < 1000 {
        crate::http::write_decimal(out, ms);
        out.extend_from_slice(b"ms");
        return;
    }
    let s = ms.div_ceil(1000);
    if s >= 60 {
        crate::http::write_decimal(out, s / 60);
        out.push(b'm');
    }
    crate::http::write_decimal(out, s % 60);
    out.push(b's');
}

/// Header lines of a 429: `retry-after` (whole seconds, at least 1) and the rate headers.
pub fn write_refusal_headers(t: &TenantLimits, r: &Refused, now_ns: u64, out: &mut Vec<u8>) {
    let secs = if r.retry_after_ns == u64::MAX {
        // Never within the limit as configured (a request larger than the bucket): say a
        // minute, the bucket's period, rather than forever.
        60
    } else {
        r.retry_after_ns.div_ceil(1_000_000_000).max(1)
    };
    out.extend_from_slice(b"retry-after: ");
    crate::http::write_decimal(out, secs);
    out.extend_from_slice(b"\r\n");
    write_rate_headers(t, now_ns, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::shm::Region;
    use crate::tenant::{BudgetUsd, Models, TenantConfig};
    use std::time::Duration;

    fn limits(name: &str, budget_usd: Option<BudgetUsd>) -> TenantLimits {
        let region: &'static Region =
            Box::leak(Box::new(Region::anonymous(1).expect("an anonymous region")));
        let t = TenantConfig {
            name: name.into(),
            keys: Vec::new(),
            key_limits: Vec::new(),
            suspended: false,
            models: Models::All,
            rpm: Some(1000),
            tpm: None,
            max_concurrency: None,
            connections_max: None,
            budget: None,
            budget_usd,
            weight: 1,
            default_max_tokens: 100,
        };
        TenantLimits::new(&t, region.tenant(name), Rc::default())
    }

    #[test]
    fn a_usd_budget_reserves_the_estimate_and_settles_the_cost() {
        let day = Duration::from_secs(86_400);
        let t = limits(
            "a",
            Some(BudgetUsd {
                uusd: 1_000,
                window: day,
                carried: None,
            }),
        );
        let now = 1_000_000_000_000;
        // 600 µ$ reserved: a second request estimated at 600 does not fit in 1,000.
        let a = admit(&t, now, 10, 600).expect("first");
        let refused = admit(&t, now, 10, 600).expect_err("over the budget");
        assert_eq!(refused.limit, Limit::BudgetUsd);
        // The first cost 100 µ$: settled on it, 900 are left and the second fits.
        a.set_cost_uusd(100);
        a.finish(&t, now, Some(20), false);
        assert_eq!(
            t.budget_usd_allowance(&admit(&t, now, 10, 0).expect("fits"), now),
            Some(900)
        );
        let b = admit(&t, now, 10, 600).expect("second");
        // A failed request without a cost gives its reservation back.
        b.finish(&t, now, None, true);
        let c = admit(&t, now, 10, 900).expect("the whole rest");
        // One that succeeded without a known cost keeps its estimate charged.
        c.finish(&t, now, None, false);
        assert_eq!(
            admit(&t, now, 10, 1).expect_err("spent").limit,
            Limit::BudgetUsd
        );
        // The refusal gave back what earlier checks took: the rpm bucket is not drained by it.
        assert!(t.rpm.is_some());
        // Next window: whole again.
        let next = now + u64::try_from(day.as_nanos()).expect("fits");
        admit(&t, next, 10, 1_000).expect("a new window");
    }

    #[test]
    fn a_keys_part_settles_on_the_requests_cost() {
        let day = Duration::from_secs(86_400);
        let tenant = limits("t", None);
        let key = limits(
            "\u{1}key/x",
            Some(BudgetUsd {
                uusd: 1_000,
                window: day,
                carried: None,
            }),
        );
        let now = 1_000_000_000_000;
        let mut adm = admit(&tenant, now, 10, 700).expect("tenant");
        adm.attach_key(0, admit(&key, now, 10, 700).expect("key"));
        // The key's 700 µ$ are held: another 700 does not fit its 1,000.
        assert_eq!(
            admit(&key, now, 10, 700).expect_err("held").limit,
            Limit::BudgetUsd
        );
        // Settled on the cost, 200 µ$: 800 left for the key.
        adm.set_cost_uusd(200);
        let (k, part) = adm.key_part().expect("a key part");
        assert_eq!(k, 0);
        adm.finish_key(part, &key, now, Some(20), false);
        adm.finish(&tenant, now, Some(20), false);
        let probe = admit(&key, now, 10, 0).expect("fits");
        assert_eq!(key.budget_usd_allowance(&probe, now), Some(800));
    }

    #[test]
    fn a_keys_own_requests_in_flight_and_carried_spend_hold_within_its_tenants() {
        let region: &'static Region =
            Box::leak(Box::new(Region::anonymous(1).expect("an anonymous region")));
        let tenant = limits("t", None);
        let now = 1_000_000_000_000;
        // One request in flight at once, and a $1 budget of which 0.9 was spent before,
        // counting for the next hour.
        let k = crate::tenant::KeyLimits {
            rpm: None,
            tpm: None,
            max_concurrency: Some(1),
            budget_uusd: Some(1_000_000),
            carried: Some(crate::tenant::Carried {
                uusd: 900_000,
                until_unix_ms: now / 1_000_000 + 3_600_000,
            }),
            models: None,
            lineage: [1; crate::tenant::KEY_ID_BYTES],
        };
        let key = TenantLimits::key(
            &k,
            Duration::from_secs(30 * 86_400),
            region.tenant("\u{1}key/k"),
            Rc::default(),
        );
        // 200 µ$ more than the carried spend leaves: refused for the budget.
        assert_eq!(
            admit(&key, now, 10, 200_000).expect_err("over").limit,
            Limit::BudgetUsd
        );
        let mut adm = admit(&tenant, now, 10, 0).expect("tenant");
        adm.attach_key(
            0,
            admit(&key, now, 10, 50_000).expect("fits the 100,000 left"),
        );
        assert_eq!(
            admit(&key, now, 10, 0).expect_err("one in flight").limit,
            Limit::Concurrency
        );
        // Ended: its slot is free again.
        let (_, part) = adm.key_part().expect("a key part");
        adm.finish_key(part, &key, now, Some(20), false);
        adm.finish(&tenant, now, Some(20), false);
        assert!(admit(&key, now, 10, 0).is_ok());
    }

    #[test]
    fn in_a_fleet_requests_in_flight_are_held_to_the_instances_share_too() {
        let region: &'static Region =
            Box::leak(Box::new(Region::anonymous(1).expect("an anonymous region")));
        region
            .header()
            .fleet
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let mut t = TenantConfig {
            name: "c".into(),
            keys: Vec::new(),
            key_limits: Vec::new(),
            suspended: false,
            models: Models::All,
            rpm: None,
            tpm: None,
            max_concurrency: Some(4),
            connections_max: None,
            budget: None,
            budget_usd: None,
            weight: 1,
            default_max_tokens: 100,
        };
        let (slot, cells) = region.tenant_slot("c").expect("a slot");
        let fleet = region.fleet(slot).expect("in a fleet");
        let limits = TenantLimits::new(&t, Some(cells), Rc::default()).with_fleet(Some(fleet));
        // A share of 2 slots (stored plus one): the third request is refused, and counted as
        // demand for the agent.
        fleet.concurrency.cap.store(3, Ordering::Relaxed);
        let a = admit(&limits, 1, 0, 0).expect("first");
        let b = admit(&limits, 1, 0, 0).expect("second");
        let refused = admit(&limits, 1, 0, 0).expect_err("over the share");
        assert_eq!(refused.limit, Limit::Concurrency);
        assert_eq!(fleet.concurrency.refused.load(Ordering::Relaxed), 1);
        a.finish(&limits, 1, None, false);
        let c = admit(&limits, 1, 0, 0).expect("a slot came back");
        // A share above the limit: the limit holds, and a refusal by it is not the share's.
        fleet.concurrency.cap.store(100, Ordering::Relaxed);
        let d = admit(&limits, 1, 0, 0).expect("third");
        let e = admit(&limits, 1, 0, 0).expect("fourth");
        assert!(admit(&limits, 1, 0, 0).is_err());
        assert_eq!(fleet.concurrency.refused.load(Ordering::Relaxed), 1);
        for adm in [b, c, d, e] {
            adm.finish(&limits, 1, None, false);
        }
        assert_eq!(cells.inflight.load(Ordering::Relaxed), 0);
        // Without a fleet the share is not looked at.
        t.name = "solo".into();
        let solo = TenantLimits::new(&t, region.tenant("solo"), Rc::default());
        let held: Vec<_> = (0..4)
            .map(|_| admit(&solo, 1, 0, 0).expect("up to the limit"))
            .collect();
        assert!(admit(&solo, 1, 0, 0).is_err());
        for adm in held {
            adm.finish(&solo, 1, None, false);
        }
    }

    #[test]
    fn without_a_usd_budget_the_estimate_is_not_held() {
        let t = limits("b", None);
        let a = admit(&t, 1, 10, u64::MAX).expect("no budget");
        assert_eq!(t.budget_usd_allowance(&a, 1), None);
    }

    #[test]
    fn durations_read_like_openai() {
        let f = |ns| {
            let mut v = Vec::new();
            write_duration(&mut v, ns);
            String::from_utf8(v).expect("ascii")
        };
        assert_eq!(f(0), "0ms");
        assert_eq!(f(250_000_000), "250ms");
        assert_eq!(f(1_000_000_000), "1s");
        assert_eq!(f(360_000_000_000), "6m0s");
        assert_eq!(f(61_500_000_000), "1m2s");
    }
}
