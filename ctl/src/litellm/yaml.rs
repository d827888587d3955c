//! LiteLLM's config as LiteLLM reads it: `yaml.safe_load`, PyYAML's YAML 1.1. The document is
//! parsed by `yaml-rust2` (its event stream, which keeps each scalar's style) and its plain
//! scalars are resolved as PyYAML's resolver does, not as YAML 1.2: `20_000` is an integer,
//! `yes`/`on`/`off` are booleans, `010` is 8, `1:30` is 90, `1e3` is a string (1.1's floats need
//! a dot and a signed exponent). Quoted and block scalars are strings. Anchors, aliases and
//! `<<` merge keys are followed.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A YAML value after PyYAML's resolution.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string, and whether it was written quoted (or as a block).
    Str(String),
    Seq(Vec<Value>),
    /// In document order; later duplicates win, as in PyYAML.
    Map(Vec<(String, Value)>),
}

impl Value {
    /// The value of `key` in a mapping.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Map(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// What the value is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a number",
            Value::Str(_) => "a string",
            Value::Seq(_) => "a list",
            Value::Map(_) => "a mapping",
        }
    }
}

/// Parse `text` (one document; an empty one is `Null`).
pub fn parse(text: &str) -> Result<Value, String> {
    let mut b = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser
        .load(&mut b, false)
        .map_err(|e| format!("not valid YAML: {e}"))?;
    if let Some(e) = b.error {
        return Err(e);
    }
    Ok(b.root.unwrap_or(Value::Null))
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    anchors: HashMap<usize, Value>,
    root: Option<Value>,
    error: Option<String>,
}

enum Frame {
    Seq(Vec<Value>, usize),
    /// Entries, the key waiting for its value, and the anchor.
    Map(Vec<(String, Value)>, Option<String>, usize),
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let v = resolve(&text, style, tag.as_ref());
                self.push(v, anchor, mark);
            }
            Event::Alias(id) => match self.anchors.get(&id) {
                Some(v) => {
                    let v = v.clone();
                    self.push(v, 0, mark);
                }
                None => self.error = Some(format!("line {}: an alias to no anchor", mark.line())),
            },
            Event::SequenceStart(anchor, _) => self.stack.push(Frame::Seq(Vec::new(), anchor)),
            Event::MappingStart(anchor, _) => {
                self.stack.push(Frame::Map(Vec::new(), None, anchor));
            }
            Event::SequenceEnd => {
                if let Some(Frame::Seq(items, anchor)) = self.stack.pop() {
                    self.push(Value::Seq(items), anchor, mark);
                }
            }
            Event::MappingEnd => {
                if let Some(Frame::Map(entries, _, anchor)) = self.stack.pop() {
                    self.push(Value::Map(entries), anchor, mark);
                }
            }
            _ => {}
        }
    }
}

impl Builder {
    fn push(&mut self, v: Value, anchor: usize, mark: Marker) {
        if anchor != 0 {
            self.anchors.insert(anchor, v.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(v);
                }
            }
            Some(Frame::Seq(items, _)) => items.push(v),
            Some(Frame::Map(entries, pending, _)) => match pending.take() {
                None => match key_text(&v) {
                    Some(k) => *pending = Some(k),
                    None => {
                        self.error = Some(format!(
                            "line {}: a mapping key that is {} (LiteLLM's keys are strings)",
                            mark.line(),
                            v.kind()
                        ));
                    }
                },
                Some(k) if k == "<<" => merge(entries, v),
                Some(k) => entries.push((k, v)),
            },
        }
    }
}

/// `<<: *base` (or a list of them): the merged mappings' entries that the mapping does not set.
fn merge(entries: &mut Vec<(String, Value)>, v: Value) {
    let maps = match v {
        Value::Map(m) => vec![m],
        Value::Seq(s) => s
            .into_iter()
            .filter_map(|x| match x {
                Value::Map(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => return,
    };
    for m in maps {
        for (k, v) in m {
            if !entries.iter().any(|(e, _)| *e == k) {
                entries.push((k, v));
            }
        }
    }
}

/// A key as the string LiteLLM's code would look it up by (PyYAML keeps `1` an int; no
/// LiteLLM key is one).
fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::Str(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.to_owned()),
        Value::Null => Some("None".to_owned()),
        _ => None,
    }
}

/// PyYAML's resolution of one scalar.
fn resolve(text: &str, style: TScalarStyle, tag: Option<&Tag>) -> Value {
    if let Some(t) = tag {
        if t.handle == "tag:yaml.org,2002:" || t.handle == "!!" {
            return match t.suffix.as_str() {
                "str" => Value::Str(text.to_owned()),
                "int" => int(text).map_or_else(|| Value::Str(text.to_owned()), Value::Int),
                "float" => float(text).map_or_else(|| Value::Str(text.to_owned()), Value::Float),
                "bool" => boolean(text).map_or_else(|| Value::Str(text.to_owned()), Value::Bool),
                "null" => Value::Null,
                _ => Value::Str(text.to_owned()),
            };
        }
    }
    if style != TScalarStyle::Plain {
        return Value::Str(text.to_owned());
    }
    if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
        return Value::Null;
    }
    if let Some(b) = boolean(text) {
        return Value::Bool(b);
    }
    if let Some(n) = int(text) {
        return Value::Int(n);
    }
    if let Some(f) = float(text) {
        return Value::Float(f);
    }
    Value::Str(text.to_owned())
}

fn boolean(t: &str) -> Option<bool> {
    match t {
        "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => Some(true),
        "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off" | "OFF" => Some(false),
        _ => None,
    }
}

/// PyYAML 1.1's int: `[-+]?` then `0b[01_]+`, `0x[0-9a-fA-F_]+`, `0[0-7_]+` (octal), `0`,
/// `[1-9][0-9_]*`, or sexagesimal `[1-9][0-9_]*(:[0-5]?[0-9])+`.
fn int(t: &str) -> Option<i64> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    let digits =
        |s: &str, ok: fn(u8) -> bool| !s.is_empty() && s.bytes().all(|b| ok(b) || b == b'_');
    let clean = |s: &str| s.replace('_', "");
    let n = if let Some(b) = body.strip_prefix("0b") {
        digits(b, |c| matches!(c, b'0' | b'1'))
            .then(|| i64::from_str_radix(&clean(b), 2).ok())??
    } else if let Some(h) = body.strip_prefix("0x") {
        digits(h, |c| c.is_ascii_hexdigit()).then(|| i64::from_str_radix(&clean(h), 16).ok())??
    } else if body == "0" {
        0
    } else if let Some(o) = body.strip_prefix('0') {
        digits(o, |c| (b'0'..=b'7').contains(&c))
            .then(|| i64::from_str_radix(&clean(o), 8).ok())??
    } else if body.contains(':') {
        sexagesimal(body)?
    } else {
        let first = *body.as_bytes().first()?;
        if !(b'1'..=b'9').contains(&first) || !digits(body, |c| c.is_ascii_digit()) {
            return None;
        }
        clean(body).parse::<i64>().ok()?
    };
    Some(if neg { -n } else { n })
}

/// `[1-9][0-9_]*(:[0-5]?[0-9])+`: base 60.
fn sexagesimal(body: &str) -> Option<i64> {
    let mut parts = body.split(':');
    let head = parts.next()?;
    if !head.starts_with(|c: char| ('1'..='9').contains(&c))
        || !head.bytes().all(|b| b.is_ascii_digit() || b == b'_')
    {
        return None;
    }
    let mut n: i64 = head.replace('_', "").parse().ok()?;
    for p in parts {
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let d: i64 = p.parse().ok()?;
        if d > 59 {
            return None;
        }
        n = n.checked_mul(60)?.checked_add(d)?;
    }
    Some(n)
}

/// PyYAML 1.1's float: a dot is needed (`1.5`, `.5`, `1.`), an exponent needs its sign
/// (`1.0e+3`), `_` allowed in digits, `.inf`/`.nan` forms, sexagesimal with a fraction.
fn float(t: &str) -> Option<f64> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    match body {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if neg {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            })
        }
        ".nan" | ".NaN" | ".NAN" if t == body => return Some(f64::NAN),
        _ => {}
    }
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(i) => {
            let e = &body[i + 1..];
            let ok = e.len() > 1
                && matches!(e.as_bytes()[0], b'+' | b'-')
                && e[1..].bytes().all(|b| b.is_ascii_digit());
            if !ok {
                return None;
            }
            (&body[..i], Some(e))
        }
        None => (body, None),
    };
    let (int_part, frac) = mantissa.split_once('.')?;
    let int_ok = int_part.is_empty()
        || (int_part.as_bytes()[0].is_ascii_digit()
            && int_part.bytes().all(|b| b.is_ascii_digit() || b == b'_'));
    let frac_ok = frac.bytes().all(|b| b.is_ascii_digit() || b == b'_');
    if !int_ok || !frac_ok || (int_part.is_empty() && frac.is_empty()) {
        return None;
    }
    if int_part.is_empty() && exp.is_none() && frac.is_empty() {
        return None;
    }
    let mut s = format!("{}.{}", int_part.replace('_', ""), frac.replace('_', ""));
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    if s.ends_with('.') {
        s.push('0');
    }
    if let Some(e) = exp {
        s.push('e');
        s.push_str(e);
    }
    let v: f64 = s.parse().ok()?;
    Some(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scalar(t: &str) -> Value {
        match parse(&format!("v: {t}\n")) {
            Ok(Value::Map(m)) => m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null),
            other => panic!("{t}: {other:?}"),
        }
    }

    #[test]
    fn plain_scalars_resolve_as_pyyaml_does() {
        assert_eq!(scalar("20_000"), Value::Int(20_000));
        assert_eq!(scalar("-1_000"), Value::Int(-1_000));
        assert_eq!(scalar("0x1F"), Value::Int(31));
        assert_eq!(scalar("010"), Value::Int(8));
        assert_eq!(scalar("0b101"), Value::Int(5));
        assert_eq!(scalar("1:30"), Value::Int(90));
        assert_eq!(scalar("0"), Value::Int(0));
        assert_eq!(scalar("yes"), Value::Bool(true));
        assert_eq!(scalar("Off"), Value::Bool(false));
        assert_eq!(scalar("~"), Value::Null);
        assert_eq!(scalar(""), Value::Null);
        assert_eq!(scalar("1.5"), Value::Float(1.5));
        assert_eq!(scalar(".5"), Value::Float(0.5));
        assert_eq!(scalar("1.0e+3"), Value::Float(1000.0));
        // 1.1 needs a dot and a signed exponent: these are strings.
        assert_eq!(scalar("1e3"), Value::Str("1e3".into()));
        assert_eq!(scalar("1.0e3"), Value::Str("1.0e3".into()));
        assert_eq!(scalar("09"), Value::Str("09".into()));
        assert_eq!(scalar("'20_000'"), Value::Str("20_000".into()));
        assert_eq!(scalar("\"yes\""), Value::Str("yes".into()));
        assert_eq!(
            scalar("os.environ/AZURE_KEY"),
            Value::Str("os.environ/AZURE_KEY".into())
        );
        assert_eq!(scalar("!!str 10"), Value::Str("10".into()));
        assert_eq!(scalar("gpt-4o"), Value::Str("gpt-4o".into()));
    }

    #[test]
    fn anchors_aliases_and_merges_are_followed() {
        let doc = "base: &b\n  rpm: 10\n  tpm: 20\nx:\n  <<: *b\n  rpm: 5\ny: *b\n";
        let v = parse(doc).expect("parses");
        let x = v.get("x").expect("x");
        assert_eq!(x.get("rpm"), Some(&Value::Int(5)), "its own key wins");
        assert_eq!(x.get("tpm"), Some(&Value::Int(20)), "merged");
        assert_eq!(v.get("y").and_then(|y| y.get("rpm")), Some(&Value::Int(10)));
        assert!(parse("a: [1, 2\n").is_err());
        assert_eq!(parse("").expect("empty"), Value::Null);
    }
}
