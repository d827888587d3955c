//! Building a shard's monoio runtime: io_uring with the set-up that measured fastest, then
//! io_uring's default set-up, then epoll (docs/decisions/0002-io-uring-setup.md). Shared by the
//! engine's shards and by `shardgate-bench`'s load generator and mock upstream, so every
//! thread-per-core component of the project picks its driver the same way.

use std::future::Future;

use crate::config::DriverChoice;
use crate::limits::URING_ENTRIES;

/// Which driver a thread ended up on (defined beside [`DriverChoice`], in the config, so the
/// counter blocks `shardgate-ctl` reads can name it without this module's runtime).
pub use crate::config::DriverKind;

/// Build the best runtime `choice` allows on this thread and run the future `make` returns on
/// it. `make` learns which driver it got (and may do synchronous set-up first). Fails only when
/// `choice` demands io_uring and there is none, or no runtime can be built at all.
pub fn block_on_best<T, Fut>(
    choice: DriverChoice,
    make: impl FnOnce(DriverKind) -> Fut,
) -> Result<T, String>
where
    Fut: Future<Output = T>,
{
    if choice != DriverChoice::Epoll && monoio::utils::detect_uring() {
        let mut tuned = io_uring::IoUring::builder();
        tuned
            .setup_coop_taskrun()
            .setup_single_issuer()
            .setup_defer_taskrun();
        for (urb, kind) in [
            (tuned, DriverKind::IoUringTuned),
            (io_uring::IoUring::builder(), DriverKind::IoUring),
        ] {
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(URING_ENTRIES)
                .uring_builder(urb)
                .enable_timer()
                .build();
            match built {
                Ok(mut rt) => return Ok(rt.block_on(make(kind))),
                Err(e) => tracing::debug!("{kind:?} refused by the kernel: {e}"),
            }
        }
        if choice == DriverChoice::IoUring {
            return Err("io_uring could not be set up on this kernel".into());
        }
    } else if choice == DriverChoice::IoUring {
        return Err("io_uring is not available on this kernel or is blocked".into());
    }
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .with_entries(URING_ENTRIES)
        .enable_timer()
        .build()
        .map_err(|e| format!("cannot build an epoll runtime: {e}"))?;
    Ok(rt.block_on(make(DriverKind::Epoll)))
}

/// Raise this process's open-file soft limit to the hard limit (children inherit it); returns
/// the soft limit now in force.
pub fn raise_nofile() -> u64 {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    // `None` is "unlimited".
    let soft = now.current.unwrap_or(u64::MAX);
    match now.maximum {
        Some(hard) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: Some(hard),
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                hard
            } else {
                soft
            }
        }
        None if now.current.is_some() => {
            // Unlimited hard limit: ask for plenty (the kernel caps it at fs.nr_open).
            let raised = Rlimit {
                current: Some(1 << 20),
                maximum: None,
            };
            if setrlimit(Resource::Nofile, raised).is_ok() {
                1 << 20
            } else {
                soft
            }
        }
        _ => soft,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_is_always_available_and_reported() {
        let got = block_on_best(DriverChoice::Epoll, |kind| async move { kind });
        assert_eq!(got, Ok(DriverKind::Epoll));
    }

    #[test]
    fn auto_runs_the_future_on_some_driver() {
        let got = block_on_best(DriverChoice::Auto, |kind| async move {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
            kind
        });
        assert!(got.is_ok(), "{got:?}");
    }
}
