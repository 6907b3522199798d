//! Scenes for the service tests: people walking in and out of view, as numbered frames made from the
//! shared photos (each visit a run of identical frames, separated by empty frames), and the config that
//! runs face-edge on them.
#![allow(dead_code)]

use super::{TempDir, data, slowdown};
use std::path::{Path, PathBuf};

/// (photo under photos/, frames); None = an empty frame.
pub type Shot = (Option<&'static str>, usize);

/// Three visits: Obama, a stranger (Lin-Manuel Miranda is not in the gallery), Kit Harington.
pub const THREE_VISITS: &[Shot] = &[
    (None, 5),
    (Some("probes/obama1.jpg"), 15),
    (None, 20),
    (Some("probes/lin-manuel-miranda.png"), 15),
    (None, 20),
    (Some("probes/johnsnow_test1.jpg"), 15),
    (None, 20),
];

/// Writes every distinct picture once as a 640x480 JPEG (letterboxed) and the frames as symlinks to
/// them, `frames/00001.jpg`... Under emulation every shot lasts `slowdown()` times longer, so that a
/// visit still spans as many detections as natively. Returns the frames directory.
pub fn write_frames(dir: &TempDir, shots: &[Shot]) -> PathBuf {
    let frames = dir.path("frames");
    let pictures = dir.path("pictures");
    std::fs::create_dir_all(&frames).unwrap();
    std::fs::create_dir_all(&pictures).unwrap();
    let mut n = 0;
    for (photo, count) in shots {
        let name = photo.map_or("empty".to_string(), |p| p.replace('/', "_"));
        let picture = pictures.join(format!("{name}.jpg"));
        if !picture.exists() {
            picture_640x480(*photo).save(&picture).unwrap();
        }
        for _ in 0..*count * slowdown() as usize {
            n += 1;
            std::os::unix::fs::symlink(&picture, frames.join(format!("{n:05}.jpg"))).unwrap();
        }
    }
    frames
}

/// A photo scaled into a 640x480 frame on black (or an empty dark frame).
pub fn picture_640x480(photo: Option<&str>) -> image::RgbImage {
    let mut frame = image::RgbImage::from_pixel(640, 480, image::Rgb([20, 20, 20]));
    if let Some(p) = photo {
        let img = image::open(data(&format!("photos/{p}")))
            .unwrap()
            .into_rgb8();
        let scale = (640.0 / img.width() as f32).min(480.0 / img.height() as f32);
        let (w, h) = (
            (img.width() as f32 * scale) as u32,
            (img.height() as f32 * scale) as u32,
        );
        let resized = image::imageops::resize(&img, w, h, image::imageops::FilterType::Triangle);
        image::imageops::replace(
            &mut frame,
            &resized,
            ((640 - w) / 2) as i64,
            ((480 - h) / 2) as i64,
        );
    }
    frame
}

/// A config for `face-edge run`: the shared gallery (or `gallery`), MobileFaceNet, the given camera
/// section, fast timings (stretched by `slowdown()`; detection at 320 under emulation), and MQTT at `mqtt_url` (or stdout when None).
pub fn config(
    dir: &TempDir,
    gallery: &Path,
    camera: &str,
    mqtt_url: Option<&str>,
    extra: &str,
) -> PathBuf {
    let token_file = dir.path("request-token");
    std::fs::write(&token_file, format!("{REQUEST_TOKEN}\n")).unwrap();
    let mqtt = mqtt_url.map_or(String::new(), |url| {
        format!(
            "[mqtt]\nurl = \"{url}\"\nnode_id = \"e2e\"\nreconnect_max_s = 1\nstats_interval_s = 1\nabsence_s = {}\n[mqtt.requests]\ntoken_file = \"{}\"\nenroll = true\n",
            2 * slowdown(),
            token_file.display()
        )
    });
    // Under emulation detection runs at half the default size: a quarter of the cost, so that a visit
    // still spans enough detections to decide (the faces in these frames are over 100 px tall).
    let detection = if super::emulated() {
        "[detection]\nmax_side = 320\n"
    } else {
        ""
    };
    let text = format!(
        "state_dir = \"{state}\"\n{detection}[models]\nembedder = \"mobilefacenet\"\n[gallery]\ndir = \"{gallery}\"\n[tracking]\nlost_after_s = {lost}\n{mqtt}{camera}\n{extra}",
        state = dir.path("state").display(),
        gallery = gallery.display(),
        lost = slowdown() as f32,
    );
    let path = dir.path("face-edge.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The request token `config` writes for its `[mqtt.requests]` (which turns enrolment on).
pub const REQUEST_TOKEN: &str = "test-request-token-5f1c9a";

/// Edits a config written by `config`: `text` is inserted at the start of the `[mqtt]` table.
pub fn add_to_mqtt(config: &Path, text: &str) {
    let old = std::fs::read_to_string(config).unwrap();
    assert!(old.contains("[mqtt]\n"), "{old}");
    std::fs::write(
        config,
        old.replacen("[mqtt]\n", &format!("[mqtt]\n{text}\n"), 1),
    )
    .unwrap();
}

/// (type, person) of every message on `face-edge/e2e/events`, in arrival order, without the duplicates
/// QoS 1 may deliver (same event id).
pub fn events(all: &[super::broker::Received]) -> Vec<(String, Option<String>)> {
    let mut seen = std::collections::HashSet::new();
    all.iter()
        .filter(|m| m.topic == "face-edge/e2e/events")
        .map(|m| m.json())
        .filter(|v| seen.insert(v["id"].as_str().unwrap().to_string()))
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["person"].as_str().map(str::to_string),
            )
        })
        .collect()
}

pub fn pair(kind: &str, person: Option<&str>) -> (String, Option<String>) {
    (kind.to_string(), person.map(str::to_string))
}

/// The events THREE_VISITS must produce, in order.
pub fn three_visits_expected() -> Vec<(String, Option<String>)> {
    vec![
        pair("recognized", Some("obama")),
        pair("left", Some("obama")),
        pair("unknown", None),
        pair("left", None),
        pair("recognized", Some("kit_harington")),
        pair("left", Some("kit_harington")),
    ]
}
