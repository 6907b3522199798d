#!/usr/bin/env bash
# Builds the Debian 12 virtual machine that tests/vm/run.sh boots: real systemd as PID 1, the v4l2loopback
# V4L2 driver (built by dkms for the image's own kernel), mosquitto, ffmpeg and v4l-utils. Writes
# OUT/vmlinuz, OUT/initrd.img and OUT/disk.img (ext4, made from the tree with mke2fs -d, no loop device).
# Needs root (mmdebstrap's root mode), mmdebstrap and e2fsprogs. About 2-4 minutes, mostly downloads.
#   tests/vm/build-image.sh OUT
set -euo pipefail
out=${1:?usage: $0 OUT}
here=$(cd "$(dirname "$0")" && pwd)

# The packages come from this machine's own Debian mirror (CI reaches only the registries it is given).
sources=/etc/apt/sources.list.d/debian.sources
[ -f "$sources" ] || sources=/etc/apt/sources.list
[ -f "$sources" ] || { echo "no Debian apt sources on this machine" >&2; exit 1; }

mkdir -p "$out"
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
root="$work/root"

packages=(
  systemd-sysv udev kmod dbus iproute2 procps
  linux-image-amd64 linux-headers-amd64 v4l2loopback-dkms dkms
  mosquitto mosquitto-clients ffmpeg v4l-utils
)
# The guest test's unit: mounts the host's 9p share and runs its script, then powers the machine off.
mmdebstrap --mode=root --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook='set -e
    kver=$(ls "$1/lib/modules")
    # v4l2loopback-dkms builds for the running kernel only; build it for the image'"'"'s.
    chroot "$1" dkms autoinstall -k "$kver"
    ko=$(find "$1/lib/modules/$kver" -name "v4l2loopback.ko*" | head -1)
    [ -n "$ko" ] || { echo "v4l2loopback was not built for $kver" >&2; exit 1; }
    # Keep the module, drop the compiler, the headers and dkms (whose removal takes the module along).
    cp "$ko" "$1/tmp/"
    chroot "$1" apt-get purge -y -qq v4l2loopback-dkms dkms "linux-headers-*" >/dev/null
    chroot "$1" apt-get autoremove -y -qq --purge >/dev/null
    install -D -m 644 "$1/tmp/$(basename "$ko")" "$1/lib/modules/$kver/extra/$(basename "$ko")"
    rm "$1/tmp/$(basename "$ko")"
    chroot "$1" depmod "$kver"
    chroot "$1" modinfo -k "$kver" v4l2loopback >/dev/null
    chroot "$1" apt-get clean
    rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/*
    echo face-edge-vm > "$1/etc/hostname"
    printf "/dev/vda / ext4 rw,relatime 0 1\nshare /share 9p trans=virtio,version=9p2000.L,msize=1048576,nofail 0 0\n" > "$1/etc/fstab"
    mkdir -p "$1/share"
    cp '"$here"'/vmtest.service "$1/etc/systemd/system/vmtest.service"
    chroot "$1" systemctl enable vmtest.service
    # No login prompt on the console; the console shows the test.
    chroot "$1" systemctl mask serial-getty@ttyS0.service getty@tty1.service
  ' \
  bookworm "$root" "$sources"

cp -L "$root/vmlinuz" "$out/vmlinuz.new"
cp -L "$root/initrd.img" "$out/initrd.img.new"
size_mb=$(( $(du -sm "$root" | cut -f1) + 1024 ))
rm -f "$out/disk.img.new"
mke2fs -q -t ext4 -L root -d "$root" "$out/disk.img.new" "${size_mb}M"
for f in vmlinuz initrd.img disk.img; do mv "$out/$f.new" "$out/$f"; done
echo "VM image: $out/disk.img (${size_mb} MB), kernel $(ls "$root/lib/modules")"
