//! Fair sharing of a saturated upstream over every shard: when an upstream is at its
//! `max_concurrency`, requests wait, and each freed slot goes to the waiting request with the
//! smallest virtual start tag *of all shards*, whichever shard it waits on and whichever shard
//! freed the slot. A tenant that floods gets its weighted share and no more; a quiet tenant's
//! request goes ahead of the flood (it waits for about one freed slot, not for the flood to
//! drain), and it does so on every shard (docs/decisions/0008-fair-sharing-across-shards.md).
//!
//! # The scheme: start-time fair queueing with one virtual clock per upstream
//! Each request that must wait is stamped, when it joins, with a start tag
//! `S = max(V, F[t])`, and its tenant's finish tag moves to `F[t] = S + cost × 2¹⁶ / weight`
//! (`cost`: the admission's token estimate, at least 1; plain requests cost 1). `V`, the
//! upstream's virtual time, is the largest start tag granted so far. A tenant that has been
//! idle starts at `V`, ahead of every backlogged tenant's queue; two backlogged tenants are
//! granted in proportion to their weights, by tokens. `V` and every `F[t]` live in [`Shared`],
//! one per capped upstream for the whole process (atomics only; `F[t]` moves by CAS).
//!
//! # Shards and hand-offs
//! Waiters stay on their own shard (their task and socket live there), in per-tenant FIFO
//! queues ([`FairQueue`]); each shard publishes the smallest tag it holds in its `heads` cell.
//! The shard holding a free slot (one it just released, or one it took from the in-flight
//! counter) compares its own smallest tag (read from its queues) with the other shards'
//! heads: the slot goes to its own waiter at once, or to the shard with the smallest head by
//! adding one to that shard's `handoff` count and ringing its bell (a byte on a Unix
//! socket the shard's bell task reads through its own ring). The woken shard decides again
//! for each slot handed to it, with the same rule: its own smallest waiter if that is still
//! the smallest tag anywhere, or on to the shard that now has it. A head is a lower bound of
//! what that shard holds, so a burst of releases may send it more slots than it has waiters
//! ahead of the others; the extra ones come back the same way. A slot is always in exactly
//! one place: held by a request, counted in a `handoff`, or free in the in-flight counter, so
//! none is lost, and none stays free while a waiter is visible (work-conserving, but for the
//! headroom below). The shard's 10 ms timer runs the same dispatch as a backstop.
//!
//! # Headroom
//! A flood fills every slot at once and, against a fixed-latency upstream, frees them in step,
//! so a quiet tenant first in line still waits for the next release. A capped upstream keeps
//! `headroom_slots`: while another tenant used it within `FAIR_ACTIVE_MS` and no other tenant
//! waits, a tenant never takes the last `headroom_slots` slots (counted per tenant in
//! `Shared::held`). Tenants that all wait are served by their tags alone; a tenant alone on
//! the upstream gets every slot.
//!
//! # Memory ordering
//! A new waiter publishes its head and then tries to take a free slot; a releasing shard frees
//! the slot and then looks for heads. Both sides put a `SeqCst` fence between the two steps,
//! so at least one of them sees the other (no waiter sleeps beside a free slot). Tags are
//! advisory: a stale head at worst sends a slot to a shard that passes it on.
//!
//! I/O-free apart from the waker and the bell: the connection driver awaits a [`Ticket`].

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, Waker};

use crossbeam::utils::CachePadded;

use crate::control::shm::TenantCells;
use crate::limit::Concurrency;
use crate::limits::{FAIR_ACTIVE_MS, FAIR_PASS_TRIES_MAX, TENANT_SLOTS};

/// A `heads` cell with no waiter behind it.
const HEAD_EMPTY: u64 = u64::MAX;
/// Largest tag: tags stay below `HEAD_EMPTY`.
const TAG_MAX: u64 = HEAD_EMPTY - 1;
/// Virtual-time units per token of cost at weight 1 (so weights up to 2¹⁶ still advance tags).
const COST_SCALE: u64 = 1 << 16;
/// The finish-tag cell of requests without a tenant (`auth = "none"`): after the tenants'.
pub const FAIR_NO_TENANT: usize = TENANT_SLOTS;

index_type!(
    /// A tenant's finish-tag cell in the fair queues: its slot in the region's tenant table, or
    /// [`FairSlot::NO_TENANT`].
    FairSlot
);

impl FairSlot {
    /// The cell of requests without a tenant.
    pub const NO_TENANT: Self = Self(FAIR_NO_TENANT);
}

/// What every shard of the process shares for fair sharing: each shard's bell, and the shared
/// part of each capped upstream's queue, found by the upstream's slot in the region's tenant
/// table (stable for a name across shards and configs).
#[derive(Debug)]
pub struct Fabric {
    bells: Box<[Bell]>,
    upstreams: Box<[OnceLock<Arc<Shared>>]>,
}

/// One shard's doorbell: other shards ring it after handing it a slot.
#[derive(Debug)]
struct Bell {
    /// A byte is on its way (rings in between are folded into it).
    rung: AtomicBool,
    /// Non-blocking write end; `None` in tests, where hand-offs are taken by hand.
    tx: Option<UnixStream>,
}

impl Fabric {
    /// A fabric for `shards` shards, and each shard's read end of its bell (non-blocking,
    /// for the shard's runtime to read).
    pub fn new(shards: usize) -> std::io::Result<(Arc<Self>, Vec<UnixStream>)> {
        let mut bells = Vec::with_capacity(shards);
        let mut ends = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = UnixStream::pair()?;
            tx.set_nonblocking(true)?;
            rx.set_nonblocking(true)?;
            bells.push(Bell {
                rung: AtomicBool::new(false),
                tx: Some(tx),
            });
            ends.push(rx);
        }
        Ok((Self::with_bells(bells), ends))
    }

    /// A fabric whose bells ring nobody (unit tests drive hand-offs themselves).
    pub fn silent(shards: usize) -> Arc<Self> {
        Self::with_bells(
            (0..shards)
                .map(|_| Bell {
                    rung: AtomicBool::new(false),
                    tx: None,
                })
                .collect(),
        )
    }

    fn with_bells(bells: Vec<Bell>) -> Arc<Self> {
        Arc::new(Self {
            bells: bells.into_boxed_slice(),
            upstreams: (0..TENANT_SLOTS).map(|_| OnceLock::new()).collect(),
        })
    }

    pub fn shards(&self) -> usize {
        self.bells.len()
    }

    /// The shared queue state of the upstream whose cells sit at `slot` of the region's tenant
    /// table (made on first use; config time only).
    pub fn upstream(&self, slot: usize) -> Option<Arc<Shared>> {
        let cell = self.upstreams.get(slot)?;
        Some(
            cell.get_or_init(|| Arc::new(Shared::new(self.shards())))
                .clone(),
        )
    }

    /// Wake shard `shard`'s bell task (one byte per wake-up, however many rings).
    pub fn ring(&self, shard: usize) {
        let Some(bell) = self.bells.get(shard) else {
            return;
        };
        if bell.rung.swap(true, Ordering::SeqCst) {
            return;
        }
        if let Some(tx) = &bell.tx {
            // WouldBlock cannot happen (one byte at most is unread); any other failure leaves
            // the hand-off to the shard's timer.
            let _ = (&*tx).write(&[1]);
        }
    }

    /// The bell task of `shard` read its byte: later rings write again.
    pub fn heard(&self, shard: usize) {
        if let Some(bell) = self.bells.get(shard) {
            bell.rung.store(false, Ordering::SeqCst);
        }
    }
}

/// The part of one capped upstream's fair queue that every shard shares.
#[derive(Debug)]
pub struct Shared {
    /// Virtual time: the largest start tag granted so far.
    vtime: CachePadded<AtomicU64>,
    /// Per shard: the smallest tag waiting there (`HEAD_EMPTY`: none), written by that shard.
    heads: Box<[CachePadded<Head>]>,
    /// Per shard: slots handed to it and not yet given to its waiters.
    handoff: Box<[CachePadded<AtomicU64>]>,
    /// Per tenant slot (and [`FAIR_NO_TENANT`]): the finish tag of its last request.
    finish: Box<[AtomicU64]>,
    /// Per tenant slot: the slots it holds now.
    held: Box<[AtomicU64]>,
    /// The two tenants that used the upstream last, each `ms << 16 | tenant slot` (0: none):
    /// whether a tenant other than the one asking was active lately.
    recent: [CachePadded<AtomicU64>; 2],
}

/// A shard's smallest waiting tag and that waiter's tenant slot (written slot first, then tag;
/// a reader racing a write may pair a tag with the previous slot, which only makes one
/// hand-off less well aimed: the receiver decides again).
#[derive(Debug)]
struct Head {
    tag: AtomicU64,
    slot: AtomicU64,
}

/// Bits of a tenant slot in a `recent` cell.
const RECENT_TENANT_BITS: u32 = 16;
const _: () = assert!(FAIR_NO_TENANT < 1 << RECENT_TENANT_BITS);

impl Shared {
    fn new(shards: usize) -> Self {
        let per_tenant = || (0..=FAIR_NO_TENANT).map(|_| AtomicU64::new(0)).collect();
        Self {
            vtime: CachePadded::new(AtomicU64::new(0)),
            heads: (0..shards)
                .map(|_| {
                    CachePadded::new(Head {
                        tag: AtomicU64::new(HEAD_EMPTY),
                        slot: AtomicU64::new(0),
                    })
                })
                .collect(),
            handoff: (0..shards)
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
            finish: per_tenant(),
            held: per_tenant(),
            recent: [
                CachePadded::new(AtomicU64::new(0)),
                CachePadded::new(AtomicU64::new(0)),
            ],
        }
    }

    /// Stamp a request of the tenant at `slot` costing `cost` at `weight`: its start tag.
    fn stamp(&self, slot: usize, cost: u64, weight: u32) -> u64 {
        let step = (cost.max(1).saturating_mul(COST_SCALE) / u64::from(weight.max(1))).max(1);
        let v = self.vtime.load(Ordering::Acquire);
        let finish = &self.finish[slot.min(FAIR_NO_TENANT)];
        let mut f = finish.load(Ordering::Acquire);
        loop {
            let start = v.max(f).min(TAG_MAX);
            let next = start.saturating_add(step).min(TAG_MAX);
            match finish.compare_exchange_weak(f, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return start,
                Err(now) => f = now,
            }
        }
    }

    /// The tenant at `slot` uses the upstream at `now_ms` (one store a millisecond at most).
    fn note_active(&self, slot: usize, now_ms: u64) {
        let slot = slot.min(FAIR_NO_TENANT) as u64;
        let packed = now_ms << RECENT_TENANT_BITS | slot;
        let last = self.recent[0].load(Ordering::Relaxed);
        if last == packed {
            return;
        }
        if last & ((1 << RECENT_TENANT_BITS) - 1) != slot {
            self.recent[1].store(last, Ordering::Relaxed);
        }
        self.recent[0].store(packed, Ordering::Relaxed);
    }

    /// Another tenant than the one at `slot` used the upstream within `FAIR_ACTIVE_MS`.
    fn others_active(&self, slot: usize, now_ms: u64) -> bool {
        let slot = slot.min(FAIR_NO_TENANT) as u64;
        self.recent.iter().any(|r| {
            let r = r.load(Ordering::Relaxed);
            let ms = r >> RECENT_TENANT_BITS;
            r != 0
                && r & ((1 << RECENT_TENANT_BITS) - 1) != slot
                && ms.saturating_add(FAIR_ACTIVE_MS) > now_ms
        })
    }

    /// One more slot for the tenant at `slot` would eat into the headroom kept for others.
    fn at_headroom(&self, slot: usize, cap: &Cap<'_>) -> bool {
        cap.headroom > 0
            && self.held[slot.min(FAIR_NO_TENANT)].load(Ordering::Relaxed) + cap.headroom >= cap.max
            && self.others_active(slot, cap.now_ms)
    }

    fn hold(&self, slot: usize) {
        self.held[slot.min(FAIR_NO_TENANT)].fetch_add(1, Ordering::Relaxed);
    }

    fn unhold(&self, slot: usize) {
        Concurrency::release(&self.held[slot.min(FAIR_NO_TENANT)]);
    }

    /// Some shard has a waiter.
    fn any_waiting(&self) -> bool {
        self.heads
            .iter()
            .any(|h| h.tag.load(Ordering::SeqCst) != HEAD_EMPTY)
    }

    /// Every other shard's head: (shard, tag, tenant slot).
    fn heads_except(&self, me: usize) -> impl Iterator<Item = (usize, u64, usize)> + '_ {
        self.heads.iter().enumerate().filter_map(move |(shard, h)| {
            let tag = h.tag.load(Ordering::SeqCst);
            let slot = usize::try_from(h.slot.load(Ordering::SeqCst)).unwrap_or(FAIR_NO_TENANT);
            (shard != me && tag != HEAD_EMPTY).then_some((shard, tag, slot))
        })
    }
}

/// A capped upstream as one slot movement sees it.
#[derive(Debug, Clone, Copy)]
struct Cap<'a> {
    /// Requests in flight over all shards (slots held, handed over, or being passed).
    inflight: &'a AtomicU64,
    max: u64,
    headroom: u64,
    now_ms: u64,
}

#[derive(Debug)]
struct Waiter {
    tag: u64,
    /// The tenant's slot (its finish tag and held count).
    slot: usize,
    granted: Cell<bool>,
    /// The request stopped waiting (timed out, or its connection ended).
    gone: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

/// A place in a queue. Await [`Ticket::wait`]; dropping it leaves the queue.
#[derive(Debug)]
pub struct Ticket {
    waiter: Rc<Waiter>,
    queue: Rc<FairQueue>,
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

    /// The start tag it was stamped with (smaller is served first).
    pub fn tag(&self) -> u64 {
        self.waiter.tag
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.waiter.granted.get() {
            self.waiter.gone.set(true);
            // Other shards must not keep sending slots for a waiter that left.
            self.queue.publish();
        }
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

/// One shard's waiters of one capped upstream, in per-tenant FIFO queues (a tenant's tags grow
/// in the order it joins, so each queue's front is its smallest).
#[derive(Debug)]
pub struct FairQueue {
    shard: usize,
    shared: Arc<Shared>,
    fabric: Arc<Fabric>,
    tenants: RefCell<HashMap<usize, VecDeque<Rc<Waiter>>>>,
}

/// A waiter at the front of its tenant's queue here: (queue key, tag, tenant slot).
type Front = (usize, u64, usize);

/// Where a slot in hand goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    Here(Front),
    Shard(usize),
}

impl FairQueue {
    pub fn new(shard: usize, shared: Arc<Shared>, fabric: Arc<Fabric>) -> Self {
        Self {
            shard,
            shared,
            fabric,
            tenants: RefCell::new(HashMap::new()),
        }
    }

    /// Whether anyone waits on this shard.
    pub fn has_waiters(&self) -> bool {
        !self.tenants.borrow().is_empty()
    }

    /// Join tenant `key`'s queue: stamped for the tenant's slot `slot` with `cost` at
    /// `weight`. `None` when that queue already holds `depth_max` waiters here.
    fn join(
        self: &Rc<Self>,
        (key, slot): (usize, usize),
        weight: u32,
        cost: u64,
        depth_max: usize,
    ) -> Option<Ticket> {
        let mut tenants = self.tenants.borrow_mut();
        let q = tenants.entry(key).or_default();
        q.retain(|w| !w.gone.get());
        if q.len() >= depth_max {
            if q.is_empty() {
                tenants.remove(&key);
            }
            return None;
        }
        let waiter = Rc::new(Waiter {
            tag: self.shared.stamp(slot, cost, weight),
            slot,
            granted: Cell::new(false),
            gone: Cell::new(false),
            waker: RefCell::new(None),
        });
        q.push_back(waiter.clone());
        drop(tenants);
        self.publish();
        Some(Ticket {
            waiter,
            queue: self.clone(),
        })
    }

    /// The smallest tag waiting here among tenants `eligible` lets through, dropping waiters
    /// that left.
    fn min_front(&self, eligible: impl Fn(usize) -> bool) -> Option<Front> {
        let mut tenants = self.tenants.borrow_mut();
        tenants.retain(|_, q| {
            while q.front().is_some_and(|w| w.gone.get()) {
                q.pop_front();
            }
            !q.is_empty()
        });
        tenants
            .iter()
            .filter_map(|(&k, q)| q.front().map(|w| (k, w.tag, w.slot)))
            .filter(|&(_, _, slot)| eligible(slot))
            .min_by_key(|&(k, tag, _)| (tag, k))
    }

    /// Write this shard's smallest tag (or none) where the other shards look.
    fn publish(&self) {
        let head = &self.shared.heads[self.shard];
        match self.min_front(|_| true) {
            Some((_, tag, slot)) => {
                head.slot.store(slot as u64, Ordering::SeqCst);
                head.tag.store(tag, Ordering::SeqCst);
            }
            None => head.tag.store(HEAD_EMPTY, Ordering::SeqCst),
        }
    }

    /// Grant the slot in hand to the front waiter of tenant `key` here.
    fn grant(&self, (key, tag, slot): Front) {
        let mut tenants = self.tenants.borrow_mut();
        let Some(q) = tenants.get_mut(&key) else {
            return;
        };
        let Some(w) = q.pop_front() else {
            return;
        };
        if q.is_empty() {
            tenants.remove(&key);
        }
        drop(tenants);
        self.shared.vtime.fetch_max(tag, Ordering::AcqRel);
        self.shared.hold(slot);
        w.granted.set(true);
        let waker = w.waker.borrow_mut().take();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Where a slot in hand should go: the waiter with the smallest tag, this shard's own
    /// (read from its queues) or the smallest head another shard published. `None`: nobody
    /// waits, or the only tenant waiting would take the headroom kept for the others that
    /// were active lately (while another tenant waits, the tags alone decide).
    fn target(&self, cap: &Cap<'_>) -> Option<Target> {
        let local = self.min_front(|_| true);
        let remote = self
            .shared
            .heads_except(self.shard)
            .min_by_key(|&(shard, tag, _)| (tag, shard));
        let (target, slot) = match (local, remote) {
            (Some(f), r) if r.is_none_or(|(_, tag, _)| f.1 <= tag) => (Target::Here(f), f.2),
            (_, Some((shard, _, slot))) => (Target::Shard(shard), slot),
            (_, None) => return None,
        };
        if self.shared.at_headroom(slot, cap) {
            let others_wait = self.min_front(|s| s != slot).is_some()
                || self
                    .shared
                    .heads_except(self.shard)
                    .any(|(_, _, s)| s != slot);
            if !others_wait {
                return None;
            }
        }
        Some(target)
    }

    /// Give one slot in hand (counted in `inflight`) to [`FairQueue::target`], or free it
    /// (false).
    fn pass_slot(&self, cap: &Cap<'_>) -> bool {
        for _ in 0..FAIR_PASS_TRIES_MAX {
            match self.target(cap) {
                Some(Target::Here(front)) => {
                    self.grant(front);
                    self.publish();
                    return true;
                }
                Some(Target::Shard(shard)) => {
                    self.shared.handoff[shard].fetch_add(1, Ordering::SeqCst);
                    self.fabric.ring(shard);
                    return true;
                }
                None => {
                    self.publish();
                    Concurrency::release(cap.inflight);
                    // Pairs with the fence in `dispatch`: a waiter that published before this
                    // release is seen below; one that publishes after it finds the slot free.
                    fence(Ordering::SeqCst);
                    if !(self.target(cap).is_some() && Concurrency::acquire(cap.inflight, cap.max))
                    {
                        return false;
                    }
                }
            }
        }
        // Heads changed under every try: free the slot; the next release or timer hands it on.
        Concurrency::release(cap.inflight);
        false
    }

    /// Take the slots other shards handed here (each to the smallest waiter of any shard,
    /// normally one of this shard's), then hand free slots to waiters of any shard.
    fn dispatch(&self, cap: &Cap<'_>) {
        let handed = self.shared.handoff[self.shard].swap(0, Ordering::SeqCst);
        for _ in 0..handed {
            self.pass_slot(cap);
        }
        self.publish();
        loop {
            fence(Ordering::SeqCst);
            if self.target(cap).is_none() || !Concurrency::acquire(cap.inflight, cap.max) {
                return;
            }
            if !self.pass_slot(cap) {
                return;
            }
        }
    }
}

/// Every capped upstream's queue on this shard, by upstream name (kept across config changes).
#[derive(Debug, Default)]
pub struct Queues {
    by_name: RefCell<HashMap<String, Rc<FairQueue>>>,
}

impl Queues {
    pub fn get(
        &self,
        name: &str,
        shard: usize,
        shared: Arc<Shared>,
        fabric: &Arc<Fabric>,
    ) -> Rc<FairQueue> {
        self.by_name
            .borrow_mut()
            .entry(name.to_owned())
            .or_insert_with(|| Rc::new(FairQueue::new(shard, shared, fabric.clone())))
            .clone()
    }
}

/// A capped upstream in one snapshot: the in-flight counter every shard shares, this shard's
/// queue in front of it, and the config.
#[derive(Debug)]
pub struct Capped {
    pub cells: &'static TenantCells,
    pub queue: Rc<FairQueue>,
    pub max: u64,
    pub headroom: u64,
}

/// An upstream's cap as one snapshot sees it. Every call names the tenant's slot
/// ([`FairSlot`]: `Snapshot::fair_slot`) and the time in ms.
#[derive(Debug)]
pub struct UpstreamCap {
    /// `None`: no cap, or the region's table was full.
    pub capped: Option<Capped>,
}

impl Capped {
    fn cap(&self, now_ms: u64) -> Cap<'_> {
        Cap {
            inflight: &self.cells.inflight,
            max: self.max,
            headroom: self.headroom,
            now_ms,
        }
    }
}

impl UpstreamCap {
    /// Whether requests to this upstream are capped at all.
    pub fn is_capped(&self) -> bool {
        self.capped.is_some()
    }

    /// Take a slot now for the tenant at `slot`: if nobody waits on any shard, one is free,
    /// and it is not the headroom kept for other tenants.
    pub fn try_acquire(&self, slot: FairSlot, now_ms: u64) -> bool {
        let Some(c) = &self.capped else {
            return true;
        };
        let slot = slot.0;
        let shared = &c.queue.shared;
        shared.note_active(slot, now_ms);
        let cap = c.cap(now_ms);
        if shared.any_waiting()
            || shared.at_headroom(slot, &cap)
            || !Concurrency::acquire(cap.inflight, cap.max)
        {
            return false;
        }
        shared.hold(slot);
        true
    }

    /// Wait for a slot: join tenant `key`'s queue on this shard (the tenant's `slot`, its
    /// `weight`, the request's `cost` in tokens), then take any free slot. `None`: uncapped,
    /// or that tenant's queue here already holds `depth_max` waiters.
    pub fn enqueue(
        &self,
        (key, slot): (usize, FairSlot),
        (weight, cost): (u32, u64),
        depth_max: usize,
        now_ms: u64,
    ) -> Option<Ticket> {
        let c = self.capped.as_ref()?;
        let slot = slot.0;
        c.queue.shared.note_active(slot, now_ms);
        let ticket = c.queue.join((key, slot), weight, cost, depth_max)?;
        c.queue.dispatch(&c.cap(now_ms));
        Some(ticket)
    }

    /// The tenant at `slot` gives a slot back: to the fairest waiter of any shard, or free.
    pub fn release(&self, slot: FairSlot, now_ms: u64) {
        if let Some(c) = &self.capped {
            c.queue.shared.unhold(slot.0);
            c.queue.pass_slot(&c.cap(now_ms));
        }
    }

    /// Take slots handed to this shard and hand free slots (freed anywhere) to waiters.
    pub fn dispatch(&self, now_ms: u64) {
        if let Some(c) = &self.capped {
            c.queue.dispatch(&c.cap(now_ms));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// `shards` queues of one upstream capped at `max`, over a silent fabric (hand-offs are
    /// taken by calling `dispatch`, as the bell task would).
    struct Rig {
        inflight: AtomicU64,
        max: u64,
        headroom: u64,
        queues: Vec<Rc<FairQueue>>,
    }

    /// The clock of the tests' slot movements, ms.
    const NOW_MS: u64 = 1_000_000;

    impl Rig {
        fn new(shards: usize, max: u64) -> Self {
            let fabric = Fabric::silent(shards);
            let shared = fabric.upstream(0).expect("slot 0");
            Self {
                inflight: AtomicU64::new(0),
                max,
                headroom: 0,
                queues: (0..shards)
                    .map(|s| Rc::new(FairQueue::new(s, shared.clone(), fabric.clone())))
                    .collect(),
            }
        }

        fn cap(&self) -> Cap<'_> {
            Cap {
                inflight: &self.inflight,
                max: self.max,
                headroom: self.headroom,
                now_ms: NOW_MS,
            }
        }

        fn shared(&self) -> &Shared {
            &self.queues[0].shared
        }

        /// Fill every slot (requests that did not wait).
        fn saturate(&self) {
            for _ in 0..self.max {
                assert!(Concurrency::acquire(&self.inflight, self.max));
            }
        }

        /// A waiter of tenant `t` (its own finish cell `t`) on shard `s`.
        fn join(&self, s: usize, t: usize, weight: u32, cost: u64) -> Ticket {
            let q = &self.queues[s];
            let ticket = q.join((t, t), weight, cost, 1000).expect("room");
            q.dispatch(&self.cap());
            ticket
        }

        /// One request ends on shard `s`; then every shard takes what was handed to it.
        fn release_on(&self, s: usize) {
            self.queues[s].pass_slot(&self.cap());
            self.deliver();
        }

        /// What the bells would do: each shard takes its hand-offs.
        fn deliver(&self) {
            for q in &self.queues {
                q.dispatch(&self.cap());
            }
        }

        fn in_flight(&self) -> u64 {
            self.inflight.load(Ordering::SeqCst)
        }
    }

    fn granted(tickets: &[Ticket]) -> usize {
        tickets.iter().filter(|t| t.is_granted()).count()
    }

    #[test]
    fn a_quiet_tenant_on_another_shard_goes_ahead_of_a_flood() {
        let rig = Rig::new(2, 2);
        rig.saturate();
        // The flood waits on shard 0, where every slot is released.
        let flood: Vec<Ticket> = (0..20).map(|_| rig.join(0, 1, 1, 1)).collect();
        rig.release_on(0);
        assert_eq!(granted(&flood), 1);
        // A quiet request on shard 1: the next slot freed on shard 0 goes to it.
        let quiet = rig.join(1, 2, 1, 1);
        assert!(!quiet.is_granted(), "no slot was free");
        rig.release_on(0);
        assert!(quiet.is_granted(), "the slot went back to shard 0's flood");
        assert_eq!(granted(&flood), 1);
        // The flood drains after it, and the cap holds throughout.
        for _ in 0..19 {
            assert!(rig.in_flight() <= rig.max);
            rig.release_on(0);
        }
        assert_eq!(granted(&flood), 20);
        assert_eq!(rig.in_flight(), rig.max);
    }

    #[test]
    fn a_flood_spread_over_shards_is_served_in_tag_order() {
        let rig = Rig::new(4, 1);
        rig.saturate();
        // Two floods of equal weight, each spread over all four shards.
        let a: Vec<Ticket> = (0..40).map(|i| rig.join(i % 4, 1, 1, 1)).collect();
        let b: Vec<Ticket> = (0..40).map(|i| rig.join((i + 1) % 4, 2, 1, 1)).collect();
        for i in 0..40 {
            rig.release_on(i % 4);
            let all = || a.iter().chain(&b);
            assert_eq!(granted(&a) + granted(&b), i + 1, "one slot, one grant");
            // Whichever shard freed the slot, no waiter is passed over for a larger tag.
            let served = all().filter(|t| t.is_granted()).map(Ticket::tag).max();
            let waiting = all().filter(|t| !t.is_granted()).map(Ticket::tag).min();
            assert!(
                served <= waiting.or(served),
                "{served:?} granted before {waiting:?}"
            );
        }
        assert_eq!(granted(&a), 20);
        assert_eq!(granted(&b), 20);
    }

    #[test]
    fn a_shard_with_a_slot_on_its_way_still_serves_its_own_smaller_tags_first() {
        let rig = Rig::new(2, 2);
        rig.saturate();
        // One tenant's waiters, tags in join order: shard 1 holds 0 and 1, shard 0 holds 2.
        let t0 = rig.join(1, 1, 1, 1);
        let t1 = rig.join(1, 1, 1, 1);
        let t2 = rig.join(0, 1, 1, 1);
        // Shard 0 frees a slot: shard 1's head (tag 0) is the smallest, the slot goes there.
        rig.queues[0].pass_slot(&rig.cap());
        // Before shard 1 takes it, shard 1 frees a slot too: it must go to shard 1's own
        // tags (0, then 1 with the hand-off), not to shard 0's larger tag.
        rig.queues[1].pass_slot(&rig.cap());
        rig.deliver();
        assert!(t0.is_granted() && t1.is_granted(), "tags 0 and 1 first");
        assert!(!t2.is_granted(), "tag 2 overtook a smaller tag");
        assert_eq!(rig.in_flight(), 2);
        rig.release_on(0);
        assert!(t2.is_granted());
    }

    #[test]
    fn a_slot_passed_on_by_its_receiver_leaves_the_receivers_waiters_visible() {
        let rig = Rig::new(2, 1);
        rig.saturate();
        let a0 = rig.join(0, 1, 1, 1);
        let a1 = rig.join(0, 1, 1, 1);
        rig.release_on(0);
        assert!(a0.is_granted());
        // Shard 1 frees the slot and sends it to shard 0's head (a1)...
        rig.queues[1].pass_slot(&rig.cap());
        // ...and meanwhile a smaller tag joins on shard 1: shard 0 passes the slot back to it.
        let b = rig.join(1, 2, 1, 1);
        assert!(b.tag() < a1.tag());
        rig.deliver();
        assert!(b.is_granted() && !a1.is_granted());
        // Shard 0's head is a candidate again: the next slot freed anywhere reaches it.
        rig.release_on(1);
        assert!(
            a1.is_granted(),
            "shard 0's waiters stayed hidden after it passed a slot on"
        );
    }

    #[test]
    fn a_flood_leaves_the_headroom_free_while_another_tenant_is_active() {
        let mut rig = Rig::new(2, 4);
        rig.headroom = 1;
        let s = rig.shared();
        let cap = rig.cap();
        // Tenant 1 alone takes every slot: nobody else was active.
        for _ in 0..4 {
            s.note_active(1, NOW_MS);
            assert!(!s.at_headroom(1, &cap));
            assert!(Concurrency::acquire(&rig.inflight, rig.max));
            s.hold(1);
        }
        let flood: Vec<Ticket> = (0..8).map(|i| rig.join(i % 2, 1, 1, 1)).collect();
        // Tenant 2 shows up (and is served): from now on tenant 1 holds at most 3.
        s.note_active(2, NOW_MS);
        s.unhold(1);
        rig.release_on(0);
        assert_eq!(granted(&flood), 0, "the freed slot went to the flood");
        assert_eq!(rig.in_flight(), 3, "the headroom slot stays free");
        // Tenant 2's request takes it at once, whichever shard it lands on.
        let quiet = rig.join(1, 2, 1, 1);
        assert!(quiet.is_granted());
        // The flood's own releases keep it at 3.
        s.unhold(1);
        rig.release_on(1);
        assert_eq!(granted(&flood), 1);
        // Once tenant 2 has been idle for FAIR_ACTIVE_MS, the flood may take every slot.
        let later = Cap {
            now_ms: NOW_MS + FAIR_ACTIVE_MS,
            ..rig.cap()
        };
        s.note_active(1, later.now_ms);
        assert!(!s.at_headroom(1, &later));
    }

    #[test]
    fn the_headroom_never_bends_the_shares_of_tenants_that_both_wait() {
        let mut rig = Rig::new(2, 4);
        rig.headroom = 1;
        rig.saturate();
        let s = rig.shared();
        s.note_active(1, NOW_MS);
        s.note_active(2, NOW_MS);
        // Tenant 1 holds every slot; both tenants keep a backlog.
        for _ in 0..4 {
            s.hold(1);
        }
        assert!(s.at_headroom(1, &rig.cap()));
        // Tenant 1 stays at its headroom throughout (its held count is never given back
        // here), which would keep a slot free if it waited alone.
        assert_three_to_one(&rig);
        assert_eq!(rig.in_flight(), 4, "a slot idled while both tenants waited");
    }

    /// Tenants 1 (weight 3) and 2 (weight 1) queue 60 requests each over both shards of `rig`;
    /// 40 slots freed on the shards in turn go 30 : 10.
    fn assert_three_to_one(rig: &Rig) {
        let heavy: Vec<Ticket> = (0..60).map(|i| rig.join(i % 2, 1, 3, 1)).collect();
        let light: Vec<Ticket> = (0..60).map(|i| rig.join(i % 2, 2, 1, 1)).collect();
        for i in 0..40 {
            rig.release_on(i % 2);
        }
        assert_eq!((granted(&heavy), granted(&light)), (30, 10), "weight 3 : 1");
    }

    #[test]
    fn weights_share_grants_in_proportion_over_shards() {
        let rig = Rig::new(2, 1);
        rig.saturate();
        assert_three_to_one(&rig);
    }

    #[test]
    fn shares_are_counted_in_tokens_not_requests() {
        let rig = Rig::new(2, 1);
        rig.saturate();
        // Same weight; one tenant's requests cost 10 tokens, the other's 1.
        let big: Vec<Ticket> = (0..30).map(|i| rig.join(i % 2, 1, 1, 10)).collect();
        let small: Vec<Ticket> = (0..300).map(|i| rig.join(i % 2, 2, 1, 1)).collect();
        for i in 0..110 {
            rig.release_on(i % 2);
        }
        let tokens_big = granted(&big) * 10;
        let tokens_small = granted(&small);
        assert_eq!(granted(&big) + granted(&small), 110);
        assert!(
            tokens_big.abs_diff(tokens_small) <= 10,
            "tokens {tokens_big} : {tokens_small}"
        );
    }

    #[test]
    fn a_slot_freed_while_only_another_shard_waits_is_handed_over_not_kept() {
        let rig = Rig::new(3, 1);
        rig.saturate();
        let w = rig.join(2, 7, 1, 1);
        // Released on shard 0: shard 0 has no waiter, the slot is handed to shard 2.
        rig.queues[0].pass_slot(&rig.cap());
        assert!(!w.is_granted(), "granted before shard 2 took its hand-off");
        assert_eq!(rig.shared().handoff[2].load(Ordering::SeqCst), 1);
        assert_eq!(rig.in_flight(), 1, "the slot travels, still counted");
        // A newcomer on shard 1 cannot take a slot meanwhile: a waiter is still visible.
        assert!(rig.shared().any_waiting());
        rig.deliver();
        assert!(w.is_granted());
        assert!(!rig.shared().any_waiting());
    }

    #[test]
    fn a_hand_off_to_a_waiter_that_left_is_passed_on() {
        let rig = Rig::new(2, 1);
        rig.saturate();
        let gone = rig.join(1, 1, 1, 1);
        let stays = rig.join(0, 2, 1, 1);
        // Shard 1's head (tag 0 of tenant 1) is the smallest: the slot goes there...
        rig.queues[0].pass_slot(&rig.cap());
        // ...but its waiter leaves before shard 1 takes the hand-off.
        drop(gone);
        rig.deliver();
        assert!(stays.is_granted(), "the slot was lost with the waiter");
        assert_eq!(rig.in_flight(), 1);
    }

    #[test]
    fn nobody_waiting_frees_the_slot_and_a_late_waiter_takes_it() {
        let rig = Rig::new(2, 1);
        rig.saturate();
        rig.release_on(0);
        assert_eq!(rig.in_flight(), 0, "a slot nobody waits for is freed");
        assert!(!rig.shared().any_waiting());
        // A waiter that joins while a slot is free takes it at once.
        let w = rig.join(1, 1, 1, 1);
        assert!(w.is_granted());
        assert_eq!(rig.in_flight(), 1);
    }

    #[test]
    fn depth_is_bounded_and_gone_waiters_are_skipped() {
        let rig = Rig::new(1, 1);
        rig.saturate();
        let q = &rig.queues[0];
        let a = q.join((1, 1), 1, 1, 2).expect("room");
        let b = q.join((1, 1), 1, 1, 2).expect("room");
        assert!(q.join((1, 1), 1, 1, 2).is_none(), "past depth_max");
        drop(a);
        rig.release_on(0);
        assert!(b.is_granted(), "a waiter that left was granted instead");
        assert!(!q.has_waiters());
        // A freed place can be taken again.
        assert!(q.join((1, 1), 1, 1, 2).is_some());
    }

    #[test]
    fn an_idle_tenant_starts_at_the_virtual_time_not_behind_its_old_tags() {
        let rig = Rig::new(1, 1);
        rig.saturate();
        let s = rig.shared();
        // Tenant 1 was served long ago; tenant 2 has been flooding since.
        let old = rig.join(0, 1, 1, 1);
        rig.release_on(0);
        assert!(old.is_granted());
        let flood: Vec<Ticket> = (0..50).map(|_| rig.join(0, 2, 1, 1)).collect();
        for _ in 0..30 {
            rig.release_on(0);
        }
        let back = rig.join(0, 1, 1, 1);
        assert!(back.tag() >= s.vtime.load(Ordering::SeqCst));
        rig.release_on(0);
        assert!(
            back.is_granted(),
            "the returning tenant waited behind the flood"
        );
        assert_eq!(granted(&flood), 30);
    }

    #[derive(Debug, Clone)]
    enum Step {
        /// A request of tenant `.1` joins on shard `.0` (with cost `.2`).
        Join(usize, usize, u64),
        /// A request holding a slot on shard `.0` ends.
        Release(usize),
        /// Shard `.0` takes its hand-offs (its bell or timer).
        Deliver(usize),
        /// The `.0`-th waiting request leaves (timed out, or its client left).
        Leave(usize),
    }

    fn step() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            3 => (0..3usize, 0..4usize, 1..5u64).prop_map(|(s, t, c)| Step::Join(s, t, c)),
            3 => (0..3usize).prop_map(Step::Release),
            2 => (0..3usize).prop_map(Step::Deliver),
            1 => (0..64usize).prop_map(Step::Leave),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Whatever the interleaving: a slot is always in exactly one place (held, handed, or
        /// free), the cap holds, and once every shard has taken its hand-offs no request waits
        /// beside a free slot; in the end every request that stayed is served.
        #[test]
        fn slots_are_conserved_and_never_idle_beside_a_waiter(
            max in 1..4u64,
            steps in proptest::collection::vec(step(), 1..200),
        ) {
            let rig = Rig::new(3, max);
            let mut waiting: Vec<(usize, Ticket)> = Vec::new();
            let mut holding: Vec<usize> = Vec::new();
            let handed = |rig: &Rig| -> u64 {
                rig.shared().handoff.iter().map(|h| h.load(Ordering::SeqCst)).sum()
            };
            let settle = |waiting: &mut Vec<(usize, Ticket)>, holding: &mut Vec<usize>| {
                waiting.retain(|(s, t)| {
                    if t.is_granted() {
                        holding.push(*s);
                    }
                    !t.is_granted()
                });
            };
            for st in steps {
                match st {
                    Step::Join(s, t, c) => {
                        let q = &rig.queues[s];
                        if let Some(ticket) = q.join((t, t), 1, c, 1000) {
                            q.dispatch(&rig.cap());
                            waiting.push((s, ticket));
                        }
                    }
                    Step::Release(s) => {
                        if let Some(i) = holding.iter().position(|&h| h == s) {
                            holding.swap_remove(i);
                            rig.queues[s].pass_slot(&rig.cap());
                        }
                    }
                    Step::Deliver(s) => rig.queues[s].dispatch(&rig.cap()),
                    Step::Leave(i) => {
                        if !waiting.is_empty() {
                            let i = i % waiting.len();
                            drop(waiting.swap_remove(i));
                        }
                    }
                }
                settle(&mut waiting, &mut holding);
                proptest::prop_assert!(rig.in_flight() <= rig.max);
                proptest::prop_assert_eq!(rig.in_flight(), holding.len() as u64 + handed(&rig));
            }
            // Every shard takes its hand-offs, until none travels (a slot sent on a stale head
            // comes back once or twice; it must settle within a few rounds).
            for _ in 0..8 {
                if handed(&rig) == 0 {
                    break;
                }
                rig.deliver();
            }
            settle(&mut waiting, &mut holding);
            proptest::prop_assert_eq!(handed(&rig), 0);
            if !waiting.is_empty() {
                proptest::prop_assert_eq!(rig.in_flight(), rig.max, "a slot idles beside a waiter");
            }
            // Requests end one by one: every waiter left is served.
            while let Some(s) = holding.pop() {
                rig.queues[s].pass_slot(&rig.cap());
                rig.deliver();
                settle(&mut waiting, &mut holding);
            }
            proptest::prop_assert!(waiting.is_empty(), "{} never served", waiting.len());
            proptest::prop_assert_eq!(rig.in_flight(), 0);
        }
    }
}
