"""libvirtd killed with SIGKILL and started again 10 times while the daemon
follows N running domains (Debian's libvirtd and QEMU, TCG, diskless: a
private libvirtd from tests/support/with-libvirtd.sh). No domain is lost, no
finding is said twice, and what the daemon tells systemd (READY, STATUS,
over a NOTIFY_SOCKET this test owns) is true throughout.

N is 32 by default (VFIO_ADVISOR_FAULTS_DOMAINS to change it): each idle
TCG guest (32 MiB, no disk: SeaBIOS finds nothing to boot) is ~40 MiB of
QEMU; the tier takes about a minute on 2 cores."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.support.journal import missing_tools

REPO = Path(__file__).resolve().parents[2]
WITH_LIBVIRTD = REPO / "tests/support/with-libvirtd.sh"
SCRIPT = Path(__file__).with_name("libvirtd-kill.sh")
KILLS = 10


def test_libvirtd_killed_ten_times(tmp_path):
    reason = missing_tools("libvirtd", "virtlogd", "virsh", "qemu-system-x86_64", "unshare")
    if reason:
        pytest.skip(reason)
    if os.geteuid() != 0:
        pytest.skip("needs root (a libvirtd of its own)")
    n = int(os.environ.get("VFIO_ADVISOR_FAULTS_DOMAINS", "32"))
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    notify_path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(notify_path)
    sock.settimeout(0.2)
    notes: list[str] = []
    done = threading.Event()

    def read_notes() -> None:  # as systemd does, all along
        while not done.is_set():
            try:
                notes.extend(sock.recv(65536).decode().splitlines())
            except socket.timeout:
                pass

    reader = threading.Thread(target=read_notes, daemon=True)
    reader.start()
    try:
        out = subprocess.run(["unshare", "--mount", "--propagation", "private", str(WITH_LIBVIRTD),
                              str(tmp_path), str(hooks), "--", str(SCRIPT), str(tmp_path), str(n), str(KILLS),
                              sys.executable, notify_path],
                             capture_output=True, text=True, timeout=900, cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=str(REPO)))
    finally:
        done.set()
        reader.join()
        sock.close()
    log = (tmp_path / "daemon.err").read_text() if (tmp_path / "daemon.err").exists() else ""
    progress = (tmp_path / "progress").read_text() if (tmp_path / "progress").exists() else ""
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:], progress, log[-3000:])
    assert (tmp_path / "daemon.rc").read_text().strip() == "daemon exit 0"
    # libvirtd lost no domain: every one still listed after each restart.
    assert progress.count(f"libvirtd lists {n} of {n}") == KILLS, progress
    # The daemon lost none either: each reconnect resynced all of them.
    reconnects = [line for line in log.splitlines() if "reconnected to qemu:///system" in line]
    assert len(reconnects) >= KILLS, log[-3000:]
    statuses = [s for s in notes if s.startswith("STATUS=")]
    assert notes.count("READY=1") == 1, notes  # ready once, at start
    ready_at = notes.index("READY=1")
    assert statuses[-1] == f"STATUS=watching {n} VMs, 0 devices", statuses[-5:]
    # Once ready, STATUS never names fewer VMs than run while connected, and
    # says so while libvirtd is away.
    after = [s for s in notes[ready_at:] if s.startswith("STATUS=")]
    following = [s for s in after if s.startswith("STATUS=watching")]
    assert all(s == f"STATUS=watching {n} VMs, 0 devices" for s in following), sorted(set(following))
    away = [s for s in after if "libvirt connection lost" in s]
    assert len(away) >= KILLS, sorted(set(after))
    # No finding at all here (no assigned device), so none twice; and no traceback.
    assert "Traceback" not in log and "sample failed" not in log, log[-3000:]
