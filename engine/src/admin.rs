//! The admin listener: `/metrics`, `/health/liveness`, `/health/readiness`, and the admin API
//! (`/admin/v1/...`, [`crate::admin_api`]), on a plain std thread of its own (not a shard, no
//! monoio), off the hot path.
//!
//! Metrics and health come from the shared region ([`crate::control::stats::read`]), which
//! shards write without knowing it exists, so a slow scraper costs the shards nothing. The
//! admin API changes the tenant store and waits for the shards to run the change.
//!
//! Design, kept small because its traffic is a scraper and a health checker:
//! - one connection at a time, blocking `std::net`, every read and write under
//!   [`ADMIN_IO_TIMEOUT`], a request head of at most [`ADMIN_HEAD_BYTES_MAX`], one request per
//!   connection (`Connection: close`, always with `Content-Length`);
//! - the accept loop runs until the process exits: it keeps answering while the engine drains,
//!   so readiness can say 503 `draining` to the load balancer until the very end. Nothing joins
//!   the returned handle on shutdown; `main` simply exits;
//! - no `unwrap` on I/O: a failed accept is logged (once per error kind) and retried after
//!   `ADMIN_ACCEPT_RETRY`; a failed read or write drops that connection only.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::control::shm::Region;
use crate::control::{stats, unix_ms};
use crate::metrics::{self, Scrape, TenantLive};

/// Read and write timeout of an admin connection.
pub const ADMIN_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request head the admin listener reads, bytes.
pub const ADMIN_HEAD_BYTES_MAX: usize = 8 * 1024;
/// Header fields an admin request may have.
const ADMIN_HEADERS_MAX: usize = 32;
/// Bytes read and discarded after answering (a body nobody asked for), so that closing does
/// not reset the connection under the answer.
const ADMIN_DISCARD_BYTES_MAX: usize = 64 * 1024;
/// Pause after a failed accept (out of file descriptors, say), so the loop does not spin.
const ADMIN_ACCEPT_RETRY: Duration = Duration::from_millis(100);

const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
const JSON_CONTENT_TYPE: &str = "application/json";

/// What the admin thread reads.
#[derive(Debug)]
pub struct AdminState {
    pub region: &'static Region,
    /// `[server] instance`, shown in `shardgate_build_info`.
    pub instance: String,
    /// Set when the engine starts draining (SIGTERM): readiness answers 503 from then on.
    pub draining: Arc<AtomicBool>,
    /// `[fleet]`: the fleet's usage counters are read from its Redis for each scrape.
    pub fleet: Option<crate::config::FleetConfig>,
    /// The counting allocator's probe (`shardgate-counted` only): its totals go on `/metrics`
    /// as `shardgate_heap_*`.
    pub heap: Option<crate::metrics::HeapProbe>,
    /// The span pipeline (`[telemetry]`): its counters go on `/metrics`.
    pub spans: Option<Arc<crate::telemetry::span::Hub>>,
    /// Each shard's GenAI metrics.
    pub genai: Vec<Arc<crate::telemetry::genai::Block>>,
}

/// Serve `listener` on a new thread named `admin`. Runs until the process exits.
pub fn spawn(listener: TcpListener, state: AdminState) -> io::Result<JoinHandle<()>> {
    listener.set_nonblocking(false)?;
    std::thread::Builder::new()
        .name("admin".into())
        .spawn(move || serve(&listener, &state))
}

fn serve(listener: &TcpListener, state: &AdminState) {
    let mut warned: HashSet<io::ErrorKind> = HashSet::new();
    let mut head = vec![0u8; ADMIN_HEAD_BYTES_MAX];
    let mut answer = Vec::new();
    loop {
        match listener.accept() {
            Ok((stream, _peer)) => {
                if let Err(e) = handle(stream, state, &mut head, &mut answer) {
                    tracing::debug!("admin connection: {e}");
                }
            }
            Err(e) => {
                if warned.insert(e.kind()) {
                    tracing::warn!("admin listener: accept failed: {e} (not logged again)");
                }
                pause(ADMIN_ACCEPT_RETRY);
            }
        }
    }
}

#[allow(
    clippy::disallowed_methods,
    reason = "the admin thread is a plain std thread, not a shard: it may block"
)]
fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Read one request head, answer it, close.
fn handle(
    mut stream: TcpStream,
    state: &AdminState,
    head: &mut [u8],
    answer: &mut Vec<u8>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT))?;
    let mut len = 0;
    let reply = loop {
        if len == head.len() {
            break Reply::error(431, "request head too large", "header_too_large");
        }
        let n = stream.read(&mut head[len..])?;
        if n == 0 {
            // Closed before a whole head: nobody to answer.
            return Ok(());
        }
        len += n;
        let mut headers = [httparse::EMPTY_HEADER; ADMIN_HEADERS_MAX];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head[..len]) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(head_len)) => {
                let (method, target) = (req.method.unwrap_or(""), req.path.unwrap_or(""));
                if !target.starts_with("/admin/v1/") {
                    break route(method, target, state);
                }
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| h.value)
                };
                let body = match read_body(&mut stream, &head[head_len..len], header) {
                    Ok(b) => b,
                    Err(reply) => break reply,
                };
                let (path, query) = target.split_once('?').unwrap_or((target, ""));
                let api = crate::admin_api::ApiRequest {
                    method,
                    path,
                    query,
                    authorization: header("authorization"),
                    body: &body,
                };
                let (status, value) = crate::admin_api::answer(&api, state.region, &state.instance);
                break Reply::json(status, &value);
            }
            Err(_) => break Reply::error(400, "malformed request head", "bad_request"),
        }
    };
    answer.clear();
    reply.write(answer);
    stream.write_all(answer)?;
    stream.flush()?;
    // Lingering close: say we are done, then read what the client still sends (a body) until
    // it closes, so the kernel does not answer unread bytes with a reset that could destroy
    // the response in flight. Bounded by bytes and by the read timeout.
    stream.shutdown(Shutdown::Write)?;
    let mut discarded = 0;
    while discarded < ADMIN_DISCARD_BYTES_MAX {
        match stream.read(head) {
            Ok(0) | Err(_) => break,
            Ok(n) => discarded += n,
        }
    }
    Ok(())
}

/// The body of an admin API request: `Content-Length` bytes (at most
/// [`crate::admin_api::ADMIN_BODY_BYTES_MAX`]), `already` of them read with the head.
fn read_body<'h>(
    stream: &mut TcpStream,
    already: &[u8],
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Result<Vec<u8>, Reply> {
    if header("transfer-encoding").is_some() {
        return Err(Reply::error(
            411,
            "the admin API takes a body with Content-Length",
            "length_required",
        ));
    }
    let len = match header("content-length") {
        None => 0,
        Some(v) => match std::str::from_utf8(v)
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
        {
            Some(n) => n,
            None => return Err(Reply::error(400, "bad Content-Length", "bad_request")),
        },
    };
    let max = crate::admin_api::ADMIN_BODY_BYTES_MAX;
    if len > max {
        return Err(Reply::error(
            413,
            &format!("the admin API takes bodies of at most {max} bytes"),
            "body_too_large",
        ));
    }
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(&already[..already.len().min(len)]);
    let mut chunk = [0u8; 4096];
    while body.len() < len {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => {
                return Err(Reply::error(400, "the body ended early", "bad_request"));
            }
            Ok(n) => body.extend_from_slice(&chunk[..n.min(len - body.len())]),
        }
    }
    Ok(body)
}

/// An answer: status, content type, body.
#[derive(Debug)]
struct Reply {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn json(status: u16, body: &serde_json::Value) -> Reply {
        Reply {
            status,
            content_type: JSON_CONTENT_TYPE,
            body: body.to_string(),
        }
    }

    /// The OpenAI-style error body the data plane answers with too.
    fn error(status: u16, message: &str, code: &str) -> Reply {
        Reply::json(
            status,
            &serde_json::json!({
                "error": {
                    "message": message,
                    "type": "invalid_request_error",
                    "param": null,
                    "code": code,
                }
            }),
        )
    }

    fn write(&self, out: &mut Vec<u8>) {
        crate::http::write_status_line(out, self.status);
        out.extend_from_slice(b"content-type: ");
        out.extend_from_slice(self.content_type.as_bytes());
        out.extend_from_slice(b"\r\ncontent-length: ");
        crate::http::write_decimal(out, self.body.len() as u64);
        out.extend_from_slice(b"\r\n");
        if self.status == 405 {
            out.extend_from_slice(b"allow: GET\r\n");
        }
        out.extend_from_slice(b"cache-control: no-store\r\nconnection: close\r\n\r\n");
        out.extend_from_slice(self.body.as_bytes());
    }
}

fn route(method: &str, target: &str, state: &AdminState) -> Reply {
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let known = matches!(path, "/metrics" | "/health/liveness" | "/health/readiness");
    if !known {
        return Reply::error(
            404,
            "no such admin endpoint; try /metrics, /health/liveness or /health/readiness",
            "not_found",
        );
    }
    if method != "GET" {
        return Reply::error(405, "admin endpoints answer GET only", "method_not_allowed");
    }
    match path {
        "/metrics" => {
            // Read first, before this scrape's own allocations.
            let heap = state.heap.map(|probe| probe());
            let totals = stats::read(state.region);
            let now_ns = crate::clock::Now::read().unix_ns;
            let tenant_live: Vec<TenantLive> = state
                .region
                .tenants()
                // Upstream caps share the table under names starting with \u{1}.
                .filter(|(name, _)| !name.starts_with('\u{1}'))
                .map(|(name, c)| {
                    let tokens = c.budget_tokens.load(Ordering::Relaxed);
                    let window_ms = c.budget_window_ms.load(Ordering::Relaxed);
                    let budget_remaining = (tokens > 0).then(|| {
                        crate::limit::Budget::new(tokens, window_ms.saturating_mul(1_000_000))
                            .remaining(&c.budget, now_ns)
                    });
                    TenantLive {
                        name,
                        inflight: c.inflight.load(Ordering::Relaxed),
                        budget_remaining,
                    }
                })
                .collect();
            // The fleet's usage (a round trip to its Redis, at most its timeout; left out of
            // the scrape when Redis does not answer).
            let fleet_usage = state.fleet.as_ref().and_then(|f| {
                let mut conn = shardgate_core::fleet::connect(f).ok()?;
                shardgate_core::fleet::usage(&mut conn).ok()
            });
            let mut body = String::with_capacity(16 * 1024);
            metrics::render(
                &Scrape {
                    tenant_live: &tenant_live,
                    totals: &totals,
                    instance: &state.instance,
                    started_unix_ms: state
                        .region
                        .header()
                        .started_unix_ms
                        .load(Ordering::Relaxed),
                    now_unix_ms: unix_ms(),
                    ring_head: state.region.ring().head(),
                    draining: draining(state),
                    fleet: {
                        let h = state.region.header();
                        (h.fleet.load(Ordering::Relaxed) == 1).then(|| metrics::FleetLive {
                            redis_up: h.fleet_redis_up.load(Ordering::Relaxed) == 1,
                            redis_rtt_us: h.fleet_redis_rtt_us.load(Ordering::Relaxed),
                            instances: h.fleet_instances.load(Ordering::Relaxed),
                            synced_unix_ms: h.fleet_synced_unix_ms.load(Ordering::Relaxed),
                        })
                    },
                    fleet_usage: fleet_usage.as_ref(),
                    heap,
                    spans: state
                        .spans
                        .as_ref()
                        .map(|h| metrics::SpanCounts::read(&h.stats)),
                    genai: &crate::telemetry::genai::totals(&state.genai),
                },
                &mut body,
            );
            Reply {
                status: 200,
                content_type: METRICS_CONTENT_TYPE,
                body,
            }
        }
        "/health/liveness" => Reply::json(200, &serde_json::json!({"status": "ok"})),
        _ => match not_ready(state) {
            None => Reply::json(200, &serde_json::json!({"status": "ready"})),
            Some(reason) => Reply::json(
                503,
                &serde_json::json!({"status": "not ready", "reason": reason}),
            ),
        },
    }
}

/// Draining: the flag `main` sets, or the region's (which ctl reads too).
fn draining(state: &AdminState) -> bool {
    state.draining.load(Ordering::Acquire)
        || state.region.header().draining.load(Ordering::Acquire) == 1
}

/// Why the instance should not get traffic, or `None` when every shard runs with a config.
fn not_ready(state: &AdminState) -> Option<String> {
    if draining(state) {
        return Some("draining".into());
    }
    let shards = state.region.shards();
    if shards == 0 {
        return Some("no shards".into());
    }
    for id in 0..shards {
        let info = &state.region.shard(id).info.0;
        if info.running.load(Ordering::Acquire) != 1 {
            return Some(format!("shard {id} not running"));
        }
        if info.config_version.load(Ordering::Acquire) == 0 {
            return Some(format!("shard {id} has no config yet"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::control::stats::set;

    struct Answer {
        status: u16,
        head: String,
        body: String,
    }

    fn request(addr: SocketAddr, raw: &[u8]) -> Answer {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(raw).expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).expect("read");
        let text = String::from_utf8(out).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status");
        let cl: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.parse().ok())
            .expect("content-length");
        assert_eq!(cl, body.len(), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        Answer {
            status,
            head: head.to_owned(),
            body: body.to_owned(),
        }
    }

    fn get(addr: SocketAddr, path: &str) -> Answer {
        request(
            addr,
            format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
        )
    }

    fn json(a: &Answer) -> serde_json::Value {
        serde_json::from_str(&a.body).expect("json body")
    }

    fn start() -> (SocketAddr, &'static Region, Arc<AtomicBool>) {
        let region: &'static Region = Box::leak(Box::new(Region::anonymous(2).expect("anon")));
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let draining = Arc::new(AtomicBool::new(false));
        let h = spawn(
            listener,
            AdminState {
                region,
                instance: "unit".into(),
                draining: draining.clone(),
                fleet: None,
                heap: None,
                spans: None,
                genai: Vec::new(),
            },
        )
        .expect("spawn");
        assert_eq!(h.thread().name(), Some("admin"));
        (addr, region, draining)
    }

    #[test]
    fn metrics_and_liveness() {
        let (addr, region, _) = start();
        set(&region.shard(1).info.0.connections, 5);
        let a = get(addr, "/metrics");
        assert_eq!(a.status, 200);
        assert!(
            a.head
                .contains("content-type: text/plain; version=0.0.4; charset=utf-8"),
            "{}",
            a.head
        );
        assert!(a.body.contains("# TYPE shardgate_connections gauge\n"));
        assert!(a.body.contains("shardgate_connections{shard=\"1\"} 5\n"));
        assert!(a.body.contains("instance_name=\"unit\""));
        // A query string does not change the endpoint.
        assert_eq!(get(addr, "/metrics?x=1").status, 200);
        let l = get(addr, "/health/liveness");
        assert_eq!(l.status, 200);
        assert_eq!(l.body, r#"{"status":"ok"}"#);
    }

    #[test]
    fn readiness_follows_shards_config_and_draining() {
        let (addr, region, draining) = start();
        let r = get(addr, "/health/readiness");
        assert_eq!(r.status, 503);
        assert_eq!(json(&r)["reason"], "shard 0 not running");
        assert_eq!(json(&r)["status"], "not ready");
        for id in 0..2 {
            set(&region.shard(id).info.0.running, 1);
        }
        let r = get(addr, "/health/readiness");
        assert_eq!(r.status, 503);
        assert_eq!(json(&r)["reason"], "shard 0 has no config yet");
        set(&region.shard(0).info.0.config_version, 1);
        let r = get(addr, "/health/readiness");
        assert_eq!(json(&r)["reason"], "shard 1 has no config yet");
        set(&region.shard(1).info.0.config_version, 1);
        let r = get(addr, "/health/readiness");
        assert_eq!(r.status, 200);
        assert_eq!(r.body, r#"{"status":"ready"}"#);
        draining.store(true, Ordering::Release);
        let r = get(addr, "/health/readiness");
        assert_eq!(r.status, 503);
        assert_eq!(json(&r)["reason"], "draining");
        assert!(get(addr, "/metrics")
            .body
            .contains("\nshardgate_draining 1\n"));
    }

    #[test]
    fn errors_are_openai_shaped() {
        let (addr, _, _) = start();
        let a = get(addr, "/nope");
        assert_eq!(a.status, 404);
        let e = json(&a);
        assert_eq!(e["error"]["code"], "not_found");
        assert_eq!(e["error"]["type"], "invalid_request_error");
        assert!(e["error"]["param"].is_null());
        assert!(e["error"]["message"].is_string());

        let a = request(
            addr,
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        );
        assert_eq!(a.status, 405);
        assert!(a.head.contains("\r\nallow: GET"), "{}", a.head);
        assert_eq!(json(&a)["error"]["code"], "method_not_allowed");

        let a = request(addr, b"NOT HTTP\r\n\r\n");
        assert_eq!(a.status, 400);
        assert_eq!(json(&a)["error"]["code"], "bad_request");

        let mut big = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
        big.resize(ADMIN_HEAD_BYTES_MAX + 100, b'a');
        let a = request(addr, &big);
        assert_eq!(a.status, 431);

        // A client that connects and goes away does not stop the listener.
        drop(TcpStream::connect(addr).expect("connect"));
        assert_eq!(get(addr, "/health/liveness").status, 200);
    }
}
