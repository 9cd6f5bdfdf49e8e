"""Does a host tree agree with itself? Cross-checks between a device's config
space, its sysfs msi_irqs/ and the vfio handlers in /proc/interrupts.

A live host always agrees: the kernel writes all three from one state. A
recorded or hand-assembled tree (the demo, test data, a snapshot copied
together from several moments) may not, and then the advice drawn from it
mixes two moments. Each check names the kernel behaviour it relies on
(Linux 6.1):

* MSI/MSI-X Enable: vfio-pci sets them only while it has the vectors
  requested (drivers/vfio/pci/vfio_pci_intrs.c vfio_msi_enable ->
  pci_alloc_irq_vectors; vfio_msi_disable frees them and the PCI core
  clears the bit, drivers/pci/msi/msi.c pci_msi_shutdown). So for a device
  on vfio-pci, "MSI Enable set" and "a vfio-msi handler" go together, and
  likewise MSI-X Enable and vfio-msix.
* INTx and MSI exclude each other: vfio-pci requests INTx only with MSI and
  MSI-X off (vfio_pci_set_irqs_ioctl refuses a second mode, -EINVAL), and
  enabling MSI sets INTx Disable (msi.c pci_intx_for_msi).
* msi_irqs/: the PCI core lists a vector there for as long as MSI or MSI-X is
  enabled, one file per vector saying "msi" or "msix"
  (drivers/pci/msi/msi.c msi_sysfs_populate_desc), whoever the driver is.
"""

from __future__ import annotations

from vfio_advisor.errors import FactUnavailable
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import Interrupts, parse_interrupts
from vfio_advisor.facts.pci import PciDevice, read_pci_device
from vfio_advisor.facts.pci_config import UNKNOWN

DEVICES = "sys/bus/pci/devices"


def device_inconsistencies(dev: PciDevice, table: Interrupts | None,
                           msi_irq_modes: dict[int, str] | None = None) -> list[str]:
    """What in `dev`'s facts contradicts the rest, one line each.
    `msi_irq_modes`: msi_irqs/<n> -> its content ("msi"/"msix"), when read."""
    out: list[str] = []
    cfg = dev.config
    if cfg is None or cfg.capabilities is UNKNOWN:
        return out  # nothing to compare; the coverage rules name what is missing
    bdf = dev.address
    msi_on = bool(cfg.msi) and cfg.msi.enabled
    msix_on = bool(cfg.msix) and cfg.msix.enabled
    if table is not None and dev.driver == "vfio-pci":
        modes = {v.mode for _, v in table.vfio_lines(bdf)}
        if msi_on and "msi" not in modes:
            out.append(f"{bdf}: MSI Enable is set in config space, but /proc/interrupts has no "
                       f"vfio-msi vector of it (vfio-pci enables MSI only with its vectors "
                       f"requested){_now(modes)}")
        if "msi" in modes and not msi_on:
            out.append(f"{bdf}: /proc/interrupts has vfio-msi vectors of it, but MSI Enable is "
                       "clear in config space")
        if msix_on and "msix" not in modes:
            out.append(f"{bdf}: MSI-X Enable is set in config space, but /proc/interrupts has no "
                       f"vfio-msix vector of it{_now(modes)}")
        if "msix" in modes and not msix_on:
            out.append(f"{bdf}: /proc/interrupts has vfio-msix vectors of it, but MSI-X Enable "
                       "is clear in config space")
        if "intx" in modes and (msi_on or msix_on):
            out.append(f"{bdf}: vfio-intx({bdf}) is registered while "
                       f"{'MSI' if msi_on else 'MSI-X'} is enabled in config space; vfio-pci "
                       "uses one interrupt mode at a time")
    if dev.msi_irqs and not (msi_on or msix_on):
        out.append(f"{bdf}: msi_irqs/ lists {len(dev.msi_irqs)} vector(s), but neither MSI nor "
                   "MSI-X is enabled in config space")
    if (msi_on or msix_on) and not dev.msi_irqs and msi_irq_modes is not None:
        out.append(f"{bdf}: {'MSI' if msi_on else 'MSI-X'} is enabled in config space, but "
                   "msi_irqs/ is empty")
    for irq, mode in sorted((msi_irq_modes or {}).items()):
        if mode == "msi" and not msi_on or mode == "msix" and not msix_on:
            out.append(f"{bdf}: msi_irqs/{irq} says {mode}, but {mode.upper().replace('X', '-X')} "
                       "is not enabled in config space")
    return out


def _now(modes: set[str]) -> str:
    return f"; it is on {', '.join(sorted(modes))} there" if modes else ""


def tree_inconsistencies(host: HostRoot) -> list[str]:
    """device_inconsistencies of every PCI device of the tree."""
    try:
        table = parse_interrupts(host.read_text("proc/interrupts"))
    except FactUnavailable:
        table = None
    try:
        bdfs = sorted(host.list_dir(DEVICES))
    except FactUnavailable:
        return []
    out: list[str] = []
    for bdf in bdfs:
        try:
            dev = read_pci_device(host, bdf)
        except (FactUnavailable, ValueError):
            continue
        modes: dict[int, str] | None = None
        if host.exists(f"{DEVICES}/{bdf}/msi_irqs"):
            modes = {}
            for irq in dev.msi_irqs:
                try:
                    modes[irq] = host.read_value(f"{DEVICES}/{bdf}/msi_irqs/{irq}")
                except FactUnavailable:
                    pass
        out.extend(device_inconsistencies(dev, table, modes))
    return out
