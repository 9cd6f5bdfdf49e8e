"""The daemon confirms a recorded guest change (`fix --guest --apply`,
guest/changes.py) from the host, read-only: across the guest's next
restart it sees MSI (VA6009, info, naming the change) or INTx that keeps
counting (VA6010, warning, with the likely causes); an idle INTx line after
the restart is held back, as for VA6001."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from tests.rules.examples import AUDIO
from vfio_advisor import journal_fields as F
from vfio_advisor.guest.changes import record

REPO = Path(__file__).resolve().parents[2]
TARGET = "MSISupported=1 for PCI\\VEN_1002&DEV_AB28"


@pytest.fixture(scope="module")
def testdriver():
    pytest.importorskip("libvirt")
    out = subprocess.run([sys.executable, str(REPO / "tests/daemon/guest_change_run.py")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_stop_and_start_after_the_change_confirms_it(testdriver):
    """libvirt's test driver: the change recorded in run 1 waits (VA6001 only);
    run 2 (a new domain ID) has the audio on vfio-msi: VA6009, once."""
    run = testdriver
    assert run["run_ids"][0] != run["run_ids"][1]
    assert run["before_restart"] == ["VA6001"]
    assert run["after_restart_msi"] == ["VA6001", "VA6009"]
    assert run["run_3"].count("VA6009") == 1  # the state file remembers what was said
    entry = [e for e in run["journal"] if e.get(F.RULE) == "VA6009"][0]
    assert entry[F.PRIORITY] == "6" and entry[F.HOST_BDF] == "0000:05:00.1"
    assert "MSISupported=1 for PCI\\VEN_10DE&DEV_10F0" in entry[F.MESSAGE]
    assert "is on MSI after the guest change of 20" in entry[F.MESSAGE]


def test_a_change_that_brought_no_msi_is_a_warning_with_its_causes(testdriver):
    run = testdriver
    assert "VA6010" not in run["run_4_booting"]  # INTx while the guest boots is normal
    assert run["run_4_settled"].count("VA6010") == 1
    (entry,) = [e for e in run["journal"] if e.get(F.RULE) == "VA6010"]
    assert entry[F.PRIORITY] == "4" and "still on INTx after the guest change" in entry[F.MESSAGE]
    assert "MSISupported was reset" in entry[F.REMEDY] and "vfio-advisor guest gpuvm" in entry[F.REMEDY]


def test_the_services_reboot_handler_confirms_a_change_of_the_same_run(testdriver):
    run = testdriver
    assert run["before_reboot"] == run["run_4_settled"]  # the change waits: same ID, no reboot
    assert run["after_reboot"].count("VA6009") == 2
    last = [e for e in run["journal"] if e.get(F.RULE) == "VA6009"][-1]
    assert "MSISupported=1, third" in last[F.MESSAGE]
    # The reboot itself is one journal line: the settle time starts over and
    # the change read again is waiting for its confirmation.
    (rebooted,) = [e for e in run["journal"] if e.get(F.EVENT) == "guest-rebooted"]
    assert rebooted[F.MESSAGE] == ("gpuvm: the guest rebooted; settle time starts over, "
                                   "1 recorded guest change to confirm")
    assert rebooted[F.PRIORITY] == "6" and rebooted[F.SOURCE] == "daemon"


def _scenario_with_change(tmp_path, wall: list) -> Scenario:
    state = tmp_path / "state"
    s = Scenario(tmp_path, state_dir=state)
    s.watcher.wall_clock = lambda: wall[0]
    record(str(state), "win11", [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows", "target": TARGET}],
           now=50.0)
    return s


def test_a_reboot_the_daemon_sees_confirms_the_change(tmp_path):
    """The change is made while the domain runs; libvirt's REBOOT event
    (Watcher.rebooted) reads it and starts the settle time over."""
    wall = [100.0]
    s = _scenario_with_change(tmp_path, wall)  # followed at wall time 1.0, before the change
    count = 0
    for t in range(0, 80, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]  # the change waits for a restart
    s.clock.now = 1000.0 + 80
    s.watcher.rebooted("win11")
    s.at(85, intx_rows(count + 10))  # the firmware and the boot loader: INTx
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    s.at(90, msi_rows(100))
    rules = [e["rule"] for e in s.emitted]
    assert "VA6009" in rules and "VA6010" not in rules
    (msg,) = [e["message"] for e in s.emitted if e["rule"] == "VA6009"]
    assert TARGET in msg and "1970-01-01T00:00:50Z" in msg


def test_after_a_reboot_an_idle_intx_line_is_held_back_then_decided(tmp_path):
    wall = [100.0]
    s = _scenario_with_change(tmp_path, wall)
    s.at(0, intx_rows(5000))
    s.watcher.rebooted("win11")
    for t in range(5, 80, 5):  # settled 60 s after the reboot; the line stays idle
        s.at(t, intx_rows(5000))
    assert "VA6010" not in [e["rule"] for e in s.emitted]
    held = [e for e in s.journal if e.get(F.EVENT) == "inconclusive" and e.get(F.RULE) == "VA6010"]
    assert len(held) == 1 and TARGET in held[0][F.MESSAGE]
    s.at(80, intx_rows(9000))
    assert [e["rule"] for e in s.emitted].count("VA6010") == 1


def test_a_run_found_running_is_judged_only_after_its_restart(tmp_path):
    """The daemon (re)started while the guest ran (a resync: same run, boot
    time unknown): MSI then proves nothing about the change made in that
    run; the next run (a new domain ID) does."""
    state = tmp_path / "state"
    s = Scenario(tmp_path, state_dir=state)
    facts = s.watcher.domains["win11"].facts
    s.watcher.remove_domain("win11")
    record(str(state), "win11", [{"key": AUDIO, "host_bdf": AUDIO, "os": "windows", "target": TARGET}],
           now=50.0, run_id=4)
    s.watcher.wall_clock = lambda: 100.0
    s.watcher.follow(facts, run_id=4, same_run=True)  # what Service.resync does
    for t in range(0, 80, 5):
        s.at(t, msi_rows(100 + t))
    assert "VA6009" not in [e["rule"] for e in s.emitted]
    s.watcher.follow(facts, run_id=5, same_run=False)  # a STARTED event: a new run
    s.at(85, msi_rows(200))
    assert [e["rule"] for e in s.emitted].count("VA6009") == 1
