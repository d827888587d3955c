//! Tenant limits that hold across shards and processes without a lock: requests and tokens per
//! minute ([`Gcra`], usually through a shard's [`Lease`]), requests in flight ([`Concurrency`])
//! and a hard token budget per fixed window ([`Budget`]).
//!
//! I/O-free: every function takes `now_ns` (nanoseconds on a clock every process shares; the
//! caller passes unix-epoch ns) and the `&AtomicU64` cells a limit lives in. In production the
//! cells are words of the shared-memory region (one slot per tenant, see decision 0005); in
//! tests they are plain atomics. Nothing here locks, allocates or panics, on any input: all
//! arithmetic saturates or is done in `u128`, and every bit pattern of a cell is a valid state:
//! a zeroed cell is a fresh limit (full bucket, nothing in flight, no budget used), and any
//! other value reads as some state of the limit (a TAT far ahead as debt, a count at or above
//! the maximum as full), never as a panic or an overflow.
//!
//! # GCRA: a token bucket in one word
//! A per-minute limit `L` is a token bucket of capacity `L` refilled at `L / 60` units per
//! second, kept as GCRA's *theoretical arrival time* (TAT, ns) in one `AtomicU64`:
//!
//! - one unit costs `60 s / L` of the clock; `n` units cost `ceil(n · 60e9 / L)` ns;
//! - the bucket holds `(now + 60 s − max(TAT, now)) · L / 60 s` units: full (`L`) when
//!   `TAT ≤ now`, empty when `TAT = now + 60 s`, in debt (negative) beyond that;
//! - [`Gcra::try_take`] sets `TAT = max(TAT, now) + cost(n)` when that is `≤ now + 60 s`,
//!   and otherwise changes nothing and returns the ns until `n` units will be there;
//! - [`Gcra::charge`] does the same unconditionally (it may put the bucket in debt), and
//!   [`Gcra::give_back`] lowers `TAT` by `floor(n · 60e9 / L)`, never below `now` (full).
//!
//! So `try_take(n)` succeeds exactly when `n ≤ remaining()`. Rounding: a take or charge rounds
//! its cost *up* to a whole ns and a give-back rounds *down*, so the bucket never holds more
//! than the exact one; it may hold less by under 1 ns of refill per operation since it was last
//! full (`L / 60e9` units: below one unit for any `L ≤ 6e10`, and below one unit over 1,000
//! operations for `L ≤ 6e7` per minute). Limits of more than 6e10 per minute (1e9 per second)
//! still never admit more than the limit, but each operation costs at least 1 ns.
//!
//! `Gcra::per_minute(0)` admits nothing (every take is refused with [`RETRY_NEVER_NS`]);
//! "unlimited" is the caller's `Option<Gcra>::None`. A take of more than `L` units can never
//! succeed and is refused with [`RETRY_NEVER_NS`] too. A take of 0 units succeeds unless the
//! bucket is in debt.
//!
//! # Leases: admission without touching the shared line
//! A shard takes units from the shared bucket in batches of [`lease_units`] (`max(1, L /
//! 1000)`) into its [`Lease`] (plain `Cell`s, not `Sync`) and admits from it locally. Units are
//! charged to the bucket when leased, so admitted work never exceeds what the bucket allows;
//! the cost is units stranded in leases: a lease never holds more than `lease_units` (≤ 0.1 %
//! of `L`, or one unit), they are returned by [`Lease::return_stale`] on the shard's timer,
//! and [`Lease::settle`] corrects an estimate through the lease too, so a request touches the
//! shared cell only when its shard's lease runs out (about once per `lease_units` units).
//!
//! # Concurrency
//! One counter per tenant: [`Concurrency::acquire`] is a `fetch_add` undone when the old value
//! was already at the maximum, [`Concurrency::release`] a decrement that stops at 0.
//!
//! In a fleet the maximum is also this instance's share of the fleet's, in a cap cell the fleet
//! agent writes ([`Concurrency::acquire_capped`]). The agent lowers the cap and then reads the
//! count ([`Concurrency::cap_then_count`]); a shard counts its request and then reads the cap.
//! Both pairs are `SeqCst`, so of a store and a load on each side at least one sees the other's
//! write (the store-buffering pattern): a request admitted under the old cap is in the count the
//! agent reads, and one the agent's read misses was checked against the new cap. The agent thus
//! knows a bound on what the instance may have in flight, `max(count read, new cap)`, which is
//! what it reports to the fleet. On x86 the `SeqCst` load is a plain load and the `fetch_add` a
//! locked add either way.
//!
//! # Budgets: a hard cap per fixed window
//! At most `budget` tokens per window of `window_ns`, windows aligned to the clock's epoch
//! (window index = `now_ns / window_ns`). One word packs the window (high 16 bits: the index
//! mod 65,535, plus 1, so that 0 means "no window yet" and a zeroed cell is fresh) and the
//! tokens used (low 48 bits); an operation that finds an older window there starts the
//! current one at 0 used. [`Budget::reserve`] admits an estimate (compare-and-swap,
//! so concurrent first requests cannot overspend), [`Budget::settle`] corrects it to the
//! upstream's usage:
//!
//! - in the reservation's window, `used += actual − reserved` (a refund when negative);
//! - after the window rolled over, only the excess `max(actual − reserved, 0)` is charged, to
//!   the current window: the old window already counted `reserved`, so every token is counted
//!   once, and a refund to a closed window would change nothing.
//!
//! A clock that went back (or another process's clock that runs ahead) must not reopen a
//! window: a stored window up to `max(1, ceil(60 s / window_ns))` windows (at most 256) ahead of
//! the caller's is taken as the current one. A clock that goes back further starts a new
//! window, and a cell untouched for 65,535 windows minus that tolerance reads as ahead until
//! the clock catches up (its old usage counts for those few windows: stricter, not looser).
//!
//! # Memory ordering
//! Every cell is a stand-alone counter that publishes no other memory, so `Relaxed` suffices:
//! read-modify-writes on one location are totally ordered, which is all the accounting needs.
//! Compare-and-swap loops are lock-free (a retry means another operation on the cell
//! succeeded), not wait-free.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// The period of a per-minute limit, and the burst a full bucket allows, ns.
pub const LIMIT_PERIOD_NS: u64 = 60_000_000_000;
/// The `Err` of a take that can never succeed (more than the capacity, or a limit of 0), ns.
pub const RETRY_NEVER_NS: u64 = u64::MAX;
/// A lease is the per-minute limit divided by this (0.1 % of it), but at least one unit.
pub const LEASE_LIMIT_DIVISOR: u64 = 1000;
/// Bits of a budget cell holding the tokens used; the window field sits in the 16 above them.
pub const BUDGET_USED_BITS: u32 = 48;
/// The most tokens a budget cell counts per window (larger budgets are cut to this).
pub const BUDGET_USED_MAX: u64 = (1 << BUDGET_USED_BITS) - 1;
/// The window field holds `window index mod this, plus 1`; 0 means "no window yet" (a zeroed
/// cell), so a fresh cell never passes for a window.
pub const BUDGET_WINDOWS_MOD: u64 = (1 << (64 - BUDGET_USED_BITS)) - 1;
/// How far back a clock may go (or another process's clock run ahead) without reopening a
/// budget window, ns.
pub const BUDGET_CLOCK_BACK_NS_MAX: u64 = 60_000_000_000;
/// ... counted in windows, at most this many.
pub const BUDGET_AHEAD_WINDOWS_MAX: u64 = 256;

const _: () = assert!(BUDGET_USED_BITS >= 32 && BUDGET_USED_BITS <= 56);
// Ahead and behind must stay distinguishable: the tolerance is far below half the index range.
const _: () = assert!(BUDGET_AHEAD_WINDOWS_MAX < BUDGET_WINDOWS_MOD / 64);
const _: () = assert!(LEASE_LIMIT_DIVISOR >= 1);

/// A per-minute limit as GCRA over one TAT cell. See the module docs for the exact semantics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Units per minute: the bucket's capacity. 0 admits nothing.
    limit: u64,
}

impl Gcra {
    /// A limit of `limit` units per minute: capacity `limit`, refilled at `limit / 60` per
    /// second. `per_minute(0)` admits nothing; express "no limit" as `Option<Gcra>::None`.
    pub const fn per_minute(limit: u64) -> Gcra {
        Gcra { limit }
    }

    /// Units per minute (the capacity).
    pub const fn limit(&self) -> u64 {
        self.limit
    }

    /// Take `n` units, or change nothing and return the ns until `n` units will be available
    /// (assuming nobody else takes meanwhile: a `Retry-After`). [`RETRY_NEVER_NS`] when they
    /// never will be: `n` above the capacity, a limit of 0, or a TAT past the end of `u64`.
    pub fn try_take(&self, tat: &AtomicU64, now_ns: u64, n: u64) -> Result<(), u64> {
        if self.limit == 0 || n > self.limit {
            return Err(RETRY_NEVER_NS);
        }
        let cost = self.cost_ceil_ns(n);
        let deadline = u128::from(now_ns) + u128::from(LIMIT_PERIOD_NS);
        let mut verdict = Ok(());
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            let new = u128::from(t.max(now_ns)) + cost;
            let Ok(new64) = u64::try_from(new) else {
                verdict = Err(RETRY_NEVER_NS);
                return None;
            };
            if new > deadline {
                verdict = Err(u64::try_from(new - deadline).unwrap_or(RETRY_NEVER_NS));
                return None;
            }
            verdict = Ok(());
            (new64 != t).then_some(new64)
        });
        verdict
    }

    /// Take `n` units unconditionally: settle usage beyond an estimate. May put the bucket in
    /// debt, so later takes wait until it is paid off. The TAT saturates at `u64::MAX`.
    pub fn charge(&self, tat: &AtomicU64, now_ns: u64, n: u64) {
        if self.limit == 0 || n == 0 {
            return;
        }
        let cost = self.cost_ceil_ns(n);
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            let new = u128::from(t.max(now_ns)) + cost;
            let new64 = u64::try_from(new).unwrap_or(u64::MAX);
            (new64 != t).then_some(new64)
        });
    }

    /// Return `n` units (an estimate above the usage, a lease given back). The bucket never
    /// holds more than its capacity: units beyond it are dropped.
    pub fn give_back(&self, tat: &AtomicU64, now_ns: u64, n: u64) {
        if self.limit == 0 || n == 0 {
            return;
        }
        let cost = u64::try_from(self.cost_floor_ns(n)).unwrap_or(u64::MAX);
        let _ = tat.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |t| {
            if t <= now_ns {
                return None; // full already
            }
            let new = t.saturating_sub(cost).max(now_ns);
            (new != t).then_some(new)
        });
    }

    /// Whole units in the bucket now (0 when empty or in debt; the capacity when full).
    pub fn remaining(&self, tat: &AtomicU64, now_ns: u64) -> u64 {
        if self.limit == 0 {
            return 0;
        }
        let base = u128::from(tat.load(Ordering::Relaxed).max(now_ns));
        let deadline = u128::from(now_ns) + u128::from(LIMIT_PERIOD_NS);
        let free_ns = deadline.saturating_sub(base);
        // free_ns ≤ LIMIT_PERIOD_NS, so the quotient is ≤ limit and fits.
        let units = free_ns * u128::from(self.limit) / u128::from(LIMIT_PERIOD_NS);
        u64::try_from(units).unwrap_or(self.limit)
    }

    /// ns until the bucket is full again (0 when full): `x-ratelimit-reset-*`.
    pub fn reset_after_ns(&self, tat: &AtomicU64, now_ns: u64) -> u64 {
        if self.limit == 0 {
            return 0;
        }
        tat.load(Ordering::Relaxed).saturating_sub(now_ns)
    }

    /// `ceil(n · 60 s / limit)`, ns; `limit > 0`.
    fn cost_ceil_ns(&self, n: u64) -> u128 {
        let l = u128::from(self.limit);
        (u128::from(n) * u128::from(LIMIT_PERIOD_NS)).div_ceil(l)
    }

    /// `floor(n · 60 s / limit)`, ns; `limit > 0`.
    fn cost_floor_ns(&self, n: u64) -> u128 {
        u128::from(n) * u128::from(LIMIT_PERIOD_NS) / u128::from(self.limit)
    }
}

/// Units a shard leases at a time for a limit of `limit_per_minute`: `max(1, limit / 1000)`,
/// so the units stranded in one shard's lease are at most 0.1 % of the limit (or one unit).
pub const fn lease_units(limit_per_minute: u64) -> u64 {
    let units = limit_per_minute / LEASE_LIMIT_DIVISOR;
    if units == 0 {
        1
    } else {
        units
    }
}

/// How long a request refused for want of fleet credit is told to wait, ns: about the agent's
/// sync period, after which the credit has been topped up (if the fleet has room).
pub const FLEET_RETRY_NS: u64 = 50_000_000;

/// This instance's share of one limit of a fleet (decision 0013): units the fleet agent leased
/// from Redis, in cells of the shared region. Admission takes from it as it takes from the
/// host's bucket; when it runs short, a request may still be admitted as an overdraft, up to
/// what the agent allows (`overdraft_max`: zero once it saw the fleet's bucket empty), which
/// the agent charges to Redis at its next sync.
#[derive(Debug, Clone, Copy)]
pub struct Credit<'a> {
    pub credit: &'a AtomicU64,
    pub debt: &'a AtomicU64,
    /// Units taken, ever (the agent's measure of this instance's rate).
    pub used: &'a AtomicU64,
    pub overdraft_max: &'a AtomicU64,
    /// Units refused, ever (demand the agent has not met yet), and the largest take refused.
    pub wanted: &'a AtomicU64,
    pub wanted_max: &'a AtomicU64,
}

impl Credit<'_> {
    /// Take `n` units: from the credit when it holds them, else as an overdraft within
    /// `overdraft_max`. `false`: neither.
    pub fn try_take(&self, n: u64) -> bool {
        let taken = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| c.checked_sub(n))
            .is_ok();
        if !taken {
            let before = self.debt.fetch_add(n, Ordering::Relaxed);
            if before.saturating_add(n) > self.overdraft_max.load(Ordering::Relaxed) {
                self.debt.fetch_sub(n, Ordering::Relaxed);
                self.wanted.fetch_add(n, Ordering::Relaxed);
                self.wanted_max.fetch_max(n, Ordering::Relaxed);
                return false;
            }
        }
        self.used.fetch_add(n, Ordering::Relaxed);
        true
    }

    /// Take `n` units whatever the credit holds: what it lacks becomes debt (a request that
    /// used more than it was admitted for).
    pub fn charge(&self, n: u64) {
        let mut lacking = n;
        let _ = self
            .credit
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                lacking = n.saturating_sub(c);
                Some(c.saturating_sub(n))
            });
        if lacking > 0 {
            self.debt.fetch_add(lacking, Ordering::Relaxed);
        }
        self.used.fetch_add(n, Ordering::Relaxed);
    }

    /// Give `n` units back to the credit (a lease returned, an estimate too high).
    pub fn give(&self, n: u64) {
        if n > 0 {
            self.credit.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Take `n` units from the shared bucket and, in a fleet, from the instance's credit.
fn take_shared(
    g: &Gcra,
    tat: &AtomicU64,
    fleet: Option<Credit<'_>>,
    now_ns: u64,
    n: u64,
) -> Result<(), u64> {
    if let Some(f) = fleet {
        if !f.try_take(n) {
            return Err(FLEET_RETRY_NS);
        }
    }
    g.try_take(tat, now_ns, n).inspect_err(|_| {
        if let Some(f) = fleet {
            f.give(n);
        }
    })
}

/// A shard's local cache of units taken in advance from one shared [`Gcra`] cell, so that most
/// admissions touch no shared cache line. Not `Sync`: one per shard, per tenant and limit.
///
/// Every unit held was charged to the shared bucket when leased, so the work admitted through
/// leases never exceeds what the bucket allows. Always pass the same `Gcra` and cell.
#[derive(Debug, Default)]
pub struct Lease {
    /// Units taken from the bucket and not yet used.
    held: Cell<u64>,
    /// When the last lease was taken (the age [`Lease::return_stale`] looks at).
    leased_at_ns: Cell<u64>,
}

impl Lease {
    pub const fn new() -> Lease {
        Lease {
            held: Cell::new(0),
            leased_at_ns: Cell::new(0),
        }
    }

    /// Units held (charged to the bucket, not yet used).
    pub fn held(&self) -> u64 {
        self.held.get()
    }

    /// Take `n` units: from the lease when it holds `n`; otherwise the lease's units and the
    /// shortfall from the shared bucket, taking `max(shortfall, lease_units)` when the bucket
    /// has them (the rest stays in the lease) and exactly the shortfall when it has not.
    /// `Err` as [`Gcra::try_take`] for the shortfall; the lease is then unchanged. `n = 0`
    /// always succeeds.
    pub fn take(
        &self,
        g: &Gcra,
        tat: &AtomicU64,
        now_ns: u64,
        n: u64,
        lease_units: u64,
    ) -> Result<(), u64> {
        self.take_in(g, tat, None, now_ns, n, lease_units)
    }

    /// [`Lease::take`], the units leased taken from `fleet`'s credit too (in a fleet).
    pub fn take_in(
        &self,
        g: &Gcra,
        tat: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        n: u64,
        lease_units: u64,
    ) -> Result<(), u64> {
        let held = self.held.get();
        if held >= n {
            self.held.set(held - n);
            return Ok(());
        }
        let shortfall = n - held;
        let want = shortfall.max(lease_units);
        if want > shortfall && take_shared(g, tat, fleet, now_ns, want).is_ok() {
            self.held.set(want - shortfall);
            self.leased_at_ns.set(now_ns);
            return Ok(());
        }
        take_shared(g, tat, fleet, now_ns, shortfall)?;
        self.held.set(0);
        Ok(())
    }

    /// Settle a request admitted with an estimate of `reserved` units that used `actual`: the
    /// excess comes from the lease first and is charged to the bucket (debt allowed) beyond
    /// it; a surplus goes into the lease, and what would take it above `lease_units` goes back
    /// to the bucket. Touches the shared cell only when the lease cannot absorb the difference.
    pub fn settle(
        &self,
        g: &Gcra,
        tat: &AtomicU64,
        now_ns: u64,
        reserved: u64,
        actual: u64,
        lease_units: u64,
    ) {
        self.settle_in(g, tat, None, now_ns, (reserved, actual), lease_units);
    }

    /// [`Lease::settle`], with `fleet`'s credit charged and given back alongside the bucket.
    pub fn settle_in(
        &self,
        g: &Gcra,
        tat: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        (reserved, actual): (u64, u64),
        lease_units: u64,
    ) {
        let held = self.held.get();
        if actual >= reserved {
            let extra = actual - reserved;
            let local = held.min(extra);
            self.held.set(held - local);
            g.charge(tat, now_ns, extra - local);
            if let Some(f) = fleet {
                f.charge(extra - local);
            }
        } else {
            let held = held.saturating_add(reserved - actual);
            if held > lease_units {
                g.give_back(tat, now_ns, held - lease_units);
                if let Some(f) = fleet {
                    f.give(held - lease_units);
                }
                self.held.set(lease_units);
            } else {
                self.held.set(held);
            }
        }
    }

    /// Give back the units held when the last lease was taken more than `max_age_ns` ago (a
    /// clock that went back by more than that counts too). Call it on the shard's timer.
    /// Returns the units given back.
    pub fn return_stale(&self, g: &Gcra, tat: &AtomicU64, now_ns: u64, max_age_ns: u64) -> u64 {
        self.return_stale_in(g, tat, None, now_ns, max_age_ns)
    }

    /// [`Lease::return_stale`], the units given back to `fleet`'s credit too.
    pub fn return_stale_in(
        &self,
        g: &Gcra,
        tat: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        max_age_ns: u64,
    ) -> u64 {
        if now_ns.abs_diff(self.leased_at_ns.get()) > max_age_ns {
            let held = self.return_all(g, tat, now_ns);
            if let Some(f) = fleet {
                f.give(held);
            }
            held
        } else {
            0
        }
    }

    /// Give back every unit held (a shard draining, a limit changing). Returns them.
    pub fn return_all(&self, g: &Gcra, tat: &AtomicU64, now_ns: u64) -> u64 {
        let held = self.held.replace(0);
        g.give_back(tat, now_ns, held);
        held
    }
}

/// Requests in flight per tenant, on one counter cell.
#[derive(Debug, Clone, Copy)]
pub struct Concurrency;

impl Concurrency {
    /// Count one more request in flight unless `max` are already: one `fetch_add`, undone with
    /// a `fetch_sub` when refused. A cell at or above `max` (garbage included) refuses.
    #[must_use]
    pub fn acquire(cell: &AtomicU64, max: u64) -> bool {
        let before = cell.fetch_add(1, Ordering::Relaxed);
        if before >= max {
            cell.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Count one request less; never below 0 (an extra release is a no-op, returning false).
    pub fn release(cell: &AtomicU64) -> bool {
        cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
            .is_ok()
    }

    /// Requests in flight (may briefly include refused ones being undone).
    pub fn in_flight(cell: &AtomicU64) -> u64 {
        cell.load(Ordering::Relaxed)
    }

    /// [`Concurrency::acquire`] under `cap` too: a fleet's share plus one, 0 for none (`max`
    /// alone holds). The cap is read after the request is counted (see the module docs).
    /// `Err(true)` when the cap refused it (`max` alone would have admitted it), `Err(false)`
    /// when `max` did.
    pub fn acquire_capped(cell: &AtomicU64, max: u64, cap: &AtomicU64) -> Result<(), bool> {
        let before = cell.fetch_add(1, Ordering::SeqCst);
        let bound = match cap.load(Ordering::SeqCst) {
            0 => max,
            c => max.min(c - 1),
        };
        if before >= bound {
            cell.fetch_sub(1, Ordering::Relaxed);
            return Err(before < max);
        }
        Ok(())
    }

    /// The fleet agent's side of [`Concurrency::acquire_capped`]: store `new_cap` (when given),
    /// then read the count. Every request the count misses was checked against `new_cap`.
    pub fn cap_then_count(cap: &AtomicU64, cell: &AtomicU64, new_cap: Option<u64>) -> u64 {
        if let Some(c) = new_cap {
            cap.store(c, Ordering::SeqCst);
        }
        cell.load(Ordering::SeqCst)
    }
}

/// A hard cap of tokens per fixed window, on one packed cell. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Tokens per window, at most [`BUDGET_USED_MAX`].
    budget: u64,
    /// ≥ 1.
    window_ns: u64,
    /// A stored window up to this many ahead of the clock's is taken as current (1..=256).
    ahead_windows_max: u64,
    /// Units counted before this budget was (spend imported from another gateway): they count
    /// in window `carried_window` while the clock is before `carried_until_ns`.
    carried: u64,
    carried_until_ns: u64,
    carried_window: u64,
}

/// What [`Budget::reserve`] admitted: the tokens and the window they were counted in. Pass it
/// to [`Budget::settle`] or [`Budget::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The full window index (`now_ns / window_ns`, not cut to 16 bits).
    window: u64,
    tokens: u64,
}

impl Reservation {
    pub const fn tokens(&self) -> u64 {
        self.tokens
    }

    /// The index of the window the tokens were counted in.
    pub const fn window(&self) -> u64 {
        self.window
    }
}

impl Budget {
    /// `budget_tokens` per window of `window_ns`. A budget above [`BUDGET_USED_MAX`] is cut to
    /// it; a window of 0 ns is taken as 1 ns.
    pub const fn new(budget_tokens: u64, window_ns: u64) -> Budget {
        let budget = if budget_tokens > BUDGET_USED_MAX {
            BUDGET_USED_MAX
        } else {
            budget_tokens
        };
        let window_ns = if window_ns == 0 { 1 } else { window_ns };
        let ahead = BUDGET_CLOCK_BACK_NS_MAX.div_ceil(window_ns);
        let ahead_windows_max = if ahead == 0 {
            1
        } else if ahead > BUDGET_AHEAD_WINDOWS_MAX {
            BUDGET_AHEAD_WINDOWS_MAX
        } else {
            ahead
        };
        Budget {
            budget,
            window_ns,
            ahead_windows_max,
            carried: 0,
            carried_until_ns: 0,
            carried_window: 0,
        }
    }

    /// The same budget with `units` already used, counted in the window holding the ns before
    /// `until_ns` and until then (a later window starts whole).
    #[must_use]
    pub const fn with_carried(mut self, units: u64, until_ns: u64) -> Budget {
        self.carried = units;
        self.carried_until_ns = until_ns;
        self.carried_window = until_ns.saturating_sub(1) / self.window_ns;
        self
    }

    /// What window `window` allows at `now_ns`: the budget, less the carried units while they
    /// count.
    const fn cap(&self, window: u64, now_ns: u64) -> u64 {
        if now_ns < self.carried_until_ns && window == self.carried_window {
            self.budget.saturating_sub(self.carried)
        } else {
            self.budget
        }
    }

    pub const fn budget(&self) -> u64 {
        self.budget
    }

    pub const fn window_ns(&self) -> u64 {
        self.window_ns
    }

    /// Reserve `n` tokens in the current window, or change nothing and return the ns until the
    /// window ends ([`RETRY_NEVER_NS`] when `n` exceeds the budget: never in one window).
    pub fn reserve(&self, cell: &AtomicU64, now_ns: u64, n: u64) -> Result<Reservation, u64> {
        if n > self.budget {
            return Err(RETRY_NEVER_NS);
        }
        let mut verdict = Err(RETRY_NEVER_NS);
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let (window, used) = self.view(word, now_ns);
            if used.saturating_add(n) > self.cap(window, now_ns) {
                // Whole again when the window ends, or sooner when carried units stop counting
                // (where that makes room for it).
                let end = self.window_end_after_ns(window, now_ns);
                let fits_after_carried = used.saturating_add(n) <= self.budget;
                verdict = Err(
                    if fits_after_carried && self.cap(window, now_ns) < self.budget {
                        end.min(self.carried_until_ns - now_ns)
                    } else {
                        end
                    },
                );
                return None;
            }
            verdict = Ok(Reservation { window, tokens: n });
            let new = pack(window, used + n);
            (new != word).then_some(new)
        });
        verdict
    }

    /// Correct a reservation to the tokens actually used. In the reservation's window:
    /// `used += actual − reserved` (never below 0). After the window rolled over: the excess
    /// `max(actual − reserved, 0)` is charged to the current window; nothing is refunded.
    /// `used` may end above the budget (later reservations wait for the next window).
    pub fn settle(&self, cell: &AtomicU64, now_ns: u64, r: Reservation, actual: u64) {
        let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |word| {
            let (window, used) = self.view(word, now_ns);
            let used = if actual >= r.tokens {
                used.saturating_add(actual - r.tokens).min(BUDGET_USED_MAX)
            } else if window == r.window {
                used.saturating_sub(r.tokens - actual)
            } else {
                used
            };
            let new = pack(window, used);
            (new != word).then_some(new)
        });
    }

    /// Give a reservation back (the request was refused further on or failed before using
    /// tokens): `settle` with 0 used, so a refund in the same window only.
    pub fn release(&self, cell: &AtomicU64, now_ns: u64, r: Reservation) {
        self.settle(cell, now_ns, r, 0);
    }

    /// [`Budget::reserve`], in a fleet from `fleet`'s credit too (refused with
    /// [`FLEET_RETRY_NS`] when the credit and its overdraft fall short; the reservation is
    /// then given back).
    pub fn reserve_in(
        &self,
        cell: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        n: u64,
    ) -> Result<Reservation, u64> {
        let r = self.reserve(cell, now_ns, n)?;
        if let Some(f) = fleet {
            if !f.try_take(n) {
                self.release(cell, now_ns, r);
                return Err(FLEET_RETRY_NS);
            }
        }
        Ok(r)
    }

    /// [`Budget::settle`], in a fleet with the difference charged to `fleet`'s credit or
    /// given back to it.
    pub fn settle_in(
        &self,
        cell: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        r: Reservation,
        actual: u64,
    ) {
        self.settle(cell, now_ns, r, actual);
        if let Some(f) = fleet {
            if actual >= r.tokens {
                f.charge(actual - r.tokens);
            } else {
                f.give(r.tokens - actual);
            }
        }
    }

    /// [`Budget::release`], in a fleet with the reservation given back to `fleet`'s credit.
    pub fn release_in(
        &self,
        cell: &AtomicU64,
        fleet: Option<Credit<'_>>,
        now_ns: u64,
        r: Reservation,
    ) {
        self.settle_in(cell, fleet, now_ns, r, 0);
    }

    /// Tokens used in the current window.
    pub fn used(&self, cell: &AtomicU64, now_ns: u64) -> u64 {
        self.view(cell.load(Ordering::Relaxed), now_ns).1
    }

    /// Tokens left in the current window (0 when spent or overspent).
    pub fn remaining(&self, cell: &AtomicU64, now_ns: u64) -> u64 {
        let (window, used) = self.view(cell.load(Ordering::Relaxed), now_ns);
        self.cap(window, now_ns).saturating_sub(used)
    }

    /// ns until the current window ends (and the budget is whole again).
    pub fn reset_after_ns(&self, cell: &AtomicU64, now_ns: u64) -> u64 {
        let (window, _) = self.view(cell.load(Ordering::Relaxed), now_ns);
        self.window_end_after_ns(window, now_ns)
    }

    /// The window in effect and its tokens used, as a cell holding `word` reads at `now_ns`.
    fn view(&self, word: u64, now_ns: u64) -> (u64, u64) {
        let current = now_ns / self.window_ns;
        let field = word >> BUDGET_USED_BITS; // ≤ BUDGET_WINDOWS_MOD
        let used = word & BUDGET_USED_MAX;
        if field == 0 {
            return (current, 0); // a zeroed cell: no window yet
        }
        let ahead =
            (field - 1 + BUDGET_WINDOWS_MOD - current % BUDGET_WINDOWS_MOD) % BUDGET_WINDOWS_MOD;
        if ahead == 0 {
            (current, used)
        } else if ahead <= self.ahead_windows_max {
            // The clock went back (or ran ahead elsewhere): the stored window stays current.
            (current.saturating_add(ahead), used)
        } else {
            (current, 0)
        }
    }

    fn window_end_after_ns(&self, window: u64, now_ns: u64) -> u64 {
        let end = (u128::from(window) + 1) * u128::from(self.window_ns);
        u64::try_from(end.saturating_sub(u128::from(now_ns))).unwrap_or(u64::MAX)
    }
}

fn pack(window: u64, used: u64) -> u64 {
    ((window % BUDGET_WINDOWS_MOD + 1) << BUDGET_USED_BITS) | used.min(BUDGET_USED_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_credit_is_taken_then_overdrawn_within_its_maximum_and_demand_is_counted() {
        let cells: [AtomicU64; 6] = Default::default();
        let c = Credit {
            credit: &cells[0],
            debt: &cells[1],
            used: &cells[2],
            overdraft_max: &cells[3],
            wanted: &cells[4],
            wanted_max: &cells[5],
        };
        // No credit, no overdraft: refused, and the demand is counted for the agent.
        assert!(!c.try_take(2));
        assert_eq!(
            (
                cells[1].load(Ordering::Relaxed),
                cells[4].load(Ordering::Relaxed)
            ),
            (0, 2)
        );
        c.give(3);
        assert!(c.try_take(2));
        // One left; two more go to debt within an overdraft of 2, three more do not.
        cells[3].store(2, Ordering::Relaxed);
        assert!(c.try_take(2));
        assert_eq!(cells[1].load(Ordering::Relaxed), 2);
        assert!(!c.try_take(3));
        assert_eq!(
            cells[0].load(Ordering::Relaxed),
            1,
            "the credit was left alone"
        );
        // A charge takes what the credit has and owes the rest.
        c.charge(4);
        assert_eq!(
            (
                cells[0].load(Ordering::Relaxed),
                cells[1].load(Ordering::Relaxed)
            ),
            (0, 5)
        );
        assert_eq!(cells[2].load(Ordering::Relaxed), 8, "used: 2 + 2 + 4");
        // Through a lease: the bucket and the credit together.
        let g = Gcra::per_minute(600);
        let tat = AtomicU64::new(0);
        let lease = Lease::new();
        cells[3].store(0, Ordering::Relaxed);
        assert_eq!(
            lease.take_in(&g, &tat, Some(c), T0, 1, 1),
            Err(FLEET_RETRY_NS),
            "the host's bucket is full, the fleet's credit empty"
        );
        assert_eq!(g.remaining(&tat, T0), 600, "nothing taken from the bucket");
        c.give(1);
        assert_eq!(lease.take_in(&g, &tat, Some(c), T0, 1, 1), Ok(()));
    }

    use proptest::prelude::*;

    const B: u64 = LIMIT_PERIOD_NS;
    const SECOND_NS: u64 = 1_000_000_000;
    /// A 2025 unix time, ns: where the clock of most tests starts.
    const T0: u64 = 1_750_000_000_000_000_000;

    fn at(v: u64) -> AtomicU64 {
        AtomicU64::new(v)
    }

    fn word(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    // ----- Gcra ---------------------------------------------------------------------------

    #[test]
    fn gcra_zeroed_cell_is_a_full_bucket() {
        let g = Gcra::per_minute(60);
        let tat = at(0);
        assert_eq!(g.remaining(&tat, T0), 60);
        assert_eq!(g.reset_after_ns(&tat, T0), 0);
        assert_eq!(g.try_take(&tat, T0, 60), Ok(()));
        assert_eq!(g.remaining(&tat, T0), 0);
        assert_eq!(g.reset_after_ns(&tat, T0), 60 * SECOND_NS);
        // One unit per second comes back.
        assert_eq!(g.try_take(&tat, T0, 1), Err(SECOND_NS));
        assert_eq!(g.try_take(&tat, T0, 3), Err(3 * SECOND_NS));
    }

    #[test]
    fn gcra_refills_a_limit_per_minute_and_stops_at_capacity() {
        let g = Gcra::per_minute(600);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 600), Ok(()));
        assert_eq!(g.remaining(&tat, T0 + SECOND_NS), 10);
        assert_eq!(g.remaining(&tat, T0 + 30 * SECOND_NS), 300);
        assert_eq!(g.remaining(&tat, T0 + 60 * SECOND_NS), 600);
        assert_eq!(g.remaining(&tat, T0 + 3600 * SECOND_NS), 600);
        assert_eq!(
            g.try_take(&tat, T0 + 3600 * SECOND_NS, 601),
            Err(RETRY_NEVER_NS)
        );
    }

    #[test]
    fn gcra_retry_after_is_the_exact_wait() {
        // 7 per minute: a unit costs 8,571,428,571.4 ns, so costs round.
        let g = Gcra::per_minute(7);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 5), Ok(()));
        let Err(wait) = g.try_take(&tat, T0, 4) else {
            panic!("4 of 2 left must be refused");
        };
        let early = at(word(&tat));
        assert!(g.try_take(&early, T0 + wait - 1, 4).is_err());
        let on_time = at(word(&tat));
        assert_eq!(g.try_take(&on_time, T0 + wait, 4), Ok(()));
    }

    #[test]
    fn gcra_of_zero_admits_nothing_and_changes_nothing() {
        let g = Gcra::per_minute(0);
        let tat = at(12345);
        for n in [0, 1, u64::MAX] {
            assert_eq!(g.try_take(&tat, T0, n), Err(RETRY_NEVER_NS));
        }
        g.charge(&tat, T0, 10);
        g.give_back(&tat, T0, 10);
        assert_eq!(word(&tat), 12345);
        assert_eq!(g.remaining(&tat, T0), 0);
        assert_eq!(g.reset_after_ns(&tat, T0), 0);
    }

    #[test]
    fn gcra_more_than_the_capacity_is_never_taken() {
        let g = Gcra::per_minute(10);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 11), Err(RETRY_NEVER_NS));
        assert_eq!(g.try_take(&tat, T0, u64::MAX), Err(RETRY_NEVER_NS));
        assert_eq!(word(&tat), 0);
        assert_eq!(g.try_take(&tat, T0, 10), Ok(()));
    }

    #[test]
    fn gcra_charge_runs_into_debt_that_later_takes_wait_out() {
        let g = Gcra::per_minute(60);
        let tat = at(0);
        g.charge(&tat, T0, 120);
        assert_eq!(g.remaining(&tat, T0), 0);
        assert_eq!(g.reset_after_ns(&tat, T0), 120 * SECOND_NS);
        assert_eq!(g.try_take(&tat, T0, 1), Err(61 * SECOND_NS));
        // Zero units: refused while in debt, admitted once the debt is paid.
        assert_eq!(g.try_take(&tat, T0, 0), Err(60 * SECOND_NS));
        assert_eq!(g.try_take(&tat, T0 + 60 * SECOND_NS, 0), Ok(()));
        assert_eq!(g.try_take(&tat, T0 + 61 * SECOND_NS, 1), Ok(()));
        // A charge saturates instead of overflowing.
        g.charge(&tat, T0, u64::MAX);
        g.charge(&tat, T0, u64::MAX);
        assert_eq!(word(&tat), u64::MAX);
        assert_eq!(g.try_take(&tat, T0, 1), Err(RETRY_NEVER_NS));
    }

    #[test]
    fn gcra_give_back_never_fills_above_capacity() {
        let g = Gcra::per_minute(60);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 10), Ok(()));
        g.give_back(&tat, T0, 4);
        assert_eq!(g.remaining(&tat, T0), 54);
        g.give_back(&tat, T0, 1000);
        assert_eq!(g.remaining(&tat, T0), 60);
        assert_eq!(g.reset_after_ns(&tat, T0), 0);
        assert_eq!(g.try_take(&tat, T0, 61), Err(RETRY_NEVER_NS));
        // On a full bucket it changes nothing.
        let full = at(7);
        g.give_back(&full, T0, u64::MAX);
        assert_eq!(word(&full), 7);
    }

    #[test]
    fn gcra_clock_going_back_admits_nothing_more() {
        let g = Gcra::per_minute(60);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 30), Ok(()));
        let before = g.remaining(&tat, T0);
        for back in [1, SECOND_NS, 30 * SECOND_NS, 3600 * SECOND_NS, T0] {
            let then = T0 - back;
            assert!(g.remaining(&tat, then) <= before);
            assert!(g.try_take(&tat, then, before + 1).is_err());
        }
        // Drained, then an earlier clock: refused, and the refusal changes nothing.
        assert_eq!(g.try_take(&tat, T0, 30), Ok(()));
        let w = word(&tat);
        assert!(g.try_take(&tat, T0 - 10 * SECOND_NS, 1).is_err());
        assert_eq!(word(&tat), w);
    }

    #[test]
    fn gcra_garbage_cells_and_extreme_inputs_never_panic_nor_admit_more() {
        let cells = [0, 1, T0, B, u64::MAX - B, u64::MAX - 1, u64::MAX];
        let nows = [0, 1, T0, u64::MAX - B, u64::MAX - 1, u64::MAX];
        for limit in [1, 7, 1000, u64::MAX] {
            let g = Gcra::per_minute(limit);
            for &c in &cells {
                for &now in &nows {
                    for n in [0, 1, limit, u64::MAX] {
                        let tat = at(c);
                        let _ = g.try_take(&tat, now, n);
                        g.charge(&tat, now, n);
                        g.give_back(&tat, now, n);
                        assert!(g.remaining(&tat, now) <= limit);
                        let _ = g.reset_after_ns(&tat, now);
                    }
                    if limit <= 1000 {
                        // At one instant no cell admits more than the capacity.
                        let tat = at(c);
                        let admitted = (0..limit + 5)
                            .filter(|_| g.try_take(&tat, now, 1).is_ok())
                            .count();
                        assert!(admitted as u64 <= limit, "{c} {now} {limit}");
                    }
                }
            }
        }
        // At the end of time a take would need a TAT past u64::MAX: refused, not wrapped.
        let g = Gcra::per_minute(60);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, u64::MAX, 1), Err(RETRY_NEVER_NS));
        assert_eq!(g.try_take(&tat, u64::MAX, 1), Err(RETRY_NEVER_NS));
    }

    // ----- Lease --------------------------------------------------------------------------

    #[test]
    fn lease_units_is_a_thousandth_of_the_limit_and_at_least_one() {
        assert_eq!(lease_units(0), 1);
        assert_eq!(lease_units(1), 1);
        assert_eq!(lease_units(1999), 1);
        assert_eq!(lease_units(2000), 2);
        assert_eq!(lease_units(1_000_000), 1000);
        assert_eq!(lease_units(u64::MAX), u64::MAX / 1000);
    }

    #[test]
    fn lease_serves_locally_until_it_runs_out() {
        let limit = 60_000;
        let lu = lease_units(limit); // 60 units = 60 ms of refill
        let g = Gcra::per_minute(limit);
        let tat = at(0);
        let lease = Lease::new();
        assert_eq!(lease.take(&g, &tat, T0, 1, lu), Ok(()));
        assert_eq!(lease.held(), 59);
        let w = word(&tat);
        assert_eq!(w, T0 + 60_000_000);
        for _ in 0..59 {
            assert_eq!(lease.take(&g, &tat, T0, 1, lu), Ok(()));
        }
        assert_eq!(word(&tat), w, "no shared write while the lease lasts");
        assert_eq!(lease.held(), 0);
        assert_eq!(lease.take(&g, &tat, T0, 58, lu), Ok(()));
        assert_eq!(lease.held(), 2);
        // Held units are used first: 2 held, 5 wanted → a new lease of 60 covers the 3 missing.
        assert_eq!(lease.take(&g, &tat, T0, 5, lu), Ok(()));
        assert_eq!(lease.held(), 57);
        // A take bigger than a lease leases exactly its shortfall (500 − 57).
        assert_eq!(lease.take(&g, &tat, T0, 500, lu), Ok(()));
        assert_eq!(lease.held(), 0);
        assert_eq!(g.remaining(&tat, T0), limit - 60 - 60 - 60 - 443);
    }

    #[test]
    fn lease_falls_back_to_the_exact_shortfall_and_fails_cleanly() {
        let g = Gcra::per_minute(100);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 95), Ok(()));
        let lease = Lease::new();
        assert_eq!(lease.take(&g, &tat, T0, 3, 10), Ok(()));
        assert_eq!(lease.held(), 0);
        assert_eq!(g.remaining(&tat, T0), 2);
        let w = word(&tat);
        assert_eq!(lease.take(&g, &tat, T0, 3, 10), Err(600_000_000));
        assert_eq!((lease.held(), word(&tat)), (0, w));
        assert_eq!(lease.take(&g, &tat, T0, 0, 10), Ok(()));
        assert_eq!(lease.take(&g, &tat, T0, 101, 10), Err(RETRY_NEVER_NS));
    }

    #[test]
    fn lease_returns_stale_units_by_age_and_all_on_demand() {
        // 60 per minute, 10 of them used elsewhere: the bucket stays short during the test.
        let g = Gcra::per_minute(60);
        let tat = at(0);
        assert_eq!(g.try_take(&tat, T0, 40), Ok(()));
        let lease = Lease::new();
        assert_eq!(lease.take(&g, &tat, T0, 1, 10), Ok(()));
        assert_eq!(g.remaining(&tat, T0), 10);
        assert_eq!(lease.return_stale(&g, &tat, T0 + SECOND_NS, SECOND_NS), 0);
        assert_eq!(lease.held(), 9);
        assert_eq!(
            lease.return_stale(&g, &tat, T0 + SECOND_NS + 1, SECOND_NS),
            9
        );
        assert_eq!(lease.held(), 0);
        assert_eq!(g.remaining(&tat, T0), 19);
        // A clock that went back by more than the age returns it too.
        assert_eq!(lease.take(&g, &tat, T0, 1, 10), Ok(()));
        assert_eq!(
            lease.return_stale(&g, &tat, T0 - 5 * SECOND_NS, SECOND_NS),
            9
        );
        assert_eq!(lease.take(&g, &tat, T0, 1, 10), Ok(()));
        assert_eq!(lease.return_all(&g, &tat, T0), 9);
        assert_eq!(lease.return_all(&g, &tat, T0), 0);
        assert_eq!(g.remaining(&tat, T0), 17);
    }

    #[test]
    fn lease_settles_locally_when_it_can() {
        let g = Gcra::per_minute(60_000); // 1 ms per unit
        let tat = at(0);
        let lease = Lease::new();
        assert_eq!(lease.take(&g, &tat, T0, 10, 60), Ok(()));
        assert_eq!(lease.held(), 50);
        let w = word(&tat);
        // Used 30 more than the estimate: from the lease, no shared write.
        lease.settle(&g, &tat, T0, 10, 40, 60);
        assert_eq!((lease.held(), word(&tat)), (20, w));
        // Used 5 less: into the lease.
        lease.settle(&g, &tat, T0, 10, 5, 60);
        assert_eq!((lease.held(), word(&tat)), (25, w));
        // 50 more than the lease holds: the lease's 25, then 25 charged.
        lease.settle(&g, &tat, T0, 0, 50, 60);
        assert_eq!((lease.held(), word(&tat)), (0, w + 25_000_000));
        // A surplus past one lease goes back to the bucket.
        lease.settle(&g, &tat, T0, 100, 0, 60);
        assert_eq!(
            (lease.held(), word(&tat)),
            (60, w + 25_000_000 - 40_000_000)
        );
    }

    // ----- Concurrency --------------------------------------------------------------------

    #[test]
    fn concurrency_caps_and_never_goes_below_zero() {
        let c = at(0);
        assert!(Concurrency::acquire(&c, 2));
        assert!(Concurrency::acquire(&c, 2));
        assert!(!Concurrency::acquire(&c, 2));
        assert_eq!(Concurrency::in_flight(&c), 2);
        assert!(Concurrency::release(&c));
        assert!(Concurrency::release(&c));
        assert!(!Concurrency::release(&c));
        assert_eq!(Concurrency::in_flight(&c), 0);
        assert!(!Concurrency::acquire(&c, 0));
        assert_eq!(Concurrency::in_flight(&c), 0);
        // Garbage refuses (and wraps nothing) until the slot is reset.
        let g = at(u64::MAX);
        assert!(!Concurrency::acquire(&g, u64::MAX));
        assert!(!Concurrency::acquire(&g, 10));
        assert_eq!(word(&g), u64::MAX);
        assert!(Concurrency::release(&g));
        assert_eq!(word(&g), u64::MAX - 1);
    }

    #[test]
    fn a_fleet_cap_bounds_concurrency_below_the_maximum_and_zero_means_none() {
        let (c, cap) = (at(0), at(0));
        // No cap set: the maximum alone.
        assert_eq!(Concurrency::acquire_capped(&c, 2, &cap), Ok(()));
        assert_eq!(Concurrency::acquire_capped(&c, 2, &cap), Ok(()));
        assert_eq!(Concurrency::acquire_capped(&c, 2, &cap), Err(false));
        assert_eq!(Concurrency::in_flight(&c), 2);
        // A cap of one slot (stored as 2): the two in flight stay, nothing more is admitted,
        // and the refusal is the cap's even with room under the maximum.
        assert_eq!(Concurrency::cap_then_count(&cap, &c, Some(2)), 2);
        assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Err(true));
        assert!(Concurrency::release(&c));
        assert!(Concurrency::release(&c));
        assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Ok(()));
        assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Err(true));
        // A cap of no slot (stored as 1) admits nothing; a cap above the maximum changes nothing.
        assert!(Concurrency::release(&c));
        assert_eq!(Concurrency::cap_then_count(&cap, &c, Some(1)), 0);
        assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Err(true));
        assert_eq!(Concurrency::cap_then_count(&cap, &c, Some(100)), 0);
        for _ in 0..5 {
            assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Ok(()));
        }
        assert_eq!(Concurrency::acquire_capped(&c, 5, &cap), Err(false));
        // Reading without a new cap leaves it.
        assert_eq!(Concurrency::cap_then_count(&cap, &c, None), 5);
        assert_eq!(word(&cap), 100);
    }

    #[test]
    fn a_lowered_cap_is_seen_by_the_shards_or_its_requests_by_the_agent() {
        // Shards admit under a cap the agent lowers from 6 slots to 2 and back, reading the
        // count after each lowering: what is in flight after a lowering never exceeds the
        // count it read or the new cap, whichever is larger.
        let (cell, cap, inside, stop) = (at(0), at(7), at(0), at(0));
        let violations = at(0);
        let bound = at(u64::MAX);
        std::thread::scope(|s| {
            for _ in 0..3 {
                s.spawn(|| {
                    while word(&stop) == 0 {
                        if Concurrency::acquire_capped(&cell, 8, &cap).is_ok() {
                            let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            if now > bound.load(Ordering::SeqCst) {
                                violations.fetch_add(1, Ordering::Relaxed);
                            }
                            inside.fetch_sub(1, Ordering::SeqCst);
                            assert!(Concurrency::release(&cell));
                        }
                    }
                });
            }
            for _ in 0..2_000 {
                // Lower: from here on, in flight ≤ max(count read, 2). The bound is set after
                // the read, so a request admitted in between is checked against a looser one.
                let n = Concurrency::cap_then_count(&cap, &cell, Some(3));
                bound.store(n.max(2), Ordering::SeqCst);
                std::hint::spin_loop();
                bound.store(u64::MAX, Ordering::SeqCst);
                Concurrency::cap_then_count(&cap, &cell, Some(7));
            }
            stop.store(1, Ordering::Relaxed);
        });
        assert_eq!(word(&violations), 0);
        assert_eq!(word(&cell), 0);
    }

    #[test]
    fn concurrency_on_threads_never_exceeds_the_maximum() {
        const MAX: u64 = 3;
        let cell = at(0);
        let inside = at(0);
        let peak = at(0);
        let admitted = at(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..20_000 {
                        if Concurrency::acquire(&cell, MAX) {
                            let now_inside = inside.fetch_add(1, Ordering::SeqCst) + 1;
                            peak.fetch_max(now_inside, Ordering::SeqCst);
                            admitted.fetch_add(1, Ordering::Relaxed);
                            inside.fetch_sub(1, Ordering::SeqCst);
                            assert!(Concurrency::release(&cell));
                        }
                    }
                });
            }
        });
        assert!(word(&peak) <= MAX, "peak {}", word(&peak));
        assert!(word(&admitted) > 0);
        assert_eq!(word(&cell), 0);
    }

    // ----- Budget -------------------------------------------------------------------------

    #[test]
    fn budget_zeroed_cell_reserves_up_to_the_budget_per_window() {
        let b = Budget::new(100, SECOND_NS);
        let cell = at(0);
        let now = T0 + 250_000_000; // a quarter into a window
        assert_eq!(b.remaining(&cell, now), 100);
        assert_eq!(b.reset_after_ns(&cell, now), 750_000_000);
        let r = b.reserve(&cell, now, 60).expect("60 of 100");
        assert_eq!((r.tokens(), r.window()), (60, now / SECOND_NS));
        assert!(b.reserve(&cell, now, 40).is_ok());
        let w = word(&cell);
        assert_eq!(b.reserve(&cell, now, 1), Err(750_000_000));
        assert_eq!(word(&cell), w, "a refusal changes nothing");
        assert_eq!(b.remaining(&cell, now), 0);
        // The next window starts at 0 used.
        let next = T0 + SECOND_NS;
        assert_eq!(b.remaining(&cell, next), 100);
        assert!(b.reserve(&cell, next, 100).is_ok());
        // More than the budget: never.
        assert_eq!(b.reserve(&cell, next + SECOND_NS, 101), Err(RETRY_NEVER_NS));
        assert_eq!(b.reserve(&cell, next, u64::MAX), Err(RETRY_NEVER_NS));
        // A zeroed cell is no window, even where the clock's index sits just below a
        // multiple of the field's period (it would otherwise read as a window ahead).
        let fresh = at(0);
        let w = (T0 / SECOND_NS / BUDGET_WINDOWS_MOD + 1) * BUDGET_WINDOWS_MOD - 1;
        let now = w * SECOND_NS;
        assert_eq!(b.reset_after_ns(&fresh, now), SECOND_NS);
        let r = b.reserve(&fresh, now, 1).expect("fresh");
        assert_eq!(r.window(), w);
    }

    #[test]
    fn carried_units_count_in_their_window_until_their_end_only() {
        let window = 1_000 * SECOND_NS;
        // 70 of 100 carried, counting until 400 s into window 3.
        let until = 3 * window + 400 * SECOND_NS;
        let b = Budget::new(100, window).with_carried(70, until);
        let cell = AtomicU64::new(0);
        let now = 3 * window + 10 * SECOND_NS;
        assert_eq!(b.remaining(&cell, now), 30);
        assert!(b.reserve(&cell, now, 30).is_ok());
        // Refused until the carried units stop counting, not until the window ends.
        assert_eq!(b.reserve(&cell, now, 1), Err(390 * SECOND_NS));
        // From `until` on, the same window allows the whole budget: 70 more.
        assert_eq!(b.remaining(&cell, until), 70);
        assert!(b.reserve(&cell, until, 70).is_ok());
        assert!(b.reserve(&cell, until, 1).is_err());
        // A window before `until`'s, or after it, never counts them.
        let other = AtomicU64::new(0);
        assert_eq!(b.remaining(&other, 2 * window + 5), 100);
        assert_eq!(b.remaining(&other, 4 * window), 100);
        // More carried than the budget: nothing left in that window, and no underflow.
        let over = Budget::new(100, window).with_carried(500, until);
        assert_eq!(over.remaining(&AtomicU64::new(0), now), 0);
        assert!(over.reserve(&AtomicU64::new(0), now, 1).is_err());
    }

    #[test]
    fn budget_settles_in_its_window_and_only_the_excess_after_rollover() {
        let b = Budget::new(1000, SECOND_NS);
        let cell = at(0);
        let r1 = b.reserve(&cell, T0, 100).expect("fits");
        b.settle(&cell, T0, r1, 30);
        assert_eq!(b.used(&cell, T0), 30);
        let r2 = b.reserve(&cell, T0, 200).expect("fits");
        let r3 = b.reserve(&cell, T0, 200).expect("fits");
        b.release(&cell, T0, r3);
        assert_eq!(b.used(&cell, T0), 230);
        // Over the estimate in the same window: over the budget, later reserves wait.
        b.settle(&cell, T0, r2, 1100);
        assert_eq!(b.used(&cell, T0), 1130);
        assert_eq!(b.remaining(&cell, T0), 0);
        assert!(b.reserve(&cell, T0, 0).is_err());
        // Across a rollover: the excess lands in the new window, refunds are dropped.
        let r4 = b.reserve(&cell, T0 + SECOND_NS, 500).expect("new window");
        let later = T0 + 2 * SECOND_NS;
        b.settle(&cell, later, r4, 700);
        assert_eq!(b.used(&cell, later), 200);
        let r5 = b.reserve(&cell, later, 100).expect("fits");
        b.settle(&cell, later + SECOND_NS, r5, 10);
        b.release(&cell, later + SECOND_NS, r5);
        assert_eq!(b.used(&cell, later + SECOND_NS), 0);
        // An excess saturates at the counter's maximum.
        b.settle(&cell, later, r5, u64::MAX);
        assert_eq!(b.used(&cell, later), BUDGET_USED_MAX);
    }

    #[test]
    fn budget_clamps_its_parameters() {
        let b = Budget::new(u64::MAX, 0);
        assert_eq!((b.budget(), b.window_ns()), (BUDGET_USED_MAX, 1));
        let cell = at(0);
        assert!(b.reserve(&cell, T0, BUDGET_USED_MAX).is_ok());
        assert_eq!(b.reserve(&cell, T0, 1), Err(1));
        assert_eq!(
            Budget::new(0, SECOND_NS).reserve(&cell, T0, 1),
            Err(RETRY_NEVER_NS)
        );
        let forever = Budget::new(5, u64::MAX);
        let c = at(0);
        assert_eq!(forever.reset_after_ns(&c, T0), u64::MAX - T0);
    }

    #[test]
    fn budget_garbage_cells_and_extreme_inputs_never_panic() {
        let cells = [
            0,
            1,
            BUDGET_USED_MAX,
            BUDGET_USED_MAX + 1,
            u64::MAX - 1,
            u64::MAX,
        ];
        let nows = [0, 1, T0, u64::MAX - 1, u64::MAX];
        for (budget, window) in [(0, 1), (1, 1), (100, SECOND_NS), (u64::MAX, u64::MAX)] {
            let b = Budget::new(budget, window);
            for &c in &cells {
                for &now in &nows {
                    for n in [0, 1, u64::MAX] {
                        let cell = at(c);
                        let r = b.reserve(&cell, now, n);
                        assert!(b.used(&cell, now) <= BUDGET_USED_MAX);
                        if let Ok(r) = r {
                            b.settle(&cell, now, r, n);
                            b.settle(&cell, u64::MAX, r, u64::MAX);
                            b.release(&cell, 0, r);
                        }
                        assert!(b.remaining(&cell, now) <= b.budget());
                        let _ = b.reset_after_ns(&cell, now);
                    }
                }
            }
        }
    }

    #[test]
    fn budget_clock_going_back_keeps_the_window_within_tolerance() {
        // 1 s windows: up to 60 windows back keep the stored one.
        let b = Budget::new(100, SECOND_NS);
        let cell = at(0);
        assert!(b.reserve(&cell, T0, 100).is_ok());
        let w = T0 / SECOND_NS;
        for back in [1, SECOND_NS, 59 * SECOND_NS] {
            let then = T0 - back;
            assert!(b.reserve(&cell, then, 1).is_err(), "back {back}");
            assert_eq!(b.remaining(&cell, then), 0);
            // The wait runs to the end of the stored window.
            assert_eq!(b.reset_after_ns(&cell, then), (w + 1) * SECOND_NS - then);
        }
        // Further back than the tolerance: a new window (the documented limit).
        assert_eq!(b.remaining(&cell, T0 - 61 * SECOND_NS), 100);
        // Hour windows tolerate one window back.
        let hour = 3600 * SECOND_NS;
        let b = Budget::new(10, hour);
        let cell = at(0);
        let start = (T0 / hour + 1) * hour;
        assert!(b.reserve(&cell, start, 10).is_ok());
        assert!(b.reserve(&cell, start - 1, 1).is_err());
        assert_eq!(b.remaining(&cell, start - hour - 1), 10);
    }

    #[test]
    fn budget_window_aliasing_after_a_long_idle_is_stricter_not_looser() {
        let b = Budget::new(100, SECOND_NS);
        let cell = at(0);
        let start = T0 / SECOND_NS * SECOND_NS;
        assert!(b.reserve(&cell, start, 100).is_ok());
        // 65,535 windows later the stored index matches again, or reads as up to 60 ahead.
        for idle in [65_535 - 60, 65_535 - 1, 65_535] {
            assert_eq!(b.remaining(&cell, start + idle * SECOND_NS), 0, "{idle}");
        }
        for idle in [1, 65_535 - 61, 65_536] {
            assert_eq!(b.remaining(&cell, start + idle * SECOND_NS), 100, "{idle}");
        }
    }

    #[test]
    fn budget_on_threads_never_overspends() {
        let b = Budget::new(10_000, 60 * SECOND_NS);
        let cell = at(0);
        let admitted = at(0);
        std::thread::scope(|s| {
            for i in 1..=4u64 {
                let (b, cell, admitted) = (&b, &cell, &admitted);
                s.spawn(move || {
                    while b.reserve(cell, T0, i).is_ok() {
                        admitted.fetch_add(i, Ordering::Relaxed);
                    }
                });
            }
        });
        let a = word(&admitted);
        assert!(a <= 10_000 && a > 10_000 - 4, "{a}");
        assert_eq!(b.used(&cell, T0), a);
    }

    // ----- Leases on threads ----------------------------------------------------------------

    #[test]
    fn leases_on_threads_admit_the_limit_at_a_frozen_clock() {
        let limit = 100_000; // a unit costs 600 µs exactly: no rounding
        let lu = lease_units(limit);
        for threads in 2..=4u64 {
            let g = Gcra::per_minute(limit);
            let tat = at(0);
            let admitted = at(0);
            std::thread::scope(|s| {
                for i in 0..threads {
                    let (g, tat, admitted) = (&g, &tat, &admitted);
                    s.spawn(move || {
                        let lease = Lease::new();
                        let n = 1 + i;
                        let mut mine = 0;
                        loop {
                            if lease.take(g, tat, T0, n, lu).is_ok() {
                                mine += n;
                                continue;
                            }
                            lease.return_all(g, tat, T0);
                            if lease.take(g, tat, T0, n, lu).is_err() {
                                break;
                            }
                            mine += n;
                        }
                        assert_eq!(lease.held(), 0);
                        admitted.fetch_add(mine, Ordering::Relaxed);
                    });
                }
            });
            let a = word(&admitted);
            assert!(a <= limit, "{threads} threads admitted {a}");
            assert!(a >= limit - threads * lu, "{threads} threads admitted {a}");
            // Every lease went back and the last refusal left less than one request's worth.
            assert!(a > limit - threads, "{threads} threads admitted {a}");
            assert_eq!(g.remaining(&tat, T0), limit - a);
        }
    }

    #[test]
    fn leases_on_threads_track_the_refill_of_a_moving_clock() {
        let limit = 60_000; // 1 unit per ms, exactly
        let lu = lease_units(limit);
        let step_ns = 1_000_000;
        let run_ns = 20 * SECOND_NS;
        for threads in 2..=4u64 {
            let g = Gcra::per_minute(limit);
            let tat = at(0);
            let clock = at(T0);
            let admitted = at(0);
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let (g, tat, clock, admitted) = (&g, &tat, &clock, &admitted);
                    s.spawn(move || {
                        let lease = Lease::new();
                        let mut mine = 0;
                        let now = loop {
                            let now = clock.fetch_add(step_ns, Ordering::Relaxed);
                            if now >= T0 + run_ns {
                                break now;
                            }
                            // Demand (3 per step) outruns the refill (1 per step).
                            if lease.take(g, tat, now, 3, lu).is_ok() {
                                mine += 3;
                            }
                        };
                        lease.return_all(g, tat, now);
                        admitted.fetch_add(mine, Ordering::Relaxed);
                    });
                }
            });
            let end = word(&clock);
            let supplied = limit + limit * (end - T0) / B;
            let a = word(&admitted);
            assert!(a <= supplied, "{threads}: admitted {a} of {supplied}");
            // Nothing vanished: admitted plus what is left is what was supplied (units wasted
            // only while the bucket was full, in the first steps).
            let left = g.remaining(&tat, end);
            assert!(a + left <= supplied, "{threads}: {a} + {left} > {supplied}");
            assert!(
                a + left + 2 * threads >= supplied,
                "{threads}: {a} + {left} ≪ {supplied}"
            );
        }
    }

    // ----- Models ---------------------------------------------------------------------------

    /// An exact token bucket: `level` is tokens × 60e9 (so a ns of refill adds `limit`).
    #[derive(Debug, Clone, Copy)]
    struct Bucket {
        limit: i128,
        level: i128,
    }

    impl Bucket {
        fn full(limit: u64) -> Bucket {
            let limit = i128::from(limit);
            Bucket {
                limit,
                level: limit * i128::from(B),
            }
        }
        fn cap(&self) -> i128 {
            self.limit * i128::from(B)
        }
        fn advance(&mut self, d_ns: u64) {
            self.level = (self.level + i128::from(d_ns) * self.limit).min(self.cap());
        }
        fn has(&self, n: u64) -> bool {
            self.level >= i128::from(n) * i128::from(B)
        }
        fn take(&mut self, n: u64) {
            self.level -= i128::from(n) * i128::from(B);
        }
        fn give_back(&mut self, n: u64) {
            self.level = (self.level + i128::from(n) * i128::from(B)).min(self.cap());
        }
        fn remaining(&self) -> i128 {
            (self.level.max(0) / i128::from(B)).min(self.limit)
        }
        /// ns until full.
        fn reset_after_ns(&self) -> i128 {
            let missing = self.cap() - self.level;
            if missing <= 0 {
                0
            } else {
                (missing + self.limit - 1) / self.limit
            }
        }
    }

    /// The GCRA cell's level in the model's units.
    fn gcra_level(limit: u64, tat: u64, now: u64) -> i128 {
        (i128::from(now) + i128::from(B) - i128::from(tat.max(now))) * i128::from(limit)
    }

    /// A unit count from raw bits: mostly small against the limit, sometimes up to (and one
    /// past) the capacity.
    fn units(raw: u64, limit: u64) -> u64 {
        let v = raw >> 2;
        match raw % 4 {
            0 => v % (limit + 2),
            1 | 2 => v % (limit / 50 + 2),
            _ => v % 3,
        }
    }

    fn limits() -> impl Strategy<Value = u64> {
        prop_oneof![1..=10u64, 1..=10_000u64, 1..=100_000_000u64]
    }

    fn advances() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0u64), 0..2 * SECOND_NS, 0..=120 * SECOND_NS]
    }

    #[derive(Debug, Clone)]
    enum GOp {
        Advance(u64),
        Take(u64),
        Charge(u64),
        GiveBack(u64),
    }

    fn gcra_ops() -> impl Strategy<Value = Vec<GOp>> {
        let op = prop_oneof![
            3 => advances().prop_map(GOp::Advance),
            5 => any::<u64>().prop_map(GOp::Take),
            1 => any::<u64>().prop_map(GOp::Charge),
            1 => any::<u64>().prop_map(GOp::GiveBack),
        ];
        prop::collection::vec(op, 1..200)
    }

    #[derive(Debug, Clone)]
    enum LOp {
        Advance(u64),
        Take(u64),
        /// Settle the oldest outstanding admission with this (raw) usage.
        Settle(u64),
        ReturnStale(u64),
        ReturnAll,
    }

    fn lease_ops() -> impl Strategy<Value = Vec<LOp>> {
        let op = prop_oneof![
            2 => advances().prop_map(LOp::Advance),
            6 => any::<u64>().prop_map(LOp::Take),
            2 => any::<u64>().prop_map(LOp::Settle),
            1 => (0..3 * SECOND_NS).prop_map(LOp::ReturnStale),
            1 => Just(LOp::ReturnAll),
        ];
        prop::collection::vec(op, 1..200)
    }

    #[derive(Debug, Clone)]
    enum BOp {
        /// Forward by raw % (3 windows + 1) ns.
        Advance(u64),
        Reserve(u64),
        /// Settle an outstanding reservation (index mod their count) with a raw usage.
        Settle(usize, u64),
        Release(usize),
    }

    fn budget_ops() -> impl Strategy<Value = Vec<BOp>> {
        let op = prop_oneof![
            2 => any::<u64>().prop_map(BOp::Advance),
            5 => any::<u64>().prop_map(BOp::Reserve),
            2 => (any::<usize>(), any::<u64>()).prop_map(|(i, a)| BOp::Settle(i, a)),
            1 => any::<usize>().prop_map(BOp::Release),
        ];
        prop::collection::vec(op, 1..200)
    }

    fn budgets() -> impl Strategy<Value = (u64, u64)> {
        (
            prop_oneof![0..=10u64, 0..=1_000u64, 0..=1_000_000_000_000u64],
            prop_oneof![
                1..=10u64,
                1..=1_000_000u64,
                Just(SECOND_NS),
                Just(60 * SECOND_NS),
                1..=86_400 * SECOND_NS
            ],
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// GCRA against an exact bucket: it never admits what the bucket would refuse, refuses
        /// only when the bucket is short or within one unit of short (its costs round up by
        /// < 1 ns per operation), and its remaining() is the bucket's or one less.
        #[test]
        fn gcra_agrees_with_an_exact_token_bucket(limit in limits(), ops in gcra_ops()) {
            let g = Gcra::per_minute(limit);
            let tat = at(0);
            let mut now = T0;
            let mut m = Bucket::full(limit);
            let mut done: i128 = 0;
            for op in ops {
                match op {
                    GOp::Advance(d) => {
                        now += d;
                        m.advance(d);
                    }
                    GOp::Take(raw) => {
                        let n = units(raw, limit);
                        match g.try_take(&tat, now, n) {
                            Ok(()) => {
                                prop_assert!(n <= limit && m.has(n), "admitted {n} beyond {m:?}");
                                m.take(n);
                            }
                            Err(wait) if n > limit => prop_assert_eq!(wait, RETRY_NEVER_NS),
                            Err(wait) => {
                                prop_assert!(
                                    m.level < (i128::from(n) + 1) * i128::from(B),
                                    "refused {n} with {m:?}"
                                );
                                // The wait is exact: enough at now + wait, not a ns earlier.
                                let probe = at(word(&tat));
                                prop_assert!(g.try_take(&probe, now + wait, n).is_ok());
                                if wait > 0 {
                                    let probe = at(word(&tat));
                                    prop_assert!(g.try_take(&probe, now + wait - 1, n).is_err());
                                }
                            }
                        }
                    }
                    GOp::Charge(raw) => {
                        let n = units(raw, limit);
                        g.charge(&tat, now, n);
                        m.take(n);
                    }
                    GOp::GiveBack(raw) => {
                        let n = units(raw, limit);
                        g.give_back(&tat, now, n);
                        m.give_back(n);
                    }
                }
                done += 1;
                let level = gcra_level(limit, word(&tat), now);
                prop_assert!(level <= m.level, "GCRA holds more than the bucket");
                prop_assert!(m.level - level <= done * i128::from(limit), "drift over 1 ns/op");
                prop_assert!(m.level - level < i128::from(B), "drift of a unit");
                let (r, mr) = (i128::from(g.remaining(&tat, now)), m.remaining());
                prop_assert!(r <= mr && mr - r <= 1, "remaining {r} vs {mr}");
                let (t, mt) = (i128::from(g.reset_after_ns(&tat, now)), m.reset_after_ns());
                prop_assert!(t >= mt && t - mt <= done, "reset {t} vs {mt}");
            }
        }

        /// Leases against the exact bucket: every unit a lease admits or holds was charged to
        /// the shared cell (the change of admitted + held at each step is exactly what the
        /// cell's level shows was taken or given back), a lease only takes what the bucket has,
        /// and admitted + held never exceeds the capacity plus the refill plus the surplus
        /// that settlements handed back.
        #[test]
        fn leases_charge_the_bucket_for_everything_they_admit(
            limit in 1..=1_000_000u64,
            lease_raw in any::<u64>(),
            ops in lease_ops(),
        ) {
            let lu = if lease_raw % 2 == 0 { lease_units(limit) } else { lease_raw % (limit + 1) };
            let g = Gcra::per_minute(limit);
            let tat = at(0);
            let lease = Lease::new();
            let mut now = T0;
            let mut m = Bucket::full(limit);
            let mut outstanding = std::collections::VecDeque::new();
            let mut admitted: i128 = 0;
            let mut settled: i128 = 0; // Σ (actual − reserved)
            let mut surplus: i128 = 0; // Σ max(reserved − actual, 0)
            let mut done: i128 = 0;
            for op in ops {
                let before = admitted + settled + i128::from(lease.held());
                match op {
                    LOp::Advance(d) => {
                        now += d;
                        m.advance(d);
                    }
                    LOp::Take(raw) => {
                        let n = units(raw, limit);
                        let held = lease.held();
                        match lease.take(&g, &tat, now, n, lu) {
                            Ok(()) => {
                                admitted += i128::from(n);
                                outstanding.push_back(n);
                            }
                            Err(_) => {
                                prop_assert_eq!(lease.held(), held, "a refusal changed the lease");
                                let short = i128::from(n - held);
                                prop_assert!(
                                    n > limit || m.level < (short + 1) * i128::from(B),
                                    "refused {short} with {m:?}"
                                );
                            }
                        }
                    }
                    LOp::Settle(raw) => {
                        if let Some(reserved) = outstanding.pop_front() {
                            let actual = units(raw, limit);
                            lease.settle(&g, &tat, now, reserved, actual, lu);
                            settled += i128::from(actual) - i128::from(reserved);
                            surplus += i128::from(reserved.saturating_sub(actual));
                        }
                    }
                    LOp::ReturnStale(age) => {
                        let held = lease.held();
                        let back = lease.return_stale(&g, &tat, now, age);
                        prop_assert!(back == 0 || back == held);
                    }
                    LOp::ReturnAll => {
                        lease.return_all(&g, &tat, now);
                        prop_assert_eq!(lease.held(), 0);
                    }
                }
                // What moved between the bucket and (admitted + held) this step.
                let delta = admitted + settled + i128::from(lease.held()) - before;
                if delta > 0 {
                    if matches!(op, LOp::Take(_)) {
                        prop_assert!(m.level >= delta * i128::from(B), "leased {delta} of {m:?}");
                    }
                    m.level -= delta * i128::from(B);
                } else {
                    m.give_back(u64::try_from(-delta).expect("small"));
                }
                prop_assert!(lease.held() <= lu, "a lease above lease_units");
                done += 1;
                let level = gcra_level(limit, word(&tat), now);
                prop_assert!(level <= m.level, "shared cell holds more than accounted");
                prop_assert!(m.level - level <= done * i128::from(limit), "units unaccounted");
                let supply = i128::from(limit) * i128::from(B)
                    + i128::from(now - T0) * i128::from(limit);
                prop_assert!(
                    (admitted + i128::from(lease.held()) - surplus) * i128::from(B) <= supply,
                    "admitted {admitted} + held {} beyond the supply", lease.held()
                );
            }
        }

        /// Budgets against a model of fixed windows (a clock that only goes forward): the same
        /// decision, wait, used, remaining and reset for every step, exactly.
        #[test]
        fn budget_agrees_with_a_fixed_window_model(
            (budget, window_ns) in budgets(),
            start in 0..86_400 * SECOND_NS,
            ops in budget_ops(),
        ) {
            let b = Budget::new(budget, window_ns);
            let cell = at(0);
            let mut now = T0 + start;
            let mut window = now / window_ns;
            let mut used: u64 = 0;
            let mut outstanding: Vec<(Reservation, u64)> = Vec::new();
            for op in ops {
                if let BOp::Advance(raw) = op {
                    now += raw % (3 * window_ns + 1);
                }
                if now / window_ns != window {
                    window = now / window_ns;
                    used = 0;
                }
                let window_end = (window + 1) * window_ns - now;
                match op {
                    BOp::Advance(_) => {}
                    BOp::Reserve(raw) => {
                        let n = units(raw, budget);
                        let got = b.reserve(&cell, now, n);
                        if n > budget {
                            prop_assert_eq!(got, Err(RETRY_NEVER_NS));
                        } else if used + n > budget {
                            prop_assert_eq!(got, Err(window_end));
                        } else {
                            let r = got.map_err(|e| TestCaseError::fail(format!("refused {e}")))?;
                            prop_assert_eq!((r.window(), r.tokens()), (window, n));
                            used += n;
                            outstanding.push((r, n));
                        }
                    }
                    BOp::Settle(i, _) | BOp::Release(i) if !outstanding.is_empty() => {
                        let (r, n) = outstanding.swap_remove(i % outstanding.len());
                        let actual = match op {
                            BOp::Settle(_, raw) => units(raw, budget),
                            _ => 0,
                        };
                        if actual >= n {
                            b.settle(&cell, now, r, actual);
                            used += actual - n;
                        } else {
                            if matches!(op, BOp::Release(_)) {
                                b.release(&cell, now, r);
                            } else {
                                b.settle(&cell, now, r, actual);
                            }
                            if r.window() == window {
                                used -= n - actual;
                            }
                        }
                    }
                    BOp::Settle(..) | BOp::Release(_) => {}
                }
                prop_assert_eq!(b.used(&cell, now), used);
                prop_assert_eq!(b.remaining(&cell, now), budget.saturating_sub(used));
                prop_assert_eq!(b.reset_after_ns(&cell, now), window_end);
            }
        }

        /// A clock that goes back (within the tolerance) never reopens a window: the tokens
        /// reserved in each window stay within the budget, and windows never go backwards.
        #[test]
        fn budget_clock_going_back_never_overspends_a_window(
            (budget, window_ns) in budgets(),
            steps in prop::collection::vec((any::<bool>(), any::<u64>(), any::<u64>()), 1..200),
        ) {
            let b = Budget::new(budget, window_ns);
            let ahead_max = b.ahead_windows_max;
            let cell = at(0);
            let mut now = T0;
            let mut high = now;
            let mut spent = std::collections::BTreeMap::<u64, u64>::new();
            let mut last_window = 0;
            for (back, d, raw) in steps {
                if back {
                    // Back, but not more than the tolerance behind the latest window seen.
                    let floor = (high / window_ns).saturating_sub(ahead_max) * window_ns;
                    now = now.saturating_sub(d % (3 * window_ns + 1)).max(floor);
                } else {
                    now += d % (3 * window_ns + 1);
                }
                high = high.max(now);
                let n = units(raw, budget);
                match b.reserve(&cell, now, n) {
                    Ok(r) => {
                        prop_assert!(r.window() >= last_window, "a window went back");
                        last_window = r.window();
                        let s = spent.entry(r.window()).or_default();
                        *s += n;
                        prop_assert!(*s <= budget, "window {} spent {s} of {budget}", r.window());
                    }
                    Err(_) => prop_assert!(n > b.remaining(&cell, now)),
                }
            }
        }
    }
}
