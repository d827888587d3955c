//! Tenants and keys: 401 without a known key, the key removed before forwarding and the
//! upstream's own credential added, and keys never in the access log, `/metrics` or errors.

use std::time::Duration;

use shardgate_tests::{
    assert_error, echo, sha256_hex, wait_until, Client, ConfigBuilder, Gateway, MockUpstream,
};

/// SHA-256 of "sk-team-a-secret".
const KEY_A: &str = "sk-team-a-secret";
const KEY_B: &str = "sk-team-b-secret";

fn tenants(cfg: ConfigBuilder) -> ConfigBuilder {
    // One tenant with its key stored as a hash, one with a plain key (accepted with a warning).
    cfg.tenant(&format!(
        "name = \"team-a\"\nkeys = [\"sha256:{}\"]",
        sha256_hex(KEY_A)
    ))
    .tenant(&format!("name = \"team-b\"\nkeys = [\"{KEY_B}\"]"))
}

fn get(c: &mut Client, headers: &str) -> shardgate_tests::Response {
    c.send(format!(
        "GET /v1/models HTTP/1.1\r\nHost: t\r\n{headers}\r\n"
    ));
    c.read_response()
}

#[test]
fn missing_or_unknown_keys_get_401_and_known_keys_pass() {
    let up = MockUpstream::start(echo());
    let gw = Gateway::start(&tenants(ConfigBuilder::new(up.addr())).build());
    assert!(
        gw.stderr().contains("plain key"),
        "no warning for the plain key:\n{}",
        gw.stderr()
    );
    assert!(
        !gw.stderr().contains(KEY_B),
        "the plain key was printed:\n{}",
        gw.stderr()
    );
    for headers in [
        "",
        "Authorization: Bearer sk-nobody\r\n",
        "Authorization: Basic c2stdGVhbS1hLXNlY3JldA==\r\n",
        "x-api-key: sk-team-a-secreT\r\n",
        "Authorization: Bearer \r\n",
    ] {
        let mut c = Client::connect(gw.addr());
        let r = get(&mut c, headers);
        assert_error(&r, 401, "invalid_api_key");
        assert!(!r.body_str().contains("sk-"), "{}", r.summary());
    }
    assert_eq!(
        up.requests().len(),
        0,
        "an unauthenticated request reached the upstream"
    );
    let mut c = Client::connect(gw.addr());
    for headers in [
        format!("Authorization: Bearer {KEY_A}\r\n"),
        format!("authorization: bearer {KEY_B}\r\n"),
        format!("x-api-key: {KEY_A}\r\n"),
    ] {
        assert_eq!(get(&mut c, &headers).status, 200);
    }
    // Health checks need no key.
    c.send("GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
}

#[test]
fn the_tenant_key_never_reaches_the_upstream_and_its_credential_does() {
    let up = MockUpstream::start(echo());
    let cfg = tenants(ConfigBuilder::new(up.addr()))
        .upstream("api_key_env = \"SHARDGATE_TEST_UPSTREAM_KEY\"")
        .build();
    let gw = Gateway::start_with_env(&cfg, &[("SHARDGATE_TEST_UPSTREAM_KEY", "sk-upstream-own")]);
    let mut c = Client::connect(gw.addr());
    let r = get(
        &mut c,
        &format!("Authorization: Bearer {KEY_A}\r\nX-Api-Key: {KEY_B}\r\nX-Other: kept\r\n"),
    );
    assert_eq!(r.status, 200, "{}", r.summary());
    let seen = &up.requests()[0];
    let all: Vec<String> = seen
        .headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    let all = all.join("\n");
    assert!(
        !all.contains(KEY_A) && !all.contains(KEY_B),
        "a tenant key was forwarded:\n{all}"
    );
    assert_eq!(
        seen.headers_named("authorization"),
        vec!["Bearer sk-upstream-own"],
        "{all}"
    );
    assert!(seen.header("x-api-key").is_none(), "{all}");
    assert_eq!(seen.header("x-other"), Some("kept"));
}

#[test]
fn a_missing_upstream_credential_refuses_to_start() {
    let up = MockUpstream::start(echo());
    let cfg = tenants(ConfigBuilder::new(up.addr()))
        .upstream("api_key_env = \"SHARDGATE_TEST_SURELY_UNSET\"")
        .build();
    let err = Gateway::try_start_full(&cfg, &[], &[]).expect_err("started without its secret");
    assert!(err.contains("upstreams[0].api_key_env"), "{err}");
}

#[test]
fn auth_keys_without_tenants_refuses_to_start() {
    let up = MockUpstream::start(echo());
    let cfg = ConfigBuilder::new(up.addr())
        .server("auth = \"keys\"")
        .build();
    let err = Gateway::try_start_full(&cfg, &[], &[]).expect_err("started with no tenants");
    assert!(err.contains("no [[tenants]] entry"), "{err}");
}

#[test]
fn keys_never_appear_in_the_access_log_or_metrics() {
    let up = MockUpstream::start(echo());
    let dir = std::env::temp_dir().join(format!("sg-tenant-log-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("access.log");
    let cfg = tenants(ConfigBuilder::new(up.addr()))
        .server(&format!("access_log = {:?}", log.display().to_string()))
        .build();
    let gw = Gateway::start(&cfg);
    for key in [KEY_A, KEY_B, "sk-unknown-key"] {
        let mut c = Client::connect(gw.addr());
        let _ = get(&mut c, &format!("Authorization: Bearer {key}\r\n"));
    }
    let mut m = String::new();
    let counted = wait_until(Duration::from_secs(5), || {
        m = gw.metrics();
        m.contains(r#"shardgate_tenant_requests_total{tenant="team-a",class="2xx"} 1"#)
            && m.contains(r#"shardgate_tenant_requests_total{tenant="team-b",class="2xx"} 1"#)
    });
    assert!(counted, "tenant counters missing:\n{m}");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&log)
            .is_ok_and(|t| t.lines().count() == 3)),
        "access log lines"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    for secret in [
        KEY_A,
        KEY_B,
        "sk-unknown-key",
        "sk-team",
        &sha256_hex(KEY_A),
    ] {
        assert!(
            !text.contains(secret),
            "{secret} in the access log:\n{text}"
        );
        assert!(!m.contains(secret), "{secret} in /metrics");
        assert!(
            !gw.stdout().contains(secret) && !gw.stderr().contains(secret),
            "{secret} printed"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_embedded_default_serves_the_demo_key_only() {
    let text = shardgate_engine::config::EMBEDDED_DEFAULT
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("cores = \"auto\"", "cores = 1");
    let gw = Gateway::start(&text);
    assert!(
        wait_until(Duration::from_secs(5), || gw
            .stdout()
            .contains("key sk-demo")),
        "{}",
        gw.stdout()
    );
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}"#;
    for (key, status) in [("sk-demo", 200), ("sk-wrong", 401)] {
        let mut c = Client::connect(gw.addr());
        c.send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let r = c.read_response();
        assert_eq!(r.status, status);
        if status == 200 {
            // The built-in model's answers carry the tenant's rate headers too.
            assert_eq!(
                r.header("x-ratelimit-limit-requests"),
                Some("6000"),
                "{}",
                r.summary()
            );
            assert!(r.json()["choices"][0]["message"]["content"].is_string());
        }
    }
}

#[test]
fn a_tenant_lists_only_the_models_it_may_use() {
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n[[upstreams]]\nname = \"demo\"\nprovider = \"mock\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"demo\"\n\n\
         [[tenants]]\nname = \"all\"\nkeys = [\"sha256:{}\"]\n\n\
         [[tenants]]\nname = \"other\"\nkeys = [\"sha256:{}\"]\nmodels = [\"gpt-4o\"]\n",
        sha256_hex(KEY_A),
        sha256_hex(KEY_B)
    );
    let gw = Gateway::start(&cfg);
    let ids = |key: &str| {
        let mut c = Client::connect(gw.addr());
        let r = get(&mut c, &format!("Authorization: Bearer {key}\r\n"));
        assert_eq!(r.status, 200, "{}", r.summary());
        r.json()["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| m["id"].as_str().map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
    };
    assert_eq!(ids(KEY_A), vec!["demo".to_owned()]);
    assert!(
        ids(KEY_B).is_empty(),
        "a model the tenant may not use is listed"
    );
    // And it cannot call it.
    let body = r#"{"model":"demo","messages":[{"role":"user","content":"hi"}]}"#;
    let mut c = Client::connect(gw.addr());
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY_B}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_error(&c.read_response(), 403, "model_not_approved");
}
