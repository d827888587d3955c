//! The hidden test hook `SHARDGATE_CTL_STALL_AFTER_FRAMES=K`: write only the first K frames of
//! a config message to the ring, so an integration test can kill ctl mid-apply and check that
//! the shards drop the partial message and that the next `apply` takes the writer lock over.
//!
//! Never used outside tests.

use shardgate_core::control::shm::Region;

/// Write the first `frames_max` frames of message `version` (`body`) into the ring of
/// `region`. The caller holds the writer lock. Returns (frames written, frames the whole
/// message has).
pub fn publish_partial(
    region: &Region,
    version: u64,
    body: &[u8],
    frames_max: u64,
) -> Result<(u64, u64), String> {
    let ring = region.ring();
    let per = ring.payload_bytes_per_frame();
    let frames = u64::try_from(body.len().div_ceil(per).max(1)).unwrap_or(u64::MAX);
    let written = ring
        .publish_partial(version, body, frames_max)
        .map_err(|e| e.to_string())?;
    Ok((written, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_core::control::ring::{Consumer, Poll};

    #[test]
    fn shards_drop_the_partial_message_and_take_the_next() {
        let dir = std::env::temp_dir().join(format!("sgctl-stall-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("{e}");
        }
        // Only this test of the crate reads SHARDGATE_SHM_DIR.
        std::env::set_var("SHARDGATE_SHM_DIR", &dir);
        let region = match Region::create("stall", 1, 1) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        };
        region.ring().publish(1, b"first").expect("fits");
        let mut shard = Consumer::at(region.ring().head());

        // Three frames' worth; only two are written.
        let per = region.ring().payload_bytes_per_frame();
        let body: Vec<u8> = (0..per * 2 + 10)
            .map(|i| u8::try_from(i % 251).expect("< 251"))
            .collect();
        let (written, frames) = match publish_partial(&region, 2, &body, 2) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((written, frames), (2, 3));
        assert_eq!(region.ring().head(), 3);
        assert_eq!(shard.poll(&region.ring()), Poll::Idle);
        assert_eq!(shard.cursor(), 3);
        // The newest complete message is still the first.
        assert_eq!(region.ring().latest_message(), Some((1, b"first".to_vec())));

        // The next ctl publishes normally: the cut-short version is reported and dropped.
        region.ring().publish(3, b"third").expect("fits");
        match shard.poll(&region.ring()) {
            Poll::Dropped(why) => assert!(why.contains("version 2"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            shard.poll(&region.ring()),
            Poll::Message {
                version: 3,
                body: b"third".to_vec()
            }
        );

        // Asking for more frames than the message has writes it whole.
        let (written, frames) = match publish_partial(&region, 4, &body, 99) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        };
        assert_eq!((written, frames), (3, 3));
        assert_eq!(
            shard.poll(&region.ring()),
            Poll::Message { version: 4, body }
        );
        drop(region);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
