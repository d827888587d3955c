//! The `shardgate` binary runs with mimalloc's options set where the environment does not set
//! them (`launch::ALLOCATOR_ENV`: `MIMALLOC_PURGE_DELAY=0`, so a burst's freed pages go back to
//! the system at once); an operator's own value is kept. mimalloc reads them only as the
//! process loads, so the engine runs itself again with them: same pid, same arguments.

use std::time::Duration;

use shardgate_tests::{Client, Gateway};

const CONFIG: &str = "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n\n\
    [[upstreams]]\nname = \"demo\"\nprovider = \"mock\"\n\n\
    [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\n";

/// The engine's environment, as the kernel shows it.
fn environ(pid: u32) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("/proc/PID/environ");
    raw.split(|b| *b == 0)
        .filter(|v| !v.is_empty())
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

fn purge_delay(pid: u32) -> Vec<String> {
    environ(pid)
        .into_iter()
        .filter(|v| v.starts_with("MIMALLOC_PURGE_DELAY="))
        .collect()
}

#[test]
fn the_engine_runs_with_the_allocators_options_unless_they_are_set() {
    let gw = Gateway::start(CONFIG);
    assert_eq!(purge_delay(gw.pid()), ["MIMALLOC_PURGE_DELAY=0"]);
    // It serves as before (the arguments survived the second start).
    let mut c = Client::connect(gw.addr());
    let r = c.get("/health/readiness");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert!(
        gw.stderr()
            .lines()
            .all(|l| !l.contains("could not run again")),
        "{}",
        gw.stderr()
    );

    // An operator's own value is kept.
    let gw = Gateway::start_with_env(CONFIG, &[("MIMALLOC_PURGE_DELAY", "25")]);
    assert_eq!(purge_delay(gw.pid()), ["MIMALLOC_PURGE_DELAY=25"]);
    let mut c = Client::connect(gw.addr());
    c.set_timeout(Duration::from_secs(5));
    assert_eq!(c.get("/health/readiness").status, 200);
}
