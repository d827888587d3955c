//! The admin API: tenants, keys and access requests of the tenant store over HTTP on the admin
//! listener (`/admin/v1/tenants`, `/admin/v1/keys`, `/admin/v1/access-requests`), JSON in and
//! out, described in `docs/admin-api.md` and `docs/admin-api.openapi.yaml`.
//!
//! Every request presents an admin token (`Authorization: Bearer TOKEN`, whose SHA-256 is one of
//! `[server] admin_tokens` in the running config); without one: 401. A change goes through
//! `shardgate_core::manage`, as `shardgate-ctl tenants`/`keys` do: written atomically, audited
//! under the token's id (`admin:` and the first 8 hex digits of its hash), pushed to every shard
//! and in force there before the answer is sent. It runs on the admin thread, never a shard.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::control::shm::Region;
use crate::control::{publish, unix_ms};
use crate::limits::APPLY_WAIT_MS_MAX;
use crate::manage::{self, Refused};
use crate::store::{AccessStatus, ErrorKind, KeyHash, KeySettings, Settings, Store};
use crate::store_op::{self, StoreOp};
use crate::tenant::{hash_key, key_alias};

/// Largest request body the admin API reads, bytes.
pub const ADMIN_BODY_BYTES_MAX: usize = 64 * 1024;

/// One request to `/admin/v1/...`.
#[derive(Debug)]
pub struct ApiRequest<'a> {
    pub method: &'a str,
    /// The path without the query.
    pub path: &'a str,
    pub query: &'a str,
    pub authorization: Option<&'a [u8]>,
    pub body: &'a [u8],
}

/// Answer `req`: a status and a JSON body.
pub fn answer(req: &ApiRequest<'_>, region: &Region, instance: &str) -> (u16, Value) {
    let running = match publish::running_text_without_store(region) {
        Ok((_, _, c)) => c,
        Err(why) => return error(503, &why, "not_ready"),
    };
    let actor = match authorize(req.authorization, &running) {
        Some(a) => a,
        None => {
            return error(
                401,
                "the admin API needs an admin token: Authorization: Bearer TOKEN, with the \
                 token's SHA-256 in [server] admin_tokens",
                "invalid_admin_token",
            )
        }
    };
    let parts: Vec<&str> = req
        .path
        .trim_start_matches("/admin/v1/")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let run = |op: StoreOp, status: u16| -> (u16, Value) {
        let timeout = Duration::from_millis(APPLY_WAIT_MS_MAX);
        match manage::change(region, instance, &actor, timeout, op) {
            Ok(done) => (status, done.said),
            Err(r) => refused(&r),
        }
    };
    match (req.method, parts.as_slice()) {
        // Reads use the config validated above for the token; the store is read from its file.
        ("GET", ["tenants"]) => match manage::store_of(&running) {
            Ok(store) => list_tenants(&store, &running),
            Err(r) => refused(&r),
        },
        ("GET", ["tenants", name]) => match manage::store_of(&running) {
            Ok(store) => match store.tenants.get(*name) {
                Some(_) => (200, store_op::tenant_json(&store, name)),
                None => error(
                    404,
                    &format!("no tenant {name:?} in the tenant store"),
                    "not_found",
                ),
            },
            Err(r) => refused(&r),
        },
        ("POST", ["tenants"]) => {
            let body: TenantBody = match parse(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let Some(name) = body.name.clone() else {
                return error(400, "a new tenant needs a \"name\"", "invalid_body");
            };
            if body.suspended.is_some() {
                return error(
                    400,
                    "a new tenant is active; suspend it with PATCH",
                    "invalid_body",
                );
            }
            run(
                StoreOp::TenantAdd {
                    name,
                    settings: body.settings,
                },
                201,
            )
        }
        ("PATCH", ["tenants", name]) => {
            let body: TenantBody = match parse(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            if body.name.as_deref().is_some_and(|n| n != *name) {
                return error(
                    400,
                    "a tenant is not renamed; add a new one",
                    "invalid_body",
                );
            }
            run(
                StoreOp::TenantSet {
                    name: (*name).to_owned(),
                    settings: body.settings,
                    suspended: body.suspended,
                },
                200,
            )
        }
        ("DELETE", ["tenants", name]) => run(
            StoreOp::TenantRemove {
                name: (*name).to_owned(),
            },
            200,
        ),
        ("GET", ["spend"]) => {
            let since = match query_value(req.query, "since") {
                None => None,
                Some(s) => match humantime::parse_duration(&s) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        return error(
                            400,
                            &format!("since={s:?}: {e} (e.g. \"7d\", \"24h\")"),
                            "invalid_query",
                        )
                    }
                },
            };
            let q = crate::spend::Query {
                tenant: query_value(req.query, "tenant"),
                key: query_value(req.query, "key"),
                since,
                fleet: query_value(req.query, "fleet").is_some_and(|v| v == "true" || v == "1"),
            };
            match crate::spend::report(region, &running, &q, unix_ms()) {
                Ok(r) => (200, json!(r)),
                Err(why) => error(409, &why, "spend_unavailable"),
            }
        }
        ("GET", ["keys"]) => match manage::store_of(&running) {
            Ok(store) => {
                let tenant = query_value(req.query, "tenant");
                let now = unix_ms();
                let data: Vec<Value> = store
                    .keys
                    .iter()
                    .filter(|(_, k)| tenant.as_deref().is_none_or(|t| t == k.tenant))
                    .map(|(id, k)| store_op::key_json(&store, id, k, now))
                    .collect();
                (200, json!({"object": "list", "data": data}))
            }
            Err(r) => refused(&r),
        },
        ("POST", ["keys"]) => {
            let body: NewKeyBody = match parse(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let expires = match body.expires_in.as_deref().map(duration).transpose() {
                Ok(d) => d,
                Err(e) => return e,
            };
            let (secret, key) = match manage::key_random() {
                Ok(r) => KeyHash::make(r),
                Err(r) => return refused(&r),
            };
            // The key goes back to the caller only; the engine's builder gets its hash.
            with_secret(
                run(
                    StoreOp::KeyCreate {
                        tenant: body.tenant,
                        name: body.name,
                        expires_in_ms: expires
                            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
                        limits: body.limits,
                        key,
                    },
                    201,
                ),
                secret,
            )
        }
        ("POST", ["keys", id, "rotate"]) => {
            let body: RotateBody = match parse_or_empty(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            let grace = match duration(body.grace.as_deref().unwrap_or("24h")) {
                Ok(d) => d,
                Err(e) => return e,
            };
            let (secret, key) = match manage::key_random() {
                Ok(r) => KeyHash::make(r),
                Err(r) => return refused(&r),
            };
            with_secret(
                run(
                    StoreOp::KeyRotate {
                        id: (*id).to_owned(),
                        grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
                        key,
                    },
                    201,
                ),
                secret,
            )
        }
        ("DELETE", ["keys", id]) => run(
            StoreOp::KeyRevoke {
                id: (*id).to_owned(),
            },
            200,
        ),
        ("GET", ["access-requests"]) => {
            let status = match query_value(req.query, "status") {
                None => None,
                Some(s) => match AccessStatus::parse(&s) {
                    Some(st) => Some(st),
                    None => {
                        return error(
                            400,
                            &format!("status {s:?}: one of pending, approved, denied"),
                            "invalid_request",
                        )
                    }
                },
            };
            let tenant = query_value(req.query, "tenant");
            match manage::store_of(&running) {
                Ok(store) => {
                    let data: Vec<Value> = store
                        .access_requests
                        .iter()
                        .filter(|(_, r)| status.is_none_or(|s| s == r.status))
                        .filter(|(_, r)| tenant.as_deref().is_none_or(|t| t == r.tenant))
                        .map(|(id, r)| store_op::request_json(id, r, true))
                        .collect();
                    (200, json!({"object": "list", "data": data}))
                }
                Err(r) => refused(&r),
            }
        }
        ("GET", ["access-requests", id]) => match manage::store_of(&running) {
            Ok(store) => match store.access_requests.get(*id) {
                Some(r) => (200, store_op::request_json(id, r, true)),
                None => error(
                    404,
                    &format!("no access request {id} in the tenant store"),
                    "not_found",
                ),
            },
            Err(r) => refused(&r),
        },
        ("POST", ["access-requests", id, "approve"]) => {
            let body: ApproveBody = match parse_or_empty(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            run(
                StoreOp::AccessApprove {
                    id: (*id).to_owned(),
                    rpm: body.rpm,
                    tpm: body.tpm,
                },
                200,
            )
        }
        ("POST", ["access-requests", id, "deny"]) => {
            let body: DenyBody = match parse(req.body) {
                Ok(b) => b,
                Err(e) => return e,
            };
            run(
                StoreOp::AccessDeny {
                    id: (*id).to_owned(),
                    reason: body.reason,
                },
                200,
            )
        }
        (
            _,
            ["tenants"]
            | ["tenants", _]
            | ["keys"]
            | ["keys", _]
            | ["keys", _, "rotate"]
            | ["access-requests"]
            | ["access-requests", _]
            | ["access-requests", _, "approve" | "deny"],
        ) => error(
            405,
            "method not allowed on this admin endpoint (docs/admin-api.md)",
            "method_not_allowed",
        ),
        _ => error(
            404,
            "no such admin endpoint; see docs/admin-api.md",
            "not_found",
        ),
    }
}

/// The audit log's name for the token presented, if it is one of the running config's.
fn authorize(authorization: Option<&[u8]>, running: &Config) -> Option<String> {
    let token = crate::tenant::presented_key(authorization, None)?;
    let hash = hash_key(token);
    running
        .server
        .admin_tokens
        .contains(&hash)
        .then(|| format!("admin:{}", key_alias(&hash)))
}

fn error(status: u16, message: &str, code: &str) -> (u16, Value) {
    (
        status,
        json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// A refused change or read as an answer: the store's refusals 404, 409, 400; the instance's
/// 503. (The data port's access requests answer the same.)
pub(crate) fn refused(r: &Refused) -> (u16, Value) {
    match r.kind {
        Some(ErrorKind::NotFound) => error(404, &r.message, "not_found"),
        Some(ErrorKind::Exists) => error(409, &r.message, "already_exists"),
        Some(ErrorKind::Invalid) => error(400, &r.message, "invalid_request"),
        None => error(503, &r.message, "not_applied"),
    }
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (u16, Value)> {
    serde_json::from_slice(body).map_err(|e| {
        error(
            400,
            &format!("the body is not what this endpoint takes: {e}"),
            "invalid_body",
        )
    })
}

/// A body that may be left out (`{}` then).
fn parse_or_empty<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, (u16, Value)> {
    if body.iter().all(u8::is_ascii_whitespace) {
        parse(b"{}")
    } else {
        parse(body)
    }
}

fn duration(s: &str) -> Result<Duration, (u16, Value)> {
    humantime::parse_duration(s).map_err(|e| {
        error(
            400,
            &format!("{s:?}: {e} (e.g. \"90d\", \"24h\")"),
            "invalid_body",
        )
    })
}

fn query_value(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A tenant as the API takes it: its name, whether it is suspended, and its settings. A field
/// neither takes is refused (the test posts `"rmp"`), as the store's `StoredTenant` refuses it
/// with the same `flatten`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantBody {
    name: Option<String>,
    suspended: Option<bool>,
    #[serde(flatten)]
    settings: Settings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewKeyBody {
    tenant: String,
    name: Option<String>,
    /// e.g. "90d".
    expires_in: Option<String>,
    /// The key's own limits: `rpm`, `tpm`, `max_concurrency`, `budget_usd`, `models`, and
    /// spend carried in (`spent_usd`, `spent_until_unix_ms`).
    #[serde(flatten)]
    limits: KeySettings,
}

/// `POST /admin/v1/access-requests/{id}/approve`: the tenant's new limits, if any.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    rpm: Option<i64>,
    tpm: Option<i64>,
}

/// `POST /admin/v1/access-requests/{id}/deny`: why (the tenant sees it).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old key keeps working, e.g. "24h" (the default).
    grace: Option<String>,
}

fn list_tenants(store: &Store, running: &Config) -> (u16, Value) {
    let keys = store.keys_by_tenant();
    let mut data: Vec<Value> = store
        .tenants
        .iter()
        .map(|(name, t)| {
            let n = keys.get(name.as_str()).map_or(0, Vec::len);
            store_op::tenant_json_with(name, t, n)
        })
        .collect();
    for t in &running.tenants {
        if !store.tenants.contains_key(&t.name) {
            data.push(json!({"name": t.name, "source": "config", "keys": t.keys.len()}));
        }
    }
    (200, json!({"object": "list", "data": data}))
}

/// A new key's answer with the key in it: shown once, to whoever asked for it.
fn with_secret((status, mut body): (u16, Value), secret: String) -> (u16, Value) {
    if status < 300 {
        body["key"] = Value::String(secret);
    }
    (status, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_keys_body_takes_every_limit_of_its_own() {
        let body: NewKeyBody = serde_json::from_str(
            r#"{"tenant":"t","rpm":5,"max_concurrency":2,"budget_usd":1.5,"models":["m"],
                "spent_usd":0.5,"spent_until_unix_ms":1000}"#,
        )
        .expect("parses");
        let l = body.limits;
        assert_eq!((l.rpm, l.max_concurrency), (Some(5), Some(2)));
        assert_eq!(l.models.as_deref(), Some(&["m".to_owned()][..]));
        assert_eq!(
            (l.spent_usd, l.spent_until_unix_ms),
            (Some(0.5), Some(1000))
        );
        assert!(serde_json::from_str::<NewKeyBody>(r#"{"tenant":"t","nope":1}"#).is_err());
    }
}
