//! `shardgate-tune`: checks the host, sweeps shard counts and core sets against the real engine,
//! recommends one, writes it to `tuning.toml` (read by the engine with `[server] cores =
//! "tuned"`) and draws the sweep as an SVG chart. See `docs/operations.md`.
//!
//! # Layout
//! - `main.rs`: the command line, the order of things, the report (text or `--json`).
//! - `checks`: the host checks, I/O-free (file contents in, statuses and fixes out).
//! - `host`: reads the files the checks need, probes io_uring.
//! - `plan`: core-set variants, the runs, where the load goes, the recommendation rule.
//! - `sweep`: one point's processes (mock upstream, engine under taskset, load generator).
//! - `chart`: the SVG, drawn by hand.
//! - `progress`: the progress bar on stderr.
//! - the library (`lib.rs`): the tuning file's format, shared with the engine.

mod chart;
mod checks;
mod host;
mod plan;
mod progress;
mod sweep;

use std::io::IsTerminal as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use clap::Parser;
use serde::Serialize;
use shardgate_tune::{Driver, Tuning};

use checks::{format_cpulist, join_cpus, Check, Status};
use plan::{Outcome, Point};

/// Check this host, find the shard count and core set that serve the most requests per second,
/// and write them to `tuning.toml` for the engine (`[server] cores = "tuned"`).
///
/// The sweep runs the real engine (`shardgate`) against a mock upstream (`shardgate-bench
/// upstream`) under load from `shardgate-bench load`, once per shard count and core set, and
/// measures requests/s, p99 and CPU per request. Progress goes to stderr; the report (or
/// `--json`) to stdout.
#[derive(Debug, Parser)]
#[command(name = "shardgate-tune", version)]
struct Cli {
    /// A short sweep: powers-of-two shard counts, 1 s warm-up and 2 s measured per point
    /// (under two minutes on a 2-core machine).
    #[arg(long)]
    quick: bool,
    /// Only run the host checks (exit status 1 when one fails).
    #[arg(long)]
    check_only: bool,
    /// The tuning file to write.
    #[arg(long, value_name = "FILE", default_value = "tuning.toml")]
    out: PathBuf,
    /// The SVG chart to write [default: the tuning file's path with `.svg`].
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Print one JSON object on stdout (checks, points, recommendation) instead of the report.
    #[arg(long)]
    json: bool,
    /// The engine binary [default: `shardgate` next to this binary].
    #[arg(long, value_name = "PATH")]
    engine: Option<PathBuf>,
    /// The bench binary [default: `shardgate-bench` next to this binary].
    #[arg(long, value_name = "PATH")]
    bench: Option<PathBuf>,
    /// Warm-up load before each measured window [default: 1s with --quick, else 2s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Measured window per point [default: 2s with --quick, else 5s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Keep-alive connections of the load generator, the same at every point [default: 64, or
    /// 16 per usable CPU when that is more].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: Option<u32>,
    /// Measure every point this many times, round-robin, and keep the medians (a shared or
    /// virtual machine is noisy).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    rounds: u32,
    /// Measure at most this many shards.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    max_shards: Option<u32>,
    /// Run the mock upstream and the load generator on these CPUs (e.g. `6-7`) instead of on
    /// the CPUs each point's engine does not use.
    #[arg(long, value_name = "LIST", value_parser = parse_cpus)]
    load_cores: Option<CpuList>,
}

/// A CPU list argument (a newtype: clap would take a `Vec` for repeated values).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<usize>);

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?}: a duration is a number and a unit: 2s, 500ms, 1m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) {
        return Err(format!("{s:?}: at most an hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_cpus(s: &str) -> Result<CpuList, String> {
    checks::parse_cpulist(s)
        .filter(|c| !c.is_empty())
        .map(CpuList)
        .ok_or_else(|| format!("{s:?} is not a CPU list (e.g. 2-3,6)"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shardgate-tune: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `--json` object.
#[derive(Debug, Serialize)]
struct Report<'a> {
    version: &'static str,
    host: String,
    kernel: String,
    checks: &'a [Check],
    #[serde(skip_serializing_if = "Option::is_none")]
    sweep: Option<SweepReport>,
}

#[derive(Debug, Serialize)]
struct SweepReport {
    quick: bool,
    connections: usize,
    warmup_ms: u128,
    duration_ms: u128,
    /// Whether processes were pinned with taskset.
    taskset: bool,
    variants: Vec<plan::Variant>,
    points: Vec<Point>,
    recommendation: plan::Recommendation,
    tuning: Tuning,
    /// Recommended CPUs that also serve NIC interrupts.
    irq_shared_cores: Vec<usize>,
    /// The largest (max - min) / median of a point's requests/s over its rounds.
    max_rps_spread: f64,
    /// Set when that spread is over 25%.
    noisy: Option<String>,
    tuning_file: PathBuf,
    chart_file: PathBuf,
    wall_s: f64,
}

fn print_checks(host: &str, kernel: &str, checks: &[Check]) {
    println!("host checks ({host}, kernel {kernel}):");
    for c in checks {
        println!("  {:<5} {:<20} {}", c.status.as_str(), c.name, c.detail);
        if let Some(f) = &c.fix {
            println!("  {:<5} {:<20} fix: {f}", "", "");
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // A second signal exits at once.
        signal_hook::flag::register_conditional_shutdown(sig, 130, interrupted.clone())
            .context("installing a signal handler")?;
        signal_hook::flag::register(sig, interrupted.clone())
            .context("installing a signal handler")?;
    }
    let facts = host::read_facts();
    let host = host::hostname();
    let kernel = facts
        .osrelease
        .as_deref()
        .map_or_else(|| "?".to_owned(), |k| k.trim().to_owned());
    let checks = checks::run_all(&facts);

    if cli.check_only {
        if cli.json {
            let r = Report {
                version: shardgate_tune::VERSION,
                host,
                kernel,
                checks: &checks,
                sweep: None,
            };
            println!("{}", serde_json::to_string(&r)?);
        } else {
            print_checks(&host, &kernel, &checks);
        }
        let failed = checks.iter().any(|c| c.status == Status::Fail);
        return Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    if !cli.json {
        print_checks(&host, &kernel, &checks);
    }

    // The set-up.
    let engine = sweep::sibling_binary(
        cli.engine.as_deref(),
        "shardgate",
        "--engine",
        "shardgate-engine",
    )?;
    let bench = sweep::sibling_binary(
        cli.bench.as_deref(),
        "shardgate-bench",
        "--bench",
        "shardgate-bench",
    )?;
    let taskset = sweep::which("taskset");
    if taskset.is_none() {
        eprintln!(
            "shardgate-tune: warning: taskset not found (apt-get install util-linux): only the \
             `all` core set is measured, and the load shares the engine's CPUs"
        );
    }
    let usable = checks::usable_cpus(&facts);
    let siblings = checks::sibling_sets(&facts);
    let mut variants = plan::variants(&usable, &siblings);
    if taskset.is_none() {
        variants.truncate(1);
    }
    let load_cores = if taskset.is_some() {
        cli.load_cores.clone().map(|c| c.0)
    } else {
        None
    };
    let runs = plan::plan(
        &variants,
        &usable,
        cli.quick,
        cli.max_shards.map(|m| m as usize),
        load_cores.as_deref(),
    );
    let connections = cli
        .connections
        .map_or_else(|| (16 * usable.len()).max(64), |c| c as usize);
    let (warm_default, dur_default) = if cli.quick {
        (Duration::from_secs(1), Duration::from_secs(2))
    } else {
        (Duration::from_secs(2), Duration::from_secs(5))
    };
    let pid = std::process::id();
    let workdir = std::env::temp_dir().join(format!("shardgate-tune-{pid}"));
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let setup = sweep::Setup {
        engine,
        bench,
        taskset,
        workdir: workdir.clone(),
        connections,
        warmup: cli.warmup.unwrap_or(warm_default),
        duration: cli.duration.unwrap_or(dur_default),
        instance_prefix: format!("tune-{pid}"),
        clk_tck: rustix::param::clock_ticks_per_second(),
        interrupted,
    };
    if setup.duration.is_zero() {
        bail!("--duration must be longer than 0");
    }
    let per_point = setup.warmup + setup.duration;
    eprintln!(
        "shardgate-tune: {} points ({} core sets: {}) x {} rounds, {} connections, {:?} warm-up \
         + {:?} measured each (about {:.0} s); engine {}",
        runs.len(),
        variants.len(),
        variants
            .iter()
            .map(|v| v.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        cli.rounds,
        connections,
        setup.warmup,
        setup.duration,
        (per_point.as_secs_f64() + 0.5) * (runs.len() * cli.rounds as usize) as f64,
        setup.engine.display()
    );

    // The sweep: every point once per round, round-robin, so a slow drift of the machine
    // spreads over all points instead of biasing the last ones.
    let rounds = cli.rounds as usize;
    let mut progress =
        progress::Progress::new(runs.len() * rounds, std::io::stderr().is_terminal());
    let mut samples: Vec<Vec<plan::Measured>> = vec![Vec::new(); runs.len()];
    let mut failures: Vec<Vec<String>> = vec![Vec::new(); runs.len()];
    for round in 0..rounds {
        for (i, r) in runs.iter().enumerate() {
            let step = round * runs.len() + i;
            let label = format!(
                "round {}/{rounds}: {} {} shard{} on CPU{} {}",
                round + 1,
                r.variants.join("/"),
                r.shards(),
                if r.shards() == 1 { "" } else { "s" },
                if r.shards() == 1 { "" } else { "s" },
                format_cpulist(&r.cores)
            );
            progress.begin(step, &label);
            let result = match sweep::measure(&setup, r, step) {
                Ok(m) => {
                    let text = format!(
                        "{:.0} req/s, p99 {:.2} ms, {:.1} us CPU/req{}",
                        m.rps,
                        m.p99_ms,
                        m.cpu_us_per_request,
                        if r.shared {
                            " (load on the same CPUs)"
                        } else {
                            ""
                        }
                    );
                    samples[i].push(m);
                    text
                }
                Err(e) if e.to_string() == "interrupted" => {
                    progress.finish();
                    bail!(
                        "interrupted; the sweep's files are in {}",
                        workdir.display()
                    );
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    let text = format!("FAILED: {}", e.lines().next().unwrap_or(""));
                    failures[i].push(e);
                    text
                }
            };
            progress.end(step, &label, &result);
        }
    }
    progress.finish();
    let points: Vec<Point> = runs
        .into_iter()
        .zip(samples.iter().zip(failures))
        .map(|(run, (s, round_errors))| {
            let outcome = match plan::combine(s) {
                Some(m) => Outcome::Measured(m),
                None => Outcome::Failed {
                    error: round_errors.first().cloned().unwrap_or_default(),
                },
            };
            Point {
                shards: run.shards(),
                run,
                outcome,
                round_errors,
            }
        })
        .collect();
    for p in &points {
        for e in &p.round_errors {
            eprintln!(
                "shardgate-tune: a round of {} shards on CPUs {} failed:\n{e}",
                p.shards,
                join_cpus(&p.run.cores)
            );
        }
    }

    // The worst spread between rounds: a busy or noisy machine shows here.
    let max_spread = points
        .iter()
        .filter_map(Point::measured)
        .map(|m| plan::spread(&m.rps_samples))
        .fold(0.0, f64::max);
    let noisy = (max_spread > plan::NOISY_SPREAD).then(|| {
        format!(
            "noisy: a point's rounds differed by up to {:.0}% of their median (other processes \
             on these CPUs, or a busy hypervisor); rerun on a quiet machine, or with more --rounds",
            max_spread * 100.0
        )
    });
    if let Some(n) = &noisy {
        eprintln!("shardgate-tune: warning: {n}");
    }
    let Some(rec) = plan::recommend(&points) else {
        bail!(
            "no point was measured, so there is nothing to recommend (the files of the sweep \
             are in {})",
            workdir.display()
        );
    };
    let best = &points[rec.index];
    let m = best
        .measured()
        .context("the recommended point has numbers")?
        .clone();
    let driver = match facts.uring.as_ref().map(checks::UringProbe::driver) {
        Some(Driver::Epoll) => Driver::Epoll,
        _ => m.driver.unwrap_or(Driver::IoUring),
    };
    let created_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tuning = Tuning {
        shards: best.shards,
        cores: best.run.cores.clone(),
        driver,
        measured_rps: m.rps,
        measured_p99_ms: m.p99_ms,
        cpu_us_per_request: m.cpu_us_per_request,
        created_unix,
        host: host.clone(),
    };
    tuning
        .validate()
        .map_err(|e| anyhow::anyhow!("internal: the recommendation is not a valid file: {e}"))?;

    // The files.
    let chart_path = cli
        .chart
        .clone()
        .unwrap_or_else(|| cli.out.with_extension("svg"));
    write_file(&cli.out, &shardgate_tune::render(&tuning))?;
    let series: Vec<chart::Series> = variants
        .iter()
        .map(|v| {
            let mut pts: Vec<(usize, f64, f64, bool)> = points
                .iter()
                .filter(|p| p.run.variants.contains(&v.name))
                .filter_map(|p| {
                    let m = p.measured()?;
                    Some((p.shards, m.rps, m.p99_ms, p.run.shared))
                })
                .collect();
            pts.sort_by_key(|p| p.0);
            chart::Series {
                name: format!("{} ({})", v.name, format_cpulist(&v.order)),
                points: pts,
            }
        })
        .collect();
    let marked = chart::Marked {
        shards: tuning.shards,
        rps: tuning.measured_rps,
        p99_ms: tuning.measured_p99_ms,
        label: format!(
            "{} shard{} on CPUs {}\n{:.0} req/s, p99 {:.2} ms\n{:.1} us CPU per request",
            tuning.shards,
            if tuning.shards == 1 { "" } else { "s" },
            join_cpus(&tuning.cores),
            tuning.measured_rps,
            tuning.measured_p99_ms,
            tuning.cpu_us_per_request
        ),
    };
    let title = format!("shardgate-tune on {host}: throughput and p99 against shard count");
    let note = format!(
        "{connections} connections, closed loop; each point the median of {rounds} rounds of \
         {:?} measured\nload generator and mock upstream on this host, {}; {}",
        setup.duration,
        if load_cores.is_some() {
            "on --load-cores"
        } else {
            "on the CPUs the engine does not use"
        },
        shardgate_tune::utc_date(created_unix)
    );
    write_file(
        &chart_path,
        &chart::render(&title, &series, Some(&marked), &note),
    )?;
    let irq_shared = checks::shared_with_irqs(&facts, &tuning.cores);
    let _ = std::fs::remove_dir_all(&workdir);

    if cli.json {
        let r = Report {
            version: shardgate_tune::VERSION,
            host,
            kernel,
            checks: &checks,
            sweep: Some(SweepReport {
                quick: cli.quick,
                connections,
                warmup_ms: setup.warmup.as_millis(),
                duration_ms: setup.duration.as_millis(),
                taskset: setup.taskset.is_some(),
                variants,
                points,
                recommendation: rec,
                tuning,
                irq_shared_cores: irq_shared,
                max_rps_spread: sweep::round(max_spread, 3),
                noisy: noisy.clone(),
                tuning_file: cli.out.clone(),
                chart_file: chart_path,
                wall_s: sweep::round(started.elapsed().as_secs_f64(), 1),
            }),
        };
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print_sweep(&points, &rec, &tuning, &irq_shared, &cli.out, &chart_path);
        if let Some(n) = &noisy {
            println!("warning: {n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn print_sweep(
    points: &[Point],
    rec: &plan::Recommendation,
    t: &Tuning,
    irq_shared: &[usize],
    out: &Path,
    chart: &Path,
) {
    println!();
    println!(
        "sweep:\n  {:<22} {:>6}  {:<12} {:>10} {:>8} {:>11}  note",
        "core set", "shards", "cpus", "req/s", "p99 ms", "CPU us/req"
    );
    for (i, p) in points.iter().enumerate() {
        let mark = if i == rec.index { "<- recommended" } else { "" };
        match &p.outcome {
            Outcome::Measured(m) => println!(
                "  {:<22} {:>6}  {:<12} {:>10.0} {:>8.3} {:>11.1}  {}{}",
                p.run.variants.join("/"),
                p.shards,
                format_cpulist(&p.run.cores),
                m.rps,
                m.p99_ms,
                m.cpu_us_per_request,
                if p.run.shared {
                    "load shared CPUs "
                } else {
                    ""
                },
                mark
            ),
            Outcome::Failed { error } => println!(
                "  {:<22} {:>6}  {:<12} failed: {}",
                p.run.variants.join("/"),
                p.shards,
                format_cpulist(&p.run.cores),
                error.lines().next().unwrap_or("")
            ),
        }
    }
    println!();
    println!(
        "recommended: {} shard{} on CPUs {} ({} driver): {:.0} req/s, p99 {:.3} ms, {:.1} us CPU \
         per request",
        t.shards,
        if t.shards == 1 { "" } else { "s" },
        join_cpus(&t.cores),
        t.driver,
        t.measured_rps,
        t.measured_p99_ms,
        t.cpu_us_per_request
    );
    println!("  rule: {}", rec.rule);
    if !irq_shared.is_empty() {
        println!(
            "  note: CPUs {} also serve NIC interrupts (see the nic_irqs check)",
            join_cpus(irq_shared)
        );
    }
    println!("wrote {} and {}", out.display(), chart.display());
    println!(
        "use it: [server] cores = \"tuned\" in the engine's config (reads tuning.toml from the \
         working directory), or shardgate --tuning {}",
        out.display()
    );
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn durations_and_cpus() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_cpus("2-3,6").unwrap(), CpuList(vec![2, 3, 6]));
        assert!(parse_cpus("").is_err());
    }

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from([
            "shardgate-tune",
            "--quick",
            "--out",
            "/tmp/x/t.toml",
            "--json",
            "--load-cores",
            "1",
        ])
        .unwrap();
        assert!(c.quick && c.json);
        assert_eq!(c.load_cores, Some(CpuList(vec![1])));
        assert!(c.chart.is_none());
        assert_eq!(c.out.with_extension("svg"), PathBuf::from("/tmp/x/t.svg"));
    }
}
