//! Prompt templates at config time: `[[templates]]` entries whose messages carry `{{Name}}`
//! placeholders, validated into [`Template`]s for the engine to fill from a request's top-level
//! `variables` object (`shardgate_engine::template`, the request-time half). Free of I/O.
//!
//! ```toml
//! [[templates]]
//! name = "friendly"                  # unique; [A-Za-z0-9_.-]{1,64}
//! mode = "prepend"                   # prepend (default) | replace
//! models = ["support-bot"]           # optional: model aliases that select it
//! routes = ["/v1/support/"]          # optional: path prefixes that select it
//! required = ["Query"]               # optional; default: every placeholder without a default
//! defaults = { Tone = "friendly" }
//! messages = [
//!   { role = "system", content = "Answer in a {{Tone}} tone. {{Query}}" },
//! ]
//! ```
//!
//! [`validate`] turns [`RawTemplate`]s into [`Template`]s, whose contents are pre-parsed into
//! literal text (already JSON-escaped by [`json::write_str_content`], the one JSON string
//! writer) and placeholder slots: the [`Message`]s, each a head and [`Segment`]s, and the
//! [`Variable`]s they name.
//!
//! - **Required variables**: those in `required`, or, without that list, every placeholder
//!   that has no default. A placeholder neither required nor defaulted is filled with the
//!   empty string when missing.
//! - **Placeholder syntax**: `{{Name}}` or `{{ Name }}` with `Name` matching
//!   `[A-Za-z_][A-Za-z0-9_]{0,63}`; `{{{{` is a literal `{{`. Anything else after `{{`
//!   (`{{#if x}}`, `{{a.b}}`, `{{{x}}}`, no closing `}}`) is a config error naming the field.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;

use crate::json;
use crate::limits::MODEL_BYTES_MAX;

/// Most `[[templates]]` entries.
pub const TEMPLATES_MAX: usize = 256;
/// Most messages in one template.
pub const TEMPLATE_MESSAGES_MAX: usize = 64;
/// Most distinct placeholder names in one template.
pub const TEMPLATE_VARIABLES_MAX: usize = 32;
/// Most placeholders (uses, not names) in one template.
pub const TEMPLATE_PLACEHOLDERS_MAX: usize = 64;
/// Most bytes of text in one template: every message's content and every default together.
pub const TEMPLATE_TEXT_BYTES_MAX: usize = 64 * 1024;
/// Longest variable or template name, bytes.
pub const NAME_BYTES_MAX: usize = 64;

const _: () = assert!(NAME_BYTES_MAX <= u8::MAX as usize);
const _: () = assert!(TEMPLATE_VARIABLES_MAX <= TEMPLATE_PLACEHOLDERS_MAX);

/// The roles a template message may have (`tool` needs a `tool_call_id`, so it is left out).
pub const ROLES: [&str; 4] = ["system", "developer", "user", "assistant"];

// ----- config -----

/// A `[[templates]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    name: String,
    #[serde(default)]
    messages: Vec<RawMessage>,
    required: Option<Vec<String>>,
    #[serde(default)]
    defaults: BTreeMap<String, String>,
    mode: Option<String>,
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    routes: Vec<String>,
}

/// One message of a `[[templates]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMessage {
    role: String,
    content: String,
}

/// Where a template's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// Before the request's own messages.
    #[default]
    Prepend,
    /// Instead of the request's messages.
    Replace,
}

/// A validated template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub name: String,
    pub mode: Mode,
    /// Model aliases that select this template.
    pub models: Vec<String>,
    /// Path prefixes that select this template.
    pub routes: Vec<String>,
    variables: Vec<Variable>,
    messages: Vec<Message>,
    fixed_bytes: usize,
}

/// A placeholder name of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub name: String,
    pub required: bool,
    /// The default, JSON-escaped (no quotes).
    pub default: Option<Box<[u8]>>,
    /// Placeholders naming it.
    pub uses: usize,
}

/// A template message, pre-parsed: written as `head`, the segments, then [`MESSAGE_TAIL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// `{"role":"user","content":"`.
    pub head: Box<[u8]>,
    pub segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// Literal text, JSON-escaped (no quotes).
    Text(Box<[u8]>),
    /// A placeholder: index into [`Template::variables`].
    Var(usize),
}

/// What closes a message's content string and the message.
pub const MESSAGE_TAIL: &[u8] = b"\"}";

impl Template {
    /// The placeholders' variables, in order of first use ([`Segment::Var`] indexes it).
    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    /// The messages, in order.
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// Bytes of the messages written with every placeholder empty, commas included.
    pub fn fixed_bytes(&self) -> usize {
        self.fixed_bytes
    }

    /// The placeholder names, in order of first use.
    pub fn variable_names(&self) -> impl Iterator<Item = &str> {
        self.variables.iter().map(|v| v.name.as_str())
    }

    /// Whether a request must give the variable `name`.
    pub fn is_required(&self, name: &str) -> bool {
        self.variables.iter().any(|v| v.name == name && v.required)
    }
}

fn is_variable_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= NAME_BYTES_MAX
        && b.first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn is_template_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= NAME_BYTES_MAX
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A piece of a content string as written.
#[derive(Debug, PartialEq, Eq)]
enum Piece<'a> {
    Text(String),
    Var(&'a str),
}

/// Split a content string into literal text and placeholders. The error is the reason.
fn parse_content(content: &str) -> Result<Vec<Piece<'_>>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while let Some(found) = content.get(i..).and_then(|rest| rest.find("{{")) {
        let at = i + found;
        text.push_str(content.get(i..at).unwrap_or_default());
        let after = content.get(at + 2..).unwrap_or_default();
        if after.starts_with("{{") {
            text.push_str("{{");
            i = at + 4;
            continue;
        }
        let Some(close) = after.find("}}") else {
            return Err(format!(
                "`{{{{` at byte {at} has no closing `}}}}` (write `{{{{{{{{` for a literal `{{{{`)"
            ));
        };
        let inner = after.get(..close).unwrap_or_default();
        let name = inner.trim_matches(' ');
        if !is_variable_name(name) {
            return Err(format!(
                "`{{{{{inner}}}}}` at byte {at}: a placeholder is `{{{{Name}}}}` with Name \
                 matching [A-Za-z_][A-Za-z0-9_]{{0,63}} (write `{{{{{{{{` for a literal `{{{{`)"
            ));
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Var(name));
        i = at + 2 + close + 2;
    }
    text.push_str(content.get(i..).unwrap_or_default());
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A string's JSON form without the quotes.
fn escaped(s: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(s.len() + 8);
    json::write_str_content(&mut out, s.as_bytes());
    out.into_boxed_slice()
}

/// Validate `[[templates]]`: problems go to `error(field, reason)`.
pub fn validate(raw: Vec<RawTemplate>, mut error: impl FnMut(String, String)) -> Vec<Template> {
    if raw.len() > TEMPLATES_MAX {
        error(
            "templates".into(),
            format!("at most {TEMPLATES_MAX} templates"),
        );
    }
    let mut names: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    let mut models: HashMap<String, usize> = HashMap::new();
    let mut routes: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let f = |k: &str| format!("templates[{i}].{k}");
        if !is_template_name(&t.name) {
            error(
                f("name"),
                format!("{:?}: must be 1 to 64 of A-Z a-z 0-9 _ . -", t.name),
            );
        }
        if let Some(j) = names.insert(t.name.clone(), i) {
            error(
                f("name"),
                format!("duplicate name {:?} (also templates[{j}])", t.name),
            );
        }
        let mode = match t.mode.as_deref() {
            None | Some("prepend") => Mode::Prepend,
            Some("replace") => Mode::Replace,
            Some(other) => {
                error(
                    f("mode"),
                    format!("must be \"prepend\" or \"replace\", got {other:?}"),
                );
                Mode::Prepend
            }
        };
        for (k, m) in t.models.iter().enumerate() {
            let field = format!("templates[{i}].models[{k}]");
            if m.is_empty() || m.len() > MODEL_BYTES_MAX {
                error(field, format!("must be 1 to {MODEL_BYTES_MAX} bytes"));
            } else if let Some(j) = models.insert(m.clone(), i) {
                error(field, format!("model {m:?} already selects templates[{j}]"));
            }
        }
        for (k, r) in t.routes.iter().enumerate() {
            let field = format!("templates[{i}].routes[{k}]");
            if !r.starts_with('/') {
                error(field, format!("{r:?}: a path prefix must start with /"));
            } else if let Some(j) = routes.insert(r.clone(), i) {
                error(field, format!("route {r:?} already selects templates[{j}]"));
            }
        }

        if t.messages.is_empty() || t.messages.len() > TEMPLATE_MESSAGES_MAX {
            error(
                f("messages"),
                format!("must have 1 to {TEMPLATE_MESSAGES_MAX} messages"),
            );
        }
        let mut text_bytes = t.defaults.values().map(String::len).sum::<usize>();
        let mut variables: Vec<Variable> = Vec::new();
        let mut placeholders = 0usize;
        let mut messages = Vec::with_capacity(t.messages.len());
        for (k, m) in t.messages.iter().enumerate() {
            let field = |key: &str| format!("templates[{i}].messages[{k}].{key}");
            if !ROLES.contains(&m.role.as_str()) {
                error(
                    field("role"),
                    format!("must be one of {}, got {:?}", ROLES.join(", "), m.role),
                );
            }
            text_bytes = text_bytes.saturating_add(m.content.len());
            let pieces = match parse_content(&m.content) {
                Ok(p) => p,
                Err(reason) => {
                    error(field("content"), reason);
                    continue;
                }
            };
            let mut segments = Vec::with_capacity(pieces.len());
            for piece in pieces {
                match piece {
                    Piece::Text(s) => segments.push(Segment::Text(escaped(&s))),
                    Piece::Var(name) => {
                        placeholders += 1;
                        let at = match variables.iter().position(|v| v.name == name) {
                            Some(at) => at,
                            None => {
                                variables.push(Variable {
                                    name: name.to_owned(),
                                    required: false,
                                    default: None,
                                    uses: 0,
                                });
                                variables.len() - 1
                            }
                        };
                        if let Some(v) = variables.get_mut(at) {
                            v.uses += 1;
                        }
                        segments.push(Segment::Var(at));
                    }
                }
            }
            let mut head = b"{\"role\":".to_vec();
            json::write_str(&mut head, &m.role);
            head.extend_from_slice(b",\"content\":\"");
            messages.push(Message {
                head: head.into_boxed_slice(),
                segments,
            });
        }
        if text_bytes > TEMPLATE_TEXT_BYTES_MAX {
            error(
                f("messages"),
                format!("contents and defaults together must be at most {TEMPLATE_TEXT_BYTES_MAX} bytes"),
            );
        }
        if variables.len() > TEMPLATE_VARIABLES_MAX {
            error(
                f("messages"),
                format!("at most {TEMPLATE_VARIABLES_MAX} distinct placeholder names"),
            );
        }
        if placeholders > TEMPLATE_PLACEHOLDERS_MAX {
            error(
                f("messages"),
                format!("at most {TEMPLATE_PLACEHOLDERS_MAX} placeholders"),
            );
        }
        for (name, value) in &t.defaults {
            match variables.iter_mut().find(|v| &v.name == name) {
                Some(v) => v.default = Some(escaped(value)),
                None => error(
                    format!("templates[{i}].defaults.{name}"),
                    "is not a placeholder of this template's messages".into(),
                ),
            }
        }
        match &t.required {
            None => {
                for v in &mut variables {
                    v.required = v.default.is_none();
                }
            }
            Some(list) => {
                for (k, name) in list.iter().enumerate() {
                    let field = format!("templates[{i}].required[{k}]");
                    match variables.iter_mut().find(|v| &v.name == name) {
                        Some(v) if v.default.is_some() => error(
                            field,
                            format!("{name:?} has a default, so it cannot be required"),
                        ),
                        Some(v) => v.required = true,
                        None => error(
                            field,
                            format!("{name:?} is not a placeholder of this template's messages"),
                        ),
                    }
                }
            }
        }
        let commas = messages.len().saturating_sub(1);
        let fixed_bytes = messages
            .iter()
            .map(|m| {
                m.head.len()
                    + MESSAGE_TAIL.len()
                    + m.segments
                        .iter()
                        .map(|s| match s {
                            Segment::Text(t) => t.len(),
                            Segment::Var(_) => 0,
                        })
                        .sum::<usize>()
            })
            .sum::<usize>()
            + commas;
        out.push(Template {
            name: t.name,
            mode,
            models: t.models,
            routes: t.routes,
            variables,
            messages,
            fixed_bytes,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_syntax() {
        let long = "N".repeat(NAME_BYTES_MAX);
        assert!(parse_content(&format!("{{{{{long}}}}}")).is_ok());
        for bad in [
            "{{",
            "x {{A",
            "{{A}",
            "{{}}",
            "{{ }}",
            "{{1A}}",
            "{{A-B}}",
            "{{a.b}}",
            "{{#if x}}",
            "{{{A}}}",
            "{{A B}}",
            "{{\tA}}",
            &format!("{{{{N{long}}}}}"),
        ] {
            assert!(parse_content(bad).is_err(), "{bad}");
        }
    }
}
