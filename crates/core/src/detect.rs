//! Face detection with YuNet on tract: frame -> padded BGR tensor -> network -> anchor decoding -> NMS ->
//! boxes, scores and 5 landmarks in frame pixels. Decoding follows OpenCV's FaceDetectorYN exactly.

use crate::error::ModelError;
use crate::inference::{Kernels, OnnxModel, Plan, VerifiedWeights, f32_values};
use crate::manifest::{ColorOrder, DetectorSpec, Manifest};
use image::RgbImage;
use serde::Serialize;
use tract_onnx::prelude::*;

/// One detected face in frame pixels. Landmarks: image-left eye, image-right eye, nose tip, image-left
/// mouth corner, image-right mouth corner.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Detection {
    #[serde(rename = "box")]
    pub bbox: [f32; 4],
    pub score: f32,
    pub landmarks: [[f32; 2]; 5],
}

impl Detection {
    pub fn width(&self) -> f32 {
        self.bbox[2] - self.bbox[0]
    }
    pub fn height(&self) -> f32 {
        self.bbox[3] - self.bbox[1]
    }
    pub fn area(&self) -> f32 {
        self.width().max(0.0) * self.height().max(0.0)
    }
    pub fn centre(&self) -> [f32; 2] {
        [
            (self.bbox[0] + self.bbox[2]) / 2.0,
            (self.bbox[1] + self.bbox[3]) / 2.0,
        ]
    }
    pub fn iou(&self, other: &Detection) -> f32 {
        let ix = (self.bbox[2].min(other.bbox[2]) - self.bbox[0].max(other.bbox[0])).max(0.0);
        let iy = (self.bbox[3].min(other.bbox[3]) - self.bbox[1].max(other.bbox[1])).max(0.0);
        let inter = ix * iy;
        let union = self.area() + other.area() - inter;
        if union > 0.0 { inter / union } else { 0.0 }
    }
}

/// How alike two detectors' faces are over a set of images (`add` per image): an int8 detector
/// against its f32 base. Faces pair up greedily by IoU, best first, at IoU >= `MATCH_IOU`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct FaceAgreement {
    /// Faces the reference (the base) found.
    pub reference_faces: usize,
    /// Faces the other detector found.
    pub other_faces: usize,
    /// Faces found by both.
    pub alike: usize,
    iou_sum: f32,
    /// The lowest IoU of a pair.
    pub worst_iou: f32,
    landmark_sum: f32,
    /// The largest landmark distance of a pair, over the reference box's width.
    pub worst_landmark: f32,
}

impl FaceAgreement {
    /// Boxes overlapping less than this are different faces.
    pub const MATCH_IOU: f32 = 0.5;

    pub fn add(&mut self, reference: &[Detection], other: &[Detection]) {
        self.reference_faces += reference.len();
        self.other_faces += other.len();
        let mut pairs: Vec<(f32, usize, usize)> = reference
            .iter()
            .enumerate()
            .flat_map(|(i, a)| other.iter().enumerate().map(move |(j, b)| (a.iou(b), i, j)))
            .filter(|&(iou, _, _)| iou >= Self::MATCH_IOU)
            .collect();
        pairs.sort_by(|a, b| b.0.total_cmp(&a.0));
        let (mut used_a, mut used_b) = (vec![false; reference.len()], vec![false; other.len()]);
        for (iou, i, j) in pairs {
            if used_a[i] || used_b[j] {
                continue;
            }
            (used_a[i], used_b[j]) = (true, true);
            let (a, b) = (&reference[i], &other[j]);
            let landmark = a
                .landmarks
                .iter()
                .zip(&b.landmarks)
                .map(|(p, q)| (p[0] - q[0]).hypot(p[1] - q[1]))
                .fold(0.0, f32::max)
                / a.width().max(1.0);
            self.worst_iou = if self.alike == 0 {
                iou
            } else {
                self.worst_iou.min(iou)
            };
            self.worst_landmark = self.worst_landmark.max(landmark);
            self.alike += 1;
            self.iou_sum += iou;
            self.landmark_sum += landmark;
        }
    }

    /// 2 x faces found by both / (faces of one + faces of the other); `None` without any face.
    pub fn share(&self) -> Option<f32> {
        let all = self.reference_faces + self.other_faces;
        (all > 0).then(|| 2.0 * self.alike as f32 / all as f32)
    }

    /// The mean IoU of the pairs.
    pub fn mean_iou(&self) -> f32 {
        self.iou_sum / self.alike.max(1) as f32
    }

    /// The mean of each pair's largest landmark distance, over the reference box's width.
    pub fn mean_landmark(&self) -> f32 {
        self.landmark_sum / self.alike.max(1) as f32
    }
}

/// The "main" face of an image: the one maximising area - 2 * |box centre - image centre|^2, which
/// prefers large faces near the middle (the LFW convention of the reference pipeline).
pub fn main_face(faces: &[Detection], width: u32, height: u32) -> Option<usize> {
    let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
    let merit = |d: &Detection| {
        let [x, y] = d.centre();
        d.area() - 2.0 * ((x - cx).powi(2) + (y - cy).powi(2))
    };
    (0..faces.len()).max_by(|&a, &b| merit(&faces[a]).total_cmp(&merit(&faces[b])))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DetectOptions {
    pub score_threshold: f32,
    pub nms_iou: f32,
    /// Frames whose longer side exceeds this are scaled down for detection; 0 = native resolution.
    pub max_side: u32,
}

/// Default longest side for detection: 640 keeps YuNet near 30 ms on a small CPU and still finds faces
/// of about 20 px at that scale.
pub const DEFAULT_MAX_SIDE: u32 = 640;

/// What a user may set (the config's `[detection]`); the rest comes from the detector's manifest.
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectSettings {
    /// Overrides the manifest's score threshold.
    pub score_threshold: Option<f32>,
    pub max_side: u32,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            score_threshold: None,
            max_side: DEFAULT_MAX_SIDE,
        }
    }
}

impl DetectOptions {
    pub fn resolve(spec: &DetectorSpec, settings: &DetectSettings) -> DetectOptions {
        DetectOptions {
            score_threshold: settings.score_threshold.unwrap_or(spec.score_threshold),
            nms_iou: spec.nms_iou,
            max_side: settings.max_side,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    #[error("detector inference failed: {0:#}")]
    Inference(TractError),
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("detector output {name} has {actual} values, expected {expected}")]
    OutputShape {
        name: String,
        actual: usize,
        expected: usize,
    },
}

/// Outputs of one stride: indices of cls, obj, bbox and kps among the model outputs.
#[derive(Debug, Clone, Copy)]
struct StrideOutputs {
    stride: usize,
    cls: usize,
    obj: usize,
    bbox: usize,
    kps: usize,
}

/// Optimised plans are specialised to one input shape; a camera keeps one shape, a photo batch a few.
const PLAN_CACHE: usize = 4;

pub struct Detector {
    id: String,
    weights_sha256: String,
    model: OnnxModel,
    spec: DetectorSpec,
    options: DetectOptions,
    strides: Vec<StrideOutputs>,
    plans: Vec<((usize, usize), Plan)>,
    downscaler: Downscaler,
}

/// Bilinear (area-aware when shrinking) RGB downscaling with SIMD kernels, keeping its buffers from
/// frame to frame. Measured at 640x480 -> 320x240: 5.5 ms with image's Triangle filter (the
/// previous implementation), see `face-edge bench` ("detect ... at max side").
struct Downscaler {
    resizer: fast_image_resize::Resizer,
    out: Vec<u8>,
}

impl Downscaler {
    fn new() -> Downscaler {
        Downscaler {
            resizer: fast_image_resize::Resizer::new(),
            out: Vec::new(),
        }
    }

    /// `frame` scaled to `w`x`h`, as packed RGB bytes.
    fn resize(&mut self, frame: &RgbImage, w: u32, h: u32) -> &[u8] {
        use fast_image_resize::images::{Image, ImageRef};
        use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions};
        let src = ImageRef::new(
            frame.width(),
            frame.height(),
            frame.as_raw(),
            PixelType::U8x3,
        )
        .expect("an RgbImage buffer holds width x height x 3 bytes");
        self.out.resize(w as usize * h as usize * 3, 0);
        let mut dst = Image::from_slice_u8(w, h, &mut self.out, PixelType::U8x3)
            .expect("the buffer was sized for the destination");
        let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        self.resizer
            .resize(&src, &mut dst, &options)
            .expect("same pixel type, non-empty images");
        &self.out
    }
}

impl Detector {
    pub fn new(
        manifest: &Manifest,
        weights: &VerifiedWeights,
        settings: &DetectSettings,
        kernels: Kernels,
    ) -> Result<Detector, ModelError> {
        let spec = manifest
            .detector
            .clone()
            .ok_or_else(|| ModelError::WrongRole {
                id: manifest.id.clone(),
                actual: "embedder",
                wanted: "detector",
            })?;
        let model = OnnxModel::parse(weights, kernels)?;
        let names = model.output_names();
        let find = |prefix: &str, stride: u32| {
            let name = format!("{prefix}_{stride}");
            names
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| ModelError::Contract {
                    path: weights.path.clone(),
                    id: manifest.id.clone(),
                    message: format!("no output named {name} (outputs: {})", names.join(", ")),
                })
        };
        let strides = spec
            .strides
            .iter()
            .map(|&s| {
                Ok(StrideOutputs {
                    stride: s as usize,
                    cls: find("cls", s)?,
                    obj: find("obj", s)?,
                    bbox: find("bbox", s)?,
                    kps: find("kps", s)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let options = DetectOptions::resolve(&spec, settings);
        Ok(Detector {
            id: manifest.id.clone(),
            weights_sha256: weights.sha256.clone(),
            model,
            spec,
            options,
            strides,
            plans: Vec::new(),
            downscaler: Downscaler::new(),
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn weights_sha256(&self) -> &str {
        &self.weights_sha256
    }

    pub fn options(&self) -> DetectOptions {
        self.options
    }

    /// The network input for `frame`: scaled to `max_side`, padded to the input multiple, NCHW in the
    /// network's colour order. Also returns the scaled size (before padding).
    pub fn input_tensor(&mut self, frame: &RgbImage) -> (Tensor, (u32, u32)) {
        let (w, h) = frame.dimensions();
        let scale = detection_scale(w, h, self.options.max_side);
        let (iw, ih) = if scale < 1.0 {
            scaled_size(w, h, scale)
        } else {
            (w, h)
        };
        let input = if scale < 1.0 {
            self.downscaler.resize(frame, iw, ih)
        } else {
            frame.as_raw()
        };
        let multiple = self.spec.input_multiple as usize;
        let pw = (iw as usize).div_ceil(multiple) * multiple;
        let ph = (ih as usize).div_ceil(multiple) * multiple;
        let tensor = to_padded_tensor(input, iw as usize, ih as usize, pw, ph, self.spec.color);
        (tensor, (iw, ih))
    }

    /// `input_tensor`, zero-padded further to `side` x `side` (as the network's own padding, bottom
    /// and right): the one shape a quantizer calibrates the network at. `None` if the scaled frame
    /// does not fit.
    pub fn square_input_tensor(&mut self, frame: &RgbImage, side: usize) -> Option<Tensor> {
        let (tensor, _) = self.input_tensor(frame);
        let (ph, pw) = (tensor.shape()[2], tensor.shape()[3]);
        if ph > side || pw > side {
            return None;
        }
        let values = f32_values(&tensor).ok()?;
        let mut square = vec![0f32; 3 * side * side];
        for (plane, out) in values
            .chunks_exact(ph * pw)
            .zip(square.chunks_exact_mut(side * side))
        {
            for (row, out) in plane.chunks_exact(pw).zip(out.chunks_exact_mut(side)) {
                out[..pw].copy_from_slice(row);
            }
        }
        Tensor::from_shape(&[1, 3, side, side], &square).ok()
    }

    /// Detects faces in an RGB frame; coordinates are in the frame's own pixels.
    pub fn detect(&mut self, frame: &RgbImage) -> Result<Vec<Detection>, DetectError> {
        let (w, h) = frame.dimensions();
        let (tensor, (iw, ih)) = self.input_tensor(frame);
        let (ph, pw) = (tensor.shape()[2], tensor.shape()[3]);
        let outputs = self.run_network(tensor)?;

        let mut faces = Vec::new();
        for s in &self.strides {
            let slice = |i: usize| f32_values(&outputs[i]).map_err(DetectError::Inference);
            let raw = RawStride {
                stride: s.stride,
                cols: pw / s.stride,
                rows: ph / s.stride,
                cls: slice(s.cls)?,
                obj: slice(s.obj)?,
                bbox: slice(s.bbox)?,
                kps: slice(s.kps)?,
            };
            raw.check()?;
            raw.decode(self.options.score_threshold, &mut faces);
        }
        let mut faces = non_max_suppression(faces, self.options.nms_iou);
        // Map back from the detection resolution to frame pixels.
        let (sx, sy) = (w as f32 / iw as f32, h as f32 / ih as f32);
        for f in &mut faces {
            f.bbox = [
                f.bbox[0] * sx,
                f.bbox[1] * sy,
                f.bbox[2] * sx,
                f.bbox[3] * sy,
            ];
            for p in &mut f.landmarks {
                *p = [p[0] * sx, p[1] * sy];
            }
        }
        Ok(faces)
    }

    /// The network alone on an input made by `input_tensor` (the raw outputs, not decoded).
    pub fn run_network(&mut self, tensor: Tensor) -> Result<TVec<TValue>, DetectError> {
        let (ph, pw) = (tensor.shape()[2], tensor.shape()[3]);
        self.plan(pw, ph)?
            .run(tvec!(tensor.into_tvalue()))
            .map_err(DetectError::Inference)
    }

    /// The optimised network for a padded input of `pw` x `ph` (cached per shape).
    pub fn plan(&mut self, pw: usize, ph: usize) -> Result<Plan, ModelError> {
        if let Some(pos) = self.plans.iter().position(|(shape, _)| *shape == (pw, ph)) {
            let entry = self.plans.remove(pos);
            let plan = entry.1.clone();
            self.plans.insert(0, entry);
            return Ok(plan);
        }
        let plan = self.model.plan_for_shape(&[1, 3, ph, pw])?;
        self.plans.insert(0, ((pw, ph), plan.clone()));
        self.plans.truncate(PLAN_CACHE);
        Ok(plan)
    }
}

/// Factor (<= 1) applied to a frame before detection so its longer side fits `max_side`.
pub(crate) fn detection_scale(w: u32, h: u32, max_side: u32) -> f32 {
    let longer = w.max(h);
    if max_side == 0 || longer <= max_side {
        1.0
    } else {
        max_side as f32 / longer as f32
    }
}

fn scaled_size(w: u32, h: u32, scale: f32) -> (u32, u32) {
    (
        ((w as f32 * scale).round() as u32).max(1),
        ((h as f32 * scale).round() as u32).max(1),
    )
}

/// NCHW float tensor of 0..255 values in the network's colour order, zero-padded bottom/right, from
/// packed RGB bytes of a `w`x`h` image.
fn to_padded_tensor(
    raw: &[u8],
    w: usize,
    h: usize,
    pw: usize,
    ph: usize,
    color: ColorOrder,
) -> Tensor {
    let mut data = vec![0f32; 3 * pw * ph];
    let plane = pw * ph;
    let order: [usize; 3] = match color {
        ColorOrder::Bgr => [2, 1, 0],
        ColorOrder::Rgb => [0, 1, 2],
    };
    for y in 0..h {
        let row = &raw[y * w * 3..(y + 1) * w * 3];
        let base = y * pw;
        for (x, px) in row.chunks_exact(3).enumerate() {
            data[base + x] = px[order[0]] as f32;
            data[plane + base + x] = px[order[1]] as f32;
            data[2 * plane + base + x] = px[order[2]] as f32;
        }
    }
    Tensor::from_shape(&[1, 3, ph, pw], &data).expect("shape matches data length")
}

/// The four raw outputs of one stride.
struct RawStride<'a> {
    stride: usize,
    cols: usize,
    rows: usize,
    cls: &'a [f32],
    obj: &'a [f32],
    bbox: &'a [f32],
    kps: &'a [f32],
}

impl RawStride<'_> {
    fn check(&self) -> Result<(), DetectError> {
        let n = self.rows * self.cols;
        for (name, data, per) in [
            ("cls", self.cls, 1),
            ("obj", self.obj, 1),
            ("bbox", self.bbox, 4),
            ("kps", self.kps, 10),
        ] {
            if data.len() != n * per {
                return Err(DetectError::OutputShape {
                    name: format!("{name}_{}", self.stride),
                    actual: data.len(),
                    expected: n * per,
                });
            }
        }
        Ok(())
    }

    /// Appends every anchor scoring at least `threshold`, in input pixels.
    fn decode(&self, threshold: f32, out: &mut Vec<Detection>) {
        let s = self.stride as f32;
        for i in 0..self.rows * self.cols {
            let score = (self.cls[i].clamp(0.0, 1.0) * self.obj[i].clamp(0.0, 1.0)).sqrt();
            if score < threshold {
                continue;
            }
            let (row, col) = ((i / self.cols) as f32, (i % self.cols) as f32);
            let b = &self.bbox[i * 4..i * 4 + 4];
            let (cx, cy) = ((col + b[0]) * s, (row + b[1]) * s);
            let (bw, bh) = (b[2].exp() * s, b[3].exp() * s);
            let k = &self.kps[i * 10..i * 10 + 10];
            let landmarks =
                std::array::from_fn(|j| [(k[2 * j] + col) * s, (k[2 * j + 1] + row) * s]);
            out.push(Detection {
                bbox: [cx - bw / 2.0, cy - bh / 2.0, cx + bw / 2.0, cy + bh / 2.0],
                score,
                landmarks,
            });
        }
    }
}

/// Greedy NMS: highest score first, dropping any box overlapping a kept one by more than `iou`.
pub(crate) fn non_max_suppression(mut faces: Vec<Detection>, iou: f32) -> Vec<Detection> {
    faces.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Detection> = Vec::with_capacity(faces.len().min(16));
    for f in faces {
        if kept.iter().all(|k| k.iou(&f) <= iou) {
            kept.push(f);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    #[test]
    fn faces_pair_up_by_overlap_and_the_share_counts_both_sides() {
        let face = |x: f32, shift: f32| Detection {
            bbox: [x, 0.0, x + 100.0, 100.0],
            score: 0.9,
            landmarks: [[x + 30.0 + shift, 40.0]; 5],
        };
        let mut agreement = FaceAgreement::default();
        assert_eq!(agreement.share(), None);
        // Two faces found by both (one 10 px to the side: IoU 90/110), one only by the reference,
        // one only by the other.
        let reference = [face(0.0, 0.0), face(300.0, 0.0), face(600.0, 0.0)];
        let other = [face(310.0, 5.0), face(1.0, 0.0), face(900.0, 0.0)];
        agreement.add(&reference, &other);
        assert_eq!(
            (
                agreement.reference_faces,
                agreement.other_faces,
                agreement.alike
            ),
            (3, 3, 2)
        );
        assert!((agreement.share().unwrap() - 4.0 / 6.0).abs() < 1e-6);
        assert!((agreement.worst_iou - 90.0 / 110.0).abs() < 1e-6);
        // The pair 10 px apart has its landmarks 15 px apart: 0.15 of the width.
        assert!((agreement.worst_landmark - 0.15).abs() < 1e-6);
        agreement.add(&[], &[face(0.0, 0.0)]);
        assert!((agreement.share().unwrap() - 4.0 / 7.0).abs() < 1e-6);
    }

    use super::*;

    fn det(bbox: [f32; 4], score: f32) -> Detection {
        Detection {
            bbox,
            score,
            landmarks: [[0.0; 2]; 5],
        }
    }

    #[test]
    fn decode_places_an_anchor_like_opencv() {
        // 64x32 input at stride 16: 4 cols x 2 rows; light up anchor 6 = row 1, col 2.
        let n = 8;
        let mut cls = vec![0.0; n];
        let mut obj = vec![0.0; n];
        cls[6] = 0.81;
        obj[6] = 1.5; // clamped to 1
        let mut bbox = vec![0.0; n * 4];
        bbox[24..28].copy_from_slice(&[0.5, 0.25, 1.0f32.ln(), 2.0f32.ln()]);
        let mut kps = vec![0.0; n * 10];
        kps[60] = 0.5;
        kps[61] = -0.5;
        let raw = RawStride {
            stride: 16,
            cols: 4,
            rows: 2,
            cls: &cls,
            obj: &obj,
            bbox: &bbox,
            kps: &kps,
        };
        raw.check().unwrap();
        let mut out = vec![];
        raw.decode(0.5, &mut out);
        assert_eq!(out.len(), 1);
        let d = out[0];
        assert!((d.score - 0.9).abs() < 1e-6);
        // centre ((2 + 0.5) * 16, (1 + 0.25) * 16) = (40, 20); size (16, 32).
        assert_eq!(d.bbox, [32.0, 4.0, 48.0, 36.0]);
        assert_eq!(d.landmarks[0], [40.0, 8.0]);
        assert_eq!(d.landmarks[1], [32.0, 16.0]);
    }

    #[test]
    fn wrong_output_sizes_are_reported_by_name() {
        let v = vec![0.0; 3];
        let raw = RawStride {
            stride: 8,
            cols: 2,
            rows: 2,
            cls: &v,
            obj: &v,
            bbox: &v,
            kps: &v,
        };
        let err = raw.check().unwrap_err().to_string();
        assert!(err.contains("cls_8"), "{err}");
    }

    #[test]
    fn nms_keeps_the_best_of_overlapping_boxes() {
        let faces = vec![
            det([0.0, 0.0, 10.0, 10.0], 0.8),
            det([1.0, 1.0, 11.0, 11.0], 0.9),
            det([20.0, 20.0, 30.0, 30.0], 0.75),
            det([0.0, 0.0, 10.0, 5.0], 0.7), // IoU 0.5 with the first, suppressed by the second too
        ];
        let kept = non_max_suppression(faces, 0.3);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].score, 0.9);
        assert_eq!(kept[1].score, 0.75);
    }

    #[test]
    fn main_face_prefers_large_central_faces() {
        let faces = vec![
            det([0.0, 0.0, 40.0, 40.0], 0.9),
            det([80.0, 80.0, 120.0, 120.0], 0.8),
            det([90.0, 90.0, 110.0, 110.0], 0.95),
        ];
        assert_eq!(main_face(&faces, 200, 200), Some(1));
        assert_eq!(main_face(&[], 200, 200), None);
    }

    #[test]
    fn scale_only_shrinks_large_frames() {
        assert_eq!(detection_scale(640, 480, 640), 1.0);
        assert_eq!(detection_scale(1280, 720, 640), 0.5);
        assert_eq!(detection_scale(4000, 3000, 0), 1.0);
        assert_eq!(scaled_size(1280, 720, 0.5), (640, 360));
    }

    #[test]
    fn padded_tensor_is_bgr_with_zero_padding() {
        let img = RgbImage::from_fn(3, 2, |x, y| image::Rgb([x as u8, y as u8, 200]));
        let t = to_padded_tensor(img.as_raw(), 3, 2, 4, 4, ColorOrder::Bgr);
        let d = f32_values(&t).unwrap();
        assert_eq!(t.shape(), &[1, 3, 4, 4]);
        assert_eq!(d[0], 200.0); // B plane, (0,0)
        assert_eq!(d[16 + 4 + 2], 1.0); // G plane = y, at (x=2, y=1)
        assert_eq!(d[32 + 4 + 2], 2.0); // R plane = x
        assert_eq!(d[3], 0.0); // padding column
        assert_eq!(d[32 + 12], 0.0); // padding row
    }

    #[test]
    fn downscaling_averages_like_a_bilinear_area_filter() {
        // Stripes two pixels wide halve to a uniform grey; a flat colour stays exactly itself.
        let stripes = RgbImage::from_fn(64, 48, |x, _| {
            if (x / 2) % 2 == 0 {
                image::Rgb([200, 200, 200])
            } else {
                image::Rgb([0, 0, 0])
            }
        });
        let mut d = Downscaler::new();
        let half = d.resize(&stripes, 16, 12).to_vec();
        assert_eq!(half.len(), 16 * 12 * 3);
        // Away from the borders (where the filter sees only one side).
        for y in 1..11 {
            for x in 1..15 {
                let v = half[(y * 16 + x) * 3];
                assert!((95..=105).contains(&v), "({x}, {y}): {v}");
            }
        }
        let flat = RgbImage::from_pixel(100, 80, image::Rgb([10, 120, 250]));
        let out = d.resize(&flat, 33, 27).to_vec();
        assert!(out.chunks(3).all(|p| p == [10, 120, 250]));
    }
}
