"""advise over a real libvirt connection: the in-process test driver."""

import json
import os
import subprocess
import sys
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data"

DOMAIN = """
  <domain type='kvm'>
    <name>{name}</name>
    <uuid>{uuid}</uuid>
    <memory>1048576</memory>
    <vcpu>2</vcpu>
    <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
    <devices>{devices}</devices>
    {runstate}
  </domain>"""

HOSTDEV = """
      <hostdev mode='subsystem' type='pci' managed='yes'>
        <source><address domain='0x0000' bus='0x{bus:02x}' slot='0x00' function='0x0'/></source>
        <address type='pci' domain='0x0000' bus='0x00' slot='0x{slot:02x}' function='0x0'/>
      </hostdev>"""


def node(tmp_path, domains):
    text = ("<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>"
            + "".join(domains) + "</node>")
    path = tmp_path / "node.xml"
    path.write_text(text)
    return f"test://{path}"


def run(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True,
                          text=True, timeout=120, env=dict(os.environ, NO_COLOR="1"))


def test_default_selects_domains_with_pci_hostdevs(tmp_path):
    uri = node(tmp_path, [
        DOMAIN.format(name="withdev", uuid="11111111-2222-3333-4444-555555555555",
                      machine="pc-q35-7.2", devices=HOSTDEV.format(bus=5, slot=3), runstate=""),
        DOMAIN.format(name="plain", uuid="11111111-2222-3333-4444-666666666666",
                      machine="pc-q35-7.2", devices="", runstate=""),
        DOMAIN.format(name="stopped", uuid="11111111-2222-3333-4444-777777777777",
                      machine="pc-i440fx-6.2", devices=HOSTDEV.format(bus=6, slot=5),
                      runstate="<test:runstate>5</test:runstate>"),
    ])
    out = run("advise", "--connect", uri, "--host-root", str(tmp_path), "--format", "json")
    assert out.returncode == 1, out.stderr  # VA8001: the devices are not on this empty host
    doc = json.loads(out.stdout)
    names = [d["name"] for d in doc["domains"]]
    assert names == ["stopped", "withdev"]
    by_name = {d["name"]: d for d in doc["domains"]}
    assert by_name["stopped"]["chipset"] == "i440fx"
    assert by_name["withdev"]["devices"][0]["guest_address"] == "0000:00:03.0"
    assert by_name["withdev"]["uuid"] == "11111111-2222-3333-4444-555555555555"


def test_named_domain_and_unknown_name(tmp_path):
    uri = node(tmp_path, [DOMAIN.format(name="plain", uuid="11111111-2222-3333-4444-666666666666",
                                        machine="q35", devices="", runstate="")])
    out = run("advise", "plain", "nosuch", "--connect", uri, "--host-root", str(tmp_path),
              "--format", "json")
    # The unknown name makes it 2 (docs/exit-codes.md); "plain" is still reported.
    assert out.returncode == 2, out.stderr
    doc = json.loads(out.stdout)
    assert [d["name"] for d in doc["domains"]] == ["plain"]
    assert doc["errors"] and doc["errors"][0]["source"] == "nosuch"
