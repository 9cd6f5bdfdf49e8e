"""The runtime transitions' early exits against the transitions as they
were before them, on every runtime example's real sample and on states
hypothesis draws.

The transitions test their cheapest, state-only conditions first, so that a
steady device costs no call per sample. Each exit may be taken only where the
old function returned the state unchanged and no finding; REFERENCE below is
the old code, verbatim (before commit 645bf33, when each rule still kept a
flag in one shared 15-field state: OldState), and every draw must give the
same (state, findings) from both, the new rules' slots read as those flags.
Two differences on purpose: VA6001 now holds back (HELD) where an idle
INTx line proves nothing; read as a flag that is "not flagged", as before.
And VA6001's and VA6006's messages say how long the guest had run when
they fired, not the settle time (one fired 161 s after the start, held back
while the line was idle, and said "10 s"): the reference says it the same way.
And VA6002 now also fires where a sample with no vector fell between INTx
and MSI (a guest reboot's device reset, runtime.intx_or_msi): the
reference's switch condition reads the same.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from typing import NamedTuple

from tests.rules.runtime_examples import RUNTIME_EXAMPLES
from vfio_advisor.rules import RUNTIME, runtime
from vfio_advisor.rules.runtime import (
    FLAGGED, STORM_HYSTERESIS, Finding, _make, _msi_capable, _name, _remedy, _settled, _since_start,
    _storm_remedy, cpulist,
)


class OldState(NamedTuple):
    """DeviceState as it was, one flag per rule."""

    bdf: str
    mode: str = "unknown"
    previous_mode: str = "unknown"
    counts: tuple = ()
    rate: float = 0.0
    delta: int = 0
    ever_counted: bool = False
    flagged_intx: bool = False
    storming: int = 0
    storm_reported: bool = False
    reported_none: bool = False
    regression_checked: bool = False
    affinity: tuple = ()
    observable: bool = True
    reported_posted: bool = False


def old_of(state) -> OldState:
    """The new state (bookkeeping and slots) as the old flags."""
    own = dict(zip(RUNTIME.device_transitions, state.slots or RUNTIME.initial))
    storming, storm_reported = own[runtime.intx_storm]
    return OldState(state.bdf, state.mode, state.previous_mode, state.counts, state.rate, state.delta,
                    state.ever_counted, own[runtime.intx_or_msi] == FLAGGED, storming, storm_reported,
                    own[runtime.no_interrupts], own[runtime.msi_to_intx_regression],
                    own[runtime.affinity_overlap], state.observable, own[runtime.msi_posted])


def new_of(state, old: OldState):
    """`state` (new) with the bookkeeping and slots of `old`."""
    own = {runtime.intx_or_msi: FLAGGED if old.flagged_intx else None,
           runtime.msi_to_intx_regression: old.regression_checked,
           runtime.intx_storm: (old.storming, old.storm_reported),
           runtime.no_interrupts: old.reported_none, runtime.affinity_overlap: old.affinity,
           runtime.msi_posted: old.reported_posted}
    return state._replace(mode=old.mode, previous_mode=old.previous_mode, counts=old.counts,
                          rate=old.rate, delta=old.delta, ever_counted=old.ever_counted,
                          observable=old.observable,
                          # a rule the old code did not have starts at its initial slot
                          slots=tuple(own.get(t, RUNTIME.initial[RUNTIME.slot_of(t)])
                                      for t in RUNTIME.device_transitions))


class OldSample:
    """A new DeviceSample read as the old one (storm_lines, not said)."""

    def __init__(self, sample):
        self._sample = sample
        self.storm_lines = frozenset(k.rsplit(" ", 1)[-1] for k in sample.said)

    def __getattr__(self, name):
        return getattr(self._sample, name)


# --- the transitions before the early exits (verbatim) ------------------------

def switched_to_msi(state, sample, elapsed, config):
    """VA6002: INTx -> MSI after we (or the previous run) had flagged it."""
    if not (state.previous_mode in ("intx", "none") and state.mode in ("msi", "msix")):
        return state, []
    out = []
    if state.flagged_intx or sample.previous_run.get("flagged_intx"):
        out = _make("VA6002", sample,
                    f"{_name(sample)} switched from INTx to {state.mode.upper()}: the guest driver "
                    "now uses message-signalled interrupts.",
                    evidence={"mode": f"intx -> {state.mode}"})
    return state._replace(flagged_intx=False), out


def stays_on_intx(state, sample, elapsed, config):
    """VA6001: settled, MSI-capable, and INTx still counting."""
    if (not _settled(sample, config) or state.mode != "intx" or not _msi_capable(sample)
            or state.delta <= 0 or state.flagged_intx):
        return state, []
    irq = sample.interrupts
    # /proc/interrupts counts per line, not per handler.
    shared = (f" (shared with {', '.join(irq.shared_with)}, so part of that may be theirs)"
              if irq.shared_with else "")
    return state._replace(flagged_intx=True), _make(
        "VA6001", sample,
        f"{_name(sample)} supports MSI but is still on INTx {_since_start(sample)}: "
        f"host IRQ {irq.intx_label} counts {state.rate:.0f}/s{shared}.",
        _remedy(sample), {"rate": f"{state.rate:.1f}", "irq": irq.intx_label})


def msi_to_intx_regression(state, sample, elapsed, config):
    """VA6003: MSI in the previous run of the domain, INTx in this one."""
    if not _settled(sample, config) or state.regression_checked or state.mode == "none":
        return state, []
    state = state._replace(regression_checked=True)
    before = sample.previous_run.get("mode")
    if state.mode != "intx" or before not in ("msi", "msix") or not _msi_capable(sample):
        return state, []
    return state, _make(
        "VA6003", sample,
        f"{_name(sample)} used {before.upper()} in the previous run of this "
        "domain and is on INTx now. " + (
            "A guest driver update may have reset the guest's MSI setting."
            if sample.host_msi_possible else
            "The host now forbids MSI for it, so the guest could not keep it."),
        _remedy(sample), {"previous mode": before, "mode": state.mode})


def intx_storm(state, sample, elapsed, config):
    """VA6004 (line not shared) / VA6005 (shared): storm_samples samples in a
    row at storm_rate or more; over once the rate falls below half of it."""
    if not _settled(sample, config):
        return state, []
    if state.mode == "intx" and state.rate >= config.storm_rate:
        state = state._replace(storming=state.storming + 1)
        if state.storming < config.storm_samples or state.storm_reported:
            return state, []
        state = state._replace(storm_reported=True)
        irq = sample.interrupts
        line = irq.intx_label
        if line in sample.storm_lines:
            # /proc/interrupts counts the line: with several handlers on it
            # we cannot say whose interrupts these are, so say it once.
            return state, []
        rule = "VA6005" if irq.shared_with else "VA6004"
        where = (f"shared with {', '.join(irq.shared_with)}, any of which may raise them"
                 if irq.shared_with else "not shared")
        return state, _make(rule, sample,
                            f"Interrupt storm: host IRQ {line} of {_name(sample)} counts "
                            f"{state.rate:.0f} INTx/s ({where}) for {state.storming} samples "
                            "in a row.", _storm_remedy(sample, rule),
                            evidence={"rate": f"{state.rate:.0f}", "irq": line,
                                      "threshold": f"{config.storm_rate:g}"})
    if (state.storming or state.storm_reported) and state.rate < config.storm_rate * STORM_HYSTERESIS:
        # Only a storm (or its run-up) to end: a quiet device's state is not rebuilt each sample.
        state = state._replace(storming=0, storm_reported=False)
    return state, []


def no_interrupts(state, sample, elapsed, config):
    """VA6006: settled and not one interrupt counted."""
    if not _settled(sample, config) or not state.observable:
        return state, []  # posted MSI: a flat count is no evidence of silence
    if state.ever_counted:
        # Rebuilt only when it changes: the steady case costs no _replace per sample.
        return (state._replace(reported_none=False) if state.reported_none else state), []
    if state.reported_none:
        return state, []
    return state._replace(reported_none=True), _make(
        "VA6006", sample,
        f"{_name(sample)} has raised no interrupt at all {_since_start(sample)}"
        + (" (no vfio vectors are set up)" if state.mode == "none" else "") + ".")


def affinity_overlap(state, sample, elapsed, config):
    """VA6007: a vector whose smp_affinity_list meets pinned vCPU or isolated CPUs."""
    if not _settled(sample, config) or not state.observable:
        return state, []  # posted MSI never runs the host handler on those CPUs
    pinned = sample.facts.domain.pinned_cpus
    isolated = sample.isolated_cpus
    if not pinned and not isolated:
        return state, []
    reported = dict(state.affinity)
    out: list[Finding] = []
    for irq, cpus in sample.vector_affinity:
        overlap = cpus & (pinned | isolated)
        if overlap == reported.get(irq, frozenset()):
            continue
        reported[irq] = overlap
        if not overlap:
            continue
        what = []
        if cpus & pinned:
            what.append(f"the domain's pinned vCPU CPUs {cpulist(cpus & pinned)}")
        if cpus & isolated:
            what.append(f"isolated CPUs {cpulist(cpus & isolated)} (isolcpus/nohz_full)")
        out += _make(
            "VA6007", sample,
            f"Host IRQ {irq} of {_name(sample)} may run on {' and '.join(what)} "
            f"(smp_affinity_list {cpulist(cpus)}): its handler then preempts those CPUs.",
            f"Point it at the host's housekeeping CPUs: echo <cpus> > /proc/irq/{irq}/smp_affinity_list "
            "(irqbalance may undo that; see its --banirq), or set irqaffinity= on the host "
            "kernel command line. vfio-advisor only advises; it never changes affinity.",
            {"irq": irq, "smp_affinity_list": cpulist(cpus)})
    return state._replace(affinity=tuple(sorted(reported.items()))), out


def switched_then_stays(state, sample, elapsed, config):
    """VA6002's and VA6001's transitions in the old order, for their one new slot."""
    state, first = switched_to_msi(state, sample, elapsed, config)
    state, then = stays_on_intx(state, sample, elapsed, config)
    return state, first + then


REFERENCE = {runtime.intx_or_msi: switched_then_stays,
             runtime.msi_to_intx_regression: msi_to_intx_regression, runtime.intx_storm: intx_storm,
             runtime.no_interrupts: no_interrupts, runtime.affinity_overlap: affinity_overlap}
DEVICE_EXAMPLES = sorted(n for n in RUNTIME_EXAMPLES if n not in ("rt-rows-cut", "rt-rows-clean"))


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    return {n: RUNTIME_EXAMPLES[n](tmp_path_factory.mktemp(n)) for n in DEVICE_EXAMPLES}


MODES = st.sampled_from(["intx", "msi", "msix", "none", "unknown"])


@st.composite
def variations(draw):
    state = dict(
        mode=draw(MODES), previous_mode=draw(MODES),
        delta=draw(st.sampled_from([0, 1, 5000])), ever_counted=draw(st.booleans()),
        flagged_intx=draw(st.booleans()), storming=draw(st.sampled_from([0, 1, 3])),
        storm_reported=draw(st.booleans()), reported_none=draw(st.booleans()),
        regression_checked=draw(st.booleans()), observable=draw(st.booleans()),
        reported_posted=draw(st.booleans()))
    sample = dict(since_start=draw(st.sampled_from([0.0, 10.0, 60.0, 120.0])),
                  isolated_cpus=draw(st.sampled_from([frozenset(), frozenset({1}), frozenset({0, 2, 3})])),
                  vcpu_cpuset=draw(st.sampled_from([frozenset(), frozenset({0, 1}), frozenset({5})])),
                  previous_run=draw(st.sampled_from([{}, {"mode": "msi", "flagged_intx": True}])))
    config = dict(settle=draw(st.sampled_from([0.0, 60.0])), storm_rate=draw(st.sampled_from([1.0, 20000.0])),
                  storm_samples=draw(st.integers(1, 3)))
    # the rate around the storm threshold and its hysteresis, boundaries included
    state["rate"] = config["storm_rate"] * draw(st.sampled_from([0.0, 0.4, 0.5, 0.9, 1.0, 3.0]))
    return draw(st.sampled_from(DEVICE_EXAMPLES)), state, sample, config


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(variations())
def test_early_exits_equal_the_transitions_before_them(steps, case):
    name, state_fields, sample_fields, config_fields = case
    state, sample, elapsed, config = steps[name]
    old = old_of(state)._replace(**state_fields)
    state = new_of(state, old)
    cpuset = sample_fields.pop("vcpu_cpuset")
    if cpuset:  # a domain whose vCPUs are pinned (<vcpu cpuset=...>): VA6007 reads them
        domain = sample.facts.domain._replace(vcpu_pins=(), vcpu_cpuset=cpuset)
        sample = sample._replace(facts=sample.facts._replace(domain=domain))
    sample = sample._replace(**sample_fields)
    config = config._replace(**config_fields)
    for fn, ref in REFERENCE.items():
        i = RUNTIME.slot_of(fn)
        own, found = fn(state.slots[i], state, sample, elapsed, config)
        got = old_of(state._replace(slots=state.slots[:i] + (own,) + state.slots[i + 1:]))
        want = ref(old, OldSample(sample), elapsed, config)
        assert got == want[0], (fn.__name__, name, got, want[0])
        assert found == want[1], (fn.__name__, name, [f.message for f in found], [f.message for f in want[1]])


def test_the_draws_start_from_real_samples(steps):
    # facts, vectors and smp_affinity_list from the examples' host trees
    assert len(steps) >= 20
    assert any(s[1].vector_affinity for s in steps.values())
    assert any(s[1].interrupts.mode == "intx" for s in steps.values())
    assert all(not s[1].facts.domain.vcpu_pins for s in steps.values())  # the cpuset draw pins them
