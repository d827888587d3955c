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
use std::time::Duration;

use shardgate_core::control::message;
pub use shardgate_core::control::publish::{push, running, version_after};
use shardgate_core::control::unix_ms;

use crate::{check, diff, pause, stall, Failure};

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

    let (version, ms) = push(instance, &region, guard, version, &text, &new, opts.timeout)
        .map_err(Failure::failed)?;
    println!(
        "applied version {version} to {} shards in {ms} ms",
        region.shards()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::config::Config;
    use shardgate_core::control::publish::{next_version, progress, Progress};
    use shardgate_core::control::publish_config;
    use shardgate_core::control::ring::{Consumer, Poll};
    use shardgate_core::control::shm::Region;
    use shardgate_core::control::stats::{self, ShardView};

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
