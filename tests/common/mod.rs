//! Shared test helpers: where the real models and data are, and how to run the built binary.
#![allow(dead_code)]

pub mod broker;
pub mod fakecam;
pub mod golden;
pub mod home_assistant;
pub mod lfw;
pub mod scene;

use face_edge::models::Catalog;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

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

/// True when these tests were built for an ARM target and run on an x86-64 host under qemu-user (which
/// passes the host's /proc/cpuinfo through).
pub fn emulated() -> bool {
    cfg!(not(target_arch = "x86_64"))
        && std::fs::read_to_string("/proc/cpuinfo")
            .is_ok_and(|c| c.contains("GenuineIntel") || c.contains("AuthenticAMD"))
}

/// How many times slower than native the code under test runs: `FACE_EDGE_TEST_SLOWDOWN`, else 12 under
/// emulation (measured: YuNet and the embedders run 10-40x slower under qemu-user, the rest less) and
/// 1 natively. Timeouts and scene pacing are multiplied by it.
pub fn slowdown() -> u32 {
    std::env::var("FACE_EDGE_TEST_SLOWDOWN")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if emulated() { 12 } else { 1 })
}

/// `secs` seconds of patience, stretched by `slowdown()`.
pub fn patience(secs: u64) -> Duration {
    Duration::from_secs(secs * slowdown() as u64)
}

/// The emulator command that runs binaries of `arch` here: `FACE_EDGE_TEST_RUNNER` when set, else Debian's
/// qemu-user-static with the CPU .cargo/config.toml uses. There is no binfmt_misc to do it implicitly.
fn runner_for(arch: &str) -> Vec<String> {
    if let Ok(runner) = std::env::var("FACE_EDGE_TEST_RUNNER") {
        return runner.split_whitespace().map(str::to_string).collect();
    }
    let words: &[&str] = match arch {
        "aarch64" => &[
            "qemu-aarch64-static",
            "-cpu",
            "cortex-a72",
            "-L",
            "/usr/aarch64-linux-gnu",
        ],
        "arm" => &[
            "qemu-arm-static",
            "-cpu",
            "cortex-a15",
            "-L",
            "/usr/arm-linux-gnueabihf",
        ],
        _ => &[],
    };
    words.iter().map(|w| w.to_string()).collect()
}

/// `binary`, started through `runner` when that is not empty.
fn command_through(runner: &[String], binary: &Path) -> Command {
    match runner.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    }
}

/// The face-edge binary with the models directory set; under emulation started through the emulator.
pub fn face_edge() -> Command {
    let runner = if emulated() {
        runner_for(std::env::consts::ARCH)
    } else {
        vec![]
    };
    let mut cmd = command_through(&runner, Path::new(env!("CARGO_BIN_EXE_face-edge")));
    cmd.env("FACE_EDGE_MODELS_DIR", models_dir())
        .env_remove("RUST_LOG");
    cmd
}

/// Under emulation: face-edge on an emulated `cpu` (a qemu CPU model such as "cortex-a76"). None natively.
pub fn face_edge_on_cpu(cpu: &str) -> Option<Command> {
    if !emulated() {
        return None;
    }
    let mut runner = runner_for(std::env::consts::ARCH);
    if let Some(i) = runner.iter().position(|w| w == "-cpu") {
        runner[i + 1] = cpu.to_string();
    }
    let mut cmd = command_through(&runner, Path::new(env!("CARGO_BIN_EXE_face-edge")));
    cmd.env("FACE_EDGE_MODELS_DIR", models_dir())
        .env_remove("RUST_LOG");
    Some(cmd)
}

/// The face-edge built from the same sources for the other architecture of the pair x86-64 / aarch64
/// (target/release/face-edge <-> target/aarch64-unknown-linux-gnu/release/face-edge), ready to run
/// (through the emulator when it is the ARM one); Err(path) when it has not been built.
pub fn other_architecture_face_edge() -> Result<Command, PathBuf> {
    let own = Path::new(env!("CARGO_BIN_EXE_face-edge"));
    let profile_dir = own.parent().unwrap();
    let profile = profile_dir.file_name().unwrap();
    let above = profile_dir.parent().unwrap();
    let (binary, runner) = if above.file_name().is_some_and(|n| n == ARM64_TRIPLE) {
        (
            above.parent().unwrap().join(profile).join("face-edge"),
            vec![],
        )
    } else {
        (
            above.join(ARM64_TRIPLE).join(profile).join("face-edge"),
            runner_for("aarch64"),
        )
    };
    if !binary.is_file() {
        return Err(binary);
    }
    let mut cmd = command_through(&runner, &binary);
    cmd.env("FACE_EDGE_MODELS_DIR", models_dir())
        .env_remove("RUST_LOG");
    Ok(cmd)
}

const ARM64_TRIPLE: &str = "aarch64-unknown-linux-gnu";

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

/// A models directory holding the shared models and everything a quantizer wrote into `variants`
/// (weights and its own manifests, which take precedence over the built-in ones: an int8-qdq file's
/// checksum depends on the calibration arithmetic of the machine that made it).
pub fn models_dir_plus(variants: &Path) -> TempDir {
    let dir = TempDir::new("variants");
    for source in [models_dir(), variants.to_path_buf()] {
        // Absolute targets: the directories may be given relative to the crate.
        let source = std::fs::canonicalize(&source).unwrap();
        for entry in std::fs::read_dir(&source).unwrap() {
            let path = entry.unwrap().path();
            let link = dir.path(&path.file_name().unwrap().to_string_lossy());
            if !link.exists() {
                std::os::unix::fs::symlink(&path, link).unwrap();
            }
        }
    }
    dir
}
