//! The gallery's persistent embedding store (`<state_dir>/gallery.json`): enrolment results keyed by the
//! model that produced them, with a checksum over the content, written atomically (temporary file,
//! fsync, rename, fsync of the directory; mode 0600) and serialised between processes by a lock file.

use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const STORE_FILE: &str = "gallery.json";
const LOCK_FILE: &str = "gallery.lock";
const MAGIC: &str = "face-edge-gallery-store";
pub const STORE_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The io::Error is a `cause`, not a `source`: the message already shows it, and a source would be
    // printed a second time by `{:#}`.
    #[error("{}: {cause}", path.display())]
    Io {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: corrupt store ({reason})", path.display())]
    Corrupt { path: PathBuf, reason: String },
}

/// Everything that decides which embedding an image gets. A store made under another key is rebuilt,
/// never mixed with new results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreKey {
    pub embedder: String,
    pub weights_sha256: String,
    pub template: [[f32; 2]; 5],
    pub input_size: [u32; 2],
    pub detector: String,
    pub detector_sha256: String,
    pub score_threshold: f32,
    pub max_side: u32,
    pub enrol_policy: String,
    /// The embedder's arithmetic (f16 embeddings differ slightly); absent in stores written before it
    /// existed, which were f32.
    #[serde(default)]
    pub precision: crate::inference::Precision,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredImage {
    pub path: String,
    pub content_sha256: String,
    /// The enrolment outcome: an embedding, or why the image was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredPerson {
    pub id: String,
    pub name: String,
    pub images: Vec<StoredImage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreData {
    pub version: u32,
    pub key: StoreKey,
    pub people: Vec<StoredPerson>,
}

pub fn store_path(state_dir: &Path) -> PathBuf {
    state_dir.join(STORE_FILE)
}

/// Reads the store; Ok(None) when there is none yet. Any damage (bad header, checksum, JSON) is
/// `Corrupt`, which callers log and answer by rebuilding.
pub fn load(state_dir: &Path) -> Result<Option<StoreData>, StoreError> {
    let path = store_path(state_dir);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(StoreError::Io { path, cause }),
    };
    decode(&bytes)
        .map(Some)
        .map_err(|reason| StoreError::Corrupt { path, reason })
}

fn decode(bytes: &[u8]) -> Result<StoreData, String> {
    let newline = bytes
        .iter()
        .position(|&b| b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| "header is not text")?;
    let body = &bytes[newline + 1..];
    let mut fields = header.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err("not a face-edge gallery store".into());
    }
    let version: u32 = fields
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or("no version")?;
    if version != STORE_VERSION {
        return Err(format!(
            "version {version}, this face-edge reads {STORE_VERSION}"
        ));
    }
    let expected = fields
        .next()
        .and_then(|f| f.strip_prefix("sha256="))
        .ok_or("no checksum")?;
    let actual = crate::models::sha256_hex(body);
    if expected != actual {
        return Err(format!(
            "checksum mismatch (truncated or modified): header {expected}, content {actual}"
        ));
    }
    serde_json::from_slice(body).map_err(|e| format!("content: {e}"))
}

fn encode(data: &StoreData) -> Vec<u8> {
    let body = serde_json::to_vec(data).expect("store serialises");
    let mut out = format!(
        "{MAGIC} {STORE_VERSION} sha256={}\n",
        crate::models::sha256_hex(&body)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

/// Replaces the store atomically: readers see the old or the new file, never a mix; a crash leaves at
/// most a temporary file, which the next save removes.
pub fn save(state_dir: &Path, data: &StoreData) -> Result<(), StoreError> {
    let result = write_atomically(state_dir, STORE_FILE, &encode(data));
    remove_stale_temporaries(state_dir);
    result
}

/// Writes `<dir>/<name>` so that readers see the old or the new content, never a mix, and a crash
/// leaves at most a temporary file: temporary file (mode 0600), fsync, rename, fsync of the directory.
pub fn write_atomically(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
    write_atomically_with_mode(dir, name, bytes, 0o600)
}

/// `write_atomically` with the new file's permission bits (before the umask).
pub fn write_atomically_with_mode(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), StoreError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |cause| StoreError::Io { path, cause }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let final_path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(bytes).map_err(io(&tmp))?;
        file.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &final_path).map_err(io(&final_path))?;
        File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Temporary files of writers that died mid-save would keep old embeddings on disk: remove them.
fn remove_stale_temporaries(state_dir: &Path) {
    let prefix = format!(".{STORE_FILE}.tmp-");
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// An exclusive advisory lock on the state directory's store, held until dropped: two syncs (a CLI run
/// and the service, say) take turns instead of interleaving.
pub struct StoreLock(#[allow(dead_code)] File);

pub fn lock(state_dir: &Path) -> Result<StoreLock, StoreError> {
    let path = state_dir.join(LOCK_FILE);
    let io = |cause| StoreError::Io {
        path: path.clone(),
        cause,
    };
    if state_dir.exists() && !state_dir.is_dir() {
        return Err(StoreError::Io {
            path: state_dir.to_path_buf(),
            cause: std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "the state directory is a file, not a directory",
            ),
        });
    }
    std::fs::create_dir_all(state_dir).map_err(|cause| StoreError::Io {
        path: state_dir.to_path_buf(),
        cause,
    })?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.lock().map_err(io)?;
    Ok(StoreLock(file))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> StoreData {
        StoreData {
            version: STORE_VERSION,
            key: StoreKey {
                embedder: "m".into(),
                weights_sha256: "00".into(),
                template: [[1.0, 2.0]; 5],
                input_size: [112, 112],
                detector: "d".into(),
                detector_sha256: "11".into(),
                score_threshold: 0.7,
                max_side: 640,
                enrol_policy: "largest".into(),
                precision: Default::default(),
            },
            people: vec![StoredPerson {
                id: "a".into(),
                name: "A".into(),
                images: vec![StoredImage {
                    path: "a.jpg".into(),
                    content_sha256: "ff".into(),
                    embedding: Some(vec![0.6, 0.8]),
                    rejected: None,
                }],
            }],
        }
    }

    #[test]
    fn round_trip_and_damage_detection() {
        let bytes = encode(&sample());
        assert_eq!(decode(&bytes).unwrap(), sample());
        assert!(
            decode(&bytes[..bytes.len() - 5])
                .unwrap_err()
                .contains("checksum")
        );
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 1;
        assert!(decode(&flipped).unwrap_err().contains("checksum"));
        assert!(decode(b"{}").is_err());
    }
}
