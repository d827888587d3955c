//! Publishing a config version and waiting for the shards: what `shardgate-ctl apply`, its
//! `tenants`/`keys` commands and the engine's admin API share. Blocking: for ctl and the admin
//! thread, never a shard.

use std::time::{Duration, Instant};

use super::message;
use super::shm::{pid_alive, Region, WriterGuard};
use super::stats::{self, ShardView};
use crate::config::Config;

/// How often the shards' counter blocks are looked at while waiting for them.
pub const APPLY_POLL_MS: u64 = 5;

/// Sleep `d`: ctl and the admin thread wait for the shards this way.
#[allow(
    clippy::disallowed_methods,
    reason = "ctl and the admin thread are not shards: blocking them stalls no runtime"
)]
pub fn pause(d: Duration) {
    std::thread::sleep(d);
}

/// Publish `text` (validated as `new`) as `version` under the writer lock `guard` (released
/// once published), and wait until every shard runs it: `(version, ms waited)`, or why not.
pub fn push(
    instance: &str,
    region: &Region,
    guard: WriterGuard<'_>,
    version: u64,
    text: &str,
    new: &Config,
    timeout: Duration,
) -> Result<(u64, u128), String> {
    let body = message::encode(text, new)?;
    push_body(instance, region, guard, version, &body, timeout)
}

/// [`push`] of a message already encoded (a config with a change to the tenant store).
pub fn push_body(
    instance: &str,
    region: &Region,
    guard: WriterGuard<'_>,
    version: u64,
    body: &[u8],
    timeout: Duration,
) -> Result<(u64, u128), String> {
    let engine_pid = region
        .header()
        .engine_pid
        .load(std::sync::atomic::Ordering::Acquire);
    let start = Instant::now();
    let published = region.ring().publish(version, body);
    drop(guard);
    published.map_err(|e| e.to_string())?;
    loop {
        let t = stats::read(region);
        let progress = progress(&t.shards, version);
        match progress {
            Progress::Settled { refused, .. } if refused.is_empty() => {
                return Ok((version, start.elapsed().as_millis()));
            }
            Progress::Settled { .. } => {
                return Err(progress.report(version, None));
            }
            Progress::Waiting { .. } => {}
        }
        if !pid_alive(engine_pid) {
            return Err(format!(
                "the engine of instance {instance} (pid {engine_pid}) exited while version \
                 {version} was being applied"
            ));
        }
        if start.elapsed() >= timeout {
            return Err(progress.report(version, Some(timeout)));
        }
        pause(Duration::from_millis(APPLY_POLL_MS));
    }
}

/// The newest version in sight, plus one (numbered under the writer lock).
pub fn version_after(region: &Region) -> u64 {
    let ring = region.ring();
    next_version(
        ring.latest_message()
            .map(|(v, _)| v)
            .max(ring.newest_frame_version()),
        &stats::read(region).shards,
    )
}

/// The running config's TOML text and its validated form, from the ring.
pub fn running_text(region: &Region) -> Result<(u64, String, Config), String> {
    running_with(region, Config::from_message)
}

/// [`running_text`] without reading the tenant store (taken as empty; its path is kept): for
/// a change to the store, which reads the store itself.
pub fn running_text_without_store(region: &Region) -> Result<(u64, String, Config), String> {
    running_with(region, Config::from_message_without_store)
}

/// The newest complete config message in the ring, validated by `validate`.
fn running_with(
    region: &Region,
    validate: fn(&message::ConfigMessage) -> Result<Config, crate::config::ConfigErrors>,
) -> Result<(u64, String, Config), String> {
    let Some((version, body)) = region.ring().latest_message() else {
        return Err(
            "the running config is unknown (no complete config message in the ring)".into(),
        );
    };
    let m = message::decode(&body)
        .map_err(|e| format!("the running config (version {version}) cannot be read: {e}"))?;
    let c = validate(&m).map_err(|e| {
        format!(
            "the running config (version {version}) does not validate: {}",
            e.to_string().replace('\n', "; ")
        )
    })?;
    Ok((version, m.toml, c))
}

/// The running config: the newest complete message in the ring, validated as a shard would.
/// Errors say why it cannot be known.
pub fn running(region: &Region) -> Result<(u64, Config), String> {
    running_text(region).map(|(v, _, c)| (v, c))
}

/// One past every version in sight: the ring's newest message and what each shard runs.
pub fn next_version(ring: Option<u64>, shards: &[ShardView]) -> u64 {
    let seen = shards
        .iter()
        .map(|s| s.config_version)
        .chain(ring)
        .max()
        .unwrap_or(0);
    seen.saturating_add(1)
}

/// A shard still on an older version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub shard: usize,
    pub version: u64,
    pub ring_lag_frames: u64,
}

/// Where the shards are with a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Every shard runs the version (or a newer one) or refused it.
    Settled {
        applied: usize,
        refused: Vec<(usize, String)>,
    },
    /// Some shards have done neither yet.
    Waiting {
        applied: usize,
        refused: Vec<(usize, String)>,
        pending: Vec<Pending>,
    },
}

/// Sort the shards by what they did with `version`.
pub fn progress(shards: &[ShardView], version: u64) -> Progress {
    let mut applied = 0;
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    for s in shards {
        if s.config_version >= version {
            applied += 1;
        } else if s.error_version == version {
            refused.push((s.id, s.error.clone()));
        } else {
            pending.push(Pending {
                shard: s.id,
                version: s.config_version,
                ring_lag_frames: s.ring_lag_frames,
            });
        }
    }
    if pending.is_empty() {
        Progress::Settled { applied, refused }
    } else {
        Progress::Waiting {
            applied,
            refused,
            pending,
        }
    }
}

impl Progress {
    /// Why `version` did not apply everywhere, one line per shard that did not take it;
    /// `timeout` when the wait ran out.
    pub fn report(&self, version: u64, timeout: Option<Duration>) -> String {
        let (applied, refused, pending) = match self {
            Progress::Settled { applied, refused } => (*applied, refused, &[][..]),
            Progress::Waiting {
                applied,
                refused,
                pending,
            } => (*applied, refused, &pending[..]),
        };
        let total = applied + refused.len() + pending.len();
        let mut lines = Vec::new();
        if let Some(t) = timeout {
            lines.push(format!(
                "timed out after {} ms waiting for every shard to run version {version} \
                 ({applied} of {total} do)",
                t.as_millis()
            ));
        } else {
            lines.push(format!(
                "version {version} was refused ({applied} of {total} shards run it)"
            ));
        }
        for (shard, error) in refused {
            lines.push(format!("shard {shard} refused version {version}: {error}"));
        }
        for p in pending {
            lines.push(format!(
                "shard {} is still on version {} (ring lag {} frames)",
                p.shard, p.version, p.ring_lag_frames
            ));
        }
        lines.join("\n")
    }
}
