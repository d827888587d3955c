//! The one data-plane error type, and the one place it becomes a status and a JSON body.
//!
//! Hot-path errors are plain enums (no allocation, no boxing). Every answer shardgate makes
//! itself goes through [`Error::write_response`], so the status, the OpenAI-style body and the
//! decision to close the connection are decided here and nowhere else.

use std::fmt;

/// Which side of the proxy caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The downstream client sent something we refuse, or went away.
    Client,
    /// The upstream server failed, timed out or answered something we refuse.
    Upstream,
    /// shardgate itself (shutting down, no route configured).
    Internal,
}

/// What went wrong. Each variant maps to exactly one status in [`Error::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// Unparsable request line or header field, bad `Host`, bad path; the reason is static text.
    BadRequest(&'static str),
    /// Ambiguous or invalid message framing (`Content-Length` / `Transfer-Encoding`).
    BadFraming(&'static str),
    /// Malformed chunked body.
    BadChunk(&'static str),
    /// No route for the path (or the built-in mock has no such endpoint).
    NoRoute,
    /// A method shardgate does not proxy (`CONNECT`).
    MethodNotAllowed,
    /// The request head did not complete within `header_timeout_ms`.
    HeaderTimeout,
    /// The request body stalled past `body_timeout_ms`.
    BodyTimeout,
    /// The body is larger than `body_bytes_max`.
    BodyTooLarge,
    /// The request line alone does not fit in `header_bytes_max`.
    UriTooLong,
    /// An `Expect` other than `100-continue`.
    ExpectationFailed,
    /// The request head is larger than `header_bytes_max`.
    HeaderTooLarge,
    /// More header fields than `headers_count_max`.
    TooManyHeaders,
    /// Connecting to the upstream was refused or reset.
    UpstreamUnavailable,
    /// The upstream's response was unparsable or ill-framed; the reason is static text.
    UpstreamBadResponse(&'static str),
    /// Connect or time-to-first-byte timeout.
    UpstreamTimeout,
    /// The TLS handshake with the upstream failed; the reason (static text) names the problem
    /// (an untrusted or expired certificate, a name mismatch, ...).
    UpstreamTls(&'static str),
    /// The gateway is draining and takes no new requests.
    ShuttingDown,
    /// The shard already serves `requests_inflight_max` requests: this one is shed (the
    /// answer carries `Retry-After`).
    Overloaded,
    /// No API key, or one no tenant owns.
    Unauthorized,
    /// The tenant is not approved for the model it asked for.
    ModelNotAllowed,
    /// The tenant is suspended in the tenant store.
    TenantSuspended,
    /// A tenant limit refused the request (the answer carries `Retry-After` and the
    /// `x-ratelimit-*` headers).
    RateLimited(Limit),
    /// The request body is not what an LLM endpoint takes (not JSON, a field of the wrong type).
    BadBody(&'static str),
    /// No `[[models]]` group serves the model the body names.
    ModelNotFound,
    /// Every deployment of the model's group (and of its fallbacks) is capped out.
    NoDeployment,
    /// A prompt template could not be filled (a variable missing, `variables` malformed).
    Template(crate::template::TemplateError),
    /// `/v1/access-requests` on a gateway without a tenant store: it takes no access requests.
    AccessRequestsOff,
    /// The access-request thread could not take or answer the request (its queue full, no
    /// answer in time, the thread gone); the reason is static text.
    AccessRequestsBusy(&'static str),
}

/// Which tenant limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Requests,
    Tokens,
    Concurrency,
    Budget,
    /// The tenant's spend budget in dollars (`budget_usd`).
    BudgetUsd,
    /// The upstream was saturated and the tenant's fair queue full, or the wait too long.
    Queue,
    /// The tenant has `connections_max` connections open on this shard.
    Connections,
}

impl Error {
    /// The HTTP status of the answer to the client.
    pub fn status(self) -> u16 {
        match self {
            Error::BadRequest(_) | Error::BadFraming(_) | Error::BadChunk(_) => 400,
            Error::NoRoute => 404,
            Error::MethodNotAllowed => 405,
            Error::HeaderTimeout | Error::BodyTimeout => 408,
            Error::BodyTooLarge => 413,
            Error::UriTooLong => 414,
            Error::ExpectationFailed => 417,
            Error::HeaderTooLarge | Error::TooManyHeaders => 431,
            Error::UpstreamUnavailable | Error::UpstreamBadResponse(_) | Error::UpstreamTls(_) => {
                502
            }
            Error::ShuttingDown | Error::Overloaded => 503,
            Error::UpstreamTimeout => 504,
            Error::Unauthorized => 401,
            Error::ModelNotAllowed | Error::TenantSuspended => 403,
            Error::RateLimited(_) => 429,
            Error::BadBody(_) => 400,
            Error::ModelNotFound => 404,
            Error::Template(_) => 400,
            Error::NoDeployment => 503,
            Error::AccessRequestsOff => 404,
            Error::AccessRequestsBusy(_) => 503,
        }
    }

    /// The machine-readable `code` of the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            Error::BadRequest(_) => "bad_request",
            Error::BadFraming(_) => "bad_framing",
            Error::BadChunk(_) => "bad_chunk",
            Error::NoRoute => "no_route",
            Error::MethodNotAllowed => "method_not_allowed",
            Error::HeaderTimeout | Error::BodyTimeout => "request_timeout",
            Error::BodyTooLarge => "body_too_large",
            Error::UriTooLong => "uri_too_long",
            Error::ExpectationFailed => "expectation_failed",
            Error::HeaderTooLarge => "header_too_large",
            Error::TooManyHeaders => "too_many_headers",
            Error::UpstreamUnavailable => "upstream_unavailable",
            Error::UpstreamBadResponse(_) => "upstream_bad_response",
            Error::UpstreamTls(_) => "upstream_tls_error",
            Error::UpstreamTimeout => "upstream_timeout",
            Error::ShuttingDown => "shutting_down",
            Error::Overloaded => "overloaded",
            Error::Unauthorized => "invalid_api_key",
            Error::ModelNotAllowed => "model_not_approved",
            Error::TenantSuspended => "tenant_suspended",
            Error::RateLimited(Limit::Budget | Limit::BudgetUsd) => "insufficient_quota",
            Error::RateLimited(_) => "rate_limit_exceeded",
            Error::BadBody(_) => "invalid_body",
            Error::ModelNotFound => "model_not_found",
            Error::NoDeployment => "no_deployment_available",
            Error::Template(crate::template::TemplateError::MissingVariable(_)) => {
                "missing_variable"
            }
            Error::Template(_) => "invalid_template_request",
            Error::AccessRequestsOff => "access_requests_unavailable",
            Error::AccessRequestsBusy(_) => "access_requests_busy",
        }
    }

    /// Who caused it.
    pub fn side(self) -> Side {
        match self {
            Error::UpstreamUnavailable
            | Error::UpstreamBadResponse(_)
            | Error::UpstreamTls(_)
            | Error::UpstreamTimeout => Side::Upstream,
            Error::NoRoute
            | Error::ShuttingDown
            | Error::Overloaded
            | Error::ModelNotFound
            | Error::NoDeployment
            | Error::AccessRequestsOff
            | Error::AccessRequestsBusy(_) => Side::Internal,
            _ => Side::Client,
        }
    }

    /// Whether another upstream attempt could succeed where this one failed (used by retries).
    pub fn is_retryable(self) -> bool {
        matches!(self, Error::UpstreamUnavailable | Error::UpstreamTimeout)
    }

    /// Whether the client connection must be closed after the answer whatever else holds:
    /// the framing of what follows on the connection can no longer be trusted.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Error::BadRequest(_)
                | Error::BadFraming(_)
                | Error::BadChunk(_)
                | Error::MethodNotAllowed
                | Error::HeaderTimeout
                | Error::BodyTimeout
                | Error::BodyTooLarge
                | Error::UriTooLong
                | Error::ExpectationFailed
                | Error::HeaderTooLarge
                | Error::TooManyHeaders
                | Error::ShuttingDown
        )
    }

    /// The OpenAI error `type` (for 429s, which limit was hit, as OpenAI names them).
    fn error_type(self) -> &'static str {
        match self {
            Error::Unauthorized => return "invalid_request_error",
            Error::ModelNotAllowed | Error::TenantSuspended => return "permission_error",
            Error::RateLimited(Limit::Requests) => return "requests",
            Error::RateLimited(Limit::Tokens) => return "tokens",
            Error::RateLimited(Limit::Concurrency) => return "concurrency",
            Error::RateLimited(Limit::Budget | Limit::BudgetUsd) => return "insufficient_quota",
            Error::RateLimited(Limit::Queue) => return "queue",
            Error::RateLimited(Limit::Connections) => return "connections",
            _ => {}
        }
        match self.side() {
            Side::Client => "invalid_request_error",
            Side::Upstream => "upstream_error",
            Side::Internal
                if matches!(
                    self,
                    Error::NoRoute | Error::ModelNotFound | Error::AccessRequestsOff
                ) =>
            {
                "invalid_request_error"
            }
            Side::Internal => "server_error",
        }
    }

    /// Human-readable message (static: no allocation on the error path either).
    pub fn message(self) -> &'static str {
        match self {
            Error::BadRequest(m)
            | Error::BadFraming(m)
            | Error::BadChunk(m)
            | Error::UpstreamBadResponse(m)
            | Error::UpstreamTls(m)
            | Error::BadBody(m)
            | Error::AccessRequestsBusy(m) => m,
            Error::NoRoute => "no route or model serves this path",
            Error::MethodNotAllowed => "this method is not supported by the gateway",
            Error::HeaderTimeout => "the request head was not received in time",
            Error::BodyTimeout => "the request body stalled",
            Error::BodyTooLarge => "the request body is larger than the gateway accepts",
            Error::UriTooLong => "the request line is longer than the gateway accepts",
            Error::ExpectationFailed => "only `Expect: 100-continue` is supported",
            Error::HeaderTooLarge => "the request headers are larger than the gateway accepts",
            Error::TooManyHeaders => "the request has more header fields than the gateway accepts",
            Error::UpstreamUnavailable => "the upstream could not be reached",
            Error::UpstreamTimeout => "the upstream did not answer in time",
            Error::ShuttingDown => "the gateway is shutting down; retry on another instance",
            Error::Overloaded => "the gateway is overloaded; retry shortly",
            Error::Unauthorized => "missing or unknown API key",
            Error::ModelNotAllowed => {
                "this key's tenant is not approved for the requested model; request access with \
                 POST /v1/access-requests and a JSON body naming the model and a reason (GET \
                 /v1/access-requests shows your requests, GET /v1/models the models you may use)"
            }
            Error::TenantSuspended => {
                "this key's tenant is suspended; ask the gateway's operators to resume it"
            }
            Error::RateLimited(Limit::Requests) => "rate limit reached: requests per minute",
            Error::RateLimited(Limit::Tokens) => "rate limit reached: tokens per minute",
            Error::RateLimited(Limit::Concurrency) => "rate limit reached: requests in flight",
            Error::RateLimited(Limit::Budget) => "token budget exhausted for this window",
            Error::RateLimited(Limit::BudgetUsd) => "spend budget (USD) exhausted for this window",
            Error::RateLimited(Limit::Connections) => {
                "this key has too many open connections; reuse or close one"
            }
            Error::ModelNotFound => "the model does not exist or is not served by this gateway",
            Error::NoDeployment => "every deployment of this model is at capacity; retry shortly",
            Error::Template(t) => t.message(),
            Error::RateLimited(Limit::Queue) => {
                "the upstream is at capacity and this key's queue is full or waited too long"
            }
            Error::AccessRequestsOff => {
                "this gateway takes no access requests (it has no tenant store); ask its \
                 operators for access"
            }
        }
    }

    /// Append the whole HTTP/1.1 answer (status line, headers, JSON body) to `out`.
    /// `close` adds `Connection: close`.
    pub fn write_response(self, close: bool, out: &mut Vec<u8>) {
        self.write_response_with(close, &[], out);
    }

    /// Anthropic's name for this error's class (`error.type` of its error body), by status.
    pub fn anthropic_type(self) -> &'static str {
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            413 => "request_too_large",
            429 => "rate_limit_error",
            503 => "overloaded_error",
            400..=499 => "invalid_request_error",
            _ => "api_error",
        }
    }

    /// More members of an Anthropic error body's `error` object: for a translated request
    /// refused for its `thread` ([`crate::provider::THREAD_UNSUPPORTED`]), Threads'
    /// `details.error_code` `thread_unsupported_request`, on which the anthropic SDK's tool
    /// runner sends the whole conversation again without `thread`.
    fn anthropic_details(self) -> &'static str {
        match self {
            Error::BadBody(m) if m == crate::provider::THREAD_UNSUPPORTED => {
                ",\"details\":{\"error_code\":\"thread_unsupported_request\"}"
            }
            _ => "",
        }
    }

    /// [`Error::write_response`] with extra header lines (each ending in CRLF), e.g.
    /// `retry-after` and `x-ratelimit-*` on a 429.
    pub fn write_response_with(self, close: bool, extra_headers: &[u8], out: &mut Vec<u8>) {
        self.write_response_shaped(close, extra_headers, Shape::OpenAi, out);
    }

    /// [`write_response_with`](Self::write_response_with) with the body in `shape`.
    pub fn write_response_shaped(
        self,
        close: bool,
        extra_headers: &[u8],
        shape: Shape,
        out: &mut Vec<u8>,
    ) {
        let mut body = [0u8; 512];
        let body_len = {
            let mut w = SliceWriter {
                buf: &mut body,
                len: 0,
            };
            // The message, type and code are static ASCII without quotes or backslashes
            // (checked by a unit test), so they need no JSON escaping.
            let _ = match shape {
                Shape::OpenAi => fmt::write(
                    &mut w,
                    format_args!(
                        "{{\"error\":{{\"message\":\"{}\",\"type\":\"{}\",\"param\":null,\"code\":\"{}\"}}}}",
                        Message(self),
                        self.error_type(),
                        self.code()
                    ),
                ),
                Shape::Anthropic => fmt::write(
                    &mut w,
                    format_args!(
                        "{{\"type\":\"error\",\"error\":{{\"type\":\"{}\",\"message\":\"{}\"{}}}}}",
                        self.anthropic_type(),
                        Message(self),
                        self.anthropic_details(),
                    ),
                ),
            };
            w.len
        };
        let status = self.status();
        crate::http::write_status_line(out, status);
        out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
        crate::http::write_decimal(out, body_len as u64);
        out.extend_from_slice(b"\r\n");
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(extra_headers);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body[..body_len]);
    }
}

/// The API whose error body an answer takes: the client's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// `{"error":{"message","type","param","code"}}`
    #[default]
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`, for clients of `/v1/messages`.
    Anthropic,
}

/// The message of an error as written in its body: [`Error::message`], or for a template error
/// its full text (which names the missing variable; JSON-safe, see `template`).
struct Message(Error);

impl fmt::Display for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Error::Template(t) => write!(f, "{t}"),
            e => f.write_str(e.message()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code(), self.message())
    }
}

impl std::error::Error for Error {}

/// `fmt::Write` into a fixed slice, truncating (never allocating).
struct SliceWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl fmt::Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Error] = &[
        Error::BadRequest("x"),
        Error::BadFraming("x"),
        Error::BadChunk("x"),
        Error::NoRoute,
        Error::MethodNotAllowed,
        Error::HeaderTimeout,
        Error::BodyTimeout,
        Error::BodyTooLarge,
        Error::UriTooLong,
        Error::ExpectationFailed,
        Error::HeaderTooLarge,
        Error::TooManyHeaders,
        Error::UpstreamUnavailable,
        Error::UpstreamBadResponse("x"),
        Error::UpstreamTls("x"),
        Error::UpstreamTimeout,
        Error::ShuttingDown,
        Error::Overloaded,
        Error::Unauthorized,
        Error::ModelNotAllowed,
        Error::TenantSuspended,
        Error::RateLimited(Limit::Requests),
        Error::RateLimited(Limit::Tokens),
        Error::RateLimited(Limit::Concurrency),
        Error::RateLimited(Limit::Budget),
        Error::RateLimited(Limit::BudgetUsd),
        Error::RateLimited(Limit::Queue),
        Error::RateLimited(Limit::Connections),
        Error::BadBody("x"),
        Error::ModelNotFound,
        Error::NoDeployment,
        Error::AccessRequestsOff,
        Error::AccessRequestsBusy("x"),
    ];

    #[test]
    fn every_error_renders_valid_openai_json() {
        for &e in ALL {
            let mut out = Vec::new();
            e.write_response(e.closes_connection(), &mut out);
            let text = String::from_utf8(out).expect("ascii");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(
                head.starts_with(&format!("HTTP/1.1 {} ", e.status())),
                "{head}"
            );
            assert!(head.contains(&format!("content-length: {}", body.len())));
            let v: serde_json::Value = serde_json::from_str(body).expect("valid json");
            assert_eq!(v["error"]["code"], e.code());
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
            assert!(v["error"]["type"].as_str().is_some());
            assert!(v["error"]["param"].is_null());
            assert_eq!(head.contains("connection: close"), e.closes_connection());
        }
    }

    #[test]
    fn every_error_renders_valid_anthropic_json() {
        for &e in ALL {
            let mut out = Vec::new();
            e.write_response_shaped(false, b"x-a: 1\r\n", Shape::Anthropic, &mut out);
            let text = String::from_utf8(out).expect("ascii");
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(head.starts_with(&format!("HTTP/1.1 {} ", e.status())));
            assert!(head.contains(&format!("content-length: {}", body.len())));
            assert!(head.contains("x-a: 1"));
            let v: serde_json::Value = serde_json::from_str(body).expect("valid json");
            assert_eq!(v["type"], "error");
            assert_eq!(v["error"]["type"], e.anthropic_type());
            assert!(v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()));
        }
        // A refused `thread` carries Threads' error code, for the anthropic SDK to drop it.
        let mut out = Vec::new();
        Error::BadBody(crate::provider::THREAD_UNSUPPORTED).write_response_shaped(
            false,
            b"",
            Shape::Anthropic,
            &mut out,
        );
        let text = String::from_utf8(out).expect("ascii");
        let (_, body) = text.split_once("\r\n\r\n").expect("head and body");
        let v: serde_json::Value = serde_json::from_str(body).expect("valid json");
        assert_eq!(
            v["error"]["details"]["error_code"],
            "thread_unsupported_request"
        );
        assert_eq!(v["error"]["message"], crate::provider::THREAD_UNSUPPORTED);
        assert_eq!(Error::ModelNotFound.anthropic_type(), "not_found_error");
        assert_eq!(Error::Unauthorized.anthropic_type(), "authentication_error");
        assert_eq!(
            Error::RateLimited(Limit::Tokens).anthropic_type(),
            "rate_limit_error"
        );
        assert_eq!(Error::UpstreamTimeout.anthropic_type(), "api_error");
    }

    #[test]
    fn statuses_are_in_the_right_class() {
        for &e in ALL {
            match e.side() {
                Side::Client => assert!((400..500).contains(&e.status()), "{e}"),
                Side::Upstream => assert!((500..600).contains(&e.status()), "{e}"),
                Side::Internal => {}
            }
        }
    }
}
