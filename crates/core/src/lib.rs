//! face-edge's core: vision and decisions. Frames and embeddings come in, decisions and messages go out;
//! nothing here opens a file, a socket or a thread, reads a clock or the environment. Time arrives as
//! arguments and model weights as bytes the daemon has verified.
//!
//! The data path, stage by stage: `detect` (YuNet) -> `align` (5-point similarity warp) -> `embed`
//! (the ONNX embedder on tract) -> `gallery` (open-set matching) -> `track` (who is who across frames,
//! voting) -> `events` (messages for MQTT and stdout). `recognizer` strings them together for one
//! camera and returns what the daemon must do as `Effect`s; `pipeline` serves the one-shot commands.

#![forbid(unsafe_code)]

pub mod align;
pub mod authorise;
pub mod command;
pub mod detect;
pub mod discovery;
pub mod embed;
pub mod enrolment;
pub mod error;
pub mod events;
pub mod gallery;
pub mod inference;
pub mod manifest;
pub mod motion;
pub mod openset;
pub mod pipeline;
pub mod quantize;
pub mod recognizer;
pub mod report;
pub mod settings;
pub mod track;

pub use error::ModelError;
