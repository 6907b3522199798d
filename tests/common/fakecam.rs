//! Builds the fake V4L2 camera shim (tests/fakecam/fakecam.c) with the C compiler, once per test run.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::OnceLock;

/// Path of the compiled `fakecam.so` for LD_PRELOAD.
pub fn shim() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fakecam/fakecam.c");
            // target/tmp is shared by every target's tests: one shim per architecture.
            let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
                .join(format!("fakecam-{}.so", std::env::consts::ARCH));
            // Under emulation the shim is loaded into the emulated (ARM) process: Debian's cross compiler.
            let cc = std::env::var("FACE_EDGE_TEST_CC").unwrap_or_else(|_| {
                match (super::emulated(), std::env::consts::ARCH) {
                    (true, "aarch64") => "aarch64-linux-gnu-gcc",
                    (true, "arm") => "arm-linux-gnueabihf-gcc",
                    _ => "cc",
                }
                .to_string()
            });
            // No _FORTIFY_SOURCE: it would redirect open() to __open_2, bypassing the shim.
            let status = std::process::Command::new(&cc)
                .args([
                    "-shared",
                    "-fPIC",
                    "-O2",
                    "-Wall",
                    "-Werror",
                    "-U_FORTIFY_SOURCE",
                    "-D_FORTIFY_SOURCE=0",
                    "-o",
                ])
                .arg(&out)
                .arg(&source)
                .args(["-ldl", "-lpthread"])
                .status()
                .unwrap_or_else(|e| panic!("{cc} (to build the fake camera): {e}"));
            assert!(status.success(), "compiling {} failed", source.display());
            out
        })
        .clone()
}
