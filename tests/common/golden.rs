//! The golden aligned crops and detections of ../shared/data/golden, and embedding crops through
//! `face-edge embed --aligned`.

use super::{data, read_json, run, vec_f32};
use face_edge::detect::Detection;

/// The reference faces of one image of golden/detections.json (`images[path]`).
pub fn golden_faces(image: &serde_json::Value) -> Vec<Detection> {
    image["faces"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            let b = vec_f32(&f["box"]);
            let l: Vec<Vec<f32>> = f["landmarks"]
                .as_array()
                .unwrap()
                .iter()
                .map(vec_f32)
                .collect();
            Detection {
                bbox: [b[0], b[1], b[2], b[3]],
                score: f["score"].as_f64().unwrap() as f32,
                landmarks: std::array::from_fn(|k| [l[k][0], l[k][1]]),
            }
        })
        .collect()
}

/// The golden crops of `key`'s model, as paths.
pub fn golden_crops(key: &str) -> Vec<String> {
    let golden = read_json("golden/embeddings.json");
    golden["images"]
        .as_object()
        .unwrap()
        .values()
        .map(|g| {
            let rel = g[key]["crop"].as_str().unwrap();
            data(&format!("golden/{rel}")).display().to_string()
        })
        .collect()
}

/// `embed --aligned --jsonl` of `crops`: (exit code, embeddings, stderr).
pub fn embed_aligned(
    mut cmd: std::process::Command,
    id: &str,
    precision: &str,
    crops: &[String],
) -> (i32, Vec<Vec<f32>>, String) {
    cmd.args([
        "embed",
        "--aligned",
        "--jsonl",
        "--model",
        id,
        "--precision",
        precision,
    ])
    .args(crops);
    let (code, stdout, stderr) = run(&mut cmd);
    let embeddings = stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            vec_f32(&v["faces"][0]["embedding"])
        })
        .collect();
    (code, embeddings, stderr)
}

/// Cosine of each pair of embeddings, with their mean and minimum.
pub fn agreement(a: &[Vec<f32>], b: &[Vec<f32>]) -> (Vec<f32>, f32, f32) {
    let cosines: Vec<f32> = a
        .iter()
        .zip(b)
        .map(|(x, y)| face_edge::embed::cosine(x, y))
        .collect();
    let mean = cosines.iter().sum::<f32>() / cosines.len() as f32;
    let min = cosines.iter().copied().fold(1.0, f32::min);
    (cosines, mean, min)
}
