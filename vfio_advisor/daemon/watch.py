"""The daemon's Watcher: follow running domains' vfio vectors sample by sample.

It only loops, stores and hands to its sinks (injected, sinks/base.py). Each sample its Sampler (facts/sampler.py)
reads the watched devices' vectors one IRQ at a time from /sys/kernel/irq
(the full /proc/interrupts only to rediscover them, or where sysfs lacks
them), the same model `advise` uses (facts.model.device_interrupts) turns
those rows into each device's HostInterrupts, and the runtime rules' pure
transitions (rules/runtime.py) step each device, except a device that rests
(rules/stepping.py, "Resting"): its counts alone are taken until what its
rules promised on changes (Watcher._step). The config's ignore policy
filters what it emits; a finding is emitted once per change of state, never
per sample. It also keeps which emitted findings are still open; each
sample ends with a SampleEvent (devices and open findings) for the sinks
that keep more than findings (the metrics file, sinks/metrics.py).
"""

from __future__ import annotations

import time
from operator import itemgetter
from typing import Callable, Sequence

from vfio_advisor.config import Config
from vfio_advisor.facts.domain import Domain
from vfio_advisor.facts.host import HostRoot
from vfio_advisor.facts.sampler import Sampler
from vfio_advisor.facts.model import DomainFacts, device_interrupts
from vfio_advisor.findings import Finding
from vfio_advisor.rules import RULES_BY_ID, RUNTIME
from vfio_advisor.rules.mode import host_blocks_msi
from vfio_advisor.rules.stepping import DeviceSample, DeviceState, HostSample, observe_resting
from vfio_advisor.daemon.state import StateStore, facts_to_keep
from vfio_advisor.sinks.base import DeviceSnapshot, OpenFinding, SampleEvent, Sink

_NO_ROW_SKIPPED = HostSample(0)

# Watcher._step builds each DeviceSample positionally: a field added to it,
# or two swapped, must fail here rather than shift every field after it.
_SAMPLE_FIELDS = ("interrupts", "since_start", "facts", "device", "sibling_on_intx", "previous_run",
                  "vector_affinity", "isolated_cpus", "said", "host_can_count_msi",
                  "host_msi_possible", "guest_change", "run_id", "booted_at")
if DeviceSample._fields != _SAMPLE_FIELDS:
    raise ImportError(f"DeviceSample's fields changed ({DeviceSample._fields}): update Watcher._step")
# Watcher.snapshot builds each DeviceSnapshot positionally too.
if DeviceSnapshot._fields != ("domain", "bdf", "mode", "count", "rate", "observable"):
    raise ImportError(f"DeviceSnapshot's fields changed ({DeviceSnapshot._fields}): update Watcher.snapshot")
_tuple_new = tuple.__new__
_second = itemgetter(1)

# One config type for all commands; the old name stays for callers.
RuntimeConfig = Config


class DomainState:
    def __init__(self, facts: DomainFacts, started_at: float, run_id: object = None,
                 can_count_msi: bool = True, booted_at: float | None = None,
                 guest_changes: dict | None = None):
        self.facts = facts
        # Wall-clock time of the guest's last boot seen (a start or reboot
        # event), None if it booted before we followed it; and the last
        # recorded guest change per BDF (StateStore.guest_changes).
        self.booted_at = booted_at
        self.guest_changes = guest_changes or {}
        # facts.platform.posting, once per domain add: with posted MSI the
        # host's vfio-msi counters stay flat while the device works.
        self.can_count_msi = can_count_msi
        self.started_at = started_at
        self.run_id = run_id  # libvirt's domain ID: a new ID is a new run
        self.devices: dict[str, DeviceState] = {d.address: RUNTIME.new_device(d.address) for d in facts.devices}
        # Per sample the same for the whole run (the static facts): worked out once.
        self.siblings = {d.address: tuple(s.address for s in facts.siblings(d)) for d in facts.devices}
        self.msi_possible = {d.address: not host_blocks_msi(facts, d) for d in facts.devices}
        # bdf -> (sampler shape, HostInterrupts, where its counts are in the table)
        self.interrupts: dict[str, tuple] = {}
        self.pinned = bool(facts.domain.pinned_cpus)
        self.recorded: dict[str, tuple] = {}  # bdf -> (mode, slots) last recorded
        # bdf -> the state file's entry (StateStore.previous) as the rules read
        # it: only StateStore.record, which _step calls, changes a followed
        # domain's entries, so it is read again only after a record.
        self.previous: dict[str, dict] = {}
        # The devices that rest (Step.rests), and whether the domain was
        # settled at the sample they were stepped at: a change wakes them.
        self.resting: set[str] = set()
        self.settled: bool | None = None

    @property
    def key(self) -> str:
        return self.facts.domain.uuid or self.facts.domain.name


class Watcher:
    # False: every device is stepped at every sample, resting or not
    # (tests/daemon/test_resting.py compares the two).
    rest_devices = True

    def __init__(self, host: HostRoot, config: Config, sinks: Sink | Sequence[Sink],
                 store: StateStore | None = None, clock: Callable[[], float] = time.monotonic,
                 pci_ids=None, note: Callable[[str], None] | None = None,
                 wall_clock: Callable[[], float] = time.time):
        self.host = host
        self.config = config
        self.sinks: list[Sink] = [sinks] if hasattr(sinks, "emit") else list(sinks)
        # The sample's wall-clock time for the sinks: Prometheus and a status
        # page compare it with time(), not with the monotonic clock.
        self.wall_clock = wall_clock
        self.store = store or StateStore(None)
        self.clock = clock
        self.domains: dict[str, DomainState] = {}
        # None: each add_domain's Engine reads pci.ids for its device names and
        # drops it. Held, the 1.3 MB text (Debian 12's hwdata) was 1.5 MiB of
        # the daemon's RSS for a lookup made once per domain event.
        self.pci_ids = pci_ids
        self.last_sample: float | None = None
        self.host_slots: tuple = ()  # the host-wide rules' state (RuntimeRules.step_host)
        self.kernel = None
        self._isolated: tuple = (object(), frozenset())  # (kernel facts, isolcpus | nohz_full)
        # The config and isolated CPUs the resting devices were stepped
        # with: either changing wakes every device (a SIGHUP's new config).
        self._rested_with: tuple = (None, None)
        # The daemon's own log line for host conditions said once (a sampler
        # fallback); findings go to the sinks.
        self.note = note or (lambda _msg: None)
        self.sampler = Sampler(host, self.note)
        # (domain, bdf or None, rule) of emitted findings whose condition may
        # still hold; open_findings() drops those that no longer do.
        self.open: dict[tuple[str | None, str | None, str], None] = {}
        # Names of the domains with a device on no vector at the last sample:
        # the only ones _drop_vanished looks at.
        self._without_vectors: set[str] = set()
        # (domain name, bdf, its domain's devices) of every followed device
        # in snapshot()'s order; None: to sort again (a domain or device came or went).
        self._order: list | None = None
        self.unreadable_reported = False

    # --- domains --------------------------------------------------------

    def add_domain(self, domain: Domain, started_at: float | None = None,
                   run_id: object = None, same_run: bool = False) -> DomainState:
        """Gather a running domain's facts in this process (the engine) and
        follow it; see follow(). The daemon gathers in a child process
        instead (vfio_advisor/daemon/gather_child.py) and calls follow()."""
        # The daemon never imports the engine (lxml: ~4 MiB of RSS for its life).
        from vfio_advisor.engine import Engine  # noqa: PLC0415

        facts = Engine(self.host, self.config, pci_ids=self.pci_ids).gather(domain)
        return self.follow(facts, started_at, run_id, same_run)

    def follow(self, facts: DomainFacts, started_at: float | None = None,
               run_id: object = None, same_run: bool = False) -> DomainState:
        """Follow a running domain from its gathered facts. `same_run`: new
        XML of a run we already follow (a device was added or removed), whose
        state is kept; a different `run_id` always starts afresh."""
        facts = facts_to_keep(facts)
        domain = facts.domain
        self.kernel = facts.host.kernel
        old = self.domains.get(domain.name)
        if old is not None and not (same_run and (run_id is None or run_id == old.run_id)):
            old = None  # a new run: settle time, flags and counters start over
        if old is not None:
            started_at = old.started_at
        # gather_host read facts.platform.posting with the host facts.
        # A run we see start (not one found running at a resync or a
        # device event) booted now; a run followed again keeps its boot.
        booted_at = old.booted_at if old is not None else (None if same_run else self.wall_clock())
        state = DomainState(facts, self.clock() if started_at is None else started_at, run_id,
                            can_count_msi=not facts.host.msi_posted, booted_at=booted_at,
                            guest_changes=self.store.guest_changes(domain.name))
        if old is not None:
            for bdf in state.devices:
                if bdf in old.devices:
                    state.devices[bdf] = old.devices[bdf]
        self.domains[domain.name] = state
        self._order = None
        now = self.wall_clock()
        self.store.seen(state.key, domain.name, now)
        if self.store.prune_due(now):
            # At a domain event, at most daily: what a host that runs VMs
            # under ever new UUIDs adds to the state file is bounded.
            self.store.prune(now, {d.key for d in self.domains.values()})
        self._update_wanted()
        for sink in self.sinks:
            sink.begin(facts)
        return state

    def rebooted(self, name: str) -> None:
        """The guest of a followed domain rebooted (libvirt's REBOOT event:
        QEMU reset the machine, same process and domain ID). vfio-pci's
        reset puts every device back on INTx (QEMU hw/vfio/pci.c,
        vfio_pci_pre_reset disables MSI/MSI-X), so the settle time starts
        over as at a start; the guest changes are read again, as one
        recorded before this reboot now takes effect."""
        dom = self.domains.get(name)
        if dom is None:
            return
        dom.started_at = self.clock()
        dom.booted_at = self.wall_clock()
        dom.guest_changes = self.store.guest_changes(name)
        dom.resting.clear()  # booted_at and guest_change are the samples' per-run parts

    def remove_domain(self, name: str) -> None:
        dom = self.domains.pop(name, None)
        self._order = None
        if dom is not None:
            self.store.seen(dom.key, name, self.wall_clock())  # its entry ages from its stop
        # open_findings() would drop them at its next call, but only a sink
        # that reads open findings (the metrics file) calls it: without one,
        # every stopped domain's findings stayed here for the daemon's life.
        for key in [k for k in self.open if k[0] == name]:
            del self.open[key]
        self._update_wanted()

    @property
    def device_count(self) -> int:
        return sum(len(d.devices) for d in self.domains.values())

    # --- sampling -------------------------------------------------------

    def _update_wanted(self) -> None:
        # A domain event: the sampler rediscovers new devices' vectors.
        self.sampler.watch((dev.address, dev.device) for dom in self.domains.values()
                           for dev in dom.facts.devices)

    def sample(self) -> list[Finding]:
        """Read the watched vectors once, step every watched device, emit
        what changed, and end with a SampleEvent to every sink."""
        now = self.clock()
        elapsed = (now - self.last_sample) if self.last_sample is not None else None
        if self.domains:
            self._drop_vanished()
            findings = self._step(now, elapsed)
        else:
            findings = []
            self.last_sample = now
        event = SampleEvent(self.wall_clock(), now, elapsed, self.snapshot, self.open_findings)
        for sink in self.sinks:
            sink.event(event)
        return findings

    def _step(self, now: float, elapsed: float | None) -> list[Finding]:
        if self.sampler.host is not self.host:  # a replay moved to another tree
            self.sampler.set_host(self.host)
        sampled, odd = self.sampler.sample_counts()
        if sampled is None:
            # Neither /proc/interrupts nor /sys/kernel/irq readable: modes
            # stay as they were; the sampler said why, once.
            if not self.unreadable_reported:
                self.unreadable_reported = True
                self.note("no interrupt counts readable (/proc/interrupts and /sys/kernel/irq); "
                          "device modes are unknown until they are (said once)")
            return []
        # The usual sample skips no row: one HostSample for all of them.
        host_sample = HostSample(odd) if odd else _NO_ROW_SKIPPED
        self.host_slots, findings = RUNTIME.step_host(self.host_slots, host_sample, elapsed, self.config)
        if findings:
            # Host-wide findings go through the same policy (disabled_rules;
            # no domain, so no per-domain ignore) as the devices' below.
            findings = [f for f in findings if not self._ignored(None, f.rule_id)]
        held = []
        said: set[str] = set()
        if self._isolated[0] is not self.kernel:
            isolated = frozenset()
            if self.kernel is not None and self.kernel.cmdline is not None:
                isolated = self.kernel.cmdline.isolcpus | self.kernel.cmdline.nohz_full
            self._isolated = (self.kernel, isolated)
        isolated = self._isolated[1]
        shape = getattr(self.sampler, "shape", None)
        config, store = self.config, self.store
        totals = sampled.totals
        if self._rested_with[0] is not config or self._rested_with[1] is not isolated:
            self._rested_with = (config, isolated)
            for dom in self.domains.values():
                dom.resting.clear()
        rest_devices = self.rest_devices
        step_device, remembered_entry = RUNTIME.step_device, RUNTIME.remembered_entry
        # The empty set sibling_on_intx and said hold most of the time: one
        # object for the sample, not a new one per device.
        none: frozenset = frozenset()
        without_vectors = self._without_vectors = set()
        for dom in list(self.domains.values()):
            devices, facts, key = dom.devices, dom.facts, dom.key
            since_start = now - dom.started_at
            settled = since_start >= config.settle
            resting, cache = dom.resting, dom.interrupts
            if dom.settled is not settled:
                dom.settled = settled
                resting.clear()
            # The domain's per-run values, looked up once for its devices.
            remembered, recorded_of = dom.previous, dom.recorded
            affinity = isolated or dom.pinned
            can_count, msi_possible, changes = dom.can_count_msi, dom.msi_possible, dom.guest_changes
            run_id, booted_at = dom.run_id, dom.booted_at
            for assigned in facts.devices:
                bdf = assigned.address
                if bdf in resting:
                    cached = cache.get(bdf)
                    if cached is not None and cached[0] == shape and cached[3] is assigned:
                        # Its vectors as at the last sample (the table's shape is the
                        # same): their counts, as _interrupts takes them, and no rule.
                        state = devices[bdf] = observe_resting(
                            devices[bdf], tuple([(i, totals[k]) for i, k in cached[2]]),
                            elapsed)
                        if state.mode == "none":
                            without_vectors.add(dom.facts.domain.name)
                        continue
                    resting.discard(bdf)
                irq = self._interrupts(dom, assigned, sampled, shape)
                siblings = dom.siblings[bdf]
                if siblings:
                    siblings = frozenset([s for s in siblings if devices[s].mode == "intx"])
                previous = remembered.get(bdf)
                if previous is None:
                    previous = remembered[bdf] = store.previous(key, bdf)
                # DeviceSample(interrupts=..., since_start=..., ...) in its
                # field order (_SAMPLE_FIELDS, checked at import), without
                # the NamedTuple's keyword __new__ (1.0 us against 0.15 us a
                # call, timeit on Python 3.11; it runs for every device at
                # every sample).
                sample = _tuple_new(DeviceSample, (
                    irq, since_start, facts, assigned, siblings or none, previous,
                    self.sampler.affinity(irq.vector_counts) if affinity else (),
                    isolated,
                    frozenset(said) if said else none,
                    can_count,
                    # pci=nomsi or msi_bus=0: the guest cannot get MSI whatever it
                    # sets, so no guest remedy (advise's static rule does the same).
                    msi_possible[bdf],
                    changes.get(bdf), run_id, booted_at))
                state, found, inconclusive, rests = step_device(devices[bdf], sample, elapsed, config)
                devices[bdf] = state
                if rests and rest_devices:
                    resting.add(bdf)
                if found:
                    for f in found:
                        key_said = RUNTIME.said_key(f)
                        if key_said is not None:
                            said.add(key_said)
                    findings += [f for f in found if not self._ignored(dom, f.rule_id)]
                if inconclusive:
                    held += [n for n in inconclusive if not self._ignored(dom, n.rule_id)]
                if state.mode == "none":
                    without_vectors.add(dom.facts.domain.name)
                elif settled:
                    # StateStore.record writes only a change; what it got last per device
                    # is kept here as (mode, slots), so a steady device costs no dict
                    # building per sample (the rules' slots change only on a change).
                    recorded = recorded_of.get(bdf)
                    if recorded is None or recorded[0] != state.mode or recorded[1] != state.slots:
                        store.record(key, bdf, remembered_entry(state))
                        recorded_of[bdf] = (state.mode, state.slots)
                        remembered[bdf] = store.previous(key, bdf)
        self.last_sample = now
        for f in findings:
            self.open[(f.domain, f.subject, f.rule_id)] = None
        sinks = self.sinks
        for f in findings:
            domain = self.domains[f.domain].facts.domain if f.domain in self.domains else None
            for sink in sinks:
                sink.emit(f, domain)
        for note in held:
            for sink in sinks:
                sink.event(note)
        return findings

    def _drop_vanished(self) -> None:
        """Stop following a device whose sysfs directory is gone: a PCI
        hot-unplug (pciehp, or `echo 1 > remove`) under a running domain
        that libvirt has not told us about (no DEVICE_REMOVED event: the
        device left the host, not the domain's XML). Its findings close
        (RuntimeRules.holds of a gone device). Only devices without
        vectors are looked at: a device that still has rows in the table is
        there, and the stat per device stays off the steady sample."""
        for name in self._without_vectors:
            dom = self.domains.get(name)
            if dom is None:
                continue
            gone = [bdf for bdf, dev in dom.devices.items()
                    if dev.mode == "none" and not self.host.exists(f"sys/bus/pci/devices/{bdf}")]
            if not gone:
                continue
            for bdf in gone:
                for table in (dom.devices, dom.interrupts, dom.siblings, dom.msi_possible, dom.recorded,
                              dom.previous):
                    table.pop(bdf, None)
                self.note(f"{dom.facts.domain.name}: {bdf} is gone from the host (hot-unplugged?); "
                          "no longer followed, its findings closed, until the domain's devices change")
            dom.facts = dom.facts._replace(devices=tuple(d for d in dom.facts.devices if d.address not in gone))
            dom.resting.clear()  # facts are a per-run part of every sample
            self._order = None
            dom.siblings = {bdf: tuple(s for s in sibs if s not in gone) for bdf, sibs in dom.siblings.items()}
            self._update_wanted()

    def _interrupts(self, dom: DomainState, assigned, sampled, shape):
        """facts.model.device_interrupts(bdf, device, sampled.table), worked
        out again only when the table's shape changed (Sampler.shape: a row
        came, went, or changed handlers or chip). Otherwise only counts
        moved, and the model's result differs in its two count fields alone:
        vector_counts (each vfio row's total) and intx_count (the vfio-intx
        row's total), which are the same rows' totals (sampled.totals: the
        table is then never built on the sampler's steady path).
        tests/daemon/test_interrupts_cache.py checks this against
        device_interrupts at every sample."""
        bdf = assigned.address
        cached = dom.interrupts.get(bdf) if shape is not None else None
        totals = sampled.totals
        if cached is not None and cached[0] == shape and cached[3] is assigned:
            _, known, plan, _, intx_at = cached
            # known._replace(intx_count=..., vector_counts=...) spelled out,
            # each total as IrqLine.total sums it: _replace costs twice as
            # much, at every device and sample. _make refuses a field count
            # other than HostInterrupts', so a field added there fails here
            # (and in test_interrupts_cache) instead of being dropped.
            return known._make((
                known.mode, known.irqs, known.intx_irq, known.shared_with,
                totals[intx_at] if intx_at is not None else None,
                known.intx_delta,
                tuple([(irq, totals[k]) for irq, k in plan])))
        table = sampled.table
        lines = table.lines
        known = device_interrupts(bdf, assigned.device, table)
        if shape is not None:
            at = {line.irq: k for k, line in enumerate(lines)}
            plan = tuple((irq, at[irq]) for irq, _ in known.vector_counts)
            intx_at = None
            if known.intx_count is not None:
                intx_at = next(k for k, line in enumerate(lines) if line.number == known.intx_irq)
            dom.interrupts[bdf] = (shape, known, plan, assigned, intx_at)
        return known

    def _ignored(self, dom: DomainState | None, rule_id: str) -> bool:
        return self.config.policy.ignores_rule(RULES_BY_ID[rule_id], dom.facts.domain if dom else None)

    # --- metrics --------------------------------------------------------

    def snapshot(self) -> list[DeviceSnapshot]:
        """One entry per watched device, sorted by domain and BDF."""
        order = self._order
        if order is None:
            order = self._order = [(dom.facts.domain.name, bdf, dom.devices)
                                   for dom in sorted(self.domains.values(), key=lambda d: d.facts.domain.name)
                                   for bdf in sorted(dom.devices)]
        out = []
        append = out.append
        for name, bdf, devices in order:
            dev = devices[bdf]
            # DeviceSnapshot(name, bdf, ...) without its keyword-capable
            # __new__, each total as the generator sum over counts was.
            append(_tuple_new(DeviceSnapshot, (name, bdf, dev.mode, sum(map(_second, dev.counts)),
                                               dev.rate, dev.observable)))
        return out

    def open_findings(self) -> list:
        """Emitted findings whose condition still holds (each rule's `holds`,
        RuntimeRules.holds), one per (domain, device, rule). A domain that
        stops closes all of its findings."""
        out = []
        for key in list(self.open):
            domain, bdf, rule = key
            dom = self.domains.get(domain) if domain is not None else None
            dev = dom.devices.get(bdf) if dom is not None and bdf is not None else None
            if domain is not None and dom is None:
                holds = False
            else:
                holds = RUNTIME.holds(rule, dev)
            if not holds:
                del self.open[key]
                continue
            out.append(OpenFinding(domain, rule, str(RULES_BY_ID[rule].severity), bdf))
        return out
