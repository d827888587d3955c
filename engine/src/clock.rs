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

use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
        Self {
            instant,
            unix_ns: unix_ns(SystemTime::now()),
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
    fn the_unix_view_is_the_wall_clock() {
        let before = unix_ns(SystemTime::now());
        let now = Now::read();
        let after = unix_ns(SystemTime::now());
        assert!(before <= now.unix_ns && now.unix_ns <= after);
        assert_eq!(unix_ns(UNIX_EPOCH - Duration::from_secs(1)), 0);
    }
}
