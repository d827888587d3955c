//! Plain-text tables and the number formats `status` and `top` share. Pure.

/// How a column lines up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// Columns separated by two spaces, each as wide as its widest cell; no trailing spaces.
pub fn render(header: &[(&str, Align)], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|(h, _)| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let heads: Vec<String> = header.iter().map(|(h, _)| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&heads).chain(rows) {
        let mut line = String::new();
        for (i, ((cell, width), (_, align))) in row.iter().zip(&widths).zip(header).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = width.saturating_sub(cell.chars().count());
            match align {
                Align::Left => {
                    line.push_str(cell);
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                Align::Right => {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(cell);
                }
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A per-second rate: one decimal below 100, whole numbers above.
pub fn rate(per_s: f64) -> String {
    if per_s < 100.0 {
        format!("{per_s:.1}")
    } else {
        format!("{per_s:.0}")
    }
}

/// Bytes (or bytes per second) in binary units: `512B`, `1.5K`, `3.2M`, `1.1G`.
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if n < 1024.0 {
        return format!("{n:.0}B");
    }
    let mut v = n / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1}{unit}")
}

/// A latency quantile from `SlotTotals::quantile_ms`: `-` with no requests, `>LAST` when past
/// the last bucket bound.
pub fn quantile(ms: Option<f64>, last_bound_ms: u64) -> String {
    match ms {
        None => "-".into(),
        Some(v) if v.is_infinite() => format!(">{last_bound_ms}"),
        Some(v) => format!("{v}"),
    }
}

/// A duration in whole seconds as `3d4h5m6s`, leading zero units left out.
pub fn uptime(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m{s}s"),
        _ => format!("{d}d{h}h{m}m{s}s"),
    }
}

/// `7`, or `5..7` when the shards differ.
pub fn version_span(min: u64, max: u64) -> String {
    if min == max {
        min.to_string()
    } else {
        format!("{min}..{max}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up() {
        let t = render(
            &[("name", Align::Left), ("n", Align::Right)],
            &[
                vec!["a".into(), "1000".into()],
                vec!["longer".into(), "7".into()],
            ],
        );
        assert_eq!(t, "name       n\na       1000\nlonger     7\n");
        // A last left-aligned column leaves no trailing spaces.
        let t = render(
            &[("n", Align::Right), ("note", Align::Left)],
            &[vec!["1".into(), "".into()], vec!["2".into(), "x".into()]],
        );
        assert_eq!(t, "n  note\n1\n2  x\n");
    }

    #[test]
    fn numbers() {
        assert_eq!(rate(0.0), "0.0");
        assert_eq!(rate(12.345), "12.3");
        assert_eq!(rate(1234.5), "1234");
        assert_eq!(bytes(0.0), "0B");
        assert_eq!(bytes(1023.0), "1023B");
        assert_eq!(bytes(1536.0), "1.5K");
        assert_eq!(bytes(3.0 * 1024.0 * 1024.0), "3.0M");
        assert_eq!(bytes(2.0 * 1024f64.powi(5)), "2048.0T");
        assert_eq!(quantile(None, 60_000), "-");
        assert_eq!(quantile(Some(25.0), 60_000), "25");
        assert_eq!(quantile(Some(f64::INFINITY), 60_000), ">60000");
        assert_eq!(uptime(999), "0s");
        assert_eq!(uptime(61_000), "1m1s");
        assert_eq!(uptime(3_600_000 * 5 + 7_000), "5h0m7s");
        assert_eq!(uptime(86_400_000 * 2 + 1000), "2d0h0m1s");
        assert_eq!(version_span(7, 7), "7");
        assert_eq!(version_span(5, 7), "5..7");
    }
}
