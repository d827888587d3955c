//! The data plane's one clock.
//!
//! The connection driver reads the time once per phase ([`Now::read`]) and passes the reading
//! down; everything below it (admission, fair queues, the balancer, the access log, deadlines)
//! takes that `now` as an argument, so it is testable with any time and a request pays a few
//! clock reads, not dozens.
//!
//! A reading carries two views of the same instant:
//! - [`Now::instant`]: monotonic, for deadlines and durations (what monoio's timers take);
//! - [`Now::unix_ns`]: wall-clock nanoseconds since the Unix epoch, the time base of the limit
//!   cells every shard and `shardgate-ctl` share through the region (and of the access log).
//!
//! The balancer's clock, [`Now::mono_ns`], is the monotonic view as nanoseconds since the
//! process's first reading (only differences matter to it).
//!
//! A reading costs one clock read: the wall-clock view is the monotonic one plus an offset
//! each thread takes from the system clock at most every [`ANCHOR_REFRESH_MS`], so a step of
//! the system clock reaches the readings within that time. [`deadline_in`] is the monotonic
//! reading alone, for a deadline that needs nothing else.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often a thread re-reads the system clock for the wall-clock view, ms.
pub const ANCHOR_REFRESH_MS: u64 = 1_000;

thread_local! {
    /// This thread's last system-clock reading: (monotonic instant, Unix ns) taken together.
    static ANCHOR: Cell<Option<(Instant, u64)>> = const { Cell::new(None) };
}

/// The monotonic clock alone (a deadline, an idle-since mark).
#[inline]
pub fn monotonic() -> Instant {
    Instant::now()
}

/// The instant `d` from now (monotonic): a deadline.
#[inline]
pub fn deadline_in(d: Duration) -> Instant {
    monotonic() + d
}

/// One reading of the clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic: deadlines and durations.
    pub instant: Instant,
    /// Wall clock, ns since the Unix epoch: limit cells, fair queues, the access log.
    pub unix_ns: u64,
}

/// The process's first reading: the origin of [`Now::mono_ns`].
static EPOCH: OnceLock<Instant> = OnceLock::new();

impl Now {
    /// Read the clock (the only place the data plane does).
    #[inline]
    pub fn read() -> Self {
        let instant = Instant::now();
        // The origin is the first reading, so every reading is at or after it.
        EPOCH.get_or_init(|| instant);
        let (at, unix) = ANCHOR.with(|a| match a.get() {
            Some((at, unix))
                if instant.saturating_duration_since(at)
                    < Duration::from_millis(ANCHOR_REFRESH_MS) =>
            {
                (at, unix)
            }
            _ => {
                let fresh = (instant, unix_ns(SystemTime::now()));
                a.set(Some(fresh));
                fresh
            }
        });
        let since = u64::try_from(instant.saturating_duration_since(at).as_nanos()).unwrap_or(0);
        Self {
            instant,
            unix_ns: unix.saturating_add(since),
        }
    }

    /// Wall-clock milliseconds since the Unix epoch.
    #[inline]
    pub fn unix_ms(self) -> u64 {
        self.unix_ns / 1_000_000
    }

    /// Monotonic nanoseconds since the process's first reading (the balancer's clock).
    #[inline]
    pub fn mono_ns(self) -> u64 {
        let epoch = *EPOCH.get_or_init(|| self.instant);
        u64::try_from(self.instant.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `d` after this reading (a deadline).
    #[inline]
    pub fn after(self, d: Duration) -> Instant {
        self.instant + d
    }

    /// The time from this reading to `later`.
    #[inline]
    pub fn until(self, later: Now) -> Duration {
        later.instant.saturating_duration_since(self.instant)
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
        assert!(b.instant > a.instant);
        assert!(b.mono_ns() > a.mono_ns());
        assert!(a.until(b) >= Duration::from_millis(2));
        assert_eq!(b.until(a), Duration::ZERO, "saturates instead of panicking");
        // The wall clock can be stepped, but not by more than this while a test runs.
        assert!(b.unix_ns.abs_diff(a.unix_ns) < 60_000_000_000);
        assert_eq!(a.unix_ms(), a.unix_ns / 1_000_000);
        assert_eq!(
            a.after(Duration::from_secs(1)),
            a.instant + Duration::from_secs(1)
        );
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
            assert!(deadline_in(Duration::from_secs(1)) > later.instant);
        })
        .join()
        .expect("the clock thread panicked");
        assert_eq!(unix_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
