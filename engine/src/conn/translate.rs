//! LLM calls whose client and upstream speak different APIs: an OpenAI chat client in front of
//! an Anthropic upstream, or an Anthropic Messages client in front of an OpenAI-compatible one.
//!
//! The request body is rewritten by `provider` (I/O-free) before it goes upstream; the answer
//! is translated back here as it arrives: a whole body is read (at most
//! [`TRANSLATED_BODY_BYTES_MAX`]), translated and sent with its length; an event stream is
//! translated event by event and sent as one chunk per upstream read. Error answers are
//! rewritten into the client's error shape with the upstream's status. Translation allocates
//! (serde_json trees, the translator's state): it is the exception, not the hot path.

use std::rc::Rc;

use crate::config::{Provider, UpstreamConfig};
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::http::request::RequestHead;
use crate::http::response::ClientFraming;
use crate::http::{write_decimal, write_status_line};
use crate::llm::{self, SseFilter};
use crate::provider::anthropic::{self, StreamToChat};
use crate::provider::messages::{self, StreamToMessages};
use crate::snapshot::PoolSlot;

use super::io::send_buf;
use super::local::answer_error;
use super::relay::{end_relay, over_budget, read_body_more};
use super::{Client, Next};
use crate::exchange::relay::{push_framed, IllFramed, Relay};

/// The most bytes of a whole (non-streamed) upstream answer read for translation; a larger one
/// is a 502.
pub(super) const TRANSLATED_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// The `anthropic-version` shardgate speaks to Anthropic upstreams (and sends when the client
/// did not name one).
pub(super) const ANTHROPIC_VERSION_LINE: &[u8] = b"anthropic-version: 2023-06-01\r\n";
const CONTENT_TYPE_JSON_LINE: &[u8] = b"content-type: application/json\r\n";
/// What a translated request to Anthropic adds: its body's type and the API version.
const TO_ANTHROPIC_LINES: &[u8] =
    b"content-type: application/json\r\nanthropic-version: 2023-06-01\r\n";

/// Which way an LLM call is translated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    /// An OpenAI chat client, an Anthropic upstream.
    ChatToMessages,
    /// An Anthropic Messages client, an OpenAI-compatible upstream.
    MessagesToChat,
}

/// A translated attempt: the way, and what the answer's translation needs.
#[derive(Debug)]
pub(super) struct Translation {
    pub dir: Direction,
    /// The model named upstream (the deployment's), reported back to the client.
    pub model: String,
    /// The OpenAI client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
}

/// How a request for `path` (query removed) reaches an upstream of `provider`: `Ok(None)` as
/// is, `Ok(Some(direction))` translated, `Err` not at all.
pub(super) fn direction(path: &str, provider: Provider) -> Result<Option<Direction>, Error> {
    match (path, provider) {
        ("/v1/chat/completions", Provider::Anthropic) => Ok(Some(Direction::ChatToMessages)),
        ("/v1/messages", Provider::Anthropic) => Ok(None),
        (_, Provider::Anthropic) => Err(Error::BadRequest(
            "an Anthropic upstream serves only /v1/chat/completions and /v1/messages",
        )),
        ("/v1/messages", _) => Ok(Some(Direction::MessagesToChat)),
        _ => Ok(None),
    }
}

/// The upstream request body for a translated attempt, appended to `out`, and the upstream's
/// path. `model`: the deployment's model name; `default_max_tokens` fills Anthropic's required
/// `max_tokens` when an OpenAI client named none. `Err`: the client's body cannot be
/// translated (400 naming the field).
pub(super) fn translate_request(
    dir: Direction,
    body: &[u8],
    model: &str,
    default_max_tokens: u64,
    out: &mut Vec<u8>,
) -> Result<&'static str, Error> {
    out.clear();
    let res = match dir {
        Direction::ChatToMessages => {
            anthropic::chat_to_messages(body, model, default_max_tokens, out)
        }
        // Ask for the usage chunk: an Anthropic stream always reports usage, and the tenant's
        // tokens are settled from it.
        Direction::MessagesToChat => messages::messages_to_chat(body, model, true, out),
    };
    res.map_err(|e| Error::BadBody(e.message()))?;
    Ok(match dir {
        Direction::ChatToMessages => "/v1/messages",
        Direction::MessagesToChat => "/v1/chat/completions",
    })
}

/// Header lines a request to an upstream of `provider` adds: for Anthropic the API version
/// (unless the client named its own) and, when the body was translated, its type.
pub(super) fn extra_lines(
    provider: Provider,
    translated: bool,
    client_sent_version: bool,
) -> &'static [u8] {
    match (provider, translated) {
        (Provider::Anthropic, true) => TO_ANTHROPIC_LINES,
        (Provider::Anthropic, false) if !client_sent_version => ANTHROPIC_VERSION_LINE,
        (Provider::Anthropic, false) => b"",
        (_, true) => CONTENT_TYPE_JSON_LINE,
        (_, false) => b"",
    }
}

/// A stream translator of either way.
enum Stream {
    ToChat(Box<StreamToChat>),
    ToMessages(Box<StreamToMessages>),
}

impl Stream {
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self {
            Stream::ToChat(s) => s.feed(input, out),
            Stream::ToMessages(s) => s.feed(input, out),
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Stream::ToChat(s) => s.finish(out),
            Stream::ToMessages(s) => s.finish(out),
        }
    }
}

/// An Anthropic `error` event, to cut a stream short at a tenant's budget.
fn anthropic_error_event(message: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":",
    );
    crate::llm::json::write_str(out, message);
    out.extend_from_slice(b"}}\n\n");
}

/// Relay the upstream's answer to a translated request in the client's API. `up` has read the
/// response head (`relay` describes its body); `wbuf` is free for the client's head.
#[allow(clippy::too_many_arguments)]
pub(super) async fn relay_translated(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    slot: PoolSlot,
    ucfg: &UpstreamConfig,
    mut up: crate::upstream::UpConn,
    mut relay: Relay,
    mut wbuf: SpareBuf<'_>,
    head: &RequestHead,
    tr: Translation,
) -> Next {
    c.ex.status = relay.status;
    if relay.framing == ClientFraming::Chunked {
        // The client gets bytes of our own: decode the upstream's chunks into data.
        relay.framing = ClientFraming::Dechunk;
    }
    if c.ex.scan {
        c.llm.scanner.reset(if relay.sse {
            llm::BodyKind::Sse
        } else {
            llm::BodyKind::Json
        });
    }
    let ok = (200..300).contains(&relay.status);
    if relay.sse && ok {
        return relay_stream(ctx, c, slot, ucfg, up, relay, wbuf, head, tr).await;
    }
    // A whole answer: read it, translate it, send it with its length.
    let mut data = std::mem::take(&mut c.llm.sse_in);
    data.clear();
    let read = loop {
        let scanner = c.ex.scan.then_some(&mut c.llm.scanner);
        if let Err(IllFramed) = relay.take_from(&mut up.buf, &mut data, scanner) {
            break Err(Error::UpstreamBadResponse(
                "ill-framed upstream response body",
            ));
        }
        if data.len() > TRANSLATED_BODY_BYTES_MAX {
            break Err(Error::UpstreamBadResponse(
                "the upstream's answer is too large to translate",
            ));
        }
        if relay.done {
            break Ok(());
        }
        if read_body_more(&mut up, &mut relay, ucfg.read_timeout)
            .await
            .is_err()
        {
            break Err(Error::UpstreamBadResponse(
                "the upstream closed the connection inside its answer",
            ));
        }
    };
    let mut body = std::mem::take(&mut c.llm.sse_out);
    body.clear();
    let translated = read.and_then(|()| {
        let res = match (tr.dir, ok) {
            (Direction::ChatToMessages, true) => {
                anthropic::message_to_chat(&data, unix_s(), &mut body)
            }
            (Direction::MessagesToChat, true) => {
                messages::chat_to_message(&data, &tr.model, &mut body)
            }
            (Direction::ChatToMessages, false) => {
                anthropic::error_to_openai(relay.status, &data, &mut body);
                Ok(())
            }
            (Direction::MessagesToChat, false) => {
                messages::error_to_anthropic(relay.status, &data, &mut body);
                Ok(())
            }
        };
        res.map_err(|_| Error::UpstreamBadResponse("the upstream's answer could not be translated"))
    });
    c.llm.sse_in = data;
    if let Err(e) = translated {
        c.llm.sse_out = body;
        c.ex.ttfb = None;
        return answer_error(ctx, c, e, false, wbuf).await;
    }
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    wbuf.clear();
    write_status_line(&mut wbuf, relay.status);
    wbuf.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    write_decimal(&mut wbuf, body.len() as u64);
    wbuf.extend_from_slice(b"\r\n");
    if let Some(s) = relay.retry_after_s {
        wbuf.extend_from_slice(b"retry-after: ");
        write_decimal(&mut wbuf, u64::from(s));
        wbuf.extend_from_slice(b"\r\n");
    }
    wbuf.extend_from_slice(&c.rate_hdrs);
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(&body);
    c.llm.sse_out = body;
    let send_timeout = c.snap.cfg.server.send_timeout;
    if send_buf(c, &mut wbuf, send_timeout).await.is_err() {
        return Next::Close;
    }
    end_relay(ctx, slot, ucfg, up, &relay, keep_alive)
}

/// A translated event stream: one chunk (or, to an HTTP/1.0 client, bytes until close) per
/// upstream read, the client's error event at a tenant's budget or when the upstream stops
/// early.
#[allow(clippy::too_many_arguments)]
async fn relay_stream(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    slot: PoolSlot,
    ucfg: &UpstreamConfig,
    mut up: crate::upstream::UpConn,
    mut relay: Relay,
    mut wbuf: SpareBuf<'_>,
    head: &RequestHead,
    tr: Translation,
) -> Next {
    let send_timeout = c.snap.cfg.server.send_timeout;
    let chunked = head.version_minor == 1;
    let keep_alive = head.keep_alive && chunked && !ctx.drain.is_fired();
    wbuf.clear();
    write_status_line(&mut wbuf, relay.status);
    wbuf.extend_from_slice(b"content-type: text/event-stream\r\ncache-control: no-cache\r\n");
    if chunked {
        wbuf.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    wbuf.extend_from_slice(&c.rate_hdrs);
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    wbuf.extend_from_slice(b"\r\n");
    let mut stream = match tr.dir {
        Direction::ChatToMessages => {
            let id = format!("chatcmpl-{:016x}", ctx.next_random());
            Stream::ToChat(Box::new(StreamToChat::new(
                &id,
                &tr.model,
                unix_s(),
                tr.include_usage,
            )))
        }
        Direction::MessagesToChat => Stream::ToMessages(Box::new(StreamToMessages::new(&tr.model))),
    };
    c.llm.filter.reset();
    let mut cut = false;
    let mut broken = false;
    loop {
        let mut data = std::mem::take(&mut c.llm.sse_in);
        let mut out = std::mem::take(&mut c.llm.sse_out);
        data.clear();
        out.clear();
        let scanner = c.ex.scan.then_some(&mut c.llm.scanner);
        if let Err(IllFramed) = relay.take_from(&mut up.buf, &mut data, scanner) {
            broken = true;
        }
        if !broken {
            stream.feed(&data, &mut out);
        }
        if relay.done || broken {
            // The upstream's stream ended (a stream that stopped early gets the client's
            // error event from the translator).
            stream.finish(&mut out);
        }
        // Count content events for the tenant's budget (the filter's output is not used).
        let mut counted = std::mem::take(&mut c.llm.rewritten);
        counted.clear();
        c.llm.filter.feed(&out, &mut counted);
        c.llm.rewritten = counted;
        c.ex.counted = Some(
            c.ex.prompt_estimate
                .saturating_add(c.llm.filter.content_events()),
        );
        if !relay.done && !broken && over_budget(c) {
            let msg = "the tenant's budget is exhausted; the answer was cut";
            match tr.dir {
                Direction::ChatToMessages => SseFilter::error_event(msg, &mut out),
                Direction::MessagesToChat => anthropic_error_event(msg, &mut out),
            }
            cut = true;
        }
        push_framed(&mut wbuf, &out, chunked);
        let end = relay.done || cut || broken;
        // A stream the upstream broke off ends without the last chunk: the client sees it cut.
        if end && chunked && !broken {
            wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        c.llm.sse_in = data;
        c.llm.sse_out = out;
        if send_buf(c, &mut wbuf, send_timeout).await.is_err() {
            return Next::Close;
        }
        if end {
            break;
        }
        broken = read_body_more(&mut up, &mut relay, ucfg.read_timeout)
            .await
            .is_err();
    }
    if broken {
        c.ex.upstream_broke = true;
        return Next::Close;
    }
    relay.upstream_reusable &= !cut;
    end_relay(ctx, slot, ucfg, up, &relay, keep_alive)
}

/// Seconds since the Unix epoch (`created` of an OpenAI answer).
fn unix_s() -> u64 {
    crate::clock::Now::read().unix_ms() / 1000
}
