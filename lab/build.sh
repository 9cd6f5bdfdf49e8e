#!/bin/bash
# Build the lab guest: Debian's cloud kernel and its vfio and virtio modules,
# busybox, the static vfio-user, and the lab /init.
#   lab/build.sh CACHE_DIR   -> CACHE_DIR/vmlinuz, CACHE_DIR/lab-initrd.img
# Kernel and busybox come from Debian's archive with `apt-get download`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m "$1")
mkdir -p "$cache"
stamp="$cache/lab.stamp"
sources=$(cat "$here/build.sh" "$here/guest-init.sh" "$here/scenarios.sh" "$here/vfio-user.c" | md5sum | cut -d' ' -f1)
if [ -s "$cache/lab-initrd.img" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sources" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
[ -n "$kpkg" ] || { echo "linux-image-cloud-amd64 not found (apt-get update?)" >&2; exit 1; }
apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download -q "$kpkg" busybox-static >/dev/null; }
for deb in *.deb; do dpkg -x "$deb" x; done
cp x/boot/vmlinuz-* "$cache/vmlinuz"
echo "$kpkg $(dpkg-deb -f ./"$kpkg"_*.deb Version)" > "$cache/kernel.version"
mkdir -p root/bin root/lib/modules root/lab
cp x/bin/busybox root/bin/busybox
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci virtio_ring virtio \
         virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio-rng; do
    f=$(find x/lib/modules -name "$m.ko*" | head -1)
    [ -n "$f" ] && cp "$f" root/lib/modules/
done
gcc -static -O2 -Wall -o root/bin/vfio-user "$here/vfio-user.c"
cp "$here/guest-init.sh" root/init
cp "$here/scenarios.sh" root/lab/scenarios.sh
chmod +x root/init
(cd root && find . | ../x/bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/lab-initrd.img"
echo "$sources" > "$stamp"
