//! A per-shard, single-threaded "drain started" signal that any number of tasks can wait on.
//!
//! Idle keep-alive connections wait on it beside their read, so SIGTERM closes them at once
//! instead of after `idle_timeout_ms`. No locks: it lives in one shard and is never shared.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

#[derive(Debug, Default)]
pub struct DrainSignal {
    fired: Cell<bool>,
    /// Wakers of pending waits, by slot; `free` lists the unused slots.
    wakers: RefCell<Vec<Option<Waker>>>,
    free: RefCell<Vec<usize>>,
}

impl DrainSignal {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_fired(&self) -> bool {
        self.fired.get()
    }

    /// Start draining: every pending and future [`DrainSignal::wait`] completes.
    pub fn fire(&self) {
        self.fired.set(true);
        let wakers: Vec<Waker> = self
            .wakers
            .borrow_mut()
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// Completes once [`DrainSignal::fire`] has been called.
    pub fn wait(&self) -> DrainWait<'_> {
        DrainWait {
            signal: self,
            slot: None,
        }
    }
}

#[derive(Debug)]
pub struct DrainWait<'a> {
    signal: &'a DrainSignal,
    slot: Option<usize>,
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.is_fired() {
            return Poll::Ready(());
        }
        let mut wakers = self.signal.wakers.borrow_mut();
        match self.slot {
            Some(slot) => wakers[slot] = Some(cx.waker().clone()),
            None => {
                let slot = match self.signal.free.borrow_mut().pop() {
                    Some(slot) => {
                        wakers[slot] = Some(cx.waker().clone());
                        slot
                    }
                    None => {
                        wakers.push(Some(cx.waker().clone()));
                        wakers.len() - 1
                    }
                };
                drop(wakers);
                self.slot = Some(slot);
            }
        }
        Poll::Pending
    }
}

impl Drop for DrainWait<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            if let Some(w) = self.signal.wakers.borrow_mut().get_mut(slot) {
                *w = None;
            }
            self.signal.free.borrow_mut().push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn fire_wakes_every_waiter_and_slots_are_reused() {
        let signal = DrainSignal::new();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(signal.wait());
        let mut b = Box::pin(signal.wait());
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        drop(b);
        let mut c = Box::pin(signal.wait());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        assert_eq!(
            signal.wakers.borrow().len(),
            2,
            "the dropped wait's slot is reused"
        );
        signal.fire();
        assert_eq!(count.0.load(Ordering::Relaxed), 2);
        assert!(a.as_mut().poll(&mut cx).is_ready());
        assert!(c.as_mut().poll(&mut cx).is_ready());
        assert!(Box::pin(signal.wait()).as_mut().poll(&mut cx).is_ready());
    }
}
