"""Runtime advice from recorded states, logged into a real private journald.

Each scenario (tests/daemon/scenarios.py) advances a host tree's
proc/interrupts between samples with a fake clock; the entries are read back
from journald."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.journal import run_in_journal
from vfio_advisor.rules import RULES_BY_ID

REPO = Path(__file__).resolve().parents[2]


def scenario(tmp_path, name):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    run = run_in_journal(tmp_path / "j", [sys.executable, "-m", "tests.daemon.scenarios", name,
                                          str(tmp_path / "w")], env=env)
    assert run.rc == 0, run.stderr
    emitted = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    findings = [e for e in run.entries if e.get("VFIO_ADVISOR_RULE")]
    # what the watcher emitted is exactly what journald holds, in order
    assert [(e["VFIO_ADVISOR_RULE"], e["VFIO_ADVISOR_HOST_BDF"]) for e in findings] == \
        [(e["rule"], e["subject"]) for e in emitted]
    return findings


def rules(entries):
    return [e["VFIO_ADVISOR_RULE"] for e in entries]


def test_stays_on_intx_once_then_switch_to_msi_once(tmp_path):
    entries = scenario(tmp_path, "stays_on_intx")
    assert rules(entries) == ["VA6001", "VA6002"]
    stays, switched = entries
    assert stays["MESSAGE_ID"] == RULES_BY_ID["VA6001"].message_id
    assert stays["PRIORITY"] == "4" and switched["PRIORITY"] == "6"
    assert stays["VFIO_ADVISOR_SOURCE"] == "daemon"
    assert stays["VFIO_ADVISOR_DOMAIN"] == "win11"
    assert stays["VFIO_ADVISOR_HOST_BDF"] == "0000:05:00.1"
    assert stays["VFIO_ADVISOR_GUEST_ADDRESS"] == "0000:03:00.1"
    assert "MSISupported" in stays["VFIO_ADVISOR_REMEDY"]
    assert r"PCI\VEN_1002&DEV_AB28" in stays["VFIO_ADVISOR_REMEDY"]
    assert stays["VFIO_ADVISOR_EVIDENCE_RATE"] == "600.0"


def test_storm_on_shared_line_is_an_error_with_the_rate(tmp_path):
    entries = scenario(tmp_path, "storm_on_shared_line")
    (storm,) = [e for e in entries if e["VFIO_ADVISOR_RULE"].startswith("VA600") and
                e["VFIO_ADVISOR_RULE"] in ("VA6004", "VA6005")]
    assert storm["VFIO_ADVISOR_RULE"] == "VA6005" and storm["PRIORITY"] == "3"
    assert "60000 INTx/s" in storm["MESSAGE"] and "ehci_hcd:usb5" in storm["MESSAGE"]
    assert storm["VFIO_ADVISOR_EVIDENCE_RATE"] == "60000"


def test_second_run_regressing_to_intx(tmp_path):
    entries = scenario(tmp_path, "regression")
    assert "VA6003" in rules(entries)
    (reg,) = [e for e in entries if e["VFIO_ADVISOR_RULE"] == "VA6003"]
    assert "previous run" in reg["MESSAGE"]
    assert reg["VFIO_ADVISOR_EVIDENCE_PREVIOUS_MODE"] == "msi"


def test_no_interrupts_after_settle(tmp_path):
    assert rules(scenario(tmp_path, "no_interrupts")) == ["VA6006"]


def test_affinity_overlap_with_pinned_vcpus(tmp_path):
    entries = scenario(tmp_path, "affinity")
    assert rules(entries) == ["VA6007"]
    assert entries[0]["VFIO_ADVISOR_EVIDENCE_IRQ"] == "45"
    assert "2-3" in entries[0]["MESSAGE"]


def test_odd_rows_are_reported_once_not_per_sample(tmp_path):
    from tests.daemon.scenarios import Scenario, intx_rows

    s = Scenario(tmp_path)
    found = []
    for t in range(0, 30, 5):
        rows = intx_rows(1000 * (t + 1))
        found += s.at(t, rows)
        text = (s.root / "proc/interrupts").read_text()
        # cut the vfio row off mid-word, as a terminal-width copy would
        cut = "\n".join(line[:40] if "vfio-intx" in line else line for line in text.splitlines())
        (s.root / "proc/interrupts").write_text(cut + "\n")
        found += s.watcher.sample()
    assert [f.rule_id for f in found].count("VA8003") == 1
