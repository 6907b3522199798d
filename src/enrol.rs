//! Enrolment: turns the configured gallery (a directory per person and/or `[[person]]` entries) into the
//! store. `sync` embeds only images whose content it has not seen under the same model and settings,
//! drops people and images that left the configuration, and rewrites the store atomically.

use crate::config::{Config, EnrolPolicy, ThresholdSetting};
use crate::detect::main_face;
use crate::gallery::{Gallery, GalleryPerson, StrangerModel};
use crate::gallery::{display_name, person_id_from_folder};
use crate::image_io::{decode_rgb, expand_inputs, has_image_extension};
use crate::pipeline::FacePipeline;
use crate::store::{
    self, STORE_VERSION, StoreData, StoreError, StoreKey, StoredImage, StoredPerson,
};
use image::RgbImage;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// With `reject-ambiguous`, a second face at least this fraction of the main face's area makes the photo
/// ambiguous.
pub const AMBIGUOUS_AREA_RATIO: f32 = 0.5;

/// A person as configured: where their enrolment photos are.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonSource {
    pub id: String,
    pub name: String,
    pub images: Vec<PathBuf>,
}

/// Everything the configuration says about who is enrolled, plus warnings about what was skipped.
#[derive(Debug, Default)]
pub struct GallerySources {
    pub people: Vec<PersonSource>,
    pub warnings: Vec<String>,
}

/// Two folders of one gallery directory that become the same person id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} and {} both become person id {id:?}; rename one", first.display(), second.display())]
pub struct IdCollision {
    pub first: PathBuf,
    pub second: PathBuf,
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum GalleryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gallery: {0}")]
    Collision(#[from] IdCollision),
}

/// Photos taken by the MQTT `enroll` command live in the state directory, as a gallery directory of
/// their own.
pub fn enrolled_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("enrolled")
}

/// Reads the gallery directory and the `[[person]]` entries (globs expanded, sorted, de-duplicated).
/// A folder's person id is `person_id_from_folder` of its name and its display name `display_name` of it.
pub fn collect_sources(config: &Config) -> Result<GallerySources, IdCollision> {
    let mut out = GallerySources::default();
    let mut people: BTreeMap<String, PersonSource> = BTreeMap::new();
    // The configured gallery directory, then photos taken by the `enroll` command.
    let enrolled = enrolled_dir(&config.state_dir);
    let dirs = config
        .gallery
        .dir
        .iter()
        .cloned()
        .chain(enrolled.is_dir().then_some(enrolled));
    for dir in dirs {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                out.warnings.push(format!(
                    "{}: gallery directory unreadable: {e}",
                    dir.display()
                ));
                continue;
            }
        };
        let mut folders: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        folders.sort();
        let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
        for folder in folders {
            let name = folder
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let Some(id) = person_id_from_folder(&name) else {
                out.warnings.push(format!(
                    "{}: skipped: the folder name {name:?} gives no person id (it needs a letter or digit)",
                    folder.display()
                ));
                continue;
            };
            if let Some(first) = seen.insert(id.clone(), folder.clone()) {
                return Err(IdCollision {
                    first,
                    second: folder,
                    id,
                });
            }
            let images = expand_inputs(std::slice::from_ref(&folder));
            let entry = people.entry(id.clone()).or_insert_with(|| PersonSource {
                name: display_name(&name),
                id,
                images: vec![],
            });
            entry.images.extend(images);
        }
    }
    for p in &config.person {
        let entry = people.entry(p.id.clone()).or_insert_with(|| PersonSource {
            id: p.id.clone(),
            name: display_name(&p.id),
            images: vec![],
        });
        if let Some(name) = &p.name {
            entry.name = name.clone();
        }
        for pattern in &p.images {
            let found = expand_pattern(pattern);
            if found.is_empty() {
                out.warnings
                    .push(format!("person {:?}: {pattern}: no image matches", p.id));
            }
            entry.images.extend(found);
        }
    }
    for mut p in people.into_values() {
        p.images.sort();
        p.images.dedup();
        if p.images.is_empty() {
            out.warnings
                .push(format!("person {:?} has no enrolment images", p.id));
        }
        out.people.push(p);
    }
    Ok(out)
}

fn expand_pattern(pattern: &str) -> Vec<PathBuf> {
    let is_glob = pattern.contains(['*', '?', '[']);
    if !is_glob {
        let p = PathBuf::from(pattern);
        return if p.is_dir() {
            expand_inputs(&[p])
        } else if p.exists() {
            vec![p]
        } else {
            vec![]
        };
    }
    match glob::glob(pattern) {
        Ok(paths) => paths
            .flatten()
            .filter(|p| p.is_file() && has_image_extension(p))
            .collect(),
        Err(_) => vec![],
    }
}

/// Embeds the enrolment face of one photo, or says why the photo cannot be used.
pub fn enrol_image(
    pipeline: &mut FacePipeline,
    img: &RgbImage,
    policy: EnrolPolicy,
) -> Result<Vec<f32>, String> {
    let faces = pipeline.detector.detect(img).map_err(|e| e.to_string())?;
    let main = main_face(&faces, img.width(), img.height()).ok_or("no face found")?;
    if policy == EnrolPolicy::RejectAmbiguous && faces.len() > 1 {
        let mut areas: Vec<f32> = faces.iter().map(|f| f.area()).collect();
        areas.sort_by(|a, b| b.total_cmp(a));
        if areas[1] >= AMBIGUOUS_AREA_RATIO * areas[0] {
            return Err(format!(
                "{} faces of similar size: which one is the person is a guess (crop the photo, or set gallery.enrol_policy = \"largest\")",
                faces.len()
            ));
        }
    }
    pipeline
        .embedder
        .embed_face(img, &faces[main].landmarks)
        .map_err(|e| e.to_string())
}

/// The store key for the current models and settings.
pub fn store_key(pipeline: &FacePipeline, policy: EnrolPolicy) -> StoreKey {
    let spec = pipeline.embedder.spec();
    let options = pipeline.detector.options();
    StoreKey {
        embedder: pipeline.embedder.id().to_string(),
        weights_sha256: pipeline.embedder.weights_sha256().to_string(),
        template: spec.alignment.template,
        input_size: spec.input_size,
        detector: pipeline.detector.id().to_string(),
        detector_sha256: pipeline.detector.weights_sha256().to_string(),
        score_threshold: options.score_threshold,
        max_side: options.max_side,
        enrol_policy: match policy {
            EnrolPolicy::RejectAmbiguous => "reject-ambiguous",
            EnrolPolicy::Largest => "largest",
        }
        .to_string(),
        precision: pipeline.embedder.precision(),
    }
}

/// What a sync did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SyncReport {
    /// Images embedded (or rejected) in this run.
    pub computed: usize,
    /// Images whose stored result was reused because their content was already known.
    pub reused: usize,
    /// (person, path, reason) for every image that gave no embedding.
    pub rejected: Vec<(String, String, String)>,
    pub removed_people: Vec<String>,
    pub removed_images: usize,
    /// Why the previous store was discarded, if it was.
    pub rebuilt: Option<String>,
    pub written: bool,
}

/// Brings the store in `state_dir` in line with `sources`. `progress` gets (images done, total).
pub fn sync(
    sources: &[PersonSource],
    pipeline: &mut FacePipeline,
    policy: EnrolPolicy,
    state_dir: &Path,
    mut progress: impl FnMut(usize, usize),
) -> Result<(StoreData, SyncReport), StoreError> {
    // A state directory this process cannot write (read-only media, another user's): work in memory
    // from the store as it is, without writing it.
    let lock = match store::lock(state_dir) {
        Ok(lock) => Some(lock),
        Err(StoreError::Io { path, cause }) if is_read_only(&cause) => {
            log::warn!(
                "{}: {cause}; the gallery store is used read-only and not updated",
                path.display()
            );
            None
        }
        Err(e) => return Err(e),
    };
    let key = store_key(pipeline, policy);
    let mut report = SyncReport::default();
    let dim = pipeline.embedder.spec().output.dim;
    let previous = load_previous(state_dir, &key, dim, &mut report)?;
    // Reusable outcomes by content hash: only from a store made under the same key.
    let known: HashMap<&str, &StoredImage> = previous
        .iter()
        .filter(|old| old.key == key)
        .flat_map(|old| old.people.iter().flat_map(|p| &p.images))
        .map(|i| (i.content_sha256.as_str(), i))
        .collect();
    let total: usize = sources.iter().map(|p| p.images.len()).sum();
    let mut done = 0;
    let mut people = Vec::with_capacity(sources.len());
    let mut checkpoint = Checkpoint::new(lock.is_some(), previous.as_ref(), &key);
    for (reached, source) in sources.iter().enumerate() {
        if checkpoint.due(report.computed) {
            checkpoint.save(state_dir, &people, &sources[reached..], report.computed)?;
        }
        let mut images = Vec::with_capacity(source.images.len());
        for path in &source.images {
            let image = stored_image(path, &known, pipeline, policy, &mut report);
            if let Some(reason) = &image.rejected {
                report
                    .rejected
                    .push((source.id.clone(), image.path.clone(), reason.clone()));
            }
            images.push(image);
            done += 1;
            progress(done, total);
        }
        people.push(StoredPerson {
            id: source.id.clone(),
            name: source.name.clone(),
            images,
        });
    }
    if let Some(old) = &previous {
        count_removed(old, &people, &mut report);
    }
    let data = StoreData {
        version: STORE_VERSION,
        key,
        people,
    };
    let unchanged = report.rebuilt.is_none() && previous.as_ref() == Some(&data);
    if !unchanged && lock.is_some() {
        store::save(state_dir, &data)?;
        report.written = true;
    }
    Ok((data, report))
}

/// How often a long sync writes what it has finished, so that a restart (a power cut, systemd's start
/// timeout on a slow board) goes on from there instead of embedding every photo again.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(30);

/// Intermediate saves of a long sync: the people finished so far, and for the others what the previous
/// store (made under the same key) holds. Every entry is valid for its photo's content, so the next sync
/// reuses them whether or not this one finishes.
struct Checkpoint<'a> {
    writable: bool,
    earlier: HashMap<&'a str, &'a StoredPerson>,
    key: &'a StoreKey,
    last: Instant,
    computed_at_last: usize,
}

impl<'a> Checkpoint<'a> {
    fn new(writable: bool, previous: Option<&'a StoreData>, key: &'a StoreKey) -> Checkpoint<'a> {
        let earlier = previous
            .filter(|old| &old.key == key)
            .map(|old| old.people.iter().map(|p| (p.id.as_str(), p)).collect())
            .unwrap_or_default();
        Checkpoint {
            writable,
            earlier,
            key,
            last: Instant::now(),
            computed_at_last: 0,
        }
    }

    /// Time for a save: new embeddings since the last one and CHECKPOINT_EVERY elapsed.
    fn due(&self, computed: usize) -> bool {
        self.writable && computed > self.computed_at_last && self.last.elapsed() >= CHECKPOINT_EVERY
    }

    fn save(
        &mut self,
        state_dir: &Path,
        finished: &[StoredPerson],
        rest: &[PersonSource],
        computed: usize,
    ) -> Result<(), StoreError> {
        let waiting = rest
            .iter()
            .filter_map(|source| self.earlier.get(source.id.as_str()).copied().cloned());
        let data = StoreData {
            version: STORE_VERSION,
            key: self.key.clone(),
            people: finished.iter().cloned().chain(waiting).collect(),
        };
        store::save(state_dir, &data)?;
        log::info!(
            "gallery store: progress saved ({} of {} people done)",
            finished.len(),
            finished.len() + rest.len()
        );
        self.last = Instant::now();
        self.computed_at_last = computed;
        Ok(())
    }
}

fn is_read_only(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem)
}

/// The store as it is, if any; a corrupt one is dropped (and rebuilt), and one made under another key
/// is noted as rebuilt.
fn load_previous(
    state_dir: &Path,
    key: &StoreKey,
    dim: usize,
    report: &mut SyncReport,
) -> Result<Option<StoreData>, StoreError> {
    let loaded =
        store::load(state_dir).and_then(|previous| check_embeddings(previous, key, dim, state_dir));
    let previous = match loaded {
        Ok(previous) => previous,
        Err(StoreError::Corrupt { path, reason }) => {
            log::warn!(
                "{}: corrupt store ({reason}); rebuilding it from the enrolment images",
                path.display()
            );
            report.rebuilt = Some(format!("corrupt: {reason}"));
            None
        }
        Err(e) => return Err(e),
    };
    if let Some(old) = previous.as_ref().filter(|old| &old.key != key) {
        report.rebuilt = Some(format!(
            "made with other models or settings (embedder {})",
            old.key.embedder
        ));
    }
    Ok(previous)
}

/// A store made under these models with a valid checksum can still be forged or come from a buggy
/// build: one whose embeddings are not the embedder's `dim`-d unit vectors is corrupt, never matched.
fn check_embeddings(
    previous: Option<StoreData>,
    key: &StoreKey,
    dim: usize,
    state_dir: &Path,
) -> Result<Option<StoreData>, StoreError> {
    let Some(old) = previous.as_ref().filter(|old| &old.key == key) else {
        return Ok(previous);
    };
    let bad = old
        .people
        .iter()
        .flat_map(|p| &p.images)
        .filter_map(|i| i.embedding.as_ref().map(|e| (i, e)))
        .find(|(_, e)| {
            let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
            e.len() != dim || !(0.99..=1.01).contains(&norm)
        });
    match bad {
        Some((image, e)) => Err(StoreError::Corrupt {
            path: store::store_path(state_dir),
            reason: format!(
                "{}: a {}-d embedding where the embedder gives {dim}-d unit vectors",
                image.path,
                e.len()
            ),
        }),
        None => Ok(previous),
    }
}

/// One enrolment photo: its stored outcome when its content is `known`, else embedded now.
fn stored_image(
    path: &Path,
    known: &HashMap<&str, &StoredImage>,
    pipeline: &mut FacePipeline,
    policy: EnrolPolicy,
    report: &mut SyncReport,
) -> StoredImage {
    let path_text = path.display().to_string();
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) => {
            return StoredImage {
                path: path_text,
                content_sha256: String::new(),
                embedding: None,
                rejected: Some(format!("cannot read: {e}")),
            };
        }
    };
    let content_sha256 = crate::models::sha256_hex(&bytes);
    if let Some(hit) = known.get(content_sha256.as_str()) {
        report.reused += 1;
        return StoredImage {
            path: path_text,
            ..(*hit).clone()
        };
    }
    report.computed += 1;
    let outcome = decode_rgb(&bytes).and_then(|img| enrol_image(pipeline, &img, policy));
    let (embedding, rejected) = match outcome {
        Ok(e) => (Some(e), None),
        Err(reason) => (None, Some(reason)),
    };
    StoredImage {
        path: path_text,
        content_sha256,
        embedding,
        rejected,
    }
}

/// People and photos of the previous store that are no longer configured.
fn count_removed(old: &StoreData, people: &[StoredPerson], report: &mut SyncReport) {
    for p in &old.people {
        match people.iter().find(|n| n.id == p.id) {
            None => report.removed_people.push(p.id.clone()),
            Some(n) => {
                report.removed_images += p
                    .images
                    .iter()
                    .filter(|i| !n.images.iter().any(|j| j.path == i.path))
                    .count()
            }
        }
    }
}

/// The matcher for a store: every accepted embedding, the threshold from config or calibration.
pub fn gallery_from_store(data: &StoreData, model: StrangerModel, config: &Config) -> Gallery {
    let people = data
        .people
        .iter()
        .map(|p| GalleryPerson {
            id: p.id.clone(),
            name: p.name.clone(),
            embeddings: p
                .images
                .iter()
                .filter_map(|i| i.embedding.clone())
                .collect(),
        })
        .filter(|p| !p.embeddings.is_empty())
        .collect();
    let fixed = match config.gallery.threshold {
        ThresholdSetting::Fixed(t) => Some(t),
        ThresholdSetting::Auto => None,
    };
    Gallery::new(people, model, fixed, config.gallery.margin)
}

/// The gallery the service matches against, with the display names and what the sync did.
pub struct LoadedGallery {
    pub gallery: Gallery,
    /// Display names by person id.
    pub names: BTreeMap<String, String>,
    pub report: SyncReport,
}

/// Collects the configured people, syncs the store with them (logging what was skipped or rejected)
/// and builds the gallery: what the service does at start, on reload and after an enrolment.
/// `progress` gets (images done, total) after each image.
pub fn load_gallery(
    config: &Config,
    pipeline: &mut FacePipeline,
    progress: impl FnMut(usize, usize),
) -> Result<LoadedGallery, GalleryError> {
    let sources = collect_sources(config)?;
    for w in &sources.warnings {
        log::warn!("{w}");
    }
    let (data, report) = sync(
        &sources.people,
        pipeline,
        config.gallery.enrol_policy,
        &config.state_dir,
        progress,
    )?;
    for (person, path, reason) in &report.rejected {
        log::warn!("{path}: not enrolled for {person}: {reason}");
    }
    let gallery = gallery_from_store(
        &data,
        pipeline.embedder.spec().output.stranger_model(),
        config,
    );
    let names = data
        .people
        .iter()
        .map(|p| (p.id.clone(), p.name.clone()))
        .collect();
    Ok(LoadedGallery {
        gallery,
        names,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn person(id: &str, embedding: f32) -> StoredPerson {
        StoredPerson {
            id: id.into(),
            name: display_name(id),
            images: vec![StoredImage {
                path: format!("{id}.jpg"),
                content_sha256: format!("{id}-sha"),
                embedding: Some(vec![embedding, 0.0]),
                rejected: None,
            }],
        }
    }

    fn source(id: &str) -> PersonSource {
        PersonSource {
            id: id.into(),
            name: display_name(id),
            images: vec![PathBuf::from(format!("{id}.jpg"))],
        }
    }

    fn ids(data: &StoreData) -> Vec<&str> {
        data.people.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn a_checkpoint_keeps_the_finished_people_and_the_earlier_store_for_the_rest() {
        let dir = std::env::temp_dir().join(format!("face-edge-checkpoint-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut earlier = crate::store::tests::sample();
        earlier.people = vec![person("a", 0.1), person("b", 0.2), person("c", 0.3)];
        let key = earlier.key.clone();
        let mut checkpoint = Checkpoint::new(true, Some(&earlier), &key);
        assert!(!checkpoint.due(5), "not before CHECKPOINT_EVERY");
        checkpoint.last -= CHECKPOINT_EVERY;
        assert!(!checkpoint.due(0), "nothing new to save");
        assert!(checkpoint.due(1));
        // "a" re-embedded, "b" and "d" still to come, "c" left the configuration.
        let finished = [person("a", 0.9)];
        checkpoint
            .save(&dir, &finished, &[source("b"), source("d")], 1)
            .unwrap();
        let saved = store::load(&dir).unwrap().unwrap();
        assert_eq!(ids(&saved), ["a", "b"]);
        assert_eq!(saved.people[0], finished[0]);
        assert_eq!(saved.people[1], earlier.people[1]);
        assert_eq!(saved.key, key);
        checkpoint.last -= CHECKPOINT_EVERY;
        assert!(!checkpoint.due(1), "saved already at 1 computed");
        assert!(checkpoint.due(2));

        // An earlier store made under another key contributes nothing.
        let mut other = earlier.clone();
        other.key.embedder = "another".into();
        let mut checkpoint = Checkpoint::new(true, Some(&other), &key);
        checkpoint.save(&dir, &finished, &[source("b")], 1).unwrap();
        assert_eq!(ids(&store::load(&dir).unwrap().unwrap()), ["a"]);
        // A read-only store is never checkpointed.
        let mut read_only = Checkpoint::new(false, None, &key);
        read_only.last -= CHECKPOINT_EVERY;
        assert!(!read_only.due(10));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
