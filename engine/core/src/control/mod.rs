//! The control plane's shared memory: how `shardgate-ctl` talks to the shards without a lock on
//! the request path (docs/decisions/0004-shared-memory-control-plane.md).
//!
//! - [`shm`]: the region (a file under `/dev/shm`), its `#[repr(C)]` layout, the writer lock.
//!   The only `unsafe` in the project (allowed in that module alone).
//! - [`ring`]: the config ring protocol (seqlock frames, chunked messages, per-reader cursors);
//!   loom model tests.
//! - [`message`]: a config message's body (TOML and resolved endpoints); fuzzed.
//! - [`stats`]: the per-shard counter blocks: written by shards, read by the admin listener
//!   and by ctl.
//!
//! [`ShardControl`] is a shard's side of it: poll the ring between requests and on a timer,
//! build a new config, report the version it runs.

pub mod message;
pub mod publish;
pub mod ring;
pub mod shm;
pub mod stats;

use std::cell::RefCell;
use std::sync::atomic::Ordering;

use crate::config::{Config, Overrides};
use ring::{Consumer, Poll};
use shm::Region;
use stats::{add, set, ShardStats};

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Publish `toml` (validated into `config`) as config `version`, under the writer lock.
pub fn publish_config(
    region: &Region,
    version: u64,
    toml: &str,
    config: &Config,
) -> Result<u64, String> {
    let _guard = region.lock_writer(unix_ms()).map_err(|pid| {
        format!("another shardgate-ctl (pid {pid}) is applying a config to this instance; try again when it is done")
    })?;
    let body = message::encode(toml, config)?;
    region
        .ring()
        .publish(version, &body)
        .map_err(|e| e.to_string())
}

/// One shard's end of the control plane. Lives on the shard's thread.
#[derive(Debug)]
pub struct ShardControl {
    region: &'static Region,
    consumer: RefCell<Consumer>,
    pub stats: ShardStats,
}

impl ShardControl {
    /// Start reading at the ring's head: the bootstrap config (already published by the
    /// engine as `version`) is the one this shard starts with.
    pub fn new(region: &'static Region, shard: usize, version: u64) -> Self {
        let ring = region.ring();
        let stats = ShardStats::new(region.shard(shard));
        let info = stats.info();
        set(&info.config_version, version);
        set(&info.config_applied_unix_ms, unix_ms());
        set(&info.ring_cursor, ring.head());
        Self {
            region,
            consumer: RefCell::new(Consumer::at(ring.head())),
            stats,
        }
    }

    /// The shared region.
    pub fn region(&self) -> &'static Region {
        self.region
    }

    /// Whether the ring has frames this shard has not read: one atomic load.
    #[inline]
    pub fn has_news(&self) -> bool {
        self.consumer.borrow().has_news(&self.region.ring())
    }

    /// Read what is new: each complete config message (version and body) in the order they
    /// were published, for the engine's config builder to validate ([`build`]). Dropped
    /// frames are counted and explained in the block.
    pub fn poll_messages(&self, out: &mut Vec<(u64, Vec<u8>)>) {
        let ring = self.region.ring();
        let info = self.stats.info();
        let mut consumer = self.consumer.borrow_mut();
        loop {
            match consumer.poll(&ring) {
                Poll::Idle => break,
                Poll::Dropped(why) => {
                    add(&info.ring_dropped, 1);
                    tracing::warn!("config ring: {why}");
                }
                Poll::Message { version, body } => out.push((version, body)),
            }
        }
        set(&info.ring_cursor, consumer.cursor());
        set(&info.ring_lag_frames, consumer.lag(&ring));
    }

    /// Report that `version` was refused, and why (`shardgate-ctl status` shows it).
    pub fn refused(&self, version: u64, why: &str) {
        tracing::warn!("config version {version} refused: {why}");
        self.stats.apply_error(version, why);
    }

    /// Report that `version` now serves new requests.
    pub fn applied(&self, version: u64) {
        let info = self.stats.info();
        set(&info.config_applied_unix_ms, unix_ms());
        info.config_version.store(version, Ordering::Release);
    }
}

/// Validate a decoded config message `m` as the engine runs it: validated from the message's
/// tables (with `given` as its tenant store, else the store's files), the command line's
/// `overrides` applied, and refused if it changes what only a restart changes (against
/// `running`). The store it was validated with comes back in any case, for its holder. The
/// engine's config builder thread calls it, never a shard: it parses and validates the whole
/// config (tens of ms for thousands of tenants).
pub fn build(
    m: &message::ConfigMessage,
    given: Option<crate::store::Store>,
    running: &Config,
    overrides: &Overrides,
) -> (Result<Config, String>, Option<crate::store::Store>) {
    let (c, store) = Config::from_message_keeping_store(m, given);
    let c = c
        .map_err(|e| e.to_string().replace('\n', "; "))
        .and_then(|mut c| {
            c.apply_overrides(overrides);
            let fixed = running.restart_only_changes(&c);
            if fixed.is_empty() {
                Ok(c)
            } else {
                Err(format!("needs a restart: {}", fixed.join(", ")))
            }
        });
    (c, store)
}
