#!/bin/bash
# Run CMD next to Debian's libvirtd + virtlogd (no systemd, no domains), for
# the daemon's production RSS figure (bench/daemon_bench.py,
# daemon_rss_mib_real_libvirtd). Run it under `unshare -m`: libvirt's runtime
# directory (/run/libvirt, its sockets) is a private tmpfs, so this libvirtd
# meets no other one; both are stopped by their own pid files afterwards.
#
#   real-libvirtd.sh WORKDIR -- CMD [ARGS...]
set -uo pipefail
work=$(realpath "$1"); shift
[ "${1:-}" = "--" ] && shift

mount --make-rprivate / 2>/dev/null
mkdir -p /run/libvirt
mount -t tmpfs tmpfs /run/libvirt || exit 3
virtlogd -d -p "$work/virtlogd.pid" || exit 3
libvirtd -d -p "$work/libvirtd.pid" || exit 3
for _ in $(seq 1 300); do
    [ -S /run/libvirt/libvirt-sock-ro ] && break
    sleep 0.05
done
[ -S /run/libvirt/libvirt-sock-ro ] || { echo "libvirtd made no read-only socket" >&2; rc=3; }
[ "${rc:-0}" = 0 ] && { "$@"; rc=$?; }
for pidfile in "$work/libvirtd.pid" "$work/virtlogd.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
for pidfile in "$work/libvirtd.pid" "$work/virtlogd.pid"; do
    for _ in $(seq 1 100); do
        [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null || break
        sleep 0.05
    done
done
exit $rc
