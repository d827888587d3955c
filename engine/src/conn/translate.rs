//! LLM calls whose client and upstream speak different APIs. Clients speak OpenAI chat
//! completions or Anthropic Messages; upstreams speak OpenAI chat (OpenAI-compatible servers,
//! Azure), Anthropic Messages, Gemini, Bedrock's Converse or OpenAI's Responses API.
//!
//! OpenAI chat is the hub: an Anthropic Messages client in front of a Gemini, Bedrock or
//! Responses upstream is translated to OpenAI chat (`provider::messages`) and from there to the
//! upstream's API, and its answer back the same two steps. The request body is rewritten by
//! `provider` (I/O-free) before it goes upstream; the answer is translated back here as it
//! arrives: a whole body is read (at most [`TRANSLATED_BODY_BYTES_MAX`]), translated and sent
//! with its length; an event stream is translated event by event and sent as one chunk per
//! upstream read. Error answers are rewritten into the client's error shape with the
//! upstream's status. Translation allocates (serde_json trees, the translator's state): it is
//! the exception, not the hot path.

use std::rc::Rc;

use crate::config::{Provider, UpstreamConfig};
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::http::request::RequestHead;
use crate::http::response::ClientFraming;
use crate::http::{write_decimal, write_status_line};
use crate::llm::{self, SseFilter, Usage};
use crate::provider::messages::{self, StreamToMessages};
use crate::provider::{anthropic, bedrock, gemini, responses, TranslateError};
use crate::snapshot::PoolSlot;

use super::io::{send_buf, send_buf_stream};
use super::local::answer_error;
use super::relay::{end_relay, over_budget, read_body_more, stopped};
use super::upread::{stream_begins, StreamStop};
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

/// The API a client speaks (by the path it called).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientApi {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/messages`.
    Messages,
}

/// The API an upstream speaks (by its provider).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UpstreamApi {
    /// OpenAI chat completions (OpenAI-compatible servers, Azure OpenAI).
    Chat,
    /// Anthropic Messages.
    Messages,
    /// Gemini's generateContent.
    Gemini,
    /// Bedrock's Converse.
    Bedrock,
    /// OpenAI's Responses API.
    Responses,
}

/// Which way an LLM call is translated: never between equal APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Direction {
    pub client: ClientApi,
    pub upstream: UpstreamApi,
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
    let client = match path {
        "/v1/chat/completions" => Some(ClientApi::Chat),
        "/v1/messages" => Some(ClientApi::Messages),
        _ => None,
    };
    let upstream = match provider {
        Provider::Anthropic => UpstreamApi::Messages,
        Provider::Gemini => UpstreamApi::Gemini,
        Provider::Bedrock => UpstreamApi::Bedrock,
        Provider::OpenaiResponses => UpstreamApi::Responses,
        Provider::Http | Provider::Azure | Provider::Mock => UpstreamApi::Chat,
    };
    match (client, upstream) {
        (Some(ClientApi::Chat), UpstreamApi::Chat)
        | (Some(ClientApi::Messages), UpstreamApi::Messages) => Ok(None),
        (Some(client), upstream) => Ok(Some(Direction { client, upstream })),
        (None, UpstreamApi::Chat) => Ok(None),
        (None, UpstreamApi::Responses) if path == "/v1/responses" => Ok(None),
        (None, UpstreamApi::Messages) => Err(Error::BadRequest(
            "an Anthropic upstream serves only /v1/chat/completions and /v1/messages",
        )),
        (None, UpstreamApi::Gemini) => Err(Error::BadRequest(
            "a Gemini upstream serves only /v1/chat/completions and /v1/messages",
        )),
        (None, UpstreamApi::Bedrock) => Err(Error::BadRequest(
            "a Bedrock upstream serves only /v1/chat/completions and /v1/messages",
        )),
        (None, UpstreamApi::Responses) => Err(Error::BadRequest(
            "an OpenAI Responses upstream serves only /v1/responses, /v1/chat/completions and \
             /v1/messages",
        )),
    }
}

/// Buffers [`translate_request`] writes into.
pub(super) struct RequestBufs<'a> {
    /// The upstream's body.
    pub out: &'a mut Vec<u8>,
    /// The OpenAI chat body an Anthropic client's request passes through on its way.
    pub hub: &'a mut Vec<u8>,
    /// The upstream's path, when it names the model (Gemini, Bedrock).
    pub path: &'a mut String,
}

/// The upstream request body for a translated attempt, written to `bufs.out`, and the
/// upstream's path (`None`: the one written to `bufs.path`). `model`: the deployment's model name; `default_max_tokens` fills
/// Anthropic's required `max_tokens` when an OpenAI client named none; `stream`: the client
/// asked for a stream (Gemini and Bedrock name it in the path). `Err`: the client's body
/// cannot be translated (400 naming the field).
pub(super) fn translate_request(
    dir: Direction,
    body: &[u8],
    model: &str,
    default_max_tokens: u64,
    stream: bool,
    bufs: RequestBufs<'_>,
) -> Result<Option<&'static str>, Error> {
    let RequestBufs { out, hub, path } = bufs;
    out.clear();
    let bad = |e: TranslateError| Error::BadBody(e.message());
    // Ask for the usage chunk: the tenant's tokens are settled from it, and a Messages client's
    // stream reports usage.
    let chat: &[u8] = match (dir.client, dir.upstream) {
        (ClientApi::Messages, UpstreamApi::Chat) => {
            messages::messages_to_chat(body, model, true, out).map_err(bad)?;
            return Ok(Some("/v1/chat/completions"));
        }
        (ClientApi::Messages, _) => {
            hub.clear();
            messages::messages_to_chat(body, model, true, hub).map_err(bad)?;
            hub
        }
        (ClientApi::Chat, _) => body,
    };
    match dir.upstream {
        UpstreamApi::Messages => {
            anthropic::chat_to_messages(chat, model, default_max_tokens, out).map_err(bad)?;
            Ok(Some("/v1/messages"))
        }
        UpstreamApi::Gemini => {
            gemini::chat_to_gemini(chat, out).map_err(bad)?;
            gemini::path(model, stream, path).map_err(Error::BadRequest)?;
            Ok(None)
        }
        UpstreamApi::Bedrock => {
            bedrock::chat_to_converse(chat, out).map_err(bad)?;
            bedrock::path(model, stream, path).map_err(Error::BadRequest)?;
            Ok(None)
        }
        UpstreamApi::Responses => {
            responses::chat_to_responses(chat, model, out).map_err(bad)?;
            Ok(Some("/v1/responses"))
        }
        // An OpenAI chat client in front of an OpenAI chat upstream is not translated.
        UpstreamApi::Chat => Err(Error::BadRequest("no translation between equal APIs")),
    }
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

/// A stream translator of any way.
enum Stream {
    /// Anthropic events to OpenAI chunks.
    AnthropicToChat(Box<anthropic::StreamToChat>),
    /// OpenAI chunks to Anthropic events.
    ToMessages(Box<StreamToMessages>),
    GeminiToChat(Box<gemini::StreamToChat>),
    BedrockToChat(Box<bedrock::StreamToChat>),
    ResponsesToChat(Box<responses::StreamToChat>),
    /// To OpenAI chunks (in the buffer), then to Anthropic events.
    Chain(Box<Stream>, Box<StreamToMessages>, Vec<u8>),
}

impl Stream {
    /// The translator from `upstream`'s stream to OpenAI chunks (with the usage chunk when
    /// `include_usage`).
    fn to_chat(upstream: UpstreamApi, id: &str, model: &str, include_usage: bool) -> Stream {
        let created = unix_s();
        match upstream {
            UpstreamApi::Gemini => Stream::GeminiToChat(Box::new(gemini::StreamToChat::new(
                id,
                model,
                created,
                include_usage,
            ))),
            UpstreamApi::Bedrock => Stream::BedrockToChat(Box::new(bedrock::StreamToChat::new(
                id,
                model,
                created,
                include_usage,
            ))),
            UpstreamApi::Responses => Stream::ResponsesToChat(Box::new(
                responses::StreamToChat::new(id, model, created, include_usage),
            )),
            UpstreamApi::Messages | UpstreamApi::Chat => Stream::AnthropicToChat(Box::new(
                anthropic::StreamToChat::new(id, model, created, include_usage),
            )),
        }
    }

    fn new(tr: &Translation, id: &str) -> Stream {
        match (tr.dir.client, tr.dir.upstream) {
            (ClientApi::Messages, UpstreamApi::Chat) => {
                Stream::ToMessages(Box::new(StreamToMessages::new(&tr.model)))
            }
            (ClientApi::Messages, upstream) => Stream::Chain(
                Box::new(Stream::to_chat(upstream, id, &tr.model, true)),
                Box::new(StreamToMessages::new(&tr.model)),
                Vec::new(),
            ),
            (ClientApi::Chat, upstream) => {
                Stream::to_chat(upstream, id, &tr.model, tr.include_usage)
            }
        }
    }

    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        match self {
            Stream::AnthropicToChat(s) => s.feed(input, out),
            Stream::ToMessages(s) => s.feed(input, out),
            Stream::GeminiToChat(s) => s.feed(input, out),
            Stream::BedrockToChat(s) => s.feed(input, out),
            Stream::ResponsesToChat(s) => s.feed(input, out),
            Stream::Chain(first, second, mid) => {
                mid.clear();
                first.feed(input, mid);
                second.feed(mid, out);
            }
        }
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        match self {
            Stream::AnthropicToChat(s) => s.finish(out),
            Stream::ToMessages(s) => s.finish(out),
            Stream::GeminiToChat(s) => s.finish(out),
            Stream::BedrockToChat(s) => s.finish(out),
            Stream::ResponsesToChat(s) => s.finish(out),
            Stream::Chain(first, second, mid) => {
                mid.clear();
                first.finish(mid);
                second.feed(mid, out);
                second.finish(out);
            }
        }
    }

    /// The usage the translator read, for the upstreams whose streams the usage scanner cannot
    /// read (Gemini, Bedrock, Responses' events are read by both).
    fn usage(&self) -> Option<Usage> {
        match self {
            Stream::GeminiToChat(s) => s.usage(),
            Stream::BedrockToChat(s) => s.usage(),
            Stream::ResponsesToChat(s) => s.usage(),
            Stream::Chain(first, _, _) => first.usage(),
            Stream::AnthropicToChat(_) | Stream::ToMessages(_) => None,
        }
    }
}

/// A whole upstream answer (`data`, HTTP `status`) in the client's API, appended to `out`;
/// `hub` holds the OpenAI chat step of a two-step translation. Returns the usage the
/// translator read where the scanner cannot (Gemini, Bedrock, Responses).
fn translate_whole(
    tr: &Translation,
    relay: &Relay,
    data: &[u8],
    id: &str,
    out: &mut Vec<u8>,
    hub: &mut Vec<u8>,
) -> Result<Option<Usage>, TranslateError> {
    let (client, upstream) = (tr.dir.client, tr.dir.upstream);
    let ok = (200..300).contains(&relay.status);
    let status = relay.status;
    let created = unix_s();
    // Straight to the client's API where one step does it.
    match (client, upstream, ok) {
        (ClientApi::Chat, UpstreamApi::Messages, true) => {
            return anthropic::message_to_chat(data, created, out).map(|()| None)
        }
        (ClientApi::Chat, UpstreamApi::Messages, false) => {
            anthropic::error_to_openai(status, data, out);
            return Ok(None);
        }
        (ClientApi::Messages, UpstreamApi::Chat, true) => {
            return messages::chat_to_message(data, &tr.model, out).map(|()| None)
        }
        (ClientApi::Messages, UpstreamApi::Chat, false) => {
            messages::error_to_anthropic(status, data, out);
            return Ok(None);
        }
        _ => {}
    }
    // To OpenAI chat: the answer itself for an OpenAI chat client, else the hub.
    let chat = if client == ClientApi::Chat {
        &mut *out
    } else {
        hub.clear();
        &mut *hub
    };
    let usage = match (upstream, ok) {
        (UpstreamApi::Gemini, true) => Some(gemini::response_to_chat(
            data, id, &tr.model, created, chat,
        )?),
        (UpstreamApi::Gemini, false) => {
            gemini::error_to_openai(status, data, chat);
            None
        }
        (UpstreamApi::Bedrock, true) => Some(bedrock::converse_to_chat(
            data, id, &tr.model, created, chat,
        )?),
        (UpstreamApi::Bedrock, false) => {
            let kind = relay.aws_error_type.as_ref().map(|t| t.as_str());
            bedrock::error_to_openai(status, kind, data, chat);
            None
        }
        (UpstreamApi::Responses, true) => Some(responses::response_to_chat(
            data, id, &tr.model, created, chat,
        )?),
        // Responses' errors are OpenAI's.
        (UpstreamApi::Responses, false) => {
            chat.extend_from_slice(data);
            None
        }
        (UpstreamApi::Messages | UpstreamApi::Chat, _) => return Err(TranslateError::NotJson),
    };
    if client == ClientApi::Messages {
        if ok {
            messages::chat_to_message(hub, &tr.model, out)?;
        } else {
            messages::error_to_anthropic(status, hub, out);
        }
    }
    Ok(usage)
}

/// An Anthropic `error` event, to cut a stream short at a tenant's budget.
pub(super) fn anthropic_error_event(message: &str, out: &mut Vec<u8>) {
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
    if (relay.sse || relay.aws_event_stream) && ok {
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
        if read_body_more(ctx, c, &mut up, &mut relay, ucfg.read_timeout)
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
    let mut hub = std::mem::take(&mut c.llm.rewritten);
    let id = format!("chatcmpl-{:016x}", ctx.next_random());
    let translated = read.and_then(|()| {
        translate_whole(&tr, &relay, &data, &id, &mut body, &mut hub).map_err(|_| {
            Error::UpstreamBadResponse("the upstream's answer could not be translated")
        })
    });
    c.llm.rewritten = hub;
    if let (Ok(Some(usage)), true) = (&translated, c.ex.scan) {
        c.llm.scanner.report(*usage);
    }
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
    // Gemini says how long to wait only in its error body (`RetryInfo`): the client hears it
    // as `retry-after`, and the balancer leaves the deployment alone that long.
    let retry_after = relay.retry_after_s.or_else(|| {
        let hint = (tr.dir.upstream == UpstreamApi::Gemini && matches!(relay.status, 429 | 503))
            .then(|| gemini::retry_after_s(&c.llm.sse_in))
            .flatten();
        if let Some(s) = hint {
            c.ex.retry_after = Some(std::time::Duration::from_secs(u64::from(s)));
        }
        hint
    });
    if let Some(s) = retry_after {
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
    let id = format!("chatcmpl-{:016x}", ctx.next_random());
    let mut stream = Stream::new(&tr, &id);
    c.llm.filter.reset();
    stream_begins(ctx, c);
    // Holds the head for the first turn; each later turn borrows its buffers from the shard's
    // spares and gives them back before the next wait.
    let mut first = Some(wbuf);
    let mut cut = false;
    let mut broken = false;
    loop {
        let mut wbuf = first.take().unwrap_or_else(|| ctx.take_buf());
        let mut data = ctx.take_buf();
        let mut out = ctx.take_buf();
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
        let mut counted = ctx.take_buf();
        c.llm.filter.feed(&out, &mut counted);
        drop(counted);
        c.ex.counted = Some(
            c.ex.prompt_estimate
                .saturating_add(c.llm.filter.content_events()),
        );
        if !relay.done && !broken && over_budget(c) {
            let msg = "the tenant's budget is exhausted; the answer was cut";
            match tr.dir.client {
                ClientApi::Chat => SseFilter::error_event(msg, &mut out),
                ClientApi::Messages => anthropic_error_event(msg, &mut out),
            }
            cut = true;
        }
        push_framed(&mut wbuf, &out, chunked);
        let end = relay.done || cut || broken;
        // A stream the upstream broke off ends without the last chunk: the client sees it cut.
        if end && chunked && !broken {
            wbuf.extend_from_slice(b"0\r\n\r\n");
        }
        drop((data, out));
        if let (Some(usage), true) = (stream.usage(), c.ex.scan) {
            c.llm.scanner.report(usage);
        }
        if send_buf_stream(c, &mut wbuf, send_timeout).await.is_err() {
            return Next::Close;
        }
        drop(wbuf);
        if end {
            break;
        }
        match read_body_more(ctx, c, &mut up, &mut relay, ucfg.read_timeout).await {
            Ok(()) => {}
            // The upstream's failure is relayed as the client's error event first.
            Err(StreamStop::Upstream(_)) => broken = true,
            Err(stop) => return stopped(c, stop),
        }
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
