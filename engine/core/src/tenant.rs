//! Tenants: who may call the gateway, with which keys, for which models, within which limits.
//!
//! I/O-free: `[[tenants]]` entries are validated into [`TenantConfig`]s; a [`Tenants`] table
//! answers "which tenant owns this key" by SHA-256 of the presented key (keys themselves are
//! never stored, logged or compared in the clear), and "may this tenant use this model".

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

/// Longest API key accepted from a client, bytes (longer: refused as unknown, never hashed).
pub const API_KEY_BYTES_MAX: usize = 512;
/// Default `default_max_tokens`: the completion tokens reserved for a request without
/// `max_tokens`.
pub const DEFAULT_MAX_TOKENS_DEFAULT: u64 = 1024;
/// Most tenants in one config (the file's and the tenant store's), and keys per tenant.
pub const TENANTS_MAX: usize = 16_384;
pub const KEYS_PER_TENANT_MAX: usize = 64;

/// A `[[tenants]]` entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenant {
    name: String,
    #[serde(default)]
    keys: Vec<String>,
    models: Option<Vec<String>>,
    rpm: Option<i64>,
    tpm: Option<i64>,
    max_concurrency: Option<i64>,
    connections_max: Option<i64>,
    budget_tokens: Option<i64>,
    budget_usd: Option<f64>,
    budget_window: Option<String>,
    spent_usd: Option<f64>,
    spent_until_unix_ms: Option<u64>,
    weight: Option<i64>,
    default_max_tokens: Option<i64>,
    /// A tenant of the tenant store: it may have no key yet.
    #[serde(skip)]
    from_store: bool,
}

impl RawTenant {
    /// A tenant of the tenant store, as if written in `[[tenants]]`.
    pub fn from_store(name: &str, keys: Vec<String>, s: &crate::store::Settings) -> Self {
        Self {
            name: name.to_owned(),
            keys,
            models: s.models.clone(),
            rpm: s.rpm,
            tpm: s.tpm,
            max_concurrency: s.max_concurrency,
            connections_max: s.connections_max,
            budget_tokens: s.budget_tokens,
            budget_usd: s.budget_usd,
            budget_window: s.budget_window.clone(),
            spent_usd: s.spent_usd,
            spent_until_unix_ms: s.spent_until_unix_ms,
            weight: s.weight,
            default_max_tokens: s.default_max_tokens,
            from_store: true,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Which models a tenant may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Models {
    All,
    Only(Vec<String>),
}

impl Models {
    pub fn allows(&self, model: &str) -> bool {
        match self {
            Models::All => true,
            Models::Only(list) => list.iter().any(|m| m == model),
        }
    }
}

/// A hard cap of `tokens` per fixed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub tokens: u64,
    pub window: Duration,
}

/// A hard cap of `uusd` microdollars of spend per fixed window (`budget_usd`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetUsd {
    pub uusd: u64,
    pub window: Duration,
    /// Spend counted before shardgate did (`spent_usd`, imported from LiteLLM).
    pub carried: Option<Carried>,
}

/// Spend counted elsewhere before (`spent_usd` and `spent_until_unix_ms`, as
/// `shardgate-ctl import litellm` writes them): it counts against the budget until
/// `until_unix_ms`, within the one window that holds the millisecond before it (a later
/// window starts whole).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Carried {
    pub uusd: u64,
    pub until_unix_ms: u64,
}

impl Carried {
    /// `spent_usd` and `spent_until_unix_ms` as given (both or neither) for a USD budget
    /// (`has_budget`: one was given), checked; problems to `error(field, reason)`.
    pub fn read(
        usd: Option<f64>,
        until_unix_ms: Option<u64>,
        has_budget: bool,
        mut error: impl FnMut(&str, String),
    ) -> Option<Carried> {
        match (usd, until_unix_ms) {
            (None, None) => None,
            (Some(_), None) => {
                error(
                    "spent_until_unix_ms",
                    "is needed with spent_usd: when the spend stops counting".into(),
                );
                None
            }
            (None, Some(_)) => {
                error("spent_usd", "is needed with spent_until_unix_ms".into());
                None
            }
            (Some(usd), Some(until)) => match crate::prices::uusd_of(usd, BUDGET_USD_MAX) {
                Ok(_) if !has_budget => {
                    error("spent_usd", "needs budget_usd".into());
                    None
                }
                Ok(uusd) => Some(Carried {
                    uusd,
                    until_unix_ms: until,
                }),
                Err(reason) => {
                    error("spent_usd", reason);
                    None
                }
            },
        }
    }
}

/// The largest `budget_usd`, US dollars (a budget cell counts 2^48 microdollars).
pub const BUDGET_USD_MAX: f64 = 100_000_000.0;
/// The window of a budget that names none.
pub const BUDGET_WINDOW_DEFAULT: Duration = Duration::from_secs(30 * 86_400);

/// One of a tenant's keys: its SHA-256, and when it stops being accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantKey {
    pub hash: [u8; 32],
    /// Unix ms from which the key is refused (an expiry, or the end of a rotation's grace);
    /// `u64::MAX`: never.
    pub expires_unix_ms: u64,
}

/// A key's own limits (`shardgate-ctl keys create --rpm --tpm --budget-usd`): held over all
/// shards like a tenant's, in cells named by the key's lineage (the id of the first key of its
/// rotations), so a rotated key's successor carries on with the same counts and budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLimits {
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// Requests in flight at once with this key, over every shard.
    pub max_concurrency: Option<u64>,
    /// Microdollars per the tenant's budget window (30 days without one).
    pub budget_uusd: Option<u64>,
    /// Spend counted before shardgate did, against `budget_uusd`.
    pub carried: Option<Carried>,
    /// The models this key may call, within its tenant's; `None`: its tenant's.
    pub models: Option<std::sync::Arc<[String]>>,
    /// The first [`KEY_ID_BYTES`] of the hash of the lineage's first key.
    pub lineage: [u8; KEY_ID_BYTES],
}

/// Most keys with limits of their own in one config: each takes a slot of the shared tenant
/// table (`TENANT_SLOTS`), beside the tenants.
pub const KEYS_LIMITED_MAX: usize = 8_192;

/// A key with limits of its own, in a [`Tenants`] table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitedKey {
    /// Its tenant's index.
    pub tenant: usize,
    pub limits: KeyLimits,
}

/// A validated tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantConfig {
    pub name: String,
    /// Its keys (one past its expiry stays here and is refused at lookup).
    pub keys: Vec<TenantKey>,
    /// The keys with limits of their own (keys of the tenant store only): the key's index in
    /// `keys` and its limits, by index. Kept apart so a key without (nearly all) costs nothing.
    pub key_limits: Vec<(u32, KeyLimits)>,
    /// Suspended in the tenant store: its keys are known, its requests refused (403).
    pub suspended: bool,
    pub models: Models,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_concurrency: Option<u64>,
    /// Open client connections per shard counted for this tenant (a connection counts for
    /// the tenant of its first request with a key); past it: 429 `connections` and close.
    pub connections_max: Option<u64>,
    pub budget: Option<Budget>,
    /// The spend budget in dollars, sharing `budget_window` with the token budget.
    pub budget_usd: Option<BudgetUsd>,
    pub weight: u32,
    pub default_max_tokens: u64,
}

/// SHA-256 of a key.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// The first 8 hex digits of a key's hash: how a key is named in logs and status output.
pub fn key_alias(hash: &[u8; 32]) -> String {
    let mut s = String::with_capacity(8);
    for b in &hash[..4] {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The 32 bytes of 64 lowercase hex digits.
pub fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    parse_hex(hex)
}

/// The `N` bytes of exactly `2 * N` hex digits.
pub fn parse_hex<const N: usize>(hex: &str) -> Option<[u8; N]> {
    if hex.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Validate `[[tenants]]` (and the tenant store's tenants, which take the same form): problems
/// go to `error(field, reason)`, warnings (plain keys) to `warn`. `origin(i)` names entry `i`
/// in a field (`tenants[3]`; empty: the field alone).
pub fn validate(
    raw: Vec<RawTenant>,
    origin: impl Fn(usize) -> String,
    mut error: impl FnMut(String, String),
    mut warn: impl FnMut(String),
) -> Vec<TenantConfig> {
    if raw.len() > TENANTS_MAX {
        error("tenants".into(), format!("at most {TENANTS_MAX} tenants"));
    }
    let mut names: HashMap<String, usize> = HashMap::with_capacity(raw.len());
    let mut owners: HashMap<[u8; 32], usize> = HashMap::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, t) in raw.into_iter().enumerate() {
        let at = origin(i);
        let f = |k: &str| {
            if at.is_empty() {
                k.to_owned()
            } else {
                format!("{at}.{k}")
            }
        };
        if t.name.is_empty() || t.name.len() > 64 || t.name.chars().any(char::is_control) {
            error(f("name"), "must be 1 to 64 printable characters".into());
        }
        if let Some(j) = names.insert(t.name.clone(), i) {
            error(
                f("name"),
                format!("duplicate name {:?} (also {})", t.name, origin(j)),
            );
        }
        if t.keys.is_empty() && !t.from_store {
            error(f("keys"), "at least one key is needed".into());
        }
        if t.keys.len() > KEYS_PER_TENANT_MAX {
            error(f("keys"), format!("at most {KEYS_PER_TENANT_MAX} keys"));
        }
        let mut key_hashes = Vec::with_capacity(t.keys.len());
        for (k, key) in t.keys.iter().enumerate() {
            let field = f(&format!("keys[{k}]"));
            let hash = match key.strip_prefix("sha256:") {
                Some(hex) => match parse_hash(&hex.to_ascii_lowercase()) {
                    Some(h) => h,
                    None => {
                        error(field, "sha256: must be followed by 64 hex digits".into());
                        continue;
                    }
                },
                None => {
                    if key.is_empty() || key.len() > API_KEY_BYTES_MAX {
                        error(field, format!("must be 1 to {API_KEY_BYTES_MAX} bytes"));
                        continue;
                    }
                    let h = hash_key(key.as_bytes());
                    warn(format!(
                        "{field}: a plain key is stored in the config; write \"sha256:{}\" instead",
                        hex(&h)
                    ));
                    h
                }
            };
            if let Some(j) = owners.insert(hash, i) {
                error(
                    field,
                    format!(
                        "key {} is also a key of {}; a key names one tenant",
                        key_alias(&hash),
                        origin(j)
                    ),
                );
            }
            key_hashes.push(TenantKey {
                hash,
                expires_unix_ms: u64::MAX,
            });
        }
        let models = match t.models {
            None => Models::All,
            Some(list) if list.iter().any(|m| m == "*") => Models::All,
            Some(list) => {
                if list.iter().any(String::is_empty) {
                    error(f("models"), "model names must not be empty".into());
                }
                Models::Only(list)
            }
        };
        let mut limit = |key: &str, v: Option<i64>, min: u64| -> Option<u64> {
            let v = v?;
            match u64::try_from(v) {
                Ok(v) if v >= min && v <= 1 << 48 => Some(v),
                _ => {
                    error(f(key), format!("must be between {min} and 2^48, got {v}"));
                    None
                }
            }
        };
        let rpm = limit("rpm", t.rpm, 1);
        let tpm = limit("tpm", t.tpm, 1);
        let max_concurrency = limit("max_concurrency", t.max_concurrency, 1);
        let connections_max = limit("connections_max", t.connections_max, 1);
        let budget_tokens = limit("budget_tokens", t.budget_tokens, 1);
        let weight = limit("weight", t.weight, 1)
            .map_or(1, |w| u32::try_from(w.min(1_000_000)).unwrap_or(1));
        let default_max_tokens = limit("default_max_tokens", t.default_max_tokens, 1)
            .unwrap_or(DEFAULT_MAX_TOKENS_DEFAULT);
        let window = match &t.budget_window {
            None => None,
            Some(w) => match humantime::parse_duration(w) {
                Ok(d) if d >= Duration::from_secs(1) => Some(d),
                _ => {
                    error(
                        f("budget_window"),
                        format!(
                            "{w:?}: must be a duration of at least 1s, e.g. \"30d\" or \"12h\""
                        ),
                    );
                    None
                }
            },
        };
        let budget_usd =
            t.budget_usd
                .and_then(|usd| match crate::prices::uusd_of(usd, BUDGET_USD_MAX) {
                    Ok(v) => Some(v),
                    Err(reason) => {
                        error(f("budget_usd"), reason);
                        None
                    }
                });
        // A window given but unreadable leaves both budgets out (its error is reported).
        let window_of = |given: bool| match (window, &t.budget_window) {
            (Some(w), _) if given => Some(w),
            (None, None) if given => Some(BUDGET_WINDOW_DEFAULT),
            _ => None,
        };
        if window.is_some() && budget_tokens.is_none() && budget_usd.is_none() {
            error(
                f("budget_window"),
                "needs budget_tokens or budget_usd".into(),
            );
        }
        let budget = budget_tokens
            .and_then(|tokens| window_of(true).map(|window| Budget { tokens, window }));
        let has_budget = budget_usd.is_some();
        let carried = Carried::read(t.spent_usd, t.spent_until_unix_ms, has_budget, |k, r| {
            error(f(k), r);
        });
        let budget_usd = budget_usd.and_then(|uusd| {
            window_of(true).map(|window| BudgetUsd {
                uusd,
                window,
                carried,
            })
        });
        out.push(TenantConfig {
            name: t.name,
            keys: key_hashes,
            key_limits: Vec::new(),
            suspended: false,
            models,
            rpm,
            tpm,
            max_concurrency,
            connections_max,
            budget,
            budget_usd,
            weight,
            default_max_tokens,
        });
    }
    out
}

/// The name of a limited key's cells in the shared tenant table (and of its limits in a
/// fleet): `\u{1}key/` and its lineage in hex, which no tenant name can be.
pub fn key_cells_name(lineage: &[u8; KEY_ID_BYTES]) -> String {
    format!("\u{1}key/{}", hex_bytes(lineage))
}

/// Bytes as lowercase hex digits.
pub fn hex_bytes(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        let _ = write!(s, "{x:02x}");
    }
    s
}

/// A SHA-256 as 64 lowercase hex digits (how the config and the tenant store write it).
pub fn hex(h: &[u8; 32]) -> String {
    hex_bytes(h)
}

/// Key hash → tenant index (and the key's expiry and own limits), built once per config.
#[derive(Clone, Default)]
pub struct Tenants {
    by_key: HashMap<[u8; 32], (usize, u64, u32), DigestHash>,
    /// Keys with limits of their own; `by_key`'s third field indexes it (`NO_KEY_LIMITS`:
    /// none).
    pub limited: Vec<LimitedKey>,
    /// Which table this is, for a [`KeyMemo`]: unique per [`Tenants::new`] in this process
    /// (a clone has the same mapping and keeps it); 0 for the empty default table.
    id: u64,
}

/// The mapping, sorted (two tables with the same keys print the same; the table's id, which
/// only tells tables apart for a [`KeyMemo`], is left out).
impl std::fmt::Debug for Tenants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut entries: Vec<_> = self.by_key.iter().collect();
        entries.sort();
        f.debug_struct("Tenants")
            .field("by_key", &entries)
            .finish_non_exhaustive()
    }
}

/// Hashes a key's SHA-256 (32 bytes) in four multiply-xor steps from a seed drawn per table,
/// and a final mix (murmur3's): SipHash, the default, costs several times that, on every
/// lookup and for every key when a table is built (100,000 per change at that scale). Safe
/// without SipHash's strength: a presented key is digested before its lookup, so a client
/// cannot pick its bucket, and the table's entries are the operators' (their `sha256:` values
/// need not be real digests, e.g. made-up ones in a test: all 32 bytes are hashed).
#[derive(Debug, Clone, Copy)]
pub struct DigestHash {
    seed: u64,
}

impl Default for DigestHash {
    fn default() -> Self {
        use std::hash::BuildHasher as _;
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl std::hash::BuildHasher for DigestHash {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(self.seed)
    }
}

/// [`DigestHash`]'s hasher (the length an array's hash writes first, a `write_usize`, is left
/// out: every key is 32 bytes).
#[derive(Debug, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    /// MurmurHash3's 64-bit finaliser, whole: with one of its two multiplies only, a table's
    /// low bits spread poorly for some seeds (CI saw 542 of 1,024 buckets).
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(29) ^ u64::from_le_bytes(b))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, _: usize) {}
}

/// Ids of [`Tenants`] tables; 0 is never handed out.
static NEXT_TENANTS_ID: AtomicU64 = AtomicU64::new(1);

impl Tenants {
    pub fn new(tenants: &[TenantConfig]) -> Self {
        let keys = tenants.iter().map(|t| t.keys.len()).sum();
        let mut by_key = HashMap::with_capacity_and_hasher(keys, DigestHash::default());
        let mut limited = Vec::new();
        for (i, t) in tenants.iter().enumerate() {
            let mut own = t.key_limits.iter().peekable();
            for (j, k) in t.keys.iter().enumerate() {
                let mine = own
                    .next_if(|(at, _)| usize::try_from(*at).ok() == Some(j))
                    .map(|(_, l)| l.clone());
                let limit = match mine {
                    // Validation keeps the count within KEYS_LIMITED_MAX, far below u32::MAX.
                    Some(limits) => match u32::try_from(limited.len()) {
                        Ok(n) if n < NO_KEY_LIMITS => {
                            limited.push(LimitedKey { tenant: i, limits });
                            n
                        }
                        _ => NO_KEY_LIMITS,
                    },
                    None => NO_KEY_LIMITS,
                };
                by_key.insert(k.hash, (i, k.expires_unix_ms, limit));
            }
        }
        Self {
            by_key,
            limited,
            id: NEXT_TENANTS_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// [`lookup`](Self::lookup) through a connection's [`KeyMemo`]: the same key as the
    /// connection's last one, against the same table, is compared byte for byte instead of
    /// hashed again (its expiry is still checked). Only keys that own a tenant are remembered.
    pub fn lookup_memo(&self, key: &[u8], now_unix_ms: u64, memo: &mut KeyMemo) -> Option<usize> {
        if let Some((t, expires)) = memo.get(self.id, key) {
            return (now_unix_ms < expires).then_some(t);
        }
        let (t, expires, limit, id) = self.entry(key)?;
        memo.set(self.id, key, t, expires, (id, limit));
        (now_unix_ms < expires).then_some(t)
    }

    /// The tenant a key's hash belongs to, expired or not (config time: a key names one
    /// tenant).
    pub fn tenant_of(&self, hash: &[u8; 32]) -> Option<usize> {
        self.by_key.get(hash).map(|&(t, _, _)| t)
    }

    /// The tenant owning `key` at `now_unix_ms`, by hash: none for a key past its expiry.
    /// Keys longer than `API_KEY_BYTES_MAX` own nothing.
    pub fn lookup(&self, key: &[u8], now_unix_ms: u64) -> Option<usize> {
        let (t, expires, _, _) = self.entry(key)?;
        (now_unix_ms < expires).then_some(t)
    }

    /// The key's tenant, expiry, own limits (an index into `limited`) and id (the first
    /// [`KEY_ID_BYTES`] of its hash).
    fn entry(&self, key: &[u8]) -> Option<(usize, u64, u32, [u8; KEY_ID_BYTES])> {
        if key.is_empty() || key.len() > API_KEY_BYTES_MAX {
            return None;
        }
        let hash = hash_key(key);
        let (t, expires, limit) = self.by_key.get(&hash).copied()?;
        let mut id = [0; KEY_ID_BYTES];
        id.copy_from_slice(&hash[..KEY_ID_BYTES]);
        Some((t, expires, limit, id))
    }
}

/// Bytes of a key's SHA-256 that name it: a key's id is `key_` and their hex (the tenant
/// store's ids; the access log's `key`).
pub const KEY_ID_BYTES: usize = 6;

/// `Tenants::by_key`'s mark of a key without limits of its own.
pub const NO_KEY_LIMITS: u32 = u32::MAX;

/// Longest key a [`KeyMemo`] remembers, bytes; a longer one is hashed on every request.
pub const KEY_MEMO_BYTES: usize = 128;

/// The last key a keep-alive connection presented and the tenant it owns, so that a client
/// sending the same key on every request pays one SHA-256 per connection, not one per request.
///
/// A hit needs the same table (a new config's table has a new id, so an index never outlives
/// the table it points into) and the same key, compared exactly: two keys are never taken
/// for one another. The key stays in the connection's memory as long as the connection (its
/// read buffer held it anyway); `Debug` never shows it. Timing: the comparison is not
/// constant-time, but it only ever compares a key with the one this same connection sent
/// before, so it tells a client nothing it did not already know.
pub struct KeyMemo {
    /// The [`Tenants`] table `tenant` is an index into; 0: nothing remembered.
    table: u64,
    len: usize,
    key: [u8; KEY_MEMO_BYTES],
    tenant: usize,
    expires_unix_ms: u64,
    /// The key's id (the first bytes of its hash).
    id: [u8; KEY_ID_BYTES],
    /// Its own limits, an index into [`Tenants::limited`] ([`NO_KEY_LIMITS`]: none).
    limit: u32,
}

impl Default for KeyMemo {
    fn default() -> Self {
        Self {
            table: 0,
            len: 0,
            key: [0; KEY_MEMO_BYTES],
            tenant: 0,
            expires_unix_ms: 0,
            id: [0; KEY_ID_BYTES],
            limit: NO_KEY_LIMITS,
        }
    }
}

impl std::fmt::Debug for KeyMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMemo")
            .field("table", &self.table)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl KeyMemo {
    fn get(&self, table: u64, key: &[u8]) -> Option<(usize, u64)> {
        (self.table != 0
            && self.table == table
            && self.key.get(..self.len).is_some_and(|k| k == key))
        .then_some((self.tenant, self.expires_unix_ms))
    }

    /// The id of the key last looked up through this memo, if it is remembered (a key too
    /// long to remember has none here).
    pub fn key_id(&self) -> Option<[u8; KEY_ID_BYTES]> {
        (self.table != 0).then_some(self.id)
    }

    /// The own limits (an index into [`Tenants::limited`]) of the key last looked up through
    /// this memo. Keys with limits are the tenant store's, short enough to be remembered
    /// always (checked where they are made).
    pub fn key_limit(&self) -> Option<usize> {
        (self.table != 0 && self.limit != NO_KEY_LIMITS)
            .then(|| usize::try_from(self.limit).ok())
            .flatten()
    }

    fn set(
        &mut self,
        table: u64,
        key: &[u8],
        tenant: usize,
        expires_unix_ms: u64,
        (id, limit): ([u8; KEY_ID_BYTES], u32),
    ) {
        match self.key.get_mut(..key.len()) {
            Some(slot) if table != 0 => {
                slot.copy_from_slice(key);
                self.len = key.len();
                self.table = table;
                self.tenant = tenant;
                self.expires_unix_ms = expires_unix_ms;
                self.id = id;
                self.limit = limit;
            }
            // Too long to remember (or the empty table): forget the last one too.
            _ => self.table = 0,
        }
    }
}

/// The API key a request presents: `Authorization: Bearer KEY` (scheme case-insensitive), or
/// else `x-api-key: KEY` (Anthropic's header; its SDK sends either).
pub fn presented_key<'a>(
    authorization: Option<&'a [u8]>,
    x_api_key: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    if let Some(v) = authorization {
        let v = v.trim_ascii();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            let k = v[7..].trim_ascii();
            if !k.is_empty() {
                return Some(k);
            }
        }
    }
    x_api_key.map(<[u8]>::trim_ascii).filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_that_differ_in_any_byte_spread_over_the_buckets() {
        use std::hash::BuildHasher as _;
        let h = DigestHash::default();
        // Made-up digests as a test config writes them (`sha256:000...01`, ...): alike but for
        // their last bytes, and those alike but for their first; for many seeds (each table
        // has its own), not just this run's.
        let seeds = (0..256u64).map(|i| DigestHash {
            seed: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ h.seed,
        });
        for (h, at) in std::iter::once(h)
            .chain(seeds)
            .flat_map(|h| [28, 0, 12].map(|at| (h, at)))
        {
            let buckets: std::collections::HashSet<u64> = (0..1_024u32)
                .map(|i| {
                    let mut d = [0u8; 32];
                    d[at..at + 4].copy_from_slice(&i.to_be_bytes()[..]);
                    h.hash_one(d) & 1023
                })
                .collect();
            assert!(
                buckets.len() > 600,
                "byte {at}: {} of 1024 buckets",
                buckets.len()
            );
        }
        // Another table, another seed.
        assert_ne!(
            h.hash_one([7u8; 32]),
            DigestHash::default().hash_one([7u8; 32])
        );
    }

    fn raw(toml_text: &str) -> Vec<RawTenant> {
        #[derive(Deserialize)]
        struct W {
            tenants: Vec<RawTenant>,
        }
        toml::from_str::<W>(toml_text).expect("toml").tenants
    }

    fn run(text: &str) -> (Vec<TenantConfig>, Vec<String>, Vec<String>) {
        let (mut errs, mut warns) = (Vec::new(), Vec::new());
        let t = validate(
            raw(text),
            |i| format!("tenants[{i}]"),
            |f, r| errs.push(format!("{f}: {r}")),
            |w| warns.push(w),
        );
        (t, errs, warns)
    }

    #[test]
    fn keys_hash_and_plain_keys_warn() {
        let (t, errs, warns) = run(r#"
            [[tenants]]
            name = "a"
            keys = ["sk-demo", "sha256:F77894FDFA58E447C57E077EAA9708E8E009C84DC6ABA2DB80461275E9B85BE8"]
            models = ["demo"]
            rpm = 600
            budget_tokens = 5000000
            budget_window = "30d"
            "#);
        assert!(errs.is_empty(), "{errs:?}");
        assert_eq!(warns.len(), 1);
        assert!(warns[0].contains("sha256:f77894fd"), "{warns:?}");
        assert!(
            !warns[0].contains("sk-demo"),
            "a warning shows the key: {warns:?}"
        );
        let table = Tenants::new(&t);
        assert_eq!(table.lookup(b"sk-demo", 0), Some(0));
        assert_eq!(table.lookup(b"sk-demO", 0), None);
        assert_eq!(table.lookup(&[b'x'; API_KEY_BYTES_MAX + 1], 0), None);
        assert!(t[0].models.allows("demo") && !t[0].models.allows("gpt-4o"));
        assert_eq!(t[0].rpm, Some(600));
        assert_eq!(t[0].budget.map(|b| b.window.as_secs()), Some(30 * 86_400));
        assert_eq!(key_alias(&hash_key(b"sk-demo")), "f77894fd");
    }

    #[test]
    fn spend_carried_in_needs_its_end_and_a_usd_budget() {
        let (t, errs, _) = run(r#"
            [[tenants]]
            name = "ok"
            keys = ["k0"]
            budget_usd = 10.0
            spent_usd = 2.5
            spent_until_unix_ms = 1000
            [[tenants]]
            name = "no-end"
            keys = ["k1"]
            budget_usd = 10.0
            spent_usd = 2.5
            [[tenants]]
            name = "no-budget"
            keys = ["k2"]
            spent_usd = 2.5
            spent_until_unix_ms = 1000
            [[tenants]]
            name = "negative"
            keys = ["k3"]
            budget_usd = 10.0
            spent_usd = -1.0
            spent_until_unix_ms = 1000
            "#);
        let all = errs.join("\n");
        for needle in [
            "tenants[1].spent_until_unix_ms: is needed with spent_usd",
            "tenants[2].spent_usd: needs budget_usd",
            "tenants[3].spent_usd",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert!(!all.contains("tenants[0]"), "{all}");
        assert_eq!(
            t[0].budget_usd.and_then(|b| b.carried),
            Some(Carried {
                uusd: 2_500_000,
                until_unix_ms: 1000
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let (_, errs, _) = run(r#"
            [[tenants]]
            name = "a"
            keys = ["sha256:zz", "k1"]
            rpm = 0
            budget_window = "soon"
            [[tenants]]
            name = "a"
            keys = ["k1"]
            "#);
        let all = errs.join("\n");
        for needle in [
            "tenants[0].keys[0]: sha256:",
            "tenants[0].rpm: must be between 1",
            "tenants[0].budget_window",
            "tenants[1].name: duplicate name",
            "tenants[1].keys[0]: key ",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
        assert!(!all.contains("k1\""), "an error shows a key:\n{all}");
    }

    #[test]
    fn a_key_memo_answers_only_for_the_same_key_and_table() {
        let (t, errs, _) = run(r#"
            [[tenants]]
            name = "a"
            keys = ["sk-a", "sk-a-longer"]
            [[tenants]]
            name = "b"
            keys = ["sk-b", "sk-"]
            "#);
        assert!(errs.is_empty(), "{errs:?}");
        let table = Tenants::new(&t);
        let mut memo = KeyMemo::default();
        // Keys that share a prefix, or differ in one byte, or only in length, stay apart.
        for (key, want) in [
            (&b"sk-a"[..], Some(0)),
            (b"sk-a", Some(0)),
            (b"sk-b", Some(1)),
            (b"sk-a-longer", Some(0)),
            (b"sk-", Some(1)),
            (b"sk-a", Some(0)),
            (b"sk-c", None),
            (b"sk-a-longe", None),
            (b"sk-b", Some(1)),
            (b"", None),
        ] {
            assert_eq!(table.lookup_memo(key, 0, &mut memo), want, "{key:?}");
            assert_eq!(table.lookup(key, 0), want);
        }
        // A miss leaves the last hit remembered.
        assert_eq!(memo.get(table.id, b"sk-b"), Some((1, u64::MAX)));
        // A new table (a new config: the same key, another tenant) is never answered from
        // the memo of the old one.
        let (t2, _, _) = run(r#"
            [[tenants]]
            name = "b"
            keys = ["sk-b"]
            "#);
        let table2 = Tenants::new(&t2);
        assert_ne!(table.id, table2.id);
        assert_eq!(memo.get(table2.id, b"sk-b"), None);
        assert_eq!(table2.lookup_memo(b"sk-b", 0, &mut memo), Some(0));
        assert_eq!(table.lookup_memo(b"sk-b", 0, &mut memo), Some(1));
        // A key too long to remember is still looked up, and forgets the last one.
        let long = [b'k'; KEY_MEMO_BYTES + 1];
        assert_eq!(table.lookup_memo(&long, 0, &mut memo), None);
        memo.set(
            table.id,
            &long,
            0,
            u64::MAX,
            ([0; KEY_ID_BYTES], NO_KEY_LIMITS),
        );
        assert_eq!(memo.get(table.id, b"sk-b"), None);
        assert_eq!(memo.get(table.id, &long), None);
        // The empty default table remembers nothing.
        memo.set(
            Tenants::default().id,
            b"sk-a",
            0,
            u64::MAX,
            ([0; KEY_ID_BYTES], NO_KEY_LIMITS),
        );
        assert_eq!(memo.get(0, b"sk-a"), None);
        assert!(!format!("{memo:?}").contains("sk-"));
    }

    #[test]
    fn keys_with_limits_of_their_own_are_found_through_the_memo() {
        let (mut t, errs, _) = run(r#"
            [[tenants]]
            name = "a"
            keys = ["sk-a", "sk-a2"]
            [[tenants]]
            name = "b"
            keys = ["sk-b"]
            "#);
        assert!(errs.is_empty(), "{errs:?}");
        let limits = KeyLimits {
            rpm: Some(5),
            tpm: None,
            max_concurrency: None,
            budget_uusd: None,
            carried: None,
            models: None,
            lineage: [9; KEY_ID_BYTES],
        };
        t[0].key_limits = vec![(1, limits.clone())];
        t[1].key_limits = vec![(
            0,
            KeyLimits {
                rpm: Some(7),
                ..limits.clone()
            },
        )];
        let table = Tenants::new(&t);
        assert_eq!(table.limited.len(), 2);
        assert_eq!(
            table.limited[1],
            LimitedKey {
                tenant: 1,
                limits: KeyLimits {
                    rpm: Some(7),
                    ..limits
                }
            }
        );
        let mut memo = KeyMemo::default();
        assert_eq!(table.lookup_memo(b"sk-a", 0, &mut memo), Some(0));
        assert_eq!(memo.key_limit(), None);
        assert_eq!(table.lookup_memo(b"sk-a2", 0, &mut memo), Some(0));
        assert_eq!(memo.key_limit(), Some(0));
        // Remembered: a hit keeps the index.
        assert_eq!(table.lookup_memo(b"sk-a2", 0, &mut memo), Some(0));
        assert_eq!(memo.key_limit(), Some(0));
        assert_eq!(table.lookup_memo(b"sk-b", 0, &mut memo), Some(1));
        assert_eq!(memo.key_limit(), Some(1));
    }

    #[test]
    fn a_key_past_its_expiry_owns_nothing_even_remembered() {
        let (mut t, errs, _) = run(r#"
            [[tenants]]
            name = "a"
            keys = ["sk-a"]
            "#);
        assert!(errs.is_empty(), "{errs:?}");
        t[0].keys[0].expires_unix_ms = 1_000;
        let table = Tenants::new(&t);
        let mut memo = KeyMemo::default();
        assert_eq!(table.lookup(b"sk-a", 999), Some(0));
        assert_eq!(table.lookup_memo(b"sk-a", 999, &mut memo), Some(0));
        assert_eq!(table.lookup(b"sk-a", 1_000), None);
        assert_eq!(table.lookup_memo(b"sk-a", 1_000, &mut memo), None);
    }

    #[test]
    fn presented_key_reads_bearer_then_x_api_key() {
        assert_eq!(
            presented_key(Some(b"Bearer sk-1"), None),
            Some(&b"sk-1"[..])
        );
        assert_eq!(
            presented_key(Some(b"bearer   sk-1 "), None),
            Some(&b"sk-1"[..])
        );
        assert_eq!(
            presented_key(Some(b"Basic abc"), Some(b"sk-2")),
            Some(&b"sk-2"[..])
        );
        assert_eq!(presented_key(Some(b"Bearer "), None), None);
        assert_eq!(presented_key(None, Some(b" ")), None);
        assert_eq!(presented_key(None, None), None);
    }
}
