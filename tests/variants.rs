//! The int8 variants made by models/quantize.py (the built-in `*-int8-*` manifests) hold their accuracy:
//! golden-crop cosine to their base model, and LFW folds 1-2 within half a point of it.
//!
//! The variants' weights are made from ../shared's models before the tests (.ci/run does it; README:
//! Smaller and int8 models) into `FACE_EDGE_TEST_VARIANTS_DIR`. Without that variable these tests say
//! so and check nothing; with `FACE_EDGE_TEST_REQUIRE_VARIANTS` set (CI) they fail instead.

mod common;

use common::golden::{agreement, embed_aligned, golden_crops};
use common::{catalog, face_edge};
use face_edge::manifest::{Manifest, VariantMethod};
use std::path::PathBuf;

/// The built-in variant manifests: (variant, its base's id, method).
fn shipped_variants() -> Vec<(Manifest, String, VariantMethod)> {
    catalog()
        .manifests()
        .filter_map(|m| {
            let v = m.variant.as_ref()?;
            Some((m.clone(), v.base.clone(), v.method))
        })
        .collect()
}

fn variants_dir() -> Option<PathBuf> {
    match std::env::var_os("FACE_EDGE_TEST_VARIANTS_DIR") {
        Some(dir) => Some(PathBuf::from(dir)),
        None => {
            assert!(
                std::env::var_os("FACE_EDGE_TEST_REQUIRE_VARIANTS").is_none(),
                "FACE_EDGE_TEST_REQUIRE_VARIANTS is set but FACE_EDGE_TEST_VARIANTS_DIR is not"
            );
            println!(
                "FACE_EDGE_TEST_VARIANTS_DIR not set: no variants to check (make them as the README says)"
            );
            None
        }
    }
}

fn golden_key(base: &str) -> String {
    base.replace('-', "_")
}

#[test]
fn every_built_in_variant_was_made_and_int8_weights_files_are_reproducible() {
    let Some(variants) = variants_dir() else {
        return;
    };
    let shipped = shipped_variants();
    assert!(shipped.len() >= 3, "built-in variants: {}", shipped.len());
    for (m, _, method) in &shipped {
        let made = face_edge::models::manifest_from_file(&variants.join(format!("{}.toml", m.id)))
            .unwrap_or_else(|e| panic!("{}: the tool's manifest: {e}", m.id));
        assert_eq!(made.weights, m.weights, "{}", m.id);
        assert!(variants.join(&m.weights).is_file(), "{} missing", m.weights);
        let reproduced = made.sha256 == m.sha256;
        println!(
            "{}: {} bytes, sha256 {} the built-in manifest",
            m.id,
            std::fs::metadata(variants.join(&m.weights)).unwrap().len(),
            if reproduced { "equals" } else { "differs from" }
        );
        // Weight-only quantisation is plain arithmetic on the f32 weights: the same file everywhere.
        if *method == VariantMethod::Int8Weights {
            assert!(reproduced, "{}: {:?} vs {:?}", m.id, made.sha256, m.sha256);
        }
    }
}

#[test]
fn variants_keep_a_mean_golden_crop_cosine_of_0_98_to_their_base() {
    let Some(variants) = variants_dir() else {
        return;
    };
    let dir = common::models_dir_plus(&variants);
    for (m, base, _) in shipped_variants() {
        let mut crops = golden_crops(&golden_key(&base));
        if common::emulated() {
            // 8 crops per model under qemu, as in the f16 test: int8-qdq runs its quantize/dequantize
            // steps instruction by instruction there.
            crops.truncate(8);
        }
        let embed = |id: &str| {
            let mut cmd = face_edge();
            cmd.env("FACE_EDGE_MODELS_DIR", &dir.0);
            let (code, embeddings, stderr) = embed_aligned(cmd, id, "f32", &crops);
            assert_eq!(code, 0, "{id}: {stderr}");
            assert_eq!(embeddings.len(), crops.len());
            embeddings
        };
        let (cosines, mean, min) = agreement(&embed(&base), &embed(&m.id));
        println!(
            "{}: cosine to {base} on {} golden crops: mean {mean:.5}, min {min:.5}",
            m.id,
            crops.len()
        );
        assert!(mean >= 0.98, "{}: cosines {cosines:?}", m.id);
    }
}

/// LFW folds 1-2 with every variant of the trained MobileFaceNet (the stand-in's random weights have no
/// identity to verify), within 0.5 percentage points of MobileFaceNet itself at the same threshold.
/// Under emulation the golden test above is the check: LFW costs about 8 minutes per model there.
#[test]
fn mobilefacenet_variants_stay_within_half_a_point_on_lfw() {
    let Some(variants) = variants_dir() else {
        return;
    };
    if common::emulated() {
        println!("under emulation: LFW for the variants is checked natively only");
        return;
    }
    let dir = common::models_dir_plus(&variants);
    let dir_arg = dir.0.display().to_string();
    let folds = [1, 2];
    let threshold = 0.264;
    let accuracy = |id: &str| {
        let o = common::lfw::evaluate(
            &["--model", id, "--models-dir", &dir_arg],
            &folds,
            threshold,
        );
        assert!(
            o.embedded * 100 >= o.images * 99,
            "{id}: {} of {} embedded: {}",
            o.embedded,
            o.images,
            o.stderr
        );
        println!(
            "{id}: LFW folds 1-2 accuracy {:.2} % at {threshold}, ROC AUC {:.5}",
            o.accuracy * 100.0,
            o.auc
        );
        o.accuracy
    };
    let base = accuracy("mobilefacenet");
    let mut checked = 0;
    for (m, base_id, _) in shipped_variants() {
        if base_id != "mobilefacenet" {
            continue;
        }
        let delta = (accuracy(&m.id) - base) * 100.0;
        assert!(delta.abs() <= 0.5, "{}: {delta:+.2} points", m.id);
        checked += 1;
    }
    assert!(checked >= 2, "mobilefacenet variants checked: {checked}");
}

/// face-edge's integer path gives the same int8-qdq embeddings on every CPU: its sums are exact
/// integers and the requantization rounds alike on x86-64 (VNNI or the portable loop) and aarch64
/// (NEON here, as a Cortex-A72 under qemu), so the two builds agree on the golden crops to cosine
/// 0.9999, as the f32 models do in golden_parity. Compared by the emulated run, like those.
#[test]
fn the_int8_qdq_variant_agrees_across_architectures() {
    let Some(variants) = variants_dir() else {
        return;
    };
    if !common::emulated() && std::env::var_os("FACE_EDGE_TEST_ARCH_COMPARED_UNDER_QEMU").is_some()
    {
        println!("not compared here: the emulated run compares the same two builds");
        return;
    }
    let other = match common::other_architecture_face_edge() {
        Ok(other) => other,
        Err(missing) => {
            assert!(
                std::env::var_os("FACE_EDGE_TEST_REQUIRE_OTHER_ARCH").is_none(),
                "{} is required (FACE_EDGE_TEST_REQUIRE_OTHER_ARCH)",
                missing.display()
            );
            println!("not compared: {} is not built", missing.display());
            return;
        }
    };
    let dir = common::models_dir_plus(&variants);
    let mut crops = golden_crops("mobilefacenet");
    if common::emulated() {
        crops.truncate(8);
    }
    let embed = |mut cmd: std::process::Command| {
        cmd.env("FACE_EDGE_MODELS_DIR", &dir.0);
        let (code, embeddings, stderr) =
            embed_aligned(cmd, "mobilefacenet-int8-qdq", "f32", &crops);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(embeddings.len(), crops.len());
        embeddings
    };
    let (cosines, _, min) = agreement(&embed(face_edge()), &embed(other));
    println!(
        "mobilefacenet-int8-qdq: {} golden crops, {} vs the other architecture: minimum cosine {min:.7}",
        crops.len(),
        std::env::consts::ARCH
    );
    assert!(min >= 0.9999, "cosines across architectures: {cosines:?}");
}
