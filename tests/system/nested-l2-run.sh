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
cp modprobe-d.img /tmp/msi0.img
# The second boot's /etc/modprobe.d says enable_msi=1: what `fix --guest
# --apply` writes through qemu-ga.
cp modprobe-d.img /tmp/msi1.img
mkdir -p /tmp/m && mount -o loop /tmp/msi1.img /tmp/m \
    && echo "options snd_hda_intel enable_msi=1" > /tmp/m/sound.conf && umount /tmp/m
limit=${L2_LIMIT:-900}
ping_agent() {  # one guest-ping through the agent's socket, with its time
    python3 -c '
import json, socket, sys, time
s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect(sys.argv[1]); t = time.monotonic()
s.sendall(b"{\"execute\": \"guest-ping\"}\n"); print(s.recv(4096).decode().strip(), round(time.monotonic() - t, 2), "s")
' "$1" 2>&1
}
for boot in msi0 msi1; do
    t0=$(now)
    qemu-system-x86_64 -accel tcg -machine q35 -m 384 -nodefaults -display none -no-reboot \
        -serial "file:$R/l2-$boot-console.log" -kernel vmlinuz -initrd initrd.img \
        -append "console=ttyS0 panic=-1" \
        -drive file=/tmp/$boot.img,format=raw,if=virtio \
        -chardev socket,path=/tmp/qga-$boot.sock,server=on,wait=off,id=qga0 \
        -device virtio-serial-pci -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0 \
        -device vfio-pci,host=0000:00:09.0 > "$R/l2-$boot-qemu.log" 2>&1 &
    pid=$!
    for mark in "up" "enable_msi=" "qemu-ga started"; do
        while kill -0 $pid 2>/dev/null && ! grep -q "GUEST: .*$mark" "$R/l2-$boot-console.log" 2>/dev/null; do
            [ "$(awk -v a="$t0" -v b="$(now)" 'BEGIN { print (b - a > '"$limit"') }')" = 1 ] && break 2
            sleep 2
        done
        echo "$boot: L2 mark '$mark' at $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s" >> "$R/l2.txt"
        save
    done
    echo "$boot: guest-ping: $(ping_agent /tmp/qga-$boot.sock)" >> "$R/l2.txt"
    sleep 5
    echo "$boot: L1 /proc/interrupts vfio lines:" >> "$R/l2.txt"
    grep vfio /proc/interrupts >> "$R/l2.txt"
    grep -a "GUEST: snd" "$R/l2-$boot-console.log" >> "$R/l2.txt"
    kill $pid 2>/dev/null; wait $pid 2>/dev/null
    echo "$boot: L2 stopped at $(awk -v a="$t0" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }') s" >> "$R/l2.txt"
    save
done
