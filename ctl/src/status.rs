//! `status [--json]`: the instance and each of its shards, from the region's header and the
//! shards' counter blocks. Rendering is pure over a [`Snapshot`].

use std::sync::atomic::Ordering;

use serde_json::{json, Value};
use shardgate_core::control::shm::{region_path, Region};
use shardgate_core::control::stats::{self, ShardView};
use shardgate_core::control::unix_ms;

use crate::table::{self, Align};
use crate::Failure;

/// What `status` shows, read once.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub instance: String,
    pub region: String,
    pub engine_pid: u64,
    pub started_unix_ms: u64,
    pub now_unix_ms: u64,
    pub draining: bool,
    /// The admin listener's port, when it has one.
    pub admin_port: Option<u64>,
    /// The tuning file the engine took its shard count and cores from, and when
    /// `shardgate-tune` wrote it (unix seconds).
    pub tuning: Option<(String, u64)>,
    pub ring_head: u64,
    pub shards: Vec<ShardView>,
}

impl Snapshot {
    pub fn read(instance: &str, region: &Region) -> Self {
        let h = region.header();
        let admin_port = h.admin_port.load(Ordering::Relaxed);
        Self {
            instance: instance.to_owned(),
            region: region_path(instance).display().to_string(),
            engine_pid: h.engine_pid.load(Ordering::Acquire),
            started_unix_ms: h.started_unix_ms.load(Ordering::Relaxed),
            now_unix_ms: unix_ms(),
            draining: h.draining.load(Ordering::Relaxed) == 1,
            admin_port: (admin_port != 0).then_some(admin_port),
            tuning: {
                let path = shardgate_core::control::shm::load_text(&h.tuning_path, &h.tuning_len);
                (!path.is_empty()).then(|| (path, h.tuning_created_unix.load(Ordering::Relaxed)))
            },
            ring_head: region.ring().head(),
            shards: stats::read(region).shards,
        }
    }

    fn uptime_ms(&self) -> u64 {
        self.now_unix_ms.saturating_sub(self.started_unix_ms)
    }

    /// (lowest, highest) config version the shards run; (0, 0) with no shards.
    pub fn versions(&self) -> (u64, u64) {
        version_range(&self.shards)
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let (lo, hi) = self.versions();
        let mut out = String::new();
        let mut field = |name: &str, value: String| {
            out.push_str(&format!("{name:<10} {value}\n"));
        };
        field("instance", self.instance.clone());
        field("region", self.region.clone());
        field(
            "engine",
            format!(
                "pid {}, up {}{}",
                self.engine_pid,
                table::uptime(self.uptime_ms()),
                if self.draining { ", draining" } else { "" }
            ),
        );
        if let Some(port) = self.admin_port {
            field("admin", format!("port {port}"));
        }
        if let Some((path, created)) = &self.tuning {
            let age = (self.now_unix_ms / 1000).saturating_sub(*created);
            field(
                "tuning",
                format!("{path} (written {} ago)", table::uptime(age * 1000)),
            );
        }
        field(
            "config",
            format!(
                "version {}{}",
                table::version_span(lo, hi),
                if lo == hi { "" } else { " (shards differ)" }
            ),
        );
        field("ring head", format!("{} frames", self.ring_head));
        out.push('\n');
        let rows: Vec<Vec<String>> = self
            .shards
            .iter()
            .map(|s| {
                vec![
                    s.id.to_string(),
                    s.core.map_or_else(|| "-".into(), |c| c.to_string()),
                    s.driver.to_owned(),
                    s.config_version.to_string(),
                    s.connections.to_string(),
                    s.requests.to_string(),
                    s.requests_inflight.to_string(),
                    s.requests_shed.to_string(),
                    s.connections_refused.to_string(),
                    s.ring_lag_frames.to_string(),
                    s.apply_errors.to_string(),
                    last_error(s).unwrap_or_default(),
                ]
            })
            .collect();
        out.push_str(&table::render(
            &[
                ("shard", Align::Right),
                ("core", Align::Right),
                ("driver", Align::Left),
                ("config", Align::Right),
                ("conns", Align::Right),
                ("requests", Align::Right),
                ("in flight", Align::Right),
                ("shed", Align::Right),
                ("refused", Align::Right),
                ("ring lag", Align::Right),
                ("apply errors", Align::Right),
                ("last error", Align::Left),
            ],
            &rows,
        ));
        out
    }

    /// The same as one JSON object.
    pub fn json(&self) -> Value {
        let (lo, hi) = self.versions();
        let shards: Vec<Value> = self
            .shards
            .iter()
            .map(|s| {
                json!({
                    "id": s.id,
                    "running": s.running,
                    "core": s.core,
                    "driver": s.driver,
                    "started_unix_ms": s.started_unix_ms,
                    "config_version": s.config_version,
                    "config_applied_unix_ms": s.config_applied_unix_ms,
                    "connections": s.connections,
                    "connections_accepted": s.connections_accepted,
                    "requests": s.requests,
                    "upstream_connects": s.upstream_connects,
                    "ring_cursor": s.ring_cursor,
                    "ring_lag_frames": s.ring_lag_frames,
                    "ring_dropped": s.ring_dropped,
                    "apply_errors": s.apply_errors,
                    "error_version": s.error_version,
                    "error": (s.apply_errors > 0).then(|| s.error.clone()),
                    "access_log_dropped": s.access_log_dropped,
                    "requests_inflight": s.requests_inflight,
                    "requests_shed": s.requests_shed,
                    "connections_refused": s.connections_refused,
                })
            })
            .collect();
        json!({
            "instance": self.instance,
            "region": self.region,
            "engine_pid": self.engine_pid,
            "started_unix_ms": self.started_unix_ms,
            "uptime_ms": self.uptime_ms(),
            "draining": self.draining,
            "admin_port": self.admin_port,
            "tuning": self.tuning.as_ref().map(|(path, created)| json!({"path": path, "created_unix": created})),
            "config_version": { "min": lo, "max": hi },
            "ring_head": self.ring_head,
            "shards": shards,
        })
    }
}

/// `v7: reason` for a shard that refused a config.
fn last_error(s: &ShardView) -> Option<String> {
    (s.apply_errors > 0).then(|| format!("v{}: {}", s.error_version, s.error))
}

/// (lowest, highest) config version over `shards`; (0, 0) with none.
pub fn version_range(shards: &[ShardView]) -> (u64, u64) {
    let lo = shards.iter().map(|s| s.config_version).min().unwrap_or(0);
    let hi = shards.iter().map(|s| s.config_version).max().unwrap_or(0);
    (lo, hi)
}

/// The `status` command.
pub fn run(instance: &str, json: bool) -> Result<(), Failure> {
    let region = crate::open_running(instance)?;
    let s = Snapshot::read(instance, &region);
    if json {
        println!("{}", s.json());
    } else {
        print!("{}", s.text());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let a = ShardView {
            id: 0,
            running: true,
            core: Some(2),
            driver: "io_uring",
            config_version: 7,
            connections: 3,
            requests: 12_034,
            requests_inflight: 2,
            requests_shed: 40,
            connections_refused: 5,
            ..ShardView::default()
        };
        let b = ShardView {
            id: 1,
            running: true,
            core: None,
            driver: "epoll",
            config_version: 6,
            ring_lag_frames: 2,
            apply_errors: 1,
            error_version: 7,
            error: "needs a restart: server.listen".into(),
            ..ShardView::default()
        };
        Snapshot {
            instance: "default".into(),
            region: "/dev/shm/shardgate-default".into(),
            engine_pid: 4242,
            started_unix_ms: 1_000,
            now_unix_ms: 1_000 + 3_725_000,
            draining: false,
            admin_port: Some(9901),
            tuning: None,
            ring_head: 12,
            shards: vec![a, b],
        }
    }

    #[test]
    fn the_tuning_file_in_use_is_shown() {
        let mut s = snapshot();
        s.tuning = Some(("/etc/shardgate/tuning.toml".into(), 126));
        assert!(
            s.text()
                .contains("tuning     /etc/shardgate/tuning.toml (written 1h0m0s ago)\n"),
            "{}",
            s.text()
        );
        assert_eq!(s.json()["tuning"]["path"], "/etc/shardgate/tuning.toml");
        assert_eq!(s.json()["tuning"]["created_unix"], 126);
        assert_eq!(snapshot().json()["tuning"], Value::Null);
    }

    #[test]
    fn text_has_the_instance_and_a_row_per_shard() {
        assert_eq!(
            snapshot().text(),
            "instance   default\n\
             region     /dev/shm/shardgate-default\n\
             engine     pid 4242, up 1h2m5s\n\
             admin      port 9901\n\
             config     version 6..7 (shards differ)\n\
             ring head  12 frames\n\
             \n\
             shard  core  driver    config  conns  requests  in flight  shed  refused  ring lag  apply errors  last error\n\
             \x20   0     2  io_uring       7      3     12034          2    40        5         0             0\n\
             \x20   1     -  epoll          6      0         0          0     0        0         2             1  \
             v7: needs a restart: server.listen\n"
        );
    }

    #[test]
    fn json_carries_the_same() {
        let v = snapshot().json();
        assert_eq!(v["instance"], "default");
        assert_eq!(v["engine_pid"], 4242);
        assert_eq!(v["uptime_ms"], 3_725_000);
        assert_eq!(v["config_version"]["min"], 6);
        assert_eq!(v["config_version"]["max"], 7);
        assert_eq!(v["ring_head"], 12);
        assert_eq!(v["shards"][0]["core"], 2);
        assert_eq!(v["shards"][0]["error"], Value::Null);
        assert_eq!(v["shards"][1]["core"], Value::Null);
        assert_eq!(v["shards"][1]["ring_lag_frames"], 2);
        assert_eq!(v["shards"][0]["requests_shed"], 40);
        assert_eq!(v["shards"][0]["connections_refused"], 5);
        assert_eq!(v["shards"][1]["error"], "needs a restart: server.listen");
        // One line, parseable back.
        let text = v.to_string();
        assert!(!text.contains('\n'));
        assert_eq!(serde_json::from_str::<Value>(&text).expect("json"), v);
    }

    #[test]
    fn read_from_a_region() {
        let r = Region::anonymous(2).expect("anonymous region");
        r.shard(1).info.0.config_version.store(3, Ordering::Release);
        r.ring().publish(3, b"x").expect("fits");
        let s = Snapshot::read("unit", &r);
        assert_eq!(s.shards.len(), 2);
        assert_eq!(s.versions(), (0, 3));
        assert_eq!(s.ring_head, 1);
        assert_eq!(s.engine_pid, u64::from(std::process::id()));
        assert!(s.region.ends_with("shardgate-unit"));
        assert!(s.text().contains("version 0..3"));
    }
}
