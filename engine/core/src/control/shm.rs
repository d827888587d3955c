//! The shared-memory region of one engine instance: a file under `/dev/shm` (or
//! `$SHARDGATE_SHM_DIR`) mapped by the engine and by `shardgate-ctl`.
//!
//! ```text
//! offset 0      Fixed (4096-aligned)
//!               ├─ header            magic, layout version, sizes, engine pid, start time
//!               ├─ ring head         (own 128-byte line: written by the producer only)
//!               ├─ writer lock       (own line: the pid of the ctl publishing, 0 = none)
//!               ├─ store reply       (the builder's answer to the last change to the store)
//!               └─ ring slots        RING_SLOTS × RING_SLOT_WORDS words
//! then          ShardBlock × shards  (each 4096-aligned: written by its shard only)
//! ```
//! Every field is an `AtomicU64` (any bit pattern is valid, so a zero-filled or scribbled-on
//! file is never undefined behaviour to read), so nothing here needs a lock: each word has one
//! writer. This is the only module of the project with `unsafe`: the casts of the mapping to
//! these `#[repr(C)]` types.

#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapMut;

use super::ring::RingView;
use crate::limits::{
    DURATION_BUCKETS_MS, RING_SLOTS, RING_SLOT_WORDS, SHARD_ERROR_BYTES, STATS_NAME_BYTES,
    STATS_SLOTS, STORE_REPLY_BYTES, TENANT_SLOTS,
};

/// `SHRDGT` + layout version: a ctl of another version refuses the region instead of
/// misreading it.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"SHRDGT\x00\x0a");
/// Longest tuning-file path kept in the header, bytes.
pub const TUNING_PATH_BYTES: usize = 256;

/// One 128-byte line (two on CPUs that prefetch pairs), so writers of different lines never
/// share one.
#[repr(C, align(128))]
#[derive(Debug)]
pub struct Line<T>(pub T);

#[repr(C)]
#[derive(Debug)]
pub struct Header {
    /// Stored last at creation (release): a reader that sees it sees the rest.
    pub magic: AtomicU64,
    pub region_bytes: AtomicU64,
    pub shards: AtomicU64,
    pub engine_pid: AtomicU64,
    pub started_unix_ms: AtomicU64,
    /// 1 once the engine drains (SIGTERM).
    pub draining: AtomicU64,
    /// Port of the admin listener (0: none).
    pub admin_port: AtomicU64,
    /// The tuning file the shard count and cores came from (`cores = "tuned"`): its path
    /// (UTF-8, `tuning_len` bytes; 0: none) and when `shardgate-tune` wrote it.
    pub tuning_len: AtomicU64,
    pub tuning_path: [AtomicU64; TUNING_PATH_BYTES / 8],
    pub tuning_created_unix: AtomicU64,
    /// 1 when the engine runs in a fleet (`[fleet]`): shards take from the fleet cells.
    pub fleet: AtomicU64,
    /// The fleet agent's view: Redis reachable (1) or not (0), its last round trip, the
    /// instances it saw alive, and when it last synced.
    pub fleet_redis_up: AtomicU64,
    pub fleet_redis_rtt_us: AtomicU64,
    pub fleet_instances: AtomicU64,
    pub fleet_synced_unix_ms: AtomicU64,
}

#[repr(C)]
#[derive(Debug)]
pub struct WriterLock {
    /// Pid of the process publishing to the ring; 0 when none.
    pub pid: AtomicU64,
    pub since_unix_ms: AtomicU64,
}

/// The engine's config builder's answer to a change to the tenant store (version `version`
/// of the config): written by the builder only, before any shard runs that version, so whoever
/// published the change reads it once every shard does.
#[repr(C)]
#[derive(Debug)]
pub struct StoreReply {
    /// The config version answered; 0 while an answer is being written.
    pub version: AtomicU64,
    /// [`REPLY_MADE`], or why not (`REPLY_NOT_FOUND` ... `REPLY_FAILED`).
    pub status: AtomicU64,
    /// The store's version after the change.
    pub store_version: AtomicU64,
    pub len: AtomicU64,
    /// The answer (JSON) when made, else the reason.
    pub text: [AtomicU64; STORE_REPLY_BYTES / 8],
}

/// Answers the region keeps, the last ones by version.
pub const STORE_REPLY_SLOTS: usize = 4;

/// [`StoreReply::status`]: the change was made.
pub const REPLY_MADE: u64 = 0;
/// The store refused it: no such tenant, key or request.
pub const REPLY_NOT_FOUND: u64 = 1;
/// The store refused it: the name or the pending request exists already.
pub const REPLY_EXISTS: u64 = 2;
/// The store refused it: the change is not valid.
pub const REPLY_INVALID: u64 = 3;
/// The instance failed to make it (the store's file, the audit log).
pub const REPLY_FAILED: u64 = 4;

#[repr(C, align(4096))]
#[derive(Debug)]
pub struct Fixed {
    pub header: Line<Header>,
    pub ring_head: Line<AtomicU64>,
    pub writer: Line<WriterLock>,
    /// Answers to changes, by config version modulo [`STORE_REPLY_SLOTS`]: a change published
    /// right after another (another instance's catch-up, in a fleet) does not overwrite the
    /// answer its publisher has yet to read.
    pub store_reply: [Line<StoreReply>; STORE_REPLY_SLOTS],
    pub ring: [AtomicU64; RING_SLOTS * RING_SLOT_WORDS],
    /// Tenants' shared limiter cells, found by name (see [`Region::tenant`]).
    pub tenants: [Line<TenantCells>; TENANT_SLOTS],
    /// In a fleet (`[fleet]`), each tenant's share of the fleet's limits, at its slot's index in
    /// `tenants` (see [`Region::fleet`]). Untouched, so never paged in, without a fleet.
    pub fleet: [Line<FleetCells>; TENANT_SLOTS],
}

/// This instance's share of one tenant's (or key's) limits in a fleet: units the fleet agent
/// leased from Redis, and what the shards took (`shardgate_engine::limit::Credit`).
#[repr(C)]
#[derive(Debug)]
pub struct FleetCells {
    pub rpm: CreditCells,
    pub tpm: CreditCells,
    /// The token budget's and the USD budget's (microdollars) credit in the current window.
    pub budget: CreditCells,
    pub budget_usd: CreditCells,
    /// A tenant's share of the fleet's `max_concurrency`.
    pub concurrency: ConcurrencyCells,
}

/// Bytes a tenant's fleet cells may take: one cache-line pair (the table's lines are 128 bytes
/// apart, so more would double the table).
pub const FLEET_CELLS_BYTES_MAX: usize = 256;

/// This instance's share of a tenant's `max_concurrency` in a fleet (decision 0013): written by
/// the fleet agent, read by the shards at admission (`shardgate_engine::limit::Concurrency`).
#[repr(C)]
#[derive(Debug)]
pub struct ConcurrencyCells {
    /// The requests this instance may have in flight for the tenant, plus one; 0: not set yet
    /// (the tenant's `max_concurrency` alone holds, as on a single host).
    pub cap: AtomicU64,
    /// Requests refused for want of a slot since the agent last looked (it takes them).
    pub refused: AtomicU64,
}

/// One limit's credit: see `shardgate_engine::limit::Credit`.
#[repr(C)]
#[derive(Debug)]
pub struct CreditCells {
    /// Units this instance may still take.
    pub credit: AtomicU64,
    /// Units taken beyond the credit, for the agent to charge to Redis.
    pub debt: AtomicU64,
    /// Units taken, ever.
    pub used: AtomicU64,
    /// How much debt the shards may run up before the agent's next sync.
    pub overdraft_max: AtomicU64,
    /// Units refused for want of credit, ever (demand the agent has not met yet).
    pub wanted: AtomicU64,
    /// The largest take refused (a request's reservation): the credit and the overdraft are
    /// kept at least that large.
    pub wanted_max: AtomicU64,
}

/// A tenant's limits, shared by every shard: one 128-byte line per tenant.
#[repr(C)]
#[derive(Debug)]
pub struct TenantCells {
    /// 0 free, 1 being claimed, 2 named; once named, the name's length in the bits above the
    /// low 8 (one word for both: the cells fit in [`TENANT_CELLS_BYTES_MAX`]).
    pub state: AtomicU64,
    pub name: [AtomicU64; STATS_NAME_BYTES / 8],
    /// GCRA theoretical arrival times of the request and token buckets (`shardgate_engine::limit`).
    pub rpm_tat: AtomicU64,
    pub tpm_tat: AtomicU64,
    /// Requests in flight, over all shards.
    pub inflight: AtomicU64,
    /// Budget window and tokens used in it (`shardgate_engine::limit::Budget`).
    pub budget: AtomicU64,
    /// The budget as configured (0: none) and its window, written by shards when a config is
    /// applied, for readers (the admin listener's remaining-budget gauge).
    pub budget_tokens: AtomicU64,
    pub budget_window_ms: AtomicU64,
    /// The USD budget's window and microdollars spent in it (`shardgate_engine::limit::Budget`).
    pub budget_usd: AtomicU64,
}

const TENANT_FREE: u64 = 0;
const TENANT_CLAIMING: u64 = 1;
const TENANT_NAMED: u64 = 2;
/// Bits of [`TenantCells::state`] holding the state; the name's length is above them.
const TENANT_STATE_BITS: u32 = 8;
const TENANT_STATE_MASK: u64 = (1 << TENANT_STATE_BITS) - 1;
/// Bytes a tenant's cells may take: two cache-line pairs' worth would double the table.
pub const TENANT_CELLS_BYTES_MAX: usize = 128;
/// Spins waiting for another shard to finish naming a slot it claimed (config time only).
const TENANT_CLAIM_SPINS_MAX: u32 = 1_000_000;

/// Index of the status classes in [`StatsSlot::status`]: 0 = no response (the connection
/// failed or closed early), 1..=5 = 1xx..5xx.
pub const STATUS_CLASSES: usize = 6;
/// Histogram buckets: one per bound, then one unbounded.
pub const DURATION_BUCKETS: usize = DURATION_BUCKETS_MS.len() + 1;

/// Slot kinds.
pub const KIND_FREE: u64 = 0;
pub const KIND_UPSTREAM: u64 = 1;
pub const KIND_ROUTE: u64 = 2;
pub const KIND_TENANT: u64 = 3;

/// Why a tenant's request was refused, as an index into [`StatsSlot::rejected`].
pub const REJECT_REASONS: usize = 6;

/// Counters of one named thing (an upstream or a route) on one shard.
#[repr(C)]
#[derive(Debug)]
pub struct StatsSlot {
    /// Stored (release) after the name: a reader that sees a kind sees the name.
    pub kind: AtomicU64,
    pub name_len: AtomicU64,
    pub name: [AtomicU64; STATS_NAME_BYTES / 8],
    pub requests: AtomicU64,
    pub status: [AtomicU64; STATUS_CLASSES],
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub duration_buckets: [AtomicU64; DURATION_BUCKETS],
    pub duration_sum_us: AtomicU64,
    /// Tenants only: refusals by reason (`crate::control::stats::Reject`), and tokens used
    /// (prompt, completion) as settled from the upstreams' `usage`.
    pub rejected: [AtomicU64; REJECT_REASONS],
    pub tokens_in: AtomicU64,
    pub tokens_out: AtomicU64,
    /// Tenants only: requests that waited in a fair queue, and the time they waited (µs).
    pub queued: AtomicU64,
    pub queue_wait_us: AtomicU64,
    /// Tenants only: spend from the price table, nanodollars, and requests whose usage was
    /// seen but whose model has no price (their spend is unknown, not $0).
    pub spend_nusd: AtomicU64,
    pub unpriced: AtomicU64,
}

/// What one shard reports about itself.
#[repr(C)]
#[derive(Debug)]
pub struct ShardInfo {
    /// 1 once the shard runs (its listener bound).
    pub running: AtomicU64,
    /// The core it is pinned to, or `u64::MAX`.
    pub core: AtomicU64,
    /// [`crate::config::DriverKind`] as a number (see `driver_code`).
    pub driver: AtomicU64,
    pub started_unix_ms: AtomicU64,
    pub config_version: AtomicU64,
    pub config_applied_unix_ms: AtomicU64,
    /// The ring frame it reads next, and the frames it had still to read when it last looked.
    pub ring_cursor: AtomicU64,
    pub ring_lag_frames: AtomicU64,
    /// Messages or frames dropped (torn, corrupt, cut short), and configs it refused.
    pub ring_dropped: AtomicU64,
    pub apply_errors: AtomicU64,
    /// The version of the last refused config and why (UTF-8, `error_len` bytes).
    pub error_version: AtomicU64,
    pub error_len: AtomicU64,
    pub error: [AtomicU64; SHARD_ERROR_BYTES / 8],
    pub connections: AtomicU64,
    pub connections_accepted: AtomicU64,
    pub requests: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub access_log_dropped: AtomicU64,
    /// Requests the shard is serving now (health checks and local refusals not counted), and
    /// requests it answered 503 because `requests_inflight_max` were already in flight.
    pub requests_inflight: AtomicU64,
    pub requests_shed: AtomicU64,
    /// Connections closed unanswered at accept because `connections_max` were open.
    pub connections_refused: AtomicU64,
}

#[repr(C, align(4096))]
#[derive(Debug)]
pub struct ShardBlock {
    pub info: Line<ShardInfo>,
    pub slots: [StatsSlot; STATS_SLOTS],
}

/// Bytes of a region for `shards` shards.
pub fn region_bytes(shards: usize) -> usize {
    std::mem::size_of::<Fixed>() + shards * std::mem::size_of::<ShardBlock>()
}

/// Where the region of `instance` lives.
pub fn region_path(instance: &str) -> PathBuf {
    let dir = std::env::var_os("SHARDGATE_SHM_DIR")
        .map_or_else(|| PathBuf::from("/dev/shm"), PathBuf::from);
    dir.join(format!("shardgate-{instance}"))
}

/// A mapped region. The mapping lives as long as this value.
#[derive(Debug)]
pub struct Region {
    map: MmapMut,
    shards: usize,
    path: Option<PathBuf>,
}

// Compile-time layout checks: the casts below rely on these.
const _: () = assert!(std::mem::align_of::<Fixed>() <= 4096);
const _: () = assert!(std::mem::size_of::<Fixed>().is_multiple_of(4096));
const _: () = assert!(std::mem::size_of::<ShardBlock>().is_multiple_of(4096));
const _: () = assert!(std::mem::size_of::<TenantCells>() <= TENANT_CELLS_BYTES_MAX);
const _: () = assert!(std::mem::size_of::<FleetCells>() <= FLEET_CELLS_BYTES_MAX);

impl Region {
    /// Create the region of `instance` for `shards` shards, replacing a stale file left by an
    /// engine that is gone. Refuses when a live engine owns it.
    pub fn create(instance: &str, shards: usize, now_unix_ms: u64) -> Result<Region, String> {
        let path = region_path(instance);
        if let Ok(old) = Region::open_path(&path) {
            let pid = old.header().engine_pid.load(Ordering::Acquire);
            if pid != 0 && pid_alive(pid) && pid != u64::from(std::process::id()) {
                return Err(format!(
                    "instance {instance:?} is already running (pid {pid}, region {}); \
                     give this one another [server] instance",
                    path.display()
                ));
            }
        }
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
        set_private(&file);
        let bytes = region_bytes(shards);
        file.set_len(bytes as u64)
            .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
        // SAFETY: the file was just created by us with create_new and sized; other processes
        // only ever access it through AtomicU64 views (see `fixed`/`shard`), so the mapping is
        // never aliased by non-atomic Rust references.
        let map = unsafe { MmapMut::map_mut(&file) }
            .map_err(|e| format!("cannot map {}: {e}", path.display()))?;
        let r = Region {
            map,
            shards,
            path: Some(path),
        };
        r.init(shards, now_unix_ms);
        Ok(r)
    }

    /// An anonymous region (not shared with other processes): for `--check` and tests.
    pub fn anonymous(shards: usize) -> Result<Region, String> {
        let map = MmapMut::map_anon(region_bytes(shards)).map_err(|e| format!("mmap: {e}"))?;
        let r = Region {
            map,
            shards,
            path: None,
        };
        r.init(shards, 0);
        Ok(r)
    }

    fn init(&self, shards: usize, now_unix_ms: u64) {
        let h = self.header();
        h.region_bytes
            .store(self.map.len() as u64, Ordering::Relaxed);
        h.shards.store(shards as u64, Ordering::Relaxed);
        h.engine_pid
            .store(u64::from(std::process::id()), Ordering::Relaxed);
        h.started_unix_ms.store(now_unix_ms, Ordering::Relaxed);
        for i in 0..shards {
            self.shard(i).info.0.core.store(u64::MAX, Ordering::Relaxed);
        }
        h.magic.store(REGION_MAGIC, Ordering::Release);
    }

    /// Open the region of a running instance (for ctl).
    pub fn open(instance: &str) -> Result<Region, String> {
        let path = region_path(instance);
        Region::open_path(&path).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => format!(
                "no shardgate instance {instance:?} is running here (no {}); \
                 start the engine, or name its instance with --instance",
                path.display()
            ),
            _ => format!("cannot open {}: {e}", path.display()),
        })
    }

    fn open_path(path: &Path) -> io::Result<Region> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let len = file.metadata()?.len();
        let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
        if len < std::mem::size_of::<Fixed>() as u64 {
            return Err(invalid(format!(
                "{} is too small to be a shardgate region",
                path.display()
            )));
        }
        // SAFETY: as in `create`: every access goes through AtomicU64 views; the length was
        // checked to hold `Fixed` and is checked against the shard count below before any
        // shard block is touched. Another process truncating the file under us would fault
        // (SIGBUS); only the engine (which never truncates a live region) and ctl open it.
        let map = unsafe { MmapMut::map_mut(&file) }?;
        let mut r = Region {
            map,
            shards: 0,
            path: None,
        };
        if r.header().magic.load(Ordering::Acquire) != REGION_MAGIC {
            return Err(invalid(format!(
                "{} is not a region of this shardgate version (magic differs)",
                path.display()
            )));
        }
        let shards =
            usize::try_from(r.header().shards.load(Ordering::Relaxed)).unwrap_or(usize::MAX);
        if shards > crate::limits::SHARDS_MAX || region_bytes(shards) as u64 != len {
            return Err(invalid(format!(
                "{} has an inconsistent size",
                path.display()
            )));
        }
        r.shards = shards;
        Ok(r)
    }

    fn fixed(&self) -> &Fixed {
        // SAFETY: the mapping is page-aligned (4096 ≥ align_of::<Fixed>()), at least
        // size_of::<Fixed>() long (checked at open, sized at create), lives as long as `self`,
        // and Fixed is made only of AtomicU64s, for which every bit pattern is valid and
        // shared access from several threads and processes is sound.
        unsafe { &*self.map.as_ptr().cast::<Fixed>() }
    }

    pub fn header(&self) -> &Header {
        &self.fixed().header.0
    }

    pub fn writer(&self) -> &WriterLock {
        &self.fixed().writer.0
    }

    pub fn ring(&self) -> RingView<'_, AtomicU64> {
        let f = self.fixed();
        RingView::new(&f.ring_head.0, &f.ring, RING_SLOT_WORDS)
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The block of shard `i`. Panics when `i >= shards()` (a caller bug, never input).
    pub fn shard(&self, i: usize) -> &ShardBlock {
        assert!(i < self.shards, "shard {i} of {}", self.shards);
        let offset = std::mem::size_of::<Fixed>() + i * std::mem::size_of::<ShardBlock>();
        // SAFETY: offset + size_of::<ShardBlock>() ≤ region_bytes(shards) = the mapping's
        // length (checked at open, sized at create); offset is a multiple of 4096 from a
        // page-aligned base, meeting ShardBlock's alignment; ShardBlock is only AtomicU64s.
        unsafe { &*self.map.as_ptr().add(offset).cast::<ShardBlock>() }
    }

    /// The fleet cells of the tenant in slot `slot` ([`Region::tenant_slot`]), when the engine
    /// runs in a fleet.
    pub fn fleet(&self, slot: usize) -> Option<&FleetCells> {
        if self.header().fleet.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.fixed().fleet.get(slot).map(|l| &l.0)
    }

    /// The shared limiter cells of tenant `name`: found by hashing the name and probing, and
    /// named on first use (by whichever shard gets there first; the others find it). Called
    /// when a config is applied, never per request. `None` when the table is full.
    pub fn tenant(&self, name: &str) -> Option<&TenantCells> {
        self.tenant_slot(name).map(|(_, cells)| cells)
    }

    /// [`Region::tenant`], with the slot's index in the table (the same for a name in every
    /// shard, for process-wide tables indexed alike).
    pub fn tenant_slot(&self, name: &str) -> Option<(usize, &TenantCells)> {
        let table = &self.fixed().tenants;
        let bytes = &name.as_bytes()[..name.len().min(STATS_NAME_BYTES)];
        let start = usize::try_from(fnv1a(bytes)).unwrap_or(0);
        for probe in 0..TENANT_SLOTS {
            let slot = (start + probe) % TENANT_SLOTS;
            let cells = &table[slot].0;
            let mut spins = 0;
            loop {
                let state = cells.state.load(Ordering::Acquire);
                match state & TENANT_STATE_MASK {
                    TENANT_NAMED => {
                        let n = usize::try_from(state >> TENANT_STATE_BITS).unwrap_or(usize::MAX);
                        if text_eq_n(&cells.name, n, bytes) {
                            return Some((slot, cells));
                        }
                        break;
                    }
                    TENANT_FREE => {
                        if cells
                            .state
                            .compare_exchange(
                                TENANT_FREE,
                                TENANT_CLAIMING,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            let n = store_words(&cells.name, bytes);
                            cells.state.store(
                                TENANT_NAMED | (n as u64) << TENANT_STATE_BITS,
                                Ordering::Release,
                            );
                            return Some((slot, cells));
                        }
                    }
                    _ => {
                        // Another shard is naming it right now.
                        spins += 1;
                        if spins > TENANT_CLAIM_SPINS_MAX {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                }
            }
        }
        None
    }

    /// Named tenant slots: (name, cells), for the admin listener and ctl.
    pub fn tenants(&self) -> impl Iterator<Item = (String, &TenantCells)> {
        self.tenant_slots().map(|(_, name, c)| (name, c))
    }

    /// [`Region::tenants`] with each one's slot.
    pub fn tenant_slots(&self) -> impl Iterator<Item = (usize, String, &TenantCells)> {
        self.fixed()
            .tenants
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let c = &l.0;
                let state = c.state.load(Ordering::Acquire);
                let n = usize::try_from(state >> TENANT_STATE_BITS).unwrap_or(0);
                (state & TENANT_STATE_MASK == TENANT_NAMED).then(|| (i, load_text_n(&c.name, n), c))
            })
    }

    /// Leave the answer to the change published as config `version` (the builder's only).
    pub fn put_store_reply(&self, version: u64, status: u64, store_version: u64, text: &[u8]) {
        let r = self.reply_slot(version);
        r.version.store(0, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        r.status.store(status, Ordering::Relaxed);
        r.store_version.store(store_version, Ordering::Relaxed);
        let n = store_words(&r.text, text);
        r.len.store(n as u64, Ordering::Relaxed);
        r.version.store(version, Ordering::Release);
    }

    /// The answer to the change published as config `version`: its status, the store's
    /// version and the text; `None` if the builder has not answered that version (or is
    /// answering another one just now).
    pub fn store_reply(&self, version: u64) -> Option<(u64, u64, String)> {
        let r = self.reply_slot(version);
        if r.version.load(Ordering::Acquire) != version {
            return None;
        }
        let status = r.status.load(Ordering::Relaxed);
        let store_version = r.store_version.load(Ordering::Relaxed);
        let n = usize::try_from(r.len.load(Ordering::Relaxed)).unwrap_or(0);
        let text = load_text_n(&r.text, n);
        std::sync::atomic::fence(Ordering::Acquire);
        (r.version.load(Ordering::Relaxed) == version).then_some((status, store_version, text))
    }

    /// The answer slot of config `version`.
    fn reply_slot(&self, version: u64) -> &StoreReply {
        let slots = &self.fixed().store_reply;
        &slots[usize::try_from(version % STORE_REPLY_SLOTS as u64).unwrap_or(0)].0
    }

    /// The region file (None for an anonymous region).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Take the ring's writer lock for this process. Fails with the holder's pid when another
    /// live process holds it; takes it over from a dead one.
    pub fn lock_writer(&self, now_unix_ms: u64) -> Result<WriterGuard<'_>, u64> {
        let me = u64::from(std::process::id());
        let w = self.writer();
        loop {
            match w
                .pid
                .compare_exchange(0, me, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(holder) if holder == me => break,
                Err(holder) if pid_alive(holder) => return Err(holder),
                Err(holder) => {
                    // The holder died mid-apply: take over. Its partial frames are dropped by
                    // every reader when the next message's first frame arrives.
                    if w.pid
                        .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        break;
                    }
                }
            }
        }
        w.since_unix_ms.store(now_unix_ms, Ordering::Relaxed);
        Ok(WriterGuard { region: self })
    }
}

/// Holds the writer lock; releases it when dropped.
#[derive(Debug)]
pub struct WriterGuard<'a> {
    region: &'a Region,
}

impl Drop for WriterGuard<'_> {
    fn drop(&mut self) {
        let me = u64::from(std::process::id());
        let _ =
            self.region
                .writer()
                .pid
                .compare_exchange(me, 0, Ordering::AcqRel, Ordering::Relaxed);
    }
}

/// FNV-1a: a stable hash of a tenant name, the same in every shard and process.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Whether process `pid` runs (on Linux: /proc/PID/stat exists and its state is not zombie
/// or dead, so a killed process its parent has not reaped yet counts as gone).
pub fn pid_alive(pid: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "PID (comm) STATE ...": comm may hold spaces and parentheses; the state follows the last ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X" | "x"))
}

fn set_private(file: &File) {
    use std::os::unix::fs::PermissionsExt;
    let _ = file.set_permissions(std::fs::Permissions::from_mode(0o600));
}

/// Copy `bytes` (cut to the field) into `words` and their length into `len`.
pub fn store_text(words: &[AtomicU64], len: &AtomicU64, bytes: &[u8]) {
    let n = store_words(words, bytes);
    len.store(n as u64, Ordering::Release);
}

/// Store `bytes` (cut to fit) in `words`; the length stored is the caller's to publish.
fn store_words(words: &[AtomicU64], bytes: &[u8]) -> usize {
    let n = bytes.len().min(words.len() * 8);
    for (w, chunk) in words.iter().zip(bytes[..n].chunks(8)) {
        let mut b = [0u8; 8];
        b[..chunk.len()].copy_from_slice(chunk);
        w.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
    n
}

/// Read text stored by [`store_text`] (lossy: a torn read shows as odd characters, never UB).
/// Whether the text stored in `words` (`len` bytes) is `bytes`, compared word by word without
/// copying it out (a probe of the tenant table compares a name per slot it passes).
#[cfg(test)]
fn text_eq(words: &[AtomicU64], len: &AtomicU64, bytes: &[u8]) -> bool {
    text_eq_n(
        words,
        usize::try_from(len.load(Ordering::Acquire)).unwrap_or(usize::MAX),
        bytes,
    )
}

/// [`text_eq`] with the length already read.
fn text_eq_n(words: &[AtomicU64], n: usize, bytes: &[u8]) -> bool {
    if n != bytes.len() || n > words.len() * 8 {
        return false;
    }
    words
        .iter()
        .zip(bytes.chunks(8))
        .all(|(w, chunk)| w.load(Ordering::Relaxed).to_le_bytes()[..chunk.len()] == *chunk)
}

pub fn load_text(words: &[AtomicU64], len: &AtomicU64) -> String {
    load_text_n(
        words,
        usize::try_from(len.load(Ordering::Acquire)).unwrap_or(0),
    )
}

/// [`load_text`] with the length already read.
fn load_text_n(words: &[AtomicU64], n: usize) -> String {
    let n = n.min(words.len() * 8);
    let mut out = Vec::with_capacity(n);
    for w in words {
        out.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
    }
    out.truncate(n);
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_compares_without_copying() {
        let words: Vec<AtomicU64> = (0..8).map(|_| AtomicU64::new(0)).collect();
        let len = AtomicU64::new(0);
        store_text(&words, &len, b"team-alpha-0001");
        assert!(text_eq(&words, &len, b"team-alpha-0001"));
        for other in [
            &b"team-alpha-0002"[..],
            b"team-alpha-000",
            b"team-alpha-00011",
            b"",
        ] {
            assert!(!text_eq(&words, &len, other), "{other:?}");
        }
        store_text(&words, &len, b"");
        assert!(text_eq(&words, &len, b""));
    }

    #[test]
    fn create_open_and_refuse_a_live_owner() {
        let dir = std::env::temp_dir().join(format!("sg-shm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        // SAFETY of the test: no other thread of this test binary reads SHARDGATE_SHM_DIR
        // concurrently with a different value (all region tests use this one directory).
        std::env::set_var("SHARDGATE_SHM_DIR", &dir);
        let r = Region::create("unit", 2, 5).expect("create");
        assert_eq!(r.shards(), 2);
        r.shard(1).info.0.requests.store(42, Ordering::Relaxed);
        let o = Region::open("unit").expect("open");
        assert_eq!(o.shards(), 2);
        assert_eq!(o.header().started_unix_ms.load(Ordering::Relaxed), 5);
        assert_eq!(o.shard(1).info.0.requests.load(Ordering::Relaxed), 42);
        // Our own pid owns it: re-creating (a restart in the same process) is allowed.
        drop(o);
        let r2 = Region::create("unit", 1, 6).expect("recreate");
        assert_eq!(r2.shards(), 1);
        // Ring through the mapping.
        r2.ring().publish(3, b"hello").expect("fits");
        let o = Region::open("unit").expect("open");
        assert_eq!(o.ring().latest_message(), Some((3, b"hello".to_vec())));
        // The writer lock: taken, held against nobody else here, released on drop.
        let g = o.lock_writer(1).expect("free");
        assert_eq!(
            o.writer().pid.load(Ordering::Relaxed),
            u64::from(std::process::id())
        );
        drop(g);
        assert_eq!(o.writer().pid.load(Ordering::Relaxed), 0);
        // A dead holder's lock is taken over.
        o.writer()
            .pid
            .store(u64::from(u32::MAX) + 7, Ordering::Relaxed);
        assert!(o.lock_writer(2).is_ok());
        drop((r, r2));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn tenant_cells_are_found_by_name_from_any_thread() {
        let r: &'static Region = Box::leak(Box::new(Region::anonymous(1).expect("anon")));
        let names: Vec<String> = (0..500).map(|i| format!("tenant-{i}")).collect();
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let names = names.clone();
                std::thread::spawn(move || {
                    names
                        .iter()
                        .map(|n| r.tenant(n).map(|c| c as *const TenantCells as usize))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let seen: Vec<Vec<Option<usize>>> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        for s in &seen[1..] {
            assert_eq!(s, &seen[0], "threads disagree on a tenant's cells");
        }
        let mut distinct: Vec<usize> = seen[0].iter().map(|c| c.expect("room")).collect();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), names.len());
        assert_eq!(r.tenants().count(), names.len());
        let c = r.tenant("tenant-7").expect("found");
        c.inflight.store(3, Ordering::Relaxed);
        assert_eq!(
            r.tenant("tenant-7")
                .map(|c| c.inflight.load(Ordering::Relaxed)),
            Some(3)
        );
    }

    #[test]
    fn text_fields_round_trip_and_cut() {
        let r = Region::anonymous(1).expect("anon");
        let info = &r.shard(0).info.0;
        store_text(&info.error, &info.error_len, b"bad config");
        assert_eq!(load_text(&info.error, &info.error_len), "bad config");
        store_text(&info.error, &info.error_len, &[b'x'; 1000]);
        assert_eq!(
            load_text(&info.error, &info.error_len).len(),
            SHARD_ERROR_BYTES
        );
    }
}
