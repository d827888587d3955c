//! The sweep's plan and the recommendation, I/O-free: which core sets to measure, where the load
//! runs, and which measured point to recommend.
//!
//! # Core-set variants
//! Each variant is an order in which shards take CPUs; a point with K shards uses the variant's
//! first K CPUs (sorted, since the engine pins shard *i* to the *i*-th CPU it may use).
//! - `all`: every usable CPU in id order: what `[server] cores = K` does without a tuning file.
//! - `no-smt`: one hardware thread per physical core (the first of each sibling set); only when
//!   some CPU has SMT siblings.
//! - `leave-cpuN`: every usable CPU but the first one (N, usually 0) and its SMT siblings, which
//!   are left to NIC interrupts and the rest of the system; only with more than one core.
//!
//! A core set two variants share (K = 1 of `all` and `no-smt`) is measured once.
//!
//! # Where the load runs
//! The mock upstream and the load generator run on the usable CPUs the engine does not use; when
//! the engine uses them all, they share its CPUs (the point is marked `shared`: its throughput
//! understates what remote clients would get, its CPU per request stays comparable).
//! `--load-cores` puts them on a fixed set instead.
//!
//! # The recommendation rule
//! Among the points that ran without error: let `best_rps` be the highest throughput and
//! `best_p99` the lowest p99. The candidates are the points with `rps >= 0.95 * best_rps` and
//! `p99 <= 1.2 * best_p99`; the recommendation is the candidate with the fewest shards (ties: the
//! higher throughput, then the lower CPU per request). If no point meets both bounds (the fastest
//! points all have a bad tail), the p99 bound is dropped and the rule says so.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// Within this fraction of the best throughput counts as "as fast".
pub const RPS_WITHIN: f64 = 0.05;
/// A p99 up to this multiple of the best p99 counts as "as good".
pub const P99_FACTOR: f64 = 1.2;

/// One order in which shards take CPUs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Variant {
    pub name: String,
    /// CPU ids, in the order shards take them.
    pub order: Vec<usize>,
}

/// The variants for these usable CPUs (sorted) and SMT sibling sets (see the module docs).
pub fn variants(usable: &[usize], siblings: &BTreeMap<usize, Vec<usize>>) -> Vec<Variant> {
    let mut usable = usable.to_vec();
    usable.sort_unstable();
    usable.dedup();
    let mut out = vec![Variant {
        name: "all".to_owned(),
        order: usable.clone(),
    }];
    let sibs = |c: usize| -> Vec<usize> { siblings.get(&c).cloned().unwrap_or_else(|| vec![c]) };
    let mut taken: BTreeSet<usize> = BTreeSet::new();
    let mut no_smt = Vec::new();
    for &c in &usable {
        if taken.contains(&c) {
            continue;
        }
        no_smt.push(c);
        taken.extend(sibs(c));
        taken.insert(c);
    }
    if no_smt.len() < usable.len() {
        out.push(Variant {
            name: "no-smt".to_owned(),
            order: no_smt.clone(),
        });
    }
    if let Some(&first) = usable.first() {
        // More than one physical core: something is left after sparing the first.
        if no_smt.len() > 1 {
            let spare: BTreeSet<usize> = sibs(first).into_iter().chain([first]).collect();
            let rest: Vec<usize> = usable
                .iter()
                .copied()
                .filter(|c| !spare.contains(c))
                .collect();
            if !rest.is_empty() {
                out.push(Variant {
                    name: format!("leave-cpu{first}"),
                    order: rest,
                });
            }
        }
    }
    out
}

/// Shard counts to measure for a variant of `len` CPUs: every count, or with `quick` the
/// powers of two and `len` itself; none above `max`.
pub fn shard_counts(len: usize, quick: bool, max: Option<usize>) -> Vec<usize> {
    let top = max.map_or(len, |m| m.min(len));
    let mut v: Vec<usize> = if quick {
        let mut v: Vec<usize> = std::iter::successors(Some(1usize), |k| k.checked_mul(2))
            .take_while(|&k| k <= top)
            .collect();
        v.push(top);
        v
    } else {
        (1..=top).collect()
    };
    v.sort_unstable();
    v.dedup();
    v.retain(|&k| k >= 1);
    v
}

/// One engine run to measure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    /// The engine's CPUs, sorted (shard *i* on the *i*-th).
    pub cores: Vec<usize>,
    /// Where the mock upstream and the load generator run.
    pub load_cores: Vec<usize>,
    /// The load shares CPUs with the engine.
    pub shared: bool,
    /// The variants this core set belongs to (the first one names it).
    pub variants: Vec<String>,
}

impl Run {
    pub fn shards(&self) -> usize {
        self.cores.len()
    }
}

/// Every run, each core set once, in variant order then shard count.
pub fn plan(
    variants: &[Variant],
    usable: &[usize],
    quick: bool,
    max_shards: Option<usize>,
    load_override: Option<&[usize]>,
) -> Vec<Run> {
    let mut runs: Vec<Run> = Vec::new();
    for v in variants {
        for k in shard_counts(v.order.len(), quick, max_shards) {
            let mut cores = v.order[..k].to_vec();
            cores.sort_unstable();
            if let Some(r) = runs.iter_mut().find(|r| r.cores == cores) {
                r.variants.push(v.name.clone());
                continue;
            }
            let load_cores: Vec<usize> = match load_override {
                Some(l) => l.to_vec(),
                None => {
                    let rest: Vec<usize> = usable
                        .iter()
                        .copied()
                        .filter(|c| !cores.contains(c))
                        .collect();
                    if rest.is_empty() {
                        usable.to_vec()
                    } else {
                        rest
                    }
                }
            };
            let shared = load_cores.iter().any(|c| cores.contains(c));
            runs.push(Run {
                cores,
                load_cores,
                shared,
                variants: vec![v.name.clone()],
            });
        }
    }
    runs
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Measured {
    /// 2xx answers per second in the measured window.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Engine CPU time (utime + stime) per request, microseconds.
    pub cpu_us_per_request: f64,
    /// 2xx answers counted.
    pub requests: u64,
    /// Non-2xx answers, timeouts, connect/read/write errors.
    pub errors: u64,
    /// The driver the shards reported (`None`: not seen in the log).
    pub driver: Option<shardgate_tune::Driver>,
    /// Rounds that measured this point (the figures above are their medians).
    pub rounds: usize,
    /// Each round's requests/s, in round order: how noisy the point was.
    pub rps_samples: Vec<f64>,
}

/// The median of `v` (the mean of the middle two for an even count); `NaN` when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// How far apart a point's rounds were: (max - min) / median; 0 for fewer than two.
pub fn spread(v: &[f64]) -> f64 {
    let m = median(v);
    if v.len() < 2 || m.is_nan() || m <= 0.0 {
        return 0.0;
    }
    let max = v.iter().copied().fold(f64::MIN, f64::max);
    let min = v.iter().copied().fold(f64::MAX, f64::min);
    (max - min) / m
}

/// Spread above which the report calls the sweep noisy.
pub const NOISY_SPREAD: f64 = 0.25;

/// One point's rounds combined: each figure the median over the rounds, counts summed.
pub fn combine(rounds: &[Measured]) -> Option<Measured> {
    let first = rounds.first()?;
    let m = |f: fn(&Measured) -> f64| median(&rounds.iter().map(f).collect::<Vec<_>>());
    Some(Measured {
        rps: m(|r| r.rps),
        p50_ms: m(|r| r.p50_ms),
        p99_ms: m(|r| r.p99_ms),
        cpu_us_per_request: m(|r| r.cpu_us_per_request),
        requests: rounds.iter().map(|r| r.requests).sum(),
        errors: rounds.iter().map(|r| r.errors).sum(),
        driver: first.driver,
        rounds: rounds.iter().map(|r| r.rounds).sum(),
        rps_samples: rounds.iter().flat_map(|r| r.rps_samples.clone()).collect(),
    })
}

/// A run and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Point {
    #[serde(flatten)]
    pub run: Run,
    pub shards: usize,
    /// The medians over its rounds, or why it has no numbers.
    #[serde(flatten)]
    pub outcome: Outcome,
    /// Why some rounds failed (the others still count).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub round_errors: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Measured(Measured),
    Failed { error: String },
}

impl Point {
    pub fn measured(&self) -> Option<&Measured> {
        match &self.outcome {
            Outcome::Measured(m) if m.rps > 0.0 && m.p99_ms.is_finite() => Some(m),
            _ => None,
        }
    }
}

/// The recommended point and how it was chosen.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    /// Index into the points.
    pub index: usize,
    pub best_rps: f64,
    pub best_p99_ms: f64,
    /// Which rule picked it.
    pub rule: String,
}

/// The recommendation rule of the module docs.
pub fn recommend(points: &[Point]) -> Option<Recommendation> {
    let ok: Vec<(usize, &Measured)> = points
        .iter()
        .enumerate()
        .filter_map(|(i, p)| Some((i, p.measured()?)))
        .collect();
    let best_rps = ok.iter().map(|(_, m)| m.rps).fold(f64::NAN, f64::max);
    let best_p99 = ok.iter().map(|(_, m)| m.p99_ms).fold(f64::NAN, f64::min);
    if ok.is_empty() {
        return None;
    }
    let fast = |m: &Measured| m.rps >= (1.0 - RPS_WITHIN) * best_rps;
    let good = |m: &Measured| m.p99_ms <= P99_FACTOR * best_p99;
    let pick = |both: bool| {
        ok.iter()
            .filter(|(_, m)| fast(m) && (!both || good(m)))
            .min_by(|(i, a), (j, b)| {
                points[*i]
                    .shards
                    .cmp(&points[*j].shards)
                    .then(b.rps.total_cmp(&a.rps))
                    .then(a.cpu_us_per_request.total_cmp(&b.cpu_us_per_request))
            })
            .map(|(i, _)| *i)
    };
    let pct = RPS_WITHIN * 100.0;
    if let Some(index) = pick(true) {
        return Some(Recommendation {
            index,
            best_rps,
            best_p99_ms: best_p99,
            rule: format!(
                "fewest shards within {pct:.0}% of the best throughput ({best_rps:.0} req/s) with \
                 a p99 at most {P99_FACTOR}x the best p99 ({best_p99:.3} ms)"
            ),
        });
    }
    pick(false).map(|index| Recommendation {
        index,
        best_rps,
        best_p99_ms: best_p99,
        rule: format!(
            "fewest shards within {pct:.0}% of the best throughput ({best_rps:.0} req/s); no such \
             point had a p99 within {P99_FACTOR}x the best p99 ({best_p99:.3} ms), so the p99 \
             bound was dropped"
        ),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn sib(pairs: &[(usize, &[usize])]) -> BTreeMap<usize, Vec<usize>> {
        pairs.iter().map(|(c, s)| (*c, s.to_vec())).collect()
    }

    #[test]
    fn variants_of_a_two_cpu_vm() {
        let v = variants(&[0, 1], &sib(&[(0, &[0]), (1, &[1])]));
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["all", "leave-cpu0"]);
        assert_eq!(v[1].order, vec![1]);
        let runs = plan(&v, &[0, 1], true, None, None);
        // all: [0], [0,1]; leave-cpu0: [1].
        assert_eq!(runs.len(), 3);
        assert_eq!(runs[0].cores, vec![0]);
        assert_eq!(runs[0].load_cores, vec![1]);
        assert!(!runs[0].shared);
        assert_eq!(runs[1].cores, vec![0, 1]);
        assert!(runs[1].shared);
        assert_eq!(runs[2].cores, vec![1]);
        assert_eq!(runs[2].load_cores, vec![0]);
    }

    #[test]
    fn variants_with_smt() {
        // 4 CPUs, siblings 0/2 and 1/3 (Intel numbering).
        let s = sib(&[(0, &[0, 2]), (1, &[1, 3]), (2, &[0, 2]), (3, &[1, 3])]);
        let v = variants(&[0, 1, 2, 3], &s);
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["all", "no-smt", "leave-cpu0"]);
        assert_eq!(v[1].order, vec![0, 1]);
        assert_eq!(v[2].order, vec![1, 3]);
        let runs = plan(&v, &[0, 1, 2, 3], false, None, None);
        let sets: Vec<Vec<usize>> = runs.iter().map(|r| r.cores.clone()).collect();
        // [0] and [0,1] are shared by all and no-smt.
        assert_eq!(
            sets,
            vec![
                vec![0],
                vec![0, 1],
                vec![0, 1, 2],
                vec![0, 1, 2, 3],
                vec![1],
                vec![1, 3]
            ]
        );
        assert_eq!(runs[1].variants, ["all", "no-smt"]);
        // One CPU: only `all`.
        assert_eq!(variants(&[3], &BTreeMap::new()).len(), 1);
        // One physical core with two threads: no leave-cpu variant.
        let v = variants(&[0, 1], &sib(&[(0, &[0, 1]), (1, &[0, 1])]));
        let names: Vec<&str> = v.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["all", "no-smt"]);
    }

    #[test]
    fn quick_counts_and_caps() {
        assert_eq!(shard_counts(2, true, None), [1, 2]);
        assert_eq!(shard_counts(12, true, None), [1, 2, 4, 8, 12]);
        assert_eq!(shard_counts(12, true, Some(5)), [1, 2, 4, 5]);
        assert_eq!(shard_counts(3, false, None), [1, 2, 3]);
        assert_eq!(shard_counts(0, false, None), Vec::<usize>::new());
        let runs = plan(
            &variants(&[0, 1, 2], &BTreeMap::new()),
            &[0, 1, 2],
            false,
            None,
            Some(&[7]),
        );
        assert!(runs.iter().all(|r| r.load_cores == [7] && !r.shared));
    }

    fn point(shards: usize, rps: f64, p99: f64, cpu: f64) -> Point {
        Point {
            run: Run {
                cores: (0..shards).collect(),
                load_cores: vec![],
                shared: false,
                variants: vec!["all".into()],
            },
            shards,
            outcome: Outcome::Measured(Measured {
                rps,
                p50_ms: p99 / 2.0,
                p99_ms: p99,
                cpu_us_per_request: cpu,
                requests: 1,
                errors: 0,
                driver: None,
                rounds: 1,
                rps_samples: vec![rps],
            }),
            round_errors: vec![],
        }
    }

    #[test]
    fn the_knee_is_the_smallest_count_near_the_best() {
        let pts = vec![
            point(1, 50_000.0, 2.0, 20.0),
            point(2, 96_000.0, 1.1, 20.0),
            point(3, 99_000.0, 1.0, 21.0),
            point(4, 100_000.0, 1.0, 22.0),
        ];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.index, 1);
        assert!(r.rule.starts_with("fewest shards within 5%"), "{}", r.rule);
        // 2 shards' p99 over 1.2x the best: 3 shards.
        let mut pts2 = pts.clone();
        pts2[1] = point(2, 96_000.0, 1.3, 20.0);
        assert_eq!(recommend(&pts2).unwrap().index, 2);
        // Same shard count: the faster one.
        let mut pts3 = pts.clone();
        pts3.push(point(2, 97_000.0, 1.0, 25.0));
        assert_eq!(recommend(&pts3).unwrap().index, 4);
    }

    #[test]
    fn rounds_combine_by_median() {
        let r = |rps: f64, p99: f64| match point(1, rps, p99, rps / 1000.0).outcome {
            Outcome::Measured(m) => m,
            Outcome::Failed { .. } => unreachable!(),
        };
        let c = combine(&[r(10.0, 3.0), r(30.0, 1.0), r(20.0, 2.0)]).unwrap();
        assert!((c.rps - 20.0).abs() < 1e-12);
        assert!((c.p99_ms - 2.0).abs() < 1e-12);
        assert!((c.cpu_us_per_request - 0.02).abs() < 1e-12);
        assert_eq!(c.rounds, 3);
        assert_eq!(c.requests, 3);
        assert_eq!(c.rps_samples, [10.0, 30.0, 20.0]);
        assert!((median(&[1.0, 4.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).is_nan());
        assert!((spread(&[10.0, 30.0, 20.0]) - 1.0).abs() < 1e-12);
        assert!(spread(&[5.0]).abs() < 1e-12);
        assert!(combine(&[]).is_none());
    }

    #[test]
    fn fallbacks_and_failures() {
        // The only fast point has a bad tail; the low-p99 point is slow.
        let pts = vec![point(1, 10_000.0, 1.0, 20.0), point(2, 20_000.0, 5.0, 20.0)];
        let r = recommend(&pts).unwrap();
        assert_eq!(r.index, 1);
        assert!(r.rule.contains("dropped"), "{}", r.rule);
        let failed = Point {
            outcome: Outcome::Failed { error: "x".into() },
            ..point(1, 0.0, 0.0, 0.0)
        };
        assert!(recommend(std::slice::from_ref(&failed)).is_none());
        assert!(recommend(&[]).is_none());
        assert_eq!(
            recommend(&[failed, point(3, 1.0, 1.0, 1.0)]).unwrap().index,
            1
        );
    }
}
