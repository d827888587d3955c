//! The fleet agent (`[fleet]`, decision 0013): one thread of the engine, never a shard, that
//! trades this instance's share of every tenant's and key's rpm and tpm with Redis.
//!
//! The fleet's bucket of each limit is a GCRA bucket in Redis (`sg:lim:<name>:rpm`, one script
//! call per sync for every limit that needs one: [`SYNC_SCRIPT`]). The agent leases units from
//! it into the limit's credit cells in the shared region (`shm::CreditCells`); the shards take
//! from the credit as they take from the host's own bucket, only when a shard's lease runs out
//! (`limit::Credit`). Each sync, per limit, the agent:
//! - nets the shards' overdraft (debt) against the credit and charges what is left to Redis;
//! - tops the credit up to what this instance uses in [`LEASE_HORIZON_MS`] (at least one
//!   lease) when it has fallen below half of that, as far as the fleet's bucket has room;
//! - gives the credit back when the limit saw no use for [`IDLE_MS`]: an idle instance holds
//!   nothing;
//! - allows the shards an overdraft of one lease while the fleet's bucket had room at the last
//!   sync (so a first request is not refused for want of a lease), none once it was empty.
//!
//! Admitted work stays within the fleet's limit plus, per instance, its credit and one
//! overdraft. The request path never waits on Redis: when Redis is unreachable or slow (a
//! round trip over `shardgate_core::fleet::REDIS_TIMEOUT_MS`), the agent tops the credits up from a bucket of its
//! own at the limit divided by the instances it last saw alive, and says so once
//! (`shardgate_fleet_redis_up 0`). Units granted meanwhile are never charged to Redis later.
//!
//! [`plan`] is the decision, I/O-free and unit-tested; `run` does the I/O.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, FleetConfig};
use crate::control::shm::{CreditCells, Region};
use crate::control::unix_ms;
use crate::limit::{lease_units, Gcra};
use shardgate_core::fleet::{INSTANCES_KEY, INSTANCE_TTL_MS};

/// How much use the credit covers: the agent tops it up to what this instance took in this
/// long (at its recent rate), ms.
pub const LEASE_HORIZON_MS: u64 = 500;
/// A limit unused this long gives its credit back, ms.
pub const IDLE_MS: u64 = 1_000;
/// While Redis is down, how often the agent tries to reach it again, ms.
pub const RECONNECT_MS: u64 = 1_000;

/// The config the agent works from: the newest good one, left here by the builder.
#[derive(Debug, Default)]
pub struct Latest {
    #[allow(
        clippy::disallowed_types,
        reason = "written by the builder thread, read by the fleet agent; never a shard"
    )]
    config: std::sync::Mutex<Option<Arc<Config>>>,
}

impl Latest {
    pub fn set(&self, c: Arc<Config>) {
        *self
            .config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(c);
    }

    fn get(&self) -> Option<Arc<Config>> {
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
    /// The bucket granting credit while Redis is down (its TAT).
    local_tat: AtomicU64,
    /// Traded with the fleet's bucket at least once: from then on only a trade sets the
    /// overdraft (one lease while the bucket had room, none once it was empty).
    traded: bool,
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

/// Decide one limit's trade (`limit` per minute) from its cells at `now_ms`, `dt_ms` after the
/// last sync; the cells' debt and idle credit are taken out of them here (what is charged or
/// given back). I/O-free apart from the cells.
pub fn plan(limit: u64, c: &CreditCells, t: &mut Track, now_ms: u64, dt_ms: u64) -> Trade {
    let used = c.used.load(Ordering::Relaxed);
    let wanted = c.wanted.load(Ordering::Relaxed);
    let demand = used.wrapping_sub(t.last_used) + wanted.wrapping_sub(t.last_wanted);
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
    let target = target_units(limit, t.rate);
    let credit = c.credit.load(Ordering::Relaxed);
    if credit < target / 2 + 1 {
        trade.want = target - credit.min(target);
    }
    trade
}

/// What the credit should hold: this instance's use over [`LEASE_HORIZON_MS`], at least one
/// lease, at most a tenth of the limit (a lease per instance is the slack of every limit).
pub fn target_units(limit: u64, rate_per_s: u64) -> u64 {
    let lease = lease_units(limit);
    let horizon = rate_per_s.saturating_mul(LEASE_HORIZON_MS).div_ceil(1000);
    horizon.clamp(lease, (limit / 10).max(lease))
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
/// instances by last sync; `ARGV[1]` its id, `ARGV[2]` the TTL in ms), then for each further key,
/// a limit's bucket, four arguments: the limit per minute, units wanted, charged, given back.
/// The bucket is a GCRA theoretical arrival time in µs on Redis's clock, expiring once full.
/// Returns the instances alive, then per limit the units granted and the room left.
pub const SYNC_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local ttl = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], math.floor(now / 1000), ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', math.floor(now / 1000) - ttl)
local out = { redis.call('ZCARD', KEYS[1]) }
local period = 60000000
for i = 2, #KEYS do
  local b = 2 + (i - 2) * 4
  local limit = tonumber(ARGV[b + 1])
  local want = tonumber(ARGV[b + 2])
  local charge = tonumber(ARGV[b + 3])
  local give = tonumber(ARGV[b + 4])
  local per = period / limit
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0')
  if tat < now then tat = now end
  tat = tat + (charge - give) * per
  if tat < now then tat = now end
  local room = math.floor((now + period - tat) / per + 1e-6)
  if room < 0 then room = 0 end
  local granted = math.min(want, room)
  tat = tat + granted * per
  redis.call('SET', KEYS[i], string.format('%.0f', tat), 'PX', 120000)
  out[#out + 1] = granted
  out[#out + 1] = room - granted
end
return out
";

/// One limit the agent trades: the name of its cells and which of its two limits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct LimitId {
    name: String,
    tpm: bool,
}

/// The limits of `cfg` that hold across the fleet: tenants' and keys' rpm and tpm, by the
/// name of their cells in the shared table.
fn limits_of(cfg: &Config) -> Vec<(LimitId, u64)> {
    let mut out = Vec::new();
    let mut push = |name: String, rpm: Option<u64>, tpm: Option<u64>| {
        if let Some(l) = rpm {
            out.push((
                LimitId {
                    name: name.clone(),
                    tpm: false,
                },
                l,
            ));
        }
        if let Some(l) = tpm {
            out.push((LimitId { name, tpm: true }, l));
        }
    };
    for t in &cfg.tenants {
        push(t.name.clone(), t.rpm, t.tpm);
    }
    for k in &cfg.key_table.limited {
        let name = format!("\u{1}key/{}", crate::tenant::hex_bytes(&k.limits.lineage));
        push(name, k.limits.rpm, k.limits.tpm);
    }
    out
}

/// The agent's connection to Redis, and whether it is up.
struct Link {
    fleet: FleetConfig,
    conn: Option<redis::Connection>,
    script: redis::Script,
    /// When the link was last tried while down.
    tried: Option<Instant>,
    up: Option<bool>,
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
    };
    let mut tracks: HashMap<LimitId, Track> = HashMap::new();
    let mut cfg: Option<Arc<Config>> = None;
    let mut limits: Vec<(LimitId, u64, usize)> = Vec::new();
    let mut instances: u64 = 1;
    let mut last = unix_ms();
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
            let c = if id.tpm { &cells.tpm } else { &cells.rpm };
            let t = tracks.entry(id.clone()).or_default();
            let trade = plan(*limit, c, t, now, dt);
            if !trade.is_empty() {
                trades.push((id.clone(), *limit, *slot, trade));
            }
        }
        let shared = exchange(&mut link, region, id, &trades, &mut instances);
        for (i, (lid, limit, slot, trade)) in trades.iter().enumerate() {
            let Some(cells) = region.fleet(*slot) else {
                continue;
            };
            let c = if lid.tpm { &cells.tpm } else { &cells.rpm };
            let lease = lease_units(*limit);
            let (granted, room) = match &shared {
                Some(got) => got.get(i).copied().unwrap_or((0, 0)),
                None => {
                    // Redis is down: this instance's share, from a bucket of its own.
                    let share = (*limit / instances.max(1)).max(1);
                    let g = Gcra::per_minute(share);
                    let t = tracks.entry(lid.clone()).or_default();
                    let now_ns = now.saturating_mul(1_000_000);
                    g.charge(&t.local_tat, now_ns, trade.charge);
                    g.give_back(&t.local_tat, now_ns, trade.give);
                    let granted = trade.want.min(g.remaining(&t.local_tat, now_ns));
                    let _ = g.try_take(&t.local_tat, now_ns, granted);
                    (granted, 0)
                }
            };
            c.credit.fetch_add(granted, Ordering::Relaxed);
            // An overdraft of one lease while the fleet's bucket has room; none once it is
            // empty (until a trade finds room again), or while Redis is down (the local share
            // is exact).
            let over = if shared.is_some() && room > 0 {
                lease
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
                let c = if id.tpm { &cells.tpm } else { &cells.rpm };
                let traded = tracks.get(id).is_some_and(|t| t.traded);
                if !traded && link.up == Some(true) {
                    c.overdraft_max
                        .store(lease_units(*limit), Ordering::Relaxed);
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

/// Run the sync script for `trades` (the heartbeat alone when there are none): per trade the
/// units granted and the room left, or `None` when Redis is down.
fn exchange(
    link: &mut Link,
    region: &Region,
    id: &str,
    trades: &[(LimitId, u64, usize, Trade)],
    instances: &mut u64,
) -> Option<Vec<(u64, u64)>> {
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
    inv.key(INSTANCES_KEY).arg(id).arg(INSTANCE_TTL_MS);
    for (lid, limit, _, t) in trades {
        let kind = if lid.tpm { "tpm" } else { "rpm" };
        inv.key(format!("sg:lim:{}:{kind}", lid.name))
            .arg(*limit)
            .arg(t.want)
            .arg(t.charge)
            .arg(t.give);
    }
    let started = Instant::now();
    let conn = link.conn.as_mut()?;
    match inv.invoke::<Vec<u64>>(conn) {
        Ok(out) => {
            region.header().fleet_redis_rtt_us.store(
                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                Ordering::Relaxed,
            );
            link.mark(true, region, "");
            *instances = out.first().copied().unwrap_or(1).max(1);
            Some(
                out.get(1..)
                    .unwrap_or(&[])
                    .chunks(2)
                    .map(|p| (p[0], p.get(1).copied().unwrap_or(0)))
                    .collect(),
            )
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

    fn cells() -> CreditCells {
        CreditCells {
            credit: AtomicU64::new(0),
            debt: AtomicU64::new(0),
            used: AtomicU64::new(0),
            overdraft_max: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
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
