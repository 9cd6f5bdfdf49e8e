"""The rules on kernel states only a real guest kernel shows, each a real
guest kernel's /proc and /sys (lab/captures, made by `make lab`; how, in
lab/captures/ORIGIN.md):

- nointxmask-before / -after: vfio_pci nointxmask=1, two edus on IRQ 23;
  before anyone enables INTx, and after the second VFIO_DEVICE_SET_IRQS got
  EBUSY (the kernel's "genirq: Flags mismatch irq 23" kept in `dmesg`);
- nomsi-1 / -2: pci=nomsi, MSI refused with EINVAL, the edu on INTx;
- intremap-off: intremap=off with vfio_iommu_type1 allow_unsafe_interrupts=1;
- isolcpus-1 / -2: isolcpus=1 irqaffinity=0 on two CPUs, a vfio-msi vector
  moved onto CPU 1, firing there.

What the product already gets right is asserted; what it should do and does
not do yet is marked xfail(strict=True), so it turns into a failure
(XPASS) the day it lands and the marker must go.

The product is driven through its CLI (`vfio-advisor advise`) and through
tests/lab/replay.py (the daemon's Watcher, logging into a private journald);
this file imports no vfio_advisor module, so the core can move underneath.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.journal import run_in_journal

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
LAB_DOMAINS = REPO / "tests/data/domains/lab"
DOMAINS = REPO / "tests/data/domains"
WINDOWS = "http://microsoft.com/win/11"
ALL_MOMENTS = sorted(p.parent.parent.name for p in CAPTURES.glob("*/proc/interrupts"))


# --- driving the product ---------------------------------------------------

def _env() -> dict:
    # The clone's own package first, whatever the venv has installed.
    return dict(os.environ, PYTHONPATH=str(REPO))


def advise(capture: str, *xmls: Path, names: list[str] = ()) -> dict:
    args = [sys.executable, "-m", "vfio_advisor", "advise", *names, "--host-root",
            str(CAPTURES / capture), "--format", "json"]
    for xml in xmls:
        args += ["--xml", str(xml)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=_env(), cwd=REPO)
    assert out.returncode in (0, 1), out.stderr
    return json.loads(out.stdout)


def devices(doc: dict) -> dict[str, dict]:
    return {d["host_address"]: d | {"_domain": dom["name"]}
            for dom in doc["domains"] for d in dom["devices"]}


def findings(doc: dict) -> list[dict]:
    """Every finding of the report, domain-level and per-device, each with the
    domain and device it came under."""
    out = []
    for dom in doc["domains"]:
        for f in dom.get("findings", []):
            out.append(f | {"_domain": dom["name"], "_device": None})
        for dev in dom["devices"]:
            for f in dev["findings"]:
                out.append(f | {"_domain": dom["name"], "_device": dev["host_address"]})
    return out


def text_of(finding: dict) -> str:
    return json.dumps(finding)


def windows(tmp_path: Path, xml: Path) -> Path:
    text = xml.read_text()
    assert "http://debian.org/debian/12" in text
    out = tmp_path / f"win-{xml.name}"
    out.write_text(text.replace("http://debian.org/debian/12", WINDOWS))
    return out


def daemon(tmp_path: Path, xml: Path, moments: list[str], *, settle: float = 0.0,
           storm: float = 1e9, state: Path | str = "-", work: str = "j") -> list[dict]:
    """The daemon's findings, as logged into a private journald, replaying the
    moments with the guest's uptime as the clock (tests/lab/replay.py)."""
    run = run_in_journal(tmp_path / work, [sys.executable, "-m", "tests.lab.replay", str(xml),
                                           str(settle), str(storm), str(state),
                                           *[str(CAPTURES / m) for m in moments]], env=_env())
    assert run.rc == 0, run.stderr
    return [e for e in run.entries if e.get("VFIO_ADVISOR_RULE")]


# --- reading a capture (the lab's side, not the product's) ------------------

def vfio_lines(capture: str) -> dict[int, tuple[int, str]]:
    """/proc/interrupts rows with a vfio handler: irq -> (total count, handlers)."""
    rows = {}
    lines = (CAPTURES / capture / "proc/interrupts").read_text().splitlines()
    ncpu = len(lines[0].split())
    for line in lines[1:]:
        head, _, rest = line.partition(":")
        if not head.strip().isdigit() or "vfio" not in rest:
            continue
        fields = rest.split()
        rows[int(head)] = (sum(int(x) for x in fields[:ncpu]), rest)
    return rows


# --- the captures hold what the daemon's sampler reads ---------------------

@pytest.mark.parametrize("capture", ALL_MOMENTS)
def test_capture_holds_kernel_irq_descriptors_of_vfio_irqs(capture):
    root = CAPTURES / capture
    for irq, (total, handlers) in vfio_lines(capture).items():
        desc = root / f"sys/kernel/irq/{irq}"
        for attr in ("per_cpu_count", "actions", "chip_name", "hwirq", "type", "name"):
            assert (desc / attr).is_file(), f"{capture}: {desc / attr} missing"
        # The same kernel counters seen two ways. sysfs is read after
        # /proc/interrupts: a native handler on the line (virtio0 in "shared")
        # may count in between; vfio users are paused at a capture.
        per_cpu = [int(x) for x in (desc / "per_cpu_count").read_text().strip().split(",")]
        actions = (desc / "actions").read_text().strip().split(",")
        if all(a.startswith("vfio") for a in actions):
            assert sum(per_cpu) == total, (capture, irq)
        else:
            assert sum(per_cpu) >= total, (capture, irq)
        for action in actions:
            assert action in handlers
    for dev in (root / "sys/bus/pci/devices").iterdir():
        real = dev.resolve()
        assert (real / "irq").is_file(), dev
        for vector in (real / "msi_irqs").glob("*") if (real / "msi_irqs").is_dir() else ():
            assert (root / f"sys/kernel/irq/{vector.name}").is_dir() or int(vector.name) not in vfio_lines(capture)


# --- nointxmask=1, two devices on one line ---------------------------------

def test_nointxmask_lab_state_is_the_kernel_refusing_the_second_device():
    after = CAPTURES / "nointxmask-after"
    assert (after / "sys/module/vfio_pci/parameters/nointxmask").read_text().strip() == "Y"
    m = re.search(r"genirq: Flags mismatch irq (\d+)\. \S+ \(vfio-intx\(0000:00:07\.0\)\) vs\. \S+ "
                  r"\(vfio-intx\(0000:00:03\.0\)\)", (after / "dmesg").read_text())
    assert m and m.group(1) == "23"
    assert "Device or resource busy (errno 16)" in (after / "vfio-user.2").read_text()
    # before: both bound to vfio-pci, nobody holds the line
    assert vfio_lines("nointxmask-before") == {}
    for bdf in ("0000:00:03.0", "0000:00:07.0"):
        assert os.readlink(CAPTURES / f"nointxmask-before/sys/bus/pci/devices/{bdf}/driver").endswith("/vfio-pci")


def test_nointxmask_after_the_holder_blocks_the_second_device_va2002():
    devs = devices(advise("nointxmask-after", LAB_DOMAINS / "shared.xml"))
    blocked, holder = devs["0000:00:07.0"], devs["0000:00:03.0"]
    (va2002,) = [f for f in blocked["findings"] if f["rule"] == "VA2002"]
    assert va2002["severity"] == "error"
    # the line and the holder the real kernel named in its genirq message
    assert "IRQ 23" in va2002["message"] and "vfio-intx(0000:00:03.0)" in va2002["message"]
    assert "nointxmask" in va2002["message"]
    assert "VA2002" not in [f["rule"] for f in holder["findings"]]


def test_nointxmask_after_across_two_domains_va2002():
    doc = advise("nointxmask-after", DOMAINS / "lab-nointxmask-a.xml", DOMAINS / "lab-nointxmask-b.xml")
    by_domain = {(f["_domain"], f["rule"]) for f in findings(doc)}
    assert ("lab-nointxmask-b", "VA2002") in by_domain
    assert ("lab-nointxmask-a", "VA2002") not in by_domain


def _predicted_conflict(doc: dict, bdf: str, other: str) -> list[dict]:
    """VA2004 (error) on `bdf` naming the other device on its host line: what
    the user needs before anyone holds the line."""
    return [f for f in findings(doc) if f["_device"] == bdf and f["rule"] == "VA2004"
            and f["severity"] == "error" and other in text_of(f)]


def test_nointxmask_before_predicts_the_conflict_in_one_domain():
    doc = advise("nointxmask-before", LAB_DOMAINS / "shared.xml")
    conflict = _predicted_conflict(doc, "0000:00:07.0", "0000:00:03.0") \
        or _predicted_conflict(doc, "0000:00:03.0", "0000:00:07.0")
    assert conflict
    assert "nointxmask" in text_of(conflict[0])
    # Before vfio-pci enables them both show sysfs irq 11 (what firmware left);
    # the prediction that they share a line is what the next moment proves:
    # the real kernel put both on IRQ 23 and refused the second (EBUSY).
    assert "sysfs irq 11" in conflict[0]["message"]
    after = CAPTURES / "nointxmask-after/sys/bus/pci/devices"
    assert {(after / b / "irq").read_text().strip() for b in ("0000:00:03.0", "0000:00:07.0")} == {"23"}
    assert "genirq: Flags mismatch irq 23" in (CAPTURES / "nointxmask-after/dmesg").read_text()
    # the remedy that works here: masking back on
    assert "without nointxmask=1" in conflict[0]["remedy"]


def test_nointxmask_after_is_va2002_not_a_second_prediction():
    # Once the first device holds the line, VA2002 says it; VA2004 stays quiet.
    rules = [f["rule"] for f in findings(advise("nointxmask-after", LAB_DOMAINS / "shared.xml"))]
    assert "VA2002" in rules and "VA2004" not in rules


def test_nointxmask_before_names_the_conflicting_domains():
    doc = advise("nointxmask-before", DOMAINS / "lab-nointxmask-a.xml", DOMAINS / "lab-nointxmask-b.xml")
    texts = {f["_domain"]: text_of(f) for f in findings(doc) if f["rule"] == "VA2005"}
    assert "lab-nointxmask-b" in texts.get("lab-nointxmask-a", "")
    assert "lab-nointxmask-a" in texts.get("lab-nointxmask-b", "")
    # each domain alone starts: no error for either
    assert [f for f in findings(doc) if f["severity"] == "error"] == []


def test_nointxmask_one_domain_alone_has_no_conflict():
    # Near miss: the same host, one of the two domains only.
    doc = advise("nointxmask-before", DOMAINS / "lab-nointxmask-a.xml")
    assert not {"VA2004", "VA2005"} & {f["rule"] for f in findings(doc)}


def test_shared_line_with_masking_predicts_no_conflict():
    # Near miss of the above: the same two edus on IRQ 23, masking on
    # (nointxmask=N), both holding the line at once: no error at all.
    assert (CAPTURES / "shared/sys/module/vfio_pci/parameters/nointxmask").read_text().strip() == "N"
    doc = advise("shared", LAB_DOMAINS / "shared.xml")
    assert [f["rule"] for f in findings(doc) if f["severity"] == "error"] == []


# --- pci=nomsi --------------------------------------------------------------

GUEST_MSI_REMEDIES = ("MSISupported", "modinfo -p")


def test_nomsi_lab_state_is_msi_refused():
    assert "pci=nomsi" in (CAPTURES / "nomsi-2/proc/cmdline").read_text()
    assert "Invalid argument (errno 22)" in (CAPTURES / "nomsi-1/vfio-user.1").read_text()
    assert [h for _, h in vfio_lines("nomsi-2").values()][0].split()[-1] == "vfio-intx(0000:00:03.0)"


@pytest.mark.parametrize("guest", ["linux", "windows"])
def test_nomsi_advise_says_va3001_and_no_guest_msi_remedy(tmp_path, guest):
    xml = LAB_DOMAINS / "edu.xml"
    if guest == "windows":
        xml = windows(tmp_path, xml)
    doc = advise("nomsi-2", xml)
    dev = devices(doc)["0000:00:03.0"]
    assert dev["host_interrupts"]["mode"] == "intx"
    rules = [f["rule"] for f in findings(doc)]
    assert "VA3001" in rules and "VA1001" not in rules
    for f in findings(doc):
        for remedy in GUEST_MSI_REMEDIES:
            assert remedy not in text_of(f), f


NOMSI_DAEMON = ("the daemon's VA6001/VA6003 still give the guest MSI remedy "
                "(MSISupported) on a pci=nomsi host, where it cannot work")


def test_nomsi_daemon_stays_on_intx_without_guest_msi_remedy(tmp_path):
    entries = daemon(tmp_path, windows(tmp_path, LAB_DOMAINS / "edu.xml"), ["nomsi-1", "nomsi-2"],
                     settle=0.0)
    # the device does stay on INTx while interrupts come: that may be said
    assert "VA6001" in [e["VFIO_ADVISOR_RULE"] for e in entries]
    for e in entries:
        for remedy in GUEST_MSI_REMEDIES:
            assert remedy not in json.dumps(e), e


def test_nomsi_daemon_regression_across_runs_without_guest_msi_remedy(tmp_path):
    """Run 1 (switch, pci=nomsi absent) had the edu on MSI; run 2 is on a
    pci=nomsi kernel, where the guest cannot get MSI back whatever it does."""
    state = tmp_path / "state"
    daemon(tmp_path, LAB_DOMAINS / "edu.xml", ["switch-3", "switch-4"], state=state, work="j1")
    entries = daemon(tmp_path, windows(tmp_path, LAB_DOMAINS / "edu.xml"), ["nomsi-1", "nomsi-2"],
                     state=state, work="j2")
    assert "VA6003" in [e["VFIO_ADVISOR_RULE"] for e in entries]  # it did regress
    for e in entries:
        for remedy in GUEST_MSI_REMEDIES:
            assert remedy not in json.dumps(e), e


# --- intremap=off with allow_unsafe_interrupts=1 -----------------------------

def test_intremap_off_lab_state():
    root = CAPTURES / "intremap-off"
    assert "intremap=off" in (root / "proc/cmdline").read_text()
    assert (root / "sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts").read_text().strip() == "Y"
    assert (root / "sys/class/iommu/dmar0").is_symlink()  # the IOMMU itself is on
    chips = " ".join(h for _, h in vfio_lines("intremap-off").values())
    assert "PCI-MSI" in chips and "IR-" not in chips
    assert "DMAR-IR: Enabled IRQ remapping" not in (root / "dmesg").read_text()


def test_intremap_off_advise_va3002():
    doc = advise("intremap-off", LAB_DOMAINS / "modes.xml")
    assert doc["host"]["interrupt_remapping"] is False
    assert doc["host"]["allow_unsafe_interrupts"] is True
    (va3002,) = [f for f in findings(doc) if f["rule"] == "VA3002"]
    assert "allow_unsafe_interrupts=1" in va3002["message"]
    assert "interrupt remapping is off" in va3002["message"]
    # allow_unsafe_interrupts=1 let the lab's groups attach: not a start failure
    assert "VA3008" not in [f["rule"] for f in findings(doc)]
    # the three modes are still read right without IR- chips
    modes = {b: d["host_interrupts"]["mode"] for b, d in devices(doc).items()}
    assert modes == {"0000:00:03.0": "intx", "0000:00:04.0": "msi", "0000:00:05.0": "msix"}


def test_remapping_on_is_silent_on_va3002():
    # Near miss: the same devices and modes with remapping on (the modes capture).
    doc = advise("modes", LAB_DOMAINS / "modes.xml")
    assert doc["host"]["interrupt_remapping"] is True
    assert not {"VA3002", "VA3008"} & {f["rule"] for f in findings(doc)}


# --- isolcpus= / irqaffinity= with a vfio vector on the isolated CPU ----------

def test_isolcpus_lab_state():
    root = CAPTURES / "isolcpus-2"
    assert (root / "sys/devices/system/cpu/isolated").read_text().strip() == "1"
    ((irq, (total, handlers)),) = vfio_lines("isolcpus-2").items()
    assert "vfio-msi[0](0000:00:03.0)" in handlers
    assert (root / f"proc/irq/{irq}/smp_affinity_list").read_text().strip() == "1"
    # 50 before the write (CPU 0), 200 after it, all on the isolated CPU 1
    assert (root / f"sys/kernel/irq/{irq}/per_cpu_count").read_text().strip() == "50,200"


def test_isolcpus_daemon_va6007_names_the_isolated_cpu(tmp_path):
    entries = daemon(tmp_path, LAB_DOMAINS / "edu.xml", ["isolcpus-1", "isolcpus-2"])
    (aff,) = [e for e in entries if e["VFIO_ADVISOR_RULE"] == "VA6007"]
    ((irq, _),) = vfio_lines("isolcpus-2").items()
    assert aff["VFIO_ADVISOR_EVIDENCE_IRQ"] == str(irq)
    assert aff["VFIO_ADVISOR_EVIDENCE_SMP_AFFINITY_LIST"] == "1"
    assert "isolated CPUs 1" in aff["MESSAGE"]


def test_no_isolcpus_is_silent_on_va6007(tmp_path):
    # Near miss: one CPU, no isolcpus, no pinning, interrupts moving (nomsi).
    entries = daemon(tmp_path, LAB_DOMAINS / "edu.xml", ["nomsi-1", "nomsi-2"])
    assert "VA6007" not in [e["VFIO_ADVISOR_RULE"] for e in entries]


def test_naming_one_domain_still_compares_it_with_the_other_defined_domains():
    # advise NAME: the conflict is with a domain that was not named.
    doc = advise("nointxmask-before", DOMAINS / "lab-nointxmask-a.xml", DOMAINS / "lab-nointxmask-b.xml",
                 names=["lab-nointxmask-a"])
    texts = [text_of(f) for f in findings(doc) if f["rule"] == "VA2005"]
    assert texts and "lab-nointxmask-b" in texts[0]
    assert {f["_domain"] for f in findings(doc)} == {"lab-nointxmask-a"}
