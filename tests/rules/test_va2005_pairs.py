"""VA2005 (two defined domains, one host INTx line, one device without
masking) on the pairs its examples left out:

- only one of the two devices lacks masking: the SB Live! (PCI PM 1.0, no
  PCI 2.3 INTx masking) in one domain and the Navi 23 HDMI audio (PCIe, which
  masks) in the other, on host IRQ 16. vfio-pci requests the SB Live!'s line
  exclusively (drivers/vfio/pci/vfio_pci_intrs.c, Linux 6.1 vfio_intx_set_signal: no
  IRQF_SHARED without masking), so whichever domain starts second fails,
  and each domain must be told, whichever of the two lacks masking;
- one host device assigned in two domains: that is not a line conflict
  between two devices (libvirt refuses the second start because the device
  is in use, a different message), so VA2005 stays silent.

Through the engine as `advise` runs it: every defined domain is known
(Engine.set_defined_domains), each is analysed in turn.
"""

from __future__ import annotations

from tests.rules.examples import SBLIVE, _gpu_audio, _hostdev, _ir_interrupts, _legacy_pci
from vfio_advisor.engine import Engine
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.testing.hosttree import Host, build
from vfio_advisor.testing.scenes import AUDIO, domain_xml, gpu_audio_hostdevs

LINE = 16


def engine_over(tmp_path, *xmls: str) -> tuple[Engine, list]:
    host = Host(devices=_gpu_audio(gpu_irq=45, audio_irq=LINE, gpu_msi=(45,)) + _legacy_pci(sblive_irq=LINE),
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
WIN11 = domain_xml("win11", gpu_audio_hostdevs())


def test_the_pair_where_only_one_device_lacks_masking_is_said_in_both_domains(tmp_path):
    engine, (oldbox, win11) = engine_over(tmp_path, OLDBOX, WIN11)
    sblive = engine.gather(oldbox).device(SBLIVE)
    audio = engine.gather(win11).device(AUDIO)
    nointxmask = engine.host().kernel.nointxmask
    # The premise, from the real config dumps: one masks, the other cannot.
    assert sblive.intx_masking(nointxmask).supported is False
    assert audio.intx_masking(nointxmask).supported is True
    assert sblive.host_line(nointxmask)[0] == audio.host_line(nointxmask)[0] == LINE

    (own,) = va2005(engine, oldbox)  # its own device lacks masking
    assert own.subject == SBLIVE
    assert "domain win11 assigns 0000:05:00.1" in own.message
    assert dict(own.evidence)["conflicting domains"] == "win11"

    (theirs,) = va2005(engine, win11)  # the other domain's device lacks it
    assert theirs.subject == AUDIO
    assert f"domain oldbox assigns {SBLIVE}" in theirs.message
    assert dict(theirs.evidence)["conflicting domains"] == "oldbox"
    assert "PCI PM 1.0" in dict(theirs.evidence)["intx masking"]  # the blocker named is the SB Live!'s


def test_one_device_assigned_to_two_domains_is_no_line_conflict(tmp_path):
    other = OLDBOX.replace("<name>oldbox</name>", "<name>oldbox-copy</name>")
    engine, (oldbox, copy) = engine_over(tmp_path, OLDBOX, other)
    assert va2005(engine, oldbox) == []
    assert va2005(engine, copy) == []
    # The control: a second domain with another device on the line is one.
    engine, (oldbox, _) = engine_over(tmp_path / "control", OLDBOX, WIN11)
    assert [f.subject for f in va2005(engine, oldbox)] == [SBLIVE]
