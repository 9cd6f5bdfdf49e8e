"""Every rule fires on each of its `fires_on` examples and stays silent on each
of its `silent_on` examples (shellcheck's per-check examples, run through the
real engine on host trees built from real config dumps)."""

from __future__ import annotations

import copy

import pytest

from tests.hosttree import load_config
from tests.rules.examples import AUDIO, EHCI, EXAMPLES, GPU, NEC, QD4, SBLIVE, X710
from tests.rules.runtime_examples import RUNTIME_EXAMPLES
from vfio_advisor.engine import run_rules
from vfio_advisor.rules import RULES, RULES_BY_ID, RUNTIME
from vfio_advisor.rules.stepping import HostSample, observe

FIRES = [(r.id, name) for r in RULES if r.check for name in r.fires_on]
SILENT = [(r.id, name) for r in RULES if r.check for name in r.silent_on]
RT_FIRES = [(r.id, name) for r in RULES if r.transition for name in r.fires_on]
RT_SILENT = [(r.id, name) for r in RULES if r.transition for name in r.silent_on]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """name -> (DomainFacts, all findings); each example is built once."""
    built: dict = {}

    def get(name: str):
        if name not in built:
            facts = EXAMPLES[name](tmp_path_factory.mktemp(name))
            built[name] = (facts, run_rules(facts))
        return built[name]
    return get


def _check(rule_id: str, facts):
    # The check itself, not run_rules: an exception must fail the test, not
    # turn into a VA9001 finding.
    return list(RULES_BY_ID[rule_id].check(facts))


@pytest.mark.parametrize("rule_id,name", FIRES, ids=[f"{r}-fires-on-{n}" for r, n in FIRES])
def test_rule_fires_on_example(example, rule_id, name):
    facts, _ = example(name)
    found = _check(rule_id, facts)
    assert found, f"{rule_id} did not fire on {name}"
    assert all(f.rule_id == rule_id for f in found)


@pytest.mark.parametrize("rule_id,name", SILENT, ids=[f"{r}-silent-on-{n}" for r, n in SILENT])
def test_rule_silent_on_example(example, rule_id, name):
    facts, _ = example(name)
    found = _check(rule_id, facts)
    assert not found, f"{rule_id} fired on {name}: " + " | ".join(f.message for f in found)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_no_rule_breaks_on_example(example, name):
    _, findings = example(name)
    assert not [f.message for f in findings if f.rule_id == "VA9001"]


def test_every_named_example_exists_and_every_example_is_named():
    named = {n for r in RULES if r.check for n in (*r.fires_on, *r.silent_on)}
    assert sorted(named - EXAMPLES.keys()) == [], "rules name examples that examples.py lacks"
    assert sorted(EXAMPLES.keys() - named) == [], "examples.py has examples no rule names"
    named = {n for r in RULES if r.transition for n in (*r.fires_on, *r.silent_on)}
    assert sorted(named - RUNTIME_EXAMPLES.keys()) == [], "runtime rules name missing examples"
    assert sorted(RUNTIME_EXAMPLES.keys() - named) == [], "runtime_examples.py has unnamed examples"


def test_every_rule_but_the_internal_ones_is_checked_or_a_transition():
    for r in RULES:
        if r.family == "internal":
            assert r.check is None and r.transition is None, r.id
            continue
        assert (r.check is None) != (r.transition is None), f"{r.id}: a check or a transition"
        assert r.fires_on, f"{r.id} has no example that must fire"
        assert r.silent_on, f"{r.id} has no example that must stay silent"
        assert not set(r.fires_on) & set(r.silent_on), r.id


# The healthy baselines: silent for every rule, so they prove nothing about
# any one rule's edge. Each rule needs a near miss too: an example one
# fact away from firing (booting instead of settled, masking on instead of
# off, PI clear instead of set, remapping on instead of off).
BASELINES = {"gpu-audio-msi", "rt-msi-settled"}


def test_every_rule_has_a_near_miss_not_only_the_baseline():
    for r in RULES:
        if r.family == "internal":
            continue
        near = set(r.silent_on) - BASELINES
        assert near, f"{r.id}: silent_on has only the healthy baseline, give it a near miss"


def test_the_daemon_runs_every_transition_in_registry_order():
    device = [r.transition for r in RULES if r.transition and r.scope == "device"]
    host = [r.transition for r in RULES if r.transition and r.scope != "device"]
    assert RUNTIME.device_transitions == tuple(dict.fromkeys(device))
    assert RUNTIME.host_transitions == tuple(dict.fromkeys(host))


# --- runtime rules: one pure step each ----------------------------------------

@pytest.fixture(scope="module")
def runtime_example(tmp_path_factory):
    built: dict = {}

    def get(name: str):
        if name not in built:
            built[name] = RUNTIME_EXAMPLES[name](tmp_path_factory.mktemp(name))
        return built[name]
    return get


def _step(rule_id: str, case: tuple):
    rule = RULES_BY_ID[rule_id]
    if isinstance(case[1], HostSample):
        return rule.transition(*case)[1]
    state, sample, elapsed, config = case
    observed = observe(state, sample, elapsed)
    _, found = rule.transition(RUNTIME.own(rule, observed), observed, sample, elapsed, config)
    return [f for f in found if f.rule_id == rule_id]


@pytest.mark.parametrize("rule_id,name", RT_FIRES, ids=[f"{r}-fires-on-{n}" for r, n in RT_FIRES])
def test_runtime_rule_fires_on_example(runtime_example, rule_id, name):
    found = _step(rule_id, runtime_example(name))
    assert found, f"{rule_id} did not fire on {name}"
    assert all(f.severity == RULES_BY_ID[rule_id].severity for f in found)


@pytest.mark.parametrize("rule_id,name", RT_SILENT, ids=[f"{r}-silent-on-{n}" for r, n in RT_SILENT])
def test_runtime_rule_silent_on_example(runtime_example, rule_id, name):
    found = _step(rule_id, runtime_example(name))
    assert not found, f"{rule_id} fired on {name}: " + " | ".join(f.message for f in found)


def test_runtime_transitions_are_pure(runtime_example):
    """Same input, same output, and the inputs (state, sample, config) are
    left as they were: a copy taken before the step still equals them after.
    (`case[0] is state` held whatever a transition wrote into them.)"""
    for name in RUNTIME_EXAMPLES:
        case = runtime_example(name)
        if not isinstance(case[1], HostSample):
            before = copy.deepcopy(case)
            assert before == case, name  # the comparison below can see a change
            assert RUNTIME.step_device(*case) == RUNTIME.step_device(*case)
            assert case == before, name


def test_one_remedy_names_every_function_for_va1001_va6001_va6003(example, runtime_example):
    """Windows keeps MSISupported per function: every remedy that tells the
    guest to use MSI names both the GPU and its HDMI audio."""
    facts, findings = example("gpu-audio-intx-windows")
    (va1001,) = [f for f in findings if f.rule_id == "VA1001"]
    (va6001,) = _step("VA6001", runtime_example("rt-intx-settled-windows"))
    (va6003,) = _step("VA6003", runtime_example("rt-msi-last-run-intx-now"))
    for f in (va1001, va6001, va6003):
        assert GPU in f.remedy and AUDIO in f.remedy, f.rule_id
    assert va1001.remedy == va6001.remedy == va6003.remedy


# --- what the findings say --------------------------------------------------

def _windows_id(config: bytes) -> str:
    """The PnP hardware ID, from the dump's header bytes (not from the tool)."""
    le = lambda off: int.from_bytes(config[off:off + 2], "little")  # noqa: E731
    return (f"PCI\\VEN_{le(0):04X}&DEV_{le(2):04X}&SUBSYS_{le(0x2E):04X}{le(0x2C):04X}"
            f"&REV_{config[8]:02X}")


NAVI23_GPU_ID = r"PCI\VEN_1002&DEV_73FF&SUBSYS_0E361002&REV_C3"
NAVI23_AUDIO_ID = r"PCI\VEN_1002&DEV_AB28&SUBSYS_AB281002&REV_00"


def test_hardware_ids_are_the_dumps():
    assert _windows_id(load_config(QD4, "05:00.0")) == NAVI23_GPU_ID
    assert _windows_id(load_config(QD4, "05:00.1")) == NAVI23_AUDIO_ID


def test_va1001_windows_remedy_names_both_functions(example):
    _, findings = example("gpu-audio-intx-windows")
    (va1001,) = [f for f in findings if f.rule_id == "VA1001"]
    assert va1001.subject == AUDIO  # the GPU is on MSI: no finding for it
    assert "MSISupported" in va1001.remedy
    assert NAVI23_GPU_ID in va1001.remedy and NAVI23_AUDIO_ID in va1001.remedy
    assert GPU in va1001.remedy and AUDIO in va1001.remedy


def test_va1001_linux_remedy_is_the_hda_module_option(example):
    _, findings = example("gpu-audio-intx-linux")
    (va1001,) = [f for f in findings if f.rule_id == "VA1001"]
    assert va1001.subject == AUDIO
    assert "snd_hda_intel enable_msi=1" in va1001.remedy
    assert "MSISupported" not in va1001.remedy


@pytest.mark.parametrize("name, subject, line, holder", [
    # ohci-pci enabled the NEC, so the kernel routed it: its handler is on IRQ 16.
    ("nec-host-driver-shared-nointxmask", NEC, 16, EHCI),
    # The real kernel's EBUSY ("genirq: Flags mismatch irq 23" in the
    # capture's dmesg): the domain runs, so its devices are enabled.
    ("lab-nointxmask-after", "0000:00:07.0", 23, "vfio-intx(0000:00:03.0)"),
], ids=["host-driver-handler-on-line", "lab-domain-running"])
def test_va2002_is_firm_where_the_line_is_confirmed(example, name, subject, line, holder):
    _, findings = example(name)
    (va2002,) = [f for f in findings if f.rule_id == "VA2002"]
    assert va2002.subject == subject
    assert f"needs host IRQ {line} to itself, but {holder} holds it" in va2002.message
    assert "QEMU will fail to start the VM with \"Device or resource busy\"" in va2002.message
    assert "sysfs irq" not in va2002.message and "if that line" not in va2002.message
    assert va2002.remedy.startswith(f"Free host IRQ {line}: unbind or disable {holder}")


def test_va2002_hedges_a_line_only_sysfs_names(example):
    """The X710 under nointxmask=1 cannot mask INTx (that is firm), but the
    VM is shut off and nothing of the X710's is on IRQ 16: only sysfs irq
    says 16, which may be the number firmware left before the kernel
    routes the device at enable."""
    _, findings = example("x710-shared-line-nointxmask")
    va2002 = [f for f in findings if f.rule_id == "VA2002"]
    assert [f.subject for f in va2002] == list(X710)
    for f in va2002:
        assert "cannot mask INTx at the device (vfio_pci nointxmask=1" in f.message
        assert "if that line is IRQ 16 (sysfs irq 16; before vfio-pci enables" in f.message
        assert f"{EHCI} holds it" in f.message and "Device or resource busy" in f.message
        assert "needs host IRQ 16 to itself" not in f.message
        assert f.remedy.startswith(f"Free its host line: if that is IRQ 16, unbind or disable {EHCI}")


def test_pci_pm_1_0_is_a_hint_not_proof(example):
    """The SB Live! (PCI PM 1.0, no Interrupt Status, INTx Disable clear) on
    a line EHCI holds: no recording shows how the kernel's probe of its
    Command bit 10 came out, nor a failed start (the dump is a 2001 LKML
    attachment without a vfio log), so it gets VA2003's warning, not
    VA2002's error."""
    facts, findings = example("sblive-shared-line")
    masking = facts.device(SBLIVE).intx_masking(facts.host.kernel.nointxmask)
    assert masking.supported is None
    assert "PCI PM 1.0" in masking.evidence and "likely" in masking.evidence
    assert [f.rule_id for f in findings if f.rule_id.startswith("VA2")] == ["VA2003"]
    (va2003,) = [f for f in findings if f.rule_id == "VA2003"]
    assert va2003.severity.name == "WARNING"
    assert va2003.message.startswith("[1102:0002] may lack PCI 2.3 INTx masking (")
    assert "if that line is IRQ 16 (sysfs irq 16;" in va2003.message  # nothing of its own on 16


def test_va2001_names_the_other_handler(example):
    _, findings = example("gpu-audio-intx-windows")
    (va2001,) = [f for f in findings if f.rule_id == "VA2001"]
    assert va2001.subject == AUDIO
    assert EHCI in va2001.message
    assert f"vfio-intx({AUDIO})" not in va2001.message  # its own handler is not "another"


def test_posted_msi_is_never_read_as_silence_or_affinity(runtime_example):
    """With MSI posted to the guest (VT-d PI, AVIC), the host's flat count
    says nothing, so VA6006 and VA6007 stay silent for those vectors."""
    for name, rule_id in (("rt-no-vectors-settled", None), ("rt-affinity-on-pinned", "VA6007")):
        state, sample, elapsed, config = runtime_example(name)
        if rule_id is None:  # an MSI device whose vectors stay at zero
            sample = runtime_example("rt-msi-settled")[1]
            sample = sample._replace(interrupts=sample.interrupts._replace(
                vector_counts=tuple((i, 0) for i, _ in sample.interrupts.vector_counts)))
            state, rule_id = type(state)(sample.device.address, mode="msi"), "VA6006"
            assert _step(rule_id, (state, sample, elapsed, config))
        posted = sample._replace(host_can_count_msi=False)
        assert _step(rule_id, (state, sample, elapsed, config)), rule_id
        # As the Watcher holds such a device on a posting host: unobservable,
        # its counters as flat as a posted vector's stay.
        flat = state._replace(observable=False, counts=sample.interrupts.vector_counts)
        assert not _step(rule_id, (flat, posted, elapsed, config)), rule_id
        # A counter that rose shows the host handler ran (stepping._counted):
        # then the finding is the same as on a host that cannot post.
        if rule_id == "VA6007":
            risen = flat._replace(counts=tuple((i, max(n - 5, 0)) for i, n in sample.interrupts.vector_counts))
            assert _step(rule_id, (risen, posted, elapsed, config)), rule_id


def test_stays_on_intx_says_how_long_the_guest_ran(runtime_example):
    """VA6001 fires 120 s after the start in this example, well past the
    10 s settle time: its message says 120 s (it said the settle time once,
    "10 s after the domain started", for a finding made 161 s in)."""
    state, sample, elapsed, config = runtime_example("rt-intx-settled-windows")
    assert sample.since_start == 120 and config.settle != 120
    [found] = _step("VA6001", (state, sample, elapsed, config))
    assert "still on INTx 120 s after the guest started:" in found.message, found.message
