//! Built-in health endpoints and the driver override.

use std::time::Duration;

use shardgate_tests::{free_port, wait_until, Client, ConfigBuilder, Driver, Gateway, DRIVERS};

/// Served before routing: works with the only upstream down.
#[test]
fn liveness_and_readiness() {
    let gw = Gateway::start(&ConfigBuilder::new(free_port()).build());
    let mut c = Client::connect(gw.addr());
    for path in ["/health/liveness", "/health/readiness"] {
        let r = c.get(path);
        assert_eq!(r.status, 200, "{path}: {}", r.summary());
        assert_eq!(r.json()["status"], "ok", "{path}: {}", r.summary());
    }
}

/// `SHARDGATE_DRIVER` picks the driver the shards log, so the per-driver tests really run on both.
#[test]
fn driver_env_override_is_used() {
    for d in DRIVERS {
        if !d.enabled() {
            continue;
        }
        let gw = Gateway::start_on(&ConfigBuilder::new(free_port()).build(), d);
        let word = match d {
            Driver::Epoll => "epoll",
            Driver::IoUring => "uring",
        };
        assert!(
            wait_until(Duration::from_secs(3), || gw
                .stderr()
                .to_ascii_lowercase()
                .contains(word)),
            "SHARDGATE_DRIVER={} but the shard log does not mention {word}: {:?}",
            d.env_value(),
            gw.stderr()
        );
        let mut c = Client::connect(gw.addr());
        assert_eq!(c.get("/health/liveness").status, 200);
    }
}

/// Two shards share one port (SO_REUSEPORT): the start-up line says so and every connection is
/// served, whichever shard the kernel hands it to.
#[test]
fn two_shards_share_the_port() {
    let up = shardgate_tests::MockUpstream::start(shardgate_tests::echo());
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).cores(2).build());
    assert_eq!(gw.shards(), 2);
    for i in 0..10 {
        let mut c = Client::connect(gw.addr());
        let r = c.get(&format!("/shard/{i}"));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(up.requests().len(), 10);
}
