//! `models list|verify|fetch`, checksum and contract refusals, and `compare`, on the real weights.

mod common;

use common::{TempDir, data, face_edge, models_dir, run};
use face_edge::models::sha256_hex;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::Path;

const MFN_SHA: &str = "f055d9c9a4d826d198c42666590fdefa0fdc1374a75ccb6306c3d1b1bf8f74c5";

/// A models directory with the real mobilefacenet weights linked in and one extra manifest.
fn models_dir_with(manifest: &str) -> TempDir {
    let dir = TempDir::new("models");
    std::os::unix::fs::symlink(
        models_dir().join("mobilefacenet.onnx"),
        dir.path("mobilefacenet.onnx"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        models_dir().join("yunet_2023mar.onnx"),
        dir.path("yunet_2023mar.onnx"),
    )
    .unwrap();
    std::fs::write(dir.path("extra.toml"), manifest).unwrap();
    dir
}

fn mobilefacenet_manifest(id: &str) -> String {
    include_str!("../models/mobilefacenet.toml")
        .replace("id = \"mobilefacenet\"", &format!("id = \"{id}\""))
}

fn embed_with(dir: &TempDir, model: &str) -> (i32, String, String) {
    run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["embed", "--model", model])
        .arg(data("photos/probes/obama1.jpg")))
}

#[test]
fn a_model_whose_input_disagrees_with_its_manifest_is_refused() {
    let manifest = mobilefacenet_manifest("wrong-input")
        .replace("input_size = [112, 112]", "input_size = [224, 224]");
    let dir = models_dir_with(&manifest);
    let (code, _, stderr) = embed_with(&dir, "wrong-input");
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("input shape is 1x3x112x112 but the manifest says 1x3x224x224"),
        "{stderr}"
    );
}

#[test]
fn a_model_whose_output_disagrees_with_its_manifest_is_refused() {
    let manifest = mobilefacenet_manifest("wrong-output").replace("dim = 128", "dim = 512");
    let dir = models_dir_with(&manifest);
    let (code, _, stderr) = embed_with(&dir, "wrong-output");
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("output shape") && stderr.contains("512 values"),
        "{stderr}"
    );
}

#[test]
fn a_checksum_mismatch_names_the_file_and_both_sums() {
    let wrong = "0".repeat(64);
    let dir = models_dir_with(&mobilefacenet_manifest("tampered").replace(MFN_SHA, &wrong));
    let (code, _, stderr) = embed_with(&dir, "tampered");
    assert_eq!(code, 78);
    assert!(
        stderr.contains("mobilefacenet.onnx")
            && stderr.contains("sha256 mismatch")
            && stderr.contains(MFN_SHA),
        "{stderr}"
    );
    let (code, stdout, _) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["models", "verify", "tampered"]));
    assert_eq!(code, 1);
    assert!(stdout.contains("tampered: FAILED"), "{stdout}");
}

#[test]
fn the_seed_model_missing_is_a_clear_error_with_the_fix() {
    let dir = models_dir_with(&mobilefacenet_manifest("unused"));
    let (code, _, stderr) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["embed"]) // default model: japanese-face-v1
        .arg(data("photos/probes/obama1.jpg")));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("efficientnetv2_arcface.onnx")
            && stderr.contains("face-edge models fetch japanese-face-v1"),
        "{stderr}"
    );
}

#[test]
fn a_missing_variant_names_the_command_that_makes_it() {
    let dir = models_dir_with(&mobilefacenet_manifest("unused"));
    let (code, _, stderr) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["embed", "--model", "mobilefacenet-int8-weights"])
        .arg(data("photos/probes/obama1.jpg")));
    assert_eq!(code, 78, "{stderr}");
    assert!(
        stderr.contains("mobilefacenet.int8-weights.onnx")
            && stderr.contains(
                "python3 models/quantize.py models/mobilefacenet.toml --method int8-weights"
            ),
        "{stderr}"
    );
}

/// `embed --save-crops` writes exactly what the embedder saw: embedding a saved crop with `--aligned`
/// gives the face's embedding again.
#[test]
fn saved_crops_are_what_the_embedder_saw() {
    let dir = TempDir::new("crops");
    let crops = dir.path("crops");
    let embeddings = |cmd: &mut std::process::Command| {
        let (code, stdout, stderr) = run(cmd);
        assert_eq!(code, 0, "{stderr}");
        let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        v["faces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| common::vec_f32(&f["embedding"]))
            .collect::<Vec<_>>()
    };
    let faces = embeddings(
        face_edge()
            .args([
                "embed",
                "--model",
                "mobilefacenet",
                "--jsonl",
                "--save-crops",
            ])
            .arg(&crops)
            .arg(data("photos/probes/two_people.jpg")),
    );
    assert_eq!(faces.len(), 2);
    for (i, face) in faces.iter().enumerate() {
        let crop = crops.join(format!("two_people.{}.png", i + 1));
        assert_eq!(image::image_dimensions(&crop).unwrap(), (112, 112));
        let again = embeddings(
            face_edge()
                .args(["embed", "--model", "mobilefacenet", "--jsonl", "--aligned"])
                .arg(&crop),
        );
        let c = face_edge::embed::cosine(face, &again[0]);
        assert!(c > 0.99999, "face {}: cosine {c}", i + 1);
    }
}

#[test]
fn list_and_verify_report_the_real_models() {
    let (code, stdout, _) = run(face_edge().args(["models", "list"]));
    assert_eq!(code, 0);
    let line = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{stdout}"))
            .to_string()
    };
    assert!(line("mobilefacenet").contains(" ok "));
    assert!(line("yunet-2023mar").contains(" ok "));
    assert!(
        line("japanese-face-v1").contains("missing")
            && line("japanese-face-v1").contains("not redistributable")
    );
    let (code, stdout, _) = run(face_edge().args(["models", "verify"]));
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("mobilefacenet: ok (") && stdout.contains(MFN_SHA),
        "{stdout}"
    );
    assert!(stdout.contains("japanese-face-v1: not present"));
}

/// Serves `body` to `requests` HTTP GETs on a free loopback port; returns the port.
fn serve(body: Vec<u8>, requests: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            stream.write_all(head.as_bytes()).unwrap();
            stream.write_all(&body).unwrap();
        }
    });
    port
}

fn fetch_manifest(id: &str, url: &str, redistributable: bool) -> String {
    mobilefacenet_manifest(id)
        .replace(
            "weights = \"mobilefacenet.onnx\"",
            &format!("weights = \"{id}.onnx\"\nurl = \"{url}\""),
        )
        .replace(
            "redistributable = true",
            &format!("redistributable = {redistributable}"),
        )
}

#[test]
fn fetch_downloads_verifies_and_installs_atomically() {
    let weights = std::fs::read(models_dir().join("mobilefacenet.onnx")).unwrap();
    assert_eq!(sha256_hex(&weights), MFN_SHA);
    let port = serve(weights.clone(), 1);
    let dir = models_dir_with(&fetch_manifest(
        "served",
        &format!("http://127.0.0.1:{port}/m.onnx"),
        true,
    ));
    let (code, stdout, stderr) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["models", "fetch", "served"]));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("installed and verified"), "{stdout}");
    assert!(stderr.contains("100%"), "progress shown: {stderr}");
    assert_eq!(std::fs::read(dir.path("served.onnx")).unwrap(), weights);
    // The fetched model is usable.
    let (code, _, stderr) = embed_with(&dir, "served");
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn fetch_of_wrong_bytes_leaves_nothing_behind() {
    let port = serve(b"<html>not a model</html>".to_vec(), 1);
    let dir = models_dir_with(&fetch_manifest(
        "served",
        &format!("http://127.0.0.1:{port}/m.onnx"),
        true,
    ));
    let (code, _, stderr) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["models", "fetch", "served"]));
    assert_eq!(code, 78);
    assert!(stderr.contains("sha256 mismatch"), "{stderr}");
    let left: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().contains("served.onnx")),
        "{left:?}"
    );
}

#[test]
fn fetch_without_network_is_a_clear_error() {
    // A port that was free a moment ago: connection refused, as with no route to the internet.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/m.onnx");
    let dir = models_dir_with(&fetch_manifest("offline", &url, true));
    let (code, _, stderr) = run(face_edge()
        .env("FACE_EDGE_MODELS_DIR", &dir.0)
        .args(["models", "fetch", "offline"]));
    assert_eq!(code, 78);
    assert!(
        stderr.contains(&format!("downloading \"offline\" from {url} failed")),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
}

#[test]
fn fetching_the_seed_model_shows_its_terms_and_needs_consent() {
    let dir = TempDir::new("seed");
    let (code, _, stderr) = run(face_edge().env("FACE_EDGE_MODELS_DIR", &dir.0).args([
        "models",
        "fetch",
        "japanese-face-v1",
    ]));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("permission is needed to use or redistribute"),
        "terms shown: {stderr}"
    );
    assert!(stderr.contains("--accept-license"), "{stderr}");
    assert!(!Path::new(&dir.path("efficientnetv2_arcface.onnx")).exists());
}

#[test]
fn a_not_redistributable_model_downloads_once_accepted() {
    let weights = std::fs::read(models_dir().join("mobilefacenet.onnx")).unwrap();
    let port = serve(weights, 1);
    let dir = models_dir_with(&fetch_manifest(
        "licensed",
        &format!("http://127.0.0.1:{port}/m.onnx"),
        false,
    ));
    let (code, _, stderr) = run(face_edge().env("FACE_EDGE_MODELS_DIR", &dir.0).args([
        "models",
        "fetch",
        "licensed",
        "--accept-license",
    ]));
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("Trained MobileFaceNet weights"),
        "terms shown before download: {stderr}"
    );
}

#[test]
fn compare_decides_at_the_manifest_threshold() {
    let probe = |p: &str| data(&format!("photos/{p}"));
    let (code, stdout, stderr) = run(face_edge()
        .args(["compare", "--model", "mobilefacenet", "--json"])
        .arg(probe("gallery/obama/obama.jpg"))
        .arg(probe("probes/obama1.jpg")));
    assert_eq!(code, 0, "{stderr}");
    let same: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(same["same_person"], true);
    assert_eq!(same["threshold"].as_f64().unwrap() as f32, 0.264);
    assert!(
        same["display"].is_null(),
        "mobilefacenet has no display calibration"
    );

    let (_, stdout, _) = run(face_edge()
        .args(["compare", "--model", "mobilefacenet"])
        .arg(probe("gallery/obama/obama.jpg"))
        .arg(probe("gallery/biden/biden.jpg")));
    assert!(stdout.contains("different people"), "{stdout}");

    // The stand-in carries FACE01's display polynomial.
    let (code, stdout, stderr) = run(face_edge()
        .args(["compare", "--model", "japanese-face-v1-standin", "--json"])
        .arg(probe("gallery/obama/obama.jpg"))
        .arg(probe("probes/obama1.jpg")));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let c = v["cosine"].as_f64().unwrap();
    let pct = v["display"]["value"].as_f64().unwrap();
    assert!(
        (pct - (-23.71 * c * c + 49.98 * c + 73.69).clamp(0.0, 100.0)).abs() < 1e-3,
        "{v}"
    );
    assert_eq!(v["display"]["unit"], "%");
}

#[test]
fn compare_with_a_faceless_image_fails_naming_it() {
    let dir = TempDir::new("cmp");
    image::DynamicImage::new_rgb8(50, 50)
        .save(dir.path("blank.png"))
        .unwrap();
    let (code, _, stderr) = run(face_edge()
        .args(["compare", "--model", "mobilefacenet"])
        .arg(data("photos/probes/obama1.jpg"))
        .arg(dir.path("blank.png")));
    assert_eq!(code, 1);
    assert!(stderr.contains("blank.png: no face found"), "{stderr}");
}
