//! Tenant limits across shards: exact request counts whichever shard a tenant lands on,
//! budgets that concurrent requests cannot overspend, concurrency caps released by clients that
//! leave, 429s that say which limit and when to retry, and models a tenant may not reach.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate_tests::{
    assert_error, sleep, wait_until, write_chunk, write_response, Action, Client, ConfigBuilder,
    Gateway, MockUpstream, Request, Response,
};

fn key_of(name: &str) -> String {
    format!("sk-{name}-key")
}

fn tenant(name: &str, limits: &str) -> String {
    format!("name = \"{name}\"\nkeys = [\"{}\"]\n{limits}", key_of(name))
}

/// An upstream answering chat completions with a usage of 10 + 5 tokens.
fn llm_upstream() -> MockUpstream {
    MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            let body = r#"{"id":"x","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}}"#;
            write_response(stream, 200, "application/json", body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    )
}

fn chat_request(key: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

const SMALL_CHAT: &str =
    r#"{"model":"m","max_tokens":1,"messages":[{"role":"user","content":"hi"}]}"#;

fn get_models(c: &mut Client, key: &str) -> Response {
    c.send(format!(
        "GET /v1/models HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\r\n"
    ));
    c.read_response()
}

/// Send `n` GETs for `key`: over one keep-alive connection, or each on a new connection
/// (spread over the shards by the kernel). Returns how many were admitted (200).
fn burst(addr: SocketAddr, key: &str, n: usize, one_connection: bool) -> usize {
    let mut admitted = 0;
    let mut c = Client::connect(addr);
    for _ in 0..n {
        if !one_connection {
            c = Client::connect(addr);
        }
        let r = get_models(&mut c, key);
        match r.status {
            200 => admitted += 1,
            429 => {}
            s => panic!("unexpected {s}: {}", r.summary()),
        }
    }
    admitted
}

#[test]
fn requests_per_minute_hold_across_shards_whichever_shard_the_tenant_lands_on() {
    let up = llm_upstream();
    let cfg = ConfigBuilder::new(up.addr())
        .cores(2)
        .tenant(&tenant("hot", "rpm = 600"))
        .tenant(&tenant("spread", "rpm = 600"))
        .build();
    let gw = Gateway::start(&cfg);
    let addr = gw.addr();
    let start = Instant::now();
    let hot = std::thread::spawn(move || burst(addr, &key_of("hot"), 800, true));
    let spread = std::thread::spawn(move || burst(addr, &key_of("spread"), 800, false));
    let (hot, spread) = (hot.join().expect("hot"), spread.join().expect("spread"));
    let elapsed = start.elapsed().as_secs_f64();
    // Capacity 600, refilled at 10 per second while the bursts ran; one lease per shard may
    // be stranded (lease_units(600) = 1).
    let most = 600.0 + 10.0 * elapsed + 2.0;
    for (name, n) in [("hot", hot), ("spread", spread)] {
        assert!(
            n as f64 <= most,
            "{name}: {n} admitted, at most {most:.0} allowed"
        );
        assert!(n >= 598, "{name}: only {n} admitted of a 600 capacity");
    }
    let diff = (hot as f64 - spread as f64).abs();
    assert!(
        diff <= 0.01 * 600.0 + 10.0 * elapsed,
        "hot {hot} vs spread {spread} over {elapsed:.2} s"
    );
}

#[test]
fn a_429_says_which_limit_and_when_to_retry_and_successes_carry_the_rate_headers() {
    let up = llm_upstream();
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("t", "rpm = 3"))
        .build();
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    for i in 0..3 {
        let r = get_models(&mut c, &key_of("t"));
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        let remaining: u64 = r
            .header("x-ratelimit-remaining-requests")
            .and_then(|v| v.parse().ok())
            .expect("remaining");
        assert!(remaining <= 2 - i, "request {i}: remaining {remaining}");
        assert!(r.header("x-ratelimit-reset-requests").is_some());
    }
    let r = get_models(&mut c, &key_of("t"));
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "requests");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("retry-after");
    assert!((1..=20).contains(&retry), "retry-after {retry}");
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));
    // The connection stays usable after a 429 to a request without a body.
    assert!(!r.connection_has("close"), "{}", r.summary());
    c.send("GET /health/liveness HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(c.read_response().status, 200);
    assert_eq!(up.requests().len(), 3);
}

#[test]
fn a_budget_is_never_overspent_by_concurrent_requests() {
    // The upstream holds every request for a while, so all 200 are in flight at once.
    let up = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(Duration::from_millis(800));
            let body = r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
            write_response(stream, 200, "application/json", body.as_bytes())?;
            Ok(Action::KeepAlive)
        },
    );
    // Each request reserves ceil(len / 4) + max_tokens tokens; the budget fits exactly 50.
    let per = (SMALL_CHAT.len() as u64).div_ceil(4) + 1;
    let cfg = ConfigBuilder::new(up.addr())
        .cores(2)
        .tenant(&tenant(
            "b",
            &format!("budget_tokens = {}\nbudget_window = \"1h\"", per * 50),
        ))
        .build();
    let gw = Gateway::start(&cfg);
    let (ok, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let (ok, refused, addr) = (ok.clone(), refused.clone(), gw.addr());
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                c.send(chat_request(&key_of("b"), SMALL_CHAT));
                let r = c.read_response();
                match r.status {
                    200 => ok.fetch_add(1, Ordering::Relaxed),
                    429 => {
                        assert_eq!(
                            r.json()["error"]["code"],
                            "insufficient_quota",
                            "{}",
                            r.summary()
                        );
                        refused.fetch_add(1, Ordering::Relaxed)
                    }
                    s => panic!("unexpected {s}: {}", r.summary()),
                };
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client");
    }
    let (ok, refused) = (ok.load(Ordering::Relaxed), refused.load(Ordering::Relaxed));
    assert_eq!(ok + refused, 200);
    assert_eq!(
        ok, 50,
        "{ok} admitted against a budget of 50 requests' estimates"
    );
    assert_eq!(up.requests().len(), 50);
}

#[test]
fn a_concurrency_cap_holds_and_a_client_that_leaves_releases_its_slot() {
    // The upstream streams an event every 50 ms for a long time.
    let up = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
            for _ in 0..200 {
                write_chunk(
                    stream,
                    b"data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n",
                )?;
                sleep(Duration::from_millis(50));
            }
            write_chunk(stream, b"data: [DONE]\n\n")?;
            write_chunk(stream, b"")?;
            Ok(Action::KeepAlive)
        },
    );
    let cfg = ConfigBuilder::new(up.addr())
        .cores(2)
        .tenant(&tenant("c", "max_concurrency = 2"))
        .build();
    let gw = Gateway::start(&cfg);
    let stream_body = r#"{"model":"m","stream":true,"messages":[]}"#;
    let open = |c: &mut Client| {
        c.send(chat_request(&key_of("c"), stream_body));
        c.read_raw_until(b"data:")
    };
    let mut first = Client::connect(gw.addr());
    let mut second = Client::connect(gw.addr());
    let h1 = open(&mut first);
    let h2 = open(&mut second);
    assert!(String::from_utf8_lossy(&h1).starts_with("HTTP/1.1 200"));
    assert!(String::from_utf8_lossy(&h2).starts_with("HTTP/1.1 200"));
    // A third, on either shard, is refused.
    let mut third = Client::connect(gw.addr());
    third.send(chat_request(&key_of("c"), stream_body));
    let r = third.read_response();
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "concurrency");
    // The first client leaves mid-stream: its slot comes back within a few events.
    drop(first);
    let admitted = wait_until(Duration::from_secs(5), || {
        let mut c = Client::connect(gw.addr());
        c.send(chat_request(&key_of("c"), stream_body));
        let head = c.read_raw_until(b"\r\n\r\n");
        String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200")
    });
    assert!(
        admitted,
        "the slot of a client that left was never released"
    );
}

#[test]
fn a_tenant_cannot_reach_a_model_it_is_not_approved_for() {
    let up = llm_upstream();
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("m", "models = [\"gpt-4o\"]"))
        .build();
    let gw = Gateway::start(&cfg);
    let key = key_of("m");
    let ok = r#"{"model":"gpt-4o","messages":[]}"#;
    let mut c = Client::connect(gw.addr());
    c.send(chat_request(&key, ok));
    assert_eq!(c.read_response().status, 200);
    for (body, status, code) in [
        (
            r#"{"model":"gpt-4o-mini","messages":[]}"#,
            403,
            "model_not_approved",
        ),
        // A nested "model" is not the request's model.
        (
            r#"{"messages":[{"model":"gpt-4o"}],"model":"o1"}"#,
            403,
            "model_not_approved",
        ),
        (r#"{"messages":[{"model":"gpt-4o"}]}"#, 400, "invalid_body"),
        // Two top-level models: refused rather than guessed.
        (
            r#"{"model":"gpt-4o","model":"o1","messages":[]}"#,
            400,
            "invalid_body",
        ),
        (r#"{"model":["gpt-4o"],"messages":[]}"#, 400, "invalid_body"),
        ("not json", 400, "invalid_body"),
    ] {
        let mut c = Client::connect(gw.addr());
        c.send(chat_request(&key, body));
        let r = c.read_response();
        assert_error(&r, status, code);
    }
    // The path's query and headers do not choose the model either.
    let mut c = Client::connect(gw.addr());
    let body = r#"{"model":"o1","messages":[]}"#;
    c.send(format!(
        "POST /v1/chat/completions?model=gpt-4o HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\nX-Model: gpt-4o\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    assert_error(&c.read_response(), 403, "model_not_approved");
    assert_eq!(
        up.requests().len(),
        1,
        "a refused request reached the upstream"
    );
}

#[test]
fn tokens_are_counted_from_the_upstreams_usage() {
    let up = llm_upstream();
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("u", "tpm = 100000"))
        .build();
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    for _ in 0..4 {
        c.send(chat_request(&key_of("u"), SMALL_CHAT));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100000"));
    }
    let metrics = || gw.metrics();
    let counted = wait_until(Duration::from_secs(5), || {
        let m = metrics();
        m.contains(r#"shardgate_tenant_tokens_total{tenant="u",gen_ai_token_type="input"} 40"#)
            && m.contains(
                r#"shardgate_tenant_tokens_total{tenant="u",gen_ai_token_type="output"} 20"#,
            )
    });
    assert!(counted, "{}", metrics());
}

/// An upstream streaming `n` content events, then (when the request asked for it) a usage
/// chunk of 7 + n tokens, then `[DONE]`; it records whether the request asked for usage.
fn sse_upstream(n: usize, asked: Arc<AtomicUsize>) -> MockUpstream {
    MockUpstream::start(
        move |req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap_or_default();
            let include = body["stream_options"]["include_usage"] == true;
            if include {
                asked.fetch_add(1, Ordering::Relaxed);
            }
            stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
            for i in 0..n {
                let ev = format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"w{i} \"}}}}]}}\n\n"
            );
                write_chunk(stream, ev.as_bytes())?;
            }
            if include {
                let usage = format!(
                "data: {{\"choices\":[],\"usage\":{{\"prompt_tokens\":7,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
                7 + n
            );
                write_chunk(stream, usage.as_bytes())?;
            }
            write_chunk(stream, b"data: [DONE]\n\n")?;
            write_chunk(stream, b"")?;
            Ok(Action::KeepAlive)
        },
    )
}

#[test]
fn streams_are_asked_for_usage_which_is_counted_and_hidden_unless_the_client_asked() {
    let asked = Arc::new(AtomicUsize::new(0));
    let up = sse_upstream(5, asked.clone());
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("s", "tpm = 100000"))
        .build();
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    // The client did not ask: the gateway asks, counts, and takes the chunk out again.
    c.send(chat_request(
        &key_of("s"),
        r#"{"model":"m","stream":true,"messages":[]}"#,
    ));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let text = r.body_str();
    assert_eq!(text.matches("\"content\"").count(), 5, "{text}");
    assert!(
        !text.contains("usage"),
        "the client got a usage chunk it did not ask for:\n{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert_eq!(
        asked.load(Ordering::Relaxed),
        1,
        "the upstream was not asked for usage"
    );
    // The client asked: it gets the chunk.
    c.send(chat_request(
        &key_of("s"),
        r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
    ));
    let r = c.read_response();
    assert!(r.body_str().contains("\"usage\""), "{}", r.summary());
    let counted = wait_until(Duration::from_secs(5), || {
        let m = gw.metrics();
        m.contains(r#"shardgate_tenant_tokens_total{tenant="s",gen_ai_token_type="input"} 14"#)
            && m.contains(
                r#"shardgate_tenant_tokens_total{tenant="s",gen_ai_token_type="output"} 10"#,
            )
    });
    assert!(counted, "{}", gw.metrics());
}

#[test]
fn a_stream_past_the_budget_is_cut_with_an_error_event() {
    // All 400 events in one chunk, so one read brings the whole stream: the cut must still
    // fall at the event that passes the budget.
    let up = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            use std::io::Write;
            stream.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        )?;
            let mut all = shardgate_tests::content_events(400);
            all.push_str("data: [DONE]\n\n");
            write_chunk(stream, all.as_bytes())?;
            write_chunk(stream, b"")?;
            Ok(Action::KeepAlive)
        },
    );
    // The request reserves ceil(len/4) + 20 tokens; the budget leaves room for 60 more: at
    // most 80 content events (the prompt's estimate counts too).
    let body = r#"{"model":"m","stream":true,"max_tokens":20,"messages":[]}"#;
    let reserve = (body.len() as u64).div_ceil(4) + 20;
    let cfg = ConfigBuilder::new(up.addr())
        .tenant(&tenant("cut", &format!("budget_tokens = {}", reserve + 60)))
        .build();
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    c.send(chat_request(&key_of("cut"), body));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.summary());
    let text = r.body_str();
    let events = text.matches("\"content\"").count();
    assert!(
        events < 400,
        "the stream ran on past the budget ({events} events)"
    );
    assert!(events >= 60, "cut too early ({events} events)");
    assert!(
        text.contains("insufficient_quota"),
        "no error event:\n{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    // The budget is spent: the next request is refused.
    let mut c = Client::connect(gw.addr());
    c.send(chat_request(&key_of("cut"), body));
    assert_error(&c.read_response(), 429, "insufficient_quota");
}

#[test]
fn a_flooding_tenant_gets_its_share_and_a_quiet_one_goes_ahead() {
    // The upstream takes 100 ms a request and the gateway lets 2 in flight.
    let up = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(Duration::from_millis(100));
            write_response(stream, 200, "application/json", b"{}")?;
            Ok(Action::KeepAlive)
        },
    );
    let cfg = ConfigBuilder::new(up.addr())
        .upstream("max_concurrency = 2")
        .server("queue_wait_ms_max = 20000")
        .tenant(&tenant("flood", ""))
        .tenant(&tenant("quiet", ""))
        .build();
    let gw = Gateway::start(&cfg);
    // 40 concurrent requests from the flood: 2 s of upstream work at 2 in flight.
    let flood: Vec<_> = (0..40)
        .map(|_| {
            let addr = gw.addr();
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let t = Instant::now();
                let r = get_models(&mut c, &key_of("flood"));
                (r.status, t.elapsed())
            })
        })
        .collect();
    sleep(Duration::from_millis(300));
    // The quiet tenant, one request at a time, while the flood is queued.
    let mut quiet = Vec::new();
    for _ in 0..4 {
        let mut c = Client::connect(gw.addr());
        let t = Instant::now();
        let r = get_models(&mut c, &key_of("quiet"));
        assert_eq!(r.status, 200, "{}", r.summary());
        quiet.push(t.elapsed());
    }
    let flood: Vec<(u16, Duration)> = flood
        .into_iter()
        .map(|h| h.join().expect("flood"))
        .collect();
    assert!(
        flood.iter().all(|(s, _)| *s == 200),
        "a flood request failed: {flood:?}"
    );
    let mut flood_times: Vec<Duration> = flood.iter().map(|(_, d)| *d).collect();
    flood_times.sort();
    let worst_quiet = quiet.iter().max().copied().unwrap_or_default();
    // Behind the flood in one FIFO, a quiet request would wait ~1.5 s; fairly queued, one
    // round: about one upstream service time.
    assert!(
        worst_quiet < Duration::from_millis(600),
        "quiet waited {worst_quiet:?} (flood median {:?})",
        flood_times[flood_times.len() / 2]
    );
    assert!(flood_times[flood_times.len() - 1] > Duration::from_millis(1500));
    // Never more than 2 at the upstream at once: 44 requests took at least 22 rounds.
    assert_eq!(up.requests().len(), 44);
}

#[test]
fn a_full_queue_or_a_long_wait_is_a_429() {
    let up = MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(Duration::from_millis(400));
            write_response(stream, 200, "application/json", b"{}")?;
            Ok(Action::KeepAlive)
        },
    );
    let cfg = ConfigBuilder::new(up.addr())
        .upstream("max_concurrency = 1")
        .server("queue_wait_ms_max = 150\nqueue_depth_max = 1")
        .tenant(&tenant("q", ""))
        .build();
    let gw = Gateway::start(&cfg);
    let addr = gw.addr();
    let first =
        std::thread::spawn(move || get_models(&mut Client::connect(addr), &key_of("q")).status);
    sleep(Duration::from_millis(100));
    // The slot is taken: this one queues and gives up after 150 ms.
    let waiter = std::thread::spawn(move || get_models(&mut Client::connect(addr), &key_of("q")));
    sleep(Duration::from_millis(30));
    // The queue (depth 1) is full: refused at once.
    let t = Instant::now();
    let r = get_models(&mut Client::connect(addr), &key_of("q"));
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "queue");
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "a full queue made the request wait"
    );
    let r = waiter.join().expect("waiter");
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(first.join().expect("first"), 200);
}

#[test]
fn a_tenant_past_its_connections_max_gets_429_and_others_are_unaffected() {
    let up = MockUpstream::start(shardgate_tests::echo());
    let gw = Gateway::start(
        &ConfigBuilder::new(up.addr())
            .tenant(&tenant("greedy", "connections_max = 3"))
            .tenant(&tenant("other", ""))
            .build(),
    );
    let get = |c: &mut Client, who: &str| {
        c.send(format!(
            "GET /x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\n\r\n",
            key_of(who)
        ));
        c.read_response()
    };
    let mut held: Vec<Client> = (0..3)
        .map(|_| {
            let mut c = Client::connect(gw.addr());
            assert_eq!(get(&mut c, "greedy").status, 200);
            c
        })
        .collect();
    // A fourth connection of the same tenant: 429 `connections`, then closed.
    let mut fourth = Client::connect(gw.addr());
    let r = get(&mut fourth, "greedy");
    assert_error(&r, 429, "rate_limit_exceeded");
    assert_eq!(r.json()["error"]["type"], "connections", "{}", r.body_str());
    fourth.assert_closed(Duration::from_secs(3));
    // Its held connections keep working, and another tenant is not affected.
    assert_eq!(get(&mut held[0], "greedy").status, 200);
    let mut other = Client::connect(gw.addr());
    assert_eq!(get(&mut other, "other").status, 200);
    // One closes: room for one more.
    drop(held.pop());
    assert!(
        wait_until(Duration::from_secs(5), || {
            let mut c = Client::connect(gw.addr());
            get(&mut c, "greedy").status == 200
        }),
        "a closed connection did not make room"
    );
}
