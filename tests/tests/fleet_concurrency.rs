//! A tenant's `max_concurrency` across a fleet (`[fleet]`, decision 0013): two engine instances
//! of 2 shards each, a real `redis-server` (started on a free port), and a slow upstream that
//! counts the requests it has in flight. Flooded through both instances, the tenant never has
//! more than its `max_concurrency` in flight at the upstream, not that many per instance; an
//! instance killed with SIGKILL gives its share back to the other within the heartbeat's TTL.
//! The sync script's part is also driven directly (`redis-cli EVAL`): shares that sum to the
//! limit, split fairly, and a gone instance's dropped.
//!
//! Needs `redis-server` and `redis-cli` (Debian package `redis-server`; `.ci/run` installs it).

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_engine::fleet::{INSTANCE_TTL_MS, SYNC_SCRIPT};
use shardgate_tests::{
    ctl_bin, ctl_ok, free_port, sha256_hex, sleep, wait_until, write_response, Action, Client,
    Gateway, MockUpstream, Redis, Request,
};

const KEY: &str = "sk-fleet-conc-0123456789";
const TENANT: &str = "team-c";
/// The tenant's `max_concurrency`.
const MAX: usize = 8;
/// Connections making requests at once, over both instances.
const CLIENTS: usize = 64;
/// How long the upstream takes to answer, ms.
const UPSTREAM_MS: u64 = 300;

/// The upstream's count of requests in flight: now and the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// An upstream that answers each chat completion after [`UPSTREAM_MS`], counting the requests
/// it holds. A request stops counting before its answer is written, so the gateway cannot
/// free the slot (and send the next request) while it still counts.
fn slow_upstream() -> (MockUpstream, Arc<InFlight>) {
    let seen = Arc::new(InFlight::default());
    let counts = seen.clone();
    let up = MockUpstream::start(
        move |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let now = counts.now.fetch_add(1, Ordering::SeqCst) + 1;
            counts.peak.fetch_max(now, Ordering::SeqCst);
            sleep(Duration::from_millis(UPSTREAM_MS));
            counts.now.fetch_sub(1, Ordering::SeqCst);
            let body = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
            write_response(stream, 200, "application/json", body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    );
    (up, seen)
}

fn config(redis_port: u16, upstream: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cores = 2
auth = "keys"

[fleet]
redis = "redis://127.0.0.1:{redis_port}/0"

[[upstreams]]
name = "slow"
endpoints = ["http://{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "slow"

[[tenants]]
name = "{TENANT}"
keys = ["sha256:{}"]
max_concurrency = {MAX}
"#,
        sha256_hex(KEY)
    )
}

/// One chat completion on a fresh connection: its status, or why there was none (the gateway
/// could not be reached or did not answer: killed).
fn chat(addr: SocketAddr) -> Result<u16, String> {
    let mut c = Client::try_connect(addr).map_err(|e| format!("connect: {e}"))?;
    let body = r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#;
    c.try_send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .map_err(|e| format!("send: {e}"))?;
    c.try_read_response().map(|r| r.status)
}

/// `n` clients sending requests to `addr` one after another until `stop` is set; each
/// returns the statuses it got (or why there was none).
fn flood(
    addr: SocketAddr,
    n: usize,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Result<u16, String>>>> {
    (0..n)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let status = chat(addr);
                    if status != Ok(200) {
                        // A refusal comes back at once: a short pause, so 64 clients on 2 cores
                        // leave the engines and their fleet agents the CPU.
                        sleep(Duration::from_millis(10));
                    }
                    got.push(status);
                }
                got
            })
        })
        .collect()
}

fn collect(h: Vec<std::thread::JoinHandle<Vec<Result<u16, String>>>>) -> Vec<Result<u16, String>> {
    h.into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

fn count(s: &[Result<u16, String>], status: u16) -> usize {
    s.iter().filter(|x| **x == Ok(status)).count()
}

/// Two instances in the fleet on `redis`, in front of `upstream`, both reaching Redis and
/// seeing each other.
fn two_instances(redis: &Redis, upstream: SocketAddr) -> (Gateway, Gateway) {
    let a = Gateway::start(&config(redis.port, upstream));
    let b = Gateway::start(&config(redis.port, upstream));
    for gw in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(10), || {
                let m = gw.metrics();
                m.contains("shardgate_fleet_redis_up 1")
                    && m.contains("shardgate_fleet_instances 2")
            }),
            "the instances do not both reach Redis: {}",
            gw.metrics()
        );
    }
    (a, b)
}

#[test]
fn a_tenant_flooded_through_two_instances_has_its_max_concurrency_in_flight_not_twice_that() {
    // Built now, not mid-flood.
    let _ = ctl_bin();
    let redis = Redis::start(free_port().port());
    let (up, seen) = slow_upstream();
    let (a, b) = two_instances(&redis, up.addr());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let on_a = flood(a.addr(), CLIENTS / 2, &stop);
    let on_b = flood(b.addr(), CLIENTS / 2, &stop);
    sleep(Duration::from_secs(3));
    // Mid-flood, ctl shows this instance's share of the tenant's max_concurrency.
    let status = ctl_ok(&a, &["fleet", "status"]);
    stop.store(true, Ordering::Relaxed);
    let (got_a, got_b) = (collect(on_a), collect(on_b));
    let secs = start.elapsed().as_secs_f64();
    let (ok_a, ok_b) = (count(&got_a, 200), count(&got_b, 200));
    let peak = seen.peak.load(Ordering::SeqCst);
    eprintln!(
        "fleet concurrency: {} admitted ({ok_a} on a, {ok_b} on b) of {} in {secs:.2} s; at most \
         {peak} in flight at the upstream (max_concurrency {MAX})",
        ok_a + ok_b,
        got_a.len() + got_b.len()
    );
    for got in [&got_a, &got_b] {
        let other: Vec<_> = got
            .iter()
            .filter(|s| !matches!(s, Ok(200 | 429)))
            .take(5)
            .collect();
        assert!(
            other.is_empty(),
            "answers other than 200 and 429: {other:?}"
        );
    }
    // Exactly the limit, no slack: the shares the instances hold in Redis sum to at most the
    // limit, each admits under its own, and a share is lowered before what is in flight is
    // read (a request admitted meanwhile is counted, or checked against the lower share).
    assert!(
        peak <= MAX,
        "{peak} requests in flight at the upstream over two instances: the fleet allows {MAX} \
         (each instance alone would admit that many)"
    );
    // Slots are used and given back: a full 8 for 3 s admits about 80; a share stuck at a
    // slot or none would admit a handful.
    let ok = ok_a + ok_b;
    assert!(
        ok > 3 * MAX,
        "{ok} admitted in {secs:.1} s: the limit was starved"
    );
    assert_eq!(peak, MAX, "the fleet never had its {MAX} slots in use");
    // Both instances were served: the instances share the limit while both ask for it.
    assert!(
        ok_a >= MAX && ok_b >= MAX,
        "{ok_a} admitted on a, {ok_b} on b: one instance kept the limit"
    );
    let share: u64 = status
        .lines()
        .find(|l| l.starts_with(TENANT))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("no concurrency share for {TENANT}:\n{status}"));
    assert!(
        status.contains("CONCURRENCY SHARE") && (1..=MAX as u64).contains(&share),
        "{status}"
    );
}

#[test]
fn an_instance_killed_mid_load_gives_its_share_back_within_the_heartbeats_ttl() {
    let redis = Redis::start(free_port().port());
    let (up, seen) = slow_upstream();
    let (a, mut b) = two_instances(&redis, up.addr());
    let (stop_a, stop_b) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let on_a = flood(a.addr(), CLIENTS / 2, &stop_a);
    let on_b = flood(b.addr(), CLIENTS / 2, &stop_b);
    // Both hold a share under load; then b dies holding its slots.
    sleep(Duration::from_millis(1_500));
    stop_b.store(true, Ordering::Relaxed);
    b.signal("-KILL");
    let killed = Instant::now();
    assert!(b.wait_exit(Duration::from_secs(5)).is_some(), "b survived");
    // b's requests at the upstream end within one answer's time; what a holds then is its
    // share, below the limit while b's share is still counted in Redis.
    sleep(Duration::from_millis(UPSTREAM_MS + 200));
    let before_ttl = seen.now.load(Ordering::SeqCst);
    // Within the TTL (and a sync or two, and scheduling on a busy machine) b's share is
    // dropped and a takes the whole limit.
    let margin = Duration::from_millis(3_000);
    let reached = wait_until(Duration::from_millis(INSTANCE_TTL_MS) + margin, || {
        seen.now.load(Ordering::SeqCst) >= MAX
    });
    let after = killed.elapsed();
    stop_a.store(true, Ordering::Relaxed);
    let got_a = collect(on_a);
    let _ = collect(on_b);
    let peak = seen.peak.load(Ordering::SeqCst);
    eprintln!(
        "kill: {before_ttl} in flight at the upstream after b's requests ended; {MAX} reached \
         {:.2} s after the kill ({reached}); at most {peak} in flight",
        after.as_secs_f64()
    );
    assert!(
        reached,
        "a never got b's share back: {after:?} after the kill"
    );
    assert!(
        before_ttl < MAX,
        "a had the whole limit ({before_ttl}) while b's share still counted"
    );
    assert!(peak <= MAX, "{peak} in flight: the fleet allows {MAX}");
    let other: Vec<_> = got_a
        .iter()
        .filter(|s| !matches!(s, Ok(200 | 429)))
        .collect();
    assert!(
        other.is_empty(),
        "a answered other than 200 and 429: {other:?}"
    );
}

/// One sync of instance `id` for tenant `t`'s share (no other limit): the slots granted.
fn sync_share(redis: &Redis, id: &str, want: u64, holding: u64) -> u64 {
    let (want, holding) = (want.to_string(), holding.to_string());
    let ttl = INSTANCE_TTL_MS.to_string();
    let max = MAX.to_string();
    let out = redis.cli(&[
        "EVAL",
        SYNC_SCRIPT,
        "2",
        "sg:instances",
        "sg:conc:t",
        id,
        &ttl,
        "0",
        &max,
        &want,
        &holding,
    ]);
    out.last()
        .and_then(|g| g.parse().ok())
        .unwrap_or_else(|| panic!("no grant in {out:?}"))
}

/// What each instance holds in Redis of tenant `t`'s share, summed.
fn held(redis: &Redis) -> u64 {
    redis
        .cli(&["HVALS", "sg:conc:t"])
        .iter()
        .filter_map(|v| v.split(',').next()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn the_sync_script_grants_shares_that_sum_to_the_limit_split_fairly_and_drops_the_gone() {
    let redis = Redis::start(free_port().port());
    // Two idle instances: the headroom each asks for.
    assert_eq!(sync_share(&redis, "a", 1, 1), 1);
    assert_eq!(sync_share(&redis, "b", 1, 1), 1);
    // a is flooded: all b does not ask for.
    assert_eq!(sync_share(&redis, "a", 8, 1), 7);
    assert_eq!(held(&redis), 8);
    // b is flooded too: what is left, then a's fair half (a still holds its 7 until they end).
    assert_eq!(sync_share(&redis, "b", 8, 1), 1);
    assert_eq!(sync_share(&redis, "a", 8, 7), 4);
    assert_eq!(held(&redis), 8);
    assert_eq!(sync_share(&redis, "b", 8, 1), 1, "a's 7 still in flight");
    // a down to its 4: b gets the other half.
    assert_eq!(sync_share(&redis, "a", 8, 4), 4);
    assert_eq!(sync_share(&redis, "b", 8, 1), 4);
    assert_eq!(held(&redis), 8);
    // A third instance, idle: nothing left until the others give some back.
    assert_eq!(sync_share(&redis, "c", 1, 0), 0);
    assert_eq!(held(&redis), 8);
    // a leaves the heartbeat set (gone past the TTL): its share is dropped at the next sync
    // of another, and the others share the limit again.
    redis.cli(&["ZREM", "sg:instances", "a"]);
    assert_eq!(sync_share(&redis, "b", 8, 4), 7, "all c does not ask for");
    assert_eq!(redis.cli(&["HEXISTS", "sg:conc:t", "a"]), ["0"]);
    // A share not written for the TTL is dropped though its instance still syncs.
    redis.cli(&["HSET", "sg:conc:t", "c", "5,5,1"]);
    assert_eq!(sync_share(&redis, "b", 8, 7), 8);
    assert_eq!(redis.cli(&["HEXISTS", "sg:conc:t", "c"]), ["0"]);
    // The hash lapses once nobody writes it.
    let pttl: i64 = redis.cli(&["PTTL", "sg:conc:t"])[0]
        .parse()
        .expect("a number");
    assert!(pttl > 0 && pttl <= 2 * INSTANCE_TTL_MS as i64, "{pttl}");
}
