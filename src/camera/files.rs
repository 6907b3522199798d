//! A camera made of image files (a directory or a glob), paced at the camera's fps and optionally looped:
//! for replaying recordings and for tests.

use super::{FrameSource, Payload, SourceError};
use crate::config::FilesCamera;
use crate::image_io::expand_inputs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub struct FilesSource {
    paths: Vec<PathBuf>,
    next: usize,
    looping: bool,
    repeat: u32,
    shown: u32,
    interval: Duration,
    due: Instant,
}

impl FilesSource {
    pub fn open(config: &FilesCamera) -> Result<FilesSource, SourceError> {
        let pattern = config.path.clone();
        let paths: Vec<PathBuf> = if pattern.contains(['*', '?', '[']) {
            let mut found: Vec<PathBuf> = glob::glob(&pattern)
                .map_err(|e| SourceError::Failed(format!("{pattern}: {e}")))?
                .flatten()
                .filter(|p| p.is_file())
                .collect();
            found.sort();
            found
        } else {
            expand_inputs(&[PathBuf::from(&pattern)])
        };
        if paths.is_empty() {
            return Err(SourceError::Failed(format!("{pattern}: no image files")));
        }
        let interval = Duration::from_secs_f32(1.0 / config.fps);
        Ok(FilesSource {
            paths,
            next: 0,
            looping: config.looping,
            repeat: config.repeat.max(1),
            shown: 0,
            interval,
            due: Instant::now(),
        })
    }
}

impl FrameSource for FilesSource {
    fn next_frame(&mut self) -> Result<Payload, SourceError> {
        if self.next >= self.paths.len() {
            if !self.looping {
                return Err(SourceError::Finished);
            }
            self.next = 0;
        }
        if let Some(wait) = self.due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        self.due = Instant::now().max(self.due) + self.interval;
        let path = &self.paths[self.next];
        self.shown += 1;
        if self.shown >= self.repeat {
            self.shown = 0;
            self.next += 1;
        }
        let bytes = std::fs::read(path)
            .map_err(|e| SourceError::Failed(format!("{}: {e}", path.display())))?;
        Ok(Payload::Encoded(bytes))
    }
}
