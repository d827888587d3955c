//! Load balancing within one model group: which deployment gets the next attempt, how each
//! deployment's latency is measured, and when a failing one is taken out of rotation.
//!
//! One [`Group`] per model group per shard, on the shard's thread (`Cell`s, not `Sync`): the
//! counts and estimates are this shard's view, and no shard waits on another to pick. I/O-free:
//! every function takes `now_ns` (nanoseconds on one monotonic clock the shard uses for every
//! call; any origin) and the caller's random source; nothing here reads a clock, allocates after
//! [`Group::new`], or panics, on any input (times that go backwards included: elapsed time
//! saturates at 0, deadlines never move earlier).
//!
//! # A request's life
//! 1. [`Group::pick`] names a deployment, skipping those the request already tried (`exclude`),
//!    those at their `max_outstanding` on this shard, and ejected ones. `None`: nothing is
//!    eligible; the caller goes on to the next fallback group.
//! 2. [`Group::start`] counts the attempt as outstanding and returns an [`Attempt`] guard.
//! 3. [`Attempt::finish`] reports the [`Outcome`]: the latency estimate and the health state
//!    learn from it. An `Attempt` dropped unfinished (the client went away, the request was
//!    cancelled) only gives its outstanding count back: no latency sample, no health verdict.
//! 4. When [`Outcome::is_retryable`] and no byte went to the client yet, the caller picks again
//!    with the tried deployment added to `exclude`.
//!
//! # Strategies
//! - [`Strategy::RoundRobin`]: the next eligible deployment after the last one picked.
//! - [`Strategy::Weighted`]: nginx's smooth weighted round robin over the eligible ones
//!   (weights 5:1:1 give `a a b a c a a`); a weight of 0 counts as 1.
//! - [`Strategy::LeastOutstanding`]: fewest requests in flight on this shard, ties broken at
//!   random (so an idle group does not send everything to deployment 0).
//! - [`Strategy::Latency`]: power of two choices: two distinct random eligible deployments,
//!   the one with the lower `latency estimate × (outstanding + 1)` wins (the first drawn on a
//!   tie); a single eligible deployment is taken.
//!
//! # The latency estimate: peak EWMA
//! As in Finagle and linkerd (tower's `PeakEwma`): a sample above the estimate replaces it at
//! once; a sample below pulls it down with weight `1 − e^(−Δt/decay)`, `Δt` the time since the
//! last update. The estimate starts at `initial_latency`, so a new deployment is tried. A
//! success's sample is the latency its caller reports (time to first byte for streams).
//!
//! While a deployment has nothing outstanding, the estimate it is compared by decays toward 0
//! by `e^(−idle/decay)` (computed at pick time, not stored), as tower's does: a deployment that
//! lost every comparison since one slow answer is tried again after a few `decay`s, so a
//! recovered deployment is found again. One that has requests outstanding keeps its estimate
//! (requests that hang must not make it look fast).
//!
//! Failures: a health failure (below) is a penalty sample of `max(elapsed since start,
//! min(2 × estimate, 30 s), estimate)`, so a failure never lowers the estimate and each one
//! doubles it (up to 30 s, or to the time the attempt took when longer). Without it, a
//! deployment that fails fast (connection refused in 1 ms) would look like the fastest and
//! draw the traffic until ejected. Other statuses (4xx but 429) leave the estimate alone: the
//! time to an error says little about the time to an answer.
//!
//! # Passive health
//! An outcome is a *health failure* when it is a connect failure, a timeout, a reset, a 429 or
//! a 5xx ([`Outcome::is_health_failure`]); every other outcome (successes, other statuses:
//! the deployment is up and answering) is a *health success*. A healthy deployment is ejected
//! when
//! - `eject_after` health failures come in a row (0 turns this rule off), or
//! - of the last `window` outcomes (at most 64), at least `window_min` were seen and at least
//!   `failure_rate_pct` % were health failures (0 % turns this rule off).
//!
//! Such an ejection lasts `min(cooldown × 2^k, cooldown_max)`, `k` the ejections since the
//! back-off was last reset (so 5 s, 10 s, 20 s, ... 5 min by default); `k` is reset by
//! `reset_after` health successes in a row. A 429 or 503 carrying `Retry-After` (capped at 1
//! hour) ejects too, for at least that long: on its own (no threshold crossed) for exactly that
//! long and without growing `k`; with a threshold crossed, for the longer of the two.
//!
//! When the cool-down has passed the deployment is *half-open*: the next pick takes it first,
//! whatever the strategy (one request per cool-down, so recovery is noticed at once), and the
//! attempt started on it is the *probe*; while the probe is out, no other request is sent there.
//! The probe's health success readmits it (with a clean failure record; `k` is kept until the
//! success streak resets it); a health failure ejects it again with the doubled cool-down; a
//! cancelled probe leaves it half-open. Outcomes of attempts that started before an ejection
//! change nothing but the latency estimate (and a `Retry-After` on them can extend the
//! ejection), so one burst of failures ejects once, not once per request that was in flight.
//!
//! # Never every deployment
//! When every deployment of the group is ejected (not admitted: cooling down, or half-open with
//! its probe out), [`Group::pick`] still answers: among those neither excluded nor at their cap,
//! the *least bad*, the one whose cool-down ends first (a half-open one first of all), then the
//! fewest failures in its window, then the lowest index. An attempt started on an ejected
//! deployment whose probe is not out is its probe, so the first success readmits it. A caller
//! that would rather use a fallback group while this one is all down asks
//! [`Group::has_admitted`] first.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

/// The strategies and the most deployments a group may have are the config's
/// ([`crate::models`]): `[[models]]` entries are validated against them.
pub use crate::models::{Strategy, UnknownStrategy, DEPLOYMENTS_MAX};
/// The strategy a group gets when the config names none.
pub const STRATEGY_DEFAULT: Strategy = Strategy::Latency;
/// Default time constant of the latency estimate's decay, ms.
pub const DECAY_MS_DEFAULT: u64 = 10_000;
/// Smallest decay time constant used (smaller ones are raised to it), ns.
pub const DECAY_NS_MIN: u64 = 1_000_000;
/// Default latency estimate of a deployment not measured yet, ms.
pub const INITIAL_LATENCY_MS_DEFAULT: u64 = 100;
/// Largest latency sample taken (longer ones count as this), ns: one hour.
pub const LATENCY_NS_MAX: u64 = 3_600_000_000_000;
/// A failure doubles the latency estimate, but not past this (unless the attempt itself took
/// longer), ns.
pub const FAILURE_PENALTY_NS_MAX: u64 = 30_000_000_000;
/// Default health failures in a row that eject a deployment.
pub const EJECT_AFTER_DEFAULT: u32 = 5;
/// Default number of recent outcomes the failure rate is taken over, and the largest allowed.
pub const FAILURE_WINDOW_DEFAULT: u32 = 20;
pub const FAILURE_WINDOW_MAX: u32 = 64;
/// Default outcomes the window must hold before the failure rate can eject.
pub const FAILURE_WINDOW_MIN_DEFAULT: u32 = 10;
/// Default failure share of the window that ejects, percent.
pub const FAILURE_RATE_PCT_DEFAULT: u8 = 50;
/// Default first ejection's cool-down and the cap of its doubling, ms.
pub const COOLDOWN_MS_DEFAULT: u64 = 5_000;
pub const COOLDOWN_MS_MAX_DEFAULT: u64 = 300_000;
/// Default health successes in a row that reset the cool-down's doubling.
pub const RESET_AFTER_DEFAULT: u32 = 5;
/// Longest `Retry-After` honoured (longer ones count as this), ns: one hour.
pub const RETRY_AFTER_NS_MAX: u64 = 3_600_000_000_000;

const _: () = assert!(DEPLOYMENTS_MAX <= u8::MAX as usize + 1);
const _: () = assert!(FAILURE_WINDOW_MAX <= u64::BITS);
const _: () = assert!(FAILURE_WINDOW_MIN_DEFAULT <= FAILURE_WINDOW_DEFAULT);
const _: () = assert!(FAILURE_WINDOW_DEFAULT <= FAILURE_WINDOW_MAX);
const _: () = assert!(COOLDOWN_MS_DEFAULT <= COOLDOWN_MS_MAX_DEFAULT);
const _: () = assert!(FAILURE_PENALTY_NS_MAX <= LATENCY_NS_MAX);
const _: () = assert!(FAILURE_RATE_PCT_DEFAULT <= 100);

/// When a deployment is ejected and for how long. Any values are accepted; out-of-range ones
/// are clamped when the group is built (the config should reject them first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthPolicy {
    /// Health failures in a row that eject. 0: this rule is off.
    pub eject_after: u32,
    /// Recent outcomes the failure rate is taken over (clamped to 1..=64).
    pub window: u32,
    /// Outcomes the window must hold before the rate can eject (clamped to 1..=window).
    pub window_min: u32,
    /// Failure share of the window that ejects, percent (clamped to 100). 0: this rule is off.
    pub failure_rate_pct: u8,
    /// Cool-down of the first ejection; each further one doubles it.
    pub cooldown: Duration,
    /// The cool-down never grows past this.
    pub cooldown_max: Duration,
    /// Health successes in a row that reset the doubling.
    pub reset_after: u32,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            eject_after: EJECT_AFTER_DEFAULT,
            window: FAILURE_WINDOW_DEFAULT,
            window_min: FAILURE_WINDOW_MIN_DEFAULT,
            failure_rate_pct: FAILURE_RATE_PCT_DEFAULT,
            cooldown: Duration::from_millis(COOLDOWN_MS_DEFAULT),
            cooldown_max: Duration::from_millis(COOLDOWN_MS_MAX_DEFAULT),
            reset_after: RESET_AFTER_DEFAULT,
        }
    }
}

/// A model group's balancing settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub strategy: Strategy,
    /// Time constant of the latency estimate's decay (at least 1 ms is used).
    pub decay: Duration,
    /// The latency estimate of a deployment before its first sample.
    pub initial_latency: Duration,
    pub health: HealthPolicy,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            strategy: STRATEGY_DEFAULT,
            decay: Duration::from_millis(DECAY_MS_DEFAULT),
            initial_latency: Duration::from_millis(INITIAL_LATENCY_MS_DEFAULT),
            health: HealthPolicy::default(),
        }
    }
}

/// One deployment as the config describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeploymentSpec {
    /// Share under [`Strategy::Weighted`] (0 counts as 1); other strategies ignore it.
    pub weight: u32,
    /// Requests in flight to it from this shard past which it is not picked. `None`: no cap.
    pub max_outstanding: Option<u32>,
}

impl Default for DeploymentSpec {
    fn default() -> Self {
        DeploymentSpec {
            weight: 1,
            max_outstanding: None,
        }
    }
}

/// Why a group could not be built.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupError {
    /// A group needs at least one deployment.
    NoDeployments,
    /// More than [`DEPLOYMENTS_MAX`].
    TooManyDeployments { count: usize },
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::NoDeployments => f.write_str("a model group needs at least one deployment"),
            GroupError::TooManyDeployments { count } => write!(
                f,
                "a model group has {count} deployments, more than the {DEPLOYMENTS_MAX} allowed"
            ),
        }
    }
}

impl std::error::Error for GroupError {}

/// Why an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection to the deployment (refused, unreachable, TLS handshake failed): the
    /// request never reached it.
    Connect,
    /// No first byte of the response in time.
    Timeout,
    /// The deployment answered with this status (anything but a success).
    Status(u16),
    /// The connection broke after the request was sent.
    Reset,
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A usable answer; `latency` is the time to its first byte for streams, to the whole
    /// answer otherwise (whichever the caller measures consistently).
    Success { latency: Duration },
    /// `retry_after`: the response's `Retry-After`, honoured on a 429 or 503.
    Failure {
        kind: FailureKind,
        retry_after: Option<Duration>,
    },
}

impl Outcome {
    /// Whether another deployment may be tried (provided no byte reached the client): a connect
    /// failure, a timeout before the first byte, 429, 502, 503 or 504.
    pub fn is_retryable(&self) -> bool {
        is_retryable(self)
    }

    /// Whether the outcome counts against the deployment's health: a connect failure, a
    /// timeout, a reset, 429 or a 5xx. Other statuses show it up and answering.
    pub fn is_health_failure(&self) -> bool {
        match self {
            Outcome::Success { .. } => false,
            Outcome::Failure { kind, .. } => match kind {
                FailureKind::Connect | FailureKind::Timeout | FailureKind::Reset => true,
                FailureKind::Status(s) => *s == 429 || (500..=599).contains(s),
            },
        }
    }

    /// The `Retry-After` to honour: only on a 429 or 503, capped at [`RETRY_AFTER_NS_MAX`], ns;
    /// `None` when absent or 0.
    fn retry_after_ns(&self) -> Option<u64> {
        match self {
            Outcome::Failure {
                kind: FailureKind::Status(429 | 503),
                retry_after: Some(d),
            } => Some(duration_ns(*d).min(RETRY_AFTER_NS_MAX)).filter(|&ns| ns > 0),
            _ => None,
        }
    }
}

/// Whether another deployment may be tried after `outcome` (see [`Outcome::is_retryable`]).
/// The caller never retries once bytes went to the client.
pub fn is_retryable(outcome: &Outcome) -> bool {
    match outcome {
        Outcome::Success { .. } => false,
        Outcome::Failure { kind, .. } => match kind {
            FailureKind::Connect | FailureKind::Timeout => true,
            FailureKind::Status(s) => matches!(s, 429 | 502 | 503 | 504),
            FailureKind::Reset => false,
        },
    }
}

/// A deployment's health at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In rotation.
    Healthy,
    /// Out of rotation until `until_ns`.
    Ejected { until_ns: u64 },
    /// The cool-down passed: the next attempt is a probe (`probing`: it is out now).
    HalfOpen { probing: bool },
}

/// The policy with every value in range and in ns, resolved once per group.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    decay_ns: f64,
    initial_ns: f64,
    eject_after: u32,
    window: u32,
    window_min: u32,
    failure_rate_pct: u64,
    cooldown_ns: u64,
    cooldown_max_ns: u64,
    reset_after: u32,
}

impl Tuning {
    fn new(p: &Policy) -> Tuning {
        let window = p.health.window.clamp(1, FAILURE_WINDOW_MAX);
        Tuning {
            decay_ns: ns_f64(duration_ns(p.decay).max(DECAY_NS_MIN)),
            initial_ns: ns_f64(duration_ns(p.initial_latency).min(LATENCY_NS_MAX)),
            eject_after: p.health.eject_after,
            window,
            window_min: p.health.window_min.clamp(1, window),
            failure_rate_pct: u64::from(p.health.failure_rate_pct.min(100)),
            cooldown_ns: duration_ns(p.health.cooldown),
            cooldown_max_ns: duration_ns(p.health.cooldown_max),
            reset_after: p.health.reset_after,
        }
    }

    /// The cool-down of an ejection after `ejections` earlier ones since the last reset.
    fn cooldown_ns(&self, ejections: u32) -> u64 {
        let factor = 1u64.checked_shl(ejections).unwrap_or(u64::MAX);
        self.cooldown_ns
            .saturating_mul(factor)
            .min(self.cooldown_max_ns)
    }
}

/// One deployment's state on this shard: requests in flight, latency estimate, health.
#[derive(Debug)]
pub struct DeploymentState {
    weight: u32,
    max_outstanding: Option<u32>,
    outstanding: Cell<u32>,
    /// The peak-EWMA estimate, ns (finite, in `0..=LATENCY_NS_MAX`).
    ewma_ns: Cell<f64>,
    /// When the estimate was last updated (the latest `now` seen), ns.
    stamp_ns: Cell<u64>,
    /// Smooth weighted round robin's current weight.
    swrr_current: Cell<i64>,
    consecutive_failures: Cell<u32>,
    /// The last `window_len` outcomes, newest in bit 0; 1 = health failure.
    window_bits: Cell<u64>,
    window_len: Cell<u32>,
    success_streak: Cell<u32>,
    /// Ejections since the back-off was last reset.
    ejections: Cell<u32>,
    /// `Some`: ejected, out of rotation until then (half-open once it passed).
    ejected_until_ns: Cell<Option<u64>>,
    /// The probe of a half-open deployment is out.
    probing: Cell<bool>,
}

impl DeploymentState {
    fn new(spec: &DeploymentSpec, tun: &Tuning, now_ns: u64) -> DeploymentState {
        DeploymentState {
            weight: spec.weight.max(1),
            max_outstanding: spec.max_outstanding,
            outstanding: Cell::new(0),
            ewma_ns: Cell::new(tun.initial_ns),
            stamp_ns: Cell::new(now_ns),
            swrr_current: Cell::new(0),
            consecutive_failures: Cell::new(0),
            window_bits: Cell::new(0),
            window_len: Cell::new(0),
            success_streak: Cell::new(0),
            ejections: Cell::new(0),
            ejected_until_ns: Cell::new(None),
            probing: Cell::new(false),
        }
    }

    /// The weight used by [`Strategy::Weighted`] (at least 1).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    pub fn max_outstanding(&self) -> Option<u32> {
        self.max_outstanding
    }

    /// Attempts started on this shard and not finished or dropped yet.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.get()
    }

    /// The stored peak-EWMA latency estimate (without the idle decay picks apply).
    pub fn latency_estimate(&self) -> Duration {
        Duration::from_nanos(f64_ns(self.ewma_ns.get()))
    }

    /// Health at `now_ns`.
    pub fn health(&self, now_ns: u64) -> Health {
        match self.ejected_until_ns.get() {
            None => Health::Healthy,
            Some(until_ns) if now_ns < until_ns => Health::Ejected { until_ns },
            Some(_) => Health::HalfOpen {
                probing: self.probing.get(),
            },
        }
    }

    /// Ejections since the back-off was last reset (the next cool-down is `cooldown × 2^this`).
    pub fn ejections(&self) -> u32 {
        self.ejections.get()
    }

    /// Health failures in a row.
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.get()
    }

    /// Health failures among the outcomes in the window.
    pub fn recent_failures(&self) -> u32 {
        self.window_bits.get().count_ones()
    }

    /// In rotation at `now_ns`: healthy, or half-open with no probe out.
    fn is_admitted(&self, now_ns: u64) -> bool {
        match self.ejected_until_ns.get() {
            None => true,
            Some(until_ns) => now_ns >= until_ns && !self.probing.get(),
        }
    }

    fn is_capped(&self) -> bool {
        self.max_outstanding
            .is_some_and(|max| self.outstanding.get() >= max)
    }

    /// `estimate × (outstanding + 1)`, the estimate decayed toward 0 while idle.
    fn cost(&self, now_ns: u64, tun: &Tuning) -> f64 {
        let outstanding = self.outstanding.get();
        let mut estimate = self.ewma_ns.get();
        if outstanding == 0 {
            let idle = ns_f64(now_ns.saturating_sub(self.stamp_ns.get()));
            estimate *= (-idle / tun.decay_ns).exp();
        }
        estimate * (f64::from(outstanding) + 1.0)
    }

    /// Feed one latency sample (ns) to the peak EWMA.
    fn observe(&self, sample_ns: u64, now_ns: u64, tun: &Tuning) {
        let sample = ns_f64(sample_ns.min(LATENCY_NS_MAX));
        let current = self.ewma_ns.get();
        let next = if sample >= current {
            sample
        } else {
            let elapsed = ns_f64(now_ns.saturating_sub(self.stamp_ns.get()));
            let keep = (-elapsed / tun.decay_ns).exp();
            current * keep + sample * (1.0 - keep)
        };
        // Both terms lie in [0, LATENCY_NS_MAX]; the clamp only guards rounding.
        self.ewma_ns.set(next.clamp(0.0, ns_f64(LATENCY_NS_MAX)));
        self.stamp_ns.set(self.stamp_ns.get().max(now_ns));
    }

    fn push_outcome(&self, failed: bool, tun: &Tuning) {
        let mask = if tun.window >= u64::BITS {
            u64::MAX
        } else {
            (1u64 << tun.window) - 1
        };
        self.window_bits
            .set(((self.window_bits.get() << 1) | u64::from(failed)) & mask);
        self.window_len
            .set(self.window_len.get().saturating_add(1).min(tun.window));
    }

    fn rate_exceeded(&self, tun: &Tuning) -> bool {
        let len = self.window_len.get();
        tun.failure_rate_pct > 0
            && len >= tun.window_min
            && u64::from(self.recent_failures()) * 100 >= tun.failure_rate_pct * u64::from(len)
    }

    fn clear_record(&self) {
        self.consecutive_failures.set(0);
        self.window_bits.set(0);
        self.window_len.set(0);
        self.success_streak.set(0);
    }

    fn eject(&self, now_ns: u64, for_ns: u64) {
        let until = now_ns.saturating_add(for_ns);
        let until = self.ejected_until_ns.get().map_or(until, |u| u.max(until));
        self.ejected_until_ns.set(Some(until));
        self.clear_record();
    }

    /// The health part of finishing an attempt.
    fn record(&self, outcome: &Outcome, probe: bool, now_ns: u64, tun: &Tuning) {
        let failed = outcome.is_health_failure();
        let retry_after = outcome.retry_after_ns();
        let ejected = self.ejected_until_ns.get().is_some();
        if ejected && !probe {
            // Started before the ejection: it already counted, or the ejection covers it.
            if let Some(ra) = retry_after {
                self.eject(now_ns, ra);
            }
            return;
        }
        if !failed {
            if ejected {
                self.ejected_until_ns.set(None);
                self.clear_record();
            }
            self.consecutive_failures.set(0);
            self.push_outcome(false, tun);
            let streak = self.success_streak.get().saturating_add(1);
            self.success_streak.set(streak);
            if streak >= tun.reset_after {
                self.ejections.set(0);
            }
            return;
        }
        self.success_streak.set(0);
        let consecutive = self.consecutive_failures.get().saturating_add(1);
        self.consecutive_failures.set(consecutive);
        self.push_outcome(true, tun);
        let tripped = probe
            || (tun.eject_after > 0 && consecutive >= tun.eject_after)
            || self.rate_exceeded(tun);
        if tripped {
            let k = self.ejections.get();
            self.ejections.set(k.saturating_add(1));
            self.eject(now_ns, tun.cooldown_ns(k).max(retry_after.unwrap_or(0)));
        } else if let Some(ra) = retry_after {
            self.eject(now_ns, ra);
        }
    }
}

/// One model group's deployments on this shard. See the module docs.
#[derive(Debug)]
pub struct Group {
    strategy: Strategy,
    tun: Tuning,
    /// 1..=DEPLOYMENTS_MAX of them.
    deployments: Box<[DeploymentState]>,
    /// Round robin: the index to look from next.
    cursor: Cell<usize>,
}

impl Group {
    /// A group of `specs.len()` deployments (1..=[`DEPLOYMENTS_MAX`]), indexed as given, each
    /// starting healthy with the policy's initial latency estimate taken at `now_ns`.
    pub fn new(
        policy: &Policy,
        specs: &[DeploymentSpec],
        now_ns: u64,
    ) -> Result<Group, GroupError> {
        if specs.is_empty() {
            return Err(GroupError::NoDeployments);
        }
        if specs.len() > DEPLOYMENTS_MAX {
            return Err(GroupError::TooManyDeployments { count: specs.len() });
        }
        let tun = Tuning::new(policy);
        Ok(Group {
            strategy: policy.strategy,
            tun,
            deployments: specs
                .iter()
                .map(|s| DeploymentState::new(s, &tun, now_ns))
                .collect(),
            cursor: Cell::new(0),
        })
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// Number of deployments (at least 1).
    pub fn len(&self) -> usize {
        self.deployments.len()
    }

    /// Always false: a group has at least one deployment.
    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
    }

    pub fn deployment(&self, idx: usize) -> Option<&DeploymentState> {
        self.deployments.get(idx)
    }

    pub fn deployments(&self) -> &[DeploymentState] {
        &self.deployments
    }

    /// Whether any deployment is in rotation at `now_ns` (healthy, or half-open with no probe
    /// out). False: the whole group is ejected, and [`Group::pick`] answers with the least bad.
    pub fn has_admitted(&self, now_ns: u64) -> bool {
        self.deployments.iter().any(|d| d.is_admitted(now_ns))
    }

    /// The deployment for the next attempt, never one in `exclude` (indices out of range there
    /// are ignored) or at its `max_outstanding`; an ejected one only when the whole group is.
    /// `None`: nothing eligible. `rng` is drawn from only by the strategies that need it.
    pub fn pick(
        &self,
        now_ns: u64,
        rng: &mut impl FnMut() -> u64,
        exclude: &[usize],
    ) -> Option<usize> {
        let mut cand = [0u8; DEPLOYMENTS_MAX];
        let mut count = 0usize;
        let mut probe = None;
        let mut any_admitted = false;
        for (i, d) in self.deployments.iter().enumerate() {
            let admitted = d.is_admitted(now_ns);
            any_admitted |= admitted;
            if !admitted || d.is_capped() || exclude.contains(&i) {
                continue;
            }
            if d.ejected_until_ns.get().is_some() {
                // Half-open: its probe goes first.
                probe = probe.or(Some(i));
                continue;
            }
            let (Ok(byte), Some(slot)) = (u8::try_from(i), cand.get_mut(count)) else {
                break;
            };
            *slot = byte;
            count += 1;
        }
        if probe.is_some() {
            return probe;
        }
        let cand = cand.get(..count).unwrap_or(&[]);
        if cand.is_empty() {
            return if any_admitted {
                None
            } else {
                self.least_bad(exclude)
            };
        }
        let pick = match self.strategy {
            Strategy::RoundRobin => self.round_robin(cand),
            Strategy::Weighted => self.weighted(cand),
            Strategy::LeastOutstanding => self.least_outstanding(cand, rng),
            Strategy::Latency => self.two_choices(cand, now_ns, rng),
        };
        Some(pick)
    }

    /// Count an attempt on deployment `idx` as outstanding; `None` when `idx` is out of range.
    /// The attempt is the deployment's probe when it is ejected and no probe is out (a
    /// half-open one, or any when the whole group is ejected).
    pub fn start(&self, idx: usize, now_ns: u64) -> Option<Attempt<'_>> {
        let d = self.deployments.get(idx)?;
        d.outstanding.set(d.outstanding.get().saturating_add(1));
        let probe = d.ejected_until_ns.get().is_some() && !d.probing.get();
        if probe {
            d.probing.set(true);
        }
        Some(Attempt {
            group: self,
            idx,
            started_ns: now_ns,
            probe,
            open: true,
        })
    }

    /// Every deployment ejected: the least bad of those not excluded nor capped.
    fn least_bad(&self, exclude: &[usize]) -> Option<usize> {
        self.deployments
            .iter()
            .enumerate()
            .filter(|(i, d)| !d.is_capped() && !exclude.contains(i))
            .min_by_key(|(_, d)| (d.ejected_until_ns.get().unwrap_or(0), d.recent_failures()))
            .map(|(i, _)| i)
    }

    fn round_robin(&self, cand: &[u8]) -> usize {
        let from = self.cursor.get();
        let pick = cand
            .iter()
            .map(|&i| usize::from(i))
            .find(|&i| i >= from)
            .or_else(|| cand.first().map(|&i| usize::from(i)))
            .unwrap_or(0);
        self.cursor.set(pick + 1);
        pick
    }

    /// nginx's smooth weighted round robin over the candidates.
    fn weighted(&self, cand: &[u8]) -> usize {
        let mut total: i64 = 0;
        let mut best: Option<(usize, i64)> = None;
        for &i in cand {
            let i = usize::from(i);
            let Some(d) = self.deployments.get(i) else {
                continue;
            };
            let w = i64::from(d.weight);
            total = total.saturating_add(w);
            let current = d.swrr_current.get().saturating_add(w);
            d.swrr_current.set(current);
            if best.is_none_or(|(_, b)| current > b) {
                best = Some((i, current));
            }
        }
        let (pick, current) = best.unwrap_or((0, 0));
        if let Some(d) = self.deployments.get(pick) {
            d.swrr_current.set(current.saturating_sub(total));
        }
        pick
    }

    fn least_outstanding(&self, cand: &[u8], rng: &mut impl FnMut() -> u64) -> usize {
        let offset = below(rng(), cand.len());
        let rotated = cand.iter().skip(offset).chain(cand.iter().take(offset));
        let mut best: Option<(usize, u32)> = None;
        for &i in rotated {
            let i = usize::from(i);
            let n = self
                .deployments
                .get(i)
                .map_or(u32::MAX, |d| d.outstanding());
            if best.is_none_or(|(_, b)| n < b) {
                best = Some((i, n));
            }
        }
        best.map_or(0, |(i, _)| i)
    }

    /// Power of two choices by `estimate × (outstanding + 1)`.
    fn two_choices(&self, cand: &[u8], now_ns: u64, rng: &mut impl FnMut() -> u64) -> usize {
        let n = cand.len();
        let first = below(rng(), n);
        let a = cand.get(first).map_or(0, |&i| usize::from(i));
        if n < 2 {
            return a;
        }
        let mut second = below(rng(), n - 1);
        if second >= first {
            second += 1;
        }
        let b = cand.get(second).map_or(a, |&i| usize::from(i));
        let cost = |i: usize| {
            self.deployments
                .get(i)
                .map_or(f64::INFINITY, |d| d.cost(now_ns, &self.tun))
        };
        if cost(b) < cost(a) {
            b
        } else {
            a
        }
    }

    fn finish(&self, idx: usize, started_ns: u64, probe: bool, now_ns: u64, outcome: &Outcome) {
        let Some(d) = self.deployments.get(idx) else {
            return;
        };
        self.release(d, probe);
        match outcome {
            Outcome::Success { latency } => d.observe(duration_ns(*latency), now_ns, &self.tun),
            Outcome::Failure { .. } if outcome.is_health_failure() => {
                let current = d.ewma_ns.get();
                let doubled = (current * 2.0).min(ns_f64(FAILURE_PENALTY_NS_MAX));
                let elapsed = ns_f64(now_ns.saturating_sub(started_ns));
                let penalty = elapsed.max(doubled).max(current);
                d.observe(f64_ns(penalty), now_ns, &self.tun);
            }
            Outcome::Failure { .. } => {}
        }
        d.record(outcome, probe, now_ns, &self.tun);
    }

    fn release(&self, d: &DeploymentState, probe: bool) {
        d.outstanding.set(d.outstanding.get().saturating_sub(1));
        if probe {
            d.probing.set(false);
        }
    }
}

/// An attempt in flight on one deployment: counted as outstanding until it is finished or
/// dropped. Dropping it unfinished (the request was cancelled) gives the count back and, for
/// a probe, lets another request probe; it teaches the group nothing else.
#[derive(Debug)]
#[must_use = "an attempt counts as outstanding until finished or dropped"]
pub struct Attempt<'g> {
    group: &'g Group,
    idx: usize,
    started_ns: u64,
    probe: bool,
    open: bool,
}

impl Attempt<'_> {
    /// The deployment's index in its group.
    pub fn index(&self) -> usize {
        self.idx
    }

    /// Whether this attempt is the probe of an ejected deployment.
    pub fn is_probe(&self) -> bool {
        self.probe
    }

    /// When it started, ns.
    pub fn started_ns(&self) -> u64 {
        self.started_ns
    }

    /// Report how the attempt ended: updates the outstanding count, the latency estimate and
    /// the deployment's health (see the module docs).
    pub fn finish(mut self, now_ns: u64, outcome: &Outcome) {
        self.open = false;
        self.group
            .finish(self.idx, self.started_ns, self.probe, now_ns, outcome);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if self.open {
            if let Some(d) = self.group.deployments.get(self.idx) {
                self.group.release(d, self.probe);
            }
        }
    }
}

/// A small fast random source for [`Group::pick`] (xorshift64; not for anything secret).
#[derive(Debug, Clone)]
pub struct XorShift64 {
    state: u64,
}

impl XorShift64 {
    /// Seeded by `seed` (0, which xorshift cannot leave, is replaced by a fixed constant).
    pub fn new(seed: u64) -> XorShift64 {
        XorShift64 {
            state: if seed == 0 {
                0x9E37_79B9_7F4A_7C15
            } else {
                seed
            },
        }
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.state = x;
        x
    }
}

/// `r` reduced to `0..n` (`n` ≥ 1; 0 for `n` = 0). The modulo bias is below `n / 2^64`.
fn below(r: u64, n: usize) -> usize {
    let Ok(n64) = u64::try_from(n) else {
        return 0;
    };
    if n64 == 0 {
        return 0;
    }
    usize::try_from(r % n64).unwrap_or(0)
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// ns as a float (exact below 2^53 ns, about 104 days).
fn ns_f64(ns: u64) -> f64 {
    ns as f64
}

/// A float ns count back to an integer, saturating (NaN and negatives as 0).
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // range checked first
fn f64_ns(ns: f64) -> u64 {
    if ns.is_nan() || ns <= 0.0 {
        0
    } else if ns >= ns_f64(u64::MAX) {
        u64::MAX
    } else {
        ns as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::ProptestConfig;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, prop_oneof, proptest, Just};
    use proptest::strategy::Strategy as PropStrategy;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;
    const T0: u64 = 1_000 * S;

    fn group(strategy: Strategy, weights: &[u32]) -> Group {
        let policy = Policy {
            strategy,
            ..Policy::default()
        };
        let specs: Vec<DeploymentSpec> = weights
            .iter()
            .map(|&weight| DeploymentSpec {
                weight,
                max_outstanding: None,
            })
            .collect();
        Group::new(&policy, &specs, T0).expect("valid group")
    }

    fn rng(seed: u64) -> impl FnMut() -> u64 {
        let mut r = XorShift64::new(seed);
        move || r.next_u64()
    }

    fn ok(ms: u64) -> Outcome {
        Outcome::Success {
            latency: Duration::from_millis(ms),
        }
    }

    fn status(code: u16) -> Outcome {
        Outcome::Failure {
            kind: FailureKind::Status(code),
            retry_after: None,
        }
    }

    fn status_retry_after(code: u16, secs: u64) -> Outcome {
        Outcome::Failure {
            kind: FailureKind::Status(code),
            retry_after: Some(Duration::from_secs(secs)),
        }
    }

    /// Start and finish one attempt on `idx` at `now`.
    fn run(g: &Group, idx: usize, now: u64, outcome: &Outcome) {
        g.start(idx, now).expect("in range").finish(now, outcome);
    }

    fn fail_times(g: &Group, idx: usize, now: u64, n: usize) {
        for _ in 0..n {
            run(g, idx, now, &status(503));
        }
    }

    fn picks(g: &Group, now: u64, n: usize, exclude: &[usize]) -> Vec<usize> {
        let mut r = rng(7);
        (0..n)
            .map(|_| g.pick(now, &mut r, exclude).expect("eligible"))
            .collect()
    }

    #[test]
    fn a_group_needs_one_to_256_deployments() {
        let p = Policy::default();
        let one = DeploymentSpec::default();
        assert_eq!(
            Group::new(&p, &[], 0).map(|_| ()),
            Err(GroupError::NoDeployments)
        );
        assert_eq!(Group::new(&p, &[one; 256], 0).map(|g| g.len()), Ok(256));
        assert_eq!(
            Group::new(&p, &[one; 257], 0).map(|_| ()),
            Err(GroupError::TooManyDeployments { count: 257 })
        );
    }

    #[test]
    fn round_robin_cycles_and_skips_the_excluded() {
        let g = group(Strategy::RoundRobin, &[1, 1, 1]);
        assert_eq!(picks(&g, T0, 7, &[]), [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(picks(&g, T0, 4, &[2]), [1, 0, 1, 0]);
        assert_eq!(picks(&g, T0, 3, &[]), [1, 2, 0]);
    }

    #[test]
    fn weighted_5_1_1_is_the_nginx_sequence() {
        let g = group(Strategy::Weighted, &[5, 1, 1]);
        // nginx's documented order for weights a=5, b=1, c=1: a a b a c a a, and again.
        let seq = [0, 0, 1, 0, 2, 0, 0];
        assert_eq!(picks(&g, T0, 7, &[]), seq);
        assert_eq!(picks(&g, T0, 7, &[]), seq);
        // Weights 0 count as 1.
        let g = group(Strategy::Weighted, &[0, 0]);
        assert_eq!(picks(&g, T0, 4, &[]), [0, 1, 0, 1]);
    }

    #[test]
    fn weighted_shares_follow_the_weights_among_the_eligible() {
        let g = group(Strategy::Weighted, &[3, 1, 4]);
        let p = picks(&g, T0, 800, &[2]);
        let zero = p.iter().filter(|&&i| i == 0).count();
        assert_eq!((zero, p.len() - zero), (600, 200));
        assert!(!p.contains(&2));
    }

    #[test]
    fn least_outstanding_takes_the_least_busy_and_spreads_ties() {
        let g = group(Strategy::LeastOutstanding, &[1, 1, 1]);
        let _a = g.start(0, T0);
        let _b = g.start(0, T0);
        let _c = g.start(1, T0);
        assert_eq!(picks(&g, T0, 5, &[]), [2; 5]);
        assert_eq!(picks(&g, T0, 5, &[2]), [1; 5]);
        // With nothing outstanding every deployment gets some of the picks.
        let idle = group(Strategy::LeastOutstanding, &[1, 1, 1]);
        let p = picks(&idle, T0, 300, &[]);
        for i in 0..3 {
            assert!(p.iter().filter(|&&x| x == i).count() > 50, "{i}");
        }
    }

    /// Two deployments answering in 10 ms and 100 ms (±20 %), a request every ms for 20 s of
    /// simulated time: `latency` sends at least 80 % to the faster.
    #[test]
    fn two_choices_prefer_the_faster_deployment() {
        let g = group(Strategy::Latency, &[1, 1]);
        let mut r = XorShift64::new(0x5EED);
        let mut in_flight: Vec<(u64, Attempt<'_>, u64)> = Vec::new();
        let mut counts = [0usize; 2];
        let base = [10 * MS, 100 * MS];
        for tick in 0..20_000u64 {
            let now = T0 + tick * MS;
            let mut k = 0;
            while k < in_flight.len() {
                if in_flight[k].0 <= now {
                    let (_, a, took) = in_flight.swap_remove(k);
                    a.finish(
                        now,
                        &Outcome::Success {
                            latency: Duration::from_nanos(took),
                        },
                    );
                } else {
                    k += 1;
                }
            }
            let idx = g.pick(now, &mut || r.next_u64(), &[]).expect("eligible");
            counts[idx] += 1;
            let jitter = base[idx] / 5;
            let took = base[idx] - jitter + r.next_u64() % (2 * jitter);
            in_flight.push((now + took, g.start(idx, now).expect("in range"), took));
        }
        let share = counts[0] as f64 / 20_000.0;
        assert!(share >= 0.8, "faster share {share:.3} ({counts:?})");
    }

    #[test]
    fn two_choices_weigh_outstanding_requests() {
        let g = group(Strategy::Latency, &[1, 1]);
        // Long after the start, so the samples replace the initial estimate.
        let now = T0 + 100 * S;
        run(&g, 0, now, &ok(10));
        run(&g, 1, now, &ok(30));
        let mut r = rng(3);
        assert_eq!(g.pick(now, &mut r, &[]), Some(0));
        // 10 ms × (4 outstanding + 1) > 30 ms × 1.
        let held: Vec<_> = (0..4).map(|_| g.start(0, now)).collect();
        assert_eq!(g.pick(now, &mut r, &[]), Some(1));
        drop(held);
        assert_eq!(g.pick(now, &mut r, &[]), Some(0));
        // One candidate left: taken without comparing.
        assert_eq!(g.pick(now, &mut r, &[0]), Some(1));
    }

    #[test]
    fn every_strategy_respects_exclusions_and_caps() {
        for s in Strategy::ALL {
            let policy = Policy {
                strategy: s,
                ..Policy::default()
            };
            let specs = [
                DeploymentSpec {
                    weight: 1,
                    max_outstanding: Some(1),
                },
                DeploymentSpec::default(),
                DeploymentSpec {
                    weight: 9,
                    max_outstanding: Some(0),
                },
                DeploymentSpec::default(),
            ];
            let g = Group::new(&policy, &specs, T0).expect("valid");
            let held = g.start(0, T0);
            let p = picks(&g, T0, 50, &[1]);
            assert!(p.iter().all(|&i| i == 3), "{s}: {p:?}");
            assert_eq!(g.pick(T0, &mut rng(1), &[1, 3]), None, "{s}");
            drop(held);
            assert_eq!(g.pick(T0, &mut rng(1), &[1, 3]), Some(0), "{s}");
            // Out-of-range exclusions are ignored.
            assert!(g.pick(T0, &mut rng(1), &[99, usize::MAX]).is_some(), "{s}");
        }
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let g = group(Strategy::Latency, &[1]);
        let d = g.deployment(0).expect("one");
        assert_eq!(d.latency_estimate(), Duration::from_millis(100));
        run(&g, 0, T0, &ok(300));
        assert_eq!(d.latency_estimate(), Duration::from_millis(300), "peak");
        // A lower sample one decay (10 s) later keeps e^-1 of the old value.
        run(&g, 0, T0 + 10 * S, &ok(100));
        let want = 300.0 * (-1.0f64).exp() + 100.0 * (1.0 - (-1.0f64).exp());
        let got = d.latency_estimate().as_secs_f64() * 1e3;
        assert!((got - want).abs() < 0.01, "{got} vs {want}");
        // A lower sample at the same instant changes nothing.
        let before = d.latency_estimate();
        run(&g, 0, T0 + 10 * S, &ok(1));
        assert_eq!(d.latency_estimate(), before);
        // Long after, the estimate is the sample.
        run(&g, 0, T0 + 1_000 * S, &ok(20));
        let got = d.latency_estimate().as_secs_f64() * 1e3;
        assert!((got - 20.0).abs() < 0.01, "{got}");
    }

    #[test]
    fn an_idle_deployment_is_tried_again() {
        let g = group(Strategy::Latency, &[1, 1]);
        run(&g, 0, T0, &ok(2_000));
        run(&g, 1, T0, &ok(10));
        let mut r = rng(9);
        let mut now = T0;
        let mut tried_again = None;
        // 1 picks a second, each finishing at once: 0 is idle and its estimate decays.
        for s in 1..120 {
            now = T0 + s * S;
            let idx = g.pick(now, &mut r, &[]).expect("eligible");
            run(&g, idx, now, &ok(10));
            if idx == 0 {
                tried_again = Some(s);
                break;
            }
        }
        let s = tried_again.expect("0 was never tried again");
        // 2 s × e^(−s/10 s) falls below 1's ≈ 9 ms after about 54 s.
        assert!((40..70).contains(&s), "tried again after {s} s at {now}");
        assert!(g.deployment(0).expect("0").latency_estimate() < Duration::from_millis(30));
    }

    #[test]
    fn failures_raise_the_estimate_and_4xx_leave_it() {
        let g = group(Strategy::Latency, &[1]);
        let d = g.deployment(0).expect("one");
        let connect = Outcome::Failure {
            kind: FailureKind::Connect,
            retry_after: None,
        };
        run(&g, 0, T0, &connect);
        assert_eq!(d.latency_estimate(), Duration::from_millis(200));
        run(&g, 0, T0, &status(500));
        assert_eq!(d.latency_estimate(), Duration::from_millis(400));
        // A timeout counts at least the time it took.
        let a = g.start(0, T0).expect("in range");
        a.finish(
            T0 + 2 * S,
            &Outcome::Failure {
                kind: FailureKind::Timeout,
                retry_after: None,
            },
        );
        assert_eq!(d.latency_estimate(), Duration::from_secs(2));
        run(&g, 0, T0 + 2 * S, &status(400));
        assert_eq!(d.latency_estimate(), Duration::from_secs(2));
        // The penalty stops doubling at 30 s.
        for _ in 0..10 {
            let a = g.start(0, T0).expect("in range");
            a.finish(T0, &connect);
        }
        assert_eq!(d.latency_estimate(), Duration::from_secs(30));
    }

    #[test]
    fn five_failures_in_a_row_eject() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        fail_times(&g, 0, T0, 4);
        assert_eq!(g.deployment(0).expect("0").health(T0), Health::Healthy);
        run(&g, 0, T0, &ok(10));
        fail_times(&g, 0, T0, 4);
        assert_eq!(g.deployment(0).expect("0").health(T0), Health::Healthy);
        fail_times(&g, 0, T0, 1);
        let d = g.deployment(0).expect("0");
        assert_eq!(
            d.health(T0),
            Health::Ejected {
                until_ns: T0 + 5 * S
            }
        );
        assert_eq!(picks(&g, T0 + S, 4, &[]), [1; 4]);
    }

    #[test]
    fn a_high_failure_rate_ejects() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        // Succeed, fail, succeed, ...: never 2 failures in a row; 4 of 8 (50 %) is still below
        // the minimum sample of 10.
        for k in 0..9 {
            run(&g, 0, T0, &if k % 2 == 1 { status(502) } else { ok(10) });
            assert_eq!(d.health(T0), Health::Healthy, "after {k}");
        }
        run(&g, 0, T0, &status(429));
        assert_eq!(
            d.health(T0),
            Health::Ejected {
                until_ns: T0 + 5 * S
            },
            "5 of 10"
        );
        // 40 % does not eject.
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        for k in 0..40 {
            run(&g, 0, T0, &if k % 5 < 2 { status(500) } else { ok(10) });
        }
        assert_eq!(d.health(T0), Health::Healthy);
    }

    #[test]
    fn client_errors_do_not_eject() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        for _ in 0..50 {
            run(&g, 0, T0, &status(400));
            run(&g, 0, T0, &status(404));
        }
        assert_eq!(g.deployment(0).expect("0").health(T0), Health::Healthy);
    }

    /// Ejected, cool-down, one probe; a failed probe doubles the cool-down up to 5 min.
    #[test]
    fn cooldown_doubles_up_to_its_cap_through_failed_probes() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        let mut now = T0;
        fail_times(&g, 0, now, 5);
        let mut want = 5 * S;
        for round in 0..9 {
            assert_eq!(
                d.health(now),
                Health::Ejected {
                    until_ns: now + want
                },
                "round {round}"
            );
            assert_eq!(g.pick(now + want - 1, &mut rng(1), &[]), Some(1));
            now += want;
            assert_eq!(d.health(now), Health::HalfOpen { probing: false });
            assert_eq!(
                g.pick(now, &mut rng(1), &[]),
                Some(0),
                "the probe goes first"
            );
            let probe = g.start(0, now).expect("in range");
            assert!(probe.is_probe());
            assert_eq!(d.health(now), Health::HalfOpen { probing: true });
            // While the probe is out, nothing else goes there.
            assert_eq!(picks(&g, now, 3, &[]), [1; 3]);
            probe.finish(now, &status(503));
            want = (want * 2).min(300 * S);
        }
        assert_eq!(want, 300 * S);
    }

    #[test]
    fn a_successful_probe_readmits_and_a_streak_resets_the_back_off() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        fail_times(&g, 0, T0, 5);
        let now = T0 + 5 * S;
        let probe = g.start(0, now).expect("in range");
        probe.finish(now, &ok(10));
        assert_eq!(d.health(now), Health::Healthy);
        assert_eq!(d.consecutive_failures(), 0);
        assert_eq!(d.recent_failures(), 0);
        assert_eq!(d.ejections(), 1, "kept until a streak");
        // Failing again at once: the doubled cool-down.
        fail_times(&g, 0, now, 5);
        assert_eq!(
            d.health(now),
            Health::Ejected {
                until_ns: now + 10 * S
            }
        );
        let now = now + 10 * S;
        run(&g, 0, now, &ok(10));
        for _ in 0..4 {
            run(&g, 0, now, &ok(10));
        }
        assert_eq!(d.ejections(), 0, "5 successes in a row reset it");
        fail_times(&g, 0, now, 5);
        assert_eq!(
            d.health(now),
            Health::Ejected {
                until_ns: now + 5 * S
            }
        );
    }

    #[test]
    fn a_cancelled_probe_leaves_the_deployment_half_open() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        fail_times(&g, 0, T0, 5);
        let now = T0 + 5 * S;
        let probe = g.start(0, now).expect("in range");
        assert_eq!(d.outstanding(), 1);
        drop(probe);
        assert_eq!(d.outstanding(), 0);
        assert_eq!(d.health(now), Health::HalfOpen { probing: false });
        assert_eq!(g.pick(now, &mut rng(1), &[]), Some(0));
    }

    #[test]
    fn attempts_in_flight_at_the_ejection_do_not_eject_again() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        let late: Vec<_> = (0..10).map(|_| g.start(0, T0)).collect();
        fail_times(&g, 0, T0, 5);
        assert_eq!(d.ejections(), 1);
        for a in late.into_iter().flatten() {
            a.finish(T0 + S, &status(500));
        }
        assert_eq!(d.ejections(), 1);
        assert_eq!(
            d.health(T0 + S),
            Health::Ejected {
                until_ns: T0 + 5 * S
            }
        );
        assert_eq!(d.outstanding(), 0);
    }

    #[test]
    fn retry_after_is_honoured() {
        let g = group(Strategy::RoundRobin, &[1, 1]);
        let d = g.deployment(0).expect("0");
        // Alone: exactly that long, without growing the back-off.
        run(&g, 0, T0, &status_retry_after(429, 30));
        assert_eq!(
            d.health(T0),
            Health::Ejected {
                until_ns: T0 + 30 * S
            }
        );
        assert_eq!(d.ejections(), 0);
        assert_eq!(picks(&g, T0 + 29 * S, 3, &[]), [1; 3]);
        let now = T0 + 30 * S;
        g.start(0, now).expect("in range").finish(now, &ok(10));
        assert_eq!(d.health(now), Health::Healthy);
        // With the streak rule tripped: the longer of the two.
        fail_times(&g, 0, now, 4);
        run(&g, 0, now, &status_retry_after(503, 60));
        assert_eq!(
            d.health(now),
            Health::Ejected {
                until_ns: now + 60 * S
            }
        );
        // Only on 429 and 503.
        let g = group(Strategy::RoundRobin, &[1, 1]);
        run(&g, 0, T0, &status_retry_after(500, 60));
        assert_eq!(g.deployment(0).expect("0").health(T0), Health::Healthy);
        // Capped at one hour.
        run(&g, 0, T0, &status_retry_after(429, 1 << 40));
        assert_eq!(
            g.deployment(0).expect("0").health(T0),
            Health::Ejected {
                until_ns: T0 + RETRY_AFTER_NS_MAX
            }
        );
    }

    #[test]
    fn a_group_all_ejected_still_answers_with_the_least_bad() {
        for s in Strategy::ALL {
            let policy = Policy {
                strategy: s,
                ..Policy::default()
            };
            let g = Group::new(&policy, &[DeploymentSpec::default(); 3], T0).expect("valid");
            fail_times(&g, 0, T0, 5); // until T0 + 5 s
            fail_times(&g, 1, T0 - S, 5); // until T0 + 4 s: ends first
            assert_eq!(g.pick(T0, &mut rng(1), &[]), Some(2), "{s}");
            fail_times(&g, 2, T0, 5);
            assert!(!g.has_admitted(T0), "{s}");
            assert_eq!(g.pick(T0, &mut rng(1), &[]), Some(1), "{s}");
            assert_eq!(g.pick(T0, &mut rng(1), &[1]), Some(0), "{s}: 0 and 2 tie");
            assert_eq!(g.pick(T0, &mut rng(1), &[0, 1, 2]), None, "{s}");
            // The attempt on the least bad is its probe: a success readmits it.
            let a = g.start(1, T0).expect("in range");
            assert!(a.is_probe(), "{s}");
            a.finish(T0, &ok(10));
            assert!(g.has_admitted(T0), "{s}");
            assert_eq!(picks(&g, T0, 3, &[]), [1; 3], "{s}");
        }
    }

    #[test]
    fn retryable_outcomes() {
        let f = |kind| Outcome::Failure {
            kind,
            retry_after: None,
        };
        assert!(f(FailureKind::Connect).is_retryable());
        assert!(f(FailureKind::Timeout).is_retryable());
        assert!(!f(FailureKind::Reset).is_retryable());
        for code in [429, 502, 503, 504] {
            assert!(is_retryable(&status(code)), "{code}");
        }
        for code in [0, 200, 400, 401, 404, 408, 413, 500, 501, 505, 599, 999] {
            assert!(!is_retryable(&status(code)), "{code}");
        }
        assert!(!ok(1).is_retryable());
    }

    // ---- property tests ----

    #[derive(Debug, Clone)]
    enum Op {
        /// Pick with the deployments whose bit is set excluded.
        Pick(u64),
        Start(usize),
        Finish(usize, Outcome),
        Drop(usize),
        /// Set the clock (anything, backwards included).
        At(u64),
        Advance(u64),
    }

    fn outcome() -> impl PropStrategy<Value = Outcome> {
        let duration = prop_oneof![
            (0..=2_000u64).prop_map(Duration::from_millis),
            Just(Duration::ZERO),
            Just(Duration::MAX),
            any::<u64>().prop_map(Duration::from_nanos),
        ];
        let kind = prop_oneof![
            Just(FailureKind::Connect),
            Just(FailureKind::Timeout),
            Just(FailureKind::Reset),
            prop_oneof![Just(429u16), Just(503), Just(500), Just(400), any::<u16>()]
                .prop_map(FailureKind::Status),
        ];
        prop_oneof![
            duration
                .clone()
                .prop_map(|latency| Outcome::Success { latency }),
            (kind, proptest::option::of(duration))
                .prop_map(|(kind, retry_after)| Outcome::Failure { kind, retry_after }),
        ]
    }

    fn ops() -> impl PropStrategy<Value = Vec<Op>> {
        proptest::collection::vec(
            prop_oneof![
                3 => any::<u64>().prop_map(Op::Pick),
                3 => (0..10usize).prop_map(Op::Start),
                4 => (any::<usize>(), outcome()).prop_map(|(k, o)| Op::Finish(k, o)),
                1 => any::<usize>().prop_map(Op::Drop),
                1 => prop_oneof![any::<u64>(), T0 - 100 * S..T0 + 100 * S].prop_map(Op::At),
                2 => prop_oneof![0..10 * S, 0..u64::MAX].prop_map(Op::Advance),
            ],
            0..300,
        )
    }

    /// The defaults (each strategy) half the time, anything at all the other half.
    fn policy() -> impl PropStrategy<Value = Policy> {
        prop_oneof![
            (0..4usize).prop_map(|s| Policy {
                strategy: Strategy::ALL[s],
                ..Policy::default()
            }),
            any_policy(),
        ]
    }

    fn any_policy() -> impl PropStrategy<Value = Policy> {
        let small = prop_oneof![Just(0u32), 1..30u32, any::<u32>()];
        let duration = prop_oneof![
            (0..=600_000u64).prop_map(Duration::from_millis),
            Just(Duration::ZERO),
            Just(Duration::MAX),
        ];
        (
            0..4usize,
            duration.clone(),
            duration.clone(),
            (small.clone(), small.clone(), small.clone(), any::<u8>()),
            (duration.clone(), duration, small),
        )
            .prop_map(
                |(s, decay, initial_latency, (ea, w, wm, pct), (cd, cdm, ra))| Policy {
                    strategy: Strategy::ALL[s],
                    decay,
                    initial_latency,
                    health: HealthPolicy {
                        eject_after: ea,
                        window: w,
                        window_min: wm,
                        failure_rate_pct: pct,
                        cooldown: cd,
                        cooldown_max: cdm,
                        reset_after: ra,
                    },
                },
            )
    }

    fn specs() -> impl PropStrategy<Value = Vec<DeploymentSpec>> {
        proptest::collection::vec(
            (
                prop_oneof![0..5u32, any::<u32>()],
                proptest::option::of(0..4u32),
            )
                .prop_map(|(weight, max_outstanding)| DeploymentSpec {
                    weight,
                    max_outstanding,
                }),
            1..8,
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any sequence of picks, starts, finishes, drops and clock moves (backwards too):
        /// nothing panics, outstanding counts match the attempts open, and every pick obeys the
        /// rules: not excluded, not capped, not ejected unless every deployment is, and `None`
        /// only when nothing was eligible.
        #[test]
        fn picks_obey_the_rules_and_counts_stay_exact(
            policy in policy(),
            specs in specs(),
            ops in ops(),
            seed in any::<u64>(),
        ) {
            let g = Group::new(&policy, &specs, T0).expect("1..8 deployments");
            let n = g.len();
            let mut r = XorShift64::new(seed);
            let mut now = T0;
            let mut open: Vec<Attempt<'_>> = Vec::new();
            for op in ops {
                match op {
                    Op::Pick(mask) => {
                        let exclude: Vec<usize> =
                            (0..n).filter(|i| mask >> i & 1 == 1).chain([n, usize::MAX]).collect();
                        let all_out = !g.has_admitted(now);
                        let eligible = |i: usize, d: &DeploymentState| {
                            !exclude.contains(&i)
                                && !d.is_capped()
                                && (all_out || d.is_admitted(now))
                        };
                        let any = g.deployments().iter().enumerate().any(|(i, d)| eligible(i, d));
                        match g.pick(now, &mut || r.next_u64(), &exclude) {
                            Some(i) => {
                                let d = g.deployment(i).expect("in range");
                                prop_assert!(eligible(i, d), "picked {} of {:?}", i, g);
                            }
                            None => prop_assert!(!any, "None with an eligible deployment"),
                        }
                    }
                    Op::Start(i) => {
                        match g.start(i, now) {
                            Some(a) => open.push(a),
                            None => prop_assert!(i >= n),
                        }
                    }
                    Op::Finish(k, o) => {
                        if !open.is_empty() {
                            let a = open.swap_remove(k % open.len());
                            a.finish(now, &o);
                        }
                    }
                    Op::Drop(k) => {
                        if !open.is_empty() {
                            drop(open.swap_remove(k % open.len()));
                        }
                    }
                    Op::At(t) => now = t,
                    Op::Advance(d) => now = now.saturating_add(d),
                }
                for (i, d) in g.deployments().iter().enumerate() {
                    let mine = open.iter().filter(|a| a.index() == i).count();
                    prop_assert_eq!(usize::try_from(d.outstanding()).ok(), Some(mine));
                    let probes = open.iter().filter(|a| a.index() == i && a.is_probe()).count();
                    prop_assert!(probes <= 1);
                    prop_assert_eq!(d.probing.get(), probes == 1);
                    let e = d.ewma_ns.get();
                    prop_assert!(e.is_finite() && e >= 0.0);
                }
            }
            drop(open);
            prop_assert!(g.deployments().iter().all(|d| d.outstanding() == 0));
        }

        /// Counts never underflow when finishes outnumber starts through stale indices either:
        /// out-of-range starts are refused, and a group's own attempts are all it can finish.
        #[test]
        fn out_of_range_indices_change_nothing(idx in 1usize.., now in any::<u64>()) {
            let g = Group::new(&Policy::default(), &[DeploymentSpec::default()], now)
                .expect("one deployment");
            prop_assert!(g.start(idx, now).is_none());
            prop_assert!(g.deployment(idx).is_none());
            prop_assert_eq!(g.pick(now, &mut || 0, &[idx]), Some(0));
        }
    }
}
