# Lab scenarios, sourced by the guest's /init. Each matches a QEMU device
# layout in lab/run.py (the BDFs below are the guest addresses given there).
# Devices: edu (1234:11e8, INTx and MSI, raises interrupts on request),
# virtio-rng-pci (MSI-X; with vectors=0 INTx only, driven by the guest's own
# virtio-rng driver).

run_modes() {
    # INTx, MSI and MSI-X side by side, with interrupts fired on the first two.
    for d in 0000:00:03.0 0000:00:04.0 0000:00:05.0; do bind_vfio $d; done
    start_user 1 0000:00:03.0 intx:1:200
    start_user 2 0000:00:04.0 msi:1:300
    start_user 3 0000:00:05.0 msix:2:0
    wait_phase 1 1 && wait_phase 2 1 && wait_phase 3 1
    capture modes
}

run_shared() {
    # Two vfio-intx on one guest GSI (root slots 3 and 7, pin A: PIRQH, GSI 23)
    # and a native driver's handler there too (virtio-rng with vectors=0 at
    # slot 0xb, also PIRQH).
    for d in 0000:00:03.0 0000:00:07.0; do bind_vfio $d; done
    start_user 1 0000:00:03.0 intx:1:50
    start_user 2 0000:00:07.0 intx:1:50
    wait_phase 1 1 && wait_phase 2 1
    cat /dev/hwrng 2>/dev/null | head -c 64 > /dev/null
    capture shared
}

run_switch() {
    # One edu switched INTx -> MSI -> MSI-X... edu has no MSI-X, so the third
    # phase turns its interrupts off and a virtio-rng device shows MSI-X; each
    # phase fires interrupts and is captured before and after.
    for d in 0000:00:03.0 0000:00:05.0; do bind_vfio $d; done
    start_user 1 0000:00:03.0 intx:1:0 intx:1:150 msi:1:0 msi:1:250 off:0:0
    start_user 2 0000:00:05.0 off:0:0 off:0:0 off:0:0 off:0:0 msix:2:0
    for phase in 1 2 3 4 5; do
        wait_phase 1 $phase && wait_phase 2 $phase || return
        capture "switch-$phase"
        [ $phase = 5 ] || { next_phase 1; next_phase 2; }
    done
}

run_stays_intx() {
    # An MSI-capable edu kept on INTx while interrupts keep coming.
    bind_vfio 0000:00:03.0
    start_user 1 0000:00:03.0 intx:1:0 intx:1:300 intx:1:300 intx:1:3000
    for phase in 1 2 3 4; do
        wait_phase 1 $phase || return
        capture "stays-intx-$phase"
        [ $phase = 4 ] || next_phase 1
    done
}

run_storm_shared() {
    # Two edus on one guest GSI (PIRQH, GSI 23); then one of them fires as
    # fast as the VFIO round trip allows while the other stays quiet.
    for d in 0000:00:03.0 0000:00:07.0; do bind_vfio $d; done
    start_user 1 0000:00:03.0 intx:1:0 intx:1:5000
    start_user 2 0000:00:07.0 intx:1:0 intx:1:0
    for phase in 1 2; do
        wait_phase 1 $phase && wait_phase 2 $phase || return
        capture "storm-shared-$phase"
        [ $phase = 2 ] || { next_phase 1; next_phase 2; }
    done
}

run_nointxmask() {
    # vfio-pci loaded with nointxmask=1 (from the command line), two edus on
    # one guest GSI (root slots 3 and 7, pin A: PIRQH, GSI 23). Without
    # masking, vfio-pci requests the line exclusively (vfio_intx_set_signal:
    # IRQF_SHARED only if vdev->pci_2_3; drivers/vfio/pci/vfio_pci_intrs.c,
    # Linux 6.1), so the second device's INTx is refused with EBUSY and genirq
    # logs "Flags mismatch" (kernel/irq/manage.c, __setup_irq).
    for d in 0000:00:03.0 0000:00:07.0; do bind_vfio $d; done
    capture nointxmask-before          # both bound, nobody holds the line yet
    start_user 1 0000:00:03.0 intx:1:50
    wait_phase 1 1 || return
    start_user 2 0000:00:07.0 intx:1:50
    wait_failed 2 "Device or resource busy" || return
    dmesg | grep -q "genirq: Flags mismatch irq" || { echo "LAB-ERROR no genirq message"; return; }
    capture nointxmask-after
}

run_nomsi() {
    # pci=nomsi: the host cannot enable MSI (pci_msi_enabled() is false,
    # drivers/pci/msi/msi.c), so VFIO_DEVICE_SET_IRQS for MSI fails and the
    # user falls back to INTx, as QEMU's guest does; then interrupts keep
    # coming on INTx (two moments, for the daemon's rate).
    bind_vfio 0000:00:03.0
    start_user 1 0000:00:03.0 msi/intx:1:0 fire:1:300
    wait_phase 1 1 || return
    grep -q "FALLBACK.*errno" /tmp/user.1 || { echo "LAB-ERROR MSI was not refused"; return; }
    capture nomsi-1
    next_phase 1
    wait_phase 1 2 || return
    capture nomsi-2
}

run_intremap_off() {
    # intremap=off: no IR- chips; vfio_iommu_type1 attaches groups only with
    # allow_unsafe_interrupts=1 (vfio_iommu_type1_attach_group, Linux 6.1).
    # INTx, MSI and MSI-X side by side, as in "modes".
    for d in 0000:00:03.0 0000:00:04.0 0000:00:05.0; do bind_vfio $d; done
    start_user 1 0000:00:03.0 intx:1:100
    start_user 2 0000:00:04.0 msi:1:100
    start_user 3 0000:00:05.0 msix:2:0
    wait_phase 1 1 && wait_phase 2 1 && wait_phase 3 1 || return
    capture intremap-off
}

run_isolcpus() {
    # Two CPUs, isolcpus=1 irqaffinity=0; the edu's vfio-msi vector is then
    # pointed at the isolated CPU by hand, as a misconfigured host would
    # (isolcpus without managed_irq does not stop that, kernel/irq/manage.c),
    # and fires there: moment 1 just after the write, moment 2 after 200 more.
    bind_vfio 0000:00:03.0
    start_user 1 0000:00:03.0 msi:1:50 fire:1:200
    wait_phase 1 1 || return
    irq=$(msi_irq 0000:00:03.0)
    [ -n "$irq" ] || { echo "LAB-ERROR no MSI vector"; return; }
    echo 1 > "/proc/irq/$irq/smp_affinity_list" || { echo "LAB-ERROR affinity write refused"; return; }
    capture isolcpus-1
    next_phase 1
    wait_phase 1 2 || return
    capture isolcpus-2
}

run_group_not_viable() {
    # Bridge 00:10.0 (QEMU pci-bridge, conventional PCI: no ACS) and the two
    # functions behind it, edu 01:01.0 and virtio-rng 01:02.0, form one IOMMU
    # group. virtio-rng stays on virtio-pci, a host driver that uses the DMA
    # API, so the kernel does not let user space own the group
    # (iommu_group_dma_owner_claimed, drivers/vfio/vfio_main.c
    # VFIO_GROUP_GET_STATUS, Linux 6.1): the edu alone cannot be opened.
    bind_vfio 0000:01:01.0
    start_user 1 0000:01:01.0 intx:1:0
    wait_failed 1 "group not viable" || return
    capture group-not-viable-1
    # The other member moved to vfio-pci as well: now the group is viable.
    bind_vfio 0000:01:02.0
    start_user 2 0000:01:01.0 intx:1:20
    wait_phase 2 1 || return
    capture group-not-viable-2
}

run_iommu_off() {
    # No IOMMU in the firmware (no DMAR table): no groups, and vfio-pci
    # refuses the device (vfio_pci_core_register_device needs an
    # iommu_group, drivers/vfio/vfio_main.c vfio_group_find_or_alloc, 6.1).
    bind_vfio 0000:00:03.0
    capture iommu-off
}

run_no_vfio_pci() {
    # vfio-pci was never loaded: the edu stays driverless, virtio-rng on
    # virtio-pci, and /sys/bus/pci/drivers has no vfio-pci.
    capture no-vfio-pci
}
