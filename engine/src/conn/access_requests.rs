//! A tenant's `/v1/access-requests` on the data port: the body read and checked here, the
//! request filed (or the tenant's list read) by the access thread ([`crate::access`]), whose
//! answer the shard awaits with a monoio sleep between looks, serving its other connections
//! meanwhile. Never any file I/O here.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::call::read_whole_body;
use super::io::send_buf;
use super::local::answer_error;
use super::{Client, Next};
use crate::access::{Ask, Poll, ACCESS_BODY_BYTES_MAX, ACCESS_POLL_MS, ACCESS_REPLY_WAIT_MS_MAX};
use crate::ctx::{ShardCtx, SpareBuf};
use crate::error::Error;
use crate::http::request::{BodyKind, RequestHead};

/// The body of `POST /v1/access-requests`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewRequest {
    model: String,
    #[serde(default)]
    reason: String,
}

/// File a request (`file`) or list the tenant's requests, and answer with the access
/// thread's status and JSON body.
pub(super) async fn serve(
    ctx: &Rc<ShardCtx>,
    c: &mut Client,
    head: RequestHead,
    file: bool,
    wbuf: SpareBuf<'_>,
) -> Next {
    let snap = c.snap.clone();
    c.buf.drain(..head.head_len);
    // An error before the body is read closes the connection (the body is still on it).
    let bodyless = head.body == BodyKind::None && head.keep_alive;
    // Decided only for a tenant (`exchange::head`); without one, refused as a chat call is.
    let Some(t) = c.ex.tenant else {
        return answer_error(ctx, c, Error::Unauthorized, bodyless, wbuf).await;
    };
    if snap.cfg.server.tenant_store.is_none() {
        return answer_error(ctx, c, Error::AccessRequestsOff, bodyless, wbuf).await;
    }
    let (ask, mut wbuf) = if file {
        let limit = ACCESS_BODY_BYTES_MAX as u64;
        let wbuf = match read_whole_body(ctx, c, &head, limit, wbuf).await {
            Ok(w) => w,
            Err(next) => return next,
        };
        match parse(&c.llm.body) {
            Ok(ask) => (ask, wbuf),
            Err(e) => return answer_error(ctx, c, e, head.keep_alive, wbuf).await,
        }
    } else {
        if head.body != BodyKind::None {
            let e = Error::BadRequest("GET /v1/access-requests takes no body");
            return answer_error(ctx, c, e, false, wbuf).await;
        }
        (Ask::List, wbuf)
    };
    let pending = match ctx.access.submit(snap.tenant(t).name.clone(), ask) {
        Ok(p) => p,
        Err(why) => {
            let e = Error::AccessRequestsBusy(why);
            return answer_error(ctx, c, e, head.keep_alive, wbuf).await;
        }
    };
    let started = Instant::now();
    let (status, body) = loop {
        match pending.poll() {
            Poll::Answered(status, body) => break (status, body),
            Poll::Waiting => {}
            Poll::Lost => {
                let e = Error::AccessRequestsBusy(
                    "the access-request thread stopped before it answered",
                );
                return answer_error(ctx, c, e, head.keep_alive, wbuf).await;
            }
        }
        if started.elapsed() >= Duration::from_millis(ACCESS_REPLY_WAIT_MS_MAX) {
            let e = Error::AccessRequestsBusy(
                "no answer in time; GET /v1/access-requests shows whether the request was filed",
            );
            return answer_error(ctx, c, e, head.keep_alive, wbuf).await;
        }
        monoio::time::sleep(Duration::from_millis(ACCESS_POLL_MS)).await;
    };
    let body = body.to_string();
    let keep_alive = head.keep_alive && !ctx.drain.is_fired();
    wbuf.clear();
    crate::http::write_status_line(&mut wbuf, status);
    wbuf.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    crate::http::write_decimal(&mut wbuf, body.len() as u64);
    wbuf.extend_from_slice(b"\r\ncache-control: no-store\r\n");
    if !keep_alive {
        wbuf.extend_from_slice(b"connection: close\r\n");
    }
    // The tenant's rate headers (admitted at the head) ride along.
    wbuf.extend_from_slice(&c.rate_hdrs);
    wbuf.extend_from_slice(b"\r\n");
    wbuf.extend_from_slice(body.as_bytes());
    c.ex.status = status;
    let res = send_buf(c, &mut wbuf, snap.cfg.server.send_timeout).await;
    if res.is_ok() && keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// What the body of `POST /v1/access-requests` asks for.
fn parse(body: &[u8]) -> Result<Ask, Error> {
    match serde_json::from_slice::<NewRequest>(body) {
        Ok(r) => Ok(Ask::File {
            model: r.model,
            reason: r.reason,
        }),
        Err(e) if e.is_syntax() || e.is_eof() => Err(Error::BadBody(
            "the body is not JSON; an access request is a JSON object with a string model and \
             optionally a string reason",
        )),
        Err(_) => Err(Error::BadBody(
            "an access request is a JSON object with a string model (the model asked for) and \
             optionally a string reason, and no other field",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_are_not_a_request_are_refused_with_400() {
        let ok = parse(br#"{"model":"gpt-4o","reason":"evals"}"#).expect("ok");
        assert!(
            matches!(&ok, Ask::File { model, reason } if model == "gpt-4o" && reason == "evals"),
            "{ok:?}"
        );
        assert!(matches!(
            parse(br#"{"model":"gpt-4o"}"#),
            Ok(Ask::File { reason, .. }) if reason.is_empty()
        ));
        for bad in [
            &b""[..],
            b"{",
            b"not json",
            b"[]",
            br#"{"reason":"x"}"#,
            br#"{"model":5}"#,
            br#"{"model":"m","reason":7}"#,
            br#"{"model":"m","modle":"x"}"#,
        ] {
            let e = parse(bad).expect_err("refused");
            assert_eq!((e.status(), e.code()), (400, "invalid_body"), "{bad:?}");
        }
    }
}
