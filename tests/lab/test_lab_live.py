"""The lab itself, live: build the guest, boot one scenario, check advise on
what it captured. Keeps `make lab` from rotting. Needs qemu-system-x86, gcc
with a static libc, and Debian's archive for `apt-get download` (~5 s)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None or shutil.which("gcc") is None,
                    reason="qemu-system-x86 or gcc not installed")
def test_boot_modes_scenario_and_advise(tmp_path):
    out = subprocess.run([sys.executable, str(REPO / "lab/run.py"), "--scenario", "modes",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr + out.stdout
    assert (tmp_path / "modes/proc/interrupts").exists()
    assert "fired=200" in out.stdout and "fired=300" in out.stdout
    adv = subprocess.run([sys.executable, "-m", "vfio_advisor", "advise", "--xml",
                          str(REPO / "tests/data/domains/lab/modes.xml"), "--host-root",
                          str(tmp_path / "modes"), "--format", "json"], capture_output=True,
                         text=True, timeout=60)
    doc = json.loads(adv.stdout)
    modes = {d["host_address"]: d["host_interrupts"]["mode"] for d in doc["domains"][0]["devices"]}
    assert modes == {"0000:00:03.0": "intx", "0000:00:04.0": "msi", "0000:00:05.0": "msix"}
    stat_totals_are_per_cpu_count_sums(tmp_path / "modes")


def stat_totals_are_per_cpu_count_sums(root: Path) -> None:
    """On the real kernel: /proc/stat's intr line (read after the per-IRQ
    files, guest-init.sh) holds each vfio IRQ's per_cpu_count sum, the
    counter the daemon's stat plan reads for VFs (facts/sampler.py); and a
    Sampler watching the MSI function alone serves its steady samples from it."""
    from vfio_advisor.facts.host import HostRoot  # noqa: PLC0415
    from vfio_advisor.facts.model import device_interrupts  # noqa: PLC0415
    from vfio_advisor.facts.pci import read_pci_device  # noqa: PLC0415
    from vfio_advisor.facts.sampler import Sampler  # noqa: PLC0415

    intr = next(line for line in (root / "proc/stat").read_text().splitlines() if line.startswith("intr "))
    totals = [int(v) for v in intr.split()[2:]]
    checked = 0
    for desc in (root / "sys/kernel/irq").iterdir():
        per_cpu = sum(int(c) for c in (desc / "per_cpu_count").read_text().strip().split(","))
        actions = (desc / "actions").read_text().strip().split(",")
        if all(a.startswith("vfio") for a in actions):  # paused at a capture: nothing counts
            assert totals[int(desc.name)] == per_cpu, desc.name
        else:  # a native sharer may count between the two reads
            assert totals[int(desc.name)] >= per_cpu, desc.name
        checked += 1
    assert checked >= 3, checked  # the INTx line, the MSI vector, the MSI-X vectors
    host = HostRoot(str(root))
    msi = {"0000:00:04.0": read_pci_device(host, "0000:00:04.0")}
    sampler = Sampler(host)
    sampler.watch(msi.items())
    tables = [sampler.sample()[0] for _ in range(3)]
    assert sampler.stat_samples == 1, (sampler.stat_samples, sampler.stat_usable)
    got = [device_interrupts("0000:00:04.0", msi["0000:00:04.0"], t) for t in tables]
    assert got[0].mode == "msi" and got[0] == got[2], got
