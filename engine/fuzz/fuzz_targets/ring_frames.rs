//! Any bytes as the words of a config ring (a scribbled-on or truncated shared region): a
//! reader never panics, terminates, and never delivers (or allocates for) a message larger than
//! the ring allows.
#![no_main]
use std::sync::atomic::AtomicU64;

use libfuzzer_sys::fuzz_target;
use shardgate_engine::control::ring::{Consumer, Poll, RingView};

const SLOTS: usize = 4;
const SLOT_WORDS: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut words = data
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(b)
        })
        .collect::<Vec<u64>>()
        .into_iter();
    let head = AtomicU64::new(words.next().unwrap_or(0) % 64);
    let start = words.next().unwrap_or(0) % 64;
    let slots: Vec<AtomicU64> = (0..SLOTS * SLOT_WORDS)
        .map(|_| AtomicU64::new(words.next().unwrap_or(0)))
        .collect();
    let ring = RingView::new(&head, &slots, SLOT_WORDS);
    let mut c = Consumer::at(start);
    for _ in 0..4 * SLOTS {
        match c.poll(&ring) {
            Poll::Idle => break,
            Poll::Message { body, .. } => assert!(body.len() <= ring.message_bytes_max()),
            Poll::Dropped(_) => {}
        }
    }
    let _ = ring.latest_message();
});
