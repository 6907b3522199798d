//! Enrolment from a camera, guarded against poisoning. The faces of one enrolment are saved only when
//! they are one person, when they match the person already enrolled under that id (unless the request
//! replaces the person), and when the new person could still be told apart from everybody else.
//! Pure: embeddings and the gallery in, a verdict out.

use crate::embed::cosine;
use crate::gallery::Gallery;

/// Why an enrolment saved nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EnrolmentRefused {
    #[error(
        "the frames show more than one person (frames {first} and {second}: cosine {similarity:.3}, under the model's same-person threshold {threshold:.3}); nothing was saved"
    )]
    NotOnePerson {
        first: usize,
        second: usize,
        similarity: f32,
        threshold: f32,
    },
    #[error(
        "the face does not match {person}'s enrolled photos (cosine {similarity:.3}, threshold {threshold:.3}); nothing was saved (\"replace\": true enrols the person anew)"
    )]
    NotThatPerson {
        person: String,
        similarity: f32,
        threshold: f32,
    },
    #[error(
        "the face is too similar to {other} (cosine {similarity:.3}, the gallery's threshold would be {threshold:.3}): the two could not be told apart; nothing was saved"
    )]
    TooSimilar {
        other: String,
        similarity: f32,
        threshold: f32,
    },
}

/// Checks the `faces` (L2-normalised embeddings, one per frame) of an enrolment of `person` against
/// `gallery`. `replace`: the faces replace the person's enrolled ones instead of joining them.
pub fn check_enrolment(
    person: &str,
    faces: &[Vec<f32>],
    gallery: &Gallery,
    replace: bool,
) -> Result<(), EnrolmentRefused> {
    one_person(faces, gallery.model().threshold)?;
    let existing = gallery.people().iter().find(|p| p.id == person);
    if let Some(existing) = existing.filter(|_| !replace) {
        let threshold = gallery.threshold();
        for face in faces {
            let similarity = best_similarity(face, &existing.embeddings);
            if similarity < threshold {
                return Err(EnrolmentRefused::NotThatPerson {
                    person: person.to_string(),
                    similarity,
                    threshold,
                });
            }
        }
    }
    distinguishable(person, faces, gallery, replace)
}

/// Every pair of faces at or above the model's same-person threshold; else the least similar pair.
fn one_person(faces: &[Vec<f32>], threshold: f32) -> Result<(), EnrolmentRefused> {
    let mut worst: Option<(usize, usize, f32)> = None;
    for (i, a) in faces.iter().enumerate() {
        for (j, b) in faces.iter().enumerate().skip(i + 1) {
            let c = cosine(a, b);
            if worst.is_none_or(|w| c < w.2) {
                worst = Some((i, j, c));
            }
        }
    }
    match worst {
        Some((i, j, similarity)) if similarity < threshold => Err(EnrolmentRefused::NotOnePerson {
            first: i + 1,
            second: j + 1,
            similarity,
            threshold,
        }),
        _ => Ok(()),
    }
}

/// With the faces enrolled (and the threshold recalibrated), no face of the person may reach the
/// threshold against somebody else: they would be named as each other.
fn distinguishable(
    person: &str,
    faces: &[Vec<f32>],
    gallery: &Gallery,
    replace: bool,
) -> Result<(), EnrolmentRefused> {
    let after = gallery.with_person(person, faces, replace);
    let threshold = after.threshold();
    let closest = gallery
        .people()
        .iter()
        .filter(|p| p.id != person)
        .map(|p| {
            let s = faces
                .iter()
                .map(|f| best_similarity(f, &p.embeddings))
                .fold(-1.0, f32::max);
            (p, s)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match closest {
        Some((other, similarity)) if similarity >= threshold => Err(EnrolmentRefused::TooSimilar {
            other: other.id.clone(),
            similarity,
            threshold,
        }),
        _ => Ok(()),
    }
}

fn best_similarity(face: &[f32], embeddings: &[Vec<f32>]) -> f32 {
    embeddings
        .iter()
        .map(|e| cosine(e, face))
        .fold(-1.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gallery::GalleryPerson;

    fn unit(angle_deg: f32) -> Vec<f32> {
        let a = angle_deg.to_radians();
        vec![a.cos(), a.sin()]
    }

    fn gallery() -> Gallery {
        let person = |id: &str, angle: f32| GalleryPerson {
            id: id.into(),
            name: id.into(),
            embeddings: vec![unit(angle)],
        };
        // Model threshold 0.4 (66 degrees); alice and bob far apart.
        Gallery::new(
            vec![person("alice", 0.0), person("bob", 150.0)],
            0.4,
            None,
            0.05,
        )
    }

    #[test]
    fn frames_of_one_person_are_accepted() {
        let g = gallery();
        assert_eq!(
            check_enrolment("carol", &[unit(80.0), unit(85.0)], &g, false),
            Ok(())
        );
        // More photos of alice that look like her.
        assert_eq!(
            check_enrolment("alice", &[unit(5.0), unit(-5.0)], &g, false),
            Ok(())
        );
    }

    #[test]
    fn frames_of_several_people_are_refused_naming_the_pair() {
        let e = check_enrolment(
            "carol",
            &[unit(80.0), unit(82.0), unit(170.0)],
            &gallery(),
            false,
        )
        .unwrap_err();
        let EnrolmentRefused::NotOnePerson { first, second, .. } = e else {
            panic!("{e}")
        };
        assert_eq!((first, second), (1, 3));
    }

    #[test]
    fn a_stranger_cannot_be_added_to_an_enrolled_person_unless_replacing() {
        let g = gallery();
        let stranger = [unit(80.0), unit(82.0)];
        let e = check_enrolment("alice", &stranger, &g, false).unwrap_err();
        assert!(
            matches!(e, EnrolmentRefused::NotThatPerson { ref person, .. } if person == "alice"),
            "{e}"
        );
        assert!(e.to_string().contains("nothing was saved"));
        assert_eq!(check_enrolment("alice", &stranger, &g, true), Ok(()));
    }

    #[test]
    fn a_look_alike_of_an_enrolled_person_is_refused_naming_them() {
        let e = check_enrolment("eve", &[unit(145.0), unit(147.0)], &gallery(), false).unwrap_err();
        let EnrolmentRefused::TooSimilar {
            other,
            similarity,
            threshold,
        } = e
        else {
            panic!("{e}")
        };
        assert_eq!(other, "bob");
        assert!(similarity >= threshold && similarity > 0.99);
    }
}
