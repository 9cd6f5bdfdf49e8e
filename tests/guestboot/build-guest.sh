#!/bin/bash
# Build the routing-check guest: Debian's cloud kernel and a busybox initramfs
# whose /init enables every PCI function through sysfs (which makes the guest
# kernel allocate its INTx line via ACPI) and prints what it got.
#   build-guest.sh CACHE_DIR    -> CACHE_DIR/vmlinuz, CACHE_DIR/initrd.img
# Kernel and busybox: lab/fetch-debian-guest.sh (apt-get download; nothing installed).
set -euo pipefail
cache=$(realpath -m "$1")
mkdir -p "$cache"
[ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ] && exit 0
debian="$cache/debian"
"$(dirname "$0")/../../lab/fetch-debian-guest.sh" "$debian"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
cp "$debian/vmlinuz" "$cache/vmlinuz"
mkdir -p root/bin
cp "$debian/busybox" root/bin/busybox
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
(cd root && find . | "$debian/busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/initrd.img"
