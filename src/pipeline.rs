//! The pixels-to-embeddings path as one value: detector + embedder, loaded from the catalog. Pure
//! computation once loaded: frames in, detections and embeddings out.

use crate::detect::{DetectError, DetectSettings, Detection, Detector, main_face};
use crate::embed::{EmbedError, Embedder};
use crate::inference::Precision;
use crate::manifest::Role;
use crate::models::{Catalog, ModelError};
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
    pub fn load(
        catalog: &Catalog,
        detector_id: &str,
        settings: &DetectSettings,
        embedder_id: &str,
        precision: Precision,
    ) -> Result<FacePipeline, ModelError> {
        Ok(FacePipeline {
            detector: load_detector(catalog, detector_id, settings)?,
            embedder: load_embedder_in(catalog, embedder_id, precision)?,
        })
    }

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

/// Reads, verifies and loads a detector from the catalog.
pub fn load_detector(
    catalog: &Catalog,
    id: &str,
    settings: &DetectSettings,
) -> Result<Detector, ModelError> {
    let manifest = catalog.get_role(id, Role::Detector)?;
    Detector::new(manifest, &catalog.read_verified(manifest)?, settings)
}

/// Reads, verifies and loads an embedder from the catalog.
pub fn load_embedder(catalog: &Catalog, id: &str) -> Result<Embedder, ModelError> {
    load_embedder_in(catalog, id, Precision::F32)
}

/// The embedder `id`, running in `precision`.
pub fn load_embedder_in(
    catalog: &Catalog,
    id: &str,
    precision: Precision,
) -> Result<Embedder, ModelError> {
    let manifest = catalog.get_role(id, Role::Embedder)?;
    Embedder::with_precision(manifest, &catalog.read_verified(manifest)?, precision)
}
