#!/bin/sh
# The start-failures run, inside the system tier's guest (Debian 12, systemd
# as PID 1, libvirtd + QEMU), shipped as run.sh by test_start_failures.py with
# src.tar (a clean checkout). The guest's devices (qemu_command there):
#   00:03.0 edu, alone in its IOMMU group
#   00:08.0 pci-bridge (conventional: no ACS), and behind it, in ONE group
#   with it: 01:01.0 edu and 01:02.0 virtio-rng (on virtio-pci, a host driver)
# Each step writes "RESULT NAME ok|fail DETAIL" to results/results.txt and its
# evidence to results/NAME.*; the host asserts. With a file "mode" holding
# iommu-off, the machine has no IOMMU and only that start is tried.
set -u
S=/run/systemtest
# run.sh runs this after its own steps, with R=results/start-failures.
R=${R:-$S/results}
cd "$S"
res() {
    echo "RESULT $1 $2 ${3:-}" >> "$R/results.txt"; echo "RESULT $1 $2 ${3:-}" > /dev/console
    tar -cf /dev/vdc -C "$S" results 2>/dev/null; sync
}
now() { cut -d' ' -f1 /proc/uptime; }
timing() { echo "TIME $1 $2" >> "$R/results.txt"; }
timing boot "$(now)"

modprobe vfio-pci
for d in /sys/bus/pci/devices/*; do
    drv=$(basename "$(readlink "$d/driver" 2>/dev/null)" 2>/dev/null)
    echo "${d##*/} driver=${drv:-none} group=$(basename "$(readlink "$d/iommu_group")")"
done > "$R/devices.txt"
grep -q '^0000:01:02.0 driver=virtio-pci' "$R/devices.txt" \
    && res devices ok "$(grep '^0000:0[01]:0[128]' "$R/devices.txt" | tr '\n' ' ')" \
    || res devices fail "$(tr '\n' ' ' < "$R/devices.txt")"

# The clone's hook, as a user installs it from a checkout.
mkdir -p /root/vfio-advisor && tar -xf src.tar -C /root/vfio-advisor
(cd /root/vfio-advisor && python3 -m vfio_advisor install) > "$R/install.log" 2>&1 \
    && res install ok || res install fail "$(tail -2 "$R/install.log" | tr '\n' ' ')"
# libvirtd finds hooks when it starts (install says so).
systemctl restart libvirtd.service

domain() {  # domain NAME BDF MANAGED
    b=${2#0000:}; bus=${b%%:*}; rest=${b#*:}; slot=${rest%.*}; fn=${rest#*.}
    cat > "$1.xml" <<XML
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <memballoon model='none'/>
    <hostdev mode='subsystem' type='pci' managed='$3'>
      <source><address domain='0x0000' bus='0x$bus' slot='0x$slot' function='0x$fn'/></source>
    </hostdev>
  </devices>
</domain>
XML
    virsh -q define "$1.xml" > /dev/null
}

# start NAME STEP: start it, keep virsh's words, the hook's journal entries
# for this start and QEMU's log; the step is "ok" when the start FAILED.
start_fails() {
    since=$(date '+%Y-%m-%d %H:%M:%S')
    sleep 1
    timeout 120 virsh -q start "$1" > "$R/$2.virsh.txt" 2>&1
    rc=$?
    journalctl --sync
    journalctl -q -o json -t vfio-advisor VFIO_ADVISOR_SOURCE=hook VFIO_ADVISOR_DOMAIN="$1" \
        --since "$since" > "$R/$2.hook.json"
    tail -5 "/var/log/libvirt/qemu/$1.log" > "$R/$2.qemu.log" 2>/dev/null
    if [ $rc != 0 ]; then
        res "$2" ok "$(tr '\n' ' ' < "$R/$2.virsh.txt")"
    else
        virsh -q destroy "$1" > /dev/null 2>&1
        res "$2" fail "the start succeeded"
    fi
}

if [ "$(cat mode 2>/dev/null)" = iommu-off ]; then
    # A machine without an IOMMU (no intel-iommu device, so no DMAR table).
    ls /sys/kernel/iommu_groups > "$R/groups.txt" 2>&1
    domain nogroup 0000:00:03.0 yes
    (cd /root/vfio-advisor && python3 -m vfio_advisor advise nogroup --format json) > "$R/nogroup.advise.json" 2> "$R/nogroup.advise.err"
    start_fails nogroup iommu-off
    res done ok
    echo ALL-DONE >> "$R/results.txt"
    exit 0
fi

# 1. managed='yes' for the edu behind the bridge: libvirt detaches it, not
#    its group-mate on virtio-pci, and QEMU finds the group not viable.
domain group 0000:01:01.0 yes
(cd /root/vfio-advisor && python3 -m vfio_advisor advise group --format json) > "$R/group.advise.json" 2> "$R/group.advise.err"
echo "$?" > "$R/group.advise.rc"
start_fails group group-not-viable

# 2. managed='no' for the virtio-rng, which virtio-pci holds.
domain unmanaged 0000:01:02.0 no
start_fails unmanaged unmanaged-on-host-driver

# 3. The remedy VA3005 gives: detach the group-mate; then the start works.
virsh nodedev-detach pci_0000_01_02_0 > "$R/detach.txt" 2>&1
timeout 120 virsh -q start group > "$R/group-after-detach.virsh.txt" 2>&1 \
    && [ "$(virsh -q domstate group)" = running ] \
    && res group-after-detach ok "$(basename "$(readlink /sys/bus/pci/devices/0000:01:02.0/driver)")" \
    || res group-after-detach fail "$(tr '\n' ' ' < "$R/group-after-detach.virsh.txt")"
virsh -q destroy group > /dev/null 2>&1

# 4. The same failure with [hook] block_on_error: the hook stops the start
#    itself, and virsh shows its findings instead of QEMU's words.
virsh nodedev-reattach pci_0000_01_02_0 >> "$R/detach.txt" 2>&1
mkdir -p /etc/vfio-advisor
printf '[hook]\nblock_on_error = true\n' > /etc/vfio-advisor/config.toml
start_fails group group-blocked-by-hook
rm -f /etc/vfio-advisor/config.toml

# 5. A kernel without vfio-pci: unload it and take its module away (the root
#    disk is a snapshot), so libvirt's modprobe finds nothing.
modprobe -r vfio-pci > "$R/nomodule.txt" 2>&1
for m in $(find "/lib/modules/$(uname -r)" -name 'vfio-pci.ko*'); do mv "$m" /root/; done
depmod -a >> "$R/nomodule.txt" 2>&1
ls /sys/bus/pci/drivers >> "$R/nomodule.txt"
domain nomodule 0000:00:03.0 yes
start_fails nomodule vfio-pci-unavailable

res done ok
echo ALL-DONE >> "$R/results.txt"
