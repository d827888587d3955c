//! `--keys FILE`: LiteLLM's virtual keys (rows of `LiteLLM_VerificationToken`, as its
//! `/key/list?return_full_object=true` or a database export gives them) and teams
//! (`LiteLLM_TeamTable`) as a shardgate tenant store. LiteLLM stores a key as the SHA-256 hex
//! of the key (`token`), the very form the store keeps, so an old key keeps working unchanged.
//!
//! - A team is a tenant (named by its alias, else its id): `models`, `rpm_limit`, `tpm_limit`,
//!   `max_parallel_requests` (`max_concurrency`), `max_budget` (`budget_usd`) over
//!   `budget_duration` (`budget_window`), `blocked` (suspended).
//! - A key is its team's key; a key without a team is a tenant of its own with the key's
//!   models and limits. A key's own `rpm_limit`, `tpm_limit` and `max_budget` are its limits
//!   within its tenant's; `expires` is its expiry; a blocked key is kept expired (refused).
//! - What has no place (a team key's own `models` or `max_parallel_requests`, its own
//!   `budget_duration`, spend so far, metadata) is reported by the row and field.

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
        let (settings, suspended) = limits(t, &at, r, true);
        store.tenants.insert(
            name.clone(),
            StoredTenant {
                settings,
                suspended,
                created_unix_ms: now_unix_ms,
            },
        );
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
                let (settings, suspended) = limits(k, &at, r, false);
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
            own.rpm = int(k, "rpm_limit");
            own.tpm = int(k, "tpm_limit");
            own.budget_usd = k.get("max_budget").and_then(Json::as_f64);
            for f in ["models", "max_parallel_requests", "budget_duration"] {
                if present(k, f) {
                    r.skip(
                        format!("{at}.{f}"),
                        "a team key's own: shardgate keeps it per tenant (the team's applies)",
                    );
                }
            }
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
        for f in ["spend", "metadata", "permissions", "aliases", "config"] {
            if present(k, f) {
                r.skip(format!("{at}.{f}"), not_kept(f));
            }
        }
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

fn not_kept(field: &str) -> &'static str {
    match field {
        "spend" => {
            "spend so far: shardgate counts spend from the import on (its budgets start fresh)"
        }
        _ => "no place in shardgate's tenant store",
    }
}

fn present(v: &Json, k: &str) -> bool {
    v.get(k).is_some_and(|x| match x {
        Json::Null => false,
        Json::Array(a) => !a.is_empty(),
        Json::Object(o) => !o.is_empty(),
        Json::Number(n) => n.as_f64() != Some(0.0) || k != "spend",
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
fn limits(v: &Json, at: &str, r: &mut Report, team: bool) -> (Settings, bool) {
    let mut s = Settings::default();
    if let Some(models) = v.get("models").and_then(Json::as_array) {
        let m: Vec<String> = models
            .iter()
            .filter_map(|x| x.as_str().map(str::to_owned))
            .collect();
        // LiteLLM: an empty list, or "all-proxy-models", is every model.
        if !m.is_empty() && !m.iter().any(|x| x == "all-proxy-models") {
            s.models = Some(m);
        }
    }
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
    if team && present(v, "spend") {
        r.skip(format!("{at}.spend"), not_kept("spend"));
    }
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
                       "budget_duration": "30d", "max_parallel_requests": 8, "spend": 3.2}],
            "keys": [
                {"token": sha, "key_alias": "ds-batch", "team_id": "t-1", "rpm_limit": 10,
                 "max_budget": 5.0, "expires": "2030-01-01T00:00:00.000Z", "spend": 1.5},
                {"token": "AB".repeat(32), "key_alias": "solo", "models": ["claude"],
                 "tpm_limit": 1000, "blocked": true},
                {"token": "not-a-hash"}
            ]
        });
        let mut r = Report::default();
        let store = import(&export, 1_000, &mut r).expect("imports");
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
        assert_eq!(k.expires_unix_ms, Some(1_893_456_000_000));
        let solo = &store.keys[&key_id_of(&"ab".repeat(32))];
        assert_eq!(solo.tenant, "solo");
        assert_eq!(solo.expires_unix_ms, Some(1), "blocked: kept, expired");
        assert_eq!(store.tenants["solo"].settings.tpm, Some(1000));
        assert!(r
            .invalid
            .iter()
            .any(|(p, _)| p == "keys-file.keys[2].token"));
        assert!(r
            .not_imported
            .iter()
            .any(|(p, _)| p == "keys-file.keys[0].spend"));
        // The store reads back as the engine reads it.
        let text = serde_json::to_string(&store).expect("json");
        let back: Store = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, store);
    }
}
