//! The tuning file: what `shardgate-tune` measured and recommends for this machine (shard count,
//! the cores to pin them to, the driver), written by the tuner and read by the engine at start
//! when `[server] cores = "tuned"` (from `--tuning FILE`, default `./tuning.toml`).
//!
//! ```toml
//! # written by shardgate-tune 0.1.0 on 2026-11-26 for host-a
//! [tuning]
//! shards = 2
//! cores = [0, 1]          # CPU ids the shards are pinned to, in order
//! driver = "io_uring"     # or "epoll" when io_uring is blocked
//! measured_rps = 123456.0
//! measured_p99_ms = 1.23
//! cpu_us_per_request = 14.2
//! created_unix = 1764140000
//! host = "host-a"
//! ```
//!
//! I/O-free: [`parse`] takes the text, [`render`] returns it; one format for both sides.

use serde::{Deserialize, Serialize};

use crate::config::DriverChoice;
use crate::limits::SHARDS_MAX;

/// The default tuning file, relative to the engine's working directory.
pub const TUNING_FILE_DEFAULT: &str = "tuning.toml";

/// A tuning file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tuning {
    /// Shards to run.
    pub shards: usize,
    /// CPU ids the shards are pinned to, shard *i* on `cores[i]`.
    pub cores: Vec<usize>,
    /// `io_uring` or `epoll`: what worked on this host when it was measured.
    pub driver: String,
    pub measured_rps: f64,
    pub measured_p99_ms: f64,
    pub cpu_us_per_request: f64,
    pub created_unix: u64,
    pub host: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    tuning: Tuning,
}

impl Tuning {
    /// The driver the file names, as the engine's choice.
    pub fn driver_choice(&self) -> Option<DriverChoice> {
        DriverChoice::parse(&self.driver)
    }
}

/// Read a tuning file: the `[tuning]` table, checked (1 to `SHARDS_MAX` shards, one core per
/// shard, no core twice, a known driver).
pub fn parse(text: &str) -> Result<Tuning, String> {
    let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    let t = file.tuning;
    if t.shards == 0 || t.shards > SHARDS_MAX {
        return Err(format!(
            "tuning.shards: must be 1 to {SHARDS_MAX}, got {}",
            t.shards
        ));
    }
    if t.cores.len() != t.shards {
        return Err(format!(
            "tuning.cores: {} cores for {} shards (one per shard)",
            t.cores.len(),
            t.shards
        ));
    }
    let mut seen = t.cores.clone();
    seen.sort_unstable();
    seen.dedup();
    if seen.len() != t.cores.len() {
        return Err("tuning.cores: a core is listed twice".to_owned());
    }
    if t.driver_choice().is_none() {
        return Err(format!(
            "tuning.driver: must be io_uring or epoll, got {:?}",
            t.driver
        ));
    }
    Ok(t)
}

/// The file's text, with a first comment line saying who wrote it.
pub fn render(t: &Tuning, comment: &str) -> String {
    let body = toml::to_string(&File { tuning: t.clone() }).unwrap_or_default();
    format!("# {comment}\n{body}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Tuning {
        Tuning {
            shards: 2,
            cores: vec![0, 1],
            driver: "io_uring".into(),
            measured_rps: 123_456.5,
            measured_p99_ms: 1.25,
            cpu_us_per_request: 14.2,
            created_unix: 1_764_140_000,
            host: "host-a".into(),
        }
    }

    #[test]
    fn round_trips() {
        let t = sample();
        let text = render(&t, "written by a test");
        assert!(
            text.starts_with("# written by a test\n[tuning]\n"),
            "{text}"
        );
        assert_eq!(parse(&text), Ok(t));
    }

    #[test]
    fn bad_files_name_the_field() {
        let with = |f: &dyn Fn(&mut Tuning)| {
            let mut t = sample();
            f(&mut t);
            render(&t, "x")
        };
        for (text, field) in [
            (with(&|t| t.shards = 0), "tuning.shards"),
            (with(&|t| t.cores = vec![0]), "tuning.cores"),
            (with(&|t| t.cores = vec![1, 1]), "tuning.cores"),
            (with(&|t| t.driver = "kqueue".into()), "tuning.driver"),
        ] {
            let e = parse(&text).expect_err(&text);
            assert!(e.contains(field), "{e}");
        }
        assert!(parse("[tuning]\nshards = 1\n").is_err());
        assert!(parse("shards = 1").is_err());
        assert!(parse(&format!("{}\nextra = 1\n", render(&sample(), "x"))).is_err());
    }
}
