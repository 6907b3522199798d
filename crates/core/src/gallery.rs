//! Open-set matching against the enrolled people: per-person best cosine over every enrolment embedding,
//! a same-person threshold calibrated from the gallery itself and the model's impostor statistics, a margin rule for ambiguous faces and a
//! one-to-one assignment within a frame. Pure: embeddings in, decisions out.

use crate::embed::cosine;
use serde::Serialize;

/// The share of strangers' faces the calibrated threshold lets through (per face image, against the
/// whole gallery) if impostor similarities were normal; their real tail is a little heavier, and on
/// LFW folds 1-2 this aim gives 0.8 % (README, "Matching").
pub const STRANGER_RATE: f64 = 0.008;
/// How much the model's own impostor statistics weigh, counted in gallery pairs: a household of two
/// people (four pairs) is judged mostly by the model, a gallery of nine (144 pairs) mostly by itself.
const PRIOR_PAIRS: f64 = 50.0;
/// The calibrated threshold never exceeds this: above it even good photos of the same person fail.
pub(crate) const CALIBRATION_CEILING: f32 = 0.8;

/// What an embedder's similarities between *different* people look like: its same-person threshold
/// (the calibrated threshold's floor) and the mean and spread of its impostor similarities.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StrangerModel {
    pub threshold: f32,
    pub impostor_mean: f32,
    pub impostor_sd: f32,
}

impl From<f32> for StrangerModel {
    /// Without measured statistics: impostors centred on 0 with the threshold three spreads above.
    fn from(threshold: f32) -> StrangerModel {
        StrangerModel {
            threshold,
            impostor_mean: 0.0,
            impostor_sd: threshold.abs() / 3.0,
        }
    }
}

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
    model: StrangerModel,
    threshold: f32,
    threshold_source: ThresholdSource,
    margin: f32,
}

/// Every cosine between embeddings of two different people.
pub fn impostor_similarities(people: &[GalleryPerson]) -> Vec<f32> {
    let mut out = vec![];
    for (i, a) in people.iter().enumerate() {
        for b in &people[i + 1..] {
            for ea in &a.embeddings {
                out.extend(b.embeddings.iter().map(|eb| cosine(ea, eb)));
            }
        }
    }
    out
}

/// The person id a gallery folder's name gives: accents and other scripts folded to ASCII
/// (transliterated), lower-cased, every run of characters other than letters, digits and '-' turned
/// into one '_', no '_' at either end, at most 64 characters. "Alice Smith" -> "alice_smith",
/// "Zoë O'Neil" -> "zoe_o_neil". None when nothing is left (a name of symbols only).
pub fn person_id_from_folder(name: &str) -> Option<String> {
    let folded = deunicode::deunicode(name).to_ascii_lowercase();
    let mut id = String::with_capacity(folded.len());
    for c in folded.chars() {
        if c.is_ascii_alphanumeric() || c == '-' {
            id.push(c);
        } else if !id.is_empty() && !id.ends_with('_') {
            id.push('_');
        }
    }
    let id = id.trim_end_matches('_');
    let id: String = id.chars().take(64).collect();
    let id = id.trim_end_matches('_').to_string();
    id.chars().any(|c| c.is_ascii_alphanumeric()).then_some(id)
}

/// The name people read (events' `name`, Home Assistant's entity names) for a gallery folder or a
/// `[[person]]` without a name: the text as written, except that one written like an id
/// (`kit_harington`) reads as words (`Kit Harington`), so Home Assistant shows a name and not an id.
pub fn display_name(folder_or_id: &str) -> String {
    if person_id_from_folder(folder_or_id).as_deref() != Some(folder_or_id) {
        return folder_or_id.to_string();
    }
    folder_or_id
        .split('_')
        .map(|word| {
            let mut chars = word.chars();
            chars.next().map_or(String::new(), |first| {
                first.to_ascii_uppercase().to_string() + chars.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The highest cosine between embeddings of two different people (None with fewer than two people).
pub fn max_impostor_similarity(people: &[GalleryPerson]) -> Option<f32> {
    impostor_similarities(people).into_iter().reduce(f32::max)
}

/// The threshold a stranger's face clears with probability `STRANGER_RATE` against every embedding
/// of the gallery: impostor similarities are taken as normal, their mean and spread estimated from the
/// gallery's own pairs of different people (look-alike households raise both) blended with the model's
/// figures; floored at the model's threshold, capped at `CALIBRATION_CEILING`.
pub fn calibrated_threshold(people: &[GalleryPerson], model: StrangerModel) -> f32 {
    let pairs = impostor_similarities(people);
    let n = pairs.len() as f64;
    let (mean0, sd0) = (model.impostor_mean as f64, model.impostor_sd as f64);
    let (mean, variance) = if pairs.is_empty() {
        (mean0, sd0 * sd0)
    } else {
        let m = pairs.iter().map(|&c| c as f64).sum::<f64>() / n;
        let v = pairs.iter().map(|&c| (c as f64 - m).powi(2)).sum::<f64>() / n;
        let mean = (n * m + PRIOR_PAIRS * mean0) / (n + PRIOR_PAIRS);
        let variance = (n * (v + (m - mean).powi(2))
            + PRIOR_PAIRS * (sd0 * sd0 + (mean0 - mean).powi(2)))
            / (n + PRIOR_PAIRS);
        (mean, variance)
    };
    let embeddings = people
        .iter()
        .map(|p| p.embeddings.len())
        .sum::<usize>()
        .max(1);
    let z = upper_quantile(STRANGER_RATE / embeddings as f64);
    ((mean + z * variance.sqrt()) as f32)
        .clamp(model.threshold, CALIBRATION_CEILING.max(model.threshold))
}

/// The z with P(Z > z) = `p` for a standard normal Z (0 < p < 0.5), by bisection on the tail.
fn upper_quantile(p: f64) -> f64 {
    let tail = |z: f64| 0.5 * erfc(z / std::f64::consts::SQRT_2);
    let (mut lo, mut hi) = (0.0f64, 12.0f64);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if tail(mid) > p { lo = mid } else { hi = mid }
    }
    0.5 * (lo + hi)
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below 1.2e-7).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.26551223
        + t * (1.00002368
            + t * (0.37409196
                + t * (0.09678418
                    + t * (-0.18628806
                        + t * (0.27886807
                            + t * (-1.13520398
                                + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

impl Gallery {
    /// `fixed`: a configured threshold; otherwise calibrated from the gallery and `model`.
    pub fn new(
        people: Vec<GalleryPerson>,
        model: impl Into<StrangerModel>,
        fixed: Option<f32>,
        margin: f32,
    ) -> Gallery {
        let model = model.into();
        let (threshold, threshold_source) = match fixed {
            Some(t) => (t, ThresholdSource::Fixed),
            None => {
                let t = calibrated_threshold(&people, model);
                if t > model.threshold {
                    (t, ThresholdSource::Calibrated)
                } else {
                    (model.threshold, ThresholdSource::Model)
                }
            }
        };
        Gallery {
            people,
            model,
            threshold,
            threshold_source,
            margin,
        }
    }

    /// The embedder's figures the threshold was calibrated with.
    pub fn model(&self) -> StrangerModel {
        self.model
    }

    /// This gallery with `faces` enrolled for `person` (added to their photos, or replacing them),
    /// recalibrated unless the threshold is fixed.
    pub fn with_person(&self, person: &str, faces: &[Vec<f32>], replace: bool) -> Gallery {
        let mut people = self.people.clone();
        let index = people
            .iter()
            .position(|p| p.id == person)
            .unwrap_or_else(|| {
                people.push(GalleryPerson {
                    id: person.to_string(),
                    name: person.to_string(),
                    embeddings: vec![],
                });
                people.len() - 1
            });
        if replace {
            people[index].embeddings.clear();
        }
        people[index].embeddings.extend(faces.iter().cloned());
        let fixed = (self.threshold_source == ThresholdSource::Fixed).then_some(self.threshold);
        Gallery::new(people, self.model, fixed, self.margin)
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
    fn folder_names_become_ids_by_the_slug_rule() {
        for (folder, id) in [
            ("Alice Smith", "alice_smith"),
            ("KL", "kl"),
            ("alice", "alice"),
            ("  Zoë  O'Neil ", "zoe_o_neil"),
            ("José-María", "jose-maria"),
            ("Renée__(2019)", "renee_2019"),
            ("Ærøskøbing", "aeroskobing"),
        ] {
            assert_eq!(
                person_id_from_folder(folder).as_deref(),
                Some(id),
                "{folder}"
            );
        }
        // Other scripts are transliterated; the result is a valid id.
        let japanese = person_id_from_folder("山田 花子").unwrap();
        assert!(crate::events::is_valid_id(&japanese), "{japanese}");
        assert_eq!(person_id_from_folder("!!! ???"), None);
        assert_eq!(person_id_from_folder(&"a ".repeat(60)).unwrap().len(), 63);
    }

    #[test]
    fn folders_named_like_ids_read_as_words() {
        for (folder, name) in [
            ("kit_harington", "Kit Harington"),
            ("obama", "Obama"),
            ("jose-maria_2", "Jose-maria 2"),
            ("Kit Harington", "Kit Harington"),
            ("rose LESLIE", "rose LESLIE"),
            ("Zoë", "Zoë"),
        ] {
            assert_eq!(display_name(folder), name, "{folder}");
        }
    }

    #[test]
    fn the_normal_tail_is_inverted_accurately() {
        for (p, z) in [(0.025, 1.959964), (0.001, 3.090232), (0.008, 2.408916)] {
            assert!(
                (upper_quantile(p) - z).abs() < 1e-4,
                "{p}: {}",
                upper_quantile(p)
            );
        }
    }

    #[test]
    fn one_person_is_judged_by_the_model_alone() {
        let model = StrangerModel {
            threshold: 0.1,
            impostor_mean: 0.05,
            impostor_sd: 0.1,
        };
        // One embedding: z for 0.8 % over one comparison.
        let t = calibrated_threshold(&[person("a", &[0.0])], model);
        assert!((t - (0.05 + 0.1 * 2.408916)).abs() < 1e-4, "{t}");
        // Two embeddings: twice the chances to be matched, so a higher bar.
        let two = calibrated_threshold(&[person("a", &[0.0, 10.0])], model);
        assert!(two > t);
    }

    #[test]
    fn look_alike_households_raise_the_threshold_and_dissimilar_ones_keep_the_model_floor() {
        let model = StrangerModel::from(0.3);
        // Five people along their own axes (impostor cosines 0): the model floor stands.
        let axis = |i: usize, lean: f32| {
            let mut v = vec![lean, 0.0, 0.0, 0.0, 0.0, 0.0];
            v[i + 1] = 1.0;
            let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.into_iter().map(|x| x / n).collect::<Vec<f32>>()
        };
        let people = |lean: f32| -> Vec<GalleryPerson> {
            (0..5)
                .map(|i| GalleryPerson {
                    id: format!("p{i}"),
                    name: format!("p{i}"),
                    embeddings: vec![axis(i, lean)],
                })
                .collect()
        };
        let g = Gallery::new(people(0.0), model, None, 0.0);
        assert_eq!(
            (g.threshold(), g.threshold_source()),
            (0.3, ThresholdSource::Model)
        );
        // Five look-alikes leaning on a shared axis (impostor cosines 0.2, then 0.39): calibrated above the
        // model, more so the more alike they are, up to the ceiling.
        let alike = Gallery::new(people(0.5), model, None, 0.0);
        assert_eq!(alike.threshold_source(), ThresholdSource::Calibrated);
        let twins = Gallery::new(people(0.8), model, None, 0.0);
        assert!(
            0.3 < alike.threshold() && alike.threshold() < twins.threshold(),
            "{} {}",
            alike.threshold(),
            twins.threshold()
        );
        assert!(twins.threshold() <= CALIBRATION_CEILING);
        // Configured: taken as is.
        let g = Gallery::new(
            vec![person("a", &[0.0]), person("b", &[10.0])],
            model,
            Some(0.2),
            0.0,
        );
        assert_eq!(
            (g.threshold(), g.threshold_source()),
            (0.2, ThresholdSource::Fixed)
        );
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
