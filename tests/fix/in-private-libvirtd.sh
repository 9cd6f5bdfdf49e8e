#!/bin/bash
# Run CMD next to a private libvirtd with the qemu driver (Debian's
# libvirtd 9.0 and virtlogd), inside `unshare --mount --net --propagation
# private`: libvirt's state, config, cache and log directories are tmpfs
# here, so nothing the host's libvirt has is seen or changed; the daemon
# itself is started by tests/support/with-libvirtd.sh (QEMU as root).
#
#   unshare --mount --net --propagation private in-private-libvirtd.sh WORKDIR -- CMD [ARGS...]
set -euo pipefail
work=$(realpath "$1"); shift
[ "${1:-}" = "--" ] && shift
for dir in /etc/libvirt/qemu /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
    mkdir -p "$dir"
    mount -t tmpfs tmpfs "$dir"
done
mkdir -p /var/lib/libvirt/qemu /var/log/libvirt/qemu /var/cache/libvirt/qemu "$work/hooks"
# libvirtd logs to a file in its private log directory, never to a journal.
export LIBVIRTD_LOG_OUTPUTS="3:file:/var/log/libvirt/libvirtd.log"
here=$(dirname "$(realpath "$0")")
exec "$here/../support/with-libvirtd.sh" "$work" "$work/hooks" -- "$@"
