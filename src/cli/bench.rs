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
use face_edge::inference::Precision;
use face_edge::manifest::Role;
use face_edge::models::{Catalog, load_detector, load_embedder};
use image::RgbImage;
use serde::Serialize;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;
use tract_onnx::prelude::Tensor;

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
    let mut bench = Bench::new(args)?;
    bench.camera_formats();
    bench.detection_sizes()?;
    // The rest runs at the service's default detection size.
    let mut detector = load_detector(
        &bench.catalog,
        &bench.args.models.detector_id(&bench.config, &bench.catalog),
        &bench.args.models.detect_settings(&bench.config)?,
    )?;
    let faces: Vec<Vec<Detection>> = bench
        .frames_vga
        .iter()
        .map(|f| detector.detect(f))
        .collect::<Result<_, _>>()?;
    let mut e2e_embedder = None;
    for id in bench.embedder_ids() {
        let embedder = bench.embedder(&id, &faces)?;
        if e2e_embedder.is_none() || id == bench.config.models.embedder {
            e2e_embedder = Some(embedder);
        }
    }
    if let Some(embedder) = &e2e_embedder {
        bench.end_to_end(&mut detector, embedder);
    }
    bench.report.peak_rss_mb = peak_rss_mb();
    bench.write_dumps()?;
    if bench.args.json {
        println!("{}", serde_json::to_string_pretty(&bench.report)?);
    } else {
        print_table(&bench.report);
    }
    Ok(ExitCode::SUCCESS)
}

/// The frames, the models and what has been measured so far; each step of `run` is a method.
struct Bench {
    args: BenchArgs,
    config: Config,
    catalog: Catalog,
    rounds: usize,
    frames_vga: Vec<RgbImage>,
    frames_hd: Vec<RgbImage>,
    /// 640x480 frames showing four faces each.
    quads: Vec<RgbImage>,
    report: Report,
    dumps: Vec<DumpedInput>,
}

impl Bench {
    /// Renders the frames from the photos and prepares the dump directory.
    fn new(args: BenchArgs) -> anyhow::Result<Bench> {
        let config = Config::default();
        let catalog = args.models.catalog(&config)?;
        let photos: Vec<RgbImage> = expand_inputs(&args.photos)
            .iter()
            .filter_map(|p| load_rgb(p).ok())
            .collect();
        anyhow::ensure!(!photos.is_empty(), "no readable photo among the inputs");
        let rounds = args.rounds.max(1);
        let quads: Vec<RgbImage> = photos
            .chunks(4)
            .filter(|c| c.len() == 4)
            .map(|c| four_faces(c, 640, 480))
            .collect();
        if let Some(dir) = args.dump_tensors.as_deref() {
            std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
        }
        eprintln!(
            "bench: {} photos -> 640x480 and 1280x720 frames, {} four-face frames, {rounds} rounds",
            photos.len(),
            quads.len()
        );
        Ok(Bench {
            report: Report {
                frames: photos.len(),
                rounds,
                ..Report::default()
            },
            frames_vga: photos.iter().map(|p| letterbox(p, 640, 480)).collect(),
            frames_hd: photos.iter().map(|p| letterbox(p, 1280, 720)).collect(),
            quads,
            args,
            config,
            catalog,
            rounds,
            dumps: vec![],
        })
    }

    /// Decoding MJPEG and converting YUYV camera frames.
    fn camera_formats(&mut self) {
        for (label, frames) in [("640x480", &self.frames_vga), ("1280x720", &self.frames_hd)] {
            let jpegs: Vec<Vec<u8>> = frames.iter().map(jpeg).collect();
            let raws: Vec<Vec<u8>> = frames.iter().map(yuyv::from_rgb).collect();
            let (w, h) = frames[0].dimensions();
            self.report.stages.push(measure(
                format!("decode MJPEG {label}"),
                self.rounds,
                &jpegs,
                |j| {
                    decode_rgb(j).expect("own JPEG decodes");
                },
            ));
            self.report.stages.push(measure(
                format!("convert YUYV {label} to RGB"),
                self.rounds,
                &raws,
                |r| {
                    yuyv::to_rgb(r, w, h).expect("own YUYV converts");
                },
            ));
        }
    }

    /// Detection at each `--detect-sizes` size, for both frame sizes.
    fn detection_sizes(&mut self) -> anyhow::Result<()> {
        let sizes = self.args.detect_sizes.clone();
        for max_side in sizes {
            for hd in [false, true] {
                let frames = if hd {
                    &self.frames_hd
                } else {
                    &self.frames_vga
                };
                let (w, h) = frames[0].dimensions();
                if max_side != 0 && max_side >= w.max(h) {
                    continue; // the same as native, measured once
                }
                self.detection(hd, max_side)?;
            }
        }
        Ok(())
    }

    /// Detection of the 640x480 (or, with `hd`, 1280x720) frames at `max_side`: the whole stage and
    /// the network alone, with the model's load time.
    fn detection(&mut self, hd: bool, max_side: u32) -> anyhow::Result<()> {
        let frames = if hd {
            &self.frames_hd
        } else {
            &self.frames_vga
        };
        let label = if hd { "1280x720" } else { "640x480" };
        let size = match max_side {
            0 => "native".to_string(),
            n => format!("max side {n}"),
        };
        let detector_id = self.args.models.detector_id(&self.config, &self.catalog);
        let settings = DetectSettings {
            score_threshold: None,
            max_side,
        };
        let started = Instant::now();
        let mut detector = load_detector(&self.catalog, &detector_id, &settings)?;
        detector.detect(&frames[0])?;
        let load = ms(started.elapsed());
        let stage = measure(
            format!("detect {label} at {size}"),
            self.rounds,
            frames,
            |f| {
                detector.detect(f).expect("detection runs");
            },
        );
        let (tensor, _) = detector.input_tensor(&frames[0]);
        let shape = tensor.shape().to_vec();
        let runs = self.rounds * frames.len();
        let network = measure(
            format!(
                "detect {label} at {size}: network {}x{}",
                shape[3], shape[2]
            ),
            runs,
            &[()],
            |_| {
                detector.run_network(tensor.clone()).expect("network runs");
            },
        );
        self.report
            .load_ms
            .push((format!("{detector_id} ({label}, {size})"), load));
        if self.args.profile {
            let plan = detector.plan(shape[3], shape[2])?;
            let shares = profile::by_op(&plan, &tensor, runs)?;
            self.report.profiles.push((network.stage.clone(), shares));
        }
        let name = format!("{detector_id}_{}x{}.npy", shape[3], shape[2]);
        self.dump(&network, &detector_id, &name, &tensor, None)?;
        self.report.stages.push(stage);
        self.report.stages.push(network);
        Ok(())
    }

    /// `--model`, or every embedder whose weights are present.
    fn embedder_ids(&self) -> Vec<String> {
        if !self.args.embedders.is_empty() {
            return self.args.embedders.clone();
        }
        self.catalog
            .manifests()
            .filter(|m| m.role == Role::Embedder && self.catalog.weights_path(m).is_file())
            .map(|m| m.id.clone())
            .collect()
    }

    /// Alignment, embedding and matching with the embedder `id`, on the main face of each frame.
    fn embedder(&mut self, id: &str, faces: &[Vec<Detection>]) -> anyhow::Result<Embedder> {
        let started = Instant::now();
        let embedder = load_embedder(&self.catalog, id, Precision::F32)?;
        self.report
            .load_ms
            .push((id.to_string(), ms(started.elapsed())));
        let mains: Vec<(&RgbImage, &Detection)> = self
            .frames_vga
            .iter()
            .zip(faces)
            .filter_map(|(f, d)| main_face(d, f.width(), f.height()).map(|i| (f, &d[i])))
            .collect();
        anyhow::ensure!(!mains.is_empty(), "no face found in the frames");
        let align = measure(format!("align ({id})"), self.rounds, &mains, |(f, d)| {
            embedder.align(f, &d.landmarks).expect("aligns");
        });
        let crops: Vec<RgbImage> = mains
            .iter()
            .map(|(f, d)| embedder.align(f, &d.landmarks))
            .collect::<Result<_, _>>()?;
        let embed = measure(format!("embed ({id})"), self.rounds, &crops, |c| {
            embedder.embed_crop(c).expect("embeds");
        });
        let tensor = embedder.input_tensor(&crops[0])?;
        let runs = self.rounds * crops.len();
        let network = measure(format!("embed ({id}): network"), runs, &[()], |_| {
            embedder.run_network(tensor.clone()).expect("network runs");
        });
        if self.args.profile {
            let shares = profile::by_op(embedder.plan(), &tensor, runs)?;
            self.report.profiles.push((network.stage.clone(), shares));
        }
        let output = (self.args.dump_tensors.is_some())
            .then(|| embedder.run_network(tensor.clone()))
            .transpose()?;
        self.dump(&network, id, &format!("{id}.npy"), &tensor, output)?;
        self.report.stages.extend([align, embed, network]);
        self.matching(&embedder, &crops)?;
        Ok(embedder)
    }

    /// Matching one and four faces against a synthetic gallery of `--people`.
    fn matching(&mut self, embedder: &Embedder, crops: &[RgbImage]) -> anyhow::Result<()> {
        let gallery = synthetic_gallery(self.args.people, embedder.spec().output.dim);
        let probe: Vec<Vec<f32>> = vec![embedder.embed_crop(&crops[0])?];
        let probes4: Vec<Vec<f32>> = crops
            .iter()
            .cycle()
            .take(4)
            .map(|c| embedder.embed_crop(c))
            .collect::<Result<_, _>>()?;
        for (label, faces) in [("1 face", &probe), ("4 faces", &probes4)] {
            self.report.stages.push(measure(
                format!(
                    "match {label} against {} people ({})",
                    self.args.people,
                    embedder.id()
                ),
                self.rounds * 20,
                &[()],
                |_| {
                    gallery.identify(faces);
                },
            ));
        }
        Ok(())
    }

    /// End to end on 640x480 MJPEG frames: decode, detect at the service's default size, embed every
    /// face, match. Every face every frame: the service itself embeds far less often (tracking).
    fn end_to_end(&mut self, detector: &mut Detector, embedder: &Embedder) {
        let gallery = synthetic_gallery(self.args.people, embedder.spec().output.dim);
        let one: Vec<Vec<u8>> = self.frames_vga.iter().map(jpeg).collect();
        let four: Vec<Vec<u8>> = self.quads.iter().map(jpeg).collect();
        for (label, jpegs) in [("1 face", &one), ("4 faces", &four)] {
            if jpegs.is_empty() {
                continue;
            }
            let per_frame = measure(
                format!("end to end, {label} ({})", embedder.id()),
                self.rounds,
                jpegs,
                |j| {
                    let frame = decode_rgb(j).expect("decodes");
                    recognise(detector, embedder, &gallery, &frame);
                },
            );
            let fps = &mut self.report.end_to_end_fps;
            fps.push((format!("{label}, 1 thread"), 1000.0 / per_frame.median_ms));
            fps.push((
                format!("{label}, capture + inference threads"),
                pipelined_fps(detector, embedder, &gallery, jpegs, self.rounds),
            ));
            self.report.stages.push(per_frame);
        }
    }

    /// With `--dump-tensors`: writes a network's input and records it for the index.
    fn dump(
        &mut self,
        network: &Stage,
        model: &str,
        name: &str,
        tensor: &Tensor,
        embedding: Option<Vec<f32>>,
    ) -> anyhow::Result<()> {
        let Some(dir) = self.args.dump_tensors.as_deref() else {
            return Ok(());
        };
        npy::write_f32(&dir.join(name), tensor)?;
        self.dumps.push(DumpedInput {
            stage: network.stage.clone(),
            model: model.to_string(),
            weights: self.catalog.weights_path(self.catalog.get(model)?),
            tensor: name.to_string(),
            tract_median_ms: network.median_ms,
            tract_p90_ms: network.p90_ms,
            embedding,
        });
        Ok(())
    }

    /// With `--dump-tensors`: the index bench/ort_reference.py reads.
    fn write_dumps(&self) -> anyhow::Result<()> {
        let Some(dir) = self.args.dump_tensors.as_deref() else {
            return Ok(());
        };
        let index = dir.join("index.json");
        std::fs::write(&index, serde_json::to_string_pretty(&self.dumps)?)
            .map_err(|e| anyhow::anyhow!("{}: {e}", index.display()))?;
        eprintln!(
            "bench: wrote {} network inputs and {}",
            self.dumps.len(),
            index.display()
        );
        Ok(())
    }
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
