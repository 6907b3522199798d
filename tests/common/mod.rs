//! Shared test helpers: where the real models and data are, and how to run the built binary.
#![allow(dead_code)]

pub mod broker;
pub mod fakecam;
pub mod scene;

use face_edge::models::Catalog;
use std::path::PathBuf;
use std::process::{Command, Output};

/// `FACE_EDGE_SHARED`, else `../shared` beside the crate. The real models and photos are required.
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("FACE_EDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"));
    assert!(
        dir.join("data").is_dir(),
        "shared data not found at {} (set FACE_EDGE_SHARED)",
        dir.display()
    );
    dir
}

/// `FACE_EDGE_MODELS_DIR`, else `<shared>/models`.
pub fn models_dir() -> PathBuf {
    std::env::var_os("FACE_EDGE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared_dir().join("models"))
}

pub fn data(rel: &str) -> PathBuf {
    shared_dir().join("data").join(rel)
}

pub fn catalog() -> Catalog {
    Catalog::load(&models_dir()).expect("catalog loads")
}

pub fn read_json(rel: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(data(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_json::from_str(&text).unwrap()
}

/// The face-edge binary with the models directory set. When the tests run for another architecture
/// under an emulator (`FACE_EDGE_TEST_RUNNER`, e.g. "qemu-aarch64-static -cpu cortex-a72 -L
/// /usr/aarch64-linux-gnu"), the binary is started through it: there is no binfmt_misc to do so.
pub fn face_edge() -> Command {
    let binary = env!("CARGO_BIN_EXE_face-edge");
    let runner = std::env::var("FACE_EDGE_TEST_RUNNER").unwrap_or_default();
    let mut words = runner.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(words).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    cmd.env("FACE_EDGE_MODELS_DIR", models_dir())
        .env_remove("RUST_LOG");
    cmd
}

pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("face-edge runs");
    (
        status.code().unwrap_or(-1),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

/// A fresh temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "face-edge-test-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn vec_f32(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}
