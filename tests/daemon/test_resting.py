"""A Watcher whose devices rest (rules/stepping.py, "Resting": only their
counts are taken while no rule can speak) against one that steps every
device through every rule at every sample: the same findings, held-back
notes, device states and open findings, sample by sample.

Over each lab scenario's real captures (a symlinked root the replay swaps),
with the counts moving in place between samples as the kernel's do (on one
CPU, on another, idle, reset to 0), the settle time passed in the middle, a
guest reboot, and a config reloaded (SIGHUP); and over a generated host
whose audio function goes MSI -> INTx (storming) -> MSI. A resting path
that missed a change of mode, settledness, reboot or config fails here on
the sample after it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.daemon.scenarios import Scenario, intx_rows, msi_rows
from tests.daemon.test_sample_fastpath import move
from tests.lab.moments import STEPPED, Replay, moments
from vfio_advisor.daemon import watch
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.rules.stepping import GuestChange

DOMAINS = Path(__file__).resolve().parents[2] / "tests/data/domains/lab"
XML = {"stays-intx": "edu", "switch": "switch", "storm-shared": "shared", "isolcpus": "edu",
       "nomsi": "edu", "modes": "modes"}
MOVES = ("same-cpu", "idle", "other-cpu", "same-cpu", "reset", "every-cpu", "same-cpu")


EDU = "0000:00:03.0"


def counting_rests(monkeypatch) -> dict:
    """How many times a device took the resting path (observe_resting)."""
    seen = {"n": 0}
    real = watch.observe_resting

    def counted(*args):
        seen["n"] += 1
        return real(*args)

    monkeypatch.setattr(watch, "observe_resting", counted)
    return seen


class Recorder:
    """Every finding and held-back note a sink gets, in order."""

    def __init__(self):
        self.said = []

    def begin(self, facts):
        pass

    def emit(self, finding, domain=None):
        self.said.append(("finding", finding.rule_id, finding.subject, finding.message))

    def event(self, event):
        if getattr(event, "kind", None) == "inconclusive" or hasattr(event, "rule_id"):
            self.said.append(("held", event.rule_id, getattr(event, "subject", None), event.message))

    def close(self, summary=None):
        pass


class Pair:
    """Two watchers on one tree and one clock: `resting` rests its devices,
    `stepped` never does."""

    def __init__(self, root: Path, config):
        self.now = 100.0
        self.sinks = {}
        self.watchers = {}
        for name in ("resting", "stepped"):
            sink = Recorder()
            w = Watcher(HostRoot(str(root)), config, [sink], StateStore(None), clock=lambda: self.now,
                        pci_ids=PciIds(None), wall_clock=lambda: 1000.0 + self.now)
            if name == "stepped":
                w.rest_devices = False
            self.sinks[name], self.watchers[name] = sink, w

    def add(self, xml: bytes) -> None:
        for w in self.watchers.values():
            w.add_domain(parse_domain_xml(xml))

    def sample(self, seconds: float = 5.0) -> None:
        self.now += seconds
        got = {name: w.sample() for name, w in self.watchers.items()}
        a, b = self.watchers["resting"], self.watchers["stepped"]
        assert [f.key for f in got["resting"]] == [f.key for f in got["stepped"]]
        assert self.sinks["resting"].said == self.sinks["stepped"].said
        assert a.snapshot() == b.snapshot()
        assert a.open_findings() == b.open_findings()
        for name, dom in a.domains.items():
            assert dom.devices == b.domains[name].devices, name
        assert not any(dom.resting for dom in b.domains.values())

    def each(self, fn) -> None:
        for w in self.watchers.values():
            fn(w)


@pytest.mark.parametrize("scenario", sorted(set(STEPPED) | {"modes"}))
def test_resting_devices_say_what_stepped_ones_say(scenario, tmp_path, monkeypatch):
    rested = counting_rests(monkeypatch)
    replay = Replay(tmp_path, moments(scenario))
    pair = Pair(replay.root, RuntimeConfig(settle=22, storm_rate=50.0, storm_samples=2))
    pair.add((DOMAINS / f"{XML[scenario]}.xml").read_bytes())
    step = 0
    for i, copy in enumerate(replay.copies):
        if i:
            replay.step(i)
        for how in MOVES:
            step += 1
            pair.sample()
            move(copy, step, how)
        if i == 0:
            # A guest reboot: settle time and boot start over.
            pair.each(lambda w: w.rebooted(next(iter(w.domains))))
    # A config reloaded (SIGHUP) with a storm threshold every counting line crosses.
    pair.each(lambda w: setattr(w, "config", RuntimeConfig(settle=22, storm_rate=0.01, storm_samples=1)))
    for how in MOVES:
        step += 1
        pair.sample()
        move(replay.copies[-1], step, how)
    assert rested["n"] > 0


def test_a_resting_device_wakes_for_a_mode_change_and_a_storm(tmp_path):
    # This tree has no /sys/kernel/irq: the sampler reads /proc/interrupts at
    # every sample and calls each a new shape, so a device found resting is
    # woken by the shape at the next sample; the two watchers still agree.
    scenes = {}
    for name in ("resting", "stepped"):
        scenes[name] = Scenario(tmp_path / name, config=RuntimeConfig(interval=5, settle=20,
                                                                       storm_rate=100.0, storm_samples=2))
    scenes["stepped"].watcher.rest_devices = False
    a, b = scenes["resting"], scenes["stepped"]
    count = 1000
    # MSI and counting, past the settle time: rests; then INTx storming, then MSI again.
    timeline = [msi_rows] * 8 + [intx_rows] * 6 + [msi_rows] * 4
    for k, rows in enumerate(timeline):
        count += 5000
        got_a, got_b = a.at(5.0 * (k + 1), rows(count)), b.at(5.0 * (k + 1), rows(count))
        assert [f.key for f in got_a] == [f.key for f in got_b]
        assert a.watcher.snapshot() == b.watcher.snapshot()
        for name, dom in a.watcher.domains.items():
            assert dom.devices == b.watcher.domains[name].devices
    assert a.emitted == b.emitted and a.journal == b.journal
    assert {e["rule"] for e in a.emitted} >= {"VA6001", "VA6004", "VA6002"}, a.emitted


def test_a_reboot_wakes_resting_devices_for_a_recorded_guest_change(tmp_path, monkeypatch):
    # settle=0: the reboot does not unsettle the domain, so only the reboot
    # itself can tell the resting edu (on vfio-msi at switch-3) that a guest
    # change recorded before it is due.
    rested = counting_rests(monkeypatch)
    replay = Replay(tmp_path, ["switch-3"])
    pair = Pair(replay.root, RuntimeConfig(settle=0))
    pair.add((DOMAINS / "switch.xml").read_bytes())
    change = GuestChange("2026-12-06T01:00:00Z", 0.5, "options edu msi=1", "linux")
    for step, how in enumerate(MOVES):
        pair.sample()
        move(replay.copies[0], step + 1, how)
        if step == 2:
            def reboot(w):
                w.store.guest_changes = lambda name: {EDU: change}
                w.rebooted(next(iter(w.domains)))
            assert rested["n"] > 0  # the edu rests before the reboot
            pair.each(reboot)
    said = pair.sinks["resting"].said
    assert ("finding", "VA6009") in [(kind, rule) for kind, rule, bdf, _ in said if bdf == EDU], said


def test_the_snapshot_follows_domains_that_come_and_go(tmp_path):
    """Watcher.snapshot keeps its sorted order between samples: a domain
    followed, one whose devices changed (same run), and one removed each
    show at the next sample, sorted as a fresh sort would put them."""
    replay = Replay(tmp_path, ["modes"])
    pair = Pair(replay.root, RuntimeConfig(settle=0))
    w = pair.watchers["resting"]

    def fresh():
        return [(name, bdf) for name in sorted(w.domains) for bdf in sorted(w.domains[name].devices)]

    modes = (DOMAINS / "modes.xml").read_bytes()
    edu = (DOMAINS / "edu.xml").read_bytes()
    w.add_domain(parse_domain_xml(modes.replace(b"lab-modes", b"zz-modes")))
    w.sample()
    assert [(d.domain, d.bdf) for d in w.snapshot()] == fresh() and len(fresh()) == 3
    w.add_domain(parse_domain_xml(edu))  # sorts before the first
    w.sample()
    assert [(d.domain, d.bdf) for d in w.snapshot()] == fresh() and len(fresh()) == 4
    # The same run with one device less (a detach-device: DEVICE_REMOVED).
    fewer = modes.replace(b"lab-modes", b"zz-modes")
    start = fewer.index(b"<hostdev")
    w.add_domain(parse_domain_xml(fewer[:start] + fewer[fewer.index(b"</hostdev>", start) + 10:]), same_run=True)
    w.sample()
    assert [(d.domain, d.bdf) for d in w.snapshot()] == fresh() and len(fresh()) == 3
    w.remove_domain("lab-edu")
    w.sample()
    assert [(d.domain, d.bdf) for d in w.snapshot()] == fresh() and len(fresh()) == 2
