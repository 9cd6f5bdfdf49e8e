#!/bin/bash
# Build the guest-agent test guest: Debian's generic kernel (the cloud flavour
# has no sound drivers), an initramfs of busybox-static, the modules below in
# dependency order, and Debian's qemu-ga with its libraries, taken from the
# host's qemu-guest-agent package (bookworm's 7.2, the version a Debian 12
# guest runs). /etc/modprobe.d in the guest is a small ext4 disk (vda), so an
# option written there survives the guest's restart.
#   build-guest.sh CACHE_DIR -> CACHE_DIR/{vmlinuz,initrd.img,modprobe-d.img,kernel.version}
# Nothing is installed on the host: apt-get download + dpkg -x.
set -euo pipefail
cache=$(realpath -m "$1")
mkdir -p "$cache"
[ -s "$cache/vmlinuz" ] && [ -s "$cache/initrd.img" ] && [ -s "$cache/modprobe-d.img" ] && exit 0
command -v qemu-ga >/dev/null || [ -x /usr/sbin/qemu-ga ] || { echo "qemu-guest-agent is not installed" >&2; exit 1; }
busybox=/bin/busybox
[ -x "$busybox" ] && "$busybox" --list | grep -qx modprobe || { echo "busybox-static is not installed" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1)
[ -n "$kpkg" ] || { apt-get update -qq; kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[^ ]*\)$/\1/p' | head -1); }
[ -n "$kpkg" ] || { echo "linux-image-amd64 not found in the apt lists" >&2; exit 1; }
apt-get download -q "$kpkg" >/dev/null 2>&1 || { apt-get update -qq && apt-get download -q "$kpkg" >/dev/null; }
dpkg -x ./"$kpkg"_*.deb x
kver=$(ls x/lib/modules)
mods="x/lib/modules/$kver"
echo "$kpkg $(dpkg-deb -f ./"$kpkg"_*.deb Version)" > "$cache/kernel.version"

mkdir -p root/bin root/sbin root/usr/bin root/usr/sbin root/etc/modprobe.d root/proc root/sys root/dev \
         root/run root/var root/tmp root/mnt "root/lib/modules/$kver"
cp "$busybox" root/bin/busybox
# Every module the guest needs, with what modinfo says each depends on.
# ext4 asks the crypto API for crc32c at mount time (a soft dependency modinfo
# does not list), so crc32c_generic is named here.
want="virtio_pci virtio_console virtio_blk crc32c_generic ext4 snd_hda_intel snd_hda_codec_generic"
declare -A seen=()
add_module() {
    local name=${1//-/_} file dep
    [ -n "${seen[$name]:-}" ] && return 0
    seen[$name]=1
    grep -q "/${name//_/[-_]}.ko" "$mods/modules.builtin" && return 0
    file=$(find "$mods/kernel" -regex ".*/${name//_/[-_]}\.ko\(\.xz\)?" | head -1)
    [ -n "$file" ] || { echo "module $name not found in $kpkg" >&2; exit 1; }
    # The .modinfo section holds "depends=a,b" (no kmod on the host: read it raw).
    for dep in $(tr '\0' '\n' < "$file" | sed -n 's/^depends=//p' | tr ',' ' '); do add_module "$dep"; done
    mkdir -p "root/lib/modules/$kver/$(dirname "${file#"$mods"/}")"
    cp "$file" "root/lib/modules/$kver/${file#"$mods"/}"
}
for m in $want; do add_module "$m"; done
cp "$mods"/modules.builtin "$mods"/modules.order "root/lib/modules/$kver/"
"$busybox" depmod -b root "$kver"

# qemu-ga and the libraries ldd names, at the same paths.
cp /usr/sbin/qemu-ga root/usr/sbin/qemu-ga
for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
    mkdir -p "root$(dirname "$lib")"; cp -L "$lib" "root$lib"
done
# qemu-ga's guest-shutdown runs /sbin/shutdown (qga/commands-posix.c,
# qmp_guest_shutdown: execl("/sbin/shutdown", ... "-r", "+0" ...)); busybox has no
# shutdown applet, so this one syncs and reboots.
printf '#!/bin/sh\nsync\ncase " $* " in *" -r "*) exec /bin/busybox reboot -f ;; *) exec /bin/busybox poweroff -f ;; esac\n' > root/sbin/shutdown
chmod +x root/sbin/shutdown

cat > root/init <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /run
ln -s /run /var/run
echo "GUEST: kernel $(uname -r) up"
modprobe virtio_pci; modprobe virtio_console; modprobe virtio_blk; modprobe crc32c_generic; modprobe ext4
for _ in $(seq 1 50); do [ -b /dev/vda ] && break; sleep 0.1; done
mount -t ext4 /dev/vda /etc/modprobe.d && echo "GUEST: /etc/modprobe.d from vda: $(ls /etc/modprobe.d | tr '\n' ' ')"
# busybox modprobe reads /etc/modprobe.d in readdir order (libbb's
# recursive_action), which ext4 gives in hash order, random per mkfs: with
# sound.conf and vfio-advisor-msi.conf both setting enable_msi, the value in
# effect was a coin toss per image build. kmod (every Debian guest, and what
# `vfio-advisor guest` models) reads the files sorted by name and the last
# value wins. So the options go again on the command line in the shell's
# sorted glob order: busybox appends command-line options after the
# config's, and the kernel's parse_args keeps a parameter's last value.
opts=$(for f in /etc/modprobe.d/*.conf; do [ -f "$f" ] && sed -n 's/^options snd_hda_intel //p' "$f"; done | tr '\n' ' ')
modprobe snd_hda_intel $opts && echo "GUEST: snd_hda_intel enable_msi=$(cat /sys/module/snd_hda_intel/parameters/enable_msi)"
port=
for p in /sys/class/virtio-ports/*; do
    [ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
done
echo "GUEST: agent port ${port:-missing}"
mkdir -p /run/qga
/usr/sbin/qemu-ga -m virtio-serial -p "$port" -t /run/qga &
echo "GUEST: qemu-ga started"
while :; do sleep 3600; done
INIT
chmod +x root/init
(cd root && find . | "$busybox" cpio -o -H newc 2>/dev/null | gzip -1) > "$cache/initrd.img.tmp"
cp x/boot/vmlinuz-* "$cache/vmlinuz"
# The guest's /etc/modprobe.d as it starts: MSI turned off for the HDA
# controller, as users do when a codec misbehaves (the option the fix overrides).
mkdir -p disk
echo "options snd_hda_intel enable_msi=0" > disk/sound.conf
rm -f "$cache/modprobe-d.img"
mkfs.ext4 -q -F -d disk -L modprobe-d "$cache/modprobe-d.img" 8M
mv "$cache/initrd.img.tmp" "$cache/initrd.img"
