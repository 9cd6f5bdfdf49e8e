#!/bin/bash
# Run loop.py next to a private libvirtd (tests/support/with-libvirtd.sh), in
# a private mount namespace whose libvirt state, domain configs and logs are
# tmpfs (nothing of the host's libvirt is read or written).
#   run-loop.sh WORK IMAGE_DIR PYTHON [--bench N]
set -euo pipefail
work=$(realpath "$1"); image=$(realpath "$2"); python=$3; shift 3
here=$(dirname "$(realpath "$0")")
exec unshare --mount --propagation private bash -c '
set -euo pipefail
for d in /var/lib/libvirt /var/log/libvirt /etc/libvirt/qemu; do mkdir -p "$d"; mount -t tmpfs tmpfs "$d"; done
mkdir -p "$1/hooks"
exec "$2/../support/with-libvirtd.sh" "$1" "$1/hooks" -- "$3" "$2/loop.py" "$1" "$4" "${@:5}"
' run-loop "$work" "$here" "$python" "$image" "$@"
