//! `face-edge bench`: per-stage timing of the pipeline on frames rendered from real photos, end-to-end
//! frames per second with one and with four faces (one thread, and the service's capture + inference
//! threads), model load times and peak memory. `--dump-tensors` writes the exact network inputs for
//! bench/ort_reference.py, which times onnxruntime on the same tensors.

use super::ModelOptions;
use super::{npy, profile};
use clap::Args;
use face_edge::camera::yuyv;
use face_edge::config::Config;
use face_edge::detect::{DetectSettings, Detection, Detector, main_face};
use face_edge::embed::Embedder;
use face_edge::gallery::{Gallery, GalleryPerson};
use face_edge::image_io::{decode_rgb, expand_inputs, load_rgb};
use face_edge::manifest::Role;
use face_edge::pipeline::{load_detector, load_embedder};
use image::RgbImage;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    models: ModelOptions,
    /// Embedders to time (repeatable) [default: every embedder whose weights are present].
    #[arg(long = "model")]
    embedders: Vec<String>,
    /// Longer sides to detect at, 0 = the frame's own size.
    #[arg(long, value_delimiter = ',', default_value = "320,640,0")]
    detect_sizes: Vec<u32>,
    /// Times each measurement is repeated over the frame set.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Gallery size for the matching stage (synthetic unit vectors, 3 per person).
    #[arg(long, default_value_t = 100)]
    people: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Write every network input (NumPy .npy) and an index for bench/ort_reference.py to this directory.
    #[arg(long)]
    dump_tensors: Option<PathBuf>,
    /// Also time every node of each network and print the time per operator kind.
    #[arg(long)]
    profile: bool,
    /// Photos (files or directories) the 640x480 and 1280x720 frames are rendered from.
    #[arg(required = true)]
    photos: Vec<PathBuf>,
}

/// Median and 90th percentile of one stage, in milliseconds.
#[derive(Serialize)]
struct Stage {
    stage: String,
    runs: usize,
    median_ms: f64,
    p90_ms: f64,
}

#[derive(Serialize, Default)]
struct Report {
    frames: usize,
    rounds: usize,
    stages: Vec<Stage>,
    /// Model id -> milliseconds to verify, parse and optimise it (detector: with its first plan).
    load_ms: Vec<(String, f64)>,
    /// "1 face" / "4 faces" x "1 thread" / "capture + inference threads" -> frames per second.
    end_to_end_fps: Vec<(String, f64)>,
    peak_rss_mb: f64,
    /// `--profile`: network stage -> time per operator kind.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    profiles: Vec<(String, Vec<profile::OpShare>)>,
}

/// A network input written for the onnxruntime reference.
#[derive(Serialize)]
struct DumpedInput {
    stage: String,
    model: String,
    weights: PathBuf,
    tensor: String,
    tract_median_ms: f64,
    tract_p90_ms: f64,
    /// The embedders' L2-normalised output, to compare with onnxruntime's.
    embedding: Option<Vec<f32>>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let config = Config::default();
    let catalog = args.models.catalog(&config)?;
    let photos: Vec<RgbImage> = expand_inputs(&args.photos)
        .iter()
        .filter_map(|p| load_rgb(p).ok())
        .collect();
    anyhow::ensure!(!photos.is_empty(), "no readable photo among the inputs");
    let rounds = args.rounds.max(1);
    let frames_vga: Vec<RgbImage> = photos.iter().map(|p| letterbox(p, 640, 480)).collect();
    let frames_hd: Vec<RgbImage> = photos.iter().map(|p| letterbox(p, 1280, 720)).collect();
    let quads: Vec<RgbImage> = photos
        .chunks(4)
        .filter(|c| c.len() == 4)
        .map(|c| four_faces(c, 640, 480))
        .collect();
    let mut report = Report {
        frames: photos.len(),
        rounds,
        ..Report::default()
    };
    let mut dumps: Vec<DumpedInput> = vec![];
    let dump_dir = args.dump_tensors.as_deref();
    if let Some(dir) = dump_dir {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    }
    eprintln!(
        "bench: {} photos -> 640x480 and 1280x720 frames, {} four-face frames, {rounds} rounds",
        photos.len(),
        quads.len()
    );

    // Camera frame formats.
    for (label, frames) in [("640x480", &frames_vga), ("1280x720", &frames_hd)] {
        let jpegs: Vec<Vec<u8>> = frames.iter().map(jpeg).collect();
        let raws: Vec<Vec<u8>> = frames.iter().map(yuyv::from_rgb).collect();
        let (w, h) = frames[0].dimensions();
        report.stages.push(measure(
            format!("decode MJPEG {label}"),
            rounds,
            &jpegs,
            |j| {
                decode_rgb(j).expect("own JPEG decodes");
            },
        ));
        report.stages.push(measure(
            format!("convert YUYV {label} to RGB"),
            rounds,
            &raws,
            |r| {
                yuyv::to_rgb(r, w, h).expect("own YUYV converts");
            },
        ));
    }

    // Detection at each size: the whole stage and the network alone.
    let detector_id = args.models.detector_id(&config).to_string();
    let detector_weights = catalog.weights_path(catalog.get_role(&detector_id, Role::Detector)?);
    for &max_side in &args.detect_sizes {
        for (label, frames) in [("640x480", &frames_vga), ("1280x720", &frames_hd)] {
            let (w, h) = frames[0].dimensions();
            if max_side != 0 && max_side >= w.max(h) {
                continue; // the same as native, measured once
            }
            let size = if max_side == 0 {
                "native".to_string()
            } else {
                format!("max side {max_side}")
            };
            let settings = DetectSettings {
                score_threshold: None,
                max_side,
            };
            let started = Instant::now();
            let mut detector = load_detector(&catalog, &detector_id, &settings)?;
            detector.detect(&frames[0])?;
            report.load_ms.push((
                format!("{detector_id} ({label}, {size})"),
                ms(started.elapsed()),
            ));
            let stage = measure(format!("detect {label} at {size}"), rounds, frames, |f| {
                detector.detect(f).expect("detection runs");
            });
            let (tensor, _) = detector.input_tensor(&frames[0]);
            let shape = tensor.shape().to_vec();
            let network = measure(
                format!(
                    "detect {label} at {size}: network {}x{}",
                    shape[3], shape[2]
                ),
                rounds * frames.len(),
                &[()],
                |_| {
                    detector.run_network(tensor.clone()).expect("network runs");
                },
            );
            if args.profile {
                let plan = detector.plan(shape[3], shape[2])?;
                let shares = profile::by_op(&plan, &tensor, rounds * frames.len())?;
                report.profiles.push((network.stage.clone(), shares));
            }
            if let Some(dir) = dump_dir {
                let name = format!("{detector_id}_{}x{}.npy", shape[3], shape[2]);
                npy::write_f32(&dir.join(&name), &tensor)?;
                dumps.push(DumpedInput {
                    stage: network.stage.clone(),
                    model: detector_id.clone(),
                    weights: detector_weights.clone(),
                    tensor: name,
                    tract_median_ms: network.median_ms,
                    tract_p90_ms: network.p90_ms,
                    embedding: None,
                });
            }
            report.stages.push(stage);
            report.stages.push(network);
        }
    }
    // The rest runs at the service's default detection size.
    let mut detector = load_detector(
        &catalog,
        &detector_id,
        &args.models.detect_settings(&config)?,
    )?;
    let faces: Vec<Vec<Detection>> = frames_vga
        .iter()
        .map(|f| detector.detect(f))
        .collect::<Result<_, _>>()?;

    // Alignment, embedding and matching per embedder.
    let embedder_ids: Vec<String> = if args.embedders.is_empty() {
        catalog
            .manifests()
            .filter(|m| m.role == Role::Embedder && catalog.weights_path(m).is_file())
            .map(|m| m.id.clone())
            .collect()
    } else {
        args.embedders.clone()
    };
    let mut e2e_embedder = None;
    for id in &embedder_ids {
        let started = Instant::now();
        let embedder = load_embedder(&catalog, id)?;
        report.load_ms.push((id.clone(), ms(started.elapsed())));
        let mains: Vec<(&RgbImage, &Detection)> = frames_vga
            .iter()
            .zip(&faces)
            .filter_map(|(f, d)| main_face(d, f.width(), f.height()).map(|i| (f, &d[i])))
            .collect();
        anyhow::ensure!(!mains.is_empty(), "no face found in the frames");
        let align = measure(format!("align ({id})"), rounds, &mains, |(f, d)| {
            embedder.align(f, &d.landmarks).expect("aligns");
        });
        let crops: Vec<RgbImage> = mains
            .iter()
            .map(|(f, d)| embedder.align(f, &d.landmarks))
            .collect::<Result<_, _>>()?;
        let embed = measure(format!("embed ({id})"), rounds, &crops, |c| {
            embedder.embed_crop(c).expect("embeds");
        });
        let tensor = embedder.input_tensor(&crops[0])?;
        let network = measure(
            format!("embed ({id}): network"),
            rounds * crops.len(),
            &[()],
            |_| {
                embedder.run_network(tensor.clone()).expect("network runs");
            },
        );
        if args.profile {
            let shares = profile::by_op(embedder.plan(), &tensor, rounds * crops.len())?;
            report.profiles.push((network.stage.clone(), shares));
        }
        if let Some(dir) = dump_dir {
            let name = format!("{id}.npy");
            npy::write_f32(&dir.join(&name), &tensor)?;
            dumps.push(DumpedInput {
                stage: network.stage.clone(),
                model: id.clone(),
                weights: catalog.weights_path(catalog.get(id)?),
                tensor: name,
                tract_median_ms: network.median_ms,
                tract_p90_ms: network.p90_ms,
                embedding: Some(embedder.run_network(tensor.clone())?),
            });
        }
        report.stages.extend([align, embed, network]);

        let gallery = synthetic_gallery(args.people, embedder.spec().output.dim);
        let probe: Vec<Vec<f32>> = vec![embedder.embed_crop(&crops[0])?];
        let probes4: Vec<Vec<f32>> = crops
            .iter()
            .cycle()
            .take(4)
            .map(|c| embedder.embed_crop(c))
            .collect::<Result<_, _>>()?;
        for (label, faces) in [("1 face", &probe), ("4 faces", &probes4)] {
            report.stages.push(measure(
                format!("match {label} against {} people ({id})", args.people),
                rounds * 20,
                &[()],
                |_| {
                    gallery.identify(faces);
                },
            ));
        }
        if e2e_embedder.is_none() || id == &config.models.embedder {
            e2e_embedder = Some(embedder);
        }
    }

    // End to end on 640x480 MJPEG frames: decode, detect at the service's default size, embed every
    // face, match. Every face every frame: the service itself embeds far less often (tracking).
    if let Some(embedder) = &e2e_embedder {
        let gallery = synthetic_gallery(args.people, embedder.spec().output.dim);
        let one: Vec<Vec<u8>> = frames_vga.iter().map(jpeg).collect();
        let four: Vec<Vec<u8>> = quads.iter().map(jpeg).collect();
        for (label, jpegs) in [("1 face", &one), ("4 faces", &four)] {
            if jpegs.is_empty() {
                continue;
            }
            let per_frame = measure(
                format!("end to end, {label} ({})", embedder.id()),
                rounds,
                jpegs,
                |j| {
                    let frame = decode_rgb(j).expect("decodes");
                    recognise(&mut detector, embedder, &gallery, &frame);
                },
            );
            report
                .end_to_end_fps
                .push((format!("{label}, 1 thread"), 1000.0 / per_frame.median_ms));
            report.end_to_end_fps.push((
                format!("{label}, capture + inference threads"),
                pipelined_fps(&mut detector, embedder, &gallery, jpegs, rounds),
            ));
            report.stages.push(per_frame);
        }
    }
    report.peak_rss_mb = peak_rss_mb();

    if let Some(dir) = dump_dir {
        let index = dir.join("index.json");
        std::fs::write(&index, serde_json::to_string_pretty(&dumps)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", index.display()))?;
        eprintln!(
            "bench: wrote {} network inputs and {}",
            dumps.len(),
            index.display()
        );
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

/// Detect, embed every face, match: what one frame costs when nothing is tracked.
fn recognise(detector: &mut Detector, embedder: &Embedder, gallery: &Gallery, frame: &RgbImage) {
    let faces = detector.detect(frame).expect("detection runs");
    let embeddings: Vec<Vec<f32>> = faces
        .iter()
        .filter_map(|d| embedder.embed_face(frame, &d.landmarks).ok())
        .collect();
    gallery.identify(&embeddings);
}

/// The service's threading: a capture thread decoding MJPEG frames, an inference thread taking the
/// newest decoded frame. Frames per second of inference over all rounds.
fn pipelined_fps(
    detector: &mut Detector,
    embedder: &Embedder,
    gallery: &Gallery,
    jpegs: &[Vec<u8>],
    rounds: usize,
) -> f64 {
    let (tx, rx) = std::sync::mpsc::sync_channel::<RgbImage>(1);
    let total = jpegs.len() * rounds;
    let started = Instant::now();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for j in jpegs.iter().cycle().take(total) {
                if tx.send(decode_rgb(j).expect("decodes")).is_err() {
                    break;
                }
            }
        });
        for frame in rx.iter() {
            recognise(detector, embedder, gallery, &frame);
        }
    });
    total as f64 / started.elapsed().as_secs_f64()
}

/// Runs `f` on every item, `rounds` times, after one warm-up pass.
fn measure<T>(stage: String, rounds: usize, items: &[T], mut f: impl FnMut(&T)) -> Stage {
    items.iter().for_each(&mut f);
    let mut samples = Vec::with_capacity(rounds * items.len());
    for _ in 0..rounds {
        for item in items {
            let t = Instant::now();
            f(item);
            samples.push(ms(t.elapsed()));
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() - 1) as f64 * p).round() as usize];
    eprintln!("bench: {stage}: median {:.3} ms", at(0.5));
    Stage {
        stage,
        runs: samples.len(),
        median_ms: at(0.5),
        p90_ms: at(0.9),
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `img` scaled to fit a `w`x`h` frame, centred on dark grey (a face in a hallway camera's frame).
fn letterbox(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let mut frame = RgbImage::from_pixel(w, h, image::Rgb([20, 20, 20]));
    let scale = (w as f32 / img.width() as f32).min(h as f32 / img.height() as f32);
    let (sw, sh) = (
        ((img.width() as f32 * scale) as u32).max(1),
        ((img.height() as f32 * scale) as u32).max(1),
    );
    let resized = image::imageops::resize(img, sw, sh, image::imageops::FilterType::Triangle);
    image::imageops::replace(
        &mut frame,
        &resized,
        ((w - sw) / 2) as i64,
        ((h - sh) / 2) as i64,
    );
    frame
}

/// Four photos in a 2x2 grid: a frame with (at least) four faces.
fn four_faces(photos: &[RgbImage], w: u32, h: u32) -> RgbImage {
    let mut frame = RgbImage::new(w, h);
    for (i, p) in photos.iter().enumerate() {
        let cell = letterbox(p, w / 2, h / 2);
        let (x, y) = ((i as u32 % 2) * w / 2, (i as u32 / 2) * h / 2);
        image::imageops::replace(&mut frame, &cell, x as i64, y as i64);
    }
    frame
}

/// A camera's MJPEG frame: JPEG at quality 85.
fn jpeg(frame: &RgbImage) -> Vec<u8> {
    let mut out = Vec::new();
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85);
    frame
        .write_with_encoder(encoder)
        .expect("encoding to memory succeeds");
    out
}

/// `people` people with 3 pseudo-random unit vectors each (a fixed sequence, so runs compare).
fn synthetic_gallery(people: usize, dim: usize) -> Gallery {
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let people = (0..people)
        .map(|i| GalleryPerson {
            id: format!("p{i}"),
            name: format!("Person {i}"),
            embeddings: (0..3)
                .map(|_| {
                    let v: Vec<f32> = (0..dim).map(|_| next()).collect();
                    face_edge::embed::l2_normalized(&v).expect("non-zero")
                })
                .collect(),
        })
        .collect();
    Gallery::new(people, 0.4, Some(0.4), 0.05)
}

/// Peak resident memory of this process (VmHWM), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

fn print_table(report: &Report) {
    println!(
        "{} photos, {} rounds (median and 90th percentile, milliseconds, one thread)",
        report.frames, report.rounds
    );
    for s in &report.stages {
        println!("  {:<62} {:>9.3} {:>9.3}", s.stage, s.median_ms, s.p90_ms);
    }
    println!("model load (verify, parse, optimise):");
    for (id, t) in &report.load_ms {
        println!("  {id:<62} {t:>9.1} ms");
    }
    println!("end to end (decode, detect, embed every face, match):");
    for (label, fps) in &report.end_to_end_fps {
        println!("  {label:<62} {fps:>9.1} frames/s");
    }
    println!("peak resident memory: {:.1} MB", report.peak_rss_mb);
    for (stage, shares) in &report.profiles {
        println!("profile of {stage} (ms per run, share, nodes):");
        for s in shares.iter().filter(|s| s.percent >= 0.5) {
            println!(
                "  {:<40} {:>9.3} {:>6.1} % {:>5}",
                s.op, s.ms, s.percent, s.nodes
            );
        }
    }
}
