#!/bin/busybox sh
# /init of the lab guest. Loads vfio, binds the scenario's devices to
# vfio-pci, runs vfio-user on them phase by phase, and after each phase
# prints a capture of exactly the host files vfio-advisor reads (the layout
# of `vfio-advisor snapshot`) as base64 between LAB-CAPTURE markers.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /cap
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
mount -t tmpfs cap /cap
scenario=$(sed -n 's/.*lab\.scenario=\([a-z0-9-]*\).*/\1/p' /proc/cmdline)
M=/lib/modules
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci \
         virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio-rng; do
    [ -f "$M/$m.ko" ] && { insmod "$M/$m.ko" 2>/tmp/insmod.err || echo "LAB-WARN insmod $m: $(cat /tmp/insmod.err)"; }
done

bind_vfio() {
    echo vfio-pci > "/sys/bus/pci/devices/$1/driver_override"
    [ -e "/sys/bus/pci/devices/$1/driver" ] && echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"
    echo "$1" > /sys/bus/pci/drivers_probe
}

copy_link() {  # recreate symlink $1 (an absolute /sys path) under /cap/$2
    mkdir -p "$(dirname "/cap/$2$1")"
    ln -sf "$(readlink "$1")" "/cap/$2$1"
}

capture() {
    name=$1
    rm -rf "/cap/$name"; mkdir -p "/cap/$name/proc"
    cat /proc/interrupts > "/cap/$name/proc/interrupts"
    cat /proc/cmdline > "/cap/$name/proc/cmdline"
    cat /proc/uptime > "/cap/$name/proc/uptime"
    for link in /sys/bus/pci/devices/*; do
        copy_link "$link" "$name"
        real=$(readlink -f "$link")
        mkdir -p "/cap/$name$real"
        for a in config vendor device subsystem_vendor subsystem_device revision class irq msi_bus; do
            [ -f "$real/$a" ] && cat "$real/$a" > "/cap/$name$real/$a"
        done
        for l in driver iommu_group; do
            [ -L "$real/$l" ] || continue
            copy_link "$real/$l" "$name"
            mkdir -p "/cap/$name$(readlink -f "$real/$l")"
        done
        if [ -d "$real/msi_irqs" ]; then
            mkdir -p "/cap/$name$real/msi_irqs"
            for v in "$real"/msi_irqs/*; do [ -f "$v" ] && cat "$v" > "/cap/$name$real/msi_irqs/${v##*/}"; done
        fi
    done
    for g in /sys/kernel/iommu_groups/*/devices/*; do [ -L "$g" ] && copy_link "$g" "$name"; done
    for mod in vfio_pci vfio_iommu_type1; do
        for p in /sys/module/$mod/parameters/*; do
            [ -f "$p" ] || continue
            mkdir -p "/cap/$name/sys/module/$mod/parameters"
            cat "$p" > "/cap/$name$p"
        done
    done
    for i in /proc/irq/[0-9]*; do
        [ -f "$i/smp_affinity_list" ] || continue
        mkdir -p "/cap/$name$i"; cat "$i/smp_affinity_list" > "/cap/$name$i/smp_affinity_list"
    done
    echo "LAB-CAPTURE-BEGIN $name"
    tar -cz -C /cap "$name" | base64
    echo "LAB-CAPTURE-END $name"
}

# Each running vfio-user writes its phase lines to /tmp/user.N
start_user() {  # start_user N BDF PHASES...
    n=$1; shift
    /bin/vfio-user "$@" > "/tmp/user.$n" 2>&1 &
    echo $! > "/tmp/user.$n.pid"
}
wait_phase() {  # wait_phase N PHASE
    for _ in $(seq 1 600); do
        grep -q "PHASE $2 READY" "/tmp/user.$1" 2>/dev/null && return 0
        grep -q "vfio-user:" "/tmp/user.$1" 2>/dev/null && break
        sleep 0.05
    done
    echo "LAB-ERROR user $1 phase $2: $(cat "/tmp/user.$1")"
    return 1
}
next_phase() { kill -USR1 "$(cat "/tmp/user.$1.pid")"; }

echo "LAB-START $scenario"
. /lab/scenarios.sh
run_"$(echo "$scenario" | tr - _)"
for f in /tmp/user.*; do case $f in *.pid) kill -TERM "$(cat "$f")" 2>/dev/null;; *) sed 's/^/LAB-USER /' "$f";; esac; done
echo "LAB-DONE $scenario"
poweroff -f
