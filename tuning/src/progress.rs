//! The progress bar, on stderr: one line rewritten with `\r` when stderr is a terminal, one line
//! per point otherwise (logs, CI, a test's pipe). Plain text, no escape codes.

use std::io::Write as _;
use std::time::Instant;

/// Width of the bar, in characters.
const BAR: usize = 24;

#[derive(Debug)]
pub struct Progress {
    total: usize,
    live: bool,
    start: Instant,
    /// Length of the last live line, to blank what a shorter one leaves.
    last_len: usize,
}

/// `[#########---------------]`.
pub fn bar(done: usize, total: usize) -> String {
    let filled = (done * BAR).checked_div(total).unwrap_or(BAR).min(BAR);
    format!("[{}{}]", "#".repeat(filled), "-".repeat(BAR - filled))
}

impl Progress {
    pub fn new(total: usize, live: bool) -> Self {
        Self {
            total,
            live,
            start: Instant::now(),
            last_len: 0,
        }
    }

    fn live_line(&mut self, text: &str) {
        let pad = self.last_len.saturating_sub(text.chars().count());
        self.last_len = text.chars().count();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r{text}{}", " ".repeat(pad));
        let _ = err.flush();
    }

    /// Point `i` (0-based) starts.
    pub fn begin(&mut self, i: usize, label: &str) {
        if self.live {
            let line = format!(
                "{} {}/{} {label}: measuring ({:.0} s)",
                bar(i, self.total),
                i + 1,
                self.total,
                self.start.elapsed().as_secs_f64()
            );
            self.live_line(&line);
        }
    }

    /// Point `i` is done; `result` says what it measured.
    pub fn end(&mut self, i: usize, label: &str, result: &str) {
        let line = format!(
            "{} {}/{} {label}: {result}",
            bar(i + 1, self.total),
            i + 1,
            self.total
        );
        if self.live {
            self.live_line(&line);
        } else {
            eprintln!("shardgate-tune: {line}");
        }
    }

    /// The sweep is over.
    pub fn finish(&mut self) {
        let secs = self.start.elapsed().as_secs_f64();
        if self.live {
            let _ = writeln!(std::io::stderr());
        }
        eprintln!(
            "shardgate-tune: sweep done: {} points in {secs:.1} s",
            self.total
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars() {
        assert_eq!(bar(0, 4), format!("[{}]", "-".repeat(BAR)));
        assert_eq!(bar(2, 4), format!("[{}{}]", "#".repeat(12), "-".repeat(12)));
        assert_eq!(bar(4, 4), format!("[{}]", "#".repeat(BAR)));
        assert_eq!(bar(0, 0), format!("[{}]", "#".repeat(BAR)));
    }
}
