"""Which /proc/interrupts actions on an assigned device's line are its own
(model.own_handler): its host driver's, which libvirt unbinds before QEMU
opens the device (managed='yes'), are not sharers.

Host drivers name their handlers after their USB bus ("ohci_hcd:usb7",
drivers/usb/core/hcd.c usb_hcd_request_irqs), their network interface
("enp8s1", r8169 rtl_open) or their ALSA card ("snd_hda_intel:card1"), not
always after the driver; the device's sysfs children (usbN, net/, sound/)
say which are its own. The NEC OHCI of a real dump (examples.NEC), on its
host driver at IRQ 17."""

from __future__ import annotations

import pytest

from tests.rules import examples as ex
from vfio_advisor.facts.model import own_handler
from vfio_advisor.rules import RULES
from vfio_advisor.testing.hosttree import Host


def _nec_on_host_driver(tmp_path, driver: str, handlers: list[str], children: dict[str, str]):
    devices = ex._legacy_pci(nec_irq=17)
    devices[-1].driver = driver
    devices[-1].attrs = dict(children)
    row = ex._ioapic_row(17, [5000, 0, 0, 0, 0, 0, 0, 0], handlers)
    host = Host(devices=devices, interrupts=ex._ir_interrupts({17: row}, gpu=False))
    facts = ex.analyse(tmp_path, host, ex.domain_xml("usbvm", [ex._hostdev(ex.NEC, (0x00, 0x10, 0))],
                                                     os="linux"))
    sharing = [f.rule_id for r in RULES if r.check for f in r.check(facts) if f.rule_id.startswith("VA2")]
    return facts.devices[0], sharing


@pytest.mark.parametrize("driver, handler, children", [
    ("ohci-pci", "ohci_hcd:usb7", {"usb7/busnum": "7"}),
    ("ohci-pci", "ohci_hcd:usb7", {}),  # a recording without the root hub: the HCD's name
    ("ehci-pci", "ehci_hcd:usb1", {"usb1/busnum": "1"}),
    ("r8169", "enp8s1", {"net/enp8s1/ifindex": "3"}),
], ids=["ohci-root-hub", "ohci-by-hcd-name", "ehci-root-hub", "nic-interface"])
def test_the_host_drivers_own_handler_is_no_sharer(tmp_path, driver, handler, children):
    dev, sharing = _nec_on_host_driver(tmp_path, driver, [handler], children)
    assert dev.interrupts.shared_with == ()
    assert sharing == []  # no VA2002/VA2003 "needs the line alone": libvirt frees it


def test_another_controllers_handler_is_a_sharer(tmp_path):
    """A second OHCI on the line: its "ohci_hcd:usb8" is not this one's,
    whose root hub is usb7, though both run under ohci-pci."""
    dev, sharing = _nec_on_host_driver(tmp_path, "ohci-pci", ["ohci_hcd:usb7", "ohci_hcd:usb8"],
                                       {"usb7/busnum": "7"})
    assert dev.device.handler_names == ("usb7",)
    assert dev.interrupts.shared_with == ("ohci_hcd:usb8",)
    assert sharing == ["VA2003"]  # the NEC's INTx masking is unknown: the line may be needed alone


def test_a_nic_named_after_its_interface_is_known_only_by_it(tmp_path):
    """Without net/ in the tree nothing says "enp8s1" is the NIC's: a sharer."""
    dev, _ = _nec_on_host_driver(tmp_path, "r8169", ["enp8s1"], {})
    assert dev.interrupts.shared_with == ("enp8s1",)


def test_another_cards_alsa_handler_is_not_the_devices_own():
    """Two cards under snd_hda_intel on one line: the assigned HDMI audio is
    card1, so card0's handler is a sharer; without the card known, the
    driver's name is all there is, and both look its own."""
    from vfio_advisor.facts.pci import PciDevice

    fields = dict.fromkeys(PciDevice._fields)
    audio = PciDevice(**{**fields, "address": "0000:05:00.1", "driver": "snd_hda_intel",
                         "iommu_group_members": (), "upstream": (), "msi_irqs": (),
                         "handler_names": ("card1",)})
    assert own_handler("snd_hda_intel:card1", audio.address, audio)
    assert not own_handler("snd_hda_intel:card0", audio.address, audio)
    unknown = audio._replace(handler_names=())
    assert own_handler("snd_hda_intel:card0", audio.address, unknown)
    assert own_handler("EMU10K1", audio.address, audio._replace(driver="snd_emu10k1"))
    assert not own_handler("ehci_hcd:usb1", audio.address, audio)
