#!/bin/bash
# Inside tests/support/with-libvirtd.sh (a private libvirtd + virtlogd, our
# hook installed): start N diskless TCG domains and the daemon, then kill
# libvirtd with SIGKILL and start it again, KILLS times, waiting each time
# until the daemon follows every domain again. The QEMU processes outlive
# libvirtd (it reconnects to their monitors at start: qemuProcessReconnect).
#   libvirtd-kill.sh WORK N KILLS PYTHON NOTIFY_SOCKET
set -uo pipefail
work=$1; n=$2; kills=$3; python=$4; notify=$5
v="timeout 60 virsh -q -c qemu:///system"
prefix="faults$$"
names=()
for i in $(seq -w 1 "$n"); do
    name="$prefix-$i"
    cat > "$work/$name.xml" <<XML
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    $v create "$work/$name.xml" >/dev/null 2>>"$work/create.err" || { echo "cannot start $name" >&2; cat "$work/create.err" >&2; exit 3; }
    names+=("$name")
done
echo "started $n domains" >> "$work/progress"
NOTIFY_SOCKET=$notify "$python" -m vfio_advisor daemon --connect qemu:///system --interval 0.2 \
    --state-dir "$work/state" 2>"$work/daemon.err" &
daemon=$!
cleanup() {
    kill -TERM "$daemon" 2>/dev/null
    for name in "${names[@]}"; do $v destroy "$name" >/dev/null 2>&1; done
}
trap cleanup EXIT
wait_log() {  # wait_log PATTERN COUNT TRIES: until PATTERN occurs COUNT times in the daemon's log
    for _ in $(seq 1 "$3"); do
        [ "$(grep -c -- "$1" "$work/daemon.err")" -ge "$2" ] && return 0
        sleep 0.1
    done
    return 1
}
wait_log "started: watching $n running domains" 1 600 || { echo "daemon did not start" >&2; cat "$work/daemon.err" >&2; exit 4; }
for k in $(seq 1 "$kills"); do
    kill -9 "$(cat "$work/libvirtd.pid")"
    sleep 0.3
    rm -f "$work/libvirtd.pid"
    libvirtd -d -p "$work/libvirtd.pid" 2>>"$work/libvirtd.err" || exit 5
    echo "kill $k: libvirtd started again" >> "$work/progress"
    wait_log "reconnected to qemu:///system; watching" "$k" 900 \
        || { echo "no reconnect after kill $k" >&2; cat "$work/daemon.err" >&2; exit 6; }
    running=$($v list --name | grep -c "^$prefix-")
    echo "kill $k: libvirtd lists $running of $n" >> "$work/progress"
done
# The reconnect line is logged before the resync's gathering is applied:
# the last STATUS must settle on every domain again.
sleep 2
kill -0 "$daemon" || exit 7
kill -TERM "$daemon"
wait "$daemon"
echo "daemon exit $?" > "$work/daemon.rc"
exit 0
