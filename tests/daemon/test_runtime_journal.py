"""Runtime advice on input the lab cannot produce (rows cut mid-word, as a
terminal-width copy of /proc/interrupts has them). Everything a real kernel
can show is tested on the lab's captures: tests/lab/test_lab_captures.py."""

from __future__ import annotations


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
