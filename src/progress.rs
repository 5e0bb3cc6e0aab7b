//! Progress of long work. In a terminal: a bar with rate and ETA. Elsewhere (a log file,
//! CI, `nohup`): a plain line every 5% or every 30 seconds, whichever comes first, so a log
//! always shows that the work is alive and how far it is. Both say which phase runs.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Seconds between plain progress lines at the latest.
const PLAIN_EVERY: Duration = Duration::from_secs(30);

pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// Plain lines when there is no bar (false: report nothing).
    lines: bool,
    plain: Mutex<Plain>,
}

struct Plain {
    /// What the work is part of (e.g. one run of an ablation), shown before the phase.
    label: String,
    phase: String,
    unit: &'static str,
    /// Counted steps per shown unit (see [`Progress::fine`]).
    per_unit: u64,
    pos: u64,
    len: u64,
    msg: String,
    start: Instant,
    last_line: Instant,
    last_twentieth: u64,
}

impl Progress {
    /// `len` units of work (`unit`, e.g. "steps") in the phase `phase` (e.g. "sampling").
    pub fn new(phase: &str, len: u64, unit: &'static str) -> Self {
        Self::fine(phase, len, unit, 1)
    }

    /// `len` steps of work counted `per_unit` to a shown `unit`: sampling counts every
    /// network call of every image (smooth percentages and ETA) and shows images, the whole
    /// ones' worth of calls done.
    pub fn fine(phase: &str, len: u64, unit: &'static str, per_unit: u64) -> Self {
        let per_unit = per_unit.max(1);
        let terminal = std::io::stderr().is_terminal();
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new(len);
            let style = indicatif::ProgressStyle::with_template(&format!(
                "{{prefix}} {{wide_bar}} {{count}} {unit} [{{elapsed_precise}} < {{eta_precise}}] {{msg}}"
            ))
            .expect("valid template")
            .with_key("count", move |s: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{}/{}", s.pos() / per_unit, s.len().unwrap_or(0) / per_unit);
            });
            bar.set_style(style);
            bar.set_prefix(phase.to_string());
            bar
        });
        Self { bar, lines: !terminal, plain: Mutex::new(Plain::new(phase, len, unit, per_unit)) }
    }

    /// Names what the work is part of, before every phase (e.g. "[3/14] slim, seed 1").
    pub fn with_label(self, label: &str) -> Self {
        let phase = {
            let mut p = self.plain.lock().expect("progress lock");
            p.label = format!("{label} ");
            p.phase.clone()
        };
        self.phase(&phase);
        self
    }

    /// Shows nothing (library callers that report no progress).
    pub fn hidden() -> Self {
        Self { bar: None, lines: false, plain: Mutex::new(Plain::new("", 0, "", 1)) }
    }

    pub fn inc(&self, n: u64) {
        let pos = self.plain.lock().expect("progress lock").pos + n;
        self.set_position(pos);
    }

    /// Moves to `pos` (a resumed run starts part-way); the ETA counts from here.
    pub fn set_position(&self, pos: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
        }
        let mut p = self.plain.lock().expect("progress lock");
        if pos < p.pos {
            p.last_twentieth = pos * 20 / p.len.max(1); // moved back: a new pass
        }
        p.pos = pos;
        if self.lines {
            p.maybe_print();
        }
    }

    pub fn set_length(&self, len: u64) {
        if let Some(bar) = &self.bar {
            bar.set_length(len);
        }
        self.plain.lock().expect("progress lock").len = len;
    }

    /// A short status after the counts (loss, images per second).
    pub fn set_message(&self, msg: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.clone());
        }
        self.plain.lock().expect("progress lock").msg = msg;
    }

    /// Names what runs now (e.g. "decoding"); a plain log gets a line at once.
    pub fn phase(&self, phase: &str) {
        let mut p = self.plain.lock().expect("progress lock");
        if let Some(bar) = &self.bar {
            bar.set_prefix(format!("{}{phase}", p.label));
        }
        if p.phase != phase {
            p.phase = phase.to_string();
            if self.lines {
                p.print();
            }
        }
    }

    /// A line of its own above the bar (never glued to it).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None if self.lines => eprintln!("{line}"),
            None => {}
        }
    }

    /// Clears the bar, so that what is printed next starts on a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Plain {
    fn new(phase: &str, len: u64, unit: &'static str, per_unit: u64) -> Self {
        let now = Instant::now();
        let phase = phase.to_string();
        let (label, msg) = (String::new(), String::new());
        Self { label, phase, unit, per_unit, pos: 0, len, msg, start: now, last_line: now, last_twentieth: 0 }
    }

    fn maybe_print(&mut self) {
        if self.len == 0 {
            return;
        }
        let twentieth = self.pos * 20 / self.len;
        if twentieth > self.last_twentieth || self.last_line.elapsed() >= PLAIN_EVERY {
            self.last_twentieth = twentieth;
            self.print();
        }
    }

    fn print(&mut self) {
        self.last_line = Instant::now();
        let elapsed = self.start.elapsed().as_secs();
        let pct = if self.len == 0 { 0 } else { self.pos * 100 / self.len };
        let msg = if self.msg.is_empty() { String::new() } else { format!(", {}", self.msg) };
        eprintln!(
            "{}{}: {}/{} {} ({pct}%), {}:{:02}:{:02} elapsed{msg}",
            self.label,
            self.phase,
            self.pos / self.per_unit,
            self.len / self.per_unit,
            self.unit,
            elapsed / 3600,
            elapsed / 60 % 60,
            elapsed % 60
        );
    }
}

/// "1 PNG", "2 PNGs".
pub fn plural(n: usize, what: &str) -> String {
    if n == 1 { format!("1 {what}") } else { format!("{n} {what}s") }
}
