//! `shardgate-ctl` against a running engine: apply under load with zero failed requests, the
//! switch seen promptly, in-flight requests finishing on their config, pools kept, and the
//! engine keeping its last good config through corrupt, truncated and abandoned messages.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate_engine::control::shm::Region;
use shardgate_tests::{
    ctl_status, run_ctl, sleep, spawn_ctl, wait_until, write_response, Action, Client, Gateway,
    MockUpstream, Request,
};

const CTL_WAIT: Duration = Duration::from_secs(20);

/// An upstream that answers `200` with its own name as the body.
fn named(name: &'static str) -> MockUpstream {
    MockUpstream::start(
        move |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            write_response(stream, 200, "text/plain", name.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    )
}

/// A config with upstreams `a` and `b` and the route `/` to `to`, plus `extra` lines.
fn config(a: SocketAddr, b: SocketAddr, to: &str, server_extra: &str, extra: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
cores = 2
auth = "none"
{server_extra}

[[upstreams]]
name = "a"
endpoints = ["http://{a}"]

[[upstreams]]
name = "b"
endpoints = ["http://{b}"]

[[routes]]
path_prefix = "/"
upstream = "{to}"
{extra}"#
    )
}

fn write_temp(name: &str, text: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("sg-ctl-{}-{name}.toml", std::process::id()));
    std::fs::write(&p, text).expect("write config");
    p
}

fn body_of(c: &mut Client) -> String {
    c.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    r.body_str()
}

/// The config version every shard runs (panics when they differ).
fn version(instance: &str) -> u64 {
    let s = ctl_status(instance);
    let (min, max) = (&s["config_version"]["min"], &s["config_version"]["max"]);
    assert_eq!(min, max, "{s}");
    min.as_u64().expect("version")
}

/// When a request was sent, and the upstream that answered it (or why it failed).
type Sent = (Instant, Result<String, String>);

#[test]
fn apply_under_load_switches_promptly_with_zero_failed_requests() {
    let (a, b) = (named("A"), named("B"));
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    let next = write_temp("switch", &config(a.addr(), b.addr(), "b", "", ""));
    // Load: keep-alive clients in a loop, each request logged with when it was sent.
    let stop = Arc::new(AtomicBool::new(false));
    let log: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            let (stop, log, addr) = (stop.clone(), log.clone(), gw.addr());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    c.send("GET /x HTTP/1.1\r\nHost: t\r\n\r\n");
                    let got = match c.try_read_response() {
                        Ok(r) if r.status == 200 => Ok(r.body_str()),
                        Ok(r) => Err(r.summary()),
                        Err(e) => Err(e),
                    };
                    let failed = got.is_err();
                    log.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((sent, got));
                    if failed {
                        c = Client::connect(addr);
                    }
                }
            })
        })
        .collect();
    sleep(Duration::from_millis(300));
    let out = run_ctl(
        gw.instance(),
        &["apply", &next.display().to_string()],
        &[],
        CTL_WAIT,
    );
    let applied = Instant::now();
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("~ route /: a -> b"), "{}", out.text());
    sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("worker");
    }
    let log = log.lock().unwrap_or_else(|p| p.into_inner());
    let failed: Vec<_> = log.iter().filter(|(_, r)| r.is_err()).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(log.iter().any(|(_, r)| r.as_deref() == Ok("A")));
    // Every request sent once ctl reported all shards on the new version went to B.
    let late_a = log
        .iter()
        .filter(|(t, r)| *t > applied && r.as_deref() == Ok("A"))
        .count();
    assert_eq!(late_a, 0, "requests sent after apply still went to A");
    assert!(log
        .iter()
        .any(|(t, r)| *t > applied && r.as_deref() == Ok("B")));
    // ctl measured publish → every shard on the new version.
    let ms: u64 = out
        .stdout
        .lines()
        .find_map(|l| {
            l.strip_prefix("applied version 2 to 2 shards in ")?
                .strip_suffix(" ms")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no applied line: {}", out.text()));
    assert!(ms < 100, "switch took {ms} ms: {}", out.text());
    assert_eq!(version(gw.instance()), 2);
    let _ = std::fs::remove_file(next);
}

#[test]
fn in_flight_requests_finish_on_their_config_and_unchanged_pools_are_kept() {
    // `a` answers slowly for /slow, so a request is in flight while the config changes.
    let a = MockUpstream::start(
        |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            if req.path == "/slow" {
                sleep(Duration::from_millis(600));
            }
            write_response(stream, 200, "text/plain", b"A")?;
            Ok(Action::KeepAlive)
        },
    );
    let b = named("B");
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    // Warm a pooled connection to `a`, then change only a timeout: the pool survives.
    let mut c = Client::connect(gw.addr());
    assert_eq!(body_of(&mut c), "A");
    assert_eq!(a.connections_accepted(), 1);
    let timeout_only = write_temp(
        "timeout",
        &config(a.addr(), b.addr(), "a", "idle_timeout_ms = 30000", ""),
    );
    let out = run_ctl(
        gw.instance(),
        &["apply", &timeout_only.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(
        out.stdout.contains("server.idle_timeout_ms"),
        "{}",
        out.text()
    );
    assert_eq!(body_of(&mut c), "A");
    assert_eq!(
        a.connections_accepted(),
        1,
        "the pool of an unchanged endpoint was dropped"
    );

    // A slow request on the old config while the route moves to `b`.
    let addr = gw.addr();
    let slow = std::thread::spawn(move || {
        let mut s = Client::connect(addr);
        s.send("GET /slow HTTP/1.1\r\nHost: t\r\n\r\n");
        let r = s.read_response();
        (r.status, r.body_str(), s)
    });
    assert!(a.wait_requests(3, Duration::from_secs(5)));
    let to_b = write_temp(
        "to-b",
        &config(a.addr(), b.addr(), "b", "idle_timeout_ms = 30000", ""),
    );
    let out = run_ctl(
        gw.instance(),
        &["apply", &to_b.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    let (status, body, mut s) = slow.join().expect("slow request");
    assert_eq!(
        (status, body.as_str()),
        (200, "A"),
        "in-flight request lost its config"
    );
    // The same keep-alive connections now reach `b`.
    assert_eq!(body_of(&mut s), "B");
    assert_eq!(body_of(&mut c), "B");
    assert_eq!(version(gw.instance()), 3);
    let _ = std::fs::remove_file(timeout_only);
    let _ = std::fs::remove_file(to_b);
}

#[test]
fn check_names_the_field_and_restart_only_changes_are_refused() {
    let (a, b) = (named("A"), named("B"));
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    let bad = write_temp("bad", &config(a.addr(), b.addr(), "nowhere", "", ""));
    let out = run_ctl(
        gw.instance(),
        &["check", &bad.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(2), "{}", out.text());
    assert!(out.stderr.contains("routes[0].upstream"), "{}", out.text());
    let out = run_ctl(
        gw.instance(),
        &["apply", &bad.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(2), "{}", out.text());
    let cores = write_temp(
        "cores",
        &config(a.addr(), b.addr(), "b", "", "").replace("cores = 2", "cores = 1"),
    );
    let out = run_ctl(
        gw.instance(),
        &["apply", &cores.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.stderr.contains("server.cores"), "{}", out.text());
    assert_eq!(version(gw.instance()), 1, "a refused config was pushed");
    let mut c = Client::connect(gw.addr());
    assert_eq!(body_of(&mut c), "A");
    let _ = std::fs::remove_file(bad);
    let _ = std::fs::remove_file(cores);
}

#[test]
fn corrupt_and_truncated_messages_are_refused_and_the_last_good_config_serves() {
    let (a, b) = (named("A"), named("B"));
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    let region = Region::open(gw.instance()).expect("region");
    {
        let _lock = region.lock_writer(0).expect("writer lock");
        let ring = region.ring();
        // Frames that check out but carry no config message.
        ring.publish(7, b"garbage, not a config").expect("fits");
        // A config message whose TOML does not validate.
        let good =
            shardgate_engine::config::Config::from_toml(&config(a.addr(), b.addr(), "b", "", ""))
                .expect("valid");
        let bad_toml = "[server\n";
        let body = shardgate_engine::control::message::encode(bad_toml, &good).expect("encode");
        ring.publish(8, &body).expect("fits");
        // The first frame only of a two-frame message (a writer that died).
        let big = format!(
            "{}{}",
            config(a.addr(), b.addr(), "b", "", ""),
            "#".repeat(70_000)
        );
        let body = shardgate_engine::control::message::encode(&big, &good).expect("encode");
        assert_eq!(ring.publish_partial(9, &body, 1), Ok(1));
    }
    // Both shards refused 7 and 8 and say why; 9 never completes.
    let refused = wait_until(Duration::from_secs(5), || {
        let s = ctl_status(gw.instance());
        s["shards"]
            .as_array()
            .is_some_and(|sh| sh.iter().all(|x| x["apply_errors"] == 2))
    });
    let s = ctl_status(gw.instance());
    assert!(refused, "{s}");
    for sh in s["shards"].as_array().expect("shards") {
        assert_eq!(sh["config_version"], 1, "{s}");
        assert_eq!(sh["error_version"], 8, "{s}");
        assert!(
            sh["error"].as_str().is_some_and(|e| e.contains("line 1")),
            "{s}"
        );
    }
    let mut c = Client::connect(gw.addr());
    assert_eq!(body_of(&mut c), "A");
    // The next good apply drops the cut-short message and takes effect.
    let to_b = write_temp("after-corrupt", &config(a.addr(), b.addr(), "b", "", ""));
    let out = run_ctl(
        gw.instance(),
        &["apply", &to_b.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(body_of(&mut c), "B");
    let s = ctl_status(gw.instance());
    for sh in s["shards"].as_array().expect("shards") {
        assert!(sh["ring_dropped"].as_u64().is_some_and(|d| d >= 1), "{s}");
        assert_eq!(sh["config_version"], 10, "{s}");
    }
    let _ = std::fs::remove_file(to_b);
}

#[test]
fn ctl_killed_mid_apply_leaves_the_engine_serving_and_a_second_ctl_is_refused() {
    let (a, b) = (named("A"), named("B"));
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    // More than one ring frame (64 KiB) of config: many routes.
    let routes: String = (0..2500)
        .map(|i| format!("\n[[routes]]\npath_prefix = \"/r{i}/\"\nupstream = \"b\"\n"))
        .collect();
    let big = write_temp("big", &config(a.addr(), b.addr(), "b", "", &routes));
    let path = big.display().to_string();
    let mut stalled = spawn_ctl(
        gw.instance(),
        &["apply", &path],
        &[("SHARDGATE_CTL_STALL_AFTER_FRAMES", "1")],
    );
    let region = Region::open(gw.instance()).expect("region");
    assert!(
        wait_until(Duration::from_secs(10), || region.ring().head() >= 2),
        "the stalled ctl wrote nothing"
    );
    // While it holds the writer lock, another ctl is refused with a clear message.
    let second = run_ctl(gw.instance(), &["apply", &path], &[], CTL_WAIT);
    assert_eq!(second.code, Some(1), "{}", second.text());
    assert!(
        second.stderr.contains("another shardgate-ctl"),
        "{}",
        second.text()
    );
    // Kill it mid-apply: the engine keeps serving the last good config.
    stalled.kill().expect("kill ctl");
    let _ = stalled.wait();
    let mut c = Client::connect(gw.addr());
    assert_eq!(body_of(&mut c), "A");
    assert_eq!(version(gw.instance()), 1);
    // The next apply takes the dead writer's lock over and applies whole.
    let out = run_ctl(gw.instance(), &["apply", &path], &[], CTL_WAIT);
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert_eq!(body_of(&mut c), "B");
    c.send("GET /r2499/x HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().body_str(), "B");
    let _ = std::fs::remove_file(big);
}

#[test]
fn status_reports_every_shard() {
    let (a, b) = (named("A"), named("B"));
    let gw = Gateway::start(&config(a.addr(), b.addr(), "a", "", ""));
    let mut c = Client::connect(gw.addr());
    for _ in 0..5 {
        assert_eq!(body_of(&mut c), "A");
    }
    // A request is counted once its response is written: the last one may still be counting
    // when the client has read it.
    let requests = |s: &serde_json::Value| -> u64 {
        s["shards"]
            .as_array()
            .map_or(0, |a| a.iter().filter_map(|x| x["requests"].as_u64()).sum())
    };
    let mut s = ctl_status(gw.instance());
    for _ in 0..100 {
        if requests(&s) == 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        s = ctl_status(gw.instance());
    }
    assert_eq!(s["instance"], gw.instance());
    let shards = s["shards"].as_array().expect("shards");
    assert_eq!(shards.len(), 2);
    assert_eq!(requests(&s), 5, "{s}");
    for sh in shards {
        assert!(
            sh["driver"]
                .as_str()
                .is_some_and(|d| d == "io_uring" || d == "epoll"),
            "{s}"
        );
        assert_eq!(sh["running"], true, "{s}");
    }
    // The human table names the instance and each shard.
    let out = run_ctl(gw.instance(), &["status"], &[], CTL_WAIT);
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains(gw.instance()), "{}", out.text());
    // top, non-interactive: one block per interval with the upstream's rate.
    let out = run_ctl(
        gw.instance(),
        &["top", "--interval-ms", "200", "--iterations", "2"],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    assert!(out.stdout.contains("upstream"), "{}", out.text());
    // An instance that is not running: exit 1 with a clear message.
    let out = run_ctl("no-such-instance", &["status"], &[], CTL_WAIT);
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.stderr.contains("no-such-instance"), "{}", out.text());
}

#[test]
fn a_second_engine_with_a_live_instance_name_is_refused_and_a_stale_region_is_replaced() {
    let (a, b) = (named("A"), named("B"));
    let cfg = config(a.addr(), b.addr(), "a", "", "");
    let first = Gateway::start(&cfg);
    let same = ["--instance", first.instance()];
    let err = Gateway::try_start_full(&cfg, &[], &same)
        .expect_err("a second engine on a live instance started");
    assert!(err.contains("already running"), "{err}");
    // The first engine is untouched.
    let mut c = Client::connect(first.addr());
    assert_eq!(body_of(&mut c), "A");
    // Killed (no clean exit): its region stays behind, and the next start replaces it.
    let instance = first.instance().to_owned();
    let mut first = first;
    first.signal("-KILL");
    assert!(first.wait_exit(Duration::from_secs(10)).is_some());
    assert!(std::path::Path::new(&format!("/dev/shm/shardgate-{instance}")).exists());
    let again = Gateway::start_with_args(&cfg, &[], &["--instance", &instance]);
    assert_eq!(version(again.instance()), 1);
}
