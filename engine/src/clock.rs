//! The data plane's one clock.
//!
//! The connection driver reads the time once per phase ([`Now::read`]) and passes the reading
//! down; everything below it (admission, fair queues, the balancer, the pools' idle check, the
//! access log) takes that `now` as an argument, so it is testable with any time and a request
//! pays a few clock reads, not dozens.
//!
//! A reading carries two views of the same instant, both plain nanoseconds:
//! - [`Now::mono_ns`]: `CLOCK_MONOTONIC` (the clock `std::time::Instant` reads on Linux), for
//!   durations, the balancer and the pools' idle check; only differences matter;
//! - [`Now::unix_ns`]: wall-clock nanoseconds since the Unix epoch, the time base of the limit
//!   cells every shard and `shardgate-ctl` share through the region (and of the access log).
//!
//! A reading costs one vDSO clock read (`rustix::time::clock_gettime`, turned into nanoseconds
//! with one multiply) and an addition: the wall-clock view is the monotonic one plus an offset
//! each thread takes from the system clock every [`ANCHOR_REFRESH_MS`], so a step of the system
//! clock reaches the readings within that time. Deadlines for monoio's timers are `Instant`s:
//! [`deadline_in`].

use std::cell::Cell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::time::{clock_gettime, ClockId};

/// How often a thread re-reads the system clock for the wall-clock view, ms.
pub const ANCHOR_REFRESH_MS: u64 = 1_000;

const ANCHOR_REFRESH_NS: u64 = ANCHOR_REFRESH_MS * 1_000_000;

thread_local! {
    /// This thread's last system-clock reading: the monotonic reading it was taken with and
    /// the offset from that to Unix nanoseconds.
    static ANCHOR: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// The instant `d` from now (monotonic): a deadline for monoio's timers.
#[inline]
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d
}

/// `CLOCK_MONOTONIC` in nanoseconds.
#[inline]
fn mono_clock_ns() -> u64 {
    let t = clock_gettime(ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(t.tv_nsec).unwrap_or(0);
    secs.saturating_mul(1_000_000_000).saturating_add(nanos)
}

/// One reading of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Wall clock, ns since the Unix epoch: limit cells, fair queues, the access log.
    pub unix_ns: u64,
    /// `CLOCK_MONOTONIC`, ns.
    mono_ns: u64,
}

impl Now {
    /// Read the clock (the only place the data plane does).
    #[inline]
    pub fn read() -> Self {
        let mono_ns = mono_clock_ns();
        // The wall-clock view from this thread's anchor (taken afresh when it is
        // `ANCHOR_REFRESH_MS` old).
        let unix_ns = ANCHOR.with(|a| match a.get() {
            Some((at, offset)) if mono_ns.wrapping_sub(at) < ANCHOR_REFRESH_NS => {
                mono_ns.saturating_add(offset)
            }
            _ => {
                let unix = unix_ns(SystemTime::now());
                a.set(Some((mono_ns, unix.saturating_sub(mono_ns))));
                unix
            }
        });
        Self { unix_ns, mono_ns }
    }

    /// A reading with these views (tests, and the simulations that drive the exchange).
    pub const fn at(mono_ns: u64, unix_ns: u64) -> Self {
        Self { unix_ns, mono_ns }
    }

    /// Wall-clock milliseconds since the Unix epoch.
    #[inline]
    pub fn unix_ms(self) -> u64 {
        self.unix_ns / 1_000_000
    }

    /// Monotonic nanoseconds (`CLOCK_MONOTONIC`): the balancer's clock, the pools' idle marks.
    #[inline]
    pub fn mono_ns(self) -> u64 {
        self.mono_ns
    }

    /// The time from this reading to `later` (zero if `later` is earlier).
    #[inline]
    pub fn until(self, later: Now) -> Duration {
        Duration::from_nanos(later.mono_ns.saturating_sub(self.mono_ns))
    }
}

/// Nanoseconds of `t` since the Unix epoch (0 before it; saturating far after it).
fn unix_ns(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_views_move_forward_together() {
        let a = Now::read();
        let mut b = Now::read();
        while a.until(b) < Duration::from_millis(2) {
            std::hint::spin_loop();
            b = Now::read();
        }
        assert!(b.mono_ns() > a.mono_ns());
        // The same clock as Instant's (monoio's deadlines): both measure a sleep alike.
        let (i0, m0) = (Instant::now(), Now::read());
        while i0.elapsed() < Duration::from_millis(20) {
            std::hint::spin_loop();
        }
        let (m1, i1) = (Now::read(), Instant::now());
        let by_instant = i1.duration_since(i0);
        assert!(m0.until(m1) <= by_instant);
        assert!(by_instant - m0.until(m1) < Duration::from_millis(10));
        assert!(a.until(b) >= Duration::from_millis(2));
        assert_eq!(b.until(a), Duration::ZERO, "saturates instead of panicking");
        // The wall clock can be stepped, but not by more than this while a test runs.
        assert!(b.unix_ns.abs_diff(a.unix_ns) < 60_000_000_000);
        assert_eq!(a.unix_ms(), a.unix_ns / 1_000_000);
    }

    #[test]
    fn the_unix_view_follows_the_wall_clock() {
        // A fresh thread anchors at its first reading.
        std::thread::spawn(|| {
            let before = unix_ns(SystemTime::now());
            let now = Now::read();
            let after = unix_ns(SystemTime::now());
            assert!(before <= now.unix_ns && now.unix_ns <= after);
            // Later readings advance with the monotonic clock, within the refresh interval
            // of the system clock (allowing a generous step for a noisy machine).
            let later = Now::read();
            let sys = unix_ns(SystemTime::now());
            assert!(later.unix_ns >= now.unix_ns);
            assert!(sys.abs_diff(later.unix_ns) < ANCHOR_REFRESH_MS * 1_000_000);
            assert!(deadline_in(Duration::from_secs(1)) > Instant::now());
        })
        .join()
        .expect("the clock thread panicked");
        assert_eq!(unix_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
