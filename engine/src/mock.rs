//! The built-in demo model (`provider = "mock"`): answers OpenAI-style requests inside the shard,
//! so the embedded default works with no upstream at all. Sans-I/O: it turns a request into
//! response bytes; the connection driver writes them.
//!
//! This is a demo, not the data path: it may allocate, and it parses JSON with serde_json.

use serde_json::{json, Value};

use crate::error::Error;
use crate::http::{write_decimal, write_hex, write_status_line};

/// Pause between streamed chunks, so a terminal shows the answer arriving token by token.
pub const MOCK_CHUNK_INTERVAL_MS: u64 = 10;
/// The model name the mock reports in `GET /v1/models`.
pub const MOCK_MODEL: &str = "demo";

/// What the mock answers: a whole response, or a head followed by chunked SSE frames.
#[derive(Debug)]
pub enum MockReply {
    Whole(Vec<u8>),
    Stream { head: Vec<u8>, frames: Vec<Vec<u8>> },
}

/// The endpoints the mock answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MockEndpoint {
    ChatCompletions,
    Completions,
    Models,
}

impl MockEndpoint {
    /// Whether requests to it carry an LLM body (a model, a prompt).
    pub fn takes_body(self) -> bool {
        !matches!(self, MockEndpoint::Models)
    }
}

/// Which endpoint of the mock this method and path name, if any (the body is read only then).
pub fn serves(method: &str, path: &str) -> Option<MockEndpoint> {
    let path = path.split('?').next().unwrap_or(path);
    match (method, path) {
        ("POST", "/v1/chat/completions") => Some(MockEndpoint::ChatCompletions),
        ("POST", "/v1/completions") => Some(MockEndpoint::Completions),
        ("GET", "/v1/models") => Some(MockEndpoint::Models),
        _ => None,
    }
}

/// The model list for a caller: the demo model when `allowed(MOCK_MODEL)`, nothing otherwise.
pub fn models_for(allowed: impl Fn(&str) -> bool, keep_alive: bool) -> MockReply {
    let data: Vec<Value> = [MOCK_MODEL]
        .into_iter()
        .filter(|m| allowed(m))
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "shardgate"}))
        .collect();
    MockReply::Whole(whole(
        200,
        &json!({"object": "list", "data": data}),
        keep_alive,
    ))
}

/// Answer a request for `endpoint`. `keep_alive` decides `Connection: close`.
pub fn respond(
    endpoint: MockEndpoint,
    body: &[u8],
    now_unix_s: u64,
    keep_alive: bool,
) -> Result<MockReply, Error> {
    if endpoint == MockEndpoint::Models {
        let list = json!({"object": "list", "data": [
            {"id": MOCK_MODEL, "object": "model", "created": 0, "owned_by": "shardgate"}
        ]});
        return Ok(MockReply::Whole(whole(200, &list, keep_alive)));
    }
    let req: Value = serde_json::from_slice(body)
        .map_err(|_| Error::BadRequest("request body is not valid JSON"))?;
    let chat = endpoint == MockEndpoint::ChatCompletions;
    let model = req
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or(MOCK_MODEL)
        .to_owned();
    let prompt_text = if chat {
        let messages = req
            .get("messages")
            .and_then(Value::as_array)
            .ok_or(Error::BadRequest("messages must be an array"))?;
        messages
            .iter()
            .filter_map(|m| m.get("content").and_then(Value::as_str))
            .collect::<String>()
    } else {
        req.get("prompt")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let last_user = if chat {
        req["messages"]
            .as_array()
            .and_then(|m| m.iter().rev().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or("")
    } else {
        prompt_text.as_str()
    };
    let said: String = last_user.chars().take(200).collect();
    let answer = format!("Hello! I am shardgate's built-in demo model. You said: {said}");
    let usage = json!({
        "prompt_tokens": estimate_tokens(&prompt_text),
        "completion_tokens": estimate_tokens(&answer),
        "total_tokens": estimate_tokens(&prompt_text) + estimate_tokens(&answer),
    });
    let id = format!(
        "{}-{now_unix_s:x}",
        if chat { "chatcmpl-demo" } else { "cmpl-demo" }
    );
    let stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    if !stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": answer},
                   "logprobs": null, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": answer, "logprobs": null, "finish_reason": "stop"})
        };
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let resp = json!({"id": id, "object": object, "created": now_unix_s, "model": model,
                          "choices": [choice], "usage": usage});
        return Ok(MockReply::Whole(whole(200, &resp, keep_alive)));
    }
    let include_usage = req
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choice: Value, usage: Option<&Value>| {
        let mut c = json!({"id": id, "object": object, "created": now_unix_s, "model": model,
                           "choices": [choice]});
        if let Some(u) = usage {
            c["choices"] = json!([]);
            c["usage"] = u.clone();
        }
        sse_frame(&c.to_string())
    };
    let mut frames = Vec::new();
    let words: Vec<&str> = answer.split_inclusive(' ').collect();
    for (i, word) in words.iter().enumerate() {
        let choice = if chat {
            let delta = if i == 0 {
                json!({"role": "assistant", "content": word})
            } else {
                json!({"content": word})
            };
            json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": null})
        } else {
            json!({"index": 0, "text": word, "logprobs": null, "finish_reason": null})
        };
        frames.push(chunk(choice, None));
    }
    let last = if chat {
        json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"})
    };
    frames.push(chunk(last, None));
    if include_usage {
        frames.push(chunk(Value::Null, Some(&usage)));
    }
    frames.push(sse_frame("[DONE]"));
    frames.push(b"0\r\n\r\n".to_vec());
    let mut head = Vec::with_capacity(160);
    write_status_line(&mut head, 200);
    head.extend_from_slice(
        b"content-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n",
    );
    if !keep_alive {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok(MockReply::Stream { head, frames })
}

/// A rough token count: 4 bytes a token, at least 1 for non-empty text.
fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// One SSE event as one HTTP chunk.
fn sse_frame(data: &str) -> Vec<u8> {
    let event_len = data.len() + 8; // "data: " + data + "\n\n"
    let mut f = Vec::with_capacity(event_len + 12);
    write_hex(&mut f, event_len as u64);
    f.extend_from_slice(b"\r\ndata: ");
    f.extend_from_slice(data.as_bytes());
    f.extend_from_slice(b"\n\n\r\n");
    f
}

fn whole(status: u16, body: &Value, keep_alive: bool) -> Vec<u8> {
    let body = body.to_string();
    let mut out = Vec::with_capacity(body.len() + 128);
    write_status_line(&mut out, status);
    out.extend_from_slice(b"content-type: application/json\r\ncontent-length: ");
    write_decimal(&mut out, body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::chunked::{ChunkedDecoder, Step};

    const CHAT: &[u8] =
        br#"{"model":"demo","messages":[{"role":"user","content":"Hello World!"}]}"#;

    fn body_of(resp: &[u8]) -> Value {
        let text = std::str::from_utf8(resp).expect("utf8");
        let (_, body) = text.split_once("\r\n\r\n").expect("head");
        serde_json::from_str(body).expect("json")
    }

    #[test]
    fn chat_completion_in_openai_shape() {
        let Ok(MockReply::Whole(resp)) = respond(MockEndpoint::ChatCompletions, CHAT, 7, true)
        else {
            panic!("expected a whole reply")
        };
        let v = body_of(&resp);
        assert_eq!(v["object"], "chat.completion");
        assert_eq!(v["model"], "demo");
        let content = v["choices"][0]["message"]["content"]
            .as_str()
            .expect("content");
        assert!(content.contains("Hello World!"));
        assert_eq!(v["usage"]["prompt_tokens"], 3);
        assert_eq!(
            v["usage"]["total_tokens"].as_u64(),
            Some(3 + v["usage"]["completion_tokens"].as_u64().expect("n"))
        );
    }

    #[test]
    fn stream_is_valid_chunked_sse_ending_in_done_with_usage() {
        let body = br#"{"model":"demo","stream":true,"stream_options":{"include_usage":true},
                        "messages":[{"role":"user","content":"Hi"}]}"#;
        let Ok(MockReply::Stream { head, frames }) =
            respond(MockEndpoint::ChatCompletions, body, 7, true)
        else {
            panic!("expected a stream")
        };
        assert!(String::from_utf8_lossy(&head).contains("text/event-stream"));
        let wire: Vec<u8> = frames.concat();
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut at = 0;
        loop {
            let (n, step) = d.decode(&wire[at..]).expect("valid chunked");
            if let Step::Data(r) = &step {
                data.extend_from_slice(&wire[at..][r.clone()]);
            }
            at += n;
            if step == Step::Done {
                break;
            }
        }
        let text = String::from_utf8(data).expect("utf8");
        let events: Vec<&str> = text.split("\n\n").filter(|e| !e.is_empty()).collect();
        assert_eq!(events.last(), Some(&"data: [DONE]"));
        let usage: Value =
            serde_json::from_str(&events[events.len() - 2]["data: ".len()..]).expect("json");
        assert_eq!(usage["choices"], json!([]));
        assert!(usage["usage"]["total_tokens"].as_u64().is_some());
        let first: Value = serde_json::from_str(&events[0]["data: ".len()..]).expect("json");
        assert_eq!(first["object"], "chat.completion.chunk");
        assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    }

    #[test]
    fn bad_json_is_a_client_error() {
        assert!(matches!(
            respond(MockEndpoint::ChatCompletions, b"{", 0, true),
            Err(Error::BadRequest(_))
        ));
        assert!(matches!(
            respond(MockEndpoint::ChatCompletions, b"{\"messages\":3}", 0, true),
            Err(Error::BadRequest(_))
        ));
    }

    #[test]
    fn models_and_routing() {
        assert_eq!(serves("GET", "/v1/models"), Some(MockEndpoint::Models));
        assert_eq!(
            serves("POST", "/v1/chat/completions?x=1"),
            Some(MockEndpoint::ChatCompletions)
        );
        assert_eq!(serves("GET", "/v1/chat/completions"), None);
        let Ok(MockReply::Whole(resp)) = respond(MockEndpoint::Models, b"", 0, false) else {
            panic!("expected a whole reply")
        };
        assert!(String::from_utf8_lossy(&resp).contains("connection: close"));
        assert_eq!(body_of(&resp)["data"][0]["id"], "demo");
        let MockReply::Whole(none) = models_for(|_| false, true) else {
            panic!("expected a whole reply")
        };
        assert_eq!(body_of(&none)["data"].as_array().map(Vec::len), Some(0));
    }
}
