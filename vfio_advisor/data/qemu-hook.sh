#!/bin/sh
# vfio-advisor: libvirt qemu hook. Install as /etc/libvirt/hooks/qemu.d/vfio-advisor
# (or as the classic /etc/libvirt/hooks/qemu) with `vfio-advisor install`,
# which sets the two paths below.
#
# libvirt calls it as: qemu NAME OPERATION SUBOP EXTRA, domain XML on stdin.
# Only `prepare begin` is analysed; everything else exits 0 here, without
# starting Python (a VM start and stop call the hook five times).
VFIO_ADVISOR_PYTHON=/usr/bin/python3
VFIO_ADVISOR_CONFIG=/etc/vfio-advisor/config.toml

[ "$2" = prepare ] && [ "$3" = begin ] || exit 0

# The Python side bounds itself (hook.timeout, default 10 s); timeout(1) is the
# backstop. Exit status 3 means "block this start", which the Python side
# returns only when the admin opted in ([hook] block_on_error = true).
timeout -k 2 60 "$VFIO_ADVISOR_PYTHON" -m vfio_advisor.hook --config "$VFIO_ADVISOR_CONFIG" "$@"
[ $? -eq 3 ] && exit 1
exit 0
