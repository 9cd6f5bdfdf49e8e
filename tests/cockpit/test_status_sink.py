"""The status sink (sinks/status.py) behind a real Watcher: a device's rolling
window, bounded in time, and when its finding opened and closed, in the file
the Cockpit page reads. The sink is one of the Watcher's sinks, as the
daemon wires it (daemon/service.py): it gets begin, each finding and each
SampleEvent. Fast (no browser); the page side is test_page.py."""

from __future__ import annotations

import json

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from vfio_advisor.sinks.base import SampleEvent
from vfio_advisor.sinks.status import SCHEMA, StatusFileSink

AUDIO = "0000:05:00.1"


def test_window_rates_and_finding_marks(tmp_path):
    s = Scenario(tmp_path)
    path = tmp_path / "state/status.json"
    # Rewritten at every sample (unread_rewrite=0), as while a page reads
    # it: this is about what the file says; test_status_writes.py is about when.
    sink = StatusFileSink(str(path), "test:///default", str(s.root), 5.0, window=30.0, clock=s.clock,
                          unread_rewrite=0)
    s.watcher.wall_clock = s.clock
    s.watcher.sinks.append(sink)
    emitted_at = {}
    rates = {}

    def at(t, rows):
        for f in s.at(t, rows):
            emitted_at.setdefault((f.rule_id, f.subject), s.clock())
        rates[s.clock()] = {d.bdf: d.rate for d in s.watcher.snapshot()}

    count = 0
    for t in range(0, 80, 5):  # the audio counts 600/s on INTx past the settle time: VA6001
        count += 3000
        at(t, intx_rows(count))
    at(80, msi_rows(10))  # the guest driver moved it to MSI: VA6002, VA6001 closes
    at(85, msi_rows(510))
    doc = json.loads(path.read_text())
    assert doc["schema"] == SCHEMA and doc["daemon"]["running"] is True
    assert doc["daemon"]["updated"] == 1085.0
    [audio] = [d for d in doc["devices"] if d["bdf"] == AUDIO]
    # only the last 30 s stay, each point the Watcher's rate at that sample
    assert [p[0] for p in audio["points"]] == [1055.0, 1060.0, 1065.0, 1070.0, 1075.0, 1080.0, 1085.0]
    assert all(p[1] == round(rates[p[0]][AUDIO], 3) for p in audio["points"])
    assert [p[2] for p in audio["points"]][-3:] == ["intx", "msi", "msi"]
    rules = {(f["rule"], f["subject"]): f for f in doc["findings"]}
    va6001 = rules[("VA6001", AUDIO)]
    assert va6001["opened"] == emitted_at[("VA6001", AUDIO)] and va6001["closed"] == 1080.0
    assert rules[("VA6002", AUDIO)]["opened"] == emitted_at[("VA6002", AUDIO)] == 1080.0
    # the file is replaced whole: no temporary left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["status.json"]
    sink.close()
    doc = json.loads(path.read_text())
    assert doc["daemon"]["running"] is False
    assert all(f["closed"] is not None for f in doc["findings"])


def test_a_stopped_domain_leaves_the_file(tmp_path):
    s = Scenario(tmp_path)
    path = tmp_path / "status.json"
    sink = StatusFileSink(str(path), clock=s.clock, unread_rewrite=0)
    s.at(0, intx_rows(10))
    sink.event(SampleEvent(s.clock(), s.clock(), None, s.watcher.snapshot, list))
    assert {d["domain"] for d in json.loads(path.read_text())["devices"]} == {"win11"}
    s.watcher.remove_domain("win11")
    s.at(5, intx_rows(20))
    sink.event(SampleEvent(s.clock(), s.clock(), None, s.watcher.snapshot, list))
    assert json.loads(path.read_text())["devices"] == []


def test_without_a_state_directory_nothing_is_written(tmp_path):
    sink = StatusFileSink(None)
    sink.event(SampleEvent(1.0, 1.0, None, list, list))
    sink.close()
    assert list(tmp_path.iterdir()) == []
