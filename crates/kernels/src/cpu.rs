//! The one place that asks the CPU what it can do. Each answer is read once and cached; every kernel
//! and the embedder's precision check ask here.

use std::sync::OnceLock;

/// What this CPU offers that face-edge's kernels or tract's f16 plans depend on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuFeatures {
    /// x86-64 AVX2 (the depthwise loops' wide build).
    pub avx2: bool,
    /// x86-64 AVX-512F (the register-tiled 1x1 and first-layer kernels).
    pub avx512f: bool,
    /// aarch64 half-precision arithmetic (ARMv8.2 FP16: Cortex-A76 of a Raspberry Pi 5, Jetson Orin),
    /// which Linux reports from the CPU's ID registers and qemu for the CPU model it emulates.
    pub fp16: bool,
    /// aarch64 SDOT/UDOT (ARMv8.2 dot product: Cortex-A76, not the Pi 4's A72): the int8 1x1 kernel.
    pub dotprod: bool,
    /// x86-64 AVX512-VNNI (VPDPBUSD): the int8 1x1 kernel.
    pub avx512vnni: bool,
}

/// The features of the CPU this process runs on.
pub fn features() -> CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    *FEATURES.get_or_init(detect)
}

fn detect() -> CpuFeatures {
    #[cfg(target_arch = "x86_64")]
    {
        CpuFeatures {
            avx2: std::arch::is_x86_feature_detected!("avx2"),
            avx512f: std::arch::is_x86_feature_detected!("avx512f"),
            fp16: false,
            dotprod: false,
            avx512vnni: std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni"),
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        CpuFeatures {
            avx2: false,
            avx512f: false,
            fp16: std::arch::is_aarch64_feature_detected!("fp16"),
            dotprod: std::arch::is_aarch64_feature_detected!("dotprod"),
            avx512vnni: false,
        }
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        CpuFeatures {
            avx2: false,
            avx512f: false,
            fp16: false,
            dotprod: false,
            avx512vnni: false,
        }
    }
}
