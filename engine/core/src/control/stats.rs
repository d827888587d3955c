//! Per-shard counters in the shared region: written by their shard (one writer per word, so a
//! plain load and store, no read-modify-write instruction), read by the admin listener and by
//! `shardgate-ctl` (any thread, any process).
//!
//! Named counters live in slots. A shard gives each upstream and route a slot when a config
//! naming it is applied, and never renames a slot, so a counter only ever grows under one
//! name across config changes (Prometheus needs that). Slot 0 is the upstream `-` (requests
//! answered before routing); the last two slots collect what does not fit, as `(other)`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::shm::{
    load_text, store_text, Region, ShardBlock, ShardInfo, StatsSlot, DURATION_BUCKETS, KIND_FREE,
    KIND_ROUTE, KIND_TENANT, KIND_UPSTREAM, REJECT_REASONS, STATUS_CLASSES,
};
use crate::config::DriverKind;
use crate::limits::{DURATION_BUCKETS_MS, STATS_SLOTS};

index_type!(
    /// A counter slot in a shard's block: an upstream's, a route's or a tenant's counters.
    StatSlot
);

/// The slot of requests refused before a route was found.
pub const SLOT_UNROUTED: StatSlot = StatSlot(0);
const SLOT_OTHER_UPSTREAM: usize = STATS_SLOTS - 2;
const SLOT_OTHER_ROUTE: usize = STATS_SLOTS - 1;
/// "No route slot" for [`ShardStats::record`].
pub const NO_SLOT: StatSlot = StatSlot(usize::MAX);

/// Why a tenant's request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Requests per minute.
    Requests = 0,
    /// Tokens per minute.
    Tokens = 1,
    Concurrency = 2,
    Budget = 3,
    /// A model the tenant is not approved for.
    Model = 4,
    /// Queued too long or the queue was full (fair sharing).
    Queue = 5,
}

impl Reject {
    pub const ALL: [Reject; REJECT_REASONS] = [
        Reject::Requests,
        Reject::Tokens,
        Reject::Concurrency,
        Reject::Budget,
        Reject::Model,
        Reject::Queue,
    ];

    /// The label in `/metrics` and ctl.
    pub fn name(self) -> &'static str {
        match self {
            Reject::Requests => "requests",
            Reject::Tokens => "tokens",
            Reject::Concurrency => "concurrency",
            Reject::Budget => "budget",
            Reject::Model => "model",
            Reject::Queue => "queue",
        }
    }
}

/// Add `n` to a counter only this thread writes.
#[inline]
pub fn add(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

#[inline]
pub fn set(c: &AtomicU64, v: u64) {
    c.store(v, Ordering::Relaxed);
}

pub fn driver_code(kind: DriverKind) -> u64 {
    match kind {
        DriverKind::IoUringTuned => 1,
        DriverKind::IoUring => 2,
        DriverKind::Epoll => 3,
    }
}

pub fn driver_name(code: u64) -> &'static str {
    match code {
        1 => "io_uring",
        2 => "io_uring (default set-up)",
        3 => "epoll",
        _ => "starting",
    }
}

/// One shard's writer of its block. Lives on the shard's thread.
#[derive(Debug)]
pub struct ShardStats {
    block: &'static ShardBlock,
    names: RefCell<HashMap<(u64, String), usize>>,
    next_free: Cell<usize>,
}

impl ShardStats {
    pub fn new(block: &'static ShardBlock) -> Self {
        let s = Self {
            block,
            names: RefCell::new(HashMap::new()),
            next_free: Cell::new(SLOT_UNROUTED.0 + 1),
        };
        name_slot(&block.slots[SLOT_UNROUTED.0], KIND_UPSTREAM, "-");
        name_slot(&block.slots[SLOT_OTHER_UPSTREAM], KIND_UPSTREAM, "(other)");
        name_slot(&block.slots[SLOT_OTHER_ROUTE], KIND_ROUTE, "(other)");
        s
    }

    pub fn info(&self) -> &'static ShardInfo {
        &self.block.info.0
    }

    /// The slot of upstream `name` (given one on first use).
    pub fn upstream_slot(&self, name: &str) -> StatSlot {
        StatSlot(self.slot(KIND_UPSTREAM, name, SLOT_OTHER_UPSTREAM))
    }

    /// The slot of tenant `name`.
    pub fn tenant_slot(&self, name: &str) -> StatSlot {
        StatSlot(self.slot(KIND_TENANT, name, SLOT_OTHER_UPSTREAM))
    }

    /// Count a refusal of a tenant's request.
    pub fn reject(&self, tenant_slot: StatSlot, why: Reject) {
        if let Some(s) = self.block.slots.get(tenant_slot.0) {
            add(&s.rejected[why as usize], 1);
        }
    }

    /// Count tokens a tenant used (settled from the upstream's usage).
    pub fn tokens(&self, tenant_slot: StatSlot, prompt: u64, completion: u64) {
        if let Some(s) = self.block.slots.get(tenant_slot.0) {
            add(&s.tokens_in, prompt);
            add(&s.tokens_out, completion);
        }
    }

    /// Count what a tenant's request cost (nanodollars), or that its model has no price.
    pub fn spend(&self, tenant_slot: StatSlot, cost_nusd: Option<u64>) {
        if let Some(s) = self.block.slots.get(tenant_slot.0) {
            match cost_nusd {
                Some(n) => add(&s.spend_nusd, n),
                None => add(&s.unpriced, 1),
            }
        }
    }

    /// Count a wait in a fair queue.
    pub fn queued(&self, tenant_slot: StatSlot, waited: Duration) {
        if let Some(s) = self.block.slots.get(tenant_slot.0) {
            add(&s.queued, 1);
            add(
                &s.queue_wait_us,
                u64::try_from(waited.as_micros()).unwrap_or(u64::MAX),
            );
        }
    }

    /// The slot of the route with prefix `prefix`.
    pub fn route_slot(&self, prefix: &str) -> StatSlot {
        StatSlot(self.slot(KIND_ROUTE, prefix, SLOT_OTHER_ROUTE))
    }

    fn slot(&self, kind: u64, name: &str, other: usize) -> usize {
        let mut names = self.names.borrow_mut();
        if let Some(&i) = names.get(&(kind, name.to_owned())) {
            return i;
        }
        let i = self.next_free.get();
        if i >= SLOT_OTHER_UPSTREAM {
            return other;
        }
        self.next_free.set(i + 1);
        name_slot(&self.block.slots[i], kind, name);
        names.insert((kind, name.to_owned()), i);
        i
    }

    /// Count one finished request: `status` 0 when no response was sent. `tenant_slot` is
    /// [`NO_SLOT`] without tenants.
    #[allow(clippy::too_many_arguments)]
    pub fn record(
        &self,
        upstream_slot: StatSlot,
        route_slot: StatSlot,
        tenant_slot: StatSlot,
        status: u16,
        bytes_in: u64,
        bytes_out: u64,
        duration: Duration,
    ) {
        let class = usize::from(status / 100).min(STATUS_CLASSES - 1);
        let us = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let bucket = bucket_of(us);
        add(&self.block.info.0.requests, 1);
        for i in [upstream_slot.0, route_slot.0, tenant_slot.0] {
            let Some(s) = self.block.slots.get(i) else {
                continue;
            };
            add(&s.requests, 1);
            add(&s.status[class], 1);
            add(&s.bytes_in, bytes_in);
            add(&s.bytes_out, bytes_out);
            add(&s.duration_buckets[bucket], 1);
            add(&s.duration_sum_us, us);
        }
    }

    /// Record a config this shard refused, with the reason.
    pub fn apply_error(&self, version: u64, reason: &str) {
        let i = self.info();
        add(&i.apply_errors, 1);
        store_text(&i.error, &i.error_len, reason.as_bytes());
        i.error_version.store(version, Ordering::Release);
    }
}

fn name_slot(s: &StatsSlot, kind: u64, name: &str) {
    store_text(&s.name, &s.name_len, name.as_bytes());
    s.kind.store(kind, Ordering::Release);
}

/// Bucket index of a duration in µs.
pub fn bucket_of(us: u64) -> usize {
    DURATION_BUCKETS_MS
        .iter()
        .position(|&ms| us <= ms * 1000)
        .unwrap_or(DURATION_BUCKETS - 1)
}

/// Counters of one name, summed over shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotTotals {
    pub requests: u64,
    pub status: [u64; STATUS_CLASSES],
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_buckets: [u64; DURATION_BUCKETS],
    pub duration_sum_us: u64,
    pub rejected: [u64; REJECT_REASONS],
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub queued: u64,
    pub queue_wait_us: u64,
    pub spend_nusd: u64,
    pub unpriced: u64,
}

impl SlotTotals {
    fn add_slot(&mut self, s: &StatsSlot) {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        self.requests += l(&s.requests);
        for (t, c) in self.status.iter_mut().zip(&s.status) {
            *t += l(c);
        }
        self.bytes_in += l(&s.bytes_in);
        self.bytes_out += l(&s.bytes_out);
        for (t, c) in self.duration_buckets.iter_mut().zip(&s.duration_buckets) {
            *t += l(c);
        }
        self.duration_sum_us += l(&s.duration_sum_us);
        for (t, c) in self.rejected.iter_mut().zip(&s.rejected) {
            *t += l(c);
        }
        self.tokens_in += l(&s.tokens_in);
        self.tokens_out += l(&s.tokens_out);
        self.queued += l(&s.queued);
        self.queue_wait_us += l(&s.queue_wait_us);
        self.spend_nusd += l(&s.spend_nusd);
        self.unpriced += l(&s.unpriced);
    }

    /// Errors: 5xx answers and requests that got no answer.
    pub fn errors(&self) -> u64 {
        self.status[0] + self.status[5]
    }

    /// The `q` quantile (0..1) of the duration, ms, as the upper bound of its bucket (None when
    /// empty; `f64::INFINITY` when in the last bucket).
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.duration_buckets.iter().sum();
        if total == 0 {
            return None;
        }
        #[allow(clippy::cast_possible_truncation, reason = "q in 0..=1: rank ≤ total")]
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.duration_buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(
                    DURATION_BUCKETS_MS
                        .get(i)
                        .map_or(f64::INFINITY, |&ms| ms as f64),
                );
            }
        }
        None
    }

    /// `self - earlier`, counter by counter (for rates).
    pub fn since(&self, earlier: &SlotTotals) -> SlotTotals {
        let mut d = self.clone();
        d.requests = d.requests.saturating_sub(earlier.requests);
        for (a, b) in d.status.iter_mut().zip(&earlier.status) {
            *a = a.saturating_sub(*b);
        }
        d.bytes_in = d.bytes_in.saturating_sub(earlier.bytes_in);
        d.bytes_out = d.bytes_out.saturating_sub(earlier.bytes_out);
        for (a, b) in d.duration_buckets.iter_mut().zip(&earlier.duration_buckets) {
            *a = a.saturating_sub(*b);
        }
        d.duration_sum_us = d.duration_sum_us.saturating_sub(earlier.duration_sum_us);
        for (a, b) in d.rejected.iter_mut().zip(&earlier.rejected) {
            *a = a.saturating_sub(*b);
        }
        d.tokens_in = d.tokens_in.saturating_sub(earlier.tokens_in);
        d.tokens_out = d.tokens_out.saturating_sub(earlier.tokens_out);
        d.queued = d.queued.saturating_sub(earlier.queued);
        d.queue_wait_us = d.queue_wait_us.saturating_sub(earlier.queue_wait_us);
        d.spend_nusd = d.spend_nusd.saturating_sub(earlier.spend_nusd);
        d.unpriced = d.unpriced.saturating_sub(earlier.unpriced);
        d
    }
}

/// One shard's info block, copied.
#[derive(Debug, Clone, Default)]
pub struct ShardView {
    pub id: usize,
    pub running: bool,
    pub core: Option<u64>,
    pub driver: &'static str,
    pub started_unix_ms: u64,
    pub config_version: u64,
    pub config_applied_unix_ms: u64,
    pub ring_cursor: u64,
    pub ring_lag_frames: u64,
    pub ring_dropped: u64,
    pub apply_errors: u64,
    pub error_version: u64,
    pub error: String,
    pub connections: u64,
    pub connections_accepted: u64,
    pub requests: u64,
    pub upstream_connects: u64,
    pub access_log_dropped: u64,
    pub requests_inflight: u64,
    pub requests_shed: u64,
    pub connections_refused: u64,
}

/// Everything the region's counters say, summed by name.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    pub shards: Vec<ShardView>,
    pub upstreams: BTreeMap<String, SlotTotals>,
    pub routes: BTreeMap<String, SlotTotals>,
    pub tenants: BTreeMap<String, SlotTotals>,
}

/// Read every shard's block.
pub fn read(region: &Region) -> Totals {
    let mut t = Totals::default();
    for id in 0..region.shards() {
        let b = region.shard(id);
        let i = &b.info.0;
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let core = l(&i.core);
        t.shards.push(ShardView {
            id,
            running: l(&i.running) == 1,
            core: (core != u64::MAX).then_some(core),
            driver: driver_name(l(&i.driver)),
            started_unix_ms: l(&i.started_unix_ms),
            config_version: i.config_version.load(Ordering::Acquire),
            config_applied_unix_ms: l(&i.config_applied_unix_ms),
            ring_cursor: l(&i.ring_cursor),
            ring_lag_frames: l(&i.ring_lag_frames),
            ring_dropped: l(&i.ring_dropped),
            apply_errors: l(&i.apply_errors),
            error_version: i.error_version.load(Ordering::Acquire),
            error: load_text(&i.error, &i.error_len),
            connections: l(&i.connections),
            connections_accepted: l(&i.connections_accepted),
            requests: l(&i.requests),
            upstream_connects: l(&i.upstream_connects),
            access_log_dropped: l(&i.access_log_dropped),
            requests_inflight: l(&i.requests_inflight),
            requests_shed: l(&i.requests_shed),
            connections_refused: l(&i.connections_refused),
        });
        for s in &b.slots {
            let kind = s.kind.load(Ordering::Acquire);
            let map = match kind {
                KIND_FREE => continue,
                KIND_UPSTREAM => &mut t.upstreams,
                KIND_ROUTE => &mut t.routes,
                KIND_TENANT => &mut t.tenants,
                _ => continue,
            };
            let name = load_text(&s.name, &s.name_len);
            let e = map.entry(name).or_default();
            e.add_slot(s);
        }
    }
    // Names that exist but saw nothing are noise (the reserved "(other)" slots).
    t.upstreams.retain(|n, s| s.requests > 0 || n != "(other)");
    t.routes.retain(|n, s| s.requests > 0 || n != "(other)");
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_read_back_summed_by_name() {
        let r: &'static Region = Box::leak(Box::new(Region::anonymous(2).expect("anon")));
        let a = ShardStats::new(r.shard(0));
        let b = ShardStats::new(r.shard(1));
        let (ua, ra) = (a.upstream_slot("up"), a.route_slot("/v1/"));
        // Shard 1 meets the names in another order: other slots, same totals.
        let (rb, ub) = (b.route_slot("/v1/"), b.upstream_slot("up"));
        a.record(ua, ra, NO_SLOT, 200, 10, 20, Duration::from_micros(800));
        b.record(ub, rb, NO_SLOT, 503, 1, 2, Duration::from_millis(7));
        a.record(
            SLOT_UNROUTED,
            NO_SLOT,
            NO_SLOT,
            404,
            5,
            6,
            Duration::from_secs(100),
        );
        let t = read(r);
        let up = &t.upstreams["up"];
        assert_eq!(up.requests, 2);
        assert_eq!(up.status[2], 1);
        assert_eq!(up.status[5], 1);
        assert_eq!((up.bytes_in, up.bytes_out), (11, 22));
        assert_eq!(up.duration_buckets[0], 1); // ≤ 1 ms
        assert_eq!(up.duration_buckets[3], 1); // ≤ 10 ms
        assert_eq!(up.errors(), 1);
        assert_eq!(t.routes["/v1/"].requests, 2);
        assert_eq!(t.upstreams["-"].status[4], 1);
        assert_eq!(t.upstreams["-"].duration_buckets[DURATION_BUCKETS - 1], 1);
        assert!(!t.upstreams.contains_key("(other)"));
        assert_eq!(t.shards[0].requests, 2);
        assert_eq!(t.shards[1].requests, 1);
        assert_eq!(up.quantile_ms(0.5), Some(1.0));
        assert_eq!(up.quantile_ms(0.99), Some(10.0));
    }

    #[test]
    fn slots_run_out_into_other_and_names_stay_put() {
        let r: &'static Region = Box::leak(Box::new(Region::anonymous(1).expect("anon")));
        let s = ShardStats::new(r.shard(0));
        let first = s.upstream_slot("u0");
        for i in 0..STATS_SLOTS + 10 {
            let _ = s.route_slot(&format!("/r{i}"));
        }
        assert_eq!(s.upstream_slot("u0"), first);
        assert_eq!(s.upstream_slot("new"), StatSlot(SLOT_OTHER_UPSTREAM));
        assert_eq!(s.route_slot("/late"), StatSlot(SLOT_OTHER_ROUTE));
        s.record(
            StatSlot(SLOT_OTHER_UPSTREAM),
            StatSlot(SLOT_OTHER_ROUTE),
            NO_SLOT,
            200,
            0,
            0,
            Duration::ZERO,
        );
        let t = read(r);
        assert_eq!(t.upstreams["(other)"].requests, 1);
        assert_eq!(t.routes["(other)"].requests, 1);
    }
}
