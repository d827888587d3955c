//! A change to the tenant store as data ([`StoreOp`]): what `shardgate-ctl`, the admin API
//! and the access-request thread send over the ring, and what the engine's config builder,
//! which holds the store in memory, makes on it ([`apply`]).
//!
//! [`apply`] gives back what the change did (for the audit log), what to answer (the JSON
//! the admin API returns and ctl prints from), the entries it left (one journal line) and the
//! entries as they were (to take it back if the new config does not validate), and which
//! tenants' config it touched: the builder rebuilds only those. I/O-free.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::store::{
    self, AccessRequest, Change, JournalEntry, KeyHash, KeySettings, Settings, Store, StoreError,
    StoredKey, StoredTenant,
};
use crate::tenant::hex;

/// Longest operation a message carries, bytes of JSON (a tenant's settings are the largest).
pub const STORE_OP_BYTES_MAX: usize = 64 * 1024;

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreOp {
    TenantAdd {
        name: String,
        settings: Settings,
    },
    /// The settings `settings` sets, and the state when `suspended` is given.
    TenantSet {
        name: String,
        settings: Settings,
        suspended: Option<bool>,
    },
    TenantSuspend {
        name: String,
        suspended: bool,
    },
    TenantRemove {
        name: String,
    },
    /// The config file's `[[tenants]]` the store does not have yet, keys and all.
    TenantImport,
    KeyCreate {
        tenant: String,
        name: Option<String>,
        expires_in_ms: Option<u64>,
        limits: KeySettings,
        key: KeyHash,
    },
    KeyRotate {
        id: String,
        grace_ms: u64,
        key: KeyHash,
    },
    KeyRevoke {
        id: String,
    },
    /// A tenant asks for a model with its own key.
    AccessRequest {
        tenant: String,
        model: String,
        reason: String,
    },
    AccessApprove {
        id: String,
        rpm: Option<i64>,
        tpm: Option<i64>,
    },
    AccessDeny {
        id: String,
        reason: String,
    },
    /// In a fleet (`[fleet]`): take the changes other instances made to the fleet's store
    /// (the engine's fleet watcher asks when Redis's store is newer). The builder makes it
    /// (`fleet_store`); the store alone changes nothing for it.
    FleetSync,
}

/// An operation as the ring carries it: what, and who asked (the audit log's name for them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpMessage {
    pub op: StoreOp,
    pub actor: String,
}

impl OpMessage {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<OpMessage, String> {
        if bytes.len() > STORE_OP_BYTES_MAX {
            return Err(format!(
                "a store operation of {} bytes; at most {STORE_OP_BYTES_MAX}",
                bytes.len()
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| format!("not a store operation: {e}"))
    }
}

/// What [`apply`] did.
#[derive(Debug)]
pub struct Applied {
    pub change: Change,
    /// The answer: what the admin API returns, and ctl prints from.
    pub outcome: Value,
    /// The entries the change left, as one journal line.
    pub delta: JournalEntry,
    /// The same entries as they were: applied, it takes the change back.
    pub undo: JournalEntry,
    /// The tenants whose keys, settings or state changed (their config is built again).
    pub tenants: BTreeSet<String>,
}

/// What an operation may change, found before it runs.
#[derive(Debug, Default)]
struct Touched {
    tenants: BTreeSet<String>,
    keys: BTreeSet<String>,
    /// Access requests (a new one may push out the oldest decided one, so all are kept).
    requests: bool,
}

fn touched(op: &StoreOp, store: &Store, running: &Config) -> Touched {
    let mut t = Touched::default();
    let key_tenant = |id: &str| store.keys.get(id).map(|k| k.tenant.clone());
    match op {
        StoreOp::TenantAdd { name, .. }
        | StoreOp::TenantSet { name, .. }
        | StoreOp::TenantSuspend { name, .. } => {
            t.tenants.insert(name.clone());
        }
        StoreOp::TenantRemove { name } => {
            t.tenants.insert(name.clone());
            t.keys.extend(
                store
                    .keys
                    .iter()
                    .filter(|(_, k)| k.tenant == *name)
                    .map(|(id, _)| id.clone()),
            );
            t.requests = true;
        }
        StoreOp::TenantImport => {
            for f in running.file_tenants() {
                t.tenants.insert(f.name.clone());
                t.keys
                    .extend(f.keys.iter().map(|k| store::key_id_of(&hex(&k.hash))));
            }
        }
        StoreOp::KeyCreate { tenant, key, .. } => {
            t.tenants.insert(tenant.clone());
            t.keys.insert(key.id());
        }
        StoreOp::KeyRotate { id, key, .. } => {
            t.tenants.extend(key_tenant(id));
            t.keys.insert(id.clone());
            t.keys.insert(key.id());
        }
        StoreOp::KeyRevoke { id } => {
            t.tenants.extend(key_tenant(id));
            t.keys.insert(id.clone());
        }
        StoreOp::AccessRequest { .. } | StoreOp::AccessDeny { .. } => t.requests = true,
        StoreOp::FleetSync => {}
        StoreOp::AccessApprove { id, .. } => {
            t.tenants
                .extend(store.access_requests.get(id).map(|r| r.tenant.clone()));
            t.requests = true;
        }
    }
    t
}

/// The entries of `map` named in `names`, as they are now.
fn images<V: Clone>(
    map: &BTreeMap<String, V>,
    names: &BTreeSet<String>,
) -> BTreeMap<String, Option<V>> {
    names
        .iter()
        .map(|n| (n.clone(), map.get(n).cloned()))
        .collect()
}

/// Of `after`, the entries that differ from `before`.
fn changed<V: PartialEq>(
    before: &BTreeMap<String, Option<V>>,
    after: BTreeMap<String, Option<V>>,
) -> BTreeMap<String, Option<V>> {
    after
        .into_iter()
        .filter(|(k, v)| before.get(k) != Some(v))
        .collect()
}

/// Make `msg`'s operation on `store` as `running` (the config the shards run: the file's
/// tenants, for names the store may not take and for an import) at `now_unix_ms`. On `Err`
/// the store is as it was.
pub fn apply(
    store: &mut Store,
    msg: &OpMessage,
    running: &Config,
    now_unix_ms: u64,
) -> Result<Applied, StoreError> {
    let t = touched(&msg.op, store, running);
    let all_requests = || -> BTreeSet<String> { store.access_requests.keys().cloned().collect() };
    let request_names = if t.requests {
        all_requests()
    } else {
        BTreeSet::new()
    };
    let before = JournalEntry {
        version: store.version,
        tenants: images(&store.tenants, &t.tenants),
        keys: images(&store.keys, &t.keys),
        access_requests: if t.requests {
            store
                .access_requests
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect()
        } else {
            BTreeMap::new()
        },
    };
    let result = run(store, &msg.op, &msg.actor, running, now_unix_ms);
    let (change, outcome) = match result {
        Ok(r) => r,
        Err(e) => {
            // Every operation checks before it changes anything; this takes back whatever one
            // that did not would have left.
            store.restore(before);
            return Err(e);
        }
    };
    let mut request_names = request_names;
    if t.requests {
        request_names.extend(store.access_requests.keys().cloned());
    }
    let after = JournalEntry {
        version: store.version,
        tenants: changed(&before.tenants, images(&store.tenants, &t.tenants)),
        keys: changed(&before.keys, images(&store.keys, &t.keys)),
        access_requests: changed(
            &before.access_requests,
            images(&store.access_requests, &request_names),
        ),
    };
    // What `after` names, as it was before (a request new with this change: absent).
    let undo = JournalEntry {
        version: before.version,
        tenants: after
            .tenants
            .keys()
            .map(|k| (k.clone(), before.tenants.get(k).cloned().flatten()))
            .collect(),
        keys: after
            .keys
            .keys()
            .map(|k| (k.clone(), before.keys.get(k).cloned().flatten()))
            .collect(),
        access_requests: after
            .access_requests
            .keys()
            .map(|k| (k.clone(), before.access_requests.get(k).cloned().flatten()))
            .collect(),
    };
    let mut tenants: BTreeSet<String> = after.tenants.keys().cloned().collect();
    for (id, k) in &after.keys {
        let was = before.keys.get(id).and_then(Option::as_ref);
        tenants.extend(k.iter().chain(was).map(|k| k.tenant.clone()));
    }
    Ok(Applied {
        change,
        outcome,
        delta: after,
        undo,
        tenants,
    })
}

fn run(
    store: &mut Store,
    op: &StoreOp,
    actor: &str,
    running: &Config,
    now: u64,
) -> Result<(Change, Value), StoreError> {
    Ok(match op {
        StoreOp::TenantAdd { name, settings } => {
            let c = store.add_tenant(name, settings.clone(), &running.tenants, now)?;
            (c, tenant_json(store, name))
        }
        StoreOp::TenantSet {
            name,
            settings,
            suspended,
        } => {
            let mut c = store.set_tenant(name, settings)?;
            if let Some(s) = suspended {
                // One change for the audit log: the settings and the state, before and after.
                c.new = store.suspend_tenant(name, *s)?.new;
            }
            (c, tenant_json(store, name))
        }
        StoreOp::TenantSuspend { name, suspended } => {
            let c = store.suspend_tenant(name, *suspended)?;
            (c, tenant_json(store, name))
        }
        StoreOp::TenantRemove { name } => {
            let c = store.remove_tenant(name)?;
            (c, json!({"name": name, "deleted": true}))
        }
        StoreOp::TenantImport => {
            let c = store.import_tenants(running.file_tenants(), now)?;
            let imported = c.new.clone().unwrap_or(Value::Null);
            (c, json!({"imported": imported}))
        }
        StoreOp::KeyCreate {
            tenant,
            name,
            expires_in_ms,
            limits,
            key,
        } => {
            let expires = expires_in_ms.map(Duration::from_millis);
            let (id, c) = store.create_key_hashed(
                tenant,
                name.as_deref(),
                expires,
                limits.clone(),
                key.clone(),
                now,
            )?;
            (c, key_json_of(store, &id, now))
        }
        StoreOp::KeyRotate { id, grace_ms, key } => {
            let grace = Duration::from_millis(*grace_ms);
            let (new, c) = store.rotate_key_hashed(id, grace, key.clone(), now)?;
            let mut out = key_json_of(store, &new, now);
            out["rotated"] = key_json_of(store, id, now);
            (c, out)
        }
        StoreOp::KeyRevoke { id } => {
            let c = store.revoke_key(id)?;
            (c, json!({"id": id, "revoked": true}))
        }
        StoreOp::AccessRequest {
            tenant,
            model,
            reason,
        } => {
            if !store.tenants.contains_key(tenant)
                && running.tenants.iter().any(|t| t.name == *tenant)
            {
                return Err(store::config_only_tenant(tenant));
            }
            let c = store.request_access(tenant, model, reason, now)?;
            let out = request_json_of(store, &c.target, false);
            (c, out)
        }
        StoreOp::AccessApprove { id, rpm, tpm } => {
            let c = store.approve_access(id, *rpm, *tpm, actor, now)?;
            (c, request_json_of(store, id, true))
        }
        StoreOp::AccessDeny { id, reason } => {
            let c = store.deny_access(id, reason, actor, now)?;
            (c, request_json_of(store, id, true))
        }
        StoreOp::FleetSync => {
            return Err(StoreError {
                kind: store::ErrorKind::Invalid,
                message: "fleet_sync is made by an engine in a fleet ([fleet]), not by the store"
                    .into(),
            })
        }
    })
}

/// Tenant `name` of the store as the APIs show it (`null` if it is not there).
pub fn tenant_json(store: &Store, name: &str) -> Value {
    match store.tenants.get(name) {
        Some(t) => {
            let keys = store.keys.values().filter(|k| k.tenant == name).count();
            tenant_json_with(name, t, keys)
        }
        None => Value::Null,
    }
}

/// A store tenant with `keys` keys, as the APIs show it.
pub fn tenant_json_with(name: &str, t: &StoredTenant, keys: usize) -> Value {
    let mut v = serde_json::to_value(&t.settings).unwrap_or_else(|_| json!({}));
    v["name"] = json!(name);
    v["source"] = json!("store");
    v["state"] = json!(if t.suspended { "suspended" } else { "active" });
    v["created"] = json!(t.created_unix_ms / 1000);
    v["keys"] = json!(keys);
    v
}

fn key_json_of(store: &Store, id: &str, now_unix_ms: u64) -> Value {
    store
        .keys
        .get(id)
        .map_or(Value::Null, |k| key_json(store, id, k, now_unix_ms))
}

/// A key as the APIs show it: never the key, nor its hash.
pub fn key_json(store: &Store, id: &str, k: &StoredKey, now_unix_ms: u64) -> Value {
    json!({
        "id": id,
        "object": "key",
        "tenant": k.tenant,
        "name": k.name,
        "prefix": k.prefix,
        "created": k.created_unix_ms / 1000,
        "expires": k.expires_unix_ms.map(|e| e / 1000),
        "state": store.key_state(k, now_unix_ms).as_str(),
        "rpm": k.limits.rpm,
        "tpm": k.limits.tpm,
        "max_concurrency": k.limits.max_concurrency,
        "budget_usd": k.limits.budget_usd,
        "models": k.limits.models,
        "spent_usd": k.limits.spent_usd,
        "spent_until": k.limits.spent_until_unix_ms.map(|t| t / 1000),
    })
}

fn request_json_of(store: &Store, id: &str, operator: bool) -> Value {
    store
        .access_requests
        .get(id)
        .map_or(Value::Null, |r| request_json(id, r, operator))
}

/// An access request as the APIs show it. `operator`: with who decided (the admin API); a
/// tenant sees the decision and its reason, not the operator's name.
pub fn request_json(id: &str, r: &AccessRequest, operator: bool) -> Value {
    let mut v = json!({
        "id": id,
        "object": "access_request",
        "tenant": r.tenant,
        "model": r.model,
        "reason": r.reason,
        "status": r.status.as_str(),
        "created": r.created_unix_ms / 1000,
        "decided": r.decided_unix_ms.map(|d| d / 1000),
    });
    if let Some(why) = &r.deny_reason {
        v["deny_reason"] = json!(why);
    }
    if let Some(rpm) = r.rpm {
        v["rpm"] = json!(rpm);
    }
    if let Some(tpm) = r.tpm {
        v["tpm"] = json!(tpm);
    }
    if operator {
        v["decided_by"] = json!(r.decided_by);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_sees_no_operator_name() {
        let r = AccessRequest {
            tenant: "a".into(),
            model: "gpt-4o".into(),
            reason: "evals".into(),
            status: crate::store::AccessStatus::Denied,
            created_unix_ms: 5_000,
            decided_unix_ms: Some(9_000),
            decided_by: Some("ctl:ops".into()),
            deny_reason: Some("use gpt-4o-mini".into()),
            rpm: None,
            tpm: None,
        };
        let t = request_json("req_1", &r, false);
        assert_eq!(t["status"], "denied");
        assert_eq!(
            (t["created"].clone(), t["decided"].clone()),
            (json!(5), json!(9))
        );
        assert_eq!(t["deny_reason"], "use gpt-4o-mini");
        assert!(t.get("decided_by").is_none());
        assert_eq!(request_json("req_1", &r, true)["decided_by"], "ctl:ops");
    }
}
