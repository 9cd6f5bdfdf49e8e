"""The daemon's service against libvirt's test driver: it follows domains as
they are defined, started and destroyed, and tells systemd."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run():
    out = subprocess.run([sys.executable, str(REPO / "tests/daemon/testdriver_run.py")],
                         capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_follows_domains_through_their_lifecycle(run):
    steps = dict((name, state) for name, state in run["steps"])
    assert steps["at start"] == {"test": []}  # test:///default's own running domain
    assert steps["defined, not started"] == {"test": []}
    assert steps["started"]["gpuvm"] == ["0000:05:00.0", "0000:05:00.1"]
    assert steps["transient started"]["nvmevm"] == ["0000:06:00.0"]
    assert "gpuvm" not in steps["destroyed"] and "nvmevm" in steps["destroyed"]
    assert steps["transient destroyed"] == {"test": []}
    assert steps["started and destroyed at once"] == {"test": []}
    assert run["vanished"] is True  # the step's domain was really gone when the daemon looked
    assert steps["vanished"] == {"test": []}
    assert steps["after the vanished one"]["after"] == ["0000:06:00.0"]
    assert steps["stopped while its gathering ran"] == {"test": []}
    assert steps["slow, left running"]["slow"] == ["0000:06:00.0"]  # the slow path does follow


def test_a_slow_gathering_holds_neither_the_loop_nor_the_sampling(run):
    assert run["sampled_while_gathering"] is True


def test_notifies_systemd(run):
    notes = run["notes"]
    assert notes.index("READY=1") < notes.index("STOPPING=1")
    assert "STATUS=watching 2 VMs, 2 devices" in notes
    assert "STATUS=watching 3 VMs, 3 devices" in notes
    assert notes[-1] == "STOPPING=1"


def test_logs_its_own_lifecycle_and_samples(run):
    assert run["events"][0] == "started" and run["events"][-1] == "stopped"
    assert run["sampled"]

def test_boot_time_intx_is_advice_only_after_settle(run):
    # the audio counted on INTx at every sample before the settle time: no advice
    assert run["findings_before_settle"] == []
    # the same, past the settle time: VA6001 (so the first assertion can fail)
    assert run["findings_after_settle"] == ["VA6001"]
