#!/bin/sh
# vfio-advisor: libvirt qemu hook, the one template. The Debian package ships it
# as /etc/libvirt/hooks/qemu.d/vfio-advisor with the default paths below;
# `vfio-advisor install` (from a clone) writes it with its own paths.
#
# libvirt calls it as: qemu NAME OPERATION SUBOP EXTRA, domain XML on stdin.
# Only `prepare begin` is analysed; everything else exits 0 here, without
# starting Python (a VM start and stop call the hook five times).
VFIO_ADVISOR_PYTHON=/usr/bin/python3
VFIO_ADVISOR_CONFIG=/etc/vfio-advisor/config.toml
# The directory that holds the vfio_advisor package.
VFIO_ADVISOR_LIB=/usr/lib/python3/dist-packages

[ "$2" = prepare ] && [ "$3" = begin ] || exit 0

# The program may be gone while this file stays: dpkg keeps a conffile after
# `apt remove` until purge (dpkg(1), "--remove"), and a clone may be deleted.
# A hook that cannot run must not stop VM starts: do nothing then.
[ -f "$VFIO_ADVISOR_LIB/vfio_advisor/hook.py" ] && [ -x "$VFIO_ADVISOR_PYTHON" ] || exit 0
PYTHONPATH=$VFIO_ADVISOR_LIB
export PYTHONPATH

# The Python side bounds itself (hook.timeout, default 10 s); timeout(1) is the
# backstop. Exit status 3 means "block this start", which the Python side
# returns only when the admin opted in ([hook] block_on_error = true).
timeout -k 2 60 "$VFIO_ADVISOR_PYTHON" -m vfio_advisor.hook --config "$VFIO_ADVISOR_CONFIG" "$@"
[ $? -eq 3 ] && exit 1
exit 0
