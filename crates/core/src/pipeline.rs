//! The pixels-to-embeddings path as one value: detector + embedder (the daemon's `models` loads them).
//! Frames in, detections and embeddings out.

use crate::detect::{DetectError, Detection, Detector, main_face};
use crate::embed::{EmbedError, Embedder};
use image::RgbImage;

/// A detected face and its L2-normalised embedding.
#[derive(Debug, Clone)]
pub struct EmbeddedFace {
    pub detection: Detection,
    pub embedding: Vec<f32>,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Detect(#[from] DetectError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error("no face found")]
    NoFace,
}

/// Which faces of a frame to embed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaceSelection {
    All,
    /// Only the face maximising area - 2 * |centre - image centre|^2.
    Main,
}

pub struct FacePipeline {
    pub detector: Detector,
    pub embedder: Embedder,
}

impl FacePipeline {
    /// Detects, selects and embeds faces; fails with `NoFace` when nothing is found.
    pub fn embed_faces(
        &mut self,
        frame: &RgbImage,
        selection: FaceSelection,
    ) -> Result<Vec<EmbeddedFace>, PipelineError> {
        let mut faces = self.detector.detect(frame)?;
        if selection == FaceSelection::Main {
            let main =
                main_face(&faces, frame.width(), frame.height()).ok_or(PipelineError::NoFace)?;
            faces = vec![faces[main]];
        }
        if faces.is_empty() {
            return Err(PipelineError::NoFace);
        }
        faces
            .into_iter()
            .map(|detection| {
                let embedding = self.embedder.embed_face(frame, &detection.landmarks)?;
                Ok(EmbeddedFace {
                    detection,
                    embedding,
                })
            })
            .collect()
    }
}
