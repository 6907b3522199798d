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

/// The open-set goals on LFW folds 1-2 (every person with 3+ photos alternately enrolled with 2 of
/// them or a stranger): the calibrated threshold names at least 97 % of known probes, never the
/// wrong person, and accepts at most 1 % of strangers' faces.
#[test]
fn open_set_on_lfw_folds_1_2_names_enrolled_people_and_keeps_strangers_out() {
    let (code, stdout, stderr) = common::run(
        common::face_edge()
            .args(["eval", "--json", "--model", "mobilefacenet", "--enrol", "2"])
            .arg(common::data("lfw")),
    );
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    println!("{v}");
    let calibrated = &v["rules"][0];
    assert_eq!(calibrated["rule"], "calibrated");
    let image = &calibrated["per_image"];
    let rate = |k: &str| image[k].as_f64().unwrap();
    assert!(
        rate("known_probes") >= 200.0 && rate("unknown_probes") >= 1000.0,
        "{v}"
    );
    assert!(rate("known_correct") >= 0.97, "{v}");
    assert_eq!(rate("known_wrong"), 0.0, "{v}");
    assert!(rate("unknown_accepted") <= 0.01, "{v}");
}
