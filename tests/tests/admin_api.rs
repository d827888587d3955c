//! The admin API on the admin listener, against a running engine on 2 shards: admin tokens
//! (none, a wrong one and a tenant's key are all 401), tenants and keys made, listed, rotated,
//! revoked and suspended over HTTP, each in force on the data port when the answer comes, and
//! audited under the token's id; errors OpenAI-shaped with the right status.

use serde_json::{json, Value};
use shardgate_tests::{
    admin_request, chat_with_key, sha256_hex, store_config, store_files_text, Gateway, TempDir,
};

const ADMIN_TOKEN: &str = "adm-test-token-0123456789";

/// One admin request; the status and the JSON body.
fn admin(
    gw: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    admin_request(gw, method, path, token, body.as_ref())
}

fn ok(gw: &Gateway, method: &str, path: &str, body: Option<Value>, want: u16) -> Value {
    let (status, v) = admin(gw, method, path, Some(ADMIN_TOKEN), body);
    assert_eq!(status, want, "{method} {path}: {v}");
    v
}

/// The status of a chat call with `key` on a fresh data-port connection (and its error code).
fn call(gw: &Gateway, key: &str) -> (u16, String) {
    chat_with_key(gw.addr(), key, "demo")
}

/// Statuses of 24 calls on fresh connections (spread over both shards' listeners).
fn calls(gw: &Gateway, key: &str) -> Vec<u16> {
    (0..24).map(|_| call(gw, key).0).collect()
}

#[test]
fn tenants_and_keys_over_http_take_effect_on_every_shard_and_are_audited() {
    let tmp = TempDir::new("admin-api");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, Some(ADMIN_TOKEN)));
    // No token, a wrong one: 401, nothing done.
    for token in [None, Some("adm-wrong")] {
        let (status, v) = admin(&gw, "GET", "/admin/v1/tenants", token, None);
        assert_eq!(status, 401, "{v}");
        assert_eq!(v["error"]["code"], "invalid_admin_token");
    }
    let new = json!({"name": "team-a", "models": ["demo"], "rpm": 100000});
    let (status, _) = admin(&gw, "POST", "/admin/v1/tenants", None, Some(new.clone()));
    assert_eq!(status, 401);

    let t = ok(&gw, "POST", "/admin/v1/tenants", Some(new.clone()), 201);
    assert_eq!(
        (t["name"].clone(), t["state"].clone()),
        (json!("team-a"), json!("active"))
    );
    assert_eq!(t["rpm"], 100000);
    // Taken, unknown fields, bad values: 409 / 400, OpenAI-shaped.
    let (s, v) = admin(
        &gw,
        "POST",
        "/admin/v1/tenants",
        Some(ADMIN_TOKEN),
        Some(new),
    );
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (409, json!("already_exists")),
        "{v}"
    );
    let (s, v) = admin(
        &gw,
        "POST",
        "/admin/v1/tenants",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "b", "rmp": 5})),
    );
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_body")),
        "{v}"
    );
    let (s, v) = admin(
        &gw,
        "POST",
        "/admin/v1/tenants",
        Some(ADMIN_TOKEN),
        Some(json!({"name": "b", "rpm": 0})),
    );
    assert_eq!(s, 400, "{v}");

    // A key: shown once, in force on both shards when the answer comes.
    let k = ok(
        &gw,
        "POST",
        "/admin/v1/keys",
        Some(json!({"tenant": "team-a", "name": "ci"})),
        201,
    );
    let key = k["key"].as_str().expect("the key").to_owned();
    let id = k["id"].as_str().expect("an id").to_owned();
    assert!(key.starts_with("sk-sg-") && k["prefix"] == key[..10]);
    let got = calls(&gw, &key);
    assert!(got.iter().all(|&s| s == 200), "{got:?}");
    // A tenant's key is never an admin token.
    let (s, _) = admin(&gw, "GET", "/admin/v1/keys", Some(&key), None);
    assert_eq!(s, 401);
    // Listed by id and prefix, never the key.
    let list = ok(&gw, "GET", "/admin/v1/keys?tenant=team-a", None, 200);
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1), "{list}");
    assert!(!list.to_string().contains(&key));
    for field in [
        "id", "tenant", "name", "prefix", "created", "expires", "state",
    ] {
        assert!(list["data"][0].get(field).is_some(), "no {field}: {list}");
    }

    // Rotated: both keys work until the grace ends (none here: at once only the new one).
    let r = ok(
        &gw,
        "POST",
        &format!("/admin/v1/keys/{id}/rotate"),
        Some(json!({"grace": "1h"})),
        201,
    );
    let new_key = r["key"].as_str().expect("the new key").to_owned();
    let new_id = r["id"].as_str().expect("its id").to_owned();
    assert_eq!(r["rotated"]["state"], "rotating", "{r}");
    assert_eq!(call(&gw, &key).0, 200);
    assert_eq!(call(&gw, &new_key).0, 200);
    // Revoked: refused on every shard as soon as the answer came.
    ok(
        &gw,
        "DELETE",
        &format!("/admin/v1/keys/{new_id}"),
        None,
        200,
    );
    let got = calls(&gw, &new_key);
    assert!(got.iter().all(|&s| s == 401), "{got:?}");
    let (s, v) = admin(
        &gw,
        "DELETE",
        &format!("/admin/v1/keys/{new_id}"),
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!((s, v["error"]["code"].clone()), (404, json!("not_found")));

    // Suspended and resumed with PATCH; settings changed the same way.
    let t = ok(
        &gw,
        "PATCH",
        "/admin/v1/tenants/team-a",
        Some(json!({"suspended": true, "tpm": 5000})),
        200,
    );
    assert_eq!(
        (t["state"].clone(), t["tpm"].clone()),
        (json!("suspended"), json!(5000))
    );
    assert_eq!(call(&gw, &key), (403, "tenant_suspended".into()));
    ok(
        &gw,
        "PATCH",
        "/admin/v1/tenants/team-a",
        Some(json!({"suspended": false})),
        200,
    );
    assert_eq!(call(&gw, &key).0, 200);

    // Removed with its keys; then unknown.
    ok(&gw, "DELETE", "/admin/v1/tenants/team-a", None, 200);
    assert_eq!(call(&gw, &key).0, 401);
    let (s, _) = admin(
        &gw,
        "GET",
        "/admin/v1/tenants/team-a",
        Some(ADMIN_TOKEN),
        None,
    );
    assert_eq!(s, 404);
    // Unknown endpoints and methods.
    let (s, _) = admin(&gw, "GET", "/admin/v1/nothing", Some(ADMIN_TOKEN), None);
    assert_eq!(s, 404);
    let (s, _) = admin(&gw, "PUT", "/admin/v1/keys", Some(ADMIN_TOKEN), None);
    assert_eq!(s, 405);

    // Audited under the token's id; no key or token anywhere in the log or the store.
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).expect("audit log");
    let store = store_files_text(d);
    let alias = &sha256_hex(ADMIN_TOKEN)[..8];
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    // add, create, rotate, revoke, two patches, remove.
    assert_eq!(lines.len(), 7, "{audit}");
    assert!(
        lines.iter().all(|l| l["actor"] == format!("admin:{alias}")),
        "{audit}"
    );
    for text in [&audit, &store] {
        for secret in [key.as_str(), new_key.as_str(), ADMIN_TOKEN] {
            assert!(!text.contains(secret), "a secret leaked:\n{text}");
        }
    }
}
