//! A progress bar for long work: done/total, rate, ETA and free-form fields, redrawn in place on a
//! terminal and printed as plain lines (every few percent) when stderr is a file or a pipe.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    label: String,
    total: usize,
    start: Instant,
    tty: bool,
    last_line: Instant,
    last_pct: usize,
}

pub fn fmt_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else {
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

impl Progress {
    pub fn new(label: &str, total: usize) -> Self {
        Progress {
            label: label.to_string(),
            total: total.max(1),
            start: Instant::now(),
            tty: std::io::stderr().is_terminal(),
            last_line: Instant::now(),
            last_pct: 0,
        }
    }

    /// `done` units finished out of the total; `fields` is shown after the rate.
    pub fn update(&mut self, done: usize, unit: &str, fields: &str) {
        let el = self.start.elapsed().as_secs_f64();
        let rate = done as f64 / el.max(1e-9);
        let eta = (self.total - done.min(self.total)) as f64 / rate.max(1e-12);
        let pct = 100 * done.min(self.total) / self.total;
        let width = 24;
        let filled = width * done.min(self.total) / self.total;
        let bar: String = (0..width)
            .map(|i| if i < filled { '#' } else { '.' })
            .collect();
        let line = format!(
            "{} [{bar}] {done}/{} {pct:>3}% | {rate:.2} {unit}/s | {fields} | elapsed {} ETA {}",
            self.label,
            self.total,
            fmt_duration(el),
            fmt_duration(eta)
        );
        let mut err = std::io::stderr();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
            let _ = err.flush();
        } else if pct >= self.last_pct + 5
            || self.last_line.elapsed().as_secs() >= 15
            || done >= self.total
        {
            let _ = writeln!(err, "{line}");
            self.last_pct = pct;
            self.last_line = Instant::now();
        }
    }

    pub fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
