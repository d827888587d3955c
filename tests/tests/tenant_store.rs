//! The tenant store, managed with `shardgate-ctl tenants` and `keys` against a running engine on
//! 2 shards: a key made, used over many connections at once, rotated with a grace, revoked
//! (refused on every shard the moment ctl returns), a tenant suspended and resumed; the store
//! and the audit log never hold a key; a `SIGKILL` of ctl in the middle of changes leaves a
//! store that reads.

use std::time::Duration;

use shardgate_tests::{
    chat_with_key, ctl_ok, new_key, read_store, run_ctl, sha256_hex, sleep, spawn_ctl,
    store_config, store_files_text, Client, Gateway, TempDir, CTL_WAIT,
};

/// Fresh connections per check: enough that both shards' listeners take some (SO_REUSEPORT
/// spreads them by the client's port).
const CONNECTIONS: usize = 48;

/// The status of one chat call with `key` on a fresh connection (and its error code).
fn call(gw: &Gateway, key: &str, model: &str) -> (u16, String) {
    chat_with_key(gw.addr(), key, model)
}

/// Statuses of `CONNECTIONS` calls at once, each on its own connection.
fn calls_at_once(gw: &Gateway, key: &str) -> Vec<u16> {
    let addr = gw.addr();
    let handles: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let key = key.to_owned();
            std::thread::spawn(move || chat_with_key(addr, &key, "demo").0)
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("client thread"))
        .collect()
}

fn all(statuses: &[u16], want: u16) -> bool {
    statuses.iter().all(|&s| s == want)
}

#[test]
fn keys_made_rotated_and_revoked_hold_on_every_shard_when_ctl_returns() {
    let tmp = TempDir::new("store-life");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, None));
    assert_eq!(gw.shards(), 2);
    ctl_ok(
        &gw,
        &[
            "tenants", "add", "team-a", "--models", "demo", "--rpm", "100000",
        ],
    );
    let (key, id) = new_key(&ctl_ok(&gw, &["keys", "create", "team-a", "--name", "ci"]));

    // In force on both shards when ctl returns: many connections at once, all admitted.
    let got = calls_at_once(&gw, &key);
    assert!(all(&got, 200), "{got:?}");
    assert_eq!(
        call(&gw, &key, "gpt-4o"),
        (403, "model_not_approved".into())
    );
    // A keep-alive connection that used the key: it must not outlive a revoke through the
    // connection's key memo.
    let mut kept = Client::connect(gw.addr());
    let req = |key: &str| {
        let body = r#"{"model":"demo","messages":[]}"#;
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {key}\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    kept.send(req(&key));
    assert_eq!(kept.read_response().status, 200);

    // Suspended: 403 with its own code; resumed: admitted again.
    ctl_ok(&gw, &["tenants", "suspend", "team-a"]);
    assert_eq!(call(&gw, &key, "demo"), (403, "tenant_suspended".into()));
    ctl_ok(&gw, &["tenants", "resume", "team-a"]);
    assert_eq!(call(&gw, &key, "demo").0, 200);

    // Rotated with a grace: both keys work, then only the new one.
    let out = ctl_ok(&gw, &["keys", "rotate", &id, "--grace", "3s"]);
    let (new, new_id) = new_key(&out);
    assert_ne!(new, key);
    assert_ne!(new_id, id, "{out}");
    assert!(all(&calls_at_once(&gw, &key), 200));
    assert!(all(&calls_at_once(&gw, &new), 200));
    sleep(Duration::from_millis(3_300));
    let old_after = calls_at_once(&gw, &key);
    assert!(
        all(&old_after, 401),
        "the old key outlived its grace: {old_after:?}"
    );
    assert!(all(&calls_at_once(&gw, &new), 200));

    // Revoked: refused on every shard the moment ctl returns, the kept-alive connection too.
    kept.send(req(&new));
    assert_eq!(kept.read_response().status, 200);
    ctl_ok(&gw, &["keys", "revoke", &new_id]);
    let revoked = calls_at_once(&gw, &new);
    assert!(
        all(&revoked, 401),
        "a revoked key was admitted: {revoked:?}"
    );
    kept.send(req(&new));
    assert_eq!(kept.read_response().status, 401);

    // Neither the store nor the audit log nor ctl's list ever holds a key.
    let store = store_files_text(d);
    assert!(store.contains("team-a"), "{store}");
    let audit = std::fs::read_to_string(d.join("audit.jsonl")).expect("audit log");
    let list = ctl_ok(&gw, &["keys", "list"]);
    for text in [&store, &audit, &list] {
        assert!(
            !text.contains(&key) && !text.contains(&new),
            "a key leaked:\n{text}"
        );
    }
    // One audit line per change: add, create, suspend, resume, rotate, revoke.
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("audit JSON");
            v["action"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert_eq!(
        actions,
        [
            "tenants.add",
            "keys.create",
            "tenants.suspend",
            "tenants.resume",
            "keys.rotate",
            "keys.revoke"
        ]
    );
}

#[test]
fn a_keys_own_limits_hold_within_its_tenants_across_shards_and_rotations() {
    let tmp = TempDir::new("store-key-limits");
    let gw = Gateway::start(&store_config(tmp.path(), None));
    assert_eq!(gw.shards(), 2);
    ctl_ok(&gw, &["tenants", "add", "team-k", "--rpm", "100000"]);
    let (limited, id) = new_key(&ctl_ok(&gw, &["keys", "create", "team-k", "--rpm", "3"]));
    let (free, _) = new_key(&ctl_ok(&gw, &["keys", "create", "team-k"]));
    let listed = ctl_ok(&gw, &["keys", "list", "team-k"]);
    assert!(listed.contains("rpm 3"), "{listed}");

    // Fresh connections, spread over both shards: three for the limited key, then 429 on
    // every further one, while the tenant's other key goes on.
    let statuses: Vec<u16> = (0..6).map(|_| call(&gw, &limited, "demo").0).collect();
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    assert_eq!(
        call(&gw, &limited, "demo"),
        (429, "rate_limit_exceeded".into())
    );
    assert!(all(&calls_at_once(&gw, &free), 200));

    // Rotated: the new key carries on from the old one's count, it does not start afresh.
    let (next, _) = new_key(&ctl_ok(&gw, &["keys", "rotate", &id, "--grace", "60s"]));
    assert_eq!(
        call(&gw, &next, "demo").0,
        429,
        "a rotation reset the key's own limit"
    );
    assert_eq!(call(&gw, &limited, "demo").0, 429);
    let listed = ctl_ok(&gw, &["keys", "list", "team-k"]);
    assert_eq!(listed.matches("rpm 3").count(), 2, "{listed}");
}

#[test]
fn a_store_survives_ctl_killed_in_the_middle_of_changes() {
    let tmp = TempDir::new("store-kill");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, None));
    ctl_ok(&gw, &["tenants", "add", "team-k"]);
    for round in 0..12u64 {
        // Kill a `keys create` at a different moment each round: before, during or after it
        // publishes the change.
        let mut child = spawn_ctl(gw.instance(), &["keys", "create", "team-k"], &[]);
        sleep(Duration::from_millis(round * 3));
        let _ = child.kill();
        let _ = child.wait();
        let v = read_store(d);
        assert_eq!(v["format"], 1, "round {round}");
        assert!(v["tenants"]["team-k"].is_object(), "round {round}: {v}");
    }
    // The engine still takes changes (no lock left held by a killed ctl), and the store's
    // keys are the ones the shards know.
    let (key, _) = new_key(&ctl_ok(&gw, &["keys", "create", "team-k"]));
    assert_eq!(call(&gw, &key, "demo").0, 200);
}

#[test]
fn an_engine_killed_after_changes_restarts_with_every_change_it_answered() {
    let tmp = TempDir::new("store-restart");
    let d = tmp.path();
    let mut gw = Gateway::start(&store_config(d, None));
    ctl_ok(&gw, &["tenants", "add", "team-r"]);
    let keys: Vec<(String, String)> = (0..4)
        .map(|_| new_key(&ctl_ok(&gw, &["keys", "create", "team-r"])))
        .collect();
    ctl_ok(&gw, &["keys", "revoke", &keys[0].1]);
    ctl_ok(&gw, &["tenants", "set", "team-r", "--models", "demo"]);
    // Each change is a line of the journal: the file is not written whole per change.
    let journal = std::fs::read_to_string(d.join("tenants.json.journal")).expect("journal");
    assert_eq!(journal.lines().count(), 7, "{journal}");
    assert!(!d.join("tenants.json").exists());
    gw.signal("-KILL");
    assert!(gw.wait_exit(Duration::from_secs(5)).is_some());
    // A crash in the middle of a line: the line was never answered, and is left out.
    let mut torn = journal.into_bytes();
    torn.extend_from_slice(b"{\"version\":99,\"tenants\":{\"ghost\":{\"rpm\"");
    std::fs::write(d.join("tenants.json.journal"), torn).expect("write");

    let gw = Gateway::start(&store_config(d, None));
    assert_eq!(
        call(&gw, &keys[0].0, "demo").0,
        401,
        "a revoked key came back"
    );
    for (key, _) in &keys[1..] {
        assert!(all(&calls_at_once(&gw, key), 200));
        assert_eq!(call(&gw, key, "gpt-4o").0, 403, "the model grant was lost");
    }
    // The next change folds the journal, torn line and all, into the file.
    let (fifth, _) = new_key(&ctl_ok(&gw, &["keys", "create", "team-r"]));
    assert_eq!(call(&gw, &fifth, "demo").0, 200);
    assert_eq!(
        std::fs::read_to_string(d.join("tenants.json.journal")).expect("journal"),
        ""
    );
    let store = read_store(d);
    assert_eq!(
        store["keys"].as_object().map(|k| k.len()),
        Some(4),
        "{store}"
    );
    assert!(store["tenants"]["ghost"].is_null());
}

#[test]
fn changes_without_a_store_or_to_unknown_names_are_refused_clearly() {
    let tmp = TempDir::new("store-errs");
    let d = tmp.path();
    let gw = Gateway::start(&store_config(d, None));
    for (args, needle) in [
        (
            &["tenants", "set", "nobody", "--rpm", "5"][..],
            "no tenant \"nobody\"",
        ),
        (&["keys", "create", "nobody"][..], "no tenant \"nobody\""),
        (
            &["keys", "revoke", "key_000000000000"][..],
            "no key key_000000000000",
        ),
        (
            &["tenants", "add", "bad name"][..],
            "must be 1 to 64 characters",
        ),
        (
            &["tenants", "add", "t", "--rpm", "0"][..],
            "rpm: must be between 1",
        ),
    ] {
        let out = run_ctl(gw.instance(), args, &[], CTL_WAIT);
        assert_eq!(out.code, Some(1), "{args:?}: {}", out.text());
        assert!(out.stderr.contains(needle), "{args:?}: {}", out.text());
    }
    // Nothing was written by a refused change.
    assert_eq!(
        store_files_text(d),
        "",
        "a refused change wrote to the store"
    );
    // An engine without `tenant_store`: ctl says how to name one.
    let plain = Gateway::start(
        "[server]\nlisten = \"127.0.0.1:0\"\ncores = 1\nauth = \"none\"\n\
         [[upstreams]]\nname = \"mock\"\nprovider = \"mock\"\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"mock\"\n",
    );
    let out = run_ctl(plain.instance(), &["tenants", "add", "x"], &[], CTL_WAIT);
    assert_eq!(out.code, Some(1), "{}", out.text());
    assert!(out.stderr.contains("tenant_store"), "{}", out.text());
}

#[test]
fn config_tenants_are_imported_once_and_the_store_wins_after() {
    let tmp = TempDir::new("store-import");
    let d = tmp.path();
    let boot_key = "sk-boot-tenant-key";
    let hash = sha256_hex(boot_key);
    let text = format!(
        "{}\n[[tenants]]\nname = \"boot\"\nkeys = [\"sha256:{hash}\"]\nmodels = [\"demo\"]\n",
        store_config(d, None)
    );
    let gw = Gateway::start(&text);
    assert_eq!(call(&gw, boot_key, "demo").0, 200);
    // Not in the store yet: the store's commands do not know it.
    let out = run_ctl(
        gw.instance(),
        &["tenants", "set", "boot", "--rpm", "1"],
        &[],
        CTL_WAIT,
    );
    assert_eq!(out.code, Some(1), "{}", out.text());
    let said = ctl_ok(&gw, &["tenants", "import"]);
    assert!(
        said.contains("imported 1 tenant(s) from the config file: boot"),
        "{said}"
    );
    // The key and the approvals came along; the store's entry is in force from now on.
    assert_eq!(call(&gw, boot_key, "demo").0, 200);
    assert_eq!(call(&gw, boot_key, "gpt-4o").0, 403);
    ctl_ok(&gw, &["tenants", "set", "boot", "--rpm", "1"]);
    let first = call(&gw, boot_key, "demo").0;
    let second = call(&gw, boot_key, "demo").0;
    assert!(
        first == 429 || second == 429,
        "rpm = 1 from the store is not in force: {first}, {second}"
    );
    // Importing again has nothing left to do; the file's entry is now drift, said by check.
    let again = run_ctl(gw.instance(), &["tenants", "import"], &[], CTL_WAIT);
    assert_eq!(again.code, Some(1), "{}", again.text());
    let file = d.join("boot.toml");
    std::fs::write(&file, &text).expect("write config");
    let check = run_ctl(
        gw.instance(),
        &["check", &file.display().to_string()],
        &[],
        CTL_WAIT,
    );
    assert_eq!(check.code, Some(0), "{}", check.text());
    assert!(
        check
            .stderr
            .contains("\"boot\" is in the tenant store too, which wins"),
        "{}",
        check.text()
    );
}
