//! Model groups: what clients put in `"model"`, and the deployments (an upstream and its own
//! name for the model) that serve it, balanced by a [`Strategy`] (`shardgate_engine::balance`).
//!
//! I/O-free: `[[models]]` entries are validated into [`ModelGroup`]s naming upstreams by index.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::config::UpstreamConfig;

/// Most model groups, deployments per group, retries and fallbacks.
pub const MODEL_GROUPS_MAX: usize = 4096;
pub const RETRIES_MAX: u32 = 10;
pub const FALLBACKS_MAX: usize = 8;
/// Default `retries`: further deployments tried after a failure before any byte was sent on.
pub const RETRIES_DEFAULT: u32 = 2;
/// Longest `hedge_after_ms` (ten minutes).
pub const HEDGE_AFTER_MS_MAX: u64 = 600_000;
/// Most `eject_after_failures` (health failures in a row that eject a deployment).
pub const EJECT_AFTER_FAILURES_MAX: u32 = 1000;
/// `cooldown_ms` (a first ejection's cool-down) bounds, ms.
pub const COOLDOWN_MS_MIN: u64 = 100;
pub const COOLDOWN_MS_MAX: u64 = 3_600_000;
/// The most deployments a group may have (their indices fit the `u8`s of a balancer's pick's
/// stack list).
pub const DEPLOYMENTS_MAX: usize = 256;

/// How a group chooses among its eligible deployments. See `shardgate_engine::balance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// `round_robin`: each eligible deployment in turn.
    RoundRobin,
    /// `weighted`: smooth weighted round robin (nginx) by the deployments' `weight`.
    Weighted,
    /// `least_outstanding`: fewest requests in flight on this shard.
    LeastOutstanding,
    /// `latency`: power of two choices by peak-EWMA latency × (outstanding + 1).
    Latency,
}

impl Strategy {
    /// Every strategy, in the order the config docs list them.
    pub const ALL: [Strategy; 4] = [
        Strategy::RoundRobin,
        Strategy::Weighted,
        Strategy::LeastOutstanding,
        Strategy::Latency,
    ];

    /// The config name (`round_robin | weighted | least_outstanding | latency`), or `None`.
    pub fn parse(name: &str) -> Option<Strategy> {
        Strategy::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// The config name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Strategy::RoundRobin => "round_robin",
            Strategy::Weighted => "weighted",
            Strategy::LeastOutstanding => "least_outstanding",
            Strategy::Latency => "latency",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A strategy name that is none of the four.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownStrategy;

impl fmt::Display for UnknownStrategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("expected one of round_robin, weighted, least_outstanding, latency")
    }
}

impl std::error::Error for UnknownStrategy {}

impl FromStr for Strategy {
    type Err = UnknownStrategy;

    fn from_str(s: &str) -> Result<Strategy, UnknownStrategy> {
        Strategy::parse(s).ok_or(UnknownStrategy)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    name: String,
    strategy: Option<String>,
    #[serde(default)]
    fallbacks: Vec<String>,
    #[serde(default)]
    context_window_fallbacks: Vec<String>,
    retries: Option<i64>,
    hedge_after_ms: Option<i64>,
    eject_after_failures: Option<i64>,
    cooldown_ms: Option<i64>,
    #[serde(default)]
    deployments: Vec<RawDeployment>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeployment {
    upstream: String,
    model: Option<String>,
    weight: Option<i64>,
    max_outstanding: Option<i64>,
    rpm: Option<i64>,
    tpm: Option<i64>,
}

/// One deployment of a model group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    /// Index into the config's upstreams.
    pub upstream: usize,
    /// The model name sent to this upstream (the group's name when not given).
    pub model: String,
    pub weight: u32,
    /// Requests in flight per shard past which the deployment is skipped.
    pub max_outstanding: Option<u32>,
    /// Requests and tokens per minute this deployment takes, over all shards (the provider's
    /// own quota); past them it is skipped like a full one.
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
}

/// A validated `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelGroup {
    pub name: String,
    pub strategy: Strategy,
    /// Other groups (indices) tried in order when this one has no deployment left.
    pub fallbacks: Vec<usize>,
    /// Other groups (indices) tried in order when a deployment answers that the request is
    /// longer than its model's context window (LiteLLM's `context_window_fallbacks`).
    pub context_window_fallbacks: Vec<usize>,
    pub retries: u32,
    /// A streamed request whose first attempt has no response head after this long gets a
    /// second attempt at another deployment; the first to answer is kept. `None`: no hedging.
    pub hedge_after: Option<std::time::Duration>,
    /// Health failures in a row that eject a deployment (0: that rule is off); `None`: the
    /// balancer's default.
    pub eject_after_failures: Option<u32>,
    /// A first ejection's cool-down (each further one doubles it); `None`: the default.
    pub cooldown: Option<std::time::Duration>,
    pub deployments: Vec<Deployment>,
}

/// A model name as it may appear in config: 1 to 256 printable ASCII characters without `"`
/// or `\` (so it is written into a request body without escaping).
fn check_model_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= crate::limits::MODEL_BYTES_MAX
        && name
            .bytes()
            .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?}: must be 1 to 256 printable ASCII characters without '\"' or '\\\\'"
        ))
    }
}

/// Validate `[[models]]` against the upstreams; problems go to `error(field, reason)`.
pub fn validate(
    raw: Vec<RawModel>,
    upstreams: &[UpstreamConfig],
    mut error: impl FnMut(String, String),
) -> Vec<ModelGroup> {
    if raw.len() > MODEL_GROUPS_MAX {
        error(
            "models".into(),
            format!("at most {MODEL_GROUPS_MAX} model groups"),
        );
    }
    let names: Vec<String> = raw.iter().map(|m| m.name.clone()).collect();
    let mut out = Vec::with_capacity(raw.len());
    for (i, m) in raw.into_iter().enumerate() {
        let f = |k: &str| format!("models[{i}].{k}");
        if let Err(e) = check_model_name(&m.name) {
            error(f("name"), e);
        }
        if names[..i].contains(&m.name) {
            error(f("name"), format!("duplicate model {:?}", m.name));
        }
        let strategy = match m.strategy.as_deref() {
            None => Strategy::Latency,
            Some(s) => Strategy::parse(s).unwrap_or_else(|| {
                error(
                    f("strategy"),
                    format!(
                        "must be round_robin, weighted, least_outstanding or latency, got {s:?}"
                    ),
                );
                Strategy::Latency
            }),
        };
        let retries = match m.retries {
            None => RETRIES_DEFAULT,
            Some(r) => match u32::try_from(r) {
                Ok(r) if r <= RETRIES_MAX => r,
                _ => {
                    error(f("retries"), format!("must be 0 to {RETRIES_MAX}, got {r}"));
                    RETRIES_DEFAULT
                }
            },
        };
        let eject_after_failures = m.eject_after_failures.and_then(|n| match u32::try_from(n) {
            Ok(n) if n <= EJECT_AFTER_FAILURES_MAX => Some(n),
            _ => {
                error(
                    f("eject_after_failures"),
                    format!("must be 0 to {EJECT_AFTER_FAILURES_MAX}, got {n}"),
                );
                None
            }
        });
        let cooldown = m.cooldown_ms.and_then(|ms| match u64::try_from(ms) {
            Ok(ms) if (COOLDOWN_MS_MIN..=COOLDOWN_MS_MAX).contains(&ms) => {
                Some(std::time::Duration::from_millis(ms))
            }
            _ => {
                error(
                    f("cooldown_ms"),
                    format!("must be {COOLDOWN_MS_MIN} to {COOLDOWN_MS_MAX}, got {ms}"),
                );
                None
            }
        });
        let hedge_after = m.hedge_after_ms.and_then(|ms| match u64::try_from(ms) {
            Ok(ms) if (1..=HEDGE_AFTER_MS_MAX).contains(&ms) => {
                Some(std::time::Duration::from_millis(ms))
            }
            _ => {
                error(
                    f("hedge_after_ms"),
                    format!("must be 1 to {HEDGE_AFTER_MS_MAX}, got {ms}"),
                );
                None
            }
        });
        // Other groups by name, as indices: never this one, each an entry.
        let mut groups_of = |key: &str, list: &[String]| -> Vec<usize> {
            if list.len() > FALLBACKS_MAX {
                error(f(key), format!("at most {FALLBACKS_MAX} fallbacks"));
            }
            let mut out = Vec::with_capacity(list.len());
            for (j, fb) in list.iter().enumerate() {
                match names.iter().position(|n| n == fb) {
                    Some(k) if k == i => error(
                        format!("models[{i}].{key}[{j}]"),
                        "a group cannot fall back to itself".into(),
                    ),
                    Some(k) => out.push(k),
                    None => error(
                        format!("models[{i}].{key}[{j}]"),
                        format!("no [[models]] entry is named {fb:?}"),
                    ),
                }
            }
            out
        };
        let fallbacks = groups_of("fallbacks", &m.fallbacks);
        let context_window_fallbacks =
            groups_of("context_window_fallbacks", &m.context_window_fallbacks);
        if m.deployments.is_empty() {
            error(f("deployments"), "at least one deployment is needed".into());
        }
        if m.deployments.len() > DEPLOYMENTS_MAX {
            error(
                f("deployments"),
                format!("at most {} deployments", DEPLOYMENTS_MAX),
            );
        }
        let mut deployments = Vec::with_capacity(m.deployments.len());
        for (j, d) in m.deployments.into_iter().enumerate() {
            let g = |k: &str| format!("models[{i}].deployments[{j}].{k}");
            let Some(upstream) = upstreams.iter().position(|u| u.name == d.upstream) else {
                error(
                    g("upstream"),
                    format!("no [[upstreams]] entry is named {:?}", d.upstream),
                );
                continue;
            };
            if upstreams[upstream].provider == crate::config::Provider::Mock {
                error(
                    g("upstream"),
                    "the built-in mock cannot be a deployment; route to it with [[routes]]".into(),
                );
            }
            let model = d.model.unwrap_or_else(|| m.name.clone());
            if let Err(e) = check_model_name(&model) {
                error(g("model"), e);
            }
            let weight = match d.weight {
                None => 1,
                Some(w) => u32::try_from(w)
                    .ok()
                    .filter(|w| (1..=1000).contains(w))
                    .unwrap_or_else(|| {
                        error(g("weight"), format!("must be 1 to 1000, got {w}"));
                        1
                    }),
            };
            let max_outstanding = d.max_outstanding.and_then(|v| match u32::try_from(v) {
                Ok(v) if v >= 1 => Some(v),
                _ => {
                    error(g("max_outstanding"), format!("must be at least 1, got {v}"));
                    None
                }
            });
            let mut per_minute = |key: &str, v: Option<i64>| -> Option<u64> {
                let v = v?;
                match u64::try_from(v) {
                    Ok(v) if (1..=1 << 48).contains(&v) => Some(v),
                    _ => {
                        error(g(key), format!("must be between 1 and 2^48, got {v}"));
                        None
                    }
                }
            };
            let rpm = per_minute("rpm", d.rpm);
            let tpm = per_minute("tpm", d.tpm);
            deployments.push(Deployment {
                upstream,
                model,
                weight,
                max_outstanding,
                rpm,
                tpm,
            });
        }
        out.push(ModelGroup {
            name: m.name,
            strategy,
            fallbacks,
            context_window_fallbacks,
            retries,
            hedge_after,
            eject_after_failures,
            cooldown,
            deployments,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{Strategy, UnknownStrategy};
    use crate::config::Config;

    const UPSTREAMS: &str = "[server]\nauth = \"none\"\n\
        [[upstreams]]\nname = \"a\"\nendpoints = [\"http://127.0.0.1:9\"]\n\
        [[upstreams]]\nname = \"b\"\nprovider = \"anthropic\"\nendpoints = [\"http://127.0.0.1:9\"]\n\
        [[upstreams]]\nname = \"demo\"\nprovider = \"mock\"\n";

    fn load(models: &str) -> Result<Config, String> {
        Config::from_toml(&format!("{UPSTREAMS}{models}")).map_err(|e| {
            e.0.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    #[test]
    fn groups_are_validated_with_their_defaults() {
        let c = load(
            "[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"a\" }, { upstream = \"b\", model = \"claude-x\", weight = 3 }]\n\
             [[models]]\nname = \"n\"\nstrategy = \"round_robin\"\nretries = 0\nhedge_after_ms = 250\nfallbacks = [\"m\"]\ncontext_window_fallbacks = [\"m\"]\ndeployments = [{ upstream = \"a\" }]\n",
        )
        .expect("valid");
        let m = &c.models[0];
        assert_eq!(m.retries, super::RETRIES_DEFAULT);
        assert_eq!(m.hedge_after, None);
        assert_eq!(m.deployments[0].model, "m", "the group's name by default");
        assert_eq!(m.deployments[1].model, "claude-x");
        assert_eq!(m.deployments[1].weight, 3);
        let n = &c.models[1];
        assert_eq!(n.retries, 0);
        assert_eq!(n.hedge_after, Some(std::time::Duration::from_millis(250)));
        assert_eq!(n.fallbacks, vec![0]);
        assert_eq!(n.context_window_fallbacks, vec![0]);
        assert!(m.context_window_fallbacks.is_empty());
    }

    #[test]
    fn bad_groups_are_refused_naming_the_field() {
        for (models, field) in [
            ("[[models]]\nname = \"m\"\nhedge_after_ms = 0\ndeployments = [{ upstream = \"a\" }]\n", "models[0].hedge_after_ms"),
            ("[[models]]\nname = \"m\"\neject_after_failures = 1001\ndeployments = [{ upstream = \"a\" }]\n", "models[0].eject_after_failures"),
            ("[[models]]\nname = \"m\"\ncooldown_ms = 99\ndeployments = [{ upstream = \"a\" }]\n", "models[0].cooldown_ms"),
            ("[[models]]\nname = \"m\"\nhedge_after_ms = 600001\ndeployments = [{ upstream = \"a\" }]\n", "models[0].hedge_after_ms"),
            ("[[models]]\nname = \"m\"\nretries = 11\ndeployments = [{ upstream = \"a\" }]\n", "models[0].retries"),
            ("[[models]]\nname = \"m\"\nstrategy = \"fastest\"\ndeployments = [{ upstream = \"a\" }]\n", "models[0].strategy"),
            ("[[models]]\nname = \"m\"\nfallbacks = [\"m\"]\ndeployments = [{ upstream = \"a\" }]\n", "models[0].fallbacks[0]"),
            ("[[models]]\nname = \"m\"\nfallbacks = [\"zz\"]\ndeployments = [{ upstream = \"a\" }]\n", "models[0].fallbacks[0]"),
            ("[[models]]\nname = \"m\"\ncontext_window_fallbacks = [\"m\"]\ndeployments = [{ upstream = \"a\" }]\n", "models[0].context_window_fallbacks[0]"),
            ("[[models]]\nname = \"m\"\ncontext_window_fallbacks = [\"zz\"]\ndeployments = [{ upstream = \"a\" }]\n", "models[0].context_window_fallbacks[0]"),
            ("[[models]]\nname = \"m\"\n", "models[0].deployments"),
            ("[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"zz\" }]\n", "models[0].deployments[0].upstream"),
            ("[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"demo\" }]\n", "models[0].deployments[0].upstream"),
            ("[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"a\", weight = 0 }]\n", "models[0].deployments[0].weight"),
            ("[[models]]\nname = \"m\\\"\"\ndeployments = [{ upstream = \"a\" }]\n", "models[0].name"),
            ("[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"a\" }]\n[[models]]\nname = \"m\"\ndeployments = [{ upstream = \"a\" }]\n", "models[1].name"),
        ] {
            let errs = load(models).expect_err(models);
            assert!(errs.contains(field), "{models}: {errs}");
        }
    }

    #[test]
    fn strategies_parse_from_their_config_names() {
        for s in Strategy::ALL {
            assert_eq!(Strategy::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
            assert_eq!(s.to_string(), s.as_str());
        }
        assert_eq!(
            Strategy::parse("least_outstanding"),
            Some(Strategy::LeastOutstanding)
        );
        for bad in ["", "Latency", "p2c", "round-robin", "latency "] {
            assert_eq!(Strategy::parse(bad), None, "{bad:?}");
            assert_eq!(bad.parse::<Strategy>(), Err(UnknownStrategy));
        }
    }
}
