#!/usr/bin/env bash
# The package under real systemd with a real V4L2 driver: boots a Debian 12 virtual machine
# (tests/vm/build-image.sh; cached under target/vm-image/<hash of the image's sources>), installs the
# amd64 .deb of target/release/face-edge in it and runs tests/vm/guest-test.sh there as a unit: install
# leaves the unit disabled, `systemctl enable --now` reaches active (Type=notify), a v4l2loopback camera fed
# by ffmpeg (YUYV, then MJPEG after the feed was stopped) gives recognised events on the guest's mosquitto,
# reload, a SIGSTOPped process restarted by the watchdog, `systemctl stop` leaving "offline", journal
# levels. Exit 0 only when the guest says "pass". Root, mmdebstrap, qemu-system-x86 and cargo-deb needed
# (.ci/run installs them); about 5 minutes under software emulation (TCG), the image build 2-4 more.
#   tests/vm/run.sh               (after cargo build --release)
#   tests/vm/run.sh --image-only  only builds the image (CI does that while Rust builds)
# Environment: FACE_EDGE_SHARED (../shared), FACE_EDGE_MODELS_DIR, FACE_EDGE_VM_ACCEL=kvm to use KVM
# where it runs a stock kernel (default tcg), FACE_EDGE_VM_KEEP=1 keeps the share directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
here=tests/vm
shared="${FACE_EDGE_SHARED:-$(cd .. && pwd)/shared}"
models="${FACE_EDGE_MODELS_DIR:-$shared/models}"
t0=$(date +%s)
say() { printf '[host %4ss] %s\n' "$(( $(date +%s) - t0 ))" "$*"; }

for tool in mmdebstrap mke2fs qemu-system-x86_64; do
  command -v "$tool" >/dev/null || { echo "tests/vm/run.sh needs $tool" >&2; exit 1; }
done

# The image, rebuilt only when its sources change.
key=$(cat "$here/build-image.sh" "$here/vmtest.service" | sha256sum | cut -c1-16)
image="target/vm-image/$key"
if [ ! -f "$image/disk.img" ]; then
  say "building the VM image ($image)"
  rm -rf target/vm-image
  "$here/build-image.sh" "$image"
fi
say "VM image $image"
[ "${1:-}" != --image-only ] || exit 0
command -v cargo-deb >/dev/null || { echo "tests/vm/run.sh needs cargo-deb" >&2; exit 1; }
test -x target/release/face-edge || { echo "build first: cargo build --release" >&2; exit 1; }

say "packaging target/release/face-edge as a .deb"
rm -f target/debian/face-edge_*_amd64.deb
cargo deb -p face-edge --no-build --no-strip --profile release --quiet
deb=$(ls target/debian/face-edge_*_amd64.deb)

share=$(mktemp -d)
[ -n "${FACE_EDGE_VM_KEEP:-}" ] || trap 'rm -rf "$share"' EXIT
cp "$deb" "$here/guest-test.sh" "$share/"
mkdir "$share/models"
cp "$models/yunet_2023mar.onnx" "$models/mobilefacenet.onnx" "$share/models/"
cp -r "$shared/data/photos/gallery" "$share/gallery"
cp "$shared/data/photos/probes/obama1.jpg" "$share/probe.jpg"

case "${FACE_EDGE_VM_ACCEL:-tcg}" in
  kvm) accel=(-accel kvm -cpu host) ;;
  # qemu 7.2's TCG emulates AVX very slowly: the guest gets SSE4.2 code paths from tract.
  tcg) accel=(-accel tcg,thread=multi -cpu max,-avx,-avx2,-fma,-f16c,-avx512f) ;;
  *) echo "FACE_EDGE_VM_ACCEL: kvm or tcg" >&2; exit 2 ;;
esac
say "booting ($(printf '%s ' "${accel[@]}"))"
status=0
timeout 30m qemu-system-x86_64 "${accel[@]}" -m 2048 -smp 2 -nographic -no-reboot -nic none \
  -kernel "$image/vmlinuz" -initrd "$image/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 quiet systemd.show_status=0 panic=-1" \
  -drive "file=$image/disk.img,if=virtio,format=raw,snapshot=on" \
  -virtfs "local,path=$share,mount_tag=share,security_model=none,id=share" \
  > "$share/console.txt" 2>&1 || status=$?
cat "$share/log.txt" 2>/dev/null || true
result=$(cat "$share/result" 2>/dev/null || echo "no result (qemu exit $status)")
say "VM test: $result"
if [ "$result" != pass ]; then
  echo "--- console (last 60 lines)"; tail -60 "$share/console.txt"
  echo "--- face-edge's journal (last 80 lines)"; grep -E 'face-edge|systemd\[1\]: face-edge' "$share/journal.txt" 2>/dev/null | tail -80
  exit 1
fi
