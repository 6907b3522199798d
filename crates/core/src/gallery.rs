//! Open-set matching against the enrolled people: per-person best cosine over every enrolment embedding,
//! a same-person threshold calibrated from the gallery itself, a margin rule for ambiguous faces and a
//! one-to-one assignment within a frame. Pure: embeddings in, decisions out.

use crate::embed::cosine;
use serde::Serialize;

/// How far above the most similar pair of *different* enrolled people the calibrated threshold sits.
/// Strangers resemble enrolled people about as much as enrolled people resemble each other, so the
/// highest impostor similarity seen inside the gallery is a floor for where strangers begin.
pub(crate) const CALIBRATION_HEADROOM: f32 = 0.1;
/// The calibrated threshold never exceeds this: above it even good photos of the same person fail.
pub(crate) const CALIBRATION_CEILING: f32 = 0.8;

#[derive(Debug, Clone, PartialEq)]
pub struct GalleryPerson {
    pub id: String,
    pub name: String,
    /// One L2-normalised embedding per enrolment image.
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ThresholdSource {
    /// Set in the configuration.
    Fixed,
    /// The model's default: the gallery gave no reason to raise it.
    Model,
    /// Raised above the model's default by the similarity between enrolled people.
    Calibrated,
}

/// The identity decided for one face.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The recognised person, or None for "unknown".
    pub person: Option<String>,
    /// The most similar enrolled person, recognised or not.
    pub best_guess: Option<String>,
    pub similarity: f32,
    /// Best similarity of any other person (-1 when there is none).
    pub second: f32,
    pub threshold: f32,
}

#[derive(Debug, Clone)]
pub struct Gallery {
    people: Vec<GalleryPerson>,
    threshold: f32,
    threshold_source: ThresholdSource,
    margin: f32,
}

/// The highest cosine between embeddings of two different people (None with fewer than two people).
pub fn max_impostor_similarity(people: &[GalleryPerson]) -> Option<f32> {
    let mut best: Option<f32> = None;
    for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            for ea in &a.embeddings {
                for eb in &b.embeddings {
                    let c = cosine(ea, eb);
                    best = Some(best.map_or(c, |m| m.max(c)));
                }
            }
        }
    }
    best
}

impl Gallery {
    /// `fixed`: a configured threshold; otherwise calibrated with `model_default` as the floor.
    pub fn new(
        people: Vec<GalleryPerson>,
        model_default: f32,
        fixed: Option<f32>,
        margin: f32,
    ) -> Gallery {
        let (threshold, threshold_source) = match fixed {
            Some(t) => (t, ThresholdSource::Fixed),
            None => match max_impostor_similarity(&people) {
                Some(m) if m + CALIBRATION_HEADROOM > model_default => (
                    (m + CALIBRATION_HEADROOM)
                        .min(CALIBRATION_CEILING)
                        .max(model_default),
                    ThresholdSource::Calibrated,
                ),
                _ => (model_default, ThresholdSource::Model),
            },
        };
        Gallery {
            people,
            threshold,
            threshold_source,
            margin,
        }
    }

    pub fn people(&self) -> &[GalleryPerson] {
        &self.people
    }

    pub fn threshold(&self) -> f32 {
        self.threshold
    }

    pub fn threshold_source(&self) -> ThresholdSource {
        self.threshold_source
    }

    pub fn margin(&self) -> f32 {
        self.margin
    }

    /// Each person's best similarity to `embedding`, in gallery order.
    fn person_scores(&self, embedding: &[f32]) -> Vec<f32> {
        self.people
            .iter()
            .map(|p| {
                p.embeddings
                    .iter()
                    .map(|e| cosine(e, embedding))
                    .fold(-1.0, f32::max)
            })
            .collect()
    }

    /// Decides every face of one frame together. A face is named only when its best person clears the
    /// threshold and beats the second best by the margin; when two faces want the same person the more
    /// similar one gets it and the other stays unknown (one person is never in a frame twice).
    pub fn identify(&self, faces: &[Vec<f32>]) -> Vec<Decision> {
        let mut decisions: Vec<Decision> = Vec::with_capacity(faces.len());
        let mut claims: Vec<(usize, usize, f32)> = Vec::new(); // (face, person, similarity)
        for (f, embedding) in faces.iter().enumerate() {
            let scores = self.person_scores(embedding);
            let best = (0..scores.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b]));
            let similarity = best.map_or(-1.0, |b| scores[b]);
            let second = scores
                .iter()
                .enumerate()
                .filter(|(i, _)| Some(*i) != best)
                .map(|(_, s)| *s)
                .fold(-1.0, f32::max);
            if let Some(b) = best
                && similarity >= self.threshold
                && similarity - second >= self.margin
            {
                claims.push((f, b, similarity));
            }
            decisions.push(Decision {
                person: None,
                best_guess: best.map(|b| self.people[b].id.clone()),
                similarity,
                second,
                threshold: self.threshold,
            });
        }
        claims.sort_by(|a, b| b.2.total_cmp(&a.2));
        let mut taken = vec![false; self.people.len()];
        for (f, p, _) in claims {
            if !taken[p] {
                taken[p] = true;
                decisions[f].person = Some(self.people[p].id.clone());
            }
        }
        decisions
    }
}

/// `threshold = "auto"` (calibrated from the gallery, floored at the model's default) or a number.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize, Default)]
#[serde(untagged)]
pub enum ThresholdSetting {
    Fixed(f32),
    #[default]
    #[serde(deserialize_with = "auto_keyword")]
    Auto,
}

fn auto_keyword<'de, D: serde::Deserializer<'de>>(d: D) -> Result<(), D::Error> {
    let s = <String as serde::Deserialize>::deserialize(d)?;
    if s == "auto" {
        Ok(())
    } else {
        Err(serde::de::Error::custom(format!(
            "expected \"auto\" or a number, got {s:?}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(angle_deg: f32) -> Vec<f32> {
        let a = angle_deg.to_radians();
        vec![a.cos(), a.sin()]
    }

    fn person(id: &str, angles: &[f32]) -> GalleryPerson {
        GalleryPerson {
            id: id.into(),
            name: id.into(),
            embeddings: angles.iter().map(|&a| unit(a)).collect(),
        }
    }

    #[test]
    fn threshold_is_raised_by_similar_enrolled_people_and_floored_by_the_model() {
        // cos(60 deg) = 0.5 between the two people: calibrated to 0.6.
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[60.0])],
            0.3,
            None,
            0.0,
        );
        assert!((g.threshold() - 0.6).abs() < 1e-5);
        assert_eq!(g.threshold_source(), ThresholdSource::Calibrated);
        // Dissimilar people: the model default stands.
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[170.0])],
            0.3,
            None,
            0.0,
        );
        assert_eq!(
            (g.threshold(), g.threshold_source()),
            (0.3, ThresholdSource::Model)
        );
        // Configured: taken as is.
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[10.0])],
            0.3,
            Some(0.2),
            0.0,
        );
        assert_eq!(
            (g.threshold(), g.threshold_source()),
            (0.2, ThresholdSource::Fixed)
        );
        // Near-identical people: capped.
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[1.0])],
            0.3,
            None,
            0.0,
        );
        assert_eq!(g.threshold(), CALIBRATION_CEILING);
    }

    #[test]
    fn strangers_below_threshold_are_unknown_with_a_best_guess() {
        let g = Gallery::new(
            vec![person("a", &[0.0, 5.0]), person("b", &[120.0])],
            0.5,
            None,
            0.0,
        );
        let d = g.identify(&[unit(3.0), unit(250.0)]);
        assert_eq!(d[0].person.as_deref(), Some("a"));
        assert!(
            (d[0].similarity - 1.0).abs() < 0.01,
            "best of a's two embeddings"
        );
        assert_eq!(d[1].person, None);
        assert_eq!(d[1].best_guess.as_deref(), Some("a"));
        assert!((d[1].similarity - 110f32.to_radians().cos()).abs() < 1e-5);
        assert!((d[1].second - 130f32.to_radians().cos()).abs() < 1e-5);
    }

    #[test]
    fn ambiguous_faces_stay_unknown() {
        // Equidistant between a and b (both at cos 30 deg = 0.87 from the probe).
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[60.0])],
            0.5,
            Some(0.5),
            0.05,
        );
        let d = g.identify(&[unit(30.0)]);
        assert_eq!(d[0].person, None);
        assert!(d[0].similarity >= 0.5);
    }

    #[test]
    fn one_person_is_given_to_one_face_per_frame() {
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[150.0])],
            0.5,
            Some(0.5),
            0.0,
        );
        let d = g.identify(&[unit(20.0), unit(5.0)]);
        assert_eq!(d[0].person, None, "the less similar face loses the claim");
        assert_eq!(d[1].person.as_deref(), Some("a"));
    }

    #[test]
    fn an_empty_gallery_names_nobody() {
        let g = Gallery::new(vec![], 0.4, None, 0.05);
        let d = g.identify(&[unit(0.0)]);
        assert_eq!(
            (
                d[0].person.clone(),
                d[0].best_guess.clone(),
                d[0].similarity
            ),
            (None, None, -1.0)
        );
    }
}
