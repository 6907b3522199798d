#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that building and testing face-edge need, only those missing, so
# the README's two commands work on a fresh machine with Rust. Uses sudo when not run as root.
#   tests/install-deps.sh build   libclang (the v4l crate's bindgen) and a C toolchain
#   tests/install-deps.sh test    build + mosquitto and openssl (the tests start a broker, make certificates),
#                                 mount and unshare, and Home Assistant Core in target/home-assistant
#                                 (tests/install-home-assistant.sh; needs Python 3.13, else its test says so)
#   tests/install-deps.sh ci      the packages of test + the aarch64 cross toolchain, qemu, systemd-analyze,
#                                 python3-venv (.ci/run installs Home Assistant itself, while it builds),
#                                 mmdebstrap and qemu-system-x86 (the VM test, tests/vm/run.sh)
set -euo pipefail

build=(libclang-dev gcc libc6-dev)
# mount, unshare: the read-only state directory test (as root: a read-only bind mount of its own).
tests=(mosquitto mosquitto-clients openssl mount util-linux)
# tests/vm/run.sh (the .deb under real systemd in a VM): mmdebstrap with the two of its recommends that
# root mode uses (gpg, libdpkg-perl), e2fsprogs (mke2fs -d), qemu-system-x86.
ci=(systemd gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static file python3 python3-venv
  mmdebstrap gpg libdpkg-perl e2fsprogs qemu-system-x86)
case "${1:-test}" in
  build) wanted=("${build[@]}") ;;
  test) wanted=("${build[@]}" "${tests[@]}") ;;
  ci) wanted=("${build[@]}" "${tests[@]}" "${ci[@]}") ;;
  *) echo "usage: $0 [build|test|ci]" >&2; exit 2 ;;
esac

missing=()
for package in "${wanted[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi
  echo "installing: ${missing[*]}" >&2
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ "${1:-test}" = test ]; then
  "$(dirname "$0")/install-home-assistant.sh" ||
    echo "Home Assistant not installed: tests/home_assistant.rs will report that it did not run" >&2
fi
exit 0
