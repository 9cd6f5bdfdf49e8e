"""Named examples for the runtime rules (rules/runtime.py), as EXAMPLES in
examples.py are for the static ones: each builds one step's input from the
same real host trees (QD4 Navi 23 dump, the 2015 IR capture) and domain XML.

A device example returns (previous DeviceState, DeviceSample, elapsed,
Config); the rule's transition runs after `observe`, as in the daemon. The
VA8003 examples return (already reported, HostSample, elapsed, Config), the
rows skipped counted on a real capture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from tests.hosttree import load_capture
from tests.rules.examples import (
    AUDIO, GPU, IR_CAPTURE, gpu_audio_intx_linux, gpu_audio_intx_windows, gpu_audio_msi,
)
from vfio_advisor.config import DEFAULTS
from vfio_advisor.facts.interrupts import Interrupts, sample_table
from vfio_advisor.facts.model import DomainFacts, device_interrupts
from vfio_advisor.rules import RUNTIME
from vfio_advisor.rules.runtime import FLAGGED, intx_or_msi, intx_storm
from vfio_advisor.rules.stepping import DeviceSample, GuestChange, HostSample

RUNTIME_EXAMPLES: dict[str, Callable[[Path], tuple]] = {}
SETTLED, BOOTING, INTERVAL = 120.0, 10.0, 5.0


def example(name: str):
    def register(fn):
        assert name not in RUNTIME_EXAMPLES, name
        RUNTIME_EXAMPLES[name] = fn
        return fn
    return register


def _sample(facts: DomainFacts, bdf: str, since_start: float, table: Interrupts | None = None,
            **extra) -> DeviceSample:
    dev = facts.device(bdf)
    irq = dev.interrupts if table is None else device_interrupts(bdf, dev.device, table)
    return DeviceSample(interrupts=irq, since_start=since_start, facts=facts, device=dev, **extra)


def DeviceState(bdf: str, flagged_intx: bool = False, storming: int = 0, **fields):
    """A device's state with the runtime rules' slots at their start, but
    VA6001 already said (`flagged_intx`) or a storm's run-up (`storming`)."""
    slots = list(RUNTIME.initial)
    if flagged_intx:
        slots[RUNTIME.slot_of(intx_or_msi)] = FLAGGED
    if storming:
        slots[RUNTIME.slot_of(intx_storm)] = (storming, False)
    return RUNTIME.new_device(bdf)._replace(slots=tuple(slots), **fields)


def _earlier(sample: DeviceSample, mode: str, less: int, **state) -> DeviceState:
    """The state one interval before: the same vectors, `less` interrupts fewer."""
    counts = tuple((irq, total - less) for irq, total in sample.interrupts.vector_counts)
    return DeviceState(sample.device.address, mode=mode, counts=counts, **state)


def _intx_step(facts: DomainFacts, since_start: float, per_second: float, **state):
    s = _sample(facts, AUDIO, since_start)
    return _earlier(s, "intx", int(per_second * INTERVAL), **state), s, INTERVAL, DEFAULTS


@example("rt-intx-settled-windows")
def intx_settled_windows(tmp: Path):
    """HDMI audio still counting on vfio-intx (shared with EHCI) 120 s after start."""
    return _intx_step(gpu_audio_intx_windows(tmp), SETTLED, 200)


@example("rt-intx-booting")
def intx_booting(tmp: Path):
    """The same 10 s after start: the guest driver may still switch to MSI."""
    return _intx_step(gpu_audio_intx_windows(tmp), BOOTING, 200)


@example("rt-msi-settled")
def msi_settled(tmp: Path):
    """Both functions on vfio-msi and counting: the healthy case."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED)
    return _earlier(s, "msi", 1000), s, INTERVAL, DEFAULTS


@example("rt-flagged-now-msi")
def flagged_now_msi(tmp: Path):
    """Flagged on INTx at the last sample, on vfio-msi now (the fix worked)."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED)
    return DeviceState(AUDIO, mode="intx", flagged_intx=True), s, INTERVAL, DEFAULTS


@example("rt-flagged-reset-now-msi")
def flagged_reset_now_msi(tmp: Path):
    """Flagged on INTx, then a sample inside a guest reboot's device reset (no
    vfio vector: QEMU frees them all for the reset), on vfio-msi now."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED)
    return DeviceState(AUDIO, mode="none", flagged_intx=True), s, INTERVAL, DEFAULTS


@example("rt-msi-last-run-intx-now")
def msi_last_run_intx_now(tmp: Path):
    """The state file says MSI last run; this run's first settled sample is INTx."""
    s = _sample(gpu_audio_intx_windows(tmp), AUDIO, SETTLED,
                previous_run={"mode": "msi", "flagged_intx": False})
    return DeviceState(AUDIO), s, None, DEFAULTS


@example("rt-storm-own-line")
def storm_own_line(tmp: Path):
    """30,000 INTx/s on the audio's own line, the third sample in a row."""
    return _intx_step(gpu_audio_intx_linux(tmp), SETTLED, 30000, storming=2)


@example("rt-storm-shared-line")
def storm_shared_line(tmp: Path):
    """30,000 INTx/s on a line shared with EHCI, the third sample in a row."""
    return _intx_step(gpu_audio_intx_windows(tmp), SETTLED, 30000, storming=2)


@example("rt-no-vectors-settled")
def no_vectors_settled(tmp: Path):
    """No vfio vector of the GPU in /proc/interrupts 120 s after start."""
    s = _sample(gpu_audio_msi(tmp), GPU, SETTLED, Interrupts(8, (), ()))
    return DeviceState(GPU, mode="none"), s, INTERVAL, DEFAULTS


@example("rt-no-vectors-booting")
def no_vectors_booting(tmp: Path):
    s = _sample(gpu_audio_msi(tmp), GPU, BOOTING, Interrupts(8, (), ()))
    return DeviceState(GPU, mode="none"), s, INTERVAL, DEFAULTS


@example("rt-affinity-on-pinned")
def affinity_on_isolated(tmp: Path):
    """The audio's MSI vector may run on CPUs 0-7, and the host isolates 2-3."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, vector_affinity=(("51", frozenset(range(8))),),
                isolated_cpus=frozenset({2, 3}))
    return _earlier(s, "msi", 1000), s, INTERVAL, DEFAULTS


@example("rt-affinity-housekeeping")
def affinity_housekeeping(tmp: Path):
    """The same vector kept on housekeeping CPUs 0-1."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, vector_affinity=(("51", frozenset({0, 1})),),
                isolated_cpus=frozenset({2, 3}))
    return _earlier(s, "msi", 1000), s, INTERVAL, DEFAULTS


def _capture_vfio_rows(cut: bool) -> int:
    text = load_capture(IR_CAPTURE)
    if cut:  # the vfio row cut inside its CPU columns, as a short read leaves it
        start = text.index("vfio-msi")
        row_start = text.rfind("\n", 0, start) + 1
        text = text[:row_start] + text[row_start:row_start + 12] + "\n" + text[text.index("\n", start) + 1:]
    # IRQ 45 is watched (a device's INTx line is looked up by its label).
    _, skipped = sample_table(text, frozenset({"45"}))
    return skipped


@example("rt-rows-cut")
def rows_cut(tmp: Path):
    return False, HostSample(_capture_vfio_rows(cut=True)), INTERVAL, DEFAULTS


@example("rt-rows-clean")
def rows_clean(tmp: Path):
    return False, HostSample(_capture_vfio_rows(cut=False)), INTERVAL, DEFAULTS


# --- posted MSI (VT-d PI / AVIC): host_can_count_msi False ------------------

@example("rt-msi-posted")
def msi_posted(tmp: Path):
    """The audio on vfio-msi on a host that posts MSIs to the vCPU, its
    counters flat since it started (so never observable)."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, host_can_count_msi=False)
    return _earlier(s, "msi", 0, observable=False), s, INTERVAL, DEFAULTS


@example("rt-msi-posted-booting")
def msi_posted_booting(tmp: Path):
    """Near miss of VA6008: the same 10 s after the start: its counters may
    yet move (stepping._counted), so nothing is said before the settle time."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, BOOTING, host_can_count_msi=False)
    return _earlier(s, "msi", 0, observable=False), s, INTERVAL, DEFAULTS


@example("rt-intx-posted-host")
def intx_posted_host(tmp: Path):
    """Near miss: the same posting host, the audio on vfio-intx: INTx is never posted."""
    s = _sample(gpu_audio_intx_windows(tmp), AUDIO, SETTLED, host_can_count_msi=False)
    return _earlier(s, "intx", 1000), s, INTERVAL, DEFAULTS


@example("rt-msi-zero-posted")
def msi_zero_posted(tmp: Path):
    """Near miss of VA6006: MSI vectors at zero, but posted: no evidence of silence."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, host_can_count_msi=False)
    s = s._replace(interrupts=s.interrupts._replace(
        vector_counts=tuple((i, 0) for i, _ in s.interrupts.vector_counts)))
    return DeviceState(AUDIO, mode="msi", observable=False), s, INTERVAL, DEFAULTS


@example("rt-affinity-posted")
def affinity_posted(tmp: Path):
    """Near miss of VA6007: the vector's affinity meets isolated CPUs, but it is posted."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, vector_affinity=(("51", frozenset(range(8))),),
                isolated_cpus=frozenset({2, 3}), host_can_count_msi=False)
    return _earlier(s, "msi", 0, observable=False), s, INTERVAL, DEFAULTS


# --- real kernel states: two moments of a lab scenario ----------------------
#
# The runtime rules on the lab's real guest kernels
# (lab/captures/ORIGIN.md). The step is from one captured moment to the
# next, with the guest's uptime as the clock; the lab's moments are seconds
# apart, so these examples run with settle 0 (and the storm scenario with a
# threshold below its rate). Hand-made steps stay for what the lab cannot
# make: the GPU + HDMI audio remedy naming both functions (Navi 23 dumps),
# A change recorded by `fix --guest --apply` (guest/changes.py) in run 7 of
# the domain, at host time 5000.
CHANGE = GuestChange("2026-12-06T01:23:20Z", 5000.0, "MSISupported=1 for PCI\\VEN_10DE&DEV_10F0",
                     "windows", run_id=7)


@example("rt-change-confirmed")
def change_confirmed(tmp: Path):
    """A new run (domain ID 8) after the change, the HDMI audio on vfio-msi."""
    s = _sample(gpu_audio_msi(tmp), AUDIO, SETTLED, guest_change=CHANGE, run_id=8)
    return DeviceState(AUDIO, mode="intx"), s, INTERVAL, DEFAULTS


@example("rt-change-before-restart")
def change_before_restart(tmp: Path):
    """The run the change was made in (ID 7, booted before it), still on INTx:
    the change waits for the guest's restart."""
    state, s, elapsed, config = _intx_step(gpu_audio_intx_windows(tmp), SETTLED, 200)
    return state, s._replace(guest_change=CHANGE, run_id=7, booted_at=4000.0), elapsed, config


@example("rt-change-stays-intx")
def change_stays_intx(tmp: Path):
    """Rebooted after the change (same ID, booted at 6000), settled, and still
    counting on vfio-intx."""
    state, s, elapsed, config = _intx_step(gpu_audio_intx_windows(tmp), SETTLED, 200)
    return state, s._replace(guest_change=CHANGE, run_id=7, booted_at=6000.0), elapsed, config


@example("rt-change-stays-intx-idle")
def change_stays_intx_idle(tmp: Path):
    """The same, but the line did not count: an idle device proves nothing."""
    state, s, elapsed, config = _intx_step(gpu_audio_intx_windows(tmp), SETTLED, 0)
    return state, s._replace(guest_change=CHANGE, run_id=8), elapsed, config


@example("rt-change-booting")
def change_booting(tmp: Path):
    """A new run after the change, 10 s after its start: INTx during boot is normal."""
    state, s, elapsed, config = _intx_step(gpu_audio_intx_windows(tmp), BOOTING, 200)
    return state, s._replace(guest_change=CHANGE, run_id=8), elapsed, config

# the pinned-vCPU branch of VA6007 (a domain XML fact), cut rows (VA8003 is
# from the 2015 capture), and posted MSI (no PI in QEMU's intel-iommu).

LAB_CONFIG = DEFAULTS._replace(settle=0.0)


def _uptime(capture: str) -> float:
    from tests.rules.examples import CAPTURES  # noqa: PLC0415
    return float((CAPTURES / capture / "proc/uptime").read_text().split()[0])


def lab_step(before: str | None, now: str, xml: str = "edu.xml", bdf: str = "0000:00:03.0",
             config=LAB_CONFIG, state: dict | None = None, **extra):
    """(state at `before`, sample at `now`, elapsed, config) for one device."""
    from tests.rules.examples import CAPTURES, LAB_XML, lab  # noqa: PLC0415
    from vfio_advisor.facts.interrupts import parse_interrupts  # noqa: PLC0415

    facts = lab(CAPTURES / now, LAB_XML / xml)
    sample = _sample(facts, bdf, _uptime(now), **extra)
    if before is None:
        return DeviceState(bdf, **(state or {})), sample, None, config
    table = parse_interrupts((CAPTURES / before / "proc/interrupts").read_text())
    prev = device_interrupts(bdf, facts.device(bdf).device, table)
    mode = prev.mode if prev.mode in ("intx", "msi", "msix") else "none"
    st = DeviceState(bdf, mode=mode, counts=prev.vector_counts, **(state or {}))
    return st, sample, _uptime(now) - _uptime(before), config


@example("rt-lab-stays-intx")
def lab_stays_intx(tmp: Path):
    """The MSI-capable edu keeps counting on vfio-intx (stays-intx-3 -> -4)."""
    return lab_step("stays-intx-3", "stays-intx-4")


@example("rt-lab-switch-to-msi")
def lab_switch_to_msi(tmp: Path):
    """Flagged on INTx at switch-2, on vfio-msi at switch-3."""
    return lab_step("switch-2", "switch-3", "switch.xml", state={"flagged_intx": True})


@example("rt-lab-nomsi-after-msi-run")
def lab_nomsi_after_msi_run(tmp: Path):
    """The previous run had the edu on MSI (switch-4); this run is the pci=nomsi
    kernel, where it stays on INTx (nomsi-2)."""
    return lab_step(None, "nomsi-2", previous_run={"mode": "msi", "flagged_intx": False},
                    host_msi_possible=False)


@example("rt-lab-storm-shared")
def lab_storm_shared(tmp: Path):
    """5000 INTx in 1.09 s on IRQ 23, which both edus share (storm-shared-1 -> -2)."""
    return lab_step("storm-shared-1", "storm-shared-2", "shared.xml",
                    config=LAB_CONFIG._replace(storm_rate=1000.0, storm_samples=1))


@example("rt-lab-no-vectors")
def lab_no_vectors(tmp: Path):
    """nointxmask-before: the edu is bound to vfio-pci and nothing set up its vectors."""
    return lab_step(None, "nointxmask-before", "shared.xml")


@example("rt-lab-isolcpus")
def lab_isolcpus(tmp: Path):
    """isolcpus=1 irqaffinity=0: the edu's vfio-msi vector moved onto isolated CPU 1."""
    from tests.rules.examples import CAPTURES  # noqa: PLC0415
    from vfio_advisor.facts.kernel import parse_cpulist  # noqa: PLC0415

    root = CAPTURES / "isolcpus-2"
    return lab_step("isolcpus-1", "isolcpus-2", vector_affinity=(
        ("25", parse_cpulist((root / "proc/irq/25/smp_affinity_list").read_text())),),
        isolated_cpus=parse_cpulist((root / "sys/devices/system/cpu/isolated").read_text()))



@example("rt-lab-intx-own-line")
def lab_intx_own_line(tmp: Path):
    """3000 INTx in 0.78 s on IRQ 23, the edu's alone (stays-intx-3 -> -4),
    against a storm threshold of 1000/s."""
    return lab_step("stays-intx-3", "stays-intx-4",
                    config=LAB_CONFIG._replace(storm_rate=1000.0, storm_samples=1))


@example("rt-lab-msi-posted")
def lab_msi_posted(tmp: Path):
    """Near miss of VA6008: the edu on vfio-msi (switch-3 -> -4) with
    host_can_count_msi False, as the Watcher sets it on a posting host
    (published posted-* platforms: QEMU's intel-iommu has no PI, so the lab
    cannot post). Its vfio-msi counter rises between the moments, which a
    posted vector's never does: the host handler ran, so it is counted and
    nothing is said (stepping._counted), as on a host whose KVM left the
    vector remapped."""
    return lab_step("switch-3", "switch-4", "switch.xml", host_can_count_msi=False,
                    state={"observable": False})


# The lab's edu under its Linux guest; the change as `fix --guest --apply`
# records an option file (the guest's run, ID 3, at host time 100).
LAB_CHANGE = GuestChange("2026-12-06T01:00:00Z", 100.0, "options edu msi=1 in "
                         "/etc/modprobe.d/vfio-advisor-msi.conf", "linux", run_id=3)


@example("rt-lab-change-confirmed")
def lab_change_confirmed(tmp: Path):
    """Rebooted after the change (booted at 200): the edu on vfio-msi (switch-2 -> -3)."""
    return lab_step("switch-2", "switch-3", "switch.xml", guest_change=LAB_CHANGE, run_id=3,
                    booted_at=200.0)


@example("rt-lab-change-stays-intx")
def lab_change_stays_intx(tmp: Path):
    """A new run (ID 4) after the change, and the edu keeps counting on vfio-intx
    (stays-intx-3 -> -4)."""
    return lab_step("stays-intx-3", "stays-intx-4", guest_change=LAB_CHANGE, run_id=4)
