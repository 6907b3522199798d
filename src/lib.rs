//! face-edge, the daemon and CLI around the pure core (`face-edge-core`): configuration, the model
//! catalog and its files, photos, the gallery store and enrolment, cameras, MQTT and the service.
//! The core's stages are re-exported under their own names (`face_edge::detect`, `face_edge::track`, ...)
//! so the CLI and the tests reach every stage from one crate.

#![forbid(unsafe_code)]

pub use face_edge_core::{
    align, detect, embed, events, gallery, inference, manifest, motion, openset, pipeline,
    settings, track,
};

pub mod camera;
pub mod config;
pub mod enrol;
pub mod image_io;
pub mod models;
pub mod mqtt;
pub mod outbox;
pub mod quantize;
pub mod service;
pub mod store;
