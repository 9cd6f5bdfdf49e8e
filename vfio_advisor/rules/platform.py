"""Host platform (VA3xxx): MSI and interrupt remapping on the host.

Each rule sits next to its check: data (ID, slug, severity, texts,
MESSAGE_ID) plus a pure check over DomainFacts. No I/O here, and no libvirt:
the hook runs these inside libvirtd's start sequence.
"""

from __future__ import annotations

from typing import Iterator

from vfio_advisor.facts.iommu import VFIO_COMPATIBLE_DRIVERS, VfioFacts, blocks_viability
from vfio_advisor.facts.model import AssignedDevice, DomainFacts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import Rule, device_finding, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.mode import host_blocks_msi


def check_msi_disabled_on_host(facts: DomainFacts) -> Iterator[Finding]:
    for dev in facts.devices:
        pci = dev.device
        if pci is None or pci.supports_msi is not True:
            continue
        blocked = host_blocks_msi(facts, dev)
        if blocked:
            yield device_finding(
                "VA3001", facts, dev,
                f"{pci.name} supports MSI but the host forbids it: {'; '.join(blocked)}. "
                "vfio-pci cannot give the guest MSI, so the device stays on INTx.",
                _msi_blocked_remedy(blocked),
                {"cause": "; ".join(blocked)})


def _msi_blocked_remedy(blocked: list[str]) -> str:
    """Only the steps for the causes found: dropping pci=nomsi does not help a
    bridge whose msi_bus a quirk cleared, and the reverse."""
    steps = []
    if any("pci=nomsi" in b for b in blocked):
        steps.append("Remove pci=nomsi from the host kernel command line and reboot.")
    if any("msi_bus" in b for b in blocked):
        steps.append("Write 1 to the msi_bus files listed (echo 1 > /sys/bus/pci/devices/<BDF>/"
                     "msi_bus) if a quirk did not turn them off on purpose (drivers/pci/quirks.c "
                     "clears it for bridges with broken MSI: then leave it).")
    return " ".join(steps)


def _allow_unsafe(facts: DomainFacts) -> bool | None:
    """vfio_iommu_type1's allow_unsafe_interrupts: the loaded module's value,
    else what modprobe will pass when it loads it (modprobe.d, then the
    command line; facts.kernel.module_param). None: not known (no modprobe.d
    directory in this tree, or one that could not be read)."""
    iommu = facts.host.iommu
    return iommu.allow_unsafe_interrupts if iommu is not None else facts.host.kernel.allow_unsafe_interrupts


def _unsafe_from(facts: DomainFacts) -> str:
    """Where that value comes from, as the findings say it ("" when loaded)."""
    param = facts.host.kernel.allow_unsafe_param if facts.host.iommu is not None else None
    source = param.source if param is not None else None
    if source in (None, "loaded"):
        return ""
    if source == "default":
        return (" (its default: the module is not loaded yet, and neither the kernel command line "
                "nor a modprobe.d file sets it)")
    if source == "kernel command line":
        return " (the module is not loaded yet; the kernel command line sets it)"
    return f" (the module is not loaded yet; {source} sets it)"


def _remapping_off_because(facts: DomainFacts) -> str:
    # The effective state (facts.platform.iommu_state): the IR- chips first,
    # then the command line. intel_iommu=off does not turn Intel IR off
    # (drivers/iommu/intel/irq_remapping.c, 6.1), so only the evidence the
    # state was drawn from is quoted, never a guess from the command line.
    iommu = facts.host.iommu
    return "; ".join(iommu.ir_evidence) if iommu is not None and iommu.ir_evidence else \
        "no IR- interrupt chips in /proc/interrupts"


def _no_iommu_groups(facts: DomainFacts) -> bool:
    """No IOMMU at all: libvirt refuses the hostdevs before vfio sees a group
    (VA3004 says so), so what vfio_iommu_type1 would do does not arise."""
    return facts.vfio is not None and facts.vfio.iommu_groups == 0


# vfio_iommu_type1_attach_group (drivers/vfio/vfio_iommu_type1.c) refuses a
# group without MSI isolation with -EPERM unless allow_unsafe_interrupts is
# set: Linux 6.1 asks irq_domain_check_msi_remap() or the IOMMU's
# IOMMU_CAP_INTR_REMAP, 6.2 and later iommu_group_has_isolated_msi(). On x86
# that isolation is interrupt remapping. So the parameter matters only where
# remapping is off: with remapping on the group attaches whatever its value
# (VA3002 silent); off with the parameter unset, the start fails (VA3008);
# off with it set, guests run without isolation (VA3002). libvirt 9.0 with
# QEMU 7.2 (Debian 12) opens the legacy container, so vfio_iommu_type1's
# parameter is the one that counts; QEMU on iommufd (Linux 6.2+) checks
# iommufd.allow_unsafe_interrupts instead (iommufd_device_bind,
# drivers/iommu/iommufd/device.c).

_REMAPPING_ON = (
    "Turn interrupt remapping on: VT-d (Intel) or AMD-Vi (AMD) with interrupt remapping in "
    "the firmware setup, and no intremap=off or nointremap (nor amd_iommu=off) on the kernel "
    "command line; after the reboot dmesg says \"DMAR-IR: Enabled IRQ remapping\" (Intel) or "
    "\"AMD-Vi: Interrupt remapping enabled\" (AMD) and /proc/interrupts shows IR-PCI-MSI "
    "chips.")
_ALLOW_UNSAFE = (
    "Only on hardware without interrupt remapping, and only for guests you trust with the "
    "host, allow it instead: \"options vfio_iommu_type1 allow_unsafe_interrupts=1\" in "
    "/etc/modprobe.d/vfio.conf, or vfio_iommu_type1.allow_unsafe_interrupts=1 on the kernel "
    "command line (until the next boot: echo 1 > "
    "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts, read at each attach). "
    "Then a guest can make its device forge MSIs and inject interrupts into the host and "
    "other guests.")
_DROP_UNSAFE = (
    "vfio then isolates the MSIs and allow_unsafe_interrupts=1 changes nothing: drop it "
    "(vfio_iommu_type1.allow_unsafe_interrupts=1 on the kernel command line, "
    "\"options vfio_iommu_type1 allow_unsafe_interrupts=1\" in /etc/modprobe.d). Keep it only "
    "on hardware without remapping, and only for guests you trust with the host.")


def check_unsafe_interrupts(facts: DomainFacts) -> Iterator[Finding]:
    """VA3002: assigned devices without MSI isolation, because
    vfio_iommu_type1 was told to allow it (or may be, where a fact is
    missing)."""
    if not facts.devices or _no_iommu_groups(facts):
        return
    remapping, unsafe = facts.host.interrupt_remapping, _allow_unsafe(facts)
    if remapping is False and unsafe is True:
        why = _remapping_off_because(facts)
        yield device_finding(
            "VA3002", facts, None,
            f"Assigned devices run without MSI isolation: interrupt remapping is off ({why}), "
            f"and vfio_iommu_type1 allow_unsafe_interrupts=1{_unsafe_from(facts)} lets vfio attach "
            "their IOMMU groups anyway. A guest can make its device write forged MSI messages and inject "
            "interrupts into the host or other guests.",
            f"{_REMAPPING_ON} {_DROP_UNSAFE}",
            {"kernel": f"interrupt remapping is off ({why}); "
                       "vfio_iommu_type1 allow_unsafe_interrupts=1"})
    elif remapping is False and unsafe is None:
        # The module is not loaded yet (loading vfio loads it: the softdep in
        # drivers/vfio/vfio_main.c, so libvirt's modprobe of vfio-pci does),
        # the command line does not set the parameter, and no modprobe.d
        # directory could be read (a recorded tree without /etc, or one
        # unreadable). The start fails or runs unisolated, and which is not
        # known, so this stays a warning: VA3008 is an error, which [hook]
        # block_on_error would let stop a start that modprobe.d allows; it
        # fires only on a value the kernel holds or modprobe will pass
        # (facts.kernel.module_param), as VA3007 fires only on a module
        # known to be missing.
        why = _remapping_off_because(facts)
        yield device_finding(
            "VA3002", facts, None,
            f"Interrupt remapping is off ({why}) and vfio_iommu_type1 is not loaded yet, so its "
            "allow_unsafe_interrupts is not known (the kernel command line does not set it, and "
            "no modprobe.d directory could be read). "
            f"Unless it is loaded with allow_unsafe_interrupts=1, the start of {facts.domain.name} "
            "will fail: vfio refuses IOMMU groups without MSI isolation (kernel log: \"No "
            "interrupt remapping support.\"; QEMU: \"Failed to set iommu for container: "
            "Operation not permitted\"). If it is, assigned devices run without MSI isolation "
            "and a guest can inject interrupts into the host or other guests.",
            "Check the value the module will get: modprobe vfio_iommu_type1; cat "
            "/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts (N: the start "
            f"fails; Y: the guest runs without isolation). {_REMAPPING_ON} {_ALLOW_UNSAFE}",
            {"kernel": f"interrupt remapping is off ({why}); vfio_iommu_type1 not loaded"})
    elif remapping is None and unsafe is True:
        # Remapping could not be read (no MSI or IO-APIC chip in
        # /proc/interrupts, nothing on the command line). The parameter is
        # only ever needed where remapping is off, so its being set is a hint
        # worth a hedged warning; silence would hide the one risky case.
        yield device_finding(
            "VA3002", facts, None,
            "vfio_iommu_type1 allow_unsafe_interrupts=1 is set, and whether interrupt remapping "
            "is on could not be read. If it is off, assigned devices run without MSI isolation "
            "and a guest can inject interrupts into the host or other guests; if it is on, the "
            "setting changes nothing.",
            "Look for IR-PCI-MSI chips in /proc/interrupts and for \"DMAR-IR: Enabled IRQ "
            "remapping\" (Intel) or \"AMD-Vi: Interrupt remapping enabled\" (AMD) in dmesg. "
            "With remapping on, drop allow_unsafe_interrupts=1: it changes nothing there. "
            f"With it off: {_REMAPPING_ON} {_DROP_UNSAFE}",
            {"kernel": "vfio_iommu_type1 allow_unsafe_interrupts=1; interrupt remapping unknown"})


def check_msi_posted(facts: DomainFacts) -> Iterator[Finding]:
    """VA3003: the host cannot count a device's MSI/MSI-X: they are posted.

    INTx is never posted (only MSIs go through the IRTE that KVM's irq bypass
    rewrites: vmx_pi_update_irte, avic_pi_update_irte, Linux 6.1), so INTx
    devices and hosts that forbid MSI are left out."""
    posting = facts.host.posting
    if posting is None or not posting.host_cannot_count_msi:
        return
    for dev in facts.devices:
        pci, mode = dev.device, dev.interrupts.mode
        if pci is None:
            continue
        if mode not in ("msi", "msix"):
            if mode != "none" or pci.supports_msi is not True or host_blocks_msi(facts, dev):
                continue
        now = (f"its {mode.upper().replace('MSIX', 'MSI-X')} vectors" if mode in ("msi", "msix")
               else "its MSI/MSI-X vectors, once the guest enables them,")
        yield device_finding(
            "VA3003", facts, dev,
            f"The host cannot count the interrupts of {pci.name}: {now} "
            f"{'are' if posting.verdict == 'posted' else 'may be'} posted to the guest's vCPU "
            "(KVM irq bypass), so its vfio-msi/vfio-msix counters in /proc/interrupts stay "
            "flat while it works. vfio-advisor draws no conclusion (no interrupts, rates, "
            "storms, affinity) from those counters.",
            "Nothing to fix: posting is the fast path. Judge the device's interrupts inside "
            "the guest (/proc/interrupts or Device Manager).",
            {"posting": posting.verdict, "platform": "; ".join(posting.evidence)})


# --- start failures: what stops libvirt or QEMU from opening the devices --
#
# At `prepare begin` (the hook) libvirt has not touched the devices yet: the
# hook runs from qemuProcessInit, before qemuProcessPrepareHost hands the
# hostdevs to virHostdevPreparePCIDevices (src/qemu/qemu_process.c,
# src/hypervisor/virhostdev.c, libvirt 9.0). That function then detaches the
# managed='yes' functions the domain lists, and only those, from their host
# drivers to vfio-pci (virPCIDeviceDetach, src/util/virpci.c). It never
# touches the other members of their IOMMU groups, and it refuses a
# managed='no' device that is not on a stub driver ("Unmanaged PCI device %s
# must be manually detached from the host"). So the state read here is the
# state those steps start from.


def _managed(dev: AssignedDevice) -> bool:
    """libvirt's default for <hostdev> and <interface type='hostdev'> is
    managed='no' (docs/formatdomain.rst, "managed")."""
    return dev.hostdev.managed is True


def _node(bdf: str) -> str:
    """The node device name virsh takes: pci_0000_01_00_0."""
    return "pci_" + bdf.replace(":", "_").replace(".", "_")


def check_iommu_off(facts: DomainFacts) -> Iterator[Finding]:
    """VA3004: no IOMMU groups at all, so libvirt refuses every PCI hostdev
    ("host doesn't support passthrough of host PCI devices",
    qemuHostdevPreparePCIDevicesCheckSupport: virHostdevHostSupportsPassthroughVFIO
    wants entries in /sys/kernel/iommu_groups, src/qemu/qemu_hostdev.c, 9.0)."""
    vfio = facts.vfio
    if vfio is None or vfio.iommu_groups != 0 or not facts.devices:
        return
    evidence = {"sys/kernel/iommu_groups": "no groups"}
    cmdline = facts.host.kernel.cmdline
    if cmdline is not None:
        evidence["proc/cmdline"] = cmdline.raw
    if vfio.firmware_iommu_tables is not None:
        evidence["sys/firmware/acpi/tables"] = ", ".join(vfio.firmware_iommu_tables) or \
            "no DMAR or IVRS table"
    yield device_finding(
        "VA3004", facts, None,
        f"The host has no IOMMU groups: no IOMMU is enabled, and the start of "
        f"{facts.domain.name} will fail (libvirt: \"host doesn't support passthrough of host PCI "
        "devices\"). VFIO can only hand a device to a guest inside an IOMMU group.",
        _iommu_off_remedy(vfio, cmdline), evidence)


def _iommu_off_remedy(vfio: VfioFacts, cmdline) -> str:
    tables, vendor = vfio.firmware_iommu_tables, vfio.cpu_vendor
    if vendor is None and tables:
        vendor = "intel" if "DMAR" in tables else "amd"
    values = (lambda key: cmdline.values(key)) if cmdline is not None else (lambda key: [])
    steps = []
    off = [f"{k}=off" for k in ("intel_iommu", "amd_iommu", "iommu") if "off" in values(k)]
    if off:
        steps.append(f"Remove {' and '.join(off)} from the kernel command line.")
    firmware = {"intel": "Intel VT-d (\"Intel Virtualization Technology for Directed I/O\")",
                "amd": "the AMD IOMMU (AMD-Vi, \"IOMMU\" under the chipset/NBIO settings)"}
    if tables is not None and not tables:
        # The kernel finds an IOMMU only through these ACPI tables
        # (drivers/iommu/intel/dmar.c dmar_table_detect, drivers/iommu/amd/init.c
        # amd_iommu_detect); without them no command line helps.
        steps.append("The firmware offers no DMAR or IVRS ACPI table: turn on "
                     + (firmware[vendor] if vendor else "VT-d (Intel) or the IOMMU/AMD-Vi (AMD)")
                     + " in the firmware setup.")
    elif tables is None:
        steps.append("Make sure " + (firmware[vendor] if vendor else
                                     "VT-d (Intel) or the IOMMU/AMD-Vi (AMD)")
                     + " is turned on in the firmware setup.")
    if vendor != "amd" and "on" not in values("intel_iommu"):
        # Debian 12's 6.1 turns the Intel IOMMU on by default only on hosts
        # without an integrated GPU (CONFIG_INTEL_IOMMU_DEFAULT_ON_INTGPU_OFF).
        steps.append("Add intel_iommu=on to GRUB_CMDLINE_LINUX in /etc/default/grub and run "
                     "update-grub.")
    if vendor != "intel":
        steps.append("AMD-Vi is on by default when the firmware provides it (amd_iommu=on is "
                     "not an option the kernel knows).")
    # iommu_group_add_device logs this line for every device it groups
    # (drivers/iommu/iommu.c, 6.1), on Intel and AMD alike.
    steps.append("Reboot; then dmesg shows \"Adding to iommu group\" lines and "
                 "/sys/kernel/iommu_groups has entries.")
    return " ".join(steps)


def check_group_not_viable(facts: DomainFacts) -> Iterator[Finding]:
    """VA3005: another member of the device's IOMMU group is bound to a host
    driver that uses the kernel's DMA API. Linux 5.19+ then reports the group
    not viable (VFIO_GROUP_GET_STATUS without VFIO_GROUP_FLAGS_VIABLE:
    iommu_group_dma_owner_claimed, drivers/vfio/vfio_main.c, 6.1;
    drivers/vfio/group.c from 6.2) and QEMU stops: "vfio <BDF>: group N is
    not viable" (hw/vfio/common.c vfio_get_group, QEMU 7.2)."""
    vfio = facts.vfio
    if vfio is None:
        return
    in_domain = {d.address: d for d in facts.devices}
    for dev in facts.devices:
        group = vfio.group_of(dev.address)
        if group is None:
            continue
        blockers, unsure = [], []
        for member in group.members:
            if member.address == dev.address:
                continue
            other = in_domain.get(member.address)
            if other is not None:
                # libvirt detaches it too (managed), or VA3006 names it (unmanaged).
                continue
            verdict = blocks_viability(member, vfio.ownership_rules)
            if verdict:
                blockers.append(member)
            elif verdict is None:
                unsure.append(member)
        if not blockers:
            continue
        names = ", ".join(f"{m.address} (bound to {m.driver})" for m in blockers)
        detach = "; ".join(f"virsh nodedev-detach {_node(m.address)}" for m in blockers)
        yield device_finding(
            "VA3005", facts, dev,
            f"IOMMU group {group.number} of {dev.address} is not viable: it also holds {names}, "
            "which a host driver owns. libvirt detaches only the functions the domain assigns, "
            "so QEMU will stop the start with \"vfio "
            f"{dev.address}: group {group.number} is not viable\" (\"Please ensure all devices "
            "within the iommu_group are bound to their vfio bus driver.\").",
            "Give the other members to vfio-pci before the start: assign them to this domain "
            "as <hostdev managed='yes'> too, or detach them from the host "
            f"({detach}; vfio-pci and pci-stub both leave the group viable). If the host needs "
            "one of them (a disk controller, the NIC you log in over), no binding fixes it: "
            "move the card to a slot whose group holds nothing else (a root port with ACS).",
            {f"sys/kernel/iommu_groups/{group.number}/devices": ", ".join(
                f"{m.address}={m.driver or 'no driver'}" for m in group.members)})


def check_unmanaged_not_on_vfio(facts: DomainFacts) -> Iterator[Finding]:
    """VA3006: a managed='no' hostdev that vfio-pci does not hold. libvirt
    refuses one on no stub driver ("Unmanaged PCI device %s must be manually
    detached from the host", virHostdevPreparePCIDevices step 2); one on
    pci-stub passes libvirt, but QEMU's vfio-pci finds no VFIO device in the
    group (VFIO_GROUP_GET_DEVICE_FD fails)."""
    if facts.vfio is None:
        return
    for dev in facts.devices:
        pci = dev.device
        if pci is None or _managed(dev) or pci.driver == "vfio-pci":
            continue
        if pci.driver is None and not facts.vfio.drivers_listed:
            continue  # a tree that does not show drivers: no driver link proves nothing
        bound = f"bound to {pci.driver}" if pci.driver else "bound to no driver"
        said = ("libvirt accepts pci-stub, but QEMU's vfio-pci cannot open the device"
                if pci.driver == "pci-stub"
                else f"libvirt refuses the start: \"Unmanaged PCI device {pci.address} must be "
                     "manually detached from the host\"")
        how = ("with managed='no'" if dev.hostdev.managed is False
               else "without managed='yes' (libvirt's default is managed='no')")
        yield device_finding(
            "VA3006", facts, dev,
            f"{pci.name} at {pci.address} is assigned {how} but is {bound}, not vfio-pci. "
            f"libvirt does not rebind unmanaged devices at start, and {said}.",
            f"Bind it to vfio-pci before the start (virsh nodedev-detach {_node(pci.address)}, "
            f"or for every boot: driverctl set-override {pci.address} vfio-pci), or let libvirt "
            "do it at each start: <hostdev mode='subsystem' type='pci' managed='yes'>.",
            {f"sys/bus/pci/devices/{pci.address}/driver": pci.driver or "none"})


def check_vfio_pci_unavailable(facts: DomainFacts) -> Iterator[Finding]:
    """VA3007: vfio-pci is not loaded and the kernel has no module for it.
    For managed='yes' libvirt loads it itself (virPCIProbeStubDriver runs
    modprobe, src/util/virpci.c, 9.0) and fails with "Failed to load PCI
    stub module vfio-pci" when there is none (recorded in the system tier); so only a positively missing
    module fires (a recorded tree without /lib/modules cannot tell)."""
    vfio = facts.vfio
    if vfio is None or vfio.vfio_pci_registered is not False or vfio.vfio_pci_module != "":
        return
    if not any(_managed(d) for d in facts.devices if d.device is not None):
        return  # managed='no' devices not on vfio-pci: VA3006 names each
    yield device_finding(
        "VA3007", facts, None,
        f"vfio-pci is not loaded and kernel {vfio.kernel_release} has no vfio-pci module "
        f"(/lib/modules/{vfio.kernel_release}/kernel/drivers/vfio/pci/ has none, nor "
        "modules.builtin): libvirt will fail the start with \"Failed to load PCI stub "
        "module vfio-pci\" (libvirt 9.0; later releases say \"PCI driver module\").",
        "Boot a kernel built with CONFIG_VFIO_PCI (Debian's linux-image-amd64 is; "
        "linux-image-cloud-amd64 is too) or install the modules package of this kernel, then "
        "run modprobe vfio-pci.",
        {"sys/bus/pci/drivers": "no vfio-pci"})



def check_remapping_required(facts: DomainFacts) -> Iterator[Finding]:
    """VA3008: interrupt remapping is off and vfio_iommu_type1 holds
    allow_unsafe_interrupts=N: vfio_iommu_type1_attach_group refuses the
    group with -EPERM and logs "No interrupt remapping support.  Use the
    module param \"allow_unsafe_interrupts\" to enable VFIO IOMMU support on
    this platform" (drivers/vfio/vfio_iommu_type1.c, 6.1); QEMU's
    VFIO_SET_IOMMU fails and the start stops ("failed to setup container for
    group N: Failed to set iommu for container: Operation not permitted",
    hw/vfio/common.c vfio_get_group and vfio_init_container, QEMU 7.2; read
    from the source, not recorded by the lab). The parameter unknown (module
    not loaded, command line silent) is VA3002's hedged case, not this one."""
    if not facts.devices or _no_iommu_groups(facts):
        return
    if facts.host.interrupt_remapping is not False or _allow_unsafe(facts) is not False:
        return
    why = _remapping_off_because(facts)
    groups = [g.number for g in (facts.vfio.groups if facts.vfio is not None else ())]
    group = f"group {groups[0]}" if groups else "group N"
    yield device_finding(
        "VA3008", facts, None,
        f"Interrupt remapping is off ({why}) and vfio_iommu_type1's allow_unsafe_interrupts "
        f"is N{_unsafe_from(facts)}, so the kernel refuses to attach an IOMMU group without MSI "
        "isolation to QEMU's "
        f"VFIO container, and the start of {facts.domain.name} will fail (QEMU: \"failed to "
        f"setup container for {group}: Failed to set iommu for container: Operation not "
        "permitted\"; kernel log: \"vfio_iommu_type1_attach_group: No interrupt remapping "
        "support.  Use the module param \"allow_unsafe_interrupts\" to enable VFIO IOMMU "
        "support on this platform\").",
        f"{_REMAPPING_ON} {_ALLOW_UNSAFE}",
        {"kernel": f"interrupt remapping is off ({why}); "
                   "vfio_iommu_type1 allow_unsafe_interrupts=N"})


RULES: tuple[Rule, ...] = register(
    Rule("VA3001", "msi-disabled-on-host", Severity.WARNING,
         "MSI is disabled on the host for an assigned device",
         "The host kernel was told not to use MSI (pci=nomsi), or the device or a bridge "
         "above it has msi_bus set to 0, usually by a quirk. vfio-pci then cannot enable "
         "MSI or MSI-X when the guest asks, and the device stays on INTx.",
         "Remove pci=nomsi, or re-enable msi_bus where it is safe.",
         _id("20dde90bbadb4264a81b755407343dc1"), check_msi_disabled_on_host,
         fires_on=("lab-nomsi",), silent_on=("lab-stays-intx", "gpu-audio-msi")),
    Rule("VA3002", "unsafe-interrupt-remapping", Severity.WARNING,
         "Assigned devices without interrupt remapping: guests can forge MSIs",
         "Without interrupt remapping, an MSI is just a DMA write to the interrupt "
         "address range, and the IOMMU does not check its contents. A guest that "
         "controls an assigned device can make it write any MSI and inject interrupts "
         "into the host or other guests. vfio_iommu_type1 refuses such groups unless its "
         "allow_unsafe_interrupts=1 is set; this fires where it is set and remapping is off, "
         "and, hedged, where one of the two could not be read (the module not loaded yet, or "
         "no interrupt chip to show remapping). With remapping on the parameter changes "
         "nothing and this stays silent.",
         "Turn on interrupt remapping in the firmware and kernel; then drop "
         "allow_unsafe_interrupts=1.",
         _id("cfe41719da2d463eae90ac6c90f91dea"), check_unsafe_interrupts,
         fires_on=("lab-intremap-off", "intremap-off-type1-not-loaded",
                   "remapping-unknown-unsafe-y"),
         silent_on=("lab-modes", "modes-unsafe-y", "intremap-off-unsafe-n", "lab-iommu-off"),
         scope="domain"),
    Rule("VA3003", "msi-posted-to-guest", Severity.INFO,
         "The host cannot count this device's MSIs: they are posted to the guest",
         "With posted interrupts (Intel VT-d PI with APICv, AMD AVIC with the IOMMU's guest "
         "vAPIC mode) KVM rewrites the IOMMU's interrupt remapping entry so an assigned "
         "device's MSI goes straight to the vCPU. The host's vfio-msi/vfio-msix handler "
         "never runs and its counter stays flat while the device works, so silence, rates "
         "and affinity of those vectors cannot be judged on the host. INTx is never posted.",
         "Nothing to fix. Look at the device's interrupts inside the guest.",
         _id("f754be5d62504d4786f8fcfc303f2e2d"), check_msi_posted,
         fires_on=("posted-xeon-server-msi", "posted-epyc-server-msi"),
         silent_on=("posted-icl-laptop-msi", "posted-xeon-server-intx")),
    Rule("VA3004", "iommu-off", Severity.ERROR,
         "No IOMMU enabled: PCI devices cannot be assigned",
         "VFIO assigns devices by IOMMU group; with no IOMMU (VT-d or AMD-Vi off in the "
         "firmware, or not enabled on the kernel command line) /sys/kernel/iommu_groups is "
         "empty, libvirt refuses every PCI hostdev (\"host doesn't support passthrough of host "
         "PCI devices\") and vfio-pci refuses to bind (probe fails with -22).",
         "Turn on VT-d/AMD-Vi in the firmware and intel_iommu=on on Intel hosts, then reboot.",
         _id("3df734cecd3a43c799bfc3baeff11331"), check_iommu_off,
         fires_on=("lab-iommu-off", "iommu-off-intel-cmdline"),
         silent_on=("lab-group-viable", "gpu-audio-msi"), scope="domain"),
    Rule("VA3005", "iommu-group-not-viable", Severity.ERROR,
         "The assigned device's IOMMU group is not viable: a host driver holds another member",
         "Devices in one IOMMU group cannot be isolated from each other, so VFIO hands the "
         "group to user space only when no member is in use by a host driver (members "
         "without a driver or on vfio-pci, pci-stub or pcieport are fine; since Linux 5.19 "
         "other drivers on bridges count too). libvirt detaches only the functions the domain assigns, "
         "never the rest of their group, and QEMU stops: \"group N is not viable\".",
         "Bind every other member of the group to vfio-pci (or assign it too), or move the "
         "card to a slot with its own group.",
         _id("6594ba77b879463c9e863a58783b004b"), check_group_not_viable,
         fires_on=("lab-group-not-viable", "group-not-viable-gpu-sibling"),
         silent_on=("lab-group-viable", "lab-group-both-assigned", "group-bridge-pcieport")),
    Rule("VA3006", "unmanaged-hostdev-not-on-vfio", Severity.ERROR,
         "A managed='no' device is not bound to vfio-pci",
         "With managed='no' libvirt does not move the device to vfio-pci at start; it must "
         "already be there. On a host driver or no driver libvirt refuses the start "
         "(\"Unmanaged PCI device ... must be manually detached from the host\").",
         "Bind it to vfio-pci before the start, or set managed='yes'.",
         _id("4a371d389af54e049aaf6f1838b6a997"), check_unmanaged_not_on_vfio,
         fires_on=("lab-unmanaged-on-host-driver", "lab-no-vfio-pci-unmanaged"),
         silent_on=("lab-unmanaged-on-vfio", "lab-group-viable")),
    Rule("VA3007", "vfio-pci-unavailable", Severity.ERROR,
         "vfio-pci is neither loaded nor available as a module",
         "libvirt binds managed='yes' devices to vfio-pci and loads the module itself when "
         "it is not loaded; a kernel without vfio-pci fails the start with \"Failed to load "
         "PCI stub module vfio-pci\".",
         "Boot a kernel with vfio-pci (CONFIG_VFIO_PCI) or install its modules.",
         _id("8609a323f9d649668f3d3bcc0938076c"), check_vfio_pci_unavailable,
         fires_on=("no-vfio-pci-module",),
         silent_on=("no-vfio-pci-module-present", "lab-no-vfio-pci-unmanaged"), scope="domain"),
    Rule("VA3008", "interrupt-remapping-required", Severity.ERROR,
         "Interrupt remapping is off and vfio_iommu_type1 refuses the assigned devices",
         "vfio_iommu_type1 attaches an IOMMU group to a VFIO container only if the platform "
         "isolates the group's MSIs (on x86: interrupt remapping) or its module parameter "
         "allow_unsafe_interrupts is set. With remapping off and the parameter at its "
         "default N the kernel refuses the group (EPERM, \"No interrupt remapping support\" "
         "in the kernel log) and QEMU stops: \"Failed to set iommu for container: Operation "
         "not permitted\". QEMU on iommufd (Linux 6.2+) checks "
         "iommufd.allow_unsafe_interrupts instead; libvirt 9.0 uses the legacy container.",
         "Turn on interrupt remapping (VT-d/AMD-Vi interrupt remapping in the firmware, no "
         "intremap=off). Only on hardware without it and for trusted guests: "
         "vfio_iommu_type1.allow_unsafe_interrupts=1.",
         _id("7cbcff5c5c3949fd817413c5ddba9d28"), check_remapping_required,
         fires_on=("intremap-off-unsafe-n",),
         silent_on=("lab-intremap-off", "intremap-off-type1-not-loaded", "lab-modes",
                    "lab-iommu-off"), scope="domain"),
)
