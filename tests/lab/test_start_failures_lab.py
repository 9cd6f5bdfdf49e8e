"""The start-failure rules on the lab's real kernel states, through the
product's own doors: the installed hook at `prepare begin` (a private
journald records it), `advise`, and a snapshot of the capture replayed.

lab/captures (ORIGIN.md): group-not-viable-1 is a Debian 6.1 guest kernel
with a conventional pci-bridge whose group 2 holds the bridge, an edu on
vfio-pci and a virtio-rng on virtio-pci; the kernel refused that group to a
VFIO user. group-not-viable-2 is the moment after the virtio-rng moved to
vfio-pci (the user then opened the group). iommu-off has no DMAR table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hook.test_hook import HOOK_ENV
from tests.rules.examples import EDU_BEHIND_BRIDGE, EDU_ON_ROOT, RNG_BEHIND_BRIDGE, hostdev_xml_managed
from tests.support.journal import run_in_journal
from vfio_advisor.testing.scenes import domain_xml

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"


def xml(*hostdevs: tuple[str, str | None], name: str = "lab-start") -> str:
    return domain_xml(name, [hostdev_xml_managed(b, m) for b, m in hostdevs], os="linux")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio_advisor", *args], capture_output=True, text=True,
                          cwd=REPO)


def advise(tmp_path: Path, root: Path | str, text: str) -> tuple[int, dict]:
    path = tmp_path / "domain.xml"
    path.write_text(text)
    out = cli("advise", "--xml", str(path), "--host-root", str(root), "--format", "json")
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def rules_of(doc: dict) -> list[str]:
    (dom,) = doc["domains"]
    return sorted([f["rule"] for d in dom["devices"] for f in d["findings"]]
                  + [f["rule"] for f in dom["findings"]])


def test_the_capture_is_what_the_rule_claims():
    """The kernel's own record: one group for bridge and both functions, the
    virtio-rng on virtio-pci, and the VFIO user told the group is not viable."""
    moment = CAPTURES / "group-not-viable-1"
    devices = moment / "sys/bus/pci/devices"
    groups = {b: (devices / b / "iommu_group").readlink().name
              for b in ("0000:00:10.0", EDU_BEHIND_BRIDGE, RNG_BEHIND_BRIDGE)}
    assert len(set(groups.values())) == 1, groups
    assert (devices / RNG_BEHIND_BRIDGE / "driver").readlink().name == "virtio-pci"
    assert (devices / EDU_BEHIND_BRIDGE / "driver").readlink().name == "vfio-pci"
    assert "group not viable" in (moment / "vfio-user.1").read_text()
    after = CAPTURES / "group-not-viable-2"
    assert (after / f"sys/bus/pci/devices/{RNG_BEHIND_BRIDGE}/driver").readlink().name == "vfio-pci"
    assert "PHASE 1 READY" in (after / "vfio-user.2").read_text()


def test_advise_names_the_member_and_its_driver(tmp_path):
    rc, doc = advise(tmp_path, CAPTURES / "group-not-viable-1", xml((EDU_BEHIND_BRIDGE, "yes")))
    assert "VA3005" in rules_of(doc)
    (dev,) = doc["domains"][0]["devices"]
    (finding,) = [f for f in dev["findings"] if f["rule"] == "VA3005"]
    assert finding["severity"] == "error"
    assert f"{RNG_BEHIND_BRIDGE} (bound to virtio-pci)" in finding["message"]
    assert f"vfio {EDU_BEHIND_BRIDGE}: group 2 is not viable" in finding["message"]
    assert "virsh nodedev-detach pci_0000_01_02_0" in finding["remedy"]
    assert rc != 0


def test_advise_is_silent_once_the_kernel_opened_the_group(tmp_path):
    _, doc = advise(tmp_path, CAPTURES / "group-not-viable-2", xml((EDU_BEHIND_BRIDGE, "yes")))
    assert not {"VA3004", "VA3005", "VA3006", "VA3007", "VA3008"} & set(rules_of(doc))


def test_a_snapshot_of_the_capture_keeps_what_the_rules_read(tmp_path):
    """`snapshot` archives what was read (HostRoot records it): the group
    members' driver links and config, the drivers list, the ACPI tables."""
    domain = tmp_path / "domain.xml"
    domain.write_text(xml((EDU_BEHIND_BRIDGE, "yes"), (RNG_BEHIND_BRIDGE, "no")))
    snap = tmp_path / "snap.tar.gz"
    out = cli("snapshot", "-o", str(snap), "--xml", str(domain), "--host-root",
              str(CAPTURES / "group-not-viable-1"))
    assert out.returncode == 0, out.stderr
    _, live = advise(tmp_path, CAPTURES / "group-not-viable-1", domain.read_text())
    _, replayed = advise(tmp_path, snap, domain.read_text())
    assert rules_of(replayed) == rules_of(live)
    assert "VA3006" in rules_of(live)
    off = tmp_path / "off.tar.gz"
    domain.write_text(xml((EDU_ON_ROOT, "yes")))
    assert cli("snapshot", "-o", str(off), "--xml", str(domain), "--host-root",
               str(CAPTURES / "iommu-off")).returncode == 0
    _, replayed = advise(tmp_path, off, domain.read_text())
    assert "VA3004" in rules_of(replayed)


@pytest.fixture
def installed(tmp_path):
    root = tmp_path / "root"
    config = tmp_path / "hook-config.toml"
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return root, root / "etc/libvirt/hooks/qemu.d/vfio-advisor", config


def hook(installed, tmp_path, capture: str, text: str, extra: str = "", work: str = "j"):
    root, script, config = installed
    config.write_text(f'[hook]\nhost_root = "{CAPTURES / capture}"\n{extra}')
    return run_in_journal(tmp_path / work, [*HOOK_ENV, str(script), "lab-start", "prepare", "begin", "-"],
                          stdin=text.encode(), catalog_db=root / "var/lib/systemd/catalog")


def test_hook_predicts_the_group_failure_at_prepare(installed, tmp_path):
    run = hook(installed, tmp_path, "group-not-viable-1", xml((EDU_BEHIND_BRIDGE, "yes")))
    assert run.rc == 0  # the hook never fails a start unless told to
    (entry,) = run.by_rule("VA3005")
    assert entry["PRIORITY"] == "3"
    assert entry["VFIO_ADVISOR_HOST_BDF"] == EDU_BEHIND_BRIDGE
    assert f"{RNG_BEHIND_BRIDGE} (bound to virtio-pci)" in entry["MESSAGE"]
    assert "nodedev-detach pci_0000_01_02_0" in entry["VFIO_ADVISOR_REMEDY"]
    assert "Subject: VA3005" in run.explained


def test_hook_blocks_on_it_only_when_asked(installed, tmp_path):
    run = hook(installed, tmp_path, "group-not-viable-1", xml((EDU_BEHIND_BRIDGE, "yes")),
               "block_on_error = true\n")
    assert run.rc != 0
    assert "VA3005" in run.stderr and "not viable" in run.stderr
    # both functions assigned: libvirt detaches both, nothing to block
    run = hook(installed, tmp_path, "group-not-viable-1",
               xml((EDU_BEHIND_BRIDGE, "yes"), (RNG_BEHIND_BRIDGE, "yes")), "block_on_error = true\n",
               work="k")
    assert run.rc == 0, run.stderr
    assert not run.by_rule("VA3005")


def test_hook_predicts_no_iommu_and_unbound_devices(installed, tmp_path):
    run = hook(installed, tmp_path, "iommu-off", xml((EDU_ON_ROOT, "yes")))
    (entry,) = run.by_rule("VA3004")
    assert entry["PRIORITY"] == "3"
    assert "no DMAR or IVRS" in entry["VFIO_ADVISOR_REMEDY"]
    run = hook(installed, tmp_path, "no-vfio-pci", xml((EDU_ON_ROOT, None)), work="k")
    (entry,) = run.by_rule("VA3006")
    assert entry["PRIORITY"] == "3" and "bound to no driver" in entry["MESSAGE"]
