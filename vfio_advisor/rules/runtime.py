"""Runtime rules (VA6xxx, VA8003): what running guests do with their interrupts.

Each rule is a pure transition over one device's sampled state:
    transition(state: DeviceState, sample: DeviceSample, elapsed, config)
        -> (new DeviceState, findings)
The daemon's Watcher only loops over devices, stores the states and emits the
findings; it reads the host (the sampler, smp_affinity_list, the state file)
and hands what it read in as a DeviceSample. Nothing here does I/O.

Why a settle time: vfio-pci starts every device on INTx and switches it to
MSI/MSI-X only when the guest driver enables it (QEMU hw/vfio/pci.c,
vfio_msi_enable / vfio_msix_enable tear INTx down), so INTx during boot is
normal. Only INTx that keeps counting after the guest had time to load its
drivers is advice-worthy.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from vfio_advisor.facts.model import AssignedDevice, DomainFacts, HostInterrupts
from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import _REGISTERED, SEED_ARTICLE, Rule, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.mode import host_blocks_msi
from vfio_advisor.rules.remedies import guest_msi_remedy, host_msi_remedy

# A storm ends (and may be reported again) only when the rate falls below
# half the threshold: hysteresis, so a rate hovering at the threshold is one
# storm, not one report per crossing.
STORM_HYSTERESIS = 0.5


class DeviceState(NamedTuple):
    """One device's state across the samples of one domain run."""

    bdf: str
    mode: str = "unknown"
    previous_mode: str = "unknown"  # mode at the sample before
    counts: tuple[tuple[str, int], ...] = ()  # (irq, cumulative count) per vfio vector
    rate: float = 0.0  # interrupts/s over the last interval
    delta: int = 0  # new interrupts over the last interval
    ever_counted: bool = False
    flagged_intx: bool = False  # VA6001 reported this run
    storming: int = 0  # consecutive samples above the storm rate
    storm_reported: bool = False
    reported_none: bool = False
    regression_checked: bool = False
    affinity: tuple[tuple[str, frozenset[int]], ...] = ()  # irq -> overlap already reported
    # False while the host cannot count the device's vectors (MSI posted to
    # the guest, DeviceSample.host_can_count_msi): its counts say nothing.
    observable: bool = True
    reported_posted: bool = False  # VA6008 said this run


class DeviceSample(NamedTuple):
    """What one sample shows of one device, and what the rules may read with it."""

    interrupts: HostInterrupts  # facts.model.device_interrupts over the sampled rows
    since_start: float  # seconds since the domain run started
    facts: DomainFacts  # the domain's static facts (device, siblings, guest OS, pinning)
    device: AssignedDevice
    sibling_on_intx: frozenset[str] = frozenset()  # BDFs of its card's functions now on INTx
    previous_run: dict = {}  # {"mode": ..., "flagged_intx": ...} from the state file
    vector_affinity: tuple[tuple[str, frozenset[int]], ...] = ()  # smp_affinity_list per vector
    isolated_cpus: frozenset[int] = frozenset()  # isolcpus | nohz_full
    storm_lines: frozenset[str] = frozenset()  # host lines already reported storming this sample
    # Issue 10 (posted interrupts): False when KVM posts the MSI vectors to the
    # vCPU and the host handler never counts them; then no rate, "none" or
    # affinity inference for those vectors.
    host_can_count_msi: bool = True
    # False when the host forbids MSI for the device (pci=nomsi, msi_bus=0):
    # a guest remedy could not help.
    host_msi_possible: bool = True


Transition = Callable[[DeviceState, DeviceSample, "float | None", object],
                      "tuple[DeviceState, list[Finding]]"]


def observe(state: DeviceState, sample: DeviceSample, elapsed: float | None) -> DeviceState:
    """The bookkeeping every runtime rule reads: mode, counts, rate."""
    irq = sample.interrupts
    mode = irq.mode if irq.mode in ("intx", "msi", "msix") else "none"
    vector_counts, before = irq.vector_counts, state.counts
    # The daemon's steady case: the same vectors as at the last sample, in its
    # (sorted, unique) order; one pass, without the dicts and the sort below
    # (issue 12: a few us of a ~50 us sample per device).
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
    # device ever interrupted; but "none at all" (VA6006, info) must not be
    # said of a device that may have: only an all-zero count is taken as none.
    ever = state.ever_counted or delta > 0 or any(c for _, c in counts)
    observable = mode not in ("msi", "msix") or sample.host_can_count_msi
    # state._replace(mode=mode, previous_mode=state.mode, counts=counts,
    # rate=rate, delta=delta, ever_counted=ever, observable=observable),
    # spelled out field by field: _replace builds a dict and maps over the
    # fields, twice the cost of the call (it runs for every device at every
    # sample). _make refuses any other number of fields, so a field added
    # to DeviceState fails here instead of being reset; and
    # tests/rules/test_observe_counts.py checks it against _replace.
    return state._make((state.bdf, mode, state.mode, counts, rate, delta, ever, state.flagged_intx,
                        state.storming, state.storm_reported, state.reported_none,
                        state.regression_checked, state.affinity, observable, state.reported_posted))


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


def _settled(sample: DeviceSample, config) -> bool:
    return sample.since_start >= config.settle


def _name(sample: DeviceSample) -> str:
    dev = sample.device
    return dev.device.name if dev.device else dev.address


def _msi_capable(sample: DeviceSample) -> bool:
    dev = sample.device.device
    return dev is not None and dev.supports_msi is True


def _remedy(sample: DeviceSample) -> str:
    # A guest remedy only where it can work: with pci=nomsi or msi_bus=0
    # vfio-pci cannot enable MSI whatever the guest sets (measured in the lab,
    # captures nomsi-*: VFIO_DEVICE_SET_IRQS for MSI returns EINVAL), so the
    # remedy is the host's, as advise's VA3001 gives it.
    if not sample.host_msi_possible:
        return host_msi_remedy(host_blocks_msi(sample.facts, sample.device))
    return guest_msi_remedy(sample.facts, sample.device,
                            lambda s: s.address in sample.sibling_on_intx)


def _make(rule_id: str, sample: DeviceSample, message: str, remedy: str | None = None,
          evidence: dict | None = None) -> list[Finding]:
    return [_REGISTERED[rule_id].finding(sample.facts.domain.name, sample.device.address, message,
                                    remedy, sample.device.guest_address, evidence or ())]


def switched_to_msi(state, sample, elapsed, config):
    """VA6002: INTx -> MSI after we (or the previous run) had flagged it."""
    if not (state.previous_mode == "intx" and state.mode in ("msi", "msix")):
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
    # Conditions without side effects, the state's own first: they end the
    # steady case (another mode, or already flagged) before any call.
    if (state.mode != "intx" or state.flagged_intx or state.delta <= 0
            or not _settled(sample, config) or not _msi_capable(sample)):
        return state, []
    irq = sample.interrupts
    # /proc/interrupts counts per line, not per handler.
    shared = (f" (shared with {', '.join(irq.shared_with)}, so part of that may be theirs)"
              if irq.shared_with else "")
    return state._replace(flagged_intx=True), _make(
        "VA6001", sample,
        f"{_name(sample)} supports MSI but is still on INTx {config.settle:g} s after "
        f"the domain started: host IRQ {irq.intx_label} counts {state.rate:.0f}/s{shared}.",
        _remedy(sample), {"rate": f"{state.rate:.1f}", "irq": irq.intx_label})


def msi_to_intx_regression(state, sample, elapsed, config):
    """VA6003: MSI in the previous run of the domain, INTx in this one."""
    if state.regression_checked or state.mode == "none" or not _settled(sample, config):
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
    if not (state.storming or state.storm_reported) and (state.mode != "intx" or state.rate < config.storm_rate):
        # Neither a storm nor its run-up, nor a rate that starts one: both
        # branches below leave the state as it is, settled or not.
        return state, []
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


def _storm_remedy(sample: DeviceSample, rule_id: str) -> str:
    """The storm remedy, with "enable MSI" only where MSI can work: the device
    has it and the host allows it (pci=nomsi: lab capture nomsi-1, EINVAL)."""
    steps = ["Check the guest driver (and its logs) for this device."]
    if _msi_capable(sample) and sample.host_msi_possible:
        steps.append("Enable MSI in the guest; the device supports it.")
    elif _msi_capable(sample):
        steps.append("MSI would end INTx storms, but the host forbids it ("
                     + ("; ".join(host_blocks_msi(sample.facts, sample.device)) or "pci=nomsi/msi_bus")
                     + "; see VA3001).")
    if rule_id == "VA6005":
        steps.append("Or give the device a host line of its own.")
    steps.append("The threshold is [daemon] storm_rate in the config.")
    return " ".join(steps)


def no_interrupts(state, sample, elapsed, config):
    """VA6006: settled and not one interrupt counted."""
    if state.ever_counted and not state.reported_none:
        return state, []  # the steady case: whatever the rest, nothing to do or undo
    if not _settled(sample, config) or not state.observable:
        return state, []  # posted MSI: a flat count is no evidence of silence
    if state.ever_counted:
        # Rebuilt only when it changes: the steady case costs no _replace per sample.
        return (state._replace(reported_none=False) if state.reported_none else state), []
    if state.reported_none:
        return state, []
    return state._replace(reported_none=True), _make(
        "VA6006", sample,
        f"{_name(sample)} has raised no interrupt at all {config.settle:g} s after "
        "the domain started" + (" (no vfio vectors are set up)" if state.mode == "none" else "") + ".")


def affinity_overlap(state, sample, elapsed, config):
    """VA6007: a vector whose smp_affinity_list meets pinned vCPU or isolated CPUs."""
    isolated = sample.isolated_cpus
    if not isolated and not sample.facts.domain.pinned_cpus:
        return state, []  # no CPU to protect (the usual host): settled or not, nothing
    if not _settled(sample, config) or not state.observable:
        return state, []  # posted MSI never runs the host handler on those CPUs
    pinned = sample.facts.domain.pinned_cpus
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


def msi_posted(state, sample, elapsed, config):
    """VA6008: once per device and run, when it is on MSI/MSI-X and the host
    cannot count those vectors (sample.host_can_count_msi False: posted to
    the vCPU). The other transitions read state.observable and draw nothing
    from its flat counters; INTx is never posted."""
    if state.reported_posted or state.mode not in ("msi", "msix") or sample.host_can_count_msi:
        return state, []
    mode = "MSI-X" if state.mode == "msix" else "MSI"
    return state._replace(reported_posted=True), _make(
        "VA6008", sample,
        f"{_name(sample)} is on {mode}, and this host posts (or may post) those interrupts "
        "straight to the guest's vCPU: its vfio counters stay flat while it works, so the "
        "daemon reports no rate, silence or affinity for them (metrics mark them "
        "unobservable).", evidence={"mode": state.mode})


def rows_skipped(reported: bool, skipped: int) -> tuple[bool, list[Finding]]:
    """VA8003, host-wide: rows the sampler could not read, said once per daemon run."""
    if not skipped or reported:
        return reported, []
    return True, [_REGISTERED["VA8003"].finding(
        None, None, f"{skipped} /proc/interrupts rows could not be read and are "
        "skipped (reported once).")]


def step_device(state: DeviceState, sample: DeviceSample, elapsed: float | None,
                config) -> tuple[DeviceState, list[Finding]]:
    """One sample of one device: the bookkeeping, then every device
    transition of the registry in its order (each function once)."""
    state = observe(state, sample, elapsed)
    findings: list[Finding] = []
    for transition in DEVICE_TRANSITIONS:
        state, found = transition(state, sample, elapsed, config)
        if found:
            findings += found
    return state, findings


def cpulist(cpus) -> str:
    """The kernel's cpulist format (lib/bitmap.c bitmap_print_to_pagebuf: "0-3,8")."""
    cpus = sorted(cpus)
    out, start = [], None
    for i, c in enumerate(cpus):
        if start is None:
            start = c
        if i + 1 == len(cpus) or cpus[i + 1] != c + 1:
            out.append(str(start) if start == c else f"{start}-{c}")
            start = None
    return ",".join(out)


RULES: tuple[Rule, ...] = register(
    Rule("VA6001", "stays-on-intx", Severity.WARNING,
         "Running guest keeps an MSI-capable device on INTx",
         "The domain has run longer than the settle time, its guest driver had time to "
         "load, and this MSI-capable device's vfio-intx counter keeps rising: the guest "
         "driver chose INTx. Every interrupt then needs a mask, a trip through the guest "
         "and an unmask after its EOI; HDMI audio crackles and frame times stutter.",
         "Enable MSI in the guest: Windows MSISupported=1 for every function of the card "
         "(and again after driver updates); Linux, the driver's MSI option.",
         _id("60b452f510024659af0f6d48fbec1ee0"), None, documentation=(SEED_ARTICLE,),
         transition=stays_on_intx, fires_on=('rt-lab-stays-intx', 'rt-intx-settled-windows'),
         silent_on=('rt-intx-booting', 'rt-lab-switch-to-msi', 'rt-msi-settled')),
    Rule("VA6002", "switched-to-msi", Severity.INFO,
         "Device switched from INTx to MSI: the fix worked",
         "A device that vfio-advisor had seen stay on INTx now uses MSI or MSI-X: the guest "
         "driver enabled message-signalled interrupts, usually after MSISupported was set or "
         "a driver option changed.",
         "Nothing to do. Check again after guest driver updates, which can reset the setting.",
         _id("1936b40983384a06a30e555d8d8c480d"), None,
         transition=switched_to_msi, fires_on=('rt-lab-switch-to-msi', 'rt-flagged-now-msi'),
         silent_on=('rt-lab-stays-intx', 'rt-intx-settled-windows')),
    Rule("VA6003", "msi-to-intx-regression", Severity.WARNING,
         "Device used MSI in the previous run and INTx now",
         "In the previous run of this domain the device used MSI or MSI-X; in this run its "
         "guest driver stays on INTx. A Windows driver update reinstalls the device and "
         "resets MSISupported; a Linux kernel or module change can do the same.",
         "Set MSISupported=1 again for every function of the card (Windows), or restore the "
         "driver's MSI option (Linux), then restart the guest.",
         _id("4311428fa02a4380a07d7c7a8b3d26a9"), None,
         transition=msi_to_intx_regression, fires_on=('rt-lab-nomsi-after-msi-run', 'rt-msi-last-run-intx-now'),
         silent_on=('rt-lab-stays-intx', 'rt-intx-settled-windows')),
    Rule("VA6004", "intx-storm", Severity.WARNING,
         "Interrupt storm on an assigned device's INTx line",
         "The device raises INTx faster than the threshold for several samples in a row. "
         "Each INTx costs a host interrupt, a mask and an unmask after the guest's EOI, so a "
         "storm eats host CPU and guest latency; it often means a guest driver that does not "
         "acknowledge the device, or a device that should be on MSI.",
         "Check the guest driver (and its logs) for this device; enable MSI if the device "
         "supports it. The threshold is [daemon] storm_rate in the config.",
         _id("6c7b6d7ab9414e3490ac862d7eb2a3dd"), None,
         transition=intx_storm, fires_on=('rt-lab-intx-own-line', 'rt-storm-own-line'),
         silent_on=('rt-lab-storm-shared', 'rt-storm-shared-line', 'rt-intx-settled-windows')),
    Rule("VA6005", "intx-storm-shared-line", Severity.ERROR,
         "Interrupt storm on a host INTx line shared with other devices",
         "As VA6004, but the host line is shared: every interrupt of the storm also makes "
         "the host run the other devices' handlers, and their interrupts wait behind the "
         "guest's. Host devices on the line (USB, storage) suffer too.",
         "Stop the storm (guest driver, MSI), or give the device a host line of its own.",
         _id("f90aba7e5162418e8a794c36b87980ef"), None,
         transition=intx_storm, fires_on=('rt-lab-storm-shared', 'rt-storm-shared-line'),
         silent_on=('rt-storm-own-line', 'rt-lab-stays-intx')),
    Rule("VA6006", "no-interrupts", Severity.INFO,
         "Assigned device raised no interrupt after the settle time",
         "The domain has run longer than the settle time and this assigned device has not "
         "raised a single interrupt: most often no guest driver is bound to it, or the "
         "guest has not finished booting.",
         "Check in the guest that a driver is bound to the device (Device Manager, or "
         "lspci -k in Linux).",
         _id("3d219b988e0643289eabc7fe1bfecd0f"), None,
         transition=no_interrupts, fires_on=('rt-lab-no-vectors', 'rt-no-vectors-settled'),
         silent_on=('rt-msi-settled', 'rt-no-vectors-booting', 'rt-msi-zero-posted')),
    Rule("VA6007", "vfio-irq-affinity-overlap", Severity.WARNING,
         "A vfio vector may run on the domain's pinned vCPU CPUs or isolated CPUs",
         "The host interrupt of an assigned device may be delivered to CPUs that run the "
         "domain's pinned vCPUs, or that the host isolates (isolcpus, nohz_full). Its "
         "handler then preempts those CPUs, adding latency where it was meant to be lowest.",
         "Set the vector's /proc/irq/N/smp_affinity_list to housekeeping CPUs, or use "
         "irqaffinity= on the host kernel command line. vfio-advisor only advises.",
         _id("ca692677e0fd4f29b856f5fefbb536e2"), None,
         transition=affinity_overlap, fires_on=('rt-lab-isolcpus', 'rt-affinity-on-pinned'),
         silent_on=('rt-affinity-housekeeping', 'rt-affinity-posted')),
    Rule("VA6008", "msi-posted-unobservable", Severity.INFO,
         "Running device's MSIs are posted to the guest: the host cannot count them",
         "The device is on MSI or MSI-X, and KVM posts those interrupts to the vCPU "
         "(Intel VT-d PI with APICv, AMD AVIC): the host's vfio-msi/vfio-msix handlers never "
         "run, so their counters stay flat. The daemon says so once and draws no conclusion "
         "from them (no VA6006, VA6007, rates).",
         "Nothing to fix. Judge the device's interrupts inside the guest.",
         _id("d1601fb60ec64ebc8b736b0209d7b05d"), None,
         transition=msi_posted, fires_on=('rt-lab-msi-posted', 'rt-msi-posted'),
         silent_on=('rt-msi-settled', 'rt-intx-posted-host')),
    Rule("VA8003", "interrupt-rows-skipped", Severity.INFO,
         "Some /proc/interrupts rows could not be read",
         "The daemon found rows in /proc/interrupts it could not parse (cut off, or in a "
         "format it does not know) and skips them. It says so once, not at every sample.",
         "If vfio rows are among them, report it with a snapshot (vfio-advisor snapshot).",
         _id("f331f323c1874b3198add8a8302467e2"), None, scope="domain",
         transition=rows_skipped, fires_on=('rt-rows-cut',), silent_on=('rt-rows-clean',)),
)

# Device transitions in the order they run; VA6004 and VA6005 share one. A
# test checks that this names every device transition of RULES.
DEVICE_TRANSITIONS: tuple[Transition, ...] = (
    switched_to_msi, stays_on_intx, msi_to_intx_regression, intx_storm, no_interrupts,
    affinity_overlap, msi_posted)
