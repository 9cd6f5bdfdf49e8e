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
