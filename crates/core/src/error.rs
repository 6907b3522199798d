//! What can be wrong with a model once its bytes are in hand: the manifest, the ONNX graph, the contract
//! between them, or the CPU it should run on. Finding and reading the weights is the daemon's (its
//! `CatalogError` wraps this one).

use crate::manifest::ManifestError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(
        "models.precision = \"f16\" (model {id:?}) needs a CPU with half-precision arithmetic (ARMv8.2 FP16, e.g. the Cortex-A76 of a Raspberry Pi 5 or a Jetson Orin); this CPU has none and would emulate it hundreds of times slower: use precision \"f32\""
    )]
    NoHalfPrecision { id: String },
    #[error("model {id:?} is a {actual}, not a {wanted}")]
    WrongRole {
        id: String,
        actual: &'static str,
        wanted: &'static str,
    },
    #[error("{}: not a usable ONNX model: {message}", path.display())]
    Onnx { path: PathBuf, message: String },
    #[error("{}: the model disagrees with its manifest {id:?}: {message}", path.display())]
    Contract {
        path: PathBuf,
        id: String,
        message: String,
    },
}
