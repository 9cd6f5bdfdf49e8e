"""observe(): the bookkeeping every runtime rule reads. Its steady-case fast
path (same vectors as the last sample, issue 12) must give exactly what the
general rule gives: new interrupts summed over vectors, a count that fell
(a vector freed and set up again) adding nothing, a vector new since the
last sample adding nothing."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_advisor.facts.model import HostInterrupts
from vfio_advisor.rules.runtime import DeviceSample, DeviceState, observe

IRQS = st.sampled_from([str(n) for n in range(24, 40)])
COUNTS = st.dictionaries(IRQS, st.integers(0, 2**40), max_size=8)


def reference_delta(before: dict, now: dict) -> int:
    return sum(max(c - before.get(i, c), 0) for i, c in sorted(now.items()))


def sample_of(mode: str, counts: dict) -> DeviceSample:
    irq = HostInterrupts(mode, (), None, (), None, None,
                         vector_counts=tuple(sorted(counts.items())))
    return DeviceSample(interrupts=irq, since_start=100.0, facts=None, device=None)


@settings(max_examples=300, deadline=None)
@given(before=COUNTS, now=COUNTS, same_vectors=st.booleans())
def test_delta_and_rate_equal_the_general_rule(before, now, same_vectors):
    if same_vectors:  # the daemon's steady case: the vectors of the last sample
        now = {irq: now.get(irq, c) for irq, c in before.items()}
    state = DeviceState("0000:01:00.0", mode="msix", counts=tuple(sorted(before.items())))
    after = observe(state, sample_of("msix", now), 5.0)
    assert after.delta == reference_delta(before, now)
    assert after.rate == after.delta / 5.0
    assert after.counts == tuple(sorted(now.items()))


def test_a_mode_change_counts_no_delta():
    state = DeviceState("0000:01:00.0", mode="intx", counts=(("28", 100),))
    after = observe(state, sample_of("msi", {"28": 500}), 5.0)
    assert (after.delta, after.rate, after.mode, after.previous_mode) == (0, 0.0, "msi", "intx")
