//! LFW View-2 folds 1-2 (1200 pairs; fold 2 under emulation) through `face-edge embed --largest --jsonl` with MobileFaceNet:
//! verification accuracy at the manifest threshold and ROC AUC, against the reference figures.

mod common;

use common::lfw::{evaluate, folds, roc_auc};

#[test]
fn roc_auc_counts_ordered_pairs() {
    assert_eq!(roc_auc(&[(0.9, true), (0.1, false)]), 1.0);
    assert_eq!(roc_auc(&[(0.1, true), (0.9, false)]), 0.0);
    assert_eq!(
        roc_auc(&[(0.5, true), (0.5, false), (0.9, true), (0.1, false)]),
        0.875
    );
}

#[test]
fn lfw_folds_1_2_with_mobilefacenet_match_the_reference() {
    let folds = folds();
    let threshold = 0.264;
    let o = evaluate(&["--model", "mobilefacenet"], &folds, threshold);
    assert!(
        o.embedded * 100 >= o.images * 99,
        "only {} of {} LFW images embedded; exit {}, stderr:\n{}",
        o.embedded,
        o.images,
        o.code,
        o.stderr
    );
    assert_eq!(
        o.code,
        if o.failed == 0 { 0 } else { 1 },
        "exit code reflects failures"
    );
    println!(
        "LFW folds {folds:?}: {} pairs, {} images embedded ({} without a face), accuracy {:.2} % at {threshold}, ROC AUC {:.5} (reference, folds 1-2: 99.50 %, 0.99964)",
        o.pairs,
        o.embedded,
        o.failed,
        o.accuracy * 100.0,
        o.auc
    );
    assert!(o.accuracy >= 0.990, "accuracy {}", o.accuracy);
    assert!(o.auc >= 0.999, "ROC AUC {}", o.auc);
}
