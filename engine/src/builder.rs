//! The config builder: a thread of the engine (not a shard) that validates each new config
//! message once, for every shard, so no shard stops serving to parse and validate a config.
//!
//! A shard that finds a new message in the ring hands its bytes here ([`Builder::submit`]) and
//! goes on serving on its current snapshot; the builder decodes and validates it
//! ([`shardgate_core::control::build`]: TOML, tenants, the tenant store, tens of ms for thousands
//! of tenants) and sends the result back on the shard's own channel; the shard takes it between
//! requests ([`Inbox::take`]: every result in order, so each refusal is counted, and the
//! newest good config is the one applied) and builds only its own part (pools, balancers, limit cells).
//! Shards submit the same version once each; it is built once (the last result is kept).
//!
//! Channels are crossbeam's, bounded; the shard side never blocks: a full queue (a shard
//! submitting faster than the builder builds) drops the oldest news, and the next message
//! supersedes it anyway.
//!
//! The builder also holds the tenant store in memory (`Held`): a message that carries a
//! change to it (`store_op`) is made here once, on the store of the newest good version; only
//! the tenants it touched are validated and built again (`Config::with_store_tenants`), one
//! line goes to the store's journal (synced) and one to the audit log, and the answer is left
//! in the region (`Region::put_store_reply`) before any shard gets the version. A change the
//! store refuses, or whose tenants no longer validate, is taken back: its version runs the
//! config unchanged, and the answer says why.

use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::config::{Config, Overrides, StoreDelta};
use crate::control::build;
use crate::control::message::{self, ConfigMessage};
use crate::control::shm::{self, Region};
use crate::control::unix_ms;
use crate::manage::{self, JournalState};
use crate::store::{Store, JOURNAL_FOLD_LINES, JOURNAL_IDLE_MS, JOURNAL_LINES_MAX};
use crate::store_op::{self, OpMessage};

/// Jobs waiting for the builder, over all shards.
const BUILDER_QUEUE_MAX: usize = 256;
/// Versions whose result the builder keeps for the shards that have not asked yet.
const BUILT_KEPT: usize = 8;
/// Results waiting for one shard: as many as the ring can hold messages, so a burst of
/// messages never loses a result.
const SHARD_INBOX_MAX: usize = crate::limits::RING_SLOTS;

/// A validated config for a shard, or why its version was refused.
#[derive(Debug, Clone)]
pub struct Built {
    pub version: u64,
    pub result: Result<Arc<Config>, String>,
    /// Which tenants it shares with the version built before it, so a shard that runs that
    /// version keeps their state instead of finding it again by name (`None`: nothing built
    /// before).
    pub reuse: Option<Arc<Reuse>>,
}

/// Tenants of a version found in an earlier one, by name: what a shard carries over.
#[derive(Debug)]
pub struct Reuse {
    /// The earlier version.
    pub from: u64,
    /// For each tenant of the new version, its index in the earlier one's, if it was there.
    pub tenants: Vec<Option<u32>>,
    /// The tenants are the earlier version's, in the same order, with the same limits (a key
    /// made, rotated or revoked; a change elsewhere in the config): a shard keeps its tenant
    /// tables whole.
    pub same: bool,
}

impl Reuse {
    /// Map `new`'s tenants to `old`'s (version `from`) by name: a hash map built here, on the
    /// builder's thread, so a shard taking a change to one tenant touches no other by name.
    pub fn between(from: u64, old: &Config, new: &Config) -> Reuse {
        let index: std::collections::HashMap<&str, u32> = old
            .tenants
            .iter()
            .enumerate()
            .filter_map(|(i, t)| Some((t.name.as_str(), u32::try_from(i).ok()?)))
            .collect();
        let same = old.tenants.len() == new.tenants.len()
            && old
                .tenants
                .iter()
                .zip(&new.tenants)
                .all(|(a, b)| crate::admit::TenantLimits::same_inputs(a, b));
        Reuse {
            from,
            tenants: new
                .tenants
                .iter()
                .map(|t| index.get(t.name.as_str()).copied())
                .collect(),
            same,
        }
    }
}

enum Job {
    /// Build message `version` and answer on `reply`.
    Build {
        version: u64,
        body: Vec<u8>,
        reply: Sender<Built>,
    },
    /// A config a shard let go of: dropped here, so the last reference to a large config (tens
    /// of MB at 100,000 keys) is never freed on a shard.
    Retire(Arc<Config>),
    /// Leave each new good config here too (the fleet agent works from it).
    Watch(Arc<crate::fleet::Latest>),
}

/// The shards' handle on the builder thread.
#[derive(Clone)]
pub struct Builder {
    jobs: Sender<Job>,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder").finish_non_exhaustive()
    }
}

/// A shard's end: where its results arrive.
#[derive(Debug)]
pub struct Inbox {
    tx: Sender<Built>,
    rx: Receiver<Built>,
}

impl Default for Inbox {
    fn default() -> Self {
        let (tx, rx) = channel::bounded(SHARD_INBOX_MAX);
        Self { tx, rx }
    }
}

impl Inbox {
    /// Every result that arrived, oldest first (never blocks).
    pub fn take(&self, out: &mut Vec<Built>) {
        while let Ok(b) = self.rx.try_recv() {
            out.push(b);
        }
    }
}

impl Builder {
    /// Start the builder thread. `running`: the config the engine started with (what only a
    /// restart changes is checked against it), which the shards run as `version`;
    /// `overrides`: the command line's.
    /// `region`: where the answers to changes to the tenant store go, and whose ring holds
    /// the message `running` came from (`None`: no store is held, as in tests of builds only).
    pub fn spawn(
        running: Config,
        version: u64,
        overrides: Overrides,
        shards: usize,
        region: Option<&'static Region>,
    ) -> std::io::Result<Builder> {
        let (jobs, rx) = channel::bounded::<Job>(BUILDER_QUEUE_MAX);
        std::thread::Builder::new()
            .name("config-builder".into())
            .spawn(move || {
                let held = region.and_then(|r| Held::at_start(r, version));
                // In a fleet, the store is shared through Redis (decision 0014).
                let fleet = running
                    .fleet
                    .clone()
                    .filter(|_| running.server.tenant_store.is_some())
                    .map(crate::fleet_store::Link::new);
                let running = Arc::new(running);
                let mut b = State {
                    running: &running,
                    overrides: &overrides,
                    region,
                    held,
                    last_op_version: 0,
                    latest: None,
                    latest_version: version,
                    fleet,
                };
                run(&rx, &mut b, &running, version, shards);
            })?;
        Ok(Builder { jobs })
    }

    /// Hand message `version` to the builder; its result arrives in `inbox`. `Err`: the
    /// builder's queue is full (or the builder is gone): the body back, to try again later.
    pub fn submit(&self, version: u64, body: Vec<u8>, inbox: &Inbox) -> Result<(), Vec<u8>> {
        let job = Job::Build {
            version,
            body,
            reply: inbox.tx.clone(),
        };
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(Job::Build { body, .. })
            | TrySendError::Disconnected(Job::Build { body, .. }) => body,
            // Not what was sent.
            TrySendError::Full(Job::Retire(_) | Job::Watch(_))
            | TrySendError::Disconnected(Job::Retire(_) | Job::Watch(_)) => Vec::new(),
        })
    }

    /// Have every new good config left in `latest` as well (`None`: nothing to do).
    #[must_use]
    pub fn with_latest(self, latest: Option<Arc<crate::fleet::Latest>>) -> Self {
        if let Some(l) = latest {
            // The queue is empty this early: the job is taken.
            let _ = self.jobs.try_send(Job::Watch(l));
        }
        self
    }

    /// Have `cfg` dropped on the builder's thread (never blocks: with the queue full, it is
    /// dropped here after all).
    pub fn retire(&self, cfg: Arc<Config>) {
        let _ = self.jobs.try_send(Job::Retire(cfg));
    }
}

/// A [`Job::Build`], unpacked.
struct BuildJob {
    version: u64,
    body: Vec<u8>,
    reply: Sender<Built>,
}

/// The tenant store as the builder holds it: the store the newest good version was built with.
#[derive(Debug)]
struct Held {
    store: Store,
    path: String,
    journal: JournalState,
    /// The version built with it.
    version: u64,
    /// The message (without a change) that version was built from: a change comes with the
    /// running config's text, and is taken as a delta only on the same text.
    message: ConfigMessage,
    /// The store's files as last read or written here: changed by anyone else (an edit by
    /// hand), the store is read again before the next change.
    files: Option<manage::StoreFiles>,
}

impl Held {
    /// The store the engine started with, read again (off the shards) from its files.
    fn at_start(region: &Region, version: u64) -> Option<Held> {
        let (v, body) = region.ring().latest_message()?;
        let message = message::decode(&body).ok()?;
        if v != version || message.op.is_some() {
            return None;
        }
        let path = store_path(&message)?;
        let files = manage::StoreFiles::now(&path);
        match manage::read_with_journal(&path) {
            Ok((store, journal)) => Some(Held {
                store,
                path,
                journal,
                version,
                message,
                files,
            }),
            Err(r) => {
                tracing::warn!(
                    "tenant store: {}; it is read again with the next change",
                    r.message
                );
                None
            }
        }
    }
}

/// What the builder keeps between jobs.
struct State<'a> {
    /// The config the engine started with: what only a restart changes is checked against it.
    running: &'a Config,
    overrides: &'a Overrides,
    region: Option<&'static Region>,
    held: Option<Held>,
    /// The newest version whose change to the store was made (or refused): a version asked
    /// for again is never made again.
    last_op_version: u64,
    /// Where each new good config is left for the fleet agent, and the version left there.
    latest: Option<Arc<crate::fleet::Latest>>,
    latest_version: u64,
    /// The fleet's store in Redis (`[fleet]` with a tenant store): every change is made there
    /// too, in the fleet's order.
    fleet: Option<crate::fleet_store::Link>,
}

/// What [`State::make`] did with a change.
enum Outcome {
    /// Made: the config with it.
    Made(Arc<Config>),
    /// Refused (answered already); the store is as it was.
    Refused,
    /// The fleet's store moved on since this instance caught up: taken back, to be made
    /// again after catching up.
    Again,
}

/// The tenant store's path `m` names (`None`: none, or the config does not validate), from
/// the config without its store.
fn store_path(m: &ConfigMessage) -> Option<String> {
    Some(
        Config::from_message_without_store(m)
            .ok()?
            .server
            .tenant_store?
            .path,
    )
}

impl State<'_> {
    /// Build message `body` as `version`; `newest`: the newest good config built before it.
    fn build(
        &mut self,
        version: u64,
        body: &[u8],
        newest: Option<(u64, &Arc<Config>)>,
    ) -> Result<Arc<Config>, String> {
        let mut m = message::decode(body)?;
        let Some(op) = m.op.take() else {
            let (c, store) = build(&m, None, self.running, self.overrides);
            let c = c?;
            self.hold(store, &c, version, m);
            return Ok(Arc::new(c));
        };
        if version <= self.last_op_version {
            // Asked again after its build was let go: made once already.
            return newest
                .map(|(_, c)| c.clone())
                .ok_or_else(|| "asked again".to_owned());
        }
        self.last_op_version = version;
        // The store and config the change is made on: the held ones when this message is the
        // running config's text, else both read and validated whole.
        let fast = match (&self.held, newest) {
            (Some(h), Some((v, c)))
                if h.version == v
                    && h.message == m
                    && h.files.is_some()
                    && h.files == manage::StoreFiles::now(&h.path) =>
            {
                Some(c.clone())
            }
            _ => None,
        };
        let (base, mut held) = match fast {
            Some(c) => match self.held.take() {
                Some(h) => (c, h),
                None => return Err("the held store went missing".into()),
            },
            None => {
                // The files as they are before they are read: a write after makes the next
                // change read them again.
                let files = store_path(&m).and_then(|p| manage::StoreFiles::now(&p));
                let (c, store) = build(&m, None, self.running, self.overrides);
                let c = Arc::new(c?);
                let Some(path) = c.server.tenant_store.as_ref().map(|f| f.path.clone()) else {
                    self.reply(
                        version,
                        shm::REPLY_FAILED,
                        0,
                        "the running config names no tenant store",
                    );
                    return Ok(c);
                };
                let journal = match manage::journal_state(&path) {
                    Ok(j) => j,
                    Err(r) => {
                        self.reply(version, shm::REPLY_FAILED, 0, &r.message);
                        return Ok(c);
                    }
                };
                let held = Held {
                    store: store.unwrap_or_default(),
                    path,
                    journal,
                    version,
                    message: m.clone(),
                    files,
                };
                (c, held)
            }
        };
        let made = self.make_in_order(version, &op, base, &mut held, &m);
        // This version runs the new config, or the same one when the change was refused:
        // built with the store held either way.
        held.version = version;
        self.held = Some(held);
        Ok(made)
    }

    /// Make the change `op` on `held` (whose config is `base`), in a fleet after the changes
    /// the fleet's store has and this instance lacks: the config this version runs.
    fn make_in_order(
        &mut self,
        version: u64,
        op: &[u8],
        mut base: Arc<Config>,
        held: &mut Held,
        m: &ConfigMessage,
    ) -> Arc<Config> {
        let msg = match OpMessage::from_json(op) {
            Ok(msg) => msg,
            Err(why) => {
                self.reply(version, shm::REPLY_INVALID, held.store.version, &why);
                return base;
            }
        };
        for _ in 0..crate::fleet_store::APPEND_TRIES_MAX {
            if self.fleet.is_some() {
                base = match self.catch_up(held, &base, m) {
                    Ok(c) => c,
                    Err(why) => {
                        self.reply(version, shm::REPLY_FAILED, held.store.version, &why);
                        return base;
                    }
                };
            }
            if matches!(msg.op, store_op::StoreOp::FleetSync) {
                let said = serde_json::json!({ "fleet_store_version": held.store.version });
                self.reply(
                    version,
                    shm::REPLY_MADE,
                    held.store.version,
                    &said.to_string(),
                );
                return base;
            }
            match self.make(version, &msg, &base, held, m) {
                Outcome::Made(c) => return c,
                Outcome::Refused => return base,
                Outcome::Again => {}
            }
        }
        self.reply(
            version,
            shm::REPLY_FAILED,
            held.store.version,
            &format!(
                "the fleet's tenant store changed under this change {} times in a row (other \
                 instances are changing it): not made; try again",
                crate::fleet_store::APPEND_TRIES_MAX
            ),
        );
        base
    }

    /// Make here the changes the fleet's store in Redis has and `held` lacks (or load it
    /// whole, or write `held`'s to a Redis that has none): the config `base` becomes. On
    /// `Err` (Redis unreachable, or its changes do not validate here) `held` is as it was.
    fn catch_up(
        &mut self,
        held: &mut Held,
        base: &Arc<Config>,
        m: &ConfigMessage,
    ) -> Result<Arc<Config>, String> {
        use crate::fleet_store::{lines_between, plan, Step};
        let Some(link) = self.fleet.as_mut() else {
            return Ok(base.clone());
        };
        let at_ms = unix_ms();
        let (redis, lines) = link.fetch(held.store.version)?;
        let step = plan(redis, held.store.version, link.loaded);
        let entries = match step {
            Step::Nothing => None,
            Step::Seed => {
                match link.seed(&held.store)? {
                    // Another instance wrote the same version first (the fleet's instances
                    // hold one store): in step.
                    Some(theirs) if theirs == held.store.version && link.loaded => {
                        self.mark_held(theirs, at_ms);
                        return Ok(base.clone());
                    }
                    Some(theirs) => {
                        return Err(format!(
                            "the fleet's tenant store in Redis went to version {theirs} while \
                             this instance's was written; the next catch-up loads it"
                        ))
                    }
                    None => {}
                }
                match redis {
                    None => tracing::warn!(
                        "fleet: Redis had no tenant store (new, or restarted empty): it has \
                         this instance's now (version {}, {} tenants, {} keys); changes made \
                         on other instances and not here, if any, are not in it",
                        held.store.version,
                        held.store.tenants.len(),
                        held.store.keys.len()
                    ),
                    Some(v) => tracing::warn!(
                        "fleet: Redis's tenant store (version {v}) is older than this \
                         instance's (version {}), as if restored from an old save: it has \
                         this instance's now",
                        held.store.version
                    ),
                }
                link.loaded = true;
                None
            }
            Step::Lines { after, to } => match lines_between(&lines, after, to) {
                Some(e) => Some(e),
                None => {
                    // The log moved on since: the store whole.
                    return self.load_whole(held, m, at_ms);
                }
            },
            Step::Load => return self.load_whole(held, m, at_ms),
        };
        let Some(entries) = entries else {
            self.mark_held(held.store.version, at_ms);
            return Ok(base.clone());
        };
        // The tenants and keys the changes touch, as they were and as they are.
        let mut tenants = std::collections::BTreeSet::new();
        let mut keys = std::collections::BTreeSet::new();
        let before = held.store.undo_of(&entries);
        for e in &entries {
            tenants.extend(e.tenants.keys().cloned());
            for (id, k) in &e.keys {
                keys.insert(id.clone());
                tenants.extend(k.iter().map(|k| k.tenant.clone()));
                tenants.extend(held.store.keys.get(id).map(|k| k.tenant.clone()));
            }
            held.store.apply(e.clone());
        }
        let built = self.with_tenants(base, held, &tenants, &keys, m);
        let first = entries.first().map_or(0, |e| e.version);
        let last = held.store.version;
        let config = match built {
            Ok(c) => c,
            Err(why) => {
                held.store.restore(before);
                return Err(format!(
                    "the fleet's tenant store changes {first}..={last} do not validate with \
                     this instance's config ({why}); this instance keeps version {} (do the \
                     fleet's instances run the same config?)",
                    held.store.version
                ));
            }
        };
        for e in &entries {
            if let Err(r) = manage::append_journal(&held.path, e, &mut held.journal) {
                // In force here and in the fleet's store; the files catch up at the next
                // start, which loads the fleet's store.
                tracing::warn!(
                    "tenant store: the fleet's change was not written here: {}",
                    r.message
                );
            }
        }
        held.files = manage::StoreFiles::now(&held.path);
        tracing::info!(
            "tenant store: the fleet's changes {first}..={last} made here ({} tenant(s) \
             built again)",
            tenants.len()
        );
        self.mark_held(last, at_ms);
        Ok(config)
    }

    /// Load the fleet's store whole in place of `held`'s (an instance that just started, or
    /// one far behind); a store of this instance's own that differs is kept beside its files.
    fn load_whole(
        &mut self,
        held: &mut Held,
        m: &ConfigMessage,
        at_ms: u64,
    ) -> Result<Arc<Config>, String> {
        let Some(link) = self.fleet.as_mut() else {
            return Err("not in a fleet".into());
        };
        let fleet = link.load()?;
        let (c, store) = build(m, Some(fleet), self.running, self.overrides);
        let c = c.map_err(|why| {
            format!(
                "the fleet's tenant store does not validate with this instance's config \
                 ({why}); this instance keeps its own (do the fleet's instances run the same \
                 config?)"
            )
        })?;
        let fleet = store.unwrap_or_default();
        if let Some(l) = self.fleet.as_mut() {
            l.loaded = true;
        }
        if fleet != held.store {
            let mine = &held.store;
            if !mine.tenants.is_empty() || !mine.keys.is_empty() {
                let aside = format!("{}.local-{at_ms}", held.path);
                match manage::write_atomically(&aside, &mine.to_json()) {
                    Ok(()) => tracing::warn!(
                        "fleet: this instance's tenant store (version {}) differed from the \
                         fleet's (version {}): it runs the fleet's; its own is kept in {aside}",
                        mine.version,
                        fleet.version
                    ),
                    Err(r) => tracing::warn!(
                        "fleet: this instance's tenant store differed from the fleet's, and \
                         could not be kept aside: {}",
                        r.message
                    ),
                }
            }
            held.store = fleet;
            if let Err(r) = manage::fold(&held.path, &held.store, &mut held.journal) {
                tracing::warn!(
                    "tenant store: the fleet's store was not written here: {}",
                    r.message
                );
            }
            held.files = manage::StoreFiles::now(&held.path);
        }
        tracing::info!(
            "tenant store: the fleet's store loaded (version {}, {} tenants, {} keys)",
            held.store.version,
            held.store.tenants.len(),
            held.store.keys.len()
        );
        self.mark_held(held.store.version, at_ms);
        Ok(Arc::new(c))
    }

    /// `base` with `tenants` as `held`'s store has them now (`keys`: the keys changed): only
    /// those built again, or the config whole when the delta cannot be taken.
    fn with_tenants(
        &self,
        base: &Arc<Config>,
        held: &mut Held,
        tenants: &std::collections::BTreeSet<String>,
        keys: &std::collections::BTreeSet<String>,
        m: &ConfigMessage,
    ) -> Result<Arc<Config>, String> {
        match base.with_store_tenants(&held.store, tenants, keys)? {
            StoreDelta::Unchanged => Ok(base.clone()),
            StoreDelta::Built(c) => Ok(Arc::new(*c)),
            StoreDelta::Whole => {
                let store = std::mem::take(&mut held.store);
                let (c, store) = build(m, Some(store), self.running, self.overrides);
                held.store = store.unwrap_or_default();
                c.map(Arc::new)
            }
        }
    }

    /// Say where this instance's store stands against the fleet's (for the watcher).
    fn mark_held(&self, version: u64, at_ms: u64) {
        if let Some(l) = &self.latest {
            crate::fleet_store::mark_held(l, version, at_ms);
        }
    }

    /// Make the change `msg` on `held` (whose config is `base`), and in a fleet, in the
    /// fleet's store. The answer is left in the region unless it is to be made again.
    fn make(
        &mut self,
        version: u64,
        msg: &OpMessage,
        base: &Arc<Config>,
        held: &mut Held,
        m: &ConfigMessage,
    ) -> Outcome {
        let now = unix_ms();
        let started = std::time::Instant::now();
        let applied = match store_op::apply(&mut held.store, msg, base, now) {
            Ok(a) => a,
            Err(e) => {
                self.reply(
                    version,
                    manage::reply_status(Some(e.kind)),
                    held.store.version,
                    &e.message,
                );
                return Outcome::Refused;
            }
        };
        let keys = applied.delta.keys.keys().cloned().collect();
        let built = self.with_tenants(base, held, &applied.tenants, &keys, m);
        let config = match built {
            Ok(c) => c,
            Err(why) => {
                held.store.restore(applied.undo);
                self.reply(
                    version,
                    shm::REPLY_INVALID,
                    held.store.version,
                    &format!("the store's tenants would not validate: {why}"),
                );
                return Outcome::Refused;
            }
        };
        // In a fleet: made in the fleet's store first, only if it is still at the version
        // this change was made on.
        if let Some(link) = self.fleet.as_mut() {
            let at_ms = unix_ms();
            match link.append(applied.undo.version, &applied.delta, &held.store) {
                Ok(crate::fleet_store::Appended::Made) => {
                    self.mark_held(held.store.version, at_ms);
                }
                Ok(crate::fleet_store::Appended::Behind(_)) => {
                    held.store.restore(applied.undo);
                    return Outcome::Again;
                }
                Err(why) => {
                    held.store.restore(applied.undo);
                    self.reply(
                        version,
                        shm::REPLY_FAILED,
                        held.store.version,
                        &format!(
                            "{why}; the change was not made (made here alone, it would leave \
                             this instance's store apart from the fleet's)"
                        ),
                    );
                    return Outcome::Refused;
                }
            }
        }
        let persisted = if held.journal.lines + 1 >= JOURNAL_LINES_MAX || !held.journal.clean {
            manage::fold(&held.path, &held.store, &mut held.journal)
        } else {
            manage::append_journal(&held.path, &applied.delta, &mut held.journal)
        };
        held.files = manage::StoreFiles::now(&held.path);
        if let Err(r) = persisted {
            if self.fleet.is_some() {
                // In the fleet's store already: in force; this instance's files take it at
                // their next write (or the next start, which loads the fleet's store).
                self.reply(
                    version,
                    shm::REPLY_FAILED,
                    held.store.version,
                    &format!(
                        "the change was made in the fleet's store (version {}), but this \
                         instance's copy was not written: {}",
                        held.store.version, r.message
                    ),
                );
                return Outcome::Made(config);
            }
            held.store.restore(applied.undo);
            self.reply(version, shm::REPLY_FAILED, held.store.version, &r.message);
            return Outcome::Refused;
        }
        let store_version = held.store.version;
        if let Some(audit) = &base.server.audit_log {
            if let Err(r) =
                manage::audit_line(audit, &msg.actor, now, &applied.change, store_version)
            {
                // Made and durable: in force, but said.
                self.reply(
                    version,
                    shm::REPLY_FAILED,
                    store_version,
                    &format!(
                        "the change was made (store version {store_version}), but its audit \
                         line was not written: {}",
                        r.message
                    ),
                );
                return Outcome::Made(config);
            }
        }
        let mut said = applied.outcome.to_string();
        if said.len() > crate::limits::STORE_REPLY_BYTES {
            said = serde_json::json!({
                "note": format!("the answer is {} bytes, more than the region carries; read it back with a GET", said.len())
            })
            .to_string();
        }
        self.reply(version, shm::REPLY_MADE, store_version, &said);
        tracing::info!(
            "tenant store: {} {} made as store version {store_version} (config version \
             {version}, {} tenant(s) built again) in {} us",
            applied.change.action,
            applied.change.target,
            applied.tenants.len(),
            started.elapsed().as_micros()
        );
        Outcome::Made(config)
    }

    /// Hold the store `c` (version `version`, from `m`) was validated with.
    fn hold(&mut self, store: Option<Store>, c: &Config, version: u64, m: ConfigMessage) {
        self.held = match (store, &c.server.tenant_store) {
            (Some(store), Some(f)) => match manage::journal_state(&f.path) {
                Ok(journal) => Some(Held {
                    store,
                    path: f.path.clone(),
                    journal,
                    version,
                    message: m,
                    files: manage::StoreFiles::now(&f.path),
                }),
                Err(_) => None,
            },
            _ => None,
        };
    }

    fn reply(&self, version: u64, status: u64, store_version: u64, text: &str) {
        if let Some(r) = self.region {
            r.put_store_reply(version, status, store_version, text.as_bytes());
        }
    }

    /// Nothing to build for a while: fold a long journal into the store's file (only the
    /// store as this builder last left it: files changed since are read again first, by the
    /// next change).
    fn idle(&mut self) {
        if let Some(h) = self.held.as_mut() {
            let long = h.journal.lines >= JOURNAL_FOLD_LINES || !h.journal.clean;
            if long && h.files.is_some() && h.files == manage::StoreFiles::now(&h.path) {
                if let Err(r) = manage::fold(&h.path, &h.store, &mut h.journal) {
                    tracing::warn!("tenant store: {}", r.message);
                }
                h.files = manage::StoreFiles::now(&h.path);
            }
        }
    }
}

fn run(
    jobs: &Receiver<Job>,
    b: &mut State<'_>,
    running: &Arc<Config>,
    version: u64,
    shards: usize,
) {
    // The versions built that a shard may still ask for, with how many shards asked: every
    // shard submits each version, usually close together. A version every shard has had is
    // dropped (a config of 100,000 keys holds tens of MB), except the newest good one, which
    // the next version's tenants are mapped to. The config the shards started with is the
    // first of those, so the first change maps its tenants.
    let mut recent: std::collections::VecDeque<(Built, usize)> =
        std::collections::VecDeque::with_capacity(BUILT_KEPT);
    recent.push_back((
        Built {
            version,
            result: Ok(running.clone()),
            reuse: None,
        },
        shards,
    ));
    loop {
        let job = match jobs.recv_timeout(Duration::from_millis(JOURNAL_IDLE_MS)) {
            Ok(job) => job,
            Err(RecvTimeoutError::Timeout) => {
                b.idle();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let job = match job {
            Job::Retire(cfg) => {
                drop(cfg);
                continue;
            }
            Job::Watch(l) => {
                b.latest = Some(l);
                continue;
            }
            Job::Build {
                version,
                body,
                reply,
            } => BuildJob {
                version,
                body,
                reply,
            },
        };
        let built = match recent.iter_mut().find(|(b, _)| b.version == job.version) {
            Some((b, asked)) => {
                *asked += 1;
                b.clone()
            }
            None => {
                // The newest good version built before this one: shards usually run it.
                let before = recent
                    .iter()
                    .rev()
                    .filter(|(b, _)| b.version < job.version)
                    .find_map(|(b, _)| Some((b.version, b.result.as_ref().ok()?)));
                let result = b.build(job.version, &job.body, before);
                if let (Ok(c), Some(l)) = (&result, &b.latest) {
                    // Only a newer version: one asked late must not put an older config back.
                    if job.version > b.latest_version {
                        b.latest_version = job.version;
                        l.set(c.clone());
                    }
                }
                let reuse = match (&result, before) {
                    (Ok(new), Some((from, old))) => Some(Arc::new(Reuse::between(from, old, new))),
                    _ => None,
                };
                let b = Built {
                    version: job.version,
                    result,
                    reuse,
                };
                if recent.len() == BUILT_KEPT {
                    recent.pop_front();
                }
                recent.push_back((b.clone(), 1));
                b
            }
        };
        // The inbox holds as many results as the ring holds messages: it is never full.
        let _ = job.reply.try_send(built);
        let newest_good = recent
            .iter()
            .filter(|(b, _)| b.result.is_ok())
            .map(|(b, _)| b.version)
            .max();
        recent.retain(|(b, asked)| *asked < shards || Some(b.version) == newest_good);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EMBEDDED_DEFAULT;
    use crate::store_op::StoreOp;
    use std::time::{Duration, Instant};

    /// Wait (at most 5 s) for `n` results in `inbox`.
    fn results(inbox: &Inbox, n: usize) -> Vec<Built> {
        let start = Instant::now();
        let mut out = Vec::new();
        while out.len() < n && start.elapsed() < Duration::from_secs(5) {
            inbox.take(&mut out);
            // A test thread, not a shard: blocking is what it should do here.
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(1));
        }
        out
    }

    #[test]
    fn each_shard_gets_each_version_in_order_refusals_included() {
        let running = Config::embedded_default();
        let b = Builder::spawn(running.clone(), 1, Overrides::default(), 2, None).expect("thread");
        let good = message::encode(EMBEDDED_DEFAULT, &running).expect("encode");
        let restart = EMBEDDED_DEFAULT.replace("[server]", "[server]\ninstance = \"other\"");
        let restart = message::encode(&restart, &running).expect("encode");
        let (one, two) = (Inbox::default(), Inbox::default());
        for inbox in [&one, &two] {
            b.submit(2, good.clone(), inbox).expect("queued");
            b.submit(3, b"not a message".to_vec(), inbox)
                .expect("queued");
            b.submit(4, restart.clone(), inbox).expect("queued");
        }
        for inbox in [&one, &two] {
            let got = results(inbox, 3);
            let versions: Vec<u64> = got.iter().map(|b| b.version).collect();
            assert_eq!(versions, [2, 3, 4]);
            assert!(got[0].result.is_ok());
            assert!(got[1].result.is_err());
            let why = got[2].result.as_ref().expect_err("a restart-only change");
            assert!(why.contains("needs a restart"), "{why}");
        }
        // One result per submitted version, no more.
        let (a, c) = (results(&one, 0), results(&two, 0));
        assert!(a.is_empty() && c.is_empty());
    }

    #[test]
    fn one_build_serves_every_shard() {
        let running = Config::embedded_default();
        let b = Builder::spawn(running.clone(), 1, Overrides::default(), 2, None).expect("thread");
        let good = message::encode(EMBEDDED_DEFAULT, &running).expect("encode");
        let (one, two) = (Inbox::default(), Inbox::default());
        b.submit(2, good.clone(), &one).expect("queued");
        b.submit(2, good, &two).expect("queued");
        let (x, y) = (results(&one, 1), results(&two, 1));
        // The first change maps its tenants to the config the shards started with (version 1).
        let reuse = x[0].reuse.as_ref().expect("a map to the running config");
        assert_eq!((reuse.from, reuse.tenants.as_slice()), (1, &[Some(0)][..]));
        assert!(reuse.same, "the same tenants with the same limits");
        let (x, y) = (
            x[0].result.as_ref().expect("valid"),
            y[0].result.as_ref().expect("valid"),
        );
        assert!(Arc::ptr_eq(x, y), "the version was built twice");
    }

    #[test]
    fn a_retired_config_is_dropped_on_the_builders_thread() {
        let b = Builder::spawn(Config::embedded_default(), 1, Overrides::default(), 1, None)
            .expect("thread");
        let cfg = Arc::new(Config::embedded_default());
        b.retire(cfg.clone());
        let start = Instant::now();
        while Arc::strong_count(&cfg) > 1 && start.elapsed() < Duration::from_secs(5) {
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(Arc::strong_count(&cfg), 1, "the builder kept it");
    }

    #[test]
    fn a_version_every_shard_has_had_is_let_go_unless_it_is_the_newest() {
        let running = Config::embedded_default();
        let b = Builder::spawn(running.clone(), 1, Overrides::default(), 2, None).expect("thread");
        let good = message::encode(EMBEDDED_DEFAULT, &running).expect("encode");
        let (one, two) = (Inbox::default(), Inbox::default());
        let ok = |v: &[Built]| v[0].result.clone().expect("valid");
        b.submit(2, good.clone(), &one).expect("queued");
        let first = ok(&results(&one, 1));
        b.submit(2, good.clone(), &two).expect("queued");
        results(&two, 1);
        // Both shards had version 2; it is still the newest, so it is kept (a late asker gets
        // the same build).
        b.submit(2, good.clone(), &one).expect("queued");
        assert!(Arc::ptr_eq(&first, &ok(&results(&one, 1))));
        // Version 3 built and had by both: version 2 is let go, and asked again it is built
        // anew (its config is not held in memory meanwhile).
        for inbox in [&one, &two] {
            b.submit(3, good.clone(), inbox).expect("queued");
            results(inbox, 1);
        }
        b.submit(2, good, &one).expect("queued");
        assert!(!Arc::ptr_eq(&first, &ok(&results(&one, 1))));
    }

    #[test]
    fn a_change_to_the_store_is_made_once_answered_in_the_region_and_a_refusal_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("sg-builder-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = dir.join("tenants.json").to_string_lossy().into_owned();
        let text =
            EMBEDDED_DEFAULT.replace("[server]", &format!("[server]\ntenant_store = \"{store}\""));
        let running = Config::from_toml(&text).expect("valid");
        let region: &'static Region = Box::leak(Box::new(Region::anonymous(2).expect("region")));
        crate::control::publish_config(region, 1, &text, &running).expect("published");
        let b = Builder::spawn(running.clone(), 1, Overrides::default(), 2, Some(region))
            .expect("thread");
        let op = |version: u64, op: StoreOp| {
            let msg = OpMessage {
                op,
                actor: "test".into(),
            };
            (
                version,
                message::encode_with_op(&text, &running, &msg.to_json()).expect("encode"),
            )
        };
        let add = op(
            2,
            StoreOp::TenantAdd {
                name: "team-x".into(),
                settings: crate::store::Settings::default(),
            },
        );
        let (one, two) = (Inbox::default(), Inbox::default());
        b.submit(add.0, add.1.clone(), &one).expect("queued");
        b.submit(add.0, add.1, &two).expect("queued");
        let (x, y) = (results(&one, 1), results(&two, 1));
        let x = x[0].result.clone().expect("made");
        assert!(
            Arc::ptr_eq(&x, y[0].result.as_ref().expect("made")),
            "made twice"
        );
        assert!(x.tenants.iter().any(|t| t.name == "team-x"));
        let (status, store_version, said) = region.store_reply(2).expect("answered");
        assert_eq!((status, store_version), (shm::REPLY_MADE, 1));
        assert!(said.contains("\"name\":\"team-x\""), "{said}");
        let journal = crate::store::journal_path(&store);
        let lines = || {
            std::fs::read_to_string(&journal)
                .unwrap_or_default()
                .lines()
                .count()
        };
        assert_eq!(lines(), 1);

        // Refused by the store: the version runs the same config, and nothing is written.
        let (_, hash) = crate::store::KeyHash::make([3; crate::store::KEY_RANDOM_BYTES]);
        let bad = op(
            3,
            StoreOp::KeyCreate {
                tenant: "nobody".into(),
                name: None,
                expires_in_ms: None,
                limits: crate::store::KeySettings::default(),
                key: hash.clone(),
            },
        );
        for inbox in [&one, &two] {
            b.submit(bad.0, bad.1.clone(), inbox).expect("queued");
            let got = results(inbox, 1);
            assert!(Arc::ptr_eq(&x, got[0].result.as_ref().expect("runs")));
        }
        let (status, _, why) = region.store_reply(3).expect("answered");
        assert_eq!(status, shm::REPLY_NOT_FOUND);
        assert!(why.contains("no tenant \"nobody\""), "{why}");
        assert_eq!(lines(), 1);

        // A key for the new tenant: built from the held store, as a delta.
        let key = op(
            4,
            StoreOp::KeyCreate {
                tenant: "team-x".into(),
                name: None,
                expires_in_ms: None,
                limits: crate::store::KeySettings::default(),
                key: hash,
            },
        );
        b.submit(key.0, key.1, &one).expect("queued");
        let got = results(&one, 1);
        let c = got[0].result.as_ref().expect("made");
        let t = c
            .tenants
            .iter()
            .find(|t| t.name == "team-x")
            .expect("there");
        assert_eq!(t.keys.len(), 1);
        assert_eq!(region.store_reply(4).map(|r| r.0), Some(shm::REPLY_MADE));
        assert_eq!(lines(), 2);
        assert_eq!(crate::manage::read(&store).expect("reads").keys.len(), 1);

        // The files written by someone else (a tenant added by hand): read again first.
        let mut by_hand = crate::manage::read(&store).expect("reads");
        by_hand
            .add_tenant("by-hand", crate::store::Settings::default(), &[], 1)
            .expect("added");
        std::fs::write(&store, by_hand.to_json()).expect("written");
        std::fs::write(&journal, b"").expect("emptied");
        let set = op(
            5,
            StoreOp::TenantSuspend {
                name: "by-hand".into(),
                suspended: true,
            },
        );
        b.submit(set.0, set.1, &one).expect("queued");
        let got = results(&one, 1);
        let c = got[0].result.as_ref().expect("made");
        assert!(c.tenants.iter().any(|t| t.name == "by-hand" && t.suspended));
        assert_eq!(region.store_reply(5).map(|r| r.0), Some(shm::REPLY_MADE));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
