//! The mock's answers, free of I/O: a parsed request, the knobs, the random draws and a stamp
//! (clock and request number) in; a [`Plan`] out: the response bytes cut into timed frames, and
//! what to do with the connection afterwards. The connection loop only sleeps and writes.
//!
//! A plan's buffers are reused from request to request, so a warm connection answers a
//! non-streaming request without allocating (apart from the JSON parser's scratch for escapes).

use shardgate_core::json::write_str;

use super::body::LlmRequest;
use super::http::{Refusal, Request};

/// Model name used when a request names none, and listed by `GET /v1/models`.
pub const DEFAULT_MODEL: &str = "mock";
/// Dimension of the mock's embeddings.
pub const EMBEDDING_DIM: usize = 8;
/// Most inputs one embeddings request may carry (OpenAI's own limit).
pub const EMBEDDING_INPUTS_MAX: u64 = 2048;
/// Most answer chunks (`--chunks`).
pub const CHUNKS_MAX: u32 = 10_000;

/// The answer's words, one per chunk (cycled). None needs JSON escaping.
const WORDS: [&str; 16] = [
    "This",
    "is",
    "a",
    "mock",
    "answer",
    "from",
    "shardgate-bench,",
    "one",
    "word",
    "per",
    "chunk,",
    "to",
    "test",
    "gateways",
    "end",
    "to",
];
/// The mock's embedding vector (every input gets the same one).
/// The reasoning chat answers carry with `--reasoning`.
pub const REASONING: &str = "The user greets me; a friendly greeting back.";
/// The arguments of the tool calls `--tools` answers with, and the pieces they are streamed in.
pub const TOOL_ARGUMENTS: [&str; 2] = ["{\"query\":", "\"mock\"}"];
/// The most characters of a tool result `--tools` quotes.
pub const TOOL_QUOTE_CHARS_MAX: usize = 40;
const EMBEDDING: &str = "[0.0125,-0.025,0.0375,-0.05,0.0625,-0.075,0.0875,-0.1]";
const MODELS: &str = r#"{"object":"list","data":[{"id":"mock","object":"model","created":0,"owned_by":"shardgate-bench"}]}"#;

const _: () = assert!(EMBEDDING_DIM == 8, "EMBEDDING holds 8 values");

/// The behaviour knobs (see the CLI for each one's meaning).
#[derive(Debug, Clone, PartialEq)]
pub struct Knobs {
    pub latency_ms: u64,
    pub ttft_ms: u64,
    pub chunks: u32,
    pub chunk_interval_ms: u64,
    pub fail_rate: f64,
    pub fail_status: u16,
    pub reset_rate: f64,
    pub echo: bool,
    pub reasoning: bool,
    pub tools: bool,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            latency_ms: 0,
            ttft_ms: 0,
            chunks: 8,
            chunk_interval_ms: 0,
            fail_rate: 0.0,
            fail_status: 503,
            reset_rate: 0.0,
            echo: false,
            reasoning: false,
            tools: false,
        }
    }
}

/// Uniform draws in `[0, 1)` for this request: it fails when `fail < fail_rate`, a stream is
/// reset when `reset < reset_rate` (so a rate of 0 never and a rate of 1 always triggers).
#[derive(Debug, Clone, Copy)]
pub struct Rolls {
    pub fail: f64,
    pub reset: f64,
}

/// The clock and the request's number, for `created` and `id`.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    pub now_unix_s: u64,
    pub shard: usize,
    pub seq: u64,
}

/// What happens to the connection once the plan's frames are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum End {
    #[default]
    KeepAlive,
    /// Close cleanly (FIN).
    Close,
    /// Abort the connection (RST): a stream cut mid-way.
    Reset,
}

/// `bytes[previous frame's end..end]`, written after waiting `delay_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub delay_ms: u64,
    pub end: usize,
}

/// A response as timed writes.
#[derive(Debug, Default)]
pub struct Plan {
    pub bytes: Vec<u8>,
    pub frames: Vec<Frame>,
    pub end: End,
    /// Body being built before its head (which needs its length) or its chunk framing.
    scratch: Vec<u8>,
}

impl Plan {
    fn clear(&mut self) {
        self.bytes.clear();
        self.frames.clear();
        self.end = End::KeepAlive;
    }

    /// End the current frame: the bytes written since the last one go out after `delay_ms`.
    fn cut(&mut self, delay_ms: u64) {
        self.frames.push(Frame {
            delay_ms,
            end: self.bytes.len(),
        });
    }

    /// The frames as (delay, bytes), for tests and for the connection loop.
    pub fn frames(&self) -> impl Iterator<Item = (u64, &[u8])> + '_ {
        let mut start = 0;
        self.frames.iter().map(move |f| {
            let b = &self.bytes[start..f.end];
            start = f.end;
            (f.delay_ms, b)
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Chat,
    Completions,
    Embeddings,
    Models,
    Messages,
}

impl Endpoint {
    fn of(method: &str, path: &str) -> Result<Self, (u16, &'static str, &'static str)> {
        // Azure OpenAI's paths (`/openai/deployments/{deployment}/chat/completions`): the same
        // endpoints under a deployment's name.
        let path = match path
            .strip_prefix("/openai/deployments/")
            .and_then(|rest| rest.split_once('/'))
        {
            Some((deployment, tail)) if !deployment.is_empty() => match tail {
                "chat/completions" => "/v1/chat/completions",
                "completions" => "/v1/completions",
                "embeddings" => "/v1/embeddings",
                _ => path,
            },
            _ => path,
        };
        let (want, ep) = match path {
            "/v1/chat/completions" => ("POST", Endpoint::Chat),
            "/v1/completions" => ("POST", Endpoint::Completions),
            "/v1/embeddings" => ("POST", Endpoint::Embeddings),
            "/v1/messages" => ("POST", Endpoint::Messages),
            "/v1/models" => ("GET", Endpoint::Models),
            _ => return Err((404, "not_found", "the mock upstream has no such endpoint")),
        };
        if method == want {
            Ok(ep)
        } else {
            Err((
                405,
                "method_not_allowed",
                "method not allowed on this endpoint",
            ))
        }
    }
}

/// How the response to this request is framed and ended.
#[derive(Debug, Clone, Copy)]
struct Conn {
    keep_alive: bool,
    http10: bool,
}

impl Conn {
    fn end(self) -> End {
        if self.keep_alive {
            End::KeepAlive
        } else {
            End::Close
        }
    }
}

/// Plan the answer to `req`.
pub fn answer(req: &Request<'_>, knobs: &Knobs, rolls: Rolls, stamp: Stamp, plan: &mut Plan) {
    plan.clear();
    let conn = Conn {
        keep_alive: req.keep_alive,
        http10: req.http10,
    };
    let anthropic = req.path() == "/v1/messages";
    if rolls.fail < knobs.fail_rate {
        return fail(plan, conn, knobs.fail_status, anthropic);
    }
    if knobs.echo {
        return json_response(plan, conn, 200, b"", knobs.latency_ms, |out| echo(req, out));
    }
    let endpoint = match Endpoint::of(req.method, req.path()) {
        Ok(e) => e,
        Err((status, code, message)) => return error(plan, conn, status, code, message, anthropic),
    };
    if endpoint == Endpoint::Models {
        let body = MODELS.as_bytes();
        return json_response(plan, conn, 200, b"", knobs.latency_ms, |out| {
            out.extend_from_slice(body);
        });
    }
    let Ok(body) = LlmRequest::parse(req.body) else {
        let msg = "request body is not valid JSON of the expected shape";
        return error(plan, conn, 400, "invalid_json", msg, anthropic);
    };
    // Only with --tools is the body read a second time (into a tree).
    let tool = if knobs.tools && endpoint == Endpoint::Chat {
        ToolTurn::of(req.body)
    } else {
        None
    };
    let a = Answer {
        model: body.model().unwrap_or(DEFAULT_MODEL),
        prompt_tokens: body.text_bytes().div_ceil(4),
        chunks: knobs.chunks,
        reasoning: knobs.reasoning,
        tool,
        stamp,
    };
    match (endpoint, body.is_stream()) {
        (Endpoint::Embeddings, _) => {
            let items = body.input_items();
            if items > EMBEDDING_INPUTS_MAX {
                let msg = "too many embedding inputs";
                return error(plan, conn, 400, "too_many_inputs", msg, false);
            }
            json_response(plan, conn, 200, b"", knobs.latency_ms, |out| {
                a.embeddings(items, out);
            });
        }
        (Endpoint::Messages, false) => {
            json_response(plan, conn, 200, b"", knobs.latency_ms, |out| a.message(out));
        }
        (_, false) => {
            let chat = endpoint == Endpoint::Chat;
            json_response(plan, conn, 200, b"", knobs.latency_ms, |out| {
                a.completion(chat, out);
            });
        }
        (_, true) => {
            let reset = rolls.reset < knobs.reset_rate;
            let stream = Stream::start(plan, conn, knobs);
            if endpoint == Endpoint::Messages {
                a.anthropic_stream(stream, reset);
            } else {
                let chat = endpoint == Endpoint::Chat;
                a.openai_stream(stream, chat, body.include_usage(), reset);
            }
        }
    }
}

/// Plan the answer to a request refused while parsing; the connection closes after it.
pub fn refusal(r: Refusal, plan: &mut Plan) {
    plan.clear();
    let conn = Conn {
        keep_alive: false,
        http10: false,
    };
    let code = match r.status {
        413 => "request_too_large",
        431 => "request_header_fields_too_large",
        _ => "bad_request",
    };
    error(plan, conn, r.status, code, r.message, false);
}

/// The injected failure (`--fail-rate`, `--fail-status`).
fn fail(plan: &mut Plan, conn: Conn, status: u16, anthropic: bool) {
    let msg = "mock upstream: injected failure (--fail-rate)";
    let code = match status {
        429 => "rate_limit_exceeded",
        500 => "internal_error",
        _ => "service_unavailable",
    };
    error(plan, conn, status, code, msg, anthropic);
}

/// An error answer: OpenAI's `{"error":{message,type,param,code}}`, or Anthropic's
/// `{"type":"error","error":{type,message}}` for `/v1/messages`. 429 carries `Retry-After: 1`.
fn error(plan: &mut Plan, conn: Conn, status: u16, code: &str, msg: &str, anthropic: bool) {
    let (openai_type, anthropic_type) = match status {
        429 => ("requests", "rate_limit_error"),
        404 => ("invalid_request_error", "not_found_error"),
        413 => ("invalid_request_error", "request_too_large"),
        503 => ("server_error", "overloaded_error"),
        500..=599 => ("server_error", "api_error"),
        _ => ("invalid_request_error", "invalid_request_error"),
    };
    let extra: &[u8] = if status == 429 {
        b"retry-after: 1\r\n"
    } else {
        b""
    };
    json_response(plan, conn, status, extra, 0, |out| {
        if anthropic {
            out.extend_from_slice(br#"{"type":"error","error":{"type":""#);
            out.extend_from_slice(anthropic_type.as_bytes());
            out.extend_from_slice(br#"","message":"#);
            write_str(out, msg);
            out.extend_from_slice(b"}}");
        } else {
            out.extend_from_slice(br#"{"error":{"message":"#);
            write_str(out, msg);
            out.extend_from_slice(br#","type":""#);
            out.extend_from_slice(openai_type.as_bytes());
            out.extend_from_slice(br#"","param":null,"code":""#);
            out.extend_from_slice(code.as_bytes());
            out.extend_from_slice(b"\"}}");
        }
    });
}

/// `{"method":..,"path":..,"headers":[[name,value],..],"body":".."}` (values UTF-8 lossy).
fn echo(req: &Request<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(br#"{"method":"#);
    write_str(out, req.method);
    out.extend_from_slice(br#","path":"#);
    write_str(out, req.target);
    out.extend_from_slice(br#","headers":["#);
    for (i, h) in req.headers.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'[');
        write_str(out, h.name);
        out.push(b',');
        write_str(out, &String::from_utf8_lossy(h.value));
        out.push(b']');
    }
    out.extend_from_slice(br#"],"body":"#);
    write_str(out, &String::from_utf8_lossy(req.body));
    out.push(b'}');
}

/// A whole JSON response in one frame, sent after `delay_ms`.
fn json_response(
    plan: &mut Plan,
    conn: Conn,
    status: u16,
    extra_headers: &[u8],
    delay_ms: u64,
    body: impl FnOnce(&mut Vec<u8>),
) {
    let mut scratch = std::mem::take(&mut plan.scratch);
    scratch.clear();
    body(&mut scratch);
    let out = &mut plan.bytes;
    status_line(out, status);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    num(out, scratch.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra_headers);
    connection_header(out, conn);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&scratch);
    plan.scratch = scratch;
    plan.cut(delay_ms);
    plan.end = conn.end();
}

fn status_line(out: &mut Vec<u8>, status: u16) {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    };
    out.extend_from_slice(b"HTTP/1.1 ");
    num(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
}

fn connection_header(out: &mut Vec<u8>, conn: Conn) {
    if !conn.keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if conn.http10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
}

/// An SSE response being planned: chunked for HTTP/1.1, close-delimited for HTTP/1.0.
struct Stream<'p> {
    plan: &'p mut Plan,
    conn: Conn,
    ttft_ms: u64,
    interval_ms: u64,
    /// Content chunks sent so far.
    sent: u32,
}

impl<'p> Stream<'p> {
    /// The response head, as its own frame, at once.
    fn start(plan: &'p mut Plan, conn: Conn, knobs: &Knobs) -> Self {
        let conn = Conn {
            keep_alive: conn.keep_alive && !conn.http10,
            ..conn
        };
        let out = &mut plan.bytes;
        status_line(out, 200);
        out.extend_from_slice(b"content-type: text/event-stream\r\ncache-control: no-cache\r\n");
        if !conn.http10 {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n");
        }
        connection_header(out, conn);
        out.extend_from_slice(b"\r\n");
        plan.cut(0);
        Self {
            plan,
            conn,
            ttft_ms: knobs.ttft_ms,
            interval_ms: knobs.chunk_interval_ms,
            sent: 0,
        }
    }

    /// One SSE event as its own frame: `event: NAME\n` when named, `data: ...\n\n`.
    fn event(&mut self, name: Option<&str>, delay_ms: u64, data: impl FnOnce(&mut Vec<u8>)) {
        let mut ev = std::mem::take(&mut self.plan.scratch);
        ev.clear();
        if let Some(name) = name {
            ev.extend_from_slice(b"event: ");
            ev.extend_from_slice(name.as_bytes());
            ev.push(b'\n');
        }
        ev.extend_from_slice(b"data: ");
        data(&mut ev);
        ev.extend_from_slice(b"\n\n");
        let out = &mut self.plan.bytes;
        if !self.conn.http10 {
            hex(out, ev.len());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(&ev);
        if !self.conn.http10 {
            out.extend_from_slice(b"\r\n");
        }
        self.plan.scratch = ev;
        self.plan.cut(delay_ms);
    }

    /// A content event: the first after the time to first token, the others after the interval.
    fn content(&mut self, name: Option<&str>, data: impl FnOnce(&mut Vec<u8>)) {
        let delay = if self.sent == 0 {
            self.ttft_ms
        } else {
            self.interval_ms
        };
        self.sent += 1;
        self.event(name, delay, data);
    }

    /// Cut the stream here: the connection is reset once these frames are written.
    fn reset(self) {
        self.plan.end = End::Reset;
    }

    /// End the body (the last chunk, appended to the last frame) and the exchange.
    fn finish(self) {
        if !self.conn.http10 {
            self.plan.bytes.extend_from_slice(b"0\r\n\r\n");
            if let Some(last) = self.plan.frames.last_mut() {
                last.end = self.plan.bytes.len();
            }
        }
        self.plan.end = self.conn.end();
    }
}

/// With `--tools`, what a chat request with `tools` is answered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToolTurn {
    /// A call of the tool of this name (the first of the request's `tools`).
    Call(String),
    /// Text quoting the start of this tool result (the request's last message was one).
    Quote(String),
}

impl ToolTurn {
    /// What to answer a chat request `body` with: `None` without `tools` (or not JSON).
    pub fn of(body: &[u8]) -> Option<ToolTurn> {
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let tools = v.get("tools")?.as_array()?;
        let last = v.get("messages")?.as_array()?.last()?;
        if last.get("role").and_then(serde_json::Value::as_str) == Some("tool") {
            let content = match last.get("content") {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(serde_json::Value::as_str))
                    .collect(),
                _ => String::new(),
            };
            return Some(ToolTurn::Quote(
                content.chars().take(TOOL_QUOTE_CHARS_MAX).collect(),
            ));
        }
        let name = tools
            .first()?
            .get("function")?
            .get("name")?
            .as_str()?
            .to_owned();
        Some(ToolTurn::Call(name))
    }
}

/// What every answer of one request shares.
struct Answer<'a> {
    model: &'a str,
    prompt_tokens: u64,
    chunks: u32,
    /// Chat answers carry [`REASONING`] as vLLM's `reasoning_content` (a stream: in one event
    /// before the content).
    reasoning: bool,
    /// With `--tools`: a tool call instead of the text, or a quote before it.
    tool: Option<ToolTurn>,
    stamp: Stamp,
}

impl Answer<'_> {
    /// The text of chunk `i`: a word, followed by a space unless it is the last.
    fn word(&self, i: u32) -> (&'static str, &'static str) {
        let w = WORDS[i as usize % WORDS.len()];
        (w, if i + 1 < self.chunks { " " } else { "" })
    }

    fn text(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        for i in 0..self.chunks {
            let (w, sp) = self.word(i);
            out.extend_from_slice(w.as_bytes());
            out.extend_from_slice(sp.as_bytes());
        }
        out.push(b'"');
    }

    fn word_json(&self, i: u32, out: &mut Vec<u8>) {
        let (w, sp) = self.word(i);
        out.push(b'"');
        out.extend_from_slice(w.as_bytes());
        out.extend_from_slice(sp.as_bytes());
        out.push(b'"');
    }

    fn id(&self, prefix: &str, out: &mut Vec<u8>) {
        out.push(b'"');
        out.extend_from_slice(prefix.as_bytes());
        num(out, self.stamp.shard as u64);
        out.push(b'-');
        num(out, self.stamp.seq);
        out.push(b'"');
    }

    /// `"id":..,"object":"OBJECT","created":..,"model":..`
    fn envelope(&self, object: &str, chat: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"id":"#);
        self.id(if chat { "chatcmpl-mock-" } else { "cmpl-mock-" }, out);
        out.extend_from_slice(br#","object":""#);
        out.extend_from_slice(object.as_bytes());
        out.extend_from_slice(br#"","created":"#);
        num(out, self.stamp.now_unix_s);
        out.extend_from_slice(br#","model":"#);
        write_str(out, self.model);
    }

    fn usage(&self, out: &mut Vec<u8>) {
        let completion = u64::from(self.chunks);
        out.extend_from_slice(br#""usage":{"prompt_tokens":"#);
        num(out, self.prompt_tokens);
        out.extend_from_slice(br#","completion_tokens":"#);
        num(out, completion);
        out.extend_from_slice(br#","total_tokens":"#);
        num(out, self.prompt_tokens + completion);
        out.push(b'}');
    }

    /// A whole `chat.completion` or `text_completion`.
    fn completion(&self, chat: bool, out: &mut Vec<u8>) {
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        self.envelope(object, chat, out);
        let mut finish: &[u8] = br#""stop""#;
        if chat {
            out.extend_from_slice(
                br#","choices":[{"index":0,"message":{"role":"assistant","content":"#,
            );
            match &self.tool {
                None => self.text(out),
                Some(ToolTurn::Quote(quote)) => {
                    write_str(out, &(quote_text(quote) + &self.text_string()));
                }
                Some(ToolTurn::Call(name)) => {
                    out.extend_from_slice(br#"null,"tool_calls":[{"id":"#);
                    self.id("call_mock_", out);
                    out.extend_from_slice(br#","type":"function","function":{"name":"#);
                    write_str(out, name);
                    out.extend_from_slice(br#","arguments":"#);
                    write_str(out, &TOOL_ARGUMENTS.concat());
                    out.extend_from_slice(b"}}]");
                    finish = br#""tool_calls""#;
                }
            }
            if self.reasoning {
                out.extend_from_slice(br#","reasoning_content":"#);
                write_str(out, REASONING);
            }
            out.push(b'}');
        } else {
            out.extend_from_slice(br#","choices":[{"index":0,"text":"#);
            self.text(out);
        }
        out.extend_from_slice(br#","logprobs":null,"finish_reason":"#);
        out.extend_from_slice(finish);
        out.extend_from_slice(b"}],");
        self.usage(out);
        out.push(b'}');
    }

    /// The answer's words, as they are (`--tools` answers only).
    fn text_string(&self) -> String {
        let mut text = String::new();
        for i in 0..self.chunks {
            let (w, sp) = self.word(i);
            text.push_str(w);
            text.push_str(sp);
        }
        text
    }

    /// A tool call of [`TOOL_ARGUMENTS`], streamed: a first delta with its id, type, name and
    /// empty arguments, one delta per piece, the finish reason `tool_calls` (or, when `reset`,
    /// a reset after the first piece).
    fn tool_call_stream(&self, s: &mut Stream<'_>, name: &str, reset: bool) -> bool {
        let object = "chat.completion.chunk";
        s.content(None, |out| {
            self.envelope(object, true, out);
            out.extend_from_slice(
                br#","choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"#,
            );
            self.id("call_mock_", out);
            out.extend_from_slice(br#","type":"function","function":{"name":"#);
            write_str(out, name);
            out.extend_from_slice(br#","arguments":""}}]},"logprobs":null,"finish_reason":null}]}"#);
        });
        for (i, piece) in TOOL_ARGUMENTS.iter().enumerate() {
            if reset && i == 1 {
                return false;
            }
            s.content(None, |out| {
                self.envelope(object, true, out);
                out.extend_from_slice(
                    br#","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"#,
                );
                write_str(out, piece);
                out.extend_from_slice(br#"}}]},"logprobs":null,"finish_reason":null}]}"#);
            });
        }
        s.event(None, 0, |out| {
            self.envelope(object, true, out);
            out.extend_from_slice(
                br#","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}]}"#,
            );
        });
        true
    }

    /// `chat.completion.chunk` (or `text_completion`) events, the usage event when asked for,
    /// then `[DONE]`; or, when `reset`, half the content events and a reset.
    fn openai_stream(&self, mut s: Stream<'_>, chat: bool, include_usage: bool, reset: bool) {
        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let until = if reset { self.chunks / 2 } else { self.chunks };
        if chat && self.reasoning {
            s.content(None, |out| {
                self.envelope(object, chat, out);
                out.extend_from_slice(
                    br#","choices":[{"index":0,"delta":{"role":"assistant","reasoning_content":"#,
                );
                write_str(out, REASONING);
                out.extend_from_slice(br#"},"logprobs":null,"finish_reason":null}]}"#);
            });
        }
        let mut until = until;
        match (&self.tool, chat) {
            (Some(ToolTurn::Call(name)), true) => {
                until = 0;
                if !self.tool_call_stream(&mut s, name, reset) {
                    return s.reset();
                }
            }
            (Some(ToolTurn::Quote(quote)), true) => {
                s.content(None, |out| {
                    self.envelope(object, chat, out);
                    out.extend_from_slice(br#","choices":[{"index":0,"delta":{"content":"#);
                    write_str(out, &quote_text(quote));
                    out.extend_from_slice(br#"},"logprobs":null,"finish_reason":null}]}"#);
                });
            }
            _ => {}
        }
        for i in 0..until {
            s.content(None, |out| {
                self.envelope(object, chat, out);
                out.extend_from_slice(br#","choices":[{"index":0,"#);
                if chat {
                    out.extend_from_slice(if i == 0 {
                        br#""delta":{"role":"assistant","content":"#.as_slice()
                    } else {
                        br#""delta":{"content":"#.as_slice()
                    });
                    self.word_json(i, out);
                    out.push(b'}');
                } else {
                    out.extend_from_slice(br#""text":"#);
                    self.word_json(i, out);
                }
                out.extend_from_slice(br#","logprobs":null,"finish_reason":"#);
                out.extend_from_slice(if i + 1 == self.chunks {
                    br#""stop""#.as_slice()
                } else {
                    b"null".as_slice()
                });
                out.extend_from_slice(b"}]}");
            });
        }
        if reset {
            return s.reset();
        }
        if include_usage {
            s.event(None, 0, |out| {
                self.envelope(object, chat, out);
                out.extend_from_slice(br#","choices":[],"#);
                self.usage(out);
                out.push(b'}');
            });
        }
        s.event(None, 0, |out| out.extend_from_slice(b"[DONE]"));
        s.finish();
    }

    fn message_head(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"id":"#);
        self.id("msg_mock_", out);
        out.extend_from_slice(br#","type":"message","role":"assistant","model":"#);
        write_str(out, self.model);
    }

    /// A whole Anthropic `message`.
    fn message(&self, out: &mut Vec<u8>) {
        self.message_head(out);
        out.extend_from_slice(br#","content":[{"type":"text","text":"#);
        self.text(out);
        out.extend_from_slice(
            br#"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":"#,
        );
        num(out, self.prompt_tokens);
        out.extend_from_slice(br#","output_tokens":"#);
        num(out, u64::from(self.chunks));
        out.extend_from_slice(b"}}");
    }

    /// Anthropic's event sequence: message_start, content_block_start, ping,
    /// content_block_delta × chunks, content_block_stop, message_delta, message_stop.
    fn anthropic_stream(&self, mut s: Stream<'_>, reset: bool) {
        s.event(Some("message_start"), 0, |out| {
            out.extend_from_slice(br#"{"type":"message_start","message":"#);
            self.message_head(out);
            out.extend_from_slice(
                br#","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":"#,
            );
            num(out, self.prompt_tokens);
            out.extend_from_slice(br#","output_tokens":1}}}"#);
        });
        s.event(Some("content_block_start"), 0, |out| {
            out.extend_from_slice(
                br#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            );
        });
        s.event(Some("ping"), 0, |out| {
            out.extend_from_slice(br#"{"type":"ping"}"#);
        });
        let until = if reset { self.chunks / 2 } else { self.chunks };
        for i in 0..until {
            s.content(Some("content_block_delta"), |out| {
                out.extend_from_slice(
                    br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"#,
                );
                self.word_json(i, out);
                out.extend_from_slice(b"}}");
            });
        }
        if reset {
            return s.reset();
        }
        s.event(Some("content_block_stop"), 0, |out| {
            out.extend_from_slice(br#"{"type":"content_block_stop","index":0}"#);
        });
        s.event(Some("message_delta"), 0, |out| {
            out.extend_from_slice(
                br#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":"#,
            );
            num(out, u64::from(self.chunks));
            out.extend_from_slice(b"}}");
        });
        s.event(Some("message_stop"), 0, |out| {
            out.extend_from_slice(br#"{"type":"message_stop"}"#);
        });
        s.finish();
    }

    /// An OpenAI embeddings list, one vector per input.
    fn embeddings(&self, items: u64, out: &mut Vec<u8>) {
        out.extend_from_slice(br#"{"object":"list","data":["#);
        for i in 0..items {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"object":"embedding","index":"#);
            num(out, i);
            out.extend_from_slice(br#","embedding":"#);
            out.extend_from_slice(EMBEDDING.as_bytes());
            out.push(b'}');
        }
        out.extend_from_slice(br#"],"model":"#);
        write_str(out, self.model);
        out.extend_from_slice(br#","usage":{"prompt_tokens":"#);
        num(out, self.prompt_tokens);
        out.extend_from_slice(br#","total_tokens":"#);
        num(out, self.prompt_tokens);
        out.extend_from_slice(b"}}");
    }
}

/// The text `--tools` answers a tool result with, before the usual words.
fn quote_text(quote: &str) -> String {
    format!("The tool said: \"{quote}\". ")
}

/// Append `n` in decimal (the engine's allocation-free writer).
fn num(out: &mut Vec<u8>, n: u64) {
    shardgate_engine::http::write_decimal(out, n);
}

/// Append `n` in lowercase hexadecimal (chunk sizes).
fn hex(out: &mut Vec<u8>, n: usize) {
    shardgate_engine::http::write_hex(out, n as u64);
}

#[cfg(test)]
#[path = "answer_tests.rs"]
mod tests;
