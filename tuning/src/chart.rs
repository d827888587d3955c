//! The sweep as an SVG chart, drawn by hand (no dependency): throughput (top panel) and p99
//! (bottom panel) against the shard count, one line per core-set variant, the recommended point
//! ringed in red. Hollow markers are points whose load generator shared the engine's CPUs.

use std::fmt::Write as _;

/// One variant's measured points.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    /// (shards, requests/s, p99 ms, load shared the engine's CPUs), by shard count.
    pub points: Vec<(usize, f64, f64, bool)>,
}

/// The recommended point.
#[derive(Debug, Clone, PartialEq)]
pub struct Marked {
    pub shards: usize,
    pub rps: f64,
    pub p99_ms: f64,
    pub label: String,
}

/// Axis titles (the test and the docs look for them).
pub const X_TITLE: &str = "shards";
pub const RPS_TITLE: &str = "throughput (requests/s)";
pub const P99_TITLE: &str = "p99 latency (ms)";

const W: f64 = 820.0;
const H: f64 = 600.0;
const LEFT: f64 = 90.0;
const RIGHT: f64 = 640.0;
const PANELS: [(f64, f64); 2] = [(60.0, 260.0), (325.0, 525.0)];
const COLORS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
];

/// Escape text for SVG content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The smallest "nice" number (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a power of ten) at or
/// above `v` (> 0): the top of an axis with five grid steps.
pub fn nice_ceil(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * p >= v * (1.0 - 1e-9) {
            return m * p;
        }
    }
    10.0 * p
}

/// A tick label: `12.5k`, `1.2M`, `0.25`.
pub fn tick_label(v: f64) -> String {
    let trim = |s: String| -> String {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            s
        }
    };
    if v >= 1e6 {
        format!("{}M", trim(format!("{:.2}", v / 1e6)))
    } else if v >= 1e3 {
        format!("{}k", trim(format!("{:.2}", v / 1e3)))
    } else {
        trim(format!("{v:.3}"))
    }
}

/// The x ticks: every shard count up to 16, else about 10 evenly spaced.
fn x_ticks(max: usize) -> Vec<usize> {
    if max <= 16 {
        return (1..=max).collect();
    }
    let step = max.div_ceil(10);
    let mut v: Vec<usize> = std::iter::once(1)
        .chain((step..=max).step_by(step))
        .collect();
    if v.last() != Some(&max) {
        v.push(max);
    }
    v
}

/// The whole chart.
pub fn render(title: &str, series: &[Series], marked: Option<&Marked>, note: &str) -> String {
    let max_shards = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .max()
        .unwrap_or(1)
        .max(2);
    let max_rps = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0, f64::max);
    let max_p99 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.2))
        .fold(0.0, f64::max);
    let x = |k: usize| LEFT + (RIGHT - LEFT) * (k as f64 - 1.0) / (max_shards as f64 - 1.0);

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="28" font-size="15" font-weight="bold" text-anchor="middle">{}</text>"#,
        (LEFT + RIGHT) / 2.0,
        escape(title)
    );
    for (panel, (top, bottom)) in PANELS.iter().enumerate() {
        let (ymax, ytitle) = if panel == 0 {
            (nice_ceil(max_rps * 1.1), RPS_TITLE)
        } else {
            (nice_ceil(max_p99 * 1.1), P99_TITLE)
        };
        let y = |v: f64| bottom - (bottom - top) * (v / ymax);
        // Frame, grid and ticks.
        let _ = writeln!(
            o,
            r##"<rect x="{LEFT}" y="{top}" width="{}" height="{}" fill="none" stroke="#333"/>"##,
            RIGHT - LEFT,
            bottom - top
        );
        for i in 0..=5 {
            let v = ymax * f64::from(i) / 5.0;
            let yy = y(v);
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{RIGHT}" y2="{yy:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT - 6.0,
                yy + 4.0,
                tick_label(v)
            );
        }
        for k in x_ticks(max_shards) {
            let xx = x(k);
            let _ = writeln!(
                o,
                r##"<line x1="{xx:.1}" y1="{bottom}" x2="{xx:.1}" y2="{}" stroke="#333"/><text x="{xx:.1}" y="{}" text-anchor="middle">{k}</text>"##,
                bottom + 5.0,
                bottom + 18.0
            );
        }
        // Axis titles.
        let _ = writeln!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle">{X_TITLE}</text>"#,
            (LEFT + RIGHT) / 2.0,
            bottom + 34.0
        );
        let mid = (top + bottom) / 2.0;
        let _ = writeln!(
            o,
            r#"<text x="24" y="{mid}" text-anchor="middle" transform="rotate(-90 24 {mid})">{}</text>"#,
            escape(ytitle)
        );
        // One polyline and its markers per variant.
        for (si, s) in series.iter().enumerate() {
            let color = COLORS[si % COLORS.len()];
            let pts: Vec<String> = s
                .points
                .iter()
                .map(|p| {
                    let v = if panel == 0 { p.1 } else { p.2 };
                    format!("{:.1},{:.1}", x(p.0), y(v))
                })
                .collect();
            let _ = writeln!(
                o,
                r#"<polyline class="variant" data-variant="{}" fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                escape(&s.name),
                pts.join(" ")
            );
            for p in &s.points {
                let v = if panel == 0 { p.1 } else { p.2 };
                let fill = if p.3 { "white" } else { color };
                let _ = writeln!(
                    o,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="4" fill="{fill}" stroke="{color}" stroke-width="1.5"/>"#,
                    x(p.0),
                    y(v)
                );
            }
        }
        if let Some(m) = marked {
            let v = if panel == 0 { m.rps } else { m.p99_ms };
            let _ = writeln!(
                o,
                r#"<circle class="recommended" cx="{:.1}" cy="{:.1}" r="9" fill="none" stroke="red" stroke-width="2.5"/>"#,
                x(m.shards),
                y(v)
            );
        }
    }
    // Legend.
    let lx = RIGHT + 20.0;
    let _ = writeln!(
        o,
        r#"<text x="{lx}" y="{}" font-weight="bold">core sets</text>"#,
        PANELS[0].0 + 10.0
    );
    for (si, s) in series.iter().enumerate() {
        let color = COLORS[si % COLORS.len()];
        let ly = PANELS[0].0 + 30.0 + 20.0 * si as f64;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{color}" stroke-width="2"/><text x="{}" y="{}">{}</text>"#,
            lx + 24.0,
            lx + 30.0,
            ly + 4.0,
            escape(&s.name)
        );
    }
    let ly = PANELS[0].0 + 40.0 + 20.0 * series.len() as f64;
    if let Some(m) = marked {
        let _ = writeln!(
            o,
            r#"<circle cx="{}" cy="{ly}" r="7" fill="none" stroke="red" stroke-width="2.5"/><text x="{}" y="{}">recommended</text>"#,
            lx + 12.0,
            lx + 30.0,
            ly + 4.0
        );
        for (i, line) in m.label.split('\n').enumerate() {
            let _ = writeln!(
                o,
                r#"<text x="{lx}" y="{}" font-size="11">{}</text>"#,
                ly + 24.0 + 14.0 * i as f64,
                escape(line)
            );
        }
    }
    let _ = writeln!(
        o,
        r#"<text x="{lx}" y="{}" font-size="11">hollow: load shared</text><text x="{lx}" y="{}" font-size="11">the engine's CPUs</text>"#,
        PANELS[1].0 + 10.0,
        PANELS[1].0 + 24.0
    );
    let lines: Vec<&str> = note.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            o,
            r##"<text x="{LEFT}" y="{}" font-size="11" fill="#555">{}</text>"##,
            H - 10.0 - 14.0 * (lines.len() - 1 - i) as f64,
            escape(line)
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    #[test]
    fn nice_numbers_and_labels() {
        assert!((nice_ceil(0.9) - 1.0).abs() < 1e-12);
        assert!((nice_ceil(1.3) - 1.5).abs() < 1e-12);
        assert!((nice_ceil(2.2) - 2.5).abs() < 1e-12);
        assert!((nice_ceil(29_658.0) - 30_000.0).abs() < 1e-6);
        assert!((nice_ceil(8_100.0) - 10_000.0).abs() < 1e-6);
        assert!((nice_ceil(0.0) - 1.0).abs() < 1e-12);
        assert_eq!(tick_label(12_500.0), "12.5k");
        assert_eq!(tick_label(2_000_000.0), "2M");
        assert_eq!(tick_label(0.25), "0.25");
        assert_eq!(tick_label(0.0), "0");
        assert_eq!(x_ticks(3), [1, 2, 3]);
        assert_eq!(x_ticks(64), [1, 7, 14, 21, 28, 35, 42, 49, 56, 63, 64]);
    }

    #[test]
    fn chart_has_a_line_per_variant_axis_titles_and_the_mark() {
        let series = vec![
            Series {
                name: "all".into(),
                points: vec![(1, 10_000.0, 1.5, false), (2, 15_000.0, 1.2, true)],
            },
            Series {
                name: "leave-cpu0 <&>".into(),
                points: vec![(1, 9_000.0, 1.6, false)],
            },
        ];
        let m = Marked {
            shards: 2,
            rps: 15_000.0,
            p99_ms: 1.2,
            label: "2 shards\ncores 0,1".into(),
        };
        let svg = render("sweep on \"h\"", &series, Some(&m), "note");
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        // Two panels x two variants.
        assert_eq!(svg.matches("<polyline").count(), 4);
        assert_eq!(svg.matches(r#"class="recommended""#).count(), 2);
        for t in [X_TITLE, RPS_TITLE, P99_TITLE] {
            assert!(svg.contains(&format!(">{}</text>", escape(t))), "{t}");
        }
        assert!(svg.contains("leave-cpu0 &lt;&amp;&gt;"));
        assert!(svg.contains("sweep on &quot;h&quot;"));
        assert!(!svg.contains("NaN"));
        // Balanced tags: every element is self-closed or closed.
        let opens = svg.matches("<text").count();
        assert_eq!(opens, svg.matches("</text>").count());
        // No data: still a valid chart.
        let empty = render("t", &[], None, "");
        assert!(empty.starts_with("<svg ") && !empty.contains("NaN"));
    }
}
