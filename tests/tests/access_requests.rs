//! The approval workflow against a running engine on 2 shards: a tenant asks for a model with
//! its own key (`POST /v1/access-requests` on the data port) and follows its requests (`GET`,
//! never another tenant's); operators approve or deny with `shardgate-ctl access` or the admin
//! API; an approval is in force on every shard when the command or call returns, a denial
//! leaves the model refused (403 `model_not_approved`, whose message says how to ask); every
//! step is audited under who took it.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use shardgate_tests::{
    admin_request, assert_error, chat_with_key, ctl_ok, ctl_status, run_ctl, sha256_hex,
    store_config, wait_until, Client, Gateway, Response, TempDir, CTL_WAIT,
};

const ADMIN_TOKEN: &str = "adm-access-token-0123456789";
/// Fresh connections per check: enough that both shards' listeners take some (SO_REUSEPORT
/// spreads them by the client's port).
const CONNECTIONS: usize = 32;

/// A tenant `name` allowed `demo` only, and a key of it.
fn tenant_with_key(gw: &Gateway, name: &str) -> String {
    ctl_ok(
        gw,
        &[
            "tenants", "add", name, "--models", "demo", "--rpm", "100000",
        ],
    );
    let out = ctl_ok(gw, &["keys", "create", name]);
    let key = out.lines().last().unwrap_or_default().to_owned();
    assert!(key.starts_with("sk-sg-"), "no key printed:\n{out}");
    key
}

/// One request to `/v1/access-requests` on the data port, on a fresh connection.
fn access(gw: &Gateway, method: &str, key: Option<&str>, body: Option<&str>) -> Response {
    let mut c = Client::connect(gw.addr());
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let body = body.unwrap_or_default();
    let length = if method == "GET" {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    c.send(format!(
        "{method} /v1/access-requests HTTP/1.1\r\nHost: t\r\n{auth}{length}\r\n{body}"
    ));
    c.read_response()
}

/// File a request for `model` with `key`: its id, asserting a 201 with the request object.
fn ask(gw: &Gateway, key: &str, model: &str, reason: &str) -> String {
    let body = json!({"model": model, "reason": reason}).to_string();
    let r = access(gw, "POST", Some(key), Some(&body));
    assert_eq!(r.status, 201, "{}", r.summary());
    let v = r.json();
    assert_eq!(
        (v["model"].clone(), v["reason"].clone(), v["status"].clone()),
        (json!(model), json!(reason), json!("pending")),
        "{v}"
    );
    assert!(
        v["created"].as_u64().is_some_and(|t| t > 1_600_000_000),
        "{v}"
    );
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    assert!(id.starts_with("req_"), "{v}");
    id
}

/// The requests `key`'s tenant sees.
fn mine(gw: &Gateway, key: &str) -> Vec<Value> {
    let r = access(gw, "GET", Some(key), None);
    assert_eq!(r.status, 200, "{}", r.summary());
    let v = r.json();
    assert_eq!(v["object"], "list", "{v}");
    v["data"].as_array().cloned().unwrap_or_default()
}

/// Statuses of `CONNECTIONS` chat calls for `model` at once, each on its own connection.
fn calls_at_once(gw: &Gateway, key: &str, model: &str) -> Vec<(u16, String)> {
    let addr = gw.addr();
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (key, model) = (key.to_owned(), model.to_owned());
            std::thread::spawn(move || chat_with_key(addr, &key, &model))
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

/// Requests each shard has answered (`shardgate-ctl status --json`).
fn shard_requests(gw: &Gateway) -> Vec<u64> {
    let s = ctl_status(gw.instance());
    s["shards"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| x["requests"].as_u64().unwrap_or(0))
                .collect()
        })
        .unwrap_or_default()
}

/// The audit log's lines as (actor, action, target).
fn audit(d: &Path) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(d.join("audit.jsonl")).expect("audit log");
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("audit JSON");
            let s = |f: &str| v[f].as_str().unwrap_or_default().to_owned();
            (s("actor"), s("action"), s("target"))
        })
        .collect()
}

#[test]
fn a_tenant_asks_ctl_approves_or_denies_and_every_shard_follows() {
    let tmp = TempDir::new("access-ctl");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, Some(ADMIN_TOKEN)));
    assert_eq!(gw.shards(), 2);
    let key = tenant_with_key(&gw, "team-a");
    let other = tenant_with_key(&gw, "team-b");

    // Not approved: 403, and the message says how to ask.
    assert_eq!(
        chat_with_key(gw.addr(), &key, "gpt-4o"),
        (403, "model_not_approved".into())
    );
    let mut c = Client::connect(gw.addr());
    let body = r#"{"model":"gpt-4o","messages":[]}"#;
    c.send(format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ));
    let r = c.read_response();
    assert_error(&r, 403, "model_not_approved");
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("POST /v1/access-requests"), "{message}");

    // Asked for: 201 with the request; the same again: 409; the other tenant sees nothing.
    let id = ask(&gw, &key, "gpt-4o", "evals for Q3");
    let again = access(
        &gw,
        "POST",
        Some(&key),
        Some(r#"{"model":"gpt-4o","reason":"again"}"#),
    );
    assert_error(&again, 409, "already_exists");
    let seen = mine(&gw, &key);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (
            seen[0]["id"].clone(),
            seen[0]["tenant"].clone(),
            seen[0]["status"].clone()
        ),
        (json!(id), json!("team-a"), json!("pending"))
    );
    assert!(
        mine(&gw, &other).is_empty(),
        "another tenant's request is shown"
    );
    // A model it may use already: 400.
    let r = access(&gw, "POST", Some(&key), Some(r#"{"model":"demo"}"#));
    assert_error(&r, 400, "invalid_request");

    // Bodies that are no request: 400 from the engine's error type, the connection kept.
    for bad in [
        "not json",
        "{}",
        r#"{"model":5}"#,
        r#"{"reason":"x"}"#,
        r#"{"model":"m","extra":1}"#,
        "",
    ] {
        let r = access(&gw, "POST", Some(&key), Some(bad));
        assert_error(&r, 400, "invalid_body");
    }
    // No key, an unknown key: 401 as for chat; another method: 405.
    assert_error(&access(&gw, "GET", None, None), 401, "invalid_api_key");
    assert_error(
        &access(&gw, "POST", Some("sk-sg-unknown"), Some(r#"{"model":"x"}"#)),
        401,
        "invalid_api_key",
    );
    assert_eq!(access(&gw, "DELETE", Some(&key), None).status, 405);

    // The operators' list: the request, pending; filtered by tenant.
    let list = ctl_ok(&gw, &["access", "list", "--pending"]);
    let head = list.lines().next().unwrap_or_default();
    for col in ["ID", "TENANT", "MODEL", "STATUS", "CREATED", "REASON"] {
        assert!(head.contains(col), "{list}");
    }
    assert!(
        list.lines().any(|l| l.contains(&id)
            && l.contains("team-a")
            && l.contains("gpt-4o")
            && l.contains("pending")
            && l.contains("evals for Q3")),
        "{list}"
    );
    let theirs = ctl_ok(&gw, &["access", "list", "--tenant", "team-b"]);
    assert_eq!(theirs.lines().count(), 1, "{theirs}");

    // Approved: the model is served on every shard when ctl returns.
    let said = ctl_ok(&gw, &["access", "approve", &id, "--rpm", "200000"]);
    assert!(said.contains(&format!("approved {id}")), "{said}");
    let before = shard_requests(&gw);
    let got = calls_at_once(&gw, &key, "gpt-4o");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    // Both shards took some of those calls (and answered every one 200).
    let both = wait_until(Duration::from_secs(5), || {
        let after = shard_requests(&gw);
        after.len() == 2 && after.iter().zip(&before).all(|(a, b)| a > b)
    });
    assert!(
        both,
        "not both shards served: {before:?} -> {:?}",
        shard_requests(&gw)
    );
    // Still not the other tenant's.
    assert_eq!(chat_with_key(gw.addr(), &other, "gpt-4o").0, 403);
    let seen = mine(&gw, &key);
    assert_eq!(seen[0]["status"], "approved", "{seen:?}");
    assert_eq!(seen[0]["rpm"], 200000, "{seen:?}");
    assert!(seen[0].get("decided_by").is_none(), "{seen:?}");
    assert!(
        ctl_ok(&gw, &["access", "list", "--pending"])
            .lines()
            .count()
            == 1
    );
    // Decided: not again.
    let out = run_ctl(gw.instance(), &["access", "approve", &id], &[], CTL_WAIT);
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.stderr.contains("approved already"), "{}", out.text());

    // Denied with a reason: the tenant sees it, and the model stays refused everywhere.
    let id2 = ask(&gw, &key, "o3", "");
    let out = run_ctl(gw.instance(), &["access", "deny", &id2], &[], CTL_WAIT);
    assert_eq!(
        out.code,
        Some(2),
        "a denial without --reason: {}",
        out.text()
    );
    ctl_ok(&gw, &["access", "deny", &id2, "--reason", "use gpt-4o"]);
    let seen = mine(&gw, &key);
    let denied = seen
        .iter()
        .find(|r| r["id"] == id2.as_str())
        .expect("listed");
    assert_eq!(
        (denied["status"].clone(), denied["deny_reason"].clone()),
        (json!("denied"), json!("use gpt-4o"))
    );
    let got = calls_at_once(&gw, &key, "o3");
    assert!(
        got.iter()
            .all(|(s, code)| *s == 403 && code == "model_not_approved"),
        "{got:?}"
    );

    // Audited: the tenant's requests under its name, the decisions under ctl's.
    let lines = audit(d);
    let of = |action: &str| {
        lines
            .iter()
            .filter(|(_, a, _)| a == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let requests = of("access.request");
    assert_eq!(requests.len(), 2, "{lines:?}");
    assert!(
        requests
            .iter()
            .all(|(actor, _, _)| actor == "tenant:team-a"),
        "{lines:?}"
    );
    for (action, target) in [("access.approve", &id), ("access.deny", &id2)] {
        let got = of(action);
        assert_eq!(got.len(), 1, "{action}: {lines:?}");
        assert!(
            got[0].0.starts_with("ctl:") && &got[0].2 == target,
            "{lines:?}"
        );
    }
}

/// One admin request; the status and the JSON body.
fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_request(gw, method, path, Some(ADMIN_TOKEN), body.as_ref())
}

#[test]
fn the_admin_api_lists_approves_and_denies_access_requests() {
    let tmp = TempDir::new("access-admin");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, Some(ADMIN_TOKEN)));
    let (s, _) = admin(
        &gw,
        "POST",
        "/admin/v1/tenants",
        Some(json!({"name": "team-c", "models": ["demo"]})),
    );
    assert_eq!(s, 201);
    let (s, k) = admin(
        &gw,
        "POST",
        "/admin/v1/keys",
        Some(json!({"tenant": "team-c"})),
    );
    assert_eq!(s, 201, "{k}");
    let key = k["key"].as_str().expect("a key").to_owned();
    let id1 = ask(&gw, &key, "gpt-4o", "support bot");
    let id2 = ask(&gw, &key, "o3", "");

    // Listed and filtered; one by id; unknown ids and filters refused.
    let (s, v) = admin(&gw, "GET", "/admin/v1/access-requests?status=pending", None);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, v) = admin(&gw, "GET", "/admin/v1/access-requests?tenant=nobody", None);
    assert_eq!(v["data"].as_array().map(Vec::len), Some(0), "{v}");
    let (s, v) = admin(&gw, "GET", "/admin/v1/access-requests?status=maybe", None);
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (s, v) = admin(
        &gw,
        "GET",
        &format!("/admin/v1/access-requests/{id1}"),
        None,
    );
    assert_eq!(s, 200, "{v}");
    for field in ["id", "tenant", "model", "reason", "status", "created"] {
        assert!(v.get(field).is_some(), "no {field}: {v}");
    }
    let (s, _) = admin(
        &gw,
        "GET",
        "/admin/v1/access-requests/req_000000000000",
        None,
    );
    assert_eq!(s, 404);
    let (s, _) = admin(&gw, "PUT", "/admin/v1/access-requests", None);
    assert_eq!(s, 405);

    // Approved with limits: in force on every shard when the answer comes.
    let alias = format!("admin:{}", &sha256_hex(ADMIN_TOKEN)[..8]);
    let (s, v) = admin(
        &gw,
        "POST",
        &format!("/admin/v1/access-requests/{id1}/approve"),
        Some(json!({"rpm": 100000, "tpm": 10000000})),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["status"].clone(), v["decided_by"].clone()),
        (json!("approved"), json!(alias))
    );
    let got = calls_at_once(&gw, &key, "gpt-4o");
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    let (_, t) = admin(&gw, "GET", "/admin/v1/tenants/team-c", None);
    assert_eq!(
        (t["rpm"].clone(), t["tpm"].clone(), t["models"].clone()),
        (json!(100000), json!(10000000), json!(["demo", "gpt-4o"])),
        "{t}"
    );
    let (s, v) = admin(
        &gw,
        "POST",
        &format!("/admin/v1/access-requests/{id1}/approve"),
        None,
    );
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (s, _) = admin(
        &gw,
        "POST",
        "/admin/v1/access-requests/req_000000000000/approve",
        None,
    );
    assert_eq!(s, 404);

    // Denied: a reason is required; then the model stays refused.
    let deny = format!("/admin/v1/access-requests/{id2}/deny");
    let (s, v) = admin(&gw, "POST", &deny, None);
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_body"))
    );
    let (s, v) = admin(&gw, "POST", &deny, Some(json!({"reason": ""})));
    assert_eq!(
        (s, v["error"]["code"].clone()),
        (400, json!("invalid_request"))
    );
    let (s, v) = admin(&gw, "POST", &deny, Some(json!({"reason": "not for chat"})));
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["status"].clone(), v["deny_reason"].clone()),
        (json!("denied"), json!("not for chat"))
    );
    let got = calls_at_once(&gw, &key, "o3");
    assert!(got.iter().all(|(s, _)| *s == 403), "{got:?}");

    // Audited: the tenant's requests under its name, the decisions under the token's id.
    let lines = audit(d);
    let actors: Vec<(&str, &str)> = lines
        .iter()
        .filter(|(_, a, _)| a.starts_with("access."))
        .map(|(actor, a, _)| (actor.as_str(), a.as_str()))
        .collect();
    assert_eq!(
        actors,
        [
            ("tenant:team-c", "access.request"),
            ("tenant:team-c", "access.request"),
            (alias.as_str(), "access.approve"),
            (alias.as_str(), "access.deny"),
        ]
    );
}

#[test]
fn without_a_store_or_for_a_config_tenant_access_requests_are_refused_clearly() {
    let tmp = TempDir::new("access-refused");
    let d = tmp.path();
    let boot_key = "sk-boot-access-key";
    let boot = format!(
        "[[tenants]]\nname = \"boot\"\nkeys = [\"sha256:{}\"]\nmodels = [\"demo\"]\n",
        sha256_hex(boot_key)
    );
    // A tenant of the config file only: told to have it imported.
    let gw = Gateway::start(&format!("{}\n{boot}", store_config(d, Some(ADMIN_TOKEN))));
    let r = access(&gw, "POST", Some(boot_key), Some(r#"{"model":"gpt-4o"}"#));
    assert_error(&r, 400, "invalid_request");
    let message = r.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("shardgate-ctl tenants import"),
        "{message}"
    );
    assert!(mine(&gw, boot_key).is_empty());
    drop(gw);
    // No tenant store at all: a clear 404, on a connection that stays usable.
    let plain = Gateway::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"keys\"\n\
         [[upstreams]]\nname = \"mock\"\nprovider = \"mock\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"mock\"\n{boot}"
    ));
    let r = access(&plain, "GET", Some(boot_key), None);
    assert_error(&r, 404, "access_requests_unavailable");
    let r = access(
        &plain,
        "POST",
        Some(boot_key),
        Some(r#"{"model":"gpt-4o"}"#),
    );
    assert_error(&r, 404, "access_requests_unavailable");
    assert_eq!(chat_with_key(plain.addr(), boot_key, "demo").0, 200);
}
