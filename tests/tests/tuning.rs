//! `shardgate-tune --quick` end to end: the real tuner sweeps the real engine behind the real
//! mock upstream under the real load generator, and writes a tuning file the library parses and
//! a chart with a line per core-set variant.
//!
//! The slowest test of the suite: `--max-shards 2 --rounds 2` keep it to a handful of 3-second
//! points whatever the machine (about 20 s on 2 cores); a bound of 150 s stops a hung tuner.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use shardgate_tests::{bench_bin, shardgate_bin, shardgate_tune_bin, sleep};

/// Longest the tuner may run before the test kills it.
const TUNE_LIMIT: Duration = Duration::from_secs(150);

fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("shardgate-tune-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).expect("create a scratch directory");
    d
}

#[test]
fn quick_sweep_writes_a_tuning_file_and_a_chart() {
    let (engine, bench, tune) = (shardgate_bin(), bench_bin(), shardgate_tune_bin());
    let dir = scratch_dir();
    let (toml_path, svg_path) = (dir.join("tuning.toml"), dir.join("tuning.svg"));
    let (out_path, err_path) = (dir.join("stdout"), dir.join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(&tune)
        .arg("--quick")
        .arg("--out")
        .arg(&toml_path)
        .arg("--chart")
        .arg(&svg_path)
        .arg("--engine")
        .arg(&engine)
        .arg("--bench")
        .arg(&bench)
        .args(["--max-shards", "2", "--rounds", "2", "--json"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", tune.display()));
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for shardgate-tune") {
            break st;
        }
        if started.elapsed() > TUNE_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "shardgate-tune ran past {TUNE_LIMIT:?}; its stderr:\n{}",
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        sleep(Duration::from_millis(50));
    };
    let stdout = fs::read_to_string(&out_path).expect("read stdout");
    let stderr = fs::read_to_string(&err_path).expect("read stderr");
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        status.success(),
        "shardgate-tune exited {status}\n{context}"
    );
    eprintln!("shardgate-tune --quick took {:?}", started.elapsed());

    // The tuning file, through the one parser the engine uses too.
    let text = fs::read_to_string(&toml_path).expect("tuning.toml written");
    assert!(text.starts_with("# written by shardgate-tune "), "{text}");
    let t = shardgate_tune::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(t.shards >= 1, "{t:?}");
    assert_eq!(t.cores.len(), t.shards, "{t:?}");
    assert!(t.measured_rps > 0.0, "{t:?}");
    assert!(t.measured_p99_ms > 0.0, "{t:?}");
    assert!(t.cpu_us_per_request > 0.0, "{t:?}");
    assert!(!t.host.is_empty());
    assert_eq!(
        shardgate_tune::render(&t),
        text,
        "render(parse(file)) is the file"
    );

    // --json: exactly one object on stdout, agreeing with the file.
    let report: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("stdout is not one JSON object: {e}\n{context}"));
    let sweep = &report["sweep"];
    assert_eq!(sweep["tuning"]["shards"].as_u64(), Some(t.shards as u64));
    assert_eq!(sweep["tuning"]["cores"], serde_json::json!(t.cores));
    let checks = report["checks"].as_array().expect("checks");
    for name in ["io_uring", "memlock", "nofile", "somaxconn", "nic_irqs"] {
        assert!(
            checks.iter().any(|c| c["name"] == name),
            "no {name} check\n{context}"
        );
    }
    let variants: Vec<String> = sweep["variants"]
        .as_array()
        .expect("variants")
        .iter()
        .map(|v| v["name"].as_str().expect("variant name").to_owned())
        .collect();
    assert!(!variants.is_empty() && variants[0] == "all", "{variants:?}");
    let points = sweep["points"].as_array().expect("points");
    assert!(
        points.iter().all(|p| p["shards"].as_u64() <= Some(2)),
        "--max-shards 2\n{context}"
    );

    // The chart: SVG, a line per variant in each panel, the axis titles, the recommendation.
    let svg = fs::read_to_string(&svg_path).expect("tuning.svg written");
    assert!(svg.starts_with("<svg "), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"), "{svg}");
    for v in &variants {
        let needle = format!("<polyline class=\"variant\" data-variant=\"{v} (");
        assert_eq!(
            svg.matches(&needle).count(),
            2,
            "variant {v}: one line in each panel\n{svg}"
        );
    }
    for title in ["shards", "throughput (requests/s)", "p99 latency (ms)"] {
        assert!(
            svg.contains(&format!(">{title}</text>")),
            "no axis title {title:?}"
        );
    }
    assert_eq!(svg.matches("class=\"recommended\"").count(), 2, "{svg}");
    assert_eq!(svg.matches("<text").count(), svg.matches("</text>").count());

    // The engine reads the file back (`cores = "tuned"`, `--tuning FILE`): the tuned shard
    // count on the tuned cores, and `shardgate-ctl status` names the file.
    let up = shardgate_tests::MockUpstream::start(shardgate_tests::echo());
    let cfg = shardgate_tests::ConfigBuilder::new(up.addr())
        .build()
        .replace("cores = 1", "cores = \"tuned\"");
    assert!(cfg.contains("cores = \"tuned\""), "{cfg}");
    let gw = shardgate_tests::Gateway::start_with_args(
        &cfg,
        &[],
        &["--tuning", toml_path.to_str().expect("utf-8 path")],
    );
    assert_eq!(
        gw.shards(),
        t.shards,
        "the engine runs the tuned shard count"
    );
    let status = shardgate_tests::ctl_status(gw.instance());
    let shown = status["tuning"]["path"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(shown.ends_with("tuning.toml"), "{status}");
    assert_eq!(
        status["tuning"]["created_unix"].as_u64(),
        Some(t.created_unix)
    );
    let cores: Vec<u64> = status["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter_map(|s| s["core"].as_u64())
        .collect();
    let want: Vec<u64> = t.cores.iter().map(|&c| c as u64).collect();
    assert_eq!(cores, want, "shards pinned to the tuned cores: {status}");
    drop(gw);

    // Progress went to stderr (a line per point: stderr is not a terminal here), not stdout.
    assert!(
        stderr.contains("shardgate-tune: [") && stderr.contains("round 1/2"),
        "no progress on stderr\n{context}"
    );
    assert!(stderr.contains("sweep done"), "{context}");
    assert!(
        !stdout.contains("round 1/2"),
        "progress on stdout\n{context}"
    );

    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn check_only_lists_every_check_with_its_fix() {
    let out = Command::new(shardgate_tune_bin())
        .args(["--check-only", "--json"])
        .stdin(Stdio::null())
        .output()
        .expect("run shardgate-tune --check-only");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("--check-only --json prints one object");
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 12, "{report}");
    for c in checks {
        let status = c["status"].as_str().expect("status");
        assert!(["ok", "warn", "fail"].contains(&status), "{c}");
        if status == "fail" {
            assert!(
                c["fix"].is_string(),
                "a failed check says how to fix it: {c}"
            );
        }
    }
    let failed = checks.iter().any(|c| c["status"] == "fail");
    assert_eq!(
        out.status.success(),
        !failed,
        "exit status follows the checks"
    );
    assert!(report.get("sweep").is_none());
}
