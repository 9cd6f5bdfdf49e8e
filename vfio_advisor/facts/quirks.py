"""The kernel's INTx quirk lists, as data, in one place.

Two different lists, with different consequences for a VFIO host:

* drivers/pci/quirks.c, quirk_broken_intx_masking (and the Mellanox check):
  the kernel sets pdev->broken_intx_masking, so pci_intx_mask_supported()
  says no and vfio-pci treats the device as non-PCI-2.3. Its INTx still
  reaches the guest, but vfio-pci must request the host line exclusively
  (no IRQF_SHARED), so the device cannot share its line with anyone.

* drivers/vfio/pci/vfio_pci_core.c, vfio_pci_nointx: vfio-pci sets
  vdev->nointx and clears INTx at the device, so the guest sees Interrupt
  Pin 0 and the device has no INTx at all in the guest: MSI or nothing.
  vfio_pci_core_enable applies this only while the nointxmask module
  parameter is off ("if (likely(!nointxmask))").

Both lists are transcribed from Linux 6.1.176 (Debian 12's linux-source-6.1
6.1.176-1); tests/data/kernel/quirk-lists.json holds the IDs as extracted
from that tarball and tests/facts/test_quirks.py checks this table against it.
"""

from __future__ import annotations

from typing import NamedTuple

KERNEL_VERSION = "6.1.176"

BROKEN_MASKING = "broken_intx_masking"
VFIO_NOINTX = "vfio_pci_nointx"

_QUIRKS_C = "drivers/pci/quirks.c"
_VFIO_CORE = "drivers/vfio/pci/vfio_pci_core.c"

MEANING = {
    BROKEN_MASKING: ("the kernel marks its INTx masking broken: vfio-pci cannot mask it at "
                     "the device and needs the host line to itself (no sharing)"),
    VFIO_NOINTX: ("vfio-pci hides INTx from the guest (Interrupt Pin reads 0): the guest "
                  "driver must use MSI/MSI-X"),
}


class IntxQuirk(NamedTuple):
    vendor: int
    device: int
    kind: str  # BROKEN_MASKING | VFIO_NOINTX
    source: str  # kernel file and function
    name: str  # what the kernel's comment or ID name says
    condition: str | None = None  # set where the kernel decides at probe time

    @property
    def meaning(self) -> str:
        return MEANING[self.kind]


def _broken(vendor: int, device: int, name: str, condition: str | None = None,
            function: str = "quirk_broken_intx_masking") -> IntxQuirk:
    return IntxQuirk(vendor, device, BROKEN_MASKING, f"{_QUIRKS_C} {function}", name, condition)


# i40e family (XL710/X710/XXV710, X722): drivers/pci/quirks.c says "DisINTx can
# be set but the interrupt status bit is non-functional".
_I40E = (0x1572, 0x1574, 0x1580, 0x1581, 0x1583, 0x1584, 0x1585, 0x1586,
         0x1587, 0x1588, 0x1589, 0x158a, 0x158b, 0x37d0, 0x37d1, 0x37d2)

# mellanox_broken_intx_devs[] (Hermon, ConnectX, ConnectX-2/3): always broken.
_MELLANOX = ((0x6340, "HERMON_SDR"), (0x634a, "HERMON_DDR"), (0x6354, "HERMON_QDR"),
             (0x6732, "HERMON_DDR_GEN2"), (0x673c, "HERMON_QDR_GEN2"), (0x6368, "HERMON_EN"),
             (0x6750, "HERMON_EN_GEN2"), (0x6372, "CONNECTX_EN"), (0x675a, "CONNECTX_EN_T_GEN2"),
             (0x6764, "CONNECTX_EN_GEN2"), (0x6746, "CONNECTX_EN_5_GEN2"), (0x676e, "CONNECTX2"),
             (0x1003, "CONNECTX3"), (0x1007, "CONNECTX3_PRO"))

QUIRKS: tuple[IntxQuirk, ...] = (
    _broken(0x1425, 0x0030, "Chelsio (PCI_VENDOR_ID_CHELSIO, 0x0030)"),
    _broken(0x1814, 0x0601, "Ralink RT2800 802.11n PCI"),
    _broken(0x1b7c, 0x0004, "Ceton InfiniTV4"),
    _broken(0x1102, 0x000b, "Creative Sound Blaster X-Fi 20K2 (PCI_DEVICE_ID_CREATIVE_20K2)"),
    _broken(0x10ec, 0x8169, "Realtek RTL8169/8110SC PCI Gigabit"),
    *(_broken(0x8086, d, "Intel i40e (XL710/X710/X722)") for d in _I40E),
    *(_broken(0x15b3, d, f"Mellanox {n}", function="mellanox_check_broken_intx_masking")
      for d, n in _MELLANOX),
    *(_broken(0x15b3, d, f"Mellanox {n}",
              condition="only with firmware minor version < 14 or > 99 (read from BAR 0 at boot)",
              function="mellanox_check_broken_intx_masking")
      for d, n in ((0x1013, "CONNECTX4"), (0x1015, "CONNECTX4_LX"))),
    *(IntxQuirk(0x8086, d, VFIO_NOINTX, f"{_VFIO_CORE} vfio_pci_nointx",
                "Intel i40e (XL710/X710/XXV710)") for d in _I40E),
    IntxQuirk(0x8086, 0x1563, VFIO_NOINTX, f"{_VFIO_CORE} vfio_pci_nointx", "Intel X550"),
)

# Lookups for the rules. Devices whose quirk depends on firmware are not in
# BROKEN_INTX_MASKING: the rule cannot know, see quirks_for().
BROKEN_INTX_MASKING: frozenset[tuple[int, int]] = frozenset(
    (q.vendor, q.device) for q in QUIRKS if q.kind == BROKEN_MASKING and q.condition is None)
BROKEN_INTX_MASKING_MAYBE: frozenset[tuple[int, int]] = frozenset(
    (q.vendor, q.device) for q in QUIRKS if q.kind == BROKEN_MASKING and q.condition is not None)
VFIO_NOINTX_IDS: frozenset[tuple[int, int]] = frozenset(
    (q.vendor, q.device) for q in QUIRKS if q.kind == VFIO_NOINTX)


def quirks_for(vendor: int, device: int) -> tuple[IntxQuirk, ...]:
    """Every INTx quirk the kernel applies to vendor:device (possibly both kinds)."""
    return tuple(q for q in QUIRKS if q.vendor == vendor and q.device == device)
