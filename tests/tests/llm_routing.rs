//! Model groups: requests routed by the body's `model` to a group's deployments, the model
//! rewritten to the deployment's own name, the `latency` strategy preferring the faster one,
//! unknown models answered 404, `/v1/models` answered locally, fallbacks when a group is down.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use shardgate_tests::{
    assert_error, free_port, sleep, write_response, Action, Client, Gateway, MockUpstream, Request,
};

/// An upstream that waits `delay` and answers with its `name` and the model it was asked for.
fn deployment(name: &'static str, delay: Duration) -> MockUpstream {
    MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(delay);
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let answer = serde_json::json!({
                "served_by": name,
                "model": body["model"],
                "choices": [],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1}
            });
            write_response(
                stream,
                200,
                "application/json",
                answer.to_string().as_bytes(),
            )?;
            Ok(Action::KeepAlive)
        },
    )
}

fn config(upstreams: &[(&str, SocketAddr)], models: &str) -> String {
    let mut s = String::from("[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n");
    for (name, addr) in upstreams {
        s.push_str(&format!(
            "\n[[upstreams]]\nname = \"{name}\"\nendpoints = [\"http://{addr}\"]\nconnect_timeout_ms = 300\n"
        ));
    }
    s.push_str(models);
    s
}

fn chat(c: &mut Client, model: &str) -> shardgate_tests::Response {
    send_chat(c, model);
    c.read_response()
}

/// Send a one-message chat request for `model` (the answer is the caller's to read).
fn send_chat(c: &mut Client, model: &str) {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
}

#[test]
fn the_latency_strategy_prefers_the_faster_deployment_and_models_are_rewritten() {
    let fast = deployment("fast", Duration::from_millis(2));
    let slow = deployment("slow", Duration::from_millis(40));
    let cfg = config(
        &[("fast", fast.addr()), ("slow", slow.addr())],
        r#"
[[models]]
name = "gpt-4o"
strategy = "latency"
deployments = [
  { upstream = "fast", model = "gpt-4o-2024-08-06" },
  { upstream = "slow", model = "gpt-4o-azure" },
]
"#,
    );
    let gw = Gateway::start(&cfg);
    // Several clients at once, so outstanding requests weigh in too.
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let addr = gw.addr();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let mut fast = 0;
                for _ in 0..50 {
                    let r = chat(&mut c, "gpt-4o");
                    assert_eq!(r.status, 200, "{}", r.summary());
                    let j = r.json();
                    match j["served_by"].as_str() {
                        Some("fast") => {
                            assert_eq!(j["model"], "gpt-4o-2024-08-06");
                            fast += 1;
                        }
                        Some("slow") => assert_eq!(j["model"], "gpt-4o-azure"),
                        other => panic!("served by {other:?}"),
                    }
                }
                fast
            })
        })
        .collect();
    let fast: usize = threads.into_iter().map(|t| t.join().expect("client")).sum();
    assert!(
        fast >= 160,
        "only {fast} of 200 went to the faster deployment"
    );
}

#[test]
fn unknown_models_are_404_and_the_model_list_is_answered_here() {
    let a = deployment("a", Duration::ZERO);
    let cfg = config(
        &[("a", a.addr())],
        r#"
[[models]]
name = "gpt-4o"
deployments = [{ upstream = "a" }]

[[models]]
name = "gpt-4o-mini"
deployments = [{ upstream = "a" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    assert_error(&chat(&mut c, "o1"), 404, "model_not_found");
    let mut c = Client::connect(gw.addr());
    c.send("GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let ids: Vec<String> = r.json()["data"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|m| m["id"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(ids, vec!["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(
        a.requests().len(),
        0,
        "the list was fetched from an upstream"
    );
    // The model's own name goes upstream when a deployment gives none.
    assert_eq!(chat(&mut c, "gpt-4o-mini").json()["model"], "gpt-4o-mini");
}

#[test]
fn a_group_that_is_down_falls_back_to_the_next() {
    let backup = deployment("backup", Duration::ZERO);
    let dead = free_port();
    let cfg = config(
        &[("dead", dead), ("backup", backup.addr())],
        r#"
[[models]]
name = "primary"
fallbacks = ["spare"]
deployments = [{ upstream = "dead" }]

[[models]]
name = "spare"
deployments = [{ upstream = "backup", model = "spare-model" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let mut statuses = Vec::new();
    for _ in 0..12 {
        let mut c = Client::connect(gw.addr());
        let r = chat(&mut c, "primary");
        statuses.push(r.status);
        if r.status == 200 {
            assert_eq!(r.json()["served_by"], "backup");
            assert_eq!(r.json()["model"], "spare-model");
        }
    }
    // Until the dead deployment is ejected (5 failures) its requests fail; then the fallback
    // group serves them.
    assert!(
        statuses[6..].iter().all(|s| *s == 200),
        "no fallback after the group went down: {statuses:?}"
    );
}

#[test]
fn templates_are_filled_from_variables_which_never_reach_the_upstream() {
    let up = MockUpstream::start(shardgate_tests::echo());
    let cfg = config(
        &[("a", up.addr())],
        r#"
[[routes]]
path_prefix = "/"
upstream = "a"

[[templates]]
name = "friendly"
routes = ["/v1/chat/"]
messages = [{ role = "system", content = "You answer: {{Query}}" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    // The seed request.
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"Hello World!"}],"variables":{"Query":"Please reply in a friendly manner. \"}],\"model\":\"x"}}"#;
    let mut c = Client::connect(gw.addr());
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let sent: serde_json::Value =
        serde_json::from_str(r.json()["body"].as_str().expect("echoed body")).expect("json");
    assert!(
        sent.get("variables").is_none(),
        "variables forwarded: {sent}"
    );
    assert_eq!(
        sent["model"], "gpt-4o",
        "an injected value changed the model: {sent}"
    );
    assert_eq!(sent["messages"][0]["role"], "system");
    assert_eq!(
        sent["messages"][0]["content"],
        "You answer: Please reply in a friendly manner. \"}],\"model\":\"x"
    );
    assert_eq!(sent["messages"][1]["content"], "Hello World!");
    // A missing variable is a 400 naming it.
    let body = r#"{"model":"gpt-4o","messages":[],"variables":{}}"#;
    let mut c = Client::connect(gw.addr());
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    assert_error(&r, 400, "missing_variable");
    assert!(r.body_str().contains("Query"), "{}", r.summary());
}

#[test]
fn a_deployment_killed_mid_run_costs_no_client_errors_and_is_readmitted_when_back() {
    let a = deployment("a", Duration::ZERO);
    let b = deployment("b", Duration::ZERO);
    let a_addr = a.addr();
    let cfg = config(
        &[("a", a_addr), ("b", b.addr())],
        r#"
[[models]]
name = "m"
strategy = "round_robin"
retries = 2
deployments = [{ upstream = "a" }, { upstream = "b" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let run = |n: usize| -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut c = Client::connect(gw.addr());
                let r = chat(&mut c, "m");
                assert_eq!(r.status, 200, "a client saw an error: {}", r.summary());
                r.json()["served_by"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    let before = run(10);
    assert!(before.iter().any(|s| s == "a") && before.iter().any(|s| s == "b"));
    // `a` goes away (its port refuses connections): every request still succeeds.
    drop(a);
    let during = run(30);
    assert!(during.iter().all(|s| s == "b"), "{during:?}");
    // `a` comes back on the same address; after its cool-down it is probed and readmitted.
    let a = MockUpstream::start_on(
        a_addr,
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            write_response(
            stream,
            200,
            "application/json",
            br#"{"served_by":"a","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#,
        )?;
            Ok(Action::KeepAlive)
        },
    );
    let back =
        shardgate_tests::wait_until(Duration::from_secs(15), || run(4).iter().any(|s| s == "a"));
    assert!(back, "the deployment was never readmitted");
    drop(a);
}

#[test]
fn a_config_apply_keeps_the_balancers_health_of_unchanged_groups() {
    // ctl is built before the clock matters: a build inside the ejection's cooldown (5 s) would
    // outlast it and readmit the dead deployment for a probe.
    let _ = shardgate_tests::ctl_bin();
    let alive = deployment("alive", Duration::ZERO);
    let dead = free_port();
    let models = r#"
[[models]]
name = "m"
strategy = "round_robin"
retries = 0
deployments = [{ upstream = "dead" }, { upstream = "alive" }]
"#;
    let cfg = config(&[("dead", dead), ("alive", alive.addr())], models);
    let gw = Gateway::start(&cfg);
    // No retries: requests sent to the dead deployment fail until it is ejected (5 failures).
    let mut failed = 0;
    for _ in 0..12 {
        let mut c = Client::connect(gw.addr());
        if chat(&mut c, "m").status != 200 {
            failed += 1;
        }
    }
    assert_eq!(
        failed, 5,
        "the dead deployment was not ejected after 5 failures"
    );
    // An unrelated change: the group's deployments are the same, so its health is kept.
    let next = std::env::temp_dir().join(format!("sg-routing-{}.toml", std::process::id()));
    std::fs::write(
        &next,
        cfg.replace(
            "auth = \"none\"\n",
            "auth = \"none\"\nidle_timeout_ms = 30000\n",
        ),
    )
    .expect("write");
    let out = shardgate_tests::run_ctl(
        gw.instance(),
        &["apply", &next.display().to_string()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, Some(0), "{}", out.text());
    for _ in 0..6 {
        let mut c = Client::connect(gw.addr());
        let r = chat(&mut c, "m");
        assert_eq!(
            r.status,
            200,
            "health was reset by the apply: {}",
            r.summary()
        );
    }
    let _ = std::fs::remove_file(next);
}

#[test]
fn an_upstreams_retry_after_keeps_the_balancer_away_and_its_429_is_retried() {
    let busy = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            let body = br#"{"error":{"message":"slow down","type":"rate_limit"}}"#;
            write!(
            stream,
            "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 30\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )?;
            stream.write_all(body)?;
            Ok(Action::KeepAlive)
        },
    );
    let free = deployment("free", Duration::ZERO);
    let cfg = config(
        &[("busy", busy.addr()), ("free", free.addr())],
        r#"
[[models]]
name = "m"
strategy = "round_robin"
retries = 1
deployments = [{ upstream = "busy" }, { upstream = "free" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    for _ in 0..10 {
        let mut c = Client::connect(gw.addr());
        let r = chat(&mut c, "m");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.json()["served_by"], "free");
    }
    // One 429 with Retry-After: 30 put `busy` aside; it was not asked again.
    assert_eq!(busy.requests().len(), 1);
}

#[test]
fn a_deployment_over_its_quota_is_skipped_for_another() {
    let capped = deployment("capped", Duration::ZERO);
    let spare = deployment("spare", Duration::ZERO);
    let cfg = config(
        &[("capped", capped.addr()), ("spare", spare.addr())],
        r#"
[[models]]
name = "m"
strategy = "weighted"
deployments = [
  { upstream = "capped", weight = 100, rpm = 5 },
  { upstream = "spare", weight = 1 },
]
"#,
    );
    let gw = Gateway::start(&cfg);
    let mut served = Vec::new();
    for _ in 0..20 {
        let mut c = Client::connect(gw.addr());
        let r = chat(&mut c, "m");
        assert_eq!(r.status, 200, "{}", r.summary());
        served.push(
            r.json()["served_by"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // The heavy deployment takes its 5 requests per minute (capacity 5), the rest go elsewhere.
    assert_eq!(capped.requests().len(), 5, "{served:?}");
    assert_eq!(spare.requests().len(), 15, "{served:?}");
}

/// An upstream that waits `delay`, then streams two events naming itself and `[DONE]`.
fn streamer(name: &'static str, delay: Duration) -> MockUpstream {
    MockUpstream::start(
        move |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            sleep(delay);
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            let event = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{name}\"}}}}]}}\n\n"
            );
            shardgate_tests::write_chunk(stream, event.as_bytes())?;
            shardgate_tests::write_chunk(stream, b"data: [DONE]\n\n")?;
            stream.write_all(b"0\r\n\r\n")?;
            Ok(Action::KeepAlive)
        },
    )
}

fn stream_chat(c: &mut Client, model: &str) -> (shardgate_tests::Response, Duration) {
    let body = format!(
        r#"{{"model":"{model}","stream":true,"stream_options":{{"include_usage":true}},"messages":[{{"role":"user","content":"hi"}}]}}"#
    );
    let t = std::time::Instant::now();
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    (r, t.elapsed())
}

#[test]
fn a_hedged_stream_is_answered_by_whichever_deployment_starts_first() {
    const SLOW: Duration = Duration::from_millis(1500);
    let slow = streamer("slow", SLOW);
    let fast = streamer("fast", Duration::ZERO);
    let cfg = config(
        &[("slow", slow.addr()), ("fast", fast.addr())],
        r#"
[[models]]
name = "hedged"
strategy = "round_robin"
hedge_after_ms = 100
deployments = [{ upstream = "slow" }, { upstream = "fast" }]

[[models]]
name = "plain"
strategy = "round_robin"
deployments = [{ upstream = "slow" }, { upstream = "fast" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    // Round robin sends every other first attempt to the slow deployment: each of those is
    // hedged after 100 ms and answered by the fast one, the slow attempt cancelled.
    for i in 0..6 {
        let (r, took) = stream_chat(&mut c, "hedged");
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(
            r.body_str().contains("\"fast\""),
            "request {i}: {}",
            r.body_str()
        );
        assert!(
            took < SLOW - Duration::from_millis(500),
            "request {i} took {took:?}: not hedged"
        );
    }
    assert!(
        !slow.requests().is_empty(),
        "the slow deployment was never tried first"
    );
    assert!(
        shardgate_tests::wait_until(Duration::from_secs(5), || slow.connections_closed_by_peer()
            >= slow.requests().len()),
        "every attempt at the slow deployment was cancelled (its connection closed): {} of {}",
        slow.connections_closed_by_peer(),
        slow.requests().len()
    );
    // Without hedge_after_ms, a stream waits for the deployment it was sent to.
    let mut slowest = Duration::ZERO;
    for _ in 0..2 {
        let (r, took) = stream_chat(&mut c, "plain");
        assert_eq!(r.status, 200, "{}", r.summary());
        slowest = slowest.max(took);
    }
    assert!(
        slowest >= SLOW,
        "no plain stream waited for the slow deployment"
    );
}

#[test]
fn a_deployment_that_breaks_off_its_answers_is_charged_and_put_aside() {
    // Answers 200 with a head promising 1,000 bytes, sends 10, and closes: the client can only
    // get a truncated answer (the head went out), but the deployment's health pays for it.
    let broken = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"choices\"",
            )?;
            Ok(Action::Close)
        },
    );
    let good = deployment("good", Duration::ZERO);
    let cfg = config(
        &[("broken", broken.addr()), ("good", good.addr())],
        r#"
[[models]]
name = "m"
strategy = "round_robin"
deployments = [{ upstream = "broken" }, { upstream = "good" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let (mut truncated, mut served) = (0, 0);
    for _ in 0..40 {
        let mut c = Client::connect(gw.addr());
        send_chat(&mut c, "m");
        match c.try_read_response_for("POST") {
            Ok(r) if r.status == 200 && r.json()["served_by"] == "good" => served += 1,
            Ok(r) => panic!("unexpected answer: {}", r.summary()),
            Err(_) => truncated += 1,
        }
    }
    // Five broken answers in a row eject it (docs/configuration.md, model groups); round robin
    // would otherwise have sent it 20 of the 40.
    let asked = broken.requests().len();
    assert!(
        (5..=7).contains(&asked),
        "the broken deployment was asked {asked} times"
    );
    assert_eq!(
        truncated, asked,
        "every broken answer reached its client truncated"
    );
    assert_eq!(served, 40 - asked);
}

#[test]
fn a_groups_ejection_rule_is_its_own() {
    // A dead deployment and a live one, round robin, no retries: each failure reaches the
    // client, until the dead one is ejected.
    let live = deployment("live", Duration::ZERO);
    let dead = free_port();
    let failures = |eject: &str| {
        let cfg = config(
            &[("dead", dead), ("live", live.addr())],
            &format!(
                r#"
[[models]]
name = "m"
strategy = "round_robin"
retries = 0
{eject}
deployments = [{{ upstream = "dead" }}, {{ upstream = "live" }}]
"#
            ),
        );
        let gw = Gateway::start(&cfg);
        (0..16)
            .filter(|_| {
                let mut c = Client::connect(gw.addr());
                chat(&mut c, "m").status != 200
            })
            .count()
    };
    // One failure ejects it (for a minute): every later request goes to the live one.
    assert_eq!(failures("eject_after_failures = 1\ncooldown_ms = 60000"), 1);
    // The default takes five failures in a row.
    assert_eq!(failures(""), 5);
}

/// An upstream that answers every request 400 with `body`, writing its head and its body
/// apart (the body 30 ms later), as a server may.
fn refusing(body: &'static str) -> MockUpstream {
    MockUpstream::start(
        move |_: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write as _;
            write!(
                stream,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )?;
            stream.flush()?;
            sleep(Duration::from_millis(30));
            stream.write_all(body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    )
}

/// An upstream that answers every request 400 with `body` in two chunks, 30 ms apart.
fn refusing_chunked(body: &'static str) -> MockUpstream {
    MockUpstream::start(
        move |_: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write as _;
            let (a, b) = body.split_at(body.len() / 2);
            write!(
                stream,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n",
                a.len()
            )?;
            stream.flush()?;
            sleep(Duration::from_millis(30));
            write!(stream, "{:x}\r\n{b}\r\n0\r\n\r\n", b.len())?;
            Ok(Action::KeepAlive)
        },
    )
}

#[test]
fn an_answer_too_long_for_the_model_goes_to_the_context_window_fallback() {
    let small = refusing(
        r#"{"error":{"message":"This model's maximum context length is 8192 tokens. However, your messages resulted in 9100 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#,
    );
    let other = refusing(
        r#"{"error":{"message":"Invalid value for 'temperature'","type":"invalid_request_error","code":"invalid_value"}}"#,
    );
    // Anthropic's words, chunked, the phrase cut between the chunks.
    let chunked = refusing_chunked(
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 208310 tokens > 200000 maximum"}}"#,
    );
    let big = deployment("big", Duration::ZERO);
    let cfg = config(
        &[
            ("small", small.addr()),
            ("other", other.addr()),
            ("chunked", chunked.addr()),
            ("big", big.addr()),
        ],
        r#"
[[models]]
name = "small"
context_window_fallbacks = ["big"]
deployments = [{ upstream = "small", model = "small-8k" }]
[[models]]
name = "other"
context_window_fallbacks = ["big"]
deployments = [{ upstream = "other" }]
[[models]]
name = "plain"
deployments = [{ upstream = "small" }]
[[models]]
name = "claude"
context_window_fallbacks = ["big"]
deployments = [{ upstream = "chunked" }]
[[models]]
name = "big"
deployments = [{ upstream = "big", model = "big-128k" }]
"#,
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    // Too long for `small`'s model: answered by `big`'s, on the same client connection.
    let r = chat(&mut c, "small");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json()["served_by"], "big");
    assert_eq!(r.json()["model"], "big-128k");
    assert_eq!(small.requests().len(), 1);
    // Another client error is the client's own: relayed as it came, not moved.
    let r = chat(&mut c, "other");
    assert_eq!(r.status, 400, "{}", r.summary());
    assert!(r.body_str().contains("temperature"), "{}", r.summary());
    // A group without context_window_fallbacks relays the overflow as it came.
    let r = chat(&mut c, "plain");
    assert_eq!(r.status, 400, "{}", r.summary());
    assert!(
        r.body_str().contains("context_length_exceeded"),
        "{}",
        r.summary()
    );
    // Chunked, in two reads: read whole, then moved.
    let r = chat(&mut c, "claude");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(r.json()["served_by"], "big");
    assert_eq!(big.requests().len(), 2, "only the overflows went to big");
}
