//! Open-set evaluation: split a labelled photo set into enrolled people (some photos enrolled, the rest
//! probed) and strangers (only probed), then count how often known probes are named correctly and how
//! often strangers are accepted as somebody. Pure: labels and embeddings in, rates out.

use crate::gallery::{Gallery, GalleryPerson};
use crate::track::{VOTE_WINDOW, vote};
use serde::Serialize;
use std::collections::BTreeMap;

/// Which photos enrol whom and which are probes.
#[derive(Debug, Clone, PartialEq)]
pub struct Split<K> {
    /// person -> enrolment items
    pub enrolled: BTreeMap<String, Vec<K>>,
    /// (item, Some(person) for an enrolled person's probe, None for a stranger)
    pub probes: Vec<(K, Option<String>)>,
    /// The same probes grouped by who is in them: one visit per person, as a camera would see them
    /// walk by.
    pub visits: Vec<(Vec<K>, Option<String>)>,
}

/// People with more than `enrol` items alternate (in name order) between enrolled (their first `enrol`
/// items enrol them, the rest are probes) and strangers (all items are probes); people with fewer items
/// are strangers. Deterministic, so runs compare.
pub fn split<K: Clone>(people: &BTreeMap<String, Vec<K>>, enrol: usize) -> Split<K> {
    let mut out = Split {
        enrolled: BTreeMap::new(),
        probes: vec![],
        visits: vec![],
    };
    let mut candidates = 0;
    for (person, items) in people {
        let eligible = items.len() > enrol;
        let enrolled = eligible && candidates % 2 == 0;
        candidates += usize::from(eligible);
        let (probes, truth) = if enrolled {
            out.enrolled.insert(person.clone(), items[..enrol].to_vec());
            (&items[enrol..], Some(person.clone()))
        } else {
            (&items[..], None)
        };
        out.probes
            .extend(probes.iter().map(|k| (k.clone(), truth.clone())));
        out.visits.push((probes.to_vec(), truth));
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct OpenSetRates {
    pub threshold: f32,
    pub known_probes: usize,
    pub unknown_probes: usize,
    /// Known probes named as the right person.
    pub known_correct: f64,
    /// Known probes named as somebody else.
    pub known_wrong: f64,
    /// Strangers named as an enrolled person.
    pub unknown_accepted: f64,
}

/// Runs every probe embedding through `gallery` one face at a time.
pub fn evaluate(gallery: &Gallery, probes: &[(Vec<f32>, Option<String>)]) -> OpenSetRates {
    rates(
        gallery,
        probes.iter().map(|(embedding, truth)| {
            let decision = gallery.identify(std::slice::from_ref(embedding)).remove(0);
            (truth, decision.person)
        }),
    )
}

/// Counts (truth, named) outcomes.
fn rates<'a>(
    gallery: &Gallery,
    outcomes: impl Iterator<Item = (&'a Option<String>, Option<String>)>,
) -> OpenSetRates {
    let (mut known, mut unknown, mut correct, mut wrong, mut accepted) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    for (truth, named) in outcomes {
        match (truth, named) {
            (Some(t), Some(p)) => {
                known += 1;
                if *t == p { correct += 1 } else { wrong += 1 }
            }
            (Some(_), None) => known += 1,
            (None, Some(_)) => {
                unknown += 1;
                accepted += 1;
            }
            (None, None) => unknown += 1,
        }
    }
    let rate = |n: usize, d: usize| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    OpenSetRates {
        threshold: gallery.threshold(),
        known_probes: known,
        unknown_probes: unknown,
        known_correct: rate(correct, known),
        known_wrong: rate(wrong, known),
        unknown_accepted: rate(accepted, unknown),
    }
}

/// Runs every visit of at least `votes` faces through `gallery` and the tracker's vote (the first
/// `VOTE_WINDOW` faces of the visit): a visit is named when `votes` of its faces name the same person
/// and nobody else as often.
pub fn evaluate_visits(
    gallery: &Gallery,
    visits: &[(Vec<Vec<f32>>, Option<String>)],
    votes: usize,
) -> OpenSetRates {
    let decided: Vec<(Option<String>, &Option<String>)> = visits
        .iter()
        .filter(|(faces, _)| faces.len() >= votes.max(1))
        .map(|(faces, truth)| {
            let decisions: Vec<Option<String>> = faces
                .iter()
                .take(VOTE_WINDOW)
                .map(|f| gallery.identify(std::slice::from_ref(f)).remove(0).person)
                .collect();
            (vote(decisions.iter().map(Option::as_deref), votes), truth)
        })
        .collect();
    rates(
        gallery,
        decided.iter().map(|(named, truth)| (*truth, named.clone())),
    )
}

/// Gallery people from enrolment embeddings (person -> embeddings).
pub fn gallery_people(enrolled: &BTreeMap<String, Vec<Vec<f32>>>) -> Vec<GalleryPerson> {
    enrolled
        .iter()
        .filter(|(_, e)| !e.is_empty())
        .map(|(id, e)| GalleryPerson {
            id: id.clone(),
            name: id.clone(),
            embeddings: e.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_alternates_eligible_people_and_keeps_the_rest_as_strangers() {
        let people: BTreeMap<String, Vec<u32>> = [
            ("a", vec![1, 2, 3]),
            ("b", vec![4, 5, 6]),
            ("c", vec![7]),
            ("d", vec![8, 9, 10, 11]),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let s = split(&people, 2);
        assert_eq!(s.enrolled.keys().collect::<Vec<_>>(), vec!["a", "d"]);
        assert_eq!(s.enrolled["d"], vec![8, 9]);
        let known: Vec<u32> = s
            .probes
            .iter()
            .filter(|p| p.1.is_some())
            .map(|p| p.0)
            .collect();
        let strangers: Vec<u32> = s
            .probes
            .iter()
            .filter(|p| p.1.is_none())
            .map(|p| p.0)
            .collect();
        assert_eq!(known, vec![3, 10, 11]);
        assert_eq!(strangers, vec![4, 5, 6, 7]);
    }

    #[test]
    fn rates_count_right_wrong_and_accepted() {
        let people = vec![
            GalleryPerson {
                id: "a".into(),
                name: "a".into(),
                embeddings: vec![vec![1.0, 0.0]],
            },
            GalleryPerson {
                id: "b".into(),
                name: "b".into(),
                embeddings: vec![vec![0.0, 1.0]],
            },
        ];
        let g = Gallery::new(people, 0.5, Some(0.5), 0.0);
        let probes = vec![
            (vec![1.0, 0.1], Some("a".to_string())),  // right
            (vec![0.1, 1.0], Some("a".to_string())),  // wrong (named b)
            (vec![-1.0, 0.0], Some("b".to_string())), // missed
            (vec![0.9, 0.2], None),                   // stranger accepted
            (vec![-1.0, -1.0], None),                 // stranger rejected
        ];
        let r = evaluate(&g, &probes);
        assert_eq!((r.known_probes, r.unknown_probes), (3, 2));
        assert!(
            (r.known_correct - 1.0 / 3.0).abs() < 1e-9 && (r.known_wrong - 1.0 / 3.0).abs() < 1e-9
        );
        assert_eq!(r.unknown_accepted, 0.5);
    }
}
