"""VA2005 (two defined domains, one host INTx line, one device without
masking) on the pairs its examples left out:

- only one of the two devices lacks masking: a Mellanox ConnectX-3 Pro
  [15b3:1007] (pciutils' cap-aer-root dump, 03:00.0), which the kernel marks
  broken_intx_masking whatever its Command register says
  (drivers/pci/quirks.c mellanox_check_broken_intx_masking, Linux 6.1), in
  one domain and the Navi 23 HDMI audio (PCIe, which masks) in the other, on
  host IRQ 16. vfio-pci requests the ConnectX's line exclusively
  (drivers/vfio/pci/vfio_pci_intrs.c, Linux 6.1 vfio_intx_set_signal: no
  IRQF_SHARED without masking), so whichever domain starts second fails,
  and each domain must be told, whichever of the two lacks masking;
- a device that only likely lacks masking: the SB Live! (PCI PM 1.0, no
  sign of PCI 2.3 masking, but nothing proves its absence) with the audio
  on IRQ 16 is no VA2005: an error-level "cannot run at the same time"
  needs a device known to lack masking;
- one host device assigned in two domains: that is not a line conflict
  between two devices (libvirt refuses the second start because the device
  is in use, a different message), so VA2005 stays silent.

Through the engine as `advise` runs it: every defined domain is known
(Engine.set_defined_domains), each is analysed in turn.
"""

from __future__ import annotations

from pathlib import Path

from tests.rules.examples import QD4, SBLIVE, _gpu_audio, _hostdev, _ir_interrupts, _legacy_pci
from vfio_advisor.engine import Engine
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.testing.hosttree import Device, Host, build, load_config, load_dump
from vfio_advisor.testing.scenes import AUDIO, domain_xml, gpu_audio_hostdevs

LINE = 16
CX3 = "0000:02:00.0"  # moved from 03:00.0, behind the QD4's root port 00:03.0
CX3_DUMP = (Path(__file__).resolve().parents[1]
            / "data/corpus/pci-config/pciutils-tests/cap-aer-root.txt")


def _connectx3_pro() -> list[Device]:
    return [Device("0000:00:03.0", load_config(QD4, "00:03.0"), driver="pcieport",
                   iommu_group=29, irq=None),
            Device(CX3, load_dump(CX3_DUMP)["0000:03:00.0"], parent="0000:00:03.0",
                   iommu_group=30, irq=LINE)]


def engine_over(tmp_path, *xmls: str, blocker: str = "connectx") -> tuple[Engine, list]:
    other = _connectx3_pro() if blocker == "connectx" else _legacy_pci(sblive_irq=LINE)
    host = Host(devices=_gpu_audio(gpu_irq=45, audio_irq=LINE, gpu_msi=(45,)) + other,
                interrupts=_ir_interrupts({}))
    build(tmp_path, host)
    engine = Engine(str(tmp_path), pci_ids=PciIds(None))
    domains = [parse_domain_xml(x) for x in xmls]
    engine.set_defined_domains(domains)
    return engine, domains


def va2005(engine: Engine, domain) -> list:
    facts, findings = engine.analyse(domain)
    return [f for f in findings if f.rule_id == "VA2005"]


OLDBOX = domain_xml("oldbox", [_hostdev(SBLIVE, (0x00, 0x05, 0))], os="win7", machine="pc-i440fx-6.2")
NFV = domain_xml("nfv", [_hostdev(CX3, (0x01, 0, 0))], os="linux")
WIN11 = domain_xml("win11", gpu_audio_hostdevs())


def test_the_pair_where_only_one_device_lacks_masking_is_said_in_both_domains(tmp_path):
    engine, (nfv, win11) = engine_over(tmp_path, NFV, WIN11)
    cx3 = engine.gather(nfv).device(CX3)
    audio = engine.gather(win11).device(AUDIO)
    nointxmask = engine.host().kernel.nointxmask
    # The premise, from the real config dumps: one masks, the other cannot.
    assert (cx3.device.vendor_id, cx3.device.device_id) == (0x15B3, 0x1007)
    assert cx3.intx_masking(nointxmask).supported is False
    assert audio.intx_masking(nointxmask).supported is True
    assert cx3.host_line(nointxmask)[0] == audio.host_line(nointxmask)[0] == LINE

    (own,) = va2005(engine, nfv)  # its own device lacks masking
    assert own.subject == CX3
    assert "domain win11 assigns 0000:05:00.1" in own.message
    assert dict(own.evidence)["conflicting domains"] == "win11"

    (theirs,) = va2005(engine, win11)  # the other domain's device lacks it
    assert theirs.subject == AUDIO
    assert f"domain nfv assigns {CX3}" in theirs.message
    assert dict(theirs.evidence)["conflicting domains"] == "nfv"
    # the blocker named is the ConnectX's
    assert "mellanox_check_broken_intx_masking" in dict(theirs.evidence)["intx masking"]
    # Both shut off: only sysfs irq says 16, so the line is hedged.
    assert "one host INTx line (sysfs irq 16;" in own.message


def test_a_device_that_only_likely_lacks_masking_is_no_conflict(tmp_path):
    engine, (oldbox, win11) = engine_over(tmp_path, OLDBOX, WIN11, blocker="sblive")
    sblive = engine.gather(oldbox).device(SBLIVE)
    assert sblive.intx_masking(engine.host().kernel.nointxmask).supported is None
    assert va2005(engine, oldbox) == [] and va2005(engine, win11) == []


def test_one_device_assigned_to_two_domains_is_no_line_conflict(tmp_path):
    other = NFV.replace("<name>nfv</name>", "<name>nfv-copy</name>")
    engine, (nfv, copy) = engine_over(tmp_path, NFV, other)
    assert va2005(engine, nfv) == []
    assert va2005(engine, copy) == []
    # The control: a second domain with another device on the line is one.
    engine, (nfv, _) = engine_over(tmp_path / "control", NFV, WIN11)
    assert [f.subject for f in va2005(engine, nfv)] == [CX3]
