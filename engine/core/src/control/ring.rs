//! The config ring: one producer (`shardgate-ctl`, or the engine once at start-up) writes
//! framed messages; every shard reads them with its own cursor.
//!
//! The protocol is written against [`Word`], so the same code runs over the shared-memory
//! region (std atomics) and under loom's model checker (loom atomics; see the tests).
//!
//! # Frames
//! A message (one full config snapshot) is cut into frames, one per slot. Frame `seq` lives in
//! slot `seq % slots`. Word 0 of a slot is its stamp, a per-slot seqlock:
//! `2*seq + 1` while frame `seq` is being written, `2*seq + 2` once it is complete. The words
//! after it hold the frame header and the payload bytes (little-endian, 8 to a word). The
//! ring's `head` counts the frames published; it is stored after the stamp, so a reader that
//! sees `head > seq` finds frame `seq` complete unless it was overwritten since (a later lap).
//!
//! Every word is an atomic, written and read with `Relaxed` between the stamp's release and
//! acquire, so a torn read is a detected event (the stamp changed), never undefined behaviour.
//!
//! # Readers
//! A [`Consumer`] keeps its cursor and assembles chunks. A gap (it was lapped), a torn frame,
//! a bad checksum, or a message that stops part-way (a producer killed mid-write) drops the
//! partial message and waits for the next frame 0: every message is a full snapshot, so the
//! next one is all a reader that fell behind needs.

use std::sync::atomic::Ordering;

/// One 64-bit cell the ring is made of: `std::sync::atomic::AtomicU64` in shared memory, or
/// loom's in model tests.
pub trait Word: Sync {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, value: u64, order: Ordering);
    /// A memory fence of the same family as the word's atomics.
    fn fence(order: Ordering);
}

impl Word for std::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        std::sync::atomic::AtomicU64::load(self, order)
    }
    #[inline]
    fn store(&self, value: u64, order: Ordering) {
        std::sync::atomic::AtomicU64::store(self, value, order);
    }
    #[inline]
    fn fence(order: Ordering) {
        std::sync::atomic::fence(order);
    }
}

/// Words of frame header after the stamp: version, chunk index/count, lengths, checksums, tag.
pub const FRAME_HEADER_WORDS: usize = 6;
/// `SGRF` and the schema version, in the last header word.
const FRAME_TAG: u32 = u32::from_le_bytes(*b"SGRF");
/// Version of the frame and message layout. A reader refuses frames of another schema.
pub const SCHEMA_VERSION: u16 = 1;

/// The header of one frame, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub version: u64,
    pub chunk_index: u32,
    pub chunk_count: u32,
    pub chunk_len: u32,
    pub total_len: u32,
    pub chunk_crc: u32,
    pub message_crc: u32,
    pub schema: u16,
}

/// What reading frame `seq` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameRead {
    /// Complete; the payload is in the caller's buffer.
    Ok(FrameHeader),
    /// Not published yet.
    NotYet,
    /// A later frame has taken the slot (before or while it was read).
    Overwritten,
    /// Complete but not a valid frame: the reason.
    Invalid(&'static str),
}

/// Why a message cannot be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// Larger than half the ring (so the previous message always survives a new one).
    TooLarge { bytes: usize, max: usize },
}

impl std::fmt::Display for PublishError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PublishError::TooLarge { bytes, max } => {
                write!(
                    f,
                    "message of {bytes} bytes is larger than the ring allows ({max})"
                )
            }
        }
    }
}

/// The ring over borrowed words: `head` and `slots.len() / slot_words` slots.
#[derive(Debug)]
pub struct RingView<'a, W: Word> {
    head: &'a W,
    slots: &'a [W],
    slot_words: usize,
}

impl<'a, W: Word> RingView<'a, W> {
    /// `slots.len()` must be a non-zero multiple of `slot_words`, and a slot must hold the
    /// header and at least one payload word.
    pub fn new(head: &'a W, slots: &'a [W], slot_words: usize) -> Self {
        assert!(slot_words > 1 + FRAME_HEADER_WORDS, "slot too small");
        assert!(
            !slots.is_empty() && slots.len().is_multiple_of(slot_words),
            "slots must be whole"
        );
        Self {
            head,
            slots,
            slot_words,
        }
    }

    pub fn slot_count(&self) -> u64 {
        (self.slots.len() / self.slot_words) as u64
    }

    /// Payload bytes one frame carries.
    pub fn payload_bytes_per_frame(&self) -> usize {
        (self.slot_words - 1 - FRAME_HEADER_WORDS) * 8
    }

    /// The largest message [`RingView::publish`] takes: half the ring, so a reader can always
    /// still find the previous complete message while a new one is written.
    pub fn message_bytes_max(&self) -> usize {
        let frames = usize::try_from(self.slot_count() / 2).unwrap_or(usize::MAX);
        frames.max(1) * self.payload_bytes_per_frame()
    }

    /// Frames published so far.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    fn slot(&self, seq: u64) -> &'a [W] {
        let i = usize::try_from(seq % self.slot_count()).unwrap_or(0);
        &self.slots[i * self.slot_words..(i + 1) * self.slot_words]
    }

    /// Publish `body` as message `version`. The caller is the only producer (it holds the
    /// region's writer lock). Returns the number of frames written.
    pub fn publish(&self, version: u64, body: &[u8]) -> Result<u64, PublishError> {
        self.publish_partial(version, body, u64::MAX)
    }

    /// [`RingView::publish`], stopping after `frames_max` frames: what a producer killed
    /// mid-write leaves behind. For fault-injection tests (`shardgate-ctl`'s stall hook).
    pub fn publish_partial(
        &self,
        version: u64,
        body: &[u8],
        frames_max: u64,
    ) -> Result<u64, PublishError> {
        let max = self.message_bytes_max();
        if body.len() > max {
            return Err(PublishError::TooLarge {
                bytes: body.len(),
                max,
            });
        }
        let per = self.payload_bytes_per_frame();
        let chunks: Vec<&[u8]> = if body.is_empty() {
            vec![&[][..]]
        } else {
            body.chunks(per).collect()
        };
        let message_crc = crc32fast::hash(body);
        let count = u32_of(chunks.len());
        let mut seq = self.head.load(Ordering::Relaxed);
        for (index, chunk) in chunks.iter().enumerate() {
            if index as u64 >= frames_max {
                break;
            }
            let header = FrameHeader {
                version,
                chunk_index: u32_of(index),
                chunk_count: count,
                chunk_len: u32_of(chunk.len()),
                total_len: u32_of(body.len()),
                chunk_crc: crc32fast::hash(chunk),
                message_crc,
                schema: SCHEMA_VERSION,
            };
            self.write_frame(seq, &header, chunk);
            seq += 1;
            self.head.store(seq, Ordering::Release);
        }
        Ok(u64::from(count).min(frames_max))
    }

    fn write_frame(&self, seq: u64, h: &FrameHeader, payload: &[u8]) {
        let slot = self.slot(seq);
        slot[0].store(2 * seq + 1, Ordering::Relaxed);
        W::fence(Ordering::Release);
        let words = encode_header(h);
        for (w, v) in slot[1..=FRAME_HEADER_WORDS].iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
        for (w, bytes) in slot[1 + FRAME_HEADER_WORDS..].iter().zip(payload.chunks(8)) {
            let mut b = [0u8; 8];
            b[..bytes.len()].copy_from_slice(bytes);
            w.store(u64::from_le_bytes(b), Ordering::Relaxed);
        }
        slot[0].store(2 * seq + 2, Ordering::Release);
    }

    /// Read frame `seq`, its payload appended to `payload` (cleared first).
    pub fn read_frame(&self, seq: u64, payload: &mut Vec<u8>) -> FrameRead {
        payload.clear();
        if seq >= self.head() {
            return FrameRead::NotYet;
        }
        let slot = self.slot(seq);
        let done = 2 * seq + 2;
        let s1 = slot[0].load(Ordering::Acquire);
        if s1 != done {
            return if s1 > done {
                FrameRead::Overwritten
            } else {
                // The head says published, the stamp says older: the region was scribbled on.
                FrameRead::Invalid("slot stamp older than the ring head")
            };
        }
        let mut words = [0u64; FRAME_HEADER_WORDS];
        for (v, w) in words.iter_mut().zip(&slot[1..=FRAME_HEADER_WORDS]) {
            *v = w.load(Ordering::Relaxed);
        }
        let header = decode_header(&words);
        let len = usize::try_from(header.chunk_len).unwrap_or(usize::MAX);
        let fits = len <= self.payload_bytes_per_frame();
        if fits {
            for w in &slot[1 + FRAME_HEADER_WORDS..1 + FRAME_HEADER_WORDS + len.div_ceil(8)] {
                payload.extend_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
            }
            payload.truncate(len);
        }
        W::fence(Ordering::Acquire);
        if slot[0].load(Ordering::Relaxed) != s1 {
            payload.clear();
            return FrameRead::Overwritten;
        }
        if let Err(reason) = check_header(&header, fits, self.message_bytes_max()) {
            payload.clear();
            return FrameRead::Invalid(reason);
        }
        if crc32fast::hash(payload) != header.chunk_crc {
            payload.clear();
            return FrameRead::Invalid("frame checksum mismatch");
        }
        FrameRead::Ok(header)
    }

    /// The version of the newest frame in the ring, complete message or not: a new message
    /// is numbered above it, so a version a dead writer left half-written is never reused.
    pub fn newest_frame_version(&self) -> Option<u64> {
        let head = self.head();
        let mut payload = Vec::new();
        match self.read_frame(head.checked_sub(1)?, &mut payload) {
            FrameRead::Ok(h) => Some(h.version),
            _ => None,
        }
    }

    /// The newest complete message still in the ring: (version, body). Used by ctl to diff
    /// against the running config and to number the next version.
    pub fn latest_message(&self) -> Option<(u64, Vec<u8>)> {
        let head = self.head();
        let oldest = head.saturating_sub(self.slot_count());
        let mut payload = Vec::new();
        for start in (oldest..head).rev() {
            let FrameRead::Ok(h) = self.read_frame(start, &mut payload) else {
                continue;
            };
            if h.chunk_index != 0 || start + u64::from(h.chunk_count) > head {
                continue;
            }
            // From a frame 0 a fresh reader either completes the message or drops it.
            if let Poll::Message { version, body } = Consumer::at(start).poll(self) {
                if version == h.version {
                    return Some((version, body));
                }
            }
        }
        None
    }
}

/// Lengths in frames are u32; `publish` refuses messages over half the ring, far below 4 GiB.
fn u32_of(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn encode_header(h: &FrameHeader) -> [u64; FRAME_HEADER_WORDS] {
    [
        h.version,
        u64::from(h.chunk_index) | u64::from(h.chunk_count) << 32,
        u64::from(h.chunk_len) | u64::from(h.total_len) << 32,
        u64::from(h.chunk_crc) | u64::from(h.message_crc) << 32,
        u64::from(FRAME_TAG) | u64::from(h.schema) << 32,
        // Reserved.
        0,
    ]
}

fn lo(w: u64) -> u32 {
    (w & 0xffff_ffff) as u32
}

fn hi(w: u64) -> u32 {
    (w >> 32) as u32
}

fn decode_header(w: &[u64; FRAME_HEADER_WORDS]) -> FrameHeader {
    FrameHeader {
        version: w[0],
        chunk_index: lo(w[1]),
        chunk_count: hi(w[1]),
        chunk_len: lo(w[2]),
        total_len: hi(w[2]),
        chunk_crc: lo(w[3]),
        message_crc: hi(w[3]),
        schema: if lo(w[4]) == FRAME_TAG {
            (hi(w[4]) & 0xffff) as u16
        } else {
            0
        },
    }
}

fn check_header(
    h: &FrameHeader,
    payload_fits: bool,
    message_bytes_max: usize,
) -> Result<(), &'static str> {
    if h.schema == 0 {
        return Err("not a shardgate ring frame");
    }
    if h.schema != SCHEMA_VERSION {
        return Err("frame of another schema version (ctl and engine differ in version)");
    }
    if !payload_fits {
        return Err("frame length larger than a slot");
    }
    if h.chunk_count == 0 || h.chunk_index >= h.chunk_count {
        return Err("chunk index out of range");
    }
    if h.chunk_len > h.total_len {
        return Err("chunk longer than its message");
    }
    // A reader allocates the message's length up front: never more than a message can be.
    if usize::try_from(h.total_len).map_or(true, |n| n > message_bytes_max) {
        return Err("message length larger than the ring allows");
    }
    Ok(())
}

/// A message being put together from its frames.
#[derive(Debug)]
struct Assembly {
    version: u64,
    next_index: u32,
    chunk_count: u32,
    total_len: u32,
    message_crc: u32,
    body: Vec<u8>,
}

/// What one [`Consumer::poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Caught up: nothing new.
    Idle,
    /// A complete, checked message.
    Message { version: u64, body: Vec<u8> },
    /// Frames were skipped (lapped, torn, corrupt, or a message cut short): why.
    Dropped(String),
}

/// One reader's position in the ring. Each shard owns one.
#[derive(Debug)]
pub struct Consumer {
    cursor: u64,
    asm: Option<Assembly>,
    frame: Vec<u8>,
}

impl Consumer {
    /// A reader whose next frame is `cursor` (the ring's head at start-up: only new messages).
    pub fn at(cursor: u64) -> Self {
        Self {
            cursor,
            asm: None,
            frame: Vec::new(),
        }
    }

    /// The next frame this reader will read.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }

    /// Frames published and not read yet.
    pub fn lag<W: Word>(&self, ring: &RingView<'_, W>) -> u64 {
        ring.head().saturating_sub(self.cursor)
    }

    /// Whether frames are waiting: one acquire load, cheap enough between requests.
    pub fn has_news<W: Word>(&self, ring: &RingView<'_, W>) -> bool {
        ring.head() != self.cursor
    }

    /// Read frames until a message completes, something is dropped, or the reader is caught
    /// up. Reads at most one ring's worth of frames per call.
    pub fn poll<W: Word>(&mut self, ring: &RingView<'_, W>) -> Poll {
        for _ in 0..=ring.slot_count() {
            let head = ring.head();
            if self.cursor == head {
                return Poll::Idle;
            }
            if head < self.cursor {
                // The ring was re-created under us (an engine restart reusing the region).
                self.cursor = head;
                self.asm = None;
                return Poll::Dropped(
                    "ring head moved backwards; waiting for a new message".into(),
                );
            }
            if head - self.cursor > ring.slot_count() {
                let skipped = head - ring.slot_count() - self.cursor;
                self.cursor = head - ring.slot_count();
                self.asm = None;
                return Poll::Dropped(format!(
                    "fell {skipped} frames behind; waiting for the next full message"
                ));
            }
            let seq = self.cursor;
            let mut frame = std::mem::take(&mut self.frame);
            let read = ring.read_frame(seq, &mut frame);
            let step = match read {
                FrameRead::NotYet => {
                    self.frame = frame;
                    return Poll::Idle;
                }
                FrameRead::Overwritten => {
                    // Lapped while reading: the check above moves the cursor next time.
                    self.asm = None;
                    self.cursor = ring.head().saturating_sub(ring.slot_count()).max(seq + 1);
                    Some(Poll::Dropped(format!(
                        "frame {seq} was overwritten before it was read; waiting for the next full message"
                    )))
                }
                FrameRead::Invalid(reason) => {
                    self.cursor += 1;
                    let had = self.asm.take().map(|a| a.version);
                    Some(Poll::Dropped(match had {
                        Some(v) => format!("frame {seq}: {reason}; version {v} dropped"),
                        None => format!("frame {seq}: {reason}"),
                    }))
                }
                FrameRead::Ok(h) => {
                    self.cursor += 1;
                    self.accept(&h, &frame)
                }
            };
            self.frame = frame;
            if let Some(p) = step {
                return p;
            }
        }
        Poll::Idle
    }

    /// Take one good frame; `Some` when it completes a message or breaks one.
    fn accept(&mut self, h: &FrameHeader, payload: &[u8]) -> Option<Poll> {
        let mut dropped = None;
        if h.chunk_index == 0 {
            if let Some(a) = self.asm.take() {
                dropped = Some(format!(
                    "version {} stopped after {} of {} frames (its writer died?); dropped",
                    a.version, a.next_index, a.chunk_count
                ));
            }
            self.asm = Some(Assembly {
                version: h.version,
                next_index: 0,
                chunk_count: h.chunk_count,
                total_len: h.total_len,
                message_crc: h.message_crc,
                body: Vec::with_capacity(usize::try_from(h.total_len).unwrap_or(0)),
            });
        }
        let Some(a) = self.asm.as_mut() else {
            // Part of a message whose start we missed: wait for the next frame 0.
            return None;
        };
        if a.version != h.version
            || a.next_index != h.chunk_index
            || a.chunk_count != h.chunk_count
            || a.total_len != h.total_len
            || a.message_crc != h.message_crc
        {
            let v = a.version;
            self.asm = None;
            return Some(Poll::Dropped(format!(
                "version {v}: frames out of order; dropped"
            )));
        }
        a.body.extend_from_slice(payload);
        a.next_index += 1;
        if a.body.len() > usize::try_from(a.total_len).unwrap_or(usize::MAX) {
            let v = a.version;
            self.asm = None;
            return Some(Poll::Dropped(format!(
                "version {v}: longer than its header says; dropped"
            )));
        }
        if a.next_index < a.chunk_count {
            return dropped.map(Poll::Dropped);
        }
        let a = self.asm.take()?;
        if a.body.len() != a.total_len as usize || crc32fast::hash(&a.body) != a.message_crc {
            return Some(Poll::Dropped(format!(
                "version {}: message checksum mismatch; dropped",
                a.version
            )));
        }
        if let Some(d) = dropped {
            // Report the cut-short message; this one is complete too, but only one event is
            // returned per poll: step back so the next poll re-reads this single frame.
            // (Only a one-frame message can complete on the frame that dropped another.)
            self.cursor -= 1;
            return Some(Poll::Dropped(d));
        }
        Some(Poll::Message {
            version: a.version,
            body: a.body,
        })
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "small test values")]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    struct Mem {
        head: AtomicU64,
        slots: Vec<AtomicU64>,
        slot_words: usize,
    }

    impl Mem {
        fn new(slots: usize, slot_words: usize) -> Self {
            Self {
                head: AtomicU64::new(0),
                slots: (0..slots * slot_words).map(|_| AtomicU64::new(0)).collect(),
                slot_words,
            }
        }
        fn view(&self) -> RingView<'_, AtomicU64> {
            RingView::new(&self.head, &self.slots, self.slot_words)
        }
    }

    fn body(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    fn drain(c: &mut Consumer, r: &RingView<'_, AtomicU64>) -> Vec<Poll> {
        let mut out = Vec::new();
        loop {
            match c.poll(r) {
                Poll::Idle => return out,
                p => out.push(p),
            }
        }
    }

    #[test]
    fn one_and_many_frame_messages_round_trip() {
        let m = Mem::new(16, 8); // 8 words: 7 after the stamp, 1 payload word = 8 bytes
        let r = m.view();
        assert_eq!(r.payload_bytes_per_frame(), 8);
        let mut c = Consumer::at(r.head());
        for (v, len) in [(1u64, 0usize), (2, 5), (3, 8), (4, 64), (5, 17)] {
            let b = body(len, v as u8);
            r.publish(v, &b).expect("fits");
            assert_eq!(
                drain(&mut c, &r),
                vec![Poll::Message {
                    version: v,
                    body: b
                }]
            );
        }
        assert_eq!(r.latest_message().map(|m| m.0), Some(5));
    }

    #[test]
    fn too_large_is_refused() {
        let m = Mem::new(4, 8);
        let r = m.view();
        assert_eq!(r.message_bytes_max(), 16);
        assert!(matches!(
            r.publish(1, &body(17, 0)),
            Err(PublishError::TooLarge { .. })
        ));
        assert_eq!(r.head(), 0);
    }

    #[test]
    fn a_lapped_reader_waits_for_the_next_full_message() {
        let m = Mem::new(8, 8);
        let r = m.view();
        let mut c = Consumer::at(0);
        for v in 1..=6 {
            r.publish(v, &body(32, v as u8)).expect("fits"); // 4 frames each
        }
        let events = drain(&mut c, &r);
        assert!(matches!(events[0], Poll::Dropped(_)), "{events:?}");
        // Whatever it delivers is whole and the newest message is among it.
        let msgs: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                Poll::Message { version, body: b } => Some((*version, b.clone())),
                _ => None,
            })
            .collect();
        assert_eq!(msgs.last().map(|m| m.0), Some(6));
        for (v, b) in msgs {
            assert_eq!(b, body(32, v as u8));
        }
    }

    #[test]
    fn a_message_cut_short_is_dropped_and_the_next_one_applies() {
        let m = Mem::new(16, 8);
        let r = m.view();
        let mut c = Consumer::at(0);
        // A producer that died after 2 of 4 frames: publish frames by hand.
        let b = body(32, 9);
        let crc = crc32fast::hash(&b);
        for (i, chunk) in b.chunks(8).take(2).enumerate() {
            let h = FrameHeader {
                version: 7,
                chunk_index: i as u32,
                chunk_count: 4,
                chunk_len: 8,
                total_len: 32,
                chunk_crc: crc32fast::hash(chunk),
                message_crc: crc,
                schema: SCHEMA_VERSION,
            };
            r.write_frame(i as u64, &h, chunk);
            m.head.store(i as u64 + 1, Ordering::Release);
        }
        assert_eq!(c.poll(&r), Poll::Idle);
        r.publish(8, &body(3, 1)).expect("fits");
        let events = drain(&mut c, &r);
        assert!(
            matches!(&events[0], Poll::Dropped(d) if d.contains("version 7")),
            "{events:?}"
        );
        assert_eq!(
            events[1],
            Poll::Message {
                version: 8,
                body: body(3, 1)
            }
        );
        assert_eq!(r.latest_message().map(|m| m.0), Some(8));
    }

    #[test]
    fn corruption_is_detected_and_never_applied() {
        let m = Mem::new(16, 8);
        let r = m.view();
        let mut c = Consumer::at(0);
        r.publish(1, &body(24, 3)).expect("fits");
        // Flip a payload bit of the second frame.
        let w = &m.slots[8 + 1 + FRAME_HEADER_WORDS];
        w.store(w.load(Ordering::Relaxed) ^ 1, Ordering::Relaxed);
        let events = drain(&mut c, &r);
        assert!(
            events.iter().all(|e| matches!(e, Poll::Dropped(_))),
            "{events:?}"
        );
        assert!(!events.is_empty());
        // Garbage in the header words.
        r.publish(2, &body(4, 3)).expect("fits");
        let slot = usize::try_from(r.head() - 1).expect("small") % 16 * 8;
        m.slots[slot + 5].store(0xdead_beef, Ordering::Relaxed);
        let events = drain(&mut c, &r);
        assert!(
            matches!(&events[..], [Poll::Dropped(d)] if d.contains("not a shardgate ring frame")),
            "{events:?}"
        );
        r.publish(3, &body(4, 4)).expect("fits");
        assert_eq!(
            drain(&mut c, &r),
            vec![Poll::Message {
                version: 3,
                body: body(4, 4)
            }]
        );
    }

    #[test]
    fn a_huge_length_from_a_scribbled_region_is_refused_before_allocating() {
        let m = Mem::new(4, 8);
        let r = m.view();
        let h = FrameHeader {
            version: 1,
            chunk_index: 0,
            chunk_count: 1,
            chunk_len: 0,
            total_len: u32::MAX,
            chunk_crc: crc32fast::hash(&[]),
            message_crc: 0,
            schema: SCHEMA_VERSION,
        };
        r.write_frame(0, &h, &[]);
        m.head.store(1, Ordering::Release);
        let mut c = Consumer::at(0);
        assert!(
            matches!(c.poll(&r), Poll::Dropped(d) if d.contains("larger than the ring allows"))
        );
        // What a killed producer leaves: the first frames only, then nothing applies.
        assert_eq!(r.publish_partial(2, &body(16, 1), 1), Ok(1));
        assert_eq!(c.poll(&r), Poll::Idle);
        assert_eq!(r.latest_message(), None);
    }

    #[test]
    fn readers_never_see_a_torn_message_under_threads() {
        let m = std::sync::Arc::new(Mem::new(8, 16));
        let writer = {
            let m = m.clone();
            std::thread::spawn(move || {
                for v in 1..=2000u64 {
                    let len = (v as usize * 7) % 200;
                    m.view().publish(v, &body(len, v as u8)).expect("fits");
                }
            })
        };
        let mut c = Consumer::at(0);
        let mut last = 0;
        while last < 2000 {
            match c.poll(&m.view()) {
                Poll::Message { version, body: b } => {
                    assert!(version > last);
                    assert_eq!(b, body((version as usize * 7) % 200, version as u8));
                    last = version;
                }
                Poll::Dropped(_) => {}
                Poll::Idle if writer.is_finished() && c.cursor() == m.view().head() => break,
                Poll::Idle => std::thread::yield_now(),
            }
        }
        writer.join().expect("writer");
        assert_eq!(m.view().latest_message().map(|m| m.0), Some(2000));
    }
}

/// Loom model tests of the seqlock protocol: every interleaving of one producer and one reader
/// (bounded preemption) either delivers a message exactly as written or reports a drop.
#[cfg(test)]
#[allow(clippy::cast_possible_truncation, reason = "small test values")]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU64;
    use loom::sync::Arc;

    impl Word for AtomicU64 {
        fn load(&self, order: Ordering) -> u64 {
            AtomicU64::load(self, order)
        }
        fn store(&self, value: u64, order: Ordering) {
            AtomicU64::store(self, value, order);
        }
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order);
        }
    }

    /// Slots of 8 words: one 8-byte payload word per frame.
    const SLOT_WORDS: usize = 8;

    struct Mem {
        head: AtomicU64,
        slots: Vec<AtomicU64>,
    }

    fn mem(slots: usize) -> Arc<Mem> {
        Arc::new(Mem {
            head: AtomicU64::new(0),
            slots: (0..slots * SLOT_WORDS).map(|_| AtomicU64::new(0)).collect(),
        })
    }

    fn msg(v: u64, len: usize) -> Vec<u8> {
        (0..len).map(|i| (v as u8) ^ (i as u8 * 17)).collect()
    }

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut b = loom::model::Builder::new();
        // One preemption keeps `cargo test` quick; LOOM_MAX_PREEMPTIONS=2 (or more) searches
        // deeper (see docs/decisions/0004-shared-memory-control-plane.md).
        if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
            b.preemption_bound = Some(1);
        }
        b.check(f);
    }

    /// Check what a reader delivered: whole messages, as written, in increasing versions.
    fn check(events: &[Poll], lens: &[usize]) {
        let mut last = 0;
        for e in events {
            if let Poll::Message { version, body } = e {
                assert!(*version > last, "{events:?}");
                let len = lens[usize::try_from(*version - 1).expect("small")];
                assert_eq!(body, &msg(*version, len));
                last = *version;
            }
        }
    }

    #[test]
    fn loom_reader_sees_whole_messages_or_nothing() {
        // Two slots and three one-frame messages: the third overwrites the first's slot, so
        // a slow reader is lapped, possibly while it copies a frame.
        model(|| {
            let m = mem(2);
            let lens = [8usize, 3, 8];
            let w = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    let r = RingView::new(&m.head, &m.slots, SLOT_WORDS);
                    for (i, len) in lens.iter().enumerate() {
                        r.publish(i as u64 + 1, &msg(i as u64 + 1, *len))
                            .expect("fits");
                    }
                })
            };
            let r = RingView::new(&m.head, &m.slots, SLOT_WORDS);
            let mut c = Consumer::at(0);
            let mut events = Vec::new();
            for _ in 0..3 {
                match c.poll(&r) {
                    Poll::Idle => loom::thread::yield_now(),
                    p => events.push(p),
                }
            }
            w.join().expect("writer");
            loop {
                match c.poll(&r) {
                    Poll::Idle => break,
                    p => events.push(p),
                }
            }
            check(&events, &lens);
            // Caught up after the writer finished: the newest message was delivered.
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Poll::Message { version: 3, .. })),
                "{events:?}"
            );
        });
    }

    #[test]
    fn loom_multi_frame_message_is_assembled_or_dropped() {
        model(|| {
            let m = mem(4);
            let lens = [16usize]; // two frames
            let w = {
                let m = m.clone();
                loom::thread::spawn(move || {
                    let r = RingView::new(&m.head, &m.slots, SLOT_WORDS);
                    r.publish(1, &msg(1, 16)).expect("fits");
                })
            };
            let r = RingView::new(&m.head, &m.slots, SLOT_WORDS);
            let mut c = Consumer::at(0);
            let mut events = Vec::new();
            if let p @ (Poll::Message { .. } | Poll::Dropped(_)) = c.poll(&r) {
                events.push(p);
            }
            w.join().expect("writer");
            loop {
                match c.poll(&r) {
                    Poll::Idle => break,
                    p => events.push(p),
                }
            }
            check(&events, &lens);
            assert_eq!(
                events,
                vec![Poll::Message {
                    version: 1,
                    body: msg(1, 16)
                }]
            );
        });
    }
}
