//! A fleet's Redis over TLS (`[fleet] redis = "rediss://…"`, `redis_ca_file`, decision 0013):
//! a real `redis-server` with TLS only (no plain port), its certificate issued by a CA made in
//! the test. Two engine instances share a limit through it and `shardgate-ctl fleet status`
//! reads it; without the CA, with the wrong name, with a plain Redis on the TLS port and with
//! `redis://` on the TLS port, `shardgate --check` fails and says it is TLS, and an engine
//! started anyway says so and enforces its share.
//!
//! Needs `redis-server` built with TLS (Debian's `redis-server` 7.0 is; `.ci/run` installs it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use shardgate_tests::{
    chat_with_key, ctl_ok, free_port, run_shardgate, sha256_hex, sleep, wait_until, Gateway, Redis,
    TempDir, TestCa, MOCK_ROUTE,
};

const KEY: &str = "sk-fleet-tls-test-0123456789";
/// How long `shardgate --check` may take.
const CHECK_WAIT: Duration = Duration::from_secs(10);

/// A `redis-server` of its own (killed when dropped) on `port` with TLS only (`--port 0`):
/// the certificate and key given, clients not asked for certificates.
fn start_tls(port: u16, cert: &Path, key: &Path, ca: &Path) -> Redis {
    let (port_s, cert, key, ca) = (
        port.to_string(),
        cert.display().to_string(),
        key.display().to_string(),
        ca.display().to_string(),
    );
    Redis::spawn(
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_s,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ],
    )
}

/// A TLS Redis and the files it was started with: its certificate is for 127.0.0.1 only.
struct TlsRedis {
    redis: Redis,
    /// The CA that issued the server's certificate, PEM.
    ca_file: PathBuf,
    _dir: TempDir,
}

impl TlsRedis {
    fn start() -> TlsRedis {
        let dir = TempDir::new("fleet-tls");
        let ca = TestCa::new("fleet redis");
        let ca_file = ca.write_cert(dir.path(), "ca");
        let (cert, key) = ca.leaf(&["127.0.0.1"]).write(dir.path(), "redis");
        let redis = start_tls(free_port().port(), &cert, &key, &ca_file);
        TlsRedis {
            redis,
            ca_file,
            _dir: dir,
        }
    }
}

/// A config on 2 shards in a fleet through `redis` (the `[fleet]` lines after `redis`, e.g.
/// `redis_ca_file`), the mock model, and a tenant limited to 600 requests a minute.
fn config(redis: &str, fleet_lines: &str) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cores = 2
auth = "keys"

[fleet]
redis = "{redis}"
{fleet_lines}
{MOCK_ROUTE}
[[tenants]]
name = "team-t"
keys = ["sha256:{}"]
rpm = 600
"#,
        sha256_hex(KEY)
    )
}

/// `redis_ca_file = "PATH"`.
fn ca_line(path: &Path) -> String {
    format!("redis_ca_file = \"{}\"", path.display())
}

/// `shardgate --check` on `cfg`, which must fail (exit 2): its stderr.
fn check_fails(cfg: &str) -> String {
    let out = run_shardgate(&["--check", "--config", "{config}"], Some(cfg), CHECK_WAIT);
    assert_eq!(out.status.and_then(|s| s.code()), Some(2), "{}", out.stderr);
    out.stderr
}

#[test]
fn two_instances_share_a_limit_through_a_tls_redis_trusted_by_its_ca_file() {
    let tls = TlsRedis::start();
    let url = format!("rediss://127.0.0.1:{}/0", tls.redis.port);
    let cfg = config(&url, &ca_line(&tls.ca_file));
    let ok = run_shardgate(&["--check", "--config", "{config}"], Some(&cfg), CHECK_WAIT);
    assert_eq!(ok.status.and_then(|s| s.code()), Some(0), "{}", ok.stderr);
    let a = Gateway::start(&cfg);
    let b = Gateway::start(&cfg);
    // The server has no plain port: the agents reach it over TLS, and see each other there.
    for gw in [&a, &b] {
        assert!(
            wait_until(Duration::from_secs(5), || {
                let m = gw.metrics();
                m.contains("shardgate_fleet_redis_up 1")
                    && m.contains("shardgate_fleet_instances 2")
            }),
            "{}\n{}",
            gw.metrics(),
            gw.stderr()
        );
    }
    // A trickle through both (a first request may wait for the agent's first lease: 429).
    let got: Vec<u16> = (0..40)
        .map(|i| {
            let gw = if i % 2 == 0 { &a } else { &b };
            sleep(Duration::from_millis(30));
            chat_with_key(gw.addr(), KEY, "demo").0
        })
        .collect();
    assert!(got.iter().all(|s| *s == 200 || *s == 429), "{got:?}");
    assert!(got.iter().filter(|s| **s == 200).count() >= 30, "{got:?}");
    // The limit's use is traded through Redis: ctl (its own TLS connection) lists both
    // instances as Redis knows them, and the tenant's use.
    let out = ctl_ok(&a, &["fleet", "status"]);
    assert!(out.contains("reachable from the engine"), "{out}");
    assert!(!out.contains("cannot be read from here"), "{out}");
    assert!(out.contains(&format!("/{}/", a.instance())), "{out}");
    assert!(out.contains(&format!("/{}/", b.instance())), "{out}");
    assert!(
        wait_until(Duration::from_secs(5), || {
            ctl_ok(&a, &["fleet", "status"])
                .lines()
                .find(|l| l.starts_with("team-t") && l.contains("rpm"))
                .and_then(|l| l.split_whitespace().last()?.parse::<u64>().ok())
                .is_some_and(|used| used > 0)
        }),
        "{}",
        ctl_ok(&a, &["fleet", "status"])
    );
}

#[test]
fn without_the_ca_file_or_for_another_name_the_certificate_is_refused_and_said_to_be() {
    let tls = TlsRedis::start();
    let port = tls.redis.port;
    let url = format!("rediss://127.0.0.1:{port}/0");
    // The system's roots do not hold the test CA.
    let e = check_fails(&config(&url, ""));
    assert!(
        e.contains(&format!("fleet.redis {url}: TLS handshake failed")),
        "{e}"
    );
    assert!(e.contains("certificate"), "{e}");
    assert!(e.contains("redis_ca_file"), "{e}");
    // Another CA's file.
    let dir = TempDir::new("fleet-tls-other");
    let other = TestCa::new("other").write_cert(dir.path(), "other-ca");
    let e = check_fails(&config(&url, &ca_line(&other)));
    assert!(e.contains("TLS handshake failed"), "{e}");
    assert!(
        e.contains(&format!("not issued by a CA in {}", other.display())),
        "{e}"
    );
    // The right CA, but the URL names the server by a name its certificate is not for: the
    // URL's host is what is verified.
    let by_name = format!("rediss://localhost:{port}/0");
    let e = check_fails(&config(&by_name, &ca_line(&tls.ca_file)));
    assert!(
        e.contains(&format!("fleet.redis {by_name}: TLS handshake failed")),
        "{e}"
    );
    assert!(e.contains("not valid for name"), "{e}");
    // An engine started so goes on without Redis (each limit at its share) and says why.
    let gw = Gateway::start(&config(&url, ""));
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .stderr()
            .contains("TLS handshake failed")),
        "{}",
        gw.stderr()
    );
    assert!(
        gw.metrics().contains("shardgate_fleet_redis_up 0"),
        "{}",
        gw.metrics()
    );
    assert!(wait_until(Duration::from_secs(5), || chat_with_key(
        gw.addr(),
        KEY,
        "demo"
    )
    .0 == 200));
}

#[test]
fn tls_to_a_plain_redis_and_plain_to_a_tls_redis_are_said_to_be_tls() {
    // rediss:// to a Redis without TLS.
    let tls = TlsRedis::start();
    let plain = Redis::start(free_port().port());
    let url = format!("rediss://127.0.0.1:{}/0", plain.port);
    let e = check_fails(&config(&url, &ca_line(&tls.ca_file)));
    assert!(
        e.contains(&format!("fleet.redis {url}: TLS handshake failed")),
        "{e}"
    );
    // Whether the plain server answered the TLS hello with an error, closed, or waited for the
    // rest of a line, a plain PING tells it.
    assert!(
        e.contains(&format!(
            "(the server does not speak TLS: it answered a plain PING; use redis://127.0.0.1:{}/0)",
            plain.port
        )),
        "{e}"
    );
    // redis:// to the TLS port.
    let url = format!("redis://127.0.0.1:{}/0", tls.redis.port);
    let e = check_fails(&config(&url, ""));
    assert!(e.contains(&format!("fleet.redis {url}:")), "{e}");
    assert!(
        e.contains(&format!(
            "the server speaks TLS (its TLS handshake answered ours): use rediss://127.0.0.1:{}/0",
            tls.redis.port
        )),
        "{e}"
    );
    // A CA file only goes with rediss://.
    let e = check_fails(&config(&url, &ca_line(&tls.ca_file)));
    assert!(
        e.contains("fleet.redis_ca_file: only a rediss:// (TLS) Redis uses a CA file"),
        "{e}"
    );
}
