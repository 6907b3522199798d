//! LFW View-2 folds 1-2 (1200 pairs; fold 2 under emulation) through `face-edge embed --largest --jsonl` with MobileFaceNet:
//! verification accuracy at the manifest threshold and ROC AUC, against the reference figures.

mod common;

use common::{data, face_edge, run, vec_f32};
use face_edge::embed::cosine;
use std::collections::HashMap;

struct Pair {
    a: String,
    b: String,
    same: bool,
}

fn pairs() -> Vec<Pair> {
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
fn roc_auc(scores: &[(f32, bool)]) -> f64 {
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

#[test]
fn roc_auc_counts_ordered_pairs() {
    assert_eq!(roc_auc(&[(0.9, true), (0.1, false)]), 1.0);
    assert_eq!(roc_auc(&[(0.1, true), (0.9, false)]), 0.0);
    assert_eq!(
        roc_auc(&[(0.5, true), (0.5, false), (0.9, true), (0.1, false)]),
        0.875
    );
}

/// Which 600-pair folds of pairs.txt to evaluate: `FACE_EDGE_TEST_LFW_FOLDS` ("1,2", "2"...), else both;
/// under emulation fold 2 alone, since embedding the 1583 images of both takes about 15 minutes of two
/// cores there (the ARM numerics themselves are checked crop by crop by the golden and
/// cross-architecture tests). Fold 2 rather than 1: fold 1 alone sits exactly on the 99.0 % bound on
/// x86-64 too (99.00 %), fold 2 does not (100 %), so the bound still catches a real regression.
fn folds() -> Vec<usize> {
    let chosen = std::env::var("FACE_EDGE_TEST_LFW_FOLDS")
        .unwrap_or_else(|_| if common::emulated() { "2" } else { "1,2" }.to_string());
    chosen
        .split(',')
        .map(|f| {
            f.trim()
                .parse()
                .expect("FACE_EDGE_TEST_LFW_FOLDS: fold numbers 1 or 2")
        })
        .collect()
}

/// `face-edge embed --largest --jsonl` over `images`, split across one process per CPU. Returns (exit
/// code, stdout, stderr) per process.
fn embed_all(images: &[std::path::PathBuf]) -> Vec<(i32, String, String)> {
    let processes = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = images.len().div_ceil(processes);
    std::thread::scope(|scope| {
        let runs: Vec<_> = images
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    run(face_edge()
                        .args(["embed", "--model", "mobilefacenet", "--largest", "--jsonl"])
                        .args(part))
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

#[test]
fn lfw_folds_1_2_with_mobilefacenet_match_the_reference() {
    let lfw = data("lfw");
    let folds = folds();
    let pairs: Vec<Pair> = pairs()
        .into_iter()
        .enumerate()
        .filter(|(i, _)| folds.contains(&(i / 600 + 1)))
        .map(|(_, p)| p)
        .collect();
    let mut images: Vec<std::path::PathBuf> = pairs
        .iter()
        .flat_map(|p| [lfw.join(&p.a), lfw.join(&p.b)])
        .collect();
    images.sort();
    images.dedup();
    let mut embeddings: HashMap<String, Vec<f32>> = HashMap::new();
    let mut failed = 0;
    let runs = embed_all(&images);
    let stdout: String = runs.iter().map(|r| r.1.as_str()).collect();
    let stderr: String = runs.iter().map(|r| r.2.as_str()).collect();
    let code = runs.iter().map(|r| r.0).max().unwrap();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("each line is JSON");
        let path = v["path"].as_str().unwrap();
        let rel = path
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
    assert!(
        embeddings.len() * 100 >= images.len() * 99,
        "only {} of {} LFW images embedded; exit {code}, stderr:\n{stderr}",
        embeddings.len(),
        images.len()
    );
    assert_eq!(
        code,
        if failed == 0 { 0 } else { 1 },
        "exit code reflects failures"
    );

    let threshold = 0.264;
    let mut scores = Vec::new();
    let mut correct = 0;
    assert_eq!(pairs.len(), 600 * folds.len());
    for p in &pairs {
        // An image without a face scores -1: the pair counts as "different".
        let score = match (embeddings.get(&p.a), embeddings.get(&p.b)) {
            (Some(a), Some(b)) => cosine(a, b),
            _ => -1.0,
        };
        correct += usize::from((score >= threshold) == p.same);
        scores.push((score, p.same));
    }
    let accuracy = correct as f64 / pairs.len() as f64;
    let auc = roc_auc(&scores);
    println!(
        "LFW folds {folds:?}: {} pairs, {} images embedded ({failed} without a face), accuracy {:.2} % at {threshold}, ROC AUC {auc:.5} (reference, folds 1-2: 99.50 %, 0.99964)",
        pairs.len(),
        embeddings.len(),
        accuracy * 100.0
    );
    assert!(accuracy >= 0.990, "accuracy {accuracy}");
    assert!(auc >= 0.999, "ROC AUC {auc}");
}
