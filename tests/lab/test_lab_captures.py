"""advise and the daemon on real kernel vfio states from the lab
(lab/captures, made by `make lab`; see lab/captures/ORIGIN.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.journal import run_in_journal

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
DOMAINS = REPO / "tests/data/domains/lab"


def advise(domain: str, capture: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "advise", "--xml",
                          str(DOMAINS / f"{domain}.xml"), "--host-root", str(CAPTURES / capture),
                          "--format", "json"], capture_output=True, text=True, timeout=60)
    assert out.returncode in (0, 1), out.stderr
    doc = json.loads(out.stdout)
    return {d["host_address"]: d for d in doc["domains"][0]["devices"]} | {"_doc": doc}


def rules_of(dev: dict) -> list[str]:
    return [f["rule"] for f in dev["findings"]]


def test_modes_side_by_side():
    devs = advise("modes", "modes")
    intx, msi, msix = devs["0000:00:03.0"], devs["0000:00:04.0"], devs["0000:00:05.0"]
    assert intx["host_interrupts"]["mode"] == "intx" and intx["host_interrupts"]["intx_count"] == 200
    assert intx["host_interrupts"]["shared_with"] == []
    assert msi["host_interrupts"]["mode"] == "msi" and len(msi["host_interrupts"]["irqs"]) == 1
    assert msix["host_interrupts"]["mode"] == "msix" and len(msix["host_interrupts"]["irqs"]) == 2
    assert msi["capabilities"]["msi"]["vectors"] >= 1
    assert msix["capabilities"]["msix"]["table_size"] == 2
    # the edu supports MSI and sits on INTx: advice; the healthy ones: nothing at all
    assert rules_of(intx) == ["VA1001"]
    assert rules_of(msi) == [] and rules_of(msix) == []
    assert devs["_doc"]["host"]["interrupt_remapping"] is True


def test_shared_line_names_every_sharer():
    devs = advise("shared", "shared")
    a, b = devs["0000:00:03.0"], devs["0000:00:07.0"]
    assert a["host_interrupts"]["intx_irq"] == b["host_interrupts"]["intx_irq"] == 23
    assert sorted(a["host_interrupts"]["shared_with"]) == ["vfio-intx(0000:00:07.0)", "virtio0"]
    assert sorted(b["host_interrupts"]["shared_with"]) == ["vfio-intx(0000:00:03.0)", "virtio0"]
    for dev in (a, b):
        assert "VA2001" in rules_of(dev)
        # vfio-pci shares the line, so the device passed its INTx masking probe
        assert dev["intx_masking"]["supported"] is True
        assert "VA2002" not in rules_of(dev) and "VA2003" not in rules_of(dev)


@pytest.mark.parametrize("capture, mode", [("switch-1", "intx"), ("switch-2", "intx"),
                                           ("switch-3", "msi"), ("switch-4", "msi"),
                                           ("switch-5", "none")])
def test_switch_moments(capture, mode):
    devs = advise("switch", capture)
    assert devs["0000:00:03.0"]["host_interrupts"]["mode"] == mode


def replay(tmp_path, domain, moments, settle, storm, state="-", work="j"):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = run_in_journal(tmp_path / work, [sys.executable, "-m", "tests.lab.replay",
                                           str(DOMAINS / f"{domain}.xml"), str(settle), str(storm),
                                           str(state), *[str(CAPTURES / m) for m in moments]], env=env)
    assert run.rc == 0, run.stderr
    entries = [e for e in run.entries if e.get("VFIO_ADVISOR_RULE")]
    emitted = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert [e["VFIO_ADVISOR_RULE"] for e in entries] == [e["rule"] for e in emitted]
    return entries


def test_daemon_replay_stays_on_intx_and_storm(tmp_path):
    # settle 0.3 s of guest time; the last phase fired 3000 INTx in about half a second
    entries = replay(tmp_path, "edu", [f"stays-intx-{i}" for i in (1, 2, 3, 4)], 0.3, 2000)
    rules = [e["VFIO_ADVISOR_RULE"] for e in entries]
    assert rules.count("VA6001") == 1
    assert rules.count("VA6004") == 1 and "VA6005" not in rules  # not shared
    storm = next(e for e in entries if e["VFIO_ADVISOR_RULE"] == "VA6004")
    assert float(storm["VFIO_ADVISOR_EVIDENCE_RATE"]) >= 2000


def test_daemon_replay_switch_to_msi(tmp_path):
    entries = replay(tmp_path, "switch", [f"switch-{i}" for i in (1, 2, 3, 4, 5)], 0.3, 1e9)
    by_dev = [(e["VFIO_ADVISOR_RULE"], e["VFIO_ADVISOR_HOST_BDF"]) for e in entries]
    assert ("VA6001", "0000:00:03.0") in by_dev
    assert ("VA6002", "0000:00:03.0") in by_dev
    assert by_dev.index(("VA6001", "0000:00:03.0")) < by_dev.index(("VA6002", "0000:00:03.0"))
    # the virtio-rng was bound to vfio-pci but nothing raised its interrupts
    assert ("VA6006", "0000:00:05.0") in by_dev
    assert not [r for r, d in by_dev if d == "0000:00:03.0" and r not in ("VA6001", "VA6002")]


def test_daemon_replay_healthy_modes_has_no_false_positive(tmp_path):
    # One moment, sampled twice (no counter moves in between): the MSI and
    # MSI-X devices are healthy; the virtio-rng's vectors never fired.
    entries = replay(tmp_path, "modes", ["modes", "modes"], 0.0, 1e9)
    by_dev = {(e["VFIO_ADVISOR_RULE"], e["VFIO_ADVISOR_HOST_BDF"]) for e in entries}
    assert not [r for r, d in by_dev if d == "0000:00:04.0"]
    assert by_dev & {("VA6006", "0000:00:05.0")} == {("VA6006", "0000:00:05.0")}
    assert ("VA6001", "0000:00:03.0") not in by_dev  # counted, but not while we watched


def test_daemon_replay_shared_line(tmp_path):
    entries = replay(tmp_path, "shared", ["shared", "shared"], 0.0, 1e9)
    assert [e["VFIO_ADVISOR_RULE"] for e in entries] == []


def test_daemon_replay_second_run_regresses_to_intx(tmp_path):
    """Run 1 (the switch scenario) ends with the edu on MSI; run 2 (the
    stays-intx scenario, same device, same domain) keeps it on INTx."""
    state = tmp_path / "state"
    first = replay(tmp_path, "edu", [f"switch-{i}" for i in (3, 4)], 0.0, 1e9, state, "j1")
    assert not [e for e in first if e["VFIO_ADVISOR_RULE"] == "VA6003"]
    second = replay(tmp_path, "edu", [f"stays-intx-{i}" for i in (1, 2, 3)], 0.3, 1e9, state, "j2")
    (reg,) = [e for e in second if e["VFIO_ADVISOR_RULE"] == "VA6003"]
    assert reg["VFIO_ADVISOR_HOST_BDF"] == "0000:00:03.0"
    assert reg["VFIO_ADVISOR_EVIDENCE_PREVIOUS_MODE"] == "msi"


def test_daemon_replay_storm_on_a_shared_line(tmp_path):
    entries = replay(tmp_path, "shared", ["storm-shared-1", "storm-shared-2"], 0.0, 2000)
    storms = [e for e in entries if e["VFIO_ADVISOR_RULE"] in ("VA6004", "VA6005")]
    assert [e["VFIO_ADVISOR_RULE"] for e in storms] == ["VA6005"]  # one report for the line
    assert storms[0]["PRIORITY"] == "3"
    assert "vfio-intx(0000:00:07.0)" in storms[0]["MESSAGE"]
    assert float(storms[0]["VFIO_ADVISOR_EVIDENCE_RATE"]) > 2000


def test_daemon_replay_affinity_on_pinned_vcpus(tmp_path):
    # The lab guest has one CPU, so every vector may run on CPU 0; a domain
    # whose vCPU is pinned to CPU 0 gets the affinity advice.
    xml = (DOMAINS / "edu.xml").read_text().replace(
        "<vcpu placement='static'>2</vcpu>",
        "<vcpu placement='static'>1</vcpu><cputune><vcpupin vcpu='0' cpuset='0'/></cputune>")
    pinned = tmp_path / "pinned.xml"
    pinned.write_text(xml)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = run_in_journal(tmp_path / "j", [sys.executable, "-m", "tests.lab.replay", str(pinned),
                                          "0", "1e9", "-", str(CAPTURES / "stays-intx-2"),
                                          str(CAPTURES / "stays-intx-3")], env=env)
    (aff,) = [e for e in run.entries if e.get("VFIO_ADVISOR_RULE") == "VA6007"]
    assert aff["VFIO_ADVISOR_EVIDENCE_IRQ"] == "23"
    assert aff["VFIO_ADVISOR_EVIDENCE_SMP_AFFINITY_LIST"] == "0"


def test_daemon_replay_windows_guest_gets_the_registry_remedy(tmp_path):
    xml = (DOMAINS / "edu.xml").read_text().replace("http://debian.org/debian/12",
                                                    "http://microsoft.com/win/11")
    win = tmp_path / "win.xml"
    win.write_text(xml)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = run_in_journal(tmp_path / "j", [sys.executable, "-m", "tests.lab.replay", str(win),
                                          "0.3", "1e9", "-",
                                          *[str(CAPTURES / f"stays-intx-{i}") for i in (1, 2, 3)]],
                         env=env)
    (stays,) = [e for e in run.entries if e.get("VFIO_ADVISOR_RULE") == "VA6001"]
    assert stays["PRIORITY"] == "4" and stays["VFIO_ADVISOR_SOURCE"] == "daemon"
    assert stays["VFIO_ADVISOR_GUEST_ADDRESS"] == "0000:01:00.0"
    assert "MSISupported" in stays["VFIO_ADVISOR_REMEDY"]
    # the edu's real IDs from its captured config space (QEMU: 1234:11e8, subsystem 1af4:1100)
    assert "PCI\\VEN_1234&DEV_11E8&SUBSYS_11001AF4" in stays["VFIO_ADVISOR_REMEDY"]
