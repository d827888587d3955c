//! Fair sharing of a saturated upstream over several shards: floods spread over both shards by
//! the kernel (many connections of each tenant), and the promises asserted on counts and order
//! at the upstream (who was let through while the flood waited), never on wall-clock speed.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use shardgate_tests::{
    sleep, wait_until, write_response, Action, Client, ConfigBuilder, Gateway, MockUpstream,
    Request,
};

fn key_of(name: &str) -> String {
    format!("sk-{name}-key")
}

fn tenant(name: &str, limits: &str) -> String {
    format!("name = \"{name}\"\nkeys = [\"{}\"]\n{limits}", key_of(name))
}

/// Paths in the order they reached the upstream.
type Arrivals = Arc<Mutex<Vec<String>>>;

fn arrivals(log: &Arrivals) -> Vec<String> {
    log.lock().map(|v| v.clone()).unwrap_or_default()
}

/// An upstream that takes `service` per request and records each path as it arrives; its
/// chat answers report 10 + 5 tokens.
fn slow_upstream(service: Duration) -> (MockUpstream, Arrivals) {
    let log: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let seen = log.clone();
    let up = MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            if let Ok(mut v) = seen.lock() {
                v.push(req.path.clone());
            }
            sleep(service);
            let body = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
            write_response(stream, 200, "application/json", body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    );
    (up, log)
}

/// `conns` keep-alive connections of `who`, each sending `request(who)` in a loop until
/// `stop`; each thread returns its statuses other than 200.
fn flood(
    addr: SocketAddr,
    who: &'static str,
    conns: usize,
    request: fn(&str) -> String,
    stop: &Arc<AtomicBool>,
) -> Vec<JoinHandle<Vec<u16>>> {
    (0..conns)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.set_timeout(Duration::from_secs(30));
                let mut failed = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    c.send(request(who));
                    let r = c.read_response();
                    if r.status != 200 {
                        failed.push(r.status);
                        c = Client::connect(addr);
                    }
                }
                failed
            })
        })
        .collect()
}

fn get(who: &str) -> String {
    format!(
        "GET /{who} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        key_of(who)
    )
}

fn chat_body(max_tokens: u64) -> String {
    format!(
        r#"{{"model":"m","max_tokens":{max_tokens},"messages":[{{"role":"user","content":"hi"}}]}}"#
    )
}

/// The gateway's admission estimate of [`chat_body`]: body bytes / 4 + `max_tokens`.
fn estimate(max_tokens: u64) -> f64 {
    (chat_body(max_tokens).len().div_ceil(4) as u64 + max_tokens) as f64
}

/// A chat request whose admission estimate is dominated by `max_tokens`.
fn chat(who: &str, max_tokens: u64) -> String {
    let body = chat_body(max_tokens);
    format!(
        "POST /v1/chat/completions?{who} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        key_of(who),
        body.len()
    )
}

/// A gateway on 2 shards in front of `upstream` capped at `max_concurrency`, with tenants `a`
/// and `b` (name, `[[tenants]]` limits).
fn two_tenants(
    upstream: SocketAddr,
    max_concurrency: u64,
    a: (&str, &str),
    b: (&str, &str),
) -> Gateway {
    let cfg = ConfigBuilder::new(upstream)
        .cores(2)
        .upstream(&format!("max_concurrency = {max_concurrency}"))
        .server("queue_wait_ms_max = 60000")
        .tenant(&tenant(a.0, a.1))
        .tenant(&tenant(b.0, b.1))
        .build();
    Gateway::start(&cfg)
}

/// Tenant "quiet"'s request `/quiet/{i}` on a new connection; it must succeed.
fn quiet_request(addr: SocketAddr, i: usize) {
    let mut c = Client::connect(addr);
    c.set_timeout(Duration::from_secs(30));
    c.send(format!(
        "GET /quiet/{i} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
        key_of("quiet")
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
}

fn stop_all(stop: &Arc<AtomicBool>, threads: Vec<JoinHandle<Vec<u16>>>) -> Vec<u16> {
    stop.store(true, Ordering::Relaxed);
    threads
        .into_iter()
        .flat_map(|t| t.join().expect("flood thread"))
        .collect()
}

/// How many of `log[from..]` start with `/{who}`.
fn count(log: &[String], from: usize, who: &str) -> usize {
    let prefix = format!("/{who}");
    log[from.min(log.len())..]
        .iter()
        .filter(|p| p.starts_with(&prefix) || p.ends_with(&format!("?{who}")))
        .count()
}

#[test]
fn a_quiet_tenant_goes_ahead_of_a_flood_spread_over_two_shards() {
    let (up, log) = slow_upstream(Duration::from_millis(50));
    let gw = two_tenants(up.addr(), 2, ("flood", ""), ("quiet", ""));
    assert_eq!(gw.shards(), 2);
    let stop = Arc::new(AtomicBool::new(false));
    // 48 connections: the kernel spreads them over both shards, so both hold flood waiters.
    let threads = flood(gw.addr(), "flood", 48, get, &stop);
    assert!(
        wait_until(Duration::from_secs(20), || arrivals(&log).len() >= 30),
        "the flood never got going"
    );
    // Quiet requests one at a time, each on a new connection (so on either shard). A freed
    // slot goes to the waiter with the smallest tag of all shards: the quiet one, since its
    // tenant has no backlog. At most the slots already on their way to flood waiters when it
    // joined reach the upstream before it (one per slot, so 2), never the flood's queue.
    let mut ahead = Vec::new();
    for i in 0..12 {
        let before = arrivals(&log).len();
        quiet_request(gw.addr(), i);
        let log = arrivals(&log);
        let at = log
            .iter()
            .position(|p| *p == format!("/quiet/{i}"))
            .expect("the quiet request reached the upstream");
        ahead.push(count(&log[..at], before, "flood"));
    }
    let failed = stop_all(&stop, threads);
    assert!(failed.is_empty(), "flood requests failed: {failed:?}");
    assert!(
        ahead.iter().all(|&n| n <= 3),
        "flood requests let through ahead of each quiet request: {ahead:?} \
         (a queue that served its own shard first lets dozens through)"
    );
    // The flood was served throughout (it is not starved in return).
    let log = arrivals(&log);
    assert!(
        count(&log, 0, "flood") > 40,
        "flood served {}",
        count(&log, 0, "flood")
    );
}

/// Tenants `a` and `b` (name, `[[tenants]]` limits, request) flood one upstream capped at 2
/// slots from 24 connections each, spread over two shards; once both are queued, how many of
/// the next `window` requests to reach the upstream were each's.
fn two_floods(
    a: (&'static str, &str, fn(&str) -> String),
    b: (&'static str, &str, fn(&str) -> String),
    window: usize,
) -> (usize, usize) {
    let (up, log) = slow_upstream(Duration::from_millis(10));
    let gw = two_tenants(up.addr(), 2, (a.0, a.1), (b.0, b.1));
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = flood(gw.addr(), a.0, 24, a.2, &stop);
    threads.extend(flood(gw.addr(), b.0, 24, b.2, &stop));
    // Count a window once both floods are queued on both shards.
    assert!(wait_until(Duration::from_secs(20), || arrivals(&log).len() >= 60));
    let from = arrivals(&log).len();
    assert!(wait_until(Duration::from_secs(60), || {
        arrivals(&log).len() >= from + window
    }));
    let seen: Vec<String> = arrivals(&log)[from..from + window].to_vec();
    let failed = stop_all(&stop, threads);
    assert!(failed.is_empty(), "requests failed: {failed:?}");
    let counts = (count(&seen, 0, a.0), count(&seen, 0, b.0));
    assert_eq!(counts.0 + counts.1, window);
    counts
}

#[test]
fn weights_three_to_one_hold_over_both_shards() {
    let (h, l) = two_floods(
        ("heavy", "weight = 3", get),
        ("light", "weight = 1", get),
        400,
    );
    // 3:1 within 10%: 300 ± 30 of 400.
    assert!((270..=330).contains(&h), "heavy {h} : light {l}, not 3:1");
}

#[test]
fn shares_are_counted_in_estimated_tokens_over_both_shards() {
    // Same weight, same request rate offered; each of big's requests is estimated at about
    // 4 times small's tokens (body / 4 + max_tokens).
    let (b, s) = two_floods(
        ("big", "", |w| chat(w, 400)),
        ("small", "", |w| chat(w, 80)),
        300,
    );
    // Estimates: big ≈ 19 + 400, small ≈ 18 + 80 tokens a request; equal tokens means
    // small completes about 4.3 requests for each of big's (counting by requests: 1:1).
    let (tb, ts) = (b as f64 * estimate(400), s as f64 * estimate(80));
    assert!(
        (tb / ts - 1.0).abs() <= 0.15,
        "tokens big {tb} : small {ts} (requests {b} : {s}), not 1:1"
    );
}

#[test]
fn a_flood_leaves_the_headroom_to_a_tenant_active_lately() {
    // Flood requests at the upstream right now, and the most seen since the last reset.
    let flood_at_upstream = Arc::new(Mutex::new((0usize, 0usize)));
    let log: Arrivals = Arc::new(Mutex::new(Vec::new()));
    let (seen, counts) = (log.clone(), flood_at_upstream.clone());
    let up = MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let flood = req.path.starts_with("/flood");
            if let Ok(mut v) = seen.lock() {
                v.push(req.path.clone());
            }
            if flood {
                if let Ok(mut c) = counts.lock() {
                    c.0 += 1;
                    c.1 = c.1.max(c.0);
                }
            }
            sleep(Duration::from_millis(30));
            let answered = write_response(stream, 200, "application/json", b"{}");
            if flood {
                if let Ok(mut c) = counts.lock() {
                    c.0 -= 1;
                }
            }
            answered.map(|()| Action::KeepAlive)
        },
    );
    // max_concurrency 8: the default headroom is 1 slot.
    let gw = two_tenants(up.addr(), 8, ("flood", ""), ("quiet", ""));
    let stop = Arc::new(AtomicBool::new(false));
    let threads = flood(gw.addr(), "flood", 32, get, &stop);
    let most = || flood_at_upstream.lock().map(|c| c.1).unwrap_or(0);
    let reset = || {
        if let Ok(mut c) = flood_at_upstream.lock() {
            c.1 = c.0;
        }
    };
    // Alone, the flood takes every slot.
    assert!(
        wait_until(Duration::from_secs(20), || most() == 8),
        "the flood never filled the cap: {}",
        most()
    );
    let quiet = |i: usize| quiet_request(gw.addr(), i);
    // The first quiet request waits for a slot like anyone; from then on, while the quiet
    // tenant is active, the flood leaves one slot free for it (counted at the upstream).
    quiet(0);
    sleep(Duration::from_millis(100));
    reset();
    (1..10).for_each(quiet);
    assert!(
        most() <= 7,
        "the flood took the headroom slot: {} at the upstream",
        most()
    );
    // A second after the quiet tenant's last request, the flood gets every slot again.
    sleep(Duration::from_millis(1200));
    reset();
    assert!(
        wait_until(Duration::from_secs(10), || most() == 8),
        "the headroom outlived the quiet tenant: {}",
        most()
    );
    let failed = stop_all(&stop, threads);
    assert!(failed.is_empty(), "flood requests failed: {failed:?}");
}
