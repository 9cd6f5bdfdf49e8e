"""Odd sysfs and config values read as unknown, never a crash.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"), **kw)


def test_interrupt_pin_out_of_range_is_unknown_not_a_crash(tmp_path):
    from tests.hosttree import Host, build
    from tests.rules.examples import AUDIO, _gpu_audio, _ir_interrupts, domain_xml, gpu_audio_hostdevs

    devices = _gpu_audio(gpu_irq=45, audio_irq=28, gpu_msi=(45,))
    audio = next(d for d in devices if d.bdf == AUDIO)
    cfg = bytearray(audio.config)
    cfg[0x3D] = 5
    audio.config = bytes(cfg)
    build(tmp_path / "h", Host(devices=devices, interrupts=_ir_interrupts({})))
    xml = tmp_path / "d.xml"
    xml.write_text(domain_xml("win11", gpu_audio_hostdevs()))
    out = cli("guest-irqs", "--xml", str(xml), "--host-root", str(tmp_path / "h"), "--format", "json")
    assert out.returncode == 0, out.stderr
    fn = next(f for f in json.loads(out.stdout)["functions"] if f["host_address"] == AUDIO)
    assert fn["pin"] is None and any("unknown" in n for n in fn["notes"])


def test_non_ascii_digits_in_sysfs_do_not_crash(tmp_path):
    from vfio_advisor.facts.host import HostRoot
    from vfio_advisor.facts.pci import read_pci_device

    dev = tmp_path / "sys/bus/pci/devices/0000:01:00.0"
    (dev / "msi_irqs").mkdir(parents=True)
    (dev / "msi_irqs" / "\u00b2").write_text("msi\n")
    (dev / "irq").write_text("\u00b2\n")
    pci = read_pci_device(HostRoot(tmp_path), "0000:01:00.0")
    assert pci.irq is None and pci.msi_irqs == ()


def test_pxb_slot_1_pin_a_is_not_lnks():
    from vfio_advisor.facts.domain import parse_domain_xml
    from vfio_advisor.facts.guest_intx import PIRQS, build_guest_intx_map

    d = parse_domain_xml("""<domain type='kvm'><name>t</name><os><type machine='pc'>hvm</type></os>
      <devices><controller type='pci' index='0' model='pci-root'/>
      <controller type='pci' index='1' model='pci-expander-bus'><target busNr='16'/>
      <address type='pci' domain='0' bus='0' slot='7' function='0'/></controller>
      <interface type='user'><model type='virtio'/><address type='pci' domain='0' bus='1' slot='1'
      function='0'/></interface></devices></domain>""")
    fn = next(f for f in build_guest_intx_map(d, {}).functions if f.guest_address.bus == 1)
    assert (PIRQS[fn.pirq], fn.irq) == ("A", 10)
