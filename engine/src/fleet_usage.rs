//! The fleet's usage counters (`[fleet]`): a thread of the engine, never a shard, that adds
//! what this instance's shards counted per tenant (requests, tokens in and out, spend, unpriced
//! requests) to the fleet's counters in Redis (`shardgate_core::fleet::USAGE_COUNTERS`) every
//! [`USAGE_PUSH_MS`], for `shardgate-ctl spend --fleet`, `GET /admin/v1/spend?fleet=true`
//! and the `shardgate_fleet_tenant_*` series of `/metrics`.
//!
//! It pushes what was counted since its last push that Redis took ([`deltas`]): a push that
//! fails is made again, whole, with the next. A push whose answer was lost after Redis made it
//! is counted twice (rare: a connection cut in the middle of one round trip). A Redis restarted
//! empty is rebuilt from what the instances hold: each adds again all it counted since it
//! started (the fleet state's epoch in Redis, which the agents make again, tells each of them);
//! what instances gone since had counted is lost.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::FleetConfig;
use crate::control::shm::Region;
use crate::control::stats;
use shardgate_core::fleet::Usage;

/// How often the counters are pushed, ms.
pub const USAGE_PUSH_MS: u64 = 1_000;

/// Each tenant's counts now.
fn counted(t: &stats::Totals) -> BTreeMap<String, Usage> {
    t.tenants
        .iter()
        .map(|(name, s)| (name.clone(), shardgate_core::spend::usage_of(s)))
        .collect()
}

/// What `now` counted beyond `pushed` (I/O-free). A count below what was pushed (a tenant's
/// slot given to another and its counters started again) counts from zero.
pub fn deltas(
    now: &BTreeMap<String, Usage>,
    pushed: &BTreeMap<String, Usage>,
) -> BTreeMap<String, Usage> {
    now.iter()
        .filter_map(|(name, n)| {
            let before = pushed.get(name).copied().unwrap_or_default();
            let mut d = Usage::default();
            for ((d, n), b) in d.iter_mut().zip(n).zip(before) {
                *d = if *n >= b { n - b } else { *n };
            }
            d.iter().any(|&x| x > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// Start the thread.
pub fn spawn(fleet: FleetConfig, region: &'static Region) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("fleet-usage".into())
        .spawn(move || {
            let mut conn: Option<redis::Connection> = None;
            let mut epoch: Option<String> = None;
            // The counts Redis has taken, as this instance counted them then (none yet).
            let mut pushed: BTreeMap<String, Usage> = BTreeMap::new();
            loop {
                // Its own thread: sleeping stalls no shard.
                #[allow(clippy::disallowed_methods)]
                std::thread::sleep(Duration::from_millis(USAGE_PUSH_MS));
                let now = counted(&stats::read(region));
                let d = deltas(&now, &pushed);
                if d.is_empty() {
                    continue;
                }
                if conn.is_none() {
                    // Unreachable: the fleet agent says so; the counts wait for the next push.
                    conn = shardgate_core::fleet::connect(&fleet).ok();
                }
                let Some(c) = conn.as_mut() else { continue };
                // The fleet state's epoch (made by the agents' sync when missing): a new one
                // means Redis lost the counters (restarted empty), and this instance's counts
                // since it started go in again, whole. None yet: wait for the agents' sync.
                let d = match redis::cmd("GET")
                    .arg(crate::fleet::EPOCH_KEY)
                    .query::<Option<String>>(c)
                {
                    Ok(None) => continue,
                    Ok(Some(e)) if epoch.as_ref().is_some_and(|was| *was != e) => {
                        epoch = Some(e);
                        tracing::warn!(
                            "fleet: Redis lost the fleet's usage counters (restarted empty?): \
                             this instance's counts since it started are added again"
                        );
                        deltas(&now, &BTreeMap::new())
                    }
                    Ok(Some(e)) => {
                        epoch = Some(e);
                        d
                    }
                    Err(_) => {
                        conn = None;
                        continue;
                    }
                };
                match shardgate_core::fleet::push_usage(c, &d) {
                    Ok(()) => pushed = now,
                    Err(_) => conn = None,
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_push_carries_what_was_counted_since_the_last_one() {
        let map = |v: &[(&str, Usage)]| -> BTreeMap<String, Usage> {
            v.iter().map(|(n, u)| ((*n).to_owned(), *u)).collect()
        };
        let pushed = map(&[("a", [10, 100, 50, 7, 0]), ("b", [1, 1, 1, 1, 1])]);
        let now = map(&[
            ("a", [12, 130, 50, 9, 0]),
            ("b", [1, 1, 1, 1, 1]),
            ("c", [3, 3, 3, 3, 0]),
        ]);
        let d = deltas(&now, &pushed);
        assert_eq!(d.get("a"), Some(&[2, 30, 0, 2, 0]));
        // Nothing new: not pushed; new tenant: whole.
        assert!(!d.contains_key("b"));
        assert_eq!(d.get("c"), Some(&[3, 3, 3, 3, 0]));
        // A count that went back (its slot reused) counts from zero.
        let d = deltas(&map(&[("a", [1, 0, 0, 0, 0])]), &pushed);
        assert_eq!(d.get("a"), Some(&[1, 0, 0, 0, 0]));
    }
}
