//! LiteLLM's settings mapped to shardgate's, each by its key path, with a report.

use std::collections::BTreeMap;

use super::yaml::Value;

/// The shardgate config and the report of one import.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub report: Report,
    /// The literal secrets the config held, by the variable the imported config reads each
    /// from: for a file of their own (never printed, never in the report).
    pub secrets: Vec<(String, String)>,
}

/// Where the config's literal secrets go: to a file of their own when the command writes one
/// (`file`), each under a variable the imported config names; otherwise they are reported.
#[derive(Debug, Default)]
pub struct Secrets {
    pub file: bool,
    pub values: Vec<(String, String)>,
}

impl Secrets {
    /// The literal secret `value` of setting `path`, to be read from variable `var`: `var`
    /// when it is kept for the file, `None` (and why, in `r`) when not.
    fn keep(&mut self, var: String, value: &str, path: &str, r: &mut Report) -> Option<String> {
        if !self.file {
            r.skip(
                path,
                "a literal secret: give --secrets FILE (or --out, which puts them in OUT.env) to import it into a file of its own; it is never printed",
            );
            return None;
        }
        // An environment file carries a value as it stands, one line: nothing that quoting
        // rules would change.
        let plain = !value.is_empty()
            && value
                .bytes()
                .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\\' | b'\'' | b'$' | b'`'));
        if !plain {
            r.invalid(
                path,
                "a literal secret with characters an environment file cannot carry as they are (quotes, $, spaces, non-ASCII): set its variable by hand",
            );
            return None;
        }
        r.mapped(
            path,
            format!("read from {var}, written with its value to the secrets file (mode 0600); never printed"),
        );
        self.values.push((var.clone(), value.to_owned()));
        Some(var)
    }
}

/// Every setting of the LiteLLM config, by key path.
#[derive(Debug, Default)]
pub struct Report {
    /// Mapped: path, what it became.
    pub mapped: Vec<(String, String)>,
    /// Without an equivalent (or not imported yet): path, why.
    pub not_imported: Vec<(String, String)>,
    /// What LiteLLM itself would refuse: path, why.
    pub invalid: Vec<(String, String)>,
}

impl Report {
    pub fn mapped(&mut self, path: impl Into<String>, to: impl Into<String>) {
        self.mapped.push((path.into(), to.into()));
    }

    pub(super) fn skip(&mut self, path: impl Into<String>, why: impl Into<String>) {
        self.not_imported.push((path.into(), why.into()));
    }

    pub(super) fn invalid(&mut self, path: impl Into<String>, why: impl Into<String>) {
        self.invalid.push((path.into(), why.into()));
    }

    /// The report as JSON (paths and reasons only: never a value).
    pub fn to_json(&self, source: &str) -> serde_json::Value {
        let list = |v: &[(String, String)], k: &str| {
            v.iter()
                .map(|(p, r)| serde_json::json!({"path": p, k: r}))
                .collect::<Vec<_>>()
        };
        serde_json::json!({
            "source": source,
            "mapped": list(&self.mapped, "to"),
            "not_imported": list(&self.not_imported, "reason"),
            "invalid": list(&self.invalid, "reason"),
        })
    }

    /// One line per setting not imported or invalid, and the counts.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "import: {} settings mapped, {} not imported, {} invalid",
            self.mapped.len(),
            self.not_imported.len(),
            self.invalid.len()
        );
        for (p, r) in &self.invalid {
            s.push_str(&format!("\ninvalid: {p}: {r}"));
        }
        for (p, r) in &self.not_imported {
            s.push_str(&format!("\nnot imported: {p}: {r}"));
        }
        s
    }
}

/// shardgate's providers, as an import names them in `[[upstreams]] provider`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Provider {
    /// OpenAI's API and every server compatible with it.
    Http,
    Anthropic,
    Azure,
    Gemini,
    Bedrock,
}

impl Provider {
    fn config_name(self) -> Option<&'static str> {
        match self {
            Provider::Http => None,
            Provider::Anthropic => Some("anthropic"),
            Provider::Azure => Some("azure"),
            Provider::Gemini => Some("gemini"),
            Provider::Bedrock => Some("bedrock"),
        }
    }
}

/// How a LiteLLM provider (the `litellm_params.model` prefix) is served by shardgate: its
/// provider and the API's base when `api_base` is not given.
struct ProviderRule {
    prefix: &'static str,
    provider: Provider,
    default_base: Option<&'static str>,
}

/// The longest timeout shardgate takes for an upstream, ms (a day).
const TIMEOUT_MS_MAX: u64 = shardgate_core::limits::TIMEOUT_MS_MAX;

/// LiteLLM 1.110.2's `AZURE_DEFAULT_API_VERSION`, used when a deployment gives none.
const AZURE_DEFAULT_API_VERSION: &str = "2025-02-01-preview";

const RULES: &[ProviderRule] = &[
    ProviderRule {
        prefix: "openai",
        provider: Provider::Http,
        default_base: Some("https://api.openai.com"),
    },
    ProviderRule {
        prefix: "text-completion-openai",
        provider: Provider::Http,
        default_base: Some("https://api.openai.com"),
    },
    ProviderRule {
        prefix: "azure",
        provider: Provider::Azure,
        default_base: None,
    },
    ProviderRule {
        prefix: "anthropic",
        provider: Provider::Anthropic,
        default_base: Some("https://api.anthropic.com"),
    },
    ProviderRule {
        prefix: "bedrock",
        provider: Provider::Bedrock,
        default_base: None,
    },
    ProviderRule {
        prefix: "gemini",
        provider: Provider::Gemini,
        default_base: Some("https://generativelanguage.googleapis.com"),
    },
    ProviderRule {
        prefix: "hosted_vllm",
        provider: Provider::Http,
        default_base: None,
    },
    ProviderRule {
        prefix: "vllm",
        provider: Provider::Http,
        default_base: None,
    },
    ProviderRule {
        prefix: "ollama",
        provider: Provider::Http,
        default_base: Some("http://localhost:11434"),
    },
    ProviderRule {
        prefix: "ollama_chat",
        provider: Provider::Http,
        default_base: Some("http://localhost:11434"),
    },
    ProviderRule {
        prefix: "mistral",
        provider: Provider::Http,
        default_base: Some("https://api.mistral.ai"),
    },
    ProviderRule {
        prefix: "deepseek",
        provider: Provider::Http,
        default_base: Some("https://api.deepseek.com"),
    },
    ProviderRule {
        prefix: "together_ai",
        provider: Provider::Http,
        default_base: Some("https://api.together.xyz"),
    },
    ProviderRule {
        prefix: "xai",
        provider: Provider::Http,
        default_base: Some("https://api.x.ai"),
    },
    ProviderRule {
        prefix: "lm_studio",
        provider: Provider::Http,
        default_base: Some("http://localhost:1234"),
    },
];

/// Providers LiteLLM knows whose API shardgate does not speak (or whose base has a path
/// shardgate's endpoints cannot carry): reported, not imported.
const KNOWN_UNSERVED: &[&str] = &[
    "vertex_ai",
    "vertex_ai_beta",
    "openrouter",
    "groq",
    "fireworks_ai",
    "cohere",
    "cohere_chat",
    "huggingface",
    "replicate",
    "perplexity",
    "sagemaker",
    "watsonx",
    "databricks",
    "cloudflare",
    "azure_ai",
    "anyscale",
    "nvidia_nim",
    "cerebras",
    "sambanova",
    "ai21",
    "nlp_cloud",
    "aleph_alpha",
    "petals",
    "palm",
    "voyage",
    "codestral",
    "friendliai",
    "github",
    "custom_openai",
    "triton",
    "predibase",
    "clarifai",
    "baseten",
    "deepinfra",
    "empower",
    "volcengine",
    "dashscope",
    "moonshot",
    "openai_like",
    "custom",
    "litellm_proxy",
    "text-completion-codestral",
    "jina_ai",
];

/// Bare model names LiteLLM resolves by exact membership of its model lists, with the
/// provider each resolves to (LiteLLM 1.110.2's `model_prices_and_context_window_backup.json`,
/// by `gen_unprefixed.py`).
const UNPREFIXED: &str = include_str!("unprefixed.tsv");

/// The provider of a bare model name, as LiteLLM's `get_llm_provider` decides it: exact
/// membership of its lists, its `ft:gpt-3.5-turbo`/`ft:gpt-4`, `gpt-image` and `*` rules, then
/// its routing generalizations (a Bedrock-syntax Claude id, a bare Claude family id). `None`:
/// LiteLLM refuses it ("LLM Provider NOT provided").
fn unprefixed(model: &str) -> Option<&'static str> {
    let exact = UNPREFIXED
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            l.split_once('\t')
                .filter(|(m, _)| *m == model)
                .map(|(_, p)| p)
        });
    if let Some(p) = exact {
        return Some(p);
    }
    if model.contains("ft:gpt-3.5-turbo")
        || model.contains("ft:gpt-4")
        || model.starts_with("gpt-image")
        || model == "*"
    {
        return Some("openai");
    }
    let lower = model.to_ascii_lowercase();
    // ^(?:[a-z-]+\.)?anthropic\.claude-
    let bedrock_claude = lower.starts_with("anthropic.claude-")
        || lower.split_once('.').is_some_and(|(geo, rest)| {
            !geo.is_empty()
                && geo.bytes().all(|b| b.is_ascii_lowercase() || b == b'-')
                && rest.starts_with("anthropic.claude-")
        });
    if bedrock_claude {
        return Some("bedrock");
    }
    if bare_claude_id(&lower) {
        return Some("anthropic");
    }
    None
}

/// `^claude-[a-z]+-\d+(?:[-.]\d+)?(?:-\d{8})?$`
fn bare_claude_id(m: &str) -> bool {
    let Some(rest) = m.strip_prefix("claude-") else {
        return false;
    };
    let fam = rest.bytes().take_while(u8::is_ascii_lowercase).count();
    let Some(rest) = rest
        .get(fam..)
        .filter(|_| fam > 0)
        .and_then(|r| r.strip_prefix('-'))
    else {
        return false;
    };
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let major = digits(rest);
    if major == 0 {
        return false;
    }
    let mut rest = &rest[major..];
    // (?:[-.]\d+)? then (?:-\d{8})?: try the optional minor, then the date, to the end.
    let date_then_end = |r: &str| {
        r.is_empty()
            || (r.len() == 9 && r.starts_with('-') && r[1..].bytes().all(|b| b.is_ascii_digit()))
    };
    if date_then_end(rest) {
        return true;
    }
    if let Some(r) = rest.strip_prefix(['-', '.']) {
        let minor = digits(r);
        if minor > 0 {
            rest = &r[minor..];
            return date_then_end(rest);
        }
    }
    false
}

/// What `litellm_params.model` names: the provider's prefix and the model asked of it.
fn split_model(model: &str) -> (Option<&str>, &str) {
    match model.split_once('/') {
        Some((p, m)) => (Some(p), m),
        None => (None, model),
    }
}

/// An `os.environ/NAME` reference.
fn env_ref(v: &str) -> Option<&str> {
    v.strip_prefix("os.environ/").filter(|n| !n.is_empty())
}

/// `http(s)://host[:port]` of an `api_base`, when its path is one shardgate's endpoints can
/// serve (none, or `/v1`: the client's path already begins with `/v1/`).
fn endpoint_of(base: &str) -> Result<String, String> {
    let (scheme, rest) = if let Some(r) = base.strip_prefix("https://") {
        ("https", r)
    } else if let Some(r) = base.strip_prefix("http://") {
        ("http", r)
    } else {
        return Err("not an http:// or https:// URL".to_owned());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return Err("no host (or credentials in the URL)".to_owned());
    }
    match path.trim_end_matches('/') {
        "" | "/v1" => Ok(format!("{scheme}://{authority}")),
        p => Err(format!(
            "its path {p:?}: shardgate's endpoints are host and port, and the client's /v1/... path is sent as it came"
        )),
    }
}

/// A name for an upstream: the group's, made safe, with its place.
fn slug(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    out.truncate(48);
    out
}

/// An integer setting (PyYAML's int, or a whole float, or a numeric string as LiteLLM's
/// `int()` would take it).
fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::Float(f) if f.fract() == 0.0 && *f >= 0.0 && *f < 1e15 => Some(whole(*f)),
        Value::Str(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A whole, non-negative number below 2^53 (checked by the callers) as an integer.
#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn whole(f: f64) -> u64 {
    f as u64
}

/// Seconds (LiteLLM's timeouts) as milliseconds.
fn as_seconds_ms(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok().map(|s| s.saturating_mul(1000)),
        Value::Float(f) if *f > 0.0 && *f < 1e9 => Some(whole((f * 1000.0).round())),
        Value::Str(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| *f > 0.0 && *f < 1e9)
            .map(|f| whole((f * 1000.0).round())),
        _ => None,
    }
}

/// One deployment, as imported.
#[derive(Debug)]
struct Deployment {
    group: String,
    upstream: toml::Table,
    model: String,
    rpm: Option<u64>,
    tpm: Option<u64>,
    /// Its custom pricing as a `[[prices]]` entry for its model, and the settings it came from.
    price: Option<(toml::Table, Vec<String>)>,
}

/// LiteLLM's custom pricing fields (USD per token) and the `[[prices]]` keys (USD per million
/// tokens) they become.
const PRICE_FIELDS: [(&str, &str); 4] = [
    ("input_cost_per_token", "input_usd_per_mtok"),
    ("output_cost_per_token", "output_usd_per_mtok"),
    ("cache_read_input_token_cost", "cached_input_usd_per_mtok"),
    (
        "cache_creation_input_token_cost",
        "cache_write_usd_per_mtok",
    ),
];

/// A deployment's custom pricing, per field from `litellm_params` over `model_info` (as
/// LiteLLM's router registers it): a `[[prices]]` entry for `model`, with the setting paths
/// it came from; reported in `r`. Both the input and the output price are needed (an entry
/// replaces shardgate's default for the model whole).
fn custom_price(
    params: &Value,
    info: Option<&Value>,
    model: &str,
    at: &str,
    r: &mut Report,
) -> Option<(toml::Table, Vec<String>)> {
    let mut entry = toml::Table::new();
    let mut paths = Vec::new();
    for (field, key) in PRICE_FIELDS {
        let from_params = params.get(field).map(|v| (v, "litellm_params"));
        let found = from_params.or_else(|| info?.get(field).map(|v| (v, "model_info")));
        if let (Some(_), Some(_)) = (params.get(field), info.and_then(|i| i.get(field))) {
            r.skip(
                format!("{at}.model_info.{field}"),
                "litellm_params sets it too, and wins (as LiteLLM registers a deployment's pricing)",
            );
        }
        let Some((v, section)) = found else { continue };
        let path = format!("{at}.{section}.{field}");
        let per_token = match v {
            Value::Int(n) => Some(*n as f64),
            Value::Float(f) => Some(*f),
            Value::Str(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        let per_mtok = per_token.map(|x| x * 1_000_000.0);
        match per_mtok {
            Some(p)
                if p.is_finite()
                    && (0.0..=shardgate_core::prices::PRICE_USD_PER_MTOK_MAX).contains(&p) =>
            {
                entry.insert(key.into(), toml::Value::Float(p));
                paths.push(path);
            }
            _ => r.invalid(path, "not a price in US dollars per token"),
        }
    }
    if paths.is_empty() {
        return None;
    }
    if !(entry.contains_key("input_usd_per_mtok") && entry.contains_key("output_usd_per_mtok")) {
        for p in paths {
            r.skip(
                p,
                "only one of input_cost_per_token and output_cost_per_token: a [[prices]] entry needs both (shardgate's default table prices the model)",
            );
        }
        return None;
    }
    entry.insert("model".into(), model.into());
    Some((entry, paths))
}

/// Map `doc` (a LiteLLM config). `env` reads an environment variable (for nothing but
/// checking that a referenced one is set: values are never copied).
#[cfg(test)]
pub fn import(doc: &Value, env: &dyn Fn(&str) -> Option<String>) -> Result<Imported, String> {
    import_with_store(doc, env, None, true)
}

/// [`import`], the keys of `store` (a tenant store written beside the config) in force;
/// `secrets_file`: whether literal secrets go to a file of their own.
pub fn import_with_store(
    doc: &Value,
    env: &dyn Fn(&str) -> Option<String>,
    store: Option<&str>,
    secrets_file: bool,
) -> Result<Imported, String> {
    let Value::Map(top) = doc else {
        return Err(format!("the config is {}, not a mapping", doc.kind()));
    };
    let mut r = Report::default();
    let mut secrets = Secrets {
        file: secrets_file,
        values: Vec::new(),
    };
    let mut deployments: Vec<Deployment> = Vec::new();
    for (key, value) in top {
        match key.as_str() {
            "model_list" => model_list(value, &mut deployments, &mut secrets, &mut r),
            "router_settings" | "litellm_settings" | "general_settings" => {}
            "environment_variables" => r.skip(
                "environment_variables",
                "variables LiteLLM sets in its own process: set them in shardgate's environment (the unit's Environment=); not copied, they may hold secrets",
            ),
            other => r.skip(other, "not a LiteLLM proxy setting shardgate knows"),
        }
    }
    // Groups in the order their first deployment stands.
    let mut groups: Vec<String> = Vec::new();
    for d in &deployments {
        if !groups.contains(&d.group) {
            groups.push(d.group.clone());
        }
    }
    let settings = Settings::read(doc, &groups, env, &mut secrets, &mut r);
    let mut cfg = toml::Table::new();
    let mut server = toml::Table::new();
    server.insert("listen".into(), "0.0.0.0:4000".into());
    if let Some(path) = store {
        server.insert("tenant_store".into(), path.into());
    }
    if let Some(hash) = &settings.master_key_sha256 {
        // LiteLLM's master key both calls models and manages keys: an admin token that is also
        // the master tenant's key.
        server.insert(
            "admin_tokens".into(),
            toml::Value::Array(vec![format!("sha256:{hash}").into()]),
        );
        server.insert("admin_token_tenant".into(), "litellm-master".into());
    }
    if settings.master_key_sha256.is_none() && store.is_none() {
        // LiteLLM without a master key serves every caller.
        server.insert("auth".into(), "none".into());
        r.mapped(
            "(no master_key)",
            "[server] auth = \"none\": LiteLLM without a master key serves every caller",
        );
    }
    cfg.insert("server".into(), server.into());
    if let Some((url, pw)) = &settings.redis {
        let mut fleet = toml::Table::new();
        fleet.insert("redis".into(), url.clone().into());
        if let Some(v) = pw {
            fleet.insert("redis_password_env".into(), v.clone().into());
        }
        cfg.insert("fleet".into(), fleet.into());
    }
    r.mapped(
        "(listen)",
        "[server] listen = \"0.0.0.0:4000\" (LiteLLM's proxy port)",
    );
    let mut upstreams = Vec::new();
    let mut models: BTreeMap<String, Vec<toml::Value>> = BTreeMap::new();
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    // Custom pricing: one [[prices]] entry per model (shardgate prices a model once).
    let mut prices: Vec<toml::Table> = Vec::new();
    for d in &deployments {
        let Some((entry, paths)) = &d.price else {
            continue;
        };
        match prices.iter().find(|p| p.get("model") == entry.get("model")) {
            Some(same) if same == entry => {}
            Some(_) => {
                for p in paths {
                    r.skip(
                        p.clone(),
                        format!("another deployment of {:?} is priced differently: shardgate prices a model once (the first deployment's applies)", d.model),
                    );
                }
                continue;
            }
            None => prices.push(entry.clone()),
        }
        for p in paths {
            r.mapped(
                p.clone(),
                format!(
                    "[[prices]] of model {:?} (US dollars per million tokens)",
                    d.model
                ),
            );
        }
    }
    for d in deployments {
        let n = per_group.entry(d.group.clone()).or_default();
        *n += 1;
        let name = format!("{}-{}", slug(&d.group), n);
        let mut up = d.upstream;
        up.insert("name".into(), name.clone().into());
        // The router's timeout, where the deployment set none of its own (LiteLLM's order).
        let t = clamp_i64(settings.timeout_ms);
        up.entry("ttfb_timeout_ms")
            .or_insert(toml::Value::Integer(t));
        up.entry("read_timeout_ms")
            .or_insert(toml::Value::Integer(t));
        upstreams.push(toml::Value::Table(up));
        let mut dep = toml::Table::new();
        dep.insert("upstream".into(), name.into());
        dep.insert("model".into(), d.model.into());
        if let Some(v) = d.rpm {
            dep.insert("rpm".into(), toml::Value::Integer(clamp_i64(v)));
        }
        if let Some(v) = d.tpm {
            dep.insert("tpm".into(), toml::Value::Integer(clamp_i64(v)));
        }
        models
            .entry(d.group)
            .or_default()
            .push(toml::Value::Table(dep));
    }
    cfg.insert("upstreams".into(), toml::Value::Array(upstreams));
    let mut groups_out = Vec::new();
    let mut emit = |name: &str, deps: &[toml::Value]| {
        let mut g = toml::Table::new();
        g.insert("name".into(), name.into());
        g.insert("strategy".into(), settings.strategy.into());
        g.insert(
            "retries".into(),
            toml::Value::Integer(clamp_i64(settings.retries)),
        );
        g.insert(
            "eject_after_failures".into(),
            toml::Value::Integer(clamp_i64(settings.eject_after)),
        );
        g.insert(
            "cooldown_ms".into(),
            toml::Value::Integer(clamp_i64(settings.cooldown_ms)),
        );
        for (key, list) in [
            ("fallbacks", &settings.fallbacks),
            ("context_window_fallbacks", &settings.context_fallbacks),
        ] {
            if let Some(f) = list.get(name) {
                g.insert(
                    key.into(),
                    toml::Value::Array(f.iter().map(|s| s.clone().into()).collect()),
                );
            }
        }
        g.insert("deployments".into(), toml::Value::Array(deps.to_vec()));
        groups_out.push(toml::Value::Table(g));
    };
    for name in &groups {
        if let Some(deps) = models.get(name) {
            emit(name, deps);
        }
    }
    // An alias is a group of its own with the target's deployments.
    for (alias, target) in &settings.aliases {
        if let Some(deps) = models.get(target) {
            emit(alias, deps);
        }
    }
    cfg.insert("models".into(), toml::Value::Array(groups_out));
    if !prices.is_empty() {
        cfg.insert(
            "prices".into(),
            toml::Value::Array(prices.into_iter().map(toml::Value::Table).collect()),
        );
    }
    if let Some(hash) = &settings.master_key_sha256 {
        let mut t = toml::Table::new();
        t.insert("name".into(), "litellm-master".into());
        t.insert(
            "keys".into(),
            toml::Value::Array(vec![format!("sha256:{hash}").into()]),
        );
        cfg.insert("tenants".into(), toml::Value::Array(vec![t.into()]));
    }
    let header = "# Imported from a LiteLLM proxy config by `shardgate-ctl import litellm`.\n\
                  # Every setting's fate is in the import report.\n";
    let body = toml::to_string(&cfg).map_err(|e| format!("writing TOML: {e}"))?;
    Ok(Imported {
        toml: format!("{header}{body}"),
        report: r,
        secrets: secrets.values,
    })
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn model_list(value: &Value, out: &mut Vec<Deployment>, secrets: &mut Secrets, r: &mut Report) {
    let Value::Seq(entries) = value else {
        r.invalid("model_list", format!("is {}, not a list", value.kind()));
        return;
    };
    for (i, e) in entries.iter().enumerate() {
        let at = format!("model_list[{i}]");
        let kept = secrets.values.len();
        match deployment(e, &at, secrets, r) {
            Some(d) => out.push(d),
            // The whole entry is left out: said once for it, beside the field that caused it,
            // so each of its settings is accounted for.
            None => {
                // Nothing of it was mapped after all (its key not written either).
                secrets.values.truncate(kept);
                let prefix = format!("{at}.");
                r.mapped.retain(|(p, _)| !p.starts_with(&prefix));
                let said = r
                    .invalid
                    .iter()
                    .chain(&r.not_imported)
                    .any(|(p, _)| *p == at);
                if !said {
                    let why = r
                        .invalid
                        .iter()
                        .chain(&r.not_imported)
                        .rev()
                        .find(|(p, _)| p.starts_with(&format!("{at}.")))
                        .map_or_else(String::new, |(p, _)| format!(" (see {p})"));
                    r.skip(at, format!("deployment not imported{why}"));
                }
            }
        }
    }
}

fn deployment(e: &Value, at: &str, secrets: &mut Secrets, r: &mut Report) -> Option<Deployment> {
    let Value::Map(entry) = e else {
        r.invalid(at, format!("is {}, not a mapping", e.kind()));
        return None;
    };
    let Some(group) = e.get("model_name").and_then(Value::as_str) else {
        r.invalid(format!("{at}.model_name"), "missing (LiteLLM needs it)");
        return None;
    };
    let Some(params) = e.get("litellm_params") else {
        r.invalid(format!("{at}.litellm_params"), "missing (LiteLLM needs it)");
        return None;
    };
    let Some(model) = params.get("model").and_then(Value::as_str) else {
        r.invalid(
            format!("{at}.litellm_params.model"),
            "missing (LiteLLM needs it)",
        );
        return None;
    };
    let (prefix, name) = split_model(model);
    let provider_name = match prefix {
        Some(p) => p,
        None => match unprefixed(model) {
            Some(p) => p,
            None => {
                r.invalid(
                    format!("{at}.litellm_params.model"),
                    format!("{model:?}: a bare name LiteLLM (1.110.2) does not know (not in its model list, which drops retired models; no routing rule matches): it would refuse it. Write it with its provider, e.g. \"openai/{model}\""),
                );
                return None;
            }
        },
    };
    if name.is_empty() {
        r.invalid(
            format!("{at}.litellm_params.model"),
            format!("{model:?}: no model after the provider"),
        );
        return None;
    }
    if name.contains('*') {
        r.skip(
            at,
            format!("{model:?}: a wildcard route (any model to {provider_name:?}); shardgate's groups name their models (deployment of {group:?} not imported)"),
        );
        return None;
    }
    let Some(rule) = RULES.iter().find(|x| x.prefix == provider_name) else {
        if KNOWN_UNSERVED.contains(&provider_name) {
            r.skip(
                at,
                format!("provider {provider_name:?}: shardgate does not speak its API (deployment of {group:?} not imported)"),
            );
        } else {
            r.invalid(
                format!("{at}.litellm_params.model"),
                format!("provider {provider_name:?}: LiteLLM does not know it either"),
            );
        }
        return None;
    };
    let mut up = toml::Table::new();
    if let Some(p) = rule.provider.config_name() {
        up.insert("provider".into(), p.into());
    }
    r.mapped(
        format!("{at}.litellm_params.model"),
        format!("provider {provider_name:?}, model {name:?}"),
    );
    // Where it is.
    let base = params
        .get("api_base")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let base = match (base, rule.default_base) {
        (Some(b), _) => {
            r.mapped(
                format!("{at}.litellm_params.api_base"),
                "the upstream's endpoint",
            );
            Some(b)
        }
        (None, Some(d)) => Some(d.to_owned()),
        (None, None) if rule.provider == Provider::Bedrock => None,
        (None, None) => {
            r.invalid(
                format!("{at}.litellm_params.api_base"),
                format!("missing: provider {provider_name:?} needs it"),
            );
            return None;
        }
    };
    if let Some(b) = base {
        if env_ref(&b).is_some() {
            r.skip(format!("{at}.litellm_params.api_base"), "an environment reference: shardgate's endpoints are written in the config (set it by hand)");
            return None;
        }
        match endpoint_of(&b) {
            Ok(ep) => {
                up.insert("endpoints".into(), toml::Value::Array(vec![ep.into()]));
            }
            Err(why) => {
                r.skip(
                    format!("{at}.litellm_params.api_base"),
                    format!("{why} (deployment of {group:?} not imported)"),
                );
                return None;
            }
        }
    }
    for (k, v) in match params {
        Value::Map(m) => m.as_slice(),
        _ => &[],
    } {
        let path = format!("{at}.litellm_params.{k}");
        match k.as_str() {
            "model" | "api_base" | "rpm" | "tpm" => {}
            // Custom pricing: read by `custom_price`.
            f if PRICE_FIELDS.iter().any(|(p, _)| *p == f) => {}
            "api_key" => match v.as_str() {
                Some(s) if env_ref(s).is_some() => {
                    up.insert("api_key_env".into(), env_ref(s).unwrap_or_default().into());
                    r.mapped(path, "api_key_env");
                }
                Some(key) => {
                    // Named by the entry, so the file's lines point back to the config.
                    let entry = at.trim_start_matches("model_list[").trim_end_matches(']');
                    let var = format!("LITELLM_MODEL_{entry}_API_KEY");
                    if let Some(var) = secrets.keep(var, key, &path, r) {
                        up.insert("api_key_env".into(), var.into());
                    }
                }
                None => r.invalid(path, format!("is {}, not a string", v.kind())),
            },
            "api_version" if rule.provider == Provider::Azure => match v.as_str() {
                Some(s) if env_ref(s).is_none() => {
                    up.insert("api_version".into(), s.into());
                    r.mapped(path, "api_version");
                }
                _ => r.skip(path, "not a literal string"),
            },
            "aws_region_name" if rule.provider == Provider::Bedrock => match v.as_str() {
                Some(s) if env_ref(s).is_none() => {
                    up.insert("region".into(), s.into());
                    r.mapped(path, "region");
                }
                _ => r.skip(path, "not a literal string"),
            },
            // The deployment's whole-request timeout: its time to the first byte and between
            // reads (a stream's `stream_timeout` only the latter).
            "timeout" | "stream_timeout" => match as_seconds_ms(v) {
                Some(ms) => {
                    let ms = toml::Value::Integer(clamp_i64(ms.min(TIMEOUT_MS_MAX)));
                    if k == "timeout" {
                        up.insert("ttfb_timeout_ms".into(), ms.clone());
                        up.insert("read_timeout_ms".into(), ms);
                        r.mapped(path, "the upstream's ttfb_timeout_ms and read_timeout_ms");
                    } else {
                        up.insert("read_timeout_ms".into(), ms);
                        r.mapped(path, "the upstream's read_timeout_ms");
                    }
                }
                None => r.invalid(path, "not a number of seconds"),
            },
            _ => r.skip(path, "no shardgate equivalent for this deployment setting"),
        }
    }
    if rule.provider == Provider::Bedrock {
        let Some(region) = up
            .get("region")
            .and_then(toml::Value::as_str)
            .map(str::to_owned)
        else {
            r.skip(
                format!("{at}.litellm_params.aws_region_name"),
                "not given (LiteLLM would read AWS_REGION_NAME from its environment): set the upstream's region by hand (deployment not imported)",
            );
            return None;
        };
        if !up.contains_key("endpoints") {
            let ep = format!("https://bedrock-runtime.{region}.amazonaws.com");
            up.insert("endpoints".into(), toml::Value::Array(vec![ep.into()]));
        }
    }
    if rule.provider == Provider::Azure && !up.contains_key("api_version") {
        up.insert("api_version".into(), AZURE_DEFAULT_API_VERSION.into());
        r.mapped(
            format!("{at}.litellm_params.api_version"),
            format!("not given: LiteLLM's default {AZURE_DEFAULT_API_VERSION:?}"),
        );
    }
    // rpm/tpm: the entry, then litellm_params, then model_info, as LiteLLM's usage-based
    // routing reads them (the first it finds).
    let limit = |k: &str, r: &mut Report| -> Option<u64> {
        let mut found = None;
        for (where_, v) in [
            ("", e.get(k)),
            ("litellm_params", params.get(k)),
            ("model_info", e.get("model_info").and_then(|m| m.get(k))),
        ] {
            let Some(v) = v else { continue };
            let path = if where_.is_empty() {
                format!("{at}.{k}")
            } else {
                format!("{at}.{where_}.{k}")
            };
            if found.is_some() {
                r.skip(path, format!("LiteLLM reads the deployment's {k} from where it finds it first (the entry, then litellm_params, then model_info)"));
                continue;
            }
            match as_u64(v) {
                Some(n) => {
                    r.mapped(path, format!("the deployment's {k}"));
                    found = Some(n);
                }
                None => r.invalid(path, format!("is {}, not a whole number", v.kind())),
            }
        }
        found
    };
    let rpm = limit("rpm", r);
    let tpm = limit("tpm", r);
    let price = custom_price(params, e.get("model_info"), name, at, r);
    for (k, _) in entry {
        match k.as_str() {
            "model_name" | "litellm_params" | "rpm" | "tpm" => {}
            "model_info" => {
                if let Some(Value::Map(info)) = e.get("model_info") {
                    for (ik, _) in info {
                        let priced = PRICE_FIELDS.iter().any(|(f, _)| f == ik);
                        if !matches!(ik.as_str(), "rpm" | "tpm") && !priced {
                            r.skip(
                                format!("{at}.model_info.{ik}"),
                                "model metadata: shardgate has no equivalent",
                            );
                        }
                    }
                }
            }
            other => r.skip(format!("{at}.{other}"), "no shardgate equivalent"),
        }
    }
    Some(Deployment {
        group: group.to_owned(),
        upstream: up,
        model: name.to_owned(),
        rpm,
        tpm,
        price,
    })
}

/// The router's settings, `router_settings` over `litellm_settings` as LiteLLM's precedence.
struct Settings {
    strategy: &'static str,
    retries: u64,
    /// The router's timeout (LiteLLM's default 6000 s), ms.
    timeout_ms: u64,
    fallbacks: BTreeMap<String, Vec<String>>,
    context_fallbacks: BTreeMap<String, Vec<String>>,
    aliases: Vec<(String, String)>,
    /// `allowed_fails` + 1 (LiteLLM cools a deployment down past its allowed failures), and
    /// `cooldown_time`, ms: each group's ejection.
    eject_after: u64,
    cooldown_ms: u64,
    /// The master key's SHA-256 (hex): a tenant that may call every group.
    master_key_sha256: Option<String>,
    /// `[fleet]`: Redis's URL and its password's variable.
    redis: Option<(String, Option<String>)>,
}

impl Settings {
    fn read(
        doc: &Value,
        groups: &[String],
        env: &dyn Fn(&str) -> Option<String>,
        secrets: &mut Secrets,
        r: &mut Report,
    ) -> Self {
        let router = doc.get("router_settings");
        let lite = doc.get("litellm_settings");
        let general = doc.get("general_settings");
        let mut s = Settings {
            strategy: "round_robin",
            // LiteLLM's default num_retries.
            retries: 2,
            timeout_ms: 6_000_000,
            fallbacks: BTreeMap::new(),
            context_fallbacks: BTreeMap::new(),
            aliases: Vec::new(),
            master_key_sha256: None,
            redis: None,
            // LiteLLM's defaults: 3 failures allowed, a 5 s cool-down.
            eject_after: 4,
            cooldown_ms: 5_000,
        };
        // Which section a setting is read from: router_settings first.
        let pick = |k: &str| -> Option<(String, &Value)> {
            router
                .and_then(|x| x.get(k))
                .map(|v| (format!("router_settings.{k}"), v))
                .or_else(|| {
                    lite.and_then(|x| x.get(k))
                        .map(|v| (format!("litellm_settings.{k}"), v))
                })
        };
        let mut seen: Vec<String> = Vec::new();
        match pick("routing_strategy") {
            Some((p, v)) => {
                seen.push(p.clone());
                match v.as_str() {
                    Some("simple-shuffle") => {
                        r.mapped(p, "strategy = \"round_robin\" (a shuffle over the deployments; shardgate's is deterministic)");
                    }
                    Some("least-busy") => {
                        s.strategy = "least_outstanding";
                        r.mapped(p, "strategy = \"least_outstanding\"");
                    }
                    Some("latency-based-routing") => {
                        s.strategy = "latency";
                        r.mapped(p, "strategy = \"latency\"");
                    }
                    Some(other) => r.skip(p, format!("{other:?}: shardgate has no such strategy; round_robin is used (deployment rpm/tpm still cap each deployment)")),
                    None => r.invalid(p, "not a string"),
                }
            }
            None => r.mapped(
                "(routing_strategy)",
                "LiteLLM's default simple-shuffle: strategy = \"round_robin\"",
            ),
        }
        if pick("num_retries").is_none() {
            r.mapped("(num_retries)", "LiteLLM's default 2: retries = 2");
        }
        if let Some((p, v)) = pick("num_retries") {
            seen.push(p.clone());
            match as_u64(v) {
                Some(n) => {
                    s.retries = n.min(10);
                    r.mapped(p, format!("retries = {} (at most 10)", s.retries));
                }
                None => r.invalid(p, "not a whole number"),
            }
        }
        let mut timeout_read = false;
        for k in ["timeout", "request_timeout"] {
            if let Some((p, v)) = pick(k) {
                seen.push(p.clone());
                if timeout_read {
                    r.skip(
                        p,
                        "a timeout was already read from a setting LiteLLM prefers",
                    );
                    continue;
                }
                match as_seconds_ms(v) {
                    Some(ms) => {
                        s.timeout_ms = ms.min(TIMEOUT_MS_MAX);
                        timeout_read = true;
                        r.mapped(p, "each upstream's ttfb_timeout_ms and read_timeout_ms (where its deployment sets none)");
                    }
                    None => r.invalid(p, "not a number of seconds"),
                }
            }
        }
        if !timeout_read {
            r.mapped("(timeout)", "LiteLLM's default 6000 s: each upstream's ttfb_timeout_ms and read_timeout_ms (where its deployment sets none)");
        }
        for (key, what) in [
            ("fallbacks", "the group's fallbacks"),
            (
                "context_window_fallbacks",
                "the group's context_window_fallbacks (taken when an upstream answers that the request overflowed its model's context window, as LiteLLM reads that answer)",
            ),
        ] {
            if let Some((p, v)) = pick(key) {
                seen.push(p.clone());
                let read = fallbacks_of(&p, v, groups, what, r);
                if key == "fallbacks" {
                    s.fallbacks = read;
                } else {
                    s.context_fallbacks = read;
                }
            }
        }
        // LiteLLM's router reads model_group_alias (and cooldown_time) from router_settings
        // only.
        for k in ["model_group_alias", "cooldown_time"] {
            if lite.and_then(|x| x.get(k)).is_some() {
                let p = format!("litellm_settings.{k}");
                seen.push(p.clone());
                r.skip(p, "LiteLLM's router does not read it from litellm_settings (only router_settings)");
            }
        }
        let alias = router
            .and_then(|x| x.get("model_group_alias"))
            .map(|v| ("router_settings.model_group_alias".to_owned(), v));
        if let Some((p, v)) = alias {
            seen.push(p.clone());
            if let Value::Map(m) = v {
                if m.is_empty() {
                    r.mapped(p.clone(), "empty: no aliases");
                }
                for (alias, target) in m {
                    let target = match target {
                        Value::Str(t) => Some(t.clone()),
                        Value::Map(_) => target
                            .get("model")
                            .and_then(Value::as_str)
                            .map(str::to_owned),
                        _ => None,
                    };
                    match target {
                        Some(t) if groups.contains(&t) => {
                            r.mapped(
                                format!("{p}.{alias}"),
                                format!("a group {alias:?} with {t:?}'s deployments"),
                            );
                            s.aliases.push((alias.clone(), t));
                        }
                        _ => r.invalid(
                            format!("{p}.{alias}"),
                            "names a model group the model_list does not have",
                        ),
                    }
                }
            } else {
                r.invalid(p, "not a mapping");
            }
        }
        // Ejection: a deployment past `allowed_fails` failures is cooled down `cooldown_time`
        // seconds (router_settings over litellm_settings for allowed_fails; cooldown_time is
        // read from router_settings only).
        match pick("allowed_fails") {
            Some((p, v)) => {
                seen.push(p.clone());
                match as_u64(v) {
                    Some(n) => {
                        s.eject_after = (n + 1).min(1000);
                        r.mapped(p, format!("eject_after_failures = {} (failures in a row; LiteLLM counts them per minute)", s.eject_after));
                    }
                    None => r.invalid(p, "not a whole number"),
                }
            }
            None => r.mapped(
                "(allowed_fails)",
                "LiteLLM's default 3: eject_after_failures = 4",
            ),
        }
        match router.and_then(|x| x.get("cooldown_time")) {
            Some(v) => {
                let p = "router_settings.cooldown_time".to_owned();
                seen.push(p.clone());
                match as_seconds_ms(v) {
                    Some(ms) => {
                        s.cooldown_ms = ms.clamp(100, 3_600_000);
                        r.mapped(p, format!("cooldown_ms = {} (shardgate doubles it on each further ejection, to at most 5 min)", s.cooldown_ms));
                    }
                    None => r.invalid(p, "not a number of seconds"),
                }
            }
            None => r.mapped(
                "(cooldown_time)",
                "LiteLLM's default 5 s: cooldown_ms = 5000",
            ),
        }
        // The master key: LiteLLM's admin secret, which also calls every model. It becomes an
        // admin token and the key of a tenant that may call every group, the one tenant
        // `admin_token_tenant` lets share a key with an admin.
        if let Some(v) = general.and_then(|g| g.get("master_key")) {
            let p = "general_settings.master_key".to_owned();
            seen.push(p.clone());
            let key = match v.as_str() {
                Some(k) => match env_ref(k) {
                    Some(var) => env(var),
                    None => Some(k.to_owned()),
                },
                None => None,
            };
            match key {
                Some(k) if !k.is_empty() => {
                    let h = shardgate_core::tenant::hash_key(k.as_bytes());
                    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
                    s.master_key_sha256 = Some(hex);
                    r.mapped(
                        p,
                        "[server] admin_tokens (the key's SHA-256) and tenant \"litellm-master\" (every group, no limits) with the same key, named by admin_token_tenant; auth = \"keys\"",
                    );
                }
                _ => r.skip(
                    p,
                    "an environment reference not set where the import ran (or empty): add the tenant by hand (shardgate-ctl keys create)",
                ),
            }
        }
        // Redis for the router's shared usage (rpm/tpm across instances): shardgate's [fleet].
        if let Some(host) = router.and_then(|x| x.get("redis_host")) {
            seen.push("router_settings.redis_host".to_owned());
            // `os.environ/NAME` read where the import runs, as LiteLLM reads it where it runs.
            let resolved = |v: &Value| -> Option<String> {
                let t = v
                    .as_str()
                    .map(str::to_owned)
                    .or_else(|| as_u64(v).map(|n| n.to_string()))?;
                match env_ref(&t) {
                    Some(var) => env(var).filter(|x| !x.is_empty()),
                    None => Some(t),
                }
            };
            let host = resolved(host);
            let port_v = router.and_then(|x| x.get("redis_port"));
            if port_v.is_some() {
                seen.push("router_settings.redis_port".to_owned());
            }
            let port_text = port_v.map(&resolved);
            let port = match &port_text {
                None => Some(6379),
                Some(Some(t)) => t.trim().parse::<u16>().ok().map(u64::from),
                Some(None) => None,
            };
            let host = host.zip(port);
            let password = router.and_then(|x| x.get("redis_password"));
            let mut password_env = None;
            if let Some(pw) = password {
                seen.push("router_settings.redis_password".to_owned());
                match pw.as_str().and_then(env_ref) {
                    Some(var) => {
                        password_env = Some(var.to_owned());
                        r.mapped(
                            "router_settings.redis_password",
                            "[fleet] redis_password_env",
                        );
                    }
                    None => match pw.as_str() {
                        Some(literal) => {
                            password_env = secrets.keep(
                                "LITELLM_REDIS_PASSWORD".to_owned(),
                                literal,
                                "router_settings.redis_password",
                                r,
                            );
                        }
                        None => r.invalid("router_settings.redis_password", "not a string"),
                    },
                }
            }
            match host {
                Some((h, port)) => {
                    s.redis = Some((format!("redis://{h}:{port}"), password_env));
                    r.mapped(
                        "router_settings.redis_host",
                        "[fleet] redis (limits shared by the instances)",
                    );
                    if router.and_then(|x| x.get("redis_port")).is_some() {
                        r.mapped("router_settings.redis_port", "[fleet] redis");
                    }
                }
                None => {
                    let why = "an environment reference not set where the import ran (or not a host and port): set [fleet] redis by hand";
                    r.skip("router_settings.redis_host", why);
                    if port_v.is_some() {
                        r.skip("router_settings.redis_port", why);
                    }
                }
            }
        }
        // Every other key of the three sections, reported.
        for (section, v) in [
            ("router_settings", router),
            ("litellm_settings", lite),
            ("general_settings", general),
        ] {
            if let Some(Value::Map(m)) = v {
                for (k, _) in m {
                    let path = format!("{section}.{k}");
                    if seen.contains(&path) {
                        continue;
                    }
                    if section == "litellm_settings"
                        && seen.contains(&format!("router_settings.{k}"))
                    {
                        r.skip(
                            path,
                            format!("router_settings.{k} is set too, and LiteLLM's router takes that one"),
                        );
                    } else {
                        r.skip(path, not_imported_reason(section, k));
                    }
                }
            }
        }
        s
    }
}

/// A LiteLLM fallbacks list (`[{group: [fallback, ...]}, ...]`) at `p`: each group's, where
/// every name is a group of the model list; reported in `r` (`what`: what a mapped one is).
fn fallbacks_of(
    p: &str,
    v: &Value,
    groups: &[String],
    what: &str,
    r: &mut Report,
) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    match v {
        Value::Seq(items) if items.is_empty() => r.mapped(p, "empty: no fallbacks"),
        Value::Seq(items) => {
            for (i, item) in items.iter().enumerate() {
                let Value::Map(m) = item else {
                    r.invalid(
                        format!("{p}[{i}]"),
                        "not a mapping of a group to its fallbacks",
                    );
                    continue;
                };
                for (from, to) in m {
                    let to: Vec<String> = match to {
                        Value::Seq(t) => t
                            .iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect(),
                        Value::Str(t) => vec![t.clone()],
                        _ => Vec::new(),
                    };
                    let known = groups.contains(from) && to.iter().all(|t| groups.contains(t));
                    if known && !to.is_empty() && !to.contains(from) {
                        r.mapped(format!("{p}[{i}].{from}"), what);
                        out.insert(from.clone(), to);
                    } else {
                        r.invalid(
                            format!("{p}[{i}].{from}"),
                            "names a model group the model_list does not have (or itself)",
                        );
                    }
                }
            }
        }
        _ => r.invalid(p, "not a list"),
    }
    out
}

/// Why a setting without an equivalent is not imported.
fn not_imported_reason(section: &str, key: &str) -> String {
    match key {
        "cooldown_time" => "LiteLLM's router reads it from router_settings only".to_owned(),
        "content_policy_fallbacks" => "shardgate's fallbacks are taken when a group has no deployment left (or, context_window_fallbacks, when the request overflowed the model's context window), not on a content-policy refusal".to_owned(),
        "callbacks" | "success_callback" | "failure_callback" | "service_callback" => "callbacks: shardgate exports OpenTelemetry traces ([telemetry]) and Prometheus metrics instead".to_owned(),
        "cache" | "cache_params" => "response caching: shardgate has none".to_owned(),
        "master_key" => "not a string".to_owned(),
        "database_url" | "store_model_in_db" | "database_connection_pool_limit" => "LiteLLM's database: shardgate keeps tenants and keys in its tenant store (import them with --keys and --store)".to_owned(),
        "redis_port" | "redis_password" => "given without redis_host".to_owned(),
        "redis_url" => "set [fleet] redis by hand (a URL may carry a password: it is not copied)".to_owned(),
        "guardrails" => "guardrails: shardgate has none".to_owned(),
        _ => format!("no shardgate equivalent for {section}.{key}"),
    }
}

#[cfg(test)]
mod tests {
    use super::super::yaml::parse;
    use super::*;

    fn paths(v: &[(String, String)]) -> Vec<&str> {
        v.iter().map(|(p, _)| p.as_str()).collect()
    }

    fn run(yaml: &str) -> Imported {
        import(&parse(yaml).expect("yaml"), &|_| None).expect("imports")
    }

    #[test]
    fn custom_pricing_becomes_the_models_prices_litellm_params_first() {
        let i = run(r#"
model_list:
  - model_name: mine
    litellm_params:
      model: openai/my-llama
      api_base: http://10.0.0.1:8000
      input_cost_per_token: 0.0000005
      output_cost_per_token: "0.0000015"
    model_info:
      input_cost_per_token: 0.9
      cache_read_input_token_cost: 0.0000001
  - model_name: mine
    litellm_params:
      model: openai/my-llama
      api_base: http://10.0.0.2:8000
      input_cost_per_token: 0.000002
      output_cost_per_token: 0.000002
  - model_name: half
    litellm_params:
      model: openai/other
      api_base: http://10.0.0.3:8000
      input_cost_per_token: 0.000001
"#);
        let cfg: toml::Table = i.toml.parse().expect("toml");
        let prices = cfg["prices"].as_array().expect("prices");
        assert_eq!(prices.len(), 1, "{}", i.toml);
        let p = &prices[0];
        assert_eq!(p["model"].as_str(), Some("my-llama"));
        let near = |k: &str, want: f64| {
            let got = p[k].as_float().expect(k);
            assert!((got - want).abs() < 1e-9, "{k}: {got}");
        };
        near("input_usd_per_mtok", 0.5);
        near("output_usd_per_mtok", 1.5);
        near("cached_input_usd_per_mtok", 0.1);
        let mapped = paths(&i.report.mapped);
        assert!(mapped.contains(&"model_list[0].litellm_params.input_cost_per_token"));
        assert!(mapped.contains(&"model_list[0].model_info.cache_read_input_token_cost"));
        let skipped = paths(&i.report.not_imported);
        for p in [
            "model_list[0].model_info.input_cost_per_token",
            "model_list[1].litellm_params.input_cost_per_token",
            "model_list[2].litellm_params.input_cost_per_token",
        ] {
            assert!(skipped.contains(&p), "{p}: {skipped:?}");
        }
        // The config with its prices is one shardgate accepts.
        shardgate_core::config::Config::from_toml_unresolved(&i.toml).expect("valid");
    }

    #[test]
    fn entries_of_one_name_form_one_group_wherever_they_stand() {
        let i = run(r#"
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: azure/gpt-4o-eu
      api_base: https://eu.openai.azure.com/
      api_version: "2024-06-01"
      api_key: os.environ/AZURE_EU_KEY
      rpm: 20_000
  - model_name: claude
    litellm_params:
      model: claude-sonnet-4-5
      api_key: os.environ/ANTHROPIC_API_KEY
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/OPENAI_API_KEY
    model_info:
      tpm: 100000
router_settings:
  routing_strategy: latency-based-routing
  num_retries: 3
  allowed_fails: 2
  cooldown_time: 30
  fallbacks: [{"gpt-4o": ["claude"]}]
litellm_settings:
  num_retries: 9
  success_callback: ["langfuse"]
  context_window_fallbacks: [{"claude": ["gpt-4o"]}, {"gpt-4o": ["gpt-4o"]}]
"#);
        let cfg: toml::Table = i.toml.parse().expect("toml");
        let models = cfg["models"].as_array().expect("models");
        assert_eq!(models.len(), 2, "{}", i.toml);
        let g = models[0].as_table().expect("group");
        assert_eq!(g["name"].as_str(), Some("gpt-4o"));
        assert_eq!(g["strategy"].as_str(), Some("latency"));
        assert_eq!(g["retries"].as_integer(), Some(3), "router_settings wins");
        assert_eq!(
            g["eject_after_failures"].as_integer(),
            Some(3),
            "past 2 allowed failures"
        );
        assert_eq!(g["cooldown_ms"].as_integer(), Some(30_000));
        assert_eq!(g["deployments"].as_array().map(Vec::len), Some(2));
        let d0 = g["deployments"][0].as_table().expect("d");
        assert_eq!(d0["rpm"].as_integer(), Some(20_000), "20_000 is an int");
        assert_eq!(d0["model"].as_str(), Some("gpt-4o-eu"));
        assert_eq!(g["deployments"][1]["tpm"].as_integer(), Some(100_000));
        assert_eq!(g["fallbacks"].as_array().map(Vec::len), Some(1));
        // context_window_fallbacks from litellm_settings (router_settings sets none); a group
        // may not overflow to itself.
        assert!(g.get("context_window_fallbacks").is_none(), "{}", i.toml);
        assert_eq!(
            models[1]["context_window_fallbacks"].as_array(),
            Some(&vec![toml::Value::from("gpt-4o")])
        );
        assert!(paths(&i.report.invalid)
            .contains(&"litellm_settings.context_window_fallbacks[1].gpt-4o"));
        assert!(paths(&i.report.not_imported).contains(&"litellm_settings.num_retries"));
        let ups = cfg["upstreams"].as_array().expect("upstreams");
        let az = ups[0].as_table().expect("up");
        assert_eq!(az["provider"].as_str(), Some("azure"));
        assert_eq!(az["api_key_env"].as_str(), Some("AZURE_EU_KEY"));
        assert_eq!(az["api_version"].as_str(), Some("2024-06-01"));
        assert_eq!(
            az["endpoints"][0].as_str(),
            Some("https://eu.openai.azure.com")
        );
        assert_eq!(
            ups[1]["provider"].as_str(),
            Some("anthropic"),
            "unprefixed claude"
        );
        // What has no equivalent is reported by its path.
        let skipped = paths(&i.report.not_imported);
        assert!(
            skipped.contains(&"litellm_settings.success_callback"),
            "{skipped:?}"
        );
        assert!(
            skipped.contains(&"litellm_settings.num_retries"),
            "the one LiteLLM does not read: {skipped:?}"
        );
        // It is a config shardgate accepts.
        shardgate_core::config::Config::from_toml_unresolved(&i.toml).expect("valid");
    }

    #[test]
    fn the_master_key_becomes_a_tenant_and_redis_the_fleet() {
        let yaml = "model_list:\n  - model_name: m\n    litellm_params: {model: openai/m, api_base: \"http://10.1.1.1:8000\"}\n\
                    general_settings:\n  master_key: os.environ/LITELLM_MASTER_KEY\n  database_url: os.environ/DATABASE_URL\n\
                    router_settings:\n  redis_host: redis.internal\n  redis_port: 6380\n  redis_password: os.environ/REDIS_PASSWORD\n";
        let env = |k: &str| (k == "LITELLM_MASTER_KEY").then(|| "sk-1234".to_owned());
        let i = import(&parse(yaml).expect("yaml"), &env).expect("imports");
        let cfg: toml::Table = i.toml.parse().expect("toml");
        assert!(
            cfg["server"].get("auth").is_none(),
            "keys are needed: {}",
            i.toml
        );
        let key = cfg["tenants"][0]["keys"][0].as_str().expect("key");
        // sha256("sk-1234")
        assert_eq!(
            key,
            "sha256:88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b"
        );
        assert_eq!(
            cfg["fleet"]["redis"].as_str(),
            Some("redis://redis.internal:6380")
        );
        assert_eq!(
            cfg["fleet"]["redis_password_env"].as_str(),
            Some("REDIS_PASSWORD")
        );
        assert!(!i.toml.contains("sk-1234"));
        let skipped = paths(&i.report.not_imported);
        assert!(
            skipped.contains(&"general_settings.database_url"),
            "{skipped:?}"
        );
        shardgate_core::config::Config::from_toml_unresolved(&i.toml).expect("valid");
        // Unset where the import runs: reported, and the gateway is not left open.
        let i = import(&parse(yaml).expect("yaml"), &|_| None).expect("imports");
        assert!(i
            .report
            .not_imported
            .iter()
            .any(|(p, _)| p == "general_settings.master_key"));
    }

    #[test]
    fn timeouts_follow_litellms_order_and_default() {
        let yaml = "model_list:\n\
                    \x20 - {model_name: a, litellm_params: {model: openai/a, api_base: \"http://10.0.0.1\", timeout: 5}}\n\
                    \x20 - {model_name: b, litellm_params: {model: openai/b, api_base: \"http://10.0.0.2\"}}\n";
        let with_router = format!("{yaml}router_settings:\n  timeout: 30\n");
        let ups = |i: &Imported| -> Vec<(i64, i64)> {
            let cfg: toml::Table = i.toml.parse().expect("toml");
            cfg["upstreams"]
                .as_array()
                .expect("upstreams")
                .iter()
                .map(|u| {
                    let n = |k: &str| u[k].as_integer().unwrap_or(-1);
                    (n("ttfb_timeout_ms"), n("read_timeout_ms"))
                })
                .collect()
        };
        // The deployment's own wins; the router's elsewhere; LiteLLM's 6000 s without either.
        assert_eq!(ups(&run(&with_router)), [(5_000, 5_000), (30_000, 30_000)]);
        assert_eq!(ups(&run(yaml)), [(5_000, 5_000), (6_000_000, 6_000_000)]);
    }

    #[test]
    fn bare_names_resolve_as_litellm_resolves_them() {
        assert_eq!(unprefixed("gpt-4o"), Some("openai"));
        assert_eq!(
            unprefixed("claude-sonnet-4-5"),
            Some("anthropic"),
            "its list"
        );
        // Its routing rules: a bare Claude family id, a Bedrock-syntax Claude id.
        assert_eq!(unprefixed("claude-newfamily-7-20270101"), Some("anthropic"));
        assert_eq!(unprefixed("claude-opus-4-5"), Some("anthropic"));
        assert_eq!(
            unprefixed("us.anthropic.claude-3-sonnet-20240229-v1:0"),
            Some("bedrock")
        );
        assert_eq!(unprefixed("anthropic.claude-v2"), Some("bedrock"));
        assert_eq!(unprefixed("ft:gpt-4o-mini:org::abc"), Some("openai"));
        // Retired from LiteLLM's list, and no rule matches (the family must come first).
        assert_eq!(unprefixed("claude-3-5-sonnet-20240620"), None);
        assert_eq!(unprefixed("mystery-model"), None);
        assert!(
            bare_claude_id("claude-sonnet-4-2025"),
            "a minor of any length"
        );
        assert!(!bare_claude_id("claude-sonnet-4-x"));
        assert!(bare_claude_id("claude-sonnet-4.5"));
    }

    #[test]
    fn unknown_providers_are_invalid_and_unserved_ones_reported() {
        let i = run(r#"
model_list:
  - model_name: a
    litellm_params: {model: "nosuch/x"}
  - model_name: b
    litellm_params: {model: "vertex_ai/gemini-1.5-pro"}
  - model_name: c
    litellm_params: {model: "mystery-model"}
  - model_name: d
    litellm_params: {model: "openai/x", api_base: "https://example.com/api/v2", api_key: "sk-literal-secret"}
  - model_name: e
    litellm_params: {model: "hosted_vllm/llama", api_base: "http://10.0.0.5:8000/v1", api_key: "sk-literal-secret"}
"#);
        let invalid = paths(&i.report.invalid);
        assert_eq!(
            invalid,
            [
                "model_list[0].litellm_params.model",
                "model_list[2].litellm_params.model"
            ]
        );
        let skipped = paths(&i.report.not_imported);
        assert!(skipped.contains(&"model_list[1]"), "{skipped:?}");
        assert!(
            skipped.contains(&"model_list[3].litellm_params.api_base"),
            "{skipped:?}"
        );
        // The literal key of the imported deployment goes to the secrets, under the variable
        // its upstream reads; the dropped deployment's does not.
        assert!(paths(&i.report.mapped).contains(&"model_list[4].litellm_params.api_key"));
        assert_eq!(
            i.secrets,
            [(
                "LITELLM_MODEL_4_API_KEY".to_owned(),
                "sk-literal-secret".to_owned()
            )]
        );
        assert!(
            i.toml.contains("api_key_env = \"LITELLM_MODEL_4_API_KEY\""),
            "{}",
            i.toml
        );
        let json = i.report.to_json("x.yaml").to_string();
        assert!(!json.contains("sk-literal-secret") && !i.toml.contains("sk-literal-secret"));
        assert!(i.toml.contains("http://10.0.0.5:8000"), "{}", i.toml);
        // Without a secrets file: reported, not imported.
        let doc = super::super::yaml::parse(
            "model_list:\n  - model_name: e\n    litellm_params: {model: \"openai/x\", api_key: \"sk-x\"}\n",
        )
        .expect("yaml");
        let none = import_with_store(&doc, &|_| None, None, false).expect("imports");
        assert!(none.secrets.is_empty() && !none.toml.contains("api_key_env"));
        assert!(paths(&none.report.not_imported).contains(&"model_list[0].litellm_params.api_key"));
    }
}
