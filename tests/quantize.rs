//! `face-edge models quantize`: the int8 QDQ variant made by face-edge itself (no Python) keeps
//! MobileFaceNet's accuracy, agrees with the variant onnxruntime's quantizer makes from the same
//! crops (models/quantize.py, when `FACE_EDGE_TEST_VARIANTS_DIR` holds it), runs in its base's
//! place when the configuration names the base (`models.variant`), runs as the default model's
//! architecture, and a variant that fails its check, or bad input, writes nothing.

mod common;

use common::golden::{agreement, embed_aligned, golden_crops, golden_faces};
use common::lfw::{evaluate, pairs};
use common::{TempDir, data, face_edge, models_dir, read_json, run};
use face_edge::detect::{DetectSettings, Detection, FaceAgreement};
use face_edge::image_io::load_rgb;
use face_edge::manifest::VariantMethod;
use face_edge::models::{Catalog, load_detector};
use face_edge::models::{manifest_from_file, sha256_hex};
use std::path::Path;

/// `face-edge models quantize ID --calibration CROPS --out-dir OUT EXTRA...` with ../shared's models;
/// (exit code, stdout, stderr).
fn quantize(id: &str, crops: &Path, out: &TempDir, extra: &[&str]) -> (i32, String, String) {
    let mut cmd = face_edge();
    cmd.env("FACE_EDGE_MODELS_DIR", models_dir())
        .args(["models", "quantize", id, "--calibration"])
        .arg(crops)
        .arg("--out-dir")
        .arg(&out.0)
        .args(extra);
    run(&mut cmd)
}

/// The mean cosine `quantize` printed for its held-out crops.
fn reported_mean(stdout: &str) -> f32 {
    let line = stdout
        .lines()
        .find(|l| l.contains("held out"))
        .unwrap_or_else(|| panic!("no check line in {stdout}"));
    let mean = line
        .split("mean ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    mean.parse().unwrap()
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The embedder `face-edge gallery check` loads for a configuration naming `embedder` (plus
/// `extra` lines in `[models]`) over the models in `dir`: the id of its "model ...: ok" line.
fn configured_embedder(dir: &TempDir, embedder: &str, extra: &str) -> String {
    configured_embedder_and_stderr(dir, embedder, extra).0
}

fn configured_embedder_and_stderr(dir: &TempDir, embedder: &str, extra: &str) -> (String, String) {
    let (models, stderr, _) = configured_models(dir, embedder, extra);
    (models[1].clone(), stderr)
}

/// The detector and embedder `face-edge gallery check` loads for a configuration naming `embedder`
/// (plus `extra` lines in `[models]`), its stderr and its stdout.
fn configured_models(dir: &TempDir, embedder: &str, extra: &str) -> ([String; 2], String, String) {
    let tmp = TempDir::new("variant-config");
    let config = tmp.path("face-edge.toml");
    let obama = data("photos/gallery/obama");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"state\"\n[models]\nembedder = \"{embedder}\"\n{extra}\n[[person]]\nid = \"obama\"\nimages = [\"{}/*.jpg\"]\n",
            obama.display()
        ),
    )
    .unwrap();
    let mut cmd = face_edge();
    cmd.env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["gallery", "check", "--config"])
        .arg(&config);
    let (code, stdout, stderr) = run(&mut cmd);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let models: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("model ")?.strip_suffix(": ok"))
        .collect();
    assert_eq!(models.len(), 2, "detector and embedder: {stdout}");
    (
        [models[0].to_string(), models[1].to_string()],
        stderr,
        stdout,
    )
}

fn embeddings(dir: &TempDir, id: &str, crops: &[String]) -> Vec<Vec<f32>> {
    let mut cmd = face_edge();
    cmd.env("FACE_EDGE_MODELS_DIR", &dir.0);
    let (code, embeddings, stderr) = embed_aligned(cmd, id, "f32", crops);
    assert_eq!(code, 0, "{id}: {stderr}");
    assert_eq!(embeddings.len(), crops.len());
    embeddings
}

#[test]
fn mobilefacenet_quantized_here_keeps_its_accuracy() {
    let out = TempDir::new("quantize-mfn");
    let (code, stdout, stderr) = quantize("mobilefacenet", &data("golden/crops"), &out, &[]);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    assert!(stderr.contains("calibrating"), "progress: {stderr}");
    let held_out = reported_mean(&stdout);
    assert!(held_out >= 0.99, "{stdout}");
    assert_eq!(
        files_in(&out.0),
        ["mobilefacenet-int8-qdq.toml", "mobilefacenet.int8-qdq.onnx"]
    );

    let manifest = manifest_from_file(&out.path("mobilefacenet-int8-qdq.toml")).unwrap();
    let variant = manifest.variant.as_ref().unwrap();
    assert_eq!(variant.base, "mobilefacenet");
    assert_eq!(variant.method, VariantMethod::Int8Qdq);
    // The check is recorded, to 5 decimals as reported.
    let recorded = variant.checked_cosine.unwrap();
    assert!(
        (recorded - held_out).abs() < 1e-5,
        "{recorded} vs {held_out}"
    );
    assert!(
        variant
            .made_by
            .starts_with("face-edge models quantize mobilefacenet --calibration")
    );
    let bytes = std::fs::read(out.path("mobilefacenet.int8-qdq.onnx")).unwrap();
    assert_eq!(
        manifest.sha256.as_deref(),
        Some(sha256_hex(&bytes).as_str())
    );
    assert!(
        bytes.len() * 3
            < std::fs::metadata(models_dir().join("mobilefacenet.onnx"))
                .unwrap()
                .len() as usize
    );

    // Every golden crop (four in five were calibration crops), as tests/variants.rs checks
    // onnxruntime's variant.
    let dir = common::models_dir_plus(&out.0);
    let crops = golden_crops("mobilefacenet");
    let base = embeddings(&dir, "mobilefacenet", &crops);
    let ours = embeddings(&dir, "mobilefacenet-int8-qdq", &crops);
    let (cosines, mean, min) = agreement(&base, &ours);
    println!(
        "face-edge's int8-qdq: cosine to f32 on {} golden crops: mean {mean:.5}, min {min:.5}",
        crops.len()
    );
    assert!(mean >= 0.99, "{cosines:?}");

    // A configuration naming the base runs the checked variant, unless it says not to.
    assert_eq!(
        configured_embedder(&dir, "mobilefacenet", ""),
        "mobilefacenet-int8-qdq"
    );
    assert_eq!(
        configured_embedder(&dir, "mobilefacenet", "variant = \"none\""),
        "mobilefacenet"
    );
    assert_eq!(
        configured_embedder(&dir, "mobilefacenet", "precision = \"f16\""),
        "mobilefacenet",
        "a precision other than f32 is a choice of the model too"
    );

    match std::env::var_os("FACE_EDGE_TEST_VARIANTS_DIR") {
        Some(reference) => {
            let reference_dir = common::models_dir_plus(Path::new(&reference));
            let theirs = embeddings(&reference_dir, "mobilefacenet-int8-qdq", &crops);
            let (cosines, mean, min) = agreement(&theirs, &ours);
            println!("face-edge's vs onnxruntime's int8-qdq variant: mean {mean:.5}, min {min:.5}");
            assert!(mean >= 0.99, "{cosines:?}");
        }
        None => {
            println!("FACE_EDGE_TEST_VARIANTS_DIR not set: not compared with onnxruntime's variant")
        }
    }

    // Weights that no longer verify are not run, and the log says why.
    let weights = dir.path("mobilefacenet.int8-qdq.onnx");
    std::fs::remove_file(&weights).unwrap();
    std::fs::write(&weights, b"not the variant").unwrap();
    let (id, stderr) = configured_embedder_and_stderr(&dir, "mobilefacenet", "");
    assert_eq!(id, "mobilefacenet");
    assert!(
        stderr.contains("mobilefacenet-int8-qdq") && stderr.contains("not running it"),
        "{stderr}"
    );
    std::fs::remove_file(&weights).unwrap();
    std::os::unix::fs::symlink(out.path("mobilefacenet.int8-qdq.onnx"), &weights).unwrap();

    // LFW folds 1-2: within 0.3 points of f32 (the bound for int8).
    let dir_arg = dir.0.display().to_string();
    let accuracy = |id: &str| {
        let o = common::lfw::evaluate(&["--model", id, "--models-dir", &dir_arg], &[1, 2], 0.264);
        assert!(o.embedded * 100 >= o.images * 99, "{id}: {}", o.stderr);
        println!(
            "{id}: LFW folds 1-2 {:.2} %, AUC {:.5}",
            o.accuracy * 100.0,
            o.auc
        );
        o.accuracy
    };
    let delta = (accuracy("mobilefacenet-int8-qdq") - accuracy("mobilefacenet")) * 100.0;
    assert!(delta.abs() <= 0.3, "{delta:+.2} points");
}

/// The default model's architecture (EfficientNetV2-B0 with SiLU and squeeze-excitation), as the
/// random-weight stand-in: quantized, loaded and run. Random weights give no accuracy to hold, so the
/// bound is low; the cosine is reported.
#[test]
fn the_default_models_architecture_quantizes_and_runs() {
    let out = TempDir::new("quantize-standin");
    let (code, stdout, stderr) = quantize(
        "japanese-face-v1-standin",
        &data("golden/crops"),
        &out,
        &["--min-cosine", "0.5"],
    );
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    assert!(
        stdout.contains("24 files of other sizes skipped"),
        "{stdout}"
    );
    let dir = common::models_dir_plus(&out.0);
    let crops = &golden_crops("japanese_face_v1_standin")[..2];
    let base = embeddings(&dir, "japanese-face-v1-standin", crops);
    let ours = embeddings(&dir, "japanese-face-v1-standin-int8-qdq", crops);
    let (_, mean, _) = agreement(&base, &ours);
    println!("stand-in int8-qdq: cosine to f32 on 2 golden crops: {mean:.5}");
    assert!(mean >= 0.5);
    // Its check passed only the bound given here, under the one for running in the base's place.
    assert!(reported_mean(&stdout) < 0.98, "{stdout}");
    assert_eq!(
        configured_embedder(&dir, "japanese-face-v1-standin", ""),
        "japanese-face-v1-standin"
    );
}

#[test]
fn yunet_quantized_here_finds_the_same_faces_and_keeps_lfw_accuracy() {
    // Calibrated (and checked, every fifth photo held out) on LFW fold 1's photos; measured on what
    // it never saw: the golden photos' reference detections and LFW fold 2's verification.
    let fold_1 = TempDir::new("lfw-fold-1");
    let lfw = data("lfw");
    let mut photos: Vec<String> = pairs()[..600]
        .iter()
        .flat_map(|p| [p.a.clone(), p.b.clone()])
        .collect();
    photos.sort();
    photos.dedup();
    for (i, rel) in photos.iter().enumerate() {
        std::os::unix::fs::symlink(lfw.join(rel), fold_1.path(&format!("{i:04}.jpg"))).unwrap();
    }
    let out = TempDir::new("quantize-yunet");
    let (code, stdout, stderr) = quantize("yunet-2023mar", &fold_1.0, &out, &["--limit", "200"]);
    assert_eq!(code, 0, "{stderr}");
    println!("{stdout}");
    assert!(stderr.contains("calibrating"), "progress: {stderr}");
    assert_eq!(
        files_in(&out.0),
        ["yunet-2023mar-int8-qdq.toml", "yunet_2023mar.int8-qdq.onnx"]
    );
    let manifest = manifest_from_file(&out.path("yunet-2023mar-int8-qdq.toml")).unwrap();
    let variant = manifest.variant.as_ref().unwrap();
    assert_eq!(
        (variant.base.as_str(), variant.method),
        ("yunet-2023mar", VariantMethod::Int8Qdq)
    );
    let agreement = variant.checked_agreement.unwrap();
    assert!(agreement >= 0.95, "{stdout}");
    assert!(
        stdout.contains(&format!("{:.1} %", agreement * 100.0)),
        "{stdout}"
    );

    // The golden photos at their native resolution: every reference face found; at most a face or
    // two more, each one the f32 detector scores just under its threshold (0.5 or more): the
    // scores of borderline faces move by a few hundredths.
    let dir = common::models_dir_plus(&out.0);
    let catalog = Catalog::load(&dir.0).unwrap();
    let native = DetectSettings {
        score_threshold: None,
        max_side: 0,
    };
    let mut int8 = load_detector(&catalog, "yunet-2023mar-int8-qdq", &native).unwrap();
    let golden = read_json("golden/detections.json");
    let borderline = DetectSettings {
        score_threshold: Some(0.5),
        max_side: 0,
    };
    let mut f32_borderline = load_detector(&catalog, "yunet-2023mar", &borderline).unwrap();
    let (mut alike, mut extra) = (FaceAgreement::default(), FaceAgreement::default());
    for (rel, g) in golden["images"].as_object().unwrap() {
        let reference = golden_faces(g);
        let photo = load_rgb(&data(&format!("photos/{rel}"))).unwrap();
        let found = int8.detect(&photo).unwrap();
        alike.add(&reference, &found);
        // A face only the int8 detector reports is one the f32 detector scores 0.5 or more.
        let unmatched: Vec<Detection> = found
            .into_iter()
            .filter(|f| {
                reference
                    .iter()
                    .all(|r| r.iou(f) < FaceAgreement::MATCH_IOU)
            })
            .collect();
        extra.add(&unmatched, &f32_borderline.detect(&photo).unwrap());
    }
    println!(
        "int8 YuNet on the golden photos: {} of {} reference faces ({} found), IoU mean {:.3} min {:.3}, landmarks off by {:.3} of the box width on average, {:.3} at most",
        alike.alike,
        alike.reference_faces,
        alike.other_faces,
        alike.mean_iou(),
        alike.worst_iou,
        alike.mean_landmark(),
        alike.worst_landmark
    );
    assert!(alike.reference_faces >= 25);
    assert_eq!(alike.alike, alike.reference_faces, "every reference face");
    assert!(
        alike.other_faces <= alike.reference_faces + 2,
        "extra faces"
    );
    assert_eq!(
        extra.alike, extra.reference_faces,
        "each extra face is a borderline one of the f32 detector"
    );
    assert!(alike.mean_iou() >= 0.95 && alike.worst_iou >= 0.85, "IoU");
    assert!(alike.worst_landmark <= 0.08, "landmarks");

    // LFW fold 2 with MobileFaceNet behind the int8 detector, at the threshold tests/lfw.rs uses.
    let models_dir = dir.0.display().to_string();
    let args = [
        "--models-dir",
        &models_dir,
        "--detector",
        "yunet-2023mar-int8-qdq",
        "--model",
        "mobilefacenet",
    ];
    let o = evaluate(&args, &[2], 0.264);
    println!(
        "LFW fold 2 behind the int8 detector: {} pairs, {} of {} images embedded, accuracy {:.2} %, ROC AUC {:.5}",
        o.pairs,
        o.embedded,
        o.images,
        o.accuracy * 100.0,
        o.auc
    );
    assert!(o.embedded * 100 >= o.images * 99, "{}", o.stderr);
    assert!(o.accuracy >= 0.99 && o.auc >= 0.999);

    // The configuration naming the base runs the variant, and "none" the base.
    let (models, _, stdout) = configured_models(&dir, "mobilefacenet", "");
    assert_eq!(models[0], "yunet-2023mar-int8-qdq", "{stdout}");
    assert!(
        stdout.contains(
            "detector yunet-2023mar: running its checked int8 variant yunet-2023mar-int8-qdq"
        ),
        "{stdout}"
    );
    let (models, _, _) = configured_models(&dir, "mobilefacenet", "variant = \"none\"");
    assert_eq!(models[0], "yunet-2023mar");
}

#[test]
fn a_variant_under_the_bound_or_bad_input_writes_nothing() {
    let out = TempDir::new("quantize-refused");
    let golden = data("golden/crops");
    // Each attempt fails with a message containing `expected`.
    let refused = |id: &str, crops: &Path, extra: &[&str], expected: &str| {
        let (code, _, stderr) = quantize(id, crops, &out, extra);
        assert_ne!(code, 0, "{id} {extra:?}");
        assert!(stderr.contains(expected), "{stderr}");
    };
    refused(
        "mobilefacenet",
        &golden,
        &["--min-cosine", "0.99999"],
        "under --min-cosine 0.99999: it would not recognise the same people; nothing written",
    );
    refused(
        "mobilefacenet-int8-weights",
        &golden,
        &[],
        "already a variant (of mobilefacenet)",
    );

    // Only crops of another size: named, with the count.
    let wrong_size = TempDir::new("quantize-224");
    let crop = golden_crops("japanese_face_v1_standin").remove(0);
    std::fs::copy(&crop, wrong_size.path("a.png")).unwrap();
    refused(
        "mobilefacenet",
        &wrong_size.0,
        &[],
        &format!(
            "{}: no 112x112 crops to calibrate on (1 files of other sizes",
            wrong_size.0.display()
        ),
    );
    // A corrupt image among the crops names the file.
    std::fs::write(wrong_size.path("b.png"), b"not a png").unwrap();
    refused("mobilefacenet", &wrong_size.0, &[], "b.png");
    refused(
        "mobilefacenet",
        Path::new("/nonexistent"),
        &[],
        "/nonexistent: not a folder of aligned crops",
    );
    refused(
        "yunet-2023mar",
        Path::new("/nonexistent"),
        &[],
        "/nonexistent: not a folder of photos",
    );
    refused(
        "yunet-2023mar",
        &golden,
        &["--min-agreement", "1.5"],
        "--min-agreement 1.5: a share between 0 and 1",
    );

    assert!(files_in(&out.0).is_empty(), "{:?}", files_in(&out.0));
}
