"""`vfio-advisor device`: host PCI devices as the tool sees them."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_ROOT = REPO / "examples/demo-host/root"
LAB = REPO / "lab/captures/modes"


def run(*args):
    return subprocess.run([sys.executable, "-m", "vfio_advisor", "device", *args],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, NO_COLOR="1"))


def test_json_facts_of_a_gpu_function():
    out = run("0000:05:00.1", "--host-root", str(DEMO_ROOT), "--format", "json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["schema"] == "vfio-advisor/device/1"
    (dev,) = doc["devices"]
    assert dev["vendor_id"] == "1002" and dev["driver"] == "vfio-pci"
    assert dev["capabilities"]["msi"]["64bit"] is True
    assert dev["capabilities"]["pcie"]["type"] in ("endpoint", "legacy-endpoint")
    assert dev["host_interrupts"]["mode"] == "intx" and dev["host_interrupts"]["intx_irq"] == 28
    assert dev["iommu_group_members"]


def test_text_and_short_bdf_on_a_lab_capture():
    out = run("00:04.0", "00:05.0", "--host-root", str(LAB))
    assert out.returncode == 0, out.stderr
    assert "0000:00:04.0" in out.stdout and "interrupts now: msi" in out.stdout
    assert "0000:00:05.0" in out.stdout and "interrupts now: msix" in out.stdout
    assert "MSI-X: table size 2" in out.stdout


def test_missing_device_is_exit_2_with_the_reason():
    out = run("0000:0f:00.0", "--host-root", str(DEMO_ROOT))
    assert out.returncode == 2
    assert "no such PCI device" in out.stdout


def test_capabilities_unknown_to_a_reader_without_cap_sys_admin_say_why(tmp_path):
    """The kernel gives a reader without CAP_SYS_ADMIN the first 64 bytes of
    config space: the capabilities are unknown because of who reads, and the
    lines must not call the config space truncated."""
    import shutil  # noqa: PLC0415
    root = tmp_path / "root"
    shutil.copytree(DEMO_ROOT, root, symlinks=True)
    config = root / "sys/bus/pci/devices/0000:05:00.1/config"
    config.resolve().write_bytes((DEMO_ROOT / "sys/bus/pci/devices/0000:05:00.1/config").read_bytes()[:64])
    out = run("0000:05:00.1", "--host-root", str(root))
    assert out.returncode == 0, out.stderr
    msi = next(line for line in out.stdout.splitlines() if line.startswith("  MSI: "))
    assert msi.startswith("  MSI: unknown (") and "not root" in msi, out.stdout
    assert "truncated" not in msi, out.stdout


def test_a_device_outside_any_iommu_group_says_none(tmp_path):
    """No iommu_group link (IOMMU off): the line says so in words, not Python's None."""
    import shutil  # noqa: PLC0415
    root = tmp_path / "root"
    shutil.copytree(DEMO_ROOT, root, symlinks=True)
    (root / "sys/bus/pci/devices/0000:05:00.1/iommu_group").unlink()
    out = run("0000:05:00.1", "--host-root", str(root))
    assert out.returncode == 0, out.stderr
    driver = next(line for line in out.stdout.splitlines() if line.startswith("  driver: "))
    assert driver.endswith("IOMMU group: none (-)") and "None" not in driver, driver
