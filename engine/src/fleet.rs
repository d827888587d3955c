//! The fleet agent (`[fleet]`, decision 0013): one thread of the engine, never a shard, that
//! trades this instance's share of every tenant's and key's rpm, tpm, token budget and USD
//! budget with Redis.
//!
//! The fleet's bucket of each limit is in Redis (`sg:lim:<name>:<kind>`: a GCRA bucket for a
//! per-minute limit, a counter per window for a budget; one script call per sync for every
//! limit that needs one: [`SYNC_SCRIPT`]). The agent leases units from
//! it into the limit's credit cells in the shared region (`shm::CreditCells`); the shards take
//! from the credit as they take from the host's own bucket, only when a shard's lease runs out
//! (`limit::Credit`). Each sync, per limit, the agent:
//! - nets the shards' overdraft (debt) against the credit and charges what is left to Redis;
//! - tops the credit up to what this instance uses in [`LEASE_HORIZON_MS`] (at least one
//!   lease) when it has fallen below half of that, as far as the fleet's bucket has room;
//! - gives the credit back when the limit saw no use for [`IDLE_MS`]: an idle instance holds
//!   nothing;
//! - allows the shards an overdraft (1 % of the limit, at least a lease and the largest request
//!   refused) while the fleet's bucket had room at the last sync, so a first request is not
//!   refused for want of a lease; none once it was empty.
//!
//! Admitted work stays within the fleet's limit plus one overdraft per instance (credit is
//! counted in Redis when it is leased). The request path never waits on Redis: when Redis is unreachable or slow (a
//! round trip over `shardgate_core::fleet::REDIS_TIMEOUT_MS`), the agent tops the credits up from a bucket of its
//! own at the limit divided by the instances it last saw alive, and says so once
//! (`shardgate_fleet_redis_up 0`). Units granted meanwhile are never charged to Redis later.
//!
//! A tenant's `max_concurrency` (requests in flight) is not leased: slots come back. Each
//! instance holds a share of it, the cap in the tenant's `shm::ConcurrencyCells` the shards
//! admit under (`limit::Concurrency::acquire_capped`), and says in Redis what it holds
//! (`sg:conc:<tenant>`, a hash with one field per instance). Each sync, per tenant with
//! `max_concurrency` whose share needs a trade ([`plan_slots`]), the agent:
//! - asks for what the instance has in flight plus headroom ([`CONCURRENCY_HEADROOM_DIVISOR`])
//!   plus the requests refused for want of a share since the last sync ([`concurrency_want`]),
//!   lowering its cap to that first when it asks for less than it has;
//! - is granted what it asks as far as the slots other instances hold leave room, and no more
//!   than its fair share while the instances together ask for more than the limit (the limit
//!   filled like water over what each asks: one asking little gets it all, the others share
//!   the rest evenly), and raises or lowers its cap to the grant;
//! - holds in Redis the larger of the grant and what it may still have in flight (its cap
//!   before the grant, or more, for requests admitted before a lower cap), so the fields of
//!   all instances sum to at most the limit while Redis keeps them, and their requests in
//!   flight too.
//!
//! A field not written for `INSTANCE_TTL_MS`, or of an instance gone from the heartbeat set,
//! is dropped (a killed instance's slots come back to the others within that); an instance
//! writes each of its fields at least every [`CONCURRENCY_REFRESH_MS`]. While Redis is down,
//! the cap is the limit divided by the instances last seen. The first sync that reaches Redis
//! again, or that follows one that found Redis had lost the fleet's state, asks for no more
//! than the instance holds, and writes every field: the others learn what it holds before it
//! grows.
//!
//! [`plan`] and [`plan_slots`] are the decisions, I/O-free and unit-tested; `run` does the I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, FleetConfig};
use crate::control::shm::{ConcurrencyCells, CreditCells, Region};
use crate::control::unix_ms;
use crate::limit::{lease_units, Concurrency, Gcra};
pub use shardgate_core::fleet::INSTANCE_TTL_MS;
use shardgate_core::fleet::{Kind, INSTANCES_KEY};

/// How much use the credit covers: the agent tops it up to what this instance took in this
/// long (at its recent rate), ms.
pub const LEASE_HORIZON_MS: u64 = 500;
/// A limit unused this long gives its credit back, ms.
pub const IDLE_MS: u64 = 1_000;
/// The fleet state's epoch in Redis, made by [`SYNC_SCRIPT`] when missing (a new one: Redis
/// lost the fleet's state); the usage thread reads it too.
pub const EPOCH_KEY: &str = "sg:epoch";
/// While Redis is down, how often the agent tries to reach it again, ms.
pub const RECONNECT_MS: u64 = 1_000;
/// An instance asks for a tenant's `max_concurrency` divided by this, at least one slot, beyond
/// what it has in flight: room for the requests that arrive before its next sync.
pub const CONCURRENCY_HEADROOM_DIVISOR: u64 = 10;
/// An instance writes its share of a tenant's `max_concurrency` to Redis at least this often,
/// changed or not: the others drop a share not written for `INSTANCE_TTL_MS`, ms.
pub const CONCURRENCY_REFRESH_MS: u64 = 1_000;
const _: () = assert!(CONCURRENCY_REFRESH_MS * 2 <= INSTANCE_TTL_MS);
const _: () = assert!(CONCURRENCY_HEADROOM_DIVISOR > 0);

/// The config the agent works from: the newest good one, left here by the builder; and where
/// the fleet's tenant store stands, in Redis and here ([`crate::fleet_store`]).
#[derive(Debug, Default)]
pub struct Latest {
    #[allow(
        clippy::disallowed_types,
        reason = "written by the builder thread, read by the fleet agent; never a shard"
    )]
    config: std::sync::Mutex<Option<Arc<Config>>>,
    /// The store's version in Redis plus one (0: Redis has none) at the agent's last sync, and
    /// when that sync began (unix ms; 0: never).
    pub store_seen: AtomicU64,
    pub store_seen_ms: AtomicU64,
    /// The version the builder holds plus one, as of its last exchange with Redis (0: it has
    /// not had one), and when that exchange began (unix ms).
    pub store_held: AtomicU64,
    pub store_held_ms: AtomicU64,
}

impl Latest {
    pub fn set(&self, c: Arc<Config>) {
        *self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
    }

    pub fn get(&self) -> Option<Arc<Config>> {
        self.config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// What the agent keeps of one limit between syncs.
#[derive(Debug, Default)]
pub struct Track {
    /// The cells' `used` and `wanted` at the last sync.
    last_used: u64,
    last_wanted: u64,
    /// Units per second, smoothed.
    rate: u64,
    /// When the limit was last used or wanted, ms.
    active_ms: u64,
    /// The bucket granting credit while Redis is down (its TAT; a budget's window word).
    local_tat: AtomicU64,
    /// A budget's window when it was last traded: credit leased in a window is not used in
    /// the next.
    window: u64,
    /// Traded with the fleet's bucket at least once: from then on only a trade sets the
    /// overdraft (one lease while the bucket had room, none once it was empty).
    traded: bool,
    /// This instance's use in each of the last 60 seconds (made when first used), and the
    /// second the last entry is for: what it charges again to a Redis that lost its state.
    minute: Option<Box<[u64; 60]>>,
    second: u64,
    /// A budget's use by this instance in the current window.
    window_used: u64,
    /// The local bucket was charged with this instance's last minute of use when the current
    /// outage began.
    local_seeded: bool,
}

impl Track {
    /// Count `n` units used at `now_ms` (a budget's in `window`).
    fn record(&mut self, n: u64, now_ms: u64) {
        if n == 0 {
            return;
        }
        let sec = now_ms / 1000;
        let ring = self.minute.get_or_insert_with(|| Box::new([0; 60]));
        // Seconds passed since the last entry are zero.
        for s in (self.second + 1)..=sec.min(self.second + 60) {
            ring[usize::try_from(s % 60).unwrap_or(0)] = 0;
        }
        self.second = self.second.max(sec);
        let at = usize::try_from(sec % 60).unwrap_or(0);
        ring[at] = ring[at].saturating_add(n);
        self.window_used = self.window_used.saturating_add(n);
    }

    /// What this instance used that the fleet's bucket should still count: the last minute's
    /// use for a per-minute limit, the window's for a budget.
    fn still_counted(&self, budget: bool, now_ms: u64) -> u64 {
        if budget {
            return self.window_used;
        }
        let Some(ring) = &self.minute else { return 0 };
        let sec = now_ms / 1000;
        (0..60u64)
            .filter(|back| {
                sec >= *back && sec - back + 60 > self.second && sec - back <= self.second
            })
            .map(|back| ring[usize::try_from((sec - back) % 60).unwrap_or(0)])
            .sum()
    }
}

/// One limit's trade with the fleet's bucket this sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Trade {
    /// Units to lease (granted as far as the bucket has room).
    pub want: u64,
    /// Units the shards took beyond their credit, to be counted.
    pub charge: u64,
    /// Units given back (the credit of an idle limit).
    pub give: u64,
}

impl Trade {
    fn is_empty(&self) -> bool {
        self.want == 0 && self.charge == 0 && self.give == 0
    }
}

/// Decide one limit's trade (`limit`: per minute, or per budget window) from its cells at
/// `now_ms`, `dt_ms` after the last sync; the cells' debt and idle credit are taken out of them here (what is charged or
/// given back). I/O-free apart from the cells.
pub fn plan(limit: u64, c: &CreditCells, t: &mut Track, now_ms: u64, dt_ms: u64) -> Trade {
    let used = c.used.load(Ordering::Relaxed);
    let wanted = c.wanted.load(Ordering::Relaxed);
    let taken = used.wrapping_sub(t.last_used);
    t.record(taken, now_ms);
    let demand = taken.saturating_add(wanted.wrapping_sub(t.last_wanted));
    (t.last_used, t.last_wanted) = (used, wanted);
    if demand > 0 {
        t.active_ms = now_ms;
    }
    let per_s = demand.saturating_mul(1000) / dt_ms.max(1);
    t.rate = if t.rate == 0 {
        per_s
    } else {
        (t.rate.saturating_mul(7) + per_s.saturating_mul(3)) / 10
    };
    // Debt netted against the credit first; what is left is charged.
    let debt = c.debt.load(Ordering::Relaxed);
    let netted = take_up_to(&c.credit, debt);
    let charge = debt - netted;
    c.debt.fetch_sub(debt, Ordering::Relaxed);
    let mut trade = Trade {
        charge,
        ..Trade::default()
    };
    if now_ms.saturating_sub(t.active_ms) >= IDLE_MS {
        trade.give = c.credit.swap(0, Ordering::Relaxed);
        t.rate = 0;
        return trade;
    }
    // At least the largest request refused for want of credit, so it fits next time.
    let target = target_units(limit, t.rate)
        .max(c.wanted_max.load(Ordering::Relaxed))
        .min(limit);
    let credit = c.credit.load(Ordering::Relaxed);
    if credit < target / 2 + 1 {
        trade.want = target - credit.min(target);
    }
    trade
}

/// The overdraft the shards may run up between syncs while the fleet's bucket has room: 1 %
/// of the limit, at least one lease and the largest request refused for want of credit (so a
/// first request after idling is admitted before the agent's next lease).
pub fn overdraft(limit: u64, c: &CreditCells) -> u64 {
    (limit / 100)
        .max(lease_units(limit))
        .max(c.wanted_max.load(Ordering::Relaxed))
        .min(limit)
}

/// What the credit should hold: this instance's use over [`LEASE_HORIZON_MS`], at least one
/// lease, at most a tenth of the limit (a lease per instance is the slack of every limit).
pub fn target_units(limit: u64, rate_per_s: u64) -> u64 {
    let lease = lease_units(limit);
    let horizon = rate_per_s.saturating_mul(LEASE_HORIZON_MS).div_ceil(1000);
    horizon.clamp(lease, (limit / 10).max(lease))
}

/// What an instance asks of a tenant's `max_concurrency` (`max`): the requests it has in
/// flight (`in_use`), a headroom of `max / CONCURRENCY_HEADROOM_DIVISOR` (at least one slot),
/// and the requests refused for want of a share since the last sync (`refused`: demand the
/// headroom did not cover); at most `max`.
pub fn concurrency_want(max: u64, in_use: u64, refused: u64) -> u64 {
    let headroom = (max / CONCURRENCY_HEADROOM_DIVISOR).max(1);
    in_use
        .saturating_add(headroom)
        .saturating_add(refused)
        .min(max)
}

/// One tenant's share of `max_concurrency` traded this sync.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotTrade {
    /// Slots asked for.
    pub want: u64,
    /// The most this instance may have in flight until its cap is next changed: the count
    /// when the agent looked or its cap, whichever is larger (at most the limit). Its field in
    /// Redis never holds less.
    pub holding: u64,
}

/// What the agent keeps of one tenant's share between syncs.
#[derive(Debug, Default)]
pub struct SlotTrack {
    /// What the last trade sent and was granted (`None`: no grant in force: not traded yet,
    /// Redis down, or its grant not used), the limit it was for, and when (unix ms).
    sent: SlotTrade,
    granted: Option<u64>,
    max: u64,
    sent_ms: u64,
}

/// Decide the trade of a tenant's share of `max` (its `max_concurrency`) from its cells (`c`,
/// and `inflight`, its requests in flight on this instance) at `now_ms`; `None` when its share
/// needs none (unchanged, granted in full, written less than [`CONCURRENCY_REFRESH_MS`] ago).
/// `hold`: the first sync after Redis was unreachable or lost the fleet's state, which asks for
/// no more than the instance holds and always trades. Takes the refused count, and lowers the
/// cap to the want before reading what is in flight when the want is lower (so a request
/// admitted meanwhile is in the count or under the new cap: `Concurrency::cap_then_count`).
pub fn plan_slots(
    max: u64,
    c: &ConcurrencyCells,
    inflight: &AtomicU64,
    t: &SlotTrack,
    now_ms: u64,
    hold: bool,
) -> Option<SlotTrade> {
    let refused = c.refused.swap(0, Ordering::Relaxed);
    // The agent is the cap's only writer. 0: not set yet, the limit alone holds.
    let cap = c.cap.load(Ordering::Relaxed);
    let slots = cap.checked_sub(1).unwrap_or(max).min(max);
    let in_use = Concurrency::in_flight(inflight);
    let want = if hold && cap > 0 {
        slots.max(in_use).min(max)
    } else {
        concurrency_want(max, in_use, refused)
    };
    let (slots, in_use) = if want < slots {
        let n = Concurrency::cap_then_count(&c.cap, inflight, Some(want + 1));
        (want, n)
    } else {
        (slots, Concurrency::cap_then_count(&c.cap, inflight, None))
    };
    let trade = SlotTrade {
        want,
        holding: in_use.max(slots).min(max),
    };
    let settled = t.granted == Some(want)
        && t.sent == trade
        && t.max == max
        && refused == 0
        && now_ms.saturating_sub(t.sent_ms) < CONCURRENCY_REFRESH_MS;
    (hold || !settled).then_some(trade)
}

/// While Redis is down: a tenant's share of `max` (its `max_concurrency`), the limit divided by
/// the `instances` last seen, at least one slot.
pub fn local_slots(max: u64, instances: u64) -> u64 {
    (max / instances.max(1)).max(1).min(max)
}

/// Take up to `n` from `cell`; how much was taken.
fn take_up_to(cell: &AtomicU64, n: u64) -> u64 {
    let mut got = 0;
    let _ = cell.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
        got = c.min(n);
        Some(c - got)
    });
    got
}

/// The script every sync runs once: the instance's heartbeat (`KEYS[1]`, a sorted set of
/// instances by last sync; `ARGV[1]` its id, `ARGV[2]` the TTL in ms), then `ARGV[3]` limits,
/// each a further key with five arguments: its amount, its window in ms (0: per minute), units
/// wanted, charged, given back; then the further keys left are tenants' shares of
/// `max_concurrency`, each with three arguments: the limit, the slots wanted, the slots held
/// ([`SlotTrade`]). A per-minute limit is a GCRA theoretical arrival time in µs on Redis's
/// clock, expiring once full; a budget is the units used in the current window (the key with
/// the window's index appended; not for Redis Cluster), expiring after two windows; a share of
/// `max_concurrency` is a hash of `held,wanted,written ms` by instance id (fields older than
/// the TTL or of an instance gone from the heartbeat set dropped), expiring after two TTLs.
/// Returns the instances alive, the fleet state's epoch (`sg:epoch`, made when missing: a new
/// one tells the agents Redis lost the state), the fleet's tenant store's version plus one (0:
/// none; [`crate::fleet_store::VERSION_KEY`]), then per limit the units granted and the room
/// left, then per share the slots granted.
pub const SYNC_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now_ms, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms - ttl)
local epoch = redis.call('GET', 'sg:epoch')
if not epoch then
  epoch = tostring(now)
  redis.call('SET', 'sg:epoch', epoch)
end
local store = redis.call('GET', 'sg:store:version')
if store then store = tonumber(store) + 1 else store = 0 end
local out = { redis.call('ZCARD', KEYS[1]), tonumber(epoch), store }
local period = 60000000
local limits = tonumber(ARGV[3])
for i = 2, limits + 1 do
  local b = 3 + (i - 2) * 5
  local limit = tonumber(ARGV[b + 1])
  local window = tonumber(ARGV[b + 2])
  local want = tonumber(ARGV[b + 3])
  local charge = tonumber(ARGV[b + 4])
  local give = tonumber(ARGV[b + 5])
  local granted, room
  if window == 0 then
    local per = period / limit
    local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
    if tat < now then tat = now end
    tat = tat + (charge - give) * per
    if tat < now then tat = now end
    room = math.floor((now + period - tat) / per + 1e-6)
    if room < 0 then room = 0 end
    granted = math.min(want, room)
    tat = tat + granted * per
    redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', 120000)
  else
    local key = KEYS[i] .. ':' .. math.floor(now_ms / window)
    local used = tonumber(redis.call('GET', key) or '0') + charge - give
    if used < 0 then used = 0 end
    room = limit - used
    if room < 0 then room = 0 end
    granted = math.min(want, room)
    redis.call('SET', key, string.format('%.0f', used + granted), 'PX', window * 2)
  end
  out[#out + 1] = granted
  out[#out + 1] = room - granted
end
local first = limits + 2
for i = first, #KEYS do
  local b = 3 + limits * 5 + (i - first) * 3
  local max = tonumber(ARGV[b + 1])
  local want = tonumber(ARGV[b + 2])
  local holding = tonumber(ARGV[b + 3])
  local held = 0
  local wants = { want }
  local fields = redis.call('HGETALL', KEYS[i])
  for f = 1, #fields, 2 do
    local other = fields[f]
    if other ~= ARGV[1] then
      local h, w, at = string.match(fields[f + 1], '^(%d+),(%d+),(%d+)$')
      if h and now_ms - tonumber(at) < ttl and redis.call('ZSCORE', KEYS[1], other) then
        held = held + tonumber(h)
        wants[#wants + 1] = tonumber(w)
      else
        redis.call('HDEL', KEYS[i], other)
      end
    end
  end
  table.sort(wants)
  local rest, level = max, max
  for k = 1, #wants do
    local share = math.ceil(rest / (#wants - k + 1))
    if wants[k] > share then
      level = share
      break
    end
    rest = rest - wants[k]
  end
  local granted = math.max(0, math.min(want, level, max - held))
  local row = string.format('%d,%d,%d', math.max(granted, holding), want, now_ms)
  redis.call('HSET', KEYS[i], ARGV[1], row)
  redis.call('PEXPIRE', KEYS[i], ttl * 2)
  out[#out + 1] = granted
end
return out
";

/// One limit the agent trades: the name of its cells and which of its limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LimitId {
    name: String,
    kind: Kind,
}

/// A limit's size: `amount` per minute (`window_ms` 0) or per fixed window of `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Amount {
    amount: u64,
    window_ms: u64,
    /// A budget's spend counted before (`spent_usd`): less `carried` in the window holding the
    /// ms before `carried_until_ms`, until then (as the shards' `Budget::with_carried`).
    carried: u64,
    carried_until_ms: u64,
}

impl Amount {
    /// The amount in force at `now_ms`: less the carried units while they count.
    fn at(self, now_ms: u64) -> Amount {
        let counts = now_ms < self.carried_until_ms
            && now_ms.checked_div(self.window_ms)
                == self
                    .carried_until_ms
                    .saturating_sub(1)
                    .checked_div(self.window_ms);
        if counts && self.window_ms > 0 {
            Amount {
                amount: self.amount.saturating_sub(self.carried).max(1),
                ..self
            }
        } else {
            self
        }
    }
}

/// The limits of `cfg` that hold across the fleet: tenants' and keys' rpm, tpm and budgets, by
/// the name of their cells in the shared table.
fn limits_of(cfg: &Config) -> Vec<(LimitId, Amount)> {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    let mut out = Vec::new();
    // A limit, with the spend carried into it (a USD budget's only).
    let mut push = |name: &str,
                    kind: Kind,
                    amount: Option<u64>,
                    window_ms: u64,
                    carried: Option<crate::tenant::Carried>| {
        if let Some(amount) = amount {
            let name = name.to_owned();
            let amount = Amount {
                amount,
                window_ms,
                carried: carried.map_or(0, |c| c.uusd),
                carried_until_ms: carried.map_or(0, |c| c.until_unix_ms),
            };
            out.push((LimitId { name, kind }, amount));
        }
    };
    for t in &cfg.tenants {
        push(&t.name, Kind::Rpm, t.rpm, 0, None);
        push(&t.name, Kind::Tpm, t.tpm, 0, None);
        if let Some(b) = t.budget {
            push(&t.name, Kind::Budget, Some(b.tokens), ms(b.window), None);
        }
        if let Some(b) = t.budget_usd {
            let window = ms(b.window);
            push(&t.name, Kind::BudgetUsd, Some(b.uusd), window, b.carried);
        }
    }
    for k in &cfg.key_table.limited {
        let name = crate::tenant::key_cells_name(&k.limits.lineage);
        let l = &k.limits;
        push(&name, Kind::Rpm, l.rpm, 0, None);
        push(&name, Kind::Tpm, l.tpm, 0, None);
        let window = ms(cfg.budget_window(k.tenant));
        push(&name, Kind::BudgetUsd, l.budget_uusd, window, l.carried);
    }
    out
}

/// A tenant with `max_concurrency`, as the agent trades its share: its name, the limit, and its
/// cells in the shared table (its share, and its requests in flight on this instance).
struct SlotTenant {
    name: String,
    max: u64,
    cells: &'static ConcurrencyCells,
    inflight: &'static AtomicU64,
}

/// The tenants of `cfg` with `max_concurrency`, on their cells in `region` (claimed by name);
/// none when the engine is not in a fleet.
fn slot_tenants_of(cfg: &Config, region: &'static Region) -> Vec<SlotTenant> {
    let tenants = cfg
        .tenants
        .iter()
        .filter_map(|t| Some((t.name.clone(), t.max_concurrency?)));
    // A key's own max_concurrency, on its lineage's cells (as its rates and budget).
    let keys = cfg.key_table.limited.iter().filter_map(|k| {
        let name = crate::tenant::key_cells_name(&k.limits.lineage);
        Some((name, k.limits.max_concurrency?))
    });
    let mut out = Vec::new();
    for (name, max) in tenants.chain(keys) {
        let Some((slot, tenant)) = region.tenant_slot(&name) else {
            continue;
        };
        let Some(fleet) = region.fleet(slot) else {
            continue;
        };
        out.push(SlotTenant {
            name,
            max,
            cells: &fleet.concurrency,
            inflight: &tenant.inflight,
        });
    }
    out
}

/// What one sync with Redis answered: per limit traded the units granted and the room left,
/// per share of `max_concurrency` the slots granted (`None`: not to be used, Redis having lost
/// the fleet's state).
#[derive(Debug, Default)]
struct Synced {
    limits: Vec<(u64, u64)>,
    slots: Vec<Option<u64>>,
}

/// The agent's connection to Redis, and whether it is up.
struct Link {
    fleet: FleetConfig,
    conn: Option<redis::Connection>,
    script: redis::Script,
    /// When the link was last tried while down.
    tried: Option<Instant>,
    up: Option<bool>,
    /// The fleet state's epoch in Redis (made by the first agent to find none): a new one
    /// means Redis lost the state (restarted empty).
    epoch: Option<u64>,
    /// Set by an exchange that found a new epoch (`Some(true)`), for the next sync.
    lost: Option<bool>,
}

impl Link {
    fn connect(&mut self) -> Result<(), String> {
        self.conn = Some(shardgate_core::fleet::connect(&self.fleet)?);
        Ok(())
    }

    /// Log a change of state, once.
    fn mark(&mut self, up: bool, region: &Region, why: &str) {
        if self.up != Some(up) {
            if up {
                tracing::info!(
                    "fleet: Redis at {} is reachable: limits are shared",
                    self.fleet.url
                );
            } else {
                tracing::warn!(
                    "fleet: Redis at {} is unreachable ({why}): each limit is enforced here at \
                     its share (the limit divided by the instances last seen)",
                    self.fleet.url
                );
            }
            self.up = Some(up);
        }
        region
            .header()
            .fleet_redis_up
            .store(u64::from(up), Ordering::Relaxed);
    }
}

/// Check that Redis is reachable with `fleet`'s settings (start-up and `--check`): which of
/// the connection, the password or the database failed.
pub fn check(fleet: &FleetConfig) -> Result<(), String> {
    shardgate_core::fleet::connect(fleet).map(|_| ())
}

/// Start the agent's thread.
pub fn spawn(
    fleet: FleetConfig,
    region: &'static Region,
    latest: Arc<Latest>,
    instance_id: String,
) -> std::io::Result<()> {
    region.header().fleet.store(1, Ordering::Relaxed);
    std::thread::Builder::new()
        .name("fleet-agent".into())
        .spawn(move || run(fleet, region, &latest, &instance_id))?;
    Ok(())
}

fn run(fleet: FleetConfig, region: &'static Region, latest: &Latest, id: &str) {
    let sync = Duration::from_millis(fleet.sync_ms);
    let mut link = Link {
        fleet,
        conn: None,
        script: redis::Script::new(SYNC_SCRIPT),
        tried: None,
        up: None,
        epoch: None,
        lost: None,
    };
    let mut tracks: HashMap<LimitId, Track> = HashMap::new();
    let mut cfg: Option<Arc<Config>> = None;
    let mut limits: Vec<(LimitId, Amount, usize)> = Vec::new();
    let mut slot_tenants: Vec<SlotTenant> = Vec::new();
    let mut slot_tracks: HashMap<String, SlotTrack> = HashMap::new();
    let mut instances: u64 = 1;
    let mut last = unix_ms();
    // Redis lost the fleet's state at the last sync: count this instance's use again.
    let mut reseed = false;
    // The last sync did not reach Redis, or found it had lost the fleet's state: ask for no
    // more slots than held until every share is written again.
    let mut hold = false;
    loop {
        let started = Instant::now();
        // A new config: the limits it has, each on its slot's cells (claimed by name).
        if let Some(new) = latest.get() {
            if cfg.as_ref().is_none_or(|c| !Arc::ptr_eq(c, &new)) {
                limits = limits_of(&new)
                    .into_iter()
                    .filter_map(|(id, l)| Some((id.clone(), l, region.tenant_slot(&id.name)?.0)))
                    .collect();
                tracks.retain(|id, _| limits.iter().any(|(l, _, _)| l == id));
                let now_slots = slot_tenants_of(&new, region);
                // A tenant whose max_concurrency went: its cap is unset (its share in Redis
                // lapses after INSTANCE_TTL_MS), and set again from scratch if it comes back.
                for gone in slot_tenants
                    .iter()
                    .filter(|o| !now_slots.iter().any(|n| n.name == o.name))
                {
                    Concurrency::cap_then_count(&gone.cells.cap, gone.inflight, Some(0));
                }
                slot_tenants = now_slots;
                slot_tracks.retain(|name, _| slot_tenants.iter().any(|t| &t.name == name));
                cfg = Some(new);
            }
        }
        let now = unix_ms();
        let dt = now.saturating_sub(last).max(1);
        last = now;
        let mut trades = Vec::new();
        for (id, limit, slot) in &limits {
            let Some(cells) = region.fleet(*slot) else {
                continue;
            };
            let limit = &limit.at(now);
            let c = id.kind.cells(cells);
            let t = tracks.entry(id.clone()).or_default();
            // A budget's new window: what was leased in the last one is not used in it.
            if let Some(window) = now.checked_div(limit.window_ms) {
                if window != t.window {
                    c.credit.store(0, Ordering::Relaxed);
                    t.window = window;
                    t.window_used = 0;
                }
            }
            let mut trade = plan(limit.amount, c, t, now, dt);
            if reseed {
                // Redis lost the fleet's state: count again what this instance used that the
                // bucket still should, and drop the credit the lost state granted (unused, it
                // would be spent twice), to lease again from the new state.
                c.credit.store(0, Ordering::Relaxed);
                trade.charge = trade
                    .charge
                    .saturating_add(t.still_counted(limit.window_ms > 0, now));
            }
            if !trade.is_empty() {
                trades.push((id.clone(), *limit, *slot, trade));
            }
        }
        let mut slot_trades = Vec::new();
        for st in &slot_tenants {
            let t = slot_tracks.entry(st.name.clone()).or_default();
            if let Some(trade) = plan_slots(st.max, st.cells, st.inflight, t, now, hold) {
                slot_trades.push((st, trade));
            }
        }
        if reseed {
            tracing::warn!(
                "fleet: Redis lost the fleet's state (restarted empty?): this instance's use \
                 of {} limit(s) is counted again ({} units)",
                trades.len(),
                trades.iter().map(|(_, _, _, t)| t.charge).sum::<u64>()
            );
            reseed = false;
        }
        let shared = exchange(
            &mut link,
            region,
            id,
            &trades,
            &slot_trades,
            &mut instances,
            latest,
        );
        if let Some(lost) = link.lost.take() {
            reseed = lost;
        }
        hold = shared.is_none() || reseed;
        match shared.as_ref() {
            Some(s) => set_slots(&s.slots, &slot_trades, &mut slot_tracks, now),
            None => set_local_slots(&slot_tenants, &mut slot_tracks, instances),
        }
        for (i, (lid, limit, slot, trade)) in trades.iter().enumerate() {
            let Some(cells) = region.fleet(*slot) else {
                continue;
            };
            let c = lid.kind.cells(cells);
            let (granted, room) = match &shared {
                Some(got) => got.limits.get(i).copied().unwrap_or((0, 0)),
                None => {
                    // Redis is down: this instance's share, from a bucket of its own.
                    let t = tracks.entry(lid.clone()).or_default();
                    let credit = c.credit.load(Ordering::Relaxed);
                    (local_share(*limit, instances, t, (trade, credit), now), 0)
                }
            };
            if shared.is_some() {
                // The next outage's bucket starts from this instance's use then.
                tracks.entry(lid.clone()).or_default().local_seeded = false;
            }
            c.credit.fetch_add(granted, Ordering::Relaxed);
            // An overdraft of one lease while the fleet's bucket has room; none once it is
            // empty (until a trade finds room again), or while Redis is down (the local share
            // is exact).
            let over = if shared.is_some() && room > 0 {
                overdraft(limit.amount, c)
            } else {
                0
            };
            c.overdraft_max.store(over, Ordering::Relaxed);
            tracks.entry(lid.clone()).or_default().traded = true;
        }
        // A limit never traded yet may overdraw one lease, so its first request finds room
        // before its first lease; a traded one keeps what its last trade set.
        for (id, limit, slot) in &limits {
            if let Some(cells) = region.fleet(*slot) {
                let traded = tracks.get(id).is_some_and(|t| t.traded);
                if !traded && link.up == Some(true) {
                    let c = id.kind.cells(cells);
                    c.overdraft_max
                        .store(overdraft(limit.at(now).amount, c), Ordering::Relaxed);
                }
            }
        }
        let h = region.header();
        h.fleet_instances.store(instances, Ordering::Relaxed);
        h.fleet_synced_unix_ms.store(unix_ms(), Ordering::Relaxed);
        if let Some(rest) = sync.checked_sub(started.elapsed()) {
            // The agent's own thread: sleeping stalls no shard.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(rest);
        }
    }
}

/// Set the caps of the shares of `max_concurrency` traded in a sync at `now_ms` to what was
/// `granted` (in the order of `trades`).
fn set_slots(
    granted: &[Option<u64>],
    trades: &[(&SlotTenant, SlotTrade)],
    tracks: &mut HashMap<String, SlotTrack>,
    now_ms: u64,
) {
    for (k, (st, trade)) in trades.iter().enumerate() {
        let t = tracks.entry(st.name.clone()).or_default();
        let got = granted.get(k).copied().flatten();
        if let Some(g) = got {
            Concurrency::cap_then_count(&st.cells.cap, st.inflight, Some(g.min(st.max) + 1));
        }
        *t = SlotTrack {
            sent: *trade,
            granted: got,
            max: st.max,
            sent_ms: now_ms,
        };
    }
}

/// While Redis is down: every tenant's cap to its share of `max_concurrency`, the limit divided
/// by the `instances` last seen ([`local_slots`]).
fn set_local_slots(
    tenants: &[SlotTenant],
    tracks: &mut HashMap<String, SlotTrack>,
    instances: u64,
) {
    for st in tenants {
        let share = local_slots(st.max, instances);
        Concurrency::cap_then_count(&st.cells.cap, st.inflight, Some(share + 1));
        if let Some(t) = tracks.get_mut(&st.name) {
            t.granted = None;
        }
    }
}

/// While Redis is down: what `trade` is granted from this instance's own bucket of `limit`,
/// at its share (the limit divided by the `instances` last seen). The share counts what this
/// instance used already: the last minute's use (charged to its bucket when the outage began)
/// for a per-minute limit; the window's use and the credit it holds for a budget.
fn local_share(
    limit: Amount,
    instances: u64,
    t: &mut Track,
    (trade, credit): (&Trade, u64),
    now_ms: u64,
) -> u64 {
    let share = (limit.amount / instances.max(1)).max(1);
    let now_ns = now_ms.saturating_mul(1_000_000);
    if limit.window_ms == 0 {
        let g = Gcra::per_minute(share);
        if !t.local_seeded {
            t.local_tat.store(0, Ordering::Relaxed);
            g.charge(&t.local_tat, now_ns, t.still_counted(false, now_ms));
            t.local_seeded = true;
        }
        g.charge(&t.local_tat, now_ns, trade.charge);
        g.give_back(&t.local_tat, now_ns, trade.give);
        let granted = trade.want.min(g.remaining(&t.local_tat, now_ns));
        let _ = g.try_take(&t.local_tat, now_ns, granted);
        granted
    } else {
        let spent = t.window_used.saturating_add(credit);
        trade.want.min(share.saturating_sub(spent))
    }
}

/// Run the sync script for `trades` and `slot_trades` (shares of `max_concurrency`; the
/// heartbeat alone when there are none): what was granted, or `None` when Redis is down.
fn exchange(
    link: &mut Link,
    region: &Region,
    id: &str,
    trades: &[(LimitId, Amount, usize, Trade)],
    slot_trades: &[(&SlotTenant, SlotTrade)],
    instances: &mut u64,
    latest: &Latest,
) -> Option<Synced> {
    if link.conn.is_none() {
        if link
            .tried
            .is_some_and(|t| t.elapsed() < Duration::from_millis(RECONNECT_MS))
        {
            return None;
        }
        link.tried = Some(Instant::now());
        if let Err(why) = link.connect() {
            link.mark(false, region, &why);
            return None;
        }
    }
    let mut inv = link.script.prepare_invoke();
    inv.key(INSTANCES_KEY)
        .arg(id)
        .arg(INSTANCE_TTL_MS)
        .arg(trades.len());
    for (lid, limit, _, t) in trades {
        inv.key(format!("sg:lim:{}:{}", lid.name, lid.kind.as_str()))
            .arg(limit.amount)
            .arg(limit.window_ms)
            .arg(t.want)
            .arg(t.charge)
            .arg(t.give);
    }
    for (st, t) in slot_trades {
        inv.key(format!("sg:conc:{}", st.name))
            .arg(st.max)
            .arg(t.want)
            .arg(t.holding);
    }
    let started = Instant::now();
    let started_ms = unix_ms();
    let conn = link.conn.as_mut()?;
    match inv.invoke::<Vec<u64>>(conn) {
        Ok(out) => {
            region.header().fleet_redis_rtt_us.store(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            link.mark(true, region, "");
            *instances = out.first().copied().unwrap_or(1).max(1);
            let epoch = out.get(1).copied();
            let lost = link.epoch.is_some() && epoch != link.epoch;
            link.epoch = epoch;
            let store = out.get(2).copied().unwrap_or(0);
            latest.store_seen.store(store, Ordering::Relaxed);
            latest.store_seen_ms.store(started_ms, Ordering::Release);
            let split = (3 + trades.len() * 2).min(out.len());
            let granted = out[3.min(split)..split].chunks(2).map(|p| {
                // Granted by a Redis that lost the fleet's state: not used (they stay counted
                // there), until this instance's use is counted again next sync.
                if lost {
                    (0, 0)
                } else {
                    (p[0], p.get(1).copied().unwrap_or(0))
                }
            });
            let slots = (0..slot_trades.len()).map(|k| {
                // Likewise a share granted by a Redis that lost the state: the cap stays until
                // the next sync, which asks for no more than it holds.
                out.get(split + k).copied().filter(|_| !lost)
            });
            let synced = Synced {
                limits: granted.collect(),
                slots: slots.collect(),
            };
            if lost {
                link.lost = Some(true);
            }
            Some(synced)
        }
        Err(e) => {
            link.conn = None;
            link.tried = Some(Instant::now());
            link.mark(false, region, &e.to_string());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_script_names_the_keys_the_other_threads_read() {
        for key in [EPOCH_KEY, crate::fleet_store::VERSION_KEY] {
            assert!(SYNC_SCRIPT.contains(&format!("'{key}'")), "{key}");
        }
    }

    #[test]
    fn a_budgets_carried_spend_lowers_the_fleets_amount_in_its_window_until_its_end() {
        let cfg = shardgate_core::config::Config::from_toml(
            "[server]\nadmin_listen = \"off\"\n\
             [[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n\
             [[tenants]]\nname = \"t\"\nkeys = [\"sk-t\"]\nbudget_usd = 10.0\n\
             budget_window = \"1000s\"\nspent_usd = 4.0\nspent_until_unix_ms = 3400000\n",
        )
        .expect("valid");
        let limits = limits_of(&cfg);
        let (_, a) = limits
            .iter()
            .find(|(id, _)| id.kind == Kind::BudgetUsd)
            .expect("the USD budget");
        // Window 3 (3,000 s to 4,000 s) until 3,400 s: $6 left to the fleet; then $10.
        assert_eq!(a.at(3_000_000).amount, 6_000_000);
        assert_eq!(a.at(3_399_999).amount, 6_000_000);
        assert_eq!(a.at(3_400_000).amount, 10_000_000);
        assert_eq!(a.at(2_999_999).amount, 10_000_000);
        assert_eq!(a.at(5_000_000).amount, 10_000_000);
    }

    fn cells() -> CreditCells {
        CreditCells {
            credit: AtomicU64::new(0),
            debt: AtomicU64::new(0),
            used: AtomicU64::new(0),
            overdraft_max: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            wanted_max: AtomicU64::new(0),
        }
    }

    #[test]
    fn a_busy_limit_is_topped_up_to_its_rate_and_an_idle_one_gives_its_credit_back() {
        let c = cells();
        let mut t = Track::default();
        // 600 per minute: a lease is one unit. Nothing used yet: nothing traded.
        let first = plan(600, &c, &mut t, 10_000, 20);
        assert_eq!(first, Trade::default());
        // 4 requests were refused for want of credit in 20 ms: 200/s, so 100 over the horizon,
        // capped at a tenth of the limit (60).
        c.wanted.fetch_add(4, Ordering::Relaxed);
        let t2 = plan(600, &c, &mut t, 10_020, 20);
        assert_eq!(t2.want, 60);
        c.credit.store(60, Ordering::Relaxed);
        // Three taken as an overdraft beyond the credit: netted against it, nothing charged.
        c.debt.store(3, Ordering::Relaxed);
        c.used.fetch_add(3, Ordering::Relaxed);
        let t3 = plan(600, &c, &mut t, 10_040, 20);
        assert_eq!((t3.charge, c.credit.load(Ordering::Relaxed)), (0, 57));
        assert_eq!(c.debt.load(Ordering::Relaxed), 0);
        // A debt beyond the credit is charged.
        c.credit.store(0, Ordering::Relaxed);
        c.debt.store(5, Ordering::Relaxed);
        let t4 = plan(600, &c, &mut t, 10_060, 20);
        assert_eq!(t4.charge, 5);
        // Idle for IDLE_MS: the credit goes back.
        c.credit.store(40, Ordering::Relaxed);
        let idle = plan(600, &c, &mut t, 10_060 + IDLE_MS, 20);
        assert_eq!((idle.give, idle.want), (40, 0));
        assert_eq!(c.credit.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn what_is_counted_again_is_the_last_minutes_use_or_the_windows() {
        let mut t = Track::default();
        let s = |sec: u64| sec * 1000;
        t.record(5, s(100));
        t.record(7, s(130));
        t.record(1, s(130) + 500);
        assert_eq!(t.still_counted(false, s(130)), 13);
        assert_eq!(t.still_counted(false, s(159)), 13);
        // Second 100 is past the minute at 160; 130's stays until 190.
        assert_eq!(t.still_counted(false, s(160)), 8);
        assert_eq!(t.still_counted(false, s(190)), 0);
        // A slot reused after a minute holds only its new second's use.
        t.record(2, s(220));
        assert_eq!(t.still_counted(false, s(220)), 2);
        // A budget counts its window's use.
        assert_eq!(t.still_counted(true, s(220)), 15);
    }

    fn slot_cells(cap: u64) -> ConcurrencyCells {
        ConcurrencyCells {
            cap: AtomicU64::new(cap),
            refused: AtomicU64::new(0),
        }
    }

    #[test]
    fn an_instance_asks_for_its_use_plus_headroom_plus_what_was_refused_within_the_limit() {
        // A tenth of the limit as headroom, at least one slot.
        assert_eq!(concurrency_want(8, 0, 0), 1);
        assert_eq!(concurrency_want(8, 3, 0), 4);
        assert_eq!(concurrency_want(100, 30, 0), 40);
        assert_eq!(concurrency_want(100, 30, 5), 45);
        // Never more than the limit, whatever the counts (a scribbled cell included).
        assert_eq!(concurrency_want(8, 3, 20), 8);
        assert_eq!(concurrency_want(8, u64::MAX, u64::MAX), 8);
        assert_eq!(concurrency_want(0, 0, 0), 0);
    }

    #[test]
    fn a_share_asked_below_the_cap_lowers_it_first_and_holds_what_is_in_flight() {
        let inflight = AtomicU64::new(0);
        // Not set yet (0): the limit alone held, so the first trade lowers the cap to the want.
        let c = slot_cells(0);
        let t = SlotTrack::default();
        let got = plan_slots(8, &c, &inflight, &t, 1_000, false).expect("a first trade");
        assert_eq!(
            got,
            SlotTrade {
                want: 1,
                holding: 1
            }
        );
        assert_eq!(c.cap.load(Ordering::Relaxed), 2);
        // Busy with 6 of a cap of 7 slots, 3 refused: asks for all 8, holds the 7 it may use.
        let c = slot_cells(8);
        inflight.store(6, Ordering::Relaxed);
        c.refused.store(3, Ordering::Relaxed);
        let got = plan_slots(8, &c, &inflight, &t, 1_000, false).expect("a trade");
        assert_eq!(
            got,
            SlotTrade {
                want: 8,
                holding: 7
            }
        );
        assert_eq!(c.refused.load(Ordering::Relaxed), 0, "taken");
        assert_eq!(c.cap.load(Ordering::Relaxed), 8, "not lowered");
        // Quieter, 2 in flight: the cap goes down to 3 slots before asking, and it holds the
        // 3 (requests admitted before the cap went down are in the count it read).
        inflight.store(2, Ordering::Relaxed);
        let got = plan_slots(8, &c, &inflight, &t, 1_000, false).expect("a trade");
        assert_eq!(
            got,
            SlotTrade {
                want: 3,
                holding: 3
            }
        );
        assert_eq!(c.cap.load(Ordering::Relaxed), 4);
        // More in flight than the new cap (a grant lowered it): it holds them all.
        inflight.store(6, Ordering::Relaxed);
        let c = slot_cells(3);
        let got = plan_slots(8, &c, &inflight, &t, 1_000, false).expect("a trade");
        assert_eq!(got.holding, 6);
    }

    #[test]
    fn a_settled_share_is_traded_again_only_when_it_changes_or_grows_stale() {
        let inflight = AtomicU64::new(2);
        let c = slot_cells(4);
        let trade = SlotTrade {
            want: 3,
            holding: 3,
        };
        let t = SlotTrack {
            sent: trade,
            granted: Some(3),
            max: 8,
            sent_ms: 1_000,
        };
        assert_eq!(plan_slots(8, &c, &inflight, &t, 1_020, false), None);
        // Written CONCURRENCY_REFRESH_MS ago: written again, lest the others drop it.
        assert_eq!(
            plan_slots(8, &c, &inflight, &t, 1_000 + CONCURRENCY_REFRESH_MS, false),
            Some(trade)
        );
        // A refusal, a new count, a new limit, or a grant short of the want: traded.
        c.refused.store(1, Ordering::Relaxed);
        assert!(plan_slots(8, &c, &inflight, &t, 1_020, false).is_some());
        inflight.store(1, Ordering::Relaxed);
        assert!(plan_slots(8, &c, &inflight, &t, 1_020, false).is_some());
        // (That one lowered the cap: back to 3 slots.)
        inflight.store(2, Ordering::Relaxed);
        c.cap.store(4, Ordering::Relaxed);
        assert!(plan_slots(9, &c, &inflight, &t, 1_020, false).is_some());
        let short = SlotTrack {
            granted: Some(2),
            ..t
        };
        assert!(plan_slots(8, &c, &inflight, &short, 1_020, false).is_some());
    }

    #[test]
    fn after_redis_was_away_a_share_asks_for_what_it_holds_and_no_more() {
        // At its share while Redis was down (4 of 8 on two instances), 1 in flight, 9 refused:
        // it asks for the 4 it holds, not 8, and trades though nothing changed.
        let inflight = AtomicU64::new(1);
        let c = slot_cells(local_slots(8, 2) + 1);
        c.refused.store(9, Ordering::Relaxed);
        let t = SlotTrack::default();
        let got = plan_slots(8, &c, &inflight, &t, 1_000, true).expect("always traded");
        assert_eq!(
            got,
            SlotTrade {
                want: 4,
                holding: 4
            }
        );
        assert_eq!(c.cap.load(Ordering::Relaxed), 5, "kept");
        // More in flight than the share: it holds them.
        inflight.store(6, Ordering::Relaxed);
        let got = plan_slots(8, &c, &inflight, &t, 1_000, true).expect("always traded");
        assert_eq!((got.want, got.holding), (6, 6));
    }

    #[test]
    fn with_redis_down_a_share_is_the_limit_over_the_instances_at_least_one() {
        assert_eq!(local_slots(8, 2), 4);
        assert_eq!(local_slots(8, 3), 2);
        assert_eq!(local_slots(8, 100), 1);
        assert_eq!(local_slots(8, 0), 8);
        assert_eq!(local_slots(0, 1), 0);
    }

    #[test]
    fn the_credit_covers_the_horizon_within_a_lease_and_a_tenth_of_the_limit() {
        assert_eq!(target_units(600, 0), 1);
        assert_eq!(target_units(600, 10), 5);
        assert_eq!(target_units(600, 1_000_000), 60);
        assert_eq!(target_units(6_000_000, 1_000), 6_000);
        assert_eq!(
            target_units(6_000_000, 100),
            6_000,
            "at least a lease (L/1000)"
        );
    }
}
