//! Keep-alive on the client side and pooling on the upstream side.

use shardgate_tests::{echo, per_driver, Client, ConfigBuilder, Driver, Gateway, MockUpstream};

per_driver!(
    keepalive_requests_share_one_upstream_connection,
    pool_is_shared_across_client_connections
);

/// Five sequential requests on one client connection are all answered, and the upstream sees
/// them all on one pooled connection.
fn keepalive_requests_share_one_upstream_connection(driver: Driver) {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    let mut c = Client::connect(gw.addr());
    for i in 0..5 {
        let path = format!("/ka/{i}");
        let r = c.get(&path);
        assert_eq!(r.status, 200, "request {i}: {}", r.summary());
        assert_eq!(r.json()["path"], path.as_str(), "{}", r.summary());
        assert!(
            !r.connection_has("close"),
            "keep-alive response must not close: {}",
            r.summary()
        );
    }
    let reqs = up.requests();
    assert_eq!(reqs.len(), 5);
    assert_eq!(
        up.connections_accepted(),
        1,
        "5 sequential requests must reuse one pooled upstream connection"
    );
    assert!(reqs.iter().all(|r| r.conn == 0));
}

/// A second client connection, opened after the first finished, reuses the same pooled upstream
/// connection.
fn pool_is_shared_across_client_connections(driver: Driver) {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start_on(&ConfigBuilder::new(up.addr()).build(), driver);
    for i in 0..3 {
        let mut c = Client::connect(gw.addr());
        let r = c.get(&format!("/client/{i}"));
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    assert_eq!(up.requests().len(), 3);
    assert_eq!(
        up.connections_accepted(),
        1,
        "sequential requests from different client connections must share the pool"
    );
}
