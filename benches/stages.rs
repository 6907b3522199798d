//! Per-stage timing of the face pipeline on the real models and photos (single thread):
//! `cargo bench --bench stages`. Prints the median and p90 milliseconds of decode, detection at 640x480,
//! alignment and embedding for each embedder. Uses FACE_EDGE_SHARED / FACE_EDGE_MODELS_DIR like the tests.

use face_edge::detect::{DetectSettings, main_face};
use face_edge::image_io::{decode_rgb, expand_inputs};
use face_edge::models::Catalog;
use face_edge::pipeline::{load_detector, load_embedder};
use image::RgbImage;
use std::path::PathBuf;
use std::time::Instant;

const ROUNDS: usize = 5;

fn shared() -> PathBuf {
    std::env::var_os("FACE_EDGE_SHARED")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared"))
}

fn percentile(mut ms: Vec<f64>, p: f64) -> f64 {
    ms.sort_by(f64::total_cmp);
    ms[((ms.len() - 1) as f64 * p).round() as usize]
}

fn report(stage: &str, ms: Vec<f64>) {
    println!(
        "{stage:<40} {:>5} runs  median {:>8.3} ms  p90 {:>8.3} ms",
        ms.len(),
        percentile(ms.clone(), 0.5),
        percentile(ms, 0.9)
    );
}

fn time<T>(samples: &mut Vec<f64>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let out = f();
    samples.push(t.elapsed().as_secs_f64() * 1e3);
    out
}

/// A 640x480 frame from a photo: scaled to cover, centre-cropped (setup, not timed).
fn frame_640x480(img: &RgbImage) -> RgbImage {
    let scale = (640.0 / img.width() as f32).max(480.0 / img.height() as f32);
    let (w, h) = (
        ((img.width() as f32 * scale).ceil() as u32).max(640),
        ((img.height() as f32 * scale).ceil() as u32).max(480),
    );
    let resized = image::imageops::resize(img, w, h, image::imageops::FilterType::Triangle);
    image::imageops::crop_imm(&resized, (w - 640) / 2, (h - 480) / 2, 640, 480).to_image()
}

fn main() {
    let models = std::env::var_os("FACE_EDGE_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| shared().join("models"));
    let catalog = Catalog::load(&models).expect("catalog");
    let photos = expand_inputs(&[shared().join("data/photos")]);
    let jpegs: Vec<Vec<u8>> = photos
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e != "png"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    println!(
        "face-edge stage benchmark: {} JPEG photos, {ROUNDS} rounds, models from {}",
        jpegs.len(),
        models.display()
    );

    let mut decode = vec![];
    let mut frames = vec![];
    for _ in 0..ROUNDS {
        frames = jpegs
            .iter()
            .map(|b| time(&mut decode, || decode_rgb(b).unwrap()))
            .collect();
    }
    report("decode JPEG (photos, various sizes)", decode);

    let t = Instant::now();
    let settings = DetectSettings {
        score_threshold: None,
        max_side: 640,
    };
    let mut detector = load_detector(&catalog, "yunet-2023mar", &settings).unwrap();
    let frames: Vec<RgbImage> = frames.iter().map(frame_640x480).collect();
    let _ = detector.detect(&frames[0]).unwrap(); // builds the 640x480 plan
    println!(
        "{:<40} {:>8.1} ms",
        "detector load + 640x480 plan",
        t.elapsed().as_secs_f64() * 1e3
    );
    let mut detect = vec![];
    let mut faces = vec![];
    for _ in 0..ROUNDS {
        faces = frames
            .iter()
            .map(|f| time(&mut detect, || detector.detect(f).unwrap()))
            .collect();
    }
    report("detect 640x480 (yunet-2023mar)", detect);

    // Camera frame formats at 640x480: MJPEG (JPEG at quality 85) and YUYV to RGB.
    let (mut mjpeg, mut yuyv, mut legacy) = (vec![], vec![], vec![]);
    for frame in &frames {
        let mut jpeg = Vec::new();
        let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85);
        frame.write_with_encoder(encoder).unwrap();
        let raw = face_edge::camera::yuyv::from_rgb(frame);
        for _ in 0..ROUNDS {
            time(&mut mjpeg, || decode_rgb(&jpeg).unwrap());
            time(&mut legacy, || {
                jpeg_decoder::Decoder::new(&jpeg[..]).decode().unwrap()
            });
            time(&mut yuyv, || {
                face_edge::camera::yuyv::to_rgb(&raw, 640, 480).unwrap()
            });
        }
    }
    report("decode MJPEG frame 640x480 (image: zune-jpeg)", mjpeg);
    report("decode MJPEG frame 640x480 (jpeg-decoder)", legacy);
    report("convert YUYV frame 640x480 to RGB", yuyv);

    for id in [
        "mobilefacenet",
        "japanese-face-v1-standin",
        "japanese-face-v1",
    ] {
        let t = Instant::now();
        let embedder = match load_embedder(&catalog, id) {
            Ok(e) => e,
            Err(e) => {
                println!("{id}: skipped ({e})");
                continue;
            }
        };
        println!(
            "{:<40} {:>8.1} ms",
            format!("{id} load"),
            t.elapsed().as_secs_f64() * 1e3
        );
        let (mut align, mut embed) = (vec![], vec![]);
        for _ in 0..ROUNDS {
            for (frame, dets) in frames.iter().zip(&faces) {
                let Some(i) = main_face(dets, frame.width(), frame.height()) else {
                    continue;
                };
                let crop = time(&mut align, || {
                    embedder.align(frame, &dets[i].landmarks).unwrap()
                });
                time(&mut embed, || embedder.embed_crop(&crop).unwrap());
            }
        }
        report(&format!("align ({id})"), align);
        report(&format!("embed ({id})"), embed);
    }
}
