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


def _cut_rows_found(tmp_path, config) -> list:
    """Rows cut mid-word at every sample, as above; everything the Watcher returned."""
    from tests.daemon.scenarios import Scenario, intx_rows

    s = Scenario(tmp_path, config=config)
    found = []
    for t in range(0, 30, 5):
        s.at(t, intx_rows(1000 * (t + 1)))
        text = (s.root / "proc/interrupts").read_text()
        cut = "\n".join(line[:40] if "vfio-intx" in line else line for line in text.splitlines())
        (s.root / "proc/interrupts").write_text(cut + "\n")
        found += s.watcher.sample()
    return found, s


def test_disabled_rules_silence_the_host_wide_finding_too(tmp_path):
    """[daemon] disabled_rules holds for the host-wide finding about rows the
    sampler skipped, by ID or by slug, as for every per-device finding."""
    from vfio_advisor.config import Config
    from vfio_advisor.rules import lookup

    rule = lookup("VA8003")
    for name in (rule.id, rule.slug):
        found, s = _cut_rows_found(tmp_path / name, Config(interval=5, settle=60, disabled=frozenset({name})))
        assert rule.id not in [f.rule_id for f in found], name
        assert rule.id not in [e["rule"] for e in s.emitted], name
    # and without it, the same input reports it (the check above can fail)
    found, _ = _cut_rows_found(tmp_path / "none", Config(interval=5, settle=60))
    assert [f.rule_id for f in found].count(rule.id) == 1
