"""Regressions found in review of the engine and rules (each once reproduced)."""

import dataclasses

from tests.hosttree import Host
from tests.rules.examples import (
    AUDIO, EHCI, SBLIVE, _audio_on_shared_intx_host, _hostdev, _ioapic_row, _ir_interrupts,
    _legacy_pci, analyse, domain_xml, gpu_audio_hostdevs,
)
from vfio_advisor.engine import DeviceCache, gather_domain, run_rules
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.interrupts import parse_interrupts
from vfio_advisor.facts.pciids import PciIds


def _rules(facts):
    return [f.rule_id for f in run_rules(facts)]


def test_shared_line_count_is_not_claimed_as_the_devices(tmp_path):
    """/proc/interrupts counts per line: with EHCI on the same line, VA1001
    must not present the line's count as the device's own."""
    facts = analyse(tmp_path, _audio_on_shared_intx_host(),
                    domain_xml("win11", gpu_audio_hostdevs(), os="windows"))
    (f,) = [f for f in run_rules(facts) if f.rule_id == "VA1001"]
    assert EHCI in f.message and "may be theirs" in f.message


def test_devices_own_host_driver_does_not_hold_the_line(tmp_path):
    """The SB Live! still bound to snd_emu10k1 (VM off): its own handler is on
    IRQ 19; managed='yes' unbinds the driver first, so the line is free."""
    devices = _legacy_pci(sblive_irq=19)
    devices[-1] = dataclasses.replace(devices[-1], driver="snd_emu10k1")
    host = Host(devices=devices, interrupts=_ir_interrupts(
        {19: _ioapic_row(19, [7, 0, 0, 0, 0, 0, 0, 0], ["snd_emu10k1"])}, gpu=False))
    facts = analyse(tmp_path, host, domain_xml("oldbox", [_hostdev(SBLIVE, (0, 5, 0))],
                                               os="win7", machine="pc-i440fx-6.2"))
    (dev,) = facts.devices
    assert dev.interrupts.intx_irq == 19
    assert dev.interrupts.shared_with == ()
    assert "VA2002" not in _rules(facts)


def test_nomsi_host_gets_va3001_not_the_guest_remedy(tmp_path):
    from tests.rules.examples import EXAMPLES

    ids = _rules(EXAMPLES["lab-nomsi"](tmp_path))
    assert "VA3001" in ids
    assert "VA1001" not in ids


def test_sample_without_duration_does_not_crash(tmp_path):
    facts = analyse(tmp_path, _audio_on_shared_intx_host(),
                    domain_xml("win11", gpu_audio_hostdevs(), os="windows"))
    text = (tmp_path / "proc/interrupts").read_text()
    assert "301514" in text
    later = parse_interrupts(text.replace("301514", "301600"))
    host = facts.host._replace(later=later, sample_seconds=None)
    hr = HostRoot(tmp_path)
    facts = gather_domain(facts.domain, host, DeviceCache(hr, PciIds(None)))
    audio = next(d for d in facts.devices if d.address == AUDIO)
    assert audio.interrupts.intx_delta == 86
    ids = _rules(facts)
    assert "VA9001" not in ids and "VA1001" in ids


def test_guest_line_shared_names_sharer_and_a_free_address(tmp_path):
    from tests.rules.examples import EXAMPLES
    from vfio_advisor.facts.guest_intx import q35_pirq

    facts = EXAMPLES["guest-line-shared-q35"](tmp_path)
    (f,) = [f for f in run_rules(facts) if f.rule_id == "VA5001"]
    assert f.subject == AUDIO
    assert "GSI 23" in f.message and "0000:00:03.0 (e1000)" in f.message
    # the suggested slot really gives pin B a GSI nobody else uses
    import re
    slot = int(re.search(r"slot='0x([0-9a-f]{2})'", f.remedy).group(1), 16)
    gsi = 16 + q35_pirq(slot, 1)
    used = {fn.irq for fn in facts.guest_intx.functions if fn.routed and fn.host_address != AUDIO}
    assert gsi not in used
    assert f"GSI {gsi} alone" in f.remedy


def test_domain_metadata_ignores_a_rule(tmp_path):
    from tests.rules.examples import _audio_on_shared_intx_host

    ignore = ("<metadata><vfio-advisor:advisor xmlns:vfio-advisor='urn:x-vfio-advisor:domain:1'>"
              "<vfio-advisor:ignore rule='VA1001'/><vfio-advisor:ignore rule='host-intx-line-shared'/>"
              "</vfio-advisor:advisor>")
    xml = domain_xml("win11", gpu_audio_hostdevs(), os="windows").replace("<metadata>", ignore, 1)
    facts = analyse(tmp_path, _audio_on_shared_intx_host(), xml)
    assert facts.domain.ignored_rules == {"VA1001", "host-intx-line-shared"}
    ids = _rules(facts)
    plain = _rules(analyse(tmp_path / "plain", _audio_on_shared_intx_host(),
                           domain_xml("win11", gpu_audio_hostdevs(), os="windows")))
    assert {"VA1001", "VA1002", "VA2001"} <= set(plain)
    # VA1002 builds on VA1001 (Rule.builds_on): the <metadata> ignore of VA1001 silences it too
    assert sorted(ids) == sorted(r for r in plain if r not in ("VA1001", "VA1002", "VA2001"))


def test_guest_intx_map_gives_the_x710_its_pin_only_under_nointxmask(tmp_path):
    """The guest's INTx routing (VA5xxx, fix) sees the pin vfio-pci reports:
    none for an X710 while the nointx quirk applies, INTA under
    nointxmask=1 (vfio_pci_core_enable skips the quirk then)."""
    from tests.rules.examples import EXAMPLES, X710
    from vfio_advisor.fix.planner import Analysis

    for name, pin in (("x710-shared-line", 0), ("x710-shared-line-nointxmask", 1)):
        facts = EXAMPLES[name](tmp_path / name)
        hostdevs = {f.host_address: f.pin for f in facts.guest_intx.functions
                    if f.kind == "hostdev"}
        assert hostdevs == {X710[0]: pin, X710[1]: pin}, name
        # fix plans its guest layouts from the same pins
        assert Analysis(facts.domain, facts, ()).host_pins() == hostdevs, name
