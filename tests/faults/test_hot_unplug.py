"""A device hot-unplugged under the running daemon, replayed: its sysfs
directory and its /proc/interrupts rows vanish while the daemon samples
every 20 ms (pciehp removes the device; libvirt sends no DEVICE_REMOVED,
since the domain's XML still lists it). libvirt's test driver cannot
detach a hostdev (virDomainDetachDeviceFlags: not supported), so the
real-libvirtd form of this (virsh detach-device) needs a real VFIO device."""

from __future__ import annotations

import os
import shutil

from tests.faults.support import Daemon, build_host, node_file
from tests.rules.examples import _ir_interrupts

AUDIO, GPU = "0000:05:00.1", "0000:05:00.0"


def _unplug(root, bdf: str) -> None:
    link = root / "sys/bus/pci/devices" / bdf
    target = os.path.realpath(link)
    os.unlink(link)
    shutil.rmtree(target)


def test_unplugged_devices_findings_close_without_a_traceback(tmp_path):
    root = build_host(tmp_path / "host")
    daemon = Daemon(tmp_path, root, f"test://{node_file(tmp_path / 'node.xml')}", tmp_path / "state",
                    interval=0.02)
    try:
        daemon.wait_for(lambda: f'vfio_advisor_findings{{domain="win11",rule="VA6006"' in daemon.metrics_text(),
                        what="the audio function's VA6006 (no interrupt at all) open")
        _unplug(root, AUDIO)
        (root / "proc/interrupts").write_text(_ir_interrupts({28: None}))
        daemon.wait_for(lambda: "vfio_advisor_findings{" not in daemon.metrics_text()
                        and f'bdf="{AUDIO}"' not in daemon.metrics_text(), what="the finding closed")
        # The GPU next, its MSI row with it: its findings and series go too.
        _unplug(root, GPU)
        (root / "proc/interrupts").write_text(_ir_interrupts({28: None, 45: None}, gpu=False))
        daemon.wait_for(lambda: f'bdf="{GPU}"' not in daemon.metrics_text(), what="the GPU no longer followed")
        assert daemon.proc.poll() is None
        log = daemon.log()
        assert daemon.stop() == 0
    finally:
        if daemon.proc.poll() is None:
            daemon.stop()
    assert "Traceback" not in log and "sample failed" not in log, log
    gone = [line for line in log.splitlines() if "is gone from the host" in line]
    assert len(gone) == 2 and AUDIO in gone[0] and GPU in gone[1], gone
