"""Runtime rules (VA6xxx): what running guests do with their interrupts.

Each rule is one object (rules/stepping.py): a pure transition over its own
state slot and one device's sample, the slot's initial value, when its
finding still holds, and its examples. The daemon's Watcher steps every
device through RuntimeRules (built from the registry) and emits what they
return; it reads the host (the sampler, smp_affinity_list, the state file)
and hands what it read in as a DeviceSample. Nothing here does I/O.

Why a settle time: vfio-pci starts every device on INTx and switches it to
MSI/MSI-X only when the guest driver enables it (QEMU hw/vfio/pci.c,
vfio_msi_enable / vfio_msix_enable tear INTx down), so INTx during boot is
normal. Only INTx that keeps counting after the guest had time to load its
drivers is advice-worthy.
"""

from __future__ import annotations

from vfio_advisor.findings import Finding, Severity
from vfio_advisor.rules.base import _REGISTERED, SEED_ARTICLE, Rule, register
from vfio_advisor.rules.base import message_id as _id
from vfio_advisor.rules.mode import host_blocks_msi
from vfio_advisor.rules.remedies import guest_msi_remedy, host_msi_remedy
from vfio_advisor.rules.stepping import HELD, DeviceSample, DeviceState

# Names kept for callers that build samples and states.
__all__ = ["DeviceSample", "DeviceState", "RULES", "STORM_HYSTERESIS", "cpulist"]

# A storm ends (and may be reported again) only when the rate falls below
# half the threshold: hysteresis, so a rate hovering at the threshold is one
# storm, not one report per crossing.
STORM_HYSTERESIS = 0.5

# The INTx/MSI slot (VA6001 and VA6002): None, HELD (settled on INTx with an
# idle counter: nothing proves the guest driver chose INTx), or FLAGGED
# (VA6001 said this run).
FLAGGED = "flagged"


def _settled(sample: DeviceSample, config) -> bool:
    return sample.since_start >= config.settle


def _since_start(sample: DeviceSample) -> str:
    """How long the guest has run, as the messages say it: the settle time
    is when a rule may first speak, not when it does (a line held back as
    idle, or a device that starts counting late, fires minutes later), and
    a guest reboot starts the count again (Watcher.rebooted)."""
    return f"{sample.since_start:.0f} s after the guest started"


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


def intx_or_msi(own, state, sample, elapsed, config):
    """VA6002 then VA6001, one slot: INTx -> MSI after we (or the previous
    run) had flagged it; settled, MSI-capable and INTx still counting.

    A sample with no vector ("none") between INTx and MSI is still that
    switch: a guest reboot resets the device, and QEMU frees every vfio
    handler for the reset and requests vfio-intx again after it
    (hw/vfio/pci.c vfio_pci_pre_reset -> vfio_disable_interrupts,
    vfio_pci_post_reset -> vfio_intx_enable, 7.2-9.x), so a sample can fall
    in the reset, up to about a second with a bus reset's wait. The slot
    stays FLAGGED through it (below: a mode other than INTx keeps it)."""
    if state.previous_mode in ("intx", "none") and state.mode in ("msi", "msix"):
        out = []
        if own == FLAGGED or sample.previous_run.get("flagged_intx"):
            out = _make("VA6002", sample,
                        f"{_name(sample)} switched from INTx to {state.mode.upper()}: the guest "
                        "driver now uses message-signalled interrupts.",
                        evidence={"mode": f"intx -> {state.mode}"})
        return None, out
    # Conditions without side effects, the state's own first: they end the
    # steady case (another mode, or already flagged) before any call.
    if state.mode != "intx" or own == FLAGGED or not _settled(sample, config) or not _msi_capable(sample):
        return own, []
    if state.delta <= 0:
        # An idle line proves nothing: the guest may not have bound a driver
        # yet, or the device raised nothing in this interval (HDMI audio
        # between sounds). Held back, and said once (RuntimeRules.step_device).
        return (HELD if state.ever_counted else own), []
    irq = sample.interrupts
    # /proc/interrupts counts per line, not per handler.
    shared = (f" (shared with {', '.join(irq.shared_with)}, so part of that may be theirs)"
              if irq.shared_with else "")
    return FLAGGED, _make(
        "VA6001", sample,
        f"{_name(sample)} supports MSI but is still on INTx {_since_start(sample)}: "
        f"host IRQ {irq.intx_label} counts {state.rate:.0f}/s{shared}.",
        _remedy(sample), {"rate": f"{state.rate:.1f}", "irq": irq.intx_label})


def intx_or_msi_rests(own, state, sample, config) -> bool:
    # With the mode kept, previous_mode is the mode: no switch; what is left
    # is VA6001's wait for a settled, MSI-capable device counting on INTx.
    return (state.mode != "intx" or own == FLAGGED or not _settled(sample, config)
            or not _msi_capable(sample))


def held_on_intx(state, sample, config) -> str:
    """What the daemon says when it holds VA6001 back."""
    irq = sample.interrupts
    return (f"{_name(sample)} is on INTx (host IRQ {irq.intx_label}) {_since_start(sample)}, "
            "but its line did not count in the last sample: inconclusive. "
            "Either the guest has not bound a driver, or the device was idle. Whether the guest "
            "keeps it on INTx (VA6001) is decided once it raises interrupts: use the device "
            "(play audio, run a load) while the daemon samples.")


def msi_to_intx_regression(own, state, sample, elapsed, config):
    """VA6003: MSI in the previous run of the domain, INTx in this one.
    `own`: checked this run (once, at the first settled sample with a mode)."""
    if regression_rests(own, state, sample, config):
        return own, []
    before = sample.previous_run.get("mode")
    if state.mode != "intx" or before not in ("msi", "msix") or not _msi_capable(sample):
        return True, []
    return True, _make(
        "VA6003", sample,
        f"{_name(sample)} used {before.upper()} in the previous run of this "
        "domain and is on INTx now. " + (
            "A guest driver update may have reset the guest's MSI setting."
            if sample.host_msi_possible else
            "The host now forbids MSI for it, so the guest could not keep it."),
        _remedy(sample), {"previous mode": before, "mode": state.mode})


def regression_rests(own, state, sample, config) -> bool:
    # Checked once a run (own True), or nothing to check before then: the
    # transition's own first test.
    return own or state.mode == "none" or not _settled(sample, config)


NO_STORM = (0, False)  # (samples in a row at storm_rate or more, reported)


def intx_storm(own, state, sample, elapsed, config):
    """VA6004 (line not shared) / VA6005 (shared): storm_samples samples in a
    row at storm_rate or more; over once the rate falls below half of it."""
    storming, reported = own
    if not (storming or reported) and (state.mode != "intx" or state.rate < config.storm_rate):
        # Neither a storm nor its run-up, nor a rate that starts one: both
        # branches below leave the slot as it is, settled or not.
        return own, []
    if not _settled(sample, config):
        return own, []
    if state.mode == "intx" and state.rate >= config.storm_rate:
        storming += 1
        if storming < config.storm_samples or reported:
            return (storming, reported), []
        irq = sample.interrupts
        line = irq.intx_label
        if _storm_key(line) in sample.said:
            # /proc/interrupts counts the line: with several handlers on it
            # we cannot say whose interrupts these are, so say it once.
            return (storming, True), []
        rule = "VA6005" if irq.shared_with else "VA6004"
        where = (f"shared with {', '.join(irq.shared_with)}, any of which may raise them"
                 if irq.shared_with else "not shared")
        return (storming, True), _make(rule, sample,
                                       f"Interrupt storm: host IRQ {line} of {_name(sample)} counts "
                                       f"{state.rate:.0f} INTx/s ({where}) for {storming} samples "
                                       "in a row.", _storm_remedy(sample, rule),
                                       evidence={"rate": f"{state.rate:.0f}", "irq": line,
                                                 "threshold": f"{config.storm_rate:g}"})
    if (storming or reported) and state.rate < config.storm_rate * STORM_HYSTERESIS:
        # Only a storm (or its run-up) to end: a quiet device's slot is not rebuilt each sample.
        return NO_STORM, []
    return own, []


def storm_rests(own, state, sample, config) -> bool:
    # Off INTx no rate starts a storm, and one going on ends only on INTx's
    # rate falling; before the settle time the slot is never written.
    storming, reported = own
    return not (storming or reported) and state.mode != "intx" or not _settled(sample, config)


def _storm_key(line: str) -> str:
    return f"storm on host IRQ {line}"


def _storm_said(finding: Finding) -> str:
    return _storm_key(dict(finding.evidence)["irq"])


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


def no_interrupts(own, state, sample, elapsed, config):
    """VA6006: settled and not one interrupt counted. `own`: reported."""
    if state.ever_counted and not own:
        return own, []  # the steady case: whatever the rest, nothing to do or undo
    if not _settled(sample, config) or not state.observable:
        return own, []  # posted MSI: a flat count is no evidence of silence
    if state.ever_counted:
        return False, []
    if own:
        return own, []
    return True, _make(
        "VA6006", sample,
        f"{_name(sample)} has raised no interrupt at all {_since_start(sample)}"
        + (" (no vfio vectors are set up)" if state.mode == "none" else "") + ".")


def silence_rests(own, state, sample, config) -> bool:
    # ever_counted never goes back within a run; a silent device's finding
    # (own True) ends at its first count, which the counts alone bring. Not
    # on `observable`: a rising count makes a device observable (_counted).
    return (state.ever_counted and not own) or not _settled(sample, config)


def affinity_overlap(own, state, sample, elapsed, config):
    """VA6007: a vector whose smp_affinity_list meets pinned vCPU or isolated
    CPUs. `own`: (irq, overlap already reported) pairs."""
    if not sample.vector_affinity:
        # No vector to compare, or no CPU to protect (the usual host: the
        # Watcher reads smp_affinity_list only for pinned or isolated CPUs):
        # what the rest would return, without Domain.pinned_cpus, a set
        # union per call, at every device and sample.
        return own, []
    isolated = sample.isolated_cpus
    if not isolated and not sample.facts.domain.pinned_cpus:
        return own, []  # no CPU to protect: settled or not, nothing
    if not _settled(sample, config) or not state.observable:
        return own, []  # posted MSI never runs the host handler on those CPUs
    pinned = sample.facts.domain.pinned_cpus
    reported = dict(own)
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
    now = tuple(sorted(reported.items()))
    return (own if now == own else now), out


def affinity_rests(own, state, sample, config) -> bool:
    # With no CPU to protect the Watcher reads no affinity: nothing to compare.
    # Not on `observable`: a rising count makes a device observable (_counted).
    return ((not sample.isolated_cpus and not sample.facts.domain.pinned_cpus)
            or not _settled(sample, config))


def msi_posted(own, state, sample, elapsed, config):
    """VA6008: once per device and run, when it is on MSI/MSI-X, the host may
    post those vectors (sample.host_can_count_msi False), and by the settle
    time its counters have not moved (a count that rose makes the device
    observable: stepping._counted). The other transitions read
    state.observable and draw nothing from flat counters; INTx is never
    posted."""
    if posted_rests(own, state, sample, config):
        return own, []
    mode = "MSI-X" if state.mode == "msix" else "MSI"
    return True, _make(
        "VA6008", sample,
        f"{_name(sample)} is on {mode}, this host can post those interrupts straight to the "
        f"guest's vCPU, and its vfio counters have not moved {_since_start(sample)}: they stay "
        "flat while it works, so the daemon reports no rate, silence or affinity for it "
        "(metrics mark it unobservable) until they move (the vector then goes through the "
        "host after all).", evidence={"mode": state.mode})


def posted_rests(own, state, sample, config) -> bool:
    # The transition's own first test. Observable stays so for the mode's
    # run; unsettled, the settle time wakes it.
    return (own or state.mode not in ("msi", "msix") or sample.host_can_count_msi or state.observable
            or not _settled(sample, config))


# Why a recorded guest change may not have brought MSI, per guest OS.
LIKELY_CAUSES = {
    "windows": "MSISupported was reset (a driver update rewrites the device's key, NVIDIA's "
               "installer does), the change went to another instance of the device (Windows "
               "keeps one per slot it has seen the card in), or the driver does not use MSI",
    "linux": "a later modprobe.d file or the kernel command line overrides the option, the "
             "module loads from an initramfs built before the change, or the driver does not "
             "use MSI",
}


def _restarted_since(change, sample: DeviceSample) -> bool:
    """Has the guest booted since `change`? A domain stop and start gives a
    new libvirt domain ID (qemu driver: virDomainObjAssignDef takes the
    driver's next ID at each start); a reboot keeps it, and is seen as a
    booted_at later than the change."""
    if change.run_id is not None and sample.run_id is not None and change.run_id != sample.run_id:
        return True
    return sample.booted_at is not None and sample.booted_at > change.epoch


def _change_named(change) -> str:
    return f"the guest change of {change.at} ({change.target})"


def guest_change_outcome(own, state, sample, elapsed, config):
    """VA6009 (MSI after the change) / VA6010 (still INTx): once per recorded
    guest change, after the guest's restart. `own`: None, HELD (on INTx with
    an idle line), or (outcome, the change's `at`)."""
    change = sample.guest_change
    if change is None:
        return own, []
    if own is not None and own != HELD:
        if own[1] == change.at:
            return own, []  # this change is said (or was, in an earlier run)
        own = None  # a newer change, recorded during this run (read at a reboot)
    if own is None and sample.previous_run.get("guest_change_said") == change.at:
        return ("earlier", change.at), []  # said in an earlier run of the domain
    if not _restarted_since(change, sample):
        return own, []  # the change waits for the guest's restart
    if state.mode in ("msi", "msix"):
        return ("resolved", change.at), _make(
            "VA6009", sample,
            f"{_name(sample)} is on {state.mode.upper()} after {_change_named(change)} and a "
            "guest restart: the guest driver now uses message-signalled interrupts, and the "
            "INTx finding is resolved.", evidence={"change": change.at, "mode": state.mode})
    if state.mode != "intx" or not _settled(sample, config):
        return own, []  # booting: vfio-pci starts every device on INTx
    if state.delta <= 0:
        return HELD, []  # an idle line: the driver may not be bound yet
    causes = LIKELY_CAUSES.get(change.os, LIKELY_CAUSES["linux"] + "; or, on Windows, "
                               + LIKELY_CAUSES["windows"])
    return ("warned", change.at), _make(
        "VA6010", sample,
        f"{_name(sample)} is still on INTx after {_change_named(change)} and a guest restart: "
        f"host IRQ {sample.interrupts.intx_label} counts {state.rate:.0f}/s.",
        f"Likely causes: {causes}. `vfio-advisor guest "
        f"{_shell_word(sample.facts.domain.name)}` reads the guest's side.",
        {"change": change.at, "rate": f"{state.rate:.1f}", "irq": sample.interrupts.intx_label})


def guest_change_rests(own, state, sample, config) -> bool:
    # guest_change_outcome's branches that return `own` whatever the counts
    # (only delta, on a settled INTx line, decides between HELD and VA6010).
    change = sample.guest_change
    if change is None:
        return True
    if own is not None and own != HELD:
        return own[1] == change.at
    if own is None and sample.previous_run.get("guest_change_said") == change.at:
        return False
    if not _restarted_since(change, sample):
        return True
    if state.mode in ("msi", "msix"):
        return False
    return state.mode != "intx" or not _settled(sample, config)


def _shell_word(text: str) -> str:
    import shlex  # noqa: PLC0415 - only when such a finding is made

    return shlex.quote(text)


def held_after_change(state, sample, config) -> str:
    """What the daemon says when it holds VA6010 back."""
    return (f"{_name(sample)} is on INTx after {_change_named(sample.guest_change)} and a guest "
            "restart, but its line did not count in the last sample: inconclusive. Whether the "
            "change failed (VA6010) is decided once the device raises interrupts: use it "
            "(play audio, run a load) while the daemon samples.")


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


# When an emitted finding still holds (Rule.holds: its slot and the device's
# state), for the metrics file's open findings and the closing entries. Each
# docstring says when it closes: docs/metrics.md's table is made of them
# (RuntimeRules.open_until; a test keeps the two equal).
def _still_on_intx(own, state) -> bool:
    """the device leaves INTx (VA6002, or any other mode)"""
    return own == FLAGGED and state.mode == "intx"


def _never(own, state) -> bool:
    """never open: an event (the fix worked)"""
    return False


def _storm_goes_on(own, state) -> bool:
    """the rate falls below half of `storm_rate`"""
    return own[1]


def _still_silent(own, state) -> bool:
    """the device counts an interrupt"""
    return own and not state.ever_counted


def _still_unobservable(own, state) -> bool:
    """its vfio counters rise (the host handler runs: not posted after all) or it leaves MSI"""
    return own and not state.observable and state.mode in ("msi", "msix")


def _still_overlaps(own, state) -> bool:
    """no vector of the device overlaps any more"""
    return any(overlap for _, overlap in own)


def _change_failed(own, state) -> bool:
    """the device leaves INTx"""
    return isinstance(own, tuple) and own[0] == "warned" and state.mode == "intx"


def _change_said(own):
    return own[1] if isinstance(own, tuple) else None


def _was_flagged(own) -> bool:
    return own == FLAGGED


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
         transition=intx_or_msi, rests=intx_or_msi_rests, holds=_still_on_intx, held_back=held_on_intx,
         remembered=("flagged_intx", _was_flagged), fires_on=('rt-lab-stays-intx', 'rt-intx-settled-windows'),
         silent_on=('rt-intx-booting', 'rt-lab-switch-to-msi', 'rt-msi-settled')),
    Rule("VA6002", "switched-to-msi", Severity.INFO,
         "Device switched from INTx to MSI: the fix worked",
         "A device that vfio-advisor had seen stay on INTx now uses MSI or MSI-X: the guest "
         "driver enabled message-signalled interrupts, usually after MSISupported was set or "
         "a driver option changed.",
         "Nothing to do. Check again after guest driver updates, which can reset the setting.",
         _id("1936b40983384a06a30e555d8d8c480d"), None,
         transition=intx_or_msi, rests=intx_or_msi_rests, holds=_never,
         fires_on=('rt-lab-switch-to-msi', 'rt-flagged-now-msi', 'rt-flagged-reset-now-msi'),
         silent_on=('rt-lab-stays-intx', 'rt-intx-settled-windows')),
    Rule("VA6003", "msi-to-intx-regression", Severity.WARNING,
         "Device used MSI in the previous run and INTx now",
         "In the previous run of this domain the device used MSI or MSI-X; in this run its "
         "guest driver stays on INTx. A Windows driver update reinstalls the device and "
         "resets MSISupported; a Linux kernel or module change can do the same.",
         "Set MSISupported=1 again for every function of the card (Windows), or restore the "
         "driver's MSI option (Linux), then restart the guest.",
         _id("4311428fa02a4380a07d7c7a8b3d26a9"), None,
         transition=msi_to_intx_regression, rests=regression_rests, initial=False, fires_on=('rt-lab-nomsi-after-msi-run', 'rt-msi-last-run-intx-now'),
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
         transition=intx_storm, rests=storm_rests, initial=NO_STORM, holds=_storm_goes_on,
         said_key=_storm_said, fires_on=('rt-lab-intx-own-line', 'rt-storm-own-line'),
         silent_on=('rt-lab-storm-shared', 'rt-storm-shared-line', 'rt-intx-settled-windows')),
    Rule("VA6005", "intx-storm-shared-line", Severity.ERROR,
         "Interrupt storm on a host INTx line shared with other devices",
         "As VA6004, but the host line is shared: every interrupt of the storm also makes "
         "the host run the other devices' handlers, and their interrupts wait behind the "
         "guest's. Host devices on the line (USB, storage) suffer too.",
         "Stop the storm (guest driver, MSI), or give the device a host line of its own.",
         _id("f90aba7e5162418e8a794c36b87980ef"), None,
         transition=intx_storm, rests=storm_rests, initial=NO_STORM, holds=_storm_goes_on,
         said_key=_storm_said, fires_on=('rt-lab-storm-shared', 'rt-storm-shared-line'),
         silent_on=('rt-storm-own-line', 'rt-lab-stays-intx')),
    Rule("VA6006", "no-interrupts", Severity.INFO,
         "Assigned device raised no interrupt after the settle time",
         "The domain has run longer than the settle time and this assigned device has not "
         "raised a single interrupt: most often no guest driver is bound to it, or the "
         "guest has not finished booting.",
         "Check in the guest that a driver is bound to the device (Device Manager, or "
         "lspci -k in Linux).",
         _id("3d219b988e0643289eabc7fe1bfecd0f"), None,
         transition=no_interrupts, rests=silence_rests, initial=False, holds=_still_silent, fires_on=('rt-lab-no-vectors', 'rt-no-vectors-settled'),
         silent_on=('rt-msi-settled', 'rt-no-vectors-booting', 'rt-msi-zero-posted')),
    Rule("VA6007", "vfio-irq-affinity-overlap", Severity.WARNING,
         "A vfio vector may run on the domain's pinned vCPU CPUs or isolated CPUs",
         "The host interrupt of an assigned device may be delivered to CPUs that run the "
         "domain's pinned vCPUs, or that the host isolates (isolcpus, nohz_full). Its "
         "handler then preempts those CPUs, adding latency where it was meant to be lowest.",
         "Set the vector's /proc/irq/N/smp_affinity_list to housekeeping CPUs, or use "
         "irqaffinity= on the host kernel command line. vfio-advisor only advises.",
         _id("ca692677e0fd4f29b856f5fefbb536e2"), None,
         transition=affinity_overlap, rests=affinity_rests, initial=(), holds=_still_overlaps, fires_on=('rt-lab-isolcpus', 'rt-affinity-on-pinned'),
         silent_on=('rt-affinity-housekeeping', 'rt-affinity-posted')),
    Rule("VA6008", "msi-posted-unobservable", Severity.INFO,
         "Running device's MSIs are posted to the guest: the host cannot count them",
         "The device is on MSI or MSI-X, and KVM posts those interrupts to the vCPU "
         "(Intel VT-d PI with APICv, AMD AVIC): the host's vfio-msi/vfio-msix handlers never "
         "run, so their counters stay flat. The daemon says so once, when its counters have "
         "not moved by the settle time, and draws no conclusion from them (no VA6006, VA6007, "
         "rates). Posting is what the host can do, not what every vector gets: KVM leaves a "
         "vector remapped while APICv is inhibited (Hyper-V SynIC AutoEOI, which Windows "
         "guests use with hv-synic) or when the guest aims it at several vCPUs. Its counters "
         "then move, the daemon counts the device, and the finding closes.",
         "Nothing to fix. Judge the device's interrupts inside the guest.",
         _id("d1601fb60ec64ebc8b736b0209d7b05d"), None,
         transition=msi_posted, rests=posted_rests, initial=False, holds=_still_unobservable,
         fires_on=('rt-msi-posted',),
         silent_on=('rt-msi-settled', 'rt-intx-posted-host', 'rt-lab-msi-posted', 'rt-msi-posted-booting')),
    Rule("VA6009", "guest-change-confirmed", Severity.INFO,
         "A recorded guest change brought MSI: confirmed from the host",
         "`vfio-advisor fix --guest --apply` changed the device's interrupt setting in the "
         "guest and recorded it; after the guest's next restart the host sees the device's "
         "vfio-msi/vfio-msix vectors (vfio-pci sets them up only when the guest driver "
         "enables MSI), so the change took effect.",
         "Nothing to fix. After a guest driver update, check again with `vfio-advisor guest`.",
         _id("593baa945b4f460ead53e7eda18e2eac"), None,
         transition=guest_change_outcome, rests=guest_change_rests, holds=_never, remembered=("guest_change_said", _change_said),
         fires_on=('rt-lab-change-confirmed', 'rt-change-confirmed'),
         silent_on=('rt-change-before-restart', 'rt-msi-settled')),
    Rule("VA6010", "guest-change-not-effective", Severity.WARNING,
         "A recorded guest change did not bring MSI: the device is still on INTx",
         "`vfio-advisor fix --guest --apply` changed the device's interrupt setting in the "
         "guest and recorded it, yet after the guest's next restart the device keeps "
         "counting on vfio-intx: the guest driver did not enable MSI.",
         "Read the guest's side with `vfio-advisor guest DOMAIN`: the setting may have been "
         "reset (a driver update), written to another instance of the device, or the "
         "driver may not use MSI.",
         _id("775a39391a744635833de0214bc0652d"), None,
         transition=guest_change_outcome, rests=guest_change_rests, holds=_change_failed, held_back=held_after_change,
         fires_on=('rt-lab-change-stays-intx', 'rt-change-stays-intx'),
         silent_on=('rt-change-stays-intx-idle', 'rt-change-booting', 'rt-change-before-restart')),
)
