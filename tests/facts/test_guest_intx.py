"""Guest INTx routing against the worked examples and the QEMU 7.2
measurements in the shared intx-routing notes (sections 9 and 11)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.guest_intx import (
    PIRQS, build_guest_intx_map, free_line_addresses, i440fx_pirq, q35_pirq,
)

CORPUS = Path(__file__).resolve().parents[1] / "data/corpus/libvirt-tests"


def dom(machine, devices, controllers=""):
    root = "pcie-root" if "q35" in machine else "pci-root"
    return parse_domain_xml(f"""<domain type='kvm'><name>t</name>
      <os><type arch='x86_64' machine='{machine}'>hvm</type></os><devices>
      <controller type='pci' index='0' model='{root}'/>{controllers}{devices}</devices></domain>""")


def nic(bus, slot, model="e1000", fn=0):
    return (f"<interface type='user'><model type='{model}'/><address type='pci' domain='0' "
            f"bus='{bus:#x}' slot='{slot:#x}' function='{fn:#x}'/></interface>")


def ctrl(index, model, bus, slot, fn=0, extra=""):
    return (f"<controller type='pci' index='{index}' model='{model}'>{extra}<address type='pci' "
            f"domain='0' bus='{bus:#x}' slot='{slot:#x}' function='{fn:#x}'/></controller>")


def route(d, bus, slot, fn=0):
    m = build_guest_intx_map(d, {})
    (f,) = [f for f in m.functions if (f.guest_address.bus, f.guest_address.slot,
                                       f.guest_address.function) == (bus, slot, fn)]
    return f


def test_i440fx_root_slots_match_qemu_measurement():
    # Section 11: root slots 2-9 -> B C D A B C D A
    assert "".join(PIRQS[i440fx_pirq(s, 0)] for s in range(2, 10)) == "BCDABCDA"


def test_q35_root_slot_table_matches_qemu_measurement():
    assert "".join(PIRQS[q35_pirq(s, 0)] for s in range(1, 9)) == "FGHEFGHE"
    assert PIRQS[q35_pirq(0x17, 0)] == "H" and PIRQS[q35_pirq(0x18, 0)] == "E"
    assert {PIRQS[q35_pirq(s, 0)] for s in range(0x19, 0x1E)} == {"A"}
    assert PIRQS[q35_pirq(0x1E, 0)] == "E" and PIRQS[q35_pirq(0x1F, 0)] == "A"
    assert [PIRQS[q35_pirq(s, p)] for s, p in ((0x19, 1), (0x1B, 2), (0x1D, 3))] == ["B", "C", "D"]
    assert [PIRQS[q35_pirq(s, p)] for s in (0x1E, 0x18) for p in (1, 2, 3)] == list("FGHFGH")


def test_example_1_i440fx_slot5():
    f = route(dom("pc-i440fx-7.2", nic(0, 5)), 0, 5)
    assert (PIRQS[f.pirq], f.irq) == ("A", 10)


def test_example_2_i440fx_behind_pci_bridge():
    d = dom("pc", nic(1, 1), ctrl(1, "pci-bridge", 0, 3))
    f = route(d, 1, 1)
    assert (f.root_slot, f.root_pin, PIRQS[f.pirq], f.irq) == (3, 1, "D", 11)


@pytest.mark.parametrize("slot, pirq", [(1, "D"), (2, "A"), (3, "B"), (4, "C")])
def test_i440fx_pci_bridge_slots_1_to_4(slot, pirq):
    f = route(dom("pc", nic(1, slot), ctrl(1, "pci-bridge", 0, 3)), 1, slot)
    assert PIRQS[f.pirq] == pirq


@pytest.mark.parametrize("pxb_slot", [4, 7])
def test_example_3_pxb_slot_is_irrelevant(pxb_slot):
    d = dom("pc", nic(1, 2), ctrl(1, "pci-expander-bus", 0, pxb_slot, extra="<target busNr='16'/>"))
    f = route(d, 1, 2)
    assert (PIRQS[f.pirq], f.irq) == ("B", 10)


def test_example_4_5_q35_gpu_and_audio_behind_root_ports():
    ports = ctrl(1, "pcie-root-port", 0, 2, 5) + ctrl(2, "pcie-root-port", 0, 2, 6)
    hostdevs = "".join(
        f"<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='1' slot='0' "
        f"function='{fn}'/></source><address type='pci' domain='0' bus='{bus}' slot='0' "
        f"function='0'/></hostdev>" for fn, bus in ((0, 1), (1, 2)))
    d = dom("pc-q35-7.2", hostdevs, ports)
    m = build_guest_intx_map(d, {"0000:01:00.0": 1, "0000:01:00.1": 2})
    gpu = m.by_address()[d.hostdevs[0].guest.address]
    audio = m.by_address()[d.hostdevs[1].guest.address]
    assert (PIRQS[gpu.pirq], gpu.irq) == ("G", 22)
    assert (PIRQS[audio.pirq], audio.irq) == ("H", 23)


@pytest.mark.parametrize("down_slot, pirq", [(0, "G"), (1, "H"), (2, "E"), (3, "F")])
def test_example_6_switch_downstream_slots(down_slot, pirq):
    c = (ctrl(1, "pcie-root-port", 0, 2) + ctrl(2, "pcie-switch-upstream-port", 1, 0)
         + ctrl(3, "pcie-switch-downstream-port", 2, down_slot))
    f = route(dom("q35", nic(3, 0, "e1000e"), c), 3, 0)
    assert PIRQS[f.pirq] == pirq


@pytest.mark.parametrize("slot, pirq", [(1, "H"), (2, "E"), (3, "F"), (4, "G")])
def test_example_7_pcie_to_pci_bridge(slot, pirq):
    c = ctrl(1, "pcie-root-port", 0, 2, 1) + ctrl(2, "pcie-to-pci-bridge", 1, 0)
    f = route(dom("q35", nic(2, slot), c), 2, slot)
    assert PIRQS[f.pirq] == pirq


def test_example_8_dmi_to_pci_bridge_slot30_rule():
    c = ctrl(1, "dmi-to-pci-bridge", 0, 0x1E) + ctrl(2, "pci-bridge", 1, 1)
    f = route(dom("q35", nic(2, 2), c), 2, 2)
    assert (PIRQS[f.pirq], f.irq) == ("H", 23)


def test_example_10_i440fx_builtins():
    usb = ("<controller type='usb' index='0' model='piix3-uhci'><address type='pci' domain='0' "
           "bus='0' slot='1' function='2'/></controller>")
    video = ("<video><model type='qxl'/><address type='pci' domain='0' bus='0' slot='2' "
             "function='0'/></video>")
    d = dom("pc", usb + video)
    assert (PIRQS[route(d, 0, 1, 2).pirq], route(d, 0, 1, 2).irq) == ("D", 11)
    assert (PIRQS[route(d, 0, 2).pirq], route(d, 0, 2).irq) == ("B", 10)
    pm = route(d, 0, 1, 3)
    assert pm.kind == "implicit" and pm.irq == 9


def test_pxb_pcie_is_flagged_unpredictable():
    c = (ctrl(1, "pcie-expander-bus", 0, 5, extra="<target busNr='254'/>")
         + ctrl(2, "pcie-root-port", 1, 0))
    f = route(dom("q35", nic(2, 0), c), 2, 0)
    assert not f.predictable and f.irq is None
    assert any("pcie-expander-bus" in n for n in f.notes)


def test_function_number_does_not_matter():
    d = dom("pc", nic(0, 5, fn=0) + nic(0, 5, fn=3).replace("<interface", "<interface", 1))
    assert route(d, 0, 5, 0).pirq == route(d, 0, 5, 3).pirq


def test_unknown_model_and_unaddressed_hostdev_are_said_not_guessed():
    d = parse_domain_xml("""<domain type='kvm'><name>t</name><os><type machine='q35'>hvm</type></os>
      <devices><shmem name='x'><model type='ivshmem-plain'/><address type='pci' domain='0' bus='0'
      slot='5' function='0'/></shmem><hostdev mode='subsystem' type='pci'><source><address
      domain='0' bus='3' slot='0' function='0'/></source></hostdev></devices></domain>""")
    m = build_guest_intx_map(d, {"0000:03:00.0": 1})
    (shm,) = [f for f in m.functions if f.guest_address.slot == 5]
    assert shm.pin is None and shm.irq is None and "no pin known" in shm.notes[0]
    assert m.unaddressed == ("hostdev 0000:03:00.0",)


def test_sriov_vf_pin_zero_never_shares():
    d = parse_domain_xml("""<domain type='kvm'><name>t</name><os><type machine='pc'>hvm</type></os>
      <devices><hostdev mode='subsystem' type='pci'><source><address domain='0' bus='3' slot='0'
      function='1'/></source><address type='pci' domain='0' bus='0' slot='5' function='0'/>
      </hostdev></devices></domain>""")
    m = build_guest_intx_map(d, {"0000:03:00.1": 0})
    (vf,) = [f for f in m.functions if f.kind == "hostdev"]
    assert vf.irq is None and m.sharers(vf) == ()


def test_free_line_q35_avoids_used_gsis():
    d = dom("q35", nic(0, 3) + nic(0, 4))  # H (23), E (20)
    m = build_guest_intx_map(d, {})
    f = route(d, 0, 3)
    free = free_line_addresses(m, f)
    used = {g.irq for g in m.functions if g.routed and g is not f}
    assert free and all(line not in used for _, line in free)


@pytest.mark.parametrize("name", ["q35-pcie.xml", "pcie-root-port.xml", "pci-bridge-many-disks.xml",
                                  "pcie-switch-downstream-port.xml", "pci-expander-bus.xml",
                                  "pcie-expander-bus.xml", "q35-multifunction.xml"])
def test_libvirt_test_xmls_map_without_error(name):
    for sub in ("qemuxml2xmlout-v4.0.0", "qemuxml2argv-v4.0.0"):
        path = CORPUS / sub / name
        if path.exists():
            break
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "guest-irqs", "--xml", str(path),
                          "--format", "json"], capture_output=True, text=True,
                         env=dict(os.environ, NO_COLOR="1"))
    # 1: a routing finding of warning or worse (the exit table); 2 would be an error.
    assert out.returncode in (0, 1) and out.stderr == "", out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/guest-irqs/1"
    assert doc["functions"]
    for fn in doc["functions"]:
        assert set(fn) >= {"guest_address", "kind", "host_address", "model", "pin", "root_slot",
                           "root_pin", "pirq", "irq", "shares_with", "notes"}
        if fn["irq"] is not None and fn["irq"] != 9:  # 9: i440FX LNKS (SCI), no PIRQ
            assert fn["pirq"] in PIRQS
