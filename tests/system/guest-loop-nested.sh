#!/bin/sh
# The guest loop seen from the host, on real vfio: inside the system tier's
# guest (L1: Debian 12, systemd as PID 1, libvirtd + QEMU), shipped as run.sh
# by test_guest_loop_nested.py with vfio-advisor_*_all.deb and the guest agent
# tier's L2 (vmlinuz, initrd.img, modprobe-d.img: Debian's kernel, busybox and
# qemu-ga; L2's /etc/modprobe.d says `options snd_hda_intel enable_msi=0`).
#
# L1's emulated ich9-intel-hda at 00:09.0 goes to vfio-pci and into a libvirt
# domain L2 as a <hostdev>. The package's daemon follows L2 from L1:
# vfio-intx; then `vfio-advisor guest L2`, `vfio-advisor fix --guest L2
# --apply --reboot` (libvirt's agent reboot: QEMU resets the machine, libvirt
# sends REBOOT, the daemon's reboot path), vfio-msi in L1's /proc/interrupts,
# the daemon's confirmation, and `vfio-advisor guest L2` again.
#
# Each step writes "RESULT NAME ok|fail DETAIL" and "TIME NAME SECONDS" to
# results/results.txt and its evidence to results/NAME.*; every command and
# what it printed goes to results/transcript.txt. The host asserts.
# A file "mode" holding skip-apply runs `fix --guest` without --apply (the
# plan only) before the same agent reboot: the control run, where vfio-msi
# must not come.
set -u
S=/run/systemtest
R=$S/results
cd "$S"
BDF=0000:00:09.0
L2=L2
IMG=/var/lib/libvirt/images/nested
MODE=$(cat mode 2>/dev/null || echo full)
# L2's boot under TCG inside L1: quiet and loglevel=1 keep the kernel's own
# lines off the emulated 16550 (each byte an I/O port exit through two
# emulators); no_timer_check as for L1 (the IO-APIC timer check waits a fixed
# number of TSC cycles and a slow TCG guest missed it).
L2_CMDLINE=${L2_CMDLINE:-"console=ttyS0 panic=-1 quiet loglevel=1 no_timer_check"}
L2_MEMORY=${L2_MEMORY:-256}
# One agent command under TCG inside TCG: `guest`'s inventory (one sh -c
# script under L2's busybox) took 55-65 s here, past the default 20 s and a
# first try at 60 s.
AGENT_TIMEOUT=300
T0=$(cut -d' ' -f1 /proc/uptime)
TX="$R/transcript.txt"

now() { cut -d' ' -f1 /proc/uptime; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
save() { tar -cf /dev/vdc -C "$S" results 2>/dev/null; sync; }
res() {
    echo "RESULT $1 $2 ${3:-}" >> "$R/results.txt"; echo "RESULT $1 $2 ${3:-}" > /dev/console
    save
}
timing() { echo "TIME $1 $2" >> "$R/results.txt"; }
# tx CMD...: run, with its line, exit status and output in the transcript;
# the output is also left in $OUT. Returns CMD's status.
tx() {
    printf '[%6.1f s] $ %s\n' "$(since "$T0")" "$*" >> "$TX"
    OUT=$("$@" 2>&1); rc=$?
    printf '%s\n' "$OUT" >> "$TX"
    echo "[exit $rc]" >> "$TX"
    return $rc
}
note() { printf '[%6.1f s] # %s\n' "$(since "$T0")" "$*" >> "$TX"; }
# wait_until SECONDS CMD...: poll every 2 s until CMD succeeds (TCG: a tight
# loop would take CPU from the guests it waits for)
wait_until() {
    end=$(awk -v a="$(now)" -v b="$1" 'BEGIN { print a + b }'); shift
    while ! "$@" >/dev/null 2>&1; do
        [ "$(awk -v a="$(now)" -v b="$end" 'BEGIN { print (a > b) }')" = 1 ] && return 1
        sleep 2
    done
}
daemon_json() { journalctl -q -o json -t vfio-advisor VFIO_ADVISOR_SOURCE=daemon "$@" 2>/dev/null; }
vfio_lines() { grep vfio /proc/interrupts; }
on_msi() { grep -q "vfio-msi.*($BDF)" /proc/interrupts; }
# The daemon's finding about INTx on the device: VA6001 (settled, INTx
# counting) or VA1001.
daemon_on_intx() {
    daemon_json VFIO_ADVISOR_DOMAIN=$L2 VFIO_ADVISOR_HOST_BDF=$BDF \
        | grep -q '"VFIO_ADVISOR_RULE" *: *"VA\(6001\|1001\)"'
}
daemon_rebooted() { daemon_json VFIO_ADVISOR_EVENT=guest-rebooted | grep -q .; }
daemon_confirmed() { daemon_json VFIO_ADVISOR_RULE=VA6009 VFIO_ADVISOR_DOMAIN=$L2 | grep -q .; }
agent_up() { virsh -q qemu-agent-command $L2 --timeout 5 '{"execute":"guest-ping"}'; }
# L2's own console marks (build-guest.sh's init echoes "GUEST: ..."), with
# L1's clock, kept by a poller: the boots' phases without a second clock.
marks() {
    seen=0
    while :; do
        n=$(grep -ac "GUEST: " "$IMG/console.log" 2>/dev/null || echo 0)
        if [ "$n" -gt "$seen" ]; then
            grep -a "GUEST: " "$IMG/console.log" | tail -n +"$((seen + 1))" | tr -d '\r' \
                | while IFS= read -r line; do echo "$(since "$T0") $line"; done >> "$R/l2-marks.txt"
            seen=$n
        fi
        sleep 1
    done
}
boots() { grep -ac "GUEST: kernel .* up" "$IMG/console.log" 2>/dev/null; }
# After the reboot: L2's second init has started qemu-ga, so snd_hda_intel
# has loaded (init loads it first) and its mode is decided.
second_boot_done() { [ "$(grep -ac 'GUEST: qemu-ga started' "$IMG/console.log" 2>/dev/null)" -ge 2 ]; }

timing boot "$T0"
note "L1: $(uname -r), $(nproc) CPUs, mode $MODE"
[ "$(cat /proc/1/comm)" = systemd ] && res pid1 ok "$(systemctl --version | head -1)" || res pid1 fail "PID 1 is $(cat /proc/1/comm)"

# --- the package, installed and started as a user does -------------------------
t=$(now)
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ./vfio-advisor_*_all.deb \
    > "$R/pkg-install.log" 2>&1 && res pkg-install ok "$(dpkg-query -W vfio-advisor)" \
    || res pkg-install fail "$(tail -3 "$R/pkg-install.log" | tr '\n' ' ')"
timing pkg-install "$(since "$t")"
note "apt-get install ./$(ls vfio-advisor_*_all.deb): $(dpkg-query -W vfio-advisor 2>&1)"
cat > /etc/vfio-advisor/config.toml <<'CONF'
[daemon]
interval = 1
settle = 10
CONF
tx cat /etc/vfio-advisor/config.toml
t=$(now)
tx timeout 180 systemctl enable --now vfio-advisor
timing daemon-start "$(since "$t")"
systemctl is-active -q vfio-advisor && res daemon ok "$(systemctl show -p StatusText --value vfio-advisor)" \
    || res daemon fail "$(journalctl -q -u vfio-advisor --no-pager | tail -3 | tr '\n' ' ')"

# --- L1's HDA to vfio-pci, and L2 ------------------------------------------------
modprobe vfio-pci
d=/sys/bus/pci/devices/$BDF
echo vfio-pci > "$d/driver_override"
[ -e "$d/driver" ] && echo $BDF > "$d/driver/unbind"
echo $BDF > /sys/bus/pci/drivers_probe
drv=$(basename "$(readlink "$d/driver")")
tx ls -l "$d/driver" "$d/iommu_group"
[ "$drv" = vfio-pci ] && res vfio-bind ok "$BDF $(cat "$d/vendor"):$(cat "$d/device") on vfio-pci, group $(basename "$(readlink "$d/iommu_group")")" \
    || res vfio-bind fail "$BDF driver $drv"

mkdir -p $IMG
cp vmlinuz initrd.img modprobe-d.img $IMG/
: > $IMG/console.log
cat > l2.xml <<XML
<!-- L2: TCG inside L1 (L1 has no /dev/kvm), the guest agent tier's kernel
     and initramfs booted directly, its /etc/modprobe.d disk, the agent
     channel, and L1's HDA assigned (bound to vfio-pci above: managed='no').
     L1's own bus address for it: the guest firmware keeps 00:09.0. -->
<domain type='qemu'>
  <name>$L2</name>
  <memory unit='MiB'>$L2_MEMORY</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>$IMG/vmlinuz</kernel>
    <initrd>$IMG/initrd.img</initrd>
    <cmdline>$L2_CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$IMG/modprobe-d.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <serial type='file'><source path='$IMG/console.log'/><target port='0'/></serial>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <hostdev mode='subsystem' type='pci' managed='no'>
      <source><address domain='0x0000' bus='0x00' slot='0x09' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x09' function='0x0'/>
    </hostdev>
    <memballoon model='none'/>
  </devices>
</domain>
XML
cp l2.xml "$R/l2.xml"
tx virsh -q define l2.xml
t=$(now)
tx timeout 300 virsh -q start $L2
rc=$?
L2_START=$(now)
timing l2-start "$(since "$t")"
timing l2-started-at "$(since "$T0")"  # the runner's clock, as l2-marks.txt
marks & MARKS=$!
if [ $rc = 0 ] && [ "$(virsh -q domstate $L2)" = running ]; then
    res l2-start ok "$(virsh -q dumpxml $L2 | grep -A3 '<hostdev' | tr -s ' \n' ' ')"
else
    tail -20 /var/log/libvirt/qemu/$L2.log > "$R/l2-start.log" 2>/dev/null
    res l2-start fail "rc $rc: $(tail -2 "$R/l2-start.log" | tr '\n' ' ')"
fi
tx vfio_lines
vfio_lines > "$R/interrupts-start.txt"

# --- before: the daemon sees vfio-intx, the guest reads enable_msi=0 -------------
wait_until 600 daemon_on_intx
timing daemon-intx "$(since "$L2_START")"
daemon_json VFIO_ADVISOR_DOMAIN=$L2 > "$R/daemon-before.json"
if daemon_on_intx; then
    res daemon-intx ok "$(daemon_json VFIO_ADVISOR_DOMAIN=$L2 VFIO_ADVISOR_HOST_BDF=$BDF | grep -m1 '"VA\(6001\|1001\)"' \
        | python3 -c 'import json, sys; e = json.loads(sys.stdin.read()); print(e["VFIO_ADVISOR_RULE"], e["MESSAGE"])')"
else
    res daemon-intx fail "no VA6001/VA1001 from the daemon for $BDF in 600 s"
fi
tx journalctl -q -o short-monotonic -t vfio-advisor VFIO_ADVISOR_SOURCE=daemon --no-pager
wait_until 600 agent_up
timing agent-first "$(since "$L2_START")"
agent_up && res agent-first ok "$(since "$L2_START") s after virsh start" || res agent-first fail "no guest-ping answer"
tx vfio_lines
vfio_lines > "$R/interrupts-before.txt"
t=$(now)
tx vfio-advisor guest $L2 --timeout $AGENT_TIMEOUT --format json
echo $? > "$R/read-before.rc"
printf '%s\n' "$OUT" > "$R/read-before.json"
timing read-before "$(since "$t")"
res read-before ok "exit $(cat "$R/read-before.rc")"

# --- the change, and the guest's restart through its agent -----------------------
t=$(now)
if [ "$MODE" = skip-apply ]; then
    # The control: the plan only, then the same agent reboot.
    tx vfio-advisor fix --guest $L2 --timeout $AGENT_TIMEOUT
    echo $? > "$R/apply.rc"
    printf '%s\n' "$OUT" > "$R/apply.txt"
    tx virsh reboot $L2 --mode agent
else
    tx vfio-advisor fix --guest $L2 --timeout $AGENT_TIMEOUT --apply --reboot
    echo $? > "$R/apply.rc"
    printf '%s\n' "$OUT" > "$R/apply.txt"
fi
APPLIED=$(now)
timing apply "$(since "$t")"
timing applied-at "$(since "$T0")"
res apply ok "exit $(cat "$R/apply.rc")"
# Where the change went, and whether the daemon reads it: its unit has
# DynamicUser= and StateDirectory=, so /var/lib/vfio-advisor is a link into
# /var/lib/private, which only root may enter (systemd.exec(5)); read it as
# the daemon's own user, in the daemon's own mount namespace.
pid=$(systemctl show -p MainPID --value vfio-advisor)
uid=$(awk '/^Uid:/ { print $2 }' /proc/$pid/status)
gid=$(awk '/^Gid:/ { print $2 }' /proc/$pid/status)
tx ls -ld /var/lib/vfio-advisor /var/lib/private/vfio-advisor /var/lib/private/vfio-advisor/guest-changes
tx ls -l /var/lib/private/vfio-advisor/guest-changes
tx nsenter -t "$pid" -m setpriv --reuid="$uid" --regid="$gid" --clear-groups \
    cat /var/lib/vfio-advisor/guest-changes/$L2.json
printf '%s\n' "$OUT" > "$R/changes-as-daemon.txt"
echo "uid $uid gid $gid" >> "$R/changes-as-daemon.txt"

wait_until 300 daemon_rebooted
timing reboot-event "$(since "$APPLIED")"
daemon_json VFIO_ADVISOR_EVENT=guest-rebooted > "$R/reboot-event.json"
daemon_rebooted && res reboot-event ok "$(since "$APPLIED") s after the apply" || res reboot-event fail "no guest-rebooted event"
# vfio-msi in L1, or L2's second boot done without it (the control's early out)
wait_until 900 sh -c "grep -q 'vfio-msi.*($BDF)' /proc/interrupts || [ \$(grep -ac 'GUEST: qemu-ga started' $IMG/console.log) -ge 2 ]"
on_msi || sleep 10  # snd_hda_intel enabled its MSI just before qemu-ga started
timing msi "$(since "$APPLIED")"
tx vfio_lines
vfio_lines > "$R/interrupts-after.txt"
if on_msi; then
    res msi ok "$(grep "vfio-msi.*($BDF)" /proc/interrupts | tr -s ' ')"
else
    res msi fail "no vfio-msi for $BDF after L2's restart ($(boots) boots seen): $(vfio_lines | tr -s ' ' | tr '\n' ';')"
fi
if on_msi; then
    wait_until 120 daemon_confirmed
    timing confirmed "$(since "$APPLIED")"
fi
daemon_confirmed && res confirmed ok "$(since "$APPLIED") s after the apply" || res confirmed fail "no VA6009 from the daemon"
tx journalctl -q -o short-monotonic -t vfio-advisor VFIO_ADVISOR_SOURCE=daemon --no-pager
wait_until 300 agent_up
timing agent-again "$(since "$APPLIED")"
t=$(now)
tx vfio-advisor guest $L2 --timeout $AGENT_TIMEOUT --format json
echo $? > "$R/read-after.rc"
printf '%s\n' "$OUT" > "$R/read-after.json"
timing read-after "$(since "$t")"
res read-after ok "exit $(cat "$R/read-after.rc")"

# --- the evidence -----------------------------------------------------------------
journalctl --sync
daemon_json > "$R/daemon.json"
journalctl -q -o json -t vfio-advisor VFIO_ADVISOR_SOURCE=hook > "$R/hook.json"
cp $IMG/console.log "$R/l2-console.log"
cp /var/log/libvirt/qemu/$L2.log "$R/l2-qemu.log" 2>/dev/null
kill $MARKS 2>/dev/null
tx virsh -q destroy $L2
tx systemctl stop vfio-advisor
timing runner "$(since "$T0")"
echo "ALL-DONE" >> "$R/results.txt"
