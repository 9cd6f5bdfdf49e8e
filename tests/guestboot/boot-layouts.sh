#!/bin/bash
# Inside the private libvirtd namespace: for each layout, fill in the guest
# and work paths, start it, save its live XML (libvirt's addresses), and wait
# until the guest has printed its IRQs and powered off.
#   boot-layouts.sh GUEST_DIR WORK_DIR LAYOUT.xml...
# GUEST_DOMAIN_TYPE=kvm turns the layouts' <domain type='qemu'> (TCG) into KVM.
set -uo pipefail
guest=$1; work=$2; shift 2
v="virsh -q -c qemu:///system"
$v version >/dev/null || { echo "libvirtd not answering" >&2; exit 3; }
rc=0
for layout in "$@"; do
    name=$(basename "$layout" .xml)
    sed "s|@GUEST@|$guest|g; s|@WORK@|$work|g; s|<domain type='qemu'>|<domain type='${GUEST_DOMAIN_TYPE:-qemu}'>|" "$layout" > "$work/$name.xml"
    if ! $v create "$work/$name.xml" > "$work/$name.create" 2>&1; then
        rc=4; continue
    fi
    $v dumpxml "$name" > "$work/$name.live.xml"
    for _ in $(seq 1 240); do
        state=$($v domstate "$name" 2>/dev/null) || break
        [ "$state" = "running" ] || break
        sleep 0.5
    done
    $v destroy "$name" >/dev/null 2>&1
done
exit $rc
