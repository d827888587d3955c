//! Spend in dollars, end to end on 2 shards: the cost of each request from the upstream's usage
//! (cached and reasoning tokens priced apart) and the config's `[[prices]]`, equal to the cost
//! computed here by hand in the access log, `/metrics`, `shardgate-ctl spend` (counters and
//! access log, by key) and `GET /admin/v1/spend`; a model without a price counted as unpriced,
//! never $0; a USD budget that admits exactly what fits and cuts a stream at the budget.

use std::io::{self, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shardgate_tests::{
    admin_request, assert_error, content_events, ctl_ok, sha256_hex, wait_until, write_chunk,
    write_response, Action, Client, Gateway, MockUpstream, Request, TempDir,
};

const ADMIN_TOKEN: &str = "adm-spend-token-0123456789";
const KEY: &str = "sk-spend-team-key";
const BUDGET_KEY: &str = "sk-spend-budget-key";
const STREAM_KEY: &str = "sk-spend-stream-key";

/// The usage every JSON answer reports: 1,000 prompt tokens of which 400 cached, 300
/// completion tokens of which 100 reasoning.
const USAGE: &str = r#""usage":{"prompt_tokens":1000,"completion_tokens":300,"total_tokens":1300,"prompt_tokens_details":{"cached_tokens":400},"completion_tokens_details":{"reasoning_tokens":100}}"#;

/// At the prices below (USD per million: input 2.5, cached 1.25, output 10, reasoning 20), in
/// picodollars per token: 600 × 2.5 M + 400 × 1.25 M + 200 × 10 M + 100 × 20 M = 6 × 10^9 pUSD,
/// $0.006 a request.
const COST_NUSD: u64 =
    (600 * 2_500_000 + 400 * 1_250_000 + 200 * 10_000_000 + 100 * 20_000_000) / 1_000;

fn upstream() -> MockUpstream {
    MockUpstream::start(
        |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let body: Value = serde_json::from_slice(&req.body).unwrap_or_default();
            if body["stream"] == true {
                // 400 content events in one chunk, then the usage chunk the gateway asks for.
                stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
                )?;
                let mut all = content_events(400);
                all.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":400}}\n\n");
                all.push_str("data: [DONE]\n\n");
                write_chunk(stream, all.as_bytes())?;
                write_chunk(stream, b"")?;
                return Ok(Action::KeepAlive);
            }
            let answer = format!(
                r#"{{"id":"x","object":"chat.completion","choices":[{{"index":0,"message":{{"role":"assistant","content":"hi"}},"finish_reason":"stop"}}],{USAGE}}}"#
            );
            write_response(stream, 200, "application/json", answer.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    )
}

fn config(d: &Path, up: SocketAddr) -> String {
    format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
cores = 2
auth = "keys"
access_log = "{log}"
admin_tokens = ["sha256:{admin}"]

[[upstreams]]
name = "llm"
endpoints = ["http://{up}"]

[[routes]]
path_prefix = "/"
upstream = "llm"

[[tenants]]
name = "team"
keys = ["sha256:{key}"]

[[tenants]]
name = "budgeted"
keys = ["sha256:{budget_key}"]
budget_usd = 0.021
budget_window = "1h"

[[tenants]]
name = "streamer"
keys = ["sha256:{stream_key}"]
budget_usd = 0.001

[pricing]
default_table = false

[[prices]]
model = "priced"
input_usd_per_mtok = 2.5
cached_input_usd_per_mtok = 1.25
output_usd_per_mtok = 10
reasoning_usd_per_mtok = 20
"#,
        log = d.join("access.jsonl").display(),
        admin = sha256_hex(ADMIN_TOKEN),
        key = sha256_hex(KEY),
        budget_key = sha256_hex(BUDGET_KEY),
        stream_key = sha256_hex(STREAM_KEY),
    )
}

/// One chat call on a fresh connection (the kernel spreads them over both shards).
fn chat(gw: &Gateway, key: &str, body: &str) -> shardgate_tests::Response {
    shardgate_tests::post_chat(&mut Client::connect(gw.addr()), key, body)
}

fn key_id(key: &str) -> String {
    format!("key_{}", &sha256_hex(key)[..12])
}

/// Nanodollars as the gateway writes dollars.
fn usd(nusd: u64) -> String {
    let text = format!("{}.{:09}", nusd / 1_000_000_000, nusd % 1_000_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

fn ctl_json(gw: &Gateway, args: &[&str]) -> Value {
    let out = ctl_ok(gw, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn spend_is_the_usage_at_the_price_in_every_report() {
    let tmp = TempDir::new("spend");
    let up = upstream();
    let gw = Gateway::start(&config(tmp.path(), up.addr()));
    assert_eq!(gw.shards(), 2);
    const N: u64 = 40;
    let priced =
        r#"{"model":"priced","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    for _ in 0..N {
        let r = chat(&gw, KEY, priced);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    // A model with no price: served, and counted as unpriced rather than $0.
    let r = chat(
        &gw,
        KEY,
        r#"{"model":"unpriced","messages":[{"role":"user","content":"hi"}]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.summary());

    let total = usd(N * COST_NUSD);
    assert_eq!(total, "0.24");
    let metric = format!("shardgate_tenant_spend_usd_total{{tenant=\"team\"}} {total}");
    let unpriced = "shardgate_tenant_unpriced_requests_total{tenant=\"team\"} 1";
    let counted = wait_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        m.contains(&metric) && m.contains(unpriced)
    });
    assert!(
        counted,
        "want {metric:?} and {unpriced:?}:\n{}",
        gw.metrics()
    );

    // The access log: each priced line costs COST_NUSD, names the tenant, model and key id.
    let log_path = tmp.path().join("access.jsonl");
    let lines = || -> Vec<Value> {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(5), || lines().len() as u64 > N),
        "access log: {} lines",
        lines().len()
    );
    let all = lines();
    let priced_lines: Vec<&Value> = all.iter().filter(|l| l["cost_usd"].is_number()).collect();
    assert_eq!(priced_lines.len() as u64, N);
    for l in &priced_lines {
        assert_eq!(l["tenant"], "team", "{l}");
        assert_eq!(l["key"], key_id(KEY).as_str(), "{l}");
        assert_eq!(
            (l["tokens_in"].as_u64(), l["tokens_out"].as_u64()),
            (Some(1000), Some(300))
        );
        let cost = l["cost_usd"].as_f64().expect("a number");
        assert!((cost - COST_NUSD as f64 / 1e9).abs() < 1e-12, "{l}");
    }
    let unpriced_line = all
        .iter()
        .find(|l| l["tenant"] == "team" && l["cost_usd"].is_null())
        .expect("the unpriced request's line");
    assert_eq!(unpriced_line["tokens_in"], 1000);
    assert!(!std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains(KEY));

    // ctl spend: the counters, and the access log by key over a time window.
    let counters = ctl_json(&gw, &["spend", "--tenant", "team", "--json"]);
    assert_eq!(counters["source"], "counters");
    assert_eq!(counters["total_usd"], total.as_str(), "{counters}");
    assert_eq!(counters["rows"][0]["unpriced"], 1);
    let by_key = ctl_json(
        &gw,
        &["spend", "--key", &key_id(KEY), "--since", "1h", "--json"],
    );
    assert_eq!(by_key["source"], "access_log");
    assert_eq!(by_key["total_usd"], total.as_str(), "{by_key}");
    let none = ctl_json(&gw, &["spend", "--key", "key_000000000000", "--json"]);
    assert_eq!(none["total_usd"], "0");

    // The admin API says the same, and refuses without a token.
    let admin = |path: &str, token: Option<&str>| admin_request(&gw, "GET", path, token, None);
    let (status, v) = admin("/admin/v1/spend?tenant=team", Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["total_usd"], total.as_str(), "{v}");
    let (status, v) = admin(
        &format!("/admin/v1/spend?key={}&since=1h", key_id(KEY)),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(
        (status, v["total_usd"].as_str()),
        (200, Some(total.as_str())),
        "{v}"
    );
    assert_eq!(admin("/admin/v1/spend", None).0, 401);
    assert_eq!(admin("/admin/v1/spend", Some(KEY)).0, 401);
    assert_eq!(
        admin("/admin/v1/spend?since=soon", Some(ADMIN_TOKEN)).0,
        400
    );
}

#[test]
fn a_usd_budget_admits_what_fits_and_cuts_a_stream_at_it() {
    let tmp = TempDir::new("spend-budget");
    let up = upstream();
    let gw = Gateway::start(&config(tmp.path(), up.addr()));
    // Each request reserves its prompt estimate (20 tokens) at $2.5 and max_tokens (100) at the
    // dearer of output and reasoning ($20): $0.00205; it costs $0.006. Against $0.021: three
    // cost $0.018, the fourth still fits its reservation (0.018 + 0.00205 <= 0.021), the fifth
    // does not (0.024 spent), over both shards.
    let body = r#"{"model":"priced","max_tokens":100,"messages":[{"role":"user","content":"hi"}]}"#;
    let statuses: Vec<u16> = (0..6).map(|_| chat(&gw, BUDGET_KEY, body).status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 429, 429]);
    let r = chat(&gw, BUDGET_KEY, body);
    assert_error(&r, 429, "insufficient_quota");
    assert!(
        r.body_str().contains("USD"),
        "the refusal should name the dollar budget: {}",
        r.body_str()
    );

    // A stream of 400 events against $0.001: the prompt at $2.5 and $20 per output token leave
    // room for about 48 events; it is cut with an error event, then [DONE].
    let stream = r#"{"model":"priced","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = chat(&gw, STREAM_KEY, stream);
    assert_eq!(r.status, 200, "{}", r.summary());
    let text = r.body_str();
    let events = text.matches("\"content\"").count();
    assert!(
        (40..400).contains(&events),
        "the stream was not cut at the budget ({events} events)"
    );
    assert!(
        text.contains("insufficient_quota"),
        "no error event:\n{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

#[test]
fn a_keys_own_usd_budget_refuses_and_cuts_its_streams_while_the_tenants_other_keys_go_on() {
    let tmp = TempDir::new("spend-key");
    let up = upstream();
    let mut cfg = config(tmp.path(), up.addr());
    cfg = cfg.replace(
        "admin_tokens",
        &format!(
            "tenant_store = \"{}\"\nadmin_tokens",
            tmp.path().join("tenants.json").display()
        ),
    );
    let gw = Gateway::start(&cfg);
    let ctl = |args: &[&str]| {
        let out = ctl_ok(&gw, args);
        out.lines().last().unwrap_or_default().to_owned()
    };
    ctl(&["tenants", "add", "store-team"]);
    let limited = ctl(&["keys", "create", "store-team", "--budget-usd", "0.001"]);
    let free = ctl(&["keys", "create", "store-team"]);
    assert!(limited.starts_with("sk-sg-") && free.starts_with("sk-sg-"));

    // A stream of 400 events against the key's $0.001 is cut (about 48 events), as the
    // tenant's own budget cuts one.
    let stream = r#"{"model":"priced","stream":true,"max_tokens":20,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = chat(&gw, &limited, stream);
    assert_eq!(r.status, 200, "{}", r.summary());
    let text = r.body_str();
    let events = text.matches("\"content\"").count();
    assert!(
        (40..400).contains(&events),
        "the stream was not cut at the key's budget ({events} events)"
    );
    assert!(
        text.contains("insufficient_quota"),
        "no error event:\n{text}"
    );
    // Its budget spent: a request is refused with the dollar budget named; the tenant's other
    // key, without a budget of its own, goes on.
    let body = r#"{"model":"priced","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
    let r = chat(&gw, &limited, body);
    assert_error(&r, 429, "insufficient_quota");
    assert!(r.body_str().contains("USD"), "{}", r.body_str());
    for _ in 0..4 {
        let r = chat(&gw, &free, body);
        assert_eq!(r.status, 200, "{}", r.summary());
    }
}
