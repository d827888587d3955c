//! The hidden test hook `SHARDGATE_CTL_STALL_AFTER_FRAMES=K`: write only the first K frames of
//! a config message to the ring, so an integration test can kill ctl mid-apply and check that
//! the shards drop the partial message and that the next `apply` takes the writer lock over.
//!
//! The engine's ring publishes whole messages only ([`RingView::publish`]), and ctl may not use
//! `unsafe` to map the region itself. So the frames are built by `publish` into a private ring
//! of the same shape whose head starts at the shared ring's head (the exact words `publish`
//! would write there), and the first K frames are copied into the region file with positioned
//! writes, in the ring protocol's order: the slot's stamp marked "being written" (odd), the
//! frame's words, the stamp marked complete, then the ring's head. The region file is a tmpfs
//! file the engine maps shared, so the writes land in the pages the shards read.
//!
//! Never used outside tests: a proper `RingView::publish_partial` in the engine would replace
//! the file writes.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use shardgate_engine::control::ring::RingView;
use shardgate_engine::control::shm::{Fixed, Region};
use shardgate_engine::limits::{RING_SLOTS, RING_SLOT_WORDS};

/// Write the first `frames_max` frames of message `version` (`body`) into the ring of
/// `region`, whose file is `path`. The caller holds the writer lock. Returns (frames written,
/// frames the whole message has).
pub fn publish_partial(
    region: &Region,
    path: &Path,
    version: u64,
    body: &[u8],
    frames_max: u64,
) -> Result<(u64, u64), String> {
    let shared = region.ring();
    let head0 = shared.head();
    let private_head = AtomicU64::new(head0);
    let words: Vec<AtomicU64> = (0..RING_SLOTS * RING_SLOT_WORDS)
        .map(|_| AtomicU64::new(0))
        .collect();
    let private = RingView::new(&private_head, &words, RING_SLOT_WORDS);
    if private.slot_count() != shared.slot_count()
        || private.payload_bytes_per_frame() != shared.payload_bytes_per_frame()
    {
        return Err("the region's ring is not the shape this shardgate-ctl knows".into());
    }
    let frames = private.publish(version, body).map_err(|e| e.to_string())?;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let put = |offset: usize, bytes: &[u8]| {
        file.write_all_at(bytes, offset as u64)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))
    };
    let ring_at = std::mem::offset_of!(Fixed, ring);
    let head_at = std::mem::offset_of!(Fixed, ring_head.0);
    let written = frames.min(frames_max);
    for seq in head0..head0 + written {
        let slot = usize::try_from(seq % shared.slot_count()).unwrap_or(0);
        let frame = &words[slot * RING_SLOT_WORDS..(slot + 1) * RING_SLOT_WORDS];
        let at = ring_at + slot * RING_SLOT_WORDS * 8;
        let done = frame[0].load(Ordering::Relaxed);
        debug_assert_eq!(done, 2 * seq + 2, "publish stamps a complete frame 2*seq+2");
        let mut rest = Vec::with_capacity((RING_SLOT_WORDS - 1) * 8);
        for w in &frame[1..] {
            rest.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        put(at, &(2 * seq + 1).to_le_bytes())?;
        put(at + 8, &rest)?;
        put(at, &done.to_le_bytes())?;
        put(head_at, &(seq + 1).to_le_bytes())?;
    }
    Ok((written, frames))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shardgate_engine::control::ring::{Consumer, Poll};

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
        let path = shardgate_engine::control::shm::region_path("stall");
        region.ring().publish(1, b"first").expect("fits");
        let mut shard = Consumer::at(region.ring().head());

        // Three frames' worth; only two are written.
        let per = region.ring().payload_bytes_per_frame();
        let body: Vec<u8> = (0..per * 2 + 10)
            .map(|i| u8::try_from(i % 251).expect("< 251"))
            .collect();
        let (written, frames) = match publish_partial(&region, &path, 2, &body, 2) {
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
        let (written, frames) = match publish_partial(&region, &path, 4, &body, 99) {
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
