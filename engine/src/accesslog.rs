//! The access log: one JSON line per request, formatted and written by the shard itself.
//!
//! ```text
//! shard thread (one per core), no other thread involved
//! ShardLog::push(Record) ─ format the line in place ─► fill buffer (ACCESS_LOG_BUF_BYTES)
//!   fill ≥ ACCESS_LOG_WRITE_BYTES, or the shard's timer (ACCESS_LOG_FLUSH_MS) ─► wake the
//!   shard's log task: swap fill and spare, one io_uring write (O_APPEND) of the full one;
//!   requests go on filling the other buffer meanwhile
//! ```
//!
//! Why on the shard (docs/decisions/0009-access-log-on-the-shard.md): a writer thread has no
//! core of its own when every core runs a shard; each time it woke it took the shard's core
//! away and showed as 10-20 ms at p99.9. Formatting a line costs the shard a few hundred
//! nanoseconds, and the write is one io_uring operation per buffer: the shard never blocks on
//! the disk (the kernel completes the write, or hands it to its own worker, while the shard
//! serves requests).
//!
//! A shard never allocates for the log after start: both buffers are allocated up front and a
//! line is formatted only when [`LINE_BYTES_MAX`] bytes are free, so the buffer never grows.
//! When the fill buffer is full because the write before is still under way (the disk is
//! slower than the traffic), the record is dropped and counted in the shard's
//! `access_log_dropped` counter, which `/metrics` shows; so are the lines of a failed write.
//!
//! Every shard writes its own lines to its own descriptor of the same file, opened with
//! `O_APPEND`: each write appends whole lines atomically with respect to the other shards'
//! writes (the kernel appends a regular-file write under the inode's lock), so lines of two
//! shards never interleave. Within a shard, lines are in the order requests ended.
//!
//! What is logged is only what [`Record`] holds: never a header, a body, a query string (it
//! may carry a key) or a key.
//!
//! Shutdown: a shard that stops closes its [`ShardLog`] ([`ShardLog::close`]) and waits for
//! its log task ([`ShardLog::run`]), which writes everything left. A `ShardLog` dropped with
//! lines still in it (no task ever ran) writes them with a plain `write(2)`.
//!
//! Rotation: logrotate moves the file and sends SIGHUP; the SIGHUP handler (in `main`) sets the
//! `reopen` flag. The first shard whose timer sees it counts a new generation; every shard's
//! log task reopens the path when it sees a generation it has not opened yet, within
//! [`ACCESS_LOG_FLUSH_MS`](crate::limits::ACCESS_LOG_FLUSH_MS). Lines written before that land in the old file.

use std::cell::{Cell, RefCell};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, UNIX_EPOCH};

use crate::control::stats::add;
use crate::http::write_decimal;
use crate::limits::{ACCESS_LOG_BUF_BYTES, ACCESS_LOG_PATH_BYTES, ACCESS_LOG_WRITE_BYTES};
use crate::llm::json::write_str;
use crate::tenant::KEY_ID_BYTES;

/// Bytes of a method kept in a record (longer methods are cut).
pub const METHOD_BYTES: usize = 16;
/// Permissions of a log file shardgate creates.
const ACCESS_LOG_FILE_MODE: u32 = 0o640;

/// The longest line [`write_json`] can make: the fixed text, every string escaped at 6 bytes a
/// byte (`\u00XX`), the longest numbers and addresses (`[v6%scope]:port`). Checked by a test.
pub const LINE_BYTES_MAX: usize =
    256 + 6 * (METHOD_BYTES + ACCESS_LOG_PATH_BYTES + 2 * LOG_NAME_BYTES) + 2 * 64 + 128;
/// Longest tenant or model name a line carries, bytes (cut at a character boundary).
pub const LOG_NAME_BYTES: usize = 64;

const _: () = assert!(ACCESS_LOG_PATH_BYTES <= u16::MAX as usize);
const _: () = assert!(METHOD_BYTES <= u8::MAX as usize);
// A buffer past the write threshold still has room for a line: requests go on logging while
// the other buffer is being written.
const _: () = assert!(ACCESS_LOG_WRITE_BYTES + 4 * LINE_BYTES_MAX <= ACCESS_LOG_BUF_BYTES);

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
    /// The tenant (never its key) and the model group, when known; fixed-size like `path`.
    /// INVARIANT: `tenant[..tenant_len]` and `model[..model_len]` are UTF-8 (`set_name`).
    tenant: [u8; LOG_NAME_BYTES],
    tenant_len: u8,
    model: [u8; LOG_NAME_BYTES],
    model_len: u8,
    /// The id of the key that named the tenant (the first bytes of its hash).
    pub key_id: Option<[u8; KEY_ID_BYTES]>,
    /// Tokens in and out from the upstream's `usage`, when it reported them.
    pub tokens: Option<(u64, u64)>,
    /// What the request cost, nanodollars (`None` with usage: its model has no price).
    pub cost_nusd: Option<u64>,
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
            tenant: [0; LOG_NAME_BYTES],
            tenant_len: 0,
            model: [0; LOG_NAME_BYTES],
            model_len: 0,
            key_id: None,
            tokens: None,
            cost_nusd: None,
        }
    }

    /// Keep the tenant's name (cut to [`LOG_NAME_BYTES`]).
    pub fn set_tenant(&mut self, name: &str) {
        self.tenant_len = set_name(&mut self.tenant, name);
    }

    /// Keep the model group's name (cut to [`LOG_NAME_BYTES`]).
    pub fn set_model(&mut self, name: &str) {
        self.model_len = set_name(&mut self.model, name);
    }

    pub fn tenant(&self) -> &str {
        std::str::from_utf8(&self.tenant[..usize::from(self.tenant_len)]).unwrap_or("")
    }

    pub fn model(&self) -> &str {
        std::str::from_utf8(&self.model[..usize::from(self.model_len)]).unwrap_or("")
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
            .field("tenant", &self.tenant())
            .field("model", &self.model())
            .field("key_id", &self.key_id)
            .field("tokens", &self.tokens)
            .field("cost_nusd", &self.cost_nusd)
            .finish()
    }
}

fn set_name(into: &mut [u8; LOG_NAME_BYTES], name: &str) -> u8 {
    let n = cut(name, LOG_NAME_BYTES);
    into[..n.len()].copy_from_slice(n.as_bytes());
    u8::try_from(n.len()).unwrap_or(0)
}

/// The longest prefix of `s` of at most `max` bytes that ends at a char boundary.
pub(crate) fn cut(s: &str, max: usize) -> &str {
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
    write_line(r, &TimePrefix::of(r.unix_ms / 1000), out);
}

/// The date and time of one second, `2026-11-26T03:11:19`, as [`write_json`] shows it before
/// the milliseconds. A shard keeps the last one: requests of the same second share it.
#[derive(Clone, Copy, Debug)]
struct TimePrefix {
    unix_s: u64,
    text: [u8; 19],
}

impl TimePrefix {
    fn of(unix_s: u64) -> Self {
        let mut full = [b'0'; 20];
        let t = UNIX_EPOCH + Duration::from_secs(unix_s);
        // `YYYY-MM-DDTHH:MM:SSZ` fits exactly (up to year 9999, past which nothing is written
        // and the zeros stay); the first 19 bytes are kept.
        let _ = write!(&mut full[..], "{}", humantime::format_rfc3339_seconds(t));
        let mut text = [0; 19];
        text.copy_from_slice(&full[..19]);
        Self { unix_s, text }
    }
}

/// `.` and `n` (below 1000) as three zero-padded digits: `.007`.
fn write_thousandths(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&[
        b'.',
        b'0' + (n / 100 % 10) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// [`write_json`] with the second's text already made.
fn write_line(r: &Record, time: &TimePrefix, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(&time.text);
    write_thousandths(out, r.unix_ms % 1000);
    out.extend_from_slice(b"Z\",\"shard\":");
    write_decimal(out, u64::from(r.shard));
    out.extend_from_slice(b",\"client\":\"");
    write_addr(out, r.client);
    out.extend_from_slice(b"\",\"method\":");
    write_str(out, r.method());
    out.extend_from_slice(b",\"path\":");
    write_str(out, r.path());
    out.extend_from_slice(b",\"status\":");
    write_decimal(out, u64::from(r.status));
    out.extend_from_slice(b",\"bytes_in\":");
    write_decimal(out, r.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    write_decimal(out, r.bytes_out);
    out.extend_from_slice(b",\"duration_ms\":");
    write_decimal(out, r.duration_us / 1000);
    write_thousandths(out, r.duration_us % 1000);
    out.extend_from_slice(b",\"upstream\":");
    match r.upstream {
        Some(a) => {
            out.push(b'"');
            write_addr(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    // A tenant's request, or one whose usage was read: who, which model, tokens and cost.
    if r.tenant_len > 0 || r.tokens.is_some() {
        out.extend_from_slice(b",\"tenant\":");
        write_opt_str(out, r.tenant());
        out.extend_from_slice(b",\"key\":");
        match r.key_id {
            Some(id) => {
                out.extend_from_slice(b"\"key_");
                for b in id {
                    out.push(HEX[usize::from(b >> 4)]);
                    out.push(HEX[usize::from(b & 15)]);
                }
                out.push(b'"');
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"model\":");
        write_opt_str(out, r.model());
        let (tin, tout) = match r.tokens {
            Some((i, o)) => (Some(i), Some(o)),
            None => (None, None),
        };
        out.extend_from_slice(b",\"tokens_in\":");
        write_opt_num(out, tin);
        out.extend_from_slice(b",\"tokens_out\":");
        write_opt_num(out, tout);
        out.extend_from_slice(b",\"cost_usd\":");
        match r.cost_nusd {
            Some(n) => crate::prices::usd(n).write_to(out),
            None => out.extend_from_slice(b"null"),
        }
    }
    out.extend_from_slice(b"}\n");
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn write_opt_str(out: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        write_str(out, s);
    }
}

fn write_opt_num(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => write_decimal(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// `a` as `Display` shows it (`1.2.3.4:80`, `[::1]:80`), without the formatting machinery.
fn write_addr(out: &mut Vec<u8>, a: SocketAddr) {
    let v6 = a.is_ipv6();
    if v6 {
        out.push(b'[');
    }
    crate::http::write_ip(out, a.ip());
    out.extend_from_slice(if v6 { b"]:" } else { b":" });
    write_decimal(out, u64::from(a.port()));
}

/// A shard's end of the access log: its buffers, its descriptor of the file, and the state its
/// log task ([`ShardLog::run`]) and its requests share. Lives on the shard's thread (`!Sync`).
pub struct ShardLog {
    /// Lines being formatted.
    /// INVARIANT: capacity `ACCESS_LOG_BUF_BYTES`, never grown: a line is formatted only while
    /// `LINE_BYTES_MAX` bytes are free.
    fill: RefCell<Vec<u8>>,
    /// The other buffer, empty, while no write is under way (the log task holds it meanwhile).
    spare: Cell<Option<Vec<u8>>>,
    /// The log task, when it waits for work.
    waker: Cell<Option<Waker>>,
    /// The timer asked for what is buffered to be written.
    flush_asked: Cell<bool>,
    /// The shard is stopping: write everything, then end the log task.
    closing: Cell<bool>,
    /// The second the last line was in, and its text.
    time: Cell<TimePrefix>,
    /// This shard's descriptor of the file (`O_APPEND`).
    file: RefCell<File>,
    path: PathBuf,
    /// Set by the SIGHUP handler; the first shard to see it counts a new generation.
    reopen: Arc<AtomicBool>,
    /// Reopens asked for so far, shared by every shard.
    generation: Arc<AtomicU64>,
    /// The generation `file` was opened in.
    opened: Cell<u64>,
    /// A failure was logged (once until the next successful reopen).
    warned: Cell<bool>,
    dropped: &'static AtomicU64,
}

impl fmt::Debug for ShardLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardLog")
            .field("pending_bytes", &self.fill.borrow().len())
            .field("dropped", &self.dropped.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ShardLog {
    fn new(
        file: File,
        path: PathBuf,
        reopen: Arc<AtomicBool>,
        generation: Arc<AtomicU64>,
        dropped: &'static AtomicU64,
    ) -> Self {
        let opened = generation.load(Ordering::Acquire);
        Self {
            fill: RefCell::new(Vec::with_capacity(ACCESS_LOG_BUF_BYTES)),
            spare: Cell::new(Some(Vec::with_capacity(ACCESS_LOG_BUF_BYTES))),
            waker: Cell::new(None),
            flush_asked: Cell::new(false),
            closing: Cell::new(false),
            time: Cell::new(TimePrefix::of(0)),
            file: RefCell::new(file),
            path,
            reopen,
            generation,
            opened: Cell::new(opened),
            warned: Cell::new(false),
            dropped,
        }
    }

    /// Log `r`: its line is formatted into the fill buffer now; a full enough buffer wakes the
    /// log task. Never blocks, never allocates.
    #[inline]
    pub fn push(&self, r: Record) {
        let mut fill = self.fill.borrow_mut();
        if fill.capacity() - fill.len() < LINE_BYTES_MAX {
            // The write before has not finished and this buffer is full.
            add(self.dropped, 1);
            return;
        }
        let mut time = self.time.get();
        if time.unix_s != r.unix_ms / 1000 {
            time = TimePrefix::of(r.unix_ms / 1000);
            self.time.set(time);
        }
        write_line(&r, &time, &mut fill);
        if fill.len() >= ACCESS_LOG_WRITE_BYTES {
            self.wake();
        }
    }

    /// Have what is buffered written (the shard's timer calls this every
    /// [`ACCESS_LOG_FLUSH_MS`](crate::limits::ACCESS_LOG_FLUSH_MS), so a quiet shard's lines still reach the file), and take up a
    /// SIGHUP.
    pub fn flush(&self) {
        if self.reopen.load(Ordering::Relaxed) && self.reopen.swap(false, Ordering::AcqRel) {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        if !self.fill.borrow().is_empty() || self.reopen_due() {
            self.flush_asked.set(true);
            self.wake();
        }
    }

    /// The shard is stopping: the log task writes everything left and ends.
    pub fn close(&self) {
        self.closing.set(true);
        self.wake();
    }

    fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }

    fn reopen_due(&self) -> bool {
        self.generation.load(Ordering::Acquire) != self.opened.get()
    }

    fn has_work(&self) -> bool {
        let pending = self.fill.borrow().len();
        self.closing.get()
            || pending >= ACCESS_LOG_WRITE_BYTES
            || (self.flush_asked.get() && (pending > 0 || self.reopen_due()))
    }

    /// The shard's log task: waits for a full buffer, the timer's flush or the close, and writes
    /// with one io_uring operation per buffer (on the epoll driver, monoio does the same
    /// `pwrite` inline). Spawn it once on the shard; it ends after [`close`](Self::close), when
    /// everything was written.
    pub async fn run(&self) {
        let mut file = self.uring_file();
        loop {
            std::future::poll_fn(|cx| {
                if self.has_work() {
                    Poll::Ready(())
                } else {
                    self.waker.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            })
            .await;
            self.flush_asked.set(false);
            if self.reopen_due() {
                self.reopen();
                file = self.uring_file();
            }
            let Some(mut full) = self.spare.take() else {
                // Only this task takes the spare, and it puts it back before waiting again.
                debug_assert!(false, "the spare buffer is missing");
                return;
            };
            std::mem::swap(&mut *self.fill.borrow_mut(), &mut full);
            if !full.is_empty() {
                full = match &file {
                    // O_APPEND: the offset is ignored, the kernel appends.
                    Some(f) => {
                        let (res, buf) = f.write_all_at(full, 0).await;
                        if let Err(e) = res {
                            self.lost(&buf, &e);
                        }
                        buf
                    }
                    None => {
                        self.write_blocking(&full);
                        full
                    }
                };
                full.clear();
            }
            self.spare.set(Some(full));
            if self.closing.get() && self.fill.borrow().is_empty() {
                return;
            }
        }
    }

    /// The shard's descriptor as a monoio file (a duplicate: `file` keeps its own for the
    /// blocking write on drop). None if it cannot be duplicated: writes are then blocking.
    fn uring_file(&self) -> Option<monoio::fs::File> {
        let dup = self.file.borrow().try_clone();
        match dup.and_then(monoio::fs::File::from_std) {
            Ok(f) => Some(f),
            Err(e) => {
                self.warn("duplicate the descriptor of", &e);
                None
            }
        }
    }

    /// Open the path again (after logrotate moved the file). A failure keeps the old file.
    fn reopen(&self) {
        self.opened.set(self.generation.load(Ordering::Acquire));
        match open(&self.path) {
            Ok(f) => {
                *self.file.borrow_mut() = f;
                self.warned.set(false);
                tracing::debug!("access log reopened: {}", self.path.display());
            }
            Err(e) => tracing::warn!(
                "access log: cannot reopen {}: {e}; still writing to the old file",
                self.path.display()
            ),
        }
    }

    fn write_blocking(&self, lines: &[u8]) {
        let res = self.file.borrow_mut().write_all(lines);
        if let Err(e) = res {
            self.lost(lines, &e);
        }
    }

    /// `lines` were not written (or not all of them): count them as dropped.
    fn lost(&self, lines: &[u8], e: &io::Error) {
        let n = lines.iter().filter(|&&b| b == b'\n').count();
        add(self.dropped, n as u64);
        self.warn("write to", e);
    }

    fn warn(&self, what: &str, e: &io::Error) {
        if !self.warned.replace(true) {
            tracing::warn!(
                "access log: {what} {} failed: {e} (lines are lost and counted in \
                 access_log_dropped; not logged again until the file is reopened)",
                self.path.display()
            );
        }
    }
}

impl Drop for ShardLog {
    /// Lines no log task wrote (it never ran, or the shard stopped without closing) are
    /// written now, with a plain `write(2)`.
    fn drop(&mut self) {
        let fill = std::mem::take(self.fill.get_mut());
        if !fill.is_empty() {
            self.write_blocking(&fill);
        }
    }
}

/// The file and what the shards share to reopen it.
#[derive(Debug)]
pub struct AccessLog {
    path: PathBuf,
    file: File,
    reopen: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl AccessLog {
    /// Open `path` for append (created with mode 0640). `reopen` is set by the SIGHUP handler;
    /// the shards clear it and reopen `path`.
    pub fn start(path: &Path, reopen: Arc<AtomicBool>) -> Result<AccessLog, String> {
        let file =
            open(path).map_err(|e| format!("cannot open access log {}: {e}", path.display()))?;
        Ok(AccessLog {
            path: path.to_owned(),
            file,
            reopen,
            generation: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A shard's end, with its own descriptor of the file. `dropped` is the shard's own
    /// `access_log_dropped` counter (it is the only writer of it).
    pub fn shard_log(&self, dropped: &'static AtomicU64) -> Result<ShardLog, String> {
        let file = self.file.try_clone().map_err(|e| {
            format!(
                "cannot duplicate the access log's descriptor ({}): {e}",
                self.path.display()
            )
        })?;
        Ok(ShardLog::new(
            file,
            self.path.clone(),
            self.reopen.clone(),
            self.generation.clone(),
            dropped,
        ))
    }

    /// After every shard closed (or dropped) its [`ShardLog`]: their lines are written; ask
    /// the disk to keep them.
    pub fn stop(self) {
        if let Err(e) = self.file.sync_data() {
            tracing::warn!("access log: sync {} failed: {e}", self.path.display());
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

#[cfg(test)]
mod tests {
    use std::io::Read as _;
    use std::rc::Rc;

    use super::*;
    use crate::config::DriverChoice;
    use crate::runtime::block_on_best;

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

    /// Run `f` on a shard-like runtime of each driver.
    fn on_each_driver<F, Fut>(f: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        for d in [DriverChoice::Auto, DriverChoice::Epoll] {
            block_on_best(d, |_| f()).expect("runtime");
        }
    }

    /// A log task on the current runtime, as a shard runs it.
    fn spawn_writer(log: &Rc<ShardLog>) -> monoio::task::JoinHandle<()> {
        let log = log.clone();
        monoio::spawn(async move { log.run().await })
    }

    async fn pause() {
        monoio::time::sleep(Duration::from_millis(1)).await;
    }

    #[test]
    fn the_longest_line_fits_and_the_second_cache_matches_humantime() {
        let mut r = Record::new(
            253_402_300_799_999,
            u16::MAX,
            "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535"
                .parse()
                .expect("addr"),
        );
        r.set_method(&"\u{1}".repeat(METHOD_BYTES));
        r.set_path(&"\u{2}".repeat(ACCESS_LOG_PATH_BYTES));
        r.status = u16::MAX;
        r.bytes_in = u64::MAX;
        r.bytes_out = u64::MAX;
        r.duration_us = u64::MAX;
        r.upstream = Some(r.client);
        let text = line(&r);
        assert!(
            text.len() <= LINE_BYTES_MAX,
            "{} > {LINE_BYTES_MAX}",
            text.len()
        );
        serde_json::from_str::<serde_json::Value>(&text).expect("json");
        // The cached second gives what humantime gives for the whole timestamp.
        for ms in [
            0,
            999,
            1_000,
            86_399_999,
            951_782_400_007,
            1_795_662_679_123,
        ] {
            let want = humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms))
                .to_string();
            let v: serde_json::Value =
                serde_json::from_str(&line(&Record::new(ms, 0, client()))).expect("json");
            assert_eq!(v["time"], want.as_str(), "{ms}");
        }
    }

    #[test]
    fn lines_reach_the_file_in_order_across_write_boundaries() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("round-trip");
        let path = dir.join("access.log");
        // More than three writes' worth of lines, on each driver.
        let n = 3 * ACCESS_LOG_WRITE_BYTES / line(&sample(0)).len() + 17;
        on_each_driver(|| async {
            let _ = std::fs::remove_file(&path);
            let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
            let shard = Rc::new(log.shard_log(&DROPPED).expect("shard log"));
            let writer = spawn_writer(&shard);
            for i in 0..n {
                shard.push(sample(i as u64));
                if i % 100 == 0 {
                    pause().await;
                }
            }
            shard.close();
            writer.await;
            // The buffers were not grown.
            assert_eq!(shard.fill.borrow().capacity(), ACCESS_LOG_BUF_BYTES);
            drop(shard);
            log.stop();
            let lines = read_lines(&path);
            assert_eq!(lines.len(), n);
            for (i, l) in lines.iter().enumerate() {
                let v: serde_json::Value = serde_json::from_str(l).expect("json line");
                assert_eq!(v["path"], "/v1/chat/completions");
                let want = humantime::format_rfc3339_millis(
                    UNIX_EPOCH + Duration::from_millis(1_795_662_679_123 + i as u64),
                )
                .to_string();
                assert_eq!(v["time"], want.as_str());
            }
            assert!(!lines.iter().any(|l| l.contains("secret")));
        });
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            // The umask may take bits away, never add them.
            assert_eq!(mode & !ACCESS_LOG_FILE_MODE & 0o777, 0, "{mode:o}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn two_shards_lines_are_whole_and_none_is_lost() {
        static DROPPED: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
        let dir = test_dir("two-shards");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        let n = 20_000u64;
        let shards: Vec<_> = (0..2u16)
            .map(|s| {
                let shard = log.shard_log(&DROPPED[usize::from(s)]).expect("shard log");
                std::thread::spawn(move || {
                    block_on_best(DriverChoice::Auto, |_| async move {
                        let shard = Rc::new(shard);
                        let writer = spawn_writer(&shard);
                        for i in 0..n {
                            let mut r = sample(i);
                            r.shard = s;
                            r.bytes_in = i;
                            // Lines of different lengths, so a torn write would show.
                            r.set_path(&"/p".repeat(1 + (i % 50) as usize));
                            shard.push(r);
                            if i % 64 == 0 {
                                shard.flush();
                            }
                            if i % 256 == 0 {
                                pause().await;
                            }
                        }
                        shard.close();
                        writer.await;
                    })
                    .expect("runtime");
                })
            })
            .collect();
        for t in shards {
            t.join().expect("shard thread");
        }
        log.stop();
        let mut next = [0u64; 2];
        for l in read_lines(&path) {
            let v: serde_json::Value =
                serde_json::from_str(&l).unwrap_or_else(|e| panic!("torn line ({e}): {l}"));
            let s = usize::try_from(v["shard"].as_u64().expect("shard")).expect("small");
            assert_eq!(
                v["bytes_in"].as_u64(),
                Some(next[s]),
                "shard {s} out of order"
            );
            next[s] += 1;
        }
        assert_eq!(next, [n, n]);
        assert_eq!(
            DROPPED.each_ref().map(|d| d.load(Ordering::Relaxed)),
            [0, 0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_a_shard_log_writes_what_it_holds() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("drop-flush");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        let shard = log.shard_log(&DROPPED).expect("shard log");
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
        on_each_driver(|| async {
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(&rotated);
            let reopen = Arc::new(AtomicBool::new(false));
            let log = AccessLog::start(&path, reopen.clone()).expect("start");
            // Two shards of one process: one sees the flag, both reopen.
            let a = Rc::new(log.shard_log(&DROPPED).expect("shard log"));
            let b = Rc::new(log.shard_log(&DROPPED).expect("shard log"));
            let (wa, wb) = (spawn_writer(&a), spawn_writer(&b));
            for i in 0..3 {
                a.push(sample(i));
                b.push(sample(i));
            }
            a.flush();
            b.flush();
            for _ in 0..10_000 {
                if read_lines(&path).len() == 6 {
                    break;
                }
                pause().await;
            }
            assert_eq!(read_lines(&path).len(), 6);
            // logrotate: move, then SIGHUP; the shards' timers take it up.
            std::fs::rename(&path, &rotated).expect("rename");
            reopen.store(true, Ordering::Release);
            a.flush();
            b.flush();
            assert!(!reopen.load(Ordering::Acquire));
            for i in 3..8 {
                a.push(sample(i));
                b.push(sample(i));
            }
            a.close();
            b.close();
            wa.await;
            wb.await;
            assert_eq!(read_lines(&rotated).len(), 6);
            assert_eq!(read_lines(&path).len(), 10);
        });
        assert_eq!(DROPPED.load(Ordering::Relaxed), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_without_blocking_or_growing() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        let dir = test_dir("full");
        let path = dir.join("access.log");
        let log = AccessLog::start(&path, Arc::new(AtomicBool::new(false))).expect("start");
        // No log task runs: the disk is stuck, say.
        let shard = log.shard_log(&DROPPED).expect("shard log");
        let len = line(&sample(0)).len();
        let fits = (ACCESS_LOG_BUF_BYTES - LINE_BYTES_MAX) / len + 1;
        let extra = 1_000;
        for i in 0..fits + extra {
            shard.push(sample(i as u64));
        }
        assert_eq!(shard.fill.borrow().capacity(), ACCESS_LOG_BUF_BYTES);
        assert_eq!(shard.fill.borrow().len(), fits * len);
        assert_eq!(DROPPED.load(Ordering::Relaxed), extra as u64);
        drop(shard);
        assert_eq!(read_lines(&path).len(), fits);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn failed_writes_are_counted_as_dropped() {
        static DROPPED: AtomicU64 = AtomicU64::new(0);
        // Every write to /dev/full fails with ENOSPC.
        let Ok(log) = AccessLog::start(Path::new("/dev/full"), Arc::new(AtomicBool::new(false)))
        else {
            return;
        };
        on_each_driver(|| async {
            let shard = Rc::new(log.shard_log(&DROPPED).expect("shard log"));
            let writer = spawn_writer(&shard);
            for i in 0..10 {
                shard.push(sample(i));
            }
            shard.close();
            writer.await;
        });
        assert_eq!(DROPPED.load(Ordering::Relaxed), 20);
    }
}
