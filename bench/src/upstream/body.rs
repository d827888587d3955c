//! What the mock reads from a JSON request body, cheaply: `model`, `stream`,
//! `stream_options.include_usage`, and the size of the text sent (for `usage`), without building
//! a tree of `messages`. serde_json drives small visitors that borrow the model name and only
//! add up string lengths; everything else is skipped (`IgnoredAny`).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// The fields of an OpenAI or Anthropic request body the mock looks at.
#[derive(Debug, Default, Deserialize)]
pub struct LlmRequest<'a> {
    #[serde(borrow, default)]
    pub model: Option<Str<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// Chat and Anthropic messages.
    #[serde(default)]
    pub messages: Option<Text>,
    /// Legacy completions.
    #[serde(default)]
    pub prompt: Option<Text>,
    /// Embeddings.
    #[serde(default)]
    pub input: Option<Text>,
    /// Anthropic's system prompt (a string or text blocks).
    #[serde(default)]
    pub system: Option<Text>,
}

/// A string borrowed from the body when it has no escapes (serde's own `Option<Cow<str>>`
/// always allocates).
#[derive(Debug)]
pub struct Str<'a>(pub Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Str<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Str<'de>, E> {
                Ok(Str(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: Option<bool>,
}

impl LlmRequest<'_> {
    pub fn parse(body: &[u8]) -> Result<LlmRequest<'_>, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// The model asked for, unescaped.
    pub fn model(&self) -> Option<&str> {
        self.model.as_ref().map(|m| &*m.0)
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false)
    }

    /// UTF-8 bytes of text content in the request (messages, prompt, input, system).
    pub fn text_bytes(&self) -> u64 {
        [&self.messages, &self.prompt, &self.input, &self.system]
            .iter()
            .filter_map(|t| t.as_ref())
            .map(|t| t.bytes)
            .sum()
    }

    /// Embedding inputs: one per element of an `input` array of strings or token arrays, one
    /// for a plain string or a single token array.
    pub fn input_items(&self) -> u64 {
        self.input.as_ref().map_or(0, |t| t.items.max(1))
    }
}

/// The size of a text value: strings count their UTF-8 bytes; arrays add up their elements;
/// objects add up their `content` and `text` members only (so `role`, `type`, `name` and
/// image URLs are not counted); numbers (token ids) count 4 bytes each, one token.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Text {
    pub bytes: u64,
    /// Top-level array elements that are strings or arrays (embedding inputs).
    pub items: u64,
}

/// Bytes one number (a token id) counts as.
const TOKEN_ID_BYTES: u64 = 4;

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut items = 0;
        let bytes = d.deserialize_any(TextVisitor {
            items: Some(&mut items),
        })?;
        Ok(Text { bytes, items })
    }
}

/// Sums text bytes; counts top-level items when `items` is set (the outermost value only).
struct TextVisitor<'c> {
    items: Option<&'c mut u64>,
}

/// The size of a nested value (serde_json bounds the nesting depth at 128).
struct Nested(u64);

impl<'de> Deserialize<'de> for Nested {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TextVisitor { items: None }).map(Nested)
    }
}

/// Whether a nested value was a string or an array (an embedding input), and its size.
struct Item {
    bytes: u64,
    is_input: bool,
}

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Item;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Item, E> {
                Ok(Item {
                    bytes: v.len() as u64,
                    is_input: true,
                })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Item, A::Error> {
                let bytes = TextVisitor { items: None }.visit_seq(seq)?;
                Ok(Item {
                    bytes,
                    is_input: true,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Item, A::Error> {
                let bytes = TextVisitor { items: None }.visit_map(map)?;
                Ok(Item {
                    bytes,
                    is_input: false,
                })
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Item, E> {
                Ok(Item {
                    bytes: TOKEN_ID_BYTES,
                    is_input: false,
                })
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Item, E> {
                self.visit_u64(0)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Item, E> {
                self.visit_u64(0)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Item, E> {
                self.visit_unit()
            }
            fn visit_unit<E: de::Error>(self) -> Result<Item, E> {
                Ok(Item {
                    bytes: 0,
                    is_input: false,
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Visitor<'de> for TextVisitor<'_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
        Ok(v.len() as u64)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<u64, E> {
        Ok(TOKEN_ID_BYTES)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<u64, E> {
        Ok(TOKEN_ID_BYTES)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<u64, E> {
        Ok(TOKEN_ID_BYTES)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut bytes = 0u64;
        match self.items {
            Some(items) => {
                while let Some(item) = seq.next_element::<Item>()? {
                    bytes = bytes.saturating_add(item.bytes);
                    *items += u64::from(item.is_input);
                }
            }
            None => {
                while let Some(Nested(n)) = seq.next_element()? {
                    bytes = bytes.saturating_add(n);
                }
            }
        }
        Ok(bytes)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u64, A::Error> {
        let mut bytes = 0u64;
        while let Some(key) = map.next_key::<Key>()? {
            if key.0 {
                let Nested(n) = map.next_value()?;
                bytes = bytes.saturating_add(n);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(bytes)
    }
}

/// An object key: whether it is `content` or `text` (whose values count as text).
struct Key(bool);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v == "content" || v == "text"))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_stream_and_include_usage() {
        let r = LlmRequest::parse(
            br#"{"model":"gpt-x","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#,
        )
        .expect("valid");
        assert_eq!(r.model(), Some("gpt-x"));
        assert!(r.is_stream() && r.include_usage());
        let r = LlmRequest::parse(br#"{"stream":false,"other":{"deep":[1,2,{"a":null}]}}"#)
            .expect("valid");
        assert!(r.model.is_none() && !r.is_stream() && !r.include_usage());
    }

    #[test]
    fn escaped_model_is_unescaped() {
        let r = LlmRequest::parse(br#"{"model":"a\"b\u00e9"}"#).expect("valid");
        assert_eq!(r.model(), Some("a\"b\u{e9}"));
    }

    #[test]
    fn counts_content_text_only() {
        // "Hello World!" (12) + "sys" (3) + parts "ab" (2) + "cde" (3); roles, types, URLs not.
        let r = LlmRequest::parse(
            br#"{"messages":[
                {"role":"user","content":"Hello World!"},
                {"role":"system","content":"sys","name":"n"},
                {"role":"user","content":[{"type":"text","text":"ab"},
                    {"type":"image_url","image_url":{"url":"http://x/y.png"}},
                    {"type":"text","text":"cde"}]}]}"#,
        )
        .expect("valid");
        assert_eq!(r.text_bytes(), 20);
        let r = LlmRequest::parse(br#"{"system":[{"type":"text","text":"abcd"}],"messages":[{"role":"user","content":"e"}]}"#)
            .expect("valid");
        assert_eq!(r.text_bytes(), 5);
    }

    #[test]
    fn prompt_and_input_forms() {
        let r = LlmRequest::parse(br#"{"prompt":"abcdef"}"#).expect("valid");
        assert_eq!(r.text_bytes(), 6);
        let r = LlmRequest::parse(br#"{"input":"abc"}"#).expect("valid");
        assert_eq!((r.text_bytes(), r.input_items()), (3, 1));
        let r = LlmRequest::parse(br#"{"input":["ab","cd","e"]}"#).expect("valid");
        assert_eq!((r.text_bytes(), r.input_items()), (5, 3));
        let r = LlmRequest::parse(br#"{"input":[1,2,3]}"#).expect("valid");
        assert_eq!((r.text_bytes(), r.input_items()), (12, 1));
        let r = LlmRequest::parse(br#"{"input":[[1,2],[3]]}"#).expect("valid");
        assert_eq!((r.text_bytes(), r.input_items()), (12, 2));
    }

    #[test]
    fn rejects_non_json() {
        assert!(LlmRequest::parse(b"not json").is_err());
        assert!(LlmRequest::parse(br#"{"model":1}"#).is_err());
    }
}
