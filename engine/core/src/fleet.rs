//! A fleet's Redis (`[fleet]`, decision 0013), as the engine's fleet agent, `shardgate --check`
//! and `shardgate-ctl fleet status` reach it: a blocking connection with `[fleet]`'s settings
//! and time limits, the instances the agents have announced, and which of a limit's credit cells
//! is which (`Kind`). Blocking: never a shard.

use std::time::Duration;

use crate::config::FleetConfig;
use crate::control::shm::{CreditCells, FleetCells};

/// A Redis round trip longer than this counts as Redis being down, ms.
pub const REDIS_TIMEOUT_MS: u64 = 200;
/// The sorted set of the fleet's instances, each scored by its last sync (unix ms).
pub const INSTANCES_KEY: &str = "sg:instances";
/// An instance not seen for this long is taken as gone (its share goes to the others), ms.
pub const INSTANCE_TTL_MS: u64 = 5_000;

/// Connect to `f`'s Redis: the address, the password and the database are each checked here,
/// and a failure names the URL and which.
pub fn connect(f: &FleetConfig) -> Result<redis::Connection, String> {
    let fail = |e: redis::RedisError| format!("fleet.redis {}: {e}", f.url);
    let addr = redis::ConnectionAddr::Tcp(f.host.clone(), f.port);
    let mut settings = redis::RedisConnectionInfo::default().set_db(i64::from(f.db));
    if let Some(p) = &f.password {
        settings = settings.set_password(p);
    }
    let info = redis::IntoConnectionInfo::into_connection_info(addr)
        .map_err(fail)?
        .set_redis_settings(settings);
    let client = redis::Client::open(info).map_err(fail)?;
    let timeout = Duration::from_millis(REDIS_TIMEOUT_MS);
    let mut conn = client.get_connection_with_timeout(timeout).map_err(fail)?;
    conn.set_read_timeout(Some(timeout)).map_err(fail)?;
    conn.set_write_timeout(Some(timeout)).map_err(fail)?;
    redis::cmd("PING")
        .query::<String>(&mut conn)
        .map_err(fail)?;
    Ok(conn)
}

/// The instances announced in the last [`INSTANCE_TTL_MS`] and when each last synced (unix
/// ms), on Redis's clock.
pub fn instances(conn: &mut redis::Connection) -> Result<Vec<(String, u64)>, String> {
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query(conn).map_err(|e| e.to_string())?;
    let now_ms = secs * 1000 + micros / 1000;
    redis::cmd("ZRANGEBYSCORE")
        .arg(INSTANCES_KEY)
        .arg(now_ms.saturating_sub(INSTANCE_TTL_MS))
        .arg("+inf")
        .arg("WITHSCORES")
        .query(conn)
        .map_err(|e| e.to_string())
}

/// Which of a tenant's (or key's) limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Rpm,
    Tpm,
    /// Tokens per budget window.
    Budget,
    /// Microdollars per budget window.
    BudgetUsd,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Rpm, Kind::Tpm, Kind::Budget, Kind::BudgetUsd];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Rpm => "rpm",
            Kind::Tpm => "tpm",
            Kind::Budget => "budget_tokens",
            Kind::BudgetUsd => "budget_usd",
        }
    }

    /// Its credit cells.
    pub fn cells(self, f: &FleetCells) -> &CreditCells {
        match self {
            Kind::Rpm => &f.rpm,
            Kind::Tpm => &f.tpm,
            Kind::Budget => &f.budget,
            Kind::BudgetUsd => &f.budget_usd,
        }
    }
}

/// The fleet-wide usage counters, each a Redis hash of tenant name to count (`sg:usage:<name>`),
/// raised by every instance by what its shards counted since its last push: requests, tokens
/// in and out, spend in nanodollars, unpriced requests. Since Redis last started empty.
pub const USAGE_COUNTERS: [&str; 5] = [
    "requests",
    "tokens_in",
    "tokens_out",
    "spend_nusd",
    "unpriced",
];
/// What a usage counter's hash is called.
pub fn usage_key(counter: &str) -> String {
    format!("sg:usage:{counter}")
}

/// A tenant's usage: one count per [`USAGE_COUNTERS`] entry.
pub type Usage = [u64; USAGE_COUNTERS.len()];

/// Add `deltas` (by tenant) to the fleet's usage counters, at once (one MULTI/EXEC).
pub fn push_usage(
    conn: &mut redis::Connection,
    deltas: &std::collections::BTreeMap<String, Usage>,
) -> Result<(), String> {
    let mut p = redis::pipe();
    p.atomic();
    for (tenant, d) in deltas {
        for (counter, n) in USAGE_COUNTERS.iter().zip(d) {
            if *n > 0 {
                p.hincr(usage_key(counter), tenant, *n).ignore();
            }
        }
    }
    p.query::<()>(conn).map_err(|e| e.to_string())
}

/// The fleet's usage counters, by tenant.
pub fn usage(
    conn: &mut redis::Connection,
) -> Result<std::collections::BTreeMap<String, Usage>, String> {
    let mut p = redis::pipe();
    p.atomic();
    for c in USAGE_COUNTERS {
        p.hgetall(usage_key(c));
    }
    let hashes: Vec<std::collections::HashMap<String, u64>> =
        p.query(conn).map_err(|e| e.to_string())?;
    let mut out: std::collections::BTreeMap<String, Usage> = std::collections::BTreeMap::new();
    for (i, h) in hashes.into_iter().enumerate() {
        for (tenant, n) in h {
            if let Some(c) = out.entry(tenant).or_default().get_mut(i) {
                *c = n;
            }
        }
    }
    Ok(out)
}
