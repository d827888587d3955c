//! A fleet (`[fleet]`, issue 18): two engine instances of 2 shards each sharing a tenant's
//! requests-per-minute limit through a real `redis-server` (started on a free port). A tenant
//! flooded through both instances at once is admitted the fleet's limit, not the limit per
//! instance; with Redis killed in the middle, no request fails for it and each instance falls
//! back to its share; Redis back, the instances say so.
//!
//! Needs `redis-server` (Debian package `redis-server`; `.ci/run` installs it).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_tests::{
    chat_with_key, ctl_ok, free_port, new_key, read_store, run_ctl, run_shardgate, sha256_hex,
    sleep, store_config, wait_until, Gateway, Redis, TempDir, CTL_WAIT, MOCK_ROUTE,
};

const KEY: &str = "sk-fleet-test-0123456789";
const RPM: u64 = 600;
/// Connections making requests at once, over both instances.
const CLIENTS: usize = 64;

fn config(redis_port: u16) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cores = 2
auth = "keys"

[fleet]
redis = "redis://127.0.0.1:{redis_port}/0"
{MOCK_ROUTE}
[[tenants]]
name = "team-f"
keys = ["sha256:{}"]
rpm = {RPM}
"#,
        sha256_hex(KEY)
    )
}

/// Statuses of the requests `CLIENTS` clients make, each on fresh connections, spread over
/// `addrs`, until `stop` is set.
fn flood(addrs: &[SocketAddr], stop: &Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<u16>>> {
    (0..CLIENTS)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    got.push(chat_with_key(addr, KEY, "demo").0);
                }
                got
            })
        })
        .collect()
}

fn collect(h: Vec<std::thread::JoinHandle<Vec<u16>>>) -> Vec<u16> {
    h.into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect()
}

fn count(s: &[u16], status: u16) -> usize {
    s.iter().filter(|&&x| x == status).count()
}

#[test]
fn a_tenant_flooded_through_two_instances_is_admitted_the_fleets_limit() {
    let redis = Redis::start(free_port().port());
    let a = Gateway::start(&config(redis.port));
    let b = Gateway::start(&config(redis.port));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients = flood(&[a.addr(), b.addr()], &stop);
    sleep(Duration::from_secs(4));
    stop.store(true, Ordering::Relaxed);
    let mut got = collect(clients);
    // Then a trickle on the emptied bucket, a request every 30 ms over both instances: it is
    // admitted the bucket's refill, not a lease or an overdraft per sync.
    for i in 0..100 {
        let addr = if i % 2 == 0 { a.addr() } else { b.addr() };
        got.push(chat_with_key(addr, KEY, "demo").0);
        sleep(Duration::from_millis(30));
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = count(&got, 200);
    let other = got.len() - ok - count(&got, 429);
    assert_eq!(other, 0, "answers other than 200 and 429: {got:?}");
    // The fleet's bucket: full (600) at the start, then 10 a second. Slack: an overdraft per
    // instance (1 % of the limit: 6), and 1 % for the clock.
    let bound = RPM as f64 + RPM as f64 * secs / 60.0 + 2.0 * (RPM / 100) as f64;
    eprintln!(
        "fleet: {ok} of {} admitted in {secs:.2} s; the fleet allows {bound:.0}",
        got.len()
    );
    assert!(
        (ok as f64) <= bound * 1.01 + 4.0,
        "{ok} admitted in {secs:.1} s over two instances: the fleet allows {bound:.0} \
         (each instance alone would admit that much); {} requests in all",
        got.len()
    );
    assert!(
        ok >= 580,
        "{ok} admitted: the fleet's bucket was full at the start"
    );
    // Both instances took part, and say they reach Redis and see each other.
    for gw in [&a, &b] {
        let m = gw.metrics();
        assert!(m.contains("shardgate_fleet_redis_up 1"), "{m}");
        assert!(m.contains("shardgate_fleet_instances 2"), "{m}");
        // ctl shows the same, both instances as Redis knows them, and the tenant's credit.
        let out = ctl_ok(gw, &["fleet", "status"]);
        assert!(out.contains("reachable from the engine"), "{out}");
        assert!(out.contains("2 instance(s) seen"), "{out}");
        assert!(out.contains(&format!("/{}/", a.instance())), "{out}");
        assert!(out.contains(&format!("/{}/", b.instance())), "{out}");
        let used: u64 = out
            .lines()
            .find(|l| l.starts_with("team-f") && l.contains("rpm"))
            .and_then(|l| l.split_whitespace().last()?.parse().ok())
            .unwrap_or_else(|| panic!("no rpm row for team-f:\n{out}"));
        assert!(used > 0, "{out}");
    }
}

#[test]
fn with_redis_gone_no_request_fails_and_each_instance_keeps_to_its_share() {
    let port = free_port().port();
    let redis = Redis::start(port);
    let a = Gateway::start(&config(port));
    let b = Gateway::start(&config(port));
    // Both instances seen: a share is half the limit.
    assert!(wait_until(Duration::from_secs(5), || {
        a.metrics().contains("shardgate_fleet_instances 2")
            && b.metrics().contains("shardgate_fleet_instances 2")
    }));
    drop(redis);
    assert!(
        wait_until(Duration::from_secs(5), || a
            .metrics()
            .contains("shardgate_fleet_redis_up 0")),
        "Redis gone, not said"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let clients = flood(&[a.addr(), b.addr()], &stop);
    sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let got = collect(clients);
    let secs = start.elapsed().as_secs_f64();
    let ok = count(&got, 200);
    assert_eq!(
        got.len() - ok - count(&got, 429),
        0,
        "a request failed for Redis: {got:?}"
    );
    // Each instance at its share (300 a minute, its bucket full to start): never the whole
    // limit per instance.
    let share = RPM as f64 / 2.0;
    let bound = 2.0 * (share + share * secs / 60.0);
    eprintln!(
        "Redis down: {ok} of {} admitted in {secs:.2} s; the shares allow {bound:.0}",
        got.len()
    );
    assert!(
        ok as f64 <= bound * 1.01 + 4.0,
        "{ok} admitted in {secs:.1} s; shares allow {bound:.0}"
    );
    assert!(ok >= 200, "{ok} admitted: the shares were not served");
    // Redis back (empty): the instances reach it again.
    let _redis = Redis::start(port);
    for gw in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(5), || gw
                .metrics()
                .contains("shardgate_fleet_redis_up 1")),
            "Redis back, not taken up again"
        );
    }
    assert!(a.stderr().contains("is unreachable"), "{}", a.stderr());
}

#[test]
fn check_says_which_of_the_address_password_and_database_is_wrong() {
    let check = |cfg: &str| {
        let out = run_shardgate(
            &["--check", "--config", "{config}"],
            Some(cfg),
            Duration::from_secs(10),
        );
        assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{}", out.stderr);
        out.stderr
    };
    // Nothing listening there.
    let nobody = free_port().port();
    let e = check(&config(nobody));
    assert!(
        e.contains(&format!("fleet.redis redis://127.0.0.1:{nobody}/0")),
        "{e}"
    );
    // A password Redis refuses; then a database it does not have.
    let port = free_port().port();
    let _redis = Redis::start_with(port, &["--requirepass", "right-pw", "--databases", "2"]);
    // Only this test reads the variable (the engine inherits it).
    std::env::set_var("SG_TEST_FLEET_PW", "wrong-pw");
    let with_pw = |db: u32| {
        config(port).replace(
            &format!("redis://127.0.0.1:{port}/0\""),
            &format!("redis://127.0.0.1:{port}/{db}\"\nredis_password_env = \"SG_TEST_FLEET_PW\""),
        )
    };
    let e = check(&with_pw(0));
    assert!(e.contains("Password authentication failed"), "{e}");
    std::env::set_var("SG_TEST_FLEET_PW", "right-pw");
    let e = check(&with_pw(5));
    assert!(e.contains("DB index is out of range"), "{e}");
    let ok = run_shardgate(
        &["--check", "--config", "{config}"],
        Some(&with_pw(1)),
        Duration::from_secs(10),
    );
    assert_eq!(ok.status.and_then(|s| s.code()), Some(0), "{}", ok.stderr);
    // What the config itself gets wrong.
    let e = check(&config(port).replace("redis://", "rediss://"));
    assert!(e.contains("TLS handshake failed"), "{e}");
    let e = check(&with_pw(0).replace("SG_TEST_FLEET_PW", "SG_TEST_FLEET_UNSET"));
    assert!(e.contains("$SG_TEST_FLEET_UNSET is not set"), "{e}");
}

#[test]
fn an_instance_killed_drops_out_of_the_fleet_and_the_others_go_on() {
    let redis = Redis::start(free_port().port());
    let a = Gateway::start(&config(redis.port));
    let mut b = Gateway::start(&config(redis.port));
    assert!(wait_until(Duration::from_secs(5), || a
        .metrics()
        .contains("shardgate_fleet_instances 2")));
    let stop = Arc::new(AtomicBool::new(false));
    let on_a = flood(&[a.addr()], &stop);
    sleep(Duration::from_secs(1));
    b.signal("-KILL");
    assert!(b.wait_exit(Duration::from_secs(5)).is_some());
    // Its heartbeat lapses: A sees itself alone within the instances' TTL (5 s).
    let alone = wait_until(Duration::from_secs(8), || {
        a.metrics().contains("shardgate_fleet_instances 1")
    });
    stop.store(true, Ordering::Relaxed);
    let got = collect(on_a);
    assert!(alone, "{}", a.metrics());
    assert_eq!(
        got.len() - count(&got, 200) - count(&got, 429),
        0,
        "a request failed when another instance died: {got:?}"
    );
    assert!(count(&got, 200) > 0);
    let out = ctl_ok(&a, &["fleet", "status"]);
    assert!(out.contains("1 instance(s) seen"), "{out}");
    assert!(!out.contains(&format!("/{}/", b.instance())), "{out}");
}

#[test]
fn redis_killed_in_the_middle_of_the_load_fails_no_request() {
    let port = free_port().port();
    let redis = Redis::start(port);
    let a = Gateway::start(&config(port));
    let b = Gateway::start(&config(port));
    let stop = Arc::new(AtomicBool::new(false));
    // Each answer with when it came.
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let addr = if i % 2 == 0 { a.addr() } else { b.addr() };
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    got.push((chat_with_key(addr, KEY, "demo").0, Instant::now()));
                }
                got
            })
        })
        .collect();
    sleep(Duration::from_secs(1));
    drop(redis);
    let killed = Instant::now();
    let said = wait_until(Duration::from_secs(5), || {
        a.metrics().contains("shardgate_fleet_redis_up 0")
            && b.metrics().contains("shardgate_fleet_redis_up 0")
    });
    sleep(Duration::from_secs(2));
    stop.store(true, Ordering::Relaxed);
    let got: Vec<(u16, Instant)> = clients
        .into_iter()
        .flat_map(|h| h.join().expect("client thread"))
        .collect();
    assert!(said, "Redis gone, not said");
    let failed: Vec<u16> = got
        .iter()
        .map(|(s, _)| *s)
        .filter(|s| *s != 200 && *s != 429)
        .collect();
    assert!(
        failed.is_empty(),
        "requests failed when Redis died: {failed:?}"
    );
    // After the kill the limit still holds (refusals) and requests are still served, at the
    // instances' shares.
    let after: Vec<u16> = got
        .iter()
        .filter(|(_, at)| *at > killed)
        .map(|(s, _)| *s)
        .collect();
    assert!(
        count(&after, 429) > 0 && count(&after, 200) > 0,
        "{} after",
        after.len()
    );
}

/// A tenant without limits, to measure a chat's usage with.
const PROBE_KEY: &str = "sk-fleet-probe-0123456789";

/// [`config`] with the tenant's rpm replaced by a token budget of `budget` an hour (requests
/// reserving 16 tokens and their prompt), and a tenant without limits (key [`PROBE_KEY`]).
fn budget_config(redis_port: u16, budget: u64) -> String {
    config(redis_port).replace(
        &format!("rpm = {RPM}\n"),
        &format!(
            "budget_tokens = {budget}\nbudget_window = \"1h\"\ndefault_max_tokens = 16\n\n\
             [[tenants]]\nname = \"probe\"\nkeys = [\"sha256:{}\"]\n",
            sha256_hex(PROBE_KEY)
        ),
    )
}

/// The usage one chat costs through `addr` with `key` (the mock model's answer is the same
/// for the same prompt).
fn usage_of_one_chat(addr: SocketAddr, key: &str) -> u64 {
    let mut c = shardgate_tests::Client::connect(addr);
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    r.json()["usage"]["total_tokens"].as_u64().expect("usage")
}

#[test]
fn a_token_budget_is_spent_once_over_the_fleet_not_once_per_instance() {
    const BUDGET: u64 = 2_000;
    let redis = Redis::start(free_port().port());
    let cfg = budget_config(redis.port, BUDGET);
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    let per = usage_of_one_chat(a.addr(), PROBE_KEY);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = flood(&[a.addr(), b.addr()], &stop);
    sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    let got = collect(clients);
    let ok = count(&got, 200) as u64;
    assert_eq!(
        got.len() as u64 - ok - count(&got, 429) as u64,
        0,
        "answers other than 200 and 429"
    );
    let spent = ok * per;
    eprintln!(
        "budget: {ok} requests of {per} tokens admitted: {spent} of {BUDGET} over two instances"
    );
    // Spent once over the fleet: at most the budget and an overdraft per instance (1 % of
    // the budget, or the largest reservation refused: 17 tokens here), and one request over;
    // at least the budget less what each instance may hold as credit it did not use (a tenth
    // of the budget each).
    assert!(
        spent <= BUDGET + 2 * 20 + per,
        "{spent} tokens of a {BUDGET}-token budget"
    );
    assert!(
        spent + 2 * BUDGET / 10 + per >= BUDGET,
        "only {spent} of {BUDGET} spent"
    );
}

#[test]
fn redis_restarted_empty_gets_back_what_the_instances_spent() {
    const BUDGET: u64 = 2_000;
    let port = free_port().port();
    let redis = Redis::start(port);
    let cfg = budget_config(port, BUDGET);
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    let per = usage_of_one_chat(a.addr(), PROBE_KEY);
    let run = |secs: u64| {
        let stop = Arc::new(AtomicBool::new(false));
        let clients = flood(&[a.addr(), b.addr()], &stop);
        sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
        let got = collect(clients);
        assert_eq!(
            got.len() - count(&got, 200) - count(&got, 429),
            0,
            "answers other than 200 and 429"
        );
        count(&got, 200) as u64
    };
    let before = run(2);
    // Redis restarted empty (no persistence): the window's counter is gone.
    drop(redis);
    let _redis = Redis::start(port);
    for gw in [&a, &b] {
        assert!(wait_until(Duration::from_secs(5), || gw
            .metrics()
            .contains("shardgate_fleet_redis_up 1")));
    }
    let after = run(2);
    let spent = (before + after) * per;
    eprintln!("restart: {before} requests before, {after} after, {spent} of {BUDGET} tokens spent");
    // The instances counted their use again: the budget is not spent a second time.
    assert!(
        spent <= BUDGET + 2 * 20 + 2 * per,
        "{spent} tokens of a {BUDGET}-token budget across a Redis restart"
    );
    assert!(
        a.stderr().contains("lost the fleet's state")
            || b.stderr().contains("lost the fleet's state")
    );
    // The fleet's usage counters are rebuilt from what each instance counted since it started.
    let requests = |gw: &Gateway, args: &[&str]| -> u64 {
        let out: serde_json::Value = serde_json::from_str(&ctl_ok(gw, args)).expect("spend --json");
        out["rows"]
            .as_array()
            .map_or(0, |r| r.iter().filter_map(|r| r["requests"].as_u64()).sum())
    };
    let own = requests(&a, &["spend", "--json"]) + requests(&b, &["spend", "--json"]);
    let rebuilt = wait_until(Duration::from_secs(5), || {
        requests(&a, &["spend", "--fleet", "--json"]) == own
    });
    assert!(
        rebuilt,
        "fleet {} against {own} counted by the instances",
        requests(&a, &["spend", "--fleet", "--json"])
    );
}

/// A config with a tenant store in `dir`, in the fleet of the Redis on `redis_port`.
fn store_fleet_config(dir: &std::path::Path, redis_port: u16) -> String {
    format!(
        "{}\n[fleet]\nredis = \"redis://127.0.0.1:{redis_port}/0\"\n",
        store_config(dir, None)
    )
}

/// How long after now `gw` first answers `key` with `status` (polled every 10 ms; `None`:
/// not within 5 s).
fn answers_within(gw: &Gateway, key: &str, status: u16) -> Option<Duration> {
    let start = Instant::now();
    wait_until(Duration::from_secs(5), || {
        chat_with_key(gw.addr(), key, "demo").0 == status
    })
    .then(|| start.elapsed())
}

/// The store's version and key ids as `dir`'s files hold them.
fn store_keys(dir: &std::path::Path) -> (u64, Vec<String>) {
    let s = read_store(dir);
    let keys = s["keys"]
        .as_object()
        .map(|k| k.keys().cloned().collect())
        .unwrap_or_default();
    (s["version"].as_u64().unwrap_or(0), keys)
}

#[test]
fn a_key_made_or_revoked_on_one_instance_holds_on_the_others_within_a_second() {
    let redis = Redis::start(free_port().port());
    let (da, db) = (TempDir::new("fleet-store-a"), TempDir::new("fleet-store-b"));
    let a = Gateway::start(&store_fleet_config(da.path(), redis.port));
    ctl_ok(&a, &["tenants", "add", "team-s", "--models", "demo"]);
    let (key, id) = new_key(&ctl_ok(&a, &["keys", "create", "team-s"]));
    // An instance started later, its own store empty, loads the fleet's.
    let b = Gateway::start(&store_fleet_config(db.path(), redis.port));
    assert!(answers_within(&b, &key, 200).is_some(), "{}", b.stderr());
    assert!(
        b.stderr().contains("the fleet's store loaded"),
        "{}",
        b.stderr()
    );

    // Revoked on A: refused on B within a second of ctl returning.
    ctl_ok(&a, &["keys", "revoke", &id]);
    let took = answers_within(&b, &key, 401).expect("revoked key still admitted on B");
    eprintln!("revoke on A refused on B after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "refused on B only after {took:?}"
    );
    assert_eq!(chat_with_key(a.addr(), &key, "demo").0, 401);

    // Made on B: admitted on A within a second.
    let (key2, _) = new_key(&ctl_ok(&b, &["keys", "create", "team-s"]));
    let took = answers_within(&a, &key2, 200).expect("key made on B never admitted on A");
    eprintln!("key made on B admitted on A after {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "admitted on A only after {took:?}"
    );
    // Both copies of the store hold the same changes.
    assert!(wait_until(Duration::from_secs(5), || store_keys(da.path())
        == store_keys(db.path())));
}

#[test]
fn changes_made_at_once_on_two_instances_land_in_one_order_on_both() {
    const EACH: usize = 12;
    let redis = Redis::start(free_port().port());
    let (da, db) = (TempDir::new("fleet-order-a"), TempDir::new("fleet-order-b"));
    let a = Gateway::start(&store_fleet_config(da.path(), redis.port));
    ctl_ok(&a, &["tenants", "add", "team-o", "--models", "demo"]);
    let b = Gateway::start(&store_fleet_config(db.path(), redis.port));
    assert!(wait_until(Duration::from_secs(5), || store_keys(db.path())
        .0
        == store_keys(da.path()).0));
    // Both instances take changes at once: each is made on the fleet's store in turn.
    let keys: Vec<String> = std::thread::scope(|s| {
        let made: Vec<_> = [&a, &b]
            .into_iter()
            .map(|gw| {
                s.spawn(move || {
                    (0..EACH)
                        .map(|_| new_key(&ctl_ok(gw, &["keys", "create", "team-o"])).0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        made.into_iter()
            .flat_map(|h| h.join().expect("ctl thread"))
            .collect()
    });
    assert_eq!(keys.len(), 2 * EACH);
    // Every key works on both instances, and both stores end the same.
    for gw in [&a, &b] {
        for k in &keys {
            assert!(answers_within(gw, k, 200).is_some(), "a key not admitted");
        }
    }
    let converged = wait_until(Duration::from_secs(5), || {
        store_keys(da.path()) == store_keys(db.path())
    });
    let (va, ka) = store_keys(da.path());
    assert!(
        converged,
        "stores differ: {:?} vs {:?}",
        store_keys(da.path()),
        store_keys(db.path())
    );
    assert_eq!(ka.len(), 2 * EACH);
    // One tenant and 24 keys: version 25 on both.
    assert_eq!(va, 1 + 2 * EACH as u64);
}

#[test]
fn with_redis_down_a_change_is_refused_and_after_an_empty_restart_the_store_is_rebuilt() {
    let port = free_port().port();
    let redis = Redis::start(port);
    let (da, db) = (TempDir::new("fleet-down-a"), TempDir::new("fleet-down-b"));
    let a = Gateway::start(&store_fleet_config(da.path(), port));
    ctl_ok(&a, &["tenants", "add", "team-d", "--models", "demo"]);
    let (key, _) = new_key(&ctl_ok(&a, &["keys", "create", "team-d"]));
    let b = Gateway::start(&store_fleet_config(db.path(), port));
    assert!(answers_within(&b, &key, 200).is_some());

    drop(redis);
    // Refused, saying why; the instances serve on the store they hold.
    let out = run_ctl(a.instance(), &["keys", "create", "team-d"], &[], CTL_WAIT);
    assert_ne!(out.code, Some(0), "{}", out.text());
    assert!(out.text().contains("unreachable"), "{}", out.text());
    for gw in [&a, &b] {
        for _ in 0..20 {
            assert_eq!(chat_with_key(gw.addr(), &key, "demo").0, 200);
        }
    }
    assert_eq!(
        store_keys(da.path()).1.len(),
        1,
        "a refused change was kept"
    );

    // Redis back, empty: an instance writes the store it holds to it, and changes flow again.
    let _redis = Redis::start(port);
    let (key2, _) = {
        let mut made = None;
        assert!(wait_until(Duration::from_secs(10), || {
            let out = run_ctl(b.instance(), &["keys", "create", "team-d"], &[], CTL_WAIT);
            if out.code == Some(0) {
                made = Some(new_key(&out.stdout));
            }
            made.is_some()
        }));
        made.unwrap_or_default()
    };
    assert!(answers_within(&a, &key2, 200).is_some(), "{}", a.stderr());
    assert!(answers_within(&a, &key, 200).is_some());
    assert!(
        a.stderr().contains("Redis had no tenant store")
            || b.stderr().contains("Redis had no tenant store"),
        "{}\n{}",
        a.stderr(),
        b.stderr()
    );
    assert!(wait_until(Duration::from_secs(5), || store_keys(da.path())
        == store_keys(db.path())));
    assert_eq!(store_keys(da.path()).1.len(), 2);
}

#[test]
fn usage_adds_up_over_the_fleet_in_ctl_spend_and_metrics() {
    let redis = Redis::start(free_port().port());
    // A limit no request here comes near: what is counted, not what is admitted.
    let cfg = config(redis.port).replace(&format!("rpm = {RPM}"), "rpm = 1000000");
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    let (on_a, on_b) = (30u64, 20u64);
    for (gw, n) in [(&a, on_a), (&b, on_b)] {
        for _ in 0..n {
            assert_eq!(chat_with_key(gw.addr(), KEY, "demo").0, 200);
        }
    }
    // Each instance counts its own; the fleet's counters hold both.
    let own: serde_json::Value =
        serde_json::from_str(&ctl_ok(&a, &["spend", "--json"])).expect("spend --json");
    assert_eq!(own["rows"][0]["requests"], on_a);
    let fleet = |gw: &Gateway| -> serde_json::Value {
        serde_json::from_str(&ctl_ok(gw, &["spend", "--fleet", "--json"])).expect("spend --json")
    };
    let all = wait_until(Duration::from_secs(5), || {
        fleet(&b)["rows"][0]["requests"] == on_a + on_b
    });
    assert!(all, "{}", fleet(&b));
    let f = fleet(&a);
    assert_eq!(f["source"], "fleet");
    assert_eq!(f["rows"][0]["tenant"], "team-f");
    assert_eq!(
        f["rows"][0]["tokens_in"],
        own["rows"][0]["tokens_in"].as_u64().unwrap_or(0) * 5 / 3
    );
    let line = format!(
        "shardgate_fleet_tenant_requests_total{{tenant=\"team-f\"}} {}",
        on_a + on_b
    );
    assert!(a.metrics().contains(&line), "{}", a.metrics());
    // By key or by time is this instance's access log: refused over the fleet, saying why.
    let out = run_ctl(
        a.instance(),
        &["spend", "--fleet", "--since", "1h"],
        &[],
        CTL_WAIT,
    );
    assert_ne!(out.code, Some(0));
}
