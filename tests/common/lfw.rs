//! LFW View-2 folds 1-2 (../shared/data/lfw): the pairs, and verification through `face-edge embed
//! --largest --jsonl` with any embedder.

use super::{data, face_edge, run, vec_f32};
use face_edge::embed::cosine;
use std::collections::HashMap;
use std::path::PathBuf;

pub struct Pair {
    pub a: String,
    pub b: String,
    pub same: bool,
}

/// Every pair of pairs.txt in file order: 600 per fold (300 same-person, then 300 different).
pub fn pairs() -> Vec<Pair> {
    let text = std::fs::read_to_string(data("lfw/pairs.txt")).unwrap();
    let image = |name: &str, i: &str| format!("{name}/{name}_{:04}.jpg", i.parse::<u32>().unwrap());
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            match f.len() {
                3 => Some(Pair {
                    a: image(f[0], f[1]),
                    b: image(f[0], f[2]),
                    same: true,
                }),
                4 => Some(Pair {
                    a: image(f[0], f[1]),
                    b: image(f[2], f[3]),
                    same: false,
                }),
                _ => None,
            }
        })
        .collect()
}

/// Area under the ROC curve: the probability that a random same-person pair scores above a random
/// different-person pair (ties count half).
pub fn roc_auc(scores: &[(f32, bool)]) -> f64 {
    let pos: Vec<f32> = scores.iter().filter(|s| s.1).map(|s| s.0).collect();
    let neg: Vec<f32> = scores.iter().filter(|s| !s.1).map(|s| s.0).collect();
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / (pos.len() * neg.len()) as f64
}

/// Which 600-pair folds of pairs.txt to evaluate: `FACE_EDGE_TEST_LFW_FOLDS` ("1,2", "2"...), else both;
/// under emulation fold 2 alone, since embedding the 1583 images of both takes about 15 minutes of two
/// cores there (the ARM numerics themselves are checked crop by crop by the golden and
/// cross-architecture tests). Fold 2 rather than 1: fold 1 alone sits exactly on the 99.0 % bound on
/// x86-64 too (99.00 %), fold 2 does not (100 %), so the bound still catches a real regression.
pub fn folds() -> Vec<usize> {
    let chosen = std::env::var("FACE_EDGE_TEST_LFW_FOLDS")
        .unwrap_or_else(|_| if super::emulated() { "2" } else { "1,2" }.to_string());
    chosen
        .split(',')
        .map(|f| {
            f.trim()
                .parse()
                .expect("FACE_EDGE_TEST_LFW_FOLDS: fold numbers 1 or 2")
        })
        .collect()
}

/// What one embedder scored on the chosen folds.
pub struct Outcome {
    pub pairs: usize,
    pub images: usize,
    pub embedded: usize,
    /// Images in which no face was found.
    pub failed: usize,
    /// Highest exit code of the embed processes.
    pub code: i32,
    pub stderr: String,
    pub accuracy: f64,
    pub auc: f64,
}

/// Embeds the images of `folds` with `face-edge embed --largest --jsonl` plus `model_args` (one process
/// per CPU) and scores every pair at `threshold`; an image without a face makes its pairs "different".
pub fn evaluate(model_args: &[&str], folds: &[usize], threshold: f32) -> Outcome {
    let lfw = data("lfw");
    let pairs: Vec<Pair> = pairs()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| folds.contains(&(i / 600 + 1)))
        .map(|(_, p)| p)
        .collect();
    assert_eq!(pairs.len(), 600 * folds.len());
    let mut images: Vec<PathBuf> = pairs
        .iter()
        .flat_map(|p| [lfw.join(&p.a), lfw.join(&p.b)])
        .collect();
    images.sort();
    images.dedup();
    let runs = embed_all(model_args, &images);
    let mut embeddings: HashMap<String, Vec<f32>> = HashMap::new();
    let mut failed = 0;
    for line in runs.iter().flat_map(|r| r.1.lines()) {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let rel = v["path"]
            .as_str()
            .unwrap()
            .strip_prefix(&format!("{}/", lfw.display()))
            .unwrap()
            .to_string();
        if v["error"].is_null() {
            let faces = v["faces"].as_array().unwrap();
            assert_eq!(faces.len(), 1, "--largest keeps one face");
            assert_eq!(faces[0]["landmarks"].as_array().unwrap().len(), 5);
            embeddings.insert(rel, vec_f32(&faces[0]["embedding"]));
        } else {
            failed += 1;
        }
    }
    let mut scores = Vec::new();
    let mut correct = 0;
    for p in &pairs {
        let score = match (embeddings.get(&p.a), embeddings.get(&p.b)) {
            (Some(a), Some(b)) => cosine(a, b),
            _ => -1.0,
        };
        correct += usize::from((score >= threshold) == p.same);
        scores.push((score, p.same));
    }
    Outcome {
        pairs: pairs.len(),
        images: images.len(),
        embedded: embeddings.len(),
        failed,
        code: runs.iter().map(|r| r.0).max().unwrap(),
        stderr: runs.iter().map(|r| r.2.as_str()).collect(),
        accuracy: correct as f64 / pairs.len() as f64,
        auc: roc_auc(&scores),
    }
}

/// `face-edge embed --largest --jsonl` over `images`, split across one process per CPU. Returns (exit
/// code, stdout, stderr) per process.
fn embed_all(model_args: &[&str], images: &[PathBuf]) -> Vec<(i32, String, String)> {
    let processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = images.len().div_ceil(processes);
    std::thread::scope(|scope| {
        let runs: Vec<_> = images
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    run(face_edge()
                        .args(["embed", "--largest", "--jsonl"])
                        .args(model_args)
                        .args(part))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}
