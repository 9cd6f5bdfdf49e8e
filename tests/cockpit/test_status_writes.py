"""When the status sink (sinks/status.py) rewrites its file: at a sample
after someone read it (its atime passed its mtime), else after half the
Cockpit page's staleness limit, and at every sample on a noatime mount.
The reads are real reads of a real file (the test's tmp directory, a
relatime or strictatime mount as Debian mounts them)."""

from __future__ import annotations

import json
import os
import time

import pytest

from vfio_advisor.sinks.base import DeviceSnapshot, SampleEvent
from vfio_advisor.sinks.status import StatusFileSink, atime_updates, device_points


def sample(sink: StatusFileSink, now: float) -> None:
    device = DeviceSnapshot("vm", "0000:01:00.0", "msi", int(now) * 10, 10.0, True)
    sink.event(SampleEvent(now, now, 5.0, lambda: [device], list))


def updated(path) -> float:
    return json.loads(path.read_bytes())["daemon"]["updated"]


@pytest.fixture
def sink(tmp_path):
    if not atime_updates(str(tmp_path / "status.json")):
        pytest.skip(f"{tmp_path} is on a noatime mount: a read never shows there")
    return StatusFileSink(str(tmp_path / "status.json"), interval=5.0, clock=lambda: 0.0)


def read_later(path) -> None:
    """A read the way the page's poll comes: later than the write (atime
    and mtime come from the kernel's coarse clock, a tick of up to 10 ms)."""
    time.sleep(0.03)
    with open(path, "rb") as f:
        f.read()


def test_unread_it_is_rewritten_after_half_the_pages_staleness_limit(sink, tmp_path):
    path = tmp_path / "status.json"
    assert sink.unread_rewrite == 15.0  # max(3 x 5 s, 30 s) / 2
    stats = []
    for now in (1000.0, 1005.0, 1010.0, 1015.0, 1020.0):
        sample(sink, now)
        stats.append(os.stat(path).st_mtime_ns)
    # Written at 1000 and at 1015 only; nothing read it in between (stat is no read).
    assert stats[0] == stats[1] == stats[2] != stats[3] == stats[4]
    assert updated(path) == 1015.0


def test_a_read_brings_the_next_sample(sink, tmp_path):
    path = tmp_path / "status.json"

    def written() -> int:  # stat(2) is no read: the file's last write
        return os.stat(path).st_mtime_ns

    sample(sink, 1000.0)
    first = written()
    sample(sink, 1005.0)
    assert written() == first  # nobody read it
    read_later(path)  # the page's poll
    sample(sink, 1010.0)
    second = written()
    assert second != first
    sample(sink, 1015.0)
    assert written() == second  # not read since
    read_later(path)
    sample(sink, 1020.0)
    assert written() != second
    doc = json.loads(path.read_bytes())
    assert doc["daemon"]["updated"] == 1020.0
    # The window holds every sample, written or not.
    assert [p[0] for p in device_points(doc, doc["devices"][0])] == [1000.0, 1005.0, 1010.0, 1015.0, 1020.0]


def test_close_always_writes(sink, tmp_path):
    path = tmp_path / "status.json"
    sample(sink, 1000.0)
    sample(sink, 1005.0)
    sink.close()
    doc = json.loads(path.read_bytes())
    assert doc["daemon"]["running"] is False and len(device_points(doc, doc["devices"][0])) == 2


def test_noatime_mount_means_every_sample(tmp_path):
    here = os.path.realpath(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    # proc(5)'s example line, with the test directory's mount point (a space escaped as \040).
    line = "36 35 98:0 / {point} rw,{opts} master:1 - ext3 /dev/root rw,errors=continue\n"
    mountinfo.write_text(line.format(point="/", opts="relatime")
                         + line.format(point=here.replace(" ", "\\040"), opts="noatime"))
    assert atime_updates(str(tmp_path / "status.json"), str(mountinfo)) is False
    mountinfo.write_text(line.format(point="/", opts="noatime")
                         + line.format(point=here.replace(" ", "\\040"), opts="relatime"))
    assert atime_updates(str(tmp_path / "status.json"), str(mountinfo)) is True
    assert atime_updates(str(tmp_path / "status.json"), str(tmp_path / "missing")) is False
    sink = StatusFileSink(str(tmp_path / "status.json"), interval=5.0, clock=lambda: 0.0)
    sink._atime_updates = False  # what atime_updates said of a noatime mount
    for now in (1000.0, 1005.0, 1010.0):
        sample(sink, now)
        assert updated(tmp_path / "status.json") == now
