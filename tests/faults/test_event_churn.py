"""200 lifecycle events in 30 s (100 transient domains started and
destroyed, each under a new name, as a CI host or a VM-per-job host does),
then one that stays: the daemon sees every event, follows exactly what
runs, and keeps nothing per domain it no longer follows (RSS flat).
The daemon's Service runs in a child (tests/faults/churn_run.py) on libvirt's
test driver, with real gathering children."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.faults.support import REPO, build_host

CYCLES = 100


def test_churn_loses_no_event_and_leaks_nothing(tmp_path):
    root = build_host(tmp_path / "host")
    out = subprocess.run([sys.executable, "-m", "tests.faults.churn_run", str(root), str(CYCLES), "30"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout)
    assert got["events_seen"] == 2 * CYCLES + 1  # every start and stop, and the last start
    # test:///default's own domain "test" runs throughout (no hostdev).
    assert got["followed"] == ["churn-last", "test"] and got["devices"] == 2
    assert got["status"] == "STATUS=watching 2 VMs, 2 devices"
    # Nothing kept per stopped domain: one generation per followed name,
    # the sampler watches the two live devices, no stopped domain's findings.
    assert got["generations"] <= 2 and got["watched"] == 2, got
    assert got["open"] <= 2, got
    rss = {int(k): v for k, v in got["rss_kib"].items()}
    grew = rss[CYCLES] - rss[CYCLES // 4]
    assert grew < 512, f"RSS grew {grew} KiB over {CYCLES - CYCLES // 4} start/stop cycles: {rss}"
    assert "Traceback" not in out.stderr
