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
# Module options from the kernel command line ("vfio_pci.nointxmask=1"), as a
# host's modprobe applies them: kmod reads /proc/cmdline for "module.option="
# (libkmod/libkmod-config.c, kmod_config_parse_kcmdline, kmod 30). insmod does
# not, and the kernel ignores them for modules loaded later, so do it here.
module_options() {
    for w in $(cat /proc/cmdline); do
        case $w in "$1".*=*) echo "${w#"$1".}";; esac
    done
}
for m in irqbypass vfio vfio_iommu_type1 vfio_virqfd vfio-pci-core vfio-pci \
         virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio-rng; do
    [ -f "$M/$m.ko" ] || continue
    # A host that never loaded vfio-pci: no /sys/bus/pci/drivers/vfio-pci.
    case "$scenario:$m" in no-vfio-pci:vfio-pci*) continue;; esac
    # shellcheck disable=SC2046  # one word per option
    insmod "$M/$m.ko" $(module_options "$(echo "$m" | tr - _)") 2>/tmp/insmod.err \
        || echo "LAB-WARN insmod $m: $(cat /tmp/insmod.err)"
done

bind_vfio() {
    echo vfio-pci > "/sys/bus/pci/devices/$1/driver_override"
    [ -e "/sys/bus/pci/devices/$1/driver" ] && echo "$1" > "/sys/bus/pci/devices/$1/driver/unbind"
    echo "$1" > /sys/bus/pci/drivers_probe
}

# Copy a one-line sysfs/proc file with the shell's own read: under TCG every
# fork+exec costs milliseconds, and a capture's duration sits between two
# moments' clocks, so it dilutes the rates computed across moments.
copy1() { _v=; read -r _v < "$1" || [ -n "$_v" ] || return 0; printf '%s\n' "$_v" > "$2"; }

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
            [ -f "$real/$a" ] || continue
            if [ $a = config ]; then cat "$real/$a" > "/cap/$name$real/$a"; else copy1 "$real/$a" "/cap/$name$real/$a"; fi
        done
        for l in driver iommu_group; do
            [ -L "$real/$l" ] || continue
            copy_link "$real/$l" "$name"
            mkdir -p "/cap/$name$(readlink -f "$real/$l")"
        done
        if [ -d "$real/msi_irqs" ]; then
            mkdir -p "/cap/$name$real/msi_irqs"
            for v in "$real"/msi_irqs/*; do [ -f "$v" ] && copy1 "$v" "/cap/$name$real/msi_irqs/${v##*/}"; done
        fi
    done
    for g in /sys/kernel/iommu_groups/*/devices/*; do [ -L "$g" ] && copy_link "$g" "$name"; done
    # The ACPI tables that announce an IOMMU (Intel DMAR, AMD IVRS): absent
    # when the firmware has VT-d/AMD-Vi turned off. The MADT (APIC), which
    # every x86 ACPI machine has, keeps the directory in the capture.
    mkdir -p "/cap/$name/sys/firmware/acpi/tables"
    for t in APIC DMAR IVRS; do
        [ -f "/sys/firmware/acpi/tables/$t" ] && cat "/sys/firmware/acpi/tables/$t" > "/cap/$name/sys/firmware/acpi/tables/$t"
    done
    # The PCI drivers the kernel has registered (is vfio-pci there at all?).
    # Each as a directory holding .keep: git drops empty directories, and a
    # clone without them would read as a tree that lists no drivers.
    for d in /sys/bus/pci/drivers/*; do [ -d "$d" ] && mkdir -p "/cap/$name$d" && : > "/cap/$name$d/.keep"; done
    for mod in vfio_pci vfio_iommu_type1; do
        for p in /sys/module/$mod/parameters/*; do
            [ -f "$p" ] || continue
            mkdir -p "/cap/$name/sys/module/$mod/parameters"
            copy1 "$p" "/cap/$name$p"
        done
    done
    for i in /proc/irq/[0-9]*; do
        [ -f "$i/smp_affinity_list" ] || continue
        mkdir -p "/cap/$name$i"; copy1 "$i/smp_affinity_list" "/cap/$name$i/smp_affinity_list"
        [ -f "$i/effective_affinity_list" ] && copy1 "$i/effective_affinity_list" "/cap/$name$i/effective_affinity_list"
    done
    # Per-IRQ descriptors of the vfio IRQs (kernel/irq/irqdesc.c,
    # CONFIG_SPARSE_IRQ): per-CPU counts, the handlers' names, chip, hwirq and
    # trigger type. Only those: every file is a fork under TCG, and the time
    # a capture takes sits between two moments' clocks (rates).
    for i in /sys/kernel/irq/[0-9]*; do
        v=; read -r v < "$i/actions"
        case $v in *vfio*) ;; *) continue;; esac
        mkdir -p "/cap/$name$i"
        for a in per_cpu_count actions chip_name hwirq type name wakeup; do
            [ -f "$i/$a" ] && copy1 "$i/$a" "/cap/$name$i/$a"
        done
    done
    # After them: /proc/stat's intr line holds each IRQ's total
    # (fs/proc/stat.c show_all_irqs), the daemon's steady counts for VFs.
    cat /proc/stat > "/cap/$name/proc/stat"
    # The IOMMUs the kernel runs (drivers/iommu/iommu-sysfs.c) and their
    # capability registers (drivers/iommu/intel/iommu.c, intel-iommu/cap).
    for u in /sys/class/iommu/*; do
        [ -L "$u" ] || continue
        copy_link "$u" "$name"
        real=$(readlink -f "$u")
        for d in "$real"/*/; do
            [ -d "$d" ] || continue
            mkdir -p "/cap/$name${d%/}"
            for a in "$d"*; do [ -f "$a" ] && copy1 "$a" "/cap/$name$a" 2>/dev/null; done
        done
    done
    mkdir -p "/cap/$name/sys/devices/system/cpu"
    for a in online possible present isolated nohz_full; do
        [ -f "/sys/devices/system/cpu/$a" ] && copy1 "/sys/devices/system/cpu/$a" "/cap/$name/sys/devices/system/cpu/$a"
    done
    # Not part of a host tree: the kernel log and the VFIO users' output at
    # this moment, kept as evidence (genirq's "Flags mismatch", DMAR lines).
    dmesg > "/cap/$name/dmesg"
    for f in /tmp/user.*; do
        case $f in *.pid) ;; *) [ -f "$f" ] && cp "$f" "/cap/$name/vfio-user.${f##*.}";; esac
    done
    echo "LAB-TIME $name $(cat /proc/uptime)"
    echo "LAB-CAPTURE-BEGIN $name"
    tar -cz -C /cap "$name" | base64
    echo "LAB-CAPTURE-END $name"
    echo "LAB-TIME $name $(cat /proc/uptime)"
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
wait_failed() {  # wait_failed N TEXT: user N must exit with an error containing TEXT
    for _ in $(seq 1 600); do
        grep -q "vfio-user:" "/tmp/user.$1" 2>/dev/null && break
        grep -q "READY" "/tmp/user.$1" 2>/dev/null && break
        sleep 0.05
    done
    grep -q "vfio-user:.*$2" "/tmp/user.$1" && return 0
    echo "LAB-ERROR user $1 did not fail with $2: $(cat "/tmp/user.$1")"
    return 1
}
msi_irq() { for v in /sys/bus/pci/devices/$1/msi_irqs/*; do echo "${v##*/}"; return; done; }

echo "LAB-START $scenario"
. /lab/scenarios.sh
run_"$(echo "$scenario" | tr - _)"
for f in /tmp/user.*; do case $f in *.pid) kill -TERM "$(cat "$f")" 2>/dev/null;; *) sed 's/^/LAB-USER /' "$f";; esac; done
echo "LAB-DONE $scenario"
poweroff -f
