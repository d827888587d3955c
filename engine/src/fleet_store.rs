//! The tenant store across a fleet (`[fleet]` with `[server] tenant_store`; decision 0014).
//!
//! Redis holds the fleet's store; each instance's files (`tenants.json` and its journal) are
//! its copy. The Redis keys:
//! - [`VERSION_KEY`]: the store's version (every change raises it by one);
//! - [`LOG_KEY`]: the changes, one journal line each (`JournalEntry`), oldest first: at least
//!   the last [`LOG_LINES_MIN`], and every one since the snapshot;
//! - [`SNAP_KEY`], [`SNAP_VERSION_KEY`]: the whole store at some version, written when the
//!   store is seeded and every [`SNAPSHOT_EVERY`] changes.
//!
//! The engine's config builder makes every change (`builder`), in this order:
//! 1. it catches up: the changes Redis has and this instance lacks are made here first
//!    ([`plan`]: none, the log's lines after this instance's version, the whole store from
//!    the snapshot, or this instance's store written to a Redis that has none);
//! 2. it makes the change on the store it holds, and validates the tenants it touched;
//! 3. it appends the change to Redis only if Redis's version is still the one the change was
//!    made on ([`APPEND_SCRIPT`]); else the change is taken back and 1–3 run again (at most
//!    [`APPEND_TRIES_MAX`] times): every instance makes the fleet's changes in one order;
//! 4. it writes the change to this instance's journal, and answers.
//!
//! A change asked for while Redis is unreachable is refused (503): made here alone, it would
//! leave this instance's store apart from the fleet's. Instances go on serving on the store
//! they hold.
//!
//! The other instances learn of a change at their fleet agent's next sync (every `sync_ms`:
//! the sync script returns the store's version, so no further round trip is made), and their
//! [`watch`] thread asks their builder to catch up (`StoreOp::FleetSync`, pushed through the
//! ring as a change is). Polling the version every sync is the check a missed message would
//! need anyway; a change is in force on every instance within one sync plus one apply.
//!
//! An instance that starts loads the fleet's store from Redis (its own files may be older):
//! a store of its own that differs is kept beside the files (`<path>.local-<unix ms>`) and
//! said. Redis without a store (new, or restarted empty) gets the store of the first
//! instance to find it so; a Redis whose store is older than an instance's (restored from
//! an old save) gets that instance's.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::FleetConfig;
use crate::control::shm::Region;
use crate::control::unix_ms;
use crate::fleet::Latest;
use crate::manage;
use crate::store::{JournalEntry, Store};
use crate::store_op::StoreOp;

/// The fleet store's version.
pub const VERSION_KEY: &str = "sg:store:version";
/// The fleet store's changes, one journal line each.
pub const LOG_KEY: &str = "sg:store:log";
/// The whole store at [`SNAP_VERSION_KEY`]'s version (JSON).
pub const SNAP_KEY: &str = "sg:store:snap";
pub const SNAP_VERSION_KEY: &str = "sg:store:snap_version";
/// The log keeps at least this many changes (and every one since the snapshot).
pub const LOG_LINES_MIN: u64 = 4_096;
/// A snapshot is written after this many changes since the last.
pub const SNAPSHOT_EVERY: u64 = 1_024;
/// A catch-up reads at most this many lines of the log; further behind, it loads the snapshot.
pub const CATCH_UP_LINES_MAX: u64 = 1_024;
/// A change that finds Redis's store moved on is made again after catching up, at most this
/// many times in all (then refused: the store is too busy to take it).
pub const APPEND_TRIES_MAX: u32 = 4;
/// How often the watcher compares the store's version in Redis with the builder's, ms.
pub const WATCH_MS: u64 = 10;
/// How long the watcher waits for a catch-up to run on every shard, ms.
pub const CATCH_UP_TIMEOUT_MS: u64 = 10_000;
/// After a catch-up failed, the watcher tries again this much later, ms, doubling with each
/// failure in a row up to [`RETRY_MS_MAX`] (each try is a config version on every shard).
pub const RETRY_MS: u64 = 1_000;
pub const RETRY_MS_MAX: u64 = 30_000;

/// What a catch-up does, from Redis's store version (`None`: Redis has no store), the
/// version held here, and whether this instance has loaded the fleet's store since it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Write this instance's store to Redis (it has none, or an older one).
    Seed,
    /// Load the fleet's store whole (snapshot and log).
    Load,
    /// Make the log's changes `after + 1 ..= to` here.
    Lines {
        after: u64,
        to: u64,
    },
}

/// The catch-up to make (I/O-free).
pub fn plan(redis: Option<u64>, held: u64, loaded: bool) -> Step {
    match redis {
        None => Step::Seed,
        Some(_) if !loaded => Step::Load,
        Some(v) if v == held => Step::Nothing,
        Some(v) if v < held => Step::Seed,
        Some(v) if v - held > CATCH_UP_LINES_MAX => Step::Load,
        Some(v) => Step::Lines { after: held, to: v },
    }
}

/// The journal lines `lines` as changes `after + 1 ..= to`, in order; `None` when they are
/// not exactly those (the log was trimmed past them, or a line does not read).
pub fn lines_between(lines: &[Vec<u8>], after: u64, to: u64) -> Option<Vec<JournalEntry>> {
    let entries: Vec<JournalEntry> = lines
        .iter()
        .map(|l| serde_json::from_slice(l).ok())
        .collect::<Option<_>>()?;
    let mut want = after + 1;
    for e in &entries {
        if e.version != want {
            return None;
        }
        want += 1;
    }
    (want == to + 1).then_some(entries)
}

/// Takes the change (ARGV[3], a journal line) from version ARGV[1] to ARGV[2] only while the
/// store's version (`KEYS[1]`) is ARGV[1]; appends it to the log (`KEYS[2]`), trimmed to
/// ARGV[4] lines but never past the snapshot's version (`KEYS[3]`). Returns `{1, snapshot's
/// version}`, or `{0, the store's version}` (-1: none).
pub const APPEND_SCRIPT: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '-1')
if v ~= tonumber(ARGV[1]) then return {0, v} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('RPUSH', KEYS[2], ARGV[3])
local snap = tonumber(redis.call('GET', KEYS[3]) or '0')
local keep = math.max(tonumber(ARGV[4]), tonumber(ARGV[2]) - snap)
redis.call('LTRIM', KEYS[2], -keep, -1)
return {1, snap}
";

/// Writes the store ARGV[2] (version ARGV[1]) as the fleet's (`KEYS`: version, log, snapshot,
/// snapshot's version) unless Redis's is as new; the log starts again. Returns -1 when
/// written, else Redis's version.
pub const SEED_SCRIPT: &str = r"
local v = tonumber(redis.call('GET', KEYS[1]) or '-1')
local mine = tonumber(ARGV[1])
if v >= mine then return v end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('DEL', KEYS[2])
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[1])
return -1
";

/// Writes the snapshot ARGV[2] of version ARGV[1] (`KEYS`: snapshot, its version) unless
/// the one there is as new.
pub const SNAPSHOT_SCRIPT: &str = r"
if tonumber(redis.call('GET', KEYS[2]) or '-1') >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SET', KEYS[2], ARGV[1])
return 1
";

/// Returns the store's version (`{}`: none) and, when ARGV[1] (the version held) is behind it by
/// at most ARGV[2], the log's last lines from there.
pub const FETCH_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return {} end
local n = tonumber(v) - tonumber(ARGV[1])
if n <= 0 or n > tonumber(ARGV[2]) then return {v} end
local out = redis.call('LRANGE', KEYS[2], -n, -1)
table.insert(out, 1, v)
return out
";

/// The fleet's store as Redis holds it: the snapshot, its version, the store's version, the log.
type Whole = (Option<Vec<u8>>, Option<u64>, Option<u64>, Vec<Vec<u8>>);

/// What an append found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Made,
    /// Redis's store is not at the version the change was made on (`None`: it has none).
    Behind(Option<u64>),
}

/// The builder's connection to the fleet's store.
pub struct Link {
    fleet: FleetConfig,
    conn: Option<redis::Connection>,
    /// The fleet's store was loaded (or seeded) since the engine started.
    pub loaded: bool,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("redis", &self.fleet.url)
            .field("loaded", &self.loaded)
            .finish_non_exhaustive()
    }
}

impl Link {
    pub fn new(fleet: FleetConfig) -> Link {
        Link {
            fleet,
            conn: None,
            loaded: false,
        }
    }

    /// Run `f` on the connection (made first if there is none); a failure drops it, and says
    /// Redis is unreachable.
    fn with<T>(
        &mut self,
        f: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Result<T, String> {
        let unreachable = |why: &str| {
            format!(
                "the fleet's tenant store (Redis at {}) is unreachable: {why}",
                self.fleet.url
            )
        };
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => shardgate_core::fleet::connect(&self.fleet).map_err(|e| unreachable(&e))?,
        };
        match f(&mut conn) {
            Ok(v) => {
                self.conn = Some(conn);
                Ok(v)
            }
            Err(e) => Err(unreachable(&e.to_string())),
        }
    }

    /// Redis's store version, and the log's lines after `held` when there are at most
    /// [`CATCH_UP_LINES_MAX`] of them.
    pub fn fetch(&mut self, held: u64) -> Result<(Option<u64>, Vec<Vec<u8>>), String> {
        let mut out: Vec<Vec<u8>> = self.with(|c| {
            redis::Script::new(FETCH_SCRIPT)
                .key(VERSION_KEY)
                .key(LOG_KEY)
                .arg(held)
                .arg(CATCH_UP_LINES_MAX)
                .invoke(c)
        })?;
        if out.is_empty() {
            return Ok((None, Vec::new()));
        }
        let v = std::str::from_utf8(&out.remove(0))
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("{VERSION_KEY} in Redis is not a version"))?;
        Ok((Some(v), out))
    }

    /// The fleet's store, whole: the snapshot with the log's later changes made on it.
    pub fn load(&mut self) -> Result<Store, String> {
        let (snap, snap_version, version, log): Whole = self.with(|c| {
            redis::pipe()
                .atomic()
                .get(SNAP_KEY)
                .get(SNAP_VERSION_KEY)
                .get(VERSION_KEY)
                .lrange(LOG_KEY, 0, -1)
                .query(c)
        })?;
        let (Some(snap), Some(from), Some(to)) = (snap, snap_version, version) else {
            return Err(format!(
                "the fleet's tenant store in Redis has no snapshot ({SNAP_KEY}) to load"
            ));
        };
        let later: Vec<Vec<u8>> = log
            .into_iter()
            .filter(|l| serde_json::from_slice::<JournalEntry>(l).is_ok_and(|e| e.version > from))
            .collect();
        if from != to && lines_between(&later, from, to).is_none() {
            return Err(format!(
                "the fleet's tenant store in Redis lacks changes {}..={to} after its snapshot",
                from + 1
            ));
        }
        let journal = later.join(&b'\n');
        let store = Store::from_parts(&snap, &journal)
            .map_err(|e| format!("the fleet's tenant store in Redis does not read: {e}"))?;
        Ok(store)
    }

    /// Write `store` to Redis as the fleet's, unless Redis's is as new: `None` when written,
    /// else Redis's version.
    pub fn seed(&mut self, store: &Store) -> Result<Option<u64>, String> {
        let json = serde_json::to_vec(store).unwrap_or_default();
        let v: i64 = self.with(|c| {
            redis::Script::new(SEED_SCRIPT)
                .key(VERSION_KEY)
                .key(LOG_KEY)
                .key(SNAP_KEY)
                .key(SNAP_VERSION_KEY)
                .arg(store.version)
                .arg(json)
                .invoke(c)
        })?;
        Ok(u64::try_from(v).ok())
    }

    /// Append `entry` (the change from version `before`) to the fleet's store, if Redis's is
    /// still at `before`; `store`: the store after it, written as the snapshot when one is due.
    pub fn append(
        &mut self,
        before: u64,
        entry: &JournalEntry,
        store: &Store,
    ) -> Result<Appended, String> {
        let line = serde_json::to_vec(entry).unwrap_or_default();
        let (made, v): (i64, i64) = self.with(|c| {
            redis::Script::new(APPEND_SCRIPT)
                .key(VERSION_KEY)
                .key(LOG_KEY)
                .key(SNAP_VERSION_KEY)
                .arg(before)
                .arg(entry.version)
                .arg(line)
                .arg(LOG_LINES_MIN)
                .invoke(c)
        })?;
        if made != 1 {
            return Ok(Appended::Behind(u64::try_from(v).ok()));
        }
        let snap = u64::try_from(v).unwrap_or(0);
        if entry.version.saturating_sub(snap) >= SNAPSHOT_EVERY {
            let json = serde_json::to_vec(store).unwrap_or_default();
            // Made already: a snapshot not written now is written with a later change.
            if let Err(why) = self.with(|c| {
                redis::Script::new(SNAPSHOT_SCRIPT)
                    .key(SNAP_KEY)
                    .key(SNAP_VERSION_KEY)
                    .arg(entry.version)
                    .arg(json)
                    .invoke::<i64>(c)
            }) {
                tracing::warn!("fleet: the tenant store's snapshot was not written: {why}");
            }
        }
        Ok(Appended::Made)
    }
}

/// Start the thread that has the builder catch up when the fleet's store in Redis differs
/// from the one it holds (as the fleet agent's last sync found it).
pub fn watch(
    region: &'static Region,
    instance: String,
    latest: Arc<Latest>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("fleet-store".into())
        .spawn(move || {
            let mut retry_at: Option<Instant> = None;
            let mut retry_ms = RETRY_MS;
            let (mut failed_ms, mut failed_seen) = (0, 0);
            let mut failing: Option<String> = None;
            // Not before every shard runs the config the engine started with: a catch-up is a
            // change pushed through the ring to them.
            while !crate::control::stats::read(region)
                .shards
                .iter()
                .all(|s| s.running && s.config_version > 0)
            {
                // Its own thread: sleeping stalls no shard.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(WATCH_MS));
            }
            loop {
                // Its own thread: sleeping stalls no shard.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(WATCH_MS));
                // Waiting to try again, unless a sync since the failure found another version
                // in Redis (Redis back, or a newer change).
                let news = latest.store_seen_ms.load(Ordering::Acquire) > failed_ms
                    && latest.store_seen.load(Ordering::Relaxed) != failed_seen;
                if retry_at.is_some_and(|t| Instant::now() < t) && !news {
                    continue;
                }
                let has_store = latest
                    .get()
                    .is_some_and(|c| c.server.tenant_store.is_some());
                if !has_store || !due(&latest) {
                    continue;
                }
                let timeout = Duration::from_millis(CATCH_UP_TIMEOUT_MS);
                match manage::change(region, &instance, "fleet", timeout, StoreOp::FleetSync) {
                    Ok(_) => {
                        retry_at = None;
                        retry_ms = RETRY_MS;
                        if failing.take().is_some() {
                            tracing::info!(
                                "fleet: this instance's tenant store is the fleet's again"
                            );
                        }
                    }
                    Err(r) => {
                        retry_at = Some(Instant::now() + Duration::from_millis(retry_ms));
                        // An instance that has not loaded the fleet's store yet keeps trying
                        // every RETRY_MS: it serves on its own copy meanwhile.
                        if latest.store_held.load(Ordering::Relaxed) != 0 {
                            retry_ms = (retry_ms * 2).min(RETRY_MS_MAX);
                        }
                        failed_ms = unix_ms();
                        failed_seen = latest.store_seen.load(Ordering::Relaxed);
                        if failing.as_deref() != Some(r.message.as_str()) {
                            tracing::warn!(
                                "fleet: this instance's tenant store could not catch up with \
                                 the fleet's: {}",
                                r.message
                            );
                            failing = Some(r.message);
                        }
                    }
                }
            }
        })?;
    Ok(())
}

/// Whether the builder should catch up: it never has, or a sync that began after its last
/// exchange with Redis found another version there.
fn due(l: &Latest) -> bool {
    let held = l.store_held.load(Ordering::Relaxed);
    let held_ms = l.store_held_ms.load(Ordering::Acquire);
    let seen_ms = l.store_seen_ms.load(Ordering::Acquire);
    let seen = l.store_seen.load(Ordering::Relaxed);
    held == 0 || (seen_ms > held_ms && seen != held)
}

/// The builder's exchange with Redis that began at `at_ms` left it at `version`.
pub fn mark_held(l: &Latest, version: u64, at_ms: u64) {
    l.store_held.store(version + 1, Ordering::Relaxed);
    l.store_held_ms.store(at_ms, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_catch_up_seeds_loads_or_reads_the_lines_it_lacks() {
        // Redis has none: this instance's store becomes the fleet's.
        assert_eq!(plan(None, 7, false), Step::Seed);
        assert_eq!(plan(None, 7, true), Step::Seed);
        // Just started: the fleet's store is loaded whole, whatever the files held.
        assert_eq!(plan(Some(7), 7, false), Step::Load);
        assert_eq!(plan(Some(3), 7, false), Step::Load);
        // In step.
        assert_eq!(plan(Some(7), 7, true), Step::Nothing);
        // Behind: the lines it lacks; far behind, the snapshot.
        assert_eq!(plan(Some(9), 7, true), Step::Lines { after: 7, to: 9 });
        assert_eq!(plan(Some(7 + CATCH_UP_LINES_MAX + 1), 7, true), Step::Load);
        // Redis went back (an old save): this instance's newer store is written back.
        assert_eq!(plan(Some(5), 7, true), Step::Seed);
    }

    #[test]
    fn lines_count_only_when_they_are_exactly_the_changes_lacked() {
        let line = |v: u64| {
            serde_json::to_vec(&JournalEntry {
                version: v,
                ..JournalEntry::default()
            })
            .unwrap_or_default()
        };
        let got = lines_between(&[line(8), line(9)], 7, 9).map(|e| e.len());
        assert_eq!(got, Some(2));
        // A gap, a line short, a line too many, a line that does not read.
        assert!(lines_between(&[line(8), line(10)], 7, 10).is_none());
        assert!(lines_between(&[line(9)], 7, 9).is_none());
        assert!(lines_between(&[line(8), line(9), line(10)], 7, 9).is_none());
        assert!(lines_between(&[line(8), b"{".to_vec()], 7, 9).is_none());
    }
}
