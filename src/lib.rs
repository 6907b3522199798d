//! face-edge: camera frames -> YuNet detection -> 5-point alignment -> ONNX embedder on tract -> gallery
//! matching -> events. The vision core (`detect`, `align`, `embed`, `pipeline`) is pure computation over
//! frames; `models` and `image_io` do the file IO around it.

pub mod align;
pub mod detect;
pub mod embed;
pub mod image_io;
pub mod inference;
pub mod manifest;
pub mod models;
pub mod pipeline;
