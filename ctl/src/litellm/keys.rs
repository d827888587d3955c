//! `--keys FILE`: LiteLLM's virtual keys (rows of `LiteLLM_VerificationToken`, as its
//! `/key/list?return_full_object=true` or a database export gives them) and teams
//! (`LiteLLM_TeamTable`) as a shardgate tenant store. LiteLLM stores a key as the SHA-256 hex
//! of the key (`token`), the very form the store keeps, so an old key keeps working unchanged.
//!
//! - A team is a tenant (named by its alias, else its id): `models`, `rpm_limit`, `tpm_limit`,
//!   `max_parallel_requests` (`max_concurrency`), `max_budget` (`budget_usd`) over
//!   `budget_duration` (`budget_window`), `blocked` (suspended).
//! - A key is its team's key; a key without a team is a tenant of its own with the key's
//!   models and limits. A key's own `models`, `rpm_limit`, `tpm_limit`,
//!   `max_parallel_requests` and `max_budget` are its limits within its tenant's; `expires` is
//!   its expiry; a blocked key is kept expired (refused).
//! - `spend` against a `max_budget` is carried in (`spent_usd`): it counts until LiteLLM would
//!   have reset it (`budget_reset_at`), within shardgate's budget window in progress.
//! - What has no place (a team key's own `budget_duration` where it differs from its team's,
//!   metadata) is reported by the row and field.

use std::collections::BTreeMap;

use serde_json::Value as Json;
use shardgate_core::store::{
    key_id_of, KeySettings, Settings, Store, StoredKey, StoredTenant, STORE_FORMAT,
};

use super::map::Report;

/// The store for `export` (a JSON array of key rows, or an object with `keys` and optionally
/// `teams`), the import's time `now_unix_ms`, and what was mapped or not in `r`.
pub fn import(export: &Json, now_unix_ms: u64, r: &mut Report) -> Result<Store, String> {
    let (keys, teams) = match export {
        Json::Array(k) => (k.as_slice(), &[][..]),
        Json::Object(o) => (
            o.get("keys")
                .and_then(Json::as_array)
                .map_or(&[][..], Vec::as_slice),
            o.get("teams")
                .and_then(Json::as_array)
                .map_or(&[][..], Vec::as_slice),
        ),
        _ => {
            return Err(
                "the keys file is neither a list of keys nor an object with \"keys\"".to_owned(),
            )
        }
    };
    let mut store = Store {
        format: STORE_FORMAT,
        version: 1,
        ..Store::default()
    };
    // Teams, by id: their tenant's name.
    let mut team_names: BTreeMap<String, String> = BTreeMap::new();
    for (i, t) in teams.iter().enumerate() {
        let at = format!("keys-file.teams[{i}]");
        let Some(id) = t.get("team_id").and_then(Json::as_str) else {
            r.invalid(at, "no team_id");
            continue;
        };
        let name = tenant_name(t.get("team_alias").and_then(Json::as_str).unwrap_or(id));
        let (settings, suspended) = limits(t, &at, now_unix_ms, r);
        store.tenants.insert(
            name.clone(),
            StoredTenant {
                settings,
                suspended,
                created_unix_ms: now_unix_ms,
            },
        );
        unread(t, TEAM_FIELDS, &at, r);
        r.mapped(at, format!("tenant {name:?}"));
        team_names.insert(id.to_owned(), name);
    }
    for (i, k) in keys.iter().enumerate() {
        let at = format!("keys-file.keys[{i}]");
        let Some(token) = k.get("token").and_then(Json::as_str) else {
            r.invalid(at, "no token (the key's SHA-256)");
            continue;
        };
        let sha = token.to_ascii_lowercase();
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_hexdigit()) {
            r.invalid(
                format!("{at}.token"),
                "not a SHA-256 in hex (LiteLLM's hashed key)",
            );
            continue;
        }
        let team = k.get("team_id").and_then(Json::as_str);
        let tenant = match team {
            Some(id) => match team_names.get(id) {
                Some(n) => n.clone(),
                None => {
                    // A team the file does not describe: a tenant of that name, no limits.
                    let n = tenant_name(id);
                    store
                        .tenants
                        .entry(n.clone())
                        .or_insert_with(|| StoredTenant {
                            settings: Settings::default(),
                            suspended: false,
                            created_unix_ms: now_unix_ms,
                        });
                    r.skip(
                        format!("{at}.team_id"),
                        "a team the keys file does not describe: a tenant without limits",
                    );
                    team_names.insert(id.to_owned(), n.clone());
                    n
                }
            },
            None => {
                let alias = k.get("key_alias").and_then(Json::as_str);
                let n = tenant_name(
                    &alias.map_or_else(|| format!("key-{}", &sha[..12]), str::to_owned),
                );
                let (settings, suspended) = limits(k, &at, now_unix_ms, r);
                store.tenants.insert(
                    n.clone(),
                    StoredTenant {
                        settings,
                        suspended,
                        created_unix_ms: now_unix_ms,
                    },
                );
                n
            }
        };
        // A team key's own limits, within its tenant's.
        let mut own = KeySettings::default();
        if team.is_some() {
            own.models = models(k);
            own.rpm = int(k, "rpm_limit");
            own.tpm = int(k, "tpm_limit");
            own.max_concurrency = int(k, "max_parallel_requests");
            own.budget_usd = k.get("max_budget").and_then(Json::as_f64);
            // The key's budget counts over its tenant's window.
            let window = store
                .tenants
                .get(&tenant)
                .and_then(|t| t.settings.budget_window.clone());
            let key_window = k.get("budget_duration").and_then(Json::as_str);
            if key_window.is_some() && key_window != window.as_deref() {
                r.skip(
                    format!("{at}.budget_duration"),
                    "a team key's own budget window: shardgate counts a key's budget over its \
                     tenant's (the team's budget_duration, else 30 days)",
                );
            }
            (own.spent_usd, own.spent_until_unix_ms) = carried(
                k,
                own.budget_usd.is_some(),
                window.as_deref(),
                &at,
                now_unix_ms,
                r,
            );
        }
        let blocked = k.get("blocked").and_then(Json::as_bool).unwrap_or(false);
        let expires = match k.get("expires").and_then(Json::as_str) {
            Some(t) => match parse_time(t) {
                Some(ms) => Some(ms),
                None => {
                    r.invalid(format!("{at}.expires"), "not an ISO 8601 time");
                    None
                }
            },
            None => None,
        };
        // Blocked: kept, expired (refused at lookup) rather than dropped.
        let expires = if blocked { Some(1) } else { expires };
        if blocked {
            r.mapped(
                format!("{at}.blocked"),
                "kept, expired: refused as LiteLLM refuses it",
            );
        }
        unread(k, KEY_FIELDS, &at, r);
        let id = key_id_of(&sha);
        store.keys.insert(
            id,
            StoredKey {
                tenant: tenant.clone(),
                name: k.get("key_alias").and_then(Json::as_str).map(str::to_owned),
                // LiteLLM keeps only an abbreviation (`key_name`, "sk-...abcd"): its start.
                prefix: "sk-".to_owned(),
                sha256: sha,
                created_unix_ms: now_unix_ms,
                expires_unix_ms: expires,
                rotated_to: None,
                limits: own,
                lineage: None,
            },
        );
        r.mapped(at, format!("a key of tenant {tenant:?}"));
    }
    Ok(store)
}

/// The fields the import reads of a key row and of a team row alike: the limits.
const LIMIT_FIELDS: &[&str] = &[
    "team_id",
    "models",
    "rpm_limit",
    "tpm_limit",
    "max_parallel_requests",
    "max_budget",
    "budget_duration",
    "budget_reset_at",
    "spend",
    "blocked",
];
/// ... and those of a key row only.
const KEY_FIELDS: &[&str] = &["token", "key_alias", "expires"];
/// ... and of a team row only.
const TEAM_FIELDS: &[&str] = &["team_alias"];
/// Bookkeeping LiteLLM keeps on a row, not a setting of it.
const BOOKKEEPING: &[&str] = &[
    "key_name",
    "created_at",
    "updated_at",
    "created_by",
    "updated_by",
    "last_active",
    "last_rotation_at",
    "rotation_count",
    "object_permission_id",
    "litellm_budget_table",
];

/// Report every field of `row` (at `at`) that holds a value and is neither one the import
/// reads (the limits, and the row's own `read`) nor bookkeeping: nothing of a row is dropped
/// without a line.
fn unread(row: &Json, read: &[&str], at: &str, r: &mut Report) {
    let Some(fields) = row.as_object() else {
        return;
    };
    for k in fields.keys() {
        let known = [LIMIT_FIELDS, read, BOOKKEEPING]
            .iter()
            .any(|list| list.contains(&k.as_str()));
        if known || !present(row, k) {
            continue;
        }
        let why = match k.as_str() {
            "user_id" => "LiteLLM users: shardgate has tenants and their keys (a key is its team's, or a tenant of its own)",
            "organization_id" => "organisations: shardgate has tenants and their keys",
            "members_with_roles" | "members" | "admins" => "team members: shardgate has tenants and their keys; members' own keys come with --keys",
            "soft_budget" => "a soft budget (an alert): shardgate's budgets are hard",
            "model_max_budget" | "model_rpm_limit" | "model_tpm_limit" => "limits per model: shardgate limits a tenant or key over all its models",
            _ => "no place in shardgate's tenant store",
        };
        r.skip(format!("{at}.{k}"), why);
    }
}

/// `spend` so far, as a budget's `spent_usd` and `spent_until_unix_ms`: it counts until
/// LiteLLM would have reset it (`budget_reset_at`), and at the latest until shardgate's budget
/// window in progress at `now_unix_ms` ends (`window`: the budget's, 30 days without one).
fn carried(
    v: &Json,
    has_budget: bool,
    window: Option<&str>,
    at: &str,
    now_unix_ms: u64,
    r: &mut Report,
) -> (Option<f64>, Option<u64>) {
    let Some(spend) = v.get("spend").and_then(Json::as_f64).filter(|s| *s > 0.0) else {
        return (None, None);
    };
    let p = format!("{at}.spend");
    if !has_budget {
        r.mapped(p, "nothing to count it against: no max_budget");
        return (None, None);
    }
    let window_ms = window
        .map_or(Some(shardgate_core::tenant::BUDGET_WINDOW_DEFAULT), |w| {
            humantime::parse_duration(w).ok()
        })
        .and_then(|d| u64::try_from(d.as_millis()).ok())
        .filter(|ms| *ms > 0);
    let Some(window_ms) = window_ms else {
        r.skip(p, "its budget_duration is not one shardgate reads");
        return (None, None);
    };
    // shardgate's windows are aligned to the Unix epoch.
    let window_end = (now_unix_ms / window_ms + 1).saturating_mul(window_ms);
    let reset = v.get("budget_reset_at").and_then(Json::as_str);
    let until = match reset.map(parse_time) {
        Some(Some(t)) => t.min(window_end),
        Some(None) => {
            r.invalid(format!("{at}.budget_reset_at"), "not an ISO 8601 time");
            window_end
        }
        None => window_end,
    };
    if until <= now_unix_ms {
        r.mapped(
            p,
            "not carried: its budget_reset_at has passed, so LiteLLM resets it",
        );
        return (None, None);
    }
    r.mapped(
        p,
        format!(
            "spent_usd, counted against the budget until spent_until_unix_ms = {until} (LiteLLM's \
             budget_reset_at, or the end of shardgate's budget window in progress, whichever \
             comes first)"
        ),
    );
    (Some(spend), Some(until))
}

/// LiteLLM's `models`: `None` for every model (no list, an empty one, or `all-proxy-models`).
fn models(v: &Json) -> Option<Vec<String>> {
    let list = v.get("models").and_then(Json::as_array)?;
    let m: Vec<String> = list
        .iter()
        .filter_map(|x| x.as_str().map(str::to_owned))
        .collect();
    (!m.is_empty() && !m.iter().any(|x| x == "all-proxy-models")).then_some(m)
}

fn present(v: &Json, k: &str) -> bool {
    v.get(k).is_some_and(|x| match x {
        Json::Null => false,
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
        _ => true,
    })
}

/// An integer field (a whole float as LiteLLM's JSON may carry it).
fn int(v: &Json, k: &str) -> Option<i64> {
    v.get(k).and_then(|x| {
        x.as_i64().or_else(|| {
            let f = x.as_f64()?;
            // Whole and in range: exact as an i64.
            #[allow(clippy::cast_possible_truncation)]
            let n = f as i64;
            (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(n)
        })
    })
}

/// A tenant's (a team's, or a key's own) settings, and whether it is blocked.
fn limits(v: &Json, at: &str, now_unix_ms: u64, r: &mut Report) -> (Settings, bool) {
    let mut s = Settings {
        models: models(v),
        ..Settings::default()
    };
    s.rpm = int(v, "rpm_limit");
    s.tpm = int(v, "tpm_limit");
    s.max_concurrency = int(v, "max_parallel_requests");
    s.budget_usd = v.get("max_budget").and_then(Json::as_f64);
    s.budget_window = v
        .get("budget_duration")
        .and_then(Json::as_str)
        .map(str::to_owned);
    if s.budget_usd.is_some() && s.budget_window.is_none() {
        r.skip(
            format!("{at}.max_budget"),
            "a budget without budget_duration never resets in LiteLLM; shardgate's resets every 30 days",
        );
    }
    let blocked = v.get("blocked").and_then(Json::as_bool).unwrap_or(false);
    (s.spent_usd, s.spent_until_unix_ms) = carried(
        v,
        s.budget_usd.is_some(),
        s.budget_window.as_deref(),
        at,
        now_unix_ms,
        r,
    );
    (s, blocked)
}

/// A tenant name from a team's alias or id (`[A-Za-z0-9._-]`, others become `-`).
fn tenant_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    n.truncate(64);
    if n.is_empty() {
        n.push_str("team");
    }
    n
}

/// An ISO 8601 time as LiteLLM writes it (`2025-01-31T00:00:00Z`, with fractions or a
/// `+00:00` offset), ms since the epoch.
fn parse_time(t: &str) -> Option<u64> {
    let t = t.trim();
    let t = t
        .strip_suffix("+00:00")
        .map_or_else(|| t.to_owned(), |x| format!("{x}Z"));
    let t = if t.ends_with('Z') { t } else { format!("{t}Z") };
    let at = humantime::parse_rfc3339_weak(&t).ok()?;
    let ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    u64::try_from(ms).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_their_hash_team_limits_expiry_and_block() {
        let sha = "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b";
        let export = serde_json::json!({
            "teams": [{"team_id": "t-1", "team_alias": "Data Science", "models": ["gpt-4o"],
                       "rpm_limit": 100, "tpm_limit": 50000, "max_budget": 25.5,
                       "budget_duration": "30d", "max_parallel_requests": 8, "spend": 3.2,
                       "members_with_roles": [{"user_id": "u1", "role": "user"}]}],
            "keys": [
                {"token": sha, "key_alias": "ds-batch", "team_id": "t-1", "rpm_limit": 10,
                 "max_budget": 5.0, "expires": "2030-01-01T00:00:00.000Z", "spend": 1.5,
                 "models": ["gpt-4o-mini"], "max_parallel_requests": 2,
                 "budget_reset_at": "1970-01-02T00:00:00Z", "user_id": "u1",
                 "created_at": "2025-01-01T00:00:00Z", "soft_budget": 4.0, "metadata": {}},
                {"token": "AB".repeat(32), "key_alias": "solo", "models": ["claude"],
                 "tpm_limit": 1000, "blocked": true},
                {"token": "not-a-hash"}
            ]
        });
        let mut r = Report::default();
        let now = 3_600_000;
        let store = import(&export, now, &mut r).expect("imports");
        let team = &store.tenants["Data-Science"];
        assert_eq!(
            team.settings.models.as_deref(),
            Some(&["gpt-4o".to_owned()][..])
        );
        assert_eq!(
            (team.settings.rpm, team.settings.tpm),
            (Some(100), Some(50_000))
        );
        assert_eq!(team.settings.max_concurrency, Some(8));
        assert_eq!(team.settings.budget_usd, Some(25.5));
        assert_eq!(team.settings.budget_window.as_deref(), Some("30d"));
        let k = &store.keys[&key_id_of(sha)];
        assert_eq!(k.tenant, "Data-Science");
        assert_eq!(k.sha256, sha);
        assert_eq!(k.limits.rpm, Some(10));
        assert_eq!(k.limits.budget_usd, Some(5.0));
        assert_eq!(k.limits.max_concurrency, Some(2));
        assert_eq!(
            k.limits.models.as_deref(),
            Some(&["gpt-4o-mini".to_owned()][..])
        );
        // Spend so far: the key's until LiteLLM's reset (a day in), the team's until the end
        // of shardgate's 30-day window in progress.
        assert_eq!(
            (k.limits.spent_usd, k.limits.spent_until_unix_ms),
            (Some(1.5), Some(86_400_000))
        );
        assert_eq!(
            (team.settings.spent_usd, team.settings.spent_until_unix_ms),
            (Some(3.2), Some(30 * 86_400_000))
        );
        assert_eq!(k.expires_unix_ms, Some(1_893_456_000_000));
        let solo = &store.keys[&key_id_of(&"ab".repeat(32))];
        assert_eq!(solo.tenant, "solo");
        assert_eq!(solo.expires_unix_ms, Some(1), "blocked: kept, expired");
        assert_eq!(store.tenants["solo"].settings.tpm, Some(1000));
        assert!(r
            .invalid
            .iter()
            .any(|(p, _)| p == "keys-file.keys[2].token"));
        assert!(r.mapped.iter().any(|(p, _)| p == "keys-file.keys[0].spend"));
        // Every other field with a value is reported; bookkeeping and empty ones are not.
        let skipped: Vec<&str> = r.not_imported.iter().map(|(p, _)| p.as_str()).collect();
        for p in [
            "keys-file.keys[0].user_id",
            "keys-file.keys[0].soft_budget",
            "keys-file.teams[0].members_with_roles",
        ] {
            assert!(skipped.contains(&p), "{p}: {skipped:?}");
        }
        assert!(!skipped
            .iter()
            .any(|p| p.ends_with("created_at") || p.ends_with("metadata")));
        // A reset that has passed: LiteLLM starts the budget again, so nothing is carried.
        let mut later = Report::default();
        let store = import(&export, 2 * 86_400_000, &mut later).expect("imports");
        let k = &store.keys[&key_id_of(sha)];
        assert_eq!(k.limits.spent_usd, None);
        // The store reads back as the engine reads it.
        let text = serde_json::to_string(&store).expect("json");
        let back: Store = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, store);
    }
}
