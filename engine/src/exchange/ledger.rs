//! What a request holds until it ends, and its settlement: exactly once, whatever path ends
//! it.
//!
//! A request can hold three kinds of reservation: its tenant's admission (a slot in flight,
//! tokens and budget reserved by estimate), a model deployment's quota, and a slot of a capped
//! upstream. Each is taken at one point of the lifecycle and must be given back exactly once:
//! at the end of the request with the tokens really used, earlier when an attempt fails and
//! another deployment is tried, or, when the exchange is dropped half-way (the client left,
//! the shard shuts down), on drop. The ledger owns them, so no exit path has to remember.
//!
//! The books the reservations are settled against are a trait, so the tests and the fuzz
//! target count every settlement (`exchange::sim`).

use crate::snapshot::{DeploymentIdx, FairSlot, GroupId, TenantId, UpstreamId};

/// Where reservations are settled: the snapshot's limit cells and fair queues on a shard.
pub trait Books {
    /// A reservation of limits (tenant admission or deployment quota).
    type Admission;
    /// Settle tenant `t`'s admission: `used` tokens when known; given back when `failed`.
    fn settle_tenant(
        &self,
        t: TenantId,
        adm: Self::Admission,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    );
    /// Settle the quota of deployment `idx` of group `group`.
    fn settle_deployment(
        &self,
        group: GroupId,
        idx: DeploymentIdx,
        adm: Self::Admission,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    );
    /// Give back a slot of capped upstream `upstream`, held in the name of fair slot `fair`.
    fn release_slot(&self, upstream: UpstreamId, fair: FairSlot, now_ms: u64);
}

/// A request's reservations.
#[derive(Debug)]
pub struct Ledger<A> {
    tenant: Option<(TenantId, A)>,
    deployment: Option<(GroupId, DeploymentIdx, A)>,
    /// The capped upstream whose slot is held, and the fair slot it is held for.
    slot: Option<(UpstreamId, FairSlot)>,
}

impl<A> Default for Ledger<A> {
    fn default() -> Self {
        Self {
            tenant: None,
            deployment: None,
            slot: None,
        }
    }
}

impl<A> Ledger<A> {
    /// Nothing is held.
    pub fn is_empty(&self) -> bool {
        self.tenant.is_none() && self.deployment.is_none() && self.slot.is_none()
    }

    /// The tenant's admission, while held.
    pub fn tenant(&self) -> Option<&A> {
        self.tenant.as_ref().map(|(_, a)| a)
    }

    /// The deployment whose quota is held.
    pub fn deployment(&self) -> Option<(GroupId, DeploymentIdx)> {
        self.deployment.as_ref().map(|&(g, i, _)| (g, i))
    }

    /// The capped upstream whose slot is held.
    pub fn slot(&self) -> Option<UpstreamId> {
        self.slot.map(|(u, _)| u)
    }

    /// Hold tenant `t`'s admission (a request is admitted once; a second admission settles
    /// the first as failed, which the driver never does).
    pub fn hold_tenant<B: Books<Admission = A>>(
        &mut self,
        books: &B,
        t: TenantId,
        adm: A,
        now_ns: u64,
    ) {
        if let Some((old, a)) = self.tenant.replace((t, adm)) {
            books.settle_tenant(old, a, now_ns, None, true);
        }
    }

    /// Hold deployment `(group, idx)`'s quota (an earlier attempt's is settled as failed).
    pub fn hold_deployment<B: Books<Admission = A>>(
        &mut self,
        books: &B,
        (group, idx): (GroupId, DeploymentIdx),
        adm: A,
        now_ns: u64,
    ) {
        if let Some((g, i, a)) = self.deployment.replace((group, idx, adm)) {
            books.settle_deployment(g, i, a, now_ns, None, true);
        }
    }

    /// Hold a slot of capped upstream `upstream` for fair slot `fair` (one held before is
    /// given back).
    pub fn hold_slot<B: Books<Admission = A>>(
        &mut self,
        books: &B,
        upstream: UpstreamId,
        fair: FairSlot,
        now_ms: u64,
    ) {
        if let Some((u, f)) = self.slot.replace((upstream, fair)) {
            books.release_slot(u, f, now_ms);
        }
    }

    /// Give the upstream slot back now (an attempt ended; another may take one).
    pub fn release_slot<B: Books<Admission = A>>(&mut self, books: &B, now_ms: u64) {
        if let Some((u, f)) = self.slot.take() {
            books.release_slot(u, f, now_ms);
        }
    }

    /// An attempt failed and another deployment will be tried: its quota is given back and
    /// its upstream slot released. The tenant's admission stays (the request goes on).
    pub fn end_attempt<B: Books<Admission = A>>(&mut self, books: &B, now_ns: u64) {
        if let Some((g, i, a)) = self.deployment.take() {
            books.settle_deployment(g, i, a, now_ns, None, true);
        }
        self.release_slot(books, now_ns / 1_000_000);
    }

    /// A hedge won: the first attempt was sent (the provider counts it), so its quota stays
    /// charged at its estimate; the hedge's quota (if it had one) is the request's from now on.
    /// (The upstream slots change hands with [`Ledger::release_slot`] and [`Ledger::hold_slot`]
    /// when the race ends.)
    pub fn hedge_won<B: Books<Admission = A>>(
        &mut self,
        books: &B,
        deployment: Option<((GroupId, DeploymentIdx), A)>,
        now_ns: u64,
    ) {
        if let Some((g, i, a)) = self.deployment.take() {
            books.settle_deployment(g, i, a, now_ns, None, false);
        }
        self.deployment = deployment.map(|((g, i), a)| (g, i, a));
    }

    /// The request ended: everything is settled, with the tokens `used` when known; given
    /// back when it `failed`.
    pub fn settle<B: Books<Admission = A>>(
        &mut self,
        books: &B,
        now_ns: u64,
        used: Option<u64>,
        failed: bool,
    ) {
        self.release_slot(books, now_ns / 1_000_000);
        if let Some((g, i, a)) = self.deployment.take() {
            books.settle_deployment(g, i, a, now_ns, used, failed);
        }
        if let Some((t, a)) = self.tenant.take() {
            books.settle_tenant(t, a, now_ns, used, failed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::sim::Counted;

    fn t(i: usize) -> TenantId {
        TenantId::new(i)
    }
    fn dep(g: usize, i: usize) -> (GroupId, DeploymentIdx) {
        (GroupId::new(g), DeploymentIdx::new(i))
    }
    fn up(u: usize) -> UpstreamId {
        UpstreamId::new(u)
    }
    const F: FairSlot = FairSlot::NO_TENANT;

    #[test]
    fn a_retried_attempt_gives_back_its_quota_and_slot_and_keeps_the_tenant() {
        let b = Counted::default();
        let mut l = Ledger::default();
        l.hold_tenant(&b, t(0), 1, 0);
        l.hold_deployment(&b, dep(0, 0), 2, 0);
        l.hold_slot(&b, up(7), F, 0);
        l.end_attempt(&b, 0);
        assert_eq!(*b.settled.borrow(), vec![(2, None, true)]);
        assert_eq!(*b.released.borrow(), vec![up(7)]);
        assert_eq!(l.tenant(), Some(&1));
        l.hold_deployment(&b, dep(0, 1), 4, 0);
        l.settle(&b, 0, Some(42), false);
        assert_eq!(
            *b.settled.borrow(),
            vec![(2, None, true), (4, Some(42), false), (1, Some(42), false)]
        );
        assert!(l.is_empty());
        l.settle(&b, 0, None, true);
        assert_eq!(
            b.settled.borrow().len(),
            3,
            "settling twice settles nothing more"
        );
    }

    #[test]
    fn a_won_hedge_keeps_the_first_attempt_charged_and_takes_over() {
        let b = Counted::default();
        let mut l = Ledger::default();
        l.hold_deployment(&b, dep(0, 0), 1, 0);
        l.hold_slot(&b, up(5), F, 0);
        l.release_slot(&b, 0);
        l.hold_slot(&b, up(6), F, 0);
        l.hedge_won(&b, Some((dep(0, 1), 2)), 0);
        assert_eq!(*b.settled.borrow(), vec![(1, None, false)]);
        assert_eq!(*b.released.borrow(), vec![up(5)]);
        assert_eq!((l.deployment(), l.slot()), (Some(dep(0, 1)), Some(up(6))));
        l.settle(&b, 0, None, true);
        assert_eq!(*b.settled.borrow(), vec![(1, None, false), (2, None, true)]);
        assert_eq!(*b.released.borrow(), vec![up(5), up(6)]);
    }
}
