#!/bin/bash
# Instructions per inference on the Raspberry Pi cores, face-edge (tract with face-edge's kernels) next to
# onnxruntime 1.27 on the same ONNX files, counted by ../shared/tools/arm-icount under qemu. Run by hand
# (it takes several minutes per network), not in CI; instruction counts are a proxy, not time.
#
#   bench/arm_icount.sh [MODELS_DIR] [VARIANTS_DIR]
#   NETWORKS=yunet_2023mar bench/arm_icount.sh     # only the networks whose weights stems are named
#
# Arguments and settings: bench/arm_common.sh.
source "$(dirname "$0")/arm_common.sh"

cargo build --release --quiet --target $target -p face-edge-kernels --example network_runs
runner=$here/target/$target/release/examples/network_runs

# marginal CPU -- PROGRAM ARGS...: the program's last argument before MODE is the run count.
face_edge() { # CPU MODEL SHAPE MODE
  local one many
  one=$("$icount/count.sh" "$1" -E TRACT_CPU_AARCH64_KIND="$(kind "$1")" -- "$runner" "$2" "$3" 1 "$4")
  many=$("$icount/count.sh" "$1" -E TRACT_CPU_AARCH64_KIND="$(kind "$1")" -- "$runner" "$2" "$3" $((1 + extra)) "$4")
  echo $(((many - one) / extra))
}
onnxruntime() { # CPU MODEL SHAPE: at SHAPE through bench/ort_shaped.py (arm-icount's ort_net.py
  # would run an input of free size at 1x1)
  local one many
  one=$("$icount/count.sh" "$1" -- python "$here/bench/ort_shaped.py" "$2" "$3" 1)
  many=$("$icount/count.sh" "$1" -- python "$here/bench/ort_shaped.py" "$2" "$3" $((1 + extra)))
  echo $(((many - one) / extra))
}
make_yunet_int8

echo "| network | core | onnxruntime f32 | onnxruntime int8 QDQ | face-edge f32 | face-edge f16 | face-edge int8 QDQ |"
echo "|---|---|---|---|---|---|---|"
for net in "MobileFaceNet 112|mobilefacenet|1x3x112x112|$variants" \
  "EfficientNetV2-B0 stand-in 224|japanese_face_v1_standin|1x3x224x224|$variants" \
  "YuNet 640x480|yunet_2023mar|1x3x480x640|$yunet_int8_dir"; do
  IFS='|' read -r label stem shape made <<<"$net"
  [[ -n "${NETWORKS:-}" && " $NETWORKS " != *" $stem "* ]] && continue
  f32=$models/$stem.onnx
  int8=$made/$stem.int8-qdq.onnx
  [ -f "$f32" ] || { echo "missing $f32" >&2; exit 1; }
  [ -f "$int8" ] || { echo "missing $int8 (make it with models/quantize.py --method int8-qdq)" >&2; exit 1; }
  for cpu in ${CPUS:-cortex-a72 cortex-a76}; do
    f16=n/a
    [ "$cpu" = cortex-a76 ] && f16=$(millions "$(face_edge "$cpu" "$f32" "$shape" f16)")
    echo "| $label | $cpu | $(millions "$(onnxruntime "$cpu" "$f32" "$shape")") | $(millions "$(onnxruntime "$cpu" "$int8" "$shape")") |" \
      "$(millions "$(face_edge "$cpu" "$f32" "$shape" face-edge)") | $f16 | $(millions "$(face_edge "$cpu" "$int8" "$shape" face-edge)") |"
  done
done
