#!/bin/bash
# Run CMD next to a real libvirtd + virtlogd (Debian's, no systemd), with our
# hook directory bound over /etc/libvirt/hooks and libvirt's runtime
# directory private. Meant to run inside tests/support/private-journal.sh,
# whose mount namespace it shares (so the hook logs to the private journald).
#
#   with-libvirtd.sh WORKDIR HOOKS_DIR -- CMD [ARGS...]
set -uo pipefail
work=$(realpath "$1"); hooks=$(realpath "$2"); shift 2
[ "${1:-}" = "--" ] && shift

mkdir -p /run/libvirt
mount -t tmpfs tmpfs /run/libvirt
mount --bind "$hooks" /etc/libvirt/hooks
# QEMU as root. With /dev/kvm present but root-only (as on these machines),
# libvirt 9.0 probes QEMU with KVM, then finds /dev/kvm unusable for the
# libvirt-qemu user, calls its capability cache outdated and re-probes on
# every lookup (qemu_capabilities.c virQEMUCapsIsValid): a minute per start.
printf 'user = "root"\ngroup = "root"\n' > "$work/qemu.conf"
mount --bind "$work/qemu.conf" /etc/libvirt/qemu.conf
virtlogd -d -p "$work/virtlogd.pid"
LIBVIRT_LOG_FILTERS="${LIBVIRTD_LOG_FILTERS:-}" LIBVIRT_LOG_OUTPUTS="${LIBVIRTD_LOG_OUTPUTS:-}" libvirtd -d -p "$work/libvirtd.pid"
for _ in $(seq 1 300); do
    [ -S /run/libvirt/libvirt-sock ] && break
    sleep 0.05
done
"$@"
rc=$?
# QEMU outlives libvirtd by design: stop every domain first.
for dom in $(virsh -q -c qemu:///system list --name 2>/dev/null); do
    virsh -q -c qemu:///system destroy "$dom" >/dev/null 2>&1
done
for pidfile in "$work/libvirtd.pid" "$work/virtlogd.pid"; do
    [ -f "$pidfile" ] && kill "$(cat "$pidfile")" 2>/dev/null
done
sleep 0.5
exit $rc
