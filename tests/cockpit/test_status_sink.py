"""The status sink (sinks/status.py) behind a real Watcher: a device's rolling
window, bounded in time, and when its finding opened and closed, in the file
the Cockpit page reads. The sink is one of the Watcher's sinks, as the
daemon wires it (daemon/service.py): it gets begin, each finding and each
SampleEvent. Fast (no browser); the page side is test_page.py."""

from __future__ import annotations

import json

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from vfio_advisor.sinks.base import DeviceSnapshot, SampleEvent
from vfio_advisor.sinks.status import MAX_POINTS, SCHEMA, StatusFileSink, device_points

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
    points = device_points(doc, audio)
    # only the last 30 s stay, each point the Watcher's rate at that sample
    assert [p[0] for p in points] == [1055.0, 1060.0, 1065.0, 1070.0, 1075.0, 1080.0, 1085.0]
    assert all(p[1] == round(rates[p[0]][AUDIO], 3) for p in points)
    assert [p[2] for p in points][-3:] == ["intx", "msi", "msi"]
    assert audio["modes"] == [[1000.0, "intx"], [1080.0, "msi"]]
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


def test_rates_line_up_with_the_end_of_times(tmp_path):
    """A device's rates are the rates at the last len(rates) `times`
    (docs/cockpit.md): one joining late has fewer, a device given twice in
    a sample still one, one that leaves and comes back a new window. Its
    mode runs start where its mode changed, and a run leaves once the
    window no longer holds any of its samples."""
    path = tmp_path / "status.json"
    sink = StatusFileSink(str(path), window=30.0, clock=lambda: 0.0, unread_rewrite=0)
    gpu, nic = ("vm", "0000:01:00.0"), ("vm", "0000:02:00.0")

    def sample(now, *devices):
        sink.event(SampleEvent(now, now, 5.0, lambda: [DeviceSnapshot(*key, mode, int(now), rate, rate is not None)
                                                       for key, mode, rate in devices], list))
        doc = json.loads(path.read_text())
        return doc, {(d["domain"], d["bdf"]): d for d in doc["devices"]}

    sample(1000.0, (gpu, "intx", 1.0))
    sample(1005.0, (gpu, "intx", 2.0))
    # The nic joins, and is given twice (the second is not a point of its own).
    doc, devs = sample(1010.0, (gpu, "intx", 3.0), (nic, "msix", 30.0), (nic, "msi", 31.0))
    assert doc["times"] == [1000.0, 1005.0, 1010.0]
    assert devs[gpu]["rates"] == [1.0, 2.0, 3.0] and devs[nic]["rates"] == [30.0]
    assert devs[nic]["mode"] == "msix" and devs[nic]["modes"] == [[1010.0, "msix"]]
    # The gpu's driver moves it to MSI; the nic is posted (null rates).
    doc, devs = sample(1015.0, (gpu, "msi", 4.0), (nic, "msix", None))
    doc, devs = sample(1020.0, (gpu, "msi", 5.0), (nic, "msix", None))
    assert devs[gpu]["modes"] == [[1000.0, "intx"], [1015.0, "msi"]]
    assert device_points(doc, devs[gpu]) == [[1000.0, 1.0, "intx"], [1005.0, 2.0, "intx"], [1010.0, 3.0, "intx"],
                                             [1015.0, 4.0, "msi"], [1020.0, 5.0, "msi"]]
    assert device_points(doc, devs[nic]) == [[1010.0, 30.0, "msix"], [1015.0, None, "msix"],
                                             [1020.0, None, "msix"]]
    # 30 s on, the window starts at 1015: the intx run ended there and leaves.
    for now in (1025.0, 1030.0, 1035.0, 1040.0):
        doc, devs = sample(now, (gpu, "msi", 6.0), (nic, "msix", 7.0))
    assert doc["times"] == [1010.0, 1015.0, 1020.0, 1025.0, 1030.0, 1035.0, 1040.0]
    doc, devs = sample(1045.0, (gpu, "msi", 8.0), (nic, "msix", 9.0))
    assert doc["times"] == [1015.0, 1020.0, 1025.0, 1030.0, 1035.0, 1040.0, 1045.0]
    assert devs[gpu]["modes"] == [[1015.0, "msi"]] and devs[nic]["modes"] == [[1010.0, "msix"]]
    assert len(devs[gpu]["rates"]) == len(devs[nic]["rates"]) == 7
    assert device_points(doc, devs[nic])[0] == [1015.0, None, "msix"]
    # The nic leaves, and comes back with a new window; the gpu goes back to
    # INTx: its msi run began before the window and stays, the first.
    doc, devs = sample(1050.0, (gpu, "intx", 10.0))
    assert list(devs) == [gpu]
    doc, devs = sample(1055.0, (gpu, "intx", 11.0), (nic, "msi", 12.0))
    assert devs[nic]["rates"] == [12.0] and devs[nic]["modes"] == [[1055.0, "msi"]]
    assert devs[gpu]["modes"] == [[1015.0, "msi"], [1050.0, "intx"]]
    assert device_points(doc, devs[gpu])[-3:] == [[1045.0, 8.0, "msi"], [1050.0, 10.0, "intx"],
                                                  [1055.0, 11.0, "intx"]]
    # At a short interval MAX_POINTS caps the times and the windows alike.
    for k in range(MAX_POINTS + 5):
        doc, devs = sample(1060.0 + k / 100, (gpu, "intx", 1.0), (nic, "msi", 2.0))
    assert len(doc["times"]) == len(devs[gpu]["rates"]) == len(devs[nic]["rates"]) == MAX_POINTS
    assert devs[gpu]["modes"] == [[1050.0, "intx"]] and doc["times"][0] == 1060.05
