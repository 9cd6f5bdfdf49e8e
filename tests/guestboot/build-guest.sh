#!/bin/bash
# Build the routing-check guest: Debian's cloud kernel and a busybox initramfs
# whose /init enables every PCI function through sysfs (which makes the guest
# kernel allocate its INTx line via ACPI) and prints what it got.
#   build-guest.sh CACHE_DIR    -> CACHE_DIR/vmlinuz, CACHE_DIR/initrd.img
# Packages come from Debian's archive with `apt-get download`; nothing is installed.
set -euo pipefail
cache=$(realpath -m "$1")
mkdir -p "$cache"
[ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
[ -n "$kpkg" ] || { echo "linux-image-cloud-amd64 not found (apt-get update?)" >&2; exit 1; }
apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download -q "$kpkg" busybox-static >/dev/null; }
for deb in *.deb; do dpkg -x "$deb" x; done
cp x/boot/vmlinuz-* "$cache/vmlinuz"
mkdir -p root/bin
cp x/bin/busybox root/bin/busybox
cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for d in /sys/bus/pci/devices/*; do echo 1 > "$d/enable" 2>/dev/null; done
echo "VFIOADV-BEGIN"
for d in /sys/bus/pci/devices/*; do
    pin=$(od -An -tu1 -j61 -N1 "$d/config" | tr -d ' ')
    echo "VFIOADV-FN $(readlink -f "$d") pin=$pin irq=$(cat "$d/irq")"
done
dmesg | grep -E "PCI INT|Link \[" | sed 's/^/VFIOADV-LOG /'
echo "VFIOADV-END"
poweroff -f
INIT
chmod +x root/init
(cd root && find . | ../x/bin/busybox cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/initrd.img"
