//! Output records shared by `detect` and `embed` (the JSON lines are a contract: keep them stable) and the
//! progress reporter for long runs.

use face_edge::detect::Detection;
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Serialize)]
pub struct FaceRecord<'a> {
    /// None for `embed --aligned`: the input was the crop, nothing was detected.
    #[serde(flatten)]
    pub detection: Option<&'a Detection>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding: Option<&'a [f32]>,
}

/// One line of `detect --json` / `embed --jsonl`.
#[derive(Serialize)]
pub struct ImageRecord<'a> {
    pub path: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub faces: Vec<FaceRecord<'a>>,
    pub error: Option<String>,
}

impl ImageRecord<'_> {
    pub fn failed(path: &Path, error: String) -> ImageRecord<'static> {
        ImageRecord {
            path: path.display().to_string(),
            width: None,
            height: None,
            faces: vec![],
            error: Some(error),
        }
    }
}

pub fn print_json_line(value: &impl Serialize) {
    let line = serde_json::to_string(value).expect("records serialise");
    let mut out = std::io::stdout().lock();
    // A closed pipe (e.g. `| head`) ends the run quietly instead of panicking.
    if writeln!(out, "{line}").is_err() {
        std::process::exit(0);
    }
}

/// Prints "done/total" on stderr at most once a second once a run takes longer than a second.
pub struct Progress {
    label: &'static str,
    total: usize,
    done: usize,
    failed: usize,
    started: Instant,
    last: Instant,
    tty: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: usize) -> Progress {
        let now = Instant::now();
        Progress {
            label,
            total,
            done: 0,
            failed: 0,
            started: now,
            last: now,
            tty: std::io::stderr().is_terminal(),
        }
    }

    pub fn step(&mut self, ok: bool) {
        self.done += 1;
        self.failed += usize::from(!ok);
        if self.last.elapsed() >= Duration::from_secs(1) {
            self.last = Instant::now();
            self.print(
                if self.tty { "\r" } else { "" },
                if self.tty { "" } else { "\n" },
            );
        }
    }

    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Final line, only for runs long enough to have shown progress.
    pub fn finish(&self) {
        if self.started.elapsed() >= Duration::from_secs(1) {
            self.print(if self.tty { "\r" } else { "" }, "\n");
        }
    }

    fn print(&self, start: &str, end: &str) {
        let rate = self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        eprint!(
            "{start}face-edge {}: {}/{} images, {} failed, {rate:.1} images/s{end}",
            self.label, self.done, self.total, self.failed
        );
    }
}
