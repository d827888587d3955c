//! Answers shardgate gives itself: our errors (OpenAI- or Anthropic-shaped JSON, one place),
//! `GET /v1/models` for model groups, and the built-in mock model.

use std::rc::Rc;
use std::time::Duration;

use super::call::{check_and_admit, read_whole_body};
use super::io::{send, send_buf};
use super::{Client, Next};
use crate::clock::Now;
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::http::request::{BodyKind, RequestHead};
use crate::limits::MOCK_BODY_BYTES_MAX;
use crate::llm::{self};
use crate::mock::{self, MockEndpoint, MockReply};

/// `GET /v1/models` with model groups: the groups the caller may use, in OpenAI's list shape.
pub(super) async fn answer_models(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: &RequestHead,
    mut wbuf: SpareBuf<'_>,
) -> Next {
    let snap = c.snap.clone();
    c.buf.drain(..head.head_len);
    if head.body != BodyKind::None {
        return answer_error(
            ctx,
            c,
            Error::BadRequest("GET /v1/models takes no body"),
            false,
            wbuf,
        )
        .await;
    }
    let allowed = |name: &str| match c.ex.tenant {
        Some(t) => snap.allows(t, c.ex.key_limit, name),
        None => true,
    };
    // Group names are printable ASCII without quotes or backslashes (validated): no escaping.
    let mut body = std::mem::take(&mut c.rate_hdrs);
    let hdrs_len = body.len();
    body.extend_from_slice(br#"{"object":"list","data":["#);
    let mut first = true;
    for m in &snap.cfg.models {
        if !allowed(&m.name) {
            continue;
        }
        if !first {
            body.push(b',');
        }
        first = false;
        body.extend_from_slice(br#"{"id":""#);
        body.extend_from_slice(m.name.as_bytes());
        body.extend_from_slice(br#"","object":"model","created":0,"owned_by":"shardgate"}"#);
    }
    body.extend_from_slice(b"]}");
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    wbuf.clear();
    crate::http::write_status_line(&mut wbuf, 200);
    wbuf.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    crate::http::write_decimal(&mut wbuf, (body.len() - hdrs_len) as u64);
    wbuf.extend_from_slice(b"\r\n");
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    // A tenant's rate headers (admitted at the head) ride along.
    wbuf.extend_from_slice(&body[..hdrs_len]);
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(&body[hdrs_len..]);
    body.truncate(hdrs_len);
    c.rate_hdrs = body;
    c.ex.status = 200;
    let res = send_buf(c, &mut wbuf, snap.cfg.server.send_timeout).await;
    if res.is_ok() && keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

pub(super) async fn serve_mock(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    endpoint: MockEndpoint,
    wbuf: SpareBuf<'_>,
) -> Next {
    let snap = c.snap.clone();
    let server = &snap.cfg.server;
    let limit = (MOCK_BODY_BYTES_MAX as u64).min(server.body_bytes_max);
    if matches!(head.body, BodyKind::Length(n) if n > limit) {
        return answer_error(ctx, c, Error::BodyTooLarge, false, wbuf).await;
    }
    c.buf.drain(..head.head_len);
    let wbuf = match read_whole_body(ctx, c, &head, limit, wbuf).await {
        Ok(wbuf) => wbuf,
        Err(next) => return next,
    };
    let body = std::mem::take(&mut c.llm.body);
    if c.ex.tenant.is_some() && endpoint.takes_body() {
        if let Err(next) = check_and_admit(ctx, c, &snap, &body).await {
            c.llm.body = body;
            return next;
        }
    }
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    let now_s = Now::read().unix_ms() / 1000;
    // A tenant sees only the models it is approved for.
    let reply = match (endpoint, c.ex.tenant) {
        (MockEndpoint::Models, Some(t)) => {
            let key = c.ex.key_limit;
            Ok(mock::models_for(|m| snap.allows(t, key, m), keep_alive))
        }
        _ => mock::respond(endpoint, &body, now_s, keep_alive),
    };
    c.llm.body = body;
    let reply = match reply {
        Ok(r) => r,
        Err(e) => return answer_error(ctx, c, e, keep_alive, wbuf).await,
    };
    // The mock's answer is in buffers of its own: the spare goes back before it is streamed.
    drop(wbuf);
    let (mut head_bytes, frames) = match reply {
        MockReply::Whole(bytes) => (bytes, Vec::new()),
        MockReply::Stream { head, frames } => (head, frames),
    };
    // A tenant's answer carries its x-ratelimit-* headers, as a proxied one does.
    if c.ex.held.tenant().is_some() && !c.rate_hdrs.is_empty() {
        if let Some(at) = head_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            let at = at + 2;
            head_bytes.splice(at..at, c.rate_hdrs.iter().copied());
        }
    }
    c.ex.status = 200;
    if c.ex.tenant.is_some() && frames.is_empty() {
        // A whole JSON answer: its usage settles the tenant's tokens.
        if let Some(at) = head_bytes.windows(4).position(|w| w == b"\r\n\r\n") {
            c.ex.scan = true;
            c.llm.scanner.reset(llm::BodyKind::Json);
            c.llm.scanner.feed(&head_bytes[at + 4..]);
        }
    }
    let (res, _) = send(c, head_bytes, server.send_timeout).await;
    if res.is_err() {
        return Next::Close;
    }
    for frame in frames {
        monoio::time::sleep(Duration::from_millis(mock::MOCK_CHUNK_INTERVAL_MS)).await;
        let (res, _) = send(c, frame, server.send_timeout).await;
        if res.is_err() {
            return Next::Close;
        }
    }
    if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// Send `e` as an OpenAI-style JSON answer. The connection stays open only if `may_keep_alive`
/// and the error does not taint the connection's framing.
/// (A plain fn returning [`answer_error_with`]'s future, not an async fn around it: each level
/// of nested futures costs every connection's future 128 bytes.)
pub(super) fn answer_error<'a>(
    ctx: &'a ShardCtx,
    c: &'a mut Client,
    e: Error,
    may_keep_alive: bool,
    wbuf: SpareBuf<'a>,
) -> impl std::future::Future<Output = Next> + 'a {
    answer_error_with(ctx, c, e, may_keep_alive, &[], wbuf)
}

/// [`answer_error`] with extra header lines (`retry-after`, `x-ratelimit-*`).
pub(super) async fn answer_error_with(
    ctx: &ShardCtx,
    c: &mut Client,
    e: Error,
    may_keep_alive: bool,
    extra_headers: &[u8],
    mut wbuf: SpareBuf<'_>,
) -> Next {
    let close = e.closes_connection() || !may_keep_alive || ctx.drain.is_fired();
    wbuf.clear();
    e.write_response_shaped(close, extra_headers, c.ex.error_shape, &mut wbuf);
    tracing::debug!(
        shard = ctx.id,
        status = e.status(),
        code = e.code(),
        "local answer"
    );
    if !c.ex.active {
        // Refused before any request began (a head that timed out or broke the rules).
        c.ex.begin(Now::read());
    }
    c.ex.status = e.status();
    c.ex.local_error = true;
    let timeout = c.snap.cfg.server.send_timeout;
    let res = send_buf(c, &mut wbuf, timeout).await;
    match (res, close) {
        (Err(_), _) => Next::Close,
        // A client that let a deadline pass gets its 408 and a plain close: lingering to read
        // what it still sends would spend the shard's time on the slowest (or most hostile)
        // clients, a thousand at once when a slowloris attack's deadlines expire together.
        (Ok(()), true) if matches!(e, Error::HeaderTimeout | Error::BodyTimeout) => Next::Close,
        (Ok(()), true) => Next::CloseLinger,
        (Ok(()), false) => Next::KeepAlive,
    }
}
