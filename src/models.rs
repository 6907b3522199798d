//! The model catalog: built-in and user manifests, the models directory that holds the weights, checksum
//! verification on load, and `fetch` (download + verify + atomic install). This is IO; the pure contract
//! lives in `manifest`.

use face_edge_core::ModelError;
use face_edge_core::detect::{DetectSettings, Detector};
use face_edge_core::embed::Embedder;
use face_edge_core::inference::{Kernels, Precision, VerifiedWeights};
use face_edge_core::manifest::{Manifest, ManifestError, Role, checked_int8_variants};
use face_edge_core::pipeline::FacePipeline;
use sha1::Digest as _;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Environment variable naming the models directory (after `--models-dir`, before the config file).
pub const MODELS_DIR_ENV: &str = "FACE_EDGE_MODELS_DIR";
/// Where the packaged service keeps weights when nothing else is said.
pub const DEFAULT_MODELS_DIR: &str = "/var/lib/face-edge/models";
/// The product's embedder.
pub const DEFAULT_EMBEDDER: &str = "japanese-face-v1";
pub const DEFAULT_DETECTOR: &str = "yunet-2023mar";

/// Manifests compiled into the binary, so an installed face-edge knows its models without extra files.
const BUILTIN: &[(&str, &str)] = &[
    (
        "yunet-2023mar",
        include_str!("../models/yunet-2023mar.toml"),
    ),
    (
        "mobilefacenet",
        include_str!("../models/mobilefacenet.toml"),
    ),
    (
        "japanese-face-v1",
        include_str!("../models/japanese-face-v1.toml"),
    ),
    (
        "japanese-face-v1-standin",
        include_str!("../models/japanese-face-v1-standin.toml"),
    ),
    // Variants made by models/quantize.py (README: Smaller and int8 models).
    (
        "mobilefacenet-int8-weights",
        include_str!("../models/mobilefacenet-int8-weights.toml"),
    ),
    (
        "mobilefacenet-int8-qdq",
        include_str!("../models/mobilefacenet-int8-qdq.toml"),
    ),
    (
        "japanese-face-v1-standin-int8-weights",
        include_str!("../models/japanese-face-v1-standin-int8-weights.toml"),
    ),
];

/// Why a model could not be found, read, verified or fetched, or (`Model`) why its bytes are unusable.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("unknown model {id:?}; known models: {known}")]
    Unknown { id: String, known: String },
    #[error("{}: weights of {id:?} not found ({hint})", path.display())]
    Missing {
        id: String,
        path: PathBuf,
        hint: String,
    },
    #[error("{}: {what} mismatch: expected {expected}, file has {actual} (wrong or corrupted file; delete it and fetch again)", path.display())]
    Checksum {
        path: PathBuf,
        what: &'static str,
        expected: String,
        actual: String,
    },
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("model {id:?} has no download URL in its manifest; copy {weights} into {} yourself", dir.display())]
    NoUrl {
        id: String,
        weights: String,
        dir: PathBuf,
    },
    #[error(
        "model {id:?} is not redistributable; read its terms (`face-edge models fetch {id}` shows them) and pass --accept-license to download it"
    )]
    LicenseNotAccepted { id: String },
    #[error("downloading {id:?} from {url} failed: {message}")]
    Download {
        id: String,
        url: String,
        message: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CatalogError + '_ {
    move |cause| CatalogError::Io {
        path: path.to_path_buf(),
        cause,
    }
}

/// What `models list` reports for one model.
#[derive(Debug)]
pub enum WeightsStatus {
    Verified { sha256: String, size: u64 },
    Missing,
    Bad(String),
}

/// Which detector or embedder runs (`Catalog::detector_for`, `Catalog::embedder_for`).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelChoice {
    pub id: String,
    /// Set when a checked variant runs in place of the configured model.
    pub replaces: Option<Replacement>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    /// The configured model.
    pub base: String,
    pub role: Role,
    /// The variant's recorded check (`Variant::check`: mean cosine to the base for an embedder,
    /// agreement on faces for a detector).
    pub check: f32,
}

impl ModelChoice {
    /// The configured model itself.
    pub fn named(id: &str) -> ModelChoice {
        ModelChoice {
            id: id.to_string(),
            replaces: None,
        }
    }

    /// One line for logs and command output when a variant replaces the configured model.
    pub fn note(&self) -> Option<String> {
        self.replaces.as_ref().map(|r| {
            let check = match r.role {
                Role::Embedder => format!("mean cosine {:.4} to it on the check crops", r.check),
                Role::Detector => {
                    format!("{:.1} % of faces found alike on the check photos", 100.0 * r.check)
                }
            };
            format!(
                "{} {}: running its checked int8 variant {} ({check}); models.variant = \"none\" runs {} itself",
                role_name(r.role),
                r.base,
                self.id,
                r.base
            )
        })
    }
}

#[derive(Debug, Clone)]
pub struct Catalog {
    models_dir: PathBuf,
    manifests: BTreeMap<String, Manifest>,
    /// Each manifest's text as written (comments included), from which variants' manifests are made.
    texts: BTreeMap<String, String>,
}

impl Catalog {
    /// Built-in manifests, overridden or extended by `*.toml` manifests in the models directory.
    pub fn load(models_dir: &Path) -> Result<Catalog, CatalogError> {
        let mut manifests = BTreeMap::new();
        let mut texts = BTreeMap::new();
        for (id, text) in BUILTIN {
            let m = Manifest::parse(text, &format!("builtin manifest {id}"))?;
            texts.insert(m.id.clone(), text.to_string());
            manifests.insert(m.id.clone(), m);
        }
        if let Ok(entries) = fs::read_dir(models_dir) {
            let mut paths: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "toml"))
                .collect();
            paths.sort();
            for path in paths {
                let (m, text) = manifest_and_text(&path)?;
                texts.insert(m.id.clone(), text);
                manifests.insert(m.id.clone(), m);
            }
        }
        Ok(Catalog {
            models_dir: models_dir.to_path_buf(),
            manifests,
            texts,
        })
    }

    /// `--models-dir`, then `FACE_EDGE_MODELS_DIR` (both resolved by the CLI), then the config's value,
    /// then the packaged default.
    pub fn resolve_dir(cli_or_env: Option<&Path>, config: Option<&Path>) -> PathBuf {
        cli_or_env
            .or(config)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_MODELS_DIR))
    }

    pub fn models_dir(&self) -> &Path {
        &self.models_dir
    }

    pub fn manifests(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.values()
    }

    pub fn get(&self, id: &str) -> Result<&Manifest, CatalogError> {
        self.manifests.get(id).ok_or_else(|| CatalogError::Unknown {
            id: id.to_string(),
            known: self
                .manifests
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    pub fn get_role(&self, id: &str, role: Role) -> Result<&Manifest, CatalogError> {
        let m = self.get(id)?;
        if m.role != role {
            return Err(ModelError::WrongRole {
                id: id.to_string(),
                actual: role_name(m.role),
                wanted: role_name(role),
            }
            .into());
        }
        Ok(m)
    }

    /// The manifest of `id` as written, comments included.
    pub fn manifest_text(&self, id: &str) -> Option<&str> {
        self.texts.get(id).map(String::as_str)
    }

    pub fn weights_path(&self, m: &Manifest) -> PathBuf {
        self.models_dir.join(&m.weights)
    }

    /// Reads the weights and checks them against every checksum the manifest gives.
    pub fn read_verified(&self, m: &Manifest) -> Result<VerifiedWeights, CatalogError> {
        let path = self.weights_path(m);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let hint = if m.url.is_some() {
                    format!("run `face-edge models fetch {}`", m.id)
                } else if let Some(v) = &m.variant {
                    format!(
                        "make it from {} with `{} --models-dir {}`",
                        v.base,
                        v.made_by,
                        self.models_dir.display()
                    )
                } else {
                    format!("copy {} into {}", m.weights, self.models_dir.display())
                };
                return Err(CatalogError::Missing {
                    id: m.id.clone(),
                    path,
                    hint,
                });
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let sha256 = verify_checksums(m, &bytes, &path)?;
        Ok(VerifiedWeights {
            path,
            bytes,
            sha256,
        })
    }

    /// The embedder that runs for `configured`: with `allow_variant` and f32, the best checked
    /// int8-qdq variant of it whose weights verify (`checked_int8_variants`); else `configured`.
    pub fn embedder_for(
        &self,
        configured: &str,
        precision: Precision,
        allow_variant: bool,
    ) -> ModelChoice {
        self.model_for(configured, allow_variant && precision == Precision::F32)
    }

    /// The detector that runs for `configured`: the same rule without the precision (a detector
    /// always runs in f32 or in its int8 variant).
    pub fn detector_for(&self, configured: &str, allow_variant: bool) -> ModelChoice {
        self.model_for(configured, allow_variant)
    }

    fn model_for(&self, configured: &str, allow_variant: bool) -> ModelChoice {
        if !allow_variant {
            return ModelChoice::named(configured);
        }
        checked_int8_variants(self.manifests(), configured)
            .into_iter()
            .find(|m| match self.status(m) {
                WeightsStatus::Verified { .. } => true,
                WeightsStatus::Missing => {
                    log::warn!("{}: weights {} missing; not running it", m.id, m.weights);
                    false
                }
                WeightsStatus::Bad(e) => {
                    log::warn!("{}: {e}; not running it", m.id);
                    false
                }
            })
            .map_or(ModelChoice::named(configured), |m| ModelChoice {
                id: m.id.clone(),
                replaces: Some(Replacement {
                    base: configured.to_string(),
                    role: m.role,
                    check: m
                        .variant
                        .as_ref()
                        .and_then(|v| v.check(m.role))
                        .unwrap_or_default(),
                }),
            })
    }

    pub fn status(&self, m: &Manifest) -> WeightsStatus {
        match self.read_verified(m) {
            Ok(w) => WeightsStatus::Verified {
                sha256: w.sha256,
                size: w.bytes.len() as u64,
            },
            Err(CatalogError::Missing { .. }) => WeightsStatus::Missing,
            Err(e) => WeightsStatus::Bad(e.to_string()),
        }
    }

    /// Downloads the weights from the manifest URL, verifies them and installs them atomically
    /// (temporary file, fsync, rename). Nothing is left behind on failure. `progress` gets
    /// (bytes so far, total if known).
    pub fn fetch(
        &self,
        m: &Manifest,
        accept_license: bool,
        mut progress: impl FnMut(u64, Option<u64>),
    ) -> Result<PathBuf, CatalogError> {
        if !m.license.redistributable && !accept_license {
            return Err(CatalogError::LicenseNotAccepted { id: m.id.clone() });
        }
        let url = m.url.clone().ok_or_else(|| CatalogError::NoUrl {
            id: m.id.clone(),
            weights: m.weights.clone(),
            dir: self.models_dir.clone(),
        })?;
        let download_err = |message: String| CatalogError::Download {
            id: m.id.clone(),
            url: url.clone(),
            message,
        };
        fs::create_dir_all(&self.models_dir).map_err(io_err(&self.models_dir))?;
        let final_path = self.weights_path(m);
        let part_path = self.models_dir.join(format!(".{}.part", m.weights));

        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(20)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .build()
            .into();
        let response = agent
            .get(&url)
            .call()
            .map_err(|e| download_err(e.to_string()))?;
        let body = response.into_body();
        let total = body.content_length();
        let mut reader = body.into_reader();

        let result = (|| {
            let mut file = File::create(&part_path).map_err(io_err(&part_path))?;
            let mut bytes = Vec::with_capacity(total.unwrap_or(0).min(1 << 30) as usize);
            let mut chunk = vec![0u8; 1 << 16];
            loop {
                let n = reader
                    .read(&mut chunk)
                    .map_err(|e| download_err(e.to_string()))?;
                if n == 0 {
                    break;
                }
                bytes.extend_from_slice(&chunk[..n]);
                file.write_all(&chunk[..n]).map_err(io_err(&part_path))?;
                progress(bytes.len() as u64, total);
            }
            // A checksum error names the URL the bytes came from.
            verify_checksums(m, &bytes, Path::new(&url))?;
            file.sync_all().map_err(io_err(&part_path))?;
            fs::rename(&part_path, &final_path).map_err(io_err(&final_path))?;
            if let Ok(dir) = File::open(&self.models_dir) {
                let _ = dir.sync_all();
            }
            Ok(final_path.clone())
        })();
        if result.is_err() {
            let _ = fs::remove_file(&part_path);
        }
        result
    }
}

/// Reads and parses a manifest file (an unreadable file is reported as a parse error naming it).
pub fn manifest_from_file(path: &Path) -> Result<Manifest, ManifestError> {
    manifest_and_text(path).map(|(m, _)| m)
}

fn manifest_and_text(path: &Path) -> Result<(Manifest, String), ManifestError> {
    let name = path.display().to_string();
    let text = fs::read_to_string(path).map_err(|e| ManifestError::Parse {
        source_name: name.clone(),
        message: e.to_string(),
    })?;
    Manifest::parse(&text, &name).map(|m| (m, text))
}

/// Environment variable that switches face-edge's own kernels off (`FACE_EDGE_KERNELS=tract`), for
/// comparing them with tract's in `face-edge bench`.
pub const KERNELS_ENV: &str = "FACE_EDGE_KERNELS";

/// The kernels plans use: face-edge's unless `FACE_EDGE_KERNELS=tract`.
pub fn kernels_from_env() -> Kernels {
    match std::env::var(KERNELS_ENV) {
        Ok(v) if v == "tract" => Kernels::Tract,
        _ => Kernels::FaceEdge,
    }
}

/// Reads, verifies and loads a detector from the catalog.
pub fn load_detector(
    catalog: &Catalog,
    id: &str,
    settings: &DetectSettings,
) -> Result<Detector, CatalogError> {
    let manifest = catalog.get_role(id, Role::Detector)?;
    let weights = catalog.read_verified(manifest)?;
    Ok(Detector::new(
        manifest,
        &weights,
        settings,
        kernels_from_env(),
    )?)
}

/// Reads, verifies and loads the embedder `id`, running in `precision`.
pub fn load_embedder(
    catalog: &Catalog,
    id: &str,
    precision: Precision,
) -> Result<Embedder, CatalogError> {
    let manifest = catalog.get_role(id, Role::Embedder)?;
    let weights = catalog.read_verified(manifest)?;
    Ok(Embedder::load(
        manifest,
        &weights,
        precision,
        kernels_from_env(),
    )?)
}

/// Detector and embedder together, as the service and `gallery sync` use them.
pub fn load_pipeline(
    catalog: &Catalog,
    detector_id: &str,
    settings: &DetectSettings,
    embedder_id: &str,
    precision: Precision,
) -> Result<FacePipeline, CatalogError> {
    Ok(FacePipeline {
        detector: load_detector(catalog, detector_id, settings)?,
        embedder: load_embedder(catalog, embedder_id, precision)?,
    })
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Detector => "detector",
        Role::Embedder => "embedder",
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

/// Git's blob id: sha1 over `"blob <len>\0"` followed by the content.
pub fn git_blob_sha1_hex(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks every checksum the manifest gives; returns the sha256 of the bytes.
fn verify_checksums(m: &Manifest, bytes: &[u8], path: &Path) -> Result<String, CatalogError> {
    let sha256 = sha256_hex(bytes);
    if let Some(expected) = &m.sha256
        && !expected.eq_ignore_ascii_case(&sha256)
    {
        return Err(CatalogError::Checksum {
            path: path.to_path_buf(),
            what: "sha256",
            expected: expected.clone(),
            actual: sha256,
        });
    }
    if let Some(expected) = &m.git_blob_sha1 {
        let actual = git_blob_sha1_hex(bytes);
        if !expected.eq_ignore_ascii_case(&actual) {
            return Err(CatalogError::Checksum {
                path: path.to_path_buf(),
                what: "git blob id",
                expected: expected.clone(),
                actual,
            });
        }
    }
    Ok(sha256)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_blob_id_matches_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(
            git_blob_sha1_hex(b"hello\n"),
            "ce013625030ba8dba906f756967f9e9ca394464a"
        );
    }

    #[test]
    fn builtin_manifests_parse_and_include_the_seed_model() {
        let c = Catalog::load(Path::new("/nonexistent")).unwrap();
        let m = c.get_role(DEFAULT_EMBEDDER, Role::Embedder).unwrap();
        assert_eq!(m.weights, "efficientnetv2_arcface.onnx");
        assert!(c.get_role(DEFAULT_DETECTOR, Role::Embedder).is_err());
        let err = c.get("nope").unwrap_err().to_string();
        assert!(err.contains("mobilefacenet"), "{err}");
    }
}
