"""--sample reads /proc/interrupts twice; snapshot archives what advise reads
and replays to the same advice."""

import json
import os
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

from vfio_advisor.facts.pci_config import parse_lspci_dump

DATA = Path(__file__).resolve().parents[1] / "data"
NAVI = DATA / "corpus/pci-config/coreboot-autoport/huananzhi-x99-qd4_navi23_lspci-nnvvvxxxx.txt"

INTERRUPTS = """\
            CPU0       CPU1
  16:    {count:>7}          0  IR-IO-APIC   16-fasteoi   vfio-intx(0000:05:00.1)
  45:       1000          0  IR-PCI-MSI 2621440-edge      vfio-msi[0](0000:05:00.0)
 NMI:          0          0   Non-maskable interrupts
"""

DOMAIN = """<domain type='kvm'><name>win11</name>
  <metadata><libosinfo:libosinfo xmlns:libosinfo="http://libosinfo.org/xmlns/libvirt/domain/1.0">
    <libosinfo:os id="http://microsoft.com/win/11"/></libosinfo:libosinfo></metadata>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type></os>
  <devices>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x05' slot='0x00' function='0x0'/></source>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0' multifunction='on'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source><address domain='0x0000' bus='0x05' slot='0x00' function='0x1'/></source>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x1'/>
    </hostdev>
  </devices></domain>"""


def make_host(root: Path, count: int) -> None:
    dumps = parse_lspci_dump(NAVI.read_text(errors="replace"))
    for fn, irq in ((0, 45), (1, 16)):
        bdf = f"0000:05:00.{fn}"
        real = root / "sys/devices/pci0000:00/0000:00:03.0" / bdf
        real.mkdir(parents=True)
        (real / "config").write_bytes(dumps[bdf])
        (real / "irq").write_text(f"{irq}\n")
        (real / "msi_bus").write_text("1\n")
        link = root / "sys/bus/pci/devices" / bdf
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(f"../../../devices/pci0000:00/0000:00:03.0/{bdf}")
    (root / "sys/devices/pci0000:00/0000:00:03.0/msi_bus").write_text("1\n")
    (root / "proc").mkdir()
    (root / "proc/cmdline").write_text("intel_iommu=on iommu=pt\n")
    (root / "proc/interrupts").write_text(INTERRUPTS.format(count=count))


def run(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))


def audio(doc):
    dev = next(d for d in doc["domains"][0]["devices"] if d["host_address"] == "0000:05:00.1")
    return dev


def test_sample_sees_rising_intx(tmp_path):
    make_host(tmp_path, 5000)
    xml = tmp_path / "win11.xml"
    xml.write_text(DOMAIN)

    def bump():
        time.sleep(0.3)
        (tmp_path / "proc/interrupts").write_text(INTERRUPTS.format(count=5600))

    t = threading.Thread(target=bump)
    t.start()
    out = run("advise", "--xml", str(xml), "--host-root", str(tmp_path), "--sample", "1.5",
              "--format", "json")
    t.join()
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert doc["host"]["sample_seconds"] == 1.5
    dev = audio(doc)
    assert dev["host_interrupts"]["mode"] == "intx"
    assert dev["host_interrupts"]["intx_delta"] == 600
    (f,) = [f for f in dev["findings"] if f["rule"] == "VA1001"]
    assert "rose by 600" in f["message"]


def test_sample_without_change_is_silent(tmp_path):
    make_host(tmp_path, 5000)
    xml = tmp_path / "win11.xml"
    xml.write_text(DOMAIN)
    out = run("advise", "--xml", str(xml), "--host-root", str(tmp_path), "--sample", "0.3",
              "--format", "json")
    doc = json.loads(out.stdout)
    assert audio(doc)["host_interrupts"]["intx_delta"] == 0
    assert not [f for f in audio(doc)["findings"] if f["rule"] == "VA1001"]


def test_snapshot_replays_to_the_same_advice(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    make_host(host, 5000)
    xml = tmp_path / "win11.xml"
    xml.write_text(DOMAIN)
    direct = run("advise", "--xml", str(xml), "--host-root", str(host), "--format", "json")
    snap = tmp_path / "snap.tar.gz"
    made = run("snapshot", "-o", str(snap), "--xml", str(xml), "--host-root", str(host))
    assert made.returncode == 0, made.stderr
    with tarfile.open(snap) as tar:
        names = set(tar.getnames())
    assert "proc/interrupts" in names and "domains/win11.xml" in names
    assert "sys/bus/pci/devices/0000:05:00.1" in names
    assert "sys/devices/pci0000:00/0000:00:03.0/0000:05:00.1/config" in names
    replay = run("advise", "--host-root", str(snap), "--format", "json")
    assert replay.returncode == direct.returncode, replay.stderr
    a, b = json.loads(direct.stdout), json.loads(replay.stdout)
    for doc in (a, b):
        doc["host"]["root"] = None
    assert a["domains"] == b["domains"]
    assert a["summary"] == b["summary"] and a["summary"]["warning"] >= 1


def test_text_output_no_colour_and_remedy(tmp_path):
    make_host(tmp_path, 5000)
    xml = tmp_path / "win11.xml"
    xml.write_text(DOMAIN)
    out = run("advise", "--xml", str(xml), "--host-root", str(tmp_path))
    assert out.returncode == 1
    assert "\033[" not in out.stdout
    assert "VA1001" in out.stdout and "MSISupported" in out.stdout
    assert "vfio-advisor explain VA1001" in out.stdout
