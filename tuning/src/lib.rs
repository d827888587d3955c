//! The tuning file (`tuning.toml`): what `shardgate-tune` measured and recommends, and what the
//! engine reads at start with `[server] cores = "tuned"` (or `shardgate --tuning FILE`).
//!
//! This library is the one place the format lives: [`render`] writes it, [`parse`] reads and
//! validates it. It needs only `serde` and `toml`; depend on it with
//! `shardgate-tune = { path = "../tuning", default-features = false }` to leave out the
//! command line's dependencies (the `cli` feature).
//!
//! ```toml
//! # written by shardgate-tune 0.1.0 on 2025-11-26 06:42:00 UTC for gw-1
//! [tuning]
//! shards = 2
//! cores = [0, 1]          # CPU ids the shards are pinned to, in order
//! driver = "io_uring"     # or "epoll" when io_uring is blocked
//! measured_rps = 123456.0
//! measured_p99_ms = 1.23
//! cpu_us_per_request = 14.2
//! created_unix = 1764140000
//! host = "gw-1"
//! ```
//!
//! Rules [`parse`] enforces (each error names the field):
//! - one `[tuning]` table; unknown keys (a typo in a hand edit) are refused;
//! - `shards` is `1..=1024` and `cores` holds exactly `shards` distinct CPU ids (each below
//!   [`CPU_ID_MAX`]); shard *i* is pinned to `cores[i]`, the CPU id itself (not the *i*-th CPU
//!   the process may use, as `cores = N` means);
//! - `driver` is `"io_uring"` or `"epoll"`: the driver the sweep ran on (informational: the
//!   engine keeps its own `[server] driver`);
//! - `measured_rps`, `measured_p99_ms`, `cpu_us_per_request` are finite and not negative;
//! - `host` is not empty.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Most shards the engine runs (`[server] cores`), and so the most a tuning file may name.
pub const SHARDS_MAX: usize = 1024;
/// CPU ids must be below this (the kernel's own `NR_CPUS` ceiling).
pub const CPU_ID_MAX: usize = 8192;
/// The version written in the file's first line.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where the kernel says whether a closing listener's queued connections move to another
/// listener of its SO_REUSEPORT group (Linux 5.14 and later).
pub const MIGRATE_REQ_PATH: &str = "/proc/sys/net/ipv4/tcp_migrate_req";

/// What an upgrade by a second instance on the same port would lose, given the contents of
/// [`MIGRATE_REQ_PATH`] (`None`: it could not be read): `None` when nothing (it is 1), else
/// why, for the engine's start-up warning and `shardgate-tune`'s check (I/O-free).
pub fn migrate_req_advice(contents: Option<&str>) -> Option<String> {
    match contents.map(str::trim) {
        Some("1") => None,
        Some(v) => Some(format!(
            "net.ipv4.tcp_migrate_req = {v}: an upgrade (a second instance on the same port, then \
             SIGTERM to the first) resets the connections waiting in the first one's listen \
             queues; set it to 1"
        )),
        None => Some(format!(
            "cannot read {MIGRATE_REQ_PATH} (a kernel older than 5.14?): an upgrade by a second \
             instance on the same port resets the connections waiting in the first one's listen \
             queues"
        )),
    }
}

/// The driver the sweep ran on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Driver {
    /// io_uring (any set-up).
    #[serde(rename = "io_uring")]
    IoUring,
    /// monoio's epoll driver: io_uring is missing or blocked.
    #[serde(rename = "epoll")]
    Epoll,
}

impl Driver {
    /// The name in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::IoUring => "io_uring",
            Driver::Epoll => "epoll",
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `[tuning]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// How many shards to run.
    pub shards: usize,
    /// The CPU id each shard is pinned to, in shard order (`cores.len() == shards`).
    pub cores: Vec<usize>,
    /// The driver the recommended point ran on.
    pub driver: Driver,
    /// Requests per second measured at the recommended point (2xx answers only).
    pub measured_rps: f64,
    /// Their 99th-percentile latency, milliseconds.
    pub measured_p99_ms: f64,
    /// Engine CPU time (user + system) per request at that point, microseconds.
    pub cpu_us_per_request: f64,
    /// When the file was written, seconds since the Unix epoch.
    pub created_unix: u64,
    /// The host it was measured on (`/proc/sys/kernel/hostname`).
    pub host: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tuning: Tuning,
}

impl Tuning {
    /// Every rule of the module docs; the first broken one, naming its field.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=SHARDS_MAX).contains(&self.shards) {
            return Err(format!(
                "tuning.shards = {}: must be 1..={SHARDS_MAX}",
                self.shards
            ));
        }
        if self.cores.len() != self.shards {
            return Err(format!(
                "tuning.cores has {} CPU ids but tuning.shards = {}: one CPU per shard",
                self.cores.len(),
                self.shards
            ));
        }
        for (i, &c) in self.cores.iter().enumerate() {
            if c >= CPU_ID_MAX {
                return Err(format!(
                    "tuning.cores[{i}] = {c}: CPU ids are below {CPU_ID_MAX}"
                ));
            }
            if self.cores[..i].contains(&c) {
                return Err(format!(
                    "tuning.cores[{i}] = {c}: CPU {c} is listed twice (one shard per CPU)"
                ));
            }
        }
        for (name, v) in [
            ("measured_rps", self.measured_rps),
            ("measured_p99_ms", self.measured_p99_ms),
            ("cpu_us_per_request", self.cpu_us_per_request),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(format!(
                    "tuning.{name} = {v}: must be a finite number, 0 or more"
                ));
            }
        }
        if self.host.trim().is_empty() {
            return Err("tuning.host is empty".to_owned());
        }
        Ok(())
    }
}

/// Read a tuning file's text: its `[tuning]` table, validated (see the module docs).
pub fn parse(text: &str) -> Result<Tuning, String> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's message spans several lines (the line quoted, a caret); keep it whole.
        format!("not a valid tuning file: {}", e.to_string().trim_end())
    })?;
    file.tuning.validate()?;
    Ok(file.tuning)
}

/// The file's text, in the documented shape, with the `# written by` line first. Floats are
/// written in Rust's shortest round-trip form (always with a `.` or an exponent), so
/// `parse(&render(t)) == Ok(t)` for every valid `t`.
pub fn render(t: &Tuning) -> String {
    let cores = t
        .cores
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let cores_line = format!("cores = [{cores}]");
    let driver_line = format!("driver = \"{}\"", t.driver);
    // A TOML basic string with every escape it needs.
    let host = toml::Value::String(t.host.clone()).to_string();
    // The comment must stay one line whatever the host name holds.
    let host_comment: String = t
        .host
        .chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    format!(
        "# written by shardgate-tune {VERSION} on {date} for {host_comment}\n\
         [tuning]\n\
         shards = {shards}\n\
         {cores_line:<23} # CPU ids the shards are pinned to, in order\n\
         {driver_line:<23} # or \"epoll\" when io_uring is blocked\n\
         measured_rps = {rps:?}\n\
         measured_p99_ms = {p99:?}\n\
         cpu_us_per_request = {cpu:?}\n\
         created_unix = {created}\n\
         host = {host}\n",
        date = utc_date(t.created_unix),
        shards = t.shards,
        rps = t.measured_rps,
        p99 = t.measured_p99_ms,
        cpu = t.cpu_us_per_request,
        created = t.created_unix,
    )
}

/// `YYYY-MM-DD HH:MM:SS UTC` for seconds since the Unix epoch (proleptic Gregorian calendar).
pub fn utc_date(unix: u64) -> String {
    let days = unix / 86_400;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Year, month, day of the `days`-th day after 1970-01-01 (Howard Hinnant's `civil_from_days`,
/// for non-negative day numbers).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    #[test]
    fn migrate_req_is_advised_unless_it_is_on() {
        assert_eq!(super::migrate_req_advice(Some("1\n")), None);
        let off = super::migrate_req_advice(Some("0\n")).unwrap_or_default();
        assert!(
            off.contains("tcp_migrate_req = 0") && off.contains("set it to 1"),
            "{off}"
        );
        let gone = super::migrate_req_advice(None).unwrap_or_default();
        assert!(gone.contains("older than 5.14"), "{gone}");
    }

    use super::*;

    fn sample() -> Tuning {
        Tuning {
            shards: 2,
            cores: vec![0, 1],
            driver: Driver::IoUring,
            measured_rps: 123_456.0,
            measured_p99_ms: 1.23,
            cpu_us_per_request: 14.2,
            created_unix: 1_764_140_000,
            host: "gw-1".to_owned(),
        }
    }

    #[test]
    fn renders_the_documented_shape() {
        let text = render(&sample());
        let expected = format!(
            "# written by shardgate-tune {VERSION} on 2025-11-26 06:53:20 UTC for gw-1\n\
             [tuning]\n\
             shards = 2\n\
             cores = [0, 1]          # CPU ids the shards are pinned to, in order\n\
             driver = \"io_uring\"     # or \"epoll\" when io_uring is blocked\n\
             measured_rps = 123456.0\n\
             measured_p99_ms = 1.23\n\
             cpu_us_per_request = 14.2\n\
             created_unix = 1764140000\n\
             host = \"gw-1\"\n"
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn round_trips() {
        let mut cases = vec![sample()];
        let mut t = sample();
        t.shards = 3;
        t.cores = vec![5, 1, 17];
        t.driver = Driver::Epoll;
        t.measured_rps = 0.1 + 0.2; // not a short decimal
        t.measured_p99_ms = 1e-7;
        t.cpu_us_per_request = 12_345_678_901_234_567.0;
        t.created_unix = 0;
        t.host = "a \"quoted\"\\ host\nwith a newline".to_owned();
        cases.push(t);
        let mut t = sample();
        t.shards = 1;
        t.cores = vec![0];
        t.measured_rps = 0.0;
        cases.push(t);
        for t in cases {
            let text = render(&t);
            assert_eq!(parse(&text), Ok(t.clone()), "{text}");
            // The comment line stays one line.
            assert_eq!(text.lines().filter(|l| l.starts_with('#')).count(), 1);
        }
    }

    #[test]
    fn parses_a_hand_written_file_with_integers_for_floats() {
        let t = parse(
            "[tuning]\nshards = 1\ncores = [3]\ndriver = \"epoll\"\nmeasured_rps = 1000\n\
             measured_p99_ms = 2\ncpu_us_per_request = 10\ncreated_unix = 5\nhost = \"h\"\n",
        )
        .unwrap();
        assert_eq!(t.cores, vec![3]);
        assert_eq!(t.driver, Driver::Epoll);
        assert!((t.measured_rps - 1000.0).abs() < f64::EPSILON);
    }

    #[test]
    fn refuses_what_the_engine_cannot_use() {
        let base = render(&sample());
        let cases: [(&str, &str, &str); 9] = [
            ("shards = 2", "shards = 0", "tuning.shards = 0"),
            ("shards = 2", "shards = 3", "tuning.cores has 2 CPU ids"),
            ("cores = [0, 1]", "cores = [1, 1]", "tuning.cores[1] = 1"),
            (
                "cores = [0, 1]",
                "cores = [0, 9000]",
                "tuning.cores[1] = 9000",
            ),
            ("io_uring\"  ", "uring\"  ", "driver"),
            (
                "measured_rps = 123456.0",
                "measured_rps = -1.0",
                "measured_rps",
            ),
            (
                "measured_p99_ms = 1.23",
                "measured_p99_ms = nan",
                "measured_p99_ms",
            ),
            ("host = \"gw-1\"", "host = \"\"", "tuning.host"),
            ("host = \"gw-1\"", "host = \"h\"\nshardz = 2", "shardz"),
        ];
        for (from, to, needle) in cases {
            assert!(base.contains(from), "{from}");
            let text = base.replacen(from, to, 1);
            let err = parse(&text).unwrap_err();
            assert!(err.contains(needle), "{to}: {err}");
        }
        assert!(parse("").unwrap_err().contains("tuning"));
        assert!(parse("[tuning]\nshards = 1\n").is_err());
        assert!(parse("[tuning]\nshards = 1\n[other]\n").is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_date(1_764_140_000), "2025-11-26 06:53:20 UTC");
        assert_eq!(utc_date(4_102_444_799), "2099-12-31 23:59:59 UTC");
    }
}
