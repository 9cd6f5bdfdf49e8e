"""Runtime rules through the daemon's Watcher, with expectations written out
here rather than taken from the product (tests/rules/test_runtime_fastpath.py
compares the transitions with copies built on the product's own
STORM_HYSTERESIS and _settled, so a change to either moves both sides):

- the storm hysteresis: a storm ends, and may be reported again, only when
  the rate falls below half of storm_rate; a rate between half and the
  threshold keeps it going (one storm, one report);
- the settle time: a sample exactly `settle` seconds after the start counts;
- VA6001 never fires for a device without MSI (the NEC OHCI), whatever its
  INTx does: the remedy "enable MSI in the guest" would be impossible;
- Watcher.follow(same_run=True) with a libvirt domain ID other than the
  followed run's is a new run: settle time and flags start over.

Imports: tests.daemon.scenarios (Scenario, intx_rows), the Watcher and
StateStore of vfio_advisor.daemon, Config, and the example hosts of
tests/rules/examples.py; nothing of vfio_advisor/rules/runtime.py.
"""

from __future__ import annotations

from tests.daemon.scenarios import Clock, Scenario, intx_rows
from tests.rules.examples import NEC, _hostdev, _ioapic_row, _ir_interrupts, _legacy_pci
from vfio_advisor.config import Config
from vfio_advisor.facts.domain import parse_domain_xml
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.pciids import PciIds
from vfio_advisor.daemon.state import StateStore
from vfio_advisor.daemon.watch import Watcher
from vfio_advisor.sinks.base import CallbackSink
from vfio_advisor.testing.hosttree import Host, build
from vfio_advisor.testing.scenes import domain_xml

# Independent of the defaults (storm_rate 20000, storm_samples 3): the
# thresholds below are this test's own.
STORM = Config(interval=5, settle=60, storm_rate=1000.0, storm_samples=2)
STEP = 5  # seconds between samples


def run(scenario: Scenario, rates: dict[int, float], rule: str) -> list[int]:
    """Sample at each second of `rates` (INTx/s over the STEP before it,
    0 for the first); the seconds at which `rule` was emitted."""
    count, fired = 0, []
    for t, rate in sorted(rates.items()):
        count += int(rate * STEP)
        found = scenario.at(t, intx_rows(count))
        fired += [t] * sum(1 for f in found if f.rule_id == rule)
    return fired


def test_storm_hysteresis_is_half_the_threshold(tmp_path):
    s = Scenario(tmp_path, config=STORM)
    rates = {
        45: 0,
        50: 1200, 55: 1200,  # before the settle time: not counted
        60: 1200,  # settled (exactly 60 s): 1st sample above 1000/s
        65: 1200,  # 2nd in a row: reported
        70: 560,  # below the threshold, above half of it: the same storm
        75: 1200, 80: 1200,  # still that storm: not reported again
        85: 440,  # below half: over
        90: 1200, 95: 1200,  # a new storm: reported
    }
    assert run(s, rates, "VA6004") == [65, 95]


def test_settle_counts_from_exactly_settle_seconds(tmp_path):
    s = Scenario(tmp_path, config=STORM)
    assert run(s, {45: 0, 50: 100, 55: 100, 60: 100, 65: 100}, "VA6001") == [60]


# --- VA6001 needs a device that can do MSI ----------------------------------

def nec_watcher(tmp_path, clock: Clock, emitted: list) -> tuple[Watcher, object]:
    """The NEC uPD720101 OHCI (no MSI capability in its config dump) assigned
    to a Linux guest and alone on host IRQ 17."""
    host = Host(devices=_legacy_pci(nec_irq=17), interrupts=_ir_interrupts({}, gpu=False))
    build(tmp_path, host)
    watcher = Watcher(HostRoot(tmp_path), STORM, CallbackSink(lambda f, d: emitted.append(f)), StateStore(None),
                      clock=clock, pci_ids=PciIds(None))
    watcher.add_domain(parse_domain_xml(domain_xml("usbvm", [_hostdev(NEC, (0x00, 0x10, 0))], os="linux")))
    return watcher, host


def test_stays_on_intx_is_silent_for_a_device_without_msi(tmp_path):
    clock, emitted = Clock(), []
    watcher, _ = nec_watcher(tmp_path / "nec", clock, emitted)
    assert watcher.domains["usbvm"].facts.devices[0].device.supports_msi is False
    count = 0
    for t in range(55, 130, STEP):
        clock.now = 1000.0 + t
        count += 100 * STEP
        row = _ioapic_row(17, [count, 0, 0, 0, 0, 0, 0, 0], [f"vfio-intx({NEC})"])
        (tmp_path / "nec/proc/interrupts").write_text(_ir_interrupts({17: row}, gpu=False))
        watcher.sample()
    modes = {d.mode for d in watcher.domains["usbvm"].devices.values()}
    assert modes == {"intx"}  # it was followed on INTx, counting 100/s
    assert [f.rule_id for f in emitted] == []
    # The control: the MSI-capable HDMI audio with the same counts gets it.
    s = Scenario(tmp_path / "audio", config=STORM)
    assert run(s, {t: (0 if t == 55 else 100) for t in range(55, 130, STEP)}, "VA6001") == [60]


# --- a new run announced as the same one --------------------------------------

def test_same_run_with_another_domain_id_starts_over(tmp_path):
    def flagged_then_readded(work, run_id) -> list[int]:
        s = Scenario(work, config=STORM)
        s.watcher.add_domain(s.domain, run_id=1)  # libvirt's domain ID of the run followed
        count, fired = 0, []
        for t in range(55, 200, STEP):
            if t == 70:
                s.clock.now = 1000.0 + t
                s.watcher.add_domain(s.domain, run_id=run_id, same_run=True)
            count += 100 * STEP
            fired += [t for f in s.at(t, intx_rows(count)) if f.rule_id == "VA6001"]
        return fired

    # Domain ID 2: a new run (libvirt gives each start a new ID): the flag is
    # gone and the settle time counts from the re-add at 70 s.
    assert flagged_then_readded(tmp_path / "new", 2) == [60, 130]
    # The same ID: a device added to the run we follow; its state is kept.
    assert flagged_then_readded(tmp_path / "same", 1) == [60]
