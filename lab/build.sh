#!/bin/bash
# Build the lab guest: Debian's cloud kernel and its vfio and virtio modules,
# busybox, the static vfio-user, and the lab /init.
#   lab/build.sh CACHE_DIR   -> CACHE_DIR/vmlinuz, CACHE_DIR/lab-initrd.img
# Kernel and busybox come from Debian's archive (lab/fetch-debian-guest.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=$(realpath -m "$1")
mkdir -p "$cache"
stamp="$cache/lab.stamp"
sources=$(cat "$here/build.sh" "$here/guest-init.sh" "$here/scenarios.sh" "$here/vfio-user.c" | md5sum | cut -d' ' -f1)
if [ -s "$cache/lab-initrd.img" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$sources" ]; then exit 0; fi
debian="$cache/debian"
"$here/fetch-debian-guest.sh" "$debian"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# Every file goes in by rename: another run may be booting the old ones (the
# cache is shared by every checkout on the machine), and a kernel or initrd
# rewritten under a running QEMU boots garbage.
cp "$debian/vmlinuz" "$cache/vmlinuz.new" && mv -f "$cache/vmlinuz.new" "$cache/vmlinuz"
cp "$debian/kernel.version" "$cache/kernel.version"
mkdir -p root/bin root/lib/modules root/lab
cp "$debian/busybox" root/bin/busybox
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci virtio_ring virtio \
         virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio-rng; do
    f=$(find "$debian/modules" -name "$m.ko*" | head -1)
    [ -n "$f" ] && cp "$f" root/lib/modules/
done
gcc -static -O2 -Wall -o root/bin/vfio-user "$here/vfio-user.c"
cp "$here/guest-init.sh" root/init
cp "$here/scenarios.sh" root/lab/scenarios.sh
chmod +x root/init
(cd root && find . | "$debian/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/lab-initrd.img.$$"
mv -f "$cache/lab-initrd.img.$$" "$cache/lab-initrd.img"
echo "$sources" > "$stamp"
