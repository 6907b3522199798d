# Shared by bench/arm_icount.sh and bench/arm_frame.sh (sourced with their arguments): where things are,
# the CPU settings, and the int8 YuNet both measure. MODELS_DIR (first argument) holds the f32 weights (default
# $FACE_EDGE_MODELS_DIR, else ../shared/models), VARIANTS_DIR (second) the int8 QDQ files
# models/quantize.py made (default target/variants, as .ci/run makes them). Figures are marginal over 1
# and 1 + K runs (K = 5), so start-up and model loading cancel out. Pi 4 = cortex-a72 with
# TRACT_CPU_AARCH64_KIND=a72; Pi 5 = cortex-a76 with a75, which gives tract the fp16 and dot-product
# kernels a Pi 5's kernel would let it detect (qemu-user shows the host's /proc/cpuinfo); face-edge's own
# kernels read the CPU's features as qemu emulates them.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
here=$PWD
shared=$(cd "$here/.." && pwd)/shared
models=${1:-${FACE_EDGE_MODELS_DIR:-$shared/models}}
variants=${2:-$here/target/variants}
icount=$shared/tools/arm-icount
target=aarch64-unknown-linux-gnu
extra=${K:-5}

kind() { [ "$1" = cortex-a72 ] && echo a72 || echo a75; }
millions() { awk -v n="$1" 'BEGIN { printf "%.0f M", n / 1e6 }'; }

# face-edge's own int8 YuNet (`face-edge models quantize`, calibrated on 200 LFW photos), made once into
# target/bench-yunet; onnxruntime runs the same file.
yunet_int8_dir=$here/target/bench-yunet
yunet_int8=$yunet_int8_dir/yunet_2023mar.int8-qdq.onnx
make_yunet_int8() {
  [ -f "$yunet_int8" ] && return
  cargo build --release --quiet -p face-edge --bin face-edge
  "$here/target/release/face-edge" models --models-dir "$models" quantize yunet-2023mar \
    --calibration "$shared/data/lfw" --limit 200 --out-dir "$yunet_int8_dir" >&2
}
