//! The arithmetic of a comparison: per-run figures, run status (ok / noisy / errors ...),
//! medians over the ok runs, ratios to nginx. No I/O.

use std::collections::BTreeMap;

use serde::Serialize;

/// A figure measured in one run. Keys of the raw and JSON output; units last in the names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Requests (sse: streams) completed per second.
    Rps,
    /// Latency percentiles (sse: whole stream), µs.
    P50Us,
    P99Us,
    P999Us,
    /// sse: time to the first response byte, to the first event, and between events, p99, µs.
    TtfbP99Us,
    TtfeP99Us,
    GapP99Us,
    /// sse: time to the first response byte and to the first event, p50 and p90, µs.
    TtfbP50Us,
    TtfbP90Us,
    TtfeP50Us,
    TtfeP90Us,
    /// The proxy's CPU time (utime + stime of all its processes) per request (sse: per stream).
    CpuUsPerReq,
    /// Share of its core the proxy used over the run, %.
    ProxyCpuPct,
    /// The mock upstream's and the load generator's CPU per request, for context.
    UpstreamCpuUsPerReq,
    LoadCpuUsPerReq,
    /// VmRSS of all the proxy's processes after the run.
    RssMib,
    /// sse: VmRSS of the proxy's processes once started and answering, before any load, MiB.
    RssIdleMib,
    /// sse: VmRSS of the proxy's processes sampled while the streams are open, MiB.
    RssOpenMib,
    /// sse: (`RssOpenMib` - `RssIdleMib`) per stream of the run, KiB.
    RssPerStreamKib,
    /// sse: client connections the proxy held when its RSS was sampled (should be the streams).
    StreamsHeld,
}

/// What became of one run. Only `Ok` runs enter the medians.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Ok,
    /// Other processes used the benchmark cores, or the hypervisor stole the proxy's core.
    Noisy,
    /// Connect/read/write errors, timeouts, non-2xx answers or incomplete streams.
    Errors,
    /// The load generator completed no request.
    NoRequests,
    /// The load generator failed or printed no result.
    LoadFailed,
    /// A proxy process disappeared during the run.
    ProcGone,
    /// The proxy did not start or did not answer 200 (it is dropped from later rounds).
    StartFailed,
    /// Something else holds the proxy's port.
    PortBusy,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Noisy => "noisy",
            RunStatus::Errors => "errors",
            RunStatus::NoRequests => "no_requests",
            RunStatus::LoadFailed => "load_failed",
            RunStatus::ProcGone => "proc_gone",
            RunStatus::StartFailed => "start_failed",
            RunStatus::PortBusy => "port_busy",
        }
    }
}

/// The CPU accounting of one run, in clock ticks, from /proc.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Ticks {
    /// busy ticks (user+nice+system+irq+softirq) of the proxy core and the load core together.
    pub cores_busy: u64,
    pub proxy: u64,
    pub upstream: u64,
    pub load: u64,
    pub steal_proxy_cpu: u64,
    pub steal_load_cpu: u64,
}

/// Thresholds that make a run noisy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NoiseLimits {
    /// CPU used on the two cores by anything other than the proxy, the upstream and the load
    /// generator, % of one core.
    pub foreign_max_pct: f64,
    /// Steal on the proxy core, % of the run.
    pub steal_max_pct: f64,
}

/// CPU used on the two benchmark cores by other processes, % of one core over `wall_s`.
/// Can be slightly negative (tick rounding); never NaN.
pub fn foreign_pct(t: &Ticks, clk_tck: u64, wall_s: f64) -> f64 {
    if wall_s <= 0.0 || clk_tck == 0 {
        return 0.0;
    }
    let ours = t.proxy + t.upstream + t.load;
    let foreign = t.cores_busy as f64 - ours as f64;
    100.0 * foreign / clk_tck as f64 / wall_s
}

/// Steal on the proxy core, % of `wall_s`.
pub fn steal_pct(t: &Ticks, clk_tck: u64, wall_s: f64) -> f64 {
    if wall_s <= 0.0 || clk_tck == 0 {
        return 0.0;
    }
    100.0 * t.steal_proxy_cpu as f64 / clk_tck as f64 / wall_s
}

/// The status of a run whose load generator finished and whose proxy survived.
pub fn classify(
    requests: u64,
    errors: u64,
    foreign_pct: f64,
    steal_pct: f64,
    limits: NoiseLimits,
) -> RunStatus {
    if requests == 0 {
        RunStatus::NoRequests
    } else if errors > 0 {
        // A wrong answer is cheap: a run with any does not measure the proxy's work.
        RunStatus::Errors
    } else if foreign_pct > limits.foreign_max_pct || steal_pct > limits.steal_max_pct {
        RunStatus::Noisy
    } else {
        RunStatus::Ok
    }
}

/// Why a run is noisy, naming only the limits it went past.
pub fn noise_reason(foreign_pct: f64, steal_pct: f64, limits: NoiseLimits) -> String {
    let mut why = Vec::new();
    if foreign_pct > limits.foreign_max_pct {
        why.push(format!(
            "other processes used {foreign_pct:.1}% of a core on the two cores (limit {}%)",
            limits.foreign_max_pct
        ));
    }
    if steal_pct > limits.steal_max_pct {
        why.push(format!(
            "the hypervisor stole {steal_pct:.1}% of the proxy core (limit {}%)",
            limits.steal_max_pct
        ));
    }
    why.join("; ")
}

/// Memory per open stream, KiB: the growth of the proxy's RSS from idle (`idle_kib`, before
/// any load) to the sample taken with the streams open (`open_kib`), over `streams`. `None`
/// without streams. Negative when the proxy gave memory back (shown as is: it says the sample
/// is not usable, rather than hiding it as zero).
pub fn rss_per_stream_kib(open_kib: u64, idle_kib: u64, streams: u64) -> Option<f64> {
    (streams > 0).then(|| (open_kib as f64 - idle_kib as f64) / streams as f64)
}

/// CPU µs per request from a tick delta.
pub fn cpu_us_per(ticks: u64, clk_tck: u64, requests: u64) -> Option<f64> {
    (requests > 0 && clk_tck > 0).then(|| ticks as f64 * 1e6 / clk_tck as f64 / requests as f64)
}

/// Median of the values (the mean of the middle two for an even count); `None` when empty.
/// NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `value / reference`, when both exist and the reference is not zero.
pub fn ratio(value: Option<f64>, reference: Option<f64>) -> Option<f64> {
    match (value, reference) {
        (Some(v), Some(r)) if r != 0.0 && r.is_finite() && v.is_finite() => Some(v / r),
        _ => None,
    }
}

/// Medians of one proxy's ok runs in one scenario.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProxySummary {
    pub proxy: String,
    pub runs_ok: usize,
    pub runs_total: usize,
    /// Median of each figure over the ok runs.
    pub median: BTreeMap<Metric, f64>,
    /// Smallest and largest CPU µs/request over the ok runs.
    pub cpu_us_per_req_min: Option<f64>,
    pub cpu_us_per_req_max: Option<f64>,
    /// Each median divided by nginx's (absent when nginx has no ok run).
    pub ratio_to_nginx: BTreeMap<Metric, f64>,
}

/// One run's figures, as the summary needs them.
#[derive(Debug, Clone, PartialEq)]
pub struct RunFigures<'a> {
    pub proxy: &'a str,
    pub status: RunStatus,
    pub figures: &'a BTreeMap<Metric, f64>,
}

/// Summaries for `proxies` (in that order) from all runs of one scenario; ratios against the
/// proxy named `reference` (nginx).
pub fn summarize(proxies: &[&str], runs: &[RunFigures<'_>], reference: &str) -> Vec<ProxySummary> {
    let mut out: Vec<ProxySummary> = proxies
        .iter()
        .map(|&p| {
            let mine: Vec<&RunFigures<'_>> = runs.iter().filter(|r| r.proxy == p).collect();
            let ok: Vec<&RunFigures<'_>> = mine
                .iter()
                .copied()
                .filter(|r| r.status == RunStatus::Ok)
                .collect();
            let mut keys: Vec<Metric> = ok.iter().flat_map(|r| r.figures.keys().copied()).collect();
            keys.sort();
            keys.dedup();
            let median_of = |m: Metric| {
                let vals: Vec<f64> = ok
                    .iter()
                    .filter_map(|r| r.figures.get(&m).copied())
                    .collect();
                median(&vals)
            };
            let median: BTreeMap<Metric, f64> = keys
                .iter()
                .filter_map(|&m| median_of(m).map(|v| (m, v)))
                .collect();
            let cpu: Vec<f64> = ok
                .iter()
                .filter_map(|r| r.figures.get(&Metric::CpuUsPerReq).copied())
                .collect();
            ProxySummary {
                proxy: p.to_string(),
                runs_ok: ok.len(),
                runs_total: mine.len(),
                median,
                cpu_us_per_req_min: cpu.iter().copied().reduce(f64::min),
                cpu_us_per_req_max: cpu.iter().copied().reduce(f64::max),
                ratio_to_nginx: BTreeMap::new(),
            }
        })
        .collect();
    let reference_median = out
        .iter()
        .find(|s| s.proxy == reference)
        .map(|s| s.median.clone());
    if let Some(refm) = reference_median {
        for s in &mut out {
            s.ratio_to_nginx = s
                .median
                .iter()
                .filter_map(|(&m, &v)| ratio(Some(v), refm.get(&m).copied()).map(|r| (m, r)))
                .collect();
        }
    }
    out
}

/// Where the `rate` scenario's open-loop rate comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenLoopRate {
    /// req/s.
    pub rps: f64,
    /// The proxy whose json req/s it derives from.
    pub of: String,
    /// No proxy had an ok json run: the median is over noisy runs.
    pub from_noisy: bool,
}

/// The open-loop rate for the `rate` scenario: `percent` % of a proxy's median json req/s: of
/// `preferred` (nginx) if it has ok runs, else of the first proxy in `order` that has; failing
/// that, the same over ok and noisy runs (a rate from a noisy run is still a sensible rate).
pub fn open_loop_rate(
    runs: &[RunFigures<'_>],
    order: &[&str],
    preferred: &str,
    percent: f64,
) -> Option<OpenLoopRate> {
    let rps_of = |proxy: &str, allowed: &[RunStatus]| -> Option<f64> {
        let v: Vec<f64> = runs
            .iter()
            .filter(|r| r.proxy == proxy && allowed.contains(&r.status))
            .filter_map(|r| r.figures.get(&Metric::Rps).copied())
            .collect();
        median(&v).filter(|r| *r > 0.0)
    };
    for (allowed, from_noisy) in [
        (&[RunStatus::Ok][..], false),
        (&[RunStatus::Ok, RunStatus::Noisy][..], true),
    ] {
        let candidates = std::iter::once(preferred).chain(order.iter().copied());
        for p in candidates {
            if let Some(rps) = rps_of(p, allowed) {
                let rps = (rps * percent / 100.0).round().max(1.0);
                return Some(OpenLoopRate {
                    rps,
                    of: p.to_string(),
                    from_noisy,
                });
            }
        }
    }
    None
}

/// Parse a duration: `10s`, `500ms`, `2m`, or bare seconds (`10`, `1.5`).
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let (num, scale_ms) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1e3)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60e3)
    } else {
        (s, 1e3)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * scale_ms > 86_400e3 {
        return Err(format!("duration {s:?} out of range (0 to 24 h)"));
    }
    Ok(std::time::Duration::from_secs_f64(v * scale_ms / 1e3))
}

/// A duration as the load generator takes it: whole seconds as `Ns`, otherwise `Nms`.
pub fn duration_arg(d: std::time::Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn rss_per_stream_is_growth_over_streams() {
        // nginx at 1,000 streams: 14,740 KiB idle, 32,444 KiB with the streams open.
        let v = rss_per_stream_kib(32_444, 14_740, 1000).unwrap();
        assert!((v - 17.704).abs() < 1e-9, "{v}");
        assert_eq!(rss_per_stream_kib(20_000, 10_000, 10_000), Some(1.0));
        assert_eq!(rss_per_stream_kib(9_000, 10_000, 1000), Some(-1.0));
        assert_eq!(rss_per_stream_kib(9_000, 1_000, 0), None);
    }
    use std::time::Duration;

    const LIMITS: NoiseLimits = NoiseLimits {
        foreign_max_pct: 10.0,
        steal_max_pct: 5.0,
    };

    #[test]
    fn median_odd_even_empty_nan() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN, 1.0, 5.0, 3.0]), Some(3.0));
    }

    #[test]
    fn ratio_needs_both_and_a_nonzero_reference() {
        assert_eq!(ratio(Some(15.0), Some(20.0)), Some(0.75));
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn foreign_load_and_steal_percentages() {
        // 10 s run, 100 ticks/s: the two cores were busy 1,250 ticks; proxy 900, upstream 200,
        // load 100 -> 50 ticks of someone else = 5 % of a core.
        let t = Ticks {
            cores_busy: 1250,
            proxy: 900,
            upstream: 200,
            load: 100,
            steal_proxy_cpu: 80,
            steal_load_cpu: 3,
        };
        assert!((foreign_pct(&t, 100, 10.0) - 5.0).abs() < 1e-9);
        assert!((steal_pct(&t, 100, 10.0) - 8.0).abs() < 1e-9);
        assert_eq!(foreign_pct(&t, 100, 0.0), 0.0);
        // Tick rounding can make it slightly negative; that is quiet.
        let q = Ticks {
            cores_busy: 99,
            proxy: 100,
            ..Ticks::default()
        };
        assert!(foreign_pct(&q, 100, 10.0) < 0.0);
    }

    #[test]
    fn classify_orders_failures_before_noise() {
        assert_eq!(classify(1000, 0, 2.0, 0.5, LIMITS), RunStatus::Ok);
        assert_eq!(
            classify(1000, 0, 10.0, 5.0, LIMITS),
            RunStatus::Ok,
            "limits are inclusive"
        );
        assert_eq!(classify(1000, 0, 10.1, 0.0, LIMITS), RunStatus::Noisy);
        assert_eq!(classify(1000, 0, 0.0, 5.1, LIMITS), RunStatus::Noisy);
        assert_eq!(classify(1000, 3, 50.0, 50.0, LIMITS), RunStatus::Errors);
        assert_eq!(classify(0, 0, 0.0, 0.0, LIMITS), RunStatus::NoRequests);
    }

    #[test]
    fn noise_reasons_name_what_went_past_its_limit() {
        assert_eq!(
            noise_reason(12.0, 1.0, LIMITS),
            "other processes used 12.0% of a core on the two cores (limit 10%)"
        );
        assert_eq!(
            noise_reason(-5.0, 42.6, LIMITS),
            "the hypervisor stole 42.6% of the proxy core (limit 5%)"
        );
        assert!(noise_reason(50.0, 50.0, LIMITS).contains("; the hypervisor"));
    }

    #[test]
    fn cpu_per_request() {
        // 150 ticks at 100/s = 1.5 s over 100,000 requests = 15 µs.
        assert!((cpu_us_per(150, 100, 100_000).unwrap() - 15.0).abs() < 1e-9);
        assert_eq!(cpu_us_per(150, 100, 0), None);
    }

    fn figs(rps: f64, cpu: f64) -> BTreeMap<Metric, f64> {
        BTreeMap::from([(Metric::Rps, rps), (Metric::CpuUsPerReq, cpu)])
    }

    #[test]
    fn summarize_takes_medians_of_ok_runs_and_ratios_to_nginx() {
        let f = [
            figs(50_000.0, 18.0),
            figs(52_000.0, 17.0),
            figs(10.0, 99.0),
            figs(51_000.0, 19.0),
        ];
        let g = [
            figs(58_000.0, 15.0),
            figs(57_000.0, 14.0),
            figs(59_000.0, 16.0),
        ];
        let runs = vec![
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Ok,
                figures: &f[0],
            },
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Ok,
                figures: &f[1],
            },
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Noisy,
                figures: &f[2],
            },
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Ok,
                figures: &f[3],
            },
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Ok,
                figures: &g[0],
            },
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Ok,
                figures: &g[1],
            },
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Ok,
                figures: &g[2],
            },
        ];
        let s = summarize(&["shardgate", "nginx", "haproxy"], &runs, "nginx");
        assert_eq!(s.len(), 3);
        assert_eq!(
            (s[0].proxy.as_str(), s[0].runs_ok, s[0].runs_total),
            ("shardgate", 3, 3)
        );
        assert_eq!(s[1].runs_ok, 3);
        assert_eq!(s[1].runs_total, 4);
        assert_eq!(
            s[1].median[&Metric::CpuUsPerReq],
            18.0,
            "the noisy 99 is left out"
        );
        assert_eq!(s[1].cpu_us_per_req_min, Some(17.0));
        assert_eq!(s[1].cpu_us_per_req_max, Some(19.0));
        assert!((s[0].ratio_to_nginx[&Metric::CpuUsPerReq] - 15.0 / 18.0).abs() < 1e-12);
        assert!((s[0].ratio_to_nginx[&Metric::Rps] - 58_000.0 / 51_000.0).abs() < 1e-12);
        assert_eq!(s[1].ratio_to_nginx[&Metric::Rps], 1.0);
        // haproxy never ran: an empty row, no ratios.
        assert_eq!((s[2].runs_ok, s[2].runs_total), (0, 0));
        assert!(s[2].median.is_empty() && s[2].ratio_to_nginx.is_empty());
    }

    #[test]
    fn summarize_without_nginx_has_no_ratios() {
        let g = [figs(58_000.0, 15.0)];
        let runs = vec![RunFigures {
            proxy: "shardgate",
            status: RunStatus::Ok,
            figures: &g[0],
        }];
        let s = summarize(&["shardgate"], &runs, "nginx");
        assert!(s[0].ratio_to_nginx.is_empty());
    }

    #[test]
    fn open_loop_rate_prefers_nginx_then_the_first_measured_then_noisy_runs() {
        let g = [
            figs(60_000.0, 15.0),
            figs(50_001.0, 18.0),
            figs(40_000.0, 20.0),
        ];
        let runs = vec![
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Ok,
                figures: &g[0],
            },
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Ok,
                figures: &g[1],
            },
            RunFigures {
                proxy: "haproxy",
                status: RunStatus::Noisy,
                figures: &g[2],
            },
        ];
        let order = ["shardgate", "haproxy", "nginx"];
        let r = open_loop_rate(&runs, &order, "nginx", 50.0).unwrap();
        assert_eq!(
            r,
            OpenLoopRate {
                rps: 25_001.0,
                of: "nginx".into(),
                from_noisy: false
            }
        );
        let r = open_loop_rate(&runs[..1], &order, "nginx", 50.0).unwrap();
        assert_eq!((r.rps, r.of.as_str()), (30_000.0, "shardgate"));
        // Only noisy runs: used, and said so.
        let r = open_loop_rate(&runs[2..], &order, "nginx", 50.0).unwrap();
        assert_eq!(
            r,
            OpenLoopRate {
                rps: 20_000.0,
                of: "haproxy".into(),
                from_noisy: true
            }
        );
        let failed = [RunFigures {
            proxy: "nginx",
            status: RunStatus::Errors,
            figures: &g[1],
        }];
        assert_eq!(open_loop_rate(&failed, &order, "nginx", 50.0), None);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("100000m").is_err());
        assert_eq!(duration_arg(Duration::from_secs(5)), "5s");
        assert_eq!(duration_arg(Duration::from_millis(1500)), "1500ms");
    }
}
