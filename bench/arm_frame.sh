#!/bin/bash
# Instructions per whole 640x480 frame on the Raspberry Pi cores: JPEG decode, YuNet at 640x480, alignment
# and MobileFaceNet (f32, the int8-qdq MobileFaceNet, and both int8-qdq), face-edge (`face-edge embed`) next to the onnxruntime
# 1.27 + OpenCV pipeline of bench/frame_pipeline.py on the same frame and ONNX files, counted by
# ../shared/tools/arm-icount under qemu. Run by hand, not in CI; instruction counts are a proxy, not time.
#
#   bench/arm_frame.sh [MODELS_DIR] [VARIANTS_DIR]
#
# The frame is the middle 960x720 of ../shared/data/photos/probes/obama-720p.jpg scaled to 640x480 (one
# face), written once to target/frame640.jpg. Arguments and settings: bench/arm_common.sh.
source "$(dirname "$0")/arm_common.sh"
frame=$here/target/frame640.jpg
[ -f "$variants/mobilefacenet.int8-qdq.onnx" ] || { echo "missing $variants/mobilefacenet.int8-qdq.onnx (models/quantize.py --method int8-qdq)" >&2; exit 1; }
make_yunet_int8

cargo build --release --quiet --target $target -p face-edge --bin face-edge
binary=$here/target/$target/release/face-edge
# The models and the variants in one directory, as a user's models directory would hold them.
both=$(mktemp -d)
trap 'rm -rf "$both"' EXIT
ln -s "$models"/* "$variants"/* "$yunet_int8_dir"/* "$both"/

if [ ! -f "$frame" ]; then
  "$icount/count.sh" cortex-a72 -- python -c "
import cv2
im = cv2.imread('$shared/data/photos/probes/obama-720p.jpg'); w = im.shape[1]
im = cv2.resize(im[:, (w - 960) // 2:(w + 960) // 2], (640, 480), interpolation=cv2.INTER_AREA)
cv2.imwrite('$frame', im, [cv2.IMWRITE_JPEG_QUALITY, 90])" >/dev/null
fi

frames() { for _ in $(seq "$1"); do echo "$frame"; done; }

face_edge() { # CPU DETECTOR EMBEDDER
  local run=("$binary" embed --jsonl --detector "$2" --model "$3")
  local one many
  one=$("$icount/count.sh" "$1" -E TRACT_CPU_AARCH64_KIND="$(kind "$1")" -E FACE_EDGE_MODELS_DIR="$both" -- \
    "${run[@]}" $(frames 1))
  many=$("$icount/count.sh" "$1" -E TRACT_CPU_AARCH64_KIND="$(kind "$1")" -E FACE_EDGE_MODELS_DIR="$both" -- \
    "${run[@]}" $(frames $((1 + extra))))
  echo $(((many - one) / extra))
}
onnxruntime() { # CPU YUNET_ONNX EMBEDDER_ONNX
  local one many
  one=$("$icount/count.sh" "$1" -- python "$here/bench/frame_pipeline.py" "$2" "$3" "$frame" 1)
  many=$("$icount/count.sh" "$1" -- python "$here/bench/frame_pipeline.py" "$2" "$3" "$frame" $((1 + extra)))
  echo $(((many - one) / extra))
}

yunet=$models/yunet_2023mar.onnx
mfn=$models/mobilefacenet.onnx
mfn_int8=$variants/mobilefacenet.int8-qdq.onnx
echo "| 640x480 frame | core | onnxruntime + OpenCV f32 | the same, int8 MobileFaceNet | the same, int8 YuNet too | face-edge f32 | face-edge int8 MobileFaceNet | face-edge int8 YuNet too |"
echo "|---|---|---|---|---|---|---|---|"
for cpu in cortex-a72 cortex-a76; do
  echo "| decode + YuNet + align + MobileFaceNet | $cpu | $(millions "$(onnxruntime $cpu "$yunet" "$mfn")") |" \
    "$(millions "$(onnxruntime $cpu "$yunet" "$mfn_int8")") | $(millions "$(onnxruntime $cpu "$yunet_int8" "$mfn_int8")") |" \
    "$(millions "$(face_edge $cpu yunet-2023mar mobilefacenet)") |" \
    "$(millions "$(face_edge $cpu yunet-2023mar mobilefacenet-int8-qdq)") |" \
    "$(millions "$(face_edge $cpu yunet-2023mar-int8-qdq mobilefacenet-int8-qdq)") |"
done
