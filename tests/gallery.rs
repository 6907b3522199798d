//! Gallery enrolment, store maintenance, erasure and identification on the real photos and models.

mod common;

use common::{TempDir, catalog, data, face_edge, run};
use face_edge::config::{Config, EnrolPolicy};
use face_edge::detect::DetectSettings;
use face_edge::enrol::{PersonSource, SyncReport, collect_sources, sync};
use face_edge::inference::Precision;
use face_edge::pipeline::FacePipeline;
use face_edge::store::{self, StoreData};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn pipeline(embedder: &str) -> FacePipeline {
    face_edge::models::load_pipeline(
        &catalog(),
        "yunet-2023mar",
        &DetectSettings::default(),
        embedder,
        Precision::F32,
    )
    .unwrap()
}

fn photo(rel: &str) -> PathBuf {
    data(&format!("photos/gallery/{rel}"))
}

/// A gallery directory of copies of the shared photos: `(person, [photo under photos/gallery])`.
fn gallery_dir(tmp: &TempDir, people: &[(&str, &[&str])]) -> PathBuf {
    let root = tmp.path("gallery");
    for (person, photos) in people {
        std::fs::create_dir_all(root.join(person)).unwrap();
        for p in *photos {
            let name = p.replace('/', "_");
            std::fs::copy(photo(p), root.join(person).join(name)).unwrap();
        }
    }
    root
}

fn sources(root: &Path) -> Vec<PersonSource> {
    let mut config = Config::default();
    config.gallery.dir = Some(root.to_path_buf());
    let s = collect_sources(&config).unwrap();
    assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    s.people
}

fn do_sync(root: &Path, state: &Path, p: &mut FacePipeline) -> (StoreData, SyncReport) {
    sync(
        &sources(root),
        p,
        EnrolPolicy::RejectAmbiguous,
        state,
        |_, _| {},
    )
    .unwrap()
}

fn summary(data: &StoreData) -> Vec<(String, usize)> {
    data.people
        .iter()
        .map(|p| {
            (
                p.id.clone(),
                p.images.iter().filter(|i| i.embedding.is_some()).count(),
            )
        })
        .collect()
}

fn owned(v: &[(&str, usize)]) -> Vec<(String, usize)> {
    v.iter().map(|(a, n)| (a.to_string(), *n)).collect()
}

/// True when any file under `dir` contains `embedding` as stored text or as raw little-endian floats.
fn state_dir_contains(dir: &Path, embedding: &[f32]) -> bool {
    let text: Vec<String> = embedding[..4]
        .iter()
        .map(|v| serde_json::to_string(v).unwrap())
        .collect();
    let text = text.join(",");
    let raw: Vec<u8> = embedding[..4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    walk(dir).iter().any(|f| {
        let bytes = std::fs::read(f).unwrap();
        bytes.windows(text.len()).any(|w| w == text.as_bytes())
            || bytes.windows(raw.len()).any(|w| w == raw)
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()))
        } else {
            out.push(e.path())
        }
    }
    out
}

#[test]
fn sync_recomputes_only_what_changed_and_forgets_what_left() {
    let tmp = TempDir::new("sync");
    let state = tmp.path("state");
    let root = gallery_dir(
        &tmp,
        &[
            ("biden", &["biden/biden.jpg", "biden/biden2.jpg"]),
            ("obama", &["obama/obama.jpg", "obama/obama2.jpg"]),
            ("rose_leslie", &["rose_leslie/img1.jpg"]),
        ],
    );
    let mut p = pipeline("mobilefacenet");

    let (data, r) = do_sync(&root, &state, &mut p);
    assert_eq!((r.computed, r.reused, r.written), (5, 0, true));
    assert_eq!(
        summary(&data),
        owned(&[("biden", 2), ("obama", 2), ("rose_leslie", 1)])
    );

    let (_, r) = do_sync(&root, &state, &mut p);
    assert_eq!(
        (r.computed, r.reused, r.written),
        (0, 5, false),
        "nothing changed"
    );

    // Add an image.
    std::fs::copy(
        photo("rose_leslie/img2.jpg"),
        root.join("rose_leslie/img2.jpg"),
    )
    .unwrap();
    let (data, r) = do_sync(&root, &state, &mut p);
    assert_eq!((r.computed, r.reused), (1, 5));
    assert_eq!(summary(&data)[2], ("rose_leslie".to_string(), 2));

    // Remove an image: its embedding leaves the state directory.
    let obama2 = data.people[1]
        .images
        .iter()
        .find(|i| i.path.ends_with("obama_obama2.jpg"))
        .unwrap()
        .embedding
        .clone()
        .unwrap();
    std::fs::remove_file(root.join("obama/obama_obama2.jpg")).unwrap();
    let (data, r) = do_sync(&root, &state, &mut p);
    assert_eq!((r.computed, r.removed_images), (0, 1));
    assert_eq!(summary(&data)[1], ("obama".to_string(), 1));
    assert!(
        !state_dir_contains(&state, &obama2),
        "removed image's embedding erased"
    );

    // Rename a person: same photos, no new embeddings.
    std::fs::rename(root.join("biden"), root.join("joe_biden")).unwrap();
    let (data, r) = do_sync(&root, &state, &mut p);
    assert_eq!(
        (r.computed, r.removed_people.clone()),
        (0, vec!["biden".to_string()])
    );
    assert_eq!(
        summary(&data),
        owned(&[("joe_biden", 2), ("obama", 1), ("rose_leslie", 2)])
    );

    // Remove a person: every one of their embeddings is gone from every file.
    let rose: Vec<Vec<f32>> = data.people[2]
        .images
        .iter()
        .map(|i| i.embedding.clone().unwrap())
        .collect();
    assert!(
        state_dir_contains(&state, &rose[0]),
        "the search does find stored vectors"
    );
    std::fs::remove_dir_all(root.join("rose_leslie")).unwrap();
    let (data, r) = do_sync(&root, &state, &mut p);
    assert_eq!(r.removed_people, vec!["rose_leslie".to_string()]);
    assert_eq!(summary(&data), owned(&[("joe_biden", 2), ("obama", 1)]));
    for e in &rose {
        assert!(
            !state_dir_contains(&state, e),
            "removed person's embedding erased"
        );
    }
    assert_eq!(
        store::load(&state).unwrap().unwrap(),
        data,
        "what sync returns is what is stored"
    );

    // Switch the embedder: the store is rebuilt, never mixed.
    let mut standin = pipeline("japanese-face-v1-standin");
    let (data, r) = do_sync(&root, &state, &mut standin);
    assert_eq!(r.computed, 3);
    assert!(r.rebuilt.as_deref().unwrap().contains("other models"));
    assert_eq!(data.key.embedder, "japanese-face-v1-standin");
    assert!(
        data.people
            .iter()
            .flat_map(|p| &p.images)
            .all(|i| i.embedding.as_ref().unwrap().len() == 512)
    );

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(store::store_path(&state))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(
        walk(&state).len(),
        2,
        "only the store and its lock remain: {:?}",
        walk(&state)
    );
}

#[test]
fn a_corrupt_store_is_rebuilt_from_the_images() {
    let tmp = TempDir::new("corrupt");
    let state = tmp.path("state");
    let root = gallery_dir(
        &tmp,
        &[
            ("obama", &["obama/obama.jpg"]),
            ("biden", &["biden/biden.jpg"]),
        ],
    );
    let mut p = pipeline("mobilefacenet");
    let (good, _) = do_sync(&root, &state, &mut p);
    let path = store::store_path(&state);
    let bytes = std::fs::read(&path).unwrap();
    for damage in [
        bytes[..bytes.len() / 2].to_vec(),
        b"garbage".to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&path, &damage).unwrap();
        assert!(matches!(
            store::load(&state),
            Err(store::StoreError::Corrupt { .. })
        ));
        let (data, r) = do_sync(&root, &state, &mut p);
        assert!(
            r.rebuilt.as_deref().unwrap().starts_with("corrupt"),
            "{r:?}"
        );
        assert_eq!(r.computed, 2);
        assert_eq!(data, good);
        assert_eq!(store::load(&state).unwrap().unwrap(), good);
    }
    // A forged store with a valid checksum: 5-d embeddings where the model gives 128-d unit vectors.
    let mut forged = good.clone();
    for person in &mut forged.people {
        for image in &mut person.images {
            image.embedding = Some(vec![0.2, 0.4, 0.4, 0.4, 0.7]);
        }
    }
    store::save(&state, &forged).unwrap();
    let (data, r) = do_sync(&root, &state, &mut p);
    assert!(
        r.rebuilt.as_deref().unwrap().contains("a 5-d embedding"),
        "{r:?}"
    );
    assert_eq!(data, good);
}

#[test]
fn ambiguous_enrolment_photos_are_rejected_unless_the_policy_says_largest() {
    let tmp = TempDir::new("policy");
    let state = tmp.path("state");
    let root = tmp.path("gallery");
    std::fs::create_dir_all(root.join("obama")).unwrap();
    std::fs::copy(
        data("photos/probes/two_people.jpg"),
        root.join("obama/two.jpg"),
    )
    .unwrap();
    std::fs::copy(data("photos/probes/obama1.jpg"), root.join("obama/one.jpg")).unwrap();
    std::fs::write(root.join("obama/broken.jpg"), b"not a photo").unwrap();
    let mut p = pipeline("mobilefacenet");
    let (data, r) = sync(
        &sources(&root),
        &mut p,
        EnrolPolicy::RejectAmbiguous,
        &state,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(summary(&data), owned(&[("obama", 1)]));
    let reasons: Vec<String> = r
        .rejected
        .iter()
        .map(|(_, path, why)| format!("{path}: {why}"))
        .collect();
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("two.jpg") && r.contains("faces of similar size")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("broken.jpg") && r.contains("not a JPEG")),
        "{reasons:?}"
    );
    let (data, _) = sync(
        &sources(&root),
        &mut p,
        EnrolPolicy::Largest,
        &state,
        |_, _| {},
    )
    .unwrap();
    assert_eq!(summary(&data), owned(&[("obama", 2)]));
}

/// Expected identities from labels.csv, per probe file name.
fn labels() -> Vec<(String, Vec<String>)> {
    std::fs::read_to_string(data("photos/labels.csv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with("probe,"))
        .map(|l| {
            let (file, expected) = l.split_once(',').unwrap();
            (
                file.to_string(),
                expected.split(';').map(str::to_string).collect(),
            )
        })
        .collect()
}

#[test]
fn identify_names_every_probe_face_as_labelled() {
    let tmp = TempDir::new("identify");
    let (code, stdout, stderr) = run(face_edge()
        .args([
            "identify",
            "--json",
            "--model",
            "mobilefacenet",
            "--gallery",
        ])
        .arg(data("photos/gallery"))
        .arg("--state-dir")
        .arg(tmp.path("state"))
        .arg(data("photos/probes")));
    assert_eq!(code, 0, "{stderr}");
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let labels = labels();
    assert_eq!(results.len(), labels.len());
    for (file, expected) in labels {
        let r = results
            .iter()
            .find(|r| r["path"].as_str().unwrap().ends_with(&format!("/{file}")))
            .unwrap();
        assert!(r["error"].is_null());
        let faces = r["faces"].as_array().unwrap();
        let got: Vec<String> = faces
            .iter()
            .map(|f| f["person"].as_str().unwrap_or("unknown").to_string())
            .collect();
        assert_eq!(got, expected, "{file}: {r}");
        let lefts: Vec<f64> = faces
            .iter()
            .map(|f| f["box"][0].as_f64().unwrap())
            .collect();
        assert!(
            lefts.windows(2).all(|w| w[0] <= w[1]),
            "ordered by left edge: {file}"
        );
        for f in faces {
            let (s, second, t) = (
                f["similarity"].as_f64().unwrap(),
                f["second"].as_f64().unwrap(),
                f["threshold"].as_f64().unwrap(),
            );
            assert!(s >= second);
            if f["person"].is_string() {
                assert!(
                    s >= t && s - second >= 0.05 - 1e-6,
                    "named only above threshold and margin: {f}"
                );
            }
            assert!(f["score"].as_f64().unwrap() >= 0.7);
        }
    }
}

#[test]
fn concurrent_syncs_leave_one_valid_store() {
    let tmp = TempDir::new("concurrent");
    let state = tmp.path("state");
    let root = gallery_dir(
        &tmp,
        &[
            ("obama", &["obama/obama.jpg", "obama/obama2.jpg"]),
            ("biden", &["biden/biden.jpg", "biden/biden2.jpg"]),
        ],
    );
    let children: Vec<_> = (0..4)
        .map(|_| {
            face_edge()
                .args(["gallery", "sync", "--model", "mobilefacenet", "--gallery"])
                .arg(&root)
                .arg("--state-dir")
                .arg(&state)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut embedded = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let summary = text.lines().next().unwrap();
        let (counts, _) = summary.split_once("; ").unwrap();
        assert!(counts.ends_with("4 usable, 0 rejected"), "{summary}");
        embedded += summary
            .split(" analysed now")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap();
    }
    assert_eq!(
        embedded, 4,
        "the lock serialises syncs: the photos are embedded once in all"
    );
    let data = store::load(&state).unwrap().unwrap();
    assert_eq!(summary(&data), owned(&[("biden", 2), ("obama", 2)]));
    assert_eq!(
        walk(&state).len(),
        2,
        "no temporary files left: {:?}",
        walk(&state)
    );
}

#[test]
fn config_errors_name_the_file_and_key() {
    let tmp = TempDir::new("config");
    let path = tmp.path("face-edge.toml");
    std::fs::write(&path, "[gallery]\nthreshold = \"auto\"\nmargn = 0.1\n").unwrap();
    let (code, _, stderr) = run(face_edge()
        .args(["gallery", "check", "--config"])
        .arg(&path));
    assert_eq!(code, 78);
    assert!(
        stderr.contains("face-edge.toml") && stderr.contains("margn"),
        "{stderr}"
    );

    std::fs::write(&path, format!("state_dir = \"state\"\n[models]\nembedder = \"mobilefacenet\"\n[[person]]\nid = \"obama\"\nname = \"Barack Obama\"\nimages = [\"{}/*.jpg\"]\n[[person]]\nid = \"nobody\"\nimages = [\"missing/*.jpg\"]\n", photo("obama").display())).unwrap();
    let (code, stdout, _) = run(face_edge()
        .args(["gallery", "check", "--config"])
        .arg(&path));
    assert_eq!(code, 1, "a person without photos is a problem: {stdout}");
    assert!(
        stdout.contains("person \"nobody\": ") && stdout.contains("no image matches"),
        "{stdout}"
    );
    let (code, _, stderr) = run(face_edge().args(["gallery", "sync", "--config"]).arg(&path));
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = run(face_edge().args(["gallery", "list", "--config"]).arg(&path));
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Barack Obama") && stdout.contains("model: mobilefacenet"),
        "{stdout}"
    );
    assert!(
        tmp.path("state/gallery.json").exists(),
        "state_dir relative to the config file"
    );
}

#[test]
fn open_set_eval_shows_calibration_trading_strangers_for_misses() {
    // A slice of LFW (the first 150 people by name), linked into a temporary folder.
    let tmp = TempDir::new("eval");
    let mut names: Vec<PathBuf> = std::fs::read_dir(data("lfw"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    names.sort();
    for p in names.iter().take(150) {
        std::os::unix::fs::symlink(p, tmp.path(&p.file_name().unwrap().to_string_lossy())).unwrap();
    }
    let (code, stdout, stderr) = run(face_edge()
        .args(["eval", "--json", "--model", "mobilefacenet"])
        .arg(&tmp.0));
    assert_eq!(code, 0, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let rule = |name: &str| {
        v["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"].as_str().unwrap().starts_with(name))
            .unwrap()
            .clone()
    };
    let (cal, previous, fixed) = (rule("calibrated"), rule("previous"), rule("model default"));
    let f = |r: &serde_json::Value, k: &str| r["per_image"][k].as_f64().unwrap();
    println!("open-set on 150 LFW people: {v}");
    assert!(v["enrolled_people"].as_u64().unwrap() >= 5);
    assert!(f(&cal, "known_probes") >= 10.0 && f(&cal, "unknown_probes") >= 50.0);
    assert!((f(&fixed, "threshold") - 0.264).abs() < 1e-6);
    assert!(f(&cal, "threshold") >= f(&fixed, "threshold"));
    assert!(f(&cal, "unknown_accepted") <= f(&fixed, "unknown_accepted"));
    assert!(f(&cal, "known_correct") >= f(&previous, "known_correct"));
    assert!(
        f(&fixed, "known_correct") >= 0.9,
        "real embeddings recognise enrolled people"
    );
    for r in [&cal, &previous, &fixed] {
        for scope in ["per_image", "per_visit"] {
            for k in ["known_correct", "known_wrong", "unknown_accepted"] {
                assert!((0.0..=1.0).contains(&r[scope][k].as_f64().unwrap()), "{r}");
            }
        }
    }
}

/// Copies `photo` (under photos/gallery) into `dir` re-encoded as `format`.
fn convert(photo_rel: &str, dir: &Path, name: &str, format: image::ImageFormat) {
    std::fs::create_dir_all(dir).unwrap();
    image::open(photo(photo_rel))
        .unwrap()
        .into_rgb8()
        .save_with_format(dir.join(name), format)
        .unwrap();
}

fn identify_json(
    gallery: &Path,
    state: &Path,
    probes: &[&str],
) -> (i32, Vec<serde_json::Value>, String) {
    let mut cmd = face_edge();
    cmd.args([
        "identify",
        "--json",
        "--model",
        "mobilefacenet",
        "--gallery",
    ])
    .arg(gallery)
    .arg("--state-dir")
    .arg(state);
    for p in probes {
        cmd.arg(data(&format!("photos/probes/{p}")));
    }
    let (code, stdout, stderr) = run(&mut cmd);
    let results = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (code, results, stderr)
}

fn people_named(results: &[serde_json::Value]) -> Vec<String> {
    results
        .iter()
        .flat_map(|r| r["faces"].as_array().unwrap().clone())
        .map(|f| f["person"].as_str().unwrap_or("unknown").to_string())
        .collect()
}

#[test]
fn folders_as_people_name_them_and_tiff_webp_bmp_photos_enrol() {
    let tmp = TempDir::new("names");
    let g = tmp.path("gallery");
    for (i, (person, folder, format)) in [
        ("obama", "Barack Obama", image::ImageFormat::Tiff),
        ("kit_harington", "Kit Haríngton", image::ImageFormat::WebP),
        ("rose_leslie", "Rose LESLIE", image::ImageFormat::Bmp),
    ]
    .into_iter()
    .enumerate()
    {
        let photos: Vec<PathBuf> = std::fs::read_dir(photo(person))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        for (j, p) in photos.iter().enumerate() {
            let rel = format!("{person}/{}", p.file_name().unwrap().to_string_lossy());
            let ext = format.extensions_str()[0];
            convert(&rel, &g.join(folder), &format!("{i}{j}.{ext}"), format);
        }
    }
    // An iPhone photo: refused with advice, the rest of the gallery is used.
    std::fs::write(
        g.join("Rose LESLIE").join("b.heic"),
        b"\0\0\0\x18ftypheic\0\0\0\0mif1heic\0\0\0\0",
    )
    .unwrap();
    let state = tmp.path("state");
    let (code, results, stderr) = identify_json(
        &g,
        &state,
        &["obama1.jpg", "johnsnow_test1.jpg", "kit_with_rose.jpg"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        people_named(&results),
        vec![
            "barack_obama",
            "kit_harington",
            "rose_leslie",
            "kit_harington"
        ],
        "{stderr}"
    );
    assert!(
        stderr.contains("b.heic") && stderr.contains("convert it to JPEG"),
        "{stderr}"
    );
    // The folder name is the display name.
    let (code, list, stderr) = run(face_edge()
        .args(["gallery", "list", "--model", "mobilefacenet", "--gallery"])
        .arg(&g)
        .arg("--state-dir")
        .arg(&state));
    assert_eq!(code, 0, "{stderr}");
    for (id, name) in [
        ("barack_obama", "Barack Obama"),
        ("kit_harington", "Kit Haríngton"),
        ("rose_leslie", "Rose LESLIE"),
    ] {
        assert!(
            list.lines().any(|l| l.starts_with(id) && l.contains(name)),
            "{id} {name}: {list}"
        );
    }
}

#[test]
fn two_folders_with_one_id_are_an_error_naming_both() {
    let tmp = TempDir::new("collision");
    let g = gallery_dir(&tmp, &[("alice_smith", &["obama/obama.jpg"])]);
    convert(
        "biden/biden.jpg",
        &g.join("Alice Smith"),
        "a.png",
        image::ImageFormat::Png,
    );
    let (code, stdout, stderr) = run(face_edge()
        .args(["gallery", "check", "--model", "mobilefacenet", "--gallery"])
        .arg(&g)
        .arg("--state-dir")
        .arg(tmp.path("state")));
    assert_ne!(code, 0, "{stdout}");
    assert!(
        stderr.contains("Alice Smith")
            && stderr.contains("Alice Smith and ")
            && stderr.contains("/alice_smith both")
            && stderr.contains("both become person id \"alice_smith\""),
        "{stderr}"
    );
    let (code, _, stderr) = identify_json(&g, &tmp.path("state"), &["obama1.jpg"]);
    assert_ne!(code, 0);
    assert!(stderr.contains("both become person id"), "{stderr}");
    assert!(!tmp.path("state").join("gallery.json").exists());
}

#[test]
fn identify_without_a_state_dir_writes_nothing_where_it_is_run() {
    let tmp = TempDir::new("cwd");
    let cwd = tmp.path("cwd");
    let home = tmp.path("home");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&home).unwrap();
    let (code, stdout, stderr) = run(face_edge()
        .args([
            "identify",
            "--json",
            "--model",
            "mobilefacenet",
            "--gallery",
        ])
        .arg(data("photos/gallery"))
        .arg(data("photos/probes/obama1.jpg"))
        .current_dir(&cwd)
        .env("HOME", &home)
        .env_remove("XDG_CACHE_HOME")
        .stdin(std::process::Stdio::null()));
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"person\":\"obama\""), "{stdout}");
    assert_eq!(
        std::fs::read_dir(&cwd).unwrap().count(),
        0,
        "nothing in the current directory"
    );
    assert!(home.join(".cache/face-edge/gallery.json").is_file());
}

/// Runs `face-edge args...` with `dir` read-only: as root (whom permissions do not stop) on a read-only
/// bind mount of it in a private mount namespace, otherwise with its write permission removed.
fn face_edge_with_read_only(dir: &Path, args: &[&std::ffi::OsStr]) -> (i32, String, String) {
    if rustix::process::geteuid().is_root() {
        let program = face_edge();
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["-m", "sh", "-c", "mount --bind \"$0\" \"$0\" && mount -o remount,ro,bind \"$0\" \"$0\" && shift && exec \"$@\""])
            .arg(dir)
            .arg("--")
            .arg(program.get_program())
            .args(args);
        for (k, v) in program.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        run(&mut cmd)
    } else {
        let ro = std::fs::Permissions::from_mode(0o555);
        std::fs::set_permissions(dir, ro).unwrap();
        let out = run(face_edge().args(args));
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        out
    }
}

#[test]
fn identify_and_list_work_on_a_read_only_state_dir() {
    let tmp = TempDir::new("read-only");
    let state = tmp.path("state");
    let g = gallery_dir(&tmp, &[("obama", &["obama/obama.jpg"])]);
    let (code, before, stderr) = identify_json(&g, &state, &["obama1.jpg"]);
    assert_eq!(code, 0, "{stderr}");
    // A second person appears while the store cannot be written: embedded in memory, not stored.
    std::fs::create_dir_all(g.join("biden")).unwrap();
    std::fs::copy(photo("biden/biden.jpg"), g.join("biden/biden.jpg")).unwrap();
    let stored = std::fs::read(state.join("gallery.json")).unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "identify".into(),
        "--json".into(),
        "--model".into(),
        "mobilefacenet".into(),
        "--gallery".into(),
        g.clone().into(),
        "--state-dir".into(),
        state.clone().into(),
        data("photos/probes/obama1.jpg").into(),
        data("photos/probes/two_people.jpg").into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (code, stdout, stderr) = face_edge_with_read_only(&state, &refs);
    assert_eq!(code, 0, "{stderr}");
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(people_named(&results[..1]), people_named(&before));
    assert_eq!(people_named(&results[1..]), vec!["obama", "biden"]);
    assert!(stderr.contains("used read-only"), "{stderr}");
    assert_eq!(
        std::fs::read(state.join("gallery.json")).unwrap(),
        stored,
        "store untouched"
    );
    let list: Vec<std::ffi::OsString> = vec![
        "gallery".into(),
        "list".into(),
        "--model".into(),
        "mobilefacenet".into(),
        "--gallery".into(),
        g.into(),
        "--state-dir".into(),
        state.into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = list.iter().map(|a| a.as_os_str()).collect();
    let (code, stdout, stderr) = face_edge_with_read_only(&tmp.path("state"), &refs);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("obama")), "{stdout}");
}
