//! The admin listener's `/metrics` and health endpoints, and the access log, against real
//! traffic: counters equal the requests sent, one log line per request, never a key or query.
#![allow(
    clippy::cast_possible_truncation,
    reason = "counter samples are whole numbers"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use shardgate_tests::{
    wait_until, write_response, Action, Client, ConfigBuilder, Gateway, MockUpstream,
};

/// `GET path` on the admin listener; (status, body).
fn admin_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: admin\r\n\r\n").expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |b| b.1).to_owned();
    (status, body)
}

/// The value of the sample `name{labels}` in Prometheus text (0 when absent).
fn sample(metrics: &str, name_and_labels: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Sum of every sample of a family (all label sets).
fn family_sum(metrics: &str, family: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// An upstream answering 200, or 503 for paths under /fail.
fn upstream() -> MockUpstream {
    MockUpstream::start(|req, stream| {
        let status = if req.path.starts_with("/fail") {
            503
        } else {
            200
        };
        write_response(stream, status, "application/json", b"{\"ok\":true}")?;
        Ok(Action::KeepAlive)
    })
}

fn get(c: &mut Client, path: &str, extra: &str) -> u16 {
    c.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n"));
    c.read_response().status
}

#[test]
fn metrics_count_every_request_by_upstream_route_and_class() {
    let up = upstream();
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).cores(2).build());
    let admin = gw.admin_addr();
    let (ok, fail, bad) = (23, 7, 3);
    for i in 0..ok {
        // New connections spread over both shards.
        let mut c = Client::connect(gw.addr());
        assert_eq!(get(&mut c, &format!("/v1/x{i}"), ""), 200);
    }
    let mut c = Client::connect(gw.addr());
    for _ in 0..fail {
        assert_eq!(get(&mut c, "/fail", ""), 503);
    }
    for _ in 0..bad {
        let mut c = Client::connect(gw.addr());
        c.send("GET /x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(c.read_response().status, 400);
    }
    let total = ok + fail + bad;
    // Counters are written when a request ends; the last ones may land just after the answer.
    let mut m = String::new();
    let settled = wait_until(Duration::from_secs(5), || {
        m = admin_get(admin, "/metrics").1;
        family_sum(&m, "shardgate_requests_total") == total
    });
    assert!(settled, "requests_total != {total}:\n{m}");
    assert_eq!(
        sample(&m, r#"shardgate_requests_total{upstream="up",class="2xx"}"#),
        ok
    );
    assert_eq!(
        sample(&m, r#"shardgate_requests_total{upstream="up",class="5xx"}"#),
        fail
    );
    // Refused before routing: counted under upstream "-".
    assert_eq!(
        sample(&m, r#"shardgate_requests_total{upstream="-",class="4xx"}"#),
        bad
    );
    assert_eq!(
        sample(
            &m,
            r#"shardgate_route_requests_total{route="/",class="2xx"}"#
        ),
        ok
    );
    assert_eq!(
        sample(
            &m,
            r#"shardgate_request_duration_seconds_count{upstream="up"}"#
        ),
        ok + fail
    );
    assert_eq!(family_sum(&m, "shardgate_shard_requests_total"), total);
    assert_eq!(family_sum(&m, "shardgate_config_version"), 2, "{m}");
    assert!(sample(&m, r#"shardgate_response_bytes_total{upstream="up"}"#) > 0);
    // Scrapes themselves are not requests of the data plane.
    let again = admin_get(admin, "/metrics").1;
    assert_eq!(family_sum(&again, "shardgate_requests_total"), total);
}

#[test]
fn admin_health_endpoints_answer() {
    let up = upstream();
    let gw = Gateway::start(&ConfigBuilder::new(up.addr()).build());
    let admin = gw.admin_addr();
    assert_eq!(admin_get(admin, "/health/liveness").0, 200);
    let (status, body) = admin_get(admin, "/health/readiness");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("ready"), "{body}");
    let (status, body) = admin_get(admin, "/nope");
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("\"error\""), "{body}");
}

#[test]
fn admin_off_starts_no_listener() {
    let up = upstream();
    let cfg = ConfigBuilder::new(up.addr()).build();
    let gw = Gateway::start_with_args(&cfg, &[], &["--admin-listen", "off"]);
    assert!(!gw.stdout().contains("admin listening"), "{}", gw.stdout());
    let mut c = Client::connect(gw.addr());
    assert_eq!(get(&mut c, "/x", ""), 200);
}

fn log_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// A fresh directory `{name}-{pid}` under the temp dir, the access log's path in it (no file
/// yet), and a 2-shard config in front of `up` that writes it.
fn access_log_config(
    up: &MockUpstream,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let _ = std::fs::remove_file(&log);
    let cfg = ConfigBuilder::new(up.addr())
        .cores(2)
        .server(&format!("access_log = {:?}", log.display().to_string()))
        .build();
    (dir, log, cfg)
}

#[test]
fn access_log_has_one_line_per_request_and_no_secrets_and_reopens_on_sighup() {
    let up = upstream();
    let (dir, log, cfg) = access_log_config(&up, "sg-access");
    let gw = Gateway::start(&cfg);
    let n = 40;
    for i in 0..n {
        let mut c = Client::connect(gw.addr());
        let path = if i % 10 == 9 {
            "/fail/x"
        } else {
            "/v1/chat/completions"
        };
        let status = get(
            &mut c,
            &format!("{path}?key=qs-secret-{i}"),
            "Authorization: Bearer sk-very-secret\r\nx-api-key: sk-other-secret\r\n",
        );
        assert!(status == 200 || status == 503);
    }
    assert!(
        wait_until(Duration::from_secs(5), || log_lines(&log).len() == n),
        "{} lines, want {n}",
        log_lines(&log).len()
    );
    let text = std::fs::read_to_string(&log).expect("log");
    for secret in ["sk-very-secret", "sk-other-secret", "qs-secret", "Bearer"] {
        assert!(
            !text.contains(secret),
            "{secret} in the access log:\n{text}"
        );
    }
    let lines = log_lines(&log);
    let fails = lines.iter().filter(|l| l["status"] == 503).count();
    assert_eq!(fails, n / 10);
    for l in &lines {
        assert_eq!(l["method"], "GET");
        assert!(l["path"].as_str().is_some_and(|p| !p.contains('?')), "{l}");
        assert_eq!(l["upstream"], up.addr().to_string());
        assert!(l["bytes_out"].as_u64().is_some_and(|b| b > 0), "{l}");
        assert!(l["bytes_in"].as_u64().is_some_and(|b| b > 0), "{l}");
        assert!(l["duration_ms"].as_f64().is_some(), "{l}");
        assert!(l["time"].as_str().is_some_and(|t| t.ends_with('Z')), "{l}");
        assert!(l["shard"].as_u64().is_some_and(|s| s < 2), "{l}");
    }
    // logrotate: move the file, SIGHUP, and later lines go to a new file at the same path.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rename");
    gw.signal("-HUP");
    // The writer reopens when it next wakes; lines before that still land in the old file.
    let mut sent = 0;
    let reopened = wait_until(Duration::from_secs(5), || {
        let mut c = Client::connect(gw.addr());
        assert_eq!(get(&mut c, "/after", ""), 200);
        sent += 1;
        !log_lines(&log).is_empty()
    });
    assert!(reopened, "no new file after SIGHUP");
    assert!(
        wait_until(Duration::from_secs(5), || {
            log_lines(&log).len() + log_lines(&rotated).len() == n + sent
        }),
        "lines lost across the reopen"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The access log under load from two shards at once: after a graceful stop (SIGTERM), the
/// file holds exactly one whole JSON line per request (none lost, none torn or interleaved
/// with another shard's), and nothing was counted as dropped. Lines are written only at 64 KiB or on the shard's timer, so most of
/// them reach the file through the stop's final write.
#[test]
fn access_log_under_load_from_two_shards_loses_and_tears_no_line() {
    let up = upstream();
    let (dir, log, cfg) = access_log_config(&up, "sg-access-load");
    let mut gw = Gateway::start(&cfg);
    let (threads, conns, per_conn) = (4, 4, 150);
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let addr = gw.addr();
            std::thread::spawn(move || {
                for k in 0..conns {
                    // New connections spread over both shards; paths of different lengths,
                    // so a torn line would not parse.
                    let mut c = Client::connect(addr);
                    for i in 0..per_conn {
                        let pad = "p".repeat((t * 7 + k * 3 + i) % 90);
                        assert_eq!(get(&mut c, &format!("/v1/t{t}/c{k}/r{i}/{pad}"), ""), 200);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("client thread");
    }
    let metrics = admin_get(gw.admin_addr(), "/metrics").1;
    assert_eq!(
        family_sum(&metrics, "shardgate_access_log_dropped_total"),
        0
    );
    gw.signal("-TERM");
    assert!(
        gw.wait_exit(Duration::from_secs(10))
            .is_some_and(|s| s.success()),
        "the engine did not drain and exit"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.ends_with('\n'), "the last line is cut");
    let mut seen = std::collections::HashSet::new();
    let mut shards = std::collections::HashSet::new();
    for l in text.lines() {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line ({e}): {l}"));
        let path = v["path"].as_str().expect("path").to_owned();
        assert!(seen.insert(path.clone()), "logged twice: {path}");
        shards.insert(v["shard"].as_u64().expect("shard"));
        assert_eq!(v["status"], 200, "{l}");
    }
    assert_eq!(seen.len(), threads * conns * per_conn, "lines lost");
    assert_eq!(
        shards.len(),
        2,
        "one shard took every connection: {shards:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
