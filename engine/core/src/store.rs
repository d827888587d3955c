//! The tenant store: tenants and their keys managed at run time (`shardgate-ctl tenants`,
//! `shardgate-ctl keys`, the admin API), beside the `[[tenants]]` of the config file.
//!
//! One JSON document (`[server] tenant_store`), written atomically by `shardgate_core::manage`
//! (a temporary file, fsync, rename, fsync of the directory: a `SIGKILL` at any moment leaves
//! the old or the new document, never a mix), read from disk wherever the config is validated
//! (ctl, the engine's config builder thread; never a shard), and turned into [`TenantConfig`]s
//! by the same validation as `[[tenants]]`. Keys are stored as their SHA-256 only; a new key is
//! shown once, when it is made.
//!
//! I/O-free: the operations take `now` and the random bytes of a new key, so they are tested
//! here; reading and writing the file is `manage`'s.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::tenant::{self, hash_key, hex, KeyLimits, RawTenant, TenantConfig, KEY_ID_BYTES};

/// The journal beside the store's file: one JSON line per change since the file was last
/// written whole (`manage` appends to it and folds it into the file now and then).
pub fn journal_path(store: &str) -> String {
    format!("{store}.journal")
}

/// Lines after which the journal is folded into the store's file once the engine's builder has
/// nothing else to do ([`JOURNAL_IDLE_MS`] without a job).
pub const JOURNAL_FOLD_LINES: usize = 1_024;
/// Lines after which the journal is folded in before the next change, idle or not (a few MB).
pub const JOURNAL_LINES_MAX: usize = 16_384;
/// How long the builder waits without a job before it folds a journal of
/// [`JOURNAL_FOLD_LINES`] in.
pub const JOURNAL_IDLE_MS: u64 = 1_000;

/// The store's format number; a store of another format is refused, never guessed at.
pub const STORE_FORMAT: u32 = 1;
/// Largest store file, bytes (read from disk by the engine's config builder and by ctl; about
/// 250 bytes a key, 150 a tenant).
pub const STORE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most keys the store holds (keys of every state; revoked keys are removed).
pub const STORE_KEYS_MAX: usize = 131_072;
/// Random bytes in a new key (192 bits), written as hex after [`KEY_PREFIX`].
pub const KEY_RANDOM_BYTES: usize = 24;
/// What every key the store makes starts with.
pub const KEY_PREFIX: &str = "sk-sg-";
// A store key is always short enough for a connection's key memo, which is where a key's own
// limits are found on the request path (`tenant::KeyMemo::key_limit`).
const _: () = assert!(KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES <= tenant::KEY_MEMO_BYTES);
/// Characters of a key kept in the clear to recognise it by (`sk-sg-` and 4 hex digits).
pub const KEY_SHOWN_CHARS: usize = 10;
/// Longest tenant or key label, bytes.
pub const LABEL_BYTES_MAX: usize = 64;
/// Longest reason given with an access request or with its denial, bytes.
pub const ACCESS_REASON_BYTES_MAX: usize = 1024;
/// Access requests one tenant may have pending at once.
pub const ACCESS_PENDING_PER_TENANT_MAX: usize = 16;
/// Access requests the store keeps, pending and decided. A new one past it makes room by
/// dropping the oldest decided one (the audit log keeps every decision).
pub const ACCESS_REQUESTS_MAX: usize = 16_384;
/// What every access request's id starts with (then 12 hex digits).
pub const ACCESS_ID_PREFIX: &str = "req_";

/// The whole store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Store {
    pub format: u32,
    /// Raised by one on every change.
    pub version: u64,
    #[serde(default)]
    pub tenants: BTreeMap<String, StoredTenant>,
    /// By key id.
    #[serde(default)]
    pub keys: BTreeMap<String, StoredKey>,
    /// Tenants' requests for models (`POST /v1/access-requests`), by request id. Left out of the
    /// file while there are none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub access_requests: BTreeMap<String, AccessRequest>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            format: STORE_FORMAT,
            version: 0,
            tenants: BTreeMap::new(),
            keys: BTreeMap::new(),
            access_requests: BTreeMap::new(),
        }
    }
}

/// A tenant's settings: the fields of a `[[tenants]]` entry without its keys.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// `None`: every model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections_max: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_tokens: Option<i64>,
    /// Spend per window, US dollars.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_window: Option<String>,
    /// Spend counted before shardgate did (an import), US dollars: it counts against the USD
    /// budget until `spent_until_unix_ms`, in the window holding it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_until_unix_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_max_tokens: Option<i64>,
}

impl Settings {
    /// `other`'s fields where it sets them, ours elsewhere.
    pub fn patched(&self, other: &Settings) -> Settings {
        Settings {
            models: other.models.clone().or_else(|| self.models.clone()),
            rpm: other.rpm.or(self.rpm),
            tpm: other.tpm.or(self.tpm),
            max_concurrency: other.max_concurrency.or(self.max_concurrency),
            connections_max: other.connections_max.or(self.connections_max),
            budget_tokens: other.budget_tokens.or(self.budget_tokens),
            budget_usd: other.budget_usd.or(self.budget_usd),
            budget_window: other
                .budget_window
                .clone()
                .or_else(|| self.budget_window.clone()),
            spent_usd: other.spent_usd.or(self.spent_usd),
            spent_until_unix_ms: other.spent_until_unix_ms.or(self.spent_until_unix_ms),
            weight: other.weight.or(self.weight),
            default_max_tokens: other.default_max_tokens.or(self.default_max_tokens),
        }
    }
}

/// A tenant of the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredTenant {
    #[serde(flatten)]
    pub settings: Settings,
    #[serde(default)]
    pub suspended: bool,
    pub created_unix_ms: u64,
}

/// A key of the store: never the key itself, only its hash and the first characters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredKey {
    pub tenant: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The key's first [`KEY_SHOWN_CHARS`] characters.
    pub prefix: String,
    /// SHA-256 of the key, lowercase hex.
    pub sha256: String,
    pub created_unix_ms: u64,
    /// When the key stops working: its expiry, or the end of a rotation's grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_unix_ms: Option<u64>,
    /// The key that replaced it (`keys rotate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_to: Option<String>,
    /// Its own limits, within its tenant's (`keys create --rpm --tpm --budget-usd`).
    #[serde(default, flatten)]
    pub limits: KeySettings,
    /// The id of the first key of its rotations (itself when `None`): its limits are counted
    /// under that name, so a rotation never resets them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lineage: Option<String>,
}

impl StoredKey {
    /// Its own limits as the engine holds them, counted under its lineage's id.
    pub fn own_limits(&self) -> Result<Option<KeyLimits>, StoreError> {
        // Nearly every key has none: no lineage to work out (this runs per key per version).
        if self.limits.is_empty() {
            return Ok(None);
        }
        let lineage = self
            .lineage
            .as_deref()
            .map_or_else(|| key_id_of(&self.sha256), str::to_owned);
        self.limits.check(id_bytes(&lineage))
    }
}

/// A key's id in the store from its hash's hex: `key_` and its first 12 digits.
pub fn key_id_of(sha256: &str) -> String {
    format!("key_{}", sha256.get(..12).unwrap_or(sha256))
}

/// What a store key adds to a `[[tenants]]` key: its expiry and its own limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExtra {
    pub expires_unix_ms: u64,
    pub limits: Option<KeyLimits>,
}

/// A key's own limits as given (`keys create`, `POST /admin/v1/keys`, an import).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
    /// Requests in flight at once with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrency: Option<i64>,
    /// US dollars per the tenant's budget window (30 days without one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Spend counted before shardgate did, as a tenant's `spent_usd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spent_until_unix_ms: Option<u64>,
    /// The models the key may call, within its tenant's; `None`: its tenant's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
}

impl KeySettings {
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none()
            && self.tpm.is_none()
            && self.max_concurrency.is_none()
            && self.budget_usd.is_none()
            && self.spent_usd.is_none()
            && self.spent_until_unix_ms.is_none()
            && self.models.is_none()
    }

    /// Checked, as the engine holds them (`lineage`: the id's hash bytes).
    fn check(&self, lineage: [u8; KEY_ID_BYTES]) -> Result<Option<KeyLimits>, StoreError> {
        if self.is_empty() {
            return Ok(None);
        }
        let per_minute = |what: &str, v: Option<i64>| match v {
            None => Ok(None),
            Some(n) if (1..=1 << 48).contains(&n) => Ok(u64::try_from(n).ok()),
            Some(n) => err(format!("key {what} must be between 1 and 2^48, got {n}")),
        };
        let mut carried_error = None;
        let has_budget = self.budget_usd.is_some();
        let (usd, until) = (self.spent_usd, self.spent_until_unix_ms);
        let carried = tenant::Carried::read(usd, until, has_budget, |k, r| {
            carried_error.get_or_insert(format!("key {k} {r}"));
        });
        if let Some(message) = carried_error {
            return err(message);
        }
        let models = match &self.models {
            None => None,
            Some(list) if list.iter().any(|m| m == "*") => None,
            Some(list) if list.iter().any(String::is_empty) => {
                return err("key models must not be empty names")
            }
            Some(list) => Some(list.iter().cloned().collect()),
        };
        Ok(Some(KeyLimits {
            rpm: per_minute("rpm", self.rpm)?,
            tpm: per_minute("tpm", self.tpm)?,
            max_concurrency: per_minute("max_concurrency", self.max_concurrency)?,
            carried,
            models,
            budget_uusd: match self.budget_usd {
                None => None,
                Some(usd) => Some(crate::prices::uusd_of(usd, tenant::BUDGET_USD_MAX).map_err(
                    |r| StoreError {
                        kind: ErrorKind::Invalid,
                        message: format!("key budget_usd {r}"),
                    },
                )?),
            },
            lineage,
        }))
    }
}

/// The hash bytes a key id (`key_` and 12 hex digits) names (zeros for an id of another
/// shape, which the store never writes).
fn id_bytes(id: &str) -> [u8; KEY_ID_BYTES] {
    tenant::parse_hex(id.strip_prefix("key_").unwrap_or(id)).unwrap_or([0; KEY_ID_BYTES])
}

/// A key's state at a moment, as `keys list` and the admin API show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Active,
    /// Rotated, and still accepted until its grace ends.
    Rotating,
    Expired,
    /// Its tenant is suspended.
    Suspended,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Active => "active",
            KeyState::Rotating => "rotating",
            KeyState::Expired => "expired",
            KeyState::Suspended => "suspended",
        }
    }
}

/// Where an access request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessStatus {
    /// Waiting for an operator.
    Pending,
    /// Granted: the model was added to the tenant's models.
    Approved,
    /// Refused, with a reason.
    Denied,
}

impl AccessStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            AccessStatus::Pending => "pending",
            AccessStatus::Approved => "approved",
            AccessStatus::Denied => "denied",
        }
    }

    /// The status named `s` (`pending`, `approved`, `denied`).
    pub fn parse(s: &str) -> Option<AccessStatus> {
        [
            AccessStatus::Pending,
            AccessStatus::Approved,
            AccessStatus::Denied,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// One change to the store as its journal holds it: the entries it left (`None`: removed)
/// and the store's version after it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalEntry {
    pub version: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tenants: BTreeMap<String, Option<StoredTenant>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keys: BTreeMap<String, Option<StoredKey>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub access_requests: BTreeMap<String, Option<AccessRequest>>,
}

impl JournalEntry {
    /// As one journal line, with its newline.
    pub fn to_line(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec(self).unwrap_or_default();
        out.push(b'\n');
        out
    }
}

/// The entries of `after` that are not in `before` as they are, and those gone (`None`): one
/// walk of both, in order.
#[cfg(test)]
fn diff_maps<V: Clone + PartialEq>(
    before: &BTreeMap<String, V>,
    after: &BTreeMap<String, V>,
) -> BTreeMap<String, Option<V>> {
    let mut out = BTreeMap::new();
    let (mut a, mut b) = (before.iter().peekable(), after.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => break,
            (Some((ka, _)), None) => {
                out.insert((*ka).clone(), None);
                a.next();
            }
            (None, Some((kb, vb))) => {
                out.insert((*kb).clone(), Some((*vb).clone()));
                b.next();
            }
            (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                std::cmp::Ordering::Less => {
                    out.insert((*ka).clone(), None);
                    a.next();
                }
                std::cmp::Ordering::Greater => {
                    out.insert((*kb).clone(), Some((*vb).clone()));
                    b.next();
                }
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        out.insert((*kb).clone(), Some((*vb).clone()));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
    out
}

fn apply_map<V>(map: &mut BTreeMap<String, V>, changes: BTreeMap<String, Option<V>>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k, v);
            }
            None => {
                map.remove(&k);
            }
        }
    }
}

/// A tenant's request to use a model, and the operator's decision on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRequest {
    pub tenant: String,
    pub model: String,
    /// Why the tenant wants it (may be empty).
    #[serde(default)]
    pub reason: String,
    pub status: AccessStatus,
    pub created_unix_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_unix_ms: Option<u64>,
    /// Who decided: the audit log's actor (`ctl:USER`, `admin:TOKEN_ID`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deny_reason: Option<String>,
    /// The requests per minute the approval set on the tenant (limits are per tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<i64>,
    /// The tokens per minute the approval set on the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<i64>,
}

/// What a change did, for the audit log: the target and its value before and after (keys
/// only as their stored form, never the key).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub action: &'static str,
    pub target: String,
    pub old: Option<serde_json::Value>,
    pub new: Option<serde_json::Value>,
}

/// A new key, to be shown once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewKey {
    pub id: String,
    /// The key itself: printed once by ctl, stored nowhere.
    pub secret: String,
}

/// What the store keeps of a new key: its SHA-256 (hex) and the characters shown of it. Made
/// where the key is made (ctl, the admin API); the key itself never travels further.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHash {
    pub sha256: String,
    pub prefix: String,
}

impl KeyHash {
    /// The key `random` makes (`sk-sg-` and its hex) and what the store keeps of it.
    pub fn make(random: [u8; KEY_RANDOM_BYTES]) -> (String, KeyHash) {
        let mut secret = String::with_capacity(KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
        secret.push_str(KEY_PREFIX);
        for b in random {
            let _ = write!(secret, "{b:02x}");
        }
        let hash = KeyHash {
            sha256: hex(&hash_key(secret.as_bytes())),
            prefix: secret[..KEY_SHOWN_CHARS].to_owned(),
        };
        (secret, hash)
    }

    /// The key's id in the store.
    pub fn id(&self) -> String {
        key_id_of(&self.sha256)
    }

    /// A hash and prefix as the store's own keys have them (64 lowercase hex digits; `sk-sg-`
    /// and 4 hex digits), else why not: a hash that came over the ring is checked again.
    fn check(&self) -> Result<(), StoreError> {
        let hex_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        let rest = self.prefix.strip_prefix(KEY_PREFIX).unwrap_or("-");
        if self.sha256.len() == 64
            && hex_ok(&self.sha256)
            && self.prefix.len() == KEY_SHOWN_CHARS
            && hex_ok(rest)
        {
            Ok(())
        } else {
            err("a new key's hash must be 64 lowercase hex digits and its prefix sk-sg- and 4 hex digits")
        }
    }
}

/// What kind of refusal a change met: the admin API answers 404, 409 and 400 for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No such tenant or key.
    NotFound,
    /// The name is taken.
    Exists,
    /// A bad value, or a change the key's state does not allow.
    Invalid,
}

/// Why a change to the store was refused (nothing was changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    pub kind: ErrorKind,
    pub message: String,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<StoreError> for String {
    fn from(e: StoreError) -> String {
        e.message
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, StoreError> {
    Err(StoreError {
        kind: ErrorKind::Invalid,
        message: msg.into(),
    })
}

fn check_label(what: &str, s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= LABEL_BYTES_MAX
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@'));
    if ok {
        Ok(())
    } else {
        err(format!(
            "{what} {s:?}: must be 1 to {LABEL_BYTES_MAX} characters of A-Z a-z 0-9 - _ . @"
        ))
    }
}

fn value<T: Serialize>(v: &T) -> Option<serde_json::Value> {
    serde_json::to_value(v).ok()
}

impl Store {
    /// Read a store; `Err` says why it is refused (never a partial store).
    pub fn from_json(bytes: &[u8]) -> Result<Store, String> {
        Self::parse(bytes).map_err(String::from)
    }

    fn parse(bytes: &[u8]) -> Result<Store, StoreError> {
        if bytes.len() > STORE_BYTES_MAX {
            return err(format!("{} bytes; at most {STORE_BYTES_MAX}", bytes.len()));
        }
        let s: Store = serde_json::from_slice(bytes).map_err(|e| StoreError {
            kind: ErrorKind::Invalid,
            message: e.to_string(),
        })?;
        s.check()?;
        Ok(s)
    }

    /// What a store must hold to be read: its format, its limits, every key's and access
    /// request's tenant.
    fn check(&self) -> Result<(), StoreError> {
        let s = self;
        if s.format != STORE_FORMAT {
            return err(format!(
                "format {} (this build reads format {STORE_FORMAT})",
                s.format
            ));
        }
        if s.keys.len() > STORE_KEYS_MAX {
            return err(format!("{} keys; at most {STORE_KEYS_MAX}", s.keys.len()));
        }
        for (id, k) in &s.keys {
            if let Err(e) = k.own_limits() {
                return err(format!("key {id}: {}", e.message));
            }
            if !s.tenants.contains_key(&k.tenant) {
                return err(format!(
                    "key {id}: its tenant {:?} is not in the store",
                    k.tenant
                ));
            }
        }
        if s.access_requests.len() > ACCESS_REQUESTS_MAX {
            return err(format!(
                "{} access requests; at most {ACCESS_REQUESTS_MAX}",
                s.access_requests.len()
            ));
        }
        for (id, r) in &s.access_requests {
            if !s.tenants.contains_key(&r.tenant) {
                return err(format!(
                    "access request {id}: its tenant {:?} is not in the store",
                    r.tenant
                ));
            }
        }
        Ok(())
    }

    /// The store from its file and its journal (`journal`: JSON lines, each a
    /// [`JournalEntry`], applied in order). A last line cut short (a crash while it was
    /// appended) is left out; any other line that does not read refuses the store.
    pub fn from_parts(base: &[u8], journal: &[u8]) -> Result<Store, String> {
        let mut s = if base.is_empty() {
            Store::default()
        } else {
            Store::from_json(base)?
        };
        let mut lines = journal.split(|&b| b == b'\n').peekable();
        let mut n = 0usize;
        while let Some(line) = lines.next() {
            n += 1;
            let last = lines.peek().is_none();
            if line.trim_ascii().is_empty() {
                continue;
            }
            match serde_json::from_slice::<JournalEntry>(line) {
                Ok(e) => s.apply(e),
                // Cut short by a crash: what it held was never acknowledged.
                Err(_) if last => break,
                Err(e) => return Err(format!("journal line {n}: {e}")),
            }
        }
        s.check().map_err(String::from)?;
        Ok(s)
    }

    /// What differs from `before` (this store after a change): each tenant, key and access
    /// request that is new, changed or gone, as one journal line. (The engine's builder finds
    /// it from what the change touched, `store_op::apply`, without a copy of the store; the
    /// tests hold the two equal.)
    #[cfg(test)]
    pub fn diff(&self, before: &Store) -> JournalEntry {
        JournalEntry {
            version: self.version,
            tenants: diff_maps(&before.tenants, &self.tenants),
            keys: diff_maps(&before.keys, &self.keys),
            access_requests: diff_maps(&before.access_requests, &self.access_requests),
        }
    }

    /// Take a change back: `undo` holds the entries it changed as they were before, and the
    /// version before it.
    pub fn restore(&mut self, undo: JournalEntry) {
        let version = undo.version;
        self.apply(undo);
        self.version = version;
    }

    /// What takes `entries` back once they are applied: the tenants, keys and access
    /// requests they name as they are now, and the version now.
    pub fn undo_of(&self, entries: &[JournalEntry]) -> JournalEntry {
        fn now<V: Clone>(
            map: &BTreeMap<String, V>,
            names: impl Iterator<Item = String>,
        ) -> BTreeMap<String, Option<V>> {
            names.map(|n| (n.clone(), map.get(&n).cloned())).collect()
        }
        JournalEntry {
            version: self.version,
            tenants: now(
                &self.tenants,
                entries.iter().flat_map(|e| e.tenants.keys().cloned()),
            ),
            keys: now(
                &self.keys,
                entries.iter().flat_map(|e| e.keys.keys().cloned()),
            ),
            access_requests: now(
                &self.access_requests,
                entries
                    .iter()
                    .flat_map(|e| e.access_requests.keys().cloned()),
            ),
        }
    }

    /// Apply a journal line (idempotent: applying it again changes nothing).
    pub fn apply(&mut self, e: JournalEntry) {
        apply_map(&mut self.tenants, e.tenants);
        apply_map(&mut self.keys, e.keys);
        apply_map(&mut self.access_requests, e.access_requests);
        self.version = self.version.max(e.version);
    }

    /// The store as its file holds it (pretty, sorted: a diff of two versions reads well).
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    /// The tenants as `[[tenants]]` entries (keys as `sha256:`), each with its keys' expiries
    /// in the same order, for validation beside the config's.
    pub fn raw_tenants(&self) -> Vec<(RawTenant, Vec<KeyExtra>, bool)> {
        let by_tenant = self.keys_by_tenant();
        Self::raw_of(self.tenants.iter(), by_tenant)
    }

    /// [`Store::raw_tenants`] of the tenants named in `names` that the store has, in the same
    /// order. Their keys are looked for among `candidates` (key ids: every key of theirs must
    /// be one, e.g. the keys they had and the keys a change touched), not in all the keys.
    pub fn raw_tenants_named(
        &self,
        names: &std::collections::BTreeSet<String>,
        candidates: &std::collections::BTreeSet<String>,
    ) -> Vec<(RawTenant, Vec<KeyExtra>, bool)> {
        let mut by_tenant: BTreeMap<&str, Vec<&StoredKey>> = BTreeMap::new();
        // In id order, as `keys_by_tenant` gives them.
        for k in candidates.iter().filter_map(|id| self.keys.get(id)) {
            if names.contains(&k.tenant) {
                by_tenant.entry(k.tenant.as_str()).or_default().push(k);
            }
        }
        let tenants = names.iter().filter_map(|n| self.tenants.get_key_value(n));
        Self::raw_of(tenants, by_tenant)
    }

    fn raw_of<'a>(
        tenants: impl Iterator<Item = (&'a String, &'a StoredTenant)>,
        mut by_tenant: BTreeMap<&str, Vec<&StoredKey>>,
    ) -> Vec<(RawTenant, Vec<KeyExtra>, bool)> {
        tenants
            .map(|(name, t)| {
                let keys = by_tenant.remove(name.as_str()).unwrap_or_default();
                let raw = RawTenant::from_store(
                    name,
                    keys.iter()
                        .map(|k| format!("sha256:{}", k.sha256))
                        .collect(),
                    &t.settings,
                );
                let extra = keys
                    .iter()
                    .map(|k| KeyExtra {
                        expires_unix_ms: k.expires_unix_ms.unwrap_or(u64::MAX),
                        // Checked when the store was read (`parse`).
                        limits: k.own_limits().ok().flatten(),
                    })
                    .collect();
                (raw, extra, t.suspended)
            })
            .collect()
    }

    /// Each tenant's keys, in one pass over the keys.
    pub fn keys_by_tenant(&self) -> BTreeMap<&str, Vec<&StoredKey>> {
        let mut out: BTreeMap<&str, Vec<&StoredKey>> = BTreeMap::new();
        for k in self.keys.values() {
            out.entry(k.tenant.as_str()).or_default().push(k);
        }
        out
    }

    /// A key's state at `now_unix_ms`.
    pub fn key_state(&self, k: &StoredKey, now_unix_ms: u64) -> KeyState {
        if k.expires_unix_ms.is_some_and(|e| now_unix_ms >= e) {
            KeyState::Expired
        } else if self.tenants.get(&k.tenant).is_some_and(|t| t.suspended) {
            KeyState::Suspended
        } else if k.rotated_to.is_some() {
            KeyState::Rotating
        } else {
            KeyState::Active
        }
    }

    fn bump(&mut self) {
        self.version = self.version.saturating_add(1);
    }

    /// Add tenant `name`, unless the store or the running config (`running`: its tenants, the
    /// file's `[[tenants]]` and the store's) has one of that name.
    pub fn add_tenant(
        &mut self,
        name: &str,
        settings: Settings,
        running: &[TenantConfig],
        now_unix_ms: u64,
    ) -> Result<Change, StoreError> {
        check_label("tenant", name)?;
        if self.tenants.contains_key(name) || running.iter().any(|t| t.name == name) {
            return Err(StoreError {
                kind: ErrorKind::Exists,
                message: format!("tenant {name:?} exists already"),
            });
        }
        let t = StoredTenant {
            settings,
            suspended: false,
            created_unix_ms: now_unix_ms,
        };
        check_settings(name, &t.settings)?;
        let new = value(&t);
        self.tenants.insert(name.to_owned(), t);
        self.bump();
        Ok(Change {
            action: "tenants.add",
            target: name.to_owned(),
            old: None,
            new,
        })
    }

    /// Copy tenants of the config file (`[[tenants]]`, validated) into the store, keys and all:
    /// from then on the store's entry is the one in force. Tenants the store has already are
    /// left alone; `Invalid` when nothing is left to import.
    pub fn import_tenants(
        &mut self,
        from_file: &[TenantConfig],
        now_unix_ms: u64,
    ) -> Result<Change, StoreError> {
        let new: Vec<&TenantConfig> = from_file
            .iter()
            .filter(|t| !self.tenants.contains_key(&t.name))
            .collect();
        if new.is_empty() {
            return err("no tenant of the config file is left to import");
        }
        let mut names = Vec::with_capacity(new.len());
        for t in new {
            let settings = Settings {
                models: match &t.models {
                    tenant::Models::All => None,
                    tenant::Models::Only(list) => Some(list.clone()),
                },
                rpm: t.rpm.and_then(|v| i64::try_from(v).ok()),
                tpm: t.tpm.and_then(|v| i64::try_from(v).ok()),
                max_concurrency: t.max_concurrency.and_then(|v| i64::try_from(v).ok()),
                connections_max: t.connections_max.and_then(|v| i64::try_from(v).ok()),
                budget_tokens: t.budget.and_then(|b| i64::try_from(b.tokens).ok()),
                budget_usd: t.budget_usd.map(|b| b.uusd as f64 / 1_000_000.0),
                budget_window: t
                    .budget
                    .map(|b| b.window)
                    .or(t.budget_usd.map(|b| b.window))
                    .map(|w| humantime::format_duration(w).to_string()),
                spent_usd: t
                    .budget_usd
                    .and_then(|b| b.carried)
                    .map(|c| c.uusd as f64 / 1_000_000.0),
                spent_until_unix_ms: t
                    .budget_usd
                    .and_then(|b| b.carried)
                    .map(|c| c.until_unix_ms),
                weight: Some(i64::from(t.weight)),
                default_max_tokens: i64::try_from(t.default_max_tokens).ok(),
            };
            self.tenants.insert(
                t.name.clone(),
                StoredTenant {
                    settings,
                    suspended: t.suspended,
                    created_unix_ms: now_unix_ms,
                },
            );
            for k in &t.keys {
                let sha256 = hex(&k.hash);
                let id = key_id_of(&sha256);
                self.keys.entry(id).or_insert_with(|| StoredKey {
                    tenant: t.name.clone(),
                    name: Some("imported".to_owned()),
                    prefix: String::new(),
                    sha256,
                    created_unix_ms: now_unix_ms,
                    expires_unix_ms: (k.expires_unix_ms != u64::MAX).then_some(k.expires_unix_ms),
                    rotated_to: None,
                    limits: KeySettings::default(),
                    lineage: None,
                });
            }
            names.push(t.name.clone());
        }
        self.bump();
        Ok(Change {
            action: "tenants.import",
            target: names.join(","),
            old: None,
            new: value(&names),
        })
    }

    /// Change the settings `patch` sets on tenant `name`.
    pub fn set_tenant(&mut self, name: &str, patch: &Settings) -> Result<Change, StoreError> {
        let t = self.tenant_mut(name)?;
        let old = value(&*t);
        let settings = t.settings.patched(patch);
        check_settings(name, &settings)?;
        t.settings = settings;
        let new = value(&*t);
        self.bump();
        Ok(Change {
            action: "tenants.set",
            target: name.to_owned(),
            old,
            new,
        })
    }

    /// Suspend (`true`) or resume tenant `name`.
    pub fn suspend_tenant(&mut self, name: &str, suspended: bool) -> Result<Change, StoreError> {
        let t = self.tenant_mut(name)?;
        let old = value(&*t);
        t.suspended = suspended;
        let new = value(&*t);
        self.bump();
        Ok(Change {
            action: if suspended {
                "tenants.suspend"
            } else {
                "tenants.resume"
            },
            target: name.to_owned(),
            old,
            new,
        })
    }

    /// Remove tenant `name` and every key of it.
    pub fn remove_tenant(&mut self, name: &str) -> Result<Change, StoreError> {
        let t = self
            .tenants
            .remove(name)
            .ok_or_else(|| unknown_tenant(name))?;
        self.keys.retain(|_, k| k.tenant != name);
        self.access_requests.retain(|_, r| r.tenant != name);
        self.bump();
        Ok(Change {
            action: "tenants.remove",
            target: name.to_owned(),
            old: value(&t),
            new: None,
        })
    }

    /// Make a key for `tenant` from `random` (the key is `sk-sg-` and its hex), valid for
    /// `expires_in` if given, with `limits` of its own within the tenant's.
    pub fn create_key(
        &mut self,
        tenant: &str,
        name: Option<&str>,
        expires_in: Option<Duration>,
        limits: KeySettings,
        random: [u8; KEY_RANDOM_BYTES],
        now_unix_ms: u64,
    ) -> Result<(NewKey, Change), StoreError> {
        let (secret, hash) = KeyHash::make(random);
        let (id, change) =
            self.create_key_hashed(tenant, name, expires_in, limits, hash, now_unix_ms)?;
        Ok((NewKey { id, secret }, change))
    }

    /// [`Store::create_key`] for a key made elsewhere: only its hash and prefix are given.
    /// The key's id and the change.
    pub fn create_key_hashed(
        &mut self,
        tenant: &str,
        name: Option<&str>,
        expires_in: Option<Duration>,
        limits: KeySettings,
        hash: KeyHash,
        now_unix_ms: u64,
    ) -> Result<(String, Change), StoreError> {
        self.make_key(tenant, name, expires_in, (limits, None), hash, now_unix_ms)
    }

    fn make_key(
        &mut self,
        tenant: &str,
        name: Option<&str>,
        expires_in: Option<Duration>,
        (limits, lineage): (KeySettings, Option<String>),
        hash: KeyHash,
        now_unix_ms: u64,
    ) -> Result<(String, Change), StoreError> {
        if !self.tenants.contains_key(tenant) {
            return Err(unknown_tenant(tenant));
        }
        if let Some(n) = name {
            check_label("key name", n)?;
        }
        if self.keys.len() >= STORE_KEYS_MAX {
            return err(format!("the store holds {STORE_KEYS_MAX} keys already"));
        }
        hash.check()?;
        let id = hash.id();
        if self.keys.contains_key(&id) {
            return err("the random bytes gave a key that exists already; try again");
        }
        let limited_key = !limits.is_empty();
        let k = StoredKey {
            tenant: tenant.to_owned(),
            name: name.map(str::to_owned),
            prefix: hash.prefix,
            sha256: hash.sha256,
            created_unix_ms: now_unix_ms,
            expires_unix_ms: expires_in.map(|d| now_unix_ms.saturating_add(ms(d))),
            rotated_to: None,
            limits,
            lineage,
        };
        k.own_limits()?;
        if limited_key {
            let limited = self.keys.values().filter(|k| !k.limits.is_empty()).count();
            if limited >= tenant::KEYS_LIMITED_MAX {
                return err(format!(
                    "the store holds {} keys with limits of their own already",
                    tenant::KEYS_LIMITED_MAX
                ));
            }
        }
        let change = Change {
            action: "keys.create",
            target: id.clone(),
            old: None,
            new: value(&k),
        };
        self.keys.insert(id.clone(), k);
        self.bump();
        Ok((id, change))
    }

    /// Replace key `id` with a new one for the same tenant, same name and same expiry; the
    /// old one keeps working for `grace`, then stops.
    pub fn rotate_key(
        &mut self,
        id: &str,
        grace: Duration,
        random: [u8; KEY_RANDOM_BYTES],
        now_unix_ms: u64,
    ) -> Result<(NewKey, Change), StoreError> {
        let (secret, hash) = KeyHash::make(random);
        let (new, change) = self.rotate_key_hashed(id, grace, hash, now_unix_ms)?;
        Ok((NewKey { id: new, secret }, change))
    }

    /// [`Store::rotate_key`] for a new key made elsewhere: the new key's id and the change.
    pub fn rotate_key_hashed(
        &mut self,
        id: &str,
        grace: Duration,
        hash: KeyHash,
        now_unix_ms: u64,
    ) -> Result<(String, Change), StoreError> {
        let old = self.keys.get(id).ok_or_else(|| unknown_key(id))?.clone();
        if old.rotated_to.is_some() {
            return err(format!("key {id} was rotated already"));
        }
        if old.expires_unix_ms.is_some_and(|e| now_unix_ms >= e) {
            return err(format!("key {id} has expired"));
        }
        let expires_in = old
            .expires_unix_ms
            .map(|e| Duration::from_millis(e.saturating_sub(now_unix_ms)));
        // The new key carries the old one's limits, counted under the same lineage: its
        // requests, tokens and spend go on from where the old key's stand.
        let lineage = old.lineage.clone().unwrap_or_else(|| id.to_owned());
        let (new, _) = self.make_key(
            &old.tenant,
            old.name.as_deref(),
            expires_in,
            (old.limits.clone(), Some(lineage)),
            hash,
            now_unix_ms,
        )?;
        let end = now_unix_ms.saturating_add(ms(grace));
        let k = self.keys.get_mut(id).ok_or_else(|| unknown_key(id))?;
        k.rotated_to = Some(new.clone());
        k.expires_unix_ms = Some(k.expires_unix_ms.map_or(end, |e| e.min(end)));
        let change = Change {
            action: "keys.rotate",
            target: id.to_owned(),
            old: value(&old),
            new: value(&*k),
        };
        // One version for the whole rotation (create_key bumped it once already).
        Ok((new, change))
    }

    /// Revoke key `id`: it is removed (its hash is kept nowhere).
    pub fn revoke_key(&mut self, id: &str) -> Result<Change, StoreError> {
        let k = self.keys.remove(id).ok_or_else(|| unknown_key(id))?;
        self.bump();
        Ok(Change {
            action: "keys.revoke",
            target: id.to_owned(),
            old: value(&k),
            new: None,
        })
    }

    /// Tenant `tenant` asks for `model`, saying `reason`: a pending request, whose id is the
    /// change's `target`. Refused for a tenant not in the store (`NotFound`), a model it may
    /// use already, a bad model name or reason, too many pending requests (`Invalid`), and
    /// the same request pending already (`Exists`).
    pub fn request_access(
        &mut self,
        tenant: &str,
        model: &str,
        reason: &str,
        now_unix_ms: u64,
    ) -> Result<Change, StoreError> {
        let t = self
            .tenants
            .get(tenant)
            .ok_or_else(|| unknown_tenant(tenant))?;
        check_model(model)?;
        check_reason("reason", reason)?;
        let allowed = match &t.settings.models {
            None => true,
            Some(list) => list.iter().any(|m| m == model || m == "*"),
        };
        if allowed {
            return err(format!(
                "tenant {tenant:?} may use model {model:?} already: no request is needed"
            ));
        }
        let mut pending = 0;
        for (id, r) in &self.access_requests {
            if r.tenant != tenant || r.status != AccessStatus::Pending {
                continue;
            }
            if r.model == model {
                return Err(StoreError {
                    kind: ErrorKind::Exists,
                    message: format!("access request {id} for model {model:?} is pending already"),
                });
            }
            pending += 1;
        }
        if pending >= ACCESS_PENDING_PER_TENANT_MAX {
            return err(format!(
                "tenant {tenant:?} has {pending} access requests pending (at most \
                 {ACCESS_PENDING_PER_TENANT_MAX}); wait for the operators to decide on them"
            ));
        }
        if self.access_requests.len() >= ACCESS_REQUESTS_MAX {
            let oldest_decided = self
                .access_requests
                .iter()
                .filter(|(_, r)| r.status != AccessStatus::Pending)
                .min_by_key(|(_, r)| r.decided_unix_ms)
                .map(|(id, _)| id.clone());
            match oldest_decided {
                Some(id) => {
                    self.access_requests.remove(&id);
                }
                None => {
                    return err(format!(
                        "the store holds {ACCESS_REQUESTS_MAX} pending access requests; the \
                         operators must decide on some first"
                    ))
                }
            }
        }
        // The id is the store's version after this change: versions only grow, so ids are
        // never reused.
        let id = format!("{ACCESS_ID_PREFIX}{:012x}", self.version.saturating_add(1));
        if self.access_requests.contains_key(&id) {
            return err("the store's version gave an access request id that exists already");
        }
        let r = AccessRequest {
            tenant: tenant.to_owned(),
            model: model.to_owned(),
            reason: reason.to_owned(),
            status: AccessStatus::Pending,
            created_unix_ms: now_unix_ms,
            decided_unix_ms: None,
            decided_by: None,
            deny_reason: None,
            rpm: None,
            tpm: None,
        };
        let new = value(&r);
        self.access_requests.insert(id.clone(), r);
        self.bump();
        Ok(Change {
            action: "access.request",
            target: id,
            old: None,
            new,
        })
    }

    /// Approve pending request `id` as `actor`: its model is added to the tenant's models at
    /// once (nothing to add when the tenant may use every model), and `rpm`/`tpm`, when given,
    /// become the tenant's (limits are per tenant, not per model).
    pub fn approve_access(
        &mut self,
        id: &str,
        rpm: Option<i64>,
        tpm: Option<i64>,
        actor: &str,
        now_unix_ms: u64,
    ) -> Result<Change, StoreError> {
        let r = self.pending_request(id)?.clone();
        let t = self
            .tenants
            .get(&r.tenant)
            .ok_or_else(|| unknown_tenant(&r.tenant))?;
        let mut settings = t.settings.patched(&Settings {
            rpm,
            tpm,
            ..Settings::default()
        });
        if let Some(list) = &mut settings.models {
            if !list.iter().any(|m| *m == r.model || m == "*") {
                list.push(r.model.clone());
            }
        }
        check_settings(&r.tenant, &settings)?;
        let old = serde_json::json!({"request": value(&r), "tenant": value(t)});
        let t = self.tenant_mut(&r.tenant)?;
        t.settings = settings;
        let tenant_now = value(&*t);
        let req = self
            .access_requests
            .get_mut(id)
            .ok_or_else(|| unknown_request(id))?;
        req.status = AccessStatus::Approved;
        req.decided_unix_ms = Some(now_unix_ms);
        req.decided_by = Some(actor.to_owned());
        req.rpm = rpm;
        req.tpm = tpm;
        let new = serde_json::json!({"request": value(&*req), "tenant": tenant_now});
        self.bump();
        Ok(Change {
            action: "access.approve",
            target: id.to_owned(),
            old: Some(old),
            new: Some(new),
        })
    }

    /// Deny pending request `id` as `actor`, saying why (`reason`, required).
    pub fn deny_access(
        &mut self,
        id: &str,
        reason: &str,
        actor: &str,
        now_unix_ms: u64,
    ) -> Result<Change, StoreError> {
        if reason.trim().is_empty() {
            return err("a denial needs a reason, which the tenant sees");
        }
        check_reason("deny reason", reason)?;
        let old = value(self.pending_request(id)?);
        let req = self
            .access_requests
            .get_mut(id)
            .ok_or_else(|| unknown_request(id))?;
        req.status = AccessStatus::Denied;
        req.decided_unix_ms = Some(now_unix_ms);
        req.decided_by = Some(actor.to_owned());
        req.deny_reason = Some(reason.to_owned());
        let new = value(&*req);
        self.bump();
        Ok(Change {
            action: "access.deny",
            target: id.to_owned(),
            old,
            new,
        })
    }

    /// Request `id`, if it is still pending.
    fn pending_request(&self, id: &str) -> Result<&AccessRequest, StoreError> {
        let r = self
            .access_requests
            .get(id)
            .ok_or_else(|| unknown_request(id))?;
        if r.status != AccessStatus::Pending {
            return err(format!(
                "access request {id} was {} already; only a pending request can be decided",
                r.status.as_str()
            ));
        }
        Ok(r)
    }

    fn tenant_mut(&mut self, name: &str) -> Result<&mut StoredTenant, StoreError> {
        self.tenants
            .get_mut(name)
            .ok_or_else(|| unknown_tenant(name))
    }
}

fn unknown_tenant(name: &str) -> StoreError {
    StoreError {
        kind: ErrorKind::NotFound,
        message: format!("no tenant {name:?} in the tenant store"),
    }
}

fn unknown_key(id: &str) -> StoreError {
    StoreError {
        kind: ErrorKind::NotFound,
        message: format!("no key {id} in the tenant store"),
    }
}

fn unknown_request(id: &str) -> StoreError {
    StoreError {
        kind: ErrorKind::NotFound,
        message: format!("no access request {id} in the tenant store"),
    }
}

/// The refusal of an access request from `tenant`, a tenant of the config file's
/// `[[tenants]]` that is not in the store: only the store's tenants file requests.
pub fn config_only_tenant(tenant: &str) -> StoreError {
    StoreError {
        kind: ErrorKind::Invalid,
        message: format!(
            "tenant {tenant:?} is defined in the gateway's config file ([[tenants]]), not in its \
             tenant store, so it cannot file access requests; the operators can import it with \
             `shardgate-ctl tenants import`"
        ),
    }
}

/// A model an access request may name: 1 to `MODEL_BYTES_MAX` printable ASCII characters
/// without quotes or backslashes, and not `*` (which would grant every model).
fn check_model(model: &str) -> Result<(), StoreError> {
    let max = crate::limits::MODEL_BYTES_MAX;
    if model == "*" {
        return err("\"*\" (every model) cannot be requested; ask for the models one by one");
    }
    let ok = !model.is_empty()
        && model.len() <= max
        && model
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if ok {
        Ok(())
    } else {
        err(format!(
            "model {model:?}: must be 1 to {max} printable ASCII characters without spaces, \
             quotes or backslashes"
        ))
    }
}

/// A reason (an access request's or a denial's): at most `ACCESS_REASON_BYTES_MAX` bytes, no
/// control characters (it is shown in one line of `shardgate-ctl access list`).
fn check_reason(what: &str, reason: &str) -> Result<(), StoreError> {
    if reason.len() > ACCESS_REASON_BYTES_MAX {
        return err(format!(
            "{what}: {} bytes; at most {ACCESS_REASON_BYTES_MAX}",
            reason.len()
        ));
    }
    if reason.chars().any(char::is_control) {
        return err(format!("{what}: no control characters (line breaks, tabs)"));
    }
    Ok(())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Validate a tenant's settings as `[[tenants]]` would (a key stands in for its keys).
fn check_settings(name: &str, settings: &Settings) -> Result<(), StoreError> {
    let raw = RawTenant::from_store(name, vec![format!("sha256:{}", "0".repeat(64))], settings);
    let mut errors = Vec::new();
    tenant::validate(
        vec![raw],
        |_| String::new(),
        |field, reason| errors.push(format!("{field}: {reason}")),
        |_| {},
    );
    match errors.is_empty() {
        true => Ok(()),
        false => err(errors.join("; ")),
    }
}

/// A tenant as `[[tenants]]` writes it (`shardgate-ctl tenants export`).
#[derive(Serialize)]
struct ExportTenant<'a> {
    name: &'a str,
    keys: Vec<String>,
    #[serde(flatten)]
    settings: &'a Settings,
}

#[derive(Serialize)]
struct ExportFile<'a> {
    tenants: Vec<ExportTenant<'a>>,
}

impl Store {
    /// The store as `[[tenants]]` entries of a config file (keys as `sha256:`), for
    /// `shardgate-ctl tenants export`. What `[[tenants]]` cannot say is written as comments
    /// above them: suspended tenants, keys that expire or are in a rotation's grace (exported
    /// as keys that do not expire), keys already expired at `now_unix_ms` and tenants without a
    /// live key (both left out).
    pub fn to_toml(&self, now_unix_ms: u64) -> Result<String, String> {
        let mut notes = Vec::new();
        let by_tenant = self.keys_by_tenant();
        let mut tenants = Vec::with_capacity(self.tenants.len());
        for (name, t) in &self.tenants {
            if t.suspended {
                notes.push(format!("tenant {name:?} is suspended in the store"));
            }
            let mut keys = Vec::new();
            for k in by_tenant.get(name.as_str()).into_iter().flatten() {
                let id = key_id_of(&k.sha256);
                match k.expires_unix_ms {
                    Some(e) if e <= now_unix_ms => {
                        notes.push(format!("key {id} of {name:?} has expired: left out"));
                        continue;
                    }
                    Some(e) => notes.push(format!(
                        "key {id} of {name:?} expires at unix ms {e}: exported without expiry"
                    )),
                    None => {}
                }
                keys.push(format!("sha256:{}", k.sha256));
            }
            if keys.is_empty() {
                notes.push(format!(
                    "tenant {name:?} has no live key: left out (a [[tenants]] entry needs one)"
                ));
                continue;
            }
            tenants.push(ExportTenant {
                name,
                keys,
                settings: &t.settings,
            });
        }
        let body = toml::to_string(&ExportFile { tenants }).map_err(|e| e.to_string())?;
        let mut out = format!(
            "# The tenant store (version {}) as [[tenants]] entries; keys as their SHA-256.\n",
            self.version
        );
        for n in notes {
            out.push_str("# ");
            out.push_str(&n);
            out.push('\n');
        }
        out.push('\n');
        out.push_str(&body);
        Ok(out)
    }
}

/// Set each store tenant's key expiries and suspension on its validated config; `configs` are
/// the validated tenants in the order of [`Store::raw_tenants`].
pub fn finish(configs: &mut [TenantConfig], extra: &[(Vec<KeyExtra>, bool)]) {
    for (t, (keys, suspended)) in configs.iter_mut().zip(extra) {
        t.suspended = *suspended;
        for (j, (k, e)) in t.keys.iter_mut().zip(keys).enumerate() {
            k.expires_unix_ms = e.expires_unix_ms;
            if let (Some(l), Ok(j)) = (e.limits.clone(), u32::try_from(j)) {
                t.key_limits.push((j, l));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn store_with(name: &str) -> Store {
        let mut s = Store::default();
        s.add_tenant(name, Settings::default(), &[], T0)
            .expect("ok");
        s
    }

    /// A key of `tenant` without limits or expiry, made from `[1; KEY_RANDOM_BYTES]`.
    fn key_of(s: &mut Store, tenant: &str) -> NewKey {
        s.create_key(
            tenant,
            None,
            None,
            KeySettings::default(),
            [1; KEY_RANDOM_BYTES],
            T0,
        )
        .expect("key")
        .0
    }

    #[test]
    fn a_key_is_shown_once_and_stored_as_its_hash() {
        let mut s = store_with("team-a");
        let (k, change) = s
            .create_key(
                "team-a",
                Some("ci"),
                None,
                KeySettings::default(),
                [7; KEY_RANDOM_BYTES],
                T0,
            )
            .expect("ok");
        assert!(k.secret.starts_with("sk-sg-0707"));
        assert_eq!(k.secret.len(), KEY_PREFIX.len() + 2 * KEY_RANDOM_BYTES);
        let json = String::from_utf8(s.to_json()).expect("ok");
        assert!(!json.contains(&k.secret), "the key is in the store");
        assert!(
            !format!("{change:?}").contains(&k.secret),
            "the key is in the audit"
        );
        let stored = &s.keys[&k.id];
        assert_eq!(stored.sha256, hex(&hash_key(k.secret.as_bytes())));
        assert_eq!(stored.prefix, "sk-sg-0707");
        // It round-trips and validates into a tenant that owns the key.
        let back = Store::from_json(json.as_bytes()).expect("ok");
        assert_eq!(back, s);
        let (raws, extra): (Vec<_>, Vec<_>) = back
            .raw_tenants()
            .into_iter()
            .map(|(r, e, sus)| (r, (e, sus)))
            .unzip();
        let mut errors = Vec::new();
        let mut cfgs = tenant::validate(
            raws,
            |_| String::new(),
            |f, r| errors.push(format!("{f}: {r}")),
            |_| {},
        );
        assert!(errors.is_empty(), "{errors:?}");
        finish(&mut cfgs, &extra);
        let table = tenant::Tenants::new(&cfgs);
        assert_eq!(table.lookup(k.secret.as_bytes(), T0), Some(0));
    }

    #[test]
    fn rotation_keeps_the_old_key_for_its_grace_only() {
        let mut s = store_with("a");
        let (old, _) = s
            .create_key(
                "a",
                None,
                None,
                KeySettings::default(),
                [1; KEY_RANDOM_BYTES],
                T0,
            )
            .expect("ok");
        let grace = Duration::from_secs(60);
        let (new, _) = s
            .rotate_key(&old.id, grace, [2; KEY_RANDOM_BYTES], T0)
            .expect("ok");
        assert_eq!(s.keys[&old.id].rotated_to.as_deref(), Some(new.id.as_str()));
        assert_eq!(s.key_state(&s.keys[&old.id], T0), KeyState::Rotating);
        assert_eq!(
            s.key_state(&s.keys[&old.id], T0 + 60_000),
            KeyState::Expired
        );
        assert_eq!(s.key_state(&s.keys[&new.id], T0 + 60_000), KeyState::Active);
        assert!(s
            .rotate_key(&old.id, grace, [3; KEY_RANDOM_BYTES], T0)
            .is_err());
        let (raws, extra): (Vec<_>, Vec<_>) = s
            .raw_tenants()
            .into_iter()
            .map(|(r, e, x)| (r, (e, x)))
            .unzip();
        let mut cfgs = tenant::validate(raws, |_| String::new(), |_, _| panic!(), |_| {});
        finish(&mut cfgs, &extra);
        let table = tenant::Tenants::new(&cfgs);
        for (at, old_ok) in [(T0, true), (T0 + 59_999, true), (T0 + 60_000, false)] {
            assert_eq!(
                table.lookup(old.secret.as_bytes(), at).is_some(),
                old_ok,
                "{at}"
            );
            assert_eq!(table.lookup(new.secret.as_bytes(), at), Some(0));
        }
    }

    #[test]
    fn changes_refuse_what_validation_would_and_touch_nothing_then() {
        let mut s = store_with("a");
        let before = s.clone();
        assert!(s.add_tenant("a", Settings::default(), &[], T0).is_err());
        let boot = file_tenants("[[tenants]]\nname = \"boot\"\nkeys = [\"sk-boot\"]\n");
        assert!(s
            .add_tenant("boot", Settings::default(), &boot, T0)
            .is_err());
        assert!(s
            .add_tenant("bad name", Settings::default(), &[], T0)
            .is_err());
        let zero = Settings {
            rpm: Some(0),
            ..Settings::default()
        };
        let e = s
            .add_tenant("b", zero.clone(), &[], T0)
            .expect_err("refused");
        assert!(e.message.contains("rpm"), "{e}");
        assert!(s.set_tenant("a", &zero).is_err());
        assert!(s
            .create_key(
                "nobody",
                None,
                None,
                KeySettings::default(),
                [0; KEY_RANDOM_BYTES],
                T0
            )
            .is_err());
        assert!(s.revoke_key("key_000000000000").is_err());
        assert_eq!(s, before, "a refused change changed the store");
    }

    #[test]
    fn set_patches_and_remove_takes_the_keys_along() {
        let mut s = store_with("a");
        let rpm = Settings {
            rpm: Some(600),
            models: Some(vec!["gpt-4o".into()]),
            ..Settings::default()
        };
        s.set_tenant("a", &rpm).expect("ok");
        let tpm = Settings {
            tpm: Some(1000),
            ..Settings::default()
        };
        let c = s.set_tenant("a", &tpm).expect("ok");
        let t = &s.tenants["a"].settings;
        assert_eq!((t.rpm, t.tpm), (Some(600), Some(1000)));
        assert!(c.old.is_some() && c.new.is_some());
        s.suspend_tenant("a", true).expect("ok");
        let (k, _) = s
            .create_key(
                "a",
                None,
                None,
                KeySettings::default(),
                [9; KEY_RANDOM_BYTES],
                T0,
            )
            .expect("ok");
        assert_eq!(s.key_state(&s.keys[&k.id], T0), KeyState::Suspended);
        let v = s.version;
        s.remove_tenant("a").expect("ok");
        assert!(s.keys.is_empty() && s.tenants.is_empty());
        assert_eq!(s.version, v + 1);
    }

    /// A store whose tenant `a` may use `demo` only.
    fn store_for_access() -> Store {
        let mut s = Store::default();
        let only_demo = Settings {
            models: Some(vec!["demo".into()]),
            ..Settings::default()
        };
        s.add_tenant("a", only_demo.clone(), &[], T0).expect("ok");
        s.add_tenant("b", only_demo, &[], T0).expect("ok");
        s
    }

    #[test]
    fn an_access_request_is_pending_with_a_fresh_id() {
        let mut s = store_for_access();
        let v = s.version;
        let c = s
            .request_access("a", "gpt-4o", "evals for Q3", T0)
            .expect("ok");
        assert_eq!(c.action, "access.request");
        assert!(c.target.starts_with(ACCESS_ID_PREFIX), "{}", c.target);
        assert_eq!(c.target.len(), ACCESS_ID_PREFIX.len() + 12);
        assert_eq!(s.version, v + 1);
        let r = &s.access_requests[&c.target];
        assert_eq!(
            (r.tenant.as_str(), r.model.as_str(), r.reason.as_str()),
            ("a", "gpt-4o", "evals for Q3")
        );
        assert_eq!((r.status, r.created_unix_ms), (AccessStatus::Pending, T0));
        assert_eq!(c.new, value(r));
        // Another model, another tenant: other ids, never one reused.
        let c2 = s.request_access("a", "gpt-4o-mini", "", T0).expect("ok");
        let c3 = s.request_access("b", "gpt-4o", "", T0).expect("ok");
        assert!(c2.target != c.target && c3.target != c2.target && c3.target != c.target);
        // The store reads back with its requests; a store without any writes none.
        let back = Store::from_json(&s.to_json()).expect("reads");
        assert_eq!(back, s);
        let empty = String::from_utf8(store_with("x").to_json()).expect("utf-8");
        assert!(!empty.contains("access_requests"), "{empty}");
    }

    #[test]
    fn access_requests_are_refused_with_a_reason_and_change_nothing() {
        let mut s = store_for_access();
        s.add_tenant("all", Settings::default(), &[], T0)
            .expect("ok");
        let pending = s.request_access("a", "gpt-4o", "", T0).expect("ok");
        let before = s.clone();
        let kind = |r: Result<Change, StoreError>| r.expect_err("refused").kind;
        // Unknown tenant.
        assert_eq!(
            kind(s.request_access("nobody", "gpt-4o", "", T0)),
            ErrorKind::NotFound
        );
        // A model it may use already (its own list, or every model).
        let e = s.request_access("a", "demo", "", T0).expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("already"), "{e}");
        assert_eq!(
            kind(s.request_access("all", "gpt-4o", "", T0)),
            ErrorKind::Invalid
        );
        // The same request pending already.
        let e = s
            .request_access("a", "gpt-4o", "again", T0)
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Exists);
        assert!(e.message.contains(&pending.target), "{e}");
        // Bad model names and reasons.
        let long_model = "m".repeat(crate::limits::MODEL_BYTES_MAX + 1);
        let long_reason = "r".repeat(ACCESS_REASON_BYTES_MAX + 1);
        for (model, reason) in [
            ("", ""),
            ("*", ""),
            ("gpt 4o", ""),
            ("gpt\"4o", ""),
            (long_model.as_str(), ""),
            ("gpt-5", long_reason.as_str()),
            ("gpt-5", "two\nlines"),
        ] {
            assert_eq!(
                kind(s.request_access("a", model, reason, T0)),
                ErrorKind::Invalid,
                "{model:?} {reason:?}"
            );
        }
        assert_eq!(s, before, "a refused request changed the store");
        // At most ACCESS_PENDING_PER_TENANT_MAX pending per tenant; other tenants unaffected.
        for i in 1..ACCESS_PENDING_PER_TENANT_MAX {
            s.request_access("a", &format!("m-{i}"), "", T0)
                .expect("ok");
        }
        let e = s
            .request_access("a", "one-more", "", T0)
            .expect_err("refused");
        assert_eq!(e.kind, ErrorKind::Invalid);
        assert!(e.message.contains("pending"), "{e}");
        s.request_access("b", "one-more", "", T0).expect("ok");
        // A tenant of the config file only is told how to import it.
        let e = config_only_tenant("boot");
        assert!(e.message.contains("shardgate-ctl tenants import"), "{e}");
    }

    #[test]
    fn approval_grants_the_model_and_sets_the_tenants_limits() {
        let mut s = store_for_access();
        let id = s.request_access("a", "gpt-4o", "", T0).expect("ok").target;
        let c = s
            .approve_access(&id, Some(120), Some(50_000), "ctl:ops", T0 + 5)
            .expect("ok");
        assert_eq!(
            (c.action, c.target.as_str()),
            ("access.approve", id.as_str())
        );
        let t = &s.tenants["a"].settings;
        assert_eq!(
            t.models.as_deref(),
            Some(&["demo".to_owned(), "gpt-4o".to_owned()][..])
        );
        assert_eq!((t.rpm, t.tpm), (Some(120), Some(50_000)));
        let r = &s.access_requests[&id];
        assert_eq!(r.status, AccessStatus::Approved);
        assert_eq!(r.decided_unix_ms, Some(T0 + 5));
        assert_eq!(r.decided_by.as_deref(), Some("ctl:ops"));
        assert_eq!((r.rpm, r.tpm), (Some(120), Some(50_000)));
        // The audit sees the tenant's models before and after.
        let old = c.old.expect("old");
        let new = c.new.expect("new");
        assert_eq!(old["tenant"]["models"], serde_json::json!(["demo"]));
        assert_eq!(
            new["tenant"]["models"],
            serde_json::json!(["demo", "gpt-4o"])
        );
        assert_eq!(new["request"]["status"], "approved");
        // The granted model is the tenant's now: it validates into a tenant that allows it.
        let (raws, extra): (Vec<_>, Vec<_>) = s
            .raw_tenants()
            .into_iter()
            .map(|(r, e, x)| (r, (e, x)))
            .unzip();
        let mut cfgs = tenant::validate(raws, |_| String::new(), |_, _| panic!(), |_| {});
        finish(&mut cfgs, &extra);
        assert!(cfgs[0].models.allows("gpt-4o") && !cfgs[1].models.allows("gpt-4o"));
        // Without limits the tenant's stay; a request asked again after approval is refused
        // (the model is allowed now).
        let id2 = s.request_access("a", "o3", "", T0).expect("ok").target;
        s.approve_access(&id2, None, None, "ctl:ops", T0)
            .expect("ok");
        assert_eq!(s.tenants["a"].settings.rpm, Some(120));
        assert!(s.request_access("a", "o3", "", T0).is_err());
    }

    #[test]
    fn only_a_pending_request_is_decided_and_a_denial_needs_a_reason() {
        let mut s = store_for_access();
        let id = s.request_access("a", "gpt-4o", "", T0).expect("ok").target;
        let before = s.clone();
        assert_eq!(
            s.deny_access(&id, "  ", "ctl:ops", T0)
                .expect_err("no reason")
                .kind,
            ErrorKind::Invalid
        );
        assert_eq!(
            s.approve_access("req_000000000000", None, None, "x", T0)
                .expect_err("unknown")
                .kind,
            ErrorKind::NotFound
        );
        assert_eq!(
            s.deny_access("req_000000000000", "no", "x", T0)
                .expect_err("unknown")
                .kind,
            ErrorKind::NotFound
        );
        // Limits that validation refuses: nothing granted.
        assert_eq!(
            s.approve_access(&id, Some(0), None, "x", T0)
                .expect_err("rpm 0")
                .kind,
            ErrorKind::Invalid
        );
        assert_eq!(s, before);
        let c = s
            .deny_access(&id, "use gpt-4o-mini", "admin:0123abcd", T0 + 1)
            .expect("ok");
        assert_eq!(c.action, "access.deny");
        let r = &s.access_requests[&id];
        assert_eq!(r.status, AccessStatus::Denied);
        assert_eq!(r.deny_reason.as_deref(), Some("use gpt-4o-mini"));
        assert_eq!(r.decided_by.as_deref(), Some("admin:0123abcd"));
        assert_eq!(
            s.tenants["a"].settings.models.as_deref(),
            Some(&["demo".to_owned()][..])
        );
        // Decided: neither approved nor denied again.
        for r in [
            s.approve_access(&id, None, None, "x", T0),
            s.deny_access(&id, "again", "x", T0),
        ] {
            let e = r.expect_err("decided");
            assert_eq!(e.kind, ErrorKind::Invalid);
            assert!(e.message.contains("denied already"), "{e}");
        }
        // A denied model may be asked for again.
        s.request_access("a", "gpt-4o", "please", T0).expect("ok");
    }

    #[test]
    fn removing_a_tenant_removes_its_requests_and_a_full_store_drops_the_oldest_decided() {
        let mut s = store_for_access();
        s.request_access("a", "gpt-4o", "", T0).expect("ok");
        let kept = s.request_access("b", "gpt-4o", "", T0).expect("ok").target;
        s.remove_tenant("a").expect("ok");
        assert_eq!(s.access_requests.keys().collect::<Vec<_>>(), [&kept]);
        // An orphan request is refused on reading.
        let orphan = br#"{"format":1,"version":1,"access_requests":{"req_1":{"tenant":"x","model":"m","status":"pending","created_unix_ms":0}}}"#;
        assert!(Store::from_json(orphan)
            .expect_err("refused")
            .contains("not in the store"));
        // Full: the oldest decided request makes room.
        let mut s = store_for_access();
        let first = s.request_access("b", "gpt-4o", "", T0).expect("ok").target;
        s.deny_access(&first, "no", "x", T0).expect("ok");
        for i in 1..ACCESS_REQUESTS_MAX {
            let r = AccessRequest {
                status: AccessStatus::Approved,
                decided_unix_ms: Some(T0 + 1),
                ..s.access_requests[&first].clone()
            };
            s.access_requests.insert(format!("req_x{i}"), r);
        }
        let c = s.request_access("a", "gpt-4o", "", T0).expect("room made");
        assert_eq!(s.access_requests.len(), ACCESS_REQUESTS_MAX);
        assert!(!s.access_requests.contains_key(&first));
        assert!(s.access_requests.contains_key(&c.target));
    }

    /// The validated `[[tenants]]` of a config with `tenants` (TOML) and a mock route.
    fn file_tenants(tenants: &str) -> Vec<TenantConfig> {
        crate::config::Config::from_toml(&format!(
            "[server]\n[[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n{tenants}"
        ))
        .expect("valid")
        .tenants
    }

    #[test]
    fn config_tenants_import_once_with_their_keys_and_settings() {
        let file = file_tenants(
            "[[tenants]]\nname = \"boot\"\nkeys = [\"sk-boot\"]\nmodels = [\"demo\"]\n\
             rpm = 60\nbudget_tokens = 1000\nbudget_window = \"7d\"\n",
        );
        let mut s = Store::default();
        let c = s.import_tenants(&file, T0).expect("imported");
        assert_eq!((c.action, c.target.as_str()), ("tenants.import", "boot"));
        let t = &s.tenants["boot"].settings;
        assert_eq!((t.rpm, t.budget_tokens), (Some(60), Some(1000)));
        assert_eq!(t.budget_window.as_deref(), Some("7days"));
        assert_eq!(t.models.as_deref(), Some(&["demo".to_owned()][..]));
        let key = s.keys.values().next().expect("the key came along");
        assert_eq!(key.sha256, hex(&hash_key(b"sk-boot")));
        // The store's tenant validates into the same tenant, key included.
        let (raws, extra): (Vec<_>, Vec<_>) = s
            .raw_tenants()
            .into_iter()
            .map(|(r, e, x)| (r, (e, x)))
            .unzip();
        let mut cfgs = tenant::validate(raws, |_| String::new(), |_, _| panic!(), |_| {});
        finish(&mut cfgs, &extra);
        assert_eq!(cfgs[0], file[0]);
        // Nothing left to import the second time.
        let e = s.import_tenants(&file, T0).expect_err("again");
        assert_eq!(e.kind, ErrorKind::Invalid);
    }

    #[test]
    fn a_keys_own_limits_are_checked_kept_and_carried_over_a_rotation() {
        let mut s = store_with("team-a");
        let limits = KeySettings {
            rpm: Some(60),
            tpm: None,
            budget_usd: Some(5.0),
            ..Default::default()
        };
        let (k, _) = s
            .create_key("team-a", None, None, limits, [4; KEY_RANDOM_BYTES], T0)
            .expect("ok");
        let own = s.keys[&k.id].own_limits().expect("valid").expect("some");
        assert_eq!(
            (own.rpm, own.tpm, own.budget_uusd),
            (Some(60), None, Some(5_000_000))
        );
        assert_eq!(own.lineage, id_bytes(&k.id));
        // Rotated twice: each successor has the same limits, counted under the first key.
        let (k2, _) = s
            .rotate_key(&k.id, Duration::from_secs(60), [5; KEY_RANDOM_BYTES], T0)
            .expect("rotate");
        let (k3, _) = s
            .rotate_key(&k2.id, Duration::from_secs(60), [6; KEY_RANDOM_BYTES], T0)
            .expect("rotate");
        for id in [&k2.id, &k3.id] {
            let l = s.keys[id].own_limits().expect("valid").expect("some");
            assert_eq!(
                (l.rpm, l.budget_uusd, l.lineage),
                (own.rpm, own.budget_uusd, own.lineage)
            );
        }
        // Through the config: the key table knows each key's limits.
        let raw = s.raw_tenants();
        assert!(raw[0]
            .1
            .iter()
            .all(|e| e.limits.as_ref().map(|l| l.lineage) == Some(own.lineage)));
        // Bad values are refused and change nothing.
        let before = s.clone();
        for bad in [
            KeySettings {
                rpm: Some(0),
                ..KeySettings::default()
            },
            KeySettings {
                budget_usd: Some(-1.0),
                ..KeySettings::default()
            },
            KeySettings {
                tpm: Some(1 << 50),
                ..KeySettings::default()
            },
        ] {
            let e = s
                .create_key("team-a", None, None, bad, [8; KEY_RANDOM_BYTES], T0)
                .expect_err("refused");
            assert_eq!(e.kind, ErrorKind::Invalid, "{e}");
        }
        assert_eq!(s, before);
        // A store file with a bad limit does not read.
        let mut text: serde_json::Value = serde_json::from_slice(&s.to_json()).expect("json");
        text["keys"][&k.id]["rpm"] = serde_json::json!(0);
        let e = Store::from_json(text.to_string().as_bytes()).expect_err("refused");
        assert!(e.contains("rpm"), "{e}");
    }

    #[test]
    fn a_journal_line_carries_a_change_and_replays_to_the_same_store() {
        let mut s = store_with("team-a");
        let k = key_of(&mut s, "team-a");
        let base = s.to_json();
        let mut journal = Vec::new();
        // Three changes, each as the line of what it left.
        let before = s.clone();
        s.add_tenant("team-b", Settings::default(), &[], T0)
            .expect("b");
        journal.extend(s.diff(&before).to_line());
        let before = s.clone();
        s.rotate_key(&k.id, Duration::from_secs(5), [2; KEY_RANDOM_BYTES], T0)
            .expect("rotate");
        let rotation = s.diff(&before);
        assert_eq!(
            rotation.keys.len(),
            2,
            "the old key changed and the new one came"
        );
        journal.extend(rotation.to_line());
        let before = s.clone();
        s.remove_tenant("team-a").expect("remove");
        let removal = s.diff(&before);
        assert!(removal.keys.values().all(Option::is_none));
        journal.extend(removal.to_line());
        assert_eq!(Store::from_parts(&base, &journal).expect("reads"), s);
        // Replayed twice (a crash after the base was compacted, before the journal was
        // emptied): the same store.
        let mut twice = journal.clone();
        twice.extend_from_slice(&journal);
        assert_eq!(Store::from_parts(&s.to_json(), &twice).expect("reads"), s);
        // A last line cut short was never acknowledged: left out. A bad line before another
        // refuses the store.
        let cut = &journal[..journal.len() - 5];
        let without_last = Store::from_parts(&base, cut).expect("reads");
        assert!(without_last.tenants.contains_key("team-a"));
        let mut bad = b"{not json}\n".to_vec();
        bad.extend_from_slice(&journal);
        assert!(Store::from_parts(&base, &bad).is_err());
        // A journal that leaves a key without its tenant refuses the store.
        let orphan = JournalEntry {
            version: 99,
            keys: [(k.id.clone(), Some(before.keys[&k.id].clone()))].into(),
            tenants: [("team-a".to_owned(), None)].into(),
            ..JournalEntry::default()
        };
        assert!(Store::from_parts(&base, &orphan.to_line()).is_err());
    }

    #[test]
    fn export_writes_tenants_a_config_reads_back_the_same() {
        let mut s = store_with("team-a");
        let patch = Settings {
            models: Some(vec!["gpt-4o".into()]),
            rpm: Some(60),
            budget_usd: Some(12.5),
            budget_window: Some("7d".into()),
            ..Settings::default()
        };
        s.set_tenant("team-a", &patch).expect("set");
        let k = key_of(&mut s, "team-a");
        s.create_key(
            "team-a",
            None,
            Some(Duration::from_secs(1)),
            KeySettings::default(),
            [2; KEY_RANDOM_BYTES],
            T0,
        )
        .expect("key");
        s.add_tenant("team-b", Settings::default(), &[], T0)
            .expect("b");
        s.create_key(
            "team-b",
            None,
            None,
            KeySettings::default(),
            [3; KEY_RANDOM_BYTES],
            T0,
        )
        .expect("key");
        s.suspend_tenant("team-b", true).expect("suspend");
        s.add_tenant("team-c", Settings::default(), &[], T0)
            .expect("c");
        let text = s.to_toml(T0 + 5_000).expect("toml");
        assert!(text.contains("# tenant \"team-b\" is suspended"), "{text}");
        assert!(text.contains("has expired: left out"), "{text}");
        assert!(text.contains("\"team-c\" has no live key"), "{text}");
        // Read back as a config's [[tenants]]: the same settings and the live key only.
        let back = file_tenants(&text);
        let a = back.iter().find(|t| t.name == "team-a").expect("team-a");
        assert_eq!(a.rpm, Some(60));
        assert_eq!(a.models, tenant::Models::Only(vec!["gpt-4o".into()]));
        assert_eq!(
            a.budget_usd.map(|b| (b.uusd, b.window.as_secs())),
            Some((12_500_000, 7 * 86_400))
        );
        assert_eq!(a.keys.len(), 1);
        assert_eq!(a.keys[0].hash, hash_key(k.secret.as_bytes()));
        assert!(!text.contains(&k.secret));
    }

    #[test]
    fn a_store_that_does_not_hold_together_is_refused() {
        assert!(Store::from_json(b"{").is_err());
        assert!(Store::from_json(br#"{"format":2,"version":0}"#).is_err());
        assert!(Store::from_json(br#"{"format":1,"version":0,"extra":1}"#).is_err());
        // An unknown field in a tenant (a newer build's setting) is refused, not dropped.
        let newer = br#"{"format":1,"version":1,"tenants":{"a":{"created_unix_ms":0,"rpm":5,"spend_usd":3}}}"#;
        assert!(
            Store::from_json(newer).is_err(),
            "an unknown tenant field was dropped"
        );
        let known = br#"{"format":1,"version":1,"tenants":{"a":{"created_unix_ms":0,"rpm":5}}}"#;
        assert_eq!(
            Store::from_json(known).expect("ok").tenants["a"]
                .settings
                .rpm,
            Some(5)
        );
        let orphan = br#"{"format":1,"version":1,"keys":{"key_1":{"tenant":"x","prefix":"sk-sg-0000","sha256":"00","created_unix_ms":0}}}"#;
        assert!(Store::from_json(orphan)
            .expect_err("refused")
            .contains("not in the store"));
        assert_eq!(
            Store::from_json(br#"{"format":1,"version":0}"#).expect("ok"),
            Store::default()
        );
    }
}
