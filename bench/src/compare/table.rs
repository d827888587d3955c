//! Rendering a scenario's summaries as one Markdown table (aligned, so it reads in a terminal and
//! pastes into docs/benchmarks.md). Each figure is followed by its ratio to nginx's median.

use super::stats::{Metric, ProxySummary};

/// One column of figures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Col {
    pub header: &'static str,
    pub metric: Metric,
    /// Multiplier from the stored unit to the shown one (µs -> ms: 0.001).
    pub scale: f64,
    pub decimals: usize,
    /// Show `(ratio)` after the figure.
    pub ratio: bool,
}

const fn col(header: &'static str, metric: Metric, scale: f64, decimals: usize) -> Col {
    Col {
        header,
        metric,
        scale,
        decimals,
        ratio: true,
    }
}

/// Columns for the request/response scenarios (`json`, `rate`).
pub const REQUEST_COLS: &[Col] = &[
    col("req/s", Metric::Rps, 1.0, 0),
    col("p50 ms", Metric::P50Us, 1e-3, 3),
    col("p99 ms", Metric::P99Us, 1e-3, 3),
    col("p99.9 ms", Metric::P999Us, 1e-3, 3),
    col("CPU µs/req", Metric::CpuUsPerReq, 1.0, 2),
    Col {
        ratio: false,
        ..col("proxy core %", Metric::ProxyCpuPct, 1.0, 1)
    },
    col("RSS MiB", Metric::RssMib, 1.0, 1),
];

/// Columns for the streaming scenario (`sse`): per stream. RSS: idle (before any load), with
/// the streams open (sampled mid-stream), and the growth per open stream.
pub const STREAM_COLS: &[Col] = &[
    col("streams/s", Metric::Rps, 1.0, 0),
    col("TTFB p50 ms", Metric::TtfbP50Us, 1e-3, 2),
    col("TTFB p90 ms", Metric::TtfbP90Us, 1e-3, 2),
    col("TTFB p99 ms", Metric::TtfbP99Us, 1e-3, 2),
    col("TTFE p50 ms", Metric::TtfeP50Us, 1e-3, 2),
    col("TTFE p90 ms", Metric::TtfeP90Us, 1e-3, 2),
    col("TTFE p99 ms", Metric::TtfeP99Us, 1e-3, 2),
    col("gap p99 ms", Metric::GapP99Us, 1e-3, 2),
    col("stream p99 ms", Metric::P99Us, 1e-3, 1),
    col("CPU µs/stream", Metric::CpuUsPerReq, 1.0, 2),
    Col {
        ratio: false,
        ..col("proxy core %", Metric::ProxyCpuPct, 1.0, 1)
    },
    Col {
        ratio: false,
        ..col("held", Metric::StreamsHeld, 1.0, 0)
    },
    Col {
        ratio: false,
        ..col("RSS idle MiB", Metric::RssIdleMib, 1.0, 1)
    },
    col("RSS open MiB", Metric::RssOpenMib, 1.0, 1),
    col("RSS KiB/stream", Metric::RssPerStreamKib, 1.0, 1),
];

/// A number with `decimals` places; whole numbers of 1,000 and more get thousands separators.
pub fn fmt_num(v: f64, decimals: usize) -> String {
    if !v.is_finite() {
        return "n/a".to_string();
    }
    let s = format!("{v:.decimals$}");
    if decimals > 0 || v.abs() < 1000.0 {
        return s;
    }
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    format!("{sign}{out}")
}

fn cell(s: &ProxySummary, c: &Col, with_ratio: bool) -> String {
    let Some(v) = s.median.get(&c.metric) else {
        return "-".to_string();
    };
    let mut text = fmt_num(v * c.scale, c.decimals);
    if c.ratio && with_ratio {
        match s.ratio_to_nginx.get(&c.metric) {
            Some(r) => text.push_str(&format!(" ({r:.2})")),
            None => text.push_str(" (n/a)"),
        }
    }
    text
}

/// The table: a header line `title`, then one row per summary. `with_ratio` adds `(ratio)` to
/// each figure (pass false when nginx has no ok run).
pub fn render(title: &str, cols: &[Col], summaries: &[ProxySummary], with_ratio: bool) -> String {
    let mut header: Vec<String> = vec!["proxy".into(), "runs ok".into()];
    header.extend(cols.iter().map(|c| c.header.to_string()));
    header.push("CPU min..max".into());
    let mut rows: Vec<Vec<String>> = vec![header];
    for s in summaries {
        let mut row = vec![s.proxy.clone(), format!("{}/{}", s.runs_ok, s.runs_total)];
        row.extend(cols.iter().map(|c| cell(s, c, with_ratio)));
        row.push(match (s.cpu_us_per_req_min, s.cpu_us_per_req_max) {
            (Some(lo), Some(hi)) => format!("{lo:.2}..{hi:.2}"),
            _ => "-".into(),
        });
        rows.push(row);
    }
    let ncol = rows[0].len();
    let width: Vec<usize> = (0..ncol)
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let line = |r: &[String]| -> String {
        let cells: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = width[i] - c.chars().count();
                // Text left, figures right.
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        format!("| {} |", cells.join(" | "))
    };
    let mut out = format!("{title}\n\n");
    out.push_str(&line(&rows[0]));
    out.push('\n');
    let rule: Vec<String> = width
        .iter()
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                "-".repeat(*w)
            } else {
                format!("{}:", "-".repeat(w.saturating_sub(1)))
            }
        })
        .collect();
    out.push_str(&format!("| {} |\n", rule.join(" | ")));
    for r in &rows[1..] {
        out.push_str(&line(r));
        out.push('\n');
    }
    if with_ratio {
        out.push_str("(x.xx) = ratio to nginx's median in this run; runs ok = runs in the medians / runs made\n");
    } else {
        out.push_str("no ratios: nginx has no ok run in this scenario\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::super::stats::{summarize, RunFigures, RunStatus};
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(58386.4, 0), "58,386");
        assert_eq!(fmt_num(1_234_567.0, 0), "1,234,567");
        assert_eq!(fmt_num(999.0, 0), "999");
        assert_eq!(fmt_num(-1234.0, 0), "-1,234");
        assert_eq!(fmt_num(14.987, 2), "14.99");
        assert_eq!(fmt_num(f64::NAN, 2), "n/a");
    }

    fn figures(rps: f64, p50: f64, cpu: f64, rss: f64) -> BTreeMap<Metric, f64> {
        BTreeMap::from([
            (Metric::Rps, rps),
            (Metric::P50Us, p50),
            (Metric::P99Us, p50 * 2.0),
            (Metric::P999Us, p50 * 3.0),
            (Metric::CpuUsPerReq, cpu),
            (Metric::ProxyCpuPct, 97.4),
            (Metric::RssMib, rss),
        ])
    }

    #[test]
    fn table_has_one_row_per_proxy_with_ratios() {
        let n = figures(52_324.0, 1050.0, 18.42, 13.0);
        let g = figures(58_386.0, 860.0, 14.99, 13.2);
        let runs = vec![
            RunFigures {
                proxy: "nginx",
                status: RunStatus::Ok,
                figures: &n,
            },
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Ok,
                figures: &g,
            },
            RunFigures {
                proxy: "shardgate",
                status: RunStatus::Noisy,
                figures: &n,
            },
        ];
        let s = summarize(&["shardgate", "nginx", "haproxy"], &runs, "nginx");
        let t = render("json: test", REQUEST_COLS, &s, true);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "json: test");
        assert!(lines[2].starts_with("| proxy "), "{t}");
        assert!(lines[3].starts_with("| --------- | ------: |"), "{t}");
        assert!(lines[4].contains("58,386 (1.12)"), "{t}");
        assert!(lines[4].contains("0.860 (0.82)"), "{t}");
        assert!(lines[4].contains("14.99 (0.81)"), "{t}");
        assert!(lines[4].contains("  1/2 |"), "{t}");
        assert!(lines[4].contains("97.4 |"), "core % has no ratio: {t}");
        assert!(lines[5].contains("52,324 (1.00)"), "{t}");
        assert!(
            lines[6].starts_with("| haproxy ") && lines[6].contains(" 0/0 |"),
            "{t}"
        );
        // Every row is as wide as the header.
        let w = lines[2].chars().count();
        assert!(lines[3..7].iter().all(|l| l.chars().count() == w), "{t}");
    }

    #[test]
    fn table_without_nginx_has_no_ratios() {
        let g = figures(58_386.0, 860.0, 14.99, 13.2);
        let runs = vec![RunFigures {
            proxy: "shardgate",
            status: RunStatus::Ok,
            figures: &g,
        }];
        let s = summarize(&["shardgate"], &runs, "nginx");
        let t = render("sse", STREAM_COLS, &s, false);
        assert!(!t.contains('('), "{t}");
        assert!(t.contains("no ratios"), "{t}");
        assert!(
            t.contains("| - |") || t.contains(" - |"),
            "missing TTFB shows '-': {t}"
        );
    }
}
