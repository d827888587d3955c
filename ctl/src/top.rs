//! `top`: live rates per upstream and per route, from the change in the shards' counters
//! between two reads. Rendering is pure over two [`Totals`] and the time between them.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use shardgate_core::control::shm::pid_alive;
use shardgate_core::control::stats::{self, SlotTotals, Totals};
use shardgate_core::limits::DURATION_BUCKETS_MS;

use crate::status::version_range;
use crate::table::{self, Align};
use crate::{pause, Failure};

/// Clears a terminal and puts the cursor home.
const CLEAR: &str = "\x1b[H\x1b[2J";

/// What the flags of `top` ask for.
#[derive(Debug, Clone)]
pub struct Options {
    pub interval: Duration,
    /// Screens to print before exiting; `None`: until interrupted.
    pub iterations: Option<u64>,
}

/// The `top` command.
pub fn run(instance: &str, opts: &Options) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let engine_pid = region.header().engine_pid.load(Ordering::Acquire);
    let tty = std::io::stdout().is_terminal();
    let mut prev = stats::read(&region);
    let mut prev_at = Instant::now();
    let mut shown = 0u64;
    while opts.iterations.is_none_or(|n| shown < n) {
        pause(opts.interval);
        let now = stats::read(&region);
        let now_at = Instant::now();
        let mut text = screen(instance, &prev, &now, now_at - prev_at);
        if tty {
            text.insert_str(0, CLEAR);
        } else {
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            // The reader went away (`top | head`): nothing left to do.
            return Ok(());
        }
        (prev, prev_at) = (now, now_at);
        shown += 1;
        if !pid_alive(engine_pid) {
            return Err(Failure::failed(format!(
                "the engine of instance {instance} (pid {engine_pid}) exited"
            )));
        }
    }
    Ok(())
}

/// One screen: a header line, then tables of upstreams, routes and tenants, each sorted by
/// requests per second, most first.
pub fn screen(instance: &str, prev: &Totals, now: &Totals, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let requests: u64 = now
        .shards
        .iter()
        .map(|s| {
            let before = prev
                .shards
                .iter()
                .find(|p| p.id == s.id)
                .map_or(0, |p| p.requests);
            s.requests.saturating_sub(before)
        })
        .sum();
    let (lo, hi) = version_range(&now.shards);
    let mut out = format!(
        "shardgate {instance}  {} req/s  {} shard{}  config version {}  (over {:.2} s)\n\n",
        table::rate(requests as f64 / secs),
        now.shards.len(),
        if now.shards.len() == 1 { "" } else { "s" },
        table::version_span(lo, hi),
        secs,
    );
    out.push_str(&rates_table(
        "upstream",
        &rows(&prev.upstreams, &now.upstreams, secs),
        false,
    ));
    out.push('\n');
    out.push_str(&rates_table(
        "route",
        &rows(&prev.routes, &now.routes, secs),
        false,
    ));
    if !now.tenants.is_empty() {
        out.push('\n');
        out.push_str(&rates_table(
            "tenant",
            &rows(&prev.tenants, &now.tenants, secs),
            true,
        ));
    }
    out
}

/// One name's change over the interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    pub name: String,
    pub delta: SlotTotals,
    pub secs: f64,
}

impl Rates {
    fn per_s(&self, n: u64) -> f64 {
        n as f64 / self.secs
    }
}

/// The change of each name in `now` since `prev` (a name new since then counts from zero),
/// most requests first, then by name.
pub fn rows(
    prev: &BTreeMap<String, SlotTotals>,
    now: &BTreeMap<String, SlotTotals>,
    secs: f64,
) -> Vec<Rates> {
    let zero = SlotTotals::default();
    let mut out: Vec<Rates> = now
        .iter()
        .map(|(name, t)| Rates {
            name: name.clone(),
            delta: t.since(prev.get(name).unwrap_or(&zero)),
            secs,
        })
        .collect();
    out.sort_by(|a, b| {
        b.delta
            .requests
            .cmp(&a.delta.requests)
            .then_with(|| a.name.cmp(&b.name))
    });
    out
}

/// `spend`: the tenants' table, with what they spend per minute (dollars).
fn rates_table(what: &str, rows: &[Rates], spend: bool) -> String {
    let last = DURATION_BUCKETS_MS[DURATION_BUCKETS_MS.len() - 1];
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let d = &r.delta;
            let mut cells = vec![
                r.name.clone(),
                table::rate(r.per_s(d.requests)),
                table::rate(r.per_s(d.errors())),
                table::rate(r.per_s(d.status[2])),
                table::rate(r.per_s(d.status[4])),
                table::rate(r.per_s(d.status[5])),
                table::quantile(d.quantile_ms(0.5), last),
                table::quantile(d.quantile_ms(0.99), last),
                table::bytes(r.per_s(d.bytes_in)),
                table::bytes(r.per_s(d.bytes_out)),
            ];
            if spend {
                cells.push(format!("{:.4}", r.per_s(d.spend_nusd) * 60.0 / 1e9));
            }
            cells
        })
        .collect();
    let mut header = vec![
        (what, Align::Left),
        ("req/s", Align::Right),
        ("err/s", Align::Right),
        ("2xx/s", Align::Right),
        ("4xx/s", Align::Right),
        ("5xx/s", Align::Right),
        ("p50 ms", Align::Right),
        ("p99 ms", Align::Right),
        ("in/s", Align::Right),
        ("out/s", Align::Right),
    ];
    if spend {
        header.push(("$/min", Align::Right));
    }
    table::render(&header, &cells)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::control::shm::Region;
    use shardgate_core::control::stats::{ShardStats, ShardView, NO_SLOT};

    fn slot(requests: u64, ok: u64, server_errors: u64, fast: u64, slow: u64) -> SlotTotals {
        let mut s = SlotTotals {
            requests,
            bytes_in: requests * 100,
            bytes_out: requests * 2048,
            ..SlotTotals::default()
        };
        s.status[2] = ok;
        s.status[5] = server_errors;
        s.duration_buckets[0] = fast; // ≤ 1 ms
        s.duration_buckets[5] = slow; // ≤ 50 ms
        s
    }

    fn totals(shard_requests: &[u64], ups: &[(&str, SlotTotals)], version: u64) -> Totals {
        Totals {
            shards: shard_requests
                .iter()
                .enumerate()
                .map(|(id, &requests)| ShardView {
                    id,
                    requests,
                    config_version: version,
                    ..ShardView::default()
                })
                .collect(),
            upstreams: ups
                .iter()
                .map(|(n, s)| ((*n).to_owned(), s.clone()))
                .collect(),
            routes: BTreeMap::new(),
            tenants: BTreeMap::new(),
        }
    }

    #[test]
    fn rates_are_deltas_over_the_interval_sorted_by_requests() {
        let prev = totals(&[10, 10], &[("a", slot(10, 10, 0, 10, 0))], 3);
        let now = totals(
            &[30, 40],
            &[("a", slot(20, 20, 0, 20, 0)), ("b", slot(40, 38, 2, 0, 40))],
            3,
        );
        let r = rows(&prev.upstreams, &now.upstreams, 2.0);
        assert_eq!(
            r.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["b", "a"]
        );
        assert_eq!(r[0].delta.requests, 40);
        assert_eq!(r[1].delta.requests, 10);
        assert_eq!(r[0].delta.errors(), 2);

        let s = screen("default", &prev, &now, Duration::from_secs(2));
        assert_eq!(
            s,
            "shardgate default  25.0 req/s  2 shards  config version 3  (over 2.00 s)\n\
             \n\
             upstream  req/s  err/s  2xx/s  4xx/s  5xx/s  p50 ms  p99 ms  in/s  out/s\n\
             b          20.0    1.0   19.0    0.0    1.0      50      50  2.0K  40.0K\n\
             a           5.0    0.0    5.0    0.0    0.0       1       1  500B  10.0K\n\
             \n\
             route  req/s  err/s  2xx/s  4xx/s  5xx/s  p50 ms  p99 ms  in/s  out/s\n"
        );
    }

    #[test]
    fn an_idle_name_shows_zero_and_no_latency() {
        let prev = totals(&[5], &[("a", slot(5, 5, 0, 5, 0))], 1);
        let now = totals(&[5], &[("a", slot(5, 5, 0, 5, 0))], 2);
        let s = screen("x", &prev, &now, Duration::from_millis(500));
        assert!(s.starts_with("shardgate x  0.0 req/s  1 shard  config version 2"));
        let row = s.lines().find(|l| l.starts_with("a ")).expect("a row");
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["a", "0.0", "0.0", "0.0", "0.0", "0.0", "-", "-", "0B", "0B"]
        );
    }

    #[test]
    fn from_a_region_with_recorded_requests() {
        let r: &'static Region = Box::leak(Box::new(Region::anonymous(1).expect("anon")));
        let s = ShardStats::new(r.shard(0));
        let prev = stats::read(r);
        let (up, route) = (s.upstream_slot("demo"), s.route_slot("/v1/"));
        for _ in 0..4 {
            s.record(up, route, NO_SLOT, 200, 10, 20, Duration::from_millis(2));
        }
        s.record(up, NO_SLOT, NO_SLOT, 502, 10, 0, Duration::from_secs(90));
        let now = stats::read(r);
        let text = screen("unit", &prev, &now, Duration::from_secs(1));
        let demo = text
            .lines()
            .find(|l| l.starts_with("demo"))
            .expect("a demo row");
        let cells: Vec<&str> = demo.split_whitespace().collect();
        assert_eq!(
            cells,
            ["demo", "5.0", "1.0", "4.0", "0.0", "1.0", "3", ">60000", "50B", "80B"]
        );
        assert!(text.lines().any(|l| l.starts_with("/v1/ ")), "{text}");
        // The unrouted upstream `-` is listed too, idle.
        assert!(text.lines().any(|l| l.starts_with("-  ")), "{text}");
    }
}
