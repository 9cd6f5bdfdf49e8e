"""The start failures users hit first, with a real libvirtd and QEMU: the
system tier's Debian 12 guest (systemd as PID 1, Debian's 6.1 kernel, q35 with
intel-iommu) gets a conventional pci-bridge with an edu and a virtio-rng
behind it, which the kernel puts in one IOMMU group with the bridge. The
virtio-rng stays on virtio-pci. start-failures.sh (shipped as the guest's
run.sh) installs the clone's hook and starts nested domains that assign:

- the edu, managed='yes': libvirt detaches it and not its group-mate, and
  QEMU stops the start ("group N is not viable"); the hook predicted it at
  `prepare begin` (VA3005, error), and so did `advise` beforehand;
- the virtio-rng, managed='no': libvirt refuses it (VA3006);
- the edu again after the remedy VA3005 gives (virsh nodedev-detach of the
  group-mate): the start succeeds;
- the edu with [hook] block_on_error: the hook stops the start with its own
  findings;
- the root-bus edu, managed='yes', after vfio-pci is unloaded and its module
  taken away: libvirt's modprobe fails (VA3007).

A second boot leaves out the intel-iommu device (no DMAR table, no groups):
libvirt refuses the hostdev outright (VA3004). Two boots of about 200 s each
under TCG on a loaded 2-core machine.

The libvirt and QEMU words recorded here are quoted in docs/start-failures.md.
Needs root, qemu-system-x86, mmdebstrap (Debian's archive for the first image
build; the image is the system tier's, cached under
/var/cache/vfio-advisor-tests/system) and git.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.system.test_system import (
    CACHE, QEMU, TIMINGS, _accel, boot_to_power_off, build_image, pack_share, system_run,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BOOT_TIMEOUT = 900
EDU, RNG = "0000:01:01.0", "0000:01:02.0"


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root (mmdebstrap, QEMU disks)"
    for tool, pkg in ((QEMU, "qemu-system-x86"), ("mmdebstrap", "mmdebstrap"), ("mkfs.ext4", "e2fsprogs"),
                      ("git", "git")):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {pkg}; make test installs it)"
    if not (REPO / ".git").exists():
        return "not a git checkout: the guest gets `git archive HEAD`"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def qemu_command(image: Path, share: Path, results: Path, console: Path, iommu: bool = True) -> list[str]:
    return [QEMU, "-machine", "q35,kernel-irqchip=split", *_accel(image), "-m", "2048", "-smp", "2",
            "-display", "none", "-vga", "none", "-no-reboot", "-nic", "none",
            "-serial", f"file:{console}", "-monitor", "none",
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", "root=/dev/vda rw console=ttyS0 intel_iommu=on quiet panic=-1",
            *(["-device", "intel-iommu,intremap=on"] if iommu else []),
            "-drive", f"file={image / 'rootfs.img'},format=raw,if=none,id=root,snapshot=on",
            "-device", "virtio-blk-pci,drive=root,addr=0x10",
            "-drive", f"file={share},format=raw,if=none,id=share,readonly=on",
            "-device", "virtio-blk-pci,drive=share,addr=0x11",
            "-drive", f"file={results},format=raw,if=none,id=results",
            "-device", "virtio-blk-pci,drive=results,addr=0x12",
            "-device", "edu,addr=0x3",
            # A PCI-to-PCI bridge without PCIe (so without ACS): the kernel
            # aliases the functions behind it to the bridge's requester ID and
            # groups them with it (drivers/iommu/iommu.c pci_device_group, 6.1).
            "-device", "pci-bridge,id=br1,chassis_nr=1,addr=0x8",
            "-device", "edu,bus=br1,addr=0x1", "-device", "virtio-rng-pci,bus=br1,addr=0x2"]


def boot(work: Path, mode: str) -> dict:
    """Boot the guest once; `mode` "iommu-off" leaves out the IOMMU."""
    image = build_image()
    share_dir = work / "share"
    share_dir.mkdir()
    shutil.copy2(HERE / "start-failures.sh", share_dir / "run.sh")
    (share_dir / "mode").write_text(mode + "\n")
    with open(share_dir / "src.tar", "wb") as f:
        subprocess.run(["git", "-C", str(REPO), "archive", "HEAD"], stdout=f, check=True)
    share, results, console = pack_share(work, share_dir, results_mib=16)
    res, _, TIMINGS[f"start failures ({mode}): guest run (boot to power-off)"] = boot_to_power_off(
        qemu_command(image, share, results, console, iommu=mode != "iommu-off"), work, results, BOOT_TIMEOUT)
    return parse_results(res, mode, console)


def parse_results(res: Path, mode: str, console: Path) -> dict:
    """The steps start-failures.sh reported in RES; a copy of RES and the
    console is kept under the cache for reading after the run."""
    if not (res / "results.txt").exists():
        raise AssertionError("no results from the guest; console:\n"
                             + console.read_text(errors="replace")[-3000:])
    steps = {}
    for line in (res / "results.txt").read_text().splitlines():
        parts = line.split(" ", 3)
        if parts[0] == "RESULT":
            steps[parts[1]] = (parts[2], parts[3] if len(parts) > 3 else "")
    last = CACHE / f"last-start-failures-{mode}"
    shutil.rmtree(last, ignore_errors=True)
    shutil.copytree(res, last)
    shutil.copy2(console, last / "console.log")
    return {"dir": res, "steps": steps}


@pytest.fixture(scope="module")
def guest(tmp_path_factory):
    """The group scenarios run in the system tier's boot (test_system.py's
    guest has the same bridge, and run.sh ends with start-failures.sh): one
    Debian boot fewer under TCG."""
    run = system_run(tmp_path_factory)
    return parse_results(run["dir"] / "start-failures", "group", run["console"])


@pytest.fixture(scope="module")
def guest_without_iommu(tmp_path_factory):
    return boot(tmp_path_factory.mktemp("start-failures-no-iommu"), "iommu-off")


def step(guest, name: str) -> str:
    assert name in guest["steps"], (f"step {name} did not report; reported: {sorted(guest['steps'])}; "
                                    f"log: {read(guest, 'run.log')[-1500:]}")
    status, detail = guest["steps"][name]
    assert status == "ok", f"{name}: {detail}"
    return detail


def read(guest, name: str) -> str:
    path = guest["dir"] / name
    return path.read_text(errors="replace") if path.exists() else ""


def hook_findings(guest, name: str) -> list[dict]:
    return [json.loads(line) for line in read(guest, f"{name}.hook.json").splitlines() if line.strip()]


def _group(guest) -> str:
    """The IOMMU group the guest kernel gave the bridge and both functions."""
    devices = dict(line.split(" ", 1) for line in read(guest, "devices.txt").splitlines())
    groups = {re.search(r"group=(\S+)", devices[b]).group(1) for b in ("0000:00:08.0", EDU, RNG)}
    assert len(groups) == 1, devices
    return groups.pop()


def test_the_guest_kernel_puts_the_bridge_and_both_functions_in_one_group(guest):
    step(guest, "devices")
    assert f"{RNG} driver=virtio-pci" in read(guest, "devices.txt")
    _group(guest)
    step(guest, "install")


def test_qemu_refuses_the_group_and_the_hook_said_so_at_prepare(guest):
    said = step(guest, "group-not-viable")
    group = _group(guest)
    # QEMU's own words (hw/vfio/common.c vfio_get_group), passed on by libvirt.
    assert f"vfio {EDU}: group {group} is not viable" in said, said
    assert "Please ensure all devices within the iommu_group are bound to their vfio bus driver" in said
    found = [e for e in hook_findings(guest, "group-not-viable") if e.get("VFIO_ADVISOR_RULE") == "VA3005"]
    assert found, read(guest, "group-not-viable.hook.json")[:2000]
    (entry,) = found
    assert entry["PRIORITY"] == "3"  # error
    assert f"group {group} of {EDU} is not viable" in entry["MESSAGE"]
    assert f"{RNG} (bound to virtio-pci)" in entry["MESSAGE"]
    assert f"vfio {EDU}: group {group} is not viable" in entry["MESSAGE"]


def test_advise_predicted_it_before_the_start(guest):
    assert read(guest, "group.advise.rc").strip() != "0", read(guest, "group.advise.err")
    doc = json.loads(read(guest, "group.advise.json"))
    rules = [f["rule"] for d in doc["domains"] for dev in d["devices"] for f in dev["findings"]]
    assert "VA3005" in rules, rules


def test_libvirt_refuses_an_unmanaged_device_on_a_host_driver(guest):
    said = step(guest, "unmanaged-on-host-driver")
    assert f"Unmanaged PCI device {RNG} must be manually detached from the host" in said, said
    found = [e for e in hook_findings(guest, "unmanaged-on-host-driver")
             if e.get("VFIO_ADVISOR_RULE") == "VA3006"]
    assert found and found[0]["PRIORITY"] == "3", read(guest, "unmanaged-on-host-driver.hook.json")[:2000]
    assert f"Unmanaged PCI device {RNG} must be manually detached from the host" in found[0]["MESSAGE"]


def test_the_remedy_given_makes_the_start_work(guest):
    assert step(guest, "group-after-detach") == "vfio-pci"


def test_block_on_error_stops_the_start_with_the_findings(guest):
    said = step(guest, "group-blocked-by-hook")
    assert "blocking the start on error findings" in said, said
    assert "VA3005" in said and "not viable" in said, said
    assert "is not viable\nPlease" not in said  # QEMU never ran
    assert step(guest, "done") == ""


def test_libvirt_refuses_a_hostdev_when_vfio_pci_is_missing(guest):
    said = step(guest, "vfio-pci-unavailable")
    # libvirt 9.0's words (virPCIProbeStubDriver); later releases say "PCI driver module".
    assert "Failed to load PCI stub module vfio-pci" in said, said
    found = [e for e in hook_findings(guest, "vfio-pci-unavailable") if e.get("VFIO_ADVISOR_RULE") == "VA3007"]
    assert found and found[0]["PRIORITY"] == "3", read(guest, "vfio-pci-unavailable.hook.json")[:2000]
    assert "Failed to load PCI stub module vfio-pci" in found[0]["MESSAGE"]


def test_libvirt_refuses_a_hostdev_without_an_iommu(guest_without_iommu):
    said = step(guest_without_iommu, "iommu-off")
    assert read(guest_without_iommu, "groups.txt").strip() == ""
    assert "host doesn't support passthrough of host PCI devices" in said, said
    found = [e for e in hook_findings(guest_without_iommu, "iommu-off") if e.get("VFIO_ADVISOR_RULE") == "VA3004"]
    assert found and found[0]["PRIORITY"] == "3", read(guest_without_iommu, "iommu-off.hook.json")[:2000]
    assert "host doesn't support passthrough of host PCI devices" in found[0]["MESSAGE"]
    # the guest's firmware (SeaBIOS without intel-iommu) has no DMAR table
    assert "no DMAR or IVRS" in found[0]["VFIO_ADVISOR_REMEDY"]
    assert step(guest_without_iommu, "done") == ""
