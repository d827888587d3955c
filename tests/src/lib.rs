//! End-to-end test harness for shardgate: start the real `shardgate` binary as a process, put a
//! scriptable std-only mock upstream behind it, and talk to it with a raw-bytes HTTP/1.1 client.
//!
//! - [`shardgate_bin`] builds the engine's binaries once per test process and returns the path;
//!   [`bench_bin`] does the same for `shardgate-bench`, [`ctl_bin`] for `shardgate-ctl` and
//!   [`shardgate_tune_bin`] for `shardgate-tune`.
//! - [`Gateway`] starts `shardgate --config FILE` and waits for its start-up line.
//! - [`MockUpstream`] is a thread-per-connection HTTP/1.1 server whose handler writes raw bytes.
//! - [`responses_mock`]: a strict mock of OpenAI's Responses API (`POST /v1/responses`).
//! - [`gemini_mock`]: a strict mock of the Google Gemini API (paths, key, fields, thought
//!   signatures), answering text, function calls and streams as Gemini does.
//! - [`BenchUpstream`] runs `shardgate-bench upstream`, the mock OpenAI-compatible upstream.
//! - [`Load`] runs `shardgate-bench load`, the load generator, and reads its counts.
//! - [`Client`] sends raw bytes and parses responses, so tests can craft bad framing; over TCP
//!   or TLS ([`Client::connect_tls`]).
//! - [`bedrock_mock`]: a strict AWS Bedrock (Converse) mock that verifies SigV4 with its own
//!   implementation ([`bedrock_mock::BedrockMock`]).
//! - [`providers`]: what the provider tests share (client credentials, POSTs carrying them,
//!   one-upstream configs, JSON and SSE of answers).
//! - [`tls`]: a test CA and certificates ([`TestCa`]), rustls configs, a TLS [`MockUpstream`]
//!   ([`MockUpstream::start_tls`]), [`tls_handshake_only`].
//!
//! Every wait in here is bounded; see `README.md`.

pub mod bedrock_mock;
mod bench_upstream;
mod bin;
mod client;
mod config;
mod ctl;
mod gateway;
pub mod gemini_mock;
mod load;
pub mod providers;
pub mod python;
mod redis;
pub mod responses_mock;
#[cfg(test)]
mod selftest;
pub mod tls;
mod upstream;

use std::time::{Duration, Instant};

pub use bench_upstream::BenchUpstream;
pub use bin::{bench_bin, ctl_bin, shardgate_bin, shardgate_counted_bin, shardgate_tune_bin};
pub use client::{dechunk, split_head, Client, Closed, Response};
pub use config::{
    free_port, read_store, store_config, store_files_text, ConfigBuilder, Driver, DRIVERS,
    MOCK_ROUTE,
};
pub use ctl::{ctl_ok, ctl_status, new_key, run_ctl, spawn_ctl, CtlOutput, CTL_WAIT};
pub use gateway::{run_shardgate, Gateway, RunOutput};
pub use load::{Load, LoadCounts};
pub use redis::Redis;
pub use tls::{self_signed, tls_handshake_only, Leaf, TempDir, TestCa};
pub use upstream::{
    content_events, echo, hang, json_ok, sse, sse_event, write_chunk, write_response, Action,
    Handler, MockUpstream, Request, TlsHandler, TlsHandshake, TlsServerStream,
};

/// Default bound on any single wait for the gateway (a response, a close, a start-up line).
pub const WAIT: Duration = Duration::from_secs(10);

/// Sleeps the calling test thread. (The workspace bans `std::thread::sleep` because it blocks a
/// shard's runtime; test threads are not shards.)
#[allow(clippy::disallowed_methods)]
pub fn sleep(d: Duration) {
    std::thread::sleep(d);
}

/// Polls `cond` every 5 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(Duration::from_millis(5));
    }
}

/// One request to the admin API at `gw`'s admin listener (with `token` as its bearer, and a
/// JSON `body`): the status and the JSON answer.
pub fn admin_request(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut c = Client::connect(gw.admin_addr());
    let body = body.map(ToString::to_string).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    c.send(format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\n{auth}Content-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    (r.status, r.json())
}

/// The SHA-256 of `key` as the config writes it after `sha256:`.
pub fn sha256_hex(key: &str) -> String {
    shardgate_engine::tenant::hex(&shardgate_engine::tenant::hash_key(key.as_bytes()))
}

/// `POST /v1/chat/completions` with `body` and `key` on `c`, and its answer.
pub fn post_chat(c: &mut Client, key: &str, body: &str) -> Response {
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    c.read_response()
}

/// A one-message chat completion for `model` with `key` on `c`, and its answer.
pub fn chat_keyed(c: &mut Client, key: &str, model: &str) -> Response {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#);
    post_chat(c, key, &body)
}

/// One chat completion for `model` with `key` on a fresh connection to `addr`: the status, and
/// the error's `code` when it is not 200 (empty otherwise).
pub fn chat_with_key(addr: std::net::SocketAddr, key: &str, model: &str) -> (u16, String) {
    let r = chat_keyed(&mut Client::connect(addr), key, model);
    let code = if r.status == 200 {
        String::new()
    } else {
        r.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    (r.status, code)
}

/// Asserts that `resp` is shardgate's own error answer: the given status, a JSON body of the shape
/// `{"error":{"message":"...","type":"...","param":null,"code":CODE}}`.
#[track_caller]
pub fn assert_error(resp: &Response, status: u16, code: &str) {
    if let Err(e) = check_error(resp, status, code) {
        panic!("{e}");
    }
}

/// [`assert_error`] that returns what is wrong instead of panicking.
pub fn check_error(resp: &Response, status: u16, code: &str) -> Result<(), String> {
    let fail = |what: &str| {
        Err(format!(
            "expected {status} {code}: {what}; got:\n{}",
            resp.summary()
        ))
    };
    if resp.status != status {
        return fail("wrong status");
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&resp.body) else {
        return fail("body is not JSON");
    };
    let Some(err) = v.get("error") else {
        return fail("no \"error\" object");
    };
    if !err.get("message").is_some_and(|m| m.is_string()) {
        return fail("error.message is not a string");
    }
    if !err.get("type").is_some_and(|m| m.is_string()) {
        return fail("error.type is not a string");
    }
    if !err.get("param").is_some_and(|m| m.is_null()) {
        return fail("error.param is not null");
    }
    if err.get("code").and_then(|c| c.as_str()) != Some(code) {
        return fail("wrong error.code");
    }
    match resp.header("content-type") {
        Some(ct) if ct.to_ascii_lowercase().starts_with("application/json") => Ok(()),
        _ => fail("Content-Type is not application/json"),
    }
}

/// Generates one `#[test]` per monoio driver for a function `fn name(driver: Driver)`:
/// `name::epoll` and `name::io_uring`. `SHARDGATE_TEST_DRIVERS=epoll` (a comma list) limits the
/// drivers run where io_uring is unavailable; a driver left out prints a skip note and passes.
#[macro_export]
macro_rules! per_driver {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[test]
                fn epoll() {
                    if $crate::Driver::Epoll.enabled() {
                        super::$name($crate::Driver::Epoll);
                    }
                }
                #[test]
                fn io_uring() {
                    if $crate::Driver::IoUring.enabled() {
                        super::$name($crate::Driver::IoUring);
                    }
                }
            }
        )+
    };
}

/// First value of the header `name` (case-insensitive) in a parsed message's header list.
pub(crate) fn header_value<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every value of the header `name` (case-insensitive), in order.
pub(crate) fn header_values<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// Waits at most `timeout` for `child` to exit.
pub(crate) fn wait_child_exit(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        sleep(std::time::Duration::from_millis(5));
    }
}

/// `net.ipv4.tcp_migrate_req` on (Linux ≥ 5.14): connections queued in a closing listener move
/// to another listener of its SO_REUSEPORT group. Turned on here when it is off and this
/// process may (root); `Err` says why it is not on.
pub fn migrate_req_on() -> Result<(), String> {
    const PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";
    match std::fs::read_to_string(PATH) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => {
            std::fs::write(PATH, "1").map_err(|e| format!("{PATH} is 0 and cannot be set: {e}"))
        }
        Err(e) => Err(format!("{PATH}: {e} (kernel older than 5.14?)")),
    }
}
