"""IOMMU groups and driver bindings: can VFIO open the assigned devices at all?

The start failures users hit first come from here: no IOMMU (no groups), an
IOMMU group that a host driver still shares with the assigned function, and
devices vfio-pci does not hold (or a host without vfio-pci). Read through
HostRoot, only for the groups of the devices a domain assigns (a GPU's group
has two to four members), so the hook stays fast.
"""

from __future__ import annotations

from typing import Iterable, NamedTuple

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot

# Drivers that set struct device_driver.driver_managed_dma: binding them does
# not claim the group for the kernel's DMA API (drivers/iommu/iommu.c
# iommu_device_use_default_domain is skipped, drivers/pci/pci-driver.c
# pci_dma_configure), so they leave the group viable for VFIO. Linux 6.1:
# vfio-pci (drivers/vfio/pci/vfio_pci.c), pci-stub (drivers/pci/pci-stub.c),
# pcieport (drivers/pci/pcie/portdrv_pci.c, commit c7d469849747 "PCI: portdrv:
# Set driver_managed_dma", 5.19), and the vfio-pci variant drivers
# mlx5_vfio_pci and hisi_acc_vfio_pci; later kernels add pds_vfio_pci (6.6),
# virtio_vfio_pci (6.8), nvgrace_gpu_vfio_pci and qat_vfio_pci (6.10).
VFIO_COMPATIBLE_DRIVERS = frozenset({
    "vfio-pci", "pci-stub", "pcieport", "mlx5_vfio_pci", "hisi_acc_vfio_pci",
    "pds_vfio_pci", "virtio_vfio_pci", "nvgrace_gpu_vfio_pci", "qat_vfio_pci",
})

# Before 5.19 vfio decided viability itself (drivers/vfio/vfio.c
# vfio_dev_driver_allowed, Linux 5.18): pci-stub, or any device whose header
# type is not a normal endpoint, i.e. every bridge, whatever its driver. Lu
# Baolu's DMA ownership series (v5.19, "vfio: Set DMA ownership for VFIO
# devices") replaced that with driver_managed_dma and says it "disallows some
# unsafe bridge drivers to bind to non-ACS bridges" (shpchp, for one).
OWNERSHIP_KERNEL = (5, 19)

# Where distributions put the module (kmod looks it up through modules.dep;
# Debian 12 ships it uncompressed, later releases compressed).
_VFIO_PCI_MODULE = "kernel/drivers/vfio/pci/vfio-pci.ko"
_MODULE_SUFFIXES = ("", ".xz", ".zst", ".gz")


class GroupMember(NamedTuple):
    address: str
    driver: str | None  # None: no driver bound
    bridge: bool | None  # config header type 1 or 2 (None: unreadable)
    class_code: int | None


class IommuGroup(NamedTuple):
    number: int
    members: tuple[GroupMember, ...]

    def member(self, bdf: str) -> GroupMember | None:
        return next((m for m in self.members if m.address == bdf), None)


class VfioFacts(NamedTuple):
    """What VFIO needs before QEMU can open a domain's devices."""

    iommu_groups: int | None  # entries of sys/kernel/iommu_groups; None: unreadable
    groups: tuple[IommuGroup, ...]  # the groups of the domain's assigned devices
    vfio_pci_registered: bool | None  # sys/bus/pci/drivers/vfio-pci exists
    # Where modprobe would find vfio-pci when it is not registered yet:
    # "built in", the module's path, "" (looked, not found), None (cannot tell).
    vfio_pci_module: str | None
    kernel_release: str | None
    # ACPI tables that announce an IOMMU to the kernel (sys/firmware/acpi/tables):
    # "DMAR" (Intel VT-d), "IVRS" (AMD-Vi); read only when there are no groups.
    firmware_iommu_tables: tuple[str, ...] | None
    cpu_vendor: str | None  # "intel" | "amd", read only when there are no groups
    unreadable: tuple[str, ...] = ()
    # sys/bus/pci/drivers exists: the tree shows the bus's drivers, so a
    # device without a driver link has no driver (a hand-made or partial
    # tree that lacks it cannot tell).
    drivers_listed: bool = False

    def group_of(self, bdf: str) -> IommuGroup | None:
        return next((g for g in self.groups if g.member(bdf) is not None), None)

    @property
    def ownership_rules(self) -> bool | None:
        """Does the kernel decide viability by DMA ownership (5.19 and later)?"""
        version = release_version(self.kernel_release)
        return None if version is None else version >= OWNERSHIP_KERNEL


def release_version(release: str | None) -> tuple[int, int] | None:
    """'6.1.0-27-amd64' -> (6, 1)."""
    if not release:
        return None
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1].split("-")[0] if c.isdigit()) or "x")
    except (ValueError, IndexError):
        return None


def blocks_viability(member: GroupMember, ownership_rules: bool | None) -> bool | None:
    """Does this member, as bound now, keep VFIO from opening its group?

    None when it depends on a kernel version we could not read (a bridge
    with a driver other than the allowed ones)."""
    if member.driver is None or member.driver in VFIO_COMPATIBLE_DRIVERS:
        return False
    if member.bridge:
        if ownership_rules is None:
            return None
        return ownership_rules
    return True


def _member(host: HostRoot, bdf: str, unreadable: list[str]) -> GroupMember:
    base = f"sys/bus/pci/devices/{bdf}"
    driver = None
    if host.exists(f"{base}/driver"):
        try:
            driver = host.read_link_name(f"{base}/driver")
        except FactUnavailable as exc:
            unreadable.append(f"{exc.path}: {exc.reason}")
    bridge = class_code = None
    try:
        header = host.read_bytes(f"{base}/config", 64)
        if len(header) > 0x0E:
            # Header Type, bits 6:0 (PCI 3.0, 6.2.1): 0 endpoint, 1 PCI-to-PCI
            # bridge, 2 CardBus bridge; bit 7 only says multi-function.
            bridge = header[0x0E] & 0x7F in (1, 2)
    except FactUnavailable as exc:
        unreadable.append(f"{exc.path}: {exc.reason}")
    try:
        class_code = int(host.read_value(f"{base}/class"), 16)
    except (FactUnavailable, ValueError):
        pass
    if bridge is None and class_code is not None:
        bridge = class_code >> 8 in (0x0604, 0x0607, 0x0609)
    return GroupMember(bdf, driver, bridge, class_code)


def _optional_value(host: HostRoot, rel: str) -> str | None:
    try:
        return host.read_value(rel)
    except FactUnavailable:
        return None


def _vfio_pci_module(host: HostRoot, release: str | None) -> str | None:
    """Where modprobe would find vfio-pci (libvirt's virPCIProbeStubDriver
    runs it for managed='yes' devices, src/util/virpci.c, libvirt 9.0)."""
    if not release:
        return None
    base = f"lib/modules/{release}"
    if not host.exists(base):
        return None  # a recorded tree without the modules: cannot tell
    try:
        builtin = host.read_text(f"{base}/modules.builtin", 1 << 20)
        if _VFIO_PCI_MODULE in builtin.split():
            return "built in"
    except FactUnavailable:
        pass
    for suffix in _MODULE_SUFFIXES:
        rel = f"{base}/{_VFIO_PCI_MODULE}{suffix}"
        if host.exists(rel):
            return "/" + rel
    # Distribution kernels keep modules under kernel/; look for updates/ too
    # (DKMS) only by name, without walking the tree.
    return ""


def read_vfio_facts(host: HostRoot, assigned: Iterable[tuple[str, int | None, tuple[str, ...]]],
                    iommu_groups: int | None) -> VfioFacts:
    """`assigned`: (BDF, IOMMU group, group members) of each assigned device
    the host has (facts/pci.py read the group links already);
    `iommu_groups`: KernelFacts.iommu_groups."""
    unreadable: list[str] = []
    groups: dict[int, IommuGroup] = {}
    for _bdf, number, members in assigned:
        if number is None or number in groups:
            continue
        groups[number] = IommuGroup(number, tuple(_member(host, m, unreadable) for m in members))
    # Loading vfio-pci registers its driver (pci_register_driver in
    # vfio_pci_init) and makes sys/module/vfio_pci; a tree without
    # sys/bus/pci/drivers (an older recording) cannot tell.
    registered: bool | None = None
    if host.exists("sys/bus/pci/drivers/vfio-pci") or host.exists("sys/module/vfio_pci"):
        registered = True
    elif host.exists("sys/bus/pci/drivers"):
        registered = False
    drivers_listed = host.exists("sys/bus/pci/drivers")
    if iommu_groups == 0 and not drivers_listed and not host.exists("sys/kernel/iommu_groups"):
        # The kernel creates sys/kernel/iommu_groups at boot whether or not an
        # IOMMU shows up (iommu_init, drivers/iommu/iommu.c, 6.1); a tree with
        # neither it nor the bus's driver list is a partial recording.
        iommu_groups = None
    release = _optional_value(host, "proc/sys/kernel/osrelease")
    module = None if registered is not False else _vfio_pci_module(host, release)
    tables = vendor = None
    if iommu_groups == 0:
        if host.exists("sys/firmware/acpi/tables"):
            tables = tuple(t for t in ("DMAR", "IVRS") if host.exists(f"sys/firmware/acpi/tables/{t}"))
        vendor = _cpu_vendor(host)
    return VfioFacts(iommu_groups=iommu_groups, groups=tuple(groups.values()),
                     vfio_pci_registered=registered, vfio_pci_module=module,
                     kernel_release=release, firmware_iommu_tables=tables,
                     cpu_vendor=vendor, unreadable=tuple(unreadable),
                     drivers_listed=drivers_listed)


def _cpu_vendor(host: HostRoot) -> str | None:
    try:
        head = host.read_text("proc/cpuinfo", 4096)
    except FactUnavailable:
        return None
    for line in head.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "vendor_id":
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}.get(
                value.strip())
    return None
