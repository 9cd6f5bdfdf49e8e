#!/bin/bash
# Fetch and unpack what the lab and the routing check boot: Debian's cloud
# kernel (with its modules) and busybox-static, with `apt-get download`;
# nothing is installed on the host.
#   lab/fetch-debian-guest.sh DIR   -> DIR/vmlinuz, DIR/busybox, DIR/modules/, DIR/kernel.version
set -euo pipefail
dir=$(realpath -m "$1")
[ -s "$dir/vmlinuz" ] && [ -x "$dir/busybox" ] && [ -s "$dir/kernel.version" ] && exit 0
mkdir -p "$dir"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends linux-image-cloud-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
fi
[ -n "$kpkg" ] || { echo "linux-image-cloud-amd64 not found in the apt lists" >&2; exit 1; }
apt-get download -q "$kpkg" busybox-static >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get download -q "$kpkg" busybox-static >/dev/null; }
for deb in *.deb; do dpkg -x "$deb" x; done
cp x/boot/vmlinuz-* "$dir/vmlinuz"
cp x/bin/busybox "$dir/busybox"
rm -rf "$dir/modules" && mkdir -p "$dir/modules"
(cd x/lib/modules/* && find kernel -name '*.ko*' | while read -r f; do
    mkdir -p "$dir/modules/$(dirname "$f")"; cp "$f" "$dir/modules/$f"; done)
echo "$kpkg $(dpkg-deb -f ./"$kpkg"_*.deb Version)" > "$dir/kernel.version"
