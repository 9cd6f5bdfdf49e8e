#!/bin/bash
# Inside the private journald + libvirtd namespace: start a VM and the
# daemon, restart libvirtd under the daemon, and wait for it to reconnect.
#   daemon-reconnect.sh WORK DOMAIN_XML PYTHON
set -uo pipefail
work=$1; xml=$2; python=$3
v="virsh -q -c qemu:///system"
$v create "$xml" >/dev/null || exit 3
name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$xml" | head -1)
"$python" -m vfio_advisor daemon --connect qemu:///system --interval 0.5 \
    --state-dir "$work/state" 2>"$work/daemon.err" &
daemon=$!
trap 'kill -TERM "$daemon" 2>/dev/null; $v destroy "$name" >/dev/null 2>&1' EXIT
wait_event() {
    for _ in $(seq 1 "$2"); do
        journalctl --sync >/dev/null 2>&1
        journalctl -q -t vfio-advisor "VFIO_ADVISOR_EVENT=$1" 2>/dev/null | grep -q . && return 0
        sleep 0.2
    done
    return 1
}
wait_event started 100 || { echo "daemon did not start" >&2; cat "$work/daemon.err" >&2; exit 4; }
# Hotplug a device: the daemon must re-read the XML on DEVICE_ADDED.
$v attach-device "$name" "$(dirname "$0")/rng.xml" --live >"$work/attach.out" 2>&1 \
    || { cat "$work/attach.out" >&2; exit 7; }
wait_event devices-changed 100 || { echo "no device event" >&2; exit 8; }
kill "$(cat "$work/libvirtd.pid")"
for _ in $(seq 1 100); do kill -0 "$(cat "$work/libvirtd.pid")" 2>/dev/null || break; sleep 0.1; done
libvirtd -d -p "$work/libvirtd.pid"
wait_event reconnected 300 || { echo "no reconnect" >&2; cat "$work/daemon.err" >&2; exit 5; }
kill -0 "$daemon" || exit 6
kill -TERM "$daemon"
wait "$daemon"
echo "daemon exit $?" > "$work/daemon.rc"
exit 0
