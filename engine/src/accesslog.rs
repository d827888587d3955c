//! The access log: one JSON line per request, formatted and written off the hot path.
//!
//! ```text
//! shard thread                         "access-log" thread
//! ShardLog::push(Record)  (Copy, no heap)
//!   └─ batch Vec<Record> full ─► queue (bounded: ACCESS_LOG_QUEUE_BATCHES) ─► write_json × n
//!                                                                              write(2) once
//!      batch Vec reused     ◄─ returned (empty, capacity kept) ◄───────────────┘
//! ```
//!
//! A shard never blocks on the log and, once a few batches circulate, never allocates for it:
//! a record is copied into a batch allocated up front; a full batch goes to the writer with
//! `try_send`; the writer sends the emptied `Vec` back for reuse. When the queue is full (the
//! disk is slower than the traffic), the batch's records are dropped and counted in the shard's
//! `access_log_dropped` counter, which `/metrics` shows.
//!
//! What is logged is only what [`Record`] holds: never a header, a body, a query string (it
//! may carry a key) or a key.
//!
//! Shutdown order: every shard flushes (or drops, which flushes) its [`ShardLog`], then `main`
//! calls [`AccessLog::stop`], which writes everything queued and joins the writer. A `ShardLog`
//! still alive at that point does not hold `stop` up; what it sends later is counted as
//! dropped.
//!
//! Rotation: logrotate moves the file and sends SIGHUP; the SIGHUP handler (in `main`) sets the
//! `reopen` flag and the writer reopens the path before it writes its next batch, within
//! [`ACCESS_LOG_FLUSH_MS`] at the latest.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, RecvTimeoutError, Sender, TrySendError};

use crate::control::stats::add;
use crate::limits::{
    ACCESS_LOG_BATCH_RECORDS, ACCESS_LOG_FLUSH_MS, ACCESS_LOG_PATH_BYTES, ACCESS_LOG_QUEUE_BATCHES,
};

/// Bytes of a method kept in a record (longer methods are cut).
pub const METHOD_BYTES: usize = 16;
/// Permissions of a log file shardgate creates.
const ACCESS_LOG_FILE_MODE: u32 = 0o640;

const _: () = assert!(ACCESS_LOG_PATH_BYTES <= u16::MAX as usize);
const _: () = assert!(METHOD_BYTES <= u8::MAX as usize);
const _: () = assert!(ACCESS_LOG_BATCH_RECORDS > 0 && ACCESS_LOG_QUEUE_BATCHES > 0);

/// One finished request, as the shard saw it. Plain data on the stack: no heap, `Copy`.
#[derive(Clone, Copy)]
pub struct Record {
    pub unix_ms: u64,
    pub shard: u16,
    pub client: SocketAddr,
    /// INVARIANT: `method[..method_len]` is UTF-8 (cut at a char boundary by `set_method`).
    method: [u8; METHOD_BYTES],
    method_len: u8,
    /// INVARIANT: `path[..path_len]` is UTF-8 (cut at a char boundary by `set_path`).
    path: [u8; ACCESS_LOG_PATH_BYTES],
    path_len: u16,
    /// The status sent to the client; 0 when no response was sent.
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub duration_us: u64,
    /// The upstream endpoint the request went to, if any.
    pub upstream: Option<SocketAddr>,
    // Tenant, model and token counts (input/output) go here with the issue that identifies
    // tenants and reads `usage`: fixed-size fields like `path`, never a key.
}

impl Record {
    /// A record with no method, path, status (0), bytes, duration or upstream yet.
    pub fn new(unix_ms: u64, shard: u16, client: SocketAddr) -> Self {
        Self {
            unix_ms,
            shard,
            client,
            method: [0; METHOD_BYTES],
            method_len: 0,
            path: [0; ACCESS_LOG_PATH_BYTES],
            path_len: 0,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            upstream: None,
        }
    }

    /// Keep `method`, cut to [`METHOD_BYTES`].
    pub fn set_method(&mut self, method: &str) {
        let m = cut(method, METHOD_BYTES);
        self.method[..m.len()].copy_from_slice(m.as_bytes());
        self.method_len = u8::try_from(m.len()).unwrap_or(0);
    }

    /// Keep the path of a request target without its query string (`?` and after), cut to
    /// [`ACCESS_LOG_PATH_BYTES`] at a character boundary.
    pub fn set_path(&mut self, target: &str) {
        let path = target.split_once('?').map_or(target, |(p, _)| p);
        let p = cut(path, ACCESS_LOG_PATH_BYTES);
        self.path[..p.len()].copy_from_slice(p.as_bytes());
        self.path_len = u16::try_from(p.len()).unwrap_or(0);
    }

    pub fn method(&self) -> &str {
        std::str::from_utf8(&self.method[..usize::from(self.method_len)]).unwrap_or("")
    }

    pub fn path(&self) -> &str {
        std::str::from_utf8(&self.path[..usize::from(self.path_len)]).unwrap_or("")
    }
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("unix_ms", &self.unix_ms)
            .field("shard", &self.shard)
            .field("client", &self.client)
            .field("method", &self.method())
            .field("path", &self.path())
            .field("status", &self.status)
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .field("duration_us", &self.duration_us)
            .field("upstream", &self.upstream)
            .finish()
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends at a char boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Append `r` as one JSON line (with its `\n`).
///
/// `{"time":"2026-11-26T03:11:19.123Z","shard":0,"client":"127.0.0.1:5555","method":"POST",
/// "path":"/v1/chat/completions","status":200,"bytes_in":123,"bytes_out":456,
/// "duration_ms":1.234,"upstream":"127.0.0.1:18080"}` (`upstream` is `null` when none).
pub fn write_json(r: &Record, out: &mut Vec<u8>) {
    let time = UNIX_EPOCH + Duration::from_millis(r.unix_ms);
    // Writing into a Vec cannot fail; none of these allocates.
    let _ = write!(
        out,
        "{{\"time\":\"{}\",\"shard\":{},\"client\":\"{}\",\"method\":",
        humantime::format_rfc3339_millis(time),
        r.shard,
        r.client
    );
    json_string(out, r.method());
    out.extend_from_slice(b",\"path\":");
    json_string(out, r.path());
    let _ = write!(
        out,
        ",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{}.{:03},\"upstream\":",
        r.status,
        r.bytes_in,
        r.bytes_out,
        r.duration_us / 1000,
        r.duration_us % 1000
    );
    match r.upstream {
        Some(a) => {
            let _ = write!(out, "\"{a}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b"}\n");
}

/// `s` as a JSON string: quotes, backslashes and control characters escaped (RFC 8259).
fn json_string(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            // UTF-8 sequences go through as they are: `s` is a `&str`.
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

type Batch = Vec<Record>;

/// A shard's end of the access log. Lives on the shard's thread (`!Sync`).
pub struct ShardLog {
    batch: RefCell<Batch>,
    queue: Sender<Batch>,
    returned: Receiver<Batch>,
    dropped: &'static AtomicU64,
}

impl fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardLog")
            .field("pending", &self.batch.borrow().len())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ShardLog {
    fn new(queue: Sender<Batch>, returned: Receiver<Batch>, dropped: &'static AtomicU64) -> Self {
        Self {
            batch: RefCell::new(Vec::with_capacity(ACCESS_LOG_BATCH_RECORDS)),
            queue,
            returned,
            dropped,
        }
    }

    /// Log `r`: a copy into the current batch, which goes to the writer when it is full.
    /// Never blocks.
    #[inline]
    pub fn push(&self, r: Record) {
        let full = {
            let mut b = self.batch.borrow_mut();
            b.push(r);
            b.len() >= ACCESS_LOG_BATCH_RECORDS
        };
        if full {
            self.send();
        }
    }

    /// Hand a partial batch to the writer (the shard calls this every
    /// [`ACCESS_LOG_FLUSH_MS`], so a quiet shard's lines still reach the file).
    pub fn flush(&self) {
        if !self.batch.borrow().is_empty() {
            self.send();
        }
    }

    fn send(&self) {
        let mut b = self.batch.borrow_mut();
        // `Vec::new()` does not allocate.
        let full = std::mem::take(&mut *b);
        match self.queue.try_send(full) {
            // A returned batch if the writer has one for us; a new one only while batches are
            // still being created (start-up) or after the writer freed some.
            Ok(()) => {
                *b = self
                    .returned
                    .try_recv()
                    .unwrap_or_else(|_| Vec::with_capacity(ACCESS_LOG_BATCH_RECORDS));
            }
            // The writer is behind (or gone): drop these records, count them, keep the Vec.
            Err(TrySendError::Full(mut full) | TrySendError::Disconnected(mut full)) => {
                add(self.dropped, full.len() as u64);
                full.clear();
                *b = full;
            }
        }
    }
}

impl Drop for ShardLog {
    /// A shard that stops flushes what it holds.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread and the queue's other ends.
#[derive(Debug)]
pub struct AccessLog {
    queue: Sender<Batch>,
    returned: Receiver<Batch>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl AccessLog {
    /// Open `path` for append (created with mode 0640) and start the `access-log` thread.
    /// `reopen` is set by the SIGHUP handler; the writer clears it and reopens `path`.
    pub fn start(path: &Path, reopen: Arc<AtomicBool>) -> Result<AccessLog, String> {
        let file =
            open(path).map_err(|e| format!("cannot open access log {}: {e}", path.display()))?;
        let (queue, rx) = channel::bounded(ACCESS_LOG_QUEUE_BATCHES);
        let (ret_tx, returned) = channel::bounded(ACCESS_LOG_QUEUE_BATCHES);
        let stop = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            path: path.to_owned(),
            file,
            reopen,
            stop: stop.clone(),
            rx,
            ret_tx,
            buf: Vec::with_capacity(ACCESS_LOG_BATCH_RECORDS * 256),
            warned: HashSet::new(),
        };
        let thread = std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the access-log thread: {e}"))?;
        Ok(AccessLog {
            queue,
            returned,
            stop,
            thread,
        })
    }

    /// A shard's end. `dropped` is the shard's own `access_log_dropped` counter (it is the
    /// only writer of it).
    pub fn shard_log(&self, dropped: &'static AtomicU64) -> ShardLog {
        ShardLog::new(self.queue.clone(), self.returned.clone(), dropped)
    }

    /// Write everything queued, then end the writer and wait for it. Flush or drop the
    /// shards' [`ShardLog`]s first: batches sent after this are dropped and counted.
    pub fn stop(self) {
        let AccessLog {
            queue,
            returned,
            stop,
            thread,
        } = self;
        drop((queue, returned));
        stop.store(true, Ordering::Release);
        if thread.join().is_err() {
            tracing::warn!("the access-log thread panicked");
        }
    }
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(ACCESS_LOG_FILE_MODE)
        .open(path)
}

/// The `access-log` thread's state.
struct Writer {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    rx: Receiver<Batch>,
    ret_tx: Sender<Batch>,
    /// The formatted lines of one batch, reused.
    buf: Vec<u8>,
    /// Error kinds already logged (once each until the next successful reopen).
    warned: HashSet<io::ErrorKind>,
}

impl Writer {
    fn run(mut self) {
        let wake = Duration::from_millis(ACCESS_LOG_FLUSH_MS);
        loop {
            match self.rx.recv_timeout(wake) {
                Ok(batch) => self.write(batch),
                Err(RecvTimeoutError::Timeout) => self.maybe_reopen(),
                // Every sender is gone and everything they sent was received.
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.stop.load(Ordering::Acquire) {
                while let Ok(batch) = self.rx.try_recv() {
                    self.write(batch);
                }
                break;
            }
        }
        if let Err(e) = self.file.sync_data() {
            self.warn("sync", &e);
        }
    }

    fn write(&mut self, mut batch: Batch) {
        self.maybe_reopen();
        self.buf.clear();
        for r in &batch {
            write_json(r, &mut self.buf);
        }
        if let Err(e) = self.file.write_all(&self.buf) {
            self.warn("write to", &e);
        }
        batch.clear();
        // Full: the shards have enough spares; this one is freed.
        let _ = self.ret_tx.try_send(batch);
    }

    fn maybe_reopen(&mut self) {
        if !self.reopen.swap(false, Ordering::AcqRel) {
            return;
        }
        match open(&self.path) {
            Ok(f) => {
                self.file = f;
                self.warned.clear();
                tracing::info!("access log reopened: {}", self.path.display());
            }
            // Keep writing to the file we have; the next SIGHUP tries again.
            Err(e) => tracing::warn!(
                "access log: cannot reopen {}: {e}; still writing to the old file",
                self.path.display()
            ),
        }
    }

    fn warn(&mut self, what: &str, e: &io::Error) {
        if self.warned.insert(e.kind()) {
            tracing::warn!(
                "access log: {what} {} failed: {e} (lines are lost; this kind of error is not \
                 logged again until the file is reopened)",
                self.path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::time::Instant;

    use super::*;

    fn client() -> SocketAddr {
        "127.0.0.1:5555".parse().expect("addr")
    }

    fn sample(i: u64) -> Record {
        let mut r = Record::new(1_795_662_679_123 + i, 1, client());
        r.set_method("POST");
        r.set_path("/v1/chat/completions?api-key=secret");
        r.status = 200;
        r.bytes_in = 123;
        r.bytes_out = 456;
        r.duration_us = 1_234;
        r.upstream = Some("127.0.0.1:18080".parse().expect("addr"));
        r
    }

    fn line(r: &Record) -> String {
        let mut out = Vec::new();
        write_json(r, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn test_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sg-accesslog-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        d
    }

    fn read_lines(p: &Path) -> Vec<String> {
        let mut s = String::new();
        File::open(p)
            .expect("open")
            .read_to_string(&mut s)
            .expect("read");
        s.lines().map(str::to_owned).collect()
    }

    /// Wait (bounded) until `p` holds `n` lines.
    #[allow(
        clippy::disallowed_methods,
        reason = "a test thread, not a shard: polling the file the writer thread fills"
    )]
    fn wait_lines(p: &Path, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while read_lines(p).len() < n {
            assert!(
                Instant::now() < deadline,
                "{} never got {n} lines",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn json_format_exact() {
        assert_eq!(
            line(&sample(0)),
            "{\"time\":\"2026-11-26T03:11:19.123Z\",\"shard\":1,\"client\":\"127.0.0.1:5555\",\
             \"method\":\"POST\",\"path\":\"/v1/chat/completions\",\"status\":200,\
             \"bytes_in\":123,\"bytes_out\":456,\"duration_ms\":1.234,\
             \"upstream\":\"127.0.0.1:18080\"}\n"
        );
        let mut r = Record::new(0, 0, "[::1]:80".parse().expect("addr"));
        r.duration_us = 5;
        let v: serde_json::Value = serde_json::from_str(&line(&r)).expect("json");
        assert_eq!(v["time"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["client"], "[::1]:80");
        assert_eq!(v["method"], "");
        assert_eq!(v["status"], 0);
        assert_eq!(v["duration_ms"], 0.005);
        assert!(v["upstream"].is_null());
    }

    #[test]
    fn strings_are_escaped() {
        let mut r = sample(0);
        let nasty = "/a\"b\\c\nd\re\tf\u{1}g\u{1f}h\u{7f}é✓";
        r.set_path(nasty);
        r.set_method("GE\"T");
        let text = line(&r);
        assert!(text.ends_with("}\n") && text.matches('\n').count() == 1);
        let v: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(v["path"], nasty);
        assert_eq!(v["method"], "GE\"T");
        assert!(text.contains(r#"\u0001g\u001fh"#), "{text}");
        let keys: Vec<&String> = v.as_object().expect("object").keys().collect();
        assert_eq!(keys.len(), 10);
    }

    #[test]
    fn path_loses_query_and_is_cut_at_a_char_boundary() {
        let mut r = Record::new(0, 0, client());
        r.set_path("/v1/models?key=sk-123&x=?");
        assert_eq!(r.path(), "/v1/models");
        r.set_path("?only");
        assert_eq!(r.path(), "");
        // 'é' is 2 bytes: one straddling the limit is left out whole.
        let long = format!("/{}é-tail", "a".repeat(ACCESS_LOG_PATH_BYTES - 2));
        r.set_path(&long);
        assert_eq!(r.path().len(), ACCESS_LOG_PATH_BYTES - 1);
        assert!(long.starts_with(r.path()));
        let exact = "b".repeat(ACCESS_LOG_PATH_BYTES + 10);
        r.set_path(&exact);
        assert_eq!(r.path(), &exact[..ACCESS_LOG_PATH_BYTES]);
        r.set_method("AVERYLONGMETHODNAMEINDEED");
        assert_eq!(r.method(), "AVERYLONGMETHODN");
    }

    #[test]
    fn writer_round_trip_across_a_batch_boundary() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("round-trip");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        let shard = log.shard_log(&DROPPED);
        let n = ACCESS_LOG_BATCH_RECORDS * 2 + 17;
        for i in 0..n {
            shard.push(sample(i as u64));
        }
        shard.flush();
        // Pending is empty after a flush; the batch it now holds keeps its capacity.
        assert_eq!(shard.batch.borrow().len(), 0);
        assert!(shard.batch.borrow().capacity() >= ACCESS_LOG_BATCH_RECORDS);
        drop(shard);
        log.stop();
        let lines = read_lines(&path);
        assert_eq!(lines.len(), n);
        for (i, l) in lines.iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            assert_eq!(v["path"], "/v1/chat/completions");
            // In order: the writer takes batches in the order one shard sent them.
            let want = humantime::format_rfc3339_millis(
                UNIX_EPOCH + Duration::from_millis(1_795_662_679_123 + i as u64),
            )
            .to_string();
            assert_eq!(v["time"], want.as_str());
        }
        assert!(!lines.iter().any(|l| l.contains("secret")));
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            // The umask may take bits away, never add them.
            assert_eq!(mode & !ACCESS_LOG_FILE_MODE & 0o777, 0, "{mode:o}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_a_shard_log_flushes_it() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("drop-flush");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        let shard = log.shard_log(&DROPPED);
        shard.push(sample(0));
        shard.push(sample(1));
        drop(shard);
        log.stop();
        assert_eq!(read_lines(&path).len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn reopen_after_rename_writes_a_new_file() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("reopen");
        let path = dir.join("access.log");
        let rotated = dir.join("access.log.1");
        let reopen = Arc::new(AtomicBool::new(false));
        let log = AccessLog::start(&path, reopen.clone()).expect("start");
        let shard = log.shard_log(&DROPPED);
        for i in 0..3 {
            shard.push(sample(i));
        }
        shard.flush();
        wait_lines(&path, 3);
        // logrotate: move, then SIGHUP.
        std::fs::rename(&path, &rotated).expect("rename");
        reopen.store(true, Ordering::Release);
        for i in 3..8 {
            shard.push(sample(i));
        }
        shard.flush();
        drop(shard);
        log.stop();
        assert!(!reopen.load(Ordering::Acquire));
        assert_eq!(read_lines(&rotated).len(), 3);
        assert_eq!(read_lines(&path).len(), 5);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_blocking() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        // A queue nobody reads: the writer is stuck (a full disk, say).
        let (queue, stuck) = channel::bounded(ACCESS_LOG_QUEUE_BATCHES);
        let (_ret_tx, returned) = channel::bounded::<Batch>(ACCESS_LOG_QUEUE_BATCHES);
        let shard = ShardLog::new(queue, returned, &DROPPED);
        let extra = 3;
        for i in 0..(ACCESS_LOG_QUEUE_BATCHES + extra) * ACCESS_LOG_BATCH_RECORDS + 5 {
            shard.push(sample(i as u64));
        }
        assert_eq!(stuck.len(), ACCESS_LOG_QUEUE_BATCHES);
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            (extra * ACCESS_LOG_BATCH_RECORDS) as u64
        );
        assert_eq!(shard.batch.borrow().len(), 5);
        // The batch the shard kept after a drop is still a whole one.
        assert!(shard.batch.borrow().capacity() >= ACCESS_LOG_BATCH_RECORDS);
        // With the writer gone, what is flushed counts as dropped too.
        drop(stuck);
        shard.flush();
        assert_eq!(
            DROPPED.load(Ordering::Relaxed),
            (extra * ACCESS_LOG_BATCH_RECORDS + 5) as u64
        );
    }

    #[test]
    fn batches_come_back_for_reuse() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("reuse");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        let shard = log.shard_log(&DROPPED);
        for i in 0..ACCESS_LOG_BATCH_RECORDS {
            shard.push(sample(i as u64));
        }
        wait_lines(&path, ACCESS_LOG_BATCH_RECORDS);
        // The written batch is back on the return channel, empty and whole.
        let deadline = Instant::now() + Duration::from_secs(10);
        let back = loop {
            if let Ok(b) = log.returned.try_recv() {
                break b;
            }
            assert!(Instant::now() < deadline, "no batch came back");
            std::thread::yield_now();
        };
        assert!(back.is_empty());
        assert!(back.capacity() >= ACCESS_LOG_BATCH_RECORDS);
        drop(shard);
        log.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
