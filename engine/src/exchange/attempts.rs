//! Attempts at a model group's deployments: which deployment to try (the group's strategy,
//! then its fallbacks in order), when a failed attempt may be retried elsewhere (the one
//! retry rule), and how an attempt ended for the balancer.
//!
//! [`Attempts`] is the loop's state without its I/O: the driver asks [`Attempts::next`] for a
//! deployment, sends the request, and reports a failure that reached no client byte with
//! [`Attempts::failed`]; everything it decides is a function of the groups' state, `now` and
//! the random numbers it is handed, so the tests below drive it with a table of groups.

use std::time::Duration;

use crate::balance::{self, FailureKind, Outcome, DEPLOYMENTS_MAX};
use crate::snapshot::{DeploymentIdx, GroupId};

/// Deployments of the requested group not to pick again (failed, or over their quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried([u64; DEPLOYMENTS_MAX / 64]);

impl Tried {
    pub fn insert(&mut self, idx: DeploymentIdx) {
        let idx = idx.index();
        if let Some(w) = self.0.get_mut(idx / 64) {
            *w |= 1 << (idx % 64);
        }
    }

    pub fn contains(&self, idx: DeploymentIdx) -> bool {
        let idx = idx.index();
        self.0
            .get(idx / 64)
            .is_some_and(|w| w & (1 << (idx % 64)) != 0)
    }

    /// The set as the list the balancer takes, written into `out`.
    pub fn list<'a>(&self, out: &'a mut [usize; DEPLOYMENTS_MAX]) -> &'a [usize] {
        let mut n = 0;
        for i in 0..DEPLOYMENTS_MAX {
            if self.contains(DeploymentIdx::new(i)) {
                out[n] = i;
                n += 1;
            }
        }
        &out[..n]
    }
}

/// The model groups as the attempt loop sees them: the snapshot's balancers (on a shard) or a
/// table (in tests).
pub trait Groups {
    /// The group's strategy's pick, never one in `tried`; `None`: nothing eligible.
    fn pick(
        &self,
        group: GroupId,
        now_ns: u64,
        rng: &mut dyn FnMut() -> u64,
        tried: &[usize],
    ) -> Option<DeploymentIdx>;
    /// The group has a deployment in rotation (healthy or on probation).
    fn has_admitted(&self, group: GroupId, now_ns: u64) -> bool;
    /// The group's fallback groups, in order.
    fn fallbacks(&self, group: GroupId) -> impl Iterator<Item = GroupId> + '_;
    /// How many deployments the group has.
    fn deployments(&self, group: GroupId) -> usize;
}

/// The deployment for a request to group `g`: picked by the group's strategy while it has a
/// deployment admitted; otherwise from the first fallback that has one; and when none has,
/// the group's least bad deployment (a group never refuses for health alone).
/// `(group, deployment index)`.
pub fn choose(
    groups: &impl Groups,
    g: GroupId,
    tried: &Tried,
    now_ns: u64,
    rng: &mut dyn FnMut() -> u64,
) -> Option<(GroupId, DeploymentIdx)> {
    let mut list = [0usize; DEPLOYMENTS_MAX];
    let tried = tried.list(&mut list);
    if groups.has_admitted(g, now_ns) {
        if let Some(idx) = groups.pick(g, now_ns, rng, tried) {
            return Some((g, idx));
        }
    }
    for f in groups.fallbacks(g) {
        if groups.has_admitted(f, now_ns) {
            if let Some(idx) = groups.pick(f, now_ns, rng, &[]) {
                return Some((f, idx));
            }
        }
    }
    groups.pick(g, now_ns, rng, tried).map(|idx| (g, idx))
}

/// Whether a deployment other than `current` is left to try for a request to group `g`: one
/// of its deployments not tried yet, or a fallback group.
pub fn has_alternative(
    groups: &impl Groups,
    g: GroupId,
    current: (GroupId, DeploymentIdx),
    tried: &Tried,
) -> bool {
    if groups.fallbacks(g).next().is_some() {
        return true;
    }
    (0..groups.deployments(g))
        .map(DeploymentIdx::new)
        .any(|i| !tried.contains(i) && current != (g, i))
}

/// The one retry rule: an attempt that ended so may be tried again at another deployment
/// (only ever while no byte of its answer reached the client): a failed connection, a
/// timeout before the first byte, or 429, 502, 503, 504 ([`balance::is_retryable`]).
pub fn retryable(outcome: &Outcome) -> bool {
    balance::is_retryable(outcome)
}

/// How an attempt ended, for its deployment's health and latency estimate, and for the retry
/// rule. `ttfb`: the time to its response head, when one came; `status`: what the client got
/// (or would have: our own 504 after a timeout); `broke_off`: the upstream broke off its
/// answer after the head.
pub fn outcome(
    ttfb: Option<Duration>,
    status: u16,
    retry_after: Option<Duration>,
    broke_off: bool,
) -> Outcome {
    if broke_off {
        return Outcome::Failure {
            kind: FailureKind::Reset,
            retry_after: None,
        };
    }
    match (ttfb, status) {
        // The upstream answered: its status says how it is doing.
        (Some(_), s) if s == 429 || s >= 500 => Outcome::Failure {
            kind: FailureKind::Status(s),
            retry_after,
        },
        (Some(latency), _) => Outcome::Success { latency },
        // No answer: our own 504 is a timeout, anything else a failed connection.
        (None, 504) => Outcome::Failure {
            kind: FailureKind::Timeout,
            retry_after: None,
        },
        (None, _) => Outcome::Failure {
            kind: FailureKind::Connect,
            retry_after: None,
        },
    }
}

/// The outcome of an upstream's answer head with `status`, for the retry rule.
pub fn answered(status: u16) -> Outcome {
    outcome(Some(Duration::ZERO), status, None, false)
}

/// The attempt loop of one request to a model group.
#[derive(Debug, Clone)]
pub struct Attempts {
    /// The group the request named.
    group: GroupId,
    /// Its deployments not to pick again.
    tried: Tried,
    /// Attempts that failed so far, and how many may.
    failed: usize,
    retries: usize,
    /// Picks made (each attempt, and each deployment passed over for its quota): bounded.
    rounds: usize,
}

/// The deployment for the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    pub group: GroupId,
    pub idx: DeploymentIdx,
    /// A failure of this attempt before any byte reaches the client is retried elsewhere
    /// (otherwise it is answered as it is).
    pub retry_ok: bool,
}

impl Attempts {
    /// At most this many picks per request (attempts and deployments over their quota).
    pub const ROUNDS_MAX: usize = 2 * DEPLOYMENTS_MAX;

    pub fn new(group: GroupId, retries: usize) -> Self {
        Self {
            group,
            tried: Tried::default(),
            failed: 0,
            retries,
            rounds: 0,
        }
    }

    /// The deployments of the named group tried so far.
    pub fn tried(&self) -> &Tried {
        &self.tried
    }

    /// The deployment to try next: chosen by [`choose`], passed over while `quota` refuses it
    /// (its own rpm/tpm over all shards). `None`: nothing is left (answer `NoDeployment`).
    pub fn next(
        &mut self,
        groups: &impl Groups,
        now_ns: u64,
        rng: &mut dyn FnMut() -> u64,
        mut quota: impl FnMut(GroupId, DeploymentIdx) -> bool,
    ) -> Option<Choice> {
        while self.rounds < Self::ROUNDS_MAX {
            self.rounds += 1;
            let (group, idx) = choose(groups, self.group, &self.tried, now_ns, rng)?;
            if !quota(group, idx) {
                self.pass_over((group, idx));
                continue;
            }
            let retry_ok = self.failed < self.retries
                && has_alternative(groups, self.group, (group, idx), &self.tried);
            return Some(Choice {
                group,
                idx,
                retry_ok,
            });
        }
        None
    }

    /// The attempt at `choice` failed before any byte reached the client and will be retried
    /// (its `retry_ok` said so); a hedge that ran beside it (`hedge`) is not tried again either.
    pub fn failed(&mut self, choice: Choice, hedge: Option<(GroupId, DeploymentIdx)>) {
        self.failed += 1;
        self.pass_over((choice.group, choice.idx));
        if let Some(h) = hedge {
            self.pass_over(h);
        }
    }

    /// The deployment for a hedge raced beside the attempt at `current`: another of
    /// `current`'s group by its strategy, never `current` itself nor, in the named group, one
    /// that failed already. `None`: the group has no other (no hedge).
    pub fn hedge(
        &self,
        groups: &impl Groups,
        current: Choice,
        now_ns: u64,
        rng: &mut dyn FnMut() -> u64,
    ) -> Option<DeploymentIdx> {
        let mut except = if current.group == self.group {
            self.tried
        } else {
            Tried::default()
        };
        except.insert(current.idx);
        let mut list = [0usize; DEPLOYMENTS_MAX];
        groups.pick(current.group, now_ns, rng, except.list(&mut list))
    }

    fn pass_over(&mut self, (group, idx): (GroupId, DeploymentIdx)) {
        if group == self.group {
            self.tried.insert(idx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Groups as a table: per group, its deployments' states and its fallbacks.
    struct Table {
        /// Per group, per deployment: in rotation.
        up: Vec<Vec<bool>>,
        fallbacks: Vec<Vec<usize>>,
    }

    impl Groups for Table {
        fn pick(
            &self,
            g: GroupId,
            _: u64,
            _: &mut dyn FnMut() -> u64,
            tried: &[usize],
        ) -> Option<DeploymentIdx> {
            let up = &self.up[g.index()];
            // In rotation first, then any (the least bad), never a tried one.
            (0..up.len())
                .find(|&i| up[i] && !tried.contains(&i))
                .or_else(|| (0..up.len()).find(|i| !tried.contains(i)))
                .map(DeploymentIdx::new)
        }
        fn has_admitted(&self, g: GroupId, _: u64) -> bool {
            self.up[g.index()].iter().any(|&u| u)
        }
        fn fallbacks(&self, g: GroupId) -> impl Iterator<Item = GroupId> + '_ {
            self.fallbacks[g.index()].iter().copied().map(GroupId::new)
        }
        fn deployments(&self, g: GroupId) -> usize {
            self.up[g.index()].len()
        }
    }

    const G0: GroupId = GroupId::new(0);

    fn d(i: usize) -> DeploymentIdx {
        DeploymentIdx::new(i)
    }

    fn at(c: Option<Choice>) -> Option<(usize, usize)> {
        c.map(|c| (c.group.index(), c.idx.index()))
    }

    fn rng() -> impl FnMut() -> u64 {
        let mut x = 7u64;
        move || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            x
        }
    }

    #[test]
    fn retries_walk_the_group_then_stop_at_the_retry_budget() {
        let t = Table {
            up: vec![vec![true, true, true]],
            fallbacks: vec![vec![]],
        };
        let mut a = Attempts::new(G0, 1);
        let mut r = rng();
        let first = a
            .next(&t, 0, &mut r, |_, _| true)
            .expect("a deployment to try");
        assert_eq!((at(Some(first)), first.retry_ok), (Some((0, 0)), true));
        a.failed(first, None);
        let second = a
            .next(&t, 0, &mut r, |_, _| true)
            .expect("a deployment to try");
        assert_eq!(
            (second.idx, second.retry_ok),
            (d(1), false),
            "one retry allowed, then answered"
        );
    }

    #[test]
    fn the_last_deployment_is_never_marked_retryable() {
        let t = Table {
            up: vec![vec![true, true]],
            fallbacks: vec![vec![]],
        };
        let mut a = Attempts::new(G0, 5);
        let mut r = rng();
        let c = a
            .next(&t, 0, &mut r, |_, _| true)
            .expect("a deployment to try");
        assert!(c.retry_ok);
        a.failed(c, None);
        let c = a
            .next(&t, 0, &mut r, |_, _| true)
            .expect("a deployment to try");
        assert_eq!(
            (c.idx, c.retry_ok),
            (d(1), false),
            "nothing left to try after it"
        );
    }

    #[test]
    fn a_group_with_nothing_in_rotation_falls_back_in_order() {
        let t = Table {
            up: vec![vec![false, false], vec![false], vec![true]],
            fallbacks: vec![vec![1, 2], vec![], vec![]],
        };
        let mut a = Attempts::new(G0, 2);
        let c = a
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!(
            at(Some(c)),
            Some((2, 0)),
            "the first fallback with a deployment in rotation"
        );
        assert!(
            c.retry_ok,
            "a group with fallbacks always has an alternative"
        );
        // With no fallback in rotation either: the named group's least bad deployment.
        let t = Table {
            up: vec![vec![false, false], vec![false]],
            fallbacks: vec![vec![1], vec![]],
        };
        let c = Attempts::new(G0, 0)
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!((at(Some(c)), c.retry_ok), (Some((0, 0)), false));
    }

    #[test]
    fn deployments_over_their_quota_are_passed_over_and_the_loop_is_bounded() {
        let t = Table {
            up: vec![vec![true, true, true]],
            fallbacks: vec![vec![]],
        };
        let mut a = Attempts::new(G0, 3);
        let c = a
            .next(&t, 0, &mut rng(), |_, i| i == d(2))
            .expect("a deployment to try");
        assert_eq!(c.idx, d(2));
        assert!(a.tried().contains(d(0)) && a.tried().contains(d(1)) && !a.tried().contains(d(2)));
        // Every deployment refused by its quota: nothing to try.
        let mut a = Attempts::new(G0, 3);
        assert_eq!(a.next(&t, 0, &mut rng(), |_, _| false), None);
        // A fallback that always refuses cannot loop forever.
        let t = Table {
            up: vec![vec![false], vec![true]],
            fallbacks: vec![vec![1], vec![]],
        };
        let mut a = Attempts::new(G0, 3);
        assert_eq!(a.next(&t, 0, &mut rng(), |_, _| false), None);
        assert_eq!(a.rounds, Attempts::ROUNDS_MAX);
    }

    #[test]
    fn a_hedge_that_ran_beside_a_failed_attempt_is_not_tried_again() {
        let t = Table {
            up: vec![vec![true, true, true]],
            fallbacks: vec![vec![]],
        };
        let mut a = Attempts::new(G0, 3);
        let c = a
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        a.failed(c, Some((G0, d(1))));
        assert_eq!(at(a.next(&t, 0, &mut rng(), |_, _| true)), Some((0, 2)));
    }

    #[test]
    fn a_hedge_goes_to_another_deployment_than_the_attempt_and_those_that_failed() {
        let t = Table {
            up: vec![vec![true, true, true], vec![true, true]],
            fallbacks: vec![vec![1], vec![]],
        };
        let mut a = Attempts::new(G0, 3);
        let c = a
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!(c.idx, d(0));
        assert_eq!(a.hedge(&t, c, 0, &mut rng()), Some(d(1)));
        a.failed(c, None);
        let c = a
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!(c.idx, d(1));
        assert_eq!(
            a.hedge(&t, c, 0, &mut rng()),
            Some(d(2)),
            "not the failed one"
        );
        // The last one left: no hedge in its own group.
        a.failed(c, None);
        let c = a
            .next(&t, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!(c.idx, d(2));
        assert_eq!(a.hedge(&t, c, 0, &mut rng()), None);
        // An attempt at a fallback group hedges within that group; the named group's failures
        // do not apply there.
        let fallback = Choice {
            group: GroupId::new(1),
            idx: d(0),
            retry_ok: false,
        };
        assert_eq!(a.hedge(&t, fallback, 0, &mut rng()), Some(d(1)));
        // A group of one: no hedge.
        let one = Table {
            up: vec![vec![true]],
            fallbacks: vec![vec![]],
        };
        let mut a = Attempts::new(G0, 3);
        let c = a
            .next(&one, 0, &mut rng(), |_, _| true)
            .expect("a deployment to try");
        assert_eq!(a.hedge(&one, c, 0, &mut rng()), None);
    }

    #[test]
    fn the_retry_rule_and_outcomes() {
        for s in [429, 502, 503, 504] {
            assert!(retryable(&answered(s)), "{s}");
        }
        for s in [200, 400, 401, 404, 500, 501] {
            assert!(!retryable(&answered(s)), "{s}");
        }
        // No head: a timeout or a failed connection, both retried.
        assert!(matches!(
            outcome(None, 504, None, false),
            Outcome::Failure {
                kind: FailureKind::Timeout,
                ..
            }
        ));
        assert!(matches!(
            outcome(None, 502, None, false),
            Outcome::Failure {
                kind: FailureKind::Connect,
                ..
            }
        ));
        assert!(retryable(&outcome(None, 502, None, false)));
        // Broken off after the head: charged, never retried.
        let broke = outcome(Some(Duration::from_millis(3)), 200, None, true);
        assert!(matches!(
            broke,
            Outcome::Failure {
                kind: FailureKind::Reset,
                ..
            }
        ));
        assert!(!retryable(&broke));
        let ra = Some(Duration::from_secs(2));
        assert_eq!(
            outcome(Some(Duration::from_millis(1)), 429, ra, false),
            Outcome::Failure {
                kind: FailureKind::Status(429),
                retry_after: ra
            }
        );
        assert_eq!(
            outcome(Some(Duration::from_millis(9)), 200, None, false),
            Outcome::Success {
                latency: Duration::from_millis(9)
            }
        );
    }

    #[test]
    fn tried_is_a_bit_set_over_every_deployment() {
        let mut t = Tried::default();
        for i in [0, 63, 64, DEPLOYMENTS_MAX - 1, DEPLOYMENTS_MAX] {
            t.insert(d(i)); // the last is out of range: ignored
        }
        let mut buf = [0; DEPLOYMENTS_MAX];
        assert_eq!(t.list(&mut buf), &[0, 63, 64, DEPLOYMENTS_MAX - 1]);
        assert!(!t.contains(d(1)) && !t.contains(d(DEPLOYMENTS_MAX)));
    }
}
