//! Micro-benchmark behind docs/decisions/0008: what a cross-shard hand-off costs. Two threads
//! pinned to two cores, each running a shard's runtime (the engine's own driver choice), ping
//! each other through the fair queues' bells (`Fabric::ring`: a byte on a Unix socket the other
//! shard's ring reads), so one ring-and-wake-up is half a round trip. Then what the
//! alternative, polling on the shard's timer, costs an idle shard in CPU at 10 ms, 1 ms and
//! 100 µs (a hand-off then waits half the period on average).
//!
//! Run: `cargo run --release -p shardgate-engine --example fair_handoff_bench`

#![allow(
    clippy::cast_possible_truncation,
    reason = "percentile indices and small benchmark counts"
)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncReadRent;
use shardgate_engine::config::DriverChoice;
use shardgate_engine::fair::Fabric;

const ROUND_TRIPS: usize = 20_000;

/// utime + stime of the calling thread, in clock ticks (/proc/thread-self/stat fields 14, 15).
fn thread_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn pin(core: usize) {
    if let Some(ids) = core_affinity::get_core_ids() {
        if let Some(id) = ids.get(core % ids.len().max(1)) {
            core_affinity::set_for_current(*id);
        }
    }
}

fn shard(
    me: usize,
    fabric: Arc<Fabric>,
    bell: std::os::unix::net::UnixStream,
) -> std::thread::JoinHandle<Vec<Duration>> {
    std::thread::spawn(move || {
        pin(me);
        shardgate_engine::runtime::block_on_best(DriverChoice::Auto, |_| async move {
            let mut bell = monoio::net::UnixStream::from_std(bell).expect("bell");
            let mut buf = vec![0u8; 64];
            let mut trips = Vec::with_capacity(ROUND_TRIPS);
            for _ in 0..ROUND_TRIPS {
                let t = Instant::now();
                if me == 0 {
                    fabric.ring(1);
                }
                let (res, b) = bell.read(buf).await;
                buf = b;
                assert!(matches!(res, Ok(n) if n > 0), "bell closed");
                fabric.heard(me);
                if me == 1 {
                    fabric.ring(0);
                } else {
                    trips.push(t.elapsed());
                }
            }
            trips
        })
        .expect("runtime")
    })
}

fn timer_cost(period: Duration, run: Duration) -> f64 {
    std::thread::spawn(move || {
        pin(1);
        shardgate_engine::runtime::block_on_best(DriverChoice::Auto, |_| async move {
            let before = thread_ticks();
            let end = Instant::now() + run;
            while Instant::now() < end {
                monoio::time::sleep(period).await;
            }
            let ticks = thread_ticks() - before;
            // Clock ticks are 10 ms: CPU share of one core.
            ticks as f64 * 10.0 / run.as_millis() as f64
        })
        .expect("runtime")
    })
    .join()
    .expect("timer thread")
}

fn main() {
    let (fabric, mut bells) = Fabric::new(2).expect("bells");
    let b1 = bells.pop().expect("bell 1");
    let b0 = bells.pop().expect("bell 0");
    let other = shard(1, fabric.clone(), b1);
    let mut trips = shard(0, fabric, b0).join().expect("shard 0");
    other.join().expect("shard 1");
    trips.sort();
    let q = |p: f64| trips[((trips.len() as f64 - 1.0) * p) as usize].as_secs_f64() * 1e6 / 2.0;
    println!(
        "bell hand-off (half a round trip between two idle pinned shards, {ROUND_TRIPS} trips): \
         p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        q(0.5),
        q(0.9),
        q(0.99),
        q(1.0)
    );
    // The ringing shard's own cost: one non-blocking write (the flag makes later rings free
    // until the bell is heard; here it is reset each time so every ring writes).
    // Batches of 100 (a Unix socket's buffer holds a few hundred one-byte writes), drained
    // between batches, so every timed write lands.
    let (fabric, bells) = Fabric::new(2).expect("bells");
    let mut rx = &bells[1];
    let rings = 100u32;
    let mut spent = Duration::ZERO;
    let mut drain = [0u8; 256];
    for _ in 0..100 {
        let t = Instant::now();
        for _ in 0..rings {
            fabric.heard(1);
            fabric.ring(1);
        }
        spent += t.elapsed();
        while std::io::Read::read(&mut rx, &mut drain).is_ok_and(|n| n > 0) {}
    }
    let rings = rings * 100;
    println!(
        "one ring that writes: {:.2} µs of the ringing shard's time",
        spent.as_secs_f64() * 1e6 / f64::from(rings)
    );
    for period in [
        Duration::from_millis(10),
        Duration::from_millis(1),
        Duration::from_micros(100),
    ] {
        let share = timer_cost(period, Duration::from_secs(5));
        println!(
            "timer polling every {period:?}: an idle shard spends {:.1}% of a core; a hand-off waits {:?} on average",
            share * 100.0,
            period / 2
        );
    }
}
