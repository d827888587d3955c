//! Rotating a Bedrock upstream's AWS credentials without a config apply.
//!
//! A config reads an `aws_credentials_file` when it is loaded (at start and at every
//! `shardgate-ctl apply`). Credentials that rotate in between (an STS session renewed by a
//! sidecar, a vault agent rewriting the file) are read again by the `aws-keys` thread: it
//! looks at each file's modification time and length every [`AWS_KEYS_POLL_MS`], and at once
//! on `SIGHUP`, and hands a file that changed (and parses) to every shard.
//!
//! The shard side stays free of locks: each shard has its own channel ([`KeyFeed`]); a Bedrock
//! request polls it (an empty channel is a read of a line only the sender writes), keeps what
//! arrived, and signs with the newest credentials read from the file its upstream names, else
//! with the config's. A file that fails to parse is logged and the last good credentials stay.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam::channel::{Receiver, Sender};

use crate::config::{aws_credentials_file, AwsAuth, Config, AWS_FROM_ENVIRONMENT};

/// How often the `aws-keys` thread looks at the credentials files, ms.
pub const AWS_KEYS_POLL_MS: u64 = 1000;
/// Rotations a shard may have waiting (it keeps only the newest; a full channel drops the
/// update for that shard until the next change, which the sender logs).
const FEED_CAPACITY: usize = 4;

/// Credentials read from files since the config was loaded, by file path.
pub type Rotated = Arc<HashMap<String, Arc<AwsAuth>>>;

/// A shard's end: the newest rotation it has seen.
#[derive(Debug)]
pub struct KeyFeed {
    rx: Receiver<Rotated>,
    newest: RefCell<Option<Rotated>>,
}

impl KeyFeed {
    /// The credentials to sign with for an upstream whose config holds `configured`: the newest
    /// read from its file since, else `configured`.
    pub fn current(&self, configured: &AwsAuth) -> Option<Arc<AwsAuth>> {
        let mut newest = self.newest.borrow_mut();
        while let Ok(r) = self.rx.try_recv() {
            *newest = Some(r);
        }
        newest.as_ref()?.get(&configured.source).cloned()
    }
}

/// The files to watch in `cfg`: each Bedrock upstream's `aws_credentials_file`.
pub fn watched_files(cfg: &Config) -> Vec<String> {
    let mut files: Vec<String> = cfg
        .upstreams
        .iter()
        .filter_map(|u| u.aws.as_ref())
        .filter(|a| a.source != AWS_FROM_ENVIRONMENT)
        .map(|a| a.source.clone())
        .collect();
    files.sort();
    files.dedup();
    files
}

/// Start the `aws-keys` thread for `files` (none: no thread, feeds that never change), with
/// one feed per shard. `hup` is set by `SIGHUP`; `stop` ends the thread.
pub fn start(
    files: Vec<String>,
    shards: usize,
    hup: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<KeyFeed>> {
    let (txs, feeds): (Vec<Sender<Rotated>>, Vec<KeyFeed>) = (0..shards)
        .map(|_| {
            let (tx, rx) = crossbeam::channel::bounded(FEED_CAPACITY);
            (
                tx,
                KeyFeed {
                    rx,
                    newest: RefCell::new(None),
                },
            )
        })
        .unzip();
    if files.is_empty() {
        return Ok(feeds);
    }
    std::thread::Builder::new()
        .name("aws-keys".into())
        .spawn(move || watch(&files, &txs, &hup, &stop))?;
    Ok(feeds)
}

/// A file's identity for change detection.
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &str) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

fn watch(files: &[String], txs: &[Sender<Rotated>], hup: &AtomicBool, stop: &AtomicBool) {
    let mut stamps: Vec<Stamp> = files.iter().map(|f| stamp(f)).collect();
    let mut read: HashMap<String, Arc<AwsAuth>> = HashMap::new();
    let tick = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::Relaxed) {
        // The aws-keys thread's own (never a shard's).
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(tick);
        waited += tick;
        let forced = hup.swap(false, Ordering::Relaxed);
        if !forced && waited < Duration::from_millis(AWS_KEYS_POLL_MS) {
            continue;
        }
        waited = Duration::ZERO;
        let mut changed = false;
        for (path, seen) in files.iter().zip(stamps.iter_mut()) {
            let now = stamp(path);
            if !forced && now == *seen {
                continue;
            }
            *seen = now;
            match aws_credentials_file(path) {
                Ok(auth) => {
                    if read.get(path).map(|a| a.as_ref()) != Some(&auth) {
                        tracing::info!(
                            file = path.as_str(),
                            access_key_id = auth.access_key_id.as_str(),
                            "AWS credentials read again"
                        );
                        read.insert(path.clone(), Arc::new(auth));
                        changed = true;
                    }
                }
                Err(why) => tracing::warn!("AWS credentials kept as they were: {why}"),
            }
        }
        if changed {
            let rotated: Rotated = Arc::new(read.clone());
            for (shard, tx) in txs.iter().enumerate() {
                if tx.try_send(rotated.clone()).is_err() {
                    tracing::warn!(shard, "a shard's AWS credentials feed is full");
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a test's own thread waits
mod tests {
    use super::*;

    fn write(path: &std::path::Path, id: &str) {
        std::fs::write(
            path,
            format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = s-{id}\n"),
        )
        .expect("write the credentials file");
    }

    #[test]
    fn a_rewritten_file_reaches_every_shard_and_sighup_rereads_at_once() {
        let dir = std::env::temp_dir().join(format!("sg-aws-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("credentials");
        write(&path, "AKIDFIRST");
        let file = path.display().to_string();
        let configured = aws_credentials_file(&file).expect("parses");
        let hup = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let feeds = start(vec![file.clone()], 2, hup.clone(), stop.clone()).expect("thread");
        // Nothing changed: the config's credentials.
        assert!(feeds[0].current(&configured).is_none());
        // Rotated (a longer id: the length changes even within one mtime tick), then SIGHUP.
        write(&path, "AKIDSECONDXX");
        hup.store(true, Ordering::Relaxed);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        for feed in &feeds {
            let got = loop {
                if let Some(a) = feed.current(&configured) {
                    break a;
                }
                assert!(std::time::Instant::now() < deadline, "no rotation arrived");
                std::thread::sleep(Duration::from_millis(10));
            };
            assert_eq!(got.access_key_id, "AKIDSECONDXX");
            assert_eq!(got.secret_access_key, "s-AKIDSECONDXX");
        }
        // A broken file keeps the last good credentials.
        std::fs::write(&path, "[default]\nno\n").expect("write");
        hup.store(true, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            feeds[1]
                .current(&configured)
                .map(|a| a.access_key_id.clone()),
            Some("AKIDSECONDXX".to_owned())
        );
        stop.store(true, Ordering::Relaxed);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
