//! SIGTERM / SIGINT: stop accepting, finish what is in flight, exit 0.

use std::time::{Duration, Instant};

use shardgate_tests::{
    check_error, hang, sleep, write_response, Action, Client, ConfigBuilder, Gateway, MockUpstream,
};

const DRAIN_MS: u64 = 3000;

/// Accepts "refused", "closed without an answer" or "503 shutting_down"; anything else fails.
#[track_caller]
fn refused_or_503(what: &str, c: Option<Client>) {
    let Some(mut c) = c else {
        eprintln!("{what}: refused");
        return;
    };
    match c.try_read_response() {
        Err(e) => eprintln!("{what}: closed without an answer ({e})"),
        Ok(r) => {
            eprintln!("{what}: answered {}", r.status);
            if let Err(e) = check_error(&r, 503, "shutting_down") {
                panic!("{what} while draining must be refused or get 503: {e}");
            }
        }
    }
}

#[test]
fn sigterm_drains_in_flight_request() {
    let up = MockUpstream::start(|req, s| {
        if req.path == "/slow" {
            sleep(Duration::from_millis(700));
        }
        write_response(s, 200, "application/json", b"{\"done\":true}")?;
        Ok(Action::KeepAlive)
    });
    let gw_cfg = ConfigBuilder::new(up.addr())
        .server(&format!("drain_timeout_ms = {DRAIN_MS}"))
        .build();
    let mut gw = Gateway::start(&gw_cfg);

    // A keep-alive connection that is idle when the signal comes.
    let mut idle = Client::connect(gw.addr());
    assert_eq!(idle.get("/fast").status, 200);

    // A request in flight when the signal comes.
    let mut slow = Client::connect(gw.addr());
    slow.send("GET /slow HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(
        up.wait_requests(2, Duration::from_secs(5)),
        "the slow request did not reach the upstream"
    );

    let t = Instant::now();
    gw.sigterm();
    // Signals are asynchronous; give the shard a moment to see it (it polls every 50 ms).
    sleep(Duration::from_millis(200));

    // A new connection is refused, closed unanswered, or answered 503.
    let fresh = Client::try_connect(gw.addr()).ok().map(|mut c| {
        let _ = c.try_send("GET /new HTTP/1.1\r\nHost: test\r\n\r\n");
        c.set_timeout(Duration::from_secs(5));
        c
    });
    refused_or_503("a new connection", fresh);

    // A new request on the idle keep-alive connection: 503 or closed.
    let _ = idle.try_send("GET /on-idle HTTP/1.1\r\nHost: test\r\n\r\n");
    idle.set_timeout(Duration::from_secs(5));
    refused_or_503("a request on an idle keep-alive connection", Some(idle));

    // The in-flight request completes.
    let r = slow.read_response();
    assert_eq!(
        r.status,
        200,
        "in-flight request during drain: {}",
        r.summary()
    );
    assert_eq!(r.body_str(), "{\"done\":true}");

    let status = gw
        .wait_exit(Duration::from_millis(DRAIN_MS + 2000))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t.elapsed()));
    assert!(status.success(), "exit status after drain: {status}");
    assert!(
        t.elapsed() < Duration::from_millis(DRAIN_MS),
        "with nothing left in flight it should exit well before drain_timeout_ms: {:?}",
        t.elapsed()
    );
    let paths: Vec<String> = up.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        vec!["/fast", "/slow"],
        "nothing new was forwarded while draining"
    );
}

/// A request that outlasts drain_timeout_ms does not hold the exit: exit 0 soon after it.
#[test]
fn drain_timeout_bounds_exit() {
    let up = MockUpstream::start(hang());
    let mut gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .server("drain_timeout_ms = 500")
            .build(),
    );
    let mut c = Client::connect(gw.addr());
    c.send("GET /forever HTTP/1.1\r\nHost: test\r\n\r\n");
    assert!(up.wait_requests(1, Duration::from_secs(5)));
    let t = Instant::now();
    gw.sigterm();
    let status = gw
        .wait_exit(Duration::from_millis(500 + 2500))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t.elapsed()));
    assert!(status.success(), "exit status: {status}");
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "exited before the drain timeout with a request in flight: {:?}",
        t.elapsed()
    );
}

/// SIGINT with nothing in flight: exit 0 promptly.
#[test]
fn sigint_idle_exits_zero() {
    let up = MockUpstream::start(hang());
    let mut gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let t = Instant::now();
    gw.sigint();
    let status = gw
        .wait_exit(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("still running {:?} after SIGINT", t.elapsed()));
    assert!(status.success(), "exit status: {status}");
}
