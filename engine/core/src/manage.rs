//! Changes to the tenant store of a running instance, as `shardgate-ctl tenants`/`keys` and
//! the engine's admin API make them (blocking: for ctl and the admin thread, never a shard),
//! and the store's files.
//!
//! The engine holds the store in memory (its config builder thread); a change travels to it
//! as data ([`StoreOp`]) and is made there, as a delta:
//! 1. read the running config back from the ring (its text goes out again with the change,
//!    and it names the store: `[server] tenant_store`);
//! 2. take the ring's writer lock (changes and applies are serialised by it; a change waits up
//!    to [`LOCK_WAIT_MS_MAX`] for another);
//! 3. publish the running config's text with the operation as the next version; every shard
//!    hands it to the builder, which makes the change on its store once (`store_op::apply`),
//!    builds the config of the tenants it touched only, appends one line to the store's
//!    journal (synced) and the audit line, and leaves its answer in the region
//!    ([`Region::store_reply`]) before any shard runs the version;
//! 4. return once every shard runs it, with the builder's answer. After a revoke returns, no
//!    shard admits the key. A change the store refuses leaves the store as it was; its
//!    version runs with the config unchanged.
//!
//! The store's files: `tenants.json` written whole (atomically: a temporary file, fsync,
//! rename, fsync of the directory) and `tenants.json.journal`, one JSON line per change since
//! ([`append_journal`], [`fold`]). A `SIGKILL` at any point leaves the old or the new store: a
//! line cut short is left out when read, and lines the file already holds change nothing.
//!
//! The ring's writer lock is held by a process (its pid), so two threads of one process (the
//! engine's admin thread and its access-request thread) would both pass it: within a process,
//! changes are serialised by [`IN_PROCESS`] first.

use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::config::Config;
use crate::control::publish::{self, pause};
use crate::control::shm::{self, Region, WriterGuard};
use crate::control::unix_ms;
use crate::store::{journal_path, Change, ErrorKind, JournalEntry, Store, KEY_RANDOM_BYTES};
use crate::store_op::{OpMessage, StoreOp};

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

/// A change in force on every shard.
#[derive(Debug)]
pub struct Changed {
    /// The builder's answer: the tenant, key or request as the change left it (JSON).
    pub said: Value,
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

/// A store's refusal (or the instance's failure) as the region's reply status.
pub fn reply_status(kind: Option<ErrorKind>) -> u64 {
    match kind {
        Some(ErrorKind::NotFound) => shm::REPLY_NOT_FOUND,
        Some(ErrorKind::Exists) => shm::REPLY_EXISTS,
        Some(ErrorKind::Invalid) => shm::REPLY_INVALID,
        None => shm::REPLY_FAILED,
    }
}

/// Make `op` on the tenant store of the instance whose `region` this is, as `actor` (the audit
/// log's name for who asked), and push it to every shard within `timeout`.
pub fn change(
    region: &Region,
    instance: &str,
    actor: &str,
    timeout: Duration,
    op: StoreOp,
) -> Result<Changed, Refused> {
    // A thread that panicked while holding it left nothing half-done that the next change
    // relies on: a poisoned lock is taken all the same.
    let _one_at_a_time = IN_PROCESS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // The running config without its store (its text, paths and files): it goes out again
    // with the change, which the builder makes on the store it holds.
    let (_, text, running) = publish::running_text_without_store(region).map_err(failed)?;
    store_path(&running)?;
    let guard = lock(region, instance)?;
    let msg = OpMessage {
        op,
        actor: actor.to_owned(),
    };
    let body =
        crate::control::message::encode_with_op(&text, &running, &msg.to_json()).map_err(failed)?;
    let version = publish::version_after(region);
    let pushed = publish::push_body(instance, region, guard, version, &body, timeout);
    let reply = region.store_reply(version);
    match (pushed, reply) {
        (Ok((config_version, ms)), Some((shm::REPLY_MADE, store_version, said))) => Ok(Changed {
            said: serde_json::from_str(&said).unwrap_or(Value::String(said)),
            store_version,
            config_version,
            shards: region.shards(),
            ms,
        }),
        (_, Some((status, _, why))) if status != shm::REPLY_MADE => Err(Refused {
            message: why,
            kind: match status {
                shm::REPLY_NOT_FOUND => Some(ErrorKind::NotFound),
                shm::REPLY_EXISTS => Some(ErrorKind::Exists),
                shm::REPLY_INVALID => Some(ErrorKind::Invalid),
                _ => None,
            },
        }),
        (Err(why), Some((_, store_version, _))) => Err(failed(format!(
            "the store was changed (version {store_version}), but not every shard runs it: {why}"
        ))),
        (Err(why), None) => Err(failed(why)),
        (Ok((v, _)), _) => Err(failed(format!(
            "every shard runs version {v}, but the engine left no answer to the change (an \
             engine older than this ctl?)"
        ))),
    }
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

/// Read the store: its file and its journal (an absent or empty file is an empty store).
pub fn read(path: &str) -> Result<Store, Refused> {
    read_with_journal(path).map(|(s, _)| s)
}

/// Where a store's journal stands: how many lines it has, and whether it ends at a line's end
/// (a crash while a line was appended leaves it cut short; the next change folds it in rather
/// than append after it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalState {
    pub lines: usize,
    pub clean: bool,
}

/// [`read`], and where its journal stands.
pub fn read_with_journal(path: &str) -> Result<(Store, JournalState), Refused> {
    let file = |p: &str| match std::fs::read(p) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(failed(format!("{p}: cannot read: {e}"))),
    };
    let base = file(path)?;
    let journal = file(&journal_path(path))?;
    let state = JournalState {
        lines: journal.iter().filter(|&&b| b == b'\n').count(),
        clean: journal.last().is_none_or(|&b| b == b'\n'),
    };
    let store = Store::from_parts(&base, &journal).map_err(|e| failed(format!("{path}: {e}")))?;
    Ok((store, state))
}

/// A store's files as the file system has them (length and modification time of each): what
/// tells a holder of the store that someone else wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreFiles {
    base: Option<(u64, std::time::SystemTime)>,
    journal: Option<(u64, std::time::SystemTime)>,
}

impl StoreFiles {
    /// The files of the store at `path` now (`None`: one could not be looked at).
    pub fn now(path: &str) -> Option<StoreFiles> {
        let meta = |p: &str| match std::fs::metadata(p) {
            Ok(m) => m.modified().map(|t| Some((m.len(), t))).map_err(|_| ()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(_) => Err(()),
        };
        Some(StoreFiles {
            base: meta(path).ok()?,
            journal: meta(&journal_path(path)).ok()?,
        })
    }
}

/// Where the journal of the store at `path` stands (read, not parsed).
pub fn journal_state(path: &str) -> Result<JournalState, Refused> {
    let journal = journal_path(path);
    match std::fs::read(&journal) {
        Ok(b) => Ok(JournalState {
            lines: b.iter().filter(|&&c| c == b'\n').count(),
            clean: b.last().is_none_or(|&c| c == b'\n'),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(JournalState {
            lines: 0,
            clean: true,
        }),
        Err(e) => Err(failed(format!("{journal}: cannot read: {e}"))),
    }
}

/// Append one change to the store's journal and sync it (the whole store is not rewritten per
/// change: 16 MB at 100,000 keys).
pub fn append_journal(
    path: &str,
    entry: &JournalEntry,
    at: &mut JournalState,
) -> Result<(), Refused> {
    let journal = journal_path(path);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&journal)
        .map_err(|e| failed(format!("{journal}: cannot open: {e}")))?;
    f.write_all(&entry.to_line())
        .and_then(|()| f.sync_data())
        .map_err(|e| failed(format!("{journal}: cannot append: {e}")))?;
    if at.lines == 0 {
        // A new journal: its directory entry is made durable too.
        sync_dir(Path::new(&journal))?;
    }
    at.lines += 1;
    Ok(())
}

/// Write `store` whole (atomically) and empty its journal. A crash between the two leaves
/// lines the file already holds: read again, they change nothing.
pub fn fold(path: &str, store: &Store, at: &mut JournalState) -> Result<(), Refused> {
    write_atomically(path, &store.to_json())?;
    write_atomically(&journal_path(path), b"")?;
    *at = JournalState {
        lines: 0,
        clean: true,
    };
    Ok(())
}

fn sync_dir(file: &Path) -> Result<(), Refused> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| failed(format!("{}: cannot sync: {e}", dir.display())))
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
    sync_dir(target)
}

/// Append the change to the audit log: one JSON line; keys only in their stored form.
pub fn audit_line(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Settings;
    use crate::store_op::{self, OpMessage, StoreOp};

    fn dir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("sg-manage-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn changes_go_to_the_journal_and_fold_into_the_file_and_a_torn_line_is_left_out() {
        let d = dir("journal");
        let path = d.join("tenants.json").to_string_lossy().into_owned();
        let journal = journal_path(&path);
        let running = Config::embedded_default();
        let (mut store, mut at) = read_with_journal(&path).expect("an absent store is empty");
        assert_eq!((store.version, at.lines, at.clean), (0, 0, true));
        for i in 0..5 {
            let msg = OpMessage {
                op: StoreOp::TenantAdd {
                    name: format!("t{i}"),
                    settings: Settings::default(),
                },
                actor: "test".into(),
            };
            let a = store_op::apply(&mut store, &msg, &running, 1).expect("made");
            append_journal(&path, &a.delta, &mut at).expect("appended");
        }
        // Five lines, no file written whole; read back, the same store.
        assert!(!Path::new(&path).exists());
        assert_eq!(at.lines, 5);
        assert_eq!(journal_state(&path).expect("reads"), at);
        assert_eq!(read(&path).expect("reads"), store);
        // Folded: the file holds it all, the journal nothing.
        fold(&path, &store, &mut at).expect("folded");
        assert_eq!(std::fs::read(&journal).expect("journal"), b"");
        assert_eq!(read(&path).expect("reads"), store);

        // A line cut short by a crash: left out when read, and said, so the next change
        // folds the journal in rather than appending after it.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .expect("journal");
        f.write_all(b"{\"version\":9999,\"tenants\":{\"ghost\"")
            .expect("write");
        drop(f);
        let (back, at) = read_with_journal(&path).expect("reads");
        assert!(!at.clean);
        assert_eq!(back, store, "the cut line was never acknowledged");
        // A bad line before another refuses the store rather than guess.
        std::fs::write(&journal, b"{not json}\n{}\n").expect("write");
        assert!(read(&path).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
