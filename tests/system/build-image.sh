#!/bin/bash
# Build (once) the system tier's guest: a Debian 12 root filesystem from
# Debian's archive with mmdebstrap, systemd as PID 1, Debian's cloud kernel
# (the lab's linux-image-cloud-amd64) with its initramfs, libvirtd + QEMU and
# the package's dependencies pre-installed, so the tier installs the .deb
# offline. Cached by a hash of this script and the runner unit:
#   build-image.sh CACHE  -> prints CACHE/<hash> holding rootfs.img, vmlinuz, initrd.img
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m "$1")
PACKAGES="systemd systemd-sysv libnss-systemd udev dbus kmod procps linux-image-cloud-amd64 initramfs-tools
 libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 seabios
 python3 python3-libvirt python3-lxml python3-systemd python3-pytest"
key=$(cat "$here/build-image.sh" "$here/guest-runner.service" "$here/guest-runner.sh" | sha256sum | cut -c1-16)
out="$cache/$key"
if [ -s "$out/rootfs.img" ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initrd.img" ]; then
    echo "$out"; exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "$cache/build.XXXXXX")
trap 'rm -rf "$work"' EXIT
# --variant=apt: Essential plus apt; recommends stay out (mmdebstrap's default).
mmdebstrap --quiet --variant=apt --include="$(echo $PACKAGES | tr ' ' ,)" \
    --customize-hook='echo vfio-guest > "$1/etc/hostname"' \
    --customize-hook='printf "/dev/vda / ext4 rw,errors=remount-ro 0 1\n" > "$1/etc/fstab"' \
    --customize-hook="copy-in $here/guest-runner.service /etc/systemd/system" \
    --customize-hook="copy-in $here/guest-runner.sh /usr/local/sbin" \
    --customize-hook='chroot "$1" systemctl enable guest-runner.service' \
    --customize-hook='chroot "$1" systemctl mask apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer man-db.timer getty@tty1.service' \
    --customize-hook='chroot "$1" passwd -d root' \
    bookworm "$work/root" 2>&1 | tail -20
cp -L "$work/root/vmlinuz" "$work/vmlinuz"
cp -L "$work/root/initrd.img" "$work/initrd.img"
# ext4 populated from the directory: uids, modes and xattrs (file caps) kept.
truncate -s 4G "$work/rootfs.img"
mkfs.ext4 -q -F -L root -d "$work/root" "$work/rootfs.img"
rm -rf "$work/root"
mkdir -p "$out"
mv "$work/vmlinuz" "$work/initrd.img" "$work/rootfs.img" "$out/"
echo "$PACKAGES" > "$out/packages"
# Images of older package lists or scripts are 4 GB (sparse) each: drop them.
for old in "$cache"/*/rootfs.img; do
    [ "$(dirname "$old")" = "$out" ] || rm -rf "$(dirname "$old")"
done
echo "$out"
