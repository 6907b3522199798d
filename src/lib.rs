//! face-edge: camera frames -> YuNet detection -> 5-point alignment -> ONNX embedder on tract -> gallery
//! matching -> events. The vision core (`detect`, `align`, `embed`, `pipeline`) is pure computation over
//! frames and embeddings, and so is `gallery` (matching); `models`, `image_io`, `store`, `enrol` and
//! `config` do the file IO around them. `motion` (is the scene still?) and `track` (who is who across
//! frames) are pure as well.

pub mod align;
pub mod camera;
pub mod config;
pub mod detect;
pub mod embed;
pub mod enrol;
pub mod events;
pub mod gallery;
pub mod image_io;
pub mod inference;
pub mod kernels;
pub mod manifest;
pub mod models;
pub mod motion;
pub mod mqtt;
pub mod openset;
pub mod outbox;
pub mod pipeline;
pub mod service;
pub mod store;
pub mod track;
