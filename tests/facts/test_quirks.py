"""One INTx quirk table, checked against the kernel's lists as extracted data.

tests/data/kernel/quirk-lists.json holds the IDs read from Debian 12's
linux-source-6.1 6.1.176-1 (drivers/pci/quirks.c, drivers/vfio/pci/
vfio_pci_core.c). The table in vfio_advisor/facts/quirks.py must equal it,
and the two older hand-copied tables must agree with it where they overlap.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vfio_advisor.facts import quirks
from vfio_advisor.facts.quirks import (
    BROKEN_INTX_MASKING,
    BROKEN_INTX_MASKING_MAYBE,
    BROKEN_MASKING,
    KERNEL_VERSION,
    VFIO_NOINTX,
    VFIO_NOINTX_IDS,
    quirks_for,
)

LISTS = json.loads((Path(__file__).resolve().parent.parent / "data" / "kernel"
                    / "quirk-lists.json").read_text())


def _pairs(entries):
    return {(int(e["vendor"], 16), int(e["device"], 16)) for e in entries}


def test_table_names_the_extracted_kernel_version():
    assert LISTS["source"]["kernel"] == KERNEL_VERSION


def test_broken_masking_equals_the_kernel_list():
    kernel = _pairs(LISTS["broken_intx_masking"]["entries"]) | _pairs(
        LISTS["broken_intx_masking_mellanox"]["entries"])
    assert BROKEN_INTX_MASKING == kernel
    assert BROKEN_INTX_MASKING_MAYBE == _pairs(LISTS["broken_intx_masking_mellanox_firmware"]["entries"])


def test_vfio_nointx_equals_the_kernel_list():
    nointx = LISTS["vfio_pci_nointx"]
    vendor = int(nointx["vendor"], 16)
    assert VFIO_NOINTX_IDS == {(vendor, int(d, 16)) for d in nointx["devices"]}


def test_every_entry_names_its_source_file():
    files = {BROKEN_MASKING: LISTS["broken_intx_masking"]["file"],
             VFIO_NOINTX: LISTS["vfio_pci_nointx"]["file"]}
    for q in quirks.QUIRKS:
        assert q.source.startswith(files[q.kind] + " "), q
        assert q.meaning


def test_0x37d3_is_in_neither_kernel_list():
    # X722 10GbE SFP+ (i40e I40E_DEV_ID_SFP_X722). vfio_pci_nointx ends its
    # range at 0x37d2 ("case 0x37d0 ... 0x37d2") and quirks.c stops at 0x37d2.
    assert quirks_for(0x8086, 0x37d3) == ()
    assert "0x37d3" not in LISTS["vfio_pci_nointx"]["devices"]
    assert (0x8086, 0x37d3) not in _pairs(LISTS["broken_intx_masking"]["entries"])


def test_x550_is_nointx_but_not_broken():
    kinds = {q.kind for q in quirks_for(0x8086, 0x1563)}
    assert kinds == {VFIO_NOINTX}
    assert {q.kind for q in quirks_for(0x8086, 0x1572)} == {VFIO_NOINTX, BROKEN_MASKING}


def test_the_rules_read_the_one_table():
    """pci.py and guest_intx.py use quirks.py's table itself, not copies."""
    from vfio_advisor.facts import guest_intx, pci

    assert pci.BROKEN_INTX_MASKING is BROKEN_INTX_MASKING
    assert guest_intx.VFIO_NOINTX is VFIO_NOINTX_IDS
    assert (0x8086, 0x37d3) not in guest_intx.VFIO_NOINTX


def _device(vendor: int, device: int):
    from vfio_advisor.facts.pci import PciDevice
    return PciDevice._make([None] * len(PciDevice._fields))._replace(
        vendor_id=vendor, device_id=device, sriov_vf=False)


@pytest.mark.parametrize("vendor,device,supported,word", [
    (0x10ec, 0x8169, False, "quirk_broken_intx_masking"),  # RTL8169: always broken
    (0x15b3, 0x1003, False, "mellanox_check_broken_intx_masking"),  # ConnectX-3: always
    (0x15b3, 0x1013, None, "firmware"),  # ConnectX-4: depends on firmware -> unknown
    (0x1425, 0x0030, False, "quirk_broken_intx_masking"),  # Chelsio, missing from the old copy
])
def test_device_masking_comes_from_the_table(vendor, device, supported, word):
    masking = _device(vendor, device).intx_masking()
    assert masking.supported is supported
    assert word in masking.evidence and "6.1.176" in masking.evidence


@pytest.mark.parametrize("vendor,device", [(0x8086, 0x1563), (0x8086, 0x1572)])
def test_guest_pin_of_nointx_ids(vendor, device):
    assert _device(vendor, device).guest_pin(nointxmask=False) == 0


def _real(dump: str, bdf: str, **changes):
    """A PciDevice over a real config dump (tests/data/hosts/configs)."""
    from vfio_advisor.facts.pci_config import parse_config_space
    from vfio_advisor.testing.hosttree import load_config

    config = parse_config_space(load_config(dump, bdf))
    return _device(config.vendor_id, config.device_id)._replace(config=config, **changes)


X710 = ("x710-sfp-plus_lspci-xxx.txt", "04:00.0")  # 8086:1572, Interrupt Pin INTA


def test_nointxmask_gives_a_nointx_device_its_hardware_pin_back():
    # vfio_pci_core_enable sets vdev->nointx only "if (likely(!nointxmask))".
    x710 = _real(*X710)
    assert x710.config.interrupt_pin == 1
    assert x710.guest_pin(nointxmask=False) == 0
    assert x710.guest_pin(nointxmask=True) == 1


def test_an_sriov_vf_has_no_pin_whatever_nointxmask_says():
    vf = _real(*X710, sriov_vf=True)
    assert vf.guest_pin(nointxmask=False) == vf.guest_pin(nointxmask=True) == 0


def test_a_device_outside_the_nointx_list_keeps_its_pin_either_way():
    nec = _real("0005-90-01.1.lspci-x.txt", "0005:90:01.1")  # 1033:0035, INTB
    assert nec.guest_pin(nointxmask=False) == nec.guest_pin(nointxmask=True) == 2
