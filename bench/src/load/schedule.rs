//! The open-loop (`--rate`) send schedule of one connection, without I/O or a clock: the caller
//! passes `now`.
//!
//! The total rate is split evenly over all connections of all threads: connection `i` of `n`
//! sends its `k`-th request at `start + (i + k·n) / rate`, so each connection sends at
//! `rate / n` and, together, the connections' sends interleave into one evenly spaced stream
//! instead of `n` simultaneous bursts.
//!
//! Latency is measured from the *intended* send time, not from when the request actually went
//! out (the coordinated-omission correction of wrk2): when the server stalls, a connection
//! falls behind its schedule, then catches up by sending back-to-back, and every request it
//! sends late carries the delay in its latency, so the stall shows up in the tail as a real
//! user arriving at that time would have seen it.

use std::time::{Duration, Instant};

/// What a connection does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Send now; record the latency from `intended` (which may be in the past).
    Send { intended: Instant },
    /// Nothing is due before `until`.
    Wait { until: Instant },
}

/// The send schedule of one connection.
#[derive(Debug, Clone)]
pub struct Schedule {
    start: Instant,
    /// Index of this connection among all connections.
    conn: u64,
    conns: u64,
    /// Total requests per second over all connections.
    rate: f64,
    /// Requests this connection has sent so far (the next one is the `k`-th).
    k: u64,
}

impl Schedule {
    /// The schedule of connection `conn` of `conns` (counted over all threads), for a total of
    /// `rate` requests per second starting at `start`.
    ///
    /// # Panics
    /// If `rate` is not positive and finite or `conn >= conns` (checked when parsing the
    /// command line).
    pub fn new(start: Instant, rate: f64, conn: usize, conns: usize) -> Self {
        assert!(rate.is_finite() && rate > 0.0, "rate must be positive");
        assert!(conn < conns, "connection index out of range");
        Self {
            start,
            conn: conn as u64,
            conns: conns as u64,
            rate,
            k: 0,
        }
    }

    /// The intended send time of the next request.
    pub fn intended(&self) -> Instant {
        // f64 seconds keep the schedule free of accumulated rounding drift: each time is
        // computed from `start`, not by adding an interval to the previous one.
        let slot = self.conn + self.k * self.conns;
        self.start + Duration::from_secs_f64(slot as f64 / self.rate)
    }

    /// What to do at `now`: send (possibly late, to catch up) or wait.
    pub fn poll(&self, now: Instant) -> Next {
        let intended = self.intended();
        if intended <= now {
            Next::Send { intended }
        } else {
            Next::Wait { until: intended }
        }
    }

    /// The request due at [`Schedule::intended`] has been sent: move on to the next slot.
    pub fn advance(&mut self) {
        self.k += 1;
    }
}

/// How late a connection's timer may wake it after its send time: monoio's timer wheel rounds
/// a deadline up to the next millisecond tick and parks in whole milliseconds, so a sleep ends
/// up to ~2 ms late; plus a little for the wake-up itself.
pub const TIMER_SLACK: Duration = Duration::from_micros(2_500);

/// The instant a request's latency counts from, given when it was `intended`, when it was
/// actually `sent`, and when the connection became `free` for it (the previous response
/// completed, or the connection opened).
///
/// - The connection was busy at `intended` (`free > intended`: the previous response came
///   late, or the connection had to be re-opened): from `intended`, so the server's delay
///   stays in the latency. This is the coordinated-omission correction.
/// - The connection was free and waited for its timer: the delay until `sent` is the load
///   generator's timer, not the server, so it is left out, up to [`TIMER_SLACK`]; beyond
///   that the generator itself is overloaded and the excess is kept (the conservative
///   choice).
pub fn measure_from(intended: Instant, sent: Instant, free: Instant) -> Instant {
    if free > intended {
        intended
    } else {
        sent.min(intended + TIMER_SLACK).max(intended)
    }
}

/// `--ramp-ms`: when connection `conn` of `conns` (counted over all threads) opens and sends its
/// first request, as an offset from the start of the run. The first requests are spread evenly
/// over `ramp`: connection `i` starts at `i · ramp / conns`, so new streams arrive at a steady
/// rate of `conns / ramp` instead of all at once (`ramp` zero: all at the start, a burst).
/// Out-of-range input (`conn >= conns`) is clamped to the end of the ramp.
pub fn arrival_offset(conn: usize, conns: usize, ramp: Duration) -> Duration {
    if conns == 0 || ramp.is_zero() {
        return Duration::ZERO;
    }
    let conn = conn.min(conns) as u128;
    let nanos = ramp.as_nanos() * conn / conns as u128;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Latency of a request that was due at `intended` and completed at `done`.
pub fn latency(intended: Instant, done: Instant) -> Duration {
    done.saturating_duration_since(intended)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn close(a: Instant, b: Instant) -> bool {
        let d = if a > b { a - b } else { b - a };
        d < Duration::from_micros(1)
    }

    #[test]
    fn arrivals_spread_evenly_over_the_ramp() {
        let ramp = ms(4000);
        // 4 connections over 4 s: one new stream a second, the first at once.
        let at: Vec<Duration> = (0..4).map(|i| arrival_offset(i, 4, ramp)).collect();
        assert_eq!(at, vec![ms(0), ms(1000), ms(2000), ms(3000)]);
        // 10,000 over 4.2 s: 0.42 ms apart, the last one ramp/N before the end of the ramp.
        let r = ms(4200);
        assert_eq!(arrival_offset(1, 10_000, r), Duration::from_micros(420));
        assert_eq!(
            arrival_offset(9_999, 10_000, r),
            r - Duration::from_micros(420)
        );
        // No ramp: a burst; out of range: clamped to the ramp's end; no connections: zero.
        assert_eq!(arrival_offset(7, 10, Duration::ZERO), Duration::ZERO);
        assert_eq!(arrival_offset(12, 10, r), r);
        assert_eq!(arrival_offset(0, 0, r), Duration::ZERO);
    }

    #[test]
    fn rate_is_split_over_connections_and_interleaved() {
        let start = Instant::now();
        // 1000 req/s over 4 connections: 250 req/s each, 4 ms apart, offset by 1 ms.
        let mut scheds: Vec<Schedule> =
            (0..4).map(|i| Schedule::new(start, 1000.0, i, 4)).collect();
        for (i, s) in scheds.iter().enumerate() {
            assert!(close(s.intended(), start + ms(i as u64)));
        }
        // The union of all sends is one evenly spaced stream, 1 ms apart.
        let mut all = Vec::new();
        for s in &mut scheds {
            for _ in 0..25 {
                all.push(s.intended());
                s.advance();
            }
        }
        all.sort();
        assert_eq!(all.len(), 100);
        for (j, t) in all.iter().enumerate() {
            assert!(close(*t, start + ms(j as u64)), "send {j} at {t:?}");
        }
    }

    #[test]
    fn waits_until_the_next_slot() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 100.0, 0, 1); // every 10 ms
        assert_eq!(s.poll(start), Next::Send { intended: start });
        s.advance();
        match s.poll(start + 3 * MS) {
            Next::Wait { until } => assert!(close(until, start + 10 * MS)),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn catches_up_back_to_back_after_a_stall() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 100.0, 0, 1); // every 10 ms
        s.advance(); // the request at 0 ms went out on time
                     // The server stalled: the connection gets to send again only at 45 ms.
        let now = start + 45 * MS;
        let mut sent = Vec::new();
        while let Next::Send { intended } = s.poll(now) {
            sent.push(intended);
            s.advance();
            assert!(sent.len() <= 10, "never stops sending");
        }
        // All four overdue requests go at once, each stamped with its own intended time.
        assert_eq!(sent.len(), 4);
        for (j, t) in sent.iter().enumerate() {
            assert!(close(*t, start + ms(10 * (j as u64 + 1))));
        }
        match s.poll(now) {
            Next::Wait { until } => assert!(close(until, start + 50 * MS)),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    #[test]
    fn latency_is_measured_from_the_intended_time() {
        let start = Instant::now();
        let mut s = Schedule::new(start, 100.0, 0, 1);
        s.advance();
        // Due at 10 ms, sent late at 45 ms (after a stall), answered 1 ms later.
        let Next::Send { intended } = s.poll(start + 45 * MS) else {
            panic!("the request at 10 ms is due");
        };
        let done = start + 46 * MS;
        let l = latency(intended, done);
        assert!(l >= 36 * MS - Duration::from_micros(1) && l <= 36 * MS + Duration::from_micros(1));
        // Not the 1 ms the server took for this request alone.
        assert!(l > 30 * MS);
        // A clock that reads earlier than the intended time gives 0, not a panic.
        assert_eq!(latency(done, intended), Duration::ZERO);
    }

    #[test]
    fn timer_lateness_is_forgiven_only_when_the_connection_was_free() {
        let start = Instant::now();
        let late = Duration::from_micros(1_900);
        let before = start - MS;
        // Free before the slot, the timer woke it 1.9 ms late: count from the send.
        assert_eq!(measure_from(start, start + late, before), start + late);
        // Busy at the slot (the previous response came 1.9 ms late): from the intended time.
        assert_eq!(measure_from(start, start + late, start + late), start);
        // Free, but sent 10 ms late (the generator is overloaded): only the slack is left out.
        assert_eq!(
            measure_from(start, start + 10 * MS, before),
            start + TIMER_SLACK
        );
        // On time.
        assert_eq!(measure_from(start, start, before), start);
        // Closed loop: intended = sent = free.
        assert_eq!(measure_from(start, start, start), start);
    }
}
