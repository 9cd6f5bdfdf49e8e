"""The daemon's state across runs: a damaged state file, a new run of a domain.

Filed by subject from a code review's regressions: each test reproduces one
defect found."""

from __future__ import annotations

import json


def test_damaged_state_file_does_not_stop_sampling(tmp_path):
    from vfio_advisor.daemon.state import StateStore

    (tmp_path / "state.json").write_text(json.dumps({"domains": {"dom": [], "other": "x"}}))
    store = StateStore(str(tmp_path))
    assert store.previous("dom", "0000:05:00.1") == {}
    store.record("dom", "0000:05:00.1", {"mode": "msi", "flagged_intx": False})
    assert StateStore(str(tmp_path)).previous("dom", "0000:05:00.1")["mode"] == "msi"


def test_reading_the_state_adds_nothing_to_the_file(tmp_path):
    """previous() runs for every device at every sample; a domain whose
    devices never settle into a mode recorded nothing, and its reads must
    leave no empty entry behind for the next save to write."""
    from vfio_advisor.daemon.state import StateStore

    store = StateStore(str(tmp_path))
    assert store.previous("never-recorded", "0000:05:00.0") == {}
    store.record("recorded", "0000:06:00.0", {"mode": "msix", "flagged_intx": False})
    saved = json.loads((tmp_path / "state.json").read_text())
    assert sorted(saved["domains"]) == ["recorded"]


def test_a_new_run_starts_over(tmp_path):
    from tests.daemon.scenarios import Scenario, intx_rows

    s = Scenario(tmp_path)
    count = 0
    for t in range(0, 80, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]
    # The VM restarts (new libvirt ID): settle time and flags start over.
    s.watcher.add_domain(s.domain, run_id=2)
    for t in range(80, 100, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001"]  # still settling
    for t in range(100, 160, 5):
        count += 3000
        s.at(t, intx_rows(count))
    assert [e["rule"] for e in s.emitted] == ["VA6001", "VA6001"]
