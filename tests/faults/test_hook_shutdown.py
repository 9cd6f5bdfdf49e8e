"""The qemu hook while libvirtd shuts down (Debian's libvirtd, SIGTERM):
the hook, started by libvirtd for a domain's `prepare begin`, is held on a
FIFO (its host tree's proc/interrupts) until libvirtd is stopping or gone,
It must still exit 0 and never hang. SIGTERM: libvirtd 9.0 waits for the
worker that runs the hook before it exits, so the hook's run time bounds
the stop. SIGKILL (a crash, the OOM killer): the hook finishes with nobody
reading the stdout and stderr pipes libvirt's virCommand gave it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.faults.support import build_host
from tests.support.journal import missing_tools

REPO = Path(__file__).resolve().parents[2]
WITH_LIBVIRTD = REPO / "tests/support/with-libvirtd.sh"
SCRIPT = Path(__file__).with_name("hook-shutdown.sh")

DOMAIN = """<domain type='qemu'>
  <name>faults-hook-{pid}</name>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


@pytest.mark.parametrize("signal", ["TERM", "KILL"])
def test_hook_exits_0_when_libvirtd_stops_under_it(tmp_path, signal):
    reason = missing_tools("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare")
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("needs root (a libvirtd of its own)")
    root, config = tmp_path / "install", tmp_path / "config.toml"
    out = subprocess.run([sys.executable, "-m", "vfio_advisor", "install", "--root", str(root),
                          "--config", str(config)], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    host = build_host(tmp_path / "host")
    content = tmp_path / "interrupts"
    os.replace(host / "proc/interrupts", content)
    os.mkfifo(host / "proc/interrupts")
    config.write_text(f'[hook]\nhost_root = "{host}"\ntimeout = 30\n')
    # libvirt runs every file in hooks/qemu.d: the installed hook, run from
    # a wrapper that notes its start and exit status for this test.
    hooks = tmp_path / "hooks"
    (hooks / "qemu.d").mkdir(parents=True)
    real = root / "etc/libvirt/hooks/qemu.d/vfio-advisor"
    wrapper = hooks / "qemu.d/vfio-advisor"
    wrapper.write_text("#!/bin/sh\n"
                       f'[ "$2" = prepare ] && [ "$3" = begin ] && touch {tmp_path}/hook.started\n'
                       f'{real} "$@"\nrc=$?\n'
                       f'[ "$2" = prepare ] && [ "$3" = begin ] && echo $rc > {tmp_path}/hook.rc\n'
                       "exit $rc\n")
    wrapper.chmod(0o755)
    (tmp_path / "dom.xml").write_text(DOMAIN.format(pid=os.getpid()))
    run = subprocess.run(["unshare", "--mount", "--propagation", "private", str(WITH_LIBVIRTD), str(tmp_path),
                          str(hooks), "--", str(SCRIPT), str(tmp_path), str(host / "proc/interrupts"), str(content),
                          signal],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    events = (tmp_path / "events").read_text() if (tmp_path / "events").exists() else ""
    assert run.returncode == 0, (run.stderr[-2000:], events)
    # SIGTERM: libvirtd waits for the hook's worker; SIGKILL: it is gone at once.
    assert events.strip() == ("libvirtd still stopping" if signal == "TERM" else "libvirtd gone"), events
    assert (tmp_path / "hook.rc").read_text().strip() == "0"
    # No guest outlives the test: libvirtd never destroys domains at its own
    # stop, so a QEMU it spawned before going away is the test's to end.
    left = subprocess.run(["pgrep", "-f", f"guest=faults-hook-{os.getpid()},"], capture_output=True, text=True)
    assert left.stdout == "", f"QEMU left running: {left.stdout.split()}"
