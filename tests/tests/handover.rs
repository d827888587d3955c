//! Changes under load fail no request (issue 19): an upgrade by a second instance on the same
//! port, a lone instance's drain, and SSE streams across a drain, each with
//! `shardgate-bench load` saturating the gateway (closed loop: every connection sends its next
//! request as soon as the last one is answered), on both drivers.
//!
//! Two loads run at once: 64 keep-alive connections, and 64 with `Connection: close` on every
//! request (a new connection each time). Counts, not timings: a request that failed once its
//! connection was open (a reset, a cut answer, a timeout, an error status) fails the test. A
//! connect refused once a lone instance has stopped listening is not such a request.

use std::sync::Mutex;
use std::time::Duration;

use shardgate_tests::{
    free_port, migrate_req_on, sleep, BenchUpstream, Client, ConfigBuilder, Driver, Gateway, Load,
    LoadCounts, DRIVERS,
};

const CHAT: &str = r#"{"model":"gpt-test","messages":[{"role":"user","content":"Hello World!"}]}"#;
const STREAM: &str =
    r#"{"model":"gpt-test","stream":true,"messages":[{"role":"user","content":"Hello World!"}]}"#;
/// Connections of each load.
const CONNECTIONS: &str = "64";
/// Each load's run; the change comes [`CHANGE_AFTER`] into it.
const LOAD_DURATION: &str = "5s";
const CHANGE_AFTER: Duration = Duration::from_millis(1500);
/// A request not answered this long after it was sent counts as failed (`timeout`).
const REQUEST_TIMEOUT_MS: &str = "3000";
const DRAIN_TIMEOUT_MS: u64 = 10_000;

/// One scenario at a time: each saturates both cores on its own.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The gateway's config on `port`, 2 shards.
fn config_on(port: u16, up: &BenchUpstream) -> String {
    let cfg = ConfigBuilder::new(up.addr())
        .cores(2)
        .server(&format!("drain_timeout_ms = {DRAIN_TIMEOUT_MS}"))
        .build()
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    assert!(cfg.contains(&format!(":{port}\"")), "{cfg}");
    cfg
}

/// The two loads (keep-alive, and a new connection per request) against `port`.
fn start_loads(port: u16, body: &str, extra: &[&str]) -> [Load; 2] {
    let url = format!("http://127.0.0.1:{port}/v1/chat/completions");
    let args = |close: bool| {
        let mut a = vec![
            "-c",
            CONNECTIONS,
            "-t",
            "1",
            "-d",
            LOAD_DURATION,
            "--timeout-ms",
            REQUEST_TIMEOUT_MS,
            "--body",
            body,
            "-H",
            "Content-Type: application/json",
        ];
        if close {
            a.extend(["-H", "Connection: close"]);
        }
        a.extend(extra);
        a
    };
    [
        Load::start(&url, &args(false)),
        Load::start(&url, &args(true)),
    ]
}

#[track_caller]
fn assert_none_failed(what: &str, counts: &LoadCounts, min_requests: u64) {
    eprintln!("{what}: {counts:?}");
    assert_eq!(counts.failed(), 0, "{what}: requests failed: {counts:?}");
    assert!(
        counts.requests >= min_requests,
        "{what}: too little load to mean anything: {counts:?}"
    );
}

fn upgrade_under_load(driver: Driver) {
    let up = BenchUpstream::start(&[]);
    let port = free_port().port();
    let cfg = config_on(port, &up);
    let mut old = Gateway::start_on(&cfg, driver);
    let [kept, fresh] = start_loads(port, CHAT, &[]);
    sleep(CHANGE_AFTER);
    // The new version starts on the same port (SO_REUSEPORT), then the old one drains.
    let new = Gateway::start_on(&cfg, driver);
    assert_eq!(new.addr(), old.addr());
    sleep(Duration::from_millis(500));
    old.sigterm();
    let status = old.wait_exit(Duration::from_millis(DRAIN_TIMEOUT_MS + 5000));
    let (kept, fresh) = (kept.finish(), fresh.finish());
    assert!(
        status.is_some_and(|s| s.success()),
        "{driver:?}: old instance's exit: {status:?}"
    );
    let what = |mode: &str| format!("{driver:?}, upgrade, {mode}");
    assert_none_failed(&what("keep-alive"), &kept, 1000);
    assert_none_failed(&what("connection per request"), &fresh, 500);
    // Another instance listened throughout: no connect was refused either.
    assert_eq!(
        kept.errors.connect + fresh.errors.connect,
        0,
        "{driver:?}: connects refused"
    );
    // The new instance serves on.
    let mut c = Client::connect(new.addr());
    assert_eq!(c.post_json("/v1/chat/completions", CHAT).status, 200);
}

#[test]
fn an_upgrade_under_saturating_load_fails_no_request_on_both_drivers() {
    let _one = serial();
    if let Err(why) = migrate_req_on() {
        // Without tcp_migrate_req the kernel resets the old listeners' queues: the engine warns
        // at start, and docs/operations.md says to set it. Said loudly, not silently skipped.
        eprintln!("NOT RUN: zero-loss upgrades need net.ipv4.tcp_migrate_req=1: {why}");
        return;
    }
    for driver in DRIVERS {
        upgrade_under_load(driver);
    }
}

#[test]
fn a_lone_drain_under_saturating_load_fails_no_request_it_accepted_on_both_drivers() {
    let _one = serial();
    for driver in DRIVERS {
        let up = BenchUpstream::start(&[]);
        let port = free_port().port();
        let mut gw = Gateway::start_on(&config_on(port, &up), driver);
        let [kept, fresh] = start_loads(port, CHAT, &[]);
        sleep(CHANGE_AFTER);
        gw.sigterm();
        let status = gw.wait_exit(Duration::from_millis(DRAIN_TIMEOUT_MS + 5000));
        let (kept, fresh) = (kept.finish(), fresh.finish());
        assert!(
            status.is_some_and(|s| s.success()),
            "{driver:?}: exit after the drain: {status:?}"
        );
        // Once the listeners close, new connections are refused (`connect`): those requests
        // were never taken. Every one on a connection the kernel completed was answered.
        assert_none_failed(&format!("{driver:?}, drain, keep-alive"), &kept, 500);
        assert_none_failed(
            &format!("{driver:?}, drain, connection per request"),
            &fresh,
            200,
        );
        assert!(
            kept.errors.connect + fresh.errors.connect > 0,
            "{driver:?}: the load went on after the drain and met a closed port"
        );
    }
}

#[test]
fn two_hundred_streams_in_flight_finish_across_a_drain_on_both_drivers() {
    let _one = serial();
    const STREAMS: u64 = 200;
    for driver in DRIVERS {
        // Each stream lasts 2 s (20 chunks, 100 ms apart); the drain begins 1 s in, with every
        // connection's first stream in flight.
        let up = BenchUpstream::start(&["--chunks", "20", "--chunk-interval-ms", "100"]);
        let port = free_port().port();
        let mut gw = Gateway::start_on(&config_on(port, &up), driver);
        let load = Load::start(
            &format!("http://127.0.0.1:{port}/v1/chat/completions"),
            &[
                "-c",
                "200",
                "-t",
                "1",
                "-d",
                "4s",
                "--timeout-ms",
                "5000",
                "--stream",
                "--body",
                STREAM,
                "-H",
                "Content-Type: application/json",
            ],
        );
        sleep(Duration::from_millis(1000));
        gw.sigterm();
        let status = gw.wait_exit(Duration::from_millis(DRAIN_TIMEOUT_MS + 5000));
        let counts = load.finish();
        assert!(
            status.is_some_and(|s| s.success()),
            "{driver:?}: exit after the drain: {status:?}"
        );
        assert_none_failed(
            &format!("{driver:?}, streams across a drain"),
            &counts,
            STREAMS,
        );
        // Every stream ended with its last chunk and `data: [DONE]`.
        assert!(
            counts.streams >= STREAMS,
            "{driver:?}: streams checked whole: {counts:?}"
        );
    }
}
