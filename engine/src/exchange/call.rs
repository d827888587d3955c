//! A request's call to a model group, as a state machine without I/O: events in (start, an
//! attempt ended and may or may not be retried), actions out (send to this deployment with
//! this hedge, refuse: nothing is left, done). It owns the attempt loop ([`Attempts`]) and
//! keeps the request's [`Ledger`] in step with it: a deployment's quota is taken when the
//! deployment is chosen and given back when its attempt fails over.
//!
//! The driver (`conn::call::proxy_llm`) performs each `Send` (builds the request, races the
//! hedge, forwards, relays) and reports how it ended; everything decided between attempts is
//! decided here, from the [`World`] (the snapshot's groups, balancers and limit cells on a
//! shard; a table in `exchange::sim` and the `exchange` fuzz target), `now` and the random
//! numbers it is handed.

use super::attempts::{Attempts, Choice, Groups, Tried};
use super::ledger::{Books, Ledger};
use std::time::Duration;

use crate::clock::Now;
use crate::snapshot::{DeploymentIdx, GroupId};

/// What the call needs of the world besides the groups and the books.
pub trait World: Groups + Books {
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
}

/// What the driver reports to the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The request was admitted: the first attempt, please.
    Start,
    /// The attempt the last [`Action::Send`] asked for ended. `retry`: it failed before any
    /// byte reached the client and the one retry rule lets it be tried elsewhere (its
    /// `retry_ok` allowed it); otherwise the exchange is over. `hedge_won`: a hedge raced beside
    /// it and won (its deployment is not tried again either).
    Ended {
        retry: bool,
        hedge_won: Option<(GroupId, DeploymentIdx)>,
    },
}

/// What the call asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send the request to `choice`'s deployment (its quota, if it has one, is held in the
    /// ledger: `quota_held`), and, for a hedged stream, race a second attempt at `hedge`'s
    /// deployment after its wait.
    Send {
        choice: Choice,
        quota_held: bool,
        hedge: Option<(DeploymentIdx, Duration)>,
    },
    /// No deployment is left to try: answer `NoDeployment`.
    Refuse,
    /// The exchange is over (answered or relayed by the last attempt).
    Done,
}

/// One request's call to a model group.
#[derive(Debug, Clone)]
pub struct Call {
    attempts: Attempts,
    /// The request's token estimate, for the deployments' quotas.
    tokens: u64,
    /// A streamed request (only streams are hedged).
    stream: bool,
    /// The attempt under way.
    current: Option<Choice>,
}

impl Call {
    /// A call to group `g`, whose failures before the first byte may be retried `retries`
    /// times.
    pub fn new(g: GroupId, retries: usize, tokens: u64, stream: bool) -> Self {
        Self {
            attempts: Attempts::new(g, retries),
            tokens,
            stream,
            current: None,
        }
    }

    /// The named group's deployments tried and failed (or passed over for their quota).
    pub fn tried(&self) -> &Tried {
        self.attempts.tried()
    }

    /// Take `event` and say what to do next; the request's reservations are kept in `held`.
    pub fn step<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        rng: &mut dyn FnMut() -> u64,
        event: Event,
    ) -> Action {
        match (event, self.current.take()) {
            (Event::Start, None) => self.next(world, held, now, rng),
            (
                Event::Ended {
                    retry: true,
                    hedge_won,
                },
                Some(failed),
            ) => {
                // Failed before any byte reached the client: its quota goes back, and neither
                // it nor a hedge beside it is tried again.
                held.end_attempt(world, now.unix_ns);
                self.attempts.failed(failed, hedge_won);
                self.next(world, held, now, rng)
            }
            // Over: answered or relayed (or an event out of order, which ends the call too).
            _ => Action::Done,
        }
    }

    fn next<W: World>(
        &mut self,
        world: &W,
        held: &mut Ledger<W::Admission>,
        now: Now,
        rng: &mut dyn FnMut() -> u64,
    ) -> Action {
        let mut quota = None;
        let tokens = self.tokens;
        let choice = self.attempts.next(world, now.mono_ns(), rng, |group, idx| {
            match world.take_quota(group, idx, tokens, now.unix_ns) {
                Ok(adm) => {
                    quota = adm;
                    true
                }
                Err(()) => false,
            }
        });
        let Some(choice) = choice else {
            return Action::Refuse;
        };
        let quota_held = quota.is_some();
        if let Some(adm) = quota {
            held.hold_deployment(world, (choice.group, choice.idx), adm, now.unix_ns);
        }
        let hedge = match world.hedge_after(choice.group) {
            Some(after) if self.stream => self
                .attempts
                .hedge(world, choice, now.mono_ns(), rng)
                .map(|idx| (idx, after)),
            _ => None,
        };
        self.current = Some(choice);
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
    use crate::snapshot::{FairSlot, TenantId, UpstreamId};

    /// One group of `n` deployments, all in rotation; each deployment's quota answer from
    /// `quota` (`None`: no quota of its own, `Some(false)`: over it).
    struct One {
        n: usize,
        quota: Vec<Option<bool>>,
        hedges: bool,
        tickets: Cell<u32>,
        /// (ticket, failed) of each deployment quota settled.
        settled: RefCell<Vec<(u32, bool)>>,
    }

    impl One {
        fn new(n: usize, quota: Vec<Option<bool>>, hedges: bool) -> Self {
            Self {
                n,
                quota,
                hedges,
                tickets: Cell::new(0),
                settled: RefCell::new(Vec::new()),
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

    fn retry() -> Event {
        Event::Ended {
            retry: true,
            hedge_won: None,
        }
    }

    #[test]
    fn a_failed_attempt_gives_its_quota_back_and_the_next_is_sent_until_none_is_left() {
        let w = One::new(3, vec![Some(true), None, Some(true)], false);
        let mut held = Ledger::default();
        let mut call = Call::new(G, 5, 100, false);
        let mut rng = || 0;
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, Event::Start)),
            (0, true, true, None)
        );
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
            call.step(&w, &mut held, NOW, &mut rng, retry()),
            Action::Refuse
        );
        assert_eq!(*w.settled.borrow(), vec![(1, true), (2, true)]);
    }

    #[test]
    fn deployments_over_their_quota_are_passed_over_and_an_answer_ends_the_call() {
        let w = One::new(3, vec![Some(false), Some(false), Some(true)], false);
        let mut held = Ledger::default();
        let mut call = Call::new(G, 1, 100, false);
        let mut rng = || 0;
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, Event::Start)),
            (2, false, true, None)
        );
        assert!(call.tried().contains(DeploymentIdx::new(0)));
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
        let mut call = Call::new(G, 1, 100, false);
        assert_eq!(
            call.step(&w, &mut Ledger::default(), NOW, &mut rng, Event::Start),
            Action::Refuse
        );
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
            let mut call = Call::new(G, 2, 100, stream);
            let first = call.step(&w, &mut Ledger::default(), NOW, &mut rng, Event::Start);
            assert_eq!(sent(first).3, want, "stream {stream}, hedges {hedges}");
        }
        let w = One::new(3, vec![None; 3], true);
        let mut held = Ledger::default();
        let mut call = Call::new(G, 2, 100, true);
        assert_eq!(
            sent(call.step(&w, &mut held, NOW, &mut rng, Event::Start)),
            (0, true, false, Some(1))
        );
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
}
