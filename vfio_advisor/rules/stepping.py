"""How runtime rules step: the sampled state they share, and the stepper
that runs every runtime rule of the registry in its order.

A runtime rule (a Rule with a `transition`, in its family module) is one
object: its transition, a pure function over its own state slot; the
slot's value at a run's start (`initial`); when a finding of it still holds
(`holds`, for the metrics file and the closing of findings); when it rests
(`rests`, below); its examples (fires_on, silent_on). Rules that share a
transition (VA6004/VA6005, one storm with two outcomes) share its slot and
its `rests`.

    device transition: (own, state: DeviceState, sample: DeviceSample,
                        elapsed, config) -> (own, findings)
    host transition:   (own, sample: HostSample, elapsed, config)
                        -> (own, findings)

`own` is the rule's slot. A transition returns the very same object when
nothing changed (the stepper then copies nothing), and HELD when it holds
its finding back for lack of evidence: the stepper then reports the rule's
`held_back` text once, as an Inconclusive note. The daemon's Watcher knows
none of this: it hands each device's sample to RuntimeRules.step_device.
Nothing here does I/O.

Resting. Most devices, most of the time, are in a state where no transition
can do anything: on MSI-X, settled, counting, nothing flagged. A rule's
`rests(own, state, sample, config)` says so of its slot: True promises that
the transition returns `own` itself and no finding at every later sample
while
  - the device keeps state.mode and the same vectors (the sampled table's
    shape for it is unchanged), and
  - the sample's per-run parts stay as `sample` has them: whether it is
    settled (since_start >= config.settle), facts, device, previous_run,
    isolated_cpus, host_can_count_msi, host_msi_possible, guest_change,
    run_id, booted_at, whether vector_affinity is read at all (pinned or
    isolated CPUs), and the config,
whatever the counts, rate and delta, the values of vector_affinity,
sibling_on_intx and said. step_device says in Step.rests whether every
device transition rests; the Watcher then only counts the device
(observe_resting) until one of those parts changes, which it watches
(daemon/watch.py, Watcher._step). tests/rules/test_runtime_rests.py holds
each rule's `rests` to that promise on states and samples hypothesis draws,
and tests/daemon/test_resting.py the Watcher to the full step's findings
and snapshots at every sample.
"""

from __future__ import annotations

from typing import NamedTuple

_tuple_new = tuple.__new__

from vfio_advisor.facts.model import AssignedDevice, DomainFacts, HostInterrupts
from vfio_advisor.findings import Finding, Inconclusive

# A slot value that means "the finding is held back: the sample proves
# nothing either way" (an idle counter). Entering it makes one note.
HELD = "held"


class DeviceState(NamedTuple):
    """One device's state across the samples of one domain run: observe()'s
    bookkeeping, which every rule reads, and one slot per device transition
    (RuntimeRules order), each written by its own rule only."""

    bdf: str
    mode: str = "unknown"
    previous_mode: str = "unknown"  # mode at the sample before
    counts: tuple[tuple[str, int], ...] = ()  # (irq, cumulative count) per vfio vector
    rate: float = 0.0  # interrupts/s over the last interval
    delta: int = 0  # new interrupts over the last interval
    ever_counted: bool = False
    # False while the host cannot count the device's vectors (MSI posted to
    # the guest, DeviceSample.host_can_count_msi): its counts say nothing.
    # True again from the first sample whose counts rose in that mode: the
    # host handler ran, so those vectors are not posted after all (_counted).
    observable: bool = True
    slots: tuple = ()  # empty: each rule's initial value (a new run)


# _counted builds each DeviceState positionally, in this order.
_STATE_FIELDS = ("bdf", "mode", "previous_mode", "counts", "rate", "delta", "ever_counted", "observable",
                 "slots")
if DeviceState._fields != _STATE_FIELDS:
    raise ImportError(f"DeviceState's fields changed ({DeviceState._fields}): update _counted")


class GuestChange(NamedTuple):
    """A change of the device's interrupt setting inside the guest, recorded
    by `fix --guest --apply` in the state directory (guest/changes.py)."""

    at: str  # when, UTC, as recorded ("2026-12-06T01:02:03Z")
    epoch: float  # the same, host wall-clock seconds
    target: str  # what was changed (the plan step's purpose)
    os: str  # the guest OS: windows | linux | unknown
    run_id: object = None  # libvirt's domain ID at the change, None if not known


class DeviceSample(NamedTuple):
    """What one sample shows of one device, and what the rules may read with it."""

    interrupts: HostInterrupts  # facts.model.device_interrupts over the sampled rows
    since_start: float  # seconds since the domain run started
    facts: DomainFacts  # the domain's static facts (device, siblings, guest OS, pinning)
    device: AssignedDevice
    sibling_on_intx: frozenset[str] = frozenset()  # BDFs of its card's functions now on INTx
    previous_run: dict = {}  # the state file's entry (RuntimeRules.remembered) of the last run
    vector_affinity: tuple[tuple[str, frozenset[int]], ...] = ()  # smp_affinity_list per vector
    isolated_cpus: frozenset[int] = frozenset()  # isolcpus | nohz_full
    # Rule.said_key of the findings emitted earlier in this sample: what one
    # sample must say once only (a storm on a host line that several
    # assigned devices share).
    said: frozenset[str] = frozenset()
    # False when KVM posts the MSI vectors to the vCPU (VT-d posted
    # interrupts, AMD AVIC with IOMMU guest vAPIC) and the host's vfio-msi
    # handler never runs: no rate, "none" or affinity inference for them.
    host_can_count_msi: bool = True
    # False when the host forbids MSI for the device (pci=nomsi, msi_bus=0):
    # a guest remedy could not help.
    host_msi_possible: bool = True
    # The last recorded guest change of the device's setting, None if none;
    # libvirt's domain ID of this run; host wall-clock time of the guest's
    # last boot that the daemon saw (a start or a reboot event), None when
    # it started before the daemon followed it.
    guest_change: GuestChange | None = None
    run_id: object = None
    booted_at: float | None = None


class HostSample(NamedTuple):
    """What one sample shows of the host as a whole."""

    rows_skipped: int  # /proc/interrupts rows the sampler could not parse


class Step(NamedTuple):
    """One device's step: its new state, the findings to emit, the
    findings held back for lack of evidence (said once each), and whether
    every device transition now rests (module docstring)."""

    state: DeviceState
    findings: list[Finding]
    inconclusive: list[Inconclusive]
    rests: bool = False


def observe(state: DeviceState, sample: DeviceSample, elapsed: float | None) -> DeviceState:
    """The bookkeeping every runtime rule reads: mode, counts, rate."""
    irq = sample.interrupts
    mode = irq.mode if irq.mode in ("intx", "msi", "msix") else "none"
    observable = mode not in ("msi", "msix") or sample.host_can_count_msi
    return _counted(state, mode, irq.vector_counts, elapsed, observable)


def observe_resting(state: DeviceState, vector_counts, elapsed: float | None) -> DeviceState:
    """observe() for a resting device (module docstring): its mode, vectors
    and observability are the last sample's, only its counts are new."""
    return _counted(state, state.mode, vector_counts, elapsed, state.observable)


def _counted(state: DeviceState, mode: str, vector_counts, elapsed: float | None,
             observable: bool) -> DeviceState:
    before = state.counts
    # The daemon's steady case: the same vectors as at the last sample, in its
    # (sorted, unique) order; one pass, without the dicts and the sort below
    # (a few us of a ~50 us sample per device, bench/daemon_bench.py).
    rise = _rise(vector_counts, before) if len(vector_counts) == len(before) else None
    if rise is not None:
        counts = tuple(vector_counts)
    else:
        counts = tuple(sorted(dict(vector_counts).items()))
        known = dict(before)
        rise = sum(max(total - known.get(i, total), 0) for i, total in counts)
    if mode == state.mode and elapsed and elapsed > 0:
        delta = rise
        rate = delta / elapsed
    else:
        delta, rate = 0, 0.0
    # An INTx line's count is cumulative since host boot and may include
    # other handlers' interrupts, so a non-zero line does not prove this
    # device ever interrupted; but "none at all" must not be said of a
    # device that may have: only an all-zero count is taken as none.
    ever = state.ever_counted or delta > 0 or any(c for _, c in counts)
    if not observable and mode == state.mode and (state.observable or delta > 0):
        # A vfio-msi/-msix counter rose: vfio's host handler ran, which a
        # posted vector never does. Posting is the host's capability, not a
        # promise for every vector: KVM leaves a vector in remapped mode when
        # APICv is inhibited (Hyper-V SynIC AutoEOI, which Windows guests use
        # with hv-synic: arch/x86/kvm/hyperv.c synic_update_vector) or its
        # MSI targets more than one vCPU (kvm_intr_is_single_vcpu in
        # vmx_pi_update_irte / avic_pi_update_irte, Linux 6.1). From then on
        # the device is counted, for as long as it keeps this mode.
        observable = True
    # state._replace(mode=..., previous_mode=state.mode, counts=..., rate=...,
    # delta=..., ever_counted=..., observable=...), spelled out: _replace
    # builds a dict and maps over the fields, twice the cost of the call, and
    # _make is a Python frame of its own (a twelfth of a daemon sample at 512
    # resting devices, py-spy); it runs for every device at every sample. The
    # fields are checked at import (_STATE_FIELDS), so a field added to
    # DeviceState fails there instead of being reset;
    # tests/rules/test_observe_counts.py checks this against _replace.
    return _tuple_new(DeviceState, (state.bdf, mode, state.mode, counts, rate, delta, ever, observable,
                                    state.slots))


def _rise(now, before) -> int | None:
    """New interrupts from `before` to `now` (both (irq, count) pairs) when
    they name the same vectors in the same order, else None. A count that
    fell (a vector freed and set up again) adds nothing, as in observe."""
    rise = 0
    for (irq, total), (was_irq, was) in zip(now, before):
        if irq != was_irq:
            return None
        if total > was:
            rise += total - was
    return rise


class RuntimeRules:
    """Every runtime rule of a registry, stepped in registry order (each
    shared transition once, at its first rule's place)."""

    def __init__(self, rules):
        device, host, initial, host_initial, rests = [], [], [], [], []
        self.by_id = {}
        self._owner: dict = {}  # transition -> its rules
        for rule in rules:
            fn = rule.transition
            if fn is None:
                continue
            self.by_id[rule.id] = rule
            if fn in self._owner:
                if rule.initial != self._owner[fn][0].initial:
                    raise ValueError(f"{rule.id} shares a transition but not its initial state")
                if rule.rests is not self._owner[fn][0].rests:
                    raise ValueError(f"{rule.id} shares a transition but not when it rests")
                self._owner[fn].append(rule)
                continue
            self._owner[fn] = [rule]
            if rule.scope == "device":
                device.append(fn)
                initial.append(rule.initial)
                rests.append(rule.rests)
            else:
                host.append(fn)
                host_initial.append(rule.initial)
        self.device_transitions = tuple(device)
        # None where a transition never rests: then no device does.
        self.device_rests = None if None in rests else tuple(rests)
        self.host_transitions = tuple(host)
        self.initial = tuple(initial)
        self.host_initial = tuple(host_initial)
        self._slot = {fn: i for i, fn in enumerate(device)}
        # (slot index, key in the state file, slot -> value) of the slots kept across runs
        self._remembered = tuple((self._slot[r.transition], *r.remembered)
                                 for r in self.by_id.values() if r.remembered)

    def rules_of(self, transition) -> list:
        return self._owner[transition]

    def slot_of(self, transition) -> int:
        """Where a device transition's slot is in DeviceState.slots."""
        return self._slot[transition]

    def own(self, rule, state: DeviceState):
        """A device rule's slot in `state`."""
        return (state.slots or self.initial)[self._slot[rule.transition]]

    def new_device(self, bdf: str) -> DeviceState:
        return DeviceState(bdf, slots=self.initial)

    def step_device(self, state: DeviceState, sample: DeviceSample, elapsed: float | None,
                    config) -> Step:
        """One sample of one device: the bookkeeping, then every device transition."""
        state = observe(state, sample, elapsed)
        slots = state.slots or self.initial
        changed = None
        findings: list[Finding] = []
        held: list[Inconclusive] | tuple = ()
        for own, transition in zip(slots, self.device_transitions):
            got, found = transition(own, state, sample, elapsed, config)
            if found:
                findings += found
            if got is not own:  # rare: a slot changed
                if changed is None:
                    changed = list(slots)
                changed[self._slot[transition]] = got
                if got == HELD and own != HELD:
                    held = [*held, *self._held(transition, state, sample, config)]
        if changed is not None or not state.slots:
            slots = tuple(changed if changed is not None else slots)
            state = state._replace(slots=slots)
        rests = self.device_rests is not None
        if rests:
            for own, rest in zip(slots, self.device_rests):
                if not rest(own, state, sample, config):
                    rests = False
                    break
        # Step(state, findings, held, rests) without the NamedTuple's
        # __new__ frame: it runs for every device that does not rest.
        return _tuple_new(Step, (state, findings, held, rests))

    def _held(self, transition, state, sample, config) -> list[Inconclusive]:
        out = []
        for rule in self._owner[transition]:
            if rule.held_back is not None:
                out.append(Inconclusive(rule.id, sample.facts.domain.name, sample.device.address,
                                        rule.held_back(state, sample, config)))
        return out

    def step_host(self, slots: tuple, sample: HostSample, elapsed: float | None,
                  config) -> tuple[tuple, list[Finding]]:
        """One sample of the host-wide rules; `slots` () at the daemon's start."""
        slots = slots or self.host_initial
        changed, findings = None, []
        for own, transition in zip(slots, self.host_transitions):
            got, found = transition(own, sample, elapsed, config)
            if found:
                findings += found
            if got is not own:
                if changed is None:
                    changed = list(slots)
                changed[self.host_transitions.index(transition)] = got
        return (slots if changed is None else tuple(changed)), findings

    def holds(self, rule_id: str, state: DeviceState | None) -> bool:
        """Does an emitted finding of `rule_id` still hold for a device in
        `state` (None: the device is gone)? A rule without `holds` stays
        open while its domain runs (the daemon, for host-wide rules)."""
        rule = self.by_id.get(rule_id)
        if rule is None or rule.holds is None:
            return True
        if state is None:
            return False
        return bool(rule.holds(self.own(rule, state), state))

    def open_until(self) -> list[tuple[object, str]]:
        """(rule, when an emitted finding of it closes), in registry order:
        its `holds` docstring, or the run of what it is about."""
        out = []
        for rule in self.by_id.values():
            if rule.holds is not None:
                out.append((rule, " ".join(rule.holds.__doc__.split())))
            elif rule.scope == "device":
                out.append((rule, "the domain stops"))
            else:
                out.append((rule, "the daemon stops (host-wide)"))
        return out

    def said_key(self, finding: Finding) -> str | None:
        rule = self.by_id.get(finding.rule_id)
        return rule.said_key(finding) if rule is not None and rule.said_key is not None else None

    def remembered_entry(self, state: DeviceState) -> dict:
        """What the state file keeps of a device for its domain's next run
        (DeviceSample.previous_run): its mode, and each rule's `remembered`
        value of its slot. It changes only when the mode or a slot does, so a
        caller compares (mode, slots) at each sample and builds this on change."""
        slots = state.slots or self.initial
        entry = {"mode": state.mode}
        for i, key, value in self._remembered:
            entry[key] = value(slots[i])
        return entry
