//! `apply FILE`: validate, diff against the running config, push the new one over the ring, and
//! wait until every shard runs it (or says why not).
//!
//! The steps, each of which can stop the apply before anything is pushed:
//! 1. validate the file (as `check`);
//! 2. open the instance's region and read the running config back from the ring;
//! 3. refuse changes that only take effect at start-up;
//! 4. under the ring's writer lock, number the new version past every version seen, publish;
//! 5. poll the shards' counter blocks until each runs the version or refused it.

use std::path::Path;
use std::time::{Duration, Instant};

use shardgate_core::config::Config;
use shardgate_core::control::shm::{pid_alive, Region, WriterGuard};
use shardgate_core::control::stats::{self, ShardView};
use shardgate_core::control::{message, publish_config, unix_ms};

use crate::{check, diff, pause, stall, Failure};

/// How often `apply` looks at the shards' counter blocks while it waits.
pub const APPLY_POLL_MS: u64 = 5;

/// What the flags of `apply` ask for.
#[derive(Debug, Clone)]
pub struct Options {
    pub timeout: Duration,
    /// The test hook: publish this many frames, then hold the writer lock forever.
    pub stall_after_frames: Option<u64>,
}

/// The `apply` command.
pub fn run(instance: &str, path: &Path, opts: &Options) -> Result<(), Failure> {
    let (text, new) = check::load(path)?;
    let region = crate::open_running(instance)?;

    match running(&region) {
        Ok((version, old)) => {
            let fixed = old.restart_only_changes(&new);
            if !fixed.is_empty() {
                return Err(Failure::failed(format!(
                    "{} changes {}: these take a restart of the engine",
                    path.display(),
                    fixed.join(", ")
                )));
            }
            let lines = diff::diff(&old, &new);
            if lines.is_empty() {
                println!("instance {instance}: version {version} running; no changes");
            } else {
                println!("instance {instance}: version {version} running; changes:");
                for l in diff::cap(lines, diff::DIFF_LINES_MAX) {
                    println!("  {l}");
                }
            }
        }
        Err(why) => println!("instance {instance}: {why}; no diff shown"),
    }

    let guard = region.lock_writer(unix_ms()).map_err(|pid| {
        Failure::failed(format!(
            "another shardgate-ctl (pid {pid}) is applying a config to instance {instance}; \
             try again when it is done"
        ))
    })?;
    // Numbered under the lock, so two ctls never push the same version.
    let version = version_after(&region);

    if let Some(frames_max) = opts.stall_after_frames {
        let body = message::encode(&text, &new).map_err(Failure::failed)?;
        let (written, frames) =
            stall::publish_partial(&region, version, &body, frames_max).map_err(Failure::failed)?;
        println!(
            "stalled after {written} of {frames} frames of version {version} \
             (SHARDGATE_CTL_STALL_AFTER_FRAMES); pid {} holds the writer lock",
            std::process::id()
        );
        let _held = guard;
        loop {
            pause(Duration::from_secs(3600));
        }
    }

    let (version, ms) = push(instance, &region, guard, version, &text, &new, opts.timeout)?;
    println!(
        "applied version {version} to {} shards in {ms} ms",
        region.shards()
    );
    Ok(())
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
) -> Result<(u64, u128), Failure> {
    let engine_pid = region
        .header()
        .engine_pid
        .load(std::sync::atomic::Ordering::Acquire);
    let start = Instant::now();
    // `publish_config` takes the lock again (this process already holds it) and releases it.
    let published = publish_config(region, version, text, new);
    drop(guard);
    published.map_err(Failure::failed)?;
    loop {
        let t = stats::read(region);
        let progress = progress(&t.shards, version);
        match progress {
            Progress::Settled { refused, .. } if refused.is_empty() => {
                return Ok((version, start.elapsed().as_millis()));
            }
            Progress::Settled { .. } => {
                return Err(Failure::failed(progress.report(version, None)));
            }
            Progress::Waiting { .. } => {}
        }
        if !pid_alive(engine_pid) {
            return Err(Failure::failed(format!(
                "the engine of instance {instance} (pid {engine_pid}) exited while version \
                 {version} was being applied"
            )));
        }
        if start.elapsed() >= timeout {
            return Err(Failure::failed(progress.report(version, Some(timeout))));
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
    let Some((version, body)) = region.ring().latest_message() else {
        return Err(
            "the running config is unknown (no complete config message in the ring)".into(),
        );
    };
    let m = message::decode(&body)
        .map_err(|e| format!("the running config (version {version}) cannot be read: {e}"))?;
    let c = Config::from_message(&m).map_err(|e| {
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

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::control::ring::{Consumer, Poll};

    const TOML: &str =
        "[server]\nauth = \"none\"\n[[upstreams]]\nname = \"m\"\nprovider = \"mock\"\n\
                        [[routes]]\npath_prefix = \"/\"\nupstream = \"m\"\n";

    fn shard(id: usize, version: u64) -> ShardView {
        ShardView {
            id,
            config_version: version,
            ..ShardView::default()
        }
    }

    #[test]
    fn the_next_version_is_past_the_ring_and_every_shard() {
        assert_eq!(next_version(None, &[]), 1);
        assert_eq!(next_version(Some(4), &[shard(0, 3), shard(1, 4)]), 5);
        // A shard ahead of the ring (the ring re-created, or lapped): still past it.
        assert_eq!(next_version(Some(2), &[shard(0, 9)]), 10);
    }

    #[test]
    fn progress_sorts_applied_refused_and_pending() {
        let mut refusing = shard(1, 4);
        refusing.error_version = 5;
        refusing.error = "needs a restart: server.listen".into();
        let mut lagging = shard(2, 4);
        lagging.ring_lag_frames = 3;
        // An old refusal is not this version's.
        let mut old_error = shard(3, 4);
        old_error.error_version = 4;
        let p = progress(&[shard(0, 5), refusing.clone(), lagging, old_error], 5);
        let Progress::Waiting {
            applied,
            refused,
            pending,
        } = &p
        else {
            panic!("{p:?}")
        };
        assert_eq!(*applied, 1);
        assert_eq!(
            refused,
            &vec![(1, "needs a restart: server.listen".to_owned())]
        );
        assert_eq!(pending.len(), 2);
        assert_eq!(
            p.report(5, Some(Duration::from_millis(250))),
            "timed out after 250 ms waiting for every shard to run version 5 (1 of 4 do)\n\
             shard 1 refused version 5: needs a restart: server.listen\n\
             shard 2 is still on version 4 (ring lag 3 frames)\n\
             shard 3 is still on version 4 (ring lag 0 frames)"
        );

        // A newer version counts as applied.
        let p = progress(&[shard(0, 6), refusing], 5);
        assert_eq!(
            p,
            Progress::Settled {
                applied: 1,
                refused: vec![(1, "needs a restart: server.listen".into())]
            }
        );
        assert_eq!(
            p.report(5, None),
            "version 5 was refused (1 of 2 shards run it)\n\
             shard 1 refused version 5: needs a restart: server.listen"
        );
        assert_eq!(
            progress(&[shard(0, 5)], 5),
            Progress::Settled {
                applied: 1,
                refused: vec![]
            }
        );
    }

    #[test]
    fn the_running_config_is_read_back_from_the_ring() {
        let region = Region::anonymous(2).expect("anonymous region");
        assert!(running(&region)
            .err()
            .is_some_and(|e| e.contains("unknown")));
        let c = Config::from_toml(TOML).expect("valid");
        publish_config(&region, 7, TOML, &c).expect("published");
        let (v, back) = running(&region).expect("readable");
        assert_eq!(v, 7);
        assert!(diff::diff(&c, &back).is_empty());
        // The lock was released.
        assert_eq!(
            region
                .writer()
                .pid
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );

        region.ring().publish(8, b"not a config").expect("fits");
        assert!(running(&region)
            .err()
            .is_some_and(|e| e.contains("(version 8) cannot be read")));
    }

    #[test]
    fn a_published_version_reaches_simulated_shards() {
        // Two simulated shards: each reads the ring with its own consumer and reports as the
        // engine's ShardControl does; `progress` sees one apply and one refuse.
        let region = Region::anonymous(2).expect("anonymous region");
        let c = Config::from_toml(TOML).expect("valid");
        let mut consumers = [Consumer::at(0), Consumer::at(0)];
        let version = next_version(
            region.ring().latest_message().map(|(v, _)| v),
            &stats::read(&region).shards,
        );
        assert_eq!(version, 1);
        publish_config(&region, version, TOML, &c).expect("published");
        let block = |i: usize| &region.shard(i).info.0;
        for (i, consumer) in consumers.iter_mut().enumerate() {
            let Poll::Message { version: v, body } = consumer.poll(&region.ring()) else {
                panic!("no message")
            };
            assert!(message::decode(&body).is_ok());
            let info = block(i);
            if i == 0 {
                info.config_version
                    .store(v, std::sync::atomic::Ordering::Release);
            } else {
                shardgate_core::control::shm::store_text(&info.error, &info.error_len, b"no");
                info.error_version
                    .store(v, std::sync::atomic::Ordering::Release);
            }
        }
        let p = progress(&stats::read(&region).shards, version);
        assert_eq!(
            p,
            Progress::Settled {
                applied: 1,
                refused: vec![(1, "no".into())]
            }
        );
        assert_eq!(
            next_version(
                region.ring().latest_message().map(|(v, _)| v),
                &stats::read(&region).shards
            ),
            2
        );
    }
}
