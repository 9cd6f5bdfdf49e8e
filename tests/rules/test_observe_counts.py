"""observe(): the bookkeeping every runtime rule reads. Its steady-case fast
path (same vectors as the last sample) must give exactly what the
general rule gives: new interrupts summed over vectors, a count that fell
(a vector freed and set up again) adding nothing, a vector new since the
last sample adding nothing."""

from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_advisor.facts.model import HostInterrupts
from vfio_advisor.rules.stepping import DeviceSample, DeviceState, observe

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


# Fields observe() sets; every other field of DeviceState must come through it
# unchanged (observe spells the state out field by field for speed, not
# _replace: a field it missed would be reset at every sample).
OBSERVED = {"mode", "previous_mode", "counts", "rate", "delta", "ever_counted", "observable"}


@settings(max_examples=100, deadline=None)
@given(flags=st.lists(st.booleans(), min_size=8, max_size=8), storming=st.integers(0, 9),
       mode=st.sampled_from(["intx", "msi", "msix", "none"]), posted=st.booleans())
def test_observe_keeps_every_field_it_does_not_set(flags, storming, mode, posted):
    # the rules' slots: any values, each kept as it is
    slots = (flags[0], (storming, flags[1]), flags[2], flags[3], (("45", frozenset({flags[4], 3})),), flags[5])
    values = {"slots": slots, "ever_counted": flags[6], "observable": flags[7]}
    assert set(DeviceState._fields) - OBSERVED - {"bdf"} <= values.keys(), "a new DeviceState field: add it here"
    state = DeviceState("0000:01:00.0", mode="msix", counts=(("45", 10),), **values)
    sample = sample_of(mode, {"45": 15})._replace(host_can_count_msi=not posted)
    after = observe(state, sample, 5.0)
    for field in DeviceState._fields:
        if field not in OBSERVED:
            assert getattr(after, field) == getattr(state, field), field
    assert (after.mode, after.previous_mode) == (mode, "msix")
    # On a posting host an MSI device is observable where its counts rose in
    # the mode it kept (here 10 -> 15 on msix): the host handler ran.
    assert after.observable == (mode not in ("msi", "msix") or not posted or mode == "msix")
    assert after.ever_counted is True  # a count above zero


def test_a_rising_count_makes_a_posted_device_observable_for_its_mode():
    """On a host that can post MSIs (host_can_count_msi False) a vfio-msi
    counter that rises shows the host handler ran: the device is counted
    from then on, for as long as it keeps the mode; flat counters leave it
    unobservable, and a new mode starts unobservable again."""
    posted = {"host_can_count_msi": False}
    state = DeviceState("0000:01:00.0")  # a run's start: mode unknown
    state = observe(state, sample_of("msi", {"51": 3})._replace(**posted), None)
    assert not state.observable  # a first sample: nothing rose yet
    state = observe(state, sample_of("msi", {"51": 3})._replace(**posted), 5.0)
    assert not state.observable  # flat, as posted vectors stay
    state = observe(state, sample_of("msi", {"51": 9})._replace(**posted), 5.0)
    assert state.observable and state.delta == 6
    state = observe(state, sample_of("msi", {"51": 9})._replace(**posted), 5.0)
    assert state.observable  # flat again: still counted, the handler ran this run
    state = observe(state, sample_of("msix", {"52": 9})._replace(**posted), 5.0)
    assert not state.observable  # MSI-X: other vectors, posted or not
    assert observe(state, sample_of("intx", {"28": 9})._replace(**posted), 5.0).observable  # INTx never posted
