//! `tenants ...` and `keys ...`: change the tenant store of a running instance and wait until
//! every shard runs the change.
//!
//! A change, in order (each step can stop it before the next):
//! 1. read the running config back from the ring: it names the store (`[server] tenant_store`);
//! 2. take the ring's writer lock (changes and applies are serialised by it);
//! 3. read the store, make the change ([`shardgate_core::store`], I/O-free), write the store
//!    atomically (temporary file, fsync, rename, fsync of the directory: a `SIGKILL` at any
//!    point leaves the old or the new store), append the audit line;
//! 4. validate the running config again (it reads the new store) and push it as a new version;
//!    return once every shard runs it. After `keys revoke` returns, no shard admits the key.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use shardgate_core::config::Config;
use shardgate_core::control::shm::Region;
use shardgate_core::control::unix_ms;
use shardgate_core::store::{Change, Settings, Store, KEY_RANDOM_BYTES};

use crate::table::{render, Align};
use crate::{apply, pause, Failure};

/// How long a change waits for another ctl's change or apply to release the writer lock.
pub const LOCK_WAIT_MS_MAX: u64 = 10_000;

/// A change to the store; what it prints on success.
pub type Op<'a> =
    Box<dyn FnOnce(&mut Store, &Config, u64) -> Result<(Change, String), String> + 'a>;

/// Make `op` on `instance`'s tenant store and push it to every shard.
pub fn change(instance: &str, timeout: Duration, op: Op<'_>) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (_, text, running) = apply::running_text(&region).map_err(Failure::failed)?;
    let path = store_path(&running)?;
    let guard = lock(&region, instance)?;
    let mut store = read(&path)?;
    let now = unix_ms();
    let (change, said) = op(&mut store, &running, now).map_err(Failure::failed)?;
    write_atomically(&path, &store.to_json())?;
    if let Some(audit) = &running.server.audit_log {
        audit_line(audit, now, &change, store.version)?;
    }
    // The running config again, now with the new store (read from disk, as `apply` reads it).
    let new = Config::from_toml_without_secrets(&text).map_err(|e| {
        Failure::failed(format!(
            "the store was written (version {}), but the running config no longer validates \
             with it: {}",
            store.version,
            e.to_string().replace('\n', "; ")
        ))
    })?;
    let version = apply::version_after(&region);
    let (version, ms) = apply::push(instance, &region, guard, version, &text, &new, timeout)?;
    println!(
        "tenant store version {}; config version {version} runs on {} shards ({ms} ms)",
        store.version,
        region.shards()
    );
    // Last, so that a script reads a new key as the last line.
    println!("{said}");
    Ok(())
}

/// Print the store's tenants (`list`) or keys (`keys list`), read from its file.
pub fn show(instance: &str, keys: bool, tenant: Option<&str>) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (_, _, running) = apply::running_text(&region).map_err(Failure::failed)?;
    let store = read(&store_path(&running)?)?;
    let now = unix_ms();
    if keys {
        let mut rows = Vec::new();
        for (id, k) in &store.keys {
            if tenant.is_some_and(|t| t != k.tenant) {
                continue;
            }
            rows.push(vec![
                id.clone(),
                k.tenant.clone(),
                k.name.clone().unwrap_or_default(),
                format!("{}…", k.prefix),
                store.key_state(k, now).as_str().to_owned(),
                k.expires_unix_ms
                    .map_or_else(|| "never".into(), |e| in_time(e, now)),
            ]);
        }
        let l = Align::Left;
        let header = [
            ("ID", l),
            ("TENANT", l),
            ("NAME", l),
            ("PREFIX", l),
            ("STATE", l),
            ("EXPIRES", l),
        ];
        print!("{}", render(&header, &rows));
    } else {
        let mut rows = Vec::new();
        for (name, x) in &store.tenants {
            let keys = store.keys.values().filter(|k| &k.tenant == name).count();
            let s = &x.settings;
            rows.push(vec![
                name.clone(),
                if x.suspended { "suspended" } else { "active" }.to_owned(),
                keys.to_string(),
                s.models
                    .as_ref()
                    .map_or_else(|| "*".into(), |m| m.join(",")),
                s.rpm.map_or_else(|| "-".into(), |v| v.to_string()),
                s.tpm.map_or_else(|| "-".into(), |v| v.to_string()),
            ]);
        }
        for t0 in &running.tenants {
            if !store.tenants.contains_key(&t0.name) {
                rows.push(vec![
                    t0.name.clone(),
                    "config".to_owned(),
                    t0.keys.len().to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
        }
        let (l, r) = (Align::Left, Align::Right);
        let header = [
            ("TENANT", l),
            ("STATE", l),
            ("KEYS", r),
            ("MODELS", l),
            ("RPM", r),
            ("TPM", r),
        ];
        print!("{}", render(&header, &rows));
    }
    Ok(())
}

fn in_time(at_unix_ms: u64, now: u64) -> String {
    if at_unix_ms <= now {
        return "passed".into();
    }
    let d = Duration::from_secs((at_unix_ms - now) / 1000);
    format!("in {}", humantime::format_duration(d))
}

/// The store the running config names.
fn store_path(running: &Config) -> Result<String, Failure> {
    running
        .server
        .tenant_store
        .as_ref()
        .map(|f| f.path.clone())
        .ok_or_else(|| {
            Failure::failed(
                "the running config names no tenant store: set [server] tenant_store = \
                 \"/var/lib/shardgate/tenants.json\" and apply it",
            )
        })
}

fn lock<'r>(
    region: &'r Region,
    instance: &str,
) -> Result<shardgate_core::control::shm::WriterGuard<'r>, Failure> {
    let start = Instant::now();
    loop {
        match region.lock_writer(unix_ms()) {
            Ok(g) => return Ok(g),
            Err(pid) if start.elapsed() >= Duration::from_millis(LOCK_WAIT_MS_MAX) => {
                return Err(Failure::failed(format!(
                    "another shardgate-ctl (pid {pid}) has held instance {instance}'s writer \
                     lock for {LOCK_WAIT_MS_MAX} ms; try again when it is done"
                )))
            }
            Err(_) => pause(Duration::from_millis(apply::APPLY_POLL_MS)),
        }
    }
}

/// Read the store (an absent file is an empty store).
pub fn read(path: &str) -> Result<Store, Failure> {
    match std::fs::read(path) {
        Ok(b) if b.is_empty() => Ok(Store::default()),
        Ok(b) => Store::from_json(&b).map_err(|e| Failure::failed(format!("{path}: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
        Err(e) => Err(Failure::failed(format!("{path}: cannot read: {e}"))),
    }
}

/// Replace `path` with `bytes` so that a crash at any point leaves the old or the new file.
pub fn write_atomically(path: &str, bytes: &[u8]) -> Result<(), Failure> {
    let fail = |what: &str, e: std::io::Error| Failure::failed(format!("{path}: {what}: {e}"));
    let target = Path::new(path);
    let tmp = target.with_extension(format!("tmp.{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("cannot create a temporary", e))?;
    f.write_all(bytes).map_err(|e| fail("cannot write", e))?;
    f.sync_all().map_err(|e| fail("cannot sync", e))?;
    drop(f);
    std::fs::rename(&tmp, target).map_err(|e| fail("cannot rename into place", e))?;
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| fail("cannot sync its directory", e))
}

/// Append the change to the audit log: one JSON line; keys only in their stored form.
fn audit_line(path: &Path, now: u64, c: &Change, store_version: u64) -> Result<(), Failure> {
    let actor = format!(
        "ctl:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let line = serde_json::json!({
        "at_unix_ms": now,
        "actor": actor,
        "action": c.action,
        "target": c.target,
        "old": c.old,
        "new": c.new,
        "store_version": store_version,
    });
    let mut text = line.to_string();
    text.push('\n');
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Failure::failed(format!("{}: cannot open: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| Failure::failed(format!("{}: cannot append: {e}", path.display())))
}

/// Random bytes for a new key, from the system's generator.
pub fn key_random() -> Result<[u8; KEY_RANDOM_BYTES], Failure> {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; KEY_RANDOM_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Failure::failed("the system's random generator failed"))?;
    Ok(out)
}

/// The settings the flags of `tenants add` / `tenants set` give.
pub fn settings(
    models: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    budget_tokens: Option<i64>,
    budget_window: Option<String>,
) -> Settings {
    Settings {
        models: models.map(|m| {
            m.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        }),
        rpm,
        tpm,
        max_concurrency,
        budget_tokens,
        budget_window,
        ..Settings::default()
    }
}
