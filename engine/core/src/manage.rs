//! Changes to the tenant store of a running instance, as `shardgate-ctl tenants`/`keys` and
//! the engine's admin API make them (blocking: for ctl and the admin thread, never a shard).
//!
//! A change, in order (each step can stop it before the next):
//! 1. read the running config back from the ring: it names the store (`[server] tenant_store`);
//! 2. take the ring's writer lock (changes and applies are serialised by it; a change waits up
//!    to [`LOCK_WAIT_MS_MAX`] for another);
//! 3. read the store, make the change ([`crate::store`], I/O-free), write the store atomically
//!    (a temporary file, fsync, rename, fsync of the directory: a `SIGKILL` at any point
//!    leaves the old or the new store), append the audit line;
//! 4. push the running config again as a new version (the engine's builder reads the new store
//!    with it and validates them together; a refusal comes back as the shards' reason); return
//!    once every shard runs it. After a revoke returns, no shard admits the key.
//!
//! The ring's writer lock is held by a process (its pid), so two threads of one process (the
//! engine's admin thread and its access-request thread) would both pass it: within a process,
//! changes are serialised by [`IN_PROCESS`] first.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::control::publish::{self, pause};
use crate::control::shm::{Region, WriterGuard};
use crate::control::unix_ms;
use crate::store::{Change, ErrorKind, Store, StoreError, KEY_RANDOM_BYTES};

/// How long a change waits for another ctl's change or apply to release the writer lock.
pub const LOCK_WAIT_MS_MAX: u64 = 10_000;

/// One change at a time within a process, before the ring's writer lock (which a process holds
/// by its pid, so it does not keep the threads of one process apart). Only blocking threads
/// take it: ctl, the engine's admin and access-request threads; never a shard.
#[allow(
    clippy::disallowed_types,
    reason = "taken by the admin and access-request threads and ctl, never by a shard"
)]
static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A change to the store, given the running config and `now`: what it did (for the audit log)
/// and what to tell whoever asked.
pub type Op<'a, T> =
    Box<dyn FnOnce(&mut Store, &Config, u64) -> Result<(Change, T), StoreError> + 'a>;

/// A change in force on every shard.
#[derive(Debug)]
pub struct Changed<T> {
    /// What the operation returned.
    pub said: T,
    pub store_version: u64,
    pub config_version: u64,
    pub shards: usize,
    /// From publishing to the last shard running it.
    pub ms: u128,
}

/// Why a change was not made (or not pushed): the message, and the store's refusal when the
/// request was at fault (`None`: the instance was, e.g. no store configured, a shard refused).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub message: String,
    pub kind: Option<ErrorKind>,
}

fn failed(message: impl Into<String>) -> Refused {
    Refused {
        message: message.into(),
        kind: None,
    }
}

/// Make `op` on the tenant store of the instance whose `region` this is, as `actor` (the audit
/// log's name for who asked), and push it to every shard within `timeout`.
pub fn change<T>(
    region: &Region,
    instance: &str,
    actor: &str,
    timeout: Duration,
    op: Op<'_, T>,
) -> Result<Changed<T>, Refused> {
    // A thread that panicked while holding it left nothing half-done that the next change
    // relies on (the store is written atomically): a poisoned lock is taken all the same.
    let _one_at_a_time = IN_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The running config without its store (its paths, the file's tenants, admin tokens): the
    // store is read once, below, and validated with the config by the engine's builder.
    let (_, text, running) = publish::running_text_without_store(region).map_err(failed)?;
    let path = store_path(&running)?;
    let guard = lock(region, instance)?;
    let mut store = read(&path)?;
    let now = unix_ms();
    let (change, said) = op(&mut store, &running, now).map_err(|e| Refused {
        message: e.message,
        kind: Some(e.kind),
    })?;
    write_atomically(&path, &store.to_json())?;
    if let Some(audit) = &running.server.audit_log {
        audit_line(audit, actor, now, &change, store.version)?;
    }
    // The running config again as the next version (the same text, endpoints and files): the
    // builder reads the new store with it; if they no longer validate together, the shards
    // refuse it and say why.
    let version = publish::version_after(region);
    let (config_version, ms) = publish::push(
        instance, region, guard, version, &text, &running, timeout,
    )
    .map_err(|why| {
        failed(format!(
            "the store was written (version {}), but the running config was not taken \
                 with it: {why}",
            store.version
        ))
    })?;
    Ok(Changed {
        said,
        store_version: store.version,
        config_version,
        shards: region.shards(),
        ms,
    })
}

/// The running config's tenant store, read from its file, and the running config without it
/// (its paths and the file's `[[tenants]]`; the store is read once, here).
pub fn running_store(region: &Region) -> Result<(Store, Config), Refused> {
    let (_, _, running) = publish::running_text_without_store(region).map_err(failed)?;
    Ok((store_of(&running)?, running))
}

/// The tenant store `running` names, read from its file.
pub fn store_of(running: &Config) -> Result<Store, Refused> {
    read(&store_path(running)?)
}

/// The store the running config names.
fn store_path(running: &Config) -> Result<String, Refused> {
    running
        .server
        .tenant_store
        .as_ref()
        .map(|f| f.path.clone())
        .ok_or_else(|| {
            failed(
                "the running config names no tenant store: set [server] tenant_store = \
                 \"/var/lib/shardgate/tenants.json\" and apply it",
            )
        })
}

fn lock<'r>(region: &'r Region, instance: &str) -> Result<WriterGuard<'r>, Refused> {
    let start = Instant::now();
    loop {
        match region.lock_writer(unix_ms()) {
            Ok(g) => return Ok(g),
            Err(pid) if start.elapsed() >= Duration::from_millis(LOCK_WAIT_MS_MAX) => {
                return Err(failed(format!(
                    "another shardgate-ctl (pid {pid}) has held instance {instance}'s writer \
                     lock for {LOCK_WAIT_MS_MAX} ms; try again when it is done"
                )))
            }
            Err(_) => pause(Duration::from_millis(publish::APPLY_POLL_MS)),
        }
    }
}

/// Read the store (an absent or empty file is an empty store).
pub fn read(path: &str) -> Result<Store, Refused> {
    match std::fs::read(path) {
        Ok(b) if b.is_empty() => Ok(Store::default()),
        Ok(b) => Store::from_json(&b).map_err(|e| failed(format!("{path}: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Store::default()),
        Err(e) => Err(failed(format!("{path}: cannot read: {e}"))),
    }
}

/// Replace `path` with `bytes` so that a crash at any point leaves the old or the new file.
pub fn write_atomically(path: &str, bytes: &[u8]) -> Result<(), Refused> {
    let fail = |what: &str, e: std::io::Error| failed(format!("{path}: {what}: {e}"));
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
fn audit_line(
    path: &Path,
    actor: &str,
    now: u64,
    c: &Change,
    store_version: u64,
) -> Result<(), Refused> {
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
        .map_err(|e| failed(format!("{}: cannot open: {e}", path.display())))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_data())
        .map_err(|e| failed(format!("{}: cannot append: {e}", path.display())))
}

/// Random bytes for a new key, from the system's generator.
pub fn key_random() -> Result<[u8; KEY_RANDOM_BYTES], Refused> {
    use ring::rand::SecureRandom as _;
    let mut out = [0u8; KEY_RANDOM_BYTES];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| failed("the system's random generator failed"))?;
    Ok(out)
}
