//! Traces (issue 22): spans exported over OTLP/HTTP to a receiver started here, decoded with
//! the reference protobuf definitions (`opentelemetry-proto`): one SERVER span per request with
//! the HTTP conventions and the tenant, one CLIENT span per upstream attempt (a retry's and a
//! hedge's each their own) with the GenAI conventions, W3C `traceparent` followed and sent on,
//! prompts never recorded, the collector down or slow (requests served, spans dropped and
//! counted), head sampling.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{status::StatusCode, Span};
use prost::Message as _;
use shardgate_tests::{
    free_port, json_ok, sha256_hex, sleep, wait_until, write_chunk, write_response, Action, Client,
    Gateway, MockUpstream, Request,
};

const KEY: &str = "sk-tenant-traces-0001";
const PROMPT: &str = "Hello World from the secret prompt";
const INCOMING_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INCOMING_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP receiver: answers `POST /v1/traces` 200 (after `delay`) and keeps the bodies.
fn collector(delay: Duration) -> MockUpstream {
    MockUpstream::start(
        move |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(delay);
            write_response(stream, 200, "application/x-protobuf", b"")?;
            Ok(Action::KeepAlive)
        },
    )
}

/// Every span the collector received, decoded by content type.
fn spans(col: &MockUpstream) -> Vec<Span> {
    let mut out = Vec::new();
    for req in col.requests() {
        assert_eq!(req.path, "/v1/traces", "exports go to /v1/traces");
        let decoded = match req.header("content-type") {
            Some("application/x-protobuf") => {
                ExportTraceServiceRequest::decode(&req.body[..]).expect("protobuf export")
            }
            Some("application/json") => {
                serde_json::from_slice(&req.body).expect("OTLP/JSON export")
            }
            other => panic!("unexpected content-type {other:?}"),
        };
        for rs in decoded.resource_spans {
            let resource = rs.resource.expect("a resource");
            assert_eq!(
                attr_str(&resource.attributes, "service.name").as_deref(),
                Some("shardgate-test")
            );
            for ss in rs.scope_spans {
                out.extend(ss.spans);
            }
        }
    }
    out
}

fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn attr_str(attrs: &[KeyValue], key: &str) -> Option<String> {
    match attr(attrs, key)? {
        Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key)? {
        Value::IntValue(n) => Some(*n),
        _ => None,
    }
}

fn attr_bool(attrs: &[KeyValue], key: &str) -> Option<bool> {
    match attr(attrs, key)? {
        Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;

fn telemetry(col: SocketAddr, extra: &str) -> String {
    format!(
        "\n[telemetry]\notlp_endpoint = \"http://{col}\"\nservice_name = \"shardgate-test\"\n\
         export_interval_ms = 50\n{extra}\n"
    )
}

fn tenant() -> String {
    format!(
        "\n[[tenants]]\nname = \"team-traces\"\nkeys = [\"sha256:{}\"]\n",
        sha256_hex(KEY)
    )
}

/// A deployment answering 200 with a chat completion naming `model`, its usage and why it
/// stopped.
fn answering(model: &'static str) -> MockUpstream {
    let answer = serde_json::json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}
    });
    MockUpstream::start(json_ok(&answer.to_string()))
}

/// A deployment that answers 503.
fn unavailable() -> MockUpstream {
    MockUpstream::start(
        |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            write_response(
                stream,
                503,
                "application/json",
                br#"{"error":{"message":"overloaded"}}"#,
            )?;
            Ok(Action::KeepAlive)
        },
    )
}

fn chat(c: &mut Client, model: &str, extra_headers: &str) -> shardgate_tests::Response {
    let body = format!(
        r#"{{"model":"{model}","max_tokens":64,"messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
    );
    c.send(format!(
        "POST /v1/chat/completions?trace=1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

fn wait_spans(col: &MockUpstream, n: usize) -> Vec<Span> {
    let mut got = Vec::new();
    wait_until(Duration::from_secs(10), || {
        got = spans(col);
        got.len() >= n
    });
    got
}

/// The value of a `/metrics` sample (its name with labels, as written).
fn metric(text: &str, sample: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

#[test]
fn a_retried_call_has_a_server_span_and_one_attempt_span_per_attempt() {
    let col = collector(Duration::ZERO);
    let broken = unavailable();
    let good = answering("gpt-4o-2024-08-06");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n\
         [[upstreams]]\nname = \"broken\"\nendpoints = [\"http://{}\"]\n\n\
         [[upstreams]]\nname = \"good\"\nendpoints = [\"http://{}\"]\n\n\
         [[models]]\nname = \"gpt-4o\"\nfallbacks = [\"spare\"]\n\
         deployments = [{{ upstream = \"broken\", model = \"gpt-4o-broken\" }}]\n\n\
         [[models]]\nname = \"spare\"\ndeployments = [{{ upstream = \"good\", model = \"gpt-4o-2024-08-06\" }}]\n{}{}",
        broken.addr(),
        good.addr(),
        tenant(),
        telemetry(col.addr(), ""),
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    let incoming = format!(
        "traceparent: 00-{INCOMING_TRACE}-{INCOMING_SPAN}-01\r\ntracestate: vendor=abc\r\n"
    );
    let r = chat(&mut c, "gpt-4o", &incoming);
    assert_eq!(r.status, 200, "{}", r.summary());

    let all = wait_spans(&col, 3);
    assert_eq!(all.len(), 3, "one server span and two attempts: {all:#?}");
    let server: Vec<&Span> = all.iter().filter(|s| s.kind == SERVER).collect();
    let attempts: Vec<&Span> = all.iter().filter(|s| s.kind == CLIENT).collect();
    assert_eq!((server.len(), attempts.len()), (1, 2), "{all:#?}");
    let server = server[0];

    // The request's span continues the caller's trace.
    assert_eq!(hex(&server.trace_id), INCOMING_TRACE);
    assert_eq!(hex(&server.parent_span_id), INCOMING_SPAN);
    assert_eq!(server.name, "POST /v1/chat/completions");
    let a = &server.attributes;
    assert_eq!(attr_str(a, "http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        attr_str(a, "url.path").as_deref(),
        Some("/v1/chat/completions")
    );
    assert_eq!(attr_str(a, "url.scheme").as_deref(), Some("http"));
    assert_eq!(attr_int(a, "http.response.status_code"), Some(200));
    assert_eq!(attr_str(a, "client.address").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        attr_str(a, "shardgate.tenant").as_deref(),
        Some("team-traces")
    );
    assert!(server
        .status
        .as_ref()
        .is_none_or(|s| s.code != StatusCode::Error as i32));
    assert!(server.end_time_unix_nano >= server.start_time_unix_nano);

    // Each attempt is a child of the request's span, in order.
    let mut attempts = attempts;
    attempts.sort_by_key(|s| attr_int(&s.attributes, "shardgate.attempt"));
    for (i, s) in attempts.iter().enumerate() {
        assert_eq!(s.trace_id, server.trace_id);
        assert_eq!(
            s.parent_span_id, server.span_id,
            "attempt {i} is the request's child"
        );
        assert_eq!(attr_int(&s.attributes, "shardgate.attempt"), Some(i as i64));
        assert_eq!(
            attr_str(&s.attributes, "gen_ai.operation.name").as_deref(),
            Some("chat")
        );
        assert_eq!(
            attr_str(&s.attributes, "gen_ai.provider.name").as_deref(),
            Some("openai")
        );
        assert_eq!(
            attr_int(&s.attributes, "gen_ai.request.max_tokens"),
            Some(64)
        );
        assert_eq!(
            attr_str(&s.attributes, "server.address").as_deref(),
            Some("127.0.0.1")
        );
        assert!(s.start_time_unix_nano >= server.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= server.end_time_unix_nano);
    }
    let (failed, ok) = (attempts[0], attempts[1]);
    assert_eq!(failed.name, "chat gpt-4o-broken");
    assert_eq!(
        attr_str(&failed.attributes, "error.type").as_deref(),
        Some("503")
    );
    assert_eq!(
        attr_int(&failed.attributes, "server.port"),
        Some(i64::from(broken.addr().port()))
    );
    assert_eq!(
        failed.status.as_ref().map(|s| s.code),
        Some(StatusCode::Error as i32)
    );
    assert_eq!(ok.name, "chat gpt-4o-2024-08-06");
    let o = &ok.attributes;
    assert_eq!(attr_str(o, "error.type"), None);
    assert_eq!(
        attr_str(o, "gen_ai.response.model").as_deref(),
        Some("gpt-4o-2024-08-06")
    );
    assert_eq!(attr_int(o, "gen_ai.usage.input_tokens"), Some(12));
    assert_eq!(attr_int(o, "gen_ai.usage.output_tokens"), Some(7));
    assert_eq!(attr_int(o, "http.response.status_code"), Some(200));
    match attr(o, "gen_ai.response.finish_reasons") {
        Some(Value::ArrayValue(v)) => {
            let reasons: Vec<_> = v
                .values
                .iter()
                .filter_map(|x| match x.value.as_ref()? {
                    Value::StringValue(s) => Some(s.as_str()),
                    _ => None,
                })
                .collect();
            assert_eq!(reasons, ["stop"]);
        }
        other => panic!("finish reasons: {other:?}"),
    }

    // Each upstream got its own attempt's traceparent (the caller's replaced), the caller's
    // tracestate unchanged.
    for (up, span) in [(&broken, failed), (&good, ok)] {
        let reqs = up.requests();
        let req = reqs.first().expect("a request upstream");
        assert_eq!(
            req.headers_named("traceparent"),
            [format!("00-{INCOMING_TRACE}-{}-01", hex(&span.span_id)).as_str()]
        );
        assert_eq!(req.header("tracestate"), Some("vendor=abc"));
    }
    // Never the prompt, the answer, the key or the query.
    for req in col.requests() {
        let body = String::from_utf8_lossy(&req.body);
        for secret in [PROMPT, "Hi there", KEY, "trace=1"] {
            assert!(!body.contains(secret), "{secret:?} exported");
        }
    }
    // The same attempts in the GenAI metrics.
    let m = gw.metrics();
    let series = |model: &str| {
        format!(
            "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"{model}\""
        )
    };
    let failed = series("gpt-4o-broken");
    let ok = series("gpt-4o-2024-08-06");
    for (sample, want) in [
        (
            format!(
                "gen_ai_client_operation_duration_seconds_count{{{failed},error_type=\"503\"}}"
            ),
            1,
        ),
        (
            format!("gen_ai_client_operation_duration_seconds_count{{{ok}}}"),
            1,
        ),
        (
            format!("gen_ai_client_token_usage_sum{{{ok},gen_ai_token_type=\"input\"}}"),
            12,
        ),
        (
            format!("gen_ai_client_token_usage_sum{{{ok},gen_ai_token_type=\"output\"}}"),
            7,
        ),
        (
            format!(
                "gen_ai_client_token_usage_bucket{{{ok},gen_ai_token_type=\"output\",le=\"16\"}}"
            ),
            1,
        ),
        (
            format!(
                "gen_ai_client_token_usage_bucket{{{ok},gen_ai_token_type=\"output\",le=\"4\"}}"
            ),
            0,
        ),
    ] {
        assert_eq!(metric(&m, &sample), Some(want), "{sample} in:\n{m}");
    }
    // A failed attempt read no usage; a call that was not streamed has no first chunk.
    assert!(
        !m.contains(&format!("gen_ai_client_token_usage_count{{{failed}")),
        "{m}"
    );
    assert!(
        !m.contains("gen_ai_client_operation_time_to_first_chunk_seconds_count{"),
        "{m}"
    );
}

/// An upstream that waits `delay`, then streams two events naming itself, with
/// `finish_reason` and usage, and `[DONE]`.
fn streamer(name: &'static str, delay: Duration) -> MockUpstream {
    MockUpstream::start(
        move |_req: &Request, stream: &mut TcpStream| -> io::Result<Action> {
            sleep(delay);
            stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
            )?;
            let first = format!(
                "data: {{\"model\":\"{name}-model\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{name}\"}},\"finish_reason\":null}}]}}\n\n"
            );
            write_chunk(stream, first.as_bytes())?;
            sleep(Duration::from_millis(30));
            let last = format!(
                "data: {{\"model\":\"{name}-model\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"length\"}}],\
                 \"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}}}\n\n"
            );
            write_chunk(stream, last.as_bytes())?;
            write_chunk(stream, b"data: [DONE]\n\n")?;
            stream.write_all(b"0\r\n\r\n")?;
            Ok(Action::KeepAlive)
        },
    )
}

#[test]
fn a_hedged_stream_has_a_span_for_each_attempt_and_the_winner_its_first_token() {
    let col = collector(Duration::ZERO);
    let slow = streamer("slow", Duration::from_millis(1500));
    let fast = streamer("fast", Duration::ZERO);
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n\
         [[upstreams]]\nname = \"slow\"\nendpoints = [\"http://{}\"]\n\n\
         [[upstreams]]\nname = \"fast\"\nendpoints = [\"http://{}\"]\n\n\
         [[models]]\nname = \"hedged\"\nstrategy = \"round_robin\"\nhedge_after_ms = 100\n\
         deployments = [{{ upstream = \"slow\" }}, {{ upstream = \"fast\" }}]\n{}{}",
        slow.addr(),
        fast.addr(),
        tenant(),
        telemetry(col.addr(), ""),
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    // Round robin: one of two requests goes first to the slow deployment and is hedged.
    for _ in 0..2 {
        let body =
            r#"{"model":"hedged","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
        c.send(format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert!(r.body_str().contains("\"fast\""), "{}", r.body_str());
    }
    // Two server spans; the plain request has one attempt, the hedged one two.
    let all = wait_spans(&col, 5);
    let servers: Vec<&Span> = all.iter().filter(|s| s.kind == SERVER).collect();
    assert_eq!(servers.len(), 2, "{all:#?}");
    let mut by_parent: HashMap<Vec<u8>, Vec<&Span>> = HashMap::new();
    for s in all.iter().filter(|s| s.kind == CLIENT) {
        by_parent
            .entry(s.parent_span_id.clone())
            .or_default()
            .push(s);
    }
    let hedged = servers
        .iter()
        .find_map(|s| by_parent.get(&s.span_id).filter(|a| a.len() == 2))
        .unwrap_or_else(|| panic!("no request with two attempts: {all:#?}"));
    let hedge = hedged
        .iter()
        .find(|s| attr_bool(&s.attributes, "shardgate.hedge") == Some(true))
        .expect("the hedge's span");
    let first = hedged
        .iter()
        .find(|s| attr_bool(&s.attributes, "shardgate.hedge").is_none())
        .expect("the first attempt's span");
    assert_eq!(
        attr_int(&first.attributes, "server.port"),
        Some(i64::from(slow.addr().port()))
    );
    assert_eq!(
        attr_int(&hedge.attributes, "server.port"),
        Some(i64::from(fast.addr().port()))
    );
    // The hedge answered: its first token, its model, finish reason and usage; the first
    // attempt was outrun: no status, no error, and it ended before the slow upstream answered.
    let h = &hedge.attributes;
    assert_eq!(attr_bool(h, "gen_ai.request.stream"), Some(true));
    assert_eq!(
        attr_str(h, "gen_ai.response.model").as_deref(),
        Some("fast-model")
    );
    assert_eq!(attr_int(h, "gen_ai.usage.output_tokens"), Some(2));
    assert!(hedge.start_time_unix_nano >= first.start_time_unix_nano + 90_000_000);
    let event = hedge
        .events
        .iter()
        .find(|e| e.name == "shardgate.first_token")
        .expect("the first-token event");
    assert!(event.time_unix_nano >= hedge.start_time_unix_nano);
    assert!(event.time_unix_nano <= hedge.end_time_unix_nano);
    assert!(matches!(
        attr(h, "gen_ai.response.time_to_first_chunk"),
        Some(Value::DoubleValue(s)) if *s > 0.0 && *s < 1.0
    ));
    assert_eq!(
        attr_int(&first.attributes, "http.response.status_code"),
        None
    );
    assert_eq!(attr_str(&first.attributes, "error.type"), None);
    assert!(first.events.is_empty());
    assert!(first.end_time_unix_nano < first.start_time_unix_nano + 1_000_000_000);
    // Both answered streams' first chunks are in the metrics, under 0.64 s.
    let m = gw.metrics();
    let sum_of = |prefix: &str, needle: &str| -> u64 {
        m.lines()
            .filter(|l| l.starts_with(prefix) && l.contains(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let first_chunk = "gen_ai_client_operation_time_to_first_chunk_seconds";
    assert_eq!(sum_of(&format!("{first_chunk}_count{{"), ""), 2, "{m}");
    // The outrun attempt was cut off, not finished: two operations, not three.
    let durations = "gen_ai_client_operation_duration_seconds_count{";
    assert_eq!(sum_of(durations, ""), 2, "{m}");
    assert_eq!(
        sum_of(&format!("{first_chunk}_bucket{{"), "le=\"0.64\""),
        2,
        "{m}"
    );
}

#[test]
fn the_genai_metrics_are_kept_without_telemetry() {
    let up = answering("m-2026");
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n\
         [[upstreams]]\nname = \"a\"\nendpoints = [\"http://{}\"]\n\n\
         [[models]]\nname = \"m\"\ndeployments = [{{ upstream = \"a\", model = \"m-2026\" }}]\n{}",
        up.addr(),
        tenant()
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    for _ in 0..3 {
        let r = chat(&mut c, "m", "");
        assert_eq!(r.status, 200, "{}", r.summary());
    }
    // No [telemetry]: the upstream gets no traceparent of ours; the metrics count anyway.
    assert_eq!(up.requests()[0].header("traceparent"), None);
    let m = gw.metrics();
    let l = "gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"m-2026\"";
    let count = format!("gen_ai_client_operation_duration_seconds_count{{{l}}}");
    assert_eq!(metric(&m, &count), Some(3), "{m}");
    let input = format!("gen_ai_client_token_usage_sum{{{l},gen_ai_token_type=\"input\"}}");
    assert_eq!(metric(&m, &input), Some(36), "{m}");
    assert!(
        m.contains("# TYPE gen_ai_client_token_usage histogram"),
        "{m}"
    );
    assert!(
        !m.contains("shardgate_trace_spans"),
        "no span counters without [telemetry]"
    );
}

#[test]
fn a_plain_route_has_an_http_client_span_and_json_export_works() {
    let col = collector(Duration::ZERO);
    let up = MockUpstream::start(shardgate_tests::echo());
    let cfg = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n\n\
         [[upstreams]]\nname = \"web\"\nendpoints = [\"http://{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"web\"\n{}",
        up.addr(),
        telemetry(col.addr(), "protocol = \"http/json\""),
    );
    let gw = Gateway::start(&cfg);
    let mut c = Client::connect(gw.addr());
    assert_eq!(c.get("/items/42?key=secret").status, 200);
    let all = wait_spans(&col, 2);
    assert!(col
        .requests()
        .iter()
        .all(|r| r.header("content-type") == Some("application/json")));
    let server = all.iter().find(|s| s.kind == SERVER).expect("server span");
    let attempt = all.iter().find(|s| s.kind == CLIENT).expect("client span");
    // A proxied path is not a route: the span is named by the method alone.
    assert_eq!(server.name, "GET");
    assert_eq!(
        attr_str(&server.attributes, "url.path").as_deref(),
        Some("/items/42")
    );
    assert_eq!(attempt.name, "GET");
    assert_eq!(attempt.parent_span_id, server.span_id);
    assert_eq!(attr_str(&attempt.attributes, "gen_ai.operation.name"), None);
    assert_eq!(
        attr_int(&attempt.attributes, "http.response.status_code"),
        Some(200)
    );
    // No incoming traceparent: a new trace, and the upstream continues it.
    assert!(server.parent_span_id.is_empty());
    let sent = up.requests()[0].header("traceparent").map(str::to_owned);
    assert_eq!(
        sent,
        Some(format!(
            "00-{}-{}-01",
            hex(&server.trace_id),
            hex(&attempt.span_id)
        ))
    );
}

#[test]
fn requests_are_served_while_the_collector_is_down_or_slow_and_lost_spans_are_counted() {
    let up = answering("m");
    let models = |up: SocketAddr| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n\
             [[upstreams]]\nname = \"a\"\nendpoints = [\"http://{up}\"]\n\n\
             [[models]]\nname = \"m\"\ndeployments = [{{ upstream = \"a\" }}]\n{}",
            tenant()
        )
    };
    // Down: nothing listens there.
    let down = free_port();
    let gw = Gateway::start(&(models(up.addr()) + &telemetry(down, "export_timeout_ms = 200")));
    let mut c = Client::connect(gw.addr());
    for _ in 0..20 {
        assert_eq!(chat(&mut c, "m", "").status, 200);
    }
    let mut m = String::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            m = gw.metrics();
            metric(
                &m,
                "shardgate_trace_spans_dropped_total{reason=\"export_failed\"}",
            )
            .is_some_and(|n| n >= 40)
        }),
        "the 40 spans of 20 requests were not counted as dropped:\n{m}"
    );
    assert!(metric(&m, "shardgate_trace_exports_failed_total").is_some_and(|n| n >= 1));
    assert_eq!(metric(&m, "shardgate_trace_spans_exported_total"), Some(0));
    drop(gw);

    // Slow: the collector answers after 3 s, past the export's 200 ms limit, and the queue
    // holds one batch: while one export waits, the shard's further spans are dropped at once.
    let slow = collector(Duration::from_secs(3));
    let gw = Gateway::start(
        &(models(up.addr())
            + &telemetry(
                slow.addr(),
                "export_timeout_ms = 200\nqueue_spans_max = 128",
            )),
    );
    let mut c = Client::connect(gw.addr());
    let served = std::time::Instant::now();
    for _ in 0..300 {
        assert_eq!(chat(&mut c, "m", "").status, 200);
    }
    // Nothing waited for the collector: 300 calls well within one of its answers.
    assert!(
        served.elapsed() < Duration::from_secs(3),
        "requests waited for the collector: {:?}",
        served.elapsed()
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            m = gw.metrics();
            metric(
                &m,
                "shardgate_trace_spans_dropped_total{reason=\"queue_full\"}",
            )
            .is_some_and(|n| n > 0)
                && metric(&m, "shardgate_trace_exports_failed_total").is_some_and(|n| n > 0)
        }),
        "a slow collector's lost spans were not counted:\n{m}"
    );
}

#[test]
fn roots_are_sampled_at_the_ratio_and_a_sampled_parent_is_followed() {
    let col = collector(Duration::ZERO);
    let up = answering("m");
    let cfg = |ratio: &str| {
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\n\n\
             [[upstreams]]\nname = \"a\"\nendpoints = [\"http://{}\"]\n\n\
             [[models]]\nname = \"m\"\ndeployments = [{{ upstream = \"a\" }}]\n{}{}",
            up.addr(),
            tenant(),
            telemetry(col.addr(), &format!("sample_ratio = {ratio}")),
        )
    };
    // Ratio 0: no root is recorded, but the trace still goes upstream (flags 00), and a caller
    // that sampled its trace is followed.
    let gw = Gateway::start(&cfg("0.0"));
    let mut c = Client::connect(gw.addr());
    for _ in 0..20 {
        assert_eq!(chat(&mut c, "m", "").status, 200);
    }
    let sampled = format!("traceparent: 00-{INCOMING_TRACE}-{INCOMING_SPAN}-01\r\n");
    assert_eq!(chat(&mut c, "m", &sampled).status, 200);
    let all = wait_spans(&col, 2);
    sleep(Duration::from_millis(300));
    let all = if spans(&col).len() > all.len() {
        spans(&col)
    } else {
        all
    };
    assert_eq!(all.len(), 2, "only the sampled parent's request: {all:#?}");
    assert!(all.iter().all(|s| hex(&s.trace_id) == INCOMING_TRACE));
    let reqs = up.requests();
    assert!(reqs[..20].iter().all(|r| r
        .header("traceparent")
        .is_some_and(|t| t.len() == 55 && t.ends_with("-00"))));
    drop(gw);

    // Ratio 0.5: about half of 200 roots.
    let before = spans(&col).len();
    let mut gw = Gateway::start(&cfg("0.5"));
    let mut c = Client::connect(gw.addr());
    for _ in 0..200 {
        assert_eq!(chat(&mut c, "m", "").status, 200);
    }
    drop(c);
    // The engine sends its last spans as it stops.
    gw.sigterm();
    assert!(
        gw.wait_exit(Duration::from_secs(15)).is_some(),
        "the engine did not stop"
    );
    let servers = spans(&col)[before..]
        .iter()
        .filter(|s| s.kind == SERVER)
        .count();
    assert!(
        (60..=140).contains(&servers),
        "{servers} of 200 sampled at 0.5"
    );
}
