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
