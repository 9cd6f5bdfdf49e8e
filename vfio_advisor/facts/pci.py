"""Host PCI devices from sysfs (sys/bus/pci/devices/<BDF>/), read through HostRoot."""

from __future__ import annotations

from typing import NamedTuple

import re

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pci_config import (
    UNKNOWN,
    UNPRIVILEGED_CONFIG_BYTES,
    ConfigSpace,
    ConfigSpaceError,
    _Unknown,
    parse_config_space,
)
from vfio_advisor.facts import quirks as _quirks
from vfio_advisor.facts.pciids import PciIds

# The one line a device's `unreadable` holds when its capability list could
# not be read to the end for a reason other than privilege.
CAPABILITIES_UNREADABLE = "capabilities unreadable: "

BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")

# The kernel's INTx quirk lists live in one table, facts/quirks.py (checked
# against Linux 6.1.176's source as data). Re-exported for older importers.
BROKEN_INTX_MASKING = _quirks.BROKEN_INTX_MASKING


def normalize_bdf(text: str) -> str:
    """'1:00.0', '01:00.0' or '0000:01:00.0' -> '0000:01:00.0'. ValueError otherwise."""
    t = text.strip().lower()
    m = re.fullmatch(r"(?:([0-9a-f]{1,4}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])", t)
    if not m:
        raise ValueError(f"not a PCI address (expected DDDD:BB:SS.F): {text!r}")
    domain, bus, slot, fn = m.groups()
    if int(slot, 16) > 31:
        raise ValueError(f"PCI slot out of range (0-1f): {text!r}")
    return f"{int(domain or '0', 16):04x}:{int(bus, 16):02x}:{int(slot, 16):02x}.{fn}"


class IntxMasking(NamedTuple):
    """Can vfio-pci mask this device's INTx at the device (PCI 2.3)?

    The kernel decides by probing, not from any version field: at enumeration
    pci_setup_device toggles Command bit 10 (INTx Disable) and reads it back
    (drivers/pci/probe.c pci_intx_mask_broken), the INTx quirks may then set
    pdev->broken_intx_masking (drivers/pci/quirks.c), and vfio_pci_core_enable
    takes vdev->pci_2_3 from pci_intx_mask_supported, which returns
    !broken_intx_masking (include/linux/pci.h; all Linux 6.1). Nothing in
    sysfs shows the probe's result, so we infer it from evidence, and say
    False only where the kernel's own inputs settle it (a quirk list,
    nointxmask=1); a guess, however likely, is None with the guess in the
    evidence.
    """

    supported: bool | None  # None: not settled by the evidence (see `evidence`)
    evidence: str


class PciDevice(NamedTuple):
    address: str
    vendor_id: int | None
    device_id: int | None
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    revision: int | None
    class_code: int | None
    driver: str | None
    iommu_group: int | None
    iommu_group_members: tuple[str, ...]
    irq: int | None
    msi_bus: bool | None
    # Bridges above the device, nearest first, with their msi_bus value.
    upstream: tuple[tuple[str, bool | None], ...]
    msi_irqs: tuple[int, ...]  # host vectors the host driver allocated (msi_irqs/)
    vendor_name: str | None
    device_name: str | None
    config: ConfigSpace | None
    # What could not be read, one line each ("config: permission denied").
    unreadable: tuple[str, ...] = ()
    sriov_vf: bool = False  # has a physfn link: an SR-IOV virtual function
    # Why the config space could not be decoded at all (config is None).
    config_problem: str | None = None
    # The names its host driver gives its IRQ handlers besides the driver's
    # own (model.own_handler): its USB root hubs (usbN), network interfaces
    # and ALSA cards (cardN), from its sysfs children; () under vfio-pci.
    handler_names: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        if self.device_name and self.vendor_name:
            return f"{self.vendor_name} {self.device_name}"
        if self.vendor_id is not None and self.device_id is not None:
            return f"[{self.vendor_id:04x}:{self.device_id:04x}]"
        return "unknown device"

    @property
    def slot(self) -> str:
        """Domain:bus:slot, shared by all functions of one physical device."""
        return self.address.rsplit(".", 1)[0]

    @property
    def function(self) -> int:
        return int(self.address[-1])

    @property
    def base_class(self) -> int | None:
        return None if self.class_code is None else self.class_code >> 16

    @property
    def is_hda_audio(self) -> bool:
        return self.class_code is not None and self.class_code >> 8 == 0x0403

    @property
    def is_display(self) -> bool:
        return self.base_class == 0x03

    @property
    def config_bytes(self) -> int:
        return self.config.length if self.config else 0

    @property
    def supports_msi(self) -> bool | _Unknown:
        return self.config.supports_msi if self.config else UNKNOWN

    @property
    def capabilities_unreadable(self) -> str | None:
        """Why the MSI/MSI-X/PCIe/PM capabilities are unknown, or None when
        they were read. One phrase: "config space truncated at 40 bytes",
        "capability list loops at 0x40", "only the first 64 bytes ..."."""
        if self.config is None:
            return self.config_problem or "config space not read"
        return self.config.capabilities_problem

    @property
    def capabilities_damaged(self) -> bool:
        """The capabilities are unknown because the bytes are damaged (a cut
        file, a looping or wild list), not because the reader lacked
        CAP_SYS_ADMIN or the file could not be opened: running as root
        would not help."""
        if self.config is None:
            return self.config_problem is not None and self.config_problem.startswith(
                "config space truncated")
        return self.config.capabilities_problem is not None and self.config.damaged

    @property
    def intx_pin(self) -> str | None | _Unknown:
        return self.config.intx_pin_letter if self.config else UNKNOWN

    @property
    def hardware_id(self) -> str | None:
        """The Windows PnP hardware ID, PCI\\VEN_xxxx&DEV_xxxx&SUBSYS_xxxxxxxx&REV_xx.

        vfio-pci passes IDs through unchanged, so the guest sees the host's.
        """
        if None in (self.vendor_id, self.device_id, self.subsystem_vendor_id,
                    self.subsystem_device_id, self.revision):
            return None
        return (f"PCI\\VEN_{self.vendor_id:04X}&DEV_{self.device_id:04X}"
                f"&SUBSYS_{self.subsystem_device_id:04X}{self.subsystem_vendor_id:04X}"
                f"&REV_{self.revision:02X}")

    def guest_pin(self, nointxmask: bool) -> int | None:
        """The INTx pin vfio-pci shows the guest: the host's Interrupt Pin,
        except 0 for SR-IOV VFs and the nointx IDs (vfio_pci_config.c,
        vfio_config_init). None when the config space is unreadable.

        0 is also a promise that vfio-pci never requests the host line: QEMU
        enables INTx only for a device with a pin (hw/vfio/pci.c
        vfio_intx_enable, QEMU 7.2). The nointx IDs lose their pin only while
        vfio_pci nointxmask is off: vfio_pci_core_enable sets vdev->nointx
        inside "if (likely(!nointxmask))" (Linux 6.1.176), so with
        nointxmask=1 they keep the hardware pin and use INTx like any device
        without masking (pci_2_3 stays false: an exclusive line)."""
        if self.sriov_vf:
            return 0
        if not nointxmask and (self.vendor_id, self.device_id) in _quirks.VFIO_NOINTX_IDS:
            return 0
        if self.config is None or not 0 <= self.config.interrupt_pin <= 4:
            return None  # unreadable, or a value no PCI function may hold
        return self.config.interrupt_pin

    def intx_masking(self, nointxmask: bool = False) -> IntxMasking:
        if nointxmask:
            return IntxMasking(False, "vfio_pci nointxmask=1 turns INTx masking off for every device")
        ids = (self.vendor_id, self.device_id)
        if ids in _quirks.BROKEN_INTX_MASKING:
            (q,) = [q for q in _quirks.quirks_for(*ids) if q.kind == _quirks.BROKEN_MASKING]
            return IntxMasking(False, f"the kernel lists this device with broken INTx masking "
                                      f"({q.source}, Linux {_quirks.KERNEL_VERSION})")
        if ids in _quirks.BROKEN_INTX_MASKING_MAYBE:
            # ConnectX-4 (Lx): mellanox_check_broken_intx_masking decides from
            # the firmware version in BAR 0 at boot, which sysfs does not show.
            (q,) = [q for q in _quirks.quirks_for(*ids) if q.kind == _quirks.BROKEN_MASKING]
            return IntxMasking(None, f"the kernel marks this device's INTx masking broken "
                                     f"{q.condition} ({q.source}, Linux {_quirks.KERNEL_VERSION})")
        cfg = self.config
        if cfg is None:
            return IntxMasking(None, "config space unreadable")
        if cfg.intx_disable:
            return IntxMasking(True, "Command register has INTx Disable set, so the bit is writable")
        if cfg.interrupt_status:
            return IntxMasking(True, "Status register implements Interrupt Status (PCI 2.3)")
        if cfg.pcie:
            # PCIe base spec 7.5.1.1: Interrupt Disable is required of every function.
            return IntxMasking(True, "PCI Express functions must implement INTx Disable")
        if cfg.pcie is UNKNOWN:
            # Without the capability list, PCIe (which must mask) and
            # conventional PCI (which may not) look the same.
            return IntxMasking(None, f"capabilities unreadable ({cfg.capabilities_problem}): "
                                     "cannot tell PCI Express from conventional PCI")
        if cfg.pm and cfg.pm.version == 1:
            # PCI PM 1.0 (1997) predates PCI 2.3 (2002), which defined the
            # bits, so such a design is likely older; but the kernel's probe
            # (pci_intx_mask_broken) reads bit 10 back, not the PM version,
            # and a later chip may keep a PM 1.0 capability: the 3Com
            # 10b7:6001 of pciutils' tree-fujitsu-p8010 dump has PM 1.0 and
            # PCI 2.3's Interrupt Status (tests/facts/test_pci_sysfs.py).
            return IntxMasking(None, "conventional PCI device with PCI PM 1.0, so likely older "
                                     "than PCI 2.3, which added INTx masking; no sign of masking "
                                     "in its config space, and the kernel's probe of Command bit "
                                     "10 at boot is not shown in sysfs")
        return IntxMasking(None, "conventional PCI device; no sign of PCI 2.3 INTx masking "
                                 "in its config space")


def read_pci_device(host: HostRoot, bdf: str, pci_ids: PciIds | None = None) -> PciDevice:
    """Read one device. Raises FactUnavailable only if the device does not exist."""
    bdf = normalize_bdf(bdf)
    base = f"sys/bus/pci/devices/{bdf}"
    if not host.exists(base):
        raise FactUnavailable(base, "no such PCI device on this host")
    unreadable: list[str] = []

    def value(name: str) -> str | None:
        try:
            return host.read_value(f"{base}/{name}")
        except FactUnavailable as exc:
            unreadable.append(f"{name}: {exc.reason}")
            return None

    def hex_value(name: str) -> int | None:
        text = value(name)
        try:
            return int(text, 16) if text else None
        except ValueError:
            unreadable.append(f"{name}: not a number: {text[:20]!r}")
            return None

    config: ConfigSpace | None = None
    config_problem: str | None = None
    try:
        raw = host.read_bytes(f"{base}/config", 4096)
    except FactUnavailable as exc:
        unreadable.append(f"config: {exc.reason}")
        config_problem = f"config space not readable ({exc.reason})"
    else:
        try:
            config = parse_config_space(raw)
        except ConfigSpaceError as exc:
            if len(raw) < UNPRIVILEGED_CONFIG_BYTES:
                # No sysfs read returns fewer than 64 bytes (pci_read_config
                # gives the first 64 to anyone): the file is damaged, and
                # root would read the same bytes.
                config_problem = f"config space truncated at {len(raw)} bytes"
                unreadable.append(f"{CAPABILITIES_UNREADABLE}{config_problem}")
            else:
                config_problem = str(exc)
                unreadable.append(f"config: {exc}")
    if config is None:
        pass
    elif config.unprivileged_read:
        # Said even when this device has no capability list: the reader
        # could not have told, and the other devices' lists are hidden too.
        unreadable.append(f"config: only {config.length} of 256 bytes readable "
                          "(not root, or no CAP_SYS_ADMIN); capabilities not checked")
    elif config.capabilities_problem is not None:
        unreadable.append(f"{CAPABILITIES_UNREADABLE}{config.capabilities_problem}")
    elif config.extended_problem is not None and config.damaged:
        unreadable.append(f"extended {CAPABILITIES_UNREADABLE}{config.extended_problem}")
    elif config.damaged:
        unreadable.append(f"config: truncated at {config.length} bytes")

    vendor = hex_value("vendor")
    device = hex_value("device")
    sub_vendor = hex_value("subsystem_vendor")
    sub_device = hex_value("subsystem_device")
    revision = hex_value("revision")
    class_code = hex_value("class")
    if config is not None:
        # Fall back on the config header for attributes a recording lacks.
        vendor = config.vendor_id if vendor is None else vendor
        device = config.device_id if device is None else device
        revision = config.revision if revision is None else revision
        class_code = config.class_code if class_code is None else class_code
        sub_vendor = config.subsystem_vendor_id if sub_vendor is None else sub_vendor
        sub_device = config.subsystem_device_id if sub_device is None else sub_device

    driver = None
    if host.exists(f"{base}/driver"):
        try:
            driver = host.read_link_name(f"{base}/driver")
        except FactUnavailable as exc:
            unreadable.append(f"driver: {exc.reason}")

    group = None
    members: tuple[str, ...] = ()
    try:
        group_name = host.read_link_name(f"{base}/iommu_group")
        group = int(group_name)
        members = tuple(host.list_dir(f"sys/kernel/iommu_groups/{group_name}/devices"))
    except FactUnavailable as exc:
        if exc.reason != "missing":  # missing: the host has no IOMMU, a fact, not a failure
            unreadable.append(f"iommu_group: {exc.reason}")
    except ValueError:
        unreadable.append("iommu_group: not a number")

    irq_text = value("irq")
    # isascii: "²".isdigit() is True, but int() refuses it
    irq = int(irq_text) if irq_text and irq_text.isascii() and irq_text.isdigit() else None

    msi_bus_text = value("msi_bus")
    msi_bus = None if msi_bus_text is None else msi_bus_text != "0"

    upstream: list[tuple[str, bool | None]] = []
    try:
        parts = host.resolve(base).split("/")
        for i in range(len(parts) - 2, -1, -1):  # nearest bridge first
            if BDF_RE.match(parts[i]):
                try:
                    bridge_msi = host.read_value("/".join(parts[: i + 1] + ["msi_bus"])) != "0"
                except FactUnavailable:
                    bridge_msi = None
                upstream.append((parts[i], bridge_msi))
    except FactUnavailable as exc:
        unreadable.append(f"device path: {exc.reason}")

    msi_irqs: tuple[int, ...] = ()
    if host.exists(f"{base}/msi_irqs"):
        try:
            msi_irqs = tuple(sorted(int(n) for n in host.list_dir(f"{base}/msi_irqs")
                                    if n.isascii() and n.isdigit()))
        except FactUnavailable as exc:
            unreadable.append(f"msi_irqs: {exc.reason}")

    sriov_vf = host.exists(f"{base}/physfn")
    handler_names = _handler_names(host, base) if driver and driver != "vfio-pci" else ()

    vendor_name = device_name = None
    if pci_ids is not None and vendor is not None and device is not None:
        vendor_name, device_name = pci_ids.lookup(vendor, device)

    return PciDevice(
        address=bdf, vendor_id=vendor, device_id=device,
        subsystem_vendor_id=sub_vendor, subsystem_device_id=sub_device,
        revision=revision, class_code=class_code, driver=driver,
        iommu_group=group, iommu_group_members=members, irq=irq,
        msi_bus=msi_bus, upstream=tuple(upstream), msi_irqs=msi_irqs,
        vendor_name=vendor_name, device_name=device_name, config=config,
        unreadable=tuple(unreadable), sriov_vf=sriov_vf, config_problem=config_problem,
        handler_names=handler_names,
    )


# A USB host controller's root hub, a child of its PCI device (usb_new_device
# names it "usb<busnum>", drivers/usb/core/hcd.c); an ALSA card's device
# under its PCI device's sound/ (sound/core/init.c, "card%i").
_ROOT_HUB = re.compile(r"usb\d+")
_SOUND_CARD = re.compile(r"card\d+")


def _handler_names(host: HostRoot, base: str) -> tuple[str, ...]:
    """What the device's host driver names its IRQ handlers besides itself:
    USB HCDs "<hcd>:usb<busnum>" (drivers/usb/core/hcd.c
    usb_hcd_request_irqs, and xhci-pci's INTx fallback), ALSA drivers
    "<driver>:card<N>" (snd_hda_intel), NIC drivers the interface name
    (r8169 rtl_open, e1000e, igb: netdev->name). Only what is there is
    listed, and a directory the tree lacks adds nothing."""
    names: list[str] = []
    for rel, keep in ((base, _ROOT_HUB.fullmatch), (f"{base}/net", None),
                      (f"{base}/sound", _SOUND_CARD.fullmatch)):
        try:
            names += host.list_dir(rel, keep=keep)
        except FactUnavailable:
            continue  # none (most devices have no net/ or sound/), or unreadable:
            # own_handler then falls back on the driver's name
    return tuple(names)
