//! `tenants ...` and `keys ...`: change the tenant store of a running instance and wait until
//! every shard runs the change (the steps are `shardgate_core::manage`'s, shared with the
//! engine's admin API), and show the store.

use std::time::Duration;

use shardgate_core::control::unix_ms;
use shardgate_core::manage;
use shardgate_core::store::Settings;
use shardgate_core::store_op::StoreOp;

use crate::table::{render, Align};
use crate::Failure;

/// What a change prints on success, from the engine's answer (the tenant, key or request as
/// the change left it).
pub type Said = Box<dyn FnOnce(&serde_json::Value) -> String>;

/// Make `op` on `instance`'s tenant store and push it to every shard.
pub fn change(instance: &str, timeout: Duration, op: StoreOp, said: Said) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let done = manage::change(&region, instance, &actor(), timeout, op).map_err(refused)?;
    println!(
        "tenant store version {}; config version {} runs on {} shards ({} ms)",
        done.store_version, done.config_version, done.shards, done.ms
    );
    // Last, so that a script reads a new key as the last line.
    println!("{}", said(&done.said));
    Ok(())
}

/// A duration in whole milliseconds, as an operation carries it.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Who makes ctl's changes, for the audit log: `ctl:` and the user.
pub fn actor() -> String {
    format!(
        "ctl:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

pub(crate) fn refused(r: manage::Refused) -> Failure {
    Failure::failed(r.message)
}

/// Print the store's tenants (`list`) or keys (`keys list`), read from its file.
pub fn show(instance: &str, keys: bool, tenant: Option<&str>) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (store, running) = manage::running_store(&region).map_err(refused)?;
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
                key_limits(&k.limits),
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
            ("LIMITS", l),
        ];
        print!("{}", render(&header, &rows));
    } else {
        let mut rows = Vec::new();
        let by_tenant = store.keys_by_tenant();
        for (name, x) in &store.tenants {
            let keys = by_tenant.get(name.as_str()).map_or(0, Vec::len);
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
                s.budget_usd.map_or_else(
                    || "-".into(),
                    |v| format!("${v}/{}", s.budget_window.as_deref().unwrap_or("30d")),
                ),
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
            ("BUDGET_USD", r),
        ];
        print!("{}", render(&header, &rows));
    }
    Ok(())
}

/// Write the store as `[[tenants]]` TOML to `out` (atomically) or stdout.
pub fn export(instance: &str, out: Option<&std::path::Path>) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let (store, _) = manage::running_store(&region).map_err(refused)?;
    let text = store.to_toml(unix_ms()).map_err(Failure::failed)?;
    match out {
        None => print!("{text}"),
        Some(path) => {
            manage::write_atomically(&path.to_string_lossy(), text.as_bytes()).map_err(refused)?;
            println!(
                "wrote tenant store version {} to {}",
                store.version,
                path.display()
            );
        }
    }
    Ok(())
}

/// A key's own limits as `keys list` shows them: `rpm 60, $5`, or `-`.
fn key_limits(l: &shardgate_core::store::KeySettings) -> String {
    let mut parts = Vec::new();
    if let Some(v) = l.rpm {
        parts.push(format!("rpm {v}"));
    }
    if let Some(v) = l.tpm {
        parts.push(format!("tpm {v}"));
    }
    if let Some(v) = l.max_concurrency {
        parts.push(format!("{v} at once"));
    }
    if let Some(v) = l.budget_usd {
        parts.push(format!("${v}"));
    }
    if let Some(v) = l.spent_usd {
        parts.push(format!("${v} spent before"));
    }
    if let Some(m) = &l.models {
        parts.push(format!("models {}", m.join(" ")));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(", ")
    }
}

fn in_time(at_unix_ms: u64, now: u64) -> String {
    if at_unix_ms <= now {
        return "passed".into();
    }
    let d = Duration::from_secs((at_unix_ms - now) / 1000);
    format!("in {}", humantime::format_duration(d))
}

/// Random bytes for a new key, from the system's generator.
pub fn key_random() -> Result<[u8; shardgate_core::store::KEY_RANDOM_BYTES], Failure> {
    manage::key_random().map_err(refused)
}

/// The settings the flags of `tenants add` / `tenants set` give.
pub fn settings(
    models: Option<String>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    budget_tokens: Option<i64>,
    budget_usd: Option<f64>,
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
        budget_usd,
        budget_window,
        ..Settings::default()
    }
}
