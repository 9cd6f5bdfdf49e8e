#!/bin/bash
# Inside tests/support/with-libvirtd.sh: start a domain whose `prepare
# begin` hook is held on a FIFO (its host tree's proc/interrupts), stop
# libvirtd with SIGTERM while the hook runs, then let the hook go on.
#   hook-shutdown.sh WORK FIFO CONTENT SIGNAL
set -uo pipefail
work=$1; fifo=$2; content=$3; sig=$4
# libvirtd goes away while it starts the domain, so nothing destroys it: a
# QEMU it had already spawned outlives it (libvirt never kills domains at
# its own stop). End that QEMU here, whatever happens below.
name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$work/dom.xml")
trap 'pkill -KILL -f "guest=$name," 2>/dev/null' EXIT
timeout 60 virsh -q -c qemu:///system create "$work/dom.xml" >"$work/create.out" 2>&1 &
for _ in $(seq 1 600); do [ -f "$work/hook.started" ] && break; sleep 0.05; done
[ -f "$work/hook.started" ] || { echo "the hook never ran" >&2; cat "$work/create.out" >&2; exit 3; }
sleep 0.5  # the hook's Python is up and waits on the FIFO
pid=$(cat "$work/libvirtd.pid")
kill -"$sig" "$pid"
# libvirtd may wait for its worker (the hook) before it exits: give it a
# moment, then release the hook either way.
for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && echo "libvirtd still stopping" >> "$work/events" || echo "libvirtd gone" >> "$work/events"
cat "$content" > "$fifo"
for _ in $(seq 1 300); do [ -f "$work/hook.rc" ] && break; sleep 0.05; done
[ -f "$work/hook.rc" ] || { echo "the hook did not finish" >&2; exit 4; }
for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$pid" 2>/dev/null && { echo "libvirtd did not stop" >&2; kill -9 "$pid"; }
wait
exit 0
