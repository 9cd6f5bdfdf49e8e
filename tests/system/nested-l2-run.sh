#!/bin/sh
# Shipped as run.sh by nested-l2-timing.py: inside the system tier's guest
# (L1, TCG), bind L1's emulated ich9-intel-hda (00:09.0) to vfio-pci and boot
# the guest agent tier's kernel + busybox + qemu-ga initramfs as L2 under TCG
# with that device assigned, timing L2's console marks; then L1's vfio lines
# of /proc/interrupts. A measurement, not a test.
set -u
S=/run/systemtest
R=$S/results
cd "$S"
now() { cut -d' ' -f1 /proc/uptime; }
save() { tar -cf /dev/vdc -C "$S" results 2>/dev/null; sync; }
echo "L1 runner at uptime $(now) s" >> "$R/l2.txt"
modprobe vfio-pci
d=/sys/bus/pci/devices/0000:00:09.0
echo vfio-pci > "$d/driver_override"
[ -e "$d/driver" ] && echo 0000:00:09.0 > "$d/driver/unbind"
echo 0000:00:09.0 > /sys/bus/pci/drivers_probe
echo "00:09.0 driver: $(basename "$(readlink "$d/driver")")" >> "$R/l2.txt"
cp modprobe-d.img /tmp/modprobe-d.img
t0=$(now)
qemu-system-x86_64 -accel tcg -machine q35 -m 384 -nodefaults -display none -no-reboot \
    -serial "file:$R/l2-console.log" -kernel vmlinuz -initrd initrd.img \
    -append "console=ttyS0 panic=-1" \
    -drive file=/tmp/modprobe-d.img,format=raw,if=virtio \
    -device virtio-serial-pci -device vfio-pci,host=0000:00:09.0 > "$R/l2-qemu.log" 2>&1 &
pid=$!
limit=${L2_LIMIT:-900}
for mark in "up" "enable_msi=" "qemu-ga started"; do
    while kill -0 $pid 2>/dev/null && ! grep -q "GUEST: .*$mark" "$R/l2-console.log" 2>/dev/null; do
        [ "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print (b - a > '"$limit"') }')" = 1 ] && break 2
        sleep 2
    done
    echo "L2 mark '$mark' at $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s" >> "$R/l2.txt"
    save
done
sleep 5
echo "L1 /proc/interrupts vfio lines:" >> "$R/l2.txt"
grep vfio /proc/interrupts >> "$R/l2.txt"
kill $pid 2>/dev/null
echo "L2 killed at $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s" >> "$R/l2.txt"
save
