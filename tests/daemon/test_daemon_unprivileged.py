"""The daemon as a real unprivileged user (setpriv --reuid=nobody), over a
lab capture whose interrupt files that user cannot read: file modes, not a
patched `open`.

- /proc/interrupts unreadable: the sampler still counts the vfio vectors
  from /sys/kernel/irq (the counter equals the kernel's count) and says
  once that it cannot read /proc/interrupts;
- /proc/interrupts and /sys/kernel/irq/*/per_cpu_count unreadable: the
  device's mode is "unknown" in the metrics file (never 0 interrupts, never
  a made-up mode), said once, and the daemon keeps running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import nobody
from tests.fleet.exposition import parse

REPO = Path(__file__).resolve().parents[2]
CAPTURES = REPO / "lab/captures"
DEV = (("bdf", "0000:00:03.0"), ("domain", "lab-edu"))


@pytest.fixture
def world():
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to nobody with setpriv")
    nobody.require()
    # pytest's tmp_path is under a 0700 directory nobody cannot enter
    with nobody.tree() as top:
        root = top / "root"
        shutil.copytree(CAPTURES / "stays-intx-4", root, symlinks=True)
        xml = (REPO / "tests/data/domains/lab/edu.xml").read_text()
        (top / "node.xml").write_text(f"<node>\n{xml}\n</node>\n")
        (top / "config.toml").write_text("")
        out = top / "out"
        out.mkdir()
        os.chown(out, 65534, 65534)
        for path in [top, *top.rglob("*")]:
            if not path.is_symlink() and path != out:
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        yield top


def run_as_nobody(top: Path, wait_for: str, timeout: float = 20.0) -> tuple[str, dict]:
    metrics = top / "out/m.prom"
    cmd = nobody.command(
        nobody.python(), "-m", "vfio_advisor", "daemon", "--connect", f"test://{top / 'node.xml'}",
        "--host-root", str(top / "root"), "--interval", "0.1", "--settle", "0",
        "--config", str(top / "config.toml"), "--state-dir", str(top / "out/state"),
        "--metrics-file", str(metrics))
    proc = subprocess.Popen(cmd, env=nobody.env(HOME=str(top / "out")), cwd=str(top),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    series = {}
    try:
        end = time.monotonic() + timeout
        while time.monotonic() < end and proc.poll() is None:
            if metrics.exists():
                _, samples = parse(metrics.read_text())
                series = {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}
                if any(n == "vfio_advisor_device_mode" and dict(labels).get("mode") == wait_for and v == 1.0
                       for (n, labels), v in series.items()):
                    time.sleep(0.5)  # a few more samples: anything said must be said once
                    break
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    assert "Traceback" not in err, err
    assert proc.returncode == 0, err
    _, samples = parse(metrics.read_text())
    return err, {(n, tuple(sorted(labels.items()))): v for n, labels, v in samples}


def test_unreadable_proc_interrupts_counts_from_sysfs(world):
    os.chmod(world / "root/proc/interrupts", 0o000)
    err, series = run_as_nobody(world, "intx")
    total = ("vfio_advisor_device_interrupts_total", tuple(sorted(DEV + (("mode", "intx"),))))
    assert series[total] == 3600.0  # sys/kernel/irq/23/per_cpu_count of the capture
    said = [line for line in err.splitlines() if "cannot read /proc/interrupts" in line]
    assert len(said) == 1 and "permission denied" in said[0], err


def test_unreadable_counts_everywhere_leave_the_mode_unknown(world):
    os.chmod(world / "root/proc/interrupts", 0o000)
    for f in (world / "root/sys/kernel/irq").glob("*/per_cpu_count"):
        os.chmod(f, 0o000)
    err, series = run_as_nobody(world, "unknown", timeout=5.0)
    mode = {dict(labels)["mode"] for (n, labels), v in series.items()
            if n == "vfio_advisor_device_mode" and v == 1.0}
    assert mode == {"unknown"}, series
    assert not [k for k in series if k[0] == "vfio_advisor_device_interrupts_total"]
    assert sum("no interrupt counts readable" in line for line in err.splitlines()) == 1, err
    assert sum("cannot read /proc/interrupts" in line for line in err.splitlines()) == 1, err


def test_a_device_whose_config_space_it_cannot_read_is_said(world):
    """The gathering child runs with the daemon's rights. Without them for
    the config space (a unit without AmbientCapabilities=CAP_SYS_ADMIN gets
    64 bytes; here the file is unreadable), MSI support is unknown and the
    advice that needs it would stay silent: the daemon says so, per device."""
    config = (world / "root/sys/bus/pci/devices/0000:00:03.0/config").resolve()
    os.chmod(config, 0o000)
    err, series = run_as_nobody(world, "intx")
    said = [line for line in err.splitlines() if "runtime advice that needs it is off" in line]
    assert said == ["vfio-advisor: lab-edu: 0000:00:03.0: config: permission denied (run as root for full "
                    "facts); runtime advice "
                    "that needs it is off for this device"], err
    mode = ("vfio_advisor_device_mode", tuple(sorted(DEV + (("mode", "intx"),))))
    assert series[mode] == 1.0  # it still follows and samples the device


def test_a_readable_device_is_not_said_incomplete(world):
    err, _ = run_as_nobody(world, "intx")
    assert "runtime advice that needs it is off" not in err, err
