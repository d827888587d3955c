//! Fair sharing of a saturated upstream: when an upstream is at its `max_concurrency`, requests
//! wait in per-tenant queues served by deficit round robin (DRR), weighted by the tenants'
//! `weight`. A tenant that floods gets its share and no more; a quiet tenant's request goes
//! ahead of the flood (it waits for at most one round, not for the flood to drain).
//!
//! One [`FairQueue`] per upstream per shard, on the shard's thread (no locks): the shared part
//! is only the upstream's in-flight counter in the region. A slot freed on this shard is handed
//! to the next waiter at once; slots freed on other shards are picked up on the shard's timer.
//! I/O-free apart from the waker: the connection driver awaits a [`Ticket`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
struct Waiter {
    granted: Cell<bool>,
    /// The request stopped waiting (timed out, or its connection ended).
    gone: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A place in a queue. Await [`Ticket::wait`]; dropping it leaves the queue.
#[derive(Debug)]
pub struct Ticket {
    waiter: Rc<Waiter>,
}

impl Ticket {
    /// Resolves when the request was granted a slot of the upstream (the slot is then its own,
    /// to release when it ends).
    pub fn wait(&self) -> TicketWait<'_> {
        TicketWait { ticket: self }
    }

    pub fn is_granted(&self) -> bool {
        self.waiter.granted.get()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.waiter.gone.set(true);
    }
}

/// The future of [`Ticket::wait`].
#[derive(Debug)]
pub struct TicketWait<'a> {
    ticket: &'a Ticket,
}

impl Future for TicketWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let w = &self.ticket.waiter;
        if w.granted.get() {
            return Poll::Ready(());
        }
        *w.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[derive(Debug, Default)]
struct TenantQueue {
    waiters: VecDeque<Rc<Waiter>>,
    /// Grants left in this tenant's turn of the round.
    deficit: u64,
    weight: u64,
}

/// Per-tenant queues of one upstream on one shard.
#[derive(Debug, Default)]
pub struct FairQueue {
    tenants: RefCell<HashMap<usize, TenantQueue>>,
    /// Tenants with waiters, in round-robin order.
    active: RefCell<VecDeque<usize>>,
}

impl FairQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether anyone waits (new requests then queue too, behind them, rather than overtake).
    pub fn has_waiters(&self) -> bool {
        !self.active.borrow().is_empty()
    }

    /// Join tenant `key`'s queue (`weight` ≥ 1). `None` when that queue already holds
    /// `depth_max` waiters.
    pub fn enqueue(&self, key: usize, weight: u32, depth_max: usize) -> Option<Ticket> {
        let mut tenants = self.tenants.borrow_mut();
        let q = tenants.entry(key).or_default();
        q.waiters.retain(|w| !w.gone.get());
        if q.waiters.len() >= depth_max {
            return None;
        }
        q.weight = u64::from(weight.max(1));
        let waiter = Rc::new(Waiter::default());
        q.waiters.push_back(waiter.clone());
        if q.waiters.len() == 1 {
            let mut active = self.active.borrow_mut();
            if !active.contains(&key) {
                active.push_back(key);
            }
        }
        Some(Ticket { waiter })
    }

    /// Grant one slot to the next waiter in DRR order; false when nobody (still) waits.
    pub fn grant_next(&self) -> bool {
        let mut tenants = self.tenants.borrow_mut();
        let mut active = self.active.borrow_mut();
        while let Some(&key) = active.front() {
            let Some(q) = tenants.get_mut(&key) else {
                active.pop_front();
                continue;
            };
            while q.waiters.front().is_some_and(|w| w.gone.get()) {
                q.waiters.pop_front();
            }
            let Some(w) = q.waiters.pop_front() else {
                q.deficit = 0;
                active.pop_front();
                tenants.remove(&key);
                continue;
            };
            if q.deficit == 0 {
                q.deficit = q.weight;
            }
            q.deficit -= 1;
            w.granted.set(true);
            if let Some(waker) = w.waker.borrow_mut().take() {
                waker.wake();
            }
            // Turn over: this tenant's share of the round is spent, or it has nobody left.
            if q.deficit == 0 || q.waiters.is_empty() {
                active.pop_front();
                if q.waiters.is_empty() {
                    q.deficit = 0;
                    tenants.remove(&key);
                } else {
                    active.push_back(key);
                }
            }
            return true;
        }
        false
    }
}

/// Every upstream's queue on this shard, by upstream name (kept across config changes).
#[derive(Debug, Default)]
pub struct Queues {
    by_name: RefCell<HashMap<String, Rc<FairQueue>>>,
}

impl Queues {
    pub fn get(&self, name: &str) -> Rc<FairQueue> {
        self.by_name
            .borrow_mut()
            .entry(name.to_owned())
            .or_default()
            .clone()
    }
}

/// An upstream's cap as one snapshot sees it.
#[derive(Debug)]
pub struct UpstreamCap {
    pub queue: Rc<FairQueue>,
    /// The in-flight counter shared by every shard (`None`: no cap, or the table was full).
    pub cells: Option<&'static crate::control::shm::TenantCells>,
    pub max: Option<u64>,
}

impl UpstreamCap {
    /// Take a slot now, if nobody waits and one is free.
    pub fn try_acquire(&self) -> bool {
        match (self.cells, self.max) {
            (Some(c), Some(max)) => {
                !self.queue.has_waiters() && crate::limit::Concurrency::acquire(&c.inflight, max)
            }
            _ => true,
        }
    }

    /// Whether requests to this upstream are capped at all.
    pub fn is_capped(&self) -> bool {
        self.cells.is_some() && self.max.is_some()
    }

    /// Give a slot back and hand free slots to waiters.
    pub fn release(&self) {
        if let Some(c) = self.cells {
            crate::limit::Concurrency::release(&c.inflight);
        }
        self.dispatch();
    }

    /// Hand free slots (freed here or on other shards) to waiters, in fair order.
    pub fn dispatch(&self) {
        let (Some(c), Some(max)) = (self.cells, self.max) else {
            return;
        };
        while self.queue.has_waiters() && crate::limit::Concurrency::acquire(&c.inflight, max) {
            if !self.queue.grant_next() {
                crate::limit::Concurrency::release(&c.inflight);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quiet_tenant_goes_ahead_of_a_flood() {
        let q = FairQueue::new();
        let flood: Vec<Ticket> = (0..10)
            .map(|_| q.enqueue(1, 1, 100).expect("room"))
            .collect();
        let quiet = q.enqueue(2, 1, 100).expect("room");
        // First grant: the flood's head; second: the quiet tenant, not the flood's second.
        assert!(q.grant_next());
        assert_eq!(flood.iter().filter(|t| t.is_granted()).count(), 1);
        assert!(q.grant_next());
        assert!(
            quiet.is_granted(),
            "the quiet tenant waited behind the flood"
        );
        assert_eq!(flood.iter().filter(|t| t.is_granted()).count(), 1);
        // Then the flood drains.
        while q.grant_next() {}
        assert!(flood.iter().all(Ticket::is_granted));
    }

    #[test]
    fn weights_share_grants_in_proportion() {
        let q = FairQueue::new();
        let heavy: Vec<Ticket> = (0..30)
            .map(|_| q.enqueue(1, 3, 100).expect("room"))
            .collect();
        let light: Vec<Ticket> = (0..30)
            .map(|_| q.enqueue(2, 1, 100).expect("room"))
            .collect();
        for _ in 0..20 {
            assert!(q.grant_next());
        }
        let h = heavy.iter().filter(|t| t.is_granted()).count();
        let l = light.iter().filter(|t| t.is_granted()).count();
        assert_eq!(h + l, 20);
        assert_eq!((h, l), (15, 5), "weight 3 : 1");
    }

    #[test]
    fn depth_is_bounded_and_gone_waiters_are_skipped() {
        let q = FairQueue::new();
        let a = q.enqueue(1, 1, 2).expect("room");
        let b = q.enqueue(1, 1, 2).expect("room");
        assert!(q.enqueue(1, 1, 2).is_none(), "past depth_max");
        drop(a);
        assert!(q.grant_next());
        assert!(b.is_granted(), "a waiter that left was granted instead");
        assert!(!q.grant_next());
        assert!(!q.has_waiters());
        // A freed place can be taken again.
        assert!(q.enqueue(1, 1, 2).is_some());
    }
}
