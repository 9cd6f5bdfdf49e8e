"""The Watcher works a device's interrupts out with the model
(facts.model.device_interrupts) only when the sampled table's shape changed
(Sampler.shape); between, it carries the model's result over with the new
counts (daemon.watch.Watcher._interrupts). This checks that shortcut
against the model itself at every sample: over each lab scenario's real
captures (a symlinked root the replay swaps, as the fleet tier does), with
the vfio vectors' counts moving in place between swaps, and over a sharer
joining the INTx line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.lab.moments import Replay, moments

from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.model import device_interrupts
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import RuntimeConfig, Watcher
from vfio_advisor.sinks.base import CallbackSink

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
DOMAINS = REPO / "tests/data/domains/lab"
# scenario -> (its domain XML in tests/data/domains/lab, its moments)
SCENARIOS = {name: (xml, moments(name)) for name, xml in
             (("switch", "switch"), ("stays-intx", "edu"), ("storm-shared", "shared"))}


def checked_watcher(root: Path, domain: str):
    clock = {"now": 100.0}
    w = Watcher(HostRoot(str(root)), RuntimeConfig(settle=0), CallbackSink(lambda f, d: None), StateStore(None),
                clock=lambda: clock["now"], pci_ids=PciIds(None))
    w.add_domain(parse_domain_xml((DOMAINS / f"{domain}.xml").read_bytes()))
    seen = {"fast": 0, "slow": 0, "checked": 0}
    real = w._interrupts
    real_model = device_interrupts

    def compare(dom, assigned, sampled, shape):
        cached = dom.interrupts.get(assigned.address)
        fast = cached is not None and cached[0] == shape
        got = real(dom, assigned, sampled, shape)
        # The table as the sampler builds it when asked (Sampled.table),
        # after the shortcut took its totals only.
        assert got == real_model(assigned.address, assigned.device, sampled.table), (assigned.address, shape)
        for irq, n in got.vector_counts:  # and the counts are the kernel's, as they move
            pcc = root / f"sys/kernel/irq/{irq}/per_cpu_count"
            if pcc.exists():
                assert n == sum(map(int, pcc.read_text().split(","))), (irq, n)
        seen["fast" if fast else "slow"] += 1
        seen["checked"] += 1
        return got

    w._interrupts = compare
    return w, clock, seen


def bump(root: Path, step: int) -> None:
    """Every per_cpu_count of the tree takes `step` more on its first CPU, in place."""
    for pcc in (root / "sys/kernel/irq").glob("*/per_cpu_count"):
        counts = pcc.read_text().strip().split(",")
        counts[0] = str(int(counts[0]) + step)
        with open(pcc, "r+") as f:
            f.write(",".join(counts) + "\n")
            f.truncate()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_cached_interrupts_equal_the_model_at_every_sample(scenario, tmp_path):
    domain, moments = SCENARIOS[scenario]
    replay = Replay(tmp_path, moments)
    copies = replay.copies
    w, clock, seen = checked_watcher(replay.root, domain)
    for i, copy in enumerate(copies):
        if i:
            replay.step(i)
        for step in range(4):
            clock["now"] += 5
            w.sample()
            bump(copy, step + 1)
    assert seen["checked"] == len(copies) * 4 * w.device_count
    assert seen["fast"] > 0 and seen["slow"] > 0, seen


def test_a_sharer_joining_the_line_is_worked_out_again(tmp_path):
    root = tmp_path / "stays"
    shutil.copytree(CAPTURES / "stays-intx-4", root, symlinks=True)
    w, clock, seen = checked_watcher(root, "edu")
    for _ in range(3):
        clock["now"] += 5
        w.sample()
    actions = root / "sys/kernel/irq/23/actions"
    text = actions.read_text().strip()
    with open(actions, "r+") as f:
        f.write(text + ",ehci_hcd:usb9\n")
    slow = seen["slow"]
    clock["now"] += 5
    w.sample()
    assert seen["slow"] == slow + 1
    dom = next(iter(w.domains.values()))
    assert "ehci_hcd:usb9" in dom.interrupts["0000:00:03.0"][1].shared_with
